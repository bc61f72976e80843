"""spaces.get/list, spaces.members.list/get and spaces.messages.reactions.* via googleapiclient.

Every response these tests receive is validated against chat.v1.json when `world` tears down.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from googleapiclient.errors import HttpError

from emulators.google_chat import ChatEmulator
from tests.emulators.chat_contract import ChatWorld, contract_errors, error_status, make_world


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[ChatWorld]:
    w = make_world(chat_emulator)
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


def _err(call: object) -> tuple[int, str]:
    with pytest.raises(HttpError) as info:
        call.execute()  # type: ignore[attr-defined]
    return error_status(info.value)


def test_get_space(world: ChatWorld) -> None:
    space = world.chat.spaces().get(name=world.space).execute()
    assert space["name"] == world.space
    assert space["spaceType"] == "SPACE"
    assert space["displayName"] == "Bridge test"
    assert space["spaceThreadingState"] == "THREADED_MESSAGES"
    assert space["membershipCount"] == {"joinedDirectHumanUserCount": 2}
    assert _err(world.chat.spaces().get(name="spaces/NOPE")) == (404, "NOT_FOUND")


def test_list_spaces_filter_and_paging(world: ChatWorld) -> None:
    ctl = world.emu.control
    group = ctl.create_space([world.alice, world.bob], space_type="GROUP_CHAT")
    dm = ctl.create_space([world.alice, world.bob], space_type="DIRECT_MESSAGE")
    for i in range(3):
        ctl.create_space([world.alice], display_name=f"Room {i}")
    ctl.create_space([world.bob], display_name="Not Alice's")
    spaces = world.chat.spaces()

    def names(**kwargs: object) -> list[str]:
        out: list[str] = []
        req = spaces.list(**kwargs)
        while req is not None:
            resp = req.execute()
            out += [s["name"] for s in resp.get("spaces", [])]
            req = spaces.list_next(req, resp)
        return out

    # Group chats and DMs are listed only once they have a message.
    assert len(names()) == 4
    ctl.post_message(group["name"], world.bob, "hi all")
    ctl.post_message(dm["name"], world.bob, "hi alice")
    assert len(names(pageSize=2)) == 6
    assert names(filter='spaceType = "GROUP_CHAT" OR space_type = "DIRECT_MESSAGE"') == [
        group["name"],
        dm["name"],
    ]
    assert len(names(filter='space_type = "SPACE"')) == 4
    for bad in ('spaceType = "SPACE_TYPE_UNSPECIFIED"', "spaceType = SPACE", 'displayName = "x"'):
        assert _err(spaces.list(filter=bad)) == (400, "INVALID_ARGUMENT"), bad


def test_members_list_get_and_filters(world: ChatWorld) -> None:
    ctl = world.emu.control
    bot = ctl.create_user("Helper Bot", type="BOT")["name"]
    space = ctl.create_space([world.alice, world.bob, bot], display_name="With bot")
    members = world.chat.spaces().members()
    listed = members.list(parent=space["name"]).execute()["memberships"]
    assert {m["member"]["name"] for m in listed} == {world.alice, world.bob, bot}
    assert all(m["state"] == "JOINED" for m in listed)
    humans = members.list(parent=space["name"], filter='member.type != "BOT"').execute()
    assert {m["member"]["name"] for m in humans["memberships"]} == {world.alice, world.bob}
    managers = members.list(
        parent=space["name"], filter='member.type = "HUMAN" AND role = "ROLE_MANAGER"'
    ).execute()
    assert [m["member"]["name"] for m in managers["memberships"]] == [world.alice]
    either = members.list(
        parent=space["name"], filter='role = "ROLE_MANAGER" OR role = "ROLE_MEMBER"'
    ).execute()
    assert len(either["memberships"]) == 3
    bad = members.list(
        parent=space["name"], filter='member.type = "HUMAN" AND member.type = "BOT"'
    )
    assert _err(bad) == (400, "INVALID_ARGUMENT")
    page = members.list(parent=space["name"], pageSize=2).execute()
    assert len(page["memberships"]) == 2 and page["nextPageToken"]
    # Email alias in requests, canonical name in answers.
    got = members.get(name=f"{space['name']}/members/bob@example.com").execute()
    assert got["member"]["name"] == world.bob
    assert got["name"] == f"{space['name']}/members/1002"


def test_reactions_create_list_filter_delete(world: ChatWorld) -> None:
    msg = (
        world.chat.spaces()
        .messages()
        .create(parent=world.space, body={"text": "react to me"})
        .execute()
    )
    reactions = world.chat.spaces().messages().reactions()
    mine = reactions.create(parent=msg["name"], body={"emoji": {"unicode": "👍"}}).execute()
    assert mine["user"]["name"] == world.alice and mine["emoji"] == {"unicode": "👍"}
    assert mine["name"].startswith(f"{msg['name']}/reactions/")
    dup = reactions.create(parent=msg["name"], body={"emoji": {"unicode": "👍"}})
    assert _err(dup) == (409, "ALREADY_EXISTS")
    bobs = world.emu.control.add_reaction(msg["name"], world.bob, "🎉")
    world.emu.control.add_reaction(msg["name"], world.bob, "👍")
    listed = reactions.list(parent=msg["name"]).execute()["reactions"]
    assert len(listed) == 3
    flt = f'emoji.unicode = "👍" AND user.name = "{world.bob}"'
    only = reactions.list(parent=msg["name"], filter=flt).execute()["reactions"]
    assert [(r["user"]["name"], r["emoji"]["unicode"]) for r in only] == [(world.bob, "👍")]
    either = reactions.list(
        parent=msg["name"], filter='(emoji.unicode = "🎉" OR emoji.unicode = "👍")'
    ).execute()
    assert len(either["reactions"]) == 3
    for bad in (
        'emoji.unicode = "👍" AND emoji.unicode = "🎉"',
        f'emoji.unicode = "👍" OR user.name = "{world.bob}"',
        "emoji.unicode = 👍",
    ):
        call = reactions.list(parent=msg["name"], filter=bad)
        assert _err(call) == (400, "INVALID_ARGUMENT"), bad
    page = reactions.list(parent=msg["name"], pageSize=2).execute()
    assert len(page["reactions"]) == 2 and page["nextPageToken"]
    summary = world.chat.spaces().messages().get(name=msg["name"]).execute()
    assert {
        s["emoji"]["unicode"]: s["reactionCount"] for s in summary["emojiReactionSummaries"]
    } == {
        "👍": 2,
        "🎉": 1,
    }
    assert _err(reactions.delete(name=bobs["name"])) == (403, "PERMISSION_DENIED")
    assert reactions.delete(name=mine["name"]).execute() == {}
    assert _err(reactions.delete(name=mine["name"])) == (404, "NOT_FOUND")
    assert len(reactions.list(parent=msg["name"]).execute()["reactions"]) == 2
