"""The packaging tests' world: its settings (``tests.worlds.activated`` makes them the process's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORLD = {"users": 150, "items": 80, "days": 3, "events_per_day": 5_000, "versions": 2, "epochs": 2, "seed": 5}


@dataclass
class PackagingWorld:
    home: Path
    bentoml_home: Path
    env: dict[str, str]
    world: Any  # loopline.serving.sandbox.ServingWorld

    @property
    def versions(self) -> list[str]:
        return list(self.world.versions)
