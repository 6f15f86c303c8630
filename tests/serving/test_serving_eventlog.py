"""The event logger: schema v1 lines, background flushes, nothing lost on close, retries after a failed write."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loopline.events import Event, parse_line, uuid4_texts
from loopline.logstore import LogStore
from loopline.serving.eventlog import EventLogger, event_line, producer_name
from loopline.serving.ranker import ServedRequest, impression_lines
from loopline.serving.ranker import _event as served_event


def _event(index: int, **changes) -> Event:
    values = dict(
        event_id=str(uuid.uuid4()),
        event_type="impression",
        event_at=datetime(2026, 3, 1, 12, 30, 1, 123456, tzinfo=UTC),
        user_id=f"u{index}",
        item_id=f"i{index}",
        request_id=str(uuid.uuid4()),
        position=index % 10 + 1,
        model_version="loopline-ctr/3",
        variant="champion",
        page="home",
        device="unknown",
        price=12.5,
        query=None,
    )
    values.update(changes)
    return Event(**values)


def _lines(root: Path) -> list[bytes]:
    store = LogStore.from_uri(root.as_uri())
    found = []
    for day_dir in sorted(root.glob("dt=*")):
        day = datetime.strptime(day_dir.name[3:], "%Y-%m-%d").date()
        for obj in store.list(day):
            found.extend(store.iter_lines(obj))
    return found


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


@pytest.mark.parametrize("query", [None, "red dress ü"])
def test_event_line_is_byte_identical_to_the_schema_serialisation(query):
    event = _event(1, query=query)
    line = event_line(event)
    assert line == event.to_json_line()
    parsed = parse_line(line)
    assert isinstance(parsed, Event) and parsed.event_id == event.event_id and parsed.query == query


@pytest.mark.parametrize("query", [None, "red dress ü"])
def test_impression_lines_are_byte_identical_to_one_event_per_item(query):
    served = ServedRequest(
        user_id="u 7",
        model_version="loopline-ctr/4",
        variant="canary",
        page="search",
        device="mobile",
        query=query,
        positions={"item-b": (1, 19.99), "item-ä": (2, 0.0), "item-a": (3, 1e6)},
    )
    moment = datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    request_id, *event_ids = uuid4_texts(4)
    lines = impression_lines(request_id, served, moment, event_ids)
    expected = []
    for event_id, item_id in zip(event_ids, served.positions, strict=True):
        event = served_event("impression", moment, request_id, served, item_id)
        expected.append(dataclasses.replace(event, event_id=event_id).to_json_line())
    assert lines == expected
    assert [parse_line(line).position for line in lines] == [1, 2, 3]


def test_uuid4_texts_are_distinct_canonical_version_4_uuids():
    texts = uuid4_texts(2_000)
    assert len(set(texts)) == 2_000
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert uuid4_texts(0) == []
    # Every random bit is used: each hex digit outside the fixed version/variant ones takes many values.
    digits = [{text[index] for text in texts} for index in range(36) if index not in (8, 13, 14, 18, 19, 23)]
    assert all(len(seen) == 16 for seen in digits)


def test_producer_names_are_unique_and_valid_log_object_names(tmp_path):
    names = {producer_name() for _ in range(50)}
    assert len(names) == 50
    store = LogStore.from_uri(tmp_path.as_uri())
    written = store.write(datetime(2026, 3, 1).date(), 5, sorted(names)[0], [b"{}\n"], sequence=123456)
    assert (written.producer, written.sequence) == (sorted(names)[0], 123456)  # the name parses back


def test_background_flush_writes_the_buffer_within_the_interval(tmp_path):
    logger = EventLogger(tmp_path.as_uri(), flush_seconds=0.1)
    logger.start()
    try:
        logger.log(_event(i) for i in range(25))
        _wait_for(lambda: logger.written_lines == 25)
        assert logger.buffered == 0
    finally:
        assert logger.close() == 0
    lines = _lines(tmp_path)
    assert len(lines) == 25
    assert all(isinstance(parse_line(line), Event) for line in lines)


def test_close_flushes_everything_and_refuses_later_events(tmp_path):
    logger = EventLogger(tmp_path.as_uri(), flush_seconds=3600)  # only close() flushes here
    logger.start()
    logger.log(_event(i) for i in range(1000))
    assert logger.close() == 0
    assert len(_lines(tmp_path)) == 1000
    with pytest.raises(RuntimeError, match="closed"):
        logger.log([_event(1)])


def test_two_loggers_in_one_partition_never_overwrite_each_other(tmp_path):
    first, second = EventLogger(tmp_path.as_uri()), EventLogger(tmp_path.as_uri())
    for round_number in range(3):
        first.log([_event(round_number)])
        second.log([_event(round_number), _event(round_number + 10)])
        first.flush()
        second.flush()
    assert len(first.objects) == 3 and len(second.objects) == 3
    assert [obj.sequence for obj in first.objects] == [0, 1, 2]
    assert len(_lines(tmp_path)) == 9


def test_a_failed_write_keeps_the_events_and_the_next_flush_writes_them(tmp_path):
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    errors: list[BaseException] = []
    logger = EventLogger(tmp_path.as_uri(), clock=lambda: moment, on_error=errors.append)
    blocker = tmp_path / "dt=2026-03-01"
    blocker.write_text("a file where the partition directory must go")  # the store cannot write
    logger.log(_event(i) for i in range(7))
    assert logger.flush() == 0
    assert logger.buffered == 7 and len(errors) == 1
    logger.log([_event(8)])
    blocker.unlink()
    assert logger.flush() == 8
    lines = _lines(tmp_path)
    assert [parse_line(line).user_id for line in lines] == [f"u{i}" for i in range(7)] + ["u8"]  # order kept


def test_a_full_buffer_drops_the_oldest_lines_counted(tmp_path):
    dropped: list[int] = []
    blocker = tmp_path / "dt=2026-03-01"
    blocker.write_text("blocks the partition")
    logger = EventLogger(
        tmp_path.as_uri(),
        flush_lines=2,
        max_buffered_lines=5,
        clock=lambda: datetime(2026, 3, 1, 1, tzinfo=UTC),
        on_dropped=dropped.append,
    )
    logger.log(_event(i) for i in range(8))
    logger.flush()
    assert logger.buffered == 5 and logger.dropped_lines == 3 and dropped == [3]


def test_events_land_in_the_partition_of_the_hour_they_are_written(tmp_path):
    hours = iter([datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)])
    logger = EventLogger(tmp_path.as_uri(), clock=lambda: next(hours))
    logger.log([_event(1)])
    logger.flush()
    logger.log([_event(2)])
    logger.flush()
    assert [(obj.day.isoformat(), obj.hour, obj.sequence) for obj in logger.objects] == [
        ("2026-03-01", 23, 0),
        ("2026-03-02", 0, 0),
    ]


def test_simulated_times_go_to_their_own_hour_and_the_rest_to_the_write_hour(tmp_path):
    logger = EventLogger(tmp_path.as_uri(), clock=lambda: datetime(2026, 3, 5, 9, 30, tzinfo=UTC))
    logger.log([_event(1), _event(2)])
    logger.log([_event(3)], partition_at=datetime(2024, 5, 1, 17, 59, 59, tzinfo=UTC))
    logger.log([_event(4)], partition_at=datetime(2024, 5, 1, 18, 0, tzinfo=UTC))
    assert logger.flush() == 4
    assert sorted((obj.day.isoformat(), obj.hour) for obj in logger.objects) == [
        ("2024-05-01", 17),
        ("2024-05-01", 18),
        ("2026-03-05", 9),
    ]


def test_invalid_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="flush_seconds"):
        EventLogger(tmp_path.as_uri(), flush_seconds=0)
