"""Shared by the serving, packaging and rollout tests: make a built world's settings the process's.

Each of those test folders builds one small real world per session (``loopline.serving.sandbox``)
under its own ``LOOPLINE_HOME`` and ``BENTOML_HOME``; ``activated`` switches the process to such a
world for a block and back, and ``reset_bentoml_stores`` makes BentoML forget the store locations it
memoized, so the next test's ``BENTOML_HOME`` applies.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENTOML_STORE_PROVIDERS = (
    "bentoml_home",
    "bento_store_dir",
    "model_store_dir",
    "tmp_bento_store_dir",
    "env_store_dir",
    "bento_store",
    "tmp_bento_store",
    "model_store",
)


def reset_bentoml_stores() -> None:
    """Drop BentoML's memoized store locations (its defaults, from BENTOML_HOME, apply again)."""
    if "bentoml" not in sys.modules:
        return
    from bentoml._internal.configuration.containers import BentoMLContainer

    for name in BENTOML_STORE_PROVIDERS:
        getattr(BentoMLContainer, name).reset()


@contextlib.contextmanager
def activated(env: dict[str, str]) -> Iterator[None]:
    """``env`` as the process's Loopline (and BentoML) settings for a block; other LOOPLINE_* removed."""
    from loopline import config

    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("LOOPLINE_") and name != "LOOPLINE_TEST_POSTGRES_URL":
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        config.settings.cache_clear()
        if env.get("BENTOML_HOME"):
            from loopline.serving.packaging import ensure_bentoml_home

            Path(env["BENTOML_HOME"]).mkdir(parents=True, exist_ok=True)
            ensure_bentoml_home()
        try:
            yield
        finally:
            config.settings.cache_clear()
            reset_bentoml_stores()
