"""One simulated day of traffic: sessions, ranking requests, impressions, clicks, carts, purchases.

Everything for a day is drawn with numpy in a few vectorised passes from generators keyed by
``(seed, day index, stream)``, so a day's traffic depends only on the world, the day and the policy
(not on which days were simulated before it; a learning policy's state aside). Events are sorted
by time; ``render_text``/``render_lines`` turn any slice of them into schema v1 JSON lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import orjson
import pyarrow as pa

from loopline import events
from loopline.simulate.policies import BatchPolicy, Policy, PolicyError, RequestContext, make_policy
from loopline.simulate.text import plant_pii, python_random, query_table
from loopline.simulate.world import BOT_CLICK_PROBABILITY, World

PAGES = ("home", "search", "category", "product")
PAGE_SHARES = (0.35, 0.25, 0.25, 0.15)
HOME, SEARCH = 0, 1
IMPRESSION, CLICK, ADD_TO_CART, PURCHASE = range(4)
# Share of requests per hour of the day (UTC): quiet nights, a lunch bump, an evening peak.
HOUR_WEIGHTS = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.8, 4, 4.5, 4.2, 4, 4, 4.2, 4.6, 5.2, 5.8, 6, 5, 3.5, 2],
    dtype=np.float64,
)
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
DEFAULT_CANDIDATES = 50
# Candidate sets of category-like pages (category, search, product) draw this share from the category.
IN_CATEGORY_SHARE = 0.7
LATE_CLICK_SHARE = 0.04  # clicks logged 10-40 minutes after the impression (attribution-window tests)
# Expected follow-up events (click, cart, purchase) per impression shown to a person; used only to
# turn events_per_day into a number of requests (calibrated on the default world, ~+-10 %).
FOLLOW_UPS_PER_PERSON_IMPRESSION = 0.075
FOLLOW_UPS_PER_BOT_IMPRESSION = 0.92

# Generator streams of a day: one per purpose, so adding draws to one never shifts another.
STREAM_TRAFFIC, STREAM_POLICY, STREAM_TEXT, STREAM_IDS, STREAM_MALFORMED = 1, 2, 3, 4, 5

_EVENT_TYPE_NAMES = np.array(events.EVENT_TYPES, dtype=object)
_PAGE_NAMES = np.array(PAGES, dtype=object)
_DEVICE_NAMES = np.array(events.DEVICES, dtype=object)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_HEX_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def day_rng(world: World, day: int, stream: int, *extra: int) -> np.random.Generator:
    """The generator of one purpose on one day (independent of every other day and purpose)."""
    return np.random.default_rng([world.seed, day, stream, *extra])


def uuid_chars(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` random version-4 UUIDs as a (count, 36) uint8 matrix of ASCII (deterministic, unlike uuid4)."""
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    text = np.full((count, 36), ord("-"), dtype=np.uint8)
    for start in range(0, count, 1 << 16):  # in blocks, to keep the temporaries small
        block = raw[start : start + (1 << 16)]
        nibbles = np.empty((len(block), 32), dtype=np.uint8)
        nibbles[:, 0::2] = block >> 4
        nibbles[:, 1::2] = block & 0x0F
        text[start : start + len(block), _UUID_HEX_COLUMNS] = _HEX[nibbles]
    return text


def chars_to_strings(chars: np.ndarray) -> list[str]:
    """Rows of an ASCII uint8 matrix as Python strings."""
    if not len(chars):
        return []
    width = chars.shape[1]
    return [row.decode() for row in np.ascontiguousarray(chars).view(f"S{width}").ravel().tolist()]


def chars_to_arrow(chars: np.ndarray) -> pa.Array:
    """Rows of an ASCII uint8 matrix as an Arrow string array, without Python objects."""
    count, width = chars.shape
    offsets = pa.py_buffer(np.arange(count + 1, dtype=np.int32) * width)
    return pa.StringArray.from_buffers(count, offsets, pa.py_buffer(np.ascontiguousarray(chars)))


def strings_to_arrow(strings: list[str]) -> pa.Array:
    """A list of strings as an Arrow string array."""
    encoded = [text.encode() for text in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)  # one day's ids: far below 2 GiB
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded)))


def numpy_to_arrow(values: np.ndarray, arrow_type: pa.DataType | None = None) -> pa.Array:
    """A 1-d numpy array as an Arrow array over the same bytes.

    Built from buffers because ``pa.array`` imports pandas (seconds of start-up) on first use.
    """
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    arrow_type = arrow_type or pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def timestamp_strings(day: date, ms: np.ndarray) -> list[str]:
    """RFC 3339 strings (``YYYY-MM-DDTHH:MM:SS.mmmZ``) of millisecond offsets from ``day``'s midnight."""
    if not len(ms):
        return []
    ms = np.asarray(ms, dtype=np.int64)
    day_offset = ms // MS_PER_DAY
    if day_offset.min() != day_offset.max():  # e.g. a whole day with its late events past midnight
        result = np.empty(len(ms), dtype=object)
        for offset in np.unique(day_offset).tolist():
            chosen = day_offset == offset
            result[chosen] = timestamp_strings(day + timedelta(days=offset), ms[chosen] - offset * MS_PER_DAY)
        return result.tolist()
    day = day + timedelta(days=int(day_offset[0]))
    ms = ms - day_offset[0] * MS_PER_DAY
    text = np.empty((len(ms), 24), dtype=np.uint8)
    text[:, :11] = np.frombuffer(f"{day.isoformat()}T".encode(), dtype=np.uint8)
    text[:, [13, 16]] = ord(":")
    text[:, 19] = ord(".")
    text[:, 23] = ord("Z")
    for value, columns in (
        (ms // MS_PER_HOUR, (11, 12)),
        (ms // 60_000 % 60, (14, 15)),
        (ms // 1000 % 60, (17, 18)),
    ):
        text[:, columns[0]] = _DIGITS[value // 10]
        text[:, columns[1]] = _DIGITS[value % 10]
    fraction = ms % 1000
    text[:, 20] = _DIGITS[fraction // 100]
    text[:, 21] = _DIGITS[fraction // 10 % 10]
    text[:, 22] = _DIGITS[fraction % 10]
    return chars_to_strings(text)


@dataclass
class DayTraffic:
    """One day of simulated traffic as arrays; events are sorted by time (ms after the day's midnight)."""

    world: World
    day_index: int
    date: date
    # Requests.
    request_user: np.ndarray
    request_time: np.ndarray
    request_page: np.ndarray
    request_device: np.ndarray
    request_category: np.ndarray  # -1 on the home page
    request_ids: list[str]
    request_query: list[str | None]
    request_model_version: list[str]
    request_variant: list[str]
    request_pii: dict[int, list[tuple[str, str]]]
    # Impressions in request order (position 1..K within each request), with their oracle.
    impression_request: np.ndarray
    impression_item: np.ndarray
    impression_position: np.ndarray
    attractiveness: np.ndarray
    click_probability: np.ndarray
    purchase_probability: np.ndarray  # P(purchase | impression) = P(click) * P(purchase | click)
    clicked: np.ndarray
    added_to_cart: np.ndarray
    purchased: np.ndarray
    impression_event_ids: np.ndarray  # (impressions, 36) uint8
    # Events, sorted by time.
    event_type: np.ndarray
    event_request: np.ndarray
    event_item: np.ndarray
    event_position: np.ndarray
    event_time: np.ndarray
    event_ids: np.ndarray  # (events, 36) uint8
    _columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_events(self) -> int:
        return len(self.event_type)

    def counts(self) -> dict[str, int]:
        """Events by type (impression, click, add_to_cart, purchase)."""
        by_type = np.bincount(self.event_type, minlength=len(events.EVENT_TYPES))
        return dict(zip(events.EVENT_TYPES, map(int, by_type), strict=True))

    def hour_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` event slices per hour 0..24; hour 24 is the next day's hour 0 (late events)."""
        edges = np.searchsorted(self.event_time, np.arange(26, dtype=np.int64) * MS_PER_HOUR)
        return [(int(edges[h]), int(edges[h + 1])) for h in range(25)]

    def _column(self, name: str, make: Callable[[], list]) -> np.ndarray:
        """A per-request or per-item column as an object array (built once per day, then indexed)."""
        if name not in self._columns:
            self._columns[name] = np.array(make(), dtype=object)
        return self._columns[name]

    def render_text(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Schema v1 JSON lines (each ending in ``\\n``) of events ``start:stop``, in time order, as text.

        Byte for byte what ``orjson.dumps`` makes of ``Event.to_dict()`` (same key order and number
        forms), so ``parse_line(line).to_json_line() == line``. Strings that could need escaping
        (request id, model version, variant, query) are serialised by orjson once per request; the
        rest are ids, names and timestamps from fixed alphabets. A template is ~4x faster than a
        dict per event and gives exact-size strings (orjson's ``bytes`` keep a large buffer each).
        """
        stop = self.n_events if stop is None else stop
        if stop <= start:
            return []
        world = self.world
        requests = self.event_request[start:stop]
        items = self.event_item[start:stop]
        users = self.request_user[requests]

        def labels() -> list[str]:
            names = _PAGE_NAMES[self.request_page].tolist()
            devices = _DEVICE_NAMES[self.request_device].tolist()
            return [
                f'"model_version":{_json(version)},"variant":{_json(variant)},"page":"{page}","device":"{device}"'
                for version, variant, page, device in zip(
                    self.request_model_version, self.request_variant, names, devices, strict=True
                )
            ]

        columns = zip(
            chars_to_strings(self.event_ids[start:stop]),
            _EVENT_TYPE_NAMES[self.event_type[start:stop]].tolist(),
            timestamp_strings(self.date, self.event_time[start:stop]),
            self._column("user_ids", lambda: world.user_ids)[users].tolist(),
            self._column("item_ids", lambda: world.item_ids)[items].tolist(),
            self._column("request_ids", lambda: [_json(r) for r in self.request_ids])[requests].tolist(),
            self.event_position[start:stop].tolist(),
            self._column("labels", labels)[requests].tolist(),
            self._column("prices", lambda: [_json(p) for p in world.item_price.tolist()])[items].tolist(),
            self._column("queries", lambda: [_json(q) for q in self.request_query])[requests].tolist(),
            strict=True,
        )
        return [
            f'{{"event_id":"{event_id}","event_type":"{event_type}","event_at":"{event_at}","user_id":"{user_id}",'
            f'"item_id":"{item_id}","request_id":{request_id},"position":{position},{labels},"price":{price},'
            f'"query":{query},"schema_version":1}}\n'
            for (
                event_id,
                event_type,
                event_at,
                user_id,
                item_id,
                request_id,
                position,
                labels,
                price,
                query,
            ) in columns
        ]

    def render_lines(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        """Like ``render_text``, as ``bytes`` lines ready for ``LogStore.write``."""
        return [line.encode() for line in self.render_text(start, stop)]

    def iter_lines(self) -> Iterator[bytes]:
        """Every event line of the day in time order (late ones into the next day included), hour by hour."""
        for start, stop in self.hour_bounds():
            yield from self.render_lines(start, stop)

    def oracle_table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """The truth of impressions ``start:stop`` (all by default): who saw what where, P(click),
        P(purchase) and what happened.
        """
        world = self.world
        rows = slice(start, len(self.impression_item) if stop is None else stop)
        requests = self.impression_request[rows]
        users = self.request_user[requests]
        midnight_ms = (self.date - date(1970, 1, 1)).days * MS_PER_DAY
        if "arrow_ids" not in self._columns:
            self._columns["arrow_ids"] = [
                strings_to_arrow(x) for x in (self.request_ids, world.user_ids, world.item_ids)
            ]
        request_ids, user_ids, item_ids = self._columns["arrow_ids"]
        return pa.table(
            {
                "event_id": chars_to_arrow(self.impression_event_ids[rows]),
                "request_id": request_ids.take(numpy_to_arrow(requests)),
                "user_id": user_ids.take(numpy_to_arrow(users)),
                "item_id": item_ids.take(numpy_to_arrow(self.impression_item[rows])),
                "position": numpy_to_arrow(self.impression_position[rows].astype(np.int16)),
                "event_at": numpy_to_arrow(
                    (midnight_ms + self.request_time[requests]).astype(np.int64), pa.timestamp("ms", tz="UTC")
                ),
                "day_index": numpy_to_arrow(np.full(len(users), self.day_index, dtype=np.int32)),
                "is_bot": numpy_to_arrow(world.user_is_bot[users]),
                "attractiveness": numpy_to_arrow(self.attractiveness[rows]),
                "click_probability": numpy_to_arrow(self.click_probability[rows]),
                "purchase_probability": numpy_to_arrow(self.purchase_probability[rows]),
                "clicked": numpy_to_arrow(self.clicked[rows]),
                "added_to_cart": numpy_to_arrow(self.added_to_cart[rows]),
                "purchased": numpy_to_arrow(self.purchased[rows]),
            }
        )


def requests_for(world: World, events_per_day: int, shown_per_request: int) -> int:
    """How many ranking requests make about ``events_per_day`` events."""
    bot_share = float(world.user_activity[world.user_is_bot].sum())
    follow_ups = (1 - bot_share) * FOLLOW_UPS_PER_PERSON_IMPRESSION + bot_share * FOLLOW_UPS_PER_BOT_IMPRESSION
    return max(1, round(events_per_day / (shown_per_request * (1 + follow_ups))))


def _sessions(world: World, rng: np.random.Generator, n_requests: int, day: int) -> dict[str, np.ndarray]:
    """Users arrive in sessions of a few requests each, spread over the day by HOUR_WEIGHTS."""
    lengths = np.minimum(rng.geometric(0.4, n_requests), 10)
    ends = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(ends, n_requests)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(ends[n_sessions - 1]) - n_requests
    session_user = rng.choice(world.n_users, size=n_sessions, p=world.user_activity)
    own_device = rng.random(n_sessions) < 0.85
    session_device = np.where(
        own_device, world.user_device[session_user], rng.integers(0, len(events.DEVICES), n_sessions)
    )
    hour = rng.choice(24, size=n_sessions, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    session_start = hour * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, n_sessions)

    session_of = np.repeat(np.arange(n_sessions), lengths)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gaps = (rng.exponential(45_000.0, n_requests) + 3_000).astype(np.int64)
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[first][session_of]
    request_time = np.minimum(session_start[session_of] + elapsed, MS_PER_DAY - 1)
    users = session_user[session_of]

    page = rng.choice(len(PAGES), size=n_requests, p=PAGE_SHARES)
    favorite = world.favorite_category(users, day)
    browsed = np.where(rng.random(n_requests) < 0.6, favorite, rng.integers(0, len(world.categories), n_requests))
    category = np.where(page == HOME, -1, browsed)
    return {
        "user": users.astype(np.int64),
        "time": request_time.astype(np.int64),
        "page": page.astype(np.uint8),
        "device": session_device[session_of].astype(np.uint8),
        "category": category.astype(np.int64),
    }


def _windows(pool: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """``width`` consecutive entries of the cyclic ``pool`` from each offset (distinct within a row)."""
    return pool[(offsets[:, None] + np.arange(width)[None, :]) % len(pool)]


def _candidates(
    world: World, rng: np.random.Generator, categories: np.ndarray, available: np.ndarray, width: int
) -> np.ndarray:
    """Distinct candidate items per request: mostly of the request's category, the rest from anywhere."""
    out = np.empty((len(categories), width), dtype=np.int64)
    shuffled = rng.permutation(available)
    in_category = world.item_category[shuffled]
    for category in np.unique(categories).tolist():
        rows = np.flatnonzero(categories == category)
        offsets_a = rng.integers(0, len(shuffled), len(rows))
        offsets_b = rng.integers(0, len(shuffled), len(rows))
        own = shuffled[in_category == category] if category >= 0 else shuffled[:0]
        if not len(own):
            out[rows] = _windows(shuffled, offsets_a, width)
            continue
        others = shuffled[in_category != category]
        n_in = min(len(own), math.ceil(IN_CATEGORY_SHARE * width))
        n_out = min(width - n_in, len(others))
        n_in = width - n_out  # <= len(own) because width <= len(available)
        out[rows, :n_in] = _windows(own, offsets_a % len(own), n_in)
        if n_out:
            out[rows, n_in:] = _windows(others, offsets_b % len(others), n_out)
    return out


def _rank_one_by_one(
    policy: Policy,
    traffic_date: date,
    world: World,
    requests: dict[str, np.ndarray],
    candidates: np.ndarray,
    k: int,
    request_ids: list[str],
    queries: list[str | None],
) -> tuple[list[np.ndarray], list[str], list[str], list[str]]:
    """Call ``policy.rank`` per request; validate that it shows distinct candidates, at most k."""
    midnight = datetime(traffic_date.year, traffic_date.month, traffic_date.day, tzinfo=UTC)
    shown, versions, variants, ids = [], [], [], []
    item_ids = world.item_ids
    for row, (user, when, page, device, category) in enumerate(
        zip(
            requests["user"].tolist(),
            requests["time"].tolist(),
            requests["page"].tolist(),
            requests["device"].tolist(),
            requests["category"].tolist(),
            strict=True,
        )
    ):
        candidate_ids = [item_ids[i] for i in candidates[row].tolist()]
        context = RequestContext(
            request_id=request_ids[row],
            day=traffic_date,
            event_at=midnight + timedelta(milliseconds=when),
            page=PAGES[page],
            device=events.DEVICES[device],
            query=queries[row],
            category=world.categories[category] if category >= 0 else None,
        )
        ranked = policy.rank(world.user_ids[user], candidate_ids, k, context)
        allowed = set(candidate_ids)
        if not ranked.item_ids or len(ranked.item_ids) > k or len(set(ranked.item_ids)) != len(ranked.item_ids):
            raise PolicyError(f"policy {policy!r} returned {len(ranked.item_ids)} items; expected 1..{k} distinct")
        if not allowed.issuperset(ranked.item_ids):
            strangers = sorted(set(ranked.item_ids) - allowed)[:3]
            raise PolicyError(f"policy {policy!r} returned items that were not candidates: {strangers}")
        shown.append(world.item_indices(ranked.item_ids))
        versions.append(ranked.model_version)
        variants.append(ranked.variant)
        ids.append(ranked.request_id or request_ids[row])
    return shown, versions, variants, ids


def generate_day(
    world: World,
    day_index: int,
    policy: Policy | str,
    *,
    events_per_day: int,
    k: int = 10,
    pii_rate: float = 0.0,
    candidates: int = DEFAULT_CANDIDATES,
    batch_size: int = 8192,
) -> DayTraffic:
    """Simulate day ``day_index`` of ``world``: requests ranked by ``policy``, user reactions drawn from the truth.

    A ``BatchPolicy`` ranks whole batches with numpy; any other policy is called once per request.
    Afterwards a BatchPolicy sees the day's impressions and clicks (``observe``), e.g. to update counts;
    pass the same policy object every day for that (a name makes a fresh policy each call).
    """
    policy = make_policy(policy)
    if day_index < 0:
        raise ValueError(f"day_index must be >= 0, got {day_index}")
    if k < 1 or candidates < k:
        raise ValueError(f"need 1 <= k <= candidates, got k={k}, candidates={candidates}")
    if not 0.0 <= pii_rate <= 1.0:
        raise ValueError(f"pii_rate must be in [0, 1], got {pii_rate}")
    traffic_date = world.start_date + timedelta(days=day_index)
    rng = day_rng(world, day_index, STREAM_TRAFFIC)
    available = world.available_items(day_index)
    width = min(candidates, len(available))
    shown_per_request = min(k, width)
    n_requests = requests_for(world, events_per_day, shown_per_request)
    requests = _sessions(world, rng, n_requests, day_index)

    # Queries on search pages, some with personal data planted.
    picker = python_random(day_rng(world, day_index, STREAM_TEXT))
    table = query_table(world.categories, world.seed)
    query_pick = rng.integers(0, len(table[0]), n_requests)
    plant = rng.random(n_requests) < pii_rate
    queries: list[str | None] = [None] * n_requests
    request_pii: dict[int, list[tuple[str, str]]] = {}
    for row in np.flatnonzero(requests["page"] == SEARCH).tolist():
        text = table[requests["category"][row]][query_pick[row]]
        if plant[row]:
            text, planted = plant_pii(text, picker)
            request_pii[row] = planted
        queries[row] = text

    id_rng = day_rng(world, day_index, STREAM_IDS)
    request_ids = chars_to_strings(uuid_chars(id_rng, n_requests))

    # Rank.
    policy_rng = day_rng(world, day_index, STREAM_POLICY)
    if isinstance(policy, BatchPolicy):
        policy.bind(world)
        shown_blocks, versions, variants = [], [], []
        for start in range(0, n_requests, batch_size):
            stop = min(start + batch_size, n_requests)
            block_candidates = _candidates(world, rng, requests["category"][start:stop], available, width)
            ranking = policy.rank_batch(
                world, requests["user"][start:stop], block_candidates, shown_per_request, day_index, policy_rng
            )
            if ranking.shown.shape != (stop - start, shown_per_request):
                raise PolicyError(
                    f"{policy!r}.rank_batch returned shape {ranking.shown.shape}, "
                    f"expected {(stop - start, shown_per_request)}"
                )
            shown_blocks.append(ranking.shown)
            versions += [ranking.model_version] * (stop - start)
            variants += [ranking.variant] * (stop - start)
        shown = np.concatenate(shown_blocks)
        impression_request = np.repeat(np.arange(n_requests), shown_per_request)
        impression_item = shown.ravel().astype(np.int64)
        impression_position = np.tile(np.arange(1, shown_per_request + 1), n_requests)
    else:
        all_candidates = _candidates(world, rng, requests["category"], available, width)
        lists, versions, variants, request_ids = _rank_one_by_one(
            policy, traffic_date, world, requests, all_candidates, shown_per_request, request_ids, queries
        )
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        impression_request = np.repeat(np.arange(n_requests), lengths)
        impression_item = np.concatenate(lists).astype(np.int64)
        impression_position = np.arange(len(impression_item)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1

    # The truth, and what the users do.
    users = requests["user"][impression_request]
    n_impressions = len(impression_item)
    attractiveness = world.attractiveness(users, impression_item, day_index)
    is_bot = world.user_is_bot[users]
    click_p = np.where(is_bot, BOT_CLICK_PROBABILITY, world.examination(impression_position) * attractiveness)
    cart_p = world.cart_probability(users, impression_item, day_index)
    buy_p = world.purchase_given_cart(impression_item)
    clicked = rng.random(n_impressions) < click_p
    click_rows = np.flatnonzero(clicked)
    carted_among_clicks = rng.random(len(click_rows)) < cart_p[click_rows]
    cart_rows = click_rows[carted_among_clicks]
    bought_among_carts = rng.random(len(cart_rows)) < buy_p[cart_rows]
    buy_rows = cart_rows[bought_among_carts]
    carted = np.zeros(n_impressions, dtype=bool)
    carted[cart_rows] = True
    purchased = np.zeros(n_impressions, dtype=bool)
    purchased[buy_rows] = True

    # When: a few seconds after the impression, some clicks 10-40 minutes late; bots within 3 s.
    # Cart and purchase follow their click, so every event lands at most ~55 minutes after its request.
    n_clicks = len(click_rows)
    shown_at = requests["time"][impression_request]
    click_delay = np.clip(rng.lognormal(math.log(8_000), 1.0, n_clicks), 800, 600_000)
    late = rng.random(n_clicks) < LATE_CLICK_SHARE
    click_delay = np.where(late, rng.uniform(600_000, 2_400_000, n_clicks), click_delay)
    click_delay = np.where(is_bot[click_rows], rng.uniform(200, 3_000, n_clicks), click_delay)
    click_at = shown_at[click_rows] + click_delay.astype(np.int64)
    cart_delay = np.clip(rng.lognormal(math.log(40_000), 0.8, len(cart_rows)), 5_000, 300_000)
    cart_at = click_at[carted_among_clicks] + cart_delay.astype(np.int64)
    buy_delay = np.clip(rng.lognormal(math.log(120_000), 0.7, len(buy_rows)), 20_000, 600_000)
    buy_at = cart_at[bought_among_carts] + buy_delay.astype(np.int64)

    # Events: impressions then follow-ups, sorted by time (stable: positions stay in order).
    source = np.concatenate((np.arange(n_impressions), click_rows, cart_rows, buy_rows))
    kinds = np.repeat(
        np.array([IMPRESSION, CLICK, ADD_TO_CART, PURCHASE], dtype=np.uint8),
        [n_impressions, n_clicks, len(cart_rows), len(buy_rows)],
    )
    times = np.concatenate((shown_at, click_at, cart_at, buy_at))
    del shown_at, click_delay, late
    ids = uuid_chars(id_rng, len(source))
    order = np.argsort(times, kind="stable")
    sorted_source = source[order]

    traffic = DayTraffic(
        world=world,
        day_index=day_index,
        date=traffic_date,
        request_user=requests["user"],
        request_time=requests["time"],
        request_page=requests["page"],
        request_device=requests["device"],
        request_category=requests["category"],
        request_ids=request_ids,
        request_query=queries,
        request_model_version=versions,
        request_variant=variants,
        request_pii=request_pii,
        impression_request=impression_request,
        impression_item=impression_item,
        impression_position=impression_position,
        attractiveness=attractiveness,
        click_probability=click_p,
        purchase_probability=click_p * cart_p * buy_p,
        clicked=clicked,
        added_to_cart=carted,
        purchased=purchased,
        impression_event_ids=ids[:n_impressions],
        event_type=kinds[order],
        event_request=impression_request[sorted_source],
        event_item=impression_item[sorted_source],
        event_position=impression_position[sorted_source],
        event_time=times[order],
        event_ids=ids[order],
    )
    if isinstance(policy, BatchPolicy):
        policy.observe(world, day_index, impression_item, clicked)
    return traffic
