-- One row per impression with its labels: the training set of the CTR model.
-- Incremental by event_date: a run for day D replaces the days [D - late_event_lookback_days, D].
{{ config(partition_column='event_date') }}

with

labelled_impressions as (

    select * from {{ ref('int_labelled_impressions') }}

),

sessions as (

    select event_id, session_id
    from {{ ref('int_sessionised_events') }}
    where event_type = 'impression'
      and {{ loopline_date_filter('event_date') }}

),

final as (

    select
        labelled_impressions.impression_id,
        labelled_impressions.request_id,
        labelled_impressions.user_id,
        labelled_impressions.item_id,
        sessions.session_id,
        labelled_impressions.event_at,
        labelled_impressions.event_date,
        labelled_impressions.position,
        labelled_impressions.page,
        labelled_impressions.device,
        labelled_impressions.price,
        labelled_impressions.variant,
        labelled_impressions.model_version,
        labelled_impressions.is_clicked,
        labelled_impressions.is_purchased,
        labelled_impressions.clicked_at,
        labelled_impressions.purchased_at
    from labelled_impressions
    left join sessions
        on sessions.event_id = labelled_impressions.impression_id

)

select * from final
