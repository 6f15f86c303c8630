"""Training frames: the time split, the feature spec, and encoding frames into the model's tensors.

The training frame is one row per impression (``loopline.features.training_set`` builds it from
Feast). ``frame_from_simulation`` builds the same shape straight from a simulated log and its truth,
as a test and benchmark aid that does not need dbt or Feast: labels from the log (a click with the
same request_id and item_id within 30 minutes), simple point-in-time features in pandas (daily
snapshots; an impression on day D sees only days before D), and the simulator's true click
probability as ``oracle_click_probability``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import torch

from loopline.training.config import ModelConfig

CTR_PRIOR = 0.05  # dbt var ctr_prior: smoothed CTR = (clicks + prior * weight) / (impressions + weight)
CTR_PRIOR_WEIGHT = 20.0  # dbt var ctr_prior_weight
SESSION_GAP = pd.Timedelta(minutes=30)
ATTRIBUTION_WINDOW = pd.Timedelta(minutes=30)
WINDOWS = (1, 7, 28)
MISSING_CATEGORY = ""


class FrameError(ValueError):
    """A training or scoring frame lacks a column or has values the model cannot use."""


# --------------------------------------------------------------------------------------------------
# Hashing (identical to CtrScorer.hash_ids in models/ctr_ranker.py; a test checks they agree)
# --------------------------------------------------------------------------------------------------


def hash_ids(ids: Sequence[str] | np.ndarray | pd.Series, buckets: int) -> np.ndarray:
    """FNV-1a (32 bit) over the UTF-8 bytes of each id, modulo ``buckets``; vectorised over distinct ids."""
    # A dict, not pd.factorize: pandas' string hash table stops at NUL, so it would merge "a" and "a\x00b".
    texts = pd.Series(ids, dtype=object).astype(str).tolist()
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(text, len(index)) for text in texts), dtype=np.int64, count=len(texts))
    uniques = list(index)
    if not uniques:
        return np.zeros(len(codes), dtype=np.int64)
    encoded = [text.encode("utf-8", "surrogatepass") for text in uniques]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    width = max(1, int(lengths.max()))
    data = np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(len(encoded), width).astype(np.uint64)
    value = np.full(len(encoded), 2166136261, dtype=np.uint64)
    for column in range(width):
        mixed = ((value ^ data[:, column]) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF)
        value = np.where(column < lengths, mixed, value)
    buckets_of_unique = (value % np.uint64(buckets)).astype(np.int64)
    return buckets_of_unique[codes]


# --------------------------------------------------------------------------------------------------
# The feature spec: what the model reads and how (saved with every model as spec.json)
# --------------------------------------------------------------------------------------------------


@dataclass
class FeatureSpec:
    """Inputs of one trained model and the constants of its preprocessing, fitted on training rows."""

    numeric_features: list[str]
    categorical_features: list[str]
    numeric_center: list[float]
    numeric_scale: list[float]
    vocabularies: list[dict[str, int]]
    user_column: str
    item_column: str
    position_column: str
    user_buckets: int
    item_buckets: int
    max_position: int
    reference_position: int
    network: dict[str, Any] = field(default_factory=dict)
    logit_offset: float = 0.0
    feature_service: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(**data)

    @property
    def input_columns(self) -> list[str]:
        """Columns a scoring frame needs (position is optional)."""
        return [self.user_column, self.item_column, *self.numeric_features, *self.categorical_features]


def squash(values: np.ndarray) -> np.ndarray:
    """Signed log1p: the numeric transform inside the model (counts and hours get a usable scale)."""
    return np.sign(values) * np.log1p(np.abs(values))


def fit_spec(
    train: pd.DataFrame,
    config: ModelConfig,
    numeric_features: Sequence[str],
    categorical_features: Sequence[str],
) -> FeatureSpec:
    """Fit the preprocessing constants (means, spreads, vocabularies) on the training rows only."""
    numeric = numeric_matrix(train, numeric_features, allow_missing_columns=False).astype(np.float64)
    squashed = squash(numeric)
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(squashed), axis=0)
        center = np.where(counts > 0, np.nansum(squashed, axis=0) / np.maximum(counts, 1), 0.0)
        spread = np.sqrt(np.nansum((squashed - center) ** 2, axis=0) / np.maximum(counts, 1))
    scale = np.where(np.isfinite(spread) & (spread > 1e-6), spread, 1.0)
    vocabularies = []
    for name in categorical_features:
        values = categorical_values(train, name)
        frequency = values[values != MISSING_CATEGORY].value_counts()
        kept = sorted(v for v, n in frequency.items() if n >= config.network.min_category_count)
        vocabularies.append({value: index + 1 for index, value in enumerate(kept)})
    return FeatureSpec(
        numeric_features=list(numeric_features),
        categorical_features=list(categorical_features),
        numeric_center=[float(v) for v in center],
        numeric_scale=[float(v) for v in scale],
        vocabularies=vocabularies,
        user_column=config.columns.user,
        item_column=config.columns.item,
        position_column=config.columns.position,
        user_buckets=config.network.user_buckets,
        item_buckets=config.network.item_buckets,
        max_position=config.network.max_position,
        reference_position=config.network.reference_position,
        feature_service=config.feature_service,
    )


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise FrameError(f"{what} frame lacks columns {missing}; it has {sorted(map(str, frame.columns))}")


def numeric_matrix(frame: pd.DataFrame, names: Sequence[str], *, allow_missing_columns: bool) -> np.ndarray:
    """(rows, features) float32 in ``names`` order; NaN where missing (a missing column is all NaN if allowed)."""
    if not allow_missing_columns:
        require_columns(frame, names, "training")
    matrix = np.full((len(frame), len(names)), np.nan, dtype=np.float32)
    for index, name in enumerate(names):
        if name not in frame.columns:
            continue
        try:
            values = pd.to_numeric(frame[name], errors="raise")
        except (TypeError, ValueError) as error:
            raise FrameError(f"numeric feature {name!r} has non-numeric values: {error}") from None
        matrix[:, index] = values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix


def categorical_values(frame: pd.DataFrame, name: str) -> pd.Series:
    """A categorical column as strings, ``""`` where missing (or the whole column if it is absent)."""
    if name not in frame.columns:
        return pd.Series([MISSING_CATEGORY] * len(frame), index=frame.index, dtype=object)
    column = frame[name]
    return column.astype(object).where(column.notna(), MISSING_CATEGORY).astype(str)


@dataclass
class Encoded:
    """A frame as the model's tensors (rows aligned with the frame)."""

    user: torch.Tensor  # int64 buckets
    item: torch.Tensor  # int64 buckets
    numeric: torch.Tensor  # float32 raw values, NaN = missing
    categories: torch.Tensor  # int64 codes, 0 = unknown
    position: torch.Tensor  # int64, clipped to [0, max_position]
    label: torch.Tensor | None  # float32 0/1

    def __len__(self) -> int:
        return int(self.user.shape[0])


def labels_of(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The label column as float32 0/1; raises on missing or non-binary values."""
    require_columns(frame, [column], "labelled")
    values = frame[column]
    if values.isna().any():
        raise FrameError(f"label column {column!r} has {int(values.isna().sum())} missing values")
    labels = values.astype("float64").to_numpy()
    if not np.isin(labels, (0.0, 1.0)).all():
        raise FrameError(f"label column {column!r} must be 0/1 or boolean")
    return labels.astype(np.float32)


def encode(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    *,
    label_column: str | None = None,
    allow_missing_columns: bool = True,
) -> Encoded:
    """Hash ids, code categories, collect numeric features (NaN kept: the model fills them)."""
    require_columns(frame, [spec.user_column, spec.item_column], "scoring")
    numeric = numeric_matrix(frame, spec.numeric_features, allow_missing_columns=allow_missing_columns)
    categories = np.zeros((len(frame), len(spec.categorical_features)), dtype=np.int64)
    for index, (name, vocabulary) in enumerate(zip(spec.categorical_features, spec.vocabularies, strict=True)):
        if not allow_missing_columns:
            require_columns(frame, [name], "training")
        categories[:, index] = categorical_values(frame, name).map(vocabulary).fillna(0).astype(np.int64).to_numpy()
    if spec.position_column in frame.columns:
        position = pd.to_numeric(frame[spec.position_column]).fillna(spec.reference_position).to_numpy()
        position = np.clip(position.astype(np.int64), 0, spec.max_position)
    else:
        position = np.full(len(frame), spec.reference_position, dtype=np.int64)
    return Encoded(
        user=torch.from_numpy(hash_ids(frame[spec.user_column].to_numpy(), spec.user_buckets)),
        item=torch.from_numpy(hash_ids(frame[spec.item_column].to_numpy(), spec.item_buckets)),
        numeric=torch.from_numpy(numeric),
        categories=torch.from_numpy(categories),
        position=torch.from_numpy(position),
        label=torch.from_numpy(labels_of(frame, label_column)) if label_column else None,
    )


# --------------------------------------------------------------------------------------------------
# Time split
# --------------------------------------------------------------------------------------------------


def day_of(frame: pd.DataFrame, date_column: str) -> pd.Series:
    """The UTC day of every row from ``date_column`` (a date, a string or a timestamp)."""
    require_columns(frame, [date_column], "training")
    values = frame[date_column]
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_convert("UTC")
        return values.dt.date
    return pd.to_datetime(values.astype(str)).dt.date


def time_split(frame: pd.DataFrame, date_column: str, validation_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the holdout is the most recent ``validation_days`` days; never a random split."""
    days = day_of(frame, date_column)
    distinct = sorted(days.unique())
    if len(distinct) <= validation_days:
        raise FrameError(
            f"the frame covers {len(distinct)} day(s) ({[d.isoformat() for d in distinct]}); a time split "
            f"needs more than validation_days={validation_days}"
        )
    first_holdout = distinct[-validation_days]
    is_holdout = (days >= first_holdout).to_numpy()
    return frame.loc[~is_holdout], frame.loc[is_holdout]


# --------------------------------------------------------------------------------------------------
# Frames from the simulator (test and benchmark aid)
# --------------------------------------------------------------------------------------------------

EVENT_FIELDS = (
    "event_id",
    "event_type",
    "event_at",
    "user_id",
    "item_id",
    "request_id",
    "position",
    "model_version",
    "variant",
    "page",
    "device",
    "price",
)


def read_events(
    log_uri: str, start: date, end: date, *, s3_endpoint_url: str | None = None
) -> tuple[pd.DataFrame, int]:
    """Events of the log objects of days ``[start, end]`` plus one hour (late clicks); (events, bad lines)."""
    from loopline.logstore import LogStore

    store = LogStore.from_uri(log_uri, s3_endpoint_url=s3_endpoint_url)
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    finish = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1, hours=1)
    columns: dict[str, list[Any]] = {name: [] for name in EVENT_FIELDS}
    bad = 0
    for obj in store.list_interval(begin, finish):
        for line in store.iter_lines(obj):
            try:
                record = orjson.loads(line)
                values = [record[name] for name in EVENT_FIELDS]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                bad += 1
                continue
            for name, value in zip(EVENT_FIELDS, values, strict=True):
                columns[name].append(value)
    events = pd.DataFrame(columns)
    events["event_at"] = pd.to_datetime(events["event_at"], utc=True, errors="coerce")
    events = events.dropna(subset=["event_at"]).drop_duplicates("event_id")
    events["position"] = pd.to_numeric(events["position"], errors="coerce").fillna(0).astype(np.int64)
    events["price"] = pd.to_numeric(events["price"], errors="coerce")
    return events.reset_index(drop=True), bad


def _window_sums(daily: np.ndarray, entity: np.ndarray, day: np.ndarray, days: int) -> np.ndarray:
    """Sum of ``daily[entity, d]`` over the ``days`` days before ``day`` (point in time: day itself excluded)."""
    cumulative = np.concatenate([np.zeros((daily.shape[0], 1) + daily.shape[2:]), np.cumsum(daily, axis=1)], axis=1)
    return cumulative[entity, day] - cumulative[entity, np.maximum(day - days, 0)]


def _last_before(daily_last: np.ndarray, entity: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Latest time (epoch seconds) before ``day``; -inf if none."""
    running = np.maximum.accumulate(daily_last, axis=1)
    shifted = np.concatenate([np.full((daily_last.shape[0], 1), -np.inf), running], axis=1)
    return shifted[entity, day]


def _smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    return (clicks + CTR_PRIOR * CTR_PRIOR_WEIGHT) / (impressions + CTR_PRIOR_WEIGHT)


def features_from_events(events: pd.DataFrame, item_category: dict[str, str]) -> pd.DataFrame:
    """One row per impression with labels and point-in-time features (the FeatureService's names).

    Features of an impression on day D use only events of days before D (a daily snapshot taken at
    midnight, as the dbt marts do); a user or item with no event in the 28 days before gets NaN
    features (Feast's answer for a missing snapshot). Windows: 1, 7 and 28 days.
    """
    events = events.sort_values(["event_at", "event_id"], kind="stable").reset_index(drop=True)
    events["event_date"] = events["event_at"].dt.tz_convert("UTC").dt.date
    impressions = events[events["event_type"] == "impression"].copy()
    if impressions.empty:
        raise FrameError("the events contain no impressions")
    impressions = impressions.rename(columns={"event_id": "impression_id"})

    # Labels: a click (purchase) of the same request and item within the attribution window.
    for event_type, label in (("click", "is_clicked"), ("purchase", "is_purchased")):
        follow = events.loc[events["event_type"] == event_type, ["request_id", "item_id", "event_at"]]
        follow = follow.sort_values("event_at").drop_duplicates(["request_id", "item_id"])
        joined = impressions[["request_id", "item_id", "event_at"]].merge(
            follow, on=["request_id", "item_id"], how="left", suffixes=("", "_follow")
        )
        delay = joined["event_at_follow"] - joined["event_at"]
        impressions[label] = ((delay >= pd.Timedelta(0)) & (delay <= ATTRIBUTION_WINDOW)).to_numpy()

    days = sorted(events["event_date"].unique())
    day_index = {d: i for i, d in enumerate(days)}
    n_days = len(days)
    events["day"] = events["event_date"].map(day_index).astype(np.int64)
    impressions["day"] = impressions["event_date"].map(day_index).astype(np.int64)
    categories = sorted(set(item_category.values()) | {"unknown"})
    category_index = {c: i for i, c in enumerate(categories)}
    events["category"] = events["item_id"].map(item_category).fillna("unknown")
    impressions["item_category"] = impressions["item_id"].map(item_category).fillna("unknown")
    seconds = events["event_at"].astype("int64").to_numpy() / 1e9
    midnight = np.array([datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() for d in days] + [np.nan])

    # Sessions: a new one after 30 minutes without an event, and at UTC midnight.
    by_user = events.sort_values(["user_id", "event_at"], kind="stable")
    gap = by_user.groupby("user_id")["event_at"].diff()
    new_day = by_user["day"].ne(by_user.groupby("user_id")["day"].shift())
    events.loc[by_user.index, "session_start"] = (gap.isna() | (gap > SESSION_GAP) | new_day).to_numpy()

    out = impressions
    imp_day = impressions["day"].to_numpy()
    snapshot_at = midnight[imp_day]
    is_click = (events["event_type"] == "click").to_numpy()
    is_purchase = (events["event_type"] == "purchase").to_numpy()
    engaged = events["event_type"].isin(["click", "add_to_cart", "purchase"]).to_numpy()

    for prefix, key in (("user_", "user_id"), ("item_", "item_id")):
        codes, uniques = pd.factorize(pd.concat([events[key], impressions[key]], ignore_index=True))
        event_entity, imp_entity = codes[: len(events)], codes[len(events) :]
        shape = (len(uniques), n_days)

        def daily(mask: np.ndarray, weights: np.ndarray | None = None, ev=event_entity, sh=shape) -> np.ndarray:
            table = np.zeros(sh)
            np.add.at(table, (ev[mask], events["day"].to_numpy()[mask]), 1.0 if weights is None else weights[mask])
            return table

        imp_mask = (events["event_type"] == "impression").to_numpy()
        clicked_impressions = np.zeros(shape)
        np.add.at(clicked_impressions, (imp_entity, imp_day), impressions["is_clicked"].to_numpy().astype(float))
        impressions_daily = daily(imp_mask)
        any_event = daily(np.ones(len(events), dtype=bool))
        active_28 = _window_sums(any_event, imp_entity, imp_day, 28) > 0
        features: dict[str, np.ndarray] = {}
        for window in WINDOWS:
            shown = _window_sums(impressions_daily, imp_entity, imp_day, window)
            clicked = _window_sums(clicked_impressions, imp_entity, imp_day, window)
            features[f"ctr_{window}d"] = _smoothed_ctr(clicked, shown)
            features[f"impressions_{window}d"] = shown
            features[f"clicks_{window}d"] = _window_sums(daily(is_click), imp_entity, imp_day, window)
            features[f"purchases_{window}d"] = _window_sums(daily(is_purchase), imp_entity, imp_day, window)
        last_event = np.full(shape, -np.inf)
        np.maximum.at(last_event, (event_entity, events["day"].to_numpy()), seconds)
        last_click = np.full(shape, -np.inf)
        np.maximum.at(last_click, (event_entity[is_click], events["day"].to_numpy()[is_click]), seconds[is_click])
        for name, table in (("hours_since_last_event", last_event), ("hours_since_last_click", last_click)):
            last = _last_before(table, imp_entity, imp_day)
            features[name] = np.where(np.isfinite(last), np.round((snapshot_at - last) / 3600.0, 4), np.nan)
        if prefix == "user_":
            session_starts = events["session_start"].to_numpy(dtype=bool)
            features["sessions_7d"] = _window_sums(daily(session_starts), imp_entity, imp_day, 7)
            per_category = np.zeros((*shape, len(categories)))
            category_codes = events["category"].map(category_index).to_numpy()
            np.add.at(
                per_category, (event_entity[engaged], events["day"].to_numpy()[engaged], category_codes[engaged]), 1.0
            )
            window = _window_sums(per_category, imp_entity, imp_day, 28)
            total = window.sum(axis=1)
            top = np.argmax(window, axis=1)
            features["top_category_share_28d"] = np.where(total > 0, window.max(axis=1) / np.maximum(total, 1), 0.0)
            top_name = np.where(total > 0, np.array(categories, dtype=object)[top], None)
            match = (top_name == impressions["item_category"].to_numpy(dtype=object)).astype(float)
            features["_top_match"] = match
        else:
            prices = events["price"].to_numpy(dtype=float)
            has_price = np.isfinite(prices)
            price_sum = _window_sums(daily(has_price, np.nan_to_num(prices)), imp_entity, imp_day, 28)
            price_count = _window_sums(daily(has_price), imp_entity, imp_day, 28)
            features["avg_price_28d"] = np.where(price_count > 0, price_sum / np.maximum(price_count, 1), np.nan)
            # Category level: over all items of the category in the 28 days before.
            category_of_event = events["category"].map(category_index).to_numpy()
            category_of_imp = impressions["item_category"].map(category_index).to_numpy()
            cat_shape = (len(categories), n_days)
            cat_shown = np.zeros(cat_shape)
            np.add.at(cat_shown, (category_of_imp, imp_day), 1.0)
            cat_clicked = np.zeros(cat_shape)
            np.add.at(cat_clicked, (category_of_imp, imp_day), impressions["is_clicked"].to_numpy().astype(float))
            cat_price = np.zeros(cat_shape)
            cat_price_n = np.zeros(cat_shape)
            np.add.at(cat_price, (category_of_event[has_price], events["day"].to_numpy()[has_price]), prices[has_price])
            np.add.at(cat_price_n, (category_of_event[has_price], events["day"].to_numpy()[has_price]), 1.0)
            shown_28 = _window_sums(cat_shown, category_of_imp, imp_day, 28)
            features["category_ctr_28d"] = _smoothed_ctr(
                _window_sums(cat_clicked, category_of_imp, imp_day, 28), shown_28
            )
            cat_avg = _window_sums(cat_price, category_of_imp, imp_day, 28) / np.maximum(
                _window_sums(cat_price_n, category_of_imp, imp_day, 28), 1
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                features["price_to_category_avg_28d"] = np.where(
                    cat_avg > 0, features["avg_price_28d"] / cat_avg, np.nan
                )
        for name, values in features.items():
            values = np.where(active_28, values, np.nan)  # no snapshot without activity in 28 days
            if name == "_top_match":
                share = np.where(active_28, features["top_category_share_28d"], np.nan)
                out["user_item_category_match"] = values
                out["user_item_category_affinity"] = np.where(
                    values == 1.0, share, np.where(np.isnan(values), np.nan, 0.0)
                )
                continue
            out[prefix + name] = values
    out["hour_of_day"] = out["event_at"].dt.hour.astype(float)
    out = out.drop(columns=["day", "event_type"]).reset_index(drop=True)
    return out


def frame_from_simulation(
    log_uri: str,
    truth_dir: str | Path,
    *,
    start: date | None = None,
    end: date | None = None,
    s3_endpoint_url: str | None = None,
) -> pd.DataFrame:
    """A training frame (one row per impression, contract columns + features + oracle) from a simulation.

    A test and benchmark aid: the production path is ``loopline.features.training_set`` (dbt + Feast).
    ``start``/``end`` (inclusive) default to the days of the truth's oracle files.
    """
    truth = Path(truth_dir)
    oracle_files = sorted((truth / "oracle").glob("dt=*.parquet"))
    if not oracle_files:
        raise FrameError(f"no oracle files under {truth / 'oracle'}: is {truth} a simulation truth dir?")
    oracle_days = [date.fromisoformat(path.stem.removeprefix("dt=")) for path in oracle_files]
    start = start or oracle_days[0]
    end = end or oracle_days[-1]
    world = orjson.loads((truth / "world.json").read_bytes())["world"]
    item_category = {item["item_id"]: item["category"] for item in world["items"]}
    events, _bad = read_events(log_uri, start, end, s3_endpoint_url=s3_endpoint_url)
    frame = features_from_events(events, item_category)
    frame = frame[(frame["event_date"] >= start) & (frame["event_date"] <= end)]
    oracle = pd.concat(
        [
            pd.read_parquet(path, columns=["event_id", "click_probability"])
            for path, day in zip(oracle_files, oracle_days, strict=True)
            if start <= day <= end
        ],
        ignore_index=True,
    ).rename(columns={"event_id": "impression_id", "click_probability": "oracle_click_probability"})
    frame = frame.merge(oracle, on="impression_id", how="left")
    frame["position"] = frame["position"].astype(np.int64)
    return frame.sort_values(["event_at", "request_id", "position"], kind="stable").reset_index(drop=True)
