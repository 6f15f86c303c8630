"""Run the data-quality and drift gates on a training window of the warehouse.

The gates themselves (``loopline.quality``, ``loopline.drift``, ``loopline.gates``) work on data
frames; this module fetches those frames for a window: the current window's training set through
the FeatureService, the reference window (the champion's training window, else the window of the
same length just before), the trailing windows' volumes and label rates, and clicks without an
impression from ``raw_events``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loopline.config import settings
from loopline.gates import GateDecision, alert, decide_drift, decide_quality, load_policy

log = logging.getLogger(__name__)

TRAILING_WINDOWS = 7


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval ``[start, end)`` of training data."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError(f"window end {self.end.isoformat()} is not after its start {self.start.isoformat()}")

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def shifted(self, windows: int) -> Window:
        """The window ``windows`` lengths earlier (positive) or later (negative)."""
        return Window(self.start - windows * self.length, self.end - windows * self.length)

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


class NoReferenceData(ValueError):
    """The reference window holds no training examples (e.g. before the first model)."""


def _window_stats(warehouse: Any, window: Window) -> tuple[int, float | None]:
    rows, clicked = warehouse.query(
        "select count(*), sum(case when is_clicked then 1 else 0 end) from training_examples "
        "where event_at >= ? and event_at < ?",
        [window.start, window.end],
    )[0]
    return int(rows), (float(clicked) / rows if rows else None)


def trailing_history(window: Window, *, warehouse_uri: str | None = None, count: int = TRAILING_WINDOWS) -> dict:
    """Volumes and label rates of up to ``count`` windows before ``window`` that hold data."""
    from loopline.warehouse import Warehouse

    volumes: list[int] = []
    rates: list[float] = []
    with Warehouse.from_uri(warehouse_uri or settings().warehouse_uri) as warehouse:
        for back in range(1, count + 1):
            rows, rate = _window_stats(warehouse, window.shifted(back))
            if rows:
                volumes.append(rows)
                rates.append(rate)  # type: ignore[arg-type]
    return {"volumes": volumes, "label_rates": rates}


def orphan_clicks(window: Window, *, warehouse_uri: str | None = None) -> int:
    """Clicks in the window with no impression of the same request and item (label noise)."""
    from loopline.warehouse import Warehouse

    with Warehouse.from_uri(warehouse_uri or settings().warehouse_uri) as warehouse:
        return int(
            warehouse.scalar(
                "select count(*) from raw_events c where c.event_type = 'click' "
                "and c.event_at >= ? and c.event_at < ? and not exists ("
                "  select 1 from raw_events i where i.event_type = 'impression'"
                "  and i.request_id = c.request_id and i.item_id = c.item_id)",
                [window.start, window.end],
            )
        )


def reference_window(window: Window, champion_window: Window | None = None) -> Window:
    """The champion's training window when known, else the window of the same length just before."""
    return champion_window or window.shifted(1)


def _report_uri(kind: str, window: Window) -> str:
    return f"{settings().artifact_uri}/reports/{kind}/{window.start:%Y-%m-%dT%H%M}_{window.end:%Y-%m-%dT%H%M}"


def run_quality_gate(
    window: Window,
    *,
    reference: Window | None = None,
    policy_overrides: Mapping[str, Any] | None = None,
    warehouse_uri: str | None = None,
    current: Any = None,
    reference_frame: Any = None,
) -> GateDecision:
    """Judge the window's training set: volume, label rate, label noise, PII, per-feature PSI/KL.

    ``current`` / ``reference_frame`` let a caller that already holds the frames pass them in.
    """
    from loopline.features import training_set
    from loopline.quality import check_quality, save_quality_report

    policy = load_policy(overrides=policy_overrides)
    reference = reference_window(window, reference)
    current = training_set(window.start, window.end, warehouse_uri=warehouse_uri) if current is None else current
    if reference_frame is None:
        reference_frame = training_set(reference.start, reference.end, warehouse_uri=warehouse_uri)
    history = trailing_history(window, warehouse_uri=warehouse_uri)
    report = check_quality(
        current,
        policy=policy,
        reference=reference_frame if len(reference_frame) else None,
        trailing_volumes=history["volumes"],
        trailing_label_rates=history["label_rates"],
        orphan_clicks=orphan_clicks(window, warehouse_uri=warehouse_uri),
    )
    save_quality_report(report, _report_uri("quality", window), s3_endpoint_url=settings().s3_endpoint_url)
    decision = decide_quality(report, policy)
    alert(decision, webhook_url=policy.alert.webhook_url, policy=policy, logger=log)
    return decision


def run_drift_gate(
    window: Window,
    *,
    reference: Window | None = None,
    policy_overrides: Mapping[str, Any] | None = None,
    warehouse_uri: str | None = None,
    mlflow_run_id: str | None = None,
    current: Any = None,
    reference_frame: Any = None,
) -> GateDecision:
    """Evidently drift of the window against the reference window; HTML and JSON reports are kept."""
    from loopline.drift import run_drift_report
    from loopline.features import training_set

    policy = load_policy(overrides=policy_overrides)
    reference = reference_window(window, reference)
    current = training_set(window.start, window.end, warehouse_uri=warehouse_uri) if current is None else current
    if reference_frame is None:
        reference_frame = training_set(reference.start, reference.end, warehouse_uri=warehouse_uri)
    if not len(reference_frame):
        raise NoReferenceData(
            f"drift gate: the reference window {reference.to_dict()} has no training examples; "
            "skip the drift gate for the first model (with a reason) or give a reference window"
        )
    result = run_drift_report(
        current,
        reference_frame,
        policy=policy,
        out_uri=_report_uri("drift", window),
        s3_endpoint_url=settings().s3_endpoint_url,
        mlflow_run_id=mlflow_run_id,
    )
    decision = decide_drift(result, policy)
    alert(decision, webhook_url=policy.alert.webhook_url, policy=policy, logger=log)
    return decision


def retrain_decision(
    quality: Mapping[str, Any], drift: Mapping[str, Any] | None, *, force: bool, has_champion: bool
) -> tuple[bool, str]:
    """Whether the retrain DAG trains today, and why (the gates' outcomes are ``pass|retrain|block``).

    Blocked data never trains, even when forced. Otherwise: forced runs train; without a champion
    the first model is trained; a ``retrain`` from either gate trains; data that passed both gates
    while a champion serves does not.
    """
    if quality.get("outcome") == "block":
        return False, "the quality gate blocked this window: never train on it"
    if force:
        return True, "forced by the run's params"
    if not has_champion:
        return True, "no champion yet: the first model is trained"
    outcomes = {quality.get("outcome"), (drift or {}).get("outcome")}
    if "retrain" in outcomes:
        return True, "a gate found drift worth retraining for"
    return False, "both gates passed and a champion serves: nothing to retrain for"


def window_ending(end: datetime, days: int) -> Window:
    """The ``days``-long window that ends at ``end`` (UTC)."""
    end = end.astimezone(UTC)
    return Window(end - timedelta(days=days), end)
