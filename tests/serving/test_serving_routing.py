"""Routing by user hash, the traffic state and its three stores (file, PostgreSQL, Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopline.serving.routing import (
    BUCKETS,
    CANARY,
    CHAMPION,
    FileStateStore,
    PostgresStateStore,
    RedisStateStore,
    RolloutStateError,
    TrafficState,
    assign_variant,
    state_store,
    user_bucket,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
USERS = [f"u{index:07d}" for index in range(100_000)]

# Buckets pinned once: they must never change (a change would move users between variants) and
# must not depend on the process (Python's hash() is salted per process).
GOLDEN_BUCKETS = {"u000001": 2472, "u000002": 7840, "alice": 4729, "": 9876, "ü-ß-€": 2386}


def test_buckets_are_pinned_and_in_range():
    assert {user: user_bucket(user) for user in GOLDEN_BUCKETS} == GOLDEN_BUCKETS
    assert all(0 <= user_bucket(user) < BUCKETS for user in USERS[:1000])


def test_another_process_computes_the_same_buckets():
    code = (
        "import json; from loopline.serving.routing import user_bucket; "
        f"print(json.dumps({{u: user_bucket(u) for u in {list(GOLDEN_BUCKETS)!r}}}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"}
    ).stdout
    assert json.loads(output) == GOLDEN_BUCKETS


@given(st.text(max_size=40), st.floats(min_value=0.0, max_value=1.0))
def test_the_same_user_always_gets_the_same_variant(user_id, weight):
    first = assign_variant(user_id, weight)
    assert all(assign_variant(user_id, weight) == first for _ in range(3))
    assert first in (CHAMPION, CANARY)


@given(st.text(max_size=40), st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_raising_the_weight_only_moves_users_to_the_canary(user_id, low, high):
    low, high = min(low, high), max(low, high)
    if assign_variant(user_id, low) == CANARY:
        assert assign_variant(user_id, high) == CANARY


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.05, 0.25, 0.5, 0.9, 1.0])
def test_canary_share_over_100k_users_is_within_one_point_of_the_weight(weight):
    share = sum(assign_variant(user, weight) == CANARY for user in USERS) / len(USERS)
    assert abs(share - weight) <= 0.01, (weight, share)


def test_a_state_routes_only_when_it_has_a_canary():
    assert TrafficState(champion_version="3").variant_of("anyone") == CHAMPION
    everyone = TrafficState(champion_version="3", canary_version="4", canary_weight=1.0)
    assert everyone.variant_of("anyone") == CANARY
    assert everyone.version_of(CANARY) == "4" and everyone.version_of(CHAMPION) == "3"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"champion_version": "latest"}, "champion_version"),
        ({"champion_version": None}, "champion_version"),
        ({"champion_version": "3", "canary_version": "v4"}, "canary_version"),
        ({"champion_version": "3", "canary_version": "4", "canary_weight": 1.5}, "canary_weight"),
        ({"champion_version": "3", "canary_version": "4", "canary_weight": -0.1}, "canary_weight"),
        ({"champion_version": "3", "canary_version": "4", "canary_weight": True}, "canary_weight"),
        ({"champion_version": "3", "canary_weight": 0.2}, "no canary_version"),
        ({"champion_version": "3", "rollout_id": " "}, "rollout_id"),
        ({"champion_version": "3", "updated_at": datetime(2026, 1, 1)}, "updated_at"),
    ],
)
def test_invalid_states_are_refused_naming_the_field(fields, message):
    with pytest.raises(RolloutStateError, match=message):
        TrafficState(**fields)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"canary_version": "2"}', "champion_version is required"),
        ('{"champion_version": "2", "weight": 0.5}', "unknown fields"),
        ('{"champion_version": "2", "updated_at": "yesterday"}', "updated_at"),
    ],
)
def test_bad_documents_are_refused(document, message):
    with pytest.raises(RolloutStateError, match=message):
        TrafficState.from_json(document)


def test_state_round_trips_through_json():
    state = TrafficState(
        champion_version=7, canary_version="8", canary_weight=0.25, rollout_id="r-1", updated_at=datetime.now(UTC)
    )
    assert state.champion_version == "7"
    assert TrafficState.from_json(state.to_json()) == state
    later = state.with_changes(canary_weight=0.5)
    assert later.canary_weight == 0.5 and later.updated_at >= state.updated_at and later.rollout_id == "r-1"


# --- the three stores -------------------------------------------------------------------------------


@pytest.fixture(params=["file", "postgresql", "redis"])
def store(request, tmp_path):
    kind = request.param
    if kind == "file":
        yield state_store((tmp_path / "state" / "rollout.json").as_uri())
        return
    if kind == "postgresql":
        yield state_store(request.getfixturevalue("postgres_url"))
        return
    key = f"loopline-test:rollout:{uuid.uuid4().hex}"
    redis_store = state_store(f"{REDIS_URL}?key={key}")
    try:
        yield redis_store
    finally:
        redis_store.clear()


def test_store_kind_follows_the_uri(store):
    assert isinstance(store, FileStateStore | PostgresStateStore | RedisStateStore)


def test_empty_store_reads_none_then_what_was_written(store):
    assert store.read() is None
    first = TrafficState(champion_version="1", rollout_id="r-a")
    store.write(first)
    assert store.read() == first
    second = first.with_changes(canary_version="2", canary_weight=0.05, updated_at=first.updated_at + timedelta(1))
    store.write(second)  # an upsert / replacement, not a second row or key
    assert store.read() == second
    store.clear()
    assert store.read() is None


def test_a_corrupt_document_is_an_error_not_a_default(store, tmp_path):
    if isinstance(store, FileStateStore):
        store.path.parent.mkdir(parents=True, exist_ok=True)
        store.path.write_text('{"champion_version": "x"}')
    elif isinstance(store, RedisStateStore):
        store._client.set(store.key, '{"champion_version": "x"}')
    else:
        store.write(TrafficState(champion_version="1"))
        import psycopg2

        with psycopg2.connect(store.url) as connection, connection.cursor() as cursor:
            cursor.execute(f"UPDATE {store.table} SET document = %s", ('{"champion_version": "x"}',))
    with pytest.raises(RolloutStateError, match="champion_version"):
        store.read()


def test_file_store_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    store = FileStateStore(tmp_path / "rollout.json")
    for weight in (0.0, 0.05, 0.25):
        store.write(TrafficState(champion_version="1", canary_version="2", canary_weight=weight))
    assert [path.name for path in tmp_path.iterdir()] == ["rollout.json"]
    assert store.read().canary_weight == 0.25


def test_unreachable_servers_and_unknown_schemes_are_named(tmp_path):
    with pytest.raises(RolloutStateError, match="expected file://"):
        state_store("s3://bucket/rollout.json")
    with pytest.raises(RolloutStateError, match="cannot connect"):
        state_store("postgresql://postgres@127.0.0.1:1/nothing").read()
    with pytest.raises(RolloutStateError, match="get failed"):
        state_store("redis://127.0.0.1:1/0").read()


def test_default_store_is_the_settings_rollout_state_uri(isolated_home: Path):
    store = state_store()
    assert isinstance(store, FileStateStore)
    assert store.path == isolated_home / "rollout.json"
