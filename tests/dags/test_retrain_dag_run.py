"""loopline_retrain run for real through dag.test() on a simulated, ingested and materialized world.

The first model: no champion yet and no reference window, so the drift gate is skipped with its
reason, the model trains, faces the value thresholds only, is compressed and registered as
`challenger`, with the alias move audited; then it is packaged as a Bento (exported under the
artifact store), the Bento is served and validated, and only then the candidate Asset is emitted.
Marked slow (~2-3 min).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from loopline.config import load_settings

pytestmark = pytest.mark.slow

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
FIRST_DAY = date(2024, 5, 1)
DAYS = 4


def test_first_model_is_trained_blessed_compressed_registered_packaged_and_validated(airflow_db, isolated_home):
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    from loopline.features import apply, materialize_interval
    from loopline.ingest import ingest_interval
    from loopline.registry import alias_history, alias_version
    from loopline.simulate import simulate
    from loopline.transform import run_dbt

    settings = load_settings()
    simulate(
        settings.log_store_uri,
        start_date=FIRST_DAY,
        days=DAYS,
        users=300,
        items=80,
        events_per_day=12_000,
        seed=21,
        policy="random",
    )
    apply()
    for offset in range(DAYS):  # what loopline_etl does per day (tested through the DAG elsewhere)
        start = datetime.combine(FIRST_DAY + timedelta(days=offset), datetime.min.time(), tzinfo=UTC)
        ingest_interval(start, start + timedelta(days=1))
        run_dbt("build", run_date=start.date())
        materialize_interval(start, start + timedelta(days=1))

    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["loopline_retrain"]
    # The nightly run on day 5 trains on the window of the 4 days before it.
    logical = pendulum.datetime(2024, 5, 5, 2, tz="UTC")
    run = dag.test(logical_date=logical, run_conf={"window_days": DAYS, "epochs": 3})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {
        "quality_gate": "success",
        "drift_gate": "success",
        "decide": "success",
        "train": "success",
        "evaluate": "success",
        "compress": "success",
        "register": "success",
        "package": "success",
        "validate": "success",
    }, states

    version = alias_version("challenger")
    assert version is not None
    moves = alias_history()
    assert [(m.alias, m.to_version) for m in moves][-1] == ("challenger", str(version))
    assert alias_version("champion") is None  # promotion is the canary's job

    # The registered version, packaged: a Bento in LOOPLINE_HOME/bentoml labelled with it, exported.
    import bentoml

    from loopline.registry import verdict_history
    from loopline.serving.packaging import ensure_bentoml_home

    assert ensure_bentoml_home() == isolated_home / "bentoml"
    packaged = run.get_task_instance("package").xcom_pull(task_ids="package")
    bento = bentoml.bentos.get(packaged["bento_tag"])
    assert bento.info.labels["mlflow_version"] == str(version)
    assert bento.info.labels["airflow_dag_run_id"] == run.run_id == bento.info.labels["packaged_by"]
    exported = isolated_home / "artifacts" / "bentos" / bento.tag.name / f"{bento.tag.version}.bento"
    assert packaged["export_uri"] == exported.as_uri() and exported.stat().st_size == packaged["size_bytes"]
    # ... and validated: served, schema, score parity and p99 checked, the verdict stored.
    validated = run.get_task_instance("validate").xcom_pull(task_ids="validate")
    assert validated["passed"] is True and validated["bento_tag"] == packaged["bento_tag"]
    verdicts = verdict_history("bento_validation")
    assert [(row["verdict"], row["candidate_version"]) for row in verdicts] == [("PASSED", str(version))]
    assert verdicts[0]["details"]["scores"]["rows"] > 0 and verdicts[0]["details"]["latency"]["p99_ms"] <= 100
