"""Benchmark: Feast materialization and online lookups, SQLite (local profile) and Redis (stack profile).

For each store, in the same run and on the same data:

- materialization: ``loopline.features.materialize_interval`` of one day holding ``--rows`` entity
  rows (half users, half items; every feature of both views), in rows/s, against a raw batched write
  of the same rows into the same store (SQLite: ``executemany`` of one row per entity and feature in
  one transaction; Redis: pipelined ``HSET`` of one hash per entity, 1,000 entities per round trip);
- online lookups: ``loopline.features.online`` for one user and 100 items (the ctr_ranker_v1 service,
  request features included), p50 / p99 over ``--calls`` calls (target: p99 <= 10 ms), against raw
  reads of the same keys (SQLite: one ``SELECT ... WHERE entity_key IN (...)`` per view; Redis: one
  pipeline of ``HMGET`` over the 101 keys), and Feast's own ``get_online_features`` with the service
  (whose answer ``online()`` must equal before it is timed).

Local, the generated rows go into a DuckDB warehouse and are exported to Parquet (timed on its own
as "export") before materializing; stack, they go into a temporary PostgreSQL database (created on
127.0.0.1, dropped afterwards) and Redis gets a temporary Feast project whose keys are deleted
afterwards. Lookups are timed as a warmed-up server runs them: after ``gc.freeze()``, so the
collector's full scans skip the long-lived objects (without it the slowest calls take ~200 ms), and
each store in a process of its own.

    .venv/bin/python benchmarks/features.py                        # both stores, 100k rows, 1,000 calls
    .venv/bin/python benchmarks/features.py --stores sqlite --calls 2000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

DAY = date(2026, 3, 1)
FEATURE_AT = datetime(2026, 3, 2, tzinfo=UTC)
POSTGRES_ADMIN_URL = os.environ.get("LOOPLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LOOPLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def snapshot_table(key: str, prefix: str, count: int, columns: dict, seed: int) -> pa.Table:
    """``count`` snapshot rows of one mart with random values for every column the view reads."""
    rng = np.random.default_rng(seed)
    data: dict[str, pa.Array] = {
        key: pa.array([f"{prefix}{i:07d}" for i in range(count)]),
        "snapshot_date": pa.array([DAY] * count, pa.date32()),
        "feature_at": pa.array([FEATURE_AT] * count, pa.timestamp("us", tz="UTC")),
    }
    for name, dtype in columns.items():
        kind = str(dtype)
        if kind == "Int64":
            data[name] = pa.array(rng.integers(0, 1000, count), pa.int64())
        elif kind == "Float64":
            data[name] = pa.array(rng.random(count), pa.float64())
        else:
            data[name] = pa.array(np.array(["books", "shoes", "toys", "garden"])[rng.integers(0, 4, count)])
    return pa.table(data)


def percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.array(samples) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


CPU_SAMPLES: list[float] = []


def time_calls(function: Callable[[], object], calls: int, warmup: int = 50) -> tuple[float, float]:
    """Wall-clock p50 / p99 in ms; the thread's CPU time per call is kept in CPU_SAMPLES."""
    for _ in range(warmup):
        function()
    samples = []
    CPU_SAMPLES.clear()
    for _ in range(calls):
        cpu = time.thread_time()
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
        CPU_SAMPLES.append(time.thread_time() - cpu)
    return percentiles(samples)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Feast prints progress bars for materialization: keep the benchmark's output readable."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    name = f"loopline_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(POSTGRES_ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def write_marts(uri: str, users: pa.Table, items: pa.Table) -> None:
    """Create user_features / item_features in the warehouse ``uri`` with the generated rows."""
    from loopline.warehouse import Column, Table, Warehouse

    portable = {pa.int64(): "bigint", pa.float64(): "double", pa.string(): "varchar", pa.date32(): "date"}
    with Warehouse.from_uri(uri) as warehouse:
        for name, table in (("user_features", users), ("item_features", items)):
            spec = Table(
                name,
                tuple(
                    Column(f.name, "timestamptz" if pa.types.is_timestamp(f.type) else portable[f.type])
                    for f in table.schema
                ),
            )
            warehouse.drop_table(name)
            warehouse.ensure_table(spec)
            warehouse.load_arrow(name, table)


def store_settings(profile: str, home: Path, postgres_url: str | None) -> None:
    from loopline import config

    os.environ["LOOPLINE_HOME"] = str(home)
    os.environ["LOOPLINE_PROFILE"] = profile
    if postgres_url:
        os.environ["LOOPLINE_POSTGRES_URL"] = postgres_url
        os.environ["LOOPLINE_REDIS_URL"] = REDIS_URL
    config.settings.cache_clear()


# --- raw baselines --------------------------------------------------------------------------------


def encode(value: object) -> bytes:
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, int):
        return struct.pack("<q", value)
    return str(value).encode()


def raw_sqlite_write(path: str, tables: list[tuple[str, pa.Table]]) -> float:
    """Seconds to write the same (entity, feature, value, time) rows into a same-shaped SQLite table."""
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE IF EXISTS raw_bench")
    connection.execute(
        "CREATE TABLE raw_bench (entity_key BLOB, feature_name TEXT, value BLOB, event_ts timestamp, "
        "PRIMARY KEY (entity_key, feature_name))"
    )
    started = time.perf_counter()
    with connection:
        for key, table in tables:
            rows = table.to_pylist()
            names = [n for n in table.column_names if n not in (key, "snapshot_date", "feature_at")]
            connection.executemany(
                "INSERT INTO raw_bench VALUES (?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, event_ts = excluded.event_ts",
                ((row[key].encode(), name, encode(row[name]), "2026-03-02 00:00:00") for row in rows for name in names),
            )
    elapsed = time.perf_counter() - started
    connection.execute("DROP TABLE raw_bench")
    connection.close()
    return elapsed


def raw_redis_write(client, tables: list[tuple[str, pa.Table]], prefix: bytes) -> float:
    """Seconds to HSET one hash per entity (all its features + a timestamp), 1,000 entities per pipeline."""
    started = time.perf_counter()
    for key, table in tables:
        rows = table.to_pylist()
        names = [n for n in table.column_names if n not in (key, "snapshot_date", "feature_at")]
        for offset in range(0, len(rows), 1000):
            with client.pipeline(transaction=False) as pipe:
                for row in rows[offset : offset + 1000]:
                    mapping = {name.encode(): encode(row[name]) for name in names}
                    mapping[b"_ts"] = struct.pack("<q", 1772409600)
                    pipe.hset(prefix + row[key].encode(), mapping=mapping)
                pipe.execute()
    return time.perf_counter() - started


# --- one store ------------------------------------------------------------------------------------


def bench_store(kind: str, rows: int, calls: int) -> dict[str, float]:
    from loopline import features

    views = features._repo("views")
    users = snapshot_table("user_id", "u", rows // 2, views.USER_COLUMNS, seed=1)
    items = snapshot_table("item_id", "i", rows - rows // 2, views.ITEM_COLUMNS, seed=2)
    item_count = rows - rows // 2
    item_ids = [f"i{i:07d}" for i in range(0, item_count, max(1, item_count // 100))][:100]
    result: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopline-bench-features-")))
        postgres_url = stack.enter_context(postgres_database()) if kind == "redis" else None
        store_settings("local" if kind == "sqlite" else "stack", home, postgres_url)
        project = f"bench_{uuid.uuid4().hex[:8]}"
        store = features.feature_store(project=project)
        with quiet():
            features.apply(store)

        if kind == "sqlite":
            # The export (warehouse -> Parquet) is the local profile's extra step: time it on its own.
            warehouse_uri = f"duckdb://{home / 'warehouse.duckdb'}"
            write_marts(warehouse_uri, users, items)
            started = time.perf_counter()
            features.export_feature_snapshots(DAY, store=store, warehouse_uri=warehouse_uri)
            result["export_rows_per_s"] = rows / (time.perf_counter() - started)
        else:
            write_marts(postgres_url, users, items)

        started = time.perf_counter()
        with quiet():
            record = features.materialize_interval(
                DAY + timedelta(days=1), DAY + timedelta(days=2), store=store, export=False
            )
        seconds = time.perf_counter() - started
        assert sum(view["rows"] for view in record["views"].values()) == rows, record
        result["materialize_rows_per_s"] = rows / seconds

        if kind == "sqlite":
            online_path = store.config.online_store.path
            raw_seconds = raw_sqlite_write(online_path, [("user_id", users), ("item_id", items)])
        else:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            stack.callback(client.close)
            raw_prefix = f"raw_bench_{project}:".encode()
            raw_seconds = raw_redis_write(client, [("user_id", users), ("item_id", items)], raw_prefix)
            stack.callback(lambda: [client.delete(*batch) for batch in _batches(client.scan_iter(raw_prefix + b"*"))])
            stack.callback(
                lambda: [client.delete(*batch) for batch in _batches(client.scan_iter(b"*" + project.encode()))]
            )
        result["raw_write_rows_per_s"] = rows / raw_seconds
        result["materialize_vs_raw"] = result["materialize_rows_per_s"] / result["raw_write_rows_per_s"]

        # Time the lookups the way a serving process runs them after warm-up: the generated rows
        # released and the long-lived objects frozen out of the garbage collector's scans.
        del users, items
        gc.collect()
        gc.freeze()
        stack.callback(gc.unfreeze)
        lookup = features.online("u0000001", item_ids, store=store)
        assert not lookup.missing_users and not lookup.missing_items, (lookup.missing_users, lookup.missing_items)
        check_against_feast(store, item_ids)
        result["online_p50_ms"], result["online_p99_ms"] = time_calls(
            lambda: features.online("u0000001", item_ids, store=store), calls
        )
        result["online_cpu_p50_ms"] = float(np.percentile(CPU_SAMPLES, 50) * 1000)
        service = store.get_feature_service(features.CTR_RANKER_V1)
        entity_rows = {
            "user_id": ["u0000001"] * 100,
            "item_id": item_ids,
            "position": [0] * 100,
            "request_at": [datetime.now(UTC)] * 100,
        }
        result["feast_service_p50_ms"], result["feast_service_p99_ms"] = time_calls(
            lambda: store.get_online_features(features=service, entity_rows=entity_rows).to_dict(), max(calls // 4, 100)
        )
        raw_read = raw_reader(kind, store, project, item_ids)
        result["raw_read_p50_ms"], result["raw_read_p99_ms"] = time_calls(raw_read, calls)
        result["online_vs_raw_p50"] = result["online_p50_ms"] / result["raw_read_p50_ms"]
        result["online_vs_raw_p99"] = result["online_p99_ms"] / result["raw_read_p99_ms"]
    return result


def check_against_feast(store, item_ids: list[str]) -> None:
    """Refuse to time an ``online()`` whose answer differs from Feast's ``get_online_features`` for the service."""
    from loopline import features

    moment = datetime(2026, 3, 2, 9, tzinfo=UTC)
    ours = features.online("u0000001", item_ids, store=store, request_features={"request_at": moment})
    rows = {"user_id": ["u0000001"] * len(item_ids), "item_id": item_ids}
    rows |= {"position": [0] * len(item_ids), "request_at": [moment] * len(item_ids)}
    service = store.get_feature_service(features.CTR_RANKER_V1)
    theirs = store.get_online_features(features=service, entity_rows=rows).to_dict()
    different = [name for name in ours.feature_names if ours.columns[name] != theirs[name]]
    if different:
        raise SystemExit(f"online() differs from Feast's get_online_features in {different}")


def _batches(keys, size: int = 1000):
    batch = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def raw_reader(kind: str, store, project: str, item_ids: list[str]) -> Callable[[], object]:
    """A reader of exactly the keys and features online() fetches, straight from the store's client."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from loopline import features

    plan = features._online_plan(store, features.CTR_RANKER_V1)

    def entity_key(join_key: str, value: str) -> EntityKey:
        return EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])

    user_key = entity_key("user_id", "u0000001")
    item_keys = [entity_key("item_id", item) for item in item_ids]
    user_features = sorted(plan.user_features)
    item_features = sorted(plan.item_features)
    if kind == "sqlite":
        connection = sqlite3.connect(store.config.online_store.path, check_same_thread=False)
        user_bytes = serialize_entity_key(user_key, entity_key_serialization_version=3)
        item_bytes = [serialize_entity_key(key, entity_key_serialization_version=3) for key in item_keys]
        item_marks = ", ".join("?" * len(item_bytes))

        def read_sqlite() -> object:
            users = connection.execute(
                f'SELECT entity_key, feature_name, value FROM "{project}_user_features" WHERE entity_key = ?',
                [user_bytes],
            ).fetchall()
            items = connection.execute(
                f'SELECT entity_key, feature_name, value FROM "{project}_item_features" '
                f"WHERE entity_key IN ({item_marks})",
                item_bytes,
            ).fetchall()
            return users, items

        return read_sqlite
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    user_redis = _redis_key(project, user_key)
    item_redis = [_redis_key(project, key) for key in item_keys]
    user_fields = [_mmh3(f"user_features:{name}") for name in user_features] + [b"_ts:user_features"]
    item_fields = [_mmh3(f"item_features:{name}") for name in item_features] + [b"_ts:item_features"]

    def read_redis() -> object:
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(user_redis, user_fields)
            for key in item_redis:
                pipe.hmget(key, item_fields)
            return pipe.execute()

    return read_redis


def report(kind: str, rows: int, figures: dict[str, float]) -> None:
    def latency(label: str, key: str) -> str:
        return f"  {label:<32}p50 {figures[key + '_p50_ms']:6.2f} ms   p99 {figures[key + '_p99_ms']:6.2f} ms"

    print(f"\n{kind} ({'local' if kind == 'sqlite' else 'stack'} profile), {rows:,} entity rows:")
    if "export_rows_per_s" in figures:
        print(f"  {'export warehouse -> Parquet':<32}{figures['export_rows_per_s']:>12,.0f} rows/s")
    print(f"  {'materialize_interval':<32}{figures['materialize_rows_per_s']:>12,.0f} rows/s")
    print(f"  {'raw batched write (baseline)':<32}{figures['raw_write_rows_per_s']:>12,.0f} rows/s")
    print(f"  {'ratio materialize / raw':<32}{figures['materialize_vs_raw']:>12.3f}")
    met = "met" if figures["online_p99_ms"] <= 10 else "NOT met"
    print(latency("online() 1 user + 100 items", "online") + f"   (target p99 <= 10 ms: {met})")
    print(f"  {'online() CPU time per call':<32}p50 {figures['online_cpu_p50_ms']:6.2f} ms")
    print(latency("feast get_online_features(svc)", "feast_service"))
    print(latency("raw reads of the same keys", "raw_read"))
    print(
        f"  {'ratio online / raw':<32}p50 {figures['online_vs_raw_p50']:6.1f}x      "
        f"p99 {figures['online_vs_raw_p99']:6.1f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="entity rows materialized (default 100000)")
    parser.add_argument("--calls", type=int, default=1_000, help="online calls timed per store (default 1000)")
    parser.add_argument("--stores", default="sqlite,redis", help="comma list of sqlite, redis")
    args = parser.parse_args(argv)
    if args.rows < 200:
        parser.error("--rows: expected at least 200 (100 distinct items are looked up)")
    if args.calls < 1000:
        print("note: fewer than 1,000 calls; the p99 is then rough", file=sys.stderr)
    started = time.perf_counter()
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("sqlite", "redis"):
            parser.error(f"--stores: expected sqlite and/or redis, got {kind!r}")
    for kind in kinds:
        if len(kinds) > 1:
            # One fresh process per store, as a server runs one: right after the SQLite export and
            # materialization in the same process (hundreds of MB allocated and freed), the Redis
            # lookups, the raw reads included, measured 1.4-1.9x slower than in a fresh process.
            command = [sys.executable, __file__, "--stores", kind, "--rows", str(args.rows), "--calls", str(args.calls)]
            subprocess.run(command, check=True)
            continue
        figures = bench_store(kind, args.rows, args.calls)
        report(kind, args.rows, figures)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
