"""What each arm of a rollout saw, read from the service's own logs and its Prometheus metrics.

Rates come from the log store, not from the warehouse: the service writes every impression and
feedback event there (schema v1, buffered for a few seconds), so a step can be analysed minutes after
its traffic, without waiting for the nightly ingest and dbt build. The price is attribution delay: a
click counts for an impression only if it arrives within ``attribution_window`` of it, so an analysis
reads impressions up to ``end`` but feedback up to ``end + attribution_window``; impressions younger
than the window at analysis time are still "open" (their clicks may come later), and the analysis
excludes them by choosing ``end = high-water mark - attribution_window`` when the step is not yet
over (see ``loopline.rollout.machine``).

Health (failed requests, p99 latency) comes from the service's ``/metrics``: counters and histograms
are cumulative since the service started, so a step reads them at its start and at its analysis and
uses the difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from loopline.logstore import LogStore

ARMS = ("champion", "canary")
DEFAULT_ATTRIBUTION_WINDOW = timedelta(minutes=30)
BATCH_LINES = 50_000


@dataclass(frozen=True)
class LogCounts:
    """Counts of one arm over an event-time window, from the logs."""

    users: int = 0
    requests: int = 0
    impressions: int = 0
    clicks: int = 0  # impressions with a click within the attribution window
    conversions: int = 0  # impressions with a purchase within the attribution window
    model_versions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LogWindow:
    """Per-arm counts of ``[start, end)`` plus the latest event time the logs hold (the high-water mark)."""

    start: datetime
    end: datetime
    arms: dict[str, LogCounts]
    high_water_mark: datetime | None
    lines_read: int
    lines_rejected: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "high_water_mark": self.high_water_mark.isoformat() if self.high_water_mark else None,
            "lines_read": self.lines_read,
            "lines_rejected": self.lines_rejected,
            "arms": {name: counts.to_dict() for name, counts in self.arms.items()},
        }


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{name}: expected a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def _read_events(store: LogStore, start: datetime, end: datetime) -> tuple[pa.Table, int, int]:
    """Valid events of the hour partitions covering ``[start, end)``, deduplicated by event_id."""
    from loopline.ingest import parse_batch

    tables: list[pa.Table] = []
    read = rejected = 0
    lines: list[bytes] = []

    def flush() -> None:
        nonlocal lines, rejected
        if lines:
            parsed = parse_batch(lines)
            rejected += len(parsed.rejects)
            if parsed.events.num_rows:
                tables.append(parsed.events)
            lines = []

    for obj in store.list_interval(start, end):
        for line in store.iter_lines(obj):
            lines.append(line)
            read += 1
            if len(lines) >= BATCH_LINES:
                flush()
    flush()
    if not tables:
        return pa.table({}), read, rejected
    table = pa.concat_tables(tables)
    return table, read, rejected


def observe_logs(
    store: LogStore,
    start: datetime,
    end: datetime,
    *,
    attribution_window: timedelta = DEFAULT_ATTRIBUTION_WINDOW,
    arms: Iterable[str] = ARMS,
) -> LogWindow:
    """Impressions served in ``[start, end)`` per arm (``variant``), and their attributed clicks and purchases."""
    import duckdb

    start, end = _utc(start, "start"), _utc(end, "end")
    if end < start:
        raise ValueError(f"window end {end.isoformat()} is before its start {start.isoformat()}")
    arms = tuple(arms)
    table, read, rejected = _read_events(store, start, end + attribution_window)
    counts = {arm: LogCounts() for arm in arms}
    if table.num_rows == 0:
        return LogWindow(start, end, counts, None, read, rejected)
    high_water_mark = pc.max(table.column("event_at")).as_py()
    connection = duckdb.connect()
    try:
        connection.execute("set TimeZone = 'UTC'")
        connection.register("logged", table)
        rows = connection.execute(
            """
            with events as (
                select * from logged qualify row_number() over (partition by event_id order by event_at) = 1
            ),
            impressions as (
                select request_id, item_id, user_id, variant, model_version, min(event_at) as shown_at
                from events
                where event_type = 'impression' and event_at >= ? and event_at < ? and list_contains(?, variant)
                group by all
            ),
            feedback as (
                select request_id, item_id, event_type, event_at from events
                where event_type in ('click', 'purchase')
            ),
            labelled as (
                select i.*,
                    bool_or(f.event_type = 'click') as is_clicked,
                    bool_or(f.event_type = 'purchase') as is_purchased
                from impressions i
                left join feedback f
                  on f.request_id = i.request_id and f.item_id = i.item_id
                 and f.event_at >= i.shown_at and f.event_at < i.shown_at + ?
                group by all
            )
            select variant, count(distinct user_id), count(distinct request_id), count(*),
                   count(*) filter (where is_clicked), count(*) filter (where is_purchased),
                   list(distinct model_version order by model_version)
            from labelled group by variant
            """,
            [start, end, list(arms), attribution_window],
        ).fetchall()
    finally:
        connection.close()
    for variant, users, requests, impressions, clicks, conversions, versions in rows:
        counts[variant] = LogCounts(users, requests, impressions, clicks, conversions, tuple(versions))
    if isinstance(high_water_mark, datetime) and high_water_mark.tzinfo is None:
        high_water_mark = high_water_mark.replace(tzinfo=UTC)
    return LogWindow(start, end, counts, high_water_mark, read, rejected)


# --- service health from /metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthSnapshot:
    """Cumulative /rank counters per arm at one moment: requests, failed requests, latency histogram."""

    taken_at: datetime
    requests: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)  # server-side failures (5xx)
    latency_buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # arm -> le -> cumulative count

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "requests": self.requests,
            "errors": self.errors,
            "latency_buckets": {arm: {str(le): n for le, n in b.items()} for arm, b in self.latency_buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthSnapshot:
        return cls(
            taken_at=datetime.fromisoformat(data["taken_at"]),
            requests=dict(data.get("requests", {})),
            errors=dict(data.get("errors", {})),
            latency_buckets={
                arm: {float(le): float(n) for le, n in buckets.items()}
                for arm, buckets in data.get("latency_buckets", {}).items()
            },
        )


SERVER_ERROR_STATUSES = ("server_error", "unavailable")


def parse_health(text: str, *, arms: Iterable[str] = ARMS, endpoint: str = "rank") -> HealthSnapshot:
    """The /rank request counts, failures and latency buckets per arm from Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    arms = tuple(arms)
    requests = dict.fromkeys(arms, 0.0)
    errors = dict.fromkeys(arms, 0.0)
    buckets: dict[str, dict[float, float]] = {arm: {} for arm in arms}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("endpoint") != endpoint or labels.get("variant") not in arms:
                continue
            arm = labels["variant"]
            if sample.name == "loopline_serving_requests_total":
                requests[arm] += sample.value
                if labels.get("status") in SERVER_ERROR_STATUSES:
                    errors[arm] += sample.value
            elif sample.name == "loopline_serving_request_seconds_bucket":
                le = math.inf if labels["le"] in ("+Inf", "inf") else float(labels["le"])
                buckets[arm][le] = buckets[arm].get(le, 0.0) + sample.value
    return HealthSnapshot(datetime.now(UTC), requests, errors, buckets)


def scrape_health(metrics_url: str, *, timeout: float = 5.0) -> HealthSnapshot:
    """GET ``metrics_url`` (the service's /metrics) and parse it."""
    import httpx

    response = httpx.get(metrics_url, timeout=timeout)
    response.raise_for_status()
    return parse_health(response.text)


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile``: linear interpolation inside the bucket holding the quantile."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = quantile * total
    previous_le, previous_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return previous_le  # beyond the last finite bucket: its upper bound is the best known
            if count == previous_count:
                return le
            return previous_le + (le - previous_le) * (rank - previous_count) / (count - previous_count)
        previous_le, previous_count = le, count
    return previous_le


@dataclass(frozen=True)
class HealthDelta:
    """Per-arm requests, failures and p99 latency (ms) between two snapshots."""

    requests: dict[str, int]
    errors: dict[str, int]
    p99_latency_ms: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def health_between(before: HealthSnapshot | None, after: HealthSnapshot) -> HealthDelta:
    """What happened between ``before`` (None: the service's start) and ``after``."""
    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    p99: dict[str, float | None] = {}
    for arm in after.requests:
        previous_requests = before.requests.get(arm, 0.0) if before else 0.0
        previous_errors = before.errors.get(arm, 0.0) if before else 0.0
        # A counter that went down means the service restarted: count from zero again.
        requests[arm] = int(
            round(after.requests[arm] - (previous_requests if after.requests[arm] >= previous_requests else 0))
        )
        errors[arm] = int(
            round(
                after.errors.get(arm, 0.0) - (previous_errors if after.errors.get(arm, 0.0) >= previous_errors else 0)
            )
        )
        old = before.latency_buckets.get(arm, {}) if before else {}
        new = after.latency_buckets.get(arm, {})
        delta = {le: count - old.get(le, 0.0) for le, count in new.items()}
        if any(value < 0 for value in delta.values()):
            delta = dict(new)
        latency = histogram_quantile(0.99, delta)
        p99[arm] = None if latency is None else round(latency * 1000.0, 3)
    return HealthDelta(requests, errors, p99)
