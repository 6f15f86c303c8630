"""Hooks: each owns one external connection and falls back to Loopline settings when it is not defined."""

from loopline_airflow.hooks.logstore import LogStoreHook
from loopline_airflow.hooks.warehouse import WarehouseHook

__all__ = ["LogStoreHook", "WarehouseHook"]
