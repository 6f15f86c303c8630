"""loopline_retrain: gates -> train -> evaluate -> compress -> register -> package -> validate -> candidate Asset."""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from loopline_airflow.assets import CANDIDATE, FEATURES
from loopline_airflow.operators.gates import DataQualityGateOperator, DriftGateOperator
from loopline_airflow.operators.serving import BentoPackageOperator, BentoValidateOperator
from loopline_airflow.operators.training import (
    CompressModelOperator,
    EvaluateCandidateOperator,
    RegisterCandidateOperator,
    TrainModelOperator,
)

DOC = """
### loopline_retrain

Nightly at 02:00 UTC, and whenever `loopline_etl` updates the **loopline_features** Asset. The
training window is the `window_days` days up to the start of the run's day (UTC).

1. **quality_gate**: volume, label rate, label noise (bot-like users, conflicting labels, clicks
   without impressions), PII in any string column, per-feature PSI/KL. `block` fails the run.
2. **drift_gate**: Evidently data drift of the window against the reference window; skipped
   (with the reason) before the first model or when `skip_drift_gate` is set with a reason.
3. **decide**: trains when forced, when there is no champion yet, or when a gate says `retrain`;
   otherwise the run ends here (both gates passed and a champion serves).
4. **train**: PyTorch CTR ranker on the window's point-in-time training set, logged to MLflow with
   lineage tags. 5. **evaluate**: BLESSED only if value thresholds hold and, against the champion on
   the same holdout, change thresholds too; NOT_BLESSED skips the rest.
6. **compress**: INT8 / pruned / distilled variants measured against FP32; the smallest within
   tolerance serves. 7. **register**: new `loopline-ctr` version, alias `challenger` (audited).
8. **package**: the version imported into the BentoML model store (`loopline-ctr:v<N>`), a Bento of the
   ranking service built with it (labels: MLflow version, run, lineage) and exported to `<artifact_uri>/bentos/`.
9. **validate**: the Bento served on a free local port; canned and real requests, schema, served scores
   equal to offline scores, p99 latency under `validation_p99_ms`; then stopped. Emits the
   **loopline_candidate** Asset, which schedules `loopline_canary`: only a validated Bento is a candidate.

Every decision is printed as a table in its task log and stored in the warehouse.
"""


@dag(
    dag_id="loopline_retrain",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=FEATURES),
    start_date=pendulum.datetime(2024, 5, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,  # Params keep their types (numbers stay numbers)
    default_args={"owner": "ml-engineering", "retries": 1, "retry_delay": pendulum.duration(minutes=10)},
    doc_md=DOC,
    tags=["loopline", "training", "gates"],
    params={
        "force_retrain": Param(False, type="boolean", description="Train even if both gates pass."),
        "skip_drift_gate": Param(False, type="boolean", description="Skip the drift gate (needs a reason)."),
        "skip_drift_reason": Param("", type="string", description="Why the drift gate is skipped."),
        "window_days": Param(7, type="integer", minimum=1, maximum=90, description="Training window in days."),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=100,
            description="Upper bound on training epochs (default: models/ctr_ranker.yaml).",
        ),
        "validation_p99_ms": Param(
            100, type="number", minimum=1, description="Bento validation: p99 latency threshold of /rank (ms)."
        ),
        "gate_policy": Param(
            {}, type="object", description='Gate policy overrides, e.g. {"quality.max_noisy_share": 0.2}.'
        ),
    },
)
def loopline_retrain():
    quality = DataQualityGateOperator(
        task_id="quality_gate", window_days="{{ params.window_days }}", policy_overrides="{{ params.gate_policy }}"
    )
    drift = DriftGateOperator(
        task_id="drift_gate",
        window_days="{{ params.window_days }}",
        policy_overrides="{{ params.gate_policy }}",
        skip="{{ params.skip_drift_gate }}",
        skip_reason="{{ params.skip_drift_reason }}",
    )

    @task.short_circuit(task_id="decide")
    def decide(quality_result: dict, drift_result: dict, params: dict | None = None) -> bool:
        from loopline.gate_runs import retrain_decision
        from loopline.registry import alias_version

        train, why = retrain_decision(
            quality_result,
            drift_result,
            force=bool((params or {}).get("force_retrain")),
            has_champion=alias_version("champion") is not None,
        )
        print(f"retrain: {train} ({why})")
        return train

    run_id = "{{ ti.xcom_pull(task_ids='train')['run_id'] }}"
    train = TrainModelOperator(
        task_id="train",
        window_days="{{ params.window_days }}",
        overrides={"training.epochs": "{{ params.epochs }}"},
        make_drift_report=True,  # the run carries an Evidently report of its holdout against its training days
    )
    evaluate = EvaluateCandidateOperator(task_id="evaluate", run_id=run_id)
    compress = CompressModelOperator(task_id="compress", run_id=run_id, window_days="{{ params.window_days }}")
    register = RegisterCandidateOperator(task_id="register", run_id=run_id)
    package = BentoPackageOperator(task_id="package", version="{{ ti.xcom_pull(task_ids='register')['version'] }}")
    validate = BentoValidateOperator(
        task_id="validate",
        bento_tag="{{ ti.xcom_pull(task_ids='package')['bento_tag'] }}",
        p99_ms="{{ params.validation_p99_ms }}",
        outlets=[CANDIDATE],
    )

    quality >> drift
    decide(quality.output, drift.output) >> train >> evaluate >> compress >> register >> package >> validate


loopline_retrain()
