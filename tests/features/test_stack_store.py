"""The stack profile against the machine's servers: SQL registry and marts in PostgreSQL, Redis online.

Each test gets a fresh database and its own Feast project (Redis keys end with the project name and
are deleted afterwards, see conftest.stack_settings).
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
import redis
from feature_marts import (
    DAY_1,
    DAYS,
    ITEMS,
    REDIS_URL,
    SERVICE_ITEM,
    SERVICE_USER,
    USERS,
    Env,
    at,
    build_env,
    check_training_set_against_the_oracle,
    latest,
    materialize_ctr_changes,
    replace_user_snapshot,
    same,
    standard_marts,
)

from loopline import features
from loopline.features.redis_store import GENERATION_KEY

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def redis_dump(project: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash of a Feast project in Redis, keyed by entity key without the project suffix (not the
    row memory's generation counter, which each write moves)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        suffix = project.encode()
        counter = GENERATION_KEY.format(project=project).encode()
        keys = [
            key for key in client.scan_iter(match=b"*" + suffix, count=1000) if key.endswith(suffix) and key != counter
        ]
        return {key[: -len(suffix)]: client.hgetall(key) for key in keys}
    finally:
        client.close()


def test_stack_plan_apply_plan_is_clean(stack_settings: str) -> None:
    store = features.feature_store()
    assert (
        store.config.registry.registry_type == "sql"
        and store.config.online_store.type == "loopline.features.redis_store.LooplineRedisOnlineStore"
    )
    assert store.config.offline_store.type == "postgres"
    first = features.plan(store)
    assert ("FEATURE_SERVICE", "ctr_ranker_v1", "CREATE") in first.changes
    features.apply(store)
    again = features.plan(features.feature_store())  # a new process would read the registry from PostgreSQL
    assert not again.has_changes, again.text
    assert not features.apply(store).has_changes


def test_stack_materialize_is_idempotent_and_a_backfill_equals_daily_runs(stack_env: Env) -> None:
    for day in DAYS:
        record = features.materialize_interval(day, day + timedelta(days=1), store=stack_env.store)
        assert record["exported"] == {}  # the PostgreSQL offline store reads the marts in place
    daily = redis_dump(stack_env.project)
    assert len(daily) == len(USERS) + len(ITEMS)
    features.materialize_interval(DAYS[-1], DAYS[-1] + timedelta(days=1), store=stack_env.store)
    assert redis_dump(stack_env.project) == daily  # the same interval again changes nothing

    backfill = features.feature_store(project=f"{stack_env.project}_b")
    features.apply(backfill)
    features.materialize_interval(DAYS[0], DAYS[-1] + timedelta(days=1), store=backfill)
    assert redis_dump(f"{stack_env.project}_b") == daily


def test_stack_training_is_point_in_time_and_online_equals_offline(stack_settings: str) -> None:
    marts = standard_marts()
    between = marts.add_impression(USERS[0], ITEMS[0], at(DAYS[1], 18))
    after_all = marts.add_impression(USERS[0], ITEMS[1], at(DAYS[-1] + timedelta(days=1), 6))
    env = build_env(marts)
    end = DAYS[-1] + timedelta(days=1)
    features.materialize_interval(DAY_1, end, store=env.store)
    # A value recorded after the impression (the next snapshot, even corrected later) must not reach it.
    replace_user_snapshot(env.warehouse_uri, USERS[0], DAYS[1], ctr_28d=0.987654)
    frame = features.training_set(DAY_1, end + timedelta(days=1), store=env.store).set_index("impression_id")
    earlier = [r for r in marts.users if r["user_id"] == USERS[0] and r["snapshot_date"] == DAYS[0]][0]
    assert same(frame.loc[between["impression_id"], "user_ctr_28d"], earlier["ctr_28d"])
    assert len(frame) == 2

    result = features.online(
        USERS[0], [ITEMS[1], "nobody"], store=env.store, request_features={"request_at": at(end, 6)}
    )
    assert result.missing_items == ["nobody"] and not result.missing_users
    user = latest(marts.users, "user_id", USERS[0])
    item = latest(marts.items, "item_id", ITEMS[1])
    row = frame.loc[after_all["impression_id"]]
    for name in SERVICE_USER:
        assert same(result.columns[name][0], user[name.removeprefix("user_")]), name
    for name in SERVICE_ITEM:
        assert same(result.columns[name][0], item[name.removeprefix("item_")]), name
    for name in features.feature_columns(env.store):
        assert same(result.columns[name][0], row[name]), name


def test_stack_training_set_equals_a_point_in_time_oracle(stack_settings: str) -> None:
    check_training_set_against_the_oracle()  # the PostgreSQL offline store's joins, same expectations


def test_online_on_redis_answers_what_redis_holds_after_every_write(stack_env: Env) -> None:
    """The Redis store keeps rows it has read while the project's generation counter is unchanged: a
    materialization through another store object (as another process) or through the same one moves
    it, and the very next lookup reads Redis again. With key_ttl_seconds nothing is kept."""
    store = stack_env.store
    online_store = store._get_provider().online_store
    end = DAYS[-1] + timedelta(days=1)
    features.materialize_interval(DAY_1, end, store=store)
    first = features.online(USERS[0], list(ITEMS), store=store)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        counter = GENERATION_KEY.format(project=stack_env.project)
        commands_before = client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
        again = features.online(USERS[0], list(ITEMS), store=store)
        assert again.columns == first.columns
        assert client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0) == commands_before  # memory
        generation = client.get(counter)

        other = features.feature_store()  # its own online-store object, as another process has
        assert other._get_provider().online_store is not online_store
        materialize_ctr_changes(stack_env, other, end, users={USERS[0]: 0.987}, items={ITEMS[0]: 0.654})
        assert client.get(counter) != generation
        after = features.online(USERS[0], list(ITEMS), store=store)
        assert after.columns["user_ctr_28d"] == [0.987] * len(ITEMS)
        assert after.columns["item_ctr_28d"][0] == 0.654
        assert after.columns["item_ctr_28d"][1:] == first.columns["item_ctr_28d"][1:]

        later = end + timedelta(days=1)
        materialize_ctr_changes(stack_env, store, later, items={ITEMS[1]: 0.321})  # this store object
        assert features.online(USERS[0], list(ITEMS), store=store).columns["item_ctr_28d"][:2] == [0.654, 0.321]

        expiring = store.config.online_store.model_copy(update={"key_ttl_seconds": 3600})
        config = SimpleNamespace(project=stack_env.project, online_store=expiring)
        assert online_store._memory_generation(config) is None  # rows may expire without a write
        assert online_store._memory_generation(store.config) == client.get(counter)
    finally:
        client.close()
