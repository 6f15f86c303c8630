"""Data-quality measurements of a training window, and PSI / KL drift per feature.

``check_quality`` measures one training window (one row per impression) and judges every
measurement under the gate policy: volume against the trailing median, the label rate against its
baseline, label noise (bot-like users, conflicting duplicate labels, clicks without an impression),
PII in any string column, and per-feature PSI / KL against the reference window (the champion's
training window). ``loopline.gates.decide_quality`` turns the report into a gate decision.

Binning (``bin_counts`` / ``bin_distributions``), shared by PSI and KL:

* numerical: ``bins`` quantile bins of the reference (interior edges at the reference's
  ``1/bins, ..., (bins-1)/bins`` quantiles of its finite values, duplicates merged) with ``-inf`` and
  ``+inf`` as outer edges, so every current value lands in a bin; bin ``i`` is ``[edge_i, edge_i+1)``.
* categorical: the reference's categories (sorted by their text) plus ``__unseen__`` for current
  values the reference never had.
* missing values (NaN/None) get their own ``__missing__`` bin when either side has any.
* empty bins: each count gets ``smoothing`` added (additive, Lidstone smoothing; 0.5 by default)
  before counts become shares, so a bin empty on one side gives a large but finite term. With
  ``smoothing=0`` an empty bin gives ``inf``, as ``scipy.stats.entropy`` does.

PSI = sum((q - p) * ln(q / p)) and KL = KL(current || reference) = sum(q * ln(q / p)) over the
shares ``p`` (reference) and ``q`` (current), in nats; PSI is the symmetrised KL.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.gates import Check, GatePolicy, load_policy, store_report_file
from loopline.pii import contains_pii, redact_text

UNSEEN = "__unseen__"
MISSING = "__missing__"
DEFAULT_BINS = 10
DEFAULT_SMOOTHING = 0.5

# Columns of the training set that are keys, labels, timestamps or serving metadata, not features.
# ``model_version`` and ``variant`` change with every rollout: as features they would always "drift".
ROLE_COLUMNS = (
    "event_id",
    "impression_id",
    "request_id",
    "user_id",
    "item_id",
    "event_at",
    "event_date",
    "event_timestamp",
    "model_version",
    "variant",
    "is_clicked",
    "is_purchased",
    "clicked_at",
    "purchased_at",
    "query",
)

# A canonical UUID carries no personal data, but its hex digits can look like a phone number to a
# text scanner (about 1 in 900 random UUIDs does to loopline.pii), so whole-UUID values are not scanned.


# --------------------------------------------------------------------------------------------------
# Binning, PSI and KL
# --------------------------------------------------------------------------------------------------


def _series(values: Any, side: str) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, pd.Index | np.ndarray | list | tuple):
        return pd.Series(values)
    raise TypeError(f"{side}: expected a pandas Series, numpy array or sequence, got {type(values).__name__}")


def _numeric(series: pd.Series, side: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float64).to_numpy()
    try:
        return pd.to_numeric(series, errors="raise").astype(np.float64).to_numpy()
    except (ValueError, TypeError):
        raise ValueError(
            f"{side} values are not numeric (dtype {series.dtype}); pass categorical=True for categories"
        ) from None


def _numeric_bins(reference: np.ndarray, current: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ref_missing = np.isnan(reference)
    cur_missing = np.isnan(current)
    ref_values = reference[~ref_missing]
    cur_values = current[~cur_missing]
    finite = ref_values[np.isfinite(ref_values)]
    # A reference with no values at all (a feature that did not exist yet, e.g. on the first day)
    # gets a single value bin: the comparison is then between missing and present shares.
    edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins)) if finite.size else np.empty(0)
    ref_counts = np.bincount(np.searchsorted(edges, ref_values, side="right"), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur_values, side="right"), minlength=edges.size + 1)
    bounds = [-math.inf, *edges.tolist(), math.inf]
    labels = [f"[{bounds[i]:.6g}, {bounds[i + 1]:.6g})" for i in range(edges.size + 1)]
    if ref_missing.any() or cur_missing.any():
        ref_counts = np.append(ref_counts, ref_missing.sum())
        cur_counts = np.append(cur_counts, cur_missing.sum())
        labels.append(MISSING)
    return ref_counts.astype(np.int64), cur_counts.astype(np.int64), labels


def _categorical_bins(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ref_missing = reference.isna()
    cur_missing = current.isna()
    ref_counts_by_value = reference[~ref_missing].value_counts(sort=False)
    # No reference values (a feature new in this window): every current value counts as unseen.
    categories = sorted(ref_counts_by_value.index, key=str)
    cur_values = current[~cur_missing]
    cur_counts_by_value = cur_values.value_counts(sort=False)
    ref_counts = ref_counts_by_value.reindex(categories).to_numpy(dtype=np.int64)
    cur_seen = cur_counts_by_value.reindex(categories, fill_value=0).to_numpy(dtype=np.int64)
    unseen = len(cur_values) - int(cur_seen.sum())
    ref_counts = np.append(ref_counts, 0)
    cur_counts = np.append(cur_seen, unseen)
    labels = [str(category) for category in categories] + [UNSEEN]
    if ref_missing.any() or cur_missing.any():
        ref_counts = np.append(ref_counts, int(ref_missing.sum()))
        cur_counts = np.append(cur_counts, int(cur_missing.sum()))
        labels.append(MISSING)
    return ref_counts, cur_counts, labels


def bin_counts(
    reference: Any, current: Any, *, bins: int = DEFAULT_BINS, categorical: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Counts of reference and current values per bin, and the bins' labels (see the module doc)."""
    if not categorical and (not isinstance(bins, int | np.integer) or bins < 2):
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    ref = _series(reference, "reference")
    cur = _series(current, "current")
    if ref.empty:
        raise ValueError("reference is empty: cannot bin against it")
    if cur.empty:
        raise ValueError("current is empty: nothing to compare with the reference")
    if categorical:
        return _categorical_bins(ref, cur)
    return _numeric_bins(_numeric(ref, "reference"), _numeric(cur, "current"), int(bins))


def smooth_shares(counts: np.ndarray, smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Shares ``(count + smoothing) / (total + smoothing * bins)``: additive smoothing of empty bins."""
    counts = np.asarray(counts, dtype=np.float64)
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    total = counts.sum() + smoothing * counts.size
    if total <= 0:
        raise ValueError("cannot turn counts into shares: every bin is empty and smoothing is 0")
    return (counts + smoothing) / total


def bin_distributions(
    reference: Any,
    current: Any,
    *,
    bins: int = DEFAULT_BINS,
    categorical: bool = False,
    smoothing: float = DEFAULT_SMOOTHING,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Smoothed shares ``(p_reference, q_current, labels)`` over the bins of ``bin_counts``."""
    ref_counts, cur_counts, labels = bin_counts(reference, current, bins=bins, categorical=categorical)
    return smooth_shares(ref_counts, smoothing), smooth_shares(cur_counts, smoothing), labels


def _check_shares(reference_share: Any, current_share: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(reference_share, dtype=np.float64)
    q = np.asarray(current_share, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"shares must be 1-D arrays of one length, got shapes {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("shares must be non-negative")
    return p, q


def kl_from_shares(reference_share: Any, current_share: Any) -> float:
    """KL(current || reference) = sum(q * ln(q / p)) in nats; ``inf`` if q > 0 where p = 0."""
    p, q = _check_shares(reference_share, current_share)
    if ((p == 0) & (q > 0)).any():
        return math.inf
    mask = q > 0
    return float(np.sum(q[mask] * np.log(q[mask] / p[mask])))


def psi_from_shares(reference_share: Any, current_share: Any) -> float:
    """PSI = sum((q - p) * ln(q / p)) in nats; ``inf`` if a bin is empty on exactly one side."""
    p, q = _check_shares(reference_share, current_share)
    if ((p == 0) != (q == 0)).any():
        return math.inf
    mask = (p > 0) & (q > 0)
    return float(np.sum((q[mask] - p[mask]) * np.log(q[mask] / p[mask])))


def population_stability_index(
    reference: Any,
    current: Any,
    *,
    bins: int = DEFAULT_BINS,
    categorical: bool = False,
    smoothing: float = DEFAULT_SMOOTHING,
) -> float:
    """PSI of ``current`` against ``reference`` over reference-quantile bins or reference categories."""
    p, q, _ = bin_distributions(reference, current, bins=bins, categorical=categorical, smoothing=smoothing)
    return psi_from_shares(p, q)


def kl_divergence(
    reference: Any,
    current: Any,
    *,
    bins: int = DEFAULT_BINS,
    categorical: bool = False,
    smoothing: float = DEFAULT_SMOOTHING,
) -> float:
    """KL(current || reference) in nats over the same bins as ``population_stability_index``."""
    p, q, _ = bin_distributions(reference, current, bins=bins, categorical=categorical, smoothing=smoothing)
    return kl_from_shares(p, q)


@dataclass(frozen=True)
class FeatureDrift:
    """PSI and KL of one feature, with what the binning saw."""

    column: str
    kind: str  # "numerical" | "categorical"
    psi: float
    kl: float
    bins: int
    unseen_share: float  # share of current rows in categories the reference never had
    reference_missing_share: float
    current_missing_share: float


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numerical_columns: Sequence[str] = (),
    categorical_columns: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    smoothing: float = DEFAULT_SMOOTHING,
) -> list[FeatureDrift]:
    """PSI and KL for each named column of ``current`` against ``reference``."""
    results = []
    for kind, columns in (("numerical", numerical_columns), ("categorical", categorical_columns)):
        for column in columns:
            for side, frame in (("reference", reference), ("current", current)):
                if column not in frame.columns:
                    raise ValueError(f"feature column {column!r} is missing from the {side} frame")
            categorical = kind == "categorical"
            ref_counts, cur_counts, labels = bin_counts(
                reference[column], current[column], bins=bins, categorical=categorical
            )
            p, q = smooth_shares(ref_counts, smoothing), smooth_shares(cur_counts, smoothing)
            cur_total = max(int(cur_counts.sum()), 1)
            ref_total = max(int(ref_counts.sum()), 1)
            unseen = int(cur_counts[labels.index(UNSEEN)]) if UNSEEN in labels else 0
            ref_missing = int(ref_counts[labels.index(MISSING)]) if MISSING in labels else 0
            cur_missing = int(cur_counts[labels.index(MISSING)]) if MISSING in labels else 0
            results.append(
                FeatureDrift(
                    column=column,
                    kind=kind,
                    psi=psi_from_shares(p, q),
                    kl=kl_from_shares(p, q),
                    bins=len(labels),
                    unseen_share=unseen / cur_total,
                    reference_missing_share=ref_missing / ref_total,
                    current_missing_share=cur_missing / cur_total,
                )
            )
    return results


# --------------------------------------------------------------------------------------------------
# Column roles
# --------------------------------------------------------------------------------------------------


def _is_string_like(series: pd.Series) -> bool:
    return (
        pd.api.types.is_object_dtype(series)
        or pd.api.types.is_string_dtype(series)
        or isinstance(series.dtype, pd.CategoricalDtype)
    )


def infer_feature_columns(
    frame: pd.DataFrame,
    *,
    exclude: Sequence[str] = ROLE_COLUMNS,
    max_categories: int = 50,
) -> tuple[list[str], list[str]]:
    """``(numerical, categorical)`` feature columns by dtype: numbers are numerical; booleans and
    strings with at most ``max_categories`` distinct values are categorical; ids, free text,
    timestamps and the ``exclude`` columns are not features."""
    numerical: list[str] = []
    categorical: list[str] = []
    excluded = set(exclude)
    for column in frame.columns:
        if column in excluded:
            continue
        series = frame[column]
        if pd.api.types.is_bool_dtype(series):
            categorical.append(column)
        elif pd.api.types.is_numeric_dtype(series):
            numerical.append(column)
        elif _is_string_like(series) and series.nunique(dropna=True) <= max_categories:
            categorical.append(column)
    return numerical, categorical


def resolve_feature_columns(
    frame: pd.DataFrame,
    numerical: Sequence[str] | None,
    categorical: Sequence[str] | None,
    exclude: Sequence[str],
    max_categories: int,
) -> tuple[list[str], list[str]]:
    """The given feature columns, or the inferred ones where None; checks they exist and do not overlap."""
    if numerical is None or categorical is None:
        inferred_num, inferred_cat = infer_feature_columns(frame, exclude=exclude, max_categories=max_categories)
        numerical = inferred_num if numerical is None else numerical
        categorical = inferred_cat if categorical is None else categorical
    for column in [*numerical, *categorical]:
        if column not in frame.columns:
            raise ValueError(f"feature column {column!r} is not in the frame (columns: {list(frame.columns)})")
    overlap = set(numerical) & set(categorical)
    if overlap:
        raise ValueError(f"columns {sorted(overlap)} are listed as both numerical and categorical")
    return list(numerical), list(categorical)


# --------------------------------------------------------------------------------------------------
# PII scan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiiColumnStats:
    """Rows of one string column whose value contains PII, by PII type (never the values)."""

    column: str
    rows: int
    distinct_values_scanned: int
    types: dict[str, int] = field(default_factory=dict)


def _utf8_buffers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All strings' UTF-8 bytes in one array and the offsets of each string (missing = empty)."""
    import pyarrow as pa

    try:
        array = pa.array(values, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        array = pa.array([None if value is None else str(value) for value in values], type=pa.large_string())
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return data, offsets


def _count_bytes(data: np.ndarray, offsets: np.ndarray, byte_mask: np.ndarray) -> np.ndarray:
    """Per string, how many of its bytes are set in ``byte_mask`` (a mask over ``data``)."""
    if offsets.size <= 1:
        return np.zeros(0, dtype=np.int64)
    counts = np.add.reduceat(np.append(byte_mask, False), offsets[:-1], dtype=np.int64)
    counts[offsets[1:] == offsets[:-1]] = 0  # reduceat returns an element, not 0, for empty segments
    return counts


_HEX = np.zeros(256, dtype=bool)
_HEX[np.frombuffer(b"0123456789abcdefABCDEF", dtype=np.uint8)] = True
_UUID_HYPHENS = np.array([8, 13, 18, 23])
_UUID_HEX = np.setdiff1d(np.arange(36), _UUID_HYPHENS)


def _pii_candidates(values: np.ndarray) -> np.ndarray:
    """Indices of ``values`` (strings) that ``contains_pii`` could flag; the rest cannot hold PII.

    Mirrors the gating of loopline.pii: an e-mail needs "@", an IPv6 address two ":", an IPv4
    address 4 digits and a ".", a phone number 7 digits, a card 13 digits. Whole canonical UUIDs
    are skipped. Works on the raw UTF-8 bytes with numpy, so a million ids take well under a second.
    """
    data, offsets = _utf8_buffers(values)
    digits = _count_bytes(data, offsets, (data >= ord("0")) & (data <= ord("9")))
    possible = (
        (_count_bytes(data, offsets, data == ord("@")) > 0)
        | (_count_bytes(data, offsets, data == ord(":")) >= 2)
        | (digits >= 7)
        | ((digits >= 4) & (_count_bytes(data, offsets, data == ord(".")) > 0))
    )
    lengths = np.diff(offsets)
    maybe_uuid = np.flatnonzero(possible & (lengths == 36))
    if maybe_uuid.size:
        chars = data[offsets[maybe_uuid][:, None] + np.arange(36)]
        is_uuid = (chars[:, _UUID_HYPHENS] == ord("-")).all(axis=1) & _HEX[chars[:, _UUID_HEX]].all(axis=1)
        possible[maybe_uuid[is_uuid]] = False
    return np.flatnonzero(possible)


def scan_pii(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> tuple[list[PiiColumnStats], int]:
    """Scan every string column (or ``columns``) for PII; return per-column stats and the number of
    rows with PII in any column. Each distinct value is checked once."""
    if columns is None:
        columns = [column for column in frame.columns if _is_string_like(frame[column])]
    any_pii = np.zeros(len(frame), dtype=bool)
    stats = []
    for column in columns:
        if column not in frame.columns:
            raise ValueError(f"PII scan column {column!r} is not in the frame")
        codes, uniques = pd.factorize(frame[column], use_na_sentinel=True)
        uniques = np.asarray(uniques, dtype=object)
        flagged = np.zeros(len(uniques) + 1, dtype=bool)  # the extra slot is code -1 (missing)
        types: Counter[str] = Counter()
        candidates = _pii_candidates(uniques) if len(uniques) else np.empty(0, dtype=np.int64)
        occurrences = None
        for index in candidates:
            text = str(uniques[index])
            if contains_pii(text):
                flagged[index] = True
                if occurrences is None:
                    occurrences = np.bincount(codes[codes >= 0], minlength=len(uniques))
                for pii_type, count in redact_text(text)[1].items():
                    types[pii_type] += count * int(occurrences[index])
        rows_mask = flagged[codes]
        any_pii |= rows_mask
        stats.append(PiiColumnStats(column, int(rows_mask.sum()), len(uniques), dict(sorted(types.items()))))
    return stats, int(any_pii.sum())


# --------------------------------------------------------------------------------------------------
# Label noise
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseStats:
    """Label-noise measurements; ``noisy_share`` is the estimate the gate judges."""

    clicks: int
    orphan_clicks: int  # clicks without an impression, counted upstream (they are not in the frame)
    population_rate: float  # click-through of users not flagged as bot-like
    bot_users: int
    bot_rows: int
    bot_clicks: int
    bot_excess_clicks: float  # bot-like users' clicks beyond population_rate x their impressions
    duplicate_groups: int  # (pair columns) keys with more than one row
    duplicate_rows: int
    conflicting_groups: int  # duplicate keys whose rows disagree on the label
    conflicting_rows: int
    conflicting_clicks: int  # clicks in conflicting groups, not already counted as bot clicks
    noisy_clicks: float
    noisy_share: float
    bot_check: bool  # False when no user column was given
    duplicate_check: bool  # False when no pair columns were given


def _bot_users(
    user_codes: np.ndarray, labels: np.ndarray, policy_min_impressions: int, ratio: float, max_p: float
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Flag bot-like users in two passes; the second judges against the rate of unflagged users."""
    from scipy.stats import binom

    impressions = np.bincount(user_codes, minlength=user_codes.max() + 1 if user_codes.size else 0)
    clicks = np.bincount(user_codes, weights=labels, minlength=impressions.size)
    total_impressions = impressions.sum()
    rate = clicks.sum() / total_impressions if total_impressions else 0.0
    flagged = np.zeros(impressions.size, dtype=bool)
    for _ in range(2):
        if not 0.0 < rate < 1.0:
            break
        eligible = (impressions >= policy_min_impressions) & (clicks >= ratio * rate * impressions)
        p_values = np.ones(impressions.size)
        p_values[eligible] = binom.sf(clicks[eligible] - 1, impressions[eligible], rate)
        flagged = eligible & (p_values < max_p)
        normal_impressions = impressions[~flagged].sum()
        if normal_impressions == 0:
            break
        rate = clicks[~flagged].sum() / normal_impressions
    return flagged, float(rate), impressions, clicks


def measure_noise(
    frame: pd.DataFrame,
    labels: np.ndarray,
    *,
    user_column: str | None,
    pair_columns: Sequence[str] | None,
    orphan_clicks: int,
    policy: GatePolicy,
) -> NoiseStats:
    """Bot-like users, conflicting duplicate labels and orphan clicks, and the noisy click share."""
    if orphan_clicks < 0:
        raise ValueError(f"orphan_clicks must be >= 0, got {orphan_clicks}")
    quality = policy.quality
    total_clicks = int(labels.sum())
    rows = len(frame)
    bot_rows_mask = np.zeros(rows, dtype=bool)
    population_rate = total_clicks / rows if rows else 0.0
    bot_users = bot_clicks = 0
    bot_excess = 0.0
    if user_column is not None:
        user_codes, _ = pd.factorize(frame[user_column], use_na_sentinel=False)
        flagged, population_rate, impressions, clicks = _bot_users(
            user_codes.astype(np.int64),
            labels.astype(np.float64),
            quality.bot_min_impressions,
            quality.bot_min_ctr_ratio,
            quality.bot_max_p_value,
        )
        bot_users = int(flagged.sum())
        bot_clicks = int(clicks[flagged].sum())
        bot_excess = float(np.clip(clicks[flagged] - population_rate * impressions[flagged], 0, None).sum())
        bot_rows_mask = flagged[user_codes] if rows else bot_rows_mask
    duplicate_groups = duplicate_rows = conflicting_groups = conflicting_rows = conflicting_clicks = 0
    if pair_columns:
        keys = frame.groupby(list(pair_columns), sort=False, dropna=False).ngroup().to_numpy()
        sizes = np.bincount(keys)
        positives = np.bincount(keys, weights=labels.astype(np.float64), minlength=sizes.size)
        duplicated = sizes > 1
        conflicting = duplicated & (positives > 0) & (positives < sizes)
        duplicate_groups = int(duplicated.sum())
        duplicate_rows = int(sizes[duplicated].sum())
        conflicting_groups = int(conflicting.sum())
        conflicting_rows = int(sizes[conflicting].sum())
        conflicting_clicks = int((conflicting[keys] & labels.astype(bool) & ~bot_rows_mask).sum())
    noisy = bot_excess + conflicting_clicks + orphan_clicks
    denominator = total_clicks + orphan_clicks
    return NoiseStats(
        clicks=total_clicks,
        orphan_clicks=int(orphan_clicks),
        population_rate=float(population_rate),
        bot_users=bot_users,
        bot_rows=int(bot_rows_mask.sum()),
        bot_clicks=bot_clicks,
        bot_excess_clicks=bot_excess,
        duplicate_groups=duplicate_groups,
        duplicate_rows=duplicate_rows,
        conflicting_groups=conflicting_groups,
        conflicting_rows=conflicting_rows,
        conflicting_clicks=conflicting_clicks,
        noisy_clicks=float(noisy),
        noisy_share=float(noisy / denominator) if denominator else 0.0,
        bot_check=user_column is not None,
        duplicate_check=bool(pair_columns),
    )


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeStats:
    rows: int
    trailing_median: float | None
    history: int  # how many trailing volumes were given
    ratio: float | None  # rows / trailing median


@dataclass(frozen=True)
class LabelRateStats:
    rate: float | None
    baseline: float | None
    baseline_source: str  # "trailing", "reference" or "none"
    ratio: float | None  # rate / baseline
    z: float | None  # (rate - baseline) / sqrt(baseline * (1 - baseline) / rows)


def _label_array(frame: pd.DataFrame, label_column: str) -> np.ndarray:
    if label_column not in frame.columns:
        raise ValueError(f"label column {label_column!r} is not in the frame (columns: {list(frame.columns)})")
    series = frame[label_column]
    if series.isna().any():
        raise ValueError(f"label column {label_column!r} has {int(series.isna().sum())} missing values")
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=bool)
    values = pd.to_numeric(series, errors="coerce")
    if values.isna().any() or not values.isin([0, 1]).all():
        raise ValueError(f"label column {label_column!r} must hold booleans or 0/1, got dtype {series.dtype}")
    return values.to_numpy() == 1


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


@dataclass
class QualityReport:
    """Every quality measurement of one training window, and the checks judged under ``policy``.

    ``report_uri`` is set by ``save_quality_report``.
    """

    rows: int
    label_column: str
    volume: VolumeStats
    label_rate: LabelRateStats
    noise: NoiseStats
    pii_columns: tuple[PiiColumnStats, ...]
    pii_rows: int
    feature_drift: tuple[FeatureDrift, ...]
    numerical_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    policy: GatePolicy
    checks: tuple[Check, ...] = ()
    report_uri: str | None = None

    def judge(self, policy: GatePolicy | None = None) -> list[Check]:
        """The checks of this report under ``policy`` (default: the one it was measured with)."""
        quality = (policy or self.policy).quality
        checks = [
            Check(
                "rows",
                "block" if self.rows == 0 else "ok",
                self.rows,
                "block if = 0",
                "the training window is empty" if self.rows == 0 else "",
            )
        ]
        volume = self.volume
        if volume.history < quality.volume_min_history or volume.ratio is None:
            checks.append(
                Check(
                    "volume_ratio",
                    "skipped",
                    None,
                    f"block if < {quality.volume_min_ratio:g}",
                    f"needs {quality.volume_min_history} trailing volumes, got {volume.history}",
                )
            )
        else:
            status = "ok"
            if volume.ratio < quality.volume_min_ratio:
                status = "block"
            elif volume.ratio > quality.volume_max_ratio:
                status = "warn"
            checks.append(
                Check(
                    "volume_ratio",
                    status,
                    volume.ratio,
                    f"block if < {quality.volume_min_ratio:g}, warn if > {quality.volume_max_ratio:g}",
                    f"{volume.rows} rows vs trailing median {_fmt(volume.trailing_median, 6)}",
                )
            )
        checks.append(self._label_rate_check(quality))
        noise = self.noise
        parts = []
        if noise.bot_check:
            parts.append(f"{noise.bot_users} bot-like users, {noise.bot_excess_clicks:.0f} excess clicks")
        if noise.duplicate_check:
            parts.append(f"{noise.conflicting_clicks} clicks in {noise.conflicting_groups} conflicting duplicates")
        parts.append(f"{noise.orphan_clicks} clicks without impression, of {noise.clicks + noise.orphan_clicks}")
        checks.append(
            Check(
                "noisy_click_share",
                "block" if noise.noisy_share > quality.max_noisy_share else "ok",
                noise.noisy_share,
                f"block if > {quality.max_noisy_share:g}",
                "; ".join(parts),
            )
        )
        flagged = [stats for stats in self.pii_columns if stats.rows]
        checks.append(
            Check(
                "pii_rows",
                "block" if self.pii_rows > quality.max_pii_rows else "ok",
                self.pii_rows,
                f"block if > {quality.max_pii_rows}",
                ", ".join(
                    f"{s.column}: {s.rows} rows ({', '.join(f'{t} {n}' for t, n in s.types.items())})" for s in flagged
                )
                or f"{len(self.pii_columns)} string columns scanned",
            )
        )
        if not self.feature_drift:
            checks.append(
                Check("feature_psi", "skipped", None, f"retrain if > {quality.psi_retrain:g}", "no reference")
            )
        important = set(quality.important_features)
        for drift in self.feature_drift:
            is_important = not important or drift.column in important
            status = "ok"
            if drift.psi > quality.psi_retrain and is_important:
                status = "retrain"
            elif drift.psi > quality.psi_warn:
                status = "warn"
            detail = f"{drift.kind}, KL {_fmt(drift.kl)}"
            if drift.unseen_share:
                detail += f", unseen {drift.unseen_share:.2%}"
            if not is_important:
                detail += ", not an important feature"
            rule = f"retrain if > {quality.psi_retrain:g}, warn if > {quality.psi_warn:g}"
            checks.append(Check(f"psi:{drift.column}", status, drift.psi, rule, detail))
        return checks

    def _label_rate_check(self, quality: Any) -> Check:
        stats = self.label_rate
        rule = (
            f"block if ratio outside [{quality.label_rate_min_ratio:g}, {quality.label_rate_max_ratio:g}]"
            f" and |z| >= {quality.label_rate_min_z:g}"
        )
        if stats.rate is None:
            return Check("label_rate_ratio", "skipped", None, rule, "no rows")
        if stats.rate in (0.0, 1.0):
            return Check("label_rate_ratio", "block", stats.ratio, rule, f"only one label class (rate {stats.rate:g})")
        if stats.ratio is None or stats.z is None:
            return Check("label_rate_ratio", "skipped", None, rule, f"rate {stats.rate:.4g}, no baseline")
        outside = not quality.label_rate_min_ratio <= stats.ratio <= quality.label_rate_max_ratio
        status = "block" if outside and abs(stats.z) >= quality.label_rate_min_z else "ok"
        detail = f"rate {stats.rate:.4g} vs {stats.baseline_source} baseline {_fmt(stats.baseline)}, z {stats.z:.3g}"
        return Check("label_rate_ratio", status, stats.ratio, rule, detail)

    def summary(self) -> dict[str, Any]:
        """The headline numbers (for the decision's metrics and XCom)."""
        worst = max(self.feature_drift, key=lambda drift: drift.psi, default=None)
        return {
            "rows": self.rows,
            "volume_ratio": self.volume.ratio,
            "label_rate": self.label_rate.rate,
            "label_rate_baseline": self.label_rate.baseline,
            "noisy_click_share": self.noise.noisy_share,
            "bot_users": self.noise.bot_users,
            "conflicting_groups": self.noise.conflicting_groups,
            "pii_rows": self.pii_rows,
            "max_psi": worst.psi if worst else None,
            "max_psi_feature": worst.column if worst else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything measured, JSON-able (infinite PSI/KL become the string "inf")."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {key: clean(inner) for key, inner in value.items()}
            if isinstance(value, list | tuple):
                return [clean(inner) for inner in value]
            return value

        return clean(
            {
                "rows": self.rows,
                "label_column": self.label_column,
                "volume": asdict(self.volume),
                "label_rate": asdict(self.label_rate),
                "noise": asdict(self.noise),
                "pii_rows": self.pii_rows,
                "pii_columns": [asdict(stats) for stats in self.pii_columns],
                "feature_drift": [asdict(drift) for drift in self.feature_drift],
                "numerical_columns": list(self.numerical_columns),
                "categorical_columns": list(self.categorical_columns),
                "checks": [check.to_dict() for check in self.checks],
                "thresholds": self.policy.flat("quality"),
                "report_uri": self.report_uri,
            }
        )


def _median(values: Sequence[float], name: str) -> float | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {list(values)}")
    return float(np.median(array))


def check_quality(
    current: pd.DataFrame,
    *,
    policy: GatePolicy | None = None,
    reference: pd.DataFrame | None = None,
    trailing_volumes: Sequence[int] = (),
    trailing_label_rates: Sequence[float] = (),
    label_column: str = "is_clicked",
    user_column: str | None = "user_id",
    pair_columns: Sequence[str] | None = ("request_id", "item_id"),
    orphan_clicks: int = 0,
    numerical_columns: Sequence[str] | None = None,
    categorical_columns: Sequence[str] | None = None,
    exclude_columns: Sequence[str] = ROLE_COLUMNS,
    pii_columns: Sequence[str] | None = None,
) -> QualityReport:
    """Measure a training window (one row per impression) and judge it under ``policy``.

    :param current: the training window.
    :param policy: gate policy (default: the packaged gates.yaml).
    :param reference: the champion's training window; without it, feature drift is skipped and the
        label-rate baseline comes from ``trailing_label_rates`` only.
    :param trailing_volumes: row counts of the previous windows (volume check).
    :param trailing_label_rates: label rates of the previous windows (preferred label-rate baseline).
    :param label_column: the 0/1 (or boolean) label.
    :param user_column: who saw the impression (bot check); None skips it.
    :param pair_columns: the key of one impression's label (conflicting duplicates); None skips it.
    :param orphan_clicks: clicks without a matching impression in the window, counted upstream.
    :param numerical_columns: numerical features; inferred by dtype when None.
    :param categorical_columns: categorical features; inferred by dtype when None.
    :param exclude_columns: columns never inferred as features (ids, labels, timestamps, versions).
    :param pii_columns: columns to scan for PII (default: every string column).
    """
    if not isinstance(current, pd.DataFrame):
        raise TypeError(f"current must be a pandas DataFrame, got {type(current).__name__}")
    if reference is not None and not isinstance(reference, pd.DataFrame):
        raise TypeError(f"reference must be a pandas DataFrame or None, got {type(reference).__name__}")
    policy = policy or load_policy()
    quality = policy.quality
    for role, column in (("user column", user_column), *(("pair column", c) for c in pair_columns or ())):
        if column is not None and column not in current.columns:
            raise ValueError(f"{role} {column!r} is not in the frame; pass None to skip its checks")
    labels = _label_array(current, label_column)
    rows = len(current)

    median_volume = _median(trailing_volumes, "trailing_volumes")
    volume = VolumeStats(
        rows=rows,
        trailing_median=median_volume,
        history=len(trailing_volumes),
        ratio=rows / median_volume if median_volume else None,
    )

    rate = float(labels.mean()) if rows else None
    baseline, source = _median(trailing_label_rates, "trailing_label_rates"), "trailing"
    if baseline is None and reference is not None and len(reference):
        baseline, source = float(_label_array(reference, label_column).mean()), "reference"
    if baseline is None:
        source = "none"
    ratio = z = None
    if rate is not None and baseline is not None:
        if baseline > 1:
            raise ValueError(f"label rate baseline must be within [0, 1], got {baseline}")
        ratio = rate / baseline if baseline > 0 else (math.inf if rate > 0 else 1.0)
        spread = math.sqrt(baseline * (1 - baseline) / rows)
        z = (rate - baseline) / spread if spread > 0 else (0.0 if rate == baseline else math.inf)
    label_rate = LabelRateStats(rate, baseline, source, ratio, z)

    noise = measure_noise(
        current,
        labels,
        user_column=user_column,
        pair_columns=pair_columns,
        orphan_clicks=orphan_clicks,
        policy=policy,
    )
    pii_stats, pii_rows = scan_pii(current, pii_columns)

    numerical, categorical = resolve_feature_columns(
        current, numerical_columns, categorical_columns, exclude_columns, quality.max_categories
    )
    drift: list[FeatureDrift] = []
    if reference is not None and rows:
        drift = feature_drift(
            reference,
            current,
            numerical_columns=numerical,
            categorical_columns=categorical,
            bins=quality.psi_bins,
            smoothing=quality.psi_smoothing,
        )
    report = QualityReport(
        rows=rows,
        label_column=label_column,
        volume=volume,
        label_rate=label_rate,
        noise=noise,
        pii_columns=tuple(pii_stats),
        pii_rows=pii_rows,
        feature_drift=tuple(drift),
        numerical_columns=tuple(numerical),
        categorical_columns=tuple(categorical),
        policy=policy,
    )
    report.checks = tuple(report.judge())
    return report


def save_quality_report(
    report: QualityReport,
    out_uri: str,
    *,
    name: str = "quality_report.json",
    s3_endpoint_url: str | None = None,
) -> str:
    """Write the report as JSON into ``out_uri`` (``file:///dir`` or ``s3://bucket/prefix``); set and
    return ``report.report_uri``."""
    with tempfile.TemporaryDirectory(prefix="loopline-quality-") as scratch:
        local = Path(scratch) / name
        local.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
        report.report_uri = store_report_file(local, out_uri, name=name, s3_endpoint_url=s3_endpoint_url)
    return report.report_uri
