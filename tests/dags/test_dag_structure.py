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


def test_retrain_dag_runs_the_gates_then_trains_evaluates_compresses_registers_packages_validates(dags):
    from airflow.sdk import AssetOrTimeSchedule
    from loopline_airflow.assets import CANDIDATE

    dag = dags["loopline_retrain"]
    assert edges(dag) == {
        ("quality_gate", "drift_gate"),
        ("quality_gate", "decide"),
        ("drift_gate", "decide"),
        ("decide", "train"),
        ("train", "evaluate"),
        ("evaluate", "compress"),
        ("compress", "register"),
        ("register", "package"),
        ("package", "validate"),
    }
    assert isinstance(dag.timetable, AssetOrTimeSchedule), "nightly at 02:00 and on the features Asset"
    # Only a validated Bento is a candidate: the rollout DAG is scheduled by the validate task's Asset.
    assert CANDIDATE in dag.get_task("validate").outlets
    assert all(CANDIDATE not in task.outlets for task in dag.tasks if task.task_id != "validate")
    assert {
        "force_retrain",
        "skip_drift_gate",
        "skip_drift_reason",
        "window_days",
        "epochs",
        "validation_p99_ms",
    } <= set(dag.params.keys())
    assert dag.get_task("package").version == "{{ ti.xcom_pull(task_ids='register')['version'] }}"
    assert dag.get_task("validate").bento_tag == "{{ ti.xcom_pull(task_ids='package')['bento_tag'] }}"


def test_retrain_decision_follows_the_gates():
    from loopline.gate_runs import retrain_decision

    passed, retrain, block = {"outcome": "pass"}, {"outcome": "retrain"}, {"outcome": "block"}
    assert retrain_decision(block, passed, force=True, has_champion=False)[0] is False
    assert retrain_decision(passed, passed, force=True, has_champion=True)[0] is True
    assert retrain_decision(passed, {"outcome": "skipped"}, force=False, has_champion=False)[0] is True
    assert retrain_decision(passed, retrain, force=False, has_champion=True)[0] is True
    assert retrain_decision(passed, passed, force=False, has_champion=True) == (
        False,
        "both gates passed and a champion serves: nothing to retrain for",
    )


def test_canary_dag_starts_then_watches_three_steps_in_reschedule_mode(dags):
    from loopline_airflow.assets import CANDIDATE

    dag = dags["loopline_canary"]
    assert edges(dag) == {
        ("mode", "start_rollout"),
        ("mode", "override"),
        ("start_rollout", "step_1"),
        ("start_rollout", "report"),
        ("step_1", "step_2"),
        ("step_2", "step_3"),
        ("step_1", "report"),
        ("step_2", "report"),
        ("step_3", "report"),
    }
    assert list(dag.timetable.asset_condition.objects) == [CANDIDATE], "scheduled by the validated candidate"
    for index in range(3):
        sensor = dag.get_task(f"step_{index + 1}")
        assert sensor.mode == "reschedule", "no worker slot is held between looks"
        assert sensor.step_index == index
    assert dag.get_task("report").trigger_rule == "none_failed_min_one_success"
    assert {"action", "reason", "candidate_version", "metrics_url", "canary_policy"} <= set(dag.params.keys())
