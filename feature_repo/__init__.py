"""Loopline's Feast feature repository: the CTR ranker's features over the dbt marts.

Layout (Feast's "structuring repos" guide): ``entities`` (user, item), ``sources`` (the marts as
batch sources, the ranking request), ``views`` (feature views with TTLs and the on-demand request
features), ``services`` (one FeatureService per model version), ``definitions`` (everything built
for one offline location). Nothing here reads settings or touches a store: ``loopline.features``
builds the definitions for the active profile and applies them; ``repo.py`` does the same for the
Feast CLI. The ``feature_store.<profile>.yaml`` files are templates rendered by ``loopline.features``.
"""
