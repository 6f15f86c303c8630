-- Daily feature snapshots per item, keyed by (item_id, feature_at) for point-in-time joins:
-- feature_at is midnight UTC after snapshot_date, and every feature uses only events before it.
-- Category and catalog price come from the optional item catalog (items missing from it:
-- category 'unknown'); category_ctr and price_to_category_avg compare an item with its category.
-- Incremental by snapshot_date: a run for day D replaces [D - late_event_lookback_days, D].
{{ config(partition_column='snapshot_date') }}
{%- set windows = loopline_feature_windows() %}
{%- set longest = windows | max %}

with

events as (

    select * from {{ ref('stg_events__events') }}
    where {{ loopline_date_filter('event_date', days_before=longest - 1) }}

),

catalog as (

    select item_id, category, catalog_price from {{ ref('stg_catalog__items') }}

),

snapshot_days as (

    select distinct event_date as snapshot_date
    from events
    where {{ loopline_date_filter('event_date') }}

),

item_days as (

    select
        item_id,
        event_date as activity_date,
        sum(case when event_type = 'click' then 1 else 0 end) as clicks,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases,
        max(event_at) as last_event_at,
        max(case when event_type = 'click' then event_at end) as last_click_at,
        max(case when event_type = 'purchase' then event_at end) as last_purchase_at,
        sum(price) as price_sum,
        sum(case when price is not null then 1 else 0 end) as price_count,
        min(price) as min_price,
        max(price) as max_price
    from events
    group by item_id, event_date

),

impression_days as (

    select
        item_id,
        event_date as activity_date,
        count(*) as impressions,
        sum(case when is_clicked then 1 else 0 end) as clicked_impressions,
        sum(
            case when clicked_at < {{ loopline_end_of_day_utc('event_date') }} then 1 else 0 end
        ) as clicked_same_day_impressions
    from {{ ref('training_examples') }}
    where {{ loopline_date_filter('event_date', days_before=longest - 1) }}
    group by item_id, event_date

),

activity_windows as (

    select
        snapshot_days.snapshot_date,
        item_days.item_id,
        {%- for days in windows %}
        sum(case when item_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then item_days.clicks else 0 end) as clicks_{{ days }}d,
        sum(case when item_days.activity_date > snapshot_days.snapshot_date - {{ days }}
            then item_days.purchases else 0 end) as purchases_{{ days }}d,
        {%- endfor %}
        max(item_days.last_event_at) as last_event_at,
        max(item_days.last_click_at) as last_click_at,
        max(item_days.last_purchase_at) as last_purchase_at,
        sum(item_days.price_sum) as price_sum,
        sum(item_days.price_count) as price_count,
        min(item_days.min_price) as min_price,
        max(item_days.max_price) as max_price
    from snapshot_days
    inner join item_days
        on item_days.activity_date between snapshot_days.snapshot_date - {{ longest - 1 }}
            and snapshot_days.snapshot_date
    group by snapshot_days.snapshot_date, item_days.item_id

),

impression_windows as (

    select
        snapshot_days.snapshot_date,
        impression_days.item_id,
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
    group by snapshot_days.snapshot_date, impression_days.item_id

),

items as (

    select
        activity_windows.*,
        coalesce(catalog.category, 'unknown') as category,
        catalog.catalog_price,
        coalesce(impression_windows.impressions_{{ longest }}d, 0) as category_impressions_base,
        coalesce(impression_windows.clicked_impressions_{{ longest }}d, 0) as category_clicks_base
    from activity_windows
    left join catalog
        on catalog.item_id = activity_windows.item_id
    left join impression_windows
        on impression_windows.snapshot_date = activity_windows.snapshot_date
        and impression_windows.item_id = activity_windows.item_id

),

category_windows as (

    select
        snapshot_date,
        category,
        sum(category_impressions_base) as impressions,
        sum(category_clicks_base) as clicked_impressions,
        sum(price_sum) / nullif(sum(price_count), 0) as avg_price
    from items
    group by snapshot_date, category

),

final as (

    select
        items.item_id,
        items.snapshot_date,
        {{ loopline_end_of_day_utc('items.snapshot_date') }} as feature_at,
        items.category,
        items.catalog_price,
        {%- for days in windows %}
        cast(coalesce(impression_windows.impressions_{{ days }}d, 0) as bigint) as impressions_{{ days }}d,
        cast(items.clicks_{{ days }}d as bigint) as clicks_{{ days }}d,
        cast(items.purchases_{{ days }}d as bigint) as purchases_{{ days }}d,
        {{ loopline_smoothed_ctr(
            'coalesce(impression_windows.clicked_impressions_' ~ days ~ 'd, 0)',
            'coalesce(impression_windows.impressions_' ~ days ~ 'd, 0)') }} as ctr_{{ days }}d,
        {%- endfor %}
        {{ loopline_hours_between('items.last_event_at', loopline_end_of_day_utc('items.snapshot_date')) }}
            as hours_since_last_event,
        {{ loopline_hours_between('items.last_click_at', loopline_end_of_day_utc('items.snapshot_date')) }}
            as hours_since_last_click,
        {{ loopline_hours_between('items.last_purchase_at', loopline_end_of_day_utc('items.snapshot_date')) }}
            as hours_since_last_purchase,
        {{ loopline_round('items.price_sum / nullif(items.price_count, 0)', 4) }} as avg_price_{{ longest }}d,
        {{ loopline_round('items.min_price', 4) }} as min_price_{{ longest }}d,
        {{ loopline_round('items.max_price', 4) }} as max_price_{{ longest }}d,
        {{ loopline_smoothed_ctr('category_windows.clicked_impressions', 'category_windows.impressions') }}
            as category_ctr_{{ longest }}d,
        {{ loopline_round(
            '(items.price_sum / nullif(items.price_count, 0)) / nullif(category_windows.avg_price, 0)', 6) }}
            as price_to_category_avg_{{ longest }}d
    from items
    left join impression_windows
        on impression_windows.snapshot_date = items.snapshot_date
        and impression_windows.item_id = items.item_id
    left join category_windows
        on category_windows.snapshot_date = items.snapshot_date
        and category_windows.category = items.category

)

select * from final
