"""Two-proportion z-tests for click-through and conversion rates: difference, superiority, non-inferiority.

Arm 1 is always the canary and arm 2 the champion; ``diff = rate_canary - rate_champion``.

* The p-value of the equality test uses the pooled standard error
  ``sqrt(p(1-p)(1/n1 + 1/n2))`` with ``p = (x1 + x2) / (n1 + n2)``, the rate under H0: equal rates
  (``statsmodels.stats.proportion.proportions_ztest``).
* The confidence interval of the difference is Wald's, with the unpooled standard error
  ``sqrt(p1(1-p1)/n1 + p2(1-p2)/n2)`` (``confint_proportions_2indep(method="wald")``): under the
  alternative the rates differ, so pooling them would be wrong. Two-sided tests get a two-sided
  ``1 - alpha`` interval, one-sided tests the matching one-sided bound.
* Non-inferiority tests H0: ``diff <= -margin`` against H1: ``diff > -margin`` with the unpooled
  (Wald) standard error, since under that null the rates are not equal
  (``test_proportions_2indep(value=-margin, method="wald", alternative="larger")``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from loopline.abtest._common import (
    Alternative,
    check_alternative,
    check_probability,
    check_successes,
    fmt,
    json_number,
    norm_cdf,
    norm_isf,
    norm_sf,
    pct,
    z_ratio,
)

TestKind = Literal["difference", "superiority", "non_inferiority"]
MarginType = Literal["absolute", "relative"]


@dataclass(frozen=True)
class ProportionTest:
    """The outcome of one two-proportion z-test, canary (arm 1) against champion (arm 2), with every number."""

    metric: str
    test: TestKind
    alternative: Alternative
    canary_successes: int
    canary_trials: int
    champion_successes: int
    champion_trials: int
    canary_rate: float
    champion_rate: float
    diff: float  # canary_rate - champion_rate
    relative_lift: float  # diff / champion_rate (nan when the champion's rate is 0)
    null_diff: float  # the difference under H0: 0, or -margin for non-inferiority
    margin: float  # absolute non-inferiority margin (0 for the other tests)
    se_pooled: float
    se_unpooled: float
    z: float
    p_value: float
    alpha: float
    ci_low: float  # Wald interval of diff at confidence 1 - alpha (one-sided tests: one bound infinite)
    ci_high: float
    significant: bool  # p_value < alpha

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    def summary(self) -> str:
        """One line with the rates, the difference, its interval, z and p."""
        if self.test == "non_inferiority":
            hypothesis = f"H1: diff > -{fmt(self.margin)}"
        elif self.alternative == "two-sided":
            hypothesis = "H1: diff != 0"
        else:
            hypothesis = f"H1: diff {'>' if self.alternative == 'larger' else '<'} 0"
        return (
            f"{self.metric} {self.test}: canary {pct(self.canary_rate)} ({self.canary_successes:,}/"
            f"{self.canary_trials:,}) vs champion {pct(self.champion_rate)} ({self.champion_successes:,}/"
            f"{self.champion_trials:,}), diff {fmt(self.diff)} ({pct(self.relative_lift)} relative), "
            f"{self.confidence:.0%} CI [{fmt(self.ci_low)}, {fmt(self.ci_high)}], {hypothesis}: "
            f"z = {self.z:.3f}, p = {fmt(self.p_value)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for audit records (inf/nan as strings)."""
        return {key: json_number(value) for key, value in asdict(self).items()}


def _p_value(z: float, alternative: Alternative) -> float:
    if math.isnan(z):
        return 1.0
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * norm_sf(abs(z))))
    if alternative == "larger":
        return float(norm_sf(z))
    return float(norm_cdf(z))


def _rates(canary: tuple[int, int], champion: tuple[int, int]) -> tuple[float, float, float, float, float]:
    (x1, n1), (x2, n2) = canary, champion
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    se_unpooled = math.sqrt(p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2)
    return p1, p2, p1 - p2, se_pooled, se_unpooled


def _interval(diff: float, se: float, alpha: float, alternative: Alternative) -> tuple[float, float]:
    if alternative == "two-sided":
        half = norm_isf(alpha / 2.0) * se
        return diff - half, diff + half
    if alternative == "larger":
        return diff - norm_isf(alpha) * se, math.inf
    return -math.inf, diff + norm_isf(alpha) * se


def two_proportion_ztest(
    canary_successes: int,
    canary_trials: int,
    champion_successes: int,
    champion_trials: int,
    *,
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
    metric: str = "rate",
    test: TestKind = "difference",
) -> ProportionTest:
    """Pooled two-proportion z-test of equal rates, with the Wald interval of the difference.

    ``alternative``: ``two-sided`` (rates differ), ``larger`` (canary higher), ``smaller`` (canary
    lower). When both arms have rate 0 (or both 1) there is no evidence either way: z = 0.
    """
    canary = check_successes(canary_successes, canary_trials, f"{metric} canary")
    champion = check_successes(champion_successes, champion_trials, f"{metric} champion")
    alternative = check_alternative(alternative)
    alpha = check_probability(alpha, "alpha")
    p1, p2, diff, se_pooled, se_unpooled = _rates(canary, champion)
    z = z_ratio(diff, se_pooled)
    p_value = _p_value(z, alternative)
    low, high = _interval(diff, se_unpooled, alpha, alternative)
    return ProportionTest(
        metric=metric,
        test=test,
        alternative=alternative,
        canary_successes=canary[0],
        canary_trials=canary[1],
        champion_successes=champion[0],
        champion_trials=champion[1],
        canary_rate=p1,
        champion_rate=p2,
        diff=diff,
        relative_lift=diff / p2 if p2 > 0 else math.nan,
        null_diff=0.0,
        margin=0.0,
        se_pooled=se_pooled,
        se_unpooled=se_unpooled,
        z=z,
        p_value=p_value,
        alpha=alpha,
        ci_low=low,
        ci_high=high,
        significant=p_value < alpha,
    )


def superiority_test(
    canary_successes: int,
    canary_trials: int,
    champion_successes: int,
    champion_trials: int,
    *,
    alpha: float = 0.05,
    metric: str = "rate",
) -> ProportionTest:
    """One-sided pooled z-test of H0: canary rate <= champion rate against H1: canary rate higher."""
    return two_proportion_ztest(
        canary_successes,
        canary_trials,
        champion_successes,
        champion_trials,
        alternative="larger",
        alpha=alpha,
        metric=metric,
        test="superiority",
    )


def absolute_margin(margin: float, margin_type: MarginType, reference_rate: float) -> float:
    """The margin on the difference scale: ``margin`` itself, or ``margin * reference_rate`` if relative."""
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"non-inferiority margin must be a number > 0, got {margin!r}")
    if margin_type == "absolute":
        if margin >= 1:
            raise ValueError(f"an absolute margin is a difference of rates and must be < 1, got {margin!r}")
        return float(margin)
    if margin_type == "relative":
        return float(margin) * reference_rate
    raise ValueError(f"margin_type must be 'absolute' or 'relative', got {margin_type!r}")


def noninferiority_test(
    canary_successes: int,
    canary_trials: int,
    champion_successes: int,
    champion_trials: int,
    *,
    margin: float,
    margin_type: MarginType = "relative",
    alpha: float = 0.05,
    metric: str = "rate",
) -> ProportionTest:
    """Wald z-test of H0: canary - champion <= -margin against H1: the canary is worse by less than the margin.

    ``margin_type="relative"`` takes the margin as a share of the champion's observed rate
    (``0.05`` = "at most 5 % below the champion"); ``"absolute"`` as a difference of rates.
    The interval is the one-sided Wald bound: non-inferiority holds when ``ci_low > -margin``.
    """
    canary = check_successes(canary_successes, canary_trials, f"{metric} canary")
    champion = check_successes(champion_successes, champion_trials, f"{metric} champion")
    alpha = check_probability(alpha, "alpha")
    p1, p2, diff, se_pooled, se_unpooled = _rates(canary, champion)
    margin_abs = absolute_margin(margin, margin_type, p2)
    z = z_ratio(diff + margin_abs, se_unpooled)
    p_value = _p_value(z, "larger")
    low, high = _interval(diff, se_unpooled, alpha, "larger")
    return ProportionTest(
        metric=metric,
        test="non_inferiority",
        alternative="larger",
        canary_successes=canary[0],
        canary_trials=canary[1],
        champion_successes=champion[0],
        champion_trials=champion[1],
        canary_rate=p1,
        champion_rate=p2,
        diff=diff,
        relative_lift=diff / p2 if p2 > 0 else math.nan,
        null_diff=-margin_abs,
        margin=margin_abs,
        se_pooled=se_pooled,
        se_unpooled=se_unpooled,
        z=z,
        p_value=p_value,
        alpha=alpha,
        ci_low=low,
        ci_high=high,
        significant=p_value < alpha,
    )
