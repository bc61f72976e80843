"""Discourse → Google Chat: webhook events and a catch-up pull, through one durable inbox.

Invariants (DESIGN §3):
- Every event is first stored in the inbox (`enqueue`), keyed so that a repeated delivery, or the
  catch-up pull finding a post a webhook already brought, is processed once (`inbox.inbox_keys`,
  shared with the DM sync). The inbox worker
  hands out only the oldest pending event of each topic, so replies keep their order.
- Only real content crosses: regular posts (`post_type` 1) in mapped categories, not private
  messages, hidden or deleted posts, not posts by bridge-created users or carrying the origin
  marker of a Chat message (those came from Chat in the first place).
- Every Chat message the bridge writes has the client-assigned id `client-dp-<post id>` (forms
  in `origin.py`), so a repeat after a crash is answered ALREADY_EXISTS and linked, never
  duplicated, and the Chat → Discourse poll knows it as ours.
- A reply goes into its topic's Chat thread with REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD; if the
  topic's first post was never bridged it is bridged first, so the thread exists.
- Transient failures are retried with backoff; past `max_attempts`, or for an item Google refuses,
  the event is dead-lettered with its reason (`status` lists it, `retry` requeues it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import formatting
import origin
from config_loader import Config
from db import InboxEvent, MessageLink, Store
from discourse_client import (
    DiscourseAuthError,
    DiscourseClient,
    DiscourseError,
    DiscourseNotFound,
    DiscoursePost,
    DiscourseRejected,
    DiscourseUnavailable,
)
from google_chat_client import (
    ChatAuthError,
    ChatError,
    ChatMessage,
    ChatNotFound,
    ChatPermissionDenied,
    ChatRejected,
    ChatUnavailable,
    GoogleChatClient,
)
from inbox import inbox_keys
from webhook_listener import WebhookDelivery

logger = logging.getLogger(__name__)

HIGH_WATER_KEY = "discourse_high_water_post_id"
# The high-water mark of the bridge's first start: older posts are history, never replayed.
FIRST_HIGH_WATER_KEY = "discourse_first_high_water_post_id"
# At most this many earlier posts of a topic are bridged ahead of a reply that skipped them.
GAP_FILL_LIMIT = 50
POST_EVENTS = frozenset({"post_created", "post_edited", "post_destroyed", "post_recovered"})
MAX_BACKOFF = timedelta(minutes=5)
AUTH_RETRY = timedelta(seconds=30)


# ---------------------------------------------------------------------------- pure


def _int(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} missing or not an integer")
    return value


@dataclass(frozen=True, slots=True)
class PostToChat:
    """Write `post` into `gchat_space_name`: into `gchat_thread_name`, or a new thread if None."""

    post: DiscoursePost
    gchat_space_name: str
    gchat_thread_name: str | None


@dataclass(frozen=True, slots=True)
class BridgeTopicFirst:
    """A reply in a topic whose first post never reached Chat: bridge post #1 first."""

    post: DiscoursePost
    gchat_space_name: str


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


PostAction = PostToChat | BridgeTopicFirst | Skip


def plan_post(
    post: DiscoursePost,
    *,
    space_for_category: Mapping[int, str],
    thread_for_topic: str | None,
    already_bridged: bool,
) -> PostAction:
    """Decide what a new Discourse post becomes in Chat. No I/O.

    Echoes are recognised by origin (the stored link, the marker in `raw`), never by author:
    an account the bridge created may be claimed by its person (a password reset), whose own
    posts must then cross like anyone's.
    """
    if already_bridged:
        return Skip("already in Chat")
    if post.post_type != 1:
        return Skip(f"post_type {post.post_type} (whisper, small action or moderator notice)")
    if post.topic_archetype == "private_message":
        return Skip("private message")
    if post.hidden or post.user_deleted or post.deleted_at is not None:
        return Skip("hidden or deleted")
    if post.raw and origin.find_origin_marker(post.raw):
        return Skip("came from Chat")
    space = space_for_category.get(post.category_id) if post.category_id is not None else None
    if space is None and thread_for_topic is None:
        return Skip(f"category {post.category_id} is not mapped")
    if post.post_number == 1:
        if thread_for_topic is not None:
            return Skip("topic already has a Chat thread")
        return PostToChat(post, space or "", None)
    if thread_for_topic is None:
        return BridgeTopicFirst(post, space or "")
    return PostToChat(post, space or _space_of_thread(thread_for_topic), thread_for_topic)


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


def _seen_key(discourse_topic_id: int) -> str:
    """Cursor key of the highest post number of a topic the bridge has handled."""
    return f"discourse_topic_seen:{discourse_topic_id}"


def _space_of_thread(gchat_thread_name: str) -> str:
    return "/".join(gchat_thread_name.split("/")[:2])


def render_message(
    post: DiscoursePost,
    *,
    base_url: str,
    mention_lookup: Callable[[str], str | None],
    long_messages: str = "split",
    attribution_format: str | None = None,
) -> str:
    """The Chat text for `post`: attribution, the title for a first post, then the body.

    With `long_messages="split"` the text is returned whole (the caller sends it in parts of
    `split_for_limit`); with "truncate" a text over Chat's limit is cut, with a link to the post.
    """
    lines = [formatting.attribution_line(post.display_name, post.username, attribution_format)]
    if post.post_number == 1 and post.topic_title:
        lines.append(f"*{post.topic_title}*")
    body = formatting.discourse_to_gchat_text(
        origin.strip_origin_marker(post.raw or ""),
        base_url=base_url,
        mention_lookup=mention_lookup,
    )
    lines.append(body)
    text = "\n".join(line for line in lines if line)
    if long_messages == "split":
        return text
    parts = formatting.split_for_limit(text, formatting.CHAT_MAX_BYTES)
    if len(parts) > 1:
        # One Chat message per post keeps edits and deletes one-to-one; the rest is one click away.
        link = f"\n… <{base_url}/p/{post.id}|read the whole post on Discourse>"
        parts = formatting.split_for_limit(text, formatting.CHAT_MAX_BYTES - len(link.encode()))
        return parts[0] + link
    return text


# ---------------------------------------------------------------------------- I/O


class DiscourseToGchat:
    """Stores incoming events, pulls what webhooks missed, and writes posts into Chat."""

    def __init__(
        self,
        config: Config,
        store: Store,
        chat: GoogleChatClient,
        discourse: DiscourseClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wake: threading.Event | None = None,
        chat_message_handler: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._config = config
        # Discourse chat events (DM channels) are handled by the DM sync, wired in by main.py.
        self._chat_message_handler = chat_message_handler
        self._store = store
        self._chat = chat
        self._discourse = discourse
        self._clock = clock
        self.wake = wake or threading.Event()
        # The worker and a manual `retry` must not write the same post twice at once.
        self._lock = threading.Lock()
        self.bridged = 0
        self.failed = 0

    # -- intake

    def enqueue(self, delivery: WebhookDelivery) -> bool:
        """Store a webhook delivery in the inbox; False if it was a duplicate."""
        dedupe_key, ordering_key = inbox_keys(delivery.event_name, delivery.body)
        stored = self._store.enqueue_event(
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            event_name=delivery.event_name,
            payload=delivery.raw_body,
            dedupe_key=dedupe_key,
            ordering_key=ordering_key,
            received_at=self._clock(),
        )
        if stored:
            self.wake.set()
        logger.debug("webhook %s %s stored=%s", delivery.event_id, delivery.event_name, stored)
        return stored

    def catch_up(self) -> int:
        """Enqueue every post newer than the high-water mark; returns how many were new.

        Webhooks are a speed-up, not the record: this pull covers deliveries lost while the
        bridge was down (Discourse does not retry them by default).
        """
        mark = self._store.get_cursor(HIGH_WATER_KEY)
        page = self._discourse.latest_posts()
        if mark is None:
            # First start: Discourse's past is not replayed into Chat; from now on nothing is
            # missed.
            newest = max((p.id for p in page), default=0)
            self._store.set_cursor(HIGH_WATER_KEY, str(newest))
            self._store.set_cursor(FIRST_HIGH_WATER_KEY, str(newest))
            logger.info("Discourse high-water mark set to post %d", newest)
            return 0
        high_water = int(mark)
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
        for post in sorted(found.values(), key=lambda p: p.id):
            self._store.enqueue_event(
                event_id="",
                event_type="post",
                event_name="post_created",
                payload=json.dumps({"post": post.to_api()}),
                dedupe_key=f"post_created:{post.id}",
                ordering_key=f"topic:{post.topic_id}",
                received_at=self._clock(),
            )
        if found:
            self._store.set_cursor(HIGH_WATER_KEY, str(max(found)))
            self.wake.set()
            logger.info("catch-up pull found %d posts newer than %d", len(found), high_water)
        return len(found)

    # -- worker

    def drain(self, limit: int = 50) -> int:
        """Process the due events, oldest of each topic first; returns how many were handled."""
        handled = 0
        while True:
            events = self._store.due_events(self._clock(), limit)
            if not events:
                return handled
            for event in events:
                self._process(event)
                handled += 1

    def _process(self, event: InboxEvent) -> None:
        try:
            with self._lock:
                self.handle(event.event_name, json.loads(event.payload))
        except ChatAuthError as exc:
            # Not the event's fault: keep it until the credentials are fixed (`/readyz` says so).
            self._store.mark_retry(event.id, str(exc), self._clock() + AUTH_RETRY)
            logger.error("event %s waits for Google credentials: %s", event.dedupe_key, exc)
        except (ChatUnavailable, DiscourseUnavailable) as exc:
            self._retry_or_bury(event, str(exc))
        except (ChatRejected, DiscourseRejected, ValueError, KeyError) as exc:
            if isinstance(exc, DiscourseAuthError) and exc.credentials_invalid:
                # A bad key is nobody's event's fault: keep it until the key is fixed.
                self._store.mark_retry(event.id, str(exc), self._clock() + AUTH_RETRY)
                logger.error(
                    "event %s waits for a working Discourse key: %s", event.dedupe_key, exc
                )
                return
            self._store.mark_dead(event.id, f"refused: {exc}")
            self.failed += 1
            logger.error("dead-lettered %s: %s", event.dedupe_key, exc)
        except Exception as exc:  # per-item boundary: one bad event must not stop the inbox
            logger.exception("event %s failed", event.dedupe_key)
            self._retry_or_bury(event, repr(exc))
        else:
            self._store.mark_done(event.id)

    def _retry_or_bury(self, event: InboxEvent, error: str) -> None:
        attempts = event.attempts + 1
        if attempts >= self._config.sync.max_attempts:
            self._store.mark_dead(event.id, f"gave up after {attempts} attempts: {error}")
            self.failed += 1
            logger.error(
                "dead-lettered %s after %d attempts: %s", event.dedupe_key, attempts, error
            )
            return
        delay = min(timedelta(seconds=2**attempts), MAX_BACKOFF)
        self._store.mark_retry(event.id, error, self._clock() + delay)
        logger.warning("will retry %s in %s: %s", event.dedupe_key, delay, error)

    # -- one event

    def handle(self, event_name: str, body: Mapping[str, Any]) -> None:
        """Carry out one stored event. Raises the clients' exceptions for the worker to sort."""
        if event_name.startswith("chat_message_"):
            if self._chat_message_handler is not None:
                self._chat_message_handler(event_name, body)
            return
        if event_name == "post_created":
            post = DiscoursePost.from_api(body["post"])
            self._bridge_earlier_posts(post)
            self._bridge_post(post)
            self._note_seen(post)
        elif event_name == "post_edited":
            self._edit_post(DiscoursePost.from_api(body["post"]))
        elif event_name == "topic_edited":
            self._edit_topic(body["topic"])
        elif event_name == "post_destroyed":
            self._delete_post(DiscoursePost.from_api(body["post"]))
        elif event_name == "topic_destroyed":
            self._delete_topic(_int(body["topic"], "id"))
        elif event_name == "post_recovered":
            self._recover_post(DiscoursePost.from_api(body["post"]))
        else:
            logger.debug("no handler for %s", event_name)

    # -- edits

    def _edit_post(self, post: DiscoursePost) -> None:
        link = self._store.message_link_by_post(post.id)
        if link is None:
            # Never bridged (or already deleted): an edit never becomes a new message.
            logger.debug("edit of post %d ignored: not in Chat", post.id)
            return
        if post.user_deleted or post.deleted_at is not None:
            return  # the author's deletion arrives as an edit first; post_destroyed follows
        if link.origin == "gchat":
            if origin.content_hash(origin.text_part_of_raw(post.raw or "")) != link.content_hash:
                # A Chat user's message cannot be rewritten by the bridge's account.
                logger.info(
                    "edit in Discourse of Chat message %s not carried back",
                    link.gchat_message_name,
                )
            return
        version_key = f"discourse_post_version:{post.id}"
        seen = self._store.get_cursor(version_key)
        if seen is not None and post.version < int(seen):
            logger.info(
                "stale edit of post %d (version %d < %s) ignored", post.id, post.version, seen
            )
            return
        if post.post_number == 1 and not post.topic_title:
            # Webhook payloads carry the title; a plain post read does not.
            post = dataclasses.replace(
                post, topic_title=self._discourse.get_topic(post.topic_id).title
            )
        text = render_message(
            post,
            base_url=self._config.discourse.url,
            mention_lookup=self._mention_lookup,
            long_messages="split",
            attribution_format=self._config.sync.attribution_format,
        )
        new_hash = origin.content_hash(text)
        if new_hash == link.content_hash:
            logger.debug("edit of post %d changes nothing in Chat", post.id)
            return
        self._rewrite(post.id, link.gchat_message_name, self._parts(post))
        self._store.update_content_hash(link.gchat_message_name, new_hash)
        self._store.set_cursor(version_key, str(post.version))
        logger.info("mirrored edit of post %d -> %s", post.id, link.gchat_message_name)

    def _edit_topic(self, topic: Mapping[str, Any]) -> None:
        topic_id = _int(topic, "id")
        if self._store.thread_for_topic(topic_id) is None:
            return
        try:
            first = self._discourse.get_post_by_number(topic_id, 1)
        except DiscourseNotFound:
            return
        title = topic.get("title")
        self._edit_post(
            dataclasses.replace(first, topic_title=str(title) if title else first.topic_title)
        )

    def _parts(self, post: DiscoursePost) -> list[str]:
        text = render_message(
            post,
            base_url=self._config.discourse.url,
            mention_lookup=self._mention_lookup,
            long_messages=self._config.sync.long_messages,
            attribution_format=self._config.sync.attribution_format,
        )
        return formatting.split_for_limit(text, formatting.CHAT_MAX_BYTES)

    def _rewrite(self, post_id: int, gchat_message_name: str, parts: list[str]) -> None:
        """Update the message and its later parts; add or delete parts as the length changed."""
        self._chat.update_message_text(gchat_message_name, parts[0])
        client_id, old_count = self._part_info(post_id)
        space = _space_of_thread(gchat_message_name)
        thread = self._store.message_link_by_message(gchat_message_name)
        thread_name = thread.gchat_thread_name if thread else None
        for index in range(2, max(old_count, len(parts)) + 1):
            part_id = origin.client_message_id_for_part(client_id, index)
            name = f"{space}/messages/{part_id}"
            if index <= len(parts):
                try:
                    self._chat.update_message_text(name, parts[index - 1])
                except ChatNotFound:
                    self._create_chat_message(
                        space,
                        parts[index - 1],
                        message_id=part_id,
                        thread_name=thread_name,
                    )
            else:
                self._delete_chat_message(name)
        self._set_part_info(post_id, client_id, len(parts))

    def _part_info(self, post_id: int) -> tuple[str, int]:
        value = self._store.get_cursor(f"discourse_post_parts:{post_id}")
        if value is None:
            return origin.client_message_id_for_post(post_id), 1
        info = json.loads(value)
        return str(info["client_id"]), int(info["count"])

    def _set_part_info(self, post_id: int, client_id: str, count: int) -> None:
        if (
            count == 1
            and client_id == origin.client_message_id_for_post(post_id)
            and self._store.get_cursor(f"discourse_post_parts:{post_id}") is None
        ):
            return  # the usual case costs no row
        self._store.set_cursor(
            f"discourse_post_parts:{post_id}", json.dumps({"client_id": client_id, "count": count})
        )

    # -- deletions

    def _delete_post(self, post: DiscoursePost) -> None:
        link = self._store.message_link_by_post(post.id)
        if link is None:
            logger.debug("deletion of post %d ignored: not in Chat", post.id)
            return
        client_id, count = self._part_info(post.id)
        space = _space_of_thread(link.gchat_message_name)
        self._delete_chat_message(link.gchat_message_name)
        for index in range(2, count + 1):
            part_id = origin.client_message_id_for_part(client_id, index)
            self._delete_chat_message(f"{space}/messages/{part_id}")
        if post.post_number == 1 or self._is_thread_root(link):
            self._store.unlink_thread(link.gchat_thread_name)
        else:
            self._store.unlink_message(link.gchat_message_name)
        logger.info("mirrored deletion of post %d -> %s deleted", post.id, link.gchat_message_name)

    def _delete_topic(self, topic_id: int) -> None:
        links = self._store.message_links_in_topic(topic_id)
        thread = self._store.thread_for_topic(topic_id)
        if thread is None:
            return
        for link in links:
            client_id, count = self._part_info(link.discourse_post_id)
            space = _space_of_thread(link.gchat_message_name)
            for index in range(2, count + 1):
                part_id = origin.client_message_id_for_part(client_id, index)
                self._delete_chat_message(f"{space}/messages/{part_id}")
        if links:
            # force: the thread's replies go with its first message.
            self._delete_chat_message(links[0].gchat_message_name)
        self._store.unlink_thread(thread)
        logger.info("mirrored deletion of topic %d -> thread %s deleted", topic_id, thread)

    def _is_thread_root(self, link: MessageLink) -> bool:
        links = self._store.message_links_in_topic(link.discourse_topic_id)
        return bool(links) and links[0].gchat_message_name == link.gchat_message_name

    def _delete_chat_message(self, gchat_message_name: str) -> None:
        try:
            self._chat.delete_message(gchat_message_name, force=True)
        except ChatNotFound:
            pass  # already gone (deleted in Chat, whence perhaps this very event)
        except ChatPermissionDenied as exc:
            # Under user auth only one's own messages (or a manager's) can be deleted.
            logger.warning("cannot delete %s in Chat: %s", gchat_message_name, exc)

    # -- recovery

    def _recover_post(self, post: DiscoursePost) -> None:
        if self._store.message_for_post(post.id) is not None:
            return  # its deletion never reached Chat
        # A deleted client-assigned id is not reusable: the copy gets a new, deterministic one.
        stamp = int((post.updated_at or post.created_at).timestamp())
        self._bridge_post(
            dataclasses.replace(post, deleted_at=None, user_deleted=False),
            client_id=origin.client_message_id_for_recovered_post(post.id, stamp),
        )

    def _bridge_earlier_posts(self, post: DiscoursePost) -> None:
        """Bridge the topic's earlier posts that have not been handled yet, oldest first.

        Webhooks arrive unordered and may be lost; without this, reply N would reach Chat
        before reply N-1, which only the catch-up pull brings later. The store remembers the
        highest post number handled per topic, so in-order deliveries cost no request; only a
        gap costs a topic read and one read of the missing posts.
        """
        if post.post_number <= 1:
            return
        seen = int(self._store.get_cursor(_seen_key(post.topic_id)) or 0)
        if seen >= post.post_number - 1:
            return
        if self._store.thread_for_topic(post.topic_id) is None and not self._maps(post):
            return  # not a bridged topic in a mapped category: nothing to put in order
        history_before = int(self._store.get_cursor(FIRST_HIGH_WATER_KEY) or 0)
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
        for earlier in sorted(
            self._discourse.get_topic_posts(post.topic_id, missing), key=lambda p: p.post_number
        ):
            if earlier.post_number >= post.post_number:
                continue
            logger.info("bridging post %d ahead of its later reply %d", earlier.id, post.id)
            # A topic read carries no topic context (title, category); the reply does.
            self._bridge_post(
                dataclasses.replace(
                    earlier,
                    category_id=earlier.category_id or post.category_id,
                    topic_title=earlier.topic_title or post.topic_title,
                    topic_archetype=earlier.topic_archetype or post.topic_archetype,
                )
            )
            self._note_seen(earlier)

    def _maps(self, post: DiscoursePost) -> bool:
        return post.category_id is not None and post.category_id in self._space_for_category()

    def _note_seen(self, post: DiscoursePost) -> None:
        key = _seen_key(post.topic_id)
        if int(self._store.get_cursor(key) or 0) < post.post_number:
            self._store.set_cursor(key, str(post.post_number))

    def _bridge_post(self, post: DiscoursePost, client_id: str | None = None) -> None:
        action = plan_post(
            post,
            space_for_category=self._space_for_category(),
            thread_for_topic=self._store.thread_for_topic(post.topic_id),
            already_bridged=self._store.message_for_post(post.id) is not None,
        )
        if isinstance(action, Skip):
            logger.debug("post %d not bridged: %s", post.id, action.reason)
            return
        if isinstance(action, BridgeTopicFirst):
            try:
                first = self._discourse.get_post_by_number(post.topic_id, 1)
            except DiscourseNotFound:
                logger.warning(
                    "topic %d has no first post; reply %d not bridged", post.topic_id, post.id
                )
                return
            # A single post read carries no topic context (title, category); the reply does.
            self._bridge_post(
                dataclasses.replace(
                    first,
                    category_id=first.category_id or post.category_id,
                    topic_title=first.topic_title or post.topic_title,
                    topic_archetype=first.topic_archetype or post.topic_archetype,
                )
            )
            if self._store.thread_for_topic(post.topic_id) is None:
                logger.info("reply %d not bridged: its topic is not bridged", post.id)
                return
            self._bridge_post(post, client_id)
            return
        self._write(action, client_id or origin.client_message_id_for_post(action.post.id))

    def _write(self, action: PostToChat, client_id: str) -> None:
        post = action.post
        text = render_message(
            post,
            base_url=self._config.discourse.url,
            mention_lookup=self._mention_lookup,
            long_messages=self._config.sync.long_messages,
            attribution_format=self._config.sync.attribution_format,
        )
        parts = formatting.split_for_limit(text, formatting.CHAT_MAX_BYTES)
        attachments, notes = self._attachments_for(post, action.gchat_space_name)
        first = parts[0]
        if notes:
            note = "\n".join(notes)
            if len((first + "\n" + note).encode()) <= formatting.CHAT_MAX_BYTES:
                first = f"{first}\n{note}"
            else:
                parts.append(note)
        message = self._create_chat_message(
            action.gchat_space_name,
            first,
            message_id=client_id,
            thread_name=action.gchat_thread_name,
            attachments=attachments,
        )
        thread = message.thread_name or message.name
        for index, part in enumerate(parts[1:], start=2):
            # Later parts follow in the same thread; linked through their ids, see _part_info.
            self._create_chat_message(
                action.gchat_space_name,
                part,
                message_id=origin.client_message_id_for_part(client_id, index),
                thread_name=thread,
            )
        self._set_part_info(post.id, client_id, len(parts))
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
        self.bridged += 1
        logger.info("bridged post %d -> %s", post.id, message.name)

    def _attachments_for(
        self, post: DiscoursePost, gchat_space_name: str
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Chat attachments for the uploads a post embeds, and notes for those that failed.

        The text keeps a link to every upload, so a failed attachment is never lost; the note
        says why it is not attached.
        """
        attachments: list[dict[str, Any]] = []
        notes: list[str] = []
        for short_url, filename in uploads_in_raw(post.raw or ""):
            try:
                data = self._discourse.download_upload(short_url)
                if len(data) > self._config.sync.max_attachment_bytes:
                    notes.append(f"_({filename} is too large to attach; see the link above)_")
                    continue
                content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                ref = self._chat.upload_attachment(gchat_space_name, filename, data, content_type)
            except (DiscourseRejected, ChatRejected) as exc:
                logger.warning("upload %s of post %d not attached: %s", short_url, post.id, exc)
                notes.append(f"_({filename} could not be attached; see the link above)_")
                continue
            attachments.append({"attachmentDataRef": ref})
        return attachments, notes

    def _create_chat_message(self, gchat_space_name: str, text: str, **kw: Any) -> ChatMessage:
        return self._chat.create_message(gchat_space_name, text, **kw)

    def _space_for_category(self) -> dict[int, str]:
        spaces: dict[int, str] = {}
        for mapping in self._config.mappings:
            category = mapping.discourse_category_id
            if category is None and mapping.discourse_parent_category_id is not None:
                category = self._store.category_for_space(mapping.google_space_id)
            if category is not None:
                spaces[category] = mapping.google_space_id
        return spaces

    def _mention_lookup(self, discourse_username: str) -> str | None:
        link = self._store.user_for_discourse(discourse_username)
        return link.gchat_user_name if link else None


class InboxWorker:
    """A thread that drains the inbox whenever it is woken, and at least once a second."""

    def __init__(self, d2g: DiscourseToGchat, stop: threading.Event) -> None:
        self._d2g = d2g
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="inbox-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._d2g.wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._d2g.drain()
            except Exception:  # boundary: the worker thread must survive anything
                logger.exception("inbox worker failed; retrying in a second")
            self._d2g.wake.wait(timeout=1.0)
            self._d2g.wake.clear()


__all__ = [
    "DiscourseError",
    "DiscourseToGchat",
    "InboxWorker",
    "plan_post",
    "render_message",
    "ChatError",
]
