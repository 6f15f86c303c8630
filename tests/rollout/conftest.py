"""Fixtures of the rollout tests: a small real world with three registered models of known quality,
and the ranking service (its ASGI app, in-process) serving it.

``rollout_world`` (session, ~1-2 min): ``loopline.serving.sandbox.build_world`` simulates two days,
runs the ETL and registers a good model (v1); then a model trained on shuffled labels (v2: passes
nothing offline, ranks at random online) and a "flaky" copy of v1 that raises for 20 % of users (v3)
are registered in MLflow like any candidate. ``service`` makes that world the test's settings with a
fresh log store, rollout state file and warehouse, and serves it through the BentoML service's ASGI
app; the simulator's users then talk to it with ``loopline.simulate.service_traffic``.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.worlds import activated

WORLD = {"users": 400, "items": 150, "days": 2, "events_per_day": 8_000, "versions": 1, "epochs": 3, "seed": 21}
FAILING_SHARE = 5  # the flaky model fails for users whose id bucket is divisible by this (20 %)


def _register(module: Any, spec: Any, frame: Any, run_name: str) -> str:
    """Log a TorchScript scorer the way training does and register it as a new loopline-ctr version."""
    import tempfile

    import mlflow

    from loopline import registry
    from loopline.training.tracking import input_example, log_serving_model

    experiment_id = registry.ensure_experiment()
    registry.configure_mlflow()
    with (
        tempfile.TemporaryDirectory() as scratch,
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run,
    ):
        info = log_serving_model(module, spec, input_example(frame, spec), directory=Path(scratch))
        mlflow.set_tag(registry.TAG_MODEL_URI, info.model_uri)
    return registry.register_candidate(
        run.info.run_id, reason=run_name, by_run_id="tests.rollout", require_blessed=False, alias=None
    )


def flaky_scorer(good: Any, failing_share: int = FAILING_SHARE) -> Any:
    """A TorchScript copy of ``good`` whose scoring raises for users whose id bucket % ``failing_share`` == 0."""
    import torch
    from torch import Tensor

    class FlakyScorer(torch.nn.Module):
        numeric_features: list[str]
        categorical_features: list[str]

        def __init__(self, inner: Any, share: int):
            super().__init__()
            self.inner = inner
            self.share = share
            self.numeric_features = list(inner.numeric_features)  # what the MLflow adapter reads
            self.categorical_features = list(inner.categorical_features)

        @torch.jit.export
        def score_encoded(
            self,
            user_bucket: Tensor,
            item_bucket: Tensor,
            numeric: Tensor,
            category_codes: Tensor,
            position: Tensor | None = None,
        ) -> Tensor:
            if int(user_bucket[0]) % self.share == 0:
                raise RuntimeError("injected fault: this model version fails for a fifth of the users")
            return self.inner.score_encoded(user_bucket, item_bucket, numeric, category_codes, position)

        def forward(
            self,
            user_ids: list[str],
            item_ids: list[str],
            numeric: Tensor,
            categorical: list[list[str]],
            position: Tensor | None = None,
        ) -> Tensor:
            return self.inner(user_ids, item_ids, numeric, categorical, position)

    return torch.jit.script(FlakyScorer(good, failing_share))


@dataclass
class RolloutWorld:
    env: dict[str, str]
    home: Path
    truth_dir: Path
    good: str  # MLflow versions
    worse: str
    flaky: str


@pytest.fixture(scope="session")
def rollout_world(tmp_path_factory: pytest.TempPathFactory) -> RolloutWorld:
    from loopline import registry
    from loopline.config import settings
    from loopline.serving.model_store import load_version
    from loopline.serving.sandbox import build_world
    from loopline.training import frame_from_simulation, run_training

    root = tmp_path_factory.mktemp("rollout-world")
    home = root / "var"
    env = {"LOOPLINE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    with activated(env):
        built = build_world(**WORLD)
        good = built.versions[0]
        truth_dir = home / "truth"
        frame = frame_from_simulation(settings().log_store_uri, truth_dir)
        shuffled = frame.copy()
        shuffled["is_clicked"] = shuffled["is_clicked"].sample(frac=1.0, random_state=3).to_numpy()
        run = run_training(
            shuffled,
            overrides={"training.epochs": 1, "training.seed": 5, "training.patience": 1},
            run_name="shuffled-labels",
        )
        worse = registry.register_candidate(
            run.run_id,
            reason="trained on shuffled labels",
            by_run_id="tests.rollout",
            require_blessed=False,
            alias=None,
        )
        loaded = load_version(good)
        flaky = _register(flaky_scorer(loaded.module), loaded.spec, frame, "flaky copy of the good model")
    return RolloutWorld(env, home, truth_dir, good, worse, flaky)


@dataclass
class Service:
    """The world served in-process for one test: its settings, ASGI client and the simulator's world."""

    env: dict[str, str]
    client: Any  # starlette TestClient
    world: Any  # loopline.simulate.World
    log_dir: Path
    state_uri: str

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        """``RankingClient`` for the traffic driver: the real service over its ASGI app."""
        from loopline.simulate.service_traffic import AsgiRankingClient

        return AsgiRankingClient(self.client).post(path, payload)

    def metrics_text(self) -> str:
        """The service's Prometheus metrics in text format (its in-process registry: what /metrics shows
        under ``bentoml serve``, where BentoML adds the multiprocess collector)."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()


@pytest.fixture
def service(rollout_world: RolloutWorld, isolated_home: Path, tmp_path: Path) -> Iterator[Service]:
    """The rollout world's stores, a fresh event log / rollout state / warehouse, and the service on them."""
    from starlette.testclient import TestClient

    from loopline.serving.routing import TrafficState, state_store
    from loopline.simulate import load_world

    env = dict(rollout_world.env)
    log_dir = tmp_path / "served-logs"
    state_uri = (tmp_path / "rollout.json").as_uri()
    env |= {
        "LOOPLINE_LOG_STORE_URI": log_dir.as_uri(),
        "LOOPLINE_ROLLOUT_STATE_URI": state_uri,
        "LOOPLINE_WAREHOUSE_URI": f"duckdb://{tmp_path / 'rollout-audit.duckdb'}",
        "LOOPLINE_MLFLOW_TRACKING_URI": f"sqlite:///{rollout_world.home / 'mlflow.db'}",
        "LOOPLINE_SERVING_POLL_SECONDS": "0.1",
        "LOOPLINE_SERVING_FLUSH_SECONDS": "0.1",
    }
    with activated(env):
        from loopline import registry

        if registry.alias_version(registry.CHAMPION) != rollout_world.good:  # an earlier scenario promoted another
            registry.set_alias(registry.CHAMPION, rollout_world.good, reason="rollout test setup", run_id="tests")
        state_store(state_uri).write(TrafficState(champion_version=rollout_world.good))
        with TestClient(_asgi_app()) as client:
            _wait_for(lambda: client.get("/readyz").status_code == 200, "the service to be ready")
            yield Service(env, client, load_world(rollout_world.truth_dir), log_dir, state_uri)


def _asgi_app() -> Any:
    from models.service import asgi_app

    return asgi_app()


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
