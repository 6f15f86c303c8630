"""Batch scoring: a whole table scored offline with the model the service serves.

``score_table`` is the batch path of the ranking service. It loads a registered version from the
BentoML model store (``loopline.serving.model_store.load_version``: the same ``scorer.pt`` a Bento
serves, imported from MLflow on first use), gives every row its features and writes one score per
row to a warehouse table or a file. Uses: backfills of scores, and **replay**, which scores the
impressions logged in an interval (``training_examples``) with a candidate version, beside a
baseline version, on the same rows, for an offline comparison before a canary.

Inputs (``source``):

- ``training_examples`` (the default): the labelled impressions of ``[start, end)``; features come
  point-in-time from the offline store through ``loopline.features.training_set`` (the rows a
  model of that window trained on).
- a Parquet or CSV file (a path, ``file://`` or ``s3://`` URI) of ``user_id``, ``item_id`` and
  optionally ``event_at`` (the point-in-time of the features; ``as_of`` or "now" without it),
  ``request_id``, ``impression_id``, ``position``, ``is_clicked``. If the file already holds every
  model input (``features="columns"``) those columns are scored as they are.

Outputs (``output``): a warehouse table (a plain name, or ``table:<name>``; default
``batch_scores``) where a re-run replaces its own rows (same source, version, mode and interval:
delete, then insert, in one transaction), or a ``.parquet`` / ``.csv`` file (path, ``file://`` or
``s3://``), overwritten.

``score`` is P(click) at the reference slot, exactly what ``/rank`` returns for the same features;
``logged_position_score`` is P(click) at the logged slot (comparable with the labels), when the
rows have a position.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from loopline.config import Settings
from loopline.config import settings as current_settings
from loopline.warehouse import Column, Table, Warehouse, check_identifier

if TYPE_CHECKING:
    import pandas as pd

    from loopline.registry import LoadedModel

LOG = logging.getLogger(__name__)

TRAINING_EXAMPLES = "training_examples"
DEFAULT_OUTPUT_TABLE = "batch_scores"
KEY_COLUMNS = ("user_id", "item_id")
OPTIONAL_COLUMNS = ("event_at", "request_id", "impression_id", "position", "is_clicked", "model_version", "variant")
FeatureMode = Literal["auto", "offline", "columns"]

BATCH_SCORES = Table(
    DEFAULT_OUTPUT_TABLE,
    (
        Column("scoring_run_id", "varchar", nullable=False),
        Column("scored_at", "timestamptz", nullable=False),
        Column("mode", "varchar", nullable=False),
        Column("source", "varchar", nullable=False),
        Column("interval_start", "timestamptz"),
        Column("interval_end", "timestamptz"),
        Column("model_version", "varchar", nullable=False),
        Column("request_id", "varchar"),
        Column("impression_id", "varchar"),
        Column("user_id", "varchar", nullable=False),
        Column("item_id", "varchar", nullable=False),
        Column("event_at", "timestamptz"),
        Column("position", "integer"),
        Column("is_clicked", "boolean"),
        Column("served_model_version", "varchar"),
        Column("score", "double", nullable=False),
        Column("logged_position_score", "double"),
    ),
    indexes=(("model_version", "source", "interval_start"),),
)
OUTPUT_COLUMNS = BATCH_SCORES.column_names


class ScoringError(ValueError):
    """A batch-scoring input, output or version Loopline cannot use; the message names it."""


@dataclass
class ScoringResult:
    """What one batch scoring did (JSON-able via ``to_dict``)."""

    scoring_run_id: str
    mode: str
    model_version: str
    source: str
    output: str
    rows: int
    features: str  # "offline" (point-in-time from the offline store) or "columns" (given)
    rows_missing_any_feature: float
    interval_start: str | None = None
    interval_end: str | None = None
    score_mean: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    rows_per_second: float = 0.0
    comparison: dict[str, Any] | None = None  # replay: candidate vs baseline metrics on the same rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- model and inputs ------------------------------------------------------------------------------


def resolve_version(version: str | int, *, tracking_uri: str | None = None) -> str:
    """An MLflow version number from a number (``7``, ``"v7"``) or an alias (``champion``)."""
    text = str(version).strip().removeprefix("v")
    if text.isdigit():
        return text
    from loopline.registry import alias_version

    resolved = alias_version(str(version).strip(), tracking_uri=tracking_uri)
    if resolved is None:
        raise ScoringError(f"version: {version!r} is neither a version number nor an alias of loopline-ctr")
    return resolved


def load_scoring_model(
    version: str | int, *, settings: Settings | None = None, tracking_uri: str | None = None
) -> LoadedModel:
    """Version ``version`` (number or alias) as the service loads it: from the BentoML model store."""
    from loopline.serving.model_store import load_version
    from loopline.serving.packaging import ensure_bentoml_home

    ensure_bentoml_home(settings)
    return load_version(resolve_version(version, tracking_uri=tracking_uri), tracking_uri=tracking_uri)


def _is_file_spec(spec: str) -> bool:
    scheme = urlsplit(spec).scheme
    return scheme in ("file", "s3") or spec.endswith((".parquet", ".csv", ".pq")) or "/" in spec


@contextlib.contextmanager
def _local_copy(uri: str, settings: Settings) -> Iterator[Path]:
    """A local path to read ``uri`` (a path, ``file://`` or ``s3://``); S3 objects go through a temp file."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        from loopline.logstore import make_s3_client

        with tempfile.TemporaryDirectory(prefix="loopline-score-") as scratch:
            target = Path(scratch) / Path(parts.path).name
            client = make_s3_client(settings.s3_endpoint_url, settings.aws_region)
            try:
                client.download_file(parts.netloc, parts.path.lstrip("/"), str(target))
            except Exception as error:
                raise ScoringError(f"input {uri}: cannot download it: {error}") from error
            yield target
        return
    yield Path(unquote(parts.path)) if parts.scheme == "file" else Path(uri)


def read_rows(uri: str, *, settings: Settings | None = None) -> pd.DataFrame:
    """The rows of a Parquet or CSV file (path, ``file://`` or ``s3://``) to score; checks the key columns."""
    import pandas as pd

    settings = settings or current_settings()
    with _local_copy(uri, settings) as path:
        if not path.is_file():
            raise ScoringError(f"input {uri}: no such file")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "request_id": str, "impression_id": str})
        else:
            raise ScoringError(f"input {uri}: expected a .parquet or .csv file")
    missing = [name for name in KEY_COLUMNS if name not in frame.columns]
    if missing:
        raise ScoringError(f"input {uri}: lacks columns {missing}; it has {sorted(map(str, frame.columns))}")
    for name in KEY_COLUMNS:
        if frame[name].isna().any():
            raise ScoringError(f"input {uri}: column {name} has {int(frame[name].isna().sum())} empty values")
        frame[name] = frame[name].astype(str)
    if "event_at" in frame.columns:
        frame["event_at"] = pd.to_datetime(frame["event_at"], utc=True).dt.as_unit("us")
    return frame.reset_index(drop=True)


def offline_features(
    rows: pd.DataFrame,
    *,
    as_of: datetime | None = None,
    store: Any = None,
    feature_service: str | None = None,
) -> pd.DataFrame:
    """``rows`` (``user_id``, ``item_id``[, ``event_at``, ``position``]) with the service's features
    as of each row's ``event_at`` (else ``as_of``, else now), joined point-in-time from the offline store.

    The join ``loopline.features.training_set`` uses (``point_in_time_features``: one feature view at a
    time, merged back; on-demand features by the registered transformation), for rows that are not
    training examples. Rows whose entity has no snapshot get missing features, never dropped.
    """
    import pandas as pd

    from loopline import features
    from loopline.features import CTR_RANKER_V1

    store = store or features.feature_store()
    layout = features.service_layout(store, feature_service or CTR_RANKER_V1)
    frame = rows.copy()
    if "event_at" not in frame.columns or frame["event_at"].isna().all():
        moment = features._utc(as_of, "as_of") if as_of is not None else datetime.now(UTC)
        frame["event_at"] = pd.Series([moment] * len(frame), dtype="datetime64[us, UTC]")
    elif frame["event_at"].isna().any():
        raise ScoringError(f"event_at is empty in {int(frame['event_at'].isna().sum())} rows; fill it or drop it")
    frame["event_at"] = pd.to_datetime(frame["event_at"], utc=True).dt.as_unit("us")

    return features.point_in_time_features(frame, store=store, layout=layout)


def _interval(start: Any, end: Any) -> tuple[datetime, datetime]:
    values = []
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ScoringError(f"{name}: expected an ISO 8601 date or date-time, got {value!r}") from None
        if isinstance(value, datetime):
            value = value if value.tzinfo else value.replace(tzinfo=UTC)
            value = value.astimezone(UTC)
        elif isinstance(value, date):
            value = datetime(value.year, value.month, value.day, tzinfo=UTC)
        else:
            raise ScoringError(f"{name}: expected a date or datetime for source {TRAINING_EXAMPLES}, got {value!r}")
        values.append(value)
    if values[1] <= values[0]:
        raise ScoringError(f"interval: expected start < end, got {values[0].isoformat()} .. {values[1].isoformat()}")
    return values[0], values[1]


def _prepare(
    source: str,
    *,
    start: Any,
    end: Any,
    features: FeatureMode,
    spec: Any,
    as_of: datetime | None,
    settings: Settings,
    store: Any,
) -> tuple[pd.DataFrame, str, tuple[datetime, datetime] | None]:
    """(rows with features, feature mode used, interval) of a source."""
    from loopline.features import training_set

    if features not in ("auto", "offline", "columns"):
        raise ScoringError(f"features: expected 'auto', 'offline' or 'columns', got {features!r}")
    if source == TRAINING_EXAMPLES:
        if features == "columns":
            raise ScoringError(f"{TRAINING_EXAMPLES} holds no feature columns: use features='offline' (or 'auto')")
        interval = _interval(start, end)
        frame = training_set(*interval, warehouse_uri=settings.warehouse_uri, store=store)
        return frame, "offline", interval
    if start is not None or end is not None:
        raise ScoringError(f"start/end select an interval of {TRAINING_EXAMPLES}; a file input is scored whole")
    rows = read_rows(source, settings=settings)
    missing = [name for name in [*spec.numeric_features, *spec.categorical_features] if name not in rows.columns]
    if features == "columns" and missing:
        raise ScoringError(f"input {source}: features='columns' but it lacks model inputs {missing}")
    if features == "columns" or (features == "auto" and not missing):
        return rows, "columns", None
    with_features = offline_features(rows, as_of=as_of, store=store, feature_service=spec.feature_service or None)
    return with_features, "offline", None


def _score_frame(model: LoadedModel, frame: pd.DataFrame) -> tuple[Any, Any]:
    """(serving score, score at the logged position or None) per row."""
    score = model.predict(frame)
    logged = model.predict(frame, logged_position=True) if model.spec.position_column in frame.columns else None
    return score, logged


def _output_frame(
    frame: pd.DataFrame,
    score: Any,
    logged: Any,
    *,
    run_id: str,
    mode: str,
    source: str,
    version: str,
    interval: tuple[datetime, datetime] | None,
    scored_at: datetime,
) -> pd.DataFrame:
    import pandas as pd

    count = len(frame)

    def column(name: str, dtype: str) -> pd.Series:
        if name in frame.columns:
            return frame[name].reset_index(drop=True)
        return pd.Series([None] * count, dtype=dtype)

    out = pd.DataFrame(
        {
            "scoring_run_id": [run_id] * count,
            "scored_at": pd.Series([scored_at] * count, dtype="datetime64[us, UTC]"),
            "mode": [mode] * count,
            "source": [source] * count,
            "interval_start": pd.Series([interval[0] if interval else None] * count, dtype="datetime64[us, UTC]"),
            "interval_end": pd.Series([interval[1] if interval else None] * count, dtype="datetime64[us, UTC]"),
            "model_version": [version] * count,
            "request_id": column("request_id", "object"),
            "impression_id": column("impression_id", "object"),
            "user_id": frame["user_id"].astype(str).reset_index(drop=True),
            "item_id": frame["item_id"].astype(str).reset_index(drop=True),
            "event_at": column("event_at", "datetime64[us, UTC]"),
            "position": column("position", "Int64").astype("Int64"),
            "is_clicked": column("is_clicked", "boolean").astype("boolean"),
            "served_model_version": column("model_version", "object"),
            "score": pd.Series(score, dtype="float64"),
            "logged_position_score": pd.Series(logged if logged is not None else [None] * count, dtype="float64"),
        }
    )
    for name in ("request_id", "impression_id", "served_model_version"):
        out[name] = out[name].map(lambda value: None if value is None or value != value else str(value))
    return out[list(OUTPUT_COLUMNS)]


def _arrow(frame: pd.DataFrame) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("scoring_run_id", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
            ("mode", pa.string()),
            ("source", pa.string()),
            ("interval_start", pa.timestamp("us", tz="UTC")),
            ("interval_end", pa.timestamp("us", tz="UTC")),
            ("model_version", pa.string()),
            ("request_id", pa.string()),
            ("impression_id", pa.string()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_at", pa.timestamp("us", tz="UTC")),
            ("position", pa.int32()),
            ("is_clicked", pa.bool_()),
            ("served_model_version", pa.string()),
            ("score", pa.float64()),
            ("logged_position_score", pa.float64()),
        ]
    )
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def output_table_name(output: str | None) -> str | None:
    """The warehouse table an ``output`` names (None if it names a file)."""
    if output is None or output == "":
        return DEFAULT_OUTPUT_TABLE
    if output.startswith("table:"):
        return check_identifier(output.removeprefix("table:"))
    if _is_file_spec(output):
        return None
    return check_identifier(output)


def _write_table(table_name: str, data: Any, *, settings: Settings, source: str, version: str, mode: str,
                 interval: tuple[datetime, datetime] | None) -> int:  # fmt: skip
    table = Table(table_name, BATCH_SCORES.columns, indexes=BATCH_SCORES.indexes)
    where = "source = ? AND model_version = ? AND mode = ?"
    params: list[Any] = [source, version, mode]
    if interval is None:
        where += " AND interval_start IS NULL"
    else:
        where += " AND interval_start = ? AND interval_end = ?"
        params += list(interval)
    with Warehouse.from_uri(settings.warehouse_uri) as warehouse:
        warehouse.ensure_table(table)
        with warehouse.transaction():
            warehouse.execute(f"DELETE FROM {table_name} WHERE {where}", params)
            return warehouse.load_arrow(table_name, data)


def _write_file(uri: str, data: Any, settings: Settings) -> None:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    parts = urlsplit(uri)
    name = Path(parts.path).name
    if not name.endswith((".parquet", ".pq", ".csv")):
        raise ScoringError(f"output {uri}: expected a .parquet or .csv file, or a warehouse table name")

    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        if name.endswith(".csv"):
            pa_csv.write_csv(data, partial)
        else:
            pq.write_table(data, partial)
        partial.replace(path)

    if parts.scheme == "s3":
        from loopline.logstore import make_s3_client

        with tempfile.TemporaryDirectory(prefix="loopline-score-") as scratch:
            local = Path(scratch) / name
            write(local)
            client = make_s3_client(settings.s3_endpoint_url, settings.aws_region)
            client.upload_file(str(local), parts.netloc, parts.path.lstrip("/"))
        return
    write(Path(unquote(parts.path)) if parts.scheme == "file" else Path(uri))


# --- the public functions --------------------------------------------------------------------------


def score_table(
    version: str | int,
    *,
    source: str = TRAINING_EXAMPLES,
    output: str | None = None,
    start: Any = None,
    end: Any = None,
    features: FeatureMode = "auto",
    as_of: datetime | None = None,
    mode: str = "score",
    settings: Settings | None = None,
    tracking_uri: str | None = None,
    store: Any = None,
) -> ScoringResult:
    """Score every row of ``source`` with registered version ``version`` and write the scores to ``output``.

    :param version: an MLflow version number of ``loopline-ctr`` or an alias (``champion``).
    :param source: ``training_examples`` (needs ``start``/``end``) or a Parquet/CSV file (path or URI).
    :param output: a warehouse table (default ``batch_scores``) or a ``.parquet``/``.csv`` path or URI.
    :param features: ``offline`` (point-in-time from the offline store), ``columns`` (the input's
        own columns), ``auto`` (columns if the input holds every model input, else offline).
    :param as_of: point-in-time of the features for file rows without ``event_at`` (default now).
    :param mode: written with every row (``score``; ``replay`` uses ``replay``), part of what a re-run replaces.
    """
    settings = settings or current_settings()
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    number = resolve_version(version, tracking_uri=tracking_uri)
    model = load_scoring_model(number, settings=settings, tracking_uri=tracking_uri)
    seconds["load_model"] = time.perf_counter() - started
    clock = time.perf_counter()
    frame, used, interval = _prepare(
        source, start=start, end=end, features=features, spec=model.spec, as_of=as_of, settings=settings, store=store
    )
    seconds["features"] = time.perf_counter() - clock
    clock = time.perf_counter()
    score, logged = _score_frame(model, frame)
    seconds["score"] = time.perf_counter() - clock
    result = _write_scores(
        frame, score, logged, version=number, source=source, output=output, mode=mode, interval=interval,
        settings=settings,
    )  # fmt: skip
    seconds["write"] = result.pop("seconds")
    seconds["total"] = time.perf_counter() - started
    inputs = [*model.spec.numeric_features, *model.spec.categorical_features]
    present = [name for name in inputs if name in frame.columns]
    missing_any = float(frame[present].isna().any(axis=1).mean()) if len(frame) and present else 0.0
    if len(present) < len(inputs) and len(frame):
        missing_any = 1.0
    outcome = ScoringResult(
        scoring_run_id=result["scoring_run_id"],
        mode=mode,
        model_version=number,
        source=source,
        output=result["output"],
        rows=len(frame),
        features=used,
        rows_missing_any_feature=round(missing_any, 4),
        interval_start=interval[0].isoformat() if interval else None,
        interval_end=interval[1].isoformat() if interval else None,
        score_mean=round(float(score.mean()), 6) if len(frame) else None,
        seconds={name: round(value, 3) for name, value in seconds.items()},
        rows_per_second=round(len(frame) / seconds["score"], 1) if seconds["score"] > 0 else 0.0,
    )
    LOG.info("batch scoring: %s", json.dumps(outcome.to_dict()))
    return outcome


def _write_scores(
    frame: pd.DataFrame,
    score: Any,
    logged: Any,
    *,
    version: str,
    source: str,
    output: str | None,
    mode: str,
    interval: tuple[datetime, datetime] | None,
    settings: Settings,
) -> dict[str, Any]:
    clock = time.perf_counter()
    run_id = uuid.uuid4().hex
    out = _output_frame(
        frame, score, logged, run_id=run_id, mode=mode, source=source, version=version, interval=interval,
        scored_at=datetime.now(UTC),
    )  # fmt: skip
    data = _arrow(out)
    table_name = output_table_name(output)
    if table_name is not None:
        _write_table(table_name, data, settings=settings, source=source, version=version, mode=mode, interval=interval)
        where = f"table:{table_name}"
    else:
        _write_file(str(output), data, settings)
        where = str(output)
    return {"scoring_run_id": run_id, "output": where, "seconds": time.perf_counter() - clock}


def replay(
    candidate: str | int,
    start: Any,
    end: Any,
    *,
    baseline: str | int | None = "champion",
    output: str | None = None,
    settings: Settings | None = None,
    tracking_uri: str | None = None,
    store: Any = None,
) -> ScoringResult:
    """Score the impressions logged in ``[start, end)`` with ``candidate`` (and ``baseline`` on the same rows).

    The candidate's scores are written like ``score_table`` (mode ``replay``); the result's
    ``comparison`` holds both versions' AUC, log loss, calibration error and NDCG@k against the
    logged clicks, per version and overall, and their differences. ``baseline=None`` (or an alias
    that points nowhere) scores the candidate alone.
    """
    from loopline.training import load_config
    from loopline.training.metrics import evaluate

    settings = settings or current_settings()
    started = time.perf_counter()
    number = resolve_version(candidate, tracking_uri=tracking_uri)
    baseline_number: str | None = None
    if baseline is not None:
        try:
            baseline_number = resolve_version(baseline, tracking_uri=tracking_uri)
        except ScoringError:
            LOG.info("replay: baseline %r points at no version; scoring the candidate alone", baseline)
    model = load_scoring_model(number, settings=settings, tracking_uri=tracking_uri)
    frame, used, interval = _prepare(
        TRAINING_EXAMPLES, start=start, end=end, features="offline", spec=model.spec, as_of=None,
        settings=settings, store=store,
    )  # fmt: skip
    if frame.empty:
        raise ScoringError(f"replay: {TRAINING_EXAMPLES} has no impressions in {interval[0]} .. {interval[1]}")
    config = load_config()
    k = config.evaluation.ndcg_k
    labels = frame[config.columns.label].astype("float64").to_numpy()
    requests = frame[config.columns.request].astype(str).to_numpy()

    def metrics_of(loaded: LoadedModel) -> tuple[dict[str, float], Any, Any]:
        score, logged = _score_frame(loaded, frame)
        numbers = evaluate(labels, logged, requests, ranking_scores=score, bins=config.evaluation.calibration_bins, k=k)
        return {name: round(float(value), 6) for name, value in numbers.items()}, score, logged

    candidate_metrics, score, logged = metrics_of(model)
    comparison: dict[str, Any] = {
        "rows": len(frame),
        "requests": int(len(set(requests))),
        "click_rate": round(float(labels.mean()), 6),
        "candidate": {"version": number, **candidate_metrics},
    }
    if baseline_number is not None and baseline_number != number:
        baseline_metrics, _, _ = metrics_of(load_scoring_model(baseline_number, settings=settings,
                                                               tracking_uri=tracking_uri))  # fmt: skip
        comparison["baseline"] = {"version": baseline_number, **baseline_metrics}
        comparison["difference"] = {
            name: round(candidate_metrics[name] - baseline_metrics[name], 6) for name in candidate_metrics
        }
    result = _write_scores(
        frame, score, logged, version=number, source=TRAINING_EXAMPLES, output=output, mode="replay",
        interval=interval, settings=settings,
    )  # fmt: skip
    outcome = ScoringResult(
        scoring_run_id=result["scoring_run_id"],
        mode="replay",
        model_version=number,
        source=TRAINING_EXAMPLES,
        output=result["output"],
        rows=len(frame),
        features=used,
        rows_missing_any_feature=round(float(frame.attrs.get("rows_missing_any", 0.0)), 4),
        interval_start=interval[0].isoformat(),
        interval_end=interval[1].isoformat(),
        score_mean=round(float(score.mean()), 6),
        seconds={"total": round(time.perf_counter() - started, 3)},
        comparison=comparison,
    )
    LOG.info("replay: %s", json.dumps(outcome.to_dict()))
    return outcome


# --- command line ----------------------------------------------------------------------------------


def _cli_score(args: argparse.Namespace) -> int:
    try:
        if args.replay:
            if args.input != TRAINING_EXAMPLES:
                raise ScoringError("--replay scores logged impressions: leave --input at training_examples")
            result = replay(args.version, args.start, args.end, baseline=args.baseline or None, output=args.output)
        else:
            result = score_table(
                args.version,
                source=args.input,
                output=args.output,
                start=args.start,
                end=args.end,
                features=args.features,
                as_of=datetime.fromisoformat(args.as_of) if args.as_of else None,
            )
    except Exception as error:  # any named failure: message on stderr, exit 1
        from loopline.features import FeatureStoreError
        from loopline.registry import RegistryError
        from loopline.training.data import FrameError

        if isinstance(error, ScoringError | FeatureStoreError | RegistryError | FrameError):
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``loopline score-batch``."""
    parser = subparsers.add_parser(
        "score-batch",
        help="score a table offline with a registered model (backfills, replay of logged requests)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--version", required=True, help="MLflow version of loopline-ctr, or an alias (champion)")
    parser.add_argument(
        "--input",
        default=TRAINING_EXAMPLES,
        help="training_examples (with --start/--end) or a .parquet/.csv file (path, file:// or s3://)",
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT_TABLE,
        help="a warehouse table name (default batch_scores) or a .parquet/.csv path or URI",
    )
    parser.add_argument("--start", help="interval start (ISO date or date-time, UTC) for training_examples")
    parser.add_argument("--end", help="interval end (exclusive)")
    parser.add_argument("--features", choices=("auto", "offline", "columns"), default="auto")
    parser.add_argument("--as-of", help="point-in-time of the features for file rows without event_at")
    parser.add_argument("--replay", action="store_true", help="replay logged impressions; compare with --baseline")
    parser.add_argument("--baseline", default="champion", help="replay: the version or alias to compare with")
    parser.set_defaults(handler=_cli_score)


def scores_of(output: str, *, settings: Settings | None = None, scoring_run_id: str | None = None) -> pd.DataFrame:
    """The rows a scoring run wrote to ``output`` (a table or a file), for checks and notebooks."""
    import pandas as pd

    settings = settings or current_settings()
    table_name = output_table_name(output)
    if table_name is None:
        with _local_copy(output, settings) as path:
            if path.suffix == ".csv":
                return pd.read_csv(path, dtype={"user_id": str, "item_id": str})
            return pd.read_parquet(path)
    with Warehouse.from_uri(settings.warehouse_uri) as warehouse:
        where, params = ("WHERE scoring_run_id = ?", [scoring_run_id]) if scoring_run_id else ("", [])
        columns = warehouse.columns_of(table_name)
        if not columns:
            raise ScoringError(f"output table {table_name} does not exist in {warehouse.display_uri}")
        rows = warehouse.query(f"SELECT {', '.join(columns)} FROM {table_name} {where}", params)
    return pd.DataFrame.from_records(rows, columns=columns)


def summary(result: ScoringResult | Mapping[str, Any]) -> str:
    """One log line of a scoring result."""
    data = result.to_dict() if isinstance(result, ScoringResult) else dict(result)
    return (
        f"{data['mode']} of {data['source']} with loopline-ctr/{data['model_version']}: {data['rows']} rows "
        f"-> {data['output']} ({data['features']} features)"
    )
