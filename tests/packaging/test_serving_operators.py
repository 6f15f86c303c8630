"""The serving operators: ``execute`` with a real context-like dict after rendering their templates,
on the session's real world (a registered model, a feature store, a warehouse)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from loopline_airflow.operators.serving import BentoPackageOperator, BentoValidateOperator, ScoreBatchOperator

from tests.packaging.world import PackagingWorld


def test_template_fields_cover_every_run_time_value():
    assert set(BentoPackageOperator.template_fields) == {"version"}
    assert set(BentoValidateOperator.template_fields) == {
        "bento_tag",
        "p99_ms",
        "score_tolerance",
        "latency_requests",
        "real_requests",
    }
    assert {"version", "destination", "input_uri", "interval_start", "interval_end"} <= set(
        ScoreBatchOperator.template_fields
    )


def _day_context(world: PackagingWorld, **extra) -> dict:
    last_day = datetime.combine(world.world.start_date, datetime.min.time(), tzinfo=UTC) + timedelta(
        days=world.world.days - 1
    )
    return {"data_interval_start": last_day, "data_interval_end": last_day + timedelta(days=1), **extra}


@pytest.mark.slow
def test_score_batch_operator_scores_the_data_interval(world: PackagingWorld):
    from loopline.serving.scoring import scores_of

    context = _day_context(world, params={"version": world.versions[1], "table": "operator_scores"})
    operator = ScoreBatchOperator(task_id="score", version="{{ params.version }}", destination="{{ params.table }}")
    operator.render_template_fields(context)
    assert (operator.version, operator.destination) == (world.versions[1], "operator_scores")
    result = operator.execute(context)
    assert result["model_version"] == world.versions[1] and result["output"] == "table:operator_scores"
    assert result["interval_start"] == context["data_interval_start"].isoformat() and result["rows"] > 0
    assert len(scores_of("operator_scores", scoring_run_id=result["scoring_run_id"])) == result["rows"]


@pytest.mark.slow
def test_score_batch_operator_replays_an_explicit_interval(world: PackagingWorld):
    day = _day_context(world)
    context = {"params": {"start": day["data_interval_start"].isoformat(), "end": day["data_interval_end"].isoformat()}}
    operator = ScoreBatchOperator(
        task_id="replay",
        version="challenger",
        interval_start="{{ params.start }}",
        interval_end="{{ params.end }}",
        replay=True,
        baseline="champion",
    )
    operator.render_template_fields(context)
    result = operator.execute(context)
    assert result["mode"] == "replay"
    assert result["comparison"]["candidate"]["version"] == world.versions[1]
    assert result["comparison"]["baseline"]["version"] == world.versions[0]


@pytest.mark.slow
def test_package_then_validate_operators_hand_over_through_xcom(world: PackagingWorld):
    pushed = {"register": {"version": world.versions[0], "alias": "challenger"}}
    task_instance = SimpleNamespace(xcom_pull=lambda task_ids: pushed[task_ids])
    context = {"ti": task_instance, "dag_run": SimpleNamespace(run_id="manual__operator-test"), "params": {}}

    package = BentoPackageOperator(
        task_id="package", version="{{ ti.xcom_pull(task_ids='register')['version'] }}", export=False
    )
    package.render_template_fields(context)
    assert package.version == world.versions[0]
    packaged = package.execute(context)
    assert packaged["export_uri"] is None and packaged["labels"]["packaged_by"] == "manual__operator-test"
    pushed["package"] = packaged

    context["params"] = {"p99": 150, "requests": 40}
    validate = BentoValidateOperator(
        task_id="validate",
        bento_tag="{{ ti.xcom_pull(task_ids='package')['bento_tag'] }}",
        p99_ms="{{ params.p99 }}",
        latency_requests="{{ params.requests }}",
        real_requests=5,
    )
    validate.render_template_fields(context)
    assert validate.bento_tag == packaged["bento_tag"] and validate.p99_ms == "150"
    result = validate.execute(context)
    assert result["passed"] is True and result["bento_tag"] == packaged["bento_tag"]
    assert result["max_abs_diff"] <= 1e-5 and result["p99_ms"] <= 150 and result["verdict_id"]

    from loopline.registry import verdict_history

    stored = next(row for row in verdict_history("bento_validation") if row["verdict_id"] == result["verdict_id"])
    assert stored["details"]["policy"]["latency_requests"] == 40 and stored["details"]["latency"]["requests"] == 40
