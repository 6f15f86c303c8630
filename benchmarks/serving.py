"""Benchmark: ``POST /rank`` with 100 candidates (Feast lookup included) under ``bentoml serve`` and a plain app.

In the same run, on the same world and the same request stream:

- ``bentoml serve models.service:RankingService`` (the service as shipped: one worker process,
  BentoML's middlewares, the service's metrics, events logged);
- the same ranker core (``loopline.serving.runtime.RankingRuntime``: model cache, one
  ``features.online`` call, one model call, events logged, the same request metrics middleware)
  behind a plain FastAPI app on uvicorn (one worker process);
- the core called in-process with no HTTP at all (concurrency 1 only: the floor).

For each concurrency (default 1, 8, 32) a closed loop of clients (one keep-alive connection each,
all on one uvloop event loop) sends ``--requests`` requests after ``--warmup`` ones: known users,
100 candidates each (a random sample of the catalog), ``k`` = 10. Printed: p50 / p90 / p99 latency,
requests/s, and BentoML's throughput as a share of the plain app's.
Targets (issue #8, this 2-core machine): p99 <= 20 ms at concurrency 8; BentoML >= 0.7x the plain app.

The client shares the machine with the server, as a load balancer would not: on 2 cores the
figures are a lower bound for both apps alike.

    .venv/bin/python benchmarks/serving.py                    # builds a small world in a temp dir (~1 min)
    .venv/bin/python benchmarks/serving.py --home /tmp/world   # reuse (or build once into) a directory
"""

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
WORLD = {"users": 400, "items": 160, "days": 2, "events_per_day": 8_000, "versions": 1, "epochs": 2, "seed": 3}
CHAMPION_ENV = "LOOPLINE_BENCH_CHAMPION"


# --- the plain app (uvicorn imports this module as ``serving`` with --app-dir benchmarks) ------------


def create_app():  # noqa: ANN201 - FastAPI is imported lazily
    """The plain FastAPI app over the same ``RankingRuntime`` and metrics middleware as the service."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Response
    from fastapi.responses import JSONResponse, PlainTextResponse

    from loopline.serving.http import VARIANT_HEADER, RequestMetricsMiddleware, error_body
    from loopline.serving.ranker import FeedbackRequest, RankingError, RankRequest
    from loopline.serving.runtime import RankingRuntime

    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        runtime = RankingRuntime(default_champion=lambda: os.environ[CHAMPION_ENV])
        runtime.start(wait=True)  # freezes the long-lived objects, as in the BentoML service
        state["runtime"] = runtime
        yield
        runtime.close()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(RequestMetricsMiddleware)

    @app.post("/rank", response_model=None)
    async def rank(request: RankRequest, response: Response):  # noqa: ANN202
        try:
            answer = state["runtime"].rank(request)
        except RankingError as error:
            return JSONResponse(error_body(str(error), error.status), status_code=error.status)
        response.headers[VARIANT_HEADER] = answer.variant
        return answer

    @app.post("/feedback", response_model=None)
    async def feedback(request: FeedbackRequest):  # noqa: ANN202
        try:
            return state["runtime"].feedback(request)
        except RankingError as error:
            return JSONResponse(error_body(str(error), error.status), status_code=error.status)

    @app.get("/readyz")
    def readyz():  # noqa: ANN202
        ready = "runtime" in state and state["runtime"].ready
        return PlainTextResponse("\n", status_code=200 if ready else 503)

    return app


# --- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: Path

    def stop(self) -> None:
        """SIGTERM (graceful: events flushed), then SIGKILL what is left, workers included.

        BentoML's workers run in sessions of their own, so they are found as the server's children.
        """
        import psutil

        try:
            workers = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        for worker in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(name: str, command: list[str], env: dict[str, str], scratch: Path, port: int) -> Server:
    log = scratch / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=CHECKOUT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, process, port, log)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                connection.close()
                return server
            connection.close()
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{name} not ready within 240 s:\n{log.read_text()[-3000:]}")


# --- load -----------------------------------------------------------------------------------------


@dataclass
class Result:
    app: str
    concurrency: int
    latencies_ms: list[float]
    seconds: float
    errors: int

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def request_bodies(users: list[str], items: list[str], count: int, candidates: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        json.dumps({"user_id": rng.choice(users), "item_ids": rng.sample(items, candidates), "k": 10}).encode()
        for _ in range(count)
    ]


def run_load(
    port: int, bodies: list[bytes], concurrency: int, *, keep_alive: bool = True
) -> tuple[list[float], float, int]:
    """Send ``bodies`` over ``concurrency`` keep-alive connections; (latencies ms, wall seconds, errors).

    One event loop (uvloop, as the servers use: with asyncio's own loop the client's share of each
    measured latency was larger) drives every connection with a minimal HTTP/1.1 client (a request,
    then the response's headers and ``Content-Length`` bytes). Client threads would wait for each other's
    turn at the GIL (up to 5 ms, ``sys.getswitchinterval``) before reading a response that has
    arrived, and that wait would be counted as the server's latency.

    ``keep_alive=False``: a new connection per request (``Connection: close``), so each request goes
    to whichever worker process accepts it first, i.e. one that is not busy. With keep-alive, each
    connection stays with the worker that accepted it, and a few connections opened at once are
    often accepted by one worker (asyncio accepts a burst in one go): the other core then idles,
    which a load balancer spreading requests over the workers would not let happen.
    """
    import uvloop  # the servers' loop too; the client's own work per request is part of each latency

    return uvloop.run(_run_load(port, bodies, concurrency, keep_alive))


async def _run_load(
    port: int, bodies: list[bytes], concurrency: int, keep_alive: bool
) -> tuple[list[float], float, int]:
    cursor = iter(range(len(bodies)))
    latencies: list[float] = []
    errors = [0]
    head = f"POST /rank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    if not keep_alive:
        head += "Connection: close\r\n"

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> int:
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), None
        )
        if length is None:
            raise ConnectionError("response without Content-Length")
        await reader.readexactly(length)
        return status

    async def client() -> None:
        reader, writer = await connect() if keep_alive else (None, None)
        for index in cursor:
            started = time.perf_counter()
            try:
                if not keep_alive:  # the connection's set-up counts in the request's latency
                    reader, writer = await connect()
                ok = await asyncio.wait_for(exchange(reader, writer, bodies[index]), 30) == 200
                if not keep_alive:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                if writer is not None:
                    writer.close()
                reader, writer = await connect() if keep_alive else (None, None)
                ok = False
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[0] += 1
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors[0]


def measure_in_process(rank: Callable[[bytes], object], bodies: list[bytes]) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for body in bodies:
        clock = time.perf_counter()
        rank(body)
        latencies.append((time.perf_counter() - clock) * 1000)
    return latencies, time.perf_counter() - started


# --- the run --------------------------------------------------------------------------------------


@contextlib.contextmanager
def world_home(home: Path | None) -> Iterator[Path]:
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        yield home
        return
    with tempfile.TemporaryDirectory(prefix="loopline-bench-serving-") as scratch:
        yield Path(scratch)


def prepare_world(root: Path) -> dict:
    """Build the world under ``root`` once (kept in ``root/world.json``); import its champion into BentoML."""
    os.environ["LOOPLINE_HOME"] = str(root / "var")
    os.environ["BENTOML_HOME"] = str(root / "bentoml")
    marker = root / "world.json"
    from loopline.config import settings

    settings.cache_clear()
    if marker.exists():
        world = json.loads(marker.read_text())
    else:
        from loopline.serving.sandbox import build_world

        print(f"building a world under {root} ...", flush=True)
        world = build_world(**WORLD).to_dict()
        marker.write_text(json.dumps(world))
    from loopline.serving.model_store import import_version

    import_version(world["versions"][0])
    return world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="world directory (reused if it holds one)")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=800, help="timed requests per app and level")
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="worker processes of each app (default 1)")
    parser.add_argument(
        "--connection-per-request",
        action="store_true",
        help="a new connection per request (spreads requests over the workers), not one keep-alive connection each",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.update(TELEMETRY_OFF)
    os.environ.setdefault("DBT_QUIET", "true")
    levels = [int(level) for level in args.levels.split(",")]

    with world_home(args.home) as root:
        world = prepare_world(root)
        champion = world["versions"][0]
        users, items = world["user_ids"], world["item_ids"]
        if len(items) < args.candidates:
            raise SystemExit(f"the world has {len(items)} items with features, fewer than --candidates")
        scratch = Path(tempfile.mkdtemp(prefix="loopline-bench-serving-run-"))
        base_env = {name: value for name, value in os.environ.items() if not name.startswith("LOOPLINE_")}
        base_env |= TELEMETRY_OFF | {
            "LOOPLINE_HOME": str(root / "var"),
            "BENTOML_HOME": str(root / "bentoml"),
            "LOOPLINE_ROLLOUT_STATE_URI": (scratch / "rollout.json").as_uri(),  # none: the default champion
            "LOOPLINE_SERVING_MODEL": f"loopline-ctr:v{champion}",
            CHAMPION_ENV: champion,
        }
        base_env["LOOPLINE_SERVING_WORKERS"] = str(args.workers)
        if args.workers > 1:  # /feedback must find requests any worker served (the service does this itself)
            base_env["LOOPLINE_SERVING_INDEX_URI"] = (scratch / "served-requests.db").as_uri()
        bento_port, plain_port = _free_port(), _free_port()
        servers = []
        try:
            servers.append(
                start_server(
                    "bentoml",
                    [sys.executable, "-m", "bentoml", "serve", "models.service:RankingService"]
                    + ["--host", "127.0.0.1", "--port", str(bento_port)],
                    base_env | {"LOOPLINE_LOG_STORE_URI": (scratch / "logs-bentoml").as_uri()},
                    scratch,
                    bento_port,
                )
            )
            servers.append(
                start_server(
                    "plain",
                    [sys.executable, "-m", "uvicorn", "serving:create_app", "--factory", "--app-dir", "benchmarks"]
                    + ["--host", "127.0.0.1", "--port", str(plain_port), "--log-level", "warning", "--no-access-log"]
                    + ["--workers", str(args.workers)],
                    base_env | {"LOOPLINE_LOG_STORE_URI": (scratch / "logs-plain").as_uri()},
                    scratch,
                    plain_port,
                )
            )
            results: list[Result] = []
            for level in levels:
                for server in servers:  # the same request stream for both apps
                    warm = request_bodies(users, items, args.warmup, args.candidates, seed=level)
                    bodies = request_bodies(users, items, args.requests, args.candidates, seed=1000 + level)
                    keep_alive = not args.connection_per_request
                    run_load(server.port, warm, level, keep_alive=keep_alive)
                    latencies, seconds, errors = run_load(server.port, bodies, level, keep_alive=keep_alive)
                    results.append(Result(server.name, level, latencies, seconds, errors))
                    print(
                        f"  {server.name:8s} concurrency {level:3d}: {len(latencies) / seconds:7.1f} req/s", flush=True
                    )
            in_process = measure_core_in_process(root, scratch, champion, users, items, args)
        finally:
            for server in servers:
                server.stop()
            shutil.rmtree(scratch, ignore_errors=True)  # served logs, server logs, the rollout file
        connections = "a new connection per request" if args.connection_per_request else "keep-alive connections"
        print_table(results, in_process, levels, args.workers, connections)
    return 0


def measure_core_in_process(root: Path, scratch: Path, champion: str, users, items, args) -> Result:
    """The same core with no HTTP, sequentially (the floor of /rank's latency)."""
    os.environ["LOOPLINE_LOG_STORE_URI"] = (scratch / "logs-in-process").as_uri()
    os.environ["LOOPLINE_ROLLOUT_STATE_URI"] = (scratch / "rollout.json").as_uri()
    from loopline.config import settings

    settings.cache_clear()
    from loopline.serving.ranker import RankRequest
    from loopline.serving.runtime import RankingRuntime

    runtime = RankingRuntime(default_champion=lambda: champion)
    runtime.start(wait=True)
    try:
        warm = request_bodies(users, items, args.warmup, args.candidates, seed=7)
        measure_in_process(lambda body: runtime.rank(RankRequest.model_validate_json(body)), warm)
        bodies = request_bodies(users, items, args.requests, args.candidates, seed=1001)
        latencies, seconds = measure_in_process(
            lambda body: runtime.rank(RankRequest.model_validate_json(body)), bodies
        )
    finally:
        runtime.close()
    return Result("core in-process", 1, latencies, seconds, 0)


def print_table(results: list[Result], in_process: Result, levels: list[int], workers: int, connections: str) -> None:
    load = os.getloadavg()[0]
    print(f"\n/rank, {len(results[0].latencies_ms)} timed requests per row, 100 candidates, k=10, "
          f"{workers} worker process(es) per app, {connections} "
          f"(load average {load:.1f} at the end)")  # fmt: skip
    header = f"{'app':16s} {'conc':>4s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'errors':>6s}"
    print(header)
    print("-" * len(header))
    for result in [in_process, *results]:
        print(
            f"{result.app:16s} {result.concurrency:4d} {result.percentile(0.5):8.2f} {result.percentile(0.9):8.2f} "
            f"{result.percentile(0.99):8.2f} {result.requests_per_second:8.1f} {result.errors:6d}"
        )
    print()
    for level in levels:
        bento = next(r for r in results if r.app == "bentoml" and r.concurrency == level)
        plain = next(r for r in results if r.app == "plain" and r.concurrency == level)
        ratio = bento.requests_per_second / plain.requests_per_second
        print(f"concurrency {level:3d}: BentoML / plain throughput = {ratio:.2f}x (target >= 0.7x)")
    if 8 in levels:
        bento8 = next(r for r in results if r.app == "bentoml" and r.concurrency == 8)
        verdict = "met" if bento8.percentile(0.99) <= 20.0 else "NOT met"
        print(f"BentoML p99 at concurrency 8: {bento8.percentile(0.99):.1f} ms (target <= 20 ms: {verdict})")
    print(f"core in-process median {statistics.median(in_process.latencies_ms):.2f} ms per request")


if __name__ == "__main__":
    sys.exit(main())
