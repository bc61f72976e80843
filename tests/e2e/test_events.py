"""Real-time Chat → Discourse through Workspace Events and a Pub/Sub pull (issue 15), end to end:
`python main.py` against the Chat emulator (with its Workspace Events API and Pub/Sub emulator)
and the Discourse emulator. The poll runs every 15 minutes, so whatever crosses after the first
cycle crossed by events."""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from tests.e2e.events_world import (
    CHAT_PUBLISHER,
    TOPIC,
    backlog,
    events_config,
    message_lists,
    subscriptions,
    wait_subscribed,
)
from tests.e2e.harness import BridgeProcess, run_main, wait_for
from tests.e2e.world import World


def post_with(world: World, text: str) -> dict[str, Any] | None:
    return next((p for p in world.live_posts() if text in (p.get("raw") or "")), None)


def room(world: World, name: str = "Events") -> tuple[str, str, dict[str, Any]]:
    (alice,) = world.add_people("Alice Archer")
    space = world.add_space(name, [alice])
    mapping = {"google_space_id": space, "discourse_category_id": world.category(name)}
    return alice, space, mapping


def test_check_names_what_is_missing_and_fix_sets_events_up(world: World) -> None:
    _, space, mapping = room(world)
    files = events_config(world, [mapping], setup=False)
    before = run_main(["--config", str(files.config), "check"])
    assert before.returncode == 1
    assert f"\u2717 Pub/Sub topic {TOPIC} does not exist" in before.stdout
    assert f"\u2717 events subscription of {space} missing" in before.stdout
    assert "gcloud pubsub topics create" in before.stdout  # the fix names the command
    fixed = run_main(["--config", str(files.config), "check", "--fix"])
    assert f"Pub/Sub topic {TOPIC} created" in fixed.stdout, fixed.stdout
    assert "Google Chat may now publish" in fixed.stdout
    assert f"events subscription of {space} created" in fixed.stdout
    after = run_main(["--config", str(files.config), "check"])
    assert after.returncode == 0, after.stdout
    assert f"events subscription of {space} ACTIVE" in after.stdout
    policy = world.chat.pubsub.state.get_iam_policy(
        "user:bridge@example.com", "topics", *TOPIC.split("/")[1::2]
    )
    assert any(
        b["role"] == "roles/pubsub.publisher" and CHAT_PUBLISHER in b["members"]
        for b in policy["bindings"]
    )


def test_messages_edits_and_deletions_cross_in_real_time_without_a_message_list(
    world: World,
) -> None:
    alice, space, mapping = room(world)
    files = events_config(world, [mapping])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        wait_subscribed(world, 1)
        world.chat.control.clear_requests()
        started = time.monotonic()
        message = world.say(space, alice, "hello in real time")
        post = wait_for(lambda: post_with(world, "hello in real time"), timeout=10)
        assert time.monotonic() - started < 10  # the next poll is 15 minutes away
        world.chat.control.edit_message(message["name"], text="hello, edited in real time")
        wait_for(lambda: post_with(world, "edited in real time"), timeout=10)
        reply = world.say(space, alice, "a reply", thread=message["thread"]["name"])
        reply_post = wait_for(lambda: post_with(world, "a reply"), timeout=10)
        assert reply_post["topic_id"] == post["topic_id"]
        world.chat.control.delete_message(reply["name"])
        wait_for(lambda: post_with(world, "a reply") is None, timeout=10)
        # Idle between safety polls: events brought everything, no messages.list was needed.
        assert message_lists(world) == 0
        assert world.markers()[message["name"]] == 1
        assert backlog(world) == {"undelivered": 0, "outstanding": 0}
    finally:
        bridge.terminate()


def publish(world: World, data: bytes, **attributes: str) -> None:
    world.chat.pubsub.state.publish_as(CHAT_PUBLISHER, TOPIC, data, attributes)


def test_bad_events_are_logged_and_acknowledged_and_the_next_one_crosses(world: World) -> None:
    alice, space, mapping = room(world)
    files = events_config(world, [mapping])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        wait_subscribed(world, 1)
        created = "google.workspace.chat.message.v1.created"
        publish(world, b"{not json", **{"ce-type": created})
        publish(world, b"{}", **{"ce-type": "com.example.unknown"})
        publish(world, json.dumps({"message": {"name": "x"}}).encode(), **{"ce-type": created})
        publish(world, b"no type at all")
        stranger = {
            "name": "spaces/UNMAPPED/messages/m1",
            "createTime": "2026-12-01T00:00:00Z",
            "text": "not ours",
            "sender": {"name": "users/9", "type": "HUMAN"},
        }
        publish(
            world,
            json.dumps({"message": stranger}).encode(),
            **{"ce-type": created, "ce-time": "2026-12-01T00:00:00Z"},
        )
        world.say(space, alice, "after the bad ones")
        wait_for(lambda: post_with(world, "after the bad ones"), timeout=10)
        wait_for(lambda: backlog(world) == {"undelivered": 0, "outstanding": 0}, timeout=10)
        log = bridge.log_text()
        assert log.count("acknowledged unused") == 4, log
        assert "events of spaces/UNMAPPED ignored: the space is not mapped" in log
        assert post_with(world, "not ours") is None
        assert bridge.proc.poll() is None
    finally:
        bridge.terminate()


def test_duplicates_shuffles_and_redeliveries_bring_each_message_once(world: World) -> None:
    alice, space, mapping = room(world)
    files = events_config(world, [mapping])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        wait_subscribed(world, 1)
        # Every message twice, in any order, and acknowledgements lost so that each comes back
        # after its (scaled) deadline as well.
        world.chat.pubsub.state.set_config(
            duplicate=True, shuffle=True, drop_acks=True, deadline_scale=0.02, seed=7
        )
        starters = [world.say(space, alice, f"topic {i}") for i in range(4)]
        replies = [
            world.say(space, alice, f"reply {i}", thread=starters[i % 4]["thread"]["name"])
            for i in range(6)
        ]
        # (Discourse refuses an edit to a post under 20 characters.)
        world.chat.control.edit_message(starters[0]["name"], text="topic 0, edited later on")
        names = [m["name"] for m in starters + replies]
        wait_for(lambda: all(world.markers()[n] >= 1 for n in names), timeout=30, what="all cross")
        wait_for(lambda: post_with(world, "topic 0, edited later on"), timeout=15)
        time.sleep(2)  # more redeliveries arrive meanwhile
        markers = world.markers()
        assert {n: markers[n] for n in names} == dict.fromkeys(names, 1)
        topics = {p["topic_id"] for p in world.live_posts() if "topic " in (p.get("raw") or "")}
        assert len(topics) == 4
        for i, reply in enumerate(replies):
            post = post_with(world, f"reply {i}")
            starter = post_with(world, "topic 0" if i % 4 == 0 else f"topic {i % 4}")
            assert post is not None and starter is not None
            assert post["topic_id"] == starter["topic_id"], reply["name"]
    finally:
        bridge.terminate()


def test_a_suspended_subscription_shows_and_resumes_by_itself_with_its_gap(
    world: World,
) -> None:
    alice, space, mapping = room(world)
    files = events_config(world, [mapping])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        (sub,) = wait_subscribed(world, 1)
        world.chat.control.suspend_subscription(sub["name"], "USER_AUTHORIZATION_FAILURE")
        status = wait_for(
            lambda: (
                (out := run_main(["--config", str(files.config), "status"]).stdout)
                and "events: SUSPENDED (USER_AUTHORIZATION_FAILURE)" in out
                and out
            ),
            timeout=15,
        )
        assert "add it back" in status  # the fix for the reason
        readyz = requests.get(f"{files.base_url}/readyz", timeout=5)
        assert readyz.status_code == 503
        assert "USER_AUTHORIZATION_FAILURE" in readyz.text
        metrics = requests.get(f"{files.base_url}/metrics", timeout=5).text
        assert 'state="SUSPENDED"' in metrics and "USER_AUTHORIZATION_FAILURE" in metrics
        world.say(space, alice, "written while suspended")
        time.sleep(1)
        assert post_with(world, "written while suspended") is None  # no events, no poll yet
        fixed_at = time.monotonic()
        world.chat.control.fix_subscription(sub["name"])
        wait_for(lambda: subscriptions(world), timeout=60, what="reactivated")
        assert time.monotonic() - fixed_at < 60
        # The gap is replayed, and events flow again.
        wait_for(lambda: post_with(world, "written while suspended"), timeout=15)
        world.say(space, alice, "after the fix")
        wait_for(lambda: post_with(world, "after the fix"), timeout=10)
        wait_for(lambda: bridge.ready(), timeout=10, what="ready again")
    finally:
        bridge.terminate()


def test_down_longer_than_the_subscription_lives_recreates_it_and_replays(
    world: World,
) -> None:
    alice, space, mapping = room(world)
    world.chat.control.configure(subscription_max_ttl_seconds=4)
    files = events_config(world, [mapping])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        (first,) = wait_subscribed(world, 1)
        kept = world.say(space, alice, "before the downtime")
        wait_for(lambda: post_with(world, "before the downtime"), timeout=10)
        time.sleep(3)  # renewed at half its life meanwhile
        assert subscriptions(world), "the bridge renewed it while running"
    finally:
        bridge.terminate()
    wait_for(lambda: not subscriptions(world), timeout=15, what="the subscription expired")
    written = [world.say(space, alice, f"while down {i}") for i in range(3)]
    world.chat.control.edit_message(kept["name"], text="before the downtime, edited meanwhile")
    bridge = BridgeProcess(files)
    try:
        (second,) = wait_subscribed(world, 1)
        assert second["name"] != first["name"]
        names = [m["name"] for m in written] + [kept["name"]]
        wait_for(lambda: all(world.markers()[n] == 1 for n in names), timeout=20)
        wait_for(lambda: post_with(world, "edited meanwhile"), timeout=20)
        markers = world.markers()
        assert [markers[n] for n in names] == [1, 1, 1, 1]
        assert "creating it again" in bridge.log_text()
    finally:
        bridge.terminate()
