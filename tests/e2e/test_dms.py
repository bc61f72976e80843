"""Issue 6 end to end: DMs and group chats <-> Discourse chat channels, and identities.

`python main.py` runs as a subprocess against both emulators; only their state is inspected.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import requests

from tests.e2e.harness import BridgeProcess, wait_for
from tests.e2e.world import BRIDGE_USER, World


def _dm_channel_with(world: World, username: str) -> int | None:
    """The DM channel whose members include `username`, as the forum holds it.

    Judged by the emulator's state, never by the bridge's database while the bridge runs: it
    may still be migrating (a read then fails with "no such table").
    """
    state = world.discourse.control.state()
    users = {u["id"]: u["username"] for u in state["users"]}
    for channel in state["chat_channels"]:
        if channel.get("chatable_type") == "DirectMessage" and username in {
            users.get(i) for i in channel["member_ids"]
        }:
            return int(channel["id"])
    return None


def _channel_of(files: Any, space: str) -> int | None:
    """The bridge's stored link (read only while the bridge is stopped)."""
    with sqlite3.connect(files.database) as db:
        row = db.execute(
            "SELECT discourse_channel_id FROM dm_channel WHERE gchat_space_name = ?", (space,)
        ).fetchone()
    return None if row is None else int(row[0])


def _members(world: World, channel_id: int) -> set[str]:
    state = world.discourse.control.state()
    users = {u["id"]: u["username"] for u in state["users"]}
    channel = next(c for c in state["chat_channels"] if c["id"] == channel_id)
    return {users[i] for i in channel["member_ids"]}


def _user_links(files: Any) -> list[tuple[str, str]]:
    with sqlite3.connect(files.database) as db:
        return db.execute(
            "SELECT gchat_user_name, discourse_username FROM user_link ORDER BY 1"
        ).fetchall()


def test_dm_and_group_chat_both_ways(world: World) -> None:
    ann, alex1, alex2 = world.add_people("Ann Lee", "Alex Kim", "Alex Kim")
    # Ann already has a forum account with her Google email: she must post as that user.
    world.discourse.control.create_user(
        "annl", name="Ann Lee", email=world.people[0]["email"], trust_level=1
    )
    # So does the first Alex; the second gets a new account of his own despite the same name.
    world.discourse.control.create_user(
        "alexk", name="Alex Kim", email=world.people[1]["email"], trust_level=1
    )
    dm = world.add_dm([ann])
    group = world.add_dm([alex1, alex2], "GROUP_CHAT")
    for i in range(20):
        world.say(dm, ann if i % 2 else BRIDGE_USER, f"dm {i}")
    for i in range(20):
        world.say(group, alex1 if i % 2 else alex2, f"group {i}" if i != 3 else "🙂")
    files = world.config([{"google_space_id": dm}, {"google_space_id": group}])
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        dm_channel = wait_for(lambda: _dm_channel_with(world, "annl"), what="the DM channel")
        group_channel = wait_for(lambda: _dm_channel_with(world, "alexk"), what="group channel")
        wait_for(lambda: bridge.ready(), what="the bridge ready")
        wait_for(lambda: len(world.channel_messages(dm_channel)) == 20, what="20 DM messages")
        wait_for(lambda: len(world.channel_messages(group_channel)) == 20, what="group messages")
        got = world.channel_messages(dm_channel)
        assert [m["message"] for m in got] == [f"dm {i}" for i in range(20)]
        assert {m["user"]["username"] for m in got[1::2]} == {"annl"}
        links = dict(_user_links(files))
        assert links[ann] == "annl"
        assert links[alex1].lower() != links[alex2].lower()
        assert _members(world, dm_channel) == {"annl", links[BRIDGE_USER]}
        assert _members(world, group_channel) == {links[BRIDGE_USER], links[alex1], links[alex2]}
        group_msgs = world.channel_messages(group_channel)
        assert links[alex1] == "alexk"
        assert [m["user"]["username"] for m in group_msgs] == [
            links[alex1] if i % 2 else links[alex2] for i in range(20)
        ]
        assert [m["message"] for m in group_msgs] == [
            f"group {i}" if i != 3 else "🙂" for i in range(20)
        ]
        assert "system" not in _members(world, dm_channel) | _members(world, group_channel)

        # Discourse -> Chat: Ann (DM) and Alex (group) write in the forum, 20 messages each;
        # the copies arrive attributed, in order, once.
        def write(username: str, channel: int, text: str) -> int:
            api = requests.Session()
            api.headers.update({"Api-Key": "test-api-key", "Api-Username": username})
            answer = api.post(f"{world.discourse.url}/chat/{channel}.json", json={"message": text})
            answer.raise_for_status()
            return int(answer.json()["message_id"])

        sent = []
        for i in range(20):
            sent.append(write("annl", dm_channel, f"f{i}"))
            write("alexk", group_channel, f"g{i}")
        # Chat's `text` is plain; the bold of the attribution line is checked as rendered below.
        expected = [f"Ann Lee (@annl) on Discourse:\nf{i}" for i in range(20)]
        expected_group = [f"Alex Kim (@alexk) on Discourse:\ng{i}" for i in range(20)]

        def copies(space: str = dm, author: str = "Ann Lee (@") -> list[str]:
            return [m["text"] for m in world.chat_messages(space) if m["text"].startswith(author)]

        wait_for(lambda: copies() == expected, timeout=90, what="20 attributed copies in Chat")
        wait_for(
            lambda: copies(group, "Alex Kim (@") == expected_group,
            timeout=90,
            what="20 attributed copies in the group chat",
        )
        api = requests.Session()
        api.headers.update({"Api-Key": "test-api-key", "Api-Username": "annl"})
        url = f"{world.discourse.url}/chat/api/channels/{dm_channel}/messages/{sent[0]}.json"
        api.put(url, json={"message": "f0 edited"}).raise_for_status()
        first_copy = next(m for m in world.chat_messages(dm) if m["text"] == expected[0])
        assert world.chat.control.rendered(first_copy["name"])["html"].startswith(
            "<b>Ann Lee</b> (@annl) on Discourse:"
        )
        wait_for(lambda: copies()[0] == "Ann Lee (@annl) on Discourse:\nf0 edited", what="edit")
        url = f"{world.discourse.url}/chat/api/channels/{dm_channel}/messages/{sent[1]}.json"
        api.delete(url).raise_for_status()
        wait_for(lambda: len(copies()) == 19, what="the trashed copy deleted")
        # The copies never come back to Discourse as new chat messages.
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        assert len(world.channel_messages(dm_channel)) == 20 + 20 - 1
        assert len(world.channel_messages(group_channel)) == 20 + 20
    except BaseException:
        bridge.kill()
        raise
    assert bridge.terminate() == 0
    before = _user_links(files)
    again = BridgeProcess(files)
    try:
        world.say(group, alex2, "after the restart")
        wait_for(lambda: len(world.channel_messages(group_channel)) == 41, what="message 41")
    finally:
        again.terminate()
    assert _user_links(files) == before
    assert _channel_of(files, group) == group_channel
    assert _channel_of(files, dm) == dm_channel
