"""Real-time Chat events in a test world: a Cloud project in the Pub/Sub emulator, the bridge's
token with the Pub/Sub scope, `google.events` in its config, and `check --fix` to set it up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.harness import BridgeFiles, register_bridge_account, run_main, wait_for
from tests.e2e.world import BRIDGE_USER, World

PROJECT = "bridge-project"
TOPIC = f"projects/{PROJECT}/topics/chat-events"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/bridge"
CHAT_PUBLISHER = "serviceAccount:chat-api-push@system.gserviceaccount.com"
AUTH = "https://www.googleapis.com/auth/"
SCOPES = [
    AUTH + "chat.messages",
    AUTH + "chat.spaces.readonly",
    AUTH + "chat.memberships.readonly",
    AUTH + "pubsub",
]
MESSAGE_LIST = "GET /v1/spaces/{space}/messages"


def events_config(
    world: World,
    mappings: list[dict[str, Any]],
    *,
    poll_interval_seconds: float = 900,
    setup: bool = True,
    **kw: Any,
) -> BridgeFiles:
    """A bridge config with events on (and, with `setup`, `check --fix` already run)."""
    world.chat.pubsub.state.add_project(PROJECT, owners=["user:bridge@example.com"])
    directory: Path = world.tmp_path / "bridge"
    directory.mkdir(parents=True, exist_ok=True)
    register_bridge_account(
        world.chat.control, BRIDGE_USER, world.chat.url, directory / "token.json", scopes=SCOPES
    )
    files = world.config(
        mappings,
        poll_interval_seconds=poll_interval_seconds,
        extra_google=events_google(world),
        **kw,
    )
    if setup:
        fixed = run_main(["--config", str(files.config), "check", "--fix"])
        assert f"Pub/Sub subscription {SUBSCRIPTION} created" in fixed.stdout, fixed.stdout
    return files


def events_google(world: World) -> dict[str, Any]:
    """The `google.events` section pointing at the world's emulators."""
    return {
        "events": {
            "pubsub_topic": TOPIC,
            "pubsub_subscription": SUBSCRIPTION,
            "workspace_events_endpoint": world.chat.url,
            "pubsub_endpoint": world.chat.pubsub.url,
        }
    }


def subscriptions(world: World, state: str = "ACTIVE") -> list[dict[str, Any]]:
    """The emulator's Workspace Events subscriptions in `state`."""
    return [s for s in world.chat.control.subscriptions()["subscriptions"] if s["state"] == state]


def wait_subscribed(world: World, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Wait until `count` subscriptions are ACTIVE; return them."""
    return wait_for(
        lambda: (subs := subscriptions(world)) and len(subs) >= count and subs,
        timeout=timeout,
        what=f"{count} active subscriptions",
    )


def message_lists(world: World) -> int:
    """How many `messages.list` requests Chat has served since its log was cleared."""
    return int(world.chat.control.requests()["counts"].get(MESSAGE_LIST, 0))


def backlog(world: World) -> dict[str, int]:
    """The bridge's Pub/Sub subscription: messages not yet delivered, and delivered unacked."""
    for sub in world.chat.pubsub.state.state_json()["subscriptions"]:
        if sub["name"] == SUBSCRIPTION:
            return {"undelivered": sub["undelivered"], "outstanding": sub["outstanding"]}
    raise AssertionError(f"no Pub/Sub subscription {SUBSCRIPTION}")
