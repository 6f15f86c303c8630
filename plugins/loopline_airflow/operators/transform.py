"""``DbtBuildOperator``: build the dbt project for the run's day (``loopline.transform.run_dbt``).

We wrap dbt's own ``dbtRunner`` rather than astronomer-cosmos: the marts are built as one
``dbt build`` per data interval (models and their tests in dependency order, one invocation id for
lineage), which is what a daily, replace-the-day pipeline needs, and cosmos is not in the pinned set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from loopline_airflow.hooks.warehouse import WarehouseHook
from loopline_airflow.utils import as_utc_datetime, data_interval


class DbtBuildOperator(BaseOperator):
    """Run ``dbt build`` for the day the run's data interval starts on; return the node results to XCom.

    Each mart replaces its rows for that day (and the late-event lookback, see ``dbt/README.md``), so
    re-running or backfilling leaves the same marts. A failing model or test fails the task, and the
    task log names each failing node with dbt's message.

    :param run_date: the UTC day to build (date, or ISO text; templated). Default: the day the run's
        data interval starts on (the day before the logical date for point intervals).
    :param select: dbt selection (templated), e.g. ``["+training_examples"]``; default everything.
    :param dbt_vars: extra dbt vars (templated), e.g. ``{"attribution_window_minutes": 60}``.
    :param warehouse_uri: warehouse URI (templated); default from the warehouse connection / settings.
    :param warehouse_conn_id: Airflow connection of the warehouse.
    """

    template_fields: Sequence[str] = ("run_date", "select", "dbt_vars", "warehouse_uri")
    ui_color = "#f6d5c7"

    def __init__(
        self,
        *,
        run_date: Any = None,
        select: list[str] | None = None,
        dbt_vars: dict[str, Any] | None = None,
        warehouse_uri: str | None = None,
        warehouse_conn_id: str = WarehouseHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_date = run_date
        self.select = select
        self.dbt_vars = dbt_vars
        self.warehouse_uri = warehouse_uri
        self.warehouse_conn_id = warehouse_conn_id

    @functools.cached_property
    def warehouse_hook(self) -> WarehouseHook:
        return WarehouseHook(loopline_warehouse_conn_id=self.warehouse_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from loopline.transform import DbtBuildError, run_dbt

        if self.run_date not in (None, ""):
            text = str(self.run_date)
            day = as_utc_datetime(text if "T" in text else f"{text}T00:00:00+00:00", "run_date").date()
        else:
            day = data_interval(context)[0].date()
        warehouse_uri = self.warehouse_uri or self.warehouse_hook.get_uri()
        self.log.info("dbt build for %s on %s", day.isoformat(), warehouse_uri.split("@")[-1])
        try:
            result = run_dbt(
                "build",
                run_date=day,
                warehouse_uri=warehouse_uri,
                select=list(self.select) if self.select else None,
                extra_vars=dict(self.dbt_vars or {}),
            )
        except DbtBuildError as error:
            self.log.error("%s", error)
            raise AirflowException(str(error)) from error
        self.log.info("dbt invocation %s\n%s", result.invocation_id, format_nodes(result.to_dict()))
        return {
            "run_date": day.isoformat(),
            "invocation_id": result.invocation_id,
            "target": result.target,
            "status_counts": result.status_counts,
            "elapsed_seconds": round(result.elapsed_seconds, 2),
            "nodes": {node.name: node.status for node in result.nodes},
        }


def format_nodes(result: dict[str, Any]) -> str:
    """One line per dbt node: type, name, status, seconds."""
    nodes = result.get("nodes", [])
    if not nodes:
        return "(no nodes ran)"
    width = max(len(node["name"]) for node in nodes)
    return "\n".join(
        f"{node['resource_type']:<10} {node['name']:<{width}}  {node['status']:<8} {node['execution_time']:.2f}s"
        for node in nodes
    )
