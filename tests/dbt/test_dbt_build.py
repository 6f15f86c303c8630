"""`dbt build` on the generated fixture: tests pass, labels equal the truth, re-runs and backfills converge.

Slow tests (several dbt invocations, or PostgreSQL) are marked; CI runs them all.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from fixture_builder import Build, Fixture, write_catalog_csv, write_duckdb, write_postgres

from loopline.transform import MART_TABLES, DbtBuildError, load_item_catalog, mart_checksum, mart_checksums, run_dbt
from loopline.warehouse import Warehouse

DAY_1, DAY_2, DAY_3 = date(2026, 1, 5), date(2026, 1, 6), date(2026, 1, 7)
ATTRIBUTION_UNIT_TESTS = {
    "attribution_ignores_a_click_after_the_window",
    "attribution_ignores_a_click_before_its_impression",
    "attribution_counts_duplicate_clicks_once",
    "attribution_labels_only_the_clicked_item",
    "attribution_labels_a_click_after_midnight",
}
PARTITION_COLUMN = {
    "training_examples": "event_date",
    "user_features": "snapshot_date",
    "item_features": "snapshot_date",
}


def labels(uri: str, column: str = "is_clicked", where: str = "") -> dict[str, bool]:
    with Warehouse.from_uri(uri) as warehouse:
        clause = f" where {where}" if where else ""
        return dict(warehouse.query(f"select impression_id, {column} from training_examples{clause}"))


def checksums_through(uri: str, last_day: date) -> dict[str, str]:
    """Mart checksums restricted to the days up to ``last_day``."""
    return {
        table: mart_checksum(table, uri, where=f"{PARTITION_COLUMN[table]} <= DATE '{last_day}'")
        for table in MART_TABLES
    }


def last_request_impressions(fixture: Fixture, day: date) -> tuple[str, str]:
    """The 23:50 impressions at positions 0 and 1: clicked at 00:10 next day / at 23:58 but logged next day."""
    at_2350 = [e for e in fixture.events if e.event_type == "impression" and e.event_date == day]
    at_2350 = sorted(
        (e for e in at_2350 if e.event_at.hour == 23 and e.event_at.minute == 50), key=lambda e: e.position
    )
    return at_2350[0].event_id, at_2350[1].event_id


# --- one full build on DuckDB (module-scoped) ------------------------------------------------------


def test_build_passes_models_data_tests_and_unit_tests(duckdb_build: Build) -> None:
    result = duckdb_build.result
    assert result.success and not result.failed_nodes
    kinds = {node.resource_type for node in result.nodes}
    assert {"model", "test", "unit_test"} <= kinds
    models = {node.name: node.status for node in result.nodes if node.resource_type == "model"}
    assert models == {
        name: "success"
        for name in (
            "stg_events__events",
            "stg_catalog__items",
            "int_labelled_impressions",
            "int_sessionised_events",
            "training_examples",
            "user_features",
            "item_features",
        )
    }
    unit_tests = {node.name: node.status for node in result.nodes if node.resource_type == "unit_test"}
    assert set(unit_tests) >= ATTRIBUTION_UNIT_TESTS
    assert set(unit_tests.values()) == {"pass"}
    assert sum(1 for node in result.nodes if node.resource_type == "test") >= 40
    assert str(uuid.UUID(result.invocation_id)) == result.invocation_id
    assert result.target == "local" and result.run_date is None


def test_the_warehouse_file_is_released_after_the_build(duckdb_build: Build) -> None:
    """dbt-duckdb keeps its database open in-process; run_dbt closes it, so read-only opens work."""
    import duckdb

    path = duckdb_build.uri.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as connection:
        assert connection.execute("select count(*) from training_examples").fetchone()[0] > 0


def test_labels_equal_the_fixture_truth(duckdb_build: Build, fixture_events: Fixture) -> None:
    # The fixture plants every edge case the attribution must get right.
    for case in (
        "click_after_window",
        "click_before_impression",
        "double_click",
        "request_with_clicked_and_unclicked_items",
        "click_after_midnight",
        "click_logged_next_day",
        "duplicate_across_partitions",
    ):
        assert fixture_events.edge_cases[case] > 0, case
    clicked = labels(duckdb_build.uri)
    assert set(clicked) == set(fixture_events.clicked_truth)  # one row per impression, duplicates dropped
    assert sum(clicked.values()) / len(clicked) == pytest.approx(fixture_events.clicked_share(), abs=0)
    assert clicked == fixture_events.clicked_truth
    assert labels(duckdb_build.uri, "is_purchased") == fixture_events.purchased_truth


def test_features_are_point_in_time_snapshots(duckdb_build: Build, fixture_events: Fixture) -> None:
    with Warehouse.from_uri(duckdb_build.uri) as warehouse:
        bad_feature_at = warehouse.scalar(
            "select count(*) from user_features"
            " where feature_at <> cast(snapshot_date + 1 as timestamp) at time zone 'UTC'"
        )
        # impressions_1d counts exactly that user's impressions of the snapshot day.
        mismatched = warehouse.scalar(
            """
            select count(*) from user_features f
            left join (
                select user_id, event_date, count(*) as impressions from training_examples group by 1, 2
            ) t on t.user_id = f.user_id and t.event_date = f.snapshot_date
            where f.impressions_1d <> coalesce(t.impressions, 0)
            """
        )
        categories = dict(warehouse.query("select item_id, max(category) from item_features group by 1"))
        snapshot_days = {row[0] for row in warehouse.query("select distinct snapshot_date from item_features")}
    assert bad_feature_at == 0
    assert mismatched == 0
    catalog = {item_id: category for item_id, category, _ in fixture_events.catalog}
    assert {item: categories[item] for item in catalog if item in categories} == {
        item: category for item, category in catalog.items() if item in categories
    }
    missing = set(categories) - set(catalog)
    assert missing and {categories[item] for item in missing} == {"unknown"}
    # One snapshot per day with events: the three days, plus the day the last clicks spill into.
    assert snapshot_days == {DAY_1, DAY_2, DAY_3, DAY_3 + timedelta(days=1)}


def test_running_a_day_again_leaves_identical_marts(duckdb_build: Build) -> None:
    """A run for day 2 replaces days 1-2 with the same rows; a second one too (`run`: models only, faster)."""
    for command in ("build", "run"):
        rerun = run_dbt(command, run_date=DAY_2, warehouse_uri=duckdb_build.uri, target_dir=duckdb_build.target_dir)
        assert rerun.success and rerun.run_date == DAY_2.isoformat()
        assert rerun.vars == {"run_date": DAY_2.isoformat()}
        assert mart_checksums(duckdb_build.uri) == duckdb_build.checksums


def test_a_failing_data_test_raises_naming_the_test(tmp_path: Path, fixture_events: Fixture) -> None:
    path = tmp_path / "warehouse.duckdb"
    bad = replace(fixture_events.events[0], page="checkout")
    write_duckdb(path, [bad, *fixture_events.events[1:50]])
    with pytest.raises(DbtBuildError) as caught:
        run_dbt("build", warehouse_uri=f"duckdb://{path}", select=["source:events.raw_events"], target_dir=tmp_path)
    test_name = "source_accepted_values_events_raw_events_page__home__search__category__product"
    message = str(caught.value)
    assert test_name in message
    assert "Got 1 result" in message
    failed = caught.value.result.failed_nodes
    assert [node.name for node in failed] == [test_name]
    others = [node for node in caught.value.result.nodes if node not in failed]
    assert others and all(node.status in ("pass", "success") for node in others)
    assert failed[0].status == "fail" and failed[0].failures == 1


# --- several invocations -----------------------------------------------------------------------------


@pytest.mark.slow
def test_daily_runs_with_late_events_converge_to_the_full_build(
    tmp_path: Path, fixture_events: Fixture, duckdb_build: Build
) -> None:
    """Ingest partition by partition and run each day, as the DAG does; late clicks get attributed."""
    path = tmp_path / "warehouse.duckdb"
    uri = f"duckdb://{path}"
    target = tmp_path / "dbt-target"
    by_log_date: dict[date, list] = {}
    for event in fixture_events.events:
        by_log_date.setdefault(min(event.log_date, DAY_3 + timedelta(days=1)), []).append(event)

    # `run` (models only) for the first days keeps the test fast; the last day runs the full `build`.
    write_duckdb(path, by_log_date[DAY_1], catalog=fixture_events.catalog)
    run_dbt("run", run_date=DAY_1, warehouse_uri=uri, target_dir=target)
    after_midnight, logged_late = last_request_impressions(fixture_events, DAY_1)
    assert fixture_events.clicked_truth[after_midnight] and fixture_events.clicked_truth[logged_late]
    day_1 = labels(uri)
    assert day_1[after_midnight] is False  # its click (00:10 on day 2) is not ingested yet
    assert day_1[logged_late] is False  # its click (23:58) sits in day 2's first partition

    write_duckdb(path, by_log_date[DAY_2], create=False)
    run_dbt("run", run_date=DAY_2, warehouse_uri=uri, target_dir=target)
    day_1_relabelled = labels(uri, where=f"event_date = DATE '{DAY_1}'")
    assert day_1_relabelled[after_midnight] is True
    assert day_1_relabelled[logged_late] is True
    assert day_1_relabelled == {i: fixture_events.clicked_truth[i] for i in fixture_events.impressions_on(DAY_1)}

    write_duckdb(path, by_log_date[DAY_3] + by_log_date[DAY_3 + timedelta(days=1)], create=False)
    assert run_dbt("build", run_date=DAY_3, warehouse_uri=uri, target_dir=target).success
    backfilled = checksums_through(uri, DAY_3)
    assert backfilled == checksums_through(duckdb_build.uri, DAY_3)
    assert labels(uri) == fixture_events.clicked_truth

    run_dbt("run", run_date=DAY_3, warehouse_uri=uri, target_dir=target)
    assert checksums_through(uri, DAY_3) == backfilled


@pytest.mark.slow
def test_postgres_build_equals_the_duckdb_build(
    postgres_url: str, fixture_events: Fixture, duckdb_build: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack profile builds the same marts, row for row, even in a non-UTC session time zone."""
    monkeypatch.setenv("PGTZ", "America/New_York")
    write_postgres(postgres_url, fixture_events.events)
    load_item_catalog(write_catalog_csv(tmp_path / "catalog.csv", fixture_events.catalog), postgres_url)
    result = run_dbt("build", warehouse_uri=postgres_url, target_dir=tmp_path / "dbt-target")
    assert result.success and result.target == "stack"
    unit_tests = {node.name: node.status for node in result.nodes if node.resource_type == "unit_test"}
    assert set(unit_tests) >= ATTRIBUTION_UNIT_TESTS and set(unit_tests.values()) == {"pass"}
    assert labels(postgres_url) == fixture_events.clicked_truth
    assert mart_checksums(postgres_url) == duckdb_build.checksums

    rerun = run_dbt("run", run_date=DAY_2, warehouse_uri=postgres_url, target_dir=tmp_path / "dbt-target")
    assert rerun.success
    assert mart_checksums(postgres_url) == duckdb_build.checksums
