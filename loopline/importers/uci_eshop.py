"""UCI "Clickstream Data for Online Shopping" (e-shop clothing 2008) -> sessions of positives.

Source: ``e-shop clothing 2008.csv``, read straight from its zip (streaming), semicolon-separated,
CRLF, a header row. Each row is one page view of a product: a click. The log has day resolution only;
``order`` is the click's rank in its session, so a session's clicks are spread over its day: the
session starts at a seeded second of the day and each click follows the previous by 30 s.
"""

from __future__ import annotations

import io
import math
import random
import re
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import IO

from loopline.importers._common import DatasetSpec, ImportInputError, Positive, RowLog, Session, day_of_ms

SPEC = DatasetSpec(name="uci-eshop", page="category")
window_of = day_of_ms

COLUMNS = (
    "year",
    "month",
    "day",
    "order",
    "country",
    "session id",
    "page 1 (main category)",
    "page 2 (clothing model)",
    "colour",
    "location",
    "model photography",
    "price",
    "price 2",
    "page",
)
YEAR, MONTH, DAY, ORDER, SESSION, MODEL, PRICE = 0, 1, 2, 3, 5, 7, 11
CLICK_STEP_SECONDS = 30
SECONDS_PER_DAY = 86_400
MAX_ORDER = SECONDS_PER_DAY
_MODEL = re.compile(r"^[A-Za-z0-9]{1,32}$")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def resolve(path: Path) -> Path:
    """The zip (or an extracted CSV): ``path`` itself, or the only ``*.zip`` / ``*.csv`` in a folder."""
    if path.is_dir():
        candidates = sorted(path.glob("*.zip")) or sorted(path.glob("*.csv"))
        if len(candidates) != 1:
            raise ImportInputError(
                f"{path}: expected one *.zip or *.csv of the UCI e-shop clickstream in this folder, "
                f"found {len(candidates)}"
            )
        return candidates[0]
    if not path.is_file():
        raise ImportInputError(f"{path}: no such file (expected the UCI e-shop clickstream zip or CSV)")
    return path


def _open(source: Path, stack: ExitStack) -> tuple[IO[bytes], str]:
    """A binary line stream of the CSV and the name to quote in messages (``zip!member`` for a zip)."""
    if source.suffix.lower() != ".zip":
        return stack.enter_context(source.open("rb")), str(source)
    try:
        archive = stack.enter_context(zipfile.ZipFile(source))
    except zipfile.BadZipFile as error:
        raise ImportInputError(f"{source}: not a readable zip file ({error})") from None
    members = [name for name in archive.namelist() if name.lower().endswith(".csv")]
    if len(members) != 1:
        raise ImportInputError(f"{source}: expected exactly one .csv inside the zip, found {members}")
    stream = stack.enter_context(archive.open(members[0]))
    return stack.enter_context(io.BufferedReader(stream, buffer_size=1 << 20)), f"{source}!{members[0]}"


def _check_header(raw: bytes, name: str) -> None:
    text = raw.decode("utf-8", "replace").lstrip("\ufeff").strip()
    found = tuple(column.strip().lower() for column in text.split(";"))
    if found != COLUMNS:
        raise ImportInputError(
            f"{name}:1: expected the UCI e-shop header {';'.join(COLUMNS)!r} (case-insensitive), got {text[:120]!r}"
        )


def _parse(fields: list[bytes]) -> tuple[str, None] | tuple[None, tuple[int, date, int, str, float]]:
    """(reason, None) for a bad row, else (None, (session id, day, order, clothing model, price))."""
    if len(fields) != len(COLUMNS):
        return "wrong_column_count", None
    try:
        day = date(int(fields[YEAR]), int(fields[MONTH]), int(fields[DAY]))
    except ValueError:
        return "bad_value:date", None
    if day.year < 1970:
        return "bad_value:date", None
    try:
        order = int(fields[ORDER])
    except ValueError:
        return "bad_value:order", None
    if not 1 <= order <= MAX_ORDER:
        return "bad_value:order", None
    try:
        session_id = int(fields[SESSION])
    except ValueError:
        return "bad_value:session_id", None
    if session_id < 0:
        return "bad_value:session_id", None
    model = fields[MODEL].strip().decode("ascii", "replace")
    if not _MODEL.match(model):
        return "bad_value:clothing_model", None
    try:
        price = float(fields[PRICE])
    except ValueError:
        return "bad_value:price", None
    if not (math.isfinite(price) and 0 <= price < 1e9):
        return "bad_value:price", None
    return None, (session_id, day, order, model, price)


def click_times_ms(seed: int, session_id: int, day: date, orders: list[int]) -> list[int]:
    """Epoch-ms times of a session's clicks: a seeded start within the day, then one click per 30 s.

    The step shrinks only if ``max(orders)`` clicks would not fit into the day; the order is kept.
    """
    gaps = max(orders) - 1
    step = CLICK_STEP_SECONDS if gaps * CLICK_STEP_SECONDS < SECONDS_PER_DAY else (SECONDS_PER_DAY - 1) // gaps
    span = gaps * step
    rng = random.Random(f"{seed}|uci-eshop|{session_id}|{day.isoformat()}")
    start = rng.randrange(SECONDS_PER_DAY - span)
    midnight_ms = (day.toordinal() - _EPOCH_ORDINAL) * SECONDS_PER_DAY * 1000
    return [midnight_ms + (start + (order - 1) * step) * 1000 for order in orders]


def read_sessions(source: Path, rows: RowLog, *, seed: int = 0, limit: int | None = None) -> Iterator[Session]:
    """Yield one Session per run of rows with the same (session ID, day); skip and count bad rows."""
    with ExitStack() as stack:
        lines, name = _open(source, stack)
        rows.source = name
        header = lines.readline()
        if not header:
            raise ImportInputError(f"{name}:1: the file is empty; expected the UCI e-shop header")
        _check_header(header, name)
        current: tuple[int, date] | None = None
        pending: list[tuple[int, str, float]] = []  # (order, model, price) of the current session

        def flush() -> Session:
            assert current is not None
            session_id, day = current
            times = click_times_ms(seed, session_id, day, [order for order, _, _ in pending])
            positives = [
                Positive(
                    key=f"uci-s{session_id}-o{order}",
                    item_id=f"uci-{model}",
                    at_ms=at_ms,
                    event_type="click",
                    price=price,
                )
                for (order, model, price), at_ms in zip(pending, times, strict=True)
            ]
            return Session(user_id=f"uci-s{session_id}", positives=positives)

        for line_number, raw in enumerate(lines, start=2):
            if limit is not None and rows.read >= limit:
                break
            rows.row()
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                rows.skip("empty_line", line_number)
                continue
            reason, parsed = _parse(raw.split(b";"))
            if parsed is None:
                rows.skip(reason or "bad_row", line_number)
                continue
            session_id, day, order, model, price = parsed
            if current != (session_id, day):
                if pending:
                    yield flush()
                current, pending = (session_id, day), []
            pending.append((order, model, price))
            rows.converted += 1
        if pending:
            yield flush()


__all__ = ["SPEC", "click_times_ms", "read_sessions", "resolve", "window_of"]
