{#- Shared pieces of the feature marts. -#}

{#- The rolling windows (days) of every count and CTR feature. -#}
{% macro loopline_feature_windows() -%}
  {{ return([1, 7, 28]) }}
{%- endmacro %}

{#- Smoothed CTR: (clicks + prior * weight) / (impressions + weight); in [0, 1] when clicks <= impressions. -#}
{% macro loopline_smoothed_ctr(clicks, impressions) -%}
  {{ loopline_round(
      '(' ~ clicks ~ ' + ' ~ var('ctr_prior') ~ ' * ' ~ var('ctr_prior_weight') ~ ')'
      ~ ' / (' ~ impressions ~ ' + ' ~ var('ctr_prior_weight') ~ ' * 1.0)', 6) }}
{%- endmacro %}

{#-
  A double rounded to `digits` decimals. Parallel sums may differ in the last bit between runs;
  rounding keeps re-runs and backfills checksum-identical. PostgreSQL rounds only numerics.
-#}
{% macro loopline_round(expression, digits) -%}
  cast(round(cast({{ expression }} as numeric(38, 10)), {{ digits }}) as double precision)
{%- endmacro %}

{#- Seconds since the epoch of a timestamptz, as a double on both DuckDB and PostgreSQL. -#}
{% macro loopline_epoch_seconds(expression) -%}
  cast(extract(epoch from {{ expression }}) as double precision)
{%- endmacro %}

{#- Hours from `earlier` to `later` (timestamptz), rounded so re-runs give identical values. -#}
{% macro loopline_hours_between(earlier, later) -%}
  {{ loopline_round('(' ~ loopline_epoch_seconds(later) ~ ' - ' ~ loopline_epoch_seconds(earlier) ~ ') / 3600.0', 4) }}
{%- endmacro %}

{#- Midnight UTC after `day` as timestamptz: the feature_at of a daily snapshot. -#}
{% macro loopline_end_of_day_utc(day) -%}
  (cast({{ day }} + 1 as timestamp) at time zone 'UTC')
{%- endmacro %}
