"""Schema v1 parser: every reason code, round trips, and total behaviour on arbitrary input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline import events
from loopline.events import Event, Rejection, format_timestamp, parse_line, parse_timestamp

VALID = {
    "schema_version": 1,
    "event_id": "0b6f3c1e-8f7a-4c55-9a53-2f0e8d1b7c11",
    "event_type": "impression",
    "event_at": "2024-05-01T12:34:56.789Z",
    "user_id": "u000001",
    "item_id": "i00042",
    "request_id": "r-1",
    "position": 3,
    "model_version": "popularity",
    "variant": "champion",
    "page": "search",
    "device": "mobile",
    "price": 19.99,
    "query": "red dress",
}


def line(**changes) -> bytes:
    record = {**VALID, **changes}
    for name in [n for n, v in changes.items() if v is ...]:
        del record[name]
    return orjson.dumps(record)


def test_a_valid_line_parses_to_an_event_in_utc():
    event = parse_line(line())
    assert isinstance(event, Event)
    assert event.event_at == datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert event.price == 19.99 and event.position == 3 and event.query == "red dress"


def test_an_event_round_trips_through_its_json_line():
    event = parse_line(line())
    assert parse_line(event.to_json_line()) == event
    assert event.to_json_line().endswith(b"\n")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_line"),
        (b"   \r\n", "empty_line"),
        (b"x" * (events.MAX_LINE_BYTES + 1), "line_too_long"),
        (b'{"a": "\xff\xfe"}', "invalid_utf8"),
        (b'{"schema_version": 1,', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (line(schema_version=2), "unsupported_schema_version"),
        (line(schema_version="1"), "unsupported_schema_version"),
        (line(schema_version=...), "missing_field:schema_version"),
        (line(user_id=...), "missing_field:user_id"),
        (line(price=None), "missing_field:price"),
        (line(extra="x"), "unknown_field:extra"),
        (line(position="3"), "bad_type:position"),
        (line(position=True), "bad_type:position"),
        (line(price="19.99"), "bad_type:price"),
        (line(query=5), "bad_type:query"),
        (line(event_type="view"), "unknown_event_type"),
        (line(event_at="2024-05-01 12:34:56"), "bad_timestamp"),
        (line(event_at="2024-05-01T12:34:56+02:00"), "bad_timestamp"),
        (line(event_at="2024-02-30T00:00:00Z"), "bad_timestamp"),
        (line(event_id="not-a-uuid"), "bad_value:event_id"),
        (line(user_id=""), "bad_value:user_id"),
        (line(device="fridge"), "bad_value:device"),
        (line(position=-1), "bad_value:position"),
        (line(price=-0.01), "bad_value:price"),
        (line(query="q" * (events.MAX_QUERY_LENGTH + 1)), "bad_value:query"),
    ],
)
def test_each_fault_gets_its_reason_code(raw: bytes, reason: str):
    result = parse_line(raw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.code in events.REASON_CODES
    assert result.detail


def test_every_reason_code_is_exercised_above():
    exercised = {
        reason.split(":")[0]
        for _, reason in test_each_fault_gets_its_reason_code.pytestmark[0].args[1]  # type: ignore[attr-defined]
    }
    assert exercised == set(events.REASON_CODES)


@pytest.mark.parametrize(
    "raw",
    [line() + b"\r\n", b"\xef\xbb\xbf" + line(), line() + b"\n", line(query=None), line(query=...)],
    ids=["crlf", "bom", "lf", "null-query", "no-query"],
)
def test_line_endings_bom_and_optional_query_are_accepted(raw: bytes):
    assert isinstance(parse_line(raw), Event)


def test_timestamps_accept_utc_forms_only():
    assert parse_timestamp("2024-05-01T00:00:00Z") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_timestamp("2024-05-01t00:00:00.123456789z") == datetime(2024, 5, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T00:00:00+00:00") is not None
    assert parse_timestamp("2024-05-01T00:00:00-05:00") is None
    assert parse_timestamp("1714521600") is None
    with pytest.raises(ValueError, match="no time zone"):
        format_timestamp(datetime(2024, 5, 1))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes):
    assert isinstance(parse_line(raw), Event | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(events.FIELDS)), json_values, max_size=len(events.FIELDS)))
def test_arbitrary_objects_get_an_event_or_a_known_reason(fields: dict):
    result = parse_line(json.dumps({**VALID, **fields}).encode())
    if isinstance(result, Rejection):
        assert result.code in events.REASON_CODES
    else:
        assert parse_line(result.to_json_line()) == result


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
)
def test_timestamps_round_trip_at_millisecond_precision(moment: datetime):
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert parse_timestamp(format_timestamp(moment)) == moment
