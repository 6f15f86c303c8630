"""The statistics of Loopline's canary analysis: pure numpy/scipy, no Airflow, no I/O but the policy file.

* :mod:`~loopline.abtest.proportions`: two-proportion z-tests (difference, superiority,
  non-inferiority) for click-through and conversion rates, with Wald intervals.
* :mod:`~loopline.abtest.power`: power, required sample size and minimum detectable effect, for
  unequal arms (a 5 % canary against a 95 % champion).
* :mod:`~loopline.abtest.srm`: the sample-ratio-mismatch check (chi-square on assignment counts).
* :mod:`~loopline.abtest.guards`: health guards on error rate and p99 latency.
* :mod:`~loopline.abtest.sequential`: Lan-DeMets alpha spending, so looks at each rollout step do not
  inflate false decisions.
* :mod:`~loopline.abtest.step`: one rollout step's decision (continue / promote / rollback /
  halt_srm / wait_for_sample) with every number, as a dict for the audit trail and a table for logs.
* :mod:`~loopline.abtest.policy`: ``loopline/policy/canary.yaml`` and its overrides.

See docs/abtest.md for the formulas, the policy keys and a worked example.
"""

from loopline.abtest.arms import ArmMetrics
from loopline.abtest.guards import GuardResult, GuardVerdict, check_guards, error_rate_guard, p99_latency_guard
from loopline.abtest.policy import CanaryPolicy, CanaryPolicyError, load_canary_policy
from loopline.abtest.power import (
    DetectableEffect,
    SampleSize,
    minimum_detectable_effect,
    power_two_proportions,
    ratio_for_weight,
    required_sample_size,
)
from loopline.abtest.proportions import (
    ProportionTest,
    absolute_margin,
    noninferiority_test,
    superiority_test,
    two_proportion_ztest,
)
from loopline.abtest.sequential import (
    SequentialBoundaries,
    drift_for_power,
    exit_probabilities,
    sequential_boundaries,
    sequential_power,
    spent_alpha,
)
from loopline.abtest.srm import SRMResult, srm_check
from loopline.abtest.step import (
    DECISIONS,
    CtrDesign,
    CtrLook,
    Decision,
    PlannedStep,
    StepDecision,
    analyze_step,
    ctr_design,
    impressions_needed,
    information,
    plan_rollout,
)

__all__ = [
    "DECISIONS",
    "ArmMetrics",
    "CanaryPolicy",
    "CanaryPolicyError",
    "CtrDesign",
    "CtrLook",
    "Decision",
    "DetectableEffect",
    "GuardResult",
    "GuardVerdict",
    "PlannedStep",
    "ProportionTest",
    "SRMResult",
    "SampleSize",
    "SequentialBoundaries",
    "StepDecision",
    "absolute_margin",
    "analyze_step",
    "check_guards",
    "ctr_design",
    "drift_for_power",
    "error_rate_guard",
    "exit_probabilities",
    "impressions_needed",
    "information",
    "load_canary_policy",
    "minimum_detectable_effect",
    "noninferiority_test",
    "p99_latency_guard",
    "plan_rollout",
    "power_two_proportions",
    "ratio_for_weight",
    "required_sample_size",
    "sequential_boundaries",
    "sequential_power",
    "spent_alpha",
    "srm_check",
    "superiority_test",
    "two_proportion_ztest",
]
