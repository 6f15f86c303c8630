-- Daily feature snapshots per user, keyed by (user_id, feature_at) for point-in-time joins:
-- feature_at is midnight UTC after snapshot_date, and every feature uses only events before it.
-- Rows exist for each day with events and each user active in the 28 days up to that day.
-- Incremental by snapshot_date: a run for day D replaces [D - late_event_lookback_days, D].
-- CTR labels come from training_examples (built earlier in the same run for the window, by
-- earlier runs for older days), counting a click only if it happened before feature_at.
{{ config(partition_column='snapshot_date') }}
{%- set windows = loopline_feature_windows() %}
{%- set longest = windows | max %}

with

events as (

    select * from {{ ref('int_sessionised_events') }}

),

item_categories as (

    select item_id, category from {{ ref('stg_catalog__items') }}

),

snapshot_days as (

    select distinct event_date as snapshot_date
    from events
    where {{ loopline_date_filter('event_date') }}

),

user_days as (

    select
        user_id,
        event_date as activity_date,
        sum(case when event_type = 'click' then 1 else 0 end) as clicks,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases,
        sum(case when is_session_start then 1 else 0 end) as sessions,
        max(event_at) as last_event_at,
        max(case when event_type = 'click' then event_at end) as last_click_at,
        max(case when event_type = 'purchase' then event_at end) as last_purchase_at,
        sum(case when event_type = 'click' then price end) as clicked_price_sum,
        sum(case when event_type = 'click' and price is not null then 1 else 0 end) as clicked_price_count,
        sum(case when event_type = 'purchase' then price end) as purchased_price_sum,
        sum(case when event_type = 'purchase' and price is not null then 1 else 0 end) as purchased_price_count
    from events
    group by user_id, event_date

),

impression_days as (

    select
        user_id,
        event_date as activity_date,
        count(*) as impressions,
        sum(case when is_clicked then 1 else 0 end) as clicked_impressions,
        sum(
            case when clicked_at < {{ loopline_end_of_day_utc('event_date') }} then 1 else 0 end
        ) as clicked_same_day_impressions
    from {{ ref('training_examples') }}
    where {{ loopline_date_filter('event_date', days_before=longest - 1) }}
    group by user_id, event_date

),

category_days as (

    select
        events.user_id,
        events.event_date as activity_date,
        coalesce(item_categories.category, 'unknown') as category,
        count(*) as engagements
    from events
    left join item_categories
        on item_categories.item_id = events.item_id
    where events.event_type in ('click', 'add_to_cart', 'purchase')
    group by events.user_id, events.event_date, coalesce(item_categories.category, 'unknown')

),

activity_windows as (

    select
        snapshot_days.snapshot_date,
        user_days.user_id,
        {%- for days in windows %}
        sum(case when user_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then user_days.clicks else 0 end) as clicks_{{ days }}d,
        sum(case when user_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then user_days.purchases else 0 end) as purchases_{{ days }}d,
        sum(case when user_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then user_days.sessions else 0 end) as sessions_{{ days }}d,
        {%- endfor %}
        max(user_days.last_event_at) as last_event_at,
        max(user_days.last_click_at) as last_click_at,
        max(user_days.last_purchase_at) as last_purchase_at,
        sum(user_days.clicked_price_sum) as clicked_price_sum,
        sum(user_days.clicked_price_count) as clicked_price_count,
        sum(user_days.purchased_price_sum) as purchased_price_sum,
        sum(user_days.purchased_price_count) as purchased_price_count
    from snapshot_days
    inner join user_days
        on user_days.activity_date between snapshot_days.snapshot_date - {{ longest - 1 }}
            and snapshot_days.snapshot_date
    group by snapshot_days.snapshot_date, user_days.user_id

),

impression_windows as (

    select
        snapshot_days.snapshot_date,
        impression_days.user_id,
        {%- for days in windows %}
        sum(case when impression_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then impression_days.impressions else 0 end) as impressions_{{ days }}d,
        sum(case when impression_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then case when impression_days.activity_date < snapshot_days.snapshot_date
                then impression_days.clicked_impressions
                else impression_days.clicked_same_day_impressions end
            else 0 end) as clicked_impressions_{{ days }}d{{ "," if not loop.last }}
        {%- endfor %}
    from snapshot_days
    inner join impression_days
        on impression_days.activity_date between snapshot_days.snapshot_date - {{ longest - 1 }}
            and snapshot_days.snapshot_date
    group by snapshot_days.snapshot_date, impression_days.user_id

),

category_windows as (

    select
        snapshot_days.snapshot_date,
        category_days.user_id,
        category_days.category,
        sum(category_days.engagements) as engagements
    from snapshot_days
    inner join category_days
        on category_days.activity_date between snapshot_days.snapshot_date - {{ longest - 1 }}
            and snapshot_days.snapshot_date
    group by snapshot_days.snapshot_date, category_days.user_id, category_days.category

),

ranked_categories as (

    select
        snapshot_date,
        user_id,
        category,
        engagements * 1.0 / sum(engagements) over (partition by snapshot_date, user_id) as engagement_share,
        row_number() over (
            partition by snapshot_date, user_id
            order by engagements desc, category
        ) as category_rank
    from category_windows

),

final as (

    select
        activity_windows.user_id,
        activity_windows.snapshot_date,
        {{ loopline_end_of_day_utc('activity_windows.snapshot_date') }} as feature_at,
        {%- for days in windows %}
        cast(coalesce(impression_windows.impressions_{{ days }}d, 0) as bigint) as impressions_{{ days }}d,
        cast(activity_windows.clicks_{{ days }}d as bigint) as clicks_{{ days }}d,
        cast(activity_windows.purchases_{{ days }}d as bigint) as purchases_{{ days }}d,
        {{ loopline_smoothed_ctr(
            'coalesce(impression_windows.clicked_impressions_' ~ days ~ 'd, 0)',
            'coalesce(impression_windows.impressions_' ~ days ~ 'd, 0)') }} as ctr_{{ days }}d,
        cast(activity_windows.sessions_{{ days }}d as bigint) as sessions_{{ days }}d,
        {%- endfor %}
        {{ loopline_hours_between('activity_windows.last_event_at',
            loopline_end_of_day_utc('activity_windows.snapshot_date')) }} as hours_since_last_event,
        {{ loopline_hours_between('activity_windows.last_click_at',
            loopline_end_of_day_utc('activity_windows.snapshot_date')) }} as hours_since_last_click,
        {{ loopline_hours_between('activity_windows.last_purchase_at',
            loopline_end_of_day_utc('activity_windows.snapshot_date')) }} as hours_since_last_purchase,
        ranked_categories.category as top_category_{{ longest }}d,
        {{ loopline_round('coalesce(ranked_categories.engagement_share, 0)', 6) }} as top_category_share_{{ longest }}d,
        {{ loopline_round('activity_windows.clicked_price_sum / nullif(activity_windows.clicked_price_count, 0)', 4) }}
            as avg_clicked_price_{{ longest }}d,
        {{ loopline_round('activity_windows.purchased_price_sum / nullif(activity_windows.purchased_price_count, 0)', 4) }}
            as avg_purchased_price_{{ longest }}d
    from activity_windows
    left join impression_windows
        on impression_windows.snapshot_date = activity_windows.snapshot_date
        and impression_windows.user_id = activity_windows.user_id
    left join ranked_categories
        on ranked_categories.snapshot_date = activity_windows.snapshot_date
        and ranked_categories.user_id = activity_windows.user_id
        and ranked_categories.category_rank = 1

)

select * from final
