"""Settings: profile-derived locations, environment overrides, masked output, clear errors."""

from __future__ import annotations

import json
import os

import pytest

from loopline import cli
from loopline.config import ConfigError, environment, load_settings, mask_uri


def test_local_profile_keeps_everything_under_home(isolated_home):
    settings = load_settings()
    assert settings.profile == "local"
    assert settings.log_store_uri == (isolated_home / "logs").as_uri()
    assert settings.warehouse_uri == f"duckdb://{isolated_home / 'warehouse.duckdb'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{isolated_home / 'mlflow.db'}"
    assert settings.reports_dir == isolated_home / "reports"


def test_stack_profile_points_at_servers(monkeypatch):
    monkeypatch.setenv("LOOPLINE_PROFILE", "stack")
    monkeypatch.setenv("LOOPLINE_POSTGRES_URL", "postgresql://loop:pw@db:5432/loopline")
    monkeypatch.setenv("LOOPLINE_S3_BUCKET", "lake")
    settings = load_settings()
    assert settings.log_store_uri == "s3://lake/logs"
    assert settings.warehouse_uri == "postgresql://loop:pw@db:5432/loopline"
    assert settings.rollout_state_uri.startswith("redis://")


def test_an_explicit_location_wins_over_the_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOPLINE_LOG_STORE_URI", "s3://elsewhere/raw")
    assert load_settings().log_store_uri == "s3://elsewhere/raw"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LOOPLINE_PROFILE", "prod", "LOOPLINE_PROFILE: Input should be 'local' or 'stack'"),
        ("LOOPLINE_WAREHOUSE_URI", "mysql://x/y", "LOOPLINE_WAREHOUSE_URI: expected a duckdb:// or postgresql:// URI"),
        ("LOOPLINE_LOG_STORE_URI", "/plain/path", "LOOPLINE_LOG_STORE_URI: expected a file:// or s3:// URI"),
        ("LOOPLINE_QUARANTINE_THRESHOLD", "1.5", "LOOPLINE_QUARANTINE_THRESHOLD: Input should be less than or equal"),
        ("LOOPLINE_QUARANTINE_THRESHOLD", "lots", "LOOPLINE_QUARANTINE_THRESHOLD: Input should be a valid number"),
        ("LOOPLINE_S3_ENDPOINT_URL", "ftp://x", "LOOPLINE_S3_ENDPOINT_URL: expected an http:// or https://"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert expected in str(raised.value)


def test_masking_hides_passwords_only():
    assert mask_uri("postgresql://loop:secret@db:5432/x") == "postgresql://loop:****@db:5432/x"
    assert mask_uri("postgresql://loop@db/x") == "postgresql://loop@db/x"
    assert mask_uri("file:///tmp/a") == "file:///tmp/a"


def test_config_show_masks_secrets(monkeypatch, capsys):
    monkeypatch.setenv("LOOPLINE_POSTGRES_URL", "postgresql://loop:hunter2@db:5432/x")
    monkeypatch.setenv("LOOPLINE_PSEUDONYMIZATION_KEY", "also-secret")
    assert cli.main(["config", "show", "--json"]) == 0
    output = capsys.readouterr().out
    shown = json.loads(output)
    assert "hunter2" not in output and "also-secret" not in output
    assert shown["LOOPLINE_POSTGRES_URL"] == "postgresql://loop:****@db:5432/x"
    assert shown["LOOPLINE_PSEUDONYMIZATION_KEY"] == "********"


def test_cli_exits_2_with_the_message_on_a_bad_setting(monkeypatch, capsys):
    monkeypatch.setenv("LOOPLINE_PROFILE", "prod")
    assert cli.main(["config", "show"]) == 2
    assert "LOOPLINE_PROFILE" in capsys.readouterr().err


def test_environment_block_sets_variables_then_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_DBT_TARGET", "before")
    monkeypatch.delenv("LOOPLINE_DBT_PG_HOST", raising=False)
    with environment({"LOOPLINE_DBT_TARGET": "stack", "LOOPLINE_DBT_PG_HOST": "h"}):
        assert os.environ["LOOPLINE_DBT_TARGET"] == "stack" and os.environ["LOOPLINE_DBT_PG_HOST"] == "h"
    assert os.environ["LOOPLINE_DBT_TARGET"] == "before"
    assert "LOOPLINE_DBT_PG_HOST" not in os.environ
