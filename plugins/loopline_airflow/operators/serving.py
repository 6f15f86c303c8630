"""Serving operators: package a registered model as a Bento, validate the Bento, score a table in batch.

Each turns the context into arguments, calls one ``loopline.serving`` function and returns its small
record to XCom. In the retrain DAG: ``register >> package >> validate``; the package task reads the
version from the register task's XCom, the validate task the Bento tag from the package task's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from loopline_airflow.utils import data_interval


def _run_id(context: Any) -> str | None:
    return getattr(context.get("dag_run"), "run_id", None)


class BentoPackageOperator(BaseOperator):
    """Import MLflow version N of ``loopline-ctr`` into the BentoML model store, build the Bento, export it.

    The Bento carries the MLflow version, run and lineage as labels and is exported to
    ``<artifact_uri>/bentos/`` (local disk or S3).

    :param version: the registered MLflow version (templated, usually from the register task's XCom).
    :param export: export the built Bento (default True).
    """

    template_fields: Sequence[str] = ("version",)
    ui_color = "#f0e4d4"

    def __init__(self, *, version: Any, export: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.export = export

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.serving.packaging import package

        result = package(str(self.version), export=self.export, packaged_by=_run_id(context))
        self.log.info(
            "Bento %s (model %s) exported to %s, %s bytes, seconds %s",
            result.bento_tag,
            result.model_tag,
            result.export_uri,
            result.size_bytes,
            result.seconds,
        )
        return result.to_dict()


class BentoValidateOperator(BaseOperator):
    """Serve a built Bento on a free local port; check schema, served vs offline scores and p99 latency.

    The verdict (every number) is logged as a table and stored in ``gate_verdicts`` (gate
    ``bento_validation``); a failed check fails the task with a message naming it.

    :param bento_tag: the Bento to validate (templated, usually from the package task's XCom).
    :param p99_ms: p99 latency threshold of sequential ``/rank`` calls, milliseconds (templated).
    :param score_tolerance: largest allowed |served - offline| score difference (templated).
    :param latency_requests: timed ``/rank`` calls (templated).
    :param real_requests: logged requests replayed for the score check (templated).
    """

    template_fields: Sequence[str] = ("bento_tag", "p99_ms", "score_tolerance", "latency_requests", "real_requests")
    ui_color = "#f0e4d4"

    def __init__(
        self,
        *,
        bento_tag: str,
        p99_ms: Any = None,
        score_tolerance: Any = None,
        latency_requests: Any = None,
        real_requests: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bento_tag = bento_tag
        self.p99_ms = p99_ms
        self.score_tolerance = score_tolerance
        self.latency_requests = latency_requests
        self.real_requests = real_requests

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.serving.packaging import BentoValidationError, ValidationPolicy, validate

        given = {
            "p99_ms": (self.p99_ms, float),
            "score_tolerance": (self.score_tolerance, float),
            "latency_requests": (self.latency_requests, int),
            "real_requests": (self.real_requests, int),
        }
        policy = ValidationPolicy(
            **{name: kind(value) for name, (value, kind) in given.items() if value not in (None, "")}
        )
        try:
            verdict = validate(str(self.bento_tag), policy=policy)
        except BentoValidationError as error:
            self.log.error("Bento validation failed: %s", error.verdict.get("checks"))
            raise
        self.log.info("Bento validation of %s\n%s", self.bento_tag, verdict.to_table())
        # The candidate Asset event names what was validated; loopline_canary rolls out exactly that.
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {
                "version": verdict.mlflow_version,
                "bento_tag": verdict.bento_tag,
                "verdict_id": verdict.verdict_id,
            }
        return {
            "bento_tag": verdict.bento_tag,
            "mlflow_version": verdict.mlflow_version,
            "passed": verdict.passed,
            "checks": verdict.checks,
            "verdict_id": verdict.verdict_id,
            "max_abs_diff": verdict.scores.get("max_abs_diff"),
            "p99_ms": verdict.latency.get("p99_ms"),
            "startup_seconds": verdict.startup_seconds,
            "seconds": verdict.seconds,
        }


class ScoreBatchOperator(BaseOperator):
    """Score a table offline with a registered version (a backfill), or replay logged impressions.

    Without ``input_uri`` the rows are the ``training_examples`` of the data interval (or of
    ``interval_start``/``interval_end``); with it, a Parquet/CSV file of (user_id, item_id[, event_at]).

    :param version: MLflow version or alias of ``loopline-ctr`` to score with (templated).
    :param destination: warehouse table (default ``batch_scores``) or a .parquet/.csv path/URI (templated).
    :param input_uri: a file to score instead of ``training_examples`` (templated).
    :param interval_start: explicit interval start, ISO (templated; with ``interval_end``).
    :param interval_end: explicit interval end, ISO (templated).
    :param replay: replay mode: score the interval's impressions and compare with ``baseline``.
    :param baseline: replay baseline version or alias (templated; default ``champion``).
    """

    template_fields: Sequence[str] = (
        "version",
        "destination",
        "input_uri",
        "interval_start",
        "interval_end",
        "baseline",
    )
    ui_color = "#f0e4d4"

    def __init__(
        self,
        *,
        version: Any,
        destination: str | None = None,
        input_uri: str | None = None,
        interval_start: Any = None,
        interval_end: Any = None,
        replay: bool = False,
        baseline: str | None = "champion",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.destination = destination
        self.input_uri = input_uri
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.replay = replay
        self.baseline = baseline

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.serving import scoring

        if self.input_uri:
            if self.replay:
                raise ValueError("replay scores logged impressions (training_examples): do not pass input_uri")
            result = scoring.score_table(str(self.version), source=str(self.input_uri), output=self.destination or None)
        else:
            start, end = data_interval(context, self.interval_start, self.interval_end)
            if self.replay:
                result = scoring.replay(
                    str(self.version), start, end, baseline=self.baseline or None, output=self.destination or None
                )
            else:
                result = scoring.score_table(str(self.version), start=start, end=end, output=self.destination or None)
        self.log.info("%s", scoring.summary(result))
        if result.comparison:
            self.log.info("replay comparison: %s", result.comparison)
        return result.to_dict()
