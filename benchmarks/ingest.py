"""Benchmark of ``loopline ingest`` into DuckDB: events/s and peak memory for one day of logs.

A deterministic day of events (built from ``loopline.events.Event`` objects, 24 hourly objects,
with 0.1% exact duplicates, 0.05% malformed lines and PII in 0.2% of the queries) is written with
``LogStore`` first; that is not timed. Each measured run then happens in a fresh child process, so
its peak resident memory (``ru_maxrss``) is its own:

- ``ingest``: ``loopline.ingest.ingest_day`` into a new DuckDB file (parse, dedupe, redact,
  quarantine, load, reconcile), after a warm-up run on a tiny day so that imports are not timed;
  with ``--parse-workers N``, its parse worker processes are part of the run: their CPU time is
  counted and their memory is added to the peak (sampled every 20 ms);
- ``read_json``: the baseline, DuckDB's own ``read_json`` of the same files into a table
  (no validation, no dedupe, no PII, no quarantine): the floor for loading these bytes.

Memory independent of partition size shows as about the same peak for a quarter of the day and the
full day; DuckDB's buffer pool is capped (``--memory-limit``, 512MB by default) for both runs, since
without a cap DuckDB keeps what it wrote cached up to 80% of RAM. Run with the project's interpreter:

    .venv/bin/python benchmarks/ingest.py                    # 2,000,000 events (and 500,000 for memory)
    .venv/bin/python benchmarks/ingest.py --events 200000    # quicker
    .venv/bin/python benchmarks/ingest.py --memory-limit ''      # DuckDB's default buffer pool (80% of RAM)
    .venv/bin/python benchmarks/ingest.py --parse-workers 2      # parse in 2 worker processes
    .venv/bin/python benchmarks/ingest.py --skip-read-json --skip-memory   # ingest only, one size: quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

DAY = date(2024, 5, 1)
TARGET_EVENTS_PER_SECOND = 150_000


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts
    at its parent's size at fork time (and survives exec), which would hide the child's own peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _process_tree_rss_mib() -> float:
    """Resident memory of this process and all its descendants (the parse workers), from /proc."""
    total, pending = 0, [os.getpid()]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    return total / 1024


class _TreeMemorySampler(threading.Thread):
    """Samples the process tree's resident memory every 20 ms and keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mib = 0.0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.02):
            self.peak_mib = max(self.peak_mib, _process_tree_rss_mib())

    def stop(self) -> float:
        self._stopping.set()
        self.join()
        return max(self.peak_mib, _process_tree_rss_mib())


def generate_day(root: Path, events: int, seed: int = 11) -> dict:
    """Write one deterministic day of logs (24 hourly objects) under ``root``; returns what was written."""
    import random

    import orjson

    from loopline.events import DEVICES, EVENT_TYPES, Event
    from loopline.logstore import LogStore

    rng = random.Random(seed)
    store = LogStore.from_uri(root.as_uri())
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    seconds_text: dict[int, str] = {}
    queries = ["red dress", "running shoes", "iphone 15 pro 256gb", "rtx 4090", "summer sale", "wool socks"]
    pii = ["mail me at jane.doe@example.com", "call +49 30 1234567", "from 10.1.2.3", "card 4111 1111 1111 1111"]
    written = {"events": 0, "duplicates": 0, "malformed": 0, "bytes": 0}

    def render(event: Event) -> bytes:
        # Event.to_json_line's exact output, without dataclasses.asdict (50x slower) on 2M events.
        moment = event.event_at
        second = int(moment.timestamp())
        text = seconds_text.get(second)
        if text is None:
            text = seconds_text[second] = moment.strftime("%Y-%m-%dT%H:%M:%S")
        record = {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "event_at": f"{text}.{moment.microsecond // 1000:03d}Z",
            "user_id": event.user_id,
            "item_id": event.item_id,
            "request_id": event.request_id,
            "position": event.position,
            "model_version": event.model_version,
            "variant": event.variant,
            "page": event.page,
            "device": event.device,
            "price": event.price,
            "query": event.query,
            "schema_version": event.schema_version,
        }
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    per_hour = events // 24
    for hour in range(24):
        count = per_hour if hour < 23 else events - per_hour * 23
        lines: list[bytes] = []
        for n in range(count):
            is_search = rng.random() < 0.25
            event = Event(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                event_type=EVENT_TYPES[0] if rng.random() < 0.9 else EVENT_TYPES[rng.randrange(1, 4)],
                event_at=start + timedelta(hours=hour, milliseconds=int(n * 3_600_000 / count)),
                user_id=f"u{rng.randrange(100_000):06d}",
                item_id=f"i{rng.randrange(20_000):05d}",
                request_id=f"r{hour:02d}{n // 10:07d}",
                position=n % 10 + 1,
                model_version="loopline-ctr/7",
                variant="champion" if rng.random() < 0.9 else "canary",
                page="search" if is_search else "home",
                device=DEVICES[rng.randrange(4)],
                price=round(rng.uniform(1, 300), 2),
                query=(rng.choice(pii) if rng.random() < 0.008 else rng.choice(queries)) if is_search else None,
            )
            line = render(event)
            if len(lines) < 3:
                assert line == event.to_json_line(), "render() must match Event.to_json_line()"
            lines.append(line)
            if rng.random() < 0.001:
                lines.append(line)
                written["duplicates"] += 1
            if rng.random() < 0.0005:
                lines.append(b'{"schema_version": 1, "event_id": "broken\n')
                written["malformed"] += 1
        written["events"] += count
        written["bytes"] += len(b"".join(lines))
        store.write(DAY, hour, "serving", lines)
    written["lines"] = written["events"] + written["duplicates"] + written["malformed"]
    return written


def run_ingest(args: argparse.Namespace) -> dict:
    """Child: one timed ingest of the day into a new DuckDB file (after an untimed warm-up)."""
    from loopline.ingest import ingest_day

    folder = Path(args.child_folder)
    options = f"?memory_limit={args.memory_limit}" if args.memory_limit else ""
    warm_logs = folder / "warm-up-logs"
    generate_day(warm_logs, 2_000)
    ingest_day(
        DAY,
        log_store_uri=warm_logs.as_uri(),
        warehouse_uri=f"duckdb://{folder / 'warm-up.duckdb'}",
        quarantine_uri=(folder / "warm-up-quarantine").as_uri(),
        parse_workers=args.parse_workers,
    )
    warehouse = folder / f"ingest-{args.child_events}.duckdb"
    sampler = _TreeMemorySampler() if args.parse_workers else None  # VmHWM alone covers one process
    if sampler:
        sampler.start()
    children_cpu_started = _children_cpu_seconds()
    started, cpu_started, main_started = time.perf_counter(), time.process_time(), time.thread_time()
    result = ingest_day(
        DAY,
        log_store_uri=(folder / f"logs-{args.child_events}").as_uri(),
        warehouse_uri=f"duckdb://{warehouse}{options}",
        quarantine_uri=(folder / "quarantine").as_uri(),
        parse_workers=args.parse_workers,
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    main_thread_seconds = time.thread_time() - main_started
    worker_cpu_seconds = _children_cpu_seconds() - children_cpu_started  # workers have exited by now
    tree_peak = sampler.stop() if sampler else 0.0
    return {
        "kind": "ingest",
        "parse_workers": args.parse_workers,
        "main_thread_cpu_seconds": round(main_thread_seconds, 3),
        "worker_cpu_seconds": round(worker_cpu_seconds, 3),
        "lines": result.lines_read,
        "loaded": result.loaded,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined,
        "redactions": sum(result.redactions_by_type.values()),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds + worker_cpu_seconds, 3),
        "events_per_second": round(result.lines_read / seconds),
        "peak_rss_mib": round(max(_peak_rss_mib(), tree_peak), 1),
        "peak_rss_main_mib": round(_peak_rss_mib(), 1),
        "load_average": round(os.getloadavg()[0], 2),
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_read_json(args: argparse.Namespace) -> dict:
    """Child: DuckDB's own read_json of the same files into a table (the baseline)."""
    import duckdb

    folder = Path(args.child_folder)
    options = {"memory_limit": args.memory_limit} if args.memory_limit else {}
    connection = duckdb.connect(str(folder / f"read-json-{args.child_events}.duckdb"), config=options)
    connection.execute("SELECT 1").fetchall()
    columns = {
        "event_id": "VARCHAR", "event_type": "VARCHAR", "event_at": "TIMESTAMPTZ", "user_id": "VARCHAR",
        "item_id": "VARCHAR", "request_id": "VARCHAR", "position": "INTEGER", "model_version": "VARCHAR",
        "variant": "VARCHAR", "page": "VARCHAR", "device": "VARCHAR", "price": "DOUBLE", "query": "VARCHAR",
        "schema_version": "INTEGER",
    }  # fmt: skip
    pattern = str(folder / f"logs-{args.child_events}" / "dt=*" / "hour=*" / "*.jsonl")
    started, cpu_started = time.perf_counter(), time.process_time()
    connection.execute(
        "CREATE TABLE raw AS SELECT * FROM read_json(?, format = 'newline_delimited', columns = ?, "
        "ignore_errors = true)",
        [pattern, columns],
    )
    rows = connection.execute("SELECT count(*) FROM raw").fetchone()[0]
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    connection.close()
    return {
        "kind": "read_json",
        "lines": rows,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "events_per_second": round(rows / seconds),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "load_average": round(os.getloadavg()[0], 2),
    }


def _child(args: argparse.Namespace, kind: str, events: int, folder: Path) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--child-events", str(events), "--child-folder", str(folder)]
    command += ["--memory-limit", args.memory_limit or "", "--parse-workers", str(args.parse_workers)]
    env = {**os.environ, "LOOPLINE_HOME": str(folder / "home"), "DO_NOT_TRACK": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events of the measured day")
    parser.add_argument(
        "--memory-limit",
        default="512MB",
        help="DuckDB memory_limit for both runs (default 512MB; '' for DuckDB's own, 80%% of RAM)",
    )
    parser.add_argument(
        "--parse-workers", type=int, default=0, help="parse worker processes for ingest (default 0: parse in process)"
    )
    parser.add_argument("--skip-read-json", action="store_true", help="do not run the read_json baseline")
    parser.add_argument("--skip-memory", action="store_true", help="measure only the full day, not a quarter of it")
    parser.add_argument("--child", choices=["ingest", "read_json"], help=argparse.SUPPRESS)
    parser.add_argument("--child-events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_ingest(args) if args.child == "ingest" else run_read_json(args)))
        return

    sizes = [args.events] if args.skip_memory else sorted({max(args.events // 4, 1000), args.events})
    kinds = ["ingest"] if args.skip_read_json else ["read_json", "ingest"]
    with tempfile.TemporaryDirectory(prefix="loopline-bench-ingest-") as name:
        folder = Path(name)
        print(
            f"ingest benchmark: one day of {args.events:,} events in 24 objects, DuckDB warehouse "
            f"(memory_limit {args.memory_limit or 'default'}), parse workers {args.parse_workers}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
        )
        written = {}
        for size in sizes:
            started = time.perf_counter()
            written[size] = generate_day(folder / f"logs-{size}", size)
            print(
                f"  wrote {written[size]['lines']:,} lines ({written[size]['bytes'] / 2**20:,.0f} MiB) for {size:,} "
                f"events in {time.perf_counter() - started:.0f} s (not timed)"
            )
        runs = {}
        for size in sizes:
            runs[size] = {kind: _child(args, kind, size, folder) for kind in kinds}
            for kind in kinds:
                run = runs[size][kind]
                print(
                    f"  {kind:<9} {size:>10,} events: {run['seconds']:>7.2f} s wall, {run['cpu_seconds']:>7.2f} s CPU, "
                    f"{run['events_per_second']:>10,} lines/s, peak RSS {run['peak_rss_mib']:>7.1f} MiB, "
                    f"load average {run['load_average']:.1f} at its end"
                )
        full = runs[args.events]
        ingest_run = full["ingest"]
        assert ingest_run["lines"] == written[args.events]["lines"], "every line read"
        speed = ingest_run["events_per_second"]
        verdict = "met" if speed >= TARGET_EVENTS_PER_SECOND else "NOT met"
        if "read_json" in full:
            baseline = full["read_json"]
            floor = baseline["events_per_second"]
            print(
                f"ingest {speed:,} lines/s = {speed / floor:.2f}x DuckDB read_json ({floor:,} lines/s); "
                f"target >= {TARGET_EVENTS_PER_SECOND:,}: {verdict}"
            )
            print(
                f"CPU per line: ingest {ingest_run['cpu_seconds'] / ingest_run['lines'] * 1e6:.2f} us, read_json "
                f"{baseline['cpu_seconds'] / baseline['lines'] * 1e6:.2f} us "
                "(all threads and processes; wall well above CPU / cores means a busy machine)"
            )
        else:
            print(f"ingest {speed:,} lines/s; target >= {TARGET_EVENTS_PER_SECOND:,}: {verdict}")
        serial = ingest_run["main_thread_cpu_seconds"]
        print(
            f"ingest main thread (read, and parse unless workers do): {serial:.2f} s CPU = "
            f"{ingest_run['lines'] / serial:,.0f} lines/s when it has a core to itself; parse workers "
            f"{ingest_run['worker_cpu_seconds']:.2f} s CPU; the warehouse load runs on other threads"
        )
        if len(sizes) > 1:
            small = runs[sizes[0]]["ingest"]
            growth = ingest_run["peak_rss_mib"] / small["peak_rss_mib"]
            print(
                f"peak memory (ingest process and its parse workers) {args.events:,} vs {sizes[0]:,} events: "
                f"{ingest_run['peak_rss_mib']:.0f} vs {small['peak_rss_mib']:.0f} MiB ({growth:.2f}x for "
                f"{args.events / sizes[0]:.0f}x the lines; flat means ~1x)"
            )
        print(json.dumps({"written": written, "runs": runs}))


if __name__ == "__main__":
    main()
