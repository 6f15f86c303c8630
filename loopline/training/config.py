"""The model's configuration: ``models/ctr_ranker.yaml`` read and validated, with per-run overrides.

The YAML is the single place the default numbers and feature lists live; code takes them as
arguments. ``load_config(overrides={"training.epochs": 3})`` changes one value for one run.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
DEFAULT_CONFIG = MODELS_DIR / "ctr_ranker.yaml"
NETWORK_FILE = MODELS_DIR / "ctr_ranker.py"
PYFUNC_FILE = MODELS_DIR / "ctr_pyfunc.py"


class ConfigError(ValueError):
    """The model configuration or an override is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Section):
    """Column roles in the training frame."""

    user: str
    item: str
    request: str
    label: str
    position: str
    date: str
    oracle: str


class Features(_Section):
    """Default model inputs (a run may pass its own lists)."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @model_validator(mode="after")
    def _distinct(self) -> Features:
        names = [*self.numeric, *self.categorical]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"features listed twice: {duplicates}")
        return self


class Network(_Section):
    user_buckets: int = Field(ge=1)
    item_buckets: int = Field(ge=1)
    embedding_dim: int = Field(ge=1)
    hidden: tuple[int, ...]
    dropout: float = Field(ge=0.0, lt=1.0)
    max_position: int = Field(ge=1)
    reference_position: int = Field(ge=0)
    min_category_count: int = Field(ge=1)

    @model_validator(mode="after")
    def _reference_in_range(self) -> Network:
        if self.reference_position > self.max_position:
            raise ValueError(f"reference_position {self.reference_position} > max_position {self.max_position}")
        if any(units < 1 for units in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {list(self.hidden)}")
        return self


class Training(_Section):
    seed: int = Field(ge=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    embedding_l2: float = Field(ge=0.0)
    position_learning_rate_scale: float = Field(gt=0.0)
    patience: int = Field(ge=0)
    min_delta: float = Field(ge=0.0)
    validation_days: int = Field(ge=1)
    pos_weight: float = Field(gt=0.0)
    threads: int = Field(ge=1)
    baseline_max_rows: int = Field(ge=100)


class Evaluation(_Section):
    min_auc: float = Field(ge=0.0, le=1.0)
    max_calibration_error: float = Field(ge=0.0, le=1.0)
    auc_tolerance: float = Field(ge=0.0)
    log_loss_tolerance: float = Field(ge=0.0)
    calibration_bins: int = Field(ge=2)
    ndcg_k: int = Field(ge=1)


class Compression(_Section):
    max_auc_drop: float = Field(ge=0.0)
    max_latency_ratio: float = Field(gt=0.0)
    serving_batch_size: int = Field(ge=1)
    latency_repeats: int = Field(ge=1)
    latency_threads: int = Field(ge=1)
    prune_keep_ratio: float = Field(gt=0.0, le=1.0)
    prune_finetune_epochs: int = Field(ge=0)
    distill: bool
    student_embedding_dim: int = Field(ge=1)
    student_hidden: tuple[int, ...]
    distill_epochs: int = Field(ge=1)
    distill_alpha: float = Field(ge=0.0, le=1.0)


class ModelConfig(_Section):
    """Everything ``models/ctr_ranker.yaml`` says; see the comments there for each number."""

    model_name: str
    feature_service: str
    columns: Columns
    features: Features
    network: Network
    training: Training
    evaluation: Evaluation
    compression: Compression

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for MLflow parameters."""
        flat: dict[str, Any] = {"model_name": self.model_name, "feature_service": self.feature_service}
        for section in ("columns", "features", "network", "training", "evaluation", "compression"):
            for key, value in getattr(self, section).model_dump().items():
                flat[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
        return flat


def _apply_overrides(document: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = document
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section of the model config")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {dotted!r}: unknown key (known here: {sorted(node)})")
        node[parts[-1]] = value
    return document


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """Read the model YAML (default ``models/ctr_ranker.yaml``), apply ``{"section.key": value}`` overrides."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        document = yaml.safe_load(source.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read model config {source}: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"model config {source}: expected a mapping at the top level")
    document = _apply_overrides(document, overrides or {})
    try:
        return ModelConfig.model_validate(document)
    except ValidationError as error:
        lines = [f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()]
        raise ConfigError(f"invalid model config {source}:\n  " + "\n  ".join(lines)) from None


def network_module(path: str | Path | None = None) -> ModuleType:
    """The network file (``models/ctr_ranker.py``) as a module; loaded once per path."""
    source = Path(path) if path is not None else NETWORK_FILE
    name = "loopline_model_" + source.stem
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None) == str(source):
        return module
    spec = importlib.util.spec_from_file_location(name, source)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load the network module {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # TorchScript reads the classes' source through the module registry
    spec.loader.exec_module(module)
    return module
