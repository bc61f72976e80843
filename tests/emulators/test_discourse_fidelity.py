"""Discourse emulator: behaviours pinned against Discourse's own source (emulators/FIDELITY.md).

Each test is named in the ledger's "test" column; the ledger cites the real file and method.
All calls go through the real `requests` library to the emulator on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from emulators.discourse import DiscourseEmulator
from emulators.discourse_forum import parse_time
from tests.fixtures_discourse import DiscourseApi

BODY = "This body has more than twenty characters."
INVALID_ACCESS = {
    "errors": ["You are not permitted to view the requested resource."],
    "error_type": "invalid_access",
}
INVALID_KEY = {
    "errors": [
        "You are not permitted to view the requested resource. The API username or key is invalid."
    ],
    "error_type": "invalid_access",
}
NOT_FOUND = {
    "errors": ["The requested URL or resource could not be found."],
    "error_type": "not_found",
}
TOPIC_GONE = {
    "action": "create_post",
    "errors": [
        "Something has gone wrong. "
        "Perhaps this topic was closed or deleted while you were looking at it?"
    ],
}
ADMIN_HEADERS = {"Api-Key": "test-api-key", "Api-Username": "system"}
CREDENTIAL_HEADERS = ("Api-Key", "Api-Username", "Authorization", "Cookie")


@pytest.fixture
def forum(discourse_emulator: DiscourseEmulator) -> dict[str, Any]:
    control = discourse_emulator.control
    # Per-user posting limits are not what these tests are about.
    control.settings(
        rate_limit_new_user_create_post=0,
        rate_limit_new_user_create_topic=0,
        rate_limit_create_post=0,
        unique_posts_mins=0,
    )
    control.create_user("alice", trust_level=1)
    control.create_user("bob", trust_level=1)
    category = control.create_category("General talk")
    return {"category": category["id"], "control": control}


def topic(api: DiscourseApi, category: int, title: str, user: str = "system") -> dict[str, Any]:
    response = api.post(
        "/posts.json", json={"title": title, "raw": BODY, "category": category}, user=user
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- 1. /posts.json?before= ----------------------------------------------------------------------


def test_posts_before_is_exclusive_unless_the_old_core_switch_is_on(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    first = topic(discourse_api, forum["category"], "Topic for the before cursor")
    control = forum["control"]
    ids = [first["id"]]
    ids += [
        control.create_post("alice", f"Reply {n}", topic_id=first["topic_id"])["id"]
        for n in range(4)
    ]

    def page(query: str) -> list[int]:
        # Plain requests: the OpenAPI contract check would (rightly) flag `before=abc`.
        response = requests.get(
            f"{discourse_api.url}/posts.json{query}", headers=ADMIN_HEADERS, timeout=10
        )
        assert response.status_code == 200
        return [p["id"] for p in response.json()["latest_posts"]]

    assert page(f"?before={ids[3]}") == [ids[2], ids[1], ids[0]]
    # `params[:before].to_i`: 0, negative and garbage are "no cursor", never a 400.
    for junk in ("0", "-3", "abc", ""):
        assert page(f"?before={junk}") == list(reversed(ids))
    assert page(f"?before={ids[3]}abc") == [ids[2], ids[1], ids[0]]
    control.settings(posts_before_inclusive=True)
    assert page(f"?before={ids[3]}") == [ids[3], ids[2], ids[1], ids[0]]


def test_posts_latest_skips_hidden_posts_and_categories_the_viewer_cannot_see(
    discourse_emulator: DiscourseEmulator, discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    secret = control.create_category("Staff room", restricted_to=["alice"])
    visible = topic(discourse_api, forum["category"], "A public topic for everyone")
    hidden_reply = control.create_post(
        "bob", "A reply that gets hidden", topic_id=visible["topic_id"]
    )
    with discourse_emulator.state.lock:
        discourse_emulator.state.posts[hidden_reply["id"]].hidden = True
    restricted = topic(discourse_api, secret["id"], "A topic in the staff room")

    def ids(user: str) -> list[int]:
        return [
            p["id"] for p in discourse_api.get("/posts.json", user=user).json()["latest_posts"]
        ]

    assert ids("bob") == [visible["id"]]
    assert ids("alice") == [restricted["id"], visible["id"]]
    assert ids("system") == [restricted["id"], visible["id"]]


# --- 2. chat target_message_id -------------------------------------------------------------------


@pytest.fixture
def chat(forum: dict[str, Any]) -> dict[str, Any]:
    control = forum["control"]
    channel = control.create_chat_channel(forum["category"], "General chat")
    control.add_chat_members(channel["id"], ["alice", "bob"])
    ids = [
        control.send_chat(channel["id"], "alice", f"message {n}")["message_id"] for n in range(5)
    ]
    return {"channel": channel["id"], "ids": ids, "control": control}


def test_chat_target_message_must_exist_in_the_channel(
    discourse_api: DiscourseApi, chat: dict[str, Any]
) -> None:
    path = f"/chat/api/channels/{chat['channel']}/messages.json"
    for target in (0, 9999):
        response = discourse_api.get(path, params={"target_message_id": target}, user="bob")
        assert response.status_code == 404
        assert response.json() == NOT_FOUND
    other = chat["control"].create_chat_channel(
        chat["control"].create_category("Elsewhere")["id"], "Elsewhere chat"
    )
    foreign = chat["control"].send_chat(other["id"], "system", "not in this channel")
    response = discourse_api.get(path, params={"target_message_id": foreign["message_id"]})
    assert response.status_code == 404
    ok = discourse_api.get(
        path,
        params={"target_message_id": chat["ids"][2], "direction": "past"},
        user="bob",
    ).json()
    assert [m["id"] for m in ok["messages"]] == chat["ids"][:2]


def test_chat_trashed_target_counts_only_for_its_author_and_staff(
    discourse_api: DiscourseApi, chat: dict[str, Any]
) -> None:
    path = f"/chat/api/channels/{chat['channel']}/messages.json"
    target = chat["ids"][2]
    trash = discourse_api.delete(
        f"/chat/api/channels/{chat['channel']}/messages/{target}.json", user="alice"
    )
    assert trash.status_code == 200
    query = {"target_message_id": target, "direction": "past", "page_size": 10}
    # bob (neither author nor staff): the target is dropped, the list is the latest page.
    bob = discourse_api.get(path, params=query, user="bob").json()
    assert bob["meta"]["target_message_id"] is None
    assert [m["id"] for m in bob["messages"]] == [i for i in chat["ids"] if i != target]
    for reader in ("alice", "system"):
        kept = discourse_api.get(path, params=query, user=reader).json()
        assert kept["meta"]["target_message_id"] == target
        assert [m["id"] for m in kept["messages"]] == chat["ids"][:2]


def test_chat_trashed_messages_are_listed_for_staff_only(
    discourse_api: DiscourseApi, chat: dict[str, Any]
) -> None:
    path = f"/chat/api/channels/{chat['channel']}/messages.json"
    discourse_api.delete(
        f"/chat/api/channels/{chat['channel']}/messages/{chat['ids'][0]}.json", user="alice"
    )
    author = discourse_api.get(path, user="alice").json()["messages"]
    assert chat["ids"][0] not in [m["id"] for m in author]
    staff = discourse_api.get(path, user="system").json()["messages"]
    assert chat["ids"][0] in [m["id"] for m in staff]


# --- 3. editing grace period ---------------------------------------------------------------------


def test_grace_period_edit_keeps_the_version_but_fires_post_edited(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    first = topic(discourse_api, forum["category"], "Topic about ninja edits", user="alice")
    post_id = first["id"]

    def edit(raw: str, user: str = "alice") -> dict[str, Any]:
        response = discourse_api.put(
            f"/posts/{post_id}.json", json={"post": {"raw": raw}}, user=user
        )
        assert response.status_code == 200, response.text
        return dict(response.json()["post"])

    assert edit(BODY + " Small fix.")["version"] == 1  # same editor, small diff, in the window
    control.wait_deliveries_idle()
    assert edit(BODY + " Small fix. " + "x" * 120)["version"] == 2  # > 100 chars for TL1
    control.advance_clock(301)  # past editing_grace_period (300 s) since the last version
    assert edit(BODY + " Later.")["version"] == 3
    assert edit(BODY + " Later, by staff.", user="system")["version"] == 4  # another editor
    assert edit(BODY + " Back to alice.")["version"] == 5  # editor changed again


def test_grace_period_edit_still_enqueues_the_webhook(
    discourse_api: DiscourseApi, forum: dict[str, Any], webhook_receiver: Any
) -> None:
    control = forum["control"]
    control.create_webhook(webhook_receiver.url)
    first = topic(discourse_api, forum["category"], "Topic about quiet edits", user="alice")
    response = discourse_api.put(
        f"/posts/{first['id']}.json", json={"post": {"raw": BODY + " tiny"}}, user="alice"
    )
    assert response.json()["post"]["version"] == 1
    received = webhook_receiver.wait_for(3)  # topic_created, post_created, post_edited
    edited = [r for r in received if r.header("X-Discourse-Event") == "post_edited"]
    assert edited and edited[0].json()["post"]["raw"] == BODY + " tiny"


def test_injected_clock_drives_the_grace_period() -> None:
    now = [1_700_000_000.0]
    emulator = DiscourseEmulator.start(api_key="k", clock=lambda: now[0])
    try:
        control = emulator.control
        control.create_user("carol", trust_level=2)
        post = control.create_post("carol", BODY, title="Clock driven topic", category_id=1)
        headers = {"Api-Key": "k", "Api-Username": "carol"}
        url = f"{emulator.url}/posts/{post['id']}.json"
        body = {"post": {"raw": BODY + " a"}}
        assert (
            requests.put(url, json=body, headers=headers, timeout=10).json()["post"]["version"]
            == 1
        )
        now[0] += 300.5
        body = {"post": {"raw": BODY + " b"}}
        assert (
            requests.put(url, json=body, headers=headers, timeout=10).json()["post"]["version"]
            == 2
        )
    finally:
        emulator.stop()


# --- 4. upload_type ------------------------------------------------------------------------------


def test_upload_with_only_the_legacy_type_param(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    files = {"file": ("cat.gif", b"GIF89a\x01\x00\x01\x00", "image/gif")}
    refused = discourse_api.post("/uploads.json", data={"type": "composer"}, files=files)
    assert refused.status_code == 400
    assert refused.json() == {"errors": ["param is missing or the value is empty: upload_type"]}
    forum["control"].settings(uploads_accept_legacy_type=True)
    accepted = discourse_api.post("/uploads.json", data={"type": "composer"}, files=files)
    assert accepted.status_code == 200
    deprecations = forum["control"].state()["deprecations"]
    assert [(d["since"], d["drop_from"]) for d in deprecations] == [("3.4", "3.5")]
    assert "upload_type" in deprecations[0]["message"]
    modern = discourse_api.post("/uploads.json", data={"upload_type": "composer"}, files=files)
    assert modern.status_code == 200
    assert len(forum["control"].state()["deprecations"]) == 1


# --- 5. external storage -------------------------------------------------------------------------


def test_short_url_redirects_to_another_host_that_records_headers(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    data = b"GIF89a\x02\x00\x02\x00" + b"\x00" * 20
    upload = discourse_api.post(
        "/uploads.json", data={"upload_type": "composer"}, files={"file": ("a.gif", data)}
    ).json()
    control.settings(external_storage_cdn=True)
    redirect = discourse_api.get(upload["short_path"])
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    forum_host = urlsplit(discourse_api.url).netloc
    assert urlsplit(location).netloc != forum_host
    # A careful client fetches the store URL without forum credentials.
    clean = requests.get(location, timeout=10)
    assert clean.status_code == 200 and clean.content == data
    seen = control.cdn_requests()["requests"]
    assert len(seen) == 1
    assert not any(h in seen[0]["headers"] for h in CREDENTIAL_HEADERS)
    # `requests` drops Authorization on a cross-host redirect but NOT custom headers: a client
    # that lets it follow the 302 with Api-Key/Api-Username headers leaks them to the store.
    control.clear_cdn_requests()
    followed = requests.get(
        discourse_api.url + upload["short_path"],
        headers={"Api-Key": "test-api-key", "Api-Username": "system"},
        timeout=10,
    )
    assert followed.content == data
    leaked = control.cdn_requests()["requests"][0]["headers"]
    assert leaked["Api-Key"] == "test-api-key" and leaked["Api-Username"] == "system"


def test_short_url_unknown_sha_and_anonymous_downloads(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    data = b"GIF89a\x03\x00\x03\x00" + b"\x01" * 20
    upload = discourse_api.post(
        "/uploads.json", data={"upload_type": "composer"}, files={"file": ("b.gif", data)}
    ).json()
    for cdn in (False, True):
        control.settings(external_storage_cdn=cdn)
        unknown = discourse_api.get("/uploads/short-url/zzzzzzzzzz.gif")
        assert unknown.status_code == 404
    anonymous = requests.get(discourse_api.url + upload["short_path"], timeout=10)
    assert anonymous.status_code == 200  # show_short is public by default
    control.settings(prevent_anons_from_downloading_files=True, external_storage_cdn=False)
    denied = requests.get(discourse_api.url + upload["short_path"], timeout=10)
    assert denied.status_code == 404
    assert discourse_api.get(upload["short_path"]).content == data


def test_secure_uploads_are_checked_against_the_access_control_post_as_the_acting_user(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    control.settings(secure_uploads=True)
    staff = control.create_category("Staff only", restricted_to=["bob"])["id"]
    data = b"GIF89a\x04\x00\x04\x00" + b"\x02" * 20
    secret = discourse_api.post(
        "/uploads.json", data={"upload_type": "composer"}, files={"file": ("s.gif", data)},
        user="bob",
    ).json()  # fmt: skip
    # Before any post embeds it a composer upload is secure with no access control post: any
    # logged-in user may fetch it, an anonymous caller may not (404).
    assert discourse_api.get(secret["short_path"], user="alice").status_code == 302
    assert requests.get(discourse_api.url + secret["short_path"], timeout=10).status_code == 404
    reply = discourse_api.post(
        "/posts.json",
        json={"title": "A picture for the staff", "category": staff,
              "raw": f"{BODY} ![s]({secret['short_url']})"},
        user="bob",
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    denied = discourse_api.get(
        secret["short_path"], user="alice", headers={"Accept": "application/json"}
    )
    assert denied.status_code == 403 and denied.json()["error_type"] == "invalid_access"
    for allowed in ("bob", "system"):  # a member of the category, an admin
        assert discourse_api.get(secret["short_path"], user=allowed).status_code == 302
    # The first post decides: embedding it later in a public post changes nothing.
    topic(discourse_api, forum["category"], "Public post embedding it", user="alice")
    public = discourse_api.post(
        "/posts.json",
        json={"title": "Another public post here", "category": forum["category"],
              "raw": f"{BODY} ![s]({secret['short_url']})"},
        user="alice",
    )  # fmt: skip
    assert public.status_code == 200, public.text
    assert discourse_api.get(secret["short_path"], user="alice").status_code == 403
    # An upload whose first post is public is not secure: served to anyone, as before.
    plain = discourse_api.post(
        "/uploads.json", data={"upload_type": "composer"},
        files={"file": ("p.gif", data + b"\x03")}, user="alice",
    ).json()  # fmt: skip
    discourse_api.post(
        "/posts.json",
        json={"title": "A public picture post", "category": forum["category"],
              "raw": f"{BODY} ![p]({plain['short_url']})"},
        user="alice",
    )  # fmt: skip
    assert requests.get(discourse_api.url + plain["short_path"], timeout=10).status_code == 200


def test_the_store_stand_in_counts_what_it_sent_and_may_omit_the_length(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    data = b"GIF89a\x05\x00\x05\x00" + b"\x04" * 200_000
    upload = discourse_api.post(
        "/uploads.json", data={"upload_type": "composer"}, files={"file": ("c.gif", data)}
    ).json()
    control.settings(external_storage_cdn=True, external_storage_chunked=True)
    location = discourse_api.get(upload["short_path"]).headers["Location"]
    served = requests.get(location, timeout=10)
    assert served.content == data and "Content-Length" not in served.headers
    (seen,) = control.cdn_requests()["requests"]
    assert seen["bytes_sent"] == len(data)


# --- 6. suspended, deactivated, silenced ---------------------------------------------------------


def test_impersonating_suspended_or_deactivated_users_is_the_generic_403(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    user = control.suspend_user("alice", reason="Spamming the forum")
    assert user["suspended_till"] is not None
    response = discourse_api.get("/posts.json", user="alice")
    assert response.status_code == 403 and response.json() == INVALID_ACCESS
    assert discourse_api.get("/posts.json", user="nobody").json() == INVALID_KEY
    control.unsuspend_user("alice")
    assert discourse_api.get("/posts.json", user="alice").status_code == 200
    control.deactivate_user("bob")
    response = discourse_api.get("/posts.json", user="bob")
    assert response.status_code == 403 and response.json() == INVALID_ACCESS
    control.activate_user("bob")
    assert discourse_api.get("/posts.json", user="bob").status_code == 200


def test_a_suspension_ends_at_suspended_till(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    now = control.clock()["now"]
    control.suspend_user("alice", until=parse_time(now) + 60)
    assert discourse_api.get("/posts.json", user="alice").status_code == 403
    suspended = discourse_api.get("/admin/users/list/suspended.json").json()
    assert [u["username"] for u in suspended] == ["alice"]
    control.advance_clock(61)
    assert discourse_api.get("/posts.json", user="alice").status_code == 200
    # Plain requests: the published spec wrongly demands a non-empty list.
    empty = requests.get(
        f"{discourse_api.url}/admin/users/list/suspended.json", headers=ADMIN_HEADERS, timeout=10
    )
    assert empty.json() == []


def test_silenced_users_authenticate_but_cannot_post(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    public = topic(discourse_api, forum["category"], "A topic alice may not answer")
    pm = discourse_api.post(
        "/posts.json",
        json={
            "title": "Private words",
            "raw": "A private message body here.",
            "archetype": "private_message",
            "target_recipients": "alice",
        },
    ).json()
    control.silence_user("alice", reason="Cooling off")
    assert discourse_api.get("/posts.json", user="alice").status_code == 200
    for extra in ({}, {"skip_validations": True}):
        reply = discourse_api.post(
            "/posts.json",
            json={"topic_id": public["topic_id"], "raw": BODY, **extra},
            user="alice",
        )
        assert reply.status_code == 422 and reply.json() == TOPIC_GONE
    new = discourse_api.post(
        "/posts.json",
        json={"title": "A brand new topic by alice", "raw": BODY, "category": forum["category"]},
        user="alice",
    )
    assert new.status_code == 403 and new.json() == INVALID_ACCESS
    # TopicCreator skips ensure_can_create! under skip_validations (source-confirmed).
    skipped = discourse_api.post(
        "/posts.json",
        json={
            "title": "Another topic by alice",
            "raw": BODY,
            "category": forum["category"],
            "skip_validations": True,
        },
        user="alice",
    )
    assert skipped.status_code == 200
    # A PM the silenced user takes part in stays open to her.
    in_pm = discourse_api.post(
        "/posts.json",
        json={"topic_id": pm["topic_id"], "raw": "Answering in private."},
        user="alice",
    )
    assert in_pm.status_code == 200
    control.unsilence_user("alice")
    reply = discourse_api.post(
        "/posts.json", json={"topic_id": public["topic_id"], "raw": BODY + "!"}, user="alice"
    )
    assert reply.status_code == 200


def test_silenced_users_cannot_chat(discourse_api: DiscourseApi, chat: dict[str, Any]) -> None:
    chat["control"].silence_user("bob")
    response = discourse_api.post(
        f"/chat/{chat['channel']}.json", json={"message": "hi"}, user="bob"
    )
    assert response.status_code == 403 and response.json() == INVALID_ACCESS


# --- 7. guardian under skip_validations ----------------------------------------------------------


def test_skip_validations_does_not_skip_the_reply_guardian(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    secret = control.create_category("Inner circle", restricted_to=["alice"])
    inside = topic(discourse_api, secret["id"], "A topic in the inner circle")
    for extra in ({}, {"skip_validations": True}):
        reply = discourse_api.post(
            "/posts.json", json={"topic_id": inside["topic_id"], "raw": BODY, **extra}, user="bob"
        )
        assert reply.status_code == 422 and reply.json() == TOPIC_GONE
    assert discourse_api.get(f"/t/{inside['topic_id']}.json", user="bob").status_code == 404
    ok = discourse_api.post(
        "/posts.json", json={"topic_id": inside["topic_id"], "raw": BODY}, user="alice"
    )
    assert ok.status_code == 200
    new = discourse_api.post(
        "/posts.json",
        json={"title": "Bob tries the inner circle", "raw": BODY, "category": secret["id"]},
        user="bob",
    )
    assert new.status_code == 403 and new.json() == INVALID_ACCESS
    skipped = discourse_api.post(
        "/posts.json",
        json={
            "title": "Bob skips into the inner circle",
            "raw": BODY,
            "category": secret["id"],
            "skip_validations": True,
        },
        user="bob",
    )
    assert skipped.status_code == 200


# --- 8. chat limits and membership ---------------------------------------------------------------


def test_chat_edit_is_held_to_the_maximum_length(
    discourse_api: DiscourseApi, chat: dict[str, Any]
) -> None:
    chat["control"].settings(chat_maximum_message_length=10)
    too_long = {
        "errors": ["Message is too long, must have a maximum of 10 characters."],
    }
    sent = discourse_api.post(
        f"/chat/{chat['channel']}.json", json={"message": "x" * 11}, user="alice"
    )
    assert sent.status_code == 422 and sent.json() == too_long
    edit = discourse_api.put(
        f"/chat/api/channels/{chat['channel']}/messages/{chat['ids'][0]}.json",
        json={"message": "y" * 11},
        user="alice",
    )
    assert edit.status_code == 422 and edit.json() == too_long


def test_chat_send_needs_a_membership_except_for_bots(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    channel = control.create_chat_channel(control.create_category("Quiet")["id"], "Quiet chat")
    path = f"/chat/{channel['id']}.json"
    outsider = discourse_api.post(path, json={"message": "hello"}, user="alice")
    assert outsider.status_code == 404 and outsider.json() == NOT_FOUND
    joined = discourse_api.post(
        f"/chat/api/channels/{channel['id']}/memberships/me.json", user="alice"
    )
    assert joined.status_code == 200
    assert discourse_api.post(path, json={"message": "hello"}, user="alice").status_code == 200
    assert discourse_api.post(path, json={"message": "hi"}, user="system").status_code == 200


# --- 23, 24. users by Google login (UserAssociatedAccount) ---------------------------------------

GOOGLE_ID = "108364523398145987654"


def test_lookup_by_google_login_is_for_admins_and_enabled_google_logins_only(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    control.create_user("mod", moderator=True)
    control.create_user("ssouser", external_id="ext-7")
    control.add_associated_account("alice", provider="google_oauth2", uid=GOOGLE_ID)

    def get(path: str, user: str | None = "system") -> requests.Response:
        # Plain requests for the refusals; the admin's answer goes through the contract check.
        headers = {"Api-Key": "test-api-key", "Api-Username": user} if user else {}
        return requests.get(discourse_api.url + path, headers=headers, timeout=10)

    path = f"/u/by-external/google_oauth2/{GOOGLE_ID}.json"
    # Google logins off (the default): no enabled managed authenticator of that name.
    response = get(path)
    assert response.status_code == 404 and response.json() == NOT_FOUND
    control.settings(enable_google_oauth2_logins=True)
    found = discourse_api.get(path)
    assert found.status_code == 200
    # users#show for an admin viewer: the shape of /u/{username}.json.
    assert found.json() == discourse_api.get("/u/alice.json").json()
    assert found.json()["user"]["username"] == "alice"
    unknown = get("/u/by-external/google_oauth2/1.json")
    assert unknown.status_code == 404 and unknown.json() == NOT_FOUND
    other_provider = get(f"/u/by-external/github/{GOOGLE_ID}.json")
    assert other_provider.status_code == 404 and other_provider.json() == NOT_FOUND
    # Admins only, checked before anything else: moderators, users and anonymous callers get
    # the generic 403 (not `not_logged_in`) for known and unknown ids alike.
    for user in ("mod", "bob", None):
        for asked in (path, "/u/by-external/google_oauth2/1.json"):
            refused = get(asked, user=user)
            assert refused.status_code == 403 and refused.json() == INVALID_ACCESS, (user, asked)
    # The external-id branch does not filter inactive users.
    control.deactivate_user("alice")
    inactive = get(path)
    assert inactive.status_code == 200 and inactive.json()["user"]["active"] is False
    # The SSO form, one segment, is another lookup (SingleSignOnRecord) and still answers.
    sso = discourse_api.get("/u/by-external/ext-7.json")
    assert sso.status_code == 200 and sso.json()["user"]["username"] == "ssouser"
    assert discourse_api.get(f"/u/by-external/{GOOGLE_ID}.json").status_code == 404


def test_associated_accounts_are_unique_per_provider_uid_and_per_user(
    forum: dict[str, Any],
) -> None:
    control = forum["control"]
    control.add_associated_account("alice", uid="111")
    with pytest.raises(requests.HTTPError, match="already associated"):
        control.add_associated_account("bob", uid="111")
    with pytest.raises(requests.HTTPError, match="already has a google_oauth2 account"):
        control.add_associated_account("alice", uid="222")
    control.add_associated_account("bob", uid="222")
    control.add_associated_account("alice", provider="github", uid="111")
    ids = {u["username"]: u["id"] for u in control.state()["users"]}
    accounts = {
        (a["provider_name"], a["provider_uid"]): a["user_id"]
        for a in control.state()["associated_accounts"]
    }
    assert accounts == {
        ("google_oauth2", "111"): ids["alice"],
        ("google_oauth2", "222"): ids["bob"],
        ("github", "111"): ids["alice"],
    }
