"""``features.online`` against Feast's own ``get_online_features``, on SQLite (local) and Redis (stack).

``online`` reads Feast's online store through the store's online-store class and assembles the
answer itself. These tests pin that it returns exactly what ``FeatureStore.get_online_features``
returns for the same FeatureService and entity rows (values, on-demand features, unknown users and
items, repeated items) on a store holding fresh, just-expired and months-old snapshots: Feast 0.67
serves a row older than its view's TTL online as it is (the TTL bounds historical retrieval only),
so an expired row must come back with its values, not as missing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from feature_marts import (
    DAY_1,
    DAYS,
    ITEMS,
    SERVICE_ITEM,
    SERVICE_USER,
    TTL,
    USERS,
    Env,
    Marts,
    build_env,
    feature_at,
    latest,
    same,
    standard_marts,
)

from loopline import features

FRESH_USER, STALE_USER, OLD_USER = USERS[0], USERS[1], USERS[4]
FRESH_ITEMS, STALE_ITEMS, OLD_ITEMS = ITEMS[0:2], ITEMS[2:4], ITEMS[6:8]
# Each age twice, unknown items, and repeats: Feast reads each distinct entity once and fans it out.
LOOKUP_ITEMS = [
    FRESH_ITEMS[0],
    STALE_ITEMS[0],
    OLD_ITEMS[0],
    "ghost-item",
    FRESH_ITEMS[1],
    STALE_ITEMS[1],
    OLD_ITEMS[1],
    FRESH_ITEMS[0],
    "ghost-item",
    STALE_ITEMS[0],
]


def mixed_age_marts(today: date) -> tuple[Marts, date, date]:
    """The standard March snapshots (months old) plus, for a few entities, a snapshot stamped at
    today's midnight (inside the 2-day TTL) or three days ago (just outside it)."""
    fresh_day, stale_day = today - timedelta(days=1), today - timedelta(days=4)
    marts = standard_marts()
    marts.add_user(FRESH_USER, fresh_day)
    marts.add_user(STALE_USER, stale_day)
    for item_id in FRESH_ITEMS:
        marts.add_item(item_id, fresh_day)
    for item_id in STALE_ITEMS:
        marts.add_item(item_id, stale_day)
    return marts, fresh_day, stale_day


def feast_lookup(store, user_id: str, item_ids: list[str], request: dict) -> tuple[dict, list, list, set]:
    """Feast's answer for the service: values per feature, missing users and items, statuses seen.

    An entity is missing where its view's event timestamp is zero: SQLite answers an unknown key
    with NOT_FOUND, Redis with PRESENT, empty values and time zero.
    """
    service = store.get_feature_service(features.CTR_RANKER_V1)
    rows = {"user_id": [user_id] * len(item_ids), "item_id": list(item_ids)} | request
    response = store.get_online_features(features=service, entity_rows=rows)
    vectors = dict(zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True))
    user_stamp = vectors[SERVICE_USER[0]].event_timestamps[0]
    item_stamps = vectors[SERVICE_ITEM[0]].event_timestamps
    missing_users = [] if user_stamp.seconds or user_stamp.nanos else [user_id]
    missing_items = list(
        dict.fromkeys(item for item, stamp in zip(item_ids, item_stamps, strict=True) if not stamp.seconds)
    )
    statuses = {status for name in (*SERVICE_USER, *SERVICE_ITEM) for status in vectors[name].statuses}
    return response.to_dict(), missing_users, missing_items, statuses


def check_online_equals_feast(env: Env, today: date, fresh_day: date, stale_day: date) -> None:
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    features.materialize_interval(DAY_1, DAYS[-1] + timedelta(days=1), store=env.store)
    features.materialize_interval(stale_day, today, store=env.store)
    now = datetime.now(UTC)
    # The premises: fresh rows inside the TTL, stale and March rows outside it.
    assert now - feature_at(fresh_day) <= TTL < now - feature_at(stale_day) < now - feature_at(DAYS[-1])
    assert env.store.get_feature_view("user_features").ttl == env.store.get_feature_view("item_features").ttl == TTL

    count = len(LOOKUP_ITEMS)
    request = {"position": list(range(count)), "request_at": [datetime(2026, 5, 4, 13, 30, tzinfo=UTC)] * count}
    columns = features.feature_columns(env.store)
    statuses_seen: set = set()
    for user_id in (FRESH_USER, STALE_USER, OLD_USER, "ghost-user"):
        ours = features.online(user_id, LOOKUP_ITEMS, store=env.store, request_features=request)
        expected, missing_users, missing_items, statuses = feast_lookup(env.store, user_id, LOOKUP_ITEMS, request)
        statuses_seen |= statuses
        assert ours.feature_names == columns
        for name in columns:
            assert ours.columns[name] == expected[name], (user_id, name)
        assert (ours.missing_users, ours.missing_items) == (missing_users, missing_items), user_id
        # And against the marts: the newest materialized snapshot, however old; None for unknown entities.
        assert ours.missing_users == ([user_id] if user_id == "ghost-user" else [])
        assert ours.missing_items == ["ghost-item"]
        user = latest(env.marts.users, "user_id", user_id)
        for index, item_id in enumerate(LOOKUP_ITEMS):
            item = latest(env.marts.items, "item_id", item_id)
            for name in SERVICE_USER:
                assert same(ours.columns[name][index], user and user[name.removeprefix("user_")]), (user_id, name)
            for name in SERVICE_ITEM:
                assert same(ours.columns[name][index], item and item[name.removeprefix("item_")]), (item_id, name)
        assert ours.columns["hour_of_day"] == [13] * count
    assert latest(env.marts.users, "user_id", STALE_USER)["snapshot_date"] == stale_day  # served though expired
    assert FieldStatus.OUTSIDE_MAX_AGE not in statuses_seen  # Feast 0.67 does not age rows out online


def test_online_equals_feast_on_sqlite() -> None:
    today = datetime.now(UTC).date()
    marts, fresh_day, stale_day = mixed_age_marts(today)
    env = build_env(marts)
    assert env.store.config.online_store.type.endswith("LooplineSqliteOnlineStore")
    check_online_equals_feast(env, today, fresh_day, stale_day)


@pytest.mark.slow
@pytest.mark.stack
def test_online_equals_feast_on_redis(stack_settings: str) -> None:
    today = datetime.now(UTC).date()
    marts, fresh_day, stale_day = mixed_age_marts(today)
    env = build_env(marts)
    assert env.store.config.online_store.type == "loopline.features.redis_store.LooplineRedisOnlineStore"
    check_online_equals_feast(env, today, fresh_day, stale_day)
