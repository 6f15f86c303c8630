"""Canary scenarios with the simulator's users in front of the real ranking service (in-process ASGI).

Each scenario starts a rollout, then alternates one simulated hour of traffic (``drive_day`` with a
window) with one look (``RolloutController.analyse``), as the loopline_canary sensors do, until the
rollout ends. The analysis reads the service's own logs and its /metrics. Afterwards the aliases,
the serving state and the audit trail must agree.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loopline.abtest import load_canary_policy
from loopline.registry import CHAMPION, PREVIOUS, alias_version, set_alias
from loopline.rollout import HALTED, PROMOTED, ROLLED_BACK, RolloutController, parse_health
from loopline.serving.routing import TrafficState, state_store
from loopline.simulate.service_traffic import drive_day

pytestmark = pytest.mark.slow

# A 20 % relative non-inferiority margin keeps the sample of a scenario at a few thousand requests.
# The p99 guard gets 200 ms of slack: the in-process service shares two cores with the test's own
# traffic and analysis, so p99 differences of tens of ms between two equal models are noise here
# (benchmarks/serving.py measures latency on a quiet machine).
POLICY = {"ctr.margin": 0.2, "ctr.baseline_rate": 0.08, "guards.p99_abs_tolerance_ms": 200.0}
ATTRIBUTION = timedelta(minutes=5)  # the simulated users react within three minutes
REQUESTS_PER_HOUR = 400
MAX_HOURS = 24


def _controller(service: Any, **overrides: Any) -> RolloutController:
    return RolloutController(
        policy=load_canary_policy(overrides=POLICY | overrides),
        health_source=lambda: parse_health(service.metrics_text()),
        attribution_window=ATTRIBUTION,
        settle=timedelta(seconds=1),
    )


def _serving_weight(service: Any) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("loopline_serving_canary_weight")
    return -1.0 if value is None else value


def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _run(service: Any, controller: RolloutController, candidate: str, *, tamper: Any = None) -> tuple[Any, list]:
    """Start a rollout of ``candidate`` and drive hours of traffic until it ends; returns (rollout, looks)."""
    day_index = service.world.days  # today: the online features are fresh
    # The simulated hours are the last MAX_HOURS hours of the wall clock: the analysis ignores events
    # more than an hour ahead of it, so hours later today would never count (a test run at 03:00
    # UTC stalled at its 04:00 events).
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=MAX_HOURS)
    rollout = controller.start(candidate, actor="tests", reason="scenario", event_start=start)
    if tamper is not None:
        tamper()
    looks = []
    for hour in range(MAX_HOURS):
        weight = state_store(service.state_uri).read().canary_weight
        _wait(lambda weight=weight: abs(_serving_weight(service) - weight) < 1e-9, f"the service at weight {weight}")
        window = (start + timedelta(hours=hour), start + timedelta(hours=hour + 1))
        driven = drive_day(service.world, service, day_index, requests=REQUESTS_PER_HOUR, part=hour, window=window)
        assert driven.failed_feedback == 0
        _wait_logged(controller, rollout.details["event_start"], driven, looks)
        outcome = controller.analyse(rollout.rollout_id, actor="tests")
        looks.append((driven, outcome))
        print(outcome.table())
        if outcome.finished:
            return outcome.rollout, looks
    raise AssertionError(f"rollout {rollout.rollout_id} still {outcome.rollout.status} after {MAX_HOURS} hours")


def _wait_logged(controller: RolloutController, event_start: str, driven: Any, looks: list) -> None:
    """Until the service has flushed every impression served so far to the log store."""
    from loopline.rollout import observe_logs

    served = sum(tally.impressions for d, _ in looks for tally in d.arms.values())
    served += sum(tally.impressions for tally in driven.arms.values())
    start = datetime.fromisoformat(event_start)

    def logged() -> int:
        window = observe_logs(controller.log_store, start, start + timedelta(days=1), attribution_window=ATTRIBUTION)
        return sum(counts.impressions for counts in window.arms.values())

    _wait(lambda: logged() >= served, f"{served} impressions in the log")


def _audit_agrees(controller: RolloutController, rollout: Any, service: Any) -> list[str]:
    history = controller.history(rollout.rollout_id)
    actions = [transition.action for transition in history]
    assert actions[0] == "started"
    assert history[-1].to_status == rollout.status
    assert all(t.reason for t in history)
    state = state_store(service.state_uri).read()
    assert state.canary_version is None and state.canary_weight == 0.0, state
    return actions


def test_a_better_candidate_is_promoted(service: Any, rollout_world: Any) -> None:
    set_alias(CHAMPION, rollout_world.worse, reason="scenario: the weaker model serves", run_id="tests")
    state_store(service.state_uri).write(TrafficState(champion_version=rollout_world.worse))
    controller = _controller(service)
    rollout, looks = _run(service, controller, rollout_world.good)

    assert rollout.status == PROMOTED, looks[-1][1].table()
    actions = _audit_agrees(controller, rollout, service)
    assert actions[-1] == "promoted" and actions.count("advanced") >= 1
    assert state_store(service.state_uri).read().champion_version == rollout_world.good
    assert alias_version(CHAMPION) == rollout_world.good
    assert alias_version(PREVIOUS) == rollout_world.worse
    canary_ctr = sum(d.arms["canary"].clicks for d, _ in looks if "canary" in d.arms)
    assert canary_ctr > 0
    # the serving state switched: every request now goes to the new champion
    _wait(lambda: _serving_weight(service) == 0.0, "the service to drop the canary")
    driven = drive_day(service.world, service, service.world.days, requests=20, part=99)
    assert set(driven.arms) == {"champion"}
    assert set(driven.arms["champion"].model_versions) == {f"loopline-ctr/{rollout_world.good}"}


def test_a_candidate_worse_online_is_rolled_back(service: Any, rollout_world: Any) -> None:
    champion_before = alias_version(CHAMPION)
    controller = _controller(service)
    rollout, looks = _run(service, controller, rollout_world.worse)

    assert rollout.status == ROLLED_BACK, looks[-1][1].table()
    decision = looks[-1][1].decision
    assert decision.ctr is not None and decision.ctr.rollback_crossed, decision.table()
    # the simulator's truth agrees that the candidate is worse
    truth = {arm: sum(d.arms[arm].expected_clicks for d, _ in looks) / sum(d.arms[arm].impressions for d, _ in looks)
             for arm in ("champion", "canary")}  # fmt: skip
    assert truth["canary"] < truth["champion"]
    actions = _audit_agrees(controller, rollout, service)
    assert actions[-1] == "rolled_back"
    assert alias_version(CHAMPION) == champion_before  # aliases unchanged
    assert state_store(service.state_uri).read().champion_version == rollout_world.good


def test_a_candidate_failing_a_fifth_of_requests_is_rolled_back_at_the_first_step(
    service: Any, rollout_world: Any
) -> None:
    controller = _controller(service)
    rollout, looks = _run(service, controller, rollout_world.flaky)

    assert rollout.status == ROLLED_BACK, looks[-1][1].table()
    assert rollout.step_index == 0
    decision = looks[-1][1].decision
    assert not decision.guards.passed and decision.ctr is None, decision.table()
    assert decision.step_canary.errors > 0 and decision.step_champion.errors == 0
    assert sum(d.failed_requests for d, _ in looks) > 0
    _audit_agrees(controller, rollout, service)


def test_biased_assignment_halts_on_sample_ratio_mismatch(service: Any, rollout_world: Any) -> None:
    controller = _controller(service)

    def tamper() -> None:  # the state store serves 20 % while the rollout plans 5 %
        store = state_store(service.state_uri)
        store.write(store.read().with_changes(canary_weight=0.2))

    rollout, looks = _run(service, controller, rollout_world.worse, tamper=tamper)

    assert rollout.status == HALTED, looks[-1][1].table()
    assert looks[-1][1].decision.srm.mismatch
    actions = _audit_agrees(controller, rollout, service)
    assert actions == ["started", "halted"]
