"""Entities: the user and the item of an impression, keyed by the ids the events carry."""

from __future__ import annotations

from feast import Entity, ValueType

USER_JOIN_KEY = "user_id"
ITEM_JOIN_KEY = "item_id"


def user_entity() -> Entity:
    """The user an impression was shown to (``user_id`` of schema v1, pseudonymized upstream)."""
    return Entity(
        name="user",
        join_keys=[USER_JOIN_KEY],
        value_type=ValueType.STRING,
        description="A user of the shop; user_id as in the events (schema v1).",
    )


def item_entity() -> Entity:
    """The item shown in an impression."""
    return Entity(
        name="item",
        join_keys=[ITEM_JOIN_KEY],
        value_type=ValueType.STRING,
        description="A catalog item; item_id as in the events (schema v1).",
    )
