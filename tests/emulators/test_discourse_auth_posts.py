"""Discourse emulator: auth, formats, posts/topics, validations, memoization, reads, deletes.

Every exchange through `discourse_api` is also checked against shared/specs/openapi.json.
"""

from __future__ import annotations

from typing import Any

import pytest

from emulators.discourse import DiscourseEmulator
from tests.fixtures_discourse import DiscourseApi

BODY = "This body has more than twenty characters."
INVALID_KEY = {
    "errors": [
        "You are not permitted to view the requested resource. The API username or key is invalid."
    ],
    "error_type": "invalid_access",
}
INVALID_ACCESS = {
    "errors": ["You are not permitted to view the requested resource."],
    "error_type": "invalid_access",
}


def new_topic(api: DiscourseApi, category: int, title: str, user: str = "system", **extra: Any):
    return api.post(
        "/posts.json", json={"title": title, "raw": BODY, "category": category, **extra}, user=user
    )


@pytest.fixture
def forum(discourse_emulator: DiscourseEmulator) -> dict[str, Any]:
    control = discourse_emulator.control
    control.create_user("alice", email="alice@example.com", trust_level=1)
    control.create_user("bob", trust_level=1)
    control.create_user("mod", moderator=True)
    category = control.create_category("General talk")
    return {"category": category["id"], "control": control}


# --- auth --------------------------------------------------------------------------------------


def test_bad_revoked_and_user_less_keys_get_the_invalid_credentials_403(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    assert discourse_api.get("/posts.json", key="nope").json() == INVALID_KEY
    assert discourse_api.get("/posts.json", key="nope").status_code == 403
    control.create_api_key(key="revoked-key")
    assert discourse_api.get("/posts.json", key="revoked-key").status_code == 200
    control.revoke_api_key("revoked-key")
    assert discourse_api.get("/posts.json", key="revoked-key").json() == INVALID_KEY
    # all-users key without any user header, and an unknown username
    assert discourse_api.get("/posts.json", user=None).json() == INVALID_KEY
    assert discourse_api.get("/posts.json", user="ghost").json() == INVALID_KEY


def test_single_user_key_cannot_impersonate(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    forum["control"].create_api_key(key="alice-key", username="alice")
    ok = discourse_api.get("/posts.json", key="alice-key", user=None)
    assert ok.status_code == 200 and ok.headers["X-Discourse-Username"] == "alice"
    assert discourse_api.get("/posts.json", key="alice-key", user="ALICE").status_code == 200
    assert discourse_api.get("/posts.json", key="alice-key", user="bob").json() == INVALID_KEY


def test_username_is_case_insensitive_and_other_user_headers_work(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    response = discourse_api.get("/posts.json", user="AlIcE")
    assert response.headers["X-Discourse-Username"] == "alice"
    assert response.headers["X-Discourse-Route"] == "posts/latest"
    alice_id = discourse_api.emulator.control.state()["users"]
    alice_id = next(u["id"] for u in alice_id if u["username"] == "alice")
    by_id = discourse_api.get("/posts.json", user=None, headers={"Api-User-Id": str(alice_id)})
    assert by_id.headers["X-Discourse-Username"] == "alice"
    forum["control"].update_user("bob", external_id="sso-bob")
    by_ext = discourse_api.get(
        "/posts.json", user=None, headers={"Api-User-External-Id": "sso-bob"}
    )
    assert by_ext.headers["X-Discourse-Username"] == "bob"


def test_suspended_and_inactive_users_get_the_generic_403(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    control.create_user("sus", suspended=True)
    control.create_user("idle", active=False)
    for name in ("sus", "idle"):
        response = discourse_api.get("/posts.json", user=name)
        assert response.status_code == 403
        assert response.json() == INVALID_ACCESS


def test_no_credentials_on_a_login_route_is_not_logged_in(discourse_api: DiscourseApi) -> None:
    response = discourse_api.post("/posts.json", key=None, user=None, json={"raw": BODY})
    assert response.status_code == 403
    assert response.json() == {
        "errors": ["You need to be logged in to do that."],
        "error_type": "not_logged_in",
    }


def test_get_without_json_suffix_is_an_html_page_and_accept_json_works(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    html = discourse_api.get("/posts")
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    as_json = discourse_api.get("/posts", headers={"Accept": "application/json"})
    assert as_json.json() == {"latest_posts": []}


def test_form_encoded_bodies_are_accepted(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    response = discourse_api.post(
        "/posts.json",
        data={"title": "A form encoded topic title", "raw": BODY, "category": forum["category"]},
    )
    assert response.status_code == 200
    post_id = response.json()["id"]
    edit = discourse_api.put(f"/posts/{post_id}.json", data={"post[raw]": BODY + " Edited."})
    assert edit.json()["post"]["raw"] == BODY + " Edited."


# --- create --------------------------------------------------------------------------------


def test_create_topic_then_reply_with_reply_to_post_number(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    topic = new_topic(discourse_api, forum["category"], "weekly sync notes for march...")
    assert topic.status_code == 200
    first = topic.json()
    assert first["post_number"] == 1 and first["raw"] == BODY
    reply = discourse_api.post(
        "/posts.json",
        json={"topic_id": first["topic_id"], "raw": BODY + " reply", "reply_to_post_number": 1},
        user="alice",
    ).json()
    assert reply["post_number"] == 2 and reply["reply_to_post_number"] == 1
    assert reply["username"] == "alice"
    view = discourse_api.get(f"/t/{first['topic_id']}.json").json()
    # TextCleaner rewrote the title: first letter capitalized, trailing dots removed
    assert view["title"] == "Weekly sync notes for march"
    assert view["post_stream"]["stream"] == [first["id"], reply["id"]]


def test_nested_post_created_at_and_external_id(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    response = new_topic(
        discourse_api,
        forum["category"],
        "Backdated topic from the bridge",
        created_at="2024-03-01T10:00:00Z",
        external_id="gchat-spaces-AAA-thread-42",
        nested_post="true",
    ).json()
    assert response["action"] == "create_post" and response["success"] is True
    assert response["post"]["created_at"] == "2024-03-01T10:00:00.000Z"
    topic_id = response["post"]["topic_id"]
    redirect = discourse_api.get("/t/external_id/gchat-spaces-AAA-thread-42.json")
    assert redirect.status_code == 301
    assert redirect.headers["Location"].endswith(f"/{topic_id}.json")
    topic = discourse_api.get(redirect.headers["Location"]).json()
    assert topic["external_id"] == "gchat-spaces-AAA-thread-42"
    assert topic["last_posted_at"] == "2024-03-01T10:00:00.000Z"
    assert discourse_api.get("/t/external_id/unknown-id.json").status_code == 404


@pytest.mark.parametrize(
    ("external_id", "message"),
    [
        ("spaces/AAA/threads/BBB", "External is invalid"),
        ("x" * 51, "External is too long (maximum is 50 characters)"),
        ("GCHAT-DUP", "External has already been taken"),
    ],
)
def test_external_id_rules(
    discourse_api: DiscourseApi, forum: dict[str, Any], external_id: str, message: str
) -> None:
    new_topic(
        discourse_api, forum["category"], "The first external topic", external_id="gchat-dup"
    )
    response = new_topic(
        discourse_api, forum["category"], "Another external topic", external_id=external_id
    )
    assert response.status_code == 422
    assert message in response.json()["errors"]


def test_unknown_or_non_numeric_category_is_400(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    for category in (999, "general"):
        response = new_topic(discourse_api, category, "A topic in a bad category")  # type: ignore[arg-type]
        assert response.status_code == 400
        assert response.json() == {
            "errors": ["You supplied invalid parameters to the request: category"],
            "error_type": "invalid_parameters",
        }


def test_missing_raw_is_parameter_missing(discourse_api: DiscourseApi) -> None:
    response = discourse_api.post("/posts.json", json={"title": "No raw in this request"})
    assert response.status_code == 400
    assert response.json() == {"errors": ["param is missing or the value is empty: raw"]}


VALIDATION_CASES = [
    ("short body", "system", {"raw": "ok"}, "Body is too short (minimum is 20 characters)"),
    (
        "body too long",
        "system",
        {"raw": "word " * 6500},
        "Body is limited to 32000 characters; you entered 32499.",
    ),
    (
        "low entropy body",
        "system",
        {"raw": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
        "Body seems unclear, is it a complete sentence?",
    ),
    (
        "comments do not count",
        "system",
        {"raw": "short <!-- a long hidden html comment -->"},
        "Body is too short (minimum is 20 characters)",
    ),
    (
        "short title",
        "alice",
        {"title": "Too short"},
        "Title is too short (minimum is 15 characters)",
    ),
    (
        "long title",
        "system",
        {"title": "Long title " * 30},
        "Title is too long (maximum is 255 characters)",
    ),
    (
        "low entropy title",
        "system",
        {"title": "aaaa bbbb aaaa bbbb aaaa"},
        "Title seems unclear, most of the words contain the same letters over and over?",
    ),
    (
        "long word title",
        "system",
        {"title": "A title with " + "x" * 31 + " in it"},
        "Title seems unclear, one or more words is very long?",
    ),
    (
        "duplicate title",
        "system",
        {"title": "An existing topic title"},
        "Title has already been used",
    ),
    (
        "emoji title",
        "system",
        {"title": "Party time :tada: :smile: today"},
        "Title can't have more than 1 emoji",
    ),
    ("no category", "system", {"category": None}, "Category can't be blank"),
]


@pytest.mark.parametrize(
    ("user", "fields", "message"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
def test_validation_messages(
    discourse_api: DiscourseApi,
    forum: dict[str, Any],
    user: str,
    fields: dict[str, Any],
    message: str,
) -> None:
    forum["control"].create_post(
        "bob", BODY, title="An existing topic title", category_id=forum["category"]
    )
    body = {"title": "A perfectly fine new title", "raw": BODY, "category": forum["category"]}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not None}
    response = discourse_api.post("/posts.json", json=body, user=user)
    assert response.status_code == 422
    assert response.json()["action"] == "create_post"
    assert message in response.json()["errors"]
    # the same request with skip_validations goes through
    body["skip_validations"] = "true"
    body["raw"] = body["raw"] + " (skipped)"
    assert discourse_api.post("/posts.json", json=body, user=user).status_code == 200


def test_both_title_and_body_errors_in_one_body(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    response = discourse_api.post(
        "/posts.json",
        json={"title": "Short though ok", "raw": "tiny", "category": forum["category"]},
        user="alice",
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        "Title seems unclear, most of the words contain the same letters over and over?",
        "Body is too short (minimum is 20 characters)",
        "Body seems unclear, is it a complete sentence?",
    ]
    response = discourse_api.post(
        "/posts.json", json={"title": "tiny", "raw": "tiny", "category": forum["category"]}
    )
    errors = response.json()["errors"]
    assert errors.index("Body is too short (minimum is 20 characters)") > 0
    assert len(errors) == len(set(errors))


def test_admin_is_exempt_from_min_title_length(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    assert new_topic(discourse_api, forum["category"], "Hi, quick note").status_code == 200
    short_for_alice = new_topic(discourse_api, forum["category"], "Hi, quick memo", user="alice")
    assert short_for_alice.status_code == 422


def test_too_similar_within_unique_posts_window_same_user_any_topic(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    a = new_topic(discourse_api, forum["category"], "First topic for similar", user="alice")
    forum["control"].settings(
        rate_limit_new_user_create_post=0, rate_limit_new_user_create_topic=0
    )
    b = new_topic(discourse_api, forum["category"], "Second topic for similar", user="bob")
    reply = {"topic_id": a.json()["topic_id"], "raw": "A reply that alice sends twice."}
    assert discourse_api.post("/posts.json", json=reply, user="alice").status_code == 200
    again = dict(reply, topic_id=b.json()["topic_id"])
    response = discourse_api.post("/posts.json", json=again, user="alice")
    assert response.status_code == 422
    assert response.json()["errors"] == ["Body is too similar to what you recently posted"]
    # staff are exempt
    for topic in (a, b):
        staff = {"topic_id": topic.json()["topic_id"], "raw": "System says the same thing."}
        assert discourse_api.post("/posts.json", json=staff, user="mod").status_code == 200


def test_consecutive_replies_limit(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    forum["control"].settings(rate_limit_new_user_create_post=0)
    topic_id = new_topic(discourse_api, forum["category"], "Consecutive replies topic").json()[
        "topic_id"
    ]
    for n in range(3):
        reply = {"topic_id": topic_id, "raw": f"Reply number {n} from alice here."}
        assert discourse_api.post("/posts.json", json=reply, user="alice").status_code == 200
    response = discourse_api.post(
        "/posts.json", json={"topic_id": topic_id, "raw": "Fourth reply in a row."}, user="alice"
    )
    assert response.json()["errors"] == [
        "No more than 3 consecutive replies are allowed. Please edit your previous reply, "
        "or wait for someone to reply to you."
    ]


def test_tl0_limits(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    forum["control"].create_user("newbie", trust_level=0)
    topic_id = new_topic(discourse_api, forum["category"], "Topic for new users").json()[
        "topic_id"
    ]
    cases = [
        ("see http://a.example http://b.example http://c.example", "links in a post."),
        ("[doc.pdf|attachment](upload://abc.pdf) attached here", "can't put attachments"),
        ("![a](upload://a.png) ![b](upload://b.png) two images", "one embedded media"),
    ]
    for raw, fragment in cases:
        response = discourse_api.post(
            "/posts.json", json={"topic_id": topic_id, "raw": raw}, user="newbie"
        )
        assert response.status_code == 422
        assert any(fragment in e for e in response.json()["errors"]), response.json()


def test_memoization_returns_the_same_post_within_120s(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    body = {"title": "Memoized topic title here", "raw": BODY, "category": forum["category"]}
    first = discourse_api.post("/posts.json", json=body)
    second = discourse_api.post("/posts.json", json=body)
    assert first.json()["id"] == second.json()["id"]
    # 422s are memoized too: the same bad request returns the same body
    bad = {"topic_id": first.json()["topic_id"], "raw": "ok"}
    assert (
        discourse_api.post("/posts.json", json=bad).json()
        == discourse_api.post("/posts.json", json=bad).json()
    )
    state = discourse_api.emulator.control.state()
    assert len([p for p in state["posts"] if p["topic_id"] == first.json()["topic_id"]]) == 1


def test_approval_queue_for_non_staff(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    control = forum["control"]
    control.settings(approve_post_count=1)
    response = new_topic(
        discourse_api, forum["category"], "Please approve my topic", user="alice"
    ).json()
    assert response["action"] == "enqueued" and response["success"] is True
    assert response["pending_count"] == 1 and "id" not in response
    assert response["pending_post"]["raw"] == BODY
    assert new_topic(discourse_api, forum["category"], "Staff are never queued").json()["id"]
    approved = control.approve_pending_post(response["pending_post"]["id"])
    assert approved["username"] == "alice"


def test_whispers_need_staff(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    topic_id = new_topic(discourse_api, forum["category"], "Topic with a whisper").json()[
        "topic_id"
    ]
    whisper = {"topic_id": topic_id, "raw": "Only staff can see this one.", "whisper": "true"}
    staff = discourse_api.post("/posts.json", json=whisper, user="mod").json()
    assert staff["post_type"] == 4
    denied = discourse_api.post("/posts.json", json=whisper, user="alice")
    assert denied.status_code == 403
    assert denied.json()["errors"] == [
        "Either whispers are not enabled or you do not have access to create whisper posts"
    ]
    assert discourse_api.get(f"/posts/{staff['id']}.json", user="alice").status_code == 404
    latest = discourse_api.get("/posts.json").json()["latest_posts"]
    assert staff["id"] not in [p["id"] for p in latest]


def test_closed_topic_refuses_non_staff_even_with_skip_validations(
    discourse_api: DiscourseApi, forum: dict[str, Any], discourse_emulator: DiscourseEmulator
) -> None:
    topic_id = new_topic(discourse_api, forum["category"], "Topic that gets closed").json()[
        "topic_id"
    ]
    with discourse_emulator.state.lock:
        discourse_emulator.state.topics[topic_id].closed = True
    body = {"topic_id": topic_id, "raw": BODY, "skip_validations": "true"}
    response = discourse_api.post("/posts.json", json=body, user="alice")
    assert response.status_code == 422
    assert response.json()["errors"] == [
        "Something has gone wrong. Perhaps this topic was closed or deleted while you were "
        "looking at it?"
    ]


# --- edit, delete, recover ---------------------------------------------------------------------


def test_edit_rules(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    post = new_topic(discourse_api, forum["category"], "Topic to be edited", user="alice").json()
    path = f"/posts/{post['id']}.json"
    missing = discourse_api.put(path, json={"raw": "x"})
    assert missing.status_code == 400
    assert missing.json() == {"errors": ["param is missing or the value is empty: post"]}
    conflict = discourse_api.put(path, json={"post": {"raw": BODY + "!", "original_text": "x"}})
    assert conflict.status_code == 409
    assert conflict.json() == {
        "errors": ["That post was edited by another user and your changes can no longer be saved."]
    }
    short = discourse_api.put(path, json={"post": {"raw": "Too short!"}})
    assert short.status_code == 422
    assert short.json() == {"errors": ["Body is too short (minimum is 20 characters)"]}
    assert discourse_api.put(path, json={"post": {"raw": BODY}}, user="bob").status_code == 403
    ok = discourse_api.put(path, json={"post": {"raw": BODY + " v2", "edit_reason": "typo"}})
    assert ok.status_code == 200
    assert ok.json()["post"]["version"] == 2 and ok.json()["post"]["raw"] == BODY + " v2"


def test_edit_window_for_non_staff(
    discourse_api: DiscourseApi, forum: dict[str, Any], discourse_emulator: DiscourseEmulator
) -> None:
    post = new_topic(discourse_api, forum["category"], "Topic edited too late", user="alice")
    with discourse_emulator.state.lock:
        discourse_emulator.state.posts[post.json()["id"]].created_at -= 1441 * 60
    response = discourse_api.put(
        f"/posts/{post.json()['id']}.json", json={"post": {"raw": BODY + " late"}}, user="alice"
    )
    assert response.status_code == 422
    assert response.json() == {
        "errors": ["That post was created too long ago. It can no longer be edited or deleted."]
    }


def test_author_delete_marks_and_staff_delete_soft_deletes(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    topic = new_topic(discourse_api, forum["category"], "Deletion semantics topic").json()
    reply = discourse_api.post(
        "/posts.json", json={"topic_id": topic["topic_id"], "raw": BODY + " mine"}, user="alice"
    ).json()
    deleted = discourse_api.delete(f"/posts/{reply['id']}.json", user="alice")
    assert deleted.status_code == 200 and deleted.content == b""
    marked = discourse_api.get(f"/posts/{reply['id']}.json", user="alice").json()
    assert marked["user_deleted"] is True and marked["deleted_at"] is None
    assert marked["raw"] == "(post deleted by author)"
    recovered = discourse_api.put(f"/posts/{reply['id']}/recover.json", user="alice").json()
    assert recovered["raw"] == BODY + " mine" and recovered["user_deleted"] is False
    discourse_api.delete(f"/posts/{reply['id']}.json", user="mod")
    assert discourse_api.get(f"/posts/{reply['id']}.json", user="alice").status_code == 404
    assert discourse_api.get(f"/posts/{reply['id']}.json", user="mod").json()["deleted_at"]
    # deleting post 1 as staff deletes the topic; non-staff cannot delete topics
    assert discourse_api.delete(f"/t/{topic['topic_id']}.json", user="alice").status_code == 422
    assert discourse_api.delete(f"/t/{topic['topic_id']}.json").status_code == 200
    assert discourse_api.get(f"/t/{topic['topic_id']}.json", user="alice").status_code == 404
    assert discourse_api.put(f"/t/{topic['topic_id']}/recover.json").status_code == 200
    assert discourse_api.get(f"/t/{topic['topic_id']}.json", user="alice").status_code == 200


def test_update_topic_title_and_category(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    other = forum["control"].create_category("Other place")
    topic_id = new_topic(discourse_api, forum["category"], "Original topic title").json()[
        "topic_id"
    ]
    response = discourse_api.put(
        f"/t/-/{topic_id}.json", json={"title": "Renamed topic title", "category_id": other["id"]}
    )
    assert response.json()["basic_topic"]["title"] == "Renamed topic title"
    assert discourse_api.get(f"/t/{topic_id}.json").json()["category_id"] == other["id"]


# --- reads -------------------------------------------------------------------------------


def test_topic_pages_slug_redirect_and_specific_posts(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    first = new_topic(discourse_api, forum["category"], "Topic with many posts").json()
    topic_id = first["topic_id"]
    control = forum["control"]
    ids = [first["id"]]
    for n in range(21):
        ids.append(control.create_post("alice", f"Reply {n}", topic_id=topic_id)["id"])
    page1 = discourse_api.get(f"/t/{topic_id}.json").json()
    assert len(page1["post_stream"]["posts"]) == 20 and page1["post_stream"]["stream"] == ids
    page2 = discourse_api.get(f"/t/{topic_id}.json?page=2").json()
    assert [p["id"] for p in page2["post_stream"]["posts"]] == ids[20:]
    assert discourse_api.get(f"/t/{topic_id}.json?page=3").status_code == 404
    wrong = discourse_api.get(f"/t/wrong-slug/{topic_id}.json")
    assert wrong.status_code == 301
    assert wrong.headers["Location"] == f"/t/topic-with-many-posts/{topic_id}.json"
    some = discourse_api.get(
        f"/t/{topic_id}/posts.json", params={"post_ids[]": [ids[3], ids[5]]}
    ).json()
    assert [p["id"] for p in some["post_stream"]["posts"]] == [ids[3], ids[5]]
    assert "stream" not in some["post_stream"] and some["id"] == topic_id
    by_number = discourse_api.get(f"/posts/by_number/{topic_id}/1.json").json()
    assert by_number["id"] == first["id"] and by_number["raw"] == BODY


def test_latest_posts_before_is_exclusive_and_capped_at_50(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    # LatestPostsQuery (newest core): `id < before`; `posts_before_inclusive` emulates old cores.
    first = new_topic(discourse_api, forum["category"], "Topic for latest posts").json()
    control = forum["control"]
    ids = [first["id"]]
    for n in range(55):
        ids.append(control.create_post("alice", f"Reply {n}", topic_id=first["topic_id"])["id"])
    control.create_post("mod", "A small action", topic_id=first["topic_id"], post_type=3)
    latest = discourse_api.get("/posts.json").json()["latest_posts"]
    assert len(latest) == 50 and latest[0]["id"] == ids[-1]
    assert latest[0]["topic_title"] == "Topic for latest posts" and "raw" in latest[0]
    before = discourse_api.get(f"/posts.json?before={ids[10]}").json()["latest_posts"]
    assert [p["id"] for p in before] == list(reversed(ids[:10]))
    control.settings(posts_before_inclusive=True)
    old = discourse_api.get(f"/posts.json?before={ids[10]}").json()["latest_posts"]
    assert [p["id"] for p in old] == list(reversed(ids[:11]))


def test_category_topic_list_pages_of_30(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    for n in range(31):
        control.create_post(
            "alice", "Body", title=f"Topic number {n}", category_id=forum["category"]
        )
    page0 = discourse_api.get(f"/c/general-talk/{forum['category']}.json").json()["topic_list"]
    assert len(page0["topics"]) == 30
    assert page0["more_topics_url"] == f"/c/general-talk/{forum['category']}/l/latest?page=1"
    page1 = discourse_api.get(f"/c/general-talk/{forum['category']}.json?page=1").json()
    assert len(page1["topic_list"]["topics"]) == 1
    assert "more_topics_url" not in page1["topic_list"]


def test_private_messages_are_hidden_from_others(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    pm = discourse_api.post(
        "/posts.json",
        json={
            "title": "Private chat",
            "raw": "A private message body here.",
            "archetype": "private_message",
            "target_recipients": "bob",
        },
        user="alice",
    ).json()
    assert discourse_api.get(f"/t/{pm['topic_id']}.json", user="bob").status_code == 200
    assert discourse_api.get(f"/t/{pm['topic_id']}.json", user="mod").status_code == 200
    forum["control"].create_user("carol")
    assert discourse_api.get(f"/t/{pm['topic_id']}.json", user="carol").status_code == 404
    assert discourse_api.get("/posts.json").json()["latest_posts"] == []
