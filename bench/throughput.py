"""Benchmark 3: sustained throughput at each platform's rate ceiling (issue 10, item 3).

Chat → Discourse: a backfill of N messages (20 threads, 4 authors) with the Discourse emulator at
its default 60 admin-API requests a minute, time-scaled 50× (`time_scale` 50: the window is
1.2 s) and the bridge's budget set to match (`requests_per_minute` 60, `rate_window_seconds`
1.2). The ceiling is therefore 50 requests a second of wall time, i.e. 60 a "minute". The rate
is measured between the first and the last mirrored message (from the bridge's log), so process
start and user creation are outside it; the whole run is reported too.

Discourse → Chat: M posts in 20 topics, one per mapped space, arriving by webhook; Chat's quota is
on at real time (one write a second per space; the client's `write_interval_seconds` is 1 s and
is not scaled), so the ceiling is 20 messages a second. Measured from the first to the last
bridged post.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Bench, emit, log_times, parse_args, scaled, with_bench
from tests.e2e.harness import BridgeProcess, wait_for

TIME_SCALE = 50.0
WINDOW = 60.0 / TIME_SCALE
D2G_SPACES = 20


def gchat_to_discourse(bench: Bench, messages: int) -> dict[str, Any]:
    bench.discourse.control.settings(time_scale=TIME_SCALE, max_admin_api_reqs_per_minute=60)
    people = bench.add_people(4)
    space = bench.add_space("Backfill Room")
    category = bench.category("Backfill Room")
    threads = 20
    per_thread = max(1, messages // threads)
    sent = 0
    for t in range(threads):
        root = bench.say(space, people[t % 4], f"Backfill thread {t}: the quarterly plan")
        sent += 1
        for n in range(per_thread - 1):
            bench.say(space, people[n % 4], f"backfill {n} of {t}", thread=root["thread"]["name"])
            sent += 1
    files = bench.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        requests_per_minute=60,
        extra_discourse={"rate_window_seconds": WINDOW},
    )
    bench.clear_logs()
    started = time.monotonic()
    bridge = BridgeProcess(files)
    try:
        wait_for(
            lambda: (
                bridge.log_text().count("mirrored spaces/") >= sent
                or bridge.proc.poll() is not None
            ),
            timeout=900,
            interval=0.5,
            what="backfill",
        )
        total_seconds = time.monotonic() - started
    finally:
        bridge.terminate()
    discourse = bench.discourse_requests()
    times = log_times(files, r"mirrored spaces/")
    window = times[-1] - times[0] if len(times) > 1 else float("nan")
    per_second = (len(times) - 1) / window if window > 0 else float("nan")
    # One real minute of Discourse budget is WINDOW seconds here.
    per_budget_minute = per_second * WINDOW
    return {
        "messages": sent,
        "mirrored": len(times),
        "seconds_first_to_last": round(window, 2),
        "seconds_total": round(total_seconds, 2),
        "messages_per_budget_minute": round(per_budget_minute, 2),
        "ceiling_requests_per_budget_minute": 60,
        "fraction_of_ceiling": round(per_budget_minute / 60, 4),
        "fraction_of_ceiling_whole_run": round(sent / (total_seconds / WINDOW) / 60, 4),
        "requests_per_budget_minute": round(discourse.total / (total_seconds / WINDOW), 2),
        "rate_limited_429": discourse.rate_limited,
        "rate_limited_fraction": round(discourse.rate_limited / max(1, discourse.total), 5),
        "discourse": discourse.as_dict(),
    }


def discourse_to_gchat(bench: Bench, posts: int) -> dict[str, Any]:
    bench.discourse.control.settings(max_admin_api_reqs_per_minute=10_000_000)
    bench.chat.control.configure(quotas_enabled=True)
    bench.add_people(1)
    mapped = []
    for i in range(D2G_SPACES):
        space = bench.add_space(f"Outbound {i:02d}")
        mapped.append((space, bench.category(f"Outbound {i:02d}")))
    writers = [f"author{i}" for i in range(4)]
    for name in writers:
        bench.forum_user(name)
    files = bench.config(
        [{"google_space_id": s, "discourse_category_id": c} for s, c in mapped], name="d2g"
    )
    bench.hook_to(files.webhook_url)
    bridge = BridgeProcess(files)
    try:
        bridge.wait_cycles(1, timeout=60)
        bench.clear_logs()
        started = time.monotonic()
        per_space = max(1, posts // D2G_SPACES)
        topics: dict[int, int] = {}
        posted = 0
        for n in range(per_space):
            for i, (_space, category) in enumerate(mapped):
                writer = writers[(n + i) % 4]
                if n == 0:
                    post = bench.discourse.control.create_post(
                        writer, f"Outbound topic {i}: opening post with enough words.",
                        title=f"Outbound topic number {i} at the ceiling", category_id=category,
                    )  # fmt: skip
                    topics[i] = int(post["topic_id"])
                else:
                    bench.discourse.control.create_post(
                        writer, f"Outbound reply {n} in topic {i}, long enough.",
                        topic_id=topics[i],
                    )  # fmt: skip
                posted += 1
        post_seconds = time.monotonic() - started
        wait_for(
            lambda: bridge.log_text().count("bridged post ") >= posted,
            timeout=900,
            interval=0.5,
            what="outbound",
        )
        total_seconds = time.monotonic() - started
    finally:
        bridge.terminate()
    chat = bench.chat_requests()
    times = log_times(files, r"bridged post ")
    window = times[-1] - times[0] if len(times) > 1 else float("nan")
    per_minute = (len(times) - 1) / window * 60 if window > 0 else float("nan")
    ceiling = D2G_SPACES * 60
    return {
        "posts": posted,
        "spaces": D2G_SPACES,
        "bridged": len(times),
        "seconds_to_create_posts": round(post_seconds, 2),
        "seconds_first_to_last": round(window, 2),
        "seconds_total": round(total_seconds, 2),
        "messages_per_minute": round(per_minute, 1),
        "ceiling_messages_per_minute": ceiling,
        "fraction_of_ceiling": round(per_minute / ceiling, 4),
        "rate_limited_429": chat.rate_limited,
        "rate_limited_fraction": round(chat.rate_limited / max(1, chat.total), 5),
        "chat": chat.as_dict(),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    g2d = with_bench(lambda bench: gchat_to_discourse(bench, scaled(2000, args.scale, 40)))
    d2g = with_bench(lambda bench: discourse_to_gchat(bench, scaled(600, args.scale, 40)))
    emit(
        {
            "benchmark": "throughput",
            "gchat_to_discourse": g2d,
            "discourse_to_gchat": d2g,
            "targets": {"fraction_of_ceiling": 0.95, "rate_limited_fraction": 0.01},
            "scale": args.scale,
        }
    )


if __name__ == "__main__":
    main()
