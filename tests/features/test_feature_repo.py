"""The feature repository's definitions, the request-feature transformation and the rendered configs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from loopline import config, features
from loopline.features import FeatureStoreError

CHECKOUT = Path(__file__).resolve().parents[2]


def definitions(tmp_path: Path):
    sources = features._repo("sources")
    return features._repo("definitions").build_definitions(
        sources.OfflineLocation(kind="file", parquet_root=str(tmp_path / "offline"))
    )


def test_ctr_ranker_v1_lists_exactly_the_model_inputs(tmp_path: Path) -> None:
    services = features._repo("services")
    repo = definitions(tmp_path)
    (service,) = repo.services
    assert service.name == features.CTR_RANKER_V1 == services.CTR_RANKER_V1
    listed = {projection.name: [f.name for f in projection.features] for projection in service.feature_view_projections}
    assert listed == {
        "user_features": list(services.CTR_RANKER_V1_USER_FEATURES),
        "item_features": list(services.CTR_RANKER_V1_ITEM_FEATURES),
        "request_features": list(services.CTR_RANKER_V1_REQUEST_FEATURES),
    }
    # Every listed feature exists in its view, and names are unique across the views.
    schema = {
        view.name: {f.name for f in view.features} for view in (repo.user_view, repo.item_view, repo.request_view)
    }
    for view, names in listed.items():
        assert set(names) <= schema[view], view
    all_names = [name for names in schema.values() for name in names]
    assert len(all_names) == len(set(all_names))


def test_views_join_point_in_time_on_feature_at_with_a_two_day_ttl(tmp_path: Path) -> None:
    repo = definitions(tmp_path)
    for view, mart in ((repo.user_view, "user_features"), (repo.item_view, "item_features")):
        assert view.ttl == timedelta(days=2)
        assert view.batch_source.timestamp_field == "feature_at"
        assert view.batch_source.path == str(tmp_path / "offline" / mart)
        assert Path(view.batch_source.path).is_absolute()
    assert repo.user_view.batch_source.field_mapping["ctr_7d"] == "user_ctr_7d"
    assert repo.item_view.batch_source.field_mapping["category"] == "item_category"


def test_objects_are_built_fresh_each_time(tmp_path: Path) -> None:
    first, second = definitions(tmp_path), definitions(tmp_path)
    assert first.request_view is not second.request_view
    assert first.request_view == second.request_view


def udf(**columns):
    return features._repo("views").request_features(columns)


def test_request_features_transformation() -> None:
    paris = timezone(timedelta(hours=1))
    result = udf(
        position=[0, 2, 5, None],
        request_at=[
            datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
            datetime(2026, 3, 2, 0, 30, tzinfo=paris),  # 23:30 UTC the day before
            datetime(2026, 3, 1, 7, 0),  # naive: taken as UTC
            None,
        ],
        user_top_category_28d=["shoes", "shoes", None, "toys"],
        user_top_category_share_28d=[0.75, 0.75, 0.0, float("nan")],
        item_category=["shoes", "books", "toys", "toys"],
    )
    assert result["position_discount"] == [1.0, 0.5, pytest.approx(1 / 2.807354922), None]
    assert result["hour_of_day"] == [23, 23, 7, None]
    assert result["user_item_category_match"] == [1, 0, 0, None]
    assert result["user_item_category_affinity"] == [0.75, 0.0, 0.0, None]


def test_local_config_lives_under_loopline_home(isolated_home: Path) -> None:
    rendered = features.render_config()
    assert not re.search(r"\$\{[A-Za-z_]", rendered)
    raw = yaml.safe_load(rendered)
    assert raw["project"] == "loopline"
    assert raw["registry"]["path"] == str(isolated_home / "feast" / "registry.db")
    assert raw["online_store"] == {
        "type": "loopline.features.sqlite_store.LooplineSqliteOnlineStore",
        "path": str(isolated_home / "feast" / "online.db"),
    }
    assert raw["offline_store"] == {"type": "file"}
    assert raw["entity_key_serialization_version"] == 3
    repo_config = features.repo_config(project="other_project")
    assert repo_config.project == "other_project"
    assert repo_config.repo_path == isolated_home / "feast"


def test_stack_config_takes_servers_and_secrets_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_PROFILE", "stack")
    monkeypatch.setenv("LOOPLINE_POSTGRES_URL", "postgresql://feast:s3cr%22et@db.internal:5433/meta")
    monkeypatch.setenv("LOOPLINE_WAREHOUSE_URI", "postgresql://dbt:pw@wh.internal/warehouse?sslmode=disable")
    monkeypatch.setenv("LOOPLINE_REDIS_URL", "redis://:redispw@cache.internal:6380/3")
    config.settings.cache_clear()
    template = (features.REPO_DIR / "feature_store.stack.yaml").read_text()
    assert "s3cr" not in template and "redispw" not in template  # secrets only arrive rendered
    raw = yaml.safe_load(features.render_config())
    assert raw["registry"]["registry_type"] == "sql"
    assert raw["registry"]["path"] == "postgresql+psycopg://feast:s3cr%22et@db.internal:5433/meta"
    assert raw["online_store"] == {
        "type": "loopline.features.redis_store.LooplineRedisOnlineStore",
        "connection_string": "cache.internal:6380,db=3,password=redispw",
    }
    offline = raw["offline_store"]
    assert offline["type"] == "postgres"
    assert (offline["host"], offline["port"], offline["database"]) == ("wh.internal", 5432, "warehouse")
    assert (offline["user"], offline["password"], offline["sslmode"]) == ("dbt", "pw", "disable")
    assert features.repo_config().online_store.type == "loopline.features.redis_store.LooplineRedisOnlineStore"


def test_stack_profile_needs_a_postgres_warehouse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOPLINE_PROFILE", "stack")
    monkeypatch.setenv("LOOPLINE_WAREHOUSE_URI", f"duckdb://{tmp_path}/w.duckdb")
    config.settings.cache_clear()
    with pytest.raises(FeatureStoreError, match="LOOPLINE_WAREHOUSE_URI"):
        features.render_config()


def test_unknown_placeholder_and_bad_project_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "feature_store.local.yaml").write_text("project: ${LOOPLINE_FEAST_PROJECT}\nx: ${NOT_A_SETTING}\n")
    monkeypatch.setattr(features, "REPO_DIR", tmp_path)
    with pytest.raises(FeatureStoreError, match="NOT_A_SETTING"):
        features.render_config()
    with pytest.raises(FeatureStoreError, match="project"):
        features.project_name("_bad name")


def test_apply_writes_nothing_into_the_checkout(isolated_home: Path) -> None:
    before = sorted(p.name for p in (CHECKOUT / "feature_repo").iterdir())
    store = features.feature_store()
    features.apply(store)
    assert (isolated_home / "feast" / "registry.db").is_file()
    assert (isolated_home / "feast" / "online.db").is_file()
    assert sorted(p.name for p in (CHECKOUT / "feature_repo").iterdir()) == before
    assert not (CHECKOUT / "data").exists()


def test_write_feature_store_yaml_is_private(isolated_home: Path) -> None:
    path = features.write_feature_store_yaml()
    assert path == isolated_home / "feast" / "feature_store.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text())["online_store"]["type"].endswith("SqliteOnlineStore")


def test_the_feast_cli_entry_point_exposes_the_objects(isolated_home: Path) -> None:
    import importlib

    features.load_feature_repo()
    repo = importlib.import_module("feature_repo.repo")
    assert repo.ctr_ranker_v1.name == "ctr_ranker_v1"
    assert repo.user_features.batch_source.path == str(isolated_home / "feast" / "offline" / "user_features")
    lines = (features.REPO_DIR / ".feastignore").read_text().splitlines()
    ignored = {line.split("#")[0].strip() for line in lines} - {""}
    modules = sorted(p.name for p in features.REPO_DIR.glob("*.py"))
    assert sorted(set(modules) - set(ignored)) == ["repo.py"]  # the CLI imports only repo.py
