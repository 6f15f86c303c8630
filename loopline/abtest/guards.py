"""Health guards: the canary's error rate and p99 latency against the champion's, with tolerances.

A guard failure rolls the canary back at once, before any CTR analysis: a model that fails
requests or is slow is not worth measuring.

* error rate: one-sided Wald z-test of H0 ``e_canary - e_champion <= tolerance`` with
  ``tolerance = max(abs_tolerance, rel_tolerance * e_champion)``; fail when p < alpha. The tolerance
  keeps an equally healthy canary from failing by chance when the guard is checked again and again.
* p99 latency: fail when ``p99_canary > max(p99_champion * (1 + rel_tolerance), p99_champion +
  abs_tolerance_ms)``. No test: the service exports latency histograms, not per-request samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from loopline.abtest._common import check_count, check_probability, fmt, json_number, norm_sf, pct, z_ratio

if TYPE_CHECKING:
    from loopline.abtest.arms import ArmMetrics
    from loopline.abtest.policy import GuardPolicy

GuardStatus = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class GuardResult:
    """One guard: both arms' values, the limit the canary must stay under, the test (if any), the verdict."""

    name: str
    status: GuardStatus
    canary_value: float | None
    champion_value: float | None
    limit: float | None  # the canary's value must not exceed this
    z: float | None
    p_value: float | None
    rule: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {key: json_number(getattr(self, key)) for key in self.__dataclass_fields__}


@dataclass(frozen=True)
class GuardVerdict:
    """Every guard's result; ``passed`` unless some guard failed (skipped guards do not fail)."""

    results: tuple[GuardResult, ...]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> tuple[GuardResult, ...]:
        return tuple(result for result in self.results if result.status == "fail")

    def reason(self) -> str:
        """The failed guards with their numbers, or a pass line."""
        if self.failed:
            return "; ".join(f"guard {r.name} failed: {r.detail}" for r in self.failed)
        return "guards passed: " + "; ".join(f"{r.name} {r.status}" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": [result.name for result in self.failed],
            "results": [result.to_dict() for result in self.results],
        }


def error_rate_guard(
    canary_errors: int,
    canary_requests: int,
    champion_errors: int,
    champion_requests: int,
    *,
    abs_tolerance: float = 0.005,
    rel_tolerance: float = 0.5,
    alpha: float = 0.001,
    min_requests: int = 50,
) -> GuardResult:
    """Fail when the canary's error rate is significantly above the champion's plus the tolerance."""
    canary_requests = check_count(canary_requests, "canary requests")
    champion_requests = check_count(champion_requests, "champion requests")
    canary_errors = check_count(canary_errors, "canary errors")
    champion_errors = check_count(champion_errors, "champion errors")
    if canary_errors > canary_requests or champion_errors > champion_requests:
        raise ValueError(
            f"errors must not exceed requests: canary {canary_errors}/{canary_requests}, "
            f"champion {champion_errors}/{champion_requests}"
        )
    alpha = check_probability(alpha, "guard alpha")
    if min(canary_requests, champion_requests) < min_requests:
        return GuardResult(
            name="error_rate",
            status="skipped",
            canary_value=canary_errors / canary_requests if canary_requests else None,
            champion_value=champion_errors / champion_requests if champion_requests else None,
            limit=None,
            z=None,
            p_value=None,
            rule=f"needs >= {min_requests} requests per arm",
            detail=f"too few requests to judge (canary {canary_requests}, champion {champion_requests})",
        )
    e1, e2 = canary_errors / canary_requests, champion_errors / champion_requests
    tolerance = max(abs_tolerance, rel_tolerance * e2)
    limit = e2 + tolerance
    se = math.sqrt(e1 * (1 - e1) / canary_requests + e2 * (1 - e2) / champion_requests)
    excess = e1 - limit
    z = z_ratio(excess, se)  # no variance (rates 0 or 1): the excess is certain, z = +-inf
    p_value = float(norm_sf(z))
    failed = p_value < alpha
    rule = (
        f"fail if canary error rate > champion + max({fmt(abs_tolerance)}, {fmt(rel_tolerance)} x champion) "
        f"with one-sided p < {fmt(alpha)}"
    )
    detail = (
        f"canary {pct(e1)} ({canary_errors:,}/{canary_requests:,}) vs champion {pct(e2)} "
        f"({champion_errors:,}/{champion_requests:,}), limit {pct(limit)}, z = {z:.3f}, p = {fmt(p_value)}"
    )
    return GuardResult("error_rate", "fail" if failed else "pass", e1, e2, limit, z, p_value, rule, detail)


def p99_latency_guard(
    canary_p99_ms: float | None,
    champion_p99_ms: float | None,
    *,
    rel_tolerance: float = 0.25,
    abs_tolerance_ms: float = 10.0,
    canary_requests: int | None = None,
    champion_requests: int | None = None,
    min_requests: int = 200,
) -> GuardResult:
    """Fail when the canary's p99 is above both ``champion x (1 + rel_tolerance)`` and
    ``champion + abs_tolerance_ms`` (a relative slowdown that is also big enough to matter)."""
    rule = f"fail if canary p99 > max(champion x {1 + rel_tolerance:g}, champion + {fmt(abs_tolerance_ms)} ms)"
    for name, value in (("canary p99", canary_p99_ms), ("champion p99", champion_p99_ms)):
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value) or value < 0):
            raise ValueError(f"{name} latency must be a finite number of ms >= 0 or None, got {value!r}")
    if canary_p99_ms is None or champion_p99_ms is None:
        return GuardResult(
            "p99_latency", "skipped", canary_p99_ms, champion_p99_ms, None, None, None, rule, "p99 not reported"
        )
    counts = [c for c in (canary_requests, champion_requests) if c is not None]
    if counts and min(counts) < min_requests:
        return GuardResult(
            "p99_latency",
            "skipped",
            canary_p99_ms,
            champion_p99_ms,
            None,
            None,
            None,
            rule,
            f"too few requests for a p99 (canary {canary_requests}, champion {champion_requests}; need {min_requests})",
        )
    limit = max(champion_p99_ms * (1.0 + rel_tolerance), champion_p99_ms + abs_tolerance_ms)
    failed = canary_p99_ms > limit
    excess = canary_p99_ms / champion_p99_ms - 1.0 if champion_p99_ms > 0 else math.inf
    detail = (
        f"canary p99 {fmt(float(canary_p99_ms))} ms vs champion {fmt(float(champion_p99_ms))} ms "
        f"({excess:+.1%}), limit {fmt(limit)} ms"
    )
    return GuardResult(
        "p99_latency",
        "fail" if failed else "pass",
        float(canary_p99_ms),
        float(champion_p99_ms),
        limit,
        None,
        None,
        rule,
        detail,
    )


def check_guards(canary: ArmMetrics, champion: ArmMetrics, policy: GuardPolicy | None = None) -> GuardVerdict:
    """Both guards on two arms' counts, with the thresholds of ``policy`` (default: canary.yaml's)."""
    if policy is None:
        from loopline.abtest.policy import load_canary_policy

        policy = load_canary_policy().guards
    return GuardVerdict(
        (
            error_rate_guard(
                canary.errors,
                canary.requests,
                champion.errors,
                champion.requests,
                abs_tolerance=policy.error_rate_abs_tolerance,
                rel_tolerance=policy.error_rate_rel_tolerance,
                alpha=policy.alpha,
                min_requests=policy.min_requests,
            ),
            p99_latency_guard(
                canary.p99_latency_ms,
                champion.p99_latency_ms,
                rel_tolerance=policy.p99_rel_tolerance,
                abs_tolerance_ms=policy.p99_abs_tolerance_ms,
                canary_requests=canary.requests,
                champion_requests=champion.requests,
                min_requests=policy.min_requests_p99,
            ),
        )
    )
