"""Malformed log lines of every kind ``loopline.events.parse_line`` names, each with its expected reason.

Each kind mutates a valid event (so a bad line looks like what a faulty producer really writes) in
exactly one way, chosen so the parser's fixed check order gives exactly the listed reason. Kinds are
dealt round-robin in a shuffled order, so any ``len(MALFORMED_KINDS)`` consecutive bad lines cover
every kind.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson

from loopline import events

Record = dict[str, Any]
Builder = Callable[[Record, random.Random], tuple[bytes, str]]


def _dump(record: Record, **changes: Any) -> bytes:
    changed = dict(record)
    changed.update(changes)
    return orjson.dumps(changed)


def _empty_line(record: Record, picker: random.Random) -> tuple[bytes, str]:
    return picker.choice([b"", b"   ", b"\t", b" \r"]), events.EMPTY_LINE


def _line_too_long(record: Record, picker: random.Random) -> tuple[bytes, str]:
    filler = "lorem ipsum dolor sit amet " * (events.MAX_LINE_BYTES // 27 + 200)
    return _dump(record, query=filler), events.LINE_TOO_LONG


def _invalid_utf8(record: Record, picker: random.Random) -> tuple[bytes, str]:
    marker = "__NOT_UTF8__"
    line = _dump(record, query=f"caf{marker} au lait")
    return line.replace(marker.encode(), picker.choice([b"\xe9", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80"])), (
        events.INVALID_UTF8
    )


def _invalid_json(record: Record, picker: random.Random) -> tuple[bytes, str]:
    line = _dump(record)
    variant = picker.randrange(4)
    if variant == 0:  # cut off mid-write
        bad = line[: max(2, int(len(line) * picker.uniform(0.2, 0.9)))]
    elif variant == 1:  # trailing comma
        bad = line[:-1] + b",}"
    elif variant == 2:  # a Python dict printed instead of JSON
        bad = repr(record).encode()
    else:  # NaN is not JSON
        bad = _dump(record, price=123456.789).replace(b"123456.789", b"NaN")
    return bad, events.INVALID_JSON


def _not_an_object(record: Record, picker: random.Random) -> tuple[bytes, str]:
    choices = [
        orjson.dumps(list(record.values())),
        orjson.dumps(record["event_id"]),
        b"null",
        b"42",
        orjson.dumps([record]),
    ]
    return picker.choice(choices), events.NOT_AN_OBJECT


def _unsupported_version(record: Record, picker: random.Random) -> tuple[bytes, str]:
    return _dump(record, schema_version=picker.choice([2, 0, "1", 1.0, True])), events.UNSUPPORTED_SCHEMA_VERSION


def _unknown_event_type(record: Record, picker: random.Random) -> tuple[bytes, str]:
    value = picker.choice(["view", "Click", "page_view", "IMPRESSION", ""])
    return _dump(record, event_type=value), events.UNKNOWN_EVENT_TYPE


def _bad_timestamp(record: Record, picker: random.Random) -> tuple[bytes, str]:
    good: str = record["event_at"]  # 2024-01-01T12:34:56.789Z
    value = picker.choice(
        [
            good.replace("T", " "),
            good.replace("Z", "+02:00"),
            good[:-1],
            good[:10],
            "1709294400",
            good[:5] + "02-30" + good[10:],
            "yesterday",
        ]
    )
    return _dump(record, event_at=value), events.BAD_TIMESTAMP


def _missing(name: str) -> Builder:
    def build(record: Record, picker: random.Random) -> tuple[bytes, str]:
        changed = dict(record)
        if picker.random() < 0.5:
            del changed[name]
        else:
            changed[name] = None
        return orjson.dumps(changed), f"{events.MISSING_FIELD}:{name}"

    return build


_WRONG_TYPES: dict[str, list[Any]] = {
    "event_id": [12345, 3.5],
    "event_type": [1, ["click"]],
    "event_at": [1709294400, 1709294400123],
    "user_id": [123, 4567],
    "item_id": [42, {"id": "i00042"}],
    "request_id": [["r1"], 99],
    "position": ["3", 3.0, True],
    "model_version": [3, 2.1],
    "variant": [True, 1],
    "page": [{"name": "home"}, 7],
    "device": [0, ["mobile"]],
    "price": ["19.99", True, [19.99]],
    "query": [12345, ["red", "shoes"], False],
}


def _bad_type(name: str) -> Builder:
    def build(record: Record, picker: random.Random) -> tuple[bytes, str]:
        return _dump(record, **{name: picker.choice(_WRONG_TYPES[name])}), f"{events.BAD_TYPE}:{name}"

    return build


_TOO_LONG_ID = "x" * (events.MAX_ID_LENGTH + 1)
_WRONG_VALUES: dict[str, list[Any]] = {
    "event_id": ["not-a-uuid", "12345", "0b9f5c2e8d7a4f1e9c3b6a5d4e3f2a1b"],
    "user_id": ["", _TOO_LONG_ID],
    "item_id": ["", _TOO_LONG_ID],
    "request_id": ["", _TOO_LONG_ID],
    "model_version": ["", _TOO_LONG_ID],
    "variant": ["", _TOO_LONG_ID],
    "page": ["", _TOO_LONG_ID],
    "device": ["smartwatch", "Mobile", "tv"],
    "position": [-1, -7],
    "price": [-1.0, -0.01, 1e9, 5e12],
    "query": ["very long query " * 80, "x" * (events.MAX_QUERY_LENGTH + 1)],
}


def _bad_value(name: str) -> Builder:
    def build(record: Record, picker: random.Random) -> tuple[bytes, str]:
        return _dump(record, **{name: picker.choice(_WRONG_VALUES[name])}), f"{events.BAD_VALUE}:{name}"

    return build


def _unknown_field(record: Record, picker: random.Random) -> tuple[bytes, str]:
    name = picker.choice(["session_id", "ip_address", "userId", "timestamp", "referrer", "email"])
    return _dump(record, **{name: "x"}), f"{events.UNKNOWN_FIELD}:{name}"


MALFORMED_KINDS: dict[str, Builder] = {
    "empty_line": _empty_line,
    "line_too_long": _line_too_long,
    "invalid_utf8": _invalid_utf8,
    "invalid_json": _invalid_json,
    "not_an_object": _not_an_object,
    "unsupported_schema_version": _unsupported_version,
    "unknown_event_type": _unknown_event_type,
    "bad_timestamp": _bad_timestamp,
    **{f"missing_field:{name}": _missing(name) for name in events.REQUIRED_FIELDS},
    # schema_version of a wrong type is reported as unsupported_schema_version, so it has no bad_type kind.
    **{f"bad_type:{name}": _bad_type(name) for name in _WRONG_TYPES},
    **{f"bad_value:{name}": _bad_value(name) for name in _WRONG_VALUES},
    "unknown_field": _unknown_field,
}


class MalformedLineMaker:
    """Deals malformed lines kind by kind in a shuffled round-robin order."""

    def __init__(self, picker: random.Random):
        self.picker = picker
        self._order: list[str] = []

    def make(self, record: Record) -> tuple[bytes, str, str]:
        """A malformed line (without ``\\n``) derived from valid ``record``, its expected reason and kind."""
        if not self._order:
            self._order = list(MALFORMED_KINDS)
            self.picker.shuffle(self._order)
        kind = self._order.pop()
        line, reason = MALFORMED_KINDS[kind](record, self.picker)
        return line, reason, kind
