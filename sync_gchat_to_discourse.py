"""Google Chat → Discourse: poll each mapped room space and mirror new messages as posts.

Invariants (DESIGN §3):
- Only what is new is read: a space whose `lastActiveTime` has not moved since its last full read
  costs no message request, and an active one is read from its stored cursor (with a small overlap;
  messages already linked are skipped).
- Effects happen in the order create remotely → link in the store → advance the cursor, so a crash
  repeats work but never loses it. Before each create the store records a pending write; a pending
  write found on the next attempt means a crash may have left the post behind, so the topic is
  looked up by `external_id`, or the topic's last posts are scanned for the origin marker, before
  anything is created again. Without a pending write no lookup is spent.
- Messages the bridge wrote into Chat (a client-assigned id of its forms and a sender it writes
  as, `origin.is_bridge_origin`) are never mirrored back. A message of anyone else is a human
  message, whatever id it holds (someone may take an id of the bridge's forms first).
- Crash reconciliation adopts only what the bridge could have written: a topic found by its
  `external_id`, or a post of the topic's last ones, counts only when its raw ends with the
  message's marker and its author is the account the message is posted as (or the API user).
- Edits and deletions: a space active within `edit_window` is asked for the message edits and
  deletions since its last scan (`spaces.spaceEvents.list`, at most every
  `edit_scan_interval_seconds`); the mirrored ones are fetched as they are now. A linked
  message whose rendered text hashes differently from what the link says was written becomes
  an edit (`update_post` with an edit reason); a linked tombstone deletes the post as staff. A
  thread's first post is deleted (and with it the topic) only when nothing else of the thread
  is left; until then it is replaced by a note. An edit never makes a new post, and a mere
  comparison never makes a forum account (the author is looked up read-only before `plan`).
- Attachments: uploaded Chat files are downloaded and uploaded to Discourse (as the author, else
  as the API user) and embedded after the text; Drive files become links; a file that cannot be
  copied leaves a visible note. The embeds sit after `origin.ATTACHMENTS_MARK`, so an edit of the
  text keeps them and the link's content hash covers the text part only.
- A message Discourse refuses is parked with its reason (visible in `status`), never dropped
  silently and never retried forever; a transient failure stops the space for this cycle so that
  order is kept, and parks the message once it has failed `max_attempts` times.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO

import formatting
import origin
from config_loader import SpaceMapping
from db import MessageLink, StatusKey
from deps import Deps
from discourse_client import (
    DiscourseAuthError,
    DiscourseCategory,
    DiscourseError,
    DiscourseNotFound,
    DiscoursePost,
    DiscourseRejected,
    DiscourseUnavailable,
    DiscourseUpload,
)
from google_chat_client import (
    MEDIA_BLOCK,
    ChatAttachment,
    ChatAuthError,
    ChatError,
    ChatMessage,
    ChatMessageChange,
    ChatNotFound,
    ChatRejected,
    ChatSpace,
    ChatTooLarge,
    SpaceMessageEvent,
    format_rfc3339,
    parse_rfc3339,
)
from spaces import (
    CURSOR_OVERLAP,
    DM_SPACE_TYPES,
    RETRY_BASE_DELAY,
    EventOutcome,
    PollResult,
    event_version,
    fetch_spaces,
)
from users import Author, IdentityConflict

logger = logging.getLogger(__name__)

DIRECTION = "gchat_to_discourse"
# How many of a topic's last posts are scanned for an origin marker after a crash.
RECONCILE_WINDOW = 20
# What a thread's first post says while later messages of its thread still live.
DELETED_FIRST_POST = "_(this message was deleted in Google Chat)_"
DELETED_HASH = "deleted"
# Space events are listed from the previous scan less this much (an event may be stamped a little
# before it becomes visible); a change seen twice is harmless (content hashes, stored links).
EDIT_SCAN_OVERLAP = timedelta(seconds=30)
# spaces.spaceEvents.list reaches at most 28 days back.
MAX_EVENT_AGE = timedelta(days=27)
EDIT_REASON = "edited in Google Chat"


# ---------------------------------------------------------------------------- pure planning


@dataclass(frozen=True, slots=True)
class CreateTopic:
    """Start a topic from the first message of a thread the bridge has not seen."""

    message: ChatMessage
    gchat_thread_name: str
    title: str


@dataclass(frozen=True, slots=True)
class CreateReply:
    """Add a message to the topic of its thread (linked before or created earlier in the plan)."""

    message: ChatMessage
    gchat_thread_name: str
    title: str  # used only if the thread's topic could not be made (then this starts it)


@dataclass(frozen=True, slots=True)
class Skip:
    message: ChatMessage
    reason: str


@dataclass(frozen=True, slots=True)
class EditPost:
    """A linked Chat message whose text changed: rewrite its post's text part with `text`."""

    message: ChatMessage
    link: MessageLink
    text: str  # as rendered now: what was compared, is written, and is hashed into the link


@dataclass(frozen=True, slots=True)
class DeletePost:
    """A linked Chat message that was deleted: delete its post."""

    message: ChatMessage
    link: MessageLink


Action = CreateTopic | CreateReply | EditPost | DeletePost | Skip


def thread_of(message: ChatMessage) -> str:
    # A message in an unthreaded space has no thread: it stands alone as its own topic.
    return message.thread_name or message.name


def fallback_title(space_label: str, message: ChatMessage) -> str:
    """The title of a topic whose first message has no words to make one of."""
    return f"Chat thread in {space_label} ({message.create_time:%Y-%m-%d %H:%M})"


def needs_rendering(message: ChatMessage, link: MessageLink) -> bool:
    """Whether `plan` compares the linked `message`'s text, as rendered now, with its link.

    Only live messages mirrored from Chat that were edited: the bridge's own messages (linked
    with origin "discourse") change only through Discourse, a never-edited one has nothing to
    compare (so no author is looked up for it), and a first post replaced by the deletion note
    stays so. What a message's link says it is was decided when it was linked: a human's
    message under an id of the bridge's forms (a squatter's) is compared like any other.
    """
    return (
        message.delete_time is None
        and link.origin == "gchat"
        and message.last_update_time is not None
        and link.content_hash != DELETED_HASH
    )


def plan(
    messages: Sequence[ChatMessage],
    *,
    linked_messages: Container[str],
    linked_threads: Container[str],
    space_label: str,
    bridge: origin.BridgeIdentity,
    mirror_app_messages: bool = False,
    links: Mapping[str, MessageLink] | None = None,
    rendered: Mapping[str, str] | None = None,
    new_after: datetime | None = None,
) -> list[Action]:
    """Decide what to do with each Chat message read, oldest first. No I/O: data in, data out.

    `linked_messages` holds message names already mirrored; `linked_threads` thread names that
    already have a topic; `space_label` names the space in fallback titles; `bridge` tells the
    bridge's own messages (`origin.is_bridge_origin`) from everyone's. `links` turns linked
    messages into edits and deletions: `rendered` must hold, for each linked message for which
    `needs_rendering` holds, the text part of its post as it would be rendered now (resolved
    by the caller beforehand); one that hashes differently from what its link says was written
    is an edit. Unlinked messages created at or before `new_after` (re-read only to see edits)
    are left alone.
    """
    actions: list[Action] = []
    started: set[str] = set()
    links = links or {}
    rendered = rendered or {}
    for message in sorted(messages, key=lambda m: m.create_time):
        link = links.get(message.name)
        if link is not None:
            change = _change_of(message, link, rendered)
            if change is not None:
                actions.append(change)
            continue
        if message.name in linked_messages:
            continue
        if new_after is not None and message.create_time <= new_after:
            continue
        thread = thread_of(message)
        # From the plain `text` (mentions as `@Name`, links as their label): no markup in titles.
        title = formatting.title_from_text(
            message.text,
            fallback=fallback_title(space_label, message),
            display_name_lookup=message.mention_display_name,
        )
        if origin.is_bridge_origin(message, bridge):
            actions.append(Skip(message, "written by the bridge"))
        elif message.delete_time is not None:
            actions.append(Skip(message, "deleted in Chat"))
        elif message.sender.type == "BOT" and not mirror_app_messages:
            actions.append(Skip(message, "written by a Chat app"))
        elif thread in linked_threads or thread in started:
            actions.append(CreateReply(message, thread, title))
        else:
            started.add(thread)
            actions.append(CreateTopic(message, thread, title))
    return actions


def _change_of(
    message: ChatMessage, link: MessageLink, rendered: Mapping[str, str]
) -> Action | None:
    if message.delete_time is not None:
        if link.content_hash == DELETED_HASH:
            return None  # already replaced by the deletion note; deleted with its thread
        return DeletePost(message, link)
    if not needs_rendering(message, link):
        return None
    text = rendered.get(message.name)
    if text is None:
        # A caller that skipped the resolve step would silently lose edits: say so instead.
        raise ValueError(f"no rendering of {message.name} to compare with its link")
    if origin.content_hash(text) == link.content_hash:
        return None  # already mirrored (or an edit that changed nothing we render)
    return EditPost(message, link, text)


def render_text(
    message: ChatMessage, author: Author, mention_lookup: Callable[[str], str | None]
) -> str:
    """The text part of the post for `message` (attribution and body, no embeds, no marker).

    Also what the link's content hash covers (`origin.content_hash`), so the stored hash and
    the one edit detection computes come from this one rendering.
    """
    # formattedText carries the mentions and link targets that the plain `text` has lost.
    body = formatting.gchat_to_discourse_markdown(
        message.markup,
        mention_lookup=mention_lookup,
        display_name_lookup=message.mention_display_name,
    )
    if not body.strip():
        body = formatting.NO_TEXT if not message.attachments else ""
    if author.attribution:
        body = f"{author.attribution}\n\n{body}" if body else author.attribution
    return body


def compose_raw(text: str, attachments_md: str, gchat_message_name: str) -> str:
    """The whole raw: text, then the attachment embeds, then the origin marker."""
    parts = [text] if text else []
    if attachments_md:
        parts.append(f"{origin.ATTACHMENTS_MARK}\n{attachments_md}")
    # The marker makes the post recognisable as ours (echo prevention, crash reconciliation) and
    # makes two identical texts distinct for Discourse's 120 s memoization of API posts.
    parts.append(origin.origin_marker(gchat_message_name))
    return "\n\n".join(parts)


def render_post(
    message: ChatMessage,
    author: Author,
    mention_lookup: Callable[[str], str | None],
    attachments_md: str = "",
) -> str:
    """The raw of the Discourse post for `message`, ending with its origin marker."""
    return compose_raw(render_text(message, author, mention_lookup), attachments_md, message.name)


def upload_markdown(upload: DiscourseUpload, content_type: str | None) -> str:
    """How the composer embeds an upload (reference discourse-api.md §7)."""
    name = _md_label(upload.original_filename or "file")
    kind = (content_type or "").split("/", 1)[0]
    if kind == "image" or (upload.width and upload.height):
        width = upload.thumbnail_width or upload.width
        height = upload.thumbnail_height or upload.height
        size = f"|{width}x{height}" if width and height else ""
        return f"![{name}{size}]({upload.short_url})"
    if kind in ("audio", "video"):
        return f"![{name}|{kind}]({upload.short_url})"
    human = f" ({upload.human_filesize})" if upload.human_filesize else ""
    return f"[{name}|attachment]({upload.short_url}){human}"


def drive_markdown(attachment: ChatAttachment) -> str:
    name = _md_label(attachment.content_name or "Drive file")
    return f"[{name}](https://drive.google.com/open?id={attachment.drive_file_id})"


def failure_note(attachment: ChatAttachment, why: str) -> str:
    name = _md_label(attachment.content_name or "an attachment")
    return f"_(attachment {name} could not be copied from Google Chat: {_md_label(why)})_"


def _md_label(text: str) -> str:
    # The label sits inside [...] or _..._: drop what would end or restyle it.
    cleaned = "".join(c for c in text if c not in "[]|()_*`<>\n\r")
    return cleaned.strip() or "file"


def created_after(cursor: str | None, initial_history: object, now: datetime) -> str | None:
    """The `createTime >` bound for listing a space: behind the cursor by the overlap.

    Without a cursor the configured initial history decides: everything, nothing older than now,
    or a duration back from now.
    """
    if cursor is not None:
        return format_rfc3339(parse_rfc3339(cursor) - CURSOR_OVERLAP)
    mode = getattr(initial_history, "mode", "all")
    if mode == "none":
        return format_rfc3339(now)
    if mode == "since":
        return format_rfc3339(now - initial_history.duration)  # type: ignore[attr-defined]
    return None


# ---------------------------------------------------------------------------- apply (I/O)


class _RefusedAuthor(Exception):
    """The forum account of a message's author is refused; the message is parked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CycleAborted(Exception):
    """The whole cycle must stop (credentials refused): said in `status` and `/readyz`."""


class GchatToDiscourse:
    """Mirrors mapped room spaces into Discourse; one instance per process, one cycle at a time."""

    def __init__(self, deps: Deps) -> None:
        self._config = deps.config
        self._store = deps.store
        self._chat = deps.chat
        self._discourse = deps.discourse
        self._users = deps.users
        self._clock = deps.clock
        self._stop = deps.stop
        self._ids = origin.ClientIds(deps.store.client_id_key())
        # What the events path did (for metrics; the poll reports its own per cycle).
        self.events_mirrored = 0
        self.events_parked = 0
        # When each space's recent history was last re-read for edits (in memory: after a
        # restart the first cycle scans once more, which is harmless).
        self._edit_scans: dict[str, datetime] = {}
        # One cycle at a time: the scheduler and a `backfill` must not mirror the same message.
        self._lock = threading.Lock()
        # One writer per space: a poll cycle and the events of that space (Workspace Events,
        # their replays) take turns; events of other spaces never wait behind a whole cycle.
        self._space_locks: dict[str, threading.Lock] = {}
        self._space_locks_guard = threading.Lock()
        # The spaces the last listing returned, so that an event needs no spaces.get.
        self._known_spaces: dict[str, ChatSpace] = {}

    # -- entry points

    def poll_once(self, listing: Iterable[ChatSpace] | None = None) -> PollResult:
        """One cycle over every mapped room space (`listing`: a SpaceListing shared per cycle)."""
        with self._lock:
            started = time.monotonic()
            result = PollResult()
            try:
                self._poll(result, listing)
            except CycleAborted as exc:
                result.errors.append(str(exc))
                logger.error("poll cycle aborted: %s", exc)
            duration = time.monotonic() - started
            self._store.set_status(
                StatusKey.LAST_POLL, result.status_json(self._clock(), duration)
            )
            result.log(logger, "poll cycle", duration)
            return result

    # -- cycle

    def _poll(self, result: PollResult, listing: Iterable[ChatSpace] | None) -> None:
        mappings = [m for m in self._config.mappings if _is_room_mapping(m)]
        if not mappings:
            return
        spaces = self._fetch_spaces({m.google_space_id for m in mappings}, result, listing)
        for mapping in mappings:
            if self._stop.is_set():
                return
            space = spaces.get(mapping.google_space_id)
            if space is None:
                continue
            if space.space_type in DM_SPACE_TYPES:
                # A DM mapped to a category: the DM sync reports the mismatch; making topics
                # of private conversations would be worse than bridging nothing.
                continue
            result.spaces_checked += 1
            self._known_spaces[space.name] = space
            try:
                with self._space_lock(space.name):
                    self._poll_space(mapping, space, result)
            except CycleAborted:
                raise
            except (ChatError, DiscourseError) as exc:
                result.errors.append(f"{space.name}: {exc}")
                logger.warning("poll of %s stopped: %s", space.name, exc)
            except Exception as exc:  # per-item boundary: one space must not stop the others
                result.errors.append(f"{space.name}: {exc!r}")
                logger.exception("poll of %s failed", space.name)

    def _fetch_spaces(
        self, wanted: set[str], result: PollResult, listing: Iterable[ChatSpace] | None
    ) -> dict[str, ChatSpace]:
        try:
            found, problems = fetch_spaces(self._chat, wanted, listing)
        except ChatAuthError as exc:
            raise CycleAborted(f"Google refused the credentials: {exc}") from exc
        except ChatError as exc:
            raise CycleAborted(f"cannot list Chat spaces: {exc}") from exc
        for problem in problems:
            result.errors.append(problem)
            logger.error("mapped space %s", problem)
        return found

    def _space_lock(self, space_name: str) -> threading.Lock:
        with self._space_locks_guard:
            return self._space_locks.setdefault(space_name, threading.Lock())

    # -- events (Workspace Events and their replays)

    def handle_events(self, space_name: str, events: Sequence[SpaceMessageEvent]) -> EventOutcome:
        """Message events of one space, through the same planner as the poll.

        Each message is taken at the newest version its events bring; a version no newer than
        one already acted on (a duplicate, or an older event arriving late) is dropped, and a
        deletion is final. A reply whose thread has no topic yet, and whose first message is
        not among the events, is an event that overtook an earlier one: the space is read
        from the poll's cursor first, so the thread starts where it started. The poll's cursor
        is left where it is: the safety poll still finds anything events missed.
        """
        mapping = next(
            (
                m
                for m in self._config.mappings
                if m.google_space_id == space_name and _is_room_mapping(m)
            ),
            None,
        )
        if mapping is None:
            return EventOutcome.IGNORED
        result = PollResult()
        with self._space_lock(space_name):
            fresh = self._fresh_events(events)
            if not fresh:
                return EventOutcome.DONE
            try:
                space = self._known_spaces.get(space_name) or self._chat.get_space(space_name)
                if space.space_type in DM_SPACE_TYPES:
                    return EventOutcome.IGNORED
                self._known_spaces[space_name] = space
                messages = self._current(fresh)
                done = self._bridge_events(mapping, space, messages, result)
            except CycleAborted as exc:
                logger.error("events of %s wait: %s", space_name, exc)
                return EventOutcome.RETRY
            except (ChatError, DiscourseError) as exc:
                logger.warning("events of %s wait: %s", space_name, exc)
                return EventOutcome.RETRY
            if not done:
                return EventOutcome.RETRY
            acted = {m.name: m for m in messages}
            for event in fresh:
                now = acted[event.message.name]
                version = max(
                    event_version(event),
                    now.delete_time or now.last_update_time or now.create_time,
                )
                self._store.set_chat_message_version(
                    now.name, version, deleted=now.delete_time is not None
                )
        if result.mirrored or result.parked:
            logger.info(
                "events of %s: %d mirrored, %d skipped, %d parked",
                space_name,
                result.mirrored,
                result.skipped,
                result.parked,
            )
        self.events_mirrored += result.mirrored
        self.events_parked += result.parked
        return EventOutcome.DONE

    def _fresh_events(self, events: Sequence[SpaceMessageEvent]) -> list[SpaceMessageEvent]:
        """The newest event of each message, if it is newer than what was acted on."""
        newest: dict[str, SpaceMessageEvent] = {}
        for event in sorted(events, key=lambda e: (event_version(e), e.event_time)):
            newest[event.message.name] = event
        fresh = []
        for name, event in newest.items():
            known = self._store.chat_message_version(name)
            deleted = event.message.delete_time is not None
            if known is not None and (
                known.deleted or (known.version >= event_version(event) and not deleted)
            ):
                continue
            fresh.append(event)
        return fresh

    def _current(self, fresh: Sequence[SpaceMessageEvent]) -> list[ChatMessage]:
        """The messages the events name, as Chat has them now.

        An event's payload carries `formattedText` in the app's default markup syntax, not the
        syntax the converter reads, and may be older than the message: each message that is
        not already gone is read again (Chat allows 15 reads a second per space; this one
        buys the right text). The bridge's own messages are recognised from the payload.
        """
        bridge = self._bridge((), {})
        current: list[ChatMessage] = []
        for event in fresh:
            message = event.message
            if message.delete_time is None and not origin.is_bridge_origin(message, bridge):
                try:
                    message = self._chat.get_message(message.name)
                except ChatNotFound:
                    message = ChatMessageChange(
                        message.name, True, self._clock(), message.create_time_raw
                    ).tombstone()
            current.append(message)
        return current

    def _bridge_events(
        self,
        mapping: SpaceMapping,
        space: ChatSpace,
        messages: Sequence[ChatMessage],
        result: PollResult,
    ) -> bool:
        """Plan and apply `messages` of `space`; False when one must be tried again later."""
        category_id = self._category_for(mapping, space)
        if self._overtaken(messages):
            logger.info("an event of %s overtook an earlier one: reading the space", space.name)
            self._poll_space(mapping, self._chat.get_space(space.name), result, force=True)
        # Unlinked messages the poll has passed were left alone on purpose (before the initial
        # history, or skipped): an edit event of one must not bring it now. Without a cursor
        # every event is of a message newer than the subscription, so new.
        cursor = self._store.chat_poll_state(space.name, "room").last_message_time
        new_after = parse_rfc3339(cursor) - CURSOR_OVERLAP if cursor is not None else None
        for action in self._plan(space, messages, new_after):
            if self._stop.is_set():
                return False
            if not self._apply(action, space, category_id, result):
                return False
        return True

    def _overtaken(self, messages: Sequence[ChatMessage]) -> bool:
        """True if a new reply's thread has no topic and its first message is not here."""
        starters = {thread_of(m) for m in messages if not m.thread_reply}
        return any(
            m.thread_reply
            and m.delete_time is None
            and thread_of(m) not in starters
            and self._store.message_link_by_message(m.name) is None
            and self._store.topic_for_thread(thread_of(m)) is None
            for m in messages
        )

    def _poll_space(
        self, mapping: SpaceMapping, space: ChatSpace, result: PollResult, *, force: bool = False
    ) -> None:
        now = self._clock()
        window_start = now - self._config.sync.edit_window
        # Edits and deletions do not move lastActiveTime: a space whose last message is within
        # the edit window is asked for them (at most every edit_scan_interval_seconds); one quiet
        # for longer costs no request.
        recent = (
            self._config.sync.edit_window > timedelta(0)
            and space.last_active_time is not None
            and space.last_active_time >= window_start
        )
        # A moved lastActiveTime is always read, even when the move is the bridge's own write
        # from Discourse: a person may have written just before it, and must not wait for a
        # later scan. Chat allows 15 reads a second per space against 1 write, so the read that
        # follows each bridge write is cheap; a late message is not.
        poll = self._store.chat_poll_state(space.name, "room")
        unchanged = poll.unchanged(space.last_active_time)
        last_scan = self._edit_scans.get(space.name)
        scan_every = timedelta(seconds=self._config.sync.edit_scan_interval_seconds)
        scan_due = recent and (last_scan is None or now - last_scan >= scan_every)
        if force:
            unchanged = False  # an event says there is something to read
        if unchanged and not scan_due:
            return  # nothing new, and no edit scan due: no request at all
        category_id = self._category_for(mapping, space)
        after = created_after(poll.last_message_time, self._config.sync.initial_history, now)
        by_name: dict[str, ChatMessage] = {}
        try:
            if not unchanged:
                result.spaces_read += 1
                for message in self._chat.list_messages(
                    space.name, created_after=after, show_deleted=True
                ):
                    by_name[message.name] = message
            if scan_due:
                since = window_start if last_scan is None else max(window_start, last_scan)
                for message in self._changed_messages(space, since - EDIT_SCAN_OVERLAP):
                    by_name.setdefault(message.name, message)
                self._edit_scans[space.name] = now
        except ChatAuthError as exc:
            raise CycleAborted(f"Google refused the credentials: {exc}") from exc
        messages = sorted(by_name.values(), key=lambda m: m.create_time)
        new_after = parse_rfc3339(after) if after is not None else None
        for action in self._plan(space, messages, new_after):
            if self._stop.is_set():
                return
            if not self._apply(action, space, category_id, result):
                return  # transient failure: keep order, try again next cycle
            if isinstance(action, CreateTopic | CreateReply | Skip):
                # Only new messages move the cursor (edits are of older ones).
                self._store.set_chat_poll_cursor(
                    space.name, "room", action.message.create_time_raw
                )
        if space.last_active_time is not None or not messages:
            # Google gives a space without messages no lastActiveTime (None); that is remembered
            # too, so that idle cycles do not read it again (a first message sets the time).
            self._store.mark_chat_poll_read(space.name, "room", space.last_active_time)

    def _plan(
        self, space: ChatSpace, messages: Sequence[ChatMessage], new_after: datetime | None
    ) -> list[Action]:
        """`plan` with what it needs resolved from the store (links, threads with a topic, the
        bridge's identity, renderings of edited messages): the poll's and the events' step."""
        links: dict[str, MessageLink] = {}
        for m in messages:
            link = self._store.message_link_by_message(m.name)
            if link is not None:
                links[m.name] = link
        threads = {
            thread_of(m)
            for m in messages
            if self._store.topic_for_thread(thread_of(m)) is not None
        }
        return plan(
            messages,
            linked_messages=links.keys(),
            linked_threads=threads,
            space_label=space.display_name or space.name,
            bridge=self._bridge(messages, links),
            links=links,
            rendered=self._render_for_comparison(messages, links, space),
            new_after=new_after,
        )

    def _bridge(
        self, messages: Iterable[ChatMessage], links: Mapping[str, MessageLink]
    ) -> origin.BridgeIdentity:
        """Who the bridge is in Chat: its keyed ids and the account its creates showed.

        Not learnt yet (after an upgrade: only the DM sync learnt it before), a listed message
        that the store links as the bridge's own write (origin "discourse") tells it, so that
        the unlinked later parts of old long posts are still known as the bridge's; the
        bridge's next create confirms or corrects it.
        """
        account = self._store.get_status(StatusKey.BRIDGE_ACCOUNT)
        if account is None:
            account = next(
                (
                    m.sender.name
                    for m in messages
                    if m.sender.name and m.name in links and links[m.name].origin == "discourse"
                ),
                None,
            )
            if account is not None:
                self._store.set_status(StatusKey.BRIDGE_ACCOUNT, account)
                logger.info("the bridge runs as Google user %s (its linked messages say)", account)
        return origin.BridgeIdentity.running_as(
            self._ids, account, self._store.delegated_senders()
        )

    def _changed_messages(self, space: ChatSpace, since: datetime) -> list[ChatMessage]:
        """Mirrored messages of `space` edited or deleted after `since`, as they are now.

        One `spaceEvents.list` request finds them, however many messages the space holds (a
        re-read of the edit window read every one of them); each edited message that the bridge
        mirrored is then fetched in Chat markup. Unmirrored ones are left to the poll.
        """
        oldest = self._clock() - MAX_EVENT_AGE
        latest: dict[str, ChatMessageChange] = {}
        for change in self._chat.list_message_changes(space.name, since=max(since, oldest)):
            latest[change.message_name] = change
        found: list[ChatMessage] = []
        for name, change in latest.items():
            if self._store.message_link_by_message(name) is None:
                continue
            if change.deleted:
                found.append(change.tombstone())
                continue
            try:
                found.append(self._chat.get_message(name))
            except ChatNotFound:
                found.append(change.tombstone())  # deleted since the event
        return found

    def _render_for_comparison(
        self, messages: Iterable[ChatMessage], links: Mapping[str, MessageLink], space: ChatSpace
    ) -> dict[str, str]:
        """Resolved before `plan`: the text part of each compared message's post, rendered now.

        Only the linked messages whose edits `plan` compares (`needs_rendering`). The author
        matters only for the attribution line, so it is looked up read-only (`known_author`):
        a comparison never creates an account or writes the store, and an author who still has
        none is compared as the post was written, as the API user with the attribution line.
        """
        rendered: dict[str, str] = {}
        for message in messages:
            link = links.get(message.name)
            if link is not None and needs_rendering(message, link):
                author = self._users.known_author(message.sender, space.name)
                rendered[message.name] = render_text(message, author, self._mention_lookup)
        return rendered

    def _category_for(self, mapping: SpaceMapping, space: ChatSpace) -> int:
        if mapping.discourse_category_id is not None:
            return mapping.discourse_category_id
        parent = mapping.discourse_parent_category_id
        known = self._store.category_for_space(space.name)
        if known is not None:
            return known
        name = (space.display_name or space.name)[:50]
        category: DiscourseCategory | None
        try:
            category = self._discourse.create_category(name, parent_category_id=parent)
        except DiscourseRejected:
            # Most likely the name is taken under this parent (an earlier run that crashed before
            # storing the link, or an operator-made category): adopt it.
            category = next(
                (
                    c
                    for c in self._discourse.list_categories()
                    if c.parent_category_id == parent and c.name.lower() == name.lower()
                ),
                None,
            )
            if category is None:
                raise
        self._store.set_category_for_space(space.name, category.id)
        logger.info("space %s -> subcategory %d under %s", space.name, category.id, parent)
        return category.id

    # -- one action

    def _apply(
        self, action: Action, space: ChatSpace, category_id: int, result: PollResult
    ) -> bool:
        """Perform one action; False when the space must stop for this cycle."""
        message = action.message
        if isinstance(action, Skip):
            logger.debug("skip %s: %s", message.name, action.reason)
            result.skipped += 1
            return True
        failure = self._store.failure_for(DIRECTION, message.name)
        if failure is not None and failure.parked:
            # Parked: `status` lists it and `retry` brings it back (rewinding the cursor); it
            # must not hold back the messages after it.
            logger.debug("skip %s: parked (%s)", message.name, failure.last_error)
            return True
        if failure is not None and failure.next_attempt_at > self._clock():
            return False  # waiting for its retry: later messages of the space wait behind it
        try:
            if isinstance(action, EditPost):
                self._edit(action)
            elif isinstance(action, DeletePost):
                self._delete(action)
            else:
                self._mirror_or_refuse(action, space, category_id, result)
        except DiscourseAuthError as exc:
            if exc.credentials_invalid:
                # Only a bad key stops the cycle: nothing else could be written either.
                raise CycleAborted(f"Discourse refused the API key: {exc}") from exc
            # The acting user or this action is refused (a guardian check): this item only.
            self._park(message.name, f"Discourse refused it: {exc}", result)
            return True
        except _RefusedAuthor as refused:
            self._park(message.name, refused.reason, result)
            return True
        except ChatAuthError as exc:
            raise CycleAborted(f"Google refused the credentials: {exc}") from exc
        except DiscourseRejected as exc:
            self._store.record_failure(
                DIRECTION,
                message.name,
                f"Discourse refused it: {exc}",
                max_attempts=1,
                next_attempt_at=self._clock(),
            )
            logger.error("parked %s: Discourse refused it: %s", message.name, exc)
            result.parked += 1
            return True
        except (DiscourseUnavailable, ChatError) as exc:
            failure = self._store.record_failure(
                DIRECTION,
                message.name,
                str(exc),
                max_attempts=self._config.sync.max_attempts,
                next_attempt_at=self._clock() + RETRY_BASE_DELAY,
            )
            if failure.parked:
                logger.error(
                    "parked %s after %d attempts: %s", message.name, failure.attempts, exc
                )
                result.parked += 1
                return True
            result.errors.append(f"{message.name}: {exc}")
            logger.warning("will retry %s (attempt %d): %s", message.name, failure.attempts, exc)
            return False
        self._store.clear_failure(DIRECTION, message.name)
        result.mirrored += 1
        return True

    def _park(self, gchat_message_name: str, reason: str, result: PollResult) -> None:
        self._store.record_failure(
            DIRECTION,
            gchat_message_name,
            reason,
            max_attempts=1,
            next_attempt_at=self._clock(),
        )
        logger.error("parked %s: %s", gchat_message_name, reason)
        result.parked += 1

    def _mirror_or_refuse(
        self,
        action: CreateTopic | CreateReply,
        space: ChatSpace,
        category_id: int,
        result: PollResult,
    ) -> None:
        """Mirror as the author; if Discourse refuses the author's account, park or attribute.

        Discourse answers the generic 403 `invalid_access` when the impersonated user is
        suspended or deactivated (default_current_user_provider.rb), and a silenced user may
        not post: one person's account must never stop anyone else's messages.
        """
        message = action.message
        try:
            author = self._users.author_for(message.sender, space.name)
        except IdentityConflict as conflict:
            # The forum has two answers for who the author is: parked whatever `refused_authors`
            # says, since a post made as the API user would stay so once a person settles it.
            raise _RefusedAuthor(conflict.reason) from conflict
        try:
            self._mirror(action, space, category_id, author)
        except DiscourseRejected as exc:
            if author.attribution is not None:
                raise  # already the API user
            if isinstance(exc, DiscourseAuthError):
                if exc.credentials_invalid:
                    raise
                why = "suspended, deactivated or silenced?"
            else:
                # A silenced user's reply is refused with a generic 422: ask who they are
                # now (one request, only on a refusal) to tell it from a bad post.
                user = self._discourse.get_user(author.discourse_username)
                refusal = user.refusal(self._clock()) if user is not None else None
                if refusal is None:
                    raise
                why = refusal
            reason = (
                f"Discourse refused the account @{author.discourse_username} of "
                f"{message.sender.display_name or message.sender.name} ({why}): {exc}"
            )
            if self._config.sync.refused_authors != "post_as_bridge":
                raise _RefusedAuthor(reason) from exc
            logger.warning("%s; posting %s as the API user instead", reason, message.name)
            self._mirror(
                action,
                space,
                category_id,
                self._users.bridge_author_for(message.sender, space.name),
            )

    def _mirror(
        self,
        action: CreateTopic | CreateReply,
        space: ChatSpace,
        category_id: int,
        author: Author,
    ) -> None:
        message = action.message
        raw = render_post(
            message, author, self._mention_lookup, self._attachments_markdown(message, author)
        )
        topic_id = self._store.topic_for_thread(action.gchat_thread_name)
        if topic_id is None:
            self._create_topic(action, author, raw, category_id, space)
        else:
            self._create_reply(message, action.gchat_thread_name, topic_id, author, raw)

    def _create_topic(
        self,
        action: CreateTopic | CreateReply,
        author: Author,
        raw: str,
        category_id: int,
        space: ChatSpace,
    ) -> None:
        message = action.message
        external_id = origin.external_id_for_thread(action.gchat_thread_name)
        if self._store.has_pending_write(message.name):
            topic = self._discourse.find_topic_by_external_id(external_id)
            if topic is not None and topic.post_ids:
                first = self._discourse.get_post(topic.post_ids[0])
                if self._is_copy(first, message.name, author):
                    logger.info("reconciled %s with existing topic %d", message.name, topic.id)
                    self._link(message, action.gchat_thread_name, topic.id, first.id, raw)
                    return
                # Not what the bridge writes: never adopted (creating under the same
                # external_id is then refused and parked, for an operator to look at).
                logger.warning(
                    "topic %d holds the external_id of %s but is not its copy (post %d by @%s)",
                    topic.id,
                    message.name,
                    first.id,
                    first.username,
                )
        self._store.begin_write(message.name)
        post = self._discourse.create_topic(
            title=action.title,
            raw=raw,
            category_id=category_id,
            external_id=external_id,
            created_at=message.create_time,
            as_user=author.discourse_username,
        )
        self._link(message, action.gchat_thread_name, post.topic_id, post.id, raw)
        logger.info("mirrored %s -> topic %d (post %d)", message.name, post.topic_id, post.id)

    def _create_reply(
        self, message: ChatMessage, gchat_thread_name: str, topic_id: int, author: Author, raw: str
    ) -> None:
        if self._store.has_pending_write(message.name):
            post_id = self._find_marked_post(topic_id, message.name, author)
            if post_id is not None:
                logger.info("reconciled %s with existing post %d", message.name, post_id)
                self._link(message, gchat_thread_name, topic_id, post_id, raw)
                return
        self._store.begin_write(message.name)
        post = self._discourse.create_post(
            topic_id=topic_id,
            raw=raw,
            created_at=message.create_time,
            as_user=author.discourse_username,
        )
        self._link(message, gchat_thread_name, topic_id, post.id, raw)
        logger.info("mirrored %s -> post %d in topic %d", message.name, post.id, topic_id)

    def _find_marked_post(
        self, topic_id: int, gchat_message_name: str, author: Author
    ) -> int | None:
        """The post among the topic's last ones that is the copy of the message (`_is_copy`)."""
        try:
            topic = self._discourse.get_topic(topic_id)
        except DiscourseNotFound:
            return None
        recent = list(topic.post_ids[-RECONCILE_WINDOW:])
        if not recent:
            return None
        for post in self._discourse.get_topic_posts(topic_id, recent):
            if self._is_copy(post, gchat_message_name, author):
                return post.id
        return None

    def _is_copy(self, post: DiscoursePost, gchat_message_name: str, author: Author) -> bool:
        """Whether `post` is what the bridge writes for the message: the raw ends with its
        marker, and the post is by `author` or by the API user (an attribution, or a refused
        author's fallback). Anyone can type a marker; nobody else writes as these accounts."""
        expected = (author.discourse_username, self._config.discourse.api_username)
        return origin.copied_from(post.raw, post.username, expected) == gchat_message_name

    def _link(
        self, message: ChatMessage, gchat_thread_name: str, topic_id: int, post_id: int, raw: str
    ) -> None:
        with self._store.transaction():
            if self._store.topic_for_thread(gchat_thread_name) is None:
                self._store.link_thread(gchat_thread_name, topic_id, message.space_name)
            self._store.link_message(
                message.name,
                post_id,
                gchat_thread_name=gchat_thread_name,
                discourse_topic_id=topic_id,
                origin="gchat",
                content_hash=origin.content_hash(origin.text_part_of_raw(raw)),
            )
            self._store.finish_write(message.name)

    # -- edits and deletions

    def _edit(self, action: EditPost) -> None:
        message, link = action.message, action.link
        embeds = ""
        if message.attachments:
            # The embeds were made once, at creation: keep them as the post has them.
            current = self._discourse.get_post(link.discourse_post_id)
            embeds = origin.attachments_part_of_raw(current.raw or "")
        raw = compose_raw(action.text, embeds, message.name)
        try:
            self._discourse.update_post(link.discourse_post_id, raw, edit_reason=EDIT_REASON)
        except DiscourseNotFound:
            # Deleted in Discourse meanwhile: nothing to edit, and never a new post.
            logger.info(
                "edit of %s not mirrored: post %d is gone", message.name, link.discourse_post_id
            )
            return
        self._store.update_content_hash(message.name, origin.content_hash(action.text))
        logger.info("mirrored edit of %s -> post %d", message.name, link.discourse_post_id)

    def _delete(self, action: DeletePost) -> None:
        link = action.link
        in_topic = self._store.message_links_in_topic(link.discourse_topic_id)
        is_first = bool(in_topic) and in_topic[0].discourse_post_id == link.discourse_post_id
        if is_first and len(in_topic) > 1:
            # Deleting post #1 would delete the topic, and the thread's other messages live on.
            note = f"{DELETED_FIRST_POST}\n\n{origin.origin_marker(link.gchat_message_name)}"
            try:
                self._discourse.update_post(
                    link.discourse_post_id, note, edit_reason="deleted in Google Chat"
                )
            except DiscourseNotFound:
                pass
            self._store.update_content_hash(link.gchat_message_name, DELETED_HASH)
            logger.info(
                "first post %d of thread %s replaced by a deletion note",
                link.discourse_post_id,
                link.gchat_thread_name,
            )
            return
        self._delete_post(link.discourse_post_id)
        if is_first:
            self._store.unlink_thread(link.gchat_thread_name)
        else:
            self._store.unlink_message(link.gchat_message_name)
        logger.info(
            "mirrored deletion of %s: post %d deleted",
            link.gchat_message_name,
            link.discourse_post_id,
        )
        rest = self._store.message_links_in_topic(link.discourse_topic_id)
        if len(rest) == 1 and rest[0].content_hash == DELETED_HASH:
            # The thread's last message is gone: now its first post, and the topic, can go.
            self._delete_post(rest[0].discourse_post_id)
            self._store.unlink_thread(rest[0].gchat_thread_name)
            logger.info(
                "thread %s is gone: topic %d deleted",
                rest[0].gchat_thread_name,
                link.discourse_topic_id,
            )

    def _delete_post(self, discourse_post_id: int) -> None:
        try:
            # As the API user (staff): a soft delete, not an author's "marked for deletion".
            self._discourse.delete_post(discourse_post_id)
        except DiscourseNotFound:
            pass  # already gone

    # -- attachments

    def _attachments_markdown(self, message: ChatMessage, author: Author) -> str:
        embeds = [self._attachment_markdown(a, author) for a in message.attachments]
        return "\n\n".join(embed for embed in embeds if embed)

    def _attachment_markdown(self, attachment: ChatAttachment, author: Author) -> str:
        """The embed of one attachment, or a visible note saying why it is missing.

        The file is streamed through a spooled file under `max_attachment_bytes`: read from
        Chat in ranged blocks (a larger file is refused after the first), sent to Discourse
        from the file; never held in memory whole.

        Raises the transient errors (the message is retried as a whole; Discourse dedupes
        uploads by content) and credential errors.
        """
        if attachment.drive_file_id:
            return drive_markdown(attachment)
        if not attachment.resource_name:
            return failure_note(attachment, "no downloadable content")
        with tempfile.SpooledTemporaryFile(max_size=MEDIA_BLOCK) as file:
            return self._copy_attachment(attachment, attachment.resource_name, file, author)

    def _copy_attachment(
        self, attachment: ChatAttachment, resource_name: str, file: IO[bytes], author: Author
    ) -> str:
        limit = self._config.sync.max_attachment_bytes
        try:
            self._chat.download_attachment(resource_name, file, max_bytes=limit)
        except ChatTooLarge as exc:
            logger.warning("attachment %s too large: %s", attachment.name, exc)
            size = f"{exc.size / 1048576:.1f} MB" if exc.size is not None else "the file"
            return failure_note(attachment, f"{size} is over the {limit / 1048576:g} MB limit")
        except ChatRejected as exc:
            logger.warning("cannot download %s: %s", attachment.name, exc)
            return failure_note(attachment, "Google refused the download")
        filename = attachment.content_name or "attachment"
        content_type = attachment.content_type or "application/octet-stream"
        error: DiscourseRejected | None = None
        # As the author where Discourse allows it (TL0 users may not attach files), else as
        # the API user.
        for as_user in (author.discourse_username, None):
            file.seek(0)
            try:
                upload = self._discourse.upload_file(filename, file, content_type, as_user=as_user)
            except DiscourseAuthError as exc:
                if exc.credentials_invalid:
                    raise
                error = exc
            except DiscourseRejected as exc:
                error = exc
            else:
                return upload_markdown(upload, content_type)
        logger.warning("Discourse refused attachment %s: %s", attachment.name, error)
        return failure_note(attachment, f"Discourse refused it: {error}")

    def _mention_lookup(self, gchat_user_name: str) -> str | None:
        link = self._store.user_for_gchat(gchat_user_name)
        return link.discourse_username if link else None


def _is_room_mapping(mapping: SpaceMapping) -> bool:
    return (
        mapping.discourse_category_id is not None
        or mapping.discourse_parent_category_id is not None
    )
