"""Direct messages and group chats ↔ Discourse chat DM channels, both directions.

A mapping with only `google_space_id` is a DM mapping; the space's `spaceType` decides: a
DIRECT_MESSAGE or GROUP_CHAT space becomes one Discourse chat DM channel whose members are the
Discourse users of the space's human members. A SPACE mapped without a category key, or a DM
space mapped with one, is reported as an error in the cycle result and in `status`
(`last_dm_poll`), never a crash.

Invariants:
- The channel is created (or, for 1:1, found) with `create_dm_channel` acting as one participant,
  never as the API user, so the API user is never a member of anyone's DMs. Every chat read and
  write acts as a member: DM channels are invisible to others.
- Chat → Discourse: each message is sent as its author's Discourse user, oldest first; the order
  of effects is write intent → send → link (+ finish the intent) → advance the cursor.
- Crash safety without a marker: Discourse chat cooks HTML comments as visible text, so a chat
  message cannot carry the invisible origin marker posts carry. A sent message is recognised by
  (channel, author, exact text, not linked to anything): after a crash, a pending write intent
  makes the poll scan the channel's last 50 messages for the oldest unlinked message of that
  author with the very text it would send, and link it instead of sending again. Because one
  message is in flight at a time per process, at most one such message can exist; the one
  ambiguity left is the author typing the identical text in Discourse at the same moment.
- Discourse → Chat: `chat_message_created/edited/trashed` events of linked channels go through
  the inbox; each Chat copy has a client-assigned id keyed from the chat message id
  (`origin.ClientIds.for_chat_message`), so a repeat is ALREADY_EXISTS and linked (only if the
  bridge wrote the message holding the id; someone else's is left alone and the copy takes a
  stand-in id), and neither Chat poll mirrors it back (`origin.is_bridge_origin`, the one rule
  for rooms and DMs: the bridge's id form and the bridge's sender). The bridge's own account is
  learnt from the sender of what it creates, never from a message someone else wrote.
  Messages of bridge-created users, and messages linked as coming from Chat, are never
  mirrored. While a Chat → Discourse write of the space is
  unconfirmed, events of its channel wait (a transient error), so a message the bridge just sent
  cannot be taken for a human's. A copy is deleted only when Discourse, read as a member just
  before, shows the message trashed (a trash event may be a replay, or older than a restore).
- One lock per process is held around "check link → write → link" in both directions.
- Catch-up: each linked channel has a high-water chat message id (set to the channel's newest
  message when it is linked, so old history is not replayed); newer messages are enqueued into
  the inbox with the same dedupe keys as webhooks (`inbox.pulled_chat_message`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import formatting
import origin
from config_loader import SpaceMapping
from db import StatusKey
from delegation import AuthorWriters
from deps import Deps
from discourse_client import (
    DiscourseAuthError,
    DiscourseChatMessage,
    DiscourseError,
    DiscourseNotFound,
    DiscourseRejected,
    DiscourseUnavailable,
)
from google_chat_client import (
    ChatAuthError,
    ChatError,
    ChatMessage,
    ChatNotFound,
    ChatSpace,
    GoogleChatClient,
    SpaceMessageEvent,
    format_rfc3339,
    parse_rfc3339,
)
from inbox import ChatMessageEvent, PulledChatMessage, pulled_chat_message
from spaces import (
    CURSOR_OVERLAP,
    DM_SPACE_TYPES,
    RETRY_BASE_DELAY,
    EventOutcome,
    PollResult,
    fetch_spaces,
)
from users import Author, IdentityConflict
from webhook_listener import CHAT_EVENTS

logger = logging.getLogger(__name__)

DIRECTION = "gchat_dm_to_discourse"
# The chat events carried to Chat: all the webhook takes in but `chat_message_restored`. Trashing
# deletes the Chat copy (Chat has no undelete) and drops its link, so a restore has nothing to
# bring back; the message stays deleted in Chat.
BRIDGED_CHAT_EVENTS = frozenset(CHAT_EVENTS) - {"chat_message_restored"}
RECONCILE_WINDOW = 50  # Discourse's maximum chat page
CHAT_PAGE_SIZE = 50  # a page of the channel's messages (Discourse's maximum)


# ---------------------------------------------------------------------------- pure


def is_dm_mapping(mapping: SpaceMapping) -> bool:
    """A mapping without category keys asks for a DM channel."""
    return mapping.discourse_category_id is None and mapping.discourse_parent_category_id is None


def mapping_problem(mapping: SpaceMapping, space: ChatSpace) -> str | None:
    """Why `mapping` does not fit its fetched `space`, or None when it does."""
    if is_dm_mapping(mapping) and space.space_type not in DM_SPACE_TYPES:
        return (
            f"{space.name} is a {space.space_type or 'space of unknown type'}: a room space "
            "needs discourse_category_id or discourse_parent_category_id in its mapping"
        )
    if not is_dm_mapping(mapping) and space.space_type in DM_SPACE_TYPES:
        return (
            f"{space.name} is a {space.space_type}: it becomes a Discourse chat channel, so its "
            "mapping must not have discourse_category_id or discourse_parent_category_id"
        )
    return None


@dataclass(frozen=True, slots=True)
class SendToChannel:
    message: ChatMessage


@dataclass(frozen=True, slots=True)
class SkipMessage:
    message: ChatMessage
    reason: str


DmAction = SendToChannel | SkipMessage


def plan_dm(
    messages: Sequence[ChatMessage], *, linked: Iterable[str], bridge: origin.BridgeIdentity
) -> list[DmAction]:
    """What to do with each listed DM message, oldest first. No I/O."""
    done = set(linked)
    actions: list[DmAction] = []
    for message in sorted(messages, key=lambda m: m.create_time):
        if message.name in done:
            continue
        if origin.is_bridge_origin(message, bridge):
            actions.append(SkipMessage(message, "written by the bridge"))
        elif message.delete_time is not None:
            actions.append(SkipMessage(message, "deleted in Chat"))
        elif message.sender.type == "BOT":
            actions.append(SkipMessage(message, "written by a Chat app"))
        else:
            actions.append(SendToChannel(message))
    return actions


def render_chat_message(
    message: ChatMessage,
    attribution: str | None,
    mention_lookup: Callable[[str], str | None],
) -> str:
    """The Discourse chat text for a Chat message (markdown; attribution only when needed).

    The same conversion as topic posts (sync_gchat_to_discourse.render_text): from
    formattedText, which keeps the mentions and link targets that the plain `text` has lost.
    """
    body = formatting.gchat_to_discourse_markdown(
        message.markup,
        mention_lookup=mention_lookup,
        display_name_lookup=message.mention_display_name,
    ).strip()
    body = body or formatting.NO_TEXT
    return f"{attribution}\n{body}" if attribution else body


def render_for_gchat(
    message: str,
    *,
    display_name: str | None,
    username: str,
    attributed: bool,
    base_url: str,
    mention_lookup: Callable[[str], str | None],
    attribution_format: str | None = None,
) -> str:
    """The Chat text for a Discourse chat message, with the attribution line when wanted."""
    body = formatting.discourse_to_gchat_text(
        message, base_url=base_url, mention_lookup=mention_lookup
    ).strip()
    header = formatting.attribution_line(display_name, username, attribution_format)
    text = f"{header}\n{body}" if attributed else body
    parts = formatting.split_for_limit(text or "…", formatting.CHAT_MAX_BYTES)
    return parts[0]


# ---------------------------------------------------------------------------- I/O


class _Waiting(DiscourseUnavailable):
    """An event must wait for an unconfirmed write of its channel (retried by the inbox)."""


class DmSync:
    """Both directions for DM and group-chat spaces; one instance per process."""

    def __init__(
        self,
        deps: Deps,
        *,
        bridge_account: str | None = None,
    ) -> None:
        store = deps.store
        self._config = deps.config
        self._store = store
        self._chat = deps.chat
        self._discourse = deps.discourse
        self._users = deps.users
        self._clock = deps.clock
        self._stop = deps.stop
        self._ids = origin.ClientIds(store.client_id_key())
        self._authors = AuthorWriters(deps.delegation, deps.discourse, deps.chat, store)
        # Held around "check link -> write -> link" in both directions (webhook worker, poll).
        self._lock = threading.RLock()
        self._display_names: dict[str, str | None] = {}
        # The spaces the last listing returned, so that an event needs no spaces.get.
        self._known_spaces: dict[str, ChatSpace] = {}
        self._inbox = deps.inbox
        # Messages the catch-up pull read, by id, until the worker handles their inbox rows (the
        # rows hold ids only: the typed record is handed over here, not through JSON).
        self._pulled: dict[int, DiscourseChatMessage] = {}
        self._pulled_lock = threading.Lock()
        if bridge_account:
            store.set_status(StatusKey.BRIDGE_ACCOUNT, bridge_account)

    # -- the bridge's own Google account

    def bridge_account(self) -> str | None:
        """The Google user the bridge runs as, once learnt (the sender of its own messages)."""
        return self._store.get_status(StatusKey.BRIDGE_ACCOUNT)

    def _bridge(self) -> origin.BridgeIdentity:
        return origin.BridgeIdentity.running_as(
            self._ids, self.bridge_account(), self._store.delegated_senders()
        )

    def _learn_bridge_account(self, message: ChatMessage) -> None:
        """From a message the bridge created (or adopted as its own): its sender is the bridge."""
        sender = message.sender.name
        if sender and sender != self.bridge_account():
            self._store.set_status(StatusKey.BRIDGE_ACCOUNT, sender)
            logger.info("the bridge runs as Google user %s", sender)

    def _needs_attribution(self, discourse_username: str) -> bool:
        account = self.bridge_account()
        if account is None:
            return True
        link = self._store.user_for_gchat(account)
        return link is None or link.discourse_username.lower() != discourse_username.lower()

    # -- Chat -> Discourse

    def poll_once(self, listing: Iterable[ChatSpace] | None = None) -> PollResult:
        """One cycle over every DM mapping; also reports mappings that do not fit their space."""
        with self._lock:
            started = time.monotonic()
            result = PollResult()
            try:
                self._poll(result, listing)
            except ChatAuthError as exc:
                result.errors.append(f"Google refused the credentials: {exc}")
            except DiscourseAuthError as exc:
                result.errors.append(f"Discourse refused the API key: {exc}")
            duration = time.monotonic() - started
            self._store.set_status(
                StatusKey.LAST_DM_POLL, result.status_json(self._clock(), duration)
            )
            if result.spaces_checked or result.errors:
                result.log(logger, "DM poll", duration)
            for error in result.errors:
                logger.error("DM poll: %s", error)
            return result

    def _poll(self, result: PollResult, listing: Iterable[ChatSpace] | None) -> None:
        mappings = list(self._config.mappings)
        if not any(is_dm_mapping(m) for m in mappings):
            return
        try:
            spaces, problems = fetch_spaces(
                self._chat, {m.google_space_id for m in mappings}, listing
            )
        except ChatAuthError:
            raise
        except ChatError as exc:
            result.errors.append(f"cannot list Chat spaces: {exc}")
            return
        result.errors.extend(problems)
        for mapping in mappings:
            if self._stop.is_set():
                return
            space = spaces.get(mapping.google_space_id)
            if space is None:
                continue
            self._known_spaces[space.name] = space
            problem = mapping_problem(mapping, space)
            if problem is not None:
                result.errors.append(problem)
                continue
            if not is_dm_mapping(mapping):
                continue
            result.spaces_checked += 1
            try:
                self._poll_space(space, result)
            except (ChatAuthError, DiscourseAuthError):
                raise
            except (ChatError, DiscourseError) as exc:
                result.errors.append(f"{space.name}: {exc}")
                logger.warning("DM poll of %s stopped: %s", space.name, exc)
            except Exception as exc:  # per-item boundary: one space must not stop the others
                result.errors.append(f"{space.name}: {exc!r}")
                logger.exception("DM poll of %s failed", space.name)

    def handle_events(self, space_name: str, events: Sequence[SpaceMessageEvent]) -> EventOutcome:
        """Message events of one DM space: a new message reads the space from its cursor.

        DMs carry only new messages across (no edits or deletions), so an event is a prompt to
        do at once what the poll would do at its next cycle, through the same code: the
        space's messages after the cursor, in order, each once.
        """
        if not any(
            is_dm_mapping(m) and m.google_space_id == space_name for m in self._config.mappings
        ):
            return EventOutcome.IGNORED
        new = [
            e.message
            for e in events
            if e.message.delete_time is None
            and self._store.chat_message_link_by_message(e.message.name) is None
        ]
        if not new:
            return EventOutcome.DONE
        result = PollResult()
        with self._lock:
            try:
                space = self._known_spaces.get(space_name) or self._chat.get_space(space_name)
                self._known_spaces[space_name] = space
                if space.space_type not in DM_SPACE_TYPES:
                    return EventOutcome.IGNORED
                self._poll_space(space, result, force=True)
            except (ChatError, DiscourseError) as exc:
                logger.warning("events of DM %s wait: %s", space_name, exc)
                return EventOutcome.RETRY
            cursor = self._store.chat_poll_state(space_name, "dm").last_message_time
        passed = cursor is not None and all(
            parse_rfc3339(cursor) >= m.create_time
            or self._store.chat_message_link_by_message(m.name) is not None
            for m in new
        )
        return EventOutcome.DONE if passed else EventOutcome.RETRY

    def _poll_space(self, space: ChatSpace, result: PollResult, *, force: bool = False) -> None:
        poll = self._store.chat_poll_state(space.name, "dm")
        if (
            not force
            and space.last_active_time is not None
            and poll.unchanged(space.last_active_time)
        ):
            return
        cursor = poll.last_message_time
        after = format_rfc3339(parse_rfc3339(cursor) - CURSOR_OVERLAP) if cursor else None
        result.spaces_read += 1
        messages = list(self._chat.list_messages(space.name, created_after=after))
        links = {
            m.name: link
            for m in messages
            if (link := self._store.chat_message_link_by_message(m.name)) is not None
        }
        if self.bridge_account() is None:
            # Not learnt yet: a message the store links as the bridge's own write tells it
            # (the next create confirms or corrects it); never one that merely looks like it.
            for m in messages:
                if m.sender.name and m.name in links and links[m.name].origin == "discourse":
                    self._learn_bridge_account(m)
                    break
        actions = plan_dm(messages, linked=links.keys(), bridge=self._bridge())
        channel_id: int | None = None
        for action in actions:
            if self._stop.is_set():
                return
            if isinstance(action, SkipMessage):
                logger.debug("skip %s: %s", action.message.name, action.reason)
                result.skipped += 1
            else:
                if channel_id is None:
                    channel_id = self._channel_or_park(space, action.message, result)
                if channel_id is not None and not self._apply(
                    action.message, space, channel_id, result
                ):
                    return  # transient failure: keep the order, try again next cycle
            self._store.set_chat_poll_cursor(space.name, "dm", action.message.create_time_raw)
        if space.last_active_time is not None:
            self._store.mark_chat_poll_read(space.name, "dm", space.last_active_time)

    def _channel_or_park(
        self, space: ChatSpace, message: ChatMessage, result: PollResult
    ) -> int | None:
        """The DM's channel, made on first use; None when `message` is (or now gets) parked.

        A member whose forum account has two answers (IdentityConflict) stops the channel from
        being made, its members would be a guess: each message of the DM is parked with the
        reason until a person settles it (`retry` then brings them back).
        """
        failure = self._store.failure_for(DIRECTION, message.name)
        if failure is not None and failure.parked:
            return None  # `_apply` would skip it: no channel is needed for it
        try:
            return self.ensure_channel(space)
        except IdentityConflict as conflict:
            self._park(message, conflict.reason, result)
            return None

    def _park(self, message: ChatMessage, reason: str, result: PollResult) -> None:
        self._store.record_failure(
            DIRECTION, message.name, reason, max_attempts=1, next_attempt_at=self._clock()
        )
        logger.error("parked %s: %s", message.name, reason)
        result.parked += 1

    def ensure_channel(self, space: ChatSpace) -> int:
        """The DM channel of `space`, created (as a participant) and linked on first use.

        Raises:
            IdentityConflict: a member's forum account has two answers (nothing is created).
        """
        known = self._store.channel_for_space(space.name)
        if known is not None:
            return known
        members = [m for m in self._chat.list_members(space.name) if m.type != "BOT"]
        usernames: dict[str, str] = {}
        for member in sorted(members, key=lambda m: m.name):
            author = self._users.author_for(member, space.name)
            if author.attribution is not None:
                logger.warning(
                    "%s has no Discourse account; not a member of the channel of %s",
                    member.name,
                    space.name,
                )
                continue
            usernames[member.name] = author.discourse_username
        if not usernames:
            raise DiscourseRejected(f"no member of {space.name} has a Discourse account")
        # Act as the bridge's own person when known (stable), else the first participant; never
        # as the API user, who would otherwise sit in everyone's DMs.
        account = self.bridge_account()
        acting = usernames.get(account or "") or next(iter(usernames.values()))
        targets = sorted({u for u in usernames.values() if u != acting}) or [acting]
        channel_id = self._discourse.create_dm_channel(targets, as_user=acting)
        # History already in the channel (a reused 1:1 DM) is not replayed into Chat.
        page = self._discourse.list_chat_messages(channel_id, as_user=acting)
        newest = max((m.id for m in page), default=0)
        with self._store.transaction():
            self._store.link_dm_channel(space.name, channel_id)
            self._store.set_dm_channel_reader(channel_id, acting)
            if self._store.dm_channel_state(channel_id).high_water is None:
                self._store.set_dm_channel_high_water(channel_id, newest)
        logger.info(
            "space %s -> chat channel %d (members %s)",
            space.name,
            channel_id,
            ", ".join(sorted(usernames.values())),
        )
        return channel_id

    def _apply(
        self, message: ChatMessage, space: ChatSpace, channel_id: int, result: PollResult
    ) -> bool:
        """Send one message; False when the space must stop for this cycle."""
        failure = self._store.failure_for(DIRECTION, message.name)
        if failure is not None and failure.parked:
            return True  # `status` lists it, `retry` resends it; it holds back nothing
        if failure is not None and failure.next_attempt_at > self._clock():
            return False
        try:
            self._send_or_attribute(message, space, channel_id)
        except IdentityConflict as conflict:
            self._park(message, conflict.reason, result)
            return True
        except DiscourseRejected as exc:
            if isinstance(exc, DiscourseAuthError) and exc.credentials_invalid:
                raise
            # A refused author's account (suspended, deactivated, silenced) or a refused message:
            # park this message only; the others of the channel go on.
            refused = "the author's account" if isinstance(exc, DiscourseAuthError) else "it"
            reason = f"Discourse refused {refused}: {exc}"
            self._store.record_failure(
                DIRECTION, message.name, reason, max_attempts=1, next_attempt_at=self._clock()
            )
            logger.error("parked %s: %s", message.name, reason)
            result.parked += 1
            return True
        except (DiscourseUnavailable, ChatError) as exc:
            if isinstance(exc, ChatAuthError):
                raise
            failure = self._store.record_failure(
                DIRECTION,
                message.name,
                str(exc),
                max_attempts=self._config.sync.max_attempts,
                next_attempt_at=self._clock() + RETRY_BASE_DELAY,
            )
            if failure.parked:
                result.parked += 1
                return True
            result.errors.append(f"{message.name}: {exc}")
            return False
        self._store.clear_failure(DIRECTION, message.name)
        result.mirrored += 1
        return True

    def _send_or_attribute(self, message: ChatMessage, space: ChatSpace, channel_id: int) -> None:
        author = self._users.author_for(message.sender, space.name)
        try:
            self._send(message, channel_id, author)
        except DiscourseAuthError as exc:
            if (
                exc.credentials_invalid
                or author.attribution is not None
                or self._config.sync.refused_authors != "post_as_bridge"
            ):
                raise
            logger.warning(
                "Discourse refused @%s (%s); sending %s attributed instead",
                author.discourse_username,
                exc,
                message.name,
            )
            self._send(
                message, channel_id, self._users.bridge_author_for(message.sender, space.name)
            )

    def _send(self, message: ChatMessage, channel_id: int, author: Author) -> None:
        reader = self._store.dm_channel_state(channel_id).reader
        # A person without an account is written by the channel's creator, with attribution.
        as_user = author.discourse_username if author.attribution is None else reader
        if as_user is None:
            raise DiscourseRejected(f"no member of channel {channel_id} to write as")
        text = render_chat_message(message, author.attribution, self._mention_lookup)
        if self._store.has_pending_write(message.name):
            found = self._find_sent(channel_id, as_user, text)
            if found is not None:
                logger.info("reconciled %s with chat message %d", message.name, found)
                self._link(message, channel_id, found, text)
                return
        self._store.begin_write(message.name)
        chat_message_id = self._discourse.send_chat_message(channel_id, text, as_user=as_user)
        self._link(message, channel_id, chat_message_id, text)
        logger.info("mirrored %s -> chat message %d", message.name, chat_message_id)

    def _find_sent(self, channel_id: int, as_user: str, text: str) -> int | None:
        recent = self._discourse.list_chat_messages(
            channel_id, page_size=RECONCILE_WINDOW, as_user=as_user
        )
        for candidate in recent:
            if (
                candidate.username.lower() == as_user.lower()
                and candidate.deleted_at is None
                and candidate.message == text
                and self._store.message_for_chat_message(candidate.id) is None
            ):
                return candidate.id
        return None

    def _link(
        self, message: ChatMessage, channel_id: int, chat_message_id: int, text: str
    ) -> None:
        with self._store.transaction():
            self._store.link_chat_message(
                message.name,
                chat_message_id,
                gchat_space_name=message.space_name,
                discourse_channel_id=channel_id,
                origin="gchat",
                content_hash=origin.content_hash(text),
            )
            self._store.finish_write(message.name)

    def _mention_lookup(self, gchat_user_name: str) -> str | None:
        link = self._store.user_for_gchat(gchat_user_name)
        return link.discourse_username if link else None

    # -- Discourse -> Chat

    def handle_event(self, event: ChatMessageEvent | PulledChatMessage) -> None:
        """Carry out one stored chat-channel event (the inbox worker sorts the exceptions).

        Raises:
            ChatError, DiscourseError: from the clients (retried or dead-lettered).
        """
        if isinstance(event, PulledChatMessage):
            message = self._pulled_message(event)
            if message is None:
                return
            event = ChatMessageEvent("created", message, event.channel_id, None)
        if f"chat_message_{event.kind}" not in BRIDGED_CHAT_EVENTS:
            logger.debug("chat event %s not bridged", event.kind)
            return
        space = self._store.space_for_channel(event.channel_id)
        if space is None:
            logger.debug("chat channel %d is not mapped", event.channel_id)
            return
        with self._lock:
            if event.kind == "created":
                self._created(event, space)
            elif event.kind == "edited":
                self._edited(event)
            else:
                self._trashed(event)

    def _pulled_message(self, event: PulledChatMessage) -> DiscourseChatMessage | None:
        with self._pulled_lock:
            message = self._pulled.pop(event.message_id, None)
        if message is not None:
            return message
        # Read again only when the process restarted between the pull and the worker.
        reader = self._store.dm_channel_state(event.channel_id).reader
        if reader is None:
            return None
        # The same reading as the pull (newest page, then into the past): a target id is never
        # sent, as Discourse answers 404 for a target trashed meanwhile.
        later = self._messages_after(event.channel_id, event.message_id - 1, reader)
        found = next((m for m in later if m.id == event.message_id), None)
        if found is not None and found.deleted_at is not None:
            found = None
        if found is None:
            logger.info("pulled chat message %d is gone", event.message_id)
        return found

    def _created(self, event: ChatMessageEvent, space: str) -> None:
        message = event.message
        if self._store.chat_message_link_by_chat_message(message.id) is not None:
            return  # came from Chat, or already bridged
        if message.deleted_at is not None:
            return
        # Not judged by author: an account the bridge created may have been claimed by its
        # person. The bridge's own sends are linked, or pending (checked next) until they are.
        prefix = f"{space}/messages/"
        if any(key.startswith(prefix) for key in self._store.pending_writes()):
            # It may be the copy of a Chat message whose link is not stored yet (a crash).
            raise _Waiting(f"waiting for an unconfirmed write of {space}")
        self._authors.write(
            message.username,
            space,
            f"chat message {message.id}",
            lambda client, email: self._write_to_chat(event, space, client, email),
        )

    def _write_to_chat(
        self,
        event: ChatMessageEvent,
        space: str,
        client: GoogleChatClient,
        email: str | None,
    ) -> None:
        """Write the chat message into the DM as `email` (delegation), or as the operator."""
        message = event.message
        text = self._text_for(event, as_author=email is not None)
        client_id = self._ids.for_chat_message(message.id)
        created = client.create_message(
            space,
            text,
            message_id=client_id,
            is_own=self._bridge().wrote,
            fallback_ids=self._ids.alternates(client_id),
        )
        if email is None:
            self._learn_bridge_account(created)
        with self._store.transaction():
            self._store.link_chat_message(
                created.name,
                message.id,
                gchat_space_name=space,
                discourse_channel_id=event.channel_id,
                origin="discourse",
                content_hash=origin.content_hash(text),
            )
            if email is not None:
                self._store.set_written_as(created.name, email)
        logger.info(
            "bridged chat message %d -> %s%s",
            message.id,
            created.name,
            f" as {email}" if email else "",
        )

    def _edited(self, event: ChatMessageEvent) -> None:
        link = self._store.chat_message_link_by_chat_message(event.message.id)
        if link is None or link.origin != "discourse" or event.message.deleted_at is not None:
            return  # unknown, or a Chat message's copy (Chat stays the record for those)
        as_author = self._store.written_as(link.gchat_message_name) is not None
        text = self._text_for(event, as_author=as_author)
        digest = origin.content_hash(text)
        if digest == link.content_hash:
            return
        # Only a message's author can edit it in Chat: as the account that wrote it.
        with self._authors.as_author_of(link.gchat_message_name) as chat:
            chat.update_message_text(link.gchat_message_name, text)
        self._store.update_chat_content_hash(link.gchat_message_name, digest)
        logger.info("edited %s from chat message %d", link.gchat_message_name, event.message.id)

    def _trashed(self, event: ChatMessageEvent) -> None:
        link = self._store.chat_message_link_by_chat_message(event.message.id)
        if link is None or link.origin != "discourse":
            return
        # The event may be a replay, or older than a restore: Discourse's present state decides.
        if not self._trashed_now(event.channel_id, event.message.id):
            logger.info(
                "chat message %d is not trashed in Discourse: %s stays",
                event.message.id,
                link.gchat_message_name,
            )
            return
        try:
            with self._authors.as_author_of(link.gchat_message_name) as chat:
                chat.delete_message(link.gchat_message_name)
        except ChatNotFound:
            logger.info("%s was already gone", link.gchat_message_name)
        self._store.unlink_chat_message(link.gchat_message_name)
        logger.info(
            "deleted %s (chat message %d trashed)", link.gchat_message_name, event.message.id
        )

    def _trashed_now(self, channel_id: int, message_id: int) -> bool:
        """Whether Discourse shows the chat message trashed (or gone) now.

        Read as a channel member, the same way as the pull (newest page, then into the past):
        a trashed message is listed only for staff, with `deleted_at` (messages_query.rb
        `with_deleted if guardian.can_moderate_chat?`). Without a member to read as, nothing is
        known, and nothing is deleted.
        """
        reader = self._store.dm_channel_state(channel_id).reader
        if reader is None:
            return False
        try:
            later = self._messages_after(channel_id, message_id - 1, reader)
        except DiscourseNotFound:
            return True  # the channel itself is gone
        found = next((m for m in later if m.id == message_id), None)
        return found is None or found.deleted_at is not None

    def _text_for(self, event: ChatMessageEvent, *, as_author: bool = False) -> str:
        username = event.message.username
        return render_for_gchat(
            event.message.message,
            display_name=event.author_name or self._display_name(username),
            username=username,
            attributed=not as_author and self._needs_attribution(username),
            base_url=self._config.discourse.url,
            mention_lookup=self._gchat_mention_lookup,
            attribution_format=self._config.sync.attribution_format,
        )

    def _display_name(self, username: str) -> str | None:
        if username not in self._display_names:
            try:
                user = self._discourse.get_user(username)
            except DiscourseError as exc:
                logger.warning("cannot read user %s: %s", username, exc)
                return None
            self._display_names[username] = user.name if user else None
        return self._display_names[username]

    def _gchat_mention_lookup(self, discourse_username: str) -> str | None:
        link = self._store.user_for_discourse(discourse_username)
        return link.gchat_user_name if link else None

    # -- catch-up

    def catch_up(self) -> int:
        """Enqueue chat messages newer than each linked channel's high-water id; returns count.

        Raises:
            DiscourseError: a channel cannot be read (the next cycle tries again).
        """
        found = 0
        for mapping in self._config.mappings:
            channel_id = self._store.channel_for_space(mapping.google_space_id)
            if channel_id is None:
                continue
            found += self._catch_up_channel(channel_id)
        return found

    def _catch_up_channel(self, channel_id: int) -> int:
        state = self._store.dm_channel_state(channel_id)
        reader, high_water = state.reader, state.high_water
        if reader is None or high_water is None:
            return 0
        newer = self._messages_after(channel_id, high_water, reader)
        count = 0
        for message in newer:
            if message.deleted_at is not None:
                continue  # trashed (staff readers see those): nothing to bring across
            if self._store.message_for_chat_message(message.id) is not None:
                continue  # a copy of a Chat message, or bridged already
            with self._pulled_lock:
                self._pulled[message.id] = message
            if self._inbox.put_pulled(pulled_chat_message(message)):
                count += 1
            else:
                with self._pulled_lock:
                    self._pulled.pop(message.id, None)  # a webhook brought it already
        if newer:
            self._store.set_dm_channel_high_water(channel_id, newer[-1].id)
        return count

    def _messages_after(
        self, channel_id: int, high_water: int, reader: str
    ) -> list[DiscourseChatMessage]:
        """The channel's live messages with an id above `high_water`, oldest first.

        Reads the newest page, then pages into the past from the oldest message just seen,
        until the mark is reached. The high-water id itself is never sent as a target:
        Discourse answers 404 for a target that does not exist (0 for a channel linked while
        empty, or a message trashed since: list_channel_messages.rb, `target_message_exists`).
        An idle channel costs one request.
        """
        found: dict[int, DiscourseChatMessage] = {}
        page = self._discourse.list_chat_messages(channel_id, as_user=reader)
        while page:
            fresh = [m for m in page if m.id > high_water and m.id not in found]
            found.update((m.id, m) for m in fresh)
            oldest = min(m.id for m in page)
            if oldest <= high_water or not fresh or len(page) < CHAT_PAGE_SIZE:
                break  # reached the mark, the channel's start, or no progress
            try:
                page = self._discourse.list_chat_messages(
                    channel_id, target_message_id=oldest, direction="past", as_user=reader
                )
            except DiscourseNotFound:
                # Trashed between the two reads: start again from the newest page next cycle;
                # what was found so far is kept (the links and dedupe keys stop doubles).
                logger.info("chat message %d vanished while paging channel %d", oldest, channel_id)
                break
        return sorted(found.values(), key=lambda m: m.id)


__all__ = [
    "DmSync",
    "is_dm_mapping",
    "mapping_problem",
    "plan_dm",
    "render_chat_message",
    "render_for_gchat",
]
