"""`make demo`: the closed loop on the embedded default profile, through the three DAGs themselves.

Day 0 is simulated with a baseline ranking (item popularity) straight into the log store. Then, for
each of ``days`` days d = 0, 1, ...:

1. ``loopline_etl`` for day d: ingest (validate, dedupe, redact PII, quarantine), dbt build, Feast
   materialize;
2. ``loopline_retrain``, its nightly run after day d: quality and drift gates, and if they (or the
   absence of a champion) ask for it: train, evaluate against the champion, compress, register,
   package and validate a Bento;
3. the simulator's users of day d + 1 talk to the ranking service (the BentoML service's ASGI app,
   in this process: champion and canary chosen by user-id hash). If step 2 produced a candidate,
   ``loopline_canary`` rolls it out meanwhile, judging each step from the service's own logs;
4. the service logs what it served into the log store, which step 1 ingests the next day.

Preference drift is injected on ``drift_day`` (the users' tastes rotate). The DAGs run through
``dag.test()`` against the Airflow metadata database of ``AIRFLOW_HOME``, so ``make airflow`` shows
the demo's runs afterwards. The run report (Markdown and PNG plots, ``loopline.report``) lands in
``<LOOPLINE_HOME>/reports/<run id>/``.

The simulated days end yesterday (UTC), so event times, feature snapshots and the wall clock agree
as they would in production (the canary's time limits count both event and wall time), and every
served hour is already past: the canary's analysis ignores events more than an hour ahead of the
wall clock, so a served day ending today stalled its rollouts at the current hour.

This module lives with the operators because it drives Airflow; everything it calls that is not a
DAG run is in the Airflow-free ``loopline`` package.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
LOG = logging.getLogger("loopline.demo")

# A demo day is short: the canary steps get a few simulated hours each and a 20 % non-inferiority
# margin (production: 6/12/24 hours and 5 %, loopline/policy/canary.yaml), so each rollout decides
# within one simulated day of a few thousand requests.
DEMO_CANARY_POLICY: dict[str, Any] = {
    "ctr.margin": 0.2,
    "steps": [
        {"weight": 0.05, "information_fraction": 0.1, "max_hours": 2},
        {"weight": 0.25, "information_fraction": 0.4, "max_hours": 4},
        {"weight": 0.5, "information_fraction": 1.0, "max_hours": 8},
        {"weight": 1.0, "information_fraction": None, "max_hours": None},
    ],
}
KEPT_IN_HOME = ("airflow", "reports")  # what a fresh demo keeps under LOOPLINE_HOME


@dataclass
class DemoOptions:
    """The demo's world and pace (``python -m loopline_airflow.demo --help`` lists them)."""

    days: int = 3
    users: int = 1_000
    items: int = 200
    baseline_days: int = 7  # simulated straight into the log with the popularity ranking
    baseline_events: int = 12_000  # per baseline day
    requests_per_hour: int = 60  # served days: simulated requests per hour through the service
    drift_day: int | None = 7  # day index (0 = first baseline day) from which tastes change (None: never)
    seed: int = 7
    epochs: int | None = None  # None: the model config's bound with early stopping
    window_days: int = 3  # each nightly run trains on (and gates) the last three days
    seconds_per_hour: float = 2.0  # while a canary runs: wall-clock seconds per simulated hour at least
    oracle_events: int = 20_000
    fresh: bool = True  # start from empty stores (local profile only)
    canary_policy: dict[str, Any] = field(default_factory=lambda: dict(DEMO_CANARY_POLICY))
    poke_seconds: float = 1.0  # between the canary sensors' looks (the DAG's default: 5 minutes)
    # Share of lists shown in a random order (exploration), by the baseline's popularity ranking and
    # by the service: the logs then tell an item's appeal from its slot's (docs/serving.md).
    explore_share: float = 0.1


# --------------------------------------------------------------------------------------------------
# Airflow: the DAGs through dag.test()
# --------------------------------------------------------------------------------------------------


def migrate_airflow_db() -> None:
    """``airflow db migrate`` on ``AIRFLOW_HOME`` (idempotent); DAG runs are recorded there."""
    airflow = Path(sys.executable).with_name("airflow")
    completed = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{completed.stderr[-3000:]}")


class Dags:
    """The project's DAGs, parsed once, run one at a time through ``dag.test()``."""

    def __init__(self, poke_seconds: float) -> None:
        from airflow.dag_processing.dagbag import DagBag

        from loopline_airflow.operators.rollout import RolloutStepSensor

        bag = DagBag(dag_folder=str(DAGS_FOLDER))
        if bag.import_errors:
            raise RuntimeError(f"DAG import errors: {bag.import_errors}")
        self.bag = bag
        for dag in bag.dags.values():
            for task in dag.tasks:
                task.retries = 0  # a failure shows at once instead of after the retry delay
        for task in bag.dags["loopline_canary"].tasks:
            if isinstance(task, RolloutStepSensor):
                task.poke_interval = poke_seconds

    def run(self, dag_id: str, logical_date: datetime, conf: dict[str, Any] | None = None) -> Any:
        import pendulum

        logical = pendulum.instance(logical_date)
        LOG.info("dag.test %s logical_date=%s conf=%s", dag_id, logical.isoformat(), conf)
        return self.bag.dags[dag_id].test(logical_date=logical, run_conf=conf or None)


def task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def xcom(run: Any, task_id: str) -> Any:
    ti = run.get_task_instance(task_id)
    if ti is None or str(ti.state) != "success":
        return None
    return ti.xcom_pull(task_ids=task_id)


# --------------------------------------------------------------------------------------------------
# The served days: the simulator's users talk to the in-process ranking service
# --------------------------------------------------------------------------------------------------


class Service:
    """The BentoML ranking service's ASGI app in this process; ``post`` is the traffic driver's client."""

    def __init__(self) -> None:
        from starlette.testclient import TestClient

        from loopline.simulate.service_traffic import AsgiRankingClient
        from models.service import asgi_app

        self._context = TestClient(asgi_app())
        client = self._context.__enter__()
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the ranking service did not become ready within 120 s")
            time.sleep(0.1)
        self.post = AsgiRankingClient(client).post

    def close(self) -> None:
        self._context.__exit__(None, None, None)  # flushes the event log


class ServedDay:
    """One simulated day served hour by hour (``part`` = hour), its event times inside that hour."""

    def __init__(self, world: Any, service: Service, day_index: int, requests_per_hour: int) -> None:
        from loopline.simulate.service_traffic import DriveSummary

        self.world, self.service, self.day_index = world, service, day_index
        self.requests_per_hour = requests_per_hour
        day = world.start_date + timedelta(days=day_index)
        self.midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        self.next_hour = 0
        self.summary = DriveSummary(day_index=day_index)

    @property
    def done(self) -> bool:
        return self.next_hour >= 24

    def hour(self) -> None:
        from loopline.simulate.service_traffic import drive_day

        start = self.midnight + timedelta(hours=self.next_hour)
        driven = drive_day(
            self.world,
            self.service,
            self.day_index,
            requests=self.requests_per_hour,
            part=self.next_hour,
            window=(start, start + timedelta(hours=1)),
        )
        self.summary.merge(driven)
        self.next_hour += 1

    def rest(self) -> None:
        while not self.done:
            self.hour()


def _canary_of(store: Any) -> str | None:
    state = store.read()
    return state.canary_version if state is not None else None


def _serving(canary_version: str | None) -> bool:
    """Whether the in-process service reports ``canary_version`` loaded as its canary (its own metrics)."""
    from prometheus_client import REGISTRY

    if canary_version is None:
        return True  # the rollout ended meanwhile: nothing to wait for
    value = REGISTRY.get_sample_value(
        "loopline_serving_model_loaded", {"variant": "canary", "version": str(canary_version)}
    )
    return value == 1


def drive_during_rollout(served: ServedDay, stop: threading.Event, pace: float, errors: list[BaseException]) -> None:
    """While a rollout runs, serve one simulated hour per ``pace`` wall seconds (so each step is looked at)."""
    from loopline.config import settings
    from loopline.rollout import RolloutController
    from loopline.serving.routing import state_store

    try:
        store = state_store(settings().rollout_state_uri)
        while not stop.is_set() and _canary_of(store) is None:
            time.sleep(0.1)
        # Serve nothing until the service has loaded the canary: its share of the first step's
        # users would otherwise see the champion, and the step would judge nothing.
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline and not _serving(_canary_of(store)):
            time.sleep(0.1)
        while not stop.is_set() and not served.done and _canary_of(store) is not None:
            began = time.monotonic()
            served.hour()
            time.sleep(max(0.0, pace - (time.monotonic() - began)))
        if served.done and not stop.is_set():
            # The day's traffic is over: give the last look a minute, then decide rather than wait forever.
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and _canary_of(store) is not None:
                time.sleep(0.5)
            controller = RolloutController()
            running = controller.active()
            if running is not None and not stop.is_set():
                controller.override(
                    running.rollout_id,
                    "rollback",
                    reason="demo: the simulated day's traffic ended before the rollout decided",
                    actor="loopline-demo",
                )
    except BaseException as error:  # reported by the main thread
        errors.append(error)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def reset_local_stores(home: Path) -> list[str]:
    """Remove what an earlier demo left under ``home`` (not the Airflow database, not the reports)."""
    removed = []
    if home.is_dir():
        for entry in sorted(home.iterdir()):
            if entry.name in KEPT_IN_HOME:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry.name)
    return removed


def serving_environment(explore_share: float = 0.0) -> Any:
    """Quick state polling and log flushing for the in-process service (a demo day lasts seconds),
    and its exploration share."""
    from loopline.config import environment

    wanted = {
        "LOOPLINE_SERVING_POLL_SECONDS": "0.2",
        "LOOPLINE_SERVING_FLUSH_SECONDS": "0.5",
        "LOOPLINE_SERVING_EXPLORE_SHARE": str(explore_share),
    }
    return environment({name: os.environ.get(name) or value for name, value in wanted.items()})


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _ingest_record(run: Any) -> dict[str, Any] | None:
    record = xcom(run, "ingest_logs")
    if not isinstance(record, dict):
        return None
    keys = ("lines_read", "loaded", "duplicates", "quarantined", "quarantined_by_reason", "redactions_by_type")
    return {key: record.get(key) for key in keys} | {"states": task_states(run)}


def _retrain_record(run: Any, run_date: date) -> dict[str, Any]:
    from loopline.registry import verdict_history
    from loopline.training.evaluation import GATE

    states = task_states(run)
    training = xcom(run, "train") or {}
    record: dict[str, Any] = {
        "run_date": run_date.isoformat(),
        "states": states,
        "quality": xcom(run, "quality_gate"),
        "drift": xcom(run, "drift_gate"),
        "decision": "train" if states.get("train") == "success" else "no",
        "training": {"run_id": training.get("run_id"), "metrics": training.get("metrics")} if training else None,
        "evaluation": xcom(run, "evaluate"),
        "compression": xcom(run, "compress"),
        "version": (xcom(run, "register") or {}).get("version"),
        "bento": xcom(run, "package"),
        "validation": xcom(run, "validate"),
    }
    if training and record["evaluation"] is None:  # NOT_BLESSED skips the task; the verdict is in the audit table
        verdicts = [v for v in verdict_history(GATE) if v.get("candidate_run_id") == training.get("run_id")]
        record["evaluation"] = verdicts[-1]["details"] if verdicts else None
    return record


def _canary_record(run: Any) -> dict[str, Any] | None:
    from loopline.report import canary_steps
    from loopline.rollout import RolloutController

    report = xcom(run, "report")
    if not report:
        return None
    controller = RolloutController()
    rollout = controller.get(report["rollout_id"])
    return {
        "rollout_id": rollout.rollout_id,
        "candidate_version": rollout.candidate_version,
        "champion_version": rollout.champion_version,
        "status": rollout.status,
        "states": task_states(run),
        "steps": canary_steps(controller.history(rollout.rollout_id)),
    }


def _served_record(served: ServedDay) -> dict[str, Any]:
    data = served.summary.to_dict()
    champion = served.summary.arms.get("champion")
    data["oracle_ctr_of_champion"] = champion.oracle_ctr if champion else None
    return data


def run_demo(options: DemoOptions, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the closed loop and write its report; returns the report's data (also in report.json)."""
    from loopline import registry
    from loopline.config import settings
    from loopline.report import model_quality, oracle_sample, write_report
    from loopline.serving.packaging import ensure_bentoml_home
    from loopline.simulate import load_world, simulate
    from loopline.simulate.policies import PopularityPolicy

    started = time.perf_counter()
    config = settings()
    run_id = datetime.now(UTC).strftime("demo-%Y%m%dT%H%M%SZ")
    if options.fresh:
        if config.profile != "local":
            raise RuntimeError("--fresh empties the stores: only for the local profile (use --no-fresh)")
        removed = reset_local_stores(config.home)
        settings.cache_clear()
        config = settings()
        if removed:
            say(f"fresh start: removed {', '.join(removed)} from {config.home}")
    config.home.mkdir(parents=True, exist_ok=True)
    ensure_bentoml_home()
    baseline = options.baseline_days
    total_days = baseline + options.days  # the last one is yesterday
    first_day = datetime.now(UTC).date() - timedelta(days=total_days)
    say(
        f"Loopline demo {run_id}: {baseline} baseline days from {first_day}, then {options.days} served days; "
        f"home {config.home}"
    )

    say("airflow db migrate ...")
    migrate_airflow_db()
    dags = Dags(options.poke_seconds)

    truth_dir = config.home / "truth"
    simulated = simulate(
        config.log_store_uri,
        start_date=first_day,
        days=total_days,
        run_days=baseline,
        users=options.users,
        items=options.items,
        events_per_day=options.baseline_events,
        seed=options.seed,
        drift_day=options.drift_day,
        pii_rate=0.02,
        malformed_rate=0.001,
        policy=PopularityPolicy(exploration_share=options.explore_share),
        truth_dir=truth_dir,
    )
    world = load_world(truth_dir)
    say(f"days 0-{baseline - 1}: {simulated.events:,} events simulated with the popularity ranking")

    days: list[dict[str, Any]] = [
        {
            "date": (first_day + timedelta(days=index)).isoformat(),
            "day_index": index,
            "served": None,
            "served_versions": ["popularity baseline"],
            "drift_starts": options.drift_day == index,
        }
        for index in range(baseline)
    ]
    service: Service | None = None
    with serving_environment(options.explore_share):
        try:
            for index in range(total_days - 1):
                day = first_day + timedelta(days=index)
                record = days[index]
                clock = time.perf_counter()
                etl = dags.run("loopline_etl", _midnight(day) + timedelta(days=1))
                record["ingest"] = _ingest_record(etl)
                say(f"{day} loopline_etl: {etl.state}  {_short(record['ingest'])}")
                if index + 1 < baseline:
                    continue  # the next day is a baseline day too: nothing to train or serve yet

                run_date = day + timedelta(days=1)
                retrain = dags.run(
                    "loopline_retrain",
                    _midnight(run_date) + timedelta(hours=2),
                    {"window_days": options.window_days, "epochs": options.epochs},
                )
                record["retrain"] = _retrain_record(retrain, run_date)
                candidate = record["retrain"]["version"] if record["retrain"]["validation"] else None
                say(
                    f"{run_date} loopline_retrain: {retrain.state}; gates "
                    f"{_outcome(record['retrain']['quality'])}/{_outcome(record['retrain']['drift'])}, "
                    f"train: {record['retrain']['decision']}, candidate: {candidate or '-'}"
                )

                next_record: dict[str, Any] = {
                    "date": run_date.isoformat(),
                    "day_index": index + 1,
                    "drift_starts": options.drift_day == index + 1,
                }
                days.append(next_record)
                served = None
                if candidate is not None:
                    has_champion = registry.alias_version(registry.CHAMPION) is not None
                    canary_conf = {
                        "candidate_version": candidate,
                        "metrics_url": None,
                        "canary_policy": options.canary_policy,
                        "attribution_minutes": 30,
                        "event_start": _midnight(run_date).isoformat(),
                        "reason": f"demo: candidate of the {run_date} nightly run",
                    }
                    if has_champion and service is not None:
                        served = ServedDay(world, service, index + 1, options.requests_per_hour)
                        canary = _run_canary_with_traffic(dags, served, canary_conf, options.seconds_per_hour)
                    else:  # the first model: promoted at once, no traffic needed to decide
                        canary = dags.run("loopline_canary", datetime.now(UTC), canary_conf)
                    next_record["canary"] = _canary_record(canary)
                    say(f"{run_date} loopline_canary: {canary.state}; rollout {_short(next_record['canary'])}")
                if service is None:
                    if registry.alias_version(registry.CHAMPION) is None:
                        raise RuntimeError("no model was promoted on the first day: see the task logs above")
                    service = Service()
                if served is None:
                    served = ServedDay(world, service, index + 1, options.requests_per_hour)
                served.rest()
                next_record["served"] = _served_record(served)
                next_record["served_versions"] = sorted(
                    {version for tally in served.summary.arms.values() for version in tally.model_versions}
                )
                say(
                    f"{run_date} served {served.summary.requests:,} requests: "
                    + ", ".join(f"{arm} CTR {tally.ctr:.4f}" for arm, tally in sorted(served.summary.arms.items()))
                    + f" ({time.perf_counter() - clock:.0f} s for the day)"
                )
        finally:
            if service is not None:
                service.close()

    # The loop closes: the last served day is ingested like any other.
    last_day = first_day + timedelta(days=total_days - 1)
    etl = dags.run("loopline_etl", _midnight(last_day) + timedelta(days=1))
    days[-1]["ingest"] = _ingest_record(etl)
    say(f"{last_day} loopline_etl: {etl.state}  {_short(days[-1]['ingest'])}")

    for record, (ctr, impressions) in zip(days, _logged_ctr(first_day, total_days), strict=True):
        record["logged_ctr"], record["impressions"] = ctr, impressions
    report_dir = config.home / "reports" / run_id
    versions = _registered_versions()
    say(f"measuring versions {', '.join(versions)} against the oracle ...")
    models = model_quality(
        versions, oracle_sample(world, total_days - 1, events=options.oracle_events), report_dir / "oracle"
    )
    summary = {
        "run_id": run_id,
        "options": asdict(options),
        "first_day": first_day.isoformat(),
        "days": days,
        "models": models,
        "final_champion": registry.alias_version(registry.CHAMPION),
        "seconds": round(time.perf_counter() - started, 1),
        "links": _links(config, report_dir),
    }
    path = write_report(summary, report_dir)
    say(f"report: {path}  ({summary['seconds']} s in all)")
    return summary


def _run_canary_with_traffic(dags: Dags, served: ServedDay, conf: dict[str, Any], pace: float) -> Any:
    stop, errors = threading.Event(), []
    driver = threading.Thread(
        target=drive_during_rollout, args=(served, stop, pace, errors), name="loopline-demo-traffic", daemon=True
    )
    driver.start()
    try:
        return dags.run("loopline_canary", datetime.now(UTC), conf)
    finally:
        stop.set()
        driver.join(timeout=120)
        if errors:
            raise RuntimeError(f"traffic during the rollout failed: {errors[0]!r}") from errors[0]


def _logged_ctr(first_day: date, days: int) -> list[tuple[float | None, int]]:
    """(CTR, impressions) per day from the dbt mart ``training_examples``: what the ETL labelled."""
    from loopline.config import settings
    from loopline.warehouse import Warehouse

    with Warehouse.from_uri(settings().warehouse_uri) as warehouse:
        rows = warehouse.query(
            "select event_date, avg(case when is_clicked then 1.0 else 0.0 end), count(*) "
            "from training_examples group by event_date"
        )
    by_day = {str(day)[:10]: (float(ctr), int(count)) for day, ctr, count in rows}
    return [by_day.get((first_day + timedelta(days=offset)).isoformat(), (None, 0)) for offset in range(days)]


def _registered_versions() -> list[str]:
    from loopline import registry

    versions = registry.client().search_model_versions(f"name = '{registry.MODEL_NAME}'")
    return sorted((str(version.version) for version in versions), key=int)


def _links(config: Any, report_dir: Path) -> dict[str, str]:
    home = config.home
    return {
        "Airflow UI (the demo's DAG runs)": "`make airflow`, then http://127.0.0.1:8080",
        "MLflow UI": f"`.venv/bin/mlflow ui --backend-store-uri {config.mlflow_tracking_uri}`, then http://127.0.0.1:5000",
        "Evidently drift reports": f"{home / 'artifacts' / 'reports' / 'drift'} (and attached to each MLflow run)",
        "Bentos": f"{home / 'bentoml' / 'bentos'} (exported copies under {config.artifact_uri}/bentos/)",
        "event logs and quarantine": f"{config.log_store_uri} and the warehouse tables quarantine_events, ingest_runs",
        "warehouse": config.warehouse_uri,
        "this report": str(report_dir / "report.md"),
    }


def _outcome(decision: dict[str, Any] | None) -> str:
    return str((decision or {}).get("outcome", "-"))


def _short(record: dict[str, Any] | None) -> str:
    if not record:
        return ""
    if "lines_read" in record:
        return (
            f"read {record['lines_read']:,}, loaded {record['loaded']:,}, "
            f"quarantined {record['quarantined']:,}, duplicates {record['duplicates']:,}"
        )
    return f"{record.get('rollout_id')}: v{record.get('candidate_version')} {record.get('status')}"


def main(argv: list[str] | None = None) -> int:
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(prog="python -m loopline_airflow.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--days",
        type=int,
        default=defaults.days,
        help="days served through the ranking service (after the baseline days)",
    )
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--baseline-events", type=int, default=defaults.baseline_events)
    parser.add_argument("--requests-per-hour", type=int, default=defaults.requests_per_hour)
    parser.add_argument("--drift-day", type=int, default=defaults.drift_day, help="-1: no drift")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seconds-per-hour", type=float, default=defaults.seconds_per_hour)
    parser.add_argument(
        "--explore-share", type=float, default=defaults.explore_share, help="share of lists shown in random order"
    )
    parser.add_argument("--no-fresh", dest="fresh", action="store_false", help="keep the stores of an earlier run")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    options = DemoOptions(
        days=args.days,
        users=args.users,
        items=args.items,
        baseline_events=args.baseline_events,
        requests_per_hour=args.requests_per_hour,
        drift_day=None if args.drift_day < 0 else args.drift_day,
        seed=args.seed,
        epochs=args.epochs,
        seconds_per_hour=args.seconds_per_hour,
        explore_share=args.explore_share,
        fresh=args.fresh,
    )
    # Third-party libraries warn loudly about their own deprecations; the demo shows Loopline's output.
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("DBT_QUIET", "true")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from loopline.config import settings

    with output_to_log(settings().home / "reports" / "demo-airflow.log") as say:
        run_demo(options, say=say)
    return 0


@contextmanager
def output_to_log(path: Path) -> Iterator[Callable[[str], None]]:
    """Send this process's stdout/stderr (Airflow's task logs, dbt, Feast) to ``path``; yield a ``say``
    that still prints to the terminal. On an error the log's tail is printed too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    saved_err = os.dup(2)
    with path.open("w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

        def say(line: str) -> None:
            print(line, file=terminal, flush=True)

        say(f"(Airflow task logs and library output go to {path})")
        try:
            yield say
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            tail = path.read_text(errors="replace").splitlines()[-40:]
            say("\n".join(["--- the last lines of " + str(path) + " ---", *tail]))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(terminal.fileno(), 1)
            os.dup2(saved_err, 2)
            os.close(saved_err)
            terminal.close()


if __name__ == "__main__":
    sys.exit(main())
