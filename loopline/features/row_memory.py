"""Decoded online rows kept in memory between lookups, until the store says its rows changed.

``RowMemory`` is a mixin for a Feast online store class. It adds ``online_read_values``, the read
``loopline.features.online`` uses: string entities given by id, the values decoded to Python, and
every row read kept (per view, join key and feature list) while the store's *generation* stays the
same. A subclass says what the generation is (``_memory_generation``): something that changes
whenever another writer may have changed the rows, read before the rows are read, so a write that
lands between the two only makes the next lookup read again. Writes through the same store object
drop the kept rows (``_after_write``: the mixin wraps ``online_write_batch``, ``update`` and
``teardown``; a store with other writes wraps those too). So every answer is what the store
holds at that moment, while a serving process stops fetching and decoding the same items' rows
(and building their Feast entity keys) on every request.

- ``loopline.features.sqlite_store``: the generation is SQLite's ``PRAGMA data_version``, which
  moves whenever another connection commits.
- ``loopline.features.redis_store``: a counter key in Redis that this class increments after each
  of its writes, in any process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import Any

from feast import FeatureView
from feast.repo_config import RepoConfig

# Entities whose decoded rows are kept per view and feature list (then that memory starts over).
MAX_CACHED_ENTITIES = 200_000

Row = tuple[datetime | None, tuple | None]  # (event time, decoded values in the requested order)


class RowMemory:
    """``online_read_values`` answering rows already read from memory (mix in before the store class)."""

    def _memory_generation(self, config: RepoConfig) -> Hashable | None:
        """The store's generation now; None: keep nothing (every read goes to the store)."""
        raise NotImplementedError

    def online_read_values(
        self,
        config: RepoConfig,
        table: FeatureView,
        join_key: str,
        entity_ids: Sequence[str],
        requested_features: Sequence[str],
    ) -> list[Row]:
        """``online_read`` of string entities given by id, with the values decoded: per id, its event
        time and the Python value of each of ``requested_features`` in that order (None where absent
        or null); a missing entity gets what the store's ``online_read`` answers for it, decoded.
        The tuples are shared between calls: read them, do not change them."""
        if not entity_ids:
            return []
        features = tuple(requested_features)
        memory = self._memory(config)
        if memory is None:
            return read_rows(self, config, table, join_key, entity_ids, features)
        cache = memory.setdefault((config.project, table.name, join_key, features), {})
        missing = [entity_id for entity_id in dict.fromkeys(entity_ids) if entity_id not in cache]
        if not missing:
            return [cache[entity_id] for entity_id in entity_ids]
        fetched = dict(zip(missing, read_rows(self, config, table, join_key, missing, features), strict=True))
        if len(cache) + len(fetched) > MAX_CACHED_ENTITIES:
            cache.clear()
        cache.update(fetched)
        return [fetched[entity_id] if entity_id in fetched else cache[entity_id] for entity_id in entity_ids]

    # The writes every online store has: each drops this object's rows (``_after_write``) even if it fails.
    def online_write_batch(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201 - Feast's
        try:
            return super().online_write_batch(config, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._after_write(config)

    def update(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        try:
            return super().update(config, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._after_write(config)

    def teardown(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        try:
            return super().teardown(config, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._after_write(config)

    def _after_write(self, config: RepoConfig) -> None:  # noqa: ARG002 - a subclass may need it
        """After a write through this store object: drop its kept rows (a subclass may do more)."""
        self._forget_reads()

    def _memory(self, config: RepoConfig) -> dict | None:
        """The rows kept for the current generation (emptied when it moved); None: keep nothing."""
        generation = self._memory_generation(config)
        if generation is None:
            return None
        with self._memory_lock:
            state = self._memory_state
            if state is None or state[0] != generation:
                state = self._memory_state = (generation, {})
            return state[1]

    def _forget_reads(self) -> None:
        """Drop every kept row (after a write through this store object)."""
        with self._memory_lock:
            self._memory_state = None

    @functools.cached_property
    def _memory_lock(self) -> threading.Lock:
        return threading.Lock()

    _memory_state: tuple[Hashable, dict] | None = None


def read_rows(
    online_store: Any,
    config: RepoConfig,
    table: FeatureView,
    join_key: str,
    entity_ids: Sequence[str],
    features: Sequence[str],
) -> list[Row]:
    """``online_store.online_read`` of string entities given by id, decoded: one row per id, in order."""
    from loopline.features import _entity_key, proto_values

    keys = [_entity_key(join_key, entity_id) for entity_id in entity_ids]
    # A fresh list: Feast's Redis store appends its timestamp field to the list it is given.
    rows = online_store.online_read(config, table, keys, list(features))
    return [(stamp, None if values is None else tuple(proto_values(values, features))) for stamp, values in rows]
