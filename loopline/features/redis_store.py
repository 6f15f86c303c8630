"""Feast's Redis online store (stack profile) with the serving path's row memory.

``LooplineRedisOnlineStore`` is Feast's ``RedisOnlineStore`` (same keys, same writes, same
``online_read``) plus ``loopline.features.row_memory.RowMemory``: ``loopline.features.online``
reads through ``online_read_values``, which keeps the decoded rows it has read while the store's
generation is unchanged. The generation is a counter key in Redis,
``loopline:online_generation:<project>``, that this class increments after every write it makes
(``online_write_batch`` and its async twin, ``update``, ``teardown``, ``delete_table``,
``delete_entity_values``), in whichever process, and that each lookup reads first (one ``GET``
instead of one ``HMGET`` per entity). A lookup therefore answers what Redis holds, as long as every
writer uses this class: the repo's ``feature_store.stack.yaml`` names it, so Loopline's
materialization, ``feast`` commands run on the repo and the Airflow tasks all do.

With ``key_ttl_seconds`` set, Redis expires rows without a write: then nothing is kept and every
lookup reads Redis. Configure with ``online_store: {type:
loopline.features.redis_store.LooplineRedisOnlineStore, connection_string: ...}``.
"""

from __future__ import annotations

from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.repo_config import RepoConfig

from loopline.features.row_memory import RowMemory

STORE_TYPE = "loopline.features.redis_store.LooplineRedisOnlineStore"
GENERATION_KEY = "loopline:online_generation:{project}"


class LooplineRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Same settings as Feast's Redis online store (``connection_string``, ``redis_type``, ...)."""

    type: Literal["loopline.features.redis_store.LooplineRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class LooplineRedisOnlineStore(RowMemory, RedisOnlineStore):
    """``RedisOnlineStore`` whose serving reads keep decoded rows until any writer changes the store."""

    def _memory_generation(self, config: RepoConfig) -> bytes | None:
        if config.online_store.key_ttl_seconds:
            return None  # rows expire without a write: keep nothing
        generation = self._get_client(config.online_store).get(_generation_key(config))
        return generation if generation is not None else b"0"

    def _after_write(self, config: RepoConfig) -> None:
        """Move the generation (every process's kept rows), then drop this object's."""
        try:
            self._get_client(config.online_store).incr(_generation_key(config))
        finally:
            self._forget_reads()

    # Redis's other writes (RowMemory wraps online_write_batch, update and teardown).
    async def online_write_batch_async(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        try:
            return await super().online_write_batch_async(config, *args, **kwargs)
        finally:
            self._after_write(config)

    def delete_table(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        try:
            return super().delete_table(config, *args, **kwargs)
        finally:
            self._after_write(config)

    def delete_entity_values(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        try:
            return super().delete_entity_values(config, *args, **kwargs)
        finally:
            self._after_write(config)


def _generation_key(config: RepoConfig) -> str:
    return GENERATION_KEY.format(project=config.project)
