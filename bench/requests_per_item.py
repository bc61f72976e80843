"""Benchmark 1: requests per bridged item in steady state, each way (issue 10, item 1).

The daemon runs (poll every 0.5 s, webhooks on) against both emulators with their rate limits
lifted, except Chat's per-space write quota, which stays on (the client paces one write a second
per space; Discourse posts are spread over 50 spaces so that the run takes seconds, not minutes).
Warm-up first (authors known, first topics made); then the request logs are cleared and:

- Chat → Discourse: N messages (10 threads) are typed into one mapped space while the bridge
  runs; every Discourse request in the window is divided by the messages mirrored.
- Discourse → Chat: N posts (50 topics, one per mapped space, written round-robin by forum users)
  arrive through signed webhooks; every Chat request in the window is divided by the posts
  mirrored.

Both platforms' requests are reported for both windows, split into reads and writes.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Bench, emit, parse_args, scaled, with_bench
from tests.e2e.harness import BridgeProcess, wait_for

MIRRORED = r"mirrored spaces/"
BRIDGED = r"bridged post "
D2G_SPACES = 50


def lines(bridge: BridgeProcess, needle: str) -> int:
    return bridge.log_text().count(needle)


def run(bench: Bench, items: int) -> dict[str, Any]:
    bench.unlimited()
    bench.chat.control.configure(quotas_enabled=True, project_write_limit=[100_000, 60.0],
                                 project_read_limit=[100_000, 60.0])  # fmt: skip
    people = bench.add_people(4)
    g2d_space = bench.add_space("Steady Room")
    mappings: list[dict[str, Any]] = [
        {"google_space_id": g2d_space, "discourse_category_id": bench.category("Steady Room")}
    ]
    d2g_spaces = []
    for i in range(D2G_SPACES):
        space = bench.add_space(f"Forum Room {i:02d}")
        category = bench.category(f"Forum Room {i:02d}")
        d2g_spaces.append((space, category))
        mappings.append({"google_space_id": space, "discourse_category_id": category})
    writers = [f"writer{i}" for i in range(4)]
    for name in writers:
        bench.forum_user(name)
    files = bench.config(mappings)
    bench.hook_to(files.webhook_url)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1, timeout=60)
        # Warm-up: every author known on both sides, one topic already bridged each way.
        for person in people:
            bench.say(g2d_space, person, f"Hello from {person}, warming up the bridge")
        wait_for(lambda: lines(bridge, MIRRORED) >= len(people), timeout=60, what="warm-up g2d")
        bench.discourse.control.create_post(
            writers[0], "Warm-up post from the forum side, please ignore.",
            title="Warm-up topic from the forum", category_id=d2g_spaces[0][1],
        )  # fmt: skip
        wait_for(lambda: lines(bridge, BRIDGED) >= 1, timeout=60, what="warm-up d2g")
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=60)

        # Chat -> Discourse.
        bench.clear_logs()
        before = lines(bridge, MIRRORED)
        started = time.monotonic()
        threads = 10
        per_thread = max(1, items // threads)
        sent = 0
        for t in range(threads):
            root = bench.say(g2d_space, people[t % 4], f"Steady thread {t}: what shall we do?")
            sent += 1
            for n in range(per_thread - 1):
                bench.say(g2d_space, people[n % 4], f"reply {n} in thread {t}",
                          thread=root["thread"]["name"])  # fmt: skip
                sent += 1
        wait_for(lambda: lines(bridge, MIRRORED) - before >= sent, timeout=600, what="g2d")
        g2d_seconds = time.monotonic() - started
        g2d_discourse = bench.discourse_requests()
        g2d_chat = bench.chat_requests()

        # Discourse -> Chat.
        bench.clear_logs()
        before = lines(bridge, BRIDGED)
        started = time.monotonic()
        per_space = max(1, items // D2G_SPACES)
        topics: dict[int, int] = {}
        posted = 0
        for n in range(per_space):
            for i, (_space, category) in enumerate(d2g_spaces):
                writer = writers[(n + i) % 4]
                if n == 0:
                    post = bench.discourse.control.create_post(
                        writer, f"Forum topic {i} opening post, with enough words.",
                        title=f"Forum topic number {i} for the steady run", category_id=category,
                    )  # fmt: skip
                    topics[i] = int(post["topic_id"])
                else:
                    bench.discourse.control.create_post(
                        writer, f"Forum reply {n} in topic {i}, long enough to pass.",
                        topic_id=topics[i],
                    )  # fmt: skip
                posted += 1
        wait_for(lambda: lines(bridge, BRIDGED) - before >= posted, timeout=600, what="d2g")
        d2g_seconds = time.monotonic() - started
        d2g_chat = bench.chat_requests()
        d2g_discourse = bench.discourse_requests()
    finally:
        bridge.terminate()

    return {
        "benchmark": "requests_per_item",
        "gchat_to_discourse": {
            "messages": sent,
            "seconds": round(g2d_seconds, 2),
            "discourse_requests_per_message": round(g2d_discourse.total / sent, 4),
            "discourse_writes_per_message": round(g2d_discourse.writes / sent, 4),
            "discourse_reads_per_message": round(g2d_discourse.reads / sent, 4),
            "chat_requests_per_message": round(g2d_chat.total / sent, 4),
            "discourse": g2d_discourse.as_dict(),
            "chat": g2d_chat.as_dict(),
        },
        "discourse_to_gchat": {
            "posts": posted,
            "spaces": D2G_SPACES,
            "seconds": round(d2g_seconds, 2),
            "chat_requests_per_post": round(d2g_chat.total / posted, 4),
            "chat_writes_per_post": round(d2g_chat.writes / posted, 4),
            "chat_reads_per_post": round(d2g_chat.reads / posted, 4),
            "discourse_requests_per_post": round(d2g_discourse.total / posted, 4),
            "chat": d2g_chat.as_dict(),
            "discourse": d2g_discourse.as_dict(),
        },
        "targets": {"discourse_requests_per_message": 1.1, "chat_requests_per_post": 1.1},
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    items = scaled(1000, args.scale, minimum=D2G_SPACES)
    result = with_bench(lambda bench: run(bench, items))
    result["scale"] = args.scale
    emit(result)


if __name__ == "__main__":
    main()
