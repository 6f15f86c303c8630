"""Ranking policies the simulator sends its requests through.

Any object with ``rank(user_id, candidate_item_ids, k, request_context) -> RankedList`` is a policy;
the simulator calls it once per request. The built-in policies also subclass ``BatchPolicy``, which
ranks a whole batch of requests at once with numpy (the fast path for millions of events).
"""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
import orjson

from loopline.simulate.world import World


class PolicyError(RuntimeError):
    """A policy returned something the simulator cannot log; the message names the policy."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a ranking request knows besides the user and candidates."""

    request_id: str
    day: date
    event_at: datetime
    page: str
    device: str
    query: str | None
    category: str | None


@dataclass(frozen=True, slots=True)
class RankedList:
    """A policy's answer: item ids best first, and the labels that go into every logged event."""

    item_ids: list[str]
    model_version: str
    variant: str
    request_id: str | None = None  # a server's own request id, used instead of the simulator's
    scores: list[float] | None = None


@runtime_checkable
class Policy(Protocol):
    def rank(
        self, user_id: str, candidate_item_ids: list[str], k: int, request_context: RequestContext
    ) -> RankedList: ...


@dataclass(frozen=True, slots=True)
class BatchRanking:
    """Item indices shown per request, best first, with one model version and variant for the batch."""

    shown: np.ndarray  # (requests, k) int, indices into world.item_ids
    model_version: str
    variant: str


class BatchPolicy:
    """A policy that can also rank many requests at once from integer indices (vectorised)."""

    model_version = "sim"
    variant = "control"

    def rank_batch(
        self, world: World, users: np.ndarray, candidates: np.ndarray, k: int, day: int, rng: np.random.Generator
    ) -> BatchRanking:
        scores = self.score_batch(world, users, candidates, day, rng)
        return BatchRanking(top_k(scores, candidates, k), self.model_version, self.variant)

    def score_batch(
        self, world: World, users: np.ndarray, candidates: np.ndarray, day: int, rng: np.random.Generator
    ) -> np.ndarray:
        raise NotImplementedError

    def observe(self, world: World, day: int, items: np.ndarray, clicked: np.ndarray) -> None:
        """Feedback after a simulated day: every impression's item index and whether it was clicked."""

    def bind(self, world: World) -> None:
        """Called once before simulating, so single-request ``rank`` can map ids to indices."""
        self._world = world

    def rank(self, user_id: str, candidate_item_ids: list[str], k: int, request_context: RequestContext) -> RankedList:
        world = getattr(self, "_world", None)
        if world is None:
            raise PolicyError(f"{type(self).__name__}.rank needs bind(world) first")
        day = (request_context.day - world.start_date).days
        candidates = world.item_indices(candidate_item_ids)[None, :]
        users = world.user_indices([user_id])
        # Seeded from the request id (not Python's salted hash) so ties break the same in every run.
        rng = np.random.default_rng(zlib.crc32(request_context.request_id.encode()))
        shown = self.rank_batch(world, users, candidates, k, day, rng).shown[0]
        return RankedList([world.item_ids[i] for i in shown.tolist()], self.model_version, self.variant)


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scored candidates of every row, best first."""
    k = min(k, candidates.shape[1])
    if k < candidates.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(k), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, np.take_along_axis(part, order, axis=1), axis=1)


class RandomPolicy(BatchPolicy):
    """Shows k random candidates: the unbiased logging policy (pure position effect in the data)."""

    model_version = "random-v1"

    def __init__(self, *, variant: str = "control"):
        self.variant = variant

    def score_batch(self, world, users, candidates, day, rng):  # noqa: D102
        return rng.random(candidates.shape)


class PopularityPolicy(BatchPolicy):
    """Ranks by clicks seen so far (``source="counts"``, updated after each day) or by the world's
    base popularity at build time (``source="world"``, blind to drift). Ties break at random.

    ``exploration_share``: that share of requests (chosen at random) shows the same top k in a
    random order ("RandTop-k"), so the log holds each item at several slots: unbiased data for
    estimating the position effect, at a small cost in clicks.
    """

    def __init__(self, source: str = "counts", *, variant: str = "control", exploration_share: float = 0.0):
        if source not in ("counts", "world"):
            raise ValueError(f"PopularityPolicy source must be 'counts' or 'world', got {source!r}")
        if not 0.0 <= exploration_share <= 1.0:
            raise ValueError(f"PopularityPolicy exploration_share must be in [0, 1], got {exploration_share}")
        self.source = source
        self.variant = variant
        self.exploration_share = exploration_share
        self.model_version = f"popularity-{source}-v1"
        if exploration_share > 0:
            self.model_version = f"popularity-{source}-explore{exploration_share:g}-v1"
        self.clicks: np.ndarray | None = None

    def rank_batch(self, world, users, candidates, k, day, rng):  # noqa: D102
        ranking = super().rank_batch(world, users, candidates, k, day, rng)
        if self.exploration_share <= 0:
            return ranking
        # Drawn after the ranking and only when exploring, so a share of 0 leaves the random stream unchanged.
        shown = ranking.shown.copy()
        explored = np.flatnonzero(rng.random(len(shown)) < self.exploration_share)
        if len(explored):
            order = np.argsort(rng.random((len(explored), shown.shape[1])), axis=1)
            shown[explored] = np.take_along_axis(shown[explored], order, axis=1)
        return BatchRanking(shown, ranking.model_version, ranking.variant)

    def _popularity(self, world: World) -> np.ndarray:
        if self.source == "world":
            return world.item_quality + world.category_bias[world.item_category]
        if self.clicks is None or len(self.clicks) < world.n_items:
            grown = np.zeros(world.n_items)
            if self.clicks is not None:
                grown[: len(self.clicks)] = self.clicks
            self.clicks = grown
        return self.clicks

    def score_batch(self, world, users, candidates, day, rng):  # noqa: D102
        return self._popularity(world)[candidates] + 0.5 * rng.random(candidates.shape)

    def observe(self, world, day, items, clicked):  # noqa: D102
        if self.source == "counts":
            popularity = self._popularity(world)
            np.add.at(popularity, items[clicked], 1.0)


class OraclePolicy(BatchPolicy):
    """Ranks by the true attractiveness on that day: the best any model could do (an upper bound)."""

    model_version = "oracle-v1"

    def __init__(self, *, variant: str = "control"):
        self.variant = variant

    def score_batch(self, world, users, candidates, day, rng):  # noqa: D102
        return world.attractiveness(users[:, None], candidates, day)


class CallablePolicy:
    """Wraps any scorer ``(user_id, item_ids) -> scores`` (e.g. a trained model) as a policy."""

    def __init__(
        self,
        scorer: Callable[[str, list[str]], Sequence[float]],
        *,
        model_version: str = "callable",
        variant: str = "control",
    ):
        self.scorer = scorer
        self.model_version = model_version
        self.variant = variant

    def rank(self, user_id: str, candidate_item_ids: list[str], k: int, request_context: RequestContext) -> RankedList:
        scores = np.asarray(self.scorer(user_id, candidate_item_ids), dtype=np.float64)
        if scores.shape != (len(candidate_item_ids),):
            raise PolicyError(
                f"scorer {self.scorer!r} returned {scores.shape} scores for {len(candidate_item_ids)} items; "
                "expected one score per item"
            )
        order = np.argsort(-scores, kind="stable")[:k]
        return RankedList(
            [candidate_item_ids[i] for i in order.tolist()],
            self.model_version,
            self.variant,
            scores=scores[order].tolist(),
        )


class HttpPolicy:
    """Asks a ranking service: POST ``<url>/rank`` with ``{"user_id", "item_ids", "k"}``; expects
    ``{"items": [{"item_id", "score"}, ...], "request_id", "model_version", "variant"}``.
    One keep-alive connection is reused; a broken connection is reopened once.
    """

    def __init__(self, url: str, *, timeout: float = 10.0):
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"HttpPolicy url {url!r}: expected http://host[:port][/prefix]")
        self.url = url.rstrip("/")
        self._parts = parts
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return kind(self._parts.hostname, self._parts.port, timeout=self.timeout)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        path = (self._parts.path or "") + "/rank"
        for attempt in range(2):
            if self._connection is None:
                self._connection = self._connect()
            try:
                self._connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                response = self._connection.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
                self.close()
                if attempt:
                    raise PolicyError(f"POST {self.url}/rank failed: {error}") from error
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def rank(self, user_id: str, candidate_item_ids: list[str], k: int, request_context: RequestContext) -> RankedList:
        status, payload = self._post(orjson.dumps({"user_id": user_id, "item_ids": candidate_item_ids, "k": k}))
        if status != 200:
            raise PolicyError(f"POST {self.url}/rank answered HTTP {status}: {payload[:200]!r}")
        try:
            answer: dict[str, Any] = orjson.loads(payload)
            items = answer["items"]
            ranked = RankedList(
                item_ids=[str(entry["item_id"]) for entry in items][:k],
                model_version=str(answer["model_version"]),
                variant=str(answer["variant"]),
                request_id=str(answer["request_id"]) if answer.get("request_id") else None,
                scores=[float(entry.get("score", 0.0)) for entry in items][:k],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise PolicyError(
                f"POST {self.url}/rank: expected JSON with items[{{item_id, score}}], request_id, model_version, "
                f"variant; got {payload[:200]!r} ({error})"
            ) from None
        return ranked


def make_policy(policy: Policy | str) -> Policy:
    """A policy object from a name (random, popularity, popularity-world, oracle), an http(s) URL, or itself."""
    if not isinstance(policy, str):
        if not callable(getattr(policy, "rank", None)):
            raise TypeError(f"policy {policy!r} has no rank(user_id, candidate_item_ids, k, request_context)")
        return policy
    if policy.startswith(("http://", "https://")):
        return HttpPolicy(policy)
    named: dict[str, Callable[[], Policy]] = {
        "random": RandomPolicy,
        "popularity": PopularityPolicy,
        "popularity-world": lambda: PopularityPolicy("world"),
        "oracle": OraclePolicy,
    }
    if policy not in named:
        raise ValueError(f"unknown policy {policy!r}: expected one of {sorted(named)} or an http(s):// URL")
    return named[policy]()
