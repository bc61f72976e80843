"""Benchmark 6: Chat → Discourse latency in a busy two-way space.

One mapped space carries traffic both ways at once, the way an active team space does:

- forum writers reply to the topic mirrored from the space every 0.5-1 s; the Discourse webhook
  points at the bridge, which writes each reply into the space's thread (Chat's quota is on: one
  write a second per space, so the bridge writes into the space about once a second);
- people write plain Chat messages (no markup) into the same space at random moments; a third of
  them deliberately right after a forum post was created, i.e. in the same second as the bridge's
  mirror write of that post. That is the case the bridge used to delay: the space's
  `lastActiveTime` then is the bridge's own write, and a poll that skipped such a space left the
  person's message for a later edit scan.

The bridge polls every `POLL_INTERVAL` s. Two runs, each in a fresh world: `default` (the
config's default `edit_scan_interval_seconds`, now 0, so a recently active space is re-read every
cycle anyway) and `edit_scan_60s` (edit scans at most every 60 s, the earlier default): there only
the rule "a moved lastActiveTime is read even when the move is the bridge's own write" brings a
message written just before a bridge write within one poll interval.

The figure is message created in Chat (the emulator's `createTime`) → post visible in
Discourse. The post's own `created_at` is not usable for that: the bridge back-dates a mirrored
post to the Chat message's createTime (reported as `post_created_at_minus_chat_create_time`,
about 0). Instead a watcher in this process reads the Discourse emulator's control state every
`WATCH_INTERVAL` s and stamps when it first sees a post whose `raw` holds the message's unique
token; the figure is therefore an upper bound, late by at most one watch interval.
`late` lists every message that took longer than one poll interval + 1 s.

Discourse → Chat for the same run: forum post `created_at` (stamped by the emulator; a person's
post is not back-dated) → Chat `createTime` of the message holding the post's token. Besides the
raw figure, `excess_over_quota_floor_seconds` subtracts the unavoidable wait for the space's write
slot (floor = max(post created, previous bridge write in the space + 1 s)).

Discourse's admin-API rate limit is lifted (a Chat message costs one Discourse request; the
default 60 a minute would make this a throughput figure, which `throughput` measures).
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from bench.common import BRIDGE_USER, Bench, emit, parse_args, scaled, summary, with_bench
from tests.e2e.harness import BridgeProcess, wait_for

POLL_INTERVAL = 2.0
WATCH_INTERVAL = 0.1
CHAT_MESSAGES = 60
FORUM_POSTS = 60
FORUM_GAP = (0.5, 1.0)  # seconds between two forum replies
AFTER_POST_SHARE = 1 / 3  # of the Chat messages, written right after a forum post
AFTER_POST_DELAY = (0.0, 0.15)  # seconds after the forum post's creation
# edit_scan_interval_seconds of each run; None: not set (the config's default).
RUNS: dict[str, float | None] = {"default": None, "edit_scan_60s": 60.0}
TOKEN = re.compile(r"\bzq[cf]\d{4}\b")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Watcher:
    """Reads Discourse's state every WATCH_INTERVAL s; stamps when each token is first seen."""

    def __init__(self, bench: Bench) -> None:
        self._control = bench.discourse.control
        self.first_seen: dict[str, float] = {}
        self.post_created: dict[str, float] = {}
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def scan(self) -> None:
        posts = self._control.state()["posts"]
        seen_at = time.time()
        self.reads += 1
        for post in posts:
            for token in TOKEN.findall(post.get("raw") or ""):
                if token not in self.first_seen:
                    self.first_seen[token] = seen_at
                    self.post_created[token] = _epoch(post["created_at"])

    def topic_of(self, token: str) -> int | None:
        for post in self._control.state()["posts"]:
            if token in (post.get("raw") or ""):
                return int(post["topic_id"])
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.scan()
            self._stop.wait(max(0.0, WATCH_INTERVAL - (time.monotonic() - started)))


@dataclass(slots=True)
class ChatItem:
    token: str
    kind: str  # "after_forum_post" | "random"
    created: float = 0.0
    reply: bool = True


@dataclass(slots=True)
class ForumItem:
    token: str
    created: float = 0.0


def _schedule(
    rng: random.Random, chat_count: int, post_count: int
) -> list[tuple[float, str, int]]:
    """(offset seconds, "post" | "chat", index), in time order."""
    events: list[tuple[float, str, int]] = []
    at = 0.5
    post_times = []
    for i in range(post_count):
        post_times.append(at)
        events.append((at, "post", i))
        at += rng.uniform(*FORUM_GAP)
    after = min(chat_count, round(chat_count * AFTER_POST_SHARE))
    chosen = sorted(rng.sample(range(post_count), min(after, post_count)))
    for i, post_index in enumerate(chosen):
        events.append((post_times[post_index] + rng.uniform(*AFTER_POST_DELAY), "chat", i))
    for i in range(len(chosen), chat_count):
        events.append((rng.uniform(0.2, at), "chat", i))
    events.sort(key=lambda e: (e[0], e[1] != "post"))
    return events


def run(bench: Bench, chat_count: int, post_count: int, edit_scan: float | None) -> dict[str, Any]:  # noqa: C901, PLR0915
    rng = random.Random(20261125)
    bench.discourse.control.settings(max_admin_api_reqs_per_minute=10_000_000)
    bench.chat.control.configure(quotas_enabled=True)
    people = bench.add_people(4)
    space = bench.add_space("Busy two-way")
    category = bench.category("Busy two-way")
    writers = [f"writer{i}" for i in range(3)]
    for name in writers:
        bench.forum_user(name)
    files = bench.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        poll_interval_seconds=POLL_INTERVAL,
        extra_sync=None if edit_scan is None else {"edit_scan_interval_seconds": edit_scan},
    )
    bench.hook_to(files.webhook_url)
    opener = bench.say(space, people[0], "Opening the busy thread for this week zqo0000")
    thread = opener["thread"]["name"]

    chats = [ChatItem(f"zqc{i:04d}", "random") for i in range(chat_count)]
    posts = [ForumItem(f"zqf{i:04d}") for i in range(post_count)]
    events = _schedule(rng, chat_count, post_count)
    after = min(chat_count, round(chat_count * AFTER_POST_SHARE), post_count)
    for i in range(after):
        chats[i].kind = "after_forum_post"
    for item in chats[after:]:
        item.reply = rng.random() < 0.8  # some people start a new thread

    watcher = Watcher(bench)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1, timeout=60)
        topic_id = wait_for(lambda: watcher.topic_of("zqo0000"), timeout=60, what="opener")
        # Let the opener's backfill settle before the busy phase is counted.
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=60)
        watcher.start()
        bench.clear_logs()
        cycles_before = bridge.completed_cycles()
        started = time.time()
        for offset, kind, index in events:
            delay = started + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            if kind == "post":
                forum_item = posts[index]
                post = bench.discourse.control.create_post(
                    writers[index % len(writers)],
                    f"Forum reply {index} on the plan, with a few words {forum_item.token}",
                    topic_id=topic_id,
                )
                forum_item.created = _epoch(post["created_at"])
            else:
                chat = chats[index]
                who = people[(index % (len(people) - 1)) + 1]
                text = f"Chat message {index} about the plan from the team {chat.token}"
                message = bench.say(space, who, text, thread if chat.reply else None)
                chat.created = _epoch(message["createTime"])
        busy_seconds = round(time.time() - started, 1)

        def chat_texts() -> str:
            return "\n".join(
                f"{m.get('text', '')} {m.get('formattedText', '')}"
                for m in bench.chat.control.state()["messages"].get(space, [])
            )

        def done() -> bool:
            in_chat = chat_texts()
            return all(c.token in watcher.first_seen for c in chats) and all(
                p.token in in_chat for p in posts
            )

        wait_for(done, timeout=120 + post_count * 2, interval=0.5, what="both directions")
        bridge.wait_cycles(bridge.completed_cycles() + 1, timeout=60)
        cycles = bridge.completed_cycles() - cycles_before
    finally:
        watcher.stop()
        bridge.terminate()
    chat_log = bench.chat_requests()
    discourse_log = bench.discourse_requests()

    # Discourse → Chat: the bridge's writes into the space, by token.
    messages = bench.chat.control.state()["messages"].get(space, [])
    bridge_writes: list[float] = []
    written: dict[str, float] = {}
    for message in messages:
        if (message.get("sender") or {}).get("name") != BRIDGE_USER:
            continue
        at = _epoch(message["createTime"])
        bridge_writes.append(at)
        content = f"{message.get('text', '')} {message.get('formattedText', '')}"
        for token in TOKEN.findall(content):
            written.setdefault(token, at)
    bridge_writes.sort()

    # Chat → Discourse.
    latency: list[float] = []
    by_kind: dict[str, list[float]] = {"after_forum_post": [], "random": []}
    near_bridge_write: list[float] = []
    back_dated: list[float] = []
    late: list[dict[str, Any]] = []
    threshold = POLL_INTERVAL + 1.0
    for chat in chats:
        value = watcher.first_seen[chat.token] - chat.created
        latency.append(value)
        by_kind[chat.kind].append(value)
        back_dated.append(watcher.post_created[chat.token] - chat.created)
        following = next((w for w in bridge_writes if w >= chat.created), None)
        gap = None if following is None else following - chat.created
        if gap is not None and gap < 1.0:
            near_bridge_write.append(value)
        if value > threshold:
            late.append(
                {
                    "token": chat.token,
                    "kind": chat.kind,
                    "thread_reply": chat.reply,
                    "chat_create_time": datetime.fromtimestamp(chat.created).isoformat(),
                    "latency_seconds": round(value, 3),
                    "next_bridge_write_after_seconds": None if gap is None else round(gap, 3),
                }
            )

    # Discourse → Chat, with the per-space write-slot floor.
    d2c: list[float] = []
    excess: list[float] = []
    previous_write = 0.0
    for forum_post in sorted(posts, key=lambda p: written.get(p.token, float("inf"))):
        written_at = written.get(forum_post.token)
        if written_at is None:
            continue
        d2c.append(written_at - forum_post.created)
        excess.append(max(0.0, written_at - max(forum_post.created, previous_write + 1.0)))
        previous_write = written_at

    def in_polls(values: list[float]) -> dict[str, float]:
        return summary([v / POLL_INTERVAL for v in values])

    return {
        "edit_scan_interval_seconds": "config default" if edit_scan is None else edit_scan,
        "busy_seconds": busy_seconds,
        "poll_cycles": cycles,
        "watcher_state_reads": watcher.reads,
        "gchat_to_discourse": {
            "messages": len(chats),
            "after_forum_post": len(by_kind["after_forum_post"]),
            "followed_by_bridge_write_within_1s": len(near_bridge_write),
            "latency_seconds": summary(latency),
            "latency_poll_intervals": in_polls(latency),
            "latency_seconds_after_forum_post": summary(by_kind["after_forum_post"]),
            "latency_seconds_random": summary(by_kind["random"]),
            "latency_seconds_followed_by_bridge_write_within_1s": summary(near_bridge_write),
            "late_threshold_seconds": threshold,
            "late_count": len(late),
            "late": late,
            "post_created_at_minus_chat_create_time": summary(back_dated),
            "discourse_requests_per_message": round(discourse_log.total / len(chats), 3),
            "discourse_writes_per_message": round(discourse_log.writes / len(chats), 3),
        },
        "discourse_to_gchat": {
            "posts": len(posts),
            "bridged": len(d2c),
            "latency_seconds": summary(d2c),
            "latency_poll_intervals": in_polls(d2c),
            "excess_over_quota_floor_seconds": summary(excess),
            "chat_requests_per_post": round(chat_log.total / len(posts), 3),
            "chat_writes_per_post": round(chat_log.writes / len(posts), 3),
            "chat_reads_per_poll_cycle": round(chat_log.reads / max(1, cycles), 3),
        },
        "chat_requests": chat_log.as_dict(),
        "discourse_requests": discourse_log.as_dict(),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    chat_count = scaled(CHAT_MESSAGES, args.scale, minimum=3)
    post_count = scaled(FORUM_POSTS, args.scale, minimum=3)
    runs = {
        name: with_bench(
            partial(run, chat_count=chat_count, post_count=post_count, edit_scan=scan)
        )
        for name, scan in RUNS.items()
    }
    result: dict[str, Any] = {
        "runs": runs,
        "poll_interval_seconds": POLL_INTERVAL,
        "watch_interval_seconds": WATCH_INTERVAL,
    }
    result.update(
        benchmark="two_way_latency",
        targets={"late_count": 0, "late_threshold": "poll interval + 1 s"},
        scale=args.scale,
    )
    emit(result)


if __name__ == "__main__":
    main()
