"""Tests of google_events_client: the real clients (googleapiclient + httplib2 + google-auth) over
real HTTP on 127.0.0.1.

- Pub/Sub against the Pub/Sub emulator (`emulators/pubsub.py`), whose request log and state are
  the witnesses of what was sent.
- Workspace Events against the Chat emulator, which serves the Workspace Events routes and
  publishes the events into its Pub/Sub emulator (`emu.pubsub`).
- What no emulator can be asked to do (a redirect to another host, a scripted Retry-After, an
  operation that finishes late or with an error) against `Scripted`, a tiny loopback server that
  answers a queue of canned responses and records every request, headers included.

Only `sleep` and the clock are faked (`FakeTime`): retries and operation polls never really wait.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import google.oauth2.credentials
import pytest
from werkzeug.wrappers import Request, Response

from emulators._server import ServerHandle, serve_in_thread
from emulators.google_chat import ChatEmulator
from emulators.pubsub import ACCEPTED_SCOPES, PubSubEmulator
from google_chat_client import SpaceMessageEvent, parse_rfc3339
from google_events_client import (
    ACK_IDS_PER_REQUEST,
    EventsAlreadyExists,
    EventsAuthError,
    EventsError,
    EventsNotFound,
    EventsOperationFailed,
    EventsPermissionDenied,
    EventsRejected,
    EventsUnavailable,
    IamPolicy,
    PubSubClient,
    PubSubMessage,
    PubSubSubscription,
    Subscription,
    WorkspaceEventsClient,
)
from tests.e2e.harness import wait_for

PROJECT = "bridge-project"
TOPIC = f"projects/{PROJECT}/topics/chat-events"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/chat-events-bridge"
OWNER = "user:operator@example.com"
CHAT_PUBLISHER = "serviceAccount:chat-api-push@system.gserviceaccount.com"
MESSAGE_TYPES = (
    "google.workspace.chat.message.v1.created",
    "google.workspace.chat.message.v1.updated",
    "google.workspace.chat.message.v1.deleted",
)


class FakeTime:
    """A monotonic clock that only moves when `sleep` is called; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def credentials(token: str) -> google.oauth2.credentials.Credentials:
    # No refresh token: a 401 cannot be cured by a refresh (an auth error, as it should be).
    return google.oauth2.credentials.Credentials(token=token)


# ------------------------------------------------------------------------------------------
# Pub/Sub against the Pub/Sub emulator
# ------------------------------------------------------------------------------------------

TOKENS: dict[str, tuple[str, frozenset[str]]] = {
    "tok-operator": (OWNER, ACCEPTED_SCOPES),
    # The operator's identity without a Pub/Sub scope (an OAuth grant for Chat only).
    "tok-chat-only": (OWNER, frozenset({"https://www.googleapis.com/auth/chat.messages"})),
    # Someone with both scopes but no role in the project.
    "tok-stranger": ("user:stranger@example.com", ACCEPTED_SCOPES),
}


@dataclass
class PubSubWorld:
    emu: PubSubEmulator
    time: FakeTime = field(default_factory=FakeTime)

    def client(self, token: str = "tok-operator", **kw: Any) -> PubSubClient:
        kw.setdefault("sleep", self.time.sleep)
        return PubSubClient(credentials(token), api_endpoint=self.emu.url, **kw)

    def log(self) -> list[dict[str, Any]]:
        return list(self.emu.control.requests()["requests"])

    def calls(self, method: str, suffix: str) -> list[dict[str, Any]]:
        return [r for r in self.log() if r["method"] == method and r["path"].endswith(suffix)]

    def publish(self, data: bytes, ordering_key: str = "", **attributes: str) -> str:
        return self.emu.control.publish_as(CHAT_PUBLISHER, TOPIC, data, attributes, ordering_key)

    def subscription_state(self) -> dict[str, Any]:
        (sub,) = [
            s for s in self.emu.control.state()["subscriptions"] if s["name"] == SUBSCRIPTION
        ]
        return dict(sub)


@pytest.fixture
def pubsub() -> Iterator[PubSubWorld]:
    emu = PubSubEmulator.start(authenticate=TOKENS.get)
    emu.state.add_project(PROJECT, owners=[OWNER])
    # Long polls answer "nothing" after 0.3 s instead of 5 s, so empty pulls stay cheap.
    emu.control.set_config(pull_wait_seconds=0.3)
    try:
        yield PubSubWorld(emu)
    finally:
        emu.stop()
    emu.check_errors()


def ready(world: PubSubWorld) -> PubSubClient:
    """A client, with the topic (publishable by Chat) and the pull subscription in place."""
    client = world.client()
    client.create_topic(TOPIC)
    policy = client.get_topic_policy(TOPIC)
    client.set_topic_policy(TOPIC, policy.with_member("roles/pubsub.publisher", CHAT_PUBLISHER))
    client.create_subscription(SUBSCRIPTION, TOPIC)
    world.emu.control.clear_requests()
    return client


def test_topic_is_created_once(pubsub: PubSubWorld) -> None:
    client = pubsub.client()
    assert client.get_topic(TOPIC) is False
    client.create_topic(TOPIC)
    assert client.get_topic(TOPIC) is True
    with pytest.raises(EventsAlreadyExists) as info:
        client.create_topic(TOPIC)
    assert (info.value.status, info.value.http_status) == ("ALREADY_EXISTS", 409)
    assert info.value.existing is None  # Pub/Sub names no Workspace Events subscription
    assert [r["status"] for r in pubsub.log()] == [404, 200, 200, 409]
    assert client.request_count == 4 and pubsub.time.sleeps == []


def test_topic_policy_read_modify_write(pubsub: PubSubWorld) -> None:
    client = pubsub.client()
    client.create_topic(TOPIC)
    policy = client.get_topic_policy(TOPIC)
    assert policy.members("roles/pubsub.publisher") == ()
    granted = policy.with_member("roles/pubsub.publisher", CHAT_PUBLISHER)
    stored = client.set_topic_policy(TOPIC, granted)
    assert stored.members("roles/pubsub.publisher") == (CHAT_PUBLISHER,)
    assert stored.etag and stored.etag != policy.etag
    assert client.get_topic_policy(TOPIC) == stored
    # The emulator's IAM now lets Chat's service account publish to the topic.
    assert pubsub.publish(b"{}")

    # A write with the stale etag is refused and not retried (the same body would fail again).
    with pytest.raises(EventsUnavailable) as info:
        client.set_topic_policy(TOPIC, policy.with_member("roles/pubsub.viewer", OWNER))
    assert (info.value.status, info.value.http_status) == ("ABORTED", 409)
    assert len(pubsub.calls("POST", ":setIamPolicy")) == 2 and pubsub.time.sleeps == []
    assert client.get_topic_policy(TOPIC) == stored


def test_permissions_are_tested_on_topic_and_subscription(pubsub: PubSubWorld) -> None:
    client = ready(pubsub)
    asked = ["pubsub.topics.publish", "pubsub.topics.setIamPolicy"]
    assert client.test_topic_permissions(TOPIC, asked) == frozenset(asked)
    stranger = pubsub.client("tok-stranger")
    assert stranger.test_topic_permissions(TOPIC, asked) == frozenset()
    consume = ["pubsub.subscriptions.consume"]
    assert client.test_subscription_permissions(SUBSCRIPTION, consume) == frozenset(consume)
    assert stranger.test_subscription_permissions(SUBSCRIPTION, consume) == frozenset()


def test_subscription_is_created_with_ordering_and_read_back(pubsub: PubSubWorld) -> None:
    client = pubsub.client()
    client.create_topic(TOPIC)
    assert client.get_subscription(SUBSCRIPTION) is None
    created = client.create_subscription(SUBSCRIPTION, TOPIC, ack_deadline_seconds=45)
    assert created == PubSubSubscription(SUBSCRIPTION, TOPIC, 45, True)
    assert client.get_subscription(SUBSCRIPTION) == created
    with pytest.raises(EventsAlreadyExists):
        client.create_subscription(SUBSCRIPTION, TOPIC)
    unordered = f"projects/{PROJECT}/subscriptions/unordered"
    assert client.create_subscription(unordered, TOPIC, enable_message_ordering=False) == (
        PubSubSubscription(unordered, TOPIC, 60, False)
    )


def test_pull_parses_messages_and_ack_removes_them(pubsub: PubSubWorld) -> None:
    client = ready(pubsub)
    assert client.pull(SUBSCRIPTION) == []  # a long poll that found nothing
    event = json.dumps({"message": {"name": "spaces/S/messages/M"}}).encode()
    first = pubsub.publish(
        event, "spaces/S", **{"ce-type": MESSAGE_TYPES[0], "ce-time": "2026-01-01T00:00:00Z"}
    )
    second = pubsub.publish(b"\x00\xffbinary", "spaces/S")
    messages = client.pull(SUBSCRIPTION, max_messages=10)
    assert [m.message_id for m in messages] == [first, second]
    head = messages[0]
    assert head.data == event
    assert head.attributes == {"ce-type": MESSAGE_TYPES[0], "ce-time": "2026-01-01T00:00:00Z"}
    assert head.attributes.get("ce-type") == MESSAGE_TYPES[0]
    assert head.ordering_key == "spaces/S" and head.ack_id
    assert head.publish_time is not None
    assert abs((datetime.now(UTC) - head.publish_time).total_seconds()) < 60
    assert messages[1].data == b"\x00\xffbinary" and messages[1].attributes == {}
    assert len({m.ack_id for m in messages}) == 2
    assert len(set(messages)) == 2  # frozen records, attributes included, are hashable

    client.acknowledge(SUBSCRIPTION, [m.ack_id for m in messages])
    assert client.pull(SUBSCRIPTION) == []
    state = pubsub.subscription_state()
    assert (state["undelivered"], state["outstanding"]) == (0, 0)
    # One pull request per pull: no hidden retries or returnImmediately loops.
    assert len(pubsub.calls("POST", ":pull")) == 3


def test_a_nacked_message_comes_back_and_an_extended_one_does_not(pubsub: PubSubWorld) -> None:
    client = ready(pubsub)
    kept = pubsub.publish(b"kept", "a")
    handed_back = pubsub.publish(b"handed back", "b")
    first = {m.message_id: m for m in client.pull(SUBSCRIPTION)}
    assert set(first) == {kept, handed_back}
    client.modify_ack_deadline(SUBSCRIPTION, [first[kept].ack_id], 600)
    client.modify_ack_deadline(SUBSCRIPTION, [first[handed_back].ack_id], 0)
    again = client.pull(SUBSCRIPTION)
    assert [m.message_id for m in again] == [handed_back]
    assert again[0].ack_id != first[handed_back].ack_id  # a new lease, a new ack id
    with pytest.raises(ValueError):
        client.modify_ack_deadline(SUBSCRIPTION, [again[0].ack_id], 601)
    assert len(pubsub.calls("POST", ":modifyAckDeadline")) == 2


def test_acks_are_sent_in_batches_of_the_documented_size(pubsub: PubSubWorld) -> None:
    client = ready(pubsub)
    for i in range(3):
        pubsub.publish(f"m{i}".encode())
    real = [m.ack_id for m in client.pull(SUBSCRIPTION)]
    assert len(real) == 3
    # Unknown ack ids are ignored by Pub/Sub; they make the list long enough to need batches.
    padding = [f"expired-{i}" for i in range(2 * ACK_IDS_PER_REQUEST)]
    client.modify_ack_deadline(SUBSCRIPTION, padding + real, 120)
    client.acknowledge(SUBSCRIPTION, padding + real)
    assert ACK_IDS_PER_REQUEST == 1000
    assert len(pubsub.calls("POST", ":modifyAckDeadline")) == 3
    assert len(pubsub.calls("POST", ":acknowledge")) == 3
    state = pubsub.subscription_state()
    assert (state["undelivered"], state["outstanding"]) == (0, 0)
    client.acknowledge(SUBSCRIPTION, [])  # nothing to send: no request ("Must not be empty")
    assert len(pubsub.calls("POST", ":acknowledge")) == 3


def test_pull_waits_in_its_own_thread_while_other_calls_proceed(pubsub: PubSubWorld) -> None:
    pubsub.emu.control.set_config(pull_wait_seconds=5.0)
    client = ready(pubsub)
    pulled: list[list[PubSubMessage]] = []
    puller = threading.Thread(target=lambda: pulled.append(client.pull(SUBSCRIPTION)))
    puller.start()
    # While the pull is held open on the puller's connection, this thread's calls go through
    # on its own connection (httplib2 connections are not shared between threads).
    wait_for(lambda: pubsub.emu.state.state_json()["waiting_pulls"] == 1, timeout=5, what="held")
    for _ in range(5):
        assert client.get_subscription(SUBSCRIPTION) is not None
        assert client.get_topic(TOPIC)
    assert puller.is_alive() and pulled == []
    message_id = pubsub.publish(b"wakes the pull")
    puller.join(timeout=10)
    assert not puller.is_alive()
    assert [[m.message_id for m in batch] for batch in pulled] == [[message_id]]


def test_pull_has_its_own_timeout_and_is_not_retried(pubsub: PubSubWorld) -> None:
    pubsub.emu.control.set_config(pull_wait_seconds=3.0)
    client = ready(pubsub)
    short = pubsub.client(pull_timeout_seconds=0.3, timeout_seconds=10.0)
    started = time.monotonic()
    with pytest.raises(EventsUnavailable) as info:
        short.pull(SUBSCRIPTION)
    assert info.value.reason == "TIMEOUT" and time.monotonic() - started < 2.5
    # Every other call keeps the ordinary timeout.
    assert short.get_subscription(SUBSCRIPTION) is not None

    pubsub.emu.control.add_fault(count=1, status=503, path_regex=":pull$")
    with pytest.raises(EventsUnavailable) as info:
        client.pull(SUBSCRIPTION)
    assert (info.value.http_status, info.value.status) == (503, "UNAVAILABLE")
    assert pubsub.time.sleeps == []  # the puller's loop, not the client, decides when to retry


def test_transient_errors_are_retried_with_backoff(pubsub: PubSubWorld) -> None:
    client = ready(pubsub)
    pubsub.emu.control.add_fault(count=2, status=503, method="GET")
    assert client.get_topic(TOPIC) is True
    assert [r["status"] for r in pubsub.calls("GET", "/chat-events")] == [503, 503, 200]
    assert pubsub.time.sleeps == [1.0, 2.0]

    pubsub.emu.control.add_fault(count=1, status=429, method="POST")
    client.acknowledge(SUBSCRIPTION, ["some-ack-id"])
    assert [r["status"] for r in pubsub.calls("POST", ":acknowledge")] == [429, 200]
    assert pubsub.time.sleeps == [1.0, 2.0, 1.0]


def test_retries_stop_after_max_attempts(pubsub: PubSubWorld) -> None:
    ready(pubsub)
    client = pubsub.client(max_attempts=3, backoff_base_seconds=0.5)
    pubsub.emu.control.add_fault(count=10, status=500, method="GET")
    with pytest.raises(EventsUnavailable) as info:
        client.get_subscription(SUBSCRIPTION)
    assert (info.value.http_status, info.value.status) == (500, "INTERNAL")
    assert len(pubsub.calls("GET", "/chat-events-bridge")) == 3
    assert pubsub.time.sleeps == [0.5, 1.0]


def test_pubsub_errors_map_to_the_exception_tree(pubsub: PubSubWorld) -> None:
    client = ready(pubsub)
    missing = f"projects/{PROJECT}/topics/nope"
    with pytest.raises(EventsNotFound) as not_found:
        client.get_topic_policy(missing)
    assert (not_found.value.http_status, not_found.value.status) == (404, "NOT_FOUND")
    assert client.get_subscription(f"projects/{PROJECT}/subscriptions/nope") is None

    with pytest.raises(EventsPermissionDenied) as scope:
        pubsub.client("tok-chat-only").get_topic(TOPIC)
    assert scope.value.http_status == 403
    assert scope.value.reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"

    with pytest.raises(EventsPermissionDenied) as iam:
        pubsub.client("tok-stranger").pull(SUBSCRIPTION)
    assert (iam.value.status, iam.value.reason) == ("PERMISSION_DENIED", None)

    with pytest.raises(EventsAuthError) as auth:
        pubsub.client("tok-unknown").get_topic(TOPIC)
    assert isinstance(auth.value, EventsError) and not isinstance(auth.value, EventsRejected)

    # Names are checked locally against the discovery doc's patterns: no request is sent.
    before = len(pubsub.log())
    with pytest.raises(EventsRejected) as invalid:
        client.pull("chat-events-bridge")
    assert invalid.value.status == "INVALID_ARGUMENT" and invalid.value.http_status is None
    assert len(pubsub.log()) == before
    # Nothing above was retried.
    assert pubsub.time.sleeps == []


# ------------------------------------------------------------------------------------------
# Workspace Events against the Chat emulator (events published to its Pub/Sub emulator)
# ------------------------------------------------------------------------------------------

AUTH = "https://www.googleapis.com/auth/"
# What the bridge's one OAuth grant holds: Chat (messages) and Pub/Sub.
BRIDGE_SCOPES = [AUTH + "chat.messages", AUTH + "chat.spaces.readonly", AUTH + "pubsub"]


@dataclass
class EventsWorld:
    """A Chat emulator whose wall clock runs real time plus every fake sleep, so an operation
    the emulator finishes "5 s later" is done once the client has slept 5 fake seconds."""

    emu: ChatEmulator
    time: FakeTime
    me: str
    other: str
    space: str
    token: str
    refresh_token: str

    @property
    def target(self) -> str:
        return "//chat.googleapis.com/" + self.space

    def events(self, token: str | None = None, **kw: Any) -> WorkspaceEventsClient:
        kw.setdefault("sleep", self.time.sleep)
        kw.setdefault("clock", self.time.clock)
        return WorkspaceEventsClient(
            credentials(token or self.token), api_endpoint=self.emu.url, **kw
        )

    def pubsub(self, **kw: Any) -> PubSubClient:
        assert self.emu.pubsub is not None
        kw.setdefault("sleep", self.time.sleep)
        return PubSubClient(credentials(self.token), api_endpoint=self.emu.pubsub.url, **kw)

    def log(self, method: str, path: str) -> list[dict[str, Any]]:
        rows = self.emu.control.requests()["requests"]
        return [r for r in rows if r["method"] == method and str(r["path"]).startswith(path)]

    def flush(self) -> None:
        """Wait until the emulator has published every event it queued."""
        assert self.emu.workspace_events is not None
        self.emu.workspace_events.flush()


@pytest.fixture
def chat() -> Iterator[EventsWorld]:
    fake = FakeTime()
    start = fake.now
    emu = ChatEmulator.start(clock=lambda: time.time() + (fake.clock() - start))
    try:
        control = emu.control
        control.configure(quotas_enabled=False, operation_latency_seconds=0.0)
        me = str(control.create_user("Bridge Operator", email="operator@example.com")["name"])
        other = str(control.create_user("Ada Lovelace", email="ada@example.com")["name"])
        space = str(control.create_space([me, other], display_name="Room")["name"])
        tokens = control.add_token(me, scopes=BRIDGE_SCOPES)
        assert emu.pubsub is not None
        # The token's principal (user:operator@example.com) owns the Pub/Sub project.
        emu.pubsub.state.add_project(PROJECT, owners=[OWNER])
        world = EventsWorld(
            emu, fake, me, other, space, tokens["access_token"], tokens["refresh_token"]
        )
        pubsub = world.pubsub()
        pubsub.create_topic(TOPIC)
        policy = pubsub.get_topic_policy(TOPIC)
        pubsub.set_topic_policy(
            TOPIC, policy.with_member("roles/pubsub.publisher", CHAT_PUBLISHER)
        )
        pubsub.create_subscription(SUBSCRIPTION, TOPIC)
        control.clear_requests()
        yield world
    finally:
        emu.stop()
    emu.check_errors()


def test_create_polls_the_operation_until_the_subscription_exists(chat: EventsWorld) -> None:
    chat.emu.control.configure(operation_latency_seconds=5.0)
    events = chat.events()
    sub = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    assert sub.name.startswith("subscriptions/") and sub.uid
    assert (sub.target_resource, sub.space_name) == (chat.target, chat.space)
    assert sub.event_types == MESSAGE_TYPES and sub.pubsub_topic == TOPIC
    assert (sub.include_resource, sub.state, sub.suspension_reason) == (True, "ACTIVE", None)
    assert sub.expire_time is not None and sub.create_time is not None
    # ttl 0s is the maximum: 4 h for a subscription that includes the resource (emulator).
    lifetime = (sub.expire_time - sub.create_time).total_seconds()
    assert lifetime == pytest.approx(4 * 3600, abs=5)
    # The operation took 5 emulated seconds: polled with a doubling interval until done.
    assert chat.time.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2]
    assert len(chat.log("POST", "/v1/subscriptions")) == 1
    assert len(chat.log("GET", "/v1/operations/")) == 5
    assert events.request_count == 6

    assert events.get_subscription(sub.name) == sub
    assert events.find_subscription(chat.target, MESSAGE_TYPES) == sub
    assert events.find_subscription(chat.target, MESSAGE_TYPES[:1]) == sub
    assert events.list_subscriptions(MESSAGE_TYPES) == [sub]
    assert events.list_subscriptions(["google.workspace.chat.reaction.v1.created"]) == []
    other_space = str(chat.emu.control.create_space([chat.me], display_name="Other")["name"])
    assert events.find_subscription("//chat.googleapis.com/" + other_space, MESSAGE_TYPES) is None


def test_an_operation_that_outlasts_the_timeout_is_unavailable_then_found(
    chat: EventsWorld,
) -> None:
    chat.emu.control.configure(operation_latency_seconds=300.0)
    events = chat.events(operation_timeout_seconds=20.0)
    with pytest.raises(EventsUnavailable) as info:
        events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    assert info.value.reason == "OPERATION_TIMEOUT"
    assert events.find_subscription(chat.target, MESSAGE_TYPES) is None  # not created yet
    chat.time.sleep(300.0)  # the operation finishes meanwhile
    found = events.find_subscription(chat.target, MESSAGE_TYPES)
    assert found is not None and found.state == "ACTIVE"


def test_a_second_subscription_on_the_target_is_already_exists(chat: EventsWorld) -> None:
    events = chat.events()
    first = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    with pytest.raises(EventsAlreadyExists) as info:
        events.create_subscription(chat.target, MESSAGE_TYPES[:1], TOPIC)
    assert (info.value.status, info.value.http_status) == ("ALREADY_EXISTS", 409)
    # This emulator, like Google's documentation, names no existing subscription: find it.
    assert info.value.existing is None
    assert events.find_subscription(chat.target, MESSAGE_TYPES) == first
    assert chat.time.sleeps == []


def test_renew_moves_the_expiry(chat: EventsWorld) -> None:
    events = chat.events()
    sub = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC, ttl_seconds=600)
    assert sub.expire_time is not None and sub.create_time is not None
    assert (sub.expire_time - sub.create_time).total_seconds() == pytest.approx(600, abs=5)
    chat.time.sleep(120.0)
    renewed = events.renew_subscription(sub.name)
    assert renewed.name == sub.name and renewed.expire_time is not None
    assert renewed.expire_time > sub.expire_time
    assert (renewed.expire_time - sub.create_time).total_seconds() == pytest.approx(
        120 + 4 * 3600, abs=5
    )
    shorter = events.renew_subscription(sub.name, ttl_seconds=900)
    assert shorter.expire_time is not None
    assert (shorter.expire_time - sub.create_time).total_seconds() == pytest.approx(
        120 + 900, abs=5
    )
    patches = chat.log("PATCH", "/v1/subscriptions/")
    assert [r["query"].get("updateMask") for r in patches] == ["ttl", "ttl"]
    assert events.get_subscription(sub.name) == shorter


def test_a_suspended_subscription_is_reactivated_once_fixed(chat: EventsWorld) -> None:
    events = chat.events()
    sub = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    chat.emu.control.suspend_subscription(sub.name, "ENDPOINT_RESOURCE_EXHAUSTED")
    suspended = events.get_subscription(sub.name)
    assert (suspended.state, suspended.suspension_reason) == (
        "SUSPENDED",
        "ENDPOINT_RESOURCE_EXHAUSTED",
    )
    with pytest.raises(EventsRejected) as info:
        events.reactivate_subscription(sub.name)
    assert (info.value.status, info.value.reason) == (
        "FAILED_PRECONDITION",
        "ENDPOINT_RESOURCE_EXHAUSTED",
    )
    chat.emu.control.fix_subscription(sub.name)
    active = events.reactivate_subscription(sub.name)
    assert (active.state, active.suspension_reason) == ("ACTIVE", None)
    assert active.expire_time == sub.expire_time  # reactivation keeps the expiry


def test_delete_is_idempotent(chat: EventsWorld) -> None:
    events = chat.events()
    sub = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    events.delete_subscription(sub.name)
    with pytest.raises(EventsNotFound):
        events.get_subscription(sub.name)
    events.delete_subscription(sub.name)  # already gone: allowMissing makes it a success
    assert events.find_subscription(chat.target, MESSAGE_TYPES) is None
    deletes = chat.log("DELETE", "/v1/subscriptions/")
    assert [r["query"].get("allowMissing") for r in deletes] == ["true", "true"]
    # Deleted, the target is free for a new subscription.
    assert events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC).name != sub.name


def test_events_arrive_through_pubsub_as_cloud_events(chat: EventsWorld) -> None:
    events = chat.events()
    sub = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    posted = chat.emu.control.post_message(chat.space, sender=chat.other, text="hello *all*")
    chat.emu.control.edit_message(str(posted["name"]), text="hello again")
    chat.emu.control.delete_message(str(posted["name"]))
    chat.flush()

    pubsub = chat.pubsub()
    received = pubsub.pull(SUBSCRIPTION)
    assert [m.attributes["ce-type"] for m in received] == list(MESSAGE_TYPES)
    assert {m.ordering_key for m in received} == {"//workspaceevents.googleapis.com/" + sub.name}
    parsed = [
        SpaceMessageEvent.from_cloud_event(
            m.attributes["ce-type"], json.loads(m.data), parse_rfc3339(m.attributes["ce-time"])
        )
        for m in received
    ]
    assert [[(e.kind, e.message.name) for e in batch] for batch in parsed] == [
        [("created", posted["name"])],
        [("updated", posted["name"])],
        [("deleted", posted["name"])],
    ]
    created, updated, deleted = (batch[0] for batch in parsed)
    assert created.message.text == "hello all" and created.message.sender.name == chat.other
    assert updated.message.text == "hello again"
    assert deleted.message.delete_time == deleted.event_time
    pubsub.acknowledge(SUBSCRIPTION, [m.ack_id for m in received])
    assert pubsub.pull(SUBSCRIPTION) == []


def test_workspace_events_errors_map_to_the_exception_tree(chat: EventsWorld) -> None:
    events = chat.events()
    with pytest.raises(EventsNotFound):
        events.get_subscription("subscriptions/chat-spaces-missing")
    # A token without a Chat scope: Google's ACCESS_TOKEN_SCOPE_INSUFFICIENT.
    pubsub_only = chat.emu.control.add_token(chat.me, scopes=[AUTH + "pubsub"])
    with pytest.raises(EventsPermissionDenied) as scope:
        chat.events(pubsub_only["access_token"]).create_subscription(
            chat.target, MESSAGE_TYPES, TOPIC
        )
    assert (scope.value.http_status, scope.value.reason) == (
        403,
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
    )
    # Not a member of the space: a plain 403.
    foreign = str(chat.emu.control.create_space([chat.other], display_name="Not mine")["name"])
    with pytest.raises(EventsPermissionDenied) as member:
        events.create_subscription("//chat.googleapis.com/" + foreign, MESSAGE_TYPES, TOPIC)
    assert (member.value.status, member.value.reason) == ("PERMISSION_DENIED", None)
    # A topic that does not exist.
    with pytest.raises(EventsNotFound):
        events.create_subscription(chat.target, MESSAGE_TYPES, f"projects/{PROJECT}/topics/no")
    # An unknown token (and no refresh token to cure it).
    with pytest.raises(EventsAuthError):
        chat.events("ya29.unknown").list_subscriptions(MESSAGE_TYPES)
    # A malformed name never leaves the process.
    before = len(chat.log("GET", "/v1/"))
    with pytest.raises(EventsRejected) as invalid:
        events.get_subscription("chat-spaces-abc")
    assert invalid.value.status == "INVALID_ARGUMENT"
    assert len(chat.log("GET", "/v1/")) == before
    assert chat.time.sleeps == []


def test_workspace_events_5xx_is_retried(chat: EventsWorld) -> None:
    events = chat.events()
    chat.emu.control.add_fault(
        count=2, status=503, method="POST", path_regex="^/v1/subscriptions$"
    )
    sub = events.create_subscription(chat.target, MESSAGE_TYPES, TOPIC)
    assert sub.state == "ACTIVE"
    assert [r["status"] for r in chat.log("POST", "/v1/subscriptions")] == [503, 503, 200]
    assert chat.time.sleeps == [1.0, 2.0]
    chat.emu.control.add_fault(count=9, status=500, method="GET")
    with pytest.raises(EventsUnavailable) as info:
        chat.events(max_attempts=2).get_subscription(sub.name)
    assert (info.value.http_status, info.value.status) == (500, "INTERNAL")


def test_an_expired_access_token_is_refreshed_by_both_clients(chat: EventsWorld) -> None:
    refreshable = google.oauth2.credentials.Credentials(
        token=chat.token,
        refresh_token=chat.refresh_token,
        token_uri=chat.emu.url + "/token",
        client_id="client-id.apps.example",
        client_secret="not-a-real-secret",
    )
    events = WorkspaceEventsClient(
        refreshable, api_endpoint=chat.emu.url, sleep=chat.time.sleep, clock=chat.time.clock
    )
    assert chat.emu.pubsub is not None
    pubsub = PubSubClient(refreshable, api_endpoint=chat.emu.pubsub.url, sleep=chat.time.sleep)
    chat.emu.control.expire_tokens(chat.token)
    assert events.list_subscriptions(MESSAGE_TYPES) == []  # 401, refresh, retried by google-auth
    assert refreshable.token != chat.token
    chat.emu.control.expire_tokens(refreshable.token)
    assert pubsub.pull(SUBSCRIPTION) == []  # the pull's one attempt survives a refresh too
    assert len(chat.log("POST", "/token")) == 2
    assert chat.time.sleeps == []


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------

SUBSCRIPTION_JSON: dict[str, Any] = {
    "name": "subscriptions/chat-spaces-czpBQUFB",
    "uid": "a1b2",
    "targetResource": "//chat.googleapis.com/spaces/AAAA",
    "eventTypes": list(MESSAGE_TYPES),
    "notificationEndpoint": {"pubsubTopic": TOPIC},
    "payloadOptions": {"includeResource": True},
    "state": "SUSPENDED",
    "suspensionReason": "USER_SCOPE_REVOKED",
    "authority": "users/123",
    "createTime": "2026-01-01T00:00:00Z",
    "updateTime": "2026-01-01T01:00:00.5Z",
    "expireTime": "2026-01-01T04:00:00Z",
    "etag": '"abc"',
}


def test_subscription_record() -> None:
    sub = Subscription.from_api(SUBSCRIPTION_JSON)
    assert sub.name == "subscriptions/chat-spaces-czpBQUFB" and sub.uid == "a1b2"
    assert sub.event_types == MESSAGE_TYPES and sub.pubsub_topic == TOPIC
    assert sub.include_resource is True
    assert (sub.state, sub.suspension_reason) == ("SUSPENDED", "USER_SCOPE_REVOKED")
    assert sub.expire_time == datetime(2026, 1, 1, 4, tzinfo=UTC)
    assert sub.update_time == datetime(2026, 1, 1, 1, 0, 0, 500000, tzinfo=UTC)
    assert sub.space_name == "spaces/AAAA"
    bare = Subscription.from_api({"name": "subscriptions/x"})
    assert (bare.state, bare.suspension_reason, bare.expire_time) == (
        "STATE_UNSPECIFIED",
        None,
        None,
    )
    for target in ("//chat.googleapis.com/spaces/-", "//cloudidentity.googleapis.com/users/1"):
        assert (
            Subscription.from_api({**SUBSCRIPTION_JSON, "targetResource": target}).space_name
            is None
        )


def test_iam_policy_record() -> None:
    policy = IamPolicy.from_api(
        {
            "version": 1,
            "etag": "BwX=",
            "bindings": [
                {"role": "roles/pubsub.publisher", "members": ["user:a@example.com"]},
                {"role": "roles/owner", "members": [OWNER]},
            ],
        }
    )
    assert policy.members("roles/pubsub.publisher") == ("user:a@example.com",)
    assert policy.members("roles/viewer") == ()
    added = policy.with_member("roles/pubsub.publisher", CHAT_PUBLISHER)
    assert added.members("roles/pubsub.publisher") == ("user:a@example.com", CHAT_PUBLISHER)
    assert added.with_member("roles/pubsub.publisher", CHAT_PUBLISHER) is added
    assert policy.members("roles/pubsub.publisher") == ("user:a@example.com",)  # unchanged
    fresh = IamPolicy((), "ACAB").with_member("roles/pubsub.publisher", CHAT_PUBLISHER)
    assert fresh.to_api() == {
        "bindings": [{"role": "roles/pubsub.publisher", "members": [CHAT_PUBLISHER]}],
        "etag": "ACAB",
    }
    assert IamPolicy.from_api(added.to_api()) == added


def test_pubsub_message_record() -> None:
    raw = {
        "ackId": "ack-1",
        "deliveryAttempt": 3,
        "message": {
            # proto3 JSON bytes may come URL-safe and unpadded.
            "data": base64.urlsafe_b64encode(b"\xfb\xff{}").decode().rstrip("="),
            "attributes": {"ce-type": "t", "ce-id": "1"},
            "messageId": "42",
            "publishTime": "2026-01-01T00:00:00.123Z",
            "orderingKey": "k",
        },
    }
    message = PubSubMessage.from_api(raw)
    assert message.data == b"\xfb\xff{}" and message.delivery_attempt == 3
    assert dict(message.attributes) == {"ce-id": "1", "ce-type": "t"}
    with pytest.raises(TypeError):
        message.attributes["ce-type"] = "changed"  # type: ignore[index]
    assert hash(message) == hash(PubSubMessage.from_api(raw))
    empty = PubSubMessage.from_api({"ackId": "a", "message": {"messageId": "1"}})
    assert (empty.data, len(empty.attributes), empty.publish_time, empty.delivery_attempt) == (
        b"",
        0,
        None,
        None,
    )


# ------------------------------------------------------------------------------------------
# Against a scripted loopback server: redirects, Retry-After, operations that finish late or fail
# ------------------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class Scripted:
    """Answers each request with the next canned (status, body, headers); then 404."""

    responses: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    handle: ServerHandle | None = None

    @property
    def url(self) -> str:
        assert self.handle is not None
        return self.handle.url

    def answer(self, status: int, body: Any = None, **headers: str) -> None:
        self.responses.append((status, {} if body is None else body, headers))

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        raw = request.get_data()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.query_string.decode(),
                {k.lower(): v for k, v in request.headers.items()},
                json.loads(raw) if raw else None,
            )
        )
        status, body, headers = self.responses.pop(0) if self.responses else (404, {}, {})
        response = Response(json.dumps(body), status, content_type="application/json")
        for name, value in headers.items():
            response.headers[name.replace("_", "-")] = value
        return response(environ, start_response)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    server.handle = serve_in_thread(server)
    try:
        yield server
    finally:
        server.handle.stop()


@pytest.fixture
def elsewhere() -> Iterator[Scripted]:
    """Another host (port) that a redirect points to."""
    server = Scripted()
    server.handle = serve_in_thread(server)
    try:
        yield server
    finally:
        server.handle.stop()


def events_client(url: str, clock: FakeTime, **kw: Any) -> WorkspaceEventsClient:
    return WorkspaceEventsClient(
        credentials("tok-secret"), api_endpoint=url, sleep=clock.sleep, clock=clock.clock, **kw
    )


def done(response: dict[str, Any]) -> dict[str, Any]:
    return {"name": "operations/op-1", "done": True, "response": response}


def test_no_credentials_follow_a_redirect_to_another_host(
    scripted: Scripted, elsewhere: Scripted
) -> None:
    clock = FakeTime()
    scripted.answer(302, Location=f"{elsewhere.url}/v1/subscriptions/abc")
    scripted.answer(307, Location=f"{elsewhere.url}/v1/projects/p/topics/t")
    events = events_client(scripted.url, clock)
    with pytest.raises(EventsRejected) as info:
        events.get_subscription("subscriptions/abc")
    assert (info.value.reason, info.value.http_status) == ("REDIRECT", 302)
    pubsub = PubSubClient(credentials("tok-secret"), api_endpoint=scripted.url, sleep=clock.sleep)
    with pytest.raises(EventsRejected):
        pubsub.get_topic("projects/p/topics/t")
    # The API host got the token; the other host got nothing at all.
    assert [s.headers.get("authorization") for s in scripted.seen] == ["Bearer tok-secret"] * 2
    assert elsewhere.seen == []
    assert clock.sleeps == []


def test_a_429_waits_its_retry_after_and_a_long_one_is_raised(scripted: Scripted) -> None:
    clock = FakeTime()
    scripted.answer(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, Retry_After="7")
    scripted.answer(200, SUBSCRIPTION_JSON)
    events = events_client(scripted.url, clock)
    assert events.get_subscription(SUBSCRIPTION_JSON["name"]).uid == "a1b2"
    assert clock.sleeps == [7.0]
    scripted.answer(
        429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, Retry_After="300"
    )
    with pytest.raises(EventsUnavailable) as info:
        events.get_subscription(SUBSCRIPTION_JSON["name"])
    assert info.value.wait_seconds == 300.0 and info.value.status == "RESOURCE_EXHAUSTED"
    assert clock.sleeps == [7.0]  # over backoff_max_seconds: raised, not slept
    assert events.request_count == 3


def test_create_polls_an_unfinished_operation(scripted: Scripted) -> None:
    clock = FakeTime()
    scripted.answer(200, {"name": "operations/op-1", "done": False})
    scripted.answer(200, {"name": "operations/op-1"})
    scripted.answer(200, done({"@type": "type.googleapis.com/x", **SUBSCRIPTION_JSON}))
    events = events_client(scripted.url, clock, operation_poll_seconds=0.5)
    sub = events.create_subscription(
        "//chat.googleapis.com/spaces/AAAA", MESSAGE_TYPES, TOPIC, ttl_seconds=3600
    )
    assert sub == Subscription.from_api(SUBSCRIPTION_JSON)
    assert [(s.method, s.path) for s in scripted.seen] == [
        ("POST", "/v1/subscriptions"),
        ("GET", "/v1/operations/op-1"),
        ("GET", "/v1/operations/op-1"),
    ]
    assert scripted.seen[0].body == {
        "targetResource": "//chat.googleapis.com/spaces/AAAA",
        "eventTypes": list(MESSAGE_TYPES),
        "notificationEndpoint": {"pubsubTopic": TOPIC},
        "payloadOptions": {"includeResource": True},
        "ttl": "3600s",
    }
    assert clock.sleeps == [0.5, 1.0]  # the poll interval doubles


def test_an_operation_that_never_finishes_times_out(scripted: Scripted) -> None:
    clock = FakeTime()
    for _ in range(50):
        scripted.answer(200, {"name": "operations/op-2", "done": False})
    events = events_client(
        scripted.url, clock, operation_poll_seconds=1.0, operation_timeout_seconds=10.0
    )
    with pytest.raises(EventsUnavailable) as info:
        events.renew_subscription("subscriptions/abc")
    assert info.value.reason == "OPERATION_TIMEOUT"
    # Doubling from 1 s, the last wait cut to the deadline: one last look at 10 s, then out.
    assert clock.sleeps == [1.0, 2.0, 4.0, 3.0]
    assert scripted.seen[0].method == "PATCH"
    assert "updateMask=ttl" in scripted.seen[0].query and scripted.seen[0].body == {"ttl": "0s"}


def test_operation_errors_become_exceptions(scripted: Scripted) -> None:
    clock = FakeTime()
    scripted.answer(
        200,
        {
            "name": "operations/op-3",
            "done": True,
            "error": {
                "code": 9,
                "message": "The Pub/Sub topic does not let Chat publish.",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "ENDPOINT_PERMISSION_DENIED",
                    }
                ],
            },
        },
    )
    scripted.answer(
        200,
        {
            "name": "operations/op-4",
            "done": True,
            "error": {"code": 6, "message": "exists: subscriptions/the-old-one"},
        },
    )
    events = events_client(scripted.url, clock)
    with pytest.raises(EventsOperationFailed) as failed:
        events.reactivate_subscription("subscriptions/abc")
    assert (failed.value.status, failed.value.reason) == (
        "FAILED_PRECONDITION",
        "ENDPOINT_PERMISSION_DENIED",
    )
    assert "does not let Chat publish" in str(failed.value)
    assert scripted.seen[0].path == "/v1/subscriptions/abc:reactivate"
    with pytest.raises(EventsAlreadyExists) as exists:
        events.create_subscription("//chat.googleapis.com/spaces/B", MESSAGE_TYPES[:1], TOPIC)
    assert exists.value.existing == "subscriptions/the-old-one"


def test_already_exists_names_the_existing_subscription_when_google_does(
    scripted: Scripted,
) -> None:
    clock = FakeTime()
    error = {
        "code": 409,
        "status": "ALREADY_EXISTS",
        "message": "Subscription already exists.",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SUBSCRIPTION_ALREADY_EXISTS",
                "metadata": {"current_subscription": "subscriptions/chat-spaces-czpBQUFB"},
            }
        ],
    }
    scripted.answer(409, {"error": error})
    scripted.answer(409, {"error": {**error, "details": []}})
    events = events_client(scripted.url, clock)
    with pytest.raises(EventsAlreadyExists) as named:
        events.create_subscription("//chat.googleapis.com/spaces/AAAA", MESSAGE_TYPES, TOPIC)
    assert named.value.existing == "subscriptions/chat-spaces-czpBQUFB"
    assert named.value.reason == "SUBSCRIPTION_ALREADY_EXISTS"
    with pytest.raises(EventsAlreadyExists) as unnamed:
        events.create_subscription("//chat.googleapis.com/spaces/AAAA", MESSAGE_TYPES, TOPIC)
    assert unnamed.value.existing is None
    assert clock.sleeps == []  # ALREADY_EXISTS is final


def test_find_and_list_send_the_documented_filters_and_follow_pages(scripted: Scripted) -> None:
    clock = FakeTime()
    other = {**SUBSCRIPTION_JSON, "name": "subscriptions/b", "targetResource": "//x/spaces/B"}
    scripted.answer(200, {"subscriptions": [other], "nextPageToken": "p2"})
    scripted.answer(200, {"subscriptions": [SUBSCRIPTION_JSON]})
    scripted.answer(200, {})
    scripted.answer(200, {"subscriptions": [SUBSCRIPTION_JSON, other]})
    events = events_client(scripted.url, clock)
    found = events.find_subscription("//chat.googleapis.com/spaces/AAAA", MESSAGE_TYPES)
    assert found is not None and found.name == SUBSCRIPTION_JSON["name"]
    assert events.find_subscription("//chat.googleapis.com/spaces/C", MESSAGE_TYPES[:1]) is None
    assert [s.name for s in events.list_subscriptions(MESSAGE_TYPES)] == [
        SUBSCRIPTION_JSON["name"],
        "subscriptions/b",
    ]
    from urllib.parse import parse_qs

    queries = [parse_qs(s.query) for s in scripted.seen]
    types = " OR ".join(f'event_types:"{t}"' for t in MESSAGE_TYPES)
    assert queries[0]["filter"] == [
        f'({types}) AND target_resource="//chat.googleapis.com/spaces/AAAA"'
    ]
    assert queries[0]["pageSize"] == ["100"] and "pageToken" not in queries[0]
    assert queries[1]["pageToken"] == ["p2"] and queries[1]["filter"] == queries[0]["filter"]
    assert queries[2]["filter"] == [
        f'event_types:"{MESSAGE_TYPES[0]}" AND target_resource="//chat.googleapis.com/spaces/C"'
    ]
    assert queries[3]["filter"] == [types]
