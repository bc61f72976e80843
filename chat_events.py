"""Real-time Chat → Discourse: Workspace Events subscriptions delivered through a Pub/Sub pull.

Role: the third source of Chat changes, beside the poll and `backfill` (docs/ARCHITECTURE.md).
`SubscriptionKeeper` keeps one Google Workspace Events subscription per mapped space alive
(created or adopted, renewed at half its life, created again after it expired, reactivated after
a suspension with backoff, deleted when its mapping goes) and replays gaps through
`spaceEvents.list`. `EventPuller` pulls the bridge's Pub/Sub subscription, turns each message
into typed events (`parse_message`), and hands each space's events to the handler that
`main.py` passes in (the room poll's or the DM poll's), acknowledging only after it committed.

Invariants:
- Ack after commit: a message is acknowledged when its handler returned DONE or IGNORED, or when
  it is unusable (malformed, unknown type: logged once, acknowledged, nothing crashes); RETRY
  leaves it to come back (its deadline is set to the retry delay, not dropped to zero, so a
  failing space is not re-delivered in a hot loop).
- Nothing here moves a poll's cursor: the poll keeps running at `poll_interval` as the safety
  net, and finds (by its links) whatever events already brought.
- Decisions are pure (`parse_message`, `plan_subscriptions`); the two classes do the I/O.
- Imports no sync module: the handlers are passed in.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from config_loader import EventsConfig
from db import ChatSubscriptionState, Store
from google_chat_client import (
    ChatError,
    GoogleChatClient,
    SpaceMessageEvent,
    parse_rfc3339,
)
from google_events_client import (
    EventsAlreadyExists,
    EventsAuthError,
    EventsError,
    EventsNotFound,
    EventsUnavailable,
    PubSubClient,
    PubSubMessage,
    Subscription,
    WorkspaceEventsClient,
)
from spaces import EventOutcome

logger = logging.getLogger(__name__)

# The message events the bridge subscribes to. Never the batch types: Google delivers those
# anyway and refuses a subscription that names them.
MESSAGE_EVENT_TYPES = (
    "google.workspace.chat.message.v1.created",
    "google.workspace.chat.message.v1.updated",
    "google.workspace.chat.message.v1.deleted",
)
_MESSAGE_TYPE_PREFIX = "google.workspace.chat.message.v1."
_LIFECYCLE_TYPES: Mapping[str, Literal["reminder", "suspended", "expired"]] = {
    "google.workspace.events.subscription.v1.expirationReminder": "reminder",
    "google.workspace.events.subscription.v1.suspended": "suspended",
    "google.workspace.events.subscription.v1.expired": "expired",
}
CHAT_TARGET_PREFIX = "//chat.googleapis.com/"
_SUBSCRIPTION_SOURCE_PREFIX = "//workspaceevents.googleapis.com/"

# Subscription states the bridge keeps beside Google's ACTIVE and SUSPENDED.
ACTIVE = "ACTIVE"
SUSPENDED = "SUSPENDED"
PENDING = "PENDING"  # to be created (a new mapping, or never created)
EXPIRED = "EXPIRED"  # gone at its expireTime: created again, and its gap replayed
FAILED = "FAILED"  # creating it failed: tried again at next_attempt_at

# A replay re-reads this far before the last event known handled: an event's time and its
# arrival are not ordered across Google's front ends (links and versions drop repeats).
REPLAY_OVERLAP = timedelta(minutes=1)
# spaceEvents.list refuses a start time older than 28 days; a minute of margin for the clock.
EVENT_HISTORY = timedelta(days=28) - timedelta(minutes=1)
# Reactivation of a suspended subscription is retried at most this far apart, so events flow
# again within a minute of its cause being fixed (the poll covers meanwhile).
SUSPENDED_RETRY_MAX = timedelta(seconds=30)
# A subscription that could not be created (no access to the space, Pub/Sub refusing) is tried
# again at most this far apart: these causes are fixed by a person, not by time.
FAILED_RETRY_MAX = timedelta(minutes=5)
RETRY_FIRST = timedelta(seconds=2)


# --------------------------------------------------------------------------------------------
# Typed events (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpaceEvents:
    """One Pub/Sub message about messages of one space (a batch event names several)."""

    space_name: str
    event_type: str
    events: tuple[SpaceMessageEvent, ...]


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A lifecycle event about one of the bridge's subscriptions."""

    kind: Literal["reminder", "suspended", "expired"]
    subscription_name: str
    subscription: Subscription | None  # the resource, when the event carried it


@dataclass(frozen=True, slots=True)
class Unusable:
    """A message the bridge cannot act on: acknowledged and logged, never retried."""

    reason: str


ParsedEvent = SpaceEvents | Lifecycle | Unusable


def _space_of(message_name: str) -> str | None:
    parts = message_name.split("/")
    return "/".join(parts[:2]) if len(parts) >= 4 and parts[0] == "spaces" else None


def _subscription_name(data: Mapping[str, object], attributes: Mapping[str, str]) -> str | None:
    resource = data.get("subscription")
    if isinstance(resource, dict) and isinstance(resource.get("name"), str):
        return str(resource["name"])
    for key in ("ce-subject", "ce-source"):
        value = attributes.get(key, "")
        if value.startswith(_SUBSCRIPTION_SOURCE_PREFIX + "subscriptions/"):
            return value.removeprefix(_SUBSCRIPTION_SOURCE_PREFIX)
    return None


def parse_message(message: PubSubMessage) -> ParsedEvent:
    """A Pub/Sub message in the CloudEvents binding as a typed event. Never raises."""
    event_type = message.attributes.get("ce-type", "")
    if not event_type:
        return Unusable("no ce-type attribute (not a Workspace event)")
    try:
        data = json.loads(message.data.decode("utf-8")) if message.data else {}
    except (UnicodeDecodeError, ValueError):
        return Unusable(f"{event_type}: data is not JSON")
    if not isinstance(data, dict):
        return Unusable(f"{event_type}: data is not a JSON object")
    when = _event_time(message)
    if event_type in _LIFECYCLE_TYPES:
        name = _subscription_name(data, message.attributes)
        if name is None:
            return Unusable(f"{event_type}: names no subscription")
        resource = data.get("subscription")
        subscription = None
        if isinstance(resource, dict):
            try:
                subscription = Subscription.from_api(resource)
            except (KeyError, TypeError, ValueError):
                subscription = None
        return Lifecycle(_LIFECYCLE_TYPES[event_type], name, subscription)
    if not event_type.startswith(_MESSAGE_TYPE_PREFIX):
        return Unusable(f"{event_type}: not a message event")
    if when is None:
        return Unusable(f"{event_type}: no usable ce-time or publishTime")
    try:
        events = SpaceMessageEvent.from_cloud_event(event_type, data, when)
    except (KeyError, TypeError, ValueError) as exc:
        return Unusable(f"{event_type}: malformed data ({exc})")
    if not events:
        return Unusable(f"{event_type}: no message in the data")
    spaces = {_space_of(e.message.name) for e in events}
    if len(spaces) != 1 or None in spaces:
        return Unusable(f"{event_type}: messages not of one space")
    space = spaces.pop()
    assert space is not None
    return SpaceEvents(space, event_type, events)


def _event_time(message: PubSubMessage) -> datetime | None:
    raw = message.attributes.get("ce-time", "")
    if raw:
        try:
            return parse_rfc3339(raw)
        except ValueError:
            pass
    return message.publish_time


# --------------------------------------------------------------------------------------------
# Subscription planning (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    space_name: str
    replay: bool  # a gap to replay once it exists (after an expiry; not for a new mapping)


@dataclass(frozen=True, slots=True)
class Renew:
    state: ChatSubscriptionState


@dataclass(frozen=True, slots=True)
class Reactivate:
    state: ChatSubscriptionState


@dataclass(frozen=True, slots=True)
class Replay:
    state: ChatSubscriptionState


@dataclass(frozen=True, slots=True)
class Remove:
    state: ChatSubscriptionState


SubscriptionAction = Create | Renew | Reactivate | Replay | Remove


def plan_subscriptions(
    wanted: Collection[str], known: Sequence[ChatSubscriptionState], now: datetime
) -> list[SubscriptionAction]:
    """What to do now so that every wanted space has a live subscription and no other does."""
    actions: list[SubscriptionAction] = []
    by_space = {state.gchat_space_name: state for state in known}
    for gone in known:
        if gone.gchat_space_name not in wanted:
            actions.append(Remove(gone))
    for space in sorted(wanted):
        state = by_space.get(space)
        if state is None:
            actions.append(Create(space, replay=False))
            continue
        due = state.next_attempt_at is None or state.next_attempt_at <= now
        if state.state == ACTIVE:
            if state.expire_time is not None and state.expire_time <= now:
                # Expired while nobody saw its lifecycle event (the bridge was down).
                actions.append(Create(space, replay=True))
            elif due:
                actions.append(Renew(state))
            elif state.replay_due:
                actions.append(Replay(state))
        elif state.state == SUSPENDED:
            if due:
                actions.append(Reactivate(state))
        elif due:  # PENDING, EXPIRED, FAILED
            actions.append(Create(space, replay=state.replay_due))
    return actions


def renew_at(expire_time: datetime | None, now: datetime) -> datetime | None:
    """When to renew a subscription: at half its remaining life (None: it gave no expiry)."""
    if expire_time is None:
        return None
    return now + max(timedelta(0), (expire_time - now) / 2)


def retry_at(attempts: int, now: datetime, ceiling: timedelta) -> datetime:
    """Backoff after `attempts` failures: 2 s, 4 s, 8 s, … up to `ceiling`."""
    factor: int = 2 ** max(0, attempts - 1)
    delay = min(ceiling, RETRY_FIRST * factor)
    return now + delay


# --------------------------------------------------------------------------------------------
# I/O: the subscriptions
# --------------------------------------------------------------------------------------------

Handler = Callable[[str, Sequence[SpaceMessageEvent]], EventOutcome]


def target_of(space_name: str) -> str:
    return CHAT_TARGET_PREFIX + space_name


class SubscriptionKeeper:
    """Keeps a Workspace Events subscription per mapped space, and replays gaps.

    `tick()` is cheap when nothing is due (one store read); the daemon calls it every few
    seconds. `start()` runs once before the first tick: it checks every known subscription with
    Google (a restart may follow a long downtime) and marks every space for a replay.
    """

    def __init__(
        self,
        *,
        config: EventsConfig,
        spaces: Callable[[], Collection[str]],
        store: Store,
        events: WorkspaceEventsClient,
        chat: GoogleChatClient,
        handle: Handler,
        clock: Callable[[], datetime],
        audit_every: timedelta = timedelta(minutes=15),
        stop: threading.Event | None = None,
    ) -> None:
        self._stop = stop or threading.Event()
        self._config = config
        self._audit_every = audit_every
        self._next_audit = clock()
        self._spaces = spaces
        self._store = store
        self._events = events
        self._chat = chat
        self._handle = handle
        self._clock = clock
        self._lock = threading.Lock()
        # A replay that failed is tried again no sooner than this (in memory: a restart replays).
        self._replay_after: dict[str, datetime] = {}
        self._lifecycle: queue.SimpleQueue[Lifecycle] = queue.SimpleQueue()

    # -- entry points

    def start(self) -> None:
        """Confirm every stored subscription with Google and mark every space for a replay."""
        with self._lock:
            self._audit(self._clock(), start=True)

    def tick(self) -> None:
        """Do whatever is due: create, renew, reactivate, replay, remove."""
        with self._lock:
            while True:
                try:
                    event = self._lifecycle.get_nowait()
                except queue.Empty:
                    break
                try:
                    self._lifecycle_event(event)
                except Exception:  # per-event boundary: the others and the plan still run
                    logger.exception("lifecycle event %s failed", event)
            now = self._clock()
            if now >= self._next_audit:
                self._audit(now)
            wanted = set(self._spaces())
            for action in plan_subscriptions(wanted, self._store.chat_subscriptions(), now):
                if self._stop.is_set():
                    return  # what is left is due again at the next start
                try:
                    self._apply(action, now)
                except EventsAuthError as exc:
                    logger.error("Workspace Events refused the credentials: %s", exc)
                    return  # nothing else would work either; the next tick tries again
                except Exception:  # per-space boundary: one space must not stop the others
                    logger.exception("subscription work for %s failed", _space_of_action(action))

    def on_lifecycle(self, event: Lifecycle) -> None:
        """A lifecycle event from the topic: queued for the next tick.

        The puller's thread only queues it, so it never waits behind a tick's work (a replay
        of a long gap), and the keeper stays the one writer of the subscription rows.
        """
        self._lifecycle.put(event)

    def _lifecycle_event(self, event: Lifecycle) -> None:
        state = next(
            (
                s
                for s in self._store.chat_subscriptions()
                if s.subscription_name == event.subscription_name
            ),
            None,
        )
        if state is None:
            logger.info(
                "lifecycle event %s for %s, not a subscription of this bridge",
                event.kind,
                event.subscription_name,
            )
            return
        now = self._clock()
        if event.kind == "reminder":
            logger.info("subscription of %s expires soon: renewing", state.gchat_space_name)
            state = replace(state, next_attempt_at=now)
        elif event.kind == "suspended":
            reason = self._suspension_reason(event)
            logger.warning(
                "subscription of %s suspended (%s): reactivating it once its cause is "
                "fixed; the poll covers meanwhile",
                state.gchat_space_name,
                reason or "no reason given",
            )
            state = replace(
                state,
                state=SUSPENDED,
                suspension_reason=reason,
                replay_due=True,
                attempts=0,
                next_attempt_at=now + RETRY_FIRST,
            )
        else:
            logger.warning("subscription of %s expired: creating it again", state.gchat_space_name)
            state = replace(
                state,
                state=EXPIRED,
                subscription_name=None,
                replay_due=True,
                attempts=0,
                next_attempt_at=now,
            )
        self._store.save_chat_subscription(state)

    def _suspension_reason(self, event: Lifecycle) -> str | None:
        """Why Google suspended it: from the event's resource, else asked (Google's guide
        shows lifecycle data in snake_case, which the resource parser does not read)."""
        if event.subscription is not None and event.subscription.suspension_reason:
            return event.subscription.suspension_reason
        try:
            return self._events.get_subscription(event.subscription_name).suspension_reason
        except EventsError as exc:
            logger.warning("cannot read why %s was suspended: %s", event.subscription_name, exc)
            return None

    def seen(self, space_name: str, until: datetime) -> None:
        """Events of `space_name` up to `until` are handled (a later replay starts there)."""
        self._store.advance_events_seen(space_name, until)

    # -- actions

    def _apply(self, action: SubscriptionAction, now: datetime) -> None:
        if isinstance(action, Remove):
            self._remove(action.state)
        elif isinstance(action, Create):
            self._create(action, now)
        elif isinstance(action, Renew):
            self._renew(action.state, now)
        elif isinstance(action, Reactivate):
            self._reactivate(action.state, now)
        else:
            self._replay(action.state, now)

    def _remove(self, state: ChatSubscriptionState) -> None:
        if state.subscription_name is not None:
            self._events.delete_subscription(state.subscription_name)
            logger.info(
                "deleted subscription %s: %s is no longer mapped",
                state.subscription_name,
                state.gchat_space_name,
            )
        self._store.delete_chat_subscription(state.gchat_space_name)

    def _create(self, action: Create, now: datetime) -> None:
        space = action.space_name
        old = self._store.chat_subscription(space)
        seen = old.events_seen_until if old is not None else None
        try:
            sub = self._events.create_subscription(
                target_of(space), MESSAGE_EVENT_TYPES, self._config.pubsub_topic
            )
            logger.info("subscribed to %s: %s until %s", space, sub.name, sub.expire_time)
        except EventsAlreadyExists as exc:
            # One subscription per target per user: ours from an earlier run (crash before the
            # store write) or made by hand; adopt it if it delivers to our topic.
            found = self._events.find_subscription(target_of(space), MESSAGE_EVENT_TYPES)
            if found is None and exc.existing:
                found = self._events.get_subscription(exc.existing)
            if found is None or found.pubsub_topic != self._config.pubsub_topic:
                self._failed(space, old, now, f"another subscription exists: {exc}", FAILED)
                return
            sub = found
            logger.info("adopted subscription %s of %s", sub.name, space)
        except (EventsUnavailable, EventsError) as exc:
            if isinstance(exc, EventsAuthError):
                raise
            self._failed(space, old, now, f"cannot subscribe: {exc}", FAILED)
            return
        state = ChatSubscriptionState(
            gchat_space_name=space,
            state=sub.state if sub.state in (ACTIVE, SUSPENDED) else ACTIVE,
            subscription_name=sub.name,
            suspension_reason=sub.suspension_reason,
            expire_time=sub.expire_time,
            # A new mapping starts here (the poll's initial history covers before); a gap
            # (expiry) is replayed from the last event handled.
            events_seen_until=seen if seen is not None else now,
            replay_due=action.replay or (old is not None and old.replay_due),
            attempts=0,
            next_attempt_at=renew_at(sub.expire_time, now),
        )
        if state.state == SUSPENDED:
            state = replace(state, next_attempt_at=now)
        self._store.save_chat_subscription(state)
        if state.replay_due and state.state == ACTIVE:
            self._replay(state, now)

    def _renew(self, state: ChatSubscriptionState, now: datetime) -> None:
        assert state.subscription_name is not None
        try:
            sub = self._events.renew_subscription(state.subscription_name)
        except EventsNotFound:
            logger.warning(
                "subscription %s of %s is gone: creating it again",
                state.subscription_name,
                state.gchat_space_name,
            )
            self._store.save_chat_subscription(
                replace(state, state=EXPIRED, subscription_name=None, replay_due=True)
            )
            self._create(Create(state.gchat_space_name, replay=True), now)
            return
        except EventsError as exc:
            if isinstance(exc, EventsAuthError):
                raise
            # Not fatal while it lives: try again soon, well before it expires.
            logger.warning("renewing %s failed: %s", state.subscription_name, exc)
            self._store.save_chat_subscription(
                replace(
                    state,
                    last_error=str(exc)[:500],
                    next_attempt_at=retry_at(state.attempts + 1, now, SUSPENDED_RETRY_MAX),
                    attempts=state.attempts + 1,
                )
            )
            return
        if sub.state == SUSPENDED:
            self._store.save_chat_subscription(
                replace(
                    state,
                    state=SUSPENDED,
                    suspension_reason=sub.suspension_reason,
                    replay_due=True,
                    next_attempt_at=now,
                )
            )
            return
        logger.info("renewed subscription of %s until %s", state.gchat_space_name, sub.expire_time)
        self._store.save_chat_subscription(
            replace(
                state,
                state=ACTIVE,
                expire_time=sub.expire_time,
                attempts=0,
                last_error=None,
                next_attempt_at=renew_at(sub.expire_time, now),
            )
        )
        if state.replay_due:
            self._replay(self._store.chat_subscription(state.gchat_space_name) or state, now)

    def _reactivate(self, state: ChatSubscriptionState, now: datetime) -> None:
        assert state.subscription_name is not None
        try:
            sub = self._events.reactivate_subscription(state.subscription_name)
        except EventsNotFound:
            self._store.save_chat_subscription(
                replace(state, state=EXPIRED, subscription_name=None, replay_due=True)
            )
            self._create(Create(state.gchat_space_name, replay=True), now)
            return
        except EventsError as exc:
            if isinstance(exc, EventsAuthError):
                raise
            attempts = state.attempts + 1
            logger.info(
                "subscription of %s still suspended (%s), attempt %d: %s",
                state.gchat_space_name,
                state.suspension_reason,
                attempts,
                exc,
            )
            self._store.save_chat_subscription(
                replace(
                    state,
                    attempts=attempts,
                    last_error=str(exc)[:500],
                    next_attempt_at=retry_at(attempts, now, SUSPENDED_RETRY_MAX),
                )
            )
            return
        logger.info("subscription of %s reactivated", state.gchat_space_name)
        fresh = replace(
            state,
            state=ACTIVE,
            suspension_reason=None,
            expire_time=sub.expire_time,
            attempts=0,
            last_error=None,
            next_attempt_at=renew_at(sub.expire_time, now),
            replay_due=True,
        )
        self._store.save_chat_subscription(fresh)
        self._replay(fresh, now)

    def _replay(self, state: ChatSubscriptionState, now: datetime) -> None:
        """Hand the space's events since the last one handled to the handler, once."""
        space = state.gchat_space_name
        after = self._replay_after.get(space)
        if after is not None and after > now:
            return
        since = (state.events_seen_until or now) - REPLAY_OVERLAP
        since = max(since, now - EVENT_HISTORY)
        try:
            events = self._chat.list_message_events(space, since=since)
        except ChatError as exc:
            logger.warning("replay of %s failed: %s", space, exc)
            self._replay_after[space] = now + SUSPENDED_RETRY_MAX
            return
        outcome = self._handle(space, events) if events else EventOutcome.DONE
        if outcome is EventOutcome.RETRY:
            self._replay_after[space] = now + SUSPENDED_RETRY_MAX
            return
        self._replay_after.pop(space, None)
        current = self._store.chat_subscription(space) or state
        seen = current.events_seen_until
        self._store.save_chat_subscription(
            replace(current, replay_due=False, events_seen_until=max(seen or now, now))
        )
        if events:
            logger.info("replayed %d events of %s since %s", len(events), space, since)

    def _audit(self, now: datetime, *, start: bool = False) -> None:
        """Compare every stored subscription with Google's list (one paged request for all).

        A subscription suspended because Chat may not publish to the topic cannot say so on
        that topic, and one deleted by someone else says nothing at all: the audit, at start
        and once per poll interval, finds both.
        """
        self._next_audit = now + self._audit_every
        try:
            subs = self._events.list_subscriptions(MESSAGE_EVENT_TYPES)
        except EventsError as exc:
            if isinstance(exc, EventsAuthError):
                raise
            logger.warning("cannot list the events subscriptions: %s", exc)
            return
        listed = {sub.name: sub for sub in subs}
        for state in self._store.chat_subscriptions():
            fresh = replace(state, replay_due=True) if start else state
            if state.subscription_name is not None and state.state in (ACTIVE, SUSPENDED):
                fresh = _refreshed(fresh, listed.get(state.subscription_name), now)
            if fresh != state:
                self._store.save_chat_subscription(fresh)

    def _failed(
        self,
        space: str,
        old: ChatSubscriptionState | None,
        now: datetime,
        error: str,
        state_name: str,
    ) -> None:
        attempts = (old.attempts if old is not None else 0) + 1
        logger.error("subscription of %s: %s (attempt %d)", space, error, attempts)
        base = old or ChatSubscriptionState(space, state_name, events_seen_until=now)
        self._store.save_chat_subscription(
            replace(
                base,
                state=state_name,
                subscription_name=None,
                attempts=attempts,
                last_error=error[:500],
                next_attempt_at=retry_at(attempts, now, FAILED_RETRY_MAX),
            )
        )


def _refreshed(
    state: ChatSubscriptionState, sub: Subscription | None, now: datetime
) -> ChatSubscriptionState:
    """A stored subscription as Google lists it now (None: it is gone)."""
    if sub is None:
        logger.warning(
            "subscription %s of %s no longer exists: creating it again",
            state.subscription_name,
            state.gchat_space_name,
        )
        return replace(
            state, state=EXPIRED, subscription_name=None, replay_due=True, next_attempt_at=now
        )
    if sub.state == SUSPENDED:
        if state.state == SUSPENDED:
            return replace(state, suspension_reason=sub.suspension_reason)
        logger.warning(
            "subscription of %s is suspended (%s)", state.gchat_space_name, sub.suspension_reason
        )
        return replace(
            state,
            state=SUSPENDED,
            suspension_reason=sub.suspension_reason,
            replay_due=True,
            attempts=0,
            next_attempt_at=now,
        )
    if state.state == ACTIVE and state.expire_time == sub.expire_time:
        return state
    return replace(
        state,
        state=ACTIVE,
        suspension_reason=None,
        expire_time=sub.expire_time,
        next_attempt_at=renew_at(sub.expire_time, now),
    )


def _space_of_action(action: SubscriptionAction) -> str:
    return action.space_name if isinstance(action, Create) else action.state.gchat_space_name


# --------------------------------------------------------------------------------------------
# I/O: the puller
# --------------------------------------------------------------------------------------------


class EventPuller:
    """Pulls the bridge's Pub/Sub subscription and hands each space's events to the handler.

    One thread (`run`); per pull response, the spaces are handled one after another, each in
    the order its events arrived, and each space's messages are acknowledged as soon as its
    handler committed them. While handlers work, a lease keeps extending the deadline of the
    messages not yet acknowledged, so slow work (an upload, a rate-limited forum) is not
    delivered a second time meanwhile.
    """

    def __init__(
        self,
        *,
        pubsub: PubSubClient,
        subscription: str,
        handle: Handler,
        on_lifecycle: Callable[[Lifecycle], None],
        on_seen: Callable[[str, datetime], None],
        stop: threading.Event,
        ack_deadline_seconds: int = 60,
        retry_delay_seconds: int = 30,
        max_messages: int = 100,
        max_handler_failures: int = 5,
        lease_every_seconds: float | None = None,
    ) -> None:
        self._pubsub = pubsub
        self._subscription = subscription
        self._handle = handle
        self._on_lifecycle = on_lifecycle
        self._on_seen = on_seen
        self._stop = stop
        self._ack_deadline = ack_deadline_seconds
        self._retry_delay = retry_delay_seconds
        self._max_messages = max_messages
        self._max_failures = max_handler_failures
        # Extended at half the deadline: one late extension must not lose the lease.
        self._lease_every = lease_every_seconds or ack_deadline_seconds / 2
        # Unexpected handler exceptions per Pub/Sub message id (in memory): a message that
        # keeps failing is acknowledged after a few, so that it cannot block its ordering key
        # (the space) for ever; the poll's own failure records keep it visible in `status`.
        self._failures: dict[str, int] = {}
        self._working = threading.Lock()  # held while a pulled batch is being handled
        self.pulled = 0
        self.acknowledged = 0
        self.unusable = 0

    def run(self) -> None:
        backoff = RETRY_FIRST.total_seconds()
        while not self._stop.is_set():
            try:
                received = self._pubsub.pull(self._subscription, max_messages=self._max_messages)
            except EventsError as exc:
                logger.warning(
                    "pull of %s failed: %s; again in %.0fs", self._subscription, exc, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, SUSPENDED_RETRY_MAX.total_seconds())
                continue
            backoff = RETRY_FIRST.total_seconds()
            if received:
                with self._working:
                    if self._stop.is_set():
                        return  # unacknowledged: delivered again after the restart
                    self.process(received)

    def wait_idle(self, timeout: float) -> bool:
        """At shutdown: wait for the batch in hand (not for a long-poll pull in flight, which
        may hold for a minute and brings nothing that is not delivered again)."""
        if self._working.acquire(timeout=timeout):
            self._working.release()
            return True
        return False

    def process(self, received: Sequence[PubSubMessage]) -> None:
        """Handle one pull response; acknowledge what was committed."""
        self.pulled += len(received)
        groups: dict[str, list[tuple[PubSubMessage, SpaceEvents]]] = {}
        done: list[str] = []
        for message in received:
            parsed = parse_message(message)
            if isinstance(parsed, Unusable):
                self.unusable += 1
                logger.warning(
                    "event %s acknowledged unused: %s", message.message_id, parsed.reason
                )
                done.append(message.ack_id)
            elif isinstance(parsed, Lifecycle):
                self._on_lifecycle(parsed)
                done.append(message.ack_id)
            else:
                groups.setdefault(parsed.space_name, []).append((message, parsed))
        self._ack(done)
        pending = {m.ack_id for items in groups.values() for m, _ in items}
        with self._lease(pending):
            for space, items in groups.items():
                if self._stop.is_set():
                    return  # unacknowledged: delivered again after the restart
                ids = [m.ack_id for m, _ in items]
                outcome = self._handle_space(space, items)
                if outcome is EventOutcome.RETRY:
                    self._modify(ids, self._retry_delay)
                else:
                    self._ack(ids)
                    latest = max(e.event_time for _, parsed in items for e in parsed.events)
                    self._on_seen(space, latest)
                pending.difference_update(ids)

    def _handle_space(
        self, space: str, items: Sequence[tuple[PubSubMessage, SpaceEvents]]
    ) -> EventOutcome:
        events = [e for _, parsed in items for e in parsed.events]
        try:
            return self._handle(space, events)
        except Exception:  # boundary: one space's failure must not stop the puller
            logger.exception("events of %s failed", space)
            outcome = EventOutcome.RETRY
            for message, _ in items:
                count = self._failures.get(message.message_id, 0) + 1
                self._failures[message.message_id] = count
                if count >= self._max_failures:
                    logger.error(
                        "event %s of %s failed %d times: acknowledged; the poll retries it",
                        message.message_id,
                        space,
                        count,
                    )
                    outcome = EventOutcome.DONE
            if outcome is EventOutcome.DONE:
                for message, _ in items:
                    self._failures.pop(message.message_id, None)
            return outcome

    def _ack(self, ack_ids: Sequence[str]) -> None:
        if not ack_ids:
            return
        try:
            self._pubsub.acknowledge(self._subscription, ack_ids)
            self.acknowledged += len(ack_ids)
        except EventsError as exc:
            # Delivered again later; links and versions recognise it then.
            logger.warning("acknowledging %d events failed: %s", len(ack_ids), exc)

    def _modify(self, ack_ids: Sequence[str], seconds: int) -> None:
        if not ack_ids:
            return
        try:
            self._pubsub.modify_ack_deadline(self._subscription, ack_ids, seconds)
        except EventsError as exc:
            logger.warning("extending %d events failed: %s", len(ack_ids), exc)

    @contextmanager
    def _lease(self, pending: set[str]) -> Iterator[None]:
        """Extend the deadline of `pending` (shrinking as spaces finish) every half deadline."""
        finished = threading.Event()

        def extend() -> None:
            while not finished.wait(self._lease_every):
                ids = list(pending)
                if ids:
                    self._modify(ids, self._ack_deadline)

        thread = threading.Thread(target=extend, name="event-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            finished.set()
            thread.join(timeout=5)


__all__ = [
    "ACTIVE",
    "EXPIRED",
    "FAILED",
    "MESSAGE_EVENT_TYPES",
    "PENDING",
    "SUSPENDED",
    "EventPuller",
    "Lifecycle",
    "SpaceEvents",
    "SubscriptionKeeper",
    "Unusable",
    "parse_message",
    "plan_subscriptions",
]
