"""The ranking core: validated requests in, ranked items and schema v1 events out.

Framework-free: the BentoML service (``models/service.py``), the plain FastAPI app of the benchmark
and the tests all call ``Ranker.rank`` / ``Ranker.feedback`` directly. One ``/rank`` call:

1. the request is validated (``RankRequest``: unknown fields, wrong JSON types and values outside
   the limits below are refused before anything runs);
2. candidates are the request's ``item_ids``, else the catalog (``loopline.serving.catalog``);
3. the model snapshot is read once; the user's variant is its stable bucket (``routing``);
4. one ``loopline.features.online`` call fetches the user's and every candidate's features;
5. a user or item without online features is scored with those features missing (the model's
   learned "missing" path: missing flags and mean-filled values) and counted: in the
   ``loopline_serving_fallbacks_total`` metric and in the response's ``fallback`` field;
6. one model call scores all candidates; the top ``k`` are returned with a new ``request_id`` (a
   UUID4), ``model_version`` (``loopline-ctr/<N>``) and ``variant``;
   With ``explore_share`` > 0, that share of requests (decided by the request id, see ``explores``)
   gets the same top ``k`` in a uniformly random order ("RandTop-k" exploration, ``explored`` in the
   response): the logs then hold items at slots their score did not choose, which lets training
   tell the slot's effect from the item's (docs/training.md, "Counterfactual quality");
7. one ``impression`` event per returned item (position 1..k, as shown) is buffered for the log store, and
   the request is remembered in a bounded index so ``/feedback`` can log clicks, add-to-carts and
   purchases with the same user, position, model version and variant.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from loopline.events import MAX_ID_LENGTH, MAX_QUERY_LENGTH, SCHEMA_VERSION, Event, parse_timestamp, uuid4_texts
from loopline.registry import MODEL_NAME
from loopline.serving.eventlog import timestamp_text
from loopline.serving.models import ModelCache, score_candidates

# Documented limits (docs/serving.md); a request outside them gets HTTP 400.
MAX_CANDIDATES = 500
MIN_K, MAX_K, DEFAULT_K = 1, 100, 10
PAGES = ("home", "search", "category", "product")
DEFAULT_PAGE = "home"
DEFAULT_DEVICE = "unknown"
FEEDBACK_TYPES = ("click", "add_to_cart", "purchase")
PRICE_FEATURE = "item_avg_price_28d"  # the price an impression logs (0 when the item has none)
DEFAULT_INDEX_REQUESTS = 50_000
PRUNE_EVERY_MAX = 500  # SqliteRequestIndex: most additions between two prunes

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


class _Strict(BaseModel):
    # strict: JSON types must match exactly ("10" is not an integer); forbid: unknown fields fail.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _utc_timestamp(value: str | None) -> str | None:
    """Check an RFC 3339 UTC timestamp (``2024-05-01T12:00:00.000Z``); returned unchanged."""
    if value is not None and parse_timestamp(value) is None:
        raise ValueError(f"expected an RFC 3339 time in UTC such as 2024-05-01T12:34:56.789Z, got {value[:64]!r}")
    return value


EventTime = Annotated[str | None, AfterValidator(_utc_timestamp)]


class RankContext(_Strict):
    """Where and when the list is shown: logged with every impression (all optional)."""

    page: Literal["home", "search", "category", "product"] = Field(default=DEFAULT_PAGE, description="Where.")
    device: Literal["desktop", "mobile", "tablet", "unknown"] = Field(default=DEFAULT_DEVICE, description="Device.")
    query: Annotated[str, StringConstraints(max_length=MAX_QUERY_LENGTH)] | None = Field(
        default=None, description="Search text, if any (PII is redacted at ingestion)."
    )
    event_at: EventTime = Field(
        default=None,
        description="When the list is shown (RFC 3339 UTC); default: now. For simulations and replays: "
        "the events then go to the log partition of this hour instead of the hour they are written in.",
    )


DEFAULT_CONTEXT = RankContext()


class RankRequest(_Strict):
    """Body of ``POST /rank``."""

    user_id: Identifier = Field(description="The user to rank for (1..128 characters).")
    item_ids: list[Identifier] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CANDIDATES,
        description=f"Candidates (1..{MAX_CANDIDATES} distinct ids); omitted or null: the catalog.",
    )
    k: int = Field(default=DEFAULT_K, ge=MIN_K, le=MAX_K, description="How many items to return.")
    context: RankContext | None = Field(default=None, description="Page, device, query, time (logged).")

    @field_validator("item_ids")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            repeated = sorted(item for item, count in Counter(value).items() if count > 1)
            raise ValueError(f"item_ids must be distinct; repeated: {repeated[:5]}")
        return value


class FeedbackRequest(_Strict):
    """Body of ``POST /feedback``: what the user did with an item of a ranked list."""

    request_id: Identifier = Field(description="The request_id /rank returned.")
    item_id: Identifier = Field(description="An item of that ranked list.")
    event_type: Literal["click", "add_to_cart", "purchase"] = Field(description="What the user did.")
    event_at: EventTime = Field(default=None, description="When (RFC 3339 UTC); default: now. See RankContext.")


class RankedItem(BaseModel):
    item_id: str
    score: float = Field(description="P(click) if shown at the top slot.")


class Fallback(BaseModel):
    """What was scored without online features (explicit fallback: features missing, counted)."""

    user_missing: bool = False
    items_missing: list[str] = Field(default_factory=list)
    catalog_candidates: bool = Field(default=False, description="The request had no item_ids: catalog used.")


class RankResponse(BaseModel):
    items: list[RankedItem]
    request_id: str
    model_version: str = Field(description="loopline-ctr/<MLflow version>")
    variant: Literal["champion", "canary"]
    fallback: Fallback
    explored: bool = Field(
        default=False, description="True: the top k are shown in a random order (exploration), not by score."
    )


class FeedbackResponse(BaseModel):
    event_id: str
    request_id: str
    item_id: str
    event_type: str
    position: int
    model_version: str
    variant: str


class RankingError(Exception):
    """A request the ranker refuses; ``status`` is the HTTP status the service answers with."""

    status = 400
    kind = "bad_request"


class UnknownRequestError(RankingError):
    """Feedback for a request_id (or an item of it) this process did not serve recently."""

    status = 404
    kind = "unknown_request"


class NotReadyError(RankingError):
    """No model or no candidates yet: the service is starting or its stores are unavailable."""

    status = 503
    kind = "not_ready"


class ScoringError(RankingError):
    """The variant's model raised while scoring: HTTP 500, counted against that variant (health guards)."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, *, variant: str):
        super().__init__(message)
        self.variant = variant


def served_model_version(version: str) -> str:
    """``loopline-ctr/<N>``: how events and responses name a registered version (docs/events.md)."""
    return f"{MODEL_NAME}/{version}"


@dataclass(frozen=True)
class ServedRequest:
    """What ``/feedback`` needs to know about a served list."""

    user_id: str
    model_version: str
    variant: str
    page: str
    device: str
    query: str | None
    positions: dict[str, tuple[int, float]]  # item_id -> (position, price)


class RequestIndex:
    """The most recent ``capacity`` served requests by request_id (oldest forgotten first); thread-safe."""

    def __init__(self, capacity: int = DEFAULT_INDEX_REQUESTS):
        if capacity < 1:
            raise ValueError(f"capacity: expected at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, ServedRequest] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str, served: ServedRequest) -> None:
        with self._lock:
            self._entries[request_id] = served
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, request_id: str) -> ServedRequest | None:
        with self._lock:
            return self._entries.get(request_id)

    def __len__(self) -> int:
        return len(self._entries)


class SqliteRequestIndex:
    """The same index in an SQLite file, shared by the worker processes of one host.

    With several ``bentoml serve`` workers, feedback may reach another worker than the one that
    served the list; all of them read and write this file (WAL mode, one connection per thread). It
    keeps the last ``capacity`` requests, pruned every ``capacity // 10`` additions or every
    ``PRUNE_EVERY_MAX`` if that is fewer (one prune of 5,000 rows stalled its request ~20 ms; of 500,
    ~3 ms). It is a cache, not a record: durability is off, and the file can be deleted when the
    service is stopped.
    """

    def __init__(self, path: str | Path, capacity: int = DEFAULT_INDEX_REQUESTS):
        if capacity < 1:
            raise ValueError(f"capacity: expected at least 1, got {capacity}")
        self.path = Path(path)
        self.capacity = capacity
        self._prune_every = max(1, min(capacity // 10, PRUNE_EVERY_MAX))
        self._added = 0
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection().execute(
            "CREATE TABLE IF NOT EXISTS served_requests (request_id TEXT PRIMARY KEY, served BLOB NOT NULL)"
        )

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            self._local.connection = connection
        return connection

    def add(self, request_id: str, served: ServedRequest) -> None:
        document = orjson.dumps(served)  # orjson writes dataclasses (and tuples as arrays) itself
        connection = self._connection()
        connection.execute("INSERT OR REPLACE INTO served_requests VALUES (?, ?)", (request_id, document))
        self._added += 1
        if self._added % self._prune_every == 0:
            connection.execute(
                "DELETE FROM served_requests WHERE rowid <= (SELECT max(rowid) FROM served_requests) - ?",
                (self.capacity,),
            )

    def get(self, request_id: str) -> ServedRequest | None:
        row = (
            self._connection()
            .execute("SELECT served FROM served_requests WHERE request_id = ?", (request_id,))
            .fetchone()
        )
        if row is None:
            return None
        data = orjson.loads(row[0])
        data["positions"] = {item: (int(place[0]), float(place[1])) for item, place in data["positions"].items()}
        return ServedRequest(**data)

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM served_requests").fetchone()[0])


def request_index(uri: str = "", capacity: int = DEFAULT_INDEX_REQUESTS) -> RequestIndex | SqliteRequestIndex:
    """The index at ``uri``: empty or ``memory`` -> in this process; ``file:///path.db`` -> SQLite."""
    if uri in ("", "memory"):
        return RequestIndex(capacity)
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.path:
        return SqliteRequestIndex(Path(unquote(parts.path)), capacity)
    raise ValueError(f"request index {uri!r}: expected 'memory' or a file:///path/requests.db URI")


OnlineLookup = Callable[[str, Sequence[str]], Any]  # (user_id, item_ids) -> loopline.features.OnlineFeatures


class Ranker:
    """Ranks candidates for a user with the variant's model and logs what it served.

    :param models: the model cache (champion + canary snapshot).
    :param lookup: ``(user_id, item_ids) -> OnlineFeatures`` (one Feast online call).
    :param catalog: candidates when a request has none (``Catalog.items()``); None: item_ids required.
    :param events: where impressions and feedback go (``EventLogger``); None: not logged.
    :param metrics: ``ServingMetrics`` for the fallback counters; None: not counted.
    :param explore_share: share of requests shown their top k in a random order (``explores``).
    """

    def __init__(
        self,
        *,
        models: ModelCache,
        lookup: OnlineLookup,
        catalog: Any | None = None,
        events: Any | None = None,
        metrics: Any | None = None,
        index: RequestIndex | SqliteRequestIndex | None = None,
        clock: Callable[[], datetime] | None = None,
        explore_share: float = 0.0,
    ):
        if not 0.0 <= explore_share <= 1.0:
            raise ValueError(f"explore_share: expected a share in [0, 1], got {explore_share}")
        self.explore_share = explore_share
        self.models = models
        self.lookup = lookup
        self.catalog = catalog
        self.events = events
        self.metrics = metrics
        self.index = index if index is not None else RequestIndex()  # an empty index is falsy
        self._clock = clock or (lambda: datetime.now(UTC))

    def candidates(self, request: RankRequest) -> tuple[list[str], bool]:
        """(candidate ids, whether they came from the catalog)."""
        if request.item_ids is not None:
            return list(request.item_ids), False
        if self.catalog is None:
            raise RankingError("item_ids: required (this service has no catalog to take candidates from)")
        try:
            items = list(self.catalog.items())
        except Exception as error:
            raise NotReadyError(f"the catalog cannot be read: {error}") from error
        if not items:
            raise NotReadyError("the catalog is empty: no items have online features yet")
        return items[:MAX_CANDIDATES], True

    def rank(self, request: RankRequest) -> RankResponse:
        """Rank one request (see the module docstring for the steps)."""
        snapshot = self.models.snapshot
        if snapshot is None:
            raise NotReadyError("no model is loaded yet; retry when /readyz answers 200")
        items, from_catalog = self.candidates(request)
        variant, model = snapshot.route(request.user_id)
        features = self.lookup(request.user_id, items)
        try:
            scores = score_candidates(model, request.user_id, items, features.columns)
        except Exception as error:  # a broken model version: answer 500 and say which variant failed
            raise ScoringError(
                f"model {served_model_version(str(model.version))} failed to score: {error}", variant=variant
            ) from error
        top = np.argsort(-scores, kind="stable")[: request.k]
        request_id, *event_ids = uuid4_texts(1 + len(top))
        explored = explores(request_id, self.explore_share)
        if explored:
            top = top[shown_order(request_id, len(top))]
        version = served_model_version(str(model.version))
        user_missing = bool(features.missing_users)
        fallback = Fallback(
            user_missing=user_missing, items_missing=list(features.missing_items), catalog_candidates=from_catalog
        )
        if self.metrics is not None:
            if user_missing:
                self.metrics.fallbacks.labels(kind="missing_user").inc()
            if features.missing_items:
                self.metrics.fallbacks.labels(kind="missing_item").inc(len(features.missing_items))
            if from_catalog:
                self.metrics.fallbacks.labels(kind="catalog_candidates").inc()
            if explored:
                self.metrics.explored.labels(variant=variant).inc()
        prices = features.columns.get(PRICE_FEATURE)
        context = request.context or DEFAULT_CONTEXT
        given_at = parse_timestamp(context.event_at) if context.event_at else None
        served_at = given_at or self._clock()
        ranked: list[RankedItem] = []
        positions: dict[str, tuple[int, float]] = {}
        for position, index in enumerate(top.tolist(), start=1):
            item_id = items[index]
            ranked.append(RankedItem(item_id=item_id, score=float(scores[index])))
            positions[item_id] = (position, _price(prices[index] if prices is not None else None))
        served = ServedRequest(
            user_id=request.user_id,
            model_version=version,
            variant=variant,
            page=context.page,
            device=context.device,
            query=context.query,
            positions=positions,
        )
        self.index.add(request_id, served)
        if self.events is not None:
            self.events.log_lines(impression_lines(request_id, served, served_at, event_ids), partition_at=given_at)
        return RankResponse(
            items=ranked,
            request_id=request_id,
            model_version=version,
            variant=variant,
            fallback=fallback,
            explored=explored,
        )

    def feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Log a click / add_to_cart / purchase on an item of a recently served list."""
        served = self.index.get(request.request_id)
        if served is None:
            raise UnknownRequestError(
                f"request_id {request.request_id!r} is unknown: this service did not serve it, or it is older "
                f"than the {self.index.capacity:,} most recent requests it remembers"
            )
        if request.item_id not in served.positions:
            raise UnknownRequestError(
                f"item_id {request.item_id!r} was not in the list served for request_id {request.request_id!r}"
            )
        given_at = parse_timestamp(request.event_at) if request.event_at else None
        event = _event(request.event_type, given_at or self._clock(), request.request_id, served, request.item_id)
        if self.events is not None:
            self.events.log([event], partition_at=given_at)
        return FeedbackResponse(
            event_id=event.event_id,
            request_id=request.request_id,
            item_id=request.item_id,
            event_type=request.event_type,
            position=event.position,
            model_version=served.model_version,
            variant=served.variant,
        )


def explores(request_id: str, share: float) -> bool:
    """Whether the request with ``request_id`` (a UUID) is an exploration request at ``share``.

    A function of the id alone (its first 32 bits as a fraction of 2**32), so the decision can be
    recomputed from the logs; both variants explore the same share, so the A/B analysis stays fair.
    """
    if share <= 0.0:
        return False
    return int(request_id.replace("-", "")[:8], 16) / 2**32 < share


def shown_order(request_id: str, count: int) -> np.ndarray:
    """A uniformly random permutation of ``range(count)``, seeded by ``request_id`` (reproducible)."""
    return np.random.default_rng(uuid.UUID(request_id).int).permutation(count)


def _price(value: Any) -> float:
    """An impression's logged price: the item's average price feature, 0 when missing or invalid."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        return 0.0
    return price if 0.0 <= price < 1e9 else 0.0


def impression_lines(request_id: str, served: ServedRequest, moment: datetime, event_ids: Sequence[str]) -> list[bytes]:
    """The schema v1 JSON lines of a served list's impressions, in ``served.positions`` order.

    Byte for byte ``Event(...).to_json_line()`` of each impression (a test holds them equal), with
    ``event_ids`` as their ids; one record is reused with the per-item fields changed, which is
    about five times faster than building an ``Event`` per item.
    """
    record = {
        "event_id": "",
        "event_type": "impression",
        "event_at": timestamp_text(moment),
        "user_id": served.user_id,
        "item_id": "",
        "request_id": request_id,
        "position": 0,
        "model_version": served.model_version,
        "variant": served.variant,
        "page": served.page,
        "device": served.device,
        "price": 0.0,
        "query": served.query,
        "schema_version": SCHEMA_VERSION,
    }
    lines = []
    for event_id, (item_id, (position, price)) in zip(event_ids, served.positions.items(), strict=True):
        record["event_id"] = event_id
        record["item_id"] = item_id
        record["position"] = position
        record["price"] = price
        lines.append(orjson.dumps(record) + b"\n")
    return lines


def _event(event_type: str, moment: datetime, request_id: str, served: ServedRequest, item_id: str) -> Event:
    position, price = served.positions[item_id]
    return Event(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        event_at=moment,
        user_id=served.user_id,
        item_id=item_id,
        request_id=request_id,
        position=position,
        model_version=served.model_version,
        variant=served.variant,
        page=served.page,
        device=served.device,
        price=price,
        query=served.query,
    )
