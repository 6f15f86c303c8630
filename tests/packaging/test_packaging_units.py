"""Fast checks of packaging's pieces: the BentoML home, the pinned build config, the response schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopline.serving import packaging
from loopline.serving.packaging import PackagingError, build_config, pinned_requirements, rank_response_problems


def test_bentoml_home_is_under_loopline_home_unless_set(isolated_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BENTOML_HOME", "unset-below")  # recorded, so the value ensure_bentoml_home sets is undone
    monkeypatch.delenv("BENTOML_HOME")
    monkeypatch.setattr(packaging, "_HOME_SET_BY_LOOPLINE", None)
    home = packaging.ensure_bentoml_home()
    assert home == isolated_home / "bentoml"
    assert (home / "models").is_dir() and (home / "bentos").is_dir()

    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer

    assert Path(BentoMLContainer.model_store_dir.get()) == home / "models"
    # A later LOOPLINE_HOME moves the stores too (the variable Loopline set is not "set from outside").
    moved = isolated_home.parent / "other-home"
    monkeypatch.setenv("LOOPLINE_HOME", str(moved))
    from loopline import config

    config.settings.cache_clear()
    assert packaging.ensure_bentoml_home() == moved / "bentoml"
    assert Path(BentoMLContainer.bento_store_dir.get()) == moved / "bentoml" / "bentos"
    assert bentoml.models.list() == []
    # BENTOML_HOME from outside wins.
    outside = isolated_home.parent / "outside-bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(outside))
    assert packaging.ensure_bentoml_home() == outside
    assert Path(BentoMLContainer.model_store_dir.get()) == outside / "models"


def test_build_config_pins_every_package_to_the_lock():
    config = build_config()
    pins = dict(line.split("==", 1) for line in config["python"]["packages"])
    lock = {}
    for line in packaging.REQUIREMENTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==", 1)
            lock[name.lower()] = version
    assert pins and all(lock[name.lower()] == version for name, version in pins.items())
    assert pins["torch"] == lock["torch"] and pins["bentoml"] == lock["bentoml"]
    assert config["python"]["lock_packages"] is False
    assert packaging.service_module_path(config) == packaging.CHECKOUT / "models" / "service.py"
    assert {"loopline/**/*.py", "models/*.py", "feature_repo/*.py"} <= set(config["include"])


def test_a_package_missing_from_the_lock_stops_the_build(tmp_path: Path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("torch==2.13.0+cpu    # via -r requirements.in\nPyYAML==6.0.4\n")
    assert pinned_requirements(["torch", "pyyaml"], lock) == ["torch==2.13.0+cpu", "PyYAML==6.0.4"]
    with pytest.raises(PackagingError, match=r"no pinned version .*\['bentoml'\]"):
        pinned_requirements(["torch", "bentoml"], lock)


GOOD = {
    "items": [{"item_id": "i2", "score": 0.4}, {"item_id": "i1", "score": 0.1}],
    "request_id": "r-1",
    "model_version": "loopline-ctr/3",
    "variant": "champion",
}


def test_a_good_rank_response_has_no_problems():
    assert rank_response_problems(GOOD, k=2, expected_model_version="loopline-ctr/3", item_ids=["i1", "i2"]) == []
    assert rank_response_problems(GOOD, k=5, expected_model_version="loopline-ctr/3") == []
    # An exploration request shows its top k in a random order.
    shuffled = {**GOOD, "items": GOOD["items"][::-1], "explored": True}
    assert rank_response_problems(shuffled, k=2, expected_model_version="loopline-ctr/3", item_ids=["i1", "i2"]) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"model_version": "loopline-ctr/4"}, "model_version"),
        ({"request_id": ""}, "request_id is empty"),
        ({"items": [{"item_id": "i1", "score": 0.1}, {"item_id": "i2", "score": 0.4}]}, "not sorted"),
        ({"items": [{"item_id": "i2", "score": 1.4}, {"item_id": "i1", "score": 0.1}]}, "not a probability"),
        ({"items": [{"item_id": "i9", "score": 0.4}, {"item_id": "i1", "score": 0.1}]}, "was not a candidate"),
        ({"items": [{"item_id": "i2", "score": "high"}, {"item_id": "i1", "score": 0.1}]}, "finite number"),
        ({"items": [{"item_id": "i2", "score": 0.4}]}, "1 items, expected 2"),
        ({"variant": None}, "variant"),
        ({"explored": "yes"}, "explored: expected a boolean"),
    ],
)
def test_each_schema_violation_is_named(change: dict, problem: str):
    body = {**GOOD, **change}
    problems = rank_response_problems(body, k=2, expected_model_version="loopline-ctr/3", item_ids=["i1", "i2"])
    assert any(problem in text for text in problems), problems
