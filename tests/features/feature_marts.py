"""Small, hand-made feature marts for the Feast tests (faster than a dbt build, and exact), and the
helpers and checks the test modules share.

``Snapshot`` rows have every column the feature views read, with values derived from the entity
and the day (so a test can recompute any of them); ``write_marts`` creates ``user_features``,
``item_features`` and ``training_examples`` with the dbt marts' column names and types on DuckDB or
PostgreSQL through ``loopline.warehouse``.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa
import pytest

from loopline import features
from loopline.features import _repo
from loopline.warehouse import Column, Table, Warehouse

REDIS_URL = os.environ.get("LOOPLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

CATEGORIES = ("books", "shoes", "toys")
_PORTABLE = {"Int64": "bigint", "Float64": "double", "String": "varchar"}
_ARROW = {"bigint": pa.int64(), "double": pa.float64(), "varchar": pa.string()}


def feature_at(day: date) -> datetime:
    """Midnight UTC after ``day``: the stamp of that day's snapshot."""
    return datetime.combine(day + timedelta(days=1), time(0), UTC)


def _number(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def snapshot_values(columns: dict[str, Any], entity_id: str, day: date) -> dict[str, Any]:
    """Deterministic values for every mart column; about one value in seven is NULL (never a key)."""
    values: dict[str, Any] = {}
    for name, dtype in columns.items():
        seed = _number(entity_id, day, name)
        kind = str(dtype)
        if "category" in name and "String" in kind:
            values[name] = CATEGORIES[seed % len(CATEGORIES)]
        elif seed % 7 == 0 and name not in ("category", "top_category_share_28d"):
            values[name] = None
        elif "Int64" in kind:
            values[name] = seed % 500
        elif "Float64" in kind:
            values[name] = round((seed % 100_000) / 100_000, 6)
        else:
            values[name] = f"{name}-{seed % 10}"
    return values


@dataclass
class Marts:
    """Rows of the three marts, to be written with ``write_marts``."""

    users: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    impressions: list[dict[str, Any]] = field(default_factory=list)

    def add_user(self, user_id: str, day: date, **overrides: Any) -> dict[str, Any]:
        row = {"user_id": user_id, "snapshot_date": day, "feature_at": feature_at(day)}
        row |= snapshot_values(_repo("views").USER_COLUMNS, user_id, day) | overrides
        self.users.append(row)
        return row

    def add_item(self, item_id: str, day: date, **overrides: Any) -> dict[str, Any]:
        row = {"item_id": item_id, "snapshot_date": day, "feature_at": feature_at(day)}
        row |= snapshot_values(_repo("views").ITEM_COLUMNS, item_id, day) | overrides
        self.items.append(row)
        return row

    def add_impression(self, user_id: str, item_id: str, at: datetime, position: int = 0, **overrides: Any) -> dict:
        number = len(self.impressions)
        row = {
            "impression_id": f"imp-{number:06d}",
            "request_id": f"req-{user_id}-{at.isoformat()}",
            "user_id": user_id,
            "item_id": item_id,
            "session_id": f"sess-{user_id}-{at.date()}",
            "event_at": at,
            "event_date": at.date(),
            "position": position,
            "page": "home",
            "device": "mobile",
            "price": 10.0 + number % 7,
            "variant": "champion",
            "model_version": "v1",
            "is_clicked": number % 3 == 0,
            "is_purchased": number % 9 == 0,
            "clicked_at": at + timedelta(minutes=1) if number % 3 == 0 else None,
            "purchased_at": at + timedelta(minutes=5) if number % 9 == 0 else None,
        } | overrides
        self.impressions.append(row)
        return row

    def daily(self, users: Iterable[str], items: Iterable[str], days: Iterable[date]) -> Marts:
        """A snapshot of every user and item on every day."""
        for day in days:
            for user_id in users:
                self.add_user(user_id, day)
            for item_id in items:
                self.add_item(item_id, day)
        return self


def _snapshot_table(name: str, key: str, columns: dict[str, Any]) -> Table:
    portable = [Column(column, _PORTABLE[str(dtype)]) for column, dtype in columns.items()]
    return Table(
        name,
        (Column(key, "varchar"), Column("snapshot_date", "date"), Column("feature_at", "timestamptz"), *portable),
    )


TRAINING_EXAMPLES = Table(
    "training_examples",
    (
        Column("impression_id", "varchar"),
        Column("request_id", "varchar"),
        Column("user_id", "varchar"),
        Column("item_id", "varchar"),
        Column("session_id", "varchar"),
        Column("event_at", "timestamptz"),
        Column("event_date", "date"),
        Column("position", "integer"),
        Column("page", "varchar"),
        Column("device", "varchar"),
        Column("price", "double"),
        Column("variant", "varchar"),
        Column("model_version", "varchar"),
        Column("is_clicked", "boolean"),
        Column("is_purchased", "boolean"),
        Column("clicked_at", "timestamptz"),
        Column("purchased_at", "timestamptz"),
    ),
)
_ARROW_OF = _ARROW | {
    "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
}


def _arrow(table: Table, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            column.name: pa.array([row.get(column.name) for row in rows], _ARROW_OF[column.type])
            for column in table.columns
        }
    )


def write_marts(uri: str, marts: Marts) -> None:
    """(Re)create the three marts in the warehouse ``uri`` with exactly ``marts``' rows."""
    views = _repo("views")
    tables = (
        (_snapshot_table("user_features", "user_id", views.USER_COLUMNS), marts.users),
        (_snapshot_table("item_features", "item_id", views.ITEM_COLUMNS), marts.items),
        (TRAINING_EXAMPLES, marts.impressions),
    )
    with Warehouse.from_uri(uri) as warehouse:
        for table, rows in tables:
            warehouse.drop_table(table.name)
            warehouse.ensure_table(table)
            if rows:
                warehouse.load_arrow(table.name, _arrow(table, rows))


def materialize_ctr_changes(
    env: Env, store: Any, day: date, *, users: dict[str, float] | None = None, items: dict[str, float] | None = None
) -> None:
    """New snapshots on ``day`` with the given ``ctr_28d`` per user and per item, written to the marts
    and materialized for that day through ``store`` (how the row-memory tests change the online store)."""
    for user_id, ctr in (users or {}).items():
        env.marts.add_user(user_id, day, ctr_28d=ctr)
    for item_id, ctr in (items or {}).items():
        env.marts.add_item(item_id, day, ctr_28d=ctr)
    write_marts(env.warehouse_uri, env.marts)
    features.materialize_interval(day, day + timedelta(days=1), store=store)


def replace_user_snapshot(uri: str, user_id: str, day: date, **values: Any) -> None:
    """Change columns of one user snapshot in place (a late correction of that day)."""
    assignments = ", ".join(f"{name} = ?" for name in values)
    with Warehouse.from_uri(uri) as warehouse:
        warehouse.execute(
            f"UPDATE user_features SET {assignments} WHERE user_id = ? AND snapshot_date = ?",
            [*values.values(), user_id, day],
        )


def as_of(rows: list[dict[str, Any]], key: str, entity_id: str, at: datetime, ttl: timedelta) -> dict | None:
    """The oracle of a point-in-time join: the newest snapshot stamped at or before ``at``, within ``ttl``."""
    candidates = [
        row for row in rows if row[key] == entity_id and row["feature_at"] <= at and at - row["feature_at"] <= ttl
    ]
    return max(candidates, key=lambda row: row["feature_at"]) if candidates else None


def latest(rows: list[dict[str, Any]], key: str, entity_id: str) -> dict | None:
    """The newest snapshot of an entity (what the online store should hold after materializing all)."""
    candidates = [row for row in rows if row[key] == entity_id]
    return max(candidates, key=lambda row: row["feature_at"]) if candidates else None


# --- the standard scenario and an applied store (shared by the test modules) ---------------------

DAY_1 = date(2026, 3, 1)
DAYS = tuple(DAY_1 + timedelta(days=offset) for offset in range(3))  # snapshots of 03-01 .. 03-03
USERS = tuple(f"user-{number:02d}" for number in range(6))
ITEMS = tuple(f"item-{number:02d}" for number in range(10))


@dataclass
class Env:
    """One profile's store with marts written and the repository applied."""

    store: Any
    warehouse_uri: str
    marts: Marts
    project: str


def standard_marts() -> Marts:
    """Snapshots of every user and item on three days (feature_at 03-02 .. 03-04)."""
    return Marts().daily(USERS, ITEMS, DAYS)


def build_env(marts: Marts) -> Env:
    """Write ``marts`` to the active profile's warehouse, build its store and apply the repository."""
    from loopline import config

    settings = config.settings()
    write_marts(settings.warehouse_uri, marts)
    store = features.feature_store()
    features.apply(store)
    return Env(store, settings.warehouse_uri, marts, features.project_name())


# --- checks shared by the local and stack tests ----------------------------------------------------

TTL = timedelta(days=2)
SERVICE_USER = _repo("services").CTR_RANKER_V1_USER_FEATURES
SERVICE_ITEM = _repo("services").CTR_RANKER_V1_ITEM_FEATURES


def at(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def same(actual, expected) -> bool:
    """Equality where None and NaN both mean missing, and numbers compare as floats."""

    def missing(value) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    if missing(expected) or missing(actual):
        return missing(expected) and missing(actual)
    if isinstance(expected, str):
        return actual == expected
    return float(actual) == pytest.approx(float(expected), abs=1e-12)


def check_training_set_against_the_oracle() -> None:
    """Impressions at snapshot stamps, between them, past the TTL, of unknown entities, and four items
    sharing one user and instant: every row is kept and every feature equals the oracle's value."""
    marts = standard_marts()
    moments = [
        at(DAYS[0], 9),
        at(DAYS[1], 0),
        at(DAYS[1], 13, 5),
        at(DAYS[2], 23, 59),
        at(DAYS[2] + timedelta(days=2), 23),
    ]
    moments.append(at(DAYS[2] + timedelta(days=3), 1))  # 49 h after the last stamp: outside the TTL
    for moment in moments:
        for position, item_id in enumerate(ITEMS[:4]):  # one request: a user and four items at one instant
            marts.add_impression(USERS[1], item_id, moment, position=position)
    marts.add_impression("new-user", "new-item", at(DAYS[1], 12))
    env = build_env(marts)
    features.materialize_interval(DAY_1, DAYS[-1] + timedelta(days=1), store=env.store)
    frame = features.training_set(DAY_1, DAYS[-1] + timedelta(days=4), store=env.store)

    assert list(frame["impression_id"]) == sorted(
        (row["impression_id"] for row in marts.impressions),
        key=lambda i: (marts.impressions[int(i[4:])]["event_at"], i),
    )
    columns = features.feature_columns(env.store)
    assert frame.columns[-len(columns) :].tolist() == columns
    by_id = {row["impression_id"]: row for row in marts.impressions}
    for row in frame.to_dict("records"):
        source = by_id[row["impression_id"]]
        assert row["is_clicked"] == source["is_clicked"] and row["position"] == source["position"]
        user = as_of(marts.users, "user_id", row["user_id"], row["event_at"], TTL)
        item = as_of(marts.items, "item_id", row["item_id"], row["event_at"], TTL)
        for name in SERVICE_USER:
            assert same(row[name], user and user[name.removeprefix("user_")]), (row["impression_id"], name)
        for name in SERVICE_ITEM:
            assert same(row[name], item and item[name.removeprefix("item_")]), (row["impression_id"], name)
        expected = features._repo("views").request_features(
            {
                "position": [row["position"]],
                "request_at": [row["event_at"].to_pydatetime()],
                "user_top_category_28d": [user and user["top_category_28d"]],
                "user_top_category_share_28d": [user and user["top_category_share_28d"]],
                "item_category": [item and item["category"]],
            }
        )
        for name in features._repo("services").CTR_RANKER_V1_REQUEST_FEATURES:
            assert same(row[name], expected[name][0]), (row["impression_id"], name)
    # The last moment is outside the TTL: its rows stay, with NaN features.
    late = frame[frame["event_at"] == moments[-1]]
    assert len(late) == 4 and late["user_ctr_28d"].isna().all()
    assert frame.attrs["missing_share"]["user_ctr_28d"] == pytest.approx(frame["user_ctr_28d"].isna().mean())
    columns = features.feature_columns(env.store)
    assert frame.attrs["rows_missing_any"] == pytest.approx(frame[columns].isna().any(axis=1).mean())
