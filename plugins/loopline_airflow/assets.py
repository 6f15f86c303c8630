"""The Assets that link Loopline's DAGs (as in Airflow's example_assets.py).

``FEATURES`` is emitted by ``loopline_etl`` once a day's marts and online features are in place and
schedules ``loopline_retrain``; ``CANDIDATE`` is emitted by ``loopline_retrain`` when a validated
candidate is registered and schedules ``loopline_canary``. Both DAG files import these objects, so a
renamed asset cannot silently unlink the two sides.
"""

from __future__ import annotations

from airflow.sdk import Asset

FEATURES = Asset(name="loopline_features", uri="loopline://warehouse/features", group="loopline")
CANDIDATE = Asset(name="loopline_candidate", uri="loopline://registry/loopline-ctr/challenger", group="loopline")
