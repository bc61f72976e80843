"""A test world: both emulators, the bridge account and config, and readers of both sides."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.harness import (
    WEBHOOK_SECRET,
    BridgeFiles,
    register_bridge_account,
    write_config,
)

BRIDGE_USER = "users/100000000000000000001"
MARKER = re.compile(r"<!-- gchat:(spaces/[^ ]+/messages/[^ ]+) -->")


class World:
    """Both emulators, the bridge's account and config, and readers of the forum's state."""

    def __init__(self, chat: Any, discourse: Any, tmp_path: Path) -> None:
        self.chat = chat
        self.discourse = discourse
        self.tmp_path = tmp_path
        self.people: list[dict[str, Any]] = []
        # Discourse's real admin-API budget is 60 a minute; tests about other things lift it so
        # that they run in seconds (the budget test sets it back).
        discourse.control.settings(max_admin_api_reqs_per_minute=100000)
        chat.control.create_user(
            name=BRIDGE_USER, displayName="Bridge Bot", email="bridge@example.com"
        )

    def add_people(self, *names: str) -> list[str]:
        made = []
        for i, display in enumerate(names, start=len(self.people) + 1):
            user = self.chat.control.create_user(
                name=f"users/2000000000000000000{i:02d}",
                displayName=display,
                email=f"{display.lower().replace(' ', '.')}.{i}@example.com",
            )
            self.people.append(user)
            made.append(user["name"])
        return made

    def add_space(self, display_name: str, members: list[str]) -> str:
        space = self.chat.control.create_space(
            displayName=display_name, spaceType="SPACE", members=[BRIDGE_USER, *members]
        )
        return space["name"]

    def add_dm(self, members: list[str], space_type: str = "DIRECT_MESSAGE") -> str:
        """A DIRECT_MESSAGE (the bridge's account and one person) or GROUP_CHAT space."""
        space = self.chat.control.create_space(
            spaceType=space_type, members=[BRIDGE_USER, *members]
        )
        return str(space["name"])

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        """Live messages of a Discourse chat channel, oldest first."""
        return [
            m
            for m in self.discourse.control.state()["chat_messages"]
            if m["chat_channel_id"] == channel_id and not m.get("deleted_at")
        ]

    def say(
        self,
        space: str,
        sender: str,
        text: str,
        thread: str | None = None,
        create_time: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"sender": sender, "text": text}
        if thread:
            body["threadName"] = thread
        if create_time:
            body["createTime"] = create_time
        return self.chat.control.post_message(space.split("/", 1)[1], **body)

    def category(self, name: str) -> int:
        return int(self.discourse.control.create_category(name=name)["id"])

    def config(self, mappings: list[dict[str, Any]], **kw: Any) -> BridgeFiles:
        files = write_config(
            self.tmp_path / "bridge",
            chat_url=self.chat.url,
            discourse_url=self.discourse.url,
            mappings=mappings,
            **kw,
        )
        if not files.token.exists():
            register_bridge_account(self.chat.control, BRIDGE_USER, self.chat.url, files.token)
        return files

    # -- forum state

    def live_posts(self) -> list[dict[str, Any]]:
        state = self.discourse.control.state()
        return [
            p for p in state["posts"] if p.get("deleted_at") is None and p.get("post_type", 1) == 1
        ]

    def topics(self) -> list[dict[str, Any]]:
        return [t for t in self.discourse.control.state()["topics"] if t.get("deleted_at") is None]

    def markers(self) -> Counter[str]:
        return Counter(m for p in self.live_posts() for m in MARKER.findall(p.get("raw") or ""))

    # -- Discourse people and webhooks, Chat state

    def forum_user(self, username: str, name: str) -> dict[str, Any]:
        return self.discourse.control.create_user(
            username, name=name, email=f"{username}@forum.example.com", trust_level=1
        )

    def hook_to(self, files: BridgeFiles, **fields: Any) -> dict[str, Any]:
        """Point a Discourse webhook (all events, signed) at the bridge's listener."""
        return self.discourse.control.create_webhook(
            files.webhook_url, secret=WEBHOOK_SECRET, **fields
        )

    def chat_messages(self, space: str) -> list[dict[str, Any]]:
        messages = self.chat.control.state()["messages"].get(space, [])
        return [m for m in messages if not m.get("deleteTime")]

    @staticmethod
    def body(post: dict[str, Any]) -> str:
        """A post's raw without the bridge's origin marker."""
        return MARKER.sub("", post.get("raw") or "").strip()
