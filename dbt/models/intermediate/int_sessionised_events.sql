-- Events of the run window and the 27 days before it (the longest feature window), split into
-- sessions per user: a session ends after session_gap_minutes without an event, and at UTC
-- midnight, so a day's sessions never depend on other days and re-runs of a day are stable.

with

events as (

    select * from {{ ref('stg_events__events') }}
    where {{ loopline_date_filter('event_date', days_before=(loopline_feature_windows() | max) - 1) }}

),

with_previous as (

    select
        *,
        lag(event_at) over (
            partition by user_id, event_date
            order by event_at, event_id
        ) as previous_event_at
    from events

),

flagged as (

    select
        *,
        case
            when previous_event_at is null then 1
            when event_at > {{ dbt.dateadd('minute', var('session_gap_minutes'), 'previous_event_at') }} then 1
            else 0
        end as starts_session
    from with_previous

),

numbered as (

    select
        *,
        sum(starts_session) over (
            partition by user_id, event_date
            order by event_at, event_id
            rows between unbounded preceding and current row
        ) as session_number
    from flagged

),

sessionised as (

    select
        event_id,
        request_id,
        user_id,
        item_id,
        event_type,
        position,
        page,
        device,
        price,
        model_version,
        variant,
        event_at,
        event_date,
        md5(
            user_id || '|' || cast(event_date as varchar) || '|' || cast(cast(session_number as integer) as varchar)
        ) as session_id,
        cast(session_number as integer) as session_number,
        starts_session = 1 as is_session_start
    from numbered

)

select * from sessionised
