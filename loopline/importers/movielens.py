"""MovieLens ratings (``u.data``, ``ratings.csv`` or ``ratings.dat``) -> one session per user.

Formats, recognised by the first line:
- ``u.data`` (ML-100K): ``user_id<TAB>item_id<TAB>rating<TAB>timestamp``, no header;
- ``ratings.csv`` (ML-latest, ML-20M/25M/32M): header ``userId,movieId,rating,timestamp``;
- ``ratings.dat`` (ML-1M/10M): ``UserID::MovieID::Rating::Timestamp``, no header.
Timestamps are epoch seconds (UTC). A rating of 4 or more is a click; a lower rating is an item the
user saw and did not engage with (an impression without a click). Rows are held in memory as four
compact columns (about 32 bytes per rating) and sorted by (user, time, movie).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from loopline.importers._common import DatasetSpec, ImportInputError, Positive, RowLog, Session, month_of_ms

SPEC = DatasetSpec(name="movielens", page="home")
window_of = month_of_ms
CLICK_MIN_RATING = 4.0
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
FILE_NAMES = ("ratings.csv", "u.data", "ratings.dat")
CSV_HEADER = "userid,movieid,rating,timestamp"


def resolve(path: Path) -> Path:
    """The ratings file: ``path`` itself, or ``ratings.csv`` / ``u.data`` / ``ratings.dat`` in a folder."""
    if path.is_dir():
        for name in FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise ImportInputError(f"{path}: expected one of {', '.join(FILE_NAMES)} in this folder")
    if not path.is_file():
        raise ImportInputError(f"{path}: no such file (expected MovieLens u.data, ratings.csv or ratings.dat)")
    return path


def detect_format(first_line: bytes, source: Path, line_number: int) -> tuple[bytes, bool]:
    """(separator, has_header) of a MovieLens file from its first non-empty line."""
    text = first_line.decode("utf-8", "replace").lstrip("\ufeff").strip()
    if text.lower().replace(" ", "") == CSV_HEADER:
        return b",", True
    if "::" in text:
        return b"::", False
    if "\t" in text:
        return b"\t", False
    if "," in text and text.split(",", 1)[0].strip().isdigit():  # ratings.csv without its header
        return b",", False
    raise ImportInputError(
        f"{source}:{line_number}: expected MovieLens ratings: a 'userId,movieId,rating,timestamp' header "
        f"(ratings.csv), tab-separated user/item/rating/timestamp (u.data) or '::'-separated (ratings.dat); "
        f"got {text[:80]!r}"
    )


def _parse(fields: list[bytes]) -> tuple[str, None] | tuple[None, tuple[int, int, float, int]]:
    if len(fields) != 4:
        return "wrong_column_count", None
    values: list[int] = []
    for name, raw in (("user_id", fields[0]), ("movie_id", fields[1]), ("timestamp", fields[3])):
        try:
            value = int(raw)
        except ValueError:
            return f"bad_value:{name}", None
        if value < 0 or (name == "timestamp" and value > MAX_TIMESTAMP):
            return f"bad_value:{name}", None
        values.append(value)
    try:
        rating = float(fields[2])
    except ValueError:
        return "bad_value:rating", None
    if not (math.isfinite(rating) and 0 <= rating <= 5):
        return "bad_value:rating", None
    user_id, movie_id, timestamp = values
    return None, (user_id, movie_id, rating, timestamp)


def read_sessions(source: Path, rows: RowLog, *, seed: int = 0, limit: int | None = None) -> Iterator[Session]:
    """Read every rating (counting bad rows), then yield one Session per user in (time, movie) order."""
    users, movies, stamps = array("q"), array("q"), array("q")
    ratings = array("d")
    separator: bytes | None = None
    with source.open("rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if limit is not None and rows.read >= limit:
                break
            line = raw.rstrip(b"\r\n")
            if separator is None and line.strip():
                separator, has_header = detect_format(line, source, line_number)
                if has_header:
                    continue
            rows.row()
            if not line.strip():
                rows.skip("empty_line", line_number)
                continue
            reason, parsed = _parse(line.split(separator))
            if parsed is None:
                rows.skip(reason or "bad_row", line_number)
                continue
            user_id, movie_id, rating, timestamp = parsed
            users.append(user_id)
            movies.append(movie_id)
            ratings.append(rating)
            stamps.append(timestamp)
            rows.converted += 1
    if not users:
        return
    user_column, movie_column, stamp_column = (
        np.frombuffer(column, dtype=np.int64) for column in (users, movies, stamps)
    )
    order = np.lexsort((movie_column, stamp_column, user_column))
    current_user: int | None = None
    positives: list[Positive] = []
    for index in order.tolist():
        user_id = users[index]
        if user_id != current_user:
            if positives:
                yield Session(user_id=f"ml-u{current_user}", positives=positives)
            current_user, positives = user_id, []
        movie_id, timestamp = movies[index], stamps[index]
        positives.append(
            Positive(
                key=f"ml-u{user_id}-m{movie_id}-t{timestamp}",
                item_id=f"ml-m{movie_id}",
                at_ms=timestamp * 1000,
                event_type="click" if ratings[index] >= CLICK_MIN_RATING else None,
            )
        )
    if positives:
        yield Session(user_id=f"ml-u{current_user}", positives=positives)
