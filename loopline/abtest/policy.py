"""The canary policy: rollout steps, the CTR decision, the sequential rule, guards and SRM.

The numbers live in ``loopline/policy/canary.yaml`` (each commented there and in docs/abtest.md);
a DAG run may override any of them (``load_canary_policy(overrides={"ctr.alpha": 0.01})``), the
same way as the gate policy (``loopline.gates.load_policy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopline.gates import PolicyError
from loopline.policy import read_policy_file

POLICY_FILE = "canary.yaml"

PromotionTest = Literal["non_inferiority", "superiority"]


class CanaryPolicyError(PolicyError):
    """The canary policy file or an override is invalid; the message names the key and what was expected."""


class _Section(BaseModel):
    # Every field is required: canary.yaml is the single place the default numbers live.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepPolicy(_Section):
    """One rollout step: the canary's traffic share, the information to wait for, the time limit."""

    weight: float = Field(gt=0.0, le=1.0)
    information_fraction: float | None = Field(gt=0.0, le=1.0)  # None only for the 100 % step
    max_hours: float | None = Field(gt=0.0)  # the step's time limit (the rollout enforces it)


class CtrPolicy(_Section):
    """How the click-through rate decides: which test promotes, its error rates, its effect sizes."""

    promote_on: PromotionTest
    alpha: float = Field(gt=0.0, lt=0.5)  # one-sided: P(promote a candidate that should not be)
    rollback_alpha: float = Field(gt=0.0, lt=0.5)  # one-sided: P(roll back a candidate as good as the champion)
    power: float = Field(gt=0.5, lt=1.0)  # superiority: P(promote a candidate better by the MDE)
    mde: float = Field(gt=0.0)
    mde_type: Literal["relative", "absolute"]
    margin: float = Field(gt=0.0)
    margin_type: Literal["relative", "absolute"]
    baseline_rate: float = Field(gt=0.0, lt=1.0)  # planning CTR until the champion has clicks
    sample_size_method: Literal["normal", "arcsine"]

    @model_validator(mode="after")
    def _sizes(self) -> CtrPolicy:
        for name, kind in (("mde", self.mde_type), ("margin", self.margin_type)):
            if kind == "absolute" and getattr(self, name) >= 1.0:
                raise ValueError(
                    f"{name} is absolute (a difference of rates) and must be < 1, got {getattr(self, name)}"
                )
        return self


class SequentialPolicy(_Section):
    """The alpha-spending rule across the rollout's looks."""

    spending: Literal["obrien_fleming", "pocock"]
    early_promotion: bool  # may an interim look promote (skip the remaining steps)?


class GuardPolicy(_Section):
    """Health guards: the canary's error rate and p99 latency against the champion's."""

    alpha: float = Field(gt=0.0, lt=0.5)  # one-sided level of the error-rate test
    error_rate_abs_tolerance: float = Field(ge=0.0, lt=1.0)
    error_rate_rel_tolerance: float = Field(ge=0.0)
    p99_rel_tolerance: float = Field(ge=0.0)
    p99_abs_tolerance_ms: float = Field(ge=0.0)
    min_requests: int = Field(ge=1)  # per arm, before the error-rate guard judges
    min_requests_p99: int = Field(ge=1)  # per arm, before the p99 guard judges

    @model_validator(mode="after")
    def _some_tolerance(self) -> GuardPolicy:
        if self.error_rate_abs_tolerance == 0 and self.error_rate_rel_tolerance == 0:
            raise ValueError("error_rate_abs_tolerance and error_rate_rel_tolerance cannot both be 0")
        return self


class SrmPolicy(_Section):
    """Sample-ratio mismatch: halt when the assignment counts' chi-square p-value is below the threshold."""

    threshold: float = Field(gt=0.0, lt=0.5)


class CanaryPolicy(_Section):
    """The whole canary policy (``canary.yaml``)."""

    version: Literal[1]
    steps: tuple[StepPolicy, ...]
    ctr: CtrPolicy
    sequential: SequentialPolicy
    guards: GuardPolicy
    srm: SrmPolicy

    @model_validator(mode="after")
    def _steps(self) -> CanaryPolicy:
        if len(self.steps) < 2:
            raise ValueError(f"steps: need at least one analysed step and the 100 % step, got {len(self.steps)}")
        weights = [step.weight for step in self.steps]
        if any(later <= earlier for earlier, later in zip(weights, weights[1:], strict=False)):
            raise ValueError(f"steps: weights must increase strictly, got {weights}")
        if weights[-1] != 1.0:
            raise ValueError(f"steps: the last step must be weight 1.0 (the promotion), got {weights[-1]}")
        if self.steps[-1].information_fraction is not None:
            raise ValueError(
                "steps: the 1.0 step is the promotion and is not analysed: information_fraction must be null"
            )
        fractions = [step.information_fraction for step in self.steps[:-1]]
        if any(f is None for f in fractions):
            raise ValueError(f"steps: every step below weight 1.0 needs an information_fraction, got {fractions}")
        if any(later <= earlier for earlier, later in zip(fractions, fractions[1:], strict=False)):  # type: ignore[operator]
            raise ValueError(f"steps: information fractions must increase strictly, got {fractions}")
        if fractions[-1] != 1.0:
            raise ValueError(f"steps: the last analysed step must reach information_fraction 1.0, got {fractions[-1]}")
        return self

    @property
    def looks(self) -> tuple[StepPolicy, ...]:
        """The analysed steps (every step but the final 100 %), one look each."""
        return self.steps[:-1]

    @property
    def planned_fractions(self) -> tuple[float, ...]:
        return tuple(float(step.information_fraction) for step in self.looks)  # type: ignore[arg-type]

    def flat(self) -> dict[str, Any]:
        """The policy as ``{"section.key": value}`` plus ``steps`` (the keys overrides use), JSON-able."""
        data = self.model_dump(mode="json")
        flat: dict[str, Any] = {"version": data["version"], "steps": data["steps"]}
        for name in _SECTIONS:
            flat.update({f"{name}.{key}": value for key, value in data[name].items()})
        return flat


_SECTIONS: dict[str, type[_Section]] = {
    "ctr": CtrPolicy,
    "sequential": SequentialPolicy,
    "guards": GuardPolicy,
    "srm": SrmPolicy,
}


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``ctr.alpha``), nested sections (``{"ctr": {...}}``) or ``steps`` (a whole list).

    A None value means "keep the file's value" (an empty DAG Param); an unknown key is an error.
    """
    every_key = sorted(["steps", *(f"{s}.{k}" for s, m in _SECTIONS.items() for k in m.model_fields)])
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}

    def put(section: str, key: str, value: Any) -> None:
        if section not in _SECTIONS or key not in _SECTIONS[section].model_fields:
            raise CanaryPolicyError(
                f"unknown canary policy key '{section}.{key}'; expected one of: {', '.join(every_key)}"
            )
        if value is not None:
            base = data.get(section)
            data[section] = {**(base if isinstance(base, dict) else {}), key: value}

    for raw_key, value in overrides.items():
        if not isinstance(raw_key, str):
            raise CanaryPolicyError(f"canary policy override keys must be strings, got {raw_key!r}")
        if raw_key == "steps":
            if value is not None:
                data["steps"] = value
        elif "." in raw_key:
            section, _, key = raw_key.partition(".")
            put(section, key, value)
        elif raw_key in _SECTIONS and isinstance(value, Mapping):
            for key, inner in value.items():
                put(raw_key, str(key), inner)
        elif value is None:
            continue
        else:
            raise CanaryPolicyError(f"unknown canary policy key {raw_key!r}; expected one of: {', '.join(every_key)}")
    return data


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "policy"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict | list) or item["type"] == "missing" else f" (got {given!r})"
        lines.append(f"{where}: {message}{shown}")
    return f"invalid canary policy ({source}):\n  " + "\n  ".join(lines)


def load_canary_policy(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> CanaryPolicy:
    """Read the canary policy (the packaged canary.yaml unless ``path``), then apply ``overrides``.

    ``overrides`` takes dotted keys (``{"ctr.alpha": 0.01}``), nested sections (``{"guards": {...}}``)
    or ``steps`` (the whole list); an unknown key raises :class:`CanaryPolicyError` naming it.
    """
    data, source = read_policy_file(POLICY_FILE, path, kind="canary", error=CanaryPolicyError)
    data = _apply_overrides(data, overrides or {})
    try:
        return CanaryPolicy.model_validate(data)
    except ValidationError as error:
        raise CanaryPolicyError(_describe(error, source + (" with overrides" if overrides else ""))) from None
