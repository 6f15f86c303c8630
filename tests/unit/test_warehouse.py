"""Warehouse interface: the same tests on DuckDB and PostgreSQL, and checksums that agree across them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from loopline.warehouse import (
    CORE_TABLES,
    RAW_EVENTS,
    Column,
    Table,
    Warehouse,
    WarehouseError,
    canonical_text,
    check_identifier,
    to_qmark_params,
)

# The names dbt models are built on: renaming one breaks the marts.
RAW_EVENTS_CONTRACT = [
    "event_id", "event_type", "event_at", "event_date", "user_id", "item_id", "request_id", "position",
    "model_version", "variant", "page", "device", "price", "query", "log_date", "log_hour", "source_uri",
    "line_number", "ingest_run_id", "ingested_at",
]  # fmt: skip

SAMPLE = Table(
    "sample",
    (
        Column("name", "varchar", nullable=False),
        Column("note", "varchar"),
        Column("amount", "double"),
        Column("count", "integer"),
        Column("small", "smallint"),
        Column("big", "bigint"),
        Column("flag", "boolean"),
        Column("day", "date"),
        Column("moment", "timestamptz"),
        Column("document", "json"),
    ),
)
SAMPLE_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("note", pa.string()),
        ("amount", pa.float64()),
        ("count", pa.int32()),
        ("small", pa.int16()),
        ("big", pa.int64()),
        ("flag", pa.bool_()),
        ("day", pa.date32()),
        ("moment", pa.timestamp("us", tz="UTC")),
        ("document", pa.string()),
    ]
)
# Values that trip CSV, quoting or float formatting if the bulk path gets them wrong.
SAMPLE_ROWS = [
    {
        "name": "plain",
        "note": None,
        "amount": 0.1,
        "count": 1,
        "small": 7,
        "big": 2**40,
        "flag": True,
        "day": date(2024, 2, 29),
        "moment": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "document": '{"a": [1, 2]}',
    },
    {
        "name": "empty note",
        "note": "",
        "amount": 1e-7,
        "count": -5,
        "small": -1,
        "big": -(2**62),
        "flag": False,
        "day": date(1999, 12, 31),
        "moment": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        "document": "{}",
    },
    {
        "name": 'quote " comma , newline \n tab \t backslash \\ percent % question ?',
        "note": "ünïcödé ✓ 中文",
        "amount": 1 / 3,
        "count": 2**31 - 1,
        "small": 32767,
        "big": None,
        "flag": None,
        "day": None,
        "moment": None,
        "document": None,
    },
    {
        "name": "large",
        "note": "NULL",
        "amount": 123456789.123,
        "count": 0,
        "small": 0,
        "big": 0,
        "flag": True,
        "day": date(2024, 1, 1),
        "moment": datetime(2024, 1, 1, tzinfo=UTC),
        "document": "[]",
    },
]


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request, tmp_path: Path):
    if request.param == "duckdb":
        uri = f"duckdb://{tmp_path / 'warehouse.duckdb'}"
    else:
        uri = request.getfixturevalue("postgres_url")
    with Warehouse.from_uri(uri) as opened:
        yield opened


def _sample_table() -> pa.Table:
    return pa.Table.from_pylist(SAMPLE_ROWS, schema=SAMPLE_SCHEMA)


def test_ensure_schema_creates_the_core_tables_with_the_contract_columns(warehouse: Warehouse):
    warehouse.ensure_schema()
    warehouse.ensure_schema()  # idempotent
    assert warehouse.columns_of("raw_events") == RAW_EVENTS_CONTRACT
    for table in CORE_TABLES:
        assert warehouse.columns_of(table.name) == list(table.column_names)
        assert warehouse.row_count(table.name) == 0


def test_ensure_table_refuses_an_older_table_missing_columns(warehouse: Warehouse):
    warehouse.execute('CREATE TABLE raw_events ("event_id" VARCHAR, "event_type" VARCHAR)')
    with pytest.raises(WarehouseError, match=r"raw_events .* lacks columns \['event_at'"):
        warehouse.ensure_table(RAW_EVENTS)


def test_load_arrow_round_trips_every_type_and_keeps_empty_text_apart_from_null(warehouse: Warehouse):
    warehouse.ensure_table(SAMPLE)
    assert warehouse.load_arrow("sample", _sample_table()) == len(SAMPLE_ROWS)
    columns = ", ".join(f'"{name}"' for name in SAMPLE.column_names)
    rows = warehouse.query(f"SELECT {columns} FROM sample ORDER BY big NULLS LAST")
    by_name = {row[0]: dict(zip(SAMPLE.column_names, row, strict=True)) for row in rows}
    for expected in SAMPLE_ROWS:
        got = by_name[expected["name"]]
        for key, value in expected.items():
            if isinstance(value, datetime):
                assert got[key] == value and got[key].utcoffset().total_seconds() == 0
            else:
                assert got[key] == value, (expected["name"], key)
    assert warehouse.row_count("sample", "note IS NULL") == 1
    assert warehouse.row_count("sample", "note = ?", [""]) == 1


def test_placeholders_and_literal_question_marks_and_percents(warehouse: Warehouse):
    warehouse.ensure_table(SAMPLE)
    warehouse.execute(
        "INSERT INTO sample (name, note, count) VALUES (?, 'what? 100%', ?)", ["x", 3]
    )  # a literal ? and % stay literal
    assert warehouse.query("SELECT name, note, count FROM sample WHERE count = ? AND note LIKE '%?%'", [3]) == [
        ("x", "what? 100%", 3)
    ]
    assert warehouse.scalar("SELECT count(*) FROM sample WHERE name = ?", ["nobody"]) == 0
    assert warehouse.scalar("SELECT name FROM sample WHERE name = ?", ["nobody"]) is None


def test_transaction_commits_or_rolls_back_as_a_whole(warehouse: Warehouse):
    warehouse.ensure_table(SAMPLE)
    with warehouse.transaction():
        warehouse.execute("INSERT INTO sample (name) VALUES (?)", ["kept"])
        with warehouse.transaction():  # nested: joins the outer transaction
            warehouse.execute("INSERT INTO sample (name) VALUES (?)", ["kept too"])
        assert warehouse.in_transaction
    assert not warehouse.in_transaction
    with pytest.raises(RuntimeError, match="boom"), warehouse.transaction():
        warehouse.execute("DELETE FROM sample")
        warehouse.load_arrow("sample", _sample_table())
        assert warehouse.row_count("sample") == len(SAMPLE_ROWS)  # the transaction sees its own work
        raise RuntimeError("boom")
    assert sorted(row[0] for row in warehouse.query("SELECT name FROM sample")) == ["kept", "kept too"]


def test_a_failed_statement_outside_a_transaction_leaves_the_connection_usable(warehouse: Warehouse):
    warehouse.ensure_table(SAMPLE)
    with pytest.raises(Exception, match="(?i)not.null|null value|constraint"):
        warehouse.execute("INSERT INTO sample (name) VALUES (NULL)")
    warehouse.execute("INSERT INTO sample (name) VALUES (?)", ["after"])
    assert warehouse.row_count("sample") == 1


def test_scratch_tables_are_private_and_replaced(warehouse: Warehouse):
    scratch = Table("scratch_rows", (Column("n", "integer"),))
    warehouse.create_scratch_table(scratch)
    warehouse.load_arrow("scratch_rows", pa.table({"n": pa.array([1, 2], pa.int32())}))
    assert warehouse.table_exists("scratch_rows")
    warehouse.create_scratch_table(scratch)
    assert warehouse.row_count("scratch_rows") == 0
    warehouse.drop_table("scratch_rows")
    assert not warehouse.table_exists("scratch_rows")


def test_query_arrow_joins_arrow_rows_with_a_table_inside_a_transaction(warehouse: Warehouse):
    warehouse.ensure_table(SAMPLE)
    warehouse.load_arrow("sample", _sample_table())
    probe = pa.table({"name": ["plain", "large", "absent"], "row": pa.array([0, 1, 2], pa.int32())})
    with warehouse.transaction():
        rows = warehouse.query_arrow(
            "probe", probe, "SELECT p.row, s.count FROM probe AS p JOIN sample AS s ON s.name = p.name ORDER BY p.row"
        )
        assert rows == [(0, 1), (1, 0)]
        warehouse.query_arrow("probe", probe.slice(2), "INSERT INTO sample (name) SELECT name FROM probe")
        assert warehouse.row_count("sample", "name = ?", ["absent"]) == 1
    assert not warehouse.table_exists("probe")
    assert warehouse.row_count("sample") == len(SAMPLE_ROWS) + 1


def test_checksum_ignores_row_order_but_not_values_or_duplicates(warehouse: Warehouse):
    warehouse.ensure_table(SAMPLE)
    warehouse.load_arrow("sample", _sample_table())
    columns = list(SAMPLE.column_names)
    first = warehouse.table_checksum("sample", columns)
    warehouse.execute("DELETE FROM sample")
    warehouse.load_arrow("sample", _sample_table().take([3, 1, 0, 2]))
    assert warehouse.table_checksum("sample", columns) == first
    warehouse.execute("UPDATE sample SET amount = ? WHERE name = ?", [0.30000000000000004, "plain"])
    assert warehouse.table_checksum("sample", columns) != first
    warehouse.execute("UPDATE sample SET amount = ? WHERE name = ?", [0.1, "plain"])
    assert warehouse.table_checksum("sample", columns) == first
    warehouse.load_arrow("sample", _sample_table().slice(0, 1))
    assert warehouse.table_checksum("sample", columns) != first
    assert warehouse.table_checksum("sample", columns, "name <> ?", ["plain"]) == warehouse.table_checksum(
        "sample", columns, "name <> 'plain'"
    )


def test_duckdb_and_postgresql_give_the_same_checksum_for_the_same_rows(tmp_path: Path, postgres_url: str):
    checksums = []
    for uri in (f"duckdb://{tmp_path / 'w.duckdb'}", postgres_url):
        with Warehouse.from_uri(uri) as warehouse:
            warehouse.ensure_table(SAMPLE)
            warehouse.load_arrow("sample", _sample_table())
            checksums.append(warehouse.table_checksum("sample", list(SAMPLE.column_names)))
    assert checksums[0] == checksums[1]


def test_duckdb_options_come_from_the_uri(tmp_path: Path):
    with Warehouse.from_uri(f"duckdb://{tmp_path / 'w.duckdb'}?memory_limit=256MB&threads=1") as warehouse:
        assert warehouse.scalar("SELECT current_setting('threads')") == 1
        assert warehouse.scalar("SELECT current_setting('TimeZone')") == "UTC"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:///x.db", "expected duckdb:///path or postgresql://"),
        ("duckdb://relative/path.duckdb", "absolute path"),
        ("duckdb:///tmp/x.duckdb?cache=1", "unknown DuckDB option 'cache'"),
    ],
)
def test_bad_uris_are_refused_with_a_clear_message(uri: str, message: str):
    with pytest.raises(WarehouseError, match=message):
        Warehouse.from_uri(uri)


def test_unreachable_postgresql_names_the_uri_without_its_password():
    with pytest.raises(WarehouseError, match=r"postgresql://loopline:\*\*\*\*@127\.0\.0\.1:9/"):
        Warehouse.from_uri("postgresql://loopline:secret@127.0.0.1:9/nowhere?connect_timeout=2")


@pytest.mark.parametrize("name", ["raw_events; DROP TABLE x", "a-b", "1abc", "", "x" * 64, 'q"'])
def test_only_plain_identifiers_reach_sql(name: str):
    with pytest.raises(WarehouseError, match="not a plain SQL identifier"):
        check_identifier(name)


def test_qmark_translation_leaves_quoted_text_alone():
    assert to_qmark_params("SELECT ? , '?%' , \"a?\" , 5 % 2") == "SELECT %s , '?%%' , \"a?\" , 5 %% 2"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "\\N"),
        (True, "true"),
        (3, "3"),
        (0.1, "0.1"),
        (datetime(2024, 1, 1, 1, tzinfo=UTC), "2024-01-01T01:00:00.000000+00:00"),
        (date(2024, 1, 1), "2024-01-01"),
        ("a\tb\nc\\", "a\\tb\\nc\\\\"),
    ],
)
def test_canonical_text(value, text: str):
    assert canonical_text(value) == text
