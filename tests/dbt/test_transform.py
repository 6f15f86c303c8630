"""loopline.transform without a dbt invocation: URI mapping, profiles, results, the item catalog."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from loopline import transform
from loopline.transform import (
    DBT_PROJECT_DIR,
    DbtResult,
    NodeResult,
    load_item_catalog,
    resolve_warehouse,
    run_dbt,
)
from loopline.warehouse import Warehouse


def test_duckdb_uri_maps_to_the_local_target(tmp_path: Path) -> None:
    resolved = resolve_warehouse(f"duckdb://{tmp_path}/warehouse.duckdb")
    assert resolved.target == "local"
    assert resolved.env == {"LOOPLINE_DBT_TARGET": "local", "LOOPLINE_DBT_DUCKDB_PATH": f"{tmp_path}/warehouse.duckdb"}


def test_postgres_uri_maps_to_the_stack_target_with_a_secret_password() -> None:
    resolved = resolve_warehouse("postgresql://loop%40er:s3cr%2Ft@db.internal:6543/warehouse")
    assert resolved.target == "stack"
    assert resolved.env == {
        "LOOPLINE_DBT_TARGET": "stack",
        "LOOPLINE_DBT_PG_HOST": "db.internal",
        "LOOPLINE_DBT_PG_PORT": "6543",
        "LOOPLINE_DBT_PG_USER": "loop@er",
        "DBT_ENV_SECRET_LOOPLINE_PG_PASSWORD": "s3cr/t",
        "LOOPLINE_DBT_PG_DATABASE": "warehouse",
    }
    defaults = resolve_warehouse("postgresql://127.0.0.1/loop").env
    assert defaults["LOOPLINE_DBT_PG_PORT"] == "5432" and defaults["LOOPLINE_DBT_PG_USER"] == "postgres"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///x.db", "got scheme 'sqlite'"),
        ("duckdb:///:memory:", "an absolute file path"),
        ("duckdb://relative/file.duckdb", "an absolute file path"),
        ("postgresql://127.0.0.1:5432", "postgresql://user[:password]@host[:port]/database"),
    ],
)
def test_unusable_warehouse_uris_are_refused_with_the_reason(uri: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        resolve_warehouse(uri)


def test_password_never_appears_in_the_error() -> None:
    with pytest.raises(ValueError) as caught:
        resolve_warehouse("postgresql://user:hunter2@127.0.0.1:5432")
    assert "hunter2" not in str(caught.value)


def test_profiles_read_every_connection_setting_from_the_environment() -> None:
    profile = yaml.safe_load((DBT_PROJECT_DIR / "profiles.yml").read_text())["loopline"]
    assert "env_var(" in profile["target"]
    outputs = profile["outputs"]
    assert {name: output["type"] for name, output in outputs.items()} == {"local": "duckdb", "stack": "postgres"}
    settings = {
        "local": ("path", "schema", "threads"),
        "stack": ("host", "port", "user", "password", "dbname", "schema"),
    }
    for name, keys in settings.items():
        for key in keys:
            assert "env_var(" in str(outputs[name][key]), f"{name}.{key} is not read from the environment"
    assert "DBT_ENV_SECRET_" in outputs["stack"]["password"]


def test_dbt_project_sends_no_usage_statistics() -> None:
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    assert project["flags"]["send_anonymous_usage_stats"] is False
    assert project["vars"]["attribution_window_minutes"] == 30


def test_full_refresh_for_one_day_is_refused_before_dbt_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="omit run_date"):
        run_dbt(run_date=date(2026, 1, 5), full_refresh=True, warehouse_uri=f"duckdb://{tmp_path}/w.duckdb")
    for not_a_day in ("2026-01-05", datetime(2026, 1, 5, tzinfo=UTC)):
        with pytest.raises(TypeError, match="run_date"):
            run_dbt(run_date=not_a_day, warehouse_uri=f"duckdb://{tmp_path}/w.duckdb")  # type: ignore[arg-type]


def test_failure_message_names_each_failing_node_and_the_result_serialises() -> None:
    nodes = (
        NodeResult("stg_events__events", "model.loopline.stg_events__events", "model", "success", "OK", 0.1),
        NodeResult("unique_x_id", "test.loopline.unique_x_id", "test", "fail", "Got 2 results,\n  configured", 0.2, 2),
        NodeResult("attribution_rule", "unit_test.loopline.m.attribution_rule", "unit_test", "fail", "differs", 0.1),
        NodeResult("training_examples", "model.loopline.training_examples", "model", "skipped", None, 0.0),
    )
    result = DbtResult("build", False, "inv-1", "local", "2026-01-05", {"run_date": "2026-01-05"}, nodes)
    message = transform._failure_message(result)
    assert message.splitlines() == [
        "dbt build failed on target 'local' for run_date 2026-01-05: 2 of 4 nodes failed, 1 skipped",
        "  test unique_x_id [fail]: Got 2 results, configured",
        "  unit_test attribution_rule [fail]: differs",
    ]
    assert [node.name for node in result.failed_nodes] == ["unique_x_id", "attribution_rule"]
    assert result.node("training_examples").status == "skipped"
    with pytest.raises(KeyError, match="not in this result"):
        result.node("nope")
    record = json.loads(json.dumps(result.to_dict()))
    assert record["nodes"][1] == {
        "name": "unique_x_id",
        "unique_id": "test.loopline.unique_x_id",
        "resource_type": "test",
        "status": "fail",
        "message": "Got 2 results,\n  configured",
        "execution_time": 0.2,
        "failures": 2,
    }


def test_item_catalog_is_loaded_and_replaced(tmp_path: Path) -> None:
    uri = f"duckdb://{tmp_path}/warehouse.duckdb"
    first = tmp_path / "catalog.csv"
    first.write_text("item_id,category,price\na,Shoes,10.5\nb,,\nc,books,3\n")
    assert load_item_catalog(first, uri) == 3
    second = tmp_path / "catalog2.csv"
    second.write_text("price,item_id,category\n7,z,toys\n")
    assert load_item_catalog(second, uri) == 1
    with Warehouse.from_uri(uri) as warehouse:
        assert warehouse.query("select item_id, category, price from item_catalog") == [("z", "toys", 7.0)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("item_id,price\na,1\n", "missing category"),
        ("item_id,category,price\n,shoes,1\n", "line 2: item_id is empty"),
        ("item_id,category,price\na,shoes,cheap\n", "line 2: price 'cheap' is not a number"),
    ],
)
def test_a_bad_item_catalog_is_refused_naming_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected):
        load_item_catalog(path, f"duckdb://{tmp_path}/warehouse.duckdb")


def test_cli_registers_transform_build_and_load_catalog() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    transform.register_cli(parser.add_subparsers(dest="command"))
    build = parser.parse_args(["transform", "build", "--date", "2026-01-05", "--select", "training_examples+"])
    assert build.handler is transform._cli_build
    assert build.date == date(2026, 1, 5) and build.select == ["training_examples+"] and build.dbt_command == "build"
    catalog = parser.parse_args(["transform", "load-catalog", "items.csv"])
    assert catalog.handler is transform._cli_load_catalog and catalog.csv == Path("items.csv")
