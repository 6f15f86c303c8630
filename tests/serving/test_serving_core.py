"""The ranking core on the session's real world: scoring, routing, fallbacks, feedback, model swaps.

Unit level: ``Ranker``, ``ModelCache`` and ``RankingRuntime`` are called directly (no HTTP).
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid

import numpy as np
import pytest
from prometheus_client import REGISTRY

from loopline import features
from loopline.events import parse_line
from loopline.registry import RegistryError
from loopline.serving.catalog import Catalog, latest_snapshot_ids
from loopline.serving.model_store import bento_tag, find_version, load_version
from loopline.serving.models import WARM_UP_CALLS, ModelCache, ModelsNotReadyError, score_candidates
from loopline.serving.ranker import FeedbackRequest, RankRequest, UnknownRequestError, explores, shown_order
from loopline.serving.routing import CANARY, CHAMPION, FileStateStore, TrafficState, assign_variant
from loopline.serving.runtime import RankingRuntime, ServingConfig

pytestmark = pytest.mark.slow


def _fallbacks(kind: str) -> float:
    return REGISTRY.get_sample_value("loopline_serving_fallbacks_total", {"kind": kind}) or 0.0


def _explored(variant: str) -> float:
    return REGISTRY.get_sample_value("loopline_serving_explored_requests_total", {"variant": variant}) or 0.0


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


@pytest.fixture
def runtime(served):
    runtime = RankingRuntime(default_champion=lambda: served.world.champion)
    runtime.start(wait=True)
    yield runtime
    runtime.close()


def test_model_store_imports_a_registered_version_once(served):
    version = served.world.champion
    loaded = load_version(version)
    assert loaded.version == version and find_version(version) is not None
    assert str(find_version(version).tag) == bento_tag(version) == f"loopline-ctr:v{version}"
    assert load_version(version).version == version  # from the store now, no second import
    with pytest.raises(RegistryError, match="no version 999"):
        load_version(999)
    with pytest.raises(ValueError, match="MLflow version number"):
        bento_tag("latest")


@pytest.mark.parametrize("who", ["known", "unknown user", "unknown items"])
def test_lean_scoring_equals_the_models_dataframe_predict(served, who):
    world = served.world
    model = load_version(world.champion)
    user = world.user_ids[0] if who != "unknown user" else "nobody-" + uuid.uuid4().hex[:6]
    items = world.item_ids[:40] + (["new-item-1", "new-item-2"] if who == "unknown items" else [])
    online = features.online(user, items)
    lean = score_candidates(model, user, items, online.columns)
    reference = model.predict(online.frame)
    assert lean.shape == (len(items),)
    assert np.allclose(lean, reference, atol=1e-6), np.abs(lean - reference).max()
    assert len(set(np.round(lean, 6))) > 1  # the features matter: not one constant score


def test_rank_returns_the_top_k_by_score_with_ids_version_and_variant(runtime, served):
    world = served.world
    items = world.item_ids[:100]
    response = runtime.rank(RankRequest(user_id=world.user_ids[1], item_ids=items, k=7))
    scores = [item.score for item in response.items]
    assert len(response.items) == 7 and scores == sorted(scores, reverse=True)
    assert {item.item_id for item in response.items} <= set(items)
    assert uuid.UUID(response.request_id).version == 4
    assert response.model_version == f"loopline-ctr/{world.champion}" and response.variant == CHAMPION
    all_scores = score_candidates(load_version(world.champion), world.user_ids[1], items, features.online(
        world.user_ids[1], items).columns)  # fmt: skip
    assert scores == pytest.approx(sorted(all_scores, reverse=True)[:7], abs=1e-6)
    assert not response.fallback.user_missing and response.fallback.items_missing == []


def test_missing_user_and_items_are_scored_and_counted(runtime, served):
    world = served.world
    before_user, before_items = _fallbacks("missing_user"), _fallbacks("missing_item")
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    response = runtime.rank(RankRequest(user_id=stranger, item_ids=[*world.item_ids[:5], "no-such-a", "no-such-b"]))
    assert response.fallback.user_missing is True
    assert sorted(response.fallback.items_missing) == ["no-such-a", "no-such-b"]
    assert len(response.items) == 7 and all(0.0 < item.score < 1.0 for item in response.items)
    assert _fallbacks("missing_user") == before_user + 1
    assert _fallbacks("missing_item") == before_items + 2


def test_without_item_ids_the_catalog_is_ranked(runtime, served):
    before = _fallbacks("catalog_candidates")
    response = runtime.rank(RankRequest(user_id=served.world.user_ids[2], k=100))
    assert response.fallback.catalog_candidates is True
    assert len(response.items) == min(100, len(served.world.item_ids))
    assert {item.item_id for item in response.items} <= set(served.world.item_ids)
    assert _fallbacks("catalog_candidates") == before + 1


def test_catalog_is_the_latest_snapshot_ordered_by_impressions(served):
    store = features.feature_store()
    catalog = Catalog.from_feature_store(store, limit=10)
    items = catalog.items()
    assert len(items) == 10 and set(items) <= set(served.world.item_ids)
    impressions = features.online(served.world.user_ids[0], list(items)).columns["item_impressions_28d"]
    assert impressions == sorted(impressions, reverse=True)
    assert latest_snapshot_ids(store, "item", limit=3) == list(items[:3])


def test_feedback_logs_the_served_position_and_refuses_unknown_requests(runtime, served):
    world = served.world
    ranked = runtime.rank(RankRequest(user_id=world.user_ids[3], item_ids=world.item_ids[:20], k=5))
    third = ranked.items[2].item_id
    answer = runtime.feedback(FeedbackRequest(request_id=ranked.request_id, item_id=third, event_type="purchase"))
    assert (answer.position, answer.model_version, answer.variant) == (3, ranked.model_version, ranked.variant)
    with pytest.raises(UnknownRequestError, match="unknown"):
        runtime.feedback(FeedbackRequest(request_id=str(uuid.uuid4()), item_id=third, event_type="click"))
    not_shown = next(item for item in world.item_ids[:20] if item not in {i.item_id for i in ranked.items})
    with pytest.raises(UnknownRequestError, match="was not in the list"):
        runtime.feedback(FeedbackRequest(request_id=ranked.request_id, item_id=not_shown, event_type="click"))


def test_exploration_shows_the_same_top_k_in_a_random_order_and_logs_it_as_shown(served):
    world = served.world
    runtime = RankingRuntime(ServingConfig(explore_share=1.0), default_champion=lambda: world.champion)
    runtime.start(wait=True)
    try:
        items, user = world.item_ids[:30], world.user_ids[2]
        scores = score_candidates(load_version(world.champion), user, items, features.online(user, items).columns)
        by_score = sorted(zip(items, scores, strict=True), key=lambda pair: -pair[1])[:8]
        before = _explored(CHAMPION)
        orders = set()
        for _ in range(6):
            response = runtime.rank(RankRequest(user_id=user, item_ids=items, k=8))
            assert response.explored is True
            shown = [item.item_id for item in response.items]
            assert sorted(shown) == sorted(item for item, _ in by_score)  # the same top 8 ...
            assert dict((item.item_id, item.score) for item in response.items) == pytest.approx(dict(by_score))
            top_ids = [item for item, _ in by_score]
            assert shown == [top_ids[i] for i in shown_order(response.request_id, 8)]  # in the id's order
            orders.add(tuple(shown))
            answer = runtime.feedback(
                FeedbackRequest(request_id=response.request_id, item_id=shown[0], event_type="click")
            )
            assert answer.position == 1  # the slot it was shown in, not its rank by score
        assert len(orders) > 1 and _explored(CHAMPION) == before + 6
        runtime.events.flush()
        store = runtime.events.store
        logged = [parse_line(line) for obj in runtime.events.objects for line in store.iter_lines(obj)]
        last = [
            event for event in logged if event.request_id == response.request_id and event.event_type == "impression"
        ]
        assert [event.item_id for event in sorted(last, key=lambda event: event.position)] == shown
    finally:
        runtime.close()


def test_which_requests_explore_is_a_function_of_the_request_id():
    draw = random.Random(5)
    ids = [str(uuid.UUID(int=draw.getrandbits(128), version=4)) for _ in range(20_000)]
    assert not any(explores(request_id, 0.0) for request_id in ids)
    assert all(explores(request_id, 1.0) for request_id in ids)
    share = sum(explores(request_id, 0.1) for request_id in ids) / len(ids)
    assert abs(share - 0.1) < 3 * (0.1 * 0.9 / len(ids)) ** 0.5  # within 3 standard errors
    assert explores("19999999-0000-4000-8000-000000000000", 0.1) and not explores(
        "1a000000-0000-4000-8000-000000000000", 0.1
    )
    assert sorted(shown_order(ids[0], 10)) == list(range(10))
    assert (shown_order(ids[0], 10) == shown_order(ids[0], 10)).all()
    with pytest.raises(ValueError, match="EXPLORE_SHARE"):
        ServingConfig.from_env({"LOOPLINE_SERVING_EXPLORE_SHARE": "1.5"})


def test_a_simulated_time_is_the_events_time_and_partition(runtime, served):
    world = served.world
    context = {"event_at": "2024-05-01T23:59:58.250Z", "page": "product", "device": "tablet", "query": "lamp"}
    ranked = runtime.rank(RankRequest.model_validate({"user_id": world.user_ids[5], "k": 2, "context": context}))
    runtime.feedback(
        FeedbackRequest(
            request_id=ranked.request_id,
            item_id=ranked.items[1].item_id,
            event_type="click",
            event_at="2024-05-02T00:00:03Z",
        )
    )
    runtime.events.flush()
    objects = sorted((obj.day.isoformat(), obj.hour) for obj in runtime.events.objects)
    assert objects == [("2024-05-01", 23), ("2024-05-02", 0)]
    store = runtime.events.store
    logged = [parse_line(line) for obj in runtime.events.objects for line in store.iter_lines(obj)]
    impressions = [event for event in logged if event.event_type == "impression"]
    assert [event.event_at.isoformat() for event in impressions] == ["2024-05-01T23:59:58.250000+00:00"] * 2
    assert {(event.page, event.device, event.query) for event in logged} == {("product", "tablet", "lamp")}
    click = next(event for event in logged if event.event_type == "click")
    assert click.position == 2 and click.event_at.isoformat() == "2024-05-02T00:00:03+00:00"


def test_canary_users_are_scored_by_the_canary_version(runtime, served):
    world = served.world
    FileStateStore(served.state_path).write(
        TrafficState(champion_version=world.champion, canary_version=world.challenger, canary_weight=0.5)
    )
    runtime.models.refresh()
    seen = {}
    for user in world.user_ids[:40]:
        response = runtime.rank(RankRequest(user_id=user, item_ids=world.item_ids[:10], k=3))
        seen[user] = (response.variant, response.model_version)
    for user, (variant, version) in seen.items():
        assert variant == assign_variant(user, 0.5)
        expected = world.challenger if variant == CANARY else world.champion
        assert version == f"loopline-ctr/{expected}"
    assert {variant for variant, _ in seen.values()} == {CHAMPION, CANARY}


def test_model_cache_swaps_only_what_changed_and_keeps_serving_on_a_failed_load(served):
    world = served.world
    store = FileStateStore(served.state_path)
    loads: list[str] = []

    def load(version: str):
        loads.append(version)
        return load_version(version)

    cache = ModelCache(load=load, store=store, default_champion=lambda: None)
    with pytest.raises(ModelsNotReadyError, match="nothing to serve"):
        cache.refresh()
    assert not cache.ready
    store.write(TrafficState(champion_version=world.champion))
    assert cache.refresh() is True and loads == [world.champion]
    assert cache.refresh() is False  # nothing changed
    store.write(TrafficState(champion_version=world.champion, canary_version=world.challenger, canary_weight=0.05))
    assert cache.refresh() is True and loads == [world.champion, world.challenger]
    store.write(TrafficState(champion_version=world.champion, canary_version=world.challenger, canary_weight=0.5))
    assert cache.refresh() is True and len(loads) == 2  # a new weight swaps the state, loads nothing
    assert cache.current().state.canary_weight == 0.5
    store.write(TrafficState(champion_version=world.challenger))  # promotion: the canary is reused
    assert cache.refresh() is True and len(loads) == 2
    assert cache.current().champion.version == world.challenger and cache.current().canary is None
    before = cache.current()
    store.write(TrafficState(champion_version=world.challenger, canary_version="999", canary_weight=0.1))
    assert cache.refresh_quietly() is False
    assert cache.current() is before and "999" in (cache.last_error or "")


class _CountingScorer:
    """The loaded TorchScript module, with its scoring calls counted."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def score_encoded(self, *args):
        self.calls += 1
        return self.module.score_encoded(*args)


def test_a_loaded_version_is_warmed_up_before_it_serves(served):
    """TorchScript optimizes on a module's first calls (~50 ms, then ~8 ms here): a new version is
    scored on a synthetic batch before the swap, so no user pays that."""
    world = served.world
    scorers: list[_CountingScorer] = []

    def load(version: str):
        loaded = load_version(version)
        scorers.append(_CountingScorer(loaded.module))
        return dataclasses.replace(loaded, module=scorers[-1])

    store = FileStateStore(served.state_path)
    store.write(TrafficState(champion_version=world.champion))
    cache = ModelCache(load=load, store=store, default_champion=lambda: None)
    assert cache.refresh() is True
    assert [scorer.calls for scorer in scorers] == [WARM_UP_CALLS]
    store.write(TrafficState(champion_version=world.champion, canary_version=world.challenger, canary_weight=0.5))
    assert cache.refresh() is True
    assert [scorer.calls for scorer in scorers] == [WARM_UP_CALLS, WARM_UP_CALLS]  # the champion is not re-warmed


def test_background_poller_picks_up_a_new_state(served):
    world = served.world
    store = FileStateStore(served.state_path)
    store.write(TrafficState(champion_version=world.champion))
    cache = ModelCache(store=store, poll_seconds=0.1)
    cache.start()
    try:
        _wait_for(lambda: cache.ready)
        store.write(TrafficState(champion_version=world.champion, canary_version=world.challenger, canary_weight=1.0))
        _wait_for(lambda: cache.current().canary is not None)
        assert cache.current().route("anyone")[0] == CANARY
    finally:
        cache.stop()


def test_without_a_state_the_default_champion_serves(served):
    cache = ModelCache(store=FileStateStore(served.state_path), default_champion=lambda: served.world.challenger)
    cache.refresh()
    assert cache.current().champion.version == served.world.challenger
    assert cache.current().state.canary_version is None
