"""The Workspace Events API in the Chat emulator, wired to Chat and to the Pub/Sub emulator.

Both APIs are driven through the real googleapiclient: the bundled workspaceevents v1 and
pubsub v1 discovery documents with their root URLs rewritten to the emulators. Every response
the Workspace Events service receives is validated against workspaceevents.v1.json when the
`world` fixture tears down. Facts and their sources: emulators/FIDELITY.md, section
"Google Workspace Events".
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from google.oauth2.credentials import Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError

from emulators.google_chat import ChatEmulator
from emulators.google_chat_state import parse_rfc3339
from emulators.workspace_events import CHAT_PUBLISHER, SOURCE_PREFIX
from tests.e2e.harness import wait_for
from tests.emulators.chat_contract import RecordingHttp, contract_errors, routes, validate

JSON = dict[str, Any]
AUTH = "https://www.googleapis.com/auth/"
PUBSUB_SCOPE = AUTH + "pubsub"
CREATED = "google.workspace.chat.message.v1.created"
UPDATED = "google.workspace.chat.message.v1.updated"
DELETED = "google.workspace.chat.message.v1.deleted"
MESSAGE_TYPES = [CREATED, UPDATED, DELETED]
PROJECT = "bridge-proj"
TOPIC = f"projects/{PROJECT}/topics/chat-events"
PULL = f"projects/{PROJECT}/subscriptions/bridge-pull"
SPACE = "spaces/AAAATEST"
OTHER_SPACE = "spaces/AAAAOTHER"
TARGET = "//chat.googleapis.com/" + SPACE


def _doc(api: str, url: str) -> JSON:
    text = get_static_doc(api, "v1")
    assert text is not None
    doc: JSON = json.loads(text)
    doc["rootUrl"] = doc["baseUrl"] = doc["mtlsRootUrl"] = url + "/"
    return doc


def _err(call: Any) -> tuple[int, JSON]:
    with pytest.raises(HttpError) as info:
        call.execute()
    body: JSON = json.loads(info.value.content)["error"]
    return info.value.status_code, body


@dataclass
class World:
    """Alice and Bob in two spaces; Alice owns a Pub/Sub project whose topic Chat may publish
    to, with a pull subscription on it; `events` and `pubsub` are googleapiclient services."""

    emu: ChatEmulator
    alice: str
    bob: str
    events: Any
    pubsub: Any
    chat: Any
    spec: JSON
    https: list[RecordingHttp] = field(default_factory=list)

    def service(self, token: str) -> Any:
        """A Workspace Events service acting with `token` (responses recorded for the contract)."""
        http = RecordingHttp(timeout=10)
        self.https.append(http)
        authed = AuthorizedHttp(Credentials(token=token), http=http, refresh_status_codes=())
        return build_from_document(_doc("workspaceevents", self.emu.url), http=authed)

    def pubsub_service(self, token: str) -> Any:
        authed = AuthorizedHttp(Credentials(token=token), refresh_status_codes=())
        assert self.emu.pubsub is not None
        return build_from_document(_doc("pubsub", self.emu.pubsub.url), http=authed)

    def create(self, events: Any = None, **body: Any) -> JSON:
        """Create a subscription (defaults: Alice, SPACE, message events, TOPIC) and wait."""
        body.setdefault("targetResource", TARGET)
        body.setdefault("eventTypes", MESSAGE_TYPES)
        body.setdefault("notificationEndpoint", {"pubsubTopic": TOPIC})
        op = (events or self.events).subscriptions().create(body=body).execute()
        return wait_done(events or self.events, op)["response"]

    def pull(self, count: int, timeout: float = 5.0, subscription: str = PULL) -> list[JSON]:
        """Pull and acknowledge until `count` messages arrived (or the timeout)."""
        got: list[JSON] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            answer = (
                self.pubsub.projects()
                .subscriptions()
                .pull(subscription=subscription, body={"maxMessages": 10})
                .execute()
            )
            received = answer.get("receivedMessages", [])
            if received:
                self.pubsub.projects().subscriptions().acknowledge(
                    subscription=subscription, body={"ackIds": [r["ackId"] for r in received]}
                ).execute()
            got += [r["message"] for r in received]
        return got

    def nothing_pulled(self, subscription: str = PULL) -> bool:
        assert self.emu.workspace_events is not None
        self.emu.workspace_events.flush()
        return not self.pull(1, timeout=0.3, subscription=subscription)

    def all_exchanges(self) -> list[Any]:
        return [ex for http in self.https for ex in http.exchanges]


def wait_done(events: Any, op: JSON, timeout: float = 5.0) -> JSON:
    """Poll operations.get until the operation is done (as a client must)."""
    if op.get("done"):
        return op

    def done() -> JSON | None:
        now: JSON = events.operations().get(name=op["name"]).execute()
        return now if now.get("done") else None

    return wait_for(done, timeout=timeout, interval=0.02, what=f"operation {op['name']} done")


def decode(message: JSON) -> tuple[JSON, JSON, str]:
    """(attributes, data JSON, ordering key) of a pulled Pub/Sub message."""
    data = json.loads(base64.b64decode(message["data"]))
    return message.get("attributes", {}), data, message.get("orderingKey", "")


def grant_chat_publisher(pubsub: Any, topic: str = TOPIC) -> None:
    pubsub.projects().topics().setIamPolicy(
        resource=topic,
        body={
            "policy": {
                "bindings": [{"role": "roles/pubsub.publisher", "members": [CHAT_PUBLISHER]}]
            }
        },
    ).execute()


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[World]:
    emu = chat_emulator
    assert emu.pubsub is not None
    ctl = emu.control
    ctl.configure(quotas_enabled=False)
    alice = ctl.create_user("Alice Example", name="users/1001", email="alice@example.com")["name"]
    bob = ctl.create_user("Bob Example", name="users/1002", email="bob@example.com")["name"]
    ctl.create_space([alice, bob], display_name="Bridge test", name=SPACE)
    ctl.create_space([alice, bob], display_name="Other", name=OTHER_SPACE)
    ctl.add_token(
        alice,
        access_token="alice-token",
        refresh_token="alice-refresh",
        scopes=[AUTH + "chat.messages", PUBSUB_SCOPE],
    )
    ctl.add_token(bob, access_token="bob-token", scopes=[AUTH + "chat.messages", PUBSUB_SCOPE])
    emu.pubsub.state.add_project(PROJECT, owners=["user:alice@example.com"])
    emu.pubsub.state.set_config(pull_wait_seconds=0.2)
    w = World(
        emu,
        alice,
        bob,
        None,
        None,
        None,
        json.loads(get_static_doc("workspaceevents", "v1") or "{}"),
    )
    w.events = w.service("alice-token")
    w.pubsub = w.pubsub_service("alice-token")
    w.chat = build_from_document(
        emu.discovery_document(), http=AuthorizedHttp(Credentials(token="alice-token"))
    )
    w.pubsub.projects().topics().create(name=TOPIC, body={}).execute()
    grant_chat_publisher(w.pubsub)
    w.pubsub.projects().subscriptions().create(
        name=PULL, body={"topic": TOPIC, "enableMessageOrdering": True}
    ).execute()
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


def _age(ts: str) -> float:
    """Seconds from now to `ts` (positive: in the future)."""
    return (parse_rfc3339(ts) - datetime.now(UTC)).total_seconds()


# --------------------------------------------------------------------------- create
def test_create_answers_an_operation_that_completes_with_the_subscription(world: World) -> None:
    world.emu.control.configure(operation_latency_seconds=0.3)
    op = (
        world.events.subscriptions()
        .create(
            body={
                "targetResource": TARGET,
                "eventTypes": MESSAGE_TYPES,
                "notificationEndpoint": {"pubsubTopic": TOPIC},
                "payloadOptions": {"includeResource": True},
            }
        )
        .execute()
    )
    # Not done in the answer itself (stricter reading): `done` is absent, as proto3 JSON leaves
    # out false, and the subscription is not there until the operation completes.
    assert set(op) == {"name"} and op["name"].startswith("operations/")
    assert world.emu.control.subscriptions()["subscriptions"][0]["created"] is False
    done = wait_done(world.events, op)
    sub = done["response"]
    assert done["done"] is True
    assert (
        sub.pop("@type") == "type.googleapis.com/google.apps.events.subscriptions.v1.Subscription"
    )
    assert sub["name"].startswith("subscriptions/") and sub["uid"]
    assert sub["targetResource"] == TARGET and sub["eventTypes"] == MESSAGE_TYPES
    assert sub["notificationEndpoint"] == {"pubsubTopic": TOPIC}
    assert sub["payloadOptions"] == {"includeResource": True}
    assert sub["state"] == "ACTIVE" and "suspensionReason" not in sub
    assert sub["authority"] == sub["userAuthority"] == world.alice
    assert sub["createTime"] == sub["updateTime"] and sub["etag"]
    assert "reconciling" not in sub and "ttl" not in sub
    # With resource data the maximum lifetime is 4 hours.
    assert 4 * 3600 - 60 < _age(sub["expireTime"]) <= 4 * 3600
    assert world.events.subscriptions().get(name=sub["name"]).execute() == sub
    assert validate(world.spec, "Subscription", sub) == []
    counts = world.emu.control.requests()["counts"]
    assert counts["POST /v1/subscriptions"] == 1
    assert counts["GET /v1/operations/{operation}"] >= 1
    assert counts["GET /v1/subscriptions/{subscription}"] == 1


def test_without_resource_data_the_default_lifetime_is_seven_days(world: World) -> None:
    sub = world.create(ttl="0s")
    assert 7 * 86400 - 60 < _age(sub["expireTime"]) <= 7 * 86400
    assert "payloadOptions" not in sub
    longer = world.create(world.service("bob-token"), ttl="9999999s")
    assert _age(longer["expireTime"]) <= 7 * 86400  # clamped to the maximum


def test_create_validation_errors(world: World) -> None:
    ctl = world.emu.control
    carol = ctl.create_user("Carol", name="users/1003", email="carol@example.com")["name"]
    ctl.create_space([world.bob, carol], display_name="Not Alice's", name="spaces/AAAANOTMINE")
    base: JSON = {
        "targetResource": TARGET,
        "eventTypes": [CREATED],
        "notificationEndpoint": {"pubsubTopic": TOPIC},
    }
    cases: list[tuple[JSON, int, str]] = [
        ({"targetResource": None}, 400, "INVALID_ARGUMENT"),
        ({"targetResource": "spaces/AAAATEST"}, 400, "INVALID_ARGUMENT"),
        ({"targetResource": "//chat.googleapis.com/spaces/-"}, 400, "INVALID_ARGUMENT"),
        ({"targetResource": "//chat.googleapis.com/spaces/NOPE"}, 404, "NOT_FOUND"),
        ({"targetResource": "//chat.googleapis.com/spaces/AAAANOTMINE"}, 403, "PERMISSION_DENIED"),
        ({"eventTypes": []}, 400, "INVALID_ARGUMENT"),
        ({"eventTypes": None}, 400, "INVALID_ARGUMENT"),
        (
            {"eventTypes": ["google.workspace.chat.message.v1.batchCreated"]},
            400,
            "INVALID_ARGUMENT",
        ),
        ({"eventTypes": ["google.workspace.chat.message.v1.posted"]}, 400, "INVALID_ARGUMENT"),
        (
            {"eventTypes": ["google.workspace.events.subscription.v1.expired"]},
            400,
            "INVALID_ARGUMENT",
        ),
        ({"eventTypes": [CREATED, CREATED]}, 400, "INVALID_ARGUMENT"),
        ({"notificationEndpoint": {}}, 400, "INVALID_ARGUMENT"),
        ({"notificationEndpoint": {"pubsubTopic": "chat-events"}}, 400, "INVALID_ARGUMENT"),
        (
            {"notificationEndpoint": {"pubsubTopic": f"projects/{PROJECT}/topics/missing"}},
            404,
            "NOT_FOUND",
        ),
        ({"ttl": "1h"}, 400, "INVALID_ARGUMENT"),
        ({"ttl": "-5s"}, 400, "INVALID_ARGUMENT"),
        ({"ttl": "60s", "expireTime": "2999-01-01T00:00:00Z"}, 400, "INVALID_ARGUMENT"),
        ({"expireTime": "2000-01-01T00:00:00Z"}, 400, "INVALID_ARGUMENT"),
        ({"payloadOptions": {"fieldMask": "message.text"}}, 400, "INVALID_ARGUMENT"),
        ({"payloadOptions": {"includeResource": "yes"}}, 400, "INVALID_ARGUMENT"),
        ({"driveOptions": {"includeDescendants": True}}, 400, "INVALID_ARGUMENT"),
    ]
    for change, code, status in cases:
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        got = _err(world.events.subscriptions().create(body=body))
        assert (got[0], got[1]["status"]) == (code, status), change
    # A field the Subscription schema does not have is refused by Google's JSON parser.
    raw = requests.post(
        f"{world.emu.url}/v1/subscriptions",
        json={**base, "eventTypez": [CREATED]},
        headers={"Authorization": "Bearer alice-token"},
        timeout=10,
    )
    assert raw.status_code == 400 and "Unknown name" in raw.json()["error"]["message"]
    assert world.emu.control.subscriptions()["subscriptions"] == []


def test_validate_only_previews_without_creating(world: World) -> None:
    body = {
        "targetResource": TARGET,
        "eventTypes": [CREATED],
        "notificationEndpoint": {"pubsubTopic": TOPIC},
    }
    op = world.events.subscriptions().create(body=body, validateOnly=True).execute()
    assert op["done"] is True and op["response"]["targetResource"] == TARGET
    assert "name" not in op["response"]
    assert world.emu.control.subscriptions()["subscriptions"] == []
    assert _err(world.events.operations().get(name=op["name"]))[0] == 404


def test_one_subscription_per_target_and_user(world: World) -> None:
    first = world.create()
    code, err = _err(
        world.events.subscriptions().create(
            body={
                "targetResource": TARGET,
                "eventTypes": [CREATED],
                "notificationEndpoint": {"pubsubTopic": TOPIC},
            }
        )
    )
    # Google documents the status only; the body does not name the existing subscription
    # (stricter reading): a client finds it with subscriptions.list.
    assert (code, err["status"]) == (409, "ALREADY_EXISTS")
    assert "details" not in err and first["name"].split("/")[1] not in err["message"]
    found = (
        world.events.subscriptions()
        .list(filter=f'event_types:"{CREATED}" AND target_resource="{TARGET}"')
        .execute()
    )
    assert [s["name"] for s in found["subscriptions"]] == [first["name"]]
    # Another user may subscribe to the same space; the same user to another space.
    assert world.create(world.service("bob-token"))["authority"] == world.bob
    assert world.create(targetResource="//chat.googleapis.com/" + OTHER_SPACE)


# --------------------------------------------------------------------------- list
def test_list_filter_grammar_paging_and_ownership(world: World) -> None:
    here = world.create(eventTypes=[CREATED])
    there = world.create(
        targetResource="//chat.googleapis.com/" + OTHER_SPACE, eventTypes=[UPDATED, DELETED]
    )
    bobs = world.create(world.service("bob-token"))
    subs = world.events.subscriptions()

    def names(flt: str, **kw: Any) -> list[str]:
        return [s["name"] for s in subs.list(filter=flt, **kw).execute().get("subscriptions", [])]

    assert names(f'event_types:"{CREATED}"') == [here["name"]]
    assert names(f'event_types:"{CREATED}" OR event_types:"{DELETED}"') == [
        here["name"],
        there["name"],
    ]
    both = f'(event_types:"{CREATED}" OR event_types:"{UPDATED}")'
    other = "//chat.googleapis.com/" + OTHER_SPACE
    assert names(f'{both} AND target_resource="{other}"') == [there["name"]]
    assert bobs["name"] not in names(both)  # a user lists their own subscriptions only
    page = subs.list(filter=both, pageSize=1).execute()
    assert len(page["subscriptions"]) == 1 and page["nextPageToken"]
    rest = subs.list(filter=both, pageSize=1, pageToken=page["nextPageToken"]).execute()
    assert len(rest["subscriptions"]) == 1 and "nextPageToken" not in rest
    for bad in (
        "",
        f'target_resource="{TARGET}"',
        f'event_types="{CREATED}"',
        f"event_types:{CREATED}",
        f'eventTypes:"{CREATED}"',
        f'event_types:"{CREATED}" AND event_types:"{UPDATED}"',
        f'event_types:"{CREATED}" OR event_types:"{UPDATED}" AND target_resource="{TARGET}"',
        'event_types:"google.workspace.chat.message.v1.batchCreated"',
        'event_types:"nope"',
    ):
        assert _err(subs.list(filter=bad))[1]["status"] == "INVALID_ARGUMENT", bad
    assert _err(subs.list(filter=both, pageSize=-1))[0] == 400


# --------------------------------------------------------------------------- patch, delete
def test_patch_ttl_renews_and_event_types_change(world: World) -> None:
    world.emu.control.configure(subscription_max_ttl_seconds_without_resource=1000)
    sub = world.create(ttl="10s")
    assert 0 < _age(sub["expireTime"]) <= 10
    subs = world.events.subscriptions()
    op = subs.patch(name=sub["name"], updateMask="ttl", body={"ttl": "0s"}).execute()
    renewed = wait_done(world.events, op)["response"]
    assert 990 < _age(renewed["expireTime"]) <= 1000
    assert renewed["updateTime"] > sub["updateTime"]
    op = subs.patch(name=sub["name"], updateMask="event_types", body={"eventTypes": [CREATED]})
    changed = wait_done(world.events, op.execute())["response"]
    assert changed["eventTypes"] == [CREATED] and changed["expireTime"] == renewed["expireTime"]
    for mask, body, status in (
        ("target_resource", {"targetResource": TARGET}, "INVALID_ARGUMENT"),
        ("ttl,expire_time", {"ttl": "5s"}, "INVALID_ARGUMENT"),
        ("event_types", {"eventTypes": []}, "INVALID_ARGUMENT"),
        ("ttl", {"ttl": "5s", "etag": '"stale"'}, "ABORTED"),
    ):
        assert (
            _err(subs.patch(name=sub["name"], updateMask=mask, body=body))[1]["status"] == status
        )
    assert _err(subs.patch(name="subscriptions/nope", updateMask="ttl", body={}))[0] == 404


def test_an_earlier_operation_loses_its_response_once_superseded(world: World) -> None:
    sub = world.create()
    subs = world.events.subscriptions()
    first = wait_done(
        world.events, subs.patch(name=sub["name"], updateMask="ttl", body={"ttl": "60s"}).execute()
    )
    assert "response" in world.events.operations().get(name=first["name"]).execute()
    wait_done(
        world.events, subs.patch(name=sub["name"], updateMask="ttl", body={"ttl": "90s"}).execute()
    )
    again = world.events.operations().get(name=first["name"]).execute()
    assert again == {"name": first["name"], "done": True}


def test_delete_allow_missing_etag_and_validate_only(world: World) -> None:
    sub = world.create()
    subs = world.events.subscriptions()
    assert _err(subs.delete(name=sub["name"], etag='"stale"'))[1]["status"] == "ABORTED"
    kept = subs.delete(name=sub["name"], validateOnly=True).execute()
    assert kept["done"] is True
    assert subs.get(name=sub["name"]).execute()["name"] == sub["name"]
    op = wait_done(world.events, subs.delete(name=sub["name"], etag=sub["etag"]).execute())
    assert op["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert _err(subs.get(name=sub["name"]))[0] == 404
    assert _err(subs.delete(name=sub["name"]))[0] == 404
    assert subs.delete(name=sub["name"], allowMissing=True).execute()["done"] is True
    # Bob cannot touch Alice's subscription.
    mine = world.create()
    assert _err(world.service("bob-token").subscriptions().get(name=mine["name"]))[0] == 403


# --------------------------------------------------------------------------- expiry
def test_expiry_sends_a_reminder_then_expired_and_the_subscription_is_gone(world: World) -> None:
    world.emu.control.configure(
        subscription_max_ttl_seconds_without_resource=2, reminder_lead_seconds=[5, 1]
    )
    sub = world.create()
    got = world.pull(2, timeout=6)
    assert [decode(m)[0]["ce-type"] for m in got] == [
        "google.workspace.events.subscription.v1.expirationReminder",
        "google.workspace.events.subscription.v1.expired",
    ]  # the 5 s lead is longer than the 2 s lifetime: skipped
    source = SOURCE_PREFIX + sub["name"]
    for message in got:
        attributes, data, key = decode(message)
        assert attributes["ce-source"] == attributes["ce-subject"] == source == key
        assert attributes["ce-specversion"] == "1.0"
        assert attributes["ce-datacontenttype"] == "application/json"
        assert attributes["ce-id"] and attributes["ce-time"]
        # The lifecycle guide's example payload: the subscription with snake_case fields.
        assert data["subscription"]["name"] == sub["name"]
        assert data["subscription"]["expire_time"] == sub["expireTime"]
    assert _err(world.events.subscriptions().get(name=sub["name"]))[0] == 404


def test_renewal_rearms_the_reminders(world: World) -> None:
    world.emu.control.configure(
        subscription_max_ttl_seconds_without_resource=3, reminder_lead_seconds=[2]
    )
    world.emu.control.configure(lifecycle_payload_case="camelCase")
    sub = world.create(ttl="1.5s")  # lifetime 1.5 s: the 2 s lead is skipped
    op = world.events.subscriptions().patch(name=sub["name"], updateMask="ttl", body={"ttl": "0s"})
    renewed = wait_done(world.events, op.execute())["response"]
    got = world.pull(1, timeout=3)
    _attrs, data, _ = decode(got[0])
    assert data["subscription"]["expireTime"] == renewed["expireTime"]  # camelCase switch


# --------------------------------------------------------------------------- suspension
def test_suspension_on_demand_reactivate_refused_until_fixed(world: World) -> None:
    sub = world.create()
    ctl = world.emu.control
    ctl.suspend_subscription(sub["name"], "USER_AUTHORIZATION_FAILURE")
    [event] = world.pull(1)
    attributes, data, _ = decode(event)
    assert attributes["ce-type"] == "google.workspace.events.subscription.v1.suspended"
    assert data["subscription"]["suspension_reason"] == "USER_AUTHORIZATION_FAILURE"
    got = world.events.subscriptions().get(name=sub["name"]).execute()
    assert got["state"] == "SUSPENDED" and got["suspensionReason"] == "USER_AUTHORIZATION_FAILURE"
    ctl.post_message(SPACE, world.bob, "lost while suspended")
    assert world.nothing_pulled()
    code, err = _err(world.events.subscriptions().reactivate(name=sub["name"], body={}))
    assert (code, err["status"]) == (400, "FAILED_PRECONDITION")
    assert [d["reason"] for d in err["details"]] == ["USER_AUTHORIZATION_FAILURE"]
    ctl.fix_subscription(sub["name"])
    op = world.events.subscriptions().reactivate(name=sub["name"], body={}).execute()
    active = wait_done(world.events, op)["response"]
    assert active["state"] == "ACTIVE" and "suspensionReason" not in active
    assert active["expireTime"] == sub["expireTime"]  # "maintain the original expiration date"
    ctl.post_message(SPACE, world.bob, "delivered again")
    [message] = world.pull(1)
    assert decode(message)[0]["ce-type"] == CREATED
    # Reactivating a subscription that isn't suspended is rejected.
    again = _err(world.events.subscriptions().reactivate(name=sub["name"], body={}))
    assert again[1]["status"] == "FAILED_PRECONDITION"
    assert (
        _err(world.events.subscriptions().reactivate(name="subscriptions/nope", body={}))[0] == 404
    )


def test_endpoint_permission_denied_until_the_grant_is_back(world: World) -> None:
    topics = world.pubsub.projects().topics()
    topics.setIamPolicy(resource=TOPIC, body={"policy": {"bindings": []}}).execute()
    sub = world.create()  # creation does not check the grant ("subscriptions succeed")
    world.emu.control.post_message(SPACE, world.bob, "refused by the topic")

    def suspended() -> JSON | None:
        got: JSON = world.events.subscriptions().get(name=sub["name"]).execute()
        return got if got["state"] == "SUSPENDED" else None

    assert wait_for(suspended)["suspensionReason"] == "ENDPOINT_PERMISSION_DENIED"
    assert world.nothing_pulled()  # neither the event nor the suspended lifecycle event
    err = _err(world.events.subscriptions().reactivate(name=sub["name"], body={}))[1]
    assert [d["reason"] for d in err["details"]] == ["ENDPOINT_PERMISSION_DENIED"]
    grant_chat_publisher(world.pubsub)
    op = world.events.subscriptions().reactivate(name=sub["name"], body={}).execute()
    assert wait_done(world.events, op)["response"]["state"] == "ACTIVE"
    world.emu.control.post_message(SPACE, world.bob, "accepted again")
    [message] = world.pull(1)
    assert decode(message)[1]["message"]["name"].startswith(SPACE + "/messages/")


def test_a_deleted_topic_suspends_with_endpoint_not_found(world: World) -> None:
    sub = world.create()
    world.pubsub.projects().topics().delete(topic=TOPIC).execute()
    world.emu.control.post_message(SPACE, world.bob, "nowhere to go")

    def reason() -> str | None:
        got: JSON = world.events.subscriptions().get(name=sub["name"]).execute()
        return got.get("suspensionReason")

    assert wait_for(reason) == "ENDPOINT_NOT_FOUND"
    err = _err(world.events.subscriptions().reactivate(name=sub["name"], body={}))[1]
    assert [d["reason"] for d in err["details"]] == ["ENDPOINT_NOT_FOUND"]


def test_a_revoked_grant_suspends_and_a_new_token_reactivates(world: World) -> None:
    sub = world.create()
    ctl = world.emu.control
    ctl.revoke_token(refresh_token="alice-refresh")
    ctl.post_message(SPACE, world.bob, "after the revocation")
    state = wait_for(
        lambda: [s for s in ctl.subscriptions()["subscriptions"] if s["state"] == "SUSPENDED"]
    )
    assert state[0]["suspensionReason"] == "USER_SCOPE_REVOKED"
    fresh = ctl.add_token(world.alice, scopes=[AUTH + "chat.messages.readonly"])["access_token"]
    events = world.service(fresh)
    op = events.subscriptions().reactivate(name=sub["name"], body={}).execute()
    assert wait_done(events, op)["response"]["state"] == "ACTIVE"


# --------------------------------------------------------------------------- delivery
def test_message_events_arrive_as_cloudevents(world: World) -> None:
    sub = world.create(payloadOptions={"includeResource": True})
    ctl = world.emu.control
    posted = ctl.post_message(SPACE, world.bob, "hello *team*")
    at_creation = world.chat.spaces().messages().get(name=posted["name"]).execute()
    ctl.edit_message(posted["name"], "hello again")
    at_edit = world.chat.spaces().messages().get(name=posted["name"]).execute()
    ctl.delete_message(posted["name"])
    # The subscriber's own API messages produce events too, as Google's do.
    own = world.chat.spaces().messages().create(parent=SPACE, body={"text": "mine"}).execute()
    got = world.pull(4)
    decoded = [decode(m) for m in got]
    assert [a["ce-type"] for a, _, _ in decoded] == [CREATED, UPDATED, DELETED, CREATED]
    events = (
        world.chat.spaces()
        .spaceEvents()
        .list(parent=SPACE, filter=" OR ".join(f'event_types:"{t}"' for t in MESSAGE_TYPES))
        .execute()["spaceEvents"]
    )
    source = SOURCE_PREFIX + sub["name"]
    for (attributes, _data, key), space_event in zip(decoded, events, strict=True):
        assert set(attributes) == {
            "ce-datacontenttype",
            "ce-id",
            "ce-source",
            "ce-specversion",
            "ce-subject",
            "ce-time",
            "ce-type",
        }
        assert attributes["ce-specversion"] == "1.0"
        assert attributes["ce-datacontenttype"] == "application/json"
        assert attributes["ce-source"] == source == key  # ordering key = the subscription
        assert attributes["ce-subject"] == TARGET
        # The id is the space event's name, as in Google's example, and spaceEvents.list's.
        assert attributes["ce-id"] == space_event["name"]
        assert attributes["ce-time"] == space_event["eventTime"]
    assert decoded[0][1] == {"message": at_creation}
    assert decoded[1][1] == {"message": at_edit}
    assert decoded[2][1]["message"] == {
        "name": posted["name"],
        "createTime": posted["createTime"],
        "deletionMetadata": {"deletionType": "CREATOR"},
    }
    assert decoded[3][1]["message"]["name"] == own["name"]


def test_names_only_and_field_mask_payloads(world: World) -> None:
    world.create()  # includeResource absent: names only
    bob_events = world.service("bob-token")
    bob_pubsub = world.pubsub_service("alice-token")
    bob_topic = f"projects/{PROJECT}/topics/bob-events"
    bob_pull = f"projects/{PROJECT}/subscriptions/bob-pull"
    bob_pubsub.projects().topics().create(name=bob_topic, body={}).execute()
    grant_chat_publisher(bob_pubsub, bob_topic)
    bob_pubsub.projects().subscriptions().create(
        name=bob_pull, body={"topic": bob_topic}
    ).execute()
    world.create(
        bob_events,
        notificationEndpoint={"pubsubTopic": bob_topic},
        payloadOptions={"includeResource": True, "fieldMask": "message.sender,message.createTime"},
    )
    posted = world.emu.control.post_message(SPACE, world.bob, "hi")
    [names_only] = world.pull(1)
    assert decode(names_only)[1] == {"message": {"name": posted["name"]}}
    [masked] = world.pull(1, subscription=bob_pull)
    assert decode(masked)[1] == {
        "message": {"sender": posted["sender"], "createTime": posted["createTime"]}
    }


def test_nothing_is_published_for_other_spaces_types_or_while_pending(world: World) -> None:
    ctl = world.emu.control
    ctl.configure(operation_latency_seconds=0.5)
    op = (
        world.events.subscriptions()
        .create(
            body={
                "targetResource": TARGET,
                "eventTypes": [CREATED],
                "notificationEndpoint": {"pubsubTopic": TOPIC},
            }
        )
        .execute()
    )
    posted = ctl.post_message(SPACE, world.bob, "before the operation completes")
    assert world.nothing_pulled()
    wait_done(world.events, op)
    ctl.post_message(OTHER_SPACE, world.bob, "another space")
    ctl.edit_message(posted["name"], "an edit: not subscribed")
    assert world.nothing_pulled()
    ctl.post_message(SPACE, world.bob, "now")
    assert len(world.pull(1)) == 1


# --------------------------------------------------------------------------- auth
def test_scopes_are_checked_per_event_type(world: World) -> None:
    ctl = world.emu.control
    spaces_only = ctl.add_token(world.alice, scopes=[AUTH + "chat.spaces.readonly"])
    code, err = _err(
        world.service(spaces_only["access_token"])
        .subscriptions()
        .create(
            body={
                "targetResource": TARGET,
                "eventTypes": [CREATED],
                "notificationEndpoint": {"pubsubTopic": TOPIC},
            }
        )
    )
    assert (code, err["status"]) == (403, "PERMISSION_DENIED")
    assert err["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    readonly = ctl.add_token(world.alice, scopes=[AUTH + "chat.messages.readonly"])
    sub = world.create(world.service(readonly["access_token"]), eventTypes=[CREATED])
    members_only = world.service(
        ctl.add_token(world.alice, scopes=[AUTH + "chat.memberships"])["access_token"]
    )
    assert _err(members_only.subscriptions().get(name=sub["name"]))[0] == 403
    pubsub_only = world.service(ctl.add_token(world.alice, scopes=[PUBSUB_SCOPE])["access_token"])
    assert _err(pubsub_only.operations().get(name="operations/x"))[0] == 403
    assert _err(world.service("no-such-token").subscriptions().get(name=sub["name"]))[0] == 401


def test_tokens_carry_scopes_through_refresh_and_to_pubsub(world: World) -> None:
    state = world.emu.state
    with state.lock:
        assert state.token_info("alice-token") == (
            "user:alice@example.com",
            frozenset({AUTH + "chat.messages", PUBSUB_SCOPE}),
        )
        assert state.token_info("unknown") is None
    ctl = world.emu.control
    nomail = ctl.create_user("No Mail", name="users/1009")["name"]
    token = ctl.add_token(nomail)["access_token"]
    with state.lock:
        principal, scopes = state.token_info(token) or ("", frozenset())
    assert principal == "user:1009@users.chat-emulator.example"
    assert scopes == frozenset(
        AUTH + s for s in ("chat.messages", "chat.spaces.readonly", "chat.memberships.readonly")
    )
    assert "email" not in [u for u in ctl.state()["users"] if u["name"] == nomail][0]
    answer = requests.post(
        f"{world.emu.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": "alice-refresh"},
        timeout=10,
    ).json()
    assert answer["scope"] == f"{AUTH}chat.messages {PUBSUB_SCOPE}"
    refreshed = answer["access_token"]
    with state.lock:
        assert state.token_info(refreshed) == state.token_info("alice-token")
    wider = requests.post(
        f"{world.emu.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "alice-refresh",
            "scope": AUTH + "chat.spaces",
        },
        timeout=10,
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    # The Pub/Sub emulator authenticates Chat tokens: Bob is no member of Alice's project.
    bob_ps = world.pubsub_service("bob-token")
    assert _err(bob_ps.projects().topics().get(topic=TOPIC))[0] == 403


# --------------------------------------------------------------------------- infrastructure
def test_every_served_route_is_in_the_discovery_document(world: World) -> None:
    doc_routes = routes(world.spec)
    served = [
        (method, rule.rule)
        for rule in world.emu._handle.app.url_map.iter_rules()
        if rule.rule.startswith(("/v1/subscriptions", "/v1/operations"))
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]
    assert len(served) == 7
    for method, rule in served:
        sample = rule.replace("<subscription_id>", "abc").replace("<operation_id>", "xyz")
        matches = [r for r in doc_routes if r.http_method == method and r.regex.match(sample)]
        assert matches, f"{method} {rule} is not a workspaceevents v1 method"
    ids = {r.method_id for r in doc_routes}
    assert ids == {
        "workspaceevents.operations.get",
        "workspaceevents.subscriptions.create",
        "workspaceevents.subscriptions.delete",
        "workspaceevents.subscriptions.get",
        "workspaceevents.subscriptions.list",
        "workspaceevents.subscriptions.patch",
        "workspaceevents.subscriptions.reactivate",
    }


def test_faults_and_the_request_log_cover_workspace_events(world: World) -> None:
    ctl = world.emu.control
    sub = world.create()
    ctl.clear_requests()
    ctl.add_fault(count=1, status=503, path_regex=r"^/v1/subscriptions")
    assert _err(world.events.subscriptions().get(name=sub["name"]))[0] == 503
    world.events.subscriptions().get(name=sub["name"]).execute()
    log = ctl.requests()
    assert log["counts"] == {"GET /v1/subscriptions/{subscription}": 2}
    assert [r["status"] for r in log["requests"]] == [503, 200]
    assert log["requests"][1]["user"] == world.alice


def test_reset_forgets_subscriptions_and_operations(world: World) -> None:
    world.create()
    world.emu.control.reset()
    assert world.emu.control.subscriptions() == {
        "subscriptions": [],
        "operations": [],
        "queued": 0,
    }
