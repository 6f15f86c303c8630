"""The model registry: MLflow's ``loopline-ctr`` with aliases, an audit trail of every alias move,
loading a registered model for serving, and the table of gate verdicts.

MLflow keeps no history of alias moves (an alias just points at a version), so every move made here
also writes a row to the warehouse table ``model_alias_audit``: when, which alias, from which version
to which, why, and by which run. ``set_alias`` first proves that the target version loads and
scores a row, so ``models:/loopline-ctr@champion`` always loads. If the audit row cannot be written
the alias is moved back and the error raised: a move is either recorded or undone.

Gate verdicts (evaluation and compression) go to one table, ``gate_verdicts``: the gate, the verdict,
candidate and baseline, a one-line summary and every number as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.warehouse import Column, Table, Warehouse

LOG = logging.getLogger(__name__)

MODEL_NAME = "loopline-ctr"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
SCORER_FILE = "scorer.pt"
SPEC_FILE = "spec.json"
TAG_MODEL_URI = "loopline.model_uri"  # the FP32 model logged by training
TAG_SERVING_MODEL_URI = "loopline.serving_model_uri"  # the variant the compression gate chose
TAG_EVALUATION_VERDICT = "loopline.evaluation.verdict"
TAG_EVALUATION_VERDICT_ID = "loopline.evaluation.verdict_id"
TAG_COMPRESSION_VARIANT = "loopline.compression.variant"

MODEL_ALIAS_AUDIT = Table(
    "model_alias_audit",
    (
        Column("move_id", "varchar", nullable=False),
        Column("moved_at", "timestamptz", nullable=False),
        Column("model_name", "varchar", nullable=False),
        Column("alias", "varchar", nullable=False),
        Column("from_version", "varchar"),
        Column("to_version", "varchar"),
        Column("reason", "varchar", nullable=False),
        Column("by_run_id", "varchar", nullable=False),
    ),
    indexes=(("model_name", "alias"),),
    primary_key=("move_id",),
)

GATE_VERDICTS = Table(
    "gate_verdicts",
    (
        Column("verdict_id", "varchar", nullable=False),
        Column("decided_at", "timestamptz", nullable=False),
        Column("gate", "varchar", nullable=False),
        Column("model_name", "varchar", nullable=False),
        Column("verdict", "varchar", nullable=False),
        Column("candidate_run_id", "varchar"),
        Column("candidate_version", "varchar"),
        Column("baseline_run_id", "varchar"),
        Column("baseline_version", "varchar"),
        Column("summary", "varchar", nullable=False),
        Column("details", "json", nullable=False),
    ),
    indexes=(("gate", "decided_at"),),
    primary_key=("verdict_id",),
)


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message names the model, alias or version."""


# --------------------------------------------------------------------------------------------------
# MLflow set-up
# --------------------------------------------------------------------------------------------------


def configure_mlflow(tracking_uri: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (default: the settings'), telemetry off, S3 endpoint set; return the URI."""
    import mlflow

    from loopline.config import settings

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    current = settings()
    if current.s3_endpoint_url and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = current.s3_endpoint_url
    uri = tracking_uri or current.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``tracking_uri`` (default: the settings')."""
    from mlflow import MlflowClient

    uri = configure_mlflow(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(
    name: str = MODEL_NAME, *, artifact_uri: str | None = None, tracking_uri: str | None = None
) -> str:
    """The id of experiment ``name``, created with artifacts under ``<artifact_uri>/mlflow/<name>`` if missing.

    ``artifact_uri`` defaults to the settings' (``file://`` locally, ``s3://`` in the stack).
    """
    from loopline.config import settings

    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = (artifact_uri or settings().artifact_uri).rstrip("/")
    return mlflow_client.create_experiment(name, artifact_location=f"{root}/mlflow/{name}")


# --------------------------------------------------------------------------------------------------
# Warehouse tables
# --------------------------------------------------------------------------------------------------


@contextmanager
def _warehouse(warehouse_uri: str | None) -> Iterator[Warehouse]:
    from loopline.config import settings

    with Warehouse.from_uri(warehouse_uri or settings().warehouse_uri) as warehouse:
        yield warehouse


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AliasMove:
    """One row of ``model_alias_audit``."""

    move_id: str
    moved_at: datetime
    model_name: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    by_run_id: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["moved_at"] = self.moved_at.isoformat()
        return data


def _write_move(move: AliasMove, warehouse_uri: str | None) -> None:
    with _warehouse(warehouse_uri) as warehouse:
        warehouse.ensure_table(MODEL_ALIAS_AUDIT)
        values = [getattr(move, name) for name in MODEL_ALIAS_AUDIT.column_names]
        placeholders = ", ".join("?" for _ in values)
        columns = ", ".join(MODEL_ALIAS_AUDIT.column_names)
        warehouse.execute(f"INSERT INTO {MODEL_ALIAS_AUDIT.name} ({columns}) VALUES ({placeholders})", values)


def alias_history(
    model_name: str = MODEL_NAME, *, alias: str | None = None, warehouse_uri: str | None = None
) -> list[AliasMove]:
    """Every recorded alias move of ``model_name`` (optionally one alias), oldest first."""
    with _warehouse(warehouse_uri) as warehouse:
        if not warehouse.table_exists(MODEL_ALIAS_AUDIT.name):
            return []
        where, params = "model_name = ?", [model_name]
        if alias is not None:
            where, params = where + " AND alias = ?", [*params, alias]
        rows = warehouse.query(
            f"SELECT {', '.join(MODEL_ALIAS_AUDIT.column_names)} FROM {MODEL_ALIAS_AUDIT.name} WHERE {where} "
            "ORDER BY moved_at, move_id",
            params,
        )
    moves = []
    for row in rows:
        data = dict(zip(MODEL_ALIAS_AUDIT.column_names, row, strict=True))
        moved_at = data["moved_at"]
        data["moved_at"] = moved_at if moved_at.tzinfo else moved_at.replace(tzinfo=UTC)
        moves.append(AliasMove(**data))
    return moves


def record_verdict(
    gate: str,
    verdict: str,
    *,
    summary: str,
    details: Mapping[str, Any],
    model_name: str = MODEL_NAME,
    candidate_run_id: str | None = None,
    candidate_version: str | None = None,
    baseline_run_id: str | None = None,
    baseline_version: str | None = None,
    warehouse_uri: str | None = None,
    verdict_id: str | None = None,
) -> str:
    """Store one gate verdict in ``gate_verdicts``; returns its ``verdict_id`` (a new one unless given)."""
    verdict_id = verdict_id or uuid.uuid4().hex
    row = {
        "verdict_id": verdict_id,
        "decided_at": _now(),
        "gate": gate,
        "model_name": model_name,
        "verdict": verdict,
        "candidate_run_id": candidate_run_id,
        "candidate_version": candidate_version,
        "baseline_run_id": baseline_run_id,
        "baseline_version": baseline_version,
        "summary": summary,
        "details": json.dumps(_jsonable(details), sort_keys=True),
    }
    with _warehouse(warehouse_uri) as warehouse:
        warehouse.ensure_table(GATE_VERDICTS)
        columns = GATE_VERDICTS.column_names
        warehouse.execute(
            f"INSERT INTO {GATE_VERDICTS.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            [row[c] for c in columns],
        )
    return verdict_id


def verdict_history(
    gate: str | None = None, *, model_name: str = MODEL_NAME, warehouse_uri: str | None = None
) -> list[dict[str, Any]]:
    """Stored gate verdicts (``details`` parsed), oldest first."""
    with _warehouse(warehouse_uri) as warehouse:
        if not warehouse.table_exists(GATE_VERDICTS.name):
            return []
        where, params = "model_name = ?", [model_name]
        if gate is not None:
            where, params = where + " AND gate = ?", [*params, gate]
        rows = warehouse.query(
            f"SELECT {', '.join(GATE_VERDICTS.column_names)} FROM {GATE_VERDICTS.name} WHERE {where} "
            "ORDER BY decided_at, verdict_id",
            params,
        )
    out = []
    for row in rows:
        data = dict(zip(GATE_VERDICTS.column_names, row, strict=True))
        data["details"] = json.loads(data["details"])
        out.append(data)
    return out


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become strings; numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------------------------------
# Loading models
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A registered (or logged) model ready to score: the TorchScript ``CtrScorer`` and its feature spec."""

    module: Any  # torch.jit.ScriptModule
    spec: Any  # loopline.training.data.FeatureSpec
    model_uri: str
    version: str | None = None
    run_id: str | None = None

    def predict(self, frame: pd.DataFrame, *, logged_position: bool = False) -> np.ndarray:
        """P(click) per row of ``frame`` (missing feature columns count as missing values)."""
        from loopline.training.data import encode
        from loopline.training.fit import score

        return score(self.module, encode(frame, self.spec), logged_position=logged_position)


def model_uri(alias_or_version: str | int, model_name: str = MODEL_NAME) -> str:
    """``models:/<name>@<alias>`` for an alias, ``models:/<name>/<version>`` for a version number."""
    text = str(alias_or_version)
    return f"models:/{model_name}/{text}" if text.isdigit() else f"models:/{model_name}@{text}"


def load_scorer_file(path: str | Path) -> tuple[Any, Any]:
    """(TorchScript module, FeatureSpec) from a ``scorer.pt`` (the spec travels inside as an extra file)."""
    import torch

    from loopline.training.data import FeatureSpec

    extra = {SPEC_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()
    return module, FeatureSpec.from_dict(json.loads(extra[SPEC_FILE]))


def load_from_uri(uri: str, *, tracking_uri: str | None = None) -> LoadedModel:
    """Download the model at ``uri`` (``models:/...``) to a scratch dir and load its TorchScript scorer."""
    import tempfile

    import mlflow

    configure_mlflow(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="loopline-model-") as scratch:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch))
        except Exception as error:  # MLflow raises several types for unknown names/aliases/versions
            raise RegistryError(f"cannot download model {uri}: {error}") from error
        found = sorted(local.rglob(SCORER_FILE))
        if not found:
            raise RegistryError(f"model {uri} holds no {SCORER_FILE}; was it logged by loopline.training?")
        module, spec = load_scorer_file(found[0])  # read fully into memory: the scratch dir can go
    return LoadedModel(module=module, spec=spec, model_uri=uri)


def load_model(
    alias_or_version: str | int = CHAMPION, *, model_name: str = MODEL_NAME, tracking_uri: str | None = None
) -> LoadedModel:
    """The registered model behind an alias (``"champion"``) or a version number, ready to score."""
    mlflow_client = client(tracking_uri)
    text = str(alias_or_version)
    try:
        if text.isdigit():
            version = mlflow_client.get_model_version(model_name, text)
        else:
            version = mlflow_client.get_model_version_by_alias(model_name, text)
    except Exception as error:
        raise RegistryError(f"{model_name} has no version or alias {text!r}: {error}") from error
    loaded = load_from_uri(model_uri(version.version, model_name), tracking_uri=tracking_uri)
    loaded.version = str(version.version)
    loaded.run_id = version.run_id
    return loaded


def load_pyfunc(
    alias_or_version: str | int = CHAMPION, *, model_name: str = MODEL_NAME, tracking_uri: str | None = None
):
    """The registered model as an MLflow pyfunc: ``predict(DataFrame) -> DataFrame[click_probability]``."""
    import mlflow

    configure_mlflow(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri(alias_or_version, model_name))


def smoke_test(loaded: LoadedModel) -> float:
    """Score one row with every feature missing; raise unless the answer is a probability."""
    import torch

    module = loaded.module
    with torch.inference_mode():
        value = module(
            ["smoke-test-user"],
            ["smoke-test-item"],
            torch.full((1, len(loaded.spec.numeric_features)), float("nan")),
            [[""] for _ in loaded.spec.categorical_features],
            None,
        )
    probability = float(value[0])
    if not 0.0 <= probability <= 1.0:
        raise RegistryError(f"model {loaded.model_uri} scored {probability} for a smoke-test row; expected [0, 1]")
    return probability


# --------------------------------------------------------------------------------------------------
# Aliases with their audit trail
# --------------------------------------------------------------------------------------------------


def alias_version(alias: str, *, model_name: str = MODEL_NAME, tracking_uri: str | None = None) -> str | None:
    """The version an alias points at, or None if the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    try:
        model = mlflow_client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # no version registered yet
            return None
        raise  # anything else (e.g. the tracking store is down) must not look like "no champion"
    return str(model.aliases.get(alias) or "") or None


def set_alias(
    alias: str,
    version: str | int,
    *,
    reason: str,
    run_id: str,
    model_name: str = MODEL_NAME,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
    verify_load: bool = True,
) -> AliasMove:
    """Point ``alias`` at ``version`` and record the move (from, to, why, by which run) in the audit table.

    :param reason: why (e.g. "blessed by evaluation verdict 3f2a..., canary 100 %").
    :param run_id: the run that moves it (an Airflow dag_run id, an MLflow run id, a person).
    :param verify_load: load the version and score a smoke-test row before moving (default).
    """
    if not reason.strip() or not run_id.strip():
        raise ValueError("an alias move needs a reason and the id of the run that makes it")
    version = str(version)
    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.get_model_version(model_name, version)
    except Exception as error:
        raise RegistryError(f"{model_name} has no version {version}: {error}") from error
    if verify_load:
        smoke_test(load_from_uri(model_uri(version, model_name), tracking_uri=tracking_uri))
    previous = alias_version(alias, model_name=model_name, tracking_uri=tracking_uri)
    mlflow_client.set_registered_model_alias(model_name, alias, version)
    move = AliasMove(uuid.uuid4().hex, _now(), model_name, alias, previous, version, reason, run_id)
    _record_or_undo(mlflow_client, move, warehouse_uri)
    LOG.info("alias moved: %s", json.dumps(move.to_dict()))
    return move


def remove_alias(
    alias: str,
    *,
    reason: str,
    run_id: str,
    model_name: str = MODEL_NAME,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
) -> AliasMove | None:
    """Delete ``alias`` (recorded as a move to no version); None if it did not exist.

    Refuses ``champion``: serving always needs one (move it with ``set_alias``/``rollback`` instead).
    """
    if alias == CHAMPION:
        raise RegistryError("the champion alias is never removed: models:/loopline-ctr@champion must always load")
    mlflow_client = client(tracking_uri)
    previous = alias_version(alias, model_name=model_name, tracking_uri=tracking_uri)
    if previous is None:
        return None
    mlflow_client.delete_registered_model_alias(model_name, alias)
    move = AliasMove(uuid.uuid4().hex, _now(), model_name, alias, previous, None, reason, run_id)
    _record_or_undo(mlflow_client, move, warehouse_uri)
    return move


def _record_or_undo(mlflow_client: Any, move: AliasMove, warehouse_uri: str | None) -> None:
    try:
        _write_move(move, warehouse_uri)
    except Exception:
        if move.from_version is None:
            mlflow_client.delete_registered_model_alias(move.model_name, move.alias)
        else:
            mlflow_client.set_registered_model_alias(move.model_name, move.alias, move.from_version)
        LOG.error("alias move of %s@%s undone: the audit row could not be written", move.model_name, move.alias)
        raise


def promote(
    version: str | int,
    *,
    reason: str,
    run_id: str,
    model_name: str = MODEL_NAME,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
) -> list[AliasMove]:
    """Make ``version`` the champion; the old champion becomes ``previous`` (for ``rollback``)."""
    moves = []
    old = alias_version(CHAMPION, model_name=model_name, tracking_uri=tracking_uri)
    if old is not None and old != str(version):
        moves.append(
            set_alias(
                PREVIOUS, old, reason=f"replaced as champion: {reason}", run_id=run_id, model_name=model_name,
                tracking_uri=tracking_uri, warehouse_uri=warehouse_uri,
            )
        )  # fmt: skip
    moves.append(
        set_alias(
            CHAMPION, version, reason=reason, run_id=run_id, model_name=model_name,
            tracking_uri=tracking_uri, warehouse_uri=warehouse_uri,
        )
    )  # fmt: skip
    return moves


def rollback(
    *,
    reason: str,
    run_id: str,
    model_name: str = MODEL_NAME,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
) -> AliasMove:
    """Point the champion back at the ``previous`` version."""
    previous = alias_version(PREVIOUS, model_name=model_name, tracking_uri=tracking_uri)
    if previous is None:
        raise RegistryError(f"{model_name} has no '{PREVIOUS}' alias: nothing to roll back to")
    return set_alias(
        CHAMPION, previous, reason=f"rollback: {reason}", run_id=run_id, model_name=model_name,
        tracking_uri=tracking_uri, warehouse_uri=warehouse_uri,
    )  # fmt: skip


def register_candidate(
    run_id: str,
    *,
    reason: str = "new candidate",
    by_run_id: str | None = None,
    model_name: str = MODEL_NAME,
    alias: str | None = CHALLENGER,
    require_blessed: bool = True,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
) -> str:
    """Register the run's serving model as a new version of ``model_name``; point ``alias`` at it.

    The serving model is the variant the compression gate chose (run tag ``loopline.serving_model_uri``),
    else the FP32 model training logged. With ``require_blessed`` the run must carry a BLESSED
    evaluation verdict. Returns the new version.
    """
    import mlflow

    mlflow_client = client(tracking_uri)
    run = mlflow_client.get_run(run_id)
    tags = run.data.tags
    if require_blessed and tags.get(TAG_EVALUATION_VERDICT) != "BLESSED":
        raise RegistryError(
            f"run {run_id} is not blessed (evaluation verdict: {tags.get(TAG_EVALUATION_VERDICT, 'none')}); "
            "run the evaluation gate first or pass require_blessed=False"
        )
    source = tags.get(TAG_SERVING_MODEL_URI) or tags.get(TAG_MODEL_URI)
    if not source:
        raise RegistryError(f"run {run_id} logged no model (no {TAG_MODEL_URI} tag): was it made by run_training?")
    version_tags = {
        "run_id": run_id,
        "compression_variant": tags.get(TAG_COMPRESSION_VARIANT, "fp32"),
        "evaluation_verdict_id": tags.get(TAG_EVALUATION_VERDICT_ID, ""),
        **{k.removeprefix("loopline.lineage."): v for k, v in tags.items() if k.startswith("loopline.lineage.")},
    }
    registered = mlflow.register_model(source, model_name, tags=version_tags)
    version = str(registered.version)
    if alias:
        set_alias(
            alias, version, reason=reason, run_id=by_run_id or run_id, model_name=model_name,
            tracking_uri=tracking_uri, warehouse_uri=warehouse_uri,
        )  # fmt: skip
    return version
