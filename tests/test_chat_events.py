"""The pure parts of real-time Chat → Discourse (issue 15): parsing events, planning subscriptions.

The I/O (keeper, puller, handlers) is tested against the emulators in `tests/e2e/test_events.py`.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chat_events import (
    ACTIVE,
    EXPIRED,
    FAILED,
    PENDING,
    SUSPENDED,
    Create,
    Lifecycle,
    Reactivate,
    Remove,
    Renew,
    Replay,
    SpaceEvents,
    Unusable,
    parse_message,
    plan_subscriptions,
    renew_at,
    retry_at,
)
from db import ChatSubscriptionState
from google_events_client import PubSubMessage

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MESSAGE = {
    "name": "spaces/AAA/messages/m1",
    "createTime": "2026-12-01T11:59:59.000001Z",
    "text": "hello",
    "formattedText": "hello",
    "sender": {"name": "users/1", "type": "HUMAN"},
    "thread": {"name": "spaces/AAA/threads/t1"},
}


def received(
    event_type: str | None, data: Any, *, attributes: dict[str, str] | None = None
) -> PubSubMessage:
    attrs = dict(attributes or {})
    if event_type is not None:
        attrs.setdefault("ce-type", event_type)
        attrs.setdefault("ce-time", "2026-12-01T12:00:00Z")
        attrs.setdefault("ce-id", "e1")
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return PubSubMessage.from_api(
        {
            "ackId": "a1",
            "message": {
                "data": base64.b64encode(raw).decode(),
                "attributes": attrs,
                "messageId": "1",
                "publishTime": "2026-12-01T12:00:00.5Z",
            },
        }
    )


def test_a_created_message_event_names_its_space_and_message() -> None:
    parsed = parse_message(
        received("google.workspace.chat.message.v1.created", {"message": MESSAGE})
    )
    assert isinstance(parsed, SpaceEvents)
    assert parsed.space_name == "spaces/AAA"
    assert [e.kind for e in parsed.events] == ["created"]
    assert parsed.events[0].message.name == "spaces/AAA/messages/m1"
    assert parsed.events[0].event_time == NOW


def test_a_deleted_message_event_is_a_tombstone() -> None:
    data = {"message": {"name": MESSAGE["name"], "createTime": MESSAGE["createTime"]}}
    parsed = parse_message(received("google.workspace.chat.message.v1.deleted", data))
    assert isinstance(parsed, SpaceEvents)
    assert parsed.events[0].message.delete_time == NOW


def test_a_batch_event_brings_every_message() -> None:
    other = dict(MESSAGE, name="spaces/AAA/messages/m2")
    data = {"messages": [{"message": MESSAGE}, {"message": other}]}
    parsed = parse_message(received("google.workspace.chat.message.v1.batchCreated", data))
    assert isinstance(parsed, SpaceEvents)
    assert [e.message.name for e in parsed.events] == [MESSAGE["name"], other["name"]]


@pytest.mark.parametrize(
    ("event_type", "data", "reason"),
    [
        (None, {"message": MESSAGE}, "no ce-type"),
        ("google.workspace.chat.message.v1.created", b"\xff\xfe", "not JSON"),
        ("google.workspace.chat.message.v1.created", b"{not json", "not JSON"),
        ("google.workspace.chat.message.v1.created", [1, 2], "not a JSON object"),
        ("google.workspace.chat.message.v1.created", {}, "no message"),
        ("google.workspace.chat.message.v1.created", {"message": {"text": "x"}}, "no message"),
        ("google.workspace.chat.reaction.v1.created", {"reaction": {}}, "not a message event"),
        ("com.example.unknown", {}, "not a message event"),
        (
            "google.workspace.chat.message.v1.batchCreated",
            {
                "messages": [
                    {"message": MESSAGE},
                    {"message": dict(MESSAGE, name="spaces/BBB/messages/m9")},
                ]
            },
            "not of one space",
        ),
        ("google.workspace.events.subscription.v1.suspended", {}, "names no subscription"),
    ],
)
def test_unusable_events_say_why(event_type: str | None, data: Any, reason: str) -> None:
    parsed = parse_message(received(event_type, data))
    assert isinstance(parsed, Unusable)
    assert reason in parsed.reason


def test_lifecycle_events_name_their_subscription() -> None:
    sub = {
        "name": "subscriptions/s1",
        "targetResource": "//chat.googleapis.com/spaces/AAA",
        "state": "SUSPENDED",
        "suspensionReason": "USER_AUTHORIZATION_FAILURE",
    }
    parsed = parse_message(
        received("google.workspace.events.subscription.v1.suspended", {"subscription": sub})
    )
    assert isinstance(parsed, Lifecycle)
    assert (parsed.kind, parsed.subscription_name) == ("suspended", "subscriptions/s1")
    assert parsed.subscription is not None
    assert parsed.subscription.suspension_reason == "USER_AUTHORIZATION_FAILURE"
    # Without the resource, the CloudEvent's source names it.
    bare = parse_message(
        received(
            "google.workspace.events.subscription.v1.expired",
            {},
            attributes={"ce-source": "//workspaceevents.googleapis.com/subscriptions/s2"},
        )
    )
    assert isinstance(bare, Lifecycle)
    assert (bare.kind, bare.subscription_name) == ("expired", "subscriptions/s2")


# -- subscription planning


def state(space: str = "spaces/AAA", **kw: Any) -> ChatSubscriptionState:
    values: dict[str, Any] = {
        "gchat_space_name": space,
        "state": ACTIVE,
        "subscription_name": "subscriptions/s1",
        "expire_time": NOW + timedelta(hours=4),
        "next_attempt_at": NOW + timedelta(hours=2),
    }
    values.update(kw)
    return ChatSubscriptionState(**values)


@pytest.mark.parametrize(
    ("known", "expected"),
    [
        ([], [Create("spaces/AAA", replay=False)]),
        ([state()], []),
        ([state(replay_due=True)], [Replay(state(replay_due=True))]),
        ([state(next_attempt_at=NOW)], [Renew(state(next_attempt_at=NOW))]),
        (
            [state(expire_time=NOW - timedelta(seconds=1))],
            [Create("spaces/AAA", replay=True)],
        ),
        (
            [state(state=SUSPENDED, next_attempt_at=NOW)],
            [Reactivate(state(state=SUSPENDED, next_attempt_at=NOW))],
        ),
        ([state(state=SUSPENDED, next_attempt_at=NOW + timedelta(seconds=5))], []),
        (
            [state(state=EXPIRED, replay_due=True, next_attempt_at=None)],
            [Create("spaces/AAA", replay=True)],
        ),
        ([state(state=PENDING, next_attempt_at=None)], [Create("spaces/AAA", replay=False)]),
        ([state(state=FAILED, next_attempt_at=NOW + timedelta(minutes=1))], []),
        ([state(state=FAILED, next_attempt_at=NOW)], [Create("spaces/AAA", replay=False)]),
    ],
)
def test_plan_subscriptions(known: list[ChatSubscriptionState], expected: list[object]) -> None:
    assert plan_subscriptions({"spaces/AAA"}, known, NOW) == expected


def test_a_space_no_longer_mapped_loses_its_subscription() -> None:
    gone = state("spaces/OLD")
    assert plan_subscriptions({"spaces/AAA"}, [gone, state()], NOW) == [Remove(gone)]


def test_renewal_at_half_the_remaining_life_and_retries_back_off_to_a_ceiling() -> None:
    assert renew_at(NOW + timedelta(hours=4), NOW) == NOW + timedelta(hours=2)
    assert renew_at(None, NOW) is None
    ceiling = timedelta(seconds=30)
    delays = [retry_at(n, NOW, ceiling) - NOW for n in range(1, 7)]
    assert delays == [timedelta(seconds=s) for s in (2, 4, 8, 16, 30, 30)]
