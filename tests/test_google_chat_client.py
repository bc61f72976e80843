"""Integration tests of google_chat_client against the Chat emulator on 127.0.0.1.

The real client (googleapiclient + httplib2 + google-auth) talks real HTTP to the emulator; the
emulator's request log is the witness of what was sent. Only the clock and `sleep` are faked:
`FakeTime` advances instantly; `ScaledTime` really waits, but `time_scale` times less, matching
the emulator's `time_scale` so that its quota windows and our waits shrink together.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import google.oauth2.credentials
import googleapiclient.model
import pytest
import requests

from google_chat_client import (
    MARKUP_SYNTAX,
    MEDIA_BLOCK,
    AttachmentRef,
    ChatAnnotation,
    ChatAuthError,
    ChatIdTaken,
    ChatMessage,
    ChatNotFound,
    ChatRateLimited,
    ChatTooLarge,
    ChatUnavailable,
    GoogleChatClient,
    GoogleErrorBody,
    SpaceMessageEvent,
    parse_google_error,
    parse_rfc3339,
)

# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when `sleep` is called; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


class ScaledTime:
    """Real waiting, `scale` times shorter: pairs with the emulator's `time_scale`."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return time.monotonic() * self.scale

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds / self.scale)


@dataclass
class Control:
    """Raw calls to the emulator's documented control API (routes of the emulator contract)."""

    url: str
    session: requests.Session = field(default_factory=requests.Session)

    def _do(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.session.request(method, self.url + route, json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def config(self, **values: Any) -> Any:
        return self._do("POST", "/_emulator/config", values)

    def user(self, display_name: str, **extra: Any) -> str:
        return str(
            self._do("POST", "/_emulator/users", {"displayName": display_name, **extra})["name"]
        )

    def space(self, members: list[str], display_name: str = "Room", **extra: Any) -> str:
        body = {
            "displayName": display_name,
            "spaceType": "SPACE",
            "spaceThreadingState": "THREADED_MESSAGES",
            "members": members,
            **extra,
        }
        return str(self._do("POST", "/_emulator/spaces", body)["name"])

    def token(self, user: str, **extra: Any) -> dict[str, str]:
        return dict(self._do("POST", "/_emulator/tokens", {"user": user, **extra}))

    def expire(self, access_token: str) -> None:
        self._do("POST", "/_emulator/tokens/expire", {"access_token": access_token})

    def revoke(self, refresh_token: str) -> None:
        self._do("POST", "/_emulator/tokens/revoke", {"refresh_token": refresh_token})

    def post(self, space: str, sender: str, text: str, **extra: Any) -> dict[str, Any]:
        space_id = space.split("/", 1)[1]
        body = {"sender": sender, "text": text, **extra}
        return dict(self._do("POST", f"/_emulator/spaces/{space_id}/messages", body))

    def fault(self, **spec: Any) -> None:
        self._do("POST", "/_emulator/faults", spec)

    def requests(self) -> list[dict[str, Any]]:
        return list(self._do("GET", "/_emulator/requests")["requests"])

    def clear_requests(self) -> None:
        self._do("DELETE", "/_emulator/requests")

    def messages(self, space: str) -> list[dict[str, Any]]:
        return list(self._do("GET", "/_emulator/state")["messages"].get(space, []))


def query_text(entry: dict[str, Any]) -> str:
    """The logged query as decoded `k=v&k=v` text, whether the log keeps it as text or a dict."""
    query = entry.get("query") or ""
    if isinstance(query, dict):
        return "&".join(f"{k}={v}" for k, v in query.items())
    return unquote_plus(str(query))


def api_calls(log: list[dict[str, Any]], method: str, path_prefix: str) -> list[dict[str, Any]]:
    """Logged API requests with this method whose path starts with `path_prefix`."""
    return [r for r in log if r["method"] == method and str(r["path"]).startswith(path_prefix)]


@dataclass
class World:
    control: Control
    url: str
    me: str
    other: str
    space: str
    access_token: str
    refresh_token: str
    time: FakeTime

    def client(self, **kw: Any) -> GoogleChatClient:
        kw.setdefault("sleep", self.time.sleep)
        kw.setdefault("clock", self.time.clock)
        creds = google.oauth2.credentials.Credentials(token=self.access_token)
        return GoogleChatClient(creds, api_endpoint=self.url, **kw)


@pytest.fixture
def world(chat_emulator: Any) -> Iterator[World]:
    control = Control(chat_emulator.url)
    # Quotas are exercised by their own tests; elsewhere the fake clock never really waits.
    control.config(quotas_enabled=False)
    me = control.user("Bridge Operator", email="bridge@example.com")
    other = control.user("Ada Lovelace", email="ada@example.com")
    space = control.space([me, other])
    tokens = control.token(me)
    yield World(
        control=control,
        url=chat_emulator.url,
        me=me,
        other=other,
        space=space,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        time=FakeTime(),
    )


def write_token_file(path: Path, world: World, *, token: str, expiry: str) -> None:
    data = {
        "token": token,
        "refresh_token": world.refresh_token,
        "token_uri": world.url + "/token",
        "client_id": "client-id.apps.example",
        "client_secret": "not-a-real-secret",
        "scopes": ["https://www.googleapis.com/auth/chat.messages"],
        "expiry": expiry,
        "account": "",
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(0o644)


# ------------------------------------------------------------------------------------------
# CRUD, paging, filters
# ------------------------------------------------------------------------------------------


def test_create_get_list_patch_delete(world: World) -> None:
    client = world.client()
    created = client.create_message(world.space, "hello *world*", message_id="client-t-1")
    assert created.name.startswith(world.space + "/messages/")
    assert created.space_name == world.space
    # `text` is plain in Google: the markup is only in formattedText (read below).
    assert created.text == "hello world"
    assert created.sender.name == world.me
    assert created.client_assigned_message_id == "client-t-1"
    assert created.thread_name is not None and created.thread_reply is False
    assert created.create_time == parse_rfc3339(created.create_time_raw)

    fetched = client.get_message(created.name)
    assert (fetched.name, fetched.text, fetched.create_time_raw) == (
        created.name,
        created.text,
        created.create_time_raw,
    )
    assert fetched.formatted_text == "hello *world*" and fetched.markup == "hello *world*"
    by_client_id = client.get_message(f"{world.space}/messages/client-t-1")
    assert by_client_id.name == created.name

    listed = list(client.list_messages(world.space))
    assert [m.name for m in listed] == [created.name]

    edited = client.update_message_text(created.name, "edited")
    assert edited.text == "edited"
    assert edited.last_update_time is not None
    log = world.control.requests()
    patches = api_calls(log, "PATCH", "/v1/" + world.space + "/messages/")
    assert len(patches) == 1 and "updateMask=text" in query_text(patches[0])

    client.delete_message(created.name)
    with pytest.raises(ChatNotFound) as info:
        client.get_message(created.name)
    assert info.value.status == 404 and info.value.reason == "NOT_FOUND"
    with pytest.raises(ChatNotFound):
        client.delete_message(created.name)
    tombstones = list(client.list_messages(world.space, show_deleted=True))
    assert [m.name for m in tombstones] == [created.name]
    assert tombstones[0].delete_time is not None and tombstones[0].text == ""


def test_message_changes_come_from_space_events(world: World) -> None:
    client = world.client()
    before = datetime.now(UTC) - timedelta(seconds=5)
    kept = client.create_message(world.space, "kept as it is", message_id="client-t-2")
    edited = client.create_message(world.space, "to be edited", message_id="client-t-3")
    gone = client.create_message(world.space, "to be deleted", message_id="client-t-4")
    assert list(client.list_message_changes(world.space, since=before)) == []
    client.update_message_text(edited.name, "edited once")
    client.update_message_text(edited.name, "edited twice")
    client.delete_message(gone.name)
    changes = list(client.list_message_changes(world.space, since=before))
    assert [(c.message_name, c.deleted) for c in changes] == [
        (edited.name, False),
        (edited.name, False),
        (gone.name, True),
    ]
    assert kept.name not in {c.message_name for c in changes}
    tombstone = changes[-1].tombstone()
    assert tombstone.name == gone.name and tombstone.delete_time is not None
    assert tombstone.create_time_raw == gone.create_time_raw
    # One request, with the documented filter (start time AND the two message event types).
    log = world.control.requests()
    calls = api_calls(log, "GET", "/v1/" + world.space + "/spaceEvents")
    assert calls and "message.v1.updated" in query_text(calls[-1])
    assert list(client.list_message_changes(world.space, since=datetime.now(UTC))) == []


# ------------------------------------------------------------------------------------------
# Markup syntax: read formattedText in Chat syntax, write Chat syntax, always explicitly
# ------------------------------------------------------------------------------------------


def request_bodies(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The JSON bodies googleapiclient serialized (its `dump_request_response` log)."""
    bodies = []
    for record in records:
        if record.name == "googleapiclient.model" and record.msg == "body: %s":
            body = record.args[0] if isinstance(record.args, tuple) else None
            if body:
                bodies.append(json.loads(str(body)))
    return bodies


def test_reads_ask_for_chat_syntax_and_writes_declare_it(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert MARKUP_SYNTAX == "MARKUP_SYNTAX_CHAT"
    # googleapiclient's own switch to log each request body it serializes: the emulator's log
    # keeps the query only, this shows the body that went on the wire.
    monkeypatch.setattr(googleapiclient.model, "dump_request_response", True)
    caplog.set_level(logging.INFO, logger="googleapiclient.model")
    client = world.client()
    markup = "*bold* _it_ ~gone~ `code` <https://example.com/doc|the doc>"
    created = client.create_message(world.space, markup, message_id="client-markup-1")
    edited = client.update_message_text(created.name, "now *really* bold")
    fetched = client.get_message(created.name)
    listed = list(client.list_messages(world.space))

    bodies = request_bodies(caplog.records)
    assert bodies == [
        {"text": markup, "markupSyntax": "MARKUP_SYNTAX_CHAT"},
        {"text": "now *really* bold", "markupSyntax": "MARKUP_SYNTAX_CHAT"},
    ]
    log = world.control.requests()
    patch = api_calls(log, "PATCH", f"/v1/{world.space}/messages/")
    # Only `text` is in the mask: markupSyntax says how to read it, it is no field to update.
    assert len(patch) == 1 and patch[0]["query"].get("updateMask") == "text"
    reads = api_calls(log, "GET", f"/v1/{world.space}/messages")
    assert len(reads) == 2
    assert all(r["query"].get("markupSyntax") == "MARKUP_SYNTAX_CHAT" for r in reads)
    # Written as Chat syntax and read back in Chat syntax, the markup is unchanged (the app's
    # default, Markdown for new apps, would have read `*bold*` as italics). The create and
    # patch answers take no markupSyntax parameter, so their formattedText is in a syntax we
    # do not choose: only `text` (plain) is checked there.
    assert created.text == "bold it gone code the doc"
    assert edited.text == "now really bold"
    assert fetched.formatted_text == "now *really* bold"
    assert [m.formatted_text for m in listed] == ["now *really* bold"]
    first = client.create_message(world.space, markup, message_id="client-markup-2")
    assert client.get_message(first.name).formatted_text == markup


def test_a_human_mention_reads_as_formatted_text_and_annotation(world: World) -> None:
    client = world.client()
    world.control.post(world.space, world.other, f"thanks <{world.me}> for *that*")
    (message,) = client.list_messages(world.space)
    assert message.formatted_text == f"thanks <{world.me}> for *that*"
    mentions = [a for a in message.annotations if a.type == "USER_MENTION"]
    assert [a.user_name for a in mentions] == [world.me]
    assert message.mention_display_name(world.me) == "Bridge Operator"
    assert message.mention_display_name(world.other) is None


def test_message_record_parses_formatted_text_and_annotations() -> None:
    data: dict[str, Any] = {
        "name": "spaces/S/messages/M",
        "createTime": "2026-01-01T12:00:00Z",
        "text": "Hello @FooBot and @Ann Lee",
        "formattedText": "Hello <users/9> and <users/7>",
        "annotations": [
            # The discovery document's own example (reference google-chat-api.md §2.3).
            {
                "type": "USER_MENTION",
                "startIndex": 6,
                "length": 7,
                "userMention": {
                    "user": {"name": "users/9", "displayName": "FooBot", "type": "BOT"},
                    "type": "MENTION",
                },
            },
            # No displayName (user auth, no shared space): the name is the run of `text`.
            {
                "type": "USER_MENTION",
                "startIndex": "18",
                "length": 8,
                "userMention": {"user": {"name": "users/7", "type": "HUMAN"}},
            },
            {"type": "RICH_LINK", "startIndex": 0, "richLinkMetadata": {"uri": "https://x"}},
            "not an object",
        ],
    }
    message = ChatMessage.from_api(data)
    assert message.formatted_text == "Hello <users/9> and <users/7>"
    assert message.markup == message.formatted_text
    assert message.annotations == (
        ChatAnnotation("USER_MENTION", 6, 7, "users/9", "FooBot", "BOT"),
        ChatAnnotation("USER_MENTION", 18, 8, "users/7", None, "HUMAN"),
        ChatAnnotation("RICH_LINK", 0, 0, None, None, None),
    )
    assert message.mention_display_name("users/9") == "FooBot"
    assert message.mention_display_name("users/7") == "Ann Lee"
    assert message.mention_display_name("users/1") is None
    # Without formattedText (older records, tombstones) the text is what gets converted.
    plain = ChatMessage.from_api({k: v for k, v in data.items() if k != "formattedText"})
    assert plain.formatted_text is None and plain.markup == data["text"]


def test_spaces_and_members(world: World) -> None:
    client = world.client()
    space = client.get_space(world.space)
    assert space.name == world.space and space.space_type == "SPACE"
    assert space.display_name == "Room" and space.threading_state == "THREADED_MESSAGES"
    spaces, token = client.list_spaces_page()
    assert world.space in [s.name for s in spaces] and token is None
    assert [s.name for s in client.list_spaces(space_type="SPACE")] == [world.space]
    members = client.list_members(world.space)
    assert {u.name for u in members} == {world.me, world.other}
    with pytest.raises(ChatNotFound):
        client.get_space("spaces/doesnotexist")


def test_list_messages_pages_oldest_first_and_created_after_filter(world: World) -> None:
    posted = [
        world.control.post(
            world.space,
            world.other,
            f"message {i}",
            createTime=f"2024-05-01T10:00:{i:02d}.123456789Z",
        )
        for i in range(7)
    ]
    client = world.client()
    world.control.clear_requests()

    messages = list(client.list_messages(world.space, page_size=3))
    assert [m.text for m in messages] == [f"message {i}" for i in range(7)]
    assert [m.name for m in messages] == [p["name"] for p in posted]
    assert [m.create_time_raw for m in messages] == [p["createTime"] for p in posted]
    assert messages[0].sender.name == world.other
    assert messages[0].sender.display_name == "Ada Lovelace"
    log = world.control.requests()
    pages = api_calls(log, "GET", f"/v1/{world.space}/messages")
    assert len(pages) == 3  # 3 + 3 + 1
    assert all("pageSize=3" in query_text(r) for r in pages)

    world.control.clear_requests()
    cursor = messages[3].create_time_raw
    newer = list(client.list_messages(world.space, created_after=cursor))
    assert [m.text for m in newer] == ["message 4", "message 5", "message 6"]
    (request,) = api_calls(world.control.requests(), "GET", f"/v1/{world.space}/messages")
    assert "createTime" in query_text(request) and "pageSize=1000" in query_text(request)

    assert list(client.list_messages(world.space, created_after=messages[6].create_time)) == []


def test_idempotent_create_returns_the_existing_message(world: World) -> None:
    client = world.client()
    first = client.create_message(world.space, "once", message_id="client-post-42")
    world.control.clear_requests()
    again = client.create_message(world.space, "once (retry)", message_id="client-post-42")
    assert again.name == first.name and again.text == "once"
    stored = [
        m for m in world.control.messages(world.space) if m.get("text", "").startswith("once")
    ]
    assert len(stored) == 1
    log = world.control.requests()
    posts = api_calls(log, "POST", f"/v1/{world.space}/messages")
    assert [r["status"] for r in posts] == [409]
    assert len(api_calls(log, "GET", f"/v1/{world.space}/messages/client-post-42")) == 1
    # An invalid id is refused locally: it could never be made idempotent.
    with pytest.raises(ValueError):
        client.create_message(world.space, "x", message_id="Not-Client")


def test_duplicate_id_with_other_emulated_status_is_still_idempotent(world: World) -> None:
    # Google's status for a duplicate messageId is undocumented; the emulator can vary it.
    world.control.config(duplicate_message_id_status=400)
    client = world.client()
    first = client.create_message(world.space, "one", message_id="client-dup-400")
    assert (
        client.create_message(world.space, "one", message_id="client-dup-400").name == first.name
    )


def test_create_retried_after_5xx_that_took_effect_yields_one_message(world: World) -> None:
    client = world.client()
    # First attempt dropped after the server may have processed it, then a 409 on retry: the
    # ALREADY_EXISTS path must hand back the one message.
    client.create_message(world.space, "lost answer", message_id="client-lost-1")
    world.control.fault(count=1, status=503, method="POST", path_regex="/messages$")
    again = client.create_message(world.space, "lost answer", message_id="client-lost-1")
    assert again.client_assigned_message_id == "client-lost-1"
    assert sum(m.get("text") == "lost answer" for m in world.control.messages(world.space)) == 1
    posts = api_calls(world.control.requests(), "POST", f"/v1/{world.space}/messages")
    assert [r["status"] for r in posts] == [200, 503, 409]


def squatter(world: World) -> GoogleChatClient:
    """Another member of the space with API access: any id nobody used yet is theirs to take."""
    token = world.control.token(world.other)["access_token"]
    creds = google.oauth2.credentials.Credentials(token=token)
    return GoogleChatClient(
        creds, api_endpoint=world.url, sleep=world.time.sleep, clock=world.time.clock
    )


def test_a_message_someone_else_holds_under_the_id_is_never_adopted(world: World) -> None:
    """Issue 17: a squatter pre-creates the id; the bridge's copy takes the first stand-in, a
    retry finds that copy again (one message, never two), and the squatter's stays theirs."""
    taken = squatter(world).create_message(world.space, "mine now", message_id="client-sq-1")
    client = world.client()
    mine = client.create_message(world.space, "hello", message_id="client-k-1")  # learns "me"
    assert client.own_user == world.me and mine.sender.name == world.me

    stand_ins = ("client-sq-1-a1", "client-sq-1-a2")
    copy = client.create_message(
        world.space, "the copy", message_id="client-sq-1", fallback_ids=stand_ins
    )
    assert copy.client_assigned_message_id == "client-sq-1-a1" and copy.name != taken.name
    again = client.create_message(
        world.space, "the copy", message_id="client-sq-1", fallback_ids=stand_ins
    )
    assert again.name == copy.name
    texts = [m["text"] for m in world.control.messages(world.space)]
    assert texts.count("the copy") == 1 and texts.count("mine now") == 1

    # Without a stand-in left: refused, naming the holder; a caller's own rule decides too.
    with pytest.raises(ChatIdTaken) as refused:
        client.create_message(world.space, "x", message_id="client-sq-1")
    assert [m.name for m in refused.value.holders] == [taken.name]
    adopt_all = client.create_message(
        world.space, "x", message_id="client-sq-1", is_own=lambda m: True
    )
    assert adopt_all.name == taken.name


def test_a_client_that_never_wrote_adopts_nobodys_message_by_default(world: World) -> None:
    squatter(world).create_message(world.space, "first", message_id="client-sq-2")
    client = world.client()
    assert client.own_user is None
    with pytest.raises(ChatIdTaken):
        client.create_message(world.space, "copy", message_id="client-sq-2")


def test_reply_into_existing_thread(world: World) -> None:
    human = world.control.post(world.space, world.other, "a question from a human")
    thread_name = human["thread"]["name"]
    client = world.client()
    reply = client.create_message(
        world.space, "an answer", message_id="client-reply-1", thread_name=thread_name
    )
    assert reply.thread_name == thread_name and reply.thread_reply is True
    (post,) = api_calls(world.control.requests(), "POST", f"/v1/{world.space}/messages")
    assert "messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD" in query_text(post)
    in_thread = list(client.list_messages(world.space, thread_name=thread_name))
    assert [m.text for m in in_thread] == ["a question from a human", "an answer"]
    new_thread = client.create_message(world.space, "separate", message_id="client-new-1")
    assert new_thread.thread_name != thread_name


# ------------------------------------------------------------------------------------------
# Media
# ------------------------------------------------------------------------------------------


def test_upload_then_attach_then_download(world: World) -> None:
    client = world.client()
    payload = bytes(range(256)) * 40
    ref = client.upload_attachment(world.space, "blob.bin", payload, "application/octet-stream")
    assert isinstance(ref, AttachmentRef)
    assert ref.resource_name and ref.attachment_upload_token
    message = client.create_message(
        world.space, "with a file", message_id="client-att-1", attachments=[ref]
    )
    fetched = client.get_message(message.name)
    (attachment,) = fetched.attachments
    assert attachment.content_name == "blob.bin"
    assert attachment.resource_name == ref.resource_name
    assert download(client, attachment.resource_name) == payload
    log = world.control.requests()
    # A resumable upload: the session, then the file streamed in one PUT.
    (upload,) = api_calls(log, "POST", f"/upload/v1/{world.space}/attachments:upload")
    assert upload["status"] == 200 and upload["query"]["uploadType"] == "resumable"
    (sent,) = api_calls(log, "PUT", f"/upload/v1/{world.space}/attachments:upload")
    assert sent["status"] == 200
    (read,) = api_calls(log, "GET", "/v1/media/")
    assert read["status"] == 206 and read["response_bytes"] == len(payload)


def download(client: GoogleChatClient, resource_name: str, max_bytes: int = 10**6) -> bytes:
    sink = io.BytesIO()
    size = client.download_attachment(resource_name, sink, max_bytes=max_bytes)
    assert size == len(sink.getvalue())
    return sink.getvalue()


def test_a_file_streams_up_and_over_the_limit_is_refused_after_one_block(world: World) -> None:
    client = world.client()
    payload = bytes(range(256)) * (12 * 4096)  # 12 MiB, from a file, never bytes in hand
    with tempfile.TemporaryFile() as file:
        file.write(payload)
        ref = client.upload_attachment(world.space, "big.bin", file, "application/octet-stream")
    assert ref.resource_name is not None
    world.control.clear_requests()
    sink = io.BytesIO()
    limit = 2 * 1024 * 1024
    with pytest.raises(ChatTooLarge) as caught:
        client.download_attachment(ref.resource_name, sink, max_bytes=limit)
    assert (caught.value.size, caught.value.limit, caught.value.reason) == (
        len(payload), limit, "TOO_LARGE"
    )  # fmt: skip
    reads = api_calls(world.control.requests(), "GET", "/v1/media/")
    assert [r["response_bytes"] for r in reads] == [MEDIA_BLOCK]  # one block, then it stopped
    # Under the limit it arrives whole, block by block, and a retry starts the sink over.
    world.control.fault(count=1, status=503, method="GET", path_regex=r"^/v1/media/")
    assert download(client, ref.resource_name, max_bytes=len(payload)) == payload
    statuses = [r["status"] for r in api_calls(world.control.requests(), "GET", "/v1/media/")]
    assert statuses[1] == 503 and statuses[2:] == [206] * 12


def test_attach_by_upload_token_alone(world: World) -> None:
    client = world.client()
    ref = client.upload_attachment(world.space, "note.txt", b"just the token", "text/plain")
    token_only = AttachmentRef(
        resource_name=None, attachment_upload_token=ref.attachment_upload_token
    )
    message = client.create_message(
        world.space, "token only", message_id="client-att-2", attachments=[token_only]
    )
    (attachment,) = client.get_message(message.name).attachments
    assert attachment.content_name == "note.txt"


def test_attachment_ref_from_and_to_the_api() -> None:
    ref = AttachmentRef.from_api({"resourceName": "r/1", "attachmentUploadToken": "tok"})
    assert ref == AttachmentRef(resource_name="r/1", attachment_upload_token="tok")
    assert ref.to_api() == {"resourceName": "r/1", "attachmentUploadToken": "tok"}
    token_only = AttachmentRef.from_api({"attachmentUploadToken": "tok", "resourceName": ""})
    assert token_only.to_api() == {"attachmentUploadToken": "tok"}
    with pytest.raises(ValueError):
        AttachmentRef.from_api({})  # upload_attachment answers this with ChatError BAD_RESPONSE


def test_download_of_a_human_attachment(world: World) -> None:
    content = "räksmörgås\n".encode()
    world.control.post(
        world.space,
        world.other,
        "see file",
        attachments=[
            {
                "filename": "notes.txt",
                "contentType": "text/plain",
                "dataBase64": base64.b64encode(content).decode(),
            }
        ],
    )
    client = world.client()
    (message,) = client.list_messages(world.space)
    (attachment,) = message.attachments
    assert attachment.content_type == "text/plain" and attachment.source == "UPLOADED_CONTENT"
    assert attachment.resource_name is not None
    assert download(client, attachment.resource_name) == content


# ------------------------------------------------------------------------------------------
# Retries
# ------------------------------------------------------------------------------------------


def test_5xx_is_retried_with_backoff_then_succeeds(world: World) -> None:
    client = world.client()
    world.control.fault(count=2, status=503, method="GET")
    assert client.get_space(world.space).name == world.space
    assert world.time.sleeps == [1.0, 2.0]
    statuses = [r["status"] for r in api_calls(world.control.requests(), "GET", "/v1/spaces/")]
    assert statuses == [503, 503, 200]


def test_5xx_gives_up_after_max_attempts(world: World) -> None:
    client = world.client(max_attempts=3)
    world.control.fault(count=10, status=500, method="GET")
    with pytest.raises(ChatUnavailable) as info:
        client.get_space(world.space)
    assert info.value.status == 500 and info.value.method == "GET"
    assert len(api_calls(world.control.requests(), "GET", "/v1/spaces/")) == 3
    assert world.time.sleeps == [1.0, 2.0]


def test_429_fault_is_waited_and_retried(world: World) -> None:
    client = world.client()
    world.control.fault(count=1, status=429, method="POST")
    message = client.create_message(world.space, "after a 429", message_id="client-429-1")
    assert message.text == "after a 429"
    posts = api_calls(world.control.requests(), "POST", f"/v1/{world.space}/messages")
    assert [r["status"] for r in posts] == [429, 200]
    assert world.time.sleeps == [1.0]


def test_emulator_quota_429_honours_retry_after(world: World) -> None:
    scale = 4.0  # a 250 ms quota window: a fast burst surely hits it
    world.control.config(
        quotas_enabled=True, time_scale=scale, retry_after_header=True, space_write_limit=[1, 1.0]
    )
    scaled = ScaledTime(scale)
    # Pacing off: this client writes as fast as it can and must survive the quota.
    # A backoff base of 0.25 s tells our own backoff apart from the server's Retry-After (1 s).
    client = world.client(
        sleep=scaled.sleep,
        clock=scaled.clock,
        write_interval_seconds=0.0,
        backoff_base_seconds=0.25,
    )
    for i in range(3):
        client.create_message(world.space, f"burst {i}", message_id=f"client-burst-{i}")
    posts = api_calls(world.control.requests(), "POST", f"/v1/{world.space}/messages")
    assert [r["status"] for r in posts].count(200) == 3
    assert 429 in [r["status"] for r in posts]
    # The emulator's Retry-After is whole seconds (>= 1): our waits came from it.
    assert scaled.sleeps and all(s >= 1.0 for s in scaled.sleeps)


def test_pacing_keeps_a_burst_under_the_space_quota(world: World) -> None:
    scale = 10.0
    world.control.config(quotas_enabled=True, time_scale=scale, space_write_limit=[1, 1.0])
    scaled = ScaledTime(scale)
    # 2 s between writes (200 ms real) against a 1 s (100 ms real) quota window leaves room for
    # scheduling jitter on a loaded machine.
    client = world.client(sleep=scaled.sleep, clock=scaled.clock, write_interval_seconds=2.0)
    for i in range(3):
        client.create_message(world.space, f"paced {i}", message_id=f"client-paced-{i}")
    posts = api_calls(world.control.requests(), "POST", f"/v1/{world.space}/messages")
    assert [r["status"] for r in posts] == [200, 200, 200]


def test_429_beyond_max_wait_is_raised_not_slept(world: World) -> None:
    world.control.config(quotas_enabled=True, retry_after_header=True, space_write_limit=[1, 60.0])
    client = world.client(max_wait_seconds=5.0)
    client.create_message(world.space, "first", message_id="client-wait-1")
    with pytest.raises(ChatRateLimited) as info:
        client.create_message(world.space, "second", message_id="client-wait-2")
    assert info.value.status == 429 and info.value.reason == "RESOURCE_EXHAUSTED"
    assert info.value.wait_seconds is not None and info.value.wait_seconds > 5.0
    assert world.time.sleeps == [1.0]  # only the pacing slot, no 60 s wait


def test_dropped_connection_is_retried(world: World) -> None:
    client = world.client()
    # httplib2 itself silently resends once after a dropped connection; three drops make sure
    # our own retry loop is exercised too.
    world.control.fault(count=3, drop_connection=True, method="GET")
    assert client.get_space(world.space).name == world.space
    assert len(world.time.sleeps) >= 1


def test_timeout_is_retried(world: World) -> None:
    client = world.client(timeout_seconds=0.3)
    world.control.fault(count=1, latency_ms=1500, method="GET")
    assert client.get_space(world.space).name == world.space
    assert world.time.sleeps == [1.0]


def test_delete_whose_first_answer_was_lost_succeeds(world: World) -> None:
    client = world.client()
    message = client.create_message(world.space, "doomed", message_id="client-doomed-1")
    # The fault answers 503 *instead of* running the delete, so the retry really deletes; the
    # case "ran, answer lost, retry gets 404" is accepted too (see delete_message).
    world.control.fault(count=1, status=503, method="DELETE")
    client.delete_message(message.name)
    with pytest.raises(ChatNotFound):
        client.get_message(message.name)


# ------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------


def test_expired_token_is_refreshed_via_the_files_token_uri(world: World, tmp_path: Path) -> None:
    token_file = tmp_path / "token.json"
    write_token_file(token_file, world, token=world.access_token, expiry="2000-01-01T00:00:00Z")
    client = GoogleChatClient.from_token_file(
        token_file, api_endpoint=world.url, sleep=world.time.sleep, clock=world.time.clock
    )
    assert client.get_space(world.space).name == world.space
    saved = json.loads(token_file.read_text(encoding="utf-8"))
    assert saved["token"] != world.access_token
    assert saved["token_uri"] == world.url + "/token"
    assert saved["refresh_token"] == world.refresh_token
    assert saved["account"] == ""
    assert parse_rfc3339(saved["expiry"]).year > 2000
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    log = world.control.requests()
    assert all(r["user"] == world.me for r in api_calls(log, "GET", "/v1/"))


def test_token_expired_server_side_is_refreshed_on_401(world: World, tmp_path: Path) -> None:
    token_file = tmp_path / "token.json"
    write_token_file(token_file, world, token=world.access_token, expiry="2999-01-01T00:00:00Z")
    client = GoogleChatClient.from_token_file(
        token_file, api_endpoint=world.url, sleep=world.time.sleep, clock=world.time.clock
    )
    world.control.expire(world.access_token)
    assert client.get_space(world.space).name == world.space
    statuses = [r["status"] for r in api_calls(world.control.requests(), "GET", "/v1/spaces/")]
    assert statuses == [401, 200]
    saved = json.loads(token_file.read_text(encoding="utf-8"))
    assert saved["token"] != world.access_token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_revoked_refresh_token_is_an_auth_error_naming_the_auth_command(
    world: World, tmp_path: Path
) -> None:
    token_file = tmp_path / "token.json"
    write_token_file(token_file, world, token=world.access_token, expiry="2000-01-01T00:00:00Z")
    world.control.revoke(world.refresh_token)
    client = GoogleChatClient.from_token_file(
        token_file, api_endpoint=world.url, sleep=world.time.sleep, clock=world.time.clock
    )
    with pytest.raises(ChatAuthError) as info:
        client.get_space(world.space)
    assert "python main.py auth" in str(info.value)
    assert "invalid_grant" in str(info.value)
    assert "not-a-real-secret" not in str(info.value)
    assert world.time.sleeps == []  # an auth failure is never retried


def test_missing_token_file_is_an_auth_error(tmp_path: Path) -> None:
    with pytest.raises(ChatAuthError) as info:
        GoogleChatClient.from_token_file(
            tmp_path / "absent.json", api_endpoint="http://127.0.0.1:9"
        )
    assert "python main.py auth" in str(info.value)


def test_unknown_access_token_without_refresh_is_an_auth_error(world: World) -> None:
    creds = google.oauth2.credentials.Credentials(token="not-registered")
    client = GoogleChatClient(creds, api_endpoint=world.url, sleep=world.time.sleep)
    with pytest.raises(ChatAuthError) as info:
        client.get_space(world.space)
    assert "python main.py auth" in str(info.value)
    assert world.time.sleeps == []


# ------------------------------------------------------------------------------------------
# Pacing
# ------------------------------------------------------------------------------------------


def test_two_writes_to_one_space_are_a_second_apart(world: World) -> None:
    client = world.client()
    start = world.time.clock()
    client.create_message(world.space, "one", message_id="client-pace-1")
    first_done = world.time.clock()
    client.update_message_text(f"{world.space}/messages/client-pace-1", "one, edited")
    second_sent = world.time.clock()
    assert first_done == start  # the first write never waits
    assert second_sent - first_done >= 1.0
    assert world.time.sleeps == [1.0]
    # Reads are not paced.
    client.get_message(f"{world.space}/messages/client-pace-1")
    assert world.time.sleeps == [1.0]


def test_writes_to_different_spaces_are_not_delayed(world: World) -> None:
    second_space = world.control.space([world.me, world.other], display_name="Other room")
    client = world.client()
    client.create_message(world.space, "a", message_id="client-a-1")
    client.create_message(second_space, "b", message_id="client-b-1")
    assert world.time.sleeps == []


def test_concurrent_writers_to_one_space_stay_under_the_quota(world: World) -> None:
    scale = 10.0
    world.control.config(quotas_enabled=True, time_scale=scale, space_write_limit=[1, 1.0])
    scaled = ScaledTime(scale)
    client = world.client(sleep=scaled.sleep, clock=scaled.clock, write_interval_seconds=2.0)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            client.create_message(world.space, f"t{i}", message_id=f"client-thread-{i}")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    # The writers reserved successive slots: at least the later ones waited.
    assert scaled.sleeps
    posts = api_calls(world.control.requests(), "POST", f"/v1/{world.space}/messages")
    assert [r["status"] for r in posts] == [200, 200, 200]
    assert len(world.control.messages(world.space)) == 3


# ------------------------------------------------------------------------------------------
# Message events: spaces.spaceEvents catch-up and Workspace Events CloudEvent payloads
# ------------------------------------------------------------------------------------------


def test_list_message_events_reports_creates_edits_and_deletes_oldest_first(
    world: World,
) -> None:
    client = world.client()
    before = datetime.now(UTC) - timedelta(seconds=5)
    kept = client.create_message(world.space, "kept", message_id="client-ev-1")
    human = world.control.post(world.space, world.other, "from a *human*")
    edited = client.create_message(world.space, "to be edited", message_id="client-ev-2")
    gone = client.create_message(world.space, "to be deleted", message_id="client-ev-3")
    client.update_message_text(edited.name, "edited once")
    client.delete_message(gone.name)

    events = client.list_message_events(world.space, since=before)
    assert [(e.kind, e.message.name) for e in events] == [
        ("created", kept.name),
        ("created", human["name"]),
        ("created", edited.name),
        ("created", gone.name),
        ("updated", edited.name),
        ("deleted", gone.name),
    ]
    times = [e.event_time for e in events]
    assert times == sorted(times) and all(t > before for t in times)
    # Payloads are the messages' latest versions: the create of `edited` already shows the edit,
    # and every event of the deleted message is a tombstone.
    by_kind = {(e.kind, e.message.name): e.message for e in events}
    assert by_kind[("created", edited.name)].text == "edited once"
    assert by_kind[("created", human["name"])].sender.name == world.other
    tombstone = by_kind[("deleted", gone.name)]
    assert tombstone.delete_time == events[-1].event_time and tombstone.text == ""
    assert tombstone.create_time_raw == gone.create_time_raw

    # One request with the documented filter: start time AND the three non-batch types.
    calls = api_calls(world.control.requests(), "GET", f"/v1/{world.space}/spaceEvents")
    assert len(calls) == 1
    sent = query_text(calls[0])
    assert 'start_time="' in sent
    for kind in ("created", "updated", "deleted"):
        assert f'event_types:"google.workspace.chat.message.v1.{kind}"' in sent
    assert "batch" not in sent

    # Exclusive start: nothing after the last event.
    assert client.list_message_events(world.space, since=events[-1].event_time) == []


def test_list_message_events_follows_every_page(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google_chat_client

    # Small pages, so that a handful of messages spans several (the real page size is 1000).
    monkeypatch.setattr(google_chat_client, "MAX_PAGE_SIZE", 2)
    client = world.client()
    before = datetime.now(UTC) - timedelta(seconds=5)
    names = [
        client.create_message(world.space, f"m{i}", message_id=f"client-page-{i}").name
        for i in range(5)
    ]
    events = client.list_message_events(world.space, since=before)
    assert [e.message.name for e in events] == names
    calls = api_calls(world.control.requests(), "GET", f"/v1/{world.space}/spaceEvents")
    assert len(calls) == 3
    assert "pageToken=" not in query_text(calls[0])
    assert all("pageToken=" in query_text(c) for c in calls[1:])


def test_list_message_events_clamps_a_start_older_than_28_days(world: World) -> None:
    client = world.client()
    message = client.create_message(world.space, "recent", message_id="client-old-1")
    # The API (and the emulator) refuse a start_time more than 28 days back: clamped, not sent.
    events = client.list_message_events(world.space, since=datetime.now(UTC) - timedelta(days=60))
    assert [(e.kind, e.message.name) for e in events] == [("created", message.name)]
    (call,) = api_calls(world.control.requests(), "GET", f"/v1/{world.space}/spaceEvents")
    sent = query_text(call)
    start = parse_rfc3339(sent.split('start_time="', 1)[1].split('"', 1)[0])
    age = datetime.now(UTC) - start
    assert timedelta(days=27, hours=23) < age < timedelta(days=28)


EVENT_TIME = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


def _payload(name: str, text: str = "hi") -> dict[str, Any]:
    return {
        "name": name,
        "sender": {"name": "users/7", "type": "HUMAN"},
        "createTime": "2026-03-01T12:00:00.123456789Z",
        "text": text,
        "formattedText": f"*{text}*",
        "thread": {"name": "spaces/S/threads/T"},
        "space": {"name": "spaces/S"},
    }


def test_from_cloud_event_parses_created_and_updated_messages() -> None:
    created = SpaceMessageEvent.from_cloud_event(
        "google.workspace.chat.message.v1.created",
        {"message": _payload("spaces/S/messages/M")},
        EVENT_TIME,
    )
    assert len(created) == 1
    event = created[0]
    assert (event.kind, event.event_time) == ("created", EVENT_TIME)
    assert event.message == ChatMessage.from_api(_payload("spaces/S/messages/M"))
    assert event.message.create_time_raw == "2026-03-01T12:00:00.123456789Z"
    assert event.message.thread_name == "spaces/S/threads/T"
    (updated,) = SpaceMessageEvent.from_cloud_event(
        "google.workspace.chat.message.v1.updated",
        {"message": _payload("spaces/S/messages/M", "new")},
        EVENT_TIME,
    )
    assert updated.kind == "updated" and updated.message.markup == "*new*"


def test_from_cloud_event_turns_a_deleted_payload_into_a_tombstone() -> None:
    data = {
        "message": {
            "name": "spaces/S/messages/M",
            "createTime": "2026-03-01T11:00:00Z",
            "deletionMetadata": {"deletionType": "CREATOR"},
        }
    }
    (event,) = SpaceMessageEvent.from_cloud_event(
        "google.workspace.chat.message.v1.deleted", data, EVENT_TIME
    )
    assert event.kind == "deleted"
    assert event.message.name == "spaces/S/messages/M"
    assert event.message.space_name == "spaces/S"
    assert event.message.delete_time == EVENT_TIME
    assert event.message.create_time_raw == "2026-03-01T11:00:00Z"
    assert event.message.text == "" and event.message.sender.name == ""


def test_from_cloud_event_expands_batches_and_ignores_other_types(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = {"messages": [{"message": _payload(f"spaces/S/messages/M{i}")} for i in range(3)]}
    events = SpaceMessageEvent.from_cloud_event(
        "google.workspace.chat.message.v1.batchCreated", batch, EVENT_TIME
    )
    assert [(e.kind, e.message.name) for e in events] == [
        ("created", f"spaces/S/messages/M{i}") for i in range(3)
    ]
    deleted = SpaceMessageEvent.from_cloud_event(
        "google.workspace.chat.message.v1.batchDeleted",
        {"messages": [{"message": {"name": "spaces/S/messages/A"}}]},
        EVENT_TIME,
    )
    assert [(e.kind, e.message.delete_time) for e in deleted] == [("deleted", EVENT_TIME)]
    assert (
        SpaceMessageEvent.from_cloud_event(
            "google.workspace.chat.reaction.v1.created", {"reaction": {}}, EVENT_TIME
        )
        == ()
    )
    assert (
        SpaceMessageEvent.from_cloud_event(
            "google.workspace.chat.message.v1.created", {}, EVENT_TIME
        )
        == ()
    )
    # A subscription without includeResource sends only the name: no message to build.
    with caplog.at_level(logging.WARNING, logger="google_chat_client"):
        assert (
            SpaceMessageEvent.from_cloud_event(
                "google.workspace.chat.message.v1.updated",
                {"message": {"name": "spaces/S/messages/M"}},
                EVENT_TIME,
            )
            == ()
        )
    assert "spaces/S/messages/M" in caplog.text


def test_from_space_event_reads_the_payload_field_of_its_type() -> None:
    space_event = {
        "name": "spaces/S/spaceEvents/E",
        "eventTime": "2026-03-01T12:00:05Z",
        "eventType": "google.workspace.chat.message.v1.batchUpdated",
        "messageBatchUpdatedEventData": {
            "messages": [{"message": _payload("spaces/S/messages/A", "a")}]
        },
    }
    (event,) = SpaceMessageEvent.from_space_event(space_event)
    assert (event.kind, event.message.text, event.event_time) == ("updated", "a", EVENT_TIME)
    assert SpaceMessageEvent.from_space_event({**space_event, "eventType": "x"}) == ()


def test_google_error_bodies_parse_http_errors_and_operation_statuses() -> None:
    body = json.dumps(
        {
            "error": {
                "code": 403,
                "message": "Request had insufficient authentication scopes.",
                "status": "PERMISSION_DENIED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                        "metadata": {"service": "pubsub.googleapis.com"},
                    }
                ],
            }
        }
    ).encode()
    parsed = parse_google_error(body)
    assert (parsed.code, parsed.status, parsed.reason) == (
        403,
        "PERMISSION_DENIED",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
    )
    assert parsed.details[0]["metadata"] == {"service": "pubsub.googleapis.com"}
    assert parse_google_error(b"<html>502</html>") == GoogleErrorBody(None, None, None, (), ())
    # An operation's error is a bare google.rpc.Status: the name comes from the code.
    status = GoogleErrorBody.from_status({"code": 6, "message": "exists"})
    assert (status.status, status.message, status.reason) == ("ALREADY_EXISTS", "exists", None)
