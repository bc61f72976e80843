"""Issue 9 §2, fault test: both emulators misbehave while the workload runs.

A chaos thread watches each emulator's request log and arms faults on the next calls in proportion
to the calls it sees: 5xx for 10% of them, and 429 bursts, latency spikes and dropped connections
for 5% each. Discourse also drops 10% of its webhook deliveries. The faults go on a while after
the workload ends, then stop, and the same invariants as the crash test must hold within a
bounded time.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.harness import BridgeProcess, wait_for
from tests.e2e.world import World
from tests.reliability.conftest import Figures
from tests.reliability.workload import (
    Workload,
    check_room_invariants,
    converged,
    mappings,
    order_problems,
    setup_rooms,
)

pytestmark = pytest.mark.e2e

FAULT_RATE = 0.10  # of API calls answered 5xx; also the share of webhook deliveries dropped
# Faults armed per API call seen, by kind: on top of the 10% 5xx, 429 bursts, latency spikes and
# dropped connections at 5% each.
RATES = {"5xx": FAULT_RATE, "429": 0.05, "latency": 0.05, "drop": 0.05}
SETTLE_SECONDS = 180  # the bound: everything converges this long after the faults stop


@dataclass(frozen=True, slots=True)
class FaultSize:
    spaces: int
    chat: int
    forum: int
    pause: float  # seconds between two writes of the workload
    extra_chaos: float  # seconds the faults go on after the last write


REDUCED = FaultSize(spaces=2, chat=30, forum=12, pause=0.2, extra_chaos=10)
FULL = FaultSize(spaces=5, chat=300, forum=100, pause=0.1, extra_chaos=120)


class Chaos(threading.Thread):
    """Arms faults at `FAULT_RATE` of each emulator's API traffic until stopped."""

    def __init__(self, world: World, seed: int) -> None:
        super().__init__(name="chaos", daemon=True)
        self.world = world
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.injected: Counter[str] = Counter()
        self.error: BaseException | None = None

    @staticmethod
    def _api_calls(control: Any) -> int:
        counts = control.requests()["counts"]
        return sum(n for key, n in counts.items() if "/_emulator" not in key)

    def _arm(self, control: Any, side: str, kind: str) -> None:
        if kind == "5xx":
            control.add_fault(1, status=self.rng.choice([500, 502, 503]))
        elif kind == "429":
            # A burst: the next calls are all refused (the emulators' 429 bodies; an injected
            # Discourse 429 carries no wait hint, so the client waits its default 10 s).
            control.add_fault(self.rng.randint(2, 3), status=429)
        elif kind == "latency":
            control.add_fault(1, latency_ms=self.rng.randint(300, 1500))
        else:
            control.add_fault(1, drop_connection=True)
        self.injected[f"{side} {kind}"] += 1

    def run(self) -> None:
        sides = {"chat": self.world.chat.control, "discourse": self.world.discourse.control}
        seen = dict.fromkeys(sides, 0)
        owed = {(side, kind): 0.0 for side in sides for kind in RATES}
        try:
            while not self.halt.wait(0.25):
                for side, control in sides.items():
                    calls = self._api_calls(control)
                    new, seen[side] = calls - seen[side], calls
                    for kind, rate in RATES.items():
                        owed[side, kind] += new * rate
                        while owed[side, kind] >= 1:
                            owed[side, kind] -= 1
                            self._arm(control, side, kind)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        self.world.chat.control.clear_faults()
        self.world.discourse.control.clear_faults()
        self.world.discourse.control.settings(webhook_drop_rate=0.0)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(REDUCED, id="reduced"),
        pytest.param(FULL, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
    ],
)
def test_injected_faults_lose_and_double_nothing(
    world: World, figures: Figures, size: FaultSize
) -> None:
    people, rooms = setup_rooms(world, size.spaces)
    files = world.config(mappings(rooms), poll_interval_seconds=0.3)
    world.hook_to(files)
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1)
    chaos = Chaos(world, seed=2)
    world.discourse.control.settings(webhook_drop_rate=FAULT_RATE)
    chaos.start()
    workload = Workload(world, people, rooms, seed=2)
    try:
        # Writes spaced out so that the bridge works under faults rather than after them.
        workload.run(size.chat, size.forum, pause=lambda: chaos.halt.wait(size.pause) and None)
        # The faults go on a while after the writes, against a bridge busy catching up.
        chaos.halt.wait(size.extra_chaos)
        chaos.stop()
        assert chaos.error is None, chaos.error
        expected = size.chat + size.forum
        report = wait_for(
            lambda: converged(world, rooms, expected, allow_disorder=True),
            timeout=SETTLE_SECONDS,
            interval=1.0,
            what=f"{expected} items within {SETTLE_SECONDS}s of the faults stopping",
        )
    except AssertionError as exc:
        problems = check_room_invariants(world, rooms).problems
        raise AssertionError("\n".join([str(exc), *problems[:40]])) from None
    finally:
        chaos.halt.set()
        bridge.kill()
    figures.set(
        items=report.items,
        faults=sum(chaos.injected.values()),
        lost=report.lost,
        duplicated=report.duplicated,
        fault_kinds=dict(chaos.injected),
    )
    assert report.items == expected
    assert (report.lost, report.duplicated, report.echoed) == (0, 0, 0)
    assert order_problems(report) == []
