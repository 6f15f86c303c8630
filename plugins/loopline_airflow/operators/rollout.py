"""Canary rollout operators: start a rollout, watch its steps (reschedule-mode sensor), manual overrides.

All logic is in ``loopline.rollout.RolloutController``; these turn the task context into its arguments,
print each decision's table in the task log and return small dicts for XCom.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException


def _controller(*, policy_overrides: Any, metrics_url: Any, warehouse_uri: Any, attribution_minutes: Any = None) -> Any:
    from loopline.abtest import load_canary_policy
    from loopline.rollout import RolloutController

    options: dict[str, Any] = {
        "policy": load_canary_policy(overrides=policy_overrides or None),
        "metrics_url": metrics_url or None,
        "warehouse_uri": warehouse_uri or None,
    }
    if attribution_minutes not in (None, ""):
        options["attribution_window"] = timedelta(minutes=float(attribution_minutes))
    return RolloutController(**options)


def _actor(context: Any) -> str:
    run = context.get("dag_run")
    run_id = getattr(run, "run_id", None) or "manual"
    return f"airflow:{context['ti'].dag_id}/{run_id}"


class StartRolloutOperator(BaseOperator):
    """Start the canary rollout of a candidate version (the first model is promoted at once).

    :param candidate_version: MLflow version to roll out (templated); empty: the version the triggering
        candidate Asset event names, else the ``challenger`` alias.
    :param policy_overrides: canary policy overrides, e.g. ``{"ctr.margin": 0.1}`` (templated).
    :param metrics_url: the ranking service's ``/metrics`` URL for the health guards (templated).
    :param warehouse_uri: warehouse for the rollout tables (templated); default from settings.
    :param reason: why the rollout starts, for the audit trail (templated).
    :param event_start: where the rollout's event-time window starts, ISO 8601 (templated); empty: now
        (or the logs' high-water mark if later). Set it when a recorded or simulated day is replayed.
    """

    template_fields: Sequence[str] = (
        "candidate_version",
        "policy_overrides",
        "metrics_url",
        "warehouse_uri",
        "reason",
        "event_start",
    )

    def __init__(
        self,
        *,
        candidate_version: Any = None,
        policy_overrides: Any = None,
        metrics_url: Any = None,
        warehouse_uri: Any = None,
        reason: Any = "validated candidate",
        event_start: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.candidate_version = candidate_version
        self.policy_overrides = policy_overrides
        self.metrics_url = metrics_url
        self.warehouse_uri = warehouse_uri
        self.reason = reason
        self.event_start = event_start

    def _event_start(self) -> datetime | None:
        if self.event_start in (None, ""):
            return None
        if isinstance(self.event_start, datetime):
            moment = self.event_start
        else:
            try:
                moment = datetime.fromisoformat(str(self.event_start).replace("Z", "+00:00"))
            except ValueError:
                raise AirflowFailException(
                    f"event_start: expected an ISO 8601 time such as 2024-05-01T00:00:00Z, got {self.event_start!r}"
                ) from None
        if moment.tzinfo is None:
            raise AirflowFailException(f"event_start {self.event_start!r} needs a time zone (e.g. Z for UTC)")
        return moment

    def _candidate(self, context: Any) -> str:
        if self.candidate_version not in (None, ""):
            return str(self.candidate_version)
        for events in (context.get("triggering_asset_events") or {}).values():
            for event in reversed(list(events)):
                version = (getattr(event, "extra", None) or {}).get("version")
                if version:
                    return str(version)
        from loopline.registry import CHALLENGER, alias_version

        version = alias_version(CHALLENGER)
        if version is None:
            raise AirflowFailException("no candidate_version given, no Asset event names one, no challenger alias")
        return version

    def execute(self, context: Any) -> dict[str, Any]:
        controller = _controller(
            policy_overrides=self.policy_overrides, metrics_url=self.metrics_url, warehouse_uri=self.warehouse_uri
        )
        rollout = controller.start(
            self._candidate(context), actor=_actor(context), reason=str(self.reason), event_start=self._event_start()
        )
        self.log.info(
            "rollout %s: candidate %s vs champion %s, status %s, canary weight %.0f%%",
            rollout.rollout_id, rollout.candidate_version, rollout.champion_version or "(none)",
            rollout.status, rollout.weight * 100,
        )  # fmt: skip
        return {
            "rollout_id": rollout.rollout_id,
            "status": rollout.status,
            "candidate_version": rollout.candidate_version,
            "champion_version": rollout.champion_version,
            "weight": rollout.weight,
        }


class RolloutStepSensor(BaseSensorOperator):
    """Wait for one step of a rollout to be decided; each poke is one look (``RolloutController.analyse``).

    Runs in ``reschedule`` mode by default, so no worker slot is held between looks. Succeeds when the
    rollout has left ``step_index`` (advanced, promoted, rolled back or halted); skips when the rollout
    was already finished before this step. A halt fails the task (an alert) after it is recorded.

    :param rollout_id: the rollout to watch (templated; usually the start task's XCom).
    :param step_index: the index of the step in the policy's steps this sensor owns.
    :param policy_overrides: canary policy overrides (templated; must match the start task's).
    :param metrics_url: the service's ``/metrics`` URL (templated).
    :param warehouse_uri: warehouse for the rollout tables (templated).
    :param attribution_minutes: click attribution window in minutes (templated); default 30.
    """

    template_fields: Sequence[str] = (
        "rollout_id",
        "policy_overrides",
        "metrics_url",
        "warehouse_uri",
        "attribution_minutes",
    )

    def __init__(
        self,
        *,
        rollout_id: Any,
        step_index: int,
        policy_overrides: Any = None,
        metrics_url: Any = None,
        warehouse_uri: Any = None,
        attribution_minutes: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.rollout_id = rollout_id
        self.step_index = step_index
        self.policy_overrides = policy_overrides
        self.metrics_url = metrics_url
        self.warehouse_uri = warehouse_uri
        self.attribution_minutes = attribution_minutes

    def poke(self, context: Any) -> bool:
        controller = _controller(
            policy_overrides=self.policy_overrides,
            metrics_url=self.metrics_url,
            warehouse_uri=self.warehouse_uri,
            attribution_minutes=self.attribution_minutes,
        )
        rollout = controller.get(str(self.rollout_id))
        if rollout.step_index > self.step_index:
            return True  # this step was decided earlier (e.g. by a previous try)
        if rollout.is_final:
            if rollout.step_index == self.step_index:
                return True  # the rollout ended at this step
            raise AirflowSkipException(
                f"rollout {rollout.rollout_id} is {rollout.status}; step {self.step_index} never ran"
            )
        if rollout.status != "running" or rollout.step_index < self.step_index:
            self.log.info(
                "rollout %s is %s at step %d; waiting", rollout.rollout_id, rollout.status, rollout.step_index
            )
            return False
        outcome = controller.analyse(rollout.rollout_id, actor=_actor(context))
        self.log.info("look at step %d of rollout %s\n%s", self.step_index, rollout.rollout_id, outcome.table())
        if outcome.action == "halted":
            raise AirflowFailException(f"rollout {rollout.rollout_id} HALTED: {outcome.decision.reason}")
        return outcome.action != "waited"


class RolloutOverrideOperator(BaseOperator):
    """A manual decision from the Airflow UI: promote now, roll back now, pause or resume (with a reason).

    :param action: ``promote``, ``rollback``, ``pause`` or ``resume`` (templated).
    :param reason: why; required, written to the audit trail with the run as actor (templated).
    :param rollout_id: the rollout (templated); empty: the running or paused one.
    :param warehouse_uri: warehouse for the rollout tables (templated).
    """

    template_fields: Sequence[str] = ("action", "reason", "rollout_id", "warehouse_uri")

    def __init__(
        self,
        *,
        action: Any,
        reason: Any,
        rollout_id: Any = None,
        warehouse_uri: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.action = action
        self.reason = reason
        self.rollout_id = rollout_id
        self.warehouse_uri = warehouse_uri

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.rollout import RolloutError

        controller = _controller(policy_overrides=None, metrics_url=None, warehouse_uri=self.warehouse_uri)
        rollout_id = str(self.rollout_id or "")
        if not rollout_id:
            active = controller.active()
            if active is None:
                raise AirflowFailException(f"override {self.action!r}: no running or paused rollout")
            rollout_id = active.rollout_id
        try:
            rollout = controller.override(
                rollout_id, str(self.action), reason=str(self.reason or ""), actor=_actor(context)
            )
        except RolloutError as error:
            raise AirflowFailException(str(error)) from None
        self.log.info("rollout %s: manual %s -> %s (%s)", rollout_id, self.action, rollout.status, self.reason)
        return {"rollout_id": rollout_id, "action": str(self.action), "status": rollout.status}
