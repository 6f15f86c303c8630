"""Simulated users in front of the real ranking service: requests in, reactions back as feedback.

``generate_day`` writes a day's events itself; here the service does the logging, as in production.
For each simulated request the driver asks the service to rank (``POST /rank``), draws the user's
reactions to what it showed from the world's truth (the same click model ``generate_day`` uses), and
reports them (``POST /feedback``). The service logs impressions and feedback as schema v1 events, so
what reaches the log store is what the service saw. The driver also tallies, per variant, what it
sent and the oracle's expected clicks, which the canary tests compare with the service's analysis.

Requests carry the simulated time (``context.event_at``) so a simulated day's traffic lands in that
day's log partitions whatever the wall clock says.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import orjson

from loopline import events
from loopline.simulate.traffic import DEFAULT_CANDIDATES, PAGES, _candidates, _sessions, day_rng
from loopline.simulate.world import World

STREAM_SERVICE = 11  # generator stream of service-driven traffic (see traffic.STREAM_*)
FEEDBACK_DELAY_SECONDS = (2.0, 60.0)  # a reaction comes this long after the list was shown


class ServiceTrafficError(RuntimeError):
    """The service answered something the driver cannot use; the message names the request."""


class RankingClient(Protocol):
    """How the driver reaches the service: JSON in, (HTTP status, JSON answer) out."""

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]: ...


class HttpRankingClient:
    """``RankingClient`` over HTTP/1.1 keep-alive, one connection per thread."""

    def __init__(self, url: str, *, timeout: float = 10.0):
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"service url {url!r}: expected http://host:port[/prefix]")
        self.url = url.rstrip("/")
        self._parts = parts
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._parts.hostname, self._parts.port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        body = orjson.dumps(payload)
        for attempt in range(2):
            connection = self._connection()
            try:
                connection.request(
                    "POST", self._parts.path + path, body=body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                raw = response.read()
            except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
                connection.close()
                self._local.connection = None
                if attempt:
                    raise ServiceTrafficError(f"POST {self.url}{path} failed: {error}") from error
                continue
            try:
                return response.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return response.status, raw.decode("utf-8", "replace")
        raise AssertionError("unreachable")


class AsgiRankingClient:
    """``RankingClient`` over an in-process ASGI app: anything with httpx's ``post(path, json=...)``,
    e.g. starlette's ``TestClient`` around the BentoML service's ``asgi_app()``."""

    def __init__(self, client: Any):
        self.client = client

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        response = self.client.post(path, json=payload)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text


@dataclass
class ArmTally:
    """What one variant showed and what the simulated users did, as the driver saw it."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    expected_clicks: float = 0.0  # sum of the oracle's P(click) over the impressions
    model_versions: dict[str, int] = field(default_factory=dict)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def oracle_ctr(self) -> float:
        return self.expected_clicks / self.impressions if self.impressions else 0.0


@dataclass
class DriveSummary:
    """One driven batch of traffic: per-variant tallies, failed requests and feedback calls."""

    day_index: int
    requests: int = 0
    failed_requests: int = 0  # non-200 answers to /rank (or no answer)
    failed_feedback: int = 0
    feedback_sent: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "HTTP 503" -> count
    arms: dict[str, ArmTally] = field(default_factory=dict)

    def merge(self, other: DriveSummary) -> None:
        self.requests += other.requests
        self.failed_requests += other.failed_requests
        self.failed_feedback += other.failed_feedback
        self.feedback_sent += other.feedback_sent
        for key, count in other.failures.items():
            self.failures[key] = self.failures.get(key, 0) + count
        for variant, tally in other.arms.items():
            mine = self.arms.setdefault(variant, ArmTally())
            for name in ("requests", "impressions", "clicks", "add_to_carts", "purchases", "expected_clicks"):
                setattr(mine, name, getattr(mine, name) + getattr(tally, name))
            for version, count in tally.model_versions.items():
                mine.model_versions[version] = mine.model_versions.get(version, 0) + count

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for variant, tally in self.arms.items():
            out["arms"][variant] |= {"ctr": tally.ctr, "oracle_ctr": tally.oracle_ctr}
        return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def drive_day(
    world: World,
    client: RankingClient,
    day_index: int,
    *,
    requests: int,
    k: int = 10,
    candidates: int = DEFAULT_CANDIDATES,
    concurrency: int = 1,
    part: int = 0,
    send_context: bool = True,
    window: tuple[datetime, datetime] | None = None,
    on_request: Callable[[int], None] | None = None,
) -> DriveSummary:
    """Send ``requests`` simulated ranking requests of day ``day_index`` through ``client``; feed back reactions.

    The same (world, day, part) always draws the same users, candidates and random numbers; what the
    users do still depends on what the service ranks. ``part`` numbers separate batches of one day
    (e.g. one per canary step). ``concurrency`` > 1 sends from that many threads. ``window``: squeeze
    the day's request times (and their order) into ``[start, end)``, e.g. one simulated hour per batch,
    so consecutive batches follow each other in event time.
    """
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    rng = day_rng(world, day_index, STREAM_SERVICE, part)
    available = world.available_items(day_index)
    width = min(candidates, len(available))
    if not 1 <= k <= width:
        raise ValueError(f"need 1 <= k <= {width} candidates, got k={k}")
    sessions = _sessions(world, rng, requests, day_index)
    candidate_rows = _candidates(world, rng, sessions["category"], available, width)
    uniforms = rng.random((requests, k, 3))  # click, add to cart, purchase per shown slot
    delays = rng.uniform(*FEEDBACK_DELAY_SECONDS, size=(requests, k))
    traffic_date = world.start_date + timedelta(days=day_index)
    midnight = datetime(traffic_date.year, traffic_date.month, traffic_date.day, tzinfo=UTC)
    if window is not None:
        if window[1] <= window[0] or window[0].tzinfo is None:
            raise ValueError(f"window: expected two timezone-aware times, start before end; got {window}")
        scale = (window[1] - window[0]) / timedelta(days=1)
        sessions["time"] = (sessions["time"] * scale).astype(np.int64)
        midnight = window[0].astimezone(UTC)

    def one(row: int, summary: DriveSummary) -> None:
        user = int(sessions["user"][row])
        user_id = world.user_ids[user]
        item_ids = [world.item_ids[i] for i in candidate_rows[row].tolist()]
        shown_at = midnight + timedelta(milliseconds=int(sessions["time"][row]))
        payload: dict[str, Any] = {"user_id": user_id, "item_ids": item_ids, "k": k}
        if send_context:
            payload["context"] = {
                "event_at": _iso(shown_at),
                "page": PAGES[int(sessions["page"][row])],
                "device": events.DEVICES[int(sessions["device"][row])],
            }
        summary.requests += 1
        try:
            status, answer = client.post("/rank", payload)
        except ServiceTrafficError:
            status, answer = 0, None
        if status != 200:
            summary.failed_requests += 1
            key = f"HTTP {status}" if status else "no answer"
            summary.failures[key] = summary.failures.get(key, 0) + 1
            return
        try:
            ranked = [str(entry["item_id"]) for entry in answer["items"]]
            request_id, variant, version = str(answer["request_id"]), str(answer["variant"]), answer["model_version"]
        except (KeyError, TypeError) as error:
            raise ServiceTrafficError(f"/rank for {user_id}: unexpected answer {str(answer)[:200]} ({error})") from None
        if not ranked or len(ranked) > k or not set(ranked) <= set(item_ids):
            raise ServiceTrafficError(
                f"/rank for {user_id} returned {ranked[: k + 1]}: expected 1..{k} of the candidates"
            )
        tally = summary.arms.setdefault(variant, ArmTally())
        tally.requests += 1
        tally.model_versions[str(version)] = tally.model_versions.get(str(version), 0) + 1
        positions = np.arange(1, len(ranked) + 1)
        click_p = world.click_probability(user, ranked, positions, day_index)
        cart_p = world.cart_probability(user, ranked, day_index)
        buy_p = world.purchase_given_cart(ranked)
        tally.impressions += len(ranked)
        tally.expected_clicks += float(click_p.sum())
        draws = uniforms[row, : len(ranked)]
        for slot, item_id in enumerate(ranked):
            if draws[slot, 0] >= click_p[slot]:
                continue
            reactions = ["click"]
            if draws[slot, 1] < cart_p[slot]:
                reactions.append("add_to_cart")
                if draws[slot, 2] < buy_p[slot]:
                    reactions.append("purchase")
            for offset, event_type in enumerate(reactions):
                feedback: dict[str, Any] = {"request_id": request_id, "item_id": item_id, "event_type": event_type}
                if send_context:
                    at = shown_at + timedelta(seconds=float(delays[row, slot]) * (1 + offset))
                    feedback["event_at"] = _iso(at)
                try:
                    code, _ = client.post("/feedback", feedback)
                except ServiceTrafficError:
                    code = 0
                if code != 200:
                    summary.failed_feedback += 1
                    continue
                summary.feedback_sent += 1
                if event_type == "click":
                    tally.clicks += 1
                elif event_type == "add_to_cart":
                    tally.add_to_carts += 1
                else:
                    tally.purchases += 1
        if on_request is not None:
            on_request(row)

    def run(rows: Sequence[int]) -> DriveSummary:
        summary = DriveSummary(day_index=day_index)
        for row in rows:
            one(row, summary)
        return summary

    total = DriveSummary(day_index=day_index)
    if concurrency == 1:
        total.merge(run(range(requests)))
        return total
    shards = [range(start, requests, concurrency) for start in range(concurrency)]
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="loopline-drive") as pool:
        for summary in pool.map(run, shards):
            total.merge(summary)
    return total
