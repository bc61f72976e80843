"""The durable inbox: Discourse events stored before they are acted on, and its worker.

Role: a shared module for every direction that receives Discourse events (posts and topics for
`sync_discourse_to_gchat`, chat messages for `sync_dm`), whoever brings them: the webhook listener
or the catch-up pulls. An event is parsed into a typed record here, in one function per source
(`parse_webhook`, `pulled_post`, `pulled_chat_message`, and `load` for a stored row), and from
there on nothing indexes a dict. The handlers are passed in by `main.py`; this module imports no
sync module.

Invariants:
- Keys depend on the event only, never on the clock or the store. A creation is keyed by its id
  alone (the webhook and the pull agree on ids, not on every field), so a webhook and a pull that
  bring the same post meet on one row; later events by id and content, so a redelivery is dropped
  but a new edit is not.
- The ordering key names the topic (or chat channel): the worker hands out only the oldest
  pending event of each, so replies keep their order.
- A pulled post is stored as a reference (ids only): the typed record the pull read is handed to
  the handler from memory, and read again from Discourse only when the process restarted before
  handling it. Nothing is dressed up as a webhook body.
- Scope before storage (`Scope`, `post_refusal`): an event of a private message, of a category
  no mapping names (a topic moved out of one included), or of a chat channel not linked to a
  Chat DM is never stored; the catch-up pull drops such posts by the same rule. Decided from
  the config and the store, without a request.
- A transient failure is retried with backoff, a bad credential waits without counting against
  the event, anything refused is dead-lettered with its reason (`status`, `retry`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from config_loader import SpaceMapping
from db import InboxEvent, Store
from discourse_client import (
    DiscourseAuthError,
    DiscourseChatMessage,
    DiscoursePost,
    DiscourseRejected,
    DiscourseUnavailable,
)
from google_chat_client import ChatAuthError, ChatRejected, ChatUnavailable

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=5)
AUTH_RETRY = timedelta(seconds=30)
# `event_type` of a row written by a catch-up pull: its payload holds ids, not a webhook body.
PULL = "pull"

PostKind = Literal["created", "edited", "destroyed", "recovered"]
TopicKind = Literal["created", "edited", "destroyed", "recovered"]
ChatKind = Literal["created", "edited", "trashed", "restored"]
_POST_KINDS: dict[str, PostKind] = {
    "post_created": "created",
    "post_edited": "edited",
    "post_destroyed": "destroyed",
    "post_recovered": "recovered",
}
_TOPIC_KINDS: dict[str, TopicKind] = {
    "topic_created": "created",
    "topic_edited": "edited",
    "topic_destroyed": "destroyed",
    "topic_recovered": "recovered",
}
_CHAT_KINDS: dict[str, ChatKind] = {
    "chat_message_created": "created",
    "chat_message_edited": "edited",
    "chat_message_trashed": "trashed",
    "chat_message_restored": "restored",
}


# ---------------------------------------------------------------------------- typed events


@dataclass(frozen=True, slots=True)
class PostEvent:
    kind: PostKind
    post: DiscoursePost


@dataclass(frozen=True, slots=True)
class TopicEvent:
    kind: TopicKind
    topic_id: int
    title: str | None
    category_id: int | None = None  # the topic's category now (None for a private message)
    archetype: str | None = None  # "regular" or "private_message"


@dataclass(frozen=True, slots=True)
class ChatMessageEvent:
    """A `chat_message_*` webhook: the message, its channel and the author's display name."""

    kind: ChatKind
    message: DiscourseChatMessage
    channel_id: int
    author_name: str | None  # the author's display name, when the payload has it


@dataclass(frozen=True, slots=True)
class PulledPost:
    """A post the catch-up pull found (handled as its creation)."""

    post_id: int
    topic_id: int


@dataclass(frozen=True, slots=True)
class PulledChatMessage:
    """A chat message the DM catch-up pull found (handled as its creation)."""

    message_id: int
    channel_id: int


DiscourseEvent = PostEvent | TopicEvent | ChatMessageEvent | PulledPost | PulledChatMessage


@dataclass(frozen=True, slots=True)
class Parsed:
    """A typed event and the keys of its inbox row."""

    event: DiscourseEvent
    dedupe_key: str
    ordering_key: str


def parse_webhook(event_name: str, body: Mapping[str, Any]) -> Parsed:
    """The typed event and inbox keys of a webhook body.

    The signature covers the body only; the event name comes from an unsigned header. So the name
    must agree with the body: its object (`post`, `topic`, `chat_message`, the one root key
    Discourse writes, emit_web_hook_event.rb `build_webhook_body`), and the state the body shows
    where Discourse's payload pins it (`_check_state`). What a body cannot show (a
    `topic_created` body is a live topic, and so is an older forum's `topic_destroyed` body) is
    checked against Discourse itself before anything is deleted or restored.

    Raises:
        ValueError: an event name the bridge does not handle, or a body that lacks what the
            event needs or contradicts it (the listener answers 422; a stored row is
            dead-lettered).
    """
    kind = _OBJECT_OF.get(event_name.split("_", 1)[0])
    others = [key for key in _OBJECT_OF.values() if key != kind and key in body]
    if kind is not None and others:
        raise ValueError(f"a {event_name} body has a {others[0]} object")
    try:
        if event_name in _POST_KINDS:
            payload = _object(body, "post")
            post = DiscoursePost.from_api(payload)
            _check_state(event_name, deleted=post.deleted_at is not None, by=post.user_deleted)
            return Parsed(PostEvent(_POST_KINDS[event_name], post), *_post_keys(event_name, post))
        if event_name in _TOPIC_KINDS:
            payload = _object(body, "topic")
            topic_id = _int(payload, "id")
            _check_state(event_name, deleted=payload.get("deleted_at") is not None)
            title = payload.get("title")
            # Two title edits may leave every counter as it was: key by the whole payload.
            return Parsed(
                TopicEvent(
                    _TOPIC_KINDS[event_name],
                    topic_id,
                    str(title) if title else None,
                    _opt_int(payload, "category_id"),
                    str(payload["archetype"]) if payload.get("archetype") else None,
                ),
                f"{event_name}:{topic_id}:{_digest(payload)}",
                f"topic:{topic_id}",
            )
        if event_name in _CHAT_KINDS:
            return _parse_chat(event_name, _object(body, "chat_message"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed {event_name} payload: {exc!r}") from exc
    raise ValueError(f"event {event_name!r} is not handled")


def pulled_post(post: DiscoursePost) -> Parsed:
    """The inbox row of a post the catch-up pull found: keyed like its `post_created` webhook."""
    return Parsed(
        PulledPost(post.id, post.topic_id), f"post_created:{post.id}", f"topic:{post.topic_id}"
    )


def pulled_chat_message(message: DiscourseChatMessage) -> Parsed:
    """The inbox row of a chat message found by the DM catch-up pull."""
    return Parsed(
        PulledChatMessage(message.id, message.channel_id),
        f"chat_message_created:{message.id}",
        f"chat_channel:{message.channel_id}",
    )


def load(row: InboxEvent) -> DiscourseEvent:
    """The typed event of a stored row (a webhook body, or the ids a pull stored).

    Raises:
        ValueError: the stored payload is not an event the bridge can use.
    """
    try:
        body = json.loads(row.payload)
    except ValueError as exc:
        raise ValueError(f"stored payload is not JSON: {exc}") from exc
    if not isinstance(body, Mapping):
        raise ValueError("stored payload is not a JSON object")
    if row.event_type == PULL:
        if "post_id" in body:
            return PulledPost(_int(body, "post_id"), _int(body, "topic_id"))
        return PulledChatMessage(_int(body, "message_id"), _int(body, "channel_id"))
    return parse_webhook(row.event_name, body).event


def _pull_payload(event: PulledPost | PulledChatMessage) -> tuple[str, str]:
    """(event name, payload) of a pull's row."""
    if isinstance(event, PulledPost):
        return "post_created", json.dumps({"post_id": event.post_id, "topic_id": event.topic_id})
    return "chat_message_created", json.dumps(
        {"message_id": event.message_id, "channel_id": event.channel_id}
    )


def _post_keys(event_name: str, post: DiscoursePost) -> tuple[str, str]:
    ordering = f"topic:{post.topic_id}"
    if event_name == "post_created":
        return f"post_created:{post.id}", ordering
    if event_name == "post_edited":
        # Keyed by content and edit time, not `version`: a second edit by the same person
        # within Discourse's editing grace period keeps the version (lib/post_revisor.rb).
        edit = {"raw": post.raw, "updated_at": _iso(post.updated_at)}
        return f"post_edited:{post.id}:{_digest(edit)}", ordering
    # A post may be deleted and recovered more than once at one version: key by the state.
    state = {
        "deleted_at": _iso(post.deleted_at),
        "updated_at": _iso(post.updated_at),
        "user_deleted": post.user_deleted,
        "version": post.version,
        "raw": post.raw,
    }
    return f"{event_name}:{post.id}:{_digest(state)}", ordering


def _parse_chat(event_name: str, payload: Mapping[str, Any]) -> Parsed:
    message, channel = payload.get("message"), payload.get("channel")
    if not isinstance(message, Mapping) or not isinstance(channel, Mapping):
        raise ValueError("chat_message needs message and channel objects")
    channel_id = _int(channel, "id")
    parsed = DiscourseChatMessage.from_api(message, channel_id=channel_id)
    _check_state(event_name, deleted=parsed.deleted_at is not None)
    user = message.get("user")
    name = user.get("name") if isinstance(user, Mapping) else None
    event = ChatMessageEvent(
        _CHAT_KINDS[event_name], parsed, channel_id, str(name) if name else None
    )
    ordering = f"chat_channel:{channel_id}"
    if event_name == "chat_message_created":
        return Parsed(event, f"chat_message_created:{parsed.id}", ordering)
    # `edited` is a mere flag: a second edit must not pass for a redelivery of the first.
    return Parsed(event, f"{event_name}:{parsed.id}:{_digest(message)}", ordering)


# The object a webhook body carries, by the event name's group (`X-Discourse-Event-Type`).
_OBJECT_OF = {"post": "post", "topic": "topic", "chat": "chat_message"}
# Events whose body is serialized after the change, so it shows the object's state then:
# a post is created live and recovered live (012-web_hook_events.rb builds those payloads when
# the event fires, after `recover!`); a topic is created, edited (never while trashed) and
# recovered live; a chat message is trashed before `chat_message_trashed` fires and live in the
# others (Chat::TrashMessage / RestoreMessage trigger after the change). `post_destroyed` and
# `topic_destroyed` are serialized before the deletion on older forums and after it on newer
# ones (lib/post_destroyer.rb), so their bodies pin nothing.
_MUST_BE_LIVE = frozenset(
    {
        "post_created",
        "post_recovered",
        "topic_created",
        "topic_edited",
        "topic_recovered",
        "chat_message_created",
        "chat_message_edited",
        "chat_message_restored",
    }
)
_MUST_BE_DELETED = frozenset({"chat_message_trashed"})


def _check_state(event_name: str, *, deleted: bool, by: bool = False) -> None:
    """Refuse a body whose object's state contradicts its event name.

    `by`: a post deleted by its author (`user_deleted`), which only a new post cannot be (a staff
    recovery of such a post may leave the flag on older forums).
    """
    if event_name in _MUST_BE_LIVE and deleted:
        raise ValueError(f"a {event_name} body shows a deleted object")
    if event_name == "post_created" and by:
        raise ValueError("a post_created body shows a post deleted by its author")
    if event_name in _MUST_BE_DELETED and not deleted:
        raise ValueError(f"a {event_name} body shows a live message")


def _object(body: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    payload = body.get(kind)
    if not isinstance(payload, Mapping):
        raise ValueError(f"no {kind} object in the body")
    return payload


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _digest(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _opt_int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} missing or not an integer")
    return value


# ---------------------------------------------------------------------------- scope


def mapped_categories(mappings: Iterable[SpaceMapping], store: Store) -> dict[int, str]:
    """Category id → Chat space of every room mapping: the category the config names, or the
    subcategory the bridge created under the configured parent (stored). No request."""
    spaces: dict[int, str] = {}
    for mapping in mappings:
        category = mapping.discourse_category_id
        if category is None and mapping.discourse_parent_category_id is not None:
            category = store.category_for_space(mapping.google_space_id)
        if category is not None:
            spaces[category] = mapping.google_space_id
    return spaces


def post_refusal(post: DiscoursePost, categories: Mapping[int, str]) -> str | None:
    """Why a post is out of the bridge's scope (a private message, a category not mapped), or
    None. `category_id` is its topic's category now (webhook bodies and `/posts.json` alike)."""
    if post.topic_archetype == "private_message":
        return "private message"
    if post.category_id is None or post.category_id not in categories:
        return f"category {post.category_id} is not mapped"
    return None


def refusal(
    event: DiscourseEvent, categories: Mapping[int, str], channel_linked: Callable[[int], bool]
) -> str | None:
    """Why an event must not even be stored, or None: posts and topics of private messages and
    of categories not mapped, and messages of chat channels not linked to a Chat DM. A pulled
    row holds ids only; the pulls apply the same rule to what they read (`post_refusal`)."""
    if isinstance(event, PostEvent):
        return post_refusal(event.post, categories)
    if isinstance(event, TopicEvent):
        if event.archetype == "private_message":
            return "private message"
        if event.category_id is None or event.category_id not in categories:
            return f"category {event.category_id} is not mapped"
        return None
    if isinstance(event, ChatMessageEvent) and not channel_linked(event.channel_id):
        return f"chat channel {event.channel_id} is not linked to a Chat DM"
    return None


class Scope:
    """What the bridge takes in, from the config's mappings and the store: no request per event.

    A post or topic event of a category that is not mapped (a moved topic's included: the body
    names the topic's category now), of a private message, or a chat message of a channel that
    is not linked, is never stored, so the database never holds its words.
    """

    def __init__(self, mappings: Iterable[SpaceMapping], store: Store) -> None:
        self._mappings = tuple(mappings)
        self._store = store

    def space_for_category(self) -> dict[int, str]:
        return mapped_categories(self._mappings, self._store)

    def refusal(self, event: DiscourseEvent) -> str | None:
        return refusal(event, self.space_for_category(), self._channel_linked)

    def _channel_linked(self, channel_id: int) -> bool:
        return self._store.space_for_channel(channel_id) is not None


# ---------------------------------------------------------------------------- the inbox


class Intake(enum.StrEnum):
    """What became of a webhook delivery (the listener answers with it)."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"  # out of scope (a PM, an unmapped category): never stored


class Inbox:
    """Stores typed events durably and wakes the worker.

    With a `scope`, a webhook event outside it is dropped before anything is written.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wake: threading.Event | None = None,
        scope: Scope | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.wake = wake or threading.Event()
        self.scope = scope

    def put_webhook(
        self, parsed: Parsed, *, raw_body: str, event_id: str, event_type: str
    ) -> Intake:
        """Store a verified webhook delivery; say if it was new, a duplicate or out of scope."""
        if self.scope is not None and (why := self.scope.refusal(parsed.event)):
            logger.debug("inbox %s not stored: %s", parsed.dedupe_key, why)
            return Intake.IGNORED
        name = _event_name(parsed.event)
        stored = self._put(
            parsed, event_name=name, payload=raw_body, event_id=event_id, type_=event_type
        )
        return Intake.QUEUED if stored else Intake.DUPLICATE

    def put_pulled(self, parsed: Parsed) -> bool:
        """Store what a catch-up pull found (ids only); False if a webhook brought it already."""
        event = parsed.event
        if not isinstance(event, PulledPost | PulledChatMessage):
            raise TypeError(f"not a pulled event: {event!r}")
        name, payload = _pull_payload(event)
        return self._put(parsed, event_name=name, payload=payload, event_id="", type_=PULL)

    def _put(
        self, parsed: Parsed, *, event_name: str, payload: str, event_id: str, type_: str
    ) -> bool:
        stored = self._store.enqueue_event(
            event_id=event_id,
            event_type=type_,
            event_name=event_name,
            payload=payload,
            dedupe_key=parsed.dedupe_key,
            ordering_key=parsed.ordering_key,
            received_at=self._clock(),
        )
        if stored:
            self.wake.set()
        logger.debug("inbox %s stored=%s", parsed.dedupe_key, stored)
        return stored


def _event_name(event: DiscourseEvent) -> str:
    """The webhook event name of a typed event (what the row's `event_name` column shows)."""
    if isinstance(event, PostEvent):
        return f"post_{event.kind}"
    if isinstance(event, TopicEvent):
        return f"topic_{event.kind}"
    if isinstance(event, ChatMessageEvent):
        return f"chat_message_{event.kind}"
    return _pull_payload(event)[0]


class InboxWorker:
    """Drains the inbox: oldest pending event of each topic first, whenever woken or each second.

    `handle` carries out one typed event and raises the clients' exceptions, which are sorted
    here: transient ones retried with backoff, credentials waited for, refusals dead-lettered.
    """

    def __init__(
        self,
        inbox: Inbox,
        store: Store,
        handle: Callable[[DiscourseEvent], None],
        *,
        max_attempts: int,
        stop: threading.Event | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._inbox = inbox
        self._store = store
        self._handle = handle
        self._max_attempts = max_attempts
        self._stop = stop or threading.Event()
        self._clock = clock
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="inbox-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._inbox.wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain()
            except Exception:  # boundary: the worker thread must survive anything
                logger.exception("inbox worker failed; retrying in a second")
            self._inbox.wake.wait(timeout=1.0)
            self._inbox.wake.clear()

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

    def _process(self, row: InboxEvent) -> None:
        try:
            self._handle(load(row))
        except ChatAuthError as exc:
            # Not the event's fault: keep it until the credentials are fixed (`/readyz` says so).
            self._store.mark_retry(row.id, str(exc), self._clock() + AUTH_RETRY)
            logger.error("event %s waits for Google credentials: %s", row.dedupe_key, exc)
        except (ChatUnavailable, DiscourseUnavailable) as exc:
            self._retry_or_bury(row, str(exc))
        except (ChatRejected, DiscourseRejected, ValueError, KeyError) as exc:
            if isinstance(exc, DiscourseAuthError) and exc.credentials_invalid:
                # A bad key is nobody's event's fault: keep it until the key is fixed.
                self._store.mark_retry(row.id, str(exc), self._clock() + AUTH_RETRY)
                logger.error("event %s waits for a working Discourse key: %s", row.dedupe_key, exc)
                return
            self._store.mark_dead(row.id, f"refused: {exc}")
            self.failed += 1
            logger.error("dead-lettered %s: %s", row.dedupe_key, exc)
        except Exception as exc:  # per-item boundary: one bad event must not stop the inbox
            logger.exception("event %s failed", row.dedupe_key)
            self._retry_or_bury(row, repr(exc))
        else:
            self._store.mark_done(row.id)

    def _retry_or_bury(self, row: InboxEvent, error: str) -> None:
        attempts = row.attempts + 1
        if attempts >= self._max_attempts:
            self._store.mark_dead(row.id, f"gave up after {attempts} attempts: {error}")
            self.failed += 1
            logger.error("dead-lettered %s after %d attempts: %s", row.dedupe_key, attempts, error)
            return
        delay = min(timedelta(seconds=2**attempts), MAX_BACKOFF)
        self._store.mark_retry(row.id, error, self._clock() + delay)
        logger.warning("will retry %s in %s: %s", row.dedupe_key, delay, error)
