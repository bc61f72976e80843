"""Reliability workloads and the one invariant checker every reliability test ends with.

The checker reads only the two emulators' final state (never the bridge's database), so it sees
what a user of either platform would see:
- every human Chat message in a mapped space exists exactly once as a Discourse post (found by the
  origin marker in the post's raw), and every human Discourse post in a mapped category exists
  exactly once as a Chat message (found by its client-assigned id, which begins
  `client-dp-<post id>`: `origin.ClientIds` keys it with a tag, legacy ids have none);
- nothing the bridge wrote came back (no post for a bridged Chat message, no Chat message for a
  bridged post), so nothing is doubled by echo either;
- threads and topics correspond one to one, each item lands in the counterpart of its own thread
  or topic, and within a thread or topic the copies keep the order of the originals.

Hooks for later (issue 9 asks for them once they exist): DM spaces ↔ Discourse chat channels
(`client-dc-<id>` ids on Chat messages, `chat_messages` in the Discourse state) can be checked by
a sibling of `check_room_invariants`; `Workload` would gain a `dm` writer.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.world import World

MARKER = re.compile(r"<!-- gchat:(spaces/[^ ]+/messages/[^ ]+) -->")
# The copy of post N is `client-dp-N-k<tag>` (`client-dp-N` before the ids were keyed; a stand-in
# `-a<k>` when someone else held the id); a long post's later parts add `-p2`, `-p3`, ...
CLIENT_POST = re.compile(r"client-dp-(\d+)(?:-a\d+)?(-p\d+)?(?:-k[0-9a-f]{16})?$")
# Humans of the forum; anyone else posting in a mapped category is the bridge (or its users).
FORUM_HUMANS = ("carol", "dmitri", "erin")

# Human posts made through the control API skip validations, but the per-user limits still apply
# on a real site's defaults; the workload writes fast, so they are lifted (the bridge's own limits
# are exercised by the load test and the client tests).
FAST_FORUM = {
    "max_admin_api_reqs_per_minute": 100000,
    "rate_limit_create_post": 0,
    "rate_limit_new_user_create_post": 0,
    "rate_limit_create_topic": 0,
    "rate_limit_new_user_create_topic": 0,
    "max_topics_per_day": 100000,
    "max_consecutive_replies": 100000,
    "newuser_max_replies_per_topic": 100000,
    "unique_posts_mins": 0,
}


@dataclass(frozen=True, slots=True)
class Room:
    space: str
    category: int


@dataclass(frozen=True, slots=True)
class Report:
    """What the checker found: counts, and a list of violations (empty when all holds)."""

    chat_items: int
    forum_items: int
    lost: int
    duplicated: int
    echoed: int
    problems: tuple[str, ...]

    @property
    def items(self) -> int:
        return self.chat_items + self.forum_items


def setup_rooms(world: World, count: int, people: int = 3) -> tuple[list[str], list[Room]]:
    """`count` room spaces with a category each, Chat people in every space, forum humans."""
    world.discourse.control.settings(**FAST_FORUM)
    names = [f"Person {chr(65 + i)}{chr(97 + i)}" for i in range(people)]
    humans = world.add_people(*names)
    rooms = []
    for n in range(count):
        space = world.add_space(f"Reliability Room {n}", humans)
        rooms.append(Room(space, world.category(f"Reliability Room {n}")))
    for username in FORUM_HUMANS:
        world.forum_user(username, username.title())
        world.discourse.control.update_user(username, trust_level=2)
    return humans, rooms


def mappings(rooms: list[Room]) -> list[dict[str, Any]]:
    return [{"google_space_id": r.space, "discourse_category_id": r.category} for r in rooms]


@dataclass
class Workload:
    """Writes human items on both sides: new threads/topics and replies, with stable unique text.

    Replies may go to a thread or topic the bridge created (a cross-platform conversation), which
    is what a real user does and what makes the thread↔topic mapping matter.
    """

    world: World
    people: list[str]
    rooms: list[Room]
    seed: int = 0
    chat_written: int = 0
    forum_written: int = 0
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def chat_message(self) -> None:
        rng = self._rng
        room = rng.choice(self.rooms)
        sender = rng.choice(self.people)
        with self._lock:
            self.chat_written += 1
            n = self.chat_written
        threads = [
            m["thread"]["name"] for m in self.world.chat_messages(room.space) if m.get("thread")
        ]
        if threads and rng.random() < 0.8:
            self.world.say(
                room.space, sender, f"Chat reply number {n} in the thread", rng.choice(threads)
            )
        else:
            self.world.say(room.space, sender, f"Chat opener number {n} starts a new thread")

    def forum_post(self) -> None:
        rng = self._rng
        room = rng.choice(self.rooms)
        author = rng.choice(FORUM_HUMANS)
        with self._lock:
            self.forum_written += 1
            n = self.forum_written
        topics = [t["id"] for t in self.world.topics() if t["category_id"] == room.category]
        if topics and rng.random() < 0.8:
            self.world.discourse.control.create_post(
                author, f"Forum reply number {n} written by a human", topic_id=rng.choice(topics)
            )
        else:
            self.world.discourse.control.create_post(
                author,
                f"Forum opener number {n} starts a new topic here",
                title=f"Reliability topic number {n} from the forum",
                category_id=room.category,
            )

    def run(self, chat: int, forum: int, *, pause: Callable[[], object] = lambda: None) -> None:
        """Write `chat` Chat messages and `forum` posts, interleaved at random."""
        kinds = ["c"] * chat + ["f"] * forum
        self._rng.shuffle(kinds)
        for kind in kinds:
            if kind == "c":
                self.chat_message()
            else:
                self.forum_post()
            pause()


def check_room_invariants(world: World, rooms: list[Room]) -> Report:
    """Compare both emulators' state; see the module docstring for what must hold."""
    problems: list[str] = []
    forum = world.discourse.control.state()
    chat = world.chat.control.state()["messages"]
    categories = {r.category for r in rooms}
    topic_category = {t["id"]: t["category_id"] for t in forum["topics"]}
    posts = [
        p
        for p in forum["posts"]
        if p.get("deleted_at") is None
        and p.get("post_type", 1) == 1
        and topic_category.get(p["topic_id"]) in categories
    ]
    post_by_id = {p["id"]: p for p in posts}
    markers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for post in posts:
        for name in MARKER.findall(post.get("raw") or ""):
            markers[name].append(post)
    human_posts = [p for p in posts if p["username"] in FORUM_HUMANS]
    stray = [
        p["id"]
        for p in posts
        if p["username"] not in FORUM_HUMANS and not MARKER.search(p.get("raw") or "")
    ]
    if stray:
        problems.append(f"posts by the bridge without an origin marker: {stray[:10]}")

    # thread ↔ topic edges, and per-pair ordered copies for the order check
    thread_topics: dict[str, set[int]] = defaultdict(set)
    topic_threads: dict[int, set[str]] = defaultdict(set)
    lost = duplicated = echoed = 0
    chat_items = 0
    copies_by_client: Counter[int] = Counter()
    chat_position: dict[str, int] = {}
    chat_by_client: dict[int, dict[str, Any]] = {}
    chat_order: dict[str, list[tuple[int, int]]] = defaultdict(list)  # thread → (pos, post_number)
    for room in rooms:
        messages = [m for m in chat.get(room.space, []) if not m.get("deleteTime")]
        for position, message in enumerate(messages):
            chat_position[message["name"]] = position
            thread = (message.get("thread") or {}).get("name", message["name"])
            client = CLIENT_POST.match(message.get("clientAssignedMessageId") or "")
            if client and client.group(2):
                continue  # a later part of a long post's copy: counted with its first part
            if client:
                post_id = int(client.group(1))
                copies_by_client[post_id] += 1
                chat_by_client[post_id] = message
                if post_id in post_by_id:
                    thread_topics[thread].add(post_by_id[post_id]["topic_id"])
                    topic_threads[post_by_id[post_id]["topic_id"]].add(thread)
                if markers.get(message["name"]):
                    echoed += 1
                    problems.append(f"bridged Chat message {message['name']} came back as a post")
                continue
            chat_items += 1
            found = markers.get(message["name"], [])
            if not found:
                lost += 1
                problems.append(f"Chat message {message['name']} ({message.get('text')!r}) lost")
                continue
            if len(found) > 1:
                duplicated += len(found) - 1
                problems.append(f"Chat message {message['name']} mirrored {len(found)} times")
            post = found[0]
            if any(topic_category.get(p["topic_id"]) != room.category for p in found):
                problems.append(f"Chat message {message['name']} landed in another category")
            thread_topics[thread].add(post["topic_id"])
            topic_threads[post["topic_id"]].add(thread)
            chat_order[thread].append((position, post["post_number"]))

    forum_order: dict[int, list[tuple[int, int]]] = defaultdict(list)  # topic → (post_no, pos)
    space_of_category = {r.category: r.space for r in rooms}
    for post in human_posts:
        copies = copies_by_client.get(post["id"], 0)
        if copies == 0:
            lost += 1
            problems.append(f"post {post['id']} ({post.get('raw')!r}) lost")
            continue
        if copies > 1:
            duplicated += copies - 1
            problems.append(f"post {post['id']} sent to Chat {copies} times")
        message = chat_by_client[post["id"]]
        expected_space = space_of_category[topic_category[post["topic_id"]]]
        if not message["name"].startswith(expected_space + "/"):
            problems.append(f"post {post['id']} landed in {message['name']}, not {expected_space}")
        forum_order[post["topic_id"]].append((post["post_number"], chat_position[message["name"]]))
    for post_id in copies_by_client:
        bridged = post_by_id.get(post_id)
        if bridged is not None and bridged["username"] not in FORUM_HUMANS:
            echoed += 1
            problems.append(f"post {post_id} written by the bridge was sent back to Chat")

    for thread, topics in thread_topics.items():
        if len(topics) > 1:
            problems.append(f"thread {thread} split across topics {sorted(topics)}")
    for topic, threads in topic_threads.items():
        if len(threads) > 1:
            problems.append(f"topic {topic} split across threads {sorted(threads)}")
    for thread, pairs in chat_order.items():
        numbers = [n for _pos, n in sorted(pairs)]
        if numbers != sorted(numbers):
            problems.append(f"thread {thread}: posts out of order {numbers}")
    for topic, pairs in forum_order.items():
        positions = [pos for _n, pos in sorted(pairs)]
        if positions != sorted(positions):
            problems.append(f"topic {topic}: Chat copies out of order {positions}")
    return Report(chat_items, len(human_posts), lost, duplicated, echoed, tuple(problems))


def order_problems(report: Report) -> list[str]:
    return [p for p in report.problems if "out of order" in p]


def converged(
    world: World, rooms: list[Room], expected_items: int, *, allow_disorder: bool = False
) -> Report | None:
    """The report once every expected item is there and nothing is wrong, else None.

    `allow_disorder` accepts copies out of order (the caller judges order separately).
    """
    report = check_room_invariants(world, rooms)
    problems = report.problems
    if allow_disorder:
        problems = tuple(p for p in problems if p not in order_problems(report))
    if report.items >= expected_items and not problems:
        return report
    return None
