"""A stateful fake Discourse forum (admin API, chat plugin, signed webhooks) for tests and demos.

Role: `create_app(...)` is the Flask app factory; `DiscourseEmulator.start(...)` serves it on a
loopback port in a thread and gives a `DiscourseControl` client for the `/_emulator/` control API
(documented in `emulators/README.md`). Run alone with
`python -m emulators.discourse --port 8888 [--host 127.0.0.1] [--api-key K]`.
Invariants:
- the behaviour follows `shared/reference/discourse-api.md` (checklist §11): auth, error envelopes,
  validations, limits, webhook semantics; rules live in `discourse_forum.py` / `discourse_chat.py`;
- control routes (`/_emulator/...`) need no auth and are never logged nor rate-limited;
- every API request is logged with its path template (`"GET /t/{id}.json"`) for the counts;
- a trailing `.json` is stripped before routing (and remembered): it selects the JSON format;
- an unexpected exception in a handler or the webhook worker is an emulator bug: recorded
  (`DiscourseEmulator.errors`, `check_errors()`), logged, and (in a handler) answered 500
  `{"errors": ["emulator bug: ..."], "error_type": "emulator_bug"}` (`emulators/_errors.py`).
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from emulators._errors import HandlerError, HandlerErrors
from emulators._server import ServerHandle
from emulators.discourse_cdn import CdnServer
from emulators.discourse_chat import Chat
from emulators.discourse_control import DiscourseControl, register_control
from emulators.discourse_forum import Forum, ruby_to_i, truthy
from emulators.discourse_http import (
    as_int,
    current_user,
    image_size,
    request_params,
    require_staff,
    require_user,
    serves_files,
    wants_json,
)
from emulators.discourse_model import (
    MSG_READ_ONLY,
    MSG_SLOW_DOWN_IP,
    ApiError,
    ForumState,
    Upload,
    User,
    base62,
    invalid_access,
    invalid_credentials,
    invalid_parameters,
    iso,
    json_error,
    not_found,
    param_missing,
    rate_limited,
    sha1_hex,
    username_errors,
    wait_to_int,
)
from emulators.discourse_routes import register_chat_routes, register_webhook_routes
from emulators.discourse_serialize import (
    category_json,
    post_json,
    topic_view_json,
    upload_json,
    user_json,
)
from emulators.discourse_webhooks import WebhookDispatcher

logger = logging.getLogger(__name__)

EMPTY_HTML = "<!DOCTYPE html>\n<html><head><title>Discourse</title></head><body></body></html>\n"
TOPIC_CHUNK = 20
LATEST_LIMIT = 50
TOPIC_LIST_PER_PAGE = 30


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int
    api_username: str | None
    template: str

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "api_username": self.api_username,
        }


class _JsonSuffix:
    """WSGI middleware: strip a trailing `.json`, remembering it selected the JSON format."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        environ["emu.original_path"] = path
        if path.endswith(".json"):
            environ["PATH_INFO"] = path[: -len(".json")]
            environ["emu.json"] = True
        return self.app(environ, start_response)


class Emulator:
    """Everything one running forum needs: state, rules, webhook worker, request log, faults."""

    def __init__(self, api_key: str | None, clock: Callable[[], float] = time.time) -> None:
        self.state = ForumState(api_key, clock)
        self.cdn = CdnServer()
        # Emulator bugs; kept across `reset()` (a reset must not hide a bug from the test).
        self.errors = HandlerErrors("discourse")
        self.hooks = WebhookDispatcher(self.state, errors=self.errors)
        self.forum = Forum(self.state, self.hooks)
        self.chat = Chat(self.state, self.hooks)
        self.log_lock = threading.Lock()
        self.request_log: list[LoggedRequest] = []
        self.faults: list[dict[str, Any]] = []
        self.instance_url = ""

    def reset(self) -> None:
        self.hooks.reset()
        self.state.reset()
        self.state.settings["instance_url"] = self.instance_url
        self.cdn.clear()
        with self.log_lock:
            self.request_log.clear()
            self.faults.clear()


def _topic_list_item(emu: Emulator, topic_id: int) -> dict[str, Any]:
    topic = emu.state.topics[topic_id]
    posts = emu.state.topic_posts(topic.id)
    return {
        "id": topic.id,
        "title": topic.title,
        "fancy_title": topic.title,
        "slug": topic.slug,
        "posts_count": len(posts),
        "reply_count": max(0, len(posts) - 1),
        "highest_post_number": topic.highest_post_number,
        "image_url": None,
        "created_at": iso(topic.created_at),
        "last_posted_at": iso(topic.last_posted_at),
        "bumped": True,
        "bumped_at": iso(topic.bumped_at),
        "archetype": topic.archetype,
        "unseen": False,
        "pinned": False,
        "unpinned": None,
        "visible": topic.visible,
        "closed": topic.closed,
        "archived": topic.archived,
        "bookmarked": None,
        "liked": None,
        "views": 1,
        "like_count": 0,
        "has_summary": False,
        "last_poster_username": emu.state.users.get(
            topic.last_poster_id or topic.user_id, emu.state.users[-1]
        ).username,
        "category_id": topic.category_id,
        "pinned_globally": False,
        "featured_link": None,
        "posters": [],
        "excerpt": "",
    }


# --- the app --------------------------------------------------------------------------------


def create_app(emu: Emulator) -> Flask:  # noqa: C901 - one route table, kept together on purpose
    """Build the Flask app serving the API, chat, webhooks admin and the control API."""
    app = Flask("discourse_emulator")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    route_names: dict[str, str] = {}
    state = emu.state

    def api(rule: str, methods: list[str], name: str) -> Any:
        def decorator(func: Any) -> Any:
            endpoint = f"{name}:{rule}:{','.join(methods)}"
            route_names[endpoint] = name
            app.add_url_rule(rule, endpoint=endpoint, view_func=func, methods=methods)
            return func

        return decorator

    def control(rule: str, methods: list[str]) -> Any:
        def decorator(func: Any) -> Any:
            endpoint = f"control:{rule}:{','.join(methods)}"
            app.add_url_rule(
                "/_emulator" + rule, endpoint=endpoint, view_func=func, methods=methods
            )
            return func

        return decorator

    # --- pipeline -------------------------------------------------------------------------------

    @app.before_request
    def before() -> Response | None:
        g.user = None
        g.admin_key = False
        g.ip_keys = []
        if request.path.startswith("/_emulator/"):
            return None
        fault = _take_fault()
        if fault is not None:
            if fault.get("latency_ms"):
                time.sleep(int(fault["latency_ms"]) / 1000)
            if fault.get("drop_connection"):
                sock = request.environ.get("werkzeug.socket")
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                raise ApiError(500, {"errors": ["connection dropped"]})
            if fault.get("status"):
                status = int(fault["status"])
                raise ApiError(status, {"errors": [f"injected fault {status}"]})
        _per_ip_limit()
        if not wants_json() and request.method == "GET" and not serves_files():
            return Response(EMPTY_HTML, 200, content_type="text/html; charset=utf-8")
        _authenticate()
        if state.settings["read_only"] and request.method != "GET":
            raise json_error(503, [MSG_READ_ONLY], "read_only")
        return None

    def _take_fault() -> dict[str, Any] | None:
        with emu.log_lock:
            for fault in emu.faults:
                if fault.get("method") and fault["method"].upper() != request.method:
                    continue
                if fault.get("path_regex") and not re.search(
                    fault["path_regex"], request.environ.get("emu.original_path", request.path)
                ):
                    continue
                fault["count"] -= 1
                if fault["count"] <= 0:
                    emu.faults.remove(fault)
                return dict(fault)
        return None

    def _per_ip_limit() -> None:
        if not state.settings["per_ip_limit_enabled"]:
            return
        ip = request.remote_addr or "unknown"
        with state.lock:
            now = state.now()
            checks = [
                ("ip_10_secs_limit", state.settings["max_reqs_per_ip_per_10_seconds"], 10),
                ("ip_60_secs_limit", state.settings["max_reqs_per_ip_per_minute"], 60),
            ]
            for code, max_count, secs in checks:
                wait = state.limiter.available_in(
                    f"{code}:{ip}", int(max_count), state.scaled(secs), now
                )
                if wait > 0:
                    seconds = wait_to_int(wait)
                    raise ApiError(
                        429,
                        MSG_SLOW_DOWN_IP.format(wait=seconds, code=code),
                        {"Retry-After": str(seconds), "Discourse-Rate-Limit-Error-Code": code},
                    )
            for code, max_count, secs in checks:
                state.limiter.perform(f"{code}:{ip}", int(max_count), state.scaled(secs), now)
                g.ip_keys.append(f"{code}:{ip}")

    def _authenticate() -> None:
        key = request.headers.get("Api-Key")
        if key is None:
            return
        with state.lock:
            api_key = state.api_keys.get(key)
            if api_key is None or api_key.revoked:
                raise invalid_credentials()
            username = request.headers.get("Api-Username")
            user: User | None = None
            if api_key.user_id is not None:
                owner = state.users.get(api_key.user_id)
                if owner is not None and (
                    username is None or username.lower() == owner.username_lower
                ):
                    user = owner
            elif username is not None:
                user = state.user_by_username(username)
            elif request.headers.get("Api-User-Id") is not None:
                try:
                    user = state.users.get(int(request.headers["Api-User-Id"]))
                except ValueError:
                    user = None
            elif request.headers.get("Api-User-External-Id") is not None:
                ext = request.headers["Api-User-External-Id"]
                user = next((u for u in state.users.values() if u.external_id == ext), None)
            if user is None:
                raise invalid_credentials()
            # `raise Discourse::InvalidAccess if current_user.suspended? || !current_user.active`:
            # the generic 403, not the bad-key message (the key itself was fine).
            if state.is_suspended(user) or not user.active:
                raise invalid_access()
            wait = state.limiter.perform(
                "admin_api_min",
                int(state.settings["max_admin_api_reqs_per_minute"]),
                state.scaled(60),
                state.now(),
            )
            if wait > 0:
                raise rate_limited("admin_api_key", wait_to_int(wait), "admin_api_key_rate_limit")
            g.user = user
            g.admin_key = True

    @app.errorhandler(ApiError)
    def on_api_error(err: ApiError) -> Response:
        if isinstance(err.body, str):
            response = Response(err.body, err.status, content_type="text/plain; charset=utf-8")
        elif wants_json():
            response = jsonify(err.body)
            response.status_code = err.status
        else:
            message = "; ".join(err.body.get("errors", [])) if isinstance(err.body, dict) else ""
            response = Response(
                f"<!DOCTYPE html><html><body><p>{message}</p></body></html>",
                err.status,
                content_type="text/html; charset=utf-8",
            )
        for name, value in err.headers.items():
            response.headers[name] = value
        return response

    @app.errorhandler(HTTPException)
    def on_http_error(err: HTTPException) -> Response:
        if err.code == 404:
            return on_api_error(not_found())
        if err.code == 405:
            return on_api_error(not_found())
        return on_api_error(json_error(err.code or 500, [err.description or "error"]))

    @app.errorhandler(Exception)
    def on_unexpected(err: Exception) -> Response:
        # Not an ApiError nor an HTTPException (their handlers above win): a bug in the emulator.
        path = request.environ.get("emu.original_path", request.path)
        bug = emu.errors.record(request.method, path, err)
        return on_api_error(json_error(500, [bug.message()], "emulator_bug"))

    @app.after_request
    def after(response: Response) -> Response:
        if request.path.startswith("/_emulator/"):
            return response
        user = current_user()
        if user is not None:
            response.headers["X-Discourse-Username"] = user.username
        endpoint = request.url_rule.endpoint if request.url_rule is not None else None
        if endpoint in route_names:
            response.headers["X-Discourse-Route"] = route_names[endpoint]
        if g.get("admin_key") and response.status_code < 400 and g.get("ip_keys"):
            # Newest core rolls the per-IP counters back for successful admin-API requests.
            with state.lock:
                for key in g.ip_keys:
                    state.limiter.rollback(key)
        template = request.url_rule.rule if request.url_rule is not None else request.path
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", template)
        if request.environ.get("emu.json"):
            template += ".json"
        entry = LoggedRequest(
            method=request.method,
            path=request.environ.get("emu.original_path", request.path),
            query=request.query_string.decode(errors="replace"),
            status=response.status_code,
            api_username=user.username if user else request.headers.get("Api-Username"),
            template=f"{request.method} {template}",
        )
        with emu.log_lock:
            emu.request_log.append(entry)
        return response

    # --- posts and topics -------------------------------------------------------------------

    @api("/posts", ["POST"], "posts/create")
    def posts_create() -> Any:
        user = require_user()
        params = request_params()
        memo_extra = "|".join(
            [
                request.remote_addr or "",
                request.headers.get("User-Agent", ""),
                request.headers.get("Referer", ""),
            ]
        )
        return jsonify(emu.forum.create_post(user, params, api=True, memo_extra=memo_extra))

    @api("/posts", ["GET"], "posts/latest")
    def posts_latest() -> Any:
        viewer = current_user()
        params = request_params()
        with state.lock:
            # LatestPostsQuery#public_posts: public, `.visible` (not hidden), regular posts in
            # categories the viewer can see (`Category.secured(guardian)`).
            posts = [
                p
                for p in state.posts.values()
                if p.post_type == 1
                and p.deleted_at is None
                and not p.hidden
                and state.topics[p.topic_id].archetype == "regular"
                and state.topics[p.topic_id].deleted_at is None
                and state.topics[p.topic_id].visible
                and state.can_see_category(state.topics[p.topic_id].category_id, viewer)
            ]
            # `params[:before].to_i`: never a 400; 0, negative or garbage means "no cursor".
            before = ruby_to_i(params.get("before"))
            if before > 0:
                if state.settings["posts_before_inclusive"]:
                    posts = [p for p in posts if p.id <= before]  # old cores
                else:
                    posts = [p for p in posts if p.id < before]  # LatestPostsQuery
            posts.sort(key=lambda p: p.id, reverse=True)
            body = [
                post_json(state, p, viewer, add_raw=True, add_title=True)
                for p in posts[:LATEST_LIMIT]
            ]
        return jsonify({"latest_posts": body})

    @api("/posts/<int:id>", ["GET"], "posts/show")
    def posts_show(id: int) -> Any:
        viewer = current_user()
        with state.lock:
            post = emu.forum.visible_post(id, viewer)
            return jsonify(post_json(state, post, viewer, add_raw=True))

    @api("/posts/<int:id>/raw", ["GET"], "posts/markdown_id")
    def posts_raw(id: int) -> Any:
        with state.lock:
            post = emu.forum.visible_post(id, current_user())
            return Response(post.raw, 200, content_type="text/plain; charset=utf-8")

    @api("/posts/by_number/<int:topic_id>/<int:post_number>", ["GET"], "posts/by_number")
    def posts_by_number(topic_id: int, post_number: int) -> Any:
        viewer = current_user()
        with state.lock:
            post = state.post_by_number(topic_id, post_number)
            if post is None:
                raise not_found()
            post = emu.forum.visible_post(post.id, viewer)
            return jsonify(post_json(state, post, viewer, add_raw=True))

    @api("/posts/<int:id>", ["PUT"], "posts/update")
    def posts_update(id: int) -> Any:
        user = require_user()
        params = request_params()
        post = params.get("post")
        if not isinstance(post, dict) or not post:
            raise param_missing("post")
        category_id = post.get("category_id")
        return jsonify(
            emu.forum.edit_post(
                user,
                id,
                post.get("raw"),
                params.get("title", post.get("title")),
                as_int(category_id, "category_id") if category_id not in (None, "") else None,
                edit_reason=post.get("edit_reason"),
                original_text=post.get("original_text", post.get("raw_old")),
            )
        )

    @api("/posts/<int:id>", ["DELETE"], "posts/destroy")
    def posts_destroy(id: int) -> Any:
        user = require_user()
        emu.forum.delete_post(user, id)
        return Response(b"", 200, content_type="application/json; charset=utf-8")

    @api("/posts/<int:id>/recover", ["PUT"], "posts/recover")
    def posts_recover(id: int) -> Any:
        return jsonify(emu.forum.recover_post(require_user(), id))

    def _topic_show(id: int, slug: str | None) -> Any:
        viewer = current_user()
        params = request_params()
        with state.lock:
            topic = state.topics.get(id)
            if topic is None or not emu.forum.can_see_topic(topic, viewer):
                raise not_found()
            if slug is not None and slug != topic.slug:
                location = f"/t/{topic.slug}/{topic.id}.json"
                if request.query_string:
                    location += "?" + request.query_string.decode()
                return Response("", 301, headers={"Location": location})
            staff = bool(viewer and viewer.staff)
            posts = [p for p in state.topic_posts(topic.id) if staff or p.post_type != 4]
            page = as_int(params.get("page") or 1, "page")
            chunk = 1000 if truthy(params.get("print")) else TOPIC_CHUNK
            start = (max(page, 1) - 1) * chunk
            if page > 1 and start >= len(posts):
                raise not_found()
            include_raw = str(params.get("include_raw", "")) in ("1", "true")
            return jsonify(
                topic_view_json(state, topic, viewer, posts[start : start + chunk], include_raw)
            )

    @api("/t/<int:id>", ["GET"], "topics/show")
    def topics_show(id: int) -> Any:
        return _topic_show(id, None)

    @api("/t/<slug>/<int:id>", ["GET"], "topics/show")
    def topics_show_slug(slug: str, id: int) -> Any:
        return _topic_show(id, slug)

    @api("/t/<int:id>/posts", ["GET"], "topics/posts")
    def topics_posts(id: int) -> Any:
        viewer = current_user()
        params = request_params()
        with state.lock:
            topic = state.topics.get(id)
            if topic is None or not emu.forum.can_see_topic(topic, viewer):
                raise not_found()
            visible = [
                p
                for p in state.topic_posts(topic.id, include_deleted=True)
                if emu.forum.can_see_post(p, viewer)
            ]
            ids = params.get("post_ids") or params.get("post_ids[]")
            if ids:
                if not isinstance(ids, list):
                    ids = [ids]
                wanted = {as_int(i, "post_ids") for i in ids}
                chosen = [p for p in visible if p.id in wanted]
            elif params.get("post_number") not in (None, ""):
                number = as_int(params["post_number"], "post_number")
                if str(params.get("asc", "true")).lower() == "true":
                    chosen = [p for p in visible if p.post_number > number][:TOPIC_CHUNK]
                else:
                    chosen = [p for p in visible if p.post_number < number][-TOPIC_CHUNK:]
            else:
                chosen = visible[:TOPIC_CHUNK]
            include_raw = str(params.get("include_raw", "")) in ("1", "true")
            posts = [
                post_json(state, p, viewer, add_raw=include_raw, for_stream=True) for p in chosen
            ]
            return jsonify({"post_stream": {"posts": posts}, "id": topic.id})

    @api("/t/<int:id>/post_ids", ["GET"], "topics/post_ids")
    def topics_post_ids(id: int) -> Any:
        viewer = current_user()
        params = request_params()
        with state.lock:
            topic = state.topics.get(id)
            if topic is None or not emu.forum.can_see_topic(topic, viewer):
                raise not_found()
            number = as_int(params.get("post_number") or 0, "post_number")
            ids = [
                p.id
                for p in state.topic_posts(topic.id)
                if p.post_number > number and emu.forum.can_see_post(p, viewer)
            ]
            return jsonify({"post_ids": ids})

    @api("/t/<int:id>", ["DELETE"], "topics/destroy")
    def topics_destroy(id: int) -> Any:
        emu.forum.delete_topic(require_user(), id)
        return Response(b"", 200, content_type="application/json; charset=utf-8")

    @api("/t/<int:id>/recover", ["PUT"], "topics/recover")
    def topics_recover(id: int) -> Any:
        emu.forum.recover_topic(require_user(), id)
        return Response(b"", 200, content_type="application/json; charset=utf-8")

    @api("/t/<slug>/<int:id>", ["PUT"], "topics/update")
    def topics_update(slug: str, id: int) -> Any:
        params = request_params()
        topic = params.get("topic")
        nested: dict[str, Any] = topic if isinstance(topic, dict) else {}
        return jsonify(
            emu.forum.update_topic(
                require_user(),
                id,
                params.get("title", nested.get("title")),
                params.get("category_id", nested.get("category_id")),
            )
        )

    @api("/t/external_id/<external_id>", ["GET"], "topics/show_by_external_id")
    def topics_by_external_id(external_id: str) -> Any:
        viewer = current_user()
        with state.lock:
            topic = next((t for t in state.topics.values() if t.external_id == external_id), None)
            if topic is None or not emu.forum.can_see_topic(topic, viewer):
                raise not_found()
            location = f"/t/{topic.slug}/{topic.id}.json"
            kept = {k: v for k, v in request.args.items() if k in ("page", "print")}
            if kept:
                location += "?" + "&".join(f"{k}={v}" for k, v in kept.items())
            return Response("", 301, headers={"Location": location})

    def _topic_list(topics: list[int], page: int, more_base: str) -> Any:
        chosen = topics[page * TOPIC_LIST_PER_PAGE : (page + 1) * TOPIC_LIST_PER_PAGE]
        topic_list: dict[str, Any] = {
            "can_create_topic": current_user() is not None,
            "per_page": TOPIC_LIST_PER_PAGE,
            "top_tags": [],
            "topics": [_topic_list_item(emu, t) for t in chosen],
        }
        if len(chosen) == TOPIC_LIST_PER_PAGE:
            topic_list["more_topics_url"] = f"{more_base}?page={page + 1}"
        return jsonify({"users": [], "primary_groups": [], "topic_list": topic_list})

    def _listable(category_ids: set[int] | None) -> list[int]:
        topics = [
            t
            for t in state.topics.values()
            if t.deleted_at is None
            and t.archetype == "regular"
            and t.visible
            and (category_ids is None or t.category_id in category_ids)
        ]
        topics.sort(key=lambda t: (t.bumped_at, t.id), reverse=True)
        return [t.id for t in topics]

    @api("/latest", ["GET"], "list/latest")
    def latest() -> Any:
        page = as_int(request_params().get("page") or 0, "page")
        with state.lock:
            return _topic_list(_listable(None), page, "/latest")

    @api("/c/<slug>/<int:id>", ["GET"], "list/category_default")
    @api("/c/<slug>/<int:id>/l/latest", ["GET"], "list/category_latest")
    def category_topics(slug: str, id: int) -> Any:
        page = as_int(request_params().get("page") or 0, "page")
        with state.lock:
            category = state.categories.get(id)
            if category is None:
                raise not_found()
            if slug != category.slug:
                return Response("", 301, headers={"Location": f"/c/{category.slug}/{id}.json"})
            return _topic_list(_listable({id}), page, f"/c/{category.slug}/{category.id}/l/latest")

    # --- categories ---------------------------------------------------------------------------

    @api("/categories", ["GET"], "categories/index")
    def categories_index() -> Any:
        params = request_params()
        with state.lock:
            parent = params.get("parent_category_id")
            parent_id: int | None = None
            if parent not in (None, ""):
                found = next(
                    (
                        c
                        for c in state.categories.values()
                        if str(c.id) == str(parent) or c.slug == parent
                    ),
                    None,
                )
                if found is None:
                    raise not_found()
                parent_id = found.id
            cats = [c for c in state.categories.values() if c.parent_category_id == parent_id]
            body = []
            for category in sorted(cats, key=lambda c: (c.position, c.id)):
                item = category_json(state, category, detailed=False)
                if truthy(params.get("include_subcategories")):
                    item["subcategory_list"] = [
                        category_json(state, c)
                        for c in state.categories.values()
                        if c.parent_category_id == category.id
                    ]
                body.append(item)
            user = current_user()
            return jsonify(
                {
                    "category_list": {
                        "can_create_category": bool(user and user.staff),
                        "can_create_topic": user is not None,
                        "categories": body,
                    }
                }
            )

    @api("/categories", ["POST"], "categories/create")
    def categories_create() -> Any:
        require_staff()
        category = emu.forum.create_category(request_params())
        with state.lock:
            return jsonify({"category": category_json(state, category)})

    @api("/c/<int:id>/show", ["GET"], "categories/show")
    def categories_show(id: int) -> Any:
        with state.lock:
            category = state.categories.get(id)
            if category is None:
                raise not_found()
            return jsonify({"category": category_json(state, category)})

    # --- users -----------------------------------------------------------------------------------

    @api("/users", ["POST"], "users/create")
    def users_create() -> Any:
        params = request_params()
        caller = current_user()
        for name in ("email", "username"):
            if params.get(name) in (None, ""):
                raise param_missing(name)
        with state.lock:
            s = state.settings
            if not s["allow_new_registrations"]:
                return jsonify(
                    {
                        "success": False,
                        "message": "New account registrations are not allowed at this time.",
                    }
                )
            username = str(params["username"])
            email = str(params["email"])
            name = str(params.get("name") or "")
            password = str(params.get("password") or "")
            taken = state.user_by_username(username) is not None
            messages, reserved = username_errors(username, s, taken)
            if reserved:
                return jsonify({"success": False, "message": "That username is not allowed."})
            errors: dict[str, list[str]] = {}
            full: list[str] = []
            existing = state.user_by_email(email)
            if existing is not None and existing.staged:
                existing.staged = False
                existing.username = username
                existing.name = name or username
                return jsonify(_user_created(existing, caller, params))
            if existing is not None:
                if s["hide_email_address_taken"]:
                    return jsonify(
                        {"success": True, "active": False, "message": _activation_message(email)}
                    )
                errors["email"] = ["has already been taken"]
                full.append("Primary email has already been taken")
            elif not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
                errors["email"] = ["is invalid"]
                full.append("Primary email is invalid")
            if messages:
                errors["username"] = messages
                full += [f"Username {m}" for m in messages]
            if not password:
                errors["password"] = ["can't be blank"]
                full.append("Password can't be blank")
            elif len(password) < s["min_password_length"]:
                errors["password"] = [
                    f"is too short (minimum is {s['min_password_length']} characters)"
                ]
                full.append(
                    f"Password is too short (minimum is {s['min_password_length']} characters)"
                )
            if errors:
                return jsonify(
                    {
                        "success": False,
                        "message": "\n".join(full),
                        "errors": errors,
                        "values": {"name": name, "username": username, "email": email},
                        "is_developer": False,
                    }
                )
            admin_api = bool(caller and caller.admin and g.get("admin_key"))
            user = User(
                id=state.next_id("user"),
                username=username,
                name=name or username,
                email=email,
                trust_level=int(s["default_trust_level"]),
                active=truthy(params.get("active")) if admin_api else False,
                approved=truthy(params.get("approved"))
                if admin_api
                else not s["must_approve_users"],
                created_at=state.now(),
                password=password,
            )
            ext = params.get("external_ids")
            if isinstance(ext, dict) and ext:
                user.external_id = str(next(iter(ext.values())))
            state.users[user.id] = user
            return jsonify(_user_created(user, caller, params))

    def _activation_message(email: str) -> str:
        return (
            f"<p>You’re almost done! We sent an activation mail to <b>{email}</b>. "
            "Please follow the instructions in the mail to activate your account.</p>"
            "<p>If it doesn’t arrive, check your spam folder.</p>"
        )

    def _user_created(user: User, caller: User | None, params: dict[str, Any]) -> dict[str, Any]:
        if state.settings["must_approve_users"] and not user.approved:
            message = (
                "Thanks for signing up. We will notify you when your account has been approved."
            )
        elif user.active:
            message = "Your account is activated and ready to use."
        else:
            message = _activation_message(user.email)
        body: dict[str, Any] = {"success": True, "active": user.active, "message": message}
        if not state.settings["hide_email_address_taken"]:
            body["user_id"] = user.id
        return body

    def _user_or_404(username: str) -> User:
        user = state.user_by_username(username)
        viewer = current_user()
        if user is None or (not user.active and not (viewer and viewer.staff)):
            raise not_found()
        return user

    @api("/u/<username>", ["GET"], "users/show")
    def users_show(username: str) -> Any:
        with state.lock:
            user = _user_or_404(username)
            viewer = current_user()
            detailed = bool(viewer and (viewer.staff or viewer.id == user.id))
            return jsonify({"user_badges": [], "user": user_json(user, state, detailed)})

    @api("/u/by-external/<external_id>", ["GET"], "users/show")
    def users_by_external(external_id: str) -> Any:
        with state.lock:
            user = next((u for u in state.users.values() if u.external_id == external_id), None)
            if user is None:
                raise not_found()
            viewer = current_user()
            detailed = bool(viewer and viewer.staff)
            return jsonify({"user_badges": [], "user": user_json(user, state, detailed)})

    @api("/u/by-external/<provider>/<external_id>", ["GET"], "users/show")
    def users_by_provider_external(provider: str, external_id: str) -> Any:
        # ApplicationController#fetch_user_from_params, in its order: admins only (the id may be
        # sensitive; anonymous callers and moderators alike get InvalidAccess), then an enabled
        # managed authenticator of that name (else 404), then the UserAssociatedAccount row. The
        # external-id branch does not filter inactive users; users#show then serializes for
        # staff, the shape of `/u/{username}.json`.
        viewer = current_user()
        if viewer is None or not viewer.admin:
            raise invalid_access()
        with state.lock:
            if not state.authenticator_enabled(provider):
                raise not_found()
            account = state.associated_account(provider, provider_uid=external_id)
            user = state.users.get(account.user_id) if account is not None else None
            if user is None:
                raise not_found()
            return jsonify({"user_badges": [], "user": user_json(user, state, True)})

    @api("/admin/users/<int:id>", ["GET"], "admin/users/show")
    def admin_user(id: int) -> Any:
        require_staff()
        with state.lock:
            user = state.users.get(id)
            if user is None:
                raise not_found()
            return jsonify(user_json(user, state, True))

    @api("/admin/users/list/<flag>", ["GET"], "admin/users/index")
    def admin_users_list(flag: str) -> Any:
        require_staff()
        params = request_params()
        with state.lock:
            users = [u for u in state.users.values() if u.id > 0]
            if flag == "active":
                users = [u for u in users if u.active]
            elif flag == "staff":
                users = [u for u in users if u.staff]
            elif flag == "suspended":
                users = [u for u in users if state.is_suspended(u)]
            elif flag == "new":
                users = [u for u in users if u.trust_level == 0]
            email = params.get("email") or params.get("filter")
            if email:
                users = [
                    u
                    for u in users
                    if u.email.lower() == str(email).lower()
                    or (params.get("filter") and str(email).lower() in u.username_lower)
                ]
            show_emails = truthy(params.get("show_emails"))
            body = []
            for user in sorted(users, key=lambda u: u.id):
                item = user_json(user, state, False)
                # AdminUserListSerializer extras
                item.update(
                    {
                        "last_emailed_at": None,
                        "last_seen_age": None,
                        "last_emailed_age": None,
                        "created_at_age": max(0.0, state.now() - user.created_at),
                        "manual_locked_trust_level": None,
                        "title": None,
                        "time_read": 0,
                        "days_visited": 0,
                        "posts_read_count": 0,
                        "topics_entered": 0,
                    }
                )
                if show_emails:
                    item["email"] = user.email
                body.append(item)
            return jsonify(body)

    @api("/admin/users/<int:id>/trust_level", ["PUT"], "admin/users/trust_level")
    def admin_trust_level(id: int) -> Any:
        require_staff()
        params = request_params()
        with state.lock:
            user = state.users.get(id)
            if user is None:
                raise not_found()
            level = as_int(params.get("level"), "level")
            if not 0 <= level <= 4:
                raise invalid_parameters("level")
            user.trust_level = level
            return jsonify({"admin_user": user_json(user, state, True)})

    # --- uploads ---------------------------------------------------------------------------------

    @api("/uploads", ["POST"], "uploads/create")
    def uploads_create() -> Any:
        user = require_user()
        params = request_params()
        # uploads_controller#create: `upload_type`, else the deprecated `type` (3.4, dropped in
        # 3.5), else `params.require(:upload_type)` → 400 ParameterMissing.
        if not params.get("upload_type"):
            if params.get("type") and state.settings["uploads_accept_legacy_type"]:
                with state.lock:
                    state.deprecations.append(
                        {
                            "message": "the :type param of `POST /uploads` is deprecated, "
                            "use the :upload_type param instead",
                            "since": "3.4",
                            "drop_from": "3.5",
                            "at": iso(state.now()),
                        }
                    )
            else:
                raise param_missing("upload_type")
        file = request.files.get("file") or request.files.get("files[]")
        if file is None:
            raise ApiError(422, {"errors": ["Sorry, you must provide a file to upload."]})
        data = file.read()
        filename = file.filename or "file"
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        with state.lock:
            s = state.settings
            allowed = [e.strip().lower() for e in str(s["authorized_extensions"]).split("|")]
            if "*" not in allowed and extension not in allowed:
                raise ApiError(
                    422,
                    {
                        "errors": [
                            "Sorry, the file you are trying to upload is not authorized "
                            f"(authorized extensions: {', '.join(allowed)})."
                        ]
                    },
                )
            images = ("jpg", "jpeg", "png", "gif", "heic", "heif", "webp")
            limit_kb = s["max_image_size_kb" if extension in images else "max_attachment_size_kb"]
            if len(data) > int(limit_kb) * 1024:
                raise ApiError(
                    422,
                    {
                        "errors": [
                            "Sorry, the file you are trying to upload is too big "
                            f"(maximum size is {limit_kb}KB)."
                        ]
                    },
                )
            width, height = image_size(data)
            digest = sha1_hex(data)
            existing = next((u for u in state.uploads.values() if u.sha1 == digest), None)
            upload = existing or Upload(
                id=state.next_id("upload"),
                user_id=user.id,
                original_filename=filename,
                extension=extension,
                sha1=digest,
                data=data,
                width=width,
                height=height,
                created_at=state.now(),
                # UploadSecurity#uploading_in_composer_check: secure until a post decides.
                secure=bool(s["secure_uploads"]),
            )
            state.uploads[upload.id] = upload
            return jsonify(upload_json(upload))

    def _serve_upload(match: Any) -> Any:
        with state.lock:
            for upload in state.uploads.values():
                if match(upload):
                    return Response(upload.data, 200, content_type=_mime(upload.extension))
        raise not_found()

    def _mime(extension: str) -> str:
        return {
            "png": "image/png",
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "gif": "image/gif",
            "webp": "image/webp",
        }.get(extension, "application/octet-stream")

    @api("/uploads/short-url/<name>", ["GET"], "uploads/show_short")
    def uploads_short(name: str) -> Any:
        # show_short: 404 for anonymous callers under prevent_anons_from_downloading_files; an
        # unknown sha → 404; an external store → 302 to the store (`allow_other_host: true`).
        if state.settings["prevent_anons_from_downloading_files"] and current_user() is None:
            raise not_found()
        stem = name.split(".", 1)[0]
        with state.lock:
            upload = next(
                (u for u in state.uploads.values() if base62(bytes.fromhex(u.sha1)) == stem),
                None,
            )
            secure = upload is not None and upload.secure and state.settings["secure_uploads"]
            if secure and upload is not None:
                # check_secure_upload_permission: the acting user must see the access control
                # post (403 InvalidAccess), or at least be logged in when there is none (404).
                viewer = current_user()
                control = (
                    state.posts.get(upload.access_control_post_id)
                    if upload.access_control_post_id is not None
                    else None
                )
                if upload.access_control_post_id is not None:
                    if control is None or not emu.forum.can_see_post(control, viewer):
                        raise invalid_access()
                elif viewer is None:
                    raise not_found()
        if state.settings["external_storage_cdn"] or secure:
            with state.lock:
                if upload is None:
                    raise not_found()
                emu.cdn.put(
                    upload.sha1,
                    upload.extension,
                    upload.data,
                    _mime(upload.extension),
                    declare_length=not state.settings["external_storage_chunked"],
                )
                location = emu.cdn.url_for(upload.sha1, upload.extension)
            return Response("", 302, headers={"Location": location})
        return _serve_upload(lambda u: base62(bytes.fromhex(u.sha1)) == stem)

    @api("/uploads/default/original/1X/<name>", ["GET"], "uploads/show")
    def uploads_original(name: str) -> Any:
        stem = name.split(".", 1)[0]
        return _serve_upload(lambda u: u.sha1 == stem)

    register_webhook_routes(api, emu)
    register_chat_routes(api, emu)
    register_control(emu, control)
    return app


# --- the running emulator ---------------------------------------------------------------


def serve_fast(app: Any, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
    """`serve_in_thread` with a 50 ms shutdown poll (the default 0.5 s slows every test stop)."""
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(
        target=lambda: server.serve_forever(poll_interval=0.05),
        name=f"discourse-{server.port}",
        daemon=True,
    )
    thread.start()
    return ServerHandle(server=server, thread=thread, app=app)


class DiscourseEmulator:
    """A running emulator: `url`, `control`, `stop()`. Build with `DiscourseEmulator.start()`."""

    def __init__(self, emu: Emulator, handle: ServerHandle) -> None:
        self.emu = emu
        self.handle = handle
        self.url = handle.url
        self.control = DiscourseControl(self.url)

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = "test-api-key",
        clock: Callable[[], float] = time.time,
    ) -> DiscourseEmulator:
        """Serve a fresh forum; `clock` drives every timestamp and time window."""
        emu = Emulator(api_key, clock)
        app = create_app(emu)
        handle = serve_fast(_JsonSuffix(app), host=host, port=port)
        emu.instance_url = handle.url
        emu.state.settings["instance_url"] = handle.url
        emu.hooks.start()
        logger.info("discourse emulator listening on %s", handle.url)
        return cls(emu, handle)

    @property
    def state(self) -> ForumState:
        return self.emu.state

    @property
    def errors(self) -> list[HandlerError]:
        """Unexpected exceptions (handlers, webhook worker) not yet raised by `check_errors()`."""
        return self.emu.errors.errors

    def check_errors(self) -> None:
        """Raise the first unexpected exception recorded, if any (then forget them all)."""
        self.emu.errors.check()

    def stop(self) -> None:
        self.handle.stop()
        self.emu.cdn.stop()
        self.emu.hooks.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Discourse emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--api-key", default="test-api-key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    emulator = DiscourseEmulator.start(host=args.host, port=args.port, api_key=args.api_key)
    print(f"Discourse emulator on {emulator.url} (api key {args.api_key!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()


if __name__ == "__main__":
    main()
