"""The compression gate: smaller serving variants of the CTR ranker, measured against FP32, one chosen.

Variants (each a TorchScript ``CtrScorer`` with the same inputs and outputs as FP32):

- ``int8``: dynamic INT8 quantization (``torch.ao.quantization.quantize_dynamic``): Linear layers with
  INT8 weights and dynamically quantized activations, id and category embeddings with INT8 weights
  (per-row scale and offset). The position bias stays FP32 (tiny).
- ``pruned``: structured pruning that really shrinks the model. Hidden units of the MLP with the
  smallest weight norms (incoming x outgoing) are removed, building smaller Linear layers; the hashed
  embedding tables keep only the rows that training ids reach (sparse storage: sorted bucket ids + those
  rows; other buckets, which training never updated, read zeros = "an unknown id"). Then fine-tuned.
- ``pruned_int8``: the pruned model, quantized as above.
- ``distilled`` (optional): a smaller student network (narrower embeddings and MLP) trained on a mix of
  the labels and the FP32 teacher's probabilities.

Each is measured on the training run's holdout: AUC change against FP32, the largest and mean
change of a probability, size on disk (the saved TorchScript file), and latency (median of repeated
calls of ``score_encoded`` on one thread) at batch 1 and at the serving batch size. The gate keeps
variants whose AUC drop is within ``max_auc_drop`` and whose serving-batch latency is at most
``max_latency_ratio`` times FP32's, then picks the smallest (ties: the fastest); FP32 is always
eligible, so there is always a choice. The verdict records every number and why each variant was
or was not chosen.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from loopline import registry
from loopline.training import metrics
from loopline.training.config import Compression, ModelConfig, load_config, network_module
from loopline.training.data import Encoded, FeatureSpec, encode, hash_ids
from loopline.training.fit import build_network, build_scorer, fit_network, score, torch_threads

LOG = logging.getLogger(__name__)
GATE = "compression"
SEED_CLAIMS = {"int8": "75% smaller, 2-3x faster (the seed's claim; measured here, never assumed)"}
VARIANT_DESCRIPTIONS = {
    "fp32": "the trained model, 32-bit floats",
    "int8": "dynamic INT8 quantization of Linear layers and id/category embeddings",
    "pruned": "structured pruning: MLP units removed, hashed tables keep only rows reached in training, fine-tuned",
    "pruned_int8": "the pruned model with dynamic INT8 quantization",
    "distilled": "a narrower student network trained on labels and the FP32 teacher's probabilities",
}


@dataclass
class VariantReport:
    """One variant's measurements against FP32 and the gate's judgement of it."""

    name: str
    description: str
    size_bytes: int
    latency_ms_batch_1: float
    latency_ms_serving_batch: float
    auc: float
    auc_change: float
    log_loss: float
    calibration_error: float
    max_abs_probability_change: float
    mean_abs_probability_change: float
    size_ratio: float = 1.0  # size / FP32 size
    speedup_batch_1: float = 1.0  # FP32 latency / this latency
    speedup_serving_batch: float = 1.0
    eligible: bool = True
    reason: str = ""


@dataclass
class CompressionVerdict:
    """The chosen variant, why, and every variant's numbers (``to_dict`` is JSON-able)."""

    chosen: str
    reason: str
    variants: list[VariantReport]
    policy: dict[str, Any]
    serving_batch_size: int
    candidate_run_id: str | None = None
    model_name: str = registry.MODEL_NAME
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    verdict_id: str | None = None
    modules: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> TorchScript module
    specs: dict[str, FeatureSpec] = field(default_factory=dict, repr=False)

    def variant(self, name: str) -> VariantReport:
        for report in self.variants:
            if report.name == name:
                return report
        raise KeyError(f"no variant {name!r}; measured: {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("modules", "specs")}
        data["seed_claims"] = SEED_CLAIMS
        return registry._jsonable(data)

    def to_table(self) -> str:
        """Plain-text table: size, latency at batch 1 and the serving batch, AUC change, verdict."""
        b = self.serving_batch_size
        lines = [
            f"{'variant':<12} {'size KiB':>9} {'x FP32':>7} {'ms@1':>8} {'speed@1':>8} {f'ms@{b}':>8} "
            f"{f'speed@{b}':>9} {'AUC chg':>9} {'max |dp|':>9}  verdict"
        ]
        for v in self.variants:
            verdict = "CHOSEN" if v.name == self.chosen else ("eligible" if v.eligible else "rejected")
            lines.append(
                f"{v.name:<12} {v.size_bytes / 1024:>9.1f} {v.size_ratio:>7.3f} {v.latency_ms_batch_1:>8.3f} "
                f"{v.speedup_batch_1:>7.2f}x {v.latency_ms_serving_batch:>8.3f} {v.speedup_serving_batch:>8.2f}x "
                f"{v.auc_change:>+9.5f} {v.max_abs_probability_change:>9.5f}  {verdict}: {v.reason}"
            )
        lines.append(f"chosen: {self.chosen} ({self.reason})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Building the variants
# --------------------------------------------------------------------------------------------------


def quantize_int8(scorer: nn.Module) -> nn.Module:
    """Dynamic INT8 quantization of a ``CtrScorer`` (a copy): Linear layers and id/category embeddings."""
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

    scorer = copy.deepcopy(scorer).eval()
    qconfig: dict[str, Any] = {}
    for name, module in scorer.named_modules():
        if isinstance(module, nn.Linear):
            qconfig[name] = default_dynamic_qconfig
        elif isinstance(module, nn.Embedding) and "position_bias" not in name:
            qconfig[name] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao (not installed)
        return quantize_dynamic(scorer, qconfig, dtype=torch.qint8)


def _linear_layers(net: nn.Module) -> list[int]:
    return [index for index, layer in enumerate(net.mlp) if isinstance(layer, nn.Linear)]


def prune_structured(
    net: nn.Module, keep_ratio: float, user_buckets: np.ndarray, item_buckets: np.ndarray
) -> nn.Module:
    """A smaller copy of ``net``: fewer MLP hidden units and compact (sparse) id tables.

    Hidden unit importance = L2 norm of its incoming weights x L2 norm of its outgoing weights; the
    most important ``keep_ratio`` of each hidden layer stay (in their original order). The id tables
    keep the rows of ``user_buckets`` / ``item_buckets`` (those training ids reach).
    """
    module = network_module()
    pruned = copy.deepcopy(net).eval()
    linear = _linear_layers(pruned)
    with torch.no_grad():
        for this, following in zip(linear[:-1], linear[1:], strict=True):
            layer, after = pruned.mlp[this], pruned.mlp[following]
            importance = layer.weight.norm(dim=1) * after.weight.norm(dim=0)
            keep = max(1, math.ceil(keep_ratio * layer.out_features))
            kept = torch.sort(torch.topk(importance, keep).indices).values
            smaller = nn.Linear(layer.in_features, keep)
            smaller.weight.copy_(layer.weight[kept])
            smaller.bias.copy_(layer.bias[kept])
            narrower = nn.Linear(keep, after.out_features)
            narrower.weight.copy_(after.weight[:, kept])
            narrower.bias.copy_(after.bias)
            pruned.mlp[this], pruned.mlp[following] = smaller, narrower
        for attribute, buckets in (("user_embedding", user_buckets), ("item_embedding", item_buckets)):
            table = getattr(pruned, attribute).embedding.weight
            kept_rows = torch.from_numpy(np.unique(buckets).astype(np.int64))
            setattr(pruned, attribute, module.CompactEmbedding(kept_rows, table[kept_rows].clone()))
    return pruned


def _student_spec(spec: FeatureSpec, policy: Compression) -> FeatureSpec:
    network = dict(spec.network)
    network.update(embedding_dim=policy.student_embedding_dim, hidden=list(policy.student_hidden))
    return dataclasses.replace(spec, network=network, logit_offset=0.0)


def distill(
    teacher: nn.Module, spec: FeatureSpec, train: Encoded, holdout: Encoded, config: ModelConfig
) -> tuple[nn.Module, FeatureSpec]:
    """Train a student on ``alpha * label + (1 - alpha) * teacher P(click)`` (logged positions)."""
    policy = config.compression
    student_spec = _student_spec(spec, policy)
    torch.manual_seed(config.training.seed)
    student = build_network(student_spec)
    soft = torch.from_numpy(score(teacher, train, logged_position=True).astype(np.float32))
    targets = policy.distill_alpha * train.label + (1 - policy.distill_alpha) * soft
    rate = float(targets.mean().clamp(1e-4, 1 - 1e-4))
    with torch.no_grad():
        student.mlp[-1].bias.fill_(math.log(rate / (1 - rate)))
    t = config.training
    fit_network(
        student,
        build_scorer(student, student_spec),
        train,
        holdout,
        epochs=policy.distill_epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        patience=t.patience,
        min_delta=t.min_delta,
        seed=t.seed,
        soft_targets=targets,
    )
    return student, student_spec


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def saved_size(module: torch.jit.ScriptModule, spec: FeatureSpec) -> int:
    """Bytes of the TorchScript file serving would load (spec included)."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={registry.SPEC_FILE: spec.to_json()})
    return buffer.getbuffer().nbytes


def latency_ms(module: Any, data: Encoded, batch: int, repeats: int, threads: int) -> float:
    """Median milliseconds of one ``score_encoded`` call on ``batch`` rows (after a warm-up), on ``threads``."""
    rows = min(batch, len(data))
    args = (data.user[:rows], data.item[:rows], data.numeric[:rows], data.categories[:rows])
    timings = []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(max(5, repeats // 10)):
            module.score_encoded(*args)
        for _ in range(repeats):
            started = time.perf_counter()
            module.score_encoded(*args)
            timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000.0


def _measure(
    name: str,
    module: Any,
    spec: FeatureSpec,
    holdout: Encoded,
    labels: np.ndarray,
    config: ModelConfig,
    reference: np.ndarray | None,
) -> tuple[VariantReport, np.ndarray]:
    policy = config.compression
    probabilities = score(module, holdout, logged_position=True)
    reference = probabilities if reference is None else reference
    change = np.abs(probabilities - reference)
    report = VariantReport(
        name=name,
        description=VARIANT_DESCRIPTIONS[name],
        size_bytes=saved_size(module, spec),
        latency_ms_batch_1=latency_ms(module, holdout, 1, policy.latency_repeats, policy.latency_threads),
        latency_ms_serving_batch=latency_ms(
            module, holdout, policy.serving_batch_size, policy.latency_repeats, policy.latency_threads
        ),
        auc=metrics.auc(labels, probabilities),
        auc_change=0.0,
        log_loss=metrics.log_loss(labels, probabilities),
        calibration_error=metrics.calibration_error(labels, probabilities, config.evaluation.calibration_bins),
        max_abs_probability_change=float(change.max()) if change.size else 0.0,
        mean_abs_probability_change=float(change.mean()) if change.size else 0.0,
    )
    return report, probabilities


def choose(
    variants: list[VariantReport], policy: Compression, max_calibration_error: float | None = None
) -> tuple[str, str]:
    """Mark each variant eligible or not (with its reason) and pick the smallest, then fastest, eligible one.

    ``max_calibration_error`` (the evaluation gate's value threshold) also applies to every variant: a
    fine-tuned or distilled variant is a new model and must stay calibrated too.
    """
    fp32 = next(v for v in variants if v.name == "fp32")
    for v in variants:
        v.auc_change = v.auc - fp32.auc
        v.size_ratio = v.size_bytes / fp32.size_bytes
        v.speedup_batch_1 = fp32.latency_ms_batch_1 / v.latency_ms_batch_1 if v.latency_ms_batch_1 else float("nan")
        v.speedup_serving_batch = (
            fp32.latency_ms_serving_batch / v.latency_ms_serving_batch if v.latency_ms_serving_batch else float("nan")
        )
        problems = []
        if not (fp32.auc - v.auc <= policy.max_auc_drop):
            problems.append(f"AUC drop {fp32.auc - v.auc:.5f} > {policy.max_auc_drop}")
        if max_calibration_error is not None and not (v.calibration_error <= max_calibration_error):
            problems.append(f"calibration error {v.calibration_error:.4f} > {max_calibration_error}")
        if not (v.latency_ms_serving_batch <= policy.max_latency_ratio * fp32.latency_ms_serving_batch):
            problems.append(f"{1 / v.speedup_serving_batch:.2f}x FP32's latency > {policy.max_latency_ratio}x allowed")
        v.eligible = v.name == "fp32" or not problems
        v.reason = "; ".join(problems) if problems else (
            f"AUC change {v.auc_change:+.5f}, {v.size_ratio:.1%} of FP32's size, "
            f"{v.speedup_serving_batch:.2f}x FP32's speed at the serving batch"
        )  # fmt: skip
    eligible = sorted((v for v in variants if v.eligible), key=lambda v: (v.size_bytes, v.latency_ms_serving_batch))
    best = eligible[0]
    why = (
        f"smallest eligible variant: {best.size_bytes / 1024:.1f} KiB ({best.size_ratio:.1%} of FP32), "
        f"AUC change {best.auc_change:+.5f} within -{policy.max_auc_drop}, "
        f"{best.speedup_serving_batch:.2f}x FP32's speed at batch {policy.serving_batch_size}"
    )
    return best.name, why


def compress_model(
    net: nn.Module,
    spec: FeatureSpec,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    config: ModelConfig | None = None,
) -> CompressionVerdict:
    """Build and measure every variant of the FP32 ``net`` (training code), choose one.

    :param train: the rows the model was trained on (pruning fine-tune and distillation use them).
    :param holdout: the rows every variant is measured on (the training run's holdout).
    """
    config = config or load_config()
    policy = config.compression
    label = config.columns.label
    with torch_threads(config.training.threads):
        train_data = encode(train, spec, label_column=label, allow_missing_columns=False)
        holdout_data = encode(holdout, spec, label_column=label)
    labels = holdout_data.label.numpy()
    net = copy.deepcopy(net).eval()
    fp32_scorer = build_scorer(net, spec)
    candidates: list[tuple[str, nn.Module, FeatureSpec]] = [("fp32", fp32_scorer, spec)]
    candidates.append(("int8", quantize_int8(fp32_scorer), spec))
    with torch_threads(config.training.threads):
        pruned = prune_structured(
            net,
            policy.prune_keep_ratio,
            hash_ids(train[spec.user_column].to_numpy(), spec.user_buckets),
            hash_ids(train[spec.item_column].to_numpy(), spec.item_buckets),
        )
        pruned_spec = dataclasses.replace(spec, network={**spec.network, "pruned": True})
        if policy.prune_finetune_epochs:
            t = config.training
            fit_network(
                pruned,
                build_scorer(pruned, spec),
                train_data,
                holdout_data,
                epochs=policy.prune_finetune_epochs,
                batch_size=t.batch_size,
                learning_rate=t.learning_rate / 3,
                weight_decay=t.weight_decay,
                patience=policy.prune_finetune_epochs,
                min_delta=t.min_delta,
                seed=t.seed,
                pos_weight=t.pos_weight,
            )
        pruned_scorer = build_scorer(pruned.eval(), spec)
        candidates.append(("pruned", pruned_scorer, pruned_spec))
        candidates.append(("pruned_int8", quantize_int8(pruned_scorer), pruned_spec))
        if policy.distill:
            student, student_spec = distill(fp32_scorer, spec, train_data, holdout_data, config)
            candidates.append(("distilled", build_scorer(student, student_spec), student_spec))
    reports: list[VariantReport] = []
    modules: dict[str, Any] = {}
    specs: dict[str, FeatureSpec] = {}
    reference = None
    for name, scorer, variant_spec in candidates:
        scripted = torch.jit.script(scorer.eval())
        report, probabilities = _measure(name, scripted, variant_spec, holdout_data, labels, config, reference)
        reference = probabilities if reference is None else reference
        reports.append(report)
        modules[name] = scripted
        specs[name] = variant_spec
    chosen, why = choose(reports, policy, config.evaluation.max_calibration_error)
    verdict = CompressionVerdict(
        chosen=chosen,
        reason=why,
        variants=reports,
        policy=policy.model_dump(),
        serving_batch_size=policy.serving_batch_size,
        model_name=config.model_name,
        modules=modules,
        specs=specs,
    )
    LOG.info("compression gate:\n%s", verdict.to_table())
    return verdict


def compress_run(
    run_id: str,
    *,
    train_frame: pd.DataFrame,
    config: ModelConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    warehouse_uri: str | None = None,
    record: bool = True,
) -> CompressionVerdict:
    """The compression gate for training run ``run_id``: variants of its FP32 model, measured on its holdout.

    :param train_frame: the training rows of that run (the same frame it was trained on; rows of the
        holdout days are dropped here), for the pruning fine-tune and distillation.
    :param record: store the verdict (warehouse ``gate_verdicts``, MLflow) and log the chosen variant as
        the run's serving model (tag ``loopline.serving_model_uri``, which ``register_candidate`` uses).
    """
    import mlflow

    from loopline.training.data import day_of
    from loopline.training.tracking import input_example, load_checkpoint, load_holdout, log_serving_model

    if config is not None and overrides:
        raise ValueError("pass either config or overrides, not both (overrides apply when loading)")
    config = config or load_config(overrides=overrides)
    net, spec = load_checkpoint(run_id, tracking_uri=tracking_uri)
    holdout = load_holdout(run_id, tracking_uri=tracking_uri)
    holdout_days = set(day_of(holdout, config.columns.date))
    train = train_frame.loc[~day_of(train_frame, config.columns.date).isin(holdout_days).to_numpy()]
    verdict = compress_model(net, spec, train, holdout, config)
    verdict.candidate_run_id = run_id
    if not record:
        return verdict
    mlflow_client = registry.client(tracking_uri)
    run = mlflow_client.get_run(run_id)
    serving_uri = run.data.tags.get(registry.TAG_MODEL_URI)
    if verdict.chosen != "fp32":
        with tempfile.TemporaryDirectory(prefix="loopline-compress-") as scratch, mlflow.start_run(run_id=run_id):
            info = log_serving_model(
                verdict.modules[verdict.chosen],
                verdict.specs[verdict.chosen],
                input_example(holdout, spec),
                name=f"serving_model_{verdict.chosen}",
                directory=Path(scratch),
            )
            serving_uri = info.model_uri
    verdict.verdict_id = uuid.uuid4().hex
    registry.record_verdict(
        GATE,
        verdict.chosen,
        summary=f"chose {verdict.chosen}: {verdict.reason}",
        details=verdict.to_dict(),
        model_name=verdict.model_name,
        candidate_run_id=run_id,
        warehouse_uri=warehouse_uri,
        verdict_id=verdict.verdict_id,
    )
    mlflow_client.set_tag(run_id, registry.TAG_SERVING_MODEL_URI, serving_uri)
    mlflow_client.set_tag(run_id, registry.TAG_COMPRESSION_VARIANT, verdict.chosen)
    mlflow_client.set_tag(run_id, "loopline.compression.verdict_id", verdict.verdict_id)
    mlflow_client.log_dict(run_id, verdict.to_dict(), "gates/compression_verdict.json")
    mlflow_client.log_text(run_id, verdict.to_table(), "gates/compression_table.txt")
    for v in verdict.variants:
        for key in ("size_bytes", "latency_ms_batch_1", "latency_ms_serving_batch", "auc_change"):
            mlflow_client.log_metric(run_id, f"compression_{v.name}_{key}", float(getattr(v, key)))
    LOG.info("compression verdict %s: %s", verdict.verdict_id, json.dumps(verdict.to_dict()))
    return verdict
