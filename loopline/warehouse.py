"""The warehouse: one small interface over DuckDB (local profile) and PostgreSQL (stack profile).

Every stage that reads or writes warehouse tables (ingestion, dbt checks, Feast, audit trails) goes
through ``Warehouse.from_uri(uri)``, so the same code and the same tests run on both engines:

- SQL takes ``?`` placeholders on both engines (translated to psycopg2's ``%s`` for PostgreSQL);
- ``transaction()`` groups statements atomically; outside it every statement commits by itself;
- ``load_arrow`` bulk-loads Arrow data (DuckDB: a registered Arrow view and ``INSERT ... SELECT``;
  PostgreSQL: ``COPY ... FROM STDIN`` in CSV), the fast path for large batches;
- ``table_checksum`` fingerprints a table's rows identically on both engines, so idempotency and
  engine parity can be checked by comparing two strings;
- tables are declared once as ``Table`` specs with portable column types (``COLUMN_TYPES``).

Both engines run with the session time zone set to UTC, and timestamps are ``timestamptz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa

# Portable column types -> (DuckDB type, PostgreSQL type). JSON documents are stored as text so
# that both engines, dbt and pandas read them the same way.
COLUMN_TYPES: dict[str, tuple[str, str]] = {
    "varchar": ("VARCHAR", "VARCHAR"),
    "json": ("VARCHAR", "VARCHAR"),
    "smallint": ("SMALLINT", "SMALLINT"),
    "integer": ("INTEGER", "INTEGER"),
    "bigint": ("BIGINT", "BIGINT"),
    "double": ("DOUBLE", "DOUBLE PRECISION"),
    "boolean": ("BOOLEAN", "BOOLEAN"),
    "date": ("DATE", "DATE"),
    "timestamptz": ("TIMESTAMPTZ", "TIMESTAMPTZ"),
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CHECKSUM_BATCH_ROWS = 10_000


class WarehouseError(RuntimeError):
    """A warehouse URI, table or statement Loopline cannot use; the message says which and why."""


@dataclass(frozen=True)
class Column:
    """One column of a table: a name and a portable type from ``COLUMN_TYPES``."""

    name: str
    type: str
    nullable: bool = True

    def __post_init__(self) -> None:
        check_identifier(self.name)
        if self.type not in COLUMN_TYPES:
            raise WarehouseError(f"column {self.name}: type {self.type!r} is not one of {sorted(COLUMN_TYPES)}")


@dataclass(frozen=True)
class Table:
    """A table declared once for both engines; ``indexes`` are created on PostgreSQL only.

    DuckDB keeps min/max statistics per row group, which serve the partition filters Loopline uses;
    an ART index there would only slow bulk loads and deletes.
    """

    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    primary_key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_identifier(self.name)
        names = [column.name for column in self.columns]
        if len(set(names)) != len(names):
            raise WarehouseError(f"table {self.name}: duplicate column names in {names}")
        for key in (*self.indexes, self.primary_key):
            missing = set(key) - set(names)
            if missing:
                raise WarehouseError(f"table {self.name}: index or key names unknown columns {sorted(missing)}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, ``_``); raise otherwise.

    Table and column names are interpolated into SQL, so only plain identifiers are accepted.
    """
    if not _IDENTIFIER.match(name):
        raise WarehouseError(f"{name!r} is not a plain SQL identifier (letters, digits and '_', max 63)")
    return name


def _quoted(name: str) -> str:
    return f'"{check_identifier(name)}"'


# --- the core tables of the loop (ingestion writes them; dbt, audits and reports read them) -------

RAW_EVENTS = Table(
    "raw_events",
    (
        Column("event_id", "varchar", nullable=False),
        Column("event_type", "varchar", nullable=False),
        Column("event_at", "timestamptz", nullable=False),
        Column("event_date", "date", nullable=False),
        Column("user_id", "varchar", nullable=False),
        Column("item_id", "varchar", nullable=False),
        Column("request_id", "varchar", nullable=False),
        Column("position", "integer", nullable=False),
        Column("model_version", "varchar", nullable=False),
        Column("variant", "varchar", nullable=False),
        Column("page", "varchar", nullable=False),
        Column("device", "varchar", nullable=False),
        Column("price", "double", nullable=False),
        Column("query", "varchar"),
        Column("log_date", "date", nullable=False),
        Column("log_hour", "smallint", nullable=False),
        Column("source_uri", "varchar", nullable=False),
        Column("line_number", "integer", nullable=False),
        Column("ingest_run_id", "varchar", nullable=False),
        Column("ingested_at", "timestamptz", nullable=False),
    ),
    indexes=(("log_date", "log_hour"), ("event_date",)),
)

QUARANTINE_EVENTS = Table(
    "quarantine_events",
    (
        Column("ingest_run_id", "varchar", nullable=False),
        Column("log_date", "date", nullable=False),
        Column("log_hour", "smallint", nullable=False),
        Column("source_uri", "varchar", nullable=False),
        Column("line_number", "integer", nullable=False),
        Column("reason", "varchar", nullable=False),
        Column("detail", "varchar"),
        Column("raw_base64", "varchar", nullable=False),
        Column("raw_bytes", "integer", nullable=False),
        Column("raw_sha256", "varchar", nullable=False),
        Column("is_truncated", "boolean", nullable=False),
    ),
    indexes=(("log_date", "log_hour"),),
)

INGEST_RUNS = Table(
    "ingest_runs",
    (
        Column("run_id", "varchar", nullable=False),
        Column("interval_start", "timestamptz", nullable=False),
        Column("interval_end", "timestamptz", nullable=False),
        Column("sources", "json", nullable=False),
        Column("lines_read", "bigint", nullable=False),
        Column("loaded", "bigint", nullable=False),
        Column("duplicates", "bigint", nullable=False),
        Column("quarantined", "bigint", nullable=False),
        Column("quarantined_by_reason", "json", nullable=False),
        Column("redactions_by_type", "json", nullable=False),
        Column("started_at", "timestamptz", nullable=False),
        Column("finished_at", "timestamptz", nullable=False),
        Column("status", "varchar", nullable=False),
        Column("quarantine_uri", "varchar"),
    ),
    indexes=(("interval_start",),),
    primary_key=("run_id",),
)

CORE_TABLES = (RAW_EVENTS, QUARANTINE_EVENTS, INGEST_RUNS)


class Warehouse(ABC):
    """A connection to the warehouse; use ``Warehouse.from_uri`` and close it (or use ``with``)."""

    dialect: ClassVar[str]

    def __init__(self, uri: str):
        self.uri = uri
        self._transaction_depth = 0

    # --- construction -------------------------------------------------------------------------

    @staticmethod
    def from_uri(uri: str) -> Warehouse:
        """``duckdb:///abs/path.duckdb[?memory_limit=1GB&threads=2]`` or ``postgresql://user@host:port/db``."""
        scheme = urlsplit(uri).scheme
        if scheme == "duckdb":
            return DuckDBWarehouse(uri)
        if scheme in ("postgresql", "postgres"):
            return PostgresWarehouse(uri)
        raise WarehouseError(f"warehouse URI {uri!r}: expected duckdb:///path or postgresql://user@host:port/db")

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Close the connection (uncommitted work is rolled back)."""

    # --- statements ---------------------------------------------------------------------------

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement with ``?`` placeholders; it commits at once unless inside ``transaction()``."""

    @abstractmethod
    def iter_query(self, sql: str, params: Sequence[Any] | None = None, batch_rows: int = 10_000) -> Iterator[tuple]:
        """Stream the rows of a query as tuples, ``batch_rows`` at a time (memory stays flat)."""

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """All rows of a query as tuples."""
        return list(self.iter_query(sql, params))

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row (None if there is no row)."""
        with contextlib.closing(self.iter_query(sql, params, batch_rows=1)) as rows:
            for row in rows:
                return row[0]
        return None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Warehouse]:
        """Run the block atomically: commit at its end, roll back if it raises. Nesting joins the outer one."""
        if self._transaction_depth:
            self._transaction_depth += 1
            try:
                yield self
            finally:
                self._transaction_depth -= 1
            return
        self._begin()
        self._transaction_depth = 1
        try:
            yield self
        except BaseException:
            self._transaction_depth = 0
            self._rollback()
            raise
        self._transaction_depth = 0
        self._commit()

    @property
    def in_transaction(self) -> bool:
        return self._transaction_depth > 0

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    # --- tables -------------------------------------------------------------------------------

    def _type(self, portable: str) -> str:
        duckdb_type, postgres_type = COLUMN_TYPES[portable]
        return duckdb_type if self.dialect == "duckdb" else postgres_type

    def _create_sql(self, table: Table, *, temporary: bool) -> str:
        parts = [f"{_quoted(c.name)} {self._type(c.type)}" + ("" if c.nullable else " NOT NULL") for c in table.columns]
        if table.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(map(_quoted, table.primary_key))})")
        kind = "TEMPORARY TABLE" if temporary else "TABLE"
        return f"CREATE {kind} IF NOT EXISTS {_quoted(table.name)} ({', '.join(parts)})"

    def ensure_table(self, table: Table) -> None:
        """Create ``table`` if it is missing; raise if an existing one lacks any declared column."""
        self.execute(self._create_sql(table, temporary=False))
        present = set(self.columns_of(table.name))
        missing = [name for name in table.column_names if name not in present]
        if missing:
            raise WarehouseError(
                f"table {table.name} in {self.display_uri} lacks columns {missing}; "
                "it was made by an older Loopline: migrate it (Loopline never alters tables by itself)"
            )
        if self.dialect == "postgresql":
            for columns in table.indexes:
                index_name = check_identifier(f"{table.name}__{'_'.join(columns)}"[:63])
                self.execute(
                    f"CREATE INDEX IF NOT EXISTS {_quoted(index_name)} ON {_quoted(table.name)} "
                    f"({', '.join(map(_quoted, columns))})"
                )

    def ensure_schema(self, tables: Iterable[Table] = CORE_TABLES) -> None:
        """Create the given tables (default: the loop's core tables) where they are missing."""
        for table in tables:
            self.ensure_table(table)

    def create_scratch_table(self, table: Table) -> None:
        """Create a private, temporary table for staging (dropped with the connection); replaces any old one."""
        self.drop_table(table.name)
        self.execute(self._create_sql(table, temporary=True))

    def drop_table(self, name: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {_quoted(name)}")

    @abstractmethod
    def columns_of(self, table: str) -> list[str]:
        """Column names of an existing table (temporary ones included), in order; empty if it does not exist."""

    def table_exists(self, table: str) -> bool:
        return bool(self.columns_of(table))

    def row_count(self, table: str, where: str = "", params: Sequence[Any] | None = None) -> int:
        """``SELECT count(*)`` of a table, optionally with a ``WHERE`` clause (without the keyword)."""
        clause = f" WHERE {where}" if where else ""
        return int(self.scalar(f"SELECT count(*) FROM {_quoted(table)}{clause}", params))

    # --- bulk loading -------------------------------------------------------------------------

    @abstractmethod
    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatch) -> int:
        """Append Arrow rows to ``table`` (columns matched by name); returns the number of rows."""

    @abstractmethod
    def query_arrow(self, name: str, data: pa.Table, sql: str) -> list[tuple]:
        """Run one statement in which the Arrow rows ``data`` are the relation ``name`` (e.g. to join them).

        No ``?`` parameters: values belong in ``data``. DuckDB reads the Arrow memory in place;
        PostgreSQL gets a temporary table loaded with COPY for the statement.
        """

    # --- fingerprints -------------------------------------------------------------------------

    def table_checksum(
        self, table: str, columns: Sequence[str], where: str = "", params: Sequence[Any] | None = None
    ) -> str:
        """A SHA-256 fingerprint of the multiset of rows (given columns), equal on DuckDB and PostgreSQL.

        Each row is rendered as canonical text in Python (UTC ISO timestamps, shortest float repr,
        ``\\N`` for NULL) and hashed; the row hashes are added modulo 2**256, so the result does not
        depend on row order (the engines sort text differently) but does count duplicate rows.
        """
        select = ", ".join(map(_quoted, columns))
        clause = f" WHERE {where}" if where else ""
        total = 0
        count = 0
        rows = self.iter_query(f"SELECT {select} FROM {_quoted(table)}{clause}", params, _CHECKSUM_BATCH_ROWS)
        for row in rows:
            text = "\t".join(map(canonical_text, row)).encode("utf-8", "surrogatepass")
            total += int.from_bytes(hashlib.sha256(text).digest(), "big")
            count += 1
        total %= 1 << 256
        summary = f"{table}|{','.join(columns)}|{count}|{total:064x}"
        return hashlib.sha256(summary.encode()).hexdigest()

    @property
    def display_uri(self) -> str:
        """The URI with any password hidden (for messages and logs)."""
        from loopline.config import mask_uri

        return mask_uri(self.uri)


def canonical_text(value: Any) -> str:
    """One value as engine-independent text (used by ``table_checksum``)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, Decimal):
        return repr(float(value))
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    raise WarehouseError(f"no canonical text for a {type(value).__name__} value ({value!r:.80})")


def to_qmark_params(sql: str) -> str:
    """Translate ``?`` placeholders to psycopg2's ``%s`` (and ``%`` to ``%%``), outside quoted text."""
    output: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote:
            if char == quote:
                quote = None
            output.append("%%" if char == "%" else char)
        elif char in ("'", '"'):
            quote = char
            output.append(char)
        elif char == "?":
            output.append("%s")
        elif char == "%":
            output.append("%%")
        else:
            output.append(char)
    return "".join(output)


class DuckDBWarehouse(Warehouse):
    """A DuckDB database file (the local profile). One writer process at a time."""

    dialect = "duckdb"
    _CONFIG_KEYS = {"memory_limit", "threads", "temp_directory", "max_temp_directory_size", "preserve_insertion_order"}

    def __init__(self, uri: str):
        super().__init__(uri)
        import duckdb

        parts = urlsplit(uri)
        location = unquote(parts.netloc + parts.path)
        config: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query):
            if key not in self._CONFIG_KEYS:
                raise WarehouseError(f"warehouse URI {uri!r}: unknown DuckDB option {key!r}; use {self._CONFIG_KEYS}")
            config[key] = value
        if location in (":memory:", "/:memory:"):
            location = ":memory:"
        else:
            if not location.startswith("/"):
                raise WarehouseError(f"warehouse URI {uri!r}: expected an absolute path, duckdb:///abs/path.duckdb")
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        self.path = location
        try:
            self._connection = duckdb.connect(location, config=config)
        except duckdb.Error as error:
            raise WarehouseError(f"cannot open DuckDB warehouse {location}: {error}") from None
        self._connection.execute("SET TimeZone = 'UTC'")

    def close(self) -> None:
        self._connection.close()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._connection.execute(sql, params)

    def iter_query(self, sql: str, params: Sequence[Any] | None = None, batch_rows: int = 10_000) -> Iterator[tuple]:
        # The main connection, so a query inside transaction() sees that transaction's changes; read
        # the rows to the end before the next statement (DuckDB has one open result per connection).
        result = self._connection.execute(sql, params)
        while rows := result.fetchmany(batch_rows):
            yield from rows

    def _begin(self) -> None:
        self._connection.execute("BEGIN TRANSACTION")

    def _commit(self) -> None:
        self._connection.execute("COMMIT")

    def _rollback(self) -> None:
        self._connection.execute("ROLLBACK")

    def columns_of(self, table: str) -> list[str]:
        rows = self._connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [check_identifier(table)],
        ).fetchall()
        return [row[0] for row in rows]

    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatch) -> int:
        if data.num_rows == 0:
            return 0
        columns = ", ".join(map(_quoted, data.schema.names))
        self.query_arrow(
            "loopline_arrow", data, f"INSERT INTO {_quoted(table)} ({columns}) SELECT {columns} FROM loopline_arrow"
        )
        return data.num_rows

    def query_arrow(self, name: str, data: pa.Table | pa.RecordBatch, sql: str) -> list[tuple]:
        # A relation over the Arrow data, not register(): a registered object stays referenced until
        # the transaction ends, so a long load would keep every batch in memory.
        relation = self._connection.from_arrow(data)
        result = relation.query(check_identifier(name), sql)
        return result.fetchall() if result is not None else []


class PostgresWarehouse(Warehouse):
    """A PostgreSQL database (the stack profile); credentials come from the URI / environment."""

    dialect = "postgresql"

    def __init__(self, uri: str):
        super().__init__(uri)
        import psycopg2

        try:
            self._connection = psycopg2.connect(uri, options="-c TimeZone=UTC")
        except psycopg2.Error as error:
            raise WarehouseError(f"cannot connect to PostgreSQL warehouse {self.display_uri}: {error}") from None
        self._cursor_counter = itertools.count()

    def close(self) -> None:
        self._connection.close()

    def _after_statement(self, failed: bool) -> None:
        if self.in_transaction:
            return
        if failed:
            self._connection.rollback()
        else:
            self._connection.commit()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        statement = to_qmark_params(sql) if params is not None else sql
        failed = True
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(statement, params)
            failed = False
        finally:
            self._after_statement(failed)

    def iter_query(self, sql: str, params: Sequence[Any] | None = None, batch_rows: int = 10_000) -> Iterator[tuple]:
        statement = to_qmark_params(sql) if params is not None else sql
        # A named (server-side) cursor streams; it lives inside the current transaction.
        cursor = self._connection.cursor(name=f"loopline_cursor_{next(self._cursor_counter)}")
        cursor.itersize = batch_rows
        failed = True
        try:
            cursor.execute(statement, params)
            while rows := cursor.fetchmany(batch_rows):
                yield from rows
            failed = False
        finally:
            cursor.close()
            self._after_statement(failed)

    def _begin(self) -> None:
        self._connection.rollback()  # psycopg2 opens a transaction implicitly; start clean

    def _commit(self) -> None:
        self._connection.commit()

    def _rollback(self) -> None:
        self._connection.rollback()

    def columns_of(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            [_quoted(table)],
        )
        return [row[0] for row in rows]

    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatch) -> int:
        import pyarrow.csv as pa_csv

        if data.num_rows == 0:
            return 0
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        buffer = io.BytesIO()
        # Every valid value is quoted, so an empty string stays distinct from NULL (an unquoted empty field).
        pa_csv.write_csv(data, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
        buffer.seek(0)
        columns = ", ".join(map(_quoted, data.schema.names))
        failed = True
        try:
            with self._connection.cursor() as cursor:
                cursor.copy_expert(f"COPY {_quoted(table)} ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)
            failed = False
        finally:
            self._after_statement(failed)
        return data.num_rows

    def query_arrow(self, name: str, data: pa.Table, sql: str) -> list[tuple]:
        columns = []
        for field in data.schema:
            portable = _ARROW_TO_PORTABLE.get(str(field.type)) or (
                "timestamptz" if pa.types.is_timestamp(field.type) else None
            )
            if portable is None:
                raise WarehouseError(f"column {field.name}: Arrow type {field.type} has no warehouse type")
            columns.append(Column(field.name, portable))
        self.create_scratch_table(Table(name, tuple(columns)))
        try:
            self.load_arrow(name, data)
            failed = True
            try:
                with self._connection.cursor() as cursor:
                    cursor.execute(sql)
                    rows = cursor.fetchall() if cursor.description else []
                failed = False
            finally:
                self._after_statement(failed)
            return rows
        finally:
            self.drop_table(name)


_ARROW_TO_PORTABLE = {
    "string": "varchar",
    "large_string": "varchar",
    "int16": "smallint",
    "int32": "integer",
    "int64": "bigint",
    "double": "double",
    "bool": "boolean",
    "date32[day]": "date",
}
