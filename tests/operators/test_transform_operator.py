"""DbtBuildOperator: execute with a plain context on a real DuckDB warehouse; failures name the node."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException
from loopline_airflow.operators.transform import DbtBuildOperator

from tests.dbt.fixture_builder import build_fixture, write_duckdb

DAYS = (date(2026, 1, 5), date(2026, 1, 6))


@pytest.fixture
def warehouse_uri(tmp_path: Path) -> str:
    fixture = build_fixture(DAYS, requests_per_day=20)
    path = tmp_path / "warehouse.duckdb"
    write_duckdb(path, fixture.events, catalog=fixture.catalog)
    return f"duckdb://{path}"


def context_for(day: date) -> dict:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {"data_interval_start": start, "data_interval_end": start.replace(day=day.day + 1)}


def test_builds_the_interval_day_and_returns_node_statuses(warehouse_uri: str):
    operator = DbtBuildOperator(task_id="dbt_build", warehouse_uri=warehouse_uri)
    result = operator.execute(context_for(DAYS[1]))
    assert result["run_date"] == "2026-01-06"
    assert result["invocation_id"]
    assert result["nodes"]["training_examples"] == "success"
    assert set(result["nodes"].values()) <= {"success", "pass"}

    from loopline.warehouse import Warehouse

    with Warehouse.from_uri(warehouse_uri) as warehouse:
        built_days = {row[0] for row in warehouse.query("select distinct event_date from training_examples")}
    # The run for 2026-01-06 rebuilds it and its one-day late-event lookback.
    assert built_days == set(DAYS)


def test_a_failing_dbt_test_fails_the_task_naming_it(warehouse_uri: str):
    from loopline.warehouse import Warehouse

    with Warehouse.from_uri(warehouse_uri) as warehouse:
        warehouse.execute("update raw_events set page = 'checkout' where event_type = 'impression'")
    operator = DbtBuildOperator(task_id="dbt_build", warehouse_uri=warehouse_uri, run_date="2026-01-06")
    with pytest.raises(AirflowException, match="accepted_values.*page"):
        operator.execute({})


def test_template_fields_cover_every_run_time_value():
    assert set(DbtBuildOperator.template_fields) == {"run_date", "select", "dbt_vars", "warehouse_uri"}
