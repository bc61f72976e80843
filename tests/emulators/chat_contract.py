"""Validate JSON bodies against the schemas of the Chat discovery document (specs/chat.v1.json).

Discovery schemas are not JSON Schema, so this translates the subset they use: `$ref`, `type`
(string, integer, number, boolean, array, object, any), `properties`, `additionalProperties`,
`items`, `enum` and `format` (google-datetime, int32/int64/uint*, byte, double/float,
google-duration, google-fieldmask). A property the schema does not declare is an error, so a
misspelt field fails the contract instead of passing silently.

`schema_for_response(doc, method, path)` maps an HTTP call to the method's response schema using
the discovery `path` templates (with the parameters' `pattern`s), including media uploads.
The rest is the tests' harness: `RecordingHttp` keeps every response googleapiclient receives,
`contract_errors()` validates them all, and `make_world()` builds a populated emulator with a
googleapiclient service acting as a user.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httplib2
from google.oauth2.credentials import Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from emulators.google_chat import ChatEmulator

JSON = dict[str, Any]

# Google's error body (googleapis common error model; not a schema of the discovery document).
ERROR_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "format": "int32"},
                "message": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": [
                        "OK",
                        "CANCELLED",
                        "UNKNOWN",
                        "INVALID_ARGUMENT",
                        "DEADLINE_EXCEEDED",
                        "NOT_FOUND",
                        "ALREADY_EXISTS",
                        "PERMISSION_DENIED",
                        "UNAUTHENTICATED",
                        "RESOURCE_EXHAUSTED",
                        "FAILED_PRECONDITION",
                        "ABORTED",
                        "OUT_OF_RANGE",
                        "UNIMPLEMENTED",
                        "INTERNAL",
                        "UNAVAILABLE",
                        "DATA_LOSS",
                    ],
                },
                "details": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": {"type": "any"}},
                },
            },
        }
    },
}

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def _check_format(value: Any, fmt: str, where: str, errors: list[str]) -> None:
    if fmt == "google-datetime":
        if not isinstance(value, str) or not _DATETIME.match(value):
            errors.append(f"{where}: {value!r} is not an RFC 3339 timestamp")
            return
        try:
            datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))
        except ValueError:
            errors.append(f"{where}: {value!r} is not a valid date-time")
    elif fmt in ("int64", "uint64"):
        # 64-bit integers travel as decimal strings in Google JSON.
        if not isinstance(value, str) or not re.match(r"^-?\d+$", value):
            errors.append(f"{where}: {value!r} is not an int64 string")
    elif fmt in _INT_RANGES:
        lo, hi = _INT_RANGES[fmt]
        if not isinstance(value, int) or not lo <= value <= hi:
            errors.append(f"{where}: {value!r} is out of {fmt} range")
    elif fmt == "byte":
        try:
            base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (ValueError, AttributeError):
            errors.append(f"{where}: {value!r} is not base64")
    elif fmt == "google-duration" and (
        not isinstance(value, str) or not re.match(r"^-?\d+(\.\d+)?s$", value)
    ):
        errors.append(f"{where}: {value!r} is not a duration")


def validate(doc: JSON, schema: JSON | str, value: Any, where: str = "$") -> list[str]:
    """Return the list of contract violations of `value` against `schema` (a name or a dict)."""
    errors: list[str] = []
    _validate(
        doc, doc["schemas"][schema] if isinstance(schema, str) else schema, value, where, errors
    )
    return errors


def _validate(doc: JSON, schema: JSON, value: Any, where: str, errors: list[str]) -> None:
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref not in doc["schemas"]:
            errors.append(f"{where}: unknown schema {ref!r}")
            return
        _validate(doc, doc["schemas"][ref], value, where, errors)
        return
    kind = schema.get("type")
    if kind == "any" or kind is None and not schema.get("properties"):
        return
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if kind is not None and not checks[kind](value):
        errors.append(f"{where}: expected {kind}, got {type(value).__name__} {value!r:.60}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "format" in schema:
        _check_format(value, schema["format"], where, errors)
    if kind == "array":
        for i, item in enumerate(value):
            _validate(doc, schema.get("items", {"type": "any"}), item, f"{where}[{i}]", errors)
    if isinstance(value, dict) and kind in ("object", None):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                _validate(doc, props[key], item, f"{where}.{key}", errors)
            elif extra is not None:
                _validate(doc, extra, item, f"{where}.{key}", errors)
            else:
                errors.append(f"{where}: unknown property {key!r}")


@dataclass(frozen=True, slots=True)
class Route:
    method_id: str
    http_method: str
    regex: re.Pattern[str]
    response: str | None


def _walk_methods(resource: JSON) -> list[JSON]:
    out = list(resource.get("methods", {}).values())
    for sub in resource.get("resources", {}).values():
        out.extend(_walk_methods(sub))
    return out


def _path_regex(path: str, params: JSON) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1).lstrip("+")
        pattern = params.get(name, {}).get("pattern")
        if pattern:
            return "(?:" + pattern.removeprefix("^").removesuffix("$") + ")"
        return ".+" if m.group(1).startswith("+") else "[^/]+"

    parts = re.split(r"(\{[^}]+\})", path)
    return "".join(
        sub(re.match(r"\{([^}]+)\}", p)) if p.startswith("{") else re.escape(p)  # type: ignore[arg-type]
        for p in parts
    )


def routes(doc: JSON) -> list[Route]:
    """Every method of the document as (id, HTTP method, path regex, response schema)."""
    out = []
    for method in _walk_methods(doc):
        params = method.get("parameters", {})
        response = method.get("response", {}).get("$ref")
        paths = ["/" + doc.get("servicePath", "") + method["path"]]
        upload = method.get("mediaUpload", {}).get("protocols", {})
        paths += [proto["path"] for proto in upload.values()]
        for i, path in enumerate(paths):
            regex = re.compile("^" + _path_regex(path, params) + "$")
            out.append(Route(method["id"], method["httpMethod"], regex, response))
            if i:
                # A resumable upload's last PUT to the session URL answers the method's response.
                out.append(Route(method["id"], "PUT", regex, response))
    return out


def schema_for_response(doc: JSON, http_method: str, path: str) -> str | None:
    """The response schema name of the discovery method serving `http_method path`, else None.

    Raises:
        LookupError: no method of the document serves that call.
    """
    matches = [r for r in routes(doc) if r.http_method == http_method and r.regex.match(path)]
    if not matches:
        raise LookupError(f"no discovery method for {http_method} {path}")
    # The most specific path template wins (e.g. `v1/{+name}` vs `v1/{+parent}/messages`).
    matches.sort(key=lambda r: len(r.regex.pattern), reverse=True)
    return matches[0].response


# --------------------------------------------------------------------------- test harness
OAUTH_TOKEN_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "access_token": {"type": "string"},
        "expires_in": {"type": "integer"},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "scope": {"type": "string"},
        "refresh_token": {"type": "string"},
        "error": {"type": "string"},
        "error_description": {"type": "string"},
    },
}


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP response the tests received."""

    method: str
    path: str
    status: int
    content_type: str
    body: bytes


class RecordingHttp(httplib2.Http):
    """An httplib2.Http that remembers every response, for the contract check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # As googleapiclient.http.build_http does: 308 is "resume incomplete", not a redirect.
        if hasattr(self, "redirect_codes"):
            self.redirect_codes: frozenset[int] = self.redirect_codes - {308}
        self.exchanges: list[Exchange] = []

    def request(self, uri: str, method: str = "GET", *args: Any, **kwargs: Any) -> Any:
        resp, content = super().request(uri, method, *args, **kwargs)
        self.exchanges.append(
            Exchange(
                method=method,
                path=urlsplit(uri).path,
                status=int(resp.status),
                content_type=resp.get("content-type", ""),
                body=content or b"",
            )
        )
        return resp, content


def contract_errors(doc: JSON, exchanges: list[Exchange]) -> list[str]:
    """Validate every JSON response body in `exchanges` against chat.v1.json (or the error or
    OAuth token shape); return the violations."""
    errors: list[str] = []
    for ex in exchanges:
        if not ex.content_type.startswith("application/json") or not ex.body:
            continue
        where = f"{ex.method} {ex.path} -> {ex.status}"
        try:
            body = json.loads(ex.body)
        except ValueError:
            errors.append(f"{where}: body is not JSON")
            continue
        if ex.path == "/token":
            errors += [f"{where}: {e}" for e in validate(doc, OAUTH_TOKEN_SCHEMA, body)]
        elif ex.status >= 400:
            errors += [f"{where}: {e}" for e in validate(doc, ERROR_SCHEMA, body)]
            if body.get("error", {}).get("code") != ex.status:
                errors.append(f"{where}: error.code does not match the HTTP status")
        elif ex.path.startswith("/$discovery"):
            continue
        else:
            try:
                schema = schema_for_response(doc, ex.method, ex.path)
            except LookupError as exc:
                errors.append(f"{where}: {exc}")
                continue
            if schema is None:
                errors.append(f"{where}: method has no response schema but returned JSON")
                continue
            errors += [f"{where}: {e}" for e in validate(doc, schema, body)]
    return errors


def load_spec() -> JSON:
    """The discovery document googleapiclient ships (identical to shared/specs/chat.v1.json)."""
    from googleapiclient.discovery_cache import get_static_doc

    text = get_static_doc("chat", "v1")
    assert text is not None
    return dict(json.loads(text))


@dataclass
class ChatWorld:
    """A populated emulator plus a googleapiclient `chat` service acting as `alice`."""

    emu: ChatEmulator
    chat: Any
    http: RecordingHttp
    alice: str
    bob: str
    space: str
    tokens: JSON
    spec: JSON
    extra_https: list[RecordingHttp] = field(default_factory=list)

    def build(
        self, token: str | None = None, *, refresh_on_401: bool = True, **cred_kwargs: Any
    ) -> tuple[Any, RecordingHttp]:
        """Another service with other credentials, recording into its own RecordingHttp.

        With `refresh_on_401=False` a 401 reaches the caller as an HttpError instead of making
        google-auth try (and, without a refresh token, fail) to refresh.
        """
        creds = Credentials(token=token, **cred_kwargs)
        http = RecordingHttp(timeout=10)
        self.extra_https.append(http)
        codes = (401,) if refresh_on_401 else ()
        authed = AuthorizedHttp(creds, http=http, refresh_status_codes=codes)
        return build_from_document(self.emu.discovery_document(), http=authed), http

    def build_anonymous(self) -> Any:
        """A service that sends no Authorization header at all."""
        http = RecordingHttp(timeout=10)
        self.extra_https.append(http)
        return build_from_document(self.emu.discovery_document(), http=http)

    def all_exchanges(self) -> list[Exchange]:
        out = list(self.http.exchanges)
        for http in self.extra_https:
            out += http.exchanges
        return out


def make_world(emu: ChatEmulator, *, quotas: bool = False) -> ChatWorld:
    """Alice and Bob in a named space `spaces/AAAATEST`, a token for Alice, quotas off unless
    asked for (most tests are not about pacing)."""
    ctl = emu.control
    ctl.configure(quotas_enabled=quotas)
    alice = ctl.create_user("Alice Example", name="users/1001", email="alice@example.com")["name"]
    bob = ctl.create_user("Bob Example", name="users/1002", email="bob@example.com")["name"]
    space = ctl.create_space([alice, bob], display_name="Bridge test", name="spaces/AAAATEST")
    tokens = ctl.add_token(alice, access_token="alice-token", refresh_token="alice-refresh")
    http = RecordingHttp(timeout=10)
    chat = build_from_document(
        emu.discovery_document(),
        http=AuthorizedHttp(Credentials(token=tokens["access_token"]), http=http),
    )
    return ChatWorld(emu, chat, http, alice, bob, space["name"], tokens, load_spec())


def error_status(exc: HttpError) -> tuple[int, str]:
    """(HTTP status, google.rpc status) of a googleapiclient HttpError."""
    body = json.loads(exc.content)
    return exc.status_code, body["error"]["status"]
