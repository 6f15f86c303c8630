-- The item catalog: one row per item_id, category lower-cased ('unknown' when blank).

with

source as (

    select * from {{ source('catalog', 'item_catalog') }}

),

renamed as (

    select
        cast(item_id as varchar) as item_id,
        coalesce(nullif(lower(trim(cast(category as varchar))), ''), 'unknown') as category,
        cast(price as double precision) as catalog_price,
        row_number() over (partition by item_id order by category, price) as occurrence_number
    from source
    where item_id is not null

),

deduplicated as (

    select item_id, category, catalog_price
    from renamed
    where occurrence_number = 1

)

select * from deduplicated
