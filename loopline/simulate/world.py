"""The simulated world: users, items and the ground-truth click and purchase models.

Everything is drawn from one seed, so the same arguments always build the same world. The click
model is a position-based model: ``P(click) = examination(position) * attractiveness(user, item, day)``
for people, and a flat, high probability for bots (they click nearly everything, anywhere). From
``drift_day`` on, preferences shift: category tastes move to other categories (a cyclic shift) and
the latent user vectors rotate, so which categories and items win changes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from loopline.events import DEVICES

CATEGORY_NAMES = (
    "electronics",
    "books",
    "fashion",
    "home",
    "sports",
    "beauty",
    "toys",
    "grocery",
    "garden",
    "automotive",
    "music",
    "pets",
)
# Median price per category (a log-normal spread around it).
CATEGORY_PRICE_MEDIANS = {
    "electronics": 120.0,
    "books": 15.0,
    "fashion": 45.0,
    "home": 60.0,
    "sports": 50.0,
    "beauty": 25.0,
    "toys": 30.0,
    "grocery": 8.0,
    "garden": 40.0,
    "automotive": 70.0,
    "music": 20.0,
    "pets": 25.0,
}
DEVICE_SHARES = {"desktop": 0.35, "mobile": 0.55, "tablet": 0.08, "unknown": 0.02}

# Ground-truth constants. Calibrated on 200 users x 100 items, 10 shown of 50 candidates, six seeds:
# overall CTR of people ~3.3 % under a random ranking, ~6 % under popularity (clicks so far), ~10 %
# under the oracle ranking; CTR at position 1 is ~6x that at position 10 under a random ranking.
ATTRACTIVENESS_BASE = -2.8
CATEGORY_BIAS_SCALE = 0.45
AFFINITY_SCALE = 0.5
FAVORITE_BOOST = 0.8
QUALITY_SCALE = 0.35
LATENT_SCALE = 0.6
PRICE_SENSITIVITY = 0.3
EXAMINATION_POWER = 0.8  # examination(p) = p ** -0.8: position 10 is seen 6.3x less than position 1
BOT_CLICK_PROBABILITY = 0.92
CART_BASE = -1.1
PURCHASE_BASE = 0.1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _standardized(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: worlds of different seeds then have comparable click rates."""
    if len(values) < 2:
        return values - values.mean()
    return (values - values.mean()) / values.std()


def id_width(count: int, minimum: int) -> int:
    """Digits of zero-padded ids: at least ``minimum``, more when ``count`` needs them."""
    return max(minimum, len(str(max(count - 1, 0))))


@dataclass
class World:
    """Users and items with their hidden preferences; the truth every later stage is scored against."""

    seed: int
    start_date: date
    days: int
    n_users: int
    n_initial_items: int
    new_items_per_day: int
    drift_day: int | None
    bot_rate: float
    categories: tuple[str, ...]
    latent_dim: int
    user_ids: list[str]
    item_ids: list[str]
    user_vectors: np.ndarray  # (users, dim)
    user_affinity: np.ndarray  # (users, categories)
    user_favorite: np.ndarray  # (users,) category index
    user_activity: np.ndarray  # (users,) relative request rate, sums to 1
    user_device: np.ndarray  # (users,) index into DEVICES
    user_is_bot: np.ndarray  # (users,) bool
    item_category: np.ndarray  # (items,) category index
    item_price: np.ndarray  # (items,) float64, 2 decimals
    item_vectors: np.ndarray  # (items, dim)
    item_quality: np.ndarray  # (items,)
    item_intro_day: np.ndarray  # (items,) first day index the item can be shown
    category_bias: np.ndarray  # (categories,)
    drift_category_shift: int  # after drift, category c is liked as category (c + shift) % C was
    drift_rotation: np.ndarray  # (dim, dim) orthogonal; after drift user vectors are U @ R
    _user_index: dict[str, int] = field(default_factory=dict, repr=False)
    _item_index: dict[str, int] = field(default_factory=dict, repr=False)
    _drifted_vectors: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        users: int,
        items: int,
        seed: int,
        *,
        start_date: date = date(2024, 1, 1),
        days: int = 1,
        drift_day: int | None = None,
        bot_rate: float = 0.0,
        new_item_rate: float = 0.0,
        n_categories: int = 8,
        latent_dim: int = 8,
    ) -> World:
        """Draw a world from ``seed``; every draw happens whatever the knobs, so knobs change only their part."""
        if users < 1 or items < 1:
            raise ValueError(f"a world needs at least 1 user and 1 item, got users={users}, items={items}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        if not 1 <= n_categories <= len(CATEGORY_NAMES):
            raise ValueError(f"n_categories must be 1..{len(CATEGORY_NAMES)}, got {n_categories}")
        for name, rate in (("bot_rate", bot_rate), ("new_item_rate", new_item_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if drift_day is not None and drift_day < 0:
            raise ValueError(f"drift_day must be a 0-based day index >= 0, got {drift_day}")

        rng = np.random.default_rng([seed, 0])
        categories = CATEGORY_NAMES[:n_categories]
        new_per_day = round(new_item_rate * items)
        total_items = items + new_per_day * (days - 1)

        # Users.
        user_vectors = rng.standard_normal((users, latent_dim))
        user_affinity = AFFINITY_SCALE * rng.standard_normal((users, n_categories))
        user_favorite = rng.integers(0, n_categories, users)
        user_affinity[np.arange(users), user_favorite] += FAVORITE_BOOST
        activity = rng.lognormal(0.0, 0.8, users)
        shares = np.array([DEVICE_SHARES[d] for d in DEVICES])
        user_device = rng.choice(len(DEVICES), size=users, p=shares / shares.sum())
        bot_order = rng.permutation(users)
        user_is_bot = np.zeros(users, dtype=bool)
        user_is_bot[bot_order[: round(bot_rate * users)]] = True

        # Items: categories of uneven size, prices around the category's median.
        category_weights = rng.dirichlet(np.full(n_categories, 4.0))
        item_category = rng.choice(n_categories, size=total_items, p=category_weights)
        medians = np.array([CATEGORY_PRICE_MEDIANS[c] for c in categories])
        item_price = np.maximum(0.99, np.round(medians[item_category] * rng.lognormal(0.0, 0.5, total_items), 2))
        item_vectors = rng.standard_normal((total_items, latent_dim))
        item_quality = QUALITY_SCALE * _standardized(rng.standard_normal(total_items))
        item_intro_day = np.zeros(total_items, dtype=np.int32)
        if new_per_day:
            item_intro_day[items:] = 1 + np.arange(total_items - items) // new_per_day

        category_bias = CATEGORY_BIAS_SCALE * _standardized(rng.standard_normal(n_categories))
        shift = int(rng.integers(1, n_categories)) if n_categories > 1 else 0
        rotation, _ = np.linalg.qr(rng.standard_normal((latent_dim, latent_dim)))

        world = cls(
            seed=seed,
            start_date=start_date,
            days=days,
            n_users=users,
            n_initial_items=items,
            new_items_per_day=new_per_day,
            drift_day=drift_day,
            bot_rate=bot_rate,
            categories=categories,
            latent_dim=latent_dim,
            user_ids=[f"u{i:0{id_width(users, 6)}d}" for i in range(users)],
            item_ids=[f"i{i:0{id_width(total_items, 5)}d}" for i in range(total_items)],
            user_vectors=user_vectors,
            user_affinity=user_affinity,
            user_favorite=user_favorite,
            user_activity=activity / activity.sum(),
            user_device=user_device,
            user_is_bot=user_is_bot,
            item_category=item_category,
            item_price=item_price,
            item_vectors=item_vectors,
            item_quality=item_quality,
            item_intro_day=item_intro_day,
            category_bias=category_bias,
            drift_category_shift=shift,
            drift_rotation=rotation,
        )
        world._user_index = {u: i for i, u in enumerate(world.user_ids)}
        world._item_index = {u: i for i, u in enumerate(world.item_ids)}
        return world

    # -- lookups -------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        """All items, including those introduced on later days."""
        return len(self.item_ids)

    def user_indices(self, users: Sequence[str] | np.ndarray | int | str) -> np.ndarray:
        """Integer indices for user ids (strings) or pass integer indices through."""
        return self._indices(users, self._user_index, "user")

    def item_indices(self, items: Sequence[str] | np.ndarray | int | str) -> np.ndarray:
        """Integer indices for item ids (strings) or pass integer indices through."""
        return self._indices(items, self._item_index, "item")

    @staticmethod
    def _indices(values: Any, index: dict[str, int], kind: str) -> np.ndarray:
        array = np.asarray(values)
        if array.dtype.kind in "iu":
            return array.astype(np.int64, copy=False)
        try:
            return np.array([index[v] for v in array.ravel().tolist()], dtype=np.int64).reshape(array.shape)
        except KeyError as error:
            raise KeyError(f"unknown {kind} id {error.args[0]!r}; expected one of this world's {kind} ids") from None

    def available_items(self, day: int) -> np.ndarray:
        """Indices of the items that exist on day index ``day`` (new items appear over time)."""
        return np.flatnonzero(self.item_intro_day <= day)

    @functools.cached_property
    def _price_medians(self) -> np.ndarray:
        return np.array([CATEGORY_PRICE_MEDIANS[c] for c in self.categories])

    def is_drifted(self, day: int) -> bool:
        return self.drift_day is not None and day >= self.drift_day

    def _taste(self, day: int) -> tuple[np.ndarray, int]:
        """User vectors and category shift in force on ``day``."""
        if not self.is_drifted(day):
            return self.user_vectors, 0
        if self._drifted_vectors is None:
            self._drifted_vectors = self.user_vectors @ self.drift_rotation
        return self._drifted_vectors, self.drift_category_shift

    def favorite_category(self, users: np.ndarray, day: int) -> np.ndarray:
        """The category a user browses most on ``day`` (moves with the drift)."""
        _, shift = self._taste(day)
        return (self.user_favorite[users] - shift) % len(self.categories)

    # -- ground truth --------------------------------------------------------------------------

    def _preference(self, users: np.ndarray, items: np.ndarray, day: int) -> np.ndarray:
        """The user's (position-free) taste for the item, as a logit part shared by click and purchase."""
        _, shift = self._taste(day)
        liked_as = (self.item_category[items] + shift) % len(self.categories)
        return self.category_bias[liked_as] + self.user_affinity[users, liked_as]

    def attractiveness(self, users: Any, items: Any, day: int) -> np.ndarray:
        """P(click | examined) for a person (bots ignore it): the relevance a debiased model should learn."""
        users, items = np.broadcast_arrays(self.user_indices(users), self.item_indices(items))
        vectors, _ = self._taste(day)
        flat_users, flat_items = users.ravel(), items.ravel()
        latent = np.empty(flat_users.shape)
        for start in range(0, len(flat_users), 1 << 16):  # in blocks: the gathered vectors stay small
            block = slice(start, start + (1 << 16))
            latent[block] = np.einsum("ij,ij->i", vectors[flat_users[block]], self.item_vectors[flat_items[block]])
        latent = latent.reshape(users.shape)
        category = self.item_category[items]
        logit = (
            ATTRACTIVENESS_BASE
            + self._preference(users, items, day)
            + self.item_quality[items]
            + LATENT_SCALE * latent / math.sqrt(self.latent_dim)
            - PRICE_SENSITIVITY * np.log(self.item_price[items] / self._price_medians[category])
        )
        return _sigmoid(logit)

    @staticmethod
    def examination(positions: Any) -> np.ndarray:
        """P(a person looks at position p), p = 1..K: the position bias of the click model."""
        positions = np.asarray(positions, dtype=np.float64)
        if positions.size and positions.min() < 1:
            raise ValueError("positions are 1-based; got a position below 1")
        return positions**-EXAMINATION_POWER

    def click_probability(self, users: Any, items: Any, positions: Any, day: int) -> np.ndarray:
        """The oracle P(click) of showing ``items`` to ``users`` at ``positions`` on day index ``day``."""
        users = self.user_indices(users)
        people = self.examination(positions) * self.attractiveness(users, items, day)
        return np.where(self.user_is_bot[users], BOT_CLICK_PROBABILITY, people)

    def cart_probability(self, users: Any, items: Any, day: int) -> np.ndarray:
        """P(add to cart | click): higher for liked categories, lower for pricey items; 0 for bots."""
        users, items = np.broadcast_arrays(self.user_indices(users), self.item_indices(items))
        category = self.item_category[items]
        logit = (
            CART_BASE
            + 0.4 * self._preference(users, items, day)
            - 0.3 * np.log(self.item_price[items] / self._price_medians[category])
        )
        return np.where(self.user_is_bot[users], 0.0, _sigmoid(logit))

    def purchase_given_cart(self, items: Any) -> np.ndarray:
        """P(purchase | added to cart): cheaper items are bought more often."""
        items = self.item_indices(items)
        return _sigmoid(PURCHASE_BASE - 0.25 * np.log(self.item_price[items] / 30.0))

    def purchase_probability(self, users: Any, items: Any, day: int) -> np.ndarray:
        """The oracle P(purchase | click) (through add-to-cart); 0 for bots."""
        return self.cart_probability(users, items, day) * self.purchase_given_cart(items)

    # -- description ---------------------------------------------------------------------------

    def parameters(self) -> dict[str, Any]:
        """The arguments that rebuild this world with ``World.build(**parameters)``."""
        return {
            "users": self.n_users,
            "items": self.n_initial_items,
            "seed": self.seed,
            "start_date": self.start_date.isoformat(),
            "days": self.days,
            "drift_day": self.drift_day,
            "bot_rate": self.bot_rate,
            "new_item_rate": self.new_items_per_day / self.n_initial_items,
            "n_categories": len(self.categories),
            "latent_dim": self.latent_dim,
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for truth/world.json: parameters, catalogue, bots, drift."""
        return {
            "parameters": self.parameters(),
            "categories": list(self.categories),
            "click_model": {
                "kind": "position-based",
                "examination": f"position ** -{EXAMINATION_POWER}",
                "bot_click_probability": BOT_CLICK_PROBABILITY,
            },
            "drift": {
                "drift_day": self.drift_day,
                "drift_date": None
                if self.drift_day is None
                else date.fromordinal(self.start_date.toordinal() + self.drift_day).isoformat(),
                "category_shift": self.drift_category_shift,
            },
            "bot_user_ids": [u for u, bot in zip(self.user_ids, self.user_is_bot.tolist(), strict=True) if bot],
            "items": [
                {"item_id": item_id, "category": self.categories[c], "price": price, "intro_day": intro}
                for item_id, c, price, intro in zip(
                    self.item_ids,
                    self.item_category.tolist(),
                    self.item_price.tolist(),
                    self.item_intro_day.tolist(),
                    strict=True,
                )
            ],
        }
