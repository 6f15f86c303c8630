"""HTTP glue shared by the BentoML service and the benchmark's plain FastAPI app.

``RequestMetricsMiddleware`` is a plain ASGI middleware: for ``/rank`` and ``/feedback`` it keeps
the in-flight gauge, and on the response records the latency histogram by endpoint and variant
(from the ``x-loopline-variant`` response header the endpoints set; ``none`` when the request failed
before a variant was chosen, e.g. a body that does not validate), the request counter by status
class, and the error counter by kind. Counting at the HTTP edge also counts the 400s the
framework answers before the endpoint runs.

``error_body`` / ``ERROR_KINDS``: the JSON error format of the endpoints' own 4xx/5xx answers.
"""

from __future__ import annotations

import time
from typing import Any

from loopline.serving.metrics import serving_metrics

VARIANT_HEADER = "x-loopline-variant"
_VARIANT_HEADER_BYTES = VARIANT_HEADER.encode()
ENDPOINTS = {"/rank": "rank", "/feedback": "feedback"}
# HTTP status -> error kind of loopline_serving_errors_total.
ERROR_KINDS = {400: "bad_request", 404: "unknown_request", 413: "bad_request", 415: "bad_request", 422: "bad_request"}


def status_class(status: int) -> str:
    """``ok``, ``client_error``, ``unavailable`` (503) or ``server_error``."""
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    return "client_error" if status < 500 else "server_error"


def error_kind(status: int) -> str:
    if status == 503:
        return "not_ready"
    return ERROR_KINDS.get(status, "bad_request" if status < 500 else "internal")


def error_body(message: str, status: int) -> dict[str, Any]:
    """``{"error": message, "status": status}``: how the endpoints' own errors read."""
    return {"error": message, "status": status}


class RequestMetricsMiddleware:
    """Latency, status and in-flight metrics of ``/rank`` and ``/feedback`` (pure ASGI)."""

    def __init__(self, app: Any, *, path_prefix: str = ""):
        self.app = app
        self.paths = {path_prefix.rstrip("/") + path: name for path, name in ENDPOINTS.items()}
        self.metrics = serving_metrics()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        endpoint = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        started = time.perf_counter()
        seen = {"status": 500, "variant": "none"}

        async def recording_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == _VARIANT_HEADER_BYTES:
                        seen["variant"] = value.decode("latin-1")
            await send(message)

        in_flight = metrics.in_flight.labels(endpoint=endpoint)
        in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            in_flight.dec()
            status = int(seen["status"])
            variant = seen["variant"]
            metrics.request_seconds.labels(endpoint=endpoint, variant=variant).observe(time.perf_counter() - started)
            metrics.requests.labels(endpoint=endpoint, variant=variant, status=status_class(status)).inc()
            if status >= 400:
                metrics.errors.labels(endpoint=endpoint, kind=error_kind(status)).inc()


_PROCESS_APP: list[Any] = []


def process_asgi_app(make: Any) -> Any:
    """The service's ASGI app, made once per process by ``make()``.

    BentoML registers its own Prometheus metrics when an app is first made, so a second app in one
    process fails. The app is kept here rather than in ``models.service``, because that module may be
    imported afresh (packaging drops it from ``sys.modules`` around a build)."""
    if not _PROCESS_APP:
        _PROCESS_APP.append(make())
    return _PROCESS_APP[0]
