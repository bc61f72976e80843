"""Benchmark 7: real-time Chat → Discourse through Workspace Events and a Pub/Sub pull (issue 15).

Every world here has `google.events` on, as the end-to-end tests turn it on
(`tests/e2e/events_world.py`): a Cloud project in the Pub/Sub emulator, the bridge's token with
the Pub/Sub scope, `google.events` in the config and `python main.py check --fix` run once (topic,
publisher grant, pull subscription, one Workspace Events subscription per mapped space). The safety
poll runs every 15 minutes (`poll_interval_seconds` 900, the config's default), Discourse's
admin-API limit is lifted, Chat's quotas are on at real time. Measurements start after the
bridge's first poll cycle, once every mapped space's subscription is ACTIVE and adopted by the
bridge.

1. `latency`: people write into LATENCY_SPACES spaces through the Chat emulator's control API
   (a human's message, edit or deletion; no space gets more than one a second): N creates (new
   threads and replies to threads created at least two seconds earlier), then edits of N/2 thread
   starters (→ the post's raw holds the edit's token), then N/2 deletions (the replies, then
   starters without replies; → the post is gone). Each phase waits until everything of the
   previous one is visible. "Created" is the moment the control call returned; "visible" is the
   first sighting by a watcher thread that reads the Discourse emulator's state in-process every
   WATCH_INTERVAL s (so the figure is late by up to one interval). Where the time goes, per kind
   (`stages_seconds`): call returned → event published to Pub/Sub → a pull response carrying it
   left the Pub/Sub emulator → seen on Discourse (the bridge's `messages.get`, its Discourse
   write and the watcher's interval). The two middle stamps come from wrapping the Pub/Sub
   emulator's `publish_as` and `pull` in this process (a timestamp, nothing else).
   `chat_requests_during_latency_run` counts Chat's requests by route: `messages.list` should be
   0 (events bring everything).
2. `idle`, for 20 and 1,000 mapped spaces (each with one bridged message two hours old, outside
   `edit_window`): after the first cycle and the subscriptions, every request log is cleared and
   the bridge left alone for IDLE_WINDOW s; Chat (by route), Workspace Events (by route, from the
   Chat emulator's log), Pub/Sub and Discourse requests are counted. Then, to measure what one
   safety poll costs, the bridge is restarted on the same database with `poll_interval_seconds`
   SHORT_POLL (its restart work, an audit of the subscriptions and a replay per space, is counted
   apart), and CYCLES idle cycles are counted; the keeper's audit (`subscriptions.list`, paged),
   which runs once per poll interval on its own timer, is priced per audit. The 1,000-space
   world sets the emulator's `operation_latency_seconds` to 0 (creates done in their answer) to
   keep its setup short. A third phase measures a renewal: a fresh 20-space world whose emulator
   caps a subscription's life at RENEW_TTL s, so the bridge renews each one every RENEW_TTL / 2 s;
   after every subscription was renewed once, the Workspace Events requests of RENEW_WINDOW s
   are counted: requests per renewal = 1 PATCH + `operations.get` per operation. What the bridge
   still sends after SIGTERM is recorded too (`after_sigterm`). `per_hour` extrapolates to
   Google's settings (see `extrapolation` in the JSON).
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from bench.common import BRIDGE_USER, Bench, emit, parse_args, percentile, scaled, with_bench
from emulators.pubsub import PubSubEmulator
from tests.e2e.events_world import MESSAGE_LIST, PROJECT, SCOPES, SUBSCRIPTION, TOPIC
from tests.e2e.harness import (
    BridgeFiles,
    BridgeProcess,
    register_bridge_account,
    run_main,
    wait_for,
)

POLL_INTERVAL = 900.0  # the safety poll: every 15 minutes
LATENCY_SPACES = 4
PEOPLE = 4
SPACE_GAP = 1.0  # seconds between two actions in one space (Chat's people, not a script)
WATCH_INTERVAL = 0.02
IDLE_WINDOW = 60.0
SHORT_POLL = 2.0  # the restart that measures one safety-poll cycle
CYCLES = 5
# subscription_max_ttl_seconds of the renewal phase: renewed every RENEW_TTL / 2 s. Not
# shorter: the bridge renews one subscription after the other (about 0.2 s each, the wait for
# its operation), so 20 renewals must fit well inside half a life.
RENEW_TTL = 20
RENEW_WINDOW = 20.0
# Google's settings the per-hour figures extrapolate to.
GOOGLE_MAX_TTL_HOURS = 4.0  # with includeResource (the bridge's subscriptions)
GOOGLE_PULL_HOLD_SECONDS = 90.0  # observed, not documented (see PERFORMANCE.md)
EMULATOR_PULL_HOLD_SECONDS = 5.0  # the Pub/Sub emulator's default pull_wait_seconds
_TOKEN = re.compile(r"\bzq[ce]\d{4}\b")
_WORKSPACE_EVENTS = ("/v1/subscriptions", "/v1/operations")


# ---------------------------------------------------------------------------- the world


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pubsub_of(bench: Bench) -> PubSubEmulator:
    pubsub = bench.chat.pubsub
    if pubsub is None:
        raise RuntimeError("the Chat emulator runs without its Pub/Sub emulator")
    return pubsub


def events_files(
    bench: Bench,
    mappings: list[dict[str, Any]],
    name: str,
    *,
    poll_interval_seconds: float = POLL_INTERVAL,
    setup: bool = True,
) -> BridgeFiles:
    """A bridge config with events on, as `tests/e2e/events_world.events_config` writes it."""
    directory = bench.directory / name
    token = directory / "token.json"
    if not token.exists():
        state = pubsub_of(bench).state
        if PROJECT not in state.projects:
            state.add_project(PROJECT, owners=["user:bridge@example.com"])
        directory.mkdir(parents=True, exist_ok=True)
        register_bridge_account(
            bench.chat.control, BRIDGE_USER, bench.chat.url, token, scopes=SCOPES
        )
    files = bench.config(
        mappings,
        name=name,
        poll_interval_seconds=poll_interval_seconds,
        extra_google={
            "events": {
                "pubsub_topic": TOPIC,
                "pubsub_subscription": SUBSCRIPTION,
                "workspace_events_endpoint": bench.chat.url,
                "pubsub_endpoint": pubsub_of(bench).url,
            }
        },
    )
    if setup:
        fixed = run_main(["--config", str(files.config), "check", "--fix"], timeout=1800)
        if f"Pub/Sub subscription {SUBSCRIPTION} created" not in fixed.stdout:
            raise RuntimeError(f"check --fix did not set events up:\n{fixed.stdout}{fixed.stderr}")
    return files


def active_subscriptions(bench: Bench) -> int:
    subs = bench.chat.control.subscriptions()["subscriptions"]
    return sum(1 for s in subs if s["state"] == "ACTIVE")


def adopted(bridge: BridgeProcess) -> int:
    """Spaces whose subscription the running bridge created or adopted (its log)."""
    text = bridge.log_text()
    return text.count("subscribed to spaces/") + text.count("adopted subscription ")


def start_bridge(bench: Bench, files: BridgeFiles, spaces: int, mirrored: int) -> BridgeProcess:
    """Start the daemon; return once its first cycle is done, `mirrored` messages crossed and
    every space's subscription is ACTIVE and the bridge's."""
    bridge = BridgeProcess(files)
    try:
        wait_for(
            lambda: (
                (
                    (bridge.completed_cycles() >= 1 or bridge.proc.poll() is not None)
                    and bridge.log_text().count("mirrored spaces/") >= mirrored
                    and adopted(bridge) >= spaces
                )
                or bridge.proc.poll() is not None
            ),
            timeout=1800,
            interval=0.2,
            what="first cycle and subscriptions",
        )
        if bridge.proc.poll() is not None:
            raise RuntimeError(f"bridge exited: {bridge.stderr()}")
        wait_for(lambda: active_subscriptions(bench) >= spaces, timeout=60, what="ACTIVE")
    except BaseException:
        bridge.terminate()
        raise
    return bridge


# ---------------------------------------------------------------------------- request logs


def clear_all(bench: Bench) -> None:
    bench.clear_logs()
    pubsub_of(bench).state.clear_requests()


def _routes(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def requests_now(bench: Bench) -> dict[str, dict[str, int]]:
    """Requests since the logs were cleared, by platform and route (OAuth /token left out)."""
    chat: dict[str, int] = {}
    events: dict[str, int] = {}
    for route, n in bench.chat.control.requests()["counts"].items():
        if route.endswith(" /token"):
            continue
        target = events if route.split(" ", 1)[1].startswith(_WORKSPACE_EVENTS) else chat
        target[route] = n
    pubsub = dict(pubsub_of(bench).state.requests_json()["counts"])
    discourse = bench.discourse_requests().by_route
    return {
        "chat": _routes(chat),
        "workspace_events": _routes(events),
        "pubsub": _routes(pubsub),
        "discourse": _routes(discourse),
    }


def failures_now(bench: Bench) -> dict[str, int]:
    """Chat and Workspace Events requests answered with an error, by method, path kind and
    status (since the log was cleared)."""
    failed: dict[str, int] = {}
    for row in bench.chat.control.requests()["requests"]:
        if row["status"] < 400 or row["path"] == "/token":
            continue
        kind = "/".join(row["path"].split("/")[:3])
        key = f"{row['method']} {kind}… {row['status']}"
        failed[key] = failed.get(key, 0) + 1
    return failed


def operation_polls(bench: Bench) -> dict[str, int]:
    """How many operations were read how many times (`operations.get` per operation)."""
    per_operation: dict[str, int] = {}
    for row in bench.chat.control.requests()["requests"]:
        if row["method"] == "GET" and row["path"].startswith("/v1/operations/"):
            per_operation[row["path"]] = per_operation.get(row["path"], 0) + 1
    histogram: dict[str, int] = {}
    for gets in per_operation.values():
        histogram[str(gets)] = histogram.get(str(gets), 0) + 1
    return dict(sorted(histogram.items(), key=lambda kv: int(kv[0])))


def subscription_audits(bench: Bench) -> tuple[int, int]:
    """The keeper's audits since the log was cleared: (audits, list pages they read). An audit
    is a `subscriptions.list` of every message subscription (a filter on event types only; a
    lookup of one space's subscription also names its target resource), paged."""
    audits = pages = 0
    for row in bench.chat.control.requests()["requests"]:
        if row["method"] != "GET" or row["path"] != "/v1/subscriptions":
            continue
        if "target_resource" in row["query"].get("filter", ""):
            continue
        pages += 1
        if not row["query"].get("pageToken"):
            audits += 1
    return audits, pages


def totals(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {platform: sum(routes.values()) for platform, routes in counts.items()}


def _route_count(routes: dict[str, int], method: str, fragment: str) -> int:
    return sum(n for r, n in routes.items() if r.startswith(method + " ") and fragment in r)


# ---------------------------------------------------------------------------- latency


@dataclass(slots=True)
class Expectation:
    kind: str  # "create" | "edit" | "delete"
    key: str  # the message name
    token: str | None = None  # create and edit: the token the post's raw will hold
    post_id: int | None = None  # delete: the post that must go
    sent: float = 0.0
    seen: float | None = None
    published: float | None = None
    pulled: float | None = None


class Watcher:
    """Reads the Discourse emulator's state (in-process, under its lock) every WATCH_INTERVAL s
    and stamps when each expectation is first met."""

    def __init__(self, bench: Bench) -> None:
        self._state = bench.discourse.state
        self.post_of_token: dict[str, int] = {}
        self.scans = 0
        self._pending: list[Expectation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def expect(self, item: Expectation) -> None:
        with self._lock:
            self._pending.append(item)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def scan(self) -> None:
        state = self._state
        live_tokens: dict[str, int] = {}
        live_ids: set[int] = set()
        with state.lock:
            for post in state.posts.values():
                topic = state.topics.get(post.topic_id)
                if post.deleted_at is not None or post.user_deleted:
                    continue
                if topic is None or topic.deleted_at is not None:
                    continue
                live_ids.add(post.id)
                for token in _TOKEN.findall(post.raw or ""):
                    live_tokens.setdefault(token, post.id)
        now = time.time()
        self.scans += 1
        with self._lock:
            still = []
            for item in self._pending:
                if item.kind == "delete":
                    met = item.post_id not in live_ids
                else:
                    met = item.token in live_tokens
                if met and item.sent:
                    item.seen = now
                    if item.kind == "create" and item.token is not None:
                        self.post_of_token[item.token] = live_tokens[item.token]
                else:
                    still.append(item)
            self._pending = still

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.scan()
            self._stop.wait(max(0.0, WATCH_INTERVAL - (time.monotonic() - started)))


class Stamps:
    """When each event was published to Pub/Sub and first left it in a pull response, taken by
    wrapping the Pub/Sub emulator's `publish_as` and `pull` in this process."""

    def __init__(self, bench: Bench) -> None:
        self.published: dict[tuple[str, str], float] = {}
        self.pulled: dict[tuple[str, str], float] = {}
        state = pubsub_of(bench).state
        publish_as, pull = state.publish_as, state.pull

        def stamped_publish(
            principal: str, topic: str, data: bytes, attributes: Any, ordering_key: str = ""
        ) -> str:
            answer = publish_as(principal, topic, data, attributes, ordering_key)
            key = _event_key(data, attributes)
            if key is not None:
                self.published.setdefault(key, time.time())
            return answer

        def stamped_pull(principal: str, project: str, sub_id: str, body: Any) -> Any:
            answer = pull(principal, project, sub_id, body)
            now = time.time()
            for received in answer.get("receivedMessages", ()):
                message = received.get("message", {})
                data = base64.b64decode(message.get("data", ""))
                key = _event_key(data, message.get("attributes") or {})
                if key is not None:
                    self.pulled.setdefault(key, now)
            return answer

        state.publish_as = stamped_publish  # type: ignore[method-assign]
        state.pull = stamped_pull  # type: ignore[method-assign]


def _event_key(data: bytes, attributes: Any) -> tuple[str, str] | None:
    """(message name, "created"/"updated"/"deleted") of a Chat message event."""
    kind = str(attributes.get("ce-type", "")).rsplit(".", 1)[-1]
    try:
        name = json.loads(data)["message"]["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return (str(name), kind)


_EVENT_KIND = {"create": "created", "edit": "updated", "delete": "deleted"}


@dataclass(slots=True)
class ChatThread:
    space: int
    name: str  # spaces/S/threads/T
    message: str  # the starter's message name
    token: str
    replies: list[str] = field(default_factory=list)


class Pacer:
    """Runs actions so that no space gets two within SPACE_GAP s, spreading spaces evenly."""

    def __init__(self, spaces: int) -> None:
        self._spaces = spaces
        self._last: dict[int, float] = {}
        self._next = 0.0

    def run(self, space: int, action: Callable[[], None]) -> None:
        at = max(self._next, self._last.get(space, 0.0) + SPACE_GAP)
        wait = at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        action()
        self._last[space] = time.monotonic()
        self._next = time.monotonic() + SPACE_GAP / self._spaces


def _interleave(per_space: list[list[Any]]) -> list[tuple[int, Any]]:
    """Round-robin over the spaces' own sequences: [(space, item), ...]."""
    out = []
    for position in range(max((len(s) for s in per_space), default=0)):
        for space, items in enumerate(per_space):
            if position < len(items):
                out.append((space, items[position]))
    return out


def _create_plan(creates: int) -> list[list[tuple[str, int]]]:
    """Per space, its create sequence: ("starter", n) or ("reply", starter n). About 60 %
    starters; each thread with replies gets two; a reply comes at least two places (two
    seconds) after its starter in the space's sequence."""
    starters = max(1, math.ceil(creates * 0.6))
    replies = creates - starters
    per_space: list[list[tuple[str, int]]] = [[] for _ in range(LATENCY_SPACES)]
    reply_targets = [k // 2 for k in range(replies)]  # starter index of each reply
    left_starters = list(range(starters))
    pending: dict[int, list[int]] = {}
    for target in reply_targets:
        pending.setdefault(target % LATENCY_SPACES, []).append(target)
    placed: dict[int, int] = {}  # starter -> position in its space
    for space in range(LATENCY_SPACES):
        mine = [n for n in left_starters if n % LATENCY_SPACES == space]
        waiting = pending.get(space, [])
        sequence = per_space[space]
        while mine or waiting:
            position = len(sequence)
            ready = [t for t in waiting if t in placed and placed[t] <= position - 2]
            want_reply = ready and (not mine or position % 2 == 1)
            if want_reply:
                target = ready[0]
                waiting.remove(target)
                sequence.append(("reply", target))
            elif mine:
                n = mine.pop(0)
                placed[n] = position
                sequence.append(("starter", n))
            else:
                target = waiting.pop(0)  # only just placed: still after it, in order
                sequence.append(("reply", target))
    return per_space


def summary_latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), 4),
        "p90": round(percentile(values, 90), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
        "min": round(min(values), 4),
    }


def run_latency(bench: Bench, creates: int, edits: int, deletes: int) -> dict[str, Any]:
    bench.discourse.control.settings(max_admin_api_reqs_per_minute=10_000_000)
    bench.chat.control.configure(quotas_enabled=True)
    people = bench.add_people(PEOPLE)
    spaces: list[str] = []
    mappings = []
    old = datetime.now(UTC) - timedelta(hours=2)
    for i in range(LATENCY_SPACES):
        space = bench.add_space(f"Events latency {i}")
        spaces.append(space)
        mappings.append(
            {"google_space_id": space, "discourse_category_id": bench.category(f"Events {i}")}
        )
    # Warm: every person wrote once before (two hours ago), so the first cycle knows them all.
    for i, person in enumerate(people):
        bench.chat.control.post_message(
            spaces[i % LATENCY_SPACES],
            sender=person,
            text=f"An older message by person {i}, from before the benchmark.",
            create_time=_stamp(old + timedelta(seconds=i)),
        )
    files = events_files(bench, mappings, "latency")
    stamps = Stamps(bench)
    started = time.monotonic()
    bridge = start_bridge(bench, files, LATENCY_SPACES, mirrored=len(people))
    setup_seconds = round(time.monotonic() - started, 1)
    watcher = Watcher(bench)
    items: list[Expectation] = []
    threads: dict[int, ChatThread] = {}
    reply_names: list[tuple[int, str, int]] = []  # (space, message name, starter n)
    phases: dict[str, float] = {}
    try:
        time.sleep(1.0)  # let the startup's last requests land before the log is cleared
        clear_all(bench)
        watcher.start()
        control = bench.chat.control

        def act(kind: str, key: str, call: Callable[[], dict[str, Any]], **kw: Any) -> Any:
            item = Expectation(kind, key, **kw)
            watcher.expect(item)
            answer = call()
            item.sent = time.time()
            if kind == "create":
                item.key = str(answer["name"])
            items.append(item)
            return answer

        # 1. creates
        phase_started = time.monotonic()
        pacer = Pacer(LATENCY_SPACES)
        for counter, (space_index, (what, n)) in enumerate(
            _interleave(_create_plan(creates)), start=1
        ):
            token = f"zqc{counter:04d}"
            space = spaces[space_index]
            person = people[counter % PEOPLE]
            if what == "starter":

                def starter(
                    space: str = space,
                    person: str = person,
                    n: int = n,
                    t: str = token,
                    index: int = space_index,
                ) -> None:
                    text = f"Starter {n} ({t}): a new thread about the plan, long enough."
                    answer = act(
                        "create",
                        "",
                        lambda: control.post_message(space, sender=person, text=text),
                        token=t,
                    )
                    threads[n] = ChatThread(index, answer["thread"]["name"], answer["name"], t)

                pacer.run(space_index, starter)
            else:

                def reply(
                    space: str = space, person: str = person, n: int = n, t: str = token
                ) -> None:
                    text = f"Reply to starter {n} ({t}), with a few more words in it."
                    thread = threads[n].name
                    answer = act(
                        "create",
                        "",
                        lambda: control.post_message(
                            space, sender=person, text=text, thread_name=thread
                        ),
                        token=t,
                    )
                    reply_names.append((threads[n].space, answer["name"], n))

                pacer.run(space_index, reply)
        wait_for(lambda: watcher.pending() == 0, timeout=120, what="creates visible")
        phases["create"] = round(time.monotonic() - phase_started, 1)

        # 2. edits of thread starters
        phase_started = time.monotonic()
        edited = [threads[n] for n in sorted(threads)][:edits]
        per_space_edits: list[list[ChatThread]] = [[] for _ in range(LATENCY_SPACES)]
        for thread in edited:
            per_space_edits[thread.space].append(thread)
        for number, (space_index, thread) in enumerate(_interleave(per_space_edits), start=1):
            token = f"zqe{number:04d}"

            def edit(thread: ChatThread = thread, t: str = token) -> None:
                text = f"Starter {thread.token}, edited ({t}): the plan changed, read again."
                act(
                    "edit",
                    thread.message,
                    lambda: control.edit_message(thread.message, text=text),
                    token=t,
                )

            pacer.run(space_index, edit)
        wait_for(lambda: watcher.pending() == 0, timeout=120, what="edits visible")
        phases["edit"] = round(time.monotonic() - phase_started, 1)

        # 3. deletions: the replies, then starters that never had a reply
        phase_started = time.monotonic()
        with_replies = {n for _, _, n in reply_names}
        targets: list[tuple[int, str, str | None]] = [
            (space_index, name, None) for space_index, name, _ in reply_names
        ]
        targets += [
            (t.space, t.message, t.token)
            for n, t in sorted(threads.items(), reverse=True)
            if n not in with_replies
        ]
        token_of = {item.key: item.token for item in items if item.kind == "create"}
        per_space_deletes: list[list[str]] = [[] for _ in range(LATENCY_SPACES)]
        for space_index, name, _ in targets[:deletes]:
            per_space_deletes[space_index].append(name)
        for space_index, name in _interleave(per_space_deletes):
            created_token = token_of[name]
            post_id = watcher.post_of_token[created_token] if created_token else None

            def delete(name: str = name, post_id: int | None = post_id) -> None:
                act("delete", name, lambda: control.delete_message(name), post_id=post_id)

            pacer.run(space_index, delete)
        wait_for(lambda: watcher.pending() == 0, timeout=120, what="deletions visible")
        phases["delete"] = round(time.monotonic() - phase_started, 1)
        time.sleep(1.0)
        counts = requests_now(bench)
        chat_429s = bench.chat_requests().rate_limited
        log_text = bridge.log_text()
    finally:
        watcher.stop()
        bridge.terminate()

    result: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for kind in ("create", "edit", "delete"):
        seen = [(item, item.seen) for item in items if item.kind == kind and item.seen]
        result[kind] = summary_latency([at - item.sent for item, at in seen])
        to_publish, to_pull, to_seen = [], [], []
        for item, at in seen:
            key = (item.key, _EVENT_KIND[kind])
            published, pulled = stamps.published.get(key), stamps.pulled.get(key)
            if published is None or pulled is None:
                continue
            to_publish.append(published - item.sent)
            to_pull.append(pulled - published)
            to_seen.append(at - pulled)
        stages[kind] = {
            "call_returned_to_published": summary_latency(to_publish),
            "published_to_pulled": summary_latency(to_pull),
            "pulled_to_seen_on_discourse": summary_latency(to_seen),
        }
    chat = counts["chat"]
    return {
        "latency": result,
        "stages_seconds": stages,
        "message_lists_during_latency_run": chat.get(MESSAGE_LIST, 0),
        "chat_requests_during_latency_run": chat,
        "requests_during_latency_run": {k: v for k, v in counts.items() if k != "chat"},
        "latency_world": {
            "spaces": LATENCY_SPACES,
            "people": PEOPLE,
            "creates": sum(1 for i in items if i.kind == "create"),
            "new_threads": len(threads),
            "replies": len(reply_names),
            "edits": sum(1 for i in items if i.kind == "edit"),
            "deletes": sum(1 for i in items if i.kind == "delete"),
            "watcher_scans": watcher.scans,
            "startup_to_measuring_seconds": setup_seconds,
            "phase_seconds": phases,
            "events_bridged_log_lines": log_text.count("events of spaces/"),
            "bridge_warnings": log_text.count(" WARNING "),
            "bridge_errors": log_text.count(" ERROR "),
            "chat_429s": chat_429s,
        },
    }


# ---------------------------------------------------------------------------- idle


def idle_world(bench: Bench, spaces: int, name: str) -> tuple[BridgeFiles, list[dict[str, Any]]]:
    """`spaces` mapped spaces, each with one message two hours old; events set up."""
    bench.unlimited()
    bench.chat.control.configure(quotas_enabled=True)
    person = bench.add_people(1)[0]
    old = datetime.now(UTC) - timedelta(hours=2)
    mappings = []
    for i in range(spaces):
        space = bench.add_space(f"{name} {i:04d}")
        bench.chat.control.post_message(
            space, sender=person, text=f"The only thread of space {i}, about the plan",
            create_time=_stamp(old),
        )  # fmt: skip
        mappings.append(
            {"google_space_id": space, "discourse_category_id": bench.category(f"{name} {i:04d}")}
        )
    return events_files(bench, mappings, name.replace(" ", "_").lower()), mappings


def measure_idle(
    bench: Bench, spaces: int, window: float, operation_latency: float | None = None
) -> dict[str, Any]:
    """Idle requests of `spaces` mapped spaces; `operation_latency`: the emulator's
    `operation_latency_seconds` (None: its default), 0 makes a subscription's create done in
    its answer, as Google's create guide shows, and keeps setting 1,000 spaces up short."""
    timings: dict[str, float] = {}
    if operation_latency is not None:
        bench.chat.control.configure(operation_latency_seconds=operation_latency)
    started = time.monotonic()
    files, mappings = idle_world(bench, spaces, f"Idle {spaces}")
    timings["world_and_check_fix"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    bridge = start_bridge(bench, files, spaces, mirrored=spaces)
    timings["startup_to_subscribed_and_first_cycle"] = round(time.monotonic() - started, 1)
    try:
        time.sleep(2.0)  # the last requests of the startup land before the logs are cleared
        clear_all(bench)
        cycles_before = bridge.completed_cycles()
        window_started = time.monotonic()
        time.sleep(window)
        measured = round(time.monotonic() - window_started, 2)
        idle = requests_now(bench)
        cycles_in_window = bridge.completed_cycles() - cycles_before
    finally:
        bridge.terminate()

    # One safety-poll cycle: restart on the same database, polling every SHORT_POLL s.
    started = time.monotonic()
    short = bench.config(
        mappings,
        name=files.directory.name,
        poll_interval_seconds=SHORT_POLL,
        extra_google={
            "events": {
                "pubsub_topic": TOPIC,
                "pubsub_subscription": SUBSCRIPTION,
                "workspace_events_endpoint": bench.chat.url,
                "pubsub_endpoint": pubsub_of(bench).url,
            }
        },
    )
    clear_all(bench)
    bridge = BridgeProcess(short)
    try:
        replay_route = "GET /v1/spaces/{space}/spaceEvents"
        wait_for(
            lambda: (
                bench.chat.control.requests()["counts"].get(replay_route, 0) >= spaces
                or bridge.proc.poll() is not None
            ),
            timeout=900,
            interval=0.2,
            what="restart replays",
        )
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=900)
        restart = requests_now(bench)
        first = bridge.completed_cycles()
        clear_all(bench)
        bridge.wait_cycles(first + CYCLES, timeout=900)
        cycles = requests_now(bench)
        audits, audit_pages = subscription_audits(bench)
        counted_cycles = bridge.completed_cycles() - first
    finally:
        bridge.terminate()
    timings["restart_and_cycles"] = round(time.monotonic() - started, 1)

    idle_totals = totals(idle)
    cycle_totals = totals(cycles)
    per_cycle = {
        "chat": round(cycle_totals["chat"] / counted_cycles, 3),
        "discourse": round(cycle_totals["discourse"] / counted_cycles, 3),
        "workspace_events": round(cycle_totals["workspace_events"] / counted_cycles, 3),
        # Not tied to the cycle: the keeper audits on its own timer (every poll interval).
        "workspace_events_per_audit": round(audit_pages / audits, 3) if audits else None,
    }
    pulls = _route_count(idle["pubsub"], "POST", ":pull")
    return {
        "spaces": spaces,
        "operation_latency_seconds": bench.chat.control.configure()["operation_latency_seconds"],
        "idle_window_seconds": measured,
        "poll_cycles_in_window": cycles_in_window,
        "requests_in_window": idle,
        "totals_in_window": idle_totals,
        "message_lists_in_window": idle["chat"].get(MESSAGE_LIST, 0),
        "pulls_in_window": pulls,
        "seconds_per_pull": round(measured / pulls, 2) if pulls else None,
        "safety_poll": {
            "poll_interval_seconds": SHORT_POLL,
            "cycles": counted_cycles,
            "requests_per_cycle": per_cycle,
            "subscription_audits": audits,
            "requests": cycles,
        },
        "restart": {
            "what": "the keeper's start: its audit (subscriptions.list, paged) and a "
            "spaceEvents.list replay per space; the short-poll cycles run meanwhile",
            "requests": restart,
        },
        "seconds": timings,
    }


def measure_renewal(bench: Bench, spaces: int, window: float) -> dict[str, Any]:
    """Requests per renewal: subscriptions that live RENEW_TTL s, renewed by the bridge at half
    their life. Counted after every space's subscription was renewed once (so that the window
    holds steady-state renewals only, not the adoption of what `check --fix` created)."""
    bench.chat.control.configure(subscription_max_ttl_seconds=RENEW_TTL)
    started = time.monotonic()
    files, _ = idle_world(bench, spaces, "Renew")
    bridge = start_bridge(bench, files, spaces, mirrored=spaces)
    try:
        wait_for(
            lambda: bridge.log_text().count("renewed subscription of ") >= spaces,
            timeout=RENEW_TTL * 3,
            what="a first renewal of every subscription",
        )
        subscribed = {s["name"] for s in bench.chat.control.subscriptions()["subscriptions"]}
        offset = len(bridge.log_text())
        clear_all(bench)
        time.sleep(window)
        now_subs = bench.chat.control.subscriptions()["subscriptions"]
        counts = requests_now(bench)
        failed = failures_now(bench)
        polls = operation_polls(bench)
        log_text = bridge.log_text()[offset:]
        # What the bridge still sends once told to stop (a renewal round may be under way).
        clear_all(bench)
        stopping = time.monotonic()
        bridge.terminate()
        shutdown = {
            "seconds": round(time.monotonic() - stopping, 2),
            "workspace_events": requests_now(bench)["workspace_events"],
            "operations_by_gets": operation_polls(bench),
        }
    finally:
        bridge.terminate()
    events = counts["workspace_events"]
    renewals = _route_count(events, "PATCH", "/v1/subscriptions")
    total = sum(events.values())
    read = sum(polls.values())
    gets_per_operation = sum(int(n) * k for n, k in polls.items()) / read if read else 0.0
    return {
        "spaces": spaces,
        "subscription_max_ttl_seconds": RENEW_TTL,
        "window_seconds": window,
        "renewals": renewals,
        "renewals_logged": log_text.count("renewed subscription of "),
        "workspace_events_requests": events,
        # One PATCH, then its operation read until done. Per operation rather than per window
        # total, which a renewal cut by the window's edges would skew.
        "requests_per_renewal": round(1 + gets_per_operation, 3) if renewals else None,
        "operation_gets_per_renewal": round(gets_per_operation, 3),
        "window_requests_per_patch": round(total / renewals, 3) if renewals else None,
        "subscriptions_created_in_window": _route_count(events, "POST", "/v1/subscriptions"),
        "same_subscriptions_active_at_end": sum(
            1 for s in now_subs if s["state"] == "ACTIVE" and s["name"] in subscribed
        ),
        "expired_or_gone_in_window": log_text.count("creating it again"),
        "operations_by_gets": polls,
        "failed_requests": failed,
        "after_sigterm": shutdown,
        "other_requests": {k: v for k, v in counts.items() if k != "workspace_events"},
        "seconds": round(time.monotonic() - started, 1),
    }


def per_hour(idle: dict[str, Any], per_renewal: float) -> dict[str, Any]:
    """Idle requests an hour at Google's settings (see `extrapolation` in the JSON)."""
    spaces = idle["spaces"]
    cycle = idle["safety_poll"]["requests_per_cycle"]
    cycles_per_hour = 3600 / POLL_INTERVAL
    renew_hours = GOOGLE_MAX_TTL_HOURS / 2
    chat = cycle["chat"] * cycles_per_hour
    discourse = cycle["discourse"] * cycles_per_hour
    # The keeper's audit (subscriptions.list, paged) runs once per poll interval too.
    audit = (cycle["workspace_events_per_audit"] or 0.0) * cycles_per_hour
    renewals = spaces / renew_hours
    return {
        "safety_poll_chat": round(chat, 2),
        "safety_poll_discourse": round(discourse, 2),
        "audit_workspace_events": round(audit, 2),
        "renewals": round(renewals, 2),
        "renewal_requests_workspace_events": round(renewals * per_renewal, 2),
        "total_chat": round(chat, 2),
        "total_discourse": round(discourse, 2),
        "total_workspace_events": round(audit + renewals * per_renewal, 2),
        "pubsub_pulls_at_emulator_hold": round(3600 / EMULATOR_PULL_HOLD_SECONDS),
        "pubsub_pulls_at_google_hold": round(3600 / GOOGLE_PULL_HOLD_SECONDS),
        "chat_messages_list_between_safety_polls": idle["message_lists_in_window"],
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    timings: dict[str, float] = {}
    creates = scaled(100, args.scale, minimum=4)
    edits = scaled(50, args.scale, minimum=2)
    deletes = scaled(50, args.scale, minimum=2)
    started = time.monotonic()
    latency = with_bench(lambda bench: run_latency(bench, creates, edits, deletes))
    timings["latency"] = round(time.monotonic() - started, 1)
    window = max(10.0, round(IDLE_WINDOW * args.scale, 1))
    idle: dict[str, Any] = {}
    for label, count in (("20", 20), ("1000", scaled(1000, args.scale, minimum=20))):
        started = time.monotonic()
        latency_of_operations = 0.0 if label == "1000" else None
        idle[label] = with_bench(
            partial(
                measure_idle,
                spaces=count,
                window=window,
                operation_latency=latency_of_operations,
            )
        )
        timings[f"idle_{label}"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    renewal = with_bench(lambda bench: measure_renewal(bench, 20, RENEW_WINDOW))
    timings["renewal"] = round(time.monotonic() - started, 1)
    per_renewal = renewal["requests_per_renewal"] or 0.0
    for figures in idle.values():
        figures["per_hour"] = per_hour(figures, per_renewal)
    emit(
        {
            "benchmark": "events",
            "scale": args.scale,
            **latency,
            "idle": idle,
            "renewal": renewal,
            "phase_seconds": timings,
            "targets": {
                "latency_p50_seconds": 1.0,
                "latency_p99_seconds": 2.0,
                "message_lists_between_safety_polls": 0,
            },
            "extrapolation": (
                "per hour at Google's settings: safety-poll requests = requests per idle cycle "
                f"(measured over {CYCLES} cycles after a restart with poll_interval "
                f"{SHORT_POLL} s) x 4 (one poll every 900 s); the keeper's audit = its "
                "subscriptions.list pages x 4 (once per poll interval); renewals = spaces / 2 h "
                "(renewed "
                f"at half of the {GOOGLE_MAX_TTL_HOURS:g} h maximum life with includeResource), "
                "each costing requests_per_renewal Workspace Events requests (measured with "
                f"subscription_max_ttl_seconds {RENEW_TTL}); Pub/Sub pulls = 3600 / the pull "
                f"hold: {EMULATOR_PULL_HOLD_SECONDS:g} s in the emulator, about "
                f"{GOOGLE_PULL_HOLD_SECONDS:g} s observed at Google when idle (undocumented)"
            ),
            "method": (
                "latency: created = time.time() when the Chat emulator's control call (post, "
                "edit or delete as a person) returned; visible = first sighting by a watcher "
                f"thread reading the Discourse emulator's state in-process every "
                f"{WATCH_INTERVAL} s (create: a live post holds the message's token; edit: a "
                "live post holds the edit's token; delete: the message's post is deleted or its "
                f"topic is); {LATENCY_SPACES} spaces, at most one action a second per space; "
                "stages from wrapping the Pub/Sub emulator's publish_as and pull in-process. "
                "idle: request logs cleared after the first cycle with every subscription "
                "ACTIVE and adopted, then counted over the window"
            ),
        }
    )


if __name__ == "__main__":
    main()
