"""The feature repository over marts built by the real dbt project (DuckDB), checked against an
independent point-in-time join (DuckDB's ASOF JOIN) and against the marts' newest snapshots online."""

from __future__ import annotations

import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from feature_marts import SERVICE_ITEM, SERVICE_USER, same

from loopline import config, features
from loopline.transform import run_dbt
from loopline.warehouse import Warehouse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dbt"))
from fixture_builder import build_fixture, write_duckdb  # noqa: E402

pytestmark = pytest.mark.slow
DAYS = (date(2026, 1, 5), date(2026, 1, 6), date(2026, 1, 7))


def asof_oracle(uri: str) -> dict[str, dict[str, object]]:
    """impression_id -> expected features: newest snapshot with feature_at <= event_at, within 2 days."""
    user_columns = [name.removeprefix("user_") for name in SERVICE_USER]
    item_columns = [name.removeprefix("item_") for name in SERVICE_ITEM]
    select = ", ".join(
        [f"CASE WHEN t.event_at - u.feature_at <= INTERVAL 2 DAY THEN u.{c} END AS user_{c}" for c in user_columns]
        + [f"CASE WHEN t.event_at - i.feature_at <= INTERVAL 2 DAY THEN i.{c} END AS item_{c}" for c in item_columns]
    )
    sql = f"""
        SELECT t.impression_id, {select}
        FROM training_examples t
        ASOF LEFT JOIN user_features u ON t.user_id = u.user_id AND t.event_at >= u.feature_at
        ASOF LEFT JOIN item_features i ON t.item_id = i.item_id AND t.event_at >= i.feature_at
    """
    names = ["impression_id", *SERVICE_USER, *SERVICE_ITEM]
    with Warehouse.from_uri(uri) as warehouse:
        return {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in warehouse.query(sql)}


def test_features_over_the_dbt_marts(tmp_path: Path) -> None:
    fixture = build_fixture(days=DAYS)
    uri = config.settings().warehouse_uri
    config.settings().home.mkdir(parents=True, exist_ok=True)
    write_duckdb(Path(uri.removeprefix("duckdb://")), fixture.events, catalog=fixture.catalog)
    run_dbt("build", warehouse_uri=uri, target_dir=tmp_path / "dbt-target")

    store = features.feature_store()
    features.apply(store)
    for day in DAYS:  # what the ETL DAG does after each day's dbt build
        record = features.materialize_interval(day, day + timedelta(days=1), store=store)
        assert record["views"]["item_features"]["rows"] > 0
    frame = features.training_set(DAYS[0], DAYS[-1] + timedelta(days=1), store=store)

    with Warehouse.from_uri(uri) as warehouse:
        assert len(frame) == warehouse.row_count("training_examples") == len(fixture.clicked_truth)
    assert frame["is_clicked"].tolist() == [fixture.clicked_truth[i] for i in frame["impression_id"]]
    expected = asof_oracle(uri)
    for row in frame.to_dict("records"):
        for name in (*SERVICE_USER, *SERVICE_ITEM):
            assert same(row[name], expected[row["impression_id"]][name]), (row["impression_id"], name)
    # Day one has no earlier snapshot: its impressions are kept, with NaN features.
    first_day = frame[frame["event_date"] == DAYS[0]]
    assert len(first_day) > 0 and first_day["user_ctr_7d"].isna().all()
    assert frame[frame["event_date"] == DAYS[2]]["user_ctr_7d"].notna().mean() > 0.5  # but new users

    # Online after the three runs: the newest snapshot (snapshot_date = last day) of each entity.
    with Warehouse.from_uri(uri) as warehouse:
        users = warehouse.query(
            "SELECT user_id, ctr_7d, impressions_28d, top_category_share_28d FROM user_features "
            "WHERE snapshot_date = ? ORDER BY user_id LIMIT 5",
            [DAYS[-1]],
        )
        items = warehouse.query(
            "SELECT item_id, ctr_7d, category, category_ctr_28d FROM item_features "
            "WHERE snapshot_date = ? ORDER BY item_id",
            [DAYS[-1]],
        )
    item_ids = [item[0] for item in items]
    for user_id, ctr_7d, impressions, share in users:
        result = features.online(user_id, item_ids, store=store)
        assert not result.missing_users and not result.missing_items
        assert (result.columns["user_ctr_7d"][0], result.columns["user_impressions_28d"][0]) == (ctr_7d, impressions)
        assert result.columns["user_top_category_share_28d"][0] == share
        assert [
            (c, k, g)
            for c, k, g in zip(
                result.columns["item_ctr_7d"],
                result.columns["item_category"],
                result.columns["item_category_ctr_28d"],
                strict=True,
            )
        ] == [item[1:] for item in items]
