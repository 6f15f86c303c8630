"""The run report's rendering and the numbers it takes from rollout transitions (no stores needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from loopline.report import canary_steps, render_markdown, write_report
from loopline.rollout.machine import Transition


def _transition(action: str, numbers: dict) -> Transition:
    return Transition(
        transition_id="t",
        rollout_id="r",
        happened_at=datetime(2026, 11, 30, 6, tzinfo=UTC),
        action=action,
        from_status="running",
        to_status="running",
        step_index=1,
        weight=0.25,
        actor="airflow:loopline_canary/manual",
        reason="no boundary crossed",
        numbers=numbers,
    )


def test_canary_steps_take_ctr_per_arm_and_p_values_from_the_decision() -> None:
    decision = {
        "canary": {"impressions": 200, "clicks": 10},
        "champion": {"impressions": 800, "clicks": 60},
        "ctr": {"promotion_test": {"p_value": 0.3}, "rollback_test": {"p_value": 0.04}},
        "srm": {"p_value": 0.5},
    }
    started, advanced = canary_steps([_transition("started", {}), _transition("advanced", {"decision": decision})])
    assert started["canary_ctr"] is None and started["p_promote"] is None
    assert advanced["step"] == 2 and advanced["weight"] == 0.25
    assert advanced["canary_ctr"] == pytest.approx(0.05) and advanced["champion_ctr"] == pytest.approx(0.075)
    assert (advanced["p_promote"], advanced["p_rollback"], advanced["srm_p"]) == (0.3, 0.04, 0.5)


def _summary() -> dict:
    return {
        "run_id": "demo-x",
        "seconds": 12.5,
        "final_champion": "1",
        "days": [
            {
                "date": "2026-11-29",
                "ingest": {"lines_read": 10, "loaded": 8, "duplicates": 1, "quarantined": 1,
                           "quarantined_by_reason": {"invalid_json": 1}, "redactions_by_type": {"email": 2}},
                "retrain": {"run_date": "2026-11-30", "quality": {"outcome": "pass", "reasons": []},
                            "drift": {"outcome": "retrain", "reasons": ["drifted_column_share = 0.6"]},
                            "decision": "train", "training": {"metrics": {"auc": 0.71}},
                            "evaluation": {"verdict": "NOT_BLESSED", "baseline_version": "1"}, "version": None},
            },
            {
                "date": "2026-11-30",
                "drift_starts": True,
                "served": {"requests": 100, "failed_requests": 0, "arms": {"champion": {"ctr": 0.05}},
                           "oracle_ctr_of_champion": 0.051},
                "served_versions": ["loopline-ctr/1"],
            },
        ],
        "models": [{"version": "1", "rows": 500, "auc": 0.61, "oracle_auc": 0.8, "auc_share_of_oracle": 0.37}],
        "links": {"Airflow UI": "make airflow"},
    }  # fmt: skip


def test_markdown_shows_each_days_numbers_and_says_when_no_candidate_reached_the_canary() -> None:
    markdown = render_markdown(_summary())
    assert "final champion: **v1**" in markdown
    assert "| 2026-11-29 | 10 | 8 | 1 | 1 | invalid_json: 1 | 2 | - |" in markdown
    assert "retrain (drifted_column_share = 0.6)" in markdown and "NOT_BLESSED vs v1" in markdown
    assert "| v1 | 0.6100 | 0.8000 | 37% |" in markdown
    assert "No candidate reached the canary." in markdown
    assert "| 2026-11-30 | loopline-ctr/1 | 100 | 0 | 0.0500 | - | 0.0510 |" in markdown
    assert "- **Airflow UI**: make airflow" in markdown


def test_write_report_leaves_markdown_json_and_png_plots(tmp_path: Path) -> None:
    path = write_report(_summary(), tmp_path / "report")
    assert path.name == "report.md"
    for plot in ("ctr.png", "auc.png"):
        assert (tmp_path / "report" / plot).read_bytes()[:4] == b"\x89PNG"
    assert '"run_id": "demo-x"' in (tmp_path / "report" / "report.json").read_text()
