"""Issue 9 §3, downtime test: both sides change while the bridge is down.

Discourse's webhooks fail (nothing listens) and are not retried, as on a default site; after a
restart the catch-up pulls must bring everything across exactly once.
"""

from __future__ import annotations

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
    setup_rooms,
)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True, slots=True)
class DowntimeSize:
    spaces: int
    chat: int
    forum: int


REDUCED = DowntimeSize(spaces=4, chat=25, forum=25)
FULL = DowntimeSize(spaces=5, chat=100, forum=100)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(REDUCED, id="reduced"),
        pytest.param(FULL, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
    ],
)
def test_everything_written_while_the_bridge_is_down_arrives_once(
    world: World, figures: Figures, size: DowntimeSize
) -> None:
    people, rooms = setup_rooms(world, size.spaces)
    files = world.config(mappings(rooms), poll_interval_seconds=0.5)
    world.hook_to(files)
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1)
    assert bridge.terminate() == 0

    workload = Workload(world, people, rooms, seed=3)
    workload.run(size.chat, size.forum)
    world.discourse.control.wait_deliveries_idle(30)
    deliveries = [
        d
        for d in world.discourse.control.deliveries()["deliveries"]
        if d["event_name"] == "post_created"
    ]
    assert len(deliveries) == size.forum
    assert all(d["status"] != 200 and d["attempt"] == 1 for d in deliveries)  # not retried

    expected = size.chat + size.forum
    bridge = BridgeProcess(files)
    try:
        report = wait_for(
            lambda: converged(world, rooms, expected),
            timeout=120 + expected,
            interval=1.0,
            what=f"{expected} items after the restart",
        )
        # A few more cycles must not add anything.
        bridge.wait_cycles(bridge.completed_cycles() + 3)
    except AssertionError as exc:
        problems = check_room_invariants(world, rooms).problems
        raise AssertionError("\n".join([str(exc), *problems[:40]])) from None
    finally:
        bridge.kill()
    report = check_room_invariants(world, rooms)
    figures.set(items=report.items, lost=report.lost, duplicated=report.duplicated)
    assert report.problems == ()
    assert report.items == expected
