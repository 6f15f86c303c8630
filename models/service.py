"""The Loopline ranking service (BentoML 1.4): ``/rank``, ``/feedback``, ``/livez``, ``/readyz``, ``/metrics``.

Thin on purpose: the request path is ``loopline.serving`` (``RankingRuntime``: model cache with
champion + canary, Feast online features, catalog, schema v1 event log); this class only adapts it
to HTTP. See docs/serving.md for the endpoints, limits, routing, swaps, logging and metrics.

The model packaged with a Bento is referenced at class level by its BentoML tag
(``loopline-ctr:v<N>``, N = the MLflow version; ``LOOPLINE_SERVING_MODEL`` chooses it at import and
build time, default ``loopline-ctr:latest``). It is the champion while the rollout state store holds
no state; after that, the state decides, and versions the Bento does not hold are imported from
MLflow in the background.

    bentoml serve models.service:RankingService --port 3000     # from the checkout root
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from loopline.serving.http import VARIANT_HEADER, RequestMetricsMiddleware, error_body, process_asgi_app
from loopline.serving.model_store import BENTO_MODEL_NAME
from loopline.serving.ranker import FeedbackRequest, FeedbackResponse, RankingError, RankRequest, RankResponse
from loopline.serving.runtime import RankingRuntime, ServingConfig

LOG = logging.getLogger("loopline.serving.service")
MODEL_TAG = os.environ.get("LOOPLINE_SERVING_MODEL") or f"{BENTO_MODEL_NAME}:latest"
WORKERS = int(os.environ.get("LOOPLINE_SERVING_WORKERS", "1"))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


TRACE_HOT_PATHS = _env_flag("LOOPLINE_SERVING_TRACE")
ACCESS_LOG_HOT_PATHS = _env_flag("LOOPLINE_SERVING_ACCESS_LOG")
HOT_PATHS = ["/rank", "/feedback"]


@bentoml.service(
    name="loopline-ranker",
    workers=WORKERS,
    traffic={"timeout": 30},
    # No tracing exporter is configured, so OpenTelemetry's per-request spans on the hot endpoints went
    # nowhere while costing about a third of BentoML's own work per request; LOOPLINE_SERVING_TRACE=true
    # keeps them (with a tracing exporter in BentoML's configuration).
    tracing={"excluded_urls": [] if TRACE_HOT_PATHS else HOT_PATHS},
    # Every /rank and /feedback is in the event log (with its request_id) and in the request metrics;
    # an access log line per request on top cost ~3 % of a worker's time and grew a file by ~200 bytes
    # per request. LOOPLINE_SERVING_ACCESS_LOG=true logs them too; other paths are always logged.
    logging={"access": {"skip_paths": [] if ACCESS_LOG_HOT_PATHS else HOT_PATHS}},
    envs=[
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ],
)
class RankingService:
    """Ranks candidates for a user with the champion or (for the canary's share of users) the canary."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        config = ServingConfig.from_env()
        if WORKERS > 1 and config.index_uri in ("", "memory"):
            # Feedback may reach another worker than the one that served the list: share the index.
            from loopline.config import settings

            shared = (settings().home / "serving" / "served-requests.db").as_uri()
            config = dataclasses.replace(config, index_uri=shared)
        self.runtime = RankingRuntime(config, default_champion=self.packaged_or_alias_version)
        try:
            # Load before this worker accepts connections: with several workers, none answers 503
            # while another is ready already.
            self.runtime.start(wait=True)
        except Exception as error:  # the poller retries; /readyz answers 503 meanwhile
            LOG.error("models did not load at start (%s); serving 503 until a poll loads them", error)
            self.runtime.start()

    def packaged_or_alias_version(self) -> str | None:
        """The champion without a rollout state: the Bento's model, else MLflow's ``champion`` alias."""
        stored = type(self).bento_model.stored
        if stored is not None:
            return str(stored.info.labels.get("mlflow_version") or stored.tag.version).removeprefix("v")
        from loopline.registry import CHAMPION, alias_version

        return alias_version(CHAMPION)

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop polling and flush every buffered event before the worker exits."""
        self.runtime.close()

    # The endpoints are coroutines that run the ranker on the worker's event loop: their work is
    # CPU-bound Python (a feature lookup from memory or a local store, a small model), which threads
    # would only take turns at under the GIL, paying the hand-off and the GIL's 5 ms switch interval
    # in the tail latency. Scale out with worker processes (LOOPLINE_SERVING_WORKERS).
    @bentoml.api(route="/rank")
    async def rank(self, request: RankRequest, /, ctx: bentoml.Context = None) -> RankResponse:  # type: ignore[assignment]
        """Rank ``item_ids`` (or the catalog) for ``user_id``; return the top ``k`` with scores."""
        try:
            response = self.runtime.rank(request)
        except RankingError as error:
            return _error(error, ctx)
        if ctx is not None:
            ctx.response.headers[VARIANT_HEADER] = response.variant
        return response

    @bentoml.api(route="/feedback")
    async def feedback(self, request: FeedbackRequest, /, ctx: bentoml.Context = None) -> FeedbackResponse:  # type: ignore[assignment]
        """Log a click, add_to_cart or purchase on an item of a list ``/rank`` served."""
        try:
            response = self.runtime.feedback(request)
        except RankingError as error:
            return _error(error, ctx)
        if ctx is not None:
            ctx.response.headers[VARIANT_HEADER] = response.variant
        return response


def _error(error: RankingError, ctx: bentoml.Context | None) -> JSONResponse:
    """The endpoint's own 4xx/503 answer: ``{"error": ..., "status": ...}``."""
    if ctx is not None:
        ctx.response.status_code = error.status  # BentoML applies the context's status to the response
    if error.status >= 500:
        LOG.warning("%s: %s", type(error).__name__, error)
    variant = getattr(error, "variant", None)  # a model failure: the metrics count it against that variant
    headers = {VARIANT_HEADER: variant} if variant else None
    return JSONResponse(error_body(str(error), error.status), status_code=error.status, headers=headers)


RankingService.add_asgi_middleware(RequestMetricsMiddleware)


def asgi_app() -> Any:
    """The service as an ASGI app, one per process (``loopline.serving.http.process_asgi_app``).

    In-process users (tests, simulated users) share it; each ``TestClient(asgi_app())`` block still
    starts a fresh service instance (the lifespan)."""
    return process_asgi_app(RankingService.to_asgi)
