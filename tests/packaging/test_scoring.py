"""Batch scoring against a real world: the same scores as ``LoadedModel.predict``, idempotent writes,
files in and out, point-in-time features for files, replay against a baseline, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopline.serving.scoring import ScoringError, read_rows, replay, score_table, scores_of
from tests.packaging.world import PackagingWorld


def interval(world: PackagingWorld) -> tuple[datetime, datetime]:
    start = datetime.combine(world.world.start_date, datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=world.world.days)


def test_bad_inputs_are_named(tmp_path: Path):
    frame = pd.DataFrame({"user_id": ["u1"], "item": ["i1"]})
    frame.to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(ScoringError, match=r"lacks columns \['item_id'\]"):
        read_rows(str(tmp_path / "rows.parquet"))
    with pytest.raises(ScoringError, match="no such file"):
        read_rows(str(tmp_path / "missing.csv"))
    (tmp_path / "rows.json").write_text("{}")
    with pytest.raises(ScoringError, match="expected a .parquet or .csv"):
        read_rows(str(tmp_path / "rows.json"))


@pytest.mark.slow
def test_scoring_training_examples_equals_loaded_model_predict(world: PackagingWorld):
    from loopline.features import training_set
    from loopline.serving.model_store import load_version

    start, end = interval(world)
    version = world.versions[0]
    result = score_table(version, start=start, end=end)
    assert result.output == "table:batch_scores" and result.features == "offline"
    frame = training_set(start, end)
    assert result.rows == len(frame) > 1000

    written = scores_of("batch_scores", scoring_run_id=result.scoring_run_id)
    assert len(written) == len(frame)
    expected = load_version(version).predict(frame)
    served_order = frame["impression_id"].astype(str).tolist()
    by_impression = written.set_index("impression_id").loc[served_order]
    np.testing.assert_allclose(by_impression["score"].to_numpy(), expected, rtol=0, atol=1e-9)
    logged = load_version(version).predict(frame, logged_position=True)
    np.testing.assert_allclose(by_impression["logged_position_score"].to_numpy(), logged, rtol=0, atol=1e-9)
    assert set(written["model_version"]) == {version}

    # A re-run replaces its rows: never doubled.
    again = score_table(version, start=start, end=end)
    everything = scores_of("batch_scores")
    mine = everything[(everything["model_version"] == version) & (everything["mode"] == "score")]
    assert len(mine) == len(frame)
    assert set(mine["scoring_run_id"]) == {again.scoring_run_id}


@pytest.mark.slow
def test_a_file_of_rows_gets_point_in_time_features_like_training_set(world: PackagingWorld, tmp_path: Path):
    from loopline.features import training_set
    from loopline.serving.model_store import load_version

    start, end = interval(world)
    frame = training_set(start, end).sample(400, random_state=1).sort_values("impression_id")
    rows = frame[["impression_id", "user_id", "item_id", "event_at", "position"]]
    source = tmp_path / "rows.parquet"
    rows.to_parquet(source, index=False)
    output = tmp_path / "out" / "scores.csv"
    result = score_table(world.versions[1], source=source.as_uri(), output=output.as_uri())
    assert result.features == "offline" and result.rows == 400 and result.output == output.as_uri()

    written = pd.read_csv(output, dtype={"impression_id": str}).set_index("impression_id")
    expected = load_version(world.versions[1]).predict(frame)
    np.testing.assert_allclose(written.loc[frame["impression_id"].astype(str), "score"], expected, atol=1e-6)

    # With every model input given as columns, those columns are scored as they are.
    with_features = tmp_path / "with_features.parquet"
    frame.to_parquet(with_features, index=False)
    given = score_table(world.versions[1], source=str(with_features), output=str(tmp_path / "given.parquet"))
    assert given.features == "columns"
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "given.parquet")["score"], expected, atol=1e-9)


@pytest.mark.slow
def test_replay_compares_candidate_and_baseline_on_the_same_logged_rows(world: PackagingWorld):
    start, end = interval(world)
    champion, challenger = world.versions
    result = replay(challenger, end - timedelta(days=1), end, baseline="champion")
    comparison = result.comparison
    assert comparison["candidate"]["version"] == challenger and comparison["baseline"]["version"] == champion
    assert comparison["rows"] == result.rows > 0
    for name in ("auc", "log_loss", "calibration_error", "ndcg_at_10"):
        assert comparison["difference"][name] == pytest.approx(
            comparison["candidate"][name] - comparison["baseline"][name], abs=2e-6
        )
    assert 0.5 < comparison["candidate"]["auc"] < 1.0
    written = scores_of("batch_scores", scoring_run_id=result.scoring_run_id)
    assert set(written["mode"]) == {"replay"} and written["is_clicked"].notna().all()
    assert written["served_model_version"].notna().all()


@pytest.mark.slow
def test_cli_scores_and_reports_errors(world: PackagingWorld, tmp_path: Path, capsys: pytest.CaptureFixture):
    from loopline.cli import main

    start, end = interval(world)
    output = tmp_path / "cli.parquet"
    code = main(
        ["score-batch", "--version", "champion", "--start", (end - timedelta(days=1)).isoformat(),
         "--end", end.isoformat(), "--output", str(output)]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{\n") :])  # after any warning a logging set-up printed to stdout
    assert printed["model_version"] == world.versions[0] and printed["rows"] == len(pd.read_parquet(output))

    assert main(["score-batch", "--version", "no-such-alias", "--start", "2024-01-01", "--end", "2024-01-02"]) == 1
    assert "neither a version number nor an alias" in capsys.readouterr().err
