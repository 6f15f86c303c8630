"""Log ingestion: one data interval of the event log into the warehouse, idempotently (docs/ingest.md).

For an interval ``[start, end)`` (whole hours, UTC), inside one warehouse transaction: the interval's
log partitions (``log_date``, ``log_hour``) of ``raw_events`` and ``quarantine_events`` are deleted,
the log objects are streamed line by line, parsed against schema v1, PII-redacted and loaded in
batches (first occurrence of each ``event_id`` kept, the rest counted), rejected lines go to
quarantine, and a row is added to ``ingest_runs``. Every line read ends up loaded, counted as a
duplicate or quarantined with a reason, and the run checks ``lines_read == loaded + duplicates +
quarantined`` against the warehouse before it commits; a failure anywhere rolls the whole run back.

Parsing is the hot path. ``parse_batch`` gives, line for line, the same result as
``loopline.events.parse_line`` (a test checks it), but decides the common case without it: orjson
decodes each line, the key count and the numbers' JSON types are checked per line in Python, one
Arrow conversion of the chunk checks the string fields' types (it accepts only ``str``), and the
value rules (UUID, lengths, enums, ranges, timestamps, missing fields) run vectorised with Arrow
compute. Any line that this fast path does not accept goes through ``parse_line`` itself, which
gives the verdict and the reason. Lines are parsed in chunks of ``PARSE_CHUNK_LINES``, here or, on
request (``parse_workers``), in worker processes (``_BatchParser``); results are used strictly in
read order, so the outcome never depends on where or when a chunk was parsed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import gc
import hashlib
import itertools
import json
import logging
import operator
import os
import pickle
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from loopline import events
from loopline.logstore import LogObject, LogStore, LogStoreError, TruncatedObjectError, hours_between
from loopline.warehouse import QUARANTINE_EVENTS, RAW_EVENTS, Column, Table, Warehouse

log = logging.getLogger(__name__)

# --- reason codes that ingestion adds to the parser's (events.REASON_CODES) ------------------------
TRUNCATED_OBJECT = "truncated_object"  # a gzip object ends early; its complete lines are still loaded
CORRUPT_OBJECT = "corrupt_object"  # an object cannot be decompressed
OUT_OF_RANGE = "out_of_range"  # out_of_range:position - valid JSON integer, too large for the warehouse
NUL_CHARACTER = "nul_character"  # nul_character:<field> - U+0000 in a string (PostgreSQL text cannot hold it)
INGEST_REASON_CODES = (TRUNCATED_OBJECT, CORRUPT_OBJECT, OUT_OF_RANGE, NUL_CHARACTER)
ALL_REASON_CODES = events.REASON_CODES + INGEST_REASON_CODES

# Fields holding free text that may carry PII; identifiers are kept (user_id can be pseudonymised).
FREE_TEXT_FIELDS = ("query",)
BATCH_LINES = 65_536  # event rows per warehouse load
PARSE_CHUNK_LINES = 8_192  # lines per parse task: its Python objects stay small (CPU cache, no page faults)
QUARANTINE_TABLE_RAW_CAP = 64 * 1024  # bytes of a rejected line kept in quarantine_events.raw_base64
QUARANTINE_PRODUCER = "quarantine"
INT32_MAX = 2**31 - 1
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED_THRESHOLD = "failed_threshold"


class IngestError(RuntimeError):
    """Ingestion cannot run or finish; the message says which input is wrong."""


class ReconciliationError(IngestError):
    """``lines_read != loaded + duplicates + quarantined``: a bug, never a data problem. Nothing is committed."""


class QuarantineThresholdExceeded(IngestError):
    """Too large a share of the interval's lines was quarantined. Raised after everything was stored."""

    def __init__(self, message: str, result: IngestResult):
        super().__init__(message)
        self.result = result


@dataclass
class IngestResult:
    """What one ingestion run read, loaded, dropped as duplicates and quarantined (also in ``ingest_runs``)."""

    run_id: str
    interval_start: datetime
    interval_end: datetime
    sources: list[str]
    lines_read: int
    loaded: int
    duplicates: int
    quarantined: int
    quarantined_by_reason: dict[str, int]
    redactions_by_type: dict[str, int]
    quarantine_redactions_by_type: dict[str, int]
    pseudonymized_user_ids: bool
    status: str
    quarantine_threshold: float
    quarantine_uri: str
    quarantine_objects: list[str]
    warehouse: str
    started_at: datetime
    finished_at: datetime

    @property
    def quarantined_share(self) -> float:
        return self.quarantined / self.lines_read if self.lines_read else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counts (for XCom and the CLI)."""
        return {
            "run_id": self.run_id,
            "interval_start": self.interval_start.isoformat(),
            "interval_end": self.interval_end.isoformat(),
            "status": self.status,
            "sources": len(self.sources),
            "lines_read": self.lines_read,
            "loaded": self.loaded,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "quarantined_share": round(self.quarantined_share, 6),
            "quarantine_threshold": self.quarantine_threshold,
            "quarantined_by_reason": dict(self.quarantined_by_reason),
            "redactions_by_type": dict(self.redactions_by_type),
            "quarantine_redactions_by_type": dict(self.quarantine_redactions_by_type),
            "pseudonymized_user_ids": self.pseudonymized_user_ids,
            "quarantine_uri": self.quarantine_uri,
            "quarantine_objects": list(self.quarantine_objects),
            "warehouse": self.warehouse,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
        }


# =====================================================================================================
# Parsing a batch of lines
# =====================================================================================================

_STRING = pa.string()
_TIMESTAMP = pa.timestamp("us", tz="UTC")

# Columns of parsed events; ``batch_index`` is the line's position in its batch.
PARSED_SCHEMA = pa.schema(
    [
        ("event_id", _STRING),
        ("event_type", _STRING),
        ("event_at", _TIMESTAMP),
        ("event_date", pa.date32()),
        ("user_id", _STRING),
        ("item_id", _STRING),
        ("request_id", _STRING),
        ("position", pa.int32()),
        ("model_version", _STRING),
        ("variant", _STRING),
        ("page", _STRING),
        ("device", _STRING),
        ("price", pa.float64()),
        ("query", _STRING),
        ("batch_index", pa.int32()),
    ]
)
_EVENT_COLUMNS = tuple(name for name in PARSED_SCHEMA.names if name != "batch_index")
_ID_FIELDS = ("user_id", "item_id", "request_id", "model_version", "variant", "page")  # 1..128 characters
_TEXT_FIELDS = ("event_id", "event_type", *_ID_FIELDS, "device", "query")  # str-valued in an Event

# Fast path, per line: exactly the schema's keys, each with an allowed JSON type (bool is not int).
_KEYS_WITH_QUERY = tuple(events.FIELDS)
_KEYS_WITHOUT_QUERY = tuple(name for name in events.FIELDS if name != "query")
assert _KEYS_WITH_QUERY[-1] == "query" and len(_KEYS_WITH_QUERY) == len(_KEYS_WITHOUT_QUERY) + 1
_GET_WITH_QUERY = operator.itemgetter(*_KEYS_WITH_QUERY)
_GET_WITHOUT_QUERY = operator.itemgetter(*_KEYS_WITHOUT_QUERY)


def _type_signatures(names: Sequence[str]) -> frozenset[tuple[type, ...]]:
    signatures: list[tuple[type, ...]] = [()]
    for name in names:
        signatures = [s + (t,) for s in signatures for t in events.FIELDS[name][0]]
    return frozenset(signatures)


_SIGNATURES_WITH_QUERY = _type_signatures(_KEYS_WITH_QUERY)
_SIGNATURES_WITHOUT_QUERY = _type_signatures(_KEYS_WITHOUT_QUERY)
_NUMBER_TYPES = frozenset(events.FIELDS["price"][0])  # int or float; bool is neither (type(True) is bool)
_FAST_TYPES = {"schema_version": pa.int64(), "position": pa.int64(), "price": pa.float64()}
_FAST_STRUCT = pa.struct([(name, _FAST_TYPES.get(name, _STRING)) for name in _KEYS_WITH_QUERY])
# Vectorised rules: a subset of what parse_record accepts, so a line passing them is surely valid.
_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_CANONICAL_TIMESTAMP = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"


@dataclass
class ParsedBatch:
    """Valid events of a batch (``PARSED_SCHEMA``) and its rejected lines as (index, reason, detail)."""

    events: pa.Table
    rejects: list[tuple[int, str, str]]
    redactions: Counter[str]


class Redactor:
    """PII redaction of free text and optional pseudonymisation of user ids, cached per distinct value."""

    def __init__(self, pseudonymization_key: bytes | None = None, cache_size: int = 1 << 16):
        from loopline import pii  # written beside this module; imported here so parsing alone never needs it

        self.pseudonymize_user_ids = bool(pseudonymization_key)
        self.redact_text: Callable[[str], tuple[str, Counter[str]]] = functools.lru_cache(cache_size)(pii.redact_text)
        if pseudonymization_key:
            key = bytes(pseudonymization_key)
            self.pseudonymize: Callable[[str], str] = functools.lru_cache(cache_size)(
                lambda user_id: pii.pseudonymize(user_id, key)
            )

    def redact_value(self, text: str, counts: Counter[str]) -> str:
        redacted, found = self.redact_text(text)
        counts.update(found)
        return redacted

    def apply(self, table: pa.Table, counts: Counter[str]) -> pa.Table:
        """Redact the free-text columns (counting replacements by type) and pseudonymise ``user_id``."""
        for name in FREE_TEXT_FIELDS:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, self._map_distinct(table.column(index), self.redact_text, counts))
        if self.pseudonymize_user_ids:
            index = table.schema.get_field_index("user_id")
            column = self._map_distinct(table.column(index), lambda value: (self.pseudonymize(value), None), None)
            table = table.set_column(index, "user_id", column)
        return table

    @staticmethod
    def _map_distinct(
        column: pa.ChunkedArray,
        function: Callable[[str], tuple[str, Counter[str] | None]],
        counts: Counter[str] | None,
    ) -> pa.Array:
        """Apply ``function`` once per distinct value; counts are multiplied by each value's occurrences."""
        encoded = pc.dictionary_encode(column.combine_chunks() if column.num_chunks != 1 else column.chunk(0))
        values = encoded.dictionary.to_pylist()
        if not values:
            return encoded.cast(_STRING)
        indices = encoded.indices
        occurrences = np.bincount(indices.drop_null().to_numpy(zero_copy_only=False), minlength=len(values))
        mapped = []
        for value, times in zip(values, occurrences, strict=True):
            new_value, found = function(value)
            mapped.append(new_value)
            if counts is not None and found:
                for kind, number in found.items():
                    counts[kind] += number * int(times)
        return pc.take(pa.array(mapped, _STRING), indices)


def _fast_candidates(lines: Sequence[bytes]) -> tuple[list[dict], list[int], list[int]]:
    """Per-line part of the fast path: decodable objects that may be valid events, with few checks per line.

    Kept: JSON objects whose keys can only be the schema's (14 with ``query``, or 13 without it)
    and whose numeric fields have allowed JSON types (``bool`` is not a number). The string fields'
    types are left to the Arrow conversion (``_records_to_columns``), which accepts only ``str``
    (or None, a null), and a missing required key shows as a null there. Returns (records, their
    line indexes, indexes of all other lines).
    """
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    number = _NUMBER_TYPES
    records: list[dict] = []
    record_indexes: list[int] = []
    others: list[int] = []
    add_record, add_index, add_other = records.append, record_indexes.append, others.append
    # parse_line refuses long lines before decoding them; check lengths per line only if one is long.
    long_lines = max(map(len, lines), default=0) > events.MAX_LINE_BYTES
    for index, line in enumerate(lines):
        if long_lines and len(line) > events.MAX_LINE_BYTES:
            add_other(index)
            continue
        try:
            record = loads(line)
        except decode_error:
            add_other(index)
            continue
        if type(record) is dict:
            size = len(record)
            if (size == 14 and "query" in record) or (size == 13 and "query" not in record):
                get = record.get
                if type(get("position")) is int and type(get("schema_version")) is int and type(get("price")) in number:
                    add_record(record)
                    add_index(index)
                    continue
        add_other(index)
    return records, record_indexes, others


def _exact_candidate(record: dict) -> bool:
    """The full per-line check, used only when a chunk's Arrow conversion fails: exact keys and JSON
    types, and numbers that fit 64 bits (Arrow's conversion refuses larger ones)."""
    size = len(record)
    try:
        if size == 14:
            signature_ok = tuple(map(type, _GET_WITH_QUERY(record))) in _SIGNATURES_WITH_QUERY
        elif size == 13:
            signature_ok = tuple(map(type, _GET_WITHOUT_QUERY(record))) in _SIGNATURES_WITHOUT_QUERY
        else:
            return False
    except KeyError:  # a field is missing, so another one is unknown
        return False
    numbers = (record["schema_version"], record["position"], record["price"])
    return signature_ok and all(type(value) is float or -(2**63) <= value < 2**63 for value in numbers)


def _records_to_columns(
    records: list[dict], record_indexes: list[int], slow_indexes: list[int]
) -> tuple[dict[str, pa.Array] | None, list[int]]:
    """Fast-path candidates as Arrow columns (``_FAST_STRUCT``) and their line indexes.

    Lines whose record cannot be converted go to ``slow_indexes``. The conversion is exact for what
    it accepts: a string column takes only ``str`` (anything else raises), numbers were type-checked
    per line. A missing required key or a JSON null becomes a null, which ``_fast_rules`` refuses.
    """
    if not records:
        return None, record_indexes
    try:
        struct = pa.array(records, type=_FAST_STRUCT)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        # A wrong type in a string field or a number beyond 64 bits: find those lines the slow way.
        exact = [_exact_candidate(record) for record in records]
        slow_indexes.extend(index for index, ok in zip(record_indexes, exact, strict=True) if not ok)
        records = list(itertools.compress(records, exact))
        record_indexes = list(itertools.compress(record_indexes, exact))
        if not records:
            return None, record_indexes
        try:
            struct = pa.array(records, type=_FAST_STRUCT)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            slow_indexes.extend(record_indexes)  # not expected; parse_line judges every line
            return None, []
    return {name: struct.field(name) for name in _FAST_STRUCT.names}, record_indexes


def _fast_rules(columns: dict[str, pa.Array]) -> tuple[pa.Array, pa.Array]:
    """Vectorised value rules on fast-path candidates: (mask of rows surely valid, event_at as timestamps)."""
    field = columns.__getitem__
    canonical_time = pc.match_substring_regex(field("event_at"), _CANONICAL_TIMESTAMP)
    checks = [
        canonical_time,
        pc.equal(field("schema_version"), events.SCHEMA_VERSION),
        pc.is_in(field("event_type"), value_set=pa.array(events.EVENT_TYPES)),
        pc.is_in(field("device"), value_set=pa.array(events.DEVICES)),
        pc.match_substring_regex(field("event_id"), _UUID_PATTERN),
        pc.greater_equal(field("position"), 0),
        pc.less_equal(field("position"), INT32_MAX),
        pc.greater_equal(field("price"), 0.0),
        pc.less(field("price"), 1e9),
        pc.or_kleene(
            pc.is_null(field("query")), pc.less_equal(pc.utf8_length(field("query")), events.MAX_QUERY_LENGTH)
        ),
    ]
    for name in _ID_FIELDS:
        length = pc.utf8_length(field(name))
        checks.append(pc.and_(pc.greater_equal(length, 1), pc.less_equal(length, events.MAX_ID_LENGTH)))
    for name in (*_ID_FIELDS, "query"):  # U+0000 goes the slow way, to be quarantined with its own reason
        checks.append(pc.invert(pc.fill_null(pc.match_substring(field(name), "\x00"), False)))
    for name in events.REQUIRED_FIELDS:  # a missing key or a JSON null (the rules above refuse it too)
        if field(name).null_count:
            checks.append(pc.is_valid(field(name)))
    mask = checks[0]
    for check in checks[1:]:
        mask = pc.and_(mask, check)
    mask = pc.fill_null(mask, False)
    # Arrow's ISO 8601 cast rejects impossible dates and times exactly like datetime.fromisoformat
    # (30 February, hour 24, second 60) but fails the whole array: rows it would fail are found with
    # Python only when that happens.
    text = pc.if_else(mask, field("event_at"), "2000-01-01T00:00:00.000Z")
    try:
        moments = pc.cast(text, pa.timestamp("ms", tz="UTC"))
    except pa.ArrowInvalid:
        possible = pa.array([_is_real_time(value) for value in text.to_pylist()], pa.bool_())
        mask = pc.and_(mask, possible)
        moments = pc.cast(pc.if_else(possible, text, "2000-01-01T00:00:00.000Z"), pa.timestamp("ms", tz="UTC"))
    return mask, pc.cast(moments, _TIMESTAMP)


def _is_real_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _events_to_table(parsed: list[tuple[int, events.Event]]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in PARSED_SCHEMA.names}
    for index, event in parsed:
        for name in _EVENT_COLUMNS:
            if name == "event_date":
                columns[name].append(event.event_at.date())
            else:
                columns[name].append(getattr(event, name))
        columns["batch_index"].append(index)
    return pa.table(columns, schema=PARSED_SCHEMA)


def _warehouse_rule(event: events.Event) -> tuple[str, str] | None:
    """Checks of valid events that the warehouse needs on top of schema v1: (reason, detail) or None."""
    if event.position > INT32_MAX:
        return f"{OUT_OF_RANGE}:position", f"position {event.position} does not fit a 32-bit integer"
    for name in _TEXT_FIELDS:
        value = getattr(event, name)
        if value is not None and "\x00" in value:
            return f"{NUL_CHARACTER}:{name}", f"{name} contains U+0000, which the warehouse cannot store"
    return None


def parse_batch(lines: Sequence[bytes], redactor: Redactor | None = None) -> ParsedBatch:
    """Parse a batch of log lines (without ``\\n``): valid events as Arrow columns, and the rejected lines.

    Line for line the verdict and values equal ``events.parse_line``'s (see the module docstring),
    plus two warehouse rules (``out_of_range:position``, ``nul_character:<field>``). With a
    ``redactor``, free text is PII-redacted and user ids pseudonymised.
    """
    # The batch allocates a dict per line and frees it soon; none of them can be part of a reference
    # cycle, so the cyclic collector would only rescan them (about 15% of the parse time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        records, record_indexes, slow_indexes = _fast_candidates(lines)
        columns, record_indexes = _records_to_columns(records, record_indexes, slow_indexes)
        del records
    finally:
        if collecting:
            gc.enable()
    tables = []
    if columns is not None:
        valid, moments = _fast_rules(columns)
        indexes = pa.array(record_indexes, pa.int32())
        if not pc.all(valid).as_py():
            slow_indexes.extend(pc.filter(indexes, pc.invert(valid)).to_pylist())
            columns = {name: column.filter(valid) for name, column in columns.items()}
            moments, indexes = moments.filter(valid), indexes.filter(valid)
        columns["event_at"] = moments
        columns["event_date"] = pc.cast(moments, pa.date32())
        columns["position"] = pc.cast(columns["position"], pa.int32())
        columns["batch_index"] = indexes
        tables.append(pa.table([columns[name] for name in PARSED_SCHEMA.names], schema=PARSED_SCHEMA))
    rejects: list[tuple[int, str, str]] = []
    slow_events: list[tuple[int, events.Event]] = []
    for index in sorted(slow_indexes):
        outcome = events.parse_line(lines[index])
        if isinstance(outcome, events.Rejection):
            rejects.append((index, outcome.reason, outcome.detail))
            continue
        broken = _warehouse_rule(outcome)
        if broken:
            rejects.append((index, *broken))
        else:
            slow_events.append((index, outcome))
    if slow_events:
        tables.append(_events_to_table(slow_events))
    table = pa.concat_tables(tables) if len(tables) > 1 else (tables[0] if tables else PARSED_SCHEMA.empty_table())
    redactions: Counter[str] = Counter()
    if redactor is not None and table.num_rows:
        table = redactor.apply(table, redactions)
    return ParsedBatch(table, rejects, redactions)


# --- parsing in worker processes ----------------------------------------------------------------------
# A worker is ``python -c "<_WORKER_COMMAND>"``: frames (8-byte little-endian length + bytes) on its
# stdin and stdout. In: the pseudonymisation key (empty for none), then chunks of lines joined by
# b"\n". Out: b"ready" once imported, then one pickled ("ok", ParsedBatch) or ("error", traceback)
# per chunk, in order. Own processes rather than multiprocessing: its spawn re-imports the caller's
# __main__ in every worker, which would re-run a script that calls ingest_day at top level.

_WORKER_COMMAND = "from loopline.ingest import parse_worker_main; parse_worker_main()"
_FRAME_HEADER = struct.Struct("<Q")


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_FRAME_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at the end of the stream (also for a stream cut inside a frame)."""
    header = stream.read(_FRAME_HEADER.size)
    if len(header) < _FRAME_HEADER.size:
        return None
    (size,) = _FRAME_HEADER.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


def parse_worker_main() -> None:
    """Entry point of a parse worker process (see ``_ParseWorker``): chunks on stdin, parsed batches on stdout."""
    requests = os.fdopen(os.dup(0), "rb")
    responses = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the frames
    key = _read_frame(requests)
    if key is None:
        return
    redactor = Redactor(key or None)
    _write_frame(responses, b"ready")
    while (payload := _read_frame(requests)) is not None:
        try:
            outcome: tuple[str, Any] = ("ok", parse_batch(payload.split(b"\n"), redactor))
        except Exception:  # noqa: BLE001 (reported to the parent, which parses the chunk itself)
            import traceback

            outcome = ("error", traceback.format_exc())
        _write_frame(responses, pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))


class _WorkerFailed(RuntimeError):
    """A parse worker process died, or failed on a chunk."""


class _ParseWorker:
    """One worker process, fed and drained by two threads so that neither side ever blocks the other."""

    def __init__(self, pseudonymization_key: bytes | None):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.ready = threading.Event()  # set once the worker has started
        self.settled = threading.Event()  # set once it has started or failed to
        self.outstanding = 0  # chunks sent whose result was not taken yet
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._requests.put(pseudonymization_key or b"")
        self._threads = [
            threading.Thread(target=self._write, name="loopline-parse-send", daemon=True),
            threading.Thread(target=self._read, name="loopline-parse-receive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (payload := self._requests.get()) is not None:
                _write_frame(stdin, payload)
        except OSError:
            pass  # the worker died; _read reports it
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        ending = f"parse worker {self.process.pid} ended"
        try:
            if _read_frame(stdout) == b"ready":
                self.ready.set()
                self.settled.set()
                while (frame := _read_frame(stdout)) is not None:
                    self._results.put(pickle.loads(frame))
        except Exception as error:  # noqa: BLE001 (whatever it is, receive() must not wait forever)
            ending = f"parse worker {self.process.pid} sent an unreadable result ({error!r})"
        finally:
            self.settled.set()
            self._results.put(("error", f"{ending} (exit code {self.process.poll()})"))

    def send(self, lines: list[bytes]) -> None:
        self.outstanding += 1
        self._requests.put(b"\n".join(lines))

    def receive(self) -> ParsedBatch:
        """The parsed batch of the oldest chunk sent and not received yet."""
        self.outstanding -= 1
        status, value = self._results.get()
        if status != "ok":
            raise _WorkerFailed(value)
        return value

    def stop(self) -> None:
        self._requests.put(None)  # the worker reads the end of its input and exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for thread in self._threads:
            thread.join(timeout=30)
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]


class _BatchParser:
    """Runs ``parse_batch`` on chunks of lines, here or in worker processes; results in submission order.

    Parsing is the CPU-heavy part of ingestion and holds the GIL, so on a machine with several cores
    it can run in worker processes (lines go out joined into one bytes object, parsed Arrow tables
    come back) while this process reads, deduplicates and loads. ``parse_batch`` is a pure function,
    so a chunk parsed in a worker gives exactly what it gives here, and the caller takes results in
    the order it submitted the chunks, so what is loaded never depends on the workers' timing. If
    the workers fail (cannot start, die, or raise), the chunk is parsed here and so is the rest of
    the run. Measured on 2 cores, workers do not pay (see docs/ingest.md): they are opt-in.
    """

    def __init__(self, redactor: Redactor, pseudonymization_key: bytes | None, workers: int):
        self._redactor = redactor
        self._key = pseudonymization_key
        self.workers = workers
        self._pool: list[_ParseWorker] = []

    @property
    def in_flight(self) -> int:
        """How many submitted chunks may wait for their result (0: each is parsed when submitted)."""
        return 3 * len(self._pool)

    def start_workers(self) -> None:
        """Start the worker processes (once) and wait until each has started or failed to.

        On failure, log why and keep parsing in this process.
        """
        if self._pool or self.workers < 1:
            return
        try:
            for _ in range(self.workers):
                self._pool.append(_ParseWorker(self._key))
        except OSError as error:
            self._give_up(error)
            return
        for worker in self._pool:
            worker.settled.wait(timeout=120)
        if all(worker.ready.is_set() for worker in self._pool):
            log.info("ingest: parsing in %d worker processes", self.workers)
        else:
            self._give_up(RuntimeError("a worker process did not start"))

    def submit(self, lines: list[bytes]) -> _ParseWorker | ParsedBatch:
        """Send a chunk to the least busy worker, or parse it now if there are no workers."""
        if self._pool:
            worker = min(self._pool, key=operator.attrgetter("outstanding"))
            worker.send(lines)
            return worker
        return parse_batch(lines, self._redactor)

    def result(self, ticket: _ParseWorker | ParsedBatch, lines: list[bytes]) -> ParsedBatch:
        """The chunk's parsed batch (``lines``: the chunk, to parse it here if its worker failed)."""
        if isinstance(ticket, ParsedBatch):
            return ticket
        if ticket in self._pool:
            try:
                return ticket.receive()
            except _WorkerFailed as error:
                self._give_up(error)
        return parse_batch(lines, self._redactor)

    def _give_up(self, error: BaseException) -> None:
        log.warning("ingest: parse worker processes failed, parsing the rest in this process: %s", error)
        self.close()
        self.workers = 0

    def close(self) -> None:
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.stop()


# =====================================================================================================
# Loading and quarantine
# =====================================================================================================

# Private, per-connection table of one run: its log objects in read order.
SOURCES_TABLE = Table(
    "loopline_ingest_sources",
    (
        Column("source_index", "integer"),
        Column("source_uri", "varchar"),
        Column("log_date", "date"),
        Column("log_hour", "smallint"),
    ),
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("ingest_run_id", _STRING),
        ("log_date", pa.date32()),
        ("log_hour", pa.int16()),
        ("source_uri", _STRING),
        ("line_number", pa.int32()),
        ("reason", _STRING),
        ("detail", _STRING),
        ("raw_base64", _STRING),
        ("raw_bytes", pa.int32()),
        ("raw_sha256", _STRING),
        ("is_truncated", pa.bool_()),
    ]
)
assert QUARANTINE_SCHEMA.names == list(QUARANTINE_EVENTS.column_names)


class _Sources:
    """The run's log objects with their partition columns as Arrow arrays, to label loaded rows."""

    def __init__(self, run_id: str, ingested_at: datetime, objects: Sequence[LogObject]):
        self.objects = objects
        self.run_id = pa.array([run_id], _STRING)
        self.ingested_at = pa.array([ingested_at], _TIMESTAMP)
        self.uri = pa.array([o.uri for o in objects], _STRING)
        self.log_date = pa.array([o.day for o in objects], pa.date32())
        self.log_hour = pa.array([o.hour for o in objects], pa.int16())

    def table(self) -> pa.Table:
        return pa.table(
            {
                "source_index": pa.array(range(len(self.objects)), pa.int32()),
                "source_uri": self.uri,
                "log_date": self.log_date,
                "log_hour": self.log_hour,
            }
        )

    def raw_events(self, parsed: pa.Table, source_of_line: np.ndarray, number_of_line: np.ndarray) -> pa.Table:
        """Parsed events with the columns raw_events adds: log partition, source, line, run.

        The rows keep ``parsed``'s order; its ``batch_index`` (read order within the batch) stays out.
        """
        batch_index = parsed.column("batch_index")
        source_index = pc.take(pa.array(source_of_line), batch_index)
        zeros = pa.array(np.zeros(parsed.num_rows, np.int32))
        added = {
            "log_date": pc.take(self.log_date, source_index),
            "log_hour": pc.take(self.log_hour, source_index),
            "source_uri": pc.take(self.uri, source_index),
            "line_number": pc.take(pa.array(number_of_line), batch_index),
            "ingest_run_id": pc.take(self.run_id, zeros),
            "ingested_at": pc.take(self.ingested_at, zeros),
        }
        columns = [parsed.column(name) if name in _EVENT_COLUMNS else added[name] for name in RAW_EVENTS.column_names]
        return pa.table(columns, names=list(RAW_EVENTS.column_names))


_UINT64_MASK = (1 << 64) - 1
_ID_WORD_FACTORS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)


def _mix64(value: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (every input bit changes about half the output bits)."""
    value = value ^ (value >> np.uint64(33))
    value = value * np.uint64(0xFF51AFD7ED558CCD)
    value = value ^ (value >> np.uint64(33))
    value = value * np.uint64(0xC4CEB9FE1A85EC53)
    return value ^ (value >> np.uint64(33))


def _id_hash(event_id: str) -> int:
    """The 64-bit hash of one event id, for the Bloom filter: equal to ``_id_hashes`` for that id."""
    data = event_id.encode("utf-8")
    if len(data) != 36:
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    words = struct.unpack("<4QI", data)
    value = 0
    for word, factor in zip((words[4], *words[:4]), (_ID_WORD_FACTORS[4], *_ID_WORD_FACTORS[:4]), strict=True):
        value ^= (word * factor) & _UINT64_MASK
    return int(_mix64(np.array([value], np.uint64))[0])


def _id_hashes(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """64-bit hashes of event ids (the same for the same id in any batch, unlike Python's salted ``hash``).

    Ids of a canonical UUID's 36 bytes, as good as all of them, are hashed straight from the Arrow
    buffers with NumPy (no Python object per id); a batch holding any other id is hashed per id.
    """
    if not isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = pa.array(ids, _STRING)
    array = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    count = len(array)
    if count and not array.null_count and array.type == _STRING:
        offsets = np.frombuffer(array.buffers()[1], np.int32, count=count + 1, offset=4 * array.offset)
        first = int(offsets[0])
        if int(offsets[-1]) - first == 36 * count and bool(np.all(np.diff(offsets) == 36)):
            data = np.frombuffer(array.buffers()[2], np.uint8, count=36 * count, offset=first).reshape(count, 36)
            words = np.ascontiguousarray(data[:, :32]).view("<u8")
            with np.errstate(over="ignore"):
                value = np.ascontiguousarray(data[:, 32:]).view("<u4")[:, 0].astype(np.uint64)
                value *= np.uint64(_ID_WORD_FACTORS[4])
                for column in range(4):
                    value ^= words[:, column] * np.uint64(_ID_WORD_FACTORS[column])
                return _mix64(value)
    return np.fromiter(map(_id_hash, array.to_pylist()), np.uint64, count=count)


class _SeenIds:
    """A fixed-size (32 MiB) blocked Bloom filter of the event ids loaded so far in this run.

    It never misses a loaded id; a false positive is settled by an exact look-up in the warehouse.
    Each id sets 4 bits of one 64-bit word (one memory access per id). Memory does not grow with the
    partition: over a 2M-id run about 1 fresh id in 80,000 is a false candidate (measured: 24), at 20M
    ids about 1 in 2,000 (each then costs a little SQL, never a wrong answer). Ids are given as their
    ``_id_hashes`` (or as strings, hashed here).
    """

    WORDS = 1 << 22

    def __init__(self) -> None:
        self._words = np.zeros(self.WORDS, dtype=np.uint64)
        self.empty = True

    def _word_and_mask(self, ids: np.ndarray | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        hashes = ids if isinstance(ids, np.ndarray) else _id_hashes(ids)
        word = (hashes >> np.uint64(40)) & np.uint64(self.WORDS - 1)
        one = np.uint64(1)
        mask = np.zeros(len(hashes), dtype=np.uint64)
        for shift in (0, 6, 12, 18):
            mask |= one << ((hashes >> np.uint64(shift)) & np.uint64(63))
        return word, mask

    def maybe_seen(self, ids: np.ndarray | Sequence[str]) -> np.ndarray:
        word, mask = self._word_and_mask(ids)
        return (self._words[word] & mask) == mask

    def add(self, ids: np.ndarray | Sequence[str]) -> None:
        word, mask = self._word_and_mask(ids)
        # A fancy-index |= keeps only the last of repeated words, so repeat for the bits still missing
        # (two or three passes; much faster than np.bitwise_or.at).
        while word.size:
            self._words[word] |= mask
            missing = (self._words[word] & mask) != mask
            word, mask = word[missing], mask[missing]
        self.empty = False


class _Loader:
    """Loads batches into the warehouse on one background thread while the next batch is parsed.

    Events are deduplicated on the way in, so no row is ever deleted inside the run's transaction
    (DuckDB would rewrite the whole interval at commit): within a batch the first line of each
    event_id is kept (an Arrow group-by, run only if two ids share a hash), and an id already loaded
    by an earlier batch is found with a Bloom filter and confirmed by an exact look-up of this run's
    rows in ``raw_events``.
    """

    def __init__(self, warehouse: Warehouse, run_id: str, partitions: str, partition_params: list[Any]):
        self._warehouse = warehouse
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopline-ingest-load")
        self._pending: deque[Future[Any]] = deque()  # run one after the other, in submission order
        self._seen = _SeenIds()
        self._this_run = (f"{partitions} AND ingest_run_id = ?", [*partition_params, run_id])
        self.duplicates = 0

    # Loads waiting or running at most: two, so a slow load and a slow parse overlap instead of
    # waiting for each other, and memory stays at a few batches.
    QUEUE_DEPTH = 2

    def submit(self, table_name: str, data: pa.Table) -> None:
        self._make_room()
        self._pending.append(self._executor.submit(self._warehouse.load_arrow, table_name, data))

    def submit_events(self, rows: pa.Table, read_order: pa.Array) -> None:
        self._make_room()
        self._pending.append(self._executor.submit(self._load_events, rows, read_order))

    def _make_room(self) -> None:
        while len(self._pending) >= self.QUEUE_DEPTH:
            self._pending.popleft().result()

    def _load_events(self, rows: pa.Table, read_order: pa.Array) -> None:
        received = rows.num_rows
        hashes = _id_hashes(rows.column("event_id"))
        if np.unique(hashes).size < received:  # maybe an id twice in this batch (or two ids, one hash)
            ids = rows.column("event_id")
            firsts = pa.table({"event_id": ids, "order": read_order}).group_by("event_id").aggregate([("order", "min")])
            first = pc.is_in(read_order, value_set=firsts.column("order_min"))
            rows, hashes = rows.filter(first), hashes[first.to_numpy(zero_copy_only=False)]
        if not self._seen.empty and rows.num_rows:
            maybe = np.flatnonzero(self._seen.maybe_seen(hashes))
            loaded = self._loaded_already(rows.column("event_id").take(maybe).to_pylist()) if maybe.size else set()
            if loaded:
                fresh = pc.invert(pc.is_in(rows.column("event_id"), value_set=pa.array(sorted(loaded), _STRING)))
                rows, hashes = rows.filter(fresh), hashes[fresh.to_numpy(zero_copy_only=False)]
        self.duplicates += received - rows.num_rows
        if rows.num_rows:
            self._warehouse.load_arrow(RAW_EVENTS.name, rows)
            self._seen.add(hashes)

    def _loaded_already(self, candidates: list[str]) -> set[str]:
        """The candidates that this run has loaded already (exact, in SQL)."""
        where, params = self._this_run
        found: set[str] = set()
        for start in range(0, len(candidates), 1000):
            chunk = candidates[start : start + 1000]
            marks = ", ".join("?" * len(chunk))
            rows = self._warehouse.query(
                f"SELECT DISTINCT event_id FROM raw_events WHERE {where} AND event_id IN ({marks})", [*params, *chunk]
            )
            found.update(event_id for (event_id,) in rows)
        return found

    def wait(self) -> None:
        """Wait for every submitted load; raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def close(self, *, failing: bool = False) -> None:
        """Wait for the last load (its error is raised unless the run is failing already) and stop the thread."""
        try:
            self.wait()
        except Exception:
            if not failing:
                raise
        finally:
            self._executor.shutdown(wait=True)


class _QuarantineSink:
    """Keeps every rejected line: full bytes in a spool file per hour, a redacted copy for the table."""

    def __init__(self, sources: _Sources, run_id: str, redactor: Redactor, loader: _Loader):
        self._sources = sources.objects
        self._run_id = run_id
        self._redactor = redactor
        self._loader = loader
        self._spools: dict[tuple[date, int], IO[bytes]] = {}
        self._rows: dict[str, list[Any]] = {name: [] for name in QUARANTINE_SCHEMA.names}
        self.redactions: Counter[str] = Counter()
        self.count = 0

    def add(self, source_index: int, line_number: int, reason: str, detail: str, raw: bytes) -> None:
        source = self._sources[source_index]
        detail = self._redactor.redact_value(detail, self.redactions)
        digest = hashlib.sha256(raw).hexdigest()
        spool = self._spools.get((source.day, source.hour))
        if spool is None:
            spool = tempfile.TemporaryFile(prefix="loopline-quarantine-")  # noqa: SIM115 (closed in close())
            self._spools[(source.day, source.hour)] = spool
        spool.write(
            orjson.dumps(
                {
                    "ingest_run_id": self._run_id,
                    "log_date": source.day.isoformat(),
                    "log_hour": source.hour,
                    "source_uri": source.uri,
                    "line_number": line_number,
                    "reason": reason,
                    "detail": detail,
                    "raw_base64": base64.b64encode(raw).decode("ascii"),
                    "raw_bytes": len(raw),
                    "raw_sha256": digest,
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        )
        # The table copy is redacted (the warehouse never holds PII) and capped; invalid UTF-8 survives
        # the round trip through surrogateescape unchanged.
        head = raw[: QUARANTINE_TABLE_RAW_CAP + 256].decode("utf-8", "surrogateescape")
        kept = self._redactor.redact_value(head, self.redactions).encode("utf-8", "surrogateescape")
        values = (
            self._run_id,
            source.day,
            source.hour,
            source.uri,
            line_number,
            reason,
            detail,
            base64.b64encode(kept[:QUARANTINE_TABLE_RAW_CAP]).decode("ascii"),
            len(raw),
            digest,
            len(raw) > QUARANTINE_TABLE_RAW_CAP or len(kept) > QUARANTINE_TABLE_RAW_CAP,
        )
        for name, value in zip(QUARANTINE_SCHEMA.names, values, strict=True):
            self._rows[name].append(value)
        self.count += 1
        if len(self._rows["reason"]) >= 10_000:
            self.flush()

    def flush(self) -> None:
        if self._rows["reason"]:
            table = pa.table(self._rows, schema=QUARANTINE_SCHEMA)
            self._rows = {name: [] for name in QUARANTINE_SCHEMA.names}
            self._loader.submit(QUARANTINE_EVENTS.name, table)

    def write_files(self, store: LogStore, hours: Iterable[tuple[date, int]]) -> list[str]:
        """Replace the quarantine object of every hour of the interval (none if the hour had no rejects)."""
        written = []
        for day, hour in hours:
            store.delete_partition(day, hour)
            spool = self._spools.pop((day, hour), None)
            if spool is None:
                continue
            with spool:
                spool.seek(0)
                obj = store.write(day, hour, QUARANTINE_PRODUCER, spool, sequence=0)
            written.append(obj.uri)
        return written

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()


# =====================================================================================================
# One run
# =====================================================================================================


def _check_interval(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    for name, moment in (("start", start), ("end", end)):
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise IngestError(f"interval {name} {moment!r} must be a timezone-aware datetime (UTC)")
        if moment.minute or moment.second or moment.microsecond:
            raise IngestError(f"interval {name} {moment.isoformat()} must fall on a whole hour (logs are hourly)")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise IngestError(f"interval end {end.isoformat()} must be after its start {start.isoformat()}")
    return start, end


def _partition_filter(hours: Sequence[tuple[date, int]]) -> tuple[str, list[Any]]:
    """SQL condition selecting the log partitions (log_date, log_hour) of the interval."""
    by_day: dict[date, list[int]] = {}
    for day, hour in hours:
        by_day.setdefault(day, []).append(hour)
    clauses, params = [], []
    for day, day_hours in by_day.items():
        clauses.append("(log_date = ? AND log_hour BETWEEN ? AND ?)")
        params.extend([day, min(day_hours), max(day_hours)])
    return "(" + " OR ".join(clauses) + ")", params


def _resolve_key(explicit: bytes | None, configured: Any) -> bytes | None:
    if explicit is not None:
        return explicit or None
    if configured is None:
        return None
    secret = configured.get_secret_value()
    return secret.encode("utf-8") if secret else None


def ingest_interval(
    start: datetime,
    end: datetime,
    *,
    log_store_uri: str | None = None,
    warehouse_uri: str | None = None,
    quarantine_uri: str | None = None,
    quarantine_threshold: float | None = None,
    pseudonymization_key: bytes | None = None,
    s3_endpoint_url: str | None = None,
    s3_client: Any = None,
    batch_lines: int = BATCH_LINES,
    parse_workers: int = 0,
    progress: bool = False,
) -> IngestResult:
    """Ingest the log partitions of ``[start, end)`` into the warehouse, replacing that interval's partitions.

    Defaults come from ``loopline.config.settings()``: the log store, the warehouse, the quarantine
    under ``<artifact_uri>/quarantine``, the threshold (1%) and the pseudonymisation key
    (``LOOPLINE_PSEUDONYMIZATION_KEY``; without one, user ids are kept as they are). Raises
    ``QuarantineThresholdExceeded`` if the quarantined share is above the threshold, after storing
    everything; ``ReconciliationError`` (nothing committed) if the counts do not add up. An
    ``s3_client`` (boto3) with its own credentials may be passed for ``s3://`` stores.
    ``parse_workers``: processes that parse lines beside this one (default 0: parse in this
    process, the faster choice on 2 cores, see docs/ingest.md). The result never depends on it.
    """
    from loopline.config import mask_uri, settings

    start, end = _check_interval(start, end)
    config = settings()
    log_store_uri = log_store_uri or config.log_store_uri
    warehouse_uri = warehouse_uri or config.warehouse_uri
    quarantine_uri = quarantine_uri or config.artifact_uri.rstrip("/") + "/quarantine"
    threshold = config.quarantine_threshold if quarantine_threshold is None else quarantine_threshold
    if not 0.0 <= threshold <= 1.0:
        raise IngestError(f"quarantine threshold {threshold!r} must be a share between 0 and 1")
    key = _resolve_key(pseudonymization_key, config.pseudonymization_key)
    endpoint = s3_endpoint_url or config.s3_endpoint_url
    if not 1 <= batch_lines <= 2**30:
        raise IngestError(f"batch_lines must be in 1..2**30, got {batch_lines}")
    if parse_workers < 0:
        raise IngestError(f"parse_workers must be 0 or more, got {parse_workers}")

    run_id = str(uuid.uuid4())
    started_at = datetime.now(UTC)
    log_store = LogStore.from_uri(log_store_uri, s3_endpoint_url=endpoint, s3_client=s3_client)
    quarantine_store = LogStore.from_uri(quarantine_uri, s3_endpoint_url=endpoint, s3_client=s3_client)
    hours = hours_between(start, end)
    sources = _Sources(run_id, started_at, log_store.list_interval(start, end))
    redactor = Redactor(key)
    log.info("ingest %s: [%s, %s) %d objects from %s", run_id, start, end, len(sources.objects), log_store.root_uri)

    partitions, partition_params = _partition_filter(hours)
    with Warehouse.from_uri(warehouse_uri) as warehouse:
        warehouse.ensure_schema()
        # One transaction: the interval's partitions are replaced as a whole or not at all.
        with warehouse.transaction():
            warehouse.create_scratch_table(SOURCES_TABLE)
            warehouse.load_arrow(SOURCES_TABLE.name, sources.table())
            warehouse.execute(f"DELETE FROM raw_events WHERE {partitions}", partition_params)
            warehouse.execute(f"DELETE FROM quarantine_events WHERE {partitions}", partition_params)
            clock = time.perf_counter()
            loader = _Loader(warehouse, run_id, partitions, partition_params)
            quarantine = _QuarantineSink(sources, run_id, redactor, loader)
            parser = _BatchParser(redactor, key, parse_workers)
            failing = True
            try:
                lines_read, staged, redactions = _stream(
                    log_store, sources, parser, loader, quarantine, batch_lines, progress
                )
                quarantine.flush()
                loader.close()
                quarantine_objects = quarantine.write_files(quarantine_store, hours)
                failing = False
            finally:
                parser.close()
                loader.close(failing=failing)
                quarantine.close()
            loaded_seconds, clock = time.perf_counter() - clock, time.perf_counter()
            result = _finish(
                warehouse,
                run_id=run_id,
                start=start,
                end=end,
                hours=hours,
                sources=sources.objects,
                lines_read=lines_read,
                staged=staged,
                duplicates=loader.duplicates,
                redactions=redactions,
                quarantine_redactions=quarantine.redactions,
                pseudonymized=redactor.pseudonymize_user_ids,
                threshold=threshold,
                quarantine_uri=quarantine_store.root_uri,
                quarantine_objects=quarantine_objects,
                warehouse_name=mask_uri(warehouse_uri),
                started_at=started_at,
            )
            warehouse.drop_table(SOURCES_TABLE.name)
        log.info(
            "ingest %s: read, parsed and loaded in %.1f s, deduplicated and committed in %.1f s",
            run_id,
            loaded_seconds,
            time.perf_counter() - clock,
        )

    log.info("ingest %s: %s", run_id, json.dumps(result.to_dict()))
    if result.status == STATUS_FAILED_THRESHOLD:
        raise QuarantineThresholdExceeded(threshold_message(result), result)
    return result


def _stream(
    store: LogStore,
    sources: _Sources,
    parser: _BatchParser,
    loader: _Loader,
    quarantine: _QuarantineSink,
    batch_lines: int,
    progress: bool,
) -> tuple[int, int, Counter[str]]:
    """Read every object in order, parse it in chunks, load events in batches and quarantine rejects.

    Chunks are handled (rejects quarantined, events staged for the warehouse) strictly in read order,
    whether ``parser`` runs them here or in worker processes (started at the first chunk, so a run
    without lines starts none). Returns (lines read, event rows loaded before deduplication,
    redactions by type).
    """
    from tqdm import tqdm

    redactions: Counter[str] = Counter()
    chunk_lines = min(batch_lines, PARSE_CHUNK_LINES)
    lines: list[bytes] = []
    segments: list[tuple[int, int, int]] = []  # (source_index, first line number, number of lines)
    # Submitted chunks: (parsed batch or the worker parsing it, lines, source index and number of each line).
    pending: deque[tuple[_ParseWorker | ParsedBatch, list[bytes], np.ndarray, np.ndarray]] = deque()
    staged_rows: list[pa.Table] = []  # parsed events waiting for the next warehouse load
    staged_order: list[pa.Array] = []  # their read order within that load
    staged_count = 0
    lines_in_load = 0  # lines handled since the last load (read order offset of the next chunk)
    lines_read = 0  # lines of the objects read completely (an unreadable rest counts as one)
    staged = 0

    def submit_chunk() -> None:
        nonlocal lines, segments
        if not lines:
            return
        parser.start_workers()
        source_of_line = np.concatenate([np.full(n, s, np.int32) for s, _, n in segments])
        number_of_line = np.concatenate([np.arange(first, first + n, dtype=np.int32) for _, first, n in segments])
        pending.append((parser.submit(lines), lines, source_of_line, number_of_line))
        lines, segments = [], []
        while len(pending) > parser.in_flight:
            handle(*pending.popleft())

    def handle(
        ticket: _ParseWorker | ParsedBatch, chunk: list[bytes], source_of_line: np.ndarray, number_of_line: np.ndarray
    ) -> None:
        nonlocal staged_count, lines_in_load, staged
        parsed = parser.result(ticket, chunk)
        redactions.update(parsed.redactions)
        for index, reason, detail in parsed.rejects:
            quarantine.add(int(source_of_line[index]), int(number_of_line[index]), reason, detail, chunk[index])
        if parsed.events.num_rows:
            batch_index = parsed.events.column("batch_index").combine_chunks()
            staged_rows.append(sources.raw_events(parsed.events, source_of_line, number_of_line))
            staged_order.append(
                pc.add(batch_index, pa.scalar(lines_in_load, pa.int32())) if lines_in_load else batch_index
            )
            staged_count += parsed.events.num_rows
            staged += parsed.events.num_rows
        lines_in_load += len(chunk)
        if staged_count >= batch_lines or lines_in_load >= 2**30:  # read order is an int32
            load_staged()

    def load_staged() -> None:
        nonlocal staged_rows, staged_order, staged_count, lines_in_load
        if staged_rows:
            rows = pa.concat_tables(staged_rows) if len(staged_rows) > 1 else staged_rows[0]
            loader.submit_events(rows, pa.concat_arrays(staged_order))
        staged_rows, staged_order, staged_count, lines_in_load = [], [], 0, 0

    bar = tqdm(total=len(sources.objects), unit="object", disable=not progress, file=sys.stderr)
    try:
        for source_index, source in enumerate(sources.objects):
            line_number = 0  # lines of this object read so far
            object_error: tuple[str, str] | None = None
            reader = store.iter_lines(source)
            try:
                while True:
                    # Whole runs of lines at a time (no Python code per line); list.extend keeps the
                    # lines read before a TruncatedObjectError, which the finally clause counts.
                    room, before = chunk_lines - len(lines), len(lines)
                    try:
                        lines.extend(itertools.islice(reader, room))
                    finally:
                        got = len(lines) - before
                        if got:
                            segments.append((source_index, line_number + 1, got))
                            line_number += got
                    if len(lines) >= chunk_lines:
                        submit_chunk()
                    if got < room:
                        break
            except TruncatedObjectError as error:
                object_error = (TRUNCATED_OBJECT, str(error))
            except LogStoreError as error:
                object_error = (CORRUPT_OBJECT, str(error))
            lines_read += line_number
            if object_error is not None:
                # The object's unreadable rest counts as one read line, quarantined, so reconciliation holds.
                lines_read += 1
                quarantine.add(source_index, line_number + 1, *object_error, b"")
            bar.update(1)
            bar.set_postfix(lines=lines_read, refresh=False)
        submit_chunk()
        while pending:
            handle(*pending.popleft())
        load_staged()
    finally:
        bar.close()
    return lines_read, staged, redactions


def threshold_message(result: IngestResult) -> str:
    """Why the run failed: share vs threshold, the top reasons, and where the quarantined lines are."""
    top = Counter(result.quarantined_by_reason).most_common(3)
    reasons = ", ".join(f"{reason} ({count})" for reason, count in top) or "none"
    where = ", ".join(result.quarantine_objects) or result.quarantine_uri
    return (
        f"ingest run {result.run_id} for [{result.interval_start.isoformat()}, {result.interval_end.isoformat()}): "
        f"{result.quarantined} of {result.lines_read} lines quarantined ({result.quarantined_share:.2%}), "
        f"above the threshold of {result.quarantine_threshold:.2%}. Top reasons: {reasons}. "
        f"Quarantined lines: {where} and table quarantine_events (ingest_run_id = '{result.run_id}'). "
        "Everything was stored; fix the producer and re-run the interval to replace it."
    )


def _finish(
    warehouse: Warehouse,
    *,
    run_id: str,
    start: datetime,
    end: datetime,
    hours: Sequence[tuple[date, int]],
    sources: Sequence[LogObject],
    lines_read: int,
    staged: int,
    duplicates: int,
    redactions: Counter[str],
    quarantine_redactions: Counter[str],
    pseudonymized: bool,
    threshold: float,
    quarantine_uri: str,
    quarantine_objects: list[str],
    warehouse_name: str,
    started_at: datetime,
) -> IngestResult:
    """Inside the run's transaction: reconcile the counts with the warehouse and record the run."""
    partitions, partition_params = _partition_filter(hours)
    this_run, this_run_params = f"{partitions} AND ingest_run_id = ?", [*partition_params, run_id]
    loaded = warehouse.row_count("raw_events", this_run, this_run_params)
    by_reason = {
        reason: int(count)
        for reason, count in warehouse.query(
            f"SELECT reason, count(*) FROM quarantine_events WHERE {this_run} GROUP BY reason ORDER BY reason",
            this_run_params,
        )
    }
    quarantined = sum(by_reason.values())
    if staged != loaded + duplicates or lines_read != loaded + duplicates + quarantined:
        raise ReconciliationError(
            f"ingest run {run_id}: lines read {lines_read} != loaded {loaded} + duplicates {duplicates} "
            f"+ quarantined {quarantined} (events staged: {staged}); nothing was committed"
        )
    share = quarantined / lines_read if lines_read else 0.0
    status = STATUS_FAILED_THRESHOLD if share > threshold else STATUS_SUCCEEDED
    finished_at = datetime.now(UTC)
    result = IngestResult(
        run_id=run_id,
        interval_start=start,
        interval_end=end,
        sources=[source.uri for source in sources],
        lines_read=lines_read,
        loaded=loaded,
        duplicates=duplicates,
        quarantined=quarantined,
        quarantined_by_reason=by_reason,
        redactions_by_type=dict(sorted(redactions.items())),
        quarantine_redactions_by_type=dict(sorted(quarantine_redactions.items())),
        pseudonymized_user_ids=pseudonymized,
        status=status,
        quarantine_threshold=threshold,
        quarantine_uri=quarantine_uri,
        quarantine_objects=quarantine_objects,
        warehouse=warehouse_name,
        started_at=started_at,
        finished_at=finished_at,
    )
    warehouse.execute(
        "INSERT INTO ingest_runs (run_id, interval_start, interval_end, sources, lines_read, loaded, duplicates, "
        "quarantined, quarantined_by_reason, redactions_by_type, started_at, finished_at, status, quarantine_uri) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            start,
            end,
            json.dumps(result.sources),
            lines_read,
            loaded,
            duplicates,
            quarantined,
            json.dumps(by_reason, sort_keys=True),
            json.dumps(result.redactions_by_type, sort_keys=True),
            started_at,
            finished_at,
            status,
            quarantine_uri,
        ],
    )
    return result


def ingest_day(day: date, **options: Any) -> IngestResult:
    """Ingest one UTC day ``[day, day + 1)``; options as for ``ingest_interval``."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return ingest_interval(start, start + timedelta(days=1), **options)


# =====================================================================================================
# Command line
# =====================================================================================================


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``loopline ingest --logs URI --date YYYY-MM-DD``."""
    parser = subparsers.add_parser(
        "ingest",
        help="load one day of event logs into the warehouse (validate, dedupe, redact, quarantine)",
        description="Ingest the log partitions of one UTC day and print the run's counts as JSON. "
        "Re-running a day replaces its partitions.",
    )
    parser.add_argument("--logs", metavar="URI", help="log store (file:// or s3://); default LOOPLINE_LOG_STORE_URI")
    parser.add_argument("--date", required=True, type=_parse_date, metavar="YYYY-MM-DD", help="the UTC day to ingest")
    parser.add_argument("--warehouse", metavar="URI", help="duckdb:///path or postgresql://...; default from settings")
    parser.add_argument("--quarantine", metavar="URI", help="where quarantine files go; default <artifacts>/quarantine")
    parser.add_argument("--threshold", type=float, metavar="SHARE", help="fail above this quarantined share (0.01)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    parser.set_defaults(handler=_cli_ingest)


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _cli_ingest(args: argparse.Namespace) -> int:
    try:
        result = ingest_day(
            args.date,
            log_store_uri=args.logs,
            warehouse_uri=args.warehouse,
            quarantine_uri=args.quarantine,
            quarantine_threshold=args.threshold,
            progress=args.progress,
        )
    except QuarantineThresholdExceeded as error:
        print(json.dumps(error.result.to_dict(), indent=2))
        print(f"loopline ingest: {error}", file=sys.stderr)
        return 1
    except IngestError as error:
        print(f"loopline ingest: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2))
    return 0
