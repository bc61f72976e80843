"""Issue 5 acceptance, end to end: Discourse → Chat through signed webhooks, the inbox and the
catch-up pull, with `python main.py` as a subprocess."""

from __future__ import annotations

import json

import pytest
import requests

from tests.e2e.harness import (
    WEBHOOK_SECRET,
    BridgeFiles,
    BridgeProcess,
    register_bridge_account,
    wait_for,
)
from tests.e2e.world import BRIDGE_USER, World
from webhook_listener import signature_for

pytestmark = pytest.mark.e2e


def start(world: World, files: BridgeFiles) -> BridgeProcess:
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1, timeout=60)
    return bridge


def room(world: World, name: str = "Forum Room") -> tuple[str, str, int]:
    (ada,) = world.add_people("Ada Lovelace")
    space = world.add_space(name, [ada])
    category = world.category(name)
    return ada, space, category


def ready(files: BridgeFiles) -> int:
    return requests.get(f"{files.base_url}/readyz", timeout=5).status_code


def test_topic_with_replies_becomes_one_thread_and_a_chat_reply_returns_to_the_topic(
    world: World,
) -> None:
    ada, space, category = room(world)
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = start(world, files)
    try:
        world.hook_to(files)
        first = world.discourse.control.create_post(
            "carol",
            "We should move the weekly sync to Tuesdays.",
            title="Moving the weekly sync meeting",
            category_id=category,
        )
        topic_id = first["topic_id"]
        replies = ["Tuesday works for me.", "Same here, **Tuesday** it is.", "Booked the room."]
        for text in replies:
            world.discourse.control.create_post("carol", text, topic_id=topic_id)
        messages = wait_for(
            lambda: len(world.chat_messages(space)) == 4 and world.chat_messages(space),
            timeout=60,
            what="4 Chat messages",
        )
        assert len({m["thread"]["name"] for m in messages}) == 1
        assert "Moving the weekly sync meeting" in messages[0]["text"]
        assert "move the weekly sync to Tuesdays" in messages[0]["text"]
        assert "Tuesday works for me." in messages[1]["text"]
        # Discourse bold became Chat bold, as a person sees it.
        assert "<b>Tuesday</b>" in world.chat.control.rendered(messages[2]["name"])["html"]
        assert "Booked the room." in messages[3]["text"]
        for message in messages:
            assert "Carol Danvers" in message["text"] and "carol" in message["text"]
            assert message["clientAssignedMessageId"].startswith("client-dp-")

        # A reply in Chat to that thread lands in the same topic.
        world.say(space, ada, "I moved the calendar invite.", thread=messages[0]["thread"]["name"])
        wait_for(
            lambda: any(
                "I moved the calendar invite." in (p.get("raw") or "")
                for p in world.live_posts()
                if p["topic_id"] == topic_id
            ),
            timeout=60,
            what="the Chat reply in the topic",
        )
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        world.discourse.control.wait_deliveries_idle(10)
    finally:
        bridge.kill()
    # Nothing echoed: 4 bridged into Chat plus Ada's own; 4 posts plus Ada's mirrored one.
    assert len(world.chat_messages(space)) == 5
    assert len([p for p in world.live_posts() if p["topic_id"] == topic_id]) == 5


def _signed_post_body(category: int) -> bytes:
    post = {
        "id": 9999,
        "topic_id": 9999,
        "post_number": 1,
        "post_type": 1,
        "username": "mallory",
        "raw": "Forged content that must never reach Chat.",
        "created_at": "2026-11-24T10:00:00.000Z",
        "category_id": category,
        "topic_title": "Forged topic title here",
        "topic_archetype": "regular",
    }
    return json.dumps({"post": post}).encode()


def test_bad_webhooks_are_refused_and_the_service_keeps_serving(world: World) -> None:
    _ada, space, category = room(world)
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = start(world, files)
    try:
        body = _signed_post_body(category)
        good = signature_for(WEBHOOK_SECRET, body)
        headers = {
            "Content-Type": "application/json",
            "X-Discourse-Event": "post_created",
            "X-Discourse-Event-Type": "post",
            "X-Discourse-Event-Id": "1",
        }
        cases: list[tuple[dict[str, str], bytes, int]] = [
            ({}, body, 401),  # missing signature
            (
                {"X-Discourse-Event-Signature": signature_for("another-secret-123", body)},
                body,
                401,
            ),
            ({"X-Discourse-Event-Signature": "sha256=zz"}, body, 401),
            ({"X-Discourse-Event-Signature": good[7:]}, body, 401),  # no "sha256=" prefix
            ({"X-Discourse-Event-Signature": good}, body + b" ", 401),  # body changed
        ]
        for junk in (b"{not json", b"[1, 2, 3]", b"\xff\xfe"):
            cases.append(
                ({"X-Discourse-Event-Signature": signature_for(WEBHOOK_SECRET, junk)}, junk, 400)
            )
        huge = b'{"post": "' + b"x" * (3 * 1024 * 1024) + b'"}'
        cases.append(
            ({"X-Discourse-Event-Signature": signature_for(WEBHOOK_SECRET, huge)}, huge, 413)
        )
        for extra, data, expected in cases:
            answer = requests.post(
                files.webhook_url, data=data, headers={**headers, **extra}, timeout=10
            )
            assert answer.status_code == expected, (extra, data[:40], answer.text)
        assert requests.get(f"{files.base_url}/healthz", timeout=5).status_code == 200
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        bridge.kill()
    assert world.chat_messages(space) == []


def test_posts_written_while_the_bridge_is_down_arrive_once_after_restart(world: World) -> None:
    _ada, space, category = room(world)
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = start(world, files)
    assert bridge.terminate() == 0
    world.hook_to(files)  # points at a closed port: every delivery fails
    first = world.discourse.control.create_post(
        "carol",
        "Posted while the bridge was down.",
        title="Written during the outage",
        category_id=category,
    )
    for n in range(9):
        world.discourse.control.create_post(
            "carol", f"Outage reply number {n}", topic_id=first["topic_id"]
        )
    world.discourse.control.wait_deliveries_idle(10)
    deliveries = [
        d
        for d in world.discourse.control.deliveries()["deliveries"]
        if d["event_name"] == "post_created"
    ]
    assert len(deliveries) == 10 and all(d["status"] != 200 for d in deliveries)
    assert all(d["attempt"] == 1 for d in deliveries)  # Discourse did not retry
    bridge = BridgeProcess(files)
    try:
        wait_for(
            lambda: len(world.chat_messages(space)) >= 10, timeout=90, what="10 Chat messages"
        )
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        bridge.kill()
    messages = world.chat_messages(space)
    assert len(messages) == 10
    assert "Posted while the bridge was down." in messages[0]["text"]
    assert [f"Outage reply number {n}" in m["text"] for n, m in enumerate(messages[1:])] == [
        True
    ] * 9


def test_duplicated_and_reordered_webhooks_bridge_each_post_once_into_its_thread(
    world: World,
) -> None:
    _ada, space, category = room(world)
    world.forum_user("carol", "Carol Danvers")
    # A long interval: after the first catch-up, only the replayed webhooks can bring posts.
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}], poll_interval_seconds=3600
    )
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        world.discourse.control.create_webhook(
            "http://127.0.0.1:9/discourse-webhook", secret=WEBHOOK_SECRET
        )  # nothing listens there: deliveries are recorded, not received
        topics = {}
        for name in ("Alpha planning thread", "Beta planning thread"):
            first = world.discourse.control.create_post(
                "carol", f"Opening post of {name}.", title=name, category_id=category
            )
            topics[first["topic_id"]] = name
            for n in range(3):
                world.discourse.control.create_post(
                    "carol", f"{name} reply {n}", topic_id=first["topic_id"]
                )
        world.discourse.control.wait_deliveries_idle(10)
        created = [
            d
            for d in world.discourse.control.deliveries()["deliveries"]
            if d["event_name"] == "post_created"
        ]
        assert len(created) == 8
        for delivery in [*reversed(created), *created]:
            answer = requests.post(
                files.webhook_url,
                data=delivery["request_body"].encode(),
                headers=delivery["request_headers"],
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
        wait_for(lambda: len(world.chat_messages(space)) >= 8, timeout=60, what="8 Chat messages")
    finally:
        bridge.kill()
    messages = world.chat_messages(space)
    assert len(messages) == 8
    for name in topics.values():
        in_thread = {m["thread"]["name"] for m in messages if name in m["text"]}
        assert len(in_thread) == 1, name
    assert len({m["thread"]["name"] for m in messages}) == 2


def test_whispers_small_actions_private_messages_and_own_posts_never_reach_chat(
    world: World,
) -> None:
    ada, space, category = room(world)
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = start(world, files)
    try:
        world.hook_to(files)
        first = world.discourse.control.create_post(
            "carol",
            "A normal topic that should cross.",
            title="The one topic that crosses",
            category_id=category,
        )
        wait_for(
            lambda: len(world.chat_messages(space)) == 1, timeout=60, what="the topic in Chat"
        )
        topic_id = first["topic_id"]
        world.discourse.control.create_post(
            "system", "Staff-only whisper here.", topic_id=topic_id, post_type=4
        )
        world.discourse.control.create_post("system", "closed", topic_id=topic_id, post_type=3)
        world.discourse.control.create_post(
            "carol",
            "A private message, not for Chat.",
            title="Private message between two",
            archetype="private_message",
            target_usernames=["system"],
        )
        world.say(space, ada, "A Chat message that becomes a post and must not come back.")
        wait_for(
            lambda: any("must not come back" in (p.get("raw") or "") for p in world.live_posts()),
            timeout=60,
            what="the Chat message mirrored",
        )
        world.discourse.control.wait_deliveries_idle(10)
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        bridge.kill()
    texts = [m["text"] for m in world.chat_messages(space)]
    assert len(texts) == 2, texts
    assert not any("whisper" in t or "private message" in t.lower() for t in texts)


def test_readyz_turns_503_when_google_refuses_and_200_once_the_token_is_fixed(
    world: World,
) -> None:
    _ada, space, category = room(world)
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}], poll_interval_seconds=0.5
    )
    bridge = start(world, files)
    try:
        wait_for(lambda: ready(files) == 200, timeout=30, what="ready")
        world.chat.control.revoke_token()  # every refresh token
        world.chat.control.expire_tokens()  # and every access token: Google answers 401
        wait_for(lambda: ready(files) == 503, timeout=30, what="503")
        reasons = requests.get(f"{files.base_url}/readyz", timeout=5).json()["reasons"]
        assert any("Google" in r for r in reasons), reasons
        # The operator runs `python main.py auth` again: a new grant in the same token file.
        register_bridge_account(
            world.chat.control, BRIDGE_USER, world.chat.url, files.token, grant="second"
        )
        wait_for(lambda: ready(files) == 200, timeout=30, what="ready again")
    finally:
        bridge.kill()
