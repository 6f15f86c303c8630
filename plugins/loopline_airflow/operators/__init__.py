"""Thin operators: turn the task context into arguments, call one ``loopline`` function, return counts."""

from loopline_airflow.utils import data_interval

__all__ = ["data_interval"]
