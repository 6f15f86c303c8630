"""Small helpers every Loopline operator needs: the task's data interval and secrets from connections."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


def as_utc_datetime(value: Any, name: str) -> datetime:
    """A datetime (or ISO 8601 text, as rendered from a template) as an aware UTC datetime; naive means UTC."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}: expected an ISO 8601 date-time, got {text!r}") from None
    if not isinstance(value, datetime):
        raise TypeError(f"{name}: expected a datetime or ISO 8601 text, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # pendulum.DateTime is a datetime subclass; make it a plain one so nothing downstream depends on pendulum.
    value = value.astimezone(UTC)
    return datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, tzinfo=UTC
    )


def data_interval(context: Mapping[str, Any], start: Any = None, end: Any = None) -> tuple[datetime, datetime]:
    """The ``[start, end)`` (UTC) a daily task works on.

    In order: explicit ``start``/``end`` (both or neither); the run's data interval if it is a real
    one (``start < end``); else the UTC day before the anchor, where the anchor is the interval end,
    the logical date or the run's ``run_after``. The fallback covers Airflow 3's point intervals
    (``CronTriggerTimetable``: start == end == logical date, a run at midnight D processes day D-1)
    and REST triggers without a logical date (all of them None).
    """
    if (start in (None, "")) != (end in (None, "")):
        raise ValueError(f"give both interval_start and interval_end or neither (got {start!r}, {end!r})")
    if start not in (None, ""):
        begin, finish = as_utc_datetime(start, "interval_start"), as_utc_datetime(end, "interval_end")
    else:
        begin = context.get("data_interval_start")
        finish = context.get("data_interval_end")
        if begin is not None and finish is not None:
            begin, finish = as_utc_datetime(begin, "data_interval_start"), as_utc_datetime(finish, "data_interval_end")
        if begin is None or finish is None or finish <= begin:
            dag_run = context.get("dag_run")
            anchor = finish or context.get("logical_date") or getattr(dag_run, "run_after", None)
            if anchor is None:
                raise ValueError("the context has no data interval, logical date or run_after to take a day from")
            anchor = as_utc_datetime(anchor, "logical_date")
            finish = anchor.replace(hour=0, minute=0, second=0, microsecond=0)
            begin = finish - timedelta(days=1)
    if finish <= begin:
        raise ValueError(f"interval end {finish.isoformat()} is not after its start {begin.isoformat()}")
    return begin, finish


def secret_from_connection(conn_id: str) -> bytes | None:
    """The password of an Airflow connection as bytes (e.g. the PII pseudonymisation key), None if undefined."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return connection.password.encode("utf-8") if connection.password else None
