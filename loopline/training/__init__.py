"""Training the CTR ranker (``models/ctr_ranker.py``), its metrics, MLflow tracking and the evaluation gate.

The public API (see docs/training.md):

- ``run_training(frame, ...) -> TrainingRun``: train, compare with baselines (and the oracle on
  simulated data), log everything to MLflow; what the retrain DAG's train task calls.
- ``evaluate_candidate(run_id, ...) -> EvaluationVerdict``: the evaluation gate (TFX blessing).
- ``train_model(frame, ...)``, ``comparison(...)``: the same without MLflow.
- ``frame_from_simulation(log_uri, truth_dir)``: a training frame from a simulation (test/benchmark aid).
- ``load_config(path=None, overrides=None)``: ``models/ctr_ranker.yaml``.

Compression is ``loopline.compress``; registration, aliases and loading are ``loopline.registry``.
"""

from loopline.training.config import ConfigError, ModelConfig, load_config
from loopline.training.data import FeatureSpec, FrameError, frame_from_simulation, hash_ids, time_split
from loopline.training.evaluation import BLESSED, NOT_BLESSED, EvaluationVerdict, evaluate_candidate, judge
from loopline.training.fit import TrainedModel, comparison, train_model
from loopline.training.tracking import Lineage, TrainingRun, load_holdout, run_training

__all__ = [
    "BLESSED",
    "NOT_BLESSED",
    "ConfigError",
    "EvaluationVerdict",
    "FeatureSpec",
    "FrameError",
    "Lineage",
    "ModelConfig",
    "TrainedModel",
    "TrainingRun",
    "comparison",
    "evaluate_candidate",
    "frame_from_simulation",
    "hash_ids",
    "judge",
    "load_config",
    "load_holdout",
    "run_training",
    "time_split",
    "train_model",
]
