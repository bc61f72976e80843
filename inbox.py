"""The durable inbox's keys: how a Discourse event becomes one row, whoever brings it.

Role: a shared module for every direction that feeds the inbox (the webhook listener through
`sync_discourse_to_gchat`, the catch-up pulls of posts and of DM chat channels): each computes an
event's keys here, so a webhook and a pull that bring the same event meet on one row.

Invariants:
- Pure: the keys depend on the event name and body only, never on the clock or the store.
- A creation is keyed by its id alone (the webhook and the pull agree on ids, not on every
  field); later events by id and content, so a redelivery is dropped but a new edit is not.
- The ordering key names the topic (or chat channel): the worker hands out only the oldest
  pending event of each, so replies keep their order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def inbox_keys(event_name: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """(dedupe key, ordering key) for a webhook body.

    A post's creation is keyed by its id alone, so the webhook and the catch-up pull meet on one
    row; later events by id and content, so a redelivery is dropped but a new edit is not.

    Raises:
        ValueError: the body lacks the ids the event needs.
    """
    for kind in ("post", "topic", "chat_message"):
        if kind in body and isinstance(body[kind], Mapping):
            payload = body[kind]
            break
    else:
        raise ValueError("no post, topic or chat_message object in the body")
    if event_name.startswith("post_"):
        post_id, topic_id = _int(payload, "id"), _int(payload, "topic_id")
        if event_name == "post_created":
            return f"post_created:{post_id}", f"topic:{topic_id}"
        if event_name == "post_edited":
            # Keyed by content and edit time, not `version`: a second edit by the same person
            # within Discourse's editing grace period keeps the version (lib/post_revisor.rb).
            edit = {"raw": payload.get("raw"), "updated_at": payload.get("updated_at")}
            return f"post_edited:{post_id}:{_digest(edit)}", f"topic:{topic_id}"
        # A post may be deleted and recovered more than once at one version.
        return f"{event_name}:{post_id}:{_digest(payload)}", f"topic:{topic_id}"
    if event_name.startswith("topic_"):
        topic_id = _int(payload, "id")
        # Two title edits may leave every counter as it was: key by the whole payload.
        return f"{event_name}:{topic_id}:{_digest(payload)}", f"topic:{topic_id}"
    message = payload.get("message")
    channel = payload.get("channel")
    if not isinstance(message, Mapping) or not isinstance(channel, Mapping):
        raise ValueError("chat_message needs message and channel objects")
    message_id, channel_id = _int(message, "id"), _int(channel, "id")
    if event_name == "chat_message_created":
        return f"chat_message_created:{message_id}", f"chat_channel:{channel_id}"
    # `edited` is a mere flag: a second edit must not pass for a redelivery of the first.
    return f"{event_name}:{message_id}:{_digest(message)}", f"chat_channel:{channel_id}"


def _digest(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _int(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} missing or not an integer")
    return value
