"""Google Workspace Events and Cloud Pub/Sub clients: subscriptions to a space's messages, and the
topic and pull subscription they are delivered through.

Role: the only module that talks to workspaceevents.googleapis.com and pubsub.googleapis.com (or
emulators standing in for them). `WorkspaceEventsClient` creates, finds, renews, reactivates and
deletes Workspace Events subscriptions (`//chat.googleapis.com/spaces/X` -> a Pub/Sub topic);
`PubSubClient` prepares the topic (IAM included) and the pull subscription, and pulls, acks and
extends messages. Both return frozen dataclasses parsed in one place (`from_api`) and raise one
exception tree (`EventsError`); nothing past this module sees a raw JSON dict or a googleapiclient
exception. It builds on `google_chat_client`'s Google plumbing (error-body parser, discovery
rewrite, time helpers) and imports nothing else of ours.

Invariants:
- Every API, transport and credential failure becomes an `EventsError` in ONE function
  (`_to_events_error`); `_GoogleJsonClient._call` is the only place that retries. Retries are
  bounded (`max_attempts`), only for `EventsUnavailable` (5xx, 429, timeouts, dropped
  connections), with exponential backoff through the injected `sleep`; a 429 waits its
  `Retry-After`, and one longer than `backoff_max_seconds` is raised instead of slept.
- `PubSubClient.pull` is one attempt: the puller's own loop decides when to pull again, so a
  long poll never hides inside a retry loop here. Its socket timeout is `pull_timeout_seconds`
  (a long poll may legitimately hold the connection), every other call has `timeout_seconds`.
  An expired access token is still refreshed (google-auth's AuthorizedHttp retries a 401 once).
- Long-running operations (subscription create/patch/reactivate/delete) are polled with
  `operations.get` until `done`, doubling the wait from `operation_poll_seconds` up to
  `backoff_max_seconds`, for at most `operation_timeout_seconds` (then `EventsUnavailable`
  OPERATION_TIMEOUT: the operation may still finish; look the subscription up before retrying).
- httplib2 is not thread-safe: each thread gets its own `httplib2.Http` + `AuthorizedHttp`
  (the puller runs in its own thread). Redirects are never followed: credentials go only to the
  API host they were given for (httplib2 would follow a GET redirect to any host; it drops the
  Authorization header when it does, but a redirect from these APIs is not expected at all and
  is reported as `EventsRejected` REDIRECT).
- `api_endpoint` replaces the bundled discovery documents' root URLs, so every call (operation
  polls included) goes to it; without it, Google's hosts. No discovery document is fetched.
- Secrets (tokens) are never logged; error messages name the method, path and Google's message.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import google.auth.credentials
import google.auth.exceptions
import google_auth_httplib2
import httplib2
from googleapiclient import discovery
from googleapiclient.errors import HttpError
from googleapiclient.http import HttpRequest

from google_chat_client import (
    GoogleErrorBody,
    bundled_discovery_document,
    parse_google_error,
    parse_rfc3339,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

# The target resource prefix of a Chat space (full resource name, AIP-122).
CHAT_SPACE_TARGET_PREFIX = "//chat.googleapis.com/spaces/"
# subscriptions.list: "If unspecified or set to 0, up to 50 ... The maximum value is 100."
SUBSCRIPTIONS_PAGE_SIZE = 100
# Ack ids per acknowledge/modifyAckDeadline request. The discovery doc sets no count; Google's
# own client libraries send at most 1,000 (googleapis/python-pubsub#802, "parity with the java
# client": 2,500 could make the request too big for Pub/Sub's request size limit).
ACK_IDS_PER_REQUEST = 1000
# ModifyAckDeadlineRequest: "The maximum deadline you can specify in a single request is 600
# seconds"; 0 hands the message back for redelivery.
MAX_ACK_DEADLINE_SECONDS = 600
# 403 reasons that mean "slow down" rather than "forbidden" (as google_chat_client reads them).
_RATE_LIMIT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
)
# A Workspace Events subscription name inside an error text (not Pub/Sub's
# `projects/p/subscriptions/s`).
_SUBSCRIPTION_NAME = re.compile(r"(?<![\w/.-])subscriptions/[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------


class EventsError(Exception):
    """Base of every error these clients raise.

    `status` is Google's status name (`NOT_FOUND`, `PERMISSION_DENIED`, ...; None for transport
    errors), `reason` Google's ErrorInfo reason (`ACCESS_TOKEN_SCOPE_INSUFFICIENT`) or a short
    tag of ours (TIMEOUT, CONNECTION, REDIRECT, OPERATION_TIMEOUT), `http_status` the HTTP status
    (None when there was no HTTP answer, or for an operation's error).
    """

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.http_status = http_status


class EventsUnavailable(EventsError):
    """Transient: 5xx, 429, timeout, connection error (retried first). Try again later.

    `wait_seconds` is the server's Retry-After, when it sent one.
    """

    def __init__(self, message: str, *, wait_seconds: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.wait_seconds = wait_seconds


class EventsRejected(EventsError):
    """Permanent for this request (4xx, a redirect, an invalid name): do not retry it as is."""


class EventsNotFound(EventsRejected):
    """404 NOT_FOUND."""


class EventsAlreadyExists(EventsRejected):
    """ALREADY_EXISTS (409, or an operation's error). `existing` is the existing Workspace
    Events subscription's name when Google's error names it (one subscription per target
    resource and user), else None: then `find_subscription` finds it."""

    def __init__(self, message: str, *, existing: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.existing = existing


class EventsPermissionDenied(EventsRejected):
    """403: an IAM permission or an OAuth scope is missing; `reason` keeps Google's reason
    (e.g. ACCESS_TOKEN_SCOPE_INSUFFICIENT, IAM_PERMISSION_DENIED)."""


class EventsAuthError(EventsError):
    """401, or the access token could not be refreshed: the operator must authorize again."""


class EventsOperationFailed(EventsError):
    """A long-running operation finished with an `error`: `status`/`reason` and the message are
    the operation's."""


def _existing_subscription(body: GoogleErrorBody) -> str | None:
    """The Workspace Events subscription an ALREADY_EXISTS error names, if it names one.

    Where Google puts it is undocumented: ResourceInfo.resourceName, an ErrorInfo metadata value
    and the message text are read, in that order.
    """
    texts: list[str] = []
    for detail in body.details:
        if isinstance(detail.get("resourceName"), str):
            texts.append(detail["resourceName"])
    for detail in body.details:
        metadata = detail.get("metadata")
        if isinstance(metadata, Mapping):
            texts.extend(str(value) for value in metadata.values())
    texts.append(body.message or "")
    for text in texts:
        match = _SUBSCRIPTION_NAME.search(text)
        if match:
            return match.group(0)
    return None


def _to_events_error(exc: BaseException, method: str, path: str) -> EventsError:
    """The one place where library, transport and HTTP errors become `EventsError`s."""
    if isinstance(exc, EventsError):
        return exc
    if isinstance(exc, HttpError):
        http_status = int(exc.resp.status)
        body = parse_google_error(exc.content or b"")
        text = f"{method} {path} -> {http_status} {body.status or ''}: {body.message or ''}"
        kw: dict[str, Any] = {
            "status": body.status,
            "reason": body.reason,
            "http_status": http_status,
        }
        rate_limited = http_status == 403 and _RATE_LIMIT_REASONS.intersection(body.reasons)
        if http_status == 429 or rate_limited:
            return EventsUnavailable(text, wait_seconds=retry_after_seconds(exc.resp), **kw)
        if 300 <= http_status < 400:
            # Redirects are not followed (module docstring): a misconfigured endpoint.
            kw["reason"] = "REDIRECT"
            return EventsRejected(f"{text.strip()} (redirects are not followed)", **kw)
        if http_status == 401:
            return EventsAuthError(text, **kw)
        if http_status == 403:
            return EventsPermissionDenied(text, **kw)
        if http_status == 404:
            return EventsNotFound(text, **kw)
        if http_status == 409 and body.status != "ABORTED":
            return EventsAlreadyExists(text, existing=_existing_subscription(body), **kw)
        if http_status in (408, 409, 499) or (http_status >= 500 and http_status != 501):
            # 409 ABORTED is a concurrency conflict and 499 CANCELLED a cut-off call: both may
            # succeed when repeated, like a 5xx.
            return EventsUnavailable(text, **kw)
        return EventsRejected(text, **kw)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return EventsUnavailable(f"{method} {path}: token refresh failed transiently")
        # The token endpoint's error text ("invalid_grant: ...") holds no secret.
        return EventsAuthError(f"{method} {path}: access token refresh failed ({exc.args[0]})")
    if isinstance(exc, google.auth.exceptions.TransportError):
        return EventsUnavailable(f"{method} {path}: token endpoint unreachable: {exc}")
    if isinstance(exc, TimeoutError):
        return EventsUnavailable(f"{method} {path}: timed out", reason="TIMEOUT")
    if isinstance(exc, OSError | http.client.HTTPException | httplib2.HttpLib2Error):
        return EventsUnavailable(
            f"{method} {path}: connection failed: {type(exc).__name__}: {exc}",
            reason="CONNECTION",
        )
    return EventsError(f"{method} {path}: {type(exc).__name__}: {exc}")


def _operation_error(operation_name: str, what: str, error: Mapping[str, Any]) -> EventsError:
    """The exception for an operation that finished with `error` (a google.rpc.Status)."""
    body = GoogleErrorBody.from_status(error)
    text = f"{what}: operation {operation_name} failed: {body.status or body.code}: "
    text += body.message or ""
    if body.status == "ALREADY_EXISTS":
        return EventsAlreadyExists(
            text, existing=_existing_subscription(body), status=body.status, reason=body.reason
        )
    return EventsOperationFailed(text, status=body.status, reason=body.reason)


_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    HttpError,
    google.auth.exceptions.RefreshError,
    google.auth.exceptions.TransportError,
    OSError,
    http.client.HTTPException,
    httplib2.HttpLib2Error,
)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _optional_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return parse_rfc3339(value)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Subscription:
    """A Workspace Events subscription (`subscriptions/{id}`).

    `state` is ACTIVE, SUSPENDED or DELETED; a suspended one says why in `suspension_reason`
    (USER_SCOPE_REVOKED, RESOURCE_DELETED, ENDPOINT_PERMISSION_DENIED, ...) and is brought back
    with `reactivate_subscription` once that is fixed. `expire_time` is when it ends unless
    renewed (Google always sends it).
    """

    name: str
    uid: str
    target_resource: str  # e.g. "//chat.googleapis.com/spaces/AAAA"
    event_types: tuple[str, ...]
    pubsub_topic: str  # "projects/{project}/topics/{topic}"
    include_resource: bool
    state: str
    suspension_reason: str | None
    expire_time: datetime | None
    create_time: datetime | None
    update_time: datetime | None

    @property
    def space_name(self) -> str | None:
        """`spaces/X` for a target `//chat.googleapis.com/spaces/X`, else None (`spaces/-`,
        the "all my spaces" target, names no one space)."""
        if not self.target_resource.startswith(CHAT_SPACE_TARGET_PREFIX):
            return None
        space_id = self.target_resource[len(CHAT_SPACE_TARGET_PREFIX) :]
        if not space_id or "/" in space_id or space_id == "-":
            return None
        return f"spaces/{space_id}"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Subscription:
        reason = _str(data.get("suspensionReason"))
        return cls(
            name=str(data["name"]),
            uid=_str(data.get("uid")),
            target_resource=_str(data.get("targetResource")),
            event_types=tuple(str(t) for t in data.get("eventTypes") or ()),
            pubsub_topic=_str(_mapping(data.get("notificationEndpoint")).get("pubsubTopic")),
            include_resource=bool(_mapping(data.get("payloadOptions")).get("includeResource")),
            state=_str(data.get("state")) or "STATE_UNSPECIFIED",
            suspension_reason=reason if reason and reason != "ERROR_TYPE_UNSPECIFIED" else None,
            expire_time=_optional_time(data.get("expireTime")),
            create_time=_optional_time(data.get("createTime")),
            update_time=_optional_time(data.get("updateTime")),
        )


class MessageAttributes(Mapping[str, str]):
    """A Pub/Sub message's attributes: a read-only mapping held as a sorted tuple of pairs, so
    the frozen record that carries it stays hashable."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: tuple[tuple[str, str], ...] = tuple(
            sorted((str(k), str(v)) for k, v in pairs)
        )

    def __getitem__(self, key: str) -> str:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"MessageAttributes({dict(self._items)!r})"


def _decode_data(value: object) -> bytes:
    """Pub/Sub's base64 `data` (proto3 JSON bytes: standard alphabet; the URL-safe one and
    missing padding are accepted too, as protobuf's JSON parser accepts them)."""
    text = _str(value).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        # Not base64 at all: keep the bytes as sent rather than lose the message.
        return _str(value).encode("utf-8")


@dataclass(frozen=True, slots=True)
class PubSubMessage:
    """One message received by `pull`: ack it with `ack_id` once handled.

    For Workspace Events the message is a CloudEvent in binary mode: the `ce-*` attributes
    (`ce-type`, `ce-time`, `ce-subject`, ...) and the event's JSON `data`.
    """

    ack_id: str
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    ordering_key: str
    publish_time: datetime | None
    delivery_attempt: int | None  # only with a dead-letter policy on the subscription

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> PubSubMessage:
        """Parse a `ReceivedMessage` (`{ackId, message: PubsubMessage, deliveryAttempt}`)."""
        message = _mapping(data.get("message"))
        attempt = data.get("deliveryAttempt")
        return cls(
            ack_id=_str(data.get("ackId")),
            message_id=_str(message.get("messageId")),
            data=_decode_data(message.get("data")),
            attributes=MessageAttributes(_mapping(message.get("attributes"))),
            ordering_key=_str(message.get("orderingKey")),
            publish_time=_optional_time(message.get("publishTime")),
            delivery_attempt=int(attempt) if isinstance(attempt, int | str) and attempt else None,
        )


@dataclass(frozen=True, slots=True)
class IamPolicy:
    """An IAM policy's role bindings and its `etag` (send it back to set the policy: a change
    made meanwhile then fails instead of being overwritten).

    Conditional bindings are not modelled: the policy is read at version 1, as the bridge never
    writes conditions.
    """

    bindings: tuple[tuple[str, tuple[str, ...]], ...]  # (role, members)
    etag: str

    def members(self, role: str) -> tuple[str, ...]:
        """Every member bound to `role` (across bindings, in order, once each)."""
        seen: dict[str, None] = {}
        for bound_role, members in self.bindings:
            if bound_role == role:
                seen.update(dict.fromkeys(members))
        return tuple(seen)

    def with_member(self, role: str, member: str) -> IamPolicy:
        """This policy with `member` bound to `role` (itself when it already is)."""
        if member in self.members(role):
            return self
        bindings = list(self.bindings)
        for index, (bound_role, members) in enumerate(bindings):
            if bound_role == role:
                bindings[index] = (role, (*members, member))
                break
        else:
            bindings.append((role, (member,)))
        return IamPolicy(tuple(bindings), self.etag)

    def to_api(self) -> dict[str, Any]:
        """The `Policy` JSON (bindings and etag)."""
        data: dict[str, Any] = {
            "bindings": [
                {"role": role, "members": list(members)} for role, members in self.bindings
            ]
        }
        if self.etag:
            data["etag"] = self.etag
        return data

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> IamPolicy:
        bindings = []
        for binding in data.get("bindings") or ():
            if isinstance(binding, Mapping) and binding.get("role"):
                members = tuple(str(m) for m in binding.get("members") or ())
                bindings.append((str(binding["role"]), members))
        return cls(tuple(bindings), _str(data.get("etag")))


@dataclass(frozen=True, slots=True)
class PubSubSubscription:
    """A Pub/Sub (pull) subscription: where the puller reads a topic's messages."""

    name: str  # "projects/{project}/subscriptions/{subscription}"
    topic: str  # "projects/{project}/topics/{topic}" ("_deleted-topic_" once it is gone)
    ack_deadline_seconds: int
    enable_message_ordering: bool

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> PubSubSubscription:
        deadline = data.get("ackDeadlineSeconds")
        return cls(
            name=str(data["name"]),
            topic=_str(data.get("topic")),
            # "If this parameter is 0, a default value of 10 seconds is used."
            ack_deadline_seconds=int(deadline) if deadline else 10,
            enable_message_ordering=bool(data.get("enableMessageOrdering")),
        )


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


class _GoogleJsonClient:
    """Per-thread authorized connections and the retry loop, shared by both clients.

    `request_count` counts HTTP attempts (operation polls and retries included).
    """

    _label = "google"  # names the API in log lines

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        *,
        sleep: Callable[[float], None],
        max_attempts: int,
        timeout_seconds: float,
        backoff_base_seconds: float,
        backoff_max_seconds: float,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._credentials = credentials
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._timeout_seconds = timeout_seconds
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        # httplib2.Http is not thread-safe: one authorized connection per thread and timeout.
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self.request_count = 0  # HTTP attempts sent (for logs and metrics)

    def _http(self, timeout: float | None = None) -> google_auth_httplib2.AuthorizedHttp:
        timeout = self._timeout_seconds if timeout is None else timeout
        by_timeout: dict[float, Any] | None = getattr(self._local, "by_timeout", None)
        if by_timeout is None:
            by_timeout = self._local.by_timeout = {}
        authorized = by_timeout.get(timeout)
        if authorized is None:
            http = httplib2.Http(timeout=timeout)
            # Never carry a request to a host the API did not name (module docstring).
            http.follow_redirects = False
            authorized = google_auth_httplib2.AuthorizedHttp(self._credentials, http=http)
            by_timeout[timeout] = authorized
        return authorized

    def _build(self, api: str, api_endpoint: str | None) -> Any:
        """The googleapiclient service of a bundled discovery doc (rewritten to the endpoint)."""
        doc = bundled_discovery_document(api, "v1", api_endpoint=api_endpoint)
        return discovery.build_from_document(doc, http=self._http())

    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))

    def _call(
        self,
        make_request: Callable[[], HttpRequest],
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        final_statuses: frozenset[str] = frozenset(),
    ) -> Any:
        """Execute a request with retries and error mapping; returns the parsed JSON body.

        `make_request` builds a fresh HttpRequest per attempt. An `EventsUnavailable` whose
        `status` is in `final_statuses` is raised at once (a retry could not help).
        """
        attempts = max_attempts or self._max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                request = make_request()
            except TypeError as exc:
                # googleapiclient checks names against the discovery patterns locally.
                raise EventsRejected(f"invalid request: {exc}", status="INVALID_ARGUMENT") from exc
            method = str(request.method)
            path = urlsplit(str(request.uri)).path
            with self._count_lock:
                self.request_count += 1
            try:
                result = request.execute(http=self._http(timeout))
            except _TRANSPORT_ERRORS as exc:
                error = _to_events_error(exc, method, path)
                logger.debug(
                    "%s %s %s -> %s (attempt %d)",
                    self._label,
                    method,
                    path,
                    error.http_status or error.reason,
                    attempt,
                )
                if (
                    not isinstance(error, EventsUnavailable)
                    or attempt >= attempts
                    or error.status in final_statuses
                ):
                    raise error from exc
                wait = self._backoff(attempt)
                if error.wait_seconds is not None:
                    wait = error.wait_seconds
                    if wait > self._backoff_max:
                        raise error from exc
                logger.warning(
                    "%s %s %s failed (%s); retry %d/%d in %.1fs",
                    self._label,
                    method,
                    path,
                    error.status or error.reason or error.http_status,
                    attempt,
                    attempts - 1,
                    wait,
                )
                self._sleep(wait)
                continue
            logger.debug("%s %s %s -> ok (attempt %d)", self._label, method, path, attempt)
            return result


# --------------------------------------------------------------------------------------------
# Workspace Events
# --------------------------------------------------------------------------------------------


def _event_types_filter(event_types: Sequence[str]) -> str:
    """`event_types:"A" OR event_types:"B"` (the discovery doc's grammar; no batch types)."""
    if not event_types:
        raise ValueError("at least one event type is required")
    return " OR ".join(f'event_types:"{t}"' for t in event_types)


class WorkspaceEventsClient(_GoogleJsonClient):
    """Workspace Events subscriptions with typed results; see the module docstring."""

    _label = "workspaceevents"

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        *,
        api_endpoint: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 5,
        timeout_seconds: float = 30.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        operation_poll_seconds: float = 0.2,
        operation_timeout_seconds: float = 60.0,
    ) -> None:
        super().__init__(
            credentials,
            sleep=sleep,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            backoff_base_seconds=backoff_base_seconds,
            backoff_max_seconds=backoff_max_seconds,
        )
        self._clock = clock
        self._poll_seconds = operation_poll_seconds
        self._poll_max = max(operation_poll_seconds, backoff_max_seconds)
        self._operation_timeout = operation_timeout_seconds
        service = self._build("workspaceevents", api_endpoint)
        # Resources built once and shared across threads; each request runs on its thread's http.
        self._subscriptions = service.subscriptions()
        self._operations = service.operations()

    def _wait(self, operation: Any, what: str) -> Mapping[str, Any]:
        """Poll a long-running operation until done; its `response` (may be empty).

        Raises:
            EventsAlreadyExists, EventsOperationFailed: it finished with an error.
            EventsUnavailable: OPERATION_TIMEOUT, not done within operation_timeout_seconds.
        """
        operation = _mapping(operation)
        name = _str(operation.get("name"))
        deadline = self._clock() + self._operation_timeout
        interval = self._poll_seconds
        while not operation.get("done"):
            if not name:
                raise EventsError(f"{what}: an unfinished operation without a name")
            left = deadline - self._clock()
            if left <= 0:
                raise EventsUnavailable(
                    f"{what}: operation {name} not done after {self._operation_timeout:.0f}s",
                    reason="OPERATION_TIMEOUT",
                )
            self._sleep(min(interval, left))  # a last look at the deadline, not past it
            interval = min(self._poll_max, interval * 2)
            operation = _mapping(self._call(lambda: self._operations.get(name=name)))
        error = operation.get("error")
        if isinstance(error, Mapping):
            raise _operation_error(name or "(unnamed)", what, error)
        return _mapping(operation.get("response"))

    def _subscription_of(self, response: Mapping[str, Any], name: str) -> Subscription:
        """The subscription an operation returned, read again if the response left it out
        (an operation superseded by a later change of the subscription answers no response)."""
        if response.get("name") and response.get("targetResource"):
            return Subscription.from_api(response)
        return self.get_subscription(name)

    def create_subscription(
        self,
        target_resource: str,
        event_types: Sequence[str],
        pubsub_topic: str,
        *,
        include_resource: bool = True,
        ttl_seconds: int = 0,
    ) -> Subscription:
        """Subscribe `pubsub_topic` to `event_types` of `target_resource`; waits for the
        operation. `ttl_seconds` 0 asks for the longest lifetime Google allows.

        Retried after a transient failure: a create that took effect makes the retry answer
        ALREADY_EXISTS (one subscription per target resource and user), never a duplicate.

        Raises:
            EventsAlreadyExists: the caller already has a subscription on the target
                (`existing` names it when Google's error does).
            EventsPermissionDenied: a scope is missing, or the topic does not let Chat publish.
        """
        if not event_types:
            raise ValueError("at least one event type is required")
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0")
        body = {
            "targetResource": target_resource,
            "eventTypes": list(event_types),
            "notificationEndpoint": {"pubsubTopic": pubsub_topic},
            "payloadOptions": {"includeResource": include_resource},
            "ttl": f"{int(ttl_seconds)}s",
        }
        what = f"subscribe {target_resource}"
        operation = self._call(lambda: self._subscriptions.create(body=body))
        response = self._wait(operation, what)
        if response.get("name"):
            subscription = self._subscription_of(response, str(response["name"]))
        else:
            # A done operation may leave its response out (one superseded by a later change):
            # the subscription is the caller's one on the target.
            found = self.find_subscription(target_resource, event_types)
            if found is None:
                raise EventsError(f"{what}: the operation finished but no subscription exists")
            subscription = found
        logger.info(
            "subscribed %s to %s as %s (expires %s)",
            pubsub_topic,
            target_resource,
            subscription.name,
            subscription.expire_time,
        )
        return subscription

    def _list(self, flt: str) -> list[Subscription]:
        found: list[Subscription] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"filter": flt, "pageSize": SUBSCRIPTIONS_PAGE_SIZE}
            if token:
                params["pageToken"] = token
            body = _mapping(self._call(partial(self._subscriptions.list, **params)))
            for data in body.get("subscriptions") or ():
                if isinstance(data, Mapping) and data.get("name"):
                    found.append(Subscription.from_api(data))
            token = _str(body.get("nextPageToken")) or None
            if token is None:
                return found

    def find_subscription(
        self, target_resource: str, event_types: Sequence[str]
    ) -> Subscription | None:
        """The caller's subscription on `target_resource` for any of `event_types`, or None."""
        types = _event_types_filter(event_types)
        if len(event_types) > 1:
            types = f"({types})"  # OR inside AND needs parentheses (discovery doc examples)
        flt = f'{types} AND target_resource="{target_resource}"'
        for subscription in self._list(flt):
            if subscription.target_resource == target_resource:
                return subscription
        return None

    def list_subscriptions(self, event_types: Sequence[str]) -> list[Subscription]:
        """Every subscription of the caller for any of `event_types` (all pages)."""
        return self._list(_event_types_filter(event_types))

    def get_subscription(self, name: str) -> Subscription:
        """Raises EventsNotFound when it does not exist (any more)."""
        return Subscription.from_api(self._call(lambda: self._subscriptions.get(name=name)))

    def renew_subscription(self, name: str, *, ttl_seconds: int = 0) -> Subscription:
        """Extend a subscription's life (`ttl`; 0 = the longest Google allows); waits for the
        operation and returns the subscription with its new `expire_time`."""
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0")
        body = {"ttl": f"{int(ttl_seconds)}s"}
        operation = self._call(
            lambda: self._subscriptions.patch(name=name, updateMask="ttl", body=body)
        )
        subscription = self._subscription_of(self._wait(operation, f"renew {name}"), name)
        logger.info("renewed %s until %s", name, subscription.expire_time)
        return subscription

    def reactivate_subscription(self, name: str) -> Subscription:
        """Reactivate a SUSPENDED subscription (after its `suspension_reason` was fixed)."""
        operation = self._call(lambda: self._subscriptions.reactivate(name=name, body={}))
        subscription = self._subscription_of(self._wait(operation, f"reactivate {name}"), name)
        logger.info("reactivated %s (state %s)", name, subscription.state)
        return subscription

    def delete_subscription(self, name: str) -> None:
        """Delete a subscription; one that is already gone counts as deleted (allowMissing)."""
        operation = self._call(lambda: self._subscriptions.delete(name=name, allowMissing=True))
        self._wait(operation, f"delete {name}")
        logger.info("deleted %s", name)


# --------------------------------------------------------------------------------------------
# Pub/Sub
# --------------------------------------------------------------------------------------------


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class PubSubClient(_GoogleJsonClient):
    """Cloud Pub/Sub topics, subscriptions and pulls with typed results; see the module
    docstring."""

    _label = "pubsub"

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        *,
        api_endpoint: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 5,
        timeout_seconds: float = 30.0,
        pull_timeout_seconds: float = 90.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
    ) -> None:
        super().__init__(
            credentials,
            sleep=sleep,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            backoff_base_seconds=backoff_base_seconds,
            backoff_max_seconds=backoff_max_seconds,
        )
        self._pull_timeout = pull_timeout_seconds
        projects = self._build("pubsub", api_endpoint).projects()
        self._topics = projects.topics()
        self._subscriptions = projects.subscriptions()

    # ---- topics -----------------------------------------------------------------------------

    def get_topic(self, topic: str) -> bool:
        """Whether the topic (`projects/P/topics/T`) exists."""
        try:
            self._call(lambda: self._topics.get(topic=topic))
        except EventsNotFound:
            return False
        return True

    def create_topic(self, topic: str) -> None:
        """Create a topic.

        Raises:
            EventsAlreadyExists: it exists (also when a retried create had taken effect).
        """
        self._call(lambda: self._topics.create(name=topic, body={}))
        logger.info("created Pub/Sub topic %s", topic)

    def get_topic_policy(self, topic: str) -> IamPolicy:
        return IamPolicy.from_api(
            _mapping(self._call(lambda: self._topics.getIamPolicy(resource=topic)))
        )

    def set_topic_policy(self, topic: str, policy: IamPolicy) -> IamPolicy:
        """Replace the topic's policy; returns the policy as stored (with its new etag).

        Raises:
            EventsUnavailable: status ABORTED, the policy changed since `policy` was read (its
                etag is stale): read it again and reapply the change. Not retried here, since
                the same stale policy would fail again.
        """
        body = {"policy": policy.to_api()}
        data = self._call(
            lambda: self._topics.setIamPolicy(resource=topic, body=body),
            final_statuses=frozenset({"ABORTED"}),
        )
        logger.info("set the IAM policy of %s", topic)
        return IamPolicy.from_api(_mapping(data))

    def test_topic_permissions(self, topic: str, permissions: Sequence[str]) -> frozenset[str]:
        """The subset of `permissions` the caller holds on the topic."""
        body = {"permissions": list(permissions)}
        data = self._call(lambda: self._topics.testIamPermissions(resource=topic, body=body))
        return frozenset(str(p) for p in _mapping(data).get("permissions") or ())

    # ---- subscriptions ----------------------------------------------------------------------

    def get_subscription(self, subscription: str) -> PubSubSubscription | None:
        """The subscription (`projects/P/subscriptions/S`), or None when it does not exist."""
        try:
            data = self._call(lambda: self._subscriptions.get(subscription=subscription))
        except EventsNotFound:
            return None
        return PubSubSubscription.from_api(data)

    def create_subscription(
        self,
        subscription: str,
        topic: str,
        *,
        ack_deadline_seconds: int = 60,
        enable_message_ordering: bool = True,
    ) -> PubSubSubscription:
        """Create a pull subscription to `topic`.

        Message ordering is on by default because Workspace Events publishes with ordering keys
        (NotificationEndpoint.pubsubTopic in the discovery doc): an edit then never overtakes
        the message it edits.

        Raises:
            EventsAlreadyExists: it exists (also when a retried create had taken effect).
        """
        body = {
            "topic": topic,
            "ackDeadlineSeconds": ack_deadline_seconds,
            "enableMessageOrdering": enable_message_ordering,
        }
        data = self._call(lambda: self._subscriptions.create(name=subscription, body=body))
        logger.info("created Pub/Sub subscription %s to %s", subscription, topic)
        return PubSubSubscription.from_api(data)

    def test_subscription_permissions(
        self, subscription: str, permissions: Sequence[str]
    ) -> frozenset[str]:
        """The subset of `permissions` the caller holds on the subscription."""
        body = {"permissions": list(permissions)}
        data = self._call(
            lambda: self._subscriptions.testIamPermissions(resource=subscription, body=body)
        )
        return frozenset(str(p) for p in _mapping(data).get("permissions") or ())

    # ---- messages ---------------------------------------------------------------------------

    def pull(self, subscription: str, *, max_messages: int = 100) -> list[PubSubMessage]:
        """One long-poll pull: up to `max_messages` messages, [] when none came.

        One attempt (no retry, no backoff here; the puller's loop decides), with its own
        socket timeout (`pull_timeout_seconds`). `returnImmediately` is not sent: Google
        discourages it, and the server waits a bounded time for a message instead.

        Raises:
            EventsUnavailable: a transient failure or a timeout (reason TIMEOUT); pull again.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        body = {"maxMessages": max_messages}
        data = self._call(
            lambda: self._subscriptions.pull(subscription=subscription, body=body),
            max_attempts=1,
            timeout=self._pull_timeout,
        )
        received = _mapping(data).get("receivedMessages") or ()
        messages = [PubSubMessage.from_api(m) for m in received if isinstance(m, Mapping)]
        logger.debug("pulled %d message(s) from %s", len(messages), subscription)
        return messages

    def acknowledge(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Acknowledge messages (in requests of at most ACK_IDS_PER_REQUEST ids; retried, as a
        repeated ack is harmless: "Acknowledging a message more than once will not result in an
        error")."""
        for batch in _batches(ack_ids, ACK_IDS_PER_REQUEST):
            body = {"ackIds": batch}
            self._call(
                partial(self._subscriptions.acknowledge, subscription=subscription, body=body)
            )

    def modify_ack_deadline(self, subscription: str, ack_ids: Sequence[str], seconds: int) -> None:
        """Set the ack deadline of messages to `seconds` from now (0..600; 0 hands them back for
        redelivery), in requests of at most ACK_IDS_PER_REQUEST ids."""
        if not 0 <= seconds <= MAX_ACK_DEADLINE_SECONDS:
            raise ValueError(f"seconds must be within 0..{MAX_ACK_DEADLINE_SECONDS}")
        for batch in _batches(ack_ids, ACK_IDS_PER_REQUEST):
            body = {"ackIds": batch, "ackDeadlineSeconds": seconds}
            self._call(
                partial(
                    self._subscriptions.modifyAckDeadline, subscription=subscription, body=body
                )
            )
