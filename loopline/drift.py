"""The drift gate's measurement: an Evidently 0.7 data-drift report of current vs reference.

``run_drift_report`` samples both windows (``stratified_sample``), runs a ``DataDriftPreset`` (the
metrics are the preset's own: ``DriftedColumnsCount`` plus one ``ValueDrift`` per column; only its
HTML layout differs, see ``drift_gate_preset``), saves the report as self-contained HTML and as JSON
(``file://`` directory or ``s3://bucket/prefix``; attached to an MLflow run when a run id is given)
and returns a :class:`DriftResult`: the dataset-level share of drifted columns and one row per
column (method, value, threshold, drifted). ``loopline.gates.decide_drift`` turns it into a gate
decision.

Reading Evidently's numbers: with more than 1000 reference rows the default tests are distances
(normed Wasserstein for numerical columns, Jensen-Shannon for categorical and few-valued numerical
columns; drift if value >= 0.1); with 1000 rows or fewer they are p-values (KS, chi-square, Z-test;
drift if p < 0.05). Each column row records its method and ``score_kind`` ("distance"/"p_value"),
and ``drifted`` is Evidently's own verdict, so no number is read without its method.

Sampling (why and how): Evidently's cost grows with rows (200k x 20 columns: ~11 s, 560 MB), and
drift tests at 50k rows per side already resolve differences far below the 0.1 thresholds. A side
with more than ``policy.drift.max_rows`` rows is cut to exactly that many by stratified sampling:
strata are the combinations of ``stratify_by`` columns (default: the label) and the UTC day of
``time_column`` (default ``event_at``); each stratum gets its proportional share of the sample,
rounded by largest remainder; inside a stratum rows are drawn uniformly without replacement with
``numpy.random.default_rng((seed, side))`` (side 0 = current, 1 = reference). The same rows in the
same order with the same seed always give the same sample, so a re-run reproduces its report.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.gates import Check, GatePolicy, load_policy, store_report_file
from loopline.quality import ROLE_COLUMNS, resolve_feature_columns

# Evidently display names of the tests whose score is a p-value (drift when small).
P_VALUE_METHODS = frozenset(
    {
        "K-S p_value",
        "chi-square p_value",
        "Z-test p_value",
        "Anderson-Darling",
        "Cramer-von Mises",
        "Epps-Singleton",
        "Fisher's Exact test",
        "g_test",
        "Mann-Whitney U-rank test",
        "t_test",
    }
)
SMALL_DATA_ROWS = 1000  # Evidently switches from p-values to distances above this many reference rows


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test: the method, its score, the threshold and the verdict."""

    column: str
    kind: str  # "numerical" | "categorical"
    method: str  # Evidently's display name, e.g. "Wasserstein distance (normed)"
    score_kind: str  # "distance" (drift if >= threshold) or "p_value" (drift if < threshold)
    value: float
    threshold: float
    drifted: bool

    @property
    def rule(self) -> str:
        return f"drift if < {self.threshold:g}" if self.score_kind == "p_value" else f"drift if >= {self.threshold:g}"


@dataclass
class DriftResult:
    """The drift report's numbers and where the report files are."""

    drifted_count: int
    column_count: int
    drift_share: float  # drifted_count / column_count
    share_threshold: float  # policy drift.drift_share used for Evidently's dataset drift
    dataset_drift: bool  # drift_share >= share_threshold
    columns: tuple[ColumnDrift, ...]
    current_rows: int
    reference_rows: int
    current_sampled_rows: int
    reference_sampled_rows: int
    sampling: dict[str, Any]
    policy: GatePolicy
    skipped_columns: dict[str, str] = field(default_factory=dict)
    html_uri: str | None = None
    json_uri: str | None = None
    mlflow_artifact_uri: str | None = None
    # wall time of: sample (stratified sampling), evidently (Datasets + Report.run: every test, the dataset
    # count and the plotly figures; evidently_datasets is the Datasets' share of it), save (rendering the
    # HTML and JSON, storing and logging them)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def drifted_columns(self) -> list[str]:
        return [column.column for column in self.columns if column.drifted]

    def judge(self, policy: GatePolicy | None = None) -> list[Check]:
        """The dataset-level check (retrain if the drifted share reaches ``drift.drift_share``) and one
        informational check per column (warn when drifted)."""
        threshold = (policy or self.policy).drift.drift_share
        drifted = self.drifted_columns
        detail = f"{self.drifted_count} of {self.column_count} columns drifted"
        if drifted:
            detail += ": " + ", ".join(drifted)
        checks = [
            Check(
                "drifted_column_share",
                "retrain" if self.column_count and self.drift_share >= threshold else "ok",
                self.drift_share,
                f"retrain if >= {threshold:g}",
                detail,
            )
        ]
        for column in self.columns:
            checks.append(
                Check(
                    f"drift:{column.column}",
                    "warn" if column.drifted else "ok",
                    column.value,
                    column.rule,
                    f"{column.kind}, {column.method}",
                )
            )
        for column, reason in self.skipped_columns.items():
            checks.append(Check(f"drift:{column}", "skipped", None, "-", reason))
        return checks

    def summary(self) -> dict[str, Any]:
        return {
            "drift_share": self.drift_share,
            "drifted_count": self.drifted_count,
            "column_count": self.column_count,
            "drifted_columns": ",".join(self.drifted_columns),
            "current_rows": self.current_rows,
            "reference_rows": self.reference_rows,
            "current_sampled_rows": self.current_sampled_rows,
            "reference_sampled_rows": self.reference_sampled_rows,
            "html_uri": self.html_uri,
            "json_uri": self.json_uri,
        }

    def to_dict(self) -> dict[str, Any]:
        data = self.summary()
        data.update(
            share_threshold=self.share_threshold,
            dataset_drift=self.dataset_drift,
            drifted_columns=self.drifted_columns,
            columns=[asdict(column) for column in self.columns],
            skipped_columns=dict(self.skipped_columns),
            sampling=dict(self.sampling),
            mlflow_artifact_uri=self.mlflow_artifact_uri,
            seconds=dict(self.seconds),
        )
        return data

    def to_table(self) -> str:
        """Plain-text per-column table with the dataset-level line on top."""
        verdict = "DRIFT" if self.dataset_drift else "no drift"
        head = (
            f"dataset: {verdict} ({self.drifted_count}/{self.column_count} columns = {self.drift_share:.3g}, "
            f"threshold {self.share_threshold:g}); rows current {self.current_sampled_rows}/{self.current_rows}, "
            f"reference {self.reference_sampled_rows}/{self.reference_rows}"
        )
        header = ("column", "kind", "method", "value", "threshold", "drifted")
        rows = [
            (c.column, c.kind, c.method, f"{c.value:.4g}", f"{c.threshold:g}", "yes" if c.drifted else "no")
            for c in self.columns
        ]
        rows += [(column, "-", f"skipped: {reason}", "-", "-", "-") for column, reason in self.skipped_columns.items()]
        widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(6)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

        out = [head, line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
        out.append(f"report: {self.html_uri or '-'}  json: {self.json_uri or '-'}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def _strata(frame: pd.DataFrame, strata_columns: Sequence[str], time_column: str | None) -> np.ndarray:
    codes: list[np.ndarray] = []
    for column in strata_columns:
        if column not in frame.columns:
            raise ValueError(f"stratify column {column!r} is not in the frame (columns: {list(frame.columns)})")
        codes.append(pd.factorize(frame[column], use_na_sentinel=False)[0])
    if time_column is not None:
        if time_column not in frame.columns:
            raise ValueError(f"time column {time_column!r} is not in the frame; pass time_column=None to skip it")
        if not pd.api.types.is_datetime64_any_dtype(frame[time_column]):
            raise ValueError(
                f"time column {time_column!r} is not a timestamp column (dtype {frame[time_column].dtype})"
            )
        days = pd.to_datetime(frame[time_column], utc=True).dt.floor("D")  # naive timestamps are read as UTC
        codes.append(pd.factorize(days, use_na_sentinel=False)[0])
    if not codes:
        return np.zeros(len(frame), dtype=np.int64)
    combined = np.zeros(len(frame), dtype=np.int64)
    radix = 1
    for column_codes in codes:
        cardinality = int(column_codes.max()) + 1 if column_codes.size else 1
        radix *= cardinality
        if radix > 2**62:
            raise ValueError("too many strata: choose stratify columns with fewer distinct values")
        combined = combined * cardinality + column_codes
    return np.unique(combined, return_inverse=True)[1].astype(np.int64)


def stratified_sample(
    frame: pd.DataFrame,
    *,
    max_rows: int,
    seed: int | Sequence[int] = 0,
    strata_columns: Sequence[str] = (),
    time_column: str | None = None,
) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``: proportional stratified sampling without replacement.

    Strata are the combinations of ``strata_columns`` values and the UTC day of ``time_column``.
    Each stratum gets ``max_rows * size / len(frame)`` rows rounded by largest remainder (so the
    total is exactly ``max_rows``); rows inside a stratum are drawn uniformly with
    ``numpy.random.default_rng(seed)``. A frame within the cap is returned as is. Row order is kept.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    total = len(frame)
    strata = _strata(frame, strata_columns, time_column)  # validates the columns even when not sampling
    if total <= max_rows:
        return frame
    sizes = np.bincount(strata)
    quota = sizes * (max_rows / total)
    allocation = np.floor(quota).astype(np.int64)
    shortfall = max_rows - int(allocation.sum())
    if shortfall > 0:
        by_remainder = np.argsort(-(quota - allocation), kind="stable")
        allocation[by_remainder[:shortfall]] += 1
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(total), strata))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    ordered_strata = strata[order]
    rank = np.arange(total) - starts[ordered_strata]
    chosen = np.sort(order[rank < allocation[ordered_strata]])
    return frame.iloc[chosen]


# --------------------------------------------------------------------------------------------------
# A numpy/scipy twin of Evidently's default per-column tests (cross-check and benchmark baseline)
# --------------------------------------------------------------------------------------------------


def scipy_column_drift(
    reference: pd.Series,
    current: pd.Series,
    *,
    kind: str,
    column: str | None = None,
    threshold: float | None = None,
) -> ColumnDrift:
    """The test Evidently 0.7 picks by default for this column, computed with numpy/scipy.

    Same selection rule and formulas as ``evidently.legacy.calculations.stattests``: above 1000
    reference rows normed Wasserstein (numerical, > 5 distinct values) or Jensen-Shannon distance
    (otherwise); at most 1000 rows KS (numerical, > 5 values), chi-square (> 2 values) or Z-test.
    """
    from scipy import stats
    from scipy.spatial import distance

    if kind not in ("numerical", "categorical"):
        raise ValueError(f"kind must be 'numerical' or 'categorical', got {kind!r}")
    name = column or str(reference.name)
    ref = reference.replace([-np.inf, np.inf], np.nan).dropna()
    cur = current.replace([-np.inf, np.inf], np.nan).dropna()
    if ref.empty or cur.empty:
        raise ValueError(f"column {name!r}: no values left on one side after dropping missing ones")
    n_values = pd.concat([ref, cur]).nunique()

    def shares() -> tuple[np.ndarray, np.ndarray, list[Any]]:
        keys = list(set(ref.unique()) | set(cur.unique()))
        ref_counts = ref.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=np.float64)
        cur_counts = cur.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=np.float64)
        return ref_counts, cur_counts, keys

    if len(ref) > SMALL_DATA_ROWS:
        limit = 0.1 if threshold is None else threshold
        if kind == "numerical" and n_values > 5:
            norm = max(float(np.std(ref.to_numpy(dtype=np.float64))), 0.001)
            value = stats.wasserstein_distance(ref.to_numpy(dtype=np.float64), cur.to_numpy(dtype=np.float64)) / norm
            method = "Wasserstein distance (normed)"
        else:
            ref_counts, cur_counts, _ = shares()
            value = float(distance.jensenshannon(ref_counts / len(ref), cur_counts / len(cur)))
            method = "Jensen-Shannon distance"
        return ColumnDrift(name, kind, method, "distance", float(value), limit, bool(value >= limit))
    limit = 0.05 if threshold is None else threshold
    if kind == "numerical" and n_values > 5:
        value = float(stats.ks_2samp(ref, cur)[1])
        return ColumnDrift(name, kind, "K-S p_value", "p_value", value, limit, bool(value <= limit))
    if n_values > 2:
        ref_counts, cur_counts, _ = shares()
        value = float(stats.chisquare(cur_counts, ref_counts * (len(cur) / len(ref)))[1])
        return ColumnDrift(name, kind, "chi-square p_value", "p_value", value, limit, bool(value < limit))
    if ref.nunique() == 1 and cur.nunique() == 1 and ref.iloc[0] == cur.iloc[0]:
        value = 1.0
    else:
        first = sorted(set(ref.unique()) | set(cur.unique()))[0]
        p1, p2 = float((ref != first).mean()), float((cur != first).mean())
        pooled = (p1 * len(ref) + p2 * len(cur)) / (len(ref) + len(cur))
        z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(cur)))
        value = float(2 * (1 - stats.norm.cdf(abs(z))))
    return ColumnDrift(name, kind, "Z-test p_value", "p_value", value, limit, bool(value < limit))


# --------------------------------------------------------------------------------------------------
# The Evidently report
# --------------------------------------------------------------------------------------------------


@functools.cache
def drift_gate_preset() -> type:
    """``DataDriftGatePreset``: Evidently's ``DataDriftPreset`` drawn from the metrics it computes.

    The stock preset computes every column's test three times: its ``ValueDrift`` metrics, the
    legacy ``DatasetDriftMetric`` behind ``DriftedColumnsCount``, and, only to draw its HTML, the
    legacy ``DataDriftTable``, which tests every column again and builds two plotly figures per
    column (while the figures the ``ValueDrift`` metrics built are thrown away). This subclass keeps
    the preset's metrics exactly (same ``generate_metrics``, so the same methods, thresholds, tests
    and JSON) and only replaces ``render``: the dataset-drift header (the ``DatasetDriftMetric``
    that ``DriftedColumnsCount`` already computed, read from Evidently's cache), a per-column table
    (column, type, method, score, threshold, Detected / Not Detected) and each ``ValueDrift``'s own
    widgets (verdict, drift and distribution plots). Each column is tested twice, not three times.

    Built on first use because importing Evidently takes seconds, and this module is also imported
    only for its dataclasses and sampling (``loopline.gates``, the gate operators).
    """
    from evidently.legacy.metrics import DatasetDriftMetric
    from evidently.legacy.renderers.html_widgets import table_data
    from evidently.legacy.tests.base_test import TestStatus
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    class DataDriftGatePreset(DataDriftPreset):
        """``DataDriftPreset`` whose HTML is drawn from its own metric results (no legacy table)."""

        def render(self, context, child_widgets=None):
            # Same arguments as DriftedColumnsCount's legacy metric, so this is a cache hit, not a pass.
            _, header = context.get_legacy_metric(
                DatasetDriftMetric(
                    columns=self.columns,
                    drift_share=self.drift_share,
                    stattest=self.method,
                    cat_stattest=self.cat_method,
                    num_stattest=self.num_method,
                    text_stattest=self.text_method,
                    per_column_stattest=self.per_column_method,
                    stattest_threshold=self.threshold,
                    cat_stattest_threshold=self.cat_threshold,
                    num_stattest_threshold=self.num_threshold,
                    text_stattest_threshold=self.text_threshold,
                    per_column_stattest_threshold=self.per_column_threshold,
                ),
                None,  # Evidently's default input data
                None,  # no classification task
            )
            rows: list[list[str]] = []
            value_drift_ids = set()
            for metric in self.list_metrics(context):
                if not isinstance(metric, ValueDrift):
                    continue
                value_drift_ids.add(metric.metric_id)
                result = context.get_metric_result(metric)
                config = result.to_dict()["config"]  # method and threshold as resolved by the run
                statuses = {test.status for test in result.tests}
                verdict = "Detected" if TestStatus.FAIL in statuses else "Not Detected" if statuses else "-"
                column_type = context.data_definition.get_column_type(metric.column)
                kind = {"num": "numerical", "cat": "categorical"}.get(column_type.value, column_type.value)
                rows.append(
                    [
                        metric.column,
                        kind,
                        str(config.get("method")),
                        f"{result.value:.4g}",
                        f"{config.get('threshold')}",
                        verdict,
                    ]
                )
            rows.sort(key=lambda row: row[-1] != "Detected")  # drifted columns first, else in column order
            table = table_data(
                title="Drift by column",
                column_names=["Column", "Type", "Stat test", "Drift score", "Threshold", "Data drift"],
                data=rows,
            )
            column_widgets = [
                widget
                for metric_id, widgets in child_widgets or []
                if metric_id in value_drift_ids
                for widget in widgets
            ]
            return [*header, table, *column_widgets]

    return DataDriftGatePreset


def _parse_snapshot(snapshot_dict: dict[str, Any], kinds: dict[str, str]) -> tuple[int, float, list[ColumnDrift]]:
    """Dataset drift count/share and per-column results from ``Snapshot.dict()``."""
    test_status: dict[str, str] = {}
    for test in snapshot_dict.get("tests", []):
        metric_id = (test.get("metric_config") or {}).get("metric_id")
        if metric_id:
            test_status[metric_id] = test.get("status", "")
    count: int | None = None
    share: float | None = None
    columns: list[ColumnDrift] = []
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config") or {}
        kind = str(config.get("type", ""))
        if kind.endswith(":DriftedColumnsCount"):
            count = int(metric["value"]["count"])
            share = float(metric["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            column = config["column"]
            method = str(config.get("method"))
            threshold = float(config["threshold"])
            value = float(metric["value"])
            score_kind = "p_value" if method in P_VALUE_METHODS else "distance"
            status = test_status.get(metric["id"])
            if status in ("FAIL", "SUCCESS"):
                drifted = status == "FAIL"
            else:  # no test attached: judge by the method's direction
                drifted = value < threshold if score_kind == "p_value" else value >= threshold
            columns.append(ColumnDrift(column, kinds.get(column, "?"), method, score_kind, value, threshold, drifted))
    if count is None or share is None:
        raise RuntimeError("Evidently snapshot has no DriftedColumnsCount metric; is this a DataDriftPreset report?")
    return count, share, columns


def _evidently_frame(frame: pd.DataFrame, numerical: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    data = {}
    for column in numerical:
        data[column] = pd.to_numeric(frame[column], errors="raise").astype(np.float64).to_numpy()
    for column in categorical:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else str(v))
        data[column] = series.to_numpy(dtype=object)
    return pd.DataFrame(data)


def _log_to_mlflow(run_id: str, paths: Sequence[Path], artifact_path: str, tracking_uri: str | None) -> str:
    from mlflow.tracking import MlflowClient

    from loopline.config import settings

    client = MlflowClient(tracking_uri=tracking_uri or settings().mlflow_tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def run_drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    numerical_columns: Sequence[str] | None = None,
    categorical_columns: Sequence[str] | None = None,
    policy: GatePolicy | None = None,
    exclude_columns: Sequence[str] = ROLE_COLUMNS,
    stratify_by: Sequence[str] = ("is_clicked",),
    time_column: str | None = "event_at",
    out_uri: str | None = None,
    report_name: str = "drift_report",
    s3_endpoint_url: str | None = None,
    mlflow_run_id: str | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_artifact_path: str = "drift_report",
) -> DriftResult:
    """Evidently ``DataDriftPreset`` of ``current`` against ``reference``, saved and summarised.

    The report is ``Report([DataDriftGatePreset(...)], include_tests=True)`` (see
    ``drift_gate_preset``): the preset's own metrics, one test per column for the per-column values
    and one more inside ``DriftedColumnsCount``, and an HTML drawn from those results.

    :param numerical_columns: numerical features; inferred by dtype from ``current`` when None.
    :param categorical_columns: categorical features; inferred by dtype from ``current`` when None.
    :param policy: gate policy (``drift`` section: share threshold, sample cap, seed, methods).
    :param exclude_columns: columns never inferred as features (ids, labels, timestamps, versions).
    :param stratify_by: columns whose values are sampling strata (default: the label).
    :param time_column: timestamp column whose UTC day is a sampling stratum; None to skip.
    :param out_uri: ``file:///dir`` or ``s3://bucket/prefix`` for ``<report_name>.html`` and
        ``<report_name>.json``; None keeps no copy (except in MLflow).
    :param s3_endpoint_url: S3-compatible endpoint (default: the settings').
    :param mlflow_run_id: if given, both files are logged as artifacts of that run under
        ``mlflow_artifact_path`` (tracking URI: ``mlflow_tracking_uri`` or the settings').
    """
    from evidently import DataDefinition, Dataset, Report

    for side, frame in (("current", current), ("reference", reference)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{side} must be a pandas DataFrame, got {type(frame).__name__}")
        if frame.empty:
            raise ValueError(f"{side} frame is empty: drift needs rows on both sides")
    policy = policy or load_policy()
    settings_drift = policy.drift
    numerical, categorical = resolve_feature_columns(
        current, numerical_columns, categorical_columns, exclude_columns, policy.quality.max_categories
    )
    missing = [column for column in [*numerical, *categorical] if column not in reference.columns]
    if missing:
        raise ValueError(f"feature columns {missing} are missing from the reference frame")
    if not numerical and not categorical:
        raise ValueError("no feature columns to test for drift (none given and none inferred)")

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    sampled = {}
    for side_index, (side, frame) in enumerate((("current", current), ("reference", reference))):
        sampled[side] = stratified_sample(
            frame,
            max_rows=settings_drift.max_rows,
            seed=(settings_drift.seed, side_index),
            strata_columns=stratify_by,
            time_column=time_column,
        )
    skipped: dict[str, str] = {}
    for column in [*numerical, *categorical]:
        for side, frame in sampled.items():
            values = frame[column]
            if column in numerical:
                values = pd.to_numeric(values, errors="raise").replace([np.inf, -np.inf], np.nan)
            if values.isna().all():
                skipped[column] = f"no values in the {side} window"
    numerical = [column for column in numerical if column not in skipped]
    categorical = [column for column in categorical if column not in skipped]
    if not numerical and not categorical:
        raise ValueError(f"every feature column is empty on one side: {skipped}")

    sampling = {
        "max_rows": settings_drift.max_rows,
        "seed": settings_drift.seed,
        "strata": [*stratify_by, *([f"day({time_column})"] if time_column else [])],
    }
    seconds["sample"] = time.perf_counter() - started

    # Everything Evidently does before the report can be saved counts as "evidently": building its
    # Datasets, every column's test, the dataset-level count and the figures Report.run draws.
    started = time.perf_counter()
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    datasets = {
        side: Dataset.from_pandas(_evidently_frame(frame, numerical, categorical), data_definition=definition)
        for side, frame in sampled.items()
    }
    seconds["evidently_datasets"] = time.perf_counter() - started  # column stats Evidently keeps per Dataset
    preset = drift_gate_preset()(
        drift_share=settings_drift.drift_share,
        num_method=settings_drift.num_method,
        cat_method=settings_drift.cat_method,
        num_threshold=settings_drift.num_threshold,
        cat_threshold=settings_drift.cat_threshold,
    )
    report = Report(
        [preset],
        include_tests=True,
        metadata={key: str(value) for key, value in sampling.items()},
        tags=["loopline", "drift-gate"],
    )
    snapshot = report.run(current_data=datasets["current"], reference_data=datasets["reference"])
    seconds["evidently"] = time.perf_counter() - started
    started = time.perf_counter()
    kinds = {**dict.fromkeys(numerical, "numerical"), **dict.fromkeys(categorical, "categorical")}
    count, share, columns = _parse_snapshot(snapshot.dict(), kinds)

    html_uri = json_uri = mlflow_uri = None
    if out_uri is not None or mlflow_run_id is not None:
        with tempfile.TemporaryDirectory(prefix="loopline-drift-") as scratch:
            html_path = Path(scratch) / f"{report_name}.html"
            json_path = Path(scratch) / f"{report_name}.json"
            snapshot.save_html(str(html_path))
            snapshot.save_json(str(json_path))
            if out_uri is not None:
                html_uri = store_report_file(html_path, out_uri, s3_endpoint_url=s3_endpoint_url)
                json_uri = store_report_file(json_path, out_uri, s3_endpoint_url=s3_endpoint_url)
            if mlflow_run_id is not None:
                mlflow_uri = _log_to_mlflow(
                    mlflow_run_id, [html_path, json_path], mlflow_artifact_path, mlflow_tracking_uri
                )
                html_uri = html_uri or f"{mlflow_uri}/{html_path.name}"
                json_uri = json_uri or f"{mlflow_uri}/{json_path.name}"
    seconds["save"] = time.perf_counter() - started
    return DriftResult(
        drifted_count=count,
        column_count=len(columns),
        drift_share=share,
        share_threshold=settings_drift.drift_share,
        dataset_drift=bool(columns) and share >= settings_drift.drift_share,
        columns=tuple(columns),
        current_rows=len(current),
        reference_rows=len(reference),
        current_sampled_rows=len(sampled["current"]),
        reference_sampled_rows=len(sampled["reference"]),
        sampling=sampling,
        policy=policy,
        skipped_columns=skipped,
        html_uri=html_uri,
        json_uri=json_uri,
        mlflow_artifact_uri=mlflow_uri,
        seconds=seconds,
    )
