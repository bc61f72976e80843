"""spaces.messages.* against the Chat emulator through the real googleapiclient.

Every response these tests receive is validated against chat.v1.json when the `world` fixture
tears down.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from googleapiclient.errors import HttpError

from emulators.google_chat import ChatEmulator
from tests.emulators.chat_contract import ChatWorld, contract_errors, error_status, make_world


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[ChatWorld]:
    w = make_world(chat_emulator)
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


def _create(w: ChatWorld, text: str, **kwargs: object) -> dict:
    return (
        w.chat.spaces().messages().create(parent=w.space, body={"text": text}, **kwargs).execute()
    )


def _err(call: object) -> tuple[int, str]:
    with pytest.raises(HttpError) as info:
        call.execute()  # type: ignore[attr-defined]
    return error_status(info.value)


def test_create_returns_message_sent_as_the_calling_user(world: ChatWorld) -> None:
    msg = _create(world, "hello *bold*")
    assert msg["name"].startswith(f"{world.space}/messages/")
    assert msg["sender"] == {
        "name": world.alice,
        "type": "HUMAN",
        "displayName": "Alice Example",
        "email": "alice@example.com",
    }
    # No markupSyntax: read as Markdown (the default of a new Chat app), so `*bold*` is italic;
    # `text` is plain and formattedText (app default syntax again, Markdown) keeps the markup.
    assert msg["text"] == "hello bold"
    assert msg["formattedText"] == "hello *bold*"
    assert msg["threadReply"] is False
    assert msg["thread"]["name"].startswith(f"{world.space}/threads/")
    assert "lastUpdateTime" not in msg and "clientAssignedMessageId" not in msg
    got = world.chat.spaces().messages().get(name=msg["name"]).execute()
    assert got == msg


def test_create_moves_last_active_time(world: ChatWorld) -> None:
    before = world.chat.spaces().get(name=world.space).execute()
    assert "lastActiveTime" not in before
    msg = _create(world, "one")
    after = world.chat.spaces().get(name=world.space).execute()
    assert after["lastActiveTime"] == msg["createTime"]
    human = world.emu.control.post_message(world.space, world.bob, "from the UI")
    assert (
        world.chat.spaces().get(name=world.space).execute()["lastActiveTime"]
        == human["createTime"]
    )


def test_minimal_sender_details_switch(world: ChatWorld) -> None:
    world.emu.control.configure(sender_details="minimal")
    msg = _create(world, "hi")
    assert msg["sender"] == {"name": world.alice, "type": "HUMAN"}


def test_list_paging_default_and_next(world: ChatWorld) -> None:
    assert world.chat.spaces().messages().list(parent=world.space).execute() == {}
    names = [_create(world, f"m{i}")["name"] for i in range(30)]
    msgs = world.chat.spaces().messages()
    first = msgs.list(parent=world.space).execute()
    assert [m["name"] for m in first["messages"]] == names[:25]
    req = msgs.list_next(msgs.list(parent=world.space), first)
    second = req.execute()
    assert [m["name"] for m in second["messages"]] == names[25:]
    assert "nextPageToken" not in second
    assert msgs.list_next(req, second) is None
    # pageSize larger than the maximum is clamped, not rejected.
    assert len(msgs.list(parent=world.space, pageSize=5000).execute()["messages"]) == 30


def test_list_rejects_negative_page_size_and_mismatched_token(world: ChatWorld) -> None:
    for i in range(3):
        _create(world, f"m{i}")
    msgs = world.chat.spaces().messages()
    assert _err(msgs.list(parent=world.space, pageSize=-1)) == (400, "INVALID_ARGUMENT")
    page = msgs.list(parent=world.space, pageSize=2).execute()
    token = page["nextPageToken"]
    bad = msgs.list(parent=world.space, pageSize=2, pageToken=token, orderBy="DESC")
    assert _err(bad) == (400, "INVALID_ARGUMENT")
    ok = msgs.list(parent=world.space, pageSize=2, pageToken=token).execute()
    assert len(ok["messages"]) == 1


def test_list_order_by(world: ChatWorld) -> None:
    names = [_create(world, f"m{i}")["name"] for i in range(3)]
    msgs = world.chat.spaces().messages()
    for order in ("DESC", "createTime desc", "create_time DESC"):
        got = msgs.list(parent=world.space, orderBy=order).execute()
        assert [m["name"] for m in got["messages"]] == names[::-1], order
    for order in ("ASC", "createTime asc"):
        got = msgs.list(parent=world.space, orderBy=order).execute()
        assert [m["name"] for m in got["messages"]] == names, order
    assert _err(msgs.list(parent=world.space, orderBy="text desc")) == (400, "INVALID_ARGUMENT")


def test_list_filters(world: ChatWorld) -> None:
    ctl = world.emu.control
    base = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

    def at(minutes: int) -> str:
        return (base + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

    root = ctl.post_message(world.space, world.bob, "root", create_time=at(0))
    reply = ctl.post_message(
        world.space, world.bob, "reply", thread_name=root["thread"]["name"], create_time=at(10)
    )
    other = ctl.post_message(world.space, world.bob, "other", create_time=at(20))
    msgs = world.chat.spaces().messages()

    def names(flt: str) -> list[str]:
        return [
            m["name"]
            for m in msgs.list(parent=world.space, filter=flt).execute().get("messages", [])
        ]

    assert names(f'createTime > "{at(5)}"') == [reply["name"], other["name"]]
    assert names(f'create_time < "{at(5)}"') == [root["name"]]
    assert names(f'create_time > "{at(5)}" AND create_time < "2024-05-01T06:15:00-04:00"') == [
        reply["name"]
    ]
    assert names(f"thread.name = {root['thread']['name']}") == [root["name"], reply["name"]]
    assert names(f'createTime > "{at(5)}" AND thread.name = {root["thread"]["name"]}') == [
        reply["name"]
    ]
    for bad in (
        f"createTime > {at(5)}",  # unquoted timestamp
        f'createTime >= "{at(5)}"',
        f'createTime > "{at(5)}" OR createTime < "{at(1)}"',
        'createTime > "yesterday"',
        f"thread.name = {root['thread']['name']} AND thread.name = {other['thread']['name']}",
        'text = "root"',
    ):
        assert _err(msgs.list(parent=world.space, filter=bad)) == (400, "INVALID_ARGUMENT"), bad


def test_client_assigned_id_rules_and_duplicates(world: ChatWorld) -> None:
    msg = _create(world, "with id", messageId="client-abc-123")
    assert msg["clientAssignedMessageId"] == "client-abc-123"
    msgs = world.chat.spaces().messages()
    by_client = msgs.get(name=f"{world.space}/messages/client-abc-123").execute()
    assert by_client["name"] == msg["name"]
    assert _err(
        msgs.create(parent=world.space, body={"text": "x"}, messageId="client-abc-123")
    ) == (
        409,
        "ALREADY_EXISTS",
    )
    for bad in ("abc", "client-ABC", "client-a_b", "client-" + "a" * 57):
        call = msgs.create(parent=world.space, body={"text": "x"}, messageId=bad)
        assert _err(call) == (400, "INVALID_ARGUMENT"), bad
    assert _create(world, "max", messageId="client-" + "a" * 56)["clientAssignedMessageId"]
    world.emu.control.configure(duplicate_message_id_status=400)
    call = msgs.create(parent=world.space, body={"text": "x"}, messageId="client-abc-123")
    assert _err(call) == (400, "INVALID_ARGUMENT")


def test_request_id_replay_returns_existing_message(world: ChatWorld) -> None:
    first = _create(world, "once", requestId="req-1", messageId="client-once")
    again = _create(world, "changed text", requestId="req-1", messageId="client-once")
    assert again == first
    listed = world.chat.spaces().messages().list(parent=world.space).execute()["messages"]
    assert len(listed) == 1
    bob_token = world.emu.control.add_token(world.bob)["access_token"]
    bob_chat, _ = world.build(bob_token)
    call = (
        bob_chat.spaces()
        .messages()
        .create(parent=world.space, body={"text": "x"}, requestId="req-1")
    )
    assert _err(call) == (400, "INVALID_ARGUMENT")


def test_reply_options(world: ChatWorld) -> None:
    root = _create(world, "root")
    tname = root["thread"]["name"]
    msgs = world.chat.spaces().messages()

    def create(option: str | None, thread: dict) -> dict:
        kwargs = {"messageReplyOption": option} if option else {}
        return msgs.create(
            parent=world.space, body={"text": "t", "thread": thread}, **kwargs
        ).execute()

    # The default ignores thread.name and starts a new thread.
    unspecified = create(None, {"name": tname})
    assert unspecified["thread"]["name"] != tname and unspecified["threadReply"] is False
    reply = create("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", {"name": tname})
    assert reply["thread"]["name"] == tname and reply["threadReply"] is True
    fallback = create(
        "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", {"name": f"{world.space}/threads/no"}
    )
    assert fallback["thread"]["name"] != tname and fallback["threadReply"] is False
    or_fail = msgs.create(
        parent=world.space,
        body={"text": "t", "thread": {"name": f"{world.space}/threads/nope"}},
        messageReplyOption="REPLY_MESSAGE_OR_FAIL",
    )
    assert _err(or_fail) == (404, "NOT_FOUND")
    assert create("REPLY_MESSAGE_OR_FAIL", {"name": tname})["threadReply"] is True
    # A new threadKey creates a thread even under OR_FAIL; the same key then replies to it.
    keyed = create("REPLY_MESSAGE_OR_FAIL", {"threadKey": "tk1"})
    assert keyed["thread"]["threadKey"] == "tk1" and keyed["threadReply"] is False
    again = create("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", {"threadKey": "tk1"})
    assert again["thread"]["name"] == keyed["thread"]["name"] and again["threadReply"] is True
    # Reply to a thread a human started in the Chat UI, by thread.name.
    human = world.emu.control.post_message(world.space, world.bob, "human root")
    to_human = create("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", {"name": human["thread"]["name"]})
    assert to_human["threadReply"] is True
    # googleapiclient refuses an unknown enum itself, so send that one raw.
    raw = requests.post(
        f"{world.emu.url}/v1/{world.space}/messages?messageReplyOption=SOMETIMES",
        json={"text": "t"},
        headers={"Authorization": f"Bearer {world.tokens['access_token']}"},
        timeout=10,
    )
    assert raw.status_code == 400 and raw.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_unthreaded_space_never_replies(world: ChatWorld) -> None:
    ctl = world.emu.control
    dm = ctl.create_space([world.alice, world.bob], space_type="DIRECT_MESSAGE")
    msgs = world.chat.spaces().messages()
    root = msgs.create(parent=dm["name"], body={"text": "a"}).execute()
    reply = msgs.create(
        parent=dm["name"],
        body={"text": "b", "thread": {"name": root["thread"]["name"]}},
        messageReplyOption="REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
    ).execute()
    assert reply["threadReply"] is False
    assert world.chat.spaces().get(name=dm["name"]).execute()["spaceThreadingState"] == (
        "UNTHREADED_MESSAGES"
    )


def test_size_limit_and_body_validation(world: ChatWorld) -> None:
    msgs = world.chat.spaces().messages()
    assert _create(world, "é" * 16_000)["text"] == "é" * 16_000  # exactly 32,000 bytes
    too_big = msgs.create(parent=world.space, body={"text": "é" * 16_000 + "x"})
    assert _err(too_big) == (400, "INVALID_ARGUMENT")
    assert _err(msgs.create(parent=world.space, body={"txt": "typo"})) == (400, "INVALID_ARGUMENT")
    assert _err(msgs.create(parent=world.space, body={"text": ""})) == (400, "INVALID_ARGUMENT")
    cards = msgs.create(parent=world.space, body={"text": "x", "cardsV2": [{"cardId": "c"}]})
    assert _err(cards) == (400, "INVALID_ARGUMENT")


def test_patch_and_update(world: ChatWorld) -> None:
    msg = _create(world, "v1", messageId="client-edit-me")
    msgs = world.chat.spaces().messages()
    patched = msgs.patch(name=msg["name"], updateMask="text", body={"text": "v2"}).execute()
    assert patched["text"] == "v2" and "lastUpdateTime" in patched
    by_client = msgs.patch(
        name=f"{world.space}/messages/client-edit-me", updateMask="text", body={"text": "v3"}
    ).execute()
    assert by_client["text"] == "v3"
    updated = msgs.update(name=msg["name"], updateMask="*", body={"text": "v4"}).execute()
    assert updated["text"] == "v4"
    assert _err(msgs.patch(name=msg["name"], body={"text": "x"})) == (400, "INVALID_ARGUMENT")
    bad_mask = msgs.patch(name=msg["name"], updateMask="sender", body={"text": "x"})
    assert _err(bad_mask) == (400, "INVALID_ARGUMENT")
    missing = msgs.patch(name=f"{world.space}/messages/nope.nope", updateMask="text", body={})
    assert _err(missing) == (404, "NOT_FOUND")
    # Only the sender may edit (user auth edits own messages only).
    human = world.emu.control.post_message(world.space, world.bob, "bob's")
    other = msgs.patch(name=human["name"], updateMask="text", body={"text": "x"})
    assert _err(other) == (403, "PERMISSION_DENIED")


def test_patch_allow_missing(world: ChatWorld) -> None:
    msgs = world.chat.spaces().messages()
    created = msgs.patch(
        name=f"{world.space}/messages/client-upsert",
        updateMask="text",
        allowMissing=True,
        body={"text": "made by patch"},
    ).execute()
    assert created["clientAssignedMessageId"] == "client-upsert"
    assert "lastUpdateTime" not in created
    server_id = msgs.patch(
        name=f"{world.space}/messages/abc.def",
        updateMask="text",
        allowMissing=True,
        body={"text": "x"},
    )
    assert _err(server_id) == (400, "INVALID_ARGUMENT")
    existing = msgs.patch(
        name=created["name"], updateMask="text", allowMissing=True, body={"text": "edited"}
    ).execute()
    assert existing["text"] == "edited" and "lastUpdateTime" in existing


def test_delete_force_and_tombstones(world: ChatWorld) -> None:
    msgs = world.chat.spaces().messages()
    root = _create(world, "root", messageId="client-root")
    reply = msgs.create(
        parent=world.space,
        body={"text": "reply", "thread": {"name": root["thread"]["name"]}},
        messageReplyOption="REPLY_MESSAGE_OR_FAIL",
    ).execute()
    assert _err(msgs.delete(name=root["name"])) == (400, "FAILED_PRECONDITION")
    assert msgs.delete(name=f"{world.space}/messages/client-root", force=True).execute() == {}
    assert _err(msgs.get(name=root["name"])) == (404, "NOT_FOUND")
    assert world.chat.spaces().messages().list(parent=world.space).execute() == {}
    shown = msgs.list(parent=world.space, showDeleted=True).execute()["messages"]
    assert [m["name"] for m in shown] == [root["name"], reply["name"]]
    for tomb in shown:
        assert set(tomb) == {"name", "createTime", "deleteTime", "deletionMetadata"}
        assert tomb["deletionMetadata"] == {"deletionType": "CREATOR"}
    human = world.emu.control.post_message(world.space, world.bob, "bob's")
    assert _err(msgs.delete(name=human["name"])) == (403, "PERMISSION_DENIED")
    assert _err(msgs.delete(name=root["name"])) == (404, "NOT_FOUND")


def test_human_edit_and_delete_from_control_api(world: ChatWorld) -> None:
    ctl = world.emu.control
    human = ctl.post_message(world.space, world.bob, "typo")
    assert "lastUpdateTime" not in human
    edited = ctl.edit_message(human["name"], "fixed")
    assert edited["text"] == "fixed" and "lastUpdateTime" in edited
    got = world.chat.spaces().messages().get(name=human["name"]).execute()
    assert got["text"] == "fixed" and got["sender"]["name"] == world.bob
    ctl.delete_message(human["name"])
    shown = world.chat.spaces().messages().list(parent=world.space, showDeleted=True).execute()
    assert shown["messages"][0]["deletionMetadata"]["deletionType"] == "CREATOR"
    state = ctl.state()
    assert state["messages"][world.space][0]["deleteTime"]


def test_not_a_member_and_unknown_space(world: ChatWorld) -> None:
    ctl = world.emu.control
    carol = ctl.create_user("Carol")["name"]
    private = ctl.create_space([world.bob, carol], display_name="Private")
    msgs = world.chat.spaces().messages()
    assert _err(msgs.list(parent=private["name"])) == (403, "PERMISSION_DENIED")
    assert _err(msgs.list(parent="spaces/NOPE")) == (404, "NOT_FOUND")


def test_mentions_become_annotations(world: ChatWorld) -> None:
    msg = _create(world, "hé <users/1002> and <users/alice@example.com> and <users/999>")
    # `text` shows a mention as `@Display Name`; annotations index into that plain text; an
    # unknown user is no mention and stays literal; formattedText names canonical users.
    assert msg["text"] == "hé @Bob Example and @Alice Example and <users/999>"
    mentions = msg["annotations"]
    assert [a["userMention"]["user"]["name"] for a in mentions] == [world.bob, world.alice]
    assert [(a["startIndex"], a["length"]) for a in mentions] == [(3, 12), (20, 14)]
    assert mentions[0]["type"] == "USER_MENTION"
    assert mentions[0]["userMention"]["type"] == "MENTION"
    chat = world.chat.spaces().messages().get(name=msg["name"], markupSyntax="MARKUP_SYNTAX_CHAT")
    assert chat.execute()["formattedText"] == "hé <users/1002> and <users/1001> and <users/999>"


def test_fields_partial_response(world: ChatWorld) -> None:
    for i in range(3):
        _create(world, f"m{i}")
    msgs = world.chat.spaces().messages()
    page = msgs.list(
        parent=world.space, pageSize=2, fields="nextPageToken,messages(name,sender/name)"
    ).execute()
    assert set(page) == {"nextPageToken", "messages"}
    assert all(
        set(m) == {"name", "sender"} and set(m["sender"]) == {"name"} for m in page["messages"]
    )
    space = world.chat.spaces().get(name=world.space, fields="name,spaceType").execute()
    assert space == {"name": world.space, "spaceType": "SPACE"}
    assert _err(world.chat.spaces().get(name=world.space, fields="name,(")) == (
        400,
        "INVALID_ARGUMENT",
    )
