"""One ranking process put together: models, features, catalog, event log, metrics.

``RankingRuntime`` wires the parts the BentoML service (``models/service.py``) and the benchmark's
plain FastAPI app share, so both run exactly the same request path:

- a ``ModelCache`` over the rollout state store (``LOOPLINE_ROLLOUT_STATE_URI``) polling every
  ``poll_seconds``, loading versions from the BentoML model store;
- ``features.online`` on the profile's Feast store (one call per request);
- the ``Catalog`` of items with online features (for requests without ``item_ids``);
- an ``EventLogger`` writing impressions and feedback to the log store (``LOOPLINE_LOG_STORE_URI``);
- the Prometheus metrics of ``loopline.serving.metrics``.

``ServingConfig.from_env()`` reads the knobs from ``LOOPLINE_SERVING_*`` environment variables
(docs/serving.md lists them), so a Bento is configured at ``bentoml serve`` time.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from loopline.registry import LoadedModel
from loopline.serving.catalog import Catalog
from loopline.serving.eventlog import EventLogger
from loopline.serving.metrics import ServingMetrics, serving_metrics
from loopline.serving.models import ModelCache, ServingModels
from loopline.serving.ranker import (
    DEFAULT_INDEX_REQUESTS,
    MAX_CANDIDATES,
    FeedbackRequest,
    FeedbackResponse,
    Ranker,
    RankRequest,
    RankResponse,
    request_index,
)
from loopline.serving.routing import StateStore, state_store

LOG = logging.getLogger(__name__)
ENV_PREFIX = "LOOPLINE_SERVING_"


@dataclass(frozen=True)
class ServingConfig:
    """Knobs of one ranking process; each is ``LOOPLINE_SERVING_<NAME>`` in the environment."""

    poll_seconds: float = 5.0  # how often the rollout state is read
    flush_seconds: float = 2.0  # longest time an event waits before it is written
    catalog_refresh_seconds: float = 600.0  # how often the catalog is re-read
    index_requests: int = DEFAULT_INDEX_REQUESTS  # served requests remembered for /feedback
    index_uri: str = ""  # where: empty/"memory" (this process) or file:///path.db (shared by workers)
    torch_threads: int = 1  # intra-op threads per process (small batches are faster on one)
    log_events: bool = True  # write impressions and feedback to the log store
    freeze_gc: bool = True  # after the first load, gc.freeze() what is alive (see freeze_long_lived_objects)
    state_uri: str = ""  # rollout state store; empty: the rollout_state_uri setting
    log_store_uri: str = ""  # event log; empty: the log_store_uri setting
    explore_share: float = 0.0  # share of requests shown their top k in a random order (see ranker.explores)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingConfig:
        """The config from ``LOOPLINE_SERVING_*`` variables; a bad value raises naming the variable."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = f"{ENV_PREFIX}{field.name.upper()}"
            if name not in environ:
                continue
            text = environ[name].strip()
            kind = type(field.default)
            try:
                if kind is bool:
                    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError("expected true or false")
                    values[field.name] = text.lower() in ("1", "true", "yes")
                else:
                    values[field.name] = kind(text)
            except ValueError as error:
                raise ValueError(f"{name}={text!r}: {error} (expected a {kind.__name__})") from None
        config = cls(**values)
        for name in ("poll_seconds", "flush_seconds", "catalog_refresh_seconds", "index_requests", "torch_threads"):
            if getattr(config, name) <= 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a positive number, got {getattr(config, name)}")
        if not 0.0 <= config.explore_share <= 1.0:
            raise ValueError(f"{ENV_PREFIX}EXPLORE_SHARE: expected a share in [0, 1], got {config.explore_share}")
        return config


class RankingRuntime:
    """Everything one process needs to answer ``/rank`` and ``/feedback``; ``start()`` then ``close()``.

    :param default_champion: champion version when the state store holds none (the Bento's model, or
        the MLflow alias); see ``loopline.serving.models``.
    :param load, lookup, catalog, store, events: replace a part (tests); by default built from the settings.
    """

    def __init__(
        self,
        config: ServingConfig | None = None,
        *,
        default_champion: Callable[[], str | None] | None = None,
        load: Callable[[str], LoadedModel] | None = None,
        lookup: Callable[[str, Sequence[str]], Any] | None = None,
        catalog: Catalog | None = None,
        store: StateStore | None = None,
        events: EventLogger | None | bool = True,
    ):
        import torch

        self.config = config or ServingConfig.from_env()
        torch.set_num_threads(self.config.torch_threads)
        self.metrics: ServingMetrics = serving_metrics()
        if lookup is None or catalog is None:
            from loopline import features

            feature_store = features.feature_store()
            if lookup is None:
                lookup = functools.partial(features.online, store=feature_store)
            if catalog is None:
                catalog = Catalog.from_feature_store(
                    feature_store, limit=MAX_CANDIDATES, refresh_seconds=self.config.catalog_refresh_seconds
                )
        self.catalog = catalog
        if events is True:
            events = (
                EventLogger(
                    self.config.log_store_uri or None,
                    flush_seconds=self.config.flush_seconds,
                    on_written=self.metrics.events_written.inc,
                    on_error=lambda _error: self.metrics.event_write_errors.inc(),
                    on_dropped=self.metrics.events_dropped.inc,
                )
                if self.config.log_events
                else None
            )
        self.events: EventLogger | None = None if events is None or events is False else events
        self.models = ModelCache(
            load=load,
            store=store if store is not None else state_store(self.config.state_uri or None),
            default_champion=default_champion,
            poll_seconds=self.config.poll_seconds,
            on_swap=self._swapped,
            on_error=lambda _error: self.metrics.model_load_errors.inc(),
            on_poll=self._upkeep,
        )
        self.ranker = Ranker(
            models=self.models,
            lookup=lookup,
            catalog=self.catalog,
            events=self.events,
            metrics=self.metrics,
            index=request_index(self.config.index_uri, self.config.index_requests),
            explore_share=self.config.explore_share,
        )

    def _swapped(self, snapshot: ServingModels, previous: ServingModels | None) -> None:
        self.metrics.model_swaps.inc()
        self.metrics.canary_weight.set(snapshot.state.canary_weight)
        self.metrics.set_loaded_versions(snapshot.versions, previous.versions if previous else {})

    @staticmethod
    def freeze_long_lived_objects() -> None:
        """Move everything alive now (models, Feast registry, imports) out of the collector's scans.

        Without it the slowest requests pay for full collections over these objects (see
        benchmarks/features.py). ``start(wait=True)`` calls it when ``freeze_gc`` is on (the default;
        the tests turn it off: a test process should not keep its garbage).
        """
        gc.collect()
        gc.freeze()

    def start(self, *, wait: bool = False) -> None:
        """Start the model poller (its first load runs now, in the background) and the event flusher.

        ``wait=True`` loads the models in this thread first (raises if that fails).
        """
        if wait:
            try:
                self.models.refresh()
            except Exception:
                self.metrics.model_load_errors.inc()
                raise
            if self.config.freeze_gc:
                self.freeze_long_lived_objects()
        self.models.start()
        if self.events is not None:
            self.events.start()

    @property
    def ready(self) -> bool:
        """True once a champion is loaded."""
        return self.models.ready

    def _upkeep(self) -> None:
        """After each poll (background thread): keep the catalog fresh, report the event buffer."""
        self.catalog.maybe_refresh()
        if self.events is not None:
            self.metrics.events_buffered.set(self.events.buffered)

    def rank(self, request: RankRequest) -> RankResponse:
        """``Ranker.rank``; raises ``RankingError`` (with its HTTP status) for what it refuses."""
        response = self.ranker.rank(request)
        if self.events is not None:
            self.metrics.events_logged.labels(event_type="impression").inc(len(response.items))
        return response

    def feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """``Ranker.feedback``; raises ``UnknownRequestError`` (404) for a request it did not serve."""
        response = self.ranker.feedback(request)
        if self.events is not None:
            self.metrics.events_logged.labels(event_type=request.event_type).inc()
        return response

    def close(self) -> None:
        """Stop polling and flush every buffered event (a graceful stop loses nothing)."""
        self.models.stop()
        if self.events is not None:
            left = self.events.close()
            if left:
                LOG.error("%d events could not be written at shutdown", left)
        if self.events is not None:
            self.metrics.events_buffered.set(self.events.buffered)
