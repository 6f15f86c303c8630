"""Feast operators: register the feature repository, and materialize exactly a run's data interval."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from loopline_airflow.hooks.warehouse import WarehouseHook
from loopline_airflow.utils import data_interval


class FeastApplyOperator(BaseOperator):
    """Apply ``feature_repo/`` to the profile's feature store; return the plan it carried out.

    Idempotent: a second apply reports no changes. Runs before materialization so a changed
    FeatureService or view is registered before data is loaded into it.
    """

    ui_color = "#e4d7f5"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.features import apply

        summary = apply().to_dict()
        self.log.info("feast apply: %s", summary)
        return summary


class FeastMaterializeOperator(BaseOperator):
    """Load the feature snapshots of the run's data interval into the online store.

    Calls ``loopline.features.materialize_interval(start, end, overlap)``, i.e. Feast's
    ``materialize(start - overlap, end)`` — never ``materialize_incremental``, whose "since the last
    run" window would make re-runs and backfills read other days. Locally it first exports the
    interval's snapshot days from the warehouse to the offline store's Parquet files.

    :param interval_start: start of the interval (templated); default the run's data interval.
    :param interval_end: end of the interval, exclusive (templated); give both or neither.
    :param overlap_hours: how far before the interval to start, so the previous day's snapshot
        (rebuilt by dbt with late events) is loaded too.
    :param warehouse_uri: warehouse the snapshots are exported from (templated); default from the
        warehouse connection / settings.
    :param warehouse_conn_id: Airflow connection of the warehouse.
    """

    template_fields: Sequence[str] = ("interval_start", "interval_end", "warehouse_uri")
    ui_color = "#e4d7f5"

    def __init__(
        self,
        *,
        interval_start: Any = None,
        interval_end: Any = None,
        overlap_hours: float = 1.0,
        warehouse_uri: str | None = None,
        warehouse_conn_id: str = WarehouseHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.overlap_hours = overlap_hours
        self.warehouse_uri = warehouse_uri
        self.warehouse_conn_id = warehouse_conn_id

    @functools.cached_property
    def warehouse_hook(self) -> WarehouseHook:
        return WarehouseHook(loopline_warehouse_conn_id=self.warehouse_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.features import materialize_interval

        start, end = data_interval(context, self.interval_start, self.interval_end)
        self.log.info("materializing [%s, %s) with %s h overlap", start, end, self.overlap_hours)
        counts = materialize_interval(
            start,
            end,
            overlap=timedelta(hours=float(self.overlap_hours)),
            warehouse_uri=self.warehouse_uri or self.warehouse_hook.get_uri(),
        )
        for view, numbers in counts.get("views", {}).items():
            self.log.info("  %-24s %s", view, numbers)
        return counts
