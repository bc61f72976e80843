"""The Chat emulator's `/token` as Google's token endpoint for service accounts (issue 16).

Domain-wide delegation end to end with the real libraries: google-auth signs the JWT-bearer
assertion from a key file the emulator issued (`service_account.Credentials ... with_subject`),
googleapiclient calls Chat with the token, and the emulator applies its rules to the subject.
Refusals are checked as the client sees them (`RefreshError` carrying Google's body) and on the
wire (status and body); crafted assertions use google-auth's own `crypt` / `jwt` helpers.
Every response googleapiclient receives is validated against chat.v1.json at teardown.
"""

from __future__ import annotations

import base64
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth import crypt, jwt
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from emulators.google_chat import ChatEmulator
from emulators.google_chat_state import JSON
from tests.emulators.chat_contract import (
    ChatWorld,
    RecordingHttp,
    contract_errors,
    error_status,
    make_world,
)

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_AUD = "https://oauth2.googleapis.com/token"
AUTH = "https://www.googleapis.com/auth/"
MESSAGES = AUTH + "chat.messages"
SPACES_READONLY = AUTH + "chat.spaces.readonly"
SA_EMAIL = "chat-bridge@bridge-project.iam.gserviceaccount.com"
NOT_DELEGATED = {
    "error": "unauthorized_client",
    "error_description": "Client is unauthorized to retrieve access tokens using this method, "
    "or client not authorized for any of the scopes requested.",
}
BAD_SUBJECT = {"error": "invalid_grant", "error_description": "Invalid email or User ID"}
BAD_SIGNATURE = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
BAD_AUDIENCE = {
    "error": "invalid_grant",
    "error_description": "Invalid JWT: Failed audience check.",
}
BAD_TIMEFRAME = {
    "error": "invalid_grant",
    "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
    "reasonable timeframe. Check your iat and exp values and use a clock with skew to account "
    "for clock differences between systems.",
}


@pytest.fixture
def world(chat_emulator: ChatEmulator) -> Iterator[ChatWorld]:
    """Alice and Bob (example.com) in `spaces/AAAATEST`; Carol (other.example) and Dave
    (example.com) exist but are in no space."""
    w = make_world(chat_emulator)
    ctl = chat_emulator.control
    ctl.create_user("Carol Other", name="users/1003", email="carol@other.example")
    ctl.create_user("Dave Example", name="users/1004", email="dave@example.com")
    yield w
    errors = contract_errors(w.spec, w.all_exchanges())
    assert not errors, "\n".join(errors)


@pytest.fixture
def key_path(world: ChatWorld, tmp_path: Path) -> Path:
    """A key file for a service account the example.com admin delegated `chat.messages` to."""
    path = tmp_path / "service-account.json"
    world.emu.control.write_service_account_file(
        path, client_email=SA_EMAIL, domains=["example.com"], delegated_scopes=[MESSAGES]
    )
    return path


def _credentials(
    key_path: Path, subject: str | None, scopes: tuple[str, ...] = (MESSAGES,)
) -> service_account.Credentials:
    creds = service_account.Credentials.from_service_account_file(
        str(key_path), scopes=list(scopes)
    )
    return creds.with_subject(subject) if subject is not None else creds


def _refreshed(key_path: Path, subject: str | None, **kwargs: Any) -> Any:
    creds = _credentials(key_path, subject, **kwargs)
    creds.refresh(Request())
    return creds


def _refusal(key_path: Path, subject: str | None, **kwargs: Any) -> Any:
    """The response body carried by the RefreshError google-auth raises."""
    with pytest.raises(RefreshError) as info:
        _credentials(key_path, subject, **kwargs).refresh(Request())
    return info.value.args[1]


def _chat(world: ChatWorld, creds: Any) -> Any:
    """A googleapiclient Chat service on `creds`, recorded for the contract check."""
    http = RecordingHttp(timeout=10)
    world.extra_https.append(http)
    authed = AuthorizedHttp(creds, http=http)
    return build_from_document(world.emu.discovery_document(), http=authed)


def _assertion(key: JSON, *, key_id: str | None = None, **claims: Any) -> str:
    """A JWT-bearer assertion signed with `key` the way google-auth signs one; a claim given
    as None is left out."""
    signer = crypt.RSASigner.from_service_account_info(key)
    now = int(time.time())
    payload: JSON = {
        "iss": key["client_email"],
        "aud": GOOGLE_AUD,
        "iat": now,
        "exp": now + 3600,
        "scope": MESSAGES,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return str(jwt.encode(signer, payload, key_id=key_id).decode("ascii"))


def _grant(world: ChatWorld, assertion: str, **form: str) -> tuple[int, JSON]:
    data = {"grant_type": JWT_GRANT, "assertion": assertion, **form}
    resp = requests.post(f"{world.emu.url}/token", data=data, timeout=10)
    return resp.status_code, resp.json()


def _key(world: ChatWorld, **body: Any) -> JSON:
    body.setdefault("domains", ["example.com"])
    body.setdefault("delegated_scopes", [MESSAGES])
    return world.emu.control.create_service_account(**body)


# --------------------------------------------------------------------------- the key file
def test_the_key_file_is_a_complete_service_account_key_readable_by_its_owner_only(
    world: ChatWorld, key_path: Path
) -> None:
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = json.loads(key_path.read_text())
    assert set(key) == {
        "type",
        "project_id",
        "private_key_id",
        "private_key",
        "client_email",
        "client_id",
        "auth_uri",
        "token_uri",
        "auth_provider_x509_cert_url",
        "client_x509_cert_url",
        "universe_domain",
    }
    assert key["type"] == "service_account"
    assert key["project_id"] == "bridge-project"
    assert key["client_email"] == SA_EMAIL
    assert key["client_id"].isdigit() and len(key["client_id"]) == 21
    assert len(key["private_key_id"]) == 40 and int(key["private_key_id"], 16) >= 0
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")
    assert key["token_uri"] == f"{world.emu.url}/token"
    assert key["client_x509_cert_url"].endswith(SA_EMAIL.replace("@", "%40"))
    assert key["universe_domain"] == "googleapis.com"
    # Rewriting an existing, more open file still leaves it owner-only.
    key_path.chmod(0o644)
    world.emu.control.write_service_account_file(
        key_path, client_email="other-bridge@bridge-project.iam.gserviceaccount.com"
    )
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    listed = world.emu.control.service_accounts()["service_accounts"]
    assert [a["client_email"] for a in listed] == [
        SA_EMAIL,
        "other-bridge@bridge-project.iam.gserviceaccount.com",
    ]
    assert listed[0] == {
        "client_email": SA_EMAIL,
        "client_id": key["client_id"],
        "project_id": "bridge-project",
        "private_key_id": key["private_key_id"],
        "domains": ["example.com"],
        "delegated_scopes": [MESSAGES],
    }


# --------------------------------------------------------------------------- delegation works
def test_a_delegated_token_creates_messages_as_its_subject(
    world: ChatWorld, key_path: Path
) -> None:
    alice = _chat(world, _refreshed(key_path, "alice@example.com"))
    bob = _chat(world, _refreshed(key_path, "Bob@Example.com"))  # emails match in any case
    made = alice.spaces().messages().create(parent=world.space, body={"text": "hi"}).execute()
    assert made["sender"]["name"] == world.alice
    reply = bob.spaces().messages().create(parent=world.space, body={"text": "yo"}).execute()
    assert reply["sender"]["name"] == world.bob
    # The subject's own rules: Bob may not edit Alice's message.
    with pytest.raises(HttpError) as info:
        bob.spaces().messages().patch(
            name=made["name"], updateMask="text", body={"text": "mine"}
        ).execute()
    assert error_status(info.value) == (403, "PERMISSION_DENIED")
    senders = [m["sender"]["name"] for m in world.emu.control.state()["messages"][world.space]]
    assert senders == [world.alice, world.bob]
    log = world.emu.control.requests()
    creates = [r for r in log["requests"] if r["path"] == f"/v1/{world.space}/messages"]
    assert [r["user"] for r in creates] == [world.alice, world.bob]
    tokens = [r for r in log["requests"] if r["path"] == "/token"]
    assert [(r["user"], r["grant_type"], r["status"]) for r in tokens] == [
        (world.alice, JWT_GRANT, 200),
        (world.bob, JWT_GRANT, 200),
    ]
    assert log["token_grants"] == {JWT_GRANT: 2}
    assert log["counts"]["POST /token"] == 2


def test_the_grant_answers_a_bearer_token_without_echoing_scope(
    world: ChatWorld, key_path: Path
) -> None:
    key = json.loads(key_path.read_text())
    status, body = _grant(world, _assertion(key, sub="alice@example.com"))
    assert status == 200
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    world.emu.control.configure(access_token_lifetime=120)
    status, body = _grant(world, _assertion(key, sub="alice@example.com"))
    assert (status, body["expires_in"]) == (200, 120)
    # The token carries the requested scopes (what Pub/Sub is told), not the delegated set.
    assert world.emu.state.token_info(body["access_token"]) == (
        "user:alice@example.com",
        frozenset({MESSAGES}),
    )


def test_quotas_and_membership_apply_to_the_subject(world: ChatWorld, key_path: Path) -> None:
    dave = _chat(world, _refreshed(key_path, "dave@example.com"))
    with pytest.raises(HttpError) as info:
        dave.spaces().messages().create(parent=world.space, body={"text": "hi"}).execute()
    assert error_status(info.value) == (403, "PERMISSION_DENIED")
    with pytest.raises(HttpError) as info:
        dave.spaces().messages().list(parent=world.space).execute()
    assert error_status(info.value) == (403, "PERMISSION_DENIED")
    assert world.emu.control.state()["messages"][world.space] == []
    # The per-space write quota (1/s) is shared: Alice and Bob, both delegated, hit it together.
    world.emu.control.configure(quotas_enabled=True)
    alice = _chat(world, _refreshed(key_path, "alice@example.com"))
    bob = _chat(world, _refreshed(key_path, "bob@example.com"))
    alice.spaces().messages().create(parent=world.space, body={"text": "one"}).execute()
    with pytest.raises(HttpError) as info:
        bob.spaces().messages().create(parent=world.space, body={"text": "two"}).execute()
    assert error_status(info.value) == (429, "RESOURCE_EXHAUSTED")


# --------------------------------------------------------------------------- the subject
def test_a_subject_outside_the_delegating_domain_is_an_unauthorized_client(
    world: ChatWorld, key_path: Path
) -> None:
    # Carol exists, but the admin who delegated runs example.com, not other.example.
    assert _refusal(key_path, "carol@other.example") == NOT_DELEGATED
    key = json.loads(key_path.read_text())
    status, body = _grant(world, _assertion(key, sub="carol@other.example"))
    assert (status, body) == (401, NOT_DELEGATED)
    # The admin of other.example joins the grant: now Carol can be impersonated.
    world.emu.control.set_delegation(
        key["client_id"], [MESSAGES], domains=["example.com", "other.example"]
    )
    assert _refreshed(key_path, "carol@other.example").token.startswith("ya29.")


def test_an_unknown_or_suspended_subject_is_an_invalid_grant(
    world: ChatWorld, key_path: Path
) -> None:
    assert _refusal(key_path, "nobody@example.com") == BAD_SUBJECT
    assert _refusal(key_path, "users/1001") == BAD_SUBJECT  # an email, not a resource name
    key = json.loads(key_path.read_text())
    assert _grant(world, _assertion(key, sub=SA_EMAIL)) == (400, BAD_SUBJECT)
    assert _grant(world, _assertion(key, sub=12345)) == (400, BAD_SUBJECT)

    bob = _chat(world, _refreshed(key_path, "bob@example.com"))
    bob.spaces().get(name=world.space).execute()
    suspended = world.emu.control.suspend_user(world.bob)
    assert suspended == {"name": world.bob, "email": "bob@example.com", "suspended": True}
    assert _refusal(key_path, "bob@example.com") == BAD_SUBJECT
    # Bob's token stops working at once; google-auth's refresh then fails with the same body.
    with pytest.raises(RefreshError) as info:
        bob.spaces().get(name=world.space).execute()
    assert info.value.args[1] == BAD_SUBJECT
    # ... and so does a refresh token Bob granted himself.
    tokens = world.emu.control.add_token(world.bob)
    resp = requests.post(
        f"{world.emu.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        timeout=10,
    )
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    world.emu.control.unsuspend_user("bob@example.com")
    restored = _chat(world, _refreshed(key_path, "bob@example.com"))
    assert restored.spaces().get(name=world.space).execute()["name"] == world.space


def test_scopes_must_all_be_delegated_and_stay_delegated(world: ChatWorld, key_path: Path) -> None:
    key = json.loads(key_path.read_text())
    both = (MESSAGES, SPACES_READONLY)
    assert _refusal(key_path, "alice@example.com", scopes=both) == NOT_DELEGATED
    world.emu.control.set_delegation(key["client_id"], [MESSAGES, SPACES_READONLY])
    alice = _chat(world, _refreshed(key_path, "alice@example.com", scopes=both))
    alice.spaces().get(name=world.space).execute()
    # The admin takes the delegation away: the token dies, and the refresh is refused.
    assert world.emu.control.set_delegation(key["client_id"], [])["delegated_scopes"] == []
    with pytest.raises(RefreshError) as info:
        alice.spaces().get(name=world.space).execute()
    assert info.value.args[1] == NOT_DELEGATED
    assert _refusal(key_path, "alice@example.com") == NOT_DELEGATED


# --------------------------------------------------------------------------- the assertion
def test_the_signature_key_id_and_issuer_are_checked(world: ChatWorld, key_path: Path) -> None:
    key = json.loads(key_path.read_text())
    good = _assertion(key, sub="alice@example.com")
    head, claims, signature = good.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert _grant(world, f"{head}.{claims}.{flipped}") == (400, BAD_SIGNATURE)
    assert _grant(world, _assertion(key, key_id="0" * 40)) == (400, BAD_SIGNATURE)
    # Another account's key, claiming to be this one (its kid swapped in).
    other = _key(world, client_email="intruder@bridge-project.iam.gserviceaccount.com")
    forged = _assertion(other, iss=SA_EMAIL, key_id=key["private_key_id"])
    assert _grant(world, forged) == (400, BAD_SIGNATURE)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{claims}."
    assert _grant(world, unsigned) == (400, BAD_SIGNATURE)
    unknown = _assertion(other, iss="ghost@bridge-project.iam.gserviceaccount.com")
    assert _grant(world, unknown) == (
        400,
        {"error": "invalid_grant", "error_description": "Invalid grant: account not found"},
    )


def test_the_audience_is_googles_token_endpoint_or_this_one(
    world: ChatWorld, key_path: Path
) -> None:
    key = json.loads(key_path.read_text())
    for aud in (
        "https://example.com/token",
        "https://www.googleapis.com/oauth2/v4/token",  # legacy endpoints: stricter reading
        [GOOGLE_AUD],
    ):
        assert _grant(world, _assertion(key, aud=aud)) == (400, BAD_AUDIENCE), aud
    status, _ = _grant(world, _assertion(key, aud=key["token_uri"]))
    assert status == 200


def test_the_assertion_must_be_short_lived_and_current(world: ChatWorld, key_path: Path) -> None:
    key = json.loads(key_path.read_text())
    now = int(time.time())
    for claims in (
        {"iat": now - 4000, "exp": now - 400},  # expired
        {"iat": now, "exp": now + 3601},  # longer than an hour
        {"iat": now + 600, "exp": now + 1200},  # issued in the future
        {"iat": now + 10, "exp": now + 5},  # ends before it starts
        {"exp": None},
        {"iat": "now"},
    ):
        assert _grant(world, _assertion(key, **claims)) == (400, BAD_TIMEFRAME), claims
    assert _grant(world, _assertion(key, iat=now - 3000, exp=now + 600))[0] == 200
    assert _grant(world, _assertion(key, iat=now + 30, exp=now + 600))[0] == 200  # skew
    world.emu.control.configure(jwt_clock_skew_seconds=0)
    assert _grant(world, _assertion(key, iat=now + 30, exp=now + 600)) == (400, BAD_TIMEFRAME)


def test_scope_is_required_and_well_formed(world: ChatWorld, key_path: Path) -> None:
    key = json.loads(key_path.read_text())
    missing = {
        "error": "invalid_scope",
        "error_description": "Empty or missing scope not allowed.",
    }
    assert _grant(world, _assertion(key, scope=None)) == (400, missing)
    assert _grant(world, _assertion(key, scope=" ")) == (400, missing)
    assert _grant(world, _assertion(key, scope="chat.messages")) == (
        400,
        {
            "error": "invalid_scope",
            "error_description": "Invalid OAuth scope or ID token audience provided.",
        },
    )
    # Space-separated scopes, as google-auth joins them.
    status, _ = _grant(world, _assertion(key, scope=f"{MESSAGES} {SPACES_READONLY}"))
    assert status == 200


def test_malformed_grant_requests(world: ChatWorld) -> None:
    assert _grant(world, "") == (
        400,
        {"error": "invalid_request", "error_description": "Missing required parameter: assertion"},
    )
    for garbage in ("not-a-jwt", "a.b.c", "e30.e30.%%%"):
        assert _grant(world, garbage) == (
            400,
            {"error": "invalid_grant", "error_description": "Bad Request"},
        ), garbage


# --------------------------------------------------------------------------- no subject
def test_the_service_accounts_own_token_is_refused_by_chat(
    world: ChatWorld, key_path: Path
) -> None:
    creds = _refreshed(key_path, None)
    chat = _chat(world, creds)
    with pytest.raises(HttpError) as info:
        chat.spaces().messages().create(parent=world.space, body={"text": "hi"}).execute()
    assert error_status(info.value) == (403, "PERMISSION_DENIED")
    assert "service account authentication" in info.value.reason
    # What another Google API (Pub/Sub) is told: the service account itself.
    assert world.emu.state.token_info(creds.token) == (
        f"serviceAccount:{SA_EMAIL}",
        frozenset({MESSAGES}),
    )
    users = [r["user"] for r in world.emu.control.requests()["requests"]]
    assert users == [SA_EMAIL, SA_EMAIL]  # the grant and the refused call


# --------------------------------------------------------------------------- apparatus
def test_token_requests_are_counted_per_grant_type(world: ChatWorld, key_path: Path) -> None:
    world.emu.control.clear_requests()
    assert "token_grants" not in world.emu.control.requests()  # only once there are any
    _refreshed(key_path, "alice@example.com")
    _refusal(key_path, "nobody@example.com")
    requests.post(
        f"{world.emu.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": world.tokens["refresh_token"]},
        timeout=10,
    )
    requests.post(f"{world.emu.url}/token", data={"grant_type": "password"}, timeout=10)
    # A faulted grant is counted too; google-auth retries the 503 and gets its token.
    world.emu.control.add_fault(status=503, path_regex="^/token$")
    _refreshed(key_path, "alice@example.com")
    log = world.emu.control.requests()
    assert log["token_grants"] == {JWT_GRANT: 4, "refresh_token": 1, "password": 1}
    assert log["counts"] == {"POST /token": 6}
    assert [r["status"] for r in log["requests"]] == [200, 400, 200, 400, 503, 200]
    assert [r["grant_type"] for r in log["requests"]][2:4] == ["refresh_token", "password"]


def test_the_control_api_validates_service_accounts(world: ChatWorld, key_path: Path) -> None:
    ctl = world.emu.control
    for body in (
        {"client_email": "bridge@gmail.com"},
        {"client_email": "x@bridge-project.iam.gserviceaccount.com"},  # id too short
        {"domains": ["not a domain"]},
        {"delegated_scopes": ["chat.messages"]},
        {"delegated_scope": [MESSAGES]},
    ):
        with pytest.raises(requests.HTTPError) as info:
            ctl.create_service_account(**body)
        assert info.value.response.status_code == 400, body
    with pytest.raises(requests.HTTPError) as info:
        ctl.create_service_account(client_email=SA_EMAIL)
    assert info.value.response.status_code == 409
    with pytest.raises(requests.HTTPError) as info:
        ctl.set_delegation("123", [MESSAGES])
    assert info.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as info:
        ctl.configure(jwt_clock_skew_seconds=-1)
    assert info.value.response.status_code == 400
    with pytest.raises(requests.HTTPError) as info:
        ctl.suspend_user("users/404")
    assert info.value.response.status_code == 404
    ctl.reset()
    assert ctl.service_accounts() == {"service_accounts": []}


def _b64(obj: JSON) -> str:

    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
