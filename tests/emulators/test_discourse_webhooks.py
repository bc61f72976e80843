"""Discourse emulator: signed, asynchronous webhook delivery and its failure modes."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from emulators.discourse import DiscourseEmulator
from emulators.discourse_webhooks import signature
from tests.fixtures_discourse import DiscourseApi, WebhookReceiver

SECRET = "a-very-secret-webhook-key"
BODY = "This body has more than twenty characters."

POST_PAYLOAD_KEYS = set(
    "id name username avatar_template created_at cooked post_number post_type updated_at "
    "reply_count reply_to_post_number quote_count incoming_link_count reads score topic_id "
    "topic_slug topic_title category_id display_username primary_group_name flair_name "
    "flair_group_id version user_title bookmarked raw moderator admin staff user_id hidden "
    "trust_level deleted_at user_deleted edit_reason wiki reviewable_id reviewable_score_count "
    "reviewable_score_pending_count topic_posts_count topic_filtered_posts_count "
    "topic_archetype category_slug".split()
)
TOPIC_PAYLOAD_FORBIDDEN = {"post_stream", "details", "suggested_topics", "timeline_lookup"}


def add_hook(api: DiscourseApi, url: str, **fields: Any) -> dict[str, Any]:
    body = {"payload_url": url, "content_type": 1, "secret": SECRET, "wildcard_web_hook": True}
    body.update(fields)
    response = api.post("/admin/api/web_hooks.json", json={"web_hook": body})
    assert response.status_code == 200, response.text
    return response.json()["web_hook"]


def events(receiver: WebhookReceiver) -> list[str]:
    return [r.header("X-Discourse-Event") or "" for r in receiver.received]


@pytest.fixture
def forum(discourse_emulator: DiscourseEmulator) -> dict[str, Any]:
    control = discourse_emulator.control
    control.create_user("alice", trust_level=1)
    category = control.create_category("Bridged space")
    return {"control": control, "category": category["id"]}


def idle(emulator: DiscourseEmulator) -> None:
    assert emulator.control.wait_deliveries_idle(timeout=10)["idle"] is True


def test_discourse_test_vector() -> None:
    assert signature("my_lovely_secret_for_web_hook", b'{"ping":"OK"}') == (
        "sha256=162f107f6b5022353274eb1a7197885cfd35744d8d08e5bcea025d309386b7d6"
    )


def test_ping_is_signed_like_discourse(
    discourse_api: DiscourseApi, webhook_receiver: WebhookReceiver
) -> None:
    hook = add_hook(discourse_api, webhook_receiver.url, secret="my_lovely_secret_for_web_hook")
    assert discourse_api.post(f"/admin/api/web_hooks/{hook['id']}/ping.json").status_code == 200
    (ping,) = webhook_receiver.wait_for(1)
    assert ping.body == b'{"ping":"OK"}'
    assert ping.header("X-Discourse-Event") == "ping"
    assert ping.header("X-Discourse-Event-Signature") == (
        "sha256=162f107f6b5022353274eb1a7197885cfd35744d8d08e5bcea025d309386b7d6"
    )


def test_post_created_is_delivered_with_headers_payload_and_valid_signature(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    add_hook(discourse_api, webhook_receiver.url)
    created = discourse_api.post(
        "/posts.json",
        json={"title": "A topic that fires hooks", "raw": BODY, "category": forum["category"]},
    ).json()
    topic_event, post_event = webhook_receiver.wait_for(2)
    for received in (topic_event, post_event):
        expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(received.header("X-Discourse-Event-Signature") or "", expected)
        assert received.header("Content-Type") == "application/json"
        assert received.header("X-Discourse-Instance") == discourse_emulator.url
        assert (received.header("User-Agent") or "").startswith("Discourse/")
        assert (received.header("X-Discourse-Event-Id") or "").isdigit()
    assert topic_event.header("X-Discourse-Event") == "topic_created"
    assert topic_event.header("X-Discourse-Event-Type") == "topic"
    topic = topic_event.json()["topic"]
    assert topic["id"] == created["topic_id"] and not TOPIC_PAYLOAD_FORBIDDEN & set(topic)
    assert topic["created_by"]["username"] == "system"
    assert post_event.header("X-Discourse-Event") == "post_created"
    assert post_event.header("X-Discourse-Event-Type") == "post"
    post = post_event.json()["post"]
    assert set(post) == POST_PAYLOAD_KEYS
    assert post["id"] == created["id"] and post["raw"] == BODY
    assert post["topic_archetype"] == "regular" and post["category_slug"] == "bridged-space"


def test_no_signature_without_secret_and_form_content_type_changes_only_the_header(
    discourse_api: DiscourseApi, webhook_receiver: WebhookReceiver, forum: dict[str, Any]
) -> None:
    add_hook(discourse_api, webhook_receiver.url, secret="", content_type=2)
    forum["control"].create_post("alice", BODY, title="A topic without a secret")
    received = webhook_receiver.wait_for(2)[1]
    assert received.header("X-Discourse-Event-Signature") is None
    assert received.header("Content-Type") == "application/x-www-form-urlencoded"
    assert received.json()["post"]["raw"] == BODY


def test_failed_delivery_is_not_retried_by_default(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    # A huge time_scale makes a (wrong) 1-minute retry happen within milliseconds.
    forum["control"].settings(time_scale=100000)
    add_hook(
        discourse_api, webhook_receiver.url, web_hook_event_type_ids=[201], wildcard_web_hook=False
    )
    webhook_receiver.respond_with(500)
    forum["control"].create_post("alice", BODY, title="Delivery that fails once")
    idle(discourse_emulator)
    assert len(webhook_receiver.received) == 1
    (delivery,) = forum["control"].deliveries()["deliveries"]
    assert delivery["status"] == 500 and delivery["attempt"] == 1


def test_retries_get_new_event_ids_when_enabled_and_the_hook_is_then_deactivated(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    # 1 + 5 + 25 + 125 minutes of back-off shrink to ~0.1 s.
    forum["control"].settings(retry_web_hook_events=True, time_scale=100000)
    hook = add_hook(
        discourse_api, webhook_receiver.url, web_hook_event_type_ids=[201], wildcard_web_hook=False
    )
    webhook_receiver.respond_with(503)
    forum["control"].create_post("alice", BODY, title="Delivery that always fails")
    received = webhook_receiver.wait_for(5)
    idle(discourse_emulator)
    assert len(webhook_receiver.received) == 5
    ids = [r.header("X-Discourse-Event-Id") for r in received]
    assert len(set(ids)) == 5
    assert len({r.body for r in received}) == 1
    shown = discourse_api.get(f"/admin/api/web_hooks/{hook['id']}.json").json()["web_hook"]
    assert shown["active"] is False


@pytest.mark.parametrize("status", [404, 410])
def test_404_and_410_are_never_retried(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
    status: int,
) -> None:
    forum["control"].settings(retry_web_hook_events=True, time_scale=100000)
    add_hook(
        discourse_api, webhook_receiver.url, web_hook_event_type_ids=[201], wildcard_web_hook=False
    )
    webhook_receiver.respond_with(status)
    forum["control"].create_post("alice", BODY, title="Delivery to a gone endpoint")
    idle(discourse_emulator)
    assert len(webhook_receiver.received) == 1


def test_network_errors_are_never_retried(
    discourse_api: DiscourseApi, forum: dict[str, Any], discourse_emulator: DiscourseEmulator
) -> None:
    forum["control"].settings(retry_web_hook_events=True, time_scale=100000)
    # A port that was free a moment ago: nothing listens there.
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, lambda e, s: [])
    port = server.port
    server.server_close()
    add_hook(
        discourse_api,
        f"http://127.0.0.1:{port}/hook",
        web_hook_event_type_ids=[201],
        wildcard_web_hook=False,
    )
    forum["control"].create_post("alice", BODY, title="Delivery to nowhere at all")
    idle(discourse_emulator)
    deliveries = forum["control"].deliveries()["deliveries"]
    assert [d["status"] for d in deliveries] == [-1]


def test_redelivery_resends_the_same_event_id_headers_and_body(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    hook = add_hook(
        discourse_api, webhook_receiver.url, web_hook_event_type_ids=[201], wildcard_web_hook=False
    )
    webhook_receiver.respond_with(500)
    forum["control"].create_post("alice", BODY, title="Delivery to redeliver later")
    (failed,) = webhook_receiver.wait_for(1)
    idle(discourse_emulator)
    webhook_receiver.respond_with(200)
    log = discourse_api.get(f"/admin/api/web_hook_events/{hook['id']}.json").json()
    (event,) = log["web_hook_events"]
    assert event["status"] == 500
    response = discourse_api.post(
        f"/admin/api/web_hooks/{hook['id']}/events/{event['id']}/redeliver.json"
    )
    assert response.status_code == 200
    again = webhook_receiver.wait_for(2)[1]
    assert again.body == failed.body
    for name in ("X-Discourse-Event-Id", "X-Discourse-Event-Signature", "X-Discourse-Event"):
        assert again.header(name) == failed.header(name)


def test_import_mode_fires_nothing_but_a_normal_post_does(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    add_hook(discourse_api, webhook_receiver.url)
    imported = {
        "title": "Imported from the old forum",
        "raw": BODY,
        "category": forum["category"],
        "import_mode": "true",
    }
    assert discourse_api.post("/posts.json", json=imported).status_code == 200
    idle(discourse_emulator)
    assert webhook_receiver.received == []
    imported.pop("import_mode")
    imported["title"] = "Created the normal way now"
    discourse_api.post("/posts.json", json=imported)
    assert len(webhook_receiver.wait_for(2)) == 2


def test_edit_semantics_topic_edited_replaces_post_edited_on_op_topic_change(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    post = discourse_api.post(
        "/posts.json",
        json={"title": "Topic whose OP is edited", "raw": BODY, "category": forum["category"]},
    ).json()
    add_hook(discourse_api, webhook_receiver.url)
    path = f"/posts/{post['id']}.json"
    discourse_api.put(path, json={"post": {"raw": BODY}})  # unchanged: no event
    discourse_api.put(path, json={"post": {"raw": BODY + " edited"}})
    discourse_api.put(path, json={"title": "Renamed topic whose OP", "post": {"raw": BODY + "!"}})
    idle(discourse_emulator)
    assert events(webhook_receiver) == ["post_edited", "topic_edited"]


def test_author_delete_and_recover_sequences(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    post = discourse_api.post(
        "/posts.json",
        json={"title": "Alice deletes her topic", "raw": BODY, "category": forum["category"]},
        user="alice",
    ).json()
    add_hook(discourse_api, webhook_receiver.url)
    discourse_api.delete(f"/posts/{post['id']}.json", user="alice")
    idle(discourse_emulator)
    assert events(webhook_receiver) == ["post_edited", "post_destroyed", "topic_destroyed"]
    assert webhook_receiver.received[0].json()["post"]["raw"] == "(topic deleted by author)"
    discourse_api.put(f"/posts/{post['id']}/recover.json", user="alice")
    idle(discourse_emulator)
    assert events(webhook_receiver)[3:] == ["post_edited", "post_recovered", "topic_recovered"]


def test_post_created_fires_for_whispers_small_actions_and_pms(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    control = forum["control"]
    topic = control.create_post("alice", BODY, title="Topic for post types", category_id=2)
    add_hook(
        discourse_api, webhook_receiver.url, web_hook_event_type_ids=[201], wildcard_web_hook=False
    )
    control.create_post("system", "whisper", topic_id=topic["topic_id"], post_type=4)
    control.create_post(
        "system", "", topic_id=topic["topic_id"], post_type=3, action_code="closed.enabled"
    )
    control.create_post(
        "alice",
        BODY,
        title="A private one",
        archetype="private_message",
        target_usernames=["system"],
    )
    received = webhook_receiver.wait_for(3)
    idle(discourse_emulator)
    posts = [r.json()["post"] for r in received]
    assert [p["post_type"] for p in posts] == [4, 3, 1]
    assert posts[1]["action_code"] == "closed.enabled"
    assert posts[2]["topic_archetype"] == "private_message" and posts[2]["category_id"] is None


def test_filters_inactive_hooks_and_drop_rate(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    control = forum["control"]
    other = control.create_category("Elsewhere")
    add_hook(discourse_api, webhook_receiver.url, category_ids=[other["id"]])
    inactive = add_hook(discourse_api, webhook_receiver.url + "/inactive", active=False)
    control.create_post("alice", BODY, title="Not in the filtered category", category_id=2)
    control.create_post("alice", BODY, title="A private message", archetype="private_message")
    control.create_post("alice", BODY, title="In the filtered category", category_id=other["id"])
    received = webhook_receiver.wait_for(2)
    idle(discourse_emulator)
    assert len(webhook_receiver.received) == 2
    assert all(r.path == "/hook" for r in received)
    assert inactive["active"] is False
    control.settings(webhook_drop_rate=1.0)
    control.create_post("alice", BODY, title="Lost in transit", category_id=other["id"])
    idle(discourse_emulator)
    assert len(webhook_receiver.received) == 2
    assert sum(d["dropped"] for d in control.deliveries()["deliveries"]) == 2


def test_shuffle_reorders_deliveries(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    control = forum["control"]
    control.settings(webhook_shuffle=True, webhook_shuffle_window_ms=150)
    topic = control.create_post("alice", BODY, title="Topic with many replies")
    add_hook(
        discourse_api, webhook_receiver.url, web_hook_event_type_ids=[201], wildcard_web_hook=False
    )
    created = [
        control.create_post("alice", f"reply {n}", topic_id=topic["topic_id"])["id"]
        for n in range(8)
    ]
    received = webhook_receiver.wait_for(8)
    delivered = [r.json()["post"]["id"] for r in received]
    assert sorted(delivered) == created
    assert delivered != created


def test_webhook_crud_and_admin_only(
    discourse_api: DiscourseApi, webhook_receiver: WebhookReceiver, forum: dict[str, Any]
) -> None:
    bad = discourse_api.post(
        "/admin/api/web_hooks.json",
        json={
            "web_hook": {
                "payload_url": webhook_receiver.url,
                "secret": "short",
                "wildcard_web_hook": True,
            }
        },
    )
    assert bad.status_code == 422
    assert "Secret is too short (minimum is 12 characters)" in bad.json()["errors"]
    hook = add_hook(discourse_api, webhook_receiver.url)
    listed = discourse_api.get("/admin/api/web_hooks.json").json()["web_hooks"]
    assert [h["id"] for h in listed] == [hook["id"]]
    updated = discourse_api.put(
        f"/admin/api/web_hooks/{hook['id']}.json", json={"web_hook": {"active": False}}
    ).json()["web_hook"]
    assert updated["active"] is False
    assert discourse_api.get("/admin/api/web_hooks.json", user="alice").status_code == 403
    assert discourse_api.delete(f"/admin/api/web_hooks/{hook['id']}.json").status_code == 200
    assert discourse_api.get(f"/admin/api/web_hooks/{hook['id']}.json").status_code == 404


def test_chat_message_events(
    discourse_api: DiscourseApi,
    webhook_receiver: WebhookReceiver,
    forum: dict[str, Any],
    discourse_emulator: DiscourseEmulator,
) -> None:
    control = forum["control"]
    channel = control.create_chat_channel(forum["category"], "Bridged chat")
    dm = control.create_dm_channel("alice", ["system"])
    add_hook(discourse_api, webhook_receiver.url, category_ids=[forum["category"]])
    sent = control.send_chat(channel["id"], "alice", "hello chat")
    control.send_chat(dm["id"], "alice", "a direct message")  # no category: filtered out
    discourse_api.put(
        f"/chat/api/channels/{channel['id']}/messages/{sent['message_id']}.json",
        json={"message": "hello chat (edited)"},
        user="alice",
    )
    discourse_api.delete(
        f"/chat/api/channels/{channel['id']}/messages/{sent['message_id']}.json", user="alice"
    )
    discourse_api.put(
        f"/chat/api/channels/{channel['id']}/messages/{sent['message_id']}/restore.json",
        user="alice",
    )
    received = webhook_receiver.wait_for(4)
    idle(discourse_emulator)
    assert events(webhook_receiver) == [
        "chat_message_created",
        "chat_message_edited",
        "chat_message_trashed",
        "chat_message_restored",
    ]
    body = received[0].json()["chat_message"]
    assert set(body) == {"message", "channel"}
    assert body["message"]["message"] == "hello chat"
    assert body["channel"]["chatable_type"] == "Category"
    assert received[0].header("X-Discourse-Event-Type") == "chat_message"
