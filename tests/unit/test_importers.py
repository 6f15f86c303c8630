"""Importers of real logs: run on the shared OTTO and UCI files and tiny MovieLens files, read back.

Every written line must parse as a schema v1 Event, counts must match the source, every positive
must follow an impression of the same request and item, and output must be byte-for-byte repeatable.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline import cli
from loopline.events import Event, parse_line
from loopline.importers import ImportConflictError, ImportInputError, import_dataset, movielens, otto, uci_eshop
from loopline.importers import _common as common
from loopline.importers._common import NegativeSampler, RowLog, event_id
from loopline.importers.uci_eshop import click_times_ms
from loopline.logstore import LogStore

OTTO = Path("otto-sessions-sample/sessions.jsonl")
UCI = Path("uci-eshop-clickstream-2008/eshop-clothing-2008.zip")
UCI_HEADER = (
    "year;month;day;order;country;session ID;page 1 (main category);page 2 (clothing model);colour;"
    "location;model photography;price;price 2;page"
)
POSITIVE_TYPES = ("click", "add_to_cart", "purchase")


def read_store(root: Path) -> list[tuple[str, Event]]:
    """Every line under a file:// store as (object key, Event); fails on any invalid line."""
    events = []
    for path in sorted(root.rglob("*.jsonl")):
        key = path.relative_to(root).as_posix()
        for index, raw in enumerate(path.read_bytes().splitlines()):
            parsed = parse_line(raw)
            assert isinstance(parsed, Event), f"{key}: {parsed}"
            if index % 10 == 0:  # the importer writes exactly what Event.to_json_line would (sampled: slow)
                assert parsed.to_json_line() == raw + b"\n"
            events.append((key, parsed))
    return events


def store_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_request_invariants(events: list[tuple[str, Event]], negatives: int) -> dict[str, list[Event]]:
    """Partition = event hour; each positive has its impression at or before it; requests well formed."""
    by_request: dict[str, list[Event]] = defaultdict(list)
    for key, event in events:
        assert key.startswith(f"dt={event.event_at.date().isoformat()}/hour={event.event_at.hour:02d}/")
        by_request[event.request_id].append(event)
    for request_id, members in by_request.items():
        impressions = [e for e in members if e.event_type == "impression"]
        assert len(impressions) == negatives + 1, request_id
        assert sorted(e.position for e in impressions) == list(range(1, negatives + 2))
        assert len({e.item_id for e in impressions}) == len(impressions)
        assert len({e.event_at for e in impressions}) == 1
        assert len({e.user_id for e in members}) == 1
        shown = {e.item_id: e for e in impressions}
        for event in members:
            if event.event_type in POSITIVE_TYPES:
                impression = shown[event.item_id]
                assert impression.event_at <= event.event_at
                assert impression.position == event.position
    return by_request


# --- OTTO -------------------------------------------------------------------------------------


def otto_source_events(path: Path) -> list[tuple[str, str, str, int]]:
    mapping = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}
    found = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        for event in record["events"]:
            found.append((f"otto-s{record['session']}", f"otto-a{event['aid']}", mapping[event["type"]], event["ts"]))
    return sorted(found)


def test_otto_full_sample(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    summary = import_dataset("otto", shared_data / OTTO, out.as_uri())

    assert summary.rows_read == 862 == summary.rows_converted + summary.rows_skipped_total
    assert summary.rows_skipped == {}
    assert summary.sessions == 20
    events = read_store(out)
    counts = Counter(event.event_type for _, event in events)
    assert counts["click"] == 800 and counts["add_to_cart"] == 52 and counts["purchase"] == 10
    # One request per click, plus one per cart/order whose item the session never clicked before.
    assert counts["impression"] == 5 * summary.requests
    assert summary.requests == 811  # documented in docs/importers.md
    assert summary.events_by_type == dict(counts)
    assert summary.events_written == len(events) == 4917
    assert summary.objects_written == summary.partitions == len(list(out.rglob("*.jsonl")))
    assert summary.first_event_at == "2022-07-31T22:00:00.025Z"
    assert summary.last_event_at == "2022-08-28T21:59:57.885Z"

    by_request = check_request_invariants(events, negatives=4)
    # The positives are exactly the source events (user, item, type, time to the millisecond).
    positives = sorted(
        (e.user_id, e.item_id, e.event_type, int(e.event_at.timestamp() * 1000))
        for _, e in events
        if e.event_type in POSITIVE_TYPES
    )
    assert positives == otto_source_events(shared_data / OTTO)
    # Negatives are never items of the user's own session.
    session_items = defaultdict(set)
    for user, item, _, _ in positives:
        session_items[user].add(item)
    for members in by_request.values():
        positive_items = {e.item_id for e in members if e.event_type != "impression"}
        for event in members:
            if event.event_type == "impression" and event.item_id not in positive_items:
                assert event.item_id not in session_items[event.user_id]
    assert {(e.model_version, e.variant, e.page, e.device, e.price, e.query) for _, e in events} == {
        ("import:otto", "import", "home", "unknown", 0.0, None)
    }
    assert all(key.split("/")[-1] == "import-otto-000000.jsonl" for key, _ in events)
    assert len({e.event_id for _, e in events}) == len(events)


def test_otto_cart_joins_the_request_of_its_click(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    import_dataset("otto", shared_data / OTTO, out.as_uri())
    events = [e for _, e in read_store(out)]
    clicks = {(e.user_id, e.item_id): e for e in sorted(events, key=lambda e: e.event_at) if e.event_type == "click"}
    for cart in (e for e in events if e.event_type == "add_to_cart"):
        click = clicks.get((cart.user_id, cart.item_id))
        if click is not None and click.event_at <= cart.event_at:
            assert cart.request_id.startswith(f"{cart.user_id}-e")
            assert any(
                e.request_id == cart.request_id and e.event_type == "click" and e.item_id == cart.item_id
                for e in events
            )


def test_otto_is_deterministic_and_seeded(shared_data: Path, tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    import_dataset("otto", shared_data / OTTO, first.as_uri(), seed=7)
    import_dataset("otto", shared_data / OTTO, second.as_uri(), seed=7)
    import_dataset("otto", shared_data / OTTO, other.as_uri(), seed=8)
    assert store_bytes(first) == store_bytes(second)
    assert store_bytes(first) != store_bytes(other)
    assert store_bytes(first).keys() == store_bytes(other).keys()  # the seed moves negatives, not times


def test_spilling_to_disk_gives_the_same_bytes(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    import_dataset("otto", shared_data / OTTO, (tmp_path / "memory").as_uri())
    monkeypatch.setattr(common, "SPOOL_MEMORY_BYTES", 20_000)  # spills every ~50 lines
    import_dataset("otto", shared_data / OTTO, (tmp_path / "spilled").as_uri())
    assert store_bytes(tmp_path / "memory") == store_bytes(tmp_path / "spilled")


def test_reimport_is_a_no_op_and_a_different_import_conflicts(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    first = import_dataset("otto", shared_data / OTTO, out.as_uri())
    before = store_bytes(out)
    again = import_dataset("otto", shared_data / OTTO, out.as_uri())
    assert again.objects_written == 0 and again.objects_unchanged == first.objects_written
    assert store_bytes(out) == before
    with pytest.raises(ImportConflictError, match="import-otto-000000.jsonl already holds"):
        import_dataset("otto", shared_data / OTTO, out.as_uri(), negatives_per_positive=2)


def test_negatives_setting(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    summary = import_dataset("otto", shared_data / OTTO, out.as_uri(), negatives_per_positive=0)
    events = read_store(out)
    check_request_invariants(events, negatives=0)
    assert summary.events_by_type["impression"] == summary.requests == 811
    with pytest.raises(ValueError, match="negatives_per_positive"):
        import_dataset("otto", shared_data / OTTO, out.as_uri(), negatives_per_positive=-1)


def test_otto_malformed_rows_are_counted_not_lost(shared_data: Path, tmp_path: Path) -> None:
    good = (shared_data / OTTO).read_bytes().splitlines()
    bad = [
        b"this is not json",
        b"",
        b'{"session": 99, "events": [{"aid": 1, "ts": 1659304800025, "type": "views"},'
        b' {"aid": 2, "type": "clicks"}, {"aid": -3, "ts": 1659304800025, "type": "clicks"},'
        b' {"aid": 4, "ts": 1659304800999, "type": "clicks"}, 7]}',
        b'{"events": [{"aid": 1, "ts": 1, "type": "clicks"}, {"aid": 1, "ts": 2, "type": "clicks"}]}',
        b'{"session": 100, "events": "none"}',
        b"[1, 2]",
    ]
    source = tmp_path / "sessions.jsonl"
    source.write_bytes(b"\n".join(good[:3] + bad + good[3:]) + b"\n")
    out = tmp_path / "logs"
    summary = import_dataset("otto", source, out.as_uri())

    assert summary.rows_skipped == {
        "invalid_json": 1,
        "empty_line": 1,
        "bad_value:type": 1,
        "missing_field:ts": 1,
        "bad_value:aid": 1,
        "not_an_object": 2,
        "missing_field:session": 2,
        "bad_value:events": 1,
    }
    assert summary.rows_read == 862 + 1 + 1 + 5 + 2 + 1 + 1
    assert summary.rows_read == summary.rows_converted + summary.rows_skipped_total
    assert summary.rows_converted == 862 + 1  # the one valid event of session 99 is kept
    assert any(example.endswith(":4: invalid_json") for example in summary.skipped_examples)
    events = read_store(out)
    assert Counter(e.event_type for _, e in events)["click"] == 801
    assert any(e.user_id == "otto-s99" and e.item_id == "otto-a4" for _, e in events)


# --- UCI e-shop -------------------------------------------------------------------------------


def uci_rows(shared_data: Path, count: int) -> list[list[str]]:
    with zipfile.ZipFile(shared_data / UCI) as archive, archive.open(archive.namelist()[0]) as handle:
        text = io.TextIOWrapper(handle, encoding="ascii", newline="")
        next(text)
        return [next(text).rstrip("\r\n").split(";") for _ in range(count)]


def test_uci_first_rows_from_the_zip(shared_data: Path, tmp_path: Path) -> None:
    limit = 10_000
    out = tmp_path / "logs"
    summary = import_dataset("uci-eshop", shared_data / UCI, out.as_uri(), limit=limit)
    assert summary.source.endswith("eshop-clothing-2008.zip!e-shop clothing 2008.csv")
    assert summary.rows_read == limit == summary.rows_converted
    assert summary.requests == limit
    events = read_store(out)
    counts = Counter(e.event_type for _, e in events)
    assert counts == {"click": limit, "impression": 5 * limit}
    check_request_invariants(events, negatives=4)

    source = uci_rows(shared_data, limit)
    clicks = {e.request_id: e for _, e in events if e.event_type == "click"}
    prices = {f"uci-{row[7]}": float(row[11]) for row in source}
    sessions: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    for row in source:
        year, month, day, order, _, session = map(int, row[:6])
        click = clicks[f"uci-s{session}-o{order}"]
        assert click.user_id == f"uci-s{session}" and click.item_id == f"uci-{row[7]}"
        assert click.event_at.date() == date(year, month, day)  # the source day is kept
        assert click.price == float(row[11])
        sessions[click.user_id].append((order, click.event_at))
    for steps in sessions.values():
        steps.sort()
        for (order_a, at_a), (order_b, at_b) in zip(steps, steps[1:], strict=False):
            assert (at_b - at_a).total_seconds() == 30 * (order_b - order_a)
    for _, event in events:  # negatives carry their own item's price
        assert event.price == prices.get(event.item_id, event.price)
        assert event.page == "category" and event.model_version == "import:uci-eshop"


def test_uci_whole_file_reads_cleanly(shared_data: Path) -> None:
    """Every row of the real file parses (the import itself is exercised above on its first rows)."""
    rows = RowLog("uci")
    sessions = list(uci_eshop.read_sessions(shared_data / UCI, rows, seed=0))
    assert rows.read == rows.converted == 165_474 and not rows.skipped
    assert len(sessions) == 24_026
    assert len({p.item_id for s in sessions for p in s.positives}) == 217
    days = [datetime.fromtimestamp(s.positives[0].at_ms / 1000, UTC).date() for s in (sessions[0], sessions[-1])]
    assert days == [date(2008, 4, 1), date(2008, 8, 13)]


def test_uci_csv_malformed_rows(tmp_path: Path) -> None:
    rows = [
        "2008;4;1;1;29;1;1;A13;1;5;1;28;2;1",
        "2008;4;1;2;29;1;1;A16;1;6;1;33;2;1",
        "2008;4;31;1;29;2;1;A13;1;5;1;28;2;1",  # April 31st
        "2008;4;1;1;29;3;1;A13;1;5;1",  # too few columns
        "2008;4;1;x;29;3;1;A13;1;5;1;28;2;1",
        "2008;4;1;1;29;3;1;A 1;1;5;1;28;2;1",
        "2008;4;1;1;29;3;1;B4;1;5;1;-5;2;1",
        "",
        "2008;4;2;1;29;4;2;B4;10;2;1;52;1;1",
        "2008;4;2;2;29;4;2;B17;6;6;2;38;2;1",
        "2008;4;2;3;29;4;2;B4;10;2;1;52;1;1",
    ]
    source = tmp_path / "clicks.csv"
    source.write_bytes(("\r\n".join([UCI_HEADER, *rows]) + "\r\n").encode())
    out = tmp_path / "logs"
    summary = import_dataset("uci-eshop", source, out.as_uri(), negatives_per_positive=2)
    assert summary.rows_skipped == {
        "bad_value:date": 1,
        "wrong_column_count": 1,
        "bad_value:order": 1,
        "bad_value:clothing_model": 1,
        "bad_value:price": 1,
        "empty_line": 1,
    }
    assert summary.rows_read == 11 == summary.rows_converted + summary.rows_skipped_total
    assert f"{source}:4: bad_value:date" in summary.skipped_examples
    events = read_store(out)
    assert Counter(e.event_type for _, e in events) == {"click": 5, "impression": 15}
    # Session 4 clicked B4 twice: two requests; its negatives come from the (tiny) catalog minus its items.
    session4 = [e for _, e in events if e.user_id == "uci-s4"]
    assert {e.request_id for e in session4} == {"uci-s4-o1", "uci-s4-o2", "uci-s4-o3"}
    negatives = {e.item_id for e in session4 if e.event_type == "impression"} - {"uci-B4", "uci-B17"}
    assert negatives == {"uci-A13", "uci-A16"}


def test_click_times_keep_order_inside_the_day() -> None:
    day = date(2008, 5, 4)
    midnight = int(datetime(2008, 5, 4, tzinfo=UTC).timestamp() * 1000)
    times = click_times_ms(0, 17, day, [1, 2, 3, 10])
    assert times == click_times_ms(0, 17, day, [1, 2, 3, 10])
    assert times != click_times_ms(1, 17, day, [1, 2, 3, 10])
    assert [t - times[0] for t in times] == [0, 30_000, 60_000, 270_000]
    assert midnight <= times[0] and times[-1] < midnight + 86_400_000
    long_session = click_times_ms(0, 1, day, list(range(1, 5001)))  # 5000 clicks do not fit at 30 s
    assert long_session == sorted(long_session) and len(set(long_session)) == 5000
    assert midnight <= long_session[0] and long_session[-1] < midnight + 86_400_000


# --- MovieLens --------------------------------------------------------------------------------

ML_RATINGS = [  # user, movie, rating, timestamp (seconds)
    (1, 10, 5, 964982703),
    (1, 11, 3, 964982931),
    (1, 12, 4, 964983815),
    (2, 10, 2, 1445714835),
    (2, 13, 4.5, 1445715000),
    (3, 14, 1, 1100000000),
    (3, 15, 4, 1100000100),
    (4, 16, 5, 1200000000),
    (4, 17, 3.5, 1200000001),
    (5, 18, 4, 1300000000),
    (5, 19, 4, 1300000000),
    (6, 20, 0.5, 1400000000),
]


def write_movielens(tmp_path: Path, kind: str, extra: tuple[str, ...] | list[str] = ()) -> Path:
    if kind == "u.data":
        lines = [f"{u}\t{m}\t{int(r) if r == int(r) else r}\t{t}" for u, m, r, t in ML_RATINGS]
        text = "\n".join([*lines, *extra]) + "\n"
    elif kind == "ratings.dat":
        text = "\n".join(f"{u}::{m}::{r}::{t}" for u, m, r, t in ML_RATINGS) + "\n"
    else:
        lines = [f"{u},{m},{float(r)},{t}" for u, m, r, t in ML_RATINGS]
        text = "\n".join(["userId,movieId,rating,timestamp", *lines, *extra]) + "\n"
    folder = tmp_path / kind.replace(".", "-")
    folder.mkdir()
    (folder / kind).write_text(text)
    return folder / kind


@pytest.mark.parametrize("kind", ["u.data", "ratings.csv", "ratings.dat"])
def test_movielens_formats(tmp_path: Path, kind: str) -> None:
    source = write_movielens(tmp_path, kind)
    out = tmp_path / "logs"
    summary = import_dataset("movielens", source, out.as_uri(), negatives_per_positive=3)
    assert summary.rows_read == len(ML_RATINGS) == summary.rows_converted
    assert summary.sessions == 6
    events = read_store(out)
    liked = [(f"ml-u{u}", f"ml-m{m}", t) for u, m, r, t in ML_RATINGS if r >= 4]
    clicks = sorted((e.user_id, e.item_id, int(e.event_at.timestamp())) for _, e in events if e.event_type == "click")
    assert clicks == sorted(liked)
    assert Counter(e.event_type for _, e in events) == {"click": len(liked), "impression": 4 * len(ML_RATINGS)}
    check_request_invariants(events, negatives=3)
    # Every rating, liked or not, is an impression of the rated movie in its own request.
    for u, m, _, t in ML_RATINGS:
        request = [e for _, e in events if e.request_id == f"ml-u{u}-m{m}-t{t}"]
        assert any(e.event_type == "impression" and e.item_id == f"ml-m{m}" for e in request)
    assert {(e.model_version, e.page, e.price) for _, e in events} == {("import:movielens", "home", 0.0)}


def test_movielens_formats_give_identical_output(tmp_path: Path) -> None:
    outputs = []
    for kind in ("u.data", "ratings.csv"):
        out = tmp_path / f"out-{kind}"
        import_dataset("movielens", write_movielens(tmp_path, kind).parent, out.as_uri(), seed=3)
        outputs.append(store_bytes(out))
    assert outputs[0] == outputs[1]


def test_movielens_spill_and_malformed_rows(tmp_path: Path, monkeypatch) -> None:
    extra = ["1,10,five,964982703", "7,21,4.0", "8,22,4.0,-5", "9,23,6,100", "x,1,4.0,100", ""]
    source = write_movielens(tmp_path, "ratings.csv", extra)
    reference = tmp_path / "reference"
    summary = import_dataset("movielens", source, reference.as_uri())
    assert summary.rows_skipped == {
        "bad_value:rating": 2,
        "wrong_column_count": 1,
        "bad_value:timestamp": 1,
        "bad_value:user_id": 1,
        "empty_line": 1,
    }
    assert summary.rows_read == len(ML_RATINGS) + len(extra) == summary.rows_converted + summary.rows_skipped_total
    monkeypatch.setattr(common, "SPOOL_MEMORY_BYTES", 2_000)
    spilled = tmp_path / "spilled"
    import_dataset("movielens", source, spilled.as_uri())
    assert store_bytes(reference) == store_bytes(spilled)


# --- errors, CLI, S3 --------------------------------------------------------------------------


def test_bad_inputs_name_the_file_and_line(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    with pytest.raises(ImportInputError, match="no such file"):
        import_dataset("otto", tmp_path / "missing.jsonl", out.as_uri())
    ratings = write_movielens(tmp_path, "ratings.csv")
    with pytest.raises(ImportInputError, match=rf"{ratings}:1: expected OTTO session JSON lines"):
        import_dataset("otto", ratings, out.as_uri())
    with pytest.raises(ImportInputError, match=rf"{ratings}:1: expected the UCI e-shop header"):
        import_dataset("uci-eshop", ratings, out.as_uri())
    with pytest.raises(ImportInputError, match=r"sessions.jsonl:1: expected MovieLens ratings"):
        import_dataset("movielens", shared_data / OTTO, out.as_uri())
    not_a_zip = tmp_path / "data.zip"
    not_a_zip.write_bytes(b"PK but not really")
    with pytest.raises(ImportInputError, match="not a readable zip"):
        import_dataset("uci-eshop", not_a_zip, out.as_uri())
    with pytest.raises(ValueError, match="unknown dataset"):
        import_dataset("netflix", ratings, out.as_uri())
    assert not out.exists() or not list(out.rglob("*.jsonl"))


def test_cli_import(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "logs"
    code = cli.main(
        ["import", "otto", str(shared_data / OTTO), "--out", out.as_uri(), "--negatives", "2", "--seed", "5"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows_read"] == 862 and printed["rows_skipped"] == 0
    assert printed["events_by_type"]["impression"] == 3 * printed["requests"]
    assert printed["events_written"] == len(read_store(out))

    code = cli.main(["import", "movielens", str(tmp_path / "nope.csv"), "--out", out.as_uri()])
    assert code == 2
    assert "nope.csv: no such file" in capsys.readouterr().err


def test_cli_default_out_is_the_configured_log_store(tmp_path: Path, isolated_home: Path, capsys) -> None:
    source = write_movielens(tmp_path, "u.data")
    assert cli.main(["import", "movielens", str(source)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out_uri"] == (isolated_home / "logs").as_uri()
    assert len(read_store(isolated_home / "logs")) == printed["events_written"] > 0


def test_import_to_s3(shared_data: Path, s3_endpoint: str, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/logs"
    options = {"s3_endpoint_url": s3_endpoint, "negatives_per_positive": 1, "limit": 150}  # ~30 objects
    summary = import_dataset("otto", shared_data / OTTO, uri, **options)
    store = LogStore.from_uri(uri, s3_endpoint_url=s3_endpoint)
    objects = store.list_interval(datetime(2022, 7, 31, tzinfo=UTC), datetime(2022, 8, 29, tzinfo=UTC))
    assert len(objects) == summary.objects_written > 10
    lines = [line for obj in objects for line in store.iter_lines(obj)]
    assert len(lines) == summary.events_written
    assert all(isinstance(parse_line(line), Event) for line in lines)
    again = import_dataset("otto", shared_data / OTTO, uri, **options)
    assert again.objects_unchanged == summary.objects_written and again.objects_written == 0


# --- pieces -----------------------------------------------------------------------------------


def test_event_id_is_uuid5() -> None:
    import uuid

    namespace = uuid.UUID(bytes=common.IMPORT_NAMESPACE_BYTES)
    for key in ("a", "otto-s0-e0|impression|otto-a1", "ü" * 50):
        assert event_id(key) == str(uuid.uuid5(namespace, key))


def test_negative_sampler() -> None:
    windows = {1: Counter({"a": 50, "b": 1}), 2: Counter({f"i{n}": n + 1 for n in range(20)})}
    sampler = NegativeSampler(windows)
    rng = random.Random(0)
    for _ in range(200):
        picked = sampler.sample(rng, 2, 5, {"i19", "i18"})
        assert len(picked) == len(set(picked)) == 5
        assert not {"i19", "i18"} & set(picked)
    # Window 1 has only "b" left once "a" is excluded: the rest comes from the whole dataset.
    picked = sampler.sample(random.Random(1), 1, 4, {"a"})
    assert len(picked) == 4 and "a" not in picked
    # An unknown window falls back too; a catalog smaller than asked gives what exists.
    assert len(sampler.sample(random.Random(2), 99, 3, set())) == 3
    assert len(sampler.sample(random.Random(3), 1, 50, {"a"})) == 21
    # Popular items are drawn more often.
    draws = Counter(item for seed in range(300) for item in sampler.sample(random.Random(seed), 2, 1, set()))
    assert draws["i19"] > draws["i0"]


def test_format_ms_matches_the_schema_formatter() -> None:
    from loopline.events import format_timestamp

    for at_ms in (0, 1_659_304_800_025, 253_402_300_799_999, 951_782_400_000):
        moment = datetime.fromtimestamp(at_ms // 1000, UTC).replace(microsecond=at_ms % 1000 * 1000)
        assert common.format_ms(at_ms) == format_timestamp(moment)


ML_LINES = st.one_of(
    st.builds(
        lambda u, m, r, t: f"{u}\t{m}\t{r}\t{t}",
        st.integers(-2, 50),
        st.integers(-2, 50),
        st.sampled_from(["1", "4", "5", "4.5", "x", "", "7", "nan"]),
        st.integers(-10, 2_000_000_000),
    ),
    st.text(alphabet="0123456789\t,:x. -", max_size=30),
)


@given(st.lists(ML_LINES, min_size=1, max_size=40))
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_movielens_rows_are_always_accounted_for(tmp_path_factory, lines: list[str]) -> None:
    """Whatever the lines, each is converted or skipped with a reason; only a bad first line is fatal."""
    source = tmp_path_factory.mktemp("ml") / "u.data"
    source.write_text("\t1\t4\t1\n" + "\n".join(lines) + "\n")  # a tab in the first line: u.data
    rows = RowLog(str(source))
    sessions = list(movielens.read_sessions(source, rows))
    assert rows.read == 1 + len("\n".join(lines).split("\n"))
    assert rows.read == rows.converted + sum(rows.skipped.values())
    assert sum(len(s.positives) for s in sessions) == rows.converted
    assert all(p.at_ms >= 0 and p.item_id.startswith("ml-m") for s in sessions for p in s.positives)


OTTO_EVENTS = st.one_of(
    st.fixed_dictionaries(
        {
            "aid": st.one_of(st.integers(-1, 10**6), st.text(max_size=3)),
            "ts": st.one_of(st.integers(-1, 2 * 10**12), st.none()),
            "type": st.sampled_from(["clicks", "carts", "orders", "views", 3]),
        }
    ),
    st.integers(),
    st.text(max_size=5),
)
OTTO_LINES = st.one_of(
    st.builds(
        lambda session, events: json.dumps({"session": session, "events": events}),
        st.one_of(st.integers(-1, 100), st.text(max_size=2)),
        st.lists(OTTO_EVENTS, max_size=5),
    ),
    st.text(alphabet='{}[]":,0123456789abc ', max_size=30).map(lambda text: text.replace("\n", " ")),
)


@given(st.lists(OTTO_LINES, min_size=1, max_size=20))
@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_otto_rows_are_always_accounted_for(tmp_path_factory, lines: list[str]) -> None:
    source = tmp_path_factory.mktemp("otto") / "sessions.jsonl"
    source.write_text('{"session": 0, "events": []}\n' + "\n".join(lines) + "\n")
    rows = RowLog(str(source))
    sessions = list(otto.read_sessions(source, rows))
    assert rows.read == rows.converted + sum(rows.skipped.values())
    assert sum(len(s.positives) for s in sessions) == rows.converted
    for session in sessions:
        for positive in session.positives:
            assert positive.event_type in ("click", "add_to_cart", "purchase")
            assert 0 <= positive.at_ms <= otto.MAX_TS_MS
