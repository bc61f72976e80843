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
- A transient failure is retried with backoff, a bad credential waits without counting against
  the event, anything refused is dead-lettered with its reason (`status`, `retry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

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

    Raises:
        ValueError: an event name the bridge does not handle, or a body that lacks what the
            event needs (the listener answers 422; a stored row is dead-lettered).
    """
    try:
        if event_name in _POST_KINDS:
            payload = _object(body, "post")
            post = DiscoursePost.from_api(payload)
            return Parsed(PostEvent(_POST_KINDS[event_name], post), *_post_keys(event_name, post))
        if event_name in _TOPIC_KINDS:
            payload = _object(body, "topic")
            topic_id = _int(payload, "id")
            title = payload.get("title")
            # Two title edits may leave every counter as it was: key by the whole payload.
            return Parsed(
                TopicEvent(_TOPIC_KINDS[event_name], topic_id, str(title) if title else None),
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


def _int(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} missing or not an integer")
    return value


# ---------------------------------------------------------------------------- the inbox


class Inbox:
    """Stores typed events durably and wakes the worker."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wake: threading.Event | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.wake = wake or threading.Event()

    def put_webhook(
        self, parsed: Parsed, *, raw_body: str, event_id: str, event_type: str
    ) -> bool:
        """Store a verified webhook delivery; False if it was a duplicate."""
        name = _event_name(parsed.event)
        return self._put(
            parsed, event_name=name, payload=raw_body, event_id=event_id, type_=event_type
        )

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
