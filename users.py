"""Identity: one Discourse user per Google Chat user, stable across restarts.

Naming is pure (`username_candidates`, `sanitize_username`); `UserDirectory` does the I/O: it
links a Chat user to the forum account that signed in with the same Google account, else to an
existing Discourse user with the same email, or creates one, and remembers the link in the
store. Two people who share a display name never share an account: candidates after the first
carry a suffix derived from the Google user id, and every candidate is checked against the
store and the forum before use. When no account can be had, posts go out as the API user with
an attribution line instead of being dropped.

One identity per person: Google documents that a human Chat user's id (`users/{id}`) is the
person's People API and Admin SDK Directory id, and Discourse keeps a Google login's account id
(the OpenID `sub`, which Discourse's own Google group sync hands the Directory API as a user
key) as `provider_uid`; so `GET /u/by-external/google_oauth2/{id}.json` (admin keys only) names
the person's forum account even when its email differs. A forum without Google logins, or a
key that may not ask, finds nobody and email matching decides, as before. A stored link is
never revisited. Two answers that disagree (the Google login names an account linked to
another Chat user, or the email names another account than the Google login) are not guessed
between: `IdentityConflict` says why, and the sync modules park the message with that reason.

Crash safety: a write intent `user:<google user>` is recorded before a user is created; if the
link was never stored, the next attempt finds the user by email and, from the intent (or the
bridge's placeholder address), still marks it as bridge-created, so no second account is made
and nothing that user writes is mirrored back.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import formatting
from db import LinkConflict, Store, UserLink
from discourse_client import (
    DiscourseAuthError,
    DiscourseClient,
    DiscourseError,
    DiscourseRejected,
    DiscourseUser,
)
from google_chat_client import ChatError, ChatUser, GoogleChatClient

logger = logging.getLogger(__name__)

MIN_USERNAME_LENGTH = 3
MAX_USERNAME_LENGTH = 20
# Discourse's default `reserved_usernames` plus the automatic group names, which share the
# username namespace (reference §6.2).
RESERVED_USERNAMES = frozenset(
    (
        "admin moderator administrator mod sys system community info you name username user "
        "nickname discourse discourseorg discourseforum support all here everyone staff admins "
        "moderators trust_level_0 trust_level_1 trust_level_2 trust_level_3 trust_level_4"
    ).split()
)
_FORBIDDEN_SUFFIXES = (
    ".json", ".js", ".css", ".htm", ".html", ".xml", ".jpg", ".jpeg", ".png", ".gif", ".bmp",
    ".ico", ".tif", ".tiff", ".woff",
)  # fmt: skip
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_SPECIAL_RUN = re.compile(r"[-_.]{2,}")
_MAX_CANDIDATES = 6
# A human Chat user's `users/{id}`: the id is the Google account's (People API, Directory API).
_GOOGLE_ACCOUNT_ID = re.compile(r"users/([0-9]+)")


class IdentityConflict(Exception):
    """Which forum account a Chat user is has two answers; a person must settle it.

    Raised by `UserDirectory.author_for` instead of linking anything; the sync modules park the
    item with `reason` (shown by `status`), and `retry` asks again once the forum is fixed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Author:
    """Who a bridged post is written as, and the attribution line it needs (if any)."""

    discourse_username: str
    attribution: str | None = None


def sanitize_username(base: str) -> str:
    """Fold `base` into Discourse's ASCII username alphabet; may return "" if nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    name = _INVALID_CHARS.sub("_", ascii_text.strip())
    # No two special characters in a row; keep the first of each run.
    name = _SPECIAL_RUN.sub(lambda m: m.group(0)[0], name)
    # Must begin with an alphanumeric or "_" and end with an alphanumeric.
    name = name.lstrip("-.")
    name = name[:MAX_USERNAME_LENGTH].rstrip("-_.")
    return name


def _is_acceptable(username: str) -> bool:
    lowered = username.lower()
    return (
        MIN_USERNAME_LENGTH <= len(username) <= MAX_USERNAME_LENGTH
        and lowered not in RESERVED_USERNAMES
        and not lowered.endswith(_FORBIDDEN_SUFFIXES)
        and _SPECIAL_RUN.search(username) is None
        and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*[A-Za-z0-9]", username) is not None
    )


def _with_suffix(base: str, suffix: str) -> str:
    room = MAX_USERNAME_LENGTH - len(suffix)
    return base[:room].rstrip("-_.") + suffix


def username_candidates(
    display_name: str | None, email: str | None, gchat_user_name: str
) -> Iterator[str]:
    """Yield acceptable usernames for a Chat user, best first, deterministic for the same input.

    The first is the display name (or the email's local part); later ones add a suffix derived
    from the Google user id, so two people named "Alex Kim" get different, stable names.
    """
    gchat_user_id = gchat_user_name.rsplit("/", 1)[-1]
    digest = hashlib.sha256(gchat_user_id.encode()).hexdigest()
    bases: list[str] = []
    for source in (display_name, (email or "").split("@", 1)[0]):
        base = sanitize_username(source or "")
        if base and base not in bases:
            bases.append(base)
    id_tail = sanitize_username(gchat_user_id)[-6:] or digest[:6]
    bases.append(f"gchat_{id_tail}")
    seen: set[str] = set()

    def fresh(name: str) -> bool:
        if name.lower() in seen or not _is_acceptable(name):
            return False
        seen.add(name.lower())
        return True

    for base in bases:
        padded = base if len(base) >= MIN_USERNAME_LENGTH else f"{base}_gc"
        if fresh(padded):
            yield padded
    base = next((b for b in bases if len(b) >= MIN_USERNAME_LENGTH), f"gchat_{id_tail}")
    for i in range(0, len(digest) - 4, 4):
        name = _with_suffix(base, f"_{digest[i : i + 4]}")
        if fresh(name):
            yield name


def google_account_id(sender: ChatUser) -> str | None:
    """The Google account id of a human Chat user (`users/123` -> "123"), else None."""
    match = _GOOGLE_ACCOUNT_ID.fullmatch(sender.name)
    return match.group(1) if match is not None and sender.type == "HUMAN" else None


def placeholder_email(gchat_user_name: str, domain: str) -> str:
    """An address that receives no mail, unique per Chat user, for users without a known email."""
    return f"gchat-{gchat_user_name.rsplit('/', 1)[-1].lower()}@{domain}"


class UserDirectory:
    """Maps Chat senders to Discourse users, creating or linking accounts on first sight."""

    def __init__(
        self,
        store: Store,
        discourse: DiscourseClient,
        chat: GoogleChatClient,
        *,
        api_username: str,
        email_domain: str,
        create_users: bool = True,
        new_user_trust_level: int = 1,
    ) -> None:
        self._store = store
        self._discourse = discourse
        self._chat = chat
        self._api_username = api_username
        self._email_domain = email_domain
        self._create_users = create_users
        self._trust_level = new_user_trust_level
        self._lock = threading.Lock()
        # Members of each space by user name; display names and emails are often missing from a
        # message's sender under user auth (reference §6.3), so one members.list fills them in.
        self._members: dict[str, dict[str, ChatUser]] = {}
        self._asked: set[tuple[str, str]] = set()
        # Set when the forum refuses the Google-login lookup (a non-admin acting user): asking
        # again for every new person would only repeat the 403.
        self._google_lookup_refused = False

    def author_for(self, sender: ChatUser, gchat_space_name: str) -> Author:
        """The Discourse account to post as for `sender`; never raises for a Discourse refusal.

        Raises:
            IdentityConflict: the Google login and the store or the email disagree (nothing is
                linked; the caller parks the item).
        """
        with self._lock:
            link = self._store.user_for_gchat(sender.name)
            if link is not None:
                return Author(link.discourse_username)
            person = self._complete(sender, gchat_space_name)
            try:
                link = self._link_or_create(person)
            except DiscourseRejected as exc:
                logger.warning(
                    "cannot make a Discourse user for %s (%s); posting as %s with attribution",
                    sender.name,
                    exc,
                    self._api_username,
                )
                link = None
            if link is None:
                return Author(self._api_username, attribution=_attribution(person))
            return Author(link.discourse_username)

    def bridge_author_for(self, sender: ChatUser, gchat_space_name: str) -> Author:
        """The API user with an attribution line for `sender` (whose own account is refused)."""
        with self._lock:
            person = self._complete(sender, gchat_space_name)
        return Author(self._api_username, attribution=_attribution(person))

    def known_author(self, sender: ChatUser, gchat_space_name: str) -> Author:
        """Who `sender`'s posts are written as today, without making an account.

        For comparisons (edit detection): never creates or links a user and never writes the
        store. A sender without a link gets what `author_for` gives when no account can be
        had, the API user with an attribution line; naming them may list the space's members
        once (cached), as `author_for` would.
        """
        with self._lock:
            link = self._store.user_for_gchat(sender.name)
        if link is not None:
            return Author(link.discourse_username)
        return self.bridge_author_for(sender, gchat_space_name)

    def _complete(self, sender: ChatUser, gchat_space_name: str) -> ChatUser:
        if sender.display_name and sender.email:
            return sender
        known = self._members.get(gchat_space_name, {}).get(sender.name)
        if known is None and (gchat_space_name, sender.name) not in self._asked:
            # Fetched once per space, and again for a sender who joined after that fetch.
            self._asked.add((gchat_space_name, sender.name))
            try:
                members = self._chat.list_members(gchat_space_name)
            except ChatError as exc:
                logger.warning("cannot list members of %s: %s", gchat_space_name, exc)
                members = []
            self._members[gchat_space_name] = {m.name: m for m in members}
            known = self._members[gchat_space_name].get(sender.name)
        if known is None:
            return sender
        return ChatUser(
            name=sender.name,
            display_name=sender.display_name or known.display_name,
            email=sender.email or known.email,
            type=sender.type,
        )

    def _link_or_create(self, person: ChatUser) -> UserLink | None:
        placeholder = placeholder_email(person.name, self._email_domain)
        email = person.email or placeholder
        candidates = list(username_candidates(person.display_name, person.email, person.name))
        intent = f"user:{person.name}"
        by_google = self._link_by_google_login(person, candidates, intent)
        if by_google is not None:
            return by_google
        if person.email or self._create_users:
            # The placeholder address is looked up too: only the bridge gives it out, so a user
            # holding it is one an earlier run created before it could store the link.
            existing = self._discourse.find_user_by_email(email)
            if existing is not None:
                ours = email == placeholder or (
                    self._store.has_pending_write(intent)
                    and existing.username.lower() in {c.lower() for c in candidates}
                )
                logger.info(
                    "linked %s to existing user %s (created by the bridge: %s)",
                    person.name,
                    existing.username,
                    ours,
                )
                if ours:
                    self._raise_trust_level(existing)  # the crash may have come before it
                link = self._remember(person, existing, created_by_bridge=ours, how="email")
                self._store.finish_write(intent)
                return link
        if not self._create_users:
            return None
        for username in candidates:
            if self._store.discourse_username_taken(username):
                continue
            if self._discourse.get_user(username) is not None:
                continue
            # Recorded before the create: after a crash the email lookup above finds the user
            # and this intent says that the bridge made it.
            self._store.begin_write(intent)
            try:
                created = self._discourse.create_user(
                    name=person.display_name or username,
                    username=username,
                    email=email,
                    password=secrets.token_urlsafe(24),
                    active=True,
                    approved=True,
                )
            except DiscourseRejected as exc:
                # A group of that name, or a race with another creator: try the next candidate.
                logger.info("username %s refused for %s: %s", username, person.name, exc)
                continue
            self._raise_trust_level(created)
            logger.info("created Discourse user %s for %s", created.username, person.name)
            link = self._remember(person, created, created_by_bridge=True, how="created")
            self._store.finish_write(intent)
            return link
        self._store.finish_write(intent)
        return None

    def _link_by_google_login(
        self, person: ChatUser, candidates: list[str], intent: str
    ) -> UserLink | None:
        """Link `person` to the account that signed in with their Google account, if any.

        Raises:
            IdentityConflict: their email is another account's, or that account is linked.
        """
        user = self._find_by_google_login(person)
        if user is None:
            return None
        self._check_email_agrees(person, user)
        # Made by the bridge only after a crash: the person then signed in with Google to the
        # account made for them before its link was stored (Discourse matches logins by email).
        ours = self._store.has_pending_write(intent) and user.username.lower() in {
            c.lower() for c in candidates
        }
        link = self._remember(person, user, created_by_bridge=ours, how="Google login")
        if ours:
            self._raise_trust_level(user)
        self._store.finish_write(intent)
        logger.info(
            "linked %s to %s, who signed in with the same Google account",
            person.name,
            user.username,
        )
        return link

    def _find_by_google_login(self, person: ChatUser) -> DiscourseUser | None:
        """The forum account that signed in with `person`'s Google account, if the forum says.

        One request per person never linked before (the link then answers); none for an id that
        is not a Google account's, or once the forum refused to answer.
        """
        google_id = google_account_id(person)
        if google_id is None or self._google_lookup_refused:
            return None
        try:
            return self._discourse.find_user_by_google_id(google_id)
        except DiscourseAuthError as exc:
            if exc.credentials_invalid:
                raise
            # Only admins may look up logins; a moderator's key still matches by email.
            logger.warning(
                "the forum refuses lookups by Google login (%s); matching people by email only",
                exc,
            )
            self._google_lookup_refused = True
            return None

    def _check_email_agrees(self, person: ChatUser, by_google: DiscourseUser) -> None:
        """Raise IdentityConflict if `person`'s email belongs to another account."""
        if not person.email:
            return
        by_email = self._discourse.find_user_by_email(person.email)
        if by_email is not None and by_email.id != by_google.id:
            raise IdentityConflict(
                f"identity conflict: {person.name} signed in to the forum as "
                f"@{by_google.username}, but {person.email} is @{by_email.username}'s"
            )

    def _raise_trust_level(self, user: DiscourseUser) -> None:
        if self._trust_level <= user.trust_level:
            return
        try:
            self._discourse.set_trust_level(user.id, self._trust_level)
        except DiscourseError as exc:
            # Not fatal: posts still go through with skip_validations; only limits differ.
            logger.warning(
                "cannot raise %s to trust level %d: %s", user.username, self._trust_level, exc
            )

    def _remember(
        self, person: ChatUser, user: DiscourseUser, *, created_by_bridge: bool, how: str
    ) -> UserLink:
        """Store the link; IdentityConflict if the account is another Chat user's already."""
        other = self._store.user_for_discourse(user.username)
        if other is not None and other.gchat_user_name != person.name:
            raise IdentityConflict(
                f"identity conflict: {person.name} is @{user.username} by {how}, "
                f"but @{user.username} is linked to {other.gchat_user_name}"
            )
        try:
            return self._store.link_user(
                gchat_user_name=person.name,
                discourse_username=user.username,
                discourse_user_id=user.id,
                display_name=person.display_name,
                email=person.email,
                created_by_bridge=created_by_bridge,
            )
        except LinkConflict as exc:
            # The same account under another name (renamed), or a link stored meanwhile.
            raise IdentityConflict(f"identity conflict: {person.name}: {exc}") from exc


def _attribution(person: ChatUser) -> str:
    # The name is the Chat user's to choose: escaped, it is never markup in a post the API
    # user writes (`[quote="admin, …"]`, `@group`, HTML).
    return formatting.discourse_attribution(person.display_name or person.name)
