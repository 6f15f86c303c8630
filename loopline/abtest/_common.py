"""Input checks and number formatting shared by the ``loopline.abtest`` modules."""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

from scipy import special

Alternative = Literal["two-sided", "larger", "smaller"]
ALTERNATIVES: tuple[Alternative, ...] = ("two-sided", "larger", "smaller")


def check_count(value: Any, name: str) -> int:
    """A non-negative whole number (an int, or a float with no fraction), as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        if not math.isfinite(float(value)) or float(value) != int(value):
            raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
        number = int(value)
    if number < 0:
        raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
    return number


def check_successes(successes: Any, trials: Any, what: str, *, allow_empty: bool = False) -> tuple[int, int]:
    """``successes`` <= ``trials``, both non-negative whole numbers; ``trials`` > 0 unless ``allow_empty``."""
    trials = check_count(trials, f"{what} trials")
    successes = check_count(successes, f"{what} successes")
    if successes > trials:
        raise ValueError(f"{what}: successes ({successes}) must not exceed trials ({trials})")
    if trials == 0 and not allow_empty:
        raise ValueError(f"{what}: trials must be > 0 to estimate a rate, got 0")
    return successes, trials


def check_probability(value: Any, name: str, *, low_open: bool = True, high_open: bool = True) -> float:
    """A number in (0, 1) (ends open or closed as asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    number = float(value)
    too_low = number <= 0.0 if low_open else number < 0.0
    too_high = number >= 1.0 if high_open else number > 1.0
    if too_low or too_high:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def check_alternative(alternative: Any) -> Alternative:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


def json_number(value: Any) -> Any:
    """JSON has no inf/nan: encode them as strings so XCom, audit rows and webhooks accept them."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A short human form of a number for tables and reasons."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: float | None, digits: int = 3) -> str:
    """A rate as a percentage with ``digits`` significant digits (``0.05123 -> '5.12%'``)."""
    if value is None or not math.isfinite(value):
        return fmt(value)
    return f"{value * 100:.{digits}g}%"


def z_ratio(numerator: float, denominator: float) -> float:
    """A z-statistic ``numerator / standard error``: 0/0 = 0 (no evidence either way), x/0 = +-inf (certain)."""
    if denominator > 0:
        return numerator / denominator
    if numerator == 0:
        return 0.0
    return math.copysign(math.inf, numerator)


# Standard normal tail functions on floats. scipy.special's ufuncs give the same numbers as
# scipy.stats.norm without its argument-checking overhead (a step decision calls them dozens of times).
def norm_sf(x: float) -> float:
    """P(Z > x)."""
    return float(special.ndtr(-x))


def norm_cdf(x: float) -> float:
    """P(Z <= x)."""
    return float(special.ndtr(x))


def norm_isf(p: float) -> float:
    """The x with P(Z > x) = p."""
    return float(-special.ndtri(p))


def norm_ppf(p: float) -> float:
    """The x with P(Z <= x) = p."""
    return float(special.ndtri(p))
