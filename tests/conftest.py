"""Shared fixtures: isolated Loopline settings, a local S3-compatible server, a PostgreSQL database.

Every test writes under pytest's temporary directories; nothing lands in the checkout.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Hypothesis keeps its caches and no example database in the temp dir: tests never write into the checkout.
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = tempfile.mkdtemp(prefix="loopline-hypothesis-")
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile("loopline", database=None)
hypothesis_settings.load_profile("loopline")

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Airflow reads its configuration when first imported: give the whole test session its own home
# (SQLite metadata, logs) under the system temp dir, and the project's DAGs and plugins.
CHECKOUT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="loopline-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(CHECKOUT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(CHECKOUT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(Path(_AIRFLOW_HOME) / "logs")

SHARED_DATA = Path(os.environ.get("LOOPLINE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
POSTGRES_ADMIN_URL = os.environ.get("LOOPLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point LOOPLINE_HOME at a fresh directory and drop any LOOPLINE_* variable from outside."""
    for name in list(os.environ):
        if name.startswith("LOOPLINE_") and name != "LOOPLINE_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    home = tmp_path / "var"
    monkeypatch.setenv("LOOPLINE_HOME", str(home))
    from loopline import config

    config.settings.cache_clear()
    return home


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port), spoken to with boto3 exactly as with AWS."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    previous = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the local S3 server; returns its name."""
    from loopline.logstore import make_s3_client

    name = f"loopline-test-{uuid.uuid4().hex[:12]}"
    make_s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the machine's server, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    from urllib.parse import urlsplit, urlunsplit

    name = f"loopline_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(POSTGRES_ADMIN_URL)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real logs beside the checkout (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder {SHARED_DATA} is missing; it ships beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """The test session's Airflow metadata database (SQLite in its AIRFLOW_HOME), migrated once."""
    import subprocess
    import sys

    airflow = Path(sys.executable).with_name("airflow")
    completed = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return os.environ["AIRFLOW_HOME"]
