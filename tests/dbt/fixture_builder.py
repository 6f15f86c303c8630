"""A small, deterministic raw_events fixture for the dbt tests, with the truth of its labels.

The rows are generated here (not by the simulator) with the exact raw_events columns that
loopline.ingest writes. The generator knows, for every impression, whether it made a click of the
same request and item within the attribution window: that truth is what the marts must reproduce.
It also plants the edge cases the attribution must handle: clicks after the window, clicks before
their impression (clock skew), double clicks, clicks on another item of the request, clicks past
midnight, clicks logged late in the next hour's partition, and exact duplicates across partitions.
"""

from __future__ import annotations

import csv
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

RAW_EVENTS_DDL = """
create table raw_events (
    event_id varchar not null,
    event_type varchar not null,
    event_at timestamptz not null,
    event_date date not null,
    user_id varchar not null,
    item_id varchar not null,
    request_id varchar not null,
    position integer not null,
    model_version varchar not null,
    variant varchar not null,
    page varchar not null,
    device varchar not null,
    price double precision not null,
    query varchar,
    log_date date not null,
    log_hour smallint not null,
    source_uri varchar not null,
    line_number integer not null,
    ingest_run_id varchar not null,
    ingested_at timestamptz not null
)
"""

ATTRIBUTION_WINDOW = timedelta(minutes=30)
CATEGORIES = ("books", "shoes", "toys")


@dataclass(frozen=True)
class RawEvent:
    """One raw_events row (field order = table column order)."""

    event_id: str
    event_type: str
    event_at: datetime
    event_date: date
    user_id: str
    item_id: str
    request_id: str
    position: int
    model_version: str
    variant: str
    page: str
    device: str
    price: float
    query: str | None
    log_date: date
    log_hour: int
    source_uri: str
    line_number: int
    ingest_run_id: str
    ingested_at: datetime


COLUMNS = tuple(f.name for f in fields(RawEvent))


@dataclass
class Fixture:
    """The generated rows plus what the marts must find in them."""

    days: tuple[date, ...]
    events: list[RawEvent]
    # impression event_id -> clicked (purchased) by a click (purchase) of its request and item in the window
    clicked_truth: dict[str, bool] = field(default_factory=dict)
    purchased_truth: dict[str, bool] = field(default_factory=dict)
    catalog: list[tuple[str, str, float]] = field(default_factory=list)
    edge_cases: Counter = field(default_factory=Counter)

    def impressions_on(self, day: date) -> list[str]:
        return [e.event_id for e in self.events if e.event_type == "impression" and e.event_date == day]

    def clicked_share(self) -> float:
        return sum(self.clicked_truth.values()) / len(self.clicked_truth)


@dataclass(frozen=True)
class Build:
    """A warehouse built by dbt from the fixture (see conftest.duckdb_build)."""

    uri: str
    result: Any  # loopline.transform.DbtResult
    checksums: dict[str, str]
    target_dir: Path


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def build_fixture(
    days: Sequence[date] = (date(2026, 1, 5), date(2026, 1, 6), date(2026, 1, 7)),
    *,
    seed: int = 7,
    users: int = 30,
    items: int = 24,
    requests_per_day: int = 60,
    slate_size: int = 4,
) -> Fixture:
    """Generate the events of ``days`` deterministically from ``seed``."""
    rng = random.Random(seed)
    fixture = Fixture(days=tuple(days), events=[])
    item_prices = {f"item-{i:03d}": round(5 + 95 * rng.random(), 2) for i in range(items)}
    # Every item but the last two is in the catalog: those two must come out as category 'unknown'.
    fixture.catalog = [
        (item_id, CATEGORIES[index % len(CATEGORIES)], price)
        for index, (item_id, price) in enumerate(item_prices.items())
        if index < items - 2
    ]
    pending: list[dict[str, Any]] = []

    def add(event_type: str, at: datetime, request: dict[str, Any], item_id: str, position: int) -> dict[str, Any]:
        row = {
            "event_id": _uuid(rng),
            "event_type": event_type,
            "event_at": at,
            "event_date": at.date(),
            "item_id": item_id,
            "position": position,
            "price": item_prices[item_id],
            **request,
        }
        pending.append(row)
        return row

    for day in days:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for number in range(requests_per_day):
            if number == requests_per_day - 1:
                shown_at = midnight + timedelta(hours=23, minutes=50)  # the last request: clicks cross midnight
            else:
                shown_at = midnight + timedelta(seconds=rng.randrange(0, 23 * 3600))
            page = rng.choice(("home", "search", "category", "product"))
            request = {
                "request_id": _uuid(rng),
                "user_id": f"user-{rng.randrange(users):03d}",
                "model_version": rng.choice(("v1", "v2")),
                "variant": rng.choice(("champion", "canary")),
                "page": page,
                "device": rng.choice(("desktop", "mobile", "tablet", "unknown")),
                "query": f"query {rng.randrange(10)}" if page == "search" else None,
            }
            slate = rng.sample(sorted(item_prices), slate_size)
            for position, item_id in enumerate(slate):
                impression = add("impression", shown_at, request, item_id, position)
                impression["impression_of"] = request["request_id"]
                clicked = purchased = False
                roll = rng.random()
                click_probability = 0.25 / (1 + position)
                late_arrival = False
                if number == requests_per_day - 1 and position == 0:
                    delay = timedelta(minutes=20)  # 00:10 the next day, inside the window
                    fixture.edge_cases["click_after_midnight"] += 1
                elif number == requests_per_day - 1 and position == 1:
                    delay = timedelta(minutes=8)  # 23:58, but logged in the next day's first partition
                    late_arrival = True
                elif roll < click_probability:
                    delay = timedelta(seconds=rng.randrange(1, 25 * 60))
                elif roll < click_probability + 0.05:
                    delay = timedelta(minutes=rng.randrange(31, 90))
                    fixture.edge_cases["click_after_window"] += 1
                elif roll < click_probability + 0.08:
                    delay = -timedelta(seconds=rng.randrange(1, 120))
                    fixture.edge_cases["click_before_impression"] += 1
                else:
                    delay = None
                if delay is not None:
                    click = add("click", shown_at + delay, request, item_id, position)
                    click["late_arrival"] = late_arrival
                    clicked = timedelta(0) <= delay <= ATTRIBUTION_WINDOW
                    if clicked and not late_arrival and rng.random() < 0.2:
                        add("click", click["event_at"] + timedelta(seconds=2), request, item_id, position)
                        fixture.edge_cases["double_click"] += 1
                    if clicked and rng.random() < 0.5:
                        cart_at = click["event_at"] + timedelta(seconds=rng.randrange(5, 300))
                        add("add_to_cart", cart_at, request, item_id, position)
                        buy_delay = timedelta(seconds=rng.randrange(5, 40 * 60))
                        add("purchase", cart_at + buy_delay, request, item_id, position)
                        purchased = (cart_at + buy_delay) - shown_at <= ATTRIBUTION_WINDOW
                fixture.clicked_truth[impression["event_id"]] = clicked
                fixture.purchased_truth[impression["event_id"]] = purchased
            slate_clicks = [
                fixture.clicked_truth[e["event_id"]] for e in pending if e.get("impression_of") == request["request_id"]
            ]
            if 0 < sum(slate_clicks) < len(slate_clicks):
                fixture.edge_cases["request_with_clicked_and_unclicked_items"] += 1

    fixture.events = _assign_partitions(pending, rng, fixture.edge_cases)
    return fixture


def _assign_partitions(rows: list[dict[str, Any]], rng: random.Random, edge_cases: Counter) -> list[RawEvent]:
    """Put each event in its hour's log partition; some clicks arrive an hour late, some events twice."""
    placed: list[tuple[datetime, dict[str, Any]]] = []
    for row in sorted(rows, key=lambda r: (r["event_at"], r["event_id"])):
        arrival = row["event_at"]
        late = row.pop("late_arrival", False) or (row["event_type"] == "click" and rng.random() < 0.1)
        row.pop("impression_of", None)
        if late:
            arrival += timedelta(hours=1)
            edge_cases["click_logged_next_hour"] += 1
            if arrival.date() != row["event_at"].date():
                edge_cases["click_logged_next_day"] += 1
        placed.append((arrival, row))
        if rng.random() < 0.03:
            placed.append((arrival + timedelta(hours=1), row))  # a producer retry: the same event again
            edge_cases["duplicate_across_partitions"] += 1
    placed.sort(key=lambda pair: (pair[0].replace(minute=0, second=0, microsecond=0), pair[1]["event_at"]))
    line_numbers: Counter = Counter()
    events = []
    for arrival, row in placed:
        partition = (arrival.date(), arrival.hour)
        line_numbers[partition] += 1
        events.append(
            RawEvent(
                **row,
                log_date=partition[0],
                log_hour=partition[1],
                source_uri=f"file:///logs/dt={partition[0]}/hour={partition[1]:02d}/serving.jsonl",
                line_number=line_numbers[partition],
                ingest_run_id=f"ingest-{partition[0]}",
                ingested_at=datetime.combine(partition[0] + timedelta(days=1), datetime.min.time(), UTC),
            )
        )
    return events


def _rows(events: Iterable[RawEvent]) -> list[tuple[Any, ...]]:
    return [astuple(event) for event in events]


def write_duckdb(path: Path, events: Iterable[RawEvent], *, create: bool = True, catalog=None) -> None:
    """Create (or append to) raw_events in the DuckDB file ``path``; optionally write item_catalog."""
    import duckdb
    import pyarrow as pa

    rows = _rows(events)
    with duckdb.connect(str(path)) as connection:
        if create:
            connection.execute(RAW_EVENTS_DDL)
        if rows:
            batch = pa.table({name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)})
            connection.register("fixture_batch", batch)
            connection.execute(
                f"insert into raw_events ({', '.join(COLUMNS)}) select {', '.join(COLUMNS)} from fixture_batch"
            )
            connection.unregister("fixture_batch")
        if catalog is not None:
            _write_catalog(connection, catalog, "?")


def write_postgres(url: str, events: Iterable[RawEvent], *, create: bool = True, catalog=None) -> None:
    """Create (or append to) raw_events in the PostgreSQL database ``url``; optionally write item_catalog."""
    import psycopg2
    from psycopg2.extras import execute_values

    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            if create:
                cursor.execute(RAW_EVENTS_DDL)
            execute_values(cursor, f"insert into raw_events ({', '.join(COLUMNS)}) values %s", _rows(events))
            if catalog is not None:
                _write_catalog(cursor, catalog, "%s")
    finally:
        connection.close()


def write_catalog_csv(path: Path, catalog: Sequence[tuple[str, str, float]]) -> Path:
    """The catalog as the CSV that loopline.transform.load_item_catalog reads."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "category", "price"])
        writer.writerows(catalog)
    return path


def _write_catalog(cursor: Any, catalog: Sequence[tuple[str, str, float]], placeholder: str) -> None:
    cursor.execute("create table item_catalog (item_id varchar, category varchar, price double precision)")
    marks = ", ".join([placeholder] * 3)
    cursor.executemany(f"insert into item_catalog values ({marks})", list(catalog))
