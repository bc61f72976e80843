"""The collaborators every sync service works with, built once by `main.py`.

Role: a shared module. The three sync services (`GchatToDiscourse`, `DiscourseToGchat`, `DmSync`)
take one `Deps` instead of the same six arguments each, so a new collaborator is wired in one
place, and a test builds the same record the service gets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from config_loader import Config
from db import Store
from delegation import Delegation
from discourse_client import DiscourseClient
from google_chat_client import GoogleChatClient
from inbox import Inbox
from users import UserDirectory


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Deps:
    config: Config
    store: Store
    chat: GoogleChatClient
    discourse: DiscourseClient
    users: UserDirectory
    inbox: Inbox
    # Set when the process is shutting down: long cycles stop between two items.
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], datetime] = utcnow
    # Per-user Chat clients for forum authors of the delegated domains (None: not configured).
    delegation: Delegation | None = None
