"""Serving: the ranking service's request path, as a library (docs/serving.md).

- ``routing``: stable user-hash traffic split and the rollout state store (file / PostgreSQL / Redis);
- ``models``: the model cache (champion + canary, background loads, atomic swaps) and lean scoring;
- ``model_store``: registered MLflow versions in the BentoML model store (``loopline-ctr:v<N>``);
- ``ranker``: request/response schemas, limits, the ``Ranker`` (features, fallbacks, events, feedback);
- ``catalog``: the candidate catalog (items with online features) for requests without candidates;
- ``eventlog``: buffered schema v1 events to the log store, flushed on an interval and on close;
- ``metrics``, ``http``: Prometheus metrics and the ASGI middleware that records them;
- ``runtime``: all of the above wired for one process (the BentoML service, the benchmark's plain app);
- ``sandbox``: a small real world to serve (tests, benchmark, trying it locally);
- ``packaging``, ``scoring``: building/validating the Bento and batch scoring.

``models/service.py`` is the BentoML service over ``runtime``. Only the light routing names are
re-exported here, so importing the package pulls in neither torch nor Feast.
"""

from loopline.serving.routing import (
    BUCKETS,
    CANARY,
    CHAMPION,
    RolloutStateError,
    StateStore,
    TrafficState,
    assign_variant,
    state_store,
    user_bucket,
)

__all__ = [
    "BUCKETS",
    "CANARY",
    "CHAMPION",
    "RolloutStateError",
    "StateStore",
    "TrafficState",
    "assign_variant",
    "state_store",
    "user_bucket",
]
