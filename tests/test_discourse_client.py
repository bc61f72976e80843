"""Integration tests: the real DiscourseClient (requests) against the Discourse emulator.

Only the clock and sleep are faked (`FakeTime`): every wait the client makes is recorded
instead of slept, and advances the fake clock, so rate-limit and backoff tests run instantly
while the HTTP traffic is real (werkzeug on 127.0.0.1).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from discourse_client import (
    DiscourseAuthError,
    DiscourseClient,
    DiscourseNotFound,
    DiscoursePostEnqueued,
    DiscourseRateLimited,
    DiscourseRejected,
    DiscourseTooLarge,
    DiscourseUnavailable,
)
from tests.emulators.discourse_contract import RecordingSession

API_KEY = "test-api-key"
LONG_BODY = "This body is comfortably longer than twenty characters."


class FakeTime:
    """A monotonic clock that only moves when the client sleeps; records every sleep.

    Sleeps from several threads overlap like real sleeps: a sleep of `s` started at `t`
    moves the clock to at least `t + s`, not `now + s`.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._last_read = threading.local()  # the time each thread last saw
        self.waits: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def clock(self) -> float:
        with self._lock:
            self._last_read.value = self._now
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
            started = getattr(self._last_read, "value", self._now)
            self._now = max(self._now, started + seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)


@pytest.fixture
def emu(discourse_emulator: Any) -> Iterator[Any]:
    # Generous server-side budget unless a test lowers it: tests send bursts on purpose.
    discourse_emulator.control.settings(max_admin_api_reqs_per_minute=100_000)
    yield discourse_emulator


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(emu: Any, fake_time: FakeTime) -> Iterator[Callable[..., DiscourseClient]]:
    clients: list[tuple[DiscourseClient, RecordingSession]] = []

    def make(**kw: Any) -> DiscourseClient:
        options: dict[str, Any] = {
            "requests_per_minute": 100_000,
            "timeout_seconds": 5.0,
            "max_attempts": 5,
            "sleep": fake_time.sleep,
            "clock": fake_time.clock,
        }
        api_key = kw.pop("api_key", API_KEY)
        api_username = kw.pop("api_username", "system")
        options.update(kw)
        session = RecordingSession()
        client = DiscourseClient(emu.url, api_key, api_username, session=session, **options)
        clients.append((client, session))
        return client

    yield make
    problems: list[str] = []
    for client, session in clients:
        # What the client sends must match Discourse's published API spec. (Response-side
        # findings are the emulator's business and are checked by its own contract tests.)
        problems += [p for p in session.contract_problems() if " request: " in p]
        client.close()
    assert not problems, "openapi contract violations:\n" + "\n".join(problems)


@pytest.fixture
def client(make_client: Callable[..., DiscourseClient]) -> DiscourseClient:
    return make_client()


@pytest.fixture
def category_id(emu: Any) -> int:
    return int(emu.control.create_category(name="Bridged space")["id"])


def _requests_log(emu: Any) -> list[dict[str, Any]]:
    return list(emu.control.requests()["requests"])


def _api_user(emu: Any, username: str, trust_level: int = 1) -> dict[str, Any]:
    return dict(
        emu.control.create_user(
            username=username,
            name=username.title(),
            email=f"{username}@example.com",
            trust_level=trust_level,
        )
    )


# ---- posts and topics -------------------------------------------------------------------------


def test_create_topic_then_read_it_back(
    emu: Any, client: DiscourseClient, category_id: int
) -> None:
    when = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    post = client.create_topic(
        title="Weekly sync notes for March",
        raw=LONG_BODY,
        category_id=category_id,
        external_id="gchat-spaces-AAA-threads-42",
        created_at=when,
    )
    assert post.post_number == 1
    assert post.username == "system"
    assert post.raw == LONG_BODY
    assert post.created_at == when

    topic = client.get_topic(post.topic_id)
    assert topic.title == "Weekly sync notes for March"
    assert topic.external_id == "gchat-spaces-AAA-threads-42"
    assert topic.category_id == category_id
    assert topic.post_ids == (post.id,)
    assert topic.posts_count == 1
    assert client.get_post(post.id).raw == LONG_BODY
    assert client.get_post_by_number(post.topic_id, 1).id == post.id


def test_one_character_post_lands_with_skip_validations(
    emu: Any, client: DiscourseClient, category_id: int
) -> None:
    first = client.create_topic(
        title="A topic for short replies", raw=LONG_BODY, category_id=category_id
    )
    reply = client.create_post(topic_id=first.topic_id, raw="k", reply_to_post_number=1)
    assert reply.raw == "k"
    assert reply.post_number == 2
    assert reply.reply_to_post_number == 1
    assert [p["raw"] for p in emu.control.state()["posts"]] == [LONG_BODY, "k"]


def test_validation_failure_is_rejected_with_discourse_message(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    first = client.create_topic(
        title="A topic for short replies", raw=LONG_BODY, category_id=category_id
    )
    emu.control.clear_requests()
    with pytest.raises(DiscourseRejected) as caught:
        client.create_post(topic_id=first.topic_id, raw="k", skip_validations=False)
    assert caught.value.status == 422
    assert "Body is too short (minimum is 20 characters)" in caught.value.errors
    assert "Body is too short" in str(caught.value)
    assert not isinstance(caught.value, DiscourseUnavailable)
    assert len(_requests_log(emu)) == 1  # a rejection is never retried
    assert fake_time.waits == []


def test_post_as_a_regular_user(emu: Any, client: DiscourseClient, category_id: int) -> None:
    _api_user(emu, "alice")
    first = client.create_topic(
        title="Topic started by Alice", raw=LONG_BODY, category_id=category_id, as_user="alice"
    )
    reply = client.create_post(
        topic_id=first.topic_id, raw="Alice again, with a reply here.", as_user="Alice"
    )  # Api-Username is case-insensitive
    assert first.username == "alice"
    assert reply.username == "alice"
    posted = [r for r in _requests_log(emu) if r["method"] == "POST"]
    assert [r["api_username"].lower() for r in posted] == ["alice", "alice"]


def test_single_user_key_cannot_impersonate(
    emu: Any, make_client: Callable[..., DiscourseClient], fake_time: FakeTime, category_id: int
) -> None:
    _api_user(emu, "alice")
    _api_user(emu, "bob")
    key = emu.control.create_api_key(username="alice")["key"]
    alice_client = make_client(api_key=key, api_username="alice")
    post = alice_client.create_topic(
        title="Alice has her own key", raw=LONG_BODY, category_id=category_id
    )
    assert post.username == "alice"
    with pytest.raises(DiscourseAuthError) as caught:
        alice_client.create_post(topic_id=post.topic_id, raw=LONG_BODY, as_user="bob")
    assert caught.value.status == 403
    assert caught.value.credentials_invalid
    assert fake_time.waits == []


def test_revoked_key_raises_auth_error_without_retry(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    assert client.get_category(category_id).id == category_id
    emu.control.revoke_api_key(API_KEY)
    before = client.request_count
    with pytest.raises(DiscourseAuthError) as caught:
        client.get_category(category_id)
    assert caught.value.credentials_invalid
    assert caught.value.status == 403
    assert client.request_count == before + 1
    assert fake_time.waits == []


def test_update_delete_recover(emu: Any, client: DiscourseClient, category_id: int) -> None:
    first = client.create_topic(
        title="A topic whose reply changes", raw=LONG_BODY, category_id=category_id
    )
    reply = client.create_post(topic_id=first.topic_id, raw="Original reply text, long enough.")
    edited = client.update_post(
        reply.id, "Edited reply text, also long enough.", edit_reason="fixed typo"
    )
    assert edited.id == reply.id
    assert edited.raw == "Edited reply text, also long enough."
    assert edited.version == 2

    client.delete_post(reply.id)
    stored = {p["id"]: p for p in emu.control.state()["posts"]}
    assert stored[reply.id]["deleted_at"] is not None
    client.recover_post(reply.id)
    assert client.get_post(reply.id).deleted_at is None


def test_delete_of_missing_post_is_not_found(client: DiscourseClient) -> None:
    with pytest.raises(DiscourseNotFound):
        client.delete_post(987654)
    with pytest.raises(DiscourseNotFound):
        client.get_post(987654)


def test_topic_posts_and_latest_posts(emu: Any, client: DiscourseClient, category_id: int) -> None:
    first = client.create_topic(
        title="A topic with three posts", raw=LONG_BODY, category_id=category_id
    )
    second = client.create_post(topic_id=first.topic_id, raw="Second post of the topic here.")
    third = client.create_post(topic_id=first.topic_id, raw="Third post of the topic here.")
    topic = client.get_topic(first.topic_id)
    assert topic.post_ids == (first.id, second.id, third.id)

    posts = client.get_topic_posts(first.topic_id, [third.id, first.id], chunk_size=1)
    assert [(p.id, p.raw) for p in posts] == [(first.id, LONG_BODY), (third.id, third.raw)]

    latest = client.latest_posts()
    assert [p.id for p in latest] == [third.id, second.id, first.id]
    assert latest[0].topic_title == "A topic with three posts"
    # `before` is exclusive (lib/latest_posts_query.rb: posts.id < before).
    assert [p.id for p in client.latest_posts(before=second.id)] == [first.id]


def test_find_topic_by_external_id(emu: Any, client: DiscourseClient, category_id: int) -> None:
    post = client.create_topic(
        title="A topic with an external id",
        raw=LONG_BODY,
        category_id=category_id,
        external_id="gchat-S-threads-T",
    )
    found = client.find_topic_by_external_id("gchat-S-threads-T")
    assert found is not None
    assert found.id == post.topic_id
    assert found.external_id == "gchat-S-threads-T"
    assert found.post_ids == (post.id,)
    assert client.find_topic_by_external_id("gchat-S-threads-missing") is None
    # The redirect was followed by hand: both hops are in the server's log.
    paths = [r["path"] for r in _requests_log(emu) if r["method"] == "GET"]
    assert "/t/external_id/gchat-S-threads-T.json" in paths
    assert any(p.startswith("/t/") and p.endswith(f"/{post.topic_id}.json") for p in paths)


def test_create_topic_with_taken_external_id_is_rejected(
    client: DiscourseClient, category_id: int
) -> None:
    client.create_topic(
        title="The first topic with this id",
        raw=LONG_BODY,
        category_id=category_id,
        external_id="gchat-dup",
    )
    with pytest.raises(DiscourseRejected) as caught:
        client.create_topic(
            title="The second topic with this id",
            raw=LONG_BODY,
            category_id=category_id,
            external_id="gchat-dup",
        )
    assert caught.value.status == 422


def test_approval_queue_raises_enqueued(
    emu: Any, client: DiscourseClient, category_id: int
) -> None:
    first = client.create_topic(
        title="A topic in a moderated site", raw=LONG_BODY, category_id=category_id
    )
    _api_user(emu, "carol")
    emu.control.settings(approve_post_count=1)
    with pytest.raises(DiscoursePostEnqueued) as caught:
        client.create_post(
            topic_id=first.topic_id, raw="Carol's first reply, queued.", as_user="carol"
        )
    assert isinstance(caught.value, DiscourseRejected)
    assert caught.value.pending_post_id is not None
    assert [p["raw"] for p in emu.control.state()["posts"]] == [LONG_BODY]


# ---- categories, users, uploads ---------------------------------------------------------------


def test_categories(emu: Any, client: DiscourseClient) -> None:
    parent = client.create_category("Google Chat")
    child = client.create_category("Space Alpha", parent_category_id=parent.id)
    assert parent.parent_category_id is None
    assert child.parent_category_id == parent.id
    assert client.get_category(child.id) == child
    listed = {c.id: c for c in client.list_categories()}
    assert listed[parent.id].name == "Google Chat"
    assert listed[child.id].parent_category_id == parent.id
    with pytest.raises(DiscourseRejected) as caught:
        client.create_category("Space Alpha", parent_category_id=parent.id)
    assert caught.value.status == 422
    assert any("already been taken" in e for e in caught.value.errors)


def test_users(emu: Any, client: DiscourseClient) -> None:
    user = client.create_user(
        name="Dana Scully",
        username="dana_s",
        email="Dana@example.com",
        password="correct horse battery",
    )
    assert user.username == "dana_s"
    assert user.active
    assert user.email == "Dana@example.com"
    assert client.get_user("dana_s") is not None
    assert client.get_user("nobody_here") is None
    found = client.find_user_by_email("dana@example.com")
    assert found is not None
    assert found.id == user.id
    assert client.find_user_by_email("ghost@example.com") is None
    client.set_trust_level(user.id, 2)
    stored = {u["username"]: u for u in emu.control.state()["users"]}
    assert stored["dana_s"]["trust_level"] == 2


@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        ("admin", "correct horse battery", "That username is not allowed."),
        ("dana_s", "correct horse battery", "unique"),
        ("fox_m", "short", "too short"),
    ],
)
def test_create_user_failure_bodies_raise_rejected(
    client: DiscourseClient, username: str, password: str, expected: str
) -> None:
    client.create_user(
        name="Dana", username="dana_s", email="dana@example.com", password="correct horse battery"
    )
    with pytest.raises(DiscourseRejected) as caught:
        client.create_user(
            name="X", username=username, email=f"{username}@example.net", password=password
        )
    assert caught.value.status == 200
    assert any(expected in e for e in caught.value.errors), caught.value.errors


def test_create_user_with_taken_email_hidden_is_rejected(
    emu: Any, client: DiscourseClient
) -> None:
    client.create_user(
        name="Dana", username="dana_s", email="dana@example.com", password="correct horse battery"
    )
    emu.control.settings(hide_email_address_taken=True)
    with pytest.raises(DiscourseRejected):
        client.create_user(
            name="Other",
            username="other_d",
            email="dana@example.com",
            password="correct horse battery",
        )
    assert client.get_user("other_d") is None


PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000005000152c1a2a40000000049454e44ae426082"
)


def test_upload_file(emu: Any, client: DiscourseClient) -> None:
    upload = client.upload_file("dot.png", PNG_1X1, "image/png")
    assert upload.short_url.startswith("upload://")
    assert upload.short_url.endswith(".png")
    assert upload.original_filename == "dot.png"
    assert upload.short_path is not None
    # Accept: application/json only because the emulator (unlike Discourse) serves its empty
    # HTML page to any GET without it, uploads included (reported to the lead).
    served = requests.get(
        emu.url + upload.short_path,
        timeout=5,
        headers={"Api-Key": API_KEY, "Api-Username": "system", "Accept": "application/json"},
    )
    assert served.status_code == 200
    assert served.content == PNG_1X1


def test_upload_sends_upload_type_not_the_deprecated_type(
    emu: Any, client: DiscourseClient
) -> None:
    # The emulator refuses `type` alone (removed in 3.5): a client that sent it would fail here.
    client.upload_file("dot.png", PNG_1X1, "image/png")
    assert emu.control.state().get("deprecations", []) == []


def download(client: DiscourseClient, short_url: str, **kw: Any) -> bytes:
    sink = io.BytesIO()
    size = client.download_upload(short_url, sink, max_bytes=kw.pop("max_bytes", 10**7), **kw)
    assert size == len(sink.getvalue())
    return sink.getvalue()


def test_download_follows_a_cdn_redirect_without_credentials(
    emu: Any, client: DiscourseClient
) -> None:
    upload = client.upload_file("dot.png", PNG_1X1, "image/png")
    assert download(client, upload.short_url) == PNG_1X1  # local store: served by the forum
    emu.control.settings(external_storage_cdn=True)
    before = client.request_count
    assert download(client, upload.short_url, as_user="system") == PNG_1X1
    # One admin request (the short URL); the CDN hop is outside the forum's budget.
    assert client.request_count - before == 1
    seen = emu.control.cdn_requests()["requests"]
    assert len(seen) == 1
    sent = {name.lower() for name in seen[0]["headers"]}
    assert not sent & {"api-key", "api-username", "authorization", "cookie"}, sent


def test_download_refuses_a_file_over_the_limit(emu: Any, client: DiscourseClient) -> None:
    upload = client.upload_file("dot.png", PNG_1X1, "image/png")
    with pytest.raises(DiscourseTooLarge, match="over the limit") as caught:
        download(client, upload.short_url, max_bytes=len(PNG_1X1) - 1)  # served by the forum
    assert (caught.value.limit, caught.value.size) == (len(PNG_1X1) - 1, len(PNG_1X1))
    emu.control.settings(external_storage_cdn=True)
    with pytest.raises(DiscourseTooLarge):
        download(client, upload.short_url, max_bytes=len(PNG_1X1) - 1)
    assert download(client, upload.short_url, max_bytes=len(PNG_1X1)) == PNG_1X1


def test_a_large_download_stops_at_the_declared_length(emu: Any, client: DiscourseClient) -> None:
    emu.control.settings(
        external_storage_cdn=True,
        authorized_extensions="pdf",
        max_attachment_size_kb=16 * 1024,
    )
    big = b"%PDF-1.4\n" + bytes(12 * 1024 * 1024)
    upload = client.upload_file("big.pdf", io.BytesIO(big), "application/pdf")
    emu.control.clear_cdn_requests()
    sink = io.BytesIO()
    with pytest.raises(DiscourseTooLarge):
        client.download_upload(upload.short_url, sink, max_bytes=1024 * 1024)
    assert sink.getvalue() == b""  # refused on the Content-Length, before the body
    (served,) = emu.control.cdn_requests()["requests"]
    # What the sockets' buffers took before the client hung up, far from the whole file.
    assert served["bytes_sent"] < len(big) // 4, served["bytes_sent"]


def test_a_download_without_a_length_is_cut_off_at_the_limit(
    emu: Any, client: DiscourseClient
) -> None:
    emu.control.settings(
        external_storage_cdn=True,
        external_storage_chunked=True,
        authorized_extensions="pdf",
        max_attachment_size_kb=16 * 1024,
    )
    big = b"%PDF-1.4\n" + bytes(12 * 1024 * 1024)
    upload = client.upload_file("big.pdf", io.BytesIO(big), "application/pdf")
    emu.control.clear_cdn_requests()
    sink = io.BytesIO()
    limit = 1024 * 1024
    with pytest.raises(DiscourseTooLarge) as caught:
        client.download_upload(upload.short_url, sink, max_bytes=limit)
    assert caught.value.size is None  # counted while reading: no length was declared
    assert len(sink.getvalue()) <= limit
    (served,) = emu.control.cdn_requests()["requests"]
    assert served["bytes_sent"] < len(big) // 4, served["bytes_sent"]
    emu.control.settings(external_storage_chunked=False)
    assert download(client, upload.short_url, max_bytes=len(big)) == big


def test_a_secure_upload_is_fetched_as_the_author_who_may_not_see_it(
    emu: Any, client: DiscourseClient, category_id: int
) -> None:
    _api_user(emu, "alice")
    _api_user(emu, "mod", trust_level=4)
    emu.control.settings(secure_uploads=True)
    staff = int(emu.control.create_category(name="Staff room", restricted_to=["mod"])["id"])
    upload = client.upload_file("dot.png", PNG_1X1, "image/png", as_user="mod")
    client.create_topic(
        title="Staff only picture here",
        raw=f"![dot]({upload.short_url}) {LONG_BODY}",
        category_id=staff,
        as_user="mod",
    )
    with pytest.raises(DiscourseAuthError) as caught:
        download(client, upload.short_url, as_user="alice")
    assert caught.value.status == 403 and not caught.value.credentials_invalid
    assert download(client, upload.short_url, as_user="mod") == PNG_1X1
    assert emu.control.cdn_requests()["requests"][-1]["bytes_sent"] == len(PNG_1X1)


def test_upload_streams_a_file_and_a_retried_attempt_sends_it_whole(
    emu: Any, client: DiscourseClient
) -> None:
    emu.control.settings(authorized_extensions="pdf", max_attachment_size_kb=4096)
    content = b"%PDF-1.4\n" + bytes(range(256)) * 4000
    file = io.BytesIO(b"skipped" + content)
    file.seek(len(b"skipped"))  # from where the file stands
    emu.control.add_fault(count=1, status=503, method="POST", path_regex=r"^/uploads")
    upload = client.upload_file('a "quoted"\nname.pdf', file, "application/pdf")
    assert upload.filesize == len(content)
    assert download(client, upload.short_url) == content
    assert client.request_count == 3  # the 503, the upload again, the download


# ---- chat and webhooks ------------------------------------------------------------------------


def test_chat_direct_messages(emu: Any, client: DiscourseClient) -> None:
    _api_user(emu, "alice")
    _api_user(emu, "bob")
    channel_id = client.create_dm_channel(["bob"], as_user="alice")
    assert client.create_dm_channel(["bob"], as_user="alice") == channel_id  # 1:1 is reused
    first = client.send_chat_message(channel_id, "hi bob", as_user="alice")
    second = client.send_chat_message(channel_id, "hello alice", as_user="bob")
    client.edit_chat_message(channel_id, first, "hi Bob!", as_user="alice")
    messages = client.list_chat_messages(channel_id, as_user="alice")
    by_id = {m.id: m for m in messages}
    assert by_id[first].message == "hi Bob!"
    assert by_id[first].edited
    assert by_id[first].username == "alice"
    assert by_id[second].username == "bob"
    assert by_id[second].channel_id == channel_id
    client.trash_chat_message(channel_id, second, as_user="bob")
    stored = {m["id"]: m for m in emu.control.state()["chat_messages"]}
    assert stored[second]["deleted_at"] is not None


def test_webhooks(client: DiscourseClient) -> None:
    assert client.list_webhooks() == []
    hook = client.create_webhook(
        "http://127.0.0.1:5000/discourse/webhook",
        secret="a-long-enough-secret",
        verify_certificate=False,
    )
    assert hook.active
    assert hook.wildcard_web_hook
    assert [h.id for h in client.list_webhooks()] == [hook.id]
    updated = client.update_webhook(hook.id, active=False)
    assert not updated.active
    assert not client.list_webhooks()[0].active


# ---- rate limits, retries, failures -----------------------------------------------------------


def test_json_429_waits_as_told_then_succeeds(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    emu.control.settings(max_admin_api_reqs_per_minute=2)
    # The wait is recorded, not slept; lifting the server's limit stands in for time passing.
    fake_time.on_sleep = lambda _s: emu.control.settings(max_admin_api_reqs_per_minute=100_000)
    for _ in range(3):
        assert client.get_category(category_id).id == category_id
    assert client.rate_limited_count == 1
    assert len(fake_time.waits) == 1
    assert 1 <= fake_time.waits[0] <= 60  # the server's extras.wait_seconds
    assert [r["status"] for r in _requests_log(emu)][-4:] == [200, 200, 429, 200]


def test_json_429_exposes_wait_and_code(
    emu: Any, make_client: Callable[..., DiscourseClient], category_id: int
) -> None:
    emu.control.settings(max_admin_api_reqs_per_minute=1)
    client = make_client(max_attempts=1)
    client.get_category(category_id)
    with pytest.raises(DiscourseRateLimited) as caught:
        client.get_category(category_id)
    assert caught.value.status == 429
    assert caught.value.error_code == "admin_api_key_rate_limit"
    assert 1 <= caught.value.wait_seconds <= 60
    assert any("too many times" in e for e in caught.value.errors)


def test_plain_text_429_waits_then_succeeds(
    emu: Any, make_client: Callable[..., DiscourseClient], fake_time: FakeTime, category_id: int
) -> None:
    emu.control.settings(per_ip_limit_enabled=True, max_reqs_per_ip_per_10_seconds=2)
    # Discourse rolls the per-IP counters back for successful admin-API requests, so fill the
    # window with anonymous requests from the same address (say, browsers behind one NAT).
    for _ in range(2):
        requests.get(emu.url + "/categories.json", timeout=5)
    single = make_client(max_attempts=1)
    with pytest.raises(DiscourseRateLimited) as caught:
        single.get_category(category_id)
    assert caught.value.error_code is not None
    assert caught.value.error_code.startswith("ip_")
    assert caught.value.errors == []  # plain text, not JSON
    assert caught.value.wait_seconds > 0

    client = make_client()
    fake_time.on_sleep = lambda _s: emu.control.settings(per_ip_limit_enabled=False)
    assert client.get_category(category_id).id == category_id
    assert client.rate_limited_count == 1
    assert len(fake_time.waits) == 1
    # Both 429s name the same window's remaining time (± the second that may tick between).
    assert abs(fake_time.waits[0] - caught.value.wait_seconds) <= 1


def test_5xx_is_retried_with_backoff_then_succeeds(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    emu.control.add_fault(count=2, status=503, method="GET", path_regex=r"^/c/")
    assert client.get_category(category_id).id == category_id
    assert client.request_count == 3
    assert len(fake_time.waits) == 2
    assert fake_time.waits[1] > fake_time.waits[0]


def test_5xx_retries_are_bounded(
    emu: Any, make_client: Callable[..., DiscourseClient], fake_time: FakeTime, category_id: int
) -> None:
    client = make_client(max_attempts=3)
    emu.control.add_fault(count=10, status=502, method="GET", path_regex=r"^/c/")
    with pytest.raises(DiscourseUnavailable) as caught:
        client.get_category(category_id)
    assert caught.value.status == 502
    assert client.request_count == 3
    assert len(fake_time.waits) == 2


def test_dropped_connection_on_a_read_is_retried(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    emu.control.add_fault(count=1, drop_connection=True, method="GET", path_regex=r"^/c/")
    assert client.get_category(category_id).id == category_id
    assert client.request_count == 2
    assert len(fake_time.waits) == 1


def test_dropped_connection_on_a_reply_is_not_retried(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    first = client.create_topic(
        title="A topic for a dropped reply", raw=LONG_BODY, category_id=category_id
    )
    emu.control.add_fault(count=1, drop_connection=True, method="POST", path_regex=r"^/posts")
    before = client.request_count
    with pytest.raises(DiscourseUnavailable):
        client.create_post(topic_id=first.topic_id, raw="A reply whose answer is lost.")
    assert client.request_count == before + 1
    assert fake_time.waits == []


def test_dropped_connection_on_create_topic_with_external_id_never_duplicates(
    emu: Any, client: DiscourseClient, fake_time: FakeTime, category_id: int
) -> None:
    emu.control.add_fault(count=1, drop_connection=True, method="POST", path_regex=r"^/posts")
    post = client.create_topic(
        title="A topic whose first answer is lost",
        raw=LONG_BODY,
        category_id=category_id,
        external_id="gchat-lost-answer",
    )
    topics = [
        t for t in emu.control.state()["topics"] if t.get("external_id") == "gchat-lost-answer"
    ]
    assert len(topics) == 1
    assert post.topic_id == topics[0]["id"]
    assert post.post_number == 1
    assert len(fake_time.waits) == 1


def test_timeout_on_a_read_is_retried(
    emu: Any, make_client: Callable[..., DiscourseClient], fake_time: FakeTime, category_id: int
) -> None:
    client = make_client(timeout_seconds=0.3)
    emu.control.add_fault(count=1, latency_ms=1500, method="GET", path_regex=r"^/c/")
    assert client.get_category(category_id).id == category_id
    assert client.request_count == 2
    assert len(fake_time.waits) == 1


def test_token_bucket_61st_request_in_a_minute_waits(
    emu: Any, make_client: Callable[..., DiscourseClient], fake_time: FakeTime, category_id: int
) -> None:
    client = make_client(requests_per_minute=60)
    for _ in range(60):
        client.get_category(category_id)
    assert fake_time.waits == []
    client.get_category(category_id)
    assert fake_time.waits == [pytest.approx(60.0)]
    assert client.request_count == 61
    assert client.rate_limited_count == 0


def test_token_bucket_is_shared_by_threads(
    emu: Any, fake_time: FakeTime, category_id: int
) -> None:
    sent_at: list[float] = []
    lock = threading.Lock()

    class RecordingSession(requests.Session):
        def request(self, *args: Any, **kw: Any) -> requests.Response:
            with lock:
                sent_at.append(fake_time.clock())
            return super().request(*args, **kw)

    client = DiscourseClient(
        emu.url,
        API_KEY,
        "system",
        requests_per_minute=10,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        session=RecordingSession(),
    )
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(6):
                client.get_category(category_id)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert client.request_count == 30
    ordered = sorted(sent_at)
    assert len(ordered) == 30
    # Never more than 10 requests inside any 60-second window.
    for i in range(len(ordered) - 10):
        assert ordered[i + 10] - ordered[i] >= 60.0
    client.close()


def test_create_topic_whose_answer_is_lost_after_it_landed_is_found_not_recreated(
    emu: Any, make_client: Callable[..., DiscourseClient], fake_time: FakeTime, category_id: int
) -> None:
    client = make_client(timeout_seconds=0.3)
    # The server sits on the POST past the client's timeout, then creates the topic anyway.
    emu.control.add_fault(count=1, latency_ms=800, method="POST", path_regex=r"^/posts")

    def topic_landed(_seconds: float) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(t.get("external_id") == "gchat-slow" for t in emu.control.state()["topics"]):
                return
            time.sleep(0.02)  # polling the emulator's state for a condition, with a deadline
        raise AssertionError("the slow POST never created its topic")

    fake_time.on_sleep = topic_landed
    post = client.create_topic(
        title="A topic created by a slow server",
        raw=LONG_BODY,
        category_id=category_id,
        external_id="gchat-slow",
    )
    topics = [t for t in emu.control.state()["topics"] if t.get("external_id") == "gchat-slow"]
    assert len(topics) == 1
    assert post.topic_id == topics[0]["id"]
    assert post.post_number == 1
    posts_sent = [r for r in _requests_log(emu) if r["method"] == "POST"]
    assert len(posts_sent) == 1  # found by external_id instead of posted again
