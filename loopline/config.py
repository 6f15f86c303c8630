"""Effective settings of a Loopline process: one profile, every location a URI.

Two profiles exist. ``local`` (the default) keeps everything in files under ``LOOPLINE_HOME``
(``./var``): logs, a DuckDB warehouse, MLflow on SQLite, a Feast SQLite online store. ``stack``
points the same stages at servers: PostgreSQL, Redis and S3. Any single location can be overridden
with a ``LOOPLINE_<SETTING>`` environment variable; a bad value fails at start-up with a message
that names the variable and what was expected.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LOOPLINE_"

# Accepted URI schemes per location setting; the first scheme is the local profile's.
URI_SCHEMES: dict[str, tuple[str, ...]] = {
    "log_store_uri": ("file", "s3"),
    "artifact_uri": ("file", "s3"),
    "warehouse_uri": ("duckdb", "postgresql"),
    "mlflow_tracking_uri": ("sqlite", "postgresql", "http", "https"),
    "rollout_state_uri": ("file", "postgresql", "redis"),
    "redis_url": ("redis",),
    "postgres_url": ("postgresql",),
}


class ConfigError(ValueError):
    """A setting has a value Loopline cannot use; the message names the environment variable."""


class Settings(BaseSettings):
    """All locations and knobs of one Loopline process (see ``loopline config show``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    profile: Literal["local", "stack"] = "local"
    home: Path = Field(default=Path("var"), description="Root for local files (logs, stores, reports).")

    # Servers of the stack profile. Credentials come only from the environment.
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = Field(default=None, description="Empty means AWS itself.")
    s3_bucket: str = "loopline"
    aws_region: str = "us-east-1"

    # Locations; left empty, they are derived from the profile in ``_derive_locations``.
    log_store_uri: str = ""
    artifact_uri: str = ""
    warehouse_uri: str = ""
    mlflow_tracking_uri: str = ""
    rollout_state_uri: str = ""

    # Knobs of the stages.
    quarantine_threshold: float = Field(default=0.01, ge=0.0, le=1.0)
    pseudonymization_key: SecretStr | None = None

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// endpoint URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _derive_locations(self) -> Settings:
        home = self.home
        if self.profile == "local":
            derived = {
                "log_store_uri": (home / "logs").as_uri(),
                "artifact_uri": (home / "artifacts").as_uri(),
                "warehouse_uri": f"duckdb://{home / 'warehouse.duckdb'}",
                "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
                "rollout_state_uri": (home / "rollout.json").as_uri(),
            }
        else:
            bucket = self.s3_bucket
            derived = {
                "log_store_uri": f"s3://{bucket}/logs",
                "artifact_uri": f"s3://{bucket}/artifacts",
                "warehouse_uri": self.postgres_url,
                "mlflow_tracking_uri": self.postgres_url,
                "rollout_state_uri": self.redis_url,
            }
        for name, value in derived.items():
            if not getattr(self, name):
                setattr(self, name, value)
        for name, schemes in URI_SCHEMES.items():
            value = getattr(self, name)
            if urlsplit(value).scheme not in schemes:
                expected = " or ".join(f"{s}://" for s in schemes)
                raise ValueError(f"{name}: expected a {expected} URI, got {mask_uri(value)!r}")
        return self

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def masked(self) -> dict[str, str]:
        """The effective settings as strings, with passwords and keys hidden."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********" if value.get_secret_value() else ""
            elif value is None:
                text = ""
            else:
                text = mask_uri(str(value))
            shown[f"{ENV_PREFIX}{name.upper()}"] = text
        return shown


def mask_uri(uri: str) -> str:
    """Hide the password of ``scheme://user:password@host/...``; other text is returned as is."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = f"{parts.username}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        if not field and ":" in message:  # model-level errors name their field first
            field, message = (part.strip() for part in message.split(":", 1))
        variable = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        given = item.get("input")
        already_said = "got " in message or isinstance(given, dict) or not field
        shown = "" if already_said else f" (got {mask_uri(str(given))!r})"
        lines.append(f"{variable}: {message}{shown}")
    return "invalid Loopline settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (plus explicit overrides); raise ConfigError if bad."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


@functools.cache
def settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for a block (a dbt invocation, a Bento build), then restore the old ones."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
