"""The Chat space listing of one poll cycle, shared by the room and DM polls, their result, and
the few settings both polls share (cursor overlap, retry delay, which space types are DMs).

Role: a shared module for the two Chat → Discourse polls (`sync_gchat_to_discourse` for rooms,
`sync_dm` for direct messages and group chats): `main.py` opens one `SpaceListing` per cycle and
hands it to both, each finds its spaces with `fetch_spaces`, and each reports a `PollResult`.

Invariants:
- One `spaces.list` walk per cycle at most: a second reader reuses the pages the first one read,
  and stops as soon as it has found its spaces.
- A listing failure is raised to every reader (each poll decides what that means for its cycle);
  a single unreadable space is a problem line, never an exception, so one space cannot stop the
  others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from google_chat_client import (
    ChatAuthError,
    ChatError,
    ChatSpace,
    GoogleChatClient,
    SpaceMessageEvent,
)

# Both polls re-read a space this far behind its cursor: Chat's createTime is assigned by
# distributed front ends, so a message may become visible with a createTime slightly before one
# already handled (a message read twice is recognised by its stored link).
CURSOR_OVERLAP = timedelta(seconds=10)
# The next attempt a failure record asks for after a Chat message failed transiently.
RETRY_BASE_DELAY = timedelta(seconds=30)
# The space types bridged as Discourse chat DM channels (`sync_dm`); every other type is a room.
DM_SPACE_TYPES = frozenset({"DIRECT_MESSAGE", "GROUP_CHAT"})


class EventOutcome(Enum):
    """What a poll's event handler made of a space's Workspace Events (`chat_events`)."""

    DONE = "done"  # acted on and committed (or parked, or nothing to do): acknowledge
    RETRY = "retry"  # a transient failure: leave them to be delivered again
    IGNORED = "ignored"  # not a space this handler bridges: acknowledge


def event_version(event: SpaceMessageEvent) -> datetime:
    """The version an event brings: its deletion, else its last edit, else its creation
    (events come more than once and in any order; an older version must not undo a newer)."""
    message = event.message
    if message.delete_time is not None:
        return message.delete_time
    return message.last_update_time or message.create_time


class SpaceListing:
    """One `spaces.list` walk shared by the room and DM polls of a cycle, read page by page.

    Each poll stops reading once it has found its spaces; a second poll reuses the pages the
    first one read instead of listing again. A listing failure is raised to every reader.
    """

    def __init__(self, chat: GoogleChatClient) -> None:
        self._pages = chat.list_spaces()
        self._seen: list[ChatSpace] = []
        self._error: ChatError | None = None
        self._done = False

    def __iter__(self) -> Iterator[ChatSpace]:
        index = 0
        while True:
            if index < len(self._seen):
                yield self._seen[index]
                index += 1
                continue
            if self._error is not None:
                raise self._error
            if self._done:
                return
            try:
                self._seen.append(next(self._pages))
            except StopIteration:
                self._done = True
            except ChatError as exc:
                self._error = exc


def fetch_spaces(
    chat: GoogleChatClient, wanted: set[str], listing: Iterable[ChatSpace] | None = None
) -> tuple[dict[str, ChatSpace], list[str]]:
    """The wanted spaces, with their lastActiveTime, and a problem line per unreadable one.

    Spaces missing from the listing (DMs before their first message, or spaces the account
    left) are asked for one by one, to say why.

    Raises:
        ChatError: the listing itself failed (ChatAuthError too, from any call).
    """
    found: dict[str, ChatSpace] = {}
    for space in listing if listing is not None else chat.list_spaces():
        if space.name in wanted:
            found[space.name] = space
            if len(found) == len(wanted):
                break
    problems: list[str] = []
    for name in sorted(wanted - found.keys()):
        try:
            found[name] = chat.get_space(name)
        except ChatAuthError:
            raise
        except ChatError as exc:
            problems.append(f"{name}: cannot read the space: {exc}")
    return found, problems


@dataclass
class PollResult:
    """What one poll cycle did, for logs, `status` and metrics."""

    spaces_checked: int = 0
    spaces_read: int = 0
    mirrored: int = 0
    skipped: int = 0
    parked: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def status_json(self, now: datetime, duration: float) -> str:
        """The record a poll leaves in the store's status, for `status` and `/readyz`."""
        return json.dumps(
            {
                "time": now.isoformat(),
                "ok": self.ok,
                "errors": self.errors[:20],
                "mirrored": self.mirrored,
                "skipped": self.skipped,
                "parked": self.parked,
                "spaces_read": self.spaces_read,
                "duration_seconds": round(duration, 3),
            }
        )

    def log(self, logger: logging.Logger, what: str, duration: float) -> None:
        """One INFO line with the cycle's counts, then each error."""
        logger.info(
            "%s done in %.2fs: %d spaces checked, %d read, %d mirrored, %d skipped, %d parked, "
            "%d errors",
            what,
            duration,
            self.spaces_checked,
            self.spaces_read,
            self.mirrored,
            self.skipped,
            self.parked,
            len(self.errors),
        )
