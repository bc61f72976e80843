"""The Pub/Sub emulator through the real googleapiclient (bundled pubsub v1 discovery doc with its
rootUrl rewritten), the control API through `PubSubControl`.

Most tests freeze the emulator's `monotonic` clock (`FakeClock`), so ack deadlines pass only when
a test says so; the long-poll hold of a pull is real time and kept short (`pull_wait_seconds`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httplib2
import pytest
import requests
from google.oauth2.credentials import Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build, build_from_document
from googleapiclient.errors import HttpError

from emulators.pubsub import (
    ROUTES,
    SCOPE_CLOUD_PLATFORM,
    SCOPE_PUBSUB,
    PubSubDenied,
    PubSubEmulator,
    PubSubInvalid,
    PubSubNotFound,
    PubSubState,
    create_app,
    load_discovery,
)
from tests.e2e.harness import wait_for

JSON = dict[str, Any]

PROJECT = "bridge-test"
OTHER_PROJECT = "someone-else"
TOPIC = f"projects/{PROJECT}/topics/chat-events"
SUB = f"projects/{PROJECT}/subscriptions/bridge-sub"
ALICE = "user:alice@example.com"  # owns PROJECT
BOB = "user:bob@example.com"  # no grant anywhere unless a test gives one
CAROL = "user:carol@example.com"  # project editor
CHAT_SA = "serviceAccount:chat-api-push@system.gserviceaccount.com"  # Google Chat publishes
TOKENS: dict[str, tuple[str, frozenset[str]]] = {
    "alice-token": (ALICE, frozenset({SCOPE_PUBSUB})),
    "bob-token": (BOB, frozenset({SCOPE_CLOUD_PLATFORM})),
    "carol-token": (CAROL, frozenset({SCOPE_PUBSUB})),
    "narrow-token": (ALICE, frozenset({"https://www.googleapis.com/auth/chat.messages"})),
}
SHARED_SPEC = Path("/work/shared/specs/pubsub.v1.json")


def authenticate(token: str) -> tuple[str, frozenset[str]] | None:
    return TOKENS.get(token)


class FakeClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[PubSubEmulator]:
    emulator = PubSubEmulator.start(authenticate=authenticate, monotonic=clock)
    emulator.control.add_project(PROJECT, owners=[ALICE], bindings={"roles/editor": [CAROL]})
    emulator.control.set_config(pull_wait_seconds=0.2)
    yield emulator
    emulator.stop()
    emulator.check_errors()


def service(emu: PubSubEmulator, token: str = "alice-token") -> Any:
    """`pubsub.projects()` of a googleapiclient service authorised with `token` (no refresh)."""
    http = AuthorizedHttp(
        Credentials(token=token), http=httplib2.Http(timeout=30), refresh_status_codes=()
    )
    return build_from_document(emu.discovery_document(), http=http).projects()


@pytest.fixture
def ps(emu: PubSubEmulator) -> Any:
    return service(emu)


# --------------------------------------------------------------------------- helpers
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def setup(ps: Any, *, ordering: bool = False, deadline: int | None = None) -> None:
    ps.topics().create(name=TOPIC, body={}).execute()
    body: JSON = {"topic": TOPIC}
    if ordering:
        body["enableMessageOrdering"] = True
    if deadline is not None:
        body["ackDeadlineSeconds"] = deadline
    ps.subscriptions().create(name=SUB, body=body).execute()


def publish(ps: Any, *payloads: str, key: str = "") -> list[str]:
    messages = []
    for payload in payloads:
        message: JSON = {"data": b64(payload.encode())}
        if key:
            message["orderingKey"] = key
        messages.append(message)
    return list(
        ps.topics().publish(topic=TOPIC, body={"messages": messages}).execute()["messageIds"]
    )


def pull(ps: Any, max_messages: int = 10, *, immediately: bool = True) -> list[JSON]:
    body = {"maxMessages": max_messages, "returnImmediately": immediately}
    resp = ps.subscriptions().pull(subscription=SUB, body=body).execute()
    return list(resp.get("receivedMessages", []))


def texts(received: list[JSON]) -> list[str]:
    return [base64.b64decode(r["message"].get("data", "")).decode() for r in received]


def ack(ps: Any, *ack_ids: str) -> None:
    ps.subscriptions().acknowledge(subscription=SUB, body={"ackIds": list(ack_ids)}).execute()


def modack(ps: Any, seconds: int, *ack_ids: str) -> None:
    body = {"ackIds": list(ack_ids), "ackDeadlineSeconds": seconds}
    ps.subscriptions().modifyAckDeadline(subscription=SUB, body=body).execute()


def error(call: Any) -> tuple[int, str, str]:
    """(HTTP status, google.rpc status, message) of a call that must fail."""
    with pytest.raises(HttpError) as info:
        call.execute()
    body = json.loads(info.value.content)["error"]
    assert set(body) <= {"code", "message", "status", "details"}
    assert body["code"] == info.value.status_code
    return info.value.status_code, body["status"], body["message"]


def sub_counts(emu: PubSubEmulator) -> JSON:
    return dict(next(s for s in emu.control.state()["subscriptions"] if s["name"] == SUB))


def assert_schema(obj: Any, schema: str) -> None:
    """Every key of `obj` is a field of the discovery schema (recursively for $ref fields)."""
    props = load_discovery()["schemas"][schema].get("properties", {})
    assert isinstance(obj, dict)
    for key, value in obj.items():
        assert key in props, f"{key!r} is not a field of {schema}"
        spec = props[key]
        if "$ref" in spec and isinstance(value, dict):
            assert_schema(value, spec["$ref"])
        if spec.get("type") == "array" and "$ref" in spec.get("items", {}):
            for item in value:
                assert_schema(item, spec["items"]["$ref"])


# --------------------------------------------------------------------------- topics, subs
def test_topic_and_subscription_crud(emu: PubSubEmulator, ps: Any) -> None:
    topic = ps.topics().create(name=TOPIC, body={"labels": {"team": "bridge"}}).execute()
    assert topic == {"name": TOPIC, "labels": {"team": "bridge"}}
    assert_schema(topic, "Topic")
    assert ps.topics().get(topic=TOPIC).execute()["name"] == TOPIC
    assert error(ps.topics().create(name=TOPIC, body={})) == (
        409,
        "ALREADY_EXISTS",
        "Resource already exists in the project (resource=chat-events).",
    )

    sub = ps.subscriptions().create(name=SUB, body={"topic": TOPIC}).execute()
    assert_schema(sub, "Subscription")
    assert sub["name"] == SUB and sub["topic"] == TOPIC
    assert sub["ackDeadlineSeconds"] == 10 and "enableMessageOrdering" not in sub
    assert ps.subscriptions().get(subscription=SUB).execute() == sub
    assert error(ps.subscriptions().create(name=SUB, body={"topic": TOPIC}))[:2] == (
        409,
        "ALREADY_EXISTS",
    )
    missing_topic = f"projects/{PROJECT}/topics/nothing-here"
    other = f"projects/{PROJECT}/subscriptions/other-sub"
    assert error(ps.subscriptions().create(name=other, body={"topic": missing_topic})) == (
        404,
        "NOT_FOUND",
        "Resource not found (resource=nothing-here).",
    )
    assert error(ps.subscriptions().create(name=other, body={}))[:2] == (400, "INVALID_ARGUMENT")

    # Deleting the topic keeps the subscription, detached (discovery doc, topics.delete).
    assert ps.topics().delete(topic=TOPIC).execute() == {}
    assert error(ps.topics().get(topic=TOPIC))[:2] == (404, "NOT_FOUND")
    assert ps.subscriptions().get(subscription=SUB).execute()["topic"] == "_deleted-topic_"
    assert ps.subscriptions().delete(subscription=SUB).execute() == {}
    assert error(ps.subscriptions().get(subscription=SUB)) == (
        404,
        "NOT_FOUND",
        "Resource not found (resource=bridge-sub).",
    )
    body = {"maxMessages": 1, "returnImmediately": True}
    assert error(ps.subscriptions().pull(subscription=SUB, body=body))[:2] == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    "resource_id",
    ["ab", "1topic", "goog-topic", "Google-ish", "has space", "tópico", "a" * 256, "semi;colon"],
)
def test_resource_names_follow_pubsub_rules(ps: Any, resource_id: str) -> None:
    status = error(ps.topics().create(name=f"projects/{PROJECT}/topics/{resource_id}", body={}))
    assert status[:2] == (400, "INVALID_ARGUMENT")
    assert status[2].startswith("Invalid resource name given (name=")
    sub_name = f"projects/{PROJECT}/subscriptions/{resource_id}"
    assert error(ps.subscriptions().create(name=sub_name, body={"topic": TOPIC}))[0] == 400


def test_resource_names_accept_every_allowed_character(ps: Any) -> None:
    name = f"projects/{PROJECT}/topics/Ab9.-_~+" + "x" * 247  # 255 characters
    assert ps.topics().create(name=name, body={}).execute()["name"] == name


def test_unknown_project_is_404(ps: Any) -> None:
    status, rpc_status, message = error(
        ps.topics().create(name="projects/no-such-project/topics/chat-events", body={})
    )
    assert (status, rpc_status) == (404, "NOT_FOUND")
    assert message.startswith("Requested project not found or user does not have access to it")
    assert (
        error(ps.subscriptions().get(subscription="projects/nope-nope/subscriptions/abc"))[0]
        == 404
    )


def test_unknown_json_fields_are_refused(ps: Any) -> None:
    status = error(ps.topics().create(name=TOPIC, body={"colour": "blue"}))
    assert status == (
        400,
        "INVALID_ARGUMENT",
        'Invalid JSON payload received. Unknown name "colour": Cannot find field.',
    )
    setup(ps)
    bad = {"messages": [{"data": b64(b"x"), "extra": 1}]}
    assert "at 'messages[0]'" in error(ps.topics().publish(topic=TOPIC, body=bad))[2]


def test_unmodelled_subscription_features_are_refused_loudly(ps: Any) -> None:
    ps.topics().create(name=TOPIC, body={}).execute()
    for extra in (
        {"pushConfig": {"pushEndpoint": "https://example.com/push"}},
        {"enableExactlyOnceDelivery": True},
        {"filter": 'attributes.kind = "x"'},
    ):
        body = {"topic": TOPIC, **extra}
        assert error(ps.subscriptions().create(name=SUB, body=body))[:2] == (501, "UNIMPLEMENTED")


# --------------------------------------------------------------------------- publish and pull
def test_publish_pull_ack(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    body = {
        "messages": [
            {"data": b64(b"hello"), "attributes": {"ce-type": "created"}},
            {"attributes": {"only": "attributes"}},
        ]
    }
    ids = ps.topics().publish(topic=TOPIC, body=body).execute()["messageIds"]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(i.isdigit() for i in ids)

    resp = ps.subscriptions().pull(subscription=SUB, body={"maxMessages": 10}).execute()
    assert_schema(resp, "PullResponse")
    received = resp["receivedMessages"]
    first, second = (r["message"] for r in received)
    assert first["data"] == b64(b"hello") and first["attributes"] == {"ce-type": "created"}
    assert [first["messageId"], second["messageId"]] == ids
    assert "orderingKey" not in first
    assert "data" not in second  # proto3 JSON leaves the empty data out
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["publishTime"])
    assert len({r["ackId"] for r in received}) == 2

    ack(ps, *(r["ackId"] for r in received))
    assert (
        ps.subscriptions()
        .pull(subscription=SUB, body={"maxMessages": 10, "returnImmediately": True})
        .execute()
        == {}
    )  # no receivedMessages key at all when empty
    assert sub_counts(emu)["undelivered"] == 0 and sub_counts(emu)["outstanding"] == 0
    # Acknowledging again (or an id nobody issued) is not an error.
    ack(ps, received[0]["ackId"], "made-up-ack-id")


def test_publish_validation(ps: Any) -> None:
    setup(ps)

    def refused(body: JSON) -> str:
        status, rpc_status, message = error(ps.topics().publish(topic=TOPIC, body=body))
        assert (status, rpc_status) == (400, "INVALID_ARGUMENT")
        return message

    assert refused({"messages": [{"data": ""}]}) == (
        "One or more messages in the publish request is empty. Each message must contain "
        "either non-empty data, or at least one attribute."
    )
    assert "Base64 decoding failed" in refused({"messages": [{"data": "not base64!"}]})
    assert refused({"messages": []}) == (
        'A required argument is missing in the request: (argument="messages").'
    )
    assert "same ordering key" in refused(
        {"messages": [{"data": "eA==", "orderingKey": "a"}, {"data": "eA==", "orderingKey": "b"}]}
    )
    assert refused({"messages": [{"data": "eA==", "messageId": "123"}]})
    assert refused({"messages": [{"attributes": {"googclient_x": "1"}}]})
    assert refused({"messages": [{"attributes": {f"k{i}": "v" for i in range(101)}}]})
    assert refused({"messages": [{"data": "eA==", "orderingKey": "k" * 1025}]})
    # URL-safe base64 without padding is valid proto3 JSON for bytes.
    ok = {"messages": [{"data": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")}]}
    assert ps.topics().publish(topic=TOPIC, body=ok).execute()["messageIds"]
    (received,) = pull(ps)
    assert received["message"]["data"] == "+/8="  # answered in standard base64, padded


def test_only_messages_published_after_the_subscription_are_delivered(ps: Any) -> None:
    ps.topics().create(name=TOPIC, body={}).execute()
    publish(ps, "before")
    ps.subscriptions().create(name=SUB, body={"topic": TOPIC}).execute()
    publish(ps, "after")
    assert texts(pull(ps)) == ["after"]


def test_pull_needs_a_positive_max_messages(ps: Any) -> None:
    setup(ps)
    assert error(ps.subscriptions().pull(subscription=SUB, body={})) == (
        400,
        "INVALID_ARGUMENT",
        'A required argument is missing in the request: (argument="max_messages").',
    )
    assert error(ps.subscriptions().pull(subscription=SUB, body={"maxMessages": -1})) == (
        400,
        "INVALID_ARGUMENT",
        "You have passed an invalid argument to the service (argument=max_messages).",
    )
    body = {"maxMessages": "ten"}
    assert error(ps.subscriptions().pull(subscription=SUB, body=body))[0] == 400


def test_long_poll_waits_then_answers_empty(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    emu.control.set_config(pull_wait_seconds=0.4)
    started = time.monotonic()
    assert pull(ps, immediately=False) == []
    assert 0.35 <= time.monotonic() - started < 3
    started = time.monotonic()
    assert pull(ps, immediately=True) == []
    assert time.monotonic() - started < 0.3


def test_long_poll_wakes_on_publish(emu: PubSubEmulator) -> None:
    ps = service(emu)
    setup(ps)
    emu.control.set_config(pull_wait_seconds=10.0)
    result: list[list[JSON]] = []
    waiter = threading.Thread(target=lambda: result.append(pull(service(emu), immediately=False)))
    started = time.monotonic()
    waiter.start()
    held = lambda: emu.state.state_json()["waiting_pulls"] == 1  # noqa: E731
    wait_for(held, timeout=5, what="the pull held open")
    assert waiter.is_alive()  # held: nothing to deliver yet
    publish(ps, "wake up")
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 3  # woken by the publish, not by the 10 s budget
    assert texts(result[0]) == ["wake up"]


def test_deleting_a_subscription_ends_a_waiting_pull_with_404(emu: PubSubEmulator) -> None:
    ps = service(emu)
    setup(ps)
    emu.control.set_config(pull_wait_seconds=10.0)
    outcome: list[int] = []

    def wait() -> None:
        outcome.append(
            error(service(emu).subscriptions().pull(subscription=SUB, body={"maxMessages": 1}))[0]
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: emu.state.state_json()["waiting_pulls"] == 1, timeout=5, what="held")
    ps.subscriptions().delete(subscription=SUB).execute()
    waiter.join(timeout=5)
    assert outcome == [404]


# --------------------------------------------------------------------------- ack deadlines
def test_ack_deadline_bounds(ps: Any) -> None:
    ps.topics().create(name=TOPIC, body={}).execute()
    body: JSON
    for bad in (5, 9, 601, -1):
        body = {"topic": TOPIC, "ackDeadlineSeconds": bad}
        status, rpc_status, message = error(ps.subscriptions().create(name=SUB, body=body))
        assert (status, rpc_status) == (400, "INVALID_ARGUMENT")
        assert message == (
            f"Invalid ack deadline given (ack_deadline={bad}). The ack deadline must be "
            "between 10 and 600 seconds."
        )
    body = {"topic": TOPIC, "ackDeadlineSeconds": 0}  # 0 means the default, 10
    assert ps.subscriptions().create(name=SUB, body=body).execute()["ackDeadlineSeconds"] == 10
    other = f"projects/{PROJECT}/subscriptions/long-deadline"
    body = {"topic": TOPIC, "ackDeadlineSeconds": 600}
    assert ps.subscriptions().create(name=other, body=body).execute()["ackDeadlineSeconds"] == 600

    publish(ps, "m")
    ack_id = pull(ps)[0]["ackId"]
    for bad in (601, -1):
        body = {"ackIds": [ack_id], "ackDeadlineSeconds": bad}
        assert error(ps.subscriptions().modifyAckDeadline(subscription=SUB, body=body)) == (
            400,
            "INVALID_ARGUMENT",
            f"Invalid ack deadline given (ack_deadline={bad}). The ack deadline must be "
            "between 0 and 600 seconds.",
        )
    body = {"ackIds": [], "ackDeadlineSeconds": 30}
    assert error(ps.subscriptions().modifyAckDeadline(subscription=SUB, body=body))[0] == 400
    assert error(ps.subscriptions().acknowledge(subscription=SUB, body={"ackIds": []}))[0] == 400


def test_redelivery_after_the_deadline_with_a_fresh_ack_id(
    emu: PubSubEmulator, ps: Any, clock: FakeClock
) -> None:
    setup(ps, deadline=20)
    publish(ps, "once")
    first = pull(ps)
    assert texts(first) == ["once"]
    clock.advance(19.9)
    assert pull(ps) == []  # outstanding: not redelivered before its deadline
    clock.advance(0.2)
    second = pull(ps)
    assert texts(second) == ["once"]
    assert second[0]["message"]["messageId"] == first[0]["message"]["messageId"]
    assert second[0]["ackId"] != first[0]["ackId"]
    # The first delivery's ack id died with its lease: acking it acknowledges nothing.
    ack(ps, first[0]["ackId"])
    assert sub_counts(emu)["outstanding"] == 1
    clock.advance(21)
    third = pull(ps)
    assert texts(third) == ["once"]
    ack(ps, third[0]["ackId"])
    clock.advance(100)
    assert pull(ps) == []


def test_deadline_scale_makes_redelivery_fast_on_the_real_clock() -> None:
    emu = PubSubEmulator.start(authenticate=authenticate)  # real monotonic clock
    try:
        emu.state.add_project(PROJECT, owners=[ALICE])
        emu.control.set_config(deadline_scale=0.02, pull_wait_seconds=2.0)  # 10 s -> 0.2 s
        ps = service(emu)
        setup(ps)
        publish(ps, "again")
        first = pull(ps)
        started = time.monotonic()
        second = pull(ps, immediately=False)  # the hold ends when the lease does
        assert 0.15 <= time.monotonic() - started < 1.5
        assert texts(second) == ["again"] and second[0]["ackId"] != first[0]["ackId"]
    finally:
        emu.stop()
        emu.check_errors()


def test_modify_ack_deadline_extends_and_nacks(
    emu: PubSubEmulator, ps: Any, clock: FakeClock
) -> None:
    setup(ps)
    publish(ps, "slow job")
    ack_id = pull(ps)[0]["ackId"]
    clock.advance(8)
    modack(ps, 30, ack_id)  # 30 s from now, not from the delivery
    clock.advance(25)
    assert pull(ps) == []
    clock.advance(6)
    redelivered = pull(ps)
    assert texts(redelivered) == ["slow job"]

    # Extending an ended lease does nothing: the message is due again regardless.
    modack(ps, 600, ack_id)
    nack_id = redelivered[0]["ackId"]
    modack(ps, 0, nack_id)  # a nack: deliverable again at once
    again = pull(ps)
    assert texts(again) == ["slow job"] and again[0]["ackId"] != nack_id
    ack(ps, nack_id)  # the nacked lease's id acknowledges nothing
    assert sub_counts(emu)["outstanding"] == 1
    ack(ps, again[0]["ackId"])
    assert sub_counts(emu)["outstanding"] == 0


def test_without_ordering_each_message_expires_on_its_own(ps: Any, clock: FakeClock) -> None:
    setup(ps)
    publish(ps, "a", "b", "c", key="same-key")  # keys mean nothing without ordering enabled
    received = pull(ps)
    assert sorted(texts(received)) == ["a", "b", "c"]
    ack(ps, received[0]["ackId"], received[2]["ackId"])
    clock.advance(11)
    assert texts(pull(ps)) == [texts(received)[1]]


# --------------------------------------------------------------------------- ordering
def test_ordering_delivers_a_key_in_order_without_overlap(ps: Any) -> None:
    setup(ps, ordering=True)
    assert ps.subscriptions().get(subscription=SUB).execute()["enableMessageOrdering"] is True
    publish(ps, "a1", "a2", key="A")
    publish(ps, "b1", key="B")
    publish(ps, "free")

    first = pull(ps, 1)
    assert texts(first) == ["a1"]
    assert first[0]["message"]["orderingKey"] == "A"
    # a2 waits while a1 is outstanding; other keys and unkeyed messages flow.
    assert texts(pull(ps)) == ["b1", "free"]
    assert pull(ps) == []
    ack(ps, first[0]["ackId"])
    second = pull(ps)
    assert texts(second) == ["a2"]

    # Several consecutive messages of one key may come in one response, in order...
    ack(ps, second[0]["ackId"])
    publish(ps, "a3", "a4", "a5", key="A")
    batch = pull(ps)
    assert texts(batch) == ["a3", "a4", "a5"]
    # ...but nothing more of the key while any of them is outstanding.
    publish(ps, "a6", key="A")
    ack(ps, batch[0]["ackId"], batch[1]["ackId"])
    assert pull(ps) == []
    ack(ps, batch[2]["ackId"])
    assert texts(pull(ps)) == ["a6"]


def test_ordering_redelivery_brings_back_the_rest_of_the_key(
    emu: PubSubEmulator, ps: Any, clock: FakeClock
) -> None:
    setup(ps, ordering=True)
    publish(ps, "k1", "k2", "k3", key="K")
    batch = pull(ps)
    assert texts(batch) == ["k1", "k2", "k3"]
    # k2 and k3 acknowledged, k1 not: when k1's deadline passes, all three come back in
    # order, "even acknowledged ones" (ordering guide).
    ack(ps, batch[1]["ackId"], batch[2]["ackId"])
    assert sub_counts(emu)["acked_retained"] == 2
    clock.advance(11)
    again = pull(ps)
    assert texts(again) == ["k1", "k2", "k3"]
    assert {r["ackId"] for r in again}.isdisjoint({r["ackId"] for r in batch})

    # A nack in the middle: k1 acknowledged, k2 nacked -> k2 and k3 again, k1 not.
    ack(ps, again[0]["ackId"])
    modack(ps, 0, again[1]["ackId"])
    ack(ps, again[2]["ackId"])  # its lease ended with the nack: acknowledges nothing
    third = pull(ps)
    assert texts(third) == ["k2", "k3"]
    ack(ps, *(r["ackId"] for r in third))
    clock.advance(100)
    assert pull(ps) == []
    assert sub_counts(emu)["acked_retained"] == 0


# --------------------------------------------------------------------------- faults
def test_duplicate_fault_delivers_every_message_twice(
    emu: PubSubEmulator, ps: Any, clock: FakeClock
) -> None:
    setup(ps, ordering=True)
    emu.control.set_config(duplicate=True)
    publish(ps, "d1", "d2", key="K")
    first = pull(ps)
    second = pull(ps)  # the copies, even though ordering would hold the key
    assert texts(first) == texts(second) == ["d1", "d2"]
    assert [r["message"]["messageId"] for r in first] == [
        r["message"]["messageId"] for r in second
    ]
    assert {r["ackId"] for r in first}.isdisjoint({r["ackId"] for r in second})
    assert sub_counts(emu)["outstanding"] == 2
    ack(ps, *(r["ackId"] for r in first))
    ack(ps, *(r["ackId"] for r in second))  # the message is already acknowledged: fine
    clock.advance(11)
    assert pull(ps) == []


def test_duplicate_copies_respect_max_messages(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps, ordering=True)
    emu.control.set_config(duplicate=True)
    publish(ps, "a1", key="A")
    assert texts(pull(ps, 1)) == ["a1"]
    publish(ps, "b1", key="B")
    assert texts(pull(ps, 1)) == ["a1"]  # the copy fills the batch; b1 waits its turn
    assert texts(pull(ps, 1)) == ["b1"]


def test_duplicate_copy_arrives_even_after_the_ack(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    emu.control.set_config(duplicate=True)
    publish(ps, "late copy")
    ack(ps, pull(ps)[0]["ackId"])
    assert texts(pull(ps)) == ["late copy"]


def test_shuffle_fault_ignores_ordering(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps, ordering=True)
    emu.control.set_config(shuffle=True, seed=7)
    payloads = [f"m{i:02d}" for i in range(20)]
    publish(ps, *payloads, key="K")
    got = texts(pull(ps, 20))
    assert sorted(got) == payloads and got != payloads


def test_drop_acks_fault(emu: PubSubEmulator, ps: Any, clock: FakeClock) -> None:
    setup(ps)
    emu.control.set_config(drop_acks=True)
    publish(ps, "sticky")
    ack(ps, pull(ps)[0]["ackId"])  # answered 200...
    clock.advance(11)
    back = pull(ps)  # ...but ignored: back after the deadline
    assert texts(back) == ["sticky"]
    emu.control.set_config(drop_acks=False)
    ack(ps, back[0]["ackId"])
    clock.advance(11)
    assert pull(ps) == []


def test_http_faults(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    emu.control.add_fault(status=503, method="POST", path_regex=r":publish$", count=2)
    for _ in range(2):
        assert error(ps.topics().publish(topic=TOPIC, body={"messages": [{"data": "eA=="}]}))[
            :2
        ] == (503, "UNAVAILABLE")
    assert publish(ps, "third time")
    emu.control.add_fault(latency_ms=300, path_regex=r":pull$")
    started = time.monotonic()
    assert texts(pull(ps)) == ["third time"]
    assert time.monotonic() - started >= 0.3
    emu.control.add_fault(status=500)
    emu.control.clear_faults()
    assert ps.topics().get(topic=TOPIC).execute()


def test_config_is_validated(emu: PubSubEmulator) -> None:
    for bad in ({"deadline_scale": 0}, {"no_such_key": 1}, {"duplicate": "yes"}):
        with pytest.raises(requests.HTTPError) as info:
            emu.control.set_config(**bad)
        assert info.value.response.status_code == 400
    assert emu.control.state()["config"]["deadline_scale"] == 1.0
    with pytest.raises(requests.HTTPError) as info:
        emu.control.add_fault(path_regex="(unclosed")
    assert info.value.response.status_code == 400


# --------------------------------------------------------------------------- IAM and auth
def test_publish_as_needs_a_publish_grant_on_the_topic(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    with pytest.raises(PubSubDenied):
        emu.state.publish_as(CHAT_SA, TOPIC, b'{"message": {}}', {"ce-type": "created"})
    with pytest.raises(requests.HTTPError) as info:
        emu.control.publish_as(CHAT_SA, TOPIC, b"x")
    assert info.value.response.status_code == 403
    with pytest.raises(PubSubNotFound):
        emu.state.publish_as(ALICE, f"projects/{PROJECT}/topics/no-such-topic", b"x", {})
    with pytest.raises(PubSubNotFound):
        emu.state.publish_as(ALICE, "projects/no-such-project/topics/chat-events", b"x", {})
    with pytest.raises(PubSubInvalid):
        emu.state.publish_as(ALICE, TOPIC, b"", {})

    policy = ps.topics().getIamPolicy(resource=TOPIC).execute()
    policy["bindings"] = [{"role": "roles/pubsub.publisher", "members": [CHAT_SA]}]
    ps.topics().setIamPolicy(resource=TOPIC, body={"policy": policy}).execute()
    message_id = emu.state.publish_as(CHAT_SA, TOPIC, b"event", {"ce-type": "created"}, "space")
    assert emu.control.publish_as(CHAT_SA, TOPIC, b"second", ordering_key="space")
    received = pull(ps)
    assert texts(received) == ["event", "second"]
    assert received[0]["message"]["messageId"] == message_id
    assert received[0]["message"]["attributes"] == {"ce-type": "created"}
    assert received[0]["message"]["orderingKey"] == "space"


def test_set_iam_policy_etag_conflict(ps: Any) -> None:
    setup(ps)
    empty = ps.topics().getIamPolicy(resource=TOPIC).execute()
    assert empty == {"etag": "ACAB"}
    binding = {"role": "roles/pubsub.subscriber", "members": [BOB]}
    first = (
        ps.topics()
        .setIamPolicy(
            resource=TOPIC, body={"policy": {"bindings": [binding], "etag": empty["etag"]}}
        )
        .execute()
    )
    assert_schema(first, "Policy")
    assert first["bindings"] == [binding] and first["etag"] != "ACAB"
    assert ps.topics().getIamPolicy(resource=TOPIC).execute() == first
    stale = {"policy": {"bindings": [], "etag": empty["etag"]}}
    status, rpc_status, _ = error(ps.topics().setIamPolicy(resource=TOPIC, body=stale))
    assert (status, rpc_status) == (409, "ABORTED")
    # No etag: an unconditional overwrite.
    assert ps.topics().setIamPolicy(resource=TOPIC, body={"policy": {}}).execute()["etag"]
    bad_role = {"policy": {"bindings": [{"role": "roles/storage.admin", "members": [BOB]}]}}
    assert error(ps.topics().setIamPolicy(resource=TOPIC, body=bad_role))[0] == 400
    no_members = {"policy": {"bindings": [{"role": "roles/pubsub.viewer", "members": []}]}}
    assert error(ps.topics().setIamPolicy(resource=TOPIC, body=no_members))[0] == 400
    sub_policy = ps.subscriptions().getIamPolicy(resource=SUB).execute()
    assert sub_policy == {"etag": "ACAB"}


def test_test_iam_permissions(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    asked = ["pubsub.topics.publish", "pubsub.topics.get", "pubsub.topics.setIamPolicy"]
    body = {"permissions": asked}
    assert ps.topics().testIamPermissions(resource=TOPIC, body=body).execute() == {
        "permissions": asked
    }
    bob = service(emu, "bob-token")
    assert bob.topics().testIamPermissions(resource=TOPIC, body=body).execute() == {}
    carol = service(emu, "carol-token")  # project editor: everything but changing IAM
    assert carol.topics().testIamPermissions(resource=TOPIC, body=body).execute() == {
        "permissions": asked[:2]
    }
    ps.topics().setIamPolicy(
        resource=TOPIC,
        body={"policy": {"bindings": [{"role": "roles/pubsub.publisher", "members": [BOB]}]}},
    ).execute()
    assert bob.topics().testIamPermissions(resource=TOPIC, body=body).execute() == {
        "permissions": ["pubsub.topics.publish"]
    }
    # A missing resource is an empty answer, not NOT_FOUND (discovery doc).
    missing = f"projects/{PROJECT}/topics/not-there"
    assert ps.topics().testIamPermissions(resource=missing, body=body).execute() == {}
    wrong = {"permissions": ["pubsub.subscriptions.consume"]}
    assert error(ps.topics().testIamPermissions(resource=TOPIC, body=wrong))[0] == 400
    wildcard = {"permissions": ["pubsub.*"]}
    assert error(ps.topics().testIamPermissions(resource=TOPIC, body=wildcard))[0] == 400
    consume = {"permissions": ["pubsub.subscriptions.consume"]}
    assert ps.subscriptions().testIamPermissions(resource=SUB, body=consume).execute() == consume


def test_permissions_are_enforced(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    publish(ps, "for bob")
    bob = service(emu, "bob-token")
    denied = (403, "PERMISSION_DENIED", "User not authorized to perform this action.")
    assert error(bob.topics().get(topic=TOPIC)) == denied
    assert error(bob.topics().get(topic=f"projects/{PROJECT}/topics/not-there")) == denied
    assert (
        error(bob.topics().publish(topic=TOPIC, body={"messages": [{"data": "eA=="}]})) == denied
    )
    body = {"maxMessages": 1, "returnImmediately": True}
    assert error(bob.subscriptions().pull(subscription=SUB, body=body)) == denied
    assert (
        error(bob.topics().create(name=f"projects/{PROJECT}/topics/bobs-topic", body={})) == denied
    )

    ps.subscriptions().setIamPolicy(
        resource=SUB,
        body={"policy": {"bindings": [{"role": "roles/pubsub.subscriber", "members": [BOB]}]}},
    ).execute()
    received = bob.subscriptions().pull(subscription=SUB, body=body).execute()["receivedMessages"]
    assert texts(received) == ["for bob"]
    bob.subscriptions().acknowledge(
        subscription=SUB, body={"ackIds": [received[0]["ackId"]]}
    ).execute()
    assert error(bob.subscriptions().get(subscription=SUB)) == denied  # consume is not get

    # A project editor may do everything but change IAM policies.
    carol = service(emu, "carol-token")
    carol.topics().create(name=f"projects/{PROJECT}/topics/carols-topic", body={}).execute()
    assert error(carol.topics().setIamPolicy(resource=TOPIC, body={"policy": {}})) == denied
    assert carol.topics().getIamPolicy(resource=TOPIC).execute()["etag"] == "ACAB"

    # Attaching a subscription needs attachSubscription on the topic of another project.
    emu.state.add_project(OTHER_PROJECT, owners=[BOB])
    bobs_sub = f"projects/{OTHER_PROJECT}/subscriptions/bobs-sub"
    ps.topics().setIamPolicy(resource=TOPIC, body={"policy": {}}).execute()
    assert error(bob.subscriptions().create(name=bobs_sub, body={"topic": TOPIC})) == denied
    ps.topics().setIamPolicy(
        resource=TOPIC,
        body={"policy": {"bindings": [{"role": "roles/pubsub.subscriber", "members": [BOB]}]}},
    ).execute()
    assert bob.subscriptions().create(name=bobs_sub, body={"topic": TOPIC}).execute()


def test_missing_scope_is_403_with_error_info(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    narrow = service(emu, "narrow-token")
    with pytest.raises(HttpError) as info:
        narrow.topics().publish(topic=TOPIC, body={"messages": [{"data": "eA=="}]}).execute()
    assert info.value.status_code == 403
    body = json.loads(info.value.content)["error"]
    assert body["status"] == "PERMISSION_DENIED"
    assert body["message"] == "Request had insufficient authentication scopes."
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "domain": "googleapis.com",
            "metadata": {
                "service": "pubsub.googleapis.com",
                "method": "google.pubsub.v1.Publisher.Publish",
            },
        }
    ]


def test_bad_or_missing_token_is_401(emu: PubSubEmulator) -> None:
    bad = service(emu, "who-is-this")
    status, rpc_status, message = error(bad.topics().get(topic=TOPIC))
    assert (status, rpc_status) == (401, "UNAUTHENTICATED")
    assert message.startswith("Request had invalid authentication credentials.")
    raw = requests.get(f"{emu.url}/v1/{TOPIC}", timeout=10)
    assert raw.status_code == 401
    assert raw.headers["WWW-Authenticate"].startswith("Bearer")
    assert raw.json()["error"]["message"].startswith("Request is missing required authentication")


# --------------------------------------------------------------------------- control, discovery
def test_request_log_state_and_reset(emu: PubSubEmulator, ps: Any) -> None:
    setup(ps)
    publish(ps, "one")
    pull(ps)
    log = emu.control.requests()
    assert log["counts"]["POST /v1/projects/{project}/topics/{topic}:publish"] == 1
    assert log["counts"]["POST /v1/projects/{project}/subscriptions/{subscription}:pull"] == 1
    row = log["requests"][-1]
    assert row["status"] == 200 and row["principal"] == ALICE and row["method"] == "POST"
    assert all(r["path"].startswith("/v1/") for r in log["requests"])
    emu.control.clear_requests()
    assert emu.control.requests()["requests"] == []

    state = emu.control.state()
    assert state["publish_count"] == 1
    assert state["topics"] == [{"name": TOPIC, "subscriptions": [SUB], "published": 1}]
    assert sub_counts(emu)["outstanding"] == 1

    emu.control.reset()
    assert emu.control.state()["topics"] == [] and emu.control.state()["projects"] == []
    assert error(ps.topics().get(topic=TOPIC))[0] == 404  # the project is gone too


def test_discovery_is_served_with_the_emulator_as_root(emu: PubSubEmulator) -> None:
    doc = requests.get(f"{emu.url}/$discovery/rest", params={"version": "v1"}, timeout=10).json()
    assert doc["rootUrl"] == doc["baseUrl"] == emu.url + "/"
    bundled = load_discovery()
    assert doc["resources"] == bundled["resources"] and doc["schemas"] == bundled["schemas"]
    if SHARED_SPEC.exists():
        assert json.loads(SHARED_SPEC.read_text()) == bundled
    # googleapiclient can build straight from the served document.
    http = AuthorizedHttp(Credentials(token="alice-token"), http=httplib2.Http(timeout=30))
    ps = build(
        "pubsub",
        "v1",
        http=http,
        discoveryServiceUrl=emu.discovery_url(),
        static_discovery=False,
    ).projects()
    assert ps.topics().create(name=TOPIC, body={}).execute() == {"name": TOPIC}


def test_an_emulator_bug_is_recorded_and_answered_500(clock: FakeClock) -> None:
    def broken(token: str) -> tuple[str, frozenset[str]] | None:
        raise RuntimeError("authenticator exploded")

    emu = PubSubEmulator.start(authenticate=broken, monotonic=clock)
    try:
        resp = requests.get(
            f"{emu.url}/v1/{TOPIC}", headers={"Authorization": "Bearer x"}, timeout=10
        )
        assert resp.status_code == 500
        assert resp.json()["error"]["message"].startswith("emulator bug: RuntimeError")
        with pytest.raises(RuntimeError, match="authenticator exploded"):
            emu.check_errors()
    finally:
        emu.stop()


def _discovery_methods() -> list[JSON]:
    out: list[JSON] = []

    def walk(resources: JSON) -> None:
        for resource in resources.values():
            out.extend(resource.get("methods", {}).values())
            walk(resource.get("resources", {}))

    walk(load_discovery()["resources"])
    return out


def test_every_served_v1_route_is_a_discovery_method_with_the_same_http_method() -> None:
    """Contract: each `/v1/` route (and its HTTP method) is one method of pubsub.v1.json."""
    methods = _discovery_methods()
    by_id = {m["id"]: m for m in methods}
    app = create_app(PubSubState(), authenticate=lambda token: None)
    served: set[str] = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        sample = re.sub(r"<[^>]+>", "sample-id", rule.rule)
        for http_method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            matching = [
                m
                for m in methods
                if m["httpMethod"] == http_method
                and re.fullmatch(
                    "/" + re.sub(r"\\\{[A-Za-z]+\\\}", "[^/:]+", re.escape(m["flatPath"])),
                    sample,
                )
            ]
            assert len(matching) == 1, f"{http_method} {rule.rule} is not one discovery method"
            disco_id = ROUTES[rule.endpoint][0]
            assert matching[0]["id"] == disco_id == by_id[disco_id]["id"]
            served.add(disco_id)
    assert served == {disco_id for disco_id, _ in ROUTES.values()}
    assert len(served) == 16
