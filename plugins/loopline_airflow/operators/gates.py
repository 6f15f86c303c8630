"""Gate operators: the data-quality gate and the Evidently drift gate on the run's training window.

Each returns its decision (outcome, reasons with numbers, thresholds, report location) to XCom and
prints it as a table in the task log; the retrain DAG branches on ``outcome``. A ``block`` fails
the task without retries unless ``fail_on_block`` is off (then the DAG's branch decides).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from loopline_airflow.utils import data_interval


class _GateOperator(BaseOperator):
    """Shared constructor and logging of the two gates (template fields, window, policy overrides).

    :param window_days: length of the training window, ending at the run's data interval end (templated).
    :param policy_overrides: gate policy overrides, e.g. ``{"quality.max_noisy_share": 0.2}`` (templated;
        usually ``params.gate_policy``); unknown keys fail the task naming the key.
    :param reference_start: start of the reference window (templated); default the champion's window
        when given, else the window of the same length just before.
    :param reference_end: end of the reference window (templated); give both or neither.
    :param warehouse_uri: warehouse URI (templated); default from settings.
    :param fail_on_block: fail the task (no retries) when the outcome is ``block``.
    """

    template_fields: Sequence[str] = (
        "window_days",
        "policy_overrides",
        "reference_start",
        "reference_end",
        "warehouse_uri",
    )
    gate = ""

    def __init__(
        self,
        *,
        window_days: Any = 7,
        policy_overrides: dict[str, Any] | None = None,
        reference_start: Any = None,
        reference_end: Any = None,
        warehouse_uri: str | None = None,
        fail_on_block: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_days = window_days
        self.policy_overrides = policy_overrides
        self.reference_start = reference_start
        self.reference_end = reference_end
        self.warehouse_uri = warehouse_uri
        self.fail_on_block = fail_on_block

    def _windows(self, context: Any) -> tuple[Any, Any]:
        from loopline.gate_runs import Window, window_ending

        _, end = data_interval(context)
        window = window_ending(end, int(self.window_days))
        reference = None
        if self.reference_start not in (None, "") or self.reference_end not in (None, ""):
            reference = Window(*data_interval({}, self.reference_start, self.reference_end))
        return window, reference

    def _report(self, decision: Any) -> dict[str, Any]:
        self.log.info("%s gate decision\n%s", self.gate, decision.to_table())
        result = decision.to_dict()
        if decision.outcome == "block" and self.fail_on_block:
            raise AirflowFailException(f"{self.gate} gate: BLOCK ({'; '.join(decision.reasons)})")
        return result


class DataQualityGateOperator(_GateOperator):
    """Volume, label rate, label noise, PII and per-feature PSI/KL of the training window."""

    gate = "quality"
    ui_color = "#fde9b8"

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.gate_runs import run_quality_gate

        window, reference = self._windows(context)
        self.log.info("quality gate on %s (reference %s)", window.to_dict(), reference and reference.to_dict())
        decision = run_quality_gate(
            window,
            reference=reference,
            policy_overrides=self.policy_overrides or None,
            warehouse_uri=self.warehouse_uri or None,
        )
        return self._report(decision)


class DriftGateOperator(_GateOperator):
    """Evidently DataDriftPreset of the training window against the reference window.

    :param skip: skip the gate for this run (templated, e.g. ``params.skip_drift_gate``).
    :param skip_reason: required with ``skip``; recorded in the result and the log (templated).
    Without reference data (before the first model) the gate reports ``skipped`` with that reason.
    """

    template_fields: Sequence[str] = (*_GateOperator.template_fields, "skip", "skip_reason")
    gate = "drift"
    ui_color = "#fde9b8"

    def __init__(self, *, skip: Any = False, skip_reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip = skip
        self.skip_reason = skip_reason

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.gate_runs import NoReferenceData, run_drift_gate

        if self.skip in (True, "True", "true"):
            if not (self.skip_reason or "").strip():
                raise AirflowFailException("skipping the drift gate needs a reason (param skip_drift_reason)")
            self.log.warning("drift gate skipped: %s", self.skip_reason)
            return {"gate": "drift", "outcome": "skipped", "reasons": [f"skipped by request: {self.skip_reason}"]}
        window, reference = self._windows(context)
        self.log.info("drift gate on %s (reference %s)", window.to_dict(), reference and reference.to_dict())
        try:
            decision = run_drift_gate(
                window,
                reference=reference,
                policy_overrides=self.policy_overrides or None,
                warehouse_uri=self.warehouse_uri or None,
            )
        except NoReferenceData as error:
            self.log.warning("drift gate skipped: %s", error)
            return {"gate": "drift", "outcome": "skipped", "reasons": [str(error)]}
        return self._report(decision)
