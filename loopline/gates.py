"""Gate policy, gate decisions and alerts for the data-quality and drift gates.

The thresholds live in ``loopline/policy/gates.yaml`` (every number commented there and in
docs/gates.md); a DAG run may override any of them through Params (``load_policy(overrides=...)``).
A gate turns a measured report into a :class:`GateDecision`: ``pass``, ``retrain`` (drift worth
retraining for) or ``block`` (the data is not fit to train on), with every check, its number and the
rule that judged it, so nothing decides silently. ``alert`` logs one structured line per decision
and optionally POSTs it to a webhook; ``failure_callback`` and ``deadline_missed`` are the same
alert shaped as Airflow callbacks (this module imports nothing from Airflow).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopline.policy import read_policy_file

if TYPE_CHECKING:
    from loopline.drift import DriftResult
    from loopline.quality import QualityReport

Outcome = Literal["pass", "retrain", "block"]
CheckStatus = Literal["ok", "warn", "retrain", "block", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "retrain", "block")  # in increasing severity
CHECK_STATUSES: tuple[CheckStatus, ...] = ("ok", "warn", "retrain", "block", "skipped")

POLICY_FILE = "gates.yaml"
WEBHOOK_TIMEOUT_SECONDS = 5.0

LOG = logging.getLogger(__name__)


class PolicyError(ValueError):
    """The gate policy file or an override is invalid; the message names the key and what was expected."""


class GateBlockedError(RuntimeError):
    """Raised (by the caller) when a gate blocks training; carries the decision for callbacks and logs."""

    def __init__(self, decision: GateDecision):
        self.decision = decision
        super().__init__(f"{decision.gate} gate blocked training: " + "; ".join(decision.reasons))


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------


class _Section(BaseModel):
    # Every field is required: gates.yaml is the single place the default numbers live.
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityPolicy(_Section):
    """Thresholds of the data-quality gate (see gates.yaml for what each one means)."""

    volume_min_history: int = Field(ge=1)
    volume_min_ratio: float = Field(ge=0.0)
    volume_max_ratio: float = Field(gt=0.0)
    label_rate_min_ratio: float = Field(ge=0.0, le=1.0)
    label_rate_max_ratio: float = Field(ge=1.0)
    label_rate_min_z: float = Field(ge=0.0)
    max_pii_rows: int = Field(ge=0)
    max_noisy_share: float = Field(ge=0.0, le=1.0)
    bot_min_impressions: int = Field(ge=1)
    bot_min_ctr_ratio: float = Field(ge=1.0)
    bot_max_p_value: float = Field(gt=0.0, lt=1.0)
    psi_bins: int = Field(ge=2, le=1000)
    psi_smoothing: float = Field(ge=0.0)
    psi_warn: float = Field(ge=0.0)
    psi_retrain: float = Field(ge=0.0)
    important_features: tuple[str, ...]
    max_categories: int = Field(ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> QualityPolicy:
        if self.volume_min_ratio >= self.volume_max_ratio:
            raise ValueError(
                f"volume_min_ratio ({self.volume_min_ratio}) must be below volume_max_ratio ({self.volume_max_ratio})"
            )
        if self.psi_warn > self.psi_retrain:
            raise ValueError(f"psi_warn ({self.psi_warn}) must not exceed psi_retrain ({self.psi_retrain})")
        return self


class DriftPolicy(_Section):
    """Settings of the Evidently drift gate: dataset drift share, sampling, optional per-type methods."""

    drift_share: float = Field(gt=0.0, le=1.0)
    max_rows: int = Field(ge=100)
    seed: int = Field(ge=0)
    num_method: str | None
    cat_method: str | None
    num_threshold: float | None = Field(gt=0.0)
    cat_threshold: float | None = Field(gt=0.0)


class AlertPolicy(_Section):
    """Where alerts go besides the log."""

    webhook_url: str | None
    timeout_seconds: float = Field(gt=0.0, le=60.0)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value or None


class GatePolicy(_Section):
    """The whole gate policy: ``quality``, ``drift`` and ``alert`` sections of gates.yaml."""

    version: Literal[1]
    quality: QualityPolicy
    drift: DriftPolicy
    alert: AlertPolicy

    def flat(self, section: str | None = None) -> dict[str, Any]:
        """The policy as ``{"section.key": value}`` (the same keys overrides use), JSON-able."""
        data = self.model_dump(mode="json")
        flat = {
            f"{name}.{key}": value
            for name, values in data.items()
            if isinstance(values, dict) and (section is None or name == section)
            for key, value in values.items()
        }
        return flat


def _known_keys() -> dict[str, set[str]]:
    return {name: set(model.model_fields) for name, model in _SECTION_MODELS.items()}


_SECTION_MODELS: dict[str, type[_Section]] = {"quality": QualityPolicy, "drift": DriftPolicy, "alert": AlertPolicy}


def _normalise_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Turn ``{"quality.max_pii_rows": 0}`` and ``{"quality": {"max_pii_rows": 0}}`` into nested dicts.

    Keys whose value is None are dropped: a DAG Param left empty means "use the file".
    """
    known = _known_keys()
    every_key = sorted(f"{section}.{key}" for section, keys in known.items() for key in keys)
    nested: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        dotted = f"{section}.{key}"
        if section not in known or key not in known[section]:
            raise PolicyError(f"unknown gate policy key {dotted!r}; expected one of: {', '.join(every_key)}")
        if value is not None:
            nested.setdefault(section, {})[key] = value

    for raw_key, value in overrides.items():
        if not isinstance(raw_key, str):
            raise PolicyError(f"gate policy override keys must be strings, got {raw_key!r}")
        if "." in raw_key:
            section, _, key = raw_key.partition(".")
            put(section, key, value)
        elif isinstance(value, Mapping):
            if raw_key not in known:
                raise PolicyError(
                    f"unknown gate policy section {raw_key!r}; expected one of: {', '.join(sorted(known))}"
                )
            for key, inner in value.items():
                put(raw_key, str(key), inner)
        elif value is None:
            continue
        else:
            raise PolicyError(
                f"unknown gate policy key {raw_key!r}; use 'section.key' (one of: {', '.join(every_key)})"
            )
    return nested


def _describe_validation(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "policy"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict) or item["type"] == "missing" else f" (got {given!r})"
        lines.append(f"{where}: {message}{shown}")
    return f"invalid gate policy ({source}):\n  " + "\n  ".join(lines)


def load_policy(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> GatePolicy:
    """Read the gate policy (the packaged gates.yaml unless ``path``), then apply DAG Param ``overrides``.

    ``overrides`` takes dotted keys (``{"quality.max_noisy_share": 0.2}``) or nested sections
    (``{"quality": {"max_noisy_share": 0.2}}``); an unknown key raises :class:`PolicyError` naming it.
    """
    data, source = read_policy_file(POLICY_FILE, path, kind="gate", error=PolicyError)
    for section, values in _normalise_overrides(overrides or {}).items():
        base = data.get(section)
        data[section] = {**(base if isinstance(base, dict) else {}), **values}
    try:
        return GatePolicy.model_validate(data)
    except ValidationError as error:
        label = source + (" with overrides" if overrides else "")
        raise PolicyError(_describe_validation(error, label)) from None


# --------------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _json_number(value: Any) -> Any:
    """JSON has no inf/nan: encode them as strings so XCom and webhooks accept the payload."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    return value


@dataclass(frozen=True)
class Check:
    """One judged measurement: its value, the rule that judged it and the resulting status."""

    name: str
    status: CheckStatus
    value: float | int | str | None
    rule: str  # when the check fires, e.g. "block if > 0"
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in CHECK_STATUSES:
            raise ValueError(f"check {self.name!r}: status must be one of {CHECK_STATUSES}, got {self.status!r}")

    def describe(self) -> str:
        """``name = value (rule): detail`` — one reason line with the numbers."""
        text = f"{self.name} = {_format_value(self.value)} ({self.rule})"
        return f"{text}: {self.detail}" if self.detail else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "value": _json_number(self.value),
            "rule": self.rule,
            "detail": self.detail,
        }


def outcome_of(checks: Iterable[Check]) -> Outcome:
    """``block`` if any check blocks, else ``retrain`` if any asks for it, else ``pass``."""
    statuses = {check.status for check in checks}
    if "block" in statuses:
        return "block"
    if "retrain" in statuses:
        return "retrain"
    return "pass"


@dataclass(frozen=True)
class GateDecision:
    """A gate's verdict with every check, the thresholds used and where the full report is."""

    gate: str
    outcome: Outcome
    checks: tuple[Check, ...]
    thresholds: dict[str, Any] = field(default_factory=dict)
    report_uri: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"gate {self.gate!r}: outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @classmethod
    def from_checks(
        cls,
        gate: str,
        checks: Iterable[Check],
        *,
        thresholds: Mapping[str, Any] | None = None,
        report_uri: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> GateDecision:
        checks = tuple(checks)
        return cls(gate, outcome_of(checks), checks, dict(thresholds or {}), report_uri, dict(metrics or {}))

    @property
    def reasons(self) -> list[str]:
        """The checks that led to the outcome, each with its number and rule (empty for ``pass``)."""
        if self.outcome == "pass":
            return []
        return [check.describe() for check in self.checks if check.status == self.outcome]

    @property
    def warnings(self) -> list[str]:
        return [check.describe() for check in self.checks if check.status == "warn"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form for XCom, audit tables and webhooks (``from_dict`` reads it back)."""
        return {
            "gate": self.gate,
            "outcome": self.outcome,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "checks": [check.to_dict() for check in self.checks],
            "thresholds": {key: _json_number(value) for key, value in self.thresholds.items()},
            "report_uri": self.report_uri,
            "metrics": {key: _json_number(value) for key, value in self.metrics.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateDecision:
        try:
            checks = tuple(
                Check(**{k: c[k] for k in ("name", "status", "value", "rule", "detail")}) for c in data["checks"]
            )
            return cls(
                gate=data["gate"],
                outcome=data["outcome"],
                checks=checks,
                thresholds=dict(data.get("thresholds") or {}),
                report_uri=data.get("report_uri"),
                metrics=dict(data.get("metrics") or {}),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a GateDecision dict (expected gate, outcome, checks): {error}") from None

    def to_table(self) -> str:
        """A plain-text table for the task log: verdict, every check with value/rule/status, report."""
        header = ("check", "value", "rule", "status", "detail")
        rows = [(c.name, _format_value(c.value), c.rule, c.status, c.detail) for c in self.checks]
        widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(5)]

        def line(cells: Iterable[str]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

        out = [f"{self.gate} gate: {self.outcome.upper()}", line(header), line("-" * w for w in widths)]
        out += [line(row) for row in rows]
        if self.reasons:
            out.append("reasons: " + "; ".join(self.reasons))
        out.append(f"report: {self.report_uri or '-'}")
        return "\n".join(out)


def decide_quality(report: QualityReport, policy: GatePolicy | None = None) -> GateDecision:
    """The quality gate's verdict: ``block`` on PII, label noise, volume or label-rate anomalies;
    ``retrain`` when an important feature's PSI exceeds the threshold; else ``pass``.

    With ``policy`` the report's measurements are judged again under it (e.g. after overrides),
    without measuring again; otherwise under the policy ``check_quality`` was given.
    """
    policy = policy or report.policy
    checks = report.judge(policy)
    return GateDecision.from_checks(
        "quality",
        checks,
        thresholds=policy.flat("quality"),
        report_uri=report.report_uri,
        metrics=report.summary(),
    )


def decide_drift(result: DriftResult, policy: GatePolicy | None = None) -> GateDecision:
    """The drift gate's verdict: ``retrain`` when the share of drifted columns reaches
    ``drift.drift_share`` (Evidently's dataset drift), else ``pass``."""
    policy = policy or result.policy
    return GateDecision.from_checks(
        "drift",
        result.judge(policy),
        thresholds=policy.flat("drift"),
        report_uri=result.html_uri or result.json_uri,
        metrics=result.summary(),
    )


def combine_decisions(*decisions: GateDecision, gate: str = "gates") -> GateDecision:
    """One verdict from several gates: the most severe outcome wins, checks keep their gate prefix."""
    if not decisions:
        raise ValueError("combine_decisions needs at least one GateDecision")
    checks = tuple(
        Check(f"{d.gate}.{c.name}", c.status, c.value, c.rule, c.detail) for d in decisions for c in d.checks
    )
    thresholds: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for decision in decisions:
        thresholds.update(decision.thresholds)
        metrics.update({f"{decision.gate}.{key}": value for key, value in decision.metrics.items()})
    uris = [d.report_uri for d in decisions if d.report_uri]
    return GateDecision.from_checks(
        gate, checks, thresholds=thresholds, report_uri=" ; ".join(uris) or None, metrics=metrics
    )


# --------------------------------------------------------------------------------------------------
# Report artifacts
# --------------------------------------------------------------------------------------------------


def store_report_file(
    local_path: str | Path,
    out_uri: str,
    *,
    name: str | None = None,
    s3_endpoint_url: str | None = None,
    s3_client: Any = None,
) -> str:
    """Copy a report file into ``out_uri`` (``file:///dir`` or ``s3://bucket/prefix``); return its URI.

    A local copy is written beside its target and renamed (atomic); an S3 object appears only when
    its upload completes. ``s3_endpoint_url`` defaults to the settings' (a local S3-compatible server).
    """
    source = Path(local_path)
    name = name or source.name
    if not name or "/" in name:
        raise ValueError(f"report file name must be a plain file name, got {name!r}")
    parts = urlsplit(out_uri)
    if parts.scheme == "file":
        directory = Path(unquote(parts.path))
        directory.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        os.close(handle)
        try:
            shutil.copyfile(source, staging)
            os.chmod(staging, 0o644)  # mkstemp makes 0600; reports are meant to be read
            os.replace(staging, directory / name)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return (directory / name).as_uri()
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"report URI {out_uri!r} names no bucket (expected s3://bucket/prefix)")
        if s3_client is None:
            from loopline.config import settings
            from loopline.logstore import make_s3_client

            s3_client = make_s3_client(s3_endpoint_url or settings().s3_endpoint_url, settings().aws_region)
        key = "/".join(piece for piece in (parts.path.strip("/"), name) if piece)
        content_type = {".html": "text/html", ".json": "application/json"}.get(
            source.suffix, "application/octet-stream"
        )
        s3_client.upload_file(str(source), parts.netloc, key, ExtraArgs={"ContentType": content_type})
        return f"s3://{parts.netloc}/{key}"
    raise ValueError(f"report URI {out_uri!r}: expected file:///dir or s3://bucket/prefix")


# --------------------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------------------

_LOG_LEVEL = {"pass": logging.INFO, "retrain": logging.WARNING, "block": logging.ERROR}


def post_json(url: str, payload: Mapping[str, Any], *, timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> int:
    """POST ``payload`` as JSON to ``url``; return the HTTP status. Raises on network/HTTP errors."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"webhook URL must be http:// or https://, got {url!r}")
    body = json.dumps(payload, default=str).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "loopline-gates"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        return int(response.status)


def _notify(
    payload: dict[str, Any],
    *,
    level: int,
    webhook_url: str | None,
    log: logging.Logger,
    timeout: float,
) -> bool | None:
    """Log ``payload`` as one JSON line; POST it to ``webhook_url`` if given. Never raises."""
    log.log(level, json.dumps(payload, default=str, separators=(",", ":")), extra={"loopline_alert": payload})
    if not webhook_url:
        return None
    try:
        status = post_json(webhook_url, payload, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - an alert must never fail the task it reports on
        log.warning("alert webhook %s failed: %s: %s", webhook_url, type(error).__name__, error)
        return False
    if not 200 <= status < 300:
        log.warning("alert webhook %s answered HTTP %s", webhook_url, status)
        return False
    return True


def alert(
    decision: GateDecision,
    *,
    webhook_url: str | None = None,
    policy: GatePolicy | None = None,
    logger: logging.Logger | None = None,
    timeout: float | None = None,
) -> bool | None:
    """Report a gate decision: one structured (JSON) log line always — INFO for pass, WARNING for
    retrain, ERROR for block — and a JSON POST to ``webhook_url`` (default: ``policy.alert.webhook_url``).

    Returns None without a webhook, else whether the webhook accepted the POST; a failing webhook is
    logged, never raised.
    """
    if policy is not None:
        webhook_url = webhook_url or policy.alert.webhook_url
        timeout = timeout or policy.alert.timeout_seconds
    payload = {"event": "gate_decision", **decision.to_dict()}
    return _notify(
        payload,
        level=_LOG_LEVEL[decision.outcome],
        webhook_url=webhook_url,
        log=logger or LOG,
        timeout=timeout or WEBHOOK_TIMEOUT_SECONDS,
    )


def _context_event(kind: str, context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields of an Airflow callback context worth alerting on, read defensively (no Airflow import)."""
    context = context or {}
    task_instance = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    event: dict[str, Any] = {"event": kind}
    for name, sources in {
        "dag_id": (task_instance, dag_run),
        "task_id": (task_instance,),
        "run_id": (task_instance, dag_run),
        "try_number": (task_instance,),
    }.items():
        value = context.get(name)
        for source in sources:
            if value is None and source is not None:
                value = getattr(source, name, None)
        if value is not None:
            event[name] = value
    for name in ("logical_date", "deadline"):
        if context.get(name) is not None:
            event[name] = str(context[name])
    exception = context.get("exception")
    if exception is not None:
        event["exception"] = f"{type(exception).__name__}: {exception}"
        decision = getattr(exception, "decision", None)
        if isinstance(decision, GateDecision):
            event["decision"] = decision.to_dict()
    return event


def failure_callback(
    webhook_url: str | None = None,
    *,
    logger: logging.Logger | None = None,
    timeout: float = WEBHOOK_TIMEOUT_SECONDS,
) -> Callable[[Mapping[str, Any]], None]:
    """An ``on_failure_callback`` for Airflow tasks: logs the failure (with the gate decision when the
    exception is a :class:`GateBlockedError`) and POSTs it to ``webhook_url`` if given."""

    def callback(context: Mapping[str, Any]) -> None:
        _notify(
            _context_event("task_failed", context),
            level=logging.ERROR,
            webhook_url=webhook_url,
            log=logger or LOG,
            timeout=timeout,
        )

    return callback


def deadline_missed(
    context: Mapping[str, Any] | None = None,
    webhook_url: str | None = None,
    **kwargs: Any,
) -> None:
    """An Airflow 3 deadline-alert callback (the successor of SLA callbacks):
    ``DeadlineAlert(..., callback=SyncCallback("loopline.gates.deadline_missed", kwargs={"webhook_url": ...}))``.
    Logs the missed deadline and POSTs it to ``webhook_url`` if given."""
    event = _context_event("deadline_missed", context)
    event.update({key: str(value) for key, value in kwargs.items()})
    _notify(event, level=logging.ERROR, webhook_url=webhook_url, log=LOG, timeout=WEBHOOK_TIMEOUT_SECONDS)
