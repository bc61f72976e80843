"""Property tests of both planners: any mix of messages and links gives a sane plan."""

from __future__ import annotations

import copy
import inspect
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

import origin
from db import MessageLink
from db import MessageLink as _Link
from discourse_client import DiscoursePost
from google_chat_client import ChatMessage, ChatUser
from inbox import PostEvent
from sync_discourse_to_gchat import CreateMessage, PostContext, RenderSettings
from sync_discourse_to_gchat import plan as plan_discourse
from sync_gchat_to_discourse import (
    DELETED_HASH,
    CreateReply,
    CreateTopic,
    DeletePost,
    EditPost,
    needs_rendering,
    plan,
)
from sync_gchat_to_discourse import Skip as ChatSkip

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HUMAN = ChatUser("users/1", "Ada", None, "HUMAN")
APP = ChatUser("users/app", "Bot", None, "BOT")
# The bridge's own account: its messages carry its client ids (anyone else's may too).
BRIDGE_SENDER = ChatUser("users/100", "Bridge", None, "HUMAN")
IDS = origin.ClientIds(bytes(range(32)))
BRIDGE = origin.BridgeIdentity(IDS, frozenset({BRIDGE_SENDER.name}))


@st.composite
def chat_messages(draw: st.DrawFn) -> list[ChatMessage]:
    count = draw(st.integers(0, 30))
    messages = []
    for n in range(count):
        thread = draw(st.integers(0, 4))
        origin = draw(
            st.sampled_from(
                [None, None, None, IDS.for_post(n), f"client-dp-{n}", f"client-dc-{n}"]
            )
        )
        messages.append(
            ChatMessage(
                name=f"spaces/S/messages/m{n}",
                space_name="spaces/S",
                thread_name=f"spaces/S/threads/t{thread}",
                sender=draw(st.sampled_from([HUMAN, HUMAN, APP, BRIDGE_SENDER])),
                text=draw(st.text(max_size=40)),
                create_time=T0 + timedelta(seconds=draw(st.integers(0, 10_000))),
                create_time_raw="",
                last_update_time=None,
                delete_time=draw(st.sampled_from([None, None, None, T0])),
                client_assigned_message_id=origin,
                thread_reply=False,
                attachments=(),
            )
        )
    return messages


@settings(max_examples=300)
@given(
    messages=chat_messages(),
    linked=st.sets(st.integers(0, 30)),
    linked_threads=st.sets(st.integers(0, 4)),
)
def test_chat_plan_mirrors_each_new_human_message_once_and_starts_each_thread_once(
    messages: list[ChatMessage], linked: set[int], linked_threads: set[int]
) -> None:
    linked_names = {f"spaces/S/messages/m{n}" for n in linked}
    thread_names = {f"spaces/S/threads/t{n}" for n in linked_threads}
    actions = plan(
        messages,
        linked_messages=linked_names,
        linked_threads=thread_names,
        space_label="a test space",
        bridge=BRIDGE,
    )
    touched = [a.message.name for a in actions]
    assert len(touched) == len(set(touched)), "a message planned twice"
    assert not set(touched) & linked_names, "an already mirrored message planned again"
    started: set[str] = set()
    for action in actions:
        message = action.message
        if isinstance(action, ChatSkip):
            assert (
                message.client_assigned_message_id
                or message.delete_time
                or message.sender.type == "BOT"
            )
            continue
        # Only live human messages that the bridge did not write cross: an id of the bridge's
        # forms from anyone else (a squatter's) is a human message like any other.
        assert message.delete_time is None and message.sender.type == "HUMAN"
        assert not origin.is_bridge_origin(message, BRIDGE)
        assert isinstance(action, CreateTopic | CreateReply)  # (for mypy) what plan() returns
        assert 15 <= len(action.title) <= 255
        if isinstance(action, CreateTopic):
            assert action.gchat_thread_name not in thread_names | started
            started.add(action.gchat_thread_name)
        else:
            assert isinstance(action, CreateReply)
            assert action.gchat_thread_name in thread_names | started
    crossing = [
        m.name
        for m in messages
        if m.name not in linked_names
        and m.delete_time is None
        and m.sender.type == "HUMAN"
        and not origin.is_bridge_origin(m, BRIDGE)
    ]
    assert sorted(a.message.name for a in actions if not isinstance(a, ChatSkip)) == sorted(
        crossing
    )


TEXTS = ("hello", "hello!", "", "**Ada** (Google Chat):\n\nhello")


@st.composite
def linked_chat(
    draw: st.DrawFn,
) -> tuple[list[ChatMessage], dict[str, MessageLink], dict[str, str]]:
    """Messages, links for some of them, and the resolve step's renderings of the compared ones."""
    messages = draw(chat_messages())
    messages = [
        replace(m, last_update_time=draw(st.sampled_from([None, T0 + timedelta(hours=3)])))
        for m in messages
    ]
    links: dict[str, MessageLink] = {}
    for m in messages:
        if draw(st.booleans()):
            links[m.name] = MessageLink(
                m.name,
                draw(st.integers(1, 1000)),
                m.thread_name or m.name,
                draw(st.integers(1, 5)),
                draw(st.sampled_from(["gchat", "gchat", "discourse"])),
                draw(st.sampled_from([*(origin.content_hash(t) for t in TEXTS), DELETED_HASH])),
            )
    rendered = {
        m.name: draw(st.sampled_from(TEXTS))
        for m in messages
        if m.name in links and needs_rendering(m, links[m.name])
    }
    return messages, links, rendered


@settings(max_examples=200)
@given(case=linked_chat())
def test_chat_plan_edits_exactly_what_renders_differently_and_deletes_each_linked_tombstone(
    case: tuple[list[ChatMessage], dict[str, MessageLink], dict[str, str]],
) -> None:
    messages, links, rendered = case
    actions = plan(
        messages,
        linked_messages=links.keys(),
        linked_threads=set(),
        space_label="a test space",
        bridge=BRIDGE,
        links=links,
        rendered=rendered,
    )
    by_name = {a.message.name: a for a in actions}
    assert len(by_name) == len(actions), "a message planned twice"
    for m in messages:
        link = links.get(m.name)
        action = by_name.get(m.name)
        if link is None:
            assert not isinstance(action, EditPost | DeletePost)
            continue
        if m.delete_time is not None:
            # A linked tombstone is deleted once; one already replaced by the note waits.
            expected: object = None if link.content_hash == DELETED_HASH else DeletePost(m, link)
        elif m.name in rendered and origin.content_hash(rendered[m.name]) != link.content_hash:
            expected = EditPost(m, link, rendered[m.name])  # the compared text is what is written
        else:
            expected = None  # unchanged, never edited, or the bridge's own (changes via Discourse)
        assert action == expected
        if isinstance(action, EditPost):
            # What the link says was decided when it was made: the bridge's own writes are
            # linked with origin "discourse" and change only through Discourse.
            assert link.origin == "gchat"
            assert m.last_update_time is not None


@settings(max_examples=100)
@given(case=linked_chat(), linked_threads=st.sets(st.integers(0, 4)))
def test_chat_plan_is_deterministic_and_takes_data_only(
    case: tuple[list[ChatMessage], dict[str, MessageLink], dict[str, str]],
    linked_threads: set[int],
) -> None:
    messages, links, rendered = case
    threads = frozenset(f"spaces/S/threads/t{n}" for n in linked_threads)
    snapshot = copy.deepcopy((messages, links, rendered))

    def once() -> list[object]:
        # Read-only views: a planner that wrote into its inputs would raise here.
        return list(
            plan(
                tuple(messages),
                linked_messages=frozenset(links),
                linked_threads=threads,
                space_label="a test space",
                bridge=BRIDGE,
                links=MappingProxyType(links),
                rendered=MappingProxyType(rendered),
                new_after=T0 + timedelta(seconds=5_000),
            )
        )

    first = once()
    assert once() == first  # the same data, the same plan
    assert (messages, links, rendered) == snapshot  # and the data untouched
    # Nothing to call: every input is plain data (no callback can reach a store or a client).
    for name, parameter in inspect.signature(plan).parameters.items():
        assert "Callable" not in str(parameter.annotation), name


@st.composite
def discourse_posts(draw: st.DrawFn) -> DiscoursePost:
    raw = draw(st.text(max_size=40))
    if draw(st.booleans()) and draw(st.booleans()):
        raw += origin.origin_marker("spaces/S/messages/m1")
    return DiscoursePost(
        id=draw(st.integers(1, 1000)),
        topic_id=draw(st.integers(1, 5)),
        post_number=draw(st.integers(1, 4)),
        username=draw(st.sampled_from(["carol", "bridged_ada"])),
        raw=raw,
        cooked=None,
        post_type=draw(st.sampled_from([1, 1, 1, 2, 3, 4])),
        created_at=T0,
        updated_at=None,
        deleted_at=draw(st.sampled_from([None, None, T0])),
        user_deleted=draw(st.booleans()) and draw(st.booleans()),
        hidden=draw(st.booleans()) and draw(st.booleans()),
        category_id=draw(st.sampled_from([None, 10, 11])),
        topic_title="A topic title",
        topic_archetype=draw(st.sampled_from(["regular", "regular", "private_message"])),
        reply_to_post_number=None,
        version=1,
    )


@settings(max_examples=500)
@given(
    post=discourse_posts(),
    thread=st.sampled_from([None, "spaces/S/threads/t1"]),
    bridged=st.booleans(),
    authors=st.sampled_from([frozenset(), frozenset({"bridged_ada"}), frozenset({"system"})]),
)
def test_discourse_plan_lets_only_real_public_content_of_mapped_categories_cross(
    post: DiscoursePost, thread: str | None, bridged: bool, authors: frozenset[str]
) -> None:
    link = (
        _Link(
            "spaces/S/messages/m", post.id, "spaces/S/threads/t1", post.topic_id, "discourse", ""
        )
        if bridged
        else None
    )
    context = PostContext(
        {10: "spaces/S"}, thread, link, topic_seen=post.post_number - 1, origin_authors=authors
    )
    actions = plan_discourse(
        PostEvent("created", post), context, RenderSettings(base_url="https://f", ids=IDS)
    )
    creates = [a for a in actions if isinstance(a, CreateMessage)]
    if not creates:
        return
    (action,) = creates
    assert not bridged
    assert post.post_type == 1 and post.topic_archetype != "private_message"
    assert not (post.hidden or post.user_deleted or post.deleted_at)
    # By origin: a post of an account the bridge created crosses unless it is the bridge's copy
    # of a Chat message (a trailing marker, by an author the bridge writes that message as).
    assert origin.copied_from(post.raw, post.username, authors) is None
    assert post.category_id == 10 or thread is not None
    if post.post_number > 1:
        # A reply never starts a new thread: it goes into the topic's, or post #1 goes first.
        assert action.gchat_thread_name == thread
        assert action.first_post_needed == (thread is None)
