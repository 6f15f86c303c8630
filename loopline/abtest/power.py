"""Power, required sample size and minimum detectable effect of the two-proportion z-test.

Arm 1 is the canary, arm 2 the champion (the baseline rate ``p2``); ``ratio = n_champion / n_canary``,
so a canary on 5 % of the traffic has ``ratio = 19``. Two formulas, both in closed form:

``normal`` (the default; the test the canary actually runs), Fleiss without continuity correction, as
``statsmodels.stats.proportion.samplesize_proportions_2indep_onetail``::

    n_canary = ((z_a * sd0 + z_b * sd1) / d) ** 2
    sd0 = sqrt(pbar (1 - pbar) (1 + 1/ratio)),  pbar = (p1 + ratio p2) / (1 + ratio)   # SE under H0, pooled
    sd1 = sqrt(p1 (1 - p1) + p2 (1 - p2) / ratio)                                      # SE under H1

``arcsine``, Cohen's effect size ``h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2))`` (variance-stabilised, as
``statsmodels.stats.power.NormalIndPower`` with ``proportion_effectsize``)::

    n_canary = ((z_a + z_b) / h) ** 2 * (1 + 1/ratio)

``z_a = z_{1-alpha}`` one-sided, ``z_{1-alpha/2}`` two-sided (the far tail of a two-sided test is
ignored, as statsmodels' one-tail formula does: it adds about 1e-6 of power); ``z_b = z_{power}``.
The two formulas agree to a few percent at click-through rates; ``normal`` is the reference here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy import optimize

from loopline.abtest._common import (
    Alternative,
    check_alternative,
    check_probability,
    json_number,
    norm_cdf,
    norm_isf,
    norm_ppf,
    norm_sf,
)

Method = Literal["normal", "arcsine"]
METHODS: tuple[Method, ...] = ("normal", "arcsine")
EffectType = Literal["relative", "absolute"]


def ratio_for_weight(canary_weight: float) -> float:
    """``n_champion / n_canary`` when the canary gets ``canary_weight`` of the traffic (0.05 -> 19)."""
    weight = check_probability(canary_weight, "canary_weight")
    return (1.0 - weight) / weight


def _check_method(method: Any) -> Method:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio (n_champion / n_canary) must be a number > 0, got {ratio!r}")
    return float(ratio)


def _one_tail_alpha(alpha: float, alternative: Alternative) -> float:
    return alpha / 2.0 if alternative == "two-sided" else alpha


def _normal_sds(p1: float, p2: float, ratio: float) -> tuple[float, float]:
    pooled = (p1 + ratio * p2) / (1.0 + ratio)
    sd_null = math.sqrt(pooled * (1.0 - pooled) * (1.0 + 1.0 / ratio))
    sd_alt = math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2) / ratio)
    return sd_null, sd_alt


def _cohen_h(p1: float, p2: float) -> float:
    return 2.0 * math.asin(math.sqrt(p1)) - 2.0 * math.asin(math.sqrt(p2))


def _target_rate(baseline: float, effect: float, effect_type: EffectType, alternative: Alternative) -> float:
    if isinstance(effect, bool) or not isinstance(effect, int | float) or not math.isfinite(effect) or effect <= 0:
        raise ValueError(
            f"effect (MDE) must be a number > 0 (its size; the alternative gives the sign), got {effect!r}"
        )
    if effect_type == "relative":
        absolute = effect * baseline
    elif effect_type == "absolute":
        absolute = float(effect)
    else:
        raise ValueError(f"effect_type must be 'relative' or 'absolute', got {effect_type!r}")
    target = baseline - absolute if alternative == "smaller" else baseline + absolute
    if not 0.0 < target < 1.0:
        raise ValueError(
            f"baseline rate {baseline} with an effect of {absolute:g} gives a rate of {target:g}, outside (0, 1)"
        )
    return target


@dataclass(frozen=True)
class SampleSize:
    """Impressions needed per arm to detect ``baseline_rate -> target_rate`` with the given alpha and power."""

    method: Method
    alternative: Alternative
    alpha: float
    power: float
    baseline_rate: float  # champion
    target_rate: float  # canary under the alternative
    absolute_effect: float  # target - baseline
    relative_effect: float  # absolute_effect / baseline
    ratio: float  # n_champion / n_canary
    canary_exact: float  # the formula's value before rounding up
    canary: int
    champion: int

    @property
    def total(self) -> int:
        return self.canary + self.champion

    def to_dict(self) -> dict[str, Any]:
        return {**{key: json_number(value) for key, value in asdict(self).items()}, "total": self.total}


def required_sample_size(
    baseline_rate: float,
    effect: float,
    *,
    effect_type: EffectType = "relative",
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    alternative: Alternative = "two-sided",
    method: Method = "normal",
) -> SampleSize:
    """Impressions per arm for the z-test to detect ``effect`` (relative to the baseline unless
    ``effect_type="absolute"``) with ``power`` at level ``alpha``; ``ratio = n_champion / n_canary``
    (use :func:`ratio_for_weight` for a traffic share). Rounded up to whole impressions."""
    baseline = check_probability(baseline_rate, "baseline_rate")
    alpha = check_probability(alpha, "alpha")
    power = check_probability(power, "power")
    ratio = _check_ratio(ratio)
    alternative = check_alternative(alternative)
    method = _check_method(method)
    target = _target_rate(baseline, effect, effect_type, alternative)
    z_alpha = norm_isf(_one_tail_alpha(alpha, alternative))
    z_power = norm_ppf(power)
    if method == "normal":
        sd_null, sd_alt = _normal_sds(target, baseline, ratio)
        exact = ((z_alpha * sd_null + z_power * sd_alt) / (target - baseline)) ** 2
    else:
        exact = ((z_alpha + z_power) / _cohen_h(target, baseline)) ** 2 * (1.0 + 1.0 / ratio)
    canary = math.ceil(exact - 1e-9)
    return SampleSize(
        method=method,
        alternative=alternative,
        alpha=alpha,
        power=power,
        baseline_rate=baseline,
        target_rate=target,
        absolute_effect=target - baseline,
        relative_effect=(target - baseline) / baseline,
        ratio=ratio,
        canary_exact=float(exact),
        canary=canary,
        champion=math.ceil(canary * ratio - 1e-9),
    )


def power_two_proportions(
    baseline_rate: float,
    canary_rate: float,
    n_canary: float,
    n_champion: float,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    method: Method = "normal",
) -> float:
    """Power of the z-test when the champion's rate is ``baseline_rate`` and the canary's ``canary_rate``.

    Both tails count for a two-sided test (as ``statsmodels.stats.proportion.power_proportions_2indep``
    for ``normal`` and ``NormalIndPower.power`` for ``arcsine``).
    """
    p2 = check_probability(baseline_rate, "baseline_rate")
    p1 = check_probability(canary_rate, "canary_rate")
    alpha = check_probability(alpha, "alpha")
    alternative = check_alternative(alternative)
    method = _check_method(method)
    for name, value in (("n_canary", n_canary), ("n_champion", n_champion)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    ratio = n_champion / n_canary
    tail = _one_tail_alpha(alpha, alternative)
    if method == "normal":
        sd_null, sd_alt = _normal_sds(p1, p2, ratio)
        shift, scale = (p1 - p2) * math.sqrt(n_canary) / sd_alt, sd_null / sd_alt
    else:
        effective = 1.0 / (1.0 / n_canary + 1.0 / n_champion)
        shift, scale = _cohen_h(p1, p2) * math.sqrt(effective), 1.0
    power = 0.0
    if alternative in ("two-sided", "larger"):
        power += norm_sf(norm_isf(tail) * scale - shift)
    if alternative in ("two-sided", "smaller"):
        power += norm_cdf(norm_ppf(tail) * scale - shift)
    return float(power)


@dataclass(frozen=True)
class DetectableEffect:
    """The smallest change of the canary's rate the test detects with the given power."""

    method: Method
    alternative: Alternative
    alpha: float
    power: float
    baseline_rate: float
    n_canary: float
    n_champion: float
    target_rate: float
    absolute: float  # |target - baseline|
    relative: float  # absolute / baseline

    def to_dict(self) -> dict[str, Any]:
        return {key: json_number(value) for key, value in asdict(self).items()}


def minimum_detectable_effect(
    baseline_rate: float,
    n_canary: float,
    n_champion: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
    method: Method = "normal",
) -> DetectableEffect:
    """The inverse of :func:`required_sample_size`: the smallest effect (an increase, or a decrease for
    ``alternative="smaller"``) that ``n_canary`` and ``n_champion`` impressions detect with ``power``.

    Raises ValueError when no rate in (0, 1) is detectable (too few impressions).
    """
    p2 = check_probability(baseline_rate, "baseline_rate")
    alpha = check_probability(alpha, "alpha")
    power = check_probability(power, "power")
    alternative = check_alternative(alternative)
    method = _check_method(method)
    for name, value in (("n_canary", n_canary), ("n_champion", n_champion)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    ratio = n_champion / n_canary
    sign = -1.0 if alternative == "smaller" else 1.0
    z_alpha = norm_isf(_one_tail_alpha(alpha, alternative))
    z_power = norm_ppf(power)
    too_few = ValueError(
        f"{n_canary:g} canary and {n_champion:g} champion impressions cannot detect any change of a "
        f"{p2:g} rate with power {power} at alpha {alpha} ({alternative}): more impressions are needed"
    )
    if method == "arcsine":
        h = (z_alpha + z_power) * math.sqrt(1.0 / n_canary + 1.0 / n_champion)
        angle = math.asin(math.sqrt(p2)) + sign * h / 2.0
        if not 0.0 < angle < math.pi / 2.0:
            raise too_few
        target = math.sin(angle) ** 2
    else:

        def shortfall(diff: float) -> float:
            sd_null, sd_alt = _normal_sds(p2 + sign * diff, p2, ratio)
            return z_alpha * sd_null + z_power * sd_alt - diff * math.sqrt(n_canary)

        room = (1.0 - p2 if sign > 0 else p2) * (1.0 - 1e-12)
        if shortfall(room) > 0:
            raise too_few
        target = p2 + sign * optimize.brentq(shortfall, 1e-15, room, xtol=1e-15, rtol=1e-12)
    return DetectableEffect(
        method=method,
        alternative=alternative,
        alpha=alpha,
        power=power,
        baseline_rate=p2,
        n_canary=float(n_canary),
        n_champion=float(n_champion),
        target_rate=target,
        absolute=abs(target - p2),
        relative=abs(target - p2) / p2,
    )
