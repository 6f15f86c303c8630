-- Each impression of the run window, labelled with the first click and the first purchase of the
-- same request_id and item_id that happened within [impression time, + attribution window].
-- Outcomes are read one day past the window, so an impression at 23:50 sees a click at 00:10.
{%- set window_minutes = loopline_attribution_window_minutes() %}

with

events as (

    -- One read of staging for both sides of the join: the window's days and the day after.
    select
        event_id,
        event_type,
        request_id,
        user_id,
        item_id,
        position,
        page,
        device,
        price,
        model_version,
        variant,
        event_at,
        event_date
    from {{ ref('stg_events__events') }}
    where event_type in ('impression', 'click', 'purchase')
      and {{ loopline_date_filter('event_date', days_after=1) }}

),

impressions as (

    select
        event_id as impression_id,
        request_id,
        user_id,
        item_id,
        position,
        page,
        device,
        price,
        model_version,
        variant,
        event_at,
        event_date
    from events
    where event_type = 'impression'
      and {{ loopline_date_filter('event_date') }}

),

outcomes as (

    select
        request_id,
        item_id,
        event_type,
        event_at
    from events
    where event_type in ('click', 'purchase')

),

attributed as (

    -- min() over the matches: an impression clicked twice is still one row, labelled once.
    select
        impressions.impression_id,
        min(case when outcomes.event_type = 'click' then outcomes.event_at end) as clicked_at,
        min(case when outcomes.event_type = 'purchase' then outcomes.event_at end) as purchased_at
    from impressions
    inner join outcomes
        on outcomes.request_id = impressions.request_id
        and outcomes.item_id = impressions.item_id
        and outcomes.event_at >= impressions.event_at
        and outcomes.event_at <= {{ dbt.dateadd('minute', window_minutes, 'impressions.event_at') }}
    group by impressions.impression_id

),

labelled as (

    select
        impressions.impression_id,
        impressions.request_id,
        impressions.user_id,
        impressions.item_id,
        impressions.position,
        impressions.page,
        impressions.device,
        impressions.price,
        impressions.model_version,
        impressions.variant,
        impressions.event_at,
        impressions.event_date,
        attributed.clicked_at is not null as is_clicked,
        attributed.purchased_at is not null as is_purchased,
        attributed.clicked_at,
        attributed.purchased_at
    from impressions
    left join attributed
        on attributed.impression_id = impressions.impression_id

)

select * from labelled
