"""A small, real world to serve: simulated traffic, the ETL, two trained and registered model versions.

The serving tests, ``benchmarks/serving.py`` and anyone who wants to try ``bentoml serve`` locally
need the same thing: a Feast online store with features of known users and items, and registered
``loopline-ctr`` versions (champion and challenger) in MLflow. ``build_world`` makes one under the
current settings (``LOOPLINE_HOME``): simulate a few days, run what ``loopline_etl`` runs per day
(ingest, dbt build, materialize), train a tiny model twice (a few epochs, two seeds) and register
both versions, the first as ``champion``, the second as ``challenger``. About a minute on 2 cores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from loopline.config import settings

LOG = logging.getLogger(__name__)


@dataclass
class ServingWorld:
    """What ``build_world`` made: where it lives, who and what has features, the registered versions."""

    home: Path
    start_date: date
    days: int
    user_ids: list[str]  # users with online features
    item_ids: list[str]  # items with online features
    versions: list[str]  # registered MLflow versions, oldest first (first = champion, last = challenger)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def champion(self) -> str:
        return self.versions[0]

    @property
    def challenger(self) -> str:
        return self.versions[-1]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["home"] = str(self.home)
        data["start_date"] = self.start_date.isoformat()
        return data


def build_world(
    *,
    users: int = 200,
    items: int = 120,
    days: int = 3,
    events_per_day: int = 6_000,
    seed: int = 11,
    versions: int = 2,
    epochs: int = 2,
    start_date: date | None = None,
) -> ServingWorld:
    """Simulate, ingest, build the marts, materialize and register ``versions`` models under the settings.

    ``start_date`` defaults to ``days`` days before today (UTC), so the online features are fresh
    (the feature views' TTL is two days). Returns the ids that have online features.
    """
    from loopline import registry
    from loopline.features import apply, feature_store, materialize_interval
    from loopline.ingest import ingest_interval
    from loopline.simulate import simulate
    from loopline.training import frame_from_simulation, run_training
    from loopline.transform import run_dbt

    if versions < 1:
        raise ValueError(f"versions: expected at least 1, got {versions}")
    config = settings()
    first_day = start_date or (datetime.now(UTC).date() - timedelta(days=days))
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    truth_dir = config.home / "truth"
    simulate(
        config.log_store_uri,
        start_date=first_day,
        days=days,
        users=users,
        items=items,
        events_per_day=events_per_day,
        seed=seed,
        policy="popularity",
        truth_dir=truth_dir,
    )
    seconds["simulate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    apply()
    for offset in range(days):
        start = datetime.combine(first_day + timedelta(days=offset), datetime.min.time(), tzinfo=UTC)
        ingest_interval(start, start + timedelta(days=1))
        run_dbt("build", run_date=start.date())
        materialize_interval(start, start + timedelta(days=1))
    seconds["etl"] = time.perf_counter() - clock

    clock = time.perf_counter()
    frame = frame_from_simulation(config.log_store_uri, truth_dir)
    registered: list[str] = []
    for index in range(versions):
        run = run_training(
            frame,
            overrides={"training.epochs": epochs, "training.seed": seed + index, "training.patience": 1},
            run_name=f"serving-world-{index + 1}",
        )
        version = registry.register_candidate(
            run.run_id, reason="serving world", by_run_id="loopline.serving.sandbox", require_blessed=False, alias=None
        )
        registered.append(version)
    registry.set_alias(registry.CHAMPION, registered[0], reason="serving world", run_id="loopline.serving.sandbox")
    if len(registered) > 1:
        registry.set_alias(
            registry.CHALLENGER, registered[-1], reason="serving world", run_id="loopline.serving.sandbox"
        )
    seconds["train_and_register"] = time.perf_counter() - clock

    user_ids, item_ids = online_entities(feature_store())
    return ServingWorld(
        home=config.home,
        start_date=first_day,
        days=days,
        user_ids=user_ids,
        item_ids=item_ids,
        versions=registered,
        seconds={name: round(value, 1) for name, value in seconds.items()},
    )


def online_entities(store: Any) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of the latest snapshot in the offline source (what the online store holds)."""
    from loopline.serving.catalog import latest_snapshot_ids

    return latest_snapshot_ids(store, "user"), latest_snapshot_ids(store, "item")
