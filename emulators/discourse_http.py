"""Request helpers of the Discourse emulator's Flask app (format, params, acting user).

Role: small functions the route modules share. Invariants: they only read the current Flask
request and `flask.g` (set by the auth step in `discourse.create_app`); they never touch state.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from flask import g, request

from emulators.discourse_model import (
    User,
    invalid_access,
    invalid_parameters,
    not_logged_in,
)


def wants_json() -> bool:
    """True when the request asks for JSON (`.json`, Accept, or an always-JSON prefix)."""
    if request.environ.get("emu.json"):
        return True
    if "application/json" in request.headers.get("Accept", ""):
        return True
    return request.path.startswith(("/chat/api/", "/_emulator/"))


def serves_files() -> bool:
    """Routes that answer raw bytes or text, never the HTML app shell."""
    return request.path.startswith("/uploads/") or request.path.endswith("/raw")


def nest_param(target: dict[str, Any], key: str, value: Any, is_list: bool) -> None:
    """Rails-style `post[raw]=x` and `post_ids[]=1` form keys."""
    match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
    if not match or not match.group(2):
        target[key] = value
        return
    parts = [match.group(1)] + re.findall(r"\[([^\[\]]*)\]", match.group(2))
    node = target
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        nxt = parts[index + 1] if not last else None
        if last:
            node[part] = value
        elif nxt == "" and index + 1 == len(parts) - 1:
            node[part] = value if is_list else [value]
            return
        else:
            node = node.setdefault(part, {})


def request_params() -> dict[str, Any]:
    """Query string merged with the JSON, form or multipart body, Rails-style."""
    params: dict[str, Any] = {}
    for source in (request.args, request.form):
        for key in source:
            values = source.getlist(key)
            if key.endswith("[]"):
                nest_param(params, key, values, True)
            else:
                nest_param(params, key, values[-1], False)
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
    return params


def current_user() -> User | None:
    """The acting user set by the auth step, or None for anonymous requests."""
    return g.get("user")


def require_user() -> User:
    """The acting user; raises the `not_logged_in` 403 when there is none."""
    user = current_user()
    if user is None:
        raise not_logged_in()
    return user


def require_staff() -> User:
    """The acting user if staff; raises `invalid_access` otherwise."""
    user = require_user()
    if not user.staff:
        raise invalid_access()
    return user


def require_admin() -> User:
    """The acting user if admin; raises `invalid_access` otherwise."""
    user = require_user()
    if not user.admin:
        raise invalid_access()
    return user


def as_int(value: Any, name: str) -> int:
    """`int(value)`, or the `invalid_parameters` 400 naming `name`."""
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise invalid_parameters(name) from exc


def image_size(data: bytes) -> tuple[int | None, int | None]:
    """(width, height) of a PNG or GIF, else (None, None)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    return None, None
