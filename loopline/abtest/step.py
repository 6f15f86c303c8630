"""One rollout step's decision: SRM, then guards, then sample size, then the sequential CTR tests.

``analyze_step`` turns the arms' counts at one look into a :class:`StepDecision`:

1. **halt_srm** when the assignment counts do not match the step's weight (chi-square, p < srm.threshold):
   nothing else can be trusted, a human must look.
2. **rollback** when a health guard fails (error rate or p99 latency), whatever the CTR says.
3. **wait_for_sample** while the cumulative information is below the step's planned fraction of the
   maximum information, unless the step's time limit is reached (then the look is analysed with what
   there is: alpha spending adapts to the actual fraction).
4. The CTR tests, one-sided, each with its own Lan-DeMets alpha spending over the looks:
   **rollback** when the rollback test (H0: the canary is not worse) crosses its boundary;
   **promote** when the policy's promotion test (non-inferiority or superiority) crosses its boundary
   at the last look (or at any look with ``sequential.early_promotion``); at the last look without a
   promotion, **rollback**; otherwise **continue** to the next step.

The CTR tests use the counts accumulated since the canary started; SRM and guards use the current
step's counts when given (``step_canary``/``step_champion``): the expected share of cumulative
assignments is not the current weight, and health is judged on current traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from scipy import optimize

from loopline.abtest._common import check_probability, fmt, json_number, norm_isf, norm_ppf, norm_sf, pct
from loopline.abtest.arms import ArmMetrics
from loopline.abtest.guards import GuardVerdict, check_guards
from loopline.abtest.policy import CanaryPolicy, load_canary_policy
from loopline.abtest.proportions import (
    ProportionTest,
    absolute_margin,
    noninferiority_test,
    superiority_test,
    two_proportion_ztest,
)
from loopline.abtest.sequential import SequentialBoundaries, drift_for_power, sequential_boundaries
from loopline.abtest.srm import SRMResult, srm_check

Decision = Literal["continue", "promote", "rollback", "halt_srm", "wait_for_sample"]
DECISIONS: tuple[Decision, ...] = ("continue", "promote", "rollback", "halt_srm", "wait_for_sample")


# --------------------------------------------------------------------------------------------------
# Information: how much the data say about the CTR difference
# --------------------------------------------------------------------------------------------------


def information(canary_impressions: int, canary_clicks: int, champion_impressions: int, champion_clicks: int) -> float:
    """Statistical information about the CTR difference: ``1 / Var(diff)`` with the pooled rate,
    ``1 / (p (1 - p) (1/n_canary + 1/n_champion))``; 0 while an arm is empty or no rate is estimable."""
    if canary_impressions <= 0 or champion_impressions <= 0:
        return 0.0
    pooled = (canary_clicks + champion_clicks) / (canary_impressions + champion_impressions)
    if pooled <= 0.0 or pooled >= 1.0:
        return 0.0
    return 1.0 / (pooled * (1.0 - pooled) * (1.0 / canary_impressions + 1.0 / champion_impressions))


@dataclass(frozen=True)
class CtrDesign:
    """The CTR test's plan for one reference rate: effect sizes, the maximum information it needs and
    the boundaries at the policy's planned fractions."""

    promote_on: str
    reference_rate: float  # the champion's CTR (observed, or the policy's baseline before any click)
    margin: float  # absolute non-inferiority margin
    mde: float  # absolute superiority MDE
    max_information: float  # 1 / Var(diff) at the last look
    rollback_boundaries: SequentialBoundaries
    promotion_boundaries: SequentialBoundaries | None  # None: a single test at the last look
    promotion_alpha: float

    def promotion_z(self, look: int) -> float:
        """The planned promotion boundary at ``look`` (1-based); inf where no promotion is allowed."""
        if self.promotion_boundaries is not None:
            return self.promotion_boundaries.z[look - 1]
        looks = self.rollback_boundaries.looks
        return float(norm_isf(self.promotion_alpha)) if look == looks else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote_on": self.promote_on,
            "reference_rate": self.reference_rate,
            "margin": self.margin,
            "mde": self.mde,
            "max_information": self.max_information,
            "rollback_boundaries": self.rollback_boundaries.to_dict(),
            "promotion_boundaries": None if self.promotion_boundaries is None else self.promotion_boundaries.to_dict(),
            "promotion_alpha": self.promotion_alpha,
        }


def ctr_design(policy: CanaryPolicy, reference_rate: float) -> CtrDesign:
    """Plan the CTR tests at the policy's planned information fractions.

    Non-inferiority: the maximum information makes the promotion boundary (H0: diff <= -margin) and the
    rollback boundary (H0: diff >= 0) meet at the last look, ``I_max = ((c_rollback + c_promote) / margin)**2``,
    so the last look always decides and an equal canary is promoted with probability 1 - rollback_alpha.
    Superiority: ``I_max = (drift / mde)**2``, the drift at which the promotion boundaries have ``power``.
    """
    rate = check_probability(reference_rate, "reference_rate")
    ctr, sequential = policy.ctr, policy.sequential
    fractions = policy.planned_fractions
    rollback = sequential_boundaries(fractions, ctr.rollback_alpha, sequential.spending)
    promotion = sequential_boundaries(fractions, ctr.alpha, sequential.spending) if sequential.early_promotion else None
    margin = absolute_margin(ctr.margin, ctr.margin_type, rate)
    mde = ctr.mde * rate if ctr.mde_type == "relative" else ctr.mde
    design = CtrDesign(
        promote_on=ctr.promote_on,
        reference_rate=rate,
        margin=margin,
        mde=mde,
        max_information=math.nan,
        rollback_boundaries=rollback,
        promotion_boundaries=promotion,
        promotion_alpha=ctr.alpha,
    )
    if ctr.promote_on == "non_inferiority":
        last = rollback.z[-1] + design.promotion_z(len(fractions))
        max_information = (last / margin) ** 2
    else:
        if promotion is None:
            drift = float(norm_isf(ctr.alpha) + norm_ppf(ctr.power))
        else:
            drift = drift_for_power(promotion, ctr.power)
        max_information = (drift / mde) ** 2
    return replace(design, max_information=max_information)


def impressions_needed(
    canary: ArmMetrics | None, champion: ArmMetrics | None, weight: float, target_information: float, rate: float
) -> tuple[int, int]:
    """More impressions (canary, champion) at traffic share ``weight`` until the information reaches
    ``target_information`` when the CTR is ``rate``; (0, 0) if it already does."""
    weight = check_probability(weight, "weight")
    rate = check_probability(rate, "rate")
    n_canary = canary.impressions if canary else 0
    n_champion = champion.impressions if champion else 0
    ratio = (1.0 - weight) / weight
    allowed = 1.0 / (target_information * rate * (1.0 - rate))  # the largest 1/n1 + 1/n2 that will do

    def excess(extra: float) -> float:
        first, second = n_canary + extra, n_champion + ratio * extra
        if first <= 0 or second <= 0:
            return math.inf
        return 1.0 / first + 1.0 / second - allowed

    if excess(0.0) <= 0:
        return 0, 0
    upper = (1.0 + 1.0 / ratio) / allowed + 1.0
    extra = optimize.brentq(lambda x: excess(x) if math.isfinite(excess(x)) else 1e300, 1e-9, upper, xtol=1e-6)
    extra = math.ceil(extra)
    return extra, math.ceil(ratio * extra)


@dataclass(frozen=True)
class PlannedStep:
    """What one step of the rollout needs when the CTR is as planned: cumulative impressions per arm."""

    look: int
    weight: float
    information_fraction: float
    information: float
    canary_impressions: int  # cumulative since the canary started
    champion_impressions: int
    step_impressions: int  # both arms, during this step

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_rollout(policy: CanaryPolicy | None = None, reference_rate: float | None = None) -> tuple[PlannedStep, ...]:
    """Impressions each analysed step needs (cumulative, per arm) at the policy's weights and fractions,
    for a champion CTR of ``reference_rate`` (default: the policy's baseline_rate)."""
    policy = policy or load_canary_policy()
    rate = policy.ctr.baseline_rate if reference_rate is None else reference_rate
    design = ctr_design(policy, rate)
    plan: list[PlannedStep] = []
    canary = champion = ArmMetrics(impressions=0, clicks=0)
    for look, step in enumerate(policy.looks, start=1):
        target = float(step.information_fraction) * design.max_information  # type: ignore[arg-type]
        extra_canary, extra_champion = impressions_needed(canary, champion, step.weight, target, rate)
        canary = ArmMetrics(impressions=canary.impressions + extra_canary, clicks=0)
        champion = ArmMetrics(impressions=champion.impressions + extra_champion, clicks=0)
        plan.append(
            PlannedStep(
                look=look,
                weight=step.weight,
                information_fraction=float(step.information_fraction),  # type: ignore[arg-type]
                information=target,
                canary_impressions=canary.impressions,
                champion_impressions=champion.impressions,
                step_impressions=extra_canary + extra_champion,
            )
        )
    return tuple(plan)


# --------------------------------------------------------------------------------------------------
# The decision record
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrLook:
    """The CTR tests at one look: statistics, boundaries, and which boundary was crossed."""

    fractions: tuple[float, ...]  # information fractions of the looks used for the boundaries
    is_final: bool
    rollback_test: ProportionTest  # one-sided, H1: canary lower
    rollback_boundary: float  # rollback if rollback_test.z <= -rollback_boundary
    promotion_test: ProportionTest
    promotion_boundary: float  # promote if promotion_test.z >= promotion_boundary
    rollback_crossed: bool
    promotion_crossed: bool
    rollback_boundaries: SequentialBoundaries
    promotion_boundaries: SequentialBoundaries | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "fractions": list(self.fractions),
            "is_final": self.is_final,
            "rollback_test": self.rollback_test.to_dict(),
            "rollback_boundary": json_number(self.rollback_boundary),
            "rollback_nominal_p": float(norm_sf(self.rollback_boundary)),
            "promotion_test": self.promotion_test.to_dict(),
            "promotion_boundary": json_number(self.promotion_boundary),
            "promotion_nominal_p": float(norm_sf(self.promotion_boundary)),
            "rollback_crossed": self.rollback_crossed,
            "promotion_crossed": self.promotion_crossed,
            "rollback_boundaries": self.rollback_boundaries.to_dict(),
            "promotion_boundaries": None if self.promotion_boundaries is None else self.promotion_boundaries.to_dict(),
        }


@dataclass(frozen=True)
class StepDecision:
    """The decision for one rollout step with every number that led to it and a readable reason."""

    decision: Decision
    reason: str
    look: int
    looks: int
    weight: float
    time_limit_reached: bool
    canary: ArmMetrics
    champion: ArmMetrics
    step_canary: ArmMetrics | None
    step_champion: ArmMetrics | None
    srm: SRMResult
    srm_unit: str
    guards: GuardVerdict
    design: CtrDesign
    information: float
    information_fraction: float
    required_fraction: float
    more_impressions: tuple[int, int]  # (canary, champion) still needed for this step at this weight
    ctr: CtrLook | None  # None when the CTR was not tested (halt, guard rollback, waiting)
    conversion: ProportionTest | None  # informational: never decides
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record for the audit trail and XCom (inf/nan as strings)."""
        return {
            "decision": self.decision,
            "reason": self.reason,
            "look": self.look,
            "looks": self.looks,
            "weight": self.weight,
            "time_limit_reached": self.time_limit_reached,
            "canary": self.canary.to_dict(),
            "champion": self.champion.to_dict(),
            "step_canary": None if self.step_canary is None else self.step_canary.to_dict(),
            "step_champion": None if self.step_champion is None else self.step_champion.to_dict(),
            "srm": self.srm.to_dict(),
            "srm_unit": self.srm_unit,
            "guards": self.guards.to_dict(),
            "design": self.design.to_dict(),
            "information": json_number(self.information),
            "information_fraction": json_number(self.information_fraction),
            "required_fraction": self.required_fraction,
            "more_impressions": {"canary": self.more_impressions[0], "champion": self.more_impressions[1]},
            "ctr": None if self.ctr is None else self.ctr.to_dict(),
            "conversion": None if self.conversion is None else self.conversion.to_dict(),
            "policy": self.policy,
        }

    def table(self) -> str:
        """A plain-text rendering for the task log: the verdict, the arms, every check and its rule."""
        out = [
            f"canary step {self.look}/{self.looks} (canary weight {self.weight:.0%}): {self.decision.upper()}",
            f"reason: {self.reason}",
            "",
        ]
        arm_header = ("arm", "impressions", "clicks", "ctr", "conversions", "requests", "errors", "p99 ms")
        arm_rows = [
            (
                label,
                f"{arm.impressions:,}",
                f"{arm.clicks:,}",
                pct(arm.ctr, 4),
                f"{arm.conversions:,}",
                f"{arm.requests:,}",
                f"{arm.errors:,}",
                fmt(arm.p99_latency_ms),
            )
            for label, arm in (("canary", self.canary), ("champion", self.champion))
        ]
        if self.step_canary is not None and self.step_champion is not None:
            arm_rows += [
                (
                    f"{label} (this step)",
                    f"{arm.impressions:,}",
                    f"{arm.clicks:,}",
                    pct(arm.ctr, 4),
                    f"{arm.conversions:,}",
                    f"{arm.requests:,}",
                    f"{arm.errors:,}",
                    fmt(arm.p99_latency_ms),
                )
                for label, arm in (("canary", self.step_canary), ("champion", self.step_champion))
            ]
        out += _render(arm_header, arm_rows)
        out.append("")
        out += _render(("check", "value", "rule", "result"), self._check_rows())
        return "\n".join(out)

    def _check_rows(self) -> list[tuple[str, str, str, str]]:
        srm = self.srm
        if srm.checked:
            srm_value = (
                f"{srm.observed_shares[0]:.3%} canary of {sum(srm.observed):,} {self.srm_unit}; p = {fmt(srm.p_value)}"
            )
            srm_result = "MISMATCH" if srm.mismatch else "ok"
        else:
            srm_value, srm_result = f"{sum(srm.observed):,} {self.srm_unit}", "not yet"
        rows = [
            ("srm", srm_value, f"halt if chi-square p < {fmt(srm.threshold)} (expected {self.weight:.0%})", srm_result)
        ]
        for guard in self.guards.results:
            if guard.name == "error_rate":
                value = f"{pct(guard.canary_value)} vs {pct(guard.champion_value)}"
                if guard.limit is not None:
                    value += f" (limit {pct(guard.limit)}, p = {fmt(guard.p_value)})"
            else:
                value = f"{fmt(guard.canary_value)} vs {fmt(guard.champion_value)} ms"
                if guard.limit is not None:
                    value += f" (limit {fmt(guard.limit)})"
            rows.append((f"guard {guard.name}", value, guard.rule, guard.status))
        rows.append(
            (
                "information",
                f"{self.information_fraction:.1%} of max {fmt(self.design.max_information)}",
                f"wait below {self.required_fraction:.0%} unless the time limit is reached",
                "enough"
                if self.information_fraction >= self.required_fraction
                else ("time limit" if self.time_limit_reached else "wait"),
            )
        )
        if self.ctr is not None:
            rb, pr = self.ctr.rollback_test, self.ctr.promotion_test
            rows.append(
                (
                    "ctr rollback test",
                    f"diff {fmt(rb.diff)} ({pct(rb.relative_lift)}), z = {rb.z:.3f}",
                    f"rollback if z <= -{fmt(self.ctr.rollback_boundary)} (H0: canary not worse)",
                    "CROSSED" if self.ctr.rollback_crossed else "no",
                )
            )
            null = f"H0: diff <= -{fmt(pr.margin)}" if pr.test == "non_inferiority" else "H0: diff <= 0"
            if math.isinf(self.ctr.promotion_boundary):
                promo_rule = f"promotes only at the last look (early_promotion off; {null})"
            else:
                promo_rule = f"promote if z >= {fmt(self.ctr.promotion_boundary)} ({null})"
            rows.append(
                (
                    f"ctr {pr.test.replace('_', '-')}",
                    f"CI low {fmt(pr.ci_low)}, z = {pr.z:.3f}",
                    promo_rule,
                    "CROSSED" if self.ctr.promotion_crossed else "no",
                )
            )
        if self.conversion is not None:
            conv = self.conversion
            rows.append(
                (
                    "conversion (info)",
                    f"{pct(conv.canary_rate)} vs {pct(conv.champion_rate)}, p = {fmt(conv.p_value)}",
                    "two-sided z-test, never decides",
                    "-",
                )
            )
        return rows


def _render(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [
        max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


# --------------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------------


def _srm_counts(canary: ArmMetrics, champion: ArmMetrics) -> tuple[str, int, int]:
    if canary.users is not None and champion.users is not None:
        return "users", canary.users, champion.users
    if canary.requests or champion.requests:
        return "requests", canary.requests, champion.requests
    return "impressions", canary.impressions, champion.impressions


def _look_fractions(previous: Sequence[float], current: float) -> tuple[float, ...]:
    """The earlier looks' fractions, increasing, then the current one. A look at fraction 0 (no
    information) spent nothing and is left out; so are fractions at or above the current one, which
    can only come from planned fractions standing in for actual ones."""
    kept = sorted({float(f) for f in previous if 0.0 < float(f) < current})
    return (*kept, current)


def analyze_step(
    canary: ArmMetrics,
    champion: ArmMetrics,
    *,
    weight: float,
    look: int,
    policy: CanaryPolicy | None = None,
    previous_fractions: Sequence[float] | None = None,
    time_limit_reached: bool = False,
    step_canary: ArmMetrics | None = None,
    step_champion: ArmMetrics | None = None,
) -> StepDecision:
    """Decide one rollout step (see the module docstring for the order of the checks).

    ``canary``/``champion``: counts since the canary started (the CTR tests). ``step_canary``/
    ``step_champion``: counts of the current step only (SRM against ``weight``, guards); when omitted
    the cumulative counts are used for those too. ``look``: 1-based index of this step among the
    analysed steps. ``previous_fractions``: the information fractions at which the earlier looks were
    analysed (record ``information_fraction`` of each decision that was not ``wait_for_sample``; zeros
    are ignored); None uses the policy's planned ones.
    """
    policy = policy or load_canary_policy()
    weight = check_probability(weight, "weight")
    looks = len(policy.looks)
    if isinstance(look, bool) or not isinstance(look, int) or not 1 <= look <= looks:
        raise ValueError(f"look must be an integer in 1..{looks} (the analysed steps of the policy), got {look!r}")
    if not isinstance(canary, ArmMetrics) or not isinstance(champion, ArmMetrics):
        raise TypeError("canary and champion must be ArmMetrics")
    if (step_canary is None) != (step_champion is None):
        raise ValueError("give both step_canary and step_champion, or neither")
    if previous_fractions is None:
        previous_fractions = policy.planned_fractions[: look - 1]
    for value in previous_fractions:
        if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"previous_fractions must be finite numbers >= 0, got {list(previous_fractions)}")
    current_canary = step_canary or canary
    current_champion = step_champion or champion
    ctr_alpha = policy.ctr.alpha

    srm_unit, srm_canary, srm_champion = _srm_counts(current_canary, current_champion)
    srm = srm_check(
        [srm_canary, srm_champion], [weight, 1.0 - weight], threshold=policy.srm.threshold, arms=("canary", "champion")
    )
    guards = check_guards(current_canary, current_champion, policy.guards)
    reference = champion.ctr if 0 < champion.clicks < champion.impressions else policy.ctr.baseline_rate
    design = ctr_design(policy, reference)
    info = information(canary.impressions, canary.clicks, champion.impressions, champion.clicks)
    fraction = info / design.max_information
    required = float(policy.looks[look - 1].information_fraction)  # type: ignore[arg-type]
    pooled = (canary.clicks + champion.clicks) / max(canary.impressions + champion.impressions, 1)
    more = impressions_needed(
        canary, champion, weight, required * design.max_information, pooled if 0.0 < pooled < 1.0 else reference
    )
    conversion = None
    if canary.impressions and champion.impressions:
        conversion = two_proportion_ztest(
            canary.conversions, canary.impressions, champion.conversions, champion.impressions,
            alpha=ctr_alpha, metric="conversion",
        )  # fmt: skip

    def record(decision: Decision, reason: str, ctr: CtrLook | None = None) -> StepDecision:
        return StepDecision(
            decision=decision,
            reason=reason,
            look=look,
            looks=looks,
            weight=weight,
            time_limit_reached=bool(time_limit_reached),
            canary=canary,
            champion=champion,
            step_canary=step_canary,
            step_champion=step_champion,
            srm=srm,
            srm_unit=srm_unit,
            guards=guards,
            design=design,
            information=info,
            information_fraction=fraction,
            required_fraction=required,
            more_impressions=more,
            ctr=ctr,
            conversion=conversion,
            policy=policy.flat(),
        )

    # 1. SRM: the arms are not what the weights promise; no comparison can be trusted.
    if srm.mismatch:
        return record("halt_srm", f"sample ratio mismatch on {srm_unit}: {srm.summary()}")
    # 2. Health guards: roll back at once.
    if not guards.passed:
        return record("rollback", guards.reason())
    # 3. Enough information for this step's look?
    is_final = look == looks or fraction >= 1.0
    if fraction < required and not time_limit_reached:
        return record(
            "wait_for_sample",
            f"information {fraction:.1%} of the maximum, step {look} needs {required:.0%}: about "
            f"{more[0]:,} more canary and {more[1]:,} more champion impressions at weight {weight:.0%}",
        )
    if info <= 0.0:
        if is_final:
            return record("rollback", "time limit reached at the last step without any CTR information (no clicks)")
        return record("continue", "time limit reached without any CTR information (no clicks); no alpha spent")
    fractions = _look_fractions(previous_fractions, fraction)
    shortfall = "" if fraction >= required else f" (time limit reached at {fraction:.1%} of the {required:.0%} planned)"

    # 4. The sequential CTR tests.
    rollback_bounds = sequential_boundaries(
        fractions, policy.ctr.rollback_alpha, policy.sequential.spending, spend_all_at_last=is_final
    )
    if policy.sequential.early_promotion:
        promotion_bounds: SequentialBoundaries | None = sequential_boundaries(
            fractions, ctr_alpha, policy.sequential.spending, spend_all_at_last=is_final
        )
        promotion_boundary = promotion_bounds.z[-1]  # type: ignore[union-attr]
    else:
        promotion_bounds = None
        promotion_boundary = float(norm_isf(ctr_alpha)) if is_final else math.inf
    rollback_boundary = rollback_bounds.z[-1]
    rollback_test = two_proportion_ztest(
        canary.clicks, canary.impressions, champion.clicks, champion.impressions,
        alternative="smaller", alpha=policy.ctr.rollback_alpha, metric="ctr",
    )  # fmt: skip
    if policy.ctr.promote_on == "non_inferiority":
        promotion_test = noninferiority_test(
            canary.clicks, canary.impressions, champion.clicks, champion.impressions,
            margin=policy.ctr.margin, margin_type=policy.ctr.margin_type, alpha=ctr_alpha, metric="ctr",
        )  # fmt: skip
    else:
        promotion_test = superiority_test(
            canary.clicks, canary.impressions, champion.clicks, champion.impressions, alpha=ctr_alpha, metric="ctr"
        )
    rollback_crossed = rollback_test.z <= -rollback_boundary
    promotion_crossed = promotion_test.z >= promotion_boundary
    ctr = CtrLook(
        fractions=fractions,
        is_final=is_final,
        rollback_test=rollback_test,
        rollback_boundary=rollback_boundary,
        promotion_test=promotion_test,
        promotion_boundary=promotion_boundary,
        rollback_crossed=rollback_crossed,
        promotion_crossed=promotion_crossed,
        rollback_boundaries=rollback_bounds,
        promotion_boundaries=promotion_bounds,
    )
    lift = (
        f"CTR {pct(rollback_test.canary_rate, 4)} vs {pct(rollback_test.champion_rate, 4)} "
        f"({pct(rollback_test.relative_lift)})"
    )
    if rollback_crossed:
        return record(
            "rollback",
            f"canary CTR significantly lower: {lift}, z = {rollback_test.z:.3f} <= -{rollback_boundary:.3f} "
            f"(look {len(fractions)}, nominal p {fmt(float(norm_sf(rollback_boundary)))}){shortfall}",
            ctr,
        )
    test_name = "non-inferior" if promotion_test.test == "non_inferiority" else "superior"
    if promotion_crossed:
        return record(
            "promote",
            f"canary CTR {test_name}: {lift}, z = {promotion_test.z:.3f} >= {promotion_boundary:.3f}"
            + (f" (margin {fmt(promotion_test.margin)})" if promotion_test.test == "non_inferiority" else "")
            + ("" if is_final else " at an interim look (early promotion)")
            + shortfall,
            ctr,
        )
    if is_final:
        return record(
            "rollback",
            f"last look: canary CTR not shown {test_name}: {lift}, z = {promotion_test.z:.3f} < "
            f"{promotion_boundary:.3f}{shortfall}",
            ctr,
        )
    return record(
        "continue",
        f"no boundary crossed at look {look}/{looks}: {lift}, rollback z = {rollback_test.z:.3f} "
        f"(boundary -{rollback_boundary:.3f}){shortfall}",
        ctr,
    )
