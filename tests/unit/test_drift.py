"""loopline.drift: seeded stratified sampling, the Evidently report and its artifacts (file://, S3,
MLflow), and reading Evidently's per-column numbers right (checked against a scipy twin)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from loopline.drift import run_drift_report, scipy_column_drift, stratified_sample
from loopline.gates import decide_drift, load_policy

NUMERICAL = ["price", "item_ctr_28d", "position"]
CATEGORICAL = ["device", "item_category"]


def window(rows: int, seed: int, *, shift: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    category_weights = np.array([6.0, 5, 4, 3, 2, 1])
    if shift:
        category_weights = category_weights[::-1]
    return pd.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in rng.integers(0, max(rows // 20, 1), rows)],
            "event_at": pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3 * 86_400, rows), "s"),
            "is_clicked": rng.random(rows) < 0.05,
            "price": rng.lognormal(3.0, 0.6, rows),
            "item_ctr_28d": rng.beta(2, 20 if shift else 38, rows),
            "position": rng.integers(1, 11, rows),
            "device": rng.choice(["mobile", "desktop", "tablet"], rows, p=[0.55, 0.37, 0.08]),
            "item_category": rng.choice(list("abcdef"), rows, p=category_weights / category_weights.sum()),
        }
    )


def html_verdicts(html: str) -> dict[str, str]:
    """Per column, "Detected" / "Not Detected" from the "Drift by column" table in the HTML."""
    row = r'\["([^"]+)", "(?:numerical|categorical)", "[^"]*", "[^"]*", "[^"]*", "((?:Not )?Detected)"\]'
    return dict(re.findall(row, html))


def html_column_widgets(html: str) -> dict[str, str]:
    """Per column, the verdict of its own ValueDrift widget ("Drift in column 'x'": "detected"...)."""
    counter = r'"value": "Drift in column \'([^\']+)\'", "label": "Data drift ((?:not )?detected)\.'
    return dict(re.findall(counter, html))


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def test_stratified_sample_keeps_the_cap_the_strata_shares_and_the_row_order():
    frame = window(20_000, 1)
    sample = stratified_sample(frame, max_rows=3000, seed=5, strata_columns=["is_clicked"], time_column="event_at")

    assert len(sample) == 3000
    assert sample.index.is_monotonic_increasing and sample.index.is_unique
    strata = [frame["is_clicked"], frame["event_at"].dt.floor("D")]
    expected = frame.groupby(strata).size() * 3000 / len(frame)
    observed = sample.groupby([sample["is_clicked"], sample["event_at"].dt.floor("D")]).size()
    assert (observed.reindex(expected.index, fill_value=0) - expected).abs().max() < 1.0  # largest remainder


def test_stratified_sample_is_reproducible_per_seed_and_a_small_frame_is_kept_whole():
    frame = window(5000, 2)
    first = stratified_sample(frame, max_rows=500, seed=(0, 1), strata_columns=["is_clicked"])
    again = stratified_sample(frame, max_rows=500, seed=(0, 1), strata_columns=["is_clicked"])
    other = stratified_sample(frame, max_rows=500, seed=(1, 1), strata_columns=["is_clicked"])
    assert first.index.equals(again.index)
    assert not first.index.equals(other.index)
    assert stratified_sample(frame, max_rows=5000, seed=0) is frame


def test_stratified_sample_names_a_missing_column():
    frame = window(100, 3)
    with pytest.raises(ValueError, match="stratify column 'label'"):
        stratified_sample(frame, max_rows=10, strata_columns=["label"])
    with pytest.raises(ValueError, match="time column 'ts'.*time_column=None"):
        stratified_sample(frame, max_rows=10, time_column="ts")
    with pytest.raises(ValueError, match="not a timestamp column"):
        stratified_sample(frame, max_rows=10, time_column="device")


# --------------------------------------------------------------------------------------------------
# The Evidently report
# --------------------------------------------------------------------------------------------------


def test_shifted_columns_are_named_in_the_html_and_json_reports(tmp_path):
    reference = window(3000, 10)
    current = window(3000, 11, shift=True)
    out = tmp_path / "reports" / "drift"
    result = run_drift_report(
        current, reference, numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL, out_uri=out.as_uri()
    )

    assert set(result.drifted_columns) == {"item_ctr_28d", "item_category"}
    assert result.drifted_count == 2 and result.column_count == 5
    assert result.drift_share == pytest.approx(0.4)
    assert result.dataset_drift  # 0.4 >= 0.3
    assert result.html_uri == (out / "drift_report.html").as_uri()

    html = (out / "drift_report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    verdicts = html_verdicts(html)
    assert verdicts == {
        "item_ctr_28d": "Detected",
        "item_category": "Detected",
        "price": "Not Detected",
        "position": "Not Detected",
        "device": "Not Detected",
    }
    assert list(verdicts)[:2] == ["item_ctr_28d", "item_category"]  # drifted columns head the table
    assert html_column_widgets(html) == {column: verdict.lower() for column, verdict in verdicts.items()}
    assert "Dataset Drift is detected. Dataset drift detection threshold is 0.3" in html

    snapshot = json.loads((out / "drift_report.json").read_text(encoding="utf-8"))
    per_column = {m["config"]["column"]: m for m in snapshot["metrics"] if m["config"]["type"].endswith(":ValueDrift")}
    assert set(per_column) == set(NUMERICAL + CATEGORICAL)
    assert per_column["item_ctr_28d"]["value"] >= per_column["item_ctr_28d"]["config"]["threshold"]
    failed = {t["metric_config"]["metric_id"] for t in snapshot["tests"] if t["status"] == "FAIL"}
    assert {per_column[c]["id"] for c in ("item_ctr_28d", "item_category")} <= failed

    table = result.to_table()
    assert "item_ctr_28d" in table and "Wasserstein distance (normed)" in table and "yes" in table
    decision = decide_drift(result)
    assert decision.outcome == "retrain"
    assert decision.report_uri == result.html_uri
    assert "item_ctr_28d, item_category" in decision.reasons[0]


def evidently_datasets(current: pd.DataFrame, reference: pd.DataFrame):
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    columns = NUMERICAL + CATEGORICAL
    return (
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )


@pytest.mark.parametrize("rows", [3000, 600], ids=["distances", "p-values"])
def test_the_gate_preset_has_the_stock_presets_metrics_tests_and_json(rows):
    """DataDriftGatePreset changes only the HTML: with the same options, its snapshot's metrics
    (methods, thresholds, values, drifted count and share) and tests equal DataDriftPreset's."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from loopline.drift import drift_gate_preset

    current, reference = evidently_datasets(window(rows, 70, shift=True), window(rows, 71))
    options = {"drift_share": 0.3, "cat_method": "psi", "num_threshold": 0.2}
    stock = Report([DataDriftPreset(**options)], include_tests=True).run(current, reference).dict()
    gate = Report([drift_gate_preset()(**options)], include_tests=True).run(current, reference).dict()

    assert gate == stock
    configs = {m["config"].get("column"): m["config"] for m in gate["metrics"]}
    assert configs["device"]["method"] == configs["item_category"]["method"] == "psi"  # options reach the metrics
    assert configs["price"]["threshold"] == 0.2
    assert len(gate["tests"]) == 1 + len(NUMERICAL + CATEGORICAL)


def test_each_column_is_tested_twice_by_the_gate_preset_and_three_times_by_the_stock_one(monkeypatch):
    """The stock preset tests every column for its ValueDrift metric, for DriftedColumnsCount's
    legacy DatasetDriftMetric and again for the legacy DataDriftTable it draws; the gate preset
    draws its HTML from results already computed, so the third pass (and its figures) is gone."""
    from evidently import Report
    from evidently.legacy.calculations import data_drift
    from evidently.metrics import column_statistics
    from evidently.presets import DataDriftPreset

    from loopline.drift import drift_gate_preset

    calls: list[str] = []
    real = data_drift.get_one_column_drift

    def counted(**kwargs):  # Evidently's own function, only counted
        calls.append(kwargs["column_name"])
        return real(**kwargs)

    monkeypatch.setattr(data_drift, "get_one_column_drift", counted)  # DatasetDriftMetric, DataDriftTable
    monkeypatch.setattr(column_statistics, "get_one_column_drift", counted)  # ValueDrift
    current, reference = evidently_datasets(window(1500, 80, shift=True), window(1500, 81))

    for preset, passes in ((drift_gate_preset(), 2), (DataDriftPreset, 3)):
        calls.clear()
        Report([preset(drift_share=0.3)], include_tests=True).run(current, reference)  # renders too
        assert sorted(calls) == sorted((NUMERICAL + CATEGORICAL) * passes), preset.__name__


@pytest.mark.parametrize("rows", [3000, 600], ids=["distances", "p-values"])
def test_per_column_values_equal_an_independent_scipy_computation(rows):
    """Above 1000 reference rows Evidently reports distances, at or below p-values: the result
    records which, and every value and verdict matches scipy on the same rows."""
    reference = window(rows, 20)
    current = window(rows, 21, shift=True)
    result = run_drift_report(current, reference, numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    assert result.current_sampled_rows == rows  # below the cap: no sampling
    for column in result.columns:
        twin = scipy_column_drift(reference[column.column], current[column.column], kind=column.kind)
        assert column.method == twin.method
        assert column.score_kind == ("distance" if rows > 1000 else "p_value")
        assert column.value == pytest.approx(twin.value, rel=1e-9, abs=1e-12)
        assert column.drifted == twin.drifted
        assert column.threshold == twin.threshold
    assert "item_ctr_28d" in result.drifted_columns


def test_large_tables_are_sampled_to_the_policy_cap_with_the_seed():
    reference = window(6000, 30)
    current = window(8000, 31)
    policy = load_policy(overrides={"drift.max_rows": 2000, "drift.seed": 4})
    result = run_drift_report(
        current, reference, numerical_columns=["price"], categorical_columns=["device"], policy=policy
    )
    assert (result.current_sampled_rows, result.reference_sampled_rows) == (2000, 2000)
    assert (result.current_rows, result.reference_rows) == (8000, 6000)
    assert result.sampling == {"max_rows": 2000, "seed": 4, "strata": ["is_clicked", "day(event_at)"]}
    assert result.drifted_count == 0
    assert decide_drift(result).outcome == "pass"


def test_columns_are_inferred_and_an_empty_column_is_skipped_with_a_reason():
    reference = window(1500, 40)
    current = window(1500, 41)
    current["discount"] = np.nan
    reference["discount"] = 0.1
    result = run_drift_report(current, reference, stratify_by=(), time_column=None)
    tested = {column.column for column in result.columns}
    assert tested == {"price", "item_ctr_28d", "position", "device", "item_category"}  # no ids, label, time
    assert result.skipped_columns == {"discount": "no values in the current window"}
    assert any(c.name == "drift:discount" and c.status == "skipped" for c in decide_drift(result).checks)


def test_bad_inputs_raise_clear_errors():
    frame = window(200, 50)
    with pytest.raises(ValueError, match="reference frame is empty"):
        run_drift_report(frame, frame.iloc[:0])
    with pytest.raises(ValueError, match=r"\['price'\] are missing from the reference"):
        run_drift_report(frame, frame.drop(columns=["price"]), numerical_columns=["price"], categorical_columns=[])
    with pytest.raises(ValueError, match="stratify column 'label'"):
        run_drift_report(frame, frame, stratify_by=["label"])


@pytest.mark.slow
def test_reports_go_to_s3_and_to_the_mlflow_run(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    import boto3
    import mlflow
    from mlflow.tracking import MlflowClient

    from loopline import config

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("LOOPLINE_MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    config.settings.cache_clear()
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("gates", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    assert mlflow.__version__.startswith("3.")

    result = run_drift_report(
        window(1500, 60, shift=True),
        window(1500, 61),
        numerical_columns=NUMERICAL,
        categorical_columns=CATEGORICAL,
        out_uri=f"s3://{s3_bucket}/reports/drift/dt=2024-05-01",
        s3_endpoint_url=s3_endpoint,
        mlflow_run_id=run.info.run_id,
    )

    assert result.html_uri == f"s3://{s3_bucket}/reports/drift/dt=2024-05-01/drift_report.html"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    html = s3.get_object(Bucket=s3_bucket, Key="reports/drift/dt=2024-05-01/drift_report.html")["Body"].read()
    assert html_verdicts(html.decode("utf-8"))["item_ctr_28d"] == "Detected"
    head = s3.head_object(Bucket=s3_bucket, Key="reports/drift/dt=2024-05-01/drift_report.json")
    assert head["ContentType"] == "application/json"

    logged = sorted(a.path for a in client.list_artifacts(run.info.run_id, "drift_report"))
    assert logged == ["drift_report/drift_report.html", "drift_report/drift_report.json"]
    assert result.mlflow_artifact_uri.endswith("/artifacts/drift_report")
