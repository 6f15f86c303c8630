"""loopline_etl: a day of logs -> validated raw_events -> dbt marts -> the features Asset."""

from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag
from loopline_airflow.assets import FEATURES
from loopline_airflow.operators.features import FeastApplyOperator, FeastMaterializeOperator
from loopline_airflow.operators.ingest import IngestLogsOperator
from loopline_airflow.operators.transform import DbtBuildOperator

DOC = """
### loopline_etl

Daily, on real data intervals: the run for day D starts after D ends and processes `[D, D+1)` UTC.

1. **ingest_logs** streams the interval's log partitions, validates every line against schema v1,
   drops duplicate event ids, redacts PII and replaces the interval's partitions of `raw_events`;
   rejected lines go to `quarantine_events` and a quarantine file. Counts go to XCom; the task fails
   (after storing everything) when the quarantined share passes the threshold.
2. **dbt_build** builds staging -> intermediate -> marts for the day (`training_examples`,
   `user_features`, `item_features`), replacing that day and the late-event lookback, and runs
   every dbt test; a failing model or test fails the task and is named in its log.

3. **feast_apply** registers `feature_repo/` (idempotent; runs beside the ingest).
4. **materialize_features** loads the interval's feature snapshots into the online store with
   Feast's `materialize(start - 1 h, end)` (never `materialize_incremental`), exporting them from
   the warehouse to the offline store first in the local profile.

On success it updates the **loopline_features** Asset, which schedules `loopline_retrain`.
Re-running a day, or a backfill, gives identical tables (every step replaces its partition).

Params (manual runs): `quarantine_threshold` (share of lines that may be rejected before the run
fails), `attribution_window_minutes` (dbt var).
"""


@dag(
    dag_id="loopline_etl",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2024, 5, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,  # Params keep their types (numbers stay numbers)
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": pendulum.duration(minutes=5)},
    doc_md=DOC,
    tags=["loopline", "etl"],
    params={
        "quarantine_threshold": Param(
            0.01,
            type="number",
            minimum=0,
            maximum=1,
            description="Fail the ingest when more than this share of lines is rejected.",
        ),
        "attribution_window_minutes": Param(
            30,
            type="integer",
            minimum=1,
            maximum=1440,
            description="A click labels an impression up to this many minutes later.",
        ),
    },
)
def loopline_etl():
    ingest = IngestLogsOperator(
        task_id="ingest_logs",
        quarantine_threshold="{{ params.quarantine_threshold }}",
    )
    build = DbtBuildOperator(
        task_id="dbt_build",
        dbt_vars={"attribution_window_minutes": "{{ params.attribution_window_minutes }}"},
    )
    register = FeastApplyOperator(task_id="feast_apply")
    materialize = FeastMaterializeOperator(task_id="materialize_features", outlets=[FEATURES])
    ingest >> build >> materialize
    register >> materialize


loopline_etl()
