"""The BentoML service: its methods called directly, and HTTP through its ASGI app (``to_asgi()``).

Covers readiness, the documented status codes of every bad input (a table: each case its 4xx,
none a 5xx), the request metrics, a swap under load (zero failed requests while the canary is
loaded, promoted and replaced) and the round trip of served events through ``ingest_interval``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from loopline.events import Event, parse_line
from loopline.logstore import LogStore
from loopline.serving.ranker import FeedbackRequest, RankRequest, RankResponse
from loopline.serving.routing import CANARY, CHAMPION, FileStateStore, TrafficState, assign_variant

pytestmark = pytest.mark.slow


def _service_class():
    from models.service import RankingService

    return RankingService


def _asgi_app():
    """The service's ASGI app, one per process (``models.service.asgi_app``: BentoML registers its own
    Prometheus histograms when an app is first made). Each TestClient block still starts a new service
    instance (the lifespan), with the test's settings."""
    from models.service import asgi_app

    return asgi_app()


def _wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met before the deadline"
        time.sleep(0.05)


@pytest.fixture
def client(served):
    """A TestClient on the service's ASGI app (startup and shutdown hooks run), ready to rank."""
    FileStateStore(served.state_path).write(TrafficState(champion_version=served.world.champion))
    with TestClient(_asgi_app()) as test_client:
        _wait_for(lambda: test_client.get("/readyz").status_code == 200, what="/readyz 200")
        yield test_client


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _logged_events(served) -> list[Event]:
    store = LogStore.from_uri(served.log_uri)
    found = []
    for day_dir in sorted(served.log_dir.glob("dt=*")):
        day = datetime.strptime(day_dir.name[3:], "%Y-%m-%d").date()
        for obj in store.list(day):
            for line in store.iter_lines(obj):
                parsed = parse_line(line)
                assert isinstance(parsed, Event), (line, parsed)
                found.append(parsed)
    return found


# --- the methods, called directly -----------------------------------------------------------------


def test_service_methods_called_directly(served):
    FileStateStore(served.state_path).write(TrafficState(champion_version=served.world.champion))
    service = _service_class()()  # the class behind @bentoml.service, as BentoML instantiates it
    try:
        _wait_for(service.__is_ready__, what="models loaded")
        world = served.world
        # The endpoints are coroutines (they run on the worker's event loop).
        ranked = asyncio.run(service.rank(RankRequest(user_id=world.user_ids[0], item_ids=world.item_ids[:10], k=3)))
        assert isinstance(ranked, RankResponse) and len(ranked.items) == 3
        feedback = asyncio.run(
            service.feedback(
                FeedbackRequest(request_id=ranked.request_id, item_id=ranked.items[0].item_id, event_type="click")
            )
        )
        assert feedback.position == 1 and feedback.model_version == ranked.model_version
        unknown = asyncio.run(
            service.feedback(FeedbackRequest(request_id="r-unknown", item_id="i", event_type="click"))
        )
        assert isinstance(unknown, JSONResponse) and unknown.status_code == 404
        assert service.packaged_or_alias_version() in world.versions  # no Bento model: the champion alias
    finally:
        service.close()
    assert sorted(event.event_type for event in _logged_events(served)) == ["click"] + ["impression"] * 3


# --- HTTP through the ASGI app --------------------------------------------------------------------


def test_rank_and_feedback_over_http(client, served):
    world = served.world
    response = client.post("/rank", json={"user_id": world.user_ids[0], "item_ids": world.item_ids[:50], "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "request_id", "model_version", "variant", "fallback", "explored"}
    assert response.headers["x-loopline-variant"] == body["variant"] == CHAMPION
    assert body["model_version"] == f"loopline-ctr/{world.champion}"
    assert [set(item) for item in body["items"]] == [{"item_id", "score"}] * 5
    click = {"request_id": body["request_id"], "item_id": body["items"][1]["item_id"], "event_type": "click"}
    answer = client.post("/feedback", json=click)
    assert answer.status_code == 200 and answer.json()["position"] == 2
    assert client.get("/livez").status_code == 200


def test_the_simulators_http_policy_reads_the_answer(client, served):
    from loopline.simulate.policies import HttpPolicy

    policy = HttpPolicy("http://testserver")
    policy._connect = lambda: _TestClientConnection(client)  # the policy's own parsing, over the ASGI app
    ranked = policy.rank(served.world.user_ids[4], served.world.item_ids[:8], 4, request_context=None)
    assert len(ranked.item_ids) == 4 and ranked.variant == CHAMPION and ranked.request_id


class _TestClientConnection:
    """The slice of ``http.client.HTTPConnection`` that ``HttpPolicy`` uses, answered by a TestClient."""

    def __init__(self, client: TestClient):
        self.client = client
        self.answer = None

    def request(self, method: str, path: str, body: bytes, headers: dict) -> None:
        self.answer = self.client.request(method, path, content=body, headers=headers)

    def getresponse(self):
        answer = self.answer
        return type("Answer", (), {"status": answer.status_code, "read": lambda _self: answer.content})()

    def close(self) -> None:
        pass


# Every bad input and its documented status (docs/serving.md, "Limits and errors").
BAD_INPUTS = [
    ("rank", "malformed JSON", b'{"user_id": "u1",', 400),
    ("rank", "not JSON at all", b"\x80\x81 binary", 400),
    ("rank", "empty body", b"", 400),
    ("rank", "JSON array", b'["u1"]', 400),
    ("rank", "JSON null", b"null", 400),
    ("rank", "missing user_id", b'{"item_ids": ["a"]}', 400),
    ("rank", "user_id a number", b'{"user_id": 17}', 400),
    ("rank", "user_id empty", b'{"user_id": ""}', 400),
    ("rank", "user_id too long", b'{"user_id": "' + b"u" * 129 + b'"}', 400),
    ("rank", "unknown field", b'{"user_id": "u1", "candidates": ["a"]}', 400),
    ("rank", "k a string", b'{"user_id": "u1", "k": "10"}', 400),
    ("rank", "k zero", b'{"user_id": "u1", "k": 0}', 400),
    ("rank", "k above 100", b'{"user_id": "u1", "k": 101}', 400),
    ("rank", "k a float", b'{"user_id": "u1", "k": 2.5}', 400),
    ("rank", "item_ids empty", b'{"user_id": "u1", "item_ids": []}', 400),
    (
        "rank",
        "item_ids oversized",
        b'{"user_id": "u1", "item_ids": [%s]}' % b",".join(b'"i%d"' % i for i in range(501)),
        400,
    ),  # fmt: skip
    ("rank", "item_ids a string", b'{"user_id": "u1", "item_ids": "i1"}', 400),
    ("rank", "item id not a string", b'{"user_id": "u1", "item_ids": ["i1", 2]}', 400),
    ("rank", "item id too long", b'{"user_id": "u1", "item_ids": ["' + b"i" * 129 + b'"]}', 400),
    ("rank", "repeated item ids", b'{"user_id": "u1", "item_ids": ["i1", "i1"]}', 400),
    ("rank", "unknown page", b'{"user_id": "u1", "context": {"page": "cart"}}', 400),
    ("rank", "unknown device", b'{"user_id": "u1", "context": {"device": "watch"}}', 400),
    ("rank", "query too long", b'{"user_id": "u1", "context": {"query": "' + b"q" * 1025 + b'"}}', 400),
    ("rank", "event_at not UTC", b'{"user_id": "u1", "context": {"event_at": "2024-05-01T10:00:00+02:00"}}', 400),
    ("rank", "unknown context field", b'{"user_id": "u1", "context": {"slot": 3}}', 400),
    ("rank", "deeply nested value", b'{"user_id": ' + b"[" * 500 + b"]" * 500 + b"}", 400),
    ("feedback", "malformed JSON", b"{", 400),
    ("feedback", "missing event_type", b'{"request_id": "r", "item_id": "i"}', 400),
    ("feedback", "impression is not feedback", b'{"request_id": "r", "item_id": "i", "event_type": "impression"}', 400),
    ("feedback", "unknown field", b'{"request_id": "r", "item_id": "i", "event_type": "click", "price": 3}', 400),
    ("feedback", "bad event_at", b'{"request_id": "r", "item_id": "i", "event_type": "click", "event_at": "now"}', 400),
    ("feedback", "unknown request_id", b'{"request_id": "never-served", "item_id": "i", "event_type": "click"}', 404),
]


def test_bad_inputs_get_their_documented_4xx_and_never_a_5xx(client):
    results = {}
    for endpoint, name, body, _ in BAD_INPUTS:
        response = client.post(f"/{endpoint}", content=body, headers={"content-type": "application/json"})
        results[(endpoint, name)] = (response.status_code, response.text[:300])
    wrong = {
        key: got for (endpoint, name, _, expected) in BAD_INPUTS for key in [(endpoint, name)]
        if (got := results[key])[0] != expected
    }  # fmt: skip
    assert not wrong, wrong
    assert all(status < 500 for status, _ in results.values())
    for (_, name), (status, text) in results.items():  # every answer names the problem
        assert ("error" in text and ("loc" in text or "unknown" in text)) or status != 400, (name, text)


def test_validation_errors_name_the_field_and_the_limit(client):
    body = {"user_id": "u1", "item_ids": [f"i{i}" for i in range(501)]}
    answer = client.post("/rank", json=body).json()
    assert answer["detail"][0]["loc"] == ["item_ids"] and "at most 500" in answer["detail"][0]["msg"]
    answer = client.post("/rank", json={"user_id": "u1", "surprise": 1}).json()
    assert answer["detail"][0]["loc"] == ["surprise"] and answer["detail"][0]["type"] == "extra_forbidden"


def test_feedback_for_an_item_not_served_is_404(client, served):
    ranked = client.post("/rank", json={"user_id": "u-404", "item_ids": served.world.item_ids[:5], "k": 2}).json()
    response = client.post(
        "/feedback", json={"request_id": ranked["request_id"], "item_id": "never-shown", "event_type": "click"}
    )
    assert response.status_code == 404 and "was not in the list" in response.json()["error"]


def test_request_metrics_count_latency_status_and_errors(client, served):
    labels = {"endpoint": "rank", "variant": CHAMPION, "status": "ok"}
    ok_before = _sample("loopline_serving_requests_total", labels)
    latency_before = _sample("loopline_serving_request_seconds_count", {"endpoint": "rank", "variant": CHAMPION})
    bad_before = _sample("loopline_serving_errors_total", {"endpoint": "rank", "kind": "bad_request"})
    unknown_before = _sample("loopline_serving_errors_total", {"endpoint": "feedback", "kind": "unknown_request"})
    for _ in range(3):
        client.post("/rank", json={"user_id": "u-m", "item_ids": served.world.item_ids[:5], "k": 2})
    client.post("/rank", json={"user_id": "u-m", "k": "two"})
    client.post("/feedback", json={"request_id": "nope", "item_id": "i", "event_type": "click"})
    assert _sample("loopline_serving_requests_total", labels) == ok_before + 3
    assert _sample("loopline_serving_request_seconds_count", {"endpoint": "rank", "variant": CHAMPION}) == (
        latency_before + 3
    )
    assert _sample("loopline_serving_errors_total", {"endpoint": "rank", "kind": "bad_request"}) == bad_before + 1
    assert _sample("loopline_serving_errors_total", {"endpoint": "feedback", "kind": "unknown_request"}) == (
        unknown_before + 1
    )
    assert _sample("loopline_serving_in_flight_requests", {"endpoint": "rank"}) == 0
    assert _sample("loopline_serving_model_loaded", {"variant": CHAMPION, "version": served.world.champion}) == 1


def test_not_ready_until_a_model_loads(served):
    FileStateStore(served.state_path).write(TrafficState(champion_version="999"))  # not registered
    with TestClient(_asgi_app()) as client:
        time.sleep(0)  # the poller has started; its load of version 999 fails
        _wait_for(lambda: _sample("loopline_serving_model_load_errors_total", {}) > 0, what="a failed load")
        assert client.get("/readyz").status_code == 503
        assert client.get("/livez").status_code == 200
        response = client.post("/rank", json={"user_id": "u1", "item_ids": ["i1"]})
        assert response.status_code == 503 and "no model is loaded" in response.json()["error"]
        FileStateStore(served.state_path).write(TrafficState(champion_version=served.world.champion))
        _wait_for(lambda: client.get("/readyz").status_code == 200, what="/readyz 200 after a good state")
        assert client.post("/rank", json={"user_id": "u1", "item_ids": ["i1"]}).status_code == 200


# --- a swap under load ----------------------------------------------------------------------------


def test_swap_under_load_fails_no_request(client, served):
    """Clients rank continuously while the canary is loaded, promoted, and then replaced."""
    world = served.world
    one, two = world.champion, world.challenger
    store = FileStateStore(served.state_path)
    users = [f"load-user-{index}" for index in range(200)]
    stop = threading.Event()
    results: list[tuple[float, float, str, int, str, str]] = []  # started, ended, user, status, variant, version
    lock = threading.Lock()

    def hammer(offset: int) -> None:
        index = offset
        while not stop.is_set():
            user = users[index % len(users)]
            index += 7
            started = time.monotonic()
            try:
                response = client.post("/rank", json={"user_id": user, "item_ids": world.item_ids[:60], "k": 10})
                body = response.json() if response.status_code == 200 else {}
                status, variant, version = response.status_code, body.get("variant", ""), body.get("model_version", "")
                if status == 200:
                    scores = [item["score"] for item in body["items"]]
                    assert len(scores) == 10 and scores == sorted(scores, reverse=True), body
            except Exception as error:  # any failure is a failed request
                status, variant, version = -1, type(error).__name__, str(error)[:200]
            with lock:
                results.append((started, time.monotonic(), user, status, variant, version))

    def first_answer(variant: str, version: str, since: float) -> float | None:
        with lock:
            ends = [row[1] for row in results if row[0] >= since and row[4] == variant and row[5] == version]
        return min(ends) if ends else None

    workers = [threading.Thread(target=hammer, args=(offset,)) for offset in range(4)]
    for worker in workers:
        worker.start()
    v1, v2 = f"loopline-ctr/{one}", f"loopline-ctr/{two}"
    # (phase, state, the answer that shows it is in place, answers impossible once it is)
    phases = [
        ("canary loaded", TrafficState(champion_version=one, canary_version=two, canary_weight=0.5), (CANARY, v2),
         lambda user, variant, version: (variant, version) == ((CANARY, v2) if assign_variant(user, 0.5) == CANARY
                                                              else (CHAMPION, v1))),
        ("canary promoted", TrafficState(champion_version=two), (CHAMPION, v2),
         lambda user, variant, version: (variant, version) == (CHAMPION, v2)),
        ("champion replaced", TrafficState(champion_version=one, rollout_id="rollback"), (CHAMPION, v1),
         lambda user, variant, version: (variant, version) == (CHAMPION, v1)),
    ]  # fmt: skip
    in_place: list[float] = []
    writes: list[float] = []
    try:
        _wait_for(lambda: first_answer(CHAMPION, v1, 0.0) is not None, what="champion answers")
        for name, state, (variant, version), _ in phases:
            written = time.monotonic()
            writes.append(written)
            store.write(state)
            _wait_for(lambda v=variant, m=version, w=written: first_answer(v, m, w) is not None, what=name)
            in_place.append(first_answer(variant, version, written))
            _wait_for(lambda: len(results) > 0 and results[-1][0] > in_place[-1] + 0.2, what="traffic after " + name)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    statuses = Counter(row[3] for row in results)
    assert statuses == {200: len(results)}, (statuses, [row for row in results if row[3] != 200][:5])
    assert len(results) >= 50
    # The swap is atomic: a request that starts after the first answer of a new state (and ends before
    # the next state is written) is answered by that state, never by the one before.
    for (name, _, _, allowed), start, end in zip(phases, in_place, [*writes[1:], float("inf")], strict=True):
        after = [row for row in results if start < row[0] and row[1] < end]
        assert after, name
        wrong = [row for row in after if not allowed(row[2], row[4], row[5])]
        assert not wrong, (name, wrong[:5])


# --- served events come back through ingestion ----------------------------------------------------


def test_served_impressions_and_feedback_are_ingested_as_schema_v1(served, tmp_path):
    from loopline.ingest import ingest_interval
    from loopline.warehouse import Warehouse

    FileStateStore(served.state_path).write(
        TrafficState(champion_version=served.world.champion, canary_version=served.world.challenger, canary_weight=0.5)
    )
    world = served.world
    started = datetime.now(UTC)
    impressions = feedback = 0
    with TestClient(_asgi_app()) as client:
        _wait_for(lambda: client.get("/readyz").status_code == 200, what="/readyz 200")
        for index, user in enumerate(world.user_ids[:30]):
            body = {"user_id": user, "item_ids": world.item_ids[index : index + 30], "k": 5}
            if index % 3 == 0:
                context = {"page": "search", "device": "mobile", "query": f"q {index}"}
                body = {"user_id": user, "k": 4, "context": context}
            ranked = client.post("/rank", json=body).json()
            impressions += len(ranked["items"])
            for kind in ("click", "add_to_cart", "purchase")[: index % 4]:
                item = ranked["items"][0]["item_id"]
                click = {"request_id": ranked["request_id"], "item_id": item, "event_type": kind}
                answer = client.post("/feedback", json=click)
                assert answer.status_code == 200
                feedback += 1
    # The client has exited: BentoML ran the shutdown hook, which flushed the buffer.
    logged = _logged_events(served)
    kinds = Counter(event.event_type for event in logged)
    assert kinds["impression"] == impressions and sum(kinds.values()) == impressions + feedback
    assert {event.variant for event in logged} == {CHAMPION, CANARY}
    by_request = {}
    for event in logged:
        by_request.setdefault(event.request_id, []).append(event)
    for request_events in by_request.values():
        shown = sorted(event.position for event in request_events if event.event_type == "impression")
        assert shown == list(range(1, len(shown) + 1))
        assert len({(event.user_id, event.model_version, event.variant) for event in request_events}) == 1

    warehouse_uri = f"duckdb://{tmp_path / 'warehouse.duckdb'}"
    start = started.replace(minute=0, second=0, microsecond=0)
    result = ingest_interval(
        start,
        datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1),
        log_store_uri=served.log_uri,
        warehouse_uri=warehouse_uri,
        quarantine_uri=(tmp_path / "quarantine").as_uri(),
    )
    assert (result.lines_read, result.loaded, result.quarantined, result.duplicates) == (len(logged), len(logged), 0, 0)
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        rows = dict(warehouse.query("SELECT event_type, count(*) FROM raw_events GROUP BY event_type"))
    assert rows == dict(kinds)
