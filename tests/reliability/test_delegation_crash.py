"""Issue 16: SIGKILL in the middle of a burst of forum posts written in Chat as their authors.

Dora and Erin are Workspace users of the delegated domain, Frank is not. A burst of posts by
the three goes into one topic while the bridge is killed and restarted; afterwards every post
must be in Chat exactly once, by the right sender (Dora and Erin as themselves, Frank as the
operator with his attribution line), and nothing may come back into the forum as an echo.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from tests.e2e.harness import BridgeProcess, wait_for
from tests.e2e.test_delegation import DORA, ERIN, delegated_world
from tests.e2e.world import BRIDGE_USER, World
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.e2e

AUTHORS = (("dora", DORA), ("erin", ERIN), ("frank", BRIDGE_USER))


@dataclass(frozen=True, slots=True)
class Size:
    posts: int
    kills: int


REDUCED = Size(posts=30, kills=1)
FULL = Size(posts=100, kills=2)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(REDUCED, id="reduced"),
        pytest.param(FULL, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(1200)]),
    ],
)
def test_sigkill_mid_burst_of_delegated_posts_loses_doubles_and_echoes_nothing(
    world: World, figures: Figures, size: Size
) -> None:
    files, space, category, _ = delegated_world(world)
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1)
    topic = world.discourse.control.create_post(
        "dora", "burst 0 opens the topic", title="A burst of posts", category_id=category
    )
    topic_id = int(topic.get("topic_id") or topic["post"]["topic_id"])
    # The trailing space keeps "burst 1 " from matching "burst 10 ...".
    expected = {"burst 0 ": DORA} | {
        f"burst {i} ": AUTHORS[i % 3][1] for i in range(1, size.posts)
    }
    done = threading.Event()

    def write() -> None:
        for i in range(1, size.posts):
            username = AUTHORS[i % 3][0]
            world.discourse.control.create_post(
                username, f"burst {i} from {username}", topic_id=topic_id
            )
            time.sleep(0.03)  # a burst paced like people posting, not a wait for a condition
        done.set()

    writer = threading.Thread(target=write, name="burst", daemon=True)
    writer.start()
    kills = 0
    try:
        while kills < size.kills:
            # Mid-burst, at a moment the test does not choose more precisely than this: the
            # sleep is the test's randomness (as in test_crash.py), not a wait for a condition.
            time.sleep(0.6)
            bridge.kill()
            kills += 1
            bridge = BridgeProcess(files)
        wait_for(done.is_set, timeout=120, what="the burst")

        def copies() -> Counter[str]:
            found: Counter[str] = Counter()
            for message in world.chat_messages(space):
                text = message.get("text") or ""
                for key in expected:
                    if key in text + " ":
                        found[key] += 1
            return found

        wait_for(
            lambda: set(copies()) == set(expected),
            timeout=120,
            interval=0.5,
            what=f"{size.posts} posts in Chat",
        )
        # Anything doubled or echoed shows within two more cycles of the last process.
        bridge.wait_cycles(bridge.completed_cycles() + 2)
    finally:
        bridge.kill()
    found = copies()
    senders = {
        key: message["sender"]["name"]
        for message in world.chat_messages(space)
        for key in expected
        if key in (message.get("text") or "") + " "
    }
    doubled = sum(n - 1 for n in found.values() if n > 1)
    lost = len(set(expected) - set(found))
    forum = Counter(
        key for p in world.live_posts() for key in expected if key in (p.get("raw") or "") + " "
    )
    echoed = sum(n - 1 for n in forum.values() if n > 1)
    figures.set(items=len(expected), kills=kills, lost=lost, duplicated=doubled, echoed=echoed)
    assert (lost, doubled, echoed) == (0, 0, 0)
    assert senders == expected
