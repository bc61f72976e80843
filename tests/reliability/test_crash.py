"""Issue 9 §1, crash test: SIGKILL the bridge at random moments under a mixed workload.

Chat messages (new threads and replies) and Discourse posts (new topics and replies, including
replies into the other side's conversations) are written by a thread while `python main.py` is
killed with SIGKILL at random moments and restarted. Once the workload ends and a last bridge
process has caught up, the emulators must show every item exactly once on the other side, in its
thread or topic, in order (`check_room_invariants`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class CrashSize:
    spaces: int
    chat: int
    forum: int
    kills: int


REDUCED = CrashSize(spaces=2, chat=40, forum=16, kills=4)
FULL = CrashSize(spaces=5, chat=500, forum=200, kills=20)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(REDUCED, id="reduced"),
        pytest.param(FULL, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
    ],
)
def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    world: World, figures: Figures, size: CrashSize
) -> None:
    rng = random.Random(9)
    people, rooms = setup_rooms(world, size.spaces)
    files = world.config(mappings(rooms), poll_interval_seconds=0.3)
    world.hook_to(files)
    workload = Workload(world, people, rooms, seed=9)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            # Spread the writes over the kill period, so every restart finds new work.
            pause = (size.kills * 1.75) / (size.chat + size.forum)
            workload.run(size.chat, size.forum, pause=lambda: time.sleep(pause))
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write, name="workload", daemon=True)
    bridge = BridgeProcess(files)
    # The first cycle sets Discourse's high-water mark: posts older than the bridge's first run
    # are history, which it does not replay into Chat by design.
    bridge.wait_cycles(1)
    writer.start()
    kills = 0
    try:
        while kills < size.kills:
            # The kill moment is random on purpose (during start-up, mid-cycle, mid-webhook,
            # mid-write): this sleep is the test's randomness, not a wait for a condition.
            time.sleep(rng.uniform(0.5, 3.0))
            bridge.kill()
            kills += 1
            bridge = BridgeProcess(files)
        wait_for(done.is_set, timeout=600, what="the workload")
        assert not errors, errors
        expected = workload.chat_written + workload.forum_written
        report = wait_for(
            lambda: converged(world, rooms, expected, allow_disorder=True),
            timeout=120 + expected * 0.5,
            interval=1.0,
            what=f"{expected} items bridged exactly once",
        )
    except AssertionError as exc:
        report = check_room_invariants(world, rooms)
        raise AssertionError("\n".join([str(exc), *report.problems[:40]])) from None
    finally:
        bridge.kill()
    figures.set(items=report.items, kills=kills, lost=report.lost, duplicated=report.duplicated)
    assert report.items == expected
    assert (report.lost, report.duplicated, report.echoed) == (0, 0, 0)
    assert order_problems(report) == []
