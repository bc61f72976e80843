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
    events_google,
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


def acknowledgements(world: World) -> int:
    """How many acknowledge requests the Pub/Sub emulator has served."""
    counts = world.chat.pubsub.state.requests_json()["counts"]
    return sum(n for key, n in counts.items() if key.endswith(":acknowledge"))


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
        # Every message comes back (lost acknowledgements): wait until the bridge has handled
        # and acknowledged another round of redeliveries, then count.
        seen = acknowledgements(world)
        wait_for(
            lambda: acknowledgements(world) >= seen + len(names),
            timeout=30,
            what="a round of redeliveries handled",
        )
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
        # The bridge works on meanwhile (a reactivation refused), and nothing brings the message.
        attempts = bridge.log_text().count("still suspended")
        wait_for(lambda: bridge.log_text().count("still suspended") > attempts, timeout=30)
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
        wait_for(lambda: "renewed subscription of" in bridge.log_text(), timeout=10)
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


def test_a_lost_publisher_grant_is_found_named_and_healed_by_check_fix(world: World) -> None:
    """Chat cannot tell the bridge on a topic it may not publish to: the audit (once per poll
    interval) finds the suspension, the poll covers meanwhile; `check` names the fix and
    `check --fix` applies it (the grant, then the reactivation)."""
    alice, space, mapping = room(world)
    files = events_config(world, [mapping], poll_interval_seconds=3)
    owner = "user:bridge@example.com"
    project, topic = TOPIC.split("/")[1::2]
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        wait_subscribed(world, 1)
        world.chat.pubsub.state.set_iam_policy(
            owner, "topics", project, topic, {"policy": {"bindings": []}}
        )
        world.say(space, alice, "published to nobody, brought by the poll")
        wait_for(lambda: subscriptions(world, "SUSPENDED"), timeout=10, what="suspended")
        status = wait_for(
            lambda: (
                (out := run_main(["--config", str(files.config), "status"]).stdout)
                and "events: SUSPENDED (ENDPOINT_PERMISSION_DENIED)" in out
                and out
            ),
            timeout=20,
        )
        assert "check --fix" in status
        wait_for(lambda: post_with(world, "brought by the poll"), timeout=20)
        check = run_main(["--config", str(files.config), "check"])
        assert "Google Chat may not publish to" in check.stdout
        fixed = run_main(["--config", str(files.config), "check", "--fix"])
        assert "Google Chat may now publish" in fixed.stdout, fixed.stdout
        # Reactivated by `--fix`, or by the bridge's own retry in the moment after the grant.
        label = f"events subscription of {space}"
        assert f"{label} reactivated" in fixed.stdout or f"{label} ACTIVE" in fixed.stdout
        wait_for(lambda: subscriptions(world), timeout=60, what="active again")
        world.say(space, alice, "after the grant came back")
        wait_for(lambda: post_with(world, "after the grant came back"), timeout=10)
    finally:
        bridge.terminate()


def test_forum_replies_written_into_chat_come_back_as_events_and_are_not_echoed(
    world: World,
) -> None:
    alice, space, mapping = room(world)
    world.forum_user("carol", "Carol Diaz")
    files = events_config(world, [mapping])
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        wait_subscribed(world, 1)
        world.say(space, alice, "a thread the forum will answer")
        post = wait_for(lambda: post_with(world, "a thread the forum will answer"), timeout=10)
        answer = "Carol answers from the forum side of things"
        world.discourse.control.create_post("carol", answer, topic_id=post["topic_id"])
        wait_for(
            lambda: any(answer in (m.get("text") or "") for m in world.chat_messages(space)),
            timeout=10,
            what="the forum reply in Chat",
        )
        # Its `created` event reaches the bridge like any other; it must not come back.
        # Acknowledged only after its handling committed: an echo would be in the forum now.
        wait_for(lambda: backlog(world) == {"undelivered": 0, "outstanding": 0}, timeout=10)
        copies = [p for p in world.live_posts() if answer in (p.get("raw") or "")]
        assert len(copies) == 1, copies
    finally:
        bridge.terminate()


def test_a_dm_message_reaches_its_chat_channel_by_events(world: World) -> None:
    (ann,) = world.add_people("Ann Lee")
    world.discourse.control.create_user(
        "annl", name="Ann Lee", email=world.people[0]["email"], trust_level=1
    )
    dm = world.add_dm([ann])
    files = events_config(world, [{"google_space_id": dm}])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        wait_subscribed(world, 1)
        world.chat.control.clear_requests()
        world.say(dm, ann, "a direct message, in real time")

        def arrived() -> bool:
            return any(
                "a direct message, in real time" in (m.get("message") or "")
                for m in world.discourse.control.state()["chat_messages"]
            )

        wait_for(arrived, timeout=10, what="the DM in its Discourse channel")
    finally:
        bridge.terminate()


def test_a_removed_mapping_loses_its_subscription(world: World) -> None:
    _, space, mapping = room(world, "Kept")
    (bob,) = world.add_people("Bob Brown")
    other = world.add_space("Dropped", [bob])
    dropped = {"google_space_id": other, "discourse_category_id": world.category("Dropped")}
    files = events_config(world, [mapping, dropped])
    bridge = BridgeProcess(files)
    try:
        # `check --fix` made both; the bridge adopts them (and so knows them) at start.
        wait_for(lambda: bridge.log_text().count("adopted subscription") == 2, timeout=20)
    finally:
        bridge.terminate()
    files = world.config([mapping], extra_google=events_google(world))
    bridge = BridgeProcess(files)
    try:
        wait_for(
            lambda: (
                [s["targetResource"] for s in subscriptions(world)]
                == [f"//chat.googleapis.com/{space}"]
            ),
            timeout=20,
            what="only the mapped space subscribed",
        )
        wait_for(lambda: "no longer mapped" in bridge.log_text(), timeout=5)
    finally:
        bridge.terminate()
