"""Training the CTR ranker: seeded, deterministic, time-split validation, early stopping; and baselines.

``train_model`` fits the network of ``models/ctr_ranker.py`` on all days but the most recent ones,
validates on those after every epoch (log loss), stops when it stops improving and keeps the best
epoch's weights. The same frame, config and seed give bit-identical weights and metrics (single
process, same thread count). Class imbalance: the output bias starts at the log-odds of the click
rate, and ``training.pos_weight`` can up-weight clicks; the logit is then shifted back by
``-log(pos_weight)``, which restores calibrated probabilities exactly for a weighted log loss.
Missing features: NaN is filled with the training mean inside the model, and a missing flag per
feature is an input, so "unknown" is learnt separately from "average".
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from loopline.training import metrics
from loopline.training.config import ModelConfig, load_config, network_module
from loopline.training.data import Encoded, FeatureSpec, encode, fit_spec, labels_of, time_split

EVAL_BATCH_ROWS = 65_536


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_network(spec: FeatureSpec) -> nn.Module:
    """A fresh ``CtrNet`` for ``spec`` (its ``network`` dict holds the architecture)."""
    module = network_module()
    n = spec.network
    return module.CtrNet(
        n_numeric=len(spec.numeric_features),
        category_sizes=[len(v) + 1 for v in spec.vocabularies],
        user_buckets=spec.user_buckets,
        item_buckets=spec.item_buckets,
        embedding_dim=n["embedding_dim"],
        hidden=list(n["hidden"]),
        dropout=n["dropout"],
        max_position=spec.max_position,
    )


def build_scorer(net: nn.Module, spec: FeatureSpec) -> nn.Module:
    """The serving module (``CtrScorer``) around ``net`` with ``spec``'s preprocessing constants."""
    module = network_module()
    scorer = module.CtrScorer(
        net=net,
        numeric_features=list(spec.numeric_features),
        categorical_features=list(spec.categorical_features),
        numeric_center=torch.tensor(spec.numeric_center, dtype=torch.float32),
        numeric_scale=torch.tensor(spec.numeric_scale, dtype=torch.float32),
        vocabularies=[dict(v) for v in spec.vocabularies],
        user_buckets=spec.user_buckets,
        item_buckets=spec.item_buckets,
        reference_position=spec.reference_position,
        max_position=spec.max_position,
        logit_offset=float(spec.logit_offset),
    )
    return scorer.eval()


def score(scorer: Any, data: Encoded, *, logged_position: bool) -> np.ndarray:
    """P(click) of every row, at the logged position or (``logged_position=False``) the reference one."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(data), EVAL_BATCH_ROWS):
            part = slice(start, start + EVAL_BATCH_ROWS)
            position = data.position[part] if logged_position else None
            outputs.append(
                scorer.score_encoded(
                    data.user[part], data.item[part], data.numeric[part], data.categories[part], position
                )
            )
    if not outputs:
        return np.zeros(0)
    return torch.cat(outputs).to(torch.float64).numpy()


def evaluate_scorer(
    scorer: Any, spec: FeatureSpec, holdout: pd.DataFrame, config: ModelConfig, data: Encoded | None = None
) -> dict[str, float]:
    """The holdout metrics of a scorer: probabilities at the logged positions, NDCG by the serving score."""
    data = data if data is not None else encode(holdout, spec, label_column=config.columns.label)
    labels = data.label.numpy() if data.label is not None else labels_of(holdout, config.columns.label)
    return metrics.evaluate(
        labels,
        score(scorer, data, logged_position=True),
        holdout[config.columns.request].to_numpy(),
        ranking_scores=score(scorer, data, logged_position=False),
        bins=config.evaluation.calibration_bins,
        k=config.evaluation.ndcg_k,
    )


@dataclass
class TrainedModel:
    """A fitted network with its spec, training history and holdout metrics."""

    config: ModelConfig
    spec: FeatureSpec
    net: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, float]
    train_rows: int
    holdout_rows: int
    train_days: list[str]
    holdout_days: list[str]
    seconds: float
    examples_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)

    def scorer(self) -> nn.Module:
        """The eager serving module (``CtrScorer``)."""
        return build_scorer(self.net, self.spec)

    def scripted(self) -> torch.jit.ScriptModule:
        """The TorchScript serving module: loads with ``torch.jit.load`` alone."""
        return torch.jit.script(self.scorer())


def _days(frame: pd.DataFrame, column: str) -> list[str]:
    from loopline.training.data import day_of

    return sorted({d.isoformat() for d in day_of(frame, column).unique()})


def make_optimizers(
    net: nn.Module, learning_rate: float, weight_decay: float, position_learning_rate_scale: float = 1.0
) -> list[torch.optim.Optimizer]:
    """SparseAdam for sparse embedding tables (only a batch's rows move; untouched rows keep their
    near-zero start, "an unknown id"), AdamW for everything else; the position tower's parameters
    learn ``position_learning_rate_scale`` times faster and without weight decay."""
    sparse_ids = {id(module.weight) for module in net.modules() if isinstance(module, nn.Embedding) and module.sparse}
    position_ids = {id(p) for p in net.position_parameters()} if hasattr(net, "position_parameters") else set()
    sparse = [p for p in net.parameters() if id(p) in sparse_ids]
    position = [p for p in net.parameters() if id(p) in position_ids]
    dense = [p for p in net.parameters() if id(p) not in sparse_ids and id(p) not in position_ids]
    groups: list[dict[str, Any]] = [{"params": dense}]
    if position:
        groups.append({"params": position, "lr": learning_rate * position_learning_rate_scale, "weight_decay": 0.0})
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=learning_rate))
    return optimizers


def fit_network(
    net: nn.Module,
    scorer: nn.Module,
    train: Encoded,
    validation: Encoded,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    min_delta: float,
    seed: int,
    pos_weight: float = 1.0,
    soft_targets: torch.Tensor | None = None,
    embedding_l2: float = 0.0,
    position_learning_rate_scale: float = 1.0,
    log_prefix: str = "",
) -> tuple[list[dict[str, float]], int]:
    """Mini-batch AdamW on the (weighted) log loss, early stopping on validation log loss.

    ``soft_targets`` (distillation) replaces the labels as training targets; ``embedding_l2`` penalises
    the squared norm of the id-embedding rows a batch uses. Returns the history
    and the best epoch; ``net`` ends with the best epoch's weights.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense_train = scorer.prepare_numeric(train.numeric)
    targets = soft_targets if soft_targets is not None else train.label
    weights = torch.where(train.label > 0.5, torch.tensor(pos_weight), torch.tensor(1.0)) if pos_weight != 1 else None
    optimizers = make_optimizers(net, learning_rate, weight_decay, position_learning_rate_scale)
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(net.state_dict())
    history: list[dict[str, float]] = []
    stale = 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        net.train()
        order = torch.randperm(len(train), generator=generator)
        total, rows = 0.0, 0
        for start in range(0, len(train), batch_size):
            batch = order[start : start + batch_size]
            logit = net(train.user[batch], train.item[batch], dense_train[batch], train.categories[batch])
            logit = logit + net.position_logit(train.position[batch])
            loss = nn.functional.binary_cross_entropy_with_logits(
                logit, targets[batch], weight=None if weights is None else weights[batch]
            )
            if embedding_l2 > 0:  # L2 on the id rows this batch used (sparse-friendly, unlike weight decay)
                used = torch.cat([net.user_embedding(train.user[batch]), net.item_embedding(train.item[batch])], 1)
                loss = loss + embedding_l2 * used.pow(2).sum(1).mean()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total += float(loss.detach()) * len(batch)
            rows += len(batch)
        net.eval()
        labels = validation.label.numpy()
        probabilities = score(scorer, validation, logged_position=True)
        validation_loss = metrics.log_loss(labels, probabilities)
        seconds = time.perf_counter() - started
        history.append(
            {
                "epoch": float(epoch),
                f"{log_prefix}train_loss": total / max(rows, 1),
                f"{log_prefix}validation_log_loss": validation_loss,
                f"{log_prefix}validation_auc": metrics.auc(labels, probabilities),
                f"{log_prefix}epoch_seconds": seconds,
                f"{log_prefix}examples_per_second": rows / seconds if seconds > 0 else float("nan"),
            }
        )
        if validation_loss < best_loss - min_delta:
            best_loss, best_epoch, best_state = validation_loss, epoch, copy.deepcopy(net.state_dict())
            stale = 0
        else:
            stale += 1
            if stale > patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return history, best_epoch


def train_model(
    frame: pd.DataFrame,
    config: ModelConfig | None = None,
    *,
    numeric_features: Sequence[str] | None = None,
    categorical_features: Sequence[str] | None = None,
    seed: int | None = None,
) -> tuple[TrainedModel, pd.DataFrame, pd.DataFrame]:
    """Train on all but the most recent day(s); returns (model, train rows, holdout rows).

    :param frame: one row per impression (``loopline.features.training_set``'s contract).
    :param config: the model config (default: ``models/ctr_ranker.yaml``).
    :param numeric_features: dense inputs (default: the config's list); NaN means missing.
    :param categorical_features: categorical inputs (default: the config's list).
    :param seed: overrides ``training.seed``.
    """
    config = config or load_config()
    numeric = list(numeric_features if numeric_features is not None else config.features.numeric)
    categorical = list(categorical_features if categorical_features is not None else config.features.categorical)
    t = config.training
    seed = t.seed if seed is None else seed
    train, holdout = time_split(frame, config.columns.date, t.validation_days)
    for part, name in ((train, "training"), (holdout, "holdout")):
        labels = labels_of(part, config.columns.label)
        if labels.min() == labels.max():
            raise ValueError(f"the {name} rows hold a single label class ({labels[0]:.0f}); cannot train or validate")
    started = time.perf_counter()
    with torch_threads(t.threads):
        spec = fit_spec(train, config, numeric, categorical)
        spec.network = {
            "embedding_dim": config.network.embedding_dim,
            "hidden": list(config.network.hidden),
            "dropout": config.network.dropout,
        }
        spec.logit_offset = -math.log(t.pos_weight)
        train_data = encode(train, spec, label_column=config.columns.label, allow_missing_columns=False)
        holdout_data = encode(holdout, spec, label_column=config.columns.label)
        torch.manual_seed(seed)
        net = build_network(spec)
        click_rate = float(train_data.label.mean().clamp(1e-4, 1 - 1e-4))
        with torch.no_grad():  # imbalance: start at the (weighted) base rate, not at 50 %
            net.mlp[-1].bias.fill_(math.log(click_rate / (1 - click_rate)) + math.log(t.pos_weight))
        scorer = build_scorer(net, spec)
        history, best_epoch = fit_network(
            net,
            scorer,
            train_data,
            holdout_data,
            epochs=t.epochs,
            batch_size=t.batch_size,
            learning_rate=t.learning_rate,
            weight_decay=t.weight_decay,
            patience=t.patience,
            min_delta=t.min_delta,
            seed=seed,
            pos_weight=t.pos_weight,
            embedding_l2=t.embedding_l2,
            position_learning_rate_scale=t.position_learning_rate_scale,
        )
        seconds = time.perf_counter() - started
        holdout_metrics = evaluate_scorer(scorer, spec, holdout, config, holdout_data)
    epochs_run = len(history)
    model = TrainedModel(
        config=config,
        spec=spec,
        net=net,
        history=history,
        best_epoch=best_epoch,
        metrics=holdout_metrics,
        train_rows=len(train),
        holdout_rows=len(holdout),
        train_days=_days(train, config.columns.date),
        holdout_days=_days(holdout, config.columns.date),
        seconds=seconds,
        examples_per_second=float(np.mean([h["examples_per_second"] for h in history])) if epochs_run else 0.0,
    )
    return model, train, holdout


# --------------------------------------------------------------------------------------------------
# Baselines and the oracle
# --------------------------------------------------------------------------------------------------


def popularity_baseline(train: pd.DataFrame, holdout: pd.DataFrame, config: ModelConfig) -> dict[str, float]:
    """Item popularity: each item's smoothed training CTR (unseen items: the overall CTR)."""
    c = config.columns
    labels = labels_of(train, c.label)
    prior = float(labels.mean())
    counts = (
        pd.DataFrame({"item": train[c.item].to_numpy(), "label": labels}).groupby("item")["label"].agg(["sum", "count"])
    )
    weight = 20.0
    ctr = (counts["sum"] + prior * weight) / (counts["count"] + weight)
    probabilities = holdout[c.item].map(ctr).fillna(prior).to_numpy(dtype=np.float64)
    return metrics.evaluate(
        labels_of(holdout, c.label),
        probabilities,
        holdout[c.request].to_numpy(),
        bins=config.evaluation.calibration_bins,
        k=config.evaluation.ndcg_k,
    )


def _logistic_design(scorer: Any, data: Encoded, spec: FeatureSpec, position: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        dense = scorer.prepare_numeric(data.numeric).numpy()
    blocks = [dense]
    for index, vocabulary in enumerate(spec.vocabularies):
        blocks.append(np.eye(len(vocabulary) + 1, dtype=np.float32)[data.categories[:, index].numpy()])
    blocks.append(np.eye(spec.max_position + 1, dtype=np.float32)[position.numpy()])
    return np.concatenate(blocks, axis=1)


def logistic_baseline(model: TrainedModel, train: pd.DataFrame, holdout: pd.DataFrame) -> dict[str, float]:
    """Logistic regression on the same inputs as the network (dense features, missing flags, one-hot
    categories and position), without the id embeddings; fitted on a seeded sample of training rows.
    """
    from sklearn.linear_model import LogisticRegression

    config, spec = model.config, model.spec
    if len(train) > config.training.baseline_max_rows:
        train = train.sample(config.training.baseline_max_rows, random_state=config.training.seed)
    scorer = model.scorer()
    train_data = encode(train, spec, label_column=config.columns.label)
    holdout_data = encode(holdout, spec, label_column=config.columns.label)
    regression = LogisticRegression(C=1.0, max_iter=500)
    regression.fit(_logistic_design(scorer, train_data, spec, train_data.position), train_data.label.numpy())
    probabilities = regression.predict_proba(_logistic_design(scorer, holdout_data, spec, holdout_data.position))[:, 1]
    reference = torch.full_like(holdout_data.position, spec.reference_position)
    ranking = regression.decision_function(_logistic_design(scorer, holdout_data, spec, reference))
    return metrics.evaluate(
        holdout_data.label.numpy(),
        probabilities,
        holdout[config.columns.request].to_numpy(),
        ranking_scores=ranking,
        bins=config.evaluation.calibration_bins,
        k=config.evaluation.ndcg_k,
    )


def oracle_metrics(holdout: pd.DataFrame, config: ModelConfig) -> dict[str, float] | None:
    """On simulated data: metrics of the simulator's true click probabilities (None if the column is absent)."""
    column = config.columns.oracle
    if column not in holdout.columns or holdout[column].isna().all():
        return None
    if holdout[column].isna().any():
        raise ValueError(f"oracle column {column!r} is missing for {int(holdout[column].isna().sum())} holdout rows")
    return metrics.evaluate(
        labels_of(holdout, config.columns.label),
        holdout[column].to_numpy(dtype=np.float64),
        holdout[config.columns.request].to_numpy(),
        bins=config.evaluation.calibration_bins,
        k=config.evaluation.ndcg_k,
    )


def comparison(model: TrainedModel, train: pd.DataFrame, holdout: pd.DataFrame) -> dict[str, dict[str, float] | None]:
    """The model's holdout metrics beside both baselines and (simulated data) the oracle."""
    with torch_threads(model.config.training.threads):
        return {
            "model": model.metrics,
            "popularity": popularity_baseline(train, holdout, model.config),
            "logistic": logistic_baseline(model, train, holdout),
            "oracle": oracle_metrics(holdout, model.config),
        }
