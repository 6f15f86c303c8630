"""Group-sequential boundaries by alpha spending (Lan & DeMets 1983), for the rollout's looks.

A canary looks at its accumulating data once per rollout step. Testing each look at level alpha
would reject a true null far more often than alpha (the "peeking" problem); an alpha-spending
function ``alpha(t)`` says how much of the type-I error may be used up by information fraction
``t`` (observed information / planned maximum information), and each look's boundary is chosen so
that the probability of first crossing there, under the null, is exactly the increment
``alpha(t_k) - alpha(t_{k-1})``. Looks need not be planned in advance or equally spaced.

Boundaries are one-sided upper bounds on a z-statistic ``Z_k`` whose joint law is the canonical one
(Jennison & Turnbull 2000, ch. 3): ``Z_k ~ N(drift * sqrt(t_k), 1)`` and
``corr(Z_j, Z_k) = sqrt(t_j / t_k)``. The exit probabilities are computed by the recursive numerical
integration of Armitage, McPherson & Rowe (1969) on the score scale ``S_k = Z_k sqrt(t_k)``, which
has independent Gaussian increments; Simpson's rule on a fixed grid, deterministic (no Monte Carlo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats

Spending = Literal["obrien_fleming", "pocock"]
SPENDING_FUNCTIONS: tuple[Spending, ...] = ("obrien_fleming", "pocock")

_GRID_POINTS = 401  # odd, for Simpson's rule; boundaries agree with 1601 points to 1e-6
_TAIL_SD = 10.0  # the grid spans the mean +- 10 standard deviations of the score
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)  # scipy.stats.norm.pdf without its per-call overhead


def spent_alpha(fraction: float, alpha: float, spending: Spending = "obrien_fleming") -> float:
    """Cumulative type-I error allowed by information ``fraction`` (0..1) under the spending function.

    ``obrien_fleming``: ``2 - 2 Phi(z_{1-alpha/2} / sqrt(t))`` (Lan-DeMets O'Brien-Fleming type; almost
    nothing early, nearly the full alpha at the end). ``pocock``: ``alpha ln(1 + (e - 1) t)``.
    Both equal 0 at t = 0 and ``alpha`` at t = 1.
    """
    _check_alpha(alpha)
    if not math.isfinite(fraction) or fraction < 0:
        raise ValueError(f"information fraction must be a finite number >= 0, got {fraction!r}")
    t = min(float(fraction), 1.0)
    if t == 0.0:
        return 0.0
    if spending == "obrien_fleming":
        return float(2.0 * stats.norm.sf(stats.norm.isf(alpha / 2.0) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1.0 + (math.e - 1.0) * t))
    raise ValueError(f"unknown spending function {spending!r}; expected one of {SPENDING_FUNCTIONS}")


@dataclass(frozen=True)
class SequentialBoundaries:
    """One-sided upper z-boundaries of a group-sequential test, one per look.

    ``z[k]`` is the critical value at look k (``inf`` when the look may spend nothing),
    ``nominal_p[k] = 1 - Phi(z[k])`` the per-look p-value threshold, ``cumulative_alpha[k]`` the
    type-I error spent up to and including look k.
    """

    fractions: tuple[float, ...]
    alpha: float
    spending: Spending
    z: tuple[float, ...]
    nominal_p: tuple[float, ...]
    cumulative_alpha: tuple[float, ...]

    @property
    def looks(self) -> int:
        return len(self.fractions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fractions": list(self.fractions),
            "alpha": self.alpha,
            "spending": self.spending,
            "z": [_finite_or_str(value) for value in self.z],
            "nominal_p": list(self.nominal_p),
            "cumulative_alpha": list(self.cumulative_alpha),
        }


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha!r}")


def _check_fractions(fractions: tuple[float, ...]) -> None:
    if not fractions:
        raise ValueError("need at least one look (information fraction)")
    previous = 0.0
    for index, value in enumerate(fractions, start=1):
        if not (math.isfinite(value) and value > previous):
            raise ValueError(
                f"information fractions must be finite, > 0 and strictly increasing; look {index} has {value!r} "
                f"after {previous!r} (all: {list(fractions)})"
            )
        previous = value


def _simpson_weights(points: int, step: float) -> np.ndarray:
    weights = np.ones(points)
    weights[1:-1:2] = 4.0
    weights[2:-1:2] = 2.0
    return weights * step / 3.0


class _ScoreDensity:
    """The sub-density of the score S_k = Z_k sqrt(t_k) on the paths that have not crossed yet."""

    def __init__(self, drift: float):
        self.drift = drift
        self.fraction = 0.0
        self.grid: np.ndarray | None = None  # None: before the first look (S_0 = 0 with certainty)
        self.mass: np.ndarray | None = None  # density x Simpson weight at each grid point

    def crossing_probability(self, fraction: float, bound_z: float) -> float:
        """P(not crossed before, Z at ``fraction`` >= ``bound_z``) for the next look."""
        if math.isinf(bound_z):
            return 0.0
        increment = fraction - self.fraction
        bound_score = bound_z * math.sqrt(fraction)
        if self.grid is None:
            return float(special.ndtr((self.drift * fraction - bound_score) / math.sqrt(fraction)))
        tail = special.ndtr((self.grid + self.drift * increment - bound_score) / math.sqrt(increment))
        return float(np.dot(self.mass, tail))

    def advance(self, fraction: float, bound_z: float) -> None:
        """Move to the next look, keeping only the paths below ``bound_z``."""
        increment = fraction - self.fraction
        sd = math.sqrt(fraction)
        mean = self.drift * fraction
        low = mean - _TAIL_SD * sd
        high = min(bound_z * sd, mean + _TAIL_SD * sd) if math.isfinite(bound_z) else mean + _TAIL_SD * sd
        if high <= low:  # the boundary sits far below every path: nothing continues
            self.grid = np.array([low, low + 1e-12, low + 2e-12])
            self.mass = np.zeros(3)
            self.fraction = fraction
            return
        grid = np.linspace(low, high, _GRID_POINTS)
        weights = _simpson_weights(_GRID_POINTS, (high - low) / (_GRID_POINTS - 1))
        if self.grid is None:
            density = _normal_pdf((grid - mean) / sd) / sd
        else:
            step_sd = math.sqrt(increment)
            kernel = _normal_pdf((grid[:, None] - self.grid[None, :] - self.drift * increment) / step_sd) / step_sd
            density = kernel @ self.mass
        self.grid, self.mass, self.fraction = grid, density * weights, fraction


def exit_probabilities(
    fractions: tuple[float, ...] | list[float], z: tuple[float, ...] | list[float], drift: float = 0.0
) -> np.ndarray:
    """P(first crossing of the upper boundary at look k), for each k, when ``E[Z_k] = drift sqrt(t_k)``.

    ``drift = 0`` is the null; the sum is then the overall type-I error of the boundaries. With the
    drift of an alternative it is the power (``drift = effect * sqrt(max information)``).
    """
    fractions = tuple(float(f) for f in fractions)
    _check_fractions(fractions)
    if len(z) != len(fractions):
        raise ValueError(f"need one boundary per look: {len(fractions)} fractions but {len(z)} boundaries")
    density = _ScoreDensity(drift)
    out = np.zeros(len(fractions))
    for index, (fraction, bound) in enumerate(zip(fractions, z, strict=True)):
        out[index] = density.crossing_probability(fraction, float(bound))
        if index < len(fractions) - 1:
            density.advance(fraction, float(bound))
    return out


@lru_cache(maxsize=1024)
def _boundaries(
    fractions: tuple[float, ...], alpha: float, spending: Spending, spend_all_at_last: bool
) -> SequentialBoundaries:
    _check_fractions(fractions)
    _check_alpha(alpha)
    if spending not in SPENDING_FUNCTIONS:
        raise ValueError(f"unknown spending function {spending!r}; expected one of {SPENDING_FUNCTIONS}")
    cumulative = [spent_alpha(f, alpha, spending) for f in fractions]
    if spend_all_at_last:
        cumulative[-1] = alpha
    density = _ScoreDensity(0.0)
    bounds: list[float] = []
    spent_so_far = 0.0
    for index, (fraction, target) in enumerate(zip(fractions, cumulative, strict=True)):
        increment = target - spent_so_far
        if increment <= 1e-15:
            bound = math.inf
        else:
            bound = optimize.brentq(
                lambda b, f=fraction, inc=increment: density.crossing_probability(f, b) - inc,
                -10.0,
                40.0,
                xtol=1e-10,
            )
        bounds.append(float(bound))
        if index < len(fractions) - 1:
            density.advance(fraction, bound)
        spent_so_far = max(target, spent_so_far)
    return SequentialBoundaries(
        fractions=fractions,
        alpha=alpha,
        spending=spending,
        z=tuple(bounds),
        nominal_p=tuple(float(stats.norm.sf(b)) for b in bounds),
        cumulative_alpha=tuple(float(c) for c in cumulative),
    )


def sequential_boundaries(
    fractions: tuple[float, ...] | list[float],
    alpha: float,
    spending: Spending = "obrien_fleming",
    *,
    spend_all_at_last: bool = True,
) -> SequentialBoundaries:
    """One-sided boundaries for looks at the given information ``fractions`` (strictly increasing).

    A fraction above 1 (more information than planned) spends as if it were 1. With
    ``spend_all_at_last`` (the default) the last look spends whatever alpha is left, so the test has
    level exactly ``alpha`` even when the last look falls short of the planned information; leave it
    False for interim looks of a test that will look again.
    """
    return _boundaries(tuple(float(f) for f in fractions), float(alpha), spending, bool(spend_all_at_last))


def sequential_power(boundaries: SequentialBoundaries, drift: float) -> float:
    """Probability of crossing the boundaries at some look when ``E[Z at t=1] = drift``."""
    return float(exit_probabilities(boundaries.fractions, boundaries.z, drift).sum())


def drift_for_power(boundaries: SequentialBoundaries, power: float) -> float:
    """The drift (``effect * sqrt(max information)``) at which the boundaries have ``power``.

    For a single look this is ``z_{1-alpha} + z_{power}``; more looks need a little more
    (the inflation factor of the design is ``(drift / (z_{1-alpha} + z_{power}))**2``).
    """
    if not 0.0 < power < 1.0 or power <= boundaries.alpha:
        raise ValueError(f"power must be in (alpha, 1) = ({boundaries.alpha}, 1), got {power!r}")
    upper = 2.0 * (stats.norm.isf(boundaries.alpha) + stats.norm.ppf(power)) + 5.0
    return float(optimize.brentq(lambda d: sequential_power(boundaries, d) - power, 0.0, upper, xtol=1e-9))
