"""Issue 17 §2, hostile webhooks against the running bridge (`python main.py` as a subprocess).

- Replayed and re-labelled deliveries change nothing that Discourse itself has not changed. The
  attacker holds one signed delivery (here: the emulator's own record of what it sent, which is
  what anyone on a plain-http path sees) and sends it again, with another `X-Discourse-Event`
  header or after a newer event: a live topic's thread is not deleted, a live post's message is
  not deleted, a deleted post is not brought back, an older edit does not overwrite a newer one,
  a live chat message's copy is not deleted.
- Floods: a 150 MiB unsigned body is refused without the bridge reading more than the limit, and
  with 200 slow connections open `/healthz` still answers and a genuine webhook still arrives.
  The figures (bytes pushed, the bridge's temporary files, `/healthz` latency) are recorded with
  `figures`; 2 s is the acceptance bound, not a measure of our speed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from tests.e2e.harness import BridgeFiles, BridgeProcess, wait_for
from tests.e2e.world import World
from tests.reliability.conftest import Figures
from webhook_listener import MAX_BODY_BYTES, WEBHOOK_PATH

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


# -- helpers -------------------------------------------------------------------------------


def forum_room(world: World) -> tuple[str, int, BridgeFiles, BridgeProcess]:
    """A mapped space and category, the bridge running, and Discourse's webhook pointing at it."""
    (ada,) = world.add_people("Ada Lovelace")
    space = world.add_space("Forum Room", [ada])
    category = world.category("Forum Room")
    world.forum_user("carol", "Carol Danvers")
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        poll_interval_seconds=0.5,
    )
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1)
    world.hook_to(files)
    return space, category, files, bridge


def delivery(
    world: World, event: str, key: str, object_id: int, containing: str = ""
) -> dict[str, Any]:
    """The emulator's record of the last signed request it sent for `event` about `object_id`
    (`key`: "post", "topic" or "chat_message"; its body `containing` a text): what an
    eavesdropper captures."""

    def find() -> dict[str, Any] | None:
        for sent in reversed(world.discourse.control.deliveries()["deliveries"]):
            if sent["event_name"] != event or containing not in sent["request_body"]:
                continue
            payload = json.loads(sent["request_body"])[key]
            found = payload["message"]["id"] if key == "chat_message" else payload["id"]
            if found == object_id:
                return dict(sent)
        return None

    return wait_for(find, timeout=20, what=f"the {event} delivery of {key} {object_id}")


def replay(files: BridgeFiles, sent: dict[str, Any], event: str | None = None) -> int:
    """Send a captured delivery again, byte for byte, optionally under another event name."""
    headers = {
        k: v
        for k, v in sent["request_headers"].items()
        if k.lower() not in ("host", "content-length", "connection")
    }
    if event is not None:
        headers["X-Discourse-Event"] = event
    answer = requests.post(
        files.webhook_url, data=sent["request_body"].encode(), headers=headers, timeout=10
    )
    return answer.status_code


def inbox_depth(files: BridgeFiles) -> int:
    text = requests.get(f"{files.base_url}/metrics", timeout=5).text
    match = re.search(r"^gchat_discourse_inbox_depth (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else -1


def drained(files: BridgeFiles) -> None:
    """Wait until the bridge has handled everything stored (the inbox is empty)."""
    wait_for(lambda: inbox_depth(files) == 0, timeout=30, what="the inbox drained")


def texts(world: World, space: str) -> list[str]:
    return [m["text"] for m in world.chat_messages(space)]


def with_text(world: World, space: str, needle: str) -> list[dict[str, Any]]:
    return [m for m in world.chat_messages(space) if needle in m["text"]]


@contextmanager
def deliveries_dropped(world: World) -> Iterator[None]:
    """Discourse's deliveries are lost on the way (the emulator still records what it sent)."""
    world.discourse.control.settings(webhook_drop_rate=1.0)
    try:
        yield
    finally:
        world.discourse.control.wait_deliveries_idle(10)
        world.discourse.control.settings(webhook_drop_rate=0.0)


# -- replays and relabels -------------------------------------------------------------------


def test_relabelled_topic_and_post_deliveries_change_nothing_discourse_has_not(
    world: World, figures: Figures
) -> None:
    space, category, files, bridge = forum_room(world)
    control = world.discourse.control
    try:
        first = control.create_post(
            "carol",
            "Our plans for the spring fair.",
            title="Spring fair plans",
            category_id=category,
        )
        topic_id = first["topic_id"]
        reply = control.create_post("carol", "I will bring the lemonade.", topic_id=topic_id)
        doomed = control.create_post("carol", "This one will be deleted.", topic_id=topic_id)
        wait_for(lambda: len(texts(world, space)) == 3, timeout=60, what="3 messages in Chat")
        root = with_text(world, space, "Our plans for the spring fair.")[0]
        control.delete_post(doomed["id"], username="system")  # staff: soft delete
        wait_for(
            lambda: not with_text(world, space, "This one will be deleted."),
            what="the deleted post's message gone",
        )
        topic_created = delivery(world, "topic_created", "topic", topic_id)
        reply_created = delivery(world, "post_created", "post", reply["id"])
        doomed_created = delivery(world, "post_created", "post", doomed["id"])
        statuses: dict[str, int] = {}

        # A live topic's creation, re-labelled as its deletion: the thread stays.
        statuses["topic_created as topic_destroyed"] = replay(
            files, topic_created, "topic_destroyed"
        )
        drained(files)
        assert [m["name"] for m in with_text(world, space, "spring fair")] == [root["name"]]
        assert with_text(world, space, "I will bring the lemonade.")

        # A topic body under a post event has no post: refused at the door.
        for event in ("post_destroyed", "post_recovered"):
            statuses[f"topic_created as {event}"] = replay(files, topic_created, event)
            assert statuses[f"topic_created as {event}"] == 422

        # A live reply's creation, re-labelled as its deletion: the message stays.
        statuses["post_created as post_destroyed"] = replay(files, reply_created, "post_destroyed")
        drained(files)
        assert with_text(world, space, "I will bring the lemonade.")

        # A deleted reply's creation, re-labelled as its recovery: it does not come back.
        statuses["post_created as post_recovered"] = replay(
            files, doomed_created, "post_recovered"
        )
        drained(files)
        assert not with_text(world, space, "This one will be deleted.")

        # The bridge still works: a genuine reply lands in the same thread.
        control.create_post("carol", "Genuine reply after the replays.", topic_id=topic_id)
        latest = wait_for(
            lambda: with_text(world, space, "Genuine reply after the replays."),
            timeout=30,
            what="the genuine reply",
        )
        assert latest[0]["thread"]["name"] == root["thread"]["name"]
        assert len(texts(world, space)) == 3
        assert bridge.proc.poll() is None
    finally:
        bridge.kill()
    figures.set(replays=len(statuses), statuses=statuses)


def test_a_deletion_held_back_and_replayed_after_a_recovery_changes_nothing(
    world: World,
) -> None:
    space, category, files, bridge = forum_room(world)
    control = world.discourse.control
    try:
        first = control.create_post(
            "carol", "Notes from the board meeting.", title="Board meeting notes",
            category_id=category,
        )  # fmt: skip
        reply = control.create_post(
            "carol", "Minutes are attached below.", topic_id=first["topic_id"]
        )
        wait_for(lambda: len(texts(world, space)) == 2, timeout=60, what="2 messages in Chat")
        with deliveries_dropped(world):
            control.delete_post(reply["id"], username="system")
        _recover(world, reply["id"])  # the staff deletion's webhook never arrived
        destroyed = delivery(world, "post_destroyed", "post", reply["id"])
        assert replay(files, destroyed) == 200
        drained(files)
        assert with_text(world, space, "Minutes are attached below.")
    finally:
        bridge.kill()


def _recover(world: World, post_id: int) -> None:
    answer = requests.put(
        f"{world.discourse.url}/posts/{post_id}/recover.json",
        headers={"Api-Key": "test-api-key", "Api-Username": "system"},
        timeout=10,
    )
    answer.raise_for_status()


def test_an_old_edit_replayed_after_a_newer_one_is_ignored(world: World) -> None:
    space, category, files, bridge = forum_room(world)
    control = world.discourse.control
    try:
        first = control.create_post(
            "carol",
            "Venue for the summer party.",
            title="Summer party venue",
            category_id=category,
        )
        reply = control.create_post("carol", "How about the park?", topic_id=first["topic_id"])
        wait_for(lambda: len(texts(world, space)) == 2, timeout=60, what="2 messages in Chat")
        # Two edits by the author within Discourse's grace period: both keep the version.
        with deliveries_dropped(world):
            older = control.edit_post(reply["id"], raw="How about the beach?")
        newer = control.edit_post(reply["id"], raw="How about the lake shore?")
        assert older["version"] == newer["version"]
        wait_for(
            lambda: with_text(world, space, "How about the lake shore?"), what="the newer edit"
        )
        held = delivery(world, "post_edited", "post", reply["id"], containing="beach")
        assert replay(files, held) == 200
        drained(files)
        assert with_text(world, space, "How about the lake shore?")
        assert not with_text(world, space, "How about the beach?")
    finally:
        bridge.kill()


def _chat_api(world: World, username: str) -> requests.Session:
    api = requests.Session()
    api.headers.update({"Api-Key": "test-api-key", "Api-Username": username})
    return api


def test_a_chat_message_relabelled_or_stale_trash_leaves_its_copy(world: World) -> None:
    (ann,) = world.add_people("Ann Lee")
    world.discourse.control.create_user(
        "annl", name="Ann Lee", email=world.people[0]["email"], trust_level=1
    )
    dm = world.add_dm([ann])
    world.say(dm, ann, "hello from Chat")
    files = world.config([{"google_space_id": dm}], poll_interval_seconds=0.5)
    world.hook_to(files)
    bridge = BridgeProcess(files)
    try:
        channel = wait_for(lambda: _dm_channel_of(world, "annl"), what="the DM channel")
        wait_for(lambda: bridge.ready(), what="the bridge ready")
        api = _chat_api(world, "annl")
        base = f"{world.discourse.url}/chat/api/channels/{channel}/messages"
        answer = api.post(
            f"{world.discourse.url}/chat/{channel}.json", json={"message": "keep me"}
        )
        answer.raise_for_status()
        message_id = int(answer.json()["message_id"])
        wait_for(lambda: with_text(world, dm, "keep me"), what="the copy in Chat")
        created = delivery(world, "chat_message_created", "chat_message", message_id)

        # Its creation re-labelled as trashed: the body shows a live message; refused.
        assert replay(files, created, "chat_message_trashed") == 422
        # A genuine trash held back, replayed after the message was restored: the copy stays.
        with deliveries_dropped(world):
            api.delete(f"{base}/{message_id}.json").raise_for_status()
            api.put(f"{base}/{message_id}/restore.json").raise_for_status()
        trashed = delivery(world, "chat_message_trashed", "chat_message", message_id)
        assert replay(files, trashed) == 200
        drained(files)
        assert with_text(world, dm, "keep me")
    finally:
        bridge.kill()


def _dm_channel_of(world: World, username: str) -> int | None:
    state = world.discourse.control.state()
    users = {u["id"]: u["username"] for u in state["users"]}
    for channel in state["chat_channels"]:
        if channel.get("chatable_type") == "DirectMessage" and username in {
            users.get(i) for i in channel["member_ids"]
        }:
            return int(channel["id"])
    return None


# -- floods -----------------------------------------------------------------------------------


def temp_bytes(pid: int) -> int:
    """Bytes in the process's open, unlinked files (waitress spools request bodies to those)."""
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}").endswith("(deleted)"):
                total += os.stat(f"{fd_dir}/{fd}").st_size
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """The largest value of `probe()` seen while running (sampled every 10 ms)."""

    def __init__(self, probe: Callable[[], int]) -> None:
        self.probe = probe
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.probe())
            except OSError:
                pass
            self._stop.wait(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def push_huge_body(port: int, total: int, *, chunked: bool) -> tuple[int, bytes]:
    """POST `total` bytes, unsigned, as fast as the server takes them; (bytes sent, answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall(
        (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nX-Discourse-Event: post_created\r\n"
            f"{framing}\r\n\r\n"
        ).encode()
    )
    piece = b"y" * MiB
    block = (b"%x\r\n" % len(piece)) + piece + b"\r\n" if chunked else piece
    sent = 0
    sock.settimeout(2)
    try:
        while sent < total:
            view = memoryview(block)
            while view:
                count = sock.send(view)
                view = view[count:]
                sent += count
    except OSError:
        pass  # reset, broken pipe, or the server stopped reading (timeout)
    answer = b""
    try:
        answer = sock.recv(4096)
    except OSError:
        pass
    sock.close()
    return sent, answer


def test_a_150_mib_unsigned_body_is_refused_after_at_most_the_limit(
    world: World, figures: Figures
) -> None:
    _space, _category, files, bridge = forum_room(world)
    total = 150 * MiB
    try:
        rss_before = rss_bytes(bridge.proc.pid)
        results: dict[str, tuple[int, int, bytes]] = {}
        for chunked in (False, True):
            with Sampler(lambda: temp_bytes(bridge.proc.pid)) as sampler:
                sent, answer = push_huge_body(files.webhook_port, total, chunked=chunked)
            results["chunked" if chunked else "content_length"] = (sent, sampler.peak, answer)
        rss_after = rss_bytes(bridge.proc.pid)
        assert requests.get(f"{files.base_url}/healthz", timeout=5).status_code == 200
    finally:
        bridge.kill()
    figures.set(
        body_bytes=total,
        **{f"{k}_bytes_pushed": v[0] for k, v in results.items()},
        **{f"{k}_spooled_peak": v[1] for k, v in results.items()},
        rss_growth=rss_after - rss_before,
    )
    for kind, (sent, spooled, answer) in results.items():
        # The kernel's socket buffers take a few MiB more than the server reads; never 150.
        assert sent < 16 * MiB, (kind, sent)
        assert spooled <= MAX_BODY_BYTES + MiB, (kind, spooled)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), (kind, answer[:100])


def test_healthz_and_a_genuine_webhook_get_through_200_slow_connections(
    world: World, figures: Figures
) -> None:
    space, category, files, bridge = forum_room(world)
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", files.webhook_port), timeout=5)
            # Headers promise a body that never comes.
            sock.sendall(
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                '{"post":'.encode()
            )
            slow.append(sock)
        started = time.monotonic()
        try:
            status = requests.get(f"{files.base_url}/healthz", timeout=5).status_code
        except requests.RequestException:
            status = -1
        latency = time.monotonic() - started
        figures.set(slow_connections=len(slow), healthz_seconds=round(latency, 3))
        assert status == 200 and latency < 2.0, (status, latency)
        post = world.discourse.control.create_post(
            "carol", "Posted while the port is flooded.", title="Flooded port topic",
            category_id=category,
        )  # fmt: skip
        sent = delivery(world, "post_created", "post", post["id"])
        world.discourse.control.wait_deliveries_idle(10)
        statuses = [
            d["status"]
            for d in world.discourse.control.deliveries()["deliveries"]
            if d["event_id"] == sent["event_id"]
        ]
        assert statuses == [200], statuses
        wait_for(
            lambda: with_text(world, space, "Posted while the port is flooded."),
            timeout=30,
            what="the webhook's post in Chat",
        )
    finally:
        for sock in slow:
            sock.close()
        bridge.kill()
