"""What one arm (canary or champion) has seen: the counts a step analysis reads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from loopline.abtest._common import check_count


@dataclass(frozen=True)
class ArmMetrics:
    """Counts of one arm over a window: impressions, clicks and conversions (purchases) for the rates,
    requests and failed requests for the error rate, the p99 latency of its requests, and optionally
    the distinct users assigned to it (the randomised unit, preferred for SRM)."""

    impressions: int
    clicks: int
    conversions: int = 0
    requests: int = 0
    errors: int = 0
    p99_latency_ms: float | None = None
    users: int | None = None
    name: str = "arm"

    def __post_init__(self) -> None:
        for field_name in ("impressions", "clicks", "conversions", "requests", "errors"):
            object.__setattr__(self, field_name, check_count(getattr(self, field_name), f"{self.name} {field_name}"))
        if self.users is not None:
            object.__setattr__(self, "users", check_count(self.users, f"{self.name} users"))
        if self.clicks > self.impressions:
            raise ValueError(f"{self.name}: clicks ({self.clicks}) must not exceed impressions ({self.impressions})")
        if self.conversions > self.impressions:
            raise ValueError(
                f"{self.name}: conversions ({self.conversions}) must not exceed impressions ({self.impressions})"
            )
        if self.errors > self.requests:
            raise ValueError(f"{self.name}: errors ({self.errors}) must not exceed requests ({self.requests})")
        latency = self.p99_latency_ms
        if latency is not None and (
            isinstance(latency, bool)
            or not isinstance(latency, int | float)
            or not math.isfinite(latency)
            or latency < 0
        ):
            raise ValueError(f"{self.name}: p99_latency_ms must be a finite number >= 0 or None, got {latency!r}")

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def conversion_rate(self) -> float:
        return self.conversions / self.impressions if self.impressions else math.nan

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else math.nan

    def __add__(self, other: ArmMetrics) -> ArmMetrics:
        """Counts of two windows together; the p99 of the sum is unknown unless only one window has one."""
        if not isinstance(other, ArmMetrics):
            return NotImplemented
        p99s = [p for p in (self.p99_latency_ms, other.p99_latency_ms) if p is not None]
        users = None if self.users is None or other.users is None else self.users + other.users
        return ArmMetrics(
            impressions=self.impressions + other.impressions,
            clicks=self.clicks + other.clicks,
            conversions=self.conversions + other.conversions,
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            p99_latency_ms=p99s[0] if len(p99s) == 1 else None,
            users=users,
            name=self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
