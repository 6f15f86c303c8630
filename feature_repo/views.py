"""Feature views over the daily snapshot marts, and the on-demand request features.

Feature names carry their entity (``user_ctr_7d``, ``item_ctr_7d``): the marts share column names,
and globally unique names let training and serving use plain names with no view prefixes. The
sources' ``field_mapping`` renames the mart columns.

TTL (``SNAPSHOT_TTL``, 2 days): a snapshot is stamped at midnight after its day, so the freshest
snapshot an impression can see is at most 24 h old. A TTL of 2 days accepts one late or failed daily
run (its previous snapshot is then up to 48 h old) and reports anything older as missing (NaN)
instead of silently serving week-old values. Users and items active in the last 28 days have a
snapshot every day, so the TTL only blanks entities after a pipeline outage, not quiet ones.
"""

from __future__ import annotations

import types
from datetime import timedelta

from feast import Entity, FeatureView, Field, RequestSource
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import FeastType, Float64, Int64, String

from feature_repo.sources import ITEM_MART, USER_MART, OfflineLocation, mart_source

SNAPSHOT_TTL = timedelta(days=2)
USER_VIEW = "user_features"
ITEM_VIEW = "item_features"
REQUEST_VIEW = "request_features"
USER_PREFIX = "user_"
ITEM_PREFIX = "item_"


# Mart column -> feature type (dbt/models/marts/*.sql); feature name = prefix + column. The views
# carry the columns some FeatureService reads (ctr_ranker_v1 and the inputs of request_features),
# not every mart column: Feast's online stores read and write every feature of a view, so unused
# ones would only slow materialization and lookups. To serve another mart column, add it here.
USER_COLUMNS: dict[str, FeastType] = {
    "ctr_1d": Float64,
    "ctr_7d": Float64,
    "ctr_28d": Float64,
    "impressions_7d": Int64,
    "impressions_28d": Int64,
    "clicks_28d": Int64,
    "purchases_28d": Int64,
    "sessions_7d": Int64,
    "hours_since_last_event": Float64,
    "hours_since_last_click": Float64,
    "top_category_28d": String,
    "top_category_share_28d": Float64,
}
ITEM_COLUMNS: dict[str, FeastType] = {
    "category": String,
    "ctr_1d": Float64,
    "ctr_7d": Float64,
    "ctr_28d": Float64,
    "impressions_7d": Int64,
    "impressions_28d": Int64,
    "purchases_28d": Int64,
    "hours_since_last_event": Float64,
    "avg_price_28d": Float64,
    "category_ctr_28d": Float64,
    "price_to_category_avg_28d": Float64,
}


def field_mapping(prefix: str, columns: dict[str, FeastType]) -> dict[str, str]:
    """Mart column -> feature name."""
    return {column: prefix + column for column in columns}


def _view(name: str, entity: Entity, join_key: str, prefix: str, columns: dict[str, FeastType], source) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=SNAPSHOT_TTL,
        source=source,
        schema=[Field(name=join_key, dtype=String)]
        + [Field(name=prefix + column, dtype=dtype) for column, dtype in columns.items()],
        online=True,
        description=f"Daily snapshots of the dbt mart {source.name.removesuffix('_source')}, valid for {SNAPSHOT_TTL}.",
        tags={"mart": source.name.removesuffix("_source"), "cadence": "daily"},
    )


def user_features_view(user: Entity, location: OfflineLocation) -> FeatureView:
    """Per-user daily snapshot features (counts, smoothed CTR, recency, category affinity, prices)."""
    source = mart_source(USER_MART, location, field_mapping(USER_PREFIX, USER_COLUMNS))
    return _view(USER_VIEW, user, user.join_key, USER_PREFIX, USER_COLUMNS, source)


def item_features_view(item: Entity, location: OfflineLocation) -> FeatureView:
    """Per-item daily snapshot features (counts, smoothed CTR, recency, category, prices)."""
    source = mart_source(ITEM_MART, location, field_mapping(ITEM_PREFIX, ITEM_COLUMNS))
    return _view(ITEM_VIEW, item, item.join_key, ITEM_PREFIX, ITEM_COLUMNS, source)


def request_features(inputs: dict) -> dict:
    """Request-time features of (user, item, slot, time); the same code runs in training and serving.

    - ``position_discount``: 1 / log2(position + 2), the DCG exposure prior of the slot (1.0 at the top).
    - ``hour_of_day``: hour (UTC) of the request or impression.
    - ``user_item_category_match``: 1 if the item's category is the user's top category of 28 days.
    - ``user_item_category_affinity``: the user's engagement share in that category if it matches, else 0.

    Missing inputs give None (NaN in training): an unknown user or item has no affinity, not zero.
    Feast stores this function's source in the registry and runs it without this module's globals,
    so every import is inside it.
    """
    import math
    from datetime import UTC

    def missing(value) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    def discount(position):
        return None if missing(position) or position < 0 else 1.0 / math.log2(position + 2)

    def hour(at):
        return None if missing(at) else (at if at.tzinfo is None else at.astimezone(UTC)).hour

    # A request's rows share their slot and time (and a training set repeats them): each distinct
    # value is computed once (a missing one gives None either way).
    discount_of, hour_of = {}, {}
    discounts, hours, matches, affinities = [], [], [], []
    for position, at, top_category, share, category in zip(
        inputs["position"],
        inputs["request_at"],
        inputs["user_top_category_28d"],
        inputs["user_top_category_share_28d"],
        inputs["item_category"],
        strict=True,
    ):
        if position not in discount_of:
            discount_of[position] = discount(position)
        discounts.append(discount_of[position])
        if at not in hour_of:
            hour_of[at] = hour(at)
        hours.append(hour_of[at])
        if missing(share) or missing(category):
            matches.append(None)
            affinities.append(None)
        elif top_category == category and not missing(top_category):
            matches.append(1)
            affinities.append(float(share))
        else:
            matches.append(0)
            affinities.append(0.0)
    return {
        "position_discount": discounts,
        "hour_of_day": hours,
        "user_item_category_match": matches,
        "user_item_category_affinity": affinities,
    }


REQUEST_FEATURES: dict[str, FeastType] = {
    "position_discount": Float64,
    "hour_of_day": Int64,
    "user_item_category_match": Int64,
    "user_item_category_affinity": Float64,
}


def request_features_view(
    user: Entity, item: Entity, user_view: FeatureView, item_view: FeatureView, request: RequestSource
) -> OnDemandFeatureView:
    """The on-demand view computing ``request_features`` (Python mode: no pandas on the serving path)."""
    decorate = on_demand_feature_view(
        name=REQUEST_VIEW,
        entities=[user, item],
        sources=[
            user_view[[f"{USER_PREFIX}top_category_28d", f"{USER_PREFIX}top_category_share_28d"]],
            item_view[[f"{ITEM_PREFIX}category"]],
            request,
        ],
        schema=[Field(name=name, dtype=dtype) for name, dtype in REQUEST_FEATURES.items()],
        mode="python",
        description="Slot, hour and user x item category affinity, computed per request.",
    )
    # The decorator re-homes the function it is given to ``__main__`` (so the registry pickles it by
    # value); give it a copy, keeping this module's function and its source lookup intact.
    udf = types.FunctionType(request_features.__code__, request_features.__globals__, request_features.__name__)
    udf.__doc__ = request_features.__doc__
    return decorate(udf)
