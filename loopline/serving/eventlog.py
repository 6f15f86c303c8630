"""What the service serves goes back into the log: buffered schema v1 events, flushed to the log store.

``EventLogger.log(events)`` appends JSON lines to an in-memory buffer (no I/O on the request path).
A background thread flushes the buffer every ``flush_seconds`` (and as soon as it holds
``flush_lines``); ``close()`` stops the thread and flushes what is left, so a graceful stop loses
nothing. A flush writes one new object into the log store's partition of the hour it is written in
(``dt=YYYY-MM-DD/hour=HH/<producer>-<sequence>.jsonl``), as docs/events.md says; events logged with
an explicit ``partition_at`` (a simulated or replayed time) go to that hour's partition instead.

Several workers never overwrite each other: each logger has its own producer name
(``serve-<host>-<pid>-<random>``) and numbers its objects itself, and ``LogStore.write`` refuses to
replace an existing object. A failed write keeps the events buffered and retries on the next flush;
only if the buffer then exceeds ``max_buffered_lines`` are the oldest lines dropped, each counted
and logged (never silently).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime

import orjson

from loopline.events import Event, format_timestamp
from loopline.logstore import LogObject, LogStore

LOG = logging.getLogger(__name__)


_FIELDS = tuple(field.name for field in dataclasses.fields(Event))


# The impressions of one served list share their time: format each moment once.
timestamp_text = functools.lru_cache(maxsize=1024)(format_timestamp)


def event_line(event: Event) -> bytes:
    """``event.to_json_line()`` byte for byte, without ``dataclasses.asdict``'s deep copies (5x faster)."""
    record = {name: getattr(event, name) for name in _FIELDS}
    record["event_at"] = timestamp_text(event.event_at)
    return orjson.dumps(record) + b"\n"


def producer_name(prefix: str = "serve") -> str:
    """A producer name unique to this process and logger: ``<prefix>-<host>-<pid>-<8 hex>``."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:24] or "host"
    return f"{prefix}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class EventLogger:
    """Buffers events and writes them to the log store in the background.

    :param log_store_uri: ``file://`` or ``s3://`` root (default: the ``log_store_uri`` setting).
    :param producer: object name prefix (default: ``producer_name()``, unique per logger).
    :param flush_seconds: longest time an event waits in the buffer.
    :param flush_lines: flush early when the buffer holds this many lines.
    :param max_buffered_lines: cap while the store fails; beyond it the oldest lines are dropped (counted).
    :param on_written / on_error / on_dropped: metric hooks (lines written; a failed write; lines dropped).
    """

    def __init__(
        self,
        log_store_uri: str | None = None,
        *,
        producer: str | None = None,
        flush_seconds: float = 2.0,
        flush_lines: int = 5_000,
        max_buffered_lines: int = 1_000_000,
        s3_endpoint_url: str | None = None,
        compress: bool = False,
        clock: Callable[[], datetime] | None = None,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ):
        from loopline.config import settings

        if flush_seconds <= 0 or flush_lines < 1 or max_buffered_lines < flush_lines:
            raise ValueError(
                "EventLogger: expected flush_seconds > 0, flush_lines >= 1 and max_buffered_lines >= flush_lines, "
                f"got {flush_seconds}, {flush_lines}, {max_buffered_lines}"
            )
        config = settings()
        self.store = LogStore.from_uri(
            log_store_uri or config.log_store_uri, s3_endpoint_url=s3_endpoint_url or config.s3_endpoint_url
        )
        self.producer = producer or producer_name()
        self.flush_seconds = flush_seconds
        self.flush_lines = flush_lines
        self.max_buffered_lines = max_buffered_lines
        self.compress = compress
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_written = on_written
        self._on_error = on_error
        self._on_dropped = on_dropped
        self._buffer: deque[tuple[tuple[date, int] | None, bytes]] = deque()  # (partition or None = now, line)
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one flush at a time: sequences stay in order
        self._sequences: dict[tuple[date, int], int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = False
        self.written_lines = 0
        self.dropped_lines = 0
        self.objects: list[LogObject] = []

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def log(self, events: Iterable[Event], *, partition_at: datetime | None = None) -> int:
        """Buffer ``events`` (schema v1); returns how many. Raises after ``close``.

        ``partition_at``: write them to that hour's partition (simulated or replayed traffic);
        default: the partition of the hour the flush happens in.
        """
        return self.log_lines([event_line(event) for event in events], partition_at=partition_at)

    def log_lines(self, lines: Sequence[bytes], *, partition_at: datetime | None = None) -> int:
        """Buffer events already serialized as schema v1 JSON lines (``event_line``); returns how many.

        For the request path, which builds its impressions' lines directly (``ranker.impression_lines``).
        """
        key = None
        if partition_at is not None:
            moment = partition_at.astimezone(UTC)
            key = (moment.date(), moment.hour)
        with self._buffer_lock:
            if self.closed:
                raise RuntimeError(f"event logger {self.producer} is closed; {len(lines)} events were not logged")
            self._buffer.extend((key, line) for line in lines)
            size = len(self._buffer)
        if size >= self.flush_lines:
            self._wake.set()
        return len(lines)

    def flush(self) -> int:
        """Write everything buffered now, one object per partition; returns lines written.

        A partition whose write fails keeps its lines buffered (retried on the next flush).
        """
        with self._write_lock:
            with self._buffer_lock:
                entries = list(self._buffer)
                self._buffer.clear()
            if not entries:
                return 0
            moment = self._clock().astimezone(UTC)
            now_key = (moment.date(), moment.hour)
            groups: dict[tuple[date, int], list[tuple[tuple[date, int] | None, bytes]]] = {}
            for entry in entries:
                groups.setdefault(entry[0] or now_key, []).append(entry)
            written_lines = 0
            failed: list[tuple[tuple[date, int] | None, bytes]] = []
            for (day, hour), group in groups.items():
                lines = [line for _, line in group]
                sequence = self._sequences.get((day, hour), 0)
                try:
                    written = self.store.write(
                        day, hour, self.producer, lines, compress=self.compress, sequence=sequence
                    )
                except Exception as error:
                    failed.extend(group)  # "now" lines stay "now": the retry writes them to its own hour
                    LOG.error("event log write of %d lines failed (kept for the next flush): %s", len(lines), error)
                    if self._on_error is not None:
                        self._on_error(error)
                    continue
                self._sequences[(day, hour)] = sequence + 1
                self.objects.append(written)
                written_lines += len(lines)
            if failed:
                self._requeue(failed)
            self.written_lines += written_lines
            if written_lines and self._on_written is not None:
                self._on_written(written_lines)
            return written_lines

    def _requeue(self, lines: list[tuple[tuple[date, int] | None, bytes]]) -> None:
        with self._buffer_lock:
            self._buffer.extendleft(reversed(lines))
            excess = len(self._buffer) - self.max_buffered_lines
            dropped = [self._buffer.popleft() for _ in range(max(0, excess))]
        if dropped:
            self.dropped_lines += len(dropped)
            for _, line in dropped:
                LOG.error("event log buffer full: dropped %s", line.decode("utf-8", "replace").rstrip())
            if self._on_dropped is not None:
                self._on_dropped(len(dropped))

    def start(self) -> None:
        """Start the background flusher."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"loopline-event-flusher-{self.producer}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def close(self, timeout: float = 30.0) -> int:
        """Stop the flusher and flush what is left; returns lines still unwritten (0 on success)."""
        with self._buffer_lock:  # no log() after this line; everything accepted is flushed below
            self.closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        left = self.buffered
        if left:
            LOG.error("event logger %s closed with %d unwritten events (the log store failed)", self.producer, left)
        return left
