"""Operator subcommands of `python main.py`: auth, spaces, check, status, retry, backfill.

Role: what an operator runs by hand to set the bridge up, diagnose it and repair it. `main.py`
parses the arguments and calls one `run_*` function here; each returns the process exit code
(the `EXIT_*` codes here are the only ones: `main.py` and `demo.py` return them too). The
`demo` command lives in `demo.py`, the one product module that may start the emulators.
These commands talk to a person at a terminal, so their results are printed to `out` (stdout);
the daemon's log stays in `logging`.

Invariants:
- `check` never changes anything unless `--fix` is given, and then only the Discourse webhook.
  Every check prints one line, ✓ or ✗, and every ✗ line says how to fix it; the exit code is 1
  when any check failed.
- `status` only reads the state database: it works while the service runs and without network.
- `retry` gives dead letters and parked items a fresh attempt budget; for parked Chat → Discourse
  messages it also moves the space's cursor back to the message (the poller reads a space only
  after its cursor, so an unparked message behind the cursor would otherwise never be read again).
  Messages already mirrored are skipped by the poller, so rewinding never duplicates.
- `backfill` mirrors one space with the same code, cursor and crash safety as the service: an
  interrupted backfill (SIGTERM, SIGINT) stops between two messages and a rerun continues.
- Secrets (API key, webhook secret, tokens) are never printed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from checks import CheckResult, warning
from config_loader import Config, ConfigError, SpaceMapping
from db import StatusKey, Store
from delegation import DELEGATION_REFUSED, FIXES, USER_REFUSED, Delegation
from discourse_client import (
    DiscourseAuthError,
    DiscourseClient,
    DiscourseError,
    DiscourseNotFound,
    DiscourseUnavailable,
    DiscourseWebhook,
)
from events_setup import (
    PUBSUB_SCOPE,
    PUBSUB_SCOPE_ALTERNATIVES,
    check_events,
    status_lines,
)
from google_chat_client import (
    ChatAuthError,
    ChatError,
    ChatNotFound,
    ChatPermissionDenied,
    GoogleChatClient,
    load_token_file,
    parse_rfc3339,
    write_token_file,
)
from spaces import PollResult
from sync_gchat_to_discourse import DIRECTION as GCHAT_TO_DISCOURSE
from webhook_listener import CHAT_EVENTS, POST_EVENTS, WEBHOOK_PATH

logger = logging.getLogger(__name__)

# The process exit codes of every command, `run` included (main.py returns these too).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_CREDENTIALS = 3
EXIT_RUNNING = 4

OK = "\u2713"  # ✓
FAIL = "\u2717"  # ✗
WARN = "!"  # a risk worth fixing that does not stop the bridge (not counted as a failure)

_AUTH = "https://www.googleapis.com/auth/"
# What the bridge calls under user auth (reference §3-§10): messages read and write, spaces
# list/get, memberships list. `auth` asks for exactly these.
CHAT_SCOPES = (
    _AUTH + "chat.messages",
    _AUTH + "chat.spaces.readonly",
    _AUTH + "chat.memberships.readonly",
)
# A broader grant covers a narrower need.
_SCOPE_ALTERNATIVES = {
    _AUTH + "chat.messages": (_AUTH + "chat.messages",),
    _AUTH + "chat.spaces.readonly": (_AUTH + "chat.spaces.readonly", _AUTH + "chat.spaces"),
    _AUTH + "chat.memberships.readonly": (
        _AUTH + "chat.memberships.readonly",
        _AUTH + "chat.memberships",
    ),
}
DEFAULT_AUTH_PORT = 8765
# "Everything": a createTime bound before any Chat message (the poller subtracts its overlap).
_BEGINNING = "1970-01-01T00:00:00Z"


class BridgeRuntime(Protocol):
    """What the commands need from `main.build_runtime` (passed in, so cli never imports main)."""

    @property
    def store(self) -> Store: ...

    @property
    def gchat_to_discourse(self) -> Any: ...


RuntimeFactory = Callable[[Config, threading.Event], BridgeRuntime]


# --------------------------------------------------------------------------------------- helpers


def _say(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def _discourse_client(config: Config, **kw: Any) -> DiscourseClient:
    return DiscourseClient(
        config.discourse.url,
        config.discourse.api_key,
        config.discourse.api_username,
        requests_per_minute=config.discourse.requests_per_minute,
        rate_window_seconds=config.discourse.rate_window_seconds,
        timeout_seconds=min(config.discourse.timeout_seconds, 15.0),
        **kw,
    )


def _chat_client(config: Config) -> GoogleChatClient:
    # Interactive commands should answer quickly: fewer retries than the service makes.
    return GoogleChatClient.from_token_file(
        config.google.token_file,
        api_endpoint=config.google.api_endpoint,
        max_attempts=2,
        timeout_seconds=15.0,
    )


def webhook_url(config: Config) -> str:
    """Where Discourse must send webhooks: `public_webhook_url`, else the listener's address."""
    if config.sync.public_webhook_url:
        return config.sync.public_webhook_url
    host = config.sync.webhook_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.sync.webhook_port}{WEBHOOK_PATH}"


def needed_events(config: Config) -> tuple[str, ...]:
    """Webhook events the bridge uses: posts always, chat messages when a DM is mapped."""
    has_dm = any(
        m.discourse_category_id is None and m.discourse_parent_category_id is None
        for m in config.mappings
    )
    return POST_EVENTS + (CHAT_EVENTS if has_dm else ())


def auth_scopes(config: Config) -> tuple[str, ...]:
    """What `auth` asks for: the Chat scopes, and Pub/Sub's when events are configured."""
    return CHAT_SCOPES + ((PUBSUB_SCOPE,) if config.google.events is not None else ())


def missing_scopes(granted: Sequence[str], *, events: bool = False) -> list[str]:
    """The bridge's scopes that `granted` does not cover (pure)."""
    have = set(granted)
    missing = [s for s in CHAT_SCOPES if not have.intersection(_SCOPE_ALTERNATIVES[s])]
    if events and not have.intersection(PUBSUB_SCOPE_ALTERNATIVES):
        missing.append(PUBSUB_SCOPE)
    return missing


def _mapping_label(mapping: SpaceMapping, store: Store | None = None) -> str:
    if mapping.discourse_category_id is not None:
        return f"category {mapping.discourse_category_id}"
    if mapping.discourse_parent_category_id is not None:
        made = store.category_for_space(mapping.google_space_id) if store else None
        made_text = f" (created: {made})" if made is not None else " (not created yet)"
        return f"subcategory under {mapping.discourse_parent_category_id}{made_text}"
    channel = store.channel_for_space(mapping.google_space_id) if store else None
    return "chat DM channel" + (f" {channel}" if channel is not None else "")


def _is_room(mapping: SpaceMapping) -> bool:
    return (
        mapping.discourse_category_id is not None
        or mapping.discourse_parent_category_id is not None
    )


def _listener_answers(config: Config) -> bool:
    """True when something listens on the configured webhook port (the service, most likely)."""
    host = config.sync.webhook_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, config.sync.webhook_port), timeout=1.0):
            return True
    except OSError:
        return False


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Set `stop` on SIGTERM/SIGINT; returns a function restoring the previous handlers."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: stopping after the message in hand", signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


# ------------------------------------------------------------------------------------------ auth


def run_auth(
    config: Config,
    *,
    no_browser: bool = False,
    port: int = DEFAULT_AUTH_PORT,
    host: str = "localhost",
    out: TextIO = sys.stdout,
) -> int:
    """The OAuth installed-app flow for the bridge's Google account; writes the token file."""
    from google_auth_oauthlib.flow import InstalledAppFlow  # only this command needs it

    secrets = config.google.credentials_file
    if not secrets.exists():
        _say(out, f"{FAIL} OAuth client file {secrets} does not exist")
        _say(
            out,
            "  fix: in the Google Cloud console create an OAuth client of type 'Desktop app', "
            "download its JSON and save it there (google.credentials_file)",
        )
        return EXIT_CREDENTIALS
    try:
        flow = InstalledAppFlow.from_client_secrets_file(
            str(secrets), scopes=list(auth_scopes(config))
        )
    except ValueError as exc:
        _say(out, f"{FAIL} {secrets} is not an installed-app OAuth client file: {exc}")
        _say(out, "  fix: download the JSON of a 'Desktop app' OAuth client again")
        return EXIT_CREDENTIALS
    if no_browser:
        prompt = (
            "Open this URL in a browser and sign in as the bridge's Google account:\n\n"
            "    {url}\n\n"
            f"Google then redirects the browser to http://{host}:{port}/ . On a remote server "
            f"forward that port first, from your own machine:\n"
            f"    ssh -N -L {port}:localhost:{port} you@this-server\n"
            "Waiting for the redirect..."
        )
    else:
        prompt = "Your browser should open; if not, open this URL:\n\n    {url}\n"
    names = ", ".join(s.removeprefix(_AUTH) for s in auth_scopes(config))
    _say(out, f"Asking Google for: {names}")
    credentials = flow.run_local_server(
        host=host,
        port=port,
        open_browser=not no_browser,
        authorization_prompt_message=prompt,
        success_message="The bridge is authorized; you may close this window.",
        # A new consent each time, so that Google always returns a refresh token.
        prompt="consent",
    )
    data = json.loads(credentials.to_json())
    if not data.get("refresh_token"):
        _say(out, f"{FAIL} Google returned no refresh token; the bridge could not renew access")
        _say(out, "  fix: remove the app at https://myaccount.google.com/permissions, run again")
        return EXIT_CREDENTIALS
    write_token_file(config.google.token_file, data)
    _say(out, f"{OK} token written to {config.google.token_file} (mode 0600)")
    _say(out, "Next: python main.py spaces   (then add mappings and run python main.py check)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- spaces


def run_spaces(config: Config, *, out: TextIO = sys.stdout) -> int:
    """List the spaces the bridge's account sees, with the mapping that covers each."""
    try:
        chat = _chat_client(config)
        spaces = list(chat.list_spaces())
    except ChatAuthError as exc:
        _say(out, f"{FAIL} Google refused the credentials: {exc}")
        _say(out, "  fix: python main.py auth")
        return EXIT_CREDENTIALS
    except ChatError as exc:
        _say(out, f"{FAIL} cannot list spaces: {exc}")
        return EXIT_FAILED
    mapped = {m.google_space_id: m for m in config.mappings}
    rows = [("SPACE ID", "KIND", "NAME", "LAST ACTIVE", "MAPPED TO")]
    for space in sorted(spaces, key=lambda s: (s.space_type, (s.display_name or "").lower())):
        mapping = mapped.get(space.name)
        rows.append(
            (
                space.name,
                space.space_type or "?",
                space.display_name or "(direct message)",
                space.last_active_time.strftime("%Y-%m-%d %H:%M")
                if space.last_active_time
                else "",
                _mapping_label(mapping) if mapping else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:4])]
        _say(out, "  ".join([*cells, row[4]]).rstrip())
    seen = {s.name for s in spaces}
    for space_id in mapped:
        if space_id not in seen:
            _say(out, f"{FAIL} mapped space {space_id} is not among them (the account left it?)")
    _say(out, f"{len(spaces)} spaces. Map one with a `mappings:` entry in {config.path}.")
    return EXIT_OK


# ----------------------------------------------------------------------------------------- check


def print_result(result: CheckResult, out: TextIO) -> None:
    mark = WARN if result.warning else (OK if result.ok else FAIL)
    _say(out, f"{mark} {result.what}")
    if (result.warning or not result.ok) and result.fix:
        _say(out, f"    fix: {result.fix}")


def config_error_results(error: ConfigError) -> list[CheckResult]:
    """`check` on a config that does not load: one ✗ per problem."""
    fix = f"edit {error.path} (see config.yaml.example)"
    return [CheckResult(False, f"configuration: {problem}", fix) for problem in error.problems]


def webhook_problems(
    hook: DiscourseWebhook, *, secret: str | None, events: Sequence[str]
) -> list[str]:
    """Why `hook` would not serve the bridge (pure); empty when it is right."""
    problems: list[str] = []
    if not hook.active:
        problems.append("it is inactive")
    if hook.content_type != 1:
        problems.append("its content type is not application/json")
    # Discourse shows the secret to admins; a hook listed without one cannot be compared.
    if secret is not None and hook.secret is not None and hook.secret != secret:
        problems.append("its secret differs from discourse.webhook_secret")
    if not hook.wildcard_web_hook:
        missing = [e for e in events if e not in hook.event_type_names]
        if missing:
            problems.append("it does not send " + ", ".join(missing))
    if hook.category_ids:
        problems.append("it is limited to some categories (DM chat events would be dropped)")
    return problems


def check_discourse(config: Config, discourse: DiscourseClient) -> Iterator[CheckResult]:
    """Reachable, key valid, api_username an admin, each mapped category present."""
    url = config.discourse.url
    user = config.discourse.api_username
    try:
        me = discourse.get_user(user)
    except DiscourseAuthError as exc:
        yield CheckResult(True, f"Discourse reachable at {url}")
        yield CheckResult(
            False,
            f"Discourse refused the API key ({exc.__class__.__name__})",
            "create an 'All users' key in Admin > API > Keys and put it in discourse.api_key "
            "or DISCOURSE_API_KEY",
        )
        return
    except DiscourseUnavailable as exc:
        yield CheckResult(
            False,
            f"Discourse not reachable at {url}: {exc}",
            "check discourse.url, DNS and that the forum is up",
        )
        return
    except DiscourseError as exc:
        yield CheckResult(
            False, f"Discourse at {url} answered oddly: {exc}", "check discourse.url"
        )
        return
    yield CheckResult(True, f"Discourse reachable at {url}")
    if me is None:
        yield CheckResult(
            False,
            f"api_username {user!r} does not exist in Discourse",
            "set discourse.api_username to an admin's username (e.g. system)",
        )
        return
    if not me.admin:
        yield CheckResult(
            False,
            f"API key accepted, but {user!r} is not an admin",
            "use an admin as discourse.api_username, with an 'All users' key",
        )
        return
    yield CheckResult(True, f"API key valid; acting as admin {user!r}")
    for index, mapping in enumerate(config.mappings):
        category_id = mapping.discourse_category_id or mapping.discourse_parent_category_id
        if category_id is None:
            continue
        try:
            category = discourse.get_category(category_id)
        except DiscourseNotFound:
            yield CheckResult(
                False,
                f"mappings[{index}]: category {category_id} does not exist",
                "create it in Discourse or correct the id (the number in /c/name/ID URLs)",
            )
            continue
        except DiscourseError as exc:
            yield CheckResult(False, f"mappings[{index}]: category {category_id}: {exc}")
            continue
        yield CheckResult(True, f"mappings[{index}]: category {category_id} ({category.name})")


def check_google(config: Config, *, fix: bool = False) -> Iterator[CheckResult]:
    """Token present with the needed scopes and accepted; each mapped space readable; with
    events on, the Pub/Sub topic and subscriptions (created by `fix`)."""
    token_file = config.google.token_file
    fix_auth = "run: python main.py auth"
    try:
        credentials = load_token_file(token_file)
    except ChatAuthError as exc:
        yield CheckResult(False, f"Google token: {exc}", fix_auth)
        return
    granted = list(credentials.scopes or ())
    if not granted:
        yield CheckResult(True, f"Google token {token_file} (it lists no scopes to compare)")
    else:
        missing = missing_scopes(granted, events=config.google.events is not None)
        if missing:
            names = ", ".join(s.removeprefix(_AUTH) for s in missing)
            yield CheckResult(False, f"Google token lacks the scopes {names}", fix_auth)
            return
        yield CheckResult(True, f"Google token {token_file} has the needed scopes")
    try:
        chat = GoogleChatClient(
            credentials, api_endpoint=config.google.api_endpoint, max_attempts=2
        )
        chat.list_spaces_page(page_size=1)
    except ChatAuthError as exc:
        yield CheckResult(False, f"Google refused the token: {exc}", fix_auth)
        return
    except ChatError as exc:
        yield CheckResult(False, f"Google Chat not reachable: {exc}", "retry later")
        return
    yield CheckResult(True, "Google accepted the token")
    for index, mapping in enumerate(config.mappings):
        yield _check_space(chat, index, mapping)
    if config.google.events is not None:
        yield from check_events(config, credentials, fix=fix)
    if config.google.delegation is not None:
        yield from check_delegation(config, chat)


def check_delegation(config: Config, chat: GoogleChatClient) -> Iterator[CheckResult]:
    """A token for one member per delegated domain of each mapped space, as the forum's posts
    would be written (Google's delegation may cover one domain and not another)."""
    settings = config.google.delegation
    if settings is None:
        return
    delegation = Delegation(settings, api_endpoint=config.google.api_endpoint)
    who = f"service account {delegation.client_email} (client id {delegation.client_id})"
    for mapping in config.mappings:
        space = mapping.google_space_id
        try:
            members = chat.list_members(space)
        except ChatError as exc:
            yield CheckResult(False, f"delegation in {space}: cannot list members: {exc}")
            continue
        for domain in settings.domains:
            email = next(
                (
                    m.email
                    for m in members
                    if m.type == "HUMAN" and m.email and m.email.lower().endswith("@" + domain)
                ),
                None,
            )
            if email is None:
                yield warning(
                    f"delegation in {space}: no member with an email in {domain} to try",
                    "nothing to fix if none of them posts on the forum",
                )
                continue
            refused = delegation.try_token(email)
            if refused is None:
                yield CheckResult(True, f"delegation: {who} may act as {email} in {space}")
                continue
            reason = refused.split(":", 1)[0].strip()
            fix = FIXES[USER_REFUSED] if reason == "invalid_grant" else FIXES[DELEGATION_REFUSED]
            yield CheckResult(
                False,
                f"delegation: {who} may not act as {email}: {refused}",
                fix.replace(
                    "the service account's client id", f"client id {delegation.client_id}"
                ),
            )


def _check_space(chat: GoogleChatClient, index: int, mapping: SpaceMapping) -> CheckResult:
    name = mapping.google_space_id
    label = f"mappings[{index}]: space {name}"
    try:
        space = chat.get_space(name)
        # Reading one page proves the messages are readable; a bound of now keeps it empty.
        next(iter(chat.list_messages(name, created_after=datetime.now(UTC), page_size=1)), None)
    except ChatNotFound:
        return CheckResult(False, f"{label} not found", "check the id with: python main.py spaces")
    except ChatPermissionDenied as exc:
        return CheckResult(
            False, f"{label} not readable: {exc}", "add the bridge's account to the space"
        )
    except ChatError as exc:
        return CheckResult(False, f"{label}: {exc}", "check the id with: python main.py spaces")
    room = _is_room(mapping)
    if room and space.space_type != "SPACE":
        return CheckResult(
            False,
            f"{label} is a {space.space_type}, but the mapping names a category",
            "remove the category keys: direct messages map to chat channels",
        )
    if not room and space.space_type == "SPACE":
        return CheckResult(
            False,
            f"{label} is a room space, but the mapping names no category",
            "add discourse_category_id or discourse_parent_category_id",
        )
    return CheckResult(True, f"{label} ({space.display_name or space.space_type}) is readable")


def check_webhook(
    config: Config, discourse: DiscourseClient, *, fix: bool
) -> Iterator[CheckResult]:
    """The Discourse webhook: present, pointing here, signed with our secret, the right events."""
    url = webhook_url(config)
    secret = config.discourse.webhook_secret
    events = needed_events(config)
    if secret is None and not config.discourse.allow_unsigned_webhooks:
        yield CheckResult(
            False,
            "no webhook secret configured (the listener refuses to start without one)",
            "set discourse.webhook_secret (12+ characters) or DISCOURSE_WEBHOOK_SECRET",
        )
        return
    try:
        hooks = discourse.list_webhooks()
    except DiscourseError as exc:
        yield CheckResult(False, f"cannot list Discourse webhooks: {exc}", "see the lines above")
        return
    matching = [h for h in hooks if h.payload_url.rstrip("/") == url.rstrip("/")]
    good = [h for h in matching if not webhook_problems(h, secret=secret, events=events)]
    if good:
        yield CheckResult(
            True, f"Discourse webhook #{good[0].id} sends {_events_text(good[0])} to {url}"
        )
        return
    if not fix:
        if matching:
            problems = webhook_problems(matching[0], secret=secret, events=events)
            what = f"Discourse webhook #{matching[0].id} to {url}: " + "; ".join(problems)
        else:
            what = f"no Discourse webhook sends to {url}"
        yield CheckResult(
            False,
            what,
            "run: python main.py check --fix   (or set sync_settings.public_webhook_url if "
            "Discourse reaches this service at another address)",
        )
        return
    try:
        if matching:
            hook = discourse.update_webhook(
                matching[0].id,
                payload_url=url,
                secret=secret or "",
                wildcard=True,
                active=True,
                content_type=1,
                category_ids=(),
            )
            done = "updated"
        else:
            hook = discourse.create_webhook(
                url, secret=secret or "", wildcard=True, active=True, content_type=1
            )
            done = "created"
    except DiscourseError as exc:
        yield CheckResult(
            False,
            f"could not create or update the webhook: {exc}",
            "a private or loopback URL needs Discourse's allowed_internal_hosts setting; or "
            "create it by hand in Admin > API > Webhooks",
        )
        return
    yield CheckResult(True, f"Discourse webhook #{hook.id} {done}: all events to {url}")


def _events_text(hook: DiscourseWebhook) -> str:
    return "all events" if hook.wildcard_web_hook else ", ".join(hook.event_type_names)


def private_files(config: Config) -> list[tuple[str, Path]]:
    """(what, path) of every file that holds a secret or the bridge's data."""
    database = config.sync.database
    files = [
        ("configuration", config.path),
        ("Google token file", config.google.token_file),
        ("Google OAuth client file", config.google.credentials_file),
        ("state database", database),
        ("state database WAL", Path(f"{database}-wal")),
        ("state database shared memory", Path(f"{database}-shm")),
    ]
    if config.sync.log_file is not None:
        files.append(("log file", config.sync.log_file))
    return files


def check_exposure(config: Config) -> Iterator[CheckResult]:
    """Warnings about secrets and data others can read: files open to the group or the world,
    and the API key sent in clear to a forum that is not on this machine."""
    for what, path in private_files(config):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue  # not there (yet): nothing to expose
        if mode & 0o077:
            yield warning(
                f"{what} {path} can be read by others (mode {mode:04o})",
                f"chmod 600 {path}",
            )
    url = urlsplit(config.discourse.url)
    if url.scheme == "http" and not _is_loopback(url.hostname or ""):
        yield warning(
            f"discourse.url {config.discourse.url} is plain http: the API key and every post "
            "cross the network unencrypted",
            "use the forum's https:// address",
        )


def check_webhook_transport(config: Config) -> Iterator[CheckResult]:
    """A warning when Discourse's deliveries cross the network in clear: anyone on the path can
    read every post (PMs and private categories included) and replay a signed delivery."""
    url = webhook_url(config)
    parts = urlsplit(url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        yield warning(
            f"the webhook URL {url} is plain http: Discourse's deliveries cross the network "
            "unencrypted, where they can be read and replayed",
            "serve the listener behind https (e.g. a reverse proxy) and set "
            "sync_settings.public_webhook_url to its https:// address",
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_check(config: Config, *, fix: bool = False, out: TextIO = sys.stdout) -> int:
    """Check the configuration and the world; print ✓/✗ lines; 1 when anything failed."""
    results: list[CheckResult] = []

    def report(result: CheckResult) -> None:
        results.append(result)
        print_result(result, out)

    report(
        CheckResult(
            True, f"configuration {config.path} is valid ({len(config.mappings)} mappings)"
        )
    )
    for result in check_exposure(config):
        report(result)
    for result in check_webhook_transport(config):
        report(result)
    discourse = _discourse_client(config)
    try:
        discourse_ok = True
        for result in check_discourse(config, discourse):
            report(result)
            discourse_ok = discourse_ok and result.ok
        for result in check_google(config, fix=fix):
            report(result)
        if discourse_ok:
            for result in check_webhook(config, discourse, fix=fix):
                report(result)
        else:
            report(CheckResult(False, "webhook not checked: Discourse is not usable", "see above"))
    finally:
        discourse.close()
    failed = sum(not r.ok for r in results)
    warned = sum(r.warning for r in results)
    summary = "all checks passed" if not failed else f"{failed} check(s) failed"
    _say(out, summary + (f", {warned} warning(s)" if warned else ""))
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------------- status


def _one_line(text: str | None, limit: int = 160) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def run_status(config: Config, *, out: TextIO = sys.stdout) -> int:
    """Mappings, cursors, last poll, inbox depth, dead letters and parked items, from the store."""
    if not config.sync.database.exists():
        _say(out, f"No state database at {config.sync.database}: the bridge has not run yet.")
        return EXIT_OK
    with Store(config.sync.database) as store:
        _say(out, f"State: {config.sync.database}")
        _say(out, f"Mappings ({len(config.mappings)}):")
        for mapping in config.mappings:
            space = mapping.google_space_id
            _say(out, f"  {space} -> {_mapping_label(mapping, store)}")
            # A room's cursor, else a DM's (the mapping's kind is the space's, unknown offline).
            cursor = (
                store.chat_poll_state(space, "room").last_message_time
                or store.chat_poll_state(space, "dm").last_message_time
            )
            _say(out, f"      last message read: {cursor or 'none yet'}")
            if config.google.events is not None:
                for line in status_lines(store, space, datetime.now(UTC)):
                    _say(out, line)
        high_water = store.discourse_high_water()
        _say(out, f"Discourse posts seen up to id: {high_water or 'none yet'}")
        _say(out, "Last poll: " + _last_poll_text(store.get_status(StatusKey.LAST_POLL)))
        # Set by the service when a whole cycle failed outside the Chat poll (e.g. the
        # Discourse catch-up pull refused with 403 after a key was revoked).
        cycle_error = store.get_status(StatusKey.CYCLE_ERROR)
        if cycle_error:
            _say(out, f"{FAIL} last cycle failed: {cycle_error}")
        depth = store.inbox_depth()
        oldest = store.oldest_pending_received_at()
        since = f" (oldest received {oldest.isoformat()})" if oldest else ""
        _say(out, f"Webhook inbox: {depth} pending{since}")
        pending = store.pending_writes()
        if pending:
            _say(out, f"Unconfirmed writes (checked before any retry): {len(pending)}")
        dead = store.dead_events()
        _say(out, f"Dead letters: {len(dead)}")
        for event in dead:
            _say(
                out,
                f"  #{event.id} {event.event_name} ({event.dedupe_key}), "
                f"{event.attempts} attempts: {_one_line(event.last_error)}",
            )
        parked = store.parked_items()
        _say(out, f"Parked items: {len(parked)}")
        for failure in parked:
            _say(
                out,
                f"  {failure.direction} {failure.item_key}, {failure.attempts} attempts, "
                f"since {failure.first_failed_at:%Y-%m-%d %H:%M:%S}: "
                f"{_one_line(failure.last_error)}",
            )
        if dead or parked:
            _say(out, "Fix the cause, then run: python main.py retry")
        if config.google.delegation is not None:
            fallbacks = store.delegation_fallbacks()
            total = sum(count for _, count, _ in fallbacks)
            _say(out, f"Posts written as the operator instead of their author: {total}")
            for reason, count, detail in fallbacks:
                _say(out, f"  {reason}: {count} (last: {_one_line(detail, 120)})")
                _say(out, f"    fix: {FIXES.get(reason, 'see the log')}")
    return EXIT_OK


def _last_poll_text(raw: str | None) -> str:
    if not raw:
        return "none yet"
    try:
        data = json.loads(raw)
    except ValueError:
        return _one_line(raw)
    if not isinstance(data, dict):
        return _one_line(raw)
    state = "ok" if data.get("ok") else "FAILED"
    text = (
        f"{data.get('time', '?')} {state}: {data.get('mirrored', 0)} mirrored, "
        f"{data.get('parked', 0)} parked, {data.get('spaces_read', 0)} spaces read"
    )
    errors = data.get("errors") or []
    if errors:
        text += "; errors: " + _one_line("; ".join(str(e) for e in errors))
    return text


# ----------------------------------------------------------------------------------------- retry


def run_retry(config: Config, *, out: TextIO = sys.stdout) -> int:
    """Requeue dead letters and parked items; rewind cursors to re-read parked Chat messages."""
    if not config.sync.database.exists():
        _say(out, f"No state database at {config.sync.database}: nothing to retry.")
        return EXIT_OK
    status = EXIT_OK
    with Store(config.sync.database) as store:
        parked_chat = [f for f in store.parked_items() if f.direction == GCHAT_TO_DISCOURSE]
        if parked_chat:
            status = _rewind_for(config, store, [f.item_key for f in parked_chat], out)
        dead = store.requeue_dead()
        parked = store.requeue_parked()
    _say(out, f"requeued {dead} dead letter(s) and {parked} parked item(s)")
    if dead or parked:
        _say(out, "The running service picks them up on its next cycle (or: python main.py run)")
    return status


def _rewind_for(config: Config, store: Store, message_names: list[str], out: TextIO) -> int:
    """Move each space's cursor back to its earliest parked message (never forward)."""
    try:
        chat = _chat_client(config)
    except ChatAuthError as exc:
        _say(out, f"{FAIL} cannot read the parked Chat messages: {exc}")
        _say(out, "    fix: python main.py auth, then run retry again")
        return EXIT_CREDENTIALS
    earliest: dict[str, str] = {}
    for name in message_names:
        try:
            message = chat.get_message(name)
        except ChatNotFound:
            _say(out, f"  {name} no longer exists in Chat; it will be dropped by the poller")
            continue
        except ChatError as exc:
            _say(out, f"{FAIL} cannot read {name}: {exc}; it stays behind the cursor")
            continue
        space = message.space_name
        known = earliest.get(space)
        if known is None or parse_rfc3339(message.create_time_raw) < parse_rfc3339(known):
            earliest[space] = message.create_time_raw
    for space, moment in earliest.items():
        store.rewind_chat_poll(space, "room", moment)
        _say(out, f"  {space}: will be read again from {moment}")
    return EXIT_OK


# -------------------------------------------------------------------------------------- backfill


def parse_since(text: str) -> datetime:
    """A `--since` value: a date (2024-05-01) or a date and time, UTC unless it says otherwise.

    Raises:
        ValueError: not a date.
    """
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_backfill(
    config: Config,
    *,
    space: str,
    since: datetime | None,
    build_runtime: RuntimeFactory,
    force: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Mirror the history of one mapped room space (all of it, or from `since`)."""
    mapping = next((m for m in config.mappings if m.google_space_id == space), None)
    if mapping is None:
        _say(out, f"{FAIL} {space} is not in mappings; map it in {config.path} first")
        return EXIT_CONFIG
    if not _is_room(mapping):
        _say(out, f"{FAIL} {space} is a direct-message mapping; backfill covers room spaces")
        return EXIT_CONFIG
    if not force and _listener_answers(config):
        _say(
            out,
            f"{FAIL} the bridge seems to be running (port {config.sync.webhook_port} answers); "
            "two processes mirroring one space could race",
        )
        _say(out, "    fix: stop it (systemctl stop gchat-discourse), or pass --force")
        return EXIT_RUNNING
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        try:
            runtime = build_runtime(dataclasses.replace(config, mappings=(mapping,)), stop)
        except ChatAuthError as exc:
            _say(out, f"{FAIL} {exc}")
            _say(out, "    fix: python main.py auth")
            return EXIT_CREDENTIALS
        try:
            start = _BEGINNING if since is None else since.astimezone(UTC).isoformat()
            runtime.store.rewind_chat_poll(space, "room", start.replace("+00:00", "Z"))
            _say(out, f"Backfilling {space} from {'the beginning' if since is None else start}")
            result: PollResult = runtime.gchat_to_discourse.poll_once()
        finally:
            runtime.store.close()
    finally:
        restore()
    _say(
        out,
        f"{result.mirrored} mirrored, {result.skipped} skipped, {result.parked} parked, "
        f"{len(result.errors)} errors",
    )
    for error in result.errors:
        _say(out, f"  {FAIL} {error}")
    if stop.is_set():
        _say(out, "Interrupted; run the same command again to continue where it stopped.")
        return EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED
