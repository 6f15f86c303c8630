"""Feature services: one per model version, listing exactly the features that model reads.

Training (``loopline.features.training_set``) and serving (``loopline.features.online``) both go
through the service, so a model never sees a feature it was not trained on. Changing the inputs
of the model means a new service (``ctr_ranker_v2``) next to this one, never an edit of v1.
"""

from __future__ import annotations

from feast import FeatureService, FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView

CTR_RANKER_V1 = "ctr_ranker_v1"

CTR_RANKER_V1_USER_FEATURES = (
    "user_ctr_1d",
    "user_ctr_7d",
    "user_ctr_28d",
    "user_impressions_7d",
    "user_impressions_28d",
    "user_clicks_28d",
    "user_purchases_28d",
    "user_sessions_7d",
    "user_hours_since_last_event",
    "user_hours_since_last_click",
    "user_top_category_share_28d",
)
CTR_RANKER_V1_ITEM_FEATURES = (
    "item_category",
    "item_ctr_1d",
    "item_ctr_7d",
    "item_ctr_28d",
    "item_impressions_7d",
    "item_impressions_28d",
    "item_purchases_28d",
    "item_hours_since_last_event",
    "item_avg_price_28d",
    "item_category_ctr_28d",
    "item_price_to_category_avg_28d",
)
# Not position_discount: the model takes the logged slot through its own position-bias term
# (models/ctr_ranker.yaml) and serves at a fixed reference slot, so a slot feature would be noise.
CTR_RANKER_V1_REQUEST_FEATURES = (
    "hour_of_day",
    "user_item_category_match",
    "user_item_category_affinity",
)


def ctr_ranker_v1(user_view: FeatureView, item_view: FeatureView, request_view: OnDemandFeatureView) -> FeatureService:
    """The inputs of CTR ranker v1: user and item snapshot features plus the request features."""
    return FeatureService(
        name=CTR_RANKER_V1,
        features=[
            user_view[list(CTR_RANKER_V1_USER_FEATURES)],
            item_view[list(CTR_RANKER_V1_ITEM_FEATURES)],
            request_view[list(CTR_RANKER_V1_REQUEST_FEATURES)],
        ],
        description="Inputs of the CTR ranker, model version 1 (loopline-ctr).",
        tags={"model": "loopline-ctr", "feature_service_version": "1"},
    )
