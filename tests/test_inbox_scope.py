"""Scope at intake (issue 17, Build 4): what the inbox refuses to store, decided without a request.

The rule is pure (`inbox.refusal`, `inbox.post_refusal`) over the category map that the config
and the store give (`inbox.mapped_categories`); `Inbox.put_webhook` applies it before writing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from config_loader import SpaceMapping
from db import Store
from inbox import Inbox, Intake, Scope, mapped_categories, parse_webhook, post_refusal

SPACE = "spaces/AAA"
CHILD_SPACE = "spaces/CCC"
MAPPINGS = (
    SpaceMapping(SPACE, discourse_category_id=3),
    SpaceMapping(CHILD_SPACE, discourse_parent_category_id=5),
    SpaceMapping("spaces/DM1"),
)


@pytest.fixture
def store() -> Store:
    store = Store(":memory:")
    store.set_category_for_space(CHILD_SPACE, 6)  # the subcategory the bridge created
    store.link_dm_channel("spaces/DM1", 40)
    return store


def post_body(category_id: int | None, archetype: str = "regular", **kw: Any) -> dict[str, Any]:
    post = {
        "id": 20, "topic_id": 9, "post_number": 2, "username": "dora", "raw": "words",
        "created_at": "2026-01-01T00:00:00Z", "category_id": category_id,
        "topic_archetype": archetype, **kw,
    }  # fmt: skip
    return {"post": post}


def topic_body(category_id: int | None, archetype: str = "regular") -> dict[str, Any]:
    return {"topic": {"id": 9, "title": "A title", "category_id": category_id,
                      "archetype": archetype}}  # fmt: skip


def chat_body(channel_id: int) -> dict[str, Any]:
    message = {"id": 7, "message": "hi", "created_at": "2026-01-01T00:00:00Z",
               "user": {"id": 2, "username": "dora", "name": "Dora"}}  # fmt: skip
    return {"chat_message": {"message": message, "channel": {"id": channel_id}}}


def test_the_category_map_is_config_and_store(store: Store) -> None:
    assert mapped_categories(MAPPINGS, store) == {3: SPACE, 6: CHILD_SPACE}


CASES = [
    ("post in a mapped category", "post_created", post_body(3), None),
    ("post in the bridge's subcategory", "post_edited", post_body(6), None),
    ("post in an unmapped category", "post_created", post_body(77), "category 77 is not mapped"),
    ("post of a topic moved to an unmapped category", "post_edited", post_body(5),
     "category 5 is not mapped"),
    ("deletion in an unmapped category", "post_destroyed", post_body(77),
     "category 77 is not mapped"),
    ("private message", "post_created", post_body(None, "private_message"), "private message"),
    ("post without a category", "post_created", post_body(None), "category None is not mapped"),
    ("topic in a mapped category", "topic_edited", topic_body(3), None),
    ("topic in an unmapped category", "topic_edited", topic_body(77),
     "category 77 is not mapped"),
    ("private topic", "topic_created", topic_body(None, "private_message"), "private message"),
    ("message of a linked DM channel", "chat_message_created", chat_body(40), None),
    ("message of another channel", "chat_message_created", chat_body(41),
     "chat channel 41 is not linked to a Chat DM"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("event_name", "body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refusals(
    store: Store, event_name: str, body: dict[str, Any], expected: str | None
) -> None:
    assert Scope(MAPPINGS, store).refusal(parse_webhook(event_name, body).event) == expected


def test_the_pull_applies_the_same_rule(store: Store) -> None:
    categories = mapped_categories(MAPPINGS, store)
    for _case, event_name, body, expected in CASES:
        if event_name.startswith("post_"):
            post = parse_webhook(event_name, body).event.post  # type: ignore[union-attr]
            assert post_refusal(post, categories) == expected


def test_an_out_of_scope_delivery_is_never_written(store: Store) -> None:
    inbox = Inbox(store, scope=Scope(MAPPINGS, store))
    for event_name, body in [
        ("post_created", post_body(None, "private_message", raw="PM words")),
        ("post_created", post_body(77, raw="unmapped words")),
        ("chat_message_created", chat_body(41)),
    ]:
        parsed = parse_webhook(event_name, body)
        intake = inbox.put_webhook(
            parsed, raw_body=json.dumps(body), event_id="1", event_type=event_name.split("_")[0]
        )
        assert intake == Intake.IGNORED
    assert store.inbox_depth() == 0 and not inbox.wake.is_set()
    body = post_body(3)
    assert inbox.put_webhook(
        parse_webhook("post_created", body), raw_body=json.dumps(body), event_id="2",
        event_type="post",
    ) == Intake.QUEUED  # fmt: skip
    assert store.inbox_depth() == 1
