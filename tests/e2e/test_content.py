"""Issue 7 acceptance (items 2-4), end to end: edits, deletions and attachments both ways, with
`python main.py` as a subprocess against both emulators."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from discourse_client import DiscourseClient
from tests.e2e.harness import BridgeFiles, BridgeProcess, wait_for
from tests.e2e.world import World

pytestmark = pytest.mark.e2e

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def start(files: BridgeFiles) -> BridgeProcess:
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1, timeout=60)
    return bridge


def room(world: World, name: str) -> tuple[str, str, int, BridgeFiles]:
    (ada,) = world.add_people("Ada Lovelace")
    space = world.add_space(name, [ada])
    category = world.category(name)
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        extra_sync={"edit_window": "1h", "edit_scan_interval_seconds": 0.5},
    )
    return ada, space, category, files


def post_with(world: World, text: str) -> dict[str, Any] | None:
    return next((p for p in world.live_posts() if text in (p.get("raw") or "")), None)


def test_chat_edits_and_deletions_reach_discourse_and_nothing_comes_back(world: World) -> None:
    ada, space, category, files = room(world, "Edit Room")
    root = world.say(space, ada, "Planning the spring offsite agenda")
    thread = root["thread"]["name"]
    reply = world.say(space, ada, "I can book the venue", thread=thread)
    bridge = start(files)
    try:
        wait_for(lambda: post_with(world, "book the venue"), timeout=30, what="the reply")
        count = len(world.live_posts())

        world.chat.control.edit_message(reply["name"], "I can book the venue by *Friday*")
        edited = wait_for(
            lambda: post_with(world, "venue by **Friday**"), timeout=30, what="the edit"
        )
        first = post_with(world, "Planning the spring")
        assert first is not None
        assert edited["id"] == first["id"] + 1
        assert len(world.live_posts()) == count  # an edit is never a new post

        # Deleting the thread's first message keeps the topic while its reply lives.
        world.chat.control.delete_message(root["name"])
        wait_for(lambda: post_with(world, "deleted in Google Chat"), timeout=30, what="the note")
        assert len(world.topics()) == 1
        # Deleting the reply deletes its post, then the whole thread is gone: the topic goes.
        world.chat.control.delete_message(reply["name"])
        wait_for(lambda: not world.topics(), timeout=30, what="the topic's deletion")
        assert world.live_posts() == []
        cycles = bridge.completed_cycles()
        bridge.wait_cycles(cycles + 2, timeout=30)
        assert world.live_posts() == []  # nothing is re-created by later polls
    finally:
        bridge.terminate()


def test_discourse_edits_and_deletions_reach_chat(world: World) -> None:
    ada, space, category, files = room(world, "Forum Edits")
    world.forum_user("carol", "Carol Danvers")
    bridge = start(files)
    try:
        world.hook_to(files)
        first = world.discourse.control.create_post(
            "carol", "Agenda for the quarterly review", title="Quarterly review agenda",
            category_id=category,
        )  # fmt: skip
        reply = world.discourse.control.create_post(
            "carol", "Item one: the budget.", topic_id=first["topic_id"]
        )
        wait_for(lambda: len(world.chat_messages(space)) == 2, timeout=30, what="2 messages")

        world.discourse.control.edit_post(reply["id"], raw="Item one: the **revised** budget.")
        wait_for(
            lambda: any(
                "<b>revised</b>" in world.chat.control.rendered(m["name"])["html"]
                for m in world.chat_messages(space)
            ),
            timeout=30,
            what="the edited reply",
        )
        world.discourse.control.edit_post(first["id"], title="Quarterly review agenda v2")
        wait_for(
            lambda: any("agenda v2" in m["text"] for m in world.chat_messages(space)),
            timeout=30,
            what="the new title",
        )
        assert len(world.chat_messages(space)) == 2  # edits are never new messages

        world.discourse.control.delete_post(reply["id"], username="system")
        wait_for(lambda: len(world.chat_messages(space)) == 1, timeout=30, what="deletion")

        # A moderator recovers it: the copy comes back, linked again.
        api = DiscourseClient(world.discourse.url, api_key="test-api-key", api_username="system")
        try:
            api.recover_post(reply["id"])
        finally:
            api.close()
        wait_for(lambda: len(world.chat_messages(space)) == 2, timeout=30, what="recovery")
        world.discourse.control.edit_post(reply["id"], raw="Item one: the final budget, agreed.")
        wait_for(
            lambda: any("final budget" in m["text"] for m in world.chat_messages(space)),
            timeout=30,
            what="an edit of the recovered post",
        )

        world.discourse.control.delete_post(first["id"], username="system")
        wait_for(lambda: not world.chat_messages(space), timeout=30, what="the thread's deletion")
        cycles = bridge.completed_cycles()
        bridge.wait_cycles(cycles + 2, timeout=30)
        assert not world.chat_messages(space)
        assert not world.topics()  # nothing came back from Chat either
    finally:
        bridge.terminate()


def test_attachments_cross_both_ways(world: World) -> None:
    ada, space, category, files = room(world, "Files Room")
    world.discourse.control.settings(authorized_extensions="jpg|jpeg|png|gif|pdf")
    world.forum_user("carol", "Carol Danvers")
    world.chat.control.post_message(
        space,
        sender=ada,
        text="The floor plan and the contract",
        attachments=[
            {"filename": "plan.png", "contentType": "image/png",
             "dataBase64": base64.b64encode(PNG).decode()},
            {"filename": "contract.pdf", "contentType": "application/pdf",
             "dataBase64": base64.b64encode(PDF).decode()},
        ],
    )  # fmt: skip
    bridge = start(files)
    try:
        world.hook_to(files)
        post = wait_for(lambda: post_with(world, "floor plan"), timeout=30, what="the post")
        raw = post["raw"]
        assert "![plan.png|1x1](upload://" in raw
        assert "[contract.pdf|attachment](upload://" in raw
        uploads = world.discourse.control.state()["uploads"]
        assert {u["original_filename"] for u in uploads} >= {"plan.png", "contract.pdf"}

        api = DiscourseClient(world.discourse.url, api_key="test-api-key", api_username="system")
        try:
            upload = api.upload_file("chart.png", PNG, "image/png", as_user="carol")
        finally:
            api.close()
        world.discourse.control.create_post(
            "carol", f"Here is the chart:\n\n![chart|1x1]({upload.short_url})",
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
        bridge.terminate()
