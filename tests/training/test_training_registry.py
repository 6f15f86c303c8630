"""MLflow tracking and registry with the alias audit, the evaluation gate and the compression gate,
end to end on SQLite + local artifacts + DuckDB (and once on PostgreSQL + S3)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from loopline import registry
from loopline.compress import compress_run
from loopline.training import BLESSED, NOT_BLESSED, Lineage, evaluate_candidate, load_holdout, run_training
from loopline.warehouse import Warehouse

pytestmark = pytest.mark.slow

LINEAGE = Lineage(
    data_interval_start="2024-03-01T00:00:00+00:00",
    data_interval_end="2024-03-07T00:00:00+00:00",
    ingest_run_ids=["ingest-1", "ingest-2"],
    dbt_invocation_id="dbt-123",
    airflow_dag_run_id="scheduled__2024-03-07",
)
NO_DISTILL = {"compression.distill": False}


def _last_days(frame: pd.DataFrame, days: int) -> pd.DataFrame:
    return frame[frame["event_date"] >= sorted(frame["event_date"].unique())[-days]]


def _shuffled_training_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Labels of the training days shuffled (the holdout keeps its true labels, as the gate's data would)."""
    damaged = frame.copy()
    train = damaged["event_date"] < damaged["event_date"].max()
    labels = damaged.loc[train, "is_clicked"].to_numpy()
    damaged.loc[train, "is_clicked"] = np.random.default_rng(0).permutation(labels)
    return damaged


def test_training_run_logs_everything_serving_and_the_gates_need(stores, simulation, fast_config, tmp_path):
    report = tmp_path / "drift_report.html"  # the drift gate's report (the stack test makes a real one)
    report.write_text("<html>drift report</html>")
    run = run_training(simulation.frame, config=fast_config, lineage=LINEAGE, evidently_report=report)
    client = registry.client()
    logged = client.get_run(run.run_id)
    assert logged.data.params["network.embedding_dim"] == "16"
    assert "user_ctr_7d" in logged.data.params["features.numeric"]
    for key in ("auc", "log_loss", "calibration_error", "ndcg_at_10", "popularity_auc", "logistic_auc", "oracle_auc"):
        assert key in logged.data.metrics, key
    tags = logged.data.tags
    assert tags["loopline.lineage.ingest_run_ids"] == "ingest-1,ingest-2"
    assert tags["loopline.lineage.dbt_invocation_id"] == "dbt-123"
    assert tags["loopline.lineage.feature_service"] == "ctr_ranker_v1"
    assert tags["loopline.lineage.airflow_dag_run_id"] == "scheduled__2024-03-07"
    assert tags["loopline.lineage.data_interval_start"].startswith("2024-03-01")
    assert len(tags["loopline.lineage.git_commit"]) == 40
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"evidently", "holdout", "checkpoint", "metrics"} <= artifacts
    assert any(a.path.endswith(".html") for a in client.list_artifacts(run.run_id, "evidently"))
    # The model: a pyfunc with signature and input example, loading without Loopline's training code.
    info = mlflow.models.get_model_info(run.model_uri)
    assert info.signature is not None and "user_id" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    pyfunc = mlflow.pyfunc.load_model(run.model_uri)
    example = run.holdout.head(20)
    served = pyfunc.predict(example.drop(columns=["position"]))["click_probability"].to_numpy()
    loaded = registry.load_from_uri(run.model_uri)
    assert np.allclose(served, loaded.predict(example), atol=1e-6)
    assert len(load_holdout(run.run_id)) == run.holdout_rows
    assert json.loads(json.dumps(run.to_dict()))["run_id"] == run.run_id


def test_gates_registry_and_alias_audit(stores, simulation, fast_config):
    frame = simulation.frame
    warehouse_uri = stores.warehouse_uri

    # 1. The first model: value thresholds only, then compressed, registered, promoted.
    weak = run_training(_last_days(frame, 3), config=fast_config, lineage=LINEAGE)
    first = evaluate_candidate(weak.run_id, config=fast_config)
    assert first.verdict == BLESSED and first.baseline_version is None
    assert [c.kind for c in first.checks] == ["value", "value"]
    version_1 = registry.register_candidate(weak.run_id, reason="first model", by_run_id="dag-run-1")
    registry.promote(version_1, reason="first champion", run_id="dag-run-1")
    champion = registry.load_model("champion")
    assert champion.version == version_1 and 0 < registry.smoke_test(champion) < 1

    # 2. A better candidate (all days) is blessed against that champion on the same holdout.
    better = run_training(frame, config=fast_config, lineage=LINEAGE)
    verdict = evaluate_candidate(better.run_id, config=fast_config)
    assert verdict.verdict == BLESSED, verdict.to_table()
    assert verdict.baseline_version == version_1
    assert verdict.candidate_metrics["auc"] > verdict.baseline_metrics["auc"]
    assert {c.name for c in verdict.checks} == {"auc", "calibration_error", "auc_vs_champion", "log_loss_vs_champion"}
    compression = compress_run(better.run_id, train_frame=frame, overrides={**NO_DISTILL, "training.epochs": 5})
    chosen = compression.variant(compression.chosen)
    assert compression.variant("fp32").auc - chosen.auc <= fast_config.compression.max_auc_drop
    version_2 = registry.register_candidate(better.run_id, reason="blessed", by_run_id="dag-run-2")
    assert registry.alias_version("challenger") == version_2
    registry.promote(version_2, reason="canary passed", run_id="dag-run-2")
    assert registry.load_model("champion").version == version_2
    assert registry.alias_version("previous") == version_1
    # The registered model is the chosen variant, and it loads as a pyfunc by alias.
    version = registry.client().get_model_version(registry.MODEL_NAME, version_2)
    assert version.tags["compression_variant"] == compression.chosen
    assert version.tags["evaluation_verdict_id"] == verdict.verdict_id
    pyfunc = registry.load_pyfunc("champion")
    assert len(pyfunc.predict(frame.head(3).drop(columns=["position"]))) == 3

    # 3. A damaged candidate (trained on shuffled labels) is rejected, with the numbers.
    damaged = run_training(_shuffled_training_labels(frame), config=fast_config, lineage=LINEAGE)
    rejected = evaluate_candidate(damaged.run_id, config=fast_config)
    assert rejected.verdict == NOT_BLESSED
    assert rejected.candidate_metrics["auc"] < 0.6 < rejected.baseline_metrics["auc"]
    assert "auc_vs_champion" in {c.name for c in rejected.checks if not c.passed}
    assert "AUC" in rejected.summary() and rejected.baseline_version == version_2
    with pytest.raises(registry.RegistryError, match="not blessed"):
        registry.register_candidate(damaged.run_id)
    assert registry.client().get_run(damaged.run_id).data.tags[registry.TAG_EVALUATION_VERDICT] == NOT_BLESSED

    # 4. Rollback, and the champion is never removed.
    registry.rollback(reason="conversion dropped", run_id="dag-run-3")
    assert registry.load_model("champion").version == version_1
    with pytest.raises(registry.RegistryError, match="never removed"):
        registry.remove_alias("champion", reason="x", run_id="y")

    # Every alias move is in the audit table, in order, with from/to/why/by.
    moves = [(m.alias, m.from_version, m.to_version, m.by_run_id) for m in registry.alias_history()]
    assert moves == [
        ("challenger", None, version_1, "dag-run-1"),
        ("champion", None, version_1, "dag-run-1"),
        ("challenger", version_1, version_2, "dag-run-2"),
        ("previous", None, version_1, "dag-run-2"),
        ("champion", version_1, version_2, "dag-run-2"),
        ("champion", version_2, version_1, "dag-run-3"),
    ]
    assert all(m.reason for m in registry.alias_history())
    # Every verdict is stored with its numbers.
    stored = registry.verdict_history(warehouse_uri=warehouse_uri)
    assert [(v["gate"], v["verdict"]) for v in stored] == [
        ("evaluation", BLESSED),
        ("evaluation", BLESSED),
        ("compression", compression.chosen),
        ("evaluation", NOT_BLESSED),
    ]
    assert stored[-1]["details"]["candidate_metrics"]["auc"] == pytest.approx(rejected.candidate_metrics["auc"])
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.row_count("model_alias_audit") == 6


def test_failed_audit_write_undoes_the_alias_move(stores, simulation, fast_config, monkeypatch):
    run = run_training(_last_days(simulation.frame, 2), config=fast_config)
    version = registry.register_candidate(run.run_id, alias=None, require_blessed=False)
    before = registry.alias_version("challenger")

    def broken(*args, **kwargs):
        raise RuntimeError("warehouse down")

    monkeypatch.setattr(registry, "_write_move", broken)
    with pytest.raises(RuntimeError, match="warehouse down"):
        registry.set_alias("challenger", version, reason="test", run_id="r")
    assert registry.alias_version("challenger") == before


@pytest.mark.stack
def test_stack_profile_postgres_tracking_and_s3_artifacts(
    isolated_home, postgres_url, s3_endpoint, s3_bucket, simulation, fast_config, monkeypatch
):
    from loopline import config

    monkeypatch.setenv("LOOPLINE_MLFLOW_TRACKING_URI", postgres_url)
    monkeypatch.setenv("LOOPLINE_WAREHOUSE_URI", postgres_url)
    monkeypatch.setenv("LOOPLINE_ARTIFACT_URI", f"s3://{s3_bucket}/artifacts")
    monkeypatch.setenv("LOOPLINE_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    config.settings.cache_clear()
    run = run_training(_last_days(simulation.frame, 3), config=fast_config, lineage=LINEAGE, make_drift_report=True)
    evidently = registry.client().list_artifacts(run.run_id, "evidently")
    assert {Path(a.path).suffix for a in evidently} == {".html", ".json"}
    assert registry.client().get_run(run.run_id).info.artifact_uri.startswith(f"s3://{s3_bucket}/")
    assert evaluate_candidate(run.run_id, config=fast_config).blessed
    version = registry.register_candidate(run.run_id, by_run_id="stack-run")
    registry.promote(version, reason="stack", run_id="stack-run")
    assert registry.load_model("champion").version == version
    assert [m.to_version for m in registry.alias_history()] == [version, version]
