"""Pure parts of the Chat → Discourse sync: the planner's edits and deletions, raw layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from db import MessageLink
from discourse_client import DiscourseUpload
from google_chat_client import ChatAttachment, ChatMessage, ChatUser, parse_rfc3339
from origin import (
    ATTACHMENTS_MARK,
    BridgeIdentity,
    ClientIds,
    attachments_part_of_raw,
    content_hash,
    find_origin_marker,
    is_bridge_origin,
    text_part_of_raw,
)
from sync_gchat_to_discourse import (
    DELETED_HASH,
    CreateReply,
    CreateTopic,
    DeletePost,
    EditPost,
    Skip,
    compose_raw,
    needs_rendering,
    plan,
    upload_markdown,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ADA = ChatUser("users/1", "Ada", "ada@example.com", "HUMAN")
BRIDGE_USER = ChatUser("users/100", "Bridge", None, "HUMAN")
BRIDGE = BridgeIdentity(ClientIds(bytes(range(32))), frozenset({BRIDGE_USER.name}))


def msg(n: int, text: str = "hello", **kw: object) -> ChatMessage:
    fields: dict[str, object] = {
        "name": f"spaces/S/messages/m{n}",
        "space_name": "spaces/S",
        "thread_name": "spaces/S/threads/t1",
        "sender": ADA,
        "text": text,
        "create_time": T0 + timedelta(seconds=n),
        "create_time_raw": (T0 + timedelta(seconds=n)).isoformat(),
        "last_update_time": None,
        "delete_time": None,
        "client_assigned_message_id": None,
        "thread_reply": n > 1,
        "attachments": (),
    }
    fields.update(kw)
    return ChatMessage(**fields)  # type: ignore[arg-type]


def link(n: int, text: str = "hello", origin: str = "gchat") -> MessageLink:
    return MessageLink(
        f"spaces/S/messages/m{n}",
        100 + n,
        "spaces/S/threads/t1",
        7,
        origin,  # type: ignore[arg-type]
        content_hash(text),
    )


def run(messages: list[ChatMessage], links: dict[str, MessageLink], **kw: object) -> list:
    # The service's resolve step, with a message's plain text as its rendering.
    rendered = {
        m.name: m.text for m in messages if m.name in links and needs_rendering(m, links[m.name])
    }
    return plan(
        messages,
        linked_messages=links.keys(),
        linked_threads={"spaces/S/threads/t1"} if links else set(),
        space_label="a test space",
        bridge=BRIDGE,
        links=links,
        rendered=rendered,
        **kw,  # type: ignore[arg-type]
    )


def test_new_messages_still_become_a_topic_and_replies() -> None:
    actions = run([msg(1), msg(2)], {})
    assert [type(a) for a in actions] == [CreateTopic, CreateReply]


def test_an_edited_linked_message_becomes_an_edit_and_an_unchanged_one_nothing() -> None:
    edited = msg(1, "new words", last_update_time=T0 + timedelta(minutes=1))
    same = msg(2, "hello", last_update_time=T0 + timedelta(minutes=1))
    never = msg(3, "changed but never edited?")
    links = {m.name: link(n) for n, m in ((1, edited), (2, same), (3, never))}
    actions = run([edited, same, never], links)
    assert actions == [EditPost(edited, links[edited.name], "new words")]


def test_only_edited_live_chat_messages_are_rendered_for_comparison() -> None:
    edited = T0 + timedelta(minutes=1)
    assert needs_rendering(msg(1, last_update_time=edited), link(1))
    assert not needs_rendering(msg(1), link(1))  # never edited: no author looked up
    assert not needs_rendering(msg(1, last_update_time=edited, delete_time=edited), link(1))
    assert not needs_rendering(msg(1, last_update_time=edited), link(1, origin="discourse"))
    # A message linked as mirrored from Chat is a person's, whatever id it holds (issue 17: a
    # squatter may have taken an id of the bridge's forms): its edits are compared.
    squatted = msg(1, last_update_time=edited, client_assigned_message_id="client-dp-5")
    assert needs_rendering(squatted, link(1))
    noted = MessageLink(
        "spaces/S/messages/m1", 101, "spaces/S/threads/t1", 7, "gchat", DELETED_HASH
    )
    assert not needs_rendering(msg(1, last_update_time=edited), noted)


def test_a_compared_message_without_its_rendering_is_an_error_not_a_lost_edit() -> None:
    edited = msg(1, "new words", last_update_time=T0 + timedelta(minutes=1))
    links = {edited.name: link(1)}
    with pytest.raises(ValueError, match="no rendering of spaces/S/messages/m1"):
        plan(
            [edited],
            linked_messages=links.keys(),
            linked_threads=set(),
            space_label="a test space",
            bridge=BRIDGE,
            links=links,
        )


def test_a_message_without_words_gets_the_spaces_fallback_title() -> None:
    (action,) = run([msg(1, "")], {})
    assert action.title == "Chat thread in a test space (2026-01-01 12:00)"


def test_a_linked_tombstone_is_a_deletion_an_unlinked_one_a_skip() -> None:
    gone = msg(1, "", delete_time=T0 + timedelta(minutes=1))
    other = msg(2, "", delete_time=T0 + timedelta(minutes=1))
    links = {gone.name: link(1)}
    actions = run([gone, other], links)
    assert actions[0] == DeletePost(gone, links[gone.name])
    assert isinstance(actions[1], Skip)


def test_a_first_post_already_replaced_by_a_note_is_not_deleted_again() -> None:
    gone = msg(1, "", delete_time=T0)
    noted = MessageLink(gone.name, 101, "spaces/S/threads/t1", 7, "gchat", DELETED_HASH)
    assert run([gone], {gone.name: noted}) == []


def test_messages_read_only_for_the_edit_window_are_never_created() -> None:
    old, new = msg(1), msg(5)
    actions = run([old, new], {}, new_after=T0 + timedelta(seconds=2))
    assert [a.message for a in actions] == [new]


def test_discourse_origin_messages_are_not_edited_from_chat() -> None:
    ours = msg(1, "x", last_update_time=T0, client_assigned_message_id="client-dp-5")
    assert run([ours], {ours.name: link(1, origin="discourse")}) == []
    legacy_part = "client-dp-5-r17-p2"
    assert is_bridge_origin(
        msg(2, client_assigned_message_id=legacy_part, sender=BRIDGE_USER), BRIDGE
    )
    assert not is_bridge_origin(msg(2, client_assigned_message_id="client-mine"), BRIDGE)


def test_a_squatters_message_under_the_bridges_ids_is_mirrored_like_anyone_elses() -> None:
    """Issue 17: a member with API access took the ids `client-dp-1…`; the sender decides."""
    squatted = [msg(n, f"squat {n}", client_assigned_message_id=f"client-dp-{n}") for n in (1, 2)]
    ours = msg(3, "copy", client_assigned_message_id="client-dp-3", sender=BRIDGE_USER)
    actions = run([*squatted, ours], {})
    assert [type(a) for a in actions] == [CreateTopic, CreateReply, Skip]
    assert [a.message for a in actions[:2]] == squatted


def test_raw_layout_keeps_text_embeds_and_marker_apart() -> None:
    raw = compose_raw("Hello **there**", "![a.png|1x1](upload://x.png)", "spaces/S/messages/m1")
    assert raw.index(ATTACHMENTS_MARK) < raw.index("<!-- gchat:spaces/S/messages/m1 -->")
    assert text_part_of_raw(raw) == "Hello **there**"
    assert attachments_part_of_raw(raw) == "![a.png|1x1](upload://x.png)"
    assert find_origin_marker(raw) == "spaces/S/messages/m1"


def test_upload_markdown_follows_the_composer_forms() -> None:
    def up(name: str, **kw: object) -> DiscourseUpload:
        fields: dict[str, object] = dict(
            id=1, url="/u", short_url=f"upload://abc.{name.rsplit('.', 1)[1]}", short_path=None,
            original_filename=name, filesize=10, extension=None, width=None, height=None,
            thumbnail_width=None, thumbnail_height=None, human_filesize="10 Bytes",
        )  # fmt: skip
        fields.update(kw)
        return DiscourseUpload(**fields)  # type: ignore[arg-type]

    image = up("cat.png", width=640, height=480, thumbnail_width=500, thumbnail_height=375)
    assert upload_markdown(image, "image/png") == "![cat.png|500x375](upload://abc.png)"
    assert upload_markdown(up("a.mp4"), "video/mp4") == "![a.mp4|video](upload://abc.mp4)"
    assert (
        upload_markdown(up("r.pdf"), "application/pdf")
        == "[r.pdf|attachment](upload://abc.pdf) (10 Bytes)"
    )


def test_parse_time_keeps_the_zone_with_nanoseconds() -> None:
    assert parse_rfc3339("2026-01-02T03:04:05.123456789Z") == datetime(
        2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC
    )


def test_attachment_record_shape_used_by_the_sync() -> None:
    drive = ChatAttachment("a", "doc", "application/pdf", None, "DRIVE1", "DRIVE_FILE")
    assert drive.drive_file_id == "DRIVE1" and drive.resource_name is None
