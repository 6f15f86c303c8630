"""Run the simulator: write each hour's events as one log object and the truth beside the log.

Memory stays flat with the number of days: a day is generated, written hour by hour and dropped;
only the late events that fall past midnight wait, to join the next day's hour-0 object.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq

from loopline import events
from loopline.config import settings
from loopline.logstore import LogStore
from loopline.simulate.malformed import MalformedLineMaker
from loopline.simulate.policies import HttpPolicy, Policy, RandomPolicy, make_policy
from loopline.simulate.text import python_random
from loopline.simulate.traffic import (
    DEFAULT_CANDIDATES,
    MS_PER_DAY,
    STREAM_MALFORMED,
    DayTraffic,
    chars_to_strings,
    day_rng,
    generate_day,
    uuid_chars,
)
from loopline.simulate.world import World

PRODUCER = "sim"


@dataclass
class SimulationSummary:
    """What a simulation wrote: counts by kind, where the log and the truth are, how long it took."""

    out_uri: str
    truth_dir: str | None
    start_date: str
    days: int
    seed: int
    requests: int = 0
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(events.EVENT_TYPES, 0))
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    ctr: float = 0.0
    bot_impressions: int = 0
    bot_clicks: int = 0
    malformed_lines: int = 0
    pii_planted: int = 0  # rows of pii.jsonl: one per planted value per event line
    objects_written: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Batch:
    """Rendered lines of one hour partition, in time order, plus what the truth needs about them."""

    lines: list[str]  # each ending in "\n"
    times: np.ndarray  # ms after the partition's midnight
    pii: list[tuple[int, str, str, list[tuple[str, str]]]]  # (line index, event_id, request_id, planted)


def _render_hour(traffic: DayTraffic, start: int, stop: int, hour: int) -> _Batch:
    lines = traffic.render_text(start, stop)
    times = traffic.event_time[start:stop] - (MS_PER_DAY if hour == 24 else 0)
    pii: list[tuple[int, str, str, list[tuple[str, str]]]] = []
    if traffic.request_pii:
        requests = traffic.event_request[start:stop]
        flagged = np.flatnonzero(np.isin(requests, np.fromiter(traffic.request_pii, dtype=np.int64)))
        ids = chars_to_strings(traffic.event_ids[start + flagged])
        for index, event_id in zip(flagged.tolist(), ids, strict=True):
            request = int(requests[index])
            pii.append((index, event_id, traffic.request_ids[request], traffic.request_pii[request]))
    return _Batch(lines, times, pii)


def _merge(first: _Batch, second: _Batch) -> _Batch:
    """Two batches of the same partition as one, in time order (late events of the previous day first on ties)."""
    times = np.concatenate((first.times, second.times))
    order = np.argsort(times, kind="stable")
    lines = first.lines + second.lines
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))
    shift = len(first.lines)
    pii = [(int(new_index[i]), *rest) for i, *rest in first.pii] + [
        (int(new_index[i + shift]), *rest) for i, *rest in second.pii
    ]
    return _Batch([lines[i] for i in order.tolist()], times[order], sorted(pii))


class TruthWriter:
    """The answers, kept outside the log: world.json, oracle/dt=*.parquet, pii.jsonl, malformed.jsonl."""

    def __init__(self, directory: Path, world: World, simulation: dict[str, Any]):
        self.directory = Path(directory)
        self.oracle_dir = self.directory / "oracle"
        self.oracle_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.oracle_dir.glob("dt=*.parquet"):  # a re-run replaces the truth of the last run
            stale.unlink()
        self._world = world
        self._simulation = simulation
        self._pii = open(self.directory / "pii.jsonl", "wb")  # noqa: SIM115 - closed in close()
        self._malformed = open(self.directory / "malformed.jsonl", "wb")  # noqa: SIM115
        self.write_world()

    def write_world(self, summary: SimulationSummary | None = None) -> None:
        document = {"world": self._world.describe(), "simulation": self._simulation}
        if summary is not None:
            document["summary"] = summary.to_dict()
        (self.directory / "world.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))

    def write_oracle(self, traffic: DayTraffic, rows_per_group: int = 1 << 18) -> None:
        """One Parquet file per day, written a row group at a time to keep memory small."""
        path = self.oracle_dir / f"dt={traffic.date.isoformat()}.parquet"
        total = len(traffic.impression_item)
        first = traffic.oracle_table(0, min(rows_per_group, total))
        with pq.ParquetWriter(path, first.schema) as writer:
            writer.write_table(first)
            for start in range(rows_per_group, total, rows_per_group):
                writer.write_table(traffic.oracle_table(start, start + rows_per_group))

    def add_pii(self, row: dict[str, Any]) -> None:
        self._pii.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))

    def add_malformed(self, row: dict[str, Any]) -> None:
        self._malformed.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))

    def close(self, summary: SimulationSummary | None = None) -> None:
        self._pii.close()
        self._malformed.close()
        if summary is not None:
            self.write_world(summary)

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._pii.closed:
            self.close()


class Simulator:
    """Drives days of a world through a policy into a log store, one hour object at a time.

    Call ``run_day`` for each day (in any order, e.g. one per demo round against a served model)
    and ``flush`` at the end to write the late events that fell past the last midnight.
    """

    def __init__(
        self,
        world: World,
        policy: Policy | str,
        store: LogStore,
        *,
        events_per_day: int,
        k: int = 10,
        pii_rate: float = 0.0,
        malformed_rate: float = 0.0,
        candidates: int = DEFAULT_CANDIDATES,
        truth: TruthWriter | None = None,
        compress: bool = False,
        on_hour: Callable[[int, int], None] | None = None,
    ):
        if events_per_day < 1:
            raise ValueError(f"events_per_day must be at least 1, got {events_per_day}")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError(f"malformed_rate must be in [0, 1], got {malformed_rate}")
        self.world = world
        self.policy = make_policy(policy)
        self.store = store
        self.events_per_day = events_per_day
        self.k = k
        self.pii_rate = pii_rate
        self.malformed_rate = malformed_rate
        self.candidates = candidates
        self.truth = truth
        self.compress = compress
        self.on_hour = on_hour
        self.summary = SimulationSummary(
            out_uri=store.root_uri,
            truth_dir=str(truth.directory) if truth else None,
            start_date=world.start_date.isoformat(),
            days=0,
            seed=world.seed,
        )
        self._carry: tuple[int, _Batch] | None = None  # (day index it belongs to, its hour-0 lines)

    def run_day(self, day_index: int) -> DayTraffic:
        """Generate day ``day_index`` and write its 24 hour objects (hour 0 with yesterday's late events)."""
        if self._carry is not None and self._carry[0] != day_index:
            self.flush()
        traffic = generate_day(
            self.world,
            day_index,
            self.policy,
            events_per_day=self.events_per_day,
            k=self.k,
            pii_rate=self.pii_rate,
            candidates=self.candidates,
        )
        if self.truth is not None:
            self.truth.write_oracle(traffic)
        self._count(traffic)
        maker = MalformedLineMaker(python_random(day_rng(self.world, day_index, STREAM_MALFORMED)))
        object_rng = day_rng(self.world, day_index, STREAM_MALFORMED, 1)
        bounds = traffic.hour_bounds()
        for hour in range(24):
            batch = _render_hour(traffic, *bounds[hour], hour)
            if hour == 0 and self._carry is not None:
                batch = _merge(self._carry[1], batch)
                self._carry = None
            self._write(traffic.date, hour, batch, maker, object_rng)
            if self.on_hour is not None:
                self.on_hour(day_index, hour)
        self._carry = (day_index + 1, _render_hour(traffic, *bounds[24], 24))
        self.summary.days += 1
        return traffic

    def flush(self) -> None:
        """Write pending late events (past the last simulated midnight) as their own hour-0 object."""
        if self._carry is None:
            return
        day_index, batch = self._carry
        self._carry = None
        maker = MalformedLineMaker(python_random(day_rng(self.world, day_index, STREAM_MALFORMED, 2)))
        when = self.world.start_date + timedelta(days=day_index)
        self._write(when, 0, batch, maker, day_rng(self.world, day_index, STREAM_MALFORMED, 3))

    def _count(self, traffic: DayTraffic) -> None:
        summary = self.summary
        for name, count in traffic.counts().items():
            summary.events_by_type[name] += count
        summary.requests += len(traffic.request_ids)
        summary.events += traffic.n_events
        summary.impressions = summary.events_by_type["impression"]
        summary.clicks = summary.events_by_type["click"]
        summary.purchases = summary.events_by_type["purchase"]
        summary.ctr = round(summary.clicks / summary.impressions, 6) if summary.impressions else 0.0
        bots = self.world.user_is_bot[traffic.request_user[traffic.impression_request]]
        summary.bot_impressions += int(bots.sum())
        summary.bot_clicks += int((bots & traffic.clicked).sum())

    def _write(self, when: date, hour: int, batch: _Batch, maker: MalformedLineMaker, rng: np.random.Generator) -> None:
        valid = batch.lines
        if not valid:
            return
        n_bad = int(rng.binomial(len(valid), self.malformed_rate)) if self.malformed_rate else 0
        slots = np.sort(rng.integers(0, len(valid) + 1, n_bad))
        bases = rng.integers(0, len(valid), n_bad).tolist()
        fresh_ids = chars_to_strings(uuid_chars(rng, n_bad))
        # Runs of valid lines are joined into one chunk each; the store writes the chunks back to back.
        chunks: list[bytes] = []
        bad_rows: list[tuple[int, str, str]] = []
        previous = 0
        for number, (slot, base, event_id) in enumerate(zip(slots.tolist(), bases, fresh_ids, strict=True)):
            if slot > previous:
                chunks.append("".join(valid[previous:slot]).encode())
            previous = slot
            record = orjson.loads(valid[base])
            record["event_id"] = event_id  # never a duplicate of a valid event's id
            line, reason, kind = maker.make(record)
            chunks.append(line + b"\n")
            bad_rows.append((slot + number + 1, reason, kind))  # 1-based line number in the object
        if previous < len(valid):
            chunks.append("".join(valid[previous:]).encode())
        written = self.store.write(when, hour, PRODUCER, chunks, compress=self.compress)
        self.summary.objects_written += 1
        self.summary.malformed_lines += n_bad
        if self.truth is None:
            self.summary.pii_planted += sum(len(planted) for *_, planted in batch.pii)
            return
        for line_number, reason, kind in bad_rows:
            self.truth.add_malformed(
                {"key": written.key, "uri": written.uri, "line": line_number, "reason": reason, "kind": kind}
            )
        for index, event_id, request_id, planted in batch.pii:
            line_number = index + 1 + int(np.searchsorted(slots, index, side="right"))
            for pii_type, value in planted:
                self.truth.add_pii(
                    {
                        "key": written.key,
                        "line": line_number,
                        "event_id": event_id,
                        "request_id": request_id,
                        "pii_type": pii_type,
                        "value": value,
                    }
                )
                self.summary.pii_planted += 1


def load_world(truth_dir: str | Path) -> World:
    """The world a simulation ran, rebuilt from its ``world.json`` (same seed, same users, items and truth)."""
    path = Path(truth_dir) / "world.json"
    try:
        document = orjson.loads(path.read_bytes())
        parameters = dict(document["world"]["parameters"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: expected a simulator truth file with world.parameters ({error})") from None
    parameters["start_date"] = date.fromisoformat(parameters["start_date"])
    return World.build(**parameters)


def default_truth_dir(parameters: dict[str, Any]) -> Path:
    """``<LOOPLINE_HOME>/truth/sim-<start>-<days>d-seed<seed>-<hash of all parameters>``: same run, same place."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = f"sim-{parameters['start_date']}-{parameters['days']}d-seed{parameters['seed']}-{digest}"
    return settings().home / "truth" / name


def simulate(
    out_uri: str,
    *,
    start_date: date,
    days: int,
    users: int,
    items: int,
    events_per_day: int,
    seed: int,
    drift_day: int | None = None,
    bot_rate: float = 0.0,
    pii_rate: float = 0.0,
    malformed_rate: float = 0.0,
    new_item_rate: float = 0.0,
    policy: Policy | str = "popularity",
    k: int = 10,
    truth_dir: Path | None = None,
    s3_endpoint_url: str | None = None,
    compress: bool = False,
    progress: bool = False,
    candidates: int = DEFAULT_CANDIDATES,
    run_days: int | None = None,
) -> SimulationSummary:
    """Simulate ``days`` days of traffic into the log at ``out_uri`` and the truth into ``truth_dir``.

    ``run_days``: simulate only the first ``run_days`` days of the ``days``-day world (the truth's
    world.json still describes all of it), e.g. when the later days are served by a model through
    ``loopline.simulate.service_traffic``.

    Deterministic for a seed (given a deterministic policy): the same arguments write byte-identical
    log objects. ``events_per_day`` is a target (about +-10 %); ``pii_rate`` is the share of search
    requests whose query carries personal data; ``malformed_rate`` is bad lines per valid line.
    """
    run_days = days if run_days is None else run_days
    if not 1 <= run_days <= days:
        raise ValueError(f"run_days must be in 1..days ({days}), got {run_days}")
    started = time.perf_counter()
    world = World.build(
        users,
        items,
        seed,
        start_date=start_date,
        days=days,
        drift_day=drift_day,
        bot_rate=bot_rate,
        new_item_rate=new_item_rate,
    )
    ranking_policy = make_policy(policy)
    simulation = {
        "out_uri": out_uri,
        "start_date": start_date.isoformat(),
        "days": days,
        "seed": seed,
        "events_per_day": events_per_day,
        "k": k,
        "candidates": candidates,
        "pii_rate": pii_rate,
        "malformed_rate": malformed_rate,
        "compress": compress,
        "policy": policy if isinstance(policy, str) else type(policy).__name__,
        "world": world.parameters(),
    }
    if run_days != days:
        simulation["run_days"] = run_days
    truth_dir = Path(truth_dir) if truth_dir is not None else default_truth_dir(simulation)
    if s3_endpoint_url is None and out_uri.startswith("s3://"):
        s3_endpoint_url = settings().s3_endpoint_url
    store = LogStore.from_uri(out_uri, s3_endpoint_url=s3_endpoint_url)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=run_days * 24, unit="hour", desc="simulate", dynamic_ncols=True)
    try:
        with TruthWriter(truth_dir, world, simulation) as truth:
            simulator = Simulator(
                world,
                ranking_policy,
                store,
                events_per_day=events_per_day,
                k=k,
                pii_rate=pii_rate,
                malformed_rate=malformed_rate,
                candidates=candidates,
                truth=truth,
                compress=compress,
                on_hour=(lambda day, hour: bar.update(1)) if bar is not None else None,
            )
            for day_index in range(run_days):
                simulator.run_day(day_index)
                if bar is not None:
                    bar.set_postfix(events=simulator.summary.events, ctr=simulator.summary.ctr)
            simulator.flush()
            summary = simulator.summary
            summary.seconds = round(time.perf_counter() - started, 3)
            truth.close(summary)
    finally:
        if bar is not None:
            bar.close()
        if isinstance(ranking_policy, HttpPolicy):
            ranking_policy.close()
    return summary


def simulate_with_random_day(
    directory: Path, world: World, policy: Policy | str, *, events_per_day: int
) -> tuple[str, Path]:
    """Every day of ``world`` but the last ranked by ``policy``, the last one ranked at random.

    The random day shows every item at every slot: what a model trained on the logged days would
    face when it ranks (a counterfactual test set). Logs go to ``directory/logs``, the truth to
    ``directory/truth``; returns both, for ``loopline.training.frame_from_simulation``.
    """
    directory = Path(directory)
    log_uri = (directory / "logs").as_uri()
    simulation = {
        "out_uri": log_uri,
        "start_date": world.start_date.isoformat(),
        "days": world.days,
        "seed": world.seed,
        "world": world.parameters(),
    }
    with TruthWriter(directory / "truth", world, simulation) as truth:
        simulator = Simulator(world, policy, LogStore.from_uri(log_uri), events_per_day=events_per_day, truth=truth)
        for day in range(world.days - 1):
            simulator.run_day(day)
        simulator.policy = RandomPolicy()
        simulator.run_day(world.days - 1)
        simulator.flush()
        truth.close(simulator.summary)
    return log_uri, directory / "truth"


def simulate_day(
    world: World,
    day_index: int,
    policy: Policy | str,
    store: LogStore,
    *,
    events_per_day: int,
    k: int = 10,
    pii_rate: float = 0.0,
    malformed_rate: float = 0.0,
    truth: TruthWriter | None = None,
    compress: bool = False,
    candidates: int = DEFAULT_CANDIDATES,
) -> tuple[DayTraffic, SimulationSummary]:
    """Simulate and write one day through ``policy`` (e.g. a served model behind ``HttpPolicy``).

    Writes the day's hour objects and, as its own object in the next day's hour 0, the late events
    past midnight. Pass the same policy object every day so a learning policy keeps its state.
    """
    simulator = Simulator(
        world,
        policy,
        store,
        events_per_day=events_per_day,
        k=k,
        pii_rate=pii_rate,
        malformed_rate=malformed_rate,
        candidates=candidates,
        truth=truth,
        compress=compress,
    )
    traffic = simulator.run_day(day_index)
    simulator.flush()
    return traffic, simulator.summary
