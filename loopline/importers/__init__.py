"""Importers of real interaction logs: ``loopline import {otto,uci-eshop,movielens} PATH --out URI``.

They convert OTTO session JSON lines, the UCI e-shop clickstream CSV and MovieLens ratings into
schema v1 events, partitioned by UTC hour in the log store. These datasets record only positive
interactions (or ratings), so each one gets synthesized ranked requests with seeded, sampled
negative impressions that a CTR model can learn from. The exact mapping is in ``docs/importers.md``.
Output is deterministic: the same input, seed and settings give byte-identical objects.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from loopline.importers import movielens, otto, uci_eshop
from loopline.importers._common import (
    ImportConflictError,
    ImportInputError,
    ImportSummary,
    NegativeSampler,
    PartitionSpool,
    RowLog,
    convert,
    count_popularity,
)
from loopline.logstore import LogStore

DATASETS: dict[str, ModuleType] = {"otto": otto, "uci-eshop": uci_eshop, "movielens": movielens}
DEFAULT_NEGATIVES = 4

__all__ = [
    "DATASETS",
    "ImportConflictError",
    "ImportInputError",
    "ImportSummary",
    "import_dataset",
    "register_cli",
]


def import_dataset(
    kind: str,
    path: Path,
    out_uri: str,
    *,
    negatives_per_positive: int = DEFAULT_NEGATIVES,
    seed: int = 0,
    s3_endpoint_url: str | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Convert one source file of dataset ``kind`` into schema v1 partitions under ``out_uri``.

    Two streaming passes over the source: the first counts item popularity per time window (for the
    negatives), the second writes events. ``limit`` stops after that many source rows (previews and
    tests). Raises ImportInputError for a missing or unrecognisable input (naming file and line) and
    ImportConflictError if a partition already holds different events of this importer.
    """
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset {kind!r}; expected one of {', '.join(DATASETS)}")
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be 0 or more, got {negatives_per_positive}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    started = time.perf_counter()
    module = DATASETS[kind]
    source = module.resolve(Path(path))
    store = LogStore.from_uri(out_uri, s3_endpoint_url=s3_endpoint_url)

    popularity = count_popularity(
        module.read_sessions(source, RowLog(str(source)), seed=seed, limit=limit), module.window_of
    )
    summary = ImportSummary(
        dataset=kind,
        source=str(source),
        out_uri=store.root_uri,
        seed=seed,
        negatives_per_positive=negatives_per_positive,
    )
    rows = RowLog(str(source), progress=progress)
    spool = PartitionSpool(store, module.SPEC.producer, summary)
    convert(
        module.read_sessions(source, rows, seed=seed, limit=limit),
        spec=module.SPEC,
        sampler=NegativeSampler(popularity.windows),
        popularity=popularity,
        window_of=module.window_of,
        spool=spool,
        summary=summary,
        negatives_per_positive=negatives_per_positive,
        seed=seed,
    )
    spool.finish()
    summary.source = rows.source
    summary.rows_read = rows.read
    summary.rows_converted = rows.converted
    summary.rows_skipped = dict(rows.skipped)
    summary.skipped_examples = list(rows.examples)
    summary.seconds = time.perf_counter() - started
    return summary


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from loopline.config import settings

    current = settings()
    out_uri = args.out or current.log_store_uri
    progress_bar = None
    try:
        from tqdm import tqdm

        # disable=None: a bar only on an interactive terminal; logs and pipes stay quiet.
        progress_bar = tqdm(desc=f"import {args.dataset}", unit=" rows", unit_scale=True, disable=None, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is pinned, this is only a fallback
        pass
    try:
        summary = import_dataset(
            args.dataset,
            args.path,
            out_uri,
            negatives_per_positive=args.negatives,
            seed=args.seed,
            s3_endpoint_url=current.s3_endpoint_url,
            limit=args.limit,
            progress=progress_bar.update if progress_bar is not None else None,
        )
    except ImportInputError as error:
        print(f"loopline import {args.dataset}: {error}", file=sys.stderr)
        return 2
    except ImportConflictError as error:
        print(f"loopline import {args.dataset}: {error}", file=sys.stderr)
        return 1
    finally:
        if progress_bar is not None:
            progress_bar.close()
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``loopline import {otto,uci-eshop,movielens} PATH [--out URI] [--negatives N] [--seed S]``."""
    parser = subparsers.add_parser(
        "import",
        help="convert a real log (OTTO, UCI e-shop, MovieLens) into schema v1 partitions",
        description="Convert OTTO session JSON lines, the UCI e-shop clickstream or MovieLens ratings into "
        "schema v1 events (with seeded, sampled negative impressions) in hourly log partitions. "
        "Prints a JSON summary. The mapping of each format is in docs/importers.md.",
    )
    parser.add_argument("dataset", choices=list(DATASETS), help="source format")
    parser.add_argument("path", type=Path, help="source file (or a folder holding it); the .zip for uci-eshop")
    parser.add_argument("--out", metavar="URI", default=None, help="log store URI (default: LOOPLINE_LOG_STORE_URI)")
    parser.add_argument(
        "--negatives",
        metavar="N",
        type=_count,
        default=DEFAULT_NEGATIVES,
        help=f"sampled negative impressions per request (default {DEFAULT_NEGATIVES})",
    )
    parser.add_argument("--seed", metavar="S", type=int, default=0, help="seed of negatives, positions, UCI times")
    parser.add_argument(
        "--limit", metavar="ROWS", type=_count, default=None, help="stop after this many source rows (a preview)"
    )
    parser.set_defaults(handler=_run)
