"""In-memory state of the Google Chat emulator: users, spaces, messages, tokens, quotas, faults.

Role: the data model and the rules that do not depend on HTTP (threading, client ids, request ids,
filters, paging, quotas, JSON rendering, the OAuth grants: refresh tokens and the JWT-bearer grant
of service accounts with domain-wide delegation). `emulators/google_chat.py` wraps it in a Flask
app.

Invariants:
- Every read or write of a `ChatState` happens under `ChatState.lock` (the server is threaded).
  The objects below are deliberately mutable: they are the emulator's private store, never handed
  out; everything that leaves the emulator is rendered to JSON under the lock first.
- Message `createTime`s are strictly increasing per emulator, so ordering and `createTime`
  filters are deterministic even when two messages arrive within the same microsecond.
- Errors are raised as `ApiError`, which the app renders in Google's `{"error": {...}}` shape;
  the token endpoint's refusals as `OAuthError` (`{"error", "error_description"}`).
- A service account's private key leaves the emulator once, in the key JSON its creation answers;
  the state keeps only the public key that verifies its assertions.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from emulators import google_chat_markup as markup

JSON = dict[str, Any]

# google.rpc code -> HTTP status (googleapis-common-protos google/rpc/code.proto).
HTTP_FOR_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
STATUS_FOR_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
NOT_FOUND_MESSAGE = "Requested entity was not found."
PERMISSION_MESSAGE = "The caller does not have permission"

MAX_MESSAGE_BYTES = 32_000
MAX_UPLOAD_BYTES = 209_715_200
CLIENT_ID_RE = re.compile(r"^client-[a-z0-9-]+$")
CLIENT_ID_MAX = 63
SPACE_TYPES = ("SPACE", "GROUP_CHAT", "DIRECT_MESSAGE")
THREADING_STATES = ("THREADED_MESSAGES", "GROUPED_MESSAGES", "UNTHREADED_MESSAGES")
REPLY_OPTIONS = (
    "MESSAGE_REPLY_OPTION_UNSPECIFIED",
    "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
    "REPLY_MESSAGE_OR_FAIL",
)
# Message fields a request body may carry (the discovery `Message` properties); anything else is
# rejected as Google's JSON parser does ("Invalid JSON payload received. Unknown name ...").
MESSAGE_FIELDS = frozenset(
    [
        "accessoryWidgets",
        "actionResponse",
        "annotations",
        "argumentText",
        "attachedGifs",
        "attachment",
        "cards",
        "cardsV2",
        "clientAssignedMessageId",
        "createTime",
        "deleteTime",
        "deletionMetadata",
        "elements",
        "emojiReactionSummaries",
        "fallbackText",
        "formattedText",
        "lastUpdateTime",
        "markupSyntax",
        "matchedUrl",
        "name",
        "privateMessageViewer",
        "quotedMessageMetadata",
        "sender",
        "silent",
        "slashCommand",
        "space",
        "text",
        "thread",
        "threadReply",
    ]
)
# updateMask paths: snake_case per the discovery doc, camelCase accepted too (reference §5).
UPDATE_MASK_PATHS = {
    "text": "text",
    "attachment": "attachment",
    "cards": "cards",
    "cards_v2": "cardsV2",
    "cardsv2": "cardsV2",
    "accessory_widgets": "accessoryWidgets",
    "accessorywidgets": "accessoryWidgets",
    "quoted_message_metadata": "quotedMessageMetadata",
    "quotedmessagemetadata": "quotedMessageMetadata",
}
APP_ONLY_FIELDS = ("cards", "cardsV2", "accessoryWidgets")

_AUTH = "https://www.googleapis.com/auth/"
# What a token grants when the test does not say: the Chat scopes the bridge asks for
# (`cli.CHAT_SCOPES`), so a default token behaves like the bridge's real grant.
DEFAULT_SCOPES = frozenset(
    {_AUTH + "chat.messages", _AUTH + "chat.spaces.readonly", _AUTH + "chat.memberships.readonly"}
)

DEFAULT_CONFIG: JSON = {
    "time_scale": 1.0,
    "quotas_enabled": True,
    "sender_details": "full",
    "duplicate_message_id_status": 409,
    # Quota limits: (requests, window seconds) before time_scale is applied.
    "space_write_limit": [1, 1.0],
    "space_read_limit": [15, 1.0],
    "project_write_limit": [3000, 60.0],
    "project_read_limit": [3000, 60.0],
    "access_token_lifetime": 3599,
    # JWT-bearer grant: how far in the future an assertion's `iat` may lie (clock skew between
    # the signer and the token endpoint). Google was observed to accept 300 s; the emulator
    # allows less (stricter reading, docs silent).
    "jwt_clock_skew_seconds": 60,
    "retry_after_header": False,
    # How `text` is read when a create/patch/update names no `markupSyntax`: "Newly created Chat
    # apps default to Markdown" (format-messages), the case of a new bridge install.
    "app_default_markup_syntax": markup.MARKDOWN,
    # Syntax of `formattedText` in answers when the request names none (get/list without the
    # `markupSyntax` parameter, create/patch answers, space events). None = the app default,
    # the stricter reading of "specify markup_syntax ... to override the app-level default".
    "output_default_markup_syntax": None,
    # Workspace Events (emulators/workspace_events.py). Maximum subscription lifetime with
    # resource data in the payload ("Up to 4 hours", 24 h only with domain-wide delegation) and
    # without it ("Up to 7 days"): developers.google.com/workspace/events, "Event data".
    "subscription_max_ttl_seconds": 4 * 3600,
    "subscription_max_ttl_seconds_without_resource": 7 * 24 * 3600,
    # expirationReminder lead times: "12 hours and one hour before the expiration time"
    # (events-lifecycle guide); a lead not shorter than the lifetime is skipped.
    "reminder_lead_seconds": [12 * 3600, 3600],
    # How long a long-running operation stays `done: false` (0 = done in the answer itself,
    # as the create guide shows; the default makes a client poll operations.get).
    "operation_latency_seconds": 0.05,
    # Field names of the Subscription in lifecycle event data: the events-lifecycle guide's
    # examples use snake_case (`expire_time`, `suspension_reason`); "camelCase" is proto JSON.
    "lifecycle_payload_case": "snake_case",
}
# spaces.spaceEvents: how far back events are kept and may be asked for (spaceEvents.list filter).
SPACE_EVENT_WINDOW = timedelta(days=28)
# Non-batch event types a spaceEvents.list filter may name (SpaceEvent.eventType); batch types
# must be omitted from the filter ("Omit batch event types in your filter").
SPACE_EVENT_TYPES = tuple(
    f"google.workspace.chat.{kind}"
    for kind in (
        "message.v1.created",
        "message.v1.updated",
        "message.v1.deleted",
        "membership.v1.created",
        "membership.v1.updated",
        "membership.v1.deleted",
        "reaction.v1.created",
        "reaction.v1.deleted",
        "space.v1.updated",
    )
)
MESSAGE_EVENT_DATA = {
    "google.workspace.chat.message.v1.created": "messageCreatedEventData",
    "google.workspace.chat.message.v1.updated": "messageUpdatedEventData",
    "google.workspace.chat.message.v1.deleted": "messageDeletedEventData",
}


class ApiError(Exception):
    """An error answered in Google's JSON error shape."""

    def __init__(
        self,
        status: str,
        message: str,
        *,
        code: int | None = None,
        details: list[JSON] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else HTTP_FOR_STATUS.get(status, 500)
        self.details = details
        self.headers = headers or {}

    def body(self) -> JSON:
        err: JSON = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def not_found(message: str = NOT_FOUND_MESSAGE) -> ApiError:
    return ApiError("NOT_FOUND", message)


def denied(message: str = PERMISSION_MESSAGE) -> ApiError:
    return ApiError("PERMISSION_DENIED", message)


def rfc3339(ts: datetime) -> str:
    """Google's output form: UTC with microseconds and a `Z` (precision UNCONFIRMED, §2.1)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; a naive or malformed one raises ValueError."""
    if not re.match(
        r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", text
    ):
        raise ValueError(text)
    # fromisoformat accepts at most 6 fractional digits; Google accepts nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return datetime.fromisoformat(text.replace("z", "Z")).astimezone(UTC)


def parse_scopes(value: object) -> frozenset[str]:
    """A token's scopes from the control API: a list or a space-separated string (the OAuth
    `scope` form); absent means DEFAULT_SCOPES."""
    if value is None:
        return DEFAULT_SCOPES
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
        raise invalid("scopes must be a list of scope strings or a space-separated string")
    if not items:
        raise invalid("scopes must not be empty")
    return frozenset(items)


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


_ID_CHARS = string.ascii_letters + string.digits + "_-"


def new_message_id() -> str:
    return f"{_rand(_ID_CHARS, 11)}.{_rand(_ID_CHARS, 11)}"


def new_user_id() -> str:
    return "1" + _rand(string.digits, 20)


@dataclass
class User:
    name: str
    display_name: str
    email: str | None
    type: str
    # Suspended in the Workspace admin console: cannot sign in (no token works, none is issued).
    suspended: bool = False

    @property
    def iam_email(self) -> str:
        """The account's email as IAM knows it (`user:<email>` principals, e.g. on a Pub/Sub
        topic). Every Google account has one, but the emulator lets a test create a user
        without `email` to model the Chat API leaving it out (§6.3); such a user still signs
        in with a derived address, never shown in Chat JSON, so the bridge's email matching is
        unaffected."""
        return self.email or f"{self.name.removeprefix('users/')}@users.chat-emulator.example"


@dataclass
class Space:
    name: str
    display_name: str
    space_type: str
    threading: str
    create_time: datetime
    members: dict[str, datetime] = field(default_factory=dict)  # user name -> join time
    last_active: datetime | None = None

    @property
    def supports_replies(self) -> bool:
        # messageReplyOption is "only supported in named spaces"; unthreaded spaces never reply.
        return self.space_type == "SPACE" and self.threading != "UNTHREADED_MESSAGES"


@dataclass
class Upload:
    token: str
    space: str
    filename: str | None
    content_type: str
    data: bytes

    @property
    def resource_name(self) -> str:
        return f"{self.space}/attachments/{self.token}"


@dataclass
class Reaction:
    id: str
    user: str
    unicode: str


@dataclass
class Message:
    id: str
    space: str
    sender: str
    text: str  # the plain `text`; `doc` is the parsed body every other form derives from
    create_time: datetime
    thread_id: str
    thread_reply: bool
    client_id: str | None = None
    last_update: datetime | None = None
    delete_time: datetime | None = None
    deletion_type: str | None = None
    attachments: list[tuple[str, Upload]] = field(default_factory=list)  # (attachment id, blob)
    reactions: list[Reaction] = field(default_factory=list)
    doc: markup.Doc = ()
    argument_text: str = ""
    mentions: list[tuple[int, int, str]] = field(default_factory=list)  # (start, length, user)

    @property
    def name(self) -> str:
        return f"{self.space}/messages/{self.id}"


@dataclass(frozen=True, slots=True)
class SpaceEvent:
    """One recorded change; its payload is rendered from the message's latest version."""

    id: str
    event_type: str
    time: datetime
    seq: int  # recording order: breaks ties between events of the same microsecond
    message: Message

    @property
    def name(self) -> str:
        return f"{self.message.space}/spaceEvents/{self.id}"


@dataclass
class Thread:
    id: str
    key: str | None


@dataclass
class Token:
    access_token: str
    user: str
    refresh_token: str | None
    expires_at: float  # wall-clock seconds
    revoked: bool = False
    # The OAuth scopes granted: a refreshed access token carries its grant's scopes.
    scopes: frozenset[str] = field(default_factory=lambda: DEFAULT_SCOPES)
    # The `client_id` of the service account whose JWT-bearer assertion minted this token (None
    # for tokens of the refresh-token grant). With `user` empty it is the service account's own
    # token; otherwise it acts as `user` through domain-wide delegation.
    service_account: str | None = None


@dataclass
class Grant:
    """What a refresh token stands for: a user's consent to `scopes`, until revoked."""

    user: str
    scopes: frozenset[str]
    revoked: bool = False


class OAuthError(Exception):
    """A refusal by the OAuth token endpoint, answered `{"error", "error_description"}` with
    HTTP `status` (400, or 401 for `unauthorized_client`)."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> JSON:
        return {"error": self.error, "error_description": self.description}


# --------------------------------------------------------------------------- service accounts
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion's audience: "When making an access token request this value is always
# https://oauth2.googleapis.com/token" (Google, "Using OAuth 2.0 for Server to Server
# Applications"); google-auth puts this constant in `aud` whatever the key file's token_uri says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
MAX_ASSERTION_LIFETIME = 3600  # `exp`: "a maximum of 1 hour after the issued time"
# Token endpoint wordings, as Google's token server answers them (sources in FIDELITY.md, D rows).
SA_NOT_FOUND = "Invalid grant: account not found"
BAD_SIGNATURE = "Invalid JWT Signature."
BAD_AUDIENCE = "Invalid JWT: Failed audience check."
BAD_TIMEFRAME = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values and use a clock with skew to account for clock differences "
    "between systems."
)
MISSING_SCOPE = "Empty or missing scope not allowed."
BAD_SCOPE = "Invalid OAuth scope or ID token audience provided."
BAD_SUBJECT = "Invalid email or User ID"
NOT_DELEGATED = (
    "Client is unauthorized to retrieve access tokens using this method, or client not "
    "authorized for any of the scopes requested."
)
BAD_ASSERTION = "Bad Request"
# Chat's answer to a service account's own token on a method it serves for users only
# (googleapis/google-api-nodejs-client#3507); Chat apps (`chat.bot`) are not emulated.
SA_AUTH_UNSUPPORTED = (
    "This method doesn't support service account authentication. Authenticate with a user account."
)
# A key file's `client_email`: `{account id}@{project id}.iam.gserviceaccount.com`, both 6-30
# characters of lowercase letters, digits and hyphens, starting with a letter.
_SA_EMAIL_RE = re.compile(
    r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@([a-z][a-z0-9-]{4,28}[a-z0-9])\.iam\.gserviceaccount\.com$"
)
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
DEFAULT_SA_EMAIL = "chat-bridge@emulator-project.iam.gserviceaccount.com"
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")


@dataclass
class ServiceAccount:
    """A service account with one key, and the Workspace admin's domain-wide delegation grant.

    Delegation is what the Admin console holds ("Security > API controls > Domain-wide
    delegation"): the account's numeric `client_id` mapped to OAuth scopes, in the Workspace
    account that owns `domains`. No scopes means no delegation.
    """

    client_email: str
    client_id: str
    project_id: str
    key_id: str
    public_key: rsa.RSAPublicKey
    domains: frozenset[str]
    delegated_scopes: frozenset[str]

    def covers(self, email: str) -> bool:
        """True when `email` belongs to a Workspace domain this delegation covers."""
        return email.rpartition("@")[2].lower() in self.domains

    def json(self) -> JSON:
        """What the control API shows of the account (never the private key)."""
        return {
            "client_email": self.client_email,
            "client_id": self.client_id,
            "project_id": self.project_id,
            "private_key_id": self.key_id,
            "domains": sorted(self.domains),
            "delegated_scopes": sorted(self.delegated_scopes),
        }


def _string_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise invalid(f"{name} must be a list of non-empty strings")
    return list(value)


def _domains(value: object) -> frozenset[str]:
    domains = frozenset(d.lower() for d in _string_list(value, "domains"))
    for domain in domains:
        if not _DOMAIN_RE.match(domain):
            raise invalid(f"Invalid domain: {domain!r}")
    return domains


def _scope_set(value: object, name: str) -> frozenset[str]:
    """A list of scopes (the Admin console takes full scope URLs, comma-separated)."""
    if isinstance(value, str):
        value = [x.strip() for x in value.split(",") if x.strip()]
    scopes = frozenset(_string_list(value, name))
    for scope in scopes:
        if not scope.startswith("https://"):
            raise invalid(f"{name}: {scope!r} is not a scope URL")
    return scopes


def _b64url_decode(segment: str) -> bytes:
    if not _B64URL_RE.match(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parse_jwt(assertion: str) -> tuple[JSON, JSON, bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS; ValueError if malformed."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three parts")
    header = json.loads(_b64url_decode(parts[0]))
    claims = json.loads(_b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("JWT header and claims must be objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64url_decode(parts[2])


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _verifies(key: rsa.RSAPublicKey, signed: bytes, signature: bytes) -> bool:
    """RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3)."""
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, as Google generates for service account keys (takes ~0.1 s: callers
    make it outside the state lock)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Fault:
    count: int
    status: int | None
    method: str | None
    path_regex: str | None
    latency_ms: int
    drop_connection: bool

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_regex or re.search(self.path_regex, path) is not None


@dataclass(frozen=True, slots=True)
class LogEntry:
    method: str
    path: str
    query: dict[str, str]
    status: int
    user: str | None
    template: str
    # Bytes of the response body (media downloads: what a ranged read actually fetched).
    response_bytes: int = 0
    # `/token` only: the `grant_type` the client asked for (whatever it was, even unsupported).
    grant_type: str | None = None


class ChatState:
    """All emulator state plus the API rules; callers hold `lock` around every method."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.monotonic = monotonic
        # Called (lock held) with every recorded space event; Workspace Events subscriptions
        # hook in here. Not part of `reset`: the wiring outlives the data.
        self.event_listeners: list[Callable[[SpaceEvent], None]] = []
        self.reset()

    def reset(self) -> None:
        self.config: JSON = json.loads(json.dumps(DEFAULT_CONFIG))
        self.users: dict[str, User] = {}
        self.spaces: dict[str, Space] = {}
        self.messages: dict[str, list[Message]] = {}
        # space -> server id or client id -> message, so lookups stay O(1) in big backfills.
        self.message_index: dict[str, dict[str, Message]] = {}
        self.threads: dict[str, dict[str, Thread]] = {}
        self.uploads: dict[str, Upload] = {}  # resource name -> blob
        self.resumable: dict[str, JSON] = {}  # upload id -> session
        self.request_ids: dict[tuple[str, str], tuple[str, str]] = {}  # -> (user, message name)
        self.tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Grant] = {}
        self.service_accounts: dict[str, ServiceAccount] = {}  # client_id -> account
        self.faults: list[Fault] = []
        self.log: list[LogEntry] = []
        self.quota_hits: dict[tuple[str, str], collections.deque[float]] = {}
        self.page_tokens: dict[str, tuple[str, int]] = {}  # token -> (params digest, offset)
        self.space_events: dict[str, list[SpaceEvent]] = {}  # space -> events, any order
        self._last_time: datetime | None = None

    # ----------------------------------------------------------------- time, ids
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def next_create_time(self, wanted: datetime | None = None) -> datetime:
        ts = wanted or self.now()
        if wanted is None and self._last_time is not None and ts <= self._last_time:
            ts = self._last_time + timedelta(microseconds=1)
        if wanted is None or self._last_time is None or ts > self._last_time:
            self._last_time = ts
        return ts

    # ----------------------------------------------------------------- users, spaces
    def add_user(self, body: JSON) -> User:
        name = body.get("name") or f"users/{new_user_id()}"
        if not re.match(r"^users/[^/]+$", name):
            raise invalid("user name must look like users/{id}")
        user = User(
            name=name,
            display_name=str(body.get("displayName", "")),
            email=body.get("email"),
            type=body.get("type", "HUMAN"),
        )
        if user.type not in ("HUMAN", "BOT"):
            raise invalid("type must be HUMAN or BOT")
        self.users[name] = user
        return user

    def resolve_user(self, name: str) -> User:
        """Canonical user for `users/{id}` or the `users/{email}` alias (reference §2.2)."""
        if name in self.users:
            return self.users[name]
        alias = name.removeprefix("users/")
        for user in self.users.values():
            if user.email and user.email.lower() == alias.lower():
                return user
        raise not_found()

    def add_space(self, body: JSON) -> Space:
        space_type = body.get("spaceType", "SPACE")
        if space_type not in SPACE_TYPES:
            raise invalid("spaceType must be one of " + ", ".join(SPACE_TYPES))
        default_threading = "THREADED_MESSAGES" if space_type == "SPACE" else "UNTHREADED_MESSAGES"
        threading_state = body.get("spaceThreadingState", default_threading)
        if threading_state not in THREADING_STATES:
            raise invalid("spaceThreadingState must be one of " + ", ".join(THREADING_STATES))
        name = body.get("name") or f"spaces/AAAA{_rand(string.ascii_letters + string.digits, 7)}"
        if not re.match(r"^spaces/[^/]+$", name):
            raise invalid("space name must look like spaces/{id}")
        if name in self.spaces:
            raise ApiError("ALREADY_EXISTS", "Space already exists.")
        if space_type == "SPACE" and not body.get("displayName"):
            raise invalid("displayName is required for a SPACE")
        space = Space(
            name=name,
            display_name=str(body.get("displayName", "")),
            space_type=space_type,
            threading=threading_state,
            create_time=self.now(),
        )
        for member in body.get("members", []):
            space.members[self.resolve_user(member).name] = self.now()
        self.spaces[name] = space
        self.messages[name] = []
        self.message_index[name] = {}
        self.threads[name] = {}
        return space

    def space_for(self, name: str, user: str) -> Space:
        space = self.spaces.get(name)
        if space is None:
            raise not_found()
        if user not in space.members:
            raise denied()
        return space

    # ----------------------------------------------------------------- quotas
    def check_quota(self, kind: str, space: str | None, *, message_method: bool = False) -> None:
        """Count one `kind` ("read"/"write") call; raise 429 when over a per-space/project limit.

        The per-project quota (3,000/min) is counted for message methods only (get/list for
        reads; create/patch/update/delete for writes), as the reference's quota table assigns it.
        Sliding windows, shortened by `time_scale` so tests need not wait real seconds. A refused
        call does not consume quota, as a client backing off must eventually get through.
        """
        if not self.config["quotas_enabled"]:
            return
        scale = float(self.config["time_scale"]) or 1.0
        now = self.monotonic()
        keys: list[tuple[tuple[str, str], int, float]] = []
        if space is not None:
            limit, window = self.config[f"space_{kind}_limit"]
            keys.append(((f"space_{kind}", space), int(limit), float(window) / scale))
        if message_method:
            limit, window = self.config[f"project_{kind}_limit"]
            keys.append(((f"project_{kind}", ""), int(limit), float(window) / scale))
        for key, limit, window in keys:
            hits = self.quota_hits.setdefault(key, collections.deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= limit:
                headers = {}
                if self.config.get("retry_after_header"):
                    headers["Retry-After"] = str(max(1, round(hits[0] + window - now)))
                raise ApiError(
                    "RESOURCE_EXHAUSTED",
                    "Resource has been exhausted (e.g. check quota).",
                    details=[
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "RATE_LIMIT_EXCEEDED",
                            "domain": "googleapis.com",
                            "metadata": {"service": "chat.googleapis.com"},
                        }
                    ],
                    headers=headers,
                )
        for key, _limit, _window in keys:
            self.quota_hits[key].append(now)

    # ----------------------------------------------------------------- tokens
    def add_token(self, body: JSON) -> JSON:
        user = self.resolve_user(str(body.get("user", ""))).name
        access = body.get("access_token") or "ya29.emu-" + secrets.token_urlsafe(24)
        refresh = body.get("refresh_token") or "1//emu-" + secrets.token_urlsafe(24)
        expires_in = body.get("expires_in")
        lifetime = float(
            self.config["access_token_lifetime"] if expires_in is None else expires_in
        )
        scopes = parse_scopes(body.get("scopes"))
        self.tokens[access] = Token(access, user, refresh, self.clock() + lifetime, scopes=scopes)
        self.refresh_tokens[refresh] = Grant(user, scopes)
        return {"access_token": access, "refresh_token": refresh, "scopes": sorted(scopes)}

    def refresh(self, refresh_token: str, scope: str | None = None) -> Token:
        """A new access token for the grant behind `refresh_token`, with the grant's scopes.

        Raises:
            OAuthError: unknown or revoked refresh token (`invalid_grant`), or a `scope`
                asking for more than was granted (`invalid_scope`: RFC 6749 §6, "MUST NOT
                include any scope not originally granted").
        """
        grant = self.refresh_tokens.get(refresh_token)
        if grant is None or grant.revoked or self._suspended(grant.user):
            raise OAuthError("invalid_grant", "Token has been expired or revoked.")
        if scope and not set(scope.split()) <= grant.scopes:
            raise OAuthError("invalid_scope", "Some requested scopes were invalid.")
        access = "ya29.emu-" + secrets.token_urlsafe(24)
        lifetime = float(self.config["access_token_lifetime"])
        token = Token(
            access, grant.user, refresh_token, self.clock() + lifetime, scopes=grant.scopes
        )
        self.tokens[access] = token
        return token

    def valid_token(self, access: str) -> Token | None:
        """The access token if it is known, unexpired and its grant not revoked.

        Stricter readings (docs silent on propagation): a suspended user's tokens stop working
        at once, and so does a delegated token once the admin no longer delegates its scopes
        or its user's domain."""
        token = self.tokens.get(access)
        if token is None or token.revoked or token.expires_at <= self.clock():
            return None
        if token.refresh_token:
            grant = self.refresh_tokens.get(token.refresh_token)
            if grant is not None and grant.revoked:
                return None
        if self._suspended(token.user):
            return None
        if token.service_account is not None and not self._still_authorized(token):
            return None
        return token

    def _suspended(self, name: str) -> bool:
        user = self.users.get(name)
        return user is not None and user.suspended

    def _still_authorized(self, token: Token) -> bool:
        """A service account token: its account still exists and, for a delegated token, the
        admin still delegates every scope of it for its user's domain."""
        account = self.service_accounts.get(token.service_account or "")
        if account is None:
            return False
        if not token.user:
            return True
        user = self.users.get(token.user)
        return (
            user is not None
            and user.email is not None
            and account.covers(user.email)
            and token.scopes <= account.delegated_scopes
        )

    def principal(self, token: Token) -> str:
        """Who a token acts as, for the request log: the user, or the service account's email
        for its own token."""
        if token.user or token.service_account is None:
            return token.user
        account = self.service_accounts.get(token.service_account)
        return account.client_email if account is not None else ""

    def user_for_token(self, access: str) -> str | None:
        token = self.valid_token(access)
        return token.user if token is not None else None

    def token_info(self, access: str) -> tuple[str, frozenset[str]] | None:
        """(IAM principal `user:<email>`, granted scopes) of a valid access token, else None:
        what another Google API emulator (Pub/Sub) needs to authenticate the same token."""
        token = self.valid_token(access)
        if token is None:
            return None
        if not token.user and token.service_account is not None:
            # A service account's own token: IAM knows it as `serviceAccount:<email>`.
            return f"serviceAccount:{self.principal(token)}", token.scopes
        user = self.users.get(token.user)
        if user is None:
            return None
        return f"user:{user.iam_email}", token.scopes

    def grant_revoked(self, refresh_token: str | None) -> bool:
        grant = self.refresh_tokens.get(refresh_token) if refresh_token else None
        return grant is not None and grant.revoked

    # ----------------------------------------------------------------- service accounts
    def add_service_account(
        self, body: JSON, token_uri: str, key: rsa.RSAPrivateKey | None = None
    ) -> JSON:
        """Create a service account with one RSA key (`key`, generated when None) and the
        admin's delegation grant; return its complete key JSON, as the Cloud console downloads
        it, with `token_uri` pointing at this emulator.

        Body: `client_email` (default DEFAULT_SA_EMAIL), `domains` (the Workspace domains whose
        admin console holds the grant), `delegated_scopes` (empty = no delegation).
        """
        for name in body:
            if name not in ("client_email", "domains", "delegated_scopes"):
                raise invalid(f"Unknown service account field: {name!r}")
        email = str(body.get("client_email") or DEFAULT_SA_EMAIL)
        match = _SA_EMAIL_RE.match(email)
        if match is None:
            raise invalid(
                f"Invalid client_email {email!r}: expected "
                "{account}@{project}.iam.gserviceaccount.com"
            )
        if any(a.client_email == email for a in self.service_accounts.values()):
            raise ApiError("ALREADY_EXISTS", f"Service account {email} already exists.")
        domains = _domains(body.get("domains"))
        scopes = _scope_set(body.get("delegated_scopes"), "delegated_scopes")
        if key is None:
            key = new_rsa_key()
        account = ServiceAccount(
            client_email=email,
            client_id="1" + _rand(string.digits, 20),  # 21 digits, like Google's
            project_id=match.group(1),
            key_id=secrets.token_hex(20),
            public_key=key.public_key(),
            domains=domains,
            delegated_scopes=scopes,
        )
        self.service_accounts[account.client_id] = account
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return {
            "type": "service_account",
            "project_id": account.project_id,
            "private_key_id": account.key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": account.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + email.replace("@", "%40"),
            "universe_domain": "googleapis.com",
        }

    def set_delegation(self, client_id: str, body: JSON) -> JSON:
        """The admin edits the domain-wide delegation of `client_id`: `scopes` replaces the
        delegated scopes (empty = delegation removed), optional `domains` the covered domains."""
        account = self.service_accounts.get(client_id)
        if account is None:
            raise not_found()
        for name in body:
            if name not in ("scopes", "domains"):
                raise invalid(f"Unknown delegation field: {name!r}")
        if "scopes" not in body:
            raise invalid("scopes is required (an empty list removes the delegation)")
        scopes = _scope_set(body["scopes"], "scopes")
        if "domains" in body:
            account.domains = _domains(body["domains"])
        account.delegated_scopes = scopes
        return account.json()

    def set_suspended(self, name: str, suspended: bool) -> JSON:
        """Suspend (or restore) a user in the Workspace admin console."""
        user = self.resolve_user(name)
        user.suspended = suspended
        return {"name": user.name, "email": user.email, "suspended": user.suspended}

    def jwt_grant(self, assertion: str, audiences: Iterable[str]) -> Token:
        """An access token for a service account's signed assertion (RFC 7523), checked as
        Google's token endpoint does; with `sub`, a token acting as that Workspace user.

        Raises:
            OAuthError: `invalid_grant` (malformed JWT, unknown issuer, bad signature or key id,
                wrong audience, bad times, unknown or suspended subject), `invalid_scope` (no
                or malformed scope), `unauthorized_client` 401 (the subject's domain or one of
                the scopes not delegated to the account's client id).
        """
        try:
            header, claims, signed, signature = parse_jwt(assertion)
        except ValueError:  # also JSON and base64 errors
            raise OAuthError("invalid_grant", BAD_ASSERTION) from None
        issuer = claims.get("iss")
        account = next(
            (a for a in self.service_accounts.values() if a.client_email == issuer), None
        )
        if account is None:
            raise OAuthError("invalid_grant", SA_NOT_FOUND)
        if (
            header.get("alg") != "RS256"
            or header.get("kid") != account.key_id
            or not _verifies(account.public_key, signed, signature)
        ):
            raise OAuthError("invalid_grant", BAD_SIGNATURE)
        if claims.get("aud") not in tuple(audiences):
            raise OAuthError("invalid_grant", BAD_AUDIENCE)
        now = self.clock()
        iat, exp = _seconds(claims.get("iat")), _seconds(claims.get("exp"))
        skew = float(self.config["jwt_clock_skew_seconds"])
        if (
            iat is None
            or exp is None
            or exp <= now
            or iat > now + skew
            or exp <= iat
            or exp - iat > MAX_ASSERTION_LIFETIME
        ):
            raise OAuthError("invalid_grant", BAD_TIMEFRAME)
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        if not scopes:
            raise OAuthError("invalid_scope", MISSING_SCOPE)
        if any(not s.startswith("https://") for s in scopes):
            raise OAuthError("invalid_scope", BAD_SCOPE)
        user_name = ""
        if "sub" in claims:
            user = self._workspace_user(claims["sub"])
            if user is None or user.email is None or user.suspended:
                raise OAuthError("invalid_grant", BAD_SUBJECT)
            if not account.covers(user.email) or not scopes <= account.delegated_scopes:
                raise OAuthError("unauthorized_client", NOT_DELEGATED, status=401)
            user_name = user.name
        access = "ya29.c.emu-" + secrets.token_urlsafe(24)
        lifetime = float(self.config["access_token_lifetime"])
        token = Token(
            access,
            user_name,
            None,
            now + lifetime,
            scopes=scopes,
            service_account=account.client_id,
        )
        self.tokens[access] = token
        return token

    def _workspace_user(self, subject: object) -> User | None:
        """The human user whose primary email is `subject` (case-insensitive), else None."""
        if not isinstance(subject, str) or "@" not in subject:
            return None
        for user in self.users.values():
            if user.type == "HUMAN" and user.email and user.email.lower() == subject.lower():
                return user
        return None

    # ----------------------------------------------------------------- paging
    def page(
        self, items: list[Any], params: JSON, page_size: int, token: str | None
    ) -> tuple[list[Any], str | None]:
        """Slice `items` for one page; the token is bound to the other request parameters."""
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        offset = 0
        if token:
            entry = self.page_tokens.get(token)
            if entry is None:
                raise invalid("The page token is invalid.")
            if entry[0] != digest:
                # Reference §3: all other parameters must match the call that produced the token.
                raise invalid("The page token does not match the request parameters.")
            offset = entry[1]
        chunk = items[offset : offset + page_size]
        next_token = None
        if offset + page_size < len(items):
            next_token = base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
            self.page_tokens[next_token] = (digest, offset + page_size)
        return chunk, next_token

    # ----------------------------------------------------------------- messages
    def find_message(self, space: str, message_id: str, *, deleted: bool = False) -> Message:
        msg = self.message_index.get(space, {}).get(message_id)
        if msg is None or (msg.delete_time is not None and not deleted):
            raise not_found()
        return msg

    def client_id_taken(self, space: str, client_id: str) -> bool:
        """True when a message (even a deleted one) of `space` already has this client id."""
        return client_id in self.message_index.get(space, {})

    def add_message(self, msg: Message) -> None:
        """Store a message in createTime order, index it by server and client id, and record
        its `created` space event (at its createTime, so backdated posts age out too)."""
        self.record_event("google.workspace.chat.message.v1.created", msg, msg.create_time)
        msgs = self.messages[msg.space]
        msgs.append(msg)
        if len(msgs) > 1 and msgs[-2].create_time > msg.create_time:
            msgs.sort(key=lambda m: m.create_time)  # a backdated control-API post
        self.message_index[msg.space][msg.id] = msg
        if msg.client_id:
            self.message_index[msg.space][msg.client_id] = msg

    def new_thread(self, space: str, key: str | None) -> Thread:
        thread = Thread(id=_rand(_ID_CHARS, 11), key=key)
        self.threads[space][thread.id] = thread
        return thread

    def thread_by_key(self, space: str, key: str) -> Thread | None:
        # threadKey is unique per Chat app; the emulator serves one app, so per space.
        for thread in self.threads[space].values():
            if thread.key == key:
                return thread
        return None

    def resolve_thread(
        self, space: Space, option: str, thread_body: JSON | None, legacy_key: str | None
    ) -> tuple[Thread, bool]:
        """Pick the thread for a new message: (thread, is_reply). Reference §4 semantics."""
        if not space.supports_replies:
            return self.new_thread(space.name, None), False
        thread_body = thread_body or {}
        key = thread_body.get("threadKey") or legacy_key
        tname = thread_body.get("name")
        if option == "MESSAGE_REPLY_OPTION_UNSPECIFIED":
            # The default starts a new thread and ignores thread.name and threadKey.
            return self.new_thread(space.name, None), False
        if tname:
            prefix = f"{space.name}/threads/"
            tid = tname[len(prefix) :] if tname.startswith(prefix) else None
            if tid and tid in self.threads[space.name]:
                return self.threads[space.name][tid], True
            if option == "REPLY_MESSAGE_OR_FAIL" and not key:
                raise not_found()
        if key:
            existing = self.thread_by_key(space.name, key)
            if existing is not None:
                return existing, True
            # A new threadKey creates its thread under both reply options.
            return self.new_thread(space.name, key), False
        if option == "REPLY_MESSAGE_OR_FAIL":
            raise not_found()
        return self.new_thread(space.name, None), False

    def thread_has_replies(self, msg: Message) -> bool:
        if msg.thread_reply:
            return False
        return any(
            m is not msg and m.thread_id == msg.thread_id and m.delete_time is None
            for m in self.messages[msg.space]
        )

    def tombstone(self, msg: Message, deletion_type: str) -> None:
        msg.delete_time = self.now()
        msg.deletion_type = deletion_type
        self.record_event("google.workspace.chat.message.v1.deleted", msg, msg.delete_time)

    def edited(self, msg: Message) -> None:
        """Mark a user edit: `lastUpdateTime` and an `updated` space event."""
        msg.last_update = self.now()
        self.record_event("google.workspace.chat.message.v1.updated", msg, msg.last_update)

    def record_event(self, event_type: str, msg: Message, when: datetime) -> None:
        # createTimes are bumped to stay unique, so an edit in the same microsecond could carry
        # an earlier clock reading than its creation; never let it sort before the creation.
        when = max(when, msg.create_time)
        events = self.space_events.setdefault(msg.space, [])
        seq = sum(len(v) for v in self.space_events.values())
        event = SpaceEvent(_rand(_ID_CHARS, 16), event_type, when, seq, msg)
        events.append(event)
        for listener in self.event_listeners:
            listener(event)

    def list_space_events(self, space: str, flt: SpaceEventFilter) -> list[SpaceEvent]:
        """Events of `space` the filter accepts, oldest first, within the 28-day window."""
        horizon = self.now() - SPACE_EVENT_WINDOW
        events = [
            e
            for e in self.space_events.get(space, [])
            if e.time > horizon and flt.accepts(e.event_type, e.time)
        ]
        return sorted(events, key=lambda e: (e.time, e.seq))

    # ----------------------------------------------------------------- message bodies
    def compose(self, msg: Message, source: str, syntax: str) -> None:
        """Set `msg`'s body from `source` read under `syntax` (CHAT or MARKDOWN): the parsed
        Doc, the plain `text`, `argumentText` and the mention offsets."""

        def resolve(name: str) -> str | None:
            if name == "users/all":
                return name
            try:
                return self.resolve_user(name).name
            except ApiError:
                return None  # not a user: the text stays literal, as it does in the Chat UI

        def is_app(name: str) -> bool:
            user = self.users.get(name)
            return user is not None and user.type == "BOT"

        msg.doc = markup.parse(source, syntax, resolve)
        msg.text, msg.mentions = markup.plain_text(msg.doc, self.display_name)
        msg.argument_text = markup.plain_text(msg.doc, self.display_name, omit=is_app)[0]

    def display_name(self, name: str) -> str:
        user = self.users.get(name)
        return user.display_name if user is not None else ""

    def input_syntax(self, requested: object) -> str:
        """The syntax `text` is read in: the request's `markupSyntax`, else the app default."""
        if requested is None or requested == "MARKUP_SYNTAX_UNSPECIFIED":
            return str(self.config["app_default_markup_syntax"])
        if requested not in markup.MARKUP_SYNTAXES:
            raise invalid(f"Invalid value at 'message.markup_syntax', \"{requested}\"")
        return str(requested)

    def output_syntax(self, requested: str | None = None) -> str:
        """The syntax of `formattedText` in an answer (the `markupSyntax` query parameter)."""
        if requested is not None and requested not in markup.MARKUP_SYNTAXES:
            # googleapiclient checks enums itself; a raw caller gets what Google's parser says.
            raise invalid(f"Invalid value at 'markup_syntax', \"{requested}\"")
        if requested in (None, "", "MARKUP_SYNTAX_UNSPECIFIED"):
            default = self.config["output_default_markup_syntax"]
            return str(default or self.config["app_default_markup_syntax"])
        return requested

    def attach(self, space: str, refs: Iterable[JSON]) -> list[tuple[str, Upload]]:
        out = []
        for ref in refs:
            data_ref = ref.get("attachmentDataRef") or {}
            upload = self.uploads.get(str(data_ref.get("resourceName", "")))
            if upload is None:
                token = data_ref.get("attachmentUploadToken")
                upload = next((u for u in self.uploads.values() if u.token == token), None)
            if upload is None or upload.space != space:
                raise invalid("Invalid attachment: unknown attachmentDataRef.")
            out.append((_rand(_ID_CHARS, 16), upload))
        return out

    # ----------------------------------------------------------------- rendering
    def user_json(self, name: str, *, full: bool | None = None) -> JSON:
        user = self.users.get(name)
        if user is None:
            return {"name": name, "type": "HUMAN"}
        if full is None:
            full = self.config["sender_details"] == "full"
        out: JSON = {"name": user.name, "type": user.type}
        if full:
            if user.display_name:
                out["displayName"] = user.display_name
            if user.email:
                out["email"] = user.email
        return out

    def space_json(self, space: Space) -> JSON:
        sid = space.name.removeprefix("spaces/")
        kind = "room" if space.space_type == "SPACE" else "dm"
        out: JSON = {
            "name": space.name,
            "type": "DM" if space.space_type == "DIRECT_MESSAGE" else "ROOM",
            "spaceType": space.space_type,
            "singleUserBotDm": False,
            "threaded": space.threading == "THREADED_MESSAGES",
            "spaceThreadingState": space.threading,
            "spaceHistoryState": "HISTORY_ON",
            "externalUserAllowed": False,
            "createTime": rfc3339(space.create_time),
            "membershipCount": {
                "joinedDirectHumanUserCount": sum(
                    1
                    for u in space.members
                    if self.users.get(u, User("", "", None, "HUMAN")).type == "HUMAN"
                )
            },
            "spaceUri": f"https://chat.google.com/{kind}/{sid}?cls=11",
        }
        if space.display_name:
            out["displayName"] = space.display_name
        if space.last_active is not None:
            out["lastActiveTime"] = rfc3339(space.last_active)
        return out

    def membership_json(self, space: Space, user: str) -> JSON:
        first = next(iter(space.members), None)
        return {
            "name": f"{space.name}/members/{user.removeprefix('users/')}",
            "state": "JOINED",
            "role": "ROLE_MANAGER"
            if user == first and space.space_type == "SPACE"
            else "ROLE_MEMBER",
            "member": self.user_json(user),
            "createTime": rfc3339(space.members[user]),
        }

    def message_json(self, msg: Message, syntax: str | None = None) -> JSON:
        """The Message resource; `formattedText` in `syntax` (default: `output_syntax()`)."""
        if msg.delete_time is not None:
            # showDeleted tombstone: deletion data but no content (reference §2.3).
            return {
                "name": msg.name,
                "createTime": rfc3339(msg.create_time),
                "deleteTime": rfc3339(msg.delete_time),
                "deletionMetadata": {"deletionType": msg.deletion_type or "CREATOR"},
            }
        thread = self.threads[msg.space][msg.thread_id]
        thread_json: JSON = {"name": f"{msg.space}/threads/{thread.id}"}
        if thread.key:
            thread_json["threadKey"] = thread.key
        out: JSON = {
            "name": msg.name,
            "sender": self.user_json(msg.sender),
            "createTime": rfc3339(msg.create_time),
            "text": msg.text,
            "formattedText": markup.serialize(msg.doc, syntax or self.output_syntax()),
            "argumentText": msg.argument_text,
            "thread": thread_json,
            "threadReply": msg.thread_reply,
            "space": {"name": msg.space},
        }
        annotations = self.mention_annotations(msg)
        if annotations:
            out["annotations"] = annotations
        if msg.last_update is not None:
            out["lastUpdateTime"] = rfc3339(msg.last_update)
        if msg.client_id:
            out["clientAssignedMessageId"] = msg.client_id
        if msg.attachments:
            out["attachment"] = [
                {
                    "name": f"{msg.name}/attachments/{aid}",
                    **({"contentName": up.filename} if up.filename else {}),
                    "contentType": up.content_type,
                    "attachmentDataRef": {"resourceName": up.resource_name},
                    "source": "UPLOADED_CONTENT",
                }
                for aid, up in msg.attachments
            ]
        if msg.reactions:
            counts: dict[str, int] = {}
            for reaction in msg.reactions:
                counts[reaction.unicode] = counts.get(reaction.unicode, 0) + 1
            out["emojiReactionSummaries"] = [
                {"emoji": {"unicode": emoji}, "reactionCount": n} for emoji, n in counts.items()
            ]
        return out

    def mention_annotations(self, msg: Message) -> list[JSON]:
        """USER_MENTION annotations: offsets into the plain `text`, where a mention shows as
        `@Display Name` (the discovery doc's Annotation example: `Hello @FooBot how are you!`,
        startIndex 6, length 7). `<users/all>` gets none (its annotation is UNCONFIRMED)."""
        return [
            {
                "type": "USER_MENTION",
                "startIndex": start,
                "length": length,
                "userMention": {"user": self.user_json(user), "type": "MENTION"},
            }
            for start, length, user in msg.mentions
            if user != "users/all"
        ]

    def space_event_json(self, event: SpaceEvent, syntax: str | None = None) -> JSON:
        """SpaceEvent with the message's latest version; a deleted message carries only `name`,
        `createTime` and `deletionMetadata` (MessageDeletedEventData), in every event type."""
        msg = event.message
        if msg.delete_time is not None:
            payload: JSON = {
                "name": msg.name,
                "createTime": rfc3339(msg.create_time),
                "deletionMetadata": {"deletionType": msg.deletion_type or "CREATOR"},
            }
        else:
            payload = self.message_json(msg, syntax)
        return {
            "name": event.name,
            "eventTime": rfc3339(event.time),
            "eventType": event.event_type,
            MESSAGE_EVENT_DATA[event.event_type]: {"message": payload},
        }

    def reaction_json(self, msg: Message, reaction: Reaction) -> JSON:
        return {
            "name": f"{msg.name}/reactions/{reaction.id}",
            "user": self.user_json(reaction.user),
            "emoji": {"unicode": reaction.unicode},
        }

    def state_json(self) -> JSON:
        return {
            "users": [self.user_json(u, full=True) for u in self.users],
            "spaces": [self.space_json(s) for s in self.spaces.values()],
            "memberships": {
                s.name: [self.membership_json(s, u) for u in s.members]
                for s in self.spaces.values()
            },
            "messages": {
                space: [self.message_json(m) for m in sorted(msgs, key=lambda m: m.create_time)]
                for space, msgs in self.messages.items()
            },
        }


# --------------------------------------------------------------------------- filters
_TIME_COND = re.compile(r'^(create_time|createTime)\s*(>|<)\s*"([^"]*)"$')
_THREAD_COND = re.compile(r"^thread\.name\s*=\s*(spaces/[^/\s\"]+/threads/[^/\s\"]+)$")


@dataclass(frozen=True, slots=True)
class MessageFilter:
    after: datetime | None = None
    before: datetime | None = None
    thread: str | None = None

    def accepts(self, msg: Message) -> bool:
        if self.after is not None and not msg.create_time > self.after:
            return False
        if self.before is not None and not msg.create_time < self.before:
            return False
        return self.thread is None or f"{msg.space}/threads/{msg.thread_id}" == self.thread


def parse_message_filter(text: str) -> MessageFilter:
    """Parse a messages.list filter (reference §3); anything undocumented is INVALID_ARGUMENT."""
    text = text.strip()
    if not text:
        return MessageFilter()
    after = before = thread = None
    for part in re.split(r"\s+AND\s+", text):
        part = part.strip()
        if m := _TIME_COND.match(part):
            try:
                ts = parse_rfc3339(m.group(3))
            except ValueError:
                raise invalid(f"Invalid timestamp in filter: {m.group(3)!r}") from None
            if m.group(2) == ">":
                after = ts if after is None else max(after, ts)
            else:
                before = ts if before is None else min(before, ts)
        elif m := _THREAD_COND.match(part):
            if thread is not None:
                raise invalid("Only one thread.name may be given in a filter.")
            thread = m.group(1)
        else:
            raise invalid(f"Invalid filter: {text!r}")
    return MessageFilter(after=after, before=before, thread=thread)


_EVENT_TIME_COND = re.compile(r'^(start_time|startTime|end_time|endTime)\s*=\s*"([^"]*)"$')
_EVENT_TYPE_COND = re.compile(r'^(?:event_types|eventTypes)\s*:\s*"([^"]*)"$')


@dataclass(frozen=True, slots=True)
class SpaceEventFilter:
    types: frozenset[str]
    start: datetime | None = None  # exclusive
    end: datetime | None = None  # inclusive

    def accepts(self, event_type: str, when: datetime) -> bool:
        if event_type not in self.types:
            return False
        if self.start is not None and not when > self.start:
            return False
        return self.end is None or when <= self.end


def parse_space_event_filter(text: str, now: datetime) -> SpaceEventFilter:
    """Parse a spaces.spaceEvents.list filter strictly (discovery doc `filter` description).

    Grammar: conditions joined by `AND`: at most one `start_time="RFC3339"`, at most one
    `end_time="RFC3339"` (`=` operator, quoted), and exactly one event-type group: one
    `event_types:"TYPE"` or several joined by `OR` inside parentheses (a bare `OR` chain only when
    it is the whole filter). camelCase field names (the rendered REST page) are accepted too.
    Invalid, as documented: `OR` between times, `AND` between event types, no event type
    (required), batch types ("omit batch event types"); stricter readings: unknown types,
    start_time more than 28 days ago, end_time before start_time.
    """
    text = text.strip()
    if not text:
        raise invalid("Filter is required: specify at least one event type with event_types.")
    bad = invalid(f"Invalid filter: {text!r}")
    start = end = None
    types: set[str] | None = None
    conds = _split_top_level(text, "AND")
    for cond in conds:
        if m := _EVENT_TIME_COND.match(cond):
            try:
                ts = parse_rfc3339(m.group(2))
            except ValueError:
                raise invalid(f"Invalid timestamp in filter: {m.group(2)!r}") from None
            if m.group(1) in ("start_time", "startTime"):
                if start is not None:
                    raise bad
                start = ts
            else:
                if end is not None:
                    raise bad
                end = ts
            continue
        if types is not None:
            raise bad  # event types can only be combined with OR, once
        group = cond
        if group.startswith("(") and group.endswith(")"):
            group = group[1:-1].strip()
        elif len(conds) > 1 and re.search(r"\sOR\s", group):
            raise bad  # AND and OR mixed without parentheses
        types = set()
        for part in _split_top_level(group, "OR"):
            tm = _EVENT_TYPE_COND.match(part)
            if not tm:
                raise bad
            event_type = tm.group(1)
            if ".batch" in event_type:
                raise invalid(f"Omit batch event types in the filter: {event_type!r}")
            if event_type not in SPACE_EVENT_TYPES:
                raise invalid(f"Unsupported event type in filter: {event_type!r}")
            types.add(event_type)
    if not types:
        raise invalid("Filter must specify at least one event type with event_types.")
    if start is not None and start < now - SPACE_EVENT_WINDOW:
        raise invalid("start_time must be within the last 28 days.")
    if start is not None and end is not None and end < start:
        raise invalid("end_time must not be before start_time.")
    return SpaceEventFilter(types=frozenset(types), start=start, end=end)


def _split_top_level(text: str, op: str) -> list[str]:
    """Split on ` op ` outside parentheses and quotes; an unbalanced parenthesis is invalid."""
    parts, depth, quoted, last = [], 0, False, 0
    pattern = re.compile(rf"\s+{op}\s+")
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise invalid(f"Invalid filter: {text!r}")
        elif not quoted and depth == 0 and (m := pattern.match(text, i)):
            parts.append(text[last:i].strip())
            i = last = m.end()
            continue
        i += 1
    if depth or quoted:
        raise invalid(f"Invalid filter: {text!r}")
    parts.append(text[last:].strip())
    if any(not p for p in parts):
        raise invalid(f"Invalid filter: {text!r}")
    return parts


def parse_order_by(text: str | None) -> bool:
    """Return True for descending. Accepts ASC/DESC with optional create_time/createTime."""
    if not text:
        return False
    m = re.match(r"^\s*(?:(?:create_time|createtime)\s+)?(asc|desc)\s*$", text, re.IGNORECASE)
    if not m:
        raise invalid(f"Invalid orderBy: {text!r}")
    return m.group(1).lower() == "desc"


def parse_space_filter(text: str) -> set[str] | None:
    """spaces.list filter: `space_type = "X"` / `spaceType = "X"` joined by OR (§6.1)."""
    text = text.strip()
    if not text:
        return None
    types: set[str] = set()
    for part in re.split(r"\s+OR\s+", text):
        m = re.match(r'^(space_type|spaceType)\s*=\s*"([A-Z_]+)"$', part.strip())
        if not m or m.group(2) not in SPACE_TYPES:
            raise invalid(f"Invalid filter: {text!r}")
        types.add(m.group(2))
    return types


_MEMBER_COND = re.compile(r'^(role|member\.type)\s*(=|!=)\s*"([A-Z_]+)"$')


def parse_member_filter(text: str) -> Callable[[str, str], bool] | None:
    """members.list filter on role and member.type (§6.2): OR of AND groups, no parentheses."""
    text = text.strip()
    if not text:
        return None
    groups: list[list[tuple[str, str, str]]] = []
    for alt in re.split(r"\s+OR\s+", text):
        conds = []
        for part in re.split(r"\s+AND\s+", alt.strip("() ")):
            m = _MEMBER_COND.match(part.strip("() "))
            if not m:
                raise invalid(f"Invalid filter: {text!r}")
            field_, op, value = m.groups()
            allowed = ("ROLE_MEMBER", "ROLE_MANAGER") if field_ == "role" else ("HUMAN", "BOT")
            if value not in allowed or (field_ == "role" and op == "!="):
                raise invalid(f"Invalid filter: {text!r}")
            conds.append((field_, op, value))
        eq_fields = [c[0] for c in conds if c[1] == "="]
        if len(eq_fields) != len(set(eq_fields)):
            # e.g. member.type = "HUMAN" AND member.type = "BOT" (documented invalid).
            raise invalid(f"Invalid filter: {text!r}")
        groups.append(conds)

    def accepts(role: str, member_type: str) -> bool:
        def one(c: tuple[str, str, str]) -> bool:
            actual = role if c[0] == "role" else member_type
            return (actual == c[2]) == (c[1] == "=")

        return any(all(one(c) for c in g) for g in groups)

    return accepts


_REACTION_COND = re.compile(
    r'^(emoji\.unicode|emoji\.custom_emoji\.uid|user\.name)\s*=\s*"([^"]*)"$'
)


def parse_reaction_filter(text: str) -> Callable[[Reaction], bool] | None:
    """reactions.list filter (§8): OR within one field group, AND between emoji and user."""
    text = text.strip()
    if not text:
        return None
    clauses: list[tuple[str, list[tuple[str, str]]]] = []
    for clause in re.split(r"\s+AND\s+", text):
        clause = clause.strip()
        if clause.startswith("(") and clause.endswith(")"):
            clause = clause[1:-1]
        conds = []
        for part in re.split(r"\s+OR\s+", clause):
            m = _REACTION_COND.match(part.strip())
            if not m:
                raise invalid(f"Invalid filter: {text!r}")
            conds.append((m.group(1), m.group(2)))
        groups = {"user" if f == "user.name" else "emoji" for f, _ in conds}
        if len(groups) != 1:
            raise invalid(f"Invalid filter: {text!r}")
        clauses.append((groups.pop(), conds))
    if len({g for g, _ in clauses}) != len(clauses):
        raise invalid(f"Invalid filter: {text!r}")

    def accepts(reaction: Reaction) -> bool:
        def one(c: tuple[str, str]) -> bool:
            if c[0] == "emoji.unicode":
                return reaction.unicode == c[1]
            if c[0] == "user.name":
                return reaction.user == c[1]
            return False  # custom emoji are not emulated

        return all(any(one(c) for c in conds) for _g, conds in clauses)

    return accepts


# --------------------------------------------------------------------------- partial responses
def parse_fields(text: str) -> dict[str, Any]:
    """Parse the `fields` global parameter (`a,b(c,d),e/f`) into a tree; {} = keep everything."""
    pos = 0

    def parse_list(stop: str | None) -> dict[str, Any]:
        nonlocal pos
        tree: dict[str, Any] = {}
        while pos < len(text):
            m = re.match(r"\s*([A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+)*)\s*", text[pos:])
            if not m:
                raise invalid(f"Invalid field selection {text!r}")
            pos += m.end()
            node = tree
            path = m.group(1).split("/")
            for part in path[:-1]:
                node = node.setdefault(part, {})
            leaf = node.setdefault(path[-1], {})
            if pos < len(text) and text[pos] == "(":
                pos += 1
                leaf.update(parse_list(")"))
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if stop is not None and pos < len(text) and text[pos] == stop:
                pos += 1
                return tree
            if pos < len(text):
                raise invalid(f"Invalid field selection {text!r}")
        if stop is not None:
            raise invalid(f"Invalid field selection {text!r}")
        return tree

    return parse_list(None)


def apply_fields(value: Any, tree: dict[str, Any]) -> Any:
    """Keep only the selected fields (lists are filtered element by element)."""
    if not tree or "*" in tree:
        return value
    if isinstance(value, list):
        return [apply_fields(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: apply_fields(v, tree[k]) for k, v in value.items() if k in tree}
