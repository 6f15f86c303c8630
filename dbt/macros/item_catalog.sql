{#
  on-run-start: make sure the optional item catalog table exists (empty if nobody loaded one), so
  the marts build without it; items missing from the catalog get category 'unknown'.
  loopline.transform.load_item_catalog() fills it from a CSV (item_id, category, price).
#}
{% macro loopline_ensure_item_catalog() %}
  {%- if execute -%}
    {%- set schema = env_var('LOOPLINE_DBT_SOURCE_SCHEMA', target.schema) -%}
    create table if not exists {{ adapter.quote(schema) }}.{{ adapter.quote('item_catalog') }} (
        item_id varchar,
        category varchar,
        price double precision
    )
  {%- else -%}
    select 1
  {%- endif -%}
{% endmacro %}
