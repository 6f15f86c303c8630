"""All Feast objects of the repository, built for one offline location.

The objects are built fresh on every call: Feast's ``plan``/``apply`` run inference on the objects
they are given and mutate them, so one set must never be planned or applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from feast import Entity, FeatureService, FeatureView, RequestSource
from feast.feature_view import DUMMY_ENTITY
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.project import Project
from feast.repo_contents import RepoContents

from feature_repo.entities import item_entity, user_entity
from feature_repo.services import ctr_ranker_v1
from feature_repo.sources import OfflineLocation, ranking_request
from feature_repo.views import item_features_view, request_features_view, user_features_view


@dataclass(frozen=True)
class RepoDefinitions:
    """The repository's objects; ``objects`` for ``FeatureStore.apply``, ``contents`` for ``plan``."""

    user: Entity
    item: Entity
    user_view: FeatureView
    item_view: FeatureView
    request: RequestSource
    request_view: OnDemandFeatureView
    services: tuple[FeatureService, ...]

    @property
    def objects(self) -> list:
        return [
            self.user,
            self.item,
            self.user_view.batch_source,
            self.item_view.batch_source,
            self.user_view,
            self.item_view,
            self.request_view,
            *self.services,
        ]

    def contents(self, project: str) -> RepoContents:
        """The desired state of ``project``, as the Feast CLI would parse it from this repository."""
        return RepoContents(
            projects=[Project(name=project, description="Loopline: the CTR ranker's features")],
            # FeatureStore.apply also registers the request source and Feast's placeholder entity
            # for entityless views; list them so that a plan after an apply shows no changes.
            data_sources=[self.user_view.batch_source, self.item_view.batch_source, self.request],
            entities=[self.user, self.item, DUMMY_ENTITY],
            feature_views=[self.user_view, self.item_view],
            on_demand_feature_views=[self.request_view],
            stream_feature_views=[],
            label_views=[],
            feature_services=list(self.services),
            permissions=[],
        )


def build_definitions(location: OfflineLocation) -> RepoDefinitions:
    """Every entity, source, view and service of the repository, reading batch data from ``location``."""
    user, item = user_entity(), item_entity()
    user_view = user_features_view(user, location)
    item_view = item_features_view(item, location)
    request = ranking_request()
    request_view = request_features_view(user, item, user_view, item_view, request)
    return RepoDefinitions(
        user=user,
        item=item,
        user_view=user_view,
        item_view=item_view,
        request=request,
        request_view=request_view,
        services=(ctr_ranker_v1(user_view, item_view, request_view),),
    )
