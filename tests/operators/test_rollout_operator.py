"""StartRolloutOperator's event_start: where a replayed day's rollout starts counting, or a clear error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest


def _operator(event_start: object):
    from loopline_airflow.operators.rollout import StartRolloutOperator

    return StartRolloutOperator(task_id="start_rollout", event_start=event_start)


def test_event_start_is_parsed_as_an_aware_time_or_left_to_the_controller() -> None:
    assert _operator("2026-11-30T00:00:00Z")._event_start() == datetime(2026, 11, 30, tzinfo=UTC)
    assert _operator("2026-11-30T01:00:00+01:00")._event_start() == datetime(2026, 11, 30, tzinfo=UTC)
    assert _operator(None)._event_start() is None and _operator("")._event_start() is None
    assert "event_start" in _operator(None).template_fields


@pytest.mark.parametrize(("value", "message"), [("yesterday", "ISO 8601"), ("2026-11-30T00:00:00", "time zone")])
def test_a_bad_event_start_fails_naming_the_value(value: str, message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=message) as error:
        _operator(value)._event_start()
    assert value in str(error.value)
