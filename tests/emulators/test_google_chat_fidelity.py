"""Fidelity of the Chat emulator to documented Google Chat behaviour, through the real
googleapiclient (one test per row of emulators/FIDELITY_chat.part.md).

Every response these tests receive is validated against chat.v1.json when the `world` fixture
tears down.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from googleapiclient.errors import HttpError
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.google_chat import ChatEmulator
from emulators.google_chat_markup import (
    parse_chat,
    parse_markdown,
    render_html,
    render_message,
    to_chat,
    to_markdown,
)
from tests.emulators.chat_contract import ChatWorld, contract_errors, error_status, make_world

CREATED = "google.workspace.chat.message.v1.created"
UPDATED = "google.workspace.chat.message.v1.updated"
DELETED = "google.workspace.chat.message.v1.deleted"
ALL_MESSAGE_EVENTS = (
    f'(event_types:"{CREATED}" OR event_types:"{UPDATED}" OR event_types:"{DELETED}")'
)


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[ChatWorld]:
    w = make_world(chat_emulator)
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


def _err(call: Any) -> tuple[int, str]:
    with pytest.raises(HttpError) as info:
        call.execute()
    return error_status(info.value)


def _raw_get(w: ChatWorld, path: str, **params: str) -> requests.Response:
    """A GET googleapiclient would refuse to send (it checks enums itself)."""
    return requests.get(
        f"{w.emu.url}/v1/{path}",
        params=params,
        headers={"Authorization": f"Bearer {w.tokens['access_token']}"},
        timeout=10,
    )


def _create(w: ChatWorld, text: str, syntax: str | None = None, **kwargs: Any) -> dict:
    body: dict[str, Any] = {"text": text}
    if syntax:
        body["markupSyntax"] = syntax
    return w.chat.spaces().messages().create(parent=w.space, body=body, **kwargs).execute()


def _get(w: ChatWorld, name: str, syntax: str = "MARKUP_SYNTAX_CHAT") -> dict:
    return w.chat.spaces().messages().get(name=name, markupSyntax=syntax).execute()


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- 1. text vs markup
def test_control_post_stores_plain_text_markup_and_mention_annotations(world: ChatWorld) -> None:
    ctl = world.emu.control
    posted = ctl.post_message(
        world.space, world.alice, "Hi <users/1002>, see *this* and <https://x.org|the doc>"
    )
    got = _get(world, posted["name"])
    assert got["text"] == "Hi @Bob Example, see this and the doc"
    assert got["formattedText"] == "Hi <users/1002>, see *this* and <https://x.org|the doc>"
    assert got["annotations"] == [
        {
            "type": "USER_MENTION",
            "startIndex": 3,
            "length": len("@Bob Example"),
            "userMention": {
                "user": {
                    "name": world.bob,
                    "type": "HUMAN",
                    "displayName": "Bob Example",
                    "email": "bob@example.com",
                },
                "type": "MENTION",
            },
        }
    ]
    md = _get(world, posted["name"], "MARKUP_SYNTAX_MARKDOWN")
    assert md["formattedText"] == "Hi <users/1002>, see **this** and [the doc](https://x.org)"
    assert ctl.rendered(posted["name"]) == {
        "html": 'Hi <mention user="users/1002">@Bob Example</mention>, see <b>this</b> and '
        '<a href="https://x.org">the doc</a>'
    }
    # A human's edit goes through the same composer.
    edited = ctl.edit_message(posted["name"], "now ~gone~")
    assert (edited["text"], "annotations" in edited) == ("now gone", False)


def test_plain_control_post_is_identical_in_text_and_formatted_text(world: ChatWorld) -> None:
    posted = world.emu.control.post_message(world.space, world.bob, "lunch at 12, 2*3*4 = 24?")
    got = _get(world, posted["name"])
    assert got["text"] == got["formattedText"] == "lunch at 12, 2*3*4 = 24?"
    assert "annotations" not in got


# --------------------------------------------------------------------------- 2. input syntax
def test_create_without_markup_syntax_reads_markdown_by_default(world: ChatWorld) -> None:
    # A bridge that sends Chat markup without declaring it gets italics, not bold.
    msg = _create(world, "*Alice:* hello")
    assert msg["text"] == "Alice: hello"
    assert _get(world, msg["name"])["formattedText"] == "_Alice:_ hello"
    assert world.emu.control.rendered(msg["name"])["html"] == "<i>Alice:</i> hello"
    # The app-level default is configurable (an existing app defaults to Chat markup).
    world.emu.control.configure(app_default_markup_syntax="MARKUP_SYNTAX_CHAT")
    legacy = _create(world, "*Alice:* hello")
    assert world.emu.control.rendered(legacy["name"])["html"] == "<b>Alice:</b> hello"


@pytest.mark.parametrize(
    ("source", "chat", "text", "html"),
    [
        ("**b** __b__", "*b* *b*", "b b", "<b>b</b> <b>b</b>"),
        ("*i* _i_", "_i_ _i_", "i i", "<i>i</i> <i>i</i>"),
        ("~~s~~", "~s~", "s", "<s>s</s>"),
        (
            "[the doc](https://x.org/a_b)",
            "<https://x.org/a_b|the doc>",
            "the doc",
            '<a href="https://x.org/a_b">the doc</a>',
        ),
        ("`a*b*`", "`a*b*`", "a*b*", "<code>a*b*</code>"),
        ("```\nx = *1*\n```", "```\nx = *1*\n```", "\nx = *1*\n", "<pre>x = *1*</pre>"),
        # Chat-only link syntax is no link in Markdown: literal text (it has a space, so it
        # is no CommonMark autolink either).
        (
            "<https://x.org|the doc>",
            "<https://x.org|the doc>",
            "<https://x.org|the doc>",
            "&lt;https://x.org|the doc&gt;",
        ),
        (
            "hi <users/1002>",
            "hi <users/1002>",
            "hi @Bob Example",
            'hi <mention user="users/1002">@Bob Example</mention>',
        ),
    ],
)
def test_create_markdown_is_stored_as_chat_markup(
    world: ChatWorld, source: str, chat: str, text: str, html: str
) -> None:
    msg = _create(world, source, "MARKUP_SYNTAX_MARKDOWN")
    assert msg["text"] == text
    assert _get(world, msg["name"])["formattedText"] == chat
    assert world.emu.control.rendered(msg["name"])["html"] == html


def test_create_chat_syntax_and_patch_with_markup_syntax(world: ChatWorld) -> None:
    msgs = world.chat.spaces().messages()
    msg = _create(world, "*Bob (Discourse):* see <https://x.org|this>", "MARKUP_SYNTAX_CHAT")
    assert msg["text"] == "Bob (Discourse): see this"
    assert world.emu.control.rendered(msg["name"])["html"] == (
        '<b>Bob (Discourse):</b> see <a href="https://x.org">this</a>'
    )
    # Patch: markupSyntax on the body, only `text` in the mask; it applies to this edit only.
    patched = msgs.patch(
        name=msg["name"],
        updateMask="text",
        body={"text": "**now** bold", "markupSyntax": "MARKUP_SYNTAX_MARKDOWN"},
    ).execute()
    assert patched["text"] == "now bold" and "lastUpdateTime" in patched
    assert world.emu.control.rendered(msg["name"])["html"] == "<b>now</b> bold"
    wrong_mask = msgs.patch(
        name=msg["name"],
        updateMask="text,markup_syntax",
        body={"text": "x", "markupSyntax": "MARKUP_SYNTAX_CHAT"},
    )
    assert _err(wrong_mask) == (400, "INVALID_ARGUMENT")
    bad = msgs.create(parent=world.space, body={"text": "x", "markupSyntax": "HTML"})
    assert _err(bad) == (400, "INVALID_ARGUMENT")
    assert world.emu.control.rendered(msg["name"])["html"] == "<b>now</b> bold"


# --------------------------------------------------------------------------- 3. output syntax
def test_get_and_list_output_markup_syntax(world: ChatWorld) -> None:
    msg = _create(world, "*b* and <https://x.org|l>", "MARKUP_SYNTAX_CHAT")
    msgs = world.chat.spaces().messages()
    assert _get(world, msg["name"])["formattedText"] == "*b* and <https://x.org|l>"
    listed = msgs.list(parent=world.space, markupSyntax="MARKUP_SYNTAX_MARKDOWN").execute()
    assert listed["messages"][0]["formattedText"] == "**b** and [l](https://x.org)"
    # Unspecified: the app-level default (Markdown for a new app), unless configured otherwise.
    plain_get = msgs.get(name=msg["name"]).execute()
    assert plain_get["formattedText"] == "**b** and [l](https://x.org)"
    world.emu.control.configure(output_default_markup_syntax="MARKUP_SYNTAX_CHAT")
    assert msgs.get(name=msg["name"]).execute()["formattedText"] == "*b* and <https://x.org|l>"
    # An unknown enum value (googleapiclient refuses to send one, so send it raw).
    for path in (msg["name"], f"{world.space}/messages"):
        raw = _raw_get(world, path, markupSyntax="MARKUP_SYNTAX_HTML")
        assert raw.status_code == 400 and raw.json()["error"]["status"] == "INVALID_ARGUMENT"


# --------------------------------------------------------------------------- 4. rendering
def test_render_message_is_a_pure_function_of_formatted_text() -> None:
    assert render_message("*b* _i_ ~s~ `c` <https://x|y> <users/1>") == (
        '<b>b</b> <i>i</i> <s>s</s> <code>c</code> <a href="https://x">y</a> '
        '<mention user="users/1">@1</mention>'
    )
    assert render_message("*b* _i_", "MARKUP_SYNTAX_MARKDOWN") == "<i>b</i> <i>i</i>"
    assert render_message("a_b_c https://x.org/a_b_c") == (
        'a_b_c <a href="https://x.org/a_b_c">https://x.org/a_b_c</a>'
    )


# --------------------------------------------------------------------------- 5. spaceEvents.list
def _events(w: ChatWorld, flt: str, **kwargs: Any) -> list[dict]:
    call = w.chat.spaces().spaceEvents().list(parent=w.space, filter=flt, **kwargs)
    return call.execute().get("spaceEvents", [])


def test_space_events_list_message_events_oldest_first_with_latest_payload(
    world: ChatWorld,
) -> None:
    msgs = world.chat.spaces().messages()
    first = _create(world, "v1", "MARKUP_SYNTAX_CHAT")
    human = world.emu.control.post_message(world.space, world.bob, "from *Bob*")
    msgs.patch(name=first["name"], updateMask="text", body={"text": "*v2*"}).execute()
    msgs.delete(name=first["name"]).execute()
    events = _events(world, ALL_MESSAGE_EVENTS)
    assert [(e["eventType"], e[_payload_key(e)]["message"]["name"]) for e in events] == [
        (CREATED, first["name"]),
        (CREATED, human["name"]),
        (UPDATED, first["name"]),
        (DELETED, first["name"]),
    ]
    times = [e["eventTime"] for e in events]
    assert times == sorted(times)
    assert all(e["name"].startswith(f"{world.space}/spaceEvents/") for e in events)
    # The payload is the latest version: the deleted message has only name, createTime and
    # deletionMetadata in every event; Bob's message is whole, formattedText in the default.
    for e in events[:1] + events[2:]:
        assert set(e[_payload_key(e)]["message"]) == {"name", "createTime", "deletionMetadata"}
    bob = events[1]["messageCreatedEventData"]["message"]
    assert bob["text"] == "from Bob" and bob["sender"]["name"] == world.bob
    only_created = _events(world, f'event_types:"{CREATED}"')
    assert [e["eventType"] for e in only_created] == [CREATED, CREATED]
    got = world.chat.spaces().spaceEvents().get(name=events[1]["name"]).execute()
    assert got == events[1]


def _payload_key(event: dict) -> str:
    return {
        CREATED: "messageCreatedEventData",
        UPDATED: "messageUpdatedEventData",
        DELETED: "messageDeletedEventData",
    }[event["eventType"]]


def test_space_events_filter_grammar_is_strict(world: ChatWorld) -> None:
    now = datetime.now(UTC)
    start, end = _ts(now - timedelta(hours=1)), _ts(now + timedelta(hours=1))
    _create(world, "one")
    valid = [
        f'event_types:"{CREATED}"',
        f'eventTypes:"{CREATED}"',
        f'event_types:"{CREATED}" OR event_types:"{DELETED}"',
        f'start_time="{start}" AND {ALL_MESSAGE_EVENTS}',
        f'startTime="{start}" AND endTime="{end}" AND (eventTypes:"{CREATED}")',
        'event_types:"google.workspace.chat.membership.v1.created"',  # valid, none recorded
    ]
    counts = [len(_events(world, flt)) for flt in valid]
    assert counts == [1, 1, 1, 1, 1, 0]
    invalid = [
        "",  # the filter is required
        f'start_time="{start}" AND end_time="{end}"',  # no event type
        f'start_time="{start}" OR end_time="{end}"',  # documented invalid
        f'event_types:"{CREATED}" AND event_types:"{DELETED}"',  # documented invalid
        f'start_time="{start}" AND event_types:"{CREATED}" OR event_types:"{DELETED}"',
        'event_types:"google.workspace.chat.message.v1.batchCreated"',  # omit batch types
        'event_types:"google.workspace.chat.message.v1.read"',
        f"event_types:{CREATED}",  # unquoted
        f'event_types="{CREATED}"',  # `:` (has), not `=`
        f'start_time>"{start}" AND event_types:"{CREATED}"',
        f'start_time="yesterday" AND event_types:"{CREATED}"',
        f'start_time="{end}" AND end_time="{start}" AND event_types:"{CREATED}"',
        f'(event_types:"{CREATED}"',
    ]
    for flt in invalid:
        call = world.chat.spaces().spaceEvents().list(parent=world.space, filter=flt)
        assert _err(call) == (400, "INVALID_ARGUMENT"), flt
    assert _err(world.chat.spaces().spaceEvents().list(parent=world.space, pageSize=-1)) == (
        400,
        "INVALID_ARGUMENT",
    )


def test_space_events_28_day_window(world: ChatWorld) -> None:
    now = datetime.now(UTC)
    ctl = world.emu.control
    ctl.post_message(world.space, world.bob, "too old", create_time=_ts(now - timedelta(days=29)))
    recent = ctl.post_message(
        world.space, world.bob, "recent", create_time=_ts(now - timedelta(days=27))
    )
    events = _events(world, f'event_types:"{CREATED}"')
    assert [e["messageCreatedEventData"]["message"]["name"] for e in events] == [recent["name"]]
    old_start = f'start_time="{_ts(now - timedelta(days=29))}" AND event_types:"{CREATED}"'
    call = world.chat.spaces().spaceEvents().list(parent=world.space, filter=old_start)
    assert _err(call) == (400, "INVALID_ARGUMENT")
    # start_time is exclusive, end_time inclusive.
    at = recent["createTime"]
    assert _events(world, f'start_time="{at}" AND event_types:"{CREATED}"') == []
    inclusive = f'end_time="{at}" AND event_types:"{CREATED}"'
    assert len(_events(world, inclusive)) == 1


def test_space_events_paging_membership_and_read_quota(chat_emulator: ChatEmulator) -> None:
    w = make_world(chat_emulator, quotas=True)
    ctl = chat_emulator.control
    ctl.configure(space_read_limit=[4, 60.0], space_write_limit=[100, 1.0])
    for i in range(3):
        ctl.post_message(w.space, w.bob, f"m{i}")
    events = w.chat.spaces().spaceEvents()
    flt = f'event_types:"{CREATED}"'
    page = events.list(parent=w.space, filter=flt, pageSize=2).execute()
    assert len(page["spaceEvents"]) == 2
    second = events.list_next(events.list(parent=w.space, filter=flt, pageSize=2), page)
    rest = second.execute()
    assert len(rest["spaceEvents"]) == 1 and "nextPageToken" not in rest
    # Reads count in the per-space read quota (4/min here): the 5th read is refused.
    w.chat.spaces().get(name=w.space).execute()
    w.chat.spaces().get(name=w.space).execute()
    assert _err(events.list(parent=w.space, filter=flt)) == (429, "RESOURCE_EXHAUSTED")
    # Only members see a space's events.
    carol = ctl.create_user("Carol", name="users/1003")["name"]
    private = ctl.create_space([w.bob, carol], display_name="Private")["name"]
    assert _err(events.list(parent=private, filter=flt)) == (403, "PERMISSION_DENIED")
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, errors


# --------------------------------------------------------------------------- existing behaviours
def test_client_assigned_message_id_is_usable_as_the_message_id(world: ChatWorld) -> None:
    msg = _create(world, "x", messageId="client-bridge-1")
    assert msg["clientAssignedMessageId"] == "client-bridge-1"
    by_client = world.chat.spaces().messages().get(name=f"{world.space}/messages/client-bridge-1")
    assert by_client.execute()["name"] == msg["name"]
    again = (
        world.chat.spaces()
        .messages()
        .create(parent=world.space, body={"text": "y"}, messageId="client-bridge-1")
    )
    assert _err(again) == (409, "ALREADY_EXISTS")


def test_one_write_per_second_per_space() -> None:
    # A frozen quota clock: the test cannot flake on a slow machine.
    now = [1000.0]
    emu = ChatEmulator.start(monotonic=lambda: now[0])
    try:
        w = make_world(emu, quotas=True)
        msgs = w.chat.spaces().messages()
        msgs.create(parent=w.space, body={"text": "1"}).execute()
        assert _err(msgs.create(parent=w.space, body={"text": "2"})) == (
            429,
            "RESOURCE_EXHAUSTED",
        )
        # Another space has its own per-space budget; a second later the first one has too.
        other = emu.control.create_space([w.alice], display_name="Other")["name"]
        assert msgs.create(parent=other, body={"text": "3"}).execute()["name"]
        now[0] += 1.0
        assert msgs.create(parent=w.space, body={"text": "2"}).execute()["name"]
        errors = contract_errors(w.spec, w.all_exchanges())
        assert not errors, errors
    finally:
        emu.stop()


# --------------------------------------------------------------------------- markup properties
_MARKUP_ALPHABET = st.sampled_from(
    ["a", "b", " ", "\n", "*", "_", "~", "`", "```", "<", ">", "|", "users/1", "https://x.org/a_b"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_MARKUP_ALPHABET, max_size=30).map("".join))
def test_chat_markup_survives_its_own_round_trip(source: str) -> None:
    # What the emulator stores as formattedText renders like what was posted, and the
    # Markdown form of a message never crashes the Markdown reader.
    doc = parse_chat(source)
    assert render_html(parse_chat(to_chat(doc))) == render_html(doc)
    parse_markdown(to_markdown(doc))
    parse_markdown(source)
