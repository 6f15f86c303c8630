"""`make demo`: run what exists of the loop on the embedded default profile and print a summary.

Today: simulate two days of traffic into the log store; then, day by day, ingest them into the
warehouse (counts, quarantine, PII redaction), build the dbt marts and materialize the Feast
features. Everything lands under LOOPLINE_HOME (``var/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

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

    report["stages"]["etl"] = _run_etl(start_date, days, console)
    report["seconds"] = round(time.perf_counter() - started, 1)
    console.print(f"demo finished in {report['seconds']} s")
    return report


def _run_etl(start_date: date, days: int, console: Console) -> list[dict]:
    """Per day: ingest the logs, build the dbt marts, materialize the features (what loopline_etl runs)."""
    from loopline.features import apply, materialize_interval
    from loopline.ingest import ingest_interval
    from loopline.transform import run_dbt

    apply()
    rows = []
    table = Table(title="ETL per day (what the loopline_etl DAG runs)")
    for column in (
        "day",
        "lines read",
        "loaded",
        "duplicates",
        "quarantined",
        "PII redacted",
        "dbt nodes",
        "online rows",
    ):
        table.add_column(column, justify="right")
    for offset in range(days):
        start = datetime.combine(start_date + timedelta(days=offset), datetime.min.time(), tzinfo=UTC)
        end = start + timedelta(days=1)
        ingested = ingest_interval(start, end).to_dict()
        built = run_dbt("build", run_date=start.date())
        materialized = materialize_interval(start, end)
        online_rows = sum(int(view.get("rows", 0)) for view in materialized.get("views", {}).values())
        rows.append(
            {
                "day": start.date().isoformat(),
                "ingest": ingested,
                "dbt": built.status_counts,
                "materialized": materialized,
            }
        )
        table.add_row(
            start.date().isoformat(),
            f"{ingested['lines_read']:,}",
            f"{ingested['loaded']:,}",
            f"{ingested['duplicates']:,}",
            f"{ingested['quarantined']:,}",
            f"{sum(ingested.get('redactions_by_type', {}).values()):,}",
            " / ".join(f"{count} {status}" for status, count in sorted(built.status_counts.items())),
            f"{online_rows:,}",
        )
    console.print(table)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopline.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--start-date", type=date.fromisoformat, default=DEFAULT_START)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON at the end")
    args = parser.parse_args(argv)
    # Third-party libraries warn loudly about their own deprecations; the demo shows Loopline's output.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="feast")
    os.environ.setdefault("DBT_QUIET", "true")  # dbt prints only errors
    console = Console(width=max(Console().width, 120))
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
