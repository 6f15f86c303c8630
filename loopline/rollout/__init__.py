"""Canary rollouts: a persisted state machine over the serving state store, judged by loopline.abtest.

``RolloutController`` (``machine``) starts, analyses, promotes, rolls back and pauses rollouts and
audits every transition; ``observations`` reads what each arm saw from the service's logs and metrics.
"""

from loopline.rollout.machine import (
    FINAL_STATUSES,
    HALTED,
    MANUAL_ACTIONS,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    ROLLOUT_TRANSITIONS,
    ROLLOUTS,
    RUNNING,
    LookOutcome,
    Rollout,
    RolloutController,
    RolloutError,
    Transition,
)
from loopline.rollout.observations import (
    HealthDelta,
    HealthSnapshot,
    LogCounts,
    LogWindow,
    health_between,
    histogram_quantile,
    observe_logs,
    parse_health,
    scrape_health,
)

__all__ = [
    "FINAL_STATUSES",
    "HALTED",
    "MANUAL_ACTIONS",
    "PAUSED",
    "PROMOTED",
    "ROLLED_BACK",
    "ROLLOUTS",
    "ROLLOUT_TRANSITIONS",
    "RUNNING",
    "HealthDelta",
    "HealthSnapshot",
    "LogCounts",
    "LogWindow",
    "LookOutcome",
    "Rollout",
    "RolloutController",
    "RolloutError",
    "Transition",
    "health_between",
    "histogram_quantile",
    "observe_logs",
    "parse_health",
    "scrape_health",
]
