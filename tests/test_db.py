"""Tests of db.Store: links and their UNIQUE rules, migrations, inbox order, failures, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import db
from db import (
    ChatMessageLink,
    ChatPollState,
    DmChannelState,
    InboxEvent,
    LinkConflict,
    MessageLink,
    PostParts,
    StatusKey,
    Store,
    StoreError,
    ThreadLink,
    UserLink,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPACE = "spaces/AAAA"
THREAD = "spaces/AAAA/threads/T1"
MSG = "spaces/AAAA/messages/M1"


class Clock:
    """A settable clock for the store (the only thing these tests fake)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Iterator[Store]:
    s = Store(":memory:", clock=clock)
    yield s
    s.close()


def link_msg(store: Store, name: str, post: int, **overrides: object) -> None:
    kwargs: dict[str, object] = {
        "gchat_thread_name": THREAD,
        "discourse_topic_id": 10,
        "origin": "gchat",
        "content_hash": "h1",
    }
    kwargs.update(overrides)
    store.link_message(name, post, **kwargs)  # type: ignore[arg-type]


def enqueue(store: Store, dedupe_key: str, ordering_key: str, at: datetime = T0) -> bool:
    return store.enqueue_event(
        event_id=dedupe_key,
        event_type="post",
        event_name="post_created",
        payload='{"post": {}}',
        dedupe_key=dedupe_key,
        ordering_key=ordering_key,
        received_at=at,
    )


# -- schema and migrations ------------------------------------------------------------------


def test_migrations_are_numbered_in_order_and_described() -> None:
    versions = [version for version, _, _ in db.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert all(description.strip() for _, description, _ in db.MIGRATIONS)


def test_file_db_keeps_version_and_data_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with Store(path) as first:
        assert first.schema_version == db.MIGRATIONS[-1][0]
        first.set_discourse_high_water(17)
    with Store(path) as second:
        assert second.schema_version == db.MIGRATIONS[-1][0]
        assert second.discourse_high_water() == 17
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_the_client_id_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with Store(path) as first:
        key = first.client_id_key()
        assert len(key) == 32
    with Store(path) as second:
        assert second.client_id_key() == key  # ids derived from it stay the same (retries)
        assert key.hex() not in repr(second.all_status())  # `status` never shows it
    with Store(tmp_path / "other.sqlite") as other:
        assert other.client_id_key() != key  # another bridge's ids cannot be told from ours


def test_unopenable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "state.sqlite"
    with pytest.raises(StoreError, match="missing-dir"):
        Store(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer than this bridge knows"):
        Store(path)


def test_a_later_migration_is_applied_once_and_a_failing_one_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.sqlite"
    with Store(path) as s:
        s.set_status(StatusKey.BRIDGE_ACCOUNT, "yes")
    last = len(db.MIGRATIONS)
    broken = (
        *db.MIGRATIONS,
        (last + 1, "add a table", "CREATE TABLE extra (x INTEGER);"),
        (last + 2, "broken step", "CREATE TABLE extra2 (x INTEGER);\nTHIS IS NOT SQL;"),
    )
    monkeypatch.setattr(db, "MIGRATIONS", broken)
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    # The two new steps ran in one transaction: neither is kept.
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == last
    conn.close()
    assert "extra" not in tables and "extra2" not in tables

    monkeypatch.setattr(db, "MIGRATIONS", broken[: last + 1])
    with Store(path) as s:
        assert s.schema_version == last + 1
        assert s.get_status(StatusKey.BRIDGE_ACCOUNT) == "yes"
    with Store(path) as s:  # re-opening applies nothing again (CREATE TABLE would fail)
        assert s.schema_version == last + 1


def test_every_link_table_is_unique_on_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    unique_columns: dict[str, set[str]] = {}
    for table in (
        "space_category",
        "dm_channel",
        "thread_topic",
        "message_post",
        "chat_message_link",
        "user_link",
    ):
        cols: set[str] = set()
        for index in conn.execute(f"PRAGMA index_list({table})").fetchall():
            if index[2]:  # unique
                names = [r[2] for r in conn.execute(f"PRAGMA index_info({index[1]})")]
                if len(names) == 1:
                    cols.add(names[0])
        unique_columns[table] = cols
    conn.close()
    assert unique_columns == {
        "space_category": {"gchat_space_name", "discourse_category_id"},
        "dm_channel": {"gchat_space_name", "discourse_channel_id"},
        "thread_topic": {"gchat_thread_name", "discourse_topic_id"},
        "message_post": {"gchat_message_name", "discourse_post_id"},
        "chat_message_link": {"gchat_message_name", "discourse_chat_message_id"},
        "user_link": {"gchat_user_name", "discourse_username_lower", "discourse_user_id"},
    }


# -- transactions ---------------------------------------------------------------------------


def test_transaction_commits_and_rolls_back(store: Store) -> None:
    with store.transaction():
        store.set_post_version(1, 1)
        store.set_post_version(2, 1)
    with pytest.raises(RuntimeError), store.transaction():
        store.set_post_version(1, 2)
        raise RuntimeError("boom")
    assert (store.post_version(1), store.post_version(2)) == (1, 1)


def test_nested_failure_undoes_only_the_inner_part(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    link_msg(store, MSG, 100)
    with store.transaction():
        store.set_post_version(100, 3)
        with pytest.raises(LinkConflict):
            link_msg(store, MSG, 101)
        store.note_topic_seen(10, 4)
    assert store.post_version(100) == 3
    assert store.topic_seen(10) == 4
    assert store.post_for_message(MSG) == 100


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="naive"):
        enqueue(store, "a", "t", at=datetime(2024, 1, 1))


# -- space <-> category, DM space <-> channel, thread <-> topic ----------------------------


def test_space_category_links(store: Store) -> None:
    assert store.category_for_space(SPACE) is None
    store.set_category_for_space(SPACE, 7)
    store.set_category_for_space(SPACE, 7)  # same pair: no-op
    assert store.category_for_space(SPACE) == 7
    assert store.space_for_category(7) == SPACE
    assert store.space_for_category(8) is None
    with pytest.raises(LinkConflict, match="already linked"):
        store.set_category_for_space(SPACE, 8)
    with pytest.raises(LinkConflict):
        store.set_category_for_space("spaces/OTHER", 7)
    assert store.category_for_space("spaces/OTHER") is None


def test_dm_channel_links(store: Store) -> None:
    store.link_dm_channel("spaces/DM", 3)
    store.link_dm_channel("spaces/DM", 3)
    assert store.channel_for_space("spaces/DM") == 3
    assert store.space_for_channel(3) == "spaces/DM"
    assert store.channel_for_space("spaces/X") is None
    assert store.space_for_channel(4) is None
    with pytest.raises(LinkConflict) as info:
        store.link_dm_channel("spaces/DM", 4)
    assert info.value.existing == ("spaces/DM", 3)
    assert info.value.wanted == ("spaces/DM", 4)
    with pytest.raises(LinkConflict):
        store.link_dm_channel("spaces/DM2", 3)


def test_thread_topic_links(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    store.link_thread(THREAD, 10, SPACE)
    assert store.topic_for_thread(THREAD) == 10
    assert store.thread_for_topic(10) == THREAD
    assert store.thread_link_by_topic(10) == ThreadLink(THREAD, 10, SPACE)
    assert store.thread_link_by_topic(11) is None
    assert store.topic_for_thread("spaces/AAAA/threads/none") is None
    with pytest.raises(LinkConflict):
        store.link_thread(THREAD, 11, SPACE)
    with pytest.raises(LinkConflict):
        store.link_thread("spaces/AAAA/threads/T2", 10, SPACE)


def test_unlink_thread_removes_its_message_links(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    link_msg(store, MSG, 100)
    assert store.unlink_thread(THREAD) is True
    assert store.unlink_thread(THREAD) is False
    assert store.topic_for_thread(THREAD) is None
    assert store.post_for_message(MSG) is None


# -- message <-> post -------------------------------------------------------------------------


def test_message_links(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    link_msg(store, MSG, 100, origin="discourse", content_hash="abc")
    link_msg(store, MSG, 100, origin="discourse", content_hash="other")  # no-op
    expected = MessageLink(MSG, 100, THREAD, 10, "discourse", "abc")
    assert store.message_link_by_message(MSG) == expected
    assert store.message_link_by_post(100) == expected
    assert store.post_for_message(MSG) == 100
    assert store.message_for_post(100) == MSG
    assert store.post_for_message("spaces/AAAA/messages/none") is None
    assert store.message_for_post(999) is None
    assert store.message_link_by_post(999) is None
    assert store.message_link_by_message("x") is None


def test_message_link_conflicts_on_either_side(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    link_msg(store, MSG, 100)
    with pytest.raises(LinkConflict, match="M1"):
        link_msg(store, MSG, 101)
    with pytest.raises(LinkConflict, match="100"):
        link_msg(store, "spaces/AAAA/messages/M2", 100)
    assert store.message_for_post(101) is None
    assert store.post_for_message("spaces/AAAA/messages/M2") is None


def test_message_link_needs_its_thread_topic_pair(store: Store) -> None:
    with pytest.raises(StoreError, match="link_thread first"):
        link_msg(store, MSG, 100)
    store.link_thread(THREAD, 10, SPACE)
    with pytest.raises(StoreError, match="not linked to topic 11"):
        link_msg(store, MSG, 100, discourse_topic_id=11)
    with pytest.raises(StoreError, match="origin"):
        link_msg(store, MSG, 100, origin="slack")
    assert store.post_for_message(MSG) is None


def test_content_hash_update_and_unlink(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    link_msg(store, MSG, 100)
    store.update_content_hash(MSG, "h2")
    link = store.message_link_by_post(100)
    assert link is not None and link.content_hash == "h2"
    with pytest.raises(KeyError):
        store.update_content_hash("spaces/AAAA/messages/none", "h")
    assert store.unlink_message(MSG) is True
    assert store.unlink_message(MSG) is False
    assert store.message_for_post(100) is None
    link_msg(store, "spaces/AAAA/messages/M9", 100)  # the post id is free again


def test_message_links_in_topic(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    store.link_thread("spaces/AAAA/threads/T2", 20, SPACE)
    link_msg(store, "spaces/AAAA/messages/b", 102)
    link_msg(store, "spaces/AAAA/messages/a", 101)
    link_msg(
        store,
        "spaces/AAAA/messages/c",
        201,
        gchat_thread_name="spaces/AAAA/threads/T2",
        discourse_topic_id=20,
    )
    assert [m.discourse_post_id for m in store.message_links_in_topic(10)] == [101, 102]
    assert store.message_links_in_topic(30) == []


# -- DM message <-> chat message ---------------------------------------------------------------


def test_chat_message_links(store: Store) -> None:
    dm_msg = "spaces/DM/messages/1"
    kwargs = {
        "gchat_space_name": "spaces/DM",
        "discourse_channel_id": 3,
        "origin": "gchat",
        "content_hash": "h",
    }
    with pytest.raises(StoreError, match="link_dm_channel first"):
        store.link_chat_message(dm_msg, 500, **kwargs)  # type: ignore[arg-type]
    store.link_dm_channel("spaces/DM", 3)
    store.link_chat_message(dm_msg, 500, **kwargs)  # type: ignore[arg-type]
    store.link_chat_message(dm_msg, 500, **kwargs)  # type: ignore[arg-type]
    expected = ChatMessageLink(dm_msg, 500, "spaces/DM", 3, "gchat", "h")
    assert store.chat_message_link_by_message(dm_msg) == expected
    assert store.chat_message_link_by_chat_message(500) == expected
    assert store.chat_message_for_message(dm_msg) == 500
    assert store.message_for_chat_message(500) == dm_msg
    assert store.message_for_chat_message(501) is None
    assert store.chat_message_for_message("spaces/DM/messages/2") is None
    with pytest.raises(LinkConflict):
        store.link_chat_message(dm_msg, 501, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(LinkConflict):
        store.link_chat_message("spaces/DM/messages/2", 500, **kwargs)  # type: ignore[arg-type]
    store.update_chat_content_hash(dm_msg, "h2")
    link = store.chat_message_link_by_chat_message(500)
    assert link is not None and link.content_hash == "h2"
    with pytest.raises(KeyError):
        store.update_chat_content_hash("spaces/DM/messages/2", "h")
    assert store.unlink_chat_message(dm_msg) is True
    assert store.unlink_chat_message(dm_msg) is False
    assert store.chat_message_link_by_message(dm_msg) is None


# -- users ---------------------------------------------------------------------------------------


def test_user_links(store: Store) -> None:
    link = store.link_user(
        "users/1",
        "Alex_Kim",
        discourse_user_id=41,
        display_name="Alex Kim",
        email="alex@example.com",
        created_by_bridge=True,
    )
    assert link == UserLink("users/1", "Alex_Kim", 41, "Alex Kim", "alex@example.com", True)
    assert store.user_for_gchat("users/1") == link
    assert store.user_for_discourse("alex_kim") == link
    assert store.user_for_discourse("ALEX_KIM") == link
    assert store.user_for_gchat("users/2") is None
    assert store.user_for_discourse("nobody") is None
    assert store.is_bridge_user("ALEX_kim") is True
    assert store.is_bridge_user("nobody") is False
    assert store.discourse_username_taken("alex_KIM") is True
    assert store.discourse_username_taken("alex_kim1") is False

    human = store.link_user("users/2", "Alex_Kim1", discourse_user_id=7, created_by_bridge=False)
    assert human.display_name is None and human.created_by_bridge is False
    assert store.is_bridge_user("alex_kim1") is False
    assert [u.gchat_user_name for u in store.all_users()] == ["users/1", "users/2"]


def test_user_relink_refreshes_profile_and_conflicts_are_refused(store: Store) -> None:
    store.link_user(
        "users/1", "alex", discourse_user_id=41, display_name="Alex", created_by_bridge=True
    )
    again = store.link_user(
        "users/1",
        "ALEX",
        discourse_user_id=None,
        display_name="Alex K",
        email="a@x.org",
        created_by_bridge=False,
    )
    assert again == UserLink("users/1", "alex", 41, "Alex K", "a@x.org", True)
    with pytest.raises(LinkConflict):
        store.link_user("users/2", "Alex", discourse_user_id=99, created_by_bridge=True)
    with pytest.raises(LinkConflict):
        store.link_user("users/1", "other", discourse_user_id=41, created_by_bridge=True)
    with pytest.raises(LinkConflict):
        store.link_user("users/3", "third", discourse_user_id=41, created_by_bridge=True)
    assert store.user_for_gchat("users/3") is None


# -- sync state and status ----------------------------------------------------------------------


def test_chat_poll_state_per_space_and_kind(store: Store) -> None:
    assert store.chat_poll_state(SPACE, "room") == ChatPollState(None, None, never_active=False)
    store.set_chat_poll_cursor(SPACE, "room", "2024-05-01T00:00:00.123456789Z")
    store.set_chat_poll_cursor(SPACE, "room", "2024-05-01T00:00:01.5Z")
    store.mark_chat_poll_read(SPACE, "room", T0)
    state = store.chat_poll_state(SPACE, "room")
    # The cursor is Chat's string as it was (nanoseconds and all), the active time a datetime.
    assert state == ChatPollState("2024-05-01T00:00:01.5Z", T0, never_active=False)
    assert state.unchanged(T0) and not state.unchanged(T0 + timedelta(microseconds=1))
    assert not state.unchanged(None)
    # The DM poll of the same space keeps its own place.
    assert store.chat_poll_state(SPACE, "dm") == ChatPollState(None, None, never_active=False)


def test_a_space_read_empty_is_never_active_until_it_has_a_time(store: Store) -> None:
    store.mark_chat_poll_read(SPACE, "room", None)
    state = store.chat_poll_state(SPACE, "room")
    assert state == ChatPollState(None, None, never_active=True)
    assert state.unchanged(None) and not state.unchanged(T0)
    store.mark_chat_poll_read(SPACE, "room", T0)
    assert store.chat_poll_state(SPACE, "room") == ChatPollState(None, T0, never_active=False)


def test_rewind_moves_the_cursor_back_only_and_forgets_the_last_read(store: Store) -> None:
    store.rewind_chat_poll(SPACE, "room", "2024-05-01T10:00:00Z")  # no cursor yet: set
    assert store.chat_poll_state(SPACE, "room").last_message_time == "2024-05-01T10:00:00Z"
    store.set_chat_poll_cursor(SPACE, "room", "2024-05-01T12:00:00.000001Z")
    store.mark_chat_poll_read(SPACE, "room", T0)
    store.rewind_chat_poll(SPACE, "room", "2024-05-01T13:00:00Z")  # later: the cursor stays
    assert store.chat_poll_state(SPACE, "room") == ChatPollState(
        "2024-05-01T12:00:00.000001Z", None, never_active=False
    )
    store.mark_chat_poll_read(SPACE, "room", None)
    store.rewind_chat_poll(SPACE, "room", "2024-05-01T11:00:00+00:00")
    state = store.chat_poll_state(SPACE, "room")
    assert state == ChatPollState("2024-05-01T11:00:00+00:00", None, never_active=False)
    assert not state.unchanged(None) and not state.unchanged(T0)  # read it again either way
    with pytest.raises(StoreError, match="createTime"):
        store.rewind_chat_poll(SPACE, "room", "yesterday")


def test_dm_channel_state_needs_its_link_and_goes_with_it(store: Store) -> None:
    assert store.dm_channel_state(55) == DmChannelState(reader=None, high_water=None)
    with pytest.raises(StoreError, match="link_dm_channel"):
        store.set_dm_channel_reader(55, "alice")
    store.link_dm_channel(SPACE, 55)
    store.set_dm_channel_reader(55, "alice")
    assert store.dm_channel_state(55) == DmChannelState(reader="alice", high_water=None)
    store.set_dm_channel_high_water(55, 900)
    store.set_dm_channel_reader(55, "bob")
    assert store.dm_channel_state(55) == DmChannelState(reader="bob", high_water=900)
    with store.transaction():  # no unlink method: a channel link goes only by hand, if ever
        store._conn.execute("DELETE FROM dm_channel WHERE discourse_channel_id = 55")
    assert store.dm_channel_state(55) == DmChannelState(reader=None, high_water=None)


def test_discourse_high_water_and_history_start(store: Store) -> None:
    assert store.discourse_high_water() is None
    assert store.discourse_history_start() == 0
    store.set_discourse_high_water(40, first_start=True)
    store.set_discourse_high_water(45)
    assert (store.discourse_high_water(), store.discourse_history_start()) == (45, 40)


def test_high_water_without_a_first_start_has_history_start_zero(store: Store) -> None:
    store.set_discourse_high_water(12)
    assert (store.discourse_high_water(), store.discourse_history_start()) == (12, 0)


def test_post_parts_and_version(store: Store) -> None:
    assert store.post_parts(100) is None and store.post_version(100) is None
    store.set_post_parts(100, PostParts(client_id="client-dp-100", count=3))
    store.set_post_parts(100, PostParts(client_id="client-dp-100-b", count=2))
    store.set_post_version(100, 2)
    store.set_post_version(100, 3)
    assert store.post_parts(100) == PostParts(client_id="client-dp-100-b", count=2)
    assert store.post_version(100) == 3
    with pytest.raises(StoreError, match="at least one part"):
        store.set_post_parts(101, PostParts(client_id="c", count=0))


def test_topic_seen_keeps_the_highest(store: Store) -> None:
    assert store.topic_seen(10) == 0
    store.note_topic_seen(10, 4)
    store.note_topic_seen(10, 2)
    assert store.topic_seen(10) == 4
    store.note_topic_seen(10, 5)
    assert (store.topic_seen(10), store.topic_seen(11)) == (5, 0)


def test_unlinking_a_message_prunes_its_posts_state(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    link_msg(store, MSG, 100)
    link_msg(store, "spaces/AAAA/messages/M2", 101)
    for post in (100, 101):
        store.set_post_parts(post, PostParts(client_id=f"c{post}", count=2))
        store.set_post_version(post, 2)
    store.note_topic_seen(10, 2)
    assert store.unlink_message(MSG)
    assert store.post_parts(100) is None and store.post_version(100) is None
    assert store.post_parts(101) == PostParts(client_id="c101", count=2)
    assert store.post_version(101) == 2 and store.topic_seen(10) == 2


def test_unlinking_a_thread_prunes_its_topics_and_posts_state(store: Store) -> None:
    store.link_thread(THREAD, 10, SPACE)
    store.link_thread("spaces/AAAA/threads/T2", 20, SPACE)
    link_msg(store, MSG, 100)
    link_msg(
        store,
        "spaces/AAAA/messages/M9",
        200,
        gchat_thread_name="spaces/AAAA/threads/T2",
        discourse_topic_id=20,
    )
    for post, topic in ((100, 10), (200, 20)):
        store.set_post_parts(post, PostParts(client_id=f"c{post}", count=2))
        store.set_post_version(post, 2)
        store.note_topic_seen(topic, 3)
    assert store.unlink_thread(THREAD)
    assert store.post_parts(100) is None and store.post_version(100) is None
    assert store.topic_seen(10) == 0
    assert store.post_parts(200) is not None and store.post_version(200) == 2
    assert store.topic_seen(20) == 3


def test_state_of_what_is_not_linked_is_kept(store: Store) -> None:
    # Parts are recorded before the post's link (crash recovery), topics are seen unbridged.
    store.set_post_parts(300, PostParts(client_id="c300", count=2))
    store.note_topic_seen(30, 1)
    store.set_chat_poll_cursor(SPACE, "dm", "2024-05-01T00:00:00Z")
    assert store.post_parts(300) == PostParts(client_id="c300", count=2)
    assert store.topic_seen(30) == 1
    assert store.chat_poll_state(SPACE, "dm").last_message_time == "2024-05-01T00:00:00Z"


def test_status(store: Store) -> None:
    assert store.get_status(StatusKey.LAST_POLL) is None
    assert store.all_status() == {}
    store.set_status(StatusKey.LAST_POLL, "2024-05-01T12:00:00Z")
    store.set_status(StatusKey.CYCLE_ERROR, "ok")
    store.set_status(StatusKey.CYCLE_ERROR, "error: 401")
    assert store.get_status(StatusKey.CYCLE_ERROR) == "error: 401"
    assert store.all_status() == {
        StatusKey.LAST_POLL: "2024-05-01T12:00:00Z",
        StatusKey.CYCLE_ERROR: "error: 401",
    }


def test_status_refuses_a_name_it_does_not_know(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown status key"):
        store.set_status("last_poll_result", "ok")  # type: ignore[arg-type]
    store.set_status("last_poll", "x")  # type: ignore[arg-type]  # the enum's value is its name
    assert store.get_status(StatusKey.LAST_POLL) == "x"


# -- the migration out of the v1 cursor table ----------------------------------------------------


def _v1_database(path: Path, cursor_rows: dict[str, str]) -> None:
    """A database as the first release left it: schema 1, links, and the untyped cursor rows."""
    conn = sqlite3.connect(path)
    try:
        for statement in db._statements(db._SCHEMA_V1):
            conn.execute(statement)
        now = "2024-05-01T12:00:00.000000Z"
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("INSERT INTO thread_topic VALUES (?, ?, ?, ?)", (THREAD, 10, SPACE, now))
        conn.execute(
            "INSERT INTO message_post VALUES (?, ?, ?, ?, 'discourse', 'h', ?, ?)",
            (MSG, 100, THREAD, 10, now, now),
        )
        conn.execute("INSERT INTO dm_channel VALUES ('spaces/DM', 55, ?)", (now,))
        conn.executemany(
            "INSERT INTO cursor (key, value, updated_at) VALUES (?, ?, ?)",
            [(key, value, now) for key, value in cursor_rows.items()],
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    finally:
        conn.close()


V1_CURSOR_ROWS = {
    "gchat_cursor:spaces/ROOM": "2024-05-01T11:59:58.123456789Z",
    "gchat_active:spaces/ROOM": "2024-05-01T11:59:58.123456+00:00",
    "gchat_active:spaces/EMPTY": "never-active",
    "gchat_cursor:spaces/REWOUND": "2024-04-01T00:00:00Z",
    "gchat_active:spaces/REWOUND": "",
    "gchat_dm_cursor:spaces/DM": "2024-05-01T11:00:00.5Z",
    "gchat_dm_active:spaces/DM": "2024-05-01T11:00:00.500000+00:00",
    "discourse_chat_high_water:55": "901",
    "discourse_chat_reader:55": "alice",
    "discourse_high_water_post_id": "120",
    "discourse_first_high_water_post_id": "90",
    "discourse_post_parts:100": '{"client_id": "client-dp-100", "count": 3}',
    "discourse_post_version:100": "4",
    "discourse_topic_seen:10": "7",
}


def test_migration_moves_every_cursor_shape_into_typed_state(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _v1_database(path, V1_CURSOR_ROWS)
    with Store(path) as store:
        assert store.schema_version == db.MIGRATIONS[-1][0]
        moved_at = datetime(2024, 5, 1, 11, 59, 58, 123456, tzinfo=UTC)
        assert store.chat_poll_state("spaces/ROOM", "room") == ChatPollState(
            "2024-05-01T11:59:58.123456789Z", moved_at, never_active=False
        )
        assert store.chat_poll_state("spaces/ROOM", "room").unchanged(moved_at)
        assert store.chat_poll_state("spaces/EMPTY", "room") == ChatPollState(
            None, None, never_active=True
        )
        assert store.chat_poll_state("spaces/REWOUND", "room") == ChatPollState(
            "2024-04-01T00:00:00Z", None, never_active=False
        )
        assert store.chat_poll_state("spaces/DM", "dm") == ChatPollState(
            "2024-05-01T11:00:00.5Z",
            datetime(2024, 5, 1, 11, 0, 0, 500000, tzinfo=UTC),
            never_active=False,
        )
        assert store.chat_poll_state("spaces/DM", "room") == ChatPollState(
            None, None, never_active=False
        )
        assert store.dm_channel_state(55) == DmChannelState(reader="alice", high_water=901)
        assert store.discourse_high_water() == 120
        assert store.discourse_history_start() == 90
        assert store.post_parts(100) == PostParts(client_id="client-dp-100", count=3)
        assert store.post_version(100) == 4
        assert store.topic_seen(10) == 7
        # The moved rows are pruned like new ones.
        assert store.unlink_thread(THREAD)
        assert store.post_parts(100) is None and store.post_version(100) is None
        assert store.topic_seen(10) == 0
    conn = sqlite3.connect(path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "cursor" not in tables
    with Store(path) as store:  # re-opening applies nothing again
        assert store.discourse_high_water() == 120


def test_migration_drops_unknown_and_malformed_rows_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite"
    _v1_database(
        path,
        {
            "gchat_cursor:spaces/ROOM": "2024-05-01T11:59:58Z",
            "gchat_active:spaces/ROOM": "not a time",
            "some_future_key": "x",
            "discourse_post_parts:100": "{not json",
            "discourse_post_version:101": "four",
            "discourse_chat_reader:77": "bob",  # channel 77 is not linked
            "discourse_first_high_water_post_id": "90",  # without the current high-water id
        },
    )
    with caplog.at_level("WARNING", logger="db"), Store(path) as store:
        assert store.chat_poll_state("spaces/ROOM", "room") == ChatPollState(
            "2024-05-01T11:59:58Z", None, never_active=False
        )
        assert store.post_parts(100) is None and store.post_version(101) is None
        assert store.dm_channel_state(77) == DmChannelState(reader=None, high_water=None)
        assert store.discourse_high_water() is None and store.discourse_history_start() == 0
    dropped = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for key in (
        "gchat_active:spaces/ROOM",
        "some_future_key",
        "discourse_post_parts:100",
        "discourse_post_version:101",
        "discourse_chat_reader:77",
        "discourse_first_high_water_post_id",
    ):
        assert key in dropped, key


def test_migration_of_an_empty_cursor_table(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _v1_database(path, {})
    with Store(path) as store:
        assert store.discourse_high_water() is None
        assert store.message_for_post(100) == MSG  # the links are untouched


# -- inbox ---------------------------------------------------------------------------------------


def test_enqueue_dedupes_even_after_done(store: Store) -> None:
    assert enqueue(store, "post-1-v1", "topic-1") is True
    assert enqueue(store, "post-1-v1", "topic-1") is False
    (event,) = store.due_events(T0)
    assert isinstance(event, InboxEvent)
    assert (event.event_name, event.payload, event.received_at) == (
        "post_created",
        '{"post": {}}',
        T0,
    )
    assert (event.state, event.attempts, event.last_error) == ("pending", 0, None)
    store.mark_done(event.id)
    assert enqueue(store, "post-1-v1", "topic-1") is False
    assert store.due_events(T0 + timedelta(days=1)) == []


def test_due_events_hand_out_the_oldest_of_each_key_only(store: Store) -> None:
    for key, topic in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("c1", "C"), ("b2", "B")]:
        enqueue(store, key, topic)
    assert [e.dedupe_key for e in store.due_events(T0)] == ["a1", "b1", "c1"]
    assert [e.dedupe_key for e in store.due_events(T0, limit=2)] == ["a1", "b1"]
    assert store.inbox_depth() == 5
    first = {e.dedupe_key: e.id for e in store.due_events(T0)}
    store.mark_done(first["a1"])
    assert [e.dedupe_key for e in store.due_events(T0)] == ["b1", "a2", "c1"]


def test_an_event_waiting_for_retry_holds_back_its_key(store: Store, clock: Clock) -> None:
    enqueue(store, "a1", "A")
    enqueue(store, "a2", "A")
    enqueue(store, "b1", "B")
    (a1, _) = store.due_events(T0)
    store.mark_retry(a1.id, "503 from Chat", T0 + timedelta(seconds=30))
    assert [e.dedupe_key for e in store.due_events(T0 + timedelta(seconds=29))] == ["b1"]
    (again, _) = store.due_events(T0 + timedelta(seconds=30))
    assert again.id == a1.id
    assert (again.attempts, again.last_error) == (1, "503 from Chat")
    assert again.next_attempt_at == T0 + timedelta(seconds=30)


def test_dead_letters_unblock_their_key_and_can_be_requeued(store: Store, clock: Clock) -> None:
    enqueue(store, "a1", "A")
    enqueue(store, "a2", "A")
    (a1,) = store.due_events(T0)
    store.mark_retry(a1.id, "timeout", T0)
    store.mark_dead(a1.id, "422: body too short")
    assert [e.dedupe_key for e in store.due_events(T0)] == ["a2"]
    (dead,) = store.dead_events()
    assert (dead.id, dead.state, dead.attempts, dead.last_error) == (
        a1.id,
        "dead",
        2,
        "422: body too short",
    )
    assert dead.finished_at == T0
    assert store.inbox_depth() == 1

    clock.advance(hours=1)
    assert store.requeue_dead() == 1
    assert store.requeue_dead() == 0
    assert store.dead_events() == []
    # The requeued event is the oldest of its key again, with a fresh budget, due now.
    (head,) = store.due_events(clock.now)
    assert (head.id, head.attempts, head.state) == (a1.id, 0, "pending")
    assert store.due_events(T0) == []  # due from the requeue time, not before


def test_mark_unknown_event_raises(store: Store) -> None:
    for call in (
        lambda: store.mark_done(42),
        lambda: store.mark_dead(42, "x"),
        lambda: store.mark_retry(42, "x", T0),
    ):
        with pytest.raises(KeyError):
            call()


def test_retention_wipes_handled_bodies_then_deletes_rows(store: Store, clock: Clock) -> None:
    week = timedelta(days=7)
    for key, order in (("old", "A"), ("new", "B"), ("dead", "C"), ("pending", "A")):
        enqueue(store, key, order)
    events = {e.dedupe_key: e for e in store.due_events(T0)}
    store.mark_done(events["old"].id)
    store.mark_dead(events["dead"].id, "refused")
    clock.advance(days=5)
    store.mark_done(events["new"].id)
    clock.advance(days=3)
    assert store.expire_inbox(week) == db.InboxExpiry(wiped=1, deleted=0, dead_deleted=())

    def payload(key: str) -> str | None:
        event = store.get_event(events[key].id)
        return None if event is None else event.payload

    assert payload("old") == ""  # handled 8 days ago: the words are gone, the key stays
    assert enqueue(store, "old", "A") is False  # so a late redelivery is still dropped
    assert payload("new") == '{"post": {}}'  # handled 3 days ago
    assert payload("dead") == '{"post": {}}'  # kept for `retry`
    (pending,) = [e for e in store.due_events(clock.now) if e.dedupe_key == "pending"]
    assert pending.payload == '{"post": {}}'  # never touched before it is handled
    clock.advance(days=7 * db.ROW_LIFETIME_FACTOR - 7)  # "old" and "dead" ended 29 days ago
    assert store.expire_inbox(week) == db.InboxExpiry(wiped=1, deleted=1, dead_deleted=("dead",))
    assert payload("old") is None and payload("dead") is None
    assert payload("new") == ""
    assert enqueue(store, "old", "A") is True  # forgotten with its row
    assert store.inbox_depth() == 2


def test_the_database_and_its_wal_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with Store(path) as s:
        enqueue(s, "a", "A")
        created = {
            p.name: oct(p.stat().st_mode & 0o777)
            for p in tmp_path.iterdir()
            if p.name.startswith("state.sqlite")
        }
    assert created == {
        "state.sqlite": "0o600", "state.sqlite-wal": "0o600", "state.sqlite-shm": "0o600"
    }  # fmt: skip
    path.chmod(0o640)  # an operator's choice for an existing file is left alone (check warns)
    Store(path).close()
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_oldest_pending_received_at(store: Store) -> None:
    assert store.oldest_pending_received_at() is None
    enqueue(store, "b", "B", at=T0 + timedelta(minutes=5))
    enqueue(store, "a", "A", at=T0)
    assert store.oldest_pending_received_at() == T0


class InboxMachine(RuleBasedStateMachine):
    """Random interleavings of enqueue / hand out / done / retry / dead / requeue.

    Model: per ordering key, the dedupe keys not yet done or dead, in arrival order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = Store(":memory:", clock=self.clock)
        self.pending: dict[str, list[str]] = {}
        self.arrival: dict[str, int] = {}  # dedupe key -> arrival number
        self.ordering_of: dict[str, str] = {}  # dedupe key -> ordering key
        self.retry_at: dict[str, datetime] = {}
        self.dead: set[str] = set()
        self.handed_out: set[str] = set()

    @rule(key=st.sampled_from("ABC"), duplicate=st.booleans())
    def enqueue(self, key: str, duplicate: bool) -> None:
        if duplicate and self.arrival:
            # A redelivery of any earlier event (pending, done or dead) is refused.
            assert enqueue(self.store, next(iter(self.arrival)), key, self.clock.now) is False
            return
        dedupe_key = f"e{len(self.arrival)}"
        assert enqueue(self.store, dedupe_key, key, self.clock.now) is True
        self.arrival[dedupe_key] = len(self.arrival)
        self.ordering_of[dedupe_key] = key
        self.pending.setdefault(key, []).append(dedupe_key)

    @rule(seconds=st.integers(0, 40))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds=seconds)

    def _due(self) -> list[InboxEvent]:
        events = self.store.due_events(self.clock.now, limit=1000)
        keys = [e.ordering_key for e in events]
        assert len(keys) == len(set(keys)), "two events of one key handed out"
        # Never a newer event while an older one of its key is pending (or retrying), and
        # every key whose oldest pending event is due is served.
        expected = {
            key: queue[0]
            for key, queue in self.pending.items()
            if queue and self.retry_at.get(queue[0], self.clock.now) <= self.clock.now
        }
        assert {e.ordering_key: e.dedupe_key for e in events} == expected
        self.handed_out.update(e.dedupe_key for e in events)
        return events

    @rule(data=st.data(), outcome=st.sampled_from(["done", "retry", "dead", "none"]))
    def work(self, data: st.DataObject, outcome: str) -> None:
        events = self._due()
        if not events or outcome == "none":
            return
        event = data.draw(st.sampled_from(events))
        queue = self.pending[event.ordering_key]
        if outcome == "done":
            self.store.mark_done(event.id)
            queue.pop(0)
        elif outcome == "dead":
            self.store.mark_dead(event.id, "gave up")
            queue.pop(0)
            self.dead.add(event.dedupe_key)
        else:
            wait = timedelta(seconds=data.draw(st.integers(1, 60)))
            self.store.mark_retry(event.id, "503", self.clock.now + wait)
            self.retry_at[event.dedupe_key] = self.clock.now + wait

    @precondition(lambda self: bool(self.dead))
    @rule()
    def requeue(self) -> None:
        assert {e.dedupe_key for e in self.store.dead_events()} == self.dead
        assert self.store.requeue_dead() == len(self.dead)
        for key in self.dead:
            # Back at its place in arrival order, due from now.
            queue = self.pending[self.ordering_of[key]]
            queue.append(key)
            queue.sort(key=self.arrival.__getitem__)
            self.retry_at[key] = self.clock.now
        self.dead.clear()

    @invariant()
    def depth_matches(self) -> None:
        assert self.store.inbox_depth() == sum(len(q) for q in self.pending.values())

    def teardown(self) -> None:
        """Everything pending is eventually handed out, in order, until done."""
        try:
            self._drain()
        finally:
            self.store.close()

    def _drain(self) -> None:
        self.clock.advance(hours=1)
        while any(self.pending.values()):
            events = self._due()
            assert events, "pending events but none due"
            for event in events:
                self.store.mark_done(event.id)
                self.pending[event.ordering_key].pop(0)
        assert set(self.arrival) - self.dead <= self.handed_out


TestInboxOrdering = InboxMachine.TestCase
TestInboxOrdering.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# -- write intents ------------------------------------------------------------------------------


def test_write_intents(store: Store, clock: Clock) -> None:
    assert store.has_pending_write(MSG) is False
    store.begin_write(MSG)
    clock.advance(seconds=1)
    store.begin_write("spaces/AAAA/messages/M2")
    store.begin_write(MSG)  # a retry of the same create keeps its place
    assert store.has_pending_write(MSG) is True
    assert store.pending_writes() == [MSG, "spaces/AAAA/messages/M2"]
    store.link_thread(THREAD, 10, SPACE)
    with store.transaction():
        link_msg(store, MSG, 100)
        store.finish_write(MSG)
    store.finish_write(MSG)  # finishing twice is harmless
    assert store.has_pending_write(MSG) is False
    assert store.pending_writes() == ["spaces/AAAA/messages/M2"]


# -- failures --------------------------------------------------------------------------------


def test_failures_count_attempts_and_park(store: Store, clock: Clock) -> None:
    direction = "gchat_to_discourse"
    assert store.failure_for(direction, MSG) is None
    first = store.record_failure(
        direction, MSG, "503", max_attempts=3, next_attempt_at=T0 + timedelta(minutes=1)
    )
    assert (first.attempts, first.parked, first.last_error) == (1, False, "503")
    assert first.first_failed_at == first.last_failed_at == T0
    assert store.due_failures(direction, T0) == []
    assert store.due_failures(direction, T0 + timedelta(minutes=1)) == [first]
    assert store.due_failures("discourse_to_gchat", T0 + timedelta(days=1)) == []

    clock.advance(minutes=1)
    second = store.record_failure(
        direction, MSG, "timeout", max_attempts=3, next_attempt_at=clock.now
    )
    assert (second.attempts, second.parked, second.first_failed_at) == (2, False, T0)
    clock.advance(minutes=1)
    third = store.record_failure(
        direction, MSG, "422 body too short", max_attempts=3, next_attempt_at=clock.now
    )
    assert (third.attempts, third.parked, third.last_error) == (3, True, "422 body too short")
    assert third.last_failed_at == T0 + timedelta(minutes=2)
    assert store.due_failures(direction, clock.now + timedelta(days=1)) == []
    assert store.parked_items() == [third]

    clock.advance(minutes=5)
    assert store.requeue_parked() == 1
    assert store.requeue_parked() == 0
    assert store.parked_items() == []
    (requeued,) = store.due_failures(direction, clock.now)
    assert (requeued.attempts, requeued.parked, requeued.next_attempt_at) == (0, False, clock.now)

    assert store.clear_failure(direction, MSG) is True
    assert store.clear_failure(direction, MSG) is False
    assert store.failure_for(direction, MSG) is None


def test_failures_are_per_direction(store: Store) -> None:
    store.record_failure("a", "item", "x", max_attempts=1, next_attempt_at=T0)
    store.record_failure("b", "item", "y", max_attempts=5, next_attempt_at=T0)
    a, b = store.failure_for("a", "item"), store.failure_for("b", "item")
    assert a is not None and a.parked and a.last_error == "x"
    assert b is not None and not b.parked and b.last_error == "y"
    assert [f.direction for f in store.parked_items()] == ["a"]


# -- threads ---------------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    threads_n, per_thread = 6, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def writer(n: int) -> None:
        try:
            start.wait(timeout=10)
            thread = f"spaces/S/threads/{n}"
            store.link_thread(thread, 1000 + n, "spaces/S")
            for i in range(per_thread):
                name = f"spaces/S/messages/{n}-{i}"
                store.link_message(
                    name,
                    n * 1000 + i,
                    gchat_thread_name=thread,
                    discourse_topic_id=1000 + n,
                    origin="gchat",
                    content_hash="h",
                )
                enqueue(store, f"{n}-{i}", f"topic-{i % 3}")
                with store.transaction():
                    value = store.post_version(1) or 0
                    store.set_post_version(1, value + 1)
                store.record_failure("d", "shared", "e", max_attempts=10_000, next_attempt_at=T0)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    total = threads_n * per_thread
    assert store.post_version(1) == total  # read-modify-write in a transaction
    assert store.inbox_depth() == total
    failure = store.failure_for("d", "shared")
    assert failure is not None and failure.attempts == total
    for n in range(threads_n):
        assert len(store.message_links_in_topic(1000 + n)) == per_thread
    store.close()

    # A second connection (another process, e.g. `status`) sees everything.
    with Store(tmp_path / "state.sqlite") as again:
        assert again.message_for_post(5 * 1000 + 39) == "spaces/S/messages/5-39"
