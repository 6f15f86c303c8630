"""Hook for the event log store (``file://`` or ``s3://``), configured by an Airflow connection.

Connection ``loopline_logs`` (type ``loopline_logs``), all fields optional:

- extra ``uri``: the store root, e.g. ``s3://loopline/logs`` or ``file:///data/logs``;
- extra ``endpoint_url`` and ``region_name``: an S3-compatible server (MinIO, a test server);
- login / password: the S3 access key id and secret (otherwise boto3's usual credential chain).

Without the connection, the hook uses Loopline's settings (``LOOPLINE_LOG_STORE_URI``,
``LOOPLINE_S3_ENDPOINT_URL``), so a local run needs no Airflow setup at all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException


@dataclass(frozen=True)
class LogStoreLocation:
    """Where the log store is and how to reach it (``s3_client`` is None for ``file://`` or default credentials)."""

    uri: str
    s3_endpoint_url: str | None
    s3_client: Any = None


class LogStoreHook(BaseHook):
    """The event log store of one connection (default ``loopline_logs``), or Loopline's settings without it.

    :param loopline_logs_conn_id: Airflow connection id of the log store.
    """

    conn_name_attr = "loopline_logs_conn_id"
    default_conn_name = "loopline_logs"
    conn_type = "loopline_logs"
    hook_name = "Loopline log store"

    def __init__(self, loopline_logs_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loopline_logs_conn_id = loopline_logs_conn_id

    @functools.cached_property
    def connection(self) -> Connection | None:
        """The Airflow connection, or None if it is not defined (then settings apply)."""
        try:
            return self.get_connection(self.loopline_logs_conn_id)
        except AirflowNotFoundException:
            self.log.info("no connection %r: using Loopline settings for the log store", self.loopline_logs_conn_id)
            return None

    def get_location(self) -> LogStoreLocation:
        """The store's URI, S3 endpoint and (if the connection has credentials) an S3 client."""
        from loopline.config import settings

        config = settings()
        connection = self.connection
        if connection is None:
            return LogStoreLocation(config.log_store_uri, config.s3_endpoint_url)
        extra = connection.extra_dejson
        uri = extra.get("uri") or config.log_store_uri
        endpoint = extra.get("endpoint_url") or config.s3_endpoint_url
        client = None
        if uri.startswith("s3://") and (connection.login or connection.password):
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=endpoint or None,
                region_name=extra.get("region_name") or config.aws_region,
                aws_access_key_id=connection.login or None,
                aws_secret_access_key=connection.password or None,
            )
        return LogStoreLocation(uri, endpoint, client)

    def get_conn(self) -> Any:
        """A ``loopline.logstore.LogStore`` on the configured location."""
        from loopline.logstore import LogStore

        location = self.get_location()
        return LogStore.from_uri(location.uri, s3_endpoint_url=location.s3_endpoint_url, s3_client=location.s3_client)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["host", "schema", "port"],
            "relabeling": {"login": "S3 access key id", "password": "S3 secret access key"},
            "placeholders": {"extra": '{"uri": "s3://loopline/logs", "endpoint_url": "http://127.0.0.1:9000"}'},
        }
