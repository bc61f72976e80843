"""Pure parts of the Discourse → Chat sync: inbox keys, long texts, upload references."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import formatting
from discourse_client import DiscoursePost
from inbox import parse_webhook, pulled_post
from sync_discourse_to_gchat import render_message, render_parts, uploads_in_raw


def post(raw: str, post_number: int = 2) -> DiscoursePost:
    return DiscoursePost(
        id=5, topic_id=9, post_number=post_number, username="carol", raw=raw, cooked=None,
        post_type=1, created_at=datetime(2026, 1, 1, tzinfo=UTC), updated_at=None,
        deleted_at=None, user_deleted=False, hidden=False, category_id=3, topic_title="T",
        topic_archetype="regular", reply_to_post_number=None, version=1,
    )  # fmt: skip


def keys(event_name: str, body: dict[str, Any]) -> tuple[str, str]:
    parsed = parse_webhook(event_name, body)
    return parsed.dedupe_key, parsed.ordering_key


def inbox_keys(event_name: str, body: dict[str, Any]) -> tuple[str, str]:
    return keys(event_name, body)


BASE = {"username": "carol", "post_number": 2, "created_at": "2026-01-01T00:00:00Z"}


def test_edits_and_deletions_are_keyed_by_content() -> None:
    body = {"post": {"id": 5, "topic_id": 9, "version": 2, "deleted_at": None, "raw": "a", **BASE}}
    edited = inbox_keys("post_edited", body)[0]
    assert edited.startswith("post_edited:5:")
    assert inbox_keys("post_edited", body)[0] == edited  # a redelivery is dropped
    # A second quick edit within the editing grace period keeps the version (post_revisor.rb):
    # it must not pass for a redelivery of the first.
    quick = {"post": {**body["post"], "raw": "b", "updated_at": "2026-01-02T00:00:05Z"}}
    assert inbox_keys("post_edited", quick)[0] != edited
    destroyed = inbox_keys("post_destroyed", body)[0]
    again = {"post": {**body["post"], "deleted_at": "2026-01-02T00:00:00Z"}}
    assert inbox_keys("post_destroyed", again)[0] != destroyed  # a second deletion is new
    assert inbox_keys("post_destroyed", body)[0] == destroyed  # a redelivery is not


def test_two_title_edits_with_equal_counters_are_both_kept() -> None:
    one = {"topic": {"id": 9, "posts_count": 2, "title": "Old title here"}}
    two = {"topic": {"id": 9, "posts_count": 2, "title": "New title here"}}
    assert inbox_keys("topic_edited", one)[0] != inbox_keys("topic_edited", two)[0]


def test_a_pulled_post_meets_its_webhook_on_one_row() -> None:
    body = {"post": {"id": 5, "topic_id": 9, "raw": "a", **BASE}}
    webhook = parse_webhook("post_created", body)
    pulled = pulled_post(webhook.event.post)  # type: ignore[union-attr]
    assert (pulled.dedupe_key, pulled.ordering_key) == (webhook.dedupe_key, webhook.ordering_key)
    assert (pulled.event.post_id, pulled.event.topic_id) == (5, 9)  # type: ignore[union-attr]


def test_long_posts_split_or_truncate() -> None:
    raw = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(60))
    whole = render_message(post(raw), base_url="https://f", mention_lookup=lambda _: None)
    parts = formatting.split_for_limit(whole, formatting.CHAT_MAX_BYTES)
    assert len(parts) == 2 and all(len(p.encode()) <= formatting.CHAT_MAX_BYTES for p in parts)
    cut = render_message(
        post(raw), base_url="https://f", mention_lookup=lambda _: None, long_messages="truncate"
    )
    assert len(cut.encode()) <= formatting.CHAT_MAX_BYTES
    assert cut.endswith("<https://f/p/5|read the whole post on Discourse>")


def test_uploads_are_found_once_each_with_their_names() -> None:
    raw = (
        "![cat|500x375](upload://abc.png)\n[report.pdf|attachment](upload://def.pdf) (1 KB)\n"
        "again ![cat|500x375](upload://abc.png) and a [link](https://x.example/a.png)"
    )
    assert uploads_in_raw(raw) == [
        ("upload://abc.png", "cat.png"),
        ("upload://def.pdf", "report.pdf"),
    ]


def test_every_part_of_a_long_post_begins_with_its_attribution() -> None:
    # Issue 17: a later part must never begin with a line the author wrote to pass for another.
    forged = "**Alice Admin** (@alice) on Discourse:\nI approve."
    raw = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(40)) + "\n\n" + forged
    parts = render_parts(post(raw), base_url="https://f", mention_lookup=lambda _: None)
    assert len(parts) == 2
    for part in parts:
        assert part.startswith("*carol* on Discourse:\n")
        assert len(part.encode()) <= formatting.CHAT_MAX_BYTES
    whole = render_message(post(raw), base_url="https://f", mention_lookup=lambda _: None)
    assert "\n".join(parts).replace("*carol* on Discourse:\n", "").split() == (
        whole.replace("*carol* on Discourse:\n", "").split()
    )
    cut = render_parts(
        post(raw), base_url="https://f", mention_lookup=lambda _: None, long_messages="truncate"
    )
    assert len(cut) == 1 and cut[0].startswith("*carol* on Discourse:\n")


def test_a_first_posts_title_is_shown_literally() -> None:
    first = dataclasses.replace(post("hello", post_number=1), topic_title="<users/all> *urgent*")
    text = render_message(first, base_url="https://f", mention_lookup=lambda _: None)
    assert "<users/all>" not in text and text.splitlines()[1].startswith("*")
