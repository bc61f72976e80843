"""Benchmark 4: webhook received → Chat message created (issue 10, item 4).

The Discourse emulator's webhook points at a small relay in this process that stamps the time a
delivery arrives and forwards it, byte for byte with its signature headers, to the bridge's
listener (a loopback hop of about a millisecond, counted in the figure). The Chat emulator stamps
`createTime` when it stores the message, with the same clock. Chat's quota is on at real time
(one write a second per space).

- `free_slots`: a burst of 50 posts, one per mapped space: every space's write slot is free, so
  this is the figure the target (p99 < 1.5 s) is about.
- `burst`: N posts over 50 spaces (N/50 per space) written as fast as the emulator takes them.
  Chat's one-write-a-second-per-space quota alone makes the k-th post of a space wait k-1 s,
  so besides the raw latency the figure `excess_over_quota_floor` subtracts that unavoidable
  wait: for each message, the floor is max(webhook received, previous message of the space + 1 s).
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from typing import Any

import requests

from bench.common import Bench, emit, parse_args, scaled, summary, with_bench
from emulators._server import serve_in_thread
from tests.e2e.harness import BridgeProcess, wait_for

SPACES = 50
_COPY_OF = re.compile(r"client-dp-(\d+)(?:-k[0-9a-f]{16})?")


class Relay:
    """Stamps each webhook's arrival and forwards it to the bridge."""

    def __init__(self) -> None:
        self.target = ""
        self.received: dict[int, float] = {}
        self._lock = threading.Lock()
        self._session = requests.Session()
        self.handle = serve_in_thread(self._app)

    @property
    def url(self) -> str:
        return f"{self.handle.url}/relay"

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        arrived = time.time()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        try:
            post_id = int(json.loads(body)["post"]["id"])
        except (ValueError, KeyError, TypeError):
            post_id = None
        if post_id is not None:
            with self._lock:
                self.received.setdefault(post_id, arrived)
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_X_DISCOURSE")
        }
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "application/json")
        answer = self._session.post(self.target, data=body, headers=headers, timeout=30)
        start_response(f"{answer.status_code} OK", [("Content-Type", "application/json")])
        return [answer.content]

    def stop(self) -> None:
        self.handle.stop()


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(bench: Bench, per_space: int) -> dict[str, Any]:
    bench.discourse.control.settings(max_admin_api_reqs_per_minute=10_000_000)
    bench.chat.control.configure(quotas_enabled=True)
    bench.add_people(1)
    mapped = []
    for i in range(SPACES):
        space = bench.add_space(f"Latency {i:02d}")
        mapped.append((space, bench.category(f"Latency {i:02d}")))
    writers = [f"speaker{i}" for i in range(4)]
    for name in writers:
        bench.forum_user(name)
    files = bench.config([{"google_space_id": s, "discourse_category_id": c} for s, c in mapped])
    relay = Relay()
    relay.target = files.webhook_url
    bench.hook_to(relay.url)
    bridge = BridgeProcess(files)
    topics: dict[int, int] = {}
    try:
        bridge.wait_cycles(1, timeout=60)
        # Free slots: one topic per space, all at once.
        free_ids = []
        posted_at: dict[int, float] = {}
        for i, (_space, category) in enumerate(mapped):
            post = bench.discourse.control.create_post(
                writers[i % 4], f"Latency topic {i}: opening post with enough words.",
                title=f"Latency topic number {i} for the burst", category_id=category,
            )  # fmt: skip
            posted_at[int(post["id"])] = time.time()
            topics[i] = int(post["topic_id"])
            free_ids.append(int(post["id"]))
        wait_for(
            lambda: bridge.log_text().count("bridged post ") >= SPACES, timeout=120, what="free"
        )
        # Let every space's write slot free up again before the burst.
        time.sleep(1.5)
        burst_ids = []
        for n in range(per_space):
            for i in range(SPACES):
                post = bench.discourse.control.create_post(
                    writers[(n + i) % 4], f"Burst reply {n} in topic {i}, long enough.",
                    topic_id=topics[i],
                )  # fmt: skip
                burst_ids.append(int(post["id"]))
        expected = SPACES + len(burst_ids)
        wait_for(
            lambda: bridge.log_text().count("bridged post ") >= expected,
            timeout=900,
            interval=0.5,
            what="burst",
        )
    finally:
        bridge.terminate()
        relay.stop()

    created: dict[int, tuple[str, float]] = {}
    for space, messages in bench.chat.control.state()["messages"].items():
        for message in messages:
            # The copy of post N: `client-dp-N-k<tag>` (keyed; `client-dp-N` before).
            copy_of = _COPY_OF.fullmatch(message.get("clientAssignedMessageId") or "")
            if copy_of:
                created[int(copy_of.group(1))] = (space, _epoch(message["createTime"]))
    free = [created[p][1] - relay.received[p] for p in free_ids if p in relay.received]
    # The catch-up pull (every poll) may bridge a post before its webhook arrives: then the
    # figure above is negative. Measured from the post's creation it is an upper bound.
    from_post = [created[p][1] - posted_at[p] for p in free_ids]
    raw: list[float] = []
    excess: list[float] = []
    last_in_space: dict[str, float] = {}
    for post_id in free_ids:
        space, at = created[post_id]
        last_in_space[space] = max(last_in_space.get(space, 0.0), at)
    for post_id in sorted(burst_ids, key=lambda p: created[p][1]):
        space, at = created[post_id]
        arrived = relay.received.get(post_id)
        if arrived is None:
            continue
        raw.append(at - arrived)
        floor = max(arrived, last_in_space.get(space, 0.0) + 1.0)
        excess.append(max(0.0, at - floor))
        last_in_space[space] = at
    return {
        "spaces": SPACES,
        "free_slots": {
            "events": len(free),
            "latency_seconds": summary(free),
            "from_post_created_seconds": summary(from_post),
            "bridged_before_webhook_arrived": sum(1 for v in free if v < 0),
        },
        "burst": {
            "events": len(raw),
            "per_space": per_space,
            "latency_seconds": summary(raw),
            "excess_over_quota_floor_seconds": summary(excess),
        },
        "webhooks_missing_at_relay": len(free_ids) + len(burst_ids) - len(free) - len(raw),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    per_space = scaled(1000, args.scale, minimum=SPACES) // SPACES
    result = with_bench(lambda bench: run(bench, per_space))
    result.update(benchmark="latency", targets={"free_slots_p99_seconds": 1.5}, scale=args.scale)
    emit(result)


if __name__ == "__main__":
    main()
