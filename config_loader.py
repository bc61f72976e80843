"""Load ``config.yaml`` into frozen dataclasses, reporting every problem at once.

Role: the only module that reads YAML or ``os.environ``. ``load_config`` parses the file once with
``yaml.safe_load``, checks it completely (unknown keys, missing keys, types, ranges, URLs, the
mappings) and either returns a :class:`Config` or raises one :class:`ConfigError` whose
``problems`` list names every problem with its key path and a fix.

Invariants of a returned ``Config``:
- every URL is ``http(s)://host[...]`` without a trailing slash;
- every file path is absolute (relative paths resolve against the config file's directory, not the
  working directory, so ``python main.py --config /etc/x/config.yaml`` works from anywhere);
- secrets from ``DISCOURSE_API_KEY`` / ``DISCOURSE_WEBHOOK_SECRET`` replace the file's values;
- space ids are unique and of the form ``spaces/...``; no mapping has both category keys.

A missing ``webhook_secret`` is deliberately *not* an error here: only the webhook listener needs
it, and it refuses to start without one unless ``allow_unsigned_webhooks`` is true.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DiscourseConfig",
    "GoogleConfig",
    "InitialHistory",
    "SpaceMapping",
    "SyncConfig",
    "load_config",
    "parse_duration",
]

ENV_API_KEY = "DISCOURSE_API_KEY"
ENV_WEBHOOK_SECRET = "DISCOURSE_WEBHOOK_SECRET"

# Discourse only signs webhook deliveries when the secret has at least 12 characters; a shorter
# one would silently produce unsigned deliveries that the listener then rejects.
MIN_WEBHOOK_SECRET_LENGTH = 12
DEFAULT_POLL_INTERVAL_SECONDS = 15 * 60.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SPACE_ID_RE = re.compile(r"^spaces/[A-Za-z0-9_-]+$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9-]{2,63}$"
)


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason ("key.path: what; fix")."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        lines = [f"invalid configuration {self.path} ({len(self.problems)} problem(s)):"]
        lines.extend(f"  - {problem}" for problem in self.problems)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class DiscourseConfig:
    url: str  # base URL without a trailing slash
    # Secrets are left out of repr() so that a logged config or a traceback never shows them.
    api_key: str = field(repr=False)
    api_username: str = "system"
    requests_per_minute: float = 60
    webhook_secret: str | None = field(default=None, repr=False)
    allow_unsigned_webhooks: bool = False
    timeout_seconds: float = 30
    rate_window_seconds: float = 60  # Discourse's limiter window; shorter only for emulators


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Real-time Chat → Discourse: Workspace Events subscriptions delivered to a Pub/Sub topic."""

    pubsub_topic: str  # projects/{project}/topics/{topic}
    pubsub_subscription: str  # projects/{project}/subscriptions/{subscription} (pull)
    workspace_events_endpoint: str | None = None  # another base URL (an emulator), or None
    pubsub_endpoint: str | None = None

    @property
    def project(self) -> str:
        return self.pubsub_topic.split("/")[1]


@dataclass(frozen=True, slots=True)
class DelegationConfig:
    """Forum posts by people of `domains` are written in Chat as those people (a service account
    with domain-wide delegation acting as them); everyone else's as the operator's account."""

    service_account_file: Path
    domains: tuple[str, ...]
    # The key file's contents, checked at load (never in repr: it holds a private key).
    service_account_info: Mapping[str, Any] = field(repr=False, compare=False)

    def covers(self, email: str | None) -> bool:
        """True if `email` is in one of the delegated Workspace domains."""
        if not email or "@" not in email:
            return False
        return email.rsplit("@", 1)[1].lower() in self.domains


@dataclass(frozen=True, slots=True)
class GoogleConfig:
    credentials_file: Path
    token_file: Path
    api_endpoint: str | None = None  # base URL without a trailing slash, or None for Google
    events: EventsConfig | None = None  # None: Chat → Discourse by polling only
    delegation: DelegationConfig | None = None  # None: every forum post as the operator


@dataclass(frozen=True, slots=True)
class InitialHistory:
    """How much of a space's history the first poll mirrors."""

    mode: Literal["all", "none", "since"]
    duration: timedelta | None = None  # set only for mode "since"


@dataclass(frozen=True, slots=True)
class SyncConfig:
    poll_interval_seconds: float
    database: Path
    initial_history: InitialHistory
    log_file: Path | None = None
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 5000
    # The listener's URL as Discourse reaches it (a tunnel or proxy); None: http://host:port/...
    public_webhook_url: str | None = None
    log_level: str = "INFO"
    user_email_domain: str = "users.noreply.invalid"
    max_attempts: int = 8
    create_users: bool = True
    new_user_trust_level: int = 1
    # Chat edits and deletions are seen by re-reading this far back in spaces active within it.
    edit_window: timedelta = timedelta(hours=1)
    # ...at most this often (one spaces.spaceEvents.list request per scan; 0: every cycle). The
    # default is below any sensible poll interval, so an edit reaches the forum within two.
    edit_scan_interval_seconds: float = 5
    long_messages: str = "split"  # "split" into linked parts, or "truncate" with a link
    # The line naming a Discourse author in Chat, with {name} and {username}; None: built in.
    attribution_format: str | None = None
    max_attachment_bytes: int = 4 * 1024 * 1024  # Discourse's default max_attachment_size_kb
    # A handled webhook event's body is wiped this long after it was handled; its row (the
    # dedupe key, no words) is deleted after four times that, as is a dead letter never retried.
    inbox_retention: timedelta = timedelta(days=7)
    # A message whose forum author is refused (suspended, deactivated, silenced): "park" it
    # (`status` lists it, `retry` resends it) or "post_as_bridge" (the API user, attributed).
    refused_authors: str = "park"


@dataclass(frozen=True, slots=True)
class SpaceMapping:
    """One mapped space. DM / group-chat mappings have neither category key (issue 6)."""

    google_space_id: str
    discourse_category_id: int | None = None
    discourse_parent_category_id: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    discourse: DiscourseConfig
    google: GoogleConfig
    sync: SyncConfig
    mappings: tuple[SpaceMapping, ...]
    path: Path  # the config file that was loaded (absolute)


def parse_duration(text: str) -> timedelta | None:
    """Parse "90m", "12h", "30d" or "2w" into a positive timedelta; None when not of that form."""
    match = _DURATION_RE.match(text)
    if match is None:
        return None
    amount = int(match.group(1))
    if amount <= 0:
        return None
    return timedelta(**{_DURATION_UNITS[match.group(2)]: amount})


# --------------------------------------------------------------------------------------------
# Checking helpers. Each returns the parsed value or a fallback, appending to ``problems``.
# --------------------------------------------------------------------------------------------

_MISSING: Any = object()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Checker:
    """Collects problems while reading one section (a YAML mapping) of the config."""

    def __init__(self, problems: list[str], section: str, data: Mapping[str, Any]) -> None:
        self.problems = problems
        self.section = section
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def add(self, name: str, message: str) -> None:
        self.problems.append(f"{self.key(name)}: {message}")

    def check_unknown(self, known: tuple[str, ...]) -> None:
        for name in self.data:
            if name in known:
                continue
            hint = _suggest(str(name), known)
            self.problems.append(f"{self.key(str(name))}: unknown key; {hint}")

    def get(self, name: str, default: Any = _MISSING, *, how_to_fix: str = "") -> Any:
        """The raw value, or ``default`` when absent; a missing required key is reported."""
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            self.add(name, f"required key is missing; {how_to_fix or 'add it'}")
        return default

    def string(self, name: str, default: Any = _MISSING, *, how_to_fix: str = "") -> Any:
        if name not in self.data:
            return self.get(name, default, how_to_fix=how_to_fix)
        value = self.data[name]
        if not isinstance(value, str):
            self.add(name, f"must be a string, got {_type_name(value)}; quote the value")
            return _MISSING
        if not value.strip():
            self.add(name, "must not be empty; give a value or remove the key")
            return _MISSING
        return value

    def boolean(self, name: str, default: bool) -> Any:
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, bool):
            self.add(
                name,
                f"must be true or false, got {_type_name(value)} {value!r}; write true or false",
            )
            return _MISSING
        return value

    def integer(self, name: str, default: Any, *, low: int, high: int | None = None) -> Any:
        if name not in self.data:
            return self.get(name, default)
        value = self.data[name]
        # bool is a subclass of int in Python; `port: yes` must not become port 1.
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(
                name,
                f"must be a whole number, got {_type_name(value)} {value!r}; write digits only",
            )
            return _MISSING
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.add(name, f"{value} is out of range; use a whole number {span}")
            return _MISSING
        return value

    def number(self, name: str, default: Any, *, unit: str, allow_zero: bool = False) -> Any:
        """A strictly positive (or, with `allow_zero`, non-negative), finite number, as float."""
        if name not in self.data:
            return self.get(name, default)
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(
                name,
                f"must be a number of {unit}, got {_type_name(value)} {value!r}; "
                "write a number without quotes",
            )
            return _MISSING
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            lowest = "0 or more" if allow_zero else "a value above 0"
            self.add(name, f"must be a positive number of {unit}, got {value!r}; use {lowest}")
            return _MISSING
        return float(value)

    def url(
        self, name: str, default: Any = _MISSING, *, allow_null: bool = False, how_to_fix: str = ""
    ) -> Any:
        if name not in self.data:
            return self.get(name, default, how_to_fix=how_to_fix)
        value = self.data[name]
        if value is None and allow_null:
            return None
        if not isinstance(value, str):
            self.add(name, f"must be a URL string, got {_type_name(value)}; quote the URL")
            return _MISSING
        problem = _url_problem(value)
        if problem:
            self.add(name, f'{problem}; write it like "https://forum.example.com"')
            return _MISSING
        return value.rstrip("/")

    def path(
        self,
        name: str,
        base: Path,
        default: Any = _MISSING,
        *,
        allow_null: bool = False,
        how_to_fix: str = "",
    ) -> Any:
        if name not in self.data:
            return self.get(name, default, how_to_fix=how_to_fix)
        value = self.data[name]
        if value is None and allow_null:
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(
                name,
                f"must be a file path string, got {_type_name(value)} {value!r}; "
                "give a path in quotes",
            )
            return _MISSING
        return _resolve(base, value)


def _suggest(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    # A shortened key ("sync" for "sync_settings") is too different for difflib's ratio.
    close = close or [key for key in known if key.startswith(name) or name.startswith(key)]
    if close:
        return f"did you mean {close[0]}?"
    return "remove it (known keys: " + ", ".join(known) + ")"


def _url_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"{value!r} is not a valid URL ({exc})"
    if value != value.strip():
        return f"{value!r} has surrounding spaces"
    if parts.scheme not in ("http", "https"):
        return f"{value!r} must start with http:// or https://"
    if not parts.hostname:
        return f"{value!r} has no host name"
    if parts.query or parts.fragment:
        return f"{value!r} must not have a query or fragment"
    return None


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _section(problems: list[str], raw: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """A required top-level section, or None (reported) when it is missing or not a mapping."""
    if name not in raw:
        problems.append(f"{name}: required section is missing; add a `{name}:` mapping")
        return None
    value = raw[name]
    if not isinstance(value, dict):
        problems.append(
            f"{name}: must be a mapping of keys, got {_type_name(value)}; indent its keys under it"
        )
        return None
    return value


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_DISCOURSE_KEYS = (
    "url",
    "api_key",
    "api_username",
    "requests_per_minute",
    "rate_window_seconds",
    "webhook_secret",
    "allow_unsigned_webhooks",
    "timeout_seconds",
)
_GOOGLE_KEYS = ("credentials_file", "token_file", "api_endpoint", "events", "delegation")
_DELEGATION_KEYS = ("service_account_file", "domains")
_SERVICE_ACCOUNT_FIELDS = ("type", "client_email", "private_key", "private_key_id", "token_uri")
_EVENTS_KEYS = (
    "pubsub_topic",
    "pubsub_subscription",
    "workspace_events_endpoint",
    "pubsub_endpoint",
)
# Pub/Sub resource names: a project id, then a topic or subscription id of 3 to 255 characters
# that starts with a letter (Pub/Sub's resource-name rules; "goog" prefixes are Google's own).
_PUBSUB_NAME = (
    r"projects/[a-z][a-z0-9-]{{4,28}}[a-z0-9]/{kind}/(?!goog)[A-Za-z][A-Za-z0-9._~+%-]{{2,254}}"
)
REFUSED_AUTHOR_ACTIONS = ("park", "post_as_bridge")
MAX_RETENTION_DAYS = 3650
_SYNC_KEYS = (
    "poll_interval_minutes",
    "poll_interval_seconds",
    "webhook_host",
    "webhook_port",
    "public_webhook_url",
    "database",
    "log_file",
    "log_level",
    "initial_history",
    "user_email_domain",
    "max_attempts",
    "create_users",
    "new_user_trust_level",
    "edit_window",
    "edit_scan_interval_seconds",
    "long_messages",
    "attribution_format",
    "max_attachment_mb",
    "refused_authors",
    "inbox_retention_days",
)
_MAPPING_KEYS = ("google_space_id", "discourse_category_id", "discourse_parent_category_id")
_TOP_KEYS = ("discourse", "google", "sync_settings", "mappings")


def _env_secret(env: Mapping[str, str], name: str) -> str | None:
    # An empty variable (as `docker run -e NAME=` produces) means "not set", not "empty secret".
    value = env.get(name)
    return value if value else None


def _discourse(problems: list[str], data: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    c = _Checker(problems, "discourse", data)
    c.check_unknown(_DISCOURSE_KEYS)
    url = c.url("url", how_to_fix='add the forum\'s base URL, e.g. "https://forum.example.com"')
    env_key = _env_secret(env, ENV_API_KEY)
    if env_key is not None:
        api_key = env_key
        if "api_key" in data:
            c.string("api_key")  # still type-check the file's value, then ignore it
    else:
        api_key = c.string(
            "api_key",
            how_to_fix=f"add the all-users API key of an admin, or set {ENV_API_KEY}",
        )
    api_username = c.string("api_username", "system")
    rpm = c.number("requests_per_minute", 60.0, unit="requests a minute")
    timeout = c.number("timeout_seconds", 30.0, unit="seconds")
    window = c.number("rate_window_seconds", 60.0, unit="seconds")
    allow_unsigned = c.boolean("allow_unsigned_webhooks", False)

    env_secret = _env_secret(env, ENV_WEBHOOK_SECRET)
    if env_secret is not None:
        secret: Any = env_secret
        where = f"${ENV_WEBHOOK_SECRET}"
        if data.get("webhook_secret") is not None:
            c.string("webhook_secret")  # still type-check the file's value, then ignore it
    else:
        where = "discourse.webhook_secret"
        # `webhook_secret: null` is the same as leaving the key out.
        secret = None if data.get("webhook_secret") is None else c.string("webhook_secret")
    if isinstance(secret, str) and len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        # Report under the key path even when the value came from the environment.
        c.add(
            "webhook_secret",
            f"the secret (from {where}) has {len(secret)} characters; Discourse signs "
            f"deliveries only with {MIN_WEBHOOK_SECRET_LENGTH} or more, use a longer one",
        )
    if _MISSING in (url, api_key, api_username, rpm, timeout, window, secret, allow_unsigned):
        return None
    return DiscourseConfig(
        url=url,
        api_key=api_key,
        api_username=api_username,
        requests_per_minute=rpm,
        webhook_secret=secret,
        allow_unsigned_webhooks=allow_unsigned,
        timeout_seconds=timeout,
        rate_window_seconds=window,
    )


def _google(problems: list[str], data: Mapping[str, Any], base: Path) -> Any:
    c = _Checker(problems, "google", data)
    c.check_unknown(_GOOGLE_KEYS)
    credentials = c.path(
        "credentials_file",
        base,
        how_to_fix='add the OAuth client file from Google Cloud, e.g. "credentials.json"',
    )
    token = c.path(
        "token_file",
        base,
        how_to_fix='add where `python main.py auth` keeps the token, e.g. "token.json"',
    )
    endpoint = c.url("api_endpoint", None, allow_null=True)
    events = _events(problems, data.get("events"))
    delegation = _delegation(problems, data.get("delegation"), base)
    if _MISSING in (credentials, token, endpoint, events, delegation):
        return None
    return GoogleConfig(
        credentials_file=credentials,
        token_file=token,
        api_endpoint=endpoint,
        events=events,
        delegation=delegation,
    )


def _delegation(problems: list[str], data: object, base: Path) -> Any:
    """`google.delegation`: absent or null: every forum post goes out as the operator."""
    if data is None:
        return None
    if not isinstance(data, dict):
        problems.append(
            f"google.delegation: must be a mapping of keys or null, got {_type_name(data)}; "
            "indent service_account_file and domains under it, or remove it"
        )
        return _MISSING
    c = _Checker(problems, "google.delegation", data)
    c.check_unknown(_DELEGATION_KEYS)
    path = c.path(
        "service_account_file",
        base,
        how_to_fix='add the key file of the service account, e.g. "service-account.json"',
    )
    info = _service_account(c, path) if isinstance(path, Path) else _MISSING
    domains = c.get("domains", how_to_fix='add the Workspace domains, e.g. ["example.com"]')
    if domains is not _MISSING and (
        not isinstance(domains, list)
        or not domains
        or not all(
            isinstance(d, str) and re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", d)
            for d in domains
        )
    ):
        c.add("domains", 'must be a list of domain names; write it like ["example.com"]')
        domains = _MISSING
    if _MISSING in (path, info, domains):
        return _MISSING
    return DelegationConfig(
        service_account_file=path,
        domains=tuple(d.lower() for d in domains),
        service_account_info=info,
    )


def _service_account(c: _Checker, path: Path) -> Any:
    """The key file checked like the token file: there, private, a service-account key."""
    key = "service_account_file"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        c.add(key, f"{path} does not exist; download a JSON key of the service account there")
        return _MISSING
    except OSError as exc:
        c.add(key, f"{path} cannot be read ({exc.strerror}); check the path and permissions")
        return _MISSING
    if mode & 0o077:
        c.add(
            key, f"{path} can be read by others (mode {mode & 0o777:04o}); run: chmod 600 {path}"
        )
        return _MISSING
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        # The content is a private key: never quoted in an error.
        c.add(key, f"{path} is not a JSON key file; download the service account's key again")
        return _MISSING
    missing = [f for f in _SERVICE_ACCOUNT_FIELDS if not (isinstance(info, dict) and info.get(f))]
    if missing or info.get("type") != "service_account":
        what = ", ".join(missing) if missing else "type service_account"
        c.add(key, f"{path} is not a service-account key (lacks {what}); create a JSON key")
        return _MISSING
    return info


def _events(problems: list[str], data: object) -> Any:
    """`google.events`: absent or null turns events off (poll only)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        problems.append(
            f"google.events: must be a mapping of keys or null, got {_type_name(data)}; "
            "indent pubsub_topic and pubsub_subscription under it, or remove it to poll only"
        )
        return _MISSING
    c = _Checker(problems, "google.events", data)
    c.check_unknown(_EVENTS_KEYS)
    names = {}
    for key, kind, example in (
        ("pubsub_topic", "topics", "projects/my-project/topics/gchat-discourse"),
        (
            "pubsub_subscription",
            "subscriptions",
            "projects/my-project/subscriptions/gchat-discourse",
        ),
    ):
        value = c.string(key, how_to_fix=f'add it, e.g. "{example}"')
        if isinstance(value, str) and not re.fullmatch(_PUBSUB_NAME.format(kind=kind), value):
            c.add(key, f'{value!r} is not a Pub/Sub {kind[:-1]} name; write it like "{example}"')
            value = _MISSING
        names[key] = value
    topic, subscription = names["pubsub_topic"], names["pubsub_subscription"]
    if (
        isinstance(topic, str)
        and isinstance(subscription, str)
        and topic.split("/")[1] != subscription.split("/")[1]
    ):
        c.add(
            "pubsub_subscription",
            f"is in project {subscription.split('/')[1]!r} but the topic is in "
            f"{topic.split('/')[1]!r}; put both in the project of the Chat app",
        )
        subscription = _MISSING
    workspace = c.url("workspace_events_endpoint", None, allow_null=True)
    pubsub = c.url("pubsub_endpoint", None, allow_null=True)
    if _MISSING in (topic, subscription, workspace, pubsub):
        return _MISSING
    return EventsConfig(
        pubsub_topic=topic,
        pubsub_subscription=subscription,
        workspace_events_endpoint=workspace,
        pubsub_endpoint=pubsub,
    )


def _initial_history(c: _Checker) -> Any:
    value = c.get("initial_history", "all")
    if value in ("all", "none"):
        return InitialHistory(mode=value)
    duration = parse_duration(value) if isinstance(value, str) else None
    if duration is None:
        c.add(
            "initial_history",
            f'{value!r} is not understood; use "all", "none" or a positive duration such as '
            '"90m", "12h", "30d" or "2w"',
        )
        return _MISSING
    return InitialHistory(mode="since", duration=duration)


def _sync(problems: list[str], data: Mapping[str, Any], base: Path) -> Any:
    c = _Checker(problems, "sync_settings", data)
    c.check_unknown(_SYNC_KEYS)
    minutes = c.number("poll_interval_minutes", None, unit="minutes")
    seconds = c.number("poll_interval_seconds", None, unit="seconds")
    interval: Any
    if "poll_interval_minutes" in data and "poll_interval_seconds" in data:
        c.add(
            "poll_interval_seconds",
            "both poll_interval_minutes and poll_interval_seconds are set; keep only one",
        )
        interval = _MISSING
    elif minutes is _MISSING or seconds is _MISSING:
        interval = _MISSING
    elif minutes is not None:
        interval = minutes * 60.0
    elif seconds is not None:
        interval = seconds
    else:
        interval = DEFAULT_POLL_INTERVAL_SECONDS

    host = c.string("webhook_host", "127.0.0.1")
    port = c.integer("webhook_port", 5000, low=1, high=65535)
    public_url = c.url("public_webhook_url", None, allow_null=True)
    database = c.path(
        "database", base, how_to_fix='add the SQLite state file, e.g. "sync_db.sqlite"'
    )
    log_file = c.path("log_file", base, None, allow_null=True)
    level = c.get("log_level", "INFO")
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        c.add("log_level", f"{level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        level = _MISSING
    else:
        level = level.upper()
    history = _initial_history(c)
    domain = c.string("user_email_domain", "users.noreply.invalid")
    if isinstance(domain, str) and not _DOMAIN_RE.match(domain):
        c.add("user_email_domain", f'{domain!r} is not a domain name; use e.g. "example.org"')
        domain = _MISSING
    max_attempts = c.integer("max_attempts", 8, low=1)
    create_users = c.boolean("create_users", True)
    # Discourse trust levels are 0 (new) to 4 (leader).
    trust = c.integer("new_user_trust_level", 1, low=0, high=4)
    edit_window = _edit_window(c)
    edit_scan = c.number("edit_scan_interval_seconds", 5.0, unit="seconds", allow_zero=True)
    long_messages = c.get("long_messages", "split")
    if long_messages not in ("split", "truncate"):
        c.add("long_messages", f'{long_messages!r} is not understood; use "split" or "truncate"')
        long_messages = _MISSING
    attachment_mb = c.number("max_attachment_mb", 4.0, unit="megabytes")
    retention_days = c.number("inbox_retention_days", 7.0, unit="days")
    if isinstance(retention_days, float) and retention_days > MAX_RETENTION_DAYS:
        c.add(
            "inbox_retention_days",
            f"{retention_days:g} days is too long; use at most {MAX_RETENTION_DAYS} (ten years)",
        )
        retention_days = _MISSING
    refused = c.get("refused_authors", "park")
    if refused not in REFUSED_AUTHOR_ACTIONS:
        c.add(
            "refused_authors",
            f'{refused!r} is not understood; use "park" or "post_as_bridge"',
        )
        refused = _MISSING
    attribution = _attribution_format(c)
    values: tuple[Any, ...] = (interval, host, port, database, log_file, level, history, domain)
    values = (*values, max_attempts, public_url)
    values = (*values, create_users, trust, edit_window, edit_scan, long_messages, attachment_mb)
    values = (*values, attribution, refused, retention_days)
    if _MISSING in values:
        return None
    return SyncConfig(
        poll_interval_seconds=interval,
        webhook_host=host,
        webhook_port=port,
        public_webhook_url=public_url,
        database=database,
        log_file=log_file,
        log_level=level,
        initial_history=history,
        user_email_domain=domain,
        max_attempts=max_attempts,
        create_users=create_users,
        new_user_trust_level=trust,
        edit_window=edit_window,
        edit_scan_interval_seconds=edit_scan,
        long_messages=long_messages,
        attribution_format=attribution,
        max_attachment_bytes=int(attachment_mb * 1024 * 1024),
        refused_authors=refused,
        inbox_retention=timedelta(days=retention_days),
    )


def _attribution_format(c: _Checker) -> Any:
    value = c.get("attribution_format", None)
    if value is None:
        return None
    if not isinstance(value, str):
        c.add("attribution_format", f"expected text, got {_type_name(value)}")
        return _MISSING
    try:
        value.format(name="Ada Lovelace", username="ada")
    except (KeyError, IndexError, ValueError) as exc:
        c.add(
            "attribution_format",
            f"{value!r} cannot be filled in ({exc!r}); use only {{name}} and {{username}}, "
            'e.g. "*{name}* (@{username}) on Discourse:"',
        )
        return _MISSING
    return value


def _edit_window(c: _Checker) -> Any:
    value = c.get("edit_window", "1h")
    if value == "off":
        return timedelta(0)  # Chat edits and deletions are not looked for
    duration = parse_duration(value) if isinstance(value, str) else None
    if duration is None:
        c.add("edit_window", f'{value!r} is not understood; use a duration such as "30m" or "2h"')
        return _MISSING
    return duration


def _mappings(problems: list[str], raw: Mapping[str, Any]) -> Any:
    if "mappings" not in raw:
        problems.append(
            "mappings: required key is missing; add a list of spaces to bridge "
            "(`mappings: []` to start with none)"
        )
        return None
    value = raw["mappings"]
    if value is None:
        value = []
    if not isinstance(value, list):
        problems.append(f"mappings: must be a list, got {_type_name(value)}; start items with -")
        return None
    result: list[SpaceMapping] = []
    first_index_of_space: dict[str, int] = {}
    first_index_of_category: dict[int, int] = {}
    ok = True
    for index, item in enumerate(value):
        section = f"mappings[{index}]"
        if not isinstance(item, dict):
            problems.append(
                f"{section}: must be a mapping with google_space_id, got {_type_name(item)}; "
                'write it as `- google_space_id: "spaces/..."`'
            )
            ok = False
            continue
        c = _Checker(problems, section, item)
        c.check_unknown(_MAPPING_KEYS)
        space = c.string("google_space_id", how_to_fix='add the space id, e.g. "spaces/AAAA..."')
        if isinstance(space, str) and not _SPACE_ID_RE.match(space):
            c.add(
                "google_space_id",
                f'{space!r} is not a space id; it looks like "spaces/AAAAxxxx" '
                "(`python main.py spaces` lists them)",
            )
            space = _MISSING
        category = c.integer("discourse_category_id", None, low=1)
        parent = c.integer("discourse_parent_category_id", None, low=1)
        if "discourse_category_id" in item and "discourse_parent_category_id" in item:
            c.add(
                "discourse_category_id",
                "both discourse_category_id and discourse_parent_category_id are set; keep "
                "discourse_category_id to post into that category, or "
                "discourse_parent_category_id to create a subcategory under it",
            )
            ok = False
        if isinstance(space, str):
            if space in first_index_of_space:
                c.add(
                    "google_space_id",
                    f"{space} is already mapped by mappings[{first_index_of_space[space]}]; "
                    "map each space once",
                )
                ok = False
            else:
                first_index_of_space[space] = index
        # Two spaces posting into one category would make Discourse -> Chat ambiguous: a new
        # topic there could belong to either space.
        if isinstance(category, int):
            if category in first_index_of_category:
                c.add(
                    "discourse_category_id",
                    f"category {category} is already used by "
                    f"mappings[{first_index_of_category[category]}]; give each space its own "
                    "category (or use discourse_parent_category_id)",
                )
                ok = False
            else:
                first_index_of_category[category] = index
        if _MISSING in (space, category, parent):
            ok = False
            continue
        result.append(
            SpaceMapping(
                google_space_id=space,
                discourse_category_id=category,
                discourse_parent_category_id=parent,
            )
        )
    return tuple(result) if ok else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_constructor: Callable[..., Any] = _construct_mapping
_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _constructor)


def load_config(path: Path, env: Mapping[str, str] = os.environ) -> Config:
    """Read, check and return the configuration in ``path``.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or has any problem; every
            problem found is listed, each with its key path.
    """
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, [f"{path}: file not found; copy config.yaml.example there and edit it"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"{path}: cannot read the file ({exc})"]) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(path, [f"{path}: not valid YAML ({detail}); fix the syntax"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            path,
            [
                f"{path}: must be a YAML mapping with the sections {', '.join(_TOP_KEYS)}; "
                f"got {_type_name(raw)}"
            ],
        )

    problems: list[str] = []
    base = path.parent
    _Checker(problems, "", raw).check_unknown(_TOP_KEYS)
    # A missing section is one problem, not one per required key inside it.
    discourse_data = _section(problems, raw, "discourse")
    discourse = None if discourse_data is None else _discourse(problems, discourse_data, env)
    google_data = _section(problems, raw, "google")
    google = None if google_data is None else _google(problems, google_data, base)
    sync_data = _section(problems, raw, "sync_settings")
    sync = None if sync_data is None else _sync(problems, sync_data, base)
    mappings = _mappings(problems, raw)
    if problems:
        raise ConfigError(path, problems)
    assert discourse is not None and google is not None and sync is not None
    assert mappings is not None
    return Config(discourse=discourse, google=google, sync=sync, mappings=mappings, path=path)
