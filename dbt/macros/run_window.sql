{#
  The days one run rebuilds. With var run_date = D the run replaces the days
  [D - late_event_lookback_days, D] of every mart (see README.md "Late events"); without it the run
  rebuilds every day present in raw_events.
#}

{% macro loopline_run_window() %}
  {%- set run_date = var('run_date', none) -%}
  {%- if run_date is none or (run_date | string | trim) == '' -%}
    {{ return(none) }}
  {%- endif -%}
  {%- set datetime = modules.datetime -%}
  {%- set text = run_date | string | trim -%}
  {%- if not modules.re.match('^\d{4}-\d{2}-\d{2}$', text) -%}
    {{ exceptions.raise_compiler_error("var run_date: expected a date YYYY-MM-DD, got '" ~ text ~ "'") }}
  {%- endif -%}
  {%- set end_date = datetime.date.fromisoformat(text) -%}
  {%- set lookback_days = var('late_event_lookback_days') | int -%}
  {%- if lookback_days < 0 -%}
    {{ exceptions.raise_compiler_error("var late_event_lookback_days: expected >= 0, got " ~ lookback_days) }}
  {%- endif -%}
  {{ return({
      'start_date': end_date - datetime.timedelta(days=lookback_days),
      'end_date': end_date,
  }) }}
{% endmacro %}


{#- The attribution window in minutes, checked against the lookback so late labels stay reachable. -#}
{% macro loopline_attribution_window_minutes() %}
  {%- set minutes = var('attribution_window_minutes') | int -%}
  {%- set lookback_days = var('late_event_lookback_days') | int -%}
  {%- if minutes < 1 or minutes > 1440 -%}
    {{ exceptions.raise_compiler_error("var attribution_window_minutes: expected 1..1440 minutes, got " ~ minutes) }}
  {%- endif -%}
  {%- if var('run_date', none) and lookback_days * 1440 < minutes -%}
    {{ exceptions.raise_compiler_error(
        "var late_event_lookback_days: " ~ lookback_days ~ " day(s) cannot cover an attribution window of "
        ~ minutes ~ " minutes; expected at least 1") }}
  {%- endif -%}
  {{ return(minutes) }}
{% endmacro %}


{#- A date literal that reads the same on DuckDB and PostgreSQL. -#}
{% macro loopline_date_literal(day) -%}
  cast('{{ day.isoformat() }}' as date)
{%- endmacro %}


{#-
  A predicate keeping the rows of `column` (a date) inside the run window, widened by
  days_before / days_after; `true` when the run has no run_date (full rebuild).
-#}
{% macro loopline_date_filter(column, days_before=0, days_after=0) -%}
  {%- set window = loopline_run_window() -%}
  {%- if window is none -%}
    true
  {%- else -%}
    {%- set timedelta = modules.datetime.timedelta -%}
    {{ column }} between {{ loopline_date_literal(window.start_date - timedelta(days=days_before)) }}
      and {{ loopline_date_literal(window.end_date + timedelta(days=days_after)) }}
  {%- endif -%}
{%- endmacro %}
