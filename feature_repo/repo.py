"""Entry point for the Feast CLI: the repository's objects for the active Loopline profile.

``loopline.features`` never imports this file; it builds the same objects itself. The Feast CLI
imports each module of a repository and collects the Feast objects defined at module level, so this
module builds them from the LOOPLINE_* settings. Render the profile's configuration first
(it holds the stack's secrets, so it is written owner-readable under LOOPLINE_HOME):

    python -c "from loopline.features import write_feature_store_yaml as w; print(w())"
    feast -c feature_repo -f var/feast/feature_store.yaml plan      # ~10 s, mostly imports
"""

from loopline.features import repo_definitions

_definitions = repo_definitions()

user = _definitions.user
item = _definitions.item
user_features_source = _definitions.user_view.batch_source
item_features_source = _definitions.item_view.batch_source
user_features = _definitions.user_view
item_features = _definitions.item_view
request_features = _definitions.request_view
ctr_ranker_v1 = _definitions.services[0]
