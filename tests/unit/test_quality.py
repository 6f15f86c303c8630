"""loopline.quality: PSI / KL against closed forms and scipy, binning edge cases, the PII scan,
label noise, volume and label-rate checks on small synthetic training windows."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import entropy, norm

from loopline.gates import load_policy
from loopline.pii import contains_pii
from loopline.quality import (
    MISSING,
    UNSEEN,
    _pii_candidates,
    bin_counts,
    bin_distributions,
    check_quality,
    infer_feature_columns,
    kl_divergence,
    kl_from_shares,
    population_stability_index,
    psi_from_shares,
    save_quality_report,
    scan_pii,
    smooth_shares,
)


def closed_form_psi(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum((q - p) * np.log(q / p)))


def categories(counts: dict[str, int]) -> list[str]:
    return [value for value, count in counts.items() for _ in range(count)]


# --------------------------------------------------------------------------------------------------
# PSI and KL
# --------------------------------------------------------------------------------------------------


def test_categorical_psi_and_kl_match_the_closed_form_and_scipy():
    reference = categories({"a": 500, "b": 300, "c": 200})
    current = categories({"a": 400, "b": 400, "c": 200})
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])

    psi = population_stability_index(reference, current, categorical=True, smoothing=0)
    kl = kl_divergence(reference, current, categorical=True, smoothing=0)

    assert psi == pytest.approx(closed_form_psi(p, q), rel=1e-12)
    assert psi == pytest.approx(-0.1 * math.log(0.8) + 0.1 * math.log(4 / 3), rel=1e-12)
    assert kl == pytest.approx(entropy(q, p), rel=1e-12)
    assert psi == pytest.approx(entropy(q, p) + entropy(p, q), rel=1e-12)


def test_numerical_bins_are_reference_deciles_with_open_ends():
    reference = np.arange(1000, dtype=float)  # each decile bin holds exactly 100 values
    # current: 400 values in bin 0, 200 in bin 1, 100 in bins 2..5, none in 6..8, beyond the max in bin 9
    current = np.concatenate(
        [np.full(400, 50.0), np.full(200, 150.0), np.repeat([250.0, 350.0, 450.0, 550.0], 100), np.full(0, 0.0)]
    )
    current = np.concatenate([current, np.full(100, 5000.0)])  # far above the reference: last, open bin
    ref_counts, cur_counts, labels = bin_counts(reference, current, bins=10)

    assert ref_counts.tolist() == [100] * 10
    assert cur_counts.tolist() == [400, 200, 100, 100, 100, 100, 0, 0, 0, 100]
    assert labels[0].startswith("[-inf") and labels[-1].endswith("inf)")

    p, q, _ = bin_distributions(reference, current, bins=10, smoothing=0.5)
    expected_p = (np.full(10, 100) + 0.5) / (1000 + 5)
    expected_q = (cur_counts + 0.5) / (1100 + 5)
    np.testing.assert_allclose(p, expected_p, rtol=1e-12)
    np.testing.assert_allclose(q, expected_q, rtol=1e-12)
    assert population_stability_index(reference, current, smoothing=0.5) == pytest.approx(
        closed_form_psi(expected_p, expected_q), rel=1e-12
    )
    assert kl_divergence(reference, current, smoothing=0.5) == pytest.approx(entropy(expected_q, expected_p), rel=1e-12)


def test_empty_bins_are_infinite_without_smoothing_and_finite_with_it():
    reference = np.arange(1000, dtype=float)
    current = np.full(500, 10.0)  # every current value in bin 0: nine empty bins

    assert population_stability_index(reference, current, smoothing=0) == math.inf
    p0, q0, _ = bin_distributions(reference, current, smoothing=0)
    # KL(current || reference) is finite (q = 0 terms vanish) and equals scipy's; KL(ref || cur) is not.
    assert kl_divergence(reference, current, smoothing=0) == pytest.approx(entropy(q0, p0), rel=1e-12)
    assert kl_divergence(reference, current, smoothing=0) == pytest.approx(math.log(10), rel=1e-12)
    assert entropy(p0, q0) == math.inf

    p, q, _ = bin_distributions(reference, current, smoothing=0.5)
    psi = population_stability_index(reference, current, smoothing=0.5)
    assert math.isfinite(psi) and psi > 3
    assert psi == pytest.approx(closed_form_psi(p, q), rel=1e-12)
    assert kl_divergence(reference, current, smoothing=0.5) == pytest.approx(entropy(q, p), rel=1e-12)


def test_unseen_categories_land_in_their_own_bin():
    reference = categories({"mobile": 600, "desktop": 400})
    current = categories({"mobile": 500, "desktop": 300, "smart-tv": 200})
    ref_counts, cur_counts, labels = bin_counts(reference, current, categorical=True)

    assert labels == ["desktop", "mobile", UNSEEN]
    assert ref_counts.tolist() == [400, 600, 0]
    assert cur_counts.tolist() == [300, 500, 200]

    assert kl_divergence(reference, current, categorical=True, smoothing=0) == math.inf
    p0, q0, _ = bin_distributions(reference, current, categorical=True, smoothing=0)
    assert entropy(q0, p0) == math.inf  # scipy agrees: mass where the reference has none

    p, q, _ = bin_distributions(reference, current, categorical=True, smoothing=0.5)
    np.testing.assert_allclose(p, np.array([400.5, 600.5, 0.5]) / 1001.5)
    np.testing.assert_allclose(q, np.array([300.5, 500.5, 200.5]) / 1001.5)
    assert population_stability_index(reference, current, categorical=True) == pytest.approx(
        closed_form_psi(p, q), rel=1e-12
    )
    assert kl_divergence(reference, current, categorical=True) == pytest.approx(entropy(q, p), rel=1e-12)


def test_missing_values_get_their_own_bin():
    reference = pd.Series([1.0, 2.0, 3.0, 4.0, np.nan])
    current = pd.Series([1.0, np.nan, np.nan, np.nan])
    ref_counts, cur_counts, labels = bin_counts(reference, current, bins=2)
    assert labels[-1] == MISSING
    assert (ref_counts[-1], cur_counts[-1]) == (1, 3)
    _, cur_cat, cat_labels = bin_counts(pd.Series(["a", None]), pd.Series([None, None, "b"]), categorical=True)
    assert cat_labels == ["a", UNSEEN, MISSING] and cur_cat.tolist() == [0, 1, 2]


def test_psi_of_a_shifted_normal_matches_the_binned_closed_form():
    """Reference N(0,1), current N(0.5,1): decile bins of the reference hold 10 % each, and the
    current's share of bin i is Phi(e_i+1 - 0.5) - Phi(e_i - 0.5)."""
    rng = np.random.default_rng(7)
    reference = rng.normal(0.0, 1.0, 400_000)
    current = rng.normal(0.5, 1.0, 400_000)
    edges = np.concatenate(([-np.inf], norm.ppf(np.arange(1, 10) / 10), [np.inf]))
    p = np.full(10, 0.1)
    q = np.diff(norm.cdf(edges - 0.5))

    assert population_stability_index(reference, current) == pytest.approx(closed_form_psi(p, q), abs=0.003)
    assert kl_divergence(reference, current) == pytest.approx(entropy(q, p), abs=0.002)
    # Binning can only lose information: the unbinned symmetric KL of the two normals is 0.5**2.
    assert population_stability_index(reference, current) < 0.25


def test_identical_samples_have_zero_psi_and_kl():
    values = np.random.default_rng(1).lognormal(size=5000)
    assert population_stability_index(values, values) == pytest.approx(0.0, abs=1e-15)
    assert kl_divergence(values, values) == pytest.approx(0.0, abs=1e-15)


@given(
    st.lists(st.integers(0, 50), min_size=2, max_size=12).flatmap(
        lambda counts: st.tuples(
            st.just(counts), st.lists(st.integers(0, 50), min_size=len(counts), max_size=len(counts))
        )
    ),
    st.floats(0.01, 2.0),
)
def test_psi_is_the_symmetrised_kl_and_never_negative(count_pair, smoothing):
    ref_counts, cur_counts = (np.array(counts) for counts in count_pair)
    p, q = smooth_shares(ref_counts, smoothing), smooth_shares(cur_counts, smoothing)
    psi = psi_from_shares(p, q)
    assert psi >= 0
    assert psi == pytest.approx(kl_from_shares(p, q) + kl_from_shares(q, p), rel=1e-9, abs=1e-12)
    assert kl_from_shares(p, q) == pytest.approx(entropy(q, p), rel=1e-9, abs=1e-12)


def test_a_reference_without_values_compares_missing_with_present_shares():
    # A feature that did not exist in the reference window (all missing) must not stop the gate.
    assert population_stability_index([np.nan, np.nan], [np.nan, np.nan]) == pytest.approx(0.0)
    assert population_stability_index([np.nan] * 50, [1.0] * 50) > 1.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="reference is empty"):
        population_stability_index([], [1.0])
    with pytest.raises(ValueError, match="current is empty"):
        population_stability_index([1.0], [])
    with pytest.raises(ValueError, match="not numeric.*categorical=True"):
        population_stability_index(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        population_stability_index([1.0, 2.0], [1.0], bins=1)
    with pytest.raises(ValueError, match="same length|one length"):
        psi_from_shares([0.5, 0.5], [1.0])


# --------------------------------------------------------------------------------------------------
# PII scan
# --------------------------------------------------------------------------------------------------

_PII_ALPHABET = st.sampled_from(list("0123456789 .-:@+()/abcxyzE") + ["com", "example", "+49", "0171"])


@given(st.lists(_PII_ALPHABET, max_size=30).map("".join))
def test_the_vectorised_prefilter_never_drops_text_that_contains_pii(text):
    candidates = _pii_candidates(np.array([text], dtype=object))
    if contains_pii(text):
        assert candidates.tolist() == [0]


def test_pii_scan_counts_rows_per_column_and_type_and_skips_whole_uuids():
    # A UUID whose "07685387-7876" once read as a national phone number; a UUID carries no PII.
    tricky_uuid = "07685387-7876-4bee-8d98-d31c7896bb15"
    frame = pd.DataFrame(
        {
            "event_id": [tricky_uuid, str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())],
            "query": ["red dress", "mail jane@example.com", "mail jane@example.com", "call +49 171 2345678"],
            "device": pd.Categorical(["mobile", "mobile", "desktop", "10.0.0.1"]),
            "price": [1.0, 2.0, 3.0, 4.0],
        }
    )
    stats, rows = scan_pii(frame)
    by_column = {s.column: s for s in stats}

    assert set(by_column) == {"event_id", "query", "device"}  # every string column, not the float one
    assert by_column["event_id"].rows == 0
    assert by_column["query"].rows == 3 and by_column["query"].types == {"email": 2, "phone": 1}
    assert by_column["device"].rows == 1 and by_column["device"].types == {"ip": 1}
    assert rows == 3  # row 3 has PII in two columns: counted once


# --------------------------------------------------------------------------------------------------
# check_quality
# --------------------------------------------------------------------------------------------------


def window(rows: int, seed: int, *, click_rate: float = 0.05) -> pd.DataFrame:
    """A small training window: 10 impressions per request, 20 per user, three features."""
    rng = np.random.default_rng(seed)
    users = max(rows // 20, 1)
    user = rng.integers(0, users, rows)
    return pd.DataFrame(
        {
            "event_id": [str(uuid.UUID(int=int(x))) for x in rng.integers(0, 2**62, rows)],
            "request_id": [f"r{seed}-{i // 10}" for i in range(rows)],
            "user_id": [f"u{u:05d}" for u in user],
            "item_id": [f"i{i % 10:03d}" for i in range(rows)],
            "event_at": pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, rows), "s"),
            "model_version": f"loopline-ctr/{seed}",
            "is_clicked": rng.random(rows) < click_rate,
            "price": rng.lognormal(3, 0.5, rows),
            "position": rng.integers(1, 11, rows),
            "device": rng.choice(["mobile", "desktop", "tablet"], rows),
        }
    )


def add_bots(frame: pd.DataFrame, click_share: float, seed: int) -> pd.DataFrame:
    """Append bot users (92 % click-through) so that ``click_share`` of all clicks are theirs."""
    rng = np.random.default_rng(seed)
    human_clicks = int(frame["is_clicked"].sum())
    bot_clicks = round(human_clicks * click_share / (1 - click_share))
    bots = frame.sample(round(bot_clicks / 0.92), random_state=seed, replace=True).reset_index(drop=True)
    bots["user_id"] = [f"bot{i % 10:02d}" for i in range(len(bots))]  # about 14 impressions each
    bots["request_id"] = [f"bot-request-{i}" for i in range(len(bots))]
    bots["is_clicked"] = rng.random(len(bots)) < 0.92
    return pd.concat([frame, bots], ignore_index=True)


def statuses(report) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def test_a_clean_window_passes_every_check():
    report = check_quality(window(4000, 2), reference=window(4000, 1), trailing_volumes=[3900, 4100, 4000])
    assert report.numerical_columns == ("price", "position")
    assert report.categorical_columns == ("device",)
    assert {status for status in statuses(report).values()} == {"ok"}
    assert report.noise.noisy_share < 0.02


def test_thirty_percent_bot_clicks_are_estimated_and_block():
    frame = add_bots(window(6000, 3), click_share=0.30, seed=3)
    report = check_quality(frame, reference=window(6000, 1))
    assert report.noise.bot_users == 10
    assert report.noise.noisy_share == pytest.approx(0.30, abs=0.04)
    assert report.noise.population_rate == pytest.approx(0.05, abs=0.01)  # judged against humans only
    assert statuses(report)["noisy_click_share"] == "block"


def test_conflicting_duplicate_labels_and_orphan_clicks_count_as_noise():
    frame = window(200, 4, click_rate=0.0)
    frame.loc[:9, "is_clicked"] = True  # ten clicks, one per request 0 item
    duplicates = frame.iloc[:4].copy()
    duplicates["is_clicked"] = [False, False, True, True]  # rows 0,1 conflict; rows 2,3 agree
    frame = pd.concat([frame, duplicates], ignore_index=True)

    report = check_quality(frame, orphan_clicks=5, user_column=None)
    noise = report.noise
    assert (noise.duplicate_groups, noise.duplicate_rows) == (4, 8)
    assert (noise.conflicting_groups, noise.conflicting_rows, noise.conflicting_clicks) == (2, 4, 2)
    assert noise.clicks == 12 and noise.orphan_clicks == 5
    assert noise.noisy_share == pytest.approx((2 + 5) / (12 + 5))
    assert statuses(report)["noisy_click_share"] == "block"
    assert not noise.bot_check


def test_volume_far_below_the_trailing_median_blocks_and_short_history_is_skipped():
    frame = window(1000, 5)
    assert statuses(check_quality(frame, trailing_volumes=[3000, 2900, 3100]))["volume_ratio"] == "block"
    assert statuses(check_quality(frame, trailing_volumes=[1000, 990, 1010]))["volume_ratio"] == "ok"
    assert statuses(check_quality(frame, trailing_volumes=[300, 310, 290]))["volume_ratio"] == "warn"
    assert statuses(check_quality(frame, trailing_volumes=[3000]))["volume_ratio"] == "skipped"
    empty = check_quality(frame.iloc[:0], trailing_volumes=[1000, 1000, 1000])
    assert statuses(empty)["rows"] == "block" and statuses(empty)["volume_ratio"] == "block"


def test_label_rate_anomaly_needs_both_a_large_ratio_and_a_significant_z():
    reference = window(5000, 1, click_rate=0.05)
    doubled = window(5000, 6, click_rate=0.15)
    report = check_quality(doubled, reference=reference, user_column=None)
    assert report.label_rate.baseline_source == "reference"
    assert statuses(report)["label_rate_ratio"] == "block"
    # the same ratio (2.5x) on 40 rows is not significant: z = 0.075 / sqrt(0.05 * 0.95 / 40) = 2.2
    small = window(40, 6).assign(is_clicked=[True] * 5 + [False] * 35)
    small_report = check_quality(small, trailing_label_rates=[0.05] * 5, user_column=None)
    assert small_report.label_rate.baseline_source == "trailing"
    assert small_report.label_rate.ratio == pytest.approx(2.5)
    assert small_report.label_rate.z == pytest.approx(0.075 / math.sqrt(0.05 * 0.95 / 40))
    assert statuses(small_report)["label_rate_ratio"] == "ok"
    single_class = window(500, 7, click_rate=0.0)
    assert statuses(check_quality(single_class))["label_rate_ratio"] == "block"


def test_planted_pii_blocks_and_the_report_never_contains_the_values():
    frame = window(2000, 8)
    frame["query"] = "running shoes"
    frame.loc[[3, 50, 700], "query"] = ["shoes jane.doe@example.com", "call 030 12345678", "jane.doe@example.com"]
    report = check_quality(frame)
    assert report.pii_rows == 3
    assert statuses(report)["pii_rows"] == "block"
    text = json.dumps(report.to_dict())
    assert "jane.doe" not in text and "12345678" not in text
    assert '"email": 2' in text


def test_feature_psi_asks_for_retraining_only_on_important_features():
    reference = window(4000, 1)
    current = window(4000, 9)
    current["device"] = np.where(np.arange(4000) % 2 == 0, "smart-tv", current["device"])  # unseen category
    report = check_quality(current, reference=reference, user_column=None)
    drift = {d.column: d for d in report.feature_drift}
    assert drift["device"].unseen_share == pytest.approx(0.5)
    assert drift["device"].psi > 1
    assert statuses(report)["psi:device"] == "retrain"

    policy = load_policy(overrides={"quality.important_features": ["price"]})
    assert {c.name: c.status for c in report.judge(policy)}["psi:device"] == "warn"


def test_column_roles_are_inferred_by_dtype_and_role_columns_are_skipped():
    frame = window(300, 10)
    frame["query"] = "free text"
    frame["is_purchased"] = False
    frame["is_new_user"] = True
    numerical, categorical = infer_feature_columns(frame)
    assert numerical == ["price", "position"]
    assert categorical == ["device", "is_new_user"]  # ids (high cardinality), labels, versions excluded


def test_missing_columns_and_bad_labels_raise_clear_errors():
    frame = window(100, 11)
    with pytest.raises(ValueError, match="label column 'clicked'"):
        check_quality(frame, label_column="clicked")
    with pytest.raises(ValueError, match="user column 'visitor'.*None to skip"):
        check_quality(frame, user_column="visitor")
    bad = frame.assign(is_clicked=2)
    with pytest.raises(ValueError, match="booleans or 0/1"):
        check_quality(bad)
    with pytest.raises(ValueError, match="feature column 'colour'"):
        check_quality(frame, numerical_columns=["colour"], categorical_columns=[])
    with pytest.raises(ValueError, match="missing from the reference"):
        check_quality(frame, reference=frame.drop(columns=["price"]))


def test_the_report_is_saved_as_json_locally_and_on_s3(tmp_path, s3_endpoint, s3_bucket):
    import boto3

    report = check_quality(window(500, 12), reference=window(500, 13))
    directory = tmp_path / "reports" / "dt=2024-05-01"
    local_uri = save_quality_report(report, directory.as_uri())
    assert local_uri == (directory / "quality_report.json").as_uri()
    saved = json.loads((directory / "quality_report.json").read_text())
    assert saved["rows"] == 500 and saved["checks"] and saved["report_uri"] is None

    s3_uri = save_quality_report(report, f"s3://{s3_bucket}/quality/dt=2024-05-01", s3_endpoint_url=s3_endpoint)
    assert s3_uri == f"s3://{s3_bucket}/quality/dt=2024-05-01/quality_report.json"
    assert report.report_uri == s3_uri
    body = (
        boto3.client("s3", endpoint_url=s3_endpoint)
        .get_object(Bucket=s3_bucket, Key="quality/dt=2024-05-01/quality_report.json")["Body"]
        .read()
    )
    assert json.loads(body)["rows"] == 500
