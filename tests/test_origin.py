"""origin.py: the rules that recognise the bridge's own writes, by tables and properties.

- Markers, client ids and external ids have the documented shapes and round-trip.
- Every client-id form the bridge writes (`client-dp-…` with its `-r`/`-p` suffixes,
  `client-dc-…`) is recognised by the one `is_bridge_origin`, for rooms and DMs alike.
- The content hash ignores what the bridge adds (markers, invisible separators, trailing blanks).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import formatting
import origin
from google_chat_client import ChatMessage, ChatUser

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = "https://forum.example.org"
ZW = formatting.ZWSP
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def to_chat(raw: str) -> str:
    return formatting.discourse_to_gchat_text(raw, base_url=BASE, mention_lookup=lambda _: None)


def chat_message(client_id: str | None) -> ChatMessage:
    return ChatMessage(
        name="spaces/S/messages/m1",
        space_name="spaces/S",
        thread_name="spaces/S/threads/t1",
        sender=ChatUser("users/1", "Ada", "ada@example.com", "HUMAN"),
        text="hello",
        create_time=T0,
        create_time_raw=T0.isoformat(),
        last_update_time=None,
        delete_time=None,
        client_assigned_message_id=client_id,
        thread_reply=False,
        attachments=(),
    )


# --- tables ------------------------------------------------------------------------------------


def test_origin_marker_shape_and_lookup() -> None:
    name = "spaces/AAAA/messages/BBBB.CCCC"
    marker = origin.origin_marker(name)
    assert marker == "<!-- gchat:spaces/AAAA/messages/BBBB.CCCC -->"
    raw = "Hello\n\n" + marker
    assert origin.find_origin_marker(raw) == name
    assert origin.strip_origin_marker(raw) == "Hello"
    assert origin.find_origin_marker("Hello <!-- other -->") is None
    assert origin.strip_origin_marker("keep  \n") == "keep  \n"
    with pytest.raises(ValueError):
        origin.origin_marker("spaces/A/threads/B")


def test_external_id_readable_and_within_discourse_rules() -> None:
    ext = origin.external_id_for_thread("spaces/AAAA/threads/BBBB")
    assert ext.startswith("gc-AAAA-BBBB-") and len(ext) == len("gc-AAAA-BBBB-") + 10
    assert ext == origin.external_id_for_thread("spaces/AAAA/threads/BBBB")
    # Discourse compares external ids case-insensitively; Chat ids are case-sensitive.
    other = origin.external_id_for_thread("spaces/AAAA/threads/bbbb")
    assert ext.lower() != other.lower()
    long_name = "spaces/" + "S" * 30 + "/threads/" + "T" * 30
    long_ext = origin.external_id_for_thread(long_name)
    assert len(long_ext) == 50 and long_ext.startswith("gc-")


def test_client_ids() -> None:
    assert origin.client_message_id_for_post(42) == "client-dp-42"
    assert origin.client_message_id_for_chat_message(7) == "client-dc-7"
    assert origin.post_id_from_client_message_id("client-dp-42") == 42
    assert origin.post_id_from_client_message_id("spaces/S/messages/client-dp-42") == 42
    assert origin.post_id_from_client_message_id("client-dc-42") is None
    assert origin.post_id_from_client_message_id("client-bridge-4f2a") is None
    assert origin.post_id_from_client_message_id("") is None
    with pytest.raises(ValueError):
        origin.client_message_id_for_post(-1)


def test_content_hash_normalises() -> None:
    base = origin.content_hash("Hello *world*")
    assert base == origin.content_hash("Hello *world*  \r\n")
    assert base == origin.content_hash("Hello *world*\n\n<!-- gchat:spaces/S/messages/M -->")
    assert base == origin.content_hash(f"Hello *world*{ZW}")
    assert base != origin.content_hash("Hello *World*")
    assert len(base) == 64


@pytest.mark.parametrize(
    ("client_id", "ours"),
    [
        ("client-dp-42", True),  # a forum post's copy in a room
        ("client-dp-42-r1767225600", True),  # a recovered post's copy
        ("client-dp-42-p2", True),  # the second part of a long post
        ("client-dp-5-r17-p2", True),  # a part of a recovered post
        ("client-dc-7", True),  # a Discourse chat message's copy in a DM
        ("client-dc-7-p2", True),  # accepted by the prefix rule the DM sync has always used
        ("client-mine", False),  # another app's client id
        ("client-bridge-4f2a", False),
        ("", False),
        (None, False),  # a message without a client id (every human message)
    ],
)
def test_is_bridge_origin_is_the_union_of_the_room_and_dm_rules(
    client_id: str | None, ours: bool
) -> None:
    assert origin.is_bridge_origin(chat_message(client_id)) is ours


def test_raw_parts_split_at_the_attachments_mark() -> None:
    marker = origin.origin_marker("spaces/S/messages/m1")
    raw = f"Hello **there**\n\n{origin.ATTACHMENTS_MARK}\n![a.png|1x1](upload://x.png)\n\n{marker}"
    assert origin.text_part_of_raw(raw) == "Hello **there**"
    assert origin.attachments_part_of_raw(raw) == "![a.png|1x1](upload://x.png)"
    only_text = f"Hello\n\n{marker}"
    assert origin.text_part_of_raw(only_text) == "Hello"
    assert origin.attachments_part_of_raw(only_text) == ""


# --- properties --------------------------------------------------------------------------------


NAME_PART = st.text(alphabet="ABCXYZabcxyz0189_-", min_size=1, max_size=20)


@SETTINGS
@given(NAME_PART, st.text(alphabet="ABCXYZabcxyz0189_-.", min_size=1, max_size=30), st.text())
def test_origin_marker_round_trips(space: str, message: str, body: str) -> None:
    name = f"spaces/{space}/messages/{message}"
    raw = body + "\n\n" + origin.origin_marker(name)
    assert origin.find_origin_marker(raw) == name
    assert origin.find_origin_marker(origin.strip_origin_marker(raw)) is None
    assert origin.strip_origin_marker(raw) == (
        body + "\n\n"
    ).rstrip() or origin.find_origin_marker(body)
    # The marker is invisible in Chat.
    assert "gchat:" not in to_chat(raw).replace(body, "")


@SETTINGS
@given(st.integers(min_value=0, max_value=10**40))
def test_client_ids_round_trip(number: int) -> None:
    post_id = origin.client_message_id_for_post(number)
    chat_id = origin.client_message_id_for_chat_message(number)
    for cid in (post_id, chat_id):
        assert re.fullmatch(r"client-[a-z0-9-]{1,56}", cid)
    assert origin.post_id_from_client_message_id(post_id) == number
    assert origin.post_id_from_client_message_id(chat_id) is None
    assert origin.chat_message_id_from_client_message_id(chat_id) == number
    assert origin.post_id_from_client_message_id("spaces/S/messages/" + post_id) == number


@SETTINGS
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_external_ids_valid_and_distinct(a: str, b: str) -> None:
    ida, idb = origin.external_id_for_thread(a), origin.external_id_for_thread(b)
    for value in (ida, idb):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,50}", value)
    assert (ida.lower() == idb.lower()) == (a == b)


@SETTINGS
@given(
    st.integers(min_value=0, max_value=10**40),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=2, max_value=99),
)
def test_every_client_id_form_is_recognised_as_ours(post_id: int, stamp: int, part: int) -> None:
    first = origin.client_message_id_for_post(post_id)
    recovered = origin.client_message_id_for_recovered_post(post_id, stamp)
    forms = [
        first,
        recovered,
        origin.client_message_id_for_part(first, part),
        origin.client_message_id_for_part(recovered, part),
        origin.client_message_id_for_chat_message(post_id),
    ]
    for client_id in forms:
        assert origin.is_bridge_origin(chat_message(client_id)), client_id
