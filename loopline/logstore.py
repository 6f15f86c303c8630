"""Event log store: hourly partitions of JSON-lines objects on ``file://`` or ``s3://``.

Layout: ``<root>/dt=YYYY-MM-DD/hour=HH/<producer>-<sequence>.jsonl[.gz]``. Producers only ever add
new objects (a new sequence number), so "appending" to a partition never rewrites what a reader may
be reading. Every write is atomic: a local file is written beside its target and renamed; an S3
object becomes visible only when its (multipart) upload completes. Reading streams line by line.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

READ_CHUNK_BYTES = 1 << 20
_OBJECT_NAME = re.compile(
    r"^(?P<producer>[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*?)-(?P<sequence>\d{6,})\.jsonl(?P<gz>\.gz)?$"
)
_PRODUCER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")


class LogStoreError(RuntimeError):
    """A log object cannot be written or read; the message names the object."""


class TruncatedObjectError(LogStoreError):
    """A compressed object ends before its compressed stream does (e.g. an upload cut short)."""


@dataclass(frozen=True, order=True)
class LogObject:
    """One immutable object of the log: where it is and which partition it belongs to."""

    day: date
    hour: int
    producer: str
    sequence: int
    key: str  # path relative to the store root, with forward slashes
    uri: str

    @property
    def compressed(self) -> bool:
        return self.key.endswith(".gz")


def partition_prefix(day: date, hour: int) -> str:
    if not 0 <= hour <= 23:
        raise ValueError(f"hour must be 0..23, got {hour}")
    return f"dt={day.isoformat()}/hour={hour:02d}"


def hours_between(start: datetime, end: datetime) -> list[tuple[date, int]]:
    """The (day, hour) partitions that hold events with ``start <= event_at < end`` (UTC)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("interval bounds must be timezone-aware (UTC)")
    cursor = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC)
    partitions = []
    while cursor < end:
        partitions.append((cursor.date(), cursor.hour))
        cursor += timedelta(hours=1)
    return partitions


def _parse_key(key: str, root_uri: str) -> LogObject | None:
    parts = key.split("/")
    if len(parts) < 3:
        return None
    dt_part, hour_part, name = parts[-3], parts[-2], parts[-1]
    match = _OBJECT_NAME.match(name)
    if not (match and dt_part.startswith("dt=") and hour_part.startswith("hour=")):
        return None
    try:
        day = date.fromisoformat(dt_part[3:])
        hour = int(hour_part[5:])
    except ValueError:
        return None
    relative = "/".join(parts[-3:])
    return LogObject(day, hour, match["producer"], int(match["sequence"]), relative, f"{root_uri}/{relative}")


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Re-split a byte stream into lines (without ``\\n``), keeping memory to one chunk + one line."""
    pending = b""
    for chunk in chunks:
        if not chunk:
            continue
        pieces = (pending + chunk).split(b"\n")
        pending = pieces.pop()
        yield from pieces
    if pending:
        yield pending


def _decompressed(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """Stream-decompress gzip chunks; raise TruncatedObjectError if the stream ends mid-member."""
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    inside_member = False
    try:
        for chunk in chunks:
            while chunk:
                inside_member = True
                yield decompressor.decompress(chunk)
                if not decompressor.eof:
                    break
                # A gzip file may hold several members: start again on what follows this one.
                chunk = decompressor.unused_data
                decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                inside_member = False
    except zlib.error as error:
        raise LogStoreError(f"{name}: corrupt gzip data ({error})") from None
    if inside_member:
        raise TruncatedObjectError(f"{name}: gzip stream ends before its end marker (truncated object)")


class _Backend(Protocol):
    root_uri: str

    def list_keys(self, prefix: str) -> list[str]: ...
    def put_from_file(self, key: str, local_path: Path) -> None: ...
    def read_chunks(self, key: str) -> Iterator[bytes]: ...
    def delete_prefix(self, prefix: str) -> int: ...


class _FileBackend:
    def __init__(self, root: Path):
        self.root = root
        self.root_uri = root.as_uri()

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}/{p.name}" for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def put_from_file(self, key: str, local_path: Path) -> None:
        target = self.root / key
        if target.exists():
            raise LogStoreError(f"{self.root_uri}/{key} exists already; log objects are never overwritten")
        os.replace(local_path, target)  # same directory: atomic rename

    def staging_dir(self, key: str) -> Path:
        folder = (self.root / key).parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with open(self.root / key, "rb") as handle:
            while chunk := handle.read(READ_CHUNK_BYTES):
                yield chunk

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            (self.root / key).unlink()
        return len(keys)


class _S3Backend:
    def __init__(self, bucket: str, prefix: str, client: Any):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def list_keys(self, prefix: str) -> list[str]:
        full_prefix = self._full(prefix) + "/"
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for item in page.get("Contents", []):
                keys.append(f"{prefix}/{item['Key'][len(full_prefix) :]}")
        return sorted(keys)

    def put_from_file(self, key: str, local_path: Path) -> None:
        # upload_file switches to a multipart upload above 8 MiB; S3 shows the object only when the
        # upload completes, so readers never see part of it.
        try:
            self.client.upload_file(str(local_path), self.bucket, self._full(key))
        finally:
            local_path.unlink(missing_ok=True)

    def staging_dir(self, key: str) -> Path:
        return Path(tempfile.gettempdir())

    def read_chunks(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        try:
            while chunk := body.read(READ_CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        return len(keys)


def make_s3_client(endpoint_url: str | None = None, region: str = "us-east-1") -> Any:
    """A boto3 S3 client; credentials come from the usual AWS environment / config chain."""
    import boto3  # imported here: only the s3:// backend needs it

    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region)


class LogStore:
    """Append-only, hour-partitioned JSON-lines log on a local directory or an S3 prefix."""

    def __init__(self, backend: _Backend):
        self._backend = backend

    @classmethod
    def from_uri(cls, uri: str, *, s3_endpoint_url: str | None = None, s3_client: Any = None) -> LogStore:
        parts = urlsplit(uri)
        if parts.scheme == "file":
            root = Path(unquote(parts.path))
            root.mkdir(parents=True, exist_ok=True)
            return cls(_FileBackend(root))
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"log store URI {uri!r} names no bucket (expected s3://bucket/prefix)")
            client = s3_client or make_s3_client(s3_endpoint_url)
            return cls(_S3Backend(parts.netloc, parts.path, client))
        raise ValueError(f"log store URI {uri!r}: expected file:// or s3://")

    @property
    def root_uri(self) -> str:
        return self._backend.root_uri

    def list(self, day: date, hour: int | None = None) -> list[LogObject]:
        """Objects of one hour, or of a whole day when ``hour`` is None, in (hour, producer, sequence) order."""
        hours = [hour] if hour is not None else range(24)
        found = []
        for each_hour in hours:
            for key in self._backend.list_keys(partition_prefix(day, each_hour)):
                parsed = _parse_key(key, self.root_uri)
                if parsed is not None:
                    found.append(parsed)
        return sorted(found)

    def list_interval(self, start: datetime, end: datetime) -> list[LogObject]:
        """Objects of every hour partition in ``[start, end)``."""
        found: list[LogObject] = []
        for day, hour in hours_between(start, end):
            found.extend(self.list(day, hour))
        return found

    def next_sequence(self, day: date, hour: int, producer: str) -> int:
        taken = [o.sequence for o in self.list(day, hour) if o.producer == producer]
        return max(taken, default=-1) + 1

    def write(
        self,
        day: date,
        hour: int,
        producer: str,
        lines: Iterable[bytes],
        *,
        compress: bool = False,
        sequence: int | None = None,
    ) -> LogObject:
        """Write ``lines`` (each ending in ``\\n``) as one new object of a partition, atomically.

        ``sequence`` defaults to the producer's next free number in that partition; a producer
        that writes from several processes should pass its own to avoid a race.
        """
        if not _PRODUCER.match(producer):
            raise ValueError(f"producer {producer!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if sequence is None:
            sequence = self.next_sequence(day, hour, producer)
        key = f"{partition_prefix(day, hour)}/{producer}-{sequence:06d}.jsonl" + (".gz" if compress else "")
        staging = self._backend.staging_dir(key)
        handle = tempfile.NamedTemporaryFile(dir=staging, prefix=".writing-", delete=False)  # noqa: SIM115
        temp_path = Path(handle.name)
        try:
            with handle:
                opened = gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=5) if compress else nullcontext(handle)
                with opened as sink:
                    buffer: list[bytes] = []
                    size = 0
                    for line in lines:
                        buffer.append(line)
                        size += len(line)
                        if size >= READ_CHUNK_BYTES:
                            sink.write(b"".join(buffer))
                            buffer, size = [], 0
                    sink.write(b"".join(buffer))
                handle.flush()
                os.fsync(handle.fileno())
            self._backend.put_from_file(key, temp_path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        return _parse_key(key, self.root_uri)  # type: ignore[return-value]

    def iter_lines(self, obj: LogObject) -> Iterator[bytes]:
        """Stream the lines of one object (without their ``\\n``), decompressing ``.gz`` objects.

        Raises TruncatedObjectError after the last complete line of a cut-off gzip object.
        """
        chunks = self._backend.read_chunks(obj.key)
        if obj.compressed:
            chunks = _decompressed(chunks, obj.uri)
        yield from split_lines(chunks)

    def delete_partition(self, day: date, hour: int) -> int:
        """Remove every object of one hour (used by tests and re-simulation); returns how many."""
        return self._backend.delete_prefix(partition_prefix(day, hour))
