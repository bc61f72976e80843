"""Control API of the Discourse emulator (`/_emulator/...`) and its `requests` client.

Role: `register_control(emu, control)` adds the control routes (documented in
`emulators/README.md`) to the emulator's Flask app; `DiscourseControl` is the thin client.
Invariants: control routes need no auth, are never logged nor rate-limited, and act "as a human
in the web UI": validations and per-user limits of browser users are not applied, webhooks fire.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import requests
from flask import Response, jsonify, request

from emulators.discourse_forum import parse_time
from emulators.discourse_model import (
    EVENT_TYPE_IDS,
    ApiError,
    ApiKey,
    AssociatedAccount,
    User,
    WebHook,
    iso,
)
from emulators.discourse_serialize import (
    category_json,
    chat_channel_json,
    chat_message_json,
    post_json,
    upload_json,
    user_json,
)
from emulators.discourse_webhooks import webhook_json

if TYPE_CHECKING:
    from emulators.discourse import Emulator


# Discourse suspends "forever" as 1000 years from now (admin UI, `suspend_forever`).
FOREVER_SECONDS = 1000 * 365 * 86400.0


def _control_error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _associated_account_json(account: AssociatedAccount) -> dict[str, Any]:
    return {
        "provider_name": account.provider_name,
        "provider_uid": account.provider_uid,
        "user_id": account.user_id,
        "last_used": iso(account.last_used),
    }


def register_control(emu: Emulator, control: Any) -> None:  # noqa: C901 - a route table
    state = emu.state

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    def user_named(username: Any) -> User:
        user = state.user_by_username(str(username or ""))
        if user is None:
            raise ApiError(404, {"error": f"no user {username!r}"})
        return user

    def _time(value: Any) -> float | None:
        """A `*_till` value: null, epoch seconds, or an ISO 8601 string."""
        if value in (None, ""):
            return None
        if isinstance(value, int | float):
            return float(value)
        return parse_time(str(value))

    def _apply_moderation(user: User, data: dict[str, Any]) -> None:
        """suspended/suspended_till/suspend_reason, silenced/silenced_till/silence_reason."""
        forever = state.now() + FOREVER_SECONDS
        if "suspended" in data:
            user.suspended_till = forever if data["suspended"] else None
        if "suspended_till" in data:
            user.suspended_till = _time(data["suspended_till"])
        if "suspend_reason" in data:
            user.suspend_reason = data["suspend_reason"]
        if "silenced" in data:
            user.silenced_until = forever if data["silenced"] else 0.0
        if "silenced_till" in data:
            user.silenced_until = _time(data["silenced_till"]) or 0.0
        if "silence_reason" in data:
            user.silence_reason = data["silence_reason"]

    @control("/reset", ["POST"])
    def reset() -> Any:
        emu.reset()
        return jsonify({})

    @control("/users", ["POST"])
    def create_user() -> Any:
        data = body()
        username = str(data.get("username") or "")
        with state.lock:
            if not username or state.user_by_username(username) is not None:
                return _control_error(400, f"username {username!r} missing or taken")
            user = User(
                id=state.next_id("user"),
                username=username,
                name=str(data.get("name") or username),
                email=str(data.get("email") or f"{username.lower()}@example.invalid"),
                admin=bool(data.get("admin", False)),
                moderator=bool(data.get("moderator", False)),
                trust_level=int(data.get("trust_level", 1)),
                active=bool(data.get("active", True)),
                staged=bool(data.get("staged", False)),
                external_id=data.get("external_id"),
                created_at=state.now(),
            )
            _apply_moderation(user, data)
            state.users[user.id] = user
            return jsonify(user_json(user, state, True))

    @control("/users/<username>", ["PUT"])
    def update_user(username: str) -> Any:
        data = body()
        with state.lock:
            user = user_named(username)
            for key in ("admin", "moderator", "active", "staged"):
                if key in data:
                    setattr(user, key, bool(data[key]))
            _apply_moderation(user, data)
            if "trust_level" in data:
                user.trust_level = int(data["trust_level"])
            if "external_id" in data:
                user.external_id = data["external_id"]
            return jsonify(user_json(user, state, True))

    @control("/users/<username>/associated_accounts", ["POST"])
    def add_associated_account(username: str) -> Any:
        """The user signed in with (or connected) a provider account: a UserAssociatedAccount.

        Both unique indexes of the table hold: one user per (provider, uid), one account of a
        provider per user; a clash is refused here (Discourse would move or replace the row).
        """
        data = body()
        provider = str(data.get("provider") or "")
        uid = str(data.get("uid") or "")
        if not provider or not uid:
            return _control_error(400, "provider and uid are required")
        with state.lock:
            user = user_named(username)
            if state.associated_account(provider, provider_uid=uid) is not None:
                return _control_error(400, f"{provider} uid {uid!r} is already associated")
            if state.associated_account(provider, user_id=user.id) is not None:
                return _control_error(400, f"{username} already has a {provider} account")
            account = AssociatedAccount(provider, uid, user.id, last_used=state.now())
            state.associated_accounts.append(account)
            return jsonify(_associated_account_json(account))

    @control("/api_keys", ["POST"])
    def create_api_key() -> Any:
        data = body()
        key = str(data.get("key") or secrets.token_hex(32))
        with state.lock:
            user_id = None
            if data.get("username") is not None:
                user_id = user_named(data["username"]).id
            state.api_keys[key] = ApiKey(key, user_id)
        return jsonify({"key": key})

    @control("/api_keys/<key>", ["DELETE"])
    def revoke_api_key(key: str) -> Any:
        with state.lock:
            if key not in state.api_keys:
                return _control_error(404, "no such key")
            state.api_keys[key].revoked = True
        return jsonify({})

    @control("/categories", ["POST"])
    def create_category() -> Any:
        data = body()
        category = emu.forum.create_category(data)
        with state.lock:
            if data.get("restricted_to") is not None:
                # A read-restricted category: only these users (and admins) see it and post.
                category.allowed_user_ids = [user_named(n).id for n in data["restricted_to"]]
            return jsonify(category_json(state, category))

    @control("/posts", ["POST"])
    def create_post() -> Any:
        data = body()
        user = user_named(data.get("username"))
        params = {k: v for k, v in data.items() if k != "username"}
        result = emu.forum.create_post(user, params, api=False, human=True)
        return jsonify(result)

    @control("/posts/<int:post_id>", ["PUT"])
    def edit_post(post_id: int) -> Any:
        data = body()
        with state.lock:
            post = state.posts.get(post_id)
            if post is None:
                return _control_error(404, "no such post")
            user = (
                user_named(data["username"]) if data.get("username") else state.users[post.user_id]
            )
        result = emu.forum.edit_post(
            user, post_id, data.get("raw"), data.get("title"), api=False, human=True
        )
        return jsonify(result["post"])

    @control("/posts/<int:post_id>", ["DELETE"])
    def delete_post(post_id: int) -> Any:
        data = body()
        with state.lock:
            post = state.posts.get(post_id)
            if post is None:
                return _control_error(404, "no such post")
            user = (
                user_named(data["username"]) if data.get("username") else state.users[post.user_id]
            )
        emu.forum.delete_post(user, post_id, human=True)
        return jsonify({})

    @control("/pending_posts/<int:pending_id>/approve", ["POST"])
    def approve(pending_id: int) -> Any:
        return jsonify(emu.forum.approve_pending(pending_id))

    @control("/chat/channels", ["POST"])
    def create_chat_channel() -> Any:
        data = body()
        return jsonify(emu.chat.create_category_channel(state.users[-1], data)["channel"])

    @control("/chat/direct_messages", ["POST"])
    def create_dm() -> Any:
        data = body()
        user = user_named(data.get("username"))
        return jsonify(emu.chat.direct_message_channel(user, data)["channel"])

    @control("/chat/channels/<int:channel_id>/messages", ["POST"])
    def send_chat(channel_id: int) -> Any:
        data = body()
        user = user_named(data.get("username"))
        result = emu.chat.send(user, channel_id, data, human=True)
        return jsonify({"message_id": result["message_id"]})

    @control("/chat/channels/<int:channel_id>/members", ["POST"])
    def add_chat_members(channel_id: int) -> Any:
        data = body()
        with state.lock:
            channel = state.chat_channels.get(channel_id)
            if channel is None:
                return _control_error(404, "no such channel")
            for name in data.get("usernames", []):
                member = user_named(name)
                if member.id not in channel.member_ids:
                    channel.member_ids.append(member.id)
            return jsonify({"member_ids": list(channel.member_ids)})

    @control("/clock", ["GET", "POST"])
    def clock() -> Any:
        data = body() if request.method == "POST" else {}
        with state.lock:
            if data.get("advance") is not None:
                if float(data["advance"]) < 0:
                    return _control_error(400, "advance must be >= 0")
                state.clock_offset += float(data["advance"])
            return jsonify({"now": iso(state.now()), "offset": state.clock_offset})

    @control("/cdn/requests", ["GET"])
    def cdn_requests() -> Any:
        return jsonify({"requests": emu.cdn.requests()})

    @control("/cdn/requests", ["DELETE"])
    def cdn_clear() -> Any:
        emu.cdn.clear_requests()
        return jsonify({})

    @control("/state", ["GET"])
    def dump_state() -> Any:
        with state.lock:
            return jsonify(
                {
                    "users": [user_json(u, state, True) for u in state.users.values()],
                    "associated_accounts": [
                        _associated_account_json(a) for a in state.associated_accounts
                    ],
                    "categories": [category_json(state, c) for c in state.categories.values()],
                    "topics": [
                        {
                            "id": t.id,
                            "title": t.title,
                            "slug": t.slug,
                            "category_id": t.category_id,
                            "user_id": t.user_id,
                            "archetype": t.archetype,
                            "closed": t.closed,
                            "deleted_at": iso(t.deleted_at),
                            "external_id": t.external_id,
                            "created_at": iso(t.created_at),
                            "bumped_at": iso(t.bumped_at),
                            "last_posted_at": iso(t.last_posted_at),
                            "highest_post_number": t.highest_post_number,
                            "allowed_user_ids": t.allowed_user_ids,
                        }
                        for t in state.topics.values()
                    ],
                    "posts": [
                        {
                            **post_json(state, p, state.users[-1], add_raw=True),
                            "raw": p.raw,
                            "hidden": p.hidden,
                            "import_mode": p.import_mode,
                        }
                        for p in state.posts.values()
                    ],
                    "pending_posts": [
                        {"id": p.id, "user_id": p.user_id, "raw": p.raw}
                        for p in state.pending_posts.values()
                    ],
                    "chat_channels": [
                        {**chat_channel_json(state, c, None), "member_ids": c.member_ids}
                        for c in state.chat_channels.values()
                    ],
                    "chat_messages": [
                        chat_message_json(state, m) for m in state.chat_messages.values()
                    ],
                    "webhooks": [webhook_json(h) for h in state.webhooks.values()],
                    "uploads": [upload_json(u) for u in state.uploads.values()],
                    "deprecations": list(state.deprecations),
                }
            )

    @control("/requests", ["GET"])
    def list_requests() -> Any:
        with emu.log_lock:
            entries = list(emu.request_log)
        counts: dict[str, int] = {}
        for entry in entries:
            counts[entry.template] = counts.get(entry.template, 0) + 1
        return jsonify({"requests": [e.as_json() for e in entries], "counts": counts})

    @control("/requests", ["DELETE"])
    def clear_requests() -> Any:
        with emu.log_lock:
            emu.request_log.clear()
        return jsonify({})

    @control("/faults", ["POST"])
    def add_fault() -> Any:
        data = body()
        fault = {
            "count": int(data.get("count", 1)),
            "status": data.get("status", None if data.get("drop_connection") else 503),
            "method": data.get("method"),
            "path_regex": data.get("path_regex"),
            "latency_ms": int(data.get("latency_ms") or 0),
            "drop_connection": bool(data.get("drop_connection", False)),
        }
        if data.get("latency_ms") and "status" not in data:
            fault["status"] = None
        with emu.log_lock:
            emu.faults.append(fault)
        return jsonify({})

    @control("/faults", ["DELETE"])
    def clear_faults() -> Any:
        with emu.log_lock:
            emu.faults.clear()
        return jsonify({})

    @control("/settings", ["GET", "POST"])
    def settings() -> Any:
        data = body() if request.method == "POST" else {}
        with state.lock:
            for key, value in data.items():
                if key == "time_scale" and float(value) <= 0:
                    return _control_error(400, "time_scale must be > 0")
                state.settings[key] = value
            return jsonify(dict(state.settings))

    @control("/webhooks", ["POST"])
    def create_webhook() -> Any:
        data = body()
        with state.lock:
            hook = WebHook(
                id=state.next_id("web_hook"),
                payload_url=str(data.get("payload_url") or ""),
                content_type=int(data.get("content_type", 1)),
                secret=str(data.get("secret") or ""),
                wildcard_web_hook=bool(data.get("wildcard_web_hook", True)),
                active=bool(data.get("active", True)),
                event_type_ids=[EVENT_TYPE_IDS[n] for n in data.get("event_names", [])],
                category_ids=[int(i) for i in data.get("category_ids", [])],
                created_at=state.now(),
            )
            state.webhooks[hook.id] = hook
            return jsonify(webhook_json(hook))

    @control("/deliveries", ["GET"])
    def deliveries() -> Any:
        return jsonify({"deliveries": [d.as_json() for d in emu.hooks.snapshot()]})

    @control("/deliveries/wait", ["POST"])
    def wait_deliveries() -> Any:
        timeout = float(body().get("timeout", 10))
        return jsonify({"idle": emu.hooks.wait_idle(timeout)})


class DiscourseControl:
    """A thin `requests` wrapper over `/_emulator/...`. Each method returns the parsed JSON.

    Raises:
        requests.HTTPError: when the control API answers 4xx/5xx (e.g. an unknown username).
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/") + "/_emulator"
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, json_body: dict[str, Any] | None = None) -> Any:
        response = self.session.request(
            method, self.url + path, json=json_body, timeout=self.timeout
        )
        if response.status_code >= 400:
            raise requests.HTTPError(
                f"{method} {path} -> {response.status_code}: {response.text}", response=response
            )
        return response.json()

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/reset")

    def create_user(self, username: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/users", {"username": username, **fields})

    def update_user(self, username: str, **fields: Any) -> dict[str, Any]:
        return self._call("PUT", f"/users/{username}", fields)

    def add_associated_account(
        self, username: str, *, uid: str, provider: str = "google_oauth2"
    ) -> dict[str, Any]:
        """`username` signed in through `provider` as `uid` (Google: the account id, `sub`)."""
        return self._call(
            "POST", f"/users/{username}/associated_accounts", {"provider": provider, "uid": uid}
        )

    def suspend_user(
        self, username: str, until: str | float | None = None, reason: str = "Suspended by test"
    ) -> dict[str, Any]:
        """Suspend until `until` (ISO 8601 or epoch seconds; None = forever)."""
        fields: dict[str, Any] = {"suspend_reason": reason}
        fields.update({"suspended_till": until} if until is not None else {"suspended": True})
        return self.update_user(username, **fields)

    def unsuspend_user(self, username: str) -> dict[str, Any]:
        return self.update_user(username, suspended=False, suspend_reason=None)

    def silence_user(
        self, username: str, until: str | float | None = None, reason: str = "Silenced by test"
    ) -> dict[str, Any]:
        """Silence until `until` (ISO 8601 or epoch seconds; None = forever)."""
        fields: dict[str, Any] = {"silence_reason": reason}
        fields.update({"silenced_till": until} if until is not None else {"silenced": True})
        return self.update_user(username, **fields)

    def unsilence_user(self, username: str) -> dict[str, Any]:
        return self.update_user(username, silenced=False, silence_reason=None)

    def deactivate_user(self, username: str) -> dict[str, Any]:
        return self.update_user(username, active=False)

    def activate_user(self, username: str) -> dict[str, Any]:
        return self.update_user(username, active=True)

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the forum's clock forward (every timestamp and time window follows)."""
        return self._call("POST", "/clock", {"advance": seconds})

    def clock(self) -> dict[str, Any]:
        return self._call("GET", "/clock")

    def add_chat_members(self, channel_id: int, usernames: list[str]) -> dict[str, Any]:
        return self._call("POST", f"/chat/channels/{channel_id}/members", {"usernames": usernames})

    def cdn_requests(self) -> dict[str, Any]:
        return self._call("GET", "/cdn/requests")

    def clear_cdn_requests(self) -> dict[str, Any]:
        return self._call("DELETE", "/cdn/requests")

    def create_api_key(
        self, key: str | None = None, username: str | None = None
    ) -> dict[str, Any]:
        return self._call("POST", "/api_keys", {"key": key, "username": username})

    def revoke_api_key(self, key: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api_keys/{key}")

    def create_category(self, name: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/categories", {"name": name, **fields})

    def create_post(self, username: str, raw: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/posts", {"username": username, "raw": raw, **fields})

    def edit_post(self, post_id: int, **fields: Any) -> dict[str, Any]:
        return self._call("PUT", f"/posts/{post_id}", fields)

    def delete_post(self, post_id: int, username: str | None = None) -> dict[str, Any]:
        return self._call("DELETE", f"/posts/{post_id}", {"username": username})

    def approve_pending_post(self, pending_id: int) -> dict[str, Any]:
        return self._call("POST", f"/pending_posts/{pending_id}/approve")

    def create_chat_channel(self, category_id: int, name: str, **fields: Any) -> dict[str, Any]:
        return self._call(
            "POST", "/chat/channels", {"chatable_id": category_id, "name": name, **fields}
        )

    def create_dm_channel(self, username: str, target_usernames: list[str]) -> dict[str, Any]:
        return self._call(
            "POST",
            "/chat/direct_messages",
            {"username": username, "target_usernames": target_usernames},
        )

    def send_chat(self, channel_id: int, username: str, message: str) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/chat/channels/{channel_id}/messages",
            {"username": username, "message": message},
        )

    def create_webhook(self, payload_url: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/webhooks", {"payload_url": payload_url, **fields})

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/state")

    def requests(self) -> dict[str, Any]:
        return self._call("GET", "/requests")

    def clear_requests(self) -> dict[str, Any]:
        return self._call("DELETE", "/requests")

    def add_fault(self, count: int = 1, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/faults", {"count": count, **fields})

    def clear_faults(self) -> dict[str, Any]:
        return self._call("DELETE", "/faults")

    def settings(self, **values: Any) -> dict[str, Any]:
        return self._call("POST", "/settings", values)

    def deliveries(self) -> dict[str, Any]:
        return self._call("GET", "/deliveries")

    def wait_deliveries_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("POST", "/deliveries/wait", {"timeout": timeout})
