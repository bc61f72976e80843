"""Discourse admin-API client: the only module that talks HTTP to Discourse.

Role: turn the bridge's intentions (create a topic as Alice, edit post 12, send a chat message)
into Discourse API requests, and Discourse's answers into typed, frozen records or exceptions.
It knows nothing about Google Chat or the database.

Invariants:
- Every request goes through `DiscourseClient._request`: one place sets the `Api-Key` /
  `Api-Username` headers (impersonation per call via `as_user`), `Accept: application/json`,
  a timeout, the request budget, the retries and the status → exception mapping.
- Request budget: Discourse's admin-API limit (`max_admin_api_reqs_per_minute`, 60 by default)
  is one sliding window shared by every key of the site. The client keeps a rolling window of
  `requests_per_minute` requests per 60 s shared by all threads of this client: a request past
  the budget waits (injected `sleep` / `clock`) instead of failing. The window is stamped when
  a request *completes*, so the server (which stamps on arrival) never sees more than the budget
  inside its own window. A 429 blocks every thread of the client for the time the server asks.
- Retries are bounded by `max_attempts`. A 429 (JSON or plain-text per-IP form) is always
  retried after the wait the server names: Discourse rejects before acting. 5xx, timeouts and
  connection errors are retried only for requests that are safe to repeat:
    * GET, PUT and DELETE (reads; edits and deletes that converge on the same state);
    * `create_topic` with an `external_id`: before each retry the topic is looked up by its
      external id and, if the first attempt did land, its first post is returned;
    * uploads (Discourse dedupes uploads by content) and 1:1 DM channels (reused by Discourse).
  Other content-creating POSTs (replies, users, categories, chat messages) are NOT retried after
  an ambiguous failure: `DiscourseUnavailable` reaches the caller, which reconciles (the origin
  marker in `raw`, a user lookup) before trying again. They are retried when the failure proves
  the request never reached Discourse (connection refused, connect timeout).
- Auth failures (bad, revoked or wrong-user key; suspended acting user) raise
  `DiscourseAuthError` and are never retried. Response bodies are kept on exceptions, never
  logged whole; the API key is never logged.
- Files cross in blocks, never whole in memory: `upload_file` streams from a file with its length
  declared, `download_upload` writes into a sink under a hard byte cap (a declared length over
  it is refused unread, a longer body cut off) as the acting user the caller names, and follows
  a redirect to another host (a CDN) without any credential.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote, urljoin, urlsplit

import requests

logger = logging.getLogger(__name__)

__all__ = [
    "DiscourseAuthError",
    "DiscourseCategory",
    "DiscourseChatMessage",
    "DiscourseClient",
    "DiscourseError",
    "DiscourseNotFound",
    "DiscoursePost",
    "DiscoursePostEnqueued",
    "DiscourseRateLimited",
    "DiscourseRejected",
    "DiscourseTooLarge",
    "DiscourseTopic",
    "DiscourseUnavailable",
    "DiscourseUpload",
    "DiscourseUser",
    "DiscourseWebhook",
]

# Discourse's admin-API limiter counts requests in a sliding window of one minute.
RATE_WINDOW_SECONDS = 60.0
# Used when a 429 names no wait at all (neither extras.wait_seconds, Retry-After nor body text).
DEFAULT_RATE_LIMIT_WAIT = 10.0
# Exponential backoff for transient errors: 1 s, 2 s, 4 s ... capped.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
# The per-IP middleware 429 is plain text: "Please retry again in 7 seconds."
_PLAIN_WAIT_RE = re.compile(r"retry again in (\d+(?:\.\d+)?) seconds?", re.IGNORECASE)
# The credentials variant of the 403 (bad, revoked, wrong-user key) as opposed to a 403 for a
# suspended/inactive acting user or a guardian refusal, which share error_type invalid_access.
_BAD_CREDENTIALS_TEXT = "API username or key is invalid"
# The topic lookup by external id redirects here (§2.4 of the reference).
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Hops followed for an upload download (Discourse: one to the file or its CDN).
_MAX_UPLOAD_REDIRECTS = 3
# Bytes read (or sent) at a time when a file is streamed: the most a download reads past its
# limit before it stops.
_FILE_BLOCK = 64 * 1024
_AUTH_ERROR_TYPES = frozenset({"invalid_access", "not_logged_in", "invalid_api_credentials"})
# The provider name of Discourse's Google login (Auth::GoogleOAuth2Authenticator#name).
GOOGLE_PROVIDER = "google_oauth2"


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------


class DiscourseError(Exception):
    """Base of every error this client raises; carries the request and the server's answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        path: str = "",
        body: str | None = None,
        errors: Sequence[str] = (),
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        # The raw body is kept for debugging; it may hold user content, so it is never logged.
        self.body = body
        self.errors: list[str] = list(errors)
        self.error_type = error_type


class DiscourseUnavailable(DiscourseError):
    """5xx, timeout or connection error: the item is fine, try again later."""


class DiscourseRateLimited(DiscourseUnavailable):
    """429 from the admin-API limiter (JSON) or the per-IP middleware (plain text)."""

    def __init__(
        self, message: str, *, wait_seconds: float, error_code: str | None = None, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.wait_seconds = wait_seconds
        # Discourse-Rate-Limit-Error-Code, e.g. admin_api_key_rate_limit or ip_10_secs_limit.
        self.error_code = error_code


class DiscourseRejected(DiscourseError):
    """4xx (or a 200 with success false): this item is bad as sent; do not retry it."""


class DiscourseNotFound(DiscourseRejected):
    """404: the resource does not exist or the acting user may not see it."""


class DiscourseAuthError(DiscourseRejected):
    """401, a login redirect, or 403 invalid_access / not_logged_in.

    `credentials_invalid` is True when Discourse says the key itself is bad (revoked, wrong user
    for a single-user key, unknown Api-Username): the whole client is unusable, stop and say so.
    Otherwise the acting user (suspended, inactive) or the action is refused: park the item.
    """

    @property
    def credentials_invalid(self) -> bool:
        if self.status in (401, 302):
            return True
        return any(_BAD_CREDENTIALS_TEXT in message for message in self.errors)


class DiscourseTooLarge(DiscourseRejected):
    """A download over the caller's byte limit, refused after reading at most the limit plus one
    block (or nothing at all, when the answer declared its length). `size` is the declared
    length, None when the body was cut off."""

    def __init__(self, message: str, *, limit: int, size: int | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit
        self.size = size


class DiscoursePostEnqueued(DiscourseRejected):
    """A post went to the approval queue (200 `action: enqueued`): it has no post id yet."""

    def __init__(self, message: str, *, pending_post_id: int | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.pending_post_id = pending_post_id


# --------------------------------------------------------------------------------------------
# Records (parsed from JSON here and nowhere else)
# --------------------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    """Discourse timestamps are ISO 8601 with a `Z` (`2023-02-09T10:19:46.324Z`)."""
    if not value or not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _required_time(value: Any) -> datetime:
    parsed = _parse_time(value)
    if parsed is None:
        raise ValueError(f"missing timestamp: {value!r}")
    return parsed


def _opt_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class DiscourseUser:
    id: int
    username: str
    name: str | None
    email: str | None
    active: bool
    admin: bool
    moderator: bool
    trust_level: int
    # Shown to staff while in force (UserSerializer); None otherwise.
    suspended_till: datetime | None = None
    silenced_till: datetime | None = None

    def refusal(self, now: datetime) -> str | None:
        """Why Discourse refuses to let this user post now (suspended, silenced, inactive)."""
        if self.suspended_till is not None and self.suspended_till > now:
            return f"suspended until {self.suspended_till:%Y-%m-%d %H:%M} UTC"
        if self.silenced_till is not None and self.silenced_till > now:
            return f"silenced until {self.silenced_till:%Y-%m-%d %H:%M} UTC"
        if not self.active:
            return "deactivated"
        return None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> DiscourseUser:
        # /u/{username}.json shows `active` only to staff; absent means the public view of a
        # visible (hence active) user.
        return cls(
            id=int(data["id"]),
            username=str(data["username"]),
            name=_opt_str(data.get("name")),
            email=_opt_str(data.get("email")),
            active=bool(data.get("active", True)),
            admin=bool(data.get("admin", False)),
            moderator=bool(data.get("moderator", False)),
            trust_level=int(data.get("trust_level") or 0),
            suspended_till=_parse_time(data.get("suspended_till")),
            silenced_till=_parse_time(data.get("silenced_till")),
        )


@dataclass(frozen=True, slots=True)
class DiscourseCategory:
    id: int
    name: str
    slug: str
    parent_category_id: int | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> DiscourseCategory:
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            slug=str(data.get("slug") or ""),
            parent_category_id=_opt_int(data.get("parent_category_id")),
        )


@dataclass(frozen=True, slots=True)
class DiscoursePost:
    id: int
    topic_id: int
    post_number: int
    username: str
    raw: str | None
    cooked: str | None
    post_type: int
    created_at: datetime
    updated_at: datetime | None
    deleted_at: datetime | None
    user_deleted: bool
    hidden: bool
    category_id: int | None
    topic_title: str | None
    topic_archetype: str | None
    reply_to_post_number: int | None
    version: int
    display_name: str | None = None  # the author's full name (`name`), when the forum shows it

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> DiscoursePost:
        return cls(
            id=int(data["id"]),
            topic_id=int(data["topic_id"]),
            post_number=int(data["post_number"]),
            username=str(data["username"]),
            raw=_opt_str(data.get("raw")),
            cooked=_opt_str(data.get("cooked")),
            post_type=int(data.get("post_type") or 1),
            created_at=_required_time(data.get("created_at")),
            updated_at=_parse_time(data.get("updated_at")),
            deleted_at=_parse_time(data.get("deleted_at")),
            user_deleted=bool(data.get("user_deleted", False)),
            hidden=bool(data.get("hidden", False)),
            category_id=_opt_int(data.get("category_id")),
            topic_title=_opt_str(data.get("topic_title")),
            topic_archetype=_opt_str(data.get("topic_archetype")),
            reply_to_post_number=_opt_int(data.get("reply_to_post_number")),
            version=int(data.get("version") or 1),
            display_name=_opt_str(data.get("name")),
        )


@dataclass(frozen=True, slots=True)
class DiscourseTopic:
    id: int
    title: str
    category_id: int | None
    external_id: str | None
    posts_count: int
    archetype: str
    post_ids: tuple[int, ...]  # post_stream.stream: every visible post id, in order

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> DiscourseTopic:
        stream = data.get("post_stream") or {}
        ids = stream.get("stream")
        if ids is None:
            # Mega topics (10,000+ posts) have no stream; keep what the first chunk shows.
            ids = [post["id"] for post in stream.get("posts") or ()]
        return cls(
            id=int(data["id"]),
            title=str(data.get("title") or ""),
            category_id=_opt_int(data.get("category_id")),
            external_id=_opt_str(data.get("external_id")),
            posts_count=int(data.get("posts_count") or 0),
            archetype=str(data.get("archetype") or "regular"),
            post_ids=tuple(int(post_id) for post_id in ids),
        )


@dataclass(frozen=True, slots=True)
class DiscourseChatMessage:
    id: int
    channel_id: int
    username: str
    message: str
    created_at: datetime
    edited: bool
    deleted_at: datetime | None
    thread_id: int | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any], *, channel_id: int) -> DiscourseChatMessage:
        user = data.get("user") or {}
        return cls(
            id=int(data["id"]),
            channel_id=int(data.get("chat_channel_id") or channel_id),
            username=str(user.get("username") or ""),
            message=str(data.get("message") or ""),
            created_at=_required_time(data.get("created_at")),
            edited=bool(data.get("edited", False)),
            deleted_at=_parse_time(data.get("deleted_at")),
            thread_id=_opt_int(data.get("thread_id")),
        )


@dataclass(frozen=True, slots=True)
class DiscourseUpload:
    id: int
    url: str
    short_url: str  # upload://<base62(sha1)>.<ext>: what goes into raw
    short_path: str | None
    original_filename: str
    filesize: int
    extension: str | None
    width: int | None
    height: int | None
    thumbnail_width: int | None
    thumbnail_height: int | None
    human_filesize: str | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> DiscourseUpload:
        return cls(
            id=int(data["id"]),
            url=str(data["url"]),
            short_url=str(data["short_url"]),
            short_path=_opt_str(data.get("short_path")),
            original_filename=str(data.get("original_filename") or ""),
            filesize=int(data.get("filesize") or 0),
            extension=_opt_str(data.get("extension")),
            width=_opt_int(data.get("width")),
            height=_opt_int(data.get("height")),
            thumbnail_width=_opt_int(data.get("thumbnail_width")),
            thumbnail_height=_opt_int(data.get("thumbnail_height")),
            human_filesize=_opt_str(data.get("human_filesize")),
        )


@dataclass(frozen=True, slots=True)
class DiscourseWebhook:
    id: int
    payload_url: str
    content_type: int  # 1 = application/json, 2 = form-urlencoded (header only)
    active: bool
    wildcard_web_hook: bool
    verify_certificate: bool
    event_type_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    secret: str | None = field(default=None, repr=False)  # admins see it in the admin API

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> DiscourseWebhook:
        event_types = data.get("web_hook_event_types") or ()
        categories = data.get("categories") or ()
        category_ids = data.get("category_ids")
        if category_ids is None:
            category_ids = [c["id"] if isinstance(c, Mapping) else c for c in categories]
        return cls(
            id=int(data["id"]),
            payload_url=str(data["payload_url"]),
            content_type=int(data.get("content_type") or 1),
            active=bool(data.get("active", False)),
            wildcard_web_hook=bool(data.get("wildcard_web_hook", False)),
            verify_certificate=bool(data.get("verify_certificate", True)),
            event_type_names=tuple(
                str(t["name"]) if isinstance(t, Mapping) else str(t) for t in event_types
            ),
            category_ids=tuple(int(c) for c in category_ids),
            secret=_opt_str(data.get("secret")),
        )


# --------------------------------------------------------------------------------------------
# Request budget
# --------------------------------------------------------------------------------------------


class _RequestBudget:
    """At most `limit` requests per `window` seconds, shared by every thread of one client.

    Discourse's limiter is a sliding window, so this is one too: each request holds a slot
    from the moment it is sent until `window` seconds after it completed. (A refilling token
    bucket of the same rate would allow a burst of up to twice the limit inside one server
    window, which is exactly what earns 429s.)
    """

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        if limit < 1:
            raise ValueError("requests_per_minute must allow at least one request")
        self._limit = limit
        self._window = window
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._done: deque[float] = deque()  # completion times, oldest first
        self._in_flight = 0
        self._blocked_until = 0.0

    def acquire(self) -> None:
        """Wait (via the injected sleep) until a request may be sent, then take a slot."""
        while True:
            with self._lock:
                now = self._clock()
                while self._done and self._done[0] <= now - self._window:
                    self._done.popleft()
                wait = self._blocked_until - now
                if wait <= 0:
                    if len(self._done) + self._in_flight < self._limit:
                        self._in_flight += 1
                        return
                    if not self._done:
                        # Every slot is held by a request still in flight on another thread:
                        # wait for one to complete (real time: the other thread is real).
                        self._slot_freed.wait(timeout=1.0)
                        continue
                    wait = self._done[0] + self._window - now
            logger.debug("request budget: waiting %.2f s", wait)
            self._sleep(wait)

    def release(self) -> None:
        """Mark the request taken by `acquire` as completed (successfully or not)."""
        with self._lock:
            self._in_flight -= 1
            self._done.append(self._clock())
            self._slot_freed.notify()

    def block_for(self, seconds: float) -> None:
        """After a 429: hold every thread back for as long as the server asked."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    """Discourse parses `created_at` with Time.zone.parse; send explicit UTC."""
    if value.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _errors_from(data: Any) -> list[str]:
    """Collect the human messages of any Discourse error body shape into a flat list."""
    if not isinstance(data, Mapping):
        return []
    errors = data.get("errors")
    found: list[str] = []
    if isinstance(errors, list):
        found.extend(str(message) for message in errors)
    elif isinstance(errors, Mapping):
        # POST /users.json: {"errors": {"username": ["must be unique"], ...}}
        for field_name, messages in errors.items():
            items = messages if isinstance(messages, list) else [messages]
            found.extend(f"{field_name} {message}" for message in items)
    elif isinstance(errors, str):
        found.append(errors)
    for key in ("error", "message"):
        if not found and isinstance(data.get(key), str) and data[key]:
            found.append(str(data[key]))
    return found


def _is_unsent(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached the server (safe to repeat any POST)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text


class DiscourseClient:
    """Typed access to the Discourse admin API; thread-safe (one shared session and budget)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_username: str,
        *,
        requests_per_minute: float = 60,
        rate_window_seconds: float = RATE_WINDOW_SECONDS,
        timeout_seconds: float = 30.0,
        max_attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.api_username = api_username
        self._base_parts = urlsplit(self.base_url)
        self._timeout = timeout_seconds
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._clock = clock
        self._budget = _RequestBudget(int(requests_per_minute), rate_window_seconds, clock, sleep)
        # One session per client, configured here and never mutated afterwards: the acting
        # user is a per-request header, so threads can share it.
        self._session = session or requests.Session()
        if session is None:
            # requests re-reads the proxy environment on every call (about a tenth of the
            # bridge's CPU per message). Every call goes to one host, so resolve the proxies
            # (NO_PROXY included) and the CA bundle once, here, instead.
            self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            # types-requests leaves extract_zipped_paths unannotated; it returns a path.
            path: str = requests.utils.extract_zipped_paths(  # type: ignore[no-untyped-call]
                bundle or ""
            )
            self._session.verify = path or True
            self._session.trust_env = False
        self._session.headers.update(
            {
                "Api-Key": api_key,
                "Api-Username": api_username,
                "Accept": "application/json",
                "User-Agent": "gchat-discourse-bridge",
            }
        )
        self._counter_lock = threading.Lock()
        self._request_count = 0
        self._rate_limited_count = 0

    # ---- counters ---------------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far (every attempt counts: the server counts them too)."""
        with self._counter_lock:
            return self._request_count

    @property
    def rate_limited_count(self) -> int:
        """429 answers received so far."""
        with self._counter_lock:
            return self._rate_limited_count

    def close(self) -> None:
        self._session.close()

    # ---- the one request function -----------------------------------------------------------

    def _url_for(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url + path_or_url

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        data: Any = None,
        files: Mapping[str, Any] | None = None,
        as_user: str | None = None,
        retry_transient: bool | None = None,
        redirect_ok: bool = False,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one API call with budget, timeout and bounded retries; map status → exception.

        `retry_transient` defaults to True for GET/PUT/DELETE and False for POST (see the
        module docstring). With `redirect_ok`, a 3xx is returned to the caller instead of
        raising (redirects are never followed automatically, so each hop passes the budget).
        With `stream`, a 2xx body is left unread for the caller (who closes the response); a
        streamed request body (`data`) must be re-iterable, since an attempt may be repeated.

        Raises: DiscourseRateLimited, DiscourseUnavailable, DiscourseAuthError,
        DiscourseNotFound, DiscourseRejected.
        """
        if retry_transient is None:
            retry_transient = method in ("GET", "PUT", "DELETE", "HEAD")
        sent = dict(headers or {})
        if as_user:
            sent["Api-Username"] = as_user
        url = self._url_for(path)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._send_once(
                    method,
                    url,
                    path,
                    params=params,
                    json=json,
                    data=data,
                    files=files,
                    headers=sent or None,
                    redirect_ok=redirect_ok,
                    stream=stream,
                )
            except DiscourseRateLimited as exc:
                if attempt >= self._max_attempts:
                    raise
                logger.warning(
                    "%s %s rate limited (%s); waiting %.1f s (attempt %d/%d)",
                    method,
                    path,
                    exc.error_code or "no code",
                    exc.wait_seconds,
                    attempt,
                    self._max_attempts,
                )
                self._budget.block_for(exc.wait_seconds)
                # The budget itself makes the wait, in acquire(), shared by all threads.
            except _UnsentError as exc:
                if attempt >= self._max_attempts:
                    raise exc.error from exc.__cause__
                self._backoff(method, path, attempt, exc.error)
            except DiscourseUnavailable as exc:
                if not retry_transient or attempt >= self._max_attempts:
                    raise
                self._backoff(method, path, attempt, exc)

    def _backoff(self, method: str, path: str, attempt: int, exc: DiscourseError) -> None:
        delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
        delay *= 1 + random.random() * 0.1  # a little jitter so threads do not retry in step
        logger.warning(
            "%s %s failed (%s); retrying in %.1f s (attempt %d/%d)",
            method,
            path,
            exc.status or type(exc).__name__,
            delay,
            attempt,
            self._max_attempts,
        )
        self._sleep(delay)

    def _send_once(
        self,
        method: str,
        url: str,
        path: str,
        *,
        params: Any,
        json: Any,
        data: Any,
        files: Any,
        headers: Mapping[str, str] | None,
        redirect_ok: bool,
        stream: bool = False,
    ) -> requests.Response:
        self._budget.acquire()
        started = self._clock()
        try:
            with self._counter_lock:
                self._request_count += 1
            response = self._session.request(
                method,
                url,
                params=params,
                json=json,
                data=data,
                files=files,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                stream=stream,
            )
        except requests.RequestException as exc:
            logger.debug("%s %s -> %s", method, path, type(exc).__name__)
            error = DiscourseUnavailable(
                f"{method} {path}: {type(exc).__name__}: {exc}", method=method, path=path
            )
            if _is_unsent(exc):
                raise _UnsentError(error) from exc
            raise error from exc
        finally:
            self._budget.release()
        logger.debug(
            "%s %s as %s -> %d (%.3f s)",
            method,
            path,
            (headers or {}).get("Api-Username", self.api_username),
            response.status_code,
            self._clock() - started,
        )
        self._raise_for_status(method, path, response, redirect_ok=redirect_ok)
        return response

    def _raise_for_status(
        self, method: str, path: str, response: requests.Response, *, redirect_ok: bool
    ) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in _REDIRECT_STATUSES and redirect_ok:
            return
        body = response.text
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = None
        errors = _errors_from(parsed)
        error_type = parsed.get("error_type") if isinstance(parsed, Mapping) else None
        summary = "; ".join(errors) if errors else body[:200].strip()
        message = f"{method} {path} -> {status}: {summary}"
        kw: dict[str, Any] = {
            "status": status,
            "method": method,
            "path": path,
            "body": body,
            "errors": errors,
            "error_type": error_type,
        }
        if status == 429:
            with self._counter_lock:
                self._rate_limited_count += 1
            raise DiscourseRateLimited(
                message,
                wait_seconds=self._wait_from_429(response, parsed),
                error_code=response.headers.get("Discourse-Rate-Limit-Error-Code"),
                **kw,
            )
        if status >= 500:
            raise DiscourseUnavailable(message, **kw)
        if status == 401 or status == 302:
            # A 302 answers a bad key on routes that redirect anonymous users to /login.
            raise DiscourseAuthError(message, **kw)
        if status == 403 and (error_type in _AUTH_ERROR_TYPES or parsed is None):
            raise DiscourseAuthError(message, **kw)
        if status == 404:
            raise DiscourseNotFound(message, **kw)
        raise DiscourseRejected(message, **kw)

    @staticmethod
    def _wait_from_429(response: requests.Response, parsed: Any) -> float:
        """extras.wait_seconds (JSON form), else Retry-After, else the plain-text body."""
        if isinstance(parsed, Mapping):
            extras = parsed.get("extras")
            if isinstance(extras, Mapping) and extras.get("wait_seconds") is not None:
                try:
                    return max(0.0, float(extras["wait_seconds"]))
                except (TypeError, ValueError):
                    pass
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                pass  # an HTTP date: Discourse does not send those; fall through
        match = _PLAIN_WAIT_RE.search(response.text or "")
        if match:
            return float(match.group(1))
        return DEFAULT_RATE_LIMIT_WAIT

    def _json(self, response: requests.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise DiscourseUnavailable(
                f"{method} {path} -> {response.status_code}: not JSON",
                status=response.status_code,
                method=method,
                path=path,
                body=response.text,
            ) from exc

    def _get(self, path: str, **kw: Any) -> Any:
        return self._json(self._request("GET", path, **kw), "GET", path)

    # ---- posts and topics -------------------------------------------------------------------

    def _post_from_create(self, data: Any, path: str) -> DiscoursePost:
        if isinstance(data, Mapping) and data.get("action") == "enqueued":
            pending = data.get("pending_post") or {}
            raise DiscoursePostEnqueued(
                f"POST {path}: post sent to the approval queue",
                pending_post_id=_opt_int(pending.get("id")),
                status=200,
                method="POST",
                path=path,
                errors=["post is waiting in the approval queue"],
                error_type="enqueued",
            )
        if isinstance(data, Mapping) and "post" in data and "id" not in data:
            data = data["post"]  # nested_post=true shape
        return DiscoursePost.from_api(data)

    def create_topic(
        self,
        *,
        title: str,
        raw: str,
        category_id: int,
        external_id: str | None = None,
        created_at: datetime | None = None,
        as_user: str | None = None,
        skip_validations: bool = True,
    ) -> DiscoursePost:
        """Create a topic; returns its first post (whose `topic_id` is the new topic).

        With `external_id`, a transient failure is retried after looking the topic up by that
        id, so a topic is never created twice. Raises DiscoursePostEnqueued for the approval
        queue, DiscourseRejected (422) with Discourse's messages.
        """
        body: dict[str, Any] = {"title": title, "raw": raw, "category": category_id}
        if external_id is not None:
            body["external_id"] = external_id
        if created_at is not None:
            body["created_at"] = _iso(created_at)
        if skip_validations:
            body["skip_validations"] = "true"
        path = "/posts.json"
        if external_id is None:
            return self._post_from_create(
                self._json(self._request("POST", path, json=body, as_user=as_user), "POST", path),
                path,
            )
        attempt = 0
        while True:
            attempt += 1
            rejected: DiscourseRejected | None = None
            try:
                response = self._request("POST", path, json=body, as_user=as_user)
                return self._post_from_create(self._json(response, "POST", path), path)
            except DiscourseRateLimited:
                raise  # already waited and retried inside _request
            except DiscourseUnavailable as exc:
                if attempt >= self._max_attempts:
                    raise
                self._backoff("POST", path, attempt, exc)
            except DiscourseRejected as exc:
                # "External has already been taken" after an earlier ambiguous attempt means
                # that attempt landed; on the first attempt it is the caller's business.
                if attempt == 1:
                    raise
                rejected = exc
            existing = self.find_topic_by_external_id(external_id)
            if existing is not None:
                logger.info(
                    "topic with external_id %s already exists (topic %d) after a failed create",
                    external_id,
                    existing.id,
                )
                return self.get_post_by_number(existing.id, 1)
            if rejected is not None:
                raise rejected

    def create_post(
        self,
        *,
        topic_id: int,
        raw: str,
        reply_to_post_number: int | None = None,
        created_at: datetime | None = None,
        as_user: str | None = None,
        skip_validations: bool = True,
    ) -> DiscoursePost:
        """Reply in a topic. Not retried after an ambiguous failure (the caller reconciles).

        Raises DiscoursePostEnqueued when the reply went to the approval queue.
        """
        body: dict[str, Any] = {"topic_id": topic_id, "raw": raw}
        if reply_to_post_number is not None:
            body["reply_to_post_number"] = reply_to_post_number
        if created_at is not None:
            body["created_at"] = _iso(created_at)
        if skip_validations:
            body["skip_validations"] = "true"
        path = "/posts.json"
        response = self._request("POST", path, json=body, as_user=as_user)
        return self._post_from_create(self._json(response, "POST", path), path)

    def update_post(
        self,
        post_id: int,
        raw: str,
        *,
        edit_reason: str | None = None,
        as_user: str | None = None,
    ) -> DiscoursePost:
        post: dict[str, Any] = {"raw": raw}
        if edit_reason is not None:
            post["edit_reason"] = edit_reason
        path = f"/posts/{post_id}.json"
        data = self._json(
            self._request("PUT", path, json={"post": post}, as_user=as_user), "PUT", path
        )
        return DiscoursePost.from_api(data.get("post", data))

    def delete_post(self, post_id: int, *, as_user: str | None = None) -> None:
        """Delete a post (staff: soft delete; its author: marked user_deleted).

        A retried delete may find the post already gone: DiscourseNotFound means "deleted".
        """
        self._request("DELETE", f"/posts/{post_id}.json", as_user=as_user)

    def recover_post(self, post_id: int) -> None:
        self._request("PUT", f"/posts/{post_id}/recover.json")

    def get_post(self, post_id: int) -> DiscoursePost:
        return DiscoursePost.from_api(self._get(f"/posts/{post_id}.json"))

    def get_post_by_number(self, topic_id: int, post_number: int) -> DiscoursePost:
        return DiscoursePost.from_api(self._get(f"/posts/by_number/{topic_id}/{post_number}.json"))

    def get_topic(self, topic_id: int) -> DiscourseTopic:
        return DiscourseTopic.from_api(self._get(f"/t/{topic_id}.json"))

    def get_topic_posts(
        self, topic_id: int, post_ids: Sequence[int], *, chunk_size: int = 50
    ) -> list[DiscoursePost]:
        """The given posts of a topic (with raw), in topic order, `chunk_size` ids per request."""
        posts: list[DiscoursePost] = []
        for start in range(0, len(post_ids), chunk_size):
            chunk = post_ids[start : start + chunk_size]
            params: list[tuple[str, Any]] = [("post_ids[]", post_id) for post_id in chunk]
            params.append(("include_raw", "true"))
            data = self._get(f"/t/{topic_id}/posts.json", params=params)
            stream = data.get("post_stream") or {}
            posts.extend(DiscoursePost.from_api(post) for post in stream.get("posts") or ())
        posts.sort(key=lambda post: post.post_number)
        return posts

    def find_topic_by_external_id(self, external_id: str) -> DiscourseTopic | None:
        """The topic created with this external_id, or None (404).

        Discourse answers 301 to `/t/{slug}/{id}.json`; the redirect is followed by hand so that
        the second hop passes the budget and the key never leaves the configured host.
        """
        path = f"/t/external_id/{external_id}.json"
        try:
            response = self._request("GET", path, redirect_ok=True)
        except DiscourseNotFound:
            return None
        if response.status_code in _REDIRECT_STATUSES:
            target = self._same_host_path(_redirect_target(response, path))
            try:
                data = self._get(target)
            except DiscourseNotFound:
                return None
        else:
            data = self._json(response, "GET", path)
        return DiscourseTopic.from_api(data)

    def _same_host_path(self, url: str) -> str:
        """A redirect target as a path on our base URL (a proxied Discourse may name itself
        by another host; the Api-Key must only ever go to the configured one)."""
        parts = urlsplit(url)
        path = parts.path
        prefix = self._base_parts.path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        return path + (f"?{parts.query}" if parts.query else "")

    def latest_posts(self, *, before: int | None = None) -> list[DiscoursePost]:
        """Up to 50 regular public posts, newest first.

        `before` is exclusive on current forums (`id < before`, lib/latest_posts_query.rb) and
        was inclusive on older ones: callers page with `before=<oldest id seen>` and drop the
        ids they already have, which loses nothing under either rule.
        """
        params = {"before": before} if before is not None else None
        data = self._get("/posts.json", params=params)
        return [DiscoursePost.from_api(post) for post in data.get("latest_posts") or ()]

    # ---- categories -------------------------------------------------------------------------

    def get_category(self, category_id: int) -> DiscourseCategory:
        return DiscourseCategory.from_api(self._get(f"/c/{category_id}/show.json")["category"])

    def list_categories(self) -> list[DiscourseCategory]:
        """Every visible category, subcategories included (flattened)."""
        data = self._get("/categories.json", params={"include_subcategories": "true"})
        found: dict[int, DiscourseCategory] = {}

        def walk(items: Any, parent_id: int | None) -> None:
            for item in items or ():
                category = DiscourseCategory.from_api(item)
                if category.parent_category_id is None and parent_id is not None:
                    category = DiscourseCategory(
                        category.id, category.name, category.slug, parent_id
                    )
                found.setdefault(category.id, category)
                walk(item.get("subcategory_list"), category.id)

        walk((data.get("category_list") or {}).get("categories"), None)
        return list(found.values())

    def create_category(
        self, name: str, *, parent_category_id: int | None = None
    ) -> DiscourseCategory:
        body: dict[str, Any] = {"name": name, "color": "0088CC", "text_color": "FFFFFF"}
        if parent_category_id is not None:
            body["parent_category_id"] = parent_category_id
        path = "/categories.json"
        data = self._json(self._request("POST", path, json=body), "POST", path)
        return DiscourseCategory.from_api(data["category"])

    # ---- users ------------------------------------------------------------------------------

    def get_user(self, username: str) -> DiscourseUser | None:
        try:
            data = self._get(f"/u/{username}.json")
        except DiscourseNotFound:
            return None
        return DiscourseUser.from_api(data["user"])

    def find_user_by_google_id(self, google_id: str) -> DiscourseUser | None:
        """The forum user who signed in with this Google account, or None.

        `GET /u/by-external/google_oauth2/{id}.json` reads the user's associated account
        (`UserAssociatedAccount.provider_uid`, for a Google login the OpenID `sub` claim). None
        when nobody signed in with it, and when the forum has Google logins turned off (404
        either way). Only admins may ask, the id being sensitive: a key acting as anyone else
        gets 403.

        Raises: DiscourseAuthError (a non-admin acting user; a bad key), and as `_request`.
        """
        path = f"/u/by-external/{GOOGLE_PROVIDER}/{quote(google_id, safe='')}.json"
        try:
            data = self._get(path)
        except DiscourseNotFound:
            return None
        return DiscourseUser.from_api(data["user"])

    def find_user_by_email(self, email: str) -> DiscourseUser | None:
        """The user with exactly this email (case-insensitive), via the admin user list."""
        data = self._get(
            "/admin/users/list/active.json",
            params={"email": email, "filter": email, "show_emails": "true"},
        )
        wanted = email.strip().lower()
        for item in data or ():
            if str(item.get("email") or "").lower() == wanted:
                return DiscourseUser.from_api(item)
        return None

    def email_of(self, username: str) -> str | None:
        """The primary email of the forum user `username` (admin only), None if not found.

        Through the admin user list, as `find_user_by_email` (`show_emails` needs an admin).
        """
        data = self._get(
            "/admin/users/list/active.json",
            params={"filter": username, "show_emails": "true"},
        )
        wanted = username.strip().lower()
        for item in data or ():
            if str(item.get("username") or "").lower() == wanted:
                return _opt_str(item.get("email"))
        return None

    def create_user(
        self,
        *,
        name: str,
        username: str,
        email: str,
        password: str,
        active: bool = True,
        approved: bool = True,
    ) -> DiscourseUser:
        """Create a user and return it as Discourse stores it.

        Discourse answers most failures with 200 `success: false`; they raise DiscourseRejected
        with the field errors (e.g. "username must be unique"). The user is read back after
        creation: a hidden "email taken" answer is a fake success that creates nobody.
        """
        body = {
            "name": name,
            "username": username,
            "email": email,
            "password": password,
            "active": active,
            "approved": approved,
        }
        path = "/users.json"
        data = self._json(self._request("POST", path, json=body), "POST", path)
        if not isinstance(data, Mapping) or not data.get("success"):
            errors = _errors_from(data) or ["user not created"]
            raise DiscourseRejected(
                f"POST {path} -> 200 success false: {'; '.join(errors)}",
                status=200,
                method="POST",
                path=path,
                body=str(data),
                errors=errors,
            )
        user = self.get_user(username)
        if user is None:
            raise DiscourseRejected(
                f"POST {path}: reported success but user {username} does not exist "
                "(email already registered with hide_email_address_taken?)",
                status=200,
                method="POST",
                path=path,
                errors=[str(data.get("message") or "user not created")],
            )
        if user.email is None:
            # /u/{username}.json hides emails; we know the one we set.
            user = DiscourseUser(
                user.id,
                user.username,
                user.name,
                email,
                user.active,
                user.admin,
                user.moderator,
                user.trust_level,
            )
        return user

    def set_trust_level(self, user_id: int, level: int) -> None:
        self._request("PUT", f"/admin/users/{user_id}/trust_level.json", json={"level": level})

    # ---- uploads ----------------------------------------------------------------------------

    def upload_file(
        self,
        filename: str,
        data: bytes | IO[bytes],
        content_type: str,
        *,
        as_user: str | None = None,
    ) -> DiscourseUpload:
        """Upload a file for a post; embed `short_url` in raw. Retried: uploads dedupe by sha1.

        `data` may be a seekable binary file: it is streamed in blocks (with its length
        declared), never read into memory whole.
        """
        form = _StreamedForm(
            # `synchronous` is not sent: Discourse 3.1+ always answers with the upload.
            # `upload_type`, not `type`: `type` is deprecated since 3.4, removal due in 3.5
            # (uploads_controller.rb#create).
            {"upload_type": "composer"},
            filename,
            io.BytesIO(data) if isinstance(data, bytes) else data,
            content_type,
        )
        response = self._request(
            "POST",
            "/uploads.json",
            data=form,
            headers={"Content-Type": form.content_type},
            as_user=as_user,
            retry_transient=True,
        )
        return DiscourseUpload.from_api(self._json(response, "POST", "/uploads.json"))

    def download_upload(
        self, short_url: str, sink: IO[bytes], *, max_bytes: int, as_user: str | None = None
    ) -> int:
        """Write the upload named by its `upload://…` short URL into `sink`; returns its size.

        `as_user`: whose view counts. Discourse checks a secure upload against the post that
        controls it, as the acting user (403 when that user may not see it): fetched as a
        post's author, a post cannot pull in a file its author could not open, as the admin
        account could.

        Streamed with a hard cap: an answer that declares a length over `max_bytes` is refused
        before its body is read, and a body that runs past it is cut off after at most one more
        block (`DiscourseTooLarge`); nothing is held in memory but one block.

        Discourse answers `/uploads/short-url/…` with the file or a redirect: to a path of its
        own, or, on a forum with external storage (S3, a CDN), to another host
        (`allow_other_host: true`). A same-host hop goes through `_request` (budget, key, the
        same acting user); a foreign one is fetched with a bare session: no `Api-Key`, no
        `Api-Username`, no cookie, outside the admin budget, because credentials go only to the
        host they belong to.

        Raises: DiscourseTooLarge, DiscourseNotFound, DiscourseAuthError (403: the acting user
        may not see it), DiscourseRejected, DiscourseUnavailable (and the rate-limit errors of
        `_request` for the forum's own hops).
        """
        path = "/uploads/short-url/" + short_url.removeprefix("upload://")
        response = self._request("GET", path, redirect_ok=True, as_user=as_user, stream=True)
        for _hop in range(_MAX_UPLOAD_REDIRECTS):
            with response:
                if response.status_code not in _REDIRECT_STATUSES:
                    return _copy_bounded(response, sink, max_bytes, path)
                target = _redirect_target(response, path)
            if not self._is_own_host(target):
                return self._download_foreign(target, path, sink, max_bytes)
            response = self._request(
                "GET",
                self._same_host_path(target),
                redirect_ok=True,
                as_user=as_user,
                stream=True,
            )
        response.close()
        raise DiscourseUnavailable(f"GET {path}: too many redirects", method="GET", path=path)

    def _is_own_host(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc.lower()) == (
            self._base_parts.scheme,
            self._base_parts.netloc.lower(),
        )

    def _download_foreign(self, url: str, path: str, sink: IO[bytes], max_bytes: int) -> int:
        """GET a file from another host (a CDN) without any of the forum's credentials."""
        host = urlsplit(url).netloc
        with requests.Session() as bare:
            bare.trust_env = self._session.trust_env
            bare.proxies.update(self._session.proxies)
            bare.verify = self._session.verify
            bare.headers["User-Agent"] = "gchat-discourse-bridge"
            try:
                # Further redirects stay credential-free: this session holds no secret at all.
                response = bare.get(url, timeout=self._timeout, stream=True)
            except requests.RequestException as exc:
                raise DiscourseUnavailable(
                    f"GET {path} via {host}: {type(exc).__name__}", method="GET", path=path
                ) from exc
            with response:
                if response.status_code >= 500:
                    raise DiscourseUnavailable(
                        f"GET {path} via {host} -> {response.status_code}",
                        status=response.status_code,
                        method="GET",
                        path=path,
                    )
                if response.status_code == 404:
                    raise DiscourseNotFound(
                        f"GET {path} via {host} -> 404", status=404, method="GET", path=path
                    )
                if response.status_code >= 300:
                    raise DiscourseRejected(
                        f"GET {path} via {host} -> {response.status_code}",
                        status=response.status_code,
                        method="GET",
                        path=path,
                    )
                return _copy_bounded(response, sink, max_bytes, path)

    # ---- chat -------------------------------------------------------------------------------

    def create_dm_channel(self, target_usernames: Sequence[str], *, as_user: str) -> int:
        """Create or find the DM channel of `as_user` with the targets; returns its id.

        Discourse reuses a 1:1 channel by itself and a group channel only with `upsert`, which is
        always sent: the call is then idempotent, so a retry after a crash or a transient error
        finds the channel instead of making a second one.
        """
        path = "/chat/api/direct-message-channels.json"
        response = self._request(
            "POST",
            path,
            json={"target_usernames": list(target_usernames), "upsert": True},
            as_user=as_user,
            retry_transient=True,
        )
        return int(self._json(response, "POST", path)["channel"]["id"])

    def send_chat_message(self, channel_id: int, message: str, *, as_user: str) -> int:
        path = f"/chat/{channel_id}.json"
        response = self._request("POST", path, json={"message": message}, as_user=as_user)
        return int(self._json(response, "POST", path)["message_id"])

    def edit_chat_message(
        self, channel_id: int, message_id: int, message: str, *, as_user: str
    ) -> None:
        self._request(
            "PUT",
            f"/chat/api/channels/{channel_id}/messages/{message_id}.json",
            json={"message": message},
            as_user=as_user,
        )

    def trash_chat_message(self, channel_id: int, message_id: int, *, as_user: str) -> None:
        self._request(
            "DELETE",
            f"/chat/api/channels/{channel_id}/messages/{message_id}.json",
            as_user=as_user,
        )

    def list_chat_messages(
        self,
        channel_id: int,
        *,
        page_size: int = 50,
        target_message_id: int | None = None,
        direction: str | None = None,
        as_user: str | None = None,
    ) -> list[DiscourseChatMessage]:
        """One page (≤50, Discourse's maximum) of a channel's messages, oldest first."""
        params: dict[str, Any] = {"page_size": min(page_size, 50)}
        if target_message_id is not None:
            params["target_message_id"] = target_message_id
        if direction is not None:
            params["direction"] = direction
        data = self._get(
            f"/chat/api/channels/{channel_id}/messages.json", params=params, as_user=as_user
        )
        return [
            DiscourseChatMessage.from_api(item, channel_id=channel_id)
            for item in data.get("messages") or ()
        ]

    # ---- webhooks ---------------------------------------------------------------------------

    def list_webhooks(self) -> list[DiscourseWebhook]:
        data = self._get("/admin/api/web_hooks.json")
        items = data.get("web_hooks", []) if isinstance(data, Mapping) else data
        return [DiscourseWebhook.from_api(item) for item in items or ()]

    def create_webhook(
        self,
        payload_url: str,
        *,
        secret: str,
        wildcard: bool = True,
        event_type_ids: Sequence[int] = (),
        category_ids: Sequence[int] = (),
        active: bool = True,
        verify_certificate: bool = True,
        content_type: int = 1,
    ) -> DiscourseWebhook:
        body = self._webhook_body(
            payload_url=payload_url,
            secret=secret,
            wildcard=wildcard,
            event_type_ids=event_type_ids,
            category_ids=category_ids,
            active=active,
            verify_certificate=verify_certificate,
            content_type=content_type,
        )
        path = "/admin/api/web_hooks.json"
        data = self._json(self._request("POST", path, json=body), "POST", path)
        return DiscourseWebhook.from_api(data["web_hook"])

    def update_webhook(
        self,
        webhook_id: int,
        *,
        payload_url: str | None = None,
        secret: str | None = None,
        wildcard: bool | None = None,
        event_type_ids: Sequence[int] | None = None,
        category_ids: Sequence[int] | None = None,
        active: bool | None = None,
        verify_certificate: bool | None = None,
        content_type: int | None = None,
    ) -> DiscourseWebhook:
        body = self._webhook_body(
            payload_url=payload_url,
            secret=secret,
            wildcard=wildcard,
            event_type_ids=event_type_ids,
            category_ids=category_ids,
            active=active,
            verify_certificate=verify_certificate,
            content_type=content_type,
        )
        path = f"/admin/api/web_hooks/{webhook_id}.json"
        data = self._json(self._request("PUT", path, json=body), "PUT", path)
        return DiscourseWebhook.from_api(data["web_hook"])

    @staticmethod
    def _webhook_body(
        *,
        payload_url: str | None,
        secret: str | None,
        wildcard: bool | None,
        event_type_ids: Sequence[int] | None,
        category_ids: Sequence[int] | None,
        active: bool | None,
        verify_certificate: bool | None,
        content_type: int | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "payload_url": payload_url,
            "secret": secret,
            "wildcard_web_hook": wildcard,
            "web_hook_event_type_ids": None if event_type_ids is None else list(event_type_ids),
            "category_ids": None if category_ids is None else list(category_ids),
            "active": active,
            "verify_certificate": verify_certificate,
            "content_type": content_type,
        }
        return {"web_hook": {key: value for key, value in fields.items() if value is not None}}


def _redirect_target(response: requests.Response, path: str) -> str:
    """The absolute URL a 3xx answer to `GET path` points at.

    Raises:
        DiscourseUnavailable: the redirect names no Location.
    """
    location = response.headers.get("Location")
    if not location:
        raise DiscourseUnavailable(
            f"GET {path} -> {response.status_code} without Location",
            status=response.status_code,
            method="GET",
            path=path,
        )
    return urljoin(response.url, location)


def _copy_bounded(response: requests.Response, sink: IO[bytes], max_bytes: int, path: str) -> int:
    """Copy a streamed body into `sink` block by block; refuse one larger than `max_bytes`.

    A declared length over the limit is refused before any of the body is read; a body that
    grows past it (no length, or a false one) is cut off after at most one more block.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DiscourseTooLarge(
            f"GET {path}: the file is {declared} bytes, over the limit of {max_bytes}",
            limit=max_bytes,
            size=int(declared),
            status=response.status_code,
            method="GET",
            path=path,
        )
    size = 0
    try:
        for block in response.iter_content(chunk_size=_FILE_BLOCK):
            size += len(block)
            if size > max_bytes:
                raise DiscourseTooLarge(
                    f"GET {path}: the file is larger than the limit of {max_bytes} bytes",
                    limit=max_bytes,
                    size=None,
                    status=response.status_code,
                    method="GET",
                    path=path,
                )
            sink.write(block)
    except requests.RequestException as exc:
        raise DiscourseUnavailable(
            f"GET {path}: the download broke off: {type(exc).__name__}", method="GET", path=path
        ) from exc
    return size


class _StreamedForm:
    """A multipart/form-data body (text fields, then one file) sent in blocks from the file.

    Its length is known (`__len__`), so requests sends a Content-Length rather than chunked
    encoding; every iteration starts from the top, so a retried attempt sends it whole again.
    """

    def __init__(
        self, fields: Mapping[str, str], filename: str, file: IO[bytes], content_type: str
    ) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
            f"{value}\r\n".encode()
            for name, value in fields.items()
        )
        self._head = (
            head
            + (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{_quoted(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
            ).encode()
        )
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._file = file
        self._start = file.tell()
        self._size = file.seek(0, io.SEEK_END) - self._start
        file.seek(self._start)

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        self._file.seek(self._start)
        left = self._size
        while left > 0:
            block = self._file.read(min(_FILE_BLOCK, left))
            if not block:
                raise DiscourseUnavailable("the file to upload ended early", method="POST")
            left -= len(block)
            yield block
        yield self._tail


def _quoted(text: str) -> str:
    """A form-data name or file name as browsers write it: quotes and line breaks escaped."""
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _UnsentError(Exception):
    """Internal: a connection failure before the request left (safe to repeat any method)."""

    def __init__(self, error: DiscourseUnavailable) -> None:
        super().__init__(str(error))
        self.error = error
