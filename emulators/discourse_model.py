"""State, site settings, errors, rate limiters and validation rules of the Discourse emulator.

Role: everything the Discourse emulator knows about the forum lives in one `ForumState` object.
Invariants:
- every read or write of `ForumState` happens under `ForumState.lock` (the HTTP server is threaded
  and the webhook worker runs in its own thread);
- ids are handed out by monotonically increasing counters and never reused, like Postgres serials;
- every time window (rate limits, memoization, unique-post window, edit window, chat silence) is
  divided by the `time_scale` setting, so tests run the real rules in less wall time;
- error strings are the English strings of Discourse's `server.en.yml`, byte for byte (including
  the U+2019 apostrophe), as recorded in `shared/reference/discourse-api.md`.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# --- site settings ----------------------------------------------------------------------------

RESERVED_USERNAMES = (
    "admin|moderator|administrator|mod|sys|system|community|info|you|name|username|user|"
    "nickname|discourse|discourseorg|discourseforum|support|all|here"
)

# Defaults of Discourse 3.1 `config/site_settings.yml` and `discourse_defaults.conf` (reference §3,
# §4), plus emulator switches (the last block). Everything is adjustable via /_emulator/settings.
DEFAULT_SETTINGS: dict[str, Any] = {
    "min_post_length": 20,
    "min_first_post_length": 20,
    "min_personal_message_post_length": 10,
    "max_post_length": 32000,
    "min_topic_title_length": 15,
    "max_topic_title_length": 255,
    "min_personal_message_title_length": 2,
    "title_min_entropy": 10,
    "body_min_entropy": 7,
    "title_max_word_length": 30,
    "allow_uppercase_posts": False,
    "allow_duplicate_topic_titles": False,
    "allow_duplicate_topic_titles_category": False,
    "unique_posts_mins": 5,
    "max_consecutive_replies": 3,
    "newuser_max_replies_per_topic": 3,
    "newuser_max_links": 2,
    "newuser_max_embedded_media": 1,
    "newuser_max_attachments": 0,
    "max_emojis_in_title": 1,
    "allow_uncategorized_topics": False,
    "title_prettify": True,
    "enable_whispers": True,
    "rate_limit_create_post": 5,
    "rate_limit_new_user_create_post": 30,
    "rate_limit_create_topic": 15,
    "rate_limit_new_user_create_topic": 120,
    "max_topics_per_day": 20,
    "max_personal_messages_per_day": 20,
    "max_edits_per_day": 30,
    "max_post_deletions_per_minute": 2,
    "max_post_deletions_per_day": 10,
    "post_edit_time_limit": 1440,
    "tl2_post_edit_time_limit": 43200,
    "delete_removed_posts_after": 24,
    "approve_post_count": 0,
    "approve_unless_trust_level": 0,
    "max_admin_api_reqs_per_minute": 60,
    "max_reqs_per_ip_per_minute": 200,
    "max_reqs_per_ip_per_10_seconds": 50,
    "min_username_length": 3,
    "max_username_length": 20,
    "reserved_usernames": RESERVED_USERNAMES,
    "min_password_length": 10,
    "allow_new_registrations": True,
    "must_approve_users": False,
    "hide_email_address_taken": False,
    "default_trust_level": 0,
    "authorized_extensions": "jpg|jpeg|png|gif|heic|heif|webp",
    "max_image_size_kb": 4096,
    "max_attachment_size_kb": 4096,
    "chat_enabled": True,
    "chat_allowed_messages_for_trust_level_0": 20,
    "chat_allowed_messages_for_other_trust_levels": 40,
    "chat_auto_silence_duration": 30,
    "chat_minimum_message_length": 1,
    "chat_maximum_message_length": 6000,
    # PostRevisor "ninja edit" window (site_settings.yml, posting section).
    "editing_grace_period": 300,
    "editing_grace_period_max_diff": 100,
    "editing_grace_period_max_diff_high_trust": 400,
    "prevent_anons_from_downloading_files": False,
    "retry_web_hook_events": False,
    "read_only": False,
    # emulator switches
    "time_scale": 1.0,
    "per_ip_limit_enabled": False,
    "webhook_shuffle": False,
    "webhook_shuffle_window_ms": 50,
    "webhook_drop_rate": 0.0,
    "webhook_request_timeout": 20.0,
    "instance_url": "",
    # Old cores filtered `/posts.json?before=N` with `id <= N`; newest core (LatestPostsQuery) uses
    # `id < N`. Default: the newest, exclusive reading.
    "posts_before_inclusive": False,
    # `POST /uploads.json` with only the deprecated `type` param (3.4 deprecation, dropped in 3.5):
    # refused (400, as when `upload_type` is missing) unless this is true; accepted uses are
    # recorded in the state's `deprecations`.
    "uploads_accept_legacy_type": False,
    # Uploads live on an external store: `/uploads/short-url/...` answers 302 to a second server
    # (another host:port) that records the headers it receives (`/_emulator/cdn/requests`).
    "external_storage_cdn": False,
    # ...and serves files without a Content-Length (chunked), as a CDN compressing on the fly
    # does: a client must count what it reads to keep to a size limit.
    "external_storage_chunked": False,
    # `SiteSetting.secure_uploads` (needs an external store, so secure uploads are always served
    # through the CDN stand-in): composer uploads are secure until linked to a post; an upload's
    # first post (`access_control_post_id`, Post#link_post_uploads) decides: secure in a private
    # message or a read-restricted category (UploadSecurity), and `/uploads/short-url/...` of a
    # secure upload answers 403 to a user who cannot see that post
    # (SecureUploadEndpointHelpers#check_secure_upload_permission).
    "secure_uploads": False,
    # `Auth::GoogleOAuth2Authenticator#enabled?` (site_settings.yml default false). Only an enabled
    # managed authenticator answers `/u/by-external/{provider}/{id}.json`; others are 404.
    "enable_google_oauth2_logins": False,
}

# Managed authenticators (`Auth::ManagedAuthenticator`, whose logins are UserAssociatedAccount
# rows) by provider name, with the site setting that enables each. Only Google is modelled.
MANAGED_AUTHENTICATORS = {"google_oauth2": "enable_google_oauth2_logins"}

GROUP_NAMES = ("admins", "moderators", "staff", "everyone") + tuple(
    f"trust_level_{n}" for n in range(5)
)

POST_TYPE_REGULAR, POST_TYPE_MODERATOR_ACTION, POST_TYPE_SMALL_ACTION, POST_TYPE_WHISPER = (
    1,
    2,
    3,
    4,
)

DELETED_BY_AUTHOR_POST = "(post deleted by author)"
DELETED_BY_AUTHOR_TOPIC = "(topic deleted by author)"

# --- error strings (server.en.yml) ---------------------------------------------------------------

MSG_NOT_FOUND = "The requested URL or resource could not be found."
MSG_INVALID_ACCESS = "You are not permitted to view the requested resource."
MSG_INVALID_CREDENTIALS = (
    "You are not permitted to view the requested resource. The API username or key is invalid."
)
MSG_NOT_LOGGED_IN = "You need to be logged in to do that."
MSG_READ_ONLY = "The site is in read only mode. Interactions are disabled."
MSG_TOO_MANY = (
    "You’ve performed this action too many times. Please wait {time_left} before trying again."
)
MSG_BY_TYPE = {
    "create_post": (
        "You’re replying a bit too quickly. Please wait {time_left} before trying again."
    ),
    "create_topic": (
        "You’re creating topics a bit too quickly. Please wait {time_left} before trying again."
    ),
    "topics_per_day": (
        "You’ve reached the maximum new topics allowed per day. "
        "You can create more new topics in {time_left}."
    ),
    "pms_per_day": (
        "You’ve reached the maximum messages allowed per day. "
        "You can create more new messages in {time_left}."
    ),
    "edit_post": (
        "You’ve reached the maximum number of edits allowed per day. "
        "You can submit more edits in {time_left}."
    ),
}
MSG_TOPIC_GONE = (
    "Something has gone wrong. "
    "Perhaps this topic was closed or deleted while you were looking at it?"
)
MSG_SUSPENDED_POST = "Suspended users are not allowed to post."
MSG_WHISPER = "Either whispers are not enabled or you do not have access to create whisper posts"
MSG_EDIT_CONFLICT = "That post was edited by another user and your changes can no longer be saved."
MSG_EDIT_TOO_OLD = "That post was created too long ago. It can no longer be edited or deleted."
MSG_DELETE_TOPIC_FAILED = (
    "There was an error deleting that topic. Please contact the site's administrator."
)
MSG_SLOW_DOWN_IP = (
    "Slow down, too many requests from this IP address.\n"
    "Please retry again in {wait} seconds.\nError code: {code}.\n"
)


class ApiError(Exception):
    """An HTTP error answer: status, a JSON body (dict) or a text body (str), extra headers."""

    def __init__(
        self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def json_error(status: int, messages: list[str], error_type: str | None = None) -> ApiError:
    body: dict[str, Any] = {"errors": messages}
    if error_type is not None:
        body["error_type"] = error_type
    return ApiError(status, body)


def not_found() -> ApiError:
    return json_error(404, [MSG_NOT_FOUND], "not_found")


def invalid_access() -> ApiError:
    return json_error(403, [MSG_INVALID_ACCESS], "invalid_access")


def invalid_credentials() -> ApiError:
    return json_error(403, [MSG_INVALID_CREDENTIALS], "invalid_access")


def not_logged_in() -> ApiError:
    return json_error(403, [MSG_NOT_LOGGED_IN], "not_logged_in")


def invalid_parameters(name: str) -> ApiError:
    return json_error(
        400, [f"You supplied invalid parameters to the request: {name}"], "invalid_parameters"
    )


def param_missing(name: str) -> ApiError:
    # Rails ParameterMissing: no error_type (reference §1.3; exact wording UNCONFIRMED).
    return json_error(400, [f"param is missing or the value is empty: {name}"])


def time_left(seconds: int) -> str:
    """`RateLimiter::LimitExceeded#time_left` wording."""
    if seconds <= 3:
        return "a few seconds"
    if seconds < 60:
        return f"{seconds} seconds"
    if seconds < 3600:
        n = seconds // 60
        return "1 minute" if n == 1 else f"{n} minutes"
    n = seconds // 3600
    return "1 hour" if n == 1 else f"{n} hours"


def rate_limited(limit_type: str, wait_seconds: int, error_code: str | None = None) -> ApiError:
    """The JSON 429 of `rescue_from RateLimiter::LimitExceeded` (reference §4.1)."""
    left = time_left(wait_seconds)
    template = MSG_BY_TYPE.get(limit_type.replace("-", "_"), MSG_TOO_MANY)
    body = {
        "errors": [template.format(time_left=left)],
        "error_type": "rate_limit",
        "extras": {"wait_seconds": wait_seconds, "time_left": left},
    }
    headers = {"Retry-After": str(wait_seconds)}
    if error_code:
        headers["Discourse-Rate-Limit-Error-Code"] = error_code
    return ApiError(429, body, headers)


# --- rate limiter --------------------------------------------------------------------------------


class SlidingWindowLimiter:
    """Discourse's `RateLimiter`: a list of timestamps per key, `max` per `secs` (sliding window).

    Not thread-safe by itself: callers hold the state lock.
    """

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def available_in(self, key: str, max_count: int, secs: float, now: float) -> float:
        """Seconds until one more action is allowed (0 when allowed now)."""
        hits = self._hits.get(key)
        if max_count <= 0:
            return secs
        if not hits:
            return 0.0
        while hits and now - hits[0] >= secs:
            hits.popleft()
        if len(hits) < max_count:
            return 0.0
        return max(0.0, secs - (now - hits[0]))

    def perform(self, key: str, max_count: int, secs: float, now: float) -> float:
        """Record one action; return 0 on success or the wait in seconds when over the limit."""
        wait = self.available_in(key, max_count, secs, now)
        if wait > 0:
            return wait
        self._hits.setdefault(key, deque()).append(now)
        return 0.0

    def rollback(self, key: str) -> None:
        hits = self._hits.get(key)
        if hits:
            hits.pop()

    def remaining(self, key: str, max_count: int, secs: float, now: float) -> int:
        hits = self._hits.get(key)
        if not hits:
            return max_count
        while hits and now - hits[0] >= secs:
            hits.popleft()
        return max(0, max_count - len(hits))

    def clear(self) -> None:
        self._hits.clear()


def wait_to_int(wait: float) -> int:
    """Whole seconds for `Retry-After` / `wait_seconds`; at least 1 so clients do wait."""
    return max(1, math.ceil(wait))


# --- entities --------------------------------------------------------------------------------
# Entities are mutable (plain, non-frozen dataclasses) on purpose: the forum edits them in place,
# always under ForumState.lock. Immutable records (deliveries, requests) are frozen elsewhere.


@dataclass(slots=True)
class User:
    id: int
    username: str
    name: str
    email: str
    admin: bool = False
    moderator: bool = False
    trust_level: int = 1
    active: bool = True
    # `User#suspended?` is `suspended_till && suspended_till > now`: a suspension ends by itself.
    suspended_till: float | None = None
    suspend_reason: str | None = None
    # `User#silenced?` likewise compares `silenced_till` with now (chat auto-silence sets it too).
    silenced_until: float = 0.0
    silence_reason: str | None = None
    staged: bool = False
    approved: bool = True
    external_id: str | None = None
    created_at: float = 0.0
    password: str = ""

    @property
    def staff(self) -> bool:
        return self.admin or self.moderator

    @property
    def username_lower(self) -> str:
        return self.username.lower()


@dataclass(slots=True)
class AssociatedAccount:
    """`UserAssociatedAccount`: a user's login through an auth provider (`provider_uid` is the
    provider's id of the person; Google's OpenID `sub`). Unique per (provider, uid) and per
    (provider, user), as the table's two unique indexes."""

    provider_name: str
    provider_uid: str
    user_id: int
    last_used: float = 0.0


@dataclass(slots=True)
class ApiKey:
    key: str
    user_id: int | None  # None: an "All Users" key
    revoked: bool = False


@dataclass(slots=True)
class Category:
    id: int
    name: str
    slug: str
    color: str = "0088CC"
    text_color: str = "FFFFFF"
    parent_category_id: int | None = None
    description: str | None = None
    position: int = 0
    created_at: float = 0.0
    # Read-restricted category: only these users (and admins) see it and post in it. Stands in
    # for group permissions (`Category.secured(guardian)` / `post_create_allowed`).
    allowed_user_ids: list[int] | None = None


@dataclass(slots=True)
class Topic:
    id: int
    title: str
    slug: str
    user_id: int
    category_id: int | None
    archetype: str = "regular"
    created_at: float = 0.0
    bumped_at: float = 0.0
    last_posted_at: float = 0.0
    updated_at: float = 0.0
    closed: bool = False
    archived: bool = False
    visible: bool = True
    deleted_at: float | None = None
    deleted_by_id: int | None = None
    external_id: str | None = None
    highest_post_number: int = 0
    allowed_user_ids: list[int] = field(default_factory=list)
    last_poster_id: int | None = None


@dataclass(slots=True)
class Post:
    id: int
    topic_id: int
    user_id: int
    post_number: int
    raw: str
    post_type: int = POST_TYPE_REGULAR
    reply_to_post_number: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 1
    deleted_at: float | None = None
    deleted_by_id: int | None = None
    user_deleted: bool = False
    hidden: bool = False
    last_editor_id: int | None = None
    # PostRevisor's `last_version_at`: the grace period counts from the last *version*, not edit.
    last_version_at: float = 0.0
    # Raw as of the last version (PostRevisor's cached `original_raw`), the base of grace diffs.
    version_raw: str | None = None
    action_code: str | None = None
    edit_reason: str | None = None
    raw_before_user_delete: str | None = None
    import_mode: bool = False


@dataclass(slots=True)
class PendingPost:
    id: int
    user_id: int
    raw: str
    created_at: float
    params: dict[str, Any]


@dataclass(slots=True)
class Upload:
    id: int
    user_id: int
    original_filename: str
    extension: str
    sha1: str
    data: bytes
    width: int | None
    height: int | None
    created_at: float
    access_control_post_id: int | None = None  # the first post that embedded it
    secure: bool = False


@dataclass(slots=True)
class ChatChannel:
    id: int
    chatable_type: str  # "Category" | "DirectMessage"
    chatable_id: int
    name: str | None
    slug: str | None
    description: str | None = None
    status: str = "open"
    threading_enabled: bool = False
    auto_join_users: bool = False
    member_ids: list[int] = field(default_factory=list)
    group: bool = False
    created_at: float = 0.0


@dataclass(slots=True)
class ChatMessage:
    id: int
    channel_id: int
    user_id: int
    message: str
    created_at: float
    updated_at: float
    in_reply_to_id: int | None = None
    thread_id: int | None = None
    deleted_at: float | None = None
    deleted_by_id: int | None = None
    revisions: int = 0


@dataclass(slots=True)
class WebHook:
    id: int
    payload_url: str
    content_type: int = 1
    secret: str = ""
    wildcard_web_hook: bool = False
    active: bool = True
    verify_certificate: bool = True
    event_type_ids: list[int] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    tag_names: list[str] = field(default_factory=list)
    last_delivery_status: int = 1  # 1 inactive, 2 failed, 3 successful, 4 disabled
    created_at: float = 0.0


# Granular event type ids (newest core). Topic/post ids 101..105 / 201..204 follow
# `WebHookEventType::TYPES` (topic_revised = 102 per the reference); chat ids are UNCONFIRMED.
EVENT_TYPE_IDS: dict[str, int] = {
    "topic_created": 101,
    "topic_revised": 102,
    "topic_edited": 103,
    "topic_destroyed": 104,
    "topic_recovered": 105,
    "post_created": 201,
    "post_edited": 202,
    "post_destroyed": 203,
    "post_recovered": 204,
    "chat_message_created": 1801,
    "chat_message_edited": 1802,
    "chat_message_trashed": 1803,
    "chat_message_restored": 1804,
}
EVENT_TYPE_GROUPS = {"topic": 1, "post": 2, "chat_message": 18}
EVENT_NAMES_BY_ID = {v: k for k, v in EVENT_TYPE_IDS.items()}


# --- text rules ------------------------------------------------------------------------------

_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_EMOJI = re.compile(r":[\w+-]+:")


def stripped_length(raw: str) -> int:
    """`StrippedLengthValidator.get_sanitized_value`: comments out, emoji and dots collapsed."""
    value = _HTML_COMMENT.sub("", raw)
    value = _EMOJI.sub("X", value)
    value = value.replace("...", "…").replace("..", "…").replace(",,,", ",")
    return len(value.strip())


def entropy(text: str) -> int:
    """`TextSentinel#entropy`: unique quoted-printable tokens (ASCII chars, else UTF-8 bytes)."""
    tokens: set[str] = set()
    for ch in text.strip():
        if 33 <= ord(ch) <= 126 and ch != "=":
            tokens.add(ch)
        else:
            tokens.update(f"{b:02X}" for b in ch.encode("utf-8"))
    return len(tokens)


def _seems_pronounceable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _seems_quiet(text: str, settings: dict[str, Any]) -> bool:
    if settings["allow_uppercase_posts"]:
        return True
    has_letter = any(ch.isalpha() for ch in text)
    has_lower = any(ch.islower() or (ch.isalpha() and not ch.isupper()) for ch in text)
    return has_lower or not has_letter


def body_quality_ok(raw: str, settings: dict[str, Any], private_message: bool) -> bool:
    """`TextSentinel.body_sentinel(raw).valid?`."""
    min_entropy = settings["body_min_entropy"]
    if private_message:
        scale = settings["min_personal_message_post_length"] / max(1, settings["min_post_length"])
        min_entropy = int(min_entropy * scale)
    elif min_entropy > settings["min_post_length"]:
        min_entropy = int(settings["min_post_length"] * 0.7)
    return (
        bool(raw.strip())
        and (min_entropy == 0 or entropy(raw) >= min_entropy)
        and _seems_pronounceable(raw)
        and _seems_quiet(raw, settings)
    )


def title_quality_error(title: str, settings: dict[str, Any]) -> str | None:
    """`QualityTitleValidator`: the first failing sentinel check's message, or None."""
    min_entropy = settings["title_min_entropy"]
    meaningful = min_entropy == 0 or entropy(title) >= min_entropy
    unpretentious = all(len(w) <= settings["title_max_word_length"] for w in title.split())
    quiet = _seems_quiet(title, settings)
    if meaningful and unpretentious and quiet and _seems_pronounceable(title):
        return None
    if not meaningful:
        return "Title seems unclear, most of the words contain the same letters over and over?"
    if not unpretentious:
        return "Title seems unclear, one or more words is very long?"
    if not quiet:
        return "Title seems unclear, did you mean to enter it in ALL CAPS?"
    return "Title seems unclear, is it a complete sentence?"


def clean_title(title: str, settings: dict[str, Any]) -> str:
    """`TextCleaner.clean_title` with `title_prettify` (reference §3.1)."""
    title = title.replace("\u200b", "")
    title = re.sub(r"\s+", " ", title).strip()
    if not settings["title_prettify"]:
        return title
    title = re.sub(r"!+", "!", title)
    title = re.sub(r"\?+", "?", title)
    letters = [c for c in title if c.isalpha()]
    if letters and not settings["allow_uppercase_posts"] and all(c.isupper() for c in letters):
        title = title.lower()
    words = title.split(" ")
    if words and words[0] and words[0] == words[0].lower() and words[0][0].isalpha():
        title = title[0].upper() + title[1:]
    title = re.sub(r"\.+$", "", title).strip()
    return title


def slugify(text: str, fallback: str = "topic") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:80].strip("-") or fallback


def count_emojis(text: str) -> int:
    return len(_EMOJI.findall(text)) + sum(1 for ch in text if ord(ch) >= 0x1F300)


def count_links(raw: str) -> int:
    return len(re.findall(r"https?://", raw))


def count_attachments(raw: str) -> int:
    return len(re.findall(r"\|attachment\]\(", raw))


def count_media(raw: str) -> int:
    return len(re.findall(r"!\[[^\]]*\]\(", raw))


def username_errors(
    username: str, settings: dict[str, Any], taken: bool
) -> tuple[list[str], bool]:
    """Username rules (reference §6.2): (messages without the attribute, reserved?)."""
    lower = username.lower()
    for pattern in str(settings["reserved_usernames"]).split("|"):
        pattern = pattern.strip().lower()
        if pattern and re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), lower):
            return [], True
    errors: list[str] = []
    if len(username) < settings["min_username_length"]:
        errors.append(f"must be at least {settings['min_username_length']} characters")
    if len(username) > settings["max_username_length"]:
        errors.append(f"must be no more than {settings['max_username_length']} characters")
    if username and not re.fullmatch(r"[A-Za-z0-9_.-]+", username):
        errors.append("must only include numbers, letters, dashes, dots, and underscores")
    elif username:
        if not re.match(r"[A-Za-z0-9_]", username[0]):
            errors.append("must begin with a letter, a number or an underscore")
        if not re.match(r"[A-Za-z0-9]", username[-1]):
            errors.append("must end with a letter or a number")
        if re.search(r"[-_.]{2,}", username):
            errors.append("must not contain a sequence of 2 or more special chars (.-_)")
        if re.search(
            r"\.(json|js|css|htm|html|xml|jpg|jpeg|png|gif|bmp|ico|tif|tiff|woff)$", lower
        ):
            errors.append("must not end with a confusing suffix like .json or .png etc.")
    if taken or lower in GROUP_NAMES:
        errors.append("must be unique")
    return errors, False


def base62(data: bytes) -> str:
    """Discourse `Base62.encode` of an integer (used for `upload://` short urls)."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = alphabet[r] + out
    return out or "0"


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    whole = time.gmtime(ts)
    millis = int(round((ts - math.floor(ts)) * 1000)) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", whole) + f".{millis:03d}Z"


# --- the state container --------------------------------------------------------------------


class ForumState:
    """All emulator state behind one re-entrant lock; `reset()` restores the initial forum."""

    def __init__(self, api_key: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.RLock()
        self.default_api_key = api_key
        self._clock = clock
        # Seconds added to the clock by `POST /_emulator/clock` (tests move time without sleeping).
        self.clock_offset = 0.0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.settings: dict[str, Any] = dict(DEFAULT_SETTINGS)
            self.users: dict[int, User] = {}
            self.associated_accounts: list[AssociatedAccount] = []
            self.api_keys: dict[str, ApiKey] = {}
            self.categories: dict[int, Category] = {}
            self.topics: dict[int, Topic] = {}
            self.posts: dict[int, Post] = {}
            self.pending_posts: dict[int, PendingPost] = {}
            self.uploads: dict[int, Upload] = {}
            self.chat_channels: dict[int, ChatChannel] = {}
            self.chat_messages: dict[int, ChatMessage] = {}
            self.webhooks: dict[int, WebHook] = {}
            self.limiter = SlidingWindowLimiter()
            self.memo: dict[str, tuple[float, int, Any]] = {}
            self.unique_posts: dict[str, float] = {}
            self._counters: dict[str, int] = {}
            # `Discourse.deprecate` calls seen (e.g. the legacy upload `type` param).
            self.deprecations: list[dict[str, Any]] = []
            self.clock_offset = 0.0
            now = self.now()
            self.users[-1] = User(
                id=-1,
                username="system",
                name="system",
                email="no_email",
                admin=True,
                moderator=True,
                trust_level=4,
                created_at=now,
            )
            self.categories[1] = Category(
                id=1, name="Uncategorized", slug="uncategorized", color="0088CC", created_at=now
            )
            self._counters["category"] = 1
            if self.default_api_key:
                self.api_keys[self.default_api_key] = ApiKey(self.default_api_key, None)

    def now(self) -> float:
        return self._clock() + self.clock_offset

    def is_suspended(self, user: User) -> bool:
        return user.suspended_till is not None and user.suspended_till > self.now()

    def is_silenced(self, user: User) -> bool:
        return user.silenced_until > self.now()

    def can_see_category(self, category_id: int | None, viewer: User | None) -> bool:
        """`Category.secured(guardian)`: admins see all; restricted ones need membership."""
        category = self.categories.get(category_id) if category_id is not None else None
        if category is None or category.allowed_user_ids is None:
            return True
        return bool(viewer and (viewer.admin or viewer.id in category.allowed_user_ids))

    def next_id(self, kind: str) -> int:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return self._counters[kind]

    def scaled(self, seconds: float) -> float:
        """A real Discourse time window in emulator wall seconds."""
        return seconds / max(float(self.settings["time_scale"]), 1e-9)

    # lookups

    def user_by_username(self, username: str) -> User | None:
        lower = username.lower()
        for user in self.users.values():
            if user.username_lower == lower:
                return user
        return None

    def user_by_email(self, email: str) -> User | None:
        lower = email.lower()
        for user in self.users.values():
            if user.email.lower() == lower:
                return user
        return None

    def associated_account(
        self, provider_name: str, *, provider_uid: str | None = None, user_id: int | None = None
    ) -> AssociatedAccount | None:
        """A provider's `UserAssociatedAccount` by uid or by user (each unique per provider)."""
        for account in self.associated_accounts:
            if account.provider_name != provider_name:
                continue
            if provider_uid is not None and account.provider_uid == provider_uid:
                return account
            if user_id is not None and account.user_id == user_id:
                return account
        return None

    def authenticator_enabled(self, provider_name: str) -> bool:
        """`Discourse.enabled_authenticators` holds a managed authenticator of this name."""
        setting = MANAGED_AUTHENTICATORS.get(provider_name)
        return setting is not None and bool(self.settings.get(setting))

    def topic_posts(self, topic_id: int, include_deleted: bool = False) -> list[Post]:
        posts = [p for p in self.posts.values() if p.topic_id == topic_id]
        if not include_deleted:
            posts = [p for p in posts if p.deleted_at is None]
        return sorted(posts, key=lambda p: p.post_number)

    def post_by_number(self, topic_id: int, post_number: int) -> Post | None:
        for post in self.posts.values():
            if post.topic_id == topic_id and post.post_number == post_number:
                return post
        return None

    def first_post(self, topic_id: int) -> Post | None:
        return self.post_by_number(topic_id, 1)

    def is_new_user(self, user: User) -> bool:
        """`User#new_user?`: TL0, or younger than a day and below TL2."""
        if user.trust_level == 0:
            return True
        young = self.now() - user.created_at < self.scaled(86400)
        return young and user.trust_level < 2 and not user.staff

    def user_post_count(self, user_id: int) -> int:
        return sum(1 for p in self.posts.values() if p.user_id == user_id and p.deleted_at is None)
