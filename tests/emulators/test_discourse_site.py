"""Discourse emulator: categories, users, uploads, chat, control API, faults, standalone run."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from typing import Any

import pytest
import requests

from emulators.discourse import DiscourseEmulator
from emulators.discourse_model import base62, sha1_hex
from tests.fixtures_discourse import DiscourseApi


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def control(discourse_emulator: DiscourseEmulator) -> Any:
    discourse_emulator.control.create_user("alice", trust_level=1, email="alice@example.com")
    return discourse_emulator.control


# --- categories ----------------------------------------------------------------------------


def test_category_create_show_list_and_errors(discourse_api: DiscourseApi, control: Any) -> None:
    parent = discourse_api.post("/categories.json", json={"name": "Spaces", "color": "AA0000"})
    assert parent.status_code == 200
    parent_id = parent.json()["category"]["id"]
    child = discourse_api.post(
        "/categories.json", json={"name": "Team room", "parent_category_id": parent_id}
    ).json()["category"]
    assert child["parent_category_id"] == parent_id and child["slug"] == "team-room"
    shown = discourse_api.get(f"/c/{child['id']}/show.json").json()["category"]
    assert shown["name"] == "Team room"
    listed = discourse_api.get("/categories.json?include_subcategories=true").json()
    spaces = next(c for c in listed["category_list"]["categories"] if c["id"] == parent_id)
    assert spaces["subcategory_ids"] == [child["id"]]
    assert [c["id"] for c in spaces["subcategory_list"]] == [child["id"]]
    subs = discourse_api.get(f"/categories.json?parent_category_id={parent_id}").json()
    assert [c["id"] for c in subs["category_list"]["categories"]] == [child["id"]]
    duplicate = discourse_api.post("/categories.json", json={"name": "spaces"})
    assert duplicate.status_code == 422
    assert "Category Name has already been taken" in duplicate.json()["errors"]
    nested = discourse_api.post(
        "/categories.json", json={"name": "Too deep", "parent_category_id": child["id"]}
    )
    assert nested.json() == {"errors": ["You can't nest a subcategory under another"]}
    long_name = discourse_api.post("/categories.json", json={"name": "x" * 51})
    assert long_name.json()["errors"] == ["Category Name is too long (maximum is 50 characters)"]
    assert discourse_api.post("/categories.json", json={}).status_code == 400
    assert discourse_api.post("/categories.json", json={"name": "Nope"}, user="alice").json() == {
        "errors": ["You are not permitted to view the requested resource."],
        "error_type": "invalid_access",
    }
    assert discourse_api.get("/c/999/show.json").json() == {
        "errors": ["The requested URL or resource could not be found."],
        "error_type": "not_found",
    }


# --- users ---------------------------------------------------------------------------------


def new_user(**fields: Any) -> dict[str, Any]:
    body = {
        "name": "New Person",
        "email": "new@example.com",
        "password": "correct horse battery",
        "username": "new_person",
        "active": True,
        "approved": True,
    }
    body.update(fields)
    return body


def test_create_user_success_and_lookups(discourse_api: DiscourseApi, control: Any) -> None:
    created = discourse_api.post("/users.json", json=new_user())
    assert created.status_code == 200
    body = created.json()
    assert body["success"] is True and body["active"] is True
    assert body["message"] == "Your account is activated and ready to use."
    user = discourse_api.get("/u/New_Person.json").json()["user"]
    assert user["id"] == body["user_id"] and user["username"] == "new_person"
    assert user["trust_level"] == 0
    found = discourse_api.get(
        "/admin/users/list/active.json", params={"email": "NEW@example.com", "show_emails": "true"}
    ).json()
    assert [u["id"] for u in found] == [body["user_id"]]
    assert found[0]["email"] == "new@example.com"
    assert discourse_api.get("/admin/users/list/active.json", user="alice").status_code == 403
    raised = discourse_api.put(
        f"/admin/users/{body['user_id']}/trust_level.json", json={"level": 1}
    )
    assert raised.json()["admin_user"]["trust_level"] == 1
    assert discourse_api.get("/u/nobody.json").status_code == 404


def test_inactive_user_gets_the_activation_message(
    discourse_api: DiscourseApi, control: Any
) -> None:
    body = discourse_api.post("/users.json", json=new_user(active=False)).json()
    assert body["active"] is False
    assert body["message"].startswith(
        "<p>You’re almost done! We sent an activation mail to <b>new@example.com</b>"
    )


USER_FAILURES = [
    (
        "taken email",
        {"email": "alice@example.com"},
        "email",
        "has already been taken",
        "Primary email has already been taken",
    ),
    (
        "short username",
        {"username": "ab"},
        "username",
        "must be at least 3 characters",
        "Username must be at least 3 characters",
    ),
    (
        "long username",
        {"username": "a" * 21},
        "username",
        "must be no more than 20 characters",
        "Username must be no more than 20 characters",
    ),
    (
        "bad characters",
        {"username": "al ice"},
        "username",
        "must only include numbers, letters, dashes, dots, and underscores",
        "Username must only include numbers, letters, dashes, dots, and underscores",
    ),
    (
        "taken username",
        {"username": "ALICE"},
        "username",
        "must be unique",
        "Username must be unique",
    ),
    ("group name", {"username": "staff"}, "username", "must be unique", "Username must be unique"),
    ("no password", {"password": ""}, "password", "can't be blank", "Password can't be blank"),
    (
        "short password",
        {"password": "short"},
        "password",
        "is too short (minimum is 10 characters)",
        "Password is too short (minimum is 10 characters)",
    ),
]


@pytest.mark.parametrize(
    ("fields", "key", "error", "message"),
    [case[1:] for case in USER_FAILURES],
    ids=[case[0] for case in USER_FAILURES],
)
def test_create_user_failures_are_200_with_success_false(
    discourse_api: DiscourseApi,
    control: Any,
    fields: dict[str, Any],
    key: str,
    error: str,
    message: str,
) -> None:
    response = discourse_api.post("/users.json", json=new_user(**fields))
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False
    assert error in body["errors"][key]
    assert message in body["message"].split("\n")
    assert body["values"]["username"] == new_user(**fields)["username"]


@pytest.mark.parametrize("username", ["admin", "System", "support"])
def test_reserved_usernames(discourse_api: DiscourseApi, username: str) -> None:
    body = discourse_api.post("/users.json", json=new_user(username=username)).json()
    assert body == {"success": False, "message": "That username is not allowed."}


def test_create_user_requires_email_and_username(discourse_api: DiscourseApi) -> None:
    response = discourse_api.post("/users.json", json={"username": "someone"})
    assert response.status_code == 400
    assert response.json() == {"errors": ["param is missing or the value is empty: email"]}


def test_by_external_id_only_for_sso_users(discourse_api: DiscourseApi, control: Any) -> None:
    control.create_user("ssouser", external_id="ext-42")
    assert discourse_api.get("/u/by-external/ext-42.json").json()["user"]["username"] == "ssouser"
    assert discourse_api.get("/u/by-external/unknown.json").status_code == 404


# --- uploads -------------------------------------------------------------------------------


def test_upload_image_and_serve_short_url(discourse_api: DiscourseApi, control: Any) -> None:
    data = png(800, 600)
    response = discourse_api.post(
        "/uploads.json",
        data={"upload_type": "composer", "synchronous": "true"},
        files={"file": ("cat.png", data, "image/png")},
        user="alice",
    )
    assert response.status_code == 200
    upload = response.json()
    b62 = base62(bytes.fromhex(sha1_hex(data)))
    assert upload["short_url"] == f"upload://{b62}.png"
    assert upload["short_path"] == f"/uploads/short-url/{b62}.png"
    assert (upload["width"], upload["height"]) == (800, 600)
    assert (upload["thumbnail_width"], upload["thumbnail_height"]) == (666, 500)
    served = discourse_api.get(upload["short_path"])
    assert served.status_code == 200 and served.content == data
    assert discourse_api.get(upload["url"]).content == data


@pytest.mark.parametrize(
    ("files", "fields", "status", "errors"),
    [
        (
            {"file": ("notes.exe", b"MZ", "application/octet-stream")},
            {"upload_type": "composer"},
            422,
            [
                "Sorry, the file you are trying to upload is not authorized (authorized "
                "extensions: jpg, jpeg, png, gif, heic, heif, webp)."
            ],
        ),
        ({}, {"upload_type": "composer"}, 422, ["Sorry, you must provide a file to upload."]),
        (
            {"file": ("big.png", b"x" * (4096 * 1024 + 1), "image/png")},
            {"upload_type": "composer"},
            422,
            ["Sorry, the file you are trying to upload is too big (maximum size is 4096KB)."],
        ),
        (
            {"file": ("cat.png", b"x", "image/png")},
            {},
            400,
            ["param is missing or the value is empty: upload_type"],
        ),
    ],
    ids=["extension", "no file", "too big", "no type"],
)
def test_upload_errors(
    discourse_api: DiscourseApi,
    files: dict[str, Any],
    fields: dict[str, str],
    status: int,
    errors: list[str],
) -> None:
    response = discourse_api.post(
        "/uploads.json", data=fields or {"x": "1"}, files=files or {"other": ("a", b"a")}
    )
    assert response.status_code == status
    assert response.json()["errors"] == errors


# --- chat ----------------------------------------------------------------------------------


def test_dm_channels_reuse_one_to_one_and_groups_need_upsert(
    discourse_api: DiscourseApi, control: Any
) -> None:
    control.create_user("bob")
    control.create_user("carol")
    path = "/chat/api/direct-message-channels.json"
    first = discourse_api.post(path, json={"target_usernames": ["bob"]}, user="alice").json()
    again = discourse_api.post(path, json={"target_usernames": ["alice"]}, user="bob").json()
    assert first["channel"]["id"] == again["channel"]["id"]
    assert first["channel"]["chatable_type"] == "DirectMessage"
    group = {"target_usernames": ["bob", "carol"]}
    g1 = discourse_api.post(path, json=group, user="alice").json()["channel"]["id"]
    g2 = discourse_api.post(path, json=group, user="alice").json()["channel"]["id"]
    g3 = discourse_api.post(path, json=group | {"upsert": True}, user="alice").json()
    assert g1 != g2 and g3["channel"]["id"] in (g1, g2)
    assert (
        discourse_api.post(path, json={"target_usernames": ["ghost"]}, user="alice").status_code
        == 404
    )


def test_chat_send_list_paging_and_page_size_limit(
    discourse_api: DiscourseApi, control: Any
) -> None:
    category = control.create_category("Chatty")
    channel = control.create_chat_channel(category["id"], "Chatty channel")
    # Sending needs a membership (CreateMessage `model :membership`): join first.
    joined = discourse_api.post(
        f"/chat/api/channels/{channel['id']}/memberships/me.json", user="alice"
    )
    assert joined.json()["membership"]["following"] is True
    ids = []
    for n in range(12):
        sent = discourse_api.post(
            f"/chat/{channel['id']}.json", json={"message": f"m{n}"}, user="alice"
        )
        assert sent.json()["success"] == "OK"
        ids.append(sent.json()["message_id"])
    path = f"/chat/api/channels/{channel['id']}/messages.json"
    latest = discourse_api.get(path, params={"page_size": 5}, user="alice").json()
    assert [m["id"] for m in latest["messages"]] == ids[-5:]
    assert latest["meta"]["can_load_more_past"] is True
    older = discourse_api.get(
        path,
        params={"page_size": 5, "direction": "past", "target_message_id": ids[-5]},
        user="alice",
    ).json()
    assert [m["id"] for m in older["messages"]] == ids[2:7]
    newer = discourse_api.get(
        path,
        params={"page_size": 50, "direction": "future", "target_message_id": ids[9]},
        user="alice",
    ).json()
    assert [m["id"] for m in newer["messages"]] == ids[10:]
    assert newer["meta"]["can_load_more_future"] is False
    too_big = discourse_api.get(path, params={"page_size": 51}, user="alice")
    assert too_big.status_code == 400
    assert discourse_api.post("/chat/999.json", json={"message": "x"}).status_code == 404


def test_chat_auto_silence_after_the_limit(discourse_api: DiscourseApi, control: Any) -> None:
    control.settings(chat_allowed_messages_for_other_trust_levels=3)
    category = control.create_category("Spam")
    channel = control.create_chat_channel(category["id"], "Spam channel")
    control.add_chat_members(channel["id"], ["alice"])
    path = f"/chat/{channel['id']}.json"
    for n in range(3):
        assert discourse_api.post(path, json={"message": f"spam {n}"}, user="alice").ok
    limited = discourse_api.post(path, json={"message": "one more"}, user="alice")
    assert limited.status_code == 429 and limited.json()["error_type"] == "rate_limit"
    silenced = discourse_api.post(path, json={"message": "still here"}, user="alice")
    assert silenced.status_code == 403
    assert discourse_api.post(path, json={"message": "staff is fine"}).ok


def test_tl0_users_cannot_chat(discourse_api: DiscourseApi, control: Any) -> None:
    control.create_user("newbie", trust_level=0)
    category = control.create_category("Newbies")
    channel = control.create_chat_channel(category["id"], "Newbie channel")
    denied = discourse_api.post(
        f"/chat/{channel['id']}.json", json={"message": "hi"}, user="newbie"
    )
    assert denied.status_code == 403


# --- control API and faults ------------------------------------------------------------------


def test_request_log_counts_by_template(discourse_api: DiscourseApi, control: Any) -> None:
    topic = control.create_post(
        "alice", "Body of a human post", title="Human topic", category_id=1
    )
    discourse_api.get(f"/t/{topic['topic_id']}.json")
    discourse_api.get(f"/t/{topic['topic_id']}.json", user="alice")
    discourse_api.get("/posts.json")
    log = control.requests()
    assert log["counts"] == {"GET /t/{id}.json": 2, "GET /posts.json": 1}
    assert log["requests"][1]["api_username"] == "alice"
    assert log["requests"][0]["status"] == 200
    control.clear_requests()
    assert control.requests() == {"requests": [], "counts": {}}


def test_faults_status_latency_and_dropped_connection(
    discourse_api: DiscourseApi, control: Any
) -> None:
    control.add_fault(count=1, status=503, method="GET", path_regex=r"^/posts")
    assert discourse_api.get("/posts.json").status_code == 503
    assert discourse_api.get("/posts.json").status_code == 200
    control.add_fault(count=1, latency_ms=300, status=None)
    started = time.monotonic()
    assert discourse_api.get("/categories.json").status_code == 200
    assert time.monotonic() - started >= 0.3
    control.add_fault(count=1, drop_connection=True)
    with pytest.raises(requests.ConnectionError):
        discourse_api.get("/posts.json")
    control.add_fault(count=5, status=500)
    control.clear_faults()
    assert discourse_api.get("/posts.json").status_code == 200


def test_reset_restores_the_initial_forum(
    discourse_api: DiscourseApi, control: Any, discourse_emulator: DiscourseEmulator
) -> None:
    control.create_post("alice", "Body", title="Before the reset", category_id=1)
    control.settings(min_post_length=5)
    control.reset()
    state = control.state()
    assert [u["username"] for u in state["users"]] == ["system"]
    assert state["users"][0]["id"] == -1
    assert state["posts"] == [] and state["topics"] == []
    assert control.settings()["min_post_length"] == 20
    assert discourse_api.get("/posts.json").status_code == 200  # the api key survives a reset


def test_state_shows_deleted_posts_with_raw(discourse_api: DiscourseApi, control: Any) -> None:
    post = control.create_post(
        "alice", "Body of a human post", title="Post to delete", category_id=1
    )
    reply = control.create_post("alice", "A reply to delete", topic_id=post["topic_id"])
    control.delete_post(reply["id"])  # as the author: marked, not deleted
    control.delete_post(post["id"], username="system")  # staff: soft-deleted
    posts = {p["id"]: p for p in control.state()["posts"]}
    assert posts[reply["id"]]["user_deleted"] is True and posts[reply["id"]]["deleted_at"] is None
    assert posts[reply["id"]]["raw"] == "(post deleted by author)"
    assert posts[post["id"]]["deleted_at"] is not None


def test_runs_standalone() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.discourse", "--port", "0", "--api-key", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split()[3]
        response = requests.get(
            url + "/posts.json", headers={"Api-Key": "k", "Api-Username": "system"}, timeout=5
        )
        assert response.json() == {"latest_posts": []}
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_read_only_mode_and_html_errors_for_non_json_requests(
    discourse_api: DiscourseApi, control: Any
) -> None:
    control.settings(read_only=True)
    response = discourse_api.post("/posts.json", json={"raw": "x" * 30})
    assert response.status_code == 503
    assert response.json() == {
        "errors": ["The site is in read only mode. Interactions are disabled."],
        "error_type": "read_only",
    }
    control.settings(read_only=False)
    html = discourse_api.post("/posts", data={"raw": "too short"})
    assert html.status_code == 422
    assert html.headers["Content-Type"].startswith("text/html")


def test_thread_replies_are_excluded_from_the_channel_stream(
    discourse_api: DiscourseApi, control: Any
) -> None:
    category = control.create_category("Threads")
    channel = control.create_chat_channel(category["id"], "Threaded", threading_enabled=True)
    root = control.send_chat(channel["id"], "alice", "thread root")["message_id"]
    discourse_api.post(
        f"/chat/{channel['id']}.json",
        json={"message": "in the thread", "in_reply_to_id": root},
        user="alice",
    )
    stream = discourse_api.get(
        f"/chat/api/channels/{channel['id']}/messages.json", user="alice"
    ).json()["messages"]
    assert [m["id"] for m in stream] == [root]
    assert stream[0]["thread_id"] == root


def test_raw_endpoint_serves_plain_text(discourse_api: DiscourseApi, control: Any) -> None:
    post = control.create_post("alice", "Some **markdown** here", title="Raw topic", category_id=1)
    response = discourse_api.get(f"/posts/{post['id']}/raw")
    assert response.text == "Some **markdown** here"
    assert response.headers["Content-Type"].startswith("text/plain")
