"""Hook for the warehouse (DuckDB file or PostgreSQL), configured by an Airflow connection.

Connection ``loopline_warehouse``: either extra ``uri`` (``duckdb:///abs/path.duckdb`` or a
``postgresql://`` URI), or a ``postgres`` connection (host, port, schema = database, login,
password). Without the connection, Loopline's ``LOOPLINE_WAREHOUSE_URI`` setting applies.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException


class WarehouseHook(BaseHook):
    """The Loopline warehouse of one connection (default ``loopline_warehouse``), or settings without it.

    :param loopline_warehouse_conn_id: Airflow connection id of the warehouse.
    """

    conn_name_attr = "loopline_warehouse_conn_id"
    default_conn_name = "loopline_warehouse"
    conn_type = "loopline_warehouse"
    hook_name = "Loopline warehouse"

    def __init__(self, loopline_warehouse_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loopline_warehouse_conn_id = loopline_warehouse_conn_id

    @functools.cached_property
    def connection(self) -> Connection | None:
        """The Airflow connection, or None if it is not defined (then settings apply)."""
        try:
            return self.get_connection(self.loopline_warehouse_conn_id)
        except AirflowNotFoundException:
            self.log.info(
                "no connection %r: using Loopline settings for the warehouse", self.loopline_warehouse_conn_id
            )
            return None

    def get_uri(self) -> str:
        """The warehouse URI that ``loopline.warehouse.Warehouse.from_uri`` takes."""
        from loopline.config import settings

        connection = self.connection
        if connection is None:
            return settings().warehouse_uri
        extra = connection.extra_dejson
        if extra.get("uri"):
            return str(extra["uri"])
        if connection.conn_type in ("postgres", "postgresql") and connection.host:
            user = quote(connection.login or "", safe="")
            password = f":{quote(connection.password, safe='')}" if connection.password else ""
            credentials = f"{user}{password}@" if user else ""
            port = f":{connection.port}" if connection.port else ""
            return f"postgresql://{credentials}{connection.host}{port}/{connection.schema or 'postgres'}"
        raise ValueError(
            f"connection {self.loopline_warehouse_conn_id!r}: expected extra 'uri' (duckdb:///... or "
            f"postgresql://...) or a postgres connection with a host, got type {connection.conn_type!r}"
        )

    def get_conn(self) -> Any:
        """An open ``loopline.warehouse.Warehouse`` (close it, or use it in a ``with`` block)."""
        from loopline.warehouse import Warehouse

        return Warehouse.from_uri(self.get_uri())

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"placeholders": {"extra": '{"uri": "duckdb:///var/loopline/warehouse.duckdb"}'}}
