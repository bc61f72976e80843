"""Writing in Chat as a forum post's author: a service account with domain-wide delegation.

Role: a shared module for Discourse → Chat (`sync_discourse_to_gchat`, and `sync_dm` for DM
messages). `Delegation` gives a `GoogleChatClient` that acts as one Workspace user (google-auth's
service-account credentials `with_subject(email)`; each user's credentials cached and refreshed
by google-auth only when their token has expired), and `fallback_reason` tells, from the error a
delegated attempt raised, why the message must go out as the operator's account instead.

Invariants:
- Only users whose email is in `google.delegation.domains` are ever acted as.
- The key file's contents never reach a log; tokens go only to the key file's `token_uri`.
- A refusal is never fatal: the caller writes as the operator with the attribution line and
  counts the fallback by reason (`status`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from config_loader import DelegationConfig
from db import Store
from discourse_client import DiscourseClient, DiscourseError
from google_chat_client import (
    ChatAuthError,
    ChatError,
    ChatNotFound,
    ChatPermissionDenied,
    ChatRateLimited,
    ChatRejected,
    ChatUnavailable,
    GoogleChatClient,
)

logger = logging.getLogger(__name__)

# What a delegated user does in Chat: write, edit and delete their messages, read memberships.
# The Admin console's domain-wide delegation entry must list exactly these (README).
DELEGATED_SCOPES = (
    "https://www.googleapis.com/auth/chat.messages",
    "https://www.googleapis.com/auth/chat.memberships.readonly",
)

# Why a post went out as the operator (the `status` counts are keyed by these).
NOT_IN_DOMAIN = "not_in_domain"  # not counted: the normal case for outside authors
NOT_A_MEMBER = "not_a_member"
DELEGATION_REFUSED = "delegation_refused"
USER_REFUSED = "user_refused"  # unknown to Workspace, suspended, deleted
QUOTA = "quota"
UNAVAILABLE = "unavailable"

FIXES = {
    NOT_A_MEMBER: "add the author to the Chat space, or accept the attribution line",
    DELEGATION_REFUSED: (
        "Admin console → Security → API controls → Domain-wide delegation: add the service "
        "account's client id with the scopes " + ",".join(DELEGATED_SCOPES)
    ),
    USER_REFUSED: "the author's Workspace account is unknown or suspended; nothing to do",
    QUOTA: "the author hit a per-user Chat quota; later posts try again",
    UNAVAILABLE: "Google's token endpoint or Chat was unreachable; later posts try again",
}


def fallback_reason(exc: ChatError) -> str:
    """Why a delegated attempt failed, as a fallback reason."""
    if isinstance(exc, ChatAuthError):
        # unauthorized_client: no delegation for this client id, or a scope not delegated;
        # invalid_grant: the subject is no Workspace user (or is suspended or deleted).
        if exc.reason == "invalid_grant":
            return USER_REFUSED
        return DELEGATION_REFUSED
    if isinstance(exc, ChatRateLimited):
        return QUOTA
    if isinstance(exc, ChatPermissionDenied | ChatNotFound):
        return NOT_A_MEMBER
    return UNAVAILABLE


class _DelegatedCredentials(service_account.Credentials):
    """Service-account credentials acting as a user, whose refreshes are counted."""

    on_refresh: Callable[[], None] = staticmethod(lambda: None)

    def refresh(self, request: Any) -> None:
        self.on_refresh()
        super().refresh(request)  # type: ignore[no-untyped-call]  # google-auth is untyped


class Delegation:
    """Per-user Chat clients for the Workspace users of the delegated domains."""

    def __init__(
        self,
        config: DelegationConfig,
        *,
        api_endpoint: str | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._config = config
        self._api_endpoint = api_endpoint
        self._sleep = sleep
        self._clients: dict[str, GoogleChatClient] = {}
        self._lock = threading.Lock()
        self.token_requests = 0

    @property
    def client_email(self) -> str:
        return str(self._config.service_account_info.get("client_email", ""))

    @property
    def client_id(self) -> str:
        return str(self._config.service_account_info.get("client_id", ""))

    def covers(self, email: str | None) -> bool:
        return self._config.covers(email)

    def client_for(self, email: str) -> GoogleChatClient:
        """A client acting as `email` (one per user, kept: its token is reused until it
        expires, then refreshed once by google-auth)."""
        key = email.lower()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._build(key)
                self._clients[key] = client
            return client

    def _build(self, email: str) -> GoogleChatClient:
        base = _DelegatedCredentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(self._config.service_account_info), scopes=list(DELEGATED_SCOPES)
        )
        credentials = base.with_subject(email)
        credentials.on_refresh = self._counted
        kw: dict[str, Any] = {"api_endpoint": self._api_endpoint, "max_attempts": 3}
        if self._sleep is not None:
            kw["sleep"] = self._sleep
        return GoogleChatClient(credentials, **kw)

    def _counted(self) -> None:
        with self._lock:
            self.token_requests += 1

    def try_token(self, email: str) -> str | None:
        """For `check`: get a token for `email`; None if it worked, else Google's reason."""
        base = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(self._config.service_account_info), scopes=list(DELEGATED_SCOPES)
        )
        try:
            base.with_subject(email).refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.RefreshError as exc:
            return str(exc.args[0]) if exc.args else "refused"
        except google.auth.exceptions.TransportError as exc:
            return f"token endpoint unreachable: {exc}"
        return None


@dataclass(frozen=True, slots=True)
class AuthorWriter:
    """Who a forum post is written in Chat as: the Workspace user `email`, through `client`."""

    email: str
    client: GoogleChatClient


class AuthorWriters:
    """Chooses, for each forum author and space, whether to write as them (delegation) and
    counts the fallbacks; shared by the post and the DM paths (Discourse → Chat)."""

    def __init__(
        self,
        delegation: Delegation | None,
        discourse: DiscourseClient,
        chat: GoogleChatClient,
        store: Store,
    ) -> None:
        self._delegation = delegation
        self._discourse = discourse
        self._chat = chat
        self._store = store
        # Forum authors' emails and space memberships, learnt once per process.
        self._emails: dict[str, str | None] = {}
        self._members: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()

    def writer_for(self, username: str, gchat_space_name: str, what: str) -> AuthorWriter | None:
        """Write as `username` when delegation covers their email and they are a member of
        the space; None: as the operator (a member missing is a counted fallback)."""
        if self._delegation is None:
            return None
        email = self._email_of(username)
        if email is None or not self._delegation.covers(email):
            return None
        member = self._member(gchat_space_name, email)
        if member is None:
            self.count(NOT_A_MEMBER, f"{what} by {email}: not a member of {gchat_space_name}")
            return None
        # Known before the first write as them: a message of theirs under the bridge's ids is
        # the bridge's own from the start, whatever happens after the create (no echo).
        self._store.add_delegated_sender(member, email)
        return AuthorWriter(email, self._delegation.client_for(email))

    def write(
        self,
        username: str,
        gchat_space_name: str,
        what: str,
        write: Callable[[GoogleChatClient, str | None], None],
    ) -> None:
        """`write(client, email)` as the forum user `username` when delegation covers them,
        else (or when that is refused) `write(operator's client, None)`."""
        writer = self.writer_for(username, gchat_space_name, what)
        if writer is not None:
            try:
                write(writer.client, writer.email)
                return
            except ChatError as exc:
                self.refused(writer, exc, what)  # raises if transient
        write(self._chat, None)

    def refused(self, writer: AuthorWriter, exc: ChatError, what: str) -> None:
        """A write as `writer` failed: count the fallback (the caller then writes as the
        operator), or re-raise a transient failure so that the item is tried again."""
        if isinstance(exc, ChatUnavailable) and not isinstance(exc, ChatRateLimited):
            raise exc
        self.count(fallback_reason(exc), f"{what} by {writer.email}: {exc}")

    def count(self, reason: str, detail: str) -> None:
        logger.warning("written as the operator (%s): %s", reason, detail)
        self._store.count_delegation_fallback(reason, detail)

    def client_for_message(self, gchat_message_name: str) -> GoogleChatClient:
        """The client that wrote `gchat_message_name` (its author's, under delegation): only
        a message's author may edit it in Chat."""
        email = self._store.written_as(gchat_message_name)
        if email is None or self._delegation is None:
            return self._chat
        return self._delegation.client_for(email)

    @contextmanager
    def as_author_of(self, gchat_message_name: str) -> Iterator[GoogleChatClient]:
        """The client for changing `gchat_message_name`; a refusal of the author's delegation
        is this item's problem (counted, and raised as a rejection that parks or dead-letters
        it), not the operator's credentials, which stall everything else while they fail."""
        client = self.client_for_message(gchat_message_name)
        try:
            yield client
        except ChatAuthError as exc:
            if client is self._chat:
                raise
            self.count(fallback_reason(exc), f"change of {gchat_message_name}: {exc}")
            raise ChatRejected(
                f"{gchat_message_name} can only be changed by its author, whose delegation "
                f"is refused: {exc}",
                reason=exc.reason,
            ) from exc

    def _email_of(self, username: str) -> str | None:
        with self._lock:
            if username in self._emails:
                return self._emails[username]
        try:
            email = self._discourse.email_of(username)
        except DiscourseError as exc:
            logger.warning("cannot read the email of %s: %s", username, exc)
            return None
        with self._lock:
            self._emails[username] = email
        return email

    def _member(self, gchat_space_name: str, email: str) -> str | None:
        """The Chat user `email` is, if a member of the space (None otherwise); learnt once."""
        key = (gchat_space_name, email.lower())
        with self._lock:
            if key in self._members:
                return self._members[key]
        try:
            member: str | None = self._chat.get_member(gchat_space_name, email).name
        except ChatNotFound:
            member = None
        with self._lock:
            self._members[key] = member
        return member


__all__ = [
    "AuthorWriter",
    "AuthorWriters",
    "DELEGATED_SCOPES",
    "DELEGATION_REFUSED",
    "FIXES",
    "NOT_A_MEMBER",
    "QUOTA",
    "UNAVAILABLE",
    "USER_REFUSED",
    "Delegation",
    "fallback_reason",
]
