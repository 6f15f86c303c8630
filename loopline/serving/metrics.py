"""Prometheus metrics of the ranking service (shown on BentoML's ``/metrics``).

Created once per process, on first use, with ``prometheus_client`` directly (``bentoml.metrics`` is a
deprecated alias of it in BentoML 1.4). Under ``bentoml serve`` every worker process has
``PROMETHEUS_MULTIPROC_DIR`` set before it starts, so these metrics are written to the shared
multiprocess files and BentoML's ``/metrics`` aggregates them over workers; gauges therefore
declare how they aggregate (``livesum`` for in-flight requests, ``livemax`` for loaded versions).

Names (all prefixed ``loopline_serving_``): see docs/serving.md, "Metrics".
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
PREFIX = "loopline_serving"


@dataclass(frozen=True)
class ServingMetrics:
    """The metric objects; label values are documented in docs/serving.md."""

    request_seconds: Any  # Histogram[endpoint, variant]
    requests: Any  # Counter[endpoint, variant, status]
    errors: Any  # Counter[endpoint, kind]
    in_flight: Any  # Gauge[endpoint]
    model_loaded: Any  # Gauge[variant, version]: 1 while loaded, 0 after it was replaced
    canary_weight: Any  # Gauge
    model_swaps: Any  # Counter
    model_load_errors: Any  # Counter
    fallbacks: Any  # Counter[kind]: missing_user / missing_item / catalog_candidates
    explored: Any  # Counter[variant]: requests shown their top k in a random order (exploration)
    events_logged: Any  # Counter[event_type]
    events_written: Any  # Counter
    event_write_errors: Any  # Counter
    events_buffered: Any  # Gauge
    events_dropped: Any  # Counter

    def set_loaded_versions(self, loaded: dict[str, str | None], previous: dict[str, str | None]) -> None:
        """Mark ``variant -> version`` as loaded (1) and what ``previous`` held but no longer does as 0."""
        for variant, version in previous.items():
            if version is not None and loaded.get(variant) != version:
                self.model_loaded.labels(variant=variant, version=version).set(0)
        for variant, version in loaded.items():
            if version is not None:
                self.model_loaded.labels(variant=variant, version=version).set(1)


_LOCK = threading.Lock()


@functools.cache
def serving_metrics() -> ServingMetrics:
    """The process's metrics, registered in ``prometheus_client``'s default registry on first call."""
    from prometheus_client import Counter, Gauge, Histogram

    with _LOCK:
        return ServingMetrics(
            request_seconds=Histogram(
                f"{PREFIX}_request_seconds",
                "Time to answer a request, by endpoint and variant (the variant is 'none' when the request "
                "failed before one was chosen).",
                ["endpoint", "variant"],
                buckets=LATENCY_BUCKETS,
            ),
            requests=Counter(
                f"{PREFIX}_requests",
                "Requests answered, by endpoint, variant and status class (ok, client_error, unavailable, "
                "server_error).",
                ["endpoint", "variant", "status"],
            ),
            errors=Counter(
                f"{PREFIX}_errors",
                "Requests that failed, by endpoint and kind (bad_request, unknown_request, not_ready, internal).",
                ["endpoint", "kind"],
            ),
            in_flight=Gauge(
                f"{PREFIX}_in_flight_requests",
                "Requests being answered now, by endpoint.",
                ["endpoint"],
                multiprocess_mode="livesum",
            ),
            model_loaded=Gauge(
                f"{PREFIX}_model_loaded",
                "1 for the model version each variant serves now; 0 for a version it served before.",
                ["variant", "version"],
                multiprocess_mode="livemax",
            ),
            canary_weight=Gauge(
                f"{PREFIX}_canary_weight",
                "Share of users routed to the canary (0 without a canary).",
                multiprocess_mode="livemax",
            ),
            model_swaps=Counter(f"{PREFIX}_model_swaps", "Times a new set of models was swapped in."),
            model_load_errors=Counter(
                f"{PREFIX}_model_load_errors",
                "Failed attempts to load a model version or read the rollout state (the old models keep serving).",
            ),
            fallbacks=Counter(
                f"{PREFIX}_fallbacks",
                "Explicit fallbacks: missing_user (a user without online features, scored with missing "
                "features), missing_item (per item), catalog_candidates (a request without item_ids).",
                ["kind"],
            ),
            explored=Counter(
                f"{PREFIX}_explored_requests",
                "Requests whose top k were shown in a random order (exploration, LOOPLINE_SERVING_EXPLORE_SHARE).",
                ["variant"],
            ),
            events_logged=Counter(
                f"{PREFIX}_events_logged", "Schema v1 events buffered for the log store, by event type.", ["event_type"]
            ),
            events_written=Counter(f"{PREFIX}_events_written", "Events written to the log store."),
            event_write_errors=Counter(
                f"{PREFIX}_event_write_errors", "Failed log store writes (the events stay buffered and are retried)."
            ),
            events_buffered=Gauge(
                f"{PREFIX}_events_buffered",
                "Events waiting in the buffer for the next flush.",
                multiprocess_mode="livesum",
            ),
            events_dropped=Counter(
                f"{PREFIX}_events_dropped",
                "Events dropped because the buffer was full while the log store failed (each one is also logged).",
            ),
        )
