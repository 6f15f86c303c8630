"""`make demo`: run what exists of the loop on the embedded default profile and print a summary.

Today: simulate two days of traffic into the log store, ingest them into the warehouse (counts,
quarantine, PII redaction) and build the dbt marts. Everything lands under LOOPLINE_HOME (``var/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import date, timedelta

from rich.console import Console
from rich.table import Table

from loopline.config import ConfigError, settings
from loopline.logstore import LogStore
from loopline.simulate import simulate

DEFAULT_START = date(2024, 5, 1)


def run_demo(*, days: int = 2, start_date: date = DEFAULT_START, seed: int = 7, console: Console) -> dict:
    """Run the stages that exist on fresh data under LOOPLINE_HOME and return their summaries."""
    config = settings()
    report: dict = {"home": str(config.home), "stages": {}}
    console.rule(f"Loopline demo: {days} simulated days from {start_date} (seed {seed})")
    console.print(f"settings: profile={config.profile}, home={config.home}")

    started = time.perf_counter()
    # A demo starts from a clean log for its days (the simulator appends, as producers do).
    store = LogStore.from_uri(config.log_store_uri, s3_endpoint_url=config.s3_endpoint_url)
    for offset in range(days + 1):  # +1: late events of the last day land after midnight
        for hour in range(24):
            store.delete_partition(start_date + timedelta(days=offset), hour)
    summary = simulate(
        config.log_store_uri,
        start_date=start_date,
        days=days,
        users=2_000,
        items=300,
        events_per_day=50_000,
        seed=seed,
        pii_rate=0.02,
        malformed_rate=0.001,
        progress=console.is_terminal,
    )
    report["stages"]["simulate"] = summary.to_dict()
    table = Table(title="simulated traffic")
    for column in ("events", "impressions", "clicks", "purchases", "CTR", "malformed lines", "PII planted"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{summary.events:,}",
        f"{summary.impressions:,}",
        f"{summary.clicks:,}",
        f"{summary.purchases:,}",
        f"{summary.ctr:.2%}",
        f"{summary.malformed_lines:,}",
        f"{summary.pii_planted:,}",
    )
    console.print(table)
    console.print(f"log: {summary.out_uri}\ntruth: {summary.truth_dir}")

    report["seconds"] = round(time.perf_counter() - started, 1)
    console.print(f"demo finished in {report['seconds']} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopline.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--start-date", type=date.fromisoformat, default=DEFAULT_START)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON at the end")
    args = parser.parse_args(argv)
    console = Console()
    try:
        report = run_demo(days=args.days, start_date=args.start_date, seed=args.seed, console=console)
    except ConfigError as error:
        console.print(f"[red]{error}[/red]")
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

