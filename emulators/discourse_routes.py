"""Admin webhook routes and chat plugin routes of the Discourse emulator.

Role: `register_webhook_routes(api, emu)` serves `/admin/api/web_hooks…` (CRUD, ping, event
log, redelivery) and `register_chat_routes(api, emu)` serves `/chat/…`; `api` is the route
decorator of `discourse.create_app` (it names the route for `X-Discourse-Route` and the log).
Invariants: admin routes need an admin acting user; rules live in `WebhookDispatcher` / `Chat`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from flask import jsonify

from emulators.discourse_forum import truthy
from emulators.discourse_http import as_int, request_params, require_admin, require_user
from emulators.discourse_model import EVENT_TYPE_IDS, ApiError, WebHook, not_found, param_missing
from emulators.discourse_serialize import chat_channel_json
from emulators.discourse_webhooks import webhook_json

if TYPE_CHECKING:
    from emulators.discourse import Emulator


def register_webhook_routes(api: Any, emu: Emulator) -> None:  # noqa: C901 - a route table
    """Add the admin webhook routes."""
    state = emu.state

    def _apply_hook(hook: WebHook, body: dict[str, Any]) -> list[str]:
        errors: list[str] = []
        if "payload_url" in body:
            hook.payload_url = str(body["payload_url"] or "")
        if not re.match(r"https?://", hook.payload_url):
            errors.append("Payload URL is invalid")
        if "content_type" in body:
            hook.content_type = as_int(body["content_type"], "content_type")
        if "secret" in body:
            hook.secret = str(body["secret"] or "")
            if hook.secret and len(hook.secret) < 12:
                errors.append("Secret is too short (minimum is 12 characters)")
        for key in ("wildcard_web_hook", "active", "verify_certificate"):
            if key in body:
                setattr(hook, key, truthy(body[key]))
        if "web_hook_event_type_ids" in body:
            hook.event_type_ids = [int(i) for i in body["web_hook_event_type_ids"] or []]
        if "web_hook_event_types" in body:  # emulator convenience: names instead of ids
            hook.event_type_ids = [EVENT_TYPE_IDS[n] for n in body["web_hook_event_types"] or []]
        if "category_ids" in body:
            hook.category_ids = [int(i) for i in body["category_ids"] or []]
        if "group_ids" in body:
            hook.group_ids = [int(i) for i in body["group_ids"] or []]
        if "tag_names" in body:
            hook.tag_names = [str(t) for t in body["tag_names"] or []]
        if not hook.wildcard_web_hook and not hook.event_type_ids:
            errors.append("Web hook event types can't be blank")
        return errors

    @api("/admin/api/web_hooks", ["GET"], "admin/web_hooks/index")
    def web_hooks_index() -> Any:
        require_admin()
        with state.lock:
            hooks = [webhook_json(h) for h in state.webhooks.values()]
        return jsonify({"web_hooks": hooks, "total_rows_web_hooks": len(hooks)})

    @api("/admin/api/web_hooks", ["POST"], "admin/web_hooks/create")
    def web_hooks_create() -> Any:
        require_admin()
        body = request_params().get("web_hook")
        if not isinstance(body, dict):
            raise param_missing("web_hook")
        with state.lock:
            hook = WebHook(id=0, payload_url="", created_at=state.now())
            errors = _apply_hook(hook, body)
            if errors:
                raise ApiError(422, {"errors": errors, "error_type": "record_invalid"})
            hook.id = state.next_id("web_hook")
            state.webhooks[hook.id] = hook
            return jsonify({"web_hook": webhook_json(hook)})

    @api("/admin/api/web_hooks/<int:id>", ["GET"], "admin/web_hooks/show")
    def web_hooks_show(id: int) -> Any:
        require_admin()
        with state.lock:
            hook = state.webhooks.get(id)
            if hook is None:
                raise not_found()
            return jsonify({"web_hook": webhook_json(hook)})

    @api("/admin/api/web_hooks/<int:id>", ["PUT"], "admin/web_hooks/update")
    def web_hooks_update(id: int) -> Any:
        require_admin()
        body = request_params().get("web_hook")
        if not isinstance(body, dict):
            raise param_missing("web_hook")
        with state.lock:
            hook = state.webhooks.get(id)
            if hook is None:
                raise not_found()
            errors = _apply_hook(hook, body)
            if errors:
                raise ApiError(422, {"errors": errors, "error_type": "record_invalid"})
            return jsonify({"web_hook": webhook_json(hook)})

    @api("/admin/api/web_hooks/<int:id>", ["DELETE"], "admin/web_hooks/destroy")
    def web_hooks_destroy(id: int) -> Any:
        require_admin()
        with state.lock:
            if state.webhooks.pop(id, None) is None:
                raise not_found()
        return jsonify({"success": "OK"})

    @api("/admin/api/web_hooks/<int:id>/ping", ["POST"], "admin/web_hooks/ping")
    def web_hooks_ping(id: int) -> Any:
        require_admin()
        with state.lock:
            if id not in state.webhooks:
                raise not_found()
        emu.hooks.ping(id)
        return jsonify({"success": "OK"})

    @api("/admin/api/web_hook_events/<int:id>", ["GET"], "admin/web_hooks/list_events")
    @api("/admin/api/web_hooks/<int:id>/events", ["GET"], "admin/web_hooks/list_events")
    def web_hook_events(id: int) -> Any:
        require_admin()
        with state.lock:
            if id not in state.webhooks:
                raise not_found()
        events = [d.as_event_json() for d in emu.hooks.snapshot() if d.web_hook_id == id]
        events.reverse()
        return jsonify(
            {
                "web_hook_events": events,
                "total_rows_web_hook_events": len(events),
                "load_more_web_hook_events": f"/admin/api/web_hooks/{id}/events.json?offset=50",
            }
        )

    @api(
        "/admin/api/web_hooks/<int:web_hook_id>/events/<int:event_id>/redeliver",
        ["POST"],
        "admin/web_hooks/redeliver_event",
    )
    def web_hook_redeliver(web_hook_id: int, event_id: int) -> Any:
        require_admin()
        if not emu.hooks.redeliver(web_hook_id, event_id):
            raise not_found()
        event = next(
            d.as_event_json()
            for d in emu.hooks.snapshot()
            if d.event_id == event_id and d.web_hook_id == web_hook_id
        )
        return jsonify({"web_hook_event": event})

    @api(
        "/admin/api/web_hooks/<int:id>/events/failed_redeliver",
        ["POST"],
        "admin/web_hooks/redeliver_failed_events",
    )
    def web_hook_redeliver_failed(id: int) -> Any:
        require_admin()
        failed = {
            d.event_id
            for d in emu.hooks.snapshot()
            if d.web_hook_id == id and not d.dropped and not (200 <= (d.status or 0) < 300)
        }
        delivered = {
            d.event_id
            for d in emu.hooks.snapshot()
            if d.web_hook_id == id and 200 <= (d.status or 0) < 300
        }
        ids = sorted(failed - delivered)
        for event_id in ids:
            emu.hooks.redeliver(id, event_id)
        return jsonify({"event_ids": ids})


def register_chat_routes(api: Any, emu: Emulator) -> None:
    """Add the chat plugin routes."""
    state = emu.state

    @api("/chat/api/channels", ["POST"], "chat/api/channels/create")
    def chat_channel_create() -> Any:
        params = request_params()
        nested = params.get("channel")
        channel = nested if isinstance(nested, dict) else params
        return jsonify(emu.chat.create_category_channel(require_user(), channel))

    @api("/chat/api/channels", ["GET"], "chat/api/channels/index")
    def chat_channels_index() -> Any:
        user = require_user()
        with state.lock:
            channels = [
                chat_channel_json(state, c, user)
                for c in state.chat_channels.values()
                if c.chatable_type == "Category"
            ]
        return jsonify({"channels": channels, "meta": {"load_more_url": None}})

    @api("/chat/api/channels/<channel_id>", ["GET"], "chat/api/channels/show")
    def chat_channel_show(channel_id: str) -> Any:
        user = require_user()
        with state.lock:
            channel = emu.chat.channel(channel_id, user)
            return jsonify({"channel": chat_channel_json(state, channel, user)})

    @api(
        "/chat/api/channels/<int:channel_id>/memberships/me",
        ["POST"],
        "chat/api/channels_current_user_membership/create",
    )
    def chat_join(channel_id: int) -> Any:
        return jsonify(emu.chat.join(require_user(), channel_id))

    @api("/chat/api/direct-message-channels", ["POST"], "chat/api/direct_messages/create")
    def chat_dm_create() -> Any:
        return jsonify(emu.chat.direct_message_channel(require_user(), request_params()))

    @api("/chat/<channel_id>", ["POST"], "chat/api/channel_messages/create")
    def chat_send(channel_id: str) -> Any:
        return jsonify(emu.chat.send(require_user(), channel_id, request_params()))

    @api(
        "/chat/api/channels/<int:channel_id>/messages/<int:message_id>",
        ["PUT"],
        "chat/api/channel_messages/update",
    )
    def chat_edit(channel_id: int, message_id: int) -> Any:
        return jsonify(emu.chat.edit(require_user(), channel_id, message_id, request_params()))

    @api(
        "/chat/api/channels/<int:channel_id>/messages/<int:message_id>",
        ["DELETE"],
        "chat/api/channel_messages/destroy",
    )
    def chat_trash(channel_id: int, message_id: int) -> Any:
        return jsonify(emu.chat.trash(require_user(), channel_id, message_id))

    @api(
        "/chat/api/channels/<int:channel_id>/messages/<int:message_id>/restore",
        ["PUT"],
        "chat/api/channel_messages/restore",
    )
    def chat_restore(channel_id: int, message_id: int) -> Any:
        return jsonify(emu.chat.restore(require_user(), channel_id, message_id))

    @api(
        "/chat/api/channels/<int:channel_id>/messages", ["GET"], "chat/api/channel_messages/index"
    )
    def chat_list(channel_id: int) -> Any:
        return jsonify(emu.chat.list_messages(require_user(), channel_id, request_params()))
