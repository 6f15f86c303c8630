"""Interaction event schema v1: one JSON object per line (see docs/events.md).

``parse_line`` is strict and total: for any bytes it returns either an ``Event`` or a ``Rejection``
with a reason code, never raises. Ingestion quarantines rejections with their code, so every reason
code here is part of the contract.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

SCHEMA_VERSION = 1
EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
DEVICES = ("desktop", "mobile", "tablet", "unknown")
# A longer line is rejected before it is decoded, so one bad producer cannot exhaust memory.
MAX_LINE_BYTES = 64 * 1024
MAX_ID_LENGTH = 128
MAX_QUERY_LENGTH = 1024

# Reason codes without a field suffix. Field-specific ones are "<code>:<field>".
EMPTY_LINE = "empty_line"
LINE_TOO_LONG = "line_too_long"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_TIMESTAMP = "bad_timestamp"
MISSING_FIELD = "missing_field"  # missing_field:<name>
BAD_TYPE = "bad_type"  # bad_type:<name>      (wrong JSON type)
BAD_VALUE = "bad_value"  # bad_value:<name>    (right type, value out of its domain)
UNKNOWN_FIELD = "unknown_field"  # unknown_field:<name>

# Every code a rejection can start with, for documentation and exhaustive tests.
REASON_CODES = (
    EMPTY_LINE,
    LINE_TOO_LONG,
    INVALID_UTF8,
    INVALID_JSON,
    NOT_AN_OBJECT,
    UNSUPPORTED_SCHEMA_VERSION,
    UNKNOWN_EVENT_TYPE,
    BAD_TIMESTAMP,
    MISSING_FIELD,
    BAD_TYPE,
    BAD_VALUE,
    UNKNOWN_FIELD,
)


@dataclass(frozen=True, slots=True)
class Event:
    """One valid interaction, as logged by the serving layer or an importer."""

    event_id: str
    event_type: str
    event_at: datetime  # tz-aware, UTC
    user_id: str
    item_id: str
    request_id: str
    position: int
    model_version: str
    variant: str
    page: str
    device: str
    price: float
    query: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: timestamps as RFC 3339 with a ``Z`` suffix and millisecond precision."""
        record = asdict(self)
        record["event_at"] = format_timestamp(self.event_at)
        return record

    def to_json_line(self) -> bytes:
        return orjson.dumps(self.to_dict()) + b"\n"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a line is not a valid event: ``reason`` is a code, ``detail`` says it for a human."""

    reason: str
    detail: str = ""

    @property
    def code(self) -> str:
        """The reason without its field suffix (``missing_field:user_id`` -> ``missing_field``)."""
        return self.reason.split(":", 1)[0]


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no time zone; Loopline keeps every time in UTC")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# RFC 3339 date-time: date "T" time, optional fraction, then Z or a numeric offset.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_timestamp(text: str) -> datetime | None:
    """Parse an RFC 3339 UTC timestamp (``Z`` or ``+00:00``); None if it is not one."""
    if not _RFC3339.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text.upper())  # Python 3.11 reads Z and any fraction
    except ValueError:
        return None
    if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:
        return None
    return moment.astimezone(UTC)


def uuid4_texts(count: int) -> list[str]:
    """``count`` random version-4 UUIDs in canonical text form, as ``str(uuid.uuid4())`` gives them.

    One ``os.urandom`` call for all of them: ``/rank`` needs one per request and per impression,
    and ``uuid.uuid4()`` builds a UUID object for each (2.5 us; this takes 0.7 us).
    """
    raw = bytearray(os.urandom(16 * count))
    texts = []
    for start in range(0, 16 * count, 16):
        raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
        raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # RFC 4122 variant
        digits = raw[start : start + 16].hex()
        texts.append(f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}")
    return texts


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


# name -> (JSON types allowed, required?)
_STRING_FIELDS = ("event_id", "user_id", "item_id", "request_id", "model_version", "variant", "page", "device")
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), True),
    "event_id": ((str,), True),
    "event_type": ((str,), True),
    "event_at": ((str,), True),
    "user_id": ((str,), True),
    "item_id": ((str,), True),
    "request_id": ((str,), True),
    "position": ((int,), True),
    "model_version": ((str,), True),
    "variant": ((str,), True),
    "page": ((str,), True),
    "device": ((str,), True),
    "price": ((int, float), True),
    "query": ((str, type(None)), False),
}
REQUIRED_FIELDS = tuple(name for name, (_, required) in FIELDS.items() if required)


def parse_line(raw: bytes | str) -> Event | Rejection:
    """Validate one log line against schema v1.

    Accepts a trailing ``\\n`` or ``\\r\\n`` and a leading UTF-8 byte-order mark. Checks run in a
    fixed order (size, encoding, JSON, object, version, fields, types, values), so a line with
    several faults always gets the same, first, reason.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return Rejection(INVALID_UTF8, "text is not encodable as UTF-8")
    line = raw.rstrip(b"\r\n")
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    if not line.strip():
        return Rejection(EMPTY_LINE, "line is empty or only white space")
    if len(line) > MAX_LINE_BYTES:
        return Rejection(LINE_TOO_LONG, f"line has {len(line)} bytes, at most {MAX_LINE_BYTES} allowed")
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection(INVALID_UTF8, f"byte {error.start} is not valid UTF-8")
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return Rejection(INVALID_JSON, str(error)[:200])
    if not isinstance(record, dict):
        return Rejection(NOT_AN_OBJECT, f"top level is a JSON {type(record).__name__}, expected an object")
    return parse_record(record)


def parse_record(record: dict[str, Any]) -> Event | Rejection:
    """Validate an already decoded JSON object against schema v1."""
    version = record.get("schema_version")
    if version is None:
        return Rejection(f"{MISSING_FIELD}:schema_version", "schema_version is required")
    if type(version) is not int or version != SCHEMA_VERSION:
        return Rejection(UNSUPPORTED_SCHEMA_VERSION, f"schema_version {version!r}, expected {SCHEMA_VERSION}")
    for name in REQUIRED_FIELDS:
        if name not in record or record[name] is None:
            return Rejection(f"{MISSING_FIELD}:{name}", f"{name} is required")
    for name in record:
        if name not in FIELDS:
            return Rejection(f"{UNKNOWN_FIELD}:{name}", f"{name!r} is not a schema v1 field")
    for name, (types, _) in FIELDS.items():
        value = record.get(name)
        # bool is an int in Python; JSON true/false is never a valid number here.
        wrong_type = type(value) not in types or isinstance(value, bool)
        if name in record and wrong_type and not (value is None and not FIELDS[name][1]):
            expected = "/".join("null" if t is type(None) else t.__name__ for t in types)
            return Rejection(f"{BAD_TYPE}:{name}", f"{name} is {type(value).__name__}, expected {expected}")
    if record["event_type"] not in EVENT_TYPES:
        return Rejection(UNKNOWN_EVENT_TYPE, f"event_type {record['event_type']!r} not in {EVENT_TYPES}")
    event_at = parse_timestamp(record["event_at"])
    if event_at is None:
        return Rejection(BAD_TIMESTAMP, f"event_at {record['event_at'][:64]!r} is not RFC 3339 UTC")
    if not _is_uuid(record["event_id"]):
        return Rejection(f"{BAD_VALUE}:event_id", "event_id is not a UUID")
    for name in _STRING_FIELDS:
        value = record[name]
        if not value or len(value) > MAX_ID_LENGTH:
            return Rejection(f"{BAD_VALUE}:{name}", f"{name} must have 1..{MAX_ID_LENGTH} characters")
    if record["device"] not in DEVICES:
        return Rejection(f"{BAD_VALUE}:device", f"device {record['device']!r} not in {DEVICES}")
    if record["position"] < 0:
        return Rejection(f"{BAD_VALUE}:position", "position must be 0 or more")
    price = float(record["price"])
    if not (0.0 <= price < 1e9):  # also rejects NaN
        return Rejection(f"{BAD_VALUE}:price", "price must be in [0, 1e9)")
    query = record.get("query")
    if query is not None and len(query) > MAX_QUERY_LENGTH:
        return Rejection(f"{BAD_VALUE}:query", f"query must have at most {MAX_QUERY_LENGTH} characters")
    return Event(
        event_id=record["event_id"],
        event_type=record["event_type"],
        event_at=event_at,
        user_id=record["user_id"],
        item_id=record["item_id"],
        request_id=record["request_id"],
        position=record["position"],
        model_version=record["model_version"],
        variant=record["variant"],
        page=record["page"],
        device=record["device"],
        price=price,
        query=query,
    )
