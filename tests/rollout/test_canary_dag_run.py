"""loopline_canary for real through dag.test(): the simulator's users keep talking to the service while
the DAG's reschedule-mode sensors look at each step, and a candidate worse online is rolled back."""

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from loopline.rollout import ROLLED_BACK, RolloutController
from loopline.serving.routing import state_store
from loopline.simulate.service_traffic import drive_day

pytestmark = pytest.mark.slow

POLICY = {"ctr.margin": 0.2, "ctr.baseline_rate": 0.08}


def _drive_while_rolling_out(service: Any, stop: threading.Event, errors: list) -> None:
    """Once the rollout has started, send ten simulated minutes of traffic per round until it ends."""
    try:
        store = state_store(service.state_uri)
        deadline = time.monotonic() + 120
        while (state := store.read()).canary_version is None:
            if stop.is_set() or time.monotonic() > deadline:
                return
            time.sleep(0.1)
        start = datetime.now(UTC)
        for round_index in range(60):
            state = store.read()
            if stop.is_set() or state.canary_version is None:
                return
            window = (start + timedelta(minutes=10 * round_index), start + timedelta(minutes=10 * (round_index + 1)))
            drive_day(service.world, service, service.world.days, requests=300, part=500 + round_index, window=window)
    except Exception as error:  # reported by the test
        errors.append(error)


def test_canary_dag_rolls_back_a_worse_candidate(airflow_db: str, service: Any, rollout_world: Any) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from loopline_airflow.operators.rollout import RolloutStepSensor

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    dag = bag.dags["loopline_canary"]
    for task in dag.tasks:
        if isinstance(task, RolloutStepSensor):
            task.poke_interval = 1  # a look per second instead of every five minutes

    stop, errors = threading.Event(), []
    driver = threading.Thread(target=_drive_while_rolling_out, args=(service, stop, errors), daemon=True)
    driver.start()
    try:
        run = dag.test(
            run_conf={
                "candidate_version": rollout_world.worse,
                "metrics_url": None,
                "canary_policy": POLICY,
                "attribution_minutes": 5,
            }
        )
    finally:
        stop.set()
        driver.join(timeout=60)
    assert not errors, errors
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states["override"] == "skipped"
    assert states["start_rollout"] == "success" and states["report"] == "success"

    controller = RolloutController()
    assert controller.active() is None
    report = run.get_task_instance("report").xcom_pull(task_ids="report")
    rollout = controller.get(report["rollout_id"])
    assert rollout.status == ROLLED_BACK and rollout.candidate_version == rollout_world.worse
    history = controller.history(rollout.rollout_id)
    assert history[0].action == "started" and history[-1].action == "rolled_back"
    assert history[-1].actor.startswith("airflow:loopline_canary/")
    state = state_store(service.state_uri).read()
    assert state.canary_version is None and state.champion_version == rollout_world.good
