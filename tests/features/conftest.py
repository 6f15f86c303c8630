"""Fixtures of the Feast tests: hand-made marts in the profile's warehouse and an applied store.

Local profile: DuckDB warehouse, file registry, SQLite online store and Parquet exports, all under
the test's LOOPLINE_HOME. Stack profile: a fresh PostgreSQL database (registry and marts) and the
machine's Redis, with a unique Feast project per test; the project's Redis keys are deleted after.
Shared helpers live in feature_marts.py (conftest modules of several folders share one name).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from feature_marts import REDIS_URL, Env, build_env, standard_marts

from loopline import config


@pytest.fixture
def local_env() -> Env:
    """Local profile: the standard marts in DuckDB, the repository applied (SQLite, Parquet exports)."""
    return build_env(standard_marts())


@pytest.fixture
def stack_settings(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Switch to the stack profile on a fresh database and a unique Feast project; clean Redis after."""
    import redis

    project = f"test_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("LOOPLINE_PROFILE", "stack")
    monkeypatch.setenv("LOOPLINE_POSTGRES_URL", postgres_url)
    monkeypatch.setenv("LOOPLINE_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("LOOPLINE_FEAST_PROJECT", project)
    config.settings.cache_clear()
    yield project
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for pattern in (f"*{project}", f"*{project}_*"):
            keys = list(client.scan_iter(match=pattern.encode(), count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()
    config.settings.cache_clear()


@pytest.fixture
def stack_env(stack_settings: str) -> Env:
    """Stack profile: the standard marts in PostgreSQL, the repository applied (SQL registry, Redis)."""
    return build_env(standard_marts())
