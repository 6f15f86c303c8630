"""Sample-ratio mismatch (SRM): are the arms' assignment counts what the traffic weights promise?

A chi-square goodness-of-fit test of the observed counts against ``total * weight``
(``scipy.stats.chisquare``). An SRM means the assignment or the logging is broken (a crashing arm,
a bot filter hitting one arm, lost log partitions), so no comparison of the arms can be trusted:
the rollout halts and alerts instead of deciding. The threshold is strict (p < 0.001 by default,
the usual choice for SRM) because the check runs at every look and a false halt costs a rollout.

Count the unit that is randomised: with user-hash assignment that is users; requests of the same
user are not independent, and heavy users make request counts over-dispersed (more SRM alarms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from loopline.abtest._common import check_count, check_probability, fmt, json_number

MIN_EXPECTED_COUNT = 5.0  # below this expected count in some arm the chi-square approximation is poor


@dataclass(frozen=True)
class SRMResult:
    """The SRM check: observed and expected counts, chi-square statistic, p-value and verdict."""

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected_weights: tuple[float, ...]
    expected: tuple[float, ...]
    observed_shares: tuple[float, ...]
    chi2: float
    p_value: float
    threshold: float
    checked: bool  # False when some expected count is below MIN_EXPECTED_COUNT (too early to judge)
    mismatch: bool  # checked and p_value < threshold

    def summary(self) -> str:
        parts = ", ".join(
            f"{arm} {count:,} ({share:.2%} vs {weight:.2%} expected)"
            for arm, count, share, weight in zip(
                self.arms, self.observed, self.observed_shares, self.expected_weights, strict=True
            )
        )
        if not self.checked:
            return f"SRM not checked yet (an expected count is below {MIN_EXPECTED_COUNT:g}): {parts}"
        verdict = "MISMATCH" if self.mismatch else "ok"
        return f"SRM {verdict}: {parts}; chi2 = {self.chi2:.3f}, p = {fmt(self.p_value)} (halt if < {self.threshold:g})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "arms": list(self.arms),
            "observed": list(self.observed),
            "expected_weights": list(self.expected_weights),
            "expected": list(self.expected),
            "observed_shares": list(self.observed_shares),
            "chi2": json_number(self.chi2),
            "p_value": json_number(self.p_value),
            "threshold": self.threshold,
            "checked": self.checked,
            "mismatch": self.mismatch,
        }


def srm_check(
    observed: Sequence[int],
    expected_weights: Sequence[float],
    *,
    threshold: float = 0.001,
    arms: Sequence[str] | None = None,
) -> SRMResult:
    """Chi-square goodness of fit of assignment counts to the expected traffic weights.

    ``expected_weights`` are the arms' traffic shares, each in (0, 1), summing to 1 (for a canary:
    ``[weight, 1 - weight]``). ``mismatch`` when the p-value is below ``threshold``; not checked
    while some arm expects fewer than 5 assignments.
    """
    counts = [check_count(value, f"observed count of arm {index}") for index, value in enumerate(observed)]
    weights = [check_probability(w, f"expected weight of arm {index}") for index, w in enumerate(expected_weights)]
    if len(counts) < 2:
        raise ValueError(f"SRM needs at least two arms, got {len(counts)} observed counts")
    if len(weights) != len(counts):
        raise ValueError(f"SRM needs one expected weight per arm: {len(counts)} counts but {len(weights)} weights")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ValueError(f"expected weights must sum to 1, got {weights} (sum {sum(weights)!r})")
    threshold = check_probability(threshold, "SRM threshold")
    names = tuple(arms) if arms is not None else tuple(f"arm{index}" for index in range(len(counts)))
    if len(names) != len(counts):
        raise ValueError(f"SRM needs one name per arm: {len(counts)} counts but {len(names)} names")
    total = sum(counts)
    expected = [total * w for w in weights]
    shares = tuple(c / total if total else 0.0 for c in counts)
    checked = min(expected) >= MIN_EXPECTED_COUNT
    if checked:
        result = stats.chisquare(np.asarray(counts, dtype=float), np.asarray(expected, dtype=float))
        chi2, p_value = float(result.statistic), float(result.pvalue)
    else:
        chi2, p_value = math.nan, math.nan
    return SRMResult(
        arms=names,
        observed=tuple(counts),
        expected_weights=tuple(weights),
        expected=tuple(expected),
        observed_shares=shares,
        chi2=chi2,
        p_value=p_value,
        threshold=threshold,
        checked=checked,
        mismatch=bool(checked and p_value < threshold),
    )
