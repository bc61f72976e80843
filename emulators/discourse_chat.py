"""Chat plugin rules of the Discourse emulator: channels, DMs, messages, limits, webhooks.

Role: `Chat` implements `/chat/...` (reference §9) on top of `ForumState`: category channels,
direct-message channels with 1:1 reuse, messages with edit/trash/restore, paged listing, the
per-user message limit with auto-silence, and the `chat_message_*` webhook events.
Invariants: every method holds the state lock; chat payloads are `{"message", "channel"}`
serialized for the acting user; DM events carry no category (so category-filtered hooks skip them).
"""

from __future__ import annotations

import logging
from typing import Any

from emulators.discourse_model import (
    ApiError,
    ChatChannel,
    ChatMessage,
    ForumState,
    User,
    invalid_access,
    invalid_parameters,
    not_found,
    rate_limited,
    slugify,
    wait_to_int,
)
from emulators.discourse_serialize import chat_channel_json, chat_message_json
from emulators.discourse_webhooks import WebhookDispatcher

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 50


class Chat:
    """The chat plugin. Errors are raised as `ApiError`."""

    def __init__(self, state: ForumState, hooks: WebhookDispatcher) -> None:
        self.state = state
        self.hooks = hooks

    def _emit(self, event: str, message: ChatMessage, actor: User) -> None:
        channel = self.state.chat_channels[message.channel_id]
        payload = {
            "message": chat_message_json(self.state, message),
            "channel": chat_channel_json(self.state, channel, actor),
        }
        category_id = channel.chatable_id if channel.chatable_type == "Category" else None
        self.hooks.enqueue("chat_message", event, payload, category_id=category_id)

    def _check_can_chat(self, user: User) -> None:
        if not self.state.settings["chat_enabled"]:
            raise not_found()
        # CreateMessage `policy :no_silenced_user` → InvalidAccess.
        if self.state.is_silenced(user):
            raise invalid_access()
        # chat_allowed_groups = staff + trust_level_1
        if not user.staff and user.trust_level < 1:
            raise invalid_access()

    def channel(self, channel_id: int | str, user: User | None) -> ChatChannel:
        with self.state.lock:
            found: ChatChannel | None = None
            if isinstance(channel_id, int) or str(channel_id).isdigit():
                found = self.state.chat_channels.get(int(channel_id))
            else:
                found = next(
                    (c for c in self.state.chat_channels.values() if c.slug == channel_id), None
                )
            if found is None:
                raise not_found()
            if found.chatable_type == "DirectMessage" and not (
                user and (user.id in found.member_ids)
            ):
                raise not_found()
            return found

    def create_category_channel(self, user: User, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            if not user.staff:
                raise invalid_access()
            category_id = params.get("chatable_id")
            if category_id in (None, ""):
                raise ApiError(400, {"failed": "FAILED", "errors": ["Chatable can't be blank"]})
            category = self.state.categories.get(int(category_id))
            if category is None:
                raise not_found()
            if any(
                c.chatable_type == "Category" and c.chatable_id == category.id
                for c in self.state.chat_channels.values()
            ):
                raise invalid_parameters("chat.errors.channel_exists_for_category")
            name = str(params.get("name") or category.name)
            channel = ChatChannel(
                id=self.state.next_id("chat_channel"),
                chatable_type="Category",
                chatable_id=category.id,
                name=name,
                slug=str(params.get("slug") or slugify(name, fallback="channel")),
                description=params.get("description"),
                threading_enabled=bool(params.get("threading_enabled", False)),
                auto_join_users=bool(params.get("auto_join_users", False)),
                member_ids=[user.id],
                created_at=self.state.now(),
            )
            self.state.chat_channels[channel.id] = channel
            return {"channel": chat_channel_json(self.state, channel, user)}

    def direct_message_channel(self, user: User, params: dict[str, Any]) -> dict[str, Any]:
        """`POST /chat/api/direct-message-channels.json`: 1:1 reuse; groups only with upsert."""
        with self.state.lock:
            self._check_can_chat(user)
            names = params.get("target_usernames") or []
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",") if n.strip()]
            members = [user]
            for name in names:
                target = self.state.user_by_username(str(name))
                if target is None:
                    raise not_found()
                if target.id not in [m.id for m in members]:
                    members.append(target)
            if len(members) > 20:
                raise ApiError(400, {"error": "You can't create a group with more than 20 users."})
            ids = sorted(m.id for m in members)
            name = params.get("name") or None
            group = len(ids) > 2 or bool(name)
            upsert = str(params.get("upsert")).lower() == "true" or params.get("upsert") is True
            if not group or upsert:
                for channel in self.state.chat_channels.values():
                    if (
                        channel.chatable_type == "DirectMessage"
                        and sorted(channel.member_ids) == ids
                        and channel.group == group
                    ):
                        return {"channel": chat_channel_json(self.state, channel, user)}
            channel = ChatChannel(
                id=self.state.next_id("chat_channel"),
                chatable_type="DirectMessage",
                chatable_id=self.state.next_id("direct_message"),
                name=name,
                slug=None,
                member_ids=ids,
                group=group,
                created_at=self.state.now(),
            )
            self.state.chat_channels[channel.id] = channel
            return {"channel": chat_channel_json(self.state, channel, user)}

    def send(
        self, user: User, channel_id: int | str, params: dict[str, Any], *, human: bool = False
    ) -> dict[str, Any]:
        """`POST /chat/{channel_id}.json` → `{"success":"OK","message_id":N}`."""
        with self.state.lock:
            s = self.state.settings
            channel = self.channel(channel_id, user)
            self._check_can_chat(user)
            if channel.status != "open":
                raise ApiError(422, {"errors": [f"Channel is {channel.status}"]})
            text = params.get("message")
            if text in (None, "") and not params.get("upload_ids"):
                raise ApiError(400, {"failed": "FAILED", "errors": ["Message can't be blank"]})
            text = str(text or "")
            if len(text.strip()) < s["chat_minimum_message_length"]:
                raise ApiError(
                    422,
                    {
                        "errors": [
                            "Message is too short, must have a minimum of "
                            f"{s['chat_minimum_message_length']} characters."
                        ]
                    },
                )
            self._check_max_length(text)
            if user.id not in channel.member_ids:
                # CreateMessage `model :membership`: no membership → NotFound. Only bots
                # (id ≤ 0, e.g. system) are auto-added (`enforce_membership`); a human in the
                # UI joins first.
                if user.id > 0 and not human:
                    raise not_found()
                channel.member_ids.append(user.id)
            if not user.staff and not human:
                self._rate_limit(user)
            in_reply_to = params.get("in_reply_to_id")
            thread_id = params.get("thread_id")
            now = self.state.now()
            message = ChatMessage(
                id=self.state.next_id("chat_message"),
                channel_id=channel.id,
                user_id=user.id,
                message=text,
                created_at=now,
                updated_at=now,
                in_reply_to_id=int(in_reply_to) if in_reply_to not in (None, "") else None,
                thread_id=int(thread_id) if thread_id not in (None, "") else None,
            )
            if message.in_reply_to_id is not None and channel.threading_enabled:
                parent = self.state.chat_messages.get(message.in_reply_to_id)
                if parent is not None and message.thread_id is None:
                    if parent.thread_id is None:
                        parent.thread_id = parent.id
                    message.thread_id = parent.thread_id
            self.state.chat_messages[message.id] = message
            self._emit("chat_message_created", message, user)
            return {"success": "OK", "message_id": message.id}

    def _check_max_length(self, text: str) -> None:
        """Chat::Message validation `chat.errors.message_too_long` → 422 via on_model_errors."""
        maximum = self.state.settings["chat_maximum_message_length"]
        if len(text) > maximum:
            raise ApiError(
                422,
                {"errors": [f"Message is too long, must have a maximum of {maximum} characters."]},
            )

    def join(self, user: User, channel_id: int) -> dict[str, Any]:
        """`POST /chat/api/channels/{id}/memberships/me`: follow a category channel."""
        with self.state.lock:
            channel = self.channel(channel_id, user)
            self._check_can_chat(user)
            if channel.chatable_type != "Category":
                raise invalid_access()
            if user.id not in channel.member_ids:
                channel.member_ids.append(user.id)
            return {
                "membership": {
                    "chat_channel_id": channel.id,
                    "following": True,
                    "muted": False,
                    "user": {"id": user.id, "username": user.username},
                }
            }

    def _rate_limit(self, user: User) -> None:
        """`Chat::MessageRateLimiter`: at the limit, silence the user and answer 429."""
        s = self.state.settings
        allowed = (
            s["chat_allowed_messages_for_trust_level_0"]
            if user.trust_level == 0
            else s["chat_allowed_messages_for_other_trust_levels"]
        )
        key = f"create_chat_message:{user.id}"
        secs = self.state.scaled(30)
        now = self.state.now()
        if self.state.limiter.remaining(key, allowed, secs, now) == 0:
            user.silenced_until = now + self.state.scaled(s["chat_auto_silence_duration"] * 60)
            logger.info("chat user %s auto-silenced", user.username)
            wait = self.state.limiter.available_in(key, allowed, secs, now)
            raise rate_limited("create_chat_message", wait_to_int(wait))
        self.state.limiter.perform(key, allowed, secs, now)

    def _message(self, user: User, channel_id: int, message_id: int) -> ChatMessage:
        channel = self.channel(channel_id, user)
        message = self.state.chat_messages.get(message_id)
        if message is None or message.channel_id != channel.id:
            raise not_found()
        return message

    def edit(
        self, user: User, channel_id: int, message_id: int, params: dict[str, Any]
    ) -> dict[str, Any]:
        with self.state.lock:
            message = self._message(user, channel_id, message_id)
            if message.deleted_at is not None:
                raise not_found()
            if message.user_id != user.id and not user.staff:
                raise invalid_access()
            text = params.get("message")
            if text in (None, ""):
                raise ApiError(400, {"failed": "FAILED", "errors": ["Message can't be blank"]})
            # UpdateMessage saves the model: the same length validation as on create.
            self._check_max_length(str(text))
            if str(text) != message.message:
                message.message = str(text)
                message.revisions += 1
                message.updated_at = self.state.now()
                self._emit("chat_message_edited", message, user)
            return {"success": "OK", "message_id": message.id}

    def trash(self, user: User, channel_id: int, message_id: int) -> dict[str, Any]:
        with self.state.lock:
            message = self._message(user, channel_id, message_id)
            if message.user_id != user.id and not user.staff:
                raise invalid_access()
            if message.deleted_at is None:
                message.deleted_at = self.state.now()
                message.deleted_by_id = user.id
                self._emit("chat_message_trashed", message, user)
            return {"success": "OK"}

    def restore(self, user: User, channel_id: int, message_id: int) -> dict[str, Any]:
        with self.state.lock:
            message = self._message(user, channel_id, message_id)
            if message.user_id != user.id and not user.staff:
                raise invalid_access()
            if message.deleted_at is not None:
                message.deleted_at = None
                message.deleted_by_id = None
                self._emit("chat_message_restored", message, user)
            return {"success": "OK"}

    def _target(self, channel: ChatChannel, user: User, raw: Any) -> int | None:
        """Chat::Channel::Policy::MessageExistence for `target_message_id`.

        Blank (or not an integer, which the contract casts to nil) → no target. Otherwise the
        message, trashed or not, must be in this channel, else 404 (so `0` is a 404). A trashed
        target is kept for its author and for staff; for anyone else the target is dropped and
        the list is served as if none had been given.
        """
        if raw in (None, ""):
            return None
        try:
            target_id = int(str(raw).strip())
        except ValueError:
            return None
        message = self.state.chat_messages.get(target_id)
        if message is None or message.channel_id != channel.id:
            raise not_found()
        if message.deleted_at is not None and not (user.staff or message.user_id == user.id):
            return None
        return target_id

    def list_messages(self, user: User, channel_id: int, params: dict[str, Any]) -> dict[str, Any]:
        """`GET /chat/api/channels/{id}/messages.json` (`page_size` ≤ 50, `direction`)."""
        with self.state.lock:
            channel = self.channel(channel_id, user)
            try:
                page_size = int(params.get("page_size") or MAX_PAGE_SIZE)
            except ValueError as exc:
                raise invalid_parameters("page_size") from exc
            if page_size > MAX_PAGE_SIZE or page_size < 1:
                raise ApiError(
                    400,
                    {"failed": "FAILED", "errors": ["Page size must be less than or equal to 50"]},
                )
            direction = str(params.get("direction") or "past")
            if direction not in ("past", "future"):
                raise invalid_parameters("direction")
            # MessagesQuery: trashed messages only `with_deleted` for `can_moderate_chat?`
            # (staff here); their own author does not see them in the list.
            messages = sorted(
                (
                    m
                    for m in self.state.chat_messages.values()
                    if m.channel_id == channel.id
                    and (m.deleted_at is None or user.staff)
                    and not (
                        channel.threading_enabled
                        and m.thread_id is not None
                        and m.thread_id != m.id
                    )
                ),
                key=lambda m: m.id,
            )
            target_id = self._target(channel, user, params.get("target_message_id"))
            if direction == "future":
                pool = [m for m in messages if target_id is None or m.id > target_id]
                page = pool[:page_size]
                more_future = len(pool) > page_size
                more_past = target_id is not None and any(m.id <= target_id for m in messages)
            else:
                pool = [m for m in messages if target_id is None or m.id < target_id]
                page = pool[-page_size:]
                more_past = len(pool) > page_size
                more_future = target_id is not None and any(m.id >= target_id for m in messages)
            return {
                "messages": [chat_message_json(self.state, m) for m in page],
                "tracking": {"channel_tracking": {}, "thread_tracking": {}},
                "meta": {
                    "target_message_id": target_id,
                    "can_load_more_future": more_future,
                    "can_load_more_past": more_past,
                },
            }
