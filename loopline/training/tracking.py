"""One training run, tracked in MLflow: train, compare with baselines and the oracle, log everything.

``run_training`` is what the retrain DAG's train task calls. The run logs the parameters (the whole
model config and the feature lists), the metrics (model, both baselines, the oracle on simulated
data, per-epoch curves), the Evidently report, the lineage tags, and the model as an MLflow pyfunc
(``models/ctr_pyfunc.py`` around the TorchScript ``scorer.pt``; serving needs no Loopline code) with
an input example and a signature. It also keeps what the later gates need: the holdout rows
(``holdout/holdout.parquet``) and the FP32 weights (``checkpoint/``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from loopline import registry
from loopline.training.config import PYFUNC_FILE, ModelConfig, load_config
from loopline.training.data import FeatureSpec
from loopline.training.fit import TrainedModel, comparison, train_model

LOG = logging.getLogger(__name__)
HOLDOUT_ARTIFACT = "holdout/holdout.parquet"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "net_state.pt"
INPUT_EXAMPLE_ROWS = 5


@dataclass
class Lineage:
    """Where a model's data came from; logged as ``loopline.lineage.*`` tags on the run and the version."""

    data_interval_start: str | None = None
    data_interval_end: str | None = None
    ingest_run_ids: Sequence[str] = ()
    dbt_invocation_id: str | None = None
    feature_service: str | None = None
    git_commit: str | None = None
    airflow_dag_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        values = asdict(self)
        values["ingest_run_ids"] = ",".join(self.ingest_run_ids)
        values["git_commit"] = self.git_commit or current_git_commit() or ""
        return {f"loopline.lineage.{k}": str(v) for k, v in values.items() if v not in (None, "")}


def current_git_commit(directory: Path | None = None) -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    where = directory or Path(__file__).resolve().parents[2]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


@dataclass
class TrainingRun:
    """What a training run produced: ids to find it again and its numbers (``to_dict`` is JSON-able for XCom)."""

    run_id: str
    experiment_id: str
    model_uri: str
    metrics: dict[str, float]
    comparison: dict[str, dict[str, float] | None]
    best_epoch: int
    train_rows: int
    holdout_rows: int
    holdout_days: list[str]
    model: TrainedModel | None = field(default=None, repr=False)
    train: pd.DataFrame | None = field(default=None, repr=False)
    holdout: pd.DataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return registry._jsonable(
            {
                "run_id": self.run_id,
                "experiment_id": self.experiment_id,
                "model_uri": self.model_uri,
                "metrics": self.metrics,
                "comparison": self.comparison,
                "best_epoch": self.best_epoch,
                "train_rows": self.train_rows,
                "holdout_rows": self.holdout_rows,
                "holdout_days": self.holdout_days,
            }
        )


def save_scorer(module: torch.jit.ScriptModule, spec: FeatureSpec, path: Path) -> Path:
    """Save a TorchScript scorer with its spec inside (``spec.json`` extra file)."""
    torch.jit.save(module, str(path), _extra_files={registry.SPEC_FILE: spec.to_json()})
    return path


def model_signature(spec: FeatureSpec) -> Any:
    """Input: ids (required), features and position (optional: missing means missing); output: a probability."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("string", "user_id"), ColSpec("string", "item_id")]
    inputs += [ColSpec("double", name, required=False) for name in spec.numeric_features]
    inputs += [ColSpec("string", name, required=False) for name in spec.categorical_features]
    inputs.append(ColSpec("long", "position", required=False))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", "click_probability")]))


def input_example(frame: pd.DataFrame, spec: FeatureSpec, rows: int = INPUT_EXAMPLE_ROWS) -> pd.DataFrame:
    """The first rows of ``frame`` in the serving input's shape (no position: serving has none)."""
    example = pd.DataFrame(
        {
            "user_id": frame[spec.user_column].head(rows).astype(str).to_numpy(),
            "item_id": frame[spec.item_column].head(rows).astype(str).to_numpy(),
        }
    )
    for name in spec.numeric_features:
        example[name] = pd.to_numeric(frame[name].head(rows)).astype("float64").to_numpy() if name in frame else np.nan
    for name in spec.categorical_features:
        example[name] = (
            frame[name].head(rows).astype(object).where(frame[name].head(rows).notna(), "").astype(str).to_numpy()
        )
    return example


def log_serving_model(
    module: torch.jit.ScriptModule,
    spec: FeatureSpec,
    example: pd.DataFrame,
    *,
    name: str = "model",
    directory: Path,
) -> Any:
    """Log a TorchScript scorer as an MLflow pyfunc model (models from code) in the active run."""
    import mlflow

    scorer_path = save_scorer(module, spec, directory / registry.SCORER_FILE)
    (directory / registry.SPEC_FILE).write_text(spec.to_json())
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_FILE),
        artifacts={"scorer": str(scorer_path), "spec": str(directory / registry.SPEC_FILE)},
        signature=model_signature(spec),
        input_example=example,
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "pandas",
            "numpy",
        ],
    )


def _flat_metrics(result: Mapping[str, Mapping[str, float] | None]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for source, values in result.items():
        if not values:
            continue
        prefix = "" if source == "model" else f"{source}_"
        for key, value in values.items():
            if isinstance(value, int | float) and np.isfinite(value):
                flat[f"{prefix}{key}"] = float(value)
    model = result.get("model") or {}
    for source in ("popularity", "logistic", "oracle"):
        other = result.get(source)
        if other and "auc" in model:
            flat[f"auc_minus_{source}"] = model["auc"] - other["auc"]
    return flat


def _holdout_columns(holdout: pd.DataFrame, spec: FeatureSpec, config: ModelConfig) -> list[str]:
    wanted = [
        "impression_id",
        config.columns.request,
        spec.user_column,
        spec.item_column,
        config.columns.date,
        spec.position_column,
        config.columns.label,
        config.columns.oracle,
        *spec.numeric_features,
        *spec.categorical_features,
    ]
    return [column for column in dict.fromkeys(wanted) if column in holdout.columns]


def run_training(
    frame: pd.DataFrame,
    *,
    config: ModelConfig | None = None,
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    numeric_features: Sequence[str] | None = None,
    categorical_features: Sequence[str] | None = None,
    lineage: Lineage | None = None,
    evidently_report: str | Path | Sequence[str | Path] | None = None,
    make_drift_report: bool = False,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    artifact_uri: str | None = None,
    experiment_name: str | None = None,
) -> TrainingRun:
    """Train the CTR ranker on ``frame`` and log the run to MLflow; returns ids and numbers.

    :param frame: one row per impression (``loopline.features.training_set``); the most recent
        ``training.validation_days`` day(s) are the holdout.
    :param config, config_path, overrides: the model config (default ``models/ctr_ranker.yaml``),
        with ``{"section.key": value}`` overrides (e.g. DAG Params).
    :param numeric_features, categorical_features: model inputs (default: the config's lists).
    :param lineage: data interval, ingest run ids, dbt invocation id, FeatureService, git commit, dag_run id.
    :param evidently_report: file(s) or directory of the drift gate's Evidently report (HTML/JSON) to attach.
    :param make_drift_report: if no report is given, run ``loopline.drift.run_drift_report`` (holdout vs train).
    :param tracking_uri, artifact_uri, experiment_name: where to log (default: the settings', experiment
        named after the model).
    """
    import mlflow

    if config is not None and (config_path is not None or overrides):
        raise ValueError("pass either config or config_path/overrides, not both (overrides apply when loading)")
    config = config or load_config(config_path, overrides)
    lineage = lineage or Lineage()
    if not lineage.feature_service:
        lineage.feature_service = config.feature_service
    model, train, holdout = train_model(
        frame, config, numeric_features=numeric_features, categorical_features=categorical_features
    )
    result = comparison(model, train, holdout)
    flat = _flat_metrics(result)
    flat.update(
        {
            "best_epoch": float(model.best_epoch),
            "epochs_run": float(len(model.history)),
            "train_seconds": model.seconds,
            "examples_per_second": model.examples_per_second,
            "train_rows": float(model.train_rows),
            "holdout_rows": float(model.holdout_rows),
        }
    )
    uri = registry.configure_mlflow(tracking_uri)
    experiment_id = registry.ensure_experiment(
        experiment_name or config.model_name, artifact_uri=artifact_uri, tracking_uri=uri
    )
    spec = model.spec
    with (
        tempfile.TemporaryDirectory(prefix="loopline-train-") as scratch,
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run,
    ):
        directory = Path(scratch)
        params = config.flat()
        params["features.numeric"] = ",".join(spec.numeric_features)
        params["features.categorical"] = ",".join(spec.categorical_features)
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in params.items()})
        mlflow.set_tags(
            {
                **lineage.tags(),
                "loopline.holdout_days": ",".join(model.holdout_days),
                "loopline.train_days": f"{model.train_days[0]}..{model.train_days[-1]}",
            }
        )
        if lineage.git_commit or current_git_commit():
            mlflow.set_tag("mlflow.source.git.commit", lineage.git_commit or current_git_commit())
        mlflow.log_metrics(flat)
        for row in model.history:
            step = int(row["epoch"])
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch" and np.isfinite(v)}, step=step)
        mlflow.log_dict(registry._jsonable(result), "metrics/comparison.json")
        mlflow.log_dict(registry._jsonable(model.history), "metrics/history.json")
        # What the evaluation and compression gates need later.
        holdout_path = directory / "holdout.parquet"
        holdout[_holdout_columns(holdout, spec, config)].to_parquet(holdout_path, index=False)
        mlflow.log_artifact(str(holdout_path), artifact_path=str(Path(HOLDOUT_ARTIFACT).parent))
        torch.save(model.net.state_dict(), directory / STATE_FILE)
        (directory / registry.SPEC_FILE).write_text(spec.to_json())
        mlflow.log_artifact(str(directory / STATE_FILE), artifact_path=CHECKPOINT_DIR)
        mlflow.log_artifact(str(directory / registry.SPEC_FILE), artifact_path=CHECKPOINT_DIR)
        # The Evidently report.
        _log_reports(evidently_report, make_drift_report, train, holdout, spec, run.info.run_id, uri)
        # The model, as serving loads it.
        model_directory = directory / "model"
        model_directory.mkdir()
        info = log_serving_model(model.scripted(), spec, input_example(holdout, spec), directory=model_directory)
        mlflow.set_tag(registry.TAG_MODEL_URI, info.model_uri)
        run_id = run.info.run_id
    LOG.info(
        "training run %s: auc %.4f (popularity %.4f, logistic %.4f, oracle %s)",
        run_id,
        flat.get("auc", float("nan")),
        flat.get("popularity_auc", float("nan")),
        flat.get("logistic_auc", float("nan")),
        f"{flat['oracle_auc']:.4f}" if "oracle_auc" in flat else "n/a",
    )
    return TrainingRun(
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=info.model_uri,
        metrics=flat,
        comparison=result,
        best_epoch=model.best_epoch,
        train_rows=model.train_rows,
        holdout_rows=model.holdout_rows,
        holdout_days=model.holdout_days,
        model=model,
        train=train,
        holdout=holdout,
    )


def _log_reports(
    reports: str | Path | Sequence[str | Path] | None,
    make_drift_report: bool,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    spec: FeatureSpec,
    run_id: str,
    tracking_uri: str,
) -> None:
    import mlflow

    if reports is not None:
        paths = [reports] if isinstance(reports, str | Path) else list(reports)
        for path in map(Path, paths):
            if not path.exists():
                raise FileNotFoundError(f"Evidently report {path} does not exist")
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path="evidently")
            else:
                mlflow.log_artifact(str(path), artifact_path="evidently")
        return
    if make_drift_report:
        from loopline.drift import run_drift_report

        run_drift_report(
            holdout,
            train,
            numerical_columns=[c for c in spec.numeric_features if c in holdout.columns],
            categorical_columns=[c for c in spec.categorical_features if c in holdout.columns],
            mlflow_run_id=run_id,
            mlflow_tracking_uri=tracking_uri,
            mlflow_artifact_path="evidently",
        )


def run_artifact(run_id: str, path: str, *, tracking_uri: str | None = None) -> Path:
    """Download one artifact of a run to a local temporary path."""
    import mlflow

    registry.configure_mlflow(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def load_holdout(run_id: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The holdout rows a training run validated on (the evaluation gate's common ground)."""
    return pd.read_parquet(run_artifact(run_id, HOLDOUT_ARTIFACT, tracking_uri=tracking_uri))


def load_checkpoint(run_id: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, FeatureSpec]:
    """The FP32 network (eager, training code) and its spec, as a training run saved them."""
    from loopline.training.fit import build_network

    directory = run_artifact(run_id, CHECKPOINT_DIR, tracking_uri=tracking_uri)
    spec = FeatureSpec.from_dict(json.loads((directory / registry.SPEC_FILE).read_text()))
    net = build_network(spec)
    net.load_state_dict(torch.load(directory / STATE_FILE, weights_only=True))
    return net.eval(), spec
