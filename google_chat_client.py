"""Google Chat API client: auth from the token file, typed records, errors, retries, write pacing.

Role: the only module that talks to chat.googleapis.com (or an emulator standing in for it). It
returns frozen dataclasses parsed in one place (`from_api`) and raises one small exception tree;
nothing past this module indexes a raw Chat JSON dict or sees a googleapiclient exception.

Invariants:
- Every API error, transport error and credential failure becomes a `ChatError` subclass in ONE
  function (`_to_chat_error`); the retry loop (`_call`) is the only place that retries.
- Retries are bounded (`max_attempts`) and only for transient failures (`ChatUnavailable`:
  5xx, 429, timeouts, dropped connections). A 429 waits `Retry-After` when the server sends one.
  Every wait goes through the injected `sleep`, so tests never really wait.
- Writes (create, patch, delete, upload) into one space are paced to at most one per
  `write_interval_seconds` (Chat's per-space quota is 1 write/s, shared by everyone writing in the
  space). Pacing is per space and thread-safe: a writer only ever waits for its own space.
- Message creates are retried only because they carry a client-assigned id (`client-...`): a
  repeat is answered ALREADY_EXISTS, and we then fetch the message that exists and return it
  only if it is ours (its sender: anyone may create a message under an unused id first);
  someone else's is never adopted, and the create moves on to the caller's fallback ids.
- `api_endpoint` redirects every call, uploads and downloads included. googleapiclient's
  `client_options.api_endpoint` leaves uploads on https, so we rewrite the bundled discovery
  document's `rootUrl`/`baseUrl` instead (see reference/google-chat-api.md §1.4).
- The token file's `token_uri` is honoured (google-auth's `from_authorized_user_file` would replace
  it with Google's), and a refreshed access token is written back atomically with mode 0600.
- Secrets (access/refresh tokens, client secret) are never logged.
- Media cross in blocks, never whole in memory: uploads are resumable, streamed from a file;
  downloads are ranged reads into a sink, refused after the first block when the file is over
  the caller's cap (`ChatTooLarge`).
- Markup syntax is always explicit (`MARKUP_SYNTAX`), never the app's console default: every
  `messages.list`/`messages.get` asks for `formattedText` in Chat syntax, and every create/patch
  body declares that its `text` is Chat syntax. Why Chat syntax and not Markdown:
  * Google documents, for Chat syntax only, the two constructs a bridge cannot do without: user
    mentions `<users/{id}>` (and `<users/all>`) and labelled links `<url|label>`; how Markdown
    syntax writes mentions and links is UNCONFIRMED (reference google-chat-api.md §4).
  * `formatting.discourse_to_gchat_text` already renders Chat markup, and
    `formatting.gchat_to_discourse_markdown` parses it: one syntax both ways, so what the bridge
    writes reads back in the same form it was written (edit and echo detection stay stable).
  * Left undeclared, the syntax is the app's default, and "newly created Chat apps default to
    Markdown": `*bold*` would then show in italics and `<users/…>` literally.
- A message's `text` is plain (mentions as `@Name`, links as their label, formatting dropped);
  `formatted_text` carries the markup and is what the converters read (`ChatMessage.markup`).
  Create and patch take no `markupSyntax` query parameter, so the `formatted_text` of the
  messages they return is in a syntax we do not choose (the app default is the likely one;
  UNCONFIRMED): convert only messages read with `list_messages`/`get_message`.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google.oauth2.credentials
import google_auth_httplib2
import httplib2
from googleapiclient import discovery, discovery_cache
from googleapiclient.errors import HttpError, MediaUploadSizeError
from googleapiclient.http import HttpRequest, MediaIoBaseDownload, MediaIoBaseUpload
from googleapiclient.model import JsonModel

logger = logging.getLogger(__name__)

AUTH_HINT = "run `python main.py auth` to authorize the bridge again"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MAX_PAGE_SIZE = 1000
# The one syntax the bridge reads `formattedText` in and writes `text` in (module docstring).
MARKUP_SYNTAX = "MARKUP_SYNTAX_CHAT"
# The API's root (the discovery document's `rootUrl`); `api_endpoint` replaces it.
CHAT_ROOT_URL = "https://chat.googleapis.com/"
# Space event types of message edits and deletions (spaces.spaceEvents; batch forms arrive too).
MESSAGE_CREATED = "google.workspace.chat.message.v1.created"
MESSAGE_UPDATED = "google.workspace.chat.message.v1.updated"
MESSAGE_DELETED = "google.workspace.chat.message.v1.deleted"
MESSAGE_BATCH_CREATED = "google.workspace.chat.message.v1.batchCreated"
MESSAGE_BATCH_UPDATED = "google.workspace.chat.message.v1.batchUpdated"
MESSAGE_BATCH_DELETED = "google.workspace.chat.message.v1.batchDeleted"
# Event type -> (kind, is a batch) for the message events SpaceMessageEvent reads.
_MESSAGE_EVENT_KINDS: Mapping[str, tuple[str, bool]] = {
    MESSAGE_CREATED: ("created", False),
    MESSAGE_UPDATED: ("updated", False),
    MESSAGE_DELETED: ("deleted", False),
    MESSAGE_BATCH_CREATED: ("created", True),
    MESSAGE_BATCH_UPDATED: ("updated", True),
    MESSAGE_BATCH_DELETED: ("deleted", True),
}
# spaces.spaceEvents.list reaches back 28 days; a start a minute inside that window is still
# inside it when the request arrives (and when our clock runs a little ahead of Google's).
SPACE_EVENT_WINDOW = timedelta(days=28) - timedelta(minutes=1)
# messageId rules from the discovery doc: "client-" prefix, <= 63 chars of [a-z0-9-].
_CLIENT_MESSAGE_ID = re.compile(r"^client-[a-z0-9-]{1,56}$")
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
# 403 reasons that mean "slow down" rather than "forbidden" (googleapiclient treats them so too).
_RATE_LIMIT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
)
# 403 reasons that mean the token itself is not good enough: only re-authorizing helps.
_AUTH_REASONS = frozenset({"ACCESS_TOKEN_SCOPE_INSUFFICIENT", "insufficientPermissions"})


# --------------------------------------------------------------------------------------------
# Time helpers
# --------------------------------------------------------------------------------------------


def parse_rfc3339(value: str) -> datetime:
    """Parse a Google RFC 3339 timestamp into an aware UTC datetime.

    Google may send nanoseconds; Python keeps microseconds, so the extra digits are truncated
    (callers that need the exact value keep the raw string, e.g. `ChatMessage.create_time_raw`).

    Raises:
        ValueError: the string is not an RFC 3339 timestamp.
    """
    match = _RFC3339.match(value.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    day, clock, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    naive = datetime.strptime(f"{day}T{clock}", "%Y-%m-%dT%H:%M:%S").replace(microsecond=micros)
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    return naive.replace(tzinfo=tz).astimezone(UTC)


def format_rfc3339(moment: datetime) -> str:
    """Format a datetime as RFC 3339 UTC with microseconds (naive values are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _optional_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return parse_rfc3339(value)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _space_of(resource_name: str) -> str:
    """`spaces/S/messages/M` (or any name under a space) -> `spaces/S`."""
    return "/".join(resource_name.split("/")[:2])


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatUser:
    """A Chat user (`users/{id}`). Under user auth `display_name`/`email` may be absent."""

    name: str
    display_name: str | None
    email: str | None
    type: str  # "HUMAN" | "BOT"; "" when Google sent no sender (tombstones)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ChatUser:
        return cls(
            name=str(data.get("name") or ""),
            display_name=_optional_str(data.get("displayName")) or None,
            email=_optional_str(data.get("email")) or None,
            type=str(data.get("type") or ""),
        )


@dataclass(frozen=True, slots=True)
class ChatSpace:
    """A space; `last_active_time` is the time of its last message (answers "anything new?")."""

    name: str
    display_name: str | None
    space_type: str  # "SPACE" | "GROUP_CHAT" | "DIRECT_MESSAGE"
    threading_state: str | None
    last_active_time: datetime | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ChatSpace:
        space_type = data.get("spaceType")
        if not space_type:
            # Only the deprecated `type` present: ROOM is a named space, DM a direct message.
            space_type = {"ROOM": "SPACE", "DM": "DIRECT_MESSAGE"}.get(str(data.get("type")), "")
        return cls(
            name=str(data["name"]),
            display_name=_optional_str(data.get("displayName")) or None,
            space_type=str(space_type),
            threading_state=_optional_str(data.get("spaceThreadingState")) or None,
            last_active_time=_optional_time(data.get("lastActiveTime")),
        )


@dataclass(frozen=True, slots=True)
class ChatAttachment:
    """An attachment of a message; download uploaded content with `resource_name`."""

    name: str
    content_name: str | None
    content_type: str | None
    resource_name: str | None  # attachmentDataRef.resourceName, for media.download
    drive_file_id: str | None
    source: str | None  # "UPLOADED_CONTENT" | "DRIVE_FILE"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ChatAttachment:
        data_ref = data.get("attachmentDataRef") or {}
        drive_ref = data.get("driveDataRef") or {}
        return cls(
            name=str(data.get("name") or ""),
            content_name=_optional_str(data.get("contentName")) or None,
            content_type=_optional_str(data.get("contentType")) or None,
            resource_name=_optional_str(data_ref.get("resourceName")) or None,
            drive_file_id=_optional_str(drive_ref.get("driveFileId")) or None,
            source=_optional_str(data.get("source")) or None,
        )


@dataclass(frozen=True, slots=True)
class AttachmentRef:
    """A file uploaded into a space (`upload_attachment`), to attach to a new message.

    Chat's `AttachmentDataRef`: `attachment_upload_token` is the opaque token a create uses,
    `resource_name` names the data for media.download. Either may be absent, not both.
    """

    resource_name: str | None
    attachment_upload_token: str | None

    def __post_init__(self) -> None:
        if not (self.resource_name or self.attachment_upload_token):
            raise ValueError("an AttachmentRef needs a resource name or an upload token")

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> AttachmentRef:
        return cls(
            resource_name=_optional_str(data.get("resourceName")) or None,
            attachment_upload_token=_optional_str(data.get("attachmentUploadToken")) or None,
        )

    def to_api(self) -> dict[str, str]:
        """The `AttachmentDataRef` JSON, only the fields present."""
        data: dict[str, str] = {}
        if self.resource_name:
            data["resourceName"] = self.resource_name
        if self.attachment_upload_token:
            data["attachmentUploadToken"] = self.attachment_upload_token
        return data


def _int(value: Any) -> int:
    """A protobuf-JSON integer (a number or a decimal string; absent means 0)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _utf16_slice(text: str, start: int, length: int) -> str:
    """`text[start:start+length]` counted in UTF-16 code units."""
    encoded = text.encode("utf-16-le")
    return encoded[2 * start : 2 * (start + length)].decode("utf-16-le", errors="ignore")


@dataclass(frozen=True, slots=True)
class ChatAnnotation:
    """An annotation of a message's `text`; USER_MENTION ones name the mentioned user.

    `start_index`/`length` locate the annotated run in the plain `text` (for a mention, the
    `@Name` readers see). Google does not document their unit: we read them as UTF-16 code units,
    as the emulator writes them, and fall back to code points (`run_in`); for text without
    characters outside the BMP both readings agree.
    """

    type: str  # "USER_MENTION" | "SLASH_COMMAND" | "RICH_LINK" | "CUSTOM_EMOJI"
    start_index: int
    length: int
    user_name: str | None  # userMention.user.name: "users/123" (or "users/all")
    # Under user auth Google leaves displayName out for users who share no space (and have no
    # "prior affinity") with the caller (reference google-chat-api.md §6.3), so it may be None.
    user_display_name: str | None
    user_type: str | None  # "HUMAN" | "BOT"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ChatAnnotation:
        mention = data.get("userMention")
        user = mention.get("user") if isinstance(mention, dict) else None
        user = user if isinstance(user, dict) else {}
        return cls(
            type=str(data.get("type") or ""),
            start_index=_int(data.get("startIndex")),
            length=_int(data.get("length")),
            user_name=_optional_str(user.get("name")) or None,
            user_display_name=_optional_str(user.get("displayName")) or None,
            user_type=_optional_str(user.get("type")) or None,
        )

    def run_in(self, text: str) -> str:
        """The annotated run of `text` (a mention's `@Name`), "" when the indices do not fit."""
        if self.length <= 0 or self.start_index < 0:
            return ""
        run = _utf16_slice(text, self.start_index, self.length)
        if run.startswith("@"):
            return run
        by_code_point = text[self.start_index : self.start_index + self.length]
        return by_code_point if by_code_point.startswith("@") else run


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A message. Tombstones (`show_deleted`) have `delete_time` set and no content.

    `text` is plain (what a reader sees: `@Bob Builder`, a link's label); `formatted_text` is
    the same message in Chat markup (`*bold*`, `<users/123>`, `<https://x|label>`), read with
    `markupSyntax=MARKUP_SYNTAX_CHAT`. Convert `markup`; take titles from `text`.
    """

    name: str
    space_name: str
    thread_name: str | None
    sender: ChatUser
    text: str
    create_time: datetime
    create_time_raw: str  # exactly as Google sent it (may carry nanoseconds): use for cursors
    last_update_time: datetime | None
    delete_time: datetime | None
    client_assigned_message_id: str | None
    thread_reply: bool
    attachments: tuple[ChatAttachment, ...]
    # Defaults keep records built by hand (tests, tools) valid: no markup known, no mentions.
    formatted_text: str | None = None
    annotations: tuple[ChatAnnotation, ...] = ()

    @property
    def markup(self) -> str:
        """The text to convert: `formattedText` when present, else `text`."""
        return self.formatted_text if self.formatted_text is not None else self.text

    def mention_display_name(self, user_name: str) -> str | None:
        """The name this message shows for a mention of `user_name` (no '@'), or None.

        The mention annotation's displayName, else the `@Name` run of `text` it points at (the
        name Chat itself displayed, present even when Google leaves displayName out). Shaped as
        the `display_name_lookup` of `formatting.gchat_to_discourse_markdown`.
        """
        for annotation in self.annotations:
            if annotation.type != "USER_MENTION" or annotation.user_name != user_name:
                continue
            if annotation.user_display_name:
                return annotation.user_display_name
            run = annotation.run_in(self.text)
            if run.startswith("@") and run[1:].strip():
                return run[1:].strip()
        return None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ChatMessage:
        name = str(data["name"])
        create_time_raw = str(data["createTime"])
        space = data.get("space") or {}
        thread = data.get("thread") or {}
        return cls(
            name=name,
            space_name=str(space.get("name") or _space_of(name)),
            thread_name=_optional_str(thread.get("name")) or None,
            sender=ChatUser.from_api(data.get("sender") or {}),
            text=str(data.get("text") or ""),
            create_time=parse_rfc3339(create_time_raw),
            create_time_raw=create_time_raw,
            last_update_time=_optional_time(data.get("lastUpdateTime")),
            delete_time=_optional_time(data.get("deleteTime")),
            client_assigned_message_id=_optional_str(data.get("clientAssignedMessageId")) or None,
            thread_reply=bool(data.get("threadReply", False)),
            attachments=tuple(ChatAttachment.from_api(a) for a in data.get("attachment") or ()),
            formatted_text=_optional_str(data.get("formattedText")),
            annotations=tuple(
                ChatAnnotation.from_api(a)
                for a in data.get("annotations") or ()
                if isinstance(a, dict)
            ),
        )


@dataclass(frozen=True, slots=True)
class ChatMessageChange:
    """One message edited or deleted, from a space event: which message, what, and when."""

    message_name: str
    deleted: bool
    event_time: datetime
    create_time_raw: str  # the message's createTime ("" if the event left it out)

    def tombstone(self) -> ChatMessage:
        """A deleted message as a listing with `showDeleted` would give it (no content)."""
        created = self.create_time_raw or format_rfc3339(self.event_time)
        return ChatMessage.from_api(
            {"name": self.message_name, "createTime": created,
             "deleteTime": format_rfc3339(self.event_time)}
        )  # fmt: skip

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> tuple[ChatMessageChange, ...]:
        """The changes one SpaceEvent reports: one, several (a batch event) or none."""
        event_type = str(data.get("eventType") or "")
        deleted = event_type in (MESSAGE_DELETED, MESSAGE_BATCH_DELETED)
        single, batch = (
            ("messageDeletedEventData", "messageBatchDeletedEventData")
            if deleted
            else ("messageUpdatedEventData", "messageBatchUpdatedEventData")
        )
        if event_type in (MESSAGE_UPDATED, MESSAGE_DELETED):
            payloads = [data.get(single)]
        elif event_type in (MESSAGE_BATCH_UPDATED, MESSAGE_BATCH_DELETED):
            group = data.get(batch) or {}
            payloads = list(group.get("messages") or ()) if isinstance(group, dict) else []
        else:
            return ()
        when = parse_rfc3339(str(data.get("eventTime") or ""))
        changes = []
        for payload in payloads:
            message = payload.get("message") if isinstance(payload, dict) else None
            if isinstance(message, dict) and message.get("name"):
                created = str(message.get("createTime") or "")
                changes.append(cls(str(message["name"]), deleted, when, created))
        return tuple(changes)


@dataclass(frozen=True, slots=True)
class SpaceMessageEvent:
    """One message created, edited or deleted, from a space event or a Workspace Events
    CloudEvent: what happened, to which message, and when.

    `message` is the payload: the message's *latest* version when the event was read (Google
    sends the latest, not the version of the moment), and for a deletion a tombstone with
    `delete_time` = `event_time` (see `ChatMessageChange.tombstone`). Event payloads carry
    `formattedText` in the app's default markup syntax, not necessarily `MARKUP_SYNTAX`: fetch the
    message with `get_message` before converting its markup.
    """

    kind: str  # "created" | "updated" | "deleted"
    message: ChatMessage
    event_time: datetime

    @classmethod
    def from_cloud_event(
        cls, event_type: str, data: Mapping[str, Any], event_time: datetime
    ) -> tuple[SpaceMessageEvent, ...]:
        """The message events of one event's JSON `data` (`MessageCreatedEventData`,
        `{"message": {...}}`, or a batch `{"messages": [{"message": {...}}, ...]}`); () for
        other event types.

        A created/updated payload without `createTime` (a subscription without
        `includeResource` sends only the name) cannot be a ChatMessage: it is skipped, logged.
        """
        kind_and_batch = _MESSAGE_EVENT_KINDS.get(event_type)
        if kind_and_batch is None:
            return ()
        kind, batch = kind_and_batch
        if batch:
            items = data.get("messages")
            payloads = list(items) if isinstance(items, list) else []
        else:
            payloads = [data]
        events: list[SpaceMessageEvent] = []
        for payload in payloads:
            message = payload.get("message") if isinstance(payload, Mapping) else None
            if not isinstance(message, Mapping) or not message.get("name"):
                continue
            if kind == "deleted":
                change = ChatMessageChange(
                    str(message["name"]), True, event_time, str(message.get("createTime") or "")
                )
                events.append(cls(kind, change.tombstone(), event_time))
            elif not message.get("createTime"):
                logger.warning(
                    "%s event for %s carries no message (only its name): skipped",
                    kind,
                    message["name"],
                )
            else:
                events.append(cls(kind, ChatMessage.from_api(message), event_time))
        return tuple(events)

    @classmethod
    def from_space_event(cls, data: Mapping[str, Any]) -> tuple[SpaceMessageEvent, ...]:
        """The message events of one `SpaceEvent` (spaces.spaceEvents); () for other types."""
        event_type = str(data.get("eventType") or "")
        kind_and_batch = _MESSAGE_EVENT_KINDS.get(event_type)
        if kind_and_batch is None:
            return ()
        kind, batch = kind_and_batch
        # The payload field is named for the type: messageCreatedEventData,
        # messageBatchDeletedEventData, ...
        field = f"message{'Batch' if batch else ''}{kind.capitalize()}EventData"
        payload = data.get(field)
        if not isinstance(payload, Mapping):
            return ()
        when = parse_rfc3339(str(data.get("eventTime") or ""))
        return cls.from_cloud_event(event_type, payload, when)


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------


class ChatError(Exception):
    """Base of every error this client raises.

    `status` is the HTTP status (None for transport errors), `reason` Google's status string
    (`NOT_FOUND`, `RESOURCE_EXHAUSTED`, ...) or a short tag of ours, `method`/`path` the request.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.method = method
        self.path = path


class ChatUnavailable(ChatError):
    """Transient: 5xx, timeout, connection error. Retry later."""


class ChatRateLimited(ChatUnavailable):
    """429 RESOURCE_EXHAUSTED (or a 403 rate-limit reason); `wait_seconds` from Retry-After."""

    def __init__(self, message: str, *, wait_seconds: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.wait_seconds = wait_seconds


class ChatRejected(ChatError):
    """Permanent for this item (4xx): do not retry it as is."""


class ChatNotFound(ChatRejected):
    """404 NOT_FOUND."""


class ChatAlreadyExists(ChatRejected):
    """409 ALREADY_EXISTS (e.g. a duplicate client-assigned message id)."""


class ChatPermissionDenied(ChatRejected):
    """403 PERMISSION_DENIED for this resource (e.g. the user is not a member of the space)."""


class ChatIdTaken(ChatRejected):
    """Every client-assigned id offered for a create is held by a message that is not ours.

    `holders` are those messages (someone created them first, perhaps on purpose): never
    adopted, never edited or deleted as if they were ours.
    """

    def __init__(self, message: str, *, holders: Sequence[ChatMessage], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.holders = tuple(holders)


class ChatTooLarge(ChatRejected):
    """A download over the caller's byte limit (reason TOO_LARGE), refused after the first
    block showed its size; `size` is that size, when known."""

    def __init__(self, message: str, *, limit: int, size: int | None, **kw: Any) -> None:
        super().__init__(message, reason="TOO_LARGE", **kw)
        self.limit = limit
        self.size = size


class ChatAuthError(ChatError):
    """The token is missing, revoked or insufficient; the operator must re-authorize.

    The message always names `python main.py auth`.
    """

    def __init__(self, message: str, **kw: Any) -> None:
        if "python main.py auth" not in message:
            message = f"{message}; {AUTH_HINT}"
        super().__init__(message, **kw)


# google.rpc.Code numbers -> names: an Operation's `error` (a google.rpc.Status) carries only the
# number, where an HTTP error body also spells the name.
RPC_CODE_NAMES: Mapping[int, str] = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


@dataclass(frozen=True, slots=True)
class GoogleErrorBody:
    """Google's error payload: the `error` object of an HTTP error body, or the `error` (a
    google.rpc.Status) of a finished long-running operation. Shared by the Google clients.

    `status` is the status name (`NOT_FOUND`; derived from `code` when only the number is
    given), `reasons` the `reason`s of the `details` (ErrorInfo) and of a legacy `errors`
    array, in order, and `details` the raw detail objects (ErrorInfo metadata, ResourceInfo, ...)
    for callers that look deeper.
    """

    code: int | None
    status: str | None
    message: str | None
    reasons: tuple[str, ...]
    details: tuple[Mapping[str, Any], ...]

    @property
    def reason(self) -> str | None:
        """The first reason given, if any (e.g. ACCESS_TOKEN_SCOPE_INSUFFICIENT)."""
        return self.reasons[0] if self.reasons else None

    @classmethod
    def from_status(cls, error: Mapping[str, Any]) -> GoogleErrorBody:
        """Parse the `error` object itself (`{code, message, status?, details?}`)."""
        items = [
            item
            for item in list(error.get("details") or []) + list(error.get("errors") or [])
            if isinstance(item, Mapping)
        ]
        reasons = tuple(str(i["reason"]) for i in items if isinstance(i.get("reason"), str))
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        status = error.get("status") if isinstance(error.get("status"), str) else None
        if status is None and code is not None:
            status = RPC_CODE_NAMES.get(code)
        message = error.get("message") if isinstance(error.get("message"), str) else None
        return cls(code, status, message, reasons, tuple(items))


def parse_google_error(content: bytes) -> GoogleErrorBody:
    """Google's `{"error": {...}}` HTTP error body, parsed; all fields empty if it is not one."""
    try:
        body = json.loads(content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GoogleErrorBody(None, None, None, (), ())
    return GoogleErrorBody.from_status(error)


def _google_error(content: bytes) -> tuple[str | None, str | None, list[str]]:
    """(status, message, detail reasons) out of Google's `{"error": {...}}` body, if any."""
    parsed = parse_google_error(content)
    return parsed.status, parsed.message, list(parsed.reasons)


def retry_after_seconds(resp: Any) -> float | None:
    """The `Retry-After` of an httplib2 response in seconds (None if absent or an HTTP-date)."""
    value = resp.get("retry-after") if resp is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: rare; fall back to our own backoff


_retry_after = retry_after_seconds


def _to_chat_error(exc: BaseException, method: str, path: str) -> ChatError:
    """The one place where library, transport and HTTP errors become `ChatError`s."""
    where: dict[str, Any] = {"method": method, "path": path}
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, HttpError):
        status = int(exc.resp.status)
        google_status, google_message, reasons = _google_error(exc.content or b"")
        text = f"{method} {path} -> {status} {google_status or ''}: {google_message or ''}".strip()
        kw: dict[str, Any] = {"status": status, "reason": google_status, **where}
        if status == 429 or (status == 403 and _RATE_LIMIT_REASONS.intersection(reasons)):
            return ChatRateLimited(text, wait_seconds=_retry_after(exc.resp), **kw)
        if status == 401 or (status == 403 and _AUTH_REASONS.intersection(reasons)):
            return ChatAuthError(text, **kw)
        if status == 403:
            return ChatPermissionDenied(text, **kw)
        if status == 404:
            return ChatNotFound(text, **kw)
        if status == 409 and google_status != "ABORTED":
            return ChatAlreadyExists(text, **kw)
        if status in (408, 409, 499) or (status >= 500 and status != 501):
            # 409 ABORTED is a concurrency conflict and 499 CANCELLED a cut-off call: both may
            # succeed when repeated, like a 5xx.
            return ChatUnavailable(text, **kw)
        return ChatRejected(text, **kw)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return ChatUnavailable(f"{method} {path}: token refresh failed transiently", **where)
        # The token endpoint's error text (e.g. "invalid_grant: Token has been expired or
        # revoked.") holds no secret, and it is what the operator needs to see.
        text = str(exc.args[0]) if exc.args else ""
        # google-auth words a token endpoint's refusal "<error>: <error_description>": the
        # OAuth error code (e.g. unauthorized_client, invalid_grant) is the reason.
        code = text.split(":", 1)[0].strip()
        return ChatAuthError(
            f"Google Chat token refresh failed ({text})",
            reason=code if re.fullmatch(r"[a-z_]+", code) else None,
            **where,
        )
    if isinstance(exc, google.auth.exceptions.TransportError):
        return ChatUnavailable(f"{method} {path}: token endpoint unreachable: {exc}", **where)
    if isinstance(exc, MediaUploadSizeError):
        return ChatRejected(
            f"{method} {path}: upload too large: {exc}", reason="TOO_LARGE", **where
        )
    if isinstance(exc, TimeoutError):
        return ChatUnavailable(f"{method} {path}: timed out", reason="TIMEOUT", **where)
    if isinstance(exc, OSError | http.client.HTTPException | httplib2.HttpLib2Error):
        return ChatUnavailable(
            f"{method} {path}: connection failed: {type(exc).__name__}: {exc}",
            reason="CONNECTION",
            **where,
        )
    return ChatError(f"{method} {path}: {type(exc).__name__}: {exc}", **where)


_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    HttpError,
    MediaUploadSizeError,
    google.auth.exceptions.RefreshError,
    google.auth.exceptions.TransportError,
    OSError,
    http.client.HTTPException,
    httplib2.HttpLib2Error,
)


# --------------------------------------------------------------------------------------------
# Token file credentials
# --------------------------------------------------------------------------------------------


def write_token_file(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically with `data` as JSON, mode 0600 (it holds tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


class _TokenFileCredentials(google.oauth2.credentials.Credentials):
    """User OAuth credentials that write every refreshed access token back to their file.

    Refreshes are serialized: a thread that waited for another's refresh reuses its result
    instead of asking the token endpoint again.
    """

    def __init__(
        self,
        *args: Any,
        token_file: Path | None = None,
        file_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # google-auth ships py.typed but leaves Credentials' methods unannotated.
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._token_file = token_file
        self._file_data = dict(file_data or {})
        self._refresh_lock = threading.Lock()

    def refresh(self, request: google.auth.transport.Request) -> None:
        seen_token = self.token
        with self._refresh_lock:
            if self.token != seen_token and self.valid:
                return  # another thread refreshed while we waited
            self._adopt_new_grant()
            super().refresh(request)  # type: ignore[no-untyped-call]
            logger.info("refreshed the Google access token via %s", self.token_uri)
            if self._token_file is not None:
                self._save(self._token_file)

    def _adopt_new_grant(self) -> None:
        """Pick up a refresh token written to the file since we read it.

        After a revocation the operator runs `python main.py auth`, which writes a new grant to
        the same file; the running service must use it without a restart.
        """
        if self._token_file is None:
            return
        try:
            data = json.loads(self._token_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # keep what we have; the refresh itself will say what is wrong
        if not isinstance(data, dict) or not data.get("refresh_token"):
            return
        if data["refresh_token"] == self.refresh_token:
            return
        logger.info("using the new Google grant found in %s", self._token_file)
        # google-auth keeps these private; they are the fields a refresh reads.
        self._refresh_token = data["refresh_token"]
        self._client_id = data.get("client_id") or self._client_id
        self._client_secret = data.get("client_secret") or self._client_secret
        self._token_uri = data.get("token_uri") or self._token_uri
        self._file_data = data

    def _save(self, token_file: Path) -> None:
        data = dict(self._file_data)
        data["token"] = self.token
        if self.refresh_token:
            data["refresh_token"] = self.refresh_token
        if self.expiry is not None:
            # google-auth keeps expiry as naive UTC and writes it the same way.
            data["expiry"] = self.expiry.isoformat() + "Z"
        write_token_file(token_file, data)
        self._file_data = data


def load_token_file(token_file: Path) -> google.oauth2.credentials.Credentials:
    """Credentials from an authorized-user JSON file, keeping the file's `token_uri`.

    Raises:
        ChatAuthError: the file is missing, unreadable, or lacks what a refresh needs.
    """
    try:
        data = json.loads(Path(token_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChatAuthError(f"Google token file {token_file} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ChatAuthError(f"Google token file {token_file} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ChatAuthError(f"Google token file {token_file} is not a JSON object")
    missing = [k for k in ("refresh_token", "client_id", "client_secret") if not data.get(k)]
    if missing:
        raise ChatAuthError(f"Google token file {token_file} lacks {', '.join(missing)}")
    scopes = data.get("scopes")
    if isinstance(scopes, str):
        scopes = scopes.split()
    expiry: datetime | None = None
    if data.get("expiry"):
        try:
            expiry = parse_rfc3339(str(data["expiry"]).rstrip("Zz") + "Z")
        except ValueError:
            expiry = None
        else:
            expiry = expiry.replace(tzinfo=None)  # google-auth compares naive UTC
    if expiry is None:
        # No (readable) expiry: treat the token as expired so that the first call refreshes.
        expiry = datetime(1970, 1, 1)
    return _TokenFileCredentials(
        token=data.get("token"),
        refresh_token=data["refresh_token"],
        token_uri=data.get("token_uri") or GOOGLE_TOKEN_URI,
        client_id=data["client_id"],
        client_secret=data["client_secret"],
        scopes=scopes,
        expiry=expiry,
        token_file=Path(token_file),
        file_data=data,
    )


# --------------------------------------------------------------------------------------------
# Pacing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resources:
    """The googleapiclient resources the client calls, built once."""

    spaces: Any
    messages: Any
    members: Any
    media: Any


class _WritePacer:
    """At most one write per `interval` per space; each space has its own schedule.

    A caller takes the slot under the lock when it is due and sleeps outside the lock until
    then, so writers to other spaces never wait behind it; concurrent writers to one space take
    successive slots (in no promised order). A slot is one interval after the later of the
    previous slot and the end of the previous write (`written`).
    """

    def __init__(
        self, interval: float, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot: dict[str, float] = {}

    def wait_for_slot(self, space_name: str) -> None:
        while True:
            with self._lock:
                now = self._clock()
                slot = self._next_slot.get(space_name, now)
                if slot <= now:
                    self._next_slot[space_name] = now + self._interval
                    return
            # Sleep outside the lock, then look again: a write that ended meanwhile (`written`)
            # may have pushed the slot further.
            logger.debug("pacing writes to %s: waiting %.3fs", space_name, slot - now)
            self._sleep(slot - now)
            if self._clock() < slot:
                # The sleep was cut short (shutdown): go on rather than spin; the caller stops
                # between items.
                return

    def written(self, space_name: str) -> None:
        """A write to the space has just ended: the next one starts an interval from now.

        Chat counts a write when it arrives, which may be well after its slot (a token refresh
        or a slow connection in between); spacing from the slots alone let two writes arrive
        less than an interval apart (429s seen by tests/reliability/test_load.py).
        """
        with self._lock:
            now = self._clock()
            self._next_slot[space_name] = max(
                self._next_slot.get(space_name, now), now + self._interval
            )


# --------------------------------------------------------------------------------------------
# Media downloads
# --------------------------------------------------------------------------------------------

# Bytes asked for per ranged media read: the most a download holds in memory, and the most it
# reads of a file that turns out to be over its limit.
MEDIA_BLOCK = 1024 * 1024


class _MediaDownload:
    """A `media.download` read in ranged blocks into a sink, stopped as soon as the file is known
    to be over `max_bytes`. `_call` executes it like an `HttpRequest` (method, uri, execute),
    so the errors and retries are the client's usual ones; each attempt starts the sink over."""

    def __init__(self, request: HttpRequest, sink: IO[bytes], max_bytes: int) -> None:
        self._request = request
        self._sink = sink
        self._max_bytes = max_bytes
        self.method = request.method
        self.uri = request.uri

    def execute(self, http: Any) -> int:
        self._sink.seek(0)
        self._sink.truncate()
        self._request.http = http  # this thread's connection (httplib2 is not thread-safe)
        limit = self._max_bytes
        capped = _CappedSink(self._sink, limit, self._too_large)
        # The first answer's Content-Range names the whole size: a file over the limit is
        # refused after one block, which itself never goes past the limit.
        block = max(1, min(MEDIA_BLOCK, limit))
        downloader = MediaIoBaseDownload(capped, self._request, chunksize=block)
        done = False
        while not done:
            status, done = downloader.next_chunk()
            if status.total_size is not None and status.total_size > limit:
                raise self._too_large(status.total_size)
        return capped.written

    def _too_large(self, size: int | None) -> ChatTooLarge:
        said = f"{size} bytes" if size is not None else "more"
        return ChatTooLarge(
            f"{self.method} {urlsplit(str(self.uri)).path}: the file is {said}, over the "
            f"limit of {self._max_bytes}",
            limit=self._max_bytes,
            size=size,
            status=206,
            method=str(self.method),
            path=urlsplit(str(self.uri)).path,
        )


class _CappedSink(io.RawIOBase):
    """Passes writes on to `sink` until `limit` bytes; past it raises (a server that ignored
    the range, or sent no size)."""

    def __init__(
        self, sink: IO[bytes], limit: int, too_large: Callable[[int | None], ChatTooLarge]
    ) -> None:
        super().__init__()
        self._sink = sink
        self._limit = limit
        self._too_large = too_large
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = len(data)
        if self.written + size > self._limit:
            raise self._too_large(None)
        self._sink.write(data)
        self.written += size
        return size


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


def bundled_discovery_document(
    api: str, version: str = "v1", *, api_endpoint: str | None = None
) -> dict[str, Any]:
    """googleapiclient's bundled discovery doc of `api`, with every URL root (`rootUrl`,
    `mtlsRootUrl`, `baseUrl`) pointed at `api_endpoint` when one is given.

    Rewriting the document rather than passing `client_options.api_endpoint` also moves media
    uploads, which the option leaves on https (module docstring). No network is involved.
    """
    raw = discovery_cache.get_static_doc(api, version)
    if raw is None:  # pragma: no cover - the documents ship with google-api-python-client
        raise RuntimeError(f"googleapiclient has no bundled {api}.{version} discovery document")
    doc: dict[str, Any] = json.loads(raw)
    if api_endpoint:
        root = api_endpoint.rstrip("/") + "/"
        doc["rootUrl"] = root
        doc["mtlsRootUrl"] = root
        doc["baseUrl"] = root + str(doc.get("servicePath") or "")
    return doc


def _chat_discovery_document(api_endpoint: str) -> dict[str, Any]:
    """The bundled chat.v1 discovery doc with every URL root pointed at `api_endpoint`."""
    return bundled_discovery_document("chat", "v1", api_endpoint=api_endpoint)


class GoogleChatClient:
    """Google Chat calls with typed results; see the module docstring for the guarantees."""

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        *,
        api_endpoint: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 5,
        write_interval_seconds: float = 1.0,
        timeout_seconds: float = 30.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        max_wait_seconds: float = 120.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._credentials = credentials
        self._api_endpoint = api_endpoint
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._timeout_seconds = timeout_seconds
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self._max_wait = max_wait_seconds
        self._pacer = _WritePacer(write_interval_seconds, clock, sleep)
        # httplib2.Http is not thread-safe: one authorized connection object per thread.
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self._own_user: str | None = None  # learnt from the sender of a created message
        self.request_count = 0  # HTTP attempts sent by this client (for logs and metrics)
        self.rate_limited_count = 0  # 429 answers received
        if api_endpoint:
            self._service = discovery.build_from_document(
                _chat_discovery_document(api_endpoint), http=self._http()
            )
        else:
            self._service = discovery.build(
                "chat", "v1", http=self._http(), static_discovery=True, cache_discovery=False
            )
        # googleapiclient builds a resource object anew, from the whole discovery document, on
        # every `spaces()` / `messages()` call, and keeps about a megabyte per build alive: built
        # once here, the resources are shared (a request is executed on each thread's own http).
        spaces = self._service.spaces()
        self._resources = _Resources(
            spaces=spaces,
            messages=spaces.messages(),
            members=spaces.members(),
            media=self._service.media(),
        )
        # spaceEvents is called without its googleapiclient resource: building that one expands
        # the SpaceEvent schema (every event payload, batches included) into method docstrings
        # and kept about 60 MB alive in the bridge process.
        self._base_url = (api_endpoint.rstrip("/") + "/") if api_endpoint else CHAT_ROOT_URL

    @classmethod
    def from_token_file(
        cls, token_file: Path, *, api_endpoint: str | None = None, **kw: Any
    ) -> GoogleChatClient:
        """A client authorized by an authorized-user token file (refreshed via its token_uri).

        Raises:
            ChatAuthError: the file is missing or unusable.
        """
        return cls(load_token_file(Path(token_file)), api_endpoint=api_endpoint, **kw)

    # ---- plumbing -----------------------------------------------------------------------

    def _http(self) -> google_auth_httplib2.AuthorizedHttp:
        authorized = getattr(self._local, "http", None)
        if authorized is None:
            authorized = google_auth_httplib2.AuthorizedHttp(
                self._credentials, http=httplib2.Http(timeout=self._timeout_seconds)
            )
            self._local.http = authorized
        return authorized

    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))

    def _call(
        self,
        make_request: Callable[[], HttpRequest],
        *,
        write_space: str | None = None,
        not_found_after_retry_is_success: bool = False,
    ) -> Any:
        """Execute a request with pacing (writes), retries and error mapping.

        `make_request` builds a fresh HttpRequest per attempt. With
        `not_found_after_retry_is_success`, a 404 answering a *repeated* attempt means an earlier
        attempt already took effect (deletes), so it returns None instead of raising.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                request = make_request()
            except TypeError as exc:
                # googleapiclient validates names against the discovery patterns locally.
                raise ChatRejected(f"invalid request: {exc}", reason="INVALID_ARGUMENT") from exc
            method = str(request.method)
            path = urlsplit(str(request.uri)).path
            if write_space is not None:
                self._pacer.wait_for_slot(write_space)
            with self._count_lock:
                self.request_count += 1
            try:
                try:
                    result = request.execute(http=self._http())
                finally:
                    if write_space is not None:
                        self._pacer.written(write_space)
            except _TRANSPORT_ERRORS as exc:
                error = _to_chat_error(exc, method, path)
                logger.debug("chat %s %s -> %s (attempt %d)", method, path, error.status, attempt)
                if isinstance(error, ChatRateLimited):
                    with self._count_lock:
                        self.rate_limited_count += 1
                if (
                    isinstance(error, ChatNotFound)
                    and not_found_after_retry_is_success
                    and attempt > 1
                ):
                    return None
                if not isinstance(error, ChatUnavailable) or attempt >= self._max_attempts:
                    raise error from exc
                wait = self._backoff(attempt)
                if isinstance(error, ChatRateLimited) and error.wait_seconds is not None:
                    wait = error.wait_seconds
                if wait > self._max_wait:
                    raise error from exc
                logger.warning(
                    "chat %s %s failed (%s); retry %d/%d in %.1fs",
                    method,
                    path,
                    error.reason or error.status,
                    attempt,
                    self._max_attempts - 1,
                    wait,
                )
                self._sleep(wait)
                continue
            logger.debug("chat %s %s -> ok (attempt %d)", method, path, attempt)
            return result

    def _messages(self) -> Any:
        return self._resources.messages

    def _list_members_page(self, params: dict[str, Any]) -> Any:
        return self._resources.members.list(**params)

    def _list_messages_page(self, params: dict[str, Any]) -> Any:
        return self._messages().list(**params)

    # ---- spaces and members ---------------------------------------------------------------

    def list_spaces_page(
        self,
        *,
        page_size: int = MAX_PAGE_SIZE,
        page_token: str | None = None,
        space_type: str | None = None,
    ) -> tuple[list[ChatSpace], str | None]:
        """One page of the caller's spaces and the next page token (None on the last page)."""
        params: dict[str, Any] = {"pageSize": min(page_size, MAX_PAGE_SIZE)}
        if page_token:
            params["pageToken"] = page_token
        if space_type:
            params["filter"] = f'spaceType = "{space_type}"'
        body = self._call(lambda: self._resources.spaces.list(**params)) or {}
        spaces = [ChatSpace.from_api(s) for s in body.get("spaces") or ()]
        return spaces, body.get("nextPageToken") or None

    def list_spaces(
        self, *, space_type: str | None = None, page_size: int = MAX_PAGE_SIZE
    ) -> Iterator[ChatSpace]:
        """Every space the caller is a member of (all pages)."""
        token: str | None = None
        while True:
            spaces, token = self.list_spaces_page(
                page_size=page_size, page_token=token, space_type=space_type
            )
            yield from spaces
            if token is None:
                return

    def get_space(self, space_name: str) -> ChatSpace:
        """Raises ChatNotFound when the space does not exist (or is not visible)."""
        return ChatSpace.from_api(self._call(lambda: self._resources.spaces.get(name=space_name)))

    def get_member(self, space_name: str, member: str) -> ChatUser:
        """The member `member` (a user's id, or their email as an alias) of a space.

        Raises:
            ChatNotFound: not a member (or no such user or space).
        """
        name = f"{space_name}/members/{member.removeprefix('users/')}"
        membership = self._call(lambda: self._resources.members.get(name=name)) or {}
        user = membership.get("member")
        if not isinstance(user, dict) or not user.get("name"):
            raise ChatNotFound(f"GET {name}: a membership without a user", status=404)
        return ChatUser.from_api(user)

    def list_members(self, space_name: str) -> list[ChatUser]:
        """The users that are members of a space (group memberships are skipped)."""
        users: list[ChatUser] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"parent": space_name, "pageSize": MAX_PAGE_SIZE}
            if token:
                params["pageToken"] = token
            body = self._call(partial(self._list_members_page, params)) or {}
            for membership in body.get("memberships") or ():
                member = membership.get("member")
                if isinstance(member, dict) and member.get("name"):
                    users.append(ChatUser.from_api(member))
            token = body.get("nextPageToken") or None
            if token is None:
                return users

    # ---- messages ---------------------------------------------------------------------------

    def list_messages(
        self,
        space_name: str,
        *,
        created_after: str | datetime | None = None,
        thread_name: str | None = None,
        show_deleted: bool = False,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[ChatMessage]:
        """Messages of a space, oldest first, all pages.

        `created_after` is an RFC 3339 string (pass `create_time_raw` of the last message seen to
        keep Google's full precision) or a datetime; only later messages are returned.
        """
        conditions: list[str] = []
        if created_after is not None:
            after = (
                created_after if isinstance(created_after, str) else format_rfc3339(created_after)
            )
            conditions.append(f'createTime > "{after}"')
        if thread_name:
            # Unquoted, as in every Google example; at most one thread condition is allowed.
            conditions.append(f"thread.name = {thread_name}")
        params: dict[str, Any] = {
            "parent": space_name,
            "pageSize": min(page_size, MAX_PAGE_SIZE),
            # formattedText in the syntax the converters parse, whatever the app's default.
            "markupSyntax": MARKUP_SYNTAX,
        }
        if conditions:
            params["filter"] = " AND ".join(conditions)
        if show_deleted:
            params["showDeleted"] = True
        token: str | None = None
        while True:
            page_params = dict(params, pageToken=token) if token else params
            body = self._call(partial(self._list_messages_page, page_params)) or {}
            for data in body.get("messages") or ():
                yield ChatMessage.from_api(data)
            token = body.get("nextPageToken") or None
            if token is None:
                return

    def list_message_changes(
        self, space_name: str, *, since: datetime
    ) -> Iterator[ChatMessageChange]:
        """Edits and deletions of a space's messages after `since`, oldest first, all pages.

        `spaces.spaceEvents.list` (at most 28 days back): one request finds what changed, however
        much the space holds, where re-listing its recent messages would read all of them. The
        events carry the message in the app's default markup syntax (the list has no
        `markupSyntax` parameter), so callers fetch an updated message with `get_message`.
        """
        types = " OR ".join(f'event_types:"{t}"' for t in (MESSAGE_UPDATED, MESSAGE_DELETED))
        params: dict[str, Any] = {
            "parent": space_name,
            "pageSize": MAX_PAGE_SIZE,
            "filter": f'start_time="{format_rfc3339(since)}" AND ({types})',
        }
        token: str | None = None
        while True:
            page_params = dict(params, pageToken=token) if token else params
            body = self._call(partial(self._list_space_events_page, page_params)) or {}
            for data in body.get("spaceEvents") or ():
                yield from ChatMessageChange.from_event(data)
            token = body.get("nextPageToken") or None
            if not token:
                return

    def list_message_events(self, space_name: str, *, since: datetime) -> list[SpaceMessageEvent]:
        """Messages created, edited and deleted in a space after `since`: oldest first, all pages.

        `spaces.spaceEvents.list`: the catch-up for what a Workspace Events subscription may have
        missed. Batch events Google returns are expanded to one record per message. The API
        refuses a start older than 28 days, so an older `since` is moved up to 28 days (less a
        minute) ago: what happened before that is beyond its reach anyway.
        """
        floor = datetime.now(UTC) - SPACE_EVENT_WINDOW
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        if since < floor:
            logger.info(
                "catch-up of %s starts at %s, not %s: space events reach back 28 days",
                space_name,
                format_rfc3339(floor),
                format_rfc3339(since),
            )
            since = floor
        types = " OR ".join(
            f'event_types:"{t}"' for t in (MESSAGE_CREATED, MESSAGE_UPDATED, MESSAGE_DELETED)
        )
        params: dict[str, Any] = {
            "parent": space_name,
            "pageSize": MAX_PAGE_SIZE,
            "filter": f'start_time="{format_rfc3339(since)}" AND ({types})',
        }
        events: list[SpaceMessageEvent] = []
        token: str | None = None
        while True:
            page_params = dict(params, pageToken=token) if token else params
            body = self._call(partial(self._list_space_events_page, page_params)) or {}
            for data in body.get("spaceEvents") or ():
                if isinstance(data, Mapping):
                    events.extend(SpaceMessageEvent.from_space_event(data))
            token = body.get("nextPageToken") or None
            if not token:
                break
        # Google lists oldest first; a stable sort keeps that order for equal times and guards
        # the promise should pages ever overlap in time.
        events.sort(key=lambda event: event.event_time)
        return events

    def _list_space_events_page(self, params: dict[str, Any]) -> HttpRequest:
        """`spaces.spaceEvents.list` as the resource would send it (GET, JSON, query string)."""
        query = urlencode({key: value for key, value in params.items() if key != "parent"})
        uri = f"{self._base_url}v1/{quote(str(params['parent']), safe='/')}/spaceEvents?{query}"
        return HttpRequest(
            self._http(),
            JsonModel(data_wrapper=False).response,
            uri,
            method="GET",
            headers={"accept": "application/json", "user-agent": "gchat-discourse-bridge"},
            methodId="chat.spaces.spaceEvents.list",
        )

    def get_message(self, message_name: str) -> ChatMessage:
        """A message by name (`spaces/S/messages/M`, M may be a client-assigned id)."""
        return ChatMessage.from_api(
            self._call(lambda: self._messages().get(name=message_name, markupSyntax=MARKUP_SYNTAX))
        )

    @property
    def own_user(self) -> str | None:
        """The Chat user this client writes as (`users/…`), once a create has shown it."""
        return self._own_user

    def create_message(
        self,
        space_name: str,
        text: str,
        *,
        message_id: str,
        thread_name: str | None = None,
        attachments: Sequence[AttachmentRef] = (),
        is_own: Callable[[ChatMessage], bool] | None = None,
        fallback_ids: Sequence[str] = (),
    ) -> ChatMessage:
        """Create a message (`text` in Chat markup) as the authorized user; idempotent by id.

        `message_id` must be a client-assigned id (`client-` + up to 56 of `[a-z0-9-]`). If a
        message with that id already exists, it is returned instead of a second one only when
        `is_own` accepts it (an earlier attempt of ours, perhaps before a crash; by default:
        one whose sender is `own_user`). Anyone in a space may create a message under an id
        nobody used yet, so a message that is not ours is never adopted: the next of
        `fallback_ids` is tried instead (deterministic ones, so that a retry finds its own
        earlier write among them). With `thread_name` the message replies in that thread
        (falling back to a new thread if it is gone); without, it starts a thread. The id the
        message got is its `client_assigned_message_id`.

        Raises:
            ValueError: an id is not a valid client-assigned id.
            ChatIdTaken: every id offered is held by a message that is not ours.
            ChatRejected, ChatUnavailable, ChatAuthError: see the module docstring.
        """
        candidates = (message_id, *fallback_ids)
        for candidate in candidates:
            if not _CLIENT_MESSAGE_ID.match(candidate):
                raise ValueError(f"not a client-assigned message id: {candidate!r}")
        own = is_own or self._sent_by_me
        # `text` is Chat markup (formatting.discourse_to_gchat_text): say so, or an app whose
        # default is Markdown would show `*bold*` in italics and `<users/…>` literally.
        body: dict[str, Any] = {"text": text, "markupSyntax": MARKUP_SYNTAX}
        params: dict[str, Any] = {"parent": space_name}
        if thread_name:
            body["thread"] = {"name": thread_name}
            # The default reply option ignores `thread` and starts a new thread.
            params["messageReplyOption"] = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
        if attachments:
            body["attachment"] = [{"attachmentDataRef": ref.to_api()} for ref in attachments]
        holders: list[ChatMessage] = []
        for candidate in candidates:
            created, message = self._create_or_find(
                space_name, body, {**params, "messageId": candidate}
            )
            if created:
                return message
            if own(message):
                logger.info("message %s already existed in %s; reusing it", candidate, space_name)
                return message
            logger.warning(
                "client id %s in %s is held by %s, not by the bridge: not adopted",
                candidate,
                space_name,
                message.sender.name or "an unknown sender",
            )
            holders.append(message)
        raise ChatIdTaken(
            f"every client id offered in {space_name} is held by another sender's message "
            f"({', '.join(m.name for m in holders)})",
            reason="ALREADY_EXISTS",
            holders=holders,
        )

    def _sent_by_me(self, message: ChatMessage) -> bool:
        return self._own_user is not None and message.sender.name == self._own_user

    def _create_or_find(
        self, space_name: str, body: dict[str, Any], params: dict[str, Any]
    ) -> tuple[bool, ChatMessage]:
        """Create under `params["messageId"]`: (True, the new message), or (False, the message
        that already holds the id)."""
        try:
            data = self._call(
                lambda: self._messages().create(body=body, **params), write_space=space_name
            )
        except ChatRejected as exc:
            # Google's answer to a duplicate messageId is undocumented (409 ALREADY_EXISTS is
            # the likely one): on any 400/409 look the id up before giving up.
            if isinstance(exc, ChatNotFound | ChatPermissionDenied) or exc.status not in (
                400,
                409,
            ):
                raise
            try:
                return False, self.get_message(f"{space_name}/messages/{params['messageId']}")
            except ChatNotFound:
                raise exc from None
        message = ChatMessage.from_api(data)
        if message.sender.name:
            self._own_user = message.sender.name  # the sender of a create is the caller
        logger.debug("created %s (%s)", message.name, params["messageId"])
        return True, message

    def update_message_text(self, message_name: str, text: str) -> ChatMessage:
        """Replace a message's text, given in Chat markup (PATCH updateMask=text)."""
        # The discovery doc: set markupSyntax and text on the body and put only `text` in the
        # mask (markupSyntax is how the new text is read, not a field that is updated).
        body = {"text": text, "markupSyntax": MARKUP_SYNTAX}
        data = self._call(
            lambda: self._messages().patch(name=message_name, updateMask="text", body=body),
            write_space=_space_of(message_name),
        )
        return ChatMessage.from_api(data)

    def delete_message(self, message_name: str, *, force: bool = True) -> None:
        """Delete a message (`force` also deletes its thread replies).

        Raises:
            ChatNotFound: the message does not exist (unless an earlier attempt of this very call
                deleted it before its answer was lost).
        """
        self._call(
            lambda: self._messages().delete(name=message_name, force=force),
            write_space=_space_of(message_name),
            not_found_after_retry_is_success=True,
        )

    # ---- media ------------------------------------------------------------------------------

    def download_attachment(self, resource_name: str, sink: IO[bytes], *, max_bytes: int) -> int:
        """Write an uploaded attachment's content (`ChatAttachment.resource_name`) into `sink`;
        returns its size.

        Read in ranged blocks (`MediaIoBaseDownload`): the first answer's `Content-Range` tells
        the whole size, so a file over `max_bytes` is refused after one block (`ChatTooLarge`),
        and no more than one block is ever held in memory. A retried attempt starts `sink` over.
        """
        return int(
            self._call(
                lambda: _MediaDownload(
                    self._resources.media.download_media(resourceName=resource_name),
                    sink,
                    max_bytes,
                )
            )
        )

    def upload_attachment(
        self, space_name: str, filename: str, data: bytes | IO[bytes], content_type: str
    ) -> AttachmentRef:
        """Upload a file into a space; returns the reference to pass to `create_message`.

        Use it as `create_message(..., attachments=[ref])`, in the same space. A retried upload
        can leave an unreferenced upload behind, which is harmless. `data` may be a seekable
        binary file (positioned at its start): it is sent as a resumable upload, streamed from
        the file in one request, never read into memory whole.

        Raises:
            ChatError: BAD_RESPONSE if the answer holds no usable `attachmentDataRef`.
        """
        file = io.BytesIO(data) if isinstance(data, bytes) else data

        def upload() -> HttpRequest:
            file.seek(0)
            # Resumable: the simple (multipart) form builds its whole body in memory.
            media = MediaIoBaseUpload(file, mimetype=content_type, chunksize=-1, resumable=True)
            request: HttpRequest = self._resources.media.upload(
                parent=space_name, body={"filename": filename}, media_body=media
            )
            return request

        result = self._call(upload, write_space=space_name)
        data_ref = (result or {}).get("attachmentDataRef")
        try:
            return AttachmentRef.from_api(data_ref if isinstance(data_ref, Mapping) else {})
        except ValueError:
            raise ChatError(
                f"upload into {space_name} returned no attachmentDataRef", reason="BAD_RESPONSE"
            ) from None
