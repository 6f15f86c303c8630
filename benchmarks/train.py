"""Benchmark of CTR training and the compression gate on a simulated world.

Prints (1) training throughput: wall time per epoch and examples/s of the CTR ranker, against a floor
measured in the same run on the same encoded batches (a torch logistic regression over the dense
features with the same batch size and optimizer: what the data path and optimizer cost alone); (2) the
model's holdout AUC beside item popularity, logistic regression and the simulator's oracle; (3) the
compression table (size on disk, latency at batch 1 and the serving batch, AUC change) for FP32, INT8,
pruned, pruned+INT8 and distilled, with the seed's claims beside the measured numbers.

    .venv/bin/python benchmarks/train.py                 # ~1M training examples (8 days)
    .venv/bin/python benchmarks/train.py --quick         # ~100k examples
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

SEED_CLAIMS = {
    "fp32": "-",
    "int8": "75% smaller, 2-3x faster",
    "pruned": "-",
    "pruned_int8": "-",
    "distilled": "-",
}


def floor_epoch(data, scorer, batch_size: int, learning_rate: float, seed: int) -> float:
    """Seconds of one epoch of logistic regression on the same dense inputs and batches."""
    torch.manual_seed(seed)
    dense = scorer.prepare_numeric(data.numeric).detach()
    model = torch.nn.Linear(dense.shape[1], 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        batch = order[start : start + batch_size]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense[batch]).squeeze(1), data.label[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 100k examples instead of 1M")
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (early stopping off)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    total_impressions = 110_000 if args.quick else 1_100_000  # about 1M training rows + a holdout day

    from loopline.compress import compress_model
    from loopline.simulate import simulate
    from loopline.training import comparison, frame_from_simulation, load_config, train_model
    from loopline.training.data import encode, time_split
    from loopline.training.fit import torch_threads

    config = load_config(overrides={"training.epochs": args.epochs, "training.patience": args.epochs})
    with tempfile.TemporaryDirectory(prefix="loopline-bench-train-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        simulate(
            (root / "logs").as_uri(),
            start_date=date(2024, 1, 1),
            days=args.days,
            users=args.users,
            items=args.items,
            events_per_day=int(total_impressions * 1.07 / args.days),
            seed=args.seed,
            policy="popularity",
            truth_dir=root / "truth",
        )
        frame = frame_from_simulation((root / "logs").as_uri(), root / "truth")
        print(f"world: {args.users} users, {args.items} items, {args.days} days, {len(frame):,} impressions "
              f"(simulated and featurised in {time.perf_counter() - started:.1f} s)")  # fmt: skip

    model, train, holdout = train_model(frame, config)
    print(f"\n## Training ({len(train):,} training examples, batch {config.training.batch_size}, "
          f"{config.training.threads} threads)")  # fmt: skip
    print(f"{'epoch':>5} {'wall s':>8} {'examples/s':>12} {'val log loss':>13} {'val AUC':>8}")
    for row in model.history:
        print(
            f"{int(row['epoch']):>5} {row['epoch_seconds']:>8.2f} {row['examples_per_second']:>12,.0f} "
            f"{row['validation_log_loss']:>13.5f} {row['validation_auc']:>8.4f}"
        )
    seconds = [row["epoch_seconds"] for row in model.history]
    with torch_threads(config.training.threads):
        data = encode(train, model.spec, label_column=config.columns.label)
        floor = floor_epoch(data, model.scorer(), config.training.batch_size, config.training.learning_rate, 0)
    print(f"median epoch {np.median(seconds):.2f} s = {len(train) / np.median(seconds):,.0f} examples/s; "
          f"floor (logistic regression, same batches) {floor:.2f} s = {len(train) / floor:,.0f} examples/s; "
          f"model / floor = {np.median(seconds) / floor:.1f}x")  # fmt: skip

    result = comparison(model, train, holdout)
    print(f"\n## Holdout ({len(holdout):,} impressions of the most recent day)")
    print(f"{'':<11} {'AUC':>7} {'log loss':>9} {'calib err':>9} {'NDCG@10':>8}")
    for name in ("model", "popularity", "logistic", "oracle"):
        values = result[name]
        if values:
            print(f"{name:<11} {values['auc']:>7.4f} {values['log_loss']:>9.5f} "
                  f"{values['calibration_error']:>9.5f} {values['ndcg_at_10']:>8.4f}")  # fmt: skip
    if result["oracle"]:
        print(f"model - popularity AUC {result['model']['auc'] - result['popularity']['auc']:+.4f}; "
              f"model - logistic {result['model']['auc'] - result['logistic']['auc']:+.4f}; "
              f"oracle - model {result['oracle']['auc'] - result['model']['auc']:+.4f}")  # fmt: skip

    train_part, _ = time_split(frame, config.columns.date, config.training.validation_days)
    verdict = compress_model(model.net, model.spec, train_part, holdout, config)
    b = verdict.serving_batch_size
    print(f"\n## Compression (latency: median of {config.compression.latency_repeats} calls, "
          f"{config.compression.latency_threads} thread, score_encoded on pre-hashed inputs)")  # fmt: skip
    print(f"| variant | size KiB | size vs FP32 | ms @1 | speed-up @1 | ms @{b} | speed-up @{b} | AUC change "
          f"| max abs dp | seed's claim | gate |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v in verdict.variants:
        gate = "CHOSEN" if v.name == verdict.chosen else ("eligible" if v.eligible else "rejected")
        print(
            f"| {v.name} | {v.size_bytes / 1024:.1f} | {v.size_ratio:.1%} | {v.latency_ms_batch_1:.3f} | "
            f"{v.speedup_batch_1:.2f}x | {v.latency_ms_serving_batch:.3f} | {v.speedup_serving_batch:.2f}x | "
            f"{v.auc_change:+.5f} | {v.max_abs_probability_change:.4f} | {SEED_CLAIMS.get(v.name, '-')} | {gate} |"
        )
    int8 = verdict.variant("int8")
    print(f"INT8 measured: {1 - int8.size_ratio:.0%} smaller, {int8.speedup_batch_1:.2f}x speed at batch 1, "
          f"{int8.speedup_serving_batch:.2f}x at batch {b} (seed's claim: 75% smaller, 2-3x faster)")  # fmt: skip
    print(f"chosen: {verdict.chosen} ({verdict.reason})")


if __name__ == "__main__":
    main()
