"""The traffic simulator: determinism, realistic statistics, the planted truth, policies, S3 and the CLI.

Expected ranges (checked over seeds 1-15 when they were set; 200 users, 100 items, 15-20k events/day):
- CTR of people under the default popularity policy (clicks so far; day 0 has no counts and is
  effectively random): 3.7-5.3 % over a 3-day run, about 5.5-6.5 % once it has counts; under a
  random ranking about 2.5-4.5 %. Asserted 3-8 %. Bots click ~92 % of what they see (asserted > 80 %).
- Position bias: CTR at position 1 is 6.5-10x CTR at position 10 under popularity and ~6x under a
  random ranking, where the whole gap is position bias (asserted > 3x).
- Purchases per click of people: 0.15-0.20 (asserted 0.05-0.35); events per day within ~5 % of the target.
- Drift (random ranking, day 1 vs day 3, drift from day 2): the total-variation distance between the
  per-category click shares is 0.16-0.33 with drift and 0.03-0.10 without (asserted > 0.15 / < 0.12).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from loopline import cli, events
from loopline.events import Event, Rejection, parse_line
from loopline.logstore import LogStore
from loopline.simulate import (
    MALFORMED_KINDS,
    CallablePolicy,
    HttpPolicy,
    PolicyError,
    RankedList,
    Simulator,
    TruthWriter,
    World,
    generate_day,
    make_policy,
    simulate,
    simulate_day,
)
from loopline.simulate.malformed import MalformedLineMaker
from loopline.simulate.text import plant_pii, python_random

START = date(2024, 3, 1)
SMALL = {"users": 60, "items": 40, "events_per_day": 3000}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _objects(store: LogStore, first: date, days: int):
    found = []
    for offset in range(days + 1):  # + the day that holds the last day's late events
        found.extend(store.list(first + timedelta(days=offset)))
    return found


def _read_log(uri: str, first: date = START, days: int = 4) -> dict[str, list[bytes]]:
    store = LogStore.from_uri(uri)
    return {obj.key: list(store.iter_lines(obj)) for obj in _objects(store, first, days)}


def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _tv_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


# -- one realistic run with every knob on, shared by the statistics and truth tests ---------------


@pytest.fixture(scope="module")
def knobs_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("knobs")
    summary = simulate(
        (root / "logs").as_uri(),
        start_date=START,
        days=3,
        users=200,
        items=100,
        events_per_day=15_000,
        seed=11,
        drift_day=2,
        bot_rate=0.03,
        pii_rate=0.05,
        malformed_rate=0.01,
        new_item_rate=0.02,
        truth_dir=root / "truth",
    )
    log = _read_log((root / "logs").as_uri(), days=3)
    parsed: dict[tuple[str, int], Event | Rejection] = {}
    for key, lines in log.items():
        for number, line in enumerate(lines, start=1):
            parsed[key, number] = parse_line(line)
    valid = [p for p in parsed.values() if isinstance(p, Event)]
    world = orjson.loads((root / "truth" / "world.json").read_bytes())
    return {"root": root, "summary": summary, "log": log, "parsed": parsed, "events": valid, "world": world}


def test_summary_matches_the_log(knobs_run: dict) -> None:
    summary, valid = knobs_run["summary"], knobs_run["events"]
    by_type = Counter(e.event_type for e in valid)
    assert dict(by_type) == {k: v for k, v in summary.events_by_type.items() if v}
    assert summary.events == len(valid)
    assert summary.impressions == by_type["impression"] and summary.clicks == by_type["click"]
    assert summary.malformed_lines == len(knobs_run["parsed"]) - len(valid)
    assert summary.objects_written == len(knobs_run["log"])
    assert summary.days == 3
    for day in range(3):  # events_per_day is a target, met within about 10 per cent
        count = sum(1 for e in valid if e.event_at.date() == START + timedelta(day))
        assert 13_500 < count < 16_500
    assert set(summary.to_dict()) >= {"days", "events_by_type", "impressions", "clicks", "purchases", "ctr"}


def test_every_valid_line_is_an_event_in_canonical_form(knobs_run: dict) -> None:
    malformed = {(row["key"], row["line"]) for row in _jsonl(knobs_run["root"] / "truth" / "malformed.jsonl")}
    for index, ((key, number), result) in enumerate(knobs_run["parsed"].items()):
        if (key, number) in malformed:
            continue
        assert isinstance(result, Event), (key, number, result)
        if index % 5 == 0:  # Event.to_json_line is slow; a fifth of the lines is plenty
            assert result.to_json_line() == knobs_run["log"][key][number - 1] + b"\n"


def test_malformed_lines_get_exactly_the_listed_reason(knobs_run: dict) -> None:
    rows = _jsonl(knobs_run["root"] / "truth" / "malformed.jsonl")
    assert len(rows) == knobs_run["summary"].malformed_lines > 100
    for row in rows:
        result = knobs_run["parsed"][row["key"], row["line"]]
        assert isinstance(result, Rejection), row
        assert result.reason == row["reason"], (row, result)
    codes = {row["reason"].split(":")[0] for row in rows}
    assert codes == set(events.REASON_CODES)
    field_reasons = {row["reason"] for row in rows if ":" in row["reason"]}
    for name in events.REQUIRED_FIELDS:
        assert f"missing_field:{name}" in field_reasons
    assert {f"bad_type:{name}" for name in events.FIELDS if name != "schema_version"} <= field_reasons


@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
def test_each_malformed_kind_gives_its_reason_in_every_variant(kind: str) -> None:
    world = World.build(20, 20, seed=3)
    line = generate_day(world, 0, make_policy("random"), events_per_day=300, pii_rate=1.0).render_lines()[0]
    record = orjson.loads(line)
    for picker_seed in range(30):
        bad, reason = MALFORMED_KINDS[kind](dict(record), python_random(np.random.default_rng(picker_seed)))
        result = parse_line(bad)
        assert isinstance(result, Rejection) and result.reason == reason, (kind, bad[:120], result)
        assert b"\n" not in bad


def test_malformed_maker_deals_every_kind_in_each_round() -> None:
    maker = MalformedLineMaker(python_random(np.random.default_rng(0)))
    record = orjson.loads(generate_day(World.build(5, 12, 0), 0, "random", events_per_day=50).render_lines()[0])
    kinds = [maker.make(record)[2] for _ in range(len(MALFORMED_KINDS))]
    assert sorted(kinds) == sorted(MALFORMED_KINDS)


def test_planted_pii_is_in_the_log_exactly_as_listed(knobs_run: dict) -> None:
    rows = _jsonl(knobs_run["root"] / "truth" / "pii.jsonl")
    assert knobs_run["summary"].pii_planted == len(rows) > 50
    assert {row["pii_type"] for row in rows} == {"email", "phone"}
    listed: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        event = knobs_run["parsed"][row["key"], row["line"]]
        assert isinstance(event, Event) and event.event_id == row["event_id"]
        assert event.request_id == row["request_id"]
        assert row["value"] in event.query
        listed[event.event_id].append(row["value"])
    # Several formats of each kind were planted.
    phones = {row["value"] for row in rows if row["pii_type"] == "phone"}
    assert any(p.startswith("+") for p in phones) and any("(" in p for p in phones | {"("}) and len(phones) > 10
    assert all(EMAIL.fullmatch(row["value"]) for row in rows if row["pii_type"] == "email")
    # No unlisted PII: ordinary queries have no digits and no '@'.
    for event in knobs_run["events"]:
        if event.event_id in listed:
            continue
        if event.query is not None:
            assert not re.search(r"[\d@]", event.query), event.query


def test_events_follow_the_schema_semantics(knobs_run: dict) -> None:
    world = knobs_run["world"]
    prices = {item["item_id"]: item["price"] for item in world["world"]["items"]}
    by_request: dict[str, list[Event]] = defaultdict(list)
    for event in knobs_run["events"]:
        by_request[event.request_id].append(event)
        assert re.fullmatch(r"u\d{6}", event.user_id) and re.fullmatch(r"i\d{5}", event.item_id)
        assert event.price == prices[event.item_id]
        assert event.device in events.DEVICES
        assert event.page in {"home", "search", "category", "product"}
        assert (event.query is not None) == (event.page == "search")
        assert (event.model_version, event.variant) == ("popularity-counts-v1", "control")
    late_clicks = 0
    for request_events in by_request.values():
        shown = {e.position: e for e in request_events if e.event_type == "impression"}
        assert sorted(shown) == list(range(1, 11))
        assert len({(e.event_at, e.user_id, e.page, e.device, e.query) for e in shown.values()}) == 1
        clicks = {(e.item_id, e.position): e for e in request_events if e.event_type == "click"}
        for event in request_events:
            if event.event_type == "impression":
                continue
            assert shown[event.position].item_id == event.item_id
            assert event.event_at > shown[event.position].event_at
            if event.event_type != "click":
                assert event.event_at > clicks[event.item_id, event.position].event_at
        for click in clicks.values():
            delay = click.event_at - shown[click.position].event_at
            late_clicks += delay > timedelta(minutes=10)
            assert delay < timedelta(hours=1)
    assert late_clicks > 20


def test_events_are_partitioned_by_their_hour_and_late_ones_cross_partitions(knobs_run: dict) -> None:
    crossing = 0
    impressions_at = {}
    for (key, _), result in knobs_run["parsed"].items():
        if isinstance(result, Event):
            assert key.startswith(f"dt={result.event_at.date().isoformat()}/hour={result.event_at.hour:02d}/sim-")
            if result.event_type == "impression":
                impressions_at[result.request_id, result.position] = result.event_at
    for event in knobs_run["events"]:
        if event.event_type == "click":
            shown = impressions_at[event.request_id, event.position]
            crossing += shown.replace(minute=0, second=0, microsecond=0) != event.event_at.replace(
                minute=0, second=0, microsecond=0
            )
    assert crossing > 20


def test_late_events_past_midnight_join_the_next_days_first_hour(tmp_path: Path) -> None:
    world = World.build(200, 100, seed=1, start_date=START, days=4, bot_rate=0.03)
    late = generate_day(world, 2, "random", events_per_day=15_000)
    start, stop = late.hour_bounds()[24]
    n_late = stop - start
    assert n_late > 0  # this seed and day have some (most nights have only a few)
    next_day = START + timedelta(days=3)

    store = LogStore.from_uri((tmp_path / "flushed").as_uri())
    simulator = Simulator(world, "random", store, events_per_day=15_000)
    simulator.run_day(2)
    assert store.list(next_day) == []  # held back until the next day or the end
    simulator.flush()
    (spill,) = store.list(next_day)
    spilled = [parse_line(line) for line in store.iter_lines(spill)]
    assert len(spilled) == n_late and all(
        e.event_at.date() == next_day and e.event_type != "impression" for e in spilled
    )

    store = LogStore.from_uri((tmp_path / "merged").as_uri())
    simulator = Simulator(world, "random", store, events_per_day=15_000)
    simulator.run_day(2)
    simulator.run_day(3)
    (first_hour,) = store.list(next_day, 0)
    merged = [parse_line(line) for line in store.iter_lines(first_hour)]
    assert {e.event_id for e in spilled} <= {e.event_id for e in merged}
    assert [e.event_at for e in merged] == sorted(e.event_at for e in merged)


def test_ctr_is_realistic_and_bots_click_far_more(knobs_run: dict) -> None:
    bots = set(knobs_run["world"]["world"]["bot_user_ids"])
    assert len(bots) == 6  # 3 % of 200
    shown, clicked = Counter(), Counter()
    for event in knobs_run["events"]:
        if event.event_type in ("impression", "click"):
            (shown if event.event_type == "impression" else clicked)[event.user_id in bots] += 1
    people_ctr, bot_ctr = clicked[False] / shown[False], clicked[True] / shown[True]
    assert 0.03 < people_ctr < 0.08
    assert bot_ctr > 0.8 and bot_ctr > 10 * people_ctr
    summary = knobs_run["summary"]
    assert summary.bot_clicks / summary.bot_impressions == pytest.approx(bot_ctr, abs=0.01)
    purchases = sum(1 for e in knobs_run["events"] if e.event_type == "purchase")
    assert 0.05 < purchases / clicked[False] < 0.35


def test_position_bias_is_clear(knobs_run: dict) -> None:
    bots = set(knobs_run["world"]["world"]["bot_user_ids"])
    shown, clicked = Counter(), Counter()
    for event in knobs_run["events"]:
        if event.user_id not in bots and event.event_type in ("impression", "click"):
            (shown if event.event_type == "impression" else clicked)[event.position] += 1
    ctr = {p: clicked[p] / shown[p] for p in range(1, 11)}
    assert ctr[1] > 3 * ctr[10]
    # Under a random ranking the whole gap is position bias (items do not differ by position).
    world = World.build(200, 100, seed=5, days=1)
    traffic = generate_day(world, 0, make_policy("random"), events_per_day=40_000)
    first, last = traffic.impression_position == 1, traffic.impression_position == 10
    assert traffic.clicked[first].mean() > 3 * traffic.clicked[last].mean()
    assert traffic.attractiveness[first].mean() == pytest.approx(traffic.attractiveness[last].mean(), rel=0.15)


@pytest.mark.parametrize("seed", [1, 2])
def test_drift_shifts_category_click_shares_beyond_noise(seed: int) -> None:
    def click_share_shift(drift_day: int | None) -> float:
        world = World.build(200, 100, seed, days=4, drift_day=drift_day)
        policy = make_policy("random")
        shares = []
        for day in range(4):
            traffic = generate_day(world, day, policy, events_per_day=20_000)
            categories = world.item_category[traffic.impression_item]
            shares.append(np.bincount(categories, weights=traffic.clicked, minlength=len(world.categories)))
        return _tv_distance(shares[1], shares[3])  # day 1 is before the drift, day 3 after

    drifted, steady = click_share_shift(2), click_share_shift(None)
    assert drifted > 0.15 and steady < 0.12 and drifted > 2 * steady


def test_drift_changes_the_truth_only_from_the_drift_day() -> None:
    world = World.build(50, 30, seed=4, days=5, drift_day=3)
    users, items = np.repeat(np.arange(50), 30), np.tile(np.arange(30), 50)
    before = [world.attractiveness(users, items, day) for day in range(3)]
    after = world.attractiveness(users, items, 3)
    assert all(np.array_equal(before[0], b) for b in before)
    assert np.corrcoef(before[0], after)[0, 1] < 0.7
    assert np.array_equal(after, world.attractiveness(users, items, 4))


def test_oracle_covers_every_impression_and_matches_the_clicks(knobs_run: dict) -> None:
    columns = ["event_id", "request_id", "user_id", "item_id", "position", "event_at", "is_bot", "clicked"]
    columns += ["click_probability", "purchase_probability"]
    table = pq.read_table(knobs_run["root"] / "truth" / "oracle", columns=columns)
    oracle = {name: table[name].to_numpy(zero_copy_only=False) for name in columns}
    impressions = [e for e in knobs_run["events"] if e.event_type == "impression"]
    assert len(oracle["event_id"]) == len(impressions)
    assert set(oracle["event_id"]) == {e.event_id for e in impressions}
    first = impressions[0]
    row = int(np.flatnonzero(oracle["event_id"] == first.event_id)[0])
    assert (oracle["request_id"][row], oracle["item_id"][row], oracle["position"][row]) == (
        first.request_id,
        first.item_id,
        first.position,
    )
    assert oracle["user_id"][row] == first.user_id
    assert table["event_at"][row].as_py() == first.event_at
    clicked_ids = {(e.request_id, e.position) for e in knobs_run["events"] if e.event_type == "click"}
    assert sum(oracle["clicked"]) == len(clicked_ids)
    probability = oracle["click_probability"]
    assert np.all((probability > 0) & (probability <= 1))
    assert np.all(oracle["purchase_probability"] <= probability)
    # Clicks are drawn from the oracle: calibrated overall and in each tenth of P(click).
    people = ~oracle["is_bot"]
    probability, clicked = probability[people], oracle["clicked"][people]
    assert clicked.mean() == pytest.approx(probability.mean(), rel=0.05)
    for tenth in np.array_split(np.argsort(probability), 10):
        assert clicked[tenth].mean() == pytest.approx(probability[tenth].mean(), abs=0.02)


def test_new_items_appear_over_the_days(knobs_run: dict) -> None:
    items = knobs_run["world"]["world"]["items"]
    introduced = {item["item_id"]: item["intro_day"] for item in items}
    assert len(items) == 100 + 2 * 2 and max(introduced.values()) == 2
    for event in knobs_run["events"]:
        assert introduced[event.item_id] <= (event.event_at.date() - START).days
    # A random ranking shows new items from their first day on (popularity by clicks rarely does).
    world = World.build(200, 100, seed=11, days=3, new_item_rate=0.02)
    traffic = generate_day(world, 2, "random", events_per_day=15_000)
    assert set(world.available_items(2)[100:]) <= set(traffic.impression_item.tolist())


# -- determinism ----------------------------------------------------------------------------------


def _small_run(root: Path, seed: int, **overrides) -> dict[str, bytes]:
    arguments = dict(
        start_date=START,
        days=2,
        seed=seed,
        drift_day=1,
        bot_rate=0.05,
        pii_rate=0.2,
        malformed_rate=0.02,
        new_item_rate=0.05,
        truth_dir=root / "truth",
        **SMALL,
    )
    arguments.update(overrides)
    simulate((root / "logs").as_uri(), **arguments)
    files = {}
    for path in sorted((root / "logs").rglob("*.jsonl*")):
        files[path.relative_to(root / "logs").as_posix()] = path.read_bytes()
    for name in ("pii.jsonl", "malformed.jsonl"):  # without the uri, which names the run's folder
        rows = [{k: v for k, v in row.items() if k != "uri"} for row in _jsonl(root / "truth" / name)]
        files[name] = orjson.dumps(rows)
    return files


def test_same_seed_writes_byte_identical_logs_and_truth(tmp_path: Path) -> None:
    first = _small_run(tmp_path / "a", seed=7)
    second = _small_run(tmp_path / "b", seed=7)
    assert len(first) > 24 and first == second
    oracle_a = pq.read_table(tmp_path / "a" / "truth" / "oracle")
    oracle_b = pq.read_table(tmp_path / "b" / "truth" / "oracle")
    assert oracle_a.equals(oracle_b)
    other = _small_run(tmp_path / "c", seed=8)
    shared = set(first) & set(other) - {"pii.jsonl", "malformed.jsonl"}
    assert shared and all(first[key] != other[key] for key in shared)


def test_simulator_day_by_day_equals_simulate(tmp_path: Path) -> None:
    expected = _small_run(tmp_path / "a", seed=3, drift_day=None, bot_rate=0.0, pii_rate=0.0, malformed_rate=0.0)
    world = World.build(SMALL["users"], SMALL["items"], 3, start_date=START, days=2, new_item_rate=0.05)
    store = LogStore.from_uri((tmp_path / "b").as_uri())
    simulator = Simulator(world, "popularity", store, events_per_day=SMALL["events_per_day"])
    for day in range(2):
        simulator.run_day(day)
    simulator.flush()
    written = {p.relative_to(tmp_path / "b").as_posix(): p.read_bytes() for p in (tmp_path / "b").rglob("*.jsonl")}
    assert written == {k: v for k, v in expected.items() if k.endswith(".jsonl") and k.startswith("dt=")}


def test_simulate_day_writes_one_day_and_its_late_events(tmp_path: Path) -> None:
    world = World.build(30, 20, seed=2, start_date=START, days=3)
    store = LogStore.from_uri((tmp_path / "logs").as_uri())
    with TruthWriter(tmp_path / "truth", world, {"note": "demo"}) as truth:
        traffic, summary = simulate_day(
            world, 1, "random", store, events_per_day=2000, pii_rate=0.3, malformed_rate=0.01, truth=truth
        )
    day = START + timedelta(days=1)
    keys = [o.key for o in store.list(day)] + [o.key for o in store.list(day + timedelta(days=1))]
    assert all(k.startswith((f"dt={day}", f"dt={day + timedelta(days=1)}/hour=00")) for k in keys)
    assert summary.events == traffic.n_events == sum(traffic.counts().values())
    lines = [line for obj in _objects(store, day, 1) for line in store.iter_lines(obj)]
    assert sum(isinstance(parse_line(line), Event) for line in lines) == traffic.n_events
    assert (tmp_path / "truth" / f"oracle/dt={day}.parquet").exists()
    assert len(_jsonl(tmp_path / "truth" / "pii.jsonl")) == summary.pii_planted > 0


def test_gzip_objects_hold_the_same_lines(tmp_path: Path) -> None:
    plain = _small_run(tmp_path / "plain", seed=5, days=1)
    packed = _small_run(tmp_path / "gz", seed=5, days=1, compress=True)
    assert all(key.endswith(".jsonl.gz") for key in packed if key.startswith("dt="))
    store = LogStore.from_uri((tmp_path / "gz" / "logs").as_uri())
    for obj in _objects(store, START, 1):
        assert b"".join(line + b"\n" for line in store.iter_lines(obj)) == plain[obj.key.removesuffix(".gz")]


# -- world ------------------------------------------------------------------------------------------


def test_world_is_deterministic_and_vectorised() -> None:
    first = World.build(100, 50, seed=9, bot_rate=0.1, new_item_rate=0.1, days=3)
    second = World.build(100, 50, seed=9, bot_rate=0.1, new_item_rate=0.1, days=3)
    assert first.describe() == second.describe()
    assert np.array_equal(first.user_vectors, second.user_vectors)
    assert first.user_ids[123 % 100] == "u000023" and first.item_ids[42] == "i00042"
    assert first.n_items == 60 and first.available_items(0).size == 50 and first.available_items(2).size == 60
    assert first.user_is_bot.sum() == 10
    by_ids = first.click_probability(["u000001", "u000002"], ["i00003", "i00004"], [1, 2], day=0)
    by_index = first.click_probability(np.array([1, 2]), np.array([3, 4]), np.array([1, 2]), day=0)
    assert np.array_equal(by_ids, by_index) and by_ids.shape == (2,)
    person = int(np.flatnonzero(~first.user_is_bot)[0])
    positions = np.arange(1, 11)
    curve = first.click_probability(np.full(10, person), np.full(10, 5), positions, day=0)
    assert np.all(np.diff(curve) < 0)
    bot = int(np.flatnonzero(first.user_is_bot)[0])
    assert np.all(first.click_probability(np.full(10, bot), np.full(10, 5), positions, day=0) > 0.9)
    assert np.all(first.purchase_probability(np.full(10, bot), np.arange(10), day=0) == 0)
    assert np.all(
        (first.purchase_probability(person, np.arange(50), 0) > 0)
        & (first.purchase_probability(person, np.arange(50), 0) < 1)
    )
    with pytest.raises(KeyError, match="unknown user id 'u999'"):
        first.click_probability(["u999"], ["i00001"], [1], day=0)


def test_world_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bot_rate"):
        World.build(10, 10, 1, bot_rate=1.5)
    with pytest.raises(ValueError, match="at least 1 user"):
        World.build(0, 10, 1)
    with pytest.raises(ValueError, match="seed"):
        World.build(10, 10, -1)


def test_pii_planting_formats() -> None:
    picker = python_random(np.random.default_rng(1))
    planted = [plant_pii("red shoes", picker) for _ in range(300)]
    kinds = Counter(kind for _, values in planted for kind, _ in values)
    assert kinds["email"] > 100 and kinds["phone"] > 100
    for query, values in planted:
        for _, value in values:
            assert value in query


# -- policies ----------------------------------------------------------------------------------------


def test_callable_policy_ranks_by_the_scorer(tmp_path: Path) -> None:
    world = World.build(30, 60, seed=1)
    policy = CallablePolicy(lambda user, items: [int(i[1:]) for i in items], model_version="m-7", variant="b")
    traffic = generate_day(world, 0, policy, events_per_day=1500, k=5)
    lines = [orjson.loads(line) for line in traffic.render_lines()]
    impressions = [r for r in lines if r["event_type"] == "impression"]
    assert {(r["model_version"], r["variant"]) for r in lines} == {("m-7", "b")}
    by_request = defaultdict(dict)
    for record in impressions:
        by_request[record["request_id"]][record["position"]] = int(record["item_id"][1:])
    for shown in by_request.values():
        assert [shown[p] for p in sorted(shown)] == sorted(shown.values(), reverse=True)

    with pytest.raises(PolicyError, match="one score per item"):
        generate_day(world, 0, CallablePolicy(lambda user, items: [1.0]), events_per_day=200)


def test_a_policy_must_return_candidates() -> None:
    class Stranger:
        def rank(self, user_id, candidate_item_ids, k, request_context):
            return RankedList(["i99999"], "x", "y")

    with pytest.raises(PolicyError, match="not candidates"):
        generate_day(World.build(10, 20, 1), 0, Stranger(), events_per_day=100)
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        make_policy("best")


def test_popularity_policy_learns_from_clicks() -> None:
    world = World.build(200, 100, seed=6, days=3)
    policy = make_policy("popularity")
    ctr = [generate_day(world, day, policy, events_per_day=20_000).clicked.mean() for day in range(3)]
    assert ctr[1] > 1.3 * ctr[0]  # day 0 has no counts yet (random order); day 1 ranks by them
    single = policy.rank(
        world.user_ids[0],
        world.item_ids[:20],
        5,
        request_context=_context(),
    )
    counts = policy.clicks[:20]
    shown_counts = [counts[world.item_ids.index(i)] for i in single.item_ids]
    assert shown_counts == sorted(counts, reverse=True)[:5]  # ties may come in any order


def _context():
    from loopline.simulate import RequestContext

    return RequestContext("r-1", START, datetime(2024, 3, 1, tzinfo=UTC), "home", "mobile", None, None)


class _RankingHandler(http.server.BaseHTTPRequestHandler):
    requests_seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests_seen.append(body)
        ranked = sorted(body["item_ids"], reverse=True)[: body["k"]]
        answer = {
            "items": [{"item_id": item, "score": 1.0 / (n + 1)} for n, item in enumerate(ranked)],
            "request_id": f"srv-{len(type(self).requests_seen):05d}",
            "model_version": "loopline-ctr:3",
            "variant": "canary",
        }
        payload = json.dumps(answer).encode()
        self.send_response(200 if self.path == "/rank" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_http_policy_against_a_local_ranking_service(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RankingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        summary = simulate(
            (tmp_path / "logs").as_uri(),
            start_date=START,
            days=1,
            users=20,
            items=30,
            events_per_day=600,
            seed=1,
            policy=url,
            k=4,
            truth_dir=tmp_path / "truth",
        )
    finally:
        server.shutdown()
        server.server_close()
    seen = _RankingHandler.requests_seen
    assert summary.requests == len(seen) > 10
    assert all(set(body) == {"user_id", "item_ids", "k"} and body["k"] == 4 for body in seen)
    records = [
        orjson.loads(line) for lines in _read_log((tmp_path / "logs").as_uri(), days=1).values() for line in lines
    ]
    assert {(r["model_version"], r["variant"]) for r in records} == {("loopline-ctr:3", "canary")}
    assert all(r["request_id"].startswith("srv-") for r in records)
    by_request = defaultdict(dict)
    for record in records:
        if record["event_type"] == "impression":
            by_request[record["request_id"]][record["position"]] = record["item_id"]
    for shown in by_request.values():
        assert [shown[p] for p in sorted(shown)] == sorted(shown.values(), reverse=True)

    with pytest.raises(PolicyError, match="failed"):
        HttpPolicy(url, timeout=1).rank("u000001", ["i00001"], 1, _context())


# -- stores and CLI -------------------------------------------------------------------------------


def test_writes_to_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    local = _small_run(tmp_path / "local", seed=4, days=1, malformed_rate=0.01)
    summary = simulate(
        f"s3://{s3_bucket}/logs",
        start_date=START,
        days=1,
        seed=4,
        drift_day=1,
        bot_rate=0.05,
        pii_rate=0.2,
        malformed_rate=0.01,
        new_item_rate=0.05,
        truth_dir=tmp_path / "s3-truth",
        s3_endpoint_url=s3_endpoint,
        **SMALL,
    )
    store = LogStore.from_uri(f"s3://{s3_bucket}/logs", s3_endpoint_url=s3_endpoint)
    objects = _objects(store, START, 1)
    assert len(objects) == summary.objects_written > 10
    for obj in objects:
        assert obj.uri.startswith(f"s3://{s3_bucket}/logs/dt=")
        assert b"".join(line + b"\n" for line in store.iter_lines(obj)) == local[obj.key]
    assert (tmp_path / "s3-truth" / "malformed.jsonl").read_bytes().count(b"s3://") == summary.malformed_lines > 0


def test_cli_simulate_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture, isolated_home: Path) -> None:
    out = (tmp_path / "cli-logs").as_uri()
    argv = ["simulate", "--out", out, "--start-date", "2024-03-01", "--days", "1", "--users", "30", "--items", "20"]
    argv += ["--events-per-day", "1500", "--seed", "3", "--bot-rate", "0.1", "--pii-rate", "0.2"]
    argv += ["--malformed-rate", "0.01", "--policy", "random", "--k", "5", "--gzip"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary["out_uri"] == out and summary["days"] == 1 and summary["events"] > 1000
    assert "simulate" in printed.err  # the progress bar
    truth = Path(summary["truth_dir"])
    assert truth.parent == isolated_home / "truth" and (truth / "world.json").exists()
    world = orjson.loads((truth / "world.json").read_bytes())
    assert world["world"]["parameters"]["seed"] == 3 and world["summary"]["events"] == summary["events"]
    keys = [o.key for o in LogStore.from_uri(out).list(START)]
    assert keys and all(key.endswith(".jsonl.gz") for key in keys)

    assert cli.main(argv + ["--no-progress"]) == 0  # a re-run appends new objects and replaces the truth
    assert "simulate" not in capsys.readouterr().err
    assert len(LogStore.from_uri(out).list(START)) == 2 * len(keys)
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--start-date", "2024-03-01", "--days", "1", "--users", "3", "--items", "3"])
