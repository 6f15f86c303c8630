"""The local profile end to end: apply, exports, point-in-time training sets, materialization, online reads.

Hand-made marts (conftest) in the test's DuckDB warehouse; Feast's file registry, SQLite online store
and Parquet exports under the test's LOOPLINE_HOME.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from feature_marts import (
    DAY_1,
    DAYS,
    ITEMS,
    SERVICE_ITEM,
    SERVICE_USER,
    USERS,
    Env,
    at,
    build_env,
    check_training_set_against_the_oracle,
    feature_at,
    latest,
    materialize_ctr_changes,
    replace_user_snapshot,
    same,
    standard_marts,
    write_marts,
)

from loopline import features
from loopline.features import FeatureStoreError


def online_dump(env: Env, project: str | None = None) -> dict[str, list[tuple]]:
    """Every row of the project's SQLite online tables (entity key, feature, value, event time)."""
    path = env.store.config.online_store.path
    project = project or env.store.project
    with sqlite3.connect(path) as connection:
        return {
            view: connection.execute(
                f'SELECT entity_key, feature_name, value, event_ts FROM "{project}_{view}" ORDER BY 1, 2'
            ).fetchall()
            for view in ("user_features", "item_features")
        }


# --- apply and plan ----------------------------------------------------------------------------------


def test_plan_apply_plan_is_clean(isolated_home: Path) -> None:
    store = features.feature_store()
    first = features.plan(store)
    assert first.has_changes
    assert ("FEATURE_SERVICE", "ctr_ranker_v1", "CREATE") in first.changes
    assert ("sqlite table", "loopline_user_features", "CREATE") in first.infra_changes
    applied = features.apply(store)
    assert applied.changes == first.changes
    again = features.plan(features.feature_store())
    assert not again.has_changes and again.unchanged == len(first.changes)
    assert not features.apply(store).has_changes  # idempotent
    assert [s.name for s in store.list_feature_services()] == ["ctr_ranker_v1"]


# --- exports ---------------------------------------------------------------------------------------


def test_export_overwrites_exactly_one_day(local_env: Env) -> None:
    day = DAYS[1]
    written = features.export_feature_snapshots(day, store=local_env.store, warehouse_uri=local_env.warehouse_uri)
    assert written == {"user_features": len(USERS), "item_features": len(ITEMS)}
    path = Path(local_env.store.repo_path) / "offline" / "user_features" / f"{day}.parquet"
    table = pq.read_table(path)
    assert str(table.schema.field("feature_at").type) == "timestamp[us, tz=UTC]"
    assert set(table.column("snapshot_date").to_pylist()) == {day}
    first = table.to_pylist()
    features.export_feature_snapshots(day, store=local_env.store, warehouse_uri=local_env.warehouse_uri)
    assert pq.read_table(path).to_pylist() == first  # re-running the day changes nothing
    replace_user_snapshot(local_env.warehouse_uri, USERS[0], day, ctr_7d=0.123)
    features.export_feature_snapshots(day, store=local_env.store, warehouse_uri=local_env.warehouse_uri)
    rows = {row["user_id"]: row for row in pq.read_table(path).to_pylist()}
    assert rows[USERS[0]]["ctr_7d"] == 0.123 and len(rows) == len(USERS)
    empty = features.export_feature_snapshots(
        date(2026, 1, 1), store=local_env.store, warehouse_uri=local_env.warehouse_uri
    )
    assert empty == {"user_features": 0, "item_features": 0}
    with pytest.raises(FeatureStoreError, match="datetime.date"):
        features.export_feature_snapshots(at(day), store=local_env.store)


# --- training sets: point in time ------------------------------------------------------------------


def test_training_set_never_uses_a_value_recorded_after_the_impression(isolated_home: Path) -> None:
    marts = standard_marts()
    marts.users = [row for row in marts.users if row["user_id"] != "leaky"]
    marts.add_user("leaky", DAYS[0], ctr_7d=0.1)  # stamped 03-02 00:00
    marts.add_user("leaky", DAYS[1], ctr_7d=0.9)  # stamped 03-03 00:00: after the 03-02 18:00 impression
    before_any = marts.add_impression("leaky", ITEMS[0], at(DAYS[0], 10))
    between = marts.add_impression("leaky", ITEMS[0], at(DAYS[1], 18))
    on_the_stamp = marts.add_impression("leaky", ITEMS[0], at(DAYS[2]))
    env = build_env(marts)
    features.materialize_interval(DAY_1, DAYS[-1] + timedelta(days=1), store=env.store)
    frame = features.training_set(DAY_1, DAYS[-1] + timedelta(days=1), store=env.store).set_index("impression_id")
    assert math.isnan(frame.loc[before_any["impression_id"], "user_ctr_7d"])  # no snapshot before it: NaN, kept
    assert frame.loc[between["impression_id"], "user_ctr_7d"] == 0.1  # not the later 0.9
    assert frame.loc[on_the_stamp["impression_id"], "user_ctr_7d"] == 0.9  # stamped exactly then: visible
    # A correction of the later day, exported afterwards, still cannot reach the earlier impression.
    replace_user_snapshot(env.warehouse_uri, "leaky", DAYS[1], ctr_7d=0.5)
    features.export_feature_snapshots(DAYS[1], store=env.store, warehouse_uri=env.warehouse_uri)
    again = features.training_set(DAY_1, DAYS[-1] + timedelta(days=1), store=env.store).set_index("impression_id")
    assert again.loc[between["impression_id"], "user_ctr_7d"] == 0.1
    assert again.loc[on_the_stamp["impression_id"], "user_ctr_7d"] == 0.5


def test_training_set_equals_a_point_in_time_oracle_and_keeps_every_impression(isolated_home: Path) -> None:
    check_training_set_against_the_oracle()


def test_training_set_of_an_empty_interval_and_bad_bounds(local_env: Env) -> None:
    frame = features.training_set(date(2025, 1, 1), date(2025, 1, 2), store=local_env.store)
    columns = features.feature_columns(local_env.store)
    assert frame.empty and frame.columns[-len(columns) :].tolist() == columns
    with pytest.raises(FeatureStoreError, match="timezone-aware"):
        features.training_set(datetime(2026, 3, 1), datetime(2026, 3, 2), store=local_env.store)
    with pytest.raises(FeatureStoreError, match="start < end"):
        features.training_set(DAYS[1], DAYS[0], store=local_env.store)


# --- materialization -------------------------------------------------------------------------------


def test_a_daily_run_loads_its_days_snapshot_and_nothing_later(local_env: Env) -> None:
    record = features.materialize_interval(DAYS[1], DAYS[2], store=local_env.store)
    assert record["window_start"] == (at(DAYS[1]) - features.DEFAULT_OVERLAP).isoformat()
    assert sorted(record["exported"]) == [str(DAYS[0]), str(DAYS[1])]  # what dbt rebuilt for the run
    assert record["views"]["user_features"] == {"rows": 2 * len(USERS), "entities": len(USERS)}
    result = features.online(USERS[0], list(ITEMS[:3]), store=local_env.store)
    expected = [row for row in local_env.marts.users if row["user_id"] == USERS[0] and row["snapshot_date"] == DAYS[1]][
        0
    ]
    assert expected["feature_at"] == feature_at(DAYS[1]) == at(DAYS[2])  # stamped at the interval end
    later = [row for row in local_env.marts.users if row["user_id"] == USERS[0] and row["snapshot_date"] == DAYS[2]][0]
    assert expected["ctr_28d"] is not None and later["ctr_28d"] != expected["ctr_28d"]  # the check can tell them apart
    assert same(result.columns["user_ctr_28d"][0], expected["ctr_28d"])
    assert not result.missing_users and not result.missing_items


def test_materializing_an_interval_twice_changes_nothing(local_env: Env) -> None:
    features.materialize_interval(DAYS[1], DAYS[2], store=local_env.store)
    first = online_dump(local_env)
    assert len(first["user_features"]) > 0
    features.materialize_interval(DAYS[1], DAYS[2], store=local_env.store)
    assert online_dump(local_env) == first


def test_a_backfill_equals_three_daily_runs(local_env: Env) -> None:
    for day in DAYS:
        features.materialize_interval(day, day + timedelta(days=1), store=local_env.store)
    daily = online_dump(local_env)
    backfill_store = features.feature_store(project="backfill")
    features.apply(backfill_store)
    features.materialize_interval(DAYS[0], DAYS[-1] + timedelta(days=1), store=backfill_store)
    assert online_dump(local_env, "backfill") == daily
    assert len(daily["item_features"]) == len(ITEMS) * len(features._repo("views").ITEM_COLUMNS)


def test_an_out_of_order_rerun_is_reported_and_undone_by_the_newest_run(local_env: Env) -> None:
    newest = features.materialize_interval(DAYS[2], DAYS[2] + timedelta(days=1), store=local_env.store)
    assert newest["newer_interval_end"] is None
    state = online_dump(local_env)
    older = features.materialize_interval(DAYS[1], DAYS[2], store=local_env.store)
    assert older["newer_interval_end"] == at(DAYS[2] + timedelta(days=1)).isoformat()
    assert online_dump(local_env) != state  # SQLite keeps the last write: the older snapshots are back
    features.materialize_interval(DAYS[2], DAYS[2] + timedelta(days=1), store=local_env.store)
    assert online_dump(local_env) == state


def test_materialize_refuses_naive_or_empty_intervals(local_env: Env) -> None:
    with pytest.raises(FeatureStoreError, match="timezone-aware"):
        features.materialize_interval(datetime(2026, 3, 1), at(DAYS[1]), store=local_env.store)
    with pytest.raises(FeatureStoreError, match="start < end"):
        features.materialize_interval(DAYS[1], DAYS[1], store=local_env.store)
    with pytest.raises(FeatureStoreError, match="overlap"):
        features.materialize_interval(DAYS[0], DAYS[1], overlap=timedelta(hours=-1), store=local_env.store)


# --- online ----------------------------------------------------------------------------------------


def test_online_values_equal_the_latest_offline_values(local_env: Env) -> None:
    """Train/serve consistency: after materializing, online == the newest snapshot == the training row."""
    end = DAYS[-1] + timedelta(days=1)
    features.materialize_interval(DAY_1, end, store=local_env.store)
    marts = local_env.marts
    for user_id in USERS[::2]:
        marts.add_impression(user_id, ITEMS[0], at(end, 6))
    write_marts(local_env.warehouse_uri, marts)
    training = features.training_set(end, end + timedelta(days=1), store=local_env.store).set_index("user_id")
    for user_id in USERS[::2]:
        result = features.online(
            user_id, list(ITEMS), store=local_env.store, request_features={"request_at": at(end, 6)}
        )
        user = latest(marts.users, "user_id", user_id)
        for index, item_id in enumerate(ITEMS):
            item = latest(marts.items, "item_id", item_id)
            for name in SERVICE_USER:
                assert same(result.columns[name][index], user[name.removeprefix("user_")]), name
            for name in SERVICE_ITEM:
                assert same(result.columns[name][index], item[name.removeprefix("item_")]), name
        # The training row of an impression right after the last stamp holds the same values, request features too.
        row = training.loc[user_id]
        for name in features.feature_columns(local_env.store):
            assert same(result.columns[name][0], row[name]), (user_id, name)


def test_online_reports_missing_entities_and_reads_once(local_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    features.materialize_interval(DAY_1, DAYS[-1] + timedelta(days=1), store=local_env.store)
    calls = []
    online_store = local_env.store._get_provider().online_store
    original = online_store.online_read_values  # the SQLite store's read that online() uses

    def counted_read(config, table, join_key, entity_ids, requested_features):
        calls.append((table.name, len(entity_ids)))
        return original(config, table, join_key, entity_ids, requested_features)

    monkeypatch.setattr(online_store, "online_read_values", counted_read)
    result = features.online(
        USERS[0],
        [ITEMS[0], "unknown-item", ITEMS[1], "unknown-item"],
        store=local_env.store,
        request_features={"request_at": at(DAYS[0], 5)},
    )
    assert sorted(calls) == [("item_features", 3), ("user_features", 1)]  # one read per view, each entity once
    assert result.missing_users == [] and result.missing_items == ["unknown-item"]
    assert result.columns["item_ctr_28d"][1] is None and result.columns["user_item_category_match"][1] is None
    assert result.columns["hour_of_day"] == [5] * 4
    assert len(result.rows) == 4 and result.rows[2]["item_id"] == ITEMS[1]
    assert list(result.frame.columns[:2]) == ["user_id", "item_id"]
    ghost = features.online(
        "ghost", [ITEMS[0]], store=local_env.store, request_features={"position": [2], "request_at": [at(DAYS[0], 7)]}
    )
    assert ghost.missing_users == ["ghost"] and ghost.columns["user_ctr_28d"] == [None]
    assert ghost.columns["hour_of_day"] == [7]
    with pytest.raises(FeatureStoreError, match="unknown fields"):
        features.online(USERS[0], [ITEMS[0]], store=local_env.store, request_features={"slot": 1})
    with pytest.raises(FeatureStoreError, match="one value per item"):
        features.online(USERS[0], [ITEMS[0]], store=local_env.store, request_features={"position": [1, 2]})
    with pytest.raises(FeatureStoreError, match="item_ids"):
        features.online(USERS[0], [], store=local_env.store)


def test_online_reads_stores_without_a_row_memory_through_feasts_online_read(
    local_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another online store class (no ``online_read_values``) is read through Feast's ``online_read``
    with entity key protos: the same answer, missing entities included."""
    features.materialize_interval(DAY_1, DAYS[-1] + timedelta(days=1), store=local_env.store)
    items = [ITEMS[1], "unknown-item", ITEMS[0], ITEMS[1]]
    remembered = features.online(USERS[0], items, store=local_env.store)
    monkeypatch.setattr(local_env.store._get_provider().online_store, "online_read_values", None)
    through_feast = features.online(USERS[0], items, store=local_env.store)
    assert through_feast.columns == remembered.columns
    assert through_feast.missing_items == remembered.missing_items == ["unknown-item"]
    assert features.online("ghost", items, store=local_env.store).missing_users == ["ghost"]


def test_online_answers_what_the_table_holds_after_every_write(local_env: Env) -> None:
    """The SQLite store keeps rows it has read while ``PRAGMA data_version`` says nothing changed: a
    materialization through another connection (another process's store), or through the same
    store object, is seen by the very next lookup."""
    store = local_env.store
    end = DAYS[-1] + timedelta(days=1)
    features.materialize_interval(DAY_1, end, store=store)
    first = features.online(USERS[0], list(ITEMS), store=store)
    assert features.online(USERS[0], list(ITEMS), store=store).columns == first.columns  # from memory

    other = features.feature_store()  # its own online-store object, so its own SQLite connection
    assert other._get_provider().online_store is not store._get_provider().online_store
    materialize_ctr_changes(local_env, other, end, users={USERS[0]: 0.987}, items={ITEMS[0]: 0.654})
    after = features.online(USERS[0], list(ITEMS), store=store)
    assert after.columns["user_ctr_28d"] == [0.987] * len(ITEMS)
    assert after.columns["item_ctr_28d"][0] == 0.654
    assert after.columns["item_ctr_28d"][1:] == first.columns["item_ctr_28d"][1:]

    later = end + timedelta(days=1)
    materialize_ctr_changes(local_env, store, later, items={ITEMS[1]: 0.321})  # this connection
    assert features.online(USERS[0], list(ITEMS), store=store).columns["item_ctr_28d"][:2] == [0.654, 0.321]


def test_the_on_demand_function_gives_what_feasts_transform_gives(local_env: Env) -> None:
    """``online`` calls the registered Python function directly; Feast's ``transform_dict`` agrees."""
    odfv = local_env.store.get_on_demand_feature_view("request_features")
    nan = float("nan")
    inputs = {
        "position": [0, 3, None, nan, -1, 3],
        "request_at": [at(DAYS[0], 5), None, at(DAYS[0], 23), at(DAYS[0], 5), at(DAYS[1], 0), at(DAYS[0], 5)],
        "user_top_category_28d": ["shoes", "shoes", None, "bags", nan, "bags"],
        "user_top_category_share_28d": [0.5, 0.25, 0.5, None, 0.75, 0.4],
        "item_category": ["shoes", "bags", "shoes", "bags", "shoes", None],
    }
    ours = features._transform(odfv, inputs)
    theirs = odfv.transform_dict(inputs)
    assert set(ours) == {feature.name for feature in odfv.features}
    for name in ours:
        assert ours[name] == theirs[name], name
    assert ours["position_discount"] == [1.0, 1 / math.log2(5), None, None, None, 1 / math.log2(5)]
    assert ours["hour_of_day"] == [5, None, 23, 5, 0, 5]
    assert ours["user_item_category_match"] == [1, 0, 0, None, 0, None]
    assert ours["user_item_category_affinity"] == [0.5, 0.0, 0.0, None, 0.0, None]


def test_the_lean_sqlite_read_returns_what_feasts_read_returns(local_env: Env) -> None:
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from loopline.features.sqlite_store import LooplineSqliteOnlineStore

    features.materialize_interval(DAY_1, DAYS[-1] + timedelta(days=1), store=local_env.store)
    lean = local_env.store._get_provider().online_store
    assert isinstance(lean, LooplineSqliteOnlineStore)
    config = local_env.store.config
    for view, key, ids in (("user_features", "user_id", USERS), ("item_features", "item_id", ITEMS)):
        table = local_env.store.get_feature_view(view)
        keys = [EntityKey(join_keys=[key], entity_values=[Value(string_val=i)]) for i in (*ids, "unknown", ids[0])]
        expected = SqliteOnlineStore().online_read(config, table, keys)
        assert lean.online_read(config, table, keys) == expected
        assert expected[-2] == (None, None) and expected[0][0] == feature_at(DAYS[-1])
        subset = [table.features[0].name]
        assert [row[1] and list(row[1]) for row in lean.online_read(config, table, keys, subset)][0] == subset


def test_command_line(local_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser()
    features.register_cli(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(argv)
        return args.handler(args)

    assert run("features", "plan") == 0 and "No changes" in capsys.readouterr().out
    assert run("features", "materialize", str(DAYS[1]), str(DAYS[2])) == 0
    assert json.loads(capsys.readouterr().out)["views"]["user_features"]["entities"] == len(USERS)
    assert run("features", "online", USERS[0], ITEMS[0], "nope") == 0
    assert "items ['nope']" in capsys.readouterr().out
    assert run("features", "materialize", str(DAYS[1]), str(DAYS[1])) == 1
    assert "start < end" in capsys.readouterr().err
