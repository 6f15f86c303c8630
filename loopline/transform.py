"""Run the dbt project (``dbt/``) that turns ``raw_events`` into the marts, from Python.

``run_dbt`` maps a warehouse URI (``duckdb:///path`` or ``postgresql://user[:pw]@host:port/db``) to the
environment variables ``dbt/profiles.yml`` reads and to its target (``local`` = DuckDB, ``stack`` =
PostgreSQL), invokes dbt in-process and returns a ``DbtResult``; a failed model or test raises
``DbtBuildError`` naming each failing node. dbt's ``target/`` and ``logs/`` go under LOOPLINE_HOME (or a
given directory), never into the checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from loopline.config import environment, mask_uri, settings

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt"
MART_TABLES = ("training_examples", "user_features", "item_features")
ITEM_CATALOG_TABLE = "item_catalog"
ITEM_CATALOG_COLUMNS = ("item_id", "category", "price")

# Node statuses that make a run fail ("warn" does not).
FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})

# Environment variables read by dbt/profiles.yml.
ENV_TARGET = "LOOPLINE_DBT_TARGET"
ENV_DUCKDB_PATH = "LOOPLINE_DBT_DUCKDB_PATH"
ENV_PG_HOST = "LOOPLINE_DBT_PG_HOST"
ENV_PG_PORT = "LOOPLINE_DBT_PG_PORT"
ENV_PG_USER = "LOOPLINE_DBT_PG_USER"
ENV_PG_DATABASE = "LOOPLINE_DBT_PG_DATABASE"
ENV_PG_PASSWORD = "DBT_ENV_SECRET_LOOPLINE_PG_PASSWORD"  # DBT_ENV_SECRET_* values are scrubbed from logs
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


class DbtBuildError(RuntimeError):
    """A dbt invocation failed; the message names every failing model or test and dbt's message."""

    def __init__(self, message: str, result: DbtResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class NodeResult:
    """The outcome of one dbt node (model, data test, unit test, seed...)."""

    name: str
    unique_id: str
    resource_type: str
    status: str
    message: str | None
    execution_time: float
    failures: int | None = None

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES


@dataclass(frozen=True)
class DbtResult:
    """What one dbt invocation did: overall success, its invocation id (for lineage), each node."""

    command: str
    success: bool
    invocation_id: str | None
    target: str
    run_date: str | None
    vars: dict[str, Any]
    nodes: tuple[NodeResult, ...] = ()
    elapsed_seconds: float = 0.0
    target_path: str = ""
    error: str | None = None
    status_counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed_nodes(self) -> tuple[NodeResult, ...]:
        return tuple(node for node in self.nodes if node.failed)

    def node(self, name: str) -> NodeResult:
        """The result of the node called ``name``; KeyError if the invocation did not run it."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"dbt node {name!r} is not in this result; ran: {sorted(n.name for n in self.nodes)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for XCom and audit records)."""
        record = asdict(self)
        record["nodes"] = [asdict(node) for node in self.nodes]
        return record


@dataclass(frozen=True)
class WarehouseTarget:
    """A warehouse URI resolved to the dbt target and the profile's environment variables."""

    target: str  # "local" (DuckDB) or "stack" (PostgreSQL)
    env: dict[str, str]


def resolve_warehouse(warehouse_uri: str) -> WarehouseTarget:
    """Map ``duckdb:///abs/path.duckdb`` or ``postgresql://user[:pw]@host[:port]/db`` to profile env vars.

    raw_events and the marts live in the default schema (``main`` on DuckDB, ``public`` on
    PostgreSQL) unless LOOPLINE_DBT_SCHEMA / LOOPLINE_DBT_SOURCE_SCHEMA are set in the environment.
    """
    parts = urlsplit(warehouse_uri)
    if parts.scheme == "duckdb":
        raw_path = unquote(parts.netloc + parts.path)
        if not raw_path.startswith("/") or raw_path.endswith(":memory:"):
            raise ValueError(
                f"warehouse URI {mask_uri(warehouse_uri)!r}: expected duckdb:///abs/path/to/file.duckdb "
                "(an absolute file path; dbt cannot build into memory)"
            )
        return WarehouseTarget("local", {ENV_TARGET: "local", ENV_DUCKDB_PATH: str(Path(raw_path))})
    if parts.scheme in ("postgresql", "postgres"):
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database:
            raise ValueError(
                f"warehouse URI {mask_uri(warehouse_uri)!r}: expected postgresql://user[:password]@host[:port]/database"
            )
        env = {
            ENV_TARGET: "stack",
            ENV_PG_HOST: parts.hostname,
            ENV_PG_PORT: str(parts.port or 5432),
            ENV_PG_USER: unquote(parts.username or "postgres"),
            ENV_PG_PASSWORD: unquote(parts.password or ""),
            ENV_PG_DATABASE: database,
        }
        return WarehouseTarget("stack", env)
    raise ValueError(
        f"warehouse URI {mask_uri(warehouse_uri)!r}: expected a duckdb:/// or postgresql:// URI, "
        f"got scheme {parts.scheme!r}"
    )


def _release_duckdb() -> None:
    """Close the DuckDB database that dbt-duckdb keeps open in-process after an invocation.

    dbt-duckdb caches one environment (and so the database file's lock) per process; without this,
    another process could not open the warehouse until this one exits, and this process could not
    reopen it with another configuration (e.g. read-only).
    """
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # pragma: no cover - dbt-duckdb is pinned in requirements.txt
        return
    with DuckDBConnectionManager._LOCK:
        environment = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
        if environment is not None:
            environment.close()


def _node_results(execution: Any) -> tuple[NodeResult, ...]:
    nodes = []
    for item in getattr(execution, "results", None) or ():
        node = item.node
        nodes.append(
            NodeResult(
                name=node.name,
                unique_id=node.unique_id,
                resource_type=str(node.resource_type),
                status=str(item.status),
                message=item.message,
                execution_time=round(float(item.execution_time or 0.0), 3),
                failures=item.failures,
            )
        )
    return tuple(nodes)


def _invocation_id(target_path: Path) -> str | None:
    """The invocation id from run_results.json (written by build/run/test/seed), else dbt's current one."""
    run_results = target_path / "run_results.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads(run_results.read_text())["metadata"]["invocation_id"]
    with contextlib.suppress(ImportError):
        from dbt_common.invocation import get_invocation_id

        return get_invocation_id()
    return None


def _failure_message(result: DbtResult) -> str:
    failed = result.failed_nodes
    skipped = sum(1 for node in result.nodes if node.status == "skipped")
    lines = [
        f"dbt {result.command} failed on target {result.target!r}"
        + (f" for run_date {result.run_date}" if result.run_date else "")
        + f": {len(failed)} of {len(result.nodes)} nodes failed"
        + (f", {skipped} skipped" if skipped else "")
    ]
    for node in failed:
        message = " ".join((node.message or "").split())
        lines.append(f"  {node.resource_type} {node.name} [{node.status}]: {message}")
    if result.error:
        lines.append(f"  {result.error}")
    return "\n".join(lines)


def run_dbt(
    command: str = "build",
    *,
    run_date: date | None = None,
    warehouse_uri: str | None = None,
    select: list[str] | None = None,
    extra_vars: dict | None = None,
    target_dir: Path | None = None,
    full_refresh: bool = False,
    project_dir: Path | None = None,
) -> DbtResult:
    """Invoke ``dbt <command>`` on the Loopline project and return its result; raise DbtBuildError on failure.

    ``run_date`` sets the dbt var of the same name: the marts then replace that day and its late-event
    lookback (see dbt/README.md); without it every day present in raw_events is rebuilt.
    ``target_dir`` is dbt's target path (logs go to ``target_dir/logs``); default
    ``LOOPLINE_HOME/dbt/target``. ``full_refresh`` drops and recreates the marts: only allowed without
    ``run_date`` (a full refresh for one day would keep only that day).
    """
    if full_refresh and run_date is not None:
        raise ValueError("full_refresh with a run_date would rebuild the marts from that one day only; omit run_date")
    if run_date is not None and (not isinstance(run_date, date) or isinstance(run_date, datetime)):
        raise TypeError(f"run_date: expected a datetime.date (a UTC day), got {type(run_date).__name__}")
    uri = warehouse_uri or settings().warehouse_uri
    warehouse = resolve_warehouse(uri)
    project = Path(project_dir or DBT_PROJECT_DIR).resolve()
    if not (project / "dbt_project.yml").is_file():
        raise FileNotFoundError(f"dbt project {project}: expected a dbt_project.yml there")
    target_path = Path(target_dir or settings().home / "dbt" / "target").resolve()
    log_path = target_path / "logs"
    target_path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (target_path / "run_results.json").unlink()  # never report a previous invocation's id

    variables: dict[str, Any] = dict(extra_vars or {})
    if run_date is not None:
        variables["run_date"] = run_date.isoformat()
    args = [
        *command.split(),
        "--project-dir",
        str(project),
        "--profiles-dir",
        str(project),
        "--target",
        warehouse.target,
        "--target-path",
        str(target_path),
        "--log-path",
        str(log_path),
    ]
    if variables:
        args += ["--vars", json.dumps(variables, sort_keys=True, default=str)]
    if select:
        args += ["--select", *select]
    if full_refresh:
        args.append("--full-refresh")

    from dbt.cli.main import dbtRunner  # imported late: importing dbt takes about 3 s

    started = time.perf_counter()
    with environment({**TELEMETRY_OFF, **warehouse.env}):
        try:
            outcome = dbtRunner().invoke(args)
        finally:
            if warehouse.target == "local":
                _release_duckdb()
    elapsed = time.perf_counter() - started

    nodes = _node_results(outcome.result)
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.status] = counts.get(node.status, 0) + 1
    result = DbtResult(
        command=command,
        success=bool(outcome.success),
        invocation_id=_invocation_id(target_path),
        target=warehouse.target,
        run_date=variables.get("run_date"),
        vars=variables,
        nodes=nodes,
        elapsed_seconds=round(elapsed, 3),
        target_path=str(target_path),
        error=None if outcome.exception is None else f"{type(outcome.exception).__name__}: {outcome.exception}",
        status_counts=counts,
    )
    if not result.success:
        raise DbtBuildError(_failure_message(result), result)
    return result


def mart_checksum(table: str, warehouse_uri: str | None = None, *, where: str = "") -> str:
    """A fingerprint of every row of ``table`` (optionally ``where`` a SQL condition), order-independent.

    Uses ``Warehouse.table_checksum``, which renders values canonically, so equal checksums mean equal
    contents, across runs and across DuckDB and PostgreSQL.
    """
    from loopline.warehouse import Warehouse, WarehouseError

    uri = warehouse_uri or settings().warehouse_uri
    with Warehouse.from_uri(uri) as warehouse:
        columns = warehouse.columns_of(table)
        if not columns:
            raise WarehouseError(f"table {table} does not exist in {warehouse.display_uri}; run dbt build first")
        return warehouse.table_checksum(table, columns, where=where)


def mart_checksums(warehouse_uri: str | None = None, *, tables: Sequence[str] = MART_TABLES) -> dict[str, str]:
    """``mart_checksum`` of each mart table."""
    return {table: mart_checksum(table, warehouse_uri) for table in tables}


def _read_catalog(csv_path: Path) -> Any:
    import pyarrow as pa

    item_ids: list[str] = []
    categories: list[str | None] = []
    prices: list[float | None] = []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in ITEM_CATALOG_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"item catalog {csv_path}: expected a header with {', '.join(ITEM_CATALOG_COLUMNS)}, "
                f"missing {', '.join(missing)}"
            )
        for line_number, record in enumerate(reader, start=2):
            item_id = (record["item_id"] or "").strip()
            if not item_id:
                raise ValueError(f"item catalog {csv_path}, line {line_number}: item_id is empty")
            price_text = (record["price"] or "").strip()
            try:
                price = float(price_text) if price_text else None
            except ValueError:
                raise ValueError(
                    f"item catalog {csv_path}, line {line_number}: price {price_text!r} is not a number"
                ) from None
            item_ids.append(item_id)
            categories.append((record["category"] or "").strip() or None)
            prices.append(price)
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.string()),
            "category": pa.array(categories, pa.string()),
            "price": pa.array(prices, pa.float64()),
        }
    )


def load_item_catalog(csv_path: Path, warehouse_uri: str | None = None) -> int:
    """Replace the warehouse's ``item_catalog`` (item_id, category, price) with a CSV's rows; return the count.

    The catalog is optional: the dbt project creates it empty when missing and maps items absent
    from it to category 'unknown'.
    """
    from loopline.warehouse import Column, Table, Warehouse

    rows = _read_catalog(Path(csv_path))
    table = Table(
        ITEM_CATALOG_TABLE,
        (Column("item_id", "varchar"), Column("category", "varchar"), Column("price", "double")),
    )
    uri = warehouse_uri or settings().warehouse_uri
    with Warehouse.from_uri(uri) as warehouse:
        warehouse.ensure_table(table)
        with warehouse.transaction():
            warehouse.execute(f"delete from {ITEM_CATALOG_TABLE}")
            warehouse.load_arrow(ITEM_CATALOG_TABLE, rows)
    return rows.num_rows


def _cli_build(args: argparse.Namespace) -> int:
    try:
        result = run_dbt(
            args.dbt_command,
            run_date=args.date,
            select=args.select or None,
            full_refresh=args.full_refresh,
        )
    except DbtBuildError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.to_dict().items() if k != "nodes"}, indent=2))
    return 0


def _cli_load_catalog(args: argparse.Namespace) -> int:
    count = load_item_catalog(args.csv)
    print(f"loaded {count} items into {ITEM_CATALOG_TABLE}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``loopline transform {build,load-catalog}``."""
    parser = subparsers.add_parser("transform", help="run the dbt project (raw_events -> marts)")
    actions = parser.add_subparsers(dest="transform_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="dbt build (or --command run/test) for a day or everything")
    build.add_argument("--date", type=date.fromisoformat, help="run date YYYY-MM-DD (default: every day)")
    build.add_argument("--select", nargs="*", help="dbt selectors")
    build.add_argument("--command", dest="dbt_command", default="build", help="dbt command (default build)")
    build.add_argument("--full-refresh", action="store_true", help="recreate the marts (only without --date)")
    build.set_defaults(handler=_cli_build)
    catalog = actions.add_parser("load-catalog", help="replace item_catalog from a CSV (item_id,category,price)")
    catalog.add_argument("csv", type=Path)
    catalog.set_defaults(handler=_cli_load_catalog)
