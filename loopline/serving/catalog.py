"""The candidate catalog: the items a ``/rank`` call without ``item_ids`` ranks.

The catalog is the set of items the online store holds features for: the item ids of the latest
snapshot day of the ``item_features`` mart, as the feature view's batch source holds it (locally
the Parquet export ``LOOPLINE_HOME/feast/offline/item_features/<day>.parquet``, in the stack the
warehouse table ``item_features`` in PostgreSQL). Those are exactly the rows the latest
materialization loaded. Ordered by ``impressions_28d`` (most shown first, then by id) and cut at
``limit`` (the service's candidate limit), so a catalog larger than a request may score keeps the
most active items. ``Catalog`` re-reads the source when it is older than ``refresh_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

LOG = logging.getLogger(__name__)

ORDER_COLUMN = "impressions_28d"
Entity = Literal["user", "item"]


class CatalogError(RuntimeError):
    """The catalog cannot be read; the message names the source."""


def _mart_and_key(entity: Entity) -> tuple[str, str]:
    if entity == "user":
        return "user_features", "user_id"
    if entity == "item":
        return "item_features", "item_id"
    raise ValueError(f"entity: expected 'user' or 'item', got {entity!r}")


def latest_snapshot_ids(store: Any, entity: Entity, *, limit: int | None = None) -> list[str]:
    """Ids of ``entity`` in the latest snapshot day of its mart, most impressions (28 d) first.

    ``store`` is the ``FeatureStore`` serving reads; its offline store decides where the snapshot is
    read: ``file`` -> the newest non-empty Parquet export, ``postgres`` -> the warehouse table.
    """
    from loopline.features import _location_of

    mart, key = _mart_and_key(entity)
    location = _location_of(store)
    if location.kind == "file":
        return _ids_from_parquet(location.mart_dir(mart), key, limit)
    from loopline.config import settings
    from loopline.warehouse import Warehouse

    uri = settings().warehouse_uri
    with Warehouse.from_uri(uri) as warehouse:
        if not warehouse.table_exists(mart):
            raise CatalogError(f"mart {mart} does not exist in {warehouse.display_uri}; run dbt build first")
        sql = (
            f"SELECT {key} FROM {mart} WHERE snapshot_date = (SELECT max(snapshot_date) FROM {mart}) "
            f"ORDER BY {ORDER_COLUMN} DESC NULLS LAST, {key}"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [str(row[0]) for row in warehouse.query(sql)]


def _ids_from_parquet(directory: Any, key: str, limit: int | None) -> list[str]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(directory.glob("*.parquet"), reverse=True)  # <YYYY-MM-DD>.parquet: newest first
    for path in files:
        table = pq.read_table(path, columns=[key, ORDER_COLUMN])
        if table.num_rows == 0:
            continue
        order = pc.sort_indices(table, sort_keys=[(ORDER_COLUMN, "descending"), (key, "ascending")])
        ids = table.column(key).take(order).to_pylist()
        return [str(value) for value in ids[:limit] if value]
    raise CatalogError(f"no non-empty snapshot under {directory}; run the ETL (ingest, dbt build, materialize) first")


class Catalog:
    """The catalog's item ids, read once and re-read when older than ``refresh_seconds``.

    ``items`` never blocks on a read after the first: a refresh swaps in a new tuple, so a request
    sees either the old or the new catalog, never half of one.
    """

    def __init__(self, load: Callable[[], list[str]], *, refresh_seconds: float = 600.0):
        self._load = load
        self.refresh_seconds = refresh_seconds
        self._items: tuple[str, ...] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_feature_store(cls, store: Any, *, limit: int, refresh_seconds: float = 600.0) -> Catalog:
        """The catalog of the items ``store``'s latest snapshot holds, at most ``limit``."""
        return cls(lambda: latest_snapshot_ids(store, "item", limit=limit), refresh_seconds=refresh_seconds)

    @classmethod
    def fixed(cls, item_ids: list[str]) -> Catalog:
        """A catalog that never changes (tests, a hand-made candidate set)."""
        return cls(lambda: list(item_ids), refresh_seconds=float("inf"))

    def items(self) -> tuple[str, ...]:
        """The current item ids (loaded on first use)."""
        items = self._items
        if items is None:
            self.refresh()
            items = self._items
        assert items is not None
        return items

    def refresh(self) -> int:
        """Read the source now; returns how many items. Keeps the old catalog if the read fails."""
        with self._lock:
            items = tuple(dict.fromkeys(self._load()))
            self._items = items
            self._loaded_at = time.monotonic()
        LOG.info("catalog: %d items", len(items))
        return len(items)

    def maybe_refresh(self) -> None:
        """Refresh if older than ``refresh_seconds``; log (not raise) a failed read and keep the old one."""
        if time.monotonic() - self._loaded_at < self.refresh_seconds:
            return
        try:
            self.refresh()
        except Exception:  # the old catalog keeps serving; the next poll tries again
            LOG.exception("catalog refresh failed; keeping %d items", len(self._items or ()))
            self._loaded_at = time.monotonic()
