"""A local Google Cloud Pub/Sub REST emulator (pubsub.googleapis.com v1) for tests and demos.

Role: serve the `/v1/projects/...` paths that googleapiclient builds from the bundled pubsub v1
discovery document (= `shared/specs/pubsub.v1.json`): topics create/get/delete/publish,
subscriptions create/get/delete/pull/acknowledge/modifyAckDeadline, and get/set/test IAM on
both; plus a control API under `/_emulator/` (projects, config, faults, inspection, an
in-process style `publish` for other emulators) and the `PubSubControl` client. The Google Chat
emulator publishes through `PubSubState.publish_as` as Google's own service account.

It is a claim about the real service, and at least as strict: where Google's docs leave a
choice open, the emulator takes the reading that makes a careless consumer fail (each such
choice is a "stricter reading" row in `emulators/FIDELITY.md`, section Google Cloud Pub/Sub).

Invariants:
- `create_app(state, authenticate=...)` is a factory: no module-level app; every piece of state
  lives in the `PubSubState` passed in, behind its one re-entrant lock (`state.lock`), which is
  also the lock of `state.cond`, the condition long-polling pulls wait on.
- Every error answered by an API or control route is Google's `{"error": {code, message,
  status[, details]}}`; the request log holds `/v1/` calls only.
- Ack lease deadlines are on the injected `monotonic` clock and `publishTime` on the injected
  wall `clock`; only the long-poll hold of a pull is real time (it is how long a socket waits).
- A message is delivered at most once per lease: each delivery has a fresh ack id, valid until
  its lease ends (ack, nack, or deadline); an ack id whose lease ended acknowledges nothing.
- With message ordering on, the outstanding deliveries of one ordering key never overlap with
  undelivered messages of that key: a key is delivered again only once nothing of it is
  outstanding, and its deliveries are always a prefix of its backlog in publish order.
- An unexpected exception in a handler is an emulator bug: recorded (`PubSubEmulator.errors`,
  `check_errors()`), logged, answered 500 INTERNAL "emulator bug: ..." (`emulators/_errors.py`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import functools
import json
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from emulators._errors import HandlerError, HandlerErrors
from emulators._server import ServerHandle, serve_in_thread

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
# token -> (IAM principal such as "user:alice@example.com", granted OAuth scopes), or None.
Authenticate = Callable[[str], tuple[str, frozenset[str]] | None]

SERVICE = "pubsub.googleapis.com"
SCOPE_PUBSUB = "https://www.googleapis.com/auth/pubsub"
SCOPE_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Either scope is enough for every method (discovery doc: each method lists both).
ACCEPTED_SCOPES = frozenset({SCOPE_PUBSUB, SCOPE_CLOUD_PLATFORM})

# Subscription.ackDeadlineSeconds: 0 means the default of 10; otherwise 10..600 (discovery doc).
DEFAULT_ACK_DEADLINE = 10
MIN_ACK_DEADLINE = 10
MAX_ACK_DEADLINE = 600
# Resource limits (https://cloud.google.com/pubsub/quotas#resource_limits).
MAX_PUBLISH_MESSAGES = 1000
MAX_PUBLISH_BYTES = 10_000_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024  # "An ordering key can be up to 1 KB" (ordering guide)
# Defaults echoed on a subscription: retention 7 days, expiration ttl 31 days (discovery doc).
DEFAULT_RETENTION = "604800s"
DEFAULT_EXPIRATION_TTL = "2678400s"
# The etag Google's IAM answers for a resource that never had a policy.
EMPTY_POLICY_ETAG = "ACAB"
# A waiting pull re-reads the (possibly fake) monotonic clock at least this often, seconds.
_WAIT_SLICE = 0.1

DEFAULT_CONFIG: JSON = {
    # How long a pull without returnImmediately holds the request when nothing is deliverable.
    "pull_wait_seconds": 5.0,
    # Faults: each message delivered twice; deliveries in random order ignoring ordering keys;
    # acknowledge answers 200 and does nothing; a multiplier on every ack deadline.
    "duplicate": False,
    "shuffle": False,
    "drop_acks": False,
    "deadline_scale": 1.0,
    # Seed of the shuffle fault's random order (None: a fresh random seed).
    "seed": None,
}

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_TOPIC_NAME_RE = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
_MEMBER_RE = re.compile(
    r"^(allUsers|allAuthenticatedUsers|(user|serviceAccount|group|domain|"
    r"deleted:user|deleted:serviceAccount|deleted:group):.+|principal(Set)?://.+)$"
)

_STATUS_FOR_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_HTTP_FOR_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

_UNAUTH_MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_UNAUTH_INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_SCOPES_MESSAGE = "Request had insufficient authentication scopes."
_DENIED_MESSAGE = "User not authorized to perform this action."
_ABORTED_MESSAGE = (
    "There were concurrent policy changes. Please retry the whole read-modify-write with "
    "exponential backoff."
)


# --------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answered in Google's JSON error shape."""

    def __init__(
        self,
        status: str,
        message: str,
        *,
        code: int | None = None,
        details: list[JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else _HTTP_FOR_STATUS.get(status, 500)
        self.details = details

    def body(self) -> JSON:
        err: JSON = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class PubSubError(Exception):
    """Base of the in-process API's errors (`PubSubState.publish_as`); carries Google's status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class PubSubDenied(PubSubError):
    """The principal lacks the permission (e.g. `pubsub.topics.publish` on the topic)."""


class PubSubNotFound(PubSubError):
    """The topic or its project does not exist."""


class PubSubInvalid(PubSubError, ValueError):
    """The request breaks a rule of the API (bad name, empty message, limits)."""


def _invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def _missing(argument: str) -> ApiError:
    # Wording of a real answer: googleapis/google-cloud-java#997 (max_messages missing).
    return _invalid(f'A required argument is missing in the request: (argument="{argument}").')


def _bad_argument(argument: str) -> ApiError:
    # Wording of a real answer: googleapis/google-cloud-dotnet#5378 (max_messages).
    return _invalid(f"You have passed an invalid argument to the service (argument={argument}).")


def _resource_not_found(resource_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"Resource not found (resource={resource_id}).")


def _project_not_found(project: str) -> ApiError:
    return ApiError(
        "NOT_FOUND",
        f"Requested project not found or user does not have access to it (project={project}). "
        "Make sure to specify the unique project identifier and not the Google Cloud Console "
        "display name.",
    )


def _denied() -> ApiError:
    return ApiError("PERMISSION_DENIED", _DENIED_MESSAGE)


def _unimplemented(what: str) -> ApiError:
    # Not a claim about Google: the emulator refuses what it does not model, loudly.
    return ApiError("UNIMPLEMENTED", f"The Pub/Sub emulator does not support {what}.")


def _check_resource_id(full_name: str, resource_id: str) -> None:
    """Pub/Sub's resource name rules (discovery doc, Topic.name / Subscription.name)."""
    if not _NAME_RE.match(resource_id) or resource_id.lower().startswith("goog"):
        raise _invalid(
            f"Invalid resource name given (name={full_name}). Refer to "
            "https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names for more "
            "information."
        )


def _split_topic_name(name: str) -> tuple[str, str]:
    m = _TOPIC_NAME_RE.match(name)
    if not m:
        raise _invalid(
            f"Invalid resource name given (name={name}). Refer to "
            "https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names for more "
            "information."
        )
    _check_resource_id(name, m.group(2))
    return m.group(1), m.group(2)


# --------------------------------------------------------------------------- IAM
_TOPIC_PERMISSIONS = frozenset(
    f"pubsub.topics.{p}"
    for p in (
        "attachSubscription",
        "delete",
        "detachSubscription",
        "get",
        "getIamPolicy",
        "publish",
        "setIamPolicy",
        "update",
    )
)
_SUBSCRIPTION_PERMISSIONS = frozenset(
    f"pubsub.subscriptions.{p}"
    for p in ("consume", "delete", "get", "getIamPolicy", "setIamPolicy", "update")
)
_PROJECT_PERMISSIONS = frozenset(
    {
        "pubsub.topics.create",
        "pubsub.topics.list",
        "pubsub.subscriptions.create",
        "pubsub.subscriptions.list",
    }
)
_ALL_PERMISSIONS = _TOPIC_PERMISSIONS | _SUBSCRIPTION_PERMISSIONS | _PROJECT_PERMISSIONS
_SET_IAM = frozenset({"pubsub.topics.setIamPolicy", "pubsub.subscriptions.setIamPolicy"})
_GET_IAM = frozenset({"pubsub.topics.getIamPolicy", "pubsub.subscriptions.getIamPolicy"})
_READ = frozenset(
    {
        "pubsub.topics.get",
        "pubsub.topics.list",
        "pubsub.subscriptions.get",
        "pubsub.subscriptions.list",
    }
)
# The Pub/Sub part of each role (https://cloud.google.com/pubsub/docs/access-control and the
# basic roles of https://cloud.google.com/iam/docs/understanding-roles: Owner = Editor plus
# managing roles, so Editor cannot set IAM policies).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/owner": _ALL_PERMISSIONS,
    "roles/editor": _ALL_PERMISSIONS - _SET_IAM,
    "roles/viewer": _READ,
    "roles/pubsub.admin": _ALL_PERMISSIONS,
    "roles/pubsub.editor": _ALL_PERMISSIONS - _SET_IAM - _GET_IAM,
    "roles/pubsub.viewer": _READ,
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.subscriber": frozenset(
        {"pubsub.subscriptions.consume", "pubsub.topics.attachSubscription"}
    ),
}


def _member_matches(member: str, principal: str) -> bool:
    if member == principal or member == "allUsers":
        return True
    if member == "allAuthenticatedUsers":
        return bool(principal)
    if member.startswith("domain:") and principal.startswith("user:"):
        return principal.rsplit("@", 1)[-1].lower() == member.split(":", 1)[1].lower()
    # group: membership is not modelled, so a group binding grants nobody (stricter).
    return False


@dataclass
class Policy:
    """A resource's IAM policy: role -> members, with an etag for read-modify-write."""

    bindings: dict[str, list[str]] = field(default_factory=dict)
    etag: str = EMPTY_POLICY_ETAG

    def grants(self, principal: str) -> set[str]:
        out: set[str] = set()
        for role, members in self.bindings.items():
            if any(_member_matches(m, principal) for m in members):
                out |= ROLE_PERMISSIONS.get(role, frozenset())
        return out

    def to_json(self) -> JSON:
        if not self.bindings:
            return {"etag": self.etag}
        return {
            "version": 1,
            "etag": self.etag,
            "bindings": [{"role": r, "members": list(m)} for r, m in self.bindings.items()],
        }


@dataclass
class Project:
    project_id: str
    # The project's own policy (owners are `roles/owner`); inherited by its topics and subs.
    policy: Policy


# --------------------------------------------------------------------------- model
@dataclass(slots=True)
class StoredMessage:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    publish_time: float  # wall clock, seconds
    seq: int  # global publish order

    def to_json(self) -> JSON:
        out: JSON = {}
        # proto3 JSON leaves out empty fields: no `data` for an attributes-only message.
        if self.data:
            out["data"] = base64.b64encode(self.data).decode("ascii")
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        out["messageId"] = self.message_id
        out["publishTime"] = _rfc3339(self.publish_time)
        if self.ordering_key:
            out["orderingKey"] = self.ordering_key
        return out


@dataclass(slots=True, eq=False)
class Entry:
    """One message's state in one subscription."""

    message: StoredMessage
    # Live deliveries: ack id -> lease deadline (monotonic). Two with the duplicate fault.
    leases: dict[str, float] = field(default_factory=dict)
    # Acknowledged but kept: with ordering, until every earlier message of its key is gone,
    # because redelivering an earlier one redelivers it too (ordering guide).
    acked: bool = False
    deliveries: int = 0

    @property
    def pending(self) -> bool:
        return not self.acked and not self.leases


@dataclass
class Topic:
    name: str
    project: str
    labels: dict[str, str]
    retention: str | None
    policy: Policy = field(default_factory=Policy)
    subscriptions: list[str] = field(default_factory=list)
    published: int = 0

    def to_json(self) -> JSON:
        out: JSON = {"name": self.name}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.retention:
            out["messageRetentionDuration"] = self.retention
        return out


@dataclass
class Subscription:
    name: str
    project: str
    topic: str  # "_deleted-topic_" once the topic is deleted (discovery doc, Subscription.topic)
    ack_deadline: int
    ordering: bool
    extras: JSON  # accepted configuration echoed back (labels, retention, expiration, retry)
    policy: Policy = field(default_factory=Policy)
    entries: list[Entry] = field(default_factory=list)
    ack_index: dict[str, Entry] = field(default_factory=dict)
    # Second copies owed by the duplicate fault, served before anything else.
    duplicates: collections.deque[Entry] = field(default_factory=collections.deque)

    def to_json(self) -> JSON:
        out: JSON = {
            "name": self.name,
            "topic": self.topic,
            "pushConfig": {},
            "ackDeadlineSeconds": self.ack_deadline,
            "messageRetentionDuration": DEFAULT_RETENTION,
            "expirationPolicy": {"ttl": DEFAULT_EXPIRATION_TTL},
            "state": "ACTIVE",
        }
        out.update(self.extras)
        if self.ordering:
            out["enableMessageOrdering"] = True
        return out


@dataclass
class Fault:
    """An injected HTTP fault for the next `count` API requests matching method and path."""

    count: int
    status: int | None
    method: str | None
    path_regex: str | None
    latency_ms: int

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_regex or re.search(self.path_regex, path) is not None


@dataclass(frozen=True, slots=True)
class LogEntry:
    method: str
    path: str
    template: str
    status: int
    principal: str | None


def _rfc3339(ts: float) -> str:
    """RFC 3339, Z-normalized, with 3 fractional digits (PubsubMessage.publishTime: 0, 3, 6 or
    9 digits)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------- JSON fields
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@functools.cache
def load_discovery() -> JSON:
    """The pubsub v1 discovery doc bundled with google-api-python-client (= pubsub.v1.json)."""
    from googleapiclient.discovery_cache import get_static_doc

    text = get_static_doc("pubsub", "v1")
    if text is None:
        raise RuntimeError("google-api-python-client has no bundled pubsub v1 discovery document")
    return dict(json.loads(text))


def _schema_fields(schema: str) -> frozenset[str]:
    return frozenset(load_discovery()["schemas"][schema].get("properties", {}))


def _check_fields(obj: Any, schema: str, at: str) -> JSON:
    """`obj` must be an object whose keys are fields of discovery schema `schema`."""
    if not isinstance(obj, dict):
        where = f" at '{at}'" if at else ""
        raise _invalid(f"Invalid JSON payload received. Expected an object{where}.")
    known = _schema_fields(schema)
    for key in obj:
        if key not in known:
            where = f" at '{at}'" if at else ""
            raise _invalid(
                f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'
            )
    return obj


def _int32(value: Any, path: str) -> int:
    # proto3 JSON takes an int32 as a number or a decimal string.
    if isinstance(value, bool):
        raise _invalid(f"Invalid value at '{path}' (TYPE_INT32), {json.dumps(value)}")
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"-?\d+", value)
    ):
        number = int(value)
    if number is not None and -(2**31) <= number < 2**31:
        return number
    raise _invalid(f"Invalid value at '{path}' (TYPE_INT32), {json.dumps(value)}")


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"Invalid value at '{path}' (TYPE_BOOL), {json.dumps(value)}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"Invalid value at '{path}' (TYPE_STRING), {json.dumps(value)}")
    return value


def _strings(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise _invalid(f"Invalid value at '{path}' (TYPE_STRING), {json.dumps(value)}")
    return [_string(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _string_map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _invalid(f"Invalid value at '{path}' (type.googleapis.com/map), {json.dumps(value)}")
    return {str(k): _string(v, f"{path}[{k}]") for k, v in value.items()}


def _decode_bytes(value: Any, path: str) -> bytes:
    # proto3 JSON bytes: standard or URL-safe base64, padding optional.
    text = _string(value, path)
    failed = _invalid(
        f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for {json.dumps(text)}"
    )
    cleaned = text.replace("-", "+").replace("_", "/")
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", cleaned):
        raise failed
    cleaned = cleaned.rstrip("=")
    if len(cleaned) % 4 == 1:
        raise failed
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise failed from None


# --------------------------------------------------------------------------- state
class PubSubState:
    """All emulator state and the API's rules. Every public method takes `lock` itself (it is
    re-entrant, so a caller may hold it around several calls)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.clock = clock
        self.monotonic = monotonic
        self.closed = False
        self.reset()

    # ------------------------------------------------------------- administration
    def reset(self) -> None:
        """Forget everything: projects, topics, subscriptions, faults, the log and the config."""
        with self.lock:
            self.config: JSON = dict(DEFAULT_CONFIG)
            self.rng = random.Random()
            # Pulls held open right now (a test waits on this instead of sleeping).
            self.waiting_pulls = 0
            self.projects: dict[str, Project] = {}
            self.topics: dict[str, Topic] = {}
            self.subscriptions: dict[str, Subscription] = {}
            self.faults: list[Fault] = []
            self.log: list[LogEntry] = []
            self.publish_count = 0
            self._seq = 0
            # Message ids: decimal strings, unique across the emulator (Google: within a topic).
            self._next_message_id = random.randrange(10**15, 9 * 10**15)
            self.cond.notify_all()

    def close(self) -> None:
        """Wake every waiting pull so that it answers now (used when the server stops)."""
        with self.lock:
            self.closed = True
            self.cond.notify_all()

    def add_project(
        self,
        project_id: str,
        owners: Iterable[str] = (),
        bindings: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Register a project: `owners` (IAM principals) get `roles/owner`; `bindings` maps more
        roles to principals on the project (inherited by its topics and subscriptions)."""
        policy = Policy()
        roles: dict[str, list[str]] = {}
        if owners:
            roles["roles/owner"] = list(owners)
        for role, members in (bindings or {}).items():
            if role not in ROLE_PERMISSIONS:
                raise ValueError(f"unknown role {role!r}")
            roles.setdefault(role, []).extend(members)
        for members in roles.values():
            for member in members:
                if not _MEMBER_RE.match(member):
                    raise ValueError(f"not an IAM principal: {member!r}")
        policy.bindings = roles
        with self.lock:
            self.projects[project_id] = Project(project_id, policy)

    def set_config(self, **settings: Any) -> JSON:
        """Change config keys (see DEFAULT_CONFIG); unknown keys or bad values raise ValueError
        and leave the running config untouched."""
        with self.lock:
            config = dict(self.config)
            for key, value in settings.items():
                if key not in config:
                    raise ValueError(f"unknown config key: {key!r}")
                config[key] = value
            for key in ("duplicate", "shuffle", "drop_acks"):
                if not isinstance(config[key], bool):
                    raise ValueError(f"{key} must be true or false")
            for key in ("pull_wait_seconds", "deadline_scale"):
                value = config[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{key} must be a number")
                config[key] = float(value)
            if config["pull_wait_seconds"] < 0:
                raise ValueError("pull_wait_seconds must not be negative")
            if config["deadline_scale"] <= 0:
                raise ValueError("deadline_scale must be positive")
            seed = config["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError("seed must be an integer or null")
            if "seed" in settings:
                self.rng = random.Random(seed)
            self.config = config
            # A fault switched on (shuffle ignores ordering keys) can make a message deliverable
            # to a pull that is waiting now.
            self.cond.notify_all()
            return dict(config)

    def add_fault(
        self,
        count: int = 1,
        status: int | None = None,
        method: str | None = None,
        path_regex: str | None = None,
        latency_ms: int = 0,
    ) -> None:
        """Fail (or delay) the next `count` API requests matching `method` and `path_regex`."""
        if status is None and not latency_ms:
            status = 503
        if path_regex is not None:
            try:
                re.compile(path_regex)
            except re.error as err:
                raise ValueError(f"path_regex is not a regular expression: {err}") from None
        with self.lock:
            self.faults.append(Fault(count, status, method, path_regex, latency_ms))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            return fault

    def clear_requests(self) -> None:
        with self.lock:
            self.log.clear()

    def requests_json(self) -> JSON:
        with self.lock:
            counts: dict[str, int] = {}
            for e in self.log:
                key = f"{e.method} {e.template}"
                counts[key] = counts.get(key, 0) + 1
            rows = [
                {
                    "method": e.method,
                    "path": e.path,
                    "template": e.template,
                    "status": e.status,
                    "principal": e.principal,
                }
                for e in self.log
            ]
        return {"requests": rows, "counts": counts}

    def state_json(self) -> JSON:
        """Topics, subscriptions with their backlog counts, the publish count and the config."""
        with self.lock:
            now = self.monotonic()
            subs = []
            for sub in self.subscriptions.values():
                self._expire(sub, now)
                subs.append(
                    {
                        "name": sub.name,
                        "topic": sub.topic,
                        "ackDeadlineSeconds": sub.ack_deadline,
                        "enableMessageOrdering": sub.ordering,
                        "undelivered": sum(1 for e in sub.entries if e.pending),
                        "outstanding": sum(1 for e in sub.entries if e.leases),
                        "acked_retained": sum(1 for e in sub.entries if e.acked),
                        "duplicates_pending": len(sub.duplicates),
                    }
                )
            return {
                "projects": sorted(self.projects),
                "topics": [
                    {
                        "name": t.name,
                        "subscriptions": list(t.subscriptions),
                        "published": t.published,
                    }
                    for t in self.topics.values()
                ],
                "subscriptions": subs,
                "publish_count": self.publish_count,
                "waiting_pulls": self.waiting_pulls,
                "config": dict(self.config),
            }

    # ------------------------------------------------------------- lookups and IAM
    def _project(self, project: str) -> Project:
        found = self.projects.get(project)
        if found is None:
            raise _project_not_found(project)
        return found

    def _permissions(self, principal: str, project: str, policy: Policy | None) -> set[str]:
        perms = self._project(project).policy.grants(principal)
        if policy is not None:
            perms |= policy.grants(principal)
        return perms

    def _require(self, principal: str, project: str, policy: Policy | None, perm: str) -> None:
        if perm not in self._permissions(principal, project, policy):
            raise _denied()

    def _topic_for(self, principal: str, project: str, topic_id: str, perm: str) -> Topic:
        """The topic, once the name, the project and `perm` are checked: a caller without the
        permission learns nothing about whether it exists (403 before 404)."""
        name = f"projects/{project}/topics/{topic_id}"
        _check_resource_id(name, topic_id)
        topic = self.topics.get(name)
        self._require(principal, project, topic.policy if topic else None, perm)
        if topic is None:
            raise _resource_not_found(topic_id)
        return topic

    def _sub_for(self, principal: str, project: str, sub_id: str, perm: str) -> Subscription:
        name = f"projects/{project}/subscriptions/{sub_id}"
        _check_resource_id(name, sub_id)
        sub = self.subscriptions.get(name)
        self._require(principal, project, sub.policy if sub else None, perm)
        if sub is None:
            raise _resource_not_found(sub_id)
        return sub

    # ------------------------------------------------------------- topics
    def create_topic(self, principal: str, project: str, topic_id: str, body: JSON) -> JSON:
        name = f"projects/{project}/topics/{topic_id}"
        _check_fields(body, "Topic", "")
        _check_resource_id(name, topic_id)
        if "name" in body and body["name"] != name:
            raise _invalid(f"Resource name in the body ({body['name']}) does not match the URL.")
        labels = _string_map(body.get("labels", {}), "labels")
        retention = body.get("messageRetentionDuration")
        if retention is not None:
            _check_retention(_string(retention, "message_retention_duration"))
        for key in ("kmsKeyName", "schemaSettings", "ingestionDataSourceSettings"):
            if body.get(key):
                raise _unimplemented(f"topic {key}")
        if body.get("messageTransforms"):
            raise _unimplemented("message transforms")
        with self.lock:
            self._require(principal, project, None, "pubsub.topics.create")
            if name in self.topics:
                raise ApiError(
                    "ALREADY_EXISTS",
                    f"Resource already exists in the project (resource={topic_id}).",
                )
            topic = Topic(name=name, project=project, labels=labels, retention=retention)
            self.topics[name] = topic
            return topic.to_json()

    def get_topic(self, principal: str, project: str, topic_id: str) -> JSON:
        with self.lock:
            return self._topic_for(principal, project, topic_id, "pubsub.topics.get").to_json()

    def delete_topic(self, principal: str, project: str, topic_id: str) -> None:
        with self.lock:
            topic = self._topic_for(principal, project, topic_id, "pubsub.topics.delete")
            # Subscriptions survive, detached from the name (discovery doc, topics.delete).
            for sub_name in topic.subscriptions:
                sub = self.subscriptions.get(sub_name)
                if sub is not None:
                    sub.topic = "_deleted-topic_"
            del self.topics[topic.name]

    def publish(self, principal: str, project: str, topic_id: str, body: JSON) -> JSON:
        _check_fields(body, "PublishRequest", "")
        raw = body.get("messages")
        if not raw:
            raise _missing("messages")
        if not isinstance(raw, list):
            raise _invalid("Invalid JSON payload received. 'messages' must be a list.")
        parsed = [_parse_message(m, i) for i, m in enumerate(raw)]
        _check_publish_limits(parsed)
        with self.lock:
            topic = self._topic_for(principal, project, topic_id, "pubsub.topics.publish")
            ids = [self._append(topic, *m) for m in parsed]
            self.cond.notify_all()
        return {"messageIds": ids}

    def publish_as(
        self,
        principal: str,
        topic: str,
        data: bytes,
        attributes: Mapping[str, str],
        ordering_key: str = "",
    ) -> str:
        """Publish one message to `topic` (`projects/P/topics/T`) as IAM `principal`, the way a
        Google service with a grant on the topic does; returns the message id.

        Raises:
            PubSubDenied: the topic's (or project's) policy does not grant `principal`
                `pubsub.topics.publish` (roles/pubsub.publisher, editor, owner, admin).
            PubSubNotFound: the topic or its project does not exist.
            PubSubInvalid: a malformed topic name or message (empty, over a limit).
        """
        try:
            project, topic_id = _split_topic_name(topic)
            message = (bytes(data), dict(attributes), ordering_key)
            _check_message(*message, index=0)
            _check_publish_limits([message])
            with self.lock:
                found = self._topic_for(principal, project, topic_id, "pubsub.topics.publish")
                message_id = self._append(found, *message)
                self.cond.notify_all()
                return message_id
        except ApiError as err:
            kind: type[PubSubError] = {
                "PERMISSION_DENIED": PubSubDenied,
                "NOT_FOUND": PubSubNotFound,
            }.get(err.status, PubSubInvalid)
            raise kind(err.status, err.message) from None

    def _append(self, topic: Topic, data: bytes, attributes: dict[str, str], key: str) -> str:
        """Store one message and hand it to every subscription attached now (lock held)."""
        self._seq += 1
        self._next_message_id += 1
        msg = StoredMessage(
            message_id=str(self._next_message_id),
            data=data,
            attributes=attributes,
            ordering_key=key,
            publish_time=self.clock(),
            seq=self._seq,
        )
        topic.published += 1
        self.publish_count += 1
        # Only subscriptions that exist now receive it: a later subscription starts empty.
        for sub_name in topic.subscriptions:
            sub = self.subscriptions.get(sub_name)
            if sub is not None and sub.topic == topic.name:
                sub.entries.append(Entry(msg))
        return msg.message_id

    # ------------------------------------------------------------- subscriptions
    def create_subscription(self, principal: str, project: str, sub_id: str, body: JSON) -> JSON:
        name = f"projects/{project}/subscriptions/{sub_id}"
        _check_fields(body, "Subscription", "")
        _check_resource_id(name, sub_id)
        if "name" in body and body["name"] != name:
            raise _invalid(f"Resource name in the body ({body['name']}) does not match the URL.")
        if not body.get("topic"):
            raise _missing("topic")
        topic_name = _string(body["topic"], "topic")
        topic_project, topic_id = _split_topic_name(topic_name)
        deadline = _int32(body.get("ackDeadlineSeconds", 0), "ack_deadline_seconds")
        if deadline == 0:
            deadline = DEFAULT_ACK_DEADLINE
        if not MIN_ACK_DEADLINE <= deadline <= MAX_ACK_DEADLINE:
            raise _invalid(
                f"Invalid ack deadline given (ack_deadline={deadline}). The ack deadline must be "
                f"between {MIN_ACK_DEADLINE} and {MAX_ACK_DEADLINE} seconds."
            )
        ordering = _bool(body.get("enableMessageOrdering", False), "enable_message_ordering")
        extras = _subscription_extras(body)
        with self.lock:
            self._require(principal, project, None, "pubsub.subscriptions.create")
            if name in self.subscriptions:
                raise ApiError(
                    "ALREADY_EXISTS",
                    f"Resource already exists in the project (resource={sub_id}).",
                )
            topic = self._topic_for(
                principal, topic_project, topic_id, "pubsub.topics.attachSubscription"
            )
            sub = Subscription(
                name=name,
                project=project,
                topic=topic.name,
                ack_deadline=deadline,
                ordering=ordering,
                extras=extras,
            )
            self.subscriptions[name] = sub
            topic.subscriptions.append(name)
            return sub.to_json()

    def get_subscription(self, principal: str, project: str, sub_id: str) -> JSON:
        with self.lock:
            sub = self._sub_for(principal, project, sub_id, "pubsub.subscriptions.get")
            return sub.to_json()

    def delete_subscription(self, principal: str, project: str, sub_id: str) -> None:
        with self.lock:
            sub = self._sub_for(principal, project, sub_id, "pubsub.subscriptions.delete")
            del self.subscriptions[sub.name]
            topic = self.topics.get(sub.topic)
            if topic is not None and sub.name in topic.subscriptions:
                topic.subscriptions.remove(sub.name)
            # Pulls waiting on it answer NOT_FOUND now (discovery doc, subscriptions.delete).
            self.cond.notify_all()

    # ------------------------------------------------------------- delivery
    def _lease_seconds(self, seconds: float) -> float:
        return seconds * float(self.config["deadline_scale"])

    def _end_leases(self, sub: Subscription, entry: Entry) -> None:
        for ack_id in entry.leases:
            sub.ack_index.pop(ack_id, None)
        entry.leases.clear()

    def _redeliver_from(self, sub: Subscription, entry: Entry) -> None:
        """`entry` is deliverable again (lease over, not acked). With ordering, every later
        message of its key is redelivered as well, even acknowledged ones (ordering guide,
        "Message redelivery")."""
        entry.acked = False
        if not (sub.ordering and entry.message.ordering_key):
            return
        key, seq = entry.message.ordering_key, entry.message.seq
        for later in sub.entries:
            if later.message.ordering_key == key and later.message.seq > seq:
                self._end_leases(sub, later)
                later.acked = False

    def _expire(self, sub: Subscription, now: float) -> None:
        """End the leases whose deadline has passed; unacked messages become deliverable."""
        for entry in list(sub.entries):
            if not entry.leases:
                continue
            for ack_id, deadline in list(entry.leases.items()):
                if deadline <= now:
                    del entry.leases[ack_id]
                    sub.ack_index.pop(ack_id, None)
            if not entry.leases and not entry.acked:
                self._redeliver_from(sub, entry)

    def _commit(self, sub: Subscription) -> None:
        """Drop acknowledged messages that can no longer be redelivered."""
        if not sub.ordering:
            sub.entries = [e for e in sub.entries if not e.acked]
            return
        blocked: set[str] = set()  # keys with an unacked message so far
        kept: list[Entry] = []
        for entry in sub.entries:
            key = entry.message.ordering_key
            if entry.acked and key not in blocked:
                continue  # no earlier message of its key can bring it back
            if key and not entry.acked:
                blocked.add(key)
            kept.append(entry)
        sub.entries = kept

    def _deliverable(self, sub: Subscription, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        pending = [e for e in sub.entries if e.pending]
        if self.config["shuffle"]:
            # The fault ignores ordering keys on purpose: consumers must not rely on order.
            self.rng.shuffle(pending)
            return pending[:limit]
        if not sub.ordering:
            return pending[:limit]
        busy = {e.message.ordering_key for e in sub.entries if e.leases}
        out: list[Entry] = []
        for entry in pending:
            key = entry.message.ordering_key
            if key and key in busy:
                continue  # nothing of a key while an earlier message of it is outstanding
            out.append(entry)
            if len(out) == limit:
                break
        return out

    def _lease(self, sub: Subscription, entry: Entry, now: float, *, copy: bool = False) -> JSON:
        ack_id = secrets.token_urlsafe(32)
        # A duplicate copy of a message already acknowledged (or gone): its ack id acks nothing.
        dead = copy and (entry.acked or all(e is not entry for e in sub.entries))
        if not dead:
            entry.leases[ack_id] = now + self._lease_seconds(sub.ack_deadline)
            sub.ack_index[ack_id] = entry
        return {"ackId": ack_id, "message": entry.message.to_json()}

    def _take(self, sub: Subscription, max_messages: int) -> list[JSON]:
        now = self.monotonic()
        self._expire(sub, now)
        out: list[JSON] = []
        while sub.duplicates and len(out) < max_messages:
            out.append(self._lease(sub, sub.duplicates.popleft(), now, copy=True))
        for entry in self._deliverable(sub, max_messages - len(out)):
            out.append(self._lease(sub, entry, now))
            entry.deliveries += 1
            if self.config["duplicate"] and entry.deliveries == 1:
                sub.duplicates.append(entry)
        return out

    def _next_expiry(self, sub: Subscription) -> float | None:
        deadlines = [d for e in sub.entries for d in e.leases.values()]
        return min(deadlines) if deadlines else None

    def pull(self, principal: str, project: str, sub_id: str, body: JSON) -> JSON:
        """`subscriptions.pull`: long-polls up to `pull_wait_seconds` unless returnImmediately."""
        _check_fields(body, "PullRequest", "")
        max_messages = _int32(body.get("maxMessages", 0), "max_messages")
        if max_messages == 0:
            raise _missing("max_messages")  # proto3: 0 is indistinguishable from unset
        if max_messages < 0:
            raise _bad_argument("max_messages")
        immediately = _bool(body.get("returnImmediately", False), "return_immediately")
        with self.cond:
            self._sub_for(principal, project, sub_id, "pubsub.subscriptions.consume")
            # The hold is real time (how long an HTTP request stays open), not the injected
            # clock: a test that freezes `monotonic` must not freeze its pulls too.
            give_up = time.monotonic() + float(self.config["pull_wait_seconds"])
            self.waiting_pulls += 1
            try:
                while True:
                    sub = self.subscriptions.get(f"projects/{project}/subscriptions/{sub_id}")
                    if sub is None:
                        raise _resource_not_found(sub_id)
                    received = self._take(sub, max_messages)
                    if received or immediately or self.closed:
                        break
                    left = give_up - time.monotonic()
                    if left <= 0:
                        break
                    # Wake for a publish (notify), a lease ending on the injected clock, or the
                    # end of the hold; re-read the injected clock at least every _WAIT_SLICE.
                    expiry = self._next_expiry(sub)
                    if expiry is not None:
                        left = min(left, max(expiry - self.monotonic(), 0.0))
                    self.cond.wait(min(left, _WAIT_SLICE))
            finally:
                self.waiting_pulls -= 1
        # proto3 JSON: an empty response is `{}`, no `receivedMessages` key (PullResponse).
        return {"receivedMessages": received} if received else {}

    def acknowledge(self, principal: str, project: str, sub_id: str, body: JSON) -> None:
        _check_fields(body, "AcknowledgeRequest", "")
        ack_ids = _strings(body.get("ackIds", []), "ack_ids")
        if not ack_ids:
            raise _missing("ack_ids")
        with self.lock:
            sub = self._sub_for(principal, project, sub_id, "pubsub.subscriptions.consume")
            if self.config["drop_acks"]:
                return
            self._expire(sub, self.monotonic())
            for ack_id in ack_ids:
                # Unknown or ended leases: silently nothing, as the API does without
                # exactly-once delivery ("Acknowledging a message whose ack deadline has
                # expired may succeed, but such a message may be redelivered later").
                entry = sub.ack_index.get(ack_id)
                if entry is None:
                    continue
                self._end_leases(sub, entry)
                entry.acked = True
            self._commit(sub)

    def modify_ack_deadline(self, principal: str, project: str, sub_id: str, body: JSON) -> None:
        _check_fields(body, "ModifyAckDeadlineRequest", "")
        ack_ids = _strings(body.get("ackIds", []), "ack_ids")
        seconds = _int32(body.get("ackDeadlineSeconds", 0), "ack_deadline_seconds")
        if not 0 <= seconds <= MAX_ACK_DEADLINE:
            # Wording of a real answer: commercetools/fs2-queues#141.
            raise _invalid(
                f"Invalid ack deadline given (ack_deadline={seconds}). The ack deadline must be "
                f"between 0 and {MAX_ACK_DEADLINE} seconds."
            )
        if not ack_ids:
            raise _missing("ack_ids")
        with self.cond:
            sub = self._sub_for(principal, project, sub_id, "pubsub.subscriptions.consume")
            now = self.monotonic()
            self._expire(sub, now)
            for ack_id in ack_ids:
                entry = sub.ack_index.get(ack_id)
                if entry is None:
                    continue  # an ended lease cannot be extended: the message is due again
                if seconds == 0:
                    # A nack: deliverable again at once (once no other copy is outstanding).
                    del entry.leases[ack_id]
                    del sub.ack_index[ack_id]
                    if not entry.leases:
                        self._redeliver_from(sub, entry)
                else:
                    entry.leases[ack_id] = now + self._lease_seconds(seconds)
            self.cond.notify_all()

    # ------------------------------------------------------------- IAM methods
    def _resource_policy(
        self, principal: str, kind: str, project: str, rid: str, perm: str
    ) -> Policy:
        if kind == "topics":
            return self._topic_for(principal, project, rid, f"pubsub.topics.{perm}").policy
        return self._sub_for(principal, project, rid, f"pubsub.subscriptions.{perm}").policy

    def get_iam_policy(self, principal: str, kind: str, project: str, rid: str) -> JSON:
        with self.lock:
            return self._resource_policy(principal, kind, project, rid, "getIamPolicy").to_json()

    def set_iam_policy(
        self, principal: str, kind: str, project: str, rid: str, body: JSON
    ) -> JSON:
        _check_fields(body, "SetIamPolicyRequest", "")
        raw = body.get("policy")
        if raw is None:
            raise _missing("policy")
        _check_fields(raw, "Policy", "policy")
        bindings = _parse_bindings(raw.get("bindings", []))
        version = _int32(raw.get("version", 0), "policy.version")
        if version not in (0, 1, 3):
            raise _invalid(f"Invalid policy version {version}: valid values are 0, 1 and 3.")
        if raw.get("auditConfigs"):
            raise _unimplemented("audit configs")
        etag = raw.get("etag")
        with self.lock:
            policy = self._resource_policy(principal, kind, project, rid, "setIamPolicy")
            # Optimistic concurrency: a stale etag is refused; no etag overwrites (Policy.etag).
            if etag is not None and _string(etag, "policy.etag") != policy.etag:
                raise ApiError("ABORTED", _ABORTED_MESSAGE)
            policy.bindings = bindings
            policy.etag = base64.b64encode(secrets.token_bytes(8)).decode("ascii")
            return policy.to_json()

    def test_iam_permissions(
        self, principal: str, kind: str, project: str, rid: str, body: JSON
    ) -> JSON:
        _check_fields(body, "TestIamPermissionsRequest", "")
        asked = _strings(body.get("permissions", []), "permissions")
        valid = _TOPIC_PERMISSIONS if kind == "topics" else _SUBSCRIPTION_PERMISSIONS
        for perm in asked:
            if "*" in perm:
                raise _invalid(f"Permissions with wildcards are not allowed: {perm}.")
            if perm not in valid:
                raise _invalid(f"Permission {perm} is not valid for this resource.")
        name = f"projects/{project}/{kind}/{rid}"
        _check_resource_id(name, rid)
        with self.lock:
            # "If the resource does not exist, this will return an empty set of permissions,
            # not a NOT_FOUND error" (discovery doc); an unknown project likewise.
            if project not in self.projects:
                return {}
            resource = self.topics.get(name) if kind == "topics" else self.subscriptions.get(name)
            if resource is None:
                return {}
            held = self._permissions(principal, project, resource.policy)
        granted = [p for p in asked if p in held]
        return {"permissions": granted} if granted else {}


def _duration(value: Any, path: str) -> float:
    """A google.protobuf.Duration in JSON ("3.5s"), in seconds."""
    text = _string(value, path)
    m = re.fullmatch(r"(\d+)(?:\.(\d{1,9}))?s", text)
    if not m:
        raise _invalid(f"Invalid value at '{path}' (type.googleapis.com/google.protobuf.Duration)")
    return float(f"{m.group(1)}.{m.group(2) or 0}")


def _check_retention(value: str) -> None:
    # "Cannot be more than 31 days or less than 10 minutes" (discovery doc).
    if not 600 <= _duration(value, "message_retention_duration") <= 31 * 86400:
        raise _invalid("message_retention_duration must be between 10 minutes and 31 days.")


def _subscription_extras(body: JSON) -> JSON:
    """Validate what the emulator accepts beyond topic/deadline/ordering; refuse (501) what
    would change delivery in ways it does not model."""
    push = body.get("pushConfig") or {}
    if not isinstance(push, dict):
        raise _invalid("Invalid JSON payload received. 'pushConfig' must be an object.")
    if push.get("pushEndpoint"):
        raise _unimplemented("push subscriptions")
    for key in ("bigqueryConfig", "cloudStorageConfig", "bigtableConfig", "deadLetterPolicy"):
        if body.get(key):
            raise _unimplemented(f"subscription {key}")
    if body.get("filter"):
        raise _unimplemented("subscription filters")
    if body.get("messageTransforms"):
        raise _unimplemented("message transforms")
    for key in ("enableExactlyOnceDelivery", "retainAckedMessages", "detached"):
        if _bool(body.get(key, False), _snake(key)):
            raise _unimplemented(f"{key}=true")
    extras: JSON = {}
    if body.get("labels"):
        extras["labels"] = _string_map(body["labels"], "labels")
    if body.get("messageRetentionDuration"):
        retention = _string(body["messageRetentionDuration"], "message_retention_duration")
        _check_retention(retention)
        extras["messageRetentionDuration"] = retention
    if "expirationPolicy" in body:
        policy = _check_fields(body["expirationPolicy"], "ExpirationPolicy", "expiration_policy")
        # "The minimum allowed value for expiration_policy.ttl is 1 day" (discovery doc).
        if "ttl" in policy and _duration(policy["ttl"], "expiration_policy.ttl") < 86400:
            raise _invalid("expiration_policy.ttl must be at least 1 day.")
        extras["expirationPolicy"] = dict(policy)
    if body.get("retryPolicy"):
        retry = _check_fields(body["retryPolicy"], "RetryPolicy", "retry_policy")
        for key in ("minimumBackoff", "maximumBackoff"):
            # "Value should be between 0 and 600 seconds" (discovery doc, RetryPolicy).
            if key in retry and _duration(retry[key], f"retry_policy.{_snake(key)}") > 600:
                raise _invalid(f"retry_policy.{_snake(key)} must be between 0 and 600 seconds.")
        # Echoed; the backoff itself is not modelled (redelivery is as soon as possible).
        extras["retryPolicy"] = dict(retry)
    return extras


def _parse_message(raw: Any, index: int) -> tuple[bytes, dict[str, str], str]:
    at = f"messages[{index}]"
    _check_fields(raw, "PubsubMessage", at)
    for key in ("messageId", "publishTime"):
        if raw.get(key):
            # "It must not be populated by the publisher" (PubsubMessage): refused (stricter).
            raise _invalid(f"{at}.{_snake(key)} must not be set by the publisher.")
    data = _decode_bytes(raw["data"], f"{at}.data") if "data" in raw else b""
    attributes = _string_map(raw.get("attributes", {}), f"{at}.attributes")
    key = _string(raw.get("orderingKey", ""), f"{at}.ordering_key")
    _check_message(data, attributes, key, index=index)
    return data, attributes, key


def _check_message(data: bytes, attributes: Mapping[str, str], key: str, *, index: int) -> None:
    if not data and not attributes:
        # Wording of a real answer: snowplow/snowbridge#34.
        raise _invalid(
            "One or more messages in the publish request is empty. Each message must contain "
            "either non-empty data, or at least one attribute."
        )
    if len(attributes) > MAX_ATTRIBUTES:
        raise _invalid(f"messages[{index}] has more than {MAX_ATTRIBUTES} attributes.")
    for name, value in attributes.items():
        if not name:
            raise _invalid(f"messages[{index}] has an attribute with an empty key.")
        if name.lower().startswith("goog"):
            raise _invalid(f"Attribute key {name!r} uses the reserved prefix 'goog'.")
        if len(name.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise _invalid(f"Attribute key exceeds {MAX_ATTRIBUTE_KEY_BYTES} bytes.")
        if len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise _invalid(f"Attribute value exceeds {MAX_ATTRIBUTE_VALUE_BYTES} bytes.")
    if len(key.encode()) > MAX_ORDERING_KEY_BYTES:
        raise _invalid(f"Ordering key exceeds {MAX_ORDERING_KEY_BYTES} bytes.")


def _check_publish_limits(messages: list[tuple[bytes, dict[str, str], str]]) -> None:
    if len(messages) > MAX_PUBLISH_MESSAGES:
        raise _invalid(
            f"The value for message_count is too large. You passed {len(messages)} in the "
            f"request, but the maximum value is {MAX_PUBLISH_MESSAGES}."
        )
    size = sum(
        len(d) + sum(len(k.encode()) + len(v.encode()) for k, v in a.items()) + len(o.encode())
        for d, a, o in messages
    )
    if size > MAX_PUBLISH_BYTES:
        raise _invalid(f"The publish request exceeds the maximum size of {MAX_PUBLISH_BYTES}.")
    if len({o for _, _, o in messages}) > 1:
        # "All PubsubMessages published in a given PublishRequest must specify the same
        # ordering_key value" (discovery doc, PubsubMessage.orderingKey).
        raise _invalid("All messages in a publish request must have the same ordering key.")


def _parse_bindings(raw: Any) -> dict[str, list[str]]:
    if not isinstance(raw, list):
        raise _invalid("Invalid JSON payload received. 'policy.bindings' must be a list.")
    out: dict[str, list[str]] = {}
    for i, binding in enumerate(raw):
        at = f"policy.bindings[{i}]"
        _check_fields(binding, "Binding", at)
        if binding.get("condition"):
            raise _unimplemented("IAM conditions")
        role = _string(binding.get("role", ""), f"{at}.role")
        if role not in ROLE_PERMISSIONS:
            raise _invalid(f"Role {role} is not supported for this resource.")
        members = _strings(binding.get("members", []), f"{at}.members")
        if not members:
            # "Each of the bindings must contain at least one principal" (Policy.bindings).
            raise _invalid(f"{at} must contain at least one principal.")
        for member in members:
            if not _MEMBER_RE.match(member):
                raise _invalid(f"Invalid principal {member!r} in {at}.")
        bucket = out.setdefault(role, [])
        bucket.extend(m for m in members if m not in bucket)
    return out


# --------------------------------------------------------------------------- the app
class _ResourceId(BaseConverter):
    """One path segment without `:` (resource ids never contain it; `:verb` follows them)."""

    regex = r"[^/:]+"


# Flask endpoint -> (discovery method id, RPC method for ErrorInfo metadata).
ROUTES: dict[str, tuple[str, str]] = {
    "topics_create": ("pubsub.projects.topics.create", "google.pubsub.v1.Publisher.CreateTopic"),
    "topics_get": ("pubsub.projects.topics.get", "google.pubsub.v1.Publisher.GetTopic"),
    "topics_delete": ("pubsub.projects.topics.delete", "google.pubsub.v1.Publisher.DeleteTopic"),
    "topics_publish": ("pubsub.projects.topics.publish", "google.pubsub.v1.Publisher.Publish"),
    "topics_getIamPolicy": (
        "pubsub.projects.topics.getIamPolicy",
        "google.iam.v1.IAMPolicy.GetIamPolicy",
    ),
    "topics_setIamPolicy": (
        "pubsub.projects.topics.setIamPolicy",
        "google.iam.v1.IAMPolicy.SetIamPolicy",
    ),
    "topics_testIamPermissions": (
        "pubsub.projects.topics.testIamPermissions",
        "google.iam.v1.IAMPolicy.TestIamPermissions",
    ),
    "subscriptions_create": (
        "pubsub.projects.subscriptions.create",
        "google.pubsub.v1.Subscriber.CreateSubscription",
    ),
    "subscriptions_get": (
        "pubsub.projects.subscriptions.get",
        "google.pubsub.v1.Subscriber.GetSubscription",
    ),
    "subscriptions_delete": (
        "pubsub.projects.subscriptions.delete",
        "google.pubsub.v1.Subscriber.DeleteSubscription",
    ),
    "subscriptions_pull": (
        "pubsub.projects.subscriptions.pull",
        "google.pubsub.v1.Subscriber.Pull",
    ),
    "subscriptions_acknowledge": (
        "pubsub.projects.subscriptions.acknowledge",
        "google.pubsub.v1.Subscriber.Acknowledge",
    ),
    "subscriptions_modifyAckDeadline": (
        "pubsub.projects.subscriptions.modifyAckDeadline",
        "google.pubsub.v1.Subscriber.ModifyAckDeadline",
    ),
    "subscriptions_getIamPolicy": (
        "pubsub.projects.subscriptions.getIamPolicy",
        "google.iam.v1.IAMPolicy.GetIamPolicy",
    ),
    "subscriptions_setIamPolicy": (
        "pubsub.projects.subscriptions.setIamPolicy",
        "google.iam.v1.IAMPolicy.SetIamPolicy",
    ),
    "subscriptions_testIamPermissions": (
        "pubsub.projects.subscriptions.testIamPermissions",
        "google.iam.v1.IAMPolicy.TestIamPermissions",
    ),
}


def _json_response(
    body: JSON, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False), status=status, headers=headers)
    resp.content_type = "application/json; charset=UTF-8"
    return resp


def _json_body() -> JSON:
    data = request.get_data()
    if not data:
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        raise _invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received. Expected an object.")
    return body


def _template(rule: str) -> str:
    """`/v1/projects/<rid:project>/topics/<rid:topic>:publish` -> `.../{project}/topics/{topic}:
    publish`, the key of the request log's counts."""
    return re.sub(r"<(?:[a-z_]+:)?([A-Za-z_]+)>", r"{\1}", rule)


def create_app(
    state: PubSubState,
    *,
    authenticate: Authenticate,
    sleep: Callable[[float], None] = time.sleep,
    errors: HandlerErrors | None = None,
) -> Flask:
    """Build the emulator's Flask app around `state` (API, control API, discovery).

    `authenticate(token)` maps a bearer token to (IAM principal, granted scopes), or None for
    an unknown token (401). An unexpected exception in a handler is recorded in `errors` (a
    fresh one if None, also at `app.extensions["emulator_errors"]`), logged, answered 500.
    """
    app = Flask("pubsub_emulator")
    app.url_map.converters["rid"] = _ResourceId
    bugs = errors if errors is not None else HandlerErrors("pubsub")
    app.extensions["emulator_errors"] = bugs

    def principal() -> str:
        return str(g.principal)

    @app.before_request
    def _gate() -> Response | None:
        g.principal = None
        g.api = request.path.startswith("/v1/")
        if not g.api:
            return None
        fault = state.take_fault(request.method, request.path)
        if fault is not None:
            if fault.latency_ms:
                sleep(fault.latency_ms / 1000.0)  # outside the lock: others proceed meanwhile
            if fault.status:
                status = _STATUS_FOR_HTTP.get(fault.status, "UNKNOWN")
                raise ApiError(status, f"Injected fault ({fault.status}).", code=fault.status)
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise ApiError("UNAUTHENTICATED", _UNAUTH_MISSING)
        scheme, _, token = auth.partition(" ")
        identity = authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if identity is None:
            raise ApiError("UNAUTHENTICATED", _UNAUTH_INVALID)
        g.principal, scopes = identity
        if not scopes & ACCEPTED_SCOPES:
            endpoint = request.url_rule.endpoint if request.url_rule is not None else ""
            rpc = ROUTES.get(endpoint, ("", ""))[1]
            raise ApiError(
                "PERMISSION_DENIED",
                _SCOPES_MESSAGE,
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                        "domain": "googleapis.com",
                        "metadata": {"service": SERVICE, "method": rpc},
                    }
                ],
            )
        return None

    @app.after_request
    def _after(resp: Response) -> Response:
        if g.get("api"):
            rule = request.url_rule.rule if request.url_rule is not None else request.path
            entry = LogEntry(
                method=request.method,
                path=request.path,
                template=_template(rule),
                status=resp.status_code,
                principal=g.get("principal"),
            )
            with state.lock:
                state.log.append(entry)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        headers = {}
        if err.status == "UNAUTHENTICATED":
            headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
        return _json_response(err.body(), err.code, headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        code = err.code or 500
        if code == 405:
            code = 404  # no such method on that path: Google's front end answers 404 too
        status = _STATUS_FOR_HTTP.get(code, "UNKNOWN")
        message = "Requested entity was not found." if code == 404 else str(err.description)
        return _json_response(ApiError(status, message, code=code).body(), code)

    @app.errorhandler(Exception)
    def _internal(err: Exception) -> Response:
        # Neither an ApiError nor an HTTPException (their handlers win): an emulator bug.
        bug = bugs.record(request.method, request.path, err)
        return _json_response(ApiError("INTERNAL", bug.message()).body(), 500)

    # ------------------------------------------------------------- discovery
    @app.get("/$discovery/rest")
    def _discovery() -> Response:
        if request.args.get("version", "v1") != "v1":
            raise ApiError("NOT_FOUND", "Requested entity was not found.")
        doc = dict(load_discovery())
        root = request.host_url  # ends with "/"
        doc["rootUrl"] = doc["baseUrl"] = doc["mtlsRootUrl"] = root
        return _json_response(doc)

    # ------------------------------------------------------------- topics
    topic_rule = "/v1/projects/<rid:project>/topics/<rid:topic>"

    @app.put(topic_rule, endpoint="topics_create")
    def _create_topic(project: str, topic: str) -> Response:
        return _json_response(state.create_topic(principal(), project, topic, _json_body()))

    @app.get(topic_rule, endpoint="topics_get")
    def _get_topic(project: str, topic: str) -> Response:
        return _json_response(state.get_topic(principal(), project, topic))

    @app.delete(topic_rule, endpoint="topics_delete")
    def _delete_topic(project: str, topic: str) -> Response:
        state.delete_topic(principal(), project, topic)
        return _json_response({})

    @app.post(topic_rule + ":publish", endpoint="topics_publish")
    def _publish(project: str, topic: str) -> Response:
        return _json_response(state.publish(principal(), project, topic, _json_body()))

    # ------------------------------------------------------------- subscriptions
    sub_rule = "/v1/projects/<rid:project>/subscriptions/<rid:subscription>"

    @app.put(sub_rule, endpoint="subscriptions_create")
    def _create_sub(project: str, subscription: str) -> Response:
        body = _json_body()
        return _json_response(state.create_subscription(principal(), project, subscription, body))

    @app.get(sub_rule, endpoint="subscriptions_get")
    def _get_sub(project: str, subscription: str) -> Response:
        return _json_response(state.get_subscription(principal(), project, subscription))

    @app.delete(sub_rule, endpoint="subscriptions_delete")
    def _delete_sub(project: str, subscription: str) -> Response:
        state.delete_subscription(principal(), project, subscription)
        return _json_response({})

    @app.post(sub_rule + ":pull", endpoint="subscriptions_pull")
    def _pull(project: str, subscription: str) -> Response:
        return _json_response(state.pull(principal(), project, subscription, _json_body()))

    @app.post(sub_rule + ":acknowledge", endpoint="subscriptions_acknowledge")
    def _ack(project: str, subscription: str) -> Response:
        state.acknowledge(principal(), project, subscription, _json_body())
        return _json_response({})

    @app.post(sub_rule + ":modifyAckDeadline", endpoint="subscriptions_modifyAckDeadline")
    def _modack(project: str, subscription: str) -> Response:
        state.modify_ack_deadline(principal(), project, subscription, _json_body())
        return _json_response({})

    # ------------------------------------------------------------- IAM on both
    for kind, rule, arg in (
        ("topics", topic_rule, "topic"),
        ("subscriptions", sub_rule, "subscription"),
    ):
        _register_iam(app, state, kind, rule, arg, principal)

    _register_control(app, state)
    return app


def _register_iam(
    app: Flask, state: PubSubState, kind: str, rule: str, arg: str, principal: Callable[[], str]
) -> None:
    def get_policy(project: str, **ids: str) -> Response:
        return _json_response(state.get_iam_policy(principal(), kind, project, ids[arg]))

    def set_policy(project: str, **ids: str) -> Response:
        body = _json_body()
        return _json_response(state.set_iam_policy(principal(), kind, project, ids[arg], body))

    def test_permissions(project: str, **ids: str) -> Response:
        body = _json_body()
        return _json_response(
            state.test_iam_permissions(principal(), kind, project, ids[arg], body)
        )

    app.add_url_rule(rule + ":getIamPolicy", f"{kind}_getIamPolicy", get_policy, methods=["GET"])
    app.add_url_rule(rule + ":setIamPolicy", f"{kind}_setIamPolicy", set_policy, methods=["POST"])
    app.add_url_rule(
        rule + ":testIamPermissions",
        f"{kind}_testIamPermissions",
        test_permissions,
        methods=["POST"],
    )


# --------------------------------------------------------------------------- control API
def _register_control(app: Flask, state: PubSubState) -> None:
    def control_call(fn: Callable[[], JSON]) -> Response:
        try:
            return _json_response(fn())
        except (ValueError, TypeError) as err:
            raise _invalid(str(err)) from None

    @app.post("/_emulator/reset")
    def _reset() -> Response:
        state.reset()
        return _json_response({})

    @app.post("/_emulator/projects")
    def _add_project() -> Response:
        data = _json_body()

        def run() -> JSON:
            project = str(data.get("project", ""))
            if not project:
                raise ValueError("project is required")
            state.add_project(project, data.get("owners", ()), data.get("bindings"))
            return {"project": project}

        return control_call(run)

    @app.post("/_emulator/config")
    def _config() -> Response:
        data = _json_body()
        return control_call(lambda: state.set_config(**data))

    @app.get("/_emulator/state")
    def _state() -> Response:
        return _json_response(state.state_json())

    @app.get("/_emulator/requests")
    def _requests() -> Response:
        return _json_response(state.requests_json())

    @app.delete("/_emulator/requests")
    def _clear_requests() -> Response:
        state.clear_requests()
        return _json_response({})

    @app.post("/_emulator/faults")
    def _add_fault() -> Response:
        data = _json_body()

        def run() -> JSON:
            state.add_fault(
                count=int(data.get("count", 1)),
                status=int(data["status"]) if data.get("status") is not None else None,
                method=data.get("method"),
                path_regex=data.get("path_regex"),
                latency_ms=int(data.get("latency_ms", 0)),
            )
            return {}

        return control_call(run)

    @app.delete("/_emulator/faults")
    def _clear_faults() -> Response:
        state.clear_faults()
        return _json_response({})

    @app.post("/_emulator/publish")
    def _publish_as() -> Response:
        # `publish_as` for a caller in another process (a Google service publishing).
        data = _json_body()
        try:
            payload = base64.b64decode(str(data.get("data_base64", "")), validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("data_base64 is not valid base64") from None
        try:
            message_id = state.publish_as(
                str(data.get("principal", "")),
                str(data.get("topic", "")),
                payload,
                {str(k): str(v) for k, v in (data.get("attributes") or {}).items()},
                str(data.get("ordering_key", "")),
            )
        except PubSubError as err:
            raise ApiError(err.status, str(err)) from None
        return _json_response({"messageId": message_id})


# --------------------------------------------------------------------------- Python entry points
class PubSubControl:
    """A thin `requests` client for the control API; each method returns the parsed JSON.

    Raises:
        requests.HTTPError: the control API answered 4xx/5xx (body in Google's error shape).
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: JSON | None = None) -> JSON:
        resp = self.session.request(
            method, f"{self.base_url}/_emulator{path}", json=body, timeout=self.timeout
        )
        resp.raise_for_status()
        return dict(resp.json())

    def reset(self) -> JSON:
        return self._call("POST", "/reset")

    def add_project(
        self,
        project: str,
        owners: Iterable[str] = (),
        bindings: Mapping[str, Iterable[str]] | None = None,
    ) -> JSON:
        body: JSON = {"project": project, "owners": list(owners)}
        if bindings is not None:
            body["bindings"] = {role: list(members) for role, members in bindings.items()}
        return self._call("POST", "/projects", body)

    def set_config(self, **settings: Any) -> JSON:
        """Config keys: pull_wait_seconds, duplicate, shuffle, drop_acks, deadline_scale, seed."""
        return self._call("POST", "/config", settings)

    def state(self) -> JSON:
        return self._call("GET", "/state")

    def requests(self) -> JSON:
        return self._call("GET", "/requests")

    def clear_requests(self) -> JSON:
        return self._call("DELETE", "/requests")

    def add_fault(
        self,
        count: int = 1,
        status: int | None = None,
        method: str | None = None,
        path_regex: str | None = None,
        latency_ms: int = 0,
    ) -> JSON:
        body: JSON = {"count": count, "latency_ms": latency_ms}
        if status is not None:
            body["status"] = status
        if method is not None:
            body["method"] = method
        if path_regex is not None:
            body["path_regex"] = path_regex
        return self._call("POST", "/faults", body)

    def clear_faults(self) -> JSON:
        return self._call("DELETE", "/faults")

    def publish_as(
        self,
        principal: str,
        topic: str,
        data: bytes,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str = "",
    ) -> str:
        """`PubSubState.publish_as` over HTTP; a refusal is an HTTPError (403, 404, 400)."""
        body = {
            "principal": principal,
            "topic": topic,
            "data_base64": base64.b64encode(data).decode("ascii"),
            "attributes": dict(attributes or {}),
            "ordering_key": ordering_key,
        }
        return str(self._call("POST", "/publish", body)["messageId"])


class PubSubEmulator:
    """A running emulator: `url`, `control`, `state` (in-process access), `stop()`.

    `errors` / `check_errors()`: the unexpected exceptions its handlers raised (emulator bugs).
    """

    def __init__(self, handle: ServerHandle, state: PubSubState, errors: HandlerErrors) -> None:
        self._handle = handle
        self.state = state
        self.url = handle.url
        self.control = PubSubControl(self.url)
        self._errors = errors

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        authenticate: Authenticate,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> PubSubEmulator:
        """Serve a fresh emulator on `host:port` (0 = any free port) in a daemon thread."""
        state = PubSubState(clock=clock, monotonic=monotonic)
        errors = HandlerErrors("pubsub")
        app = create_app(state, authenticate=authenticate, errors=errors)
        handle = serve_in_thread(app, host, port)
        logger.info("pubsub emulator listening on %s", handle.url)
        return cls(handle, state, errors)

    @property
    def errors(self) -> list[HandlerError]:
        """Unexpected exceptions raised by handlers and not yet reported by `check_errors()`."""
        return self._errors.errors

    def check_errors(self) -> None:
        """Raise the first unexpected handler exception, if any (then forget them all)."""
        self._errors.check()

    @property
    def port(self) -> int:
        return self._handle.port

    def discovery_url(self) -> str:
        """The `discoveryServiceUrl` template for googleapiclient's `build()`."""
        return f"{self.url}/$discovery/rest?version={{apiVersion}}"

    def discovery_document(self) -> JSON:
        """pubsub.v1.json with rootUrl/baseUrl pointing here (for `build_from_document`)."""
        doc = json.loads(json.dumps(load_discovery()))
        doc["rootUrl"] = doc["baseUrl"] = doc["mtlsRootUrl"] = self.url + "/"
        return dict(doc)

    def stop(self) -> None:
        self.state.close()  # waiting pulls answer now instead of holding the shutdown
        self.control.session.close()
        self._handle.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m emulators.pubsub --port 8085 --token TOKEN=user:me@example.com --project p`.

    Every `--token` gets both Pub/Sub scopes; every `--project` is owned by all token holders.
    """
    parser = argparse.ArgumentParser(description="Local Google Cloud Pub/Sub REST emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--token", action="append", default=[], help="TOKEN=principal")
    parser.add_argument("--project", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tokens = dict(t.split("=", 1) for t in args.token)

    def authenticate(token: str) -> tuple[str, frozenset[str]] | None:
        who = tokens.get(token)
        return (who, ACCEPTED_SCOPES) if who else None

    emu = PubSubEmulator.start(args.host, args.port, authenticate=authenticate)
    for project in args.project:
        emu.state.add_project(project, owners=tokens.values())
    try:
        emu._handle.thread.join()
    except KeyboardInterrupt:
        emu.stop()


if __name__ == "__main__":
    main()
