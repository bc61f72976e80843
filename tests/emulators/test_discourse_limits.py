"""Discourse emulator: the site-wide admin-API limiter, per-user limits, the per-IP text 429."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from emulators.discourse import DiscourseEmulator
from emulators.discourse_model import time_left
from tests.fixtures_discourse import DiscourseApi

BODY = "This body has more than twenty characters."


@pytest.fixture
def forum(discourse_emulator: DiscourseEmulator) -> dict[str, Any]:
    control = discourse_emulator.control
    control.create_user("alice", trust_level=1)
    control.create_user("veteran", trust_level=2)
    control.create_user("mod", moderator=True)
    category = control.create_category("Limits")
    return {"control": control, "category": category["id"]}


def test_admin_api_limit_is_site_wide_across_keys_with_the_exact_429(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    control = forum["control"]
    control.settings(max_admin_api_reqs_per_minute=5)
    control.create_api_key(key="second-key")
    for n in range(5):
        key = "test-api-key" if n % 2 else "second-key"
        assert discourse_api.get("/posts.json", key=key).status_code == 200
    limited = discourse_api.get("/posts.json", key="second-key", user="alice")
    assert limited.status_code == 429
    assert limited.headers["Discourse-Rate-Limit-Error-Code"] == "admin_api_key_rate_limit"
    wait = int(limited.headers["Retry-After"])
    assert 55 <= wait <= 60
    left = f"{wait} seconds" if wait < 60 else "1 minute"
    assert limited.json() == {
        "errors": [
            f"You’ve performed this action too many times. Please wait {left} before trying again."
        ],
        "error_type": "rate_limit",
        "extras": {"wait_seconds": wait, "time_left": left},
    }
    # the U+2019 apostrophe is on the wire as UTF-8
    assert "You\u2019ve".encode() in limited.content
    # the control API is never limited and never logged
    assert control.state()["users"]
    assert all(r["path"] != "/_emulator/state" for r in control.requests()["requests"])


def test_time_scale_shrinks_the_window(
    discourse_api: DiscourseApi, forum: dict[str, Any], discourse_emulator: DiscourseEmulator
) -> None:
    forum["control"].settings(max_admin_api_reqs_per_minute=3, time_scale=600)  # 0.1 s window
    codes = [discourse_api.get("/posts.json").status_code for _ in range(4)]
    assert codes[:3] == [200, 200, 200]
    # The 4th call may or may not land after the 0.1 s window; wait for the window to slide.
    deadline = time.monotonic() + 5
    while discourse_api.get("/posts.json").status_code == 429:
        assert time.monotonic() < deadline


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (2, "a few seconds"),
        (14, "14 seconds"),
        (60, "1 minute"),
        (600, "10 minutes"),
        (7200, "2 hours"),
    ],
)
def test_time_left_wording(seconds: int, text: str) -> None:
    assert time_left(seconds) == text


def test_per_user_reply_limit_with_new_user_values_and_staff_exemption(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    topic = discourse_api.post(
        "/posts.json", json={"title": "Topic for rate limits", "raw": BODY, "category": 2}
    ).json()
    reply = {"topic_id": topic["topic_id"], "raw": "First quick reply from alice."}
    assert discourse_api.post("/posts.json", json=reply, user="alice").status_code == 200
    second = dict(reply, raw="Second quick reply from alice.")
    limited = discourse_api.post("/posts.json", json=second, user="alice")
    assert limited.status_code == 429
    wait = limited.json()["extras"]["wait_seconds"]
    assert 25 <= wait <= 30  # alice is a new user (account younger than a day): 30 s
    assert limited.json()["errors"] == [
        f"You’re replying a bit too quickly. Please wait {wait} seconds before trying again."
    ]
    assert "Discourse-Rate-Limit-Error-Code" not in limited.headers
    # a TL2 user gets the regular 5 s window
    assert (
        discourse_api.post(
            "/posts.json", json=reply | {"raw": "Veteran reply number one."}, user="veteran"
        ).status_code
        == 200
    )
    vet = discourse_api.post(
        "/posts.json", json=reply | {"raw": "Veteran reply number two."}, user="veteran"
    )
    assert vet.status_code == 429
    assert 1 <= vet.json()["extras"]["wait_seconds"] <= 5
    # staff are exempt, skip_validations disables per-user limits
    for n in range(3):
        staff = dict(reply, raw=f"Moderator reply number {n} here.")
        assert discourse_api.post("/posts.json", json=staff, user="mod").status_code == 200
    skipped = dict(second, skip_validations="true")
    assert discourse_api.post("/posts.json", json=skipped, user="alice").status_code == 200


def test_topic_limits(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    control = forum["control"]
    control.settings(rate_limit_new_user_create_post=0)
    first = {"title": "Alice creates a topic", "raw": BODY, "category": forum["category"]}
    assert discourse_api.post("/posts.json", json=first, user="alice").status_code == 200
    second = {"title": "Alice creates another", "raw": BODY + "!", "category": forum["category"]}
    limited = discourse_api.post("/posts.json", json=second, user="alice")
    assert limited.status_code == 429
    assert limited.json()["errors"][0].startswith("You’re creating topics a bit too quickly.")
    assert 1 <= limited.json()["extras"]["wait_seconds"] <= 120
    control.settings(
        rate_limit_new_user_create_topic=0, rate_limit_create_topic=0, max_topics_per_day=1
    )
    per_day = discourse_api.post("/posts.json", json=second, user="alice")
    assert per_day.status_code == 429
    assert per_day.json()["errors"][0].startswith(
        "You’ve reached the maximum new topics allowed per day. You can create more new topics in"
    )


def test_edit_limit_per_day(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    forum["control"].settings(max_edits_per_day=1)
    post = discourse_api.post(
        "/posts.json",
        json={"title": "A topic alice edits", "raw": BODY, "category": forum["category"]},
        user="alice",
    ).json()
    path = f"/posts/{post['id']}.json"
    assert discourse_api.put(path, json={"post": {"raw": BODY + " 1"}}, user="alice").ok
    limited = discourse_api.put(path, json={"post": {"raw": BODY + " 2"}}, user="alice")
    assert limited.status_code == 429
    assert limited.json()["errors"][0].startswith(
        "You’ve reached the maximum number of edits allowed per day."
    )


def test_per_ip_limit_is_plain_text(discourse_api: DiscourseApi, forum: dict[str, Any]) -> None:
    forum["control"].settings(per_ip_limit_enabled=True, max_reqs_per_ip_per_10_seconds=3)
    # anonymous requests are not rolled back (only successful admin-API requests are)
    for _ in range(3):
        discourse_api.get("/categories.json", key=None, user=None)
    limited = discourse_api.get("/categories.json", key=None, user=None)
    assert limited.status_code == 429
    assert limited.headers["Content-Type"].startswith("text/plain")
    assert limited.headers["Discourse-Rate-Limit-Error-Code"] == "ip_10_secs_limit"
    wait = limited.headers["Retry-After"]
    assert limited.text == (
        "Slow down, too many requests from this IP address.\n"
        f"Please retry again in {wait} seconds.\nError code: ip_10_secs_limit.\n"
    )
    assert re.fullmatch(r"\d+", wait)


def test_successful_admin_requests_are_rolled_back_from_the_ip_limiter(
    discourse_api: DiscourseApi, forum: dict[str, Any]
) -> None:
    forum["control"].settings(per_ip_limit_enabled=True, max_reqs_per_ip_per_10_seconds=3)
    for _ in range(6):
        assert discourse_api.get("/categories.json").status_code == 200
