"""``IngestLogsOperator``: load one data interval of event logs into the warehouse (``loopline.ingest``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from loopline_airflow.hooks.logstore import LogStoreHook
from loopline_airflow.hooks.warehouse import WarehouseHook
from loopline_airflow.utils import data_interval, secret_from_connection


class IngestLogsOperator(BaseOperator):
    """Validate, dedupe, redact and load the logs of the run's data interval; return the counts to XCom.

    Re-running a task replaces its interval's partitions, so retries and backfills never double rows.
    A quarantined share above the threshold fails the task without retries (after everything has been
    stored: the quarantine is there to inspect); the counts are then pushed under XCom key ``counts``.

    :param interval_start: start of the interval (datetime or ISO text; templated). Default: the run's
        data interval, or the day before the logical date for point intervals.
    :param interval_end: end of the interval, exclusive (templated); give both or neither.
    :param log_store_uri: log store URI (templated); default from the log store connection / settings.
    :param warehouse_uri: warehouse URI (templated); default from the warehouse connection / settings.
    :param quarantine_uri: where quarantine files go (templated); default ``<artifact_uri>/quarantine``.
    :param quarantine_threshold: fail above this quarantined share (templated, e.g. from a DAG Param;
        default from settings, 0.01).
    :param log_store_conn_id: Airflow connection of the log store.
    :param warehouse_conn_id: Airflow connection of the warehouse.
    :param pii_conn_id: Airflow connection whose password is the pseudonymisation key; without it the
        key comes from ``LOOPLINE_PSEUDONYMIZATION_KEY``, and without that user ids are kept.
    """

    template_fields: Sequence[str] = (
        "interval_start",
        "interval_end",
        "log_store_uri",
        "warehouse_uri",
        "quarantine_uri",
        "quarantine_threshold",
    )
    ui_color = "#d8ecf3"

    def __init__(
        self,
        *,
        interval_start: Any = None,
        interval_end: Any = None,
        log_store_uri: str | None = None,
        warehouse_uri: str | None = None,
        quarantine_uri: str | None = None,
        quarantine_threshold: float | None = None,
        log_store_conn_id: str = LogStoreHook.default_conn_name,
        warehouse_conn_id: str = WarehouseHook.default_conn_name,
        pii_conn_id: str = "loopline_pii",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.log_store_uri = log_store_uri
        self.warehouse_uri = warehouse_uri
        self.quarantine_uri = quarantine_uri
        self.quarantine_threshold = quarantine_threshold
        self.log_store_conn_id = log_store_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self.pii_conn_id = pii_conn_id

    @functools.cached_property
    def log_store_hook(self) -> LogStoreHook:
        return LogStoreHook(loopline_logs_conn_id=self.log_store_conn_id)

    @functools.cached_property
    def warehouse_hook(self) -> WarehouseHook:
        return WarehouseHook(loopline_warehouse_conn_id=self.warehouse_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.ingest import QuarantineThresholdExceeded, ingest_interval

        start, end = data_interval(context, self.interval_start, self.interval_end)
        location = self.log_store_hook.get_location()
        self.log.info(
            "ingesting [%s, %s) from %s", start.isoformat(), end.isoformat(), self.log_store_uri or location.uri
        )
        try:
            result = ingest_interval(
                start,
                end,
                log_store_uri=self.log_store_uri or location.uri,
                warehouse_uri=self.warehouse_uri or self.warehouse_hook.get_uri(),
                quarantine_uri=self.quarantine_uri or None,
                quarantine_threshold=_share(self.quarantine_threshold),
                pseudonymization_key=secret_from_connection(self.pii_conn_id),
                s3_endpoint_url=location.s3_endpoint_url,
                s3_client=location.s3_client,
            )
        except QuarantineThresholdExceeded as error:
            counts = error.result.to_dict()
            self.log.error("%s\n%s", error, format_counts(counts))
            task_instance = context.get("ti") if hasattr(context, "get") else None
            if task_instance is not None:
                task_instance.xcom_push(key="counts", value=counts)
            raise AirflowFailException(str(error)) from error
        counts = result.to_dict()
        self.log.info("ingest run %s\n%s", result.run_id, format_counts(counts))
        return counts


def format_counts(counts: dict[str, Any]) -> str:
    """The run's counts as an aligned two-column table for the task log."""
    rows: list[tuple[str, str]] = []
    for key in ("status", "lines_read", "loaded", "duplicates", "quarantined", "quarantined_share", "sources"):
        rows.append((key, str(counts.get(key))))
    for reason, number in sorted(counts.get("quarantined_by_reason", {}).items()):
        rows.append((f"  quarantined: {reason}", str(number)))
    for kind, number in sorted(counts.get("redactions_by_type", {}).items()):
        rows.append((f"  redacted: {kind}", str(number)))
    rows.append(("quarantine", str(counts.get("quarantine_uri"))))
    rows.append(("seconds", str(counts.get("seconds"))))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _share(value: Any) -> float | None:
    """The threshold as a float (a rendered template is text); None or empty means the default."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"quarantine_threshold: expected a share between 0 and 1, got {value!r}") from None
