"""The bridge's durable state: one SQLite file behind one ``Store`` class.

Role: ``db.py`` owns every SQL statement of the project. Callers see methods and frozen
dataclass records, never a cursor or a SQL string.

What it holds (DESIGN §4): space ↔ category (subcategories the bridge created), DM space ↔ chat
channel, thread ↔ topic, message ↔ post, DM message ↔ chat message, Google user ↔ Discourse user,
sync state in typed tables (each Chat poll's place in a space, each DM channel's reader and
high-water id, the Discourse high-water post id, posts split into several Chat messages, the last
post version mirrored, the highest post number handled per topic), the webhook inbox, failures of
single items (retried, then parked), write intents (creates sent but not yet linked, for crash
reconciliation), the secret key of the Chat client ids (``client_id_key``), and status values for
``status`` and ``/readyz`` under the ``StatusKey`` names.
No other module builds a state key: each piece of state has its own typed method.

Invariants:
- Every link table has UNIQUE on both sides' ids, so each link is one-to-one. Linking the same
  pair twice is a no-op; linking either side to a different partner raises ``LinkConflict``.
- A message link's (thread, topic) pair must be a linked thread ↔ topic pair, and a chat message
  link's (space, channel) pair must be a linked DM space ↔ channel pair (foreign keys);
  unlinking the thread or channel removes its message links.
- State that is done goes with its link: a post's parts and version rows with its message link,
  a topic's seen mark with its thread link (triggers, so a thread's cascade prunes them too), a
  DM channel's reader and high-water id with its channel link (foreign key). State that is still
  needed (write intents, the Chat polls' cursors, a topic seen but never bridged) stays.
- The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS`` are applied in order, all
  pending ones in one transaction, when the store opens.
- One ``threading.RLock`` is held around every statement, so one connection is shared safely
  between the webhook thread, the inbox worker and the scheduler (``check_same_thread=False``).
  ``transaction()`` takes the same lock; methods called inside it join the caller's transaction.
- Times are stored as fixed-width ISO-8601 UTC strings ("2024-05-01T12:00:00.000000Z"), so that
  comparing the strings compares the times. Naive datetimes are refused.
- Inbox: an event's ``dedupe_key`` is accepted once (until its row is pruned). ``due_events``
  hands out only the oldest pending event of each ``ordering_key``, and hands it out again on
  every call until it is marked done or dead; it assumes ONE worker drains the inbox.
- Data at rest: the file is created 0600 (its -wal and -shm inherit the mode); a handled
  inbox row's body is wiped after the retention and the row deleted after
  ``ROW_LIFETIME_FACTOR`` times it (``expire_inbox``); ``secure_delete`` zeroes what is
  overwritten or deleted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

logger = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS",
    "ROW_LIFETIME_FACTOR",
    "ChatMessageLink",
    "ChatMessageVersion",
    "ChatPollState",
    "ChatSubscriptionState",
    "DmChannelState",
    "Failure",
    "InboxEvent",
    "InboxExpiry",
    "LinkConflict",
    "MessageLink",
    "Origin",
    "PollKind",
    "PostParts",
    "StatusKey",
    "Store",
    "StoreError",
    "ThreadLink",
    "UserLink",
]

Origin = Literal["gchat", "discourse"]
_ORIGINS = ("gchat", "discourse")
# Which Chat poll a space's poll state belongs to: the room poll (spaces mapped to categories)
# or the DM poll (DMs and group chats mapped to chat channels) keep their places apart.
PollKind = Literal["room", "dm"]


class StatusKey(StrEnum):
    """The names of the status values (the one place they are spelled)."""

    LAST_POLL = "last_poll"  # JSON summary of the last room poll cycle
    LAST_DM_POLL = "last_dm_poll"  # JSON summary of the last DM poll cycle
    CYCLE_ERROR = "last_cycle_error"  # why the last scheduler cycle failed, or ""
    BRIDGE_ACCOUNT = "gchat_bridge_account"  # the Google user the bridge runs as
    READYZ_PROBE = "readyz_probe"  # when /readyz last proved the database writable


# An inbox row outlives its body (wiped after the retention) by this factor: its dedupe key keeps
# recognising redeliveries, and a dead letter waits this long for `retry` (``expire_inbox``).
ROW_LIFETIME_FACTOR = 4

# Milliseconds SQLite waits for another connection's lock (e.g. `python main.py status` reading
# while the daemon writes) before giving up with "database is locked".
BUSY_TIMEOUT_MS = 10_000


class StoreError(Exception):
    """The state database cannot be used (newer schema, broken migration, bad argument)."""


class LinkConflict(StoreError):
    """One side of a link is already linked to a different partner."""

    def __init__(self, kind: str, wanted: tuple[object, object], existing: tuple[object, object]):
        self.kind = kind
        self.wanted = wanted
        self.existing = existing
        super().__init__(
            f"cannot link {kind} {wanted[0]!r} <-> {wanted[1]!r}: already linked as "
            f"{existing[0]!r} <-> {existing[1]!r}"
        )


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE space_category (
    gchat_space_name      TEXT    PRIMARY KEY,
    discourse_category_id INTEGER NOT NULL UNIQUE,
    created_at            TEXT    NOT NULL
);
CREATE TABLE dm_channel (
    gchat_space_name     TEXT    PRIMARY KEY,
    discourse_channel_id INTEGER NOT NULL UNIQUE,
    created_at           TEXT    NOT NULL,
    UNIQUE (gchat_space_name, discourse_channel_id)
);
CREATE TABLE thread_topic (
    gchat_thread_name  TEXT    PRIMARY KEY,
    discourse_topic_id INTEGER NOT NULL UNIQUE,
    gchat_space_name   TEXT    NOT NULL,
    created_at         TEXT    NOT NULL,
    UNIQUE (gchat_thread_name, discourse_topic_id)
);
CREATE INDEX thread_topic_by_space ON thread_topic (gchat_space_name);
CREATE TABLE message_post (
    gchat_message_name TEXT    PRIMARY KEY,
    discourse_post_id  INTEGER NOT NULL UNIQUE,
    gchat_thread_name  TEXT    NOT NULL,
    discourse_topic_id INTEGER NOT NULL,
    origin             TEXT    NOT NULL CHECK (origin IN ('gchat', 'discourse')),
    content_hash       TEXT    NOT NULL,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    FOREIGN KEY (gchat_thread_name, discourse_topic_id)
        REFERENCES thread_topic (gchat_thread_name, discourse_topic_id) ON DELETE CASCADE
);
CREATE INDEX message_post_by_topic ON message_post (discourse_topic_id);
CREATE INDEX message_post_by_thread ON message_post (gchat_thread_name);
CREATE TABLE chat_message_link (
    gchat_message_name        TEXT    PRIMARY KEY,
    discourse_chat_message_id INTEGER NOT NULL UNIQUE,
    gchat_space_name          TEXT    NOT NULL,
    discourse_channel_id      INTEGER NOT NULL,
    origin                    TEXT    NOT NULL CHECK (origin IN ('gchat', 'discourse')),
    content_hash              TEXT    NOT NULL,
    created_at                TEXT    NOT NULL,
    updated_at                TEXT    NOT NULL,
    FOREIGN KEY (gchat_space_name, discourse_channel_id)
        REFERENCES dm_channel (gchat_space_name, discourse_channel_id) ON DELETE CASCADE
);
CREATE INDEX chat_message_link_by_channel ON chat_message_link (discourse_channel_id);
CREATE TABLE user_link (
    gchat_user_name          TEXT    PRIMARY KEY,
    discourse_username       TEXT    NOT NULL,
    -- Discourse usernames are unique case-insensitively; Python's str.lower() fills this column
    -- because SQLite's NOCASE folds ASCII only.
    discourse_username_lower TEXT    NOT NULL UNIQUE,
    discourse_user_id        INTEGER UNIQUE,
    display_name             TEXT,
    email                    TEXT,
    created_by_bridge        INTEGER NOT NULL CHECK (created_by_bridge IN (0, 1)),
    created_at               TEXT    NOT NULL,
    updated_at               TEXT    NOT NULL
);
CREATE TABLE cursor (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE inbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT,
    event_type      TEXT    NOT NULL,
    event_name      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    dedupe_key      TEXT    NOT NULL UNIQUE,
    ordering_key    TEXT    NOT NULL,
    received_at     TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'done', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    last_error      TEXT,
    finished_at     TEXT
);
CREATE INDEX inbox_pending ON inbox (state, ordering_key, id);
CREATE TABLE failure (
    direction       TEXT    NOT NULL,
    item_key        TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    first_failed_at TEXT    NOT NULL,
    last_failed_at  TEXT    NOT NULL,
    next_attempt_at TEXT    NOT NULL,
    parked          INTEGER NOT NULL DEFAULT 0 CHECK (parked IN (0, 1)),
    PRIMARY KEY (direction, item_key)
);
-- Remote writes that were started but not yet confirmed by a link: after a crash, only these
-- need the (costly) reconciliation scan of the other side before being written again.
CREATE TABLE write_intent (
    item_key   TEXT PRIMARY KEY,
    started_at TEXT NOT NULL
);
CREATE TABLE status (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""

_SCHEMA_V2 = """
-- Where each Chat poll stands in a space (the room poll and the DM poll keep rows apart).
CREATE TABLE chat_poll (
    gchat_space_name  TEXT    NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('room', 'dm')),
    -- createTime of the newest message handled, exactly as Chat sent it: it may carry
    -- nanoseconds, which a parsed time would lose.
    last_message_time TEXT,
    -- The space's lastActiveTime at its last read; NULL: unknown, read the space next cycle.
    last_active_time  TEXT,
    -- 1: the last read found no message, and Chat reported no lastActiveTime.
    never_active      INTEGER NOT NULL DEFAULT 0 CHECK (never_active IN (0, 1)),
    updated_at        TEXT    NOT NULL,
    PRIMARY KEY (gchat_space_name, kind),
    CHECK (never_active = 0 OR last_active_time IS NULL)
);
-- What the Discourse chat catch-up needs of a linked DM channel; goes with the channel's link.
CREATE TABLE dm_channel_state (
    discourse_channel_id INTEGER PRIMARY KEY
                         REFERENCES dm_channel (discourse_channel_id) ON DELETE CASCADE,
    reader               TEXT,
    high_water           INTEGER,
    updated_at           TEXT    NOT NULL
);
-- The Discourse catch-up pull: one row, absent until the first start.
CREATE TABLE discourse_poll (
    id                    INTEGER PRIMARY KEY CHECK (id = 1),
    high_water_post_id    INTEGER NOT NULL,
    -- The high-water id of the first start: posts up to it are history, never replayed.
    history_start_post_id INTEGER NOT NULL DEFAULT 0,
    updated_at            TEXT    NOT NULL
);
-- Posts split into several Chat messages (or written under another client id); a post of one
-- message under its usual id has no row.
CREATE TABLE post_parts (
    discourse_post_id INTEGER PRIMARY KEY,
    client_id         TEXT    NOT NULL,
    part_count        INTEGER NOT NULL CHECK (part_count >= 1),
    updated_at        TEXT    NOT NULL
);
CREATE TABLE post_version (
    discourse_post_id INTEGER PRIMARY KEY,
    version           INTEGER NOT NULL,
    updated_at        TEXT    NOT NULL
);
CREATE TABLE topic_seen (
    discourse_topic_id INTEGER PRIMARY KEY,
    post_number        INTEGER NOT NULL,
    updated_at         TEXT    NOT NULL
);
-- Triggers rather than foreign keys: a post's parts are recorded before its link is (the link
-- comes last, DESIGN §3), and a topic is seen whether or not it is bridged.
CREATE TRIGGER message_post_prune AFTER DELETE ON message_post BEGIN
    DELETE FROM post_parts WHERE discourse_post_id = OLD.discourse_post_id;
    DELETE FROM post_version WHERE discourse_post_id = OLD.discourse_post_id;
END;
CREATE TRIGGER thread_topic_prune AFTER DELETE ON thread_topic BEGIN
    DELETE FROM topic_seen WHERE discourse_topic_id = OLD.discourse_topic_id;
END;
"""


def _upsert_sql(table: str, keys: Sequence[str], values: Sequence[str]) -> str:
    """INSERT of ``keys`` + ``values`` that updates ``values`` when the keys exist already.

    Table and column names come from this module's constants, never from caller input.
    """
    columns = [*keys, *values]
    updates = ", ".join(f"{column} = excluded.{column}" for column in values)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


def _parse_active(value: str) -> dict[str, object]:
    """A v1 ``*_active`` value as chat_poll columns."""
    if value == "never-active":
        return {"last_active_time": None, "never_active": 1}
    # "": forgotten (``retry`` rewound the space), so the space is read next cycle.
    moment = _ts(datetime.fromisoformat(value)) if value else None
    return {"last_active_time": moment, "never_active": 0}


# A row of a typed table: (table, its key columns and values, other columns and values).
_Target = tuple[str, tuple[tuple[str, object], ...], dict[str, object]]


def _cursor_target(key: str, value: str) -> _Target | None:
    """Where one row of the v1 ``cursor`` table goes; None for a key of no known shape.

    Raises:
        ValueError, KeyError, TypeError, StoreError: the value does not fit its key's shape.
    """
    prefix, _, rest = key.partition(":")
    kind = "dm" if prefix.startswith("gchat_dm_") else "room"
    if prefix in ("gchat_cursor", "gchat_dm_cursor") and rest and value:
        space = (("gchat_space_name", rest), ("kind", kind))
        return "chat_poll", space, {"last_message_time": value}
    if prefix in ("gchat_active", "gchat_dm_active") and rest:
        space = (("gchat_space_name", rest), ("kind", kind))
        return "chat_poll", space, _parse_active(value)
    if prefix == "discourse_chat_reader" and rest:
        return "dm_channel_state", (("discourse_channel_id", int(rest)),), {"reader": value}
    if prefix == "discourse_chat_high_water" and rest:
        channel = (("discourse_channel_id", int(rest)),)
        return "dm_channel_state", channel, {"high_water": int(value)}
    if prefix == "discourse_high_water_post_id" and not rest:
        return "discourse_poll", (("id", 1),), {"high_water_post_id": int(value)}
    if prefix == "discourse_first_high_water_post_id" and not rest:
        return "discourse_poll", (("id", 1),), {"history_start_post_id": int(value)}
    if prefix == "discourse_post_parts" and rest:
        parts = json.loads(value)
        columns = {"client_id": str(parts["client_id"]), "part_count": int(parts["count"])}
        return "post_parts", (("discourse_post_id", int(rest)),), columns
    if prefix == "discourse_post_version" and rest:
        return "post_version", (("discourse_post_id", int(rest)),), {"version": int(value)}
    if prefix == "discourse_topic_seen" and rest:
        return "topic_seen", (("discourse_topic_id", int(rest)),), {"post_number": int(value)}
    return None


def _move_cursor_rows(conn: sqlite3.Connection) -> None:
    """Schema 2: the rows of v1's untyped ``cursor`` table into typed tables, then drop it.

    A row of an unknown key, of a value its key's shape cannot hold, or of a DM channel that is
    not linked is dropped with a warning: nothing would read it, and every known kind of state
    is rebuilt when missing (a poll reads its space again, a high-water id is set anew).
    """
    for statement in _statements(_SCHEMA_V2):
        conn.execute(statement)
    rows = conn.execute("SELECT key, value, updated_at FROM cursor ORDER BY key").fetchall()
    # Two keys may fill one row (a space's cursor and its active time): gather, then write.
    targets: dict[tuple[str, tuple[tuple[str, object], ...]], dict[str, object]] = {}
    sources: dict[tuple[str, tuple[tuple[str, object], ...]], list[str]] = {}
    for key, value, updated_at in rows:
        try:
            target = _cursor_target(str(key), str(value))
        except (ValueError, KeyError, TypeError, StoreError) as exc:
            logger.warning("migration drops state %r = %r: %s", key, value, exc)
            continue
        if target is None:
            logger.warning("migration drops state %r = %r: not a known key", key, value)
            continue
        table, keys, columns = target
        row = targets.setdefault((table, keys), {})
        row.update(columns)
        row["updated_at"] = max(str(row.get("updated_at", "")), str(updated_at))
        sources.setdefault((table, keys), []).append(str(key))
    moved = 0
    for (table, keys), columns in targets.items():
        sql = _upsert_sql(table, [name for name, _ in keys], list(columns))
        try:
            conn.execute(sql, (*(v for _, v in keys), *columns.values()))
        except sqlite3.IntegrityError as exc:
            # A DM channel that is not linked, or a first high-water id without the current one.
            logger.warning("migration drops state %s: %s", ", ".join(sources[table, keys]), exc)
            continue
        moved += len(sources[table, keys])
    logger.info("migration moved %d of %d state rows out of the cursor table", moved, len(rows))
    conn.execute("DROP TABLE cursor")


def _add_client_id_key(conn: sqlite3.Connection) -> None:
    """Schema 4: one random secret, made once, keying the client ids of Chat messages.

    Ids derived from it cannot be guessed, so nobody can create a message under the id of a
    forum post's copy before the bridge does (origin.ClientIds). It never changes: the ids of
    messages already written are derived from it again on a retry.
    """
    conn.execute(
        "CREATE TABLE client_id_key ("
        " id INTEGER PRIMARY KEY CHECK (id = 1),"
        " key BLOB NOT NULL,"
        " created_at TEXT NOT NULL)"
    )
    conn.execute(
        "INSERT INTO client_id_key (id, key, created_at) VALUES (1, ?, ?)",
        (secrets.token_bytes(32), _ts(_utcnow())),
    )


_SCHEMA_V5 = """
CREATE TABLE chat_subscription (
    gchat_space_name TEXT PRIMARY KEY,
    subscription_name TEXT,
    state TEXT NOT NULL,
    suspension_reason TEXT,
    expire_time TEXT,
    events_seen_until TEXT,
    replay_due INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE chat_message_version (
    gchat_message_name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
"""

_SCHEMA_V6 = """
CREATE TABLE delegated_sender (
    gchat_user_name TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE written_as (
    gchat_message_name TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE delegation_fallback (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_detail TEXT,
    updated_at TEXT NOT NULL
);
"""


# Ordered (version, description, step): a step is SQL, or a function run on the connection in
# the migration's transaction (for data SQL cannot parse). Append only: never edit a released
# step, add a new one.
MIGRATIONS: tuple[tuple[int, str, str | Callable[[sqlite3.Connection], None]], ...] = (
    (1, "links, users, cursors, inbox, failures and status", _SCHEMA_V1),
    (2, "typed sync state instead of the cursor table, pruned with its links", _move_cursor_rows),
    (
        3,
        "the Discourse time of each post's last mirrored edit (older edits are skipped)",
        "ALTER TABLE post_version ADD COLUMN discourse_updated_at TEXT;",
    ),
    (4, "a secret key for the client-assigned ids of Chat messages", _add_client_id_key),
    (5, "Workspace Events subscriptions and the Chat message versions events brought", _SCHEMA_V5),
    (6, "forum posts written in Chat as their authors (domain-wide delegation)", _SCHEMA_V6),
)


def _statements(sql: str) -> Iterator[str]:
    """Split a script into complete statements (executescript would COMMIT our transaction)."""
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise StoreError(f"incomplete SQL statement in a migration: {buffer.strip()[:80]!r}")


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise StoreError(f"naive datetime {moment!r}: pass an aware datetime (UTC)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _subscription_state(row: sqlite3.Row) -> ChatSubscriptionState:
    return ChatSubscriptionState(
        gchat_space_name=row["gchat_space_name"],
        state=row["state"],
        subscription_name=row["subscription_name"],
        suspension_reason=row["suspension_reason"],
        expire_time=_opt_dt(row["expire_time"]),
        events_seen_until=_opt_dt(row["events_seen_until"]),
        replay_due=bool(row["replay_due"]),
        attempts=int(row["attempts"]),
        next_attempt_at=_opt_dt(row["next_attempt_at"]),
        last_error=row["last_error"],
    )


def _opt_dt(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


_R = TypeVar("_R", bound="DataclassInstance")  # a record built by `_record`


@dataclass(frozen=True, slots=True)
class ThreadLink:
    gchat_thread_name: str
    discourse_topic_id: int
    gchat_space_name: str


@dataclass(frozen=True, slots=True)
class MessageLink:
    gchat_message_name: str
    discourse_post_id: int
    gchat_thread_name: str
    discourse_topic_id: int
    origin: Origin  # the side the content was first written on
    content_hash: str  # hash of what the bridge last wrote or saw, for edit/echo detection


@dataclass(frozen=True, slots=True)
class ChatMessageLink:
    gchat_message_name: str
    discourse_chat_message_id: int
    gchat_space_name: str
    discourse_channel_id: int
    origin: Origin
    content_hash: str


@dataclass(frozen=True, slots=True)
class UserLink:
    gchat_user_name: str  # "users/123"
    discourse_username: str
    discourse_user_id: int | None
    display_name: str | None
    email: str | None
    created_by_bridge: bool  # True: nothing this user writes in Discourse goes back to Chat


@dataclass(frozen=True, slots=True)
class InboxEvent:
    id: int
    event_id: str | None
    event_type: str  # X-Discourse-Event-Type, e.g. "post"
    event_name: str  # X-Discourse-Event, e.g. "post_created"
    payload: str  # the raw JSON body
    dedupe_key: str
    ordering_key: str
    received_at: datetime
    state: Literal["pending", "done", "dead"]
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class InboxExpiry:
    """What one ``Store.expire_inbox`` did."""

    wiped: int  # handled rows whose body was cleared
    deleted: int  # handled rows deleted
    dead_deleted: tuple[str, ...]  # dedupe keys of the dead letters deleted unretried


@dataclass(frozen=True, slots=True)
class Failure:
    direction: str  # e.g. "gchat_to_discourse"
    item_key: str  # e.g. a Chat message name
    attempts: int
    last_error: str
    first_failed_at: datetime
    last_failed_at: datetime
    next_attempt_at: datetime
    parked: bool  # past max_attempts: waits for `python main.py retry`


@dataclass(frozen=True, slots=True)
class ChatPollState:
    """Where a Chat poll stands in one space; all empty before its first read."""

    last_message_time: str | None  # createTime of the newest message handled, as Chat sent it
    last_active_time: datetime | None  # the space's lastActiveTime at its last read
    never_active: bool  # the last read found no message, and Chat reported no lastActiveTime

    def unchanged(self, last_active_time: datetime | None) -> bool:
        """True if the space has not moved since its last read (so reading it again would find
        nothing new): Chat reports the same lastActiveTime, or still none for an empty space."""
        if last_active_time is None:
            return self.never_active
        return self.last_active_time == last_active_time


@dataclass(frozen=True, slots=True)
class ChatSubscriptionState:
    """The bridge's Workspace Events subscription of one mapped space, as it last knew it.

    `state` is Google's (ACTIVE, SUSPENDED) or the bridge's own: PENDING (to be created),
    EXPIRED (gone at its expireTime: to be created again), FAILED (creating or reactivating it
    failed: retried at `next_attempt_at`). `events_seen_until` is the time up to which the
    space's events are known handled: a replay (`spaceEvents.list`) starts there, and is due
    when `replay_due` (start, after a suspension or expiry).
    """

    gchat_space_name: str
    state: str
    subscription_name: str | None = None
    suspension_reason: str | None = None
    expire_time: datetime | None = None
    events_seen_until: datetime | None = None
    replay_due: bool = False
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessageVersion:
    """The newest version of a Chat message the bridge has acted on (events arrive in any
    order and more than once): its lastUpdateTime, else its createTime; deleted is final."""

    version: datetime
    deleted: bool


@dataclass(frozen=True, slots=True)
class DmChannelState:
    """What the Discourse chat catch-up needs of a linked DM channel; None until recorded."""

    reader: str | None  # a member to read it as (DM channels are visible to members only)
    high_water: int | None  # the newest chat message id brought across, or present when linked


@dataclass(frozen=True, slots=True)
class PostParts:
    """How a Discourse post was written into Chat, when not as one message under its usual id."""

    client_id: str  # client-assigned id of the post's first Chat message
    count: int  # how many Chat messages the post was split into


def _record(cls: type[_R], row: sqlite3.Row, **converted: object) -> _R:
    """The record whose fields are the row's columns of the same names; ``converted`` gives the
    fields that are more than a copy of their column (times, booleans)."""
    values = {
        f.name: converted[f.name] if f.name in converted else row[f.name] for f in fields(cls)
    }
    return cls(**values)


def _message_link(row: sqlite3.Row) -> MessageLink:
    return _record(MessageLink, row)


def _chat_message_link(row: sqlite3.Row) -> ChatMessageLink:
    return _record(ChatMessageLink, row)


def _user_link(row: sqlite3.Row) -> UserLink:
    return _record(UserLink, row, created_by_bridge=bool(row["created_by_bridge"]))


def _inbox_event(row: sqlite3.Row) -> InboxEvent:
    return _record(
        InboxEvent,
        row,
        received_at=_dt(row["received_at"]),
        next_attempt_at=_dt(row["next_attempt_at"]),
        finished_at=_opt_dt(row["finished_at"]),
    )


def _failure(row: sqlite3.Row) -> Failure:
    return _record(
        Failure,
        row,
        first_failed_at=_dt(row["first_failed_at"]),
        last_failed_at=_dt(row["last_failed_at"]),
        next_attempt_at=_dt(row["next_attempt_at"]),
        parked=bool(row["parked"]),
    )


def _check_origin(origin: str) -> None:
    if origin not in _ORIGINS:
        raise StoreError(f"origin must be one of {_ORIGINS}, got {origin!r}")


@dataclass(frozen=True, slots=True)
class _LinkTable:
    """A one-to-one link table: its two key columns, each UNIQUE (see the module invariants).

    Every name here is one of this module's constants, never caller input, so the link methods
    may build their SQL from them.
    """

    name: str
    kind: str  # how LinkConflict names the pair, e.g. "thread/topic"
    chat: str  # the Google side's key column
    discourse: str  # the Discourse side's key column, as compared
    made_by: str  # the Store method that links a pair, for error messages
    shown: str = ""  # the column that names the Discourse side in a conflict, if not `discourse`
    stamps: tuple[str, ...] = ("created_at",)  # columns set to the time of linking
    # A message link lies inside a linked pair of this table, whose key columns it repeats
    # (a foreign key): a message's thread and topic, a DM message's space and channel.
    parent: _LinkTable | None = None


_SPACE_CATEGORY = _LinkTable(
    "space_category",
    "space/category",
    "gchat_space_name",
    "discourse_category_id",
    made_by="set_category_for_space",
)
_DM_CHANNEL = _LinkTable(
    "dm_channel",
    "DM space/channel",
    "gchat_space_name",
    "discourse_channel_id",
    made_by="link_dm_channel",
)
_THREAD_TOPIC = _LinkTable(
    "thread_topic",
    "thread/topic",
    "gchat_thread_name",
    "discourse_topic_id",
    made_by="link_thread",
)
_MESSAGE_POST = _LinkTable(
    "message_post",
    "message/post",
    "gchat_message_name",
    "discourse_post_id",
    made_by="link_message",
    stamps=("created_at", "updated_at"),
    parent=_THREAD_TOPIC,
)
_CHAT_MESSAGE = _LinkTable(
    "chat_message_link",
    "DM message/chat message",
    "gchat_message_name",
    "discourse_chat_message_id",
    made_by="link_chat_message",
    stamps=("created_at", "updated_at"),
    parent=_DM_CHANNEL,
)
# Usernames are compared case-insensitively (by their lowercased column) and shown as written.
_USER = _LinkTable(
    "user_link",
    "user",
    "gchat_user_name",
    "discourse_username_lower",
    made_by="link_user",
    shown="discourse_username",
    stamps=("created_at", "updated_at"),
)


def _create_private(path: str) -> None:
    """Create the database file 0600 before SQLite would create it by the umask (often 0644).

    SQLite gives its -wal and -shm files the main file's permissions (unix VFS,
    `findCreateFileMode`), so these are private too. An existing file is left as it is
    (`check` warns about one others may read); a failure is left to `sqlite3.connect` to report.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # exists already, or cannot be created: sqlite3.connect says why
    os.close(fd)


# --------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------


class Store:
    """All durable state of the bridge. Thread-safe; see the module docstring for invariants."""

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = _utcnow) -> None:
        """Open (creating if needed) and migrate the database at ``path`` (":memory:" for tests).

        Raises:
            StoreError: the file cannot be opened, or was written by a newer version of the
                bridge.
            sqlite3.Error: a migration failed (nothing of it is applied then).
        """
        self._path = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        _create_private(self._path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's implicit
        # transactions would otherwise open them at surprising points).
        try:
            self._conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as exc:
            # Typically a missing directory or no permission: name the file, not just "unable
            # to open database file".
            raise StoreError(f"cannot open the state database {self._path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        self._depth = 0  # transaction nesting depth, guarded by self._lock
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            # Deleted and overwritten content (a wiped inbox body, a pruned row) is zeroed on
            # disk, not left in free pages for anyone who reads the file.
            self._conn.execute("PRAGMA secure_delete = ON")
            # WAL lets `status` read while the daemon writes; ":memory:" stays in "memory" mode.
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    def check_writable(self, timeout: float = 1.0) -> None:
        """Take and release the write lock within `timeout` seconds, on a connection of its own.

        For health probes: it neither waits behind the store's own lock (a cycle blocked on a
        locked file holds it for the whole busy timeout) nor for `BUSY_TIMEOUT_MS`, so a locked
        or read-only database is reported at once instead of hanging the probe.

        Raises:
            sqlite3.Error: the database is locked by another process, read-only or unusable.
        """
        if self._path == ":memory:":
            return
        probe = sqlite3.connect(self._path, timeout=timeout, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()

    def close(self) -> None:
        """Close the connection. The store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        target = MIGRATIONS[-1][0]
        with self._lock:
            if self.schema_version == target:
                return
            # BEGIN IMMEDIATE takes the write lock before reading the version, so two processes
            # opening a fresh file at once cannot both apply the same steps.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                current = self.schema_version
                if current > target:
                    raise StoreError(
                        f"{self._path} has schema version {current}, newer than this bridge "
                        f"knows ({target}); upgrade the bridge"
                    )
                for version, description, step in MIGRATIONS:
                    if version <= current:
                        continue
                    logger.info("migrating %s to schema %d: %s", self._path, version, description)
                    if callable(step):
                        step(self._conn)
                    else:
                        for statement in _statements(step):
                            self._conn.execute(statement)
                    # PRAGMA takes no parameters; the version is an int from MIGRATIONS.
                    self._conn.execute(f"PRAGMA user_version = {int(version)}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run a block atomically: takes the store lock, BEGIN IMMEDIATE, commit or roll back.

        Nested use (including every write method called inside the block) joins the outer
        transaction through a SAVEPOINT, so an inner failure that the caller catches undoes only
        the inner part.
        """
        with self._lock:
            if self._depth == 0:
                begin = "BEGIN IMMEDIATE"
                commit: tuple[str, ...] = ("COMMIT",)
                rollback: tuple[str, ...] = ("ROLLBACK",)
            else:
                # Savepoint names are built from our own counter, never from caller input.
                name = f"sp{self._depth}"
                begin, commit = f"SAVEPOINT {name}", (f"RELEASE {name}",)
                rollback = (f"ROLLBACK TO {name}", f"RELEASE {name}")
            self._conn.execute(begin)
            self._depth += 1
            try:
                yield
                for statement in commit:
                    self._conn.execute(statement)
            except BaseException:
                if self._conn.in_transaction:
                    for statement in rollback:
                        self._conn.execute(statement)
                raise
            finally:
                self._depth -= 1

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own (or the caller's) transaction; returns rowcount."""
        with self.transaction():
            return self._conn.execute(sql, params).rowcount

    def _now(self) -> str:
        return _ts(self._clock())

    # -- link mechanics, shared by every link table ---------------------------------------------

    def _link_row(self, table: _LinkTable, column: str, value: object) -> sqlite3.Row | None:
        return self._one(f"SELECT * FROM {table.name} WHERE {column} = ?", (value,))

    def _check_link(
        self,
        table: _LinkTable,
        chat_key: object,
        discourse_key: object,
        shown: tuple[object, object] | None = None,
    ) -> sqlite3.Row | None:
        """The row that links this very pair already, or None when neither side is linked.

        Raises:
            LinkConflict: either side is linked to a different partner (``shown`` names the
                wanted pair in the error, when the compared key is not how it is written).
        """
        wanted = (chat_key, discourse_key)
        by_chat = self._link_row(table, table.chat, chat_key)
        by_discourse = self._link_row(table, table.discourse, discourse_key)
        for row in (by_chat, by_discourse):
            if row is not None and (row[table.chat], row[table.discourse]) != wanted:
                existing = (row[table.chat], row[table.shown or table.discourse])
                raise LinkConflict(table.kind, shown or wanted, existing)
        return by_chat

    def _link(
        self, table: _LinkTable, chat_key: object, discourse_key: object, **columns: object
    ) -> None:
        """Link the pair with its other ``columns``; linking the same pair again is a no-op.

        Raises:
            LinkConflict: either side is linked to a different partner.
            sqlite3.IntegrityError: a foreign key (the parent link) is missing.
        """
        with self.transaction():
            if self._check_link(table, chat_key, discourse_key) is None:
                self._insert_link(table, chat_key, discourse_key, **columns)

    def _insert_link(
        self, table: _LinkTable, chat_key: object, discourse_key: object, **columns: object
    ) -> None:
        """INSERT a link row (after ``_check_link``, in the same transaction)."""
        row = {
            table.chat: chat_key,
            table.discourse: discourse_key,
            **columns,
            **dict.fromkeys(table.stamps, self._now()),
        }
        self._conn.execute(
            f"INSERT INTO {table.name} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            tuple(row.values()),
        )

    def _link_message(
        self,
        table: _LinkTable,
        chat_key: str,
        discourse_key: int,
        parent_pair: tuple[str, int],
        origin: Origin,
        content_hash: str,
    ) -> None:
        """Link a message pair of ``table`` inside its parent pair (see ``_LinkTable.parent``).

        Raises:
            LinkConflict: either side is linked to a different partner.
            StoreError: ``parent_pair`` is not linked, or ``origin`` is not a side.
        """
        _check_origin(origin)
        parent = table.parent
        assert parent is not None, table.name
        try:
            self._link(
                table,
                chat_key,
                discourse_key,
                **{parent.chat: parent_pair[0], parent.discourse: parent_pair[1]},
                origin=origin,
                content_hash=content_hash,
            )
        except sqlite3.IntegrityError as exc:
            chat_side, discourse_side = parent.kind.split("/")
            raise StoreError(
                f"cannot link {table.kind} {chat_key} <-> {discourse_key}: {chat_side} "
                f"{parent_pair[0]} is not linked to {discourse_side} {parent_pair[1]} "
                f"({parent.made_by} first) [{exc}]"
            ) from exc

    def _discourse_id_for(self, table: _LinkTable, chat_key: str) -> int | None:
        row = self._link_row(table, table.chat, chat_key)
        return None if row is None else int(row[table.discourse])

    def _chat_name_for(self, table: _LinkTable, discourse_id: int) -> str | None:
        row = self._link_row(table, table.discourse, discourse_id)
        return None if row is None else str(row[table.chat])

    def _unlink(self, table: _LinkTable, chat_key: str) -> bool:
        """Delete the link of ``chat_key`` (and what cascades or is pruned with it)."""
        sql = f"DELETE FROM {table.name} WHERE {table.chat} = ?"
        return self._write(sql, (chat_key,)) > 0

    def _set_content_hash(self, table: _LinkTable, chat_key: str, content_hash: str) -> None:
        count = self._write(
            f"UPDATE {table.name} SET content_hash = ?, updated_at = ? WHERE {table.chat} = ?",
            (content_hash, self._now(), chat_key),
        )
        if count == 0:
            raise KeyError(chat_key)

    # -- space <-> category (subcategories the bridge created) --------------------------------

    def set_category_for_space(self, gchat_space_name: str, discourse_category_id: int) -> None:
        """Remember the subcategory created for a space.

        Raises:
            LinkConflict: the space or the category is already linked to another partner.
        """
        self._link(_SPACE_CATEGORY, gchat_space_name, discourse_category_id)

    def category_for_space(self, gchat_space_name: str) -> int | None:
        return self._discourse_id_for(_SPACE_CATEGORY, gchat_space_name)

    def space_for_category(self, discourse_category_id: int) -> str | None:
        return self._chat_name_for(_SPACE_CATEGORY, discourse_category_id)

    # -- DM space <-> chat channel -------------------------------------------------------------

    def link_dm_channel(self, gchat_space_name: str, discourse_channel_id: int) -> None:
        """Link a DM / group-chat space to its Discourse chat channel.

        Raises:
            LinkConflict: the space or the channel is already linked to another partner.
        """
        self._link(_DM_CHANNEL, gchat_space_name, discourse_channel_id)

    def channel_for_space(self, gchat_space_name: str) -> int | None:
        return self._discourse_id_for(_DM_CHANNEL, gchat_space_name)

    def space_for_channel(self, discourse_channel_id: int) -> str | None:
        return self._chat_name_for(_DM_CHANNEL, discourse_channel_id)

    # -- thread <-> topic ----------------------------------------------------------------------

    def link_thread(
        self, gchat_thread_name: str, discourse_topic_id: int, gchat_space_name: str
    ) -> None:
        """Link a Chat thread to its Discourse topic.

        Raises:
            LinkConflict: the thread or the topic is already linked to another partner.
        """
        self._link(
            _THREAD_TOPIC, gchat_thread_name, discourse_topic_id, gchat_space_name=gchat_space_name
        )

    def topic_for_thread(self, gchat_thread_name: str) -> int | None:
        return self._discourse_id_for(_THREAD_TOPIC, gchat_thread_name)

    def thread_for_topic(self, discourse_topic_id: int) -> str | None:
        return self._chat_name_for(_THREAD_TOPIC, discourse_topic_id)

    def thread_link_by_topic(self, discourse_topic_id: int) -> ThreadLink | None:
        row = self._link_row(_THREAD_TOPIC, _THREAD_TOPIC.discourse, discourse_topic_id)
        return None if row is None else _record(ThreadLink, row)

    def unlink_thread(self, gchat_thread_name: str) -> bool:
        """Forget a thread ↔ topic link, its message links and the topic's and its posts' sync
        state; False if it was not linked."""
        return self._unlink(_THREAD_TOPIC, gchat_thread_name)

    # -- message <-> post ----------------------------------------------------------------------

    def link_message(
        self,
        gchat_message_name: str,
        discourse_post_id: int,
        *,
        gchat_thread_name: str,
        discourse_topic_id: int,
        origin: Origin,
        content_hash: str,
    ) -> None:
        """Link a Chat message to its Discourse post; the thread ↔ topic link must exist.

        Linking the same pair again is a no-op (its hash is left as it is).

        Raises:
            LinkConflict: the message or the post is already linked to another partner.
            StoreError: (gchat_thread_name, discourse_topic_id) is not a linked thread/topic.
        """
        pair = (gchat_thread_name, discourse_topic_id)
        self._link_message(
            _MESSAGE_POST, gchat_message_name, discourse_post_id, pair, origin, content_hash
        )

    def post_for_message(self, gchat_message_name: str) -> int | None:
        return self._discourse_id_for(_MESSAGE_POST, gchat_message_name)

    def message_for_post(self, discourse_post_id: int) -> str | None:
        return self._chat_name_for(_MESSAGE_POST, discourse_post_id)

    def message_link_by_message(self, gchat_message_name: str) -> MessageLink | None:
        row = self._link_row(_MESSAGE_POST, _MESSAGE_POST.chat, gchat_message_name)
        return None if row is None else _message_link(row)

    def message_link_by_post(self, discourse_post_id: int) -> MessageLink | None:
        row = self._link_row(_MESSAGE_POST, _MESSAGE_POST.discourse, discourse_post_id)
        return None if row is None else _message_link(row)

    def message_links_in_topic(self, discourse_topic_id: int) -> list[MessageLink]:
        """Every message link of one topic, in post id order."""
        rows = self._all(
            "SELECT * FROM message_post WHERE discourse_topic_id = ? ORDER BY discourse_post_id",
            (discourse_topic_id,),
        )
        return [_message_link(row) for row in rows]

    def update_content_hash(self, gchat_message_name: str, content_hash: str) -> None:
        """Record the hash of what the message/post now says (after an edit either way).

        Raises:
            KeyError: the message is not linked.
        """
        self._set_content_hash(_MESSAGE_POST, gchat_message_name, content_hash)

    def unlink_message(self, gchat_message_name: str) -> bool:
        """Forget a message ↔ post link (after a deletion) and the post's parts and version;
        False if it was not linked."""
        return self._unlink(_MESSAGE_POST, gchat_message_name)

    # -- DM message <-> chat message -----------------------------------------------------------

    def link_chat_message(
        self,
        gchat_message_name: str,
        discourse_chat_message_id: int,
        *,
        gchat_space_name: str,
        discourse_channel_id: int,
        origin: Origin,
        content_hash: str,
    ) -> None:
        """Link a DM message to its Discourse chat message; the space ↔ channel link must exist.

        Raises:
            LinkConflict: either side is already linked to another partner.
            StoreError: (gchat_space_name, discourse_channel_id) is not a linked DM channel.
        """
        pair = (gchat_space_name, discourse_channel_id)
        self._link_message(
            _CHAT_MESSAGE,
            gchat_message_name,
            discourse_chat_message_id,
            pair,
            origin,
            content_hash,
        )

    def chat_message_for_message(self, gchat_message_name: str) -> int | None:
        return self._discourse_id_for(_CHAT_MESSAGE, gchat_message_name)

    def message_for_chat_message(self, discourse_chat_message_id: int) -> str | None:
        return self._chat_name_for(_CHAT_MESSAGE, discourse_chat_message_id)

    def chat_message_link_by_message(self, gchat_message_name: str) -> ChatMessageLink | None:
        row = self._link_row(_CHAT_MESSAGE, _CHAT_MESSAGE.chat, gchat_message_name)
        return None if row is None else _chat_message_link(row)

    def chat_message_link_by_chat_message(
        self, discourse_chat_message_id: int
    ) -> ChatMessageLink | None:
        row = self._link_row(_CHAT_MESSAGE, _CHAT_MESSAGE.discourse, discourse_chat_message_id)
        return None if row is None else _chat_message_link(row)

    def update_chat_content_hash(self, gchat_message_name: str, content_hash: str) -> None:
        """Record the hash of a DM message's current content.

        Raises:
            KeyError: the message is not linked.
        """
        self._set_content_hash(_CHAT_MESSAGE, gchat_message_name, content_hash)

    def unlink_chat_message(self, gchat_message_name: str) -> bool:
        """Forget a DM message link; False if it was not linked."""
        return self._unlink(_CHAT_MESSAGE, gchat_message_name)

    # -- users ----------------------------------------------------------------------------------

    def link_user(
        self,
        gchat_user_name: str,
        discourse_username: str,
        *,
        discourse_user_id: int | None,
        display_name: str | None = None,
        email: str | None = None,
        created_by_bridge: bool,
    ) -> UserLink:
        """Link a Google user to a Discourse user (username compared case-insensitively).

        Linking the same pair again refreshes the display name, email and user id (profiles
        change) and keeps ``created_by_bridge`` as first recorded.

        Raises:
            LinkConflict: the Google user, the username or the user id has another partner.
        """
        lower = discourse_username.lower()
        shown = (gchat_user_name, discourse_username)
        with self.transaction():
            linked = self._check_link(_USER, gchat_user_name, lower, shown)
            if discourse_user_id is not None:
                by_id = self._link_row(_USER, "discourse_user_id", discourse_user_id)
                if by_id is not None and by_id["gchat_user_name"] != gchat_user_name:
                    existing = (by_id["gchat_user_name"], by_id["discourse_username"])
                    raise LinkConflict(_USER.kind, shown, existing)
            if linked is None:
                self._insert_link(
                    _USER,
                    gchat_user_name,
                    lower,
                    discourse_username=discourse_username,
                    discourse_user_id=discourse_user_id,
                    display_name=display_name,
                    email=email,
                    created_by_bridge=int(created_by_bridge),
                )
            else:
                self._conn.execute(
                    "UPDATE user_link SET discourse_user_id = COALESCE(?, discourse_user_id), "
                    "display_name = COALESCE(?, display_name), email = COALESCE(?, email), "
                    "updated_at = ? WHERE gchat_user_name = ?",
                    (discourse_user_id, display_name, email, self._now(), gchat_user_name),
                )
            link = self.user_for_gchat(gchat_user_name)
            assert link is not None
            return link

    def user_for_gchat(self, gchat_user_name: str) -> UserLink | None:
        row = self._link_row(_USER, _USER.chat, gchat_user_name)
        return None if row is None else _user_link(row)

    def user_for_discourse(self, discourse_username: str) -> UserLink | None:
        """The link of a Discourse username, compared case-insensitively."""
        row = self._link_row(_USER, _USER.discourse, discourse_username.lower())
        return None if row is None else _user_link(row)

    def is_bridge_user(self, discourse_username: str) -> bool:
        """True if the bridge created this Discourse user (its posts must not go to Chat)."""
        link = self.user_for_discourse(discourse_username)
        return link is not None and link.created_by_bridge

    def discourse_username_taken(self, discourse_username: str) -> bool:
        """True if some Google user is already linked to this username (any case)."""
        return self.user_for_discourse(discourse_username) is not None

    def all_users(self) -> list[UserLink]:
        rows = self._all("SELECT * FROM user_link ORDER BY gchat_user_name")
        return [_user_link(row) for row in rows]

    # -- sync state: one typed row per thing (DESIGN §4) ----------------------------------------

    def _upsert(
        self, table: str, keys: Mapping[str, object], values: Mapping[str, object]
    ) -> None:
        """Insert a row of ``keys`` or update its ``values`` (and updated_at)."""
        row = {**values, "updated_at": self._now()}
        self._write(_upsert_sql(table, list(keys), list(row)), (*keys.values(), *row.values()))

    # Workspace Events subscriptions (one per mapped space) and message versions.

    def chat_subscription(self, gchat_space_name: str) -> ChatSubscriptionState | None:
        row = self._one(
            "SELECT * FROM chat_subscription WHERE gchat_space_name = ?", (gchat_space_name,)
        )
        return None if row is None else _subscription_state(row)

    def chat_subscriptions(self) -> list[ChatSubscriptionState]:
        rows = self._all("SELECT * FROM chat_subscription ORDER BY gchat_space_name")
        return [_subscription_state(row) for row in rows]

    def save_chat_subscription(self, sub: ChatSubscriptionState) -> None:
        def opt(moment: datetime | None) -> str | None:
            return None if moment is None else _ts(moment)

        self._upsert(
            "chat_subscription",
            {"gchat_space_name": sub.gchat_space_name},
            {
                "subscription_name": sub.subscription_name,
                "state": sub.state,
                "suspension_reason": sub.suspension_reason,
                "expire_time": opt(sub.expire_time),
                "events_seen_until": opt(sub.events_seen_until),
                "replay_due": int(sub.replay_due),
                "attempts": sub.attempts,
                "next_attempt_at": opt(sub.next_attempt_at),
                "last_error": sub.last_error,
            },
        )

    def advance_events_seen(self, gchat_space_name: str, until: datetime) -> None:
        """Events of the space up to `until` are handled: moves only that mark, only forward
        (the puller calls it while the keeper may be rewriting the rest of the row)."""
        self._write(
            "UPDATE chat_subscription SET events_seen_until = ? WHERE gchat_space_name = ? "
            "AND (events_seen_until IS NULL OR events_seen_until < ?)",
            (_ts(until), gchat_space_name, _ts(until)),
        )

    def delete_chat_subscription(self, gchat_space_name: str) -> None:
        self._write(
            "DELETE FROM chat_subscription WHERE gchat_space_name = ?", (gchat_space_name,)
        )

    # Domain-wide delegation: whom the bridge writes as, and when it could not.

    def add_delegated_sender(self, gchat_user_name: str, email: str) -> None:
        """The bridge writes (or is about to write) as this Chat user: its messages under the
        bridge's ids are the bridge's own (recorded before the first write, so that a crash
        between the write and this row cannot make an echo)."""
        self._upsert(
            "delegated_sender", {"gchat_user_name": gchat_user_name}, {"email": email.lower()}
        )

    def delegated_senders(self) -> frozenset[str]:
        rows = self._all("SELECT gchat_user_name FROM delegated_sender")
        return frozenset(row["gchat_user_name"] for row in rows)

    def delegated_sender_for(self, email: str) -> str | None:
        row = self._one(
            "SELECT gchat_user_name FROM delegated_sender WHERE email = ?", (email.lower(),)
        )
        return None if row is None else str(row["gchat_user_name"])

    def set_written_as(self, gchat_message_name: str, email: str) -> None:
        """The message was written as the Workspace user `email`: its edits and deletion too."""
        self._upsert("written_as", {"gchat_message_name": gchat_message_name}, {"email": email})

    def written_as(self, gchat_message_name: str) -> str | None:
        row = self._one(
            "SELECT email FROM written_as WHERE gchat_message_name = ?", (gchat_message_name,)
        )
        return None if row is None else str(row["email"])

    def count_delegation_fallback(self, reason: str, detail: str) -> None:
        """A post went out as the operator instead of its author, for `reason` (`status`)."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO delegation_fallback (reason, count, last_detail, updated_at) "
                "VALUES (?, 1, ?, ?) ON CONFLICT (reason) DO UPDATE SET count = count + 1, "
                "last_detail = excluded.last_detail, updated_at = excluded.updated_at",
                (reason, detail[:500], self._now()),
            )

    def delegation_fallbacks(self) -> list[tuple[str, int, str | None]]:
        """(reason, how many, the last one's detail), most frequent first."""
        rows = self._all(
            "SELECT reason, count, last_detail FROM delegation_fallback ORDER BY count DESC"
        )
        return [(row["reason"], int(row["count"]), row["last_detail"]) for row in rows]

    def chat_message_version(self, gchat_message_name: str) -> ChatMessageVersion | None:
        row = self._one(
            "SELECT version, deleted FROM chat_message_version WHERE gchat_message_name = ?",
            (gchat_message_name,),
        )
        if row is None:
            return None
        return ChatMessageVersion(_dt(row["version"]), bool(row["deleted"]))

    def set_chat_message_version(
        self, gchat_message_name: str, version: datetime, *, deleted: bool = False
    ) -> None:
        """Remember that `version` of a message was acted on; never moves back, and a deletion
        stays (an older event arriving late must not undo a newer one)."""
        with self.transaction():
            known = self.chat_message_version(gchat_message_name)
            if known is not None and (known.deleted or (known.version >= version and not deleted)):
                return
            self._upsert(
                "chat_message_version",
                {"gchat_message_name": gchat_message_name},
                {"version": _ts(version), "deleted": int(deleted)},
            )

    def expire_chat_message_versions(self, older_than: timedelta) -> int:
        """Forget versions recorded longer ago than Chat keeps events (they can no longer be
        redelivered or replayed); returns how many rows went."""
        cutoff = _ts(self._clock() - older_than)
        return self._write("DELETE FROM chat_message_version WHERE updated_at < ?", (cutoff,))

    # Chat polls (room and DM): where each stands in a space.

    def chat_poll_state(self, gchat_space_name: str, kind: PollKind) -> ChatPollState:
        """Where the ``kind`` poll stands in a space (all empty before its first read)."""
        row = self._one(
            "SELECT * FROM chat_poll WHERE gchat_space_name = ? AND kind = ?",
            (gchat_space_name, kind),
        )
        if row is None:
            return ChatPollState(None, None, never_active=False)
        return ChatPollState(
            last_message_time=row["last_message_time"],
            last_active_time=_opt_dt(row["last_active_time"]),
            never_active=bool(row["never_active"]),
        )

    def set_chat_poll_cursor(
        self, gchat_space_name: str, kind: PollKind, create_time: str
    ) -> None:
        """A message created at ``create_time`` (Chat's string, kept exact) has been handled."""
        self._upsert(
            "chat_poll",
            {"gchat_space_name": gchat_space_name, "kind": kind},
            {"last_message_time": create_time},
        )

    def mark_chat_poll_read(
        self, gchat_space_name: str, kind: PollKind, last_active_time: datetime | None
    ) -> None:
        """The space was read while Chat reported ``last_active_time`` (None: none, for a space
        without messages), so that idle cycles need not read it again."""
        self._upsert(
            "chat_poll",
            {"gchat_space_name": gchat_space_name, "kind": kind},
            {
                "last_active_time": None if last_active_time is None else _ts(last_active_time),
                "never_active": int(last_active_time is None),
            },
        )

    def rewind_chat_poll(self, gchat_space_name: str, kind: PollKind, create_time: str) -> None:
        """Read the space again from ``create_time`` (never moves the cursor forward).

        The last read is forgotten too, or the idle skip would not read the space at all.

        Raises:
            StoreError: ``create_time`` is not an RFC 3339 time.
        """
        try:
            moment = datetime.fromisoformat(create_time)
        except ValueError as exc:
            raise StoreError(f"not a Chat createTime: {create_time!r}") from exc
        with self.transaction():
            current = self.chat_poll_state(gchat_space_name, kind).last_message_time
            if current is None or moment < datetime.fromisoformat(current):
                self.set_chat_poll_cursor(gchat_space_name, kind, create_time)
            self._upsert(
                "chat_poll",
                {"gchat_space_name": gchat_space_name, "kind": kind},
                {"last_active_time": None, "never_active": 0},
            )

    # Discourse chat DM channels: the catch-up's reader and high-water id.

    def dm_channel_state(self, discourse_channel_id: int) -> DmChannelState:
        row = self._one(
            "SELECT reader, high_water FROM dm_channel_state WHERE discourse_channel_id = ?",
            (discourse_channel_id,),
        )
        if row is None:
            return DmChannelState(reader=None, high_water=None)
        return DmChannelState(reader=row["reader"], high_water=row["high_water"])

    def set_dm_channel_reader(self, discourse_channel_id: int, username: str) -> None:
        """Read (and write attributed messages into) the channel as ``username``.

        Raises:
            StoreError: the channel is not linked (link_dm_channel first).
        """
        self._set_dm_channel(discourse_channel_id, reader=username)

    def set_dm_channel_high_water(self, discourse_channel_id: int, message_id: int) -> None:
        """Chat messages of the channel up to ``message_id`` need no catch-up.

        Raises:
            StoreError: the channel is not linked (link_dm_channel first).
        """
        self._set_dm_channel(discourse_channel_id, high_water=message_id)

    def _set_dm_channel(self, discourse_channel_id: int, **values: object) -> None:
        try:
            self._upsert(
                "dm_channel_state", {"discourse_channel_id": discourse_channel_id}, values
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"channel {discourse_channel_id} is not linked ({_DM_CHANNEL.made_by} first) "
                f"[{exc}]"
            ) from exc

    # Discourse -> Chat: the catch-up pull's high-water id, and per post and per topic.

    def discourse_high_water(self) -> int | None:
        """The newest post id the catch-up pull has handled; None before the first start."""
        row = self._one("SELECT high_water_post_id FROM discourse_poll WHERE id = 1")
        return None if row is None else int(row[0])

    def discourse_history_start(self) -> int:
        """The high-water id of the first start (posts up to it are never replayed); 0 if unset."""
        row = self._one("SELECT history_start_post_id FROM discourse_poll WHERE id = 1")
        return 0 if row is None else int(row[0])

    def set_discourse_high_water(self, post_id: int, *, first_start: bool = False) -> None:
        """Move the high-water id; on the ``first_start`` it is also where history ends."""
        values = {"high_water_post_id": post_id}
        if first_start:
            values["history_start_post_id"] = post_id
        self._upsert("discourse_poll", {"id": 1}, values)

    def post_parts(self, post_id: int) -> PostParts | None:
        """How the post was split into Chat messages; None: one message under its usual id."""
        row = self._one(
            "SELECT client_id, part_count FROM post_parts WHERE discourse_post_id = ?",
            (post_id,),
        )
        return None if row is None else PostParts(client_id=row[0], count=row[1])

    def set_post_parts(self, post_id: int, parts: PostParts) -> None:
        """Recorded before the post's link (the link comes last); goes with the link."""
        if parts.count < 1:
            raise StoreError(f"post {post_id}: a post has at least one part, not {parts.count}")
        self._upsert(
            "post_parts",
            {"discourse_post_id": post_id},
            {"client_id": parts.client_id, "part_count": parts.count},
        )

    def post_version(self, post_id: int) -> int | None:
        """The last version of the post mirrored into Chat; None if no edit was."""
        row = self._one("SELECT version FROM post_version WHERE discourse_post_id = ?", (post_id,))
        return None if row is None else int(row[0])

    def set_post_version(
        self, post_id: int, version: int, discourse_updated_at: datetime | None = None
    ) -> None:
        """Record the last mirrored edit: its version and Discourse's `updated_at` of it."""
        moment = None if discourse_updated_at is None else _ts(discourse_updated_at)
        self._upsert(
            "post_version",
            {"discourse_post_id": post_id},
            {"version": version, "discourse_updated_at": moment},
        )

    def post_edited_at(self, post_id: int) -> datetime | None:
        """Discourse's `updated_at` of the last edit of the post mirrored into Chat, if known."""
        row = self._one(
            "SELECT discourse_updated_at FROM post_version WHERE discourse_post_id = ?", (post_id,)
        )
        return None if row is None else _opt_dt(row[0])

    def topic_seen(self, topic_id: int) -> int:
        """The highest post number of the topic handled; 0 if none."""
        row = self._one(
            "SELECT post_number FROM topic_seen WHERE discourse_topic_id = ?", (topic_id,)
        )
        return 0 if row is None else int(row[0])

    def note_topic_seen(self, topic_id: int, post_number: int) -> None:
        """Post ``post_number`` of the topic was handled (the mark never moves back)."""
        with self.transaction():
            if self.topic_seen(topic_id) < post_number:
                self._upsert(
                    "topic_seen", {"discourse_topic_id": topic_id}, {"post_number": post_number}
                )

    # -- webhook inbox -------------------------------------------------------------------------

    def enqueue_event(
        self,
        *,
        event_id: str | None,
        event_type: str,
        event_name: str,
        payload: str,
        dedupe_key: str,
        ordering_key: str,
        received_at: datetime,
    ) -> bool:
        """Store a received event durably; False if its ``dedupe_key`` was seen before."""
        received = _ts(received_at)
        with self.transaction():
            cursor = self._conn.execute(
                "INSERT INTO inbox (event_id, event_type, event_name, payload, dedupe_key, "
                "ordering_key, received_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dedupe_key) DO NOTHING",
                (
                    event_id,
                    event_type,
                    event_name,
                    payload,
                    dedupe_key,
                    ordering_key,
                    received,
                    received,
                ),
            )
            added = cursor.rowcount > 0
        if not added:
            logger.debug("duplicate event %s (%s) ignored", dedupe_key, event_name)
        return added

    def due_events(self, now: datetime, limit: int = 100) -> list[InboxEvent]:
        """The oldest pending event of each ordering key, if it is due; oldest first.

        A key whose oldest pending event waits for a retry yields nothing, so events of one
        topic are handled in the order they arrived. An event keeps being returned until it is
        marked done or dead.
        """
        rows = self._all(
            "SELECT inbox.* FROM inbox JOIN ("
            "  SELECT MIN(id) AS head FROM inbox WHERE state = 'pending' GROUP BY ordering_key"
            ") AS heads ON inbox.id = heads.head "
            "WHERE inbox.next_attempt_at <= ? ORDER BY inbox.id LIMIT ?",
            (_ts(now), limit),
        )
        return [_inbox_event(row) for row in rows]

    def get_event(self, event_id: int) -> InboxEvent | None:
        """One inbox row by its (store-assigned) id."""
        row = self._one("SELECT * FROM inbox WHERE id = ?", (event_id,))
        return None if row is None else _inbox_event(row)

    def _update_event(self, event_id: int, sql: str, params: Sequence[Any]) -> None:
        if self._write(sql, (*params, event_id)) == 0:
            raise KeyError(event_id)

    def mark_done(self, event_id: int) -> None:
        """The event was handled.

        Raises:
            KeyError: no such event.
        """
        self._update_event(
            event_id,
            "UPDATE inbox SET state = 'done', finished_at = ? WHERE id = ?",
            (self._now(),),
        )

    def mark_retry(self, event_id: int, error: str, next_attempt_at: datetime) -> None:
        """A transient failure: count the attempt and try again at ``next_attempt_at``.

        Raises:
            KeyError: no such event.
        """
        self._update_event(
            event_id,
            "UPDATE inbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
            "WHERE id = ?",
            (error, _ts(next_attempt_at)),
        )

    def mark_dead(self, event_id: int, reason: str) -> None:
        """Give up on the event (dead letter); it no longer holds back its ordering key.

        Raises:
            KeyError: no such event.
        """
        self._update_event(
            event_id,
            "UPDATE inbox SET state = 'dead', attempts = attempts + 1, last_error = ?, "
            "finished_at = ? WHERE id = ?",
            (reason, self._now()),
        )

    def inbox_depth(self) -> int:
        """How many events are pending (due or waiting for a retry)."""
        row = self._one("SELECT COUNT(*) FROM inbox WHERE state = 'pending'")
        return 0 if row is None else int(row[0])

    def oldest_pending_received_at(self) -> datetime | None:
        """When the oldest pending event arrived (a stuck inbox shows here), or None."""
        row = self._one("SELECT MIN(received_at) FROM inbox WHERE state = 'pending'")
        return None if row is None or row[0] is None else _dt(row[0])

    def dead_events(self) -> list[InboxEvent]:
        rows = self._all("SELECT * FROM inbox WHERE state = 'dead' ORDER BY id")
        return [_inbox_event(row) for row in rows]

    def requeue_dead(self) -> int:
        """Make every dead event pending and due now, with a fresh attempt budget."""
        return self._write(
            "UPDATE inbox SET state = 'pending', attempts = 0, next_attempt_at = ?, "
            "finished_at = NULL WHERE state = 'dead'",
            (self._now(),),
        )

    def expire_inbox(self, retention: timedelta) -> InboxExpiry:
        """Apply the inbox's retention; what it did.

        - A handled row's body is wiped ``retention`` after it was handled: its keys stay, so a
          late redelivery is still recognised, but the words are gone (zeroed on disk too,
          ``secure_delete``).
        - Handled rows are deleted ``ROW_LIFETIME_FACTOR`` times ``retention`` after that, and
          so are dead letters nobody retried (their bodies are kept until then for ``retry``).
        """
        now = self._clock()
        wipe_before = _ts(now - retention)
        delete_before = _ts(now - retention * ROW_LIFETIME_FACTOR)
        with self.transaction():
            wiped = self._conn.execute(
                "UPDATE inbox SET payload = '' WHERE state = 'done' AND finished_at < ? "
                "AND payload != ''",
                (wipe_before,),
            ).rowcount
            dead = [
                str(row[0])
                for row in self._conn.execute(
                    "SELECT dedupe_key FROM inbox WHERE state = 'dead' AND finished_at < ? "
                    "ORDER BY id",
                    (delete_before,),
                )
            ]
            deleted = self._conn.execute(
                "DELETE FROM inbox WHERE state IN ('done', 'dead') AND finished_at < ?",
                (delete_before,),
            ).rowcount
        return InboxExpiry(wiped=wiped, deleted=deleted - len(dead), dead_deleted=tuple(dead))

    # -- failures of single items (Chat -> Discourse and others) -------------------------------

    def record_failure(
        self,
        direction: str,
        item_key: str,
        error: str,
        *,
        max_attempts: int,
        next_attempt_at: datetime,
    ) -> Failure:
        """Count one failed attempt at an item; park it once ``max_attempts`` is reached."""
        now = self._now()
        with self.transaction():
            self._conn.execute(
                "INSERT INTO failure (direction, item_key, attempts, last_error, "
                "first_failed_at, last_failed_at, next_attempt_at, parked) "
                "VALUES (?, ?, 1, ?, ?, ?, ?, 0) "
                "ON CONFLICT (direction, item_key) DO UPDATE SET "
                "attempts = attempts + 1, last_error = excluded.last_error, "
                "last_failed_at = excluded.last_failed_at, "
                "next_attempt_at = excluded.next_attempt_at",
                (direction, item_key, error, now, now, _ts(next_attempt_at)),
            )
            self._conn.execute(
                "UPDATE failure SET parked = 1 "
                "WHERE direction = ? AND item_key = ? AND attempts >= ?",
                (direction, item_key, max_attempts),
            )
            failure = self.failure_for(direction, item_key)
        assert failure is not None
        if failure.parked:
            logger.warning(
                "parked %s item %s after %d attempts: %s",
                direction,
                item_key,
                failure.attempts,
                error,
            )
        return failure

    def clear_failure(self, direction: str, item_key: str) -> bool:
        """The item went through; forget its failures. False if none were recorded."""
        return (
            self._write(
                "DELETE FROM failure WHERE direction = ? AND item_key = ?", (direction, item_key)
            )
            > 0
        )

    def failure_for(self, direction: str, item_key: str) -> Failure | None:
        row = self._one(
            "SELECT * FROM failure WHERE direction = ? AND item_key = ?", (direction, item_key)
        )
        return None if row is None else _failure(row)

    def due_failures(self, direction: str, now: datetime) -> list[Failure]:
        """Unparked failed items of one direction whose retry time has come, oldest first."""
        rows = self._all(
            "SELECT * FROM failure WHERE direction = ? AND parked = 0 AND next_attempt_at <= ? "
            "ORDER BY first_failed_at, item_key",
            (direction, _ts(now)),
        )
        return [_failure(row) for row in rows]

    def parked_items(self) -> list[Failure]:
        rows = self._all(
            "SELECT * FROM failure WHERE parked = 1 ORDER BY direction, first_failed_at, item_key"
        )
        return [_failure(row) for row in rows]

    def requeue_parked(self) -> int:
        """Unpark every parked item, due now with a fresh attempt budget; returns how many."""
        return self._write(
            "UPDATE failure SET parked = 0, attempts = 0, next_attempt_at = ? WHERE parked = 1",
            (self._now(),),
        )

    # -- write intents (crash safety, DESIGN §3 rule 2) ----------------------------------------

    def begin_write(self, item_key: str) -> None:
        """Record that a remote create for ``item_key`` is about to be sent (before sending)."""
        self._write(
            "INSERT INTO write_intent (item_key, started_at) VALUES (?, ?) "
            "ON CONFLICT (item_key) DO NOTHING",
            (item_key, self._now()),
        )

    def has_pending_write(self, item_key: str) -> bool:
        """True if a create for ``item_key`` was started and never finished: it may exist
        remotely already, so the caller must look for it before creating it again."""
        return self._one("SELECT 1 FROM write_intent WHERE item_key = ?", (item_key,)) is not None

    def finish_write(self, item_key: str) -> None:
        """The create is confirmed and linked (call it in the transaction that stores the link)."""
        self._write("DELETE FROM write_intent WHERE item_key = ?", (item_key,))

    def pending_writes(self) -> list[str]:
        """Item keys of unfinished creates, oldest first."""
        rows = self._all("SELECT item_key FROM write_intent ORDER BY started_at, item_key")
        return [str(row[0]) for row in rows]

    # -- the client id key ----------------------------------------------------------------------

    def client_id_key(self) -> bytes:
        """The secret that keys the client-assigned ids of Chat messages (made by migration 4).

        Never logged, never shown by `status`; it lives only in this file (mode 0600).
        """
        row = self._one("SELECT key FROM client_id_key WHERE id = 1")
        if row is None:
            raise StoreError(f"{self._path} has no client id key (a migration was undone?)")
        return bytes(row[0])

    # -- status values (StatusKey) -------------------------------------------------------------

    def set_status(self, key: StatusKey, value: str) -> None:
        self._upsert("status", {"key": _status_key(key)}, {"value": value})

    def get_status(self, key: StatusKey) -> str | None:
        row = self._one("SELECT value FROM status WHERE key = ?", (_status_key(key),))
        return None if row is None else str(row[0])

    def all_status(self) -> dict[StatusKey, str]:
        """Every status value set (rows of names this version no longer knows are left out)."""
        known = {key.value for key in StatusKey}
        rows = self._all("SELECT key, value FROM status ORDER BY key")
        return {StatusKey(row[0]): row[1] for row in rows if row[0] in known}


def _status_key(key: StatusKey) -> str:
    # A typo'd plain string would be stored and never read: refuse it.
    try:
        return StatusKey(key).value
    except ValueError as exc:
        raise StoreError(f"unknown status key {key!r}: add it to StatusKey") from exc
