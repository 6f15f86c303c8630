"""What a rollout reads: per-arm counts from logged schema v1 events, health from Prometheus text."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loopline.events import Event
from loopline.logstore import LogStore
from loopline.rollout import health_between, histogram_quantile, observe_logs, parse_health

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def event(kind: str, at: datetime, request: str, item: str, variant: str, user: str = "u1") -> Event:
    return Event(
        schema_version=1,
        event_id=str(uuid.uuid4()),
        event_type=kind,
        event_at=at,
        user_id=user,
        item_id=item,
        request_id=request,
        position=1,
        model_version="loopline-ctr/1" if variant == "champion" else "loopline-ctr/2",
        variant=variant,
        page="home",
        device="desktop",
        price=1.0,
        query=None,
    )


def write(store: LogStore, events: list[Event]) -> None:
    by_hour: dict[tuple, list[bytes]] = {}
    for item in events:
        by_hour.setdefault((item.event_at.date(), item.event_at.hour), []).append(item.to_json_line())
    for (day, hour), lines in by_hour.items():
        store.write(day, hour, "test", lines)


def test_counts_attribute_feedback_inside_the_window_only(tmp_path: Path) -> None:
    store = LogStore.from_uri((tmp_path / "logs").as_uri())
    shown = T0 + timedelta(minutes=5)
    duplicate_click = event("click", shown + timedelta(minutes=2), "r1", "a", "champion")
    write(
        store,
        [
            event("impression", shown, "r1", "a", "champion"),
            event("impression", shown, "r1", "b", "champion"),
            duplicate_click,
            duplicate_click,  # the same event twice (a producer retry) counts once
            event(
                "click", shown + timedelta(minutes=3), "r1", "a", "champion"
            ),  # a second click on a: one clicked impression
            event("click", shown + timedelta(minutes=45), "r1", "b", "champion"),  # after the 30 min window
            event("purchase", shown + timedelta(minutes=10), "r1", "a", "champion"),
            event("impression", shown, "r2", "a", "canary", user="u2"),
            event("click", shown - timedelta(minutes=1), "r2", "a", "canary", user="u2"),  # before its impression
            event("impression", T0 - timedelta(hours=1), "r0", "a", "canary", user="u3"),  # before the window
            event("impression", shown, "r3", "c", "import", user="u4"),  # not an arm of the rollout
        ],
    )
    window = observe_logs(store, T0, T0 + timedelta(hours=1))
    champion, canary = window.arms["champion"], window.arms["canary"]
    assert (champion.impressions, champion.clicks, champion.conversions, champion.requests, champion.users) == (
        2,
        1,
        1,
        1,
        1,
    )
    assert (canary.impressions, canary.clicks, canary.users) == (1, 0, 1)
    assert champion.model_versions == ("loopline-ctr/1",)
    assert window.high_water_mark == shown + timedelta(minutes=45)
    assert window.lines_rejected == 0


def test_an_empty_log_gives_zero_counts_and_no_high_water_mark(tmp_path: Path) -> None:
    window = observe_logs(LogStore.from_uri((tmp_path / "logs").as_uri()), T0, T0 + timedelta(hours=1))
    assert window.high_water_mark is None
    assert all(counts.impressions == 0 for counts in window.arms.values())


def test_window_end_before_start_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before its start"):
        observe_logs(LogStore.from_uri((tmp_path / "logs").as_uri()), T0, T0 - timedelta(seconds=1))


def _service_metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    requests = Counter("loopline_serving_requests", "", ["endpoint", "variant", "status"], registry=registry)
    latency = Histogram(
        "loopline_serving_request_seconds", "", ["endpoint", "variant"], registry=registry, buckets=(0.01, 0.02, 0.05)
    )
    return requests, latency


def test_health_is_the_difference_between_two_scrapes() -> None:
    registry = CollectorRegistry()
    requests, latency = _service_metrics(registry)
    for _ in range(10):
        requests.labels("rank", "champion", "ok").inc()
        latency.labels("rank", "champion").observe(0.005)
    requests.labels("rank", "canary", "server_error").inc(3)
    requests.labels("feedback", "canary", "server_error").inc(50)  # another endpoint: not counted
    before = parse_health(generate_latest(registry).decode())
    assert before.requests == {"champion": 10.0, "canary": 3.0}
    assert before.errors == {"champion": 0.0, "canary": 3.0}

    for _ in range(100):
        requests.labels("rank", "canary", "ok").inc()
        latency.labels("rank", "canary").observe(0.015)
    requests.labels("rank", "canary", "server_error").inc(25)
    delta = health_between(before, parse_health(generate_latest(registry).decode()))
    assert delta.requests == {"champion": 0, "canary": 125}
    assert delta.errors == {"champion": 0, "canary": 25}
    assert delta.p99_latency_ms["champion"] is None  # no requests in between
    assert 10.0 < delta.p99_latency_ms["canary"] <= 20.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.01: 50.0, 0.02: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.015)
    assert histogram_quantile(0.99, {0.01: 0.0, math.inf: 10.0}) == pytest.approx(0.01)
    assert histogram_quantile(0.99, {}) is None
