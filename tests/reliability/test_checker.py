"""The invariant checker itself catches loss, duplication, echoes and misplacement.

A reliability test is only as good as its checker: these cases build the broken states by hand in
the emulators (no bridge runs) and expect the checker to name each problem.
"""

from __future__ import annotations

import requests

from tests.e2e.world import BRIDGE_USER, World
from tests.reliability.workload import check_room_invariants, setup_rooms


def test_the_checker_reports_lost_doubled_echoed_and_misplaced_items(world: World) -> None:
    people, rooms = setup_rooms(world, 2)
    room, other = rooms
    chat_msg = world.say(room.space, people[0], "A Chat message nobody bridged yet")
    post = world.discourse.control.create_post(
        "carol",
        "A forum post nobody bridged yet",
        title="Forum topic nobody bridged",
        category_id=room.category,
    )
    report = check_room_invariants(world, rooms)
    assert (report.chat_items, report.forum_items, report.lost) == (1, 1, 2)

    # Mirror the Chat message twice (a duplicate), the second copy into another category.
    marker = f"<!-- gchat:{chat_msg['name']} -->"
    first = world.discourse.control.create_post(
        "system",
        f"copy one of the message\n\n{marker}",
        title="Copy of the chat message",
        category_id=room.category,
    )
    world.discourse.control.create_post(
        "system",
        f"copy two of the message\n\n{marker}",
        title="Second copy elsewhere here",
        category_id=other.category,
    )
    # Send the post to Chat in the wrong space, and echo a bridged post back to Chat.
    token = world.chat.control.add_token(user=BRIDGE_USER)["access_token"]
    for space, text, post_id in (
        (other.space, "the post, misplaced", post["id"]),
        (room.space, "an echo", first["id"]),
    ):
        answer = requests.post(
            f"{world.chat.url}/v1/{space}/messages",
            params={"messageId": f"client-dp-{post_id}"},
            json={"text": text},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    report = check_room_invariants(world, rooms)
    text = "\n".join(report.problems)
    assert report.lost == 0
    assert report.duplicated == 1 and "mirrored 2 times" in text
    assert "landed in another category" in text
    assert "split across threads" in text
    assert f"post {post['id']} landed in" in text
    assert report.echoed >= 1 and "sent back to Chat" in text
