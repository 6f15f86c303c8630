"""IngestLogsOperator and its hooks: execute with a plain context on temporary stores, template rendering."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

# Airflow reads AIRFLOW_HOME when first imported; keep it (and anything it creates) out of ~ and the checkout.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="loopline-airflow-home-"))

from airflow.sdk.exceptions import AirflowFailException  # noqa: E402
from loopline_airflow.hooks import LogStoreHook, WarehouseHook  # noqa: E402
from loopline_airflow.operators.ingest import IngestLogsOperator  # noqa: E402
from loopline_airflow.utils import data_interval  # noqa: E402

from loopline.events import Event  # noqa: E402
from loopline.logstore import LogStore  # noqa: E402
from loopline.warehouse import Warehouse  # noqa: E402

DAY = date(2024, 5, 1)
MIDNIGHT = datetime(2024, 5, 1, tzinfo=UTC)


def write_logs(store: LogStore, day: date = DAY, hours: range = range(3), per_hour: int = 4) -> None:
    for hour in hours:
        start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        events = [
            Event(
                event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"op/{day}/{hour}/{n}")),
                event_type="impression",
                event_at=start + timedelta(minutes=n),
                user_id=f"u{n}",
                item_id=f"i{n}",
                request_id=f"r{hour}",
                position=n + 1,
                model_version="popularity",
                variant="champion",
                page="home",
                device="desktop",
                price=9.99,
            )
            for n in range(per_hour)
        ]
        store.write(day, hour, "serving", (event.to_json_line() for event in events))


@pytest.fixture
def stores(tmp_path: Path) -> tuple[LogStore, str]:
    logs = LogStore.from_uri((tmp_path / "logs").as_uri())
    return logs, f"duckdb://{tmp_path / 'warehouse.duckdb'}"


def test_execute_ingests_the_context_interval_and_returns_counts(stores: tuple[LogStore, str], tmp_path: Path):
    logs, warehouse_uri = stores
    write_logs(logs)
    write_logs(logs, DAY + timedelta(days=1), hours=range(1))  # outside the interval
    operator = IngestLogsOperator(
        task_id="ingest",
        log_store_uri=logs.root_uri,
        warehouse_uri=warehouse_uri,
        quarantine_uri=(tmp_path / "quarantine").as_uri(),
    )
    context = {"data_interval_start": MIDNIGHT, "data_interval_end": MIDNIGHT + timedelta(days=1)}
    counts = operator.execute(context)
    assert (counts["lines_read"], counts["loaded"], counts["duplicates"], counts["quarantined"]) == (12, 12, 0, 0)
    assert counts["interval_start"] == "2024-05-01T00:00:00+00:00"
    assert json.loads(json.dumps(counts)) == counts  # XCom-able
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.row_count("raw_events") == 12
        assert warehouse.scalar("SELECT run_id FROM ingest_runs") == counts["run_id"]
    # A retry of the same task replaces the interval instead of doubling it.
    assert operator.execute(context)["loaded"] == 12
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.row_count("raw_events") == 12


def test_template_fields_render_from_the_context(stores: tuple[LogStore, str], tmp_path: Path):
    logs, warehouse_uri = stores
    write_logs(logs, hours=range(2))
    operator = IngestLogsOperator(
        task_id="ingest",
        interval_start="{{ data_interval_start }}",
        interval_end="{{ data_interval_start + macros_delta }}",
        log_store_uri="{{ params.logs }}",
        warehouse_uri="{{ params.warehouse }}",
        quarantine_uri="{{ params.quarantine }}",
        quarantine_threshold="{{ params.threshold }}",
    )
    assert set(IngestLogsOperator.template_fields) >= {
        "interval_start",
        "interval_end",
        "log_store_uri",
        "warehouse_uri",
    }
    context = {
        "data_interval_start": MIDNIGHT,
        "data_interval_end": MIDNIGHT + timedelta(days=1),
        "macros_delta": timedelta(hours=1),
        "params": {
            "logs": logs.root_uri,
            "warehouse": warehouse_uri,
            "quarantine": (tmp_path / "q").as_uri(),
            "threshold": 0.25,
        },
    }
    operator.render_template_fields(context)
    assert operator.interval_start == "2024-05-01 00:00:00+00:00"
    assert operator.interval_end == "2024-05-01 01:00:00+00:00"
    assert (operator.log_store_uri, operator.warehouse_uri) == (logs.root_uri, warehouse_uri)
    assert operator.quarantine_threshold == "0.25"
    counts = operator.execute(context)
    assert counts["interval_end"] == "2024-05-01T01:00:00+00:00" and counts["loaded"] == 4  # hour 00 only
    assert counts["quarantine_threshold"] == 0.25


def test_threshold_failure_fails_the_task_without_retry(stores: tuple[LogStore, str]):
    logs, warehouse_uri = stores
    write_logs(logs, hours=range(1))
    logs.write(DAY, 0, "serving", [b"not json\n"])
    pushed = {}
    task_instance = SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value}))
    operator = IngestLogsOperator(task_id="ingest", log_store_uri=logs.root_uri, warehouse_uri=warehouse_uri)
    context = {"data_interval_start": MIDNIGHT, "data_interval_end": MIDNIGHT + timedelta(days=1), "ti": task_instance}
    with pytest.raises(AirflowFailException, match=r"1 of 5 lines quarantined \(20\.00%\).*invalid_json \(1\)"):
        operator.execute(context)
    assert pushed["counts"]["status"] == "failed_threshold" and pushed["counts"]["loaded"] == 4


def test_hooks_are_built_lazily_and_fall_back_to_settings(isolated_home: Path):
    operator = IngestLogsOperator(task_id="ingest")
    assert "log_store_hook" not in operator.__dict__
    location = operator.log_store_hook.get_location()
    assert location.uri == (isolated_home / "logs").as_uri() and location.s3_client is None
    assert operator.warehouse_hook.get_uri() == f"duckdb://{isolated_home / 'warehouse.duckdb'}"
    with operator.warehouse_hook.get_conn() as warehouse:
        assert warehouse.dialect == "duckdb"


def test_connections_configure_the_log_store_warehouse_and_key(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from loopline import pii

    logs = LogStore.from_uri(f"s3://{s3_bucket}/logs", s3_endpoint_url=s3_endpoint)
    write_logs(logs, hours=range(2), per_hour=3)
    extra = {"uri": f"s3://{s3_bucket}/logs", "endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    connection = {"conn_type": "loopline_logs", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_LOOPLINE_LOGS", json.dumps(connection))
    warehouse_uri = f"duckdb://{tmp_path / 'from-connection.duckdb'}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOOPLINE_WAREHOUSE", json.dumps({"conn_type": "generic", "extra": {"uri": warehouse_uri}})
    )
    monkeypatch.setenv("AIRFLOW_CONN_LOOPLINE_PII", json.dumps({"conn_type": "generic", "password": "k3y"}))

    hook = LogStoreHook()
    location = hook.get_location()
    assert (location.uri, location.s3_endpoint_url) == (extra["uri"], s3_endpoint) and location.s3_client is not None
    assert [obj.hour for obj in hook.get_conn().list(DAY)] == [0, 1]

    operator = IngestLogsOperator(task_id="ingest", quarantine_uri=(tmp_path / "q").as_uri())
    counts = operator.execute({"data_interval_start": MIDNIGHT, "data_interval_end": MIDNIGHT + timedelta(days=1)})
    assert counts["loaded"] == 6 and counts["pseudonymized_user_ids"] is True
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert {row[0] for row in warehouse.query("SELECT DISTINCT user_id FROM raw_events")} == {
            pii.pseudonymize(f"u{n}", b"k3y") for n in range(3)
        }


def test_warehouse_hook_builds_a_postgresql_uri_from_a_postgres_connection(monkeypatch: pytest.MonkeyPatch):
    connection = {"conn_type": "postgres", "host": "db.internal", "port": 5433, "schema": "loop", "login": "etl",
                  "password": "p@ss word"}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_WH", json.dumps(connection))
    assert WarehouseHook("wh").get_uri() == "postgresql://etl:p%40ss%20word@db.internal:5433/loop"
    monkeypatch.setenv("AIRFLOW_CONN_BAD", json.dumps({"conn_type": "http", "host": "x"}))
    with pytest.raises(ValueError, match="expected extra 'uri'"):
        WarehouseHook("bad").get_uri()


@pytest.mark.parametrize(
    ("context", "explicit", "expected"),
    [
        # a real data interval (CronDataIntervalTimetable)
        ({"data_interval_start": MIDNIGHT, "data_interval_end": MIDNIGHT + timedelta(days=1)}, (None, None),
         (MIDNIGHT, MIDNIGHT + timedelta(days=1))),
        # a point interval (CronTriggerTimetable "@daily"): the day before the logical date
        ({"data_interval_start": MIDNIGHT, "data_interval_end": MIDNIGHT, "logical_date": MIDNIGHT}, (None, None),
         (MIDNIGHT - timedelta(days=1), MIDNIGHT)),
        # a REST trigger without a logical date: the day before run_after
        ({"data_interval_start": None, "data_interval_end": None, "logical_date": None,
          "dag_run": SimpleNamespace(run_after=MIDNIGHT + timedelta(hours=5))}, (None, None),
         (MIDNIGHT - timedelta(days=1), MIDNIGHT)),
        # explicit values (rendered templates are text) win
        ({}, ("2024-05-01T03:00:00Z", "2024-05-01 05:00:00+00:00"),
         (MIDNIGHT + timedelta(hours=3), MIDNIGHT + timedelta(hours=5))),
        # naive means UTC; other zones are converted
        ({}, (datetime(2024, 5, 1), "2024-05-02T02:00:00+02:00"), (MIDNIGHT, MIDNIGHT + timedelta(days=1))),
    ],
)  # fmt: skip
def test_data_interval(context: dict, explicit: tuple, expected: tuple):
    start, end = data_interval(context, *explicit)
    assert (start, end) == expected
    assert type(start) is datetime and start.tzinfo is UTC


@pytest.mark.parametrize(
    ("context", "explicit", "message"),
    [
        ({}, ("2024-05-01", None), "both interval_start and interval_end or neither"),
        ({}, ("yesterday", "today"), "expected an ISO 8601 date-time"),
        ({}, (None, None), "no data interval, logical date or run_after"),
        ({}, ("2024-05-02T00:00:00Z", "2024-05-01T00:00:00Z"), "not after its start"),
    ],
)
def test_data_interval_refuses_what_it_cannot_use(context: dict, explicit: tuple, message: str):
    with pytest.raises(ValueError, match=message):
        data_interval(context, *explicit)
