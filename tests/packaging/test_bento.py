"""A real Bento of a real registered model: built, exported (local disk and S3), served and validated.

One Bento is built for the session (``packaged``); the validations start it with ``bentoml serve`` in
a subprocess and talk to it over HTTP. A validation against another version's offline scores must
fail for real (the served scores are those of the Bento's version), naming the check.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from tests.packaging.world import PackagingWorld

pytestmark = pytest.mark.slow


def test_package_imports_builds_labels_and_exports_locally(world: PackagingWorld, packaged):
    import bentoml

    from loopline.registry import client

    version = world.versions[0]
    assert packaged.mlflow_version == version
    assert packaged.model_tag == f"loopline-ctr:v{version}"
    assert packaged.bento_tag.startswith(f"loopline-ranker:v{version}-")
    assert Path(packaged.bentoml_home) == world.bentoml_home

    model = bentoml.models.get(packaged.model_tag)
    assert model.info.labels["mlflow_version"] == version
    bento = bentoml.bentos.get(packaged.bento_tag)
    registered = client().get_model_version("loopline-ctr", version)
    labels = bento.info.labels
    assert labels["mlflow_version"] == version and labels["mlflow_run_id"] == registered.run_id
    assert labels["bento_model"] == packaged.model_tag and labels["packaged_by"] == "tests/packaging"
    assert labels["feature_service"] == "ctr_ranker_v1"  # lineage copied from the version's tags
    assert packaged.model_tag in {str(info.tag) for info in bento.info.all_models}
    assert {"LOOPLINE_SERVING_MODEL": packaged.model_tag}.items() <= {e.name: e.value for e in bento.info.envs}.items()

    exported = Path(urlsplit(packaged.export_uri).path)
    assert exported.is_file() and exported.stat().st_size == packaged.size_bytes > 100_000
    assert exported.parent.parent == world.home / "artifacts" / "bentos"
    with tarfile.open(exported) as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        requirements = archive.extractfile("./env/python/requirements.txt").read().decode()
    for expected in (
        "bento.yaml",
        "src/models/service.py",
        "src/models/ctr_ranker.py",
        "src/loopline/serving/packaging.py",
        "src/loopline/policy/gates.yaml",
        "src/feature_repo/services.py",
        f"models/loopline-ctr/v{version}/scorer.pt",
    ):
        assert expected in names, f"{expected} missing from the exported Bento"
    assert not any("__pycache__" in name for name in names)
    assert "torch==2.13.0+cpu" in requirements.splitlines() and "feast==0.67.0" in requirements.splitlines()
    assert packaged.seconds["build"] > 0 and packaged.seconds["export"] > 0


def test_package_exports_to_s3(world: PackagingWorld, s3_endpoint: str, s3_bucket: str, monkeypatch):
    from loopline import config
    from loopline.logstore import make_s3_client
    from loopline.serving.packaging import package

    monkeypatch.setenv("LOOPLINE_ARTIFACT_URI", f"s3://{s3_bucket}/artifacts")
    monkeypatch.setenv("LOOPLINE_S3_ENDPOINT_URL", s3_endpoint)
    config.settings.cache_clear()
    result = package(world.versions[1])
    parts = urlsplit(result.export_uri)
    assert parts.scheme == "s3" and parts.netloc == s3_bucket
    assert parts.path.startswith(f"/artifacts/bentos/loopline-ranker/v{world.versions[1]}-")
    head = make_s3_client(s3_endpoint).head_object(Bucket=s3_bucket, Key=parts.path.lstrip("/"))
    assert head["ContentLength"] == result.size_bytes > 100_000

    # Another worker (without the Bento in its store) validates from the export: it is imported back.
    import bentoml

    from loopline.serving.packaging import find_or_import_bento

    bentoml.bentos.delete(result.bento_tag)
    imported = find_or_import_bento(result.bento_tag)
    assert str(imported.tag) == result.bento_tag and imported.info.labels["mlflow_version"] == world.versions[1]
    assert bentoml.bentos.get(result.bento_tag).info.labels == imported.info.labels


def test_validate_serves_the_bento_and_every_check_passes(world: PackagingWorld, packaged):
    from loopline.registry import verdict_history
    from loopline.serving.packaging import validate

    verdict = validate(packaged.bento_tag)
    assert verdict.passed and all(verdict.checks.values()), verdict.failures
    assert verdict.mlflow_version == verdict.offline_version == world.versions[0]
    assert verdict.canned["failed"] == 0 and verdict.canned["requests"] >= 10
    assert {case["case"] for case in verdict.canned["cases"]} >= {"missing_user_id", "empty_candidates"}
    assert verdict.scores["rows"] > 50 and verdict.scores["max_abs_diff"] <= 1e-5
    assert verdict.latency["requests"] == 200 and verdict.latency["errors"] == 0
    assert verdict.latency["p99_ms"] <= 100
    assert verdict.stop["forced"] is False and verdict.stop["workers"] >= 1
    assert not [p for p in psutil.process_iter(["cmdline"]) if packaged.bento_tag in " ".join(p.info["cmdline"] or [])]
    assert verdict.logged_events and verdict.logged_events > 0  # served impressions went to the scratch log
    stored = [row for row in verdict_history("bento_validation") if row["verdict_id"] == verdict.verdict_id]
    assert stored and stored[0]["verdict"] == "PASSED" and stored[0]["candidate_version"] == world.versions[0]
    assert stored[0]["details"]["latency"]["p99_ms"] == verdict.latency["p99_ms"]


def test_validate_fails_on_another_versions_scores_and_a_tight_latency_threshold(world: PackagingWorld, packaged):
    from loopline.registry import verdict_history
    from loopline.serving.packaging import BentoValidationError, ValidationPolicy, validate

    policy = ValidationPolicy(p99_ms=0.001, latency_requests=20, real_requests=10)
    with pytest.raises(BentoValidationError, match="scores_match") as failure:
        validate(packaged.bento_tag, offline_version=world.versions[1], policy=policy)
    verdict = failure.value.verdict
    assert verdict["checks"] == {
        "started": True,
        "schema": True,
        "scores_match": False,
        "latency_p99": False,
        "stopped": True,
    }
    assert verdict["scores"]["max_abs_diff"] > 1e-3  # two different models, not rounding noise
    assert "latency_p99" in str(failure.value)
    stored = [row for row in verdict_history("bento_validation") if row["verdict_id"] == verdict["verdict_id"]]
    assert stored and stored[0]["verdict"] == "FAILED"
