"""Per-topic order when webhooks are lost: the catch-up pull must not bridge a reply late.

Found by `test_faults.py` (Discourse drops 10% of its webhook deliveries there): when the webhook
of reply 2 is lost but that of reply 3 arrives, the inbox holds reply 3 first, the worker sends it
to Chat at once, and the next catch-up pull brings reply 2 after it. Chat then shows the topic's
replies out of order. This test makes that deterministic: only some deliveries reach the bridge.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.e2e.harness import WEBHOOK_SECRET, BridgeProcess, wait_for
from tests.e2e.world import World
from tests.reliability.workload import check_room_invariants, converged, mappings, setup_rooms
from webhook_listener import signature_for

pytestmark = pytest.mark.e2e


def deliver(webhook_url: str, delivery: dict[str, Any]) -> None:
    """Hand the bridge one recorded delivery, signed as Discourse would for the bridge's secret."""
    body = str(delivery["request_body"]).encode()
    headers = {
        **delivery["request_headers"],
        "X-Discourse-Event-Signature": signature_for(WEBHOOK_SECRET, body),
    }
    answer = requests.post(webhook_url, data=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text


def test_a_reply_whose_webhook_was_lost_still_lands_before_the_later_replies(
    world: World,
) -> None:
    _people, rooms = setup_rooms(world, 1)
    files = world.config(mappings(rooms), poll_interval_seconds=2.0)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        # Deliveries go nowhere; the test hands the bridge only some of them, as a lossy network.
        world.discourse.control.create_webhook("http://127.0.0.1:9/discourse-webhook", secret="x")
        first = world.discourse.control.create_post(
            "carol",
            "Opening post of the ordered topic",
            title="A topic whose replies must stay in order",
            category_id=rooms[0].category,
        )
        for n in (1, 2, 3):
            world.discourse.control.create_post(
                "dmitri", f"Ordered reply number {n} in the topic", topic_id=first["topic_id"]
            )
        world.discourse.control.wait_deliveries_idle(10)
        created = [
            d
            for d in world.discourse.control.deliveries()["deliveries"]
            if d["event_name"] == "post_created"
        ]
        assert len(created) == 4
        # The webhooks of the opening post and of reply 3 arrive; those of replies 1 and 2 are
        # lost. Signed as Discourse would have signed them for the bridge's secret.
        for delivery in (created[0], created[3]):
            deliver(files.webhook_url, delivery)
        report = wait_for(
            lambda: converged(world, rooms, 4), timeout=20, interval=0.5, what="4 posts in Chat"
        )
    except AssertionError as exc:
        problems = check_room_invariants(world, rooms).problems
        raise AssertionError("\n".join([str(exc), *problems])) from None
    finally:
        bridge.kill()
    assert report.problems == ()


def test_a_lost_reply_still_goes_first_when_a_reply_from_chat_came_in_between(
    world: World,
) -> None:
    """Found by `test_crash.py`/`test_faults.py` (full size): the bridge's own post, written from
    a Chat reply, came back as a webhook while an earlier human reply's webhook was lost; the
    topic's handled mark jumped over the gap, so the next human reply went to Chat at once and
    the lost one followed later with the pull."""
    _people, rooms = setup_rooms(world, 1)
    files = world.config(mappings(rooms), poll_interval_seconds=2.0)
    bridge = BridgeProcess(files)

    def created() -> list[dict[str, object]]:
        return [
            d
            for d in world.discourse.control.deliveries()["deliveries"]
            if d["event_name"] == "post_created"
        ]

    try:
        bridge.wait_cycles(1)
        world.discourse.control.create_webhook("http://127.0.0.1:9/discourse-webhook", secret="x")
        first = world.discourse.control.create_post(
            "carol",
            "Opening post of a topic Chat also answers",
            title="A topic with replies from both sides",
            category_id=rooms[0].category,
        )
        world.discourse.control.wait_deliveries_idle(10)
        deliver(files.webhook_url, created()[0])
        thread = wait_for(
            lambda: next(
                (
                    m.get("thread", {}).get("name")
                    for m in world.chat.control.state()["messages"].get(rooms[0].space, [])
                ),
                None,
            ),
            timeout=20,
            what="the topic's thread in Chat",
        )
        # The catch-up pull fails from here on (as in a crash window), so only webhooks count.
        world.discourse.control.add_fault(
            10_000, status=503, method="GET", path_regex=r"^/posts\.json"
        )
        # Reply 1, from the forum: its webhook is lost.
        world.discourse.control.create_post(
            "dmitri", "Forum reply one, whose webhook is lost", topic_id=first["topic_id"]
        )
        # Reply 2, from Chat: the bridge writes it as a post; its webhook comes back.
        world.chat.control.post_message(
            rooms[0].space,
            sender=world.people[0]["name"],
            text="Chat reply two, in the thread",
            thread_name=thread,
        )
        wait_for(
            lambda: len(created()) == 3, timeout=30, what="the Chat reply written to the forum"
        )
        world.discourse.control.wait_deliveries_idle(10)
        deliver(files.webhook_url, created()[2])
        # Reply 3, from the forum: its webhook arrives.
        world.discourse.control.create_post(
            "dmitri", "Forum reply three, whose webhook arrives", topic_id=first["topic_id"]
        )
        world.discourse.control.wait_deliveries_idle(10)
        deliver(files.webhook_url, created()[3])
        wait_for(
            lambda: len(world.chat.control.state()["messages"].get(rooms[0].space, [])) >= 3,
            timeout=20,
            what="reply three handled",
        )
        world.discourse.control.clear_faults()
        report = wait_for(
            lambda: converged(world, rooms, 4), timeout=20, interval=0.5, what="4 items bridged"
        )
    except AssertionError as exc:
        problems = check_room_invariants(world, rooms).problems
        raise AssertionError("\n".join([str(exc), *problems])) from None
    finally:
        bridge.kill()
    assert report.problems == ()
