"""Packaging and validation of the ranking service as a Bento (issue #8, item 6).

``package(version)`` turns registered MLflow version N of ``loopline-ctr`` into something a server
runs: it imports the version into the BentoML model store as ``loopline-ctr:vN``
(``loopline.serving.model_store``), builds a Bento of ``models/service.py`` from the checkout
(``models/bentofile.yaml``: the ``loopline`` package, ``models/``, ``feature_repo/``; Python
packages pinned to requirements.txt, no locking), labels it with the MLflow version, run and lineage,
and exports it to ``<artifact_uri>/bentos/<name>/<version>.bento`` (a directory or S3).

``validate(bento_tag)`` starts the built Bento with ``bentoml serve`` on a free local port, in a
process group of its own, with the process's ``LOOPLINE_*`` settings (except a scratch log store and
rollout state: validation traffic must never become training data or move a rollout), and checks:

1. every canned request (known and unknown users, explicit candidates and the catalog, feedback,
   probes) gets a response of the documented schema, and bad input a 4xx;
2. on real requests (logged requests from ``training_examples``), the served scores equal offline
   scoring, ``load_version(N).predict`` on the rows ``loopline.features.online`` returns, within a tolerance;
3. p99 latency of sequential ``/rank`` calls is under a threshold.

It then stops the server (SIGTERM, then SIGKILL of the group after a deadline), stores the verdict in
``gate_verdicts`` (gate ``bento_validation``) and raises ``BentoValidationError`` naming every failed
check. The BentoML stores live under ``LOOPLINE_HOME/bentoml`` unless ``BENTOML_HOME`` is set
(``ensure_bentoml_home``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from loopline.config import Settings, environment
from loopline.config import settings as current_settings

LOG = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]
BENTOFILE = CHECKOUT / "models" / "bentofile.yaml"
REQUIREMENTS = CHECKOUT / "requirements.txt"
VALIDATION_GATE = "bento_validation"
SERVING_MODEL_ENV = "LOOPLINE_SERVING_MODEL"  # the packaged model models/service.py loads (a BentoML tag)
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
# Lineage tags register_candidate copies onto a version that become Bento labels.
LINEAGE_TAGS = (
    "data_interval_start",
    "data_interval_end",
    "feature_service",
    "dbt_invocation_id",
    "ingest_run_ids",
    "git_commit",
    "airflow_dag_run_id",
    "compression_variant",
    "evaluation_verdict_id",
)
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


class PackagingError(RuntimeError):
    """A Bento cannot be built or exported; the message names the version, file or setting."""


class BentoValidationError(RuntimeError):
    """A Bento failed validation; the message names each failed check, ``verdict`` holds every number."""

    def __init__(self, message: str, verdict: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.verdict = dict(verdict or {})


# --------------------------------------------------------------------------------------------------
# Where BentoML keeps its stores
# --------------------------------------------------------------------------------------------------

_HOME_SET_BY_LOOPLINE: str | None = None


def bentoml_home(settings: Settings | None = None) -> Path:
    """``BENTOML_HOME`` if set from outside, else ``LOOPLINE_HOME/bentoml``."""
    given = os.environ.get("BENTOML_HOME")
    if given and given != _HOME_SET_BY_LOOPLINE:
        return Path(given).expanduser().resolve()
    return (settings or current_settings()).home / "bentoml"


def ensure_bentoml_home(settings: Settings | None = None) -> Path:
    """Point BentoML's model and Bento stores at ``bentoml_home(settings)``; returns that directory.

    Sets ``BENTOML_HOME`` (read by BentoML when it first touches a store, and inherited by the
    servers started here). If this process already used BentoML with another home (a test that
    changed ``LOOPLINE_HOME``, a long-lived worker), BentoML's memoized store locations are replaced.
    """
    global _HOME_SET_BY_LOOPLINE

    home = bentoml_home(settings)
    for name in ("bentos", "models", "envs", "tmp"):
        (home / name).mkdir(parents=True, exist_ok=True)
    if os.environ.get("BENTOML_HOME") in (None, "", _HOME_SET_BY_LOOPLINE):
        os.environ["BENTOML_HOME"] = str(home)
        _HOME_SET_BY_LOOPLINE = str(home)
    if "bentoml" in sys.modules:
        _point_bentoml_at(home)
    return home


def _point_bentoml_at(home: Path) -> None:
    """Override BentoML's store providers (simple_di ``set``) when they point at another home."""
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    container = BentoMLContainer
    if Path(container.bentoml_home.get()).resolve() == home.resolve():
        return
    LOG.info("BentoML stores: switching to %s", home)
    container.bentoml_home.set(str(home))
    container.bento_store_dir.set(str(home / "bentos"))
    container.model_store_dir.set(str(home / "models"))
    container.tmp_bento_store_dir.set(str(home / "tmp"))
    container.env_store_dir.set(str(home / "envs"))
    container.bento_store.set(BentoStore(str(home / "bentos")))
    container.tmp_bento_store.set(BentoStore(str(home / "tmp")))
    container.model_store.set(ModelStore(str(home / "models")))


# --------------------------------------------------------------------------------------------------
# Build configuration
# --------------------------------------------------------------------------------------------------


def pinned_requirements(names: Sequence[str], requirements: Path = REQUIREMENTS) -> list[str]:
    """``name==version`` for each of ``names``, the versions read from the lock ``requirements``."""
    if not requirements.is_file():
        raise PackagingError(f"lock file {requirements} is missing: the Bento's packages are pinned from it")
    pins: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        match = _REQUIREMENT.match(line.strip())
        if match:
            pins[_normalized(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    missing = [name for name in names if _normalized(name) not in pins]
    if missing:
        raise PackagingError(f"{requirements}: no pinned version (name==version) for {missing}")
    return [pins[_normalized(name)] for name in names]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_config(bentofile: Path = BENTOFILE, *, requirements: Path = REQUIREMENTS) -> dict[str, Any]:
    """The keyword arguments of ``bentoml.bentos.build`` from ``models/bentofile.yaml``, packages pinned."""
    import yaml

    if not bentofile.is_file():
        raise PackagingError(f"build file {bentofile} is missing")
    config = yaml.safe_load(bentofile.read_text()) or {}
    for key in ("service", "name", "include"):
        if not config.get(key):
            raise PackagingError(f"{bentofile}: expected a '{key}' entry")
    python = dict(config.get("python") or {})
    names = [str(name).split("==")[0] for name in python.get("packages") or []]
    python["packages"] = pinned_requirements(names, requirements)
    python["lock_packages"] = False
    config["python"] = python
    return config


def service_module_path(config: Mapping[str, Any]) -> Path:
    """The file of the build's service (``models.service:Class`` -> ``<checkout>/models/service.py``)."""
    module = str(config["service"]).split(":", 1)[0]
    return CHECKOUT.joinpath(*module.split(".")).with_suffix(".py")


# --------------------------------------------------------------------------------------------------
# Package: import, build, export
# --------------------------------------------------------------------------------------------------


@dataclass
class PackageResult:
    """What ``package`` made (JSON-able via ``to_dict``)."""

    bento_tag: str
    model_tag: str
    mlflow_version: str
    mlflow_run_id: str | None
    bentoml_home: str
    labels: dict[str, str]
    export_uri: str | None
    size_bytes: int | None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version_number(version: str | int) -> str:
    text = str(version).strip().removeprefix("v")
    if not text.isdigit():
        raise PackagingError(f"version: expected an MLflow version number of loopline-ctr such as 7, got {version!r}")
    return text


def bento_labels(version: str | int, *, tracking_uri: str | None = None, packaged_by: str | None = None) -> dict:
    """Labels of the Bento of ``version``: MLflow model, version and run, the lineage tags of the version."""
    from loopline.registry import MODEL_NAME, RegistryError, client
    from loopline.serving.model_store import bento_tag

    number = _version_number(version)
    try:
        registered = client(tracking_uri).get_model_version(MODEL_NAME, number)
    except Exception as error:
        raise RegistryError(f"{MODEL_NAME} has no version {number}: {error}") from error
    tags = dict(registered.tags or {})
    labels = {
        "mlflow_model": MODEL_NAME,
        "mlflow_version": number,
        "mlflow_run_id": str(registered.run_id or ""),
        "bento_model": bento_tag(number),
    }
    labels |= {name: str(tags[name]) for name in LINEAGE_TAGS if tags.get(name)}
    if packaged_by:
        labels["packaged_by"] = packaged_by
    return labels


def build_bento(
    version: str | int,
    *,
    labels: Mapping[str, str] | None = None,
    bentofile: Path = BENTOFILE,
    build_ctx: Path = CHECKOUT,
    settings: Settings | None = None,
) -> Any:
    """Build the service's Bento for imported version ``version`` (the model ships inside); returns the Bento."""
    ensure_bentoml_home(settings)
    import bentoml

    from loopline.serving.model_store import bento_tag, find_version

    number = _version_number(version)
    if find_version(number) is None:
        raise PackagingError(f"{bento_tag(number)} is not in the BentoML model store; import_version({number}) first")
    config = build_config(bentofile)
    service_file = service_module_path(config)
    if not service_file.is_file():
        raise PackagingError(f"service {config['service']!r}: {service_file} does not exist")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    bento_version = f"v{number}-{stamp}-{uuid.uuid4().hex[:6]}"
    model_tag = bento_tag(number)
    # The service names its packaged model at import time from LOOPLINE_SERVING_MODEL: import it
    # afresh with this version's tag (a worker may have imported it for another version before).
    module = str(config["service"]).split(":", 1)[0]
    from bentoml._internal.bento.build_config import BentoEnvSchema

    envs = [BentoEnvSchema(**env) for env in config.get("envs") or [] if env.get("name") != SERVING_MODEL_ENV]
    envs.append(BentoEnvSchema(name=SERVING_MODEL_ENV, value=model_tag))
    with environment({SERVING_MODEL_ENV: model_tag}), contextlib.redirect_stdout(sys.stderr):
        sys.modules.pop(module, None)
        try:
            return bentoml.bentos.build(
                config["service"],
                name=config["name"],
                labels={**(config.get("labels") or {}), **(labels or {})},
                description=config.get("description"),
                include=list(config["include"]),
                exclude=list(config.get("exclude") or []),
                envs=envs,
                python=config["python"],
                models=[model_tag],
                version=bento_version,
                build_ctx=str(build_ctx),
            )
        finally:
            sys.modules.pop(module, None)


def bentos_root(settings: Settings | None = None) -> str:
    """``<artifact_uri>/bentos``: where exported Bentos go (``file://`` or ``s3://``)."""
    return (settings or current_settings()).artifact_uri.rstrip("/") + "/bentos"


def export_bento(bento_tag: str, *, settings: Settings | None = None, root: str | None = None) -> dict[str, Any]:
    """Export a built Bento (models included) to ``<root>/<name>/<version>.bento``; returns uri, size, seconds.

    ``root`` defaults to ``<artifact_uri>/bentos``: a local directory (``file://``) or S3 (``s3://``,
    through boto3 and ``LOOPLINE_S3_ENDPOINT_URL``: BentoML's own S3 export needs fs-s3fs).
    """
    settings = settings or current_settings()
    ensure_bentoml_home(settings)
    import bentoml

    started = time.perf_counter()
    bento = bentoml.bentos.get(bento_tag)
    root = (root or bentos_root(settings)).rstrip("/")
    relative = f"{bento.tag.name}/{bento.tag.version}.bento"
    parts = urlsplit(root)
    if parts.scheme in ("", "file"):
        target = Path(unquote(parts.path)) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        bento.export(str(target))
        size, uri = target.stat().st_size, target.as_uri()
    elif parts.scheme == "s3":
        from loopline.logstore import make_s3_client

        key = f"{parts.path.strip('/')}/{relative}".lstrip("/")
        with tempfile.TemporaryDirectory(prefix="loopline-bento-") as scratch:
            local = Path(scratch) / Path(relative).name
            bento.export(str(local))
            size = local.stat().st_size
            client = make_s3_client(settings.s3_endpoint_url, settings.aws_region)
            try:
                client.upload_file(str(local), parts.netloc, key)
            except Exception as error:
                raise PackagingError(
                    f"cannot upload Bento {bento_tag} to s3://{parts.netloc}/{key}: {error}"
                ) from error
        uri = f"s3://{parts.netloc}/{key}"
    else:
        raise PackagingError(f"Bento export root {root!r}: expected a file:// or s3:// URI")
    return {"uri": uri, "size_bytes": int(size), "seconds": round(time.perf_counter() - started, 3)}


def find_or_import_bento(bento_tag: str, *, settings: Settings | None = None, root: str | None = None) -> Any:
    """The Bento ``bento_tag`` from the local store, else imported from its export under ``<root>``.

    A task that validates may run on another worker than the one that packaged (CeleryExecutor in
    the stack): the exported archive (``<artifact_uri>/bentos/<name>/<version>.bento``) is the hand-over.
    """
    settings = settings or current_settings()
    ensure_bentoml_home(settings)
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.bentos.get(bento_tag)
    except NotFound:
        pass
    name, _, version = bento_tag.partition(":")
    if not version or version == "latest":
        raise PackagingError(f"Bento {bento_tag!r} is not in the local store; give its full name:version tag")
    root = (root or bentos_root(settings)).rstrip("/")
    parts = urlsplit(f"{root}/{name}/{version}.bento")
    with tempfile.TemporaryDirectory(prefix="loopline-bento-") as scratch:
        if parts.scheme == "s3":
            from loopline.logstore import make_s3_client

            local = Path(scratch) / f"{version}.bento"
            try:
                make_s3_client(settings.s3_endpoint_url, settings.aws_region).download_file(
                    parts.netloc, parts.path.lstrip("/"), str(local)
                )
            except Exception as error:
                raise PackagingError(f"Bento {bento_tag} is neither local nor at {parts.geturl()}: {error}") from error
        else:
            local = Path(unquote(parts.path))
            if not local.is_file():
                raise PackagingError(f"Bento {bento_tag} is neither in the local store nor exported at {local}")
        LOG.info("importing Bento %s from %s", bento_tag, parts.geturl())
        return bentoml.bentos.import_bento(str(local))


def package(
    version: str | int,
    *,
    settings: Settings | None = None,
    tracking_uri: str | None = None,
    export: bool = True,
    packaged_by: str | None = None,
) -> PackageResult:
    """Import MLflow version ``version`` into the BentoML model store, build the Bento, export it.

    :param version: the registered version of ``loopline-ctr`` (a number).
    :param export: also export the Bento to ``<artifact_uri>/bentos`` (default).
    :param packaged_by: who packages (an Airflow dag_run id), recorded as a label.
    """
    from loopline.serving.model_store import import_version

    settings = settings or current_settings()
    home = ensure_bentoml_home(settings)
    number = _version_number(version)
    seconds: dict[str, float] = {}
    started = clock = time.perf_counter()
    model = import_version(number, tracking_uri=tracking_uri)
    seconds["import_model"] = time.perf_counter() - clock
    labels = bento_labels(number, tracking_uri=tracking_uri, packaged_by=packaged_by)
    clock = time.perf_counter()
    bento = build_bento(number, labels=labels, settings=settings)
    seconds["build"] = time.perf_counter() - clock
    exported: dict[str, Any] = {}
    if export:
        exported = export_bento(str(bento.tag), settings=settings)
        seconds["export"] = exported["seconds"]
    seconds["total"] = time.perf_counter() - started
    result = PackageResult(
        bento_tag=str(bento.tag),
        model_tag=str(model.tag),
        mlflow_version=number,
        mlflow_run_id=labels.get("mlflow_run_id") or None,
        bentoml_home=str(home),
        labels=dict(bento.info.labels),
        export_uri=exported.get("uri"),
        size_bytes=exported.get("size_bytes"),
        seconds={name: round(value, 3) for name, value in seconds.items()},
    )
    LOG.info("packaged %s", json.dumps(result.to_dict()))
    return result


# --------------------------------------------------------------------------------------------------
# Validate: serve the Bento, check schema, scores and latency, stop it
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationPolicy:
    """Thresholds of ``validate``.

    ``p99_ms`` defaults to 100 ms, not the issue's 20 ms: that target is for ``benchmarks/serving.py``
    (warm server, concurrency 8, the machine to itself); validation runs inside a DAG on a shared
    2-core worker beside the scheduler, sequentially, right after start-up, and exists to catch a
    broken or grossly slow build (a 5-10x regression), not to benchmark. Tighten it per environment.
    """

    score_tolerance: float = 1e-5  # absolute, on P(click)
    p99_ms: float = 100.0
    latency_requests: int = 200
    warmup_requests: int = 10
    real_requests: int = 30
    latency_candidates: int = 20
    startup_timeout_s: float = 180.0
    request_timeout_s: float = 10.0
    stop_timeout_s: float = 30.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``LOOPLINE_*`` variables (secrets in clear: for a child process's environment only)."""
    from pydantic import SecretStr

    from loopline.config import ENV_PREFIX

    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningBento:
    """A ``bentoml serve`` child process (its own process group) and where it listens."""

    bento_tag: str
    process: subprocess.Popen
    port: int
    log_path: Path
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


def start_bento(
    bento_tag: str,
    *,
    env: Mapping[str, str],
    log_path: Path,
    port: int | None = None,
    startup_timeout_s: float = 180.0,
) -> RunningBento:
    """Start ``bentoml serve <bento_tag>`` on 127.0.0.1 and wait (with a deadline) until /readyz answers 200."""
    import httpx

    port = port or free_port()
    command = [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)]
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child writes to it until it stops
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=log_path.parent
    )
    log_file.close()
    running = RunningBento(bento_tag, process, port, log_path)
    deadline = started + startup_timeout_s
    last_error = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise BentoValidationError(
                    f"bentoml serve {bento_tag} exited with code {process.returncode} before it was ready:\n"
                    f"{running.log_tail()}"
                )
            try:
                response = client.get(f"{running.url}/readyz")
                if response.status_code == 200:
                    running.startup_seconds = time.perf_counter() - started
                    return running
                last_error = f"/readyz answered {response.status_code}"
            except httpx.HTTPError as error:
                last_error = f"{type(error).__name__}: {error}"
            time.sleep(0.25)  # poll interval (the deadline bounds the wait)
    stop_bento(running)
    raise BentoValidationError(
        f"bentoml serve {bento_tag} was not ready within {startup_timeout_s:.0f} s ({last_error}):\n"
        + running.log_tail()
    )


def stop_bento(running: RunningBento, timeout_s: float = 30.0) -> dict[str, Any]:
    """SIGTERM the server (it drains and flushes), wait; SIGKILL it and its workers after ``timeout_s``.

    BentoML's workers run in sessions of their own (circus starts them with ``setsid``), so they are
    tracked as the arbiter's children, not by its process group.
    """
    import psutil

    process = running.process
    started = time.perf_counter()
    forced = False
    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            forced = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # Workers that outlive the arbiter get what is left of the deadline, then SIGKILL.
    remaining = max(0.0, timeout_s - (time.perf_counter() - started))
    _, alive = psutil.wait_procs(workers, timeout=remaining if not forced else 0)
    for worker in alive:
        forced = True
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    psutil.wait_procs(alive, timeout=10)
    if _group_alive(process.pid):
        forced = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return {
        "exit_code": process.returncode,
        "forced": forced,
        "workers": len(workers),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- response checks --------------------------------------------------------------------------------


def rank_response_problems(
    body: Any, *, k: int, expected_model_version: str, item_ids: Sequence[str] | None = None
) -> list[str]:
    """What is wrong with a ``/rank`` response body (empty if it follows the documented schema)."""
    problems: list[str] = []
    if not isinstance(body, dict):
        return [f"body is {type(body).__name__}, expected an object"]
    for key, kind in (("items", list), ("request_id", str), ("model_version", str), ("variant", str)):
        if not isinstance(body.get(key), kind):
            problems.append(f"{key}: expected {kind.__name__}, got {body.get(key)!r}"[:200])
    if problems:
        return problems
    if not body["request_id"]:
        problems.append("request_id is empty")
    if body["model_version"] != expected_model_version:
        problems.append(f"model_version {body['model_version']!r}, expected {expected_model_version!r}")
    if not body["variant"]:
        problems.append("variant is empty")
    items = body["items"]
    wanted = min(k, len(item_ids)) if item_ids is not None else None
    if wanted is not None and len(items) != wanted:
        problems.append(f"{len(items)} items, expected {wanted} (k={k}, {len(item_ids or [])} candidates)")
    if wanted is None and not 0 < len(items) <= k:
        problems.append(f"{len(items)} items, expected 1..{k}")
    scores: list[float] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("item_id"), str):
            problems.append(f"items[{index}]: expected {{item_id: str, score: float}}, got {item!r}"[:200])
            continue
        score = item.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            problems.append(f"items[{index}].score: expected a finite number, got {score!r}")
            continue
        if not 0.0 <= score <= 1.0:
            problems.append(f"items[{index}].score {score} is not a probability")
        if item["item_id"] in seen:
            problems.append(f"items[{index}]: {item['item_id']!r} appears twice")
        if item_ids is not None and item["item_id"] not in item_ids:
            problems.append(f"items[{index}]: {item['item_id']!r} was not a candidate")
        seen.add(item["item_id"])
        scores.append(float(score))
    explored = body.get("explored", False)
    if not isinstance(explored, bool):
        problems.append(f"explored: expected a boolean, got {explored!r}"[:200])
    # An exploration request shows its top k in a random order (docs/serving.md, "Exploration").
    if explored is not True and any(later > earlier for earlier, later in zip(scores, scores[1:], strict=False)):
        problems.append("items are not sorted by descending score")
    return problems


def _percentile(values: Sequence[float], share: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), share)) if len(values) else float("nan")


# --- inputs of the checks ---------------------------------------------------------------------------


def logged_requests(settings: Settings, limit: int, *, max_items: int = 50) -> list[tuple[str, list[str]]]:
    """The latest ``limit`` logged requests of ``training_examples``: (user_id, the item_ids shown)."""
    from loopline.warehouse import Warehouse

    with Warehouse.from_uri(settings.warehouse_uri) as warehouse:
        if not warehouse.columns_of("training_examples"):
            raise BentoValidationError(
                f"validation needs logged requests: training_examples does not exist in {warehouse.display_uri}"
            )
        rows = warehouse.query(
            "WITH latest AS (SELECT request_id, max(event_at) AS last_event_at FROM training_examples "
            "GROUP BY request_id ORDER BY last_event_at DESC, request_id LIMIT ?) "
            "SELECT t.request_id, t.user_id, t.item_id FROM training_examples t JOIN latest USING (request_id) "
            "ORDER BY latest.last_event_at DESC, t.request_id, t.position, t.item_id",
            [int(limit)],
        )
    requests: dict[str, tuple[str, list[str]]] = {}
    for request_id, user_id, item_id in rows:
        user, items = requests.setdefault(str(request_id), (str(user_id), []))
        if str(item_id) not in items and len(items) < max_items:
            items.append(str(item_id))
    if not requests:
        raise BentoValidationError("validation needs logged requests: training_examples is empty")
    return list(requests.values())


def _offline_scores(
    model: Any, user_id: str, item_ids: Sequence[str], moments: Sequence[datetime], store: Any
) -> list[dict[str, tuple[float, bool]]]:
    """Offline (P(click), user and item found online) per item for each request time (hour of day is a feature)."""
    from loopline.features import online

    results = []
    for moment in moments:
        rows = online(user_id, item_ids, store=store, request_features={"request_at": moment})
        scores = model.predict(rows.frame)
        found = {item: not rows.missing_users and item not in rows.missing_items for item in item_ids}
        results.append({item: (float(score), found[item]) for item, score in zip(item_ids, scores, strict=True)})
    return results


# --- the verdict ------------------------------------------------------------------------------------


@dataclass
class ValidationVerdict:
    """Every number of one validation; ``passed`` if every check passed (JSON-able via ``to_dict``)."""

    bento_tag: str
    mlflow_version: str
    offline_version: str
    passed: bool
    checks: dict[str, bool]
    failures: list[str]
    startup_seconds: float
    canned: dict[str, Any]
    scores: dict[str, Any]
    latency: dict[str, Any]
    stop: dict[str, Any]
    policy: dict[str, Any]
    seconds: float
    verdict_id: str | None = None
    logged_events: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self) -> str:
        rows = [f"{'check':<16} result", *(f"{n:<16} {'pass' if ok else 'FAIL'}" for n, ok in self.checks.items())]
        rows.append(
            f"scores: {self.scores.get('rows', 0)} rows, max |served - offline| {self.scores.get('max_abs_diff')} "
            f"(tolerance {self.policy['score_tolerance']})"
        )
        rows.append(
            f"latency: p50 {self.latency.get('p50_ms')} ms, p99 {self.latency.get('p99_ms')} ms "
            f"(threshold {self.policy['p99_ms']} ms, {self.latency.get('requests')} requests)"
        )
        return "\n".join(rows)


def validate(
    bento_tag: str,
    *,
    settings: Settings | None = None,
    policy: ValidationPolicy | None = None,
    offline_version: str | int | None = None,
    record: bool = True,
    tracking_uri: str | None = None,
) -> ValidationVerdict:
    """Serve ``bento_tag``, check schema, score parity and p99 latency, stop it; raise if a check fails.

    :param offline_version: the version whose offline scores the served ones must equal (default: the
        Bento's own, label ``mlflow_version``); another version makes the parity check fail for real.
    :param record: store the verdict in ``gate_verdicts`` (gate ``bento_validation``).
    """
    settings = settings or current_settings()
    policy = policy or ValidationPolicy()
    ensure_bentoml_home(settings)
    import httpx

    from loopline.features import feature_store
    from loopline.serving.model_store import load_version

    started = time.perf_counter()
    bento = find_or_import_bento(bento_tag, settings=settings)
    version = str(bento.info.labels.get("mlflow_version") or "")
    if not version.isdigit():
        raise BentoValidationError(f"Bento {bento_tag} has no mlflow_version label: was it built by package()?")
    reference = _version_number(offline_version) if offline_version is not None else version
    expected_model_version = f"loopline-ctr/{version}"
    requests = logged_requests(settings, max(policy.real_requests, 1))
    store = feature_store(settings)
    offline_model = load_version(reference, tracking_uri=tracking_uri)
    users = [user for user, _ in requests]
    catalog = list(dict.fromkeys(item for _, items in requests for item in items))

    with contextlib.ExitStack() as stack:
        scratch_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopline-validate-")))
        model_tag = str(bento.info.labels.get("bento_model") or f"loopline-ctr:v{version}")
        env = validation_env(settings, scratch_dir, version, model_tag)
        log_path = scratch_dir / "bentoml-serve.log"
        canned: dict[str, Any] = {}
        scores: dict[str, Any] = {}
        latency: dict[str, Any] = {}
        running = start_bento(bento_tag, env=env, log_path=log_path, startup_timeout_s=policy.startup_timeout_s)
        stage = "schema"
        try:  # httpx logs every request at INFO: hundreds of lines in a task log
            stack.enter_context(_quiet("httpx", "httpcore"))
            with httpx.Client(base_url=running.url, timeout=policy.request_timeout_s) as client:
                canned = _canned_checks(client, users=users, catalog=catalog, expected=expected_model_version)
                stage = "scores_match"
                scores = _score_checks(
                    client, requests[: policy.real_requests], offline_model, store, expected_model_version, policy
                )
                stage = "latency_p99"
                latency = _latency_checks(client, requests, catalog, expected_model_version, policy)
        except httpx.HTTPError as error:
            raise BentoValidationError(
                f"{stage}: the server of {bento_tag} stopped answering ({type(error).__name__}: {error}); "
                f"server log:\n{running.log_tail()}",
                {"bento_tag": bento_tag, "mlflow_version": version, "failed_check": stage},
            ) from error
        finally:
            stop = stop_bento(running, policy.stop_timeout_s)
            server_log = running.log_tail(2000)
        logged = _count_logged_events(scratch_dir / "logs")

    checks = {
        "started": True,
        "schema": canned.get("failed", 1) == 0,
        "scores_match": scores.get("rows", 0) > 0
        and not scores.get("problems")
        and scores.get("max_abs_diff", math.inf) <= policy.score_tolerance,
        "latency_p99": latency.get("p99_ms", math.inf) <= policy.p99_ms,
        "stopped": not stop["forced"],
    }
    failures = []
    if not checks["schema"]:
        failures.append(f"schema: {canned.get('failed')} of {canned.get('requests')} canned requests failed: "
                        f"{canned.get('problems', [])[:5]}")  # fmt: skip
    if not checks["scores_match"]:
        failures.append(
            f"scores_match: served scores differ from offline scoring of version {reference} by up to "
            f"{scores.get('max_abs_diff')} (tolerance {policy.score_tolerance}) over {scores.get('rows')} rows"
            + (f"; failed requests: {scores['problems'][:3]}" if scores.get("problems") else "")
        )
    if not checks["latency_p99"]:
        failures.append(f"latency_p99: p99 {latency.get('p99_ms')} ms > threshold {policy.p99_ms} ms")
    if not checks["stopped"]:
        failures.append(f"stopped: the server did not stop within {policy.stop_timeout_s} s and was killed")
    verdict = ValidationVerdict(
        bento_tag=bento_tag,
        mlflow_version=version,
        offline_version=reference,
        passed=not failures,
        checks=checks,
        failures=failures,
        startup_seconds=round(running.startup_seconds, 3),
        canned=canned,
        scores=scores,
        latency=latency,
        stop=stop,
        policy=asdict(policy),
        seconds=round(time.perf_counter() - started, 3),
        logged_events=logged,
    )
    if record:
        from loopline.registry import record_verdict

        verdict.verdict_id = record_verdict(
            VALIDATION_GATE,
            "PASSED" if verdict.passed else "FAILED",
            summary=f"Bento {bento_tag}: " + ("every check passed" if verdict.passed else "; ".join(failures))[:500],
            details=verdict.to_dict(),
            candidate_run_id=str(bento.info.labels.get("mlflow_run_id") or "") or None,
            candidate_version=version,
            warehouse_uri=settings.warehouse_uri,
        )
    LOG.info("Bento validation of %s\n%s", bento_tag, verdict.to_table())
    if not verdict.passed:
        LOG.error("server log tail:\n%s", server_log)
        raise BentoValidationError(f"Bento {bento_tag} failed validation: " + "; ".join(failures), verdict.to_dict())
    return verdict


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the given loggers to WARNING for a block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def validation_env(settings: Settings, scratch: Path, version: str, model_tag: str) -> dict[str, str]:
    """The server's environment: this process's, the settings as ``LOOPLINE_*``, telemetry off, the
    Bento's model (``model_tag``), and a scratch log store and rollout state serving ``version`` to all."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOPLINE_")}
    env |= settings_env(settings)
    env |= TELEMETRY_OFF
    env["BENTOML_HOME"] = str(bentoml_home(settings))
    env[SERVING_MODEL_ENV] = model_tag
    env["LOOPLINE_LOG_STORE_URI"] = (scratch / "logs").as_uri()
    env |= rollout_env(scratch, version)
    return env


def rollout_env(scratch: Path, version: str) -> dict[str, str]:
    """A scratch rollout state (a file) in which ``version`` is the champion and no canary runs."""
    from loopline.serving.routing import FileStateStore, TrafficState

    store = FileStateStore(scratch / "rollout.json")
    store.write(TrafficState(champion_version=version, rollout_id=f"bento-validation-{uuid.uuid4().hex[:8]}"))
    return {"LOOPLINE_ROLLOUT_STATE_URI": store.uri}


def _count_logged_events(root: Path) -> int | None:
    if not root.exists():
        return None
    count = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as handle:
                count += sum(1 for line in handle if line.strip())
    return count


def _post(client: Any, path: str, payload: Any) -> tuple[int, Any, float]:
    started = time.perf_counter()
    response = client.post(path, json=payload)
    elapsed = (time.perf_counter() - started) * 1000
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return response.status_code, body, elapsed


def _canned_checks(client: Any, *, users: Sequence[str], catalog: Sequence[str], expected: str) -> dict[str, Any]:
    """Fixed requests with known answers: schema of every 2xx, a 4xx for every bad input, probes up."""
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    user = users[0]
    some = list(catalog[:5])

    def expect_ok(name: str, payload: dict[str, Any]) -> Any:
        status, body, ms = _post(client, "/rank", payload)
        found = [f"status {status}: {str(body)[:200]}"] if status != 200 else rank_response_problems(
            body, k=payload["k"], expected_model_version=expected, item_ids=payload.get("item_ids")
        )  # fmt: skip
        results.append({"case": name, "status": status, "ms": round(ms, 2), "ok": not found})
        problems.extend(f"{name}: {problem}" for problem in found)
        return body if not found else None

    def expect_4xx(name: str, payload: Any) -> None:
        status, body, ms = _post(client, "/rank", payload)
        ok = 400 <= status < 500
        results.append({"case": name, "status": status, "ms": round(ms, 2), "ok": ok})
        if not ok:
            problems.append(f"{name}: expected a 4xx, got {status}: {str(body)[:200]}")

    first = expect_ok("known_user_candidates", {"user_id": user, "item_ids": some, "k": len(some)})
    expect_ok("known_user_top_k", {"user_id": user, "item_ids": some, "k": 2})
    expect_ok("known_user_catalog", {"user_id": user, "k": 5})
    expect_ok("unknown_user", {"user_id": f"validation-unknown-{uuid.uuid4().hex[:8]}", "item_ids": some, "k": 3})
    expect_ok("unknown_item", {"user_id": user, "item_ids": [*some[:2], "validation-unknown-item"], "k": 3})
    expect_4xx("missing_user_id", {"item_ids": some, "k": 3})
    expect_4xx("empty_candidates", {"user_id": user, "item_ids": [], "k": 3})
    expect_4xx("wrong_type_k", {"user_id": user, "item_ids": some, "k": "three"})
    if first is not None and first["items"]:
        payload = {"request_id": first["request_id"], "item_id": first["items"][0]["item_id"], "event_type": "click"}
        status, body, ms = _post(client, "/feedback", payload)
        ok = 200 <= status < 300
        results.append({"case": "feedback_click", "status": status, "ms": round(ms, 2), "ok": ok})
        if not ok:
            problems.append(f"feedback_click: status {status}: {str(body)[:200]}")
    for probe in ("/livez", "/readyz", "/metrics"):
        status = client.get(probe).status_code
        results.append({"case": f"GET {probe}", "status": status, "ok": status == 200})
        if status != 200:
            problems.append(f"GET {probe}: status {status}")
    return {
        "requests": len(results),
        "failed": sum(1 for result in results if not result["ok"]),
        "problems": problems,
        "cases": results,
    }


def _score_checks(
    client: Any,
    requests: Sequence[tuple[str, list[str]]],
    model: Any,
    store: Any,
    expected: str,
    policy: ValidationPolicy,
) -> dict[str, Any]:
    """Served scores of real requests against offline scoring of the same online rows."""
    differences: list[float] = []
    problems: list[str] = []
    worst: dict[str, Any] = {}
    with_features = 0
    for user_id, item_ids in requests:
        before = datetime.now(UTC)
        status, body, _ = _post(client, "/rank", {"user_id": user_id, "item_ids": item_ids, "k": len(item_ids)})
        after = datetime.now(UTC)
        if status != 200:
            problems.append(f"user {user_id}: status {status}: {str(body)[:200]}")
            continue
        found = rank_response_problems(body, k=len(item_ids), expected_model_version=expected, item_ids=item_ids)
        if found:
            problems.extend(f"user {user_id}: {problem}" for problem in found)
            continue
        served = {item["item_id"]: float(item["score"]) for item in body["items"]}
        # hour_of_day is a feature: score at both ends of the call when an hour boundary fell inside it.
        moments = [before] if before.hour == after.hour else [before, after]
        offline = _offline_scores(model, user_id, item_ids, moments, store)
        for item_id, value in served.items():
            difference = min(abs(value - scores[item_id][0]) for scores in offline)
            differences.append(difference)
            with_features += int(offline[0][item_id][1])
            if difference > worst.get("abs_diff", -1.0):
                worst = {"user_id": user_id, "item_id": item_id, "served": value,
                         "offline": offline[0][item_id][0], "abs_diff": difference}  # fmt: skip
    return {
        "requests": len(requests),
        "rows": len(differences),
        "rows_with_online_features": with_features,  # user and item found in the online store
        "max_abs_diff": float(max(differences)) if differences else None,
        "mean_abs_diff": float(sum(differences) / len(differences)) if differences else None,
        "rows_over_tolerance": sum(1 for value in differences if value > policy.score_tolerance),
        "worst": worst,
        "problems": problems[:10],
    }


def _latency_checks(
    client: Any,
    requests: Sequence[tuple[str, list[str]]],
    catalog: Sequence[str],
    expected: str,
    policy: ValidationPolicy,
) -> dict[str, Any]:
    """Sequential /rank calls of real users with ``latency_candidates`` candidates; client-side times."""
    candidates = list(catalog[: policy.latency_candidates]) or [item for _, items in requests for item in items][:1]
    timings: list[float] = []
    errors = 0
    total = policy.warmup_requests + policy.latency_requests
    for index in range(total):
        user_id = requests[index % len(requests)][0]
        status, _, ms = _post(client, "/rank", {"user_id": user_id, "item_ids": candidates, "k": 10})
        if status != 200:
            errors += 1
        if index >= policy.warmup_requests:
            timings.append(ms)
    return {
        "requests": len(timings),
        "candidates": len(candidates),
        "errors": errors,
        "p50_ms": round(_percentile(timings, 50), 3),
        "p90_ms": round(_percentile(timings, 90), 3),
        "p99_ms": round(_percentile(timings, 99), 3) if not errors else math.inf,
        "max_ms": round(max(timings), 3) if timings else None,
    }


# --------------------------------------------------------------------------------------------------
# Command line: loopline bento package / validate
# --------------------------------------------------------------------------------------------------


def _cli_package(args: argparse.Namespace) -> int:
    result = package(args.version, export=not args.no_export)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cli_validate(args: argparse.Namespace) -> int:
    policy = ValidationPolicy(
        p99_ms=args.p99_ms,
        score_tolerance=args.score_tolerance,
        latency_requests=args.latency_requests,
        real_requests=args.real_requests,
    )
    try:
        verdict = validate(args.bento_tag, policy=policy, offline_version=args.offline_version)
    except BentoValidationError as error:
        print(json.dumps(error.verdict, indent=2, default=str))
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(verdict.to_dict(), indent=2, default=str))
    return 0


def _reporting_errors(handler):
    def run(args: argparse.Namespace) -> int:
        from loopline.registry import RegistryError

        ensure_bentoml_home()
        try:
            return handler(args)
        except (PackagingError, RegistryError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``loopline bento {package,validate}``."""
    defaults = ValidationPolicy()
    parser = subparsers.add_parser("bento", help="package a registered model as a Bento; validate a built Bento")
    actions = parser.add_subparsers(dest="bento_command", required=True, metavar="ACTION")
    build = actions.add_parser("package", help="import MLflow version N, build the Bento, export it")
    build.add_argument("--version", required=True, help="MLflow version of loopline-ctr")
    build.add_argument("--no-export", action="store_true", help="build only; do not export to <artifact_uri>/bentos")
    build.set_defaults(handler=_reporting_errors(_cli_package))
    check = actions.add_parser("validate", help="serve a built Bento, check schema, scores and p99, stop it")
    check.add_argument("bento_tag", help="e.g. loopline-ranker:v7-20240505-020301-3fa2c1")
    check.add_argument("--p99-ms", type=float, default=defaults.p99_ms)
    check.add_argument("--score-tolerance", type=float, default=defaults.score_tolerance)
    check.add_argument("--latency-requests", type=int, default=defaults.latency_requests)
    check.add_argument("--real-requests", type=int, default=defaults.real_requests)
    check.add_argument("--offline-version", help="compare served scores with this version's offline scores")
    check.set_defaults(handler=_reporting_errors(_cli_validate))


__all__ = [
    "BentoValidationError",
    "PackageResult",
    "PackagingError",
    "ValidationPolicy",
    "ValidationVerdict",
    "bento_labels",
    "bentoml_home",
    "build_bento",
    "build_config",
    "ensure_bentoml_home",
    "export_bento",
    "find_or_import_bento",
    "package",
    "pinned_requirements",
    "validate",
]
