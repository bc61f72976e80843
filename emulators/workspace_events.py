"""Google Workspace Events API (workspaceevents.googleapis.com v1) for Chat spaces, served by
the Chat emulator and delivering CloudEvents to the Pub/Sub emulator.

Role: subscriptions on `//chat.googleapis.com/spaces/{space}` (create, get, list, patch, delete,
reactivate, and `operations.get` for the long-running operations they answer), their expiry,
lifecycle events and suspensions, and the delivery of every message created, edited or deleted
in a subscribed space to the subscription's Pub/Sub topic, published as Google Chat's publisher
service account. The routes share the Chat emulator's Flask app, auth, faults and request log
(`emulators/google_chat.py` calls `register_routes`). Facts and their sources:
`emulators/FIDELITY.md`, section "Google Workspace Events".

Invariants:
- All subscription and operation state is guarded by the Chat state's lock (`ChatState.lock`),
  the same lock as the messages whose events it publishes.
- Nothing here calls the Pub/Sub emulator while holding that lock: events are rendered when they
  happen (lock held, so the payload is the message "at that moment") and queued; one dispatcher
  thread publishes them in order, lock released. Lock order is Chat → Pub/Sub only, never back.
- Time is the Chat state's injectable `clock`; a background ticker (the dispatcher, ~50 ms)
  completes operations, sends reminders and expires subscriptions, and every request settles the
  same clock-driven state first, so a test with a fake clock needs no ticker.
- Only an ACTIVE subscription whose create operation is done gets Chat events; an event for a
  suspended or expired subscription is lost, as Google's are (replay through spaceEvents.list).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from emulators._errors import HandlerErrors
from emulators.google_chat_state import (
    JSON,
    ApiError,
    ChatState,
    Message,
    SpaceEvent,
    Token,
    _split_top_level,
    apply_fields,
    denied,
    invalid,
    not_found,
    parse_fields,
    parse_rfc3339,
    rfc3339,
)
from emulators.pubsub import PubSubDenied, PubSubNotFound, PubSubState

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

# The principal Chat publishes Workspace events as: the reactivate guide's table for
# ENDPOINT_PERMISSION_DENIED ("Google Chat events: chat-api-push@system.gserviceaccount.com"),
# also the create guide's "Grant access to publish" step (developers.google.com/workspace/
# events/guides/reactivate-subscription, .../create-subscription).
CHAT_PUBLISHER = "serviceAccount:chat-api-push@system.gserviceaccount.com"
SUBSCRIPTION_TYPE = "type.googleapis.com/google.apps.events.subscriptions.v1.Subscription"
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"
SOURCE_PREFIX = "//workspaceevents.googleapis.com/"
CHAT_PREFIX = "//chat.googleapis.com/"
_SERVICE = "google.apps.events.subscriptions.v1.SubscriptionsService"

LIFECYCLE = "google.workspace.events.subscription.v1."
SUSPENDED = LIFECYCLE + "suspended"
EXPIRATION_REMINDER = LIFECYCLE + "expirationReminder"
EXPIRED = LIFECYCLE + "expired"

_AUTH = "https://www.googleapis.com/auth/"
_CHAT = "google.workspace.chat."
# Event types a subscription on a space accepts (events-chat guide, "Subscriptions to spaces"),
# each with the user scopes that cover it (auth guide, "Scopes by event type"). Only the message
# events are produced by this emulator; the others are accepted and never happen.
SCOPES_BY_EVENT_TYPE: dict[str, frozenset[str]] = {
    **{
        _CHAT + f"message.v1.{a}": frozenset(
            {_AUTH + "chat.messages", _AUTH + "chat.messages.readonly"}
        )
        for a in ("created", "updated", "deleted")
    },
    **{
        _CHAT + f"reaction.v1.{a}": frozenset(
            _AUTH + s
            for s in (
                "chat.messages.reactions",
                "chat.messages.reactions.readonly",
                "chat.messages",
                "chat.messages.readonly",
            )
        )
        for a in ("created", "deleted")
    },
    **{
        _CHAT + f"membership.v1.{a}": frozenset(
            {_AUTH + "chat.memberships", _AUTH + "chat.memberships.readonly"}
        )
        for a in ("created", "updated", "deleted")
    },
    **{
        _CHAT + f"space.v1.{a}": frozenset({_AUTH + "chat.spaces", _AUTH + "chat.spaces.readonly"})
        for a in ("updated", "deleted")
    },
}
ERROR_TYPES = (
    "USER_SCOPE_REVOKED",
    "APP_SCOPE_REVOKED",
    "RESOURCE_DELETED",
    "USER_AUTHORIZATION_FAILURE",
    "APP_AUTHORIZATION_FAILURE",
    "ENDPOINT_PERMISSION_DENIED",
    "ENDPOINT_NOT_FOUND",
    "ENDPOINT_RESOURCE_EXHAUSTED",
    "OTHER",
)
# Subscription properties a request body may carry (discovery `Subscription`); another key is
# refused as Google's JSON parser refuses it.
SUBSCRIPTION_FIELDS = frozenset(
    [
        "authority",
        "createTime",
        "driveOptions",
        "etag",
        "eventTypes",
        "expireTime",
        "name",
        "notificationEndpoint",
        "payloadOptions",
        "reconciling",
        "serviceAccountAuthority",
        "state",
        "suspensionReason",
        "targetResource",
        "ttl",
        "uid",
        "updateTime",
        "userAuthority",
    ]
)
_UPDATE_PATHS = {
    "ttl": "ttl",
    "expire_time": "expireTime",
    "expiretime": "expireTime",
    "event_types": "eventTypes",
    "eventtypes": "eventTypes",
}
_TARGET_RE = re.compile(r"^//chat\.googleapis\.com/(spaces/[^/]+)$")
_TOPIC_RE = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
_DURATION_RE = re.compile(r"^(\d+)(?:\.(\d{1,9}))?s$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_ID_CHARS = string.ascii_letters + string.digits + "_-"
_TICK_SECONDS = 0.05


# --------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Publication:
    """One CloudEvent to publish (Pub/Sub binary content mode: `ce-*` attributes + data)."""

    subscription: str  # subscriptions/{id}
    topic: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    lifecycle: bool  # a lifecycle event is sent whatever the subscription's state


@dataclass
class Subscription:
    id: str
    uid: str
    user: str  # users/{id}: authority and userAuthority
    grant: str | None  # refresh token behind the creating token (USER_SCOPE_REVOKED)
    space: str  # spaces/{id}
    event_types: list[str]
    topic: str
    payload_options: JSON | None  # as given (normalized), None when absent
    create_time: datetime
    update_time: datetime
    expire_time: datetime
    state: str = "ACTIVE"
    suspension_reason: str | None = None
    # How a suspension's cause is judged fixed: "control" ones only by the control API's :fix;
    # detected ones (endpoint, revoked grant, lost membership) by looking again at reactivate.
    suspended_by_control: bool = False
    cause_fixed: bool = False
    visible: bool = False  # the create operation is done
    reconciling: bool = False  # an update operation is under way
    pending_reminders: list[float] = field(default_factory=list)  # lead seconds, longest first

    @property
    def name(self) -> str:
        return f"subscriptions/{self.id}"

    @property
    def target(self) -> str:
        return CHAT_PREFIX + self.space

    @property
    def source(self) -> str:
        """The CloudEvent `source`, also the ordering key: the subscription's full name."""
        return SOURCE_PREFIX + self.name

    @property
    def include_resource(self) -> bool:
        return bool((self.payload_options or {}).get("includeResource"))

    @property
    def field_mask(self) -> str | None:
        mask = (self.payload_options or {}).get("fieldMask")
        return str(mask) if mask else None


@dataclass
class Operation:
    id: str
    user: str
    subscription: str  # the subscription's name
    seq: int  # creation order: a later operation supersedes an earlier one's response
    done_at: float  # state clock seconds
    effect: Callable[[], None]
    applied: bool = False
    response: JSON | None = None

    @property
    def name(self) -> str:
        return f"operations/{self.id}"


@dataclass(frozen=True, slots=True)
class CreateSpec:
    """A validated create request (everything but what needs the lock)."""

    space: str
    event_types: list[str]
    topic: str
    payload_options: JSON | None
    ttl: float | None
    expire_time: datetime | None


# --------------------------------------------------------------------------- parsing
def parse_duration(value: object, where: str) -> float:
    """A protobuf Duration in JSON form (`"3600s"`, `"1.5s"`); negative or malformed → 400."""
    if not isinstance(value, str):
        raise invalid(f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration)")
    m = _DURATION_RE.match(value)
    if not m:
        raise invalid(f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration)")
    return int(m.group(1)) + (int(m.group(2).ljust(9, "0")) / 1e9 if m.group(2) else 0.0)


def _parse_timestamp(value: object, where: str) -> datetime:
    try:
        return parse_rfc3339(str(value))
    except ValueError:
        raise invalid(
            f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Timestamp)"
        ) from None


def parse_event_types(value: object) -> list[str]:
    """`eventTypes` of a space subscription: required, known, not batch, not lifecycle."""
    if not isinstance(value, list) or not value:
        raise invalid("eventTypes is required: specify at least one event type.")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise invalid("eventTypes must be a list of strings.")
        if ".batch" in item:
            # Batch events are output only: "you don't need to specify batch events".
            raise invalid(f"Batch event types can't be subscribed to: {item!r}")
        if item not in SCOPES_BY_EVENT_TYPE:
            # "If you specify an event type that doesn't exist for the target resource, the
            # request returns an HTTP 400" (lifecycle types included: received by default).
            raise invalid(f"Unsupported event type for the target resource: {item!r}")
        if item in out:
            raise invalid(f"Duplicate event type: {item!r}")
        out.append(item)
    return out


def parse_payload_options(value: object) -> JSON | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("payloadOptions must be an object.")
    for key in value:
        if key not in ("includeResource", "fieldMask"):
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{key}" at '
                "'subscription.payload_options': Cannot find field."
            )
    out: JSON = {}
    include = value.get("includeResource")
    if include is not None:
        if not isinstance(include, bool):
            raise invalid("payloadOptions.includeResource must be a boolean.")
        out["includeResource"] = include
    mask = value.get("fieldMask")
    if mask is not None:
        if not isinstance(mask, str):
            raise invalid("payloadOptions.fieldMask must be a string.")
        if not include:
            # "If include_resource is set to true, the list of fields to include": a mask on a
            # names-only payload means nothing (stricter reading: refused).
            raise invalid("payloadOptions.fieldMask needs includeResource set to true.")
        out["fieldMask"] = mask
    return out


def parse_create(body: JSON) -> CreateSpec:
    """Validate a create body apart from what needs state (space, scopes, topic existence)."""
    target = body.get("targetResource")
    if not target:
        raise invalid("targetResource is required.")
    m = _TARGET_RE.match(str(target))
    if not m:
        # `spaces/-`, Cloud Identity users and admin customers are valid for Google but not
        # emulated; anything else is not a Chat space's full resource name.
        raise invalid(
            f"Unsupported target resource {target!r}: this emulator serves "
            "//chat.googleapis.com/spaces/{space} only."
        )
    space = m.group(1)
    if space == "spaces/-":
        raise invalid("targetResource //chat.googleapis.com/spaces/- is not emulated.")
    if body.get("driveOptions") is not None:
        raise invalid("driveOptions is only supported for Google Drive target resources.")
    event_types = parse_event_types(body.get("eventTypes"))
    endpoint = body.get("notificationEndpoint")
    if not isinstance(endpoint, dict) or not endpoint.get("pubsubTopic"):
        raise invalid("notificationEndpoint.pubsubTopic is required.")
    topic = str(endpoint["pubsubTopic"])
    if not _TOPIC_RE.match(topic):
        raise invalid(
            f"Invalid notificationEndpoint.pubsubTopic {topic!r}: expected "
            "projects/{project}/topics/{topic}."
        )
    ttl = parse_duration(body["ttl"], "subscription.ttl") if "ttl" in body else None
    expire = (
        _parse_timestamp(body["expireTime"], "subscription.expire_time")
        if body.get("expireTime") is not None
        else None
    )
    if ttl is not None and expire is not None:
        raise invalid("Only one of ttl and expireTime may be set (they are one oneof).")
    return CreateSpec(
        space, event_types, topic, parse_payload_options(body.get("payloadOptions")), ttl, expire
    )


_LIST_TYPE = re.compile(r'^event_types\s*:\s*"([^"]*)"$')
_LIST_TARGET = re.compile(r'^target_resource\s*=\s*"([^"]*)"$')


def parse_list_filter(text: str) -> tuple[frozenset[str], str | None]:
    """subscriptions.list `filter` (discovery doc): `event_types:"T"` (several joined by `OR`,
    parenthesized when combined) and at most one `target_resource="//..."` joined by `AND`. At
    least one event type is required. Stricter readings: snake_case names only (the only ones
    documented), unknown or batch types refused, as is anything else (INVALID_ARGUMENT)."""
    text = text.strip()
    if not text:
        raise invalid("filter is required: specify at least one event type with event_types.")
    bad = invalid(f"Invalid filter: {text!r}")
    conds = _split_top_level(text, "AND")
    types: set[str] | None = None
    target: str | None = None
    for cond in conds:
        if m := _LIST_TARGET.match(cond):
            if target is not None:
                raise bad
            target = m.group(1)
            continue
        if types is not None:
            raise bad  # event types combine with OR, in one group
        group = cond
        if group.startswith("(") and group.endswith(")"):
            group = group[1:-1].strip()
        elif len(conds) > 1 and re.search(r"\sOR\s", group):
            raise bad  # AND and OR mixed without parentheses
        types = set()
        for part in _split_top_level(group, "OR"):
            tm = _LIST_TYPE.match(part)
            if not tm:
                raise bad
            if ".batch" in tm.group(1) or tm.group(1) not in SCOPES_BY_EVENT_TYPE:
                raise invalid(f"Unsupported event type in filter: {tm.group(1)!r}")
            types.add(tm.group(1))
    if not types:
        raise invalid("filter must specify at least one event type with event_types.")
    return frozenset(types), target


def _snake(value: Any) -> Any:
    """Keys camelCase → snake_case, recursively (the lifecycle guide's example payloads)."""
    if isinstance(value, dict):
        return {
            (k if k.startswith("@") else re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower()): _snake(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


def insufficient_scopes(method: str) -> ApiError:
    """403 for a token without a scope the method needs, in the shape Google's front end
    answers it (google.rpc.ErrorInfo reason ACCESS_TOKEN_SCOPE_INSUFFICIENT)."""
    return ApiError(
        "PERMISSION_DENIED",
        "Request had insufficient authentication scopes.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com",
                "metadata": {
                    "service": "workspaceevents.googleapis.com",
                    "method": f"{_SERVICE}.{method}",
                },
            }
        ],
    )


def _new_id(prefix: str = "") -> str:
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(22))


# --------------------------------------------------------------------------- the service
class WorkspaceEvents:
    """Subscriptions, operations and event delivery; `state.lock` guards every method except
    the dispatcher's publishing, `start`, `stop`, `flush` and the `*_outside_lock` probes."""

    def __init__(
        self,
        state: ChatState,
        publisher: PubSubState | None = None,
        *,
        errors: HandlerErrors | None = None,
    ) -> None:
        self.state = state
        self.publisher = publisher
        self.errors = errors if errors is not None else HandlerErrors("google chat")
        self._outbox: deque[Publication] = deque()
        self._outbox_cond = threading.Condition()
        self._in_flight = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reset()
        state.event_listeners.append(self._on_space_event)

    def reset(self) -> None:
        """Forget every subscription and operation (lock held); queued events are dropped."""
        self.subscriptions: dict[str, Subscription] = {}  # id -> subscription
        self.operations: dict[str, Operation] = {}  # id -> operation
        self._pending: list[Operation] = []
        self._seq = 0
        with self._outbox_cond:
            self._outbox.clear()
            self._outbox_cond.notify_all()

    # ------------------------------------------------------------- dispatcher thread
    def start(self) -> None:
        """Start the dispatcher: publishes queued events and ticks the clock-driven state."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="workspace-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._outbox_cond:
            self._outbox_cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def flush(self, timeout: float = 5.0) -> None:
        """Settle the clock-driven state and wait until everything queued has been published
        (tests: "nothing was published" is only meaningful after this)."""
        with self.state.lock:
            self.settle()
        deadline = time.monotonic() + timeout
        with self._outbox_cond:
            while self._outbox or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("workspace events still queued after the timeout")
                if self._thread is None:
                    break  # nobody would publish them
                self._outbox_cond.wait(left)

    def _run(self) -> None:
        last_tick = 0.0
        while not self._stop.is_set():
            with self._outbox_cond:
                if not self._outbox:
                    self._outbox_cond.wait(_TICK_SECONDS)
                pub = self._outbox.popleft() if self._outbox else None
                if pub is not None:
                    self._in_flight += 1
            if pub is not None:
                try:
                    self._deliver(pub)
                except Exception as exc:  # boundary: a bug must not kill the dispatcher
                    self.errors.record("PUBLISH", pub.topic, exc)
                finally:
                    with self._outbox_cond:
                        self._in_flight -= 1
                        self._outbox_cond.notify_all()
            if time.monotonic() - last_tick >= _TICK_SECONDS:
                last_tick = time.monotonic()
                try:
                    with self.state.lock:
                        self.settle()
                except Exception as exc:  # boundary, as above
                    self.errors.record("TICK", "/workspace-events", exc)

    def _enqueue(self, pub: Publication) -> None:
        with self._outbox_cond:
            self._outbox.append(pub)
            self._outbox_cond.notify_all()

    def _deliver(self, pub: Publication) -> None:
        """Publish one event as Chat's service account (no Chat lock held while publishing);
        a refusal by the topic suspends the subscription, as Google documents."""
        with self.state.lock:
            sub = self.subscriptions.get(pub.subscription.removeprefix("subscriptions/"))
            if not pub.lifecycle and (sub is None or not sub.visible or sub.state != "ACTIVE"):
                return  # suspended, expired or deleted since the event happened: lost
        publisher = self.publisher
        if publisher is None:
            return
        try:
            publisher.publish_as(
                CHAT_PUBLISHER, pub.topic, pub.data, pub.attributes, pub.ordering_key
            )
            return
        except (PubSubDenied, PubSubNotFound):
            # Pub/Sub answers a caller without the grant 403 before 404; Workspace Events names
            # the endpoint's real problem, so a missing topic is ENDPOINT_NOT_FOUND either way.
            reason = self.endpoint_problem_outside_lock(pub.topic) or "ENDPOINT_PERMISSION_DENIED"
        logger.info(
            "publishing to %s refused (%s): suspending %s", pub.topic, reason, pub.subscription
        )
        with self.state.lock:
            sub = self.subscriptions.get(pub.subscription.removeprefix("subscriptions/"))
            if sub is not None and sub.state == "ACTIVE":
                self._suspend(sub, reason, by_control=False)

    # ------------------------------------------------------------- endpoint probes
    def endpoint_problem_outside_lock(self, topic: str) -> str | None:
        """The ErrorType the topic would cause now (ENDPOINT_NOT_FOUND, ..._PERMISSION_DENIED)
        or None. Calls the Pub/Sub emulator: never with the Chat lock held."""
        publisher = self.publisher
        if publisher is None:
            return "ENDPOINT_NOT_FOUND"
        if not _topic_exists(publisher, topic):
            return "ENDPOINT_NOT_FOUND"
        if not _can_publish(publisher, CHAT_PUBLISHER, topic):
            return "ENDPOINT_PERMISSION_DENIED"
        return None

    # ------------------------------------------------------------- clock-driven state
    def settle(self) -> None:
        """Complete due operations, send due reminders, expire subscriptions (lock held)."""
        now_ts = self.state.clock()
        while self._pending and self._pending[0].done_at <= now_ts:
            self._apply(self._pending.pop(0))
        now = self.state.now()
        for sub in list(self.subscriptions.values()):
            if not sub.visible:
                continue
            if sub.expire_time <= now:
                self._expire(sub)
                continue
            due = False
            while sub.pending_reminders and now >= sub.expire_time - timedelta(
                seconds=sub.pending_reminders[0]
            ):
                sub.pending_reminders.pop(0)
                due = True
            if due and sub.state == "ACTIVE":
                # Several leads due at once (a coarse tick) make one reminder, not a burst.
                self._enqueue(self._lifecycle(sub, EXPIRATION_REMINDER))

    def _expire(self, sub: Subscription) -> None:
        # "The Google Workspace Events API permanently deletes expired subscriptions."
        if sub.state == "ACTIVE":
            self._enqueue(self._lifecycle(sub, EXPIRED))
        del self.subscriptions[sub.id]

    def _arm_reminders(self, sub: Subscription, now: datetime) -> None:
        lifetime = (sub.expire_time - now).total_seconds()
        leads = sorted(
            {float(x) for x in self.state.config["reminder_lead_seconds"]}, reverse=True
        )
        sub.pending_reminders = [lead for lead in leads if 0 < lead < lifetime]

    def _new_operation(
        self, user: str, subscription: str, effect: Callable[[], None]
    ) -> Operation:
        self._seq += 1
        latency = float(self.state.config["operation_latency_seconds"])
        op = Operation(
            _new_id(), user, subscription, self._seq, self.state.clock() + latency, effect
        )
        self.operations[op.id] = op
        if latency <= 0:
            self._apply(op)
        else:
            self._pending.append(op)
        return op

    def _apply(self, op: Operation) -> None:
        op.effect()
        op.applied = True
        sub = self.subscriptions.get(op.subscription.removeprefix("subscriptions/"))
        if op.response is None:
            op.response = (
                {"@type": SUBSCRIPTION_TYPE, **self.subscription_json(sub)}
                if sub is not None
                else {"@type": EMPTY_TYPE}
            )

    # ------------------------------------------------------------- rendering
    def subscription_json(self, sub: Subscription) -> JSON:
        """The Subscription resource. Proto3 JSON leaves out default values, so
        `reconciling: false`, an unset `suspensionReason` and `includeResource: false` are
        absent (stricter reading: a client must not expect them)."""
        out: JSON = {
            "name": sub.name,
            "uid": sub.uid,
            "targetResource": sub.target,
            "eventTypes": list(sub.event_types),
        }
        if sub.payload_options is not None:
            out["payloadOptions"] = {k: v for k, v in sub.payload_options.items() if v}
        out["notificationEndpoint"] = {"pubsubTopic": sub.topic}
        out["state"] = sub.state
        if sub.suspension_reason:
            out["suspensionReason"] = sub.suspension_reason
        out["authority"] = sub.user
        out["createTime"] = rfc3339(sub.create_time)
        out["updateTime"] = rfc3339(sub.update_time)
        if sub.reconciling:
            out["reconciling"] = True
        out["expireTime"] = rfc3339(sub.expire_time)
        out["userAuthority"] = sub.user
        digest = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
        out["etag"] = f'"{digest[:20]}"'
        return out

    def operation_json(self, op: Operation) -> JSON:
        """An Operation: `done` absent until it is (proto3 JSON leaves out false), then the
        response, or nothing if a later operation changed the subscription since ("if you
        specify a Operation resource from a previous version of the subscription, the response
        is empty": update guide)."""
        out: JSON = {"name": op.name}
        if not op.applied:
            return out
        out["done"] = True
        superseded = any(
            o.subscription == op.subscription and o.seq > op.seq and o.applied
            for o in self.operations.values()
        )
        if op.response is not None and not superseded:
            out["response"] = op.response
        return out

    def _message_payload(self, sub: Subscription, msg: Message) -> JSON:
        """Event data `{"message": {...}}`: the message as messages.get returns it now, only
        `name`, `createTime`, `deletionMetadata` once deleted (MessageDeletedEventData), only
        `name` without includeResource, trimmed to `payloadOptions.fieldMask` if set."""
        if not sub.include_resource:
            return {"message": {"name": msg.name}}
        if msg.delete_time is not None:
            message: JSON = {
                "name": msg.name,
                "createTime": rfc3339(msg.create_time),
                "deletionMetadata": {"deletionType": msg.deletion_type or "CREATOR"},
            }
        else:
            message = self.state.message_json(msg)
        payload: JSON = {"message": message}
        if sub.field_mask:
            paths = ",".join(p.strip().replace(".", "/") for p in sub.field_mask.split(","))
            try:
                payload = apply_fields(payload, parse_fields(paths))
            except ApiError:
                pass  # an unparsable mask was accepted at create: keep the whole resource
        return payload

    def _event_publication(self, sub: Subscription, event: SpaceEvent) -> Publication:
        payload = self._message_payload(sub, event.message)
        # Attributes as in Google's "Events as Google Cloud Pub/Sub messages" example: the id is
        # the space event's name (the one spaceEvents.list shows), the source and the ordering
        # key the subscription, the subject the space.
        attributes = {
            "ce-datacontenttype": "application/json",
            "ce-id": event.name,
            "ce-source": sub.source,
            "ce-specversion": "1.0",
            "ce-subject": CHAT_PREFIX + event.message.space,
            "ce-time": rfc3339(event.time),
            "ce-type": event.event_type,
        }
        data = json.dumps(payload, ensure_ascii=False).encode()
        return Publication(sub.name, sub.topic, data, attributes, sub.source, lifecycle=False)

    def _lifecycle(self, sub: Subscription, event_type: str) -> Publication:
        resource = self.subscription_json(sub)
        if self.state.config["lifecycle_payload_case"] == "snake_case":
            resource = _snake(resource)
        attributes = {
            "ce-datacontenttype": "application/json",
            "ce-id": str(uuid.uuid4()),
            "ce-source": sub.source,
            "ce-specversion": "1.0",
            "ce-subject": sub.source,
            "ce-time": rfc3339(self.state.now()),
            "ce-type": event_type,
        }
        data = json.dumps({"subscription": resource}).encode()
        return Publication(sub.name, sub.topic, data, attributes, sub.source, lifecycle=True)

    # ------------------------------------------------------------- events from Chat
    def _on_space_event(self, event: SpaceEvent) -> None:
        """ChatState listener (lock held): queue the event for each ACTIVE subscription on the
        space that asked for its type, whoever wrote the message (the subscriber too)."""
        now = self.state.now()
        for sub in list(self.subscriptions.values()):
            if not (
                sub.visible
                and sub.state == "ACTIVE"
                and sub.space == event.message.space
                and event.event_type in sub.event_types
                and sub.expire_time > now
            ):
                continue
            problem = self._authorization_problem(sub)
            if problem is not None:
                self._suspend(sub, problem, by_control=False)
                continue
            self._enqueue(self._event_publication(sub, event))

    def _authorization_problem(self, sub: Subscription) -> str | None:
        """The ErrorType that stops delivery on the Chat side now, if any (lock held)."""
        space = self.state.spaces.get(sub.space)
        if space is None:
            return "RESOURCE_DELETED"
        if sub.user not in space.members:
            return "USER_AUTHORIZATION_FAILURE"
        if self.state.grant_revoked(sub.grant):
            return "USER_SCOPE_REVOKED"
        return None

    def _suspend(self, sub: Subscription, reason: str, *, by_control: bool) -> None:
        if sub.state == "SUSPENDED":
            # "the value for the suspensionReason field always uses the original error".
            sub.cause_fixed = False
            sub.suspended_by_control = sub.suspended_by_control or by_control
            return
        sub.state = "SUSPENDED"
        sub.suspension_reason = reason
        sub.suspended_by_control = by_control
        sub.cause_fixed = False
        sub.update_time = self.state.now()
        self._enqueue(self._lifecycle(sub, SUSPENDED))

    # ------------------------------------------------------------- API methods (lock held)
    def _own(self, name_id: str, user: str, *, method: str, token: Token) -> Subscription:
        if not _ID_RE.match(name_id):
            raise not_found()
        sub = self.subscriptions.get(name_id)
        if sub is None or not sub.visible:
            raise not_found()
        if sub.user != user:
            raise denied()
        if not any(token.scopes & SCOPES_BY_EVENT_TYPE[t] for t in sub.event_types):
            # get/list/delete: "a scope that supports at least one event type".
            raise insufficient_scopes(method)
        return sub

    def _expiry(
        self, now: datetime, spec_ttl: float | None, spec_expire: datetime | None, include: bool
    ) -> datetime:
        """expireTime from `ttl` or `expireTime`: 0/absent = the maximum, longer = the maximum
        (docs silent on longer; clamped, and expireTime always says what was granted)."""
        key = (
            "subscription_max_ttl_seconds"
            if include
            else "subscription_max_ttl_seconds_without_resource"
        )
        latest = now + timedelta(seconds=float(self.state.config[key]))
        if spec_expire is not None:
            if spec_expire <= now:
                raise invalid("expireTime must be in the future.")
            return min(spec_expire, latest)
        if spec_ttl:
            return min(now + timedelta(seconds=spec_ttl), latest)
        return latest

    def create(
        self,
        user: str,
        token: Token,
        spec: CreateSpec,
        *,
        validate_only: bool,
        endpoint_problem: str | None = None,
    ) -> JSON:
        """subscriptions.create: an Operation whose response is the new Subscription.
        `endpoint_problem` is what the topic looked like, probed before the lock was taken."""
        if not all(token.scopes & SCOPES_BY_EVENT_TYPE[t] for t in spec.event_types):
            # "requires a supported scope for each event type" (auth guide).
            raise insufficient_scopes("CreateSubscription")
        space = self.state.spaces.get(spec.space)
        if space is None:
            raise not_found()
        if user not in space.members:
            # "The Chat user ... that authorizes the subscription must be a member".
            raise denied()
        if endpoint_problem == "ENDPOINT_NOT_FOUND":
            # Docs silent; stricter reading: a subscription to a missing topic is refused. A
            # missing grant is not checked here: delivery suspends the subscription (W6).
            raise not_found(f"Pub/Sub topic {spec.topic} not found.")
        if any(s.user == user and s.space == spec.space for s in self.subscriptions.values()):
            # One subscription per target per user. Google documents the status only; the
            # body names no existing subscription (stricter: find it with subscriptions.list).
            raise ApiError(
                "ALREADY_EXISTS",
                "A subscription for this target resource already exists for the authorizing user.",
            )
        now = self.state.now()
        include = bool((spec.payload_options or {}).get("includeResource"))
        sub = Subscription(
            id=_new_id("chat-spaces-"),
            uid=str(uuid.uuid4()),
            user=user,
            grant=token.refresh_token,
            space=spec.space,
            event_types=list(spec.event_types),
            topic=spec.topic,
            payload_options=spec.payload_options,
            create_time=now,
            update_time=now,
            expire_time=self._expiry(now, spec.ttl, spec.expire_time, include),
        )
        if validate_only:
            preview = self.subscription_json(sub)
            for key in ("name", "uid", "etag"):
                preview.pop(key)
            return {
                "name": f"operations/{_new_id()}",
                "done": True,
                "response": {"@type": SUBSCRIPTION_TYPE, **preview},
            }
        self._arm_reminders(sub, now)
        self.subscriptions[sub.id] = sub

        def effect() -> None:
            sub.visible = True

        return self.operation_json(self._new_operation(user, sub.name, effect))

    def get(self, name_id: str, user: str, token: Token) -> JSON:
        return self.subscription_json(
            self._own(name_id, user, method="GetSubscription", token=token)
        )

    def list_subscriptions(
        self, user: str, token: Token, types: frozenset[str], target: str | None
    ) -> list[Subscription]:
        if not any(token.scopes & SCOPES_BY_EVENT_TYPE[t] for t in types):
            raise insufficient_scopes("ListSubscriptions")
        subs = [
            s
            for s in self.subscriptions.values()
            if s.visible
            and s.user == user
            and types.intersection(s.event_types)
            and (target is None or s.target == target)
        ]
        return sorted(subs, key=lambda s: s.create_time)

    def patch(
        self,
        name_id: str,
        user: str,
        token: Token,
        body: JSON,
        mask: str | None,
        *,
        validate_only: bool,
    ) -> JSON:
        """subscriptions.patch: `ttl`, `expire_time` or `event_types` (updateMask; omitted =
        the updatable fields present in the body; `*` = all three, absent ones emptied)."""
        sub = self._own(name_id, user, method="UpdateSubscription", token=token)
        etag = body.get("etag")
        if etag is not None and etag != self.subscription_json(sub)["etag"]:
            raise ApiError("ABORTED", "The etag does not match the subscription's current etag.")
        fields: set[str]
        if mask is None or not mask.strip():
            fields = {k for k in ("ttl", "expireTime", "eventTypes") if k in body}
            for key in ("targetResource", "notificationEndpoint", "payloadOptions"):
                if key in body and body[key] != self.subscription_json(sub).get(key):
                    raise invalid(f"{key} is immutable.")
        elif mask.strip() == "*":
            fields = {"ttl", "expireTime", "eventTypes"}
        else:
            fields = set()
            for path in mask.split(","):
                field_name = _UPDATE_PATHS.get(path.strip().lower())
                if field_name is None:
                    raise invalid(
                        f"Invalid update mask path {path.strip()!r}: updatable fields are "
                        "ttl, expire_time and event_types."
                    )
                fields.add(field_name)
        if not fields:
            raise invalid(
                "Nothing to update: set updateMask or one of ttl, expireTime, eventTypes."
            )
        if mask is not None and mask.strip() == "*":
            event_types = parse_event_types(body.get("eventTypes"))
            if body.get("ttl") is not None and body.get("expireTime") is not None:
                raise invalid("Only one of ttl and expireTime may be set (they are one oneof).")
        else:
            if "ttl" in fields and "expireTime" in fields:
                raise invalid(
                    "Only one of ttl and expireTime may be updated (they are one oneof)."
                )
            event_types = (
                parse_event_types(body.get("eventTypes"))
                if "eventTypes" in fields
                else list(sub.event_types)
            )
        if not all(token.scopes & SCOPES_BY_EVENT_TYPE[t] for t in event_types):
            raise insufficient_scopes("UpdateSubscription")
        now = self.state.now()
        new_expiry: datetime | None = None
        if fields & {"ttl", "expireTime"}:
            ttl = (
                parse_duration(body["ttl"], "subscription.ttl")
                if body.get("ttl") is not None
                else None
            )
            expire = (
                _parse_timestamp(body["expireTime"], "subscription.expire_time")
                if "expireTime" in fields and body.get("expireTime") is not None
                else None
            )
            new_expiry = self._expiry(now, ttl, expire, sub.include_resource)
        if validate_only:
            return {
                "name": f"operations/{_new_id()}",
                "done": True,
                "response": {"@type": SUBSCRIPTION_TYPE, **self.subscription_json(sub)},
            }
        sub.reconciling = True

        def effect() -> None:
            sub.reconciling = False
            if sub.id not in self.subscriptions:
                return  # expired or deleted meanwhile
            sub.event_types = list(event_types)
            applied = self.state.now()
            if new_expiry is not None:
                # The lifetime counts from the request; reminders are armed again for it.
                sub.expire_time = new_expiry
                self._arm_reminders(sub, applied)
            sub.update_time = applied

        return self.operation_json(self._new_operation(user, sub.name, effect))

    def delete(
        self,
        name_id: str,
        user: str,
        token: Token,
        *,
        allow_missing: bool,
        etag: str | None,
        validate_only: bool,
    ) -> JSON:
        if not _ID_RE.match(name_id):
            raise not_found()
        sub = self.subscriptions.get(name_id)
        if (sub is None or not sub.visible) and allow_missing:
            # "the request succeeds but doesn't delete the subscription".
            return {
                "name": f"operations/{_new_id()}",
                "done": True,
                "response": {"@type": EMPTY_TYPE},
            }
        sub = self._own(name_id, user, method="DeleteSubscription", token=token)
        if etag is not None and etag != self.subscription_json(sub)["etag"]:
            # "If present, it must match with the server's etag. Otherwise, request fails with
            # the status ABORTED."
            raise ApiError("ABORTED", "The etag does not match the subscription's current etag.")
        if validate_only:
            return {
                "name": f"operations/{_new_id()}",
                "done": True,
                "response": {"@type": EMPTY_TYPE},
            }

        def effect() -> None:
            self.subscriptions.pop(sub.id, None)

        op = self._new_operation(user, sub.name, effect)
        op.response = {"@type": EMPTY_TYPE}
        return self.operation_json(op)

    def reactivate(
        self, name_id: str, user: str, token: Token, endpoint_problem: str | None
    ) -> JSON:
        """subscriptions.reactivate. Refused (FAILED_PRECONDITION, naming every error still
        present) while a cause persists: the reactivate guide says the failed request's
        "output contains any errors that are still present". `endpoint_problem` was probed
        before the lock was taken."""
        sub = self._own(name_id, user, method="ReactivateSubscription", token=token)
        if not all(token.scopes & SCOPES_BY_EVENT_TYPE[t] for t in sub.event_types):
            raise insufficient_scopes("ReactivateSubscription")
        if sub.state != "SUSPENDED":
            # "This method will ignore or reject any subscription that isn't currently in a
            # suspended state" (stricter reading: rejected).
            raise ApiError("FAILED_PRECONDITION", "The subscription is not suspended.")
        problems: list[str] = []
        reason = sub.suspension_reason or "OTHER"
        if sub.suspended_by_control:
            if not sub.cause_fixed:
                problems.append(reason)
        elif reason == "USER_SCOPE_REVOKED":
            pass  # judged by the grant below: a new token from the user fixes it
        elif reason.startswith("ENDPOINT_"):
            pass  # judged by the endpoint probe below
        elif not sub.cause_fixed and reason not in (
            "USER_AUTHORIZATION_FAILURE",
            "RESOURCE_DELETED",
        ):
            problems.append(reason)
        if endpoint_problem is not None and endpoint_problem not in problems:
            problems.append(endpoint_problem)
        space = self.state.spaces.get(sub.space)
        if space is None:
            problems.append("RESOURCE_DELETED")
        elif sub.user not in space.members:
            problems.append("USER_AUTHORIZATION_FAILURE")
        if self.state.grant_revoked(token.refresh_token):
            problems.append("USER_SCOPE_REVOKED")
        if problems:
            raise ApiError(
                "FAILED_PRECONDITION",
                "The subscription can't be reactivated while these errors are present: "
                + ", ".join(problems),
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": p,
                        "domain": "workspaceevents.googleapis.com",
                        "metadata": {"subscription": sub.name},
                    }
                    for p in problems
                ],
            )
        grant = token.refresh_token

        def effect() -> None:
            sub.state = "ACTIVE"
            sub.suspension_reason = None
            sub.suspended_by_control = False
            sub.cause_fixed = False
            # The user's current grant authorizes from now on ("Obtain another access token").
            sub.grant = grant
            sub.update_time = self.state.now()
            # "Reactivated subscriptions maintain the original expiration date."

        return self.operation_json(self._new_operation(user, sub.name, effect))

    def get_operation(self, op_id: str, user: str) -> JSON:
        op = self.operations.get(op_id)
        if op is None or op.user != user:
            raise not_found()
        return self.operation_json(op)

    # ------------------------------------------------------------- control API (lock held)
    def control_find(self, name: str) -> Subscription:
        sub = self.subscriptions.get(name.removeprefix("subscriptions/"))
        if sub is None:
            raise not_found()
        return sub

    def control_suspend(self, name: str, reason: object) -> JSON:
        if reason not in ERROR_TYPES:
            raise invalid("reason must be one of " + ", ".join(ERROR_TYPES))
        sub = self.control_find(name)
        self._suspend(sub, str(reason), by_control=True)
        return self.subscription_json(sub)

    def control_fix(self, name: str) -> JSON:
        sub = self.control_find(name)
        sub.cause_fixed = True
        return self.subscription_json(sub)

    def control_state(self) -> JSON:
        return {
            "subscriptions": [
                {
                    **self.subscription_json(s),
                    "user": s.user,
                    "created": s.visible,
                    "causeFixed": s.cause_fixed,
                    "suspendedByControl": s.suspended_by_control,
                    "pendingReminderLeadSeconds": list(s.pending_reminders),
                }
                for s in sorted(self.subscriptions.values(), key=lambda s: s.create_time)
            ],
            "operations": [self.operation_json(o) for o in self.operations.values()],
            "queued": len(self._outbox),
        }


# --------------------------------------------------------------------------- Pub/Sub probes
def _topic_exists(publisher: PubSubState, topic: str) -> bool:
    """Whether the Pub/Sub emulator has `topic` in an existing project (no Chat lock held)."""
    m = _TOPIC_RE.match(topic)
    with publisher.lock:
        return m is not None and m.group(1) in publisher.projects and topic in publisher.topics


def _can_publish(publisher: PubSubState, principal: str, topic: str) -> bool:
    """Whether the topic's (or its project's) IAM lets `principal` publish (no Chat lock)."""
    m = _TOPIC_RE.match(topic)
    if m is None:
        return False
    answer = publisher.test_iam_permissions(
        principal, "topics", m.group(1), m.group(2), {"permissions": ["pubsub.topics.publish"]}
    )
    return "pubsub.topics.publish" in answer.get("permissions", [])


# --------------------------------------------------------------------------- HTTP routes
def register_routes(app: Flask, events: WorkspaceEvents) -> None:
    """The workspaceevents v1 paths on the Chat emulator's app, plus their control routes.

    They go through the app's `_gate` like every `/v1/` call: faults, bearer auth (the token's
    scopes land in `g.token`), the request log with route templates.
    """
    # Imported here: google_chat imports this module (the app factory lives there).
    from flask import Response, g, request

    from emulators.google_chat import (
        _bool_arg,
        _json_body,
        _json_response,
        _page_size,
        load_discovery,
    )

    state = events.state
    # Each method's scopes as the discovery document lists them: a token with none of them is
    # refused by Google's front end before the request is looked at.
    doc = load_discovery("workspaceevents")
    method_scopes = {
        m["id"].rsplit(".", 1)[-1] + ("" if r == "subscriptions" else "Operation"): frozenset(
            m.get("scopes", [])
        )
        for r, res in doc["resources"].items()
        for m in res.get("methods", {}).values()
    }
    rpc_names = {
        "create": "CreateSubscription",
        "list": "ListSubscriptions",
        "get": "GetSubscription",
        "patch": "UpdateSubscription",
        "delete": "DeleteSubscription",
        "reactivate": "ReactivateSubscription",
        "getOperation": "GetOperation",
    }

    def token(method: str) -> Token:
        tok: Token = g.token
        if not tok.scopes & method_scopes[method]:
            raise insufficient_scopes(rpc_names[method])
        return tok

    def body() -> JSON:
        return _json_body(SUBSCRIPTION_FIELDS)

    @app.post("/v1/subscriptions")
    def _we_create() -> Response:
        tok = token("create")
        data = body()
        validate_only = _bool_arg("validateOnly")
        spec = parse_create(data)
        # The topic is looked up in the Pub/Sub emulator before the Chat lock is taken.
        problem = events.endpoint_problem_outside_lock(spec.topic)
        with state.lock:
            events.settle()
            return _json_response(
                events.create(
                    g.user, tok, spec, validate_only=validate_only, endpoint_problem=problem
                )
            )

    @app.get("/v1/subscriptions")
    def _we_list() -> Response:
        tok = token("list")
        size = _page_size(50, 100)
        types, target = parse_list_filter(request.args.get("filter", ""))
        with state.lock:
            events.settle()
            subs = events.list_subscriptions(g.user, tok, types, target)
            params = {"filter": request.args.get("filter", ""), "pageSize": size}
            chunk, page_token = state.page(subs, params, size, request.args.get("pageToken"))
            out: JSON = {}
            if chunk:
                out["subscriptions"] = [events.subscription_json(s) for s in chunk]
            if page_token:
                out["nextPageToken"] = page_token
        return _json_response(out)

    @app.get("/v1/subscriptions/<subscription_id>")
    def _we_get(subscription_id: str) -> Response:
        with state.lock:
            events.settle()
            return _json_response(events.get(subscription_id, g.user, token("get")))

    @app.patch("/v1/subscriptions/<subscription_id>")
    def _we_patch(subscription_id: str) -> Response:
        tok = token("patch")
        data = body()
        validate_only = _bool_arg("validateOnly")
        with state.lock:
            events.settle()
            return _json_response(
                events.patch(
                    subscription_id,
                    g.user,
                    tok,
                    data,
                    request.args.get("updateMask"),
                    validate_only=validate_only,
                )
            )

    @app.delete("/v1/subscriptions/<subscription_id>")
    def _we_delete(subscription_id: str) -> Response:
        tok = token("delete")
        allow_missing = _bool_arg("allowMissing")
        validate_only = _bool_arg("validateOnly")
        with state.lock:
            events.settle()
            return _json_response(
                events.delete(
                    subscription_id,
                    g.user,
                    tok,
                    allow_missing=allow_missing,
                    etag=request.args.get("etag"),
                    validate_only=validate_only,
                )
            )

    @app.post("/v1/subscriptions/<subscription_id>:reactivate")
    def _we_reactivate(subscription_id: str) -> Response:
        tok = token("reactivate")
        _json_body(frozenset())  # ReactivateSubscriptionRequest has no fields
        with state.lock:
            sub = events.subscriptions.get(subscription_id)
            topic = sub.topic if sub is not None else None
        problem = events.endpoint_problem_outside_lock(topic) if topic else None
        with state.lock:
            events.settle()
            return _json_response(events.reactivate(subscription_id, g.user, tok, problem))

    @app.get("/v1/operations/<operation_id>")
    def _we_operation(operation_id: str) -> Response:
        with state.lock:
            events.settle()
            return _json_response(events.get_operation(operation_id, token("getOperation").user))

    # ------------------------------------------------------------- control API
    @app.get("/_emulator/subscriptions")
    def _we_control_state() -> Response:
        with state.lock:
            events.settle()
            return _json_response(events.control_state())

    @app.post("/_emulator/subscriptions/<subscription_id>:suspend")
    def _we_control_suspend(subscription_id: str) -> Response:
        data = _json_body()
        with state.lock:
            events.settle()
            return _json_response(events.control_suspend(subscription_id, data.get("reason")))

    @app.post("/_emulator/subscriptions/<subscription_id>:fix")
    def _we_control_fix(subscription_id: str) -> Response:
        with state.lock:
            events.settle()
            return _json_response(events.control_fix(subscription_id))
