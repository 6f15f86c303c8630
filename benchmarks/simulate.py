"""Benchmark of ``loopline simulate``: events/s written to local JSONL and peak memory, for growing day counts.

Each run happens in a fresh child process pinned to one CPU (BLAS threads 1), so its peak resident
memory (``ru_maxrss``) belongs to that run alone: flat memory means the peak does not grow with days.
The baseline, measured in the same invocation, is the raw cost of ``orjson.dumps`` on pre-built event
dicts written hour by hour to a local file, the floor for any JSON-lines writer in Python.

    .venv/bin/python benchmarks/simulate.py                  # 1, 3, 10 days at 1M events/day
    .venv/bin/python benchmarks/simulate.py --quick          # 1, 2, 4 days at 100k events/day
    .venv/bin/python benchmarks/simulate.py --days 10 --events-per-day 1000000   # 10M events in one run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _pin_to_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_simulation(args: argparse.Namespace) -> dict:
    """One simulation run (in the child): returns events, seconds, events/s, peak RSS."""
    _pin_to_one_core()
    from loopline.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="loopline-bench-") as folder:
        started = time.perf_counter()
        summary = simulate(
            Path(folder, "logs").as_uri(),
            start_date=date(2024, 1, 1),
            days=args.child_days,
            users=args.users,
            items=args.items,
            events_per_day=args.events_per_day,
            seed=args.seed,
            drift_day=args.child_days // 2 if args.child_days > 1 else None,
            bot_rate=0.01,
            pii_rate=0.01,
            malformed_rate=0.001,
            policy=args.policy,
            truth_dir=Path(folder, "truth"),
            compress=args.gzip,
        )
        seconds = time.perf_counter() - started
        written = sum(f.stat().st_size for f in Path(folder, "logs").rglob("*.jsonl*"))
    lines = summary.events + summary.malformed_lines
    return {
        "kind": "simulate",
        "days": args.child_days,
        "events": summary.events,
        "lines": lines,
        "seconds": round(seconds, 3),
        "events_per_second": round(summary.events / seconds),
        "bytes_written": written,
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "ctr": summary.ctr,
    }


def run_baseline(args: argparse.Namespace) -> dict:
    """orjson.dumps of pre-built event dicts, written in 24 hour-sized chunks per day to a local file."""
    _pin_to_one_core()
    import orjson

    from loopline.simulate import World, generate_day, make_policy

    world = World.build(args.users, args.items, args.seed)
    traffic = generate_day(world, 0, make_policy("random"), events_per_day=min(args.events_per_day, 200_000))
    prebuilt = [orjson.loads(line) for line in traffic.render_lines()]  # realistic dicts, built before timing
    total = args.child_events
    per_hour = max(1, args.events_per_day // 24)
    with tempfile.TemporaryDirectory(prefix="loopline-bench-") as folder:
        started = time.perf_counter()
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        done = 0
        with open(Path(folder, "baseline.jsonl"), "wb") as sink:
            while done < total:
                count = min(per_hour, total - done)
                chunk = [dumps(prebuilt[(done + i) % len(prebuilt)], option=newline) for i in range(count)]
                sink.write(b"".join(chunk))
                done += count
            sink.flush()
            os.fsync(sink.fileno())
        seconds = time.perf_counter() - started
    return {
        "kind": "baseline",
        "events": total,
        "seconds": round(seconds, 3),
        "events_per_second": round(total / seconds),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }


def _child(args: argparse.Namespace, **extra: object) -> dict:
    command = [sys.executable, __file__, "--child"]
    for name, value in {**vars(args), **extra}.items():
        if name in ("child", "quick", "days") or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    env = {**os.environ, **SINGLE_THREAD_ENV}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="1,3,10", help="comma-separated day counts, one run each")
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policy", default="popularity")
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz objects")
    parser.add_argument("--quick", action="store_true", help="1, 2, 4 days at 100k events/day, 20k users")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-days", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-kind", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_baseline(args) if args.child_kind == "baseline" else run_simulation(args)
        print(json.dumps(result))
        return
    if args.quick:
        args.days, args.events_per_day, args.users, args.items = "1,2,4", 100_000, 20_000, 5_000
    day_counts = [int(x) for x in args.days.split(",")]

    print(
        f"simulate benchmark: {args.events_per_day:,} events/day, {args.users:,} users, {args.items:,} items, "
        f"policy={args.policy}, gzip={args.gzip}, one core per run"
    )
    baseline = _child(args, child_kind="baseline", child_events=args.events_per_day * min(day_counts))
    print(
        f"baseline  orjson.dumps(pre-built dicts) + write: {baseline['events']:>11,} events "
        f"{baseline['seconds']:>8.2f} s {baseline['events_per_second']:>10,} events/s "
        f"peak RSS {baseline['peak_rss_mib']:>7.1f} MiB"
    )
    results = []
    for days in day_counts:
        result = _child(args, child_kind="simulate", child_days=days)
        results.append(result)
        ratio = result["events_per_second"] / baseline["events_per_second"]
        print(
            f"simulate  {days:>3} day(s):{'':22} {result['events']:>11,} events {result['seconds']:>8.2f} s "
            f"{result['events_per_second']:>10,} events/s peak RSS {result['peak_rss_mib']:>7.1f} MiB  "
            f"({ratio:.2f}x baseline speed, {result['bytes_written'] / result['events']:.0f} B/event, "
            f"ctr {result['ctr']:.3f})"
        )
    growth = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    print(
        f"peak memory {results[-1]['days']} days / {results[0]['days']} day(s): {growth:.2f}x "
        f"(flat means ~1x); target >= 100,000 events/s: "
        f"{'met' if min(r['events_per_second'] for r in results) >= 100_000 else 'NOT met'}"
    )
    print(json.dumps({"baseline": baseline, "runs": results}))


if __name__ == "__main__":
    main()
