"""The Feast feature store of the loop: apply the repository, materialize a data interval, build
training sets point-in-time, read features online for serving.

The feature repository lives in ``feature_repo/`` (entities, sources, views, services); this module
builds a ``FeatureStore`` for the active profile from the Loopline settings and wraps the few calls
the pipeline makes:

- ``feature_store()``: the profile's template ``feature_repo/feature_store.<profile>.yaml`` rendered
  with values from the settings (registry, online store and exports under ``LOOPLINE_HOME/feast``
  locally; PostgreSQL registry, Redis and the PostgreSQL marts in the stack);
- ``plan()`` / ``apply()``: register the repository's objects, with a summary of the changes;
- ``export_feature_snapshots(day)``: (local profile) write one day of the marts to Parquet, the
  files Feast's ``file`` offline store reads; an idempotent overwrite of that day;
- ``materialize_interval(start, end)``: load exactly one data interval (plus a small overlap) into
  the online store, never ``materialize_incremental``;
- ``training_set(start, end)``: the training examples of an interval with the features of the
  FeatureService as of each impression's time, never later ones (``point_in_time_features`` is
  that join for any rows with entity keys and ``event_at``: batch scoring uses it too);
- ``online(user_id, item_ids)``: one online lookup for a user and many candidate items.

Every timestamp handed to Feast is timezone-aware UTC (Feast takes naive ones as UTC silently).
See docs/features.md for the choices (offline store per profile, TTLs, overlap, request features).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from loopline.config import Settings, mask_uri
from loopline.config import settings as current_settings

if TYPE_CHECKING:  # feast takes seconds to import: only the functions that need it import it
    import pandas as pd
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
REPO_PACKAGE = "feature_repo"
DEFAULT_PROJECT = "loopline"
PROJECT_ENV = "LOOPLINE_FEAST_PROJECT"
CTR_RANKER_V1 = "ctr_ranker_v1"
DEFAULT_OVERLAP = timedelta(hours=1)
ENTITY_TIMESTAMP = "event_timestamp"
# The labels training_set carries over from training_examples (with its ids and context columns).
LABEL_COLUMNS = ("is_clicked", "is_purchased")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class FeatureStoreError(RuntimeError):
    """The feature store cannot do what was asked; the message names the input and what was expected."""


# --- the repository and the store ------------------------------------------------------------------


def load_feature_repo() -> ModuleType:
    """Import the checkout's ``feature_repo/`` as the package ``feature_repo``; returns it.

    The checkout's root is not necessarily on ``sys.path`` (Airflow workers, the installed CLI), so
    the package is imported from its file location once and then found in ``sys.modules``.
    """
    loaded = sys.modules.get(REPO_PACKAGE)
    if loaded is not None:
        location = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if location != REPO_DIR:
            raise FeatureStoreError(f"module {REPO_PACKAGE!r} is already imported from {location}, expected {REPO_DIR}")
        return loaded
    init = REPO_DIR / "__init__.py"
    if not init.is_file():
        raise FeatureStoreError(f"feature repository {REPO_DIR}: expected an __init__.py there")
    spec = importlib.util.spec_from_file_location(REPO_PACKAGE, init, submodule_search_locations=[str(REPO_DIR)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[REPO_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[REPO_PACKAGE]
        raise
    return module


def _repo(name: str) -> ModuleType:
    load_feature_repo()
    return importlib.import_module(f"{REPO_PACKAGE}.{name}")


def feast_dir(settings: Settings | None = None) -> Path:
    """``LOOPLINE_HOME/feast``: the local registry, the SQLite online store and the Parquet exports."""
    return (settings or current_settings()).home / "feast"


def project_name(project: str | None = None) -> str:
    """The Feast project: ``project``, else ``LOOPLINE_FEAST_PROJECT``, else ``loopline``."""
    name = project or os.environ.get(PROJECT_ENV) or DEFAULT_PROJECT
    if not _PROJECT_NAME.match(name):
        raise FeatureStoreError(
            f"Feast project {name!r}: expected letters, digits, '_' or '-', not starting with '_' or '-'"
        )
    return name


def offline_location(settings: Settings | None = None) -> Any:
    """Where the profile's batch sources live (``feature_repo.sources.OfflineLocation``).

    local: Parquet exports under ``LOOPLINE_HOME/feast/offline``; stack: the marts in PostgreSQL.
    """
    settings = settings or current_settings()
    sources = _repo("sources")
    if settings.profile == "local":
        return sources.OfflineLocation(kind="file", parquet_root=str(feast_dir(settings) / "offline"))
    return sources.OfflineLocation(kind="postgres")


def repo_definitions(settings: Settings | None = None) -> Any:
    """A fresh set of the repository's objects for the profile (``feature_repo.definitions.RepoDefinitions``)."""
    return _repo("definitions").build_definitions(offline_location(settings))


def _redis_connection_string(redis_url: str) -> str:
    """``redis://[user:password@]host:port/db`` -> Feast's ``host:port,db=N[,password=...][,ssl=true]``."""
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise FeatureStoreError(f"LOOPLINE_REDIS_URL: expected redis://host:port/db, got {mask_uri(redis_url)!r}")
    database = parts.path.lstrip("/") or "0"
    if not database.isdigit():
        raise FeatureStoreError(f"LOOPLINE_REDIS_URL: the path must be a database number, got {database!r}")
    items = [f"{parts.hostname}:{parts.port or 6379}", f"db={database}"]
    if parts.username:
        items.append(f"username={unquote(parts.username)}")
    if parts.password:
        password = unquote(parts.password)
        if "," in password:
            raise FeatureStoreError(
                "LOOPLINE_REDIS_URL: Feast's Redis connection string cannot hold a ',' in a password"
            )
        items.append(f"password={password}")
    if parts.scheme == "rediss":
        items.append("ssl=true")
    return ",".join(items)


def config_values(settings: Settings | None = None, *, project: str | None = None) -> dict[str, str]:
    """The values of the ``${...}`` placeholders of the profile's template (secrets included)."""
    settings = settings or current_settings()
    values = {"LOOPLINE_FEAST_PROJECT": project_name(project), "LOOPLINE_FEAST_DIR": str(feast_dir(settings))}
    if settings.profile == "local":
        return values
    warehouse = urlsplit(settings.warehouse_uri)
    if warehouse.scheme not in ("postgresql", "postgres"):
        raise FeatureStoreError(
            "the stack profile's offline store reads the marts in PostgreSQL: expected LOOPLINE_WAREHOUSE_URI "
            f"postgresql://..., got {mask_uri(settings.warehouse_uri)!r}"
        )
    query = parse_qs(warehouse.query)
    registry = urlsplit(settings.postgres_url)
    values |= {
        "LOOPLINE_FEAST_REGISTRY_URL": registry._replace(scheme="postgresql+psycopg").geturl(),
        "LOOPLINE_FEAST_REDIS": _redis_connection_string(settings.redis_url),
        "LOOPLINE_FEAST_PG_HOST": warehouse.hostname or "127.0.0.1",
        "LOOPLINE_FEAST_PG_PORT": str(warehouse.port or 5432),
        "LOOPLINE_FEAST_PG_DATABASE": unquote(warehouse.path.lstrip("/")),
        "LOOPLINE_FEAST_PG_SCHEMA": os.environ.get("LOOPLINE_DBT_SCHEMA") or "public",
        "LOOPLINE_FEAST_PG_USER": unquote(warehouse.username or "postgres"),
        "LOOPLINE_FEAST_PG_PASSWORD": unquote(warehouse.password or ""),
        "LOOPLINE_FEAST_PG_SSLMODE": query.get("sslmode", ["prefer"])[0],
    }
    return values


def render_config(settings: Settings | None = None, *, project: str | None = None) -> str:
    """The profile's ``feature_store.<profile>.yaml`` with every placeholder filled (holds secrets)."""
    settings = settings or current_settings()
    template = REPO_DIR / f"feature_store.{settings.profile}.yaml"
    if not template.is_file():
        raise FeatureStoreError(f"profile {settings.profile!r}: expected a Feast template at {template}")
    values = config_values(settings, project=project)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise FeatureStoreError(f"{template.name}: placeholder ${{{name}}} is unknown; known: {sorted(values)}")
        return values[name].replace("\\", "\\\\").replace('"', '\\"')  # safe inside YAML double quotes

    return _PLACEHOLDER.sub(substitute, template.read_text())


def repo_config(settings: Settings | None = None, *, project: str | None = None) -> RepoConfig:
    """The Feast ``RepoConfig`` of the profile (``repo_path`` = ``LOOPLINE_HOME/feast``)."""
    import yaml
    from feast.repo_config import RepoConfig

    settings = settings or current_settings()
    raw = yaml.safe_load(render_config(settings, project=project))
    config = RepoConfig(**raw)
    config.repo_path = feast_dir(settings)
    return config


def feature_store(settings: Settings | None = None, *, project: str | None = None) -> FeatureStore:
    """A ``FeatureStore`` for the profile of ``settings`` (default: the process settings).

    Nothing is read from or written into the checkout: the local registry, online store and
    exports live under ``LOOPLINE_HOME/feast``.
    """
    from feast import FeatureStore

    settings = settings or current_settings()
    directory = feast_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(directory), config=repo_config(settings, project=project))


def write_feature_store_yaml(path: Path | None = None, settings: Settings | None = None) -> Path:
    """Write the rendered configuration for the Feast CLI (``feast -f PATH``), readable by the owner only."""
    settings = settings or current_settings()
    target = Path(path or feast_dir(settings) / "feature_store.yaml")
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render_config(settings)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return target


def _location_of(store: FeatureStore) -> Any:
    """The offline location a store built by ``feature_store`` reads (exports under its repo path)."""
    sources = _repo("sources")
    kind = store.config.offline_store.type
    if kind == "file":
        return sources.OfflineLocation(kind="file", parquet_root=str(Path(store.repo_path).resolve() / "offline"))
    if kind == "postgres":
        return sources.OfflineLocation(kind="postgres")
    raise FeatureStoreError(f"offline store type {kind!r}: expected 'file' (local) or 'postgres' (stack)")


# --- plan and apply --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSummary:
    """What ``plan`` would change (or ``apply`` changed) in the registry and the online store."""

    project: str
    changes: tuple[tuple[str, str, str], ...]  # (object type, name, CREATE / UPDATE / DELETE)
    unchanged: int
    infra_changes: tuple[tuple[str, str, str], ...]
    text: str = field(repr=False, default="")

    @property
    def has_changes(self) -> bool:
        return bool(self.changes or self.infra_changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for XCom and task logs)."""
        return {
            "project": self.project,
            "changes": [list(change) for change in self.changes],
            "unchanged": self.unchanged,
            "infra_changes": [list(change) for change in self.infra_changes],
        }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _summarize(project: str, registry_diff: Any, infra_diff: Any) -> PlanSummary:
    changes = []
    unchanged = 0
    for diff in registry_diff.feast_object_diffs:
        transition = diff.transition_type.name
        if transition == "UNCHANGED":
            unchanged += 1
        else:
            changes.append((diff.feast_object_type.name, diff.name, transition))
    infra = [
        (diff.infra_object_type, diff.name, diff.transition_type.name)
        for diff in infra_diff.infra_object_diffs
        if diff.transition_type.name != "UNCHANGED"
    ]
    text = _ANSI.sub("", registry_diff.to_string() + "\n" + infra_diff.to_string()).strip()
    return PlanSummary(project, tuple(sorted(changes)), unchanged, tuple(sorted(infra)), text)


def _plan(store: FeatureStore) -> tuple[PlanSummary, Any]:
    definitions = _repo("definitions").build_definitions(_location_of(store))
    registry_diff, infra_diff, new_infra = store.plan(definitions.contents(store.project))
    return _summarize(store.project, registry_diff, infra_diff), new_infra


def plan(store: FeatureStore | None = None) -> PlanSummary:
    """Dry-run ``apply``: the changes the repository would make to the store's registry and infrastructure."""
    return _plan(store or feature_store())[0]


def apply(store: FeatureStore | None = None) -> PlanSummary:
    """Register the repository in the store (objects no longer in the repository are deleted).

    Returns the plan it carried out; a second apply reports no changes. Same code path as
    ``feast apply`` (``apply_total_with_repo_instance``), without the CLI's 8 s of start-up.
    """
    from feast.repo_operations import apply_total_with_repo_instance

    store = store or feature_store()
    summary, new_infra = _plan(store)
    # _plan() ran inference on (and mutated) its objects: apply a fresh set.
    definitions = _repo("definitions").build_definitions(_location_of(store))
    with contextlib.redirect_stdout(sys.stderr):  # Feast echoes its diff; keep stdout for results
        apply_total_with_repo_instance(
            store,
            store.project,
            store.registry,
            definitions.contents(store.project),
            skip_source_validation=False,
        )
    # Feast records the planned infrastructure (SQLite tables) in the registry only on its plan
    # path, which it reserves for type "sqlite"; record it for our SQLite store type too, so that
    # the next plan does not propose to create the tables again.
    if summary.infra_changes:
        store.registry.update_infra(new_infra, store.project, commit=True)
    store.refresh_registry()
    log.info("feast apply %s: %s", store.project, summary.to_dict())
    return summary


# --- offline exports (local profile) ---------------------------------------------------------------


def _utc(value: datetime | date, name: str) -> datetime:
    """``value`` as an aware UTC datetime; a date means its midnight UTC; naive datetimes are refused."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise FeatureStoreError(f"{name}: expected a timezone-aware datetime, got naive {value.isoformat()}")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise FeatureStoreError(f"{name}: expected a datetime or date, got {type(value).__name__}")


def _arrow_type(feast_type: Any) -> Any:
    import pyarrow as pa
    from feast.types import Float64, Int64, String

    mapping = {Int64: pa.int64(), Float64: pa.float64(), String: pa.string()}
    if feast_type not in mapping:
        raise FeatureStoreError(f"feature type {feast_type}: no Parquet type for it; expected Int64, Float64 or String")
    return mapping[feast_type]


def _mart_layout() -> dict[str, tuple[str, dict[str, Any]]]:
    """mart -> (entity join key, mart column -> Feast type) from the repository's views."""
    views, entities, sources = _repo("views"), _repo("entities"), _repo("sources")
    return {
        sources.USER_MART: (entities.USER_JOIN_KEY, views.USER_COLUMNS),
        sources.ITEM_MART: (entities.ITEM_JOIN_KEY, views.ITEM_COLUMNS),
    }


def _snapshot_schema(join_key: str, columns: Mapping[str, Any]) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(join_key, pa.string(), nullable=False),
            pa.field("snapshot_date", pa.date32(), nullable=False),
            pa.field("feature_at", pa.timestamp("us", tz="UTC"), nullable=False),
            *(pa.field(name, _arrow_type(dtype)) for name, dtype in columns.items()),
        ]
    )


def _float_or_none(value: Any) -> Any:
    return None if value is None else float(value)  # PostgreSQL may hand back Decimal


def export_feature_snapshots(
    day: date, *, warehouse_uri: str | None = None, store: FeatureStore | None = None
) -> dict[str, int]:
    """Write the ``snapshot_date = day`` rows of each feature mart to ``<exports>/<mart>/<day>.parquet``.

    An idempotent overwrite of that day's file (atomic rename): re-running a day, or a backfill,
    replaces exactly that day. A day without rows gets an empty file with the schema, so the
    directory always reads. Returns rows written per mart. Only for the ``file`` offline store.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loopline.warehouse import Warehouse

    if isinstance(day, datetime) or not isinstance(day, date):
        raise FeatureStoreError(f"day: expected a datetime.date, got {type(day).__name__} {day!r}")
    store = store or feature_store()
    location = _location_of(store)
    if location.kind != "file":
        raise FeatureStoreError(
            f"export_feature_snapshots: the {location.kind} offline store reads the marts in place; nothing to export"
        )
    uri = warehouse_uri or current_settings().warehouse_uri
    written: dict[str, int] = {}
    with Warehouse.from_uri(uri) as warehouse:
        for mart, (join_key, columns) in _mart_layout().items():
            present = set(warehouse.columns_of(mart))
            if not present:
                raise FeatureStoreError(f"mart {mart} does not exist in {warehouse.display_uri}; run dbt build first")
            wanted = [join_key, "snapshot_date", "feature_at", *columns]
            missing = [name for name in wanted if name not in present]
            if missing:
                raise FeatureStoreError(f"mart {mart} in {warehouse.display_uri} lacks columns {missing}")
            schema = _snapshot_schema(join_key, columns)
            rows = warehouse.query(
                f"SELECT {', '.join(wanted)} FROM {mart} WHERE snapshot_date = ? ORDER BY {join_key}", [day]
            )
            arrays = []
            for index, schema_field in enumerate(schema):
                values = [row[index] for row in rows]
                if pa.types.is_floating(schema_field.type):
                    values = [_float_or_none(value) for value in values]
                arrays.append(pa.array(values, type=schema_field.type))
            table = pa.Table.from_arrays(arrays, schema=schema)
            target = location.mart_dir(mart) / f"{day.isoformat()}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")  # hidden: readers skip dot files
            pq.write_table(table, partial)
            os.replace(partial, target)
            written[mart] = table.num_rows
    log.info("exported feature snapshots of %s: %s", day, written)
    return written


# --- materialization -------------------------------------------------------------------------------


def _window_counts(store: FeatureStore, window_start: datetime, window_end: datetime) -> dict[str, dict[str, int]]:
    """Rows and distinct entities of each feature view's source with feature_at in the (inclusive) window."""
    location = _location_of(store)
    counts: dict[str, dict[str, int]] = {}
    views = _repo("views")
    for view, (mart, (join_key, _)) in zip((views.USER_VIEW, views.ITEM_VIEW), _mart_layout().items(), strict=True):
        if location.kind == "file":
            import pyarrow.compute as pc
            import pyarrow.dataset as ds

            directory = location.mart_dir(mart)
            files = sorted(str(path) for path in directory.glob("*.parquet"))
            if not files:
                counts[view] = {"rows": 0, "entities": 0}
                continue
            dataset = ds.dataset(files, format="parquet")
            condition = (ds.field("feature_at") >= window_start) & (ds.field("feature_at") <= window_end)
            table = dataset.to_table(columns=[join_key], filter=condition)
            counts[view] = {"rows": table.num_rows, "entities": len(pc.unique(table[join_key]))}
        else:
            from loopline.warehouse import Warehouse

            with Warehouse.from_uri(_offline_store_uri(store)) as warehouse:
                rows, entities = warehouse.query(
                    f"SELECT count(*), count(DISTINCT {join_key}) FROM {mart} WHERE feature_at BETWEEN ? AND ?",
                    [window_start, window_end],
                )[0]
            counts[view] = {"rows": int(rows), "entities": int(entities)}
    return counts


def _offline_store_uri(store: FeatureStore) -> str:
    """The ``postgresql://`` URI of the database a PostgreSQL offline store reads (the warehouse)."""
    from urllib.parse import quote

    config = store.config.offline_store
    credentials = quote(config.user, safe="") + (f":{quote(config.password, safe='')}" if config.password else "")
    return f"postgresql://{credentials}@{config.host}:{config.port}/{quote(config.database, safe='')}"


def snapshot_days(window_start: datetime, window_end: datetime) -> list[date]:
    """The snapshot days whose ``feature_at`` (midnight UTC after the day) lies in the inclusive window."""
    first = (window_start - timedelta(microseconds=1)).date()  # feature_at = day + 1 >= window_start
    last = window_end.date() - timedelta(days=1)  # feature_at = day + 1 <= window_end
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def _newer_materialization(store: FeatureStore, views: list[str], window_end: datetime) -> datetime | None:
    """The latest end of an earlier materialization past ``window_end`` (an out-of-order re-run), if any."""
    ends = [
        _utc(end, "materialization interval end")
        for view in views
        for _, end in store.get_feature_view(view).materialization_intervals
    ]
    later = [end for end in ends if end > window_end]
    return max(later) if later else None


def materialize_interval(
    start: datetime | date,
    end: datetime | date,
    *,
    overlap: timedelta = DEFAULT_OVERLAP,
    store: FeatureStore | None = None,
    export: bool | None = None,
    warehouse_uri: str | None = None,
) -> dict[str, Any]:
    """Load the snapshots of one data interval into the online store: ``materialize(start - overlap, end)``.

    A daily run for [D, D+1) therefore loads the snapshots stamped D (day D-1, which dbt rebuilt with
    late events) and D+1 (day D) and nothing newer, so re-runs and backfills never read the future
    of their interval. Feast's bounds are inclusive; the overlap keeps the previous snapshot even if
    they were not. Never ``materialize_incremental``: its window depends on what ran before.

    With the ``file`` offline store the snapshot days of the window are exported from the warehouse
    first (``export=None`` means "when the offline store is file"). Returns a JSON-able record:
    the window, the exported days, and rows / distinct entities per feature view.
    """
    started = time.perf_counter()
    start_utc, end_utc = _utc(start, "start"), _utc(end, "end")
    if not isinstance(overlap, timedelta) or overlap < timedelta(0):
        raise FeatureStoreError(f"overlap: expected a non-negative timedelta, got {overlap!r}")
    if end_utc <= start_utc:
        raise FeatureStoreError(f"interval: expected start < end, got {start_utc.isoformat()} .. {end_utc.isoformat()}")
    store = store or feature_store()
    window_start, window_end = start_utc - overlap, end_utc
    location = _location_of(store)
    exported: dict[str, dict[str, int]] = {}
    if export is None:
        export = location.kind == "file"
    if export:
        for day in snapshot_days(window_start, window_end):
            exported[day.isoformat()] = export_feature_snapshots(day, warehouse_uri=warehouse_uri, store=store)
    counts = _window_counts(store, window_start, window_end)
    views = _repo("views")
    newer = _newer_materialization(store, [views.USER_VIEW, views.ITEM_VIEW], window_end)
    if newer is not None and store.config.online_store.type == "sqlite":
        log.warning(
            "an interval ending %s was materialized before; SQLite keeps the last write, so entities of this "
            "window now hold older snapshots until the newest interval is materialized again",
            newer.isoformat(),
        )
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress bars
        store.materialize(window_start, window_end, feature_views=[views.USER_VIEW, views.ITEM_VIEW])
    record = {
        "project": store.project,
        "interval_start": start_utc.isoformat(),
        "interval_end": end_utc.isoformat(),
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "exported": exported,
        "views": counts,
        "newer_interval_end": newer.isoformat() if newer else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("materialized %s", record)
    return record


# --- training sets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceLayout:
    """A FeatureService resolved to its parts: features per batch view, and its on-demand views."""

    name: str
    view_features: dict[str, tuple[str, ...]]  # feature view -> features the service lists
    view_join_keys: dict[str, tuple[str, ...]]
    on_demand: dict[str, tuple[str, ...]]  # on-demand view -> output features the service lists
    on_demand_inputs: dict[str, tuple[str, ...]]  # feature view -> features the on-demand views read
    request_fields: tuple[str, ...]

    @property
    def feature_columns(self) -> list[str]:
        """The service's features in order: the model's inputs."""
        columns = [name for names in self.view_features.values() for name in names]
        return columns + [name for names in self.on_demand.values() for name in names]


def service_layout(store: FeatureStore | None = None, feature_service: str = CTR_RANKER_V1) -> ServiceLayout:
    """Resolve a registered FeatureService into its views' features, on-demand views and request fields.

    Raises FeatureStoreError if the service is not registered in the store (run ``apply`` first).
    """
    store = store or feature_store()
    try:
        service = store.get_feature_service(feature_service)
    except Exception as error:  # Feast raises its own FeatureServiceNotFoundException
        raise FeatureStoreError(
            f"feature service {feature_service!r} is not in project {store.project!r}; run apply() first"
        ) from error
    view_features: dict[str, tuple[str, ...]] = {}
    join_keys: dict[str, tuple[str, ...]] = {}
    on_demand: dict[str, tuple[str, ...]] = {}
    inputs: dict[str, list[str]] = {}
    request_fields: list[str] = []
    odfv_names = {view.name for view in store.list_on_demand_feature_views()}
    for projection in service.feature_view_projections:
        names = tuple(feature.name for feature in projection.features)
        if projection.name in odfv_names:
            odfv = store.get_on_demand_feature_view(projection.name)
            on_demand[projection.name] = names
            for source in odfv.source_feature_view_projections.values():
                inputs.setdefault(source.name, [])
                inputs[source.name] += [f.name for f in source.features if f.name not in inputs[source.name]]
                if source.name not in join_keys:
                    join_keys[source.name] = tuple(store.get_feature_view(source.name).join_keys)
            for request_source in odfv.source_request_sources.values():
                request_fields += [f.name for f in request_source.schema if f.name not in request_fields]
        else:
            view_features[projection.name] = names
            join_keys[projection.name] = tuple(store.get_feature_view(projection.name).join_keys)
    return ServiceLayout(
        name=feature_service,
        view_features=view_features,
        view_join_keys=join_keys,
        on_demand=on_demand,
        on_demand_inputs={view: tuple(names) for view, names in inputs.items()},
        request_fields=tuple(request_fields),
    )


def feature_columns(store: FeatureStore | None = None, feature_service: str = CTR_RANKER_V1) -> list[str]:
    """The model inputs a FeatureService lists, in order (columns of ``training_set`` and ``online``)."""
    return service_layout(store, feature_service).feature_columns


def _read_examples(uri: str, start: datetime, end: datetime) -> pd.DataFrame:
    import pandas as pd

    from loopline.warehouse import Warehouse

    with Warehouse.from_uri(uri) as warehouse:
        columns = warehouse.columns_of("training_examples")
        if not columns:
            raise FeatureStoreError(f"training_examples does not exist in {warehouse.display_uri}; run dbt build first")
        rows = warehouse.query(
            f"SELECT {', '.join(columns)} FROM training_examples WHERE event_at >= ? AND event_at < ? "
            "ORDER BY event_at, impression_id",
            [start, end],
        )
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for column in ("event_at", "clicked_at", "purchased_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True).dt.as_unit("us")
    return frame


def _known_entities(store: FeatureStore, view: str, keys: list[str]) -> set:
    """Entity keys having at least one snapshot in a file source (tuples if the view has several keys)."""
    import pyarrow.dataset as ds

    files = sorted(str(path) for path in Path(store.get_feature_view(view).batch_source.path).glob("*.parquet"))
    if not files:
        return set()
    table = ds.dataset(files, format="parquet").to_table(columns=keys)
    if len(keys) == 1:
        return set(table.column(keys[0]).unique().to_pylist())
    return set(zip(*(table.column(key).to_pylist() for key in keys), strict=True))


def point_in_time_features(
    frame: pd.DataFrame, *, store: FeatureStore, layout: ServiceLayout, rows_name: str = "the rows"
) -> pd.DataFrame:
    """``frame`` with the service's features as of each row's ``event_at`` (UTC), point-in-time.

    ``frame`` holds the entity keys of the service's views, ``event_at`` and optionally ``position``
    (0 when absent; it feeds only the on-demand ``position_discount``). Each feature view is joined by
    Feast's offline store on (entity, event_at) and merged back (see ``training_set`` for why one view
    at a time); on-demand features come from the registered transformation, as online. Rows whose
    entity has no snapshot get NaN features, never dropped; columns named like a feature are replaced.
    """
    import pandas as pd
    import pyarrow as pa
    import pytz

    sources = _repo("sources")
    location = _location_of(store)
    wanted: dict[str, list[str]] = {view: list(names) for view, names in layout.view_features.items()}
    for view, names in layout.on_demand_inputs.items():
        wanted.setdefault(view, [])
        wanted[view] += [name for name in names if name not in wanted[view]]
    for view, names in wanted.items():
        keys = list(layout.view_join_keys[view])
        missing_keys = [key for key in keys if key not in frame]
        if missing_keys:
            raise FeatureStoreError(f"feature view {view} joins on {missing_keys}, which {rows_name} lacks")
        frame = frame.drop(columns=[name for name in names if name in frame.columns])
        entity_df = (
            frame[keys + ["event_at"]]
            .drop_duplicates()
            .rename(columns={"event_at": ENTITY_TIMESTAMP})
            .reset_index(drop=True)
        )
        # Feast's file store re-stamps every row in Python unless the zone is pytz's UTC object.
        entity_df[ENTITY_TIMESTAMP] = entity_df[ENTITY_TIMESTAMP].dt.tz_convert(pytz.utc)
        if location.kind == "file":
            # Dask's join cannot sort rows of entities without any snapshot (null timestamps): leave
            # those out; the merge below gives them NaN features.
            known = _known_entities(store, view, keys)
            entity_df = (
                entity_df[entity_df[keys].apply(tuple, axis=1).isin(known)]
                if len(keys) > 1
                else entity_df[entity_df[keys[0]].isin(known)]
            )
        if entity_df.empty:
            for name in names:
                frame[name] = pd.Series([None] * len(frame), dtype="float64", index=frame.index)
            continue
        with contextlib.redirect_stdout(sys.stderr):
            joined = store.get_historical_features(
                entity_df=entity_df, features=[f"{view}:{name}" for name in names], full_feature_names=False
            ).to_df()
        joined[ENTITY_TIMESTAMP] = pd.to_datetime(joined[ENTITY_TIMESTAMP], utc=True).dt.as_unit("us")
        joined = joined[keys + [ENTITY_TIMESTAMP, *names]].drop_duplicates(subset=keys + [ENTITY_TIMESTAMP])
        frame = frame.merge(
            joined.rename(columns={ENTITY_TIMESTAMP: "event_at"}), on=keys + ["event_at"], how="left", validate="m:1"
        )

    position = frame["position"] if "position" in frame.columns else pd.Series([0] * len(frame), index=frame.index)
    for view_name, outputs in layout.on_demand.items():
        odfv = store.get_on_demand_feature_view(view_name)
        request_values = {sources.POSITION: position.fillna(0).astype("int64"), sources.REQUEST_AT: frame["event_at"]}
        unknown = [name for name in layout.request_fields if name not in request_values]
        if unknown:
            raise FeatureStoreError(f"on-demand view {view_name} needs request fields {unknown} that {rows_name} lacks")
        inputs = {name: frame[name] for names in layout.on_demand_inputs.values() for name in names}
        table = pa.Table.from_pandas(pd.DataFrame({**inputs, **request_values}), preserve_index=False)
        outputs_table = odfv.transform_arrow(table, full_feature_names=False) if len(frame) else None
        for name in outputs:
            frame[name] = (
                pd.to_numeric(outputs_table[name].to_pandas(), errors="coerce").to_numpy()
                if outputs_table is not None
                else pd.Series(dtype="float64")
            )
    return frame


def training_set(
    start: datetime | date,
    end: datetime | date,
    *,
    warehouse_uri: str | None = None,
    store: FeatureStore | None = None,
    feature_service: str = CTR_RANKER_V1,
) -> pd.DataFrame:
    """The impressions of [start, end) from ``training_examples`` with the service's features as of each
    impression's time (``event_at``), one row per impression, in ``event_at`` order.

    Each feature view is joined point-in-time by Feast's offline store on (entity, event_at): the
    newest snapshot with ``feature_at <= event_at`` and within the view's TTL, never a later one.
    The views are joined one at a time and merged back onto the impressions because Feast's file
    offline store drops entity rows when joining several views at once (rows sharing one entity and
    timestamp, and rows whose entity has only out-of-TTL snapshots; see docs/features.md). The
    on-demand features are computed with the registered transformation, as online. Missing features
    are NaN, never dropped rows; ``frame.attrs`` holds ``feature_columns``, ``missing_share`` per
    feature and ``rows_missing_any``.
    """
    start_utc, end_utc = _utc(start, "start"), _utc(end, "end")
    if end_utc <= start_utc:
        raise FeatureStoreError(f"interval: expected start < end, got {start_utc.isoformat()} .. {end_utc.isoformat()}")
    store = store or feature_store()
    layout = service_layout(store, feature_service)
    examples = _read_examples(warehouse_uri or current_settings().warehouse_uri, start_utc, end_utc)
    frame = examples.copy()

    frame = point_in_time_features(examples.copy(), store=store, layout=layout, rows_name="training_examples")

    columns = layout.feature_columns
    frame = frame[[*examples.columns, *columns]]
    missing = {name: float(frame[name].isna().mean()) if len(frame) else 0.0 for name in columns}
    frame.attrs.update(
        feature_service=feature_service,
        feature_columns=columns,
        missing_share=missing,
        rows_missing_any=float(frame[columns].isna().any(axis=1).mean()) if len(frame) else 0.0,
    )
    worst = sorted(missing.items(), key=lambda item: -item[1])[:3]
    log.info(
        "training set %s .. %s: %d impressions, %d features, rows with a missing feature %.1f%%, most missing %s",
        start_utc.isoformat(),
        end_utc.isoformat(),
        len(frame),
        len(columns),
        100 * frame.attrs["rows_missing_any"],
        worst,
    )
    return frame


# --- online ----------------------------------------------------------------------------------------


@dataclass
class OnlineFeatures:
    """The features of one user and its candidate items, one row per item (in the order asked)."""

    user_id: str
    item_ids: list[str]
    columns: dict[str, list[Any]]  # feature -> values per item (None where missing)
    feature_names: list[str]
    missing_users: list[str]
    missing_items: list[str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per item: ``user_id``, ``item_id`` and the features."""
        return [
            {
                "user_id": self.user_id,
                "item_id": item_id,
                **{name: self.columns[name][i] for name in self.feature_names},
            }
            for i, item_id in enumerate(self.item_ids)
        ]

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (missing values NaN), columns ``user_id``, ``item_id``, features."""
        import pandas as pd

        data = {"user_id": [self.user_id] * len(self.item_ids), "item_id": list(self.item_ids)}
        data |= {name: self.columns[name] for name in self.feature_names}
        return pd.DataFrame(data)


@dataclass(frozen=True)
class _ViewRead:
    """One feature view as ``online`` reads it: the registry's view and the features asked of the online store."""

    view: Any  # the FeatureView from the registry, what Feast's own lookup hands to online_read
    join_key: str  # the user's or the item's join key
    features: tuple[str, ...]  # the service's features of the view, then the on-demand inputs it holds


@dataclass(frozen=True)
class _OnlinePlan:
    """What ``online`` reads for one FeatureService, resolved once: the online store, the views and
    their features, the on-demand views and their inputs."""

    store: Any
    layout: ServiceLayout
    refs: tuple[str, ...]  # batch features of the service plus the inputs of its on-demand views
    user_features: frozenset[str]
    item_features: frozenset[str]
    on_demand: tuple[Any, ...]  # OnDemandFeatureView objects from the registry
    on_demand_inputs: tuple[tuple[str, ...], ...]  # the input features of each on-demand view
    reads: tuple[_ViewRead, ...]  # one online_read per feature view and lookup
    online_store: Any  # the provider's OnlineStore (Feast's Redis store, our SQLite subclass, ...)
    config: Any  # the store's RepoConfig, as Feast passes it to online_read
    user_join_key: str
    item_join_key: str
    position_field: str
    request_at_field: str


_ONLINE_PLANS: dict[tuple[int, str], _OnlinePlan] = {}


def _online_plan(store: FeatureStore, name: str) -> _OnlinePlan:
    """The service resolved once per store and service (``forget_cached_services`` after an apply)."""
    from feast.types import String

    cached = _ONLINE_PLANS.get((id(store), name))
    if cached is not None and cached.store is store:
        return cached
    layout = service_layout(store, name)
    entities, sources = _repo("entities"), _repo("sources")
    refs: list[str] = []
    view_features: dict[str, list[str]] = {}
    for view, names in [*layout.view_features.items(), *layout.on_demand_inputs.items()]:
        refs += [f"{view}:{feature}" for feature in names if f"{view}:{feature}" not in refs]
        wanted = view_features.setdefault(view, [])
        wanted += [feature for feature in names if feature not in wanted]
    reads = []
    for view_name, names in view_features.items():
        keys = layout.view_join_keys[view_name]
        if keys not in ((entities.USER_JOIN_KEY,), (entities.ITEM_JOIN_KEY,)):
            raise FeatureStoreError(
                f"feature view {view_name} joins on {list(keys)}: online() looks up views keyed by "
                f"{entities.USER_JOIN_KEY!r} or {entities.ITEM_JOIN_KEY!r} alone"
            )
        view = store.get_feature_view(view_name)
        key_type = {column.name: column.dtype for column in view.entity_columns}.get(keys[0], String)
        if key_type != String:
            raise FeatureStoreError(f"feature view {view_name}: expected a String join key {keys[0]!r}, got {key_type}")
        reads.append(_ViewRead(view=view, join_key=keys[0], features=tuple(names)))
    on_demand = tuple(store.get_on_demand_feature_view(view) for view in layout.on_demand)
    plan = _OnlinePlan(
        store=store,
        layout=layout,
        refs=tuple(refs),
        user_features=frozenset(_entity_features(layout, entities.USER_JOIN_KEY)),
        item_features=frozenset(_entity_features(layout, entities.ITEM_JOIN_KEY)),
        on_demand=on_demand,
        on_demand_inputs=tuple(tuple(_odfv_inputs(odfv)) for odfv in on_demand),
        reads=tuple(reads),
        online_store=store._get_provider().online_store,
        config=store.config,
        user_join_key=entities.USER_JOIN_KEY,
        item_join_key=entities.ITEM_JOIN_KEY,
        position_field=sources.POSITION,
        request_at_field=sources.REQUEST_AT,
    )
    _ONLINE_PLANS[(id(store), name)] = plan
    return plan


def forget_cached_services() -> None:
    """Drop the resolved FeatureServices (call after an ``apply`` in a long-running server)."""
    _ONLINE_PLANS.clear()


def _entity_features(layout: ServiceLayout, join_key: str) -> list[str]:
    """Features the service reads from the views keyed by ``join_key`` (on-demand inputs included)."""
    names: list[str] = []
    for view, features in [*layout.view_features.items(), *layout.on_demand_inputs.items()]:
        if layout.view_join_keys.get(view) == (join_key,):
            names += [feature for feature in features if feature not in names]
    return names


def online(
    user_id: str,
    item_ids: Sequence[str],
    *,
    store: FeatureStore | None = None,
    request_features: Mapping[str, Any] | None = None,
    feature_service: str = CTR_RANKER_V1,
) -> OnlineFeatures:
    """The service's features for ``user_id`` x each of ``item_ids``, read from Feast's online store.

    One ``online_read`` of the store's own online-store class per feature view: the user's views
    with the user's key, the items' views with each distinct item once. The values are what Feast's
    ``get_online_features`` returns for the entity rows (user_id, item_id) (a test checks it on
    SQLite and Redis), without its response assembly (most of its CPU time for 100 items).
    As in Feast 0.67, an online row is served however old it is: Feast applies a view's TTL only
    to historical retrieval, so online staleness is bounded by the materialization schedule.
    The service's on-demand features are then computed by the registered transformation
    (the registered function of the on-demand view, the same one training applies).

    ``request_features`` gives the request fields, each a scalar for every item or a sequence per
    item: ``position`` (default 0; it only feeds ``position_discount``, which ctr_ranker_v1 does
    not list) and ``request_at`` (default now, UTC).
    ``missing_users`` / ``missing_items`` list the entities the online store has no features for
    (no row with an event time in any of their views); their features are None.
    """
    if not isinstance(user_id, str) or not user_id:
        raise FeatureStoreError(f"user_id: expected a non-empty string, got {user_id!r}")
    items = list(item_ids)
    if not items or not all(isinstance(item, str) and item for item in items):
        raise FeatureStoreError(f"item_ids: expected a non-empty sequence of non-empty strings, got {item_ids!r}")
    store = store or feature_store()
    plan = _online_plan(store, feature_service)
    count = len(items)
    request = _request_columns(plan, request_features or {}, count)

    index_of = {item: index for index, item in enumerate(dict.fromkeys(items))}  # distinct items, first seen first
    distinct = list(index_of)
    entity_ids = {plan.user_join_key: [user_id], plan.item_join_key: distinct}
    order = None if len(distinct) == count else [index_of[item] for item in items]
    columns: dict[str, list[Any]] = {}
    user_found = False
    item_found = [False] * len(distinct)
    for read in plan.reads:
        rows = _read_values(plan, read, entity_ids[read.join_key])
        if read.join_key == plan.user_join_key:
            stamp, values = rows[0]
            user_found = user_found or _found(stamp, values)
            for name, value in zip(read.features, values or [None] * len(read.features), strict=True):
                columns[name] = [value] * count
            continue
        item_found = [found or _found(stamp, values) for found, (stamp, values) in zip(item_found, rows, strict=True)]
        blank = [None] * len(read.features)
        per_item = [blank if values is None else values for _, values in rows]
        if order is not None:
            per_item = [per_item[index] for index in order]
        for name, column in zip(read.features, zip(*per_item, strict=True), strict=True):
            columns[name] = list(column)
    for odfv, input_names in zip(plan.on_demand, plan.on_demand_inputs, strict=True):
        outputs = _transform(odfv, {name: columns[name] for name in input_names} | request)
        for name in plan.layout.on_demand[odfv.name]:
            columns[name] = list(outputs[name])
    features = plan.layout.feature_columns
    return OnlineFeatures(
        user_id=user_id,
        item_ids=items,
        columns={name: columns[name] for name in features},
        feature_names=features,
        missing_users=[] if user_found else [user_id],
        missing_items=[item for item, found in zip(distinct, item_found, strict=True) if not found],
    )


@functools.lru_cache(maxsize=16_384)
def _entity_key(join_key: str, value: str) -> Any:
    """The ``EntityKey`` proto Feast builds for a string entity, kept for the most recent 16,384 ids
    (about 13 MB; the online stores only read it; building 101 of them was 5-10 % of a lookup)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _found(stamp: datetime | None, values: Mapping[str, Any] | None) -> bool:
    """Whether an ``online_read`` row holds the entity: values and a non-zero event time.

    SQLite answers an unknown key with ``(None, None)`` (NOT_FOUND in Feast's response), Redis with
    empty values at time zero (PRESENT, with a zero event timestamp): both are missing.
    """
    if values is None or stamp is None:
        return False
    return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)) != _EPOCH


def _read_values(
    plan: _OnlinePlan, read: _ViewRead, entity_ids: list[str]
) -> list[tuple[datetime | None, Sequence | None]]:
    """One view's rows for ``entity_ids``: event time and the Python values of ``read.features`` in order.

    Through the store's ``online_read_values`` where it has one (our SQLite and Redis stores: decoded
    values are remembered), else the store's ``online_read``, decoded (``row_memory.read_rows``)."""
    read_values = getattr(plan.online_store, "online_read_values", None)
    if read_values is not None:
        return read_values(plan.config, read.view, read.join_key, entity_ids, read.features)
    from loopline.features.row_memory import read_rows

    return read_rows(plan.online_store, plan.config, read.view, read.join_key, entity_ids, read.features)


def proto_values(values: Mapping[str, Any] | None, names: Sequence[str]) -> list[Any]:
    """The Python values of ``names`` in a row of ``Value`` protos (None where absent, unset or null)."""
    if values is None:
        return [None] * len(names)
    return [
        None
        if (value := values.get(name)) is None or (kind := value.WhichOneof("val")) is None or kind == "null_val"
        else getattr(value, kind)
        for name in names
    ]


def _request_columns(plan: _OnlinePlan, given: Mapping[str, Any], count: int) -> dict[str, list[Any]]:
    """One value per item for each request field: the caller's (scalar or per item) or the default."""
    fields = plan.layout.request_fields
    unknown = [name for name in given if name not in fields]
    if unknown:
        raise FeatureStoreError(f"request_features: unknown fields {unknown}; expected some of {list(fields)}")
    defaults: dict[str, Any] = {plan.position_field: 0, plan.request_at_field: datetime.now(UTC)}
    columns: dict[str, list[Any]] = {}
    for name in fields:
        value = given.get(name, defaults.get(name))
        values = list(value) if isinstance(value, (list, tuple)) else [value] * count
        if len(values) != count:
            raise FeatureStoreError(
                f"request_features[{name!r}]: expected one value per item ({count}), got {len(values)}"
            )
        if isinstance(value, datetime):
            columns[name] = [_utc(value, f"request_features[{name!r}]")] * count
        else:
            columns[name] = [
                _utc(item, f"request_features[{name!r}]") if isinstance(item, datetime) else item for item in values
            ]
    return columns


def _odfv_inputs(odfv: Any) -> list[str]:
    return [feature.name for source in odfv.source_feature_view_projections.values() for feature in source.features]


def _transform(odfv: Any, inputs: dict[str, list[Any]]) -> dict[str, Sequence[Any]]:
    """Apply an on-demand view's registered transformation to columns (Python mode: a plain call).

    In Python mode the registered function is called directly: ``transform_dict`` would only add
    the inputs under their full names (``view__feature``) and type-check its arguments, which cost
    as much as the function itself per request; a test holds both equal."""
    if odfv.mode == "python" and not odfv.singleton:
        return odfv.feature_transformation.udf(inputs)
    import pyarrow as pa

    return odfv.transform_arrow(pa.table(inputs), full_feature_names=False).to_pydict()


# --- command line ----------------------------------------------------------------------------------


def _cli_plan(args: argparse.Namespace) -> int:
    summary = apply() if args.features_command == "apply" else plan()
    print(summary.text or "No changes")
    return 0


def _cli_materialize(args: argparse.Namespace) -> int:
    record = materialize_interval(args.start, args.end, overlap=timedelta(hours=args.overlap_hours))
    print(json.dumps(record, indent=2))
    return 0


def _cli_config(args: argparse.Namespace) -> int:
    print(write_feature_store_yaml(args.path))
    return 0


def _cli_online(args: argparse.Namespace) -> int:
    result = online(args.user_id, args.item_ids)
    print(result.frame.to_string(index=False))
    if result.missing_users or result.missing_items:
        print(f"missing: users {result.missing_users}, items {result.missing_items}")
    return 0


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _reporting_errors(handler):
    """Turn a FeatureStoreError into its message on stderr and exit code 1 (no traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FeatureStoreError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``loopline features {plan,apply,materialize,config,online}``."""
    parser = subparsers.add_parser("features", help="the Feast feature store (plan, apply, materialize, online)")
    actions = parser.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    for name, text in (("plan", "show what apply would change"), ("apply", "register feature_repo/ in the store")):
        actions.add_parser(name, help=text).set_defaults(handler=_reporting_errors(_cli_plan))
    materialize = actions.add_parser("materialize", help="load one interval of snapshots into the online store")
    materialize.add_argument("start", type=_aware, help="interval start, ISO (UTC if no offset)")
    materialize.add_argument("end", type=_aware, help="interval end, ISO (UTC if no offset)")
    materialize.add_argument("--overlap-hours", type=float, default=DEFAULT_OVERLAP.total_seconds() / 3600)
    materialize.set_defaults(handler=_reporting_errors(_cli_materialize))
    config = actions.add_parser("config", help="write the rendered feature_store.yaml for the Feast CLI")
    config.add_argument("--path", type=Path, default=None)
    config.set_defaults(handler=_reporting_errors(_cli_config))
    lookup = actions.add_parser("online", help="online features of a user and items")
    lookup.add_argument("user_id")
    lookup.add_argument("item_ids", nargs="+")
    lookup.set_defaults(handler=_reporting_errors(_cli_online))


__all__ = [
    "CTR_RANKER_V1",
    "DEFAULT_OVERLAP",
    "LABEL_COLUMNS",
    "FeatureStoreError",
    "OnlineFeatures",
    "PlanSummary",
    "ServiceLayout",
    "apply",
    "export_feature_snapshots",
    "feature_columns",
    "feature_store",
    "forget_cached_services",
    "materialize_interval",
    "online",
    "plan",
    "render_config",
    "repo_config",
    "repo_definitions",
    "service_layout",
    "snapshot_days",
    "training_set",
    "write_feature_store_yaml",
]
