"""Airflow glue for Loopline: hooks (one per external system) and thin operators over ``loopline``.

The folder is on ``sys.path`` as Airflow's plugins folder, so DAGs import
``loopline_airflow.operators...`` directly. Nothing here holds business logic.
"""
