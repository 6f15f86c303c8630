"""The canary rollout as a persisted state machine with an audit trail.

A rollout moves a registered candidate version from 0 % of the users to 100 % in the policy's steps
(``loopline/policy/canary.yaml``: 5 % -> 25 % -> 50 % -> 100 %). What the service does is in the
rollout state store (``loopline.serving.routing``: champion, canary, canary weight); what the rollout
is doing, and why, is in two warehouse tables:

- ``rollouts``: one row per rollout, its status and current step, updated in place;
- ``rollout_transitions``: one row per transition (started, advanced, promoted, rolled_back, halted,
  paused, resumed) with the numbers that caused it. Nothing moves without a row here.

Statuses: ``running`` -> ``promoted`` | ``rolled_back`` | ``halted``; ``running`` <-> ``paused``.
``analyse`` runs one look: it reads the arms' counts from the service's logs and its health from
``/metrics`` (``loopline.rollout.observations``), asks ``loopline.abtest.analyze_step`` for a decision
and carries it out: wait (nothing changes), continue (next weight), promote, roll back at once (guard
or CTR failure) or halt on a sample-ratio mismatch (the canary gets 0 % and an operator must look).

Promote: the MLflow alias ``champion`` moves to the candidate and the old champion gets ``previous``
(``loopline.registry.promote``, audited in ``model_alias_audit``); the state store then names the
candidate champion with no canary, and the service swaps without failing a request. Rollback: canary
weight 0, aliases unchanged.

Time: step windows are in event time (the ``event_at`` of logged events), so the same code judges a
production service (event time ~ wall clock) and a simulated day replayed through it. A step starts
at the logs' high-water mark when it began; its time limit counts the longer of event time and wall
time since then.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from loopline.abtest import ArmMetrics, CanaryPolicy, StepDecision, analyze_step, load_canary_policy
from loopline.rollout.observations import (
    DEFAULT_ATTRIBUTION_WINDOW,
    HealthDelta,
    HealthSnapshot,
    LogWindow,
    health_between,
    observe_logs,
    scrape_health,
)
from loopline.warehouse import Column, Table, Warehouse

LOG = logging.getLogger(__name__)

RUNNING, PAUSED, PROMOTED, ROLLED_BACK, HALTED = "running", "paused", "promoted", "rolled_back", "halted"
FINAL_STATUSES = (PROMOTED, ROLLED_BACK, HALTED)
MANUAL_ACTIONS = ("promote", "rollback", "pause", "resume")

ROLLOUTS = Table(
    "rollouts",
    (
        Column("rollout_id", "varchar", nullable=False),
        Column("model_name", "varchar", nullable=False),
        Column("candidate_version", "varchar", nullable=False),
        Column("champion_version", "varchar", nullable=False),
        Column("status", "varchar", nullable=False),
        Column("step_index", "integer", nullable=False),
        Column("weight", "double", nullable=False),
        Column("started_at", "timestamptz", nullable=False),
        Column("updated_at", "timestamptz", nullable=False),
        Column("details", "json", nullable=False),  # event-time marks, health at step start, looks so far
    ),
    primary_key=("rollout_id",),
)

ROLLOUT_TRANSITIONS = Table(
    "rollout_transitions",
    (
        Column("transition_id", "varchar", nullable=False),
        Column("rollout_id", "varchar", nullable=False),
        Column("happened_at", "timestamptz", nullable=False),
        Column("action", "varchar", nullable=False),
        Column("from_status", "varchar"),
        Column("to_status", "varchar", nullable=False),
        Column("step_index", "integer", nullable=False),
        Column("weight", "double", nullable=False),
        Column("actor", "varchar", nullable=False),
        Column("reason", "varchar", nullable=False),
        Column("numbers", "json", nullable=False),
    ),
    indexes=(("rollout_id", "happened_at"),),
    primary_key=("transition_id",),
)


class RolloutError(RuntimeError):
    """A rollout cannot do what was asked; the message says what and why."""


@dataclass
class Rollout:
    """One rollout's row of ``rollouts`` (``details`` holds the marks the analysis needs)."""

    rollout_id: str
    model_name: str
    candidate_version: str
    champion_version: str
    status: str
    step_index: int  # index into policy.steps of the current step
    weight: float
    started_at: datetime
    updated_at: datetime
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "model_name": self.model_name,
            "candidate_version": self.candidate_version,
            "champion_version": self.champion_version,
            "status": self.status,
            "step_index": self.step_index,
            "weight": self.weight,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "details": self.details,
        }


@dataclass(frozen=True)
class Transition:
    """One row of ``rollout_transitions``."""

    transition_id: str
    rollout_id: str
    happened_at: datetime
    action: str
    from_status: str | None
    to_status: str
    step_index: int
    weight: float
    actor: str
    reason: str
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in ROLLOUT_TRANSITIONS.column_names}
        data["happened_at"] = self.happened_at.isoformat()
        return data


@dataclass(frozen=True)
class LookOutcome:
    """What one ``analyse`` call decided and did."""

    rollout: Rollout
    decision: StepDecision | None  # None when the rollout was not running (paused or final)
    action: str  # waited, advanced, promoted, rolled_back, halted, skipped
    logs: LogWindow | None = None
    health: HealthDelta | None = None

    @property
    def finished(self) -> bool:
        return self.rollout.is_final

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout.to_dict(),
            "action": self.action,
            "decision": None if self.decision is None else self.decision.to_dict(),
            "logs": None if self.logs is None else self.logs.to_dict(),
            "health": None if self.health is None else self.health.to_dict(),
        }

    def table(self) -> str:
        """The decision's table for task logs, with the action taken."""
        if self.decision is None:
            return f"rollout {self.rollout.rollout_id}: {self.action} (status {self.rollout.status})"
        rollout = self.rollout
        return f"{self.decision.table()}\naction: {self.action} -> status {rollout.status}, weight {rollout.weight:.0%}"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _json(value: Any) -> str:
    from loopline.registry import _jsonable

    return json.dumps(_jsonable(value), sort_keys=True, default=str)


class RolloutController:
    """Starts, analyses, promotes, rolls back and pauses rollouts; every change is audited.

    Stores default to the profile's settings: the rollout state store (``rollout_state_uri``), the
    log store (``log_store_uri``), the warehouse (``warehouse_uri``) and MLflow (``mlflow_tracking_uri``).
    ``metrics_url`` is the service's ``/metrics`` (None: no health guards beyond what the logs show,
    e.g. in batch replays); ``health_source`` may replace the scrape (a callable returning a
    ``HealthSnapshot``, e.g. an in-process service's registry).
    """

    def __init__(
        self,
        *,
        policy: CanaryPolicy | None = None,
        state_store: Any = None,
        log_store: Any = None,
        warehouse_uri: str | None = None,
        tracking_uri: str | None = None,
        metrics_url: str | None = None,
        health_source: Any = None,
        model_name: str | None = None,
        attribution_window: timedelta = DEFAULT_ATTRIBUTION_WINDOW,
        settle: timedelta = timedelta(seconds=15),
    ):
        from loopline.config import settings
        from loopline.logstore import LogStore
        from loopline.registry import MODEL_NAME
        from loopline.serving.routing import state_store as make_state_store

        config = settings()
        self.policy = policy or load_canary_policy()
        self.state_store = state_store or make_state_store(config.rollout_state_uri)
        self.log_store = log_store or LogStore.from_uri(config.log_store_uri, s3_endpoint_url=config.s3_endpoint_url)
        self.warehouse_uri = warehouse_uri or config.warehouse_uri
        self.tracking_uri = tracking_uri
        self.metrics_url = metrics_url
        self.health_source = health_source
        self.model_name = model_name or MODEL_NAME
        self.attribution_window = attribution_window
        self.settle = settle

    # -- storage ------------------------------------------------------------------------------------

    @contextmanager
    def _warehouse(self) -> Iterator[Warehouse]:
        with Warehouse.from_uri(self.warehouse_uri) as warehouse:
            warehouse.ensure_table(ROLLOUTS)
            warehouse.ensure_table(ROLLOUT_TRANSITIONS)
            yield warehouse

    def _save(self, rollout: Rollout, transition: Transition | None) -> None:
        """Upsert the rollout row and append the transition, in one warehouse transaction."""
        row = rollout.to_dict() | {"started_at": rollout.started_at, "updated_at": rollout.updated_at}
        row["details"] = _json(rollout.details)
        columns = ROLLOUTS.column_names
        with self._warehouse() as warehouse, warehouse.transaction():
            warehouse.execute(f"DELETE FROM {ROLLOUTS.name} WHERE rollout_id = ?", [rollout.rollout_id])
            warehouse.execute(
                f"INSERT INTO {ROLLOUTS.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [row[name] for name in columns],
            )
            if transition is not None:
                values = transition.to_dict() | {"happened_at": transition.happened_at}
                values["numbers"] = _json(transition.numbers)
                names = ROLLOUT_TRANSITIONS.column_names
                warehouse.execute(
                    f"INSERT INTO {ROLLOUT_TRANSITIONS.name} ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' for _ in names)})",
                    [values[name] for name in names],
                )

    def get(self, rollout_id: str) -> Rollout:
        """The stored rollout; raises RolloutError if there is none with that id."""
        with self._warehouse() as warehouse:
            rows = warehouse.query(
                f"SELECT {', '.join(ROLLOUTS.column_names)} FROM {ROLLOUTS.name} WHERE rollout_id = ?", [rollout_id]
            )
        if not rows:
            raise RolloutError(f"no rollout {rollout_id!r} in the {ROLLOUTS.name} table")
        data = dict(zip(ROLLOUTS.column_names, rows[0], strict=True))
        data["details"] = json.loads(data["details"]) if isinstance(data["details"], str) else data["details"]
        for name in ("started_at", "updated_at"):
            moment = data[name]
            data[name] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        data["weight"] = float(data["weight"])
        return Rollout(**data)

    def active(self) -> Rollout | None:
        """The running or paused rollout, if any (at most one exists at a time)."""
        with self._warehouse() as warehouse:
            rows = warehouse.query(
                f"SELECT rollout_id FROM {ROLLOUTS.name} WHERE status IN (?, ?) ORDER BY started_at DESC",
                [RUNNING, PAUSED],
            )
        return self.get(rows[0][0]) if rows else None

    def history(self, rollout_id: str) -> list[Transition]:
        """The rollout's transitions, oldest first."""
        with self._warehouse() as warehouse:
            rows = warehouse.query(
                f"SELECT {', '.join(ROLLOUT_TRANSITIONS.column_names)} FROM {ROLLOUT_TRANSITIONS.name} "
                "WHERE rollout_id = ? ORDER BY happened_at, transition_id",
                [rollout_id],
            )
        out = []
        for row in rows:
            data = dict(zip(ROLLOUT_TRANSITIONS.column_names, row, strict=True))
            data["numbers"] = json.loads(data["numbers"]) if isinstance(data["numbers"], str) else data["numbers"]
            moment = data["happened_at"]
            data["happened_at"] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            data["weight"] = float(data["weight"])
            out.append(Transition(**data))
        return out

    def _transition(
        self,
        rollout: Rollout,
        *,
        action: str,
        from_status: str | None,
        actor: str,
        reason: str,
        numbers: Mapping[str, Any],
    ) -> Transition:
        return Transition(
            transition_id=uuid.uuid4().hex,
            rollout_id=rollout.rollout_id,
            happened_at=_now(),
            action=action,
            from_status=from_status,
            to_status=rollout.status,
            step_index=rollout.step_index,
            weight=rollout.weight,
            actor=actor,
            reason=reason,
            numbers=dict(numbers),
        )

    # -- observation helpers ------------------------------------------------------------------------

    def _health(self) -> HealthSnapshot | None:
        if self.health_source is not None:
            return self.health_source()
        if self.metrics_url:
            return scrape_health(self.metrics_url)
        return None

    def _high_water_mark(self, since: datetime) -> datetime | None:
        """The latest event time logged since ``since`` (up to an hour past the wall clock)."""
        until = max(_now(), since) + timedelta(hours=1)
        return observe_logs(self.log_store, since, since, attribution_window=until - since).high_water_mark

    def _write_state(self, **changes: Any) -> None:
        from loopline.serving.routing import TrafficState

        current = self.state_store.read()
        if current is None:
            self.state_store.write(TrafficState(**changes))
        else:
            self.state_store.write(current.with_changes(**changes))

    # -- the transitions ----------------------------------------------------------------------------

    def start(
        self,
        candidate_version: str | int,
        *,
        actor: str = "loopline",
        reason: str = "new candidate",
        event_start: datetime | None = None,
    ) -> Rollout:
        """Send the first step's share of users to ``candidate_version`` against the current champion.

        ``event_start``: where the rollout's event-time window starts (default: now, or the logs'
        high-water mark if that is later, e.g. a replayed day). Refuses while another rollout runs.
        """
        from loopline.registry import CHAMPION, alias_version

        candidate = str(candidate_version)
        running = self.active()
        if running is not None:
            raise RolloutError(
                f"rollout {running.rollout_id} of version {running.candidate_version} is {running.status}; "
                "promote, roll back or halt it before starting another"
            )
        state = self.state_store.read()
        champion = (state.champion_version if state else None) or alias_version(
            CHAMPION, model_name=self.model_name, tracking_uri=self.tracking_uri
        )
        if champion is not None and champion == candidate:
            raise RolloutError(f"version {candidate} is already the champion")
        now = _now()
        if event_start is None:
            event_start = now
        if champion is None:
            return self._first_model(candidate, actor=actor, reason=reason, now=now)
        first = self.policy.steps[0]
        rollout = Rollout(
            rollout_id=f"rollout-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
            model_name=self.model_name,
            candidate_version=candidate,
            champion_version=str(champion),
            status=RUNNING,
            step_index=0,
            weight=float(first.weight),
            started_at=now,
            updated_at=now,
        )
        health = self._health()
        rollout.details = {
            "event_start": event_start.astimezone(UTC).isoformat(),
            "step_event_start": event_start.astimezone(UTC).isoformat(),
            "step_started_at": now.isoformat(),
            "step_health": None if health is None else health.to_dict(),
            "looks": [],  # information fractions of the analysed looks
            "policy": self.policy.flat(),
        }
        self._save(
            rollout,
            self._transition(
                rollout,
                action="started",
                from_status=None,
                actor=actor,
                reason=reason,
                numbers={"champion_version": champion, "candidate_version": candidate, "weight": rollout.weight},
            ),
        )
        self._write_state(
            champion_version=str(champion),
            canary_version=candidate,
            canary_weight=rollout.weight,
            rollout_id=rollout.rollout_id,
        )
        LOG.info("rollout %s: version %s at %.0f%% against champion %s", rollout.rollout_id, candidate,
                 rollout.weight * 100, champion)  # fmt: skip
        return rollout

    def _first_model(self, candidate: str, *, actor: str, reason: str, now: datetime) -> Rollout:
        """No champion yet: nothing to compare with, so the first validated model is promoted at once."""
        rollout = Rollout(
            rollout_id=f"rollout-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
            model_name=self.model_name,
            candidate_version=candidate,
            champion_version="",
            status=RUNNING,
            step_index=len(self.policy.steps) - 1,
            weight=1.0,
            started_at=now,
            updated_at=now,
            details={"first_model": True, "policy": self.policy.flat()},
        )
        why = f"{reason}: first model, no champion to compare with"
        return self._promote(rollout, actor, why, {"first_model": True, "candidate_version": candidate})

    def _arms(self, rollout: Rollout, end: datetime, health: HealthDelta | None) -> tuple[Any, ...]:
        """(cumulative canary, cumulative champion, step canary, step champion, cumulative logs, step logs)."""
        event_start = _aware(rollout.details["event_start"])
        step_start = _aware(rollout.details["step_event_start"])
        total = observe_logs(
            self.log_store, event_start, max(end, event_start), attribution_window=self.attribution_window
        )
        step = observe_logs(
            self.log_store, step_start, max(end, step_start), attribution_window=self.attribution_window
        )

        def arm(window: LogWindow, name: str, with_health: bool) -> ArmMetrics:
            counts = window.arms[name]
            requests = errors = 0
            latency = None
            if with_health and health is not None:
                errors = health.errors.get(name, 0)
                requests = max(health.requests.get(name, 0), errors)
                latency = health.p99_latency_ms.get(name)
            return ArmMetrics(
                impressions=counts.impressions,
                clicks=counts.clicks,
                conversions=counts.conversions,
                requests=requests,
                errors=errors,
                p99_latency_ms=latency,
                users=counts.users,
                name=name,
            )

        return (
            arm(total, "canary", False),
            arm(total, "champion", False),
            arm(step, "canary", True),
            arm(step, "champion", True),
            total,
            step,
        )

    def analyse(self, rollout_id: str, *, actor: str = "loopline", as_of: datetime | None = None) -> LookOutcome:
        """One look at the current step; carries out the decision. ``as_of``: the event-time cutoff
        (default: the logs' high-water mark minus the attribution window, so open impressions wait)."""
        rollout = self.get(rollout_id)
        if rollout.status != RUNNING:
            return LookOutcome(rollout, None, "skipped")
        step_policy = self.policy.steps[rollout.step_index]
        step_event_start = _aware(rollout.details["step_event_start"])
        mark = self._high_water_mark(_aware(rollout.details["event_start"]))
        if as_of is None:
            as_of = (mark - self.attribution_window) if mark else step_event_start
        health_now = self._health()
        before = rollout.details.get("step_health")
        health = (
            health_between(HealthSnapshot.from_dict(before) if before else None, health_now)
            if health_now is not None
            else None
        )
        canary, champion, step_canary, step_champion, total, step = self._arms(rollout, as_of, health)
        elapsed_event = max(as_of - step_event_start, timedelta(0))
        elapsed_wall = _now() - _aware(rollout.details["step_started_at"])
        limit = step_policy.max_hours
        time_limit_reached = limit is not None and max(elapsed_event, elapsed_wall) >= timedelta(hours=limit)
        decision = analyze_step(
            canary,
            champion,
            weight=rollout.weight,
            look=rollout.step_index + 1,
            policy=self.policy,
            previous_fractions=rollout.details.get("looks") or None,
            time_limit_reached=time_limit_reached,
            step_canary=step_canary,
            step_champion=step_champion,
        )
        numbers = {"decision": decision.to_dict(), "logs": step.to_dict(), "cumulative_logs": total.to_dict()}
        if health is not None:
            numbers["health"] = health.to_dict()
        LOG.info("%s", decision.table())
        kind = decision.decision
        if kind == "wait_for_sample":
            return LookOutcome(rollout, decision, "waited", step, health)
        if kind == "halt_srm":
            rollout = self._finish(rollout, HALTED, "halted", actor, decision.reason, numbers, weight_zero=True)
            LOG.error("ALERT rollout %s halted: %s", rollout.rollout_id, decision.reason)
            return LookOutcome(rollout, decision, "halted", step, health)
        if kind == "rollback":
            rollout = self._finish(
                rollout, ROLLED_BACK, "rolled_back", actor, decision.reason, numbers, weight_zero=True
            )
            return LookOutcome(rollout, decision, "rolled_back", step, health)
        looks = [*rollout.details.get("looks", []), decision.information_fraction]
        next_index = rollout.step_index + 1
        is_last_look = next_index >= len(self.policy.looks)
        if kind == "promote" or is_last_look:
            rollout.details["looks"] = looks
            rollout = self._promote(rollout, actor, decision.reason, numbers)
            return LookOutcome(rollout, decision, "promoted", step, health)
        # continue: the next step's weight, a new step window from here
        previous_status = rollout.status
        rollout.step_index = next_index
        rollout.weight = float(self.policy.steps[next_index].weight)
        rollout.updated_at = _now()
        rollout.details |= {
            "looks": looks,
            # the next step counts events after everything logged so far (all served at the old weight)
            "step_event_start": (max(mark or as_of, as_of, step_event_start) + self.settle).isoformat(),
            "step_started_at": rollout.updated_at.isoformat(),
            "step_health": None if health_now is None else health_now.to_dict(),
        }
        self._write_state(canary_weight=rollout.weight)
        self._save(
            rollout,
            self._transition(
                rollout,
                action="advanced",
                from_status=previous_status,
                actor=actor,
                reason=decision.reason,
                numbers=numbers,
            ),
        )
        return LookOutcome(rollout, decision, "advanced", step, health)

    def _finish(
        self,
        rollout: Rollout,
        status: str,
        action: str,
        actor: str,
        reason: str,
        numbers: Mapping[str, Any],
        *,
        weight_zero: bool,
    ) -> Rollout:
        """Roll back or halt: canary weight 0 (champion keeps serving), aliases unchanged, audited."""
        previous_status = rollout.status
        if weight_zero:
            self._write_state(
                champion_version=rollout.champion_version, canary_version=None, canary_weight=0.0, rollout_id=None
            )
        rollout = replace(rollout, status=status, weight=0.0, updated_at=_now())
        self._save(
            rollout,
            self._transition(
                rollout, action=action, from_status=previous_status, actor=actor, reason=reason, numbers=numbers
            ),
        )
        LOG.warning("rollout %s %s: %s", rollout.rollout_id, status, reason)
        return rollout

    def _promote(self, rollout: Rollout, actor: str, reason: str, numbers: Mapping[str, Any]) -> Rollout:
        """Champion alias to the candidate (old one to ``previous``), serving switched, audited."""
        from loopline.registry import promote

        previous_status = rollout.status
        moves = promote(
            rollout.candidate_version,
            reason=f"canary {rollout.rollout_id}: {reason}",
            run_id=rollout.rollout_id,
            model_name=self.model_name,
            tracking_uri=self.tracking_uri,
            warehouse_uri=self.warehouse_uri,
        )
        self._write_state(
            champion_version=rollout.candidate_version, canary_version=None, canary_weight=0.0, rollout_id=None
        )
        rollout = replace(rollout, status=PROMOTED, weight=1.0, updated_at=_now())
        numbers = dict(numbers) | {"alias_moves": [move.to_dict() for move in moves]}
        self._save(
            rollout,
            self._transition(
                rollout, action="promoted", from_status=previous_status, actor=actor, reason=reason, numbers=numbers
            ),
        )
        LOG.info("rollout %s promoted version %s to champion", rollout.rollout_id, rollout.candidate_version)
        return rollout

    # -- manual overrides ---------------------------------------------------------------------------

    def override(self, rollout_id: str, action: str, *, reason: str, actor: str) -> Rollout:
        """A person's decision from the Airflow UI: promote now, roll back now, pause or resume.

        Each needs a reason (it goes into the audit trail with the actor).
        """
        if action not in MANUAL_ACTIONS:
            raise RolloutError(f"override action {action!r}: expected one of {', '.join(MANUAL_ACTIONS)}")
        if not reason or not reason.strip():
            raise RolloutError(f"override {action!r} of rollout {rollout_id} needs a reason for the audit trail")
        rollout = self.get(rollout_id)
        if rollout.is_final:
            raise RolloutError(f"rollout {rollout_id} is already {rollout.status}; {action} does not apply")
        numbers = {"manual": True, "action": action}
        if action == "promote":
            return self._promote(rollout, actor, f"manual promotion: {reason}", numbers)
        if action == "rollback":
            return self._finish(rollout, ROLLED_BACK, "rolled_back", actor, f"manual rollback: {reason}", numbers,
                                weight_zero=True)  # fmt: skip
        wanted = PAUSED if action == "pause" else RUNNING
        if rollout.status == wanted:
            raise RolloutError(f"rollout {rollout_id} is already {wanted}")
        previous_status = rollout.status
        rollout = replace(rollout, status=wanted, updated_at=_now())
        self._save(
            rollout,
            self._transition(
                rollout,
                action="paused" if action == "pause" else "resumed",
                from_status=previous_status,
                actor=actor,
                reason=reason,
                numbers=numbers,
            ),
        )
        return rollout
