"""loopline_etl run for real through dag.test(): simulated logs -> raw_events -> dbt marts.

Marked slow: a few DAG runs with dbt builds (~10 s each).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loopline.config import load_settings

pytestmark = pytest.mark.slow

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
FIRST_DAY = date(2024, 5, 1)


def run_etl_for(day: date) -> str:
    """Run loopline_etl for the interval [day, day + 1) and return the run's state."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["loopline_etl"]
    # dag.test(logical_date=D) gets the interval [D - 1 day, D): see STACK-NOTES.
    logical = pendulum.datetime(day.year, day.month, day.day, tz="UTC").add(days=1)
    return str(dag.test(logical_date=logical).state)


def test_etl_runs_are_idempotent_backfills_agree_and_labels_match_the_truth(airflow_db, isolated_home):
    from loopline.simulate import simulate
    from loopline.transform import mart_checksums
    from loopline.warehouse import Warehouse

    settings = load_settings()
    summary = simulate(
        settings.log_store_uri,
        start_date=FIRST_DAY,
        days=3,
        users=300,
        items=80,
        events_per_day=6_000,
        seed=11,
        pii_rate=0.02,
        malformed_rate=0.002,
    )
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(3)]

    for day in days:  # a three-day backfill, one run per day
        assert run_etl_for(day) == "success"
    after_backfill = mart_checksums(settings.warehouse_uri)

    assert run_etl_for(days[1]) == "success"  # re-running a day in the middle
    assert run_etl_for(days[2]) == "success"
    assert mart_checksums(settings.warehouse_uri) == after_backfill

    with Warehouse.from_uri(settings.warehouse_uri) as warehouse:
        impressions = warehouse.scalar("select count(*) from training_examples")
        labelled_clicks = warehouse.scalar("select count(*) from training_examples where is_clicked")
        # Independent of dbt's SQL: impressions with a click of the same request and item in 30 minutes.
        clicks_in_window = warehouse.scalar(
            """
            select count(*) from raw_events i
            where i.event_type = 'impression' and exists (
                select 1 from raw_events c
                where c.event_type = 'click' and c.request_id = i.request_id and c.item_id = i.item_id
                  and c.event_at >= i.event_at and c.event_at <= i.event_at + interval '30 minutes')
            """
        )
        runs = warehouse.scalar("select count(*) from ingest_runs where status = 'succeeded'")
        active_user, active_item = warehouse.query(
            "select user_id, item_id from training_examples where event_date = ? limit 1", [days[2]]
        )[0]
    truth = pq.read_table(Path(summary.truth_dir) / "oracle").to_pandas()
    truth = truth[truth["event_at"] < datetime(2024, 5, 4, tzinfo=truth["event_at"].dt.tz)]

    assert impressions == len(truth) == summary.impressions
    assert labelled_clicks == clicks_in_window
    # The simulator's truth counts every click, late ones too; the 30-minute window keeps nearly all.
    assert 0.9 * truth["clicked"].sum() <= labelled_clicks <= truth["clicked"].sum()
    assert runs == 5

    # The last run materialized the online store: the day's active entities have features there.
    from loopline.features import online

    served = online(active_user, [active_item, "never-seen-item"])
    assert list(served.missing_users) == []
    assert list(served.missing_items) == ["never-seen-item"]

    # The retrain DAG's gates run on the same warehouse: each returns a full decision record.
    from datetime import UTC

    from loopline_airflow.operators.gates import DataQualityGateOperator, DriftGateOperator

    last_day_end = datetime(2024, 5, 4, tzinfo=UTC)
    context = {"data_interval_start": last_day_end - timedelta(days=1), "data_interval_end": last_day_end}
    quality = DataQualityGateOperator(task_id="quality_gate", window_days=1, fail_on_block=False).execute(context)
    drift = DriftGateOperator(task_id="drift_gate", window_days=1, fail_on_block=False).execute(context)
    for decision in (quality, drift):
        assert decision["outcome"] in {"pass", "retrain", "block"}
        assert decision["checks"] and decision["thresholds"]
        assert decision["report_uri"].startswith(settings.artifact_uri)
    # The simulated PII was redacted at ingestion, so the PII check itself passes.
    assert next(c for c in quality["checks"] if c["name"].startswith("pii"))["status"] == "ok"
    html = Path(drift["report_uri"].removeprefix("file://"))
    assert html.suffix == ".html" and html.is_file() and "user_ctr_7d" in html.read_text()
