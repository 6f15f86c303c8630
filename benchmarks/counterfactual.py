"""Counterfactual quality of the CTR model: trained on logged days, tested on a day ranked at random.

The logged holdout is ranked by the same policy as the training days, so it rewards a model that
learnt "shown on top means clicked". A day the simulator ranks at random shows every item at every
slot: the model's AUC there measures what it would do when it ranks. In the same run, on the same
random day, the script prints beside the model:

- logistic regression and item popularity, trained on the same logged days;
- the user-blind oracle: the true slot effect x each item's attractiveness averaged over all users
  (the best possible score without knowing the users' tastes);
- the oracle: the simulator's true click probabilities;
- the expected AUC of model and oracle (true probabilities as soft labels: no click noise);
- the slot effect the model learnt (position bias relative to slot 1) against the true one.

The world: ``--days`` days ranked by ``--policy`` (popularity, optionally with a share of randomly
ordered top-k lists, ``--exploration-share``), then one random day. Training uses all logged days
but the last, early-stops on the last logged day (also reported as the logged holdout) and never
sees the random day. Everything is written to a temporary directory.

    .venv/bin/python benchmarks/counterfactual.py                                 # dense world, ~1 min
    .venv/bin/python benchmarks/counterfactual.py --users 1000 --items 200 --events-per-day 12000 --days 7
    .venv/bin/python benchmarks/counterfactual.py --exploration-share 0.1
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np


def expected_auc(probabilities: np.ndarray, scores: np.ndarray) -> float:
    """AUC with the true click probabilities as soft labels: P(score(click) > score(no click))."""
    order = np.argsort(scores, kind="mergesort")
    positive, ordered = probabilities[order], scores[order]
    negative = 1.0 - positive
    _, starts, counts = np.unique(ordered, return_index=True, return_counts=True)
    negatives_below = np.concatenate([[0.0], np.cumsum(negative)])
    total = 0.0
    for start, count in zip(starts, counts, strict=True):  # ties count one half
        tied = slice(start, start + count)
        total += positive[tied].sum() * (negatives_below[start] + 0.5 * negative[tied].sum())
    return float(total / (positive.sum() * negative.sum()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--events-per-day", type=int, default=14_000)
    parser.add_argument("--days", type=int, default=6, help="logged days before the random day")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policy", choices=("popularity", "random"), default="popularity")
    parser.add_argument("--exploration-share", type=float, default=0.0, help="randomly ordered top-k share")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    from loopline.simulate import PopularityPolicy, RandomPolicy, World, simulate_with_random_day
    from loopline.training import frame_from_simulation, load_config, train_model
    from loopline.training.data import encode
    from loopline.training.fit import (
        evaluate_scorer,
        logistic_baseline,
        oracle_metrics,
        popularity_baseline,
        score,
        torch_threads,
    )
    from loopline.training.metrics import auc

    with tempfile.TemporaryDirectory(prefix="loopline-bench-counterfactual-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        world = World.build(args.users, args.items, args.seed, start_date=date(2024, 3, 1), days=args.days + 1)
        logged_policy = (
            RandomPolicy() if args.policy == "random" else PopularityPolicy(exploration_share=args.exploration_share)
        )
        log_uri, truth_dir = simulate_with_random_day(root, world, logged_policy, events_per_day=args.events_per_day)
        frame = frame_from_simulation(log_uri, truth_dir)
        simulated = time.perf_counter() - started
    random_day = frame["event_date"].max()
    logged, tested = frame[frame["event_date"] < random_day], frame[frame["event_date"] == random_day]
    config = load_config(overrides={"training.epochs": args.epochs})
    started = time.perf_counter()
    model, train, holdout = train_model(logged, config)
    trained = time.perf_counter() - started

    labels = tested["is_clicked"].to_numpy()
    truth = tested["oracle_click_probability"].to_numpy()
    examination = world.examination(tested["position"].to_numpy())
    every_user = np.arange(len(world.user_ids))
    item_attractiveness = np.array(
        [
            world.attractiveness(every_user, np.full(len(every_user), item), args.days).mean()
            for item in range(len(world.item_ids))
        ]
    )
    user_blind = examination * item_attractiveness[world.item_indices(tested["item_id"].to_numpy())]
    with torch_threads(config.training.threads):
        scores = score(model.scorer(), encode(tested, model.spec), logged_position=True)
        rows = {
            "model": evaluate_scorer(model.scorer(), model.spec, tested, config)["auc"],
            "logistic regression": logistic_baseline(model, train, tested)["auc"],
            "popularity": popularity_baseline(train, tested, config)["auc"],
            "user-blind oracle": auc(labels, user_blind),
            "oracle": oracle_metrics(tested, config)["auc"],
        }
    expected = {"model": expected_auc(truth, scores), "user-blind oracle": expected_auc(truth, user_blind)}
    expected["oracle"] = expected_auc(truth, truth)
    policy = args.policy + (f" + {args.exploration_share:.0%} RandTop-k" if args.exploration_share else "")
    print(
        f"\nworld: {args.users} users x {args.items} items, {args.days} {policy} days + 1 random day, "
        f"seed {args.seed}; {len(train):,} training / {len(holdout):,} logged holdout / {len(tested):,} random-day "
        f"impressions ({int(labels.sum()):,} clicks); simulate {simulated:.0f} s, train {trained:.0f} s "
        f"({len(model.history)} epochs, best {model.best_epoch})"
    )
    print(f"logged holdout AUC: model {model.metrics['auc']:.4f}")
    print(f"\n{'random day':22s} {'AUC':>7s} {'expected AUC':>13s}")
    for name, value in rows.items():
        soft = expected.get(name)
        print(f"{name:22s} {value:7.4f} {'' if soft is None else f'{soft:13.4f}'}")
    print(
        f"model - oracle: {rows['model'] - rows['oracle']:+.4f}; model - user-blind oracle: "
        f"{rows['model'] - rows['user-blind oracle']:+.4f}; "
        f"model - logistic: {rows['model'] - rows['logistic regression']:+.4f}"
    )
    learnt = model.net.position_bias.weight.detach().squeeze().numpy()
    slots = np.arange(1, 11)
    print("slot effect vs slot 1, learnt:", " ".join(f"{value:+.2f}" for value in learnt[slots] - learnt[1]))
    print("slot effect vs slot 1, true:  ", " ".join(f"{value:+.2f}" for value in np.log(world.examination(slots))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
