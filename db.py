"""The bridge's durable state: one SQLite file behind one ``Store`` class.

Role: ``db.py`` owns every SQL statement of the project. Callers see methods and frozen
dataclass records, never a cursor or a SQL string.

What it holds (DESIGN §4): space ↔ category (subcategories the bridge created), DM space ↔ chat
channel, thread ↔ topic, message ↔ post, DM message ↔ chat message, Google user ↔ Discourse user,
cursors (per-space Chat cursors, Discourse high-water ids), the webhook inbox, failures of single
items (retried, then parked), write intents (creates sent but not yet linked, for crash
reconciliation), and status key/values for ``status`` and ``/readyz``.

Invariants:
- Every link table has UNIQUE on both sides' ids, so each link is one-to-one. Linking the same
  pair twice is a no-op; linking either side to a different partner raises ``LinkConflict``.
- A message link's (thread, topic) pair must be a linked thread ↔ topic pair, and a chat message
  link's (space, channel) pair must be a linked DM space ↔ channel pair (foreign keys);
  unlinking the thread or channel removes its message links.
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
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS",
    "ChatMessageLink",
    "Failure",
    "InboxEvent",
    "LinkConflict",
    "MessageLink",
    "Origin",
    "Store",
    "StoreError",
    "ThreadLink",
    "UserLink",
]

Origin = Literal["gchat", "discourse"]
_ORIGINS = ("gchat", "discourse")

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

# Ordered (version, description, sql). Append only: never edit a released step, add a new one.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "links, users, cursors, inbox, failures and status", _SCHEMA_V1),
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


def _opt_dt(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


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
class Failure:
    direction: str  # e.g. "gchat_to_discourse"
    item_key: str  # e.g. a Chat message name
    attempts: int
    last_error: str
    first_failed_at: datetime
    last_failed_at: datetime
    next_attempt_at: datetime
    parked: bool  # past max_attempts: waits for `python main.py retry`


def _message_link(row: sqlite3.Row) -> MessageLink:
    return MessageLink(
        gchat_message_name=row["gchat_message_name"],
        discourse_post_id=row["discourse_post_id"],
        gchat_thread_name=row["gchat_thread_name"],
        discourse_topic_id=row["discourse_topic_id"],
        origin=row["origin"],
        content_hash=row["content_hash"],
    )


def _chat_message_link(row: sqlite3.Row) -> ChatMessageLink:
    return ChatMessageLink(
        gchat_message_name=row["gchat_message_name"],
        discourse_chat_message_id=row["discourse_chat_message_id"],
        gchat_space_name=row["gchat_space_name"],
        discourse_channel_id=row["discourse_channel_id"],
        origin=row["origin"],
        content_hash=row["content_hash"],
    )


def _user_link(row: sqlite3.Row) -> UserLink:
    return UserLink(
        gchat_user_name=row["gchat_user_name"],
        discourse_username=row["discourse_username"],
        discourse_user_id=row["discourse_user_id"],
        display_name=row["display_name"],
        email=row["email"],
        created_by_bridge=bool(row["created_by_bridge"]),
    )


def _inbox_event(row: sqlite3.Row) -> InboxEvent:
    return InboxEvent(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        event_name=row["event_name"],
        payload=row["payload"],
        dedupe_key=row["dedupe_key"],
        ordering_key=row["ordering_key"],
        received_at=_dt(row["received_at"]),
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=_dt(row["next_attempt_at"]),
        last_error=row["last_error"],
        finished_at=_opt_dt(row["finished_at"]),
    )


def _failure(row: sqlite3.Row) -> Failure:
    return Failure(
        direction=row["direction"],
        item_key=row["item_key"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        first_failed_at=_dt(row["first_failed_at"]),
        last_failed_at=_dt(row["last_failed_at"]),
        next_attempt_at=_dt(row["next_attempt_at"]),
        parked=bool(row["parked"]),
    )


def _check_origin(origin: str) -> None:
    if origin not in _ORIGINS:
        raise StoreError(f"origin must be one of {_ORIGINS}, got {origin!r}")


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
                for version, description, sql in MIGRATIONS:
                    if version <= current:
                        continue
                    logger.info("migrating %s to schema %d: %s", self._path, version, description)
                    for statement in _statements(sql):
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

    # -- space <-> category (subcategories the bridge created) --------------------------------

    def set_category_for_space(self, gchat_space_name: str, discourse_category_id: int) -> None:
        """Remember the subcategory created for a space.

        Raises:
            LinkConflict: the space or the category is already linked to another partner.
        """
        with self.transaction():
            by_space = self._one(
                "SELECT gchat_space_name, discourse_category_id FROM space_category "
                "WHERE gchat_space_name = ?",
                (gchat_space_name,),
            )
            by_category = self._one(
                "SELECT gchat_space_name, discourse_category_id FROM space_category "
                "WHERE discourse_category_id = ?",
                (discourse_category_id,),
            )
            if self._same_or_conflict(
                "space/category", (gchat_space_name, discourse_category_id), by_space, by_category
            ):
                return
            self._conn.execute(
                "INSERT INTO space_category (gchat_space_name, discourse_category_id, created_at)"
                " VALUES (?, ?, ?)",
                (gchat_space_name, discourse_category_id, self._now()),
            )

    def category_for_space(self, gchat_space_name: str) -> int | None:
        row = self._one(
            "SELECT discourse_category_id FROM space_category WHERE gchat_space_name = ?",
            (gchat_space_name,),
        )
        return None if row is None else int(row[0])

    def space_for_category(self, discourse_category_id: int) -> str | None:
        row = self._one(
            "SELECT gchat_space_name FROM space_category WHERE discourse_category_id = ?",
            (discourse_category_id,),
        )
        return None if row is None else str(row[0])

    @staticmethod
    def _same_or_conflict(
        kind: str,
        wanted: tuple[object, object],
        by_left: sqlite3.Row | None,
        by_right: sqlite3.Row | None,
    ) -> bool:
        """True when ``wanted`` is already linked; raise when either side has another partner."""
        for row in (by_left, by_right):
            if row is not None and (row[0], row[1]) != wanted:
                raise LinkConflict(kind, wanted, (row[0], row[1]))
        return by_left is not None

    # -- DM space <-> chat channel -------------------------------------------------------------

    def link_dm_channel(self, gchat_space_name: str, discourse_channel_id: int) -> None:
        """Link a DM / group-chat space to its Discourse chat channel.

        Raises:
            LinkConflict: the space or the channel is already linked to another partner.
        """
        with self.transaction():
            by_space = self._one(
                "SELECT gchat_space_name, discourse_channel_id FROM dm_channel "
                "WHERE gchat_space_name = ?",
                (gchat_space_name,),
            )
            by_channel = self._one(
                "SELECT gchat_space_name, discourse_channel_id FROM dm_channel "
                "WHERE discourse_channel_id = ?",
                (discourse_channel_id,),
            )
            if self._same_or_conflict(
                "DM space/channel", (gchat_space_name, discourse_channel_id), by_space, by_channel
            ):
                return
            self._conn.execute(
                "INSERT INTO dm_channel (gchat_space_name, discourse_channel_id, created_at) "
                "VALUES (?, ?, ?)",
                (gchat_space_name, discourse_channel_id, self._now()),
            )

    def channel_for_space(self, gchat_space_name: str) -> int | None:
        row = self._one(
            "SELECT discourse_channel_id FROM dm_channel WHERE gchat_space_name = ?",
            (gchat_space_name,),
        )
        return None if row is None else int(row[0])

    def space_for_channel(self, discourse_channel_id: int) -> str | None:
        row = self._one(
            "SELECT gchat_space_name FROM dm_channel WHERE discourse_channel_id = ?",
            (discourse_channel_id,),
        )
        return None if row is None else str(row[0])

    # -- thread <-> topic ----------------------------------------------------------------------

    def link_thread(
        self, gchat_thread_name: str, discourse_topic_id: int, gchat_space_name: str
    ) -> None:
        """Link a Chat thread to its Discourse topic.

        Raises:
            LinkConflict: the thread or the topic is already linked to another partner.
        """
        with self.transaction():
            by_thread = self._one(
                "SELECT gchat_thread_name, discourse_topic_id FROM thread_topic "
                "WHERE gchat_thread_name = ?",
                (gchat_thread_name,),
            )
            by_topic = self._one(
                "SELECT gchat_thread_name, discourse_topic_id FROM thread_topic "
                "WHERE discourse_topic_id = ?",
                (discourse_topic_id,),
            )
            if self._same_or_conflict(
                "thread/topic", (gchat_thread_name, discourse_topic_id), by_thread, by_topic
            ):
                return
            self._conn.execute(
                "INSERT INTO thread_topic (gchat_thread_name, discourse_topic_id, "
                "gchat_space_name, created_at) VALUES (?, ?, ?, ?)",
                (gchat_thread_name, discourse_topic_id, gchat_space_name, self._now()),
            )

    def topic_for_thread(self, gchat_thread_name: str) -> int | None:
        row = self._one(
            "SELECT discourse_topic_id FROM thread_topic WHERE gchat_thread_name = ?",
            (gchat_thread_name,),
        )
        return None if row is None else int(row[0])

    def thread_for_topic(self, discourse_topic_id: int) -> str | None:
        row = self._one(
            "SELECT gchat_thread_name FROM thread_topic WHERE discourse_topic_id = ?",
            (discourse_topic_id,),
        )
        return None if row is None else str(row[0])

    def thread_link_by_topic(self, discourse_topic_id: int) -> ThreadLink | None:
        row = self._one(
            "SELECT gchat_thread_name, discourse_topic_id, gchat_space_name FROM thread_topic "
            "WHERE discourse_topic_id = ?",
            (discourse_topic_id,),
        )
        return None if row is None else ThreadLink(row[0], row[1], row[2])

    def unlink_thread(self, gchat_thread_name: str) -> bool:
        """Forget a thread ↔ topic link and its message links; False if it was not linked."""
        return (
            self._write(
                "DELETE FROM thread_topic WHERE gchat_thread_name = ?", (gchat_thread_name,)
            )
            > 0
        )

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
        _check_origin(origin)
        with self.transaction():
            by_message = self._one(
                "SELECT gchat_message_name, discourse_post_id FROM message_post "
                "WHERE gchat_message_name = ?",
                (gchat_message_name,),
            )
            by_post = self._one(
                "SELECT gchat_message_name, discourse_post_id FROM message_post "
                "WHERE discourse_post_id = ?",
                (discourse_post_id,),
            )
            if self._same_or_conflict(
                "message/post", (gchat_message_name, discourse_post_id), by_message, by_post
            ):
                return
            now = self._now()
            try:
                self._conn.execute(
                    "INSERT INTO message_post (gchat_message_name, discourse_post_id, "
                    "gchat_thread_name, discourse_topic_id, origin, content_hash, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        gchat_message_name,
                        discourse_post_id,
                        gchat_thread_name,
                        discourse_topic_id,
                        origin,
                        content_hash,
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"cannot link message {gchat_message_name} to post {discourse_post_id}: "
                    f"thread {gchat_thread_name} is not linked to topic {discourse_topic_id} "
                    f"(link_thread first) [{exc}]"
                ) from exc

    def post_for_message(self, gchat_message_name: str) -> int | None:
        row = self._one(
            "SELECT discourse_post_id FROM message_post WHERE gchat_message_name = ?",
            (gchat_message_name,),
        )
        return None if row is None else int(row[0])

    def message_for_post(self, discourse_post_id: int) -> str | None:
        row = self._one(
            "SELECT gchat_message_name FROM message_post WHERE discourse_post_id = ?",
            (discourse_post_id,),
        )
        return None if row is None else str(row[0])

    def message_link_by_message(self, gchat_message_name: str) -> MessageLink | None:
        row = self._one(
            "SELECT * FROM message_post WHERE gchat_message_name = ?", (gchat_message_name,)
        )
        return None if row is None else _message_link(row)

    def message_link_by_post(self, discourse_post_id: int) -> MessageLink | None:
        row = self._one(
            "SELECT * FROM message_post WHERE discourse_post_id = ?", (discourse_post_id,)
        )
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
        count = self._write(
            "UPDATE message_post SET content_hash = ?, updated_at = ? "
            "WHERE gchat_message_name = ?",
            (content_hash, self._now(), gchat_message_name),
        )
        if count == 0:
            raise KeyError(gchat_message_name)

    def unlink_message(self, gchat_message_name: str) -> bool:
        """Forget a message ↔ post link (after a deletion); False if it was not linked."""
        return (
            self._write(
                "DELETE FROM message_post WHERE gchat_message_name = ?", (gchat_message_name,)
            )
            > 0
        )

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
        _check_origin(origin)
        with self.transaction():
            by_message = self._one(
                "SELECT gchat_message_name, discourse_chat_message_id FROM chat_message_link "
                "WHERE gchat_message_name = ?",
                (gchat_message_name,),
            )
            by_chat = self._one(
                "SELECT gchat_message_name, discourse_chat_message_id FROM chat_message_link "
                "WHERE discourse_chat_message_id = ?",
                (discourse_chat_message_id,),
            )
            if self._same_or_conflict(
                "DM message/chat message",
                (gchat_message_name, discourse_chat_message_id),
                by_message,
                by_chat,
            ):
                return
            now = self._now()
            try:
                self._conn.execute(
                    "INSERT INTO chat_message_link (gchat_message_name, "
                    "discourse_chat_message_id, gchat_space_name, discourse_channel_id, origin, "
                    "content_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        gchat_message_name,
                        discourse_chat_message_id,
                        gchat_space_name,
                        discourse_channel_id,
                        origin,
                        content_hash,
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    f"cannot link message {gchat_message_name} to chat message "
                    f"{discourse_chat_message_id}: space {gchat_space_name} is not linked to "
                    f"channel {discourse_channel_id} (link_dm_channel first) [{exc}]"
                ) from exc

    def chat_message_for_message(self, gchat_message_name: str) -> int | None:
        row = self._one(
            "SELECT discourse_chat_message_id FROM chat_message_link WHERE gchat_message_name = ?",
            (gchat_message_name,),
        )
        return None if row is None else int(row[0])

    def message_for_chat_message(self, discourse_chat_message_id: int) -> str | None:
        row = self._one(
            "SELECT gchat_message_name FROM chat_message_link WHERE discourse_chat_message_id = ?",
            (discourse_chat_message_id,),
        )
        return None if row is None else str(row[0])

    def chat_message_link_by_message(self, gchat_message_name: str) -> ChatMessageLink | None:
        row = self._one(
            "SELECT * FROM chat_message_link WHERE gchat_message_name = ?", (gchat_message_name,)
        )
        return None if row is None else _chat_message_link(row)

    def chat_message_link_by_chat_message(
        self, discourse_chat_message_id: int
    ) -> ChatMessageLink | None:
        row = self._one(
            "SELECT * FROM chat_message_link WHERE discourse_chat_message_id = ?",
            (discourse_chat_message_id,),
        )
        return None if row is None else _chat_message_link(row)

    def update_chat_content_hash(self, gchat_message_name: str, content_hash: str) -> None:
        """Record the hash of a DM message's current content.

        Raises:
            KeyError: the message is not linked.
        """
        count = self._write(
            "UPDATE chat_message_link SET content_hash = ?, updated_at = ? "
            "WHERE gchat_message_name = ?",
            (content_hash, self._now(), gchat_message_name),
        )
        if count == 0:
            raise KeyError(gchat_message_name)

    def unlink_chat_message(self, gchat_message_name: str) -> bool:
        """Forget a DM message link; False if it was not linked."""
        return (
            self._write(
                "DELETE FROM chat_message_link WHERE gchat_message_name = ?",
                (gchat_message_name,),
            )
            > 0
        )

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
        with self.transaction():
            by_gchat = self._one(
                "SELECT * FROM user_link WHERE gchat_user_name = ?", (gchat_user_name,)
            )
            by_username = self._one(
                "SELECT * FROM user_link WHERE discourse_username_lower = ?", (lower,)
            )
            wanted = (gchat_user_name, discourse_username)
            for row in (by_gchat, by_username):
                if row is not None and (
                    row["gchat_user_name"] != gchat_user_name
                    or row["discourse_username_lower"] != lower
                ):
                    existing = (row["gchat_user_name"], row["discourse_username"])
                    raise LinkConflict("user", wanted, existing)
            if discourse_user_id is not None:
                by_id = self._one(
                    "SELECT * FROM user_link WHERE discourse_user_id = ?", (discourse_user_id,)
                )
                if by_id is not None and by_id["gchat_user_name"] != gchat_user_name:
                    existing = (by_id["gchat_user_name"], by_id["discourse_username"])
                    raise LinkConflict("user", wanted, existing)
            now = self._now()
            if by_gchat is None:
                self._conn.execute(
                    "INSERT INTO user_link (gchat_user_name, discourse_username, "
                    "discourse_username_lower, discourse_user_id, display_name, email, "
                    "created_by_bridge, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        gchat_user_name,
                        discourse_username,
                        lower,
                        discourse_user_id,
                        display_name,
                        email,
                        int(created_by_bridge),
                        now,
                        now,
                    ),
                )
            else:
                self._conn.execute(
                    "UPDATE user_link SET discourse_user_id = COALESCE(?, discourse_user_id), "
                    "display_name = COALESCE(?, display_name), email = COALESCE(?, email), "
                    "updated_at = ? WHERE gchat_user_name = ?",
                    (discourse_user_id, display_name, email, now, gchat_user_name),
                )
            link = self.user_for_gchat(gchat_user_name)
            assert link is not None
            return link

    def user_for_gchat(self, gchat_user_name: str) -> UserLink | None:
        row = self._one("SELECT * FROM user_link WHERE gchat_user_name = ?", (gchat_user_name,))
        return None if row is None else _user_link(row)

    def user_for_discourse(self, discourse_username: str) -> UserLink | None:
        """The link of a Discourse username, compared case-insensitively."""
        row = self._one(
            "SELECT * FROM user_link WHERE discourse_username_lower = ?",
            (discourse_username.lower(),),
        )
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

    # -- cursors ---------------------------------------------------------------------------------

    def get_cursor(self, key: str) -> str | None:
        row = self._one("SELECT value FROM cursor WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_cursor(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO cursor (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (key, value, self._now()),
        )

    def all_cursors(self) -> dict[str, str]:
        """Every cursor, for `python main.py status`."""
        return {row[0]: row[1] for row in self._all("SELECT key, value FROM cursor ORDER BY key")}

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

    def prune_done_events(self, older_than: timedelta) -> int:
        """Delete events handled more than ``older_than`` ago; returns how many.

        Their dedupe keys are forgotten with them, so keep this longer than any redelivery.
        """
        cutoff = _ts(self._clock() - older_than)
        return self._write("DELETE FROM inbox WHERE state = 'done' AND finished_at < ?", (cutoff,))

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

    # -- status key/values ---------------------------------------------------------------------

    def set_status(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO status (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (key, value, self._now()),
        )

    def get_status(self, key: str) -> str | None:
        row = self._one("SELECT value FROM status WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def all_status(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self._all("SELECT key, value FROM status ORDER BY key")}
