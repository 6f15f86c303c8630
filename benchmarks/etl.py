"""Benchmark of the dbt build (raw_events -> marts) for one day of about 1M events on DuckDB.

The script generates the day's raw_events rows itself (deterministic, numpy with a fixed seed), then
measures in the same run:

1. ``run_dbt("build", run_date=day)`` on a fresh copy of the raw warehouse: parse + every model, data
   test and unit test (dbt's import is timed apart: it is paid once per process);
2. the baseline: the exact SQL dbt executed in (1) (``target/run/``: views, tables, data and unit
   test queries), run directly with the duckdb module, in dbt's order, on another fresh copy;
3. the same build again on the built warehouse (the incremental path: delete the days, insert them).

(1) and (2) alternate ``--repeats`` times; the machine may be shared, so best and median are shown.
It prints the wall times and the ratio dbt / direct (target: build <= 60 s, ratio <= 2x).

    .venv/bin/python benchmarks/etl.py                       # 1M events
    .venv/bin/python benchmarks/etl.py --events 200000       # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DBT_QUIET", "true")  # dbt prints only errors; the script prints the figures

DAY = date(2026, 3, 2)
CATEGORIES = 20


def generate_raw_events(path: Path, events: int, seed: int) -> dict[str, int]:
    """Write about ``events`` raw_events rows of DAY (plus an item catalog) into the DuckDB file ``path``."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    slate = 10
    requests = round(events / 10.65)  # about 10.65 events per request (10 impressions + outcomes)
    users = max(1, requests // 2)
    items = max(slate, requests // 4)
    midnight = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)

    # Impressions: every request shows `slate` items at one moment.
    request_at_us = np.sort(rng.integers(0, 86_400_000_000, requests))
    request_user = rng.integers(0, users, requests)
    request_page = rng.integers(0, 4, requests)
    request_device = rng.integers(0, 4, requests)
    request_variant = rng.integers(0, 2, requests)
    request_index = np.repeat(np.arange(requests), slate)
    position = np.tile(np.arange(slate), requests)
    item = rng.integers(0, items, requests * slate)
    item_price = np.round(5 + 95 * rng.random(items), 2)

    # Outcomes: clicks fall with position; some after the window, some purchases.
    click_probability = 0.09 / (1 + 0.3 * position)
    clicked = rng.random(position.size) < click_probability
    click_delay_us = np.where(
        rng.random(position.size) < 0.9,
        rng.integers(1_000_000, 1_500_000_000, position.size),  # inside 25 min
        rng.integers(1_860_000_000, 5_400_000_000, position.size),  # after the 30 min window
    )
    carted = clicked & (rng.random(position.size) < 0.3)
    purchased = carted & (rng.random(position.size) < 0.5)

    def block(kind: str, mask: np.ndarray, delay_us: np.ndarray) -> dict[str, np.ndarray]:
        index = np.flatnonzero(mask)
        return {
            "kind": np.full(index.size, kind, dtype=object),
            "slot": index,
            "at_us": request_at_us[request_index[index]] + delay_us[index],
        }

    zero = np.zeros(position.size, dtype=np.int64)
    blocks = [
        block("impression", np.ones(position.size, dtype=bool), zero),
        block("click", clicked, click_delay_us),
        block("add_to_cart", carted, click_delay_us + 60_000_000),
        block("purchase", purchased, click_delay_us + 300_000_000),
    ]
    kind = np.concatenate([b["kind"] for b in blocks])
    slot = np.concatenate([b["slot"] for b in blocks])
    at_us = np.concatenate([b["at_us"] for b in blocks])
    keep = at_us < 86_400_000_000  # this day's events only
    kind, slot, at_us = kind[keep][:events], slot[keep][:events], at_us[keep][:events]
    count = kind.size
    request = request_index[slot]

    # Log partitions: the event's hour; 5% of clicks arrive an hour late; 0.5% duplicated.
    log_us = at_us + np.where((kind == "click") & (rng.random(count) < 0.05), 3_600_000_000, 0)
    duplicate = np.flatnonzero(rng.random(count) < 0.005)
    rows = np.concatenate([np.arange(count), duplicate])
    log_us = np.concatenate([log_us, log_us[duplicate] + 3_600_000_000])
    day_start = np.datetime64(midnight.replace(tzinfo=None), "us")  # naive numpy value, meaning UTC
    event_at = day_start + at_us[rows].astype("timedelta64[us]")
    log_at = day_start + log_us.astype("timedelta64[us]")
    pages = np.array(["home", "search", "category", "product"], dtype=object)
    devices = np.array(["desktop", "mobile", "tablet", "unknown"], dtype=object)
    page = pages[request_page[request[rows]]]
    query = np.where(page == "search", "running shoes", None)
    table = pa.table(
        {
            "event_id": [f"evt-{index:09d}" for index in rows],
            "event_type": kind[rows].astype(str),
            "event_at": pa.array(event_at, pa.timestamp("us", tz="UTC")),
            "event_date": pa.array(event_at.astype("datetime64[D]")),
            "user_id": [f"user-{u:07d}" for u in request_user[request[rows]]],
            "item_id": [f"item-{i:07d}" for i in item[slot[rows]]],
            "request_id": [f"req-{r:08d}" for r in request[rows]],
            "position": position[slot[rows]].astype(np.int32),
            "model_version": np.where(request_variant[request[rows]] == 0, "v1", "v2"),
            "variant": np.where(request_variant[request[rows]] == 0, "champion", "canary"),
            "page": page.astype(str),
            "device": devices[request_device[request[rows]]].astype(str),
            "price": item_price[item[slot[rows]]],
            "query": pa.array(query.tolist(), pa.string()),
            "log_date": pa.array(log_at.astype("datetime64[D]")),
            "log_hour": pa.array((log_at.astype("datetime64[h]").astype(np.int64) % 24).astype(np.int16)),
            "source_uri": pa.array(np.full(rows.size, "file:///bench/serving.jsonl", dtype=object), pa.string()),
            "line_number": pa.array(np.arange(rows.size, dtype=np.int32)),
            "ingest_run_id": pa.array(np.full(rows.size, "bench", dtype=object), pa.string()),
            "ingested_at": pa.array(np.full(rows.size, log_at.max()), pa.timestamp("us", tz="UTC")),
        }
    )
    catalog = pa.table(
        {
            "item_id": [f"item-{i:07d}" for i in range(items)],
            "category": [f"category-{i % CATEGORIES:02d}" for i in range(items)],
            "price": item_price,
        }
    )
    with duckdb.connect(str(path)) as connection:
        connection.execute("set TimeZone = 'UTC'")
        connection.execute(
            """
            create table raw_events (
                event_id varchar, event_type varchar, event_at timestamptz, event_date date, user_id varchar,
                item_id varchar, request_id varchar, position integer, model_version varchar, variant varchar,
                page varchar, device varchar, price double precision, query varchar, log_date date,
                log_hour smallint, source_uri varchar, line_number integer, ingest_run_id varchar,
                ingested_at timestamptz
            )
            """
        )
        connection.register("generated", table)
        connection.execute("insert into raw_events select * from generated order by log_date, log_hour, event_at")
        connection.register("generated_catalog", catalog)
        connection.execute("create table item_catalog as select * from generated_catalog")
    return {"raw_events_rows": table.num_rows, "distinct_events": count, "requests": requests, "items": items}


def run_files_in_order(target_dir: Path) -> list[tuple[str, str, Path]]:
    """(unique_id, resource_type, run/ SQL file) of every executed node, in dbt's execution order."""
    run_results = json.loads((target_dir / "run_results.json").read_text())
    manifest = json.loads((target_dir / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest.get("unit_tests", {})}
    ordered = []
    for result in run_results["results"]:
        node = nodes.get(result["unique_id"])
        if node is None or node["resource_type"] == "operation":
            continue  # the on-run-start hook: its create-if-missing is repeated by run_sql_directly
        if node.get("compiled_path"):
            run_file = target_dir / "run" / Path(node["compiled_path"]).relative_to(target_dir / "compiled")
        else:  # unit tests: run/<package>/<yml path>/models/<model folder>/<test name>.sql
            folder = target_dir / "run" / node["package_name"] / node["original_file_path"]
            run_file = next(folder.rglob(f"{node['name']}.sql"))
        ordered.append((result["unique_id"], node["resource_type"], run_file))
    return ordered


def run_sql_directly(database: Path, target_dir: Path) -> tuple[float, int]:
    """Execute dbt's run/ SQL with duckdb directly; returns (seconds, statements)."""
    import duckdb

    statements = 0
    started = time.perf_counter()
    with duckdb.connect(str(database)) as connection:
        connection.execute(
            "create table if not exists item_catalog (item_id varchar, category varchar, price double precision)"
        )
        for _, resource_type, run_file in run_files_in_order(target_dir):
            sql = run_file.read_text()
            # dbt builds into "<name>__dbt_tmp" and renames it; build under the final name instead.
            sql = sql.replace('__dbt_tmp"', '"')
            result = connection.execute(sql)
            if resource_type in ("test", "unit_test"):
                result.fetchall()
            statements += 1
    return time.perf_counter() - started, statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the day (default 1M)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh builds per method; best and median shown")
    parser.add_argument("--seed", type=int, default=20260302)
    parser.add_argument("--workdir", type=Path, help="keep the warehouses here (default: a temp dir)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loopline-etl-bench-"))
    for folder in ("raw", "dbt", "direct"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    raw = workdir / "raw" / "warehouse.duckdb"
    warehouse = workdir / "dbt" / "warehouse.duckdb"
    baseline = workdir / "direct" / "warehouse.duckdb"  # same file name everywhere: the SQL names the catalog
    raw.unlink(missing_ok=True)

    started = time.perf_counter()
    sizes = generate_raw_events(raw, args.events, args.seed)
    generated = time.perf_counter() - started
    print(f"generated {sizes['raw_events_rows']:,} raw_events rows for {DAY} in {generated:.1f} s ({sizes})")

    started = time.perf_counter()
    from dbt.cli.main import dbtRunner  # noqa: F401  (import cost reported apart from the builds)

    from loopline.transform import mart_checksums, run_dbt

    imported = time.perf_counter() - started
    uri = f"duckdb://{warehouse}"

    # Alternate the two methods on fresh copies of the raw warehouse; the machine may be shared, so
    # report the best and the median of each.
    dbt_seconds: list[float] = []
    direct_seconds: list[float] = []
    node_seconds: dict[str, float] = {}
    checksums: dict[str, str] = {}
    statements = 0
    for repeat in range(args.repeats):
        shutil.copy(raw, warehouse)
        target = workdir / f"dbt-target-{repeat}"
        shutil.rmtree(target, ignore_errors=True)
        build = run_dbt("build", run_date=DAY, warehouse_uri=uri, target_dir=target)
        dbt_seconds.append(build.elapsed_seconds)
        node_seconds = {}
        for node in build.nodes:
            node_seconds[node.resource_type] = node_seconds.get(node.resource_type, 0.0) + node.execution_time
        sums = mart_checksums(uri)
        assert not checksums or sums == checksums, "two fresh builds gave different marts"
        checksums = sums
        shutil.copy(raw, baseline)
        seconds, statements = run_sql_directly(baseline, target)
        direct_seconds.append(seconds)

    rerun = run_dbt("build", run_date=DAY, warehouse_uri=uri, target_dir=workdir / "dbt-target-rerun")
    assert mart_checksums(uri) == checksums, "re-running the day changed the marts"

    import duckdb

    with duckdb.connect(str(warehouse)) as connection:
        rows = {t: connection.execute(f"select count(*) from {t}").fetchone()[0] for t in checksums}
        share = connection.execute("select avg(case when is_clicked then 1.0 else 0 end) from training_examples")
        clicked_share = share.fetchone()[0]

    best_dbt, best_direct = min(dbt_seconds), min(direct_seconds)
    median_dbt, median_direct = statistics.median(dbt_seconds), statistics.median(direct_seconds)
    print(f"dbt import (once per process)   : {imported:6.2f} s")
    print(f"dbt build, fresh warehouse      : best {best_dbt:6.2f} s, median {median_dbt:6.2f} s  {dbt_seconds}")
    print("  node time by type (last build): " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(node_seconds.items())))
    print(
        f"direct DuckDB, same SQL         : best {best_direct:6.2f} s, median {median_direct:6.2f} s  "
        f"{[round(s, 2) for s in direct_seconds]} ({statements} statements from target/run)"
    )
    print(
        f"ratio dbt / direct              : best {best_dbt / best_direct:5.2f}x, median "
        f"{median_dbt / median_direct:5.2f}x  (goal <= 2x)"
    )
    print(f"dbt build, same day again       : {rerun.elapsed_seconds:6.2f} s  (incremental path; marts unchanged)")
    print(f"mart rows: {rows}; clicked share {clicked_share:.4f}")
    print(f"target <= 60 s: {'met' if best_dbt <= 60 else 'NOT met'} (best build {best_dbt:.1f} s)")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
