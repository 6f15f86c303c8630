"""Retraining operators: train (torch + MLflow), evaluate against the champion, compress, register.

Each turns the context into arguments, calls one ``loopline`` function and returns its record to
XCom; the next task reads the training run id from the ``train`` task's XCom (templated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from loopline_airflow.utils import data_interval


def _window(context: Any, window_days: Any) -> Any:
    from loopline.gate_runs import window_ending

    return window_ending(data_interval(context)[1], int(window_days))


class TrainModelOperator(BaseOperator):
    """Train the CTR ranker on the window's training set (Feast point-in-time) and log it to MLflow.

    :param window_days: training window length in days, ending at the data interval end (templated).
    :param overrides: model config overrides, e.g. ``{"training.epochs": 5}`` (templated).
    :param make_drift_report: attach an Evidently report of the window to the run.
    """

    template_fields: Sequence[str] = ("window_days", "overrides")
    ui_color = "#d4f0d4"

    def __init__(
        self,
        *,
        window_days: Any = 7,
        overrides: dict[str, Any] | None = None,
        make_drift_report: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_days = window_days
        self.overrides = overrides
        self.make_drift_report = make_drift_report

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.features import CTR_RANKER_V1, training_set
        from loopline.training import Lineage, run_training

        window = _window(context, self.window_days)
        frame = training_set(window.start, window.end)
        self.log.info("training on %s: %d impressions", window.to_dict(), len(frame))
        dag_run = context.get("dag_run")
        lineage = Lineage(
            data_interval_start=window.start.isoformat(),
            data_interval_end=window.end.isoformat(),
            feature_service=CTR_RANKER_V1,
            airflow_dag_run_id=getattr(dag_run, "run_id", None),
        )
        overrides = {key: value for key, value in (self.overrides or {}).items() if value is not None}
        run = run_training(frame, overrides=overrides, lineage=lineage, make_drift_report=self.make_drift_report)
        result = run.to_dict()
        self.log.info("MLflow run %s: %s", run.run_id, result["metrics"])
        return result


class EvaluateCandidateOperator(BaseOperator):
    """The evaluation gate: BLESSED or NOT_BLESSED against the champion on the candidate's holdout.

    A NOT_BLESSED candidate skips the rest of the DAG (nothing is compressed or registered); the
    verdict with every number is in the log, in MLflow and in the ``gate_verdicts`` table.

    :param run_id: the candidate's MLflow run id (templated, usually from the train task's XCom).
    """

    template_fields: Sequence[str] = ("run_id",)
    ui_color = "#d4f0d4"

    def __init__(self, *, run_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.training import evaluate_candidate

        verdict = evaluate_candidate(self.run_id)
        self.log.info("evaluation verdict\n%s", verdict.to_table())
        if not verdict.blessed:
            raise AirflowSkipException(f"candidate run {self.run_id} NOT_BLESSED: nothing to compress or register")
        return verdict.to_dict()


class CompressModelOperator(BaseOperator):
    """The compression gate: INT8, structured pruning, distillation measured against FP32; keeps the best.

    :param run_id: the candidate's MLflow run id (templated).
    :param window_days: the training window the run used (templated; its rows are read again).
    """

    template_fields: Sequence[str] = ("run_id", "window_days")
    ui_color = "#d4f0d4"

    def __init__(self, *, run_id: str, window_days: Any = 7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.window_days = window_days

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.compress import compress_run
        from loopline.features import training_set

        window = _window(context, self.window_days)
        verdict = compress_run(self.run_id, train_frame=training_set(window.start, window.end))
        self.log.info("compression verdict\n%s", verdict.to_table())
        return verdict.to_dict()


class RegisterCandidateOperator(BaseOperator):
    """Register the blessed run's serving model as a new ``loopline-ctr`` version with alias ``challenger``.

    The alias move is written to the ``model_alias_audit`` table.

    :param run_id: the candidate's MLflow run id (templated).
    """

    template_fields: Sequence[str] = ("run_id",)
    ui_color = "#d4f0d4"

    def __init__(self, *, run_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.registry import register_candidate

        dag_run = context.get("dag_run")
        by = getattr(dag_run, "run_id", None)
        version = register_candidate(self.run_id, reason=f"retrain DAG run {by}", by_run_id=by)
        self.log.info("registered run %s as loopline-ctr version %s (alias challenger)", self.run_id, version)
        return {"run_id": self.run_id, "version": str(version), "alias": "challenger"}
