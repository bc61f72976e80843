"""sync_dm: pure planning and parsing, then both directions against both emulators.

The real clients (googleapiclient, requests) talk to the emulators on 127.0.0.1; the emulators'
state is the witness. Nothing of ours is mocked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import pytest

import origin
from config_loader import Config, SpaceMapping, load_config
from db import StatusKey, Store
from deps import Deps
from discourse_client import DiscourseClient
from google_chat_client import ChatMessage, ChatSpace, ChatUser, GoogleChatClient
from inbox import (
    ChatMessageEvent,
    Inbox,
    PulledChatMessage,
    load,
    parse_webhook,
    pulled_chat_message,
)
from sync_dm import (
    DmSync,
    SendToChannel,
    SkipMessage,
    mapping_problem,
    plan_dm,
    render_for_gchat,
)
from tests.e2e.harness import write_config
from users import UserDirectory

BRIDGE = "users/100000000000000000001"


def deliver(rig: Rig, event_name: str, body: dict[str, Any]) -> None:
    """What the inbox worker does with a stored webhook: parse once, hand the typed event over."""
    event = parse_webhook(event_name, body).event
    assert isinstance(event, ChatMessageEvent)
    rig.sync.handle_event(event)


T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _message(n: int, **kw: Any) -> ChatMessage:
    fields: dict[str, Any] = {
        "name": f"spaces/D/messages/m{n}",
        "space_name": "spaces/D",
        "thread_name": None,
        "sender": ChatUser("users/1", "Ann", None, "HUMAN"),
        "text": f"hi {n}",
        "create_time": T0.replace(second=n),
        "create_time_raw": f"2024-05-01T12:00:{n:02d}Z",
        "last_update_time": None,
        "delete_time": None,
        "client_assigned_message_id": None,
        "thread_reply": False,
        "attachments": (),
    }
    fields.update(kw)
    return ChatMessage(**fields)


# ---------------------------------------------------------------------------- pure


def test_plan_keeps_order_and_skips_ours_deleted_bots_and_linked() -> None:
    ids = origin.ClientIds(bytes(range(32)))
    bridge = origin.BridgeIdentity(ids, frozenset({BRIDGE}))
    ours = ChatUser(BRIDGE, "Bridge Bot", None, "HUMAN")
    messages = [
        _message(4, client_assigned_message_id="client-dc-7", sender=ours),
        _message(3, delete_time=T0),
        _message(2),
        _message(1),
        _message(5, sender=ChatUser("users/9", "Bot", None, "BOT")),
        _message(6, client_assigned_message_id=ids.for_chat_message(3), sender=ours),
        # Issue 17: Ann took an id of the bridge's form; her message is hers.
        _message(7, client_assigned_message_id="client-dc-8"),
    ]
    actions = plan_dm(messages, linked={"spaces/D/messages/m1"}, bridge=bridge)
    assert [type(a) for a in actions] == [
        SendToChannel,
        SkipMessage,
        SkipMessage,
        SkipMessage,
        SkipMessage,
        SendToChannel,
    ]
    assert [a.message.name[-2:] for a in actions] == ["m2", "m3", "m4", "m5", "m6", "m7"]


@pytest.mark.parametrize(
    ("category", "space_type", "fits"),
    [
        (None, "DIRECT_MESSAGE", True),
        (None, "GROUP_CHAT", True),
        (None, "SPACE", False),
        (5, "SPACE", True),
        (5, "DIRECT_MESSAGE", False),
        (5, "GROUP_CHAT", False),
    ],
)
def test_mapping_problem(category: int | None, space_type: str, fits: bool) -> None:
    mapping = SpaceMapping("spaces/X", discourse_category_id=category)
    space = ChatSpace("spaces/X", None, space_type, None, None)
    problem = mapping_problem(mapping, space)
    assert (problem is None) is fits
    if problem:
        assert "spaces/X" in problem and space_type in problem


def test_chat_event_parses_webhook_body_and_rejects_broken_ones() -> None:
    body = {
        "chat_message": {
            "message": {
                "id": 9,
                "message": "yo",
                "created_at": "2024-05-01T12:00:00Z",
                "user": {"username": "ann", "name": "Ann Lee"},
            },
            "channel": {"id": 4},
        }
    }
    parsed = parse_webhook("chat_message_created", body)
    event = parsed.event
    assert isinstance(event, ChatMessageEvent) and event.kind == "created"
    assert (event.message.id, event.channel_id, event.author_name) == (9, 4, "Ann Lee")
    assert event.message.username == "ann"
    # The catch-up pull's row meets the webhook's on one dedupe key.
    pulled = pulled_chat_message(event.message)
    assert (pulled.dedupe_key, pulled.ordering_key) == (parsed.dedupe_key, parsed.ordering_key)
    broken: dict[str, Any]
    for broken in ({}, {"chat_message": {"message": {}}}, {"chat_message": {"channel": {}}}):
        with pytest.raises(ValueError):
            parse_webhook("chat_message_created", broken)


def test_render_for_gchat_attributes_only_when_asked() -> None:
    common: dict[str, Any] = {
        "display_name": "Ann Lee",
        "username": "ann",
        "base_url": "http://forum",
        "mention_lookup": lambda _u: None,
    }
    assert render_for_gchat("**hi**", attributed=False, **common) == "*hi*"
    text = render_for_gchat("**hi**", attributed=True, **common)
    assert text == "*Ann Lee* (@ann) on Discourse:\n*hi*"


# ---------------------------------------------------------------------------- both emulators


@dataclass
class Rig:
    chat_emu: Any
    forum: Any
    config: Config
    store: Store
    chat: GoogleChatClient
    discourse: DiscourseClient
    sync: DmSync

    def restart(self) -> DmSync:
        """A new process over the same store (memory caches gone)."""
        users = _users(self.store, self.discourse, self.chat)
        self.sync = DmSync(
            Deps(self.config, self.store, self.chat, self.discourse, users, Inbox(self.store))
        )
        return self.sync

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        return [
            m
            for m in self.forum.control.state()["chat_messages"]
            if m["chat_channel_id"] == channel_id and not m.get("deleted_at")
        ]

    def chat_texts(self, space: str) -> list[str]:
        """The space's messages in Chat markup, as the bridge reads them (`text` is plain)."""
        return [m.markup for m in self.chat.list_messages(space)]


def _users(store: Store, discourse: DiscourseClient, chat: GoogleChatClient) -> UserDirectory:
    return UserDirectory(
        store, discourse, chat, api_username="system", email_domain="users.noreply.invalid"
    )


@pytest.fixture
def rig(chat_emulator: Any, discourse_emulator: Any, tmp_path: Path) -> Rig:
    chat_emulator.control.configure(time_scale=50)
    discourse_emulator.control.settings(max_admin_api_reqs_per_minute=100000)
    chat_emulator.control.create_user(name=BRIDGE, displayName="Bridge Bot", email="b@x.com")
    chat_emulator.control.create_user(name="users/2", displayName="Ann Lee", email="ann@x.com")
    chat_emulator.control.create_user(name="users/3", displayName="Bo Chen", email="bo@x.com")
    space = chat_emulator.control.create_space(
        spaceType="DIRECT_MESSAGE", name="spaces/dm1", members=[BRIDGE, "users/2"]
    )
    group = chat_emulator.control.create_space(
        spaceType="GROUP_CHAT", name="spaces/grp", members=[BRIDGE, "users/2", "users/3"]
    )
    assert space["name"] == "spaces/dm1" and group["name"] == "spaces/grp"
    # Ann already has a forum account (linked by email); Bo and the bridge's person get new ones.
    discourse_emulator.control.create_user("ann", name="Ann Lee", email="ann@x.com")
    files = write_config(
        tmp_path,
        chat_url=chat_emulator.url,
        discourse_url=discourse_emulator.url,
        mappings=[{"google_space_id": "spaces/dm1"}, {"google_space_id": "spaces/grp"}],
    )
    config = load_config(files.config)
    token = chat_emulator.control.add_token(user=BRIDGE)["access_token"]
    chat = GoogleChatClient(
        google.oauth2.credentials.Credentials(token=token),
        api_endpoint=chat_emulator.url,
        write_interval_seconds=0.02,
    )
    discourse = DiscourseClient(discourse_emulator.url, "test-api-key", "system")
    store = Store(":memory:")
    users = _users(store, discourse, chat)
    sync = DmSync(Deps(config, store, chat, discourse, users, Inbox(store)))
    return Rig(chat_emulator, discourse_emulator, config, store, chat, discourse, sync)


def _say(rig: Rig, space: str, sender: str, text: str) -> dict[str, Any]:
    return rig.chat_emu.control.post_message(space.split("/", 1)[1], sender=sender, text=text)


def _members(rig: Rig, channel_id: int) -> set[str]:
    channel = next(c for c in rig.forum.control.state()["chat_channels"] if c["id"] == channel_id)
    users = {u["id"]: u["username"] for u in rig.forum.control.state()["users"]}
    return {users[i] for i in channel["member_ids"]}


def test_chat_to_discourse_creates_channels_as_a_participant_and_sends_in_order(rig: Rig) -> None:
    for i in range(5):
        _say(rig, "spaces/dm1", "users/2" if i % 2 else BRIDGE, f"one {i}")
    _say(rig, "spaces/grp", "users/3", "ok")
    _say(rig, "spaces/grp", "users/2", "👍")
    result = rig.sync.poll_once()
    assert result.ok, result.errors
    assert result.mirrored == 7
    dm = rig.store.channel_for_space("spaces/dm1")
    grp = rig.store.channel_for_space("spaces/grp")
    assert dm is not None and grp is not None and dm != grp
    ann = "ann"
    bridge_user = rig.store.user_for_gchat(BRIDGE)
    bo = rig.store.user_for_gchat("users/3")
    assert bridge_user is not None and bo is not None
    assert _members(rig, dm) == {ann, bridge_user.discourse_username}
    assert _members(rig, grp) == {ann, bridge_user.discourse_username, bo.discourse_username}
    got = rig.channel_messages(dm)
    assert [m["message"] for m in got] == [f"one {i}" for i in range(5)]
    assert {m["message"] for m in rig.channel_messages(grp)} == {"ok", "👍"}
    # Ann posts as her own existing account; nobody posts as the API user.
    assert [m["user"]["username"] for m in got][1::2] == ["ann", "ann"]
    log = rig.forum.control.requests()["requests"]
    assert all(r["api_username"] != "system" for r in log if r["path"].startswith("/chat"))
    # A second cycle sends nothing again.
    assert rig.restart().poll_once().mirrored == 0
    assert len(rig.channel_messages(dm)) == 5


def test_space_mapped_without_category_is_reported_not_crashed(rig: Rig, tmp_path: Path) -> None:
    rig.chat_emu.control.create_space(
        spaceType="SPACE", name="spaces/room", displayName="Room", members=[BRIDGE]
    )
    files = write_config(
        tmp_path / "other",
        chat_url=rig.chat_emu.url,
        discourse_url=rig.forum.url,
        mappings=[{"google_space_id": "spaces/room"}, {"google_space_id": "spaces/dm1"}],
    )
    config = load_config(files.config)
    users = _users(rig.store, rig.discourse, rig.chat)
    sync = DmSync(Deps(config, rig.store, rig.chat, rig.discourse, users, Inbox(rig.store)))
    _say(rig, "spaces/dm1", "users/2", "still works")
    result = sync.poll_once()
    assert not result.ok
    assert any("spaces/room" in e and "discourse_category_id" in e for e in result.errors)
    assert result.mirrored == 1
    last_dm_poll = json.loads(rig.store.get_status(StatusKey.LAST_DM_POLL) or "{}")
    assert "spaces/room" in last_dm_poll["errors"][0]


def test_discourse_to_chat_create_edit_trash_with_attribution(rig: Rig) -> None:
    _say(rig, "spaces/dm1", "users/2", "hello")
    assert rig.sync.poll_once().ok
    channel = rig.store.channel_for_space("spaces/dm1")
    assert channel is not None
    sent = rig.discourse.send_chat_message(channel, "from **forum**", as_user="ann")
    body: dict[str, Any] = {
        "chat_message": {
            "message": {
                "id": sent,
                "message": "from **forum**",
                "created_at": "2024-05-01T12:00:00Z",
                "user": {"username": "ann", "name": "Ann Lee"},
            },
            "channel": {"id": channel},
        }
    }
    deliver(rig, "chat_message_created", body)
    deliver(rig, "chat_message_created", body)  # a redelivery does nothing
    texts = rig.chat_texts("spaces/dm1")
    assert texts == ["hello", "*Ann Lee* (@ann) on Discourse:\nfrom *forum*"]
    name = rig.store.message_for_chat_message(sent)
    copy = rig.chat_emu.control.state()["messages"]["spaces/dm1"][-1]
    assert copy["name"] == name
    ids = origin.ClientIds(rig.store.client_id_key())
    assert copy["clientAssignedMessageId"] == ids.for_chat_message(sent)
    # The poll does not mirror the bridge's own Chat message back, and learns its account.
    assert rig.sync.poll_once().mirrored == 0
    assert rig.sync.bridge_account() == BRIDGE
    body["chat_message"]["message"]["message"] = "edited"
    deliver(rig, "chat_message_edited", body)
    assert rig.chat_texts("spaces/dm1")[-1] == "*Ann Lee* (@ann) on Discourse:\nedited"
    # A trash the forum does not bear out (a replay, or one overtaken by a restore): the
    # message is live in Discourse, so its copy stays.
    body["chat_message"]["message"]["deleted_at"] = "2024-05-01T12:05:00Z"
    deliver(rig, "chat_message_trashed", body)
    assert rig.chat_texts("spaces/dm1")[-1] == "*Ann Lee* (@ann) on Discourse:\nedited"
    rig.discourse.trash_chat_message(channel, sent, as_user="ann")
    deliver(rig, "chat_message_trashed", body)
    assert rig.chat_texts("spaces/dm1") == ["hello"]
    assert rig.store.message_for_chat_message(sent) is None


def test_copies_of_chat_messages_return_never_but_a_claimed_account_is_bridged(rig: Rig) -> None:
    _say(rig, "spaces/grp", "users/3", "from bo")
    assert rig.sync.poll_once().ok
    channel = rig.store.channel_for_space("spaces/grp")
    assert channel is not None
    copy = rig.channel_messages(channel)[0]
    body = {
        "chat_message": {"message": copy | {"user": {"username": "x"}}, "channel": {"id": channel}}
    }
    deliver(rig, "chat_message_created", body)  # linked: came from Chat
    bo = rig.store.user_for_gchat("users/3")
    assert bo is not None and bo.created_by_bridge
    own = rig.discourse.send_chat_message(channel, "typed by bo", as_user=bo.discourse_username)
    body = {
        "chat_message": {
            "message": {
                "id": own,
                "message": "typed by bo",
                "created_at": "2024-05-01T12:00:00Z",
                "user": {"username": bo.discourse_username},
            },
            "channel": {"id": channel},
        }
    }
    # Bo claimed the account the bridge made for him (a password reset) and typed this in
    # Discourse himself: no link, no pending write, so it is his and crosses to Chat.
    deliver(rig, "chat_message_created", body)
    texts = rig.chat_texts("spaces/grp")
    assert len(texts) == 2 and texts[0] == "from bo" and texts[1].endswith("typed by bo")
    deliver(rig, "chat_message_created", body)  # a redelivery: linked now
    assert len(rig.chat_texts("spaces/grp")) == 2


def test_catch_up_enqueues_missed_messages_once(rig: Rig) -> None:
    channel_history = rig.forum.control.create_dm_channel("ann", [])  # Ann's self-DM: unrelated
    assert channel_history["id"]
    _say(rig, "spaces/dm1", "users/2", "hello")
    assert rig.sync.poll_once().ok
    channel = rig.store.channel_for_space("spaces/dm1")
    assert channel is not None
    ids = [rig.discourse.send_chat_message(channel, f"m{i}", as_user="ann") for i in range(3)]
    assert rig.sync.catch_up() == 3
    assert rig.sync.catch_up() == 0
    events = rig.store.due_events(datetime.now(UTC))
    assert len(events) == 1  # one ordering key: the channel; the head is the oldest
    for event_id in ids:
        pending = rig.store.due_events(datetime.now(UTC))
        event = load(pending[0])
        # The row holds ids only; the message the pull read is handed over in memory.
        assert event == PulledChatMessage(event_id, channel)
        if event_id == ids[-1]:
            # A restart between the pull and the worker: the message is read again.
            rig.restart().handle_event(event)
        else:
            rig.sync.handle_event(event)
        rig.store.mark_done(pending[0].id)
    assert rig.chat_texts("spaces/dm1")[1:] == [
        f"*Ann Lee* (@ann) on Discourse:\nm{i}" for i in range(3)
    ]


def test_crash_between_send_and_link_is_reconciled_not_doubled(rig: Rig) -> None:
    _say(rig, "spaces/dm1", "users/2", "first")
    assert rig.sync.poll_once().ok
    channel = rig.store.channel_for_space("spaces/dm1")
    assert channel is not None
    second = _say(rig, "spaces/dm1", "users/2", "same text")
    # What a crash leaves: the intent recorded and the message sent, but no link.
    rig.store.begin_write(second["name"])
    rig.discourse.send_chat_message(channel, "same text", as_user="ann")
    body = {
        "chat_message": {
            "message": {
                "id": 10**6,
                "message": "x",
                "created_at": "2024-05-01T12:00:00Z",
                "user": {"username": "ann"},
            },
            "channel": {"id": channel},
        }
    }
    with pytest.raises(Exception, match="unconfirmed"):
        deliver(rig, "chat_message_created", body)
    result = rig.restart().poll_once()
    assert result.ok and result.mirrored == 1
    assert [m["message"] for m in rig.channel_messages(channel)] == ["first", "same text"]
    assert rig.store.pending_writes() == []
