"""Benchmark 5: CPU and memory of the bridge process; startup time (issue 10, item 5).

- `startup`: `python main.py` with one mapped space until its first poll cycle is logged as done
  (wall time from spawn; CPU and RSS of the process at that point).
- `backfill`: N Chat messages (100 threads, 8 authors) in one space, both emulators with no rate
  limits; the daemon runs until every message is mirrored. CPU seconds (user + system, from
  /proc) and peak RSS (VmHWM) of the bridge process; CPU per message subtracts the startup CPU.
- `after_history`: with that history bridged, K new messages are typed and mirrored; requests
  per message on both platforms (compare with `requests_per_item`: cost must not grow with
  history).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Bench, emit, parse_args, process_cost, scaled, with_bench
from tests.e2e.harness import BridgeProcess, wait_for

MIRRORED = "mirrored spaces/"


def startup(bench: Bench) -> dict[str, Any]:
    bench.unlimited()
    (person,) = bench.add_people(1)
    space = bench.add_space("Startup Room")
    bench.say(space, person, "A message so that the space has some history")
    files = bench.config(
        [{"google_space_id": space, "discourse_category_id": bench.category("Startup Room")}],
        name="startup",
    )
    started = time.monotonic()
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1, timeout=60)
        seconds = time.monotonic() - started
        cost = process_cost(bridge.proc.pid)
    finally:
        bridge.terminate()
    return {
        "seconds_to_first_poll_done": round(seconds, 3),
        "cpu_seconds": cost.cpu_seconds,
        "rss_mb": cost.peak_rss_mb,
    }


def backfill(bench: Bench, messages: int, new: int, startup_cpu: float) -> dict[str, Any]:
    bench.unlimited()
    people = bench.add_people(8)
    space = bench.add_space("Big Room")
    threads = 100
    per_thread = max(1, messages // threads)
    sent = 0
    for t in range(threads):
        root = bench.say(space, people[t % 8], f"Big thread {t}: a subject worth a topic")
        sent += 1
        for n in range(per_thread - 1):
            bench.say(space, people[n % 8], f"message {n} in big thread {t}",
                      thread=root["thread"]["name"])  # fmt: skip
            sent += 1
    files = bench.config(
        [{"google_space_id": space, "discourse_category_id": bench.category("Big Room")}],
        name="backfill",
    )
    started = time.monotonic()
    bridge = BridgeProcess(files)
    try:
        wait_for(
            lambda: bridge.log_text().count(MIRRORED) >= sent or bridge.proc.poll() is not None,
            timeout=1200,
            interval=0.5,
            what="backfill",
        )
        seconds = time.monotonic() - started
        cost = process_cost(bridge.proc.pid)
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=120)

        # History is now `sent` messages; K more, one thread each ten.
        bench.clear_logs()
        before = bridge.log_text().count(MIRRORED)
        thread = None
        for n in range(new):
            message = bench.say(space, people[n % 8], f"new message {n} after the history",
                                thread=thread)  # fmt: skip
            thread = None if n % 10 == 9 else message["thread"]["name"]
        wait_for(
            lambda: bridge.log_text().count(MIRRORED) - before >= new, timeout=120, what="new"
        )
        discourse = bench.discourse_requests()
        chat = bench.chat_requests()
    finally:
        bridge.terminate()
    return {
        "backfill": {
            "messages": sent,
            "seconds": round(seconds, 2),
            "messages_per_second": round(sent / seconds, 1),
            "cpu_seconds": cost.cpu_seconds,
            "cpu_ms_per_message": round((cost.cpu_seconds - startup_cpu) / sent * 1000, 3),
            "peak_rss_mb": cost.peak_rss_mb,
        },
        "after_history": {
            "history_messages": sent,
            "new_messages": new,
            "discourse_requests_per_message": round(discourse.total / new, 4),
            "chat_requests_per_message": round(chat.total / new, 4),
            "discourse": discourse.as_dict(),
            "chat": chat.as_dict(),
        },
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    start = with_bench(startup)
    result = with_bench(
        lambda bench: backfill(
            bench,
            scaled(10_000, args.scale, 100),
            scaled(100, args.scale, 10),
            start["cpu_seconds"],
        )
    )
    emit(
        {
            "benchmark": "footprint",
            "startup": start,
            **result,
            "targets": {"cpu_ms_per_message": 2.0, "peak_rss_mb": 200},
            "scale": args.scale,
        }
    )


if __name__ == "__main__":
    main()
