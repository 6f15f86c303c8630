"""Shared dbt fixtures: the generated events, and one full DuckDB build reused by several tests.

Each dbt invocation costs a few seconds, so the full build is module-scoped; tests that change the
warehouse build their own copy.
"""

from __future__ import annotations

import os

import pytest
from fixture_builder import Build, Fixture, build_fixture, write_catalog_csv, write_duckdb

from loopline.transform import load_item_catalog, mart_checksums, run_dbt

os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def fixture_events() -> Fixture:
    """Three days of generated events with their true labels."""
    return build_fixture()


@pytest.fixture(scope="module")
def duckdb_build(tmp_path_factory: pytest.TempPathFactory, fixture_events: Fixture) -> Build:
    """A DuckDB warehouse holding the fixture and its catalog, after one full `dbt build`."""
    folder = tmp_path_factory.mktemp("duckdb_build")
    path = folder / "warehouse.duckdb"
    write_duckdb(path, fixture_events.events)
    uri = f"duckdb://{path}"
    load_item_catalog(write_catalog_csv(folder / "catalog.csv", fixture_events.catalog), uri)
    result = run_dbt("build", warehouse_uri=uri, target_dir=folder / "dbt-target")
    return Build(uri, result, mart_checksums(uri), folder / "dbt-target")
