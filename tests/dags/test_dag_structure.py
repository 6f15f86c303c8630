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


def test_etl_dag_ingests_builds_materializes_then_emits_the_features_asset(dags):
    from airflow.sdk import CronDataIntervalTimetable
    from loopline_airflow.assets import FEATURES

    dag = dags["loopline_etl"]
    assert {t.task_id for t in dag.tasks} == {"ingest_logs", "dbt_build", "feast_apply", "materialize_features"}
    assert edges(dag) == {
        ("ingest_logs", "dbt_build"),
        ("dbt_build", "materialize_features"),
        ("feast_apply", "materialize_features"),
    }
    assert isinstance(dag.timetable, CronDataIntervalTimetable), "daily runs need real data intervals"
    assert dag.catchup is False
    assert FEATURES in dag.get_task("materialize_features").outlets
    assert all(FEATURES not in task.outlets for task in dag.tasks if task.task_id != "materialize_features")
    assert set(dag.params.keys()) == {"quarantine_threshold", "attribution_window_minutes"}
