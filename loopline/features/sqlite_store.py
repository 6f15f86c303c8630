"""Feast's SQLite online store (local profile) with a leaner read path.

Feast 0.67's ``SqliteOnlineStore.online_read`` sorts the rows, groups them with ``itertools``, and
converts every row's timestamp through a registered ``sqlite3`` converter; for one user and 100
items (about 1,100 rows) that is half of a lookup's CPU time and keeps the p99 above 10 ms. This
subclass reads the same table with one query, skips the per-row conversions (the stored integer is
turned into the same datetime once per entity), and only parses the requested features. For
``loopline.features.online`` it keeps decoded rows between lookups until SQLite's ``PRAGMA
data_version`` moves (``loopline.features.row_memory``). Writes, table management and the on-disk
layout are Feast's, unchanged. Configure it with
``online_store: {type: loopline.features.sqlite_store.LooplineSqliteOnlineStore, path: ...}``
(Feast resolves a dotted type to this class and its ``...Config``).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from feast import FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig

from loopline.features.row_memory import RowMemory

STORE_TYPE = "loopline.features.sqlite_store.LooplineSqliteOnlineStore"


class LooplineSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Same settings as Feast's SQLite online store (``path``)."""

    type: Literal["loopline.features.sqlite_store.LooplineSqliteOnlineStore"] = STORE_TYPE


class LooplineSqliteOnlineStore(RowMemory, SqliteOnlineStore):
    """``SqliteOnlineStore`` whose ``online_read`` returns the same values with less work per row."""

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: Sequence[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        if not entity_keys:
            return []
        version = config.entity_key_serialization_version
        keys = [_serialized_key(key.SerializeToString(), version) for key in entity_keys]
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        # "event_ts + 0" has no declared type, so sqlite3 hands back the stored integer unconverted.
        # The requested features are picked here rather than in SQL: "AND feature_name IN (...)"
        # doubles the query's time for 100 keys (it probes the primary key once per key and name).
        sql = f"SELECT entity_key, feature_name, value, event_ts + 0 FROM {name} WHERE entity_key IN ({_marks(keys)})"
        wanted = frozenset(requested_features) if requested_features else None
        found: dict[bytes, list] = {}
        parse = ValueProto.FromString
        for key, feature, value, stamp in self._get_conn(config).execute(sql, keys).fetchall():
            entry = found.get(key)
            if entry is None:
                entry = found[key] = [stamp, {}]
            elif stamp is not None and (entry[0] is None or stamp > entry[0]):
                entry[0] = stamp
            if wanted is None or feature in wanted:
                entry[1][feature] = parse(value)
        return [_entry(found.get(key)) for key in keys]

    def _memory_generation(self, config: RepoConfig) -> tuple[sqlite3.Connection, int]:
        """This connection and SQLite's ``PRAGMA data_version``, which moves whenever another connection
        (a materialization, a re-apply, another process) has committed; writes through this
        connection do not move it, and ``RowMemory``'s write methods drop the kept rows instead."""
        conn = self._get_conn(config)
        return conn, conn.execute("PRAGMA data_version").fetchone()[0]


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


@functools.lru_cache(maxsize=16_384)
def _serialized_key(key: bytes, version: int) -> bytes:
    """Feast's table key of an entity key (given as its proto's bytes): Feast's ``serialize_entity_key``,
    remembered for the most recent 16,384 keys (about 5 MB), as it costs ~2.5 us a key in Python."""
    return serialize_entity_key(EntityKeyProto.FromString(key), entity_key_serialization_version=version)


@functools.lru_cache(maxsize=4_096)
def _moment(stamp: int) -> datetime:
    # Exactly Feast's conversion (naive local time from the epoch, then labelled UTC), so both
    # read paths return the same datetime on any machine time zone.
    return datetime.fromtimestamp(int(stamp)).replace(tzinfo=UTC)


def _entry(entry: list | None) -> tuple[datetime | None, dict[str, ValueProto] | None]:
    if entry is None:
        return None, None
    stamp, values = entry
    return (None if stamp is None else _moment(stamp)), values
