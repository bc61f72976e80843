"""Every rule that recognises the bridge's own writes, on both platforms (DESIGN §3 rule 1).

Role: the one place that says what the bridge's writes look like, so that every direction (the
room sync both ways and the DM sync) recognises them by the same rules:
- in Discourse, a post the bridge wrote from Chat ends with an invisible origin marker
  ``<!-- gchat:spaces/S/messages/M -->``, and a topic it started has an ``external_id`` derived
  from the Chat thread;
- in Google Chat, a message the bridge wrote has a client-assigned id: ``client-dp-<post id>``
  for a forum post (``-r<stamp>`` for a recovered post, ``-p<n>`` for the later parts of a long
  one) and ``client-dc-<chat message id>`` for a Discourse chat message;
- a post's raw is laid out as text, then ``ATTACHMENTS_MARK`` and the embeds, then the marker;
  the content hash of a link covers the text part only, normalised so that markers and the
  invisible separators the converters insert never count as an edit.

Invariants:
- Pure: no I/O, no clock, no logging. These rules must survive restarts and need no cache:
  they are read off the item itself.
- A form written here is recognised here: every id ``client_message_id_for_*`` builds is one
  ``is_bridge_origin`` accepts, and every marker ``origin_marker`` writes is one
  ``find_origin_marker`` finds. Changing a form breaks echo prevention for items written before,
  so forms are only ever added.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from formatting import INVISIBLE
from google_chat_client import ChatMessage

# ---------------------------------------------------------------------------------------------
# Discourse side: the origin marker and the raw layout
# ---------------------------------------------------------------------------------------------

_MESSAGE_NAME_RE = re.compile(r"spaces/[A-Za-z0-9_-]+/messages/[A-Za-z0-9_.-]+")
_MARKER_RE = re.compile(r"<!--\s*gchat:(" + _MESSAGE_NAME_RE.pattern + r")\s*-->")

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
    """The Chat message name of the last origin marker in ``raw``, or None."""
    found = _MARKER_RE.findall(raw)
    return found[-1] if found else None


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
# Chat side: client-assigned message ids
# ---------------------------------------------------------------------------------------------

_CLIENT_POST_RE = re.compile(r"(?:^|/messages/)client-dp-(\d+)$")
_CLIENT_CHAT_RE = re.compile(r"(?:^|/messages/)client-dc-(\d+)$")
# Every client-assigned id the bridge writes starts with one of these (the suffixed forms too).
_BRIDGE_CLIENT_PREFIXES = ("client-dc-", "client-dp-")


def _client_id(prefix: str, number: int) -> str:
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"id must be a non-negative int, got {number!r}")
    # "client-" + prefix + digits: <= 63 chars of [a-z0-9-] for any id below 10**50.
    return f"client-{prefix}-{number}"


def client_message_id_for_post(discourse_post_id: int) -> str:
    """Chat ``messageId`` for the copy of a Discourse post ("client-dp-<id>")."""
    return _client_id("dp", discourse_post_id)


def client_message_id_for_recovered_post(discourse_post_id: int, stamp: int) -> str:
    """Chat ``messageId`` for the copy of a recovered post ("client-dp-<id>-r<stamp>").

    A deleted client-assigned id is not reusable in Chat, so a post recovered after its copy was
    deleted gets a new, deterministic one (`stamp`: the post's edit time in epoch seconds).
    """
    return f"{client_message_id_for_post(discourse_post_id)}-r{stamp}"


def client_message_id_for_part(first_part_client_id: str, index: int) -> str:
    """Chat ``messageId`` of part `index` (2, 3, …) of a post split for Chat's size limit."""
    return f"{first_part_client_id}-p{index}"


def client_message_id_for_chat_message(discourse_chat_message_id: int) -> str:
    """Chat ``messageId`` for the copy of a Discourse chat message ("client-dc-<id>")."""
    return _client_id("dc", discourse_chat_message_id)


def post_id_from_client_message_id(client_id: str) -> int | None:
    """Inverse of client_message_id_for_post (a full message name works too); None if not ours."""
    m = _CLIENT_POST_RE.search(client_id or "")
    return int(m.group(1)) if m else None


def chat_message_id_from_client_message_id(client_id: str) -> int | None:
    """Inverse of client_message_id_for_chat_message; None if not ours."""
    m = _CLIENT_CHAT_RE.search(client_id or "")
    return int(m.group(1)) if m else None


def is_bridge_origin(message: ChatMessage) -> bool:
    """True for a Chat message the bridge itself created (DESIGN §3 rule 1), in any space.

    One rule for rooms and DMs alike: an id of any form above means the bridge wrote it, whether
    it copied a forum post (`client-dp-…`, with its `-r`/`-p` suffixes) or a chat message
    (`client-dc-…`), so neither poll mirrors it back.
    """
    client_id = message.client_assigned_message_id
    if not client_id:
        return False
    return post_id_from_client_message_id(client_id) is not None or client_id.startswith(
        _BRIDGE_CLIENT_PREFIXES
    )


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
