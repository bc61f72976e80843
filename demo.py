"""`python main.py demo`: both emulators, a throwaway config, the bridge, a scripted conversation.

Role: the README's first command (`make demo`). It needs no credentials and no network beyond
127.0.0.1: it starts the Google Chat and Discourse emulators, writes a config and a token file for
them, runs `check --fix` (which creates the webhook), starts `python main.py run` as a subprocess,
plays a conversation in both directions, and stops the bridge with SIGTERM.

Invariants:
- This is the one product module that may import `emulators` (test fixtures that the Docker image
  does not ship), and only lazily inside `run_demo`, so importing it never needs them.
- Only `main.py` imports this module, lazily, in its `demo` command (tests/test_architecture.py).
- The bridge runs exactly as an operator runs it (`main.py run` in a process of its own); the
  demo judges it by the emulators' state, never by its database.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml  # config_loader owns YAML reading; the demo only writes a config file

from cli import EXIT_FAILED, EXIT_OK, FAIL, OK, auth_scopes, run_check
from config_loader import load_config
from google_chat_client import write_token_file

DEMO_API_KEY = "demo-api-key"
DEMO_SECRET = "demo-webhook-secret-0123"
DEMO_BRIDGE_USER = "users/100000000000000000001"
DEMO_STEP_TIMEOUT = 20.0
DEMO_PROJECT = "demo-project"
# The poll runs this rarely in the demo, so that what crosses from Chat visibly crosses by
# Workspace Events (the poll stays the safety net, as in production).
DEMO_POLL_SECONDS = 900


def _say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


def _wait(condition: Callable[[], Any], timeout: float = DEMO_STEP_TIMEOUT) -> Any:
    """Poll `condition` until it returns something truthy; None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _DemoFailed(Exception):
    pass


def run_demo(*, out: TextIO = sys.stdout, keep: Path | None = None) -> int:
    """Both emulators, a throwaway config, the bridge, and a scripted two-way conversation.

    Needs no credentials and no network beyond 127.0.0.1. `keep` keeps the files there.
    """
    # The emulators are test fixtures: only the demo (and tests, bench/) may import them.
    from emulators.discourse import DiscourseEmulator
    from emulators.google_chat import ChatEmulator

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="gchat-discourse-demo-") as tmp:
        directory = keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        chat = ChatEmulator.start(host="127.0.0.1", port=0)
        forum = DiscourseEmulator.start(host="127.0.0.1", port=0, api_key=DEMO_API_KEY)
        bridge: subprocess.Popen[bytes] | None = None
        try:
            _say(out, f"Google Chat emulator: {chat.url}")
            _say(out, f"Discourse emulator:   {forum.url}")
            world = _demo_world(chat, forum, directory)
            config_path = directory / "config.yaml"
            config = load_config(config_path)
            _say(out, f"Config: {config_path}\n")
            _say(out, "$ python main.py check --fix")
            if run_check(config, fix=True, out=out) != EXIT_OK:
                raise _DemoFailed("check failed against the emulators")
            _say(out, "\n$ python main.py run   (in the background)")
            log = open(directory / "bridge.out", "ab")  # noqa: SIM115 - closed below
            bridge = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("main.py")),
                    "--config",
                    str(config_path),
                    "run",
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            log.close()
            _demo_script(chat, forum, world, out)
        except _DemoFailed as exc:
            _say(out, f"\n{FAIL} demo failed: {exc}")
            log_file = directory / "bridge.log"
            if log_file.exists():
                _say(out, "last lines of the bridge's log:")
                for line in log_file.read_text(errors="replace").splitlines()[-15:]:
                    _say(out, "  " + line)
            return EXIT_FAILED
        finally:
            if bridge is not None:
                code = _stop_bridge(bridge)
                _say(out, f"\nbridge stopped on SIGTERM (exit code {code})")
            chat.stop()
            forum.stop()
    _say(out, f"{OK} demo finished: both directions bridged, nothing duplicated, no credentials")
    return EXIT_OK


def _stop_bridge(bridge: subprocess.Popen[bytes]) -> int:
    if bridge.poll() is None:
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(timeout=15)
        except subprocess.TimeoutExpired:
            bridge.kill()
            bridge.wait(timeout=5)
    return int(bridge.returncode)


@dataclass(frozen=True, slots=True)
class _DemoWorld:
    space: str
    category_id: int
    alice: str


def _demo_world(chat: Any, forum: Any, directory: Path) -> _DemoWorld:
    forum.control.settings(max_admin_api_reqs_per_minute=100000)
    chat.control.create_user(
        name=DEMO_BRIDGE_USER, displayName="Bridge Bot", email="bridge@example.com"
    )
    alice = chat.control.create_user(
        name="users/200000000000000000001", displayName="Alice Chen", email="alice@example.com"
    )["name"]
    space = chat.control.create_space(
        displayName="Team Room", spaceType="SPACE", members=[DEMO_BRIDGE_USER, alice]
    )["name"]
    category_id = int(forum.control.create_category(name="Team Room")["id"])
    forum.control.create_user(
        "carol", name="Carol Diaz", email="carol@forum.example.com", trust_level=1
    )
    # A Cloud project in the Pub/Sub emulator, administered by the bridge's account, so that
    # `check --fix` can create the topic, Chat's publisher grant and the pull subscription.
    chat.pubsub.state.add_project(DEMO_PROJECT, owners=["user:bridge@example.com"])
    events = {
        "pubsub_topic": f"projects/{DEMO_PROJECT}/topics/gchat-discourse",
        "pubsub_subscription": f"projects/{DEMO_PROJECT}/subscriptions/gchat-discourse",
        "workspace_events_endpoint": chat.url,
        "pubsub_endpoint": chat.pubsub.url,
    }
    token_file = directory / "token.json"
    config: dict[str, Any] = {
        "discourse": {
            "url": forum.url,
            "api_key": DEMO_API_KEY,
            "api_username": "system",
            "requests_per_minute": 6000,
            "webhook_secret": DEMO_SECRET,
        },
        "google": {
            "credentials_file": "credentials.json",
            "token_file": str(token_file),
            "api_endpoint": chat.url,
            "events": events,
        },
        "sync_settings": {
            "poll_interval_seconds": DEMO_POLL_SECONDS,
            "webhook_host": "127.0.0.1",
            "webhook_port": _free_port(),
            "database": "bridge.sqlite",
            "log_file": "bridge.log",
        },
        "mappings": [{"google_space_id": space, "discourse_category_id": category_id}],
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    scopes = auth_scopes(load_config(directory / "config.yaml"))
    tokens = chat.control.add_token(
        user=DEMO_BRIDGE_USER, refresh_token="demo-refresh-token", scopes=list(scopes)
    )
    write_token_file(
        token_file,
        {
            "token": tokens["access_token"],
            "refresh_token": tokens["refresh_token"],
            "token_uri": f"{chat.url}/token",
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            "scopes": list(scopes),
        },
    )
    return _DemoWorld(space=space, category_id=category_id, alice=alice)


def _demo_script(chat: Any, forum: Any, world: _DemoWorld, out: TextIO) -> None:
    def posts() -> list[dict[str, Any]]:
        return [
            p
            for p in forum.control.state()["posts"]
            if p.get("deleted_at") is None and p.get("post_type", 1) == 1
        ]

    def post_with(marker: str) -> dict[str, Any] | None:
        return next((p for p in posts() if marker in (p.get("raw") or "")), None)

    def subscriptions() -> list[dict[str, Any]]:
        return list(chat.control.subscriptions()["subscriptions"])

    def chat_messages() -> list[dict[str, Any]]:
        return list(chat.control.state()["messages"].get(world.space, []))

    def chat_with(text: str) -> dict[str, Any] | None:
        return next((m for m in chat_messages() if text in (m.get("text") or "")), None)

    def expect(value: Any, what: str) -> Any:
        if not value:
            raise _DemoFailed(f"timed out waiting for {what}")
        return value

    _say(out, "\n--- the conversation ---")
    expect(
        _wait(lambda: any(s["state"] == "ACTIVE" for s in subscriptions())),
        "the bridge's Workspace Events subscription",
    )
    _say(out, "(the bridge subscribed to the space's events; the poll runs every 15 minutes)")
    first = chat.control.post_message(
        world.space, sender=world.alice, text="Hello from Google Chat! Is the forum listening?"
    )
    sent = time.monotonic()
    _say(out, f"[Chat]      Alice Chen: {first['text']}")
    post = expect(_wait(lambda: post_with(first["name"])), "the Chat message in Discourse")
    _say(out, f"  (in the forum {time.monotonic() - sent:.1f} s later, by Workspace Events)")
    topic_id = int(post["topic_id"])
    topic = next(t for t in forum.control.state()["topics"] if t["id"] == topic_id)
    _say(
        out,
        f'  Chat -> Discourse: new topic #{topic_id} "{topic["title"]}" by @{post["username"]}',
    )

    reply = chat.control.post_message(
        world.space,
        sender=world.alice,
        text="Replies in the thread become replies in the topic.",
        threadName=first["thread"]["name"],
    )
    _say(out, f"[Chat]      Alice Chen (in the thread): {reply['text']}")
    post = expect(_wait(lambda: post_with(reply["name"])), "the thread reply in Discourse")
    _say(out, f"  Chat -> Discourse: post #{post['post_number']} in topic #{topic_id}")

    answer = "Loud and clear, Alice. Forum replies come back to your thread."
    forum.control.create_post("carol", answer, topic_id=topic_id)
    _say(out, f"[Discourse] carol (in topic #{topic_id}): {answer}")
    message = expect(_wait(lambda: chat_with(answer)), "the forum reply in Chat")
    same_thread = message.get("thread", {}).get("name") == first["thread"]["name"]
    _say(
        out,
        f"  Discourse -> Chat: {message['name']}"
        + (" in Alice's thread" if same_thread else " (new thread)"),
    )

    body = "A topic started on the forum becomes a new Chat thread."
    created = forum.control.create_post(
        "carol", body, title="Agenda for the Friday demo", category_id=world.category_id
    )
    _say(out, f'[Discourse] carol, new topic "Agenda for the Friday demo": {body}')
    message = expect(_wait(lambda: chat_with(body)), "the forum topic in Chat")
    _say(out, f"  Discourse -> Chat: new thread {message['thread']['name']}")

    edited = body + " (edited: Friday at 10:00)"
    forum.control.edit_post(int(created.get("id") or created["post"]["id"]), raw=edited)
    _say(out, f"[Discourse] carol edits her post: {edited}")
    # Edits are carried only by versions that implement them; the demo says which it saw.
    if _wait(lambda: chat_with("Friday at 10:00"), timeout=5.0):
        _say(out, "  Discourse -> Chat: the Chat message was edited")
    else:
        _say(out, "  (this version does not carry edits yet: the Chat message is unchanged)")

    markers = [p.get("raw", "") for p in posts()]
    duplicates = len(markers) - len(set(markers))
    if duplicates:
        raise _DemoFailed(f"{duplicates} duplicated posts in Discourse")
