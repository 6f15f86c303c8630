{#
  Incremental strategy `replace_dates`: delete every row of the run window's days from the mart, then
  insert the freshly built rows. A run for a day therefore replaces that day (and its late-event
  lookback) whole, even when a day now has fewer rows than before; without run_date it replaces all.
  The date column is the model config `partition_column`.
#}
{% macro get_incremental_replace_dates_sql(arg_dict) %}
  {%- set target = arg_dict['target_relation'] -%}
  {%- set source = arg_dict['temp_relation'] -%}
  {%- set column = config.get('partition_column') -%}
  {%- if not column -%}
    {{ exceptions.raise_compiler_error(
        "model " ~ this ~ ": incremental_strategy 'replace_dates' needs config partition_column (a date column)") }}
  {%- endif -%}
  {%- set dest_cols_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
  {%- set window = loopline_run_window() -%}
  delete from {{ target }}
  {%- if window is not none %}
  where {{ column }} between {{ loopline_date_literal(window.start_date) }} and {{ loopline_date_literal(window.end_date) }}
  {%- endif %};

  insert into {{ target }} ({{ dest_cols_csv }})
  select {{ dest_cols_csv }}
  from {{ source }}
{% endmacro %}
