"""A local Google Chat REST API emulator (chat.googleapis.com v1) for tests, benchmarks and demos.

Role: serve the real `/v1/...` paths that googleapiclient calls, with Google's JSON shapes, error
bodies, quotas and auth, plus a control API under `/_emulator/` that plays the humans in the Chat
UI and lets tests inspect state, read a request log and inject faults. The rules live in
`emulators/google_chat_state.py` and message markup in `emulators/google_chat_markup.py`; this
module is the HTTP layer, the `ChatEmulator` entry point and the `ChatControl` client (contract:
/work/briefs/chat_emulator_contract.md; docs: emulators/README.md). The same app serves the
Google Workspace Events API (`emulators/workspace_events.py`), whose events go to the Pub/Sub
emulator `ChatEmulator.start` runs alongside (`emulators/pubsub.py`).

Invariants:
- `create_app(state)` is a factory: no module-level app, all state in the `ChatState` passed in.
- Every error an API or control route answers is Google's `{"error": {code, message, status}}`
  shape (the OAuth `/token` route answers the OAuth error shape, as Google's token server does).
- The request log holds API calls only (`/v1/`, `/upload/`, `/token`), never control or discovery;
  a `/token` row also names the `grant_type` asked for (`token_grants` counts them).
- `/token` serves the refresh-token grant and the JWT-bearer grant of service accounts (control
  `POST /_emulator/service_accounts`); a delegated token acts as its subject in every rule
  (sender, membership, quotas); a service account's own token is refused by the Chat API.
- Latency faults sleep outside the state lock so other requests proceed meanwhile.
- An unexpected exception in a handler is an emulator bug: recorded (`ChatEmulator.errors`,
  `check_errors()`), logged, answered 500 INTERNAL "emulator bug: ..." (`emulators/_errors.py`).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from emulators import google_chat_markup as markup
from emulators._errors import HandlerError, HandlerErrors
from emulators._server import ServerHandle
from emulators.google_chat_state import (
    APP_ONLY_FIELDS,
    CLIENT_ID_MAX,
    CLIENT_ID_RE,
    GOOGLE_TOKEN_AUDIENCE,
    JSON,
    JWT_BEARER_GRANT,
    MAX_MESSAGE_BYTES,
    MAX_UPLOAD_BYTES,
    MESSAGE_FIELDS,
    REPLY_OPTIONS,
    SA_AUTH_UNSUPPORTED,
    SPACE_EVENT_WINDOW,
    STATUS_FOR_HTTP,
    UPDATE_MASK_PATHS,
    ApiError,
    ChatState,
    Fault,
    LogEntry,
    Message,
    OAuthError,
    Reaction,
    Upload,
    apply_fields,
    denied,
    invalid,
    new_message_id,
    new_rsa_key,
    not_found,
    parse_fields,
    parse_member_filter,
    parse_message_filter,
    parse_order_by,
    parse_reaction_filter,
    parse_rfc3339,
    parse_space_event_filter,
    parse_space_filter,
)
from emulators.pubsub import PubSubEmulator
from emulators.workspace_events import WorkspaceEvents
from emulators.workspace_events import register_routes as register_workspace_events

logger = logging.getLogger(__name__)

_API_PREFIXES = ("/v1/", "/upload/", "/token")
_UNAUTH_MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_UNAUTH_INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def load_discovery(api: str = "chat") -> JSON:
    """A v1 discovery doc bundled with google-api-python-client: `chat` (= specs/chat.v1.json)
    or `workspaceevents` (= specs/workspaceevents.v1.json)."""
    from googleapiclient.discovery_cache import get_static_doc

    text = get_static_doc(api, "v1")
    if text is None:
        raise RuntimeError(f"google-api-python-client has no bundled {api} v1 discovery document")
    return dict(json.loads(text))


# --------------------------------------------------------------------------- helpers
def _json_response(
    body: JSON, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False), status=status, headers=headers)
    resp.content_type = "application/json; charset=UTF-8"
    return resp


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false", "1", "0"):
        raise invalid(f"Invalid value at '{name}' (TYPE_BOOL), \"{raw}\"")
    return raw.lower() in ("true", "1")


def _page_size(default: int, maximum: int) -> int:
    raw = request.args.get("pageSize")
    if raw is None:
        return default
    try:
        size = int(raw)
    except ValueError:
        raise invalid(f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"") from None
    if size < 0:
        raise invalid("Page size must not be negative.")
    # 0 or unset means the default; larger values are coerced to the maximum (reference §3).
    return default if size == 0 else min(size, maximum)


def _json_body(schema_fields: frozenset[str] | None = None) -> JSON:
    data = request.get_data()
    if not data:
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        raise invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    if schema_fields is not None:
        for key in body:
            if key not in schema_fields:
                raise invalid(
                    f"Invalid JSON payload received. Unknown name \"{key}\" at 'message': "
                    "Cannot find field."
                )
    return body


def _template(rule: str) -> str:
    """`/v1/spaces/<space_id>/messages` -> `/v1/spaces/{space}/messages` for the log counts."""
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z]+?)(?:_id)?>", r"{\1}", rule)


def _drop_connection() -> None:
    """Close the client's socket without an answer (a 'dropped connection' fault)."""
    sock = request.environ.get("werkzeug.socket")
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _multipart(body: bytes, content_type: str) -> tuple[JSON, bytes, str]:
    """Split a multipart/related upload into (metadata JSON, media bytes, media content type)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise invalid("Missing multipart boundary.")
    delim = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.removeprefix(b"\n")
        sep = b"\r\n\r\n" if b"\r\n\r\n" in chunk else b"\n\n"
        head, _, payload = chunk.partition(sep)
        # The CRLF (or LF) before the next delimiter belongs to the delimiter, not the payload.
        payload = payload[:-2] if payload.endswith(b"\r\n") else payload.removesuffix(b"\n")
        headers = {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        parts.append((headers, payload))
    if len(parts) != 2:
        raise invalid("A multipart upload needs a metadata part and a media part.")
    try:
        meta = json.loads(parts[0][1] or b"{}")
    except ValueError:
        raise invalid("Invalid JSON payload received in the metadata part.") from None
    media_type = parts[1][0].get("content-type", "application/octet-stream")
    return meta, parts[1][1], media_type


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    m = re.match(r"^bytes=(\d*)-(\d*)$", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else total - 1
    else:
        start = max(0, total - int(m.group(2)))
        end = total - 1
    end = min(end, total - 1)
    if start > end or start >= total:
        raise ApiError("OUT_OF_RANGE", "Requested range not satisfiable.", code=416)
    return start, end


# --------------------------------------------------------------------------- the app
def create_app(
    state: ChatState,
    sleep: Callable[[float], None] = time.sleep,
    *,
    errors: HandlerErrors | None = None,
    events: WorkspaceEvents | None = None,
) -> Flask:
    """Build the emulator's Flask app around `state` (API, control API, discovery, /token).

    The Workspace Events API (`/v1/subscriptions`, `/v1/operations`) is served by the same app
    through `events` (a fresh one without a Pub/Sub backend if None: every topic is missing).
    An unexpected exception in a handler is recorded in `errors` (a fresh one if None, also at
    `app.extensions["emulator_errors"]`), logged, and answered 500 "emulator bug".
    """
    app = Flask("google_chat_emulator")
    bugs = errors if errors is not None else HandlerErrors("google chat")
    if events is None:
        events = WorkspaceEvents(state, None, errors=bugs)
    app.extensions["workspace_events"] = events
    app.extensions["emulator_errors"] = bugs
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def caller() -> str:
        return str(g.user)

    @app.before_request
    def _gate() -> Response | None:
        path = request.path
        g.user = None
        g.api = path.startswith(_API_PREFIXES)
        if not g.api:
            return None
        g.start = time.monotonic()
        if path == "/token":
            # Recorded even when a fault answers instead: benchmarks count grants asked for.
            g.grant_type = request.form.get("grant_type", "")
        with state.lock:
            fault = next((f for f in state.faults if f.matches(request.method, path)), None)
            if fault is not None:
                fault.count -= 1
                if fault.count <= 0:
                    state.faults.remove(fault)
        if fault is not None:
            if fault.latency_ms:
                sleep(fault.latency_ms / 1000.0)
            if fault.drop_connection:
                _log(0)
                g.logged = True
                _drop_connection()
                return Response(b"", status=500)
            if fault.status:
                status = STATUS_FOR_HTTP.get(fault.status, "UNKNOWN")
                raise ApiError(status, f"Injected fault ({fault.status}).", code=fault.status)
        if path == "/token":
            return None
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise ApiError("UNAUTHENTICATED", _UNAUTH_MISSING)
        scheme, _, token = auth.partition(" ")
        with state.lock:
            valid = state.valid_token(token.strip()) if scheme.lower() == "bearer" else None
            principal = state.principal(valid) if valid is not None else None
        if valid is None:
            raise ApiError("UNAUTHENTICATED", _UNAUTH_INVALID)
        g.user = principal
        if not valid.user:
            # A service account's own token (JWT-bearer grant without `sub`): Chat apps
            # (`chat.bot`, app authentication) are not emulated, so every call is refused as
            # Chat refuses service accounts on user-only methods (stricter reading).
            raise ApiError("PERMISSION_DENIED", SA_AUTH_UNSUPPORTED)
        g.token = valid  # its scopes and grant, for the Workspace Events routes
        return None

    def _log(status: int, response_bytes: int = 0) -> None:
        rule = request.url_rule.rule if request.url_rule is not None else request.path
        entry = LogEntry(
            method=request.method,
            path=request.path,
            query={k: v for k, v in request.args.items()},
            status=status,
            user=g.get("user"),
            template=_template(rule),
            response_bytes=response_bytes,
            grant_type=g.get("grant_type"),
        )
        with state.lock:
            state.log.append(entry)

    @app.after_request
    def _after(resp: Response) -> Response:
        fields = request.args.get("fields")
        if (
            fields
            and g.get("api")
            and resp.status_code == 200
            and resp.content_type.startswith("application/json")
        ):
            # The `fields` global parameter: a partial response (errors are never trimmed).
            try:
                trimmed = apply_fields(json.loads(resp.get_data()), parse_fields(fields))
                resp.set_data(json.dumps(trimmed, ensure_ascii=False))
            except ApiError as err:
                resp = _json_response(err.body(), err.code)
        if g.get("api") and not g.get("logged"):
            _log(resp.status_code, resp.calculate_content_length() or 0)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        headers = dict(err.headers)
        if err.status == "UNAUTHENTICATED":
            headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
        return _json_response(err.body(), err.code, headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        code = err.code or 500
        status = STATUS_FOR_HTTP.get(code, "UNKNOWN")
        message = "Requested entity was not found." if code == 404 else str(err.description)
        return _json_response(ApiError(status, message, code=code).body(), code)

    @app.errorhandler(Exception)
    def _internal(err: Exception) -> Response:
        # Not an ApiError nor an HTTPException (their handlers above win): a bug in the emulator.
        bug = bugs.record(request.method, request.path, err)
        return _json_response(ApiError("INTERNAL", bug.message()).body(), 500)

    # ------------------------------------------------------------- discovery and OAuth
    discovery = load_discovery()

    @app.get("/$discovery/rest")
    def _discovery() -> Response:
        version = request.args.get("version", "v1")
        if version != "v1":
            raise not_found()
        doc = dict(discovery)
        root = request.host_url  # ends with "/"
        doc["rootUrl"] = root
        doc["baseUrl"] = root
        doc["mtlsRootUrl"] = root
        return _json_response(doc)

    @app.post("/token")
    def _token() -> Response:
        form = request.form
        if form.get("grant_type") == JWT_BEARER_GRANT:
            return _jwt_bearer(form.get("assertion", ""))
        if form.get("grant_type") != "refresh_token":
            return _json_response(
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."},
                400,
            )
        with state.lock:
            try:
                token = state.refresh(form.get("refresh_token", ""), form.get("scope"))
            except OAuthError as err:
                return _json_response(
                    {"error": err.error, "error_description": err.description}, 400
                )
            g.user = token.user
            lifetime = int(state.config["access_token_lifetime"])
        return _json_response(
            {
                "access_token": token.access_token,
                "expires_in": lifetime,
                "token_type": "Bearer",
                # The grant's scopes, space-separated as OAuth answers them.
                "scope": " ".join(sorted(token.scopes)),
            }
        )

    def _jwt_bearer(assertion: str) -> Response:
        """RFC 7523 grant: a service account's signed assertion for an access token."""
        if not assertion:
            return _json_response(
                {
                    "error": "invalid_request",
                    "error_description": "Missing required parameter: assertion",
                },
                400,
            )
        # The audience Google documents, or this endpoint's own URL (what a client that puts
        # the key file's `token_uri` in `aud` sends; in production the two are the same).
        audiences = (GOOGLE_TOKEN_AUDIENCE, request.base_url)
        with state.lock:
            try:
                token = state.jwt_grant(assertion, audiences)
            except OAuthError as err:
                return _json_response(err.body(), err.status)
            g.user = state.principal(token)
            lifetime = int(state.config["access_token_lifetime"])
        # No `scope` in the answer (observed answers leave it out for this grant; RFC 6749 §5.1
        # makes it optional when it equals the request), so a client cannot rely on it.
        return _json_response(
            {"access_token": token.access_token, "expires_in": lifetime, "token_type": "Bearer"}
        )

    # ------------------------------------------------------------- spaces and members
    @app.get("/v1/spaces")
    def _list_spaces() -> Response:
        size = _page_size(100, 1000)
        types = parse_space_filter(request.args.get("filter", ""))
        with state.lock:
            user = caller()
            spaces = [
                s
                for s in state.spaces.values()
                if user in s.members
                # Group chats and DMs aren't listed until the first message is sent (§6.1).
                and (s.space_type == "SPACE" or s.last_active is not None)
                and (types is None or s.space_type in types)
            ]
            params = {"filter": request.args.get("filter", ""), "pageSize": size}
            chunk, token = state.page(spaces, params, size, request.args.get("pageToken"))
            out: JSON = {}
            if chunk:
                out["spaces"] = [state.space_json(s) for s in chunk]
            if token:
                out["nextPageToken"] = token
        return _json_response(out)

    @app.get("/v1/spaces/<space_id>")
    def _get_space(space_id: str) -> Response:
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name)
            return _json_response(state.space_json(space))

    @app.get("/v1/spaces/<space_id>/members")
    def _list_members(space_id: str) -> Response:
        size = _page_size(100, 1000)
        accepts = parse_member_filter(request.args.get("filter", ""))
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name)
            rows = [state.membership_json(space, u) for u in space.members]
            if accepts is not None:
                rows = [r for r in rows if accepts(r["role"], r["member"]["type"])]
            params = {"filter": request.args.get("filter", ""), "pageSize": size}
            chunk, token = state.page(rows, params, size, request.args.get("pageToken"))
            out: JSON = {}
            if chunk:
                out["memberships"] = chunk
            if token:
                out["nextPageToken"] = token
        return _json_response(out)

    @app.get("/v1/spaces/<space_id>/members/<member_id>")
    def _get_member(space_id: str, member_id: str) -> Response:
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name)
            user = caller() if member_id == "me" else state.resolve_user(f"users/{member_id}").name
            if user not in space.members:
                raise not_found()
            return _json_response(state.membership_json(space, user))

    # ------------------------------------------------------------- messages
    @app.get("/v1/spaces/<space_id>/messages")
    def _list_messages(space_id: str) -> Response:
        size = _page_size(25, 1000)
        flt = parse_message_filter(request.args.get("filter", ""))
        desc = parse_order_by(request.args.get("orderBy"))
        show_deleted = _bool_arg("showDeleted")
        with state.lock:
            syntax = state.output_syntax(request.args.get("markupSyntax"))
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name, message_method=True)
            msgs = state.messages[space.name][::-1] if desc else state.messages[space.name]
            msgs = [m for m in msgs if flt.accepts(m) and (show_deleted or m.delete_time is None)]
            params = {
                "filter": request.args.get("filter", ""),
                "orderBy": desc,
                "showDeleted": show_deleted,
                "pageSize": size,
            }
            chunk, token = state.page(msgs, params, size, request.args.get("pageToken"))
            out: JSON = {}
            if chunk:
                out["messages"] = [state.message_json(m, syntax) for m in chunk]
            if token:
                out["nextPageToken"] = token
        return _json_response(out)

    @app.get("/v1/spaces/<space_id>/messages/<message_id>")
    def _get_message(space_id: str, message_id: str) -> Response:
        with state.lock:
            syntax = state.output_syntax(request.args.get("markupSyntax"))
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name, message_method=True)
            msg = state.find_message(space.name, message_id)
            return _json_response(state.message_json(msg, syntax))

    def _create(space_name: str, body: JSON, client_id: str | None, option: str) -> Message:
        """Create a message from the caller (lock held); shared by create and allowMissing."""
        space = state.spaces[space_name]
        for key in APP_ONLY_FIELDS:
            if body.get(key):
                # User-auth messages "can only contain text" (reference §4).
                raise invalid(f"Message {key} are only supported with app authentication.")
        text = str(body.get("text", ""))
        # `text` is read under the request's markupSyntax, else the app-level default (§4).
        syntax = state.input_syntax(body.get("markupSyntax"))
        if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise invalid(f"Message too long: the maximum size is {MAX_MESSAGE_BYTES} bytes.")
        attachments = state.attach(space_name, body.get("attachment") or [])
        if not text.strip() and not attachments:
            raise invalid("Message cannot be empty. Discarding empty message.")
        thread, reply = state.resolve_thread(
            space, option, body.get("thread"), request.args.get("threadKey")
        )
        msg = Message(
            id=new_message_id(),
            space=space_name,
            sender=caller(),
            text="",
            create_time=state.next_create_time(),
            thread_id=thread.id,
            thread_reply=reply,
            client_id=client_id,
            attachments=attachments,
        )
        state.compose(msg, text, syntax)
        state.add_message(msg)
        space.last_active = msg.create_time
        return msg

    def _check_client_id(message_id: str) -> None:
        if len(message_id) > CLIENT_ID_MAX or not CLIENT_ID_RE.match(message_id):
            raise invalid(
                "Invalid message ID: a custom ID must start with client-, contain only "
                "lowercase letters, numbers and hyphens, and be at most 63 characters."
            )

    @app.post("/v1/spaces/<space_id>/messages")
    def _create_message(space_id: str) -> Response:
        body = _json_body(MESSAGE_FIELDS)
        option = request.args.get("messageReplyOption", "MESSAGE_REPLY_OPTION_UNSPECIFIED")
        if option not in REPLY_OPTIONS:
            raise invalid(f"Invalid value at 'message_reply_option', \"{option}\"")
        message_id = request.args.get("messageId")
        request_id = request.args.get("requestId")
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("write", space.name, message_method=True)
            if request_id:
                seen = state.request_ids.get((space.name, request_id))
                if seen is not None:
                    if seen[0] != caller():
                        raise invalid("The request ID was already used by another user.")
                    # A replay returns the existing message and does not update it (§4).
                    mid = seen[1].rsplit("/", 1)[1]
                    return _json_response(
                        state.message_json(state.find_message(space.name, mid, deleted=True))
                    )
            if message_id is not None:
                _check_client_id(message_id)
                if state.client_id_taken(space.name, message_id):
                    code = int(state.config["duplicate_message_id_status"])
                    raise ApiError(
                        STATUS_FOR_HTTP.get(code, "ALREADY_EXISTS"),
                        f"Message with ID {message_id} already exists.",
                        code=code,
                    )
            msg = _create(space.name, body, message_id, option)
            if request_id:
                state.request_ids[(space.name, request_id)] = (caller(), msg.name)
            return _json_response(state.message_json(msg))

    @app.route("/v1/spaces/<space_id>/messages/<message_id>", methods=["PATCH", "PUT"])
    def _update_message(space_id: str, message_id: str) -> Response:
        body = _json_body(MESSAGE_FIELDS)
        mask = request.args.get("updateMask", "").strip()
        allow_missing = _bool_arg("allowMissing")
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("write", space.name, message_method=True)
            try:
                msg = state.find_message(space.name, message_id)
            except ApiError:
                if not allow_missing:
                    raise
                if not CLIENT_ID_RE.match(message_id) or len(message_id) > CLIENT_ID_MAX:
                    # allowMissing creates only messages with a client-assigned ID (§5).
                    raise invalid("allowMissing requires a client-assigned message ID.") from None
                if state.client_id_taken(space.name, message_id):
                    raise  # a deleted client id is not reusable
                msg = _create(space.name, body, message_id, "MESSAGE_REPLY_OPTION_UNSPECIFIED")
                return _json_response(state.message_json(msg))
            if not mask:
                raise invalid("updateMask is required.")
            fields: set[str] = set()
            for path in mask.split(","):
                path = path.strip()
                if path == "*":
                    fields.update(("text", "attachment"))
                    continue
                if path.lower() not in UPDATE_MASK_PATHS:
                    raise invalid(f"Invalid update mask path: {path!r}")
                fields.add(UPDATE_MASK_PATHS[path.lower()])
            if msg.sender != caller():
                raise denied()
            for key in APP_ONLY_FIELDS:
                if key in fields:
                    raise invalid(f"Message {key} are only supported with app authentication.")
            # Validate everything before changing anything: a refused edit leaves no trace.
            text, syntax = msg.text, None
            if "text" in fields:
                text = str(body.get("text", ""))
                # "set markup_syntax and text on the Message and include text (not
                # markup_syntax) in update_mask": the syntax applies to this edit only.
                syntax = state.input_syntax(body.get("markupSyntax"))
                if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
                    raise invalid(f"Message too long: the maximum is {MAX_MESSAGE_BYTES} bytes.")
            attachments = msg.attachments
            if "attachment" in fields:
                attachments = state.attach(space.name, body.get("attachment") or [])
            if not text.strip() and not attachments:
                raise invalid("Message cannot be empty.")
            if syntax is not None:
                state.compose(msg, text, syntax)
            msg.attachments = attachments
            state.edited(msg)
            return _json_response(state.message_json(msg))

    @app.delete("/v1/spaces/<space_id>/messages/<message_id>")
    def _delete_message(space_id: str, message_id: str) -> Response:
        force = _bool_arg("force")
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("write", space.name, message_method=True)
            msg = state.find_message(space.name, message_id)
            if msg.sender != caller():
                raise denied()
            if state.thread_has_replies(msg):
                if not force:
                    raise ApiError(
                        "FAILED_PRECONDITION",
                        "Message has threaded replies. Set force to true to delete them too.",
                    )
                for other in state.messages[space.name]:
                    if other.thread_id == msg.thread_id and other.delete_time is None:
                        state.tombstone(other, "CREATOR")
            state.tombstone(msg, "CREATOR")
        return _json_response({})

    # ------------------------------------------------------------- space events
    @app.get("/v1/spaces/<space_id>/spaceEvents")
    def _list_space_events(space_id: str) -> Response:
        # No default or maximum page size is documented; the emulator uses 100 and 1000 like
        # the other list methods (UNCONFIRMED).
        size = _page_size(100, 1000)
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            # A read in the per-space quota (not a message method for the project quota).
            state.check_quota("read", space.name)
            flt = parse_space_event_filter(request.args.get("filter", ""), state.now())
            events = state.list_space_events(space.name, flt)
            params = {"filter": request.args.get("filter", ""), "pageSize": size}
            chunk, token = state.page(events, params, size, request.args.get("pageToken"))
            out: JSON = {}
            if chunk:
                out["spaceEvents"] = [state.space_event_json(e) for e in chunk]
            if token:
                out["nextPageToken"] = token
        return _json_response(out)

    @app.get("/v1/spaces/<space_id>/spaceEvents/<event_id>")
    def _get_space_event(space_id: str, event_id: str) -> Response:
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name)
            horizon = state.now() - SPACE_EVENT_WINDOW
            for event in state.space_events.get(space.name, []):
                if event.id == event_id and event.time > horizon:
                    return _json_response(state.space_event_json(event))
        raise not_found()

    # ------------------------------------------------------------- reactions
    @app.post("/v1/spaces/<space_id>/messages/<message_id>/reactions")
    def _create_reaction(space_id: str, message_id: str) -> Response:
        body = _json_body(frozenset({"name", "user", "emoji"}))
        emoji = body.get("emoji") or {}
        if not isinstance(emoji, dict) or not emoji.get("unicode"):
            raise invalid("A reaction needs emoji.unicode (custom emoji are not emulated).")
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("write", space.name)
            msg = state.find_message(space.name, message_id)
            return _json_response(_react(msg, caller(), str(emoji["unicode"])))

    def _react(msg: Message, user: str, unicode: str) -> JSON:
        if any(r.user == user and r.unicode == unicode for r in msg.reactions):
            raise ApiError("ALREADY_EXISTS", "Reaction already exists.")
        reaction = Reaction(id=secrets.token_hex(8), user=user, unicode=unicode)
        msg.reactions.append(reaction)
        return state.reaction_json(msg, reaction)

    @app.get("/v1/spaces/<space_id>/messages/<message_id>/reactions")
    def _list_reactions(space_id: str, message_id: str) -> Response:
        size = _page_size(25, 200)
        accepts = parse_reaction_filter(request.args.get("filter", ""))
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("read", space.name)
            msg = state.find_message(space.name, message_id)
            rows = [r for r in msg.reactions if accepts is None or accepts(r)]
            params = {"filter": request.args.get("filter", ""), "pageSize": size}
            chunk, token = state.page(rows, params, size, request.args.get("pageToken"))
            out: JSON = {}
            if chunk:
                out["reactions"] = [state.reaction_json(msg, r) for r in chunk]
            if token:
                out["nextPageToken"] = token
        return _json_response(out)

    @app.delete("/v1/spaces/<space_id>/messages/<message_id>/reactions/<reaction_id>")
    def _delete_reaction(space_id: str, message_id: str, reaction_id: str) -> Response:
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("write", space.name)
            msg = state.find_message(space.name, message_id)
            reaction = next((r for r in msg.reactions if r.id == reaction_id), None)
            if reaction is None:
                raise not_found()
            if reaction.user != caller():
                raise denied()
            msg.reactions.remove(reaction)
        return _json_response({})

    # ------------------------------------------------------------- media
    def _store_upload(space: str, filename: str | None, ctype: str, data: bytes) -> JSON:
        if len(data) > MAX_UPLOAD_BYTES:
            raise invalid("The file exceeds the maximum upload size of 200 MB.")
        upload = Upload(secrets.token_urlsafe(24), space, filename, ctype, data)
        state.uploads[upload.resource_name] = upload
        return {
            "attachmentDataRef": {
                "resourceName": upload.resource_name,
                "attachmentUploadToken": upload.token,
            }
        }

    @app.post("/upload/v1/spaces/<space_id>/attachments:upload")
    def _upload(space_id: str) -> Response:
        kind = request.args.get("uploadType", "")
        with state.lock:
            space = state.space_for(f"spaces/{space_id}", caller())
            state.check_quota("write", space.name)
            if kind == "multipart":
                meta, data, ctype = _multipart(request.get_data(), request.content_type or "")
                return _json_response(_store_upload(space.name, meta.get("filename"), ctype, data))
            if kind == "media":
                ctype = request.content_type or "application/octet-stream"
                return _json_response(_store_upload(space.name, None, ctype, request.get_data()))
            if kind == "resumable":
                meta = _json_body()
                try:
                    total = int(request.headers.get("X-Upload-Content-Length", "-1"))
                except ValueError:
                    raise invalid("Invalid X-Upload-Content-Length.") from None
                if total > MAX_UPLOAD_BYTES:
                    raise invalid("The file exceeds the maximum upload size of 200 MB.")
                upload_id = secrets.token_urlsafe(16)
                state.resumable[upload_id] = {
                    "space": space.name,
                    "filename": meta.get("filename"),
                    "ctype": request.headers.get("X-Upload-Content-Type")
                    or "application/octet-stream",
                    "data": bytearray(),
                    "user": caller(),
                }
            else:
                raise invalid(f"Invalid uploadType: {kind!r}")
        location = (
            f"{request.host_url}upload/v1/spaces/{space_id}/attachments:upload"
            f"?uploadType=resumable&upload_id={upload_id}"
        )
        # Session start: an empty 200 whose Location is the session URL for the PUTs.
        return Response(b"", status=200, headers={"Location": location})

    @app.put("/upload/v1/spaces/<space_id>/attachments:upload")
    def _upload_chunk(space_id: str) -> Response:
        upload_id = request.args.get("upload_id", "")
        with state.lock:
            session = state.resumable.get(upload_id)
            if session is None or session["space"] != f"spaces/{space_id}":
                raise not_found()
            if session["user"] != caller():
                raise denied()
            data = request.get_data()
            crange = request.headers.get("Content-Range", "")
            m = re.match(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$", crange.strip())
            if crange and not m:
                raise invalid("Invalid Content-Range.")
            buf: bytearray = session["data"]
            if m and m.group(1) is not None:
                if int(m.group(1)) != len(buf):
                    raise invalid("Content-Range does not continue the upload.")
                buf.extend(data)
            elif not crange:
                buf.extend(data)
            total = int(m.group(3)) if m and m.group(3) != "*" else None
            if total is None and not crange:
                total = len(buf)
            if total is not None and len(buf) >= total:
                del state.resumable[upload_id]
                result = _store_upload(
                    session["space"], session["filename"], session["ctype"], bytes(buf)
                )
                return _json_response(result)
            headers = {"Range": f"bytes=0-{len(buf) - 1}"} if buf else {}
        # 308 "Resume Incomplete": googleapiclient sends the next chunk from Range.
        return Response(b"", status=308, headers=headers)

    @app.get("/v1/media/<path:resource>")
    def _download(resource: str) -> Response:
        m = re.match(r"^(spaces/[^/]+)/attachments/[^/]+$", resource)
        with state.lock:
            if not m:
                raise not_found()
            space = state.space_for(m.group(1), caller())
            state.check_quota("read", space.name)
            upload = state.uploads.get(resource)
            if upload is None:
                raise not_found()
        if request.args.get("alt") != "media":
            return _json_response({"resourceName": resource})
        total = len(upload.data)
        rng = _parse_range(request.headers["Range"], total) if "Range" in request.headers else None
        if rng is None:
            resp = Response(upload.data, status=200, content_type=upload.content_type)
        else:
            start, end = rng
            resp = Response(
                upload.data[start : end + 1], status=206, content_type=upload.content_type
            )
            resp.headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        resp.headers["Accept-Ranges"] = "bytes"
        return resp

    register_workspace_events(app, events)
    _register_control(app, state, events)
    return app


# --------------------------------------------------------------------------- control API
def _register_control(app: Flask, state: ChatState, events: WorkspaceEvents) -> None:
    def body() -> JSON:
        return _json_body()

    @app.post("/_emulator/reset")
    def _reset() -> Response:
        with state.lock:
            state.reset()
            events.reset()
        return _json_response({})

    @app.post("/_emulator/users")
    def _add_user() -> Response:
        with state.lock:
            user = state.add_user(body())
            return _json_response(state.user_json(user.name, full=True))

    @app.post("/_emulator/spaces")
    def _add_space() -> Response:
        with state.lock:
            return _json_response(state.space_json(state.add_space(body())))

    @app.post("/_emulator/tokens")
    def _add_token() -> Response:
        with state.lock:
            return _json_response(state.add_token(body()))

    @app.post("/_emulator/service_accounts")
    def _add_service_account() -> Response:
        data = body()
        key = new_rsa_key()  # ~0.1 s of CPU: outside the lock
        token_uri = f"{request.host_url}token"
        with state.lock:
            return _json_response(state.add_service_account(data, token_uri, key))

    @app.get("/_emulator/service_accounts")
    def _service_accounts() -> Response:
        with state.lock:
            accounts = [a.json() for a in state.service_accounts.values()]
        return _json_response({"service_accounts": accounts})

    @app.post("/_emulator/service_accounts/<client_id>/delegation")
    def _delegation(client_id: str) -> Response:
        data = body()
        with state.lock:
            return _json_response(state.set_delegation(client_id, data))

    @app.post("/_emulator/users/<user_id>:suspend")
    def _suspend_user(user_id: str) -> Response:
        with state.lock:
            return _json_response(state.set_suspended(f"users/{user_id}", True))

    @app.post("/_emulator/users/<user_id>:unsuspend")
    def _unsuspend_user(user_id: str) -> Response:
        with state.lock:
            return _json_response(state.set_suspended(f"users/{user_id}", False))

    @app.post("/_emulator/tokens/expire")
    def _expire() -> Response:
        access = body().get("access_token")
        with state.lock:
            for token in state.tokens.values():
                if access is None or token.access_token == access:
                    token.expires_at = state.clock() - 1
        return _json_response({})

    @app.post("/_emulator/tokens/revoke")
    def _revoke() -> Response:
        data = body()
        refresh, access = data.get("refresh_token"), data.get("access_token")
        with state.lock:
            for token in state.tokens.values():
                if (
                    (refresh is None and access is None)
                    or token.access_token == access
                    or (refresh is not None and token.refresh_token == refresh)
                ):
                    token.revoked = True
            for name, grant in state.refresh_tokens.items():
                if (refresh is None and access is None) or name == refresh:
                    grant.revoked = True
        return _json_response({})

    @app.post("/_emulator/spaces/<space_id>/messages")
    def _post(space_id: str) -> Response:
        data = body()
        with state.lock:
            space = state.spaces.get(f"spaces/{space_id}")
            if space is None:
                raise not_found()
            sender = state.resolve_user(str(data.get("sender", ""))).name
            if sender not in space.members:
                raise invalid(f"{sender} is not a member of {space.name}")
            thread_name = data.get("threadName")
            if thread_name:
                tid = str(thread_name).rsplit("/", 1)[-1]
                if not str(thread_name).startswith(f"{space.name}/threads/") or (
                    tid not in state.threads[space.name]
                ):
                    raise not_found()
                thread, reply = state.threads[space.name][tid], True
            else:
                thread, reply = state.new_thread(space.name, None), False
            wanted = parse_rfc3339(data["createTime"]) if data.get("createTime") else None
            uploads = []
            for att in data.get("attachments") or []:
                up = Upload(
                    secrets.token_urlsafe(24),
                    space.name,
                    att.get("filename"),
                    att.get("contentType", "application/octet-stream"),
                    base64.b64decode(att.get("dataBase64", "")),
                )
                state.uploads[up.resource_name] = up
                uploads.append((secrets.token_urlsafe(12), up))
            msg = Message(
                id=new_message_id(),
                space=space.name,
                sender=sender,
                text="",
                create_time=state.next_create_time(wanted),
                thread_id=thread.id,
                thread_reply=reply,
                attachments=uploads,
            )
            # `text` is the composer input in Chat markup, as the UI produces it: `<users/1>`
            # for a mention picked from autocomplete, `<url|label>` for a labelled link.
            state.compose(msg, str(data.get("text", "")), markup.CHAT)
            state.add_message(msg)
            if space.last_active is None or msg.create_time > space.last_active:
                space.last_active = msg.create_time
            return _json_response(state.message_json(msg))

    @app.patch("/_emulator/spaces/<space_id>/messages/<message_id>")
    def _edit(space_id: str, message_id: str) -> Response:
        data = body()
        with state.lock:
            msg = state.find_message(f"spaces/{space_id}", message_id)
            state.compose(msg, str(data.get("text", "")), markup.CHAT)
            state.edited(msg)
            return _json_response(state.message_json(msg))

    @app.get("/_emulator/spaces/<space_id>/messages/<message_id>/rendered")
    def _rendered(space_id: str, message_id: str) -> Response:
        # Rendered from the stored Doc, not by re-parsing formattedText: Chat markup has no
        # escapes, so literal `<url|label>` text from Markdown input would read as a link.
        with state.lock:
            msg = state.find_message(f"spaces/{space_id}", message_id)
            html = markup.render_html(msg.doc, state.display_name)
        return _json_response({"html": html})

    @app.delete("/_emulator/spaces/<space_id>/messages/<message_id>")
    def _delete(space_id: str, message_id: str) -> Response:
        with state.lock:
            state.tombstone(state.find_message(f"spaces/{space_id}", message_id), "CREATOR")
        return _json_response({})

    @app.post("/_emulator/spaces/<space_id>/messages/<message_id>/reactions")
    def _control_react(space_id: str, message_id: str) -> Response:
        data = body()
        with state.lock:
            msg = state.find_message(f"spaces/{space_id}", message_id)
            user = state.resolve_user(str(data.get("user", ""))).name
            unicode = str(data.get("unicode", ""))
            if any(r.user == user and r.unicode == unicode for r in msg.reactions):
                raise ApiError("ALREADY_EXISTS", "Reaction already exists.")
            reaction = Reaction(id=secrets.token_hex(8), user=user, unicode=unicode)
            msg.reactions.append(reaction)
            return _json_response(state.reaction_json(msg, reaction))

    @app.get("/_emulator/state")
    def _state() -> Response:
        with state.lock:
            return _json_response(state.state_json())

    @app.get("/_emulator/requests")
    def _requests() -> Response:
        with state.lock:
            counts: dict[str, int] = {}
            grants: dict[str, int] = {}
            for e in state.log:
                key = f"{e.method} {e.template}"
                counts[key] = counts.get(key, 0) + 1
                if e.grant_type is not None:
                    grants[e.grant_type] = grants.get(e.grant_type, 0) + 1
            rows = [
                {
                    "method": e.method,
                    "path": e.path,
                    "query": e.query,
                    "status": e.status,
                    "user": e.user,
                    "response_bytes": e.response_bytes,
                    **({"grant_type": e.grant_type} if e.grant_type is not None else {}),
                }
                for e in state.log
            ]
        out: JSON = {"requests": rows, "counts": counts}
        if grants:
            # Only when the log holds token calls: an empty log stays `{requests, counts}`.
            out["token_grants"] = grants
        return _json_response(out)

    @app.delete("/_emulator/requests")
    def _clear_requests() -> Response:
        with state.lock:
            state.log.clear()
        return _json_response({})

    @app.post("/_emulator/faults")
    def _add_fault() -> Response:
        data = body()
        fault = Fault(
            count=int(data.get("count", 1)),
            status=int(data["status"]) if data.get("status") is not None else None,
            method=data.get("method"),
            path_regex=data.get("path_regex"),
            latency_ms=int(data.get("latency_ms", 0)),
            drop_connection=bool(data.get("drop_connection", False)),
        )
        if fault.status is None and not fault.latency_ms and not fault.drop_connection:
            fault.status = 503
        with state.lock:
            state.faults.append(fault)
        return _json_response({})

    @app.delete("/_emulator/faults")
    def _clear_faults() -> Response:
        with state.lock:
            state.faults.clear()
        return _json_response({})

    @app.post("/_emulator/config")
    def _config() -> Response:
        data = body()
        with state.lock:
            # Validate a copy, so a refused setting leaves the running config untouched.
            config = dict(state.config)
            for key, value in data.items():
                if key not in config:
                    raise invalid(f"Unknown config key: {key!r}")
                config[key] = value
            if config["sender_details"] not in ("full", "minimal"):
                raise invalid("sender_details must be 'full' or 'minimal'")
            syntaxes = (markup.CHAT, markup.MARKDOWN)
            if config["app_default_markup_syntax"] not in syntaxes:
                raise invalid("app_default_markup_syntax must be one of " + ", ".join(syntaxes))
            if config["output_default_markup_syntax"] not in (None, *syntaxes):
                raise invalid(
                    "output_default_markup_syntax must be null or one of " + ", ".join(syntaxes)
                )
            for key in (
                "subscription_max_ttl_seconds",
                "subscription_max_ttl_seconds_without_resource",
                "operation_latency_seconds",
                "jwt_clock_skew_seconds",
            ):
                if not _non_negative(config[key]):
                    raise invalid(f"{key} must be a non-negative number")
            leads = config["reminder_lead_seconds"]
            if not isinstance(leads, list) or not all(_non_negative(x) for x in leads):
                raise invalid("reminder_lead_seconds must be a list of non-negative numbers")
            if config["lifecycle_payload_case"] not in ("snake_case", "camelCase"):
                raise invalid("lifecycle_payload_case must be 'snake_case' or 'camelCase'")
            state.config = config
            return _json_response(dict(state.config))


# --------------------------------------------------------------------------- Python entry points
class ChatControl:
    """A thin `requests` client for the control API; each method returns the parsed JSON.

    Methods take Pythonic arguments and also the route's JSON body keys as keyword arguments
    (`create_user(displayName="A", name="users/1")`), since callers code against the routes.
    Message-addressing methods accept a full name `spaces/S/messages/M` or `(space, message_id)`.

    Raises:
        requests.HTTPError: the control API answered 4xx/5xx (body in Google's error shape).
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: JSON | None = None) -> Any:
        resp = self.session.request(
            method, f"{self.base_url}/_emulator{path}", json=body, timeout=self.timeout
        )
        resp.raise_for_status()
        return resp.json()

    def reset(self) -> JSON:
        return self._call("POST", "/reset")

    def create_user(
        self,
        display_name: str | None = None,
        name: str | None = None,
        email: str | None = None,
        type: str | None = None,
        **body: Any,
    ) -> JSON:
        return self._call(
            "POST",
            "/users",
            _merge(body, displayName=display_name, name=name, email=email, type=type),
        )

    def create_space(
        self,
        members: list[str] | None = None,
        space_type: str | None = None,
        display_name: str | None = None,
        name: str | None = None,
        threading_state: str | None = None,
        **body: Any,
    ) -> JSON:
        merged = _merge(
            body,
            members=members,
            spaceType=space_type,
            displayName=display_name,
            name=name,
            spaceThreadingState=threading_state,
        )
        merged.setdefault("spaceType", "SPACE")
        merged.setdefault("members", [])
        return self._call("POST", "/spaces", merged)

    def add_token(
        self,
        user: str,
        access_token: str | None = None,
        refresh_token: str | None = None,
        expires_in: float | None = None,
        scopes: list[str] | None = None,
    ) -> JSON:
        """A token (and its refresh token) for `user`, granting `scopes` (default: the Chat
        scopes the bridge asks for, `google_chat_state.DEFAULT_SCOPES`)."""
        body = _merge(
            {"user": user},
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=expires_in,
            scopes=scopes,
        )
        return self._call("POST", "/tokens", body)

    def create_service_account(
        self,
        client_email: str | None = None,
        domains: list[str] | None = None,
        delegated_scopes: list[str] | None = None,
        **body: Any,
    ) -> JSON:
        """A service account with a fresh key and the Workspace admin's domain-wide delegation
        of `delegated_scopes` (none: no delegation) for users of `domains`; returns the complete
        key JSON (`token_uri` = this emulator's `/token`). Keep it secret, as a real one."""
        merged = _merge(
            body, client_email=client_email, domains=domains, delegated_scopes=delegated_scopes
        )
        return self._call("POST", "/service_accounts", merged)

    def write_service_account_file(
        self,
        path: str | os.PathLike[str],
        client_email: str | None = None,
        domains: list[str] | None = None,
        delegated_scopes: list[str] | None = None,
    ) -> JSON:
        """`create_service_account` and write the key JSON to `path` (mode 0600); returns it."""
        key = self.create_service_account(client_email, domains, delegated_scopes)
        write_key_file(path, key)
        return key

    def service_accounts(self) -> JSON:
        """`{"service_accounts": [{client_email, client_id, project_id, private_key_id,
        domains, delegated_scopes}]}` (no private keys)."""
        return self._call("GET", "/service_accounts")

    def set_delegation(
        self, client_id: str, scopes: list[str], domains: list[str] | None = None
    ) -> JSON:
        """The admin changes the domain-wide delegation of `client_id` (the numeric id, as in
        the Admin console): `scopes` replaces the delegated scopes (`[]` removes delegation)."""
        body = _merge({"scopes": scopes}, domains=domains)
        return self._call("POST", f"/service_accounts/{client_id}/delegation", body)

    def suspend_user(self, name: str) -> JSON:
        """Suspend `users/{id}` (or `users/{email}`, or the bare id) in the Workspace admin
        console: its tokens stop working and none is issued for it."""
        return self._call("POST", f"/users/{name.removeprefix('users/')}:suspend")

    def unsuspend_user(self, name: str) -> JSON:
        return self._call("POST", f"/users/{name.removeprefix('users/')}:unsuspend")

    def expire_tokens(self, access_token: str | None = None) -> JSON:
        return self._call("POST", "/tokens/expire", _merge({}, access_token=access_token))

    def revoke_token(
        self, refresh_token: str | None = None, access_token: str | None = None
    ) -> JSON:
        body = _merge({}, refresh_token=refresh_token, access_token=access_token)
        return self._call("POST", "/tokens/revoke", body)

    def post_message(
        self,
        space: str,
        sender: str | None = None,
        text: str | None = None,
        thread_name: str | None = None,
        create_time: str | None = None,
        attachments: list[JSON] | None = None,
        **body: Any,
    ) -> JSON:
        """Post as a human in the Chat UI; `space` is `spaces/X` or `X`.

        `text` is the composer input in Chat markup (`<users/2>`, `<https://x|label>`,
        `*bold*`, ...): it becomes `formattedText`; `text` is its plain rendering."""
        merged = _merge(
            body,
            sender=sender,
            text=text,
            threadName=thread_name,
            createTime=create_time,
            attachments=attachments,
        )
        return self._call("POST", f"/{_space_path(space)}/messages", merged)

    def edit_message(self, *message: str, text: str | None = None) -> JSON:
        """`edit_message(name, text)` or `edit_message(space, message_id, text)`; `text` in
        Chat markup, as for `post_message`."""
        parts = list(message)
        if text is None:
            text = parts.pop()
        return self._call("PATCH", f"/{_message_path(parts)}", {"text": text})

    def delete_message(self, *message: str) -> JSON:
        """`delete_message(name)` or `delete_message(space, message_id)`."""
        return self._call("DELETE", f"/{_message_path(list(message))}")

    def add_reaction(
        self, *message: str, user: str | None = None, unicode: str | None = None
    ) -> JSON:
        """`add_reaction(name, user, unicode)` or `(space, message_id, user, unicode)`."""
        parts = list(message)
        if unicode is None:
            unicode = parts.pop()
        if user is None:
            user = parts.pop()
        path = f"/{_message_path(parts)}/reactions"
        return self._call("POST", path, {"user": user, "unicode": unicode})

    def rendered(self, *message: str) -> JSON:
        """`{"html": ...}`: what a person sees for the message (`rendered(name)` or
        `rendered(space, message_id)`); see `google_chat_markup.render_html`."""
        return self._call("GET", f"/{_message_path(list(message))}/rendered")

    def state(self) -> JSON:
        return self._call("GET", "/state")

    def requests(self) -> JSON:
        return self._call("GET", "/requests")

    def clear_requests(self) -> JSON:
        return self._call("DELETE", "/requests")

    def add_fault(
        self,
        count: int = 1,
        status: int | None = None,
        method: str | None = None,
        path_regex: str | None = None,
        latency_ms: int | None = None,
        drop_connection: bool = False,
    ) -> JSON:
        body = _merge(
            {"count": count, "drop_connection": drop_connection},
            status=status,
            method=method,
            path_regex=path_regex,
            latency_ms=latency_ms,
        )
        return self._call("POST", "/faults", body)

    def clear_faults(self) -> JSON:
        return self._call("DELETE", "/faults")

    def configure(self, **settings: Any) -> JSON:
        return self._call("POST", "/config", settings)

    def subscriptions(self) -> JSON:
        """Workspace Events state: `{"subscriptions": [...], "operations": [...], "queued"}`;
        each subscription is its API JSON plus `user`, `created` (create operation done),
        `causeFixed`, `suspendedByControl`, `pendingReminderLeadSeconds`."""
        return self._call("GET", "/subscriptions")

    def suspend_subscription(self, name: str, reason: str = "OTHER") -> JSON:
        """Suspend `subscriptions/X` (or `X`) for `reason` (an ErrorType) until `fix_subscription`;
        publishes a `suspended` lifecycle event if the topic accepts it."""
        sid = name.removeprefix("subscriptions/")
        return self._call("POST", f"/subscriptions/{sid}:suspend", {"reason": reason})

    def fix_subscription(self, name: str) -> JSON:
        """Mark the cause of a suspension fixed: `reactivate` may now succeed."""
        sid = name.removeprefix("subscriptions/")
        return self._call("POST", f"/subscriptions/{sid}:fix")


def write_key_file(path: str | os.PathLike[str], key: JSON) -> Path:
    """Write a service account key JSON to `path`, readable by the owner only (0600, also when
    the file already existed), as a private key on disk must be."""
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(key, fh, indent=2)
        fh.write("\n")
    return target


def _non_negative(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _merge(body: JSON, **values: Any) -> JSON:
    """`body` plus the keyword values that are not None."""
    out = dict(body)
    out.update({k: v for k, v in values.items() if v is not None})
    return out


def _message_path(parts: list[str]) -> str:
    if len(parts) == 1 and "/messages/" in parts[0]:
        return parts[0]
    if len(parts) == 2:
        space, message = parts
        if "/messages/" in message:
            return message
        return f"{_space_path(space)}/messages/{message}"
    raise TypeError("expected a message name, or a space and a message id")


def _serve(app: Flask, host: str, port: int) -> ServerHandle:
    """Like `_server.serve_in_thread`, but polling for shutdown every 50 ms instead of 500 ms,
    so that stopping an emulator per test does not cost half a second."""
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"chat-{server.port}",
        daemon=True,
    )
    thread.start()
    return ServerHandle(server=server, thread=thread, app=app)


def _space_path(space: str) -> str:
    return space if space.startswith("spaces/") else f"spaces/{space}"


class ChatEmulator:
    """A running emulator: `url`, `control`, `state` (for in-process inspection), `stop()`.

    `url` also serves the Workspace Events API (`workspace_events`: subscriptions, their
    dispatcher thread); `pubsub` is the Pub/Sub emulator their events are published to (None
    when `emulators.pubsub` is not available). Both stop with `stop()`.
    `errors` / `check_errors()`: the unexpected exceptions its handlers raised (emulator bugs).
    """

    def __init__(
        self,
        handle: ServerHandle,
        state: ChatState,
        errors: HandlerErrors | None = None,
        *,
        workspace_events: WorkspaceEvents | None = None,
        pubsub: PubSubEmulator | None = None,
    ) -> None:
        self._handle = handle
        self.state = state
        self.url = handle.url
        self.control = ChatControl(self.url)
        self._errors = errors if errors is not None else HandlerErrors("google chat")
        self.workspace_events = workspace_events
        self.pubsub = pubsub

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> ChatEmulator:
        """Serve a fresh emulator on `host:port` (0 = any free port) in a daemon thread, with
        a Pub/Sub emulator on another free port of `host` that authenticates this emulator's
        tokens (principal `user:<email>`, the token's scopes)."""
        state = ChatState(clock=clock, monotonic=monotonic)
        errors = HandlerErrors("google chat")
        pubsub = _start_pubsub(state, host, clock=clock, monotonic=monotonic)
        events = WorkspaceEvents(
            state, pubsub.state if pubsub is not None else None, errors=errors
        )
        handle = _serve(create_app(state, errors=errors, events=events), host, port)
        events.start()
        logger.info("google chat emulator listening on %s", handle.url)
        return cls(handle, state, errors, workspace_events=events, pubsub=pubsub)

    @property
    def errors(self) -> list[HandlerError]:
        """Unexpected exceptions raised by handlers and not yet reported by `check_errors()`."""
        return self._errors.errors

    def check_errors(self) -> None:
        """Raise the first unexpected handler exception, if any (then forget them all); the
        Pub/Sub emulator's too, as its bugs break the same tests."""
        self._errors.check()
        if self.pubsub is not None:
            self.pubsub.check_errors()

    @property
    def port(self) -> int:
        return self._handle.port

    def discovery_url(self) -> str:
        """The `discoveryServiceUrl` template for googleapiclient's `build()`."""
        return f"{self.url}/$discovery/rest?version={{apiVersion}}"

    def discovery_document(self) -> JSON:
        """chat.v1.json with rootUrl/baseUrl pointing here (for `build_from_document`)."""
        doc = load_discovery()
        doc["rootUrl"] = doc["baseUrl"] = doc["mtlsRootUrl"] = self.url + "/"
        return doc

    def workspace_events_document(self) -> JSON:
        """workspaceevents.v1.json with rootUrl/baseUrl pointing here."""
        doc = load_discovery("workspaceevents")
        doc["rootUrl"] = doc["baseUrl"] = doc["mtlsRootUrl"] = self.url + "/"
        return doc

    def stop(self) -> None:
        self.control.session.close()
        if self.workspace_events is not None:
            self.workspace_events.stop()
        # Both servers poll for shutdown every 50 ms: stopping them side by side halves the
        # cost every test pays at teardown.
        stopper = None
        if self.pubsub is not None:
            stopper = threading.Thread(target=self.pubsub.stop, name="pubsub-stop", daemon=True)
            stopper.start()
        self._handle.stop()
        if stopper is not None:
            stopper.join(timeout=10)


def _start_pubsub(
    state: ChatState,
    host: str,
    *,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
) -> PubSubEmulator:
    """The Pub/Sub emulator Workspace events go to; it accepts this emulator's tokens."""

    def authenticate(access_token: str) -> tuple[str, frozenset[str]] | None:
        # Called by Pub/Sub's handler threads: takes the Chat lock, never the reverse order.
        with state.lock:
            return state.token_info(access_token)

    return PubSubEmulator.start(
        host, 0, authenticate=authenticate, clock=clock, monotonic=monotonic
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m emulators.google_chat --port 9001 [--host 127.0.0.1]`."""
    parser = argparse.ArgumentParser(description="Local Google Chat API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    emu = ChatEmulator.start(host=args.host, port=args.port)
    if emu.pubsub is not None:
        logger.info("pub/sub emulator for workspace events listening on %s", emu.pubsub.url)
    try:
        emu._handle.thread.join()
    except KeyboardInterrupt:
        emu.stop()


if __name__ == "__main__":
    main()
