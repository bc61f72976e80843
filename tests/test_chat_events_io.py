"""`chat_events.EventPuller` against the Pub/Sub emulator, with the real `PubSubClient`: what is
acknowledged when, and the lease on slow work (issue 15). The handler is a test function: it
stands for the sync services, which the e2e tests run for real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

import google.oauth2.credentials
import pytest

from chat_events import EventPuller
from emulators.pubsub import PubSubEmulator
from google_chat_client import SpaceMessageEvent
from google_events_client import PubSubClient
from spaces import EventOutcome
from tests.e2e.harness import wait_for

TOKEN = "operator-token"
OWNER = "user:operator@example.com"
PUBLISHER = "serviceAccount:chat-api-push@system.gserviceaccount.com"
TOPIC = "projects/test-project/topics/chat"
SUBSCRIPTION = "projects/test-project/subscriptions/bridge"
CREATED = "google.workspace.chat.message.v1.created"


def _authenticate(token: str) -> tuple[str, frozenset[str]] | None:
    if token != TOKEN:
        return None
    return OWNER, frozenset({"https://www.googleapis.com/auth/pubsub"})


@pytest.fixture
def pubsub() -> Iterator[tuple[PubSubEmulator, PubSubClient]]:
    emu = PubSubEmulator.start(authenticate=_authenticate)
    emu.state.add_project("test-project", owners=[OWNER])
    emu.state.set_config(pull_wait_seconds=0.3)
    client = PubSubClient(google.oauth2.credentials.Credentials(token=TOKEN), api_endpoint=emu.url)
    client.create_topic(TOPIC)
    policy = client.get_topic_policy(TOPIC).with_member("roles/pubsub.publisher", PUBLISHER)
    client.set_topic_policy(TOPIC, policy)
    client.create_subscription(SUBSCRIPTION, TOPIC, ack_deadline_seconds=10)
    try:
        yield emu, client
    finally:
        emu.stop()
    emu.check_errors()


def publish(emu: PubSubEmulator, space: str, number: int) -> None:
    message = {
        "name": f"{space}/messages/m{number}",
        "createTime": f"2026-12-01T12:00:0{number}Z",
        "text": f"message {number}",
        "sender": {"name": "users/1", "type": "HUMAN"},
    }
    attributes = {"ce-type": CREATED, "ce-time": f"2026-12-01T12:00:0{number}Z"}
    emu.state.publish_as(
        PUBLISHER,
        TOPIC,
        json.dumps({"message": message}).encode(),
        attributes,
        ordering_key=space,
    )


def backlog(emu: PubSubEmulator) -> tuple[int, int]:
    (sub,) = emu.state.state_json()["subscriptions"]
    return sub["undelivered"], sub["outstanding"]


class Recorder:
    """A handler that records what it was given and answers from a script."""

    def __init__(self, answers: Sequence[EventOutcome] = (), delay: float = 0.0) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.answers = list(answers)
        self.delay = delay

    def __call__(self, space: str, events: Sequence[SpaceMessageEvent]) -> EventOutcome:
        self.calls.append((space, [e.message.name for e in events]))
        if self.delay:
            time.sleep(self.delay)
        return self.answers.pop(0) if self.answers else EventOutcome.DONE


def make_puller(client: PubSubClient, handle: Recorder, **kw: object) -> EventPuller:
    seen: list[tuple[str, datetime]] = []
    return EventPuller(
        pubsub=client,
        subscription=SUBSCRIPTION,
        handle=handle,
        on_lifecycle=lambda event: None,
        on_seen=lambda space, until: seen.append((space, until)),
        stop=threading.Event(),
        **kw,  # type: ignore[arg-type]
    )


def test_each_space_is_handled_in_order_and_acknowledged_after_its_handler(
    pubsub: tuple[PubSubEmulator, PubSubClient],
) -> None:
    emu, client = pubsub
    for number in (1, 2):
        publish(emu, "spaces/A", number)
    publish(emu, "spaces/B", 3)
    handle = Recorder()
    puller = make_puller(client, handle)
    puller.process(client.pull(SUBSCRIPTION))
    assert handle.calls == [
        ("spaces/A", ["spaces/A/messages/m1", "spaces/A/messages/m2"]),
        ("spaces/B", ["spaces/B/messages/m3"]),
    ]
    assert backlog(emu) == (0, 0)
    assert puller.acknowledged == 3


def test_a_retry_is_not_acknowledged_and_comes_back_after_the_retry_delay(
    pubsub: tuple[PubSubEmulator, PubSubClient],
) -> None:
    emu, client = pubsub
    publish(emu, "spaces/A", 1)
    publish(emu, "spaces/B", 2)
    handle = Recorder([EventOutcome.RETRY])
    puller = make_puller(client, handle, retry_delay_seconds=1)
    puller.process(client.pull(SUBSCRIPTION))
    assert backlog(emu) == (0, 1)  # spaces/B acknowledged, spaces/A held for its retry
    assert client.pull(SUBSCRIPTION) == []  # not before the retry delay
    again = wait_for(lambda: client.pull(SUBSCRIPTION), timeout=10, what="the redelivery")
    assert len(again) == 1
    puller.process(again)
    assert handle.calls[-1] == ("spaces/A", ["spaces/A/messages/m1"])
    assert backlog(emu) == (0, 0)


def test_a_handler_that_keeps_failing_is_acknowledged_after_a_few_deliveries(
    pubsub: tuple[PubSubEmulator, PubSubClient],
) -> None:
    emu, client = pubsub
    publish(emu, "spaces/A", 1)

    def broken(space: str, events: Sequence[SpaceMessageEvent]) -> EventOutcome:
        raise RuntimeError("a bug in a handler")

    puller = EventPuller(
        pubsub=client,
        subscription=SUBSCRIPTION,
        handle=broken,
        on_lifecycle=lambda event: None,
        on_seen=lambda space, until: None,
        stop=threading.Event(),
        retry_delay_seconds=0,
        max_handler_failures=3,
    )
    deliveries = 0
    while backlog(emu) != (0, 0):
        received = client.pull(SUBSCRIPTION)
        deliveries += len(received)
        puller.process(received)
        assert deliveries <= 3
    assert deliveries == 3  # one blocked ordering key does not stay blocked for ever


@pytest.mark.parametrize(("lease_every", "redelivered"), [(0.3, False), (100.0, True)])
def test_slow_work_keeps_its_lease(
    pubsub: tuple[PubSubEmulator, PubSubClient], lease_every: float, redelivered: bool
) -> None:
    """The deadline (10 s, scaled to 1 s) passes while the handler works: with the lease the
    message is not delivered again; without it (the control case) it is, and the late
    acknowledgement of the first delivery counts for nothing."""
    emu, client = pubsub
    emu.state.set_config(deadline_scale=0.1)
    publish(emu, "spaces/A", 1)
    handle = Recorder(delay=2.0)
    puller = make_puller(client, handle, ack_deadline_seconds=10, lease_every_seconds=lease_every)
    puller.process(client.pull(SUBSCRIPTION))
    again = client.pull(SUBSCRIPTION)
    assert bool(again) is redelivered
    assert backlog(emu) == ((0, 1) if redelivered else (0, 0))
