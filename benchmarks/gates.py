"""Benchmark: the quality gate and the drift gate on 1M rows x 20 features (per side).

Prints the wall time of each gate (target: both within 30 s), and the time Evidently takes against
a numpy/scipy implementation of the same per-column tests (``loopline.drift.scipy_column_drift``)
on the same sampled rows, measured in the same run (goal: Evidently at most 2x the baseline).
"Evidently" is everything before the report can be saved (its Datasets, every test, the dataset
count, the figures ``Report.run`` draws); rendering and writing the HTML and JSON is printed apart
and also added in a second ratio.

    .venv/bin/python benchmarks/gates.py            # 1M rows per side
    .venv/bin/python benchmarks/gates.py --rows 200000 --max-rows 50000
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np
import pandas as pd

CATEGORIES = ("electronics", "books", "fashion", "home", "sports", "beauty", "toys", "grocery", "garden", "pets")
NUMERICAL = 14
CATEGORICAL = 6


def uuid_strings(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` random UUID-shaped strings, built vectorised (uuid.uuid4 per row is slow at 1M)."""
    text = rng.bytes(16 * count).hex()
    hexes = [text[i : i + 32] for i in range(0, 32 * count, 32)]
    return np.array([f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}" for h in hexes], dtype=object)


def training_frame(rows: int, seed: int, *, shift: bool = False) -> pd.DataFrame:
    """A synthetic training window: role columns + 14 numerical + 6 categorical features."""
    rng = np.random.default_rng(seed)
    users = rows // 20
    requests = rows // 10
    user = rng.integers(0, users, rows)
    data: dict[str, object] = {
        "event_id": uuid_strings(rng, rows),
        "request_id": uuid_strings(rng, requests)[np.arange(rows) // 10],
        "user_id": np.array([f"u{i:07d}" for i in range(users)], dtype=object)[user],
        "item_id": np.array([f"i{i:05d}" for i in range(50_000)], dtype=object)[rng.integers(0, 50_000, rows)],
        "event_at": pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 7 * 86_400, rows), unit="s"),
        "model_version": "loopline-ctr/7",
        "variant": "champion",
        "query": np.array(["red dress", "iphone 15 pro 256gb", "yoga mat", "rtx 4090", None], dtype=object)[
            rng.integers(0, 5, rows)
        ],
    }
    logit = -2.9 + rng.normal(0, 0.4, users)[user]
    for index in range(NUMERICAL):
        values = rng.normal(0.6 if shift and index < 4 else 0.0, 1.0, rows)
        data[f"num_{index:02d}"] = values
        logit = logit + 0.05 * values
    for index in range(CATEGORICAL):
        weights = np.linspace(2.0, 1.0, len(CATEGORIES))
        if shift and index < 2:
            weights = weights[::-1]
        data[f"cat_{index}"] = np.array(CATEGORIES, dtype=object)[
            rng.choice(len(CATEGORIES), rows, p=weights / weights.sum())
        ]
    data["is_clicked"] = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per side (default 1M)")
    parser.add_argument("--max-rows", type=int, default=None, help="Evidently sample cap (default: policy)")
    args = parser.parse_args()

    started = time.perf_counter()
    from loopline.drift import run_drift_report, scipy_column_drift, stratified_sample
    from loopline.gates import decide_drift, decide_quality, load_policy
    from loopline.quality import check_quality

    overrides = {"drift.max_rows": args.max_rows} if args.max_rows else None
    policy = load_policy(overrides=overrides)
    import_seconds = time.perf_counter() - started

    started = time.perf_counter()
    reference = training_frame(args.rows, seed=1)
    current = training_frame(args.rows, seed=2, shift=True)
    numerical = [f"num_{i:02d}" for i in range(NUMERICAL)]
    categorical = [f"cat_{i}" for i in range(CATEGORICAL)]
    build_seconds = time.perf_counter() - started

    # Warm-up on 2000 rows: the first call imports evidently, plotly and scipy.stats (a one-off per process).
    started = time.perf_counter()
    check_quality(current.head(2000), reference=reference.head(2000), policy=policy)
    run_drift_report(
        current.head(2000),
        reference.head(2000),
        numerical_columns=numerical,
        categorical_columns=categorical,
        policy=policy,
    )
    warm_up_seconds = time.perf_counter() - started
    print(
        f"data: {args.rows:,} rows x {NUMERICAL + CATEGORICAL} features per side (built in {build_seconds:.1f} s); "
        f"imports {import_seconds:.1f} s + warm-up {warm_up_seconds:.1f} s (not counted below)"
    )

    started = time.perf_counter()
    report = check_quality(
        current,
        reference=reference,
        policy=policy,
        trailing_volumes=[args.rows] * 7,
        numerical_columns=numerical,
        categorical_columns=categorical,
    )
    quality_decision = decide_quality(report)
    quality_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="loopline-bench-") as scratch:
        started = time.perf_counter()
        result = run_drift_report(
            current,
            reference,
            numerical_columns=numerical,
            categorical_columns=categorical,
            policy=policy,
            out_uri=Path(scratch).as_uri(),
        )
        drift_decision = decide_drift(result)
        drift_seconds = time.perf_counter() - started
        html_bytes = Path(scratch, "drift_report.html").stat().st_size

    # The baseline: the same per-column tests with numpy/scipy on the very rows Evidently saw.
    max_rows = policy.drift.max_rows
    samples = [
        stratified_sample(
            frame,
            max_rows=max_rows,
            seed=(policy.drift.seed, side),
            strata_columns=("is_clicked",),
            time_column="event_at",
        )
        for side, frame in enumerate((current, reference))
    ]
    started = time.perf_counter()
    baseline = {
        column: scipy_column_drift(samples[1][column], samples[0][column], kind=kind, column=column)
        for kind, columns in (("numerical", numerical), ("categorical", categorical))
        for column in columns
    }
    baseline_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for kind, columns in (("numerical", numerical), ("categorical", categorical)):
        for column in columns:
            scipy_column_drift(reference[column], current[column], kind=kind, column=column)
    full_baseline_seconds = time.perf_counter() - started
    mismatched = [c.column for c in result.columns if abs(c.value - baseline[c.column].value) > 1e-9]

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    both = quality_seconds + drift_seconds
    evidently_seconds = result.seconds["evidently"]
    print(
        f"quality gate: {quality_seconds:6.2f} s  -> {quality_decision.outcome} "
        f"(PII scan of {len(report.pii_columns)} string columns, noise, PSI/KL of 20 features)"
    )
    print(
        f"drift gate:   {drift_seconds:6.2f} s  -> {drift_decision.outcome} "
        f"(sample {result.seconds['sample']:.2f} s, Evidently {evidently_seconds:.2f} s "
        f"[Datasets {result.seconds['evidently_datasets']:.2f} s + Report.run "
        f"{evidently_seconds - result.seconds['evidently_datasets']:.2f} s], "
        f"save {result.seconds['save']:.2f} s; {result.current_sampled_rows:,} + {result.reference_sampled_rows:,} "
        f"rows; HTML {html_bytes / 1e6:.1f} MB)"
    )
    print(
        f"both gates:   {both:6.2f} s  (target <= 30 s: {'met' if both <= 30 else 'MISSED'}); "
        f"peak RSS {peak_mb:,.0f} MB"
    )
    with_save_seconds = evidently_seconds + result.seconds["save"]
    print(
        f"per-column tests on the sampled rows: Evidently {evidently_seconds:.2f} s vs numpy/scipy "
        f"{baseline_seconds:.3f} s = {evidently_seconds / baseline_seconds:.1f}x (goal <= 2x); "
        f"with the HTML/JSON save {with_save_seconds:.2f} s = {with_save_seconds / baseline_seconds:.1f}x; "
        f"values identical: {'yes' if not mismatched else f'no, {mismatched}'}"
    )
    print(f"numpy/scipy on all {args.rows:,} rows per side (no sampling): {full_baseline_seconds:.2f} s")
    print(f"drifted columns: {result.drifted_count}/{result.column_count} ({', '.join(result.drifted_columns)})")


if __name__ == "__main__":
    main()
