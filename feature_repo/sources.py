"""Batch sources over the dbt marts, and the request source of a ranking call.

The marts ``user_features`` and ``item_features`` hold one snapshot per entity and day, stamped
``feature_at`` = midnight UTC after the snapshot day; every value uses only events before it, so
``feature_at`` is the timestamp of the point-in-time join.

Where Feast reads them depends on the profile (see docs/features.md, "Offline store"):

- ``file`` (local): Parquet exports of the marts, one file per snapshot day,
  ``<root>/<mart>/<YYYY-MM-DD>.parquet``, written by ``loopline.features.export_feature_snapshots``.
  Feast's DuckDB offline store would need ibis (not installed), so the file store reads the exports.
- ``postgres`` (stack): the marts themselves, in the warehouse database, through Feast's
  PostgreSQL offline store (point-in-time joins run as SQL next to the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from feast import FileSource, RequestSource
from feast.data_source import DataSource
from feast.field import Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Int64, UnixTimestamp

TIMESTAMP_FIELD = "feature_at"
USER_MART = "user_features"
ITEM_MART = "item_features"
MARTS = (USER_MART, ITEM_MART)

# Request-time inputs of a ranking call (and columns of the training entity frame).
POSITION = "position"
REQUEST_AT = "request_at"


@dataclass(frozen=True)
class OfflineLocation:
    """Where the batch sources live: Parquet exports (``file``) or the marts in PostgreSQL (``postgres``)."""

    kind: Literal["file", "postgres"]
    parquet_root: str = ""  # kind "file": absolute directory of the exports

    def __post_init__(self) -> None:
        if self.kind == "file" and not Path(self.parquet_root).is_absolute():
            # Feast resolves relative FileSource paths against the working directory: never rely on it.
            raise ValueError(f"parquet_root: expected an absolute directory, got {self.parquet_root!r}")
        if self.kind not in ("file", "postgres"):
            raise ValueError(f"kind: expected 'file' or 'postgres', got {self.kind!r}")

    def mart_dir(self, mart: str) -> Path:
        """The directory holding one Parquet file per snapshot day of ``mart`` (kind ``file``)."""
        return Path(self.parquet_root) / mart


def mart_source(mart: str, location: OfflineLocation, field_mapping: dict[str, str]) -> DataSource:
    """The batch source of one feature mart; ``field_mapping`` renames mart columns to feature names."""
    if mart not in MARTS:
        raise ValueError(f"mart: expected one of {MARTS}, got {mart!r}")
    name = f"{mart}_source"
    description = f"dbt mart {mart}: daily snapshots stamped {TIMESTAMP_FIELD} (midnight UTC after the day)"
    if location.kind == "file":
        return FileSource(
            name=name,
            path=str(location.mart_dir(mart)),
            timestamp_field=TIMESTAMP_FIELD,
            field_mapping=field_mapping,
            description=description,
        )
    return PostgreSQLSource(
        name=name,
        table=mart,
        timestamp_field=TIMESTAMP_FIELD,
        field_mapping=field_mapping,
        description=description,
    )


def ranking_request() -> RequestSource:
    """What a ranking call knows besides the ids: the slot of each candidate and the time of the request."""
    return RequestSource(
        name="ranking_request",
        schema=[
            Field(name=POSITION, dtype=Int64, description="0-based slot the item is (or was) shown in"),
            Field(name=REQUEST_AT, dtype=UnixTimestamp, description="time of the request (impression), UTC"),
        ],
        description="Request-time inputs; in training they come from training_examples (position, event_at).",
    )
