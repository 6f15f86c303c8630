"""Machinery shared by the importers: row accounting, negative sampling, event lines, partition output.

Every importer turns its source into *sessions* of positive interactions (``Positive``); ``convert``
then synthesizes one ranked request per positive (an impression of the item plus sampled negative
impressions) and streams the events, by UTC hour, into the log store. See ``docs/importers.md``.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from loopline.logstore import LogStore

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
# Namespace of every imported event id: uuid5(IMPORT_NAMESPACE, "<request or row key>|<type>|<item>").
IMPORT_NAMESPACE_BYTES = bytes.fromhex("6c1f0a4e9d3b5f7a8e2c4b6d8f0a1c3e")
_NAMESPACE_SHA1 = hashlib.sha1(IMPORT_NAMESPACE_BYTES)
MAX_SKIP_EXAMPLES = 20
SPOOL_MEMORY_BYTES = 32 * 1024 * 1024


class ImportInputError(ValueError):
    """The input path or its format is not what the importer expects; the message names file and line."""


class ImportConflictError(RuntimeError):
    """The output already holds an object of this importer with different content for a partition."""


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """How one dataset's requests look in schema v1 (the constant fields of its events)."""

    name: str  # "otto", "uci-eshop", "movielens"
    page: str
    device: str = "unknown"
    variant: str = "import"

    @property
    def producer(self) -> str:
        return f"import-{self.name}"

    @property
    def model_version(self) -> str:
        return f"import:{self.name}"


@dataclass(slots=True)
class Positive:
    """One source row that became an interaction.

    ``key`` identifies the row (it becomes the request id when the row opens a request and seeds the
    event id); ``event_type`` None means "seen but not engaged" (an impression only, e.g. a low rating).
    """

    key: str
    item_id: str
    at_ms: int
    event_type: str | None
    price: float = 0.0


@dataclass(slots=True)
class Session:
    """Positives of one user visit, in source order; none of its items is sampled as its negative."""

    user_id: str
    positives: list[Positive]


@dataclass
class RowLog:
    """Counts source rows: read = converted + skipped, with a reason per skipped row."""

    source: str
    progress: Callable[[int], None] | None = None
    read: int = 0
    converted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def row(self) -> None:
        self.read += 1
        if self.progress is not None and self.read % 10_000 == 0:
            self.progress(10_000)

    def skip(self, reason: str, line_number: int, rows: int = 1) -> None:
        """Count ``rows`` skipped rows (a broken OTTO session line holds several) with ``reason``."""
        self.skipped[reason] += rows
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{self.source}:{line_number}: {reason}")


@dataclass
class ImportSummary:
    """What one import read, skipped and wrote (printed as JSON by ``loopline import``)."""

    dataset: str
    source: str
    out_uri: str
    seed: int
    negatives_per_positive: int
    rows_read: int = 0
    rows_converted: int = 0
    rows_skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    sessions: int = 0
    requests: int = 0
    requests_short_of_negatives: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    events_written: int = 0
    partitions: int = 0
    objects_written: int = 0
    objects_unchanged: int = 0
    first_event_at: str | None = None
    last_event_at: str | None = None
    seconds: float = 0.0

    @property
    def rows_skipped_total(self) -> int:
        return sum(self.rows_skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "source": self.source,
            "out_uri": self.out_uri,
            "seed": self.seed,
            "negatives_per_positive": self.negatives_per_positive,
            "rows_read": self.rows_read,
            "rows_converted": self.rows_converted,
            "rows_skipped": self.rows_skipped_total,
            "rows_skipped_by_reason": dict(sorted(self.rows_skipped.items())),
            "skipped_examples": list(self.skipped_examples),
            "sessions": self.sessions,
            "requests": self.requests,
            "requests_short_of_negatives": self.requests_short_of_negatives,
            "events_written": self.events_written,
            "events_by_type": dict(sorted(self.events_by_type.items())),
            "partitions": self.partitions,
            "objects_written": self.objects_written,
            "objects_unchanged": self.objects_unchanged,
            "first_event_at": self.first_event_at,
            "last_event_at": self.last_event_at,
            "seconds": round(self.seconds, 3),
        }


# --- event lines ------------------------------------------------------------------------------


def event_id(key: str) -> str:
    """uuid5 of ``key`` in the importers' namespace (what ``uuid.uuid5`` gives, without its object overhead)."""
    hasher = _NAMESPACE_SHA1.copy()
    hasher.update(key.encode("utf-8"))
    hexed = hasher.hexdigest()
    variant = "89ab"[int(hexed[16], 16) & 3]  # RFC 4122 variant bits; the version nibble is 5
    return f"{hexed[:8]}-{hexed[8:12]}-5{hexed[13:16]}-{variant}{hexed[17:20]}-{hexed[20:32]}"


def format_ms(at_ms: int) -> str:
    """Epoch milliseconds as schema v1's RFC 3339 UTC text (``2024-05-01T12:34:56.789Z``)."""
    seconds, millis = divmod(at_ms, 1000)
    t = time.gmtime(seconds)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"


def day_of_ms(at_ms: int) -> int:
    """Days since 1970-01-01 (UTC) of an epoch-milliseconds time; the negatives' window of OTTO and UCI."""
    return at_ms // MS_PER_DAY


def month_of_ms(at_ms: int) -> int:
    """A month number (year * 12 + month - 1, UTC) of an epoch-milliseconds time."""
    moment = time.gmtime(at_ms // 1000)
    return moment.tm_year * 12 + moment.tm_mon - 1


# --- negative sampling ------------------------------------------------------------------------


class NegativeSampler:
    """Draws negative items by popularity within a time window, falling back to the whole dataset.

    Popularity is the number of source rows naming the item in the window. Draws are weighted,
    without replacement, and skip excluded items (the user's own items in that session). If the
    window cannot supply enough, the dataset-wide popularity does; if that is still short after a
    bounded number of draws, the most popular remaining items fill up (deterministically).
    """

    def __init__(self, window_counts: dict[Hashable, Counter[str]]):
        self._window_counts = window_counts
        self._global = Counter()
        for counts in window_counts.values():
            self._global.update(counts)
        self._tables: dict[Hashable, tuple[list[str], list[int]]] = {}
        self._global_table = self._table(self._global)
        self._by_popularity = sorted(self._global, key=lambda item: (-self._global[item], item))

    @staticmethod
    def _table(counts: Counter[str]) -> tuple[list[str], list[int]]:
        items = sorted(counts)
        cumulative: list[int] = []
        total = 0
        for item in items:
            total += counts[item]
            cumulative.append(total)
        return items, cumulative

    @property
    def catalog_size(self) -> int:
        return len(self._global)

    def sample(self, rng: random.Random, window: Hashable, count: int, exclude: set[str] | frozenset[str]) -> list[str]:
        picked: list[str] = []
        if count <= 0:
            return picked
        taken: set[str] = set()
        table = self._tables.get(window)
        if table is None:
            table = self._tables[window] = self._table(self._window_counts.get(window, Counter()))
        for items, cumulative in (table, self._global_table):
            if not items:
                continue
            total = cumulative[-1]
            attempts = 8 * count + 16
            while len(picked) < count and attempts:
                attempts -= 1
                item = items[bisect.bisect_right(cumulative, rng.random() * total)]
                if item not in taken and item not in exclude:
                    taken.add(item)
                    picked.append(item)
            if len(picked) == count:
                return picked
        for item in self._by_popularity:
            if len(picked) == count:
                break
            if item not in taken and item not in exclude:
                taken.add(item)
                picked.append(item)
        return picked


@dataclass
class Popularity:
    """What the first pass learns: item counts per window, item prices, and whether sessions come in day order."""

    windows: dict[Hashable, Counter[str]]
    prices: dict[str, float]
    sessions_in_day_order: bool


def count_popularity(sessions: Iterable[Session], window_of: Callable[[int], Hashable]) -> Popularity:
    """First pass: item popularity per time window, each item's first seen price, and the session order.

    ``sessions_in_day_order`` is true when no session starts on an earlier UTC day than the one
    before it (the UCI file, sorted by date): the second pass may then write each finished day at once.
    """
    windows: dict[Hashable, Counter[str]] = defaultdict(Counter)
    prices: dict[str, float] = {}
    in_order = True
    previous_day: int | None = None
    for session in sessions:
        first_day = min(positive.at_ms for positive in session.positives) // MS_PER_DAY
        if previous_day is not None and first_day < previous_day:
            in_order = False
        previous_day = first_day
        for positive in session.positives:
            windows[window_of(positive.at_ms)][positive.item_id] += 1
            prices.setdefault(positive.item_id, positive.price)
    return Popularity(dict(windows), prices, in_order)


# --- output -----------------------------------------------------------------------------------


class PartitionSpool:
    """Collects event lines in any order and writes them as one object per UTC hour partition.

    Lines are buffered per UTC day; past ``memory_bytes`` the buffers spill to temporary files, so
    memory stays bounded by the buffer plus one day. ``write_days_before`` writes finished days early
    when the caller knows no earlier event will come. Each partition's lines are sorted by (event
    time, emission order). A partition that already holds this producer's objects is left alone if
    the content is identical (a re-import is a no-op) and is a conflict if not.
    """

    def __init__(self, store: LogStore, producer: str, summary: ImportSummary, memory_bytes: int | None = None):
        self._store = store
        self._producer = producer
        self._summary = summary
        self._memory_limit = memory_bytes or SPOOL_MEMORY_BYTES
        self._buffers: dict[int, list[tuple[int, int, bytes]]] = defaultdict(list)
        self._buffered_bytes = 0
        self._sequence = 0
        self._spill_dir: tempfile.TemporaryDirectory[str] | None = None
        self._spilled_days: set[int] = set()
        self._written_days: set[int] = set()
        self._types: Counter[str] = Counter()
        self._first_ms: int | None = None
        self._last_ms: int | None = None

    def add(self, at_ms: int, lines: list[tuple[str, bytes]]) -> None:
        """Add (event type, line) pairs that all happen at ``at_ms``, in the order they should be read."""
        day = at_ms // MS_PER_DAY
        if day in self._written_days:
            raise RuntimeError(f"day {day} was written already; the importer's order hint was wrong")
        buffer = self._buffers[day]
        sequence = self._sequence
        for event_type, line in lines:
            buffer.append((at_ms, sequence, line))
            sequence += 1
            self._types[event_type] += 1
            self._buffered_bytes += len(line) + 64
        self._sequence = sequence
        if self._first_ms is None or at_ms < self._first_ms:
            self._first_ms = at_ms
        if self._last_ms is None or at_ms > self._last_ms:
            self._last_ms = at_ms
        if self._buffered_bytes >= self._memory_limit:
            self._spill()

    def _spill_path(self, day: int) -> Path:
        assert self._spill_dir is not None
        return Path(self._spill_dir.name) / f"{day}.spill"

    def _spill(self) -> None:
        if self._spill_dir is None:
            self._spill_dir = tempfile.TemporaryDirectory(prefix="loopline-import-")
        for day, entries in self._buffers.items():
            with self._spill_path(day).open("ab") as sink:
                sink.writelines(b"%d %d %s" % entry for entry in entries)
            self._spilled_days.add(day)
        self._buffers.clear()
        self._buffered_bytes = 0

    def _day_entries(self, day: int) -> list[tuple[int, int, bytes]]:
        entries: list[tuple[int, int, bytes]] = []
        if day in self._spilled_days:
            with self._spill_path(day).open("rb") as source:
                for raw in source:
                    at_ms, sequence, line = raw.split(b" ", 2)
                    entries.append((int(at_ms), int(sequence), line))
            self._spilled_days.discard(day)
            self._spill_path(day).unlink()
        buffered = self._buffers.pop(day, [])
        self._buffered_bytes -= sum(len(entry[2]) + 64 for entry in buffered)
        entries.extend(buffered)
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        return entries

    def _write_day(self, day: int) -> None:
        entries = self._day_entries(day)
        self._written_days.add(day)
        start = 0
        while start < len(entries):
            hour_index = entries[start][0] // MS_PER_HOUR
            end = start
            while end < len(entries) and entries[end][0] // MS_PER_HOUR == hour_index:
                end += 1
            self._write_partition(hour_index, [entry[2] for entry in entries[start:end]])
            start = end

    def write_days_before(self, day: int) -> None:
        """Write every buffered day earlier than ``day`` (the caller promises no more events for them)."""
        for pending in sorted(d for d in set(self._buffers) | self._spilled_days if d < day):
            self._write_day(pending)

    def finish(self) -> None:
        """Write what is left and fill the summary's event counts and time range."""
        try:
            for day in sorted(set(self._buffers) | self._spilled_days):
                self._write_day(day)
        finally:
            if self._spill_dir is not None:
                self._spill_dir.cleanup()
        summary = self._summary
        summary.events_by_type = dict(self._types)
        summary.events_written = sum(self._types.values())
        summary.first_event_at = None if self._first_ms is None else format_ms(self._first_ms)
        summary.last_event_at = None if self._last_ms is None else format_ms(self._last_ms)

    def _write_partition(self, hour_index: int, lines: list[bytes]) -> None:
        moment = datetime.fromtimestamp(hour_index * 3600, UTC)
        day, hour = date(moment.year, moment.month, moment.day), moment.hour
        self._summary.partitions += 1
        existing = [obj for obj in self._store.list(day, hour) if obj.producer == self._producer]
        if existing:
            old = b"".join(line + b"\n" for obj in existing for line in self._store.iter_lines(obj))
            if old == b"".join(lines):
                self._summary.objects_unchanged += 1
                return
            names = ", ".join(obj.uri for obj in existing)
            raise ImportConflictError(
                f"{names} already holds {self._producer} events with different content (another seed, "
                f"source or --negatives?); import into a fresh --out location or delete that partition first"
            )
        self._store.write(day, hour, self._producer, lines, sequence=0)
        self._summary.objects_written += 1


# --- conversion -------------------------------------------------------------------------------


def convert(
    sessions: Iterator[Session],
    *,
    spec: DatasetSpec,
    sampler: NegativeSampler,
    popularity: Popularity,
    window_of: Callable[[int], Hashable],
    spool: PartitionSpool,
    summary: ImportSummary,
    negatives_per_positive: int,
    seed: int,
) -> None:
    """Turn sessions of positives into schema v1 events: one synthesized request per opening positive.

    A click (or a "seen" row) opens a request: an impression of its item plus sampled negatives, in
    seeded shuffled positions 1..N+1, all at the positive's time, then the positive event itself.
    An add_to_cart or purchase joins the latest request of the same session that showed its item
    (keeping the funnel on one request id); without one it opens its own request. The random draws
    of a session come from one generator seeded by (seed, the session's first row key).
    """
    dumps = orjson.dumps
    prices = popularity.prices
    model_version, variant, page, device = spec.model_version, spec.variant, spec.page, spec.device

    def line(
        key: str,
        event_type: str,
        at_text: str,
        user_id: str,
        item_id: str,
        request_id: str,
        position: int,
        price: float,
    ) -> tuple[str, bytes]:
        record = {
            "event_id": event_id(key),
            "event_type": event_type,
            "event_at": at_text,
            "user_id": user_id,
            "item_id": item_id,
            "request_id": request_id,
            "position": position,
            "model_version": model_version,
            "variant": variant,
            "page": page,
            "device": device,
            "price": float(price),
            "query": None,
            "schema_version": 1,
        }
        return event_type, dumps(record) + b"\n"

    for session in sessions:
        summary.sessions += 1
        ordered = sorted(session.positives, key=lambda positive: positive.at_ms)  # stable: source order on ties
        if popularity.sessions_in_day_order:
            spool.write_days_before(ordered[0].at_ms // MS_PER_DAY)
        rng = random.Random(f"{seed}|{ordered[0].key}")
        exclude = {positive.item_id for positive in ordered}
        user_id = session.user_id
        shown_in: dict[str, tuple[str, int]] = {}  # item -> (request id, position) of its latest request
        for positive in ordered:
            at_text = format_ms(positive.at_ms)
            item_id, event_type = positive.item_id, positive.event_type
            joined = shown_in.get(item_id) if event_type in ("add_to_cart", "purchase") else None
            lines: list[tuple[str, bytes]] = []
            if joined is not None:
                request_id, position = joined
            else:
                request_id = positive.key
                negatives = sampler.sample(rng, window_of(positive.at_ms), negatives_per_positive, exclude)
                summary.requests += 1
                if len(negatives) < negatives_per_positive:
                    summary.requests_short_of_negatives += 1
                shown = [item_id, *negatives]
                rng.shuffle(shown)
                position = shown.index(item_id) + 1
                for index, shown_item in enumerate(shown, start=1):
                    price = positive.price if shown_item == item_id else prices.get(shown_item, 0.0)
                    key = f"{request_id}|impression|{shown_item}"
                    lines.append(line(key, "impression", at_text, user_id, shown_item, request_id, index, price))
                shown_in[item_id] = (request_id, position)
            if event_type is not None:
                key = f"{positive.key}|{event_type}|{item_id}"
                lines.append(line(key, event_type, at_text, user_id, item_id, request_id, position, positive.price))
            spool.add(positive.at_ms, lines)
