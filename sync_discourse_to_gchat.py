"""Discourse → Google Chat: posts and topics, from webhooks and a catch-up pull, through the inbox.

Shape (the same both ways, DESIGN §4): `resolve` reads what a plan needs from the store (and, for
a few events, Discourse) into a frozen `PostContext`; `plan()` is pure and returns actions; the
service's `_apply_*` methods carry them out.

Invariants (DESIGN §3):
- Every event is first stored in the inbox (`inbox.py`), keyed so that a repeated delivery, or the
  catch-up pull finding a post a webhook already brought, is processed once. The inbox worker
  hands out only the oldest pending event of each topic, so replies keep their order.
- Only real content crosses: regular posts (`post_type` 1) in mapped categories, not private
  messages, hidden or deleted posts, not the bridge's own copies of Chat messages (linked, or
  ending with the origin marker of a message the bridge is writing as the post's author; a
  marker anyone else types is text).
- Scope: a post crosses only while its topic's category now (the event's `category_id`) maps
  to its thread's space; a topic moved to an unmapped (say staff-only) category, or another
  space's, stops crossing. Events outside the mapped categories are not even stored
  (`inbox.Scope`); the catch-up pull drops them by the same rule.
- Uploads a post embeds are fetched as its author, never as the admin account, and streamed
  under `max_attachment_bytes`.
- Every Chat message the bridge writes has a client-assigned id keyed from the post id with
  the store's secret (`origin.ClientIds`: `client-dp-<post id>-k<tag>`), so a repeat after a
  crash is answered ALREADY_EXISTS and linked, never duplicated, and the Chat → Discourse poll
  knows it as ours. An existing message under the id is adopted only if the bridge wrote it;
  someone else's (the id was taken first) is left alone, and the copy takes a stand-in id.
- A reply goes into its topic's Chat thread; if the topic's first post was never bridged it is
  bridged first, so the thread exists; earlier replies the bridge never handled go first.
- An edit never becomes a new message, and a Chat user's message is never rewritten by the
  bridge's account; an edit older than the last one mirrored (by version, else by `updated_at`)
  is skipped.
- A webhook's kind is an unsigned header and its body may be a replay: a deletion or a recovery
  is carried out only when Discourse, read just before (`deleted_now`), shows it so.
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import formatting
import origin
from db import MessageLink, PostParts, StatusKey
from delegation import AuthorWriters
from deps import Deps
from discourse_client import (
    DiscourseAuthError,
    DiscourseNotFound,
    DiscoursePost,
    DiscourseRejected,
    DiscourseTooLarge,
)
from google_chat_client import (
    MEDIA_BLOCK,
    AttachmentRef,
    ChatMessage,
    ChatNotFound,
    ChatPermissionDenied,
    ChatRejected,
    GoogleChatClient,
)
from inbox import (
    PostEvent,
    PulledPost,
    TopicEvent,
    mapped_categories,
    post_refusal,
    pulled_post,
)

logger = logging.getLogger(__name__)

# At most this many earlier posts of a topic are bridged ahead of a reply that skipped them.
GAP_FILL_LIMIT = 50

# ---------------------------------------------------------------------------- pure


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """How a post is written in Chat (from the config; the client ids keyed by the store's key)."""

    base_url: str
    long_messages: str = "split"  # "split" or "truncate"
    attribution_format: str | None = None
    ids: origin.ClientIds = dataclasses.field(kw_only=True)


@dataclass(frozen=True, slots=True)
class PostContext:
    """Everything a plan needs beyond the event, read before planning."""

    space_for_category: Mapping[int, str]
    thread_for_topic: str | None  # the Chat thread of the event's topic
    link: MessageLink | None = None  # the post's link (for a topic edit: its first post's)
    parts: Mapping[int, PostParts] = dataclasses.field(default_factory=dict)  # by post id
    version_seen: int | None = None  # the last version of the post mirrored into Chat
    edited_seen: datetime | None = None  # `updated_at` of the post's last edit mirrored into Chat
    topic_seen: int = 0  # highest post number of the topic handled so far
    topic_links: tuple[MessageLink, ...] = ()  # the topic's links, oldest post first
    mentions: Mapping[str, str] = dataclasses.field(default_factory=dict)  # username → users/…
    first_post: DiscoursePost | None = None  # for a topic edit: its first post, as it is now
    # What Discourse shows now, read before a deletion or a recovery is carried out: True deleted
    # (or gone), False live, None not read. The event's kind is an unsigned header and its body
    # may be a replay: only Discourse's present state may delete or bring back a message.
    deleted_now: bool | None = None
    # The forum accounts the bridge writes the Chat message named by the post's trailing origin
    # marker as (its sender's linked account, the API user); empty when that message cannot be
    # this post's (it has its copy elsewhere). Only a marker at the end of a post by one of them
    # makes the post a copy of a Chat message; a marker anyone else types is text.
    origin_authors: frozenset[str] = frozenset()
    # The Workspace user the post's Chat message was written as (domain-wide delegation), so
    # its edits are written as them too, without the attribution line; None: the operator.
    written_as: str | None = None


@dataclass(frozen=True, slots=True)
class FillGap:
    """Bridge the topic's earlier posts the bridge never handled, before `post`."""

    post: DiscoursePost


@dataclass(frozen=True, slots=True)
class CreateMessage:
    """Write `post` into `gchat_space_name`: into `gchat_thread_name`, or a new thread if None.

    `first_post_needed`: a reply in a topic whose first post never reached Chat; post #1 is
    bridged first, so the reply has a thread to go into.
    """

    post: DiscoursePost
    gchat_space_name: str
    gchat_thread_name: str | None
    client_id: str
    first_post_needed: bool = False


@dataclass(frozen=True, slots=True)
class EditMessage:
    """Rewrite a bridged post's Chat message (and its later parts) with `parts`."""

    post: DiscoursePost
    gchat_message_name: str
    gchat_thread_name: str | None
    parts: tuple[str, ...]
    content_hash: str
    previous: PostParts


@dataclass(frozen=True, slots=True)
class DeleteMessages:
    """Delete Chat messages (later parts first; a thread's root last) and forget the links."""

    what: str  # "post 12" or "topic 4", for the log
    gchat_message_names: tuple[str, ...]
    unlink_thread: str | None = None
    unlink_message: str | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str
    notable: bool = False  # worth an INFO line (an operator may wonder why it did not cross)


Action = FillGap | CreateMessage | EditMessage | DeleteMessages | Skip
Event = PostEvent | TopicEvent


def default_parts(post_id: int, ids: origin.ClientIds) -> PostParts:
    """The usual case: one Chat message, later parts (if it grows) named after the post's id.

    A post without a parts row written before the ids were keyed keeps its legacy first id in
    its link; its later parts, all written after it grew, are named from the keyed id.
    """
    return PostParts(ids.for_post(post_id), 1)


def plan(event: Event, ctx: PostContext, settings: RenderSettings) -> tuple[Action, ...]:
    """Decide what a Discourse event becomes in Chat. No I/O: `ctx` holds what is known."""
    if isinstance(event, TopicEvent):
        return _plan_topic(event, ctx, settings)
    post = event.post
    if event.kind == "created":
        return _plan_create(post, ctx, settings.ids.for_post(post.id))
    if event.kind == "edited":
        return _plan_edit(post, ctx, settings)
    if event.kind == "destroyed":
        return _plan_delete(post, ctx, settings.ids)
    if ctx.link is not None:
        return (Skip("recovered, but its deletion never reached Chat"),)
    if ctx.deleted_now is not False:
        return (_unconfirmed(f"recovery of post {post.id}", ctx.deleted_now),)
    # A deleted client-assigned id is not reusable: the copy gets a new, deterministic one.
    stamp = int((post.updated_at or post.created_at).timestamp())
    recovered = dataclasses.replace(post, deleted_at=None, user_deleted=False)
    return _plan_create(recovered, ctx, settings.ids.for_recovered_post(post.id, stamp))


def _plan_create(post: DiscoursePost, ctx: PostContext, client_id: str) -> tuple[Action, ...]:
    """Echoes are recognised by origin (the stored link, the marker the bridge writes), never by
    author alone: an account the bridge created may be claimed by its person (a password
    reset), whose own posts must then cross like anyone's. A marker counts only at the end of
    a post by an account the bridge writes its Chat message as (`ctx.origin_authors`): one a
    forum user types is text.
    """
    if ctx.link is not None:
        return (Skip("already in Chat"),)
    if post.post_type != 1:
        return (Skip(f"post_type {post.post_type} (whisper, small action or moderator notice)"),)
    if post.topic_archetype == "private_message":
        return (Skip("private message"),)
    if post.hidden or post.user_deleted or post.deleted_at is not None:
        return (Skip("hidden or deleted"),)
    if origin.copied_from(post.raw, post.username, ctx.origin_authors) is not None:
        return (Skip("came from Chat"),)
    thread = ctx.thread_for_topic
    if thread is not None and (moved := _moved_away(post, ctx, space_of_thread(thread))):
        return (moved,)
    space = ctx.space_for_category.get(post.category_id) if post.category_id is not None else None
    if space is None:
        return (Skip(f"category {post.category_id} is not mapped"),)
    if post.post_number == 1:
        if thread is not None:
            return (Skip("topic already has a Chat thread"),)
        return (CreateMessage(post, space, None, client_id),)
    actions: list[Action] = []
    if ctx.topic_seen < post.post_number - 1:
        # Webhooks arrive unordered and may be lost: earlier replies go first.
        actions.append(FillGap(post))
    if thread is None:
        actions.append(CreateMessage(post, space, None, client_id, first_post_needed=True))
    else:
        actions.append(CreateMessage(post, space, thread, client_id))
    return tuple(actions)


def _moved_away(post: DiscoursePost, ctx: PostContext, thread_space: str) -> Skip | None:
    """Scope: a post of a topic with a Chat thread crosses only while the topic's category now
    (the event's `category_id`, the topic's current one) is mapped to the thread's space. A
    moderator who moves a bridged topic to a staff-only category, or to another space's, ends
    its bridging; the thread stays as it was."""
    space = ctx.space_for_category.get(post.category_id) if post.category_id is not None else None
    where = f"topic {post.topic_id} is in category {post.category_id} now"
    if space is None:
        return Skip(f"{where}, which is not mapped", notable=True)
    if space != thread_space:
        return Skip(f"{where}, mapped to {space}, not to its thread's space", notable=True)
    return None


def _plan_edit(
    post: DiscoursePost, ctx: PostContext, settings: RenderSettings
) -> tuple[Action, ...]:
    link = ctx.link
    if link is None:
        # Never bridged (or already deleted): an edit never becomes a new message.
        return (Skip("edit of a post not in Chat"),)
    if post.user_deleted or post.deleted_at is not None:
        return (Skip("the author's deletion arrives as an edit first; post_destroyed follows"),)
    if moved := _moved_away(post, ctx, space_of_thread(link.gchat_message_name)):
        return (moved,)
    if link.origin == "gchat":
        if origin.content_hash(origin.text_part_of_raw(post.raw or "")) != link.content_hash:
            # A Chat user's message cannot be rewritten by the bridge's account.
            name = link.gchat_message_name
            reason = f"edit in Discourse of Chat message {name} not carried back"
            return (Skip(reason, notable=True),)
        return (Skip("the bridge's own copy of a Chat message, unchanged"),)
    if ctx.version_seen is not None and post.version < ctx.version_seen:
        return (Skip(f"stale edit (version {post.version} < {ctx.version_seen})", notable=True),)
    # Edits within Discourse's grace period keep the version; their time still orders them.
    seen, updated = ctx.edited_seen, post.updated_at
    if seen is not None and updated is not None and updated < seen:
        when = f"{updated.isoformat()} < {seen.isoformat()}"
        return (Skip(f"stale edit (updated {when})", notable=True),)
    lookup = ctx.mentions.get
    attributed = ctx.written_as is None
    whole = render_message(
        post,
        base_url=settings.base_url,
        mention_lookup=lookup,
        long_messages="split",
        attribution_format=settings.attribution_format,
        attributed=attributed,
    )
    new_hash = origin.content_hash(whole)
    if new_hash == link.content_hash:
        return (Skip("the edit changes nothing in Chat"),)
    parts = _parts(post, settings, lookup, attributed=attributed)
    return (
        EditMessage(
            post,
            link.gchat_message_name,
            link.gchat_thread_name,
            tuple(parts),
            new_hash,
            ctx.parts.get(post.id) or default_parts(post.id, settings.ids),
        ),
    )


def _plan_delete(
    post: DiscoursePost, ctx: PostContext, ids: origin.ClientIds
) -> tuple[Action, ...]:
    link = ctx.link
    if link is None:
        return (Skip("deletion of a post not in Chat"),)
    if ctx.deleted_now is not True:
        return (_unconfirmed(f"deletion of post {post.id}", ctx.deleted_now),)
    names = _later_parts(link, ctx, ids) + (link.gchat_message_name,)
    is_root = bool(ctx.topic_links) and (
        ctx.topic_links[0].gchat_message_name == link.gchat_message_name
    )
    if post.post_number == 1 or is_root:
        return (DeleteMessages(f"post {post.id}", names, unlink_thread=link.gchat_thread_name),)
    return (DeleteMessages(f"post {post.id}", names, unlink_message=link.gchat_message_name),)


def _plan_topic(
    event: TopicEvent, ctx: PostContext, settings: RenderSettings
) -> tuple[Action, ...]:
    thread = ctx.thread_for_topic
    if event.kind in ("created", "recovered"):
        return (Skip(f"topic_{event.kind}: its posts bring it"),)
    if thread is None:
        return (Skip(f"topic {event.topic_id} is not in Chat"),)
    if event.kind == "destroyed":
        if ctx.deleted_now is not True:
            return (_unconfirmed(f"deletion of topic {event.topic_id}", ctx.deleted_now),)
        names: tuple[str, ...] = ()
        for link in ctx.topic_links:
            names += _later_parts(link, ctx, settings.ids)
        if ctx.topic_links:
            # Last, and forced: the thread's replies go with its first message.
            names += (ctx.topic_links[0].gchat_message_name,)
        return (DeleteMessages(f"topic {event.topic_id}", names, unlink_thread=thread),)
    first = ctx.first_post
    if first is None:
        return (Skip(f"topic {event.topic_id} has no first post"),)
    # A post read by number carries no category: the topic event's is the topic's current one.
    titled = dataclasses.replace(
        first,
        topic_title=event.title or first.topic_title,
        category_id=event.category_id if event.category_id is not None else first.category_id,
    )
    return _plan_edit(titled, ctx, settings)


def _unconfirmed(what: str, deleted_now: bool | None) -> Skip:
    """A deletion or recovery that Discourse's present state does not bear out (a replayed or
    re-labelled delivery, or one overtaken by a later change)."""
    shows = {True: "shows it deleted", False: "shows it live", None: "was not asked"}
    return Skip(f"{what} not carried out: Discourse {shows[deleted_now]}", notable=True)


def _later_parts(link: MessageLink, ctx: PostContext, ids: origin.ClientIds) -> tuple[str, ...]:
    """Names of a post's second and later Chat messages (a long post is split)."""
    post_id = link.discourse_post_id
    parts = ctx.parts.get(post_id) or default_parts(post_id, ids)
    space = space_of_thread(link.gchat_message_name)
    return tuple(
        f"{space}/messages/{ids.for_part(parts.client_id, index)}"
        for index in range(2, parts.count + 1)
    )


def _parts(
    post: DiscoursePost,
    settings: RenderSettings,
    lookup: Callable[[str], str | None],
    *,
    attributed: bool = True,
) -> list[str]:
    return render_parts(
        post,
        base_url=settings.base_url,
        mention_lookup=lookup,
        long_messages=settings.long_messages,
        attribution_format=settings.attribution_format,
        attributed=attributed,
    )


_UPLOAD_REF_RE = re.compile(
    r"!?\[([^\]|\n]*)(?:\|[^\]\n]*)?\]\((upload://[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)?)\)"
)
MAX_ATTACHMENTS = 10


def uploads_in_raw(raw: str) -> list[tuple[str, str]]:
    """(short_url, file name) of each distinct upload a raw embeds, in order, at most 10."""
    found: dict[str, str] = {}
    for match in _UPLOAD_REF_RE.finditer(raw):
        label, short_url = match.group(1).strip(), match.group(2)
        extension = short_url.rsplit(".", 1)[-1] if "." in short_url else ""
        name = label or "upload"
        if extension and not name.lower().endswith("." + extension.lower()):
            name = f"{name}.{extension}"
        found.setdefault(short_url, name)
    return list(found.items())[:MAX_ATTACHMENTS]


def space_of_thread(gchat_thread_name: str) -> str:
    return "/".join(gchat_thread_name.split("/")[:2])


def render_message(
    post: DiscoursePost,
    *,
    base_url: str,
    mention_lookup: Callable[[str], str | None],
    long_messages: str = "split",
    attribution_format: str | None = None,
    attributed: bool = True,
) -> str:
    """The Chat text for `post`: attribution, the title for a first post, then the body.

    With `long_messages="split"` the text is returned whole (the caller sends it in parts of
    `render_parts`); with "truncate" a text over Chat's limit is cut, with a link to the post.
    `attributed=False`: no attribution line (written as the author, domain-wide delegation).
    """
    header, body = _header_and_body(post, base_url, mention_lookup, attribution_format)
    header = header if attributed else ""
    text = "\n".join(line for line in (header, body) if line)
    if long_messages == "split":
        return text
    parts = formatting.split_for_limit(text, formatting.CHAT_MAX_BYTES)
    if len(parts) > 1:
        # One Chat message per post keeps edits and deletes one-to-one; the rest is one click away.
        link = f"\n… <{base_url}/p/{post.id}|read the whole post on Discourse>"
        parts = formatting.split_for_limit(text, formatting.CHAT_MAX_BYTES - len(link.encode()))
        return parts[0] + link
    return text


def render_parts(
    post: DiscoursePost,
    *,
    base_url: str,
    mention_lookup: Callable[[str], str | None],
    long_messages: str = "split",
    attribution_format: str | None = None,
    attributed: bool = True,
) -> list[str]:
    """The Chat messages for `post`: with "split", as many as its length needs, each beginning
    with the attribution line, so that no part is anonymous and none can begin with a forged
    one; with "truncate", the one message of `render_message`."""
    if long_messages != "split":
        return [
            render_message(
                post,
                base_url=base_url,
                mention_lookup=mention_lookup,
                long_messages=long_messages,
                attribution_format=attribution_format,
                attributed=attributed,
            )
        ]
    header, body = _header_and_body(post, base_url, mention_lookup, attribution_format)
    if not attributed:
        return formatting.split_for_limit(body, formatting.CHAT_MAX_BYTES)
    return formatting.split_under_header(header, body, formatting.CHAT_MAX_BYTES)


def _header_and_body(
    post: DiscoursePost,
    base_url: str,
    mention_lookup: Callable[[str], str | None],
    attribution_format: str | None,
) -> tuple[str, str]:
    """The attribution line, and the rest: a first post's title (shown literally), the body."""
    header = formatting.attribution_line(post.display_name, post.username, attribution_format)
    lines = []
    if post.post_number == 1 and post.topic_title:
        lines.append(formatting.chat_title(post.topic_title))
    body = formatting.discourse_to_gchat_text(
        origin.strip_origin_marker(post.raw or ""),
        base_url=base_url,
        mention_lookup=mention_lookup,
    )
    lines.append(body)
    return header, "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------- I/O


class DiscourseToGchat:
    """Resolves, plans and applies Discourse events; pulls the posts webhooks missed."""

    def __init__(self, deps: Deps) -> None:
        config = deps.config
        self._config = config
        self._store = deps.store
        self._chat = deps.chat
        self._discourse = deps.discourse
        self._inbox = deps.inbox
        self._ids = origin.ClientIds(deps.store.client_id_key())
        self._settings = RenderSettings(
            base_url=config.discourse.url,
            long_messages=config.sync.long_messages,
            attribution_format=config.sync.attribution_format,
            ids=self._ids,
        )
        # Posts the catch-up pull read, by id, until the worker handles their inbox rows: the
        # row holds ids only, so the typed record is handed over here, not through JSON.
        self._pulled: dict[int, DiscoursePost] = {}
        self._pulled_lock = threading.Lock()
        # The worker and a manual `retry` must not write the same post twice at once.
        self._lock = threading.Lock()
        self.bridged = 0
        self._authors = AuthorWriters(deps.delegation, deps.discourse, deps.chat, deps.store)

    # -- the catch-up pull

    def catch_up(self) -> int:
        """Put every post newer than the high-water mark into the inbox; returns how many were new.

        Webhooks are a speed-up, not the record: this pull covers deliveries lost while the
        bridge was down (Discourse does not retry them by default).
        """
        high_water = self._store.discourse_high_water()
        page = self._discourse.latest_posts()
        if high_water is None:
            # First start: Discourse's past is not replayed into Chat; from now on nothing is
            # missed.
            newest = max((p.id for p in page), default=0)
            self._store.set_discourse_high_water(newest, first_start=True)
            logger.info("Discourse high-water mark set to post %d", newest)
            return 0
        found: dict[int, DiscoursePost] = {}
        while page:
            fresh = {p.id: p for p in page if p.id > high_water and p.id not in found}
            found.update(fresh)
            oldest = min(p.id for p in page)
            if oldest <= high_water + 1 or not fresh:
                break  # reached the mark, or a page with nothing new (no further progress)
            # `before` is exclusive now and was inclusive on older forums: asking for ids
            # before the oldest seen, and dropping ids already found, loses none under either.
            page = self._discourse.latest_posts(before=oldest)
        added = 0
        # The webhook intake's rule (inbox.Scope): posts of private messages and of categories
        # not mapped, a moved topic's included, are not stored; the mark passes them all the same.
        categories = self._space_for_category()
        in_scope = [p for p in found.values() if post_refusal(p, categories) is None]
        for post in sorted(in_scope, key=lambda p: p.id):
            with self._pulled_lock:
                self._pulled[post.id] = post
            if self._inbox.put_pulled(pulled_post(post)):
                added += 1
            else:
                with self._pulled_lock:
                    self._pulled.pop(post.id, None)  # a webhook brought it already
        if found:
            self._store.set_discourse_high_water(max(found))
            logger.info("catch-up pull found %d posts newer than %d", len(found), high_water)
        return len(found)

    # -- one event

    def handle_event(self, event: PostEvent | TopicEvent | PulledPost) -> None:
        """Carry out one stored event. Raises the clients' exceptions for the inbox to sort."""
        with self._lock:
            if isinstance(event, PulledPost):
                post = self._pulled_post(event)
                if post is None:
                    return
                event = PostEvent("created", post)
            self._run(event)

    def _run(self, event: PostEvent | TopicEvent, *, gap_filled: bool = False) -> None:
        """Resolve, plan, apply: the one path of every post and topic event.

        `gap_filled`: the caller is bridging the posts before this one in order already.
        """
        event, ctx = self._resolve(event)
        if gap_filled and isinstance(event, PostEvent):
            ctx = dataclasses.replace(
                ctx, topic_seen=max(ctx.topic_seen, event.post.post_number - 1)
            )
        actions = plan(event, ctx, self._settings)
        for action in actions:
            self._apply(action)
        if isinstance(event, PostEvent) and event.kind == "created":
            post = event.post
            # `topic_seen` means "every post up to here was handled": it moves only over a
            # contiguous run (or after a gap fill). A post that skips ahead (one the bridge wrote
            # from Chat, whose webhook came while an earlier human reply's was lost) must not
            # hide that gap from the next reply, or the lost reply reaches Chat late, by the pull.
            contiguous = ctx.topic_seen >= post.post_number - 1
            if contiguous or any(isinstance(a, FillGap) for a in actions):
                self._store.note_topic_seen(post.topic_id, post.post_number)

    def _pulled_post(self, event: PulledPost) -> DiscoursePost | None:
        with self._pulled_lock:
            post = self._pulled.pop(event.post_id, None)
        if post is not None:
            return post
        # Read again only when the process restarted between the pull and the worker.
        try:
            post = self._discourse.get_post(event.post_id)
            topic = self._discourse.get_topic(event.topic_id)
        except DiscourseNotFound:
            logger.info("pulled post %d is gone", event.post_id)
            return None
        return _with_topic_context(post, topic.category_id, topic.title, topic.archetype)

    # -- resolve: the store (and, for a topic edit, Discourse) before the plan

    def _resolve(
        self, event: PostEvent | TopicEvent
    ) -> tuple[PostEvent | TopicEvent, PostContext]:
        """The event (a first post's edit gets its topic's title) and what its plan needs."""
        spaces = self._space_for_category()
        if isinstance(event, TopicEvent):
            return event, self._resolve_topic(event, spaces)
        post = event.post
        thread = self._store.thread_for_topic(post.topic_id)
        link = self._store.message_link_by_post(post.id)
        if event.kind == "created":
            seen = self._store.topic_seen(post.topic_id)
            authors = self._origin_authors(post) if link is None else frozenset()
            return event, PostContext(
                spaces, thread, link, topic_seen=seen, origin_authors=authors
            )
        if event.kind == "recovered":
            seen = self._store.topic_seen(post.topic_id)
            # Only a recovery that would write asks Discourse.
            now = self._post_deleted_now(post.id) if link is None else None
            authors = self._origin_authors(post) if link is None else frozenset()
            return event, PostContext(
                spaces, thread, link, topic_seen=seen, deleted_now=now, origin_authors=authors
            )
        parts = self._parts_of([link] if link else [])
        if event.kind == "destroyed":
            if link is None:
                return event, PostContext(spaces, thread, link, parts)
            links = tuple(self._store.message_links_in_topic(post.topic_id))
            now = self._post_deleted_now(post.id)
            return event, PostContext(
                spaces, thread, link, parts, topic_links=links, deleted_now=now
            )
        first_untitled = post.post_number == 1 and not post.topic_title
        if link is not None and link.origin == "discourse" and first_untitled:
            # Webhook payloads carry the title; a plain post read does not.
            title = self._discourse.get_topic(post.topic_id).title
            post = dataclasses.replace(post, topic_title=title)
            event = PostEvent(event.kind, post)
        return event, PostContext(
            spaces,
            thread,
            link,
            parts,
            version_seen=self._store.post_version(post.id),
            edited_seen=self._store.post_edited_at(post.id),
            mentions=self._mentions(post.raw or ""),
            written_as=self._store.written_as(link.gchat_message_name) if link else None,
        )

    def _origin_authors(self, post: DiscoursePost) -> frozenset[str]:
        """The forum accounts the bridge writes the Chat message named by the post's trailing
        marker as (`PostContext.origin_authors`); asked only for a post that is not linked.

        A message linked to another post has its copy: a marker naming it here was typed. One
        not linked yet (its copy is being written, the link is not stored yet) is read once:
        its copy is by its sender's forum account, or by the API user. One gone from Chat (its
        copy deleted with it, perhaps restored in Discourse since) has an unknown sender: any
        account the bridge writes Chat users as, or the API user.
        """
        name = origin.trailing_origin_marker(post.raw or "")
        if name is None:
            return frozenset()
        link = self._store.message_link_by_message(name)
        if link is not None:
            return frozenset({post.username}) if link.discourse_post_id == post.id else frozenset()
        api_user = self._config.discourse.api_username
        try:
            sender = self._chat.get_message(name).sender.name
        except ChatNotFound:
            bridged = self._store.user_for_discourse(post.username) is not None
            return frozenset({api_user, post.username} if bridged else {api_user})
        except ChatRejected:
            return frozenset()  # not a message the bridge can read, so none it wrote
        user = self._store.user_for_gchat(sender)
        return frozenset({api_user, user.discourse_username} if user else {api_user})

    def _resolve_topic(self, event: TopicEvent, spaces: Mapping[int, str]) -> PostContext:
        thread = self._store.thread_for_topic(event.topic_id)
        if thread is None or event.kind in ("created", "recovered"):
            return PostContext(spaces, thread)
        if event.kind == "destroyed":
            links = tuple(self._store.message_links_in_topic(event.topic_id))
            return PostContext(
                spaces,
                thread,
                parts=self._parts_of(links),
                topic_links=links,
                deleted_now=self._topic_deleted_now(event.topic_id),
            )
        try:
            first = self._discourse.get_post_by_number(event.topic_id, 1)
        except DiscourseNotFound:
            return PostContext(spaces, thread)
        link = self._store.message_link_by_post(first.id)
        return PostContext(
            spaces,
            thread,
            link,
            self._parts_of([link] if link else []),
            version_seen=self._store.post_version(first.id),
            edited_seen=self._store.post_edited_at(first.id),
            mentions=self._mentions(first.raw or ""),
            written_as=self._store.written_as(link.gchat_message_name) if link else None,
            first_post=first,
        )

    def _post_deleted_now(self, post_id: int) -> bool:
        """Whether Discourse shows the post deleted now (by staff or its author) or gone.

        The API user is an admin: staff read a deleted post with `deleted_at` set, others get
        404 (posts_controller.rb `find_post_using`); an author's deletion only sets
        `user_deleted` (lib/post_destroyer.rb `mark_for_deletion`).
        """
        try:
            post = self._discourse.get_post(post_id)
        except DiscourseNotFound:
            return True
        return post.deleted_at is not None or post.user_deleted

    def _topic_deleted_now(self, topic_id: int) -> bool:
        """Whether Discourse shows the topic deleted now, judged by its first post.

        Discourse deletes a topic by deleting its first post (TopicsController#destroy goes
        through PostDestroyer), and sends `topic_destroyed` when the author withdraws it too
        (`user_deleted`, the topic merely closed): both count, as they always did here.
        """
        try:
            first = self._discourse.get_post_by_number(topic_id, 1)
        except DiscourseNotFound:
            return True
        return first.deleted_at is not None or first.user_deleted

    def _parts_of(self, links: Iterable[MessageLink]) -> dict[int, PostParts]:
        found: dict[int, PostParts] = {}
        for link in links:
            parts = self._store.post_parts(link.discourse_post_id)
            if parts is not None:
                found[link.discourse_post_id] = parts
        return found

    def _mentions(self, raw: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for username in formatting.discourse_mentions(raw):
            link = self._store.user_for_discourse(username)
            if link is not None:
                found[username] = link.gchat_user_name
        return found

    def _space_for_category(self) -> dict[int, str]:
        return mapped_categories(self._config.mappings, self._store)

    # -- apply

    def _apply(self, action: Action) -> None:
        if isinstance(action, Skip):
            log = logger.info if action.notable else logger.debug
            log("nothing to do in Chat: %s", action.reason)
        elif isinstance(action, FillGap):
            self._fill_gap(action.post)
        elif isinstance(action, CreateMessage):
            self._create(action)
        elif isinstance(action, EditMessage):
            self._edit(action)
        else:
            self._delete(action)

    def _fill_gap(self, post: DiscoursePost) -> None:
        """Bridge the topic's earlier posts that have not been handled yet, oldest first.

        Without this, reply N would reach Chat before reply N-1, which only the catch-up pull
        brings later. In-order deliveries cost no request (the plan asks only when the topic's
        handled post number lags); a gap costs a topic read and one read of the missing posts.
        """
        history_before = self._store.discourse_history_start()
        try:
            topic = self._discourse.get_topic(post.topic_id)
        except DiscourseNotFound:
            return
        missing = [
            post_id
            for post_id in topic.post_ids
            if history_before < post_id < post.id and self._store.message_for_post(post_id) is None
        ][-GAP_FILL_LIMIT:]
        if not missing:
            return
        earlier_posts = self._discourse.get_topic_posts(post.topic_id, missing)
        for earlier in sorted(earlier_posts, key=lambda p: p.post_number):
            if earlier.post_number >= post.post_number:
                continue
            logger.info("bridging post %d ahead of its later reply %d", earlier.id, post.id)
            try:
                # A topic read carries no topic context (title, category); the reply does.
                self._run(PostEvent("created", _context_from(earlier, post)), gap_filled=True)
            except (ChatRejected, DiscourseRejected) as exc:
                # Its own inbox row (webhook or pull) retries it or parks it for `status`; one
                # refused post must not hold up every later reply of the topic.
                logger.warning(
                    "post %d could not go ahead of reply %d: %s", earlier.id, post.id, exc
                )

    def _create(self, action: CreateMessage) -> None:
        post = action.post
        if not action.first_post_needed:
            self._write(action)
            return
        try:
            first = self._discourse.get_post_by_number(post.topic_id, 1)
        except DiscourseNotFound:
            logger.warning(
                "topic %d has no first post; reply %d not bridged", post.topic_id, post.id
            )
            return
        # A single post read carries no topic context (title, category); the reply does.
        self._run(PostEvent("created", _context_from(first, post)))
        thread = self._store.thread_for_topic(post.topic_id)
        if thread is None:
            logger.info("reply %d not bridged: its topic is not bridged", post.id)
            return
        self._write(
            dataclasses.replace(
                action,
                gchat_space_name=space_of_thread(thread),
                gchat_thread_name=thread,
                first_post_needed=False,
            )
        )

    def _write(self, action: CreateMessage) -> None:
        """Write the post as its author when delegation covers them, else as the operator."""
        post = action.post
        self._authors.write(
            post.username,
            action.gchat_space_name,
            f"post {post.id}",
            lambda client, email: self._write_as(action, client, email),
        )

    def _write_as(
        self, action: CreateMessage, client: GoogleChatClient, email: str | None
    ) -> None:
        post, client_id = action.post, action.client_id
        attributed = email is None
        text = render_message(
            post,
            base_url=self._settings.base_url,
            mention_lookup=self._mention_lookup,
            long_messages=self._settings.long_messages,
            attribution_format=self._settings.attribution_format,
            attributed=attributed,
        )
        parts = _parts(post, self._settings, self._mention_lookup, attributed=attributed)
        attachments, notes = self._attachments_for(post, action.gchat_space_name, client)
        first = parts[0]
        if notes:
            # The notes name uploads as the post's author named them: neutralised like a body.
            note = formatting.neutralise_chat("\n".join(notes))
            if len((first + "\n" + note).encode()) <= formatting.CHAT_MAX_BYTES:
                first = f"{first}\n{note}"
            elif attributed:
                header = formatting.attribution_line(
                    post.display_name, post.username, self._settings.attribution_format
                )
                parts += formatting.split_under_header(header, note, formatting.CHAT_MAX_BYTES)
            else:
                parts += formatting.split_for_limit(note, formatting.CHAT_MAX_BYTES)
        message = self._create_chat_message(
            action.gchat_space_name,
            first,
            client=client,
            message_id=client_id,
            thread_name=action.gchat_thread_name,
            attachments=attachments,
            # Someone else's message under the id: the copy takes a stand-in id, deterministic
            # so that a retry after a crash finds it again.
            fallback_ids=self._ids.alternates(client_id),
        )
        client_id = message.client_assigned_message_id or client_id
        thread = message.thread_name or message.name
        for index, part in enumerate(parts[1:], start=2):
            # Later parts follow in the same thread; found again through their ids (PostParts).
            self._create_chat_message(
                action.gchat_space_name,
                part,
                client=client,
                message_id=self._ids.for_part(client_id, index),
                thread_name=thread,
            )
        self._remember_parts(post.id, PostParts(client_id, len(parts)))
        with self._store.transaction():
            if self._store.thread_for_topic(post.topic_id) is None:
                self._store.link_thread(thread, post.topic_id, action.gchat_space_name)
            self._store.link_message(
                message.name,
                post.id,
                gchat_thread_name=thread,
                discourse_topic_id=post.topic_id,
                origin="discourse",
                content_hash=origin.content_hash(text),
            )
            if email is not None:
                self._store.set_written_as(message.name, email)
        self.bridged += 1
        logger.info(
            "bridged post %d -> %s%s", post.id, message.name, f" as {email}" if email else ""
        )

    def _edit(self, action: EditMessage) -> None:
        """Update the message and its later parts; add or delete parts as the length changed."""
        # Only a message's author can edit it in Chat: as the account that wrote it.
        with self._authors.as_author_of(action.gchat_message_name) as chat:
            self._edit_as(action, chat)

    def _edit_as(self, action: EditMessage, chat: GoogleChatClient) -> None:
        parts, previous = action.parts, action.previous
        chat.update_message_text(action.gchat_message_name, parts[0])
        space = space_of_thread(action.gchat_message_name)
        if len(parts) > previous.count and origin.is_legacy_client_id(previous.client_id):
            # A post bridged before the ids were keyed grows: a new part must not get a
            # predictable id (someone could hold it already), so its later parts move to keyed
            # ids. The old ones are the bridge's own (it wrote them; `count` says how many).
            for index in range(2, previous.count + 1):
                old = self._ids.for_part(previous.client_id, index)
                self._delete_chat_message(f"{space}/messages/{old}", chat)
            previous = PostParts(self._ids.rebased(previous.client_id), 1)
        for index in range(2, max(previous.count, len(parts)) + 1):
            part_id = self._ids.for_part(previous.client_id, index)
            name = f"{space}/messages/{part_id}"
            if index <= len(parts):
                try:
                    chat.update_message_text(name, parts[index - 1])
                except ChatNotFound:
                    self._create_chat_message(
                        space,
                        parts[index - 1],
                        client=chat,
                        message_id=part_id,
                        thread_name=action.gchat_thread_name,
                    )
            else:
                self._delete_chat_message(name, chat)
        self._remember_parts(action.post.id, PostParts(previous.client_id, len(parts)))
        self._store.update_content_hash(action.gchat_message_name, action.content_hash)
        self._store.set_post_version(action.post.id, action.post.version, action.post.updated_at)
        logger.info("mirrored edit of post %d -> %s", action.post.id, action.gchat_message_name)

    def _remember_parts(self, post_id: int, parts: PostParts) -> None:
        if parts == default_parts(post_id, self._ids) and self._store.post_parts(post_id) is None:
            return  # the usual case costs no row
        self._store.set_post_parts(post_id, parts)

    def _delete(self, action: DeleteMessages) -> None:
        # Later parts carry no row of their own: they were written by the root's author.
        root = action.gchat_message_names[-1] if action.gchat_message_names else ""
        with self._authors.as_author_of(root) as chat:
            for name in action.gchat_message_names:
                self._delete_chat_message(name, chat)
        if action.unlink_thread is not None:
            self._store.unlink_thread(action.unlink_thread)
        elif action.unlink_message is not None:
            self._store.unlink_message(action.unlink_message)
        logger.info("mirrored deletion of %s in Chat", action.what)

    def _delete_chat_message(
        self, gchat_message_name: str, chat: GoogleChatClient | None = None
    ) -> None:
        try:
            (chat or self._chat).delete_message(gchat_message_name, force=True)
        except ChatNotFound:
            pass  # already gone (deleted in Chat, whence perhaps this very event)
        except ChatPermissionDenied as exc:
            # Under user auth only one's own messages (or a manager's) can be deleted.
            logger.warning("cannot delete %s in Chat: %s", gchat_message_name, exc)

    def _attachments_for(
        self, post: DiscoursePost, gchat_space_name: str, chat: GoogleChatClient
    ) -> tuple[list[AttachmentRef], list[str]]:
        """Chat attachments for the uploads a post embeds, and notes for those that failed.

        The text keeps a link to every upload, so a failed attachment is never lost; the note
        says why it is not attached. Each upload is fetched as the post's author: any post may
        name any `upload://` URL, and a secure upload of a category (or message) its author
        cannot see answers 403 to the author where the admin account would have read it. It is
        streamed through a spooled file under `max_attachment_bytes` (at most one block held in
        memory, a larger file refused before it is read through).
        """
        attachments: list[AttachmentRef] = []
        notes: list[str] = []
        limit = self._config.sync.max_attachment_bytes
        for short_url, filename in uploads_in_raw(post.raw or ""):
            with tempfile.SpooledTemporaryFile(max_size=MEDIA_BLOCK) as file:
                try:
                    self._discourse.download_upload(
                        short_url, file, max_bytes=limit, as_user=post.username
                    )
                    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                    ref = chat.upload_attachment(gchat_space_name, filename, file, content_type)
                except DiscourseTooLarge as exc:
                    logger.info("upload %s of post %d not attached: %s", short_url, post.id, exc)
                    notes.append(f"_({filename} is too large to attach; see the link above)_")
                    continue
                except (DiscourseRejected, ChatRejected) as exc:
                    if isinstance(exc, DiscourseAuthError) and exc.credentials_invalid:
                        raise  # the key, not the upload: the event waits for a working key
                    logger.warning(
                        "upload %s of post %d not attached: %s", short_url, post.id, exc
                    )
                    notes.append(f"_({filename} could not be attached; see the link above)_")
                    continue
            attachments.append(ref)
        return attachments, notes

    def _create_chat_message(
        self,
        gchat_space_name: str,
        text: str,
        *,
        client: GoogleChatClient | None = None,
        **kw: Any,
    ) -> ChatMessage:
        """Create as the bridge (or as a delegated author): an existing message under the id is
        adopted only if the bridge wrote it (`origin.is_bridge_origin`); the sender of what the
        operator's client wrote is the bridge's account."""
        bridge = self._bridge()
        chat = client or self._chat
        message = chat.create_message(gchat_space_name, text, is_own=bridge.wrote, **kw)
        if (
            chat is self._chat
            and message.sender.name
            and message.sender.name not in bridge.senders
        ):
            self._store.set_status(StatusKey.BRIDGE_ACCOUNT, message.sender.name)
            logger.info("the bridge runs as Google user %s", message.sender.name)
        return message

    def _bridge(self) -> origin.BridgeIdentity:
        account = self._store.get_status(StatusKey.BRIDGE_ACCOUNT)
        return origin.BridgeIdentity.running_as(
            self._ids, account, self._store.delegated_senders()
        )

    def _mention_lookup(self, discourse_username: str) -> str | None:
        link = self._store.user_for_discourse(discourse_username)
        return link.gchat_user_name if link else None


def _context_from(post: DiscoursePost, later: DiscoursePost) -> DiscoursePost:
    """`post` read on its own (no title, category) with the topic context of a later post."""
    return _with_topic_context(post, later.category_id, later.topic_title, later.topic_archetype)


def _with_topic_context(
    post: DiscoursePost, category_id: int | None, title: str | None, archetype: str | None
) -> DiscoursePost:
    return dataclasses.replace(
        post,
        category_id=post.category_id or category_id,
        topic_title=post.topic_title or title,
        topic_archetype=post.topic_archetype or archetype,
    )


__all__ = [
    "Action",
    "CreateMessage",
    "DeleteMessages",
    "DiscourseToGchat",
    "EditMessage",
    "FillGap",
    "PostContext",
    "RenderSettings",
    "Skip",
    "plan",
    "render_message",
    "render_parts",
    "uploads_in_raw",
]
