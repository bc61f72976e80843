"""Benchmark 2: requests per poll cycle when nothing changes (issue 10, item 2).

For 1, 100 and 1,000 mapped room spaces (each with one message of history, already bridged, whose
last message is two hours old: older than the default `edit_window` of 1 h, inside which a space
is re-read every cycle to catch edits), the daemon polls every 0.5 s; after the backfill the
request logs are cleared at the end of a cycle and read again CYCLES cycles later. Also measured:
one mapped space that has never had a
message (Chat gives it no `lastActiveTime`), and one space with a long bridged history, to show
that an idle cycle costs the same whatever the history size; and 100 spaces whose last message is
recent (inside the edit window), which the sync re-reads on every cycle by design.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from bench.common import Bench, emit, parse_args, scaled, with_bench
from tests.e2e.harness import BridgeProcess, wait_for

CYCLES = 10


def measure(
    bench: Bench, spaces: int, *, history: int = 1, name: str, age: timedelta = timedelta(hours=2)
) -> dict[str, Any]:
    """Map `spaces` spaces with `history` messages each, bridge them, then count idle cycles."""
    bench.unlimited()
    people = bench.add_people(1) if not bench.people else bench.people[:1]
    mappings = []
    start = datetime.now(UTC) - age
    for i in range(spaces):
        space = bench.add_space(f"{name} {i:04d}")
        if history:
            root = bench.chat.control.post_message(
                space, sender=people[0], text=f"The only thread of space {i}, about the plan",
                create_time=_stamp(start),
            )  # fmt: skip
            for n in range(history - 1):
                bench.chat.control.post_message(
                    space, sender=people[0], text=f"history {n}",
                    thread_name=root["thread"]["name"],
                    create_time=_stamp(start + timedelta(milliseconds=n + 1)),
                )  # fmt: skip
        mappings.append(
            {"google_space_id": space, "discourse_category_id": bench.category(f"{name} {i:04d}")}
        )
    files = bench.config(mappings, name=name.replace(" ", "_"))
    bridge = BridgeProcess(files)
    try:
        expected = spaces * history
        wait_for(
            lambda: (
                bridge.log_text().count("mirrored spaces/") >= expected
                or bridge.proc.poll() is not None
            ),
            timeout=900,
            interval=0.2,
            what="backfill",
        )
        bridge.wait_cycles(bridge.completed_cycles() + 2, timeout=120)
        first_cycle = bridge.completed_cycles()
        bench.clear_logs()
        bridge.wait_cycles(first_cycle + CYCLES, timeout=300)
        chat = bench.chat_requests()
        discourse = bench.discourse_requests()
    finally:
        bridge.terminate()
    return {
        "spaces": spaces,
        "history_per_space": history,
        "last_message_age_seconds": round(age.total_seconds()),
        "cycles": CYCLES,
        "chat_requests_per_cycle": round(chat.total / CYCLES, 3),
        "discourse_requests_per_cycle": round(discourse.total / CYCLES, 3),
        "chat": chat.as_dict(),
        "discourse": discourse.as_dict(),
    }


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def main() -> None:
    args = parse_args(__doc__ or "")
    runs: dict[str, Any] = {}
    for spaces in (1, 100, 1000):
        count = spaces if spaces == 1 else scaled(spaces, args.scale, minimum=2)
        runs[f"{spaces}_spaces"] = with_bench(partial(measure, spaces=count, name=f"Idle {count}"))
    runs["1_empty_space"] = with_bench(lambda bench: measure(bench, 1, history=0, name="Empty"))
    long_history = scaled(2000, args.scale, minimum=10)
    runs["1_space_long_history"] = with_bench(
        lambda bench: measure(bench, 1, history=long_history, name="Long")
    )
    recent = scaled(100, args.scale, minimum=2)
    runs["100_recent_spaces"] = with_bench(
        lambda bench: measure(bench, recent, name="Recent", age=timedelta(seconds=30))
    )
    emit(
        {
            "benchmark": "idle_cost",
            "runs": runs,
            "targets": {"chat_requests_per_1000_spaces": 1, "discourse_requests_per_cycle": 1},
            "scale": args.scale,
        }
    )


if __name__ == "__main__":
    main()
