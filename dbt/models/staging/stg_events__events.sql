-- One row per event: types pinned, timestamps as UTC instants, and exact duplicates of an event_id
-- (the same event read from two log partitions) dropped, keeping the earliest partition's copy.
-- Duplicates share event_date, so partitioning the dedup by it lets date filters reach raw_events.

with

source as (

    select * from {{ source('events', 'raw_events') }}

),

renamed as (

    select
        -- ids
        cast(event_id as varchar) as event_id,
        cast(request_id as varchar) as request_id,
        cast(user_id as varchar) as user_id,
        cast(item_id as varchar) as item_id,

        -- what happened
        cast(event_type as varchar) as event_type,
        cast(position as integer) as position,
        cast(page as varchar) as page,
        cast(device as varchar) as device,
        cast(price as double precision) as price,
        cast(query as varchar) as search_query,
        cast(model_version as varchar) as model_version,
        cast(variant as varchar) as variant,

        -- when (UTC)
        cast(event_at as timestamp with time zone) as event_at,
        cast(event_date as date) as event_date,

        -- lineage
        cast(log_date as date) as log_date,
        cast(log_hour as integer) as log_hour,
        cast(source_uri as varchar) as source_uri,
        cast(line_number as integer) as line_number,
        cast(ingest_run_id as varchar) as ingest_run_id,
        cast(ingested_at as timestamp with time zone) as ingested_at,

        row_number() over (
            partition by event_date, event_id
            order by log_date, log_hour, source_uri, line_number
        ) as occurrence_number

    from source

),

deduplicated as (

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
        search_query,
        model_version,
        variant,
        event_at,
        event_date,
        log_date,
        log_hour,
        source_uri,
        line_number,
        ingest_run_id,
        ingested_at
    from renamed
    where occurrence_number = 1

)

select * from deduplicated
