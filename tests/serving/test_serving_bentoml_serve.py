"""Integration: ``bentoml serve models.service:RankingService`` in a subprocess, a real HTTP client.

The packaged model (``LOOPLINE_SERVING_MODEL``) serves while no rollout state exists; writing a
state swaps the champion in the running server; ``/metrics`` shows the service's metrics; a SIGTERM
stops it gracefully, and every served event is then in the log store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from loopline.events import Event, parse_line
from loopline.logstore import LogStore
from loopline.serving.model_store import bento_tag, import_version
from loopline.serving.routing import FileStateStore, TrafficState

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"bentoml serve exited with {process.returncode} while waiting for {what}:\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if condition():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _access_lines(log: Path) -> list[str]:
    """BentoML's access log lines in the server's output."""
    return [line for line in log.read_text(errors="replace").splitlines() if "(scheme=http,method=" in line]


@contextlib.contextmanager
def serving(served, tmp_path: Path, **extra_env: str):
    """``bentoml serve`` of the service with the packaged model = the world's challenger, ready."""
    world = served.world
    import_version(world.challenger)  # into the world's BentoML model store, as packaging does
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOPLINE_")}
    env |= served.env | TELEMETRY_OFF | extra_env
    env["LOOPLINE_SERVING_MODEL"] = bento_tag(world.challenger)
    log = tmp_path / "bentoml-serve.log"
    command = [sys.executable, "-m", "bentoml", "serve", "models.service:RankingService"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=CHECKOUT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            _wait_for(lambda: client.get("/readyz").status_code == 200, 180, "/readyz 200", process, log)
            yield client, process, log
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the arbiter (it stops its workers), then SIGKILL whatever is left of it and its workers.

    BentoML's workers run in sessions of their own, so they are found as the arbiter's children.
    """
    import psutil

    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    for worker in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()


@pytest.fixture
def server(served, tmp_path):
    """The service under ``bentoml serve`` (one worker), no rollout state yet."""
    with serving(served, tmp_path) as running:
        yield running


def test_bentoml_serve_ranks_swaps_reports_metrics_and_flushes_on_stop(server, served):
    client, process, log = server
    world = served.world
    served_impressions = served_feedback = 0

    def rank(user: str, **extra) -> dict:
        nonlocal served_impressions
        response = client.post("/rank", json={"user_id": user, "item_ids": world.item_ids[:100], "k": 10, **extra})
        assert response.status_code == 200, response.text
        body = response.json()
        served_impressions += len(body["items"])
        return body

    first = rank(world.user_ids[0])
    assert first["model_version"] == f"loopline-ctr/{world.challenger}"  # the packaged model, no state yet
    assert first["variant"] == "champion" and len(first["items"]) == 10
    click = {"request_id": first["request_id"], "item_id": first["items"][0]["item_id"], "event_type": "click"}
    assert client.post("/feedback", json=click).status_code == 200
    served_feedback += 1
    bad = client.post("/rank", json={"user_id": world.user_ids[0], "item_ids": [], "k": 3})
    assert bad.status_code == 400 and "item_ids" in bad.text
    assert client.post("/feedback", json={**click, "request_id": "unknown"}).status_code == 404

    # Hot swap in the running server: a state naming the other version.
    FileStateStore(served.state_path).write(TrafficState(champion_version=world.champion, rollout_id="serve-test"))
    _wait_for(
        lambda: rank(world.user_ids[1])["model_version"] == f"loopline-ctr/{world.champion}",
        60,
        "the swap to the new champion",
        process,
        log,
    )

    # The simulator's HTTP policy over a real connection.
    from loopline.simulate.policies import HttpPolicy

    policy = HttpPolicy(str(client.base_url))
    ranked = policy.rank(world.user_ids[2], world.item_ids[:20], 5, request_context=None)
    policy.close()
    served_impressions += len(ranked.item_ids)
    assert ranked.model_version == f"loopline-ctr/{world.champion}" and len(ranked.item_ids) == 5

    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    for name in (
        'loopline_serving_request_seconds_bucket{endpoint="rank"',
        'loopline_serving_requests_total{endpoint="rank",status="ok",variant="champion"}',
        'loopline_serving_errors_total{endpoint="rank",kind="bad_request"}',
        'loopline_serving_errors_total{endpoint="feedback",kind="unknown_request"}',
        "loopline_serving_in_flight_requests",
        f'loopline_serving_model_loaded{{variant="champion",version="{world.champion}"}} 1.0',
        f'loopline_serving_model_loaded{{variant="champion",version="{world.challenger}"}} 0.0',
        "loopline_serving_model_swaps_total",
        "bentoml_service_request_duration_seconds",
    ):
        assert name in text, name

    # A graceful stop (SIGTERM, as an orchestrator sends) flushes every buffered event.
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    # BentoML's access log skips the hot paths by default (LOOPLINE_SERVING_ACCESS_LOG), not the others.
    access = _access_lines(log)
    assert any("path=/metrics" in line for line in access), _tail(log)
    assert not any("path=/rank" in line or "path=/feedback" in line for line in access), access[:5]
    store = LogStore.from_uri(served.log_uri)
    events = []
    for day_dir in sorted(served.log_dir.glob("dt=*")):
        for obj in store.list(datetime.strptime(day_dir.name[3:], "%Y-%m-%d").date()):
            events.extend(parse_line(line) for line in store.iter_lines(obj))
    assert all(isinstance(event, Event) for event in events)
    kinds = Counter(event.event_type for event in events)
    assert kinds == {"impression": served_impressions, "click": served_feedback}, (kinds, _tail(log))


def test_two_workers_share_the_feedback_index(served, tmp_path):
    """With two worker processes, feedback may reach the other worker: it still finds the request."""
    FileStateStore(served.state_path).write(TrafficState(champion_version=served.world.champion))
    world = served.world
    with serving(served, tmp_path, LOOPLINE_SERVING_WORKERS="2", LOOPLINE_SERVING_ACCESS_LOG="true") as (
        client,
        process,
        log,
    ):
        statuses = Counter()
        for index in range(24):
            # A new connection per request, so the kernel spreads them over both workers' accept queue.
            with httpx.Client(base_url=client.base_url, timeout=10.0) as fresh:
                ranked = fresh.post("/rank", json={"user_id": world.user_ids[index], "k": 2}).json()
            with httpx.Client(base_url=client.base_url, timeout=10.0) as fresh:
                click = {"request_id": ranked["request_id"], "item_id": ranked["items"][0]["item_id"]}
                statuses[fresh.post("/feedback", json={**click, "event_type": "click"}).status_code] += 1
        assert statuses == {200: 24}, (statuses, _tail(log))
        metrics = client.get("/metrics").text
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    workers_seen = {line.split("pid=")[1][:8] for line in metrics.splitlines() if "pid=" in line}
    store = LogStore.from_uri(served.log_uri)
    producers = {obj.producer for day in served.log_dir.glob("dt=*")
                 for obj in store.list(datetime.strptime(day.name[3:], "%Y-%m-%d").date())}  # fmt: skip
    assert len(producers) == 2, (producers, workers_seen)  # both workers served and logged
    access = _access_lines(log)
    assert sum("path=/rank" in line for line in access) == 24, _tail(log)  # asked for: hot paths logged too
    assert sum("path=/feedback" in line for line in access) == 24
