"""Issue 13 acceptance, end to end: the bridge under the platforms' real rules.

`python main.py` runs as a subprocess against emulators that are as strict as Discourse and
Google Chat (emulators/FIDELITY.md); only the emulators' state is inspected.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import requests
from markdown_it import MarkdownIt

from tests.e2e.harness import BridgeFiles, BridgeProcess, run_main, wait_for
from tests.e2e.test_content import PNG
from tests.e2e.world import World

pytestmark = pytest.mark.e2e


def _ready(files: BridgeFiles) -> tuple[int, str]:
    answer = requests.get(f"{files.base_url}/readyz", timeout=5)
    return answer.status_code, answer.text


def _copies(world: World, space: str) -> list[str]:
    """The texts of the bridge's Chat copies of forum posts in `space`, in Chat's order."""
    return [
        m["text"]
        for m in world.chat_messages(space)
        if (m.get("clientAssignedMessageId") or "").startswith("client-dp-")
    ]


def _rooms(world: World, count: int) -> tuple[str, list[tuple[str, int]]]:
    (ada,) = world.add_people("Ada Lovelace")
    rooms = []
    for i in range(count):
        space = world.add_space(f"Room {i}", [ada])
        rooms.append((space, world.category(f"Room {i}")))
    return ada, rooms


@pytest.mark.parametrize(
    ("inclusive", "replies"),
    [pytest.param(False, 120, id="current-forum"), pytest.param(True, 60, id="old-forum")],
)
def test_replies_written_while_the_bridge_is_down_arrive_once_in_order(
    world: World, inclusive: bool, replies: int
) -> None:
    """The catch-up pull pages `/posts.json` without losing a post at a page boundary.

    `before` is exclusive on current forums and was inclusive on old ones (the emulator's
    `posts_before_inclusive`); webhooks fail while the bridge is down and are not retried.
    """
    world.discourse.control.settings(posts_before_inclusive=inclusive)
    _ada, rooms = _rooms(world, 3)
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": s, "discourse_category_id": c} for s, c in rooms])
    world.hook_to(files)
    bridge = BridgeProcess(files)
    topics: list[tuple[str, int]] = []
    try:
        bridge.wait_cycles(1)
        for i, (space, category) in enumerate(rooms):
            first = world.discourse.control.create_post(
                "carol",
                f"Opening post of topic number {i}",
                title=f"Topic number {i} of the downtime test",
                category_id=category,
            )
            topics.append((space, int(first["topic_id"])))
        wait_for(
            lambda: all(len(_copies(world, s)) == 1 for s, _ in topics),
            timeout=60,
            what="the three topics in Chat",
        )
        world.discourse.control.wait_deliveries_idle(10)
    finally:
        assert bridge.terminate() == 0

    # Down: every webhook fails (nothing listens) and Discourse does not retry it.
    delivered_before = len(world.discourse.control.deliveries()["deliveries"])
    plan = _reply_plan(replies) if not inclusive else [n % 3 for n in range(replies)]
    expected: dict[str, list[str]] = {space: [] for space, _ in topics}
    for n, which in enumerate(plan):
        space, topic_id = topics[which]
        text = f"Reply {n:03d} to the topic"
        world.discourse.control.create_post("carol", text, topic_id=topic_id)
        expected[space].append(text)
    world.discourse.control.wait_deliveries_idle(30)
    missed = world.discourse.control.deliveries()["deliveries"][delivered_before:]
    assert missed and all(d["status"] != 200 for d in missed)

    bridge = BridgeProcess(files)
    try:

        def arrived() -> bool:
            return all(len(_copies(world, s)) == 1 + len(expected[s]) for s, _ in topics)

        wait_for(arrived, timeout=60 + replies * 2, interval=0.5, what=f"{replies} replies")
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        bridge.kill()
    for space, _topic in topics:
        copies = _copies(world, space)[1:]
        texts = [
            next(line for line in c.splitlines() if line.startswith("Reply ")) for c in copies
        ]
        assert texts == expected[space]  # each once, in the topic's order


def _reply_plan(replies: int) -> list[int]:
    """Which topic each reply goes to: 1/3 each, with topic 1's newest reply just below the
    newest page of `/posts.json` (50 posts), which holds only topics 0 and 2.

    A pull that pages with `before=oldest - 1` on a forum whose `before` is exclusive skips
    exactly that post, and no later reply of its topic brings it back.
    """
    page = 50
    ones = replies // 3
    others = replies - page - ones  # topics 0 and 2 below the newest page, besides topic 1
    plan = [0, 2] * (others // 2) + [1] * ones + [0, 2] * (page // 2)
    assert len(plan) == replies and plan[-page - 1] == 1 and 1 not in plan[-page:]
    return plan


def test_a_dm_channel_linked_while_empty_catches_up_forum_messages(world: World) -> None:
    """The channel's high-water mark is 0: the catch-up must never target message 0."""
    (ann,) = world.add_people("Ann Lee")
    world.discourse.control.create_user(
        "annl", name="Ann Lee", email=world.people[0]["email"], trust_level=1
    )
    dm = world.add_dm([ann])
    # The first word is Ann's, in Chat: the bridge creates the channel for it, empty.
    world.say(dm, ann, "hello from Chat")
    files = world.config([{"google_space_id": dm}], poll_interval_seconds=0.5)
    # No webhook: only the chat catch-up pull can bring the forum's messages.
    bridge = BridgeProcess(files)
    try:
        channel = wait_for(lambda: _channel_with(world, "annl"), what="the DM channel")
        wait_for(lambda: len(world.channel_messages(channel)) == 1, what="the Chat message")
        api = requests.Session()
        api.headers.update({"Api-Key": "test-api-key", "Api-Username": "annl"})
        for i in range(3):
            sent = api.post(
                f"{world.discourse.url}/chat/{channel}.json", json={"message": f"f{i}"}
            )
            sent.raise_for_status()

        def copies() -> list[str]:
            texts = [m["text"] for m in world.chat_messages(dm)]
            return [t for t in texts if t.startswith("Ann Lee (@annl)")]

        wait_for(lambda: len(copies()) == 3, timeout=60, what="3 forum messages in Chat")
        assert [c.rsplit("\n", 1)[-1] for c in copies()] == ["f0", "f1", "f2"]
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        status, body = _ready(files)
        assert status == 200, body
    finally:
        bridge.kill()


def _channel_with(world: World, username: str) -> int | None:
    state = world.discourse.control.state()
    users = {u["id"]: u["username"] for u in state["users"]}
    for channel in state["chat_channels"]:
        members = {users.get(i) for i in channel["member_ids"]}
        if channel.get("chatable_type") == "DirectMessage" and username in members:
            return int(channel["id"])
    return None


def _post_with(world: World, text: str) -> dict[str, Any] | None:
    return next((p for p in world.live_posts() if text in (p.get("raw") or "")), None)


def test_a_message_written_as_the_bridge_mirrors_a_post_reaches_the_forum_promptly(
    world: World,
) -> None:
    """Freshness with a 2 s poll and the default edit settings.

    A person writes in Chat in the same second as the bridge mirrors a forum post into the
    same space: the person's message reaches Discourse within 3 cycles; an edit and a deletion
    of it within 5 cycles each.
    """
    ada, rooms = _rooms(world, 1)
    space, category = rooms[0]
    world.forum_user("carol", "Carol Danvers")
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        poll_interval_seconds=2,
    )
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        world.discourse.control.create_post(
            "carol",
            "A forum post that the bridge mirrors into Chat",
            title="Freshness of the Chat poll",
            category_id=category,
        )
        said = world.say(space, ada, "Written by Ada in the same second")
        start = bridge.completed_cycles()
        wait_for(
            lambda: len(_copies(world, space)) == 1, timeout=30, what="the forum post in Chat"
        )
        wait_for(
            lambda: _post_with(world, "Written by Ada in the same second"),
            timeout=60,
            interval=0.1,
            what="Ada's message in Discourse",
        )
        assert bridge.completed_cycles() - start <= 3

        start = bridge.completed_cycles()
        world.chat.control.edit_message(said["name"], text="Edited by Ada a moment later")
        wait_for(
            lambda: _post_with(world, "Edited by Ada a moment later"),
            timeout=60,
            interval=0.1,
            what="the edit in Discourse",
        )
        assert bridge.completed_cycles() - start <= 5

        start = bridge.completed_cycles()
        world.chat.control.delete_message(said["name"])
        wait_for(
            lambda: _post_with(world, "Edited by Ada a moment later") is None,
            timeout=60,
            interval=0.1,
            what="the deletion in Discourse",
        )
        assert bridge.completed_cycles() - start <= 5
    finally:
        bridge.kill()


def test_a_suspended_persons_message_is_parked_and_nobody_else_waits(world: World) -> None:
    ada, bob = world.add_people("Ada Lovelace", "Bob Stone")
    rooms = []
    for name in ("Room A", "Room B"):
        rooms.append((world.add_space(name, [ada, bob]), world.category(name)))
    # Both have forum accounts (matched by email); Bob's is suspended.
    world.discourse.control.create_user(
        "ada", name="Ada Lovelace", email=world.people[0]["email"], trust_level=1
    )
    world.discourse.control.create_user(
        "bob", name="Bob Stone", email=world.people[1]["email"], trust_level=1
    )
    world.discourse.control.suspend_user("bob", reason="Spamming the forum")
    (space_a, _), (space_b, _) = rooms
    world.say(space_a, ada, "Ada writes before Bob in room A")
    world.say(space_a, bob, "Bob writes while his forum account is suspended")
    world.say(space_a, ada, "Ada writes after Bob in room A")
    world.say(space_b, ada, "Ada writes in room B as well")
    files = world.config([{"google_space_id": s, "discourse_category_id": c} for s, c in rooms])
    bridge = BridgeProcess(files)
    try:
        for text in (
            "Ada writes before Bob in room A",
            "Ada writes after Bob in room A",
            "Ada writes in room B as well",
        ):
            wait_for(partial(_post_with, world, text), timeout=60, what=text)
        world.say(space_a, ada, "A later message in room A")
        wait_for(lambda: _post_with(world, "A later message in room A"), timeout=60, what="later")
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        assert _post_with(world, "Bob writes while his forum account") is None
        authors = {p["username"] for p in world.live_posts()}
        assert authors == {"ada"}  # never posted by anyone else in Bob's name
        status, body = _ready(files)
        assert status == 200, body  # one person's account is not the bridge's problem
    finally:
        assert bridge.terminate() == 0
    shown = run_main(["--config", str(files.config), "status"])
    assert "Bob writes" not in shown.stdout  # the status shows ids and reasons, not content
    assert "bob" in shown.stdout and "You are not permitted" in shown.stdout, shown.stdout

    # The operator lifts the suspension and retries: Bob's message arrives, once, as Bob's.
    world.discourse.control.unsuspend_user("bob")
    assert run_main(["--config", str(files.config), "retry"]).returncode == 0
    bridge = BridgeProcess(files)
    try:
        post = wait_for(
            partial(_post_with, world, "Bob writes while his forum account"),
            timeout=60,
            what="Bob's message after the retry",
        )
        assert post["username"] == "bob"
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        assert bridge.terminate() == 0
    assert sum("Bob writes" in (p.get("raw") or "") for p in world.live_posts()) == 1
    assert world.markers().most_common(1)[0][1] == 1  # nothing doubled


def test_a_silenced_persons_message_is_posted_by_the_bridge_when_so_configured(
    world: World,
) -> None:
    """`refused_authors: post_as_bridge`: the API user posts it, naming its author."""
    ada, carl = world.add_people("Ada Lovelace", "Carl Marsh")
    space = world.add_space("Room C", [ada, carl])
    category = world.category("Room C")
    world.discourse.control.create_user(
        "carl", name="Carl Marsh", email=world.people[1]["email"], trust_level=1
    )
    world.discourse.control.silence_user("carl", reason="Cooling off")
    opening = world.say(space, ada, "Ada opens the thread here")
    world.say(space, carl, "Carl replies while silenced", thread=opening["thread"]["name"])
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        extra_sync={"refused_authors": "post_as_bridge"},
    )
    bridge = BridgeProcess(files)
    try:
        post = wait_for(
            partial(_post_with, world, "Carl replies while silenced"),
            timeout=60,
            what="Carl's message",
        )
        assert post["username"] == "system"
        assert "Carl Marsh" in World.body(post)  # attributed to its author
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        assert bridge.terminate() == 0
    assert sum("Carl replies" in (p.get("raw") or "") for p in world.live_posts()) == 1


def test_two_quick_edits_of_a_post_both_reach_chat(world: World) -> None:
    """Within the editing grace period the second edit keeps the post's version."""
    _ada, rooms = _rooms(world, 1)
    space, category = rooms[0]
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        first = world.discourse.control.create_post(
            "carol", "The meeting is on Monday at ten.", title="When we meet next week",
            category_id=category,
        )  # fmt: skip
        wait_for(lambda: len(_copies(world, space)) == 1, timeout=30, what="the post in Chat")
        carol = _as(world, "carol")
        edit = f"{world.discourse.url}/posts/{first['id']}.json"
        carol.put(edit, json={"post": {"raw": "The meeting is on Tuesday at ten."}})
        wait_for(lambda: "Tuesday" in _copies(world, space)[0], timeout=30, what="edit 1")
        version = _post_version(world, first["id"])
        world.discourse.control.advance_clock(20)
        answer = carol.put(edit, json={"post": {"raw": "The meeting is on Tuesday at eleven."}})
        answer.raise_for_status()
        assert _post_version(world, first["id"]) == version  # the grace period kept it
        wait_for(lambda: "eleven" in _copies(world, space)[0], timeout=30, what="edit 2")
    finally:
        bridge.kill()


def _as(world: World, username: str) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Api-Key": "test-api-key", "Api-Username": username})
    return session


def _post_version(world: World, post_id: int) -> int:
    post = next(p for p in world.discourse.control.state()["posts"] if p["id"] == post_id)
    return int(post["version"])


def test_an_image_on_an_external_storage_forum_reaches_chat_without_leaking_the_key(
    world: World,
) -> None:
    _ada, rooms = _rooms(world, 1)
    space, category = rooms[0]
    world.discourse.control.settings(
        authorized_extensions="jpg|jpeg|png|gif|pdf", external_storage_cdn=True
    )
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        uploaded = _as(world, "carol").post(
            f"{world.discourse.url}/uploads.json",
            data={"upload_type": "composer"},
            files={"file": ("chart.png", PNG, "image/png")},
        )
        uploaded.raise_for_status()
        world.discourse.control.create_post(
            "carol", f"Here is the chart:\n\n![chart|1x1]({uploaded.json()['short_url']})",
            title="Sales chart for the quarter", category_id=category,
        )  # fmt: skip
        message = wait_for(
            lambda: next(
                (m for m in world.chat_messages(space) if "Here is the chart" in m["text"]), None
            ),
            timeout=30,
            what="the Chat message",
        )
        assert [a["contentName"] for a in message.get("attachment", [])] == ["chart.png"]
    finally:
        bridge.kill()
    seen = world.discourse.control.cdn_requests()["requests"]
    assert seen, "the image was not fetched from the CDN"
    for request in seen:
        sent = {name.lower() for name in request["headers"]}
        assert not sent & {"api-key", "api-username", "authorization", "cookie"}, sent


def test_a_chat_mention_labelled_link_and_bold_arrive_as_forum_markdown(world: World) -> None:
    """Chat's `text` is plain: the bridge must read `formattedText` (and its annotations)."""
    ada, bob = world.add_people("Ada Lovelace", "Bob Stone")
    space = world.add_space("Markup Room", [ada, bob])
    category = world.category("Markup Room")
    world.discourse.control.create_user(
        "bobs", name="Bob Stone", email=world.people[1]["email"], trust_level=1
    )
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        # Bob has a forum account: a mention of him must become his @username. Ada writes it as
        # the Chat UI stores it: a picked mention, a link inserted with a label, bold applied.
        world.say(space, bob, "Bob is here too")
        wait_for(lambda: _post_with(world, "Bob is here too"), timeout=30, what="Bob's post")
        said = world.say(
            space,
            ada,
            f"Hi <{bob}>, see <https://example.com/plan|the plan> and *decide today*",
        )
        assert "<" not in said["text"] and "*" not in said["text"]  # Chat's text is plain
        post = wait_for(lambda: _post_with(world, "the plan"), timeout=30, what="Ada's post")
        body = World.body(post)
        assert "@bobs" in body
        assert "**decide today**" in body
        # What a forum reader sees (CommonMark, as Discourse cooks it): the link keeps its URL.
        cooked = MarkdownIt("commonmark").render(body)
        assert '<a href="https://example.com/plan">the plan</a>' in cooked
        assert "<strong>decide today</strong>" in cooked
    finally:
        bridge.kill()


def test_forum_formatting_renders_in_chat_under_the_syntax_the_bridge_declared(
    world: World,
) -> None:
    """The Chat app default is Markdown: Chat markup sent undeclared would render wrongly."""
    _ada, rooms = _rooms(world, 1)
    space, category = rooms[0]
    world.forum_user("carol", "Carol Danvers")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1)
        world.discourse.control.create_post(
            "carol",
            "This is **bold**, this is *italic*, here is [the docs](https://example.com/docs) "
            "and `run --fast` to go.",
            title="Formatting that must survive",
            category_id=category,
        )
        message = wait_for(
            lambda: next(
                (m for m in world.chat_messages(space) if "Formatting" in m["text"]), None
            ),
            timeout=30,
            what="the post in Chat",
        )
        html = world.chat.control.rendered(message["name"])["html"]
        assert "<b>bold</b>" in html
        assert "<i>italic</i>" in html
        assert '<a href="https://example.com/docs">the docs</a>' in html
        assert "<code>run --fast</code>" in html
        assert "**" not in html and "[the docs]" not in html
    finally:
        bridge.kill()
