"""Auth, /token refresh, faults, quotas, the control API, the contract validator and the CLI.

Every response the googleapiclient services receive is validated against chat.v1.json when the
`world` fixture tears down.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from unittest import mock

import httplib2
import pytest
import requests
from google.auth.exceptions import RefreshError
from googleapiclient.errors import HttpError

from emulators.google_chat import ChatEmulator
from tests.emulators.chat_contract import (
    ChatWorld,
    Exchange,
    contract_errors,
    error_status,
    load_spec,
    make_world,
    validate,
)


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[ChatWorld]:
    w = make_world(chat_emulator)
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


class FakeClock:
    """A monotonic clock that only moves when told (for deterministic quota windows)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met before the deadline")


def _err(call: object) -> tuple[int, str]:
    with pytest.raises(HttpError) as info:
        call.execute()  # type: ignore[attr-defined]
    return error_status(info.value)


# --------------------------------------------------------------------------- auth
def test_missing_token_is_unauthenticated(world: ChatWorld) -> None:
    anon = world.build_anonymous()
    with pytest.raises(HttpError) as info:
        anon.spaces().get(name=world.space).execute()
    assert error_status(info.value) == (401, "UNAUTHENTICATED")
    raw = requests.get(f"{world.emu.url}/v1/{world.space}", timeout=10)
    assert raw.status_code == 401 and raw.headers["WWW-Authenticate"].startswith("Bearer")
    assert validate(world.spec, "Empty", {}) == []


def test_unknown_expired_and_revoked_tokens(world: ChatWorld) -> None:
    unknown, _ = world.build("not-a-token", refresh_on_401=False)
    assert _err(unknown.spaces().get(name=world.space)) == (401, "UNAUTHENTICATED")
    short = world.emu.control.add_token(world.bob, access_token="bob-short")["access_token"]
    bob, _ = world.build(short, refresh_on_401=False)
    assert bob.spaces().get(name=world.space).execute()["name"] == world.space
    world.emu.control.expire_tokens(access_token="bob-short")
    assert _err(bob.spaces().get(name=world.space)) == (401, "UNAUTHENTICATED")
    assert world.chat.spaces().get(name=world.space).execute()  # Alice's token is unaffected
    alice, _ = world.build(world.tokens["access_token"], refresh_on_401=False)
    world.emu.control.revoke_token(access_token=world.tokens["access_token"])
    assert _err(alice.spaces().get(name=world.space)) == (401, "UNAUTHENTICATED")
    # Through the default wiring, google-auth tries to refresh the 401 and cannot.
    with pytest.raises(RefreshError):
        world.chat.spaces().get(name=world.space).execute()


def test_refresh_through_token_endpoint(world: ChatWorld) -> None:
    creds = {
        "refresh_token": world.tokens["refresh_token"],
        "token_uri": f"{world.emu.url}/token",
        "client_id": "client-id",
        "client_secret": "client-secret",
        "scopes": ["https://www.googleapis.com/auth/chat.messages"],
    }
    chat, http = world.build(None, **creds)
    msg = chat.spaces().messages().create(parent=world.space, body={"text": "hi"}).execute()
    assert msg["sender"]["name"] == world.alice
    # The server-side expiry of the new access token makes the library refresh on the 401.
    world.emu.control.expire_tokens()
    assert chat.spaces().get(name=world.space).execute()["name"] == world.space
    paths = [
        (r["method"], r["path"], r["status"]) for r in world.emu.control.requests()["requests"]
    ]
    assert paths.count(("POST", "/token", 200)) == 2
    assert ("GET", f"/v1/{world.space}", 401) in paths
    world.emu.control.revoke_token(refresh_token=world.tokens["refresh_token"])
    world.emu.control.expire_tokens()
    with pytest.raises(RefreshError, match="invalid_grant"):
        chat.spaces().get(name=world.space).execute()
    bad = requests.post(
        f"{world.emu.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": "unknown"},
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }


# --------------------------------------------------------------------------- faults
def test_status_fault_then_retry_succeeds(world: ChatWorld) -> None:
    world.emu.control.add_fault(count=2, status=503, method="POST", path_regex=r"/messages$")
    assert world.chat.spaces().get(name=world.space).execute()  # GET is not matched
    with mock.patch("googleapiclient.http.time.sleep") as fake_sleep:
        call = world.chat.spaces().messages().create(parent=world.space, body={"text": "x"})
        msg = call.execute(num_retries=3)
    assert fake_sleep.call_count == 2
    assert msg["text"] == "x"
    statuses = [
        r["status"] for r in world.emu.control.requests()["requests"] if r["method"] == "POST"
    ]
    assert statuses == [503, 503, 200]
    world.emu.control.add_fault(count=1, status=500)
    assert _err(world.chat.spaces().get(name=world.space)) == (500, "INTERNAL")


def test_latency_fault(world: ChatWorld) -> None:
    world.emu.control.add_fault(count=1, latency_ms=300)
    start = time.monotonic()
    assert world.chat.spaces().get(name=world.space).execute()["name"] == world.space
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    world.chat.spaces().get(name=world.space).execute()
    assert time.monotonic() - start < 0.3


def test_dropped_connection_fault(world: ChatWorld) -> None:
    # httplib2 silently retries a dropped request once, so drop more than that.
    world.emu.control.add_fault(count=5, drop_connection=True, path_regex=r"^/v1/spaces/")
    with pytest.raises((ConnectionError, httplib2.HttpLib2Error, OSError)):
        world.chat.spaces().get(name=world.space).execute()
    world.emu.control.clear_faults()
    assert world.chat.spaces().get(name=world.space).execute()["name"] == world.space
    assert 0 in [r["status"] for r in world.emu.control.requests()["requests"]]


# --------------------------------------------------------------------------- quotas
def test_space_write_quota_real_time_with_time_scale(world: ChatWorld) -> None:
    # 1 write/s per space, 20x faster: a second write within 50 ms is refused.
    world.emu.control.configure(quotas_enabled=True, time_scale=20)
    msgs = world.chat.spaces().messages()
    msgs.create(parent=world.space, body={"text": "1"}).execute()
    with pytest.raises(HttpError) as info:
        msgs.create(parent=world.space, body={"text": "2"}).execute()
    assert error_status(info.value) == (429, "RESOURCE_EXHAUSTED")
    detail = json.loads(info.value.content)["error"]["details"][0]
    assert detail["reason"] == "RATE_LIMIT_EXCEEDED"

    def succeeds() -> bool:
        try:
            msgs.create(parent=world.space, body={"text": "2"}).execute()
            return True
        except HttpError as exc:
            assert exc.status_code == 429
            return False

    _wait_for(succeeds, timeout=5)


def test_quotas_with_fake_clock() -> None:
    clock = FakeClock()
    emu = ChatEmulator.start(monotonic=clock)
    try:
        w = make_world(emu, quotas=True)
        emu.control.configure(project_write_limit=[3, 60])
        msgs, spaces = w.chat.spaces().messages(), w.chat.spaces()
        # Reads: 15 per second per space.
        for _ in range(15):
            spaces.get(name=w.space).execute()
        assert _err(spaces.get(name=w.space)) == (429, "RESOURCE_EXHAUSTED")
        clock.advance(1.0)
        spaces.get(name=w.space).execute()
        # A retrying client that waits as googleapiclient does gets through.
        msgs.create(parent=w.space, body={"text": "a"}).execute()
        with mock.patch("googleapiclient.http.time.sleep", side_effect=clock.advance):
            assert msgs.create(parent=w.space, body={"text": "b"}).execute(num_retries=5)
        # Per project: 3 writes a minute here, across spaces.
        other = emu.control.create_space([w.alice], display_name="Other")["name"]
        msgs.create(parent=other, body={"text": "c"}).execute()
        assert _err(msgs.create(parent=other, body={"text": "d"})) == (429, "RESOURCE_EXHAUSTED")
        clock.advance(61)
        assert msgs.create(parent=other, body={"text": "d"}).execute()
        emu.control.configure(quotas_enabled=False)
        for i in range(5):
            msgs.create(parent=w.space, body={"text": f"free {i}"}).execute()
        errors = contract_errors(w.spec, w.all_exchanges())
        assert not errors, errors
    finally:
        emu.stop()


# --------------------------------------------------------------------------- control API
def test_request_log_counts_and_reset(world: ChatWorld) -> None:
    ctl = world.emu.control
    ctl.clear_requests()
    msgs = world.chat.spaces().messages()
    msg = msgs.create(parent=world.space, body={"text": "x"}, messageId="client-one").execute()
    msgs.list(parent=world.space).execute()
    msgs.list(parent=world.space, pageSize=5).execute()
    msgs.get(name=msg["name"]).execute()
    ctl.state()
    log = ctl.requests()
    assert log["counts"] == {
        "POST /v1/spaces/{space}/messages": 1,
        "GET /v1/spaces/{space}/messages": 2,
        "GET /v1/spaces/{space}/messages/{message}": 1,
    }
    first = log["requests"][0]
    assert first["method"] == "POST" and first["path"] == f"/v1/{world.space}/messages"
    assert first["query"]["messageId"] == "client-one" and first["status"] == 200
    assert first["user"] == world.alice
    ctl.clear_requests()
    assert ctl.requests() == {"requests": [], "counts": {}}
    state = ctl.state()
    assert [u["name"] for u in state["users"]] == [world.alice, world.bob]
    assert state["memberships"][world.space][0]["member"]["name"] == world.alice
    assert state["messages"][world.space][0]["clientAssignedMessageId"] == "client-one"
    ctl.add_fault(count=1, status=503)
    ctl.reset()
    assert ctl.state() == {"users": [], "spaces": [], "memberships": {}, "messages": {}}
    config = ctl.configure()
    assert config["quotas_enabled"] is True and config["time_scale"] == 1.0
    bad = requests.post(f"{world.emu.url}/_emulator/config", json={"nope": 1}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_unknown_route_has_google_error_shape(world: ChatWorld) -> None:
    auth = {"Authorization": f"Bearer {world.tokens['access_token']}"}
    resp = requests.get(f"{world.emu.url}/v1/nothing/here", headers=auth, timeout=10)
    assert resp.status_code == 404
    assert resp.json() == {
        "error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}
    }
    exchanges = [Exchange("GET", "/v1/nothing/here", 404, "application/json", resp.content)]
    assert contract_errors(world.spec, exchanges) == []


# --------------------------------------------------------------------------- validator
def test_contract_validator_catches_drift() -> None:
    spec = load_spec()
    good = {
        "name": "spaces/A/messages/B.C",
        "sender": {"name": "users/1", "type": "HUMAN"},
        "createTime": "2024-05-02T09:30:12.345678Z",
        "text": "hi",
        "thread": {"name": "spaces/A/threads/T"},
        "emojiReactionSummaries": [{"emoji": {"unicode": "👍"}, "reactionCount": 2}],
    }
    assert validate(spec, "Message", good) == []
    assert validate(spec, "Message", {**good, "txet": "typo"}) == ["$: unknown property 'txet'"]
    assert validate(spec, "Message", {**good, "sender": {"name": "users/1", "type": "ROBOT"}})
    assert validate(spec, "Message", {**good, "createTime": "yesterday"})
    assert validate(spec, "Message", {**good, "threadReply": "false"})
    bad_count = {**good, "emojiReactionSummaries": [{"emoji": {}, "reactionCount": "2"}]}
    assert validate(spec, "Message", bad_count) == [
        "$.emojiReactionSummaries[0].reactionCount: expected integer, got str '2'"
    ]
    drifted = [Exchange("GET", "/v1/spaces/A", 200, "application/json", b'{"nmae": "x"}')]
    assert contract_errors(spec, drifted)
    mislabeled = [Exchange("GET", "/v1/spaces/A", 404, "application/json", b'{"error": {}}')]
    assert contract_errors(spec, mislabeled)


# --------------------------------------------------------------------------- CLI
def test_runs_standalone_as_a_module(tmp_path: object) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.google_chat", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return requests.get(f"{url}/_emulator/state", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        _wait_for(up, timeout=15)
        user = requests.post(f"{url}/_emulator/users", json={"displayName": "A"}, timeout=5)
        assert user.json()["name"].startswith("users/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
