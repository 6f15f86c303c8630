-- event_date (set by ingest) must be the UTC calendar date of event_at: the marts partition by it.
select event_id, event_at, event_date
from {{ ref('stg_events__events') }}
where event_date <> cast((event_at at time zone 'UTC') as date)
