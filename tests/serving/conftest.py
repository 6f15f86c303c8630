"""Fixtures of the serving tests: one small real world per session, and clients of the service.

``serving_world`` simulates two small days, runs the ETL per day (ingest, dbt build, Feast
materialize), trains a tiny model twice and registers both versions (``loopline.serving.sandbox``),
under its own ``LOOPLINE_HOME`` and ``BENTOML_HOME`` (about a minute). ``served`` makes that world the
test's settings, with a fresh log store and rollout state file per test (function scope, so every
test starts from clean ``LOOPLINE_*`` variables and counts only its own events).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loopline.serving.sandbox import ServingWorld
from tests.worlds import activated

WORLD = {"users": 200, "items": 120, "days": 2, "events_per_day": 6_000, "versions": 2, "epochs": 2, "seed": 11}


@dataclass
class World(ServingWorld):
    """The session's world: what ``build_world`` reported, and the settings it was built under."""

    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def serving_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from loopline.serving.sandbox import build_world

    root = tmp_path_factory.mktemp("serving-world")
    home = root / "var"
    env = {"LOOPLINE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    with activated(env):
        built = build_world(**WORLD)
    return World(**vars(built), env=env)


@dataclass
class Served:
    """The world as this test's settings, with this test's own event log and rollout state."""

    world: World
    env: dict[str, str]
    log_dir: Path
    state_path: Path

    @property
    def log_uri(self) -> str:
        return self.log_dir.as_uri()

    @property
    def state_uri(self) -> str:
        return self.state_path.as_uri()


@pytest.fixture
def served(serving_world: World, isolated_home: Path, tmp_path: Path) -> Iterator[Served]:
    env = dict(serving_world.env)
    log_dir, state_path = tmp_path / "served-logs", tmp_path / "rollout.json"
    env["LOOPLINE_LOG_STORE_URI"] = log_dir.as_uri()
    env["LOOPLINE_ROLLOUT_STATE_URI"] = state_path.as_uri()
    env["LOOPLINE_SERVING_POLL_SECONDS"] = "0.2"
    env["LOOPLINE_SERVING_FLUSH_SECONDS"] = "0.2"
    env["LOOPLINE_SERVING_FREEZE_GC"] = "false"  # a test process should not keep its garbage
    with activated(env):
        yield Served(serving_world, env, log_dir, state_path)
