"""Shared scaffolding of the benchmarks: both emulators in-process, the bridge as a subprocess.

Every benchmark is a script (`python -m bench.<name> [--scale F]`) that builds a `Bench` world,
runs `python main.py` against it exactly as the end-to-end tests do, and prints ONE JSON object on
its last stdout line. Figures come from the emulators' request logs (what the platforms saw), the
bridge's own log timestamps (what it did when), and /proc (what it cost). Nothing here tunes the
bridge: the config is the operator's, apart from the rate settings each benchmark names.

`--scale` shrinks every count (CI or a smoke run); figures at a scale other than 1 are not
comparable with the targets and say so in their `scale` field.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from emulators.discourse import DiscourseEmulator
from emulators.google_chat import ChatEmulator
from tests.e2e.harness import (
    WEBHOOK_SECRET,
    BridgeFiles,
    BridgeProcess,
    register_bridge_account,
    wait_for,
    write_config,
)

BRIDGE_USER = "users/100000000000000000001"
# The bridge's log format (main.LOG_FORMAT) starts with asctime: "2024-05-01 12:00:00,123".
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def parse_args(description: str) -> argparse.Namespace:
    # The emulators' werkzeug servers log every request to stderr; the figures come from their
    # request logs instead.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1")),
        help="multiply every item count by this (default 1; e.g. 0.02 for a smoke run)",
    )
    return parser.parse_args()


def scaled(count: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(count * scale))


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object (the runner reads the last stdout line)."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
        "mean": round(statistics.fmean(values), 4),
    }


# ---------------------------------------------------------------------------- request logs


@dataclass(frozen=True, slots=True)
class RequestCount:
    """Requests an emulator served, split the way the budgets are: reads, writes, 429s."""

    reads: int
    writes: int
    auth: int
    rate_limited: int
    by_route: dict[str, int]

    @property
    def total(self) -> int:
        return self.reads + self.writes

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "writes": self.writes,
            "total": self.total,
            "auth": self.auth,
            "rate_limited": self.rate_limited,
            "by_route": dict(sorted(self.by_route.items(), key=lambda kv: -kv[1])),
        }


def count_requests(log: dict[str, Any]) -> RequestCount:
    """Count an emulator's `/_emulator/requests` answer. OAuth `/token` calls are not API calls."""
    reads = writes = auth = limited = 0
    by_route: dict[str, int] = {}
    for entry in log["requests"]:
        path = entry["path"]
        if path == "/token":
            auth += 1
            continue
        if entry.get("status") == 429:
            limited += 1
        if entry["method"] in ("GET", "HEAD"):
            reads += 1
        else:
            writes += 1
    for route, n in (log.get("counts") or {}).items():
        if not route.endswith(" /token"):
            by_route[route] = n
    return RequestCount(reads, writes, auth, limited, by_route)


# ---------------------------------------------------------------------------- the world


class Bench:
    """Both emulators, the bridge's Chat account, people, spaces and categories."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.chat = ChatEmulator.start(host="127.0.0.1", port=0)
        self.discourse = DiscourseEmulator.start(host="127.0.0.1", port=0)
        self.chat.control.create_user(
            name=BRIDGE_USER, displayName="Bridge Bot", email="bridge@example.com"
        )
        self.people: list[str] = []
        self.spaces: list[str] = []

    def close(self) -> None:
        self.chat.stop()
        self.discourse.stop()

    # -- platform settings

    def unlimited(self) -> None:
        """Lift both platforms' rate limits (for figures that are not about them)."""
        self.discourse.control.settings(max_admin_api_reqs_per_minute=10_000_000)
        self.chat.control.configure(quotas_enabled=False)

    # -- content

    def add_people(self, count: int) -> list[str]:
        made = []
        for _ in range(count):
            i = len(self.people) + 1
            user = self.chat.control.create_user(
                name=f"users/2{i:020d}",
                displayName=f"Person {i:04d}",
                email=f"person.{i}@example.com",
            )
            self.people.append(user["name"])
            made.append(user["name"])
        return made

    def add_space(self, display_name: str) -> str:
        space = self.chat.control.create_space(
            displayName=display_name, spaceType="SPACE", members=[BRIDGE_USER, *self.people]
        )
        self.spaces.append(space["name"])
        return str(space["name"])

    def category(self, name: str) -> int:
        return int(self.discourse.control.create_category(name=name)["id"])

    def say(self, space: str, sender: str, text: str, thread: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"sender": sender, "text": text}
        if thread:
            body["threadName"] = thread
        return dict(self.chat.control.post_message(space.split("/", 1)[1], **body))

    def forum_user(self, username: str) -> None:
        self.discourse.control.create_user(
            username, name=username.title(), email=f"{username}@forum.example.com", trust_level=2
        )

    def hook_to(self, url: str) -> None:
        self.discourse.control.create_webhook(url, secret=WEBHOOK_SECRET)

    # -- the bridge

    def config(
        self, mappings: list[dict[str, Any]], name: str = "bridge", **kw: Any
    ) -> BridgeFiles:
        files = write_config(
            self.directory / name,
            chat_url=self.chat.url,
            discourse_url=self.discourse.url,
            mappings=mappings,
            **kw,
        )
        if not files.token.exists():
            register_bridge_account(self.chat.control, BRIDGE_USER, self.chat.url, files.token)
        return files

    def clear_logs(self) -> None:
        self.chat.control.clear_requests()
        self.discourse.control.clear_requests()

    def chat_requests(self) -> RequestCount:
        return count_requests(self.chat.control.requests())

    def discourse_requests(self) -> RequestCount:
        return count_requests(self.discourse.control.requests())


def with_bench(body: Callable[[Bench], dict[str, Any]]) -> dict[str, Any]:
    with TemporaryDirectory(prefix="gchat-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            return body(bench)
        finally:
            bench.close()


# ---------------------------------------------------------------------------- the process


def log_times(files: BridgeFiles, pattern: str) -> list[float]:
    """Epoch seconds of the bridge's log lines matching `pattern` (millisecond resolution)."""
    found = []
    regex = re.compile(pattern)
    for line in files.log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LOG_TIME.match(line)
        if match and regex.search(line):
            found.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


@dataclass(frozen=True, slots=True)
class ProcessCost:
    cpu_seconds: float
    peak_rss_mb: float


def process_cost(pid: int) -> ProcessCost:
    """CPU (user + system) and peak RSS (VmHWM) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
    peak_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak_kb = int(line.split()[1])
    return ProcessCost(round(cpu, 3), round(peak_kb / 1024, 1))


def run_bridge_until(
    files: BridgeFiles,
    done: Callable[[], bool],
    *,
    timeout: float,
    extra_cycles: int = 0,
) -> tuple[BridgeProcess, ProcessCost]:
    """Start the daemon, wait for `done` (and `extra_cycles` more poll cycles), measure, stop."""
    bridge = BridgeProcess(files)
    try:
        wait_for(lambda: done() or bridge.proc.poll() is not None, timeout=timeout, interval=0.2)
        if bridge.proc.poll() is not None:
            raise RuntimeError(f"bridge exited: {bridge.stderr()}")
        if extra_cycles:
            bridge.wait_cycles(bridge.completed_cycles() + extra_cycles, timeout=timeout)
        cost = process_cost(bridge.proc.pid)
    finally:
        bridge.terminate()
    return bridge, cost


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 3)
