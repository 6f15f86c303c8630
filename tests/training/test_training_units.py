"""Pure pieces of training: hashing parity with the TorchScript model, metrics, config, time split,
the evaluation gate's decision and the compression gate's choice."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loopline.compress import VariantReport, choose
from loopline.training import BLESSED, NOT_BLESSED, ConfigError, FrameError, hash_ids, judge, load_config, time_split
from loopline.training.config import network_module
from loopline.training.metrics import auc, calibration_error, log_loss, ndcg_at_k


@pytest.fixture(scope="module")
def scripted_hasher():
    module = network_module()
    net = module.CtrNet(1, [], 64, 64, 4, [4], 0.0, 5)
    scorer = module.CtrScorer(net, ["x"], [], torch.zeros(1), torch.ones(1), [], 1000, 777, 1, 5)
    return torch.jit.script(scorer)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=20), st.sampled_from([1, 7, 1000, 65536]))
@example(ids=["", "\x00", "a", "a\x00b", "é"], buckets=65536)  # NUL once merged ids in pd.factorize
def test_numpy_hashing_matches_the_scripted_model(scripted_hasher, ids, buckets):
    expected = scripted_hasher.hash_ids(ids, buckets).numpy()
    assert hash_ids(ids, buckets).tolist() == expected.tolist()
    assert ((expected >= 0) & (expected < buckets)).all()


def test_hashing_is_stable_across_processes():
    # FNV-1a of "u000001" is fixed by definition (not Python's salted hash()).
    assert hash_ids(["u000001", "", "é"], 2**32).tolist() == [_fnv("u000001"), 2166136261, _fnv("é")]


def _fnv(text: str) -> int:
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


def test_auc_and_log_loss_on_known_values():
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert log_loss(labels, np.full(4, 0.5)) == pytest.approx(math.log(2))


def test_calibration_error_is_zero_when_calibrated_and_large_when_not():
    labels = np.array(([0] * 9 + [1]) * 10)  # one click in every ten rows
    assert calibration_error(labels, np.full(100, 0.1), bins=5) == pytest.approx(0.0)
    assert calibration_error(labels, np.full(100, 0.6), bins=5) == pytest.approx(0.5)


def test_ndcg_per_request():
    requests = np.array(["a", "a", "a", "b", "b", "c", "c"])
    labels = np.array([0, 1, 0, 1, 0, 0, 0])  # request c has no click: not counted
    perfect = np.array([0.1, 0.9, 0.2, 0.8, 0.1, 0.5, 0.4])
    assert ndcg_at_k(requests, labels, perfect, k=10) == pytest.approx(1.0)
    worst = np.array([0.9, 0.1, 0.5, 0.1, 0.8, 0.5, 0.4])
    # a: click at rank 3 -> 1/log2(4) = 0.5; b: click at rank 2 -> 1/log2(3)
    assert ndcg_at_k(requests, labels, worst, k=10) == pytest.approx((0.5 + 1 / math.log2(3)) / 2)
    assert ndcg_at_k(requests, labels, worst, k=1) == pytest.approx(0.0)


def test_config_overrides_and_errors():
    config = load_config(overrides={"training.epochs": 3, "features.categorical": []})
    assert config.training.epochs == 3 and config.features.categorical == ()
    assert "user_ctr_7d" in config.features.numeric
    with pytest.raises(ConfigError, match="training.epoch"):
        load_config(overrides={"training.epoch": 3})
    with pytest.raises(ConfigError, match="reference_position 99 > max_position"):
        load_config(overrides={"network.reference_position": 99})
    with pytest.raises(ConfigError, match="training.learning_rate"):
        load_config(overrides={"training.learning_rate": -1})


def _frame(days: int, rows_per_day: int = 4) -> pd.DataFrame:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    at = [start + timedelta(days=d, hours=r) for d in range(days) for r in range(rows_per_day)]
    return pd.DataFrame({"event_at": at, "event_date": [t.date() for t in at], "x": range(len(at))})


def test_time_split_holds_out_the_most_recent_days_never_random():
    frame = _frame(5).sample(frac=1.0, random_state=1)  # row order must not matter
    train, holdout = time_split(frame, "event_date", 2)
    assert set(holdout["event_date"]) == {date(2024, 1, 4), date(2024, 1, 5)}
    assert train["event_date"].max() < holdout["event_date"].min()
    assert len(train) + len(holdout) == len(frame)
    with pytest.raises(FrameError, match="needs more than validation_days=5"):
        time_split(frame, "event_date", 5)
    with pytest.raises(FrameError, match="lacks columns"):
        time_split(frame, "no_such_column", 1)


POLICY = load_config().evaluation


def _metrics(auc_value: float, loss: float, calibration: float = 0.005) -> dict:
    return {"auc": auc_value, "log_loss": loss, "calibration_error": calibration}


def test_first_model_faces_value_thresholds_only():
    verdict, checks = judge(_metrics(0.75, 0.2), None, POLICY)
    assert verdict == BLESSED and [c.kind for c in checks] == ["value", "value"]
    verdict, checks = judge(_metrics(0.55, 0.2), None, POLICY)
    assert verdict == NOT_BLESSED and not checks[0].passed
    verdict, _ = judge(_metrics(0.75, 0.2, calibration=0.5), None, POLICY)
    assert verdict == NOT_BLESSED


def test_change_thresholds_against_the_champion():
    champion = _metrics(0.75, 0.20)
    assert judge(_metrics(0.76, 0.199), champion, POLICY)[0] == BLESSED
    within = POLICY.auc_tolerance / 2
    assert judge(_metrics(0.75 - within, 0.20), champion, POLICY)[0] == BLESSED
    verdict, checks = judge(_metrics(0.74, 0.20), champion, POLICY)
    assert verdict == NOT_BLESSED and [c.name for c in checks if not c.passed] == ["auc_vs_champion"]
    verdict, checks = judge(_metrics(0.76, 0.21), champion, POLICY)
    assert [c.name for c in checks if not c.passed] == ["log_loss_vs_champion"]
    assert judge(_metrics(float("nan"), 0.2), None, POLICY)[0] == NOT_BLESSED


def _variant(name: str, size: int, latency: float, auc_value: float) -> VariantReport:
    return VariantReport(name, name, size, latency, latency, auc_value, 0.0, 0.2, 0.01, 0.0, 0.0)


def test_compression_gate_picks_the_smallest_variant_within_tolerance():
    policy = load_config().compression
    variants = [
        _variant("fp32", 1000, 1.0, 0.780),
        _variant("int8", 300, 1.2, 0.7795),  # within 0.002: eligible
        _variant("pruned", 100, 1.0, 0.770),  # loses 0.01 AUC: rejected
        _variant("distilled", 200, 2.0, 0.781),  # 2x slower than allowed 1.5x: rejected
    ]
    chosen, why = choose(variants, policy)
    assert chosen == "int8" and "smallest eligible" in why
    by_name = {v.name: v for v in variants}
    assert not by_name["pruned"].eligible and "AUC drop" in by_name["pruned"].reason
    assert not by_name["distilled"].eligible and "latency" in by_name["distilled"].reason
    assert by_name["int8"].size_ratio == pytest.approx(0.3)
    only_fp32 = [_variant("fp32", 1000, 1.0, 0.78), _variant("int8", 300, 1.0, 0.70)]
    assert choose(only_fp32, policy)[0] == "fp32"
    miscalibrated = [_variant("fp32", 1000, 1.0, 0.78), _variant("int8", 300, 1.0, 0.78)]
    miscalibrated[1].calibration_error = 0.05
    assert choose(miscalibrated, policy, max_calibration_error=0.02)[0] == "fp32"
    assert "calibration error 0.0500 > 0.02" in miscalibrated[1].reason
