"""The closed loop's run report: what each simulated day did, in Markdown with PNG plots.

`make demo` collects one record per day (a plain, JSON-able dict: events ingested and quarantined,
gate outcomes with their numbers, the model trained, evaluated, packaged, the canary's steps with
CTR per arm, p-values and the decision, what the users saw) and ``write_report`` renders it under
``<LOOPLINE_HOME>/reports/<run id>/``: ``report.md``, ``report.json``, ``ctr.png`` (served CTR per
arm and day) and ``auc.png`` (each model version's AUC against the simulator's oracle).

The helpers here turn the stores' records into that dict: ``canary_steps`` reads a rollout's
transitions, ``oracle_sample`` and ``model_quality`` measure registered versions on a day the
simulator draws with a random ranking (so the oracle's click probabilities are known for every row).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.simulate import World, generate_day
from loopline.training.metrics import auc

REPORT_FILE = "report.md"


# --------------------------------------------------------------------------------------------------
# Numbers from the stores
# --------------------------------------------------------------------------------------------------


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def canary_steps(transitions: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per rollout transition: step, weight, CTR per arm, p-values, the decision and its reason."""
    rows = []
    for transition in transitions:
        numbers = transition.numbers or {}
        decision = numbers.get("decision") or {}
        row: dict[str, Any] = {
            "at": transition.happened_at.isoformat(),
            "action": transition.action,
            "step": transition.step_index + 1,
            "weight": transition.weight,
            "actor": transition.actor,
            "reason": transition.reason,
        }
        for arm in ("canary", "champion"):
            impressions = _get(decision, arm, "impressions")
            clicks = _get(decision, arm, "clicks")
            row[f"{arm}_impressions"] = impressions
            row[f"{arm}_ctr"] = clicks / impressions if impressions else None
        row["p_promote"] = _get(decision, "ctr", "promotion_test", "p_value")
        row["p_rollback"] = _get(decision, "ctr", "rollback_test", "p_value")
        row["srm_p"] = _get(decision, "srm", "p_value")
        rows.append(row)
    return rows


def oracle_sample(world: World, day_index: int, *, events: int = 20_000) -> pd.DataFrame:
    """Impressions of day ``day_index`` ranked at random, with the oracle's P(click) and the drawn click.

    A random ranking shows every kind of item at every position, so the sample measures how well a
    model orders what users like, not how well it agrees with the policy that logged the data.
    """
    traffic = generate_day(world, day_index, "random", events_per_day=events)
    requests = traffic.impression_request
    midnight = datetime(traffic.date.year, traffic.date.month, traffic.date.day, tzinfo=UTC)
    times = pd.Timestamp(midnight) + pd.to_timedelta(traffic.request_time[requests], unit="ms")
    return pd.DataFrame(
        {
            "impression_id": [f"oracle-{day_index}-{row}" for row in range(len(requests))],
            "user_id": np.asarray(world.user_ids)[traffic.request_user[requests]],
            "item_id": np.asarray(world.item_ids)[traffic.impression_item],
            "event_at": pd.Series(times).astype("datetime64[us, UTC]"),
            "position": traffic.impression_position.astype(np.int64),
            "is_clicked": traffic.clicked.astype(bool),
            "oracle_click_probability": traffic.click_probability.astype(np.float64),
        }
    )


def model_quality(versions: Sequence[str], sample: pd.DataFrame, directory: Path) -> list[dict[str, Any]]:
    """AUC of each registered version and of the oracle on ``sample`` (scored with point-in-time features)."""
    from loopline.serving.scoring import score_table, scores_of

    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "oracle-sample.parquet"
    sample.drop(columns=["oracle_click_probability"]).to_parquet(source, index=False)
    labels = sample["is_clicked"].to_numpy()
    oracle_auc = auc(labels, sample["oracle_click_probability"].to_numpy())
    rows = []
    for version in versions:
        output = directory / f"scores-v{version}.parquet"
        score_table(version, source=str(source), output=str(output), features="offline")
        # The score at the shown position: clicks depend on it, and so does the oracle's P(click).
        scores = scores_of(str(output)).set_index("impression_id")["logged_position_score"]
        model_auc = auc(labels, scores.reindex(sample["impression_id"]).to_numpy())
        rows.append(
            {
                "version": str(version),
                "rows": len(sample),
                "auc": model_auc,
                "oracle_auc": oracle_auc,
                "auc_share_of_oracle": (model_auc - 0.5) / (oracle_auc - 0.5) if oracle_auc > 0.5 else None,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _number(value: Any, spec: str = ",") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _plot_ctr(days: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.8), dpi=110)
    positions = list(range(len(days)))

    def series(*keys: str) -> list[float]:
        return [np.nan if (value := _get(day, *keys)) is None else value for day in days]

    axis.plot(positions, series("logged_ctr"), "-", color="#7f7f7f", label="all traffic (dbt labels)")
    axis.plot(positions, series("served", "arms", "champion", "ctr"), "o-", color="#1f77b4", label="champion")
    axis.plot(positions, series("served", "arms", "canary", "ctr"), "o", color="#ff7f0e", markersize=8, label="canary")
    oracle = series("served", "oracle_ctr_of_champion")
    axis.plot(positions, oracle, ":", color="#2ca02c", label="oracle P(click) of the champion's lists")
    for index, day in enumerate(days):
        if day.get("drift_starts"):
            axis.axvline(index, color="#d62728", linestyle="--", linewidth=1, label="preference drift")
        if day.get("served") is None and index + 1 < len(days) and days[index + 1].get("served") is not None:
            axis.axvspan(-0.5, index + 0.5, color="#eeeeee", zorder=0, label="baseline (popularity ranking)")
    axis.set_xticks(positions, [day["date"][5:] for day in days])
    axis.set_xlim(-0.5, len(days) - 0.5)
    axis.set_ylabel("CTR")
    axis.set_title("Click-through rate per day: what the users clicked, by arm")
    axis.legend(loc="best", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _plot_auc(models: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2), dpi=110)
    names = [f"v{row['version']}" for row in models]
    axis.bar(names, [row["auc"] for row in models], color="#1f77b4", label="model AUC")
    if models:
        axis.axhline(models[0]["oracle_auc"], color="#2ca02c", linestyle=":", label="oracle AUC")
    axis.axhline(0.5, color="#7f7f7f", linewidth=0.8, label="random")
    axis.set_ylim(0.4, 1.0)
    axis.set_title("AUC on a random-ranked day the simulator drew (same rows for every version)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def render_markdown(summary: Mapping[str, Any]) -> str:
    """The report as Markdown (``write_report`` adds the plots beside it)."""
    days = summary.get("days", [])
    lines = [
        f"# Loopline run report: {summary.get('run_id')}",
        "",
        f"{len(days)} simulated days from {days[0]['date'] if days else '-'}; "
        f"finished in {_number(summary.get('seconds'))} s; final champion: "
        f"**v{summary.get('final_champion')}**.",
        "",
        "![CTR per day](ctr.png)",
        "",
    ]
    lines += ["## Data per day", ""]
    lines += _table(
        ["day", "events read", "loaded", "duplicates", "quarantined", "top quarantine reasons", "PII redacted", "CTR"],
        [
            [
                day["date"] + (" (drift)" if day.get("drift_starts") else ""),
                _number(_get(day, "ingest", "lines_read")),
                _number(_get(day, "ingest", "loaded")),
                _number(_get(day, "ingest", "duplicates")),
                _number(_get(day, "ingest", "quarantined")),
                ", ".join(f"{k}: {v}" for k, v in (_get(day, "ingest", "quarantined_by_reason") or {}).items()) or "-",
                _number(sum((_get(day, "ingest", "redactions_by_type") or {}).values())),
                _number(day.get("logged_ctr"), ".4f"),
            ]
            for day in days
        ],
    )
    lines += ["## Gates and training per nightly run", ""]
    gate_rows = []
    for day in days:
        retrain = day.get("retrain")
        if not retrain:
            continue  # no nightly run after this day (a baseline day before the first training window)
        gate_rows.append(
            [
                retrain.get("run_date", "-"),
                _gate_cell(retrain.get("quality")),
                _gate_cell(retrain.get("drift")),
                retrain.get("decision", "-"),
                _number(_get(retrain, "training", "metrics", "auc"), ".3f"),
                _evaluation_cell(retrain.get("evaluation")),
                _get(retrain, "compression", "chosen") or "-",
                retrain.get("version") and f"v{retrain['version']}" or "-",
                _get(retrain, "bento", "bento_tag") or "-",
            ]
        )
    lines += _table(
        [
            "run (UTC day)",
            "quality gate",
            "drift gate",
            "train?",
            "holdout AUC",
            "evaluation",
            "served variant",
            "version",
            "Bento",
        ],
        gate_rows,
    )
    models = summary.get("models") or []
    if models:
        lines += [
            "## Model versions against the oracle",
            "",
            f"AUC on the same {models[0]['rows']:,} impressions of the last day, ranked at random by the "
            "simulator: each version's P(click) at the shown position (features point-in-time from the "
            "offline store) against the oracle's true P(click).",
            "",
            "![AUC per version](auc.png)",
            "",
        ]
        lines += _table(
            ["version", "AUC", "oracle AUC", "share of the oracle's lift over random"],
            [
                [f"v{row['version']}", _number(row["auc"], ".4f"), _number(row["oracle_auc"], ".4f"),
                 _number(row.get("auc_share_of_oracle"), ".0%")]
                for row in models
            ],
        )  # fmt: skip
    lines += ["## Canary rollouts", ""]
    any_rollout = False
    for day in days:
        canary = day.get("canary")
        if not canary:
            continue
        any_rollout = True
        lines += [
            f"### served {day['date']}: v{canary['candidate_version']} against "
            f"{'v' + str(canary['champion_version']) if canary.get('champion_version') else 'no champion'} "
            f"-> **{canary['status']}**",
            "",
        ]
        lines += _table(
            ["action", "step", "canary share", "canary CTR", "champion CTR", "impressions (canary / champion)",
             "p promote", "p roll back", "reason"],
            [
                [row["action"], row["step"], f"{row['weight']:.0%}", _number(row["canary_ctr"], ".4f"),
                 _number(row["champion_ctr"], ".4f"),
                 f"{_number(row['canary_impressions'])} / {_number(row['champion_impressions'])}",
                 _number(row["p_promote"], ".3g"), _number(row["p_rollback"], ".3g"), row["reason"]]
                for row in canary.get("steps", [])
            ],
        )  # fmt: skip
    if not any_rollout:
        lines += ["No candidate reached the canary.", ""]
    lines += ["## What the simulated users saw", ""]
    lines += _table(
        ["day", "served by", "requests", "failed", "champion CTR", "canary CTR", "oracle P(click) of shown (champion)"],
        [
            [
                day["date"],
                ", ".join(day.get("served_versions", [])) or "-",
                _number(_get(day, "served", "requests")),
                _number(_get(day, "served", "failed_requests")),
                _number(_get(day, "served", "arms", "champion", "ctr"), ".4f"),
                _number(_get(day, "served", "arms", "canary", "ctr"), ".4f"),
                _number(_get(day, "served", "oracle_ctr_of_champion"), ".4f"),
            ]
            for day in days
            if day.get("served")
        ],
    )
    links = summary.get("links") or {}
    lines += ["## Where to look", ""]
    lines += [f"- **{name}**: {value}" for name, value in links.items()]
    return "\n".join(lines) + "\n"


def _gate_cell(decision: Mapping[str, Any] | None) -> str:
    if not decision:
        return "-"
    reasons = decision.get("reasons") or []
    text = str(decision.get("outcome", "-"))
    return f"{text} ({'; '.join(reasons)[:120]})" if reasons else text


def _evaluation_cell(verdict: Mapping[str, Any] | None) -> str:
    if not verdict:
        return "-"
    baseline = verdict.get("baseline_version")
    against = f" vs v{baseline}" if baseline else " (first model)"
    return f"{verdict.get('verdict')}{against}"


def write_report(summary: Mapping[str, Any], directory: Path) -> Path:
    """``report.md``, ``report.json``, ``ctr.png`` and (with models) ``auc.png`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    days = summary.get("days", [])
    _plot_ctr(days, directory / "ctr.png")
    if summary.get("models"):
        _plot_auc(summary["models"], directory / "auc.png")
    path = directory / REPORT_FILE
    path.write_text(render_markdown(summary))
    return path
