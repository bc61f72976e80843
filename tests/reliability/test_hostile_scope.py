"""Issue 17, Build 4-6: what the bridge takes in, what it keeps, and what files it carries.

`python main.py` runs as a subprocess against both emulators; the bridge's database is read only
after the bridge has stopped.

- Scope: after a moderator moves a bridged topic to a staff-only (unmapped) category, no later
  reply crosses, by webhook or by the catch-up pull.
- Data at rest: the inbox never holds a private message, a post of an unmapped category or a
  message of an unlinked chat channel (not as a row, not in the file's bytes); the database, its
  WAL and SHM and the log are 0600; handled rows lose their body after `inbox_retention_days`
  and are deleted after four times that.
- Attachments: an upload of a secure-upload post in a category the author cannot see is not
  copied (fetched as the author, who gets 403); a file over `max_attachment_mb` is refused
  in both directions after reading a small part of it, never the whole.
"""

from __future__ import annotations

import base64
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from discourse_client import DiscourseClient
from tests.e2e.harness import BridgeFiles, BridgeProcess, wait_for
from tests.e2e.world import World
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.e2e

API_KEY = "test-api-key"
MIB = 1024 * 1024
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def room(world: World, name: str, **config: Any) -> tuple[str, str, int, BridgeFiles]:
    (ada,) = world.add_people("Ada Lovelace")
    space = world.add_space(name, [ada])
    category = world.category(name)
    files = world.config([{"google_space_id": space, "discourse_category_id": category}], **config)
    return ada, space, category, files


def start(world: World, files: BridgeFiles) -> BridgeProcess:
    bridge = BridgeProcess(files)
    world.hook_to(files)
    bridge.wait_cycles(1, timeout=60)
    return bridge


def api(world: World, username: str = "system") -> DiscourseClient:
    return DiscourseClient(world.discourse.url, api_key=API_KEY, api_username=username)


def move_topic(world: World, topic_id: int, category_id: int) -> None:
    """A moderator's move, through the API as Discourse's own UI sends it (PUT /t/-/{id})."""
    answer = requests.put(
        f"{world.discourse.url}/t/-/{topic_id}.json",
        headers={"Api-Key": API_KEY, "Api-Username": "system", "Accept": "application/json"},
        json={"category_id": category_id},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def chat_text(world: World, space: str) -> str:
    return "\n".join(m.get("text", "") for m in world.chat_messages(space))


def message_with(world: World, space: str, text: str) -> dict[str, Any] | None:
    return next((m for m in world.chat_messages(space) if text in m.get("text", "")), None)


def post_with(world: World, text: str) -> dict[str, Any] | None:
    return next((p for p in world.live_posts() if text in (p.get("raw") or "")), None)


def settle(world: World, bridge: BridgeProcess, cycles: int = 3) -> None:
    """Every webhook delivered and a few poll cycles (catch-up pulls included) done."""
    world.discourse.control.wait_deliveries_idle()
    bridge.wait_cycles(bridge.completed_cycles() + cycles, timeout=60)


def inbox_rows(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM inbox ORDER BY id")]


def file_bytes(database: Path) -> bytes:
    """The database file and whatever WAL it left, as bytes (what a reader of the disk sees)."""
    found = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        if path.exists():
            found += path.read_bytes()
    return found


def peak_memory(bridge: BridgeProcess) -> int:
    """The bridge process's peak resident memory so far, in bytes (`VmHWM`, proc(5))."""
    for line in Path(f"/proc/{bridge.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def modes(*paths: Path) -> dict[str, str]:
    return {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in paths if path.exists()}


# ---------------------------------------------------------------------------- scope


def test_no_reply_crosses_after_a_move_to_an_unmapped_category(
    world: World, figures: Figures
) -> None:
    ada, space, category, files = room(world, "Town Hall")
    world.forum_user("carol", "Carol Danvers")
    world.discourse.control.create_user(
        "mod", name="Mo Derator", email="mod@forum.example.com", moderator=True, trust_level=4
    )
    staff = int(world.discourse.control.create_category(name="Staff", restricted_to=["mod"])["id"])
    bridge = start(world, files)
    try:
        first = world.discourse.control.create_post(
            "carol", "A public question for the town hall", title="Town hall questions here",
            category_id=category,
        )  # fmt: skip
        world.discourse.control.create_post(
            "carol", "And a public follow-up to it", topic_id=first["topic_id"]
        )
        wait_for(lambda: len(world.chat_messages(space)) == 2, what="the bridged topic")

        move_topic(world, first["topic_id"], staff)
        world.discourse.control.create_post(
            "mod", "STAFF-ONLY reply about the personnel case", topic_id=first["topic_id"]
        )
        # A control: a new public topic still crosses, so the bridge was working all along.
        world.discourse.control.create_post(
            "carol", "An unrelated public topic after the move", title="Another public topic",
            category_id=category,
        )  # fmt: skip
        wait_for(lambda: message_with(world, space, "unrelated public"), what="the control")
        settle(world, bridge)  # the catch-up pull has seen the staff reply too
        assert "STAFF-ONLY" not in chat_text(world, space)
        assert len(world.chat_messages(space)) == 3
        figures.set(staff_replies_leaked=chat_text(world, space).count("STAFF-ONLY"))
    finally:
        bridge.terminate()
    # Not even stored: the webhook named the topic's category now, and the pull knew it too.
    stored = "\n".join(str(row["payload"]) for row in inbox_rows(files.database))
    assert "STAFF-ONLY" not in stored and "unrelated public" in stored


def test_the_inbox_holds_no_private_or_unmapped_payload_and_files_are_0600(
    world: World, figures: Figures
) -> None:
    ada, space, category, files = room(world, "Open Forum")
    unmapped = world.category("Not Bridged")
    world.forum_user("carol", "Carol Danvers")
    world.forum_user("dave", "Dave Lister")
    bridge = start(world, files)
    try:
        world.discourse.control.create_post(
            "carol", "PM-SECRET between two people only", title="A private word with Dave",
            archetype="private_message", target_recipients="dave",
        )  # fmt: skip
        world.discourse.control.create_post(
            "carol", "UNMAPPED-SECRET in a category nobody bridged", title="Not for the bridge",
            category_id=unmapped,
        )  # fmt: skip
        channel = world.discourse.control.create_dm_channel("carol", ["dave"])
        world.discourse.control.send_chat(channel["id"], "carol", "CHANNEL-SECRET in a DM")
        world.discourse.control.create_post(
            "carol", "A public post for the space", title="Public post for the space",
            category_id=category,
        )  # fmt: skip
        wait_for(lambda: message_with(world, space, "public post"), what="the public post")
        settle(world, bridge)
        # While the bridge runs, with its WAL and SHM open: nobody else may read them.
        running = modes(
            files.database,
            Path(f"{files.database}-wal"),
            Path(f"{files.database}-shm"),
            files.log,
        )
    finally:
        bridge.terminate()
    rows = inbox_rows(files.database)
    stored = "\n".join(str(row["payload"]) for row in rows)
    assert "public post" in stored  # the control was stored (and is within retention)
    on_disk = file_bytes(files.database)
    for secret in ("PM-SECRET", "UNMAPPED-SECRET", "CHANNEL-SECRET"):
        assert secret not in stored, secret
        assert secret.encode() not in on_disk, secret
    names = {row["event_name"] for row in rows}
    assert "chat_message_created" not in names
    figures.set(inbox_rows=len(rows), secrets_stored=0, files_checked=len(running))
    assert running == dict.fromkeys(running, "0o600"), running
    assert {files.database.name, files.log.name} <= set(running)


def test_retention_wipes_bodies_then_prunes_rows(world: World, figures: Figures) -> None:
    # 0.00005 days is 4.3 s: bodies go after that, rows after 17.3 s.
    ada, space, category, files = room(
        world, "Short Memory", extra_sync={"inbox_retention_days": 0.00005}
    )
    world.forum_user("carol", "Carol Danvers")
    bridge = start(world, files)
    try:
        world.discourse.control.create_post(
            "carol", "RETAINED-BODY of a short-lived post", title="A post to be forgotten",
            category_id=category,
        )  # fmt: skip
        wait_for(lambda: message_with(world, space, "RETAINED-BODY"), what="the post in Chat")
        handled = time.monotonic()
        wait_for(lambda: time.monotonic() - handled > 5.5, timeout=20, what="the retention")
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=30)
    finally:
        bridge.terminate()
    rows = inbox_rows(files.database)
    assert rows, "the handled rows are kept (without their bodies) for a while"
    assert all(row["state"] == "done" and row["payload"] == "" for row in rows), rows
    assert b"RETAINED-BODY" not in file_bytes(files.database)

    bridge = BridgeProcess(files)
    try:
        wait_for(lambda: time.monotonic() - handled > 19, timeout=40, what="4x the retention")
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=30)
    finally:
        bridge.terminate()
    assert inbox_rows(files.database) == []
    figures.set(rows_after_wipe=len(rows), rows_after_prune=0)


# ---------------------------------------------------------------------------- attachments


def test_a_secure_upload_the_author_cannot_see_is_not_copied(
    world: World, figures: Figures
) -> None:
    ada, space, category, files = room(world, "Gallery")
    world.discourse.control.settings(
        secure_uploads=True, authorized_extensions="jpg|jpeg|png|gif|pdf"
    )
    world.forum_user("carol", "Carol Danvers")
    world.forum_user("mallory", "Mallory Mal")
    world.discourse.control.create_user(
        "mod", name="Mo Derator", email="mod@forum.example.com", moderator=True, trust_level=4
    )
    staff = int(world.discourse.control.create_category(name="Staff", restricted_to=["mod"])["id"])
    secret_pdf = b"%PDF-1.4\n% SECRET-PAYROLL\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    client = api(world)
    try:
        secret = client.upload_file("payroll.pdf", secret_pdf, "application/pdf", as_user="mod")
        world.discourse.control.create_post(
            "mod", f"Payroll for review: [payroll.pdf|attachment]({secret.short_url})",
            title="Payroll review for staff", category_id=staff,
        )  # fmt: skip
        own = client.upload_file("chart.png", PNG, "image/png", as_user="carol")
    finally:
        client.close()
    bridge = start(world, files)
    try:
        world.discourse.control.clear_cdn_requests()
        world.discourse.control.create_post(
            "mallory", f"Look at this: [payroll.pdf|attachment]({secret.short_url})",
            title="Something interesting to see", category_id=category,
        )  # fmt: skip
        world.discourse.control.create_post(
            "carol", f"My own chart:\n\n![chart|1x1]({own.short_url})",
            title="A chart of my own making", category_id=category,
        )  # fmt: skip
        leaked = wait_for(lambda: message_with(world, space, "Look at this"), what="mallory's")
        chart = wait_for(lambda: message_with(world, space, "My own chart"), what="carol's")
    finally:
        bridge.terminate()
    assert not leaked.get("attachment"), leaked
    assert "could not be attached" in leaked["text"]
    # Carol's own upload still crosses: the rule is the author's view, not "no uploads".
    assert [a["contentName"] for a in chart.get("attachment", [])] == ["chart.png"]
    sha1 = secret.url.rsplit("/", 1)[-1].split(".")[0]
    fetched = [r["path"] for r in world.discourse.control.cdn_requests()["requests"]]
    assert not any(sha1 in path for path in fetched), fetched
    figures.set(secure_uploads_copied=0)


def test_an_oversized_attachment_is_refused_without_reading_it_whole(
    world: World, figures: Figures
) -> None:
    size = 16 * MIB
    ada, space, category, files = room(world, "Big Files", extra_sync={"max_attachment_mb": 1})
    world.discourse.control.settings(
        external_storage_cdn=True,
        authorized_extensions="jpg|jpeg|png|gif|pdf|bin",
        max_attachment_size_kb=32 * 1024,
    )
    world.forum_user("carol", "Carol Danvers")
    big = b"%PDF-1.4\n" + bytes(size - 9)
    client = api(world)
    try:
        upload = client.upload_file("huge.pdf", big, "application/pdf", as_user="carol")
    finally:
        client.close()
    recording = base64.b64encode(bytes(size)).decode()
    bridge = start(world, files)
    try:
        world.discourse.control.clear_cdn_requests()
        world.chat.control.clear_requests()
        peak_before = peak_memory(bridge)
        world.chat.control.post_message(
            space,
            sender=ada,
            text="The huge recording from Chat",
            attachments=[{"filename": "recording.bin", "contentType": "application/octet-stream",
                          "dataBase64": recording}],
        )  # fmt: skip
        world.discourse.control.create_post(
            "carol", f"The huge file: [huge.pdf|attachment]({upload.short_url})",
            title="A file far too large for Chat", category_id=category,
        )  # fmt: skip
        message = wait_for(lambda: message_with(world, space, "huge file"), what="the message")
        post = wait_for(lambda: post_with(world, "huge recording"), what="the Chat message's post")
        peak_growth = peak_memory(bridge) - peak_before
        chat_log = world.chat.control.requests()["requests"]
    finally:
        bridge.terminate()
    assert not message.get("attachment") and "too large" in message["text"], message
    assert "over the" in post["raw"] and "upload://" not in post["raw"], post["raw"]
    served = [
        r for r in world.discourse.control.cdn_requests()["requests"] if "/original/" in r["path"]
    ]
    discourse_bytes = sum(r["bytes_sent"] for r in served)
    # The store is another host: none of the forum's credentials followed the redirect.
    sent = {name.lower() for r in served for name in r["headers"]}
    assert served and not sent & {"api-key", "api-username", "authorization", "cookie"}, sent
    chat_bytes = sum(
        r.get("response_bytes", 0) for r in chat_log if r["path"].startswith("/v1/media/")
    )
    figures.set(
        file_bytes=size,
        discourse_bytes_served=discourse_bytes,
        chat_bytes_served=chat_bytes,
        bridge_peak_memory_growth=peak_growth,
    )
    # Far less than either file left either side (a socket buffer aside), and the bridge's peak
    # memory grew by far less than one of them.
    assert 0 < discourse_bytes < size // 4, discourse_bytes
    assert 0 < chat_bytes < size // 4, chat_bytes
    assert peak_growth < size // 4, peak_growth
