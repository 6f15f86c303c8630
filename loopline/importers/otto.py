"""OTTO session JSON lines (clicks, carts, orders) -> sessions of positives.

Source: one session per line, ``{"session": 0, "events": [{"aid": 1517085, "ts": 1659304800025,
"type": "clicks"}, ...]}`` with ``ts`` in epoch milliseconds (UTC). A *row* is one event of a session;
a line that cannot be read as a session counts as one skipped row (its events cannot be counted).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from loopline.importers._common import DatasetSpec, ImportInputError, Positive, RowLog, Session, day_of_ms

SPEC = DatasetSpec(name="otto", page="home")
EVENT_TYPES = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time RFC 3339 can write
window_of = day_of_ms


def resolve(path: Path) -> Path:
    """The sessions file: ``path`` itself, or ``sessions.jsonl`` / the only ``*.jsonl[.gz]`` in a folder."""
    if path.is_dir():
        candidates = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.jsonl.gz"))
        named = [p for p in candidates if p.name.startswith("sessions.jsonl")]
        if len(named) == 1 or len(candidates) == 1:
            return (named or candidates)[0]
        raise ImportInputError(
            f"{path}: expected one OTTO sessions file (*.jsonl) in this folder, found {len(candidates)}"
        )
    if not path.is_file():
        raise ImportInputError(f"{path}: no such file (expected OTTO session JSON lines)")
    return path


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _is_count(value: object, upper: int) -> bool:
    return type(value) is int and 0 <= value <= upper


def read_sessions(source: Path, rows: RowLog, *, seed: int = 0, limit: int | None = None) -> Iterator[Session]:
    """Yield one Session per valid session line; count and skip malformed lines and events."""
    seen_content = False
    with _open(source) as lines:
        for line_number, raw in enumerate(lines, start=1):
            if limit is not None and rows.read >= limit:
                return
            if not raw.strip():
                rows.row()
                rows.skip("empty_line", line_number)
                continue
            if not seen_content:
                seen_content = True
                if not raw.lstrip().startswith(b"{"):
                    raise ImportInputError(
                        f"{source}:{line_number}: expected OTTO session JSON lines "
                        f'({{"session": ..., "events": [...]}}), got {raw[:60]!r}'
                    )
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                rows.row()
                rows.skip("invalid_json", line_number)
                continue
            if not isinstance(record, dict):
                rows.row()
                rows.skip("not_an_object", line_number)
                continue
            events = record.get("events")
            if not isinstance(events, list):
                rows.row()
                rows.skip("missing_field:events" if events is None else "bad_value:events", line_number)
                continue
            session_id = record.get("session")
            if not _is_count(session_id, 2**63 - 1):
                reason = "missing_field:session" if session_id is None else "bad_value:session"
                take = len(events) if limit is None else min(len(events), limit - rows.read)
                for _ in range(take):
                    rows.row()
                rows.skip(reason, line_number, rows=take)
                continue
            positives: list[Positive] = []
            for index, event in enumerate(events):
                if limit is not None and rows.read >= limit:
                    break
                rows.row()
                reason = _event_problem(event)
                if reason:
                    rows.skip(reason, line_number)
                    continue
                positives.append(
                    Positive(
                        key=f"otto-s{session_id}-e{index}",
                        item_id=f"otto-a{event['aid']}",
                        at_ms=event["ts"],
                        event_type=EVENT_TYPES[event["type"]],
                    )
                )
                rows.converted += 1
            if positives:
                yield Session(user_id=f"otto-s{session_id}", positives=positives)


def _event_problem(event: object) -> str | None:
    """The skip reason of one OTTO event, or None if it is valid."""
    if not isinstance(event, dict):
        return "not_an_object"
    for name in ("aid", "ts", "type"):
        if event.get(name) is None:
            return f"missing_field:{name}"
    if not _is_count(event["aid"], 2**63 - 1):
        return "bad_value:aid"
    if not _is_count(event["ts"], MAX_TS_MS):
        return "bad_value:ts"
    if not isinstance(event["type"], str) or event["type"] not in EVENT_TYPES:
        return "bad_value:type"
    return None
