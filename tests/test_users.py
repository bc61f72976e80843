"""users: username rules (tables + hypothesis) and UserDirectory against both emulators."""

from __future__ import annotations

import re
from typing import Any

import google.oauth2.credentials
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from db import Store
from discourse_client import DiscourseClient
from google_chat_client import ChatUser, GoogleChatClient
from users import RESERVED_USERNAMES, UserDirectory, sanitize_username, username_candidates

VALID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{1,18}[A-Za-z0-9]")
BAD_ENDINGS = (".json", ".js", ".css", ".htm", ".html", ".xml", ".jpg", ".png", ".gif", ".woff")


def _valid(name: str) -> bool:
    return (
        VALID.fullmatch(name) is not None
        and re.search(r"[-_.]{2,}", name) is None
        and name.lower() not in RESERVED_USERNAMES
        and not name.lower().endswith(BAD_ENDINGS)
    )


@pytest.mark.parametrize(
    ("display", "email", "first"),
    [
        ("Alex Kim", None, "Alex_Kim"),
        ("José Álvarez", None, "Jose_Alvarez"),
        ("李雷", "li.lei@example.com", "li.lei"),
        ("李雷", None, "gchat_123456"),
        ("admin", None, "gchat_123456"),
        ("x", None, "x_gc"),
        ("--a..b__c--", None, "a.b_c"),
        ("A very long display name indeed", None, "A_very_long_display"),
        ("report.json", None, "gchat_123456"),
    ],
)
def test_first_candidate(display: str, email: str | None, first: str) -> None:
    got = next(username_candidates(display, email, "users/123456"))
    assert _valid(got)
    # Reserved names and forbidden endings are never offered; the next fit comes first.
    if _valid(first):
        assert got == first
    else:
        assert got != first


def test_sanitize_folds_to_the_ascii_alphabet() -> None:
    assert sanitize_username("  Ünïcödé  Ñame ") == "Unicode_Name"
    assert sanitize_username("🙂🙂") == ""


@settings(max_examples=200, deadline=None)
@given(
    display=st.one_of(st.none(), st.text(max_size=40)),
    email=st.one_of(st.none(), st.emails()),
    user_id=st.from_regex(r"[0-9]{1,21}", fullmatch=True),
)
def test_candidates_are_always_valid_distinct_and_deterministic(
    display: str | None, email: str | None, user_id: str
) -> None:
    names = list(username_candidates(display, email, f"users/{user_id}"))
    assert names, "there is always at least one candidate"
    assert all(_valid(n) for n in names), names
    assert len({n.lower() for n in names}) == len(names)
    assert names == list(username_candidates(display, email, f"users/{user_id}"))


@settings(max_examples=100, deadline=None)
@given(
    display=st.text(min_size=1, max_size=30),
    ids=st.lists(
        st.from_regex(r"[0-9]{5,21}", fullmatch=True), min_size=2, max_size=2, unique=True
    ),
)
def test_two_people_with_one_name_get_different_fallbacks(display: str, ids: list[str]) -> None:
    a = list(username_candidates(display, None, f"users/{ids[0]}"))
    b = list(username_candidates(display, None, f"users/{ids[1]}"))
    assert a != b
    # Past the shared first choice, the suffixed names differ.
    assert set(a[1:]) != set(b[1:])


# ---------------------------------------------------------------------------- emulators


@pytest.fixture
def env(chat_emulator: Any, discourse_emulator: Any) -> dict[str, Any]:
    discourse_emulator.control.settings(max_admin_api_reqs_per_minute=100000)
    bridge = "users/1"
    chat_emulator.control.create_user(name=bridge, displayName="Bridge", email="b@x.com")
    people = [
        chat_emulator.control.create_user(
            name="users/2", displayName="Alex Kim", email="a1@x.com"
        ),
        chat_emulator.control.create_user(
            name="users/3", displayName="Alex Kim", email="a2@x.com"
        ),
        chat_emulator.control.create_user(
            name="users/4", displayName="Dana Fox", email="dana@x.com"
        ),
    ]
    chat_emulator.control.create_space(
        spaceType="GROUP_CHAT", name="spaces/g", members=[bridge, *(p["name"] for p in people)]
    )
    discourse_emulator.control.create_user("dfox", name="Dana", email="DANA@x.com")
    token = chat_emulator.control.add_token(user=bridge)["access_token"]
    chat = GoogleChatClient(
        google.oauth2.credentials.Credentials(token=token), api_endpoint=chat_emulator.url
    )
    discourse = DiscourseClient(discourse_emulator.url, "test-api-key", "system")
    return {
        "chat": chat,
        "discourse": discourse,
        "forum": discourse_emulator,
        "store": Store(":memory:"),
    }


def _directory(env: dict[str, Any]) -> UserDirectory:
    return UserDirectory(
        env["store"],
        env["discourse"],
        env["chat"],
        api_username="system",
        email_domain="users.noreply.invalid",
    )


def _sender(n: int) -> ChatUser:
    # As a message's sender often is under user auth: name and type only (members.list fills in).
    return ChatUser(f"users/{n}", None, None, "HUMAN")


def test_same_display_name_two_users_email_link_trust_level_and_restart(
    env: dict[str, Any],
) -> None:
    users = _directory(env)
    a1 = users.author_for(_sender(2), "spaces/g")
    a2 = users.author_for(_sender(3), "spaces/g")
    dana = users.author_for(_sender(4), "spaces/g")
    assert a1.attribution is None and a2.attribution is None
    assert a1.discourse_username == "Alex_Kim"
    assert a2.discourse_username.lower() != a1.discourse_username.lower()
    assert dana.discourse_username == "dfox"  # existing account, matched by email
    forum = {u["username"]: u for u in env["forum"].control.state()["users"]}
    assert forum["Alex_Kim"]["name"] == "Alex Kim"  # display name from members.list
    assert (
        forum["Alex_Kim"]["trust_level"] == 1 and forum[a2.discourse_username]["trust_level"] == 1
    )
    store: Store = env["store"]
    assert store.user_for_gchat("users/2").created_by_bridge  # type: ignore[union-attr]
    assert not store.user_for_gchat("users/4").created_by_bridge  # type: ignore[union-attr]
    before = store.all_users()
    again = _directory(env)  # a restart: same store, new caches
    assert [again.author_for(_sender(n), "spaces/g") for n in (3, 2, 4)] == [a2, a1, dana]
    assert store.all_users() == before
    assert len(env["forum"].control.state()["users"]) == len(forum)


def test_crash_after_creating_a_user_links_it_as_bridge_made(env: dict[str, Any]) -> None:
    store: Store = env["store"]
    # What a crash between create_user and link_user leaves behind.
    store.begin_write("users:ignored")
    store.begin_write("user:users/2")
    env["forum"].control.create_user("Alex_Kim", name="Alex Kim", email="a1@x.com", trust_level=0)
    author = _directory(env).author_for(_sender(2), "spaces/g")
    assert author.discourse_username == "Alex_Kim"
    link = store.user_for_gchat("users/2")
    assert link is not None and link.created_by_bridge
    assert "user:users/2" not in store.pending_writes()
    forum = {u["username"]: u for u in env["forum"].control.state()["users"]}
    assert forum["Alex_Kim"]["trust_level"] == 1


def test_known_author_only_reads_it_never_makes_an_account(
    env: dict[str, Any], chat_emulator: Any
) -> None:
    store: Store = env["store"]
    forum = env["forum"].control
    users = _directory(env)

    def counts() -> tuple[int, int]:
        return len(chat_emulator.control.requests()["requests"]), len(forum.requests()["requests"])

    accounts = len(forum.state()["users"])
    chat_before, discourse_before = counts()
    # No link: what author_for gives when no account can be had, named from members.list.
    unknown = users.known_author(_sender(2), "spaces/g")
    assert unknown.discourse_username == "system"
    assert unknown.attribution == "**Alex Kim** (Google Chat):"
    assert counts() == (chat_before + 1, discourse_before)  # one members.list, no forum request
    assert users.known_author(_sender(2), "spaces/g") == unknown
    assert counts() == (chat_before + 1, discourse_before)  # the members are cached
    assert store.user_for_gchat("users/2") is None and store.pending_writes() == []
    assert len(forum.state()["users"]) == accounts
    # Linked: the account itself, without an attribution line, from the store alone.
    made = users.author_for(_sender(2), "spaces/g")
    before = counts()
    assert users.known_author(_sender(2), "spaces/g") == made
    assert made.attribution is None
    assert counts() == before
