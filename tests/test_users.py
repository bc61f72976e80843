"""users: username rules (tables + hypothesis) and UserDirectory against both emulators."""

from __future__ import annotations

import re
from typing import Any

import google.oauth2.credentials
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from db import Store
from discourse_client import DiscourseAuthError, DiscourseClient
from google_chat_client import ChatUser, GoogleChatClient
from users import (
    RESERVED_USERNAMES,
    Author,
    IdentityConflict,
    UserDirectory,
    google_account_id,
    sanitize_username,
    username_candidates,
)

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


# ------------------------------------------------------------- one identity per person (issue 16)

BY_GOOGLE = "GET /u/by-external/{provider}/{external_id}.json"


def _forum_counts(env: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = env["forum"].control.requests()["counts"]
    return counts


def _forum_users(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["username"]: u for u in env["forum"].control.state()["users"]}


def test_google_account_id_is_a_human_users_numeric_id() -> None:
    assert google_account_id(ChatUser("users/108364523398145987654", None, None, "HUMAN")) == (
        "108364523398145987654"
    )
    not_google = [
        ("users/123", "BOT"),  # Google's equality holds for human users only
        ("users/app", "HUMAN"),
        ("users/a@b.c", "HUMAN"),
        ("users/12/x", "HUMAN"),
        ("spaces/1", "HUMAN"),
        ("users/", "HUMAN"),
    ]
    for name, kind in not_google:
        assert google_account_id(ChatUser(name, None, None, kind)) is None, name


def test_the_google_login_account_wins_over_creation_even_with_another_email(
    env: dict[str, Any],
) -> None:
    forum = env["forum"].control
    forum.settings(enable_google_oauth2_logins=True)
    # Alex signed in to the forum with Google under a private address; Dana's Google login and
    # email name the same account.
    forum.create_user("alex_g", name="Alex", email="alex@home.example", trust_level=0)
    forum.add_associated_account("alex_g", uid="2")
    forum.add_associated_account("dfox", uid="4")
    accounts = len(_forum_users(env))
    users = _directory(env)
    assert users.author_for(_sender(2), "spaces/g") == Author("alex_g")
    assert users.author_for(_sender(4), "spaces/g") == Author("dfox")
    # Nobody signed in with users/3's Google account: email matching, then creation, as before.
    assert users.author_for(_sender(3), "spaces/g") == Author("Alex_Kim")
    made = _forum_users(env)
    assert len(made) == accounts + 1 and made["Alex_Kim"]["email"] == "a2@x.com"
    store: Store = env["store"]
    alex = store.user_for_gchat("users/2")
    assert alex is not None and not alex.created_by_bridge and alex.email == "a1@x.com"
    assert made["alex_g"]["trust_level"] == 0  # a person's own account: the bridge leaves it
    dana = store.user_for_gchat("users/4")
    assert dana is not None and not dana.created_by_bridge
    assert _forum_counts(env)[BY_GOOGLE] == 3  # one lookup per person, then the link answers
    again = _directory(env)
    assert [again.author_for(_sender(n), "spaces/g").discourse_username for n in (2, 3, 4)] == [
        "alex_g",
        "Alex_Kim",
        "dfox",
    ]
    assert _forum_counts(env)[BY_GOOGLE] == 3


def test_without_google_logins_the_lookup_finds_nobody_and_email_decides(
    env: dict[str, Any],
) -> None:
    forum = env["forum"].control
    # Associated, but the forum has Google logins off: Discourse answers 404 for every id.
    forum.create_user("alex_g", name="Alex", email="alex@home.example")
    forum.add_associated_account("alex_g", uid="2")
    users = _directory(env)
    assert users.author_for(_sender(2), "spaces/g") == Author("Alex_Kim")
    assert users.author_for(_sender(4), "spaces/g") == Author("dfox")
    assert _forum_counts(env)[BY_GOOGLE] == 2
    log = env["forum"].control.requests()["requests"]
    assert {r["status"] for r in log if r["path"].startswith("/u/by-external/")} == {404}


def test_a_key_that_may_not_look_up_logins_falls_back_to_email_and_asks_once(
    env: dict[str, Any],
) -> None:
    forum = env["forum"].control
    forum.settings(enable_google_oauth2_logins=True)
    forum.create_user("mod", moderator=True)
    forum.create_user("alex_g", name="Alex", email="alex@home.example")
    forum.add_associated_account("alex_g", uid="2")
    forum.create_user("alex1", name="Alex", email="a1@x.com")
    # A moderator's key: staff, so the email lookup works, but not an admin.
    moderator = DiscourseClient(env["forum"].url, "test-api-key", "mod")
    users = UserDirectory(
        env["store"], moderator, env["chat"], api_username="mod", email_domain="x.invalid"
    )
    assert users.author_for(_sender(2), "spaces/g") == Author("alex1")
    assert users.author_for(_sender(4), "spaces/g") == Author("dfox")
    log = [r for r in forum.requests()["requests"] if r["path"].startswith("/u/by-external/")]
    assert [(r["status"], r["api_username"]) for r in log] == [(403, "mod")]
    # The client's answers: a refusal of this call only (the key is fine), a user, or None.
    with pytest.raises(DiscourseAuthError) as refused:
        moderator.find_user_by_google_id("2")
    assert not refused.value.credentials_invalid
    admin: DiscourseClient = env["discourse"]
    found = admin.find_user_by_google_id("2")
    assert found is not None and found.username == "alex_g"
    assert admin.find_user_by_google_id("999") is None


def test_an_existing_link_is_kept_whatever_the_google_login_says(env: dict[str, Any]) -> None:
    forum = env["forum"].control
    forum.settings(enable_google_oauth2_logins=True)
    store: Store = env["store"]
    first = _directory(env).author_for(_sender(2), "spaces/g")  # before the Google login
    assert first == Author("Alex_Kim")
    forum.create_user("alex_g", name="Alex", email="alex@home.example")
    forum.add_associated_account("alex_g", uid="2")
    forum.clear_requests()
    for users in (_directory(env), _directory(env)):  # and after a restart
        assert users.author_for(_sender(2), "spaces/g") == first
    assert forum.requests()["requests"] == []
    link = store.user_for_gchat("users/2")
    assert link is not None and link.discourse_username == "Alex_Kim"


def test_a_google_login_of_an_account_linked_to_someone_else_is_a_conflict(
    env: dict[str, Any],
) -> None:
    forum = env["forum"].control
    forum.settings(enable_google_oauth2_logins=True)
    store: Store = env["store"]
    # users/3 was linked to dfox earlier (by hand, or by an email since changed); now users/4's
    # Google account is the one that signs in as dfox.
    dfox = _forum_users(env)["dfox"]
    store.link_user("users/3", "dfox", discourse_user_id=dfox["id"], created_by_bridge=False)
    forum.add_associated_account("dfox", uid="4")
    accounts = len(_forum_users(env))
    users = _directory(env)
    with pytest.raises(IdentityConflict) as caught:
        users.author_for(_sender(4), "spaces/g")
    reason = caught.value.reason
    assert "users/4" in reason and "@dfox" in reason and "users/3" in reason, reason
    assert store.user_for_gchat("users/4") is None
    link = store.user_for_gchat("users/3")
    assert link is not None and link.discourse_username == "dfox"
    assert len(_forum_users(env)) == accounts
    # Asked again (a retry), the same answer: nothing was guessed in between.
    with pytest.raises(IdentityConflict):
        users.author_for(_sender(4), "spaces/g")


def test_a_google_login_and_an_email_naming_two_accounts_is_a_conflict(
    env: dict[str, Any],
) -> None:
    forum = env["forum"].control
    forum.settings(enable_google_oauth2_logins=True)
    # Dana signed in with Google as dana_g; dfox holds the address Chat knows for her.
    forum.create_user("dana_g", name="Dana", email="dana@home.example")
    forum.add_associated_account("dana_g", uid="4")
    accounts = len(_forum_users(env))
    with pytest.raises(IdentityConflict) as caught:
        _directory(env).author_for(_sender(4), "spaces/g")
    reason = caught.value.reason
    assert "@dana_g" in reason and "@dfox" in reason and "dana@x.com" in reason, reason
    assert env["store"].user_for_gchat("users/4") is None
    assert len(_forum_users(env)) == accounts
