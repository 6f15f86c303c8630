"""loopline.gates: the policy file and its overrides, decisions and their forms (dict, table), alerts
(log line, webhook on 127.0.0.1, Airflow-shaped callbacks), and the planted scenarios run through
both gates on synthetic training windows."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from loopline.drift import run_drift_report
from loopline.gates import (
    Check,
    GateBlockedError,
    GateDecision,
    PolicyError,
    alert,
    combine_decisions,
    deadline_missed,
    decide_drift,
    decide_quality,
    failure_callback,
    load_policy,
)
from loopline.quality import check_quality

# --------------------------------------------------------------------------------------------------
# Synthetic training windows for the planted scenarios
# --------------------------------------------------------------------------------------------------

CATEGORIES = np.array(["electronics", "books", "fashion", "home", "sports", "beauty", "toys", "grocery"])


def training_window(
    rows: int,
    seed: int,
    *,
    preference_shift: bool = False,
    bot_click_share: float = 0.0,
    pii_rows: int = 0,
) -> pd.DataFrame:
    """One row per impression, like the Feast training set: ids, label, 4 numerical + 3 categorical
    features. ``preference_shift`` moves category tastes (what is shown and clicked, item and user
    click-through); bots click 92 % of what they see; PII is planted in the search query."""
    rng = np.random.default_rng(seed)
    users = max(rows // 20, 1)
    user = rng.integers(0, users, rows)
    user_bias = rng.normal(0.0, 0.3, users)
    weights = np.linspace(2.0, 1.0, len(CATEGORIES))
    if preference_shift:
        weights = np.roll(weights, 4)
    category = rng.choice(len(CATEGORIES), rows, p=weights / weights.sum())
    position = rng.integers(1, 11, rows)
    liked = (category + (4 if preference_shift else 0)) % len(CATEGORIES) < 3
    logit = -2.9 + user_bias[user] - 0.06 * (position - 1) + 0.5 * liked
    clicked = rng.random(rows) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame(
        {
            "event_id": [str(uuid.UUID(int=int(x), version=4)) for x in rng.integers(0, 2**62, rows)],
            "request_id": [f"{seed}-{i // 10}" for i in range(rows)],
            "user_id": np.char.add("u", np.char.zfill(user.astype(str), 6)).astype(object),
            "item_id": [f"i{i:05d}" for i in rng.integers(0, 20_000, rows)],
            "event_at": pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 2 * 86_400, rows), "s"),
            "position": position,
            "variant": "champion",
            "model_version": f"loopline-ctr/{seed % 7}",
            "is_clicked": clicked,
            "is_purchased": clicked & (rng.random(rows) < 0.1),
            "user_ctr_7d": rng.beta(2, 24 if preference_shift else 38, rows),
            "item_ctr_28d": rng.beta(2, 20 if preference_shift else 38, rows),
            "price": rng.lognormal(3.5, 0.8, rows),
            "device": rng.choice(["desktop", "mobile", "tablet", "unknown"], rows, p=[0.35, 0.55, 0.08, 0.02]),
            "page": rng.choice(["home", "search", "category", "product"], rows),
            "item_category": CATEGORIES[category],
            "query": rng.choice(np.array(["red dress", "iphone 15 pro 256gb", "yoga mat", None], dtype=object), rows),
        }
    )
    if bot_click_share:
        human_clicks = int(frame["is_clicked"].sum())
        bot_rows = round(human_clicks * bot_click_share / (1 - bot_click_share) / 0.92)
        bots = frame.sample(bot_rows, replace=True, random_state=seed).reset_index(drop=True)
        bots["user_id"] = [f"b{i % max(bot_rows // 25, 1):05d}" for i in range(bot_rows)]
        bots["request_id"] = [f"bot-{seed}-{i // 10}" for i in range(bot_rows)]
        bots["is_clicked"] = rng.random(bot_rows) < 0.92
        frame = pd.concat([frame, bots], ignore_index=True)
    if pii_rows:
        planted = rng.choice(len(frame), pii_rows, replace=False)
        frame.loc[planted, "query"] = [
            f"order status jane.doe{i}@example.com" if i % 2 else f"call me at +49 171 {1000000 + i}"
            for i in range(pii_rows)
        ]
    return frame


def run_gates(current: pd.DataFrame, reference: pd.DataFrame, **drift_kwargs) -> tuple[GateDecision, ...]:
    """Both gates as the retrain DAG runs them; returns (quality, drift, combined)."""
    quality = decide_quality(check_quality(current, reference=reference, trailing_volumes=[len(reference)] * 5))
    drift = decide_drift(run_drift_report(current, reference, **drift_kwargs))
    return quality, drift, combine_decisions(quality, drift)


# --------------------------------------------------------------------------------------------------
# Planted scenarios
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_distribution_passes_in_at_least_18_of_20_seeds():
    false_alarms = []
    for seed in range(20):
        reference = training_window(1500, 1000 + 2 * seed)
        current = training_window(1500, 1001 + 2 * seed)
        _, _, combined = run_gates(current, reference)
        if combined.outcome != "pass":
            false_alarms.append((seed, combined.reasons))
    assert len(false_alarms) <= 2, false_alarms


def test_a_preference_shift_asks_for_retraining_in_both_gates():
    reference = training_window(4000, 1)
    current = training_window(4000, 2, preference_shift=True)
    quality, drift, combined = run_gates(current, reference)

    assert quality.outcome == "retrain"
    statuses = {c.name: c.status for c in quality.checks}
    assert statuses["psi:item_ctr_28d"] == statuses["psi:user_ctr_7d"] == "retrain"
    assert statuses["psi:item_category"] in ("warn", "retrain")
    assert statuses["psi:price"] == statuses["psi:device"] == "ok"
    assert drift.outcome == "retrain"
    assert drift.metrics["drift_share"] >= 0.3
    assert combined.outcome == "retrain"


def test_thirty_percent_bot_clicks_block_training():
    reference = training_window(4000, 3)
    current = training_window(4000, 4, bot_click_share=0.30)
    quality, _, combined = run_gates(current, reference)

    assert quality.outcome == "block"
    assert [c.name for c in quality.checks if c.status == "block"] == ["noisy_click_share"]
    assert 0.25 <= quality.metrics["noisy_click_share"] <= 0.35
    assert combined.outcome == "block"
    assert "noisy_click_share" in quality.reasons[0] and "bot-like users" in quality.reasons[0]


def test_planted_pii_blocks_training():
    reference = training_window(4000, 5)
    current = training_window(4000, 6, pii_rows=12)
    quality, _, combined = run_gates(current, reference)

    assert quality.outcome == "block"
    assert quality.metrics["pii_rows"] == 12
    pii = next(c for c in quality.checks if c.name == "pii_rows")
    assert pii.status == "block" and "query: 12 rows (email 6, phone 6)" in pii.detail
    assert combined.outcome == "block"
    assert "jane.doe" not in json.dumps(combined.to_dict())


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------


def test_the_packaged_policy_loads_and_every_key_is_commented_in_the_file():
    from importlib import resources

    policy = load_policy()
    assert policy.quality.max_pii_rows == 0
    assert 0 < policy.drift.drift_share <= 1
    lines = resources.files("loopline.policy").joinpath("gates.yaml").read_text().splitlines()
    for dotted in policy.flat():
        key = dotted.split(".", 1)[1]
        line = next((line for line in lines if line.strip().startswith(f"{key}:")), None)
        assert line is not None and "#" in line, f"{dotted} has no commented line in gates.yaml"


def test_overrides_take_dotted_or_nested_keys_and_empty_values_keep_the_file():
    policy = load_policy(
        overrides={"quality.max_noisy_share": 0.2, "drift": {"seed": 7, "max_rows": None}, "alert.webhook_url": None}
    )
    assert policy.quality.max_noisy_share == 0.2
    assert policy.drift.seed == 7
    assert policy.drift.max_rows == load_policy().drift.max_rows
    assert load_policy(overrides={"quality.important_features": ["price"]}).quality.important_features == ("price",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quality.max_noise_share": 0.2}, "unknown gate policy key 'quality.max_noise_share'"),
        ({"qualty": {"max_pii_rows": 1}}, "unknown gate policy section 'qualty'"),
        ({"max_pii_rows": 1}, "unknown gate policy key 'max_pii_rows'; use 'section.key'"),
        ({"quality.max_noisy_share": 1.5}, "quality.max_noisy_share: Input should be less than or equal to 1"),
        ({"quality.psi_warn": 0.5}, "psi_warn .* must not exceed psi_retrain"),
        ({"alert.webhook_url": "ftp://x"}, "alert.webhook_url: expected an http"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(PolicyError, match=message):
        load_policy(overrides=overrides)


def test_a_custom_policy_file_must_be_complete_and_valid(tmp_path):
    partial = tmp_path / "gates.yaml"
    partial.write_text("version: 1\nquality: {max_pii_rows: 0}\n")
    with pytest.raises(PolicyError, match="quality.max_noisy_share: Field required"):
        load_policy(partial)
    broken = tmp_path / "broken.yaml"
    broken.write_text("quality: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)
    with pytest.raises(PolicyError, match="cannot read gate policy file"):
        load_policy(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------------


def decision(*statuses: str, gate: str = "quality") -> GateDecision:
    checks = [Check(f"check_{i}", status, float(i), f"block if > {i}") for i, status in enumerate(statuses)]
    return GateDecision.from_checks(gate, checks, thresholds={"quality.x": 1.0}, report_uri="file:///r.json")


def test_the_most_severe_check_decides():
    assert decision("ok", "warn", "skipped").outcome == "pass"
    assert decision("ok", "retrain", "warn").outcome == "retrain"
    assert decision("retrain", "block").outcome == "block"
    assert decision("retrain", "block").reasons == ["check_1 = 1 (block if > 1)"]
    assert decision("ok").reasons == []
    with pytest.raises(ValueError, match="status must be one of"):
        Check("x", "fail", 1, "-")


def test_to_dict_is_json_for_xcom_and_reads_back():
    made = GateDecision.from_checks(
        "quality",
        [Check("psi:price", "retrain", float("inf"), "retrain if > 0.25", "numerical")],
        thresholds={"quality.psi_retrain": 0.25},
        report_uri="s3://bucket/q.json",
        metrics={"max_psi": float("inf")},
    )
    data = json.loads(json.dumps(made.to_dict(), allow_nan=False))
    assert data["outcome"] == "retrain" and data["checks"][0]["value"] == "inf"
    assert data["reasons"] == ["psi:price = inf (retrain if > 0.25): numerical"]
    again = GateDecision.from_dict(data)
    assert again.outcome == made.outcome and again.report_uri == made.report_uri
    assert [c.name for c in again.checks] == ["psi:price"]
    with pytest.raises(ValueError, match="not a GateDecision dict"):
        GateDecision.from_dict({"gate": "quality"})


def test_to_table_shows_outcome_checks_thresholds_and_report():
    table = decide_quality(
        check_quality(training_window(2000, 7, pii_rows=2), reference=training_window(2000, 8))
    ).to_table()
    lines = table.splitlines()
    assert lines[0] == "quality gate: BLOCK"
    assert lines[1].split() == ["check", "value", "rule", "status", "detail"]
    pii_line = next(line for line in lines if line.startswith("pii_rows"))
    assert "block if > 0" in pii_line and " block " in pii_line and "query: 2 rows" in pii_line
    assert any(line.startswith("psi:item_ctr_28d") for line in lines)
    assert lines[-1] == "report: -"


def test_a_decision_can_be_judged_again_under_overridden_thresholds():
    report = check_quality(training_window(4000, 9, bot_click_share=0.3))
    assert decide_quality(report).outcome == "block"
    relaxed = load_policy(overrides={"quality.max_noisy_share": 0.5})
    assert decide_quality(report, relaxed).outcome == "pass"
    assert decide_quality(report, relaxed).thresholds["quality.max_noisy_share"] == 0.5


def test_combined_decision_keeps_each_gate_s_checks():
    combined = combine_decisions(decision("ok", "retrain", gate="drift"), decision("block", gate="quality"))
    assert combined.outcome == "block"
    assert [c.name for c in combined.checks] == ["drift.check_0", "drift.check_1", "quality.check_0"]
    with pytest.raises(ValueError, match="at least one"):
        combine_decisions()


# --------------------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 204

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[type[_Recorder]]:
    handler = type("Recorder", (_Recorder,), {"received": [], "status": 204})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/gates"
    yield handler
    server.shutdown()
    server.server_close()


def test_alert_logs_one_json_line_and_posts_the_decision(webhook, caplog):
    made = decision("ok", "block")
    with caplog.at_level(logging.INFO, logger="loopline.gates"):
        delivered = alert(made, webhook_url=webhook.url)
    assert delivered is True
    records = [r for r in caplog.records if r.name == "loopline.gates"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    logged = json.loads(records[0].getMessage())
    assert logged["event"] == "gate_decision" and logged["outcome"] == "block"
    assert logged["reasons"] == ["check_1 = 1 (block if > 1)"]
    assert webhook.received[0]["path"] == "/hooks/gates"
    assert webhook.received[0]["type"] == "application/json"
    assert webhook.received[0]["json"]["checks"][1]["status"] == "block"


def test_pass_logs_at_info_and_no_webhook_means_no_post(caplog):
    with caplog.at_level(logging.INFO, logger="loopline.gates"):
        assert alert(decision("ok")) is None
    assert [r.levelno for r in caplog.records if r.name == "loopline.gates"] == [logging.INFO]


def test_a_failing_webhook_is_logged_never_raised(webhook, caplog):
    webhook.status = 500
    with caplog.at_level(logging.WARNING, logger="loopline.gates"):
        assert alert(decision("retrain"), webhook_url=webhook.url) is False
    assert "answered HTTP 500" in caplog.text or "HTTPError" in caplog.text

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loopline.gates"):
        assert alert(decision("retrain"), webhook_url=f"http://127.0.0.1:{closed_port}/x", timeout=2) is False
    assert "alert webhook" in caplog.text and "failed" in caplog.text


class _TaskInstance:
    dag_id = "loopline_retrain"
    task_id = "quality_gate"
    run_id = "scheduled__2024-05-02"
    try_number = 1


def test_failure_callback_reports_the_blocking_decision(webhook, caplog):
    blocked = decision("block")
    callback = failure_callback(webhook.url)
    with caplog.at_level(logging.ERROR, logger="loopline.gates"):
        callback({"ti": _TaskInstance(), "exception": GateBlockedError(blocked), "logical_date": "2024-05-02"})
    payload = webhook.received[0]["json"]
    assert payload["event"] == "task_failed"
    assert (payload["dag_id"], payload["task_id"], payload["run_id"]) == (
        "loopline_retrain",
        "quality_gate",
        "scheduled__2024-05-02",
    )
    assert payload["exception"].startswith("GateBlockedError: quality gate blocked training")
    assert payload["decision"]["outcome"] == "block"
    assert json.loads(caplog.records[-1].getMessage())["task_id"] == "quality_gate"


def test_deadline_missed_callback_posts_without_a_context(webhook):
    deadline_missed(webhook_url=webhook.url, dag_id="loopline_retrain")
    deadline_missed(context={"dag_run": _TaskInstance()}, webhook_url=webhook.url)
    assert webhook.received[0]["json"] == {"event": "deadline_missed", "dag_id": "loopline_retrain"}
    assert webhook.received[1]["json"]["run_id"] == "scheduled__2024-05-02"
