"""Traffic split between champion and canary, and the rollout state that sets it.

Routing: a user goes to a variant by a stable hash of ``user_id`` into ``BUCKETS`` (10,000)
buckets: the first 8 bytes of BLAKE2b over the UTF-8 id, modulo 10,000. Buckets below
``canary_weight * 10_000`` go to the canary. The same user therefore always sees the same variant
for a given weight, in every process and across restarts (Python's ``hash()`` is salted per
process, so it is never used), and raising the weight only moves users from champion to canary.

The rollout state (``TrafficState``: champion version, canary version or none, canary weight,
rollout id, updated at) lives in a small store chosen by URI, the ``rollout_state_uri`` setting:

- ``file:///path/rollout.json``: one JSON document, replaced atomically (temp file + rename);
- ``postgresql://...``: one row per state key in table ``serving_rollout_state`` (upsert);
- ``redis://host:port/db``: one key holding the JSON document (default key ``loopline:rollout``).

The canary rollout (issue #9) writes it; the ranking service polls it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

BUCKETS = 10_000
CHAMPION = "champion"
CANARY = "canary"
VARIANTS = (CHAMPION, CANARY)
DEFAULT_STATE_KEY = "loopline:rollout"
POSTGRES_TABLE = "serving_rollout_state"


class RolloutStateError(ValueError):
    """A rollout state is invalid or its store cannot be read or written; the message says which."""


def user_bucket(user_id: str) -> int:
    """The bucket (0..9,999) of ``user_id``: BLAKE2b-64 of its UTF-8 bytes, modulo ``BUCKETS``."""
    if not isinstance(user_id, str):
        raise TypeError(f"user_id: expected a string, got {type(user_id).__name__}")
    digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def assign_variant(user_id: str, canary_weight: float) -> str:
    """``"canary"`` if the user's bucket is below ``canary_weight * 10,000``, else ``"champion"``."""
    if not 0.0 <= canary_weight <= 1.0:
        raise ValueError(f"canary_weight: expected a share between 0 and 1, got {canary_weight!r}")
    return CANARY if user_bucket(user_id) < round(canary_weight * BUCKETS) else CHAMPION


def _version(value: Any, name: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit():
        expected = "an MLflow version number (e.g. '7')" + (" or null" if optional else "")
        raise RolloutStateError(f"{name}: expected {expected}, got {value!r}")
    return str(int(text))


@dataclass(frozen=True)
class TrafficState:
    """Which versions serve and how traffic splits. Immutable; ``with_changes`` makes a new one.

    ``canary_weight`` is the share of users (by bucket) sent to ``canary_version``; it must be 0
    when there is no canary. ``updated_at`` is set by ``with_changes``/``new`` (UTC).
    """

    champion_version: str
    canary_version: str | None = None
    canary_weight: float = 0.0
    rollout_id: str | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        champion = _version(self.champion_version, "champion_version", optional=False)
        object.__setattr__(self, "champion_version", champion)
        object.__setattr__(self, "canary_version", _version(self.canary_version, "canary_version", optional=True))
        weight = self.canary_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= float(weight) <= 1.0:
            raise RolloutStateError(f"canary_weight: expected a number between 0 and 1, got {weight!r}")
        object.__setattr__(self, "canary_weight", float(weight))
        if self.canary_version is None and self.canary_weight > 0:
            raise RolloutStateError(f"canary_weight is {self.canary_weight} but there is no canary_version")
        if self.rollout_id is not None and (not isinstance(self.rollout_id, str) or not self.rollout_id.strip()):
            raise RolloutStateError(f"rollout_id: expected a non-empty string or null, got {self.rollout_id!r}")
        moment = self.updated_at
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise RolloutStateError(f"updated_at: expected a timezone-aware datetime, got {moment!r}")
        object.__setattr__(self, "updated_at", moment.astimezone(UTC))

    def variant_of(self, user_id: str) -> str:
        """The variant ``user_id`` is served by under this state."""
        if self.canary_version is None or self.canary_weight <= 0.0:
            return CHAMPION
        return assign_variant(user_id, self.canary_weight)

    def version_of(self, variant: str) -> str:
        """The model version behind ``variant``."""
        if variant == CHAMPION:
            return self.champion_version
        if variant == CANARY and self.canary_version is not None:
            return self.canary_version
        expected = f"{CHAMPION!r}" + (f" or {CANARY!r}" if self.canary_version else "")
        raise ValueError(f"variant {variant!r}: expected {expected}")

    def with_changes(self, **changes: Any) -> TrafficState:
        """A copy with ``changes`` applied and ``updated_at`` now."""
        changes.setdefault("updated_at", datetime.now(UTC))
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> TrafficState:
        """Parse a stored document; raises ``RolloutStateError`` naming the bad or missing field."""
        if not isinstance(data, dict):
            raise RolloutStateError(f"rollout state: expected a JSON object, got {type(data).__name__}")
        known = {"champion_version", "canary_version", "canary_weight", "rollout_id", "updated_at"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RolloutStateError(f"rollout state: unknown fields {unknown}; expected some of {sorted(known)}")
        if "champion_version" not in data:
            raise RolloutStateError("rollout state: champion_version is required")
        values = dict(data)
        if "updated_at" in values:
            try:
                values["updated_at"] = datetime.fromisoformat(str(values["updated_at"]))
            except ValueError:
                raise RolloutStateError(f"updated_at: expected an ISO 8601 time, got {data['updated_at']!r}") from None
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrafficState:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise RolloutStateError(f"rollout state is not JSON: {error}") from None
        return cls.from_dict(data)


class StateStore(Protocol):
    """Where the rollout state lives: ``read()`` (None if none was written) and ``write(state)``."""

    uri: str

    def read(self) -> TrafficState | None: ...
    def write(self, state: TrafficState) -> None: ...
    def clear(self) -> None: ...


class FileStateStore:
    """A JSON file, replaced atomically: written to a temp file beside it, fsynced, renamed over it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.uri = self.path.as_uri() if self.path.is_absolute() else str(self.path)

    def read(self) -> TrafficState | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return TrafficState.from_json(text)

    def write(self, state: TrafficState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(state.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class PostgresStateStore:
    """Table ``serving_rollout_state(state_key primary key, document, updated_at)``; ``write`` upserts."""

    def __init__(self, url: str, *, key: str = DEFAULT_STATE_KEY, table: str = POSTGRES_TABLE):
        self.url = url
        self.key = key
        self.table = table
        self.uri = url
        self._ready = False

    def _connect(self) -> Any:
        import psycopg2

        try:
            return psycopg2.connect(self.url, connect_timeout=5)
        except psycopg2.Error as error:
            from loopline.config import mask_uri

            raise RolloutStateError(f"cannot connect to rollout state store {mask_uri(self.url)}: {error}") from None

    def _ensure_table(self, connection: Any) -> None:
        if self._ready:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "state_key text PRIMARY KEY, document text NOT NULL, updated_at timestamptz NOT NULL)"
            )
        connection.commit()
        self._ready = True

    def read(self) -> TrafficState | None:
        connection = self._connect()
        try:
            self._ensure_table(connection)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT document FROM {self.table} WHERE state_key = %s", (self.key,))
                row = cursor.fetchone()
        finally:
            connection.close()
        return None if row is None else TrafficState.from_json(row[0])

    def write(self, state: TrafficState) -> None:
        connection = self._connect()
        try:
            self._ensure_table(connection)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {self.table} (state_key, document, updated_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (state_key) DO UPDATE "
                    "SET document = EXCLUDED.document, updated_at = EXCLUDED.updated_at",
                    (self.key, state.to_json(), state.updated_at),
                )
            connection.commit()
        finally:
            connection.close()

    def clear(self) -> None:
        connection = self._connect()
        try:
            self._ensure_table(connection)
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {self.table} WHERE state_key = %s", (self.key,))
            connection.commit()
        finally:
            connection.close()


class RedisStateStore:
    """One Redis key holding the state's JSON document (``SET`` replaces it atomically)."""

    def __init__(self, url: str, *, key: str = DEFAULT_STATE_KEY):
        import redis

        self.url = url
        self.key = key
        self.uri = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _call(self, action: str, *args: Any) -> Any:
        import redis

        try:
            return getattr(self._client, action)(*args)
        except redis.RedisError as error:
            from loopline.config import mask_uri

            raise RolloutStateError(f"rollout state store {mask_uri(self.url)}: {action} failed: {error}") from None

    def read(self) -> TrafficState | None:
        text = self._call("get", self.key)
        return None if text is None else TrafficState.from_json(text)

    def write(self, state: TrafficState) -> None:
        self._call("set", self.key, state.to_json())

    def clear(self) -> None:
        self._call("delete", self.key)


def state_store(uri: str | None = None, *, key: str | None = None) -> StateStore:
    """The store at ``uri`` (default: the ``rollout_state_uri`` setting).

    ``key`` names the state in PostgreSQL and Redis (default ``loopline:rollout``; a ``?key=``
    query parameter in the URI does the same and is removed before connecting).
    """
    from loopline.config import mask_uri, settings

    uri = uri or settings().rollout_state_uri
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    chosen_key = key or (query.pop("key", [None])[0]) or DEFAULT_STATE_KEY
    remaining = "&".join(f"{name}={value}" for name, values in query.items() for value in values)
    connect_uri = parts._replace(query=remaining).geturl()
    if parts.scheme == "file":
        return FileStateStore(Path(unquote(parts.path)))
    if parts.scheme in ("postgresql", "postgres"):
        return PostgresStateStore(connect_uri, key=chosen_key)
    if parts.scheme in ("redis", "rediss"):
        return RedisStateStore(connect_uri, key=chosen_key)
    raise RolloutStateError(f"rollout state URI {mask_uri(uri)!r}: expected file://, postgresql:// or redis://")
