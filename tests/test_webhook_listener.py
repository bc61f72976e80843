"""The webhook route verifies, parses, stores, acknowledges; health and metrics routes."""

from __future__ import annotations

import json
import logging
import resource
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbox import PostEvent, parse_webhook
from metrics import BridgeMetrics
from webhook_listener import (
    CONNECTION_LIMIT,
    WEBHOOK_PATH,
    Readiness,
    RejectionLog,
    WebhookConfigError,
    WebhookDelivery,
    WebhookServer,
    connection_limit,
    create_app,
    signature_for,
    signature_ok,
)

SECRET = "a-webhook-secret-of-some-length"
POST_BODY = {
    "post": {
        "id": 7,
        "topic_id": 3,
        "post_number": 1,
        "version": 1,
        "username": "dora",
        "created_at": "2026-11-30T10:00:00.000Z",
    }
}


class Inbox:
    def __init__(self) -> None:
        self.items: list[WebhookDelivery] = []

    def __call__(self, delivery: WebhookDelivery) -> str:
        if any(i.event_id == delivery.event_id and i.event_id for i in self.items):
            return "duplicate"
        self.items.append(delivery)
        return "queued"


def make(inbox: Inbox | None = None, **kw: Any) -> tuple[Any, Inbox]:
    inbox = inbox or Inbox()
    app = create_app(secret=kw.pop("secret", SECRET), enqueue=inbox, **kw)
    return app.test_client(), inbox


def send(client: Any, body: bytes, *, event: str = "post_created", signature: str | None = "auto",
         event_id: str = "1", content_type: str = "application/json") -> Any:  # fmt: skip
    headers = {"X-Discourse-Event": event, "X-Discourse-Event-Type": event.split("_")[0],
               "X-Discourse-Event-Id": event_id, "Content-Type": content_type}  # fmt: skip
    if signature == "auto":
        headers["X-Discourse-Event-Signature"] = signature_for(SECRET, body)
    elif signature is not None:
        headers["X-Discourse-Event-Signature"] = signature
    return client.post(WEBHOOK_PATH, data=body, headers=headers)


def test_discourse_test_vector() -> None:
    # Discourse's own test suite: this secret and body give exactly this signature.
    assert (
        signature_for("my_lovely_secret_for_web_hook", b'{"ping":"OK"}')
        == "sha256=162f107f6b5022353274eb1a7197885cfd35744d8d08e5bcea025d309386b7d6"
    )


def test_a_signed_event_is_stored_before_the_answer() -> None:
    client, inbox = make()
    body = json.dumps(POST_BODY).encode()
    answer = send(client, body)
    assert answer.status_code == 200 and answer.json["status"] == "queued"
    assert [(d.event_name, d.parsed, d.raw_body) for d in inbox.items] == [
        ("post_created", parse_webhook("post_created", POST_BODY), body.decode())
    ]
    # Parsed once, at the door: the inbox receives a typed event, not a dict.
    event = inbox.items[0].parsed.event
    assert isinstance(event, PostEvent) and event.kind == "created" and event.post.id == 7
    again = send(client, body)
    assert again.status_code == 200 and again.json["status"] == "duplicate"


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=", "sha256=00", "md5=abc", signature_for("another-secret-xyz", b"{}")],
)
def test_bad_signatures_are_401_and_store_nothing(signature: str | None) -> None:
    client, inbox = make()
    answer = send(client, json.dumps(POST_BODY).encode(), signature=signature)
    assert answer.status_code == 401
    assert inbox.items == []


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'"text"', b"null", b"\xff\xfe\x00"])
def test_bodies_that_are_not_a_json_object_are_400(body: bytes) -> None:
    client, inbox = make()
    assert send(client, body).status_code == 400
    assert inbox.items == []


def test_oversized_bodies_are_413() -> None:
    client, inbox = make(max_body_bytes=1024)
    body = json.dumps({"post": {"raw": "x" * 2000}}).encode()
    assert send(client, body).status_code == 413
    assert inbox.items == []


def test_ping_and_unknown_events_are_acknowledged_not_stored() -> None:
    client, inbox = make()
    assert send(client, b'{"ping":"OK"}', event="ping").status_code == 200
    assert send(client, b'{"user":{"id":1}}', event="user_logged_in").status_code == 200
    assert inbox.items == []


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("post_created", b'{"post":{}}'),
        ("post_edited", b'{"post":{"id":"x","topic_id":1}}'),
        ("topic_edited", b'{"topic":{"title":"no id"}}'),
        ("chat_message_created", b'{"chat_message":{"message":{"id":1,"user":[]},"channel":{}}}'),
    ],
)
def test_a_payload_without_what_its_event_needs_is_422(event: str, body: bytes) -> None:
    client, inbox = make()
    assert send(client, body, event=event).status_code == 422
    assert inbox.items == []


def test_a_store_failure_is_503() -> None:
    def broken(_delivery: WebhookDelivery) -> str:
        raise OSError("database is locked")

    client = create_app(secret=SECRET, enqueue=broken).test_client()
    assert send(client, json.dumps(POST_BODY).encode()).status_code == 503


def test_no_secret_refuses_to_start_unless_unsigned_is_allowed() -> None:
    with pytest.raises(WebhookConfigError, match="webhook_secret"):
        create_app(secret=None, enqueue=Inbox())
    client, inbox = make(secret=None, allow_unsigned=True)
    assert send(client, json.dumps(POST_BODY).encode(), signature=None).status_code == 200
    assert len(inbox.items) == 1


def test_health_readiness_and_metrics() -> None:
    state = {"ready": Readiness(True)}
    metrics = BridgeMetrics()
    metrics.watch(
        inbox_depth=lambda: 4,
        dead_letters=lambda: 1,
        parked=lambda: 2,
        requests=lambda: {"discourse": 10, "google_chat": 20},
        rate_limited=lambda: {"discourse": 1, "google_chat": 0},
    )
    metrics.bridged.labels("gchat_to_discourse").inc(3)
    client, _ = make(readiness=lambda: state["ready"], registry=metrics.registry)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    state["ready"] = Readiness(False, ("last poll failed: Google refused the credentials",))
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "Google" in answer.json["reasons"][0]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'gchat_discourse_messages_bridged_total{direction="gchat_to_discourse"} 3.0' in text
    assert "gchat_discourse_inbox_depth 4.0" in text
    assert 'gchat_discourse_requests_total{platform="google_chat"} 20.0' in text


def test_signature_ok_is_exact() -> None:
    body = b'{"a":1}'
    good = signature_for(SECRET, body)
    assert signature_ok(SECRET, body, good)
    assert signature_ok(SECRET, body, f"  {good} ")
    assert not signature_ok(SECRET, body, good.upper())
    assert not signature_ok(SECRET, body + b" ", good)
    assert not signature_ok(SECRET, body, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
    signed=st.booleans(),
    event=st.sampled_from(["post_created", "post_edited", "topic_created", "ping", "", "x" * 300]),
)
def test_no_input_makes_the_route_fail_with_5xx(body: bytes, signed: bool, event: str) -> None:
    def strict_inbox(delivery: WebhookDelivery) -> str:
        # Whatever reaches the inbox was parsed into a typed event at the door.
        assert delivery.parsed.event is not None
        return "queued"

    client = create_app(secret=SECRET, enqueue=strict_inbox).test_client()
    answer = send(client, body, event=event, signature="auto" if signed else None)
    assert answer.status_code < 500
    if not signed:
        assert answer.status_code == 401


# ---------------------------------------------------------------------------- hostile senders

LIVE_POST = POST_BODY["post"]
DELETED_POST = {**LIVE_POST, "deleted_at": "2026-11-30T11:00:00.000Z"}
LIVE_TOPIC = {"id": 3, "title": "Plans for the fair", "deleted_at": None}
CHAT_MESSAGE = {"id": 5, "message": "hi", "created_at": "2026-11-30T10:00:00.000Z",
                "user": {"id": 2, "username": "dora", "name": "Dora"}}  # fmt: skip
CHANNEL = {"id": 8}


def chat_body(**message: object) -> dict[str, Any]:
    return {"chat_message": {"message": {**CHAT_MESSAGE, **message}, "channel": CHANNEL}}


@pytest.mark.parametrize(
    ("event", "body"),
    [
        # The signature covers the body, not the X-Discourse-Event header: a captured body under
        # another name must fit that name.
        ("post_destroyed", {"topic": LIVE_TOPIC}),
        ("post_recovered", {"topic": LIVE_TOPIC}),
        ("topic_destroyed", {"post": LIVE_POST}),
        ("chat_message_trashed", {"post": LIVE_POST}),
        ("post_destroyed", {"post": LIVE_POST, "topic": LIVE_TOPIC}),
        # Discourse serializes these after the change: the body shows the state it brought.
        ("post_created", {"post": DELETED_POST}),
        ("post_created", {"post": {**LIVE_POST, "user_deleted": True}}),
        ("post_recovered", {"post": DELETED_POST}),
        ("topic_created", {"topic": {**LIVE_TOPIC, "deleted_at": "2026-11-30T11:00:00Z"}}),
        ("topic_recovered", {"topic": {**LIVE_TOPIC, "deleted_at": "2026-11-30T11:00:00Z"}}),
        ("chat_message_trashed", chat_body()),
        ("chat_message_created", chat_body(deleted_at="2026-11-30T11:00:00.000Z")),
        ("chat_message_restored", chat_body(deleted_at="2026-11-30T11:00:00.000Z")),
    ],
)
def test_a_body_that_contradicts_its_event_name_is_422(event: str, body: dict[str, Any]) -> None:
    client, inbox = make()
    assert send(client, json.dumps(body).encode(), event=event).status_code == 422
    assert inbox.items == []


@pytest.mark.parametrize(
    ("event", "body"),
    [
        # Older forums serialize a deletion's body before deleting, newer ones after: both pass,
        # and Discourse is asked before anything is deleted (sync_discourse_to_gchat).
        ("post_destroyed", {"post": LIVE_POST}),
        ("post_destroyed", {"post": DELETED_POST}),
        ("topic_destroyed", {"topic": LIVE_TOPIC}),
        ("chat_message_trashed", chat_body(deleted_at="2026-11-30T11:00:00.000Z")),
        ("chat_message_created", chat_body()),
    ],
)
def test_a_body_that_fits_its_event_name_is_stored(event: str, body: dict[str, Any]) -> None:
    client, inbox = make()
    assert send(client, json.dumps(body).encode(), event=event).status_code == 200
    assert [d.event_name for d in inbox.items] == [event]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rejected_requests_log_one_warning_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    client, _ = make(rejections=RejectionLog(interval=60, clock=clock))
    body = json.dumps(POST_BODY).encode()
    with caplog.at_level(logging.WARNING, logger="webhook_listener"):
        for _ in range(500):
            assert send(client, body, signature="sha256=00").status_code == 401
        clock.now += 59
        assert send(client, b"{", signature=signature_for(SECRET, b"{")).status_code == 400
        clock.now += 1
        assert send(client, body, signature=None).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "webhook_listener"]
    assert len(lines) == 2, lines
    assert "with 401" in lines[0] and "(0 more rejected" in lines[0]
    assert "(500 more rejected" in lines[1]


# -- the server's limits (waitress, on a loopback port) -----------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[WebhookServer, Inbox]]:
    inbox = Inbox()
    app = create_app(secret=SECRET, enqueue=inbox, max_body_bytes=64 * 1024)
    server = WebhookServer(app, "127.0.0.1", 0, max_body_bytes=64 * 1024, channel_timeout=1)
    server.start()
    try:
        yield server, inbox
    finally:
        server.stop()


def _open(server: WebhookServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_it_is_read(
    served: tuple[WebhookServer, Inbox],
) -> None:
    server, inbox = served
    with _open(server) as sock:
        sock.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {150 * 1024 * 1024}"
            "\r\n\r\n".encode()
        )
        # Not a byte of the body sent: the answer comes anyway.
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    # The limit itself still passes (Flask answers: the body is not signed).
    body = b"x" * (64 * 1024)
    url = f"http://127.0.0.1:{server.port}{WEBHOOK_PATH}"
    assert requests.post(url, data=body, timeout=5).status_code == 401
    assert inbox.items == []


def test_healthz_answers_while_200_slow_clients_hold_connections_open(
    served: tuple[WebhookServer, Inbox],
) -> None:
    server, inbox = served
    slow = [_open(server) for _ in range(200)]
    try:
        for sock in slow:
            sock.sendall(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nContent-Length: 999\r\n\r\n{{".encode())
        base = f"http://127.0.0.1:{server.port}"
        assert requests.get(f"{base}/healthz", timeout=2).status_code == 200
        body = json.dumps(POST_BODY).encode()
        headers = {"X-Discourse-Event": "post_created",
                   "X-Discourse-Event-Signature": signature_for(SECRET, body)}  # fmt: skip
        assert requests.post(f"{base}{WEBHOOK_PATH}", data=body, headers=headers,
                             timeout=2).status_code == 200  # fmt: skip
        assert len(inbox.items) == 1
        # Idle connections are closed after `channel_timeout` (1 s here, checked every 2 s).
        slow[0].settimeout(10)
        assert slow[0].recv(4096) == b""
    finally:
        for sock in slow:
            sock.close()


def test_the_connection_limit_leaves_file_descriptors_for_the_rest() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 1 <= connection_limit() <= CONNECTION_LIMIT
    if soft != resource.RLIM_INFINITY:
        assert connection_limit() <= max(1, soft // 2)
