"""The evaluation gate, with TFX blessing semantics.

A candidate is BLESSED only if
- value thresholds hold: AUC >= ``min_auc`` and calibration error <= ``max_calibration_error``; and
- change thresholds hold against the current champion scored on the same holdout:
  AUC >= champion AUC - ``auc_tolerance`` and log loss <= champion log loss + ``log_loss_tolerance``.
The first model (no champion yet) faces the value thresholds only. Candidate and champion are both
scored through their logged TorchScript modules (what serving would run), at the logged positions.
The verdict, with every number, is stored in the warehouse (``gate_verdicts``), tagged and attached
to the candidate's MLflow run, and logged.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from loopline import registry
from loopline.training.config import Evaluation, ModelConfig, load_config
from loopline.training.fit import evaluate_scorer

LOG = logging.getLogger(__name__)
BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"
GATE = "evaluation"


@dataclass(frozen=True)
class Check:
    """One threshold: its value, the bound it was held to, and whether it held."""

    name: str
    kind: str  # "value" or "change"
    value: float
    bound: float
    rule: str
    passed: bool


@dataclass
class EvaluationVerdict:
    """The gate's decision with every number; ``to_dict`` is JSON-able (XCom, warehouse, MLflow)."""

    verdict: str
    model_name: str
    candidate_run_id: str | None
    candidate_version: str | None
    baseline_version: str | None
    baseline_run_id: str | None
    candidate_metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    checks: list[Check]
    thresholds: dict[str, float]
    holdout_rows: int
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    verdict_id: str | None = None

    @property
    def blessed(self) -> bool:
        return self.verdict == BLESSED

    @property
    def reasons(self) -> list[str]:
        """The failed checks in words (empty when blessed)."""
        return [check.rule for check in self.checks if not check.passed]

    def summary(self) -> str:
        against = (
            f"champion v{self.baseline_version}" if self.baseline_version else "no champion (value thresholds only)"
        )
        failed = "; ".join(self.reasons)
        return f"{self.verdict}: candidate run {self.candidate_run_id} vs {against}" + (
            f"; failed: {failed}" if failed else ""
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [asdict(check) for check in self.checks]
        return registry._jsonable(data)

    def to_table(self) -> str:
        """A plain-text table for the task log."""
        lines = [self.summary(), f"{'check':<22} {'kind':<7} {'value':>10} {'bound':>10}  ok"]
        for check in self.checks:
            ok = "yes" if check.passed else "NO"
            lines.append(f"{check.name:<22} {check.kind:<7} {check.value:>10.5f} {check.bound:>10.5f}  {ok}")
        return "\n".join(lines)


def judge(
    candidate: Mapping[str, float], champion: Mapping[str, float] | None, policy: Evaluation
) -> tuple[str, list[Check]]:
    """The pure decision: value thresholds always, change thresholds when there is a champion."""
    auc, calibration, log_loss = candidate["auc"], candidate["calibration_error"], candidate["log_loss"]
    checks = [
        Check(
            "auc", "value", auc, policy.min_auc, f"AUC {auc:.4f} >= minimum {policy.min_auc:.4f}", auc >= policy.min_auc
        ),
        Check(
            "calibration_error",
            "value",
            calibration,
            policy.max_calibration_error,
            f"calibration error {calibration:.4f} <= maximum {policy.max_calibration_error:.4f}",
            calibration <= policy.max_calibration_error,
        ),
    ]
    if champion is not None:
        auc_bound = champion["auc"] - policy.auc_tolerance
        loss_bound = champion["log_loss"] + policy.log_loss_tolerance
        checks += [
            Check(
                "auc_vs_champion",
                "change",
                auc,
                auc_bound,
                f"AUC {auc:.4f} >= champion {champion['auc']:.4f} - {policy.auc_tolerance}",
                auc >= auc_bound,
            ),
            Check(
                "log_loss_vs_champion",
                "change",
                log_loss,
                loss_bound,
                f"log loss {log_loss:.4f} <= champion {champion['log_loss']:.4f} + {policy.log_loss_tolerance}",
                log_loss <= loss_bound,
            ),
        ]
    # NaN (e.g. a single-class holdout) fails every comparison above, so it is never blessed.
    return (BLESSED if all(check.passed for check in checks) else NOT_BLESSED), checks


def evaluate_candidate(
    run_id: str,
    *,
    champion_alias: str = registry.CHAMPION,
    holdout: pd.DataFrame | None = None,
    config: ModelConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
    record: bool = True,
) -> EvaluationVerdict:
    """Judge the FP32 model of training run ``run_id`` against the model behind ``champion_alias``.

    :param holdout: rows to score both on (default: the run's own holdout artifact).
    :param config, overrides: thresholds (default: ``models/ctr_ranker.yaml``'s ``evaluation`` section).
    :param record: store the verdict (warehouse ``gate_verdicts``, MLflow tags and artifact).
    """
    from loopline.training.tracking import load_holdout

    if config is not None and overrides:
        raise ValueError("pass either config or overrides, not both (overrides apply when loading)")
    config = config or load_config(overrides=overrides)
    mlflow_client = registry.client(tracking_uri)
    run = mlflow_client.get_run(run_id)
    candidate_uri = run.data.tags.get(registry.TAG_MODEL_URI)
    if not candidate_uri:
        raise registry.RegistryError(f"run {run_id} logged no model (no {registry.TAG_MODEL_URI} tag)")
    holdout = holdout if holdout is not None else load_holdout(run_id, tracking_uri=tracking_uri)
    candidate = registry.load_from_uri(candidate_uri, tracking_uri=tracking_uri)
    candidate_metrics = evaluate_scorer(candidate.module, candidate.spec, holdout, config)
    champion_version = registry.alias_version(champion_alias, model_name=config.model_name, tracking_uri=tracking_uri)
    champion_metrics = None
    champion_run_id = None
    if champion_version is not None:
        champion = registry.load_model(champion_version, model_name=config.model_name, tracking_uri=tracking_uri)
        champion_metrics = evaluate_scorer(champion.module, champion.spec, holdout, config)
        champion_run_id = champion.run_id
    decision, checks = judge(candidate_metrics, champion_metrics, config.evaluation)
    verdict = EvaluationVerdict(
        verdict=decision,
        model_name=config.model_name,
        candidate_run_id=run_id,
        candidate_version=None,  # registered only after the gates; the version's tags name this verdict
        baseline_version=champion_version,
        baseline_run_id=champion_run_id,
        candidate_metrics=candidate_metrics,
        baseline_metrics=champion_metrics,
        checks=checks,
        thresholds=config.evaluation.model_dump(),
        holdout_rows=len(holdout),
    )
    if record:
        _record(verdict, mlflow_client, warehouse_uri)
    LOG.info("evaluation gate:\n%s", verdict.to_table())
    return verdict


def _record(verdict: EvaluationVerdict, mlflow_client: Any, warehouse_uri: str | None) -> None:
    verdict.verdict_id = uuid.uuid4().hex
    registry.record_verdict(
        GATE,
        verdict.verdict,
        summary=verdict.summary(),
        details=verdict.to_dict(),
        model_name=verdict.model_name,
        candidate_run_id=verdict.candidate_run_id,
        baseline_run_id=verdict.baseline_run_id,
        baseline_version=verdict.baseline_version,
        warehouse_uri=warehouse_uri,
        verdict_id=verdict.verdict_id,
    )
    run_id = verdict.candidate_run_id
    mlflow_client.set_tag(run_id, registry.TAG_EVALUATION_VERDICT, verdict.verdict)
    mlflow_client.set_tag(run_id, registry.TAG_EVALUATION_VERDICT_ID, verdict.verdict_id)
    mlflow_client.set_tag(run_id, "loopline.evaluation.baseline_version", verdict.baseline_version or "none")
    mlflow_client.log_dict(run_id, verdict.to_dict(), "gates/evaluation_verdict.json")
    if verdict.baseline_metrics:
        for key in ("auc", "log_loss", "calibration_error"):
            mlflow_client.log_metric(run_id, f"champion_{key}", float(verdict.baseline_metrics[key]))
    LOG.info("evaluation verdict %s: %s", verdict.verdict_id, json.dumps(verdict.to_dict()))
