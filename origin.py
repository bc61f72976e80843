"""Every rule that recognises the bridge's own writes, on both platforms (DESIGN §3 rule 1).

Role: the one place that says what the bridge's writes look like, so that every direction (the
room sync both ways and the DM sync) recognises them by the same rules:
- in Discourse, a post the bridge wrote from Chat ends with an invisible origin marker
  ``<!-- gchat:spaces/S/messages/M -->``, and a topic it started has an ``external_id`` derived
  from the Chat thread. A marker counts only at the very end of the raw of a post by a forum
  account the bridge writes that Chat message as (`copied_from`): anyone can type one;
- in Google Chat, a message the bridge wrote has a client-assigned id of its forms, keyed with a
  secret of the store (`ClientIds`: ``client-dp-<post id>-k<tag>`` for a forum post, with
  ``-r<stamp>`` for a recovered post, ``-p<n>`` for the later parts of a long one;
  ``client-dc-<chat message id>-k<tag>`` for a Discourse chat message; the legacy unkeyed forms
  ``client-dp-<post id>…`` stay the bridge's for reading), AND a sender the bridge writes as
  (`BridgeIdentity`): anyone in a space can create a message under an unused id;
- a post's raw is laid out as text, then ``ATTACHMENTS_MARK`` and the embeds, then the marker;
  the content hash of a link covers the text part only, normalised so that markers and the
  invisible separators the converters insert never count as an edit.

Invariants:
- Pure: no I/O, no clock, no logging. These rules must survive restarts and need no cache:
  they are read off the item itself (and the key and senders handed in).
- A form written here is recognised here: every id `ClientIds` builds is one
  ``is_bridge_origin`` accepts from a sender of the bridge, and every marker ``origin_marker``
  writes is one ``trailing_origin_marker`` finds at the end of the raw. Changing a form breaks
  echo prevention for items written before, so forms are only ever added; nothing parses a
  Discourse id back out of a client id (the store's links say what a message copies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

from formatting import INVISIBLE
from google_chat_client import ChatMessage

# ---------------------------------------------------------------------------------------------
# Discourse side: the origin marker and the raw layout
# ---------------------------------------------------------------------------------------------

_MESSAGE_NAME_RE = re.compile(r"spaces/[A-Za-z0-9_-]+/messages/[A-Za-z0-9_.-]+")
_MARKER_RE = re.compile(r"<!--\s*gchat:(" + _MESSAGE_NAME_RE.pattern + r")\s*-->")
_TRAILING_MARKER_RE = re.compile(_MARKER_RE.pattern + r"\s*\Z")

# Separates a post's text from the embeds of its attachments (invisible once cooked).
ATTACHMENTS_MARK = "<!-- gchat-attachments -->"


def origin_marker(gchat_message_name: str) -> str:
    """The invisible marker appended to a Discourse post's raw (DESIGN §3 rule 1).

    Raises:
        ValueError: the name is not a Chat message name.
    """
    if not _MESSAGE_NAME_RE.fullmatch(gchat_message_name):
        raise ValueError(f"not a Chat message name: {gchat_message_name!r}")
    return f"<!-- gchat:{gchat_message_name} -->"


def find_origin_marker(raw: str) -> str | None:
    """The Chat message name of the last origin marker anywhere in ``raw``, or None.

    Anyone can type a marker: this is no evidence of origin (see `copied_from`).
    """
    found = _MARKER_RE.findall(raw)
    return found[-1] if found else None


def trailing_origin_marker(raw: str) -> str | None:
    """The Chat message name of the origin marker that ends ``raw`` (blanks aside), or None.

    The one place the bridge puts its marker; anywhere else a marker is text someone typed.
    """
    match = _TRAILING_MARKER_RE.search(raw)
    return match.group(1) if match else None


def copied_from(raw: str | None, author: str, expected_authors: Collection[str]) -> str | None:
    """The Chat message a post is the bridge's copy of, or None.

    Its trailing marker, counted only for a post by a forum account the bridge writes that
    message as (`expected_authors`: the linked account of the message's sender, the API user
    for attributed posts), compared case-insensitively as Discourse compares usernames. A forum
    user who types a marker, at the end or anywhere, writes a post like any other.
    """
    name = trailing_origin_marker(raw or "")
    if name is None or author.lower() not in {a.lower() for a in expected_authors}:
        return None
    return name


def strip_origin_marker(raw: str) -> str:
    """``raw`` without origin markers (and without the whitespace they leave at the end)."""
    stripped = _MARKER_RE.sub("", raw)
    return stripped.rstrip() if stripped != raw else raw


def text_part_of_raw(raw: str) -> str:
    """The text part of a post's raw (what the link's content hash covers)."""
    return strip_origin_marker(raw.split(ATTACHMENTS_MARK, 1)[0]).strip()


def attachments_part_of_raw(raw: str) -> str:
    """The attachment embeds of a post's raw, without the mark and the origin marker."""
    if ATTACHMENTS_MARK not in raw:
        return ""
    return strip_origin_marker(raw.split(ATTACHMENTS_MARK, 1)[1]).strip()


_THREAD_NAME_RE = re.compile(r"spaces/([A-Za-z0-9_]+)/threads/([A-Za-z0-9_]+)")
_EXTERNAL_ID_MAX = 50  # Discourse EXTERNAL_ID_MAX_LENGTH, format /\A[\w-]+\z/


def external_id_for_thread(gchat_thread_name: str) -> str:
    """Deterministic Discourse topic ``external_id`` for a Chat thread.

    Discourse compares external ids case-insensitively while Chat ids are case-sensitive, so the
    readable form carries a short hash of the exact name: "gc-<space>-<thread>-<10 hex>". Names
    that do not fit in 50 characters (or have unexpected characters) become "gc-<47 hex>".
    """
    digest = hashlib.sha256(gchat_thread_name.encode("utf-8")).hexdigest()
    m = _THREAD_NAME_RE.fullmatch(gchat_thread_name)
    if m:
        readable = f"gc-{m.group(1)}-{m.group(2)}-{digest[:10]}"
        if len(readable) <= _EXTERNAL_ID_MAX:
            return readable
    return "gc-" + digest[: _EXTERNAL_ID_MAX - 3]


# ---------------------------------------------------------------------------------------------
# Chat side: client-assigned message ids, and who wrote a message
# ---------------------------------------------------------------------------------------------

# Every client-assigned id the bridge has ever written starts with one of these: "dp" for the
# copy of a forum post (and its later parts), "dc" for the copy of a Discourse chat message.
_BRIDGE_CLIENT_PREFIXES = ("client-dp-", "client-dc-")
# The predictable forms written before the ids were keyed: still the bridge's when its sender
# is, still addressed by the links and post parts that name them, never written anew.
_LEGACY_CLIENT_RE = re.compile(r"client-(?:dp-\d+(?:-r\d+)?|dc-\d+)(?:-p\d+)?")
_CLIENT_ID_MAX = 63  # Chat: "client-", then lowercase letters, digits and hyphens; 63 at most
_TAG_HEX = 16  # 64 bits of the HMAC: a squatter would have to guess them, one write a second
_KEYED_RE = re.compile(r"client-((?:dp|dc)-[a-z0-9-]+)-k([0-9a-f]{16})")
_KEY_MIN_BYTES = 16


def is_legacy_client_id(client_id: str) -> bool:
    """True for an id of the old, predictable forms (``client-dp-<id>``, ``-r…``, ``-p…``)."""
    return _LEGACY_CLIENT_RE.fullmatch(client_id) is not None


def _non_negative(number: int) -> int:
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"id must be a non-negative int, got {number!r}")
    return number


@dataclass(frozen=True, slots=True)
class ClientIds:
    """The client-assigned ids the bridge gives its Chat messages, keyed with a secret.

    An id reads ``client-<label>-k<tag>``: the label says what the message copies (``dp-<post
    id>``, ``dp-<post id>-r<stamp>`` for a recovered post, ``…-p<n>`` for part n of a long one,
    ``…-a<k>`` for the k-th stand-in of an id someone else took, ``dc-<chat message id>``), the
    tag is the first 64 bits of HMAC-SHA256(key, label). The label keeps ids readable (logs,
    the reliability checker); the tag makes them unpredictable, so nobody can take an id before
    the bridge writes it. The same label always gives the same id: a retry after a crash finds
    the earlier write. `key` (the store's `client_id_key`) never appears in a repr.
    """

    key: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < _KEY_MIN_BYTES:
            raise ValueError(f"the client id key must have at least {_KEY_MIN_BYTES} bytes")

    def _tag(self, label: str) -> str:
        return hmac.new(self.key, label.encode("ascii"), hashlib.sha256).hexdigest()

    def _keyed(self, label: str) -> str:
        readable = f"client-{label}-k{self._tag(label)[:_TAG_HEX]}"
        if len(readable) <= _CLIENT_ID_MAX:
            return readable
        # Absurdly long numbers: the kind, then as much of the HMAC as fits (not verifiable
        # without the label, which only `is_keyed` would need).
        head = f"client-{label[:2]}-h"
        return head + self._tag(label)[: _CLIENT_ID_MAX - len(head)]

    def _label(self, client_id: str) -> str:
        """What an id of ours copies: its label (a legacy or overlong id stands for itself)."""
        match = _KEYED_RE.fullmatch(client_id)
        if match and hmac.compare_digest(match.group(2), self._tag(match.group(1))[:_TAG_HEX]):
            return match.group(1)
        return client_id.removeprefix("client-")

    def for_post(self, discourse_post_id: int) -> str:
        """The id of the copy of a Discourse post (label ``dp-<id>``)."""
        return self._keyed(f"dp-{_non_negative(discourse_post_id)}")

    def for_recovered_post(self, discourse_post_id: int, stamp: int) -> str:
        """The id of the copy of a recovered post (label ``dp-<id>-r<stamp>``).

        A deleted client-assigned id is not reusable in Chat, so a post recovered after its
        copy was deleted gets a new, deterministic one (`stamp`: the post's edit time in epoch
        seconds).
        """
        return self._keyed(f"dp-{_non_negative(discourse_post_id)}-r{_non_negative(stamp)}")

    def for_part(self, first_part_client_id: str, index: int) -> str:
        """The id of part `index` (2, 3, …) of a post split for Chat's size limit.

        Parts of a legacy first id keep the legacy form, so that the parts written before the
        ids were keyed are found again (a post that grows moves its parts to `rebased` first).
        """
        if is_legacy_client_id(first_part_client_id):
            return f"{first_part_client_id}-p{index}"
        return self._keyed(f"{self._label(first_part_client_id)}-p{_non_negative(index)}")

    def for_chat_message(self, discourse_chat_message_id: int) -> str:
        """The id of the copy of a Discourse chat message (label ``dc-<id>``)."""
        return self._keyed(f"dc-{_non_negative(discourse_chat_message_id)}")

    def alternates(self, client_id: str, count: int = 3) -> tuple[str, ...]:
        """Stand-ins, in order, for an id someone else's message holds (``…-a1``, ``-a2``, …).

        Deterministic, so that a retry after a crash tries the same ones and finds its own
        earlier write among them.
        """
        label = self._label(client_id)
        return tuple(self._keyed(f"{label}-a{k}") for k in range(1, count + 1))

    def rebased(self, client_id: str) -> str:
        """The keyed id standing for a legacy one (``client-dp-7`` → `for_post(7)`)."""
        return self._keyed(self._label(client_id)) if is_legacy_client_id(client_id) else client_id

    def is_keyed(self, client_id: str) -> bool:
        """True for an id made with this key (only the bridge can make one)."""
        match = _KEYED_RE.fullmatch(client_id)
        return match is not None and hmac.compare_digest(
            match.group(2), self._tag(match.group(1))[:_TAG_HEX]
        )


@dataclass(frozen=True, slots=True)
class BridgeIdentity:
    """What tells the bridge's own Chat messages apart: its ids and the senders it writes as.

    `senders` holds the Chat users the bridge writes as (its own Google account, once learnt;
    delegated authors may join it): a message is the bridge's only when it has the bridge's id
    form AND one of these senders, so an id taken by someone else makes a human message.
    """

    ids: ClientIds
    senders: frozenset[str] = frozenset()

    @classmethod
    def running_as(
        cls, ids: ClientIds, account: str | None, delegated: frozenset[str] = frozenset()
    ) -> BridgeIdentity:
        """The bridge that runs as the Google user `account` (None: not learnt yet) and writes
        forum authors' posts as the Workspace users `delegated` (domain-wide delegation).

        Until its own account is learnt, only ids made with its key count (whoever sent them):
        naming the delegated senders alone would make its own first writes look human.
        """
        if not account:
            return cls(ids)
        return cls(ids, frozenset({account, *delegated}))

    def wrote(self, message: ChatMessage) -> bool:
        return is_bridge_origin(message, self)


def is_bridge_origin(message: ChatMessage, bridge: BridgeIdentity) -> bool:
    """True for a Chat message the bridge itself created (DESIGN §3 rule 1), in any space.

    One rule for rooms and DMs alike: a client-assigned id of the bridge's forms (``client-dp-…``
    for a forum post's copy and its parts, ``client-dc-…`` for a chat message's, keyed or of the
    legacy forms) and a sender the bridge writes as. Anyone in a space can create a message
    under any unused id, so the id alone proves nothing. Before the bridge has learnt its own
    account (it has written nothing yet, or crashed right after its first write) only an id
    made with its key counts.
    """
    client_id = message.client_assigned_message_id
    if not client_id or not client_id.startswith(_BRIDGE_CLIENT_PREFIXES):
        return False
    if bridge.senders:
        return message.sender.name in bridge.senders
    return bridge.ids.is_keyed(client_id)


# ---------------------------------------------------------------------------------------------
# Content hashes: what the bridge last wrote or saw, for edit and echo detection
# ---------------------------------------------------------------------------------------------


def normalize_for_hash(text: str) -> str:
    """The text content_hash hashes: markers and invisible characters removed, whitespace tidy."""
    text = _MARKER_RE.sub("", text)
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    # The converters insert invisible separators (formatting.INVISIBLE) that a round trip
    # through the other platform may drop: they must not read as an edit.
    for c in INVISIBLE:
        text = text.replace(c, "")
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def content_hash(text: str) -> str:
    """sha256 hex of the normalised text, for edit and echo detection."""
    return hashlib.sha256(normalize_for_hash(text).encode("utf-8")).hexdigest()
