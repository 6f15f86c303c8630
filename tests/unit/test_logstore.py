"""Log store: the same round trip on file:// and s3:// (a local S3 server), atomic writes, streaming reads."""

from __future__ import annotations

import gzip
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from loopline.logstore import LogStore, TruncatedObjectError, hours_between, split_lines

DAY = date(2024, 5, 1)


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path: Path) -> LogStore:
    if request.param == "file":
        return LogStore.from_uri((tmp_path / "logs").as_uri())
    bucket = request.getfixturevalue("s3_bucket")
    return LogStore.from_uri(f"s3://{bucket}/logs", s3_endpoint_url=request.getfixturevalue("s3_endpoint"))


@pytest.mark.parametrize("compress", [False, True], ids=["jsonl", "gzip"])
def test_round_trip_keeps_every_line_in_order(store: LogStore, compress: bool):
    lines = [f'{{"n": {i}}}\n'.encode() for i in range(5000)]
    written = store.write(DAY, 7, "sim", lines, compress=compress)
    assert written.key == f"dt=2024-05-01/hour=07/sim-000000.jsonl{'.gz' if compress else ''}"
    assert written.uri == f"{store.root_uri}/{written.key}"
    assert list(store.iter_lines(written)) == [line.rstrip(b"\n") for line in lines]


def test_each_write_is_a_new_object_with_the_next_sequence(store: LogStore):
    first = store.write(DAY, 0, "serving-a", [b"1\n"])
    second = store.write(DAY, 0, "serving-a", [b"2\n"])
    other = store.write(DAY, 0, "serving-b", [b"3\n"])
    later = store.write(DAY, 23, "serving-a", [b"4\n"])
    assert (first.sequence, second.sequence, other.sequence) == (0, 1, 0)
    assert store.list(DAY, 0) == [first, second, other]
    assert store.list(DAY) == [first, second, other, later]
    assert store.list(date(2024, 5, 2)) == []


def test_list_interval_covers_exactly_the_hours_of_the_interval(store: LogStore):
    inside = store.write(DAY, 23, "sim", [b"x\n"])
    store.write(date(2024, 5, 2), 0, "sim", [b"y\n"])
    start = datetime(2024, 5, 1, 23, tzinfo=UTC)
    assert store.list_interval(start, datetime(2024, 5, 2, tzinfo=UTC)) == [inside]


def test_a_failed_write_leaves_nothing_behind(store: LogStore):
    def lines_then_crash():
        yield b"ok\n"
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        store.write(DAY, 5, "sim", lines_then_crash())
    assert store.list(DAY, 5) == []
    assert store.write(DAY, 5, "sim", [b"again\n"]).sequence == 0


def test_local_writes_leave_no_temporary_files(tmp_path: Path):
    store = LogStore.from_uri((tmp_path / "logs").as_uri())
    store.write(DAY, 1, "sim", [b"a\n"], compress=True)
    assert [p.name for p in (tmp_path / "logs" / "dt=2024-05-01" / "hour=01").iterdir()] == ["sim-000000.jsonl.gz"]


def test_existing_objects_are_never_overwritten(tmp_path: Path):
    store = LogStore.from_uri((tmp_path / "logs").as_uri())
    store.write(DAY, 1, "sim", [b"a\n"], sequence=3)
    with pytest.raises(Exception, match="never overwritten"):
        store.write(DAY, 1, "sim", [b"b\n"], sequence=3)


def test_a_truncated_gzip_object_yields_its_complete_lines_then_fails(tmp_path: Path):
    store = LogStore.from_uri((tmp_path / "logs").as_uri())
    written = store.write(DAY, 2, "sim", [f"line {i}\n".encode() for i in range(20000)], compress=True)
    path = tmp_path / "logs" / written.key
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    read: list[bytes] = []
    with pytest.raises(TruncatedObjectError, match="truncated"):
        for line in store.iter_lines(written):
            read.append(line)
    assert 0 < len(read) < 20000
    assert read[:3] == [b"line 0", b"line 1", b"line 2"]


def test_concatenated_gzip_members_are_read_whole(tmp_path: Path):
    store = LogStore.from_uri((tmp_path / "logs").as_uri())
    written = store.write(DAY, 3, "sim", [b"a\n"], compress=True)
    path = tmp_path / "logs" / written.key
    path.write_bytes(path.read_bytes() + gzip.compress(b"b\nc\n"))
    assert list(store.iter_lines(written)) == [b"a", b"b", b"c"]


def test_reading_streams_in_bounded_chunks():
    produced = []

    def chunks():
        for i in range(1000):
            produced.append(i)
            yield b"x" * 10 + b"\n"

    lines = split_lines(chunks())
    next(lines)
    assert len(produced) == 1, "reading the first line must not consume the whole stream"


def test_lines_split_across_chunks_are_joined():
    assert list(split_lines([b"ab", b"c\nd", b"", b"e\n\nf"])) == [b"abc", b"de", b"", b"f"]


def test_bad_uris_and_names_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="expected file:// or s3://"):
        LogStore.from_uri("ftp://host/logs")
    with pytest.raises(ValueError, match="names no bucket"):
        LogStore.from_uri("s3:///logs")
    store = LogStore.from_uri(tmp_path.as_uri())
    with pytest.raises(ValueError, match="producer"):
        store.write(DAY, 0, "bad/name", [])
    with pytest.raises(ValueError, match="hour must be 0..23"):
        store.write(DAY, 24, "sim", [])
    with pytest.raises(ValueError, match="timezone-aware"):
        hours_between(datetime(2024, 5, 1), datetime(2024, 5, 2))
