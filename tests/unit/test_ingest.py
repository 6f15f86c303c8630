"""Log ingestion: parser parity, the malformed-line corpus, reconciliation, idempotency, PII, S3 and both engines."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline import events, ingest
from loopline.events import Event, Rejection, parse_line
from loopline.logstore import LogStore, TruncatedObjectError
from loopline.warehouse import RAW_EVENTS, Warehouse

DAY = date(2024, 5, 1)
CHECKSUM_COLUMNS = [c for c in RAW_EVENTS.column_names if c not in ("ingest_run_id", "ingested_at")]
PII_KEY = b"test-only pseudonymisation key"


# --- building logs -----------------------------------------------------------------------------------


def make_event(n: int, day: date = DAY, hour: int = 0, **changes: Any) -> Event:
    """A valid event, deterministic in (day, hour, n); ``changes`` override fields."""
    start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"loopline-test/{day}/{hour}/{n}")),
        "event_type": events.EVENT_TYPES[n % 4],
        "event_at": start + timedelta(seconds=(n * 7) % 3600, milliseconds=n % 1000),
        "user_id": f"u{n % 17:04d}",
        "item_id": f"i{n % 23:05d}",
        "request_id": f"r-{day}-{hour}-{n // 3}",
        "position": n % 10,
        "model_version": "loopline-ctr/1",
        "variant": "champion" if n % 5 else "canary",
        "page": ("home", "search", "category", "product")[n % 4],
        "device": events.DEVICES[n % 4],
        "price": round(1.5 + n * 0.37, 2),
        "query": "red dress" if n % 4 == 1 else None,
    }
    fields.update(changes)
    return Event(**fields)


def event_dict(n: int = 0, **changes: Any) -> dict[str, Any]:
    record = make_event(n).to_dict()
    record.update(changes)
    return record


def json_line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def write_day(store: LogStore, day: date, per_hour: int = 6, hours: range = range(24)) -> int:
    for hour in hours:
        store.write(day, hour, "serving", (make_event(n, day, hour).to_json_line() for n in range(per_hour)))
    return per_hour * len(hours)


@pytest.fixture
def logs(tmp_path: Path) -> LogStore:
    return LogStore.from_uri((tmp_path / "logs").as_uri())


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse_uri(request, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb://{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue("postgres_url")


def run_day(day: date, logs: LogStore, warehouse_uri: str, **options: Any) -> ingest.IngestResult:
    options.setdefault("quarantine_threshold", 1.0)
    return ingest.ingest_day(day, log_store_uri=logs.root_uri, warehouse_uri=warehouse_uri, **options)


def checksum(warehouse_uri: str) -> tuple[int, str]:
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        return warehouse.row_count("raw_events"), warehouse.table_checksum("raw_events", CHECKSUM_COLUMNS)


def assert_reconciled(result: ingest.IngestResult) -> None:
    assert result.lines_read == result.loaded + result.duplicates + result.quarantined
    assert sum(result.quarantined_by_reason.values()) == result.quarantined


# --- parse_batch gives parse_line's verdict, line for line -------------------------------------------


def reference(line: bytes) -> tuple[str, Any]:
    outcome = parse_line(line)
    if isinstance(outcome, Rejection):
        return ("rejected", outcome.reason)
    broken = ingest._warehouse_rule(outcome)
    if broken:
        return ("rejected", broken[0])
    values = {name: getattr(outcome, name) for name in ingest._EVENT_COLUMNS if name != "event_date"}
    values["event_date"] = outcome.event_at.date()
    return ("event", values)


def batch_outcomes(lines: list[bytes]) -> list[tuple[str, Any]]:
    parsed = ingest.parse_batch(lines)
    outcomes: list[Any] = [None] * len(lines)
    for index, reason, _detail in parsed.rejects:
        assert outcomes[index] is None
        outcomes[index] = ("rejected", reason)
    for row in parsed.events.to_pylist():
        index = row.pop("batch_index")
        assert outcomes[index] is None
        outcomes[index] = ("event", row)
    assert None not in outcomes, "every line gets exactly one outcome"
    return outcomes


CANONICAL = make_event(3).to_json_line().rstrip(b"\n")
EDGE_LINES = [
    CANONICAL,
    CANONICAL + b"\r",
    CANONICAL + b"\r\r",
    b"\xef\xbb\xbf" + CANONICAL,
    b"  " + CANONICAL + b"  ",
    json_line({k: v for k, v in reversed(event_dict(4).items())}),  # other key order
    json_line({k: v for k, v in event_dict(5).items() if k != "query"}),  # query omitted
    json_line(event_dict(6, event_at="2024-05-01T10:00:00Z")),
    json_line(event_dict(6, event_at="2024-05-01T10:00:00.123456789+00:00")),
    json_line(event_dict(6, event_at="2024-05-01t10:00:00.5z")),
    json_line(event_dict(6, event_at="2024-05-01T10:00:00.000-00:00")),
    json_line(event_dict(6, event_at="2024-05-01T10:00:00.000+01:00")),
    json_line(event_dict(6, event_at="2024-02-29T10:00:00.000Z")),
    json_line(event_dict(6, event_at="2023-02-29T10:00:00.000Z")),
    json_line(event_dict(6, event_at="2024-04-31T10:00:00.000Z")),
    json_line(event_dict(6, event_at="2024-05-01T24:00:00.000Z")),
    json_line(event_dict(6, event_at="2024-05-01T23:59:60.000Z")),
    json_line(event_dict(6, event_at="0999-05-01T10:00:00.000Z")),
    json_line(event_dict(6, event_at="0000-05-01T10:00:00.000Z")),
    json_line(event_dict(6, event_at="1969-12-31T23:59:59.999Z")),
    json_line(event_dict(7, event_id=str(uuid.uuid4()).upper())),
    json_line(event_dict(7, event_id="{" + str(uuid.uuid4())[:-2] + "}")),
    json_line(event_dict(7, event_id=uuid.uuid4().hex)),
    json_line(event_dict(8, position=0)),
    json_line(event_dict(8, position=-1)),
    json_line(event_dict(8, position=2**31 - 1)),
    json_line(event_dict(8, position=2**31)),
    json_line(event_dict(8, position=2**63 + 5)),
    b'{"position": 18446744073709551616}',
    json_line(event_dict(8, position=True)),
    json_line(event_dict(8, position=3.0)),
    json_line(event_dict(9, price=0)),
    json_line(event_dict(9, price=12)),
    json_line(event_dict(9, price=999999999.99)),
    json_line(event_dict(9, price=1e9)),
    json_line(event_dict(9, price=-0.01)),
    json_line(event_dict(9, price=False)),
    json_line(event_dict(9, price="1.0")),
    json_line(event_dict(10, user_id="")),
    json_line(event_dict(10, user_id="x" * 128)),
    json_line(event_dict(10, user_id="x" * 129)),
    json_line(event_dict(10, user_id="é" * 128)),
    json_line(event_dict(10, user_id="é" * 129)),
    json_line(event_dict(10, user_id="a\u0000b")),
    json_line(event_dict(10, query="a\u0000b")),
    json_line(event_dict(10, query="")),
    json_line(event_dict(10, query="q" * 1024)),
    json_line(event_dict(10, query="q" * 1025)),
    json_line(event_dict(10, query='quote " and \\ backslash \n newline')),
    json_line(event_dict(10, query="ünïcödé ✓ 中文 🎉")),
    json_line(event_dict(11, device="fridge")),
    json_line(event_dict(11, event_type="view")),
    json_line(event_dict(11, schema_version=2)),
    json_line(event_dict(11, schema_version=True)),
    json_line(event_dict(11, schema_version=1.0)),
    json_line({k: v for k, v in event_dict(11).items() if k != "schema_version"}),
    json_line({k: v for k, v in event_dict(11).items() if k != "item_id"}),
    json_line(event_dict(11, item_id=None)),
    json_line(event_dict(11, color="red")),
    json_line({**{k: v for k, v in event_dict(11).items() if k != "page"}, "color": "red"}),
    # The fast path leaves string types to the Arrow conversion and numbers to its own checks:
    json_line(event_dict(12, user_id=5)),  # a number in a string field makes the batch's conversion fail
    json_line(event_dict(12, query=5)),
    json_line(event_dict(12, query=["a"])),
    json_line(event_dict(12, device={"a": 1})),
    json_line(event_dict(12, page=True)),
    json_line({**{k: v for k, v in event_dict(12).items() if k != "query"}, "color": None}),  # 14 keys, no query
    json_line({**{k: v for k, v in event_dict(12).items() if k != "query"}, "event_id": None}),  # 13 keys, a null
    json_line(event_dict(12, price=2**64 - 1)),  # beyond int64: Arrow refuses it
    json_line(event_dict(12, price=1.5)).replace(b'"price":1.5', b'"price":-9223372036854775809'),
    json_line(event_dict(12, price=1.5)).replace(b'"price":1.5', b'"price":18446744073709551616'),
    json_line(event_dict(12, price=2**62)),
    json_line(event_dict(12, position=-(2**63))),
    json_line(event_dict(12, price=0.1 + 0.2)),
    json_line(event_dict(12, price=-0.0)),
    CANONICAL.replace(b'"user_id"', b'"user_id":"dup","user_id"'),  # duplicate key: the last one wins
    b"",
    b"   ",
    b"\r",
    b"[1, 2]",
    b"null",
    b'{"event_id": ',
    b'{"a": "\xff\xfe"}',
    b'{"a": NaN}',
    b'{"schema_version": 1}',
    b"x" * (events.MAX_LINE_BYTES + 1),
    b" " * (events.MAX_LINE_BYTES - len(CANONICAL) + 1) + CANONICAL,
]


def test_parse_batch_agrees_with_parse_line_on_edge_lines():
    expected = [reference(line) for line in EDGE_LINES]
    assert batch_outcomes(EDGE_LINES) == expected
    # and line by line, so no verdict depends on the other lines of its batch
    assert [batch_outcomes([line])[0] for line in EDGE_LINES] == expected


def test_the_fast_path_takes_the_common_lines(monkeypatch: pytest.MonkeyPatch):
    calls = []
    original = ingest.events.parse_line
    monkeypatch.setattr(ingest.events, "parse_line", lambda line: calls.append(line) or original(line))
    lines = [make_event(n).to_json_line().rstrip(b"\n") for n in range(200)]
    parsed = ingest.parse_batch(lines)
    assert parsed.events.num_rows == 200 and not parsed.rejects
    assert calls == []  # no canonical line needed the slow path


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["", "x" * 128, "x" * 129, "a\x00"]
)
_field_values = {
    "event_id": st.uuids().map(str) | st.sampled_from(["nope", str(uuid.UUID(int=5)).upper()]),
    "event_type": st.sampled_from([*events.EVENT_TYPES, "view", ""]),
    "event_at": st.datetimes(min_value=datetime(900, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda moment: events.format_timestamp(moment.replace(tzinfo=UTC))
    )
    | st.sampled_from(["2024-02-30T00:00:00.000Z", "2024-01-01T00:00:00Z", "2024-01-01 00:00:00.000Z"]),
    "user_id": _text,
    "item_id": _text,
    "request_id": _text,
    "position": st.integers(min_value=-3, max_value=2**64 - 1) | st.booleans() | st.just(1.0),
    "model_version": _text,
    "variant": _text,
    "page": _text,
    "device": st.sampled_from([*events.DEVICES, "tv"]),
    "price": st.floats(min_value=-1, max_value=2e9) | st.integers(min_value=-1, max_value=2**40) | st.just(True),
    "query": st.none() | _text,
    "schema_version": st.sampled_from([1, 1, 1, 2, True]),
}


@st.composite
def log_lines(draw) -> bytes:
    record = {name: draw(strategy) for name, strategy in _field_values.items()}
    for name in draw(st.lists(st.sampled_from(list(record)), max_size=2)):
        record.pop(name, None)
    if draw(st.booleans()):
        record["extra"] = 1
    if draw(st.booleans()):
        record = dict(reversed(list(record.items())))
    line = orjson.dumps(record)
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf", b" "])) + line + draw(st.sampled_from([b"", b"\r"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(log_lines(), min_size=1, max_size=12))
def test_parse_batch_agrees_with_parse_line_on_generated_lines(lines: list[bytes]):
    assert batch_outcomes(lines) == [reference(line) for line in lines]


def test_ids_hash_alike_in_every_batch():
    ids = [str(uuid.UUID(int=n * 7919, version=4)) for n in range(300)]
    hashes = ingest._id_hashes(ids)
    assert hashes.tolist() == [ingest._id_hash(event_id) for event_id in ids]
    assert len(set(hashes.tolist())) == len(ids)
    # A batch holding ids of other lengths is hashed per id, with the same hash for the same id.
    odd = ["short", "é" * 36, "{" + ids[0] + "}"]
    mixed = ingest._id_hashes(ids[:5] + odd)
    assert mixed[:5].tolist() == hashes[:5].tolist()
    assert mixed[5:].tolist() == [ingest._id_hash(event_id) for event_id in odd]
    # Slices and chunked arrays point into a larger buffer; their hashes are those of their own ids.
    assert ingest._id_hashes(pa.array(ids).slice(7, 20)).tolist() == hashes[7:27].tolist()
    assert ingest._id_hashes(pa.chunked_array([ids[:3], ids[3:9]])).tolist() == hashes[:9].tolist()


def assert_same_parse(got: ingest.ParsedBatch, expected: ingest.ParsedBatch) -> None:
    assert got.events.equals(expected.events)
    assert got.rejects == expected.rejects
    assert got.redactions == expected.redactions


# Every kind of line the parser knows, PII to redact and an empty last line (joined and split again).
WORKER_CHUNK = [
    *EDGE_LINES,
    json_line(event_dict(40, query="mail jane@example.com or call +49 30 1234567")),
    json_line(event_dict(41, query="from 10.1.2.3")),
    b"",
]


@pytest.fixture(scope="module")
def worker_parser():
    """One parse worker process with a pseudonymisation key, shared by the module's tests."""
    parser = ingest._BatchParser(ingest.Redactor(PII_KEY), PII_KEY, workers=1)
    parser.start_workers()
    assert parser._pool and parser._pool[0].ready.wait(60), "the worker process started"
    yield parser
    parser.close()


def test_a_worker_process_parses_exactly_like_this_process(worker_parser: ingest._BatchParser):
    expected = ingest.parse_batch(WORKER_CHUNK, ingest.Redactor(PII_KEY))
    assert expected.rejects and expected.events.num_rows and expected.redactions
    tickets = [worker_parser.submit(WORKER_CHUNK) for _ in range(3)]  # several in flight, taken in order
    assert all(isinstance(ticket, ingest._ParseWorker) for ticket in tickets)
    for ticket in tickets:
        assert_same_parse(worker_parser.result(ticket, WORKER_CHUNK), expected)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(log_lines(), min_size=1, max_size=12))
def test_worker_parse_agrees_with_this_process_on_generated_lines(
    worker_parser: ingest._BatchParser, lines: list[bytes]
):
    got = worker_parser.result(worker_parser.submit(lines), lines)
    assert_same_parse(got, ingest.parse_batch(lines, ingest.Redactor(PII_KEY)))


def test_parsing_goes_on_here_when_workers_die_or_cannot_start(monkeypatch: pytest.MonkeyPatch):
    expected = ingest.parse_batch(WORKER_CHUNK, ingest.Redactor(None))
    parser = ingest._BatchParser(ingest.Redactor(None), None, workers=2)
    try:
        parser.start_workers()
        for worker in parser._pool:
            assert worker.ready.wait(60)
        first = parser.submit(WORKER_CHUNK)
        assert isinstance(first, ingest._ParseWorker)
        first.process.kill()
        second = parser.submit(WORKER_CHUNK)
        assert_same_parse(parser.result(first, WORKER_CHUNK), expected)
        assert_same_parse(parser.result(second, WORKER_CHUNK), expected)
        assert parser.workers == 0 and parser.in_flight == 0  # the rest of the run parses here
        assert isinstance(parser.submit(WORKER_CHUNK), ingest.ParsedBatch)
    finally:
        parser.close()
    monkeypatch.setattr(ingest.sys, "executable", "/nonexistent/python")
    parser = ingest._BatchParser(ingest.Redactor(None), None, workers=2)
    parser.start_workers()
    assert parser.workers == 0
    assert_same_parse(parser.result(parser.submit(WORKER_CHUNK), WORKER_CHUNK), expected)


# --- the malformed-line corpus -----------------------------------------------------------------------


def _corpus(store: LogStore, tmp_path: Path) -> tuple[int, dict[tuple[str, int], str], dict[str, bytes]]:
    """Write one object of every kind of bad line (and some good ones); return what ingestion must find.

    Returns (lines that count as read, {(object uri, line number): reason}, {reason: raw bytes}).
    """
    ten_megabytes = b'{"query": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    good = [make_event(n, DAY, 1).to_json_line().rstrip(b"\n") for n in range(10)]
    bad: list[tuple[bytes, str]] = [
        (b"", events.EMPTY_LINE),
        (b"  \t ", events.EMPTY_LINE),
        (ten_megabytes, events.LINE_TOO_LONG),
        (b'{"query": "caf\xe9"}', events.INVALID_UTF8),
        (b'{"event_id": "1",', events.INVALID_JSON),
        (b'["not", "an", "object"]', events.NOT_AN_OBJECT),
        (json_line({k: v for k, v in event_dict(20).items() if k != "schema_version"}), "missing_field:schema_version"),
        (json_line(event_dict(21, schema_version=2)), events.UNSUPPORTED_SCHEMA_VERSION),
        (json_line({k: v for k, v in event_dict(22).items() if k != "user_id"}), "missing_field:user_id"),
        (json_line(event_dict(23, colour="red")), "unknown_field:colour"),
        (json_line(event_dict(24, position="3")), "bad_type:position"),
        (json_line(event_dict(25, event_type="hover")), events.UNKNOWN_EVENT_TYPE),
        (json_line(event_dict(26, event_at="2024-02-30T00:00:00.000Z")), events.BAD_TIMESTAMP),
        (json_line(event_dict(27, event_id="not-a-uuid")), "bad_value:event_id"),
        (json_line(event_dict(28, device="fridge")), "bad_value:device"),
        (json_line(event_dict(29, price=-1.0)), "bad_value:price"),
        (json_line(event_dict(30, position=2**40)), "out_of_range:position"),
        (json_line(event_dict(31, query="nul \u0000 inside")), "nul_character:query"),
    ]
    assert {reason.split(":")[0] for _, reason in bad} >= set(events.REASON_CODES)
    # Mixed object: good lines, a BOM line and CRLF lines (all valid), bad lines in between.
    lines = [good[0], b"\xef\xbb\xbf" + good[1], good[2] + b"\r"]
    expected: dict[tuple[str, int], str] = {}
    raw_by_reason: dict[str, bytes] = {}
    positions = []
    for raw, reason in bad:
        lines.append(raw)
        positions.append((len(lines), reason))
        raw_by_reason.setdefault(reason, raw)
        lines.append(good[3 + len(positions) % 7].replace(b"loopline-ctr/1", b"loopline-ctr/%d" % len(positions)))
    obj = store.write(DAY, 1, "serving", (line + b"\n" for line in lines))
    for line_number, reason in positions:
        expected[(obj.uri, line_number)] = reason
    read = len(lines)
    # The duplicates above (good lines repeated with another model version) keep the first occurrence.

    # A gzip object cut short: its complete lines are loaded, the rest is one truncated_object record.
    many = [make_event(n, DAY, 2).to_json_line() for n in range(3000)]
    cut = store.write(DAY, 2, "serving", many, compress=True)
    path = Path(cut.uri.removeprefix("file://"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    complete = 0
    with contextlib.suppress(TruncatedObjectError):
        for _ in store.iter_lines(cut):
            complete += 1
    assert 0 < complete < 3000
    expected[(cut.uri, complete + 1)] = ingest.TRUNCATED_OBJECT
    read += complete + 1

    # A corrupt gzip object: nothing decodes; one corrupt_object record.
    corrupt = store.write(DAY, 3, "serving", [b"placeholder\n"], compress=True)
    Path(corrupt.uri.removeprefix("file://")).write_bytes(b"\x1f\x8b\x08\x00 definitely not deflate data" * 10)
    expected[(corrupt.uri, 1)] = ingest.CORRUPT_OBJECT
    read += 1
    return read, expected, raw_by_reason


def test_malformed_corpus_is_quarantined_exactly_and_reconciles(
    logs: LogStore, warehouse_uri: str, tmp_path: Path
) -> None:
    lines_read, expected, raw_by_reason = _corpus(logs, tmp_path)
    result = run_day(DAY, logs, warehouse_uri)

    assert result.status == ingest.STATUS_SUCCEEDED
    assert result.lines_read == lines_read
    assert_reconciled(result)
    assert result.quarantined == len(expected)
    assert result.duplicates > 0  # good lines repeated between the bad ones
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        rows = warehouse.query(
            "SELECT source_uri, line_number, reason, raw_base64, raw_bytes, raw_sha256, is_truncated, ingest_run_id "
            "FROM quarantine_events"
        )
        assert {(row[0], row[1]): row[2] for row in rows} == expected
        assert len(rows) == len(expected)
        stored_run = warehouse.query(
            "SELECT lines_read, loaded, duplicates, quarantined, quarantined_by_reason, status FROM ingest_runs"
        )
        assert warehouse.row_count("raw_events") == result.loaded
        loaded_lines = warehouse.row_count("raw_events", "log_hour = 1")
    assert stored_run == [
        (
            result.lines_read,
            result.loaded,
            result.duplicates,
            result.quarantined,
            json.dumps(result.quarantined_by_reason, sort_keys=True),
            "succeeded",
        )
    ]
    assert loaded_lines == 10  # the ten distinct good events of the mixed object, BOM and CRLF ones included
    by_reason = {row[2]: row for row in rows}
    huge = by_reason[events.LINE_TOO_LONG]
    assert huge[4] == len(raw_by_reason[events.LINE_TOO_LONG]) and huge[6] is True
    assert len(base64.b64decode(huge[3])) == ingest.QUARANTINE_TABLE_RAW_CAP
    utf8 = by_reason[events.INVALID_UTF8]
    assert base64.b64decode(utf8[3]) == raw_by_reason[events.INVALID_UTF8] and utf8[6] is False

    # The quarantine files hold the full original bytes of every rejected line.
    quarantine_store = LogStore.from_uri(result.quarantine_uri)
    records = [orjson.loads(line) for hour in (1, 2, 3) for obj in quarantine_store.list(DAY, hour)
               for line in quarantine_store.iter_lines(obj)]  # fmt: skip
    assert {(r["source_uri"], r["line_number"]): r["reason"] for r in records} == expected
    for record in records:
        raw = base64.b64decode(record["raw_base64"])
        assert len(raw) == record["raw_bytes"] and hashlib.sha256(raw).hexdigest() == record["raw_sha256"]
        if record["reason"] in raw_by_reason and record["reason"] != events.EMPTY_LINE:
            assert raw == raw_by_reason[record["reason"]]
        if record["reason"] == events.EMPTY_LINE:
            assert raw in (b"", b"  \t ")
    assert sorted(result.quarantine_objects) == sorted(o.uri for h in (1, 2, 3) for o in quarantine_store.list(DAY, h))


# --- reconciliation, threshold -----------------------------------------------------------------------


def test_threshold_fails_the_run_after_storing_everything(logs: LogStore, warehouse_uri: str):
    good = [make_event(n, DAY, 5).to_json_line() for n in range(95)]
    bad = [b"not json\n"] * 3 + [json_line(event_dict(1, device="fridge")) + b"\n"] * 2
    logs.write(DAY, 5, "serving", good + bad)
    with pytest.raises(ingest.QuarantineThresholdExceeded) as caught:
        run_day(DAY, logs, warehouse_uri, quarantine_threshold=0.04)
    message = str(caught.value)
    assert "5 of 100 lines quarantined (5.00%)" in message and "threshold of 4.00%" in message
    assert "invalid_json (3), bad_value:device (2)" in message
    assert "quarantine/dt=2024-05-01/hour=05/quarantine-000000.jsonl" in message
    result = caught.value.result
    assert result.status == ingest.STATUS_FAILED_THRESHOLD
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.query("SELECT status, quarantined FROM ingest_runs") == [("failed_threshold", 5)]
        assert warehouse.row_count("raw_events") == 95
        assert warehouse.row_count("quarantine_events") == 5
    # At the threshold exactly, the run succeeds (and replaces the partitions, without doubling).
    assert run_day(DAY, logs, warehouse_uri, quarantine_threshold=0.05).status == ingest.STATUS_SUCCEEDED
    assert checksum(warehouse_uri)[0] == 95


def test_a_broken_count_is_caught_and_nothing_is_committed(
    logs: LogStore, warehouse_uri: str, monkeypatch: pytest.MonkeyPatch
):
    write_day(logs, DAY, per_hour=3, hours=range(2))
    before = run_day(DAY, logs, warehouse_uri)
    original = ingest._stream

    def one_line_lost(*args: Any, **kwargs: Any):
        lines_read, staged, redactions = original(*args, **kwargs)
        return lines_read + 1, staged, redactions

    monkeypatch.setattr(ingest, "_stream", one_line_lost)
    with pytest.raises(ingest.ReconciliationError, match=r"lines read 7 != loaded 6 \+ duplicates 0 \+ quarantined 0"):
        run_day(DAY, logs, warehouse_uri)
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.query("SELECT run_id FROM ingest_runs") == [(before.run_id,)]
        assert warehouse.query("SELECT DISTINCT ingest_run_id FROM raw_events") == [(before.run_id,)]


# --- idempotency ---------------------------------------------------------------------------------------


def test_ingesting_a_day_three_times_gives_identical_rows(logs: LogStore, warehouse_uri: str):
    write_day(logs, DAY)
    logs.write(DAY, 4, "serving", [b"garbage\n", make_event(0, DAY, 4).to_json_line()])  # a bad line and a duplicate
    results, sums = [], []
    for _ in range(3):
        results.append(run_day(DAY, logs, warehouse_uri))
        sums.append(checksum(warehouse_uri))
    counts = {(r.lines_read, r.loaded, r.duplicates, r.quarantined) for r in results}
    assert counts == {(146, 144, 1, 1)}
    assert len({r.run_id for r in results}) == 3
    assert sums[0] == sums[1] == sums[2] and sums[0][0] == 144
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.row_count("quarantine_events") == 1
        assert warehouse.row_count("ingest_runs") == 3  # every run is recorded
        assert warehouse.query("SELECT DISTINCT ingest_run_id FROM raw_events") == [(results[-1].run_id,)]


def test_a_three_day_backfill_run_twice_gives_identical_rows(logs: LogStore, warehouse_uri: str):
    days = [DAY + timedelta(days=i) for i in range(3)]
    for day in days:
        write_day(logs, day, per_hour=2)
    checksums = []
    for _ in range(2):
        for day in days:
            result = run_day(day, logs, warehouse_uri)
            assert (result.loaded, result.quarantined) == (48, 0)
        checksums.append(checksum(warehouse_uri))
    assert checksums[0] == checksums[1]
    assert checksums[0][0] == 3 * 48
    # An interval of several days at once gives the same table.
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    ingest.ingest_interval(start, start + timedelta(days=3), log_store_uri=logs.root_uri, warehouse_uri=warehouse_uri)
    assert checksum(warehouse_uri) == checksums[0]


def test_duckdb_and_postgresql_load_identical_rows(logs: LogStore, tmp_path: Path, postgres_url: str):
    write_day(logs, DAY, per_hour=5)
    logs.write(DAY, 3, "late", [make_event(77, DAY, 3, query='é ✓ "q" \\ 0.1').to_json_line()])
    sums = []
    for uri in (f"duckdb://{tmp_path / 'w.duckdb'}", postgres_url):
        run_day(DAY, logs, uri)
        sums.append(checksum(uri))
    assert sums[0] == sums[1] and sums[0][0] == 121


def test_a_rerun_replaces_only_its_own_log_partitions_and_late_events_keep_their_date(
    logs: LogStore, warehouse_uri: str
):
    next_day = DAY + timedelta(days=1)
    write_day(logs, DAY, per_hour=2)
    write_day(logs, next_day, per_hour=2)
    late = make_event(99, DAY, 23, event_at=datetime(2024, 5, 1, 23, 59, 59, 999000, tzinfo=UTC))
    logs.write(next_day, 0, "serving", [late.to_json_line()])  # logged after midnight
    run_day(DAY, logs, warehouse_uri)
    run_day(next_day, logs, warehouse_uri)
    run_day(next_day, logs, warehouse_uri)  # a rerun of D+1 must not touch D's rows
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.row_count("raw_events", "log_date = ?", [DAY]) == 48
        assert warehouse.row_count("raw_events", "log_date = ?", [next_day]) == 49
        assert warehouse.row_count("raw_events", "event_date = ?", [DAY]) == 49
        assert warehouse.query("SELECT log_date, log_hour, event_date FROM raw_events WHERE event_id = ?",
                               [late.event_id]) == [(next_day, 0, DAY)]  # fmt: skip
    # Objects removed from the log disappear from the warehouse on the next run of their interval.
    logs.delete_partition(next_day, 0)
    result = run_day(next_day, logs, warehouse_uri)
    assert result.loaded == 46
    assert checksum(warehouse_uri)[0] == 48 + 46


def test_duplicates_keep_the_first_occurrence_in_object_and_line_order(logs: LogStore, warehouse_uri: str):
    first = make_event(1, DAY, 6, model_version="first")
    logs.write(DAY, 6, "a", [make_event(0, DAY, 6).to_json_line(), first.to_json_line()])
    copy = Event(**{**first.to_dict(), "event_at": first.event_at, "model_version": "second"})
    logs.write(DAY, 6, "a", [copy.to_json_line(), first.to_json_line()])  # a later object of the same producer
    logs.write(DAY, 7, "b", [copy.to_json_line()])  # a later hour
    result = run_day(DAY, logs, warehouse_uri)
    assert (result.lines_read, result.loaded, result.duplicates) == (5, 2, 3)
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.query(
            "SELECT model_version, line_number, source_uri FROM raw_events WHERE event_id = ?", [first.event_id]
        ) == [("first", 2, logs.list(DAY, 6)[0].uri)]


def test_tiny_batches_give_the_same_rows_and_counts_as_one_batch(logs: LogStore, tmp_path: Path, warehouse_uri: str):
    # Duplicates within a batch, across batches and across objects; bad lines at batch edges.
    logs.write(DAY, 0, "a", [make_event(n, DAY, 0).to_json_line() for n in (0, 1, 1, 2, 3)] + [b"oops\n"])
    logs.write(DAY, 0, "a", [make_event(n, DAY, 0).to_json_line() for n in (3, 4, 0)] + [b"\n"])
    logs.write(DAY, 1, "b", [b"[]\n"] + [make_event(n, DAY, 1).to_json_line() for n in (5, 5, 6)])
    logs.write(DAY, 2, "c", [make_event(n, DAY, 0).to_json_line() for n in (4, 7)], compress=True)
    one_batch = run_day(DAY, logs, f"duckdb://{tmp_path / 'reference.duckdb'}")
    expected = checksum(f"duckdb://{tmp_path / 'reference.duckdb'}")
    for batch_lines in (1, 2, 3, 7):
        result = run_day(DAY, logs, warehouse_uri, batch_lines=batch_lines)
        counts = (result.lines_read, result.loaded, result.duplicates, result.quarantined)
        assert counts == (one_batch.lines_read, one_batch.loaded, one_batch.duplicates, one_batch.quarantined)
        assert counts == (16, 8, 5, 3)
        assert checksum(warehouse_uri) == expected
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        kept = warehouse.query("SELECT source_uri, line_number FROM raw_events WHERE event_id = ?",
                               [make_event(0, DAY, 0).event_id])  # fmt: skip
        reasons = warehouse.query("SELECT source_uri, line_number, reason FROM quarantine_events ORDER BY reason")
    objects = logs.list(DAY)
    assert kept == [(objects[0].uri, 1)]
    assert reasons == [(objects[1].uri, 4, "empty_line"), (objects[0].uri, 6, "invalid_json"),
                       (objects[2].uri, 1, "not_an_object")]  # fmt: skip


def test_worker_processes_and_small_parse_chunks_give_the_same_rows(
    logs: LogStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The malformed corpus, plus duplicates spread over many chunks of one warehouse batch.
    lines_read, _, _ = _corpus(logs, tmp_path)
    repeated = [make_event(n % 7, DAY, 4).to_json_line() for n in range(40)]
    logs.write(DAY, 4, "serving", [*repeated, b"junk\n", *repeated])
    reference_uri = f"duckdb://{tmp_path / 'reference.duckdb'}"
    reference = run_day(DAY, logs, reference_uri, parse_workers=0)  # one chunk per object, one batch
    received = []
    original = ingest._ParseWorker.receive
    monkeypatch.setattr(ingest._ParseWorker, "receive", lambda worker: received.append(1) or original(worker))
    for chunk_lines, workers, uri in ((3, 0, "in-process.duckdb"), (50, 2, "workers.duckdb")):
        monkeypatch.setattr(ingest, "PARSE_CHUNK_LINES", chunk_lines)  # many chunks per warehouse batch
        result = run_day(DAY, logs, f"duckdb://{tmp_path / uri}", parse_workers=workers)
        counts = (result.lines_read, result.loaded, result.duplicates, result.quarantined)
        assert counts == (reference.lines_read, reference.loaded, reference.duplicates, reference.quarantined)
        assert result.quarantined_by_reason == reference.quarantined_by_reason
        assert result.redactions_by_type == reference.redactions_by_type
        assert checksum(f"duckdb://{tmp_path / uri}") == checksum(reference_uri)
        with Warehouse.from_uri(f"duckdb://{tmp_path / uri}") as warehouse:
            kept = warehouse.query("SELECT event_id, line_number FROM raw_events WHERE log_hour = 4 ORDER BY 1")
            assert {line for _, line in kept} == set(range(1, 8))  # the first occurrence of each id
        chunks = -(-(result.lines_read - 2) // chunk_lines)  # the truncated and corrupt objects count 1 line each
        assert len(received) == (chunks if workers else 0)  # every chunk parsed by a worker, or none
        received.clear()
    assert reference.lines_read == lines_read + 81 and reference.duplicates >= 73


def test_bloom_filter_false_positives_never_drop_an_event(
    logs: LogStore, warehouse_uri: str, monkeypatch: pytest.MonkeyPatch
):
    write_day(logs, DAY, per_hour=4, hours=range(3))
    logs.write(DAY, 3, "late", [make_event(2, DAY, 0).to_json_line()])  # one true duplicate, two batches on
    monkeypatch.setattr(ingest._SeenIds, "WORDS", 1)  # one word: every id soon looks "maybe seen"
    result = run_day(DAY, logs, warehouse_uri, batch_lines=5)
    assert (result.lines_read, result.loaded, result.duplicates) == (13, 12, 1)
    filter_ = ingest._SeenIds()
    filter_.add(["a", "b"])
    assert filter_.maybe_seen(["a", "b"]).all()  # never a false negative


def test_an_empty_interval_records_a_run_and_clears_its_partitions(logs: LogStore, warehouse_uri: str):
    write_day(logs, DAY, per_hour=1, hours=range(3))
    assert run_day(DAY, logs, warehouse_uri).loaded == 3
    for hour in range(3):
        logs.delete_partition(DAY, hour)
    result = run_day(DAY, logs, warehouse_uri)
    assert (result.lines_read, result.loaded, result.sources, result.status) == (0, 0, [], "succeeded")
    assert checksum(warehouse_uri)[0] == 0


# --- PII ---------------------------------------------------------------------------------------------

PLANTED = {
    "email": ["alice.smith+shop@example.com", "BOB_K@mail.example.org"],
    "phone": ["+49 30 1234567", "(555) 123-4567"],
    "ip": ["192.168.10.20", "2001:db8::8a2e:370:7334"],
    "card": ["4111 1111 1111 1111"],
}
LEGIT_QUERIES = ["iphone 15 pro 256gb", "red dress size 38", "rtx 4090", "sale 2024-05-01", "19.99 shoes"]


def test_pii_never_reaches_the_warehouse_and_ordinary_text_is_untouched(
    logs: LogStore, warehouse_uri: str, tmp_path: Path
):
    planted_values = [value for values in PLANTED.values() for value in values]
    queries = [f"contact {value} please" for value in planted_values] + LEGIT_QUERIES
    lines = [make_event(n, DAY, 9, query=query).to_json_line() for n, query in enumerate(queries)]
    lines.append(make_event(50, DAY, 9, query=planted_values[0]).to_json_line())  # a duplicate id below
    rejected = json_line(event_dict(51, device="fridge", query=f"mail {planted_values[0]} or {planted_values[3]}"))
    lines.append(rejected + b"\n")
    lines.append(make_event(50, DAY, 9, query=planted_values[1]).to_json_line())
    logs.write(DAY, 9, "serving", lines)

    result = run_day(DAY, logs, warehouse_uri)
    assert result.loaded == len(queries) + 1 and result.quarantined == 1 and result.duplicates == 1
    # counted per valid line read, duplicates included: 2 e-mails, 2 phones, 2 IPs, 1 card + 2 e-mails
    assert result.redactions_by_type == {"card": 1, "email": 4, "ip": 2, "phone": 2}
    assert result.quarantine_redactions_by_type == {"email": 1, "phone": 1}

    with Warehouse.from_uri(warehouse_uri) as warehouse:
        dumped = []
        for table in ("raw_events", "quarantine_events", "ingest_runs"):
            columns = ", ".join(f'"{c}"' for c in warehouse.columns_of(table))
            dumped.extend(str(value) for row in warehouse.query(f"SELECT {columns} FROM {table}") for value in row)
        dumped.extend(
            base64.b64decode(value).decode("utf-8", "replace")
            for (value,) in warehouse.query("SELECT raw_base64 FROM quarantine_events")
        )
        stored_queries = {row[0] for row in warehouse.query("SELECT query FROM raw_events")}
    text = "\n".join(dumped)
    for value in planted_values:
        assert value not in text
        assert value.replace(" ", "") not in text.replace(" ", "")
    assert set(LEGIT_QUERIES) <= stored_queries  # ordinary text unchanged
    assert "contact [EMAIL] please" in stored_queries and "contact [CARD] please" in stored_queries
    assert "mail [EMAIL] or [PHONE]" in text  # the rejected line's redacted copy
    # The quarantine file (artifact store, not the warehouse) keeps the exact original bytes.
    quarantine_store = LogStore.from_uri(result.quarantine_uri)
    (record,) = [orjson.loads(line) for line in quarantine_store.iter_lines(quarantine_store.list(DAY, 9)[0])]
    assert base64.b64decode(record["raw_base64"]) == rejected


def test_user_ids_are_pseudonymised_with_the_key_from_the_environment(
    logs: LogStore, warehouse_uri: str, monkeypatch: pytest.MonkeyPatch
):
    from loopline import config, pii

    logs.write(DAY, 0, "serving", [make_event(n).to_json_line() for n in range(20)])
    monkeypatch.setenv("LOOPLINE_PSEUDONYMIZATION_KEY", PII_KEY.decode())
    config.settings.cache_clear()
    result = run_day(DAY, logs, warehouse_uri)
    assert result.pseudonymized_user_ids
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        stored = {row[0] for row in warehouse.query("SELECT DISTINCT user_id FROM raw_events")}
    originals = {make_event(n).user_id for n in range(20)}
    assert stored == {pii.pseudonymize(user_id, PII_KEY) for user_id in originals}
    assert not stored & originals
    # An explicit key wins over the environment; another key gives other pseudonyms.
    run_day(DAY, logs, warehouse_uri, pseudonymization_key=b"another key")
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        again = {row[0] for row in warehouse.query("SELECT DISTINCT user_id FROM raw_events")}
    assert again == {pii.pseudonymize(user_id, b"another key") for user_id in originals}


# --- S3 ----------------------------------------------------------------------------------------------


def test_logs_and_quarantine_on_s3(s3_endpoint: str, s3_bucket: str, warehouse_uri: str):
    store = LogStore.from_uri(f"s3://{s3_bucket}/logs", s3_endpoint_url=s3_endpoint)
    write_day(store, DAY, per_hour=2, hours=range(3))
    store.write(DAY, 1, "serving", [b"{broken\n", make_event(0, DAY, 1).to_json_line()], compress=True)
    result = ingest.ingest_day(
        DAY,
        log_store_uri=store.root_uri,
        warehouse_uri=warehouse_uri,
        quarantine_uri=f"s3://{s3_bucket}/quarantine",
        s3_endpoint_url=s3_endpoint,
        quarantine_threshold=1.0,
    )
    assert (result.lines_read, result.loaded, result.duplicates, result.quarantined) == (8, 6, 1, 1)
    assert all(uri.startswith(f"s3://{s3_bucket}/logs/dt=2024-05-01/") for uri in result.sources)
    assert result.quarantine_objects == [f"s3://{s3_bucket}/quarantine/dt=2024-05-01/hour=01/quarantine-000000.jsonl"]
    quarantine_store = LogStore.from_uri(f"s3://{s3_bucket}/quarantine", s3_endpoint_url=s3_endpoint)
    (line,) = quarantine_store.iter_lines(quarantine_store.list(DAY, 1)[0])
    assert base64.b64decode(orjson.loads(line)["raw_base64"]) == b"{broken"
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        assert warehouse.query("SELECT source_uri, line_number, reason FROM quarantine_events") == [
            (result.sources[2], 1, "invalid_json")
        ]


# --- interface ---------------------------------------------------------------------------------------


def test_command_line_prints_the_counts_as_json(logs: LogStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from loopline.cli import main

    write_day(logs, DAY, per_hour=1, hours=range(4))
    warehouse_uri = f"duckdb://{tmp_path / 'cli.duckdb'}"
    assert main(["ingest", "--logs", logs.root_uri, "--date", "2024-05-01", "--warehouse", warehouse_uri]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["lines_read"], counts["loaded"], counts["quarantined"], counts["status"]) == (4, 4, 0, "succeeded")
    logs.write(DAY, 5, "serving", [b"bad\n"])
    code = main(["ingest", "--logs", logs.root_uri, "--date", "2024-05-01", "--warehouse", warehouse_uri])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["status"] == "failed_threshold"
    assert "1 of 5 lines quarantined (20.00%)" in captured.err


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2024, 5, 1), datetime(2024, 5, 2), "timezone-aware"),
        (datetime(2024, 5, 1, 0, 30, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC), "whole hour"),
        (datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC), "after its start"),
    ],
)
def test_bad_intervals_are_refused(start: datetime, end: datetime, message: str):
    with pytest.raises(ingest.IngestError, match=message):
        ingest.ingest_interval(start, end)


def test_default_locations_come_from_the_settings(isolated_home: Path):
    store = LogStore.from_uri((isolated_home / "logs").as_uri())
    write_day(store, DAY, per_hour=1, hours=range(2))
    result = ingest.ingest_day(DAY)
    assert result.loaded == 2
    assert result.warehouse == f"duckdb://{isolated_home / 'warehouse.duckdb'}"
    assert result.quarantine_uri == (isolated_home / "artifacts" / "quarantine").as_uri()
    assert result.quarantine_threshold == 0.01
    json.dumps(result.to_dict())  # JSON-able for XCom
