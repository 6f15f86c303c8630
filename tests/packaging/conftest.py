"""Fixtures of the packaging and batch-scoring tests: one real world shared by the session.

``packaging_world`` simulates a few days, runs the ETL per day (ingest, dbt build, Feast
materialize), trains two tiny models and registers them (``loopline.serving.sandbox.build_world``),
all under its own ``LOOPLINE_HOME`` and ``BENTOML_HOME``. ``packaged`` builds and exports the Bento
of the first version once. ``world`` makes the world's settings the test's (function scope, through
monkeypatch, so every test still starts from clean ``LOOPLINE_*`` variables).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.world import WORLD, PackagingWorld
from tests.worlds import activated, reset_bentoml_stores


@pytest.fixture(autouse=True)
def _restore_bentoml_stores() -> Iterator[None]:
    """Leave BentoML as found: other tests of the session choose their stores through BENTOML_HOME."""
    yield
    reset_bentoml_stores()


@pytest.fixture(scope="session")
def packaging_world(tmp_path_factory: pytest.TempPathFactory) -> PackagingWorld:
    from loopline.serving.sandbox import build_world

    root = tmp_path_factory.mktemp("packaging-world")
    env = {"LOOPLINE_HOME": str(root / "var"), "BENTOML_HOME": str(root / "bentoml")}
    with activated(env):
        world = build_world(**WORLD)
    reset_bentoml_stores()
    return PackagingWorld(home=root / "var", bentoml_home=root / "bentoml", env=env, world=world)


@pytest.fixture
def world(packaging_world: PackagingWorld, isolated_home: Path) -> Iterator[PackagingWorld]:
    """The session's world as this test's settings (after the autouse isolated_home)."""
    from loopline.serving.packaging import ensure_bentoml_home

    with activated(packaging_world.env):
        ensure_bentoml_home()
        yield packaging_world


@pytest.fixture(scope="session")
def packaged(packaging_world: PackagingWorld) -> Any:
    """The Bento of the world's first version, built and exported to the local artifact store once."""
    from loopline.serving.packaging import package

    with activated(packaging_world.env):
        result = package(packaging_world.versions[0], packaged_by="tests/packaging")
    reset_bentoml_stores()
    return result
