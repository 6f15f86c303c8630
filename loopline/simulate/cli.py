"""``loopline simulate``: write simulated traffic with a known truth to the event log."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from loopline.config import settings


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` sub-command."""
    parser = subparsers.add_parser(
        "simulate",
        help="write simulated traffic (known click model, planted PII and bad lines) to the event log",
        description=__doc__,
    )
    parser.add_argument("--out", help="log store URI (file:// or s3://); default: LOOPLINE_LOG_STORE_URI")
    parser.add_argument("--start-date", type=_day, required=True, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--days", type=_positive, required=True, help="number of days to simulate")
    parser.add_argument("--users", type=_positive, required=True, help="number of users in the world")
    parser.add_argument("--items", type=_positive, required=True, help="number of items on the first day")
    parser.add_argument("--events-per-day", type=_positive, required=True, help="target events per day (+-10%%)")
    parser.add_argument("--seed", type=_non_negative, required=True, help="random seed: same seed, same bytes")
    parser.add_argument("--drift-day", type=_non_negative, help="0-based day index from which preferences shift")
    parser.add_argument("--bot-rate", type=_rate, default=0.0, help="share of users that are click bots")
    parser.add_argument("--pii-rate", type=_rate, default=0.0, help="share of search queries with an e-mail/phone")
    parser.add_argument("--malformed-rate", type=_rate, default=0.0, help="malformed lines per valid line")
    parser.add_argument("--new-item-rate", type=_rate, default=0.0, help="new items per day, as a share of --items")
    parser.add_argument(
        "--policy",
        default="popularity",
        help="random, popularity, popularity-world, oracle, or an http(s):// ranking service URL",
    )
    parser.add_argument("--k", type=_positive, default=10, help="items shown per request")
    parser.add_argument("--truth-dir", type=Path, help="where the truth goes; default under LOOPLINE_HOME/truth")
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz objects")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from loopline.simulate.run import simulate

    current = settings()
    summary = simulate(
        args.out or current.log_store_uri,
        start_date=args.start_date,
        days=args.days,
        users=args.users,
        items=args.items,
        events_per_day=args.events_per_day,
        seed=args.seed,
        drift_day=args.drift_day,
        bot_rate=args.bot_rate,
        pii_rate=args.pii_rate,
        malformed_rate=args.malformed_rate,
        new_item_rate=args.new_item_rate,
        policy=args.policy,
        k=args.k,
        truth_dir=args.truth_dir,
        s3_endpoint_url=current.s3_endpoint_url,
        compress=args.gzip,
        progress=not args.no_progress,
    )
    print(json.dumps(summary.to_dict(), indent=2))
    return 0
