"""Issue 17 §3, origin by sender: squatted client ids and forged origin markers change nothing.

- A Chat member with API access pre-creates messages under the client ids the bridge would give
  the next forum posts (`client-dp-<id>`, the old predictable form): every forum post still
  reaches Chat exactly once, written by the bridge, and the squatter's messages reach the forum
  like anyone's.
- A squatter who somehow knows the bridge's very id (here: the test reads the key, as only a
  leak would let anyone do): the bridge does not adopt the squatter's message, writes its copy
  under another deterministic id, finds that copy again on a retry, and the squatter's message
  reaches the forum.
- A forum user writes fake origin markers (in the middle, or at the very end of a post, naming a
  real bridged Chat message or none): the post reaches Chat.
- Crash reconciliation in Chat → Discourse adopts a marked post only when the bridge could have
  written it: a marker at the very end of a post by the expected author. A forged post carrying
  the marker of a message whose write is pending is not adopted; the message still arrives.
- The bridge's own copy of a Chat message, whose webhook comes before its link is stored, is
  not sent back; a forged post with the same marker is.
- An upgrade orphans nothing: a long post bridged under the old predictable ids is edited and
  deleted through them, its new parts get keyed ids, and nothing of it comes back.

The end-to-end cases run `python main.py`; the others drive the sync services in process, over
the real clients and both emulators, where a test can stand for a crash (a write intent left
behind, a link not stored) or for a leak of the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import pytest
import requests

import origin
from config_loader import load_config
from db import PostParts, Store
from deps import Deps
from discourse_client import DiscourseClient
from google_chat_client import GoogleChatClient
from inbox import Inbox, PostEvent, parse_webhook
from sync_discourse_to_gchat import DiscourseToGchat
from sync_gchat_to_discourse import GchatToDiscourse
from tests.e2e.harness import BridgeProcess, wait_for, write_config
from tests.e2e.world import BRIDGE_USER, World
from users import UserDirectory

pytestmark = pytest.mark.e2e


def squat(world: World, space: str, user: str, message_id: str, text: str) -> dict[str, Any]:
    """Create a message under a chosen client id through the real API, as `user`."""
    token = world.chat.control.add_token(user=user)["access_token"]

    def attempt() -> dict[str, Any] | None:
        answer = requests.post(
            f"{world.chat.url}/v1/{space}/messages",
            params={"messageId": message_id},
            json={"text": text},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        if answer.status_code == 429:
            return None  # Chat's one write a second per space: the squatter waits too
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    created: dict[str, Any] = wait_for(attempt, timeout=30, interval=0.3, what="the squat")
    return created


def next_post_id(world: World) -> int:
    return max((int(p["id"]) for p in world.discourse.control.state()["posts"]), default=0) + 1


def copies_in_chat(world: World, space: str, text: str) -> list[dict[str, Any]]:
    return [m for m in world.chat_messages(space) if text in (m.get("text") or "")]


def posts_with(world: World, text: str) -> list[dict[str, Any]]:
    return [p for p in world.live_posts() if text in (p.get("raw") or "")]


# ---------------------------------------------------------------------------- end to end


def test_squatted_client_ids_hide_neither_the_posts_nor_the_squatters_messages(
    world: World,
) -> None:
    ada, mallory = world.add_people("Ada Lovelace", "Mallory Mayhem")
    space = world.add_space("Squat Room", [ada, mallory])
    category = world.category("Squat Room")
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1, timeout=60)
        world.hook_to(files)
        first = next_post_id(world)
        notes = [f"squatter note {k}" for k in range(4)]
        ids = [f"client-dp-{first + k}" for k in range(3)] + [f"client-dp-{first}-p2"]
        held = [
            squat(world, space, mallory, message_id, note)
            for note, message_id in zip(notes, ids, strict=True)
        ]
        topic = world.discourse.control.create_post(
            "carol",
            "A topic the squatter wants to hide from Chat.",
            title="Squatting must not hide this topic",
            category_id=category,
        )
        replies = ["First reply that must cross.", "Second reply that must cross."]
        for text in replies:
            world.discourse.control.create_post("carol", text, topic_id=topic["topic_id"])
        texts = ["A topic the squatter wants to hide from Chat.", *replies]
        wait_for(
            lambda: all(copies_in_chat(world, space, t) for t in texts),
            timeout=60,
            what="the three forum posts in Chat",
        )
        wait_for(
            lambda: all(posts_with(world, n) for n in notes),
            timeout=60,
            what="the squatter's messages on the forum",
        )
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        world.discourse.control.wait_deliveries_idle(10)
    finally:
        bridge.kill()
    for text in texts:
        (copy,) = copies_in_chat(world, space, text)
        assert copy["sender"]["name"] == BRIDGE_USER
        assert copy["clientAssignedMessageId"] not in ids
    for note, message in zip(notes, held, strict=True):
        (post,) = posts_with(world, note)
        assert origin.trailing_origin_marker(post["raw"]) == message["name"]
    # Nothing echoed either way: 3 copies plus 4 squatter messages in Chat, and each forum post
    # is there once (the bridge's copies in Chat did not come back).
    assert len(world.chat_messages(space)) == 7
    for text in texts:
        assert len(posts_with(world, text)) == 1


def test_forged_markers_in_human_posts_do_not_stop_them(world: World) -> None:
    (ada,) = world.add_people("Ada Lovelace")
    space = world.add_space("Marker Room", [ada])
    category = world.category("Marker Room")
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1, timeout=60)
        world.hook_to(files)
        said = world.say(space, ada, "A real Chat message that reaches the forum.")
        wait_for(
            lambda: posts_with(world, "A real Chat message that reaches the forum."),
            timeout=60,
            what="Ada's message on the forum",
        )
        real = origin.origin_marker(said["name"])
        fake = origin.origin_marker(f"{space}/messages/forged.one")
        topic = world.discourse.control.create_post(
            "carol",
            f"A forged marker {fake} in the middle of a post.",
            title="Forged origin markers must not hide posts",
            category_id=category,
        )
        forged = {
            "A reply ending with a forged marker.": fake,
            "A reply ending with the marker of a real bridged message.": real,
        }
        for text, marker in forged.items():
            world.discourse.control.create_post(
                "carol", f"{text}\n\n{marker}", topic_id=topic["topic_id"]
            )
        texts = ["A forged marker", *forged]
        wait_for(
            lambda: all(copies_in_chat(world, space, t) for t in texts),
            timeout=60,
            what="the posts with forged markers in Chat",
        )
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        world.discourse.control.wait_deliveries_idle(10)
    finally:
        bridge.kill()
    for text in texts:
        assert len(copies_in_chat(world, space, text)) == 1
    # Ada's message crossed once, and its forum copy did not come back.
    assert len(copies_in_chat(world, space, "A real Chat message that reaches")) == 1


# ---------------------------------------------------------------------------- in process


@dataclass
class Rig:
    world: World
    space: str
    category: int
    store: Store
    deps: Deps

    def g2d(self) -> GchatToDiscourse:
        return GchatToDiscourse(self.deps)

    def d2g(self) -> DiscourseToGchat:
        return DiscourseToGchat(self.deps)


@pytest.fixture
def rig(world: World, tmp_path: Path) -> Iterator[Rig]:
    world.chat.control.configure(time_scale=50)
    ada, mallory = world.add_people("Ada Lovelace", "Mallory Mayhem")
    space = world.add_space("Hostile Room", [ada, mallory])
    category = world.category("Hostile Room")
    world.forum_user("carol", "Carol Danvers")
    world.forum_user("mallory", "Mallory Forum")
    files = write_config(
        tmp_path / "rig",
        chat_url=world.chat.url,
        discourse_url=world.discourse.url,
        mappings=[{"google_space_id": space, "discourse_category_id": category}],
    )
    config = load_config(files.config)
    token = world.chat.control.add_token(user=BRIDGE_USER)["access_token"]
    chat = GoogleChatClient(
        google.oauth2.credentials.Credentials(token=token),
        api_endpoint=world.chat.url,
        write_interval_seconds=0.02,
    )
    discourse = DiscourseClient(world.discourse.url, "test-api-key", "system")
    store = Store(str(tmp_path / "rig.sqlite"))
    users = UserDirectory(
        store, discourse, chat, api_username="system", email_domain="users.noreply.invalid"
    )
    deps = Deps(config, store, chat, discourse, users, Inbox(store))
    try:
        yield Rig(world, space, category, store, deps)
    finally:
        store.close()


def _forum_post(rig: Rig, post: dict[str, Any]) -> PostEvent:
    """The post as its `post_created` webhook carries it (with its topic's title and category)."""
    topic = next(t for t in rig.world.topics() if t["id"] == post["topic_id"])
    body = {
        "post": {
            **post,
            "topic_title": topic["title"],
            "category_id": topic["category_id"],
            "topic_archetype": "regular",
        }
    }
    event = parse_webhook("post_created", body).event
    assert isinstance(event, PostEvent)
    return event


def test_crash_reconciliation_adopts_no_forged_post(rig: Rig) -> None:
    world, space = rig.world, rig.space
    ada = world.people[0]["name"]
    g2d = rig.g2d()
    root = world.say(space, ada, "The thread's first message, bridged normally.")
    assert g2d.poll_once().mirrored == 1
    (first,) = posts_with(world, "The thread's first message, bridged normally.")
    reply = world.say(space, ada, "A reply whose write crashed.", thread=root["thread"]["name"])
    # The bridge recorded its intent, then died before Discourse answered.
    rig.store.begin_write(reply["name"])
    forged = [
        f"Mallory's post pretending to be the copy.\n\n{origin.origin_marker(reply['name'])}",
        f"{origin.origin_marker(reply['name'])}\n\nA marker at the start does not count.",
    ]
    for raw in forged:
        world.discourse.control.create_post("mallory", raw, topic_id=first["topic_id"])
    assert rig.g2d().poll_once().mirrored == 1
    copies = posts_with(world, "A reply whose write crashed.")
    assert len(copies) == 1 and copies[0]["username"] != "mallory"
    assert not rig.store.has_pending_write(reply["name"])
    assert rig.store.post_for_message(reply["name"]) == copies[0]["id"]


def test_a_taken_keyed_id_is_not_adopted_and_the_copy_is_found_again(rig: Rig) -> None:
    world, space = rig.world, rig.space
    mallory = world.people[1]["name"]
    d2g = rig.d2g()
    topic = world.discourse.control.create_post(
        "carol",
        "The topic bridged before anyone squats.",
        title="A topic to reply in",
        category_id=rig.category,
    )
    d2g.handle_event(_forum_post(rig, topic))  # the bridge writes once: it knows its account
    reply = world.discourse.control.create_post(
        "carol", "A reply whose id was taken first.", topic_id=topic["topic_id"]
    )
    # Only a leak of the key could tell anyone this id; the bridge must still not adopt it.
    ids = origin.ClientIds(rig.store.client_id_key())
    wanted = ids.for_post(int(reply["id"]))
    taken = squat(world, space, mallory, wanted, "Mallory's message under the bridge's id.")
    d2g.handle_event(_forum_post(rig, reply))
    (copy,) = copies_in_chat(world, space, "A reply whose id was taken first.")
    assert copy["sender"]["name"] == BRIDGE_USER
    assert copy["clientAssignedMessageId"] == ids.alternates(wanted)[0]
    assert rig.store.message_for_post(int(reply["id"])) == copy["name"] != taken["name"]

    # A crash after the write, before the link: the retry finds the copy, writes no second.
    rig.store.unlink_message(copy["name"])
    rig.d2g().handle_event(_forum_post(rig, reply))
    assert len(copies_in_chat(world, space, "A reply whose id was taken first.")) == 1
    assert rig.store.message_for_post(int(reply["id"])) == copy["name"]

    # The squatter's message is a person's message: it reaches the forum; the copies do not.
    g2d = rig.g2d()
    assert g2d.poll_once().ok
    assert len(posts_with(world, "Mallory's message under the bridge's id.")) == 1
    assert posts_with(world, "A reply whose id was taken first.") == [
        p for p in world.live_posts() if p["id"] == reply["id"]
    ]


def test_the_bridges_own_post_is_not_sent_back_before_its_link_is_stored(rig: Rig) -> None:
    """The webhook of a post the bridge just wrote from Chat may come before the link: its
    trailing marker counts, by the account the bridge writes the message as, not by anyone
    else's."""
    world, space = rig.world, rig.space
    ada = world.people[0]["name"]
    root = world.say(space, ada, "Ada's first message makes her forum account.")
    assert rig.g2d().poll_once().mirrored == 1
    (first,) = posts_with(world, "Ada's first message makes her forum account.")
    account = rig.store.user_for_gchat(ada)
    assert account is not None and first["username"] == account.discourse_username
    reply = world.say(space, ada, "Ada's reply, being written.", thread=root["thread"]["name"])
    # The bridge is writing it right now: the post exists, its link is not stored yet.
    marker = origin.origin_marker(reply["name"])
    copy = world.discourse.control.create_post(
        account.discourse_username,
        f"Ada's reply, being written.\n\n{marker}",
        topic_id=first["topic_id"],
    )
    forged = world.discourse.control.create_post(
        "mallory", f"Mallory copies the marker.\n\n{marker}", topic_id=first["topic_id"]
    )
    d2g = rig.d2g()
    d2g.handle_event(_forum_post(rig, copy))
    echoes = [
        m for m in copies_in_chat(world, space, "being written") if m["sender"]["name"] != ada
    ]
    assert echoes == []
    d2g.handle_event(_forum_post(rig, forged))
    assert len(copies_in_chat(world, space, "Mallory copies the marker.")) == 1


def test_messages_written_before_the_ids_were_keyed_keep_working(rig: Rig) -> None:
    """An upgrade re-bridges and orphans nothing: a long post bridged by the old version under
    `client-dp-<id>` and `client-dp-<id>-p2` is edited and deleted through those ids; when it
    grows, its later parts move to keyed ids (a new part never gets a predictable one)."""
    world, space = rig.world, rig.space
    chat = rig.deps.chat
    topic = world.discourse.control.create_post(
        "carol", "Bridged by the old version.", title="An old long topic", category_id=rig.category
    )
    post_id, topic_id = int(topic["id"]), int(topic["topic_id"])
    # What the old version left behind: two parts under predictable ids, linked.
    first = chat.create_message(space, "old part one", message_id=f"client-dp-{post_id}")
    thread = first.thread_name or first.name
    chat.create_message(
        space, "old part two", message_id=f"client-dp-{post_id}-p2", thread_name=thread
    )
    rig.store.link_thread(thread, topic_id, space)
    rig.store.link_message(
        first.name,
        post_id,
        gchat_thread_name=thread,
        discourse_topic_id=topic_id,
        origin="discourse",
        content_hash=origin.content_hash("old part one\nold part two"),
    )
    rig.store.set_post_parts(post_id, PostParts(f"client-dp-{post_id}", 2))
    # The upgraded bridge has not learnt its account yet: its old messages are linked, so the
    # poll mirrors nothing back.
    assert rig.g2d().poll_once().mirrored == 0

    # The post grows to three parts.
    long_raw = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(90))
    edited = _forum_post(rig, {**topic, "raw": long_raw, "version": 2})
    rig.d2g().handle_event(PostEvent("edited", edited.post))
    ids = origin.ClientIds(rig.store.client_id_key())
    by_id = {m.get("clientAssignedMessageId"): m for m in world.chat_messages(space)}
    keyed = [ids.for_part(ids.for_post(post_id), n) for n in (2, 3)]
    assert set(by_id) == {f"client-dp-{post_id}", *keyed}  # the old part two moved
    assert "paragraph 0" in by_id[f"client-dp-{post_id}"]["text"]
    assert rig.store.post_parts(post_id) == PostParts(ids.for_post(post_id), 3)
    assert rig.g2d().poll_once().mirrored == 0  # the new parts are the bridge's too

    # Deleted in Discourse: every part goes, the one under the old id included.
    world.discourse.control.delete_post(post_id)
    deleted = _forum_post(rig, {**topic, "raw": long_raw, "version": 2})
    rig.d2g().handle_event(PostEvent("destroyed", deleted.post))
    assert world.chat_messages(space) == []
