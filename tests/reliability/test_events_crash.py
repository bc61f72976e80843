"""Issue 15: SIGKILL the bridge while Chat messages flow through Workspace Events.

The poll runs every 15 minutes (and once at each start), so between starts Chat → Discourse is
carried by events pulled from Pub/Sub: a kill can land between a post's creation and its link,
between the commit and the acknowledgement, or mid-pull. Pub/Sub also delivers every message
twice and in any order (the emulator's faults). Once the writes end and a last bridge process has
caught up, every Chat message must be in the forum exactly once, in its thread's topic.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import pytest

from tests.e2e.events_world import events_config, wait_subscribed
from tests.e2e.harness import BridgeProcess, wait_for
from tests.e2e.world import World
from tests.reliability.conftest import Figures
from tests.reliability.workload import (
    Workload,
    check_room_invariants,
    converged,
    mappings,
    setup_rooms,
)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True, slots=True)
class Size:
    spaces: int
    chat: int
    kills: int


REDUCED = Size(spaces=2, chat=30, kills=3)
FULL = Size(spaces=3, chat=200, kills=10)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(REDUCED, id="reduced"),
        pytest.param(FULL, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
    ],
)
def test_sigkill_while_events_flow_loses_and_doubles_nothing(
    world: World, figures: Figures, size: Size
) -> None:
    rng = random.Random(15)
    people, rooms = setup_rooms(world, size.spaces)
    files = events_config(world, mappings(rooms))
    world.chat.pubsub.state.set_config(duplicate=True, shuffle=True, seed=15)
    workload = Workload(world, people, rooms, seed=15)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            pause = (size.kills * 1.75) / size.chat
            workload.run(size.chat, 0, pause=lambda: time.sleep(pause))
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write, name="workload", daemon=True)
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1)
    wait_subscribed(world, size.spaces)
    writer.start()
    kills = 0
    try:
        while kills < size.kills:
            # A random moment on purpose (mid-pull, mid-write, between commit and ack): this
            # sleep is the test's randomness, not a wait for a condition.
            time.sleep(rng.uniform(0.5, 3.0))
            bridge.kill()
            kills += 1
            bridge = BridgeProcess(files)
        wait_for(done.is_set, timeout=600, what="the workload")
        assert not errors, errors
        expected = workload.chat_written
        report = wait_for(
            lambda: converged(world, rooms, expected, allow_disorder=True),
            timeout=60 + expected * 0.5,
            interval=1.0,
            what=f"{expected} Chat messages bridged exactly once",
        )
    except AssertionError as exc:
        report = check_room_invariants(world, rooms)
        raise AssertionError("\n".join([str(exc), *report.problems[:40]])) from None
    finally:
        bridge.kill()
    figures.set(items=report.items, kills=kills, lost=report.lost, duplicated=report.duplicated)
    assert report.items == expected
    assert (report.lost, report.duplicated, report.echoed) == (0, 0, 0)
