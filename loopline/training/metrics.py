"""Offline metrics of a CTR model: AUC, log loss, calibration error, NDCG@k per request.

All are computed on the holdout (the most recent day), on the logged impressions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

PROBABILITY_EPSILON = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold a single class."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    labels = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
    if labels.size == 0:
        return float("nan")
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error over equal-mass bins: sum_b (n_b / n) * |mean(p) - mean(y)| in bin b.

    Equal-mass bins (sorted predictions cut into ``bins`` groups of equal size) rather than equal-width
    ones: with a CTR of a few percent almost every prediction would land in the first equal-width bin.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    order = np.argsort(probabilities, kind="stable")
    error = 0.0
    for chunk in np.array_split(order, min(bins, labels.size)):
        if chunk.size:
            error += chunk.size * abs(probabilities[chunk].mean() - labels[chunk].mean())
    return float(error / labels.size)


def ndcg_at_k(request_ids: Sequence[str] | np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over requests with at least one click; the gain of a row is its label.

    Rows of a request are ranked by ``scores`` (ties keep the frame's order, so the result is
    deterministic); the ideal ranking sorts the labels.
    """
    frame = pd.DataFrame(
        {
            "request": pd.factorize(np.asarray(request_ids))[0],
            "label": np.asarray(labels, dtype=np.float64),
            "score": np.asarray(scores, dtype=np.float64),
            "order": np.arange(len(labels)),
        }
    )
    frame = frame[frame.groupby("request")["label"].transform("max") > 0]
    if frame.empty:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))

    def dcg(ranked: pd.DataFrame) -> np.ndarray:
        rank = ranked.groupby("request").cumcount().to_numpy()
        kept = rank < k
        gains = ranked["label"].to_numpy()[kept] * discounts[rank[kept]]
        return np.bincount(ranked["request"].to_numpy()[kept], weights=gains, minlength=frame["request"].max() + 1)

    actual = dcg(frame.sort_values(["request", "score", "order"], ascending=[True, False, True], kind="stable"))
    ideal = dcg(frame.sort_values(["request", "label", "order"], ascending=[True, False, True], kind="stable"))
    present = ideal > 0
    return float(np.mean(actual[present] / ideal[present]))


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    request_ids: Sequence[str] | np.ndarray,
    *,
    ranking_scores: np.ndarray | None = None,
    bins: int = 15,
    k: int = 10,
) -> dict[str, float]:
    """AUC, log loss, calibration error and NDCG@k of ``probabilities``; NDCG@k of ``ranking_scores``.

    ``probabilities`` are P(click) of the logged impressions at their logged position (comparable
    with the simulator's oracle, which includes the position effect). ``ranking_scores`` are what
    serving ranks by (position-free); their NDCG is against logged, position-biased clicks, so it
    favours whatever ranked like the logging policy: read it as a diagnostic, not a target.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    result = {
        "auc": auc(labels, probabilities),
        "log_loss": log_loss(labels, probabilities),
        "calibration_error": calibration_error(labels, probabilities, bins),
        f"ndcg_at_{k}": ndcg_at_k(request_ids, labels, probabilities, k),
    }
    if ranking_scores is not None:
        result[f"ndcg_at_{k}_serving"] = ndcg_at_k(request_ids, labels, np.asarray(ranking_scores, dtype=np.float64), k)
    result.update(
        rows=float(labels.size),
        click_rate=float(labels.mean()) if labels.size else float("nan"),
        mean_prediction=float(probabilities.mean()) if labels.size else float("nan"),
    )
    return result
