"""origin.py: the rules that recognise the bridge's own writes, by tables and properties.

- Markers, client ids and external ids have the documented shapes and round-trip.
- Client ids are keyed: readable labels, an HMAC tag nobody can guess without the key, the same
  id for the same label (retries), Chat's id rules always kept.
- A Chat message is the bridge's (`is_bridge_origin`, for rooms and DMs alike) only with an id
  of the bridge's forms (keyed, or the legacy `client-dp-…`/`client-dc-…` forms written before)
  AND a sender the bridge writes as: an id someone else took makes a human message.
- A forum post is the copy of a Chat message (`copied_from`) only when its raw ends with the
  marker and its author is one the bridge writes that message as.
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


KEY = bytes(range(32))
IDS = origin.ClientIds(KEY)
OTHER_IDS = origin.ClientIds(bytes(range(1, 33)))  # another bridge's key
BRIDGE_USER = "users/100"
ADA = ChatUser("users/1", "Ada", "ada@example.com", "HUMAN")
BRIDGE = origin.BridgeIdentity(IDS, frozenset({BRIDGE_USER}))
NOT_LEARNT = origin.BridgeIdentity(IDS)  # the bridge has not seen its own account yet


def chat_message(client_id: str | None, sender: str = BRIDGE_USER) -> ChatMessage:
    return ChatMessage(
        name="spaces/S/messages/m1",
        space_name="spaces/S",
        thread_name="spaces/S/threads/t1",
        sender=ChatUser(sender, "Ada", "ada@example.com", "HUMAN"),
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


def test_client_ids_are_keyed_readable_and_stable() -> None:
    first = IDS.for_post(42)
    assert re.fullmatch(r"client-dp-42-k[0-9a-f]{16}", first)
    assert first == origin.ClientIds(KEY).for_post(42)  # a retry finds the earlier write
    assert first != OTHER_IDS.for_post(42)  # nobody without the key can tell the id
    assert IDS.for_post(43) != first and IDS.for_chat_message(42) != first
    assert re.fullmatch(r"client-dc-7-k[0-9a-f]{16}", IDS.for_chat_message(7))
    assert IDS.for_recovered_post(42, 1767225600).startswith("client-dp-42-r1767225600-k")
    assert IDS.for_part(first, 2).startswith("client-dp-42-p2-k")
    assert IDS.is_keyed(first) and not OTHER_IDS.is_keyed(first)
    assert not IDS.is_keyed("client-dp-42") and not IDS.is_keyed(first[:-1] + "0")
    with pytest.raises(ValueError):
        IDS.for_post(-1)
    with pytest.raises(ValueError):
        origin.ClientIds(b"short")
    assert KEY.hex() not in repr(IDS) and str(list(KEY)) not in repr(IDS)


def test_legacy_ids_keep_their_forms_for_reading() -> None:
    """Links and post parts written before the ids were keyed name legacy ids: still valid."""
    for legacy in ("client-dp-42", "client-dp-42-r17", "client-dp-42-p2", "client-dc-7"):
        assert origin.is_legacy_client_id(legacy)
    assert not origin.is_legacy_client_id(IDS.for_post(42))
    # A legacy post's later parts are found where they were written…
    assert IDS.for_part("client-dp-42", 3) == "client-dp-42-p3"
    assert IDS.for_part("client-dp-5-r17", 2) == "client-dp-5-r17-p2"
    # …and a legacy post that grows moves them to the keyed ids of the same post.
    assert IDS.rebased("client-dp-42") == IDS.for_post(42)
    assert IDS.rebased("client-dp-42-r17") == IDS.for_recovered_post(42, 17)
    assert IDS.rebased(IDS.for_post(42)) == IDS.for_post(42)


def test_stand_ins_for_a_taken_id_are_keyed_distinct_and_stable() -> None:
    first = IDS.for_post(42)
    stand_ins = IDS.alternates(first)
    assert len(set(stand_ins)) == 3 and first not in stand_ins
    assert stand_ins == origin.ClientIds(KEY).alternates(first)
    assert all(IDS.is_keyed(a) and a.startswith("client-dp-42-a") for a in stand_ins)
    # The parts of a copy written under a stand-in follow it.
    assert IDS.for_part(stand_ins[0], 2).startswith("client-dp-42-a1-p2-k")
    # A legacy id taken by someone (a part of an old post) has keyed stand-ins too.
    assert all(IDS.is_keyed(a) for a in IDS.alternates("client-dp-42-p3"))


def test_content_hash_normalises() -> None:
    base = origin.content_hash("Hello *world*")
    assert base == origin.content_hash("Hello *world*  \r\n")
    assert base == origin.content_hash("Hello *world*\n\n<!-- gchat:spaces/S/messages/M -->")
    assert base == origin.content_hash(f"Hello *world*{ZW}")
    assert base != origin.content_hash("Hello *World*")
    assert len(base) == 64


@pytest.mark.parametrize(
    ("client_id", "sender", "bridge", "ours"),
    [
        (IDS.for_post(42), BRIDGE_USER, BRIDGE, True),  # a forum post's copy in a room
        (IDS.for_recovered_post(42, 17), BRIDGE_USER, BRIDGE, True),  # a recovered post's copy
        (IDS.for_part(IDS.for_post(42), 2), BRIDGE_USER, BRIDGE, True),  # a later part
        (IDS.alternates(IDS.for_post(42))[0], BRIDGE_USER, BRIDGE, True),  # a stand-in id
        (IDS.for_chat_message(7), BRIDGE_USER, BRIDGE, True),  # a chat message's copy in a DM
        ("client-dp-42", BRIDGE_USER, BRIDGE, True),  # legacy forms, written before the key
        ("client-dp-42-r1767225600", BRIDGE_USER, BRIDGE, True),
        ("client-dp-5-r17-p2", BRIDGE_USER, BRIDGE, True),
        ("client-dc-7", BRIDGE_USER, BRIDGE, True),
        ("client-dc-7-p2", BRIDGE_USER, BRIDGE, True),  # the prefix rule DMs have always used
        # Issue 17: a squatter took the ids; the prefix proves nothing, the sender does.
        ("client-dp-1", "users/666", BRIDGE, False),
        (IDS.for_post(42), "users/666", BRIDGE, False),  # even a keyed id (copied elsewhere)
        ("client-dc-7", "users/666", BRIDGE, False),
        # The bridge's own account, typing by hand or with another app's ids.
        ("client-mine", BRIDGE_USER, BRIDGE, False),
        ("client-bridge-4f2a", BRIDGE_USER, BRIDGE, False),
        ("", BRIDGE_USER, BRIDGE, False),
        (None, BRIDGE_USER, BRIDGE, False),  # a message without a client id
        # Account not learnt yet (before its first write): only an id made with the key.
        (IDS.for_post(42), BRIDGE_USER, NOT_LEARNT, True),
        (IDS.for_post(42), "users/666", NOT_LEARNT, True),  # nobody else can make it
        (OTHER_IDS.for_post(42), "users/666", NOT_LEARNT, False),
        ("client-dp-1", "users/666", NOT_LEARNT, False),
        ("client-dp-1", BRIDGE_USER, NOT_LEARNT, False),
    ],
)
def test_is_bridge_origin_needs_the_id_form_and_the_sender(
    client_id: str | None, sender: str, bridge: origin.BridgeIdentity, ours: bool
) -> None:
    message = chat_message(client_id, sender)
    assert origin.is_bridge_origin(message, bridge) is ours
    assert bridge.wrote(message) is ours


def test_a_bridge_runs_as_its_learnt_account() -> None:
    assert origin.BridgeIdentity.running_as(IDS, None) == NOT_LEARNT
    assert origin.BridgeIdentity.running_as(IDS, BRIDGE_USER) == BRIDGE


@pytest.mark.parametrize(
    ("raw", "author", "copy_of"),
    [
        ("Hello\n\n<!-- gchat:spaces/S/messages/M -->", "ada_l", "spaces/S/messages/M"),
        ("Hello\n\n<!-- gchat:spaces/S/messages/M -->\n  ", "ADA_L", "spaces/S/messages/M"),
        ("Hello\n\n<!-- gchat:spaces/S/messages/M -->", "system", "spaces/S/messages/M"),
        # Issue 17: markers a forum user types.
        ("Hello\n\n<!-- gchat:spaces/S/messages/M -->", "mallory", None),  # another author
        ("<!-- gchat:spaces/S/messages/M --> in front", "ada_l", None),  # not at the end
        ("a <!-- gchat:spaces/S/messages/M --> b", "ada_l", None),  # in the middle
        ("Hello <!-- other -->", "ada_l", None),
        ("", "ada_l", None),
    ],
)
def test_a_marker_counts_only_at_the_end_of_a_post_by_an_expected_author(
    raw: str, author: str, copy_of: str | None
) -> None:
    assert origin.copied_from(raw, author, ("ada_l", "system")) == copy_of
    assert origin.copied_from(raw, author, ()) is None  # the bridge writes no such message


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


KEYS = st.binary(min_size=16, max_size=64)
NUMBERS = st.integers(min_value=0, max_value=10**40)


@SETTINGS
@given(KEYS, NUMBERS, st.integers(min_value=0, max_value=2**40), st.integers(2, 99))
def test_every_client_id_keeps_chats_rules(key: bytes, number: int, stamp: int, part: int) -> None:
    ids = origin.ClientIds(key)
    first, recovered = ids.for_post(number), ids.for_recovered_post(number, stamp)
    forms = [
        first,
        recovered,
        ids.for_part(first, part),
        ids.for_part(recovered, part),
        ids.for_chat_message(number),
        *ids.alternates(recovered),
        *(ids.for_part(a, part) for a in ids.alternates(recovered)),
    ]
    for client_id in forms:
        # Chat's rules: "client-", then lowercase letters, digits and hyphens; 63 at most.
        assert re.fullmatch(r"client-[a-z0-9-]{1,56}", client_id), client_id
        assert client_id.startswith(("client-dp-", "client-dc-"))
        assert not origin.is_legacy_client_id(client_id)
    assert len(set(forms)) == len(forms)


@SETTINGS
@given(KEYS, NUMBERS, st.integers(min_value=0, max_value=2**40), st.integers(2, 99))
def test_every_client_id_form_is_recognised_as_ours_only_from_our_sender(
    key: bytes, post_id: int, stamp: int, part: int
) -> None:
    ids = origin.ClientIds(key)
    bridge = origin.BridgeIdentity(ids, frozenset({BRIDGE_USER}))
    first = ids.for_post(post_id)
    recovered = ids.for_recovered_post(post_id, stamp)
    forms = [
        first,
        recovered,
        ids.for_part(first, part),
        ids.for_part(recovered, part),
        ids.for_chat_message(post_id),
        *ids.alternates(first),
        f"client-dp-{post_id}",  # legacy
        f"client-dp-{post_id}-p{part}",
    ]
    for client_id in forms:
        assert origin.is_bridge_origin(chat_message(client_id), bridge), client_id
        assert not origin.is_bridge_origin(chat_message(client_id, "users/666"), bridge)


@SETTINGS
@given(NAME_PART, st.text(alphabet="ABCXYZabcxyz0189_-.", min_size=1, max_size=30), st.text())
def test_only_a_trailing_marker_counts(space: str, message: str, body: str) -> None:
    name = f"spaces/{space}/messages/{message}"
    marker = origin.origin_marker(name)
    assert origin.trailing_origin_marker(body + "\n\n" + marker + "\n") == name
    assert origin.copied_from(body + marker, "ada", ["Ada"]) == name
    if body.strip():
        # Text after the marker makes it someone's words, wherever it stands.
        assert origin.trailing_origin_marker(marker + body) in (
            None,
            origin.trailing_origin_marker(body),
        )


@SETTINGS
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_external_ids_valid_and_distinct(a: str, b: str) -> None:
    ida, idb = origin.external_id_for_thread(a), origin.external_id_for_thread(b)
    for value in (ida, idb):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,50}", value)
    assert (ida.lower() == idb.lower()) == (a == b)
