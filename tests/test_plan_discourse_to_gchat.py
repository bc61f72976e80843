"""The Discourse → Chat planner: a table for every event kind, and properties over any input.

`plan()` is pure: the event and a `PostContext` in, actions out. These tests build both by hand,
so they run without emulators and say exactly which decision each case exercises.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import origin
from db import MessageLink, PostParts
from discourse_client import DiscoursePost
from inbox import PostEvent, TopicEvent
from sync_discourse_to_gchat import (
    Action,
    CreateMessage,
    DeleteMessages,
    EditMessage,
    FillGap,
    PostContext,
    RenderSettings,
    Skip,
    plan,
    render_message,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPACE = "spaces/AAA"
THREAD = f"{SPACE}/threads/t1"
OTHER_SPACE = "spaces/BBB"
SPACES = {3: SPACE, 4: OTHER_SPACE}
IDS = origin.ClientIds(bytes(range(32)))
SETTINGS = RenderSettings(base_url="https://forum.example", ids=IDS)


def post(**kw: object) -> DiscoursePost:
    fields: dict[str, object] = {
        "id": 20, "topic_id": 9, "post_number": 2, "username": "dora", "raw": "hello there",
        "cooked": None, "post_type": 1, "created_at": T0, "updated_at": T0, "deleted_at": None,
        "user_deleted": False, "hidden": False, "category_id": 3, "topic_title": "Plans",
        "topic_archetype": "regular", "reply_to_post_number": None, "version": 1,
    }  # fmt: skip
    fields.update(kw)
    return DiscoursePost(**fields)  # type: ignore[arg-type]


def link(
    post_id: int = 20, *, name: str = "m20", origin_: str = "discourse", text: str = ""
) -> MessageLink:
    return MessageLink(
        gchat_message_name=f"{SPACE}/messages/{name}",
        discourse_post_id=post_id,
        gchat_thread_name=THREAD,
        discourse_topic_id=9,
        origin=origin_,  # type: ignore[arg-type]
        content_hash=origin.content_hash(text),
    )


def rendered(p: DiscoursePost) -> str:
    return render_message(p, base_url=SETTINGS.base_url, mention_lookup=lambda _: None)


def ctx(**kw: object) -> PostContext:
    base: dict[str, object] = {"space_for_category": SPACES, "thread_for_topic": THREAD}
    base.update(kw)
    return PostContext(**base)  # type: ignore[arg-type]


MARKED_NAME = f"{SPACE}/messages/x"
MARKED = "from Chat\n\n" + origin.origin_marker(MARKED_NAME)
ROOT = link(10, name="m10")
REPLY = link(20, name="m20")

# (case, event, context, expected actions)
TABLE: list[tuple[str, PostEvent | TopicEvent, PostContext, tuple[Action, ...]]] = [
    # -- post_created
    ("new topic", PostEvent("created", post(id=10, post_number=1)), ctx(thread_for_topic=None),
     (CreateMessage(post(id=10, post_number=1), SPACE, None, IDS.for_post(10)),)),
    ("reply in a bridged topic", PostEvent("created", post()), ctx(topic_seen=1),
     (CreateMessage(post(), SPACE, THREAD, IDS.for_post(20)),)),
    ("reply whose topic never reached Chat", PostEvent("created", post()),
     ctx(thread_for_topic=None, topic_seen=1),
     (CreateMessage(post(), SPACE, None, IDS.for_post(20), first_post_needed=True),)),
    ("reply after a gap", PostEvent("created", post(post_number=5)), ctx(topic_seen=2),
     (FillGap(post(post_number=5)), CreateMessage(post(post_number=5), SPACE, THREAD,
                                                  IDS.for_post(20)))),
    # A moderator moved the bridged topic to a category that is not mapped (staff only): the
    # webhook's `category_id` is the topic's category now, and the thread no longer counts.
    ("reply in a bridged topic moved to an unmapped category",
     PostEvent("created", post(category_id=77)), ctx(topic_seen=1),
     (Skip("topic 9 is in category 77 now, which is not mapped", notable=True),)),
    ("reply in a bridged topic moved to another space's category",
     PostEvent("created", post(category_id=4)), ctx(topic_seen=1),
     (Skip(f"topic 9 is in category 4 now, mapped to {OTHER_SPACE}, not to its thread's space",
           notable=True),)),
    ("reply whose topic's category is unknown", PostEvent("created", post(category_id=None)),
     ctx(topic_seen=1),
     (Skip("topic 9 is in category None now, which is not mapped", notable=True),)),
    ("already bridged", PostEvent("created", post()), ctx(link=REPLY),
     (Skip("already in Chat"),)),
    ("whisper", PostEvent("created", post(post_type=4)), ctx(),
     (Skip("post_type 4 (whisper, small action or moderator notice)"),)),
    ("private message", PostEvent("created", post(topic_archetype="private_message")), ctx(),
     (Skip("private message"),)),
    ("hidden", PostEvent("created", post(hidden=True)), ctx(), (Skip("hidden or deleted"),)),
    ("came from Chat", PostEvent("created", post(raw=MARKED)),
     ctx(origin_authors=frozenset({"dora", "system"})), (Skip("came from Chat"),)),
    ("came from Chat, written as the API user", PostEvent("created", post(raw=MARKED)),
     ctx(origin_authors=frozenset({"ada_l", "Dora"})), (Skip("came from Chat"),)),
    # Issue 17: markers a forum user types do not stop the post.
    ("a marker typed by someone else", PostEvent("created", post(raw=MARKED)),
     ctx(origin_authors=frozenset({"ada_l", "system"}), topic_seen=1),
     (CreateMessage(post(raw=MARKED), SPACE, THREAD, IDS.for_post(20)),)),
    ("a marker of a message the bridge is not writing", PostEvent("created", post(raw=MARKED)),
     ctx(topic_seen=1), (CreateMessage(post(raw=MARKED), SPACE, THREAD, IDS.for_post(20)),)),
    ("a marker that does not end the post",
     PostEvent("created", post(raw=MARKED + "\n\nand more words")),
     ctx(origin_authors=frozenset({"dora"}), topic_seen=1),
     (CreateMessage(post(raw=MARKED + "\n\nand more words"), SPACE, THREAD,
                    IDS.for_post(20)),)),
    ("unmapped category", PostEvent("created", post(category_id=77)),
     ctx(thread_for_topic=None), (Skip("category 77 is not mapped"),)),
    ("first post of a topic with a thread", PostEvent("created", post(post_number=1)), ctx(),
     (Skip("topic already has a Chat thread"),)),
    # -- post_edited
    ("edit of a post not in Chat", PostEvent("edited", post(raw="new")), ctx(),
     (Skip("edit of a post not in Chat"),)),
    ("edit that is the author's deletion", PostEvent("edited", post(user_deleted=True)),
     ctx(link=REPLY),
     (Skip("the author's deletion arrives as an edit first; post_destroyed follows"),)),
    ("edit of a Chat message's copy", PostEvent("edited", post(raw="changed")),
     ctx(link=link(origin_="gchat", text="hello there")),
     (Skip(f"edit in Discourse of Chat message {SPACE}/messages/m20 not carried back",
           notable=True),)),
    ("stale edit", PostEvent("edited", post(raw="new", version=2)),
     ctx(link=REPLY, version_seen=3), (Skip("stale edit (version 2 < 3)", notable=True),)),
    # Two edits within Discourse's grace period share a version: the older one, replayed or
    # delivered late, is known by its time.
    ("stale edit of the same version", PostEvent("edited", post(raw="older")),
     ctx(link=REPLY, version_seen=1, edited_seen=T0 + timedelta(minutes=1)),
     (Skip(f"stale edit (updated {T0.isoformat()} < "
           f"{(T0 + timedelta(minutes=1)).isoformat()})", notable=True),)),
    ("edit newer than the last one mirrored",
     PostEvent("edited", post(raw="new words", updated_at=T0 + timedelta(minutes=2))),
     ctx(link=REPLY, version_seen=1, edited_seen=T0 + timedelta(minutes=1)),
     (EditMessage(post(raw="new words", updated_at=T0 + timedelta(minutes=2)),
                  f"{SPACE}/messages/m20", THREAD, (rendered(post(raw="new words")),),
                  origin.content_hash(rendered(post(raw="new words"))),
                  PostParts(IDS.for_post(20), 1)),)),
    ("edit that changes nothing", PostEvent("edited", post(version=2)),
     ctx(link=link(text=rendered(post()))), (Skip("the edit changes nothing in Chat"),)),
    ("edit of a post whose topic moved to an unmapped category",
     PostEvent("edited", post(raw="new words", version=2, category_id=77)), ctx(link=REPLY),
     (Skip("topic 9 is in category 77 now, which is not mapped", notable=True),)),
    ("edit", PostEvent("edited", post(raw="new words", version=2)), ctx(link=REPLY),
     (EditMessage(post(raw="new words", version=2), f"{SPACE}/messages/m20", THREAD,
                  (rendered(post(raw="new words")),),
                  origin.content_hash(rendered(post(raw="new words"))),
                  PostParts(IDS.for_post(20), 1)),)),
    # -- post_destroyed
    ("deletion of a post not in Chat", PostEvent("destroyed", post()), ctx(),
     (Skip("deletion of a post not in Chat"),)),
    ("deletion of a reply", PostEvent("destroyed", post()),
     ctx(link=REPLY, topic_links=(ROOT, REPLY), deleted_now=True),
     (DeleteMessages("post 20", (f"{SPACE}/messages/m20",),
                     unlink_message=f"{SPACE}/messages/m20"),)),
    ("deletion of a long reply", PostEvent("destroyed", post()),
     ctx(link=REPLY, topic_links=(ROOT, REPLY), parts={20: PostParts("client-dp-20", 3)},
         deleted_now=True),
     (DeleteMessages("post 20", (f"{SPACE}/messages/client-dp-20-p2",
                                 f"{SPACE}/messages/client-dp-20-p3", f"{SPACE}/messages/m20"),
                     unlink_message=f"{SPACE}/messages/m20"),)),
    ("deletion of a first post", PostEvent("destroyed", post(id=10, post_number=1)),
     ctx(link=ROOT, topic_links=(ROOT, REPLY), deleted_now=True),
     (DeleteMessages("post 10", (f"{SPACE}/messages/m10",), unlink_thread=THREAD),)),
    # A replayed or re-labelled delivery: Discourse, read before deleting, shows the post live.
    ("deletion of a post Discourse shows live", PostEvent("destroyed", post()),
     ctx(link=REPLY, topic_links=(ROOT, REPLY), deleted_now=False),
     (Skip("deletion of post 20 not carried out: Discourse shows it live", notable=True),)),
    ("deletion of a post Discourse was not asked about", PostEvent("destroyed", post()),
     ctx(link=REPLY, topic_links=(ROOT, REPLY)),
     (Skip("deletion of post 20 not carried out: Discourse was not asked", notable=True),)),
    # -- post_recovered
    ("recovery of a post whose deletion never reached Chat", PostEvent("recovered", post()),
     ctx(link=REPLY), (Skip("recovered, but its deletion never reached Chat"),)),
    ("recovery of a post Discourse still shows deleted", PostEvent("recovered", post()),
     ctx(topic_seen=1, deleted_now=True),
     (Skip("recovery of post 20 not carried out: Discourse shows it deleted", notable=True),)),
    ("recovery", PostEvent("recovered", post(deleted_at=T0 + timedelta(hours=1))),
     ctx(topic_seen=1, deleted_now=False),
     (CreateMessage(post(), SPACE, THREAD, IDS.for_recovered_post(20, int(T0.timestamp()))),)),
    # -- topic events
    ("topic created", TopicEvent("created", 9, "Plans"), ctx(),
     (Skip("topic_created: its posts bring it"),)),
    ("topic recovered", TopicEvent("recovered", 9, "Plans"), ctx(),
     (Skip("topic_recovered: its posts bring it"),)),
    ("title edit of a topic not in Chat", TopicEvent("edited", 9, "New"),
     ctx(thread_for_topic=None), (Skip("topic 9 is not in Chat"),)),
    ("title edit of a topic without its first post", TopicEvent("edited", 9, "New"), ctx(),
     (Skip("topic 9 has no first post"),)),
    ("title edit of a topic moved to an unmapped category",
     TopicEvent("edited", 9, "Secret title", 77, "regular"),
     ctx(link=ROOT, first_post=post(id=10, post_number=1, topic_title=None, category_id=None)),
     (Skip("topic 9 is in category 77 now, which is not mapped", notable=True),)),
    ("title edit", TopicEvent("edited", 9, "New title", 3, "regular"),
     ctx(link=ROOT, first_post=post(id=10, post_number=1, topic_title=None)),
     (EditMessage(post(id=10, post_number=1, topic_title="New title"), f"{SPACE}/messages/m10",
                  THREAD, (rendered(post(id=10, post_number=1, topic_title="New title")),),
                  origin.content_hash(rendered(post(id=10, post_number=1,
                                                    topic_title="New title"))),
                  PostParts(IDS.for_post(10), 1)),)),
    ("deletion of a topic not in Chat", TopicEvent("destroyed", 9, None),
     ctx(thread_for_topic=None), (Skip("topic 9 is not in Chat"),)),
    ("deletion of a topic Discourse shows live", TopicEvent("destroyed", 9, None),
     ctx(topic_links=(ROOT, REPLY), deleted_now=False),
     (Skip("deletion of topic 9 not carried out: Discourse shows it live", notable=True),)),
    ("deletion of a topic", TopicEvent("destroyed", 9, None),
     ctx(topic_links=(ROOT, REPLY), parts={20: PostParts("client-dp-20", 2)}, deleted_now=True),
     (DeleteMessages("topic 9", (f"{SPACE}/messages/client-dp-20-p2", f"{SPACE}/messages/m10"),
                     unlink_thread=THREAD),)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("event", "context", "expected"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_every_event_kind(
    event: PostEvent | TopicEvent, context: PostContext, expected: tuple[Action, ...]
) -> None:
    assert plan(event, context, SETTINGS) == expected


def test_the_table_covers_every_kind_of_event() -> None:
    kinds = {(type(case[1]).__name__, case[1].kind) for case in TABLE}
    assert kinds == {
        ("PostEvent", kind) for kind in ("created", "edited", "destroyed", "recovered")
    } | {("TopicEvent", kind) for kind in ("created", "edited", "destroyed", "recovered")}


# ---------------------------------------------------------------------------- properties

raws = st.one_of(
    st.text(max_size=60),
    st.text(max_size=20).map(lambda t: t + "\n\n" + origin.origin_marker(MARKED_NAME)),
    # A marker someone typed before their words: never a copy of a Chat message.
    st.text(min_size=1, max_size=20).map(lambda t: origin.origin_marker(MARKED_NAME) + "\n" + t),
)
# Who the bridge writes the marked message as (resolved before the plan): nobody (it is not
# writing it), the post's own author, or another account.
ORIGIN_AUTHORS = st.sampled_from(
    [frozenset(), frozenset({"dora"}), frozenset({"ada_l", "system"})]
)


@st.composite
def posts(draw: st.DrawFn) -> DiscoursePost:
    deleted = draw(st.booleans())
    return post(
        id=draw(st.integers(1, 10**6)),
        post_number=draw(st.integers(1, 8)),
        raw=draw(raws),
        post_type=draw(st.sampled_from([1, 1, 1, 2, 3, 4])),
        topic_archetype=draw(st.sampled_from(["regular", "regular", "private_message", None])),
        hidden=draw(st.booleans()),
        user_deleted=draw(st.booleans()) and deleted,
        deleted_at=T0 if deleted and draw(st.booleans()) else None,
        category_id=draw(st.sampled_from([3, 3, 77, None])),
        version=draw(st.integers(1, 5)),
        display_name=draw(st.one_of(st.none(), st.text(max_size=10))),
    )


@st.composite
def contexts(draw: st.DrawFn, p: DiscoursePost) -> PostContext:
    linked = draw(st.booleans())
    side = draw(st.sampled_from(["discourse", "gchat"]))
    the_link = link(p.id, origin_=side, text=draw(st.text(max_size=8))) if linked else None
    return PostContext(
        space_for_category=SPACES,
        thread_for_topic=draw(st.sampled_from([THREAD, None])),
        link=the_link,
        parts={p.id: PostParts(f"client-dp-{p.id}", draw(st.integers(1, 4)))}
        if draw(st.booleans())
        else {},
        version_seen=draw(st.one_of(st.none(), st.integers(1, 5))),
        topic_seen=draw(st.integers(0, 8)),
        topic_links=(ROOT, the_link) if the_link else (),
        origin_authors=draw(ORIGIN_AUTHORS),
    )


def _is_human(p: DiscoursePost, context: PostContext) -> bool:
    return (
        p.post_type == 1
        and p.topic_archetype != "private_message"
        and not (p.hidden or p.user_deleted or p.deleted_at is not None)
        # A marker counts only at the end of a post by an author the bridge writes it as.
        and origin.copied_from(p.raw, p.username, context.origin_authors) is None
    )


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["created", "edited", "destroyed", "recovered"]))
def test_plans_are_pure_and_total(data: st.DataObject, kind: str) -> None:
    p = data.draw(posts())
    context = data.draw(contexts(p))
    event = PostEvent(kind, p)  # type: ignore[arg-type]
    before = copy.deepcopy((event, context))
    first = plan(event, context, SETTINGS)
    assert first == plan(event, context, SETTINGS)  # deterministic
    assert (event, context) == before  # touches nothing it was given
    kinds = (FillGap, CreateMessage, EditMessage, DeleteMessages, Skip)
    assert first and all(isinstance(a, kinds) for a in first)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["created", "recovered", "edited"]))
def test_no_action_for_the_bridges_own_posts(data: st.DataObject, kind: str) -> None:
    """A post that came from Chat (its origin marker, or a link of origin gchat) never acts."""
    p = data.draw(posts())
    context = data.draw(contexts(p))
    own_marker = origin.copied_from(p.raw, p.username, context.origin_authors) is not None
    own_link = context.link is not None and context.link.origin == "gchat"
    if kind == "edited":
        if not own_link:
            context = replace(context, link=link(p.id, origin_="gchat", text="x"))
    elif not own_marker:
        p = replace(p, raw=MARKED)
        context = replace(context, origin_authors=frozenset({p.username}))
    actions = plan(PostEvent(kind, p), context, SETTINGS)  # type: ignore[arg-type]
    assert all(isinstance(a, Skip) for a in actions), actions


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_every_human_post_yields_exactly_one_create(data: st.DataObject) -> None:
    p = data.draw(posts())
    context = replace(data.draw(contexts(p)), link=None, topic_links=())
    if not _is_human(p, context):
        return  # not one that crosses: covered by the table
    if p.category_id != 3:
        return  # its topic's category is not the thread's space's (table: "moved to …")
    if p.post_number == 1 and context.thread_for_topic is not None:
        return  # a second first post: the thread exists (table: "first post of a topic…")
    actions = plan(PostEvent("created", p), context, SETTINGS)
    creates = [a for a in actions if isinstance(a, CreateMessage)]
    assert len(creates) == 1 and creates[0].post == p, actions
    assert creates[0].client_id == IDS.for_post(p.id)
    assert actions[-1] == creates[0]  # earlier posts (FillGap) go first, never after


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["edited", "destroyed"]))
def test_edits_and_deletions_of_unknown_posts_yield_nothing(
    data: st.DataObject, kind: str
) -> None:
    p = data.draw(posts())
    context = replace(data.draw(contexts(p)), link=None)
    actions = plan(PostEvent(kind, p), context, SETTINGS)  # type: ignore[arg-type]
    assert all(isinstance(a, Skip) for a in actions), actions


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["created", "edited", "destroyed", "recovered"]))
def test_nothing_crosses_from_a_category_not_mapped_to_the_threads_space(
    data: st.DataObject, kind: str
) -> None:
    """Scope: whatever the thread, a post whose topic is not (or no longer) in a category mapped
    to the thread's space is never written to Chat; only a deletion may still act."""
    p = replace(data.draw(posts()), category_id=data.draw(st.sampled_from([4, 77, None])))
    context = data.draw(contexts(p))
    actions = plan(PostEvent(kind, p), context, SETTINGS)  # type: ignore[arg-type]
    if context.thread_for_topic is not None or kind == "edited":
        assert all(isinstance(a, Skip | DeleteMessages) for a in actions), actions
    creates = [a for a in actions if isinstance(a, CreateMessage)]
    # Without a thread a post of category 4 starts one in the space of its category, never SPACE.
    assert all(c.gchat_space_name == OTHER_SPACE and c.gchat_thread_name is None for c in creates)


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    kind=st.sampled_from(["destroyed", "recovered"]),
    deleted_now=st.sampled_from([None, True, False]),
)
def test_deletions_and_recoveries_follow_what_discourse_shows_now(
    data: st.DataObject, kind: str, deleted_now: bool | None
) -> None:
    """The kind of a webhook is an unsigned header and its body may be a replay: a message is
    deleted only while Discourse shows the post (or topic) deleted, and brought back only while
    it shows it live."""
    p = data.draw(posts())
    context = replace(data.draw(contexts(p)), deleted_now=deleted_now)
    topic_kind = "destroyed" if kind == "destroyed" else "recovered"
    for event in (PostEvent(kind, p), TopicEvent(topic_kind, p.topic_id, None)):  # type: ignore[arg-type]
        acting = [a for a in plan(event, context, SETTINGS) if not isinstance(a, Skip)]
        if kind == "destroyed" and deleted_now is not True:
            assert acting == [], (event, acting)
        if kind == "recovered" and deleted_now is not False:
            assert acting == [], (event, acting)
