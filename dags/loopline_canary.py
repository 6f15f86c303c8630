"""loopline_canary: roll a validated candidate out to a growing share of users; promote or roll back."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from loopline_airflow.assets import CANDIDATE
from loopline_airflow.operators.rollout import RolloutOverrideOperator, RolloutStepSensor, StartRolloutOperator

DOC = """
### loopline_canary

Scheduled by the **loopline_candidate** Asset (a registered, packaged and validated Bento from
`loopline_retrain`), and runnable from the UI.

1. **mode**: `action = auto` runs a rollout; any other action is a manual override of the running one.
2. **start_rollout**: the candidate (Param `candidate_version`, else the Asset event's version, else
   the `challenger` alias) gets the first step's share of users (by user-id hash) against the champion.
   With no champion yet, the first model is promoted at once.
3. **step_1..step_3**: reschedule-mode sensors (no worker slot held while waiting). Each poke is one
   look: per-arm impressions, clicks and purchases from the service's own logs, errors and p99
   latency from its `/metrics`; then SRM -> health guards -> sample size -> sequential CTR test
   (`loopline/policy/canary.yaml`, overridable with `canary_policy`). The decision table is printed
   in the task log. Continue moves to the next weight (5 % -> 25 % -> 50 %); passing the last look
   promotes (alias `champion` moves, the old one becomes `previous`); a failed guard or CTR test
   rolls back at once (weight 0, aliases unchanged); a sample-ratio mismatch halts and fails the task.
4. **report**: the rollout's audit trail (every transition with its numbers).

Manual overrides (`action` = `promote`, `rollback`, `pause`, `resume`) need a `reason`; they are
audited with this run as the actor.
"""

STEPS = 3  # analysed steps of the default policy (5 %, 25 %, 50 %); the 100 % step is the promotion
POKE_SECONDS = 300  # between looks; each look reads the logs since the rollout started


@dag(
    dag_id="loopline_canary",
    schedule=[CANDIDATE],
    start_date=pendulum.datetime(2024, 5, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    default_args={"owner": "ml-engineering", "retries": 1, "retry_delay": pendulum.duration(minutes=5)},
    doc_md=DOC,
    tags=["loopline", "serving", "canary"],
    params={
        "action": Param(
            "auto",
            enum=["auto", "promote", "rollback", "pause", "resume"],
            description="auto: run a rollout; otherwise a manual override of the running rollout.",
        ),
        "reason": Param("", type="string", description="Why (required for manual overrides; audited)."),
        "candidate_version": Param(
            None, type=["null", "string"], description="MLflow version to roll out (default: the Asset's / challenger)."
        ),
        "metrics_url": Param(
            "http://127.0.0.1:3000/metrics", type=["null", "string"], description="The service's /metrics URL."
        ),
        "canary_policy": Param({}, type="object", description='Canary policy overrides, e.g. {"ctr.margin": 0.1}.'),
        "attribution_minutes": Param(30, type="number", minimum=0, description="Click attribution window."),
        "event_start": Param(
            None,
            type=["null", "string"],
            description="Event time where the rollout's analysis starts, ISO 8601 (default: now). For replayed days.",
        ),
    },
)
def loopline_canary():
    @task.branch(task_id="mode")
    def mode(params: dict | None = None) -> str:
        action = (params or {}).get("action", "auto")
        if action != "auto" and not str((params or {}).get("reason") or "").strip():
            raise ValueError(f"action {action!r} needs a reason (it is written to the audit trail)")
        return "start_rollout" if action == "auto" else "override"

    start = StartRolloutOperator(
        task_id="start_rollout",
        candidate_version="{{ params.candidate_version }}",
        policy_overrides="{{ params.canary_policy }}",
        metrics_url="{{ params.metrics_url }}",
        reason="{{ params.reason or 'validated candidate' }}",
        event_start="{{ params.event_start }}",
    )
    override = RolloutOverrideOperator(task_id="override", action="{{ params.action }}", reason="{{ params.reason }}")
    rollout_id = "{{ ti.xcom_pull(task_ids='start_rollout')['rollout_id'] }}"
    steps = [
        RolloutStepSensor(
            task_id=f"step_{index + 1}",
            rollout_id=rollout_id,
            step_index=index,
            policy_overrides="{{ params.canary_policy }}",
            metrics_url="{{ params.metrics_url }}",
            attribution_minutes="{{ params.attribution_minutes }}",
            poke_interval=POKE_SECONDS,
            timeout=60 * 60 * 48,
        )
        for index in range(STEPS)
    ]

    @task(task_id="report", trigger_rule="none_failed_min_one_success")
    def report(start_result: dict) -> dict:
        from loopline.rollout import RolloutController

        controller = RolloutController()
        rollout = controller.get(start_result["rollout_id"])
        for transition in controller.history(rollout.rollout_id):
            print(
                f"{transition.happened_at:%Y-%m-%d %H:%M:%S} {transition.action:<12} step {transition.step_index} "
                f"weight {transition.weight:.0%} by {transition.actor}: {transition.reason}"
            )
        print(f"rollout {rollout.rollout_id}: {rollout.status} (candidate {rollout.candidate_version})")
        return {
            "rollout_id": rollout.rollout_id,
            "status": rollout.status,
            "candidate_version": rollout.candidate_version,
        }

    chosen = mode()
    chosen >> [start, override]
    start >> steps[0]
    for before, after in zip(steps, steps[1:], strict=False):
        before >> after
    steps >> report(start.output)


loopline_canary()
