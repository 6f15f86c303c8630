"""Request schemas, the request index and the serving config: pure functions, no stores."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from loopline import events
from loopline.serving.ranker import (
    DEFAULT_CONTEXT,
    DEFAULT_K,
    FEEDBACK_TYPES,
    MAX_CANDIDATES,
    MAX_K,
    PAGES,
    PRUNE_EVERY_MAX,
    FeedbackRequest,
    RankContext,
    RankRequest,
    RequestIndex,
    ServedRequest,
    SqliteRequestIndex,
    request_index,
    served_model_version,
)
from loopline.serving.runtime import ServingConfig


def test_defaults_and_a_full_request():
    request = RankRequest.model_validate_json(b'{"user_id": "u1"}')
    assert (request.item_ids, request.k, request.context) == (None, DEFAULT_K, None)
    assert (DEFAULT_CONTEXT.page, DEFAULT_CONTEXT.device, DEFAULT_CONTEXT.query, DEFAULT_CONTEXT.event_at) == (
        "home",
        "unknown",
        None,
        None,
    )
    full = RankRequest.model_validate(
        {
            "user_id": "u1",
            "item_ids": ["a", "b"],
            "k": 2,
            "context": {"page": "search", "device": "mobile", "query": "shoes", "event_at": "2024-05-01T10:00:00Z"},
        }
    )
    assert full.item_ids == ["a", "b"] and full.context.event_at == "2024-05-01T10:00:00Z"
    feedback = FeedbackRequest.model_validate_json(
        b'{"request_id": "r", "item_id": "i", "event_type": "click", "event_at": "2024-05-01T10:00:05.5+00:00"}'
    )
    assert feedback.event_at == "2024-05-01T10:00:05.5+00:00"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"item_ids": ["a"]}', "user_id"),
        (b'{"user_id": ""}', "user_id"),
        (b'{"user_id": "' + b"x" * 129 + b'"}', "user_id"),
        (b'{"user_id": 5}', "user_id"),
        (b'{"user_id": "u", "k": "5"}', "k"),
        (b'{"user_id": "u", "k": 0}', "k"),
        (b'{"user_id": "u", "k": 101}', "k"),
        (b'{"user_id": "u", "k": 2.5}', "k"),
        (b'{"user_id": "u", "k": true}', "k"),
        (b'{"user_id": "u", "item_ids": []}', "item_ids"),
        (b'{"user_id": "u", "item_ids": "a"}', "item_ids"),
        (b'{"user_id": "u", "item_ids": ["a", 1]}', "item_ids"),
        (b'{"user_id": "u", "item_ids": ["a", ""]}', "item_ids"),
        (b'{"user_id": "u", "item_ids": ["a", "a"]}', "item_ids"),
        (b'{"user_id": "u", "page": "home"}', "page"),
        (b'{"user_id": "u", "context": {"page": "checkout"}}', "page"),
        (b'{"user_id": "u", "context": {"device": "phone"}}', "device"),
        (b'{"user_id": "u", "context": {"query": "' + b"q" * 1025 + b'"}}', "query"),
        (b'{"user_id": "u", "context": {"event_at": "2024-05-01 10:00"}}', "event_at"),
        (b'{"user_id": "u", "context": {"event_at": "2024-05-01T10:00:00+02:00"}}', "event_at"),
        (b'{"user_id": "u", "context": {"event_at": 1714557600}}', "event_at"),
        (b'{"user_id": "u", "context": {"referrer": "x"}}', "referrer"),
        (b'{"user_id": "u", "context": "home"}', "context"),
        (b'{"user_id": "u", "candidates": ["a"]}', "candidates"),
    ],
)
def test_bad_rank_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as caught:
        RankRequest.model_validate_json(body)
    assert field in {str(part) for error in caught.value.errors() for part in error["loc"]}, caught.value


def test_candidate_limit_is_exact():
    ok = [f"i{index}" for index in range(MAX_CANDIDATES)]
    assert len(RankRequest(user_id="u", item_ids=ok).item_ids) == MAX_CANDIDATES
    with pytest.raises(ValidationError, match="at most 500"):
        RankRequest(user_id="u", item_ids=[*ok, "one-more"])
    assert RankRequest(user_id="u", k=MAX_K).k == MAX_K


def test_repeated_candidates_are_named():
    with pytest.raises(ValidationError, match=r"repeated: \['a', 'b'\]"):
        RankRequest(user_id="u", item_ids=["a", "b", "a", "c", "b"])


@pytest.mark.parametrize(
    "body",
    [
        b'{"request_id": "r", "item_id": "i"}',
        b'{"request_id": "r", "item_id": "i", "event_type": "impression"}',
        b'{"request_id": "r", "item_id": "i", "event_type": "click", "position": 1}',
        b'{"request_id": 1, "item_id": "i", "event_type": "click"}',
        b'{"request_id": "r", "item_id": "i", "event_type": "click", "event_at": "yesterday"}',
    ],
)
def test_bad_feedback_is_refused(body):
    with pytest.raises(ValidationError):
        FeedbackRequest.model_validate_json(body)


def test_served_values_fit_schema_v1():
    assert set(FEEDBACK_TYPES) < set(events.EVENT_TYPES)
    assert "impression" not in FEEDBACK_TYPES
    assert set(RankContext.model_fields["device"].annotation.__args__) == set(events.DEVICES)
    assert set(RankContext.model_fields["page"].annotation.__args__) == set(PAGES)
    assert served_model_version("7") == "loopline-ctr/7"


def test_request_index_forgets_the_oldest_first():
    index = RequestIndex(capacity=3)
    for number in range(5):
        index.add(f"r{number}", ServedRequest("u", "loopline-ctr/1", "champion", "home", "unknown", None, {}))
    assert len(index) == 3
    assert index.get("r0") is None and index.get("r1") is None and index.get("r4") is not None
    with pytest.raises(ValueError, match="capacity"):
        RequestIndex(0)


def test_sqlite_index_is_shared_between_processes_and_bounded(tmp_path):
    path = tmp_path / "index" / "served.db"
    writer, reader = request_index(path.as_uri(), capacity=20), request_index(path.as_uri(), capacity=20)
    assert isinstance(writer, SqliteRequestIndex) and writer.path == path
    served = ServedRequest("u1", "loopline-ctr/2", "canary", "search", "mobile", "lamp", {"i1": (1, 9.5), "i2": (2, 0)})
    writer.add("r-first", served)
    assert reader.get("r-first") == served  # another connection (as another worker process) sees it
    assert reader.get("r-unknown") is None
    threads = [
        threading.Thread(target=lambda n=n: [writer.add(f"r-{n}-{i}", served) for i in range(30)]) for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.add("r-last", served)
    assert len(reader) <= 20 + 2  # pruned every capacity // 10 additions
    assert reader.get("r-first") is None and reader.get("r-last") == served


def test_a_large_shared_index_is_pruned_in_small_steps(tmp_path):
    """However large the capacity, one prune deletes at most PRUNE_EVERY_MAX rows (a short stall)."""
    served = ServedRequest("u", "loopline-ctr/1", "champion", "home", "unknown", None, {"i": (1, 0.0)})
    index = SqliteRequestIndex(tmp_path / "served.db", capacity=6_000)  # capacity // 10 = 600 > 500
    for number in range(6_000 + PRUNE_EVERY_MAX):
        index.add(f"r-{number}", served)
    assert len(index) == 6_000  # pruned after 6,500 additions, not only after 6,600
    assert index.get("r-499") is None and index.get("r-500") == served


def test_the_ranker_keeps_the_index_it_is_given_even_when_empty(tmp_path):
    from loopline.serving.ranker import Ranker

    for index in (RequestIndex(capacity=3), request_index((tmp_path / "served.db").as_uri())):
        assert len(index) == 0 and Ranker(models=None, lookup=None, index=index).index is index


def test_request_index_uris():
    assert isinstance(request_index(""), RequestIndex) and isinstance(request_index("memory"), RequestIndex)
    with pytest.raises(ValueError, match="file:///"):
        request_index("redis://127.0.0.1:6379/0")


def test_serving_config_from_environment():
    config = ServingConfig.from_env(
        {"LOOPLINE_SERVING_POLL_SECONDS": "0.5", "LOOPLINE_SERVING_LOG_EVENTS": "false", "OTHER": "x"}
    )
    assert config.poll_seconds == 0.5 and config.log_events is False and config.flush_seconds == 2.0
    with pytest.raises(ValueError, match="LOOPLINE_SERVING_INDEX_REQUESTS='many'"):
        ServingConfig.from_env({"LOOPLINE_SERVING_INDEX_REQUESTS": "many"})
    with pytest.raises(ValueError, match="LOOPLINE_SERVING_POLL_SECONDS: expected a positive"):
        ServingConfig.from_env({"LOOPLINE_SERVING_POLL_SECONDS": "0"})
    with pytest.raises(ValueError, match="LOOPLINE_SERVING_LOG_EVENTS"):
        ServingConfig.from_env({"LOOPLINE_SERVING_LOG_EVENTS": "maybe"})
