"""Champion and canary held at once, swapped atomically when the rollout state changes.

``ModelCache`` keeps one immutable ``ServingModels`` snapshot (the traffic state and the loaded
champion and canary). A background thread polls the rollout state store every ``poll_seconds``;
when the versions differ from the snapshot's, it loads the new ones (from the BentoML model store,
importing from MLflow if needed, see ``model_store.load_version``) while requests keep using the
old snapshot, then replaces the snapshot with one reference assignment. A request reads the
snapshot once and uses it to the end, so no request ever sees a half-loaded model, and none fails
during a swap: the old models stay alive as long as a request holds them.

Without a stored state the champion is ``default_champion()`` (the service passes: the version the
Bento was built with, else the MLflow ``champion`` alias). A failed load or state read is logged
and counted; the old snapshot keeps serving and the next poll tries again.

``score_candidates`` scores one user against many items from the online features without pandas:
ids hashed once (cached), the feature columns straight into one float32 matrix, one TorchScript call.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopline.registry import LoadedModel
from loopline.serving.routing import CANARY, CHAMPION, StateStore, TrafficState

LOG = logging.getLogger(__name__)


class ModelsNotReadyError(RuntimeError):
    """No champion is loaded yet (no state, no Bento model, no alias, or its load failed)."""


@dataclass(frozen=True)
class ServingModels:
    """One consistent set of what serves: the traffic state and its loaded models (immutable)."""

    state: TrafficState
    champion: LoadedModel
    canary: LoadedModel | None

    def route(self, user_id: str) -> tuple[str, LoadedModel]:
        """(variant, model) serving ``user_id`` under this snapshot's state."""
        variant = self.state.variant_of(user_id)
        if variant == CANARY and self.canary is not None:
            return CANARY, self.canary
        return CHAMPION, self.champion

    @property
    def versions(self) -> dict[str, str | None]:
        return {CHAMPION: self.state.champion_version, CANARY: self.state.canary_version}


def _same_models(snapshot: ServingModels | None, state: TrafficState) -> bool:
    return (
        snapshot is not None
        and snapshot.state.champion_version == state.champion_version
        and snapshot.state.canary_version == state.canary_version
    )


class ModelCache:
    """Holds the serving snapshot; ``refresh()`` brings it in line with the state store.

    :param load: version -> ``LoadedModel`` (default ``model_store.load_version``).
    :param store: the rollout state store (None: always the default champion, no canary).
    :param default_champion: the champion version when the store holds no state (None if unknown).
    :param poll_seconds: how often the background thread (``start``) calls ``refresh``.
    :param on_swap: called with (new snapshot, previous snapshot or None) after every swap.
    :param on_error: called with the exception of a failed background refresh.
    :param on_poll: called after every background poll (other periodic upkeep, e.g. the catalog).
    """

    def __init__(
        self,
        *,
        load: Callable[[str], LoadedModel] | None = None,
        store: StateStore | None = None,
        default_champion: Callable[[], str | None] | None = None,
        poll_seconds: float = 5.0,
        on_swap: Callable[[ServingModels, ServingModels | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds: expected a positive number, got {poll_seconds!r}")
        if load is None:
            from loopline.serving.model_store import load_version

            load = load_version
        self._load = load
        self._store = store
        self._default_champion = default_champion or (lambda: None)
        self.poll_seconds = poll_seconds
        self._on_swap = on_swap
        self._on_error = on_error
        self._on_poll = on_poll
        self._snapshot: ServingModels | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.swaps = 0

    # --- what requests use ----------------------------------------------------------------------

    @property
    def snapshot(self) -> ServingModels | None:
        """The current snapshot (one attribute read: atomic), or None before the first load."""
        return self._snapshot

    def current(self) -> ServingModels:
        """The current snapshot; raises ``ModelsNotReadyError`` before the first successful load."""
        snapshot = self._snapshot
        if snapshot is None:
            raise ModelsNotReadyError(
                "no model is loaded yet" + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        return snapshot

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    # --- keeping it current ---------------------------------------------------------------------

    def wanted_state(self) -> TrafficState | None:
        """The state to serve: the store's, else the default champion alone; None if neither exists."""
        state = self._store.read() if self._store is not None else None
        if state is not None:
            return state
        champion = self._default_champion()
        return None if champion is None else TrafficState(champion_version=str(champion))

    def refresh(self) -> bool:
        """Read the state; load what changed and swap the snapshot. Returns True if it swapped.

        Raises what reading or loading raised (the old snapshot stays); ``ModelsNotReadyError`` if
        there is nothing to serve at all.
        """
        with self._refresh_lock:
            state = self.wanted_state()
            if state is None:
                raise ModelsNotReadyError(
                    "no rollout state, no model packaged with the service and no 'champion' alias: nothing to serve"
                )
            previous = self._snapshot
            if _same_models(previous, state):
                if previous is not None and previous.state != state:  # weight or rollout id changed only
                    self._swap(ServingModels(state, previous.champion, previous.canary), previous)
                    return True
                return False
            loaded: dict[str, LoadedModel] = {}
            if previous is not None:  # reuse what is loaded already (e.g. a canary promoted to champion)
                for model in (previous.champion, previous.canary):
                    if model is not None and model.version is not None:
                        loaded[model.version] = model
            for version in (state.champion_version, state.canary_version):
                if version is not None and version not in loaded:
                    LOG.info("loading model version %s", version)
                    model = self._load(version)
                    if model.version is None:
                        model.version = version
                    warm_up(model)
                    loaded[version] = model
            canary = loaded[state.canary_version] if state.canary_version is not None else None
            self._swap(ServingModels(state, loaded[state.champion_version], canary), previous)
            return True

    def _swap(self, snapshot: ServingModels, previous: ServingModels | None) -> None:
        self._snapshot = snapshot  # the one assignment every request sees
        self.swaps += 1
        self.last_error = None
        LOG.info(
            "serving champion %s, canary %s at weight %.4f (rollout %s)",
            snapshot.state.champion_version,
            snapshot.state.canary_version,
            snapshot.state.canary_weight,
            snapshot.state.rollout_id,
        )
        if self._on_swap is not None:
            self._on_swap(snapshot, previous)

    def refresh_quietly(self) -> bool:
        """``refresh`` that logs and counts a failure instead of raising (what the poller runs)."""
        try:
            return self.refresh()
        except Exception as error:  # the old snapshot keeps serving; the next poll tries again
            self.last_error = f"{type(error).__name__}: {error}"
            LOG.error("model refresh failed: %s", self.last_error)
            if self._on_error is not None:
                self._on_error(error)
            return False

    def start(self) -> None:
        """Start the background poller; its first refresh runs at once."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="loopline-model-poller", daemon=True)
        self._thread.start()

    def request_refresh(self) -> None:
        """Ask the poller to refresh now (returns at once; the load happens in the background)."""
        self._wake.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.refresh_quietly()
            if self._on_poll is not None:
                try:
                    self._on_poll()
                except Exception:  # upkeep must never stop the poller
                    LOG.exception("poll hook failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the poller (waits for a load in progress up to ``timeout`` seconds)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


# --------------------------------------------------------------------------------------------------
# Scoring one user against many items, straight from the online feature columns
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=262_144)
def _bucket(text: str, buckets: int) -> int:
    """FNV-1a (32 bit) over the UTF-8 bytes of ``text``, modulo ``buckets`` (as ``training.data.hash_ids``)."""
    value = 2166136261
    for byte in text.encode("utf-8", "surrogatepass"):
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value % buckets


def _numeric_column(values: Sequence[Any] | None, rows: int) -> np.ndarray:
    if values is None:
        return np.full(rows, np.nan)
    try:
        return np.asarray(values, dtype=np.float64)  # None -> NaN
    except (TypeError, ValueError):
        return np.array([_to_float(value) for value in values], dtype=np.float64)


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


WARM_UP_CALLS = 3


def warm_up(model: LoadedModel, *, rows: int = 100, calls: int = WARM_UP_CALLS) -> None:
    """Score a synthetic batch ``calls`` times before the model takes traffic.

    TorchScript profiles a module's first call and optimizes on the next: measured here, the first
    call of a freshly loaded model took ~50 ms, the second ~8 ms, then ~0.5 ms. Without this the
    first users of a new canary pay it, and the canary's p99 looks worse than the champion's.
    """
    items = [f"warm-up-item-{index}" for index in range(rows)]
    for _ in range(calls):
        score_candidates(model, "warm-up-user", items, {})


def score_candidates(
    model: LoadedModel, user_id: str, item_ids: Sequence[str], columns: Mapping[str, Sequence[Any]]
) -> np.ndarray:
    """P(click) at the reference slot for ``user_id`` x each item; ``columns`` = feature -> value per item.

    Equals ``model.predict`` of the same rows as a DataFrame (a test checks it): missing values
    (None, NaN, a feature the lookup did not return) are what the model treats as missing.
    """
    import torch

    spec = model.spec
    rows = len(item_ids)
    names = spec.numeric_features
    try:  # one conversion of every column at once (None -> NaN); per column if a value is odd
        numeric = np.array([columns[name] for name in names], dtype=np.float64).reshape(len(names), rows).T
    except (KeyError, TypeError, ValueError):
        numeric = np.empty((rows, len(names)), dtype=np.float64)
        for index, name in enumerate(names):
            numeric[:, index] = _numeric_column(columns.get(name), rows)
    numeric = np.where(np.isfinite(numeric), numeric, np.nan).astype(np.float32)
    codes = np.zeros((rows, len(spec.categorical_features)), dtype=np.int64)
    for index, (name, vocabulary) in enumerate(zip(spec.categorical_features, spec.vocabularies, strict=True)):
        values = columns.get(name)
        if values is not None:
            codes[:, index] = [0 if value is None else vocabulary.get(str(value), 0) for value in values]
    user = torch.full((rows,), _bucket(user_id, spec.user_buckets), dtype=torch.int64)
    item = torch.tensor([_bucket(item_id, spec.item_buckets) for item_id in item_ids], dtype=torch.int64)
    with torch.inference_mode():
        scores = model.module.score_encoded(
            user, item, torch.from_numpy(np.ascontiguousarray(numeric)), torch.from_numpy(codes), None
        )
    return scores.to(torch.float64).numpy()
