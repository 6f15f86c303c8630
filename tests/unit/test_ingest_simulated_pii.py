"""PII against the simulator's truth: every planted value is gone from the warehouse, other text is kept."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from loopline.ingest import ingest_interval
from loopline.logstore import LogStore
from loopline.simulate import simulate
from loopline.warehouse import Warehouse

DAY = date(2024, 5, 1)


@pytest.mark.parametrize("warehouse_kind", ["duckdb", "postgresql"])
def test_every_planted_pii_value_is_absent_from_the_warehouse(tmp_path: Path, warehouse_kind: str, request):
    logs = (tmp_path / "logs").as_uri()
    summary = simulate(
        logs,
        start_date=DAY,
        days=1,
        users=200,
        items=60,
        events_per_day=20_000,
        seed=3,
        pii_rate=0.3,
        malformed_rate=0.002,
        truth_dir=tmp_path / "truth",
    )
    planted = [json.loads(line) for line in (tmp_path / "truth" / "pii.jsonl").read_text().splitlines()]
    values = {row["value"] for row in planted}
    assert summary.pii_planted == len(planted) and len(values) >= 20

    warehouse_uri = (
        f"duckdb://{tmp_path / 'warehouse.duckdb'}"
        if warehouse_kind == "duckdb"
        else request.getfixturevalue("postgres_url")
    )
    start = datetime(2024, 5, 1, tzinfo=UTC)
    result = ingest_interval(
        start,
        start + timedelta(days=2),
        log_store_uri=logs,
        warehouse_uri=warehouse_uri,
        quarantine_uri=(tmp_path / "quarantine").as_uri(),
    )
    assert sum(result.redactions_by_type.values()) >= len(planted)

    with Warehouse.from_uri(warehouse_uri) as warehouse:
        stored_text = [
            value
            for row in warehouse.query("select event_id, user_id, item_id, request_id, query from raw_events")
            for value in row
            if value
        ]
        stored_text += [
            base64.b64decode(row[0]).decode("utf-8", "replace")
            for row in warehouse.query("select raw_base64 from quarantine_events")
        ]
        stored_queries = dict(warehouse.query("select event_id, query from raw_events where query is not null"))
    blob = "\n".join(stored_text)
    leaked = sorted(value for value in values if value in blob)
    assert leaked == [], f"{len(leaked)} planted PII values reached the warehouse, e.g. {leaked[:3]}"

    # Legitimate text is untouched: every query without planted PII arrives exactly as logged.
    planted_events = {row["event_id"] for row in planted}
    store = LogStore.from_uri(logs)
    checked = 0
    for obj in store.list(DAY):
        for line in store.iter_lines(obj):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("event_id"), str):
                continue
            event_id = record["event_id"]
            if record.get("query") and event_id not in planted_events and event_id in stored_queries:
                assert stored_queries[event_id] == record["query"]
                checked += 1
    assert checked > 100
