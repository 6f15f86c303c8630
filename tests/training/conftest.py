"""Fixtures of the training tests: one small simulated world, its training frame, one trained model,
and MLflow/warehouse stores shared by a test module (MLflow's first schema migration takes seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from loopline.simulate import World, simulate, simulate_with_random_day
from loopline.training import ModelConfig, TrainedModel, comparison, frame_from_simulation, load_config, train_model

# 60 users x 40 items, 6 days of ~12k impressions: enough clicks per user and item for the id
# embeddings to learn the users' tastes, small enough to train in seconds.
WORLD = {"users": 60, "items": 40, "days": 6, "events_per_day": 14_000, "seed": 7}
FAST = {
    "training.epochs": 5,
    "compression.distill_epochs": 2,
    "compression.latency_repeats": 30,
}


@dataclass
class Simulation:
    log_uri: str
    truth_dir: Path
    frame: pd.DataFrame


@dataclass
class Trained:
    model: TrainedModel
    train: pd.DataFrame
    holdout: pd.DataFrame
    comparison: dict


@pytest.fixture(scope="session")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    root = tmp_path_factory.mktemp("training-world")
    log_uri = (root / "logs").as_uri()
    simulate(
        log_uri,
        start_date=date(2024, 3, 1),
        days=WORLD["days"],
        users=WORLD["users"],
        items=WORLD["items"],
        events_per_day=WORLD["events_per_day"],
        seed=WORLD["seed"],
        policy="popularity",
        truth_dir=root / "truth",
    )
    frame = frame_from_simulation(log_uri, root / "truth")
    return Simulation(log_uri, root / "truth", frame)


@dataclass
class RandomDay:
    frame: pd.DataFrame
    world: World


@pytest.fixture(scope="session")
def random_day(tmp_path_factory: pytest.TempPathFactory) -> RandomDay:
    """The day after the fixture world's logged days, ranked at random: what the model would face when
    it ranks (every item at every slot). The first days replay the ``simulation`` fixture exactly
    (same world, seed and policy), so the day's features come from the same history."""
    root = tmp_path_factory.mktemp("random-day-world")
    days = WORLD["days"] + 1
    world = World.build(WORLD["users"], WORLD["items"], WORLD["seed"], start_date=date(2024, 3, 1), days=days)
    log_uri, truth_dir = simulate_with_random_day(root, world, "popularity", events_per_day=WORLD["events_per_day"])
    frame = frame_from_simulation(log_uri, truth_dir)
    return RandomDay(frame[frame["event_date"] == frame["event_date"].max()].reset_index(drop=True), world)


@pytest.fixture(scope="session")
def fast_config() -> ModelConfig:
    return load_config(overrides=FAST)


@pytest.fixture(scope="session")
def trained(simulation: Simulation, fast_config: ModelConfig) -> Trained:
    model, train, holdout = train_model(simulation.frame, fast_config)
    return Trained(model, train, holdout, comparison(model, train, holdout))


@dataclass
class Stores:
    tracking_uri: str
    artifact_uri: str
    warehouse_uri: str


@pytest.fixture(scope="module")
def module_stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    root = tmp_path_factory.mktemp("mlflow-stores")
    return Stores(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_uri=(root / "artifacts").as_uri(),
        warehouse_uri=f"duckdb://{root / 'warehouse.duckdb'}",
    )


@pytest.fixture
def stores(isolated_home: Path, module_stores: Stores, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stores]:
    """The module's stores as this test's settings (LOOPLINE_MLFLOW_TRACKING_URI and friends)."""
    from loopline import config

    monkeypatch.setenv("LOOPLINE_MLFLOW_TRACKING_URI", module_stores.tracking_uri)
    monkeypatch.setenv("LOOPLINE_ARTIFACT_URI", module_stores.artifact_uri)
    monkeypatch.setenv("LOOPLINE_WAREHOUSE_URI", module_stores.warehouse_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    config.settings.cache_clear()
    yield module_stores
    config.settings.cache_clear()
    os.environ.pop("MLFLOW_S3_ENDPOINT_URL", None)
