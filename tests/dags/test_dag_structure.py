"""Each DAG has the tasks, edges, schedule and Asset links the architecture draws."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.dags


def edges(dag) -> set[tuple[str, str]]:
    return {(task.task_id, downstream) for task in dag.tasks for downstream in task.downstream_task_ids}


def test_etl_dag_ingests_then_builds_then_emits_the_features_asset(dags):
    from airflow.sdk import CronDataIntervalTimetable
    from loopline_airflow.assets import FEATURES

    dag = dags["loopline_etl"]
    assert {t.task_id for t in dag.tasks} == {"ingest_logs", "dbt_build"}
    assert edges(dag) == {("ingest_logs", "dbt_build")}
    assert isinstance(dag.timetable, CronDataIntervalTimetable), "daily runs need real data intervals"
    assert dag.catchup is False
    last = dag.get_task("dbt_build")
    assert FEATURES in last.outlets
    assert set(dag.params.keys()) == {"quarantine_threshold", "attribution_window_minutes"}
