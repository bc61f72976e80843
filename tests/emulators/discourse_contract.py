"""Contract check: requests our tests send and responses the Discourse emulator returns must
validate against `shared/specs/openapi.json` wherever the spec covers the path and status.

`check_exchange(response)` validates one `requests` exchange with openapi-core and returns the
problems (empty when it conforms, or when the spec does not cover the path, method or status).
`RecordingSession` is a `requests.Session` that keeps every exchange for a later check.

A few statements of the published spec contradict the reference
(`shared/reference/discourse-api.md`) or Discourse core itself; they are listed in
`KNOWN_SPEC_DEFECTS` with the reason, and only those exact (operation, field) pairs are ignored.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

SPEC_PATH = Path(__file__).resolve().parents[2] / ".." / "shared" / "specs" / "openapi.json"
_SPEC_CANDIDATES = (SPEC_PATH, Path("/work/shared/specs/openapi.json"))
SPEC_HOST = "https://discourse.example.com"


@dataclass(frozen=True, slots=True)
class SpecDefect:
    """One ignored disagreement: the operation (METHOD + spec path), a field regex, why."""

    operation: str
    field: str
    reason: str


KNOWN_SPEC_DEFECTS: tuple[SpecDefect, ...] = (
    SpecDefect(
        "* *",
        r"(^|\.)reviewable_id$",
        "spec types it integer; core sends null for posts never reviewed (reference §8.4)",
    ),
    SpecDefect(
        "GET /c/{slug}/{id}.json",
        r"^topic_list\.more_topics_url$",
        "reference §2.4: present when a page is full; the spec's closed topic_list omits it",
    ),
    SpecDefect(
        "* *",
        r"^(category|category_list\.categories\.\d+)\.parent_category_id$",
        "BasicCategorySerializer emits parent_category_id (reference §5); the closed spec "
        "schemas omit it",
    ),
    SpecDefect(
        "GET /t/{id}.json",
        r"^category_id$",
        "private messages have no category: core sends null (reference §2.1, §8.3)",
    ),
    SpecDefect(
        "* *",
        r"reply_to_post_number",
        "spec types it string|null; core serializes the integer post_number (reference §2.1)",
    ),
    SpecDefect(
        "POST /posts.json",
        r"^(category|topic_id|reply_to_post_number|skip_validations|import_mode|whisper|"
        r"nested_post)$",
        "request: spec types these as string/omits them; core accepts JSON numbers/booleans "
        "and the API-only params of reference §2.1",
    ),
    SpecDefect(
        "GET /u/{username}.json",
        r"^user(\.|$)",
        "UserSerializer has ~100 keys; the emulator serves the subset a bridge reads",
    ),
    SpecDefect(
        "GET /u/by-external/{external_id}.json",
        r"^user(\.|$)",
        "UserSerializer has ~100 keys; the emulator serves the subset a bridge reads",
    ),
    SpecDefect(
        "GET /u/by-external/{provider}/{external_id}.json",
        r"^user(\.|$)",
        "UserSerializer has ~100 keys; the emulator serves the subset a bridge reads",
    ),
    SpecDefect(
        "POST /posts.json",
        r"^(reply_to_user|action_code|deleted_by)$",
        "conditional PostSerializer keys (reference §2.1) absent from the spec's closed schema",
    ),
    SpecDefect(
        "POST /uploads.json",
        r"^(type|upload_type|file|synchronous)$",
        "request: core accepts `type` or `upload_type` (reference §7); multipart values are "
        "strings, so the spec's boolean `synchronous` cannot be sent as one",
    ),
    SpecDefect(
        "PUT /posts/{id}.json",
        r"^(post|title)",
        "spec's post schema is narrower than PostSerializer, and OP edits accept a top-level "
        "title (reference §2.2)",
    ),
)


@lru_cache(maxsize=1)
def _spec_dict() -> dict[str, Any]:
    for candidate in _SPEC_CANDIDATES:
        if candidate.exists():
            spec: dict[str, Any] = json.loads(candidate.read_text())
            return spec
    raise FileNotFoundError("shared/specs/openapi.json not found")


@lru_cache(maxsize=1)
def _openapi() -> OpenAPI:
    return OpenAPI.from_dict(copy.deepcopy(_spec_dict()))


def _operation_for(method: str, path: str) -> str | None:
    """The spec path template matching `path`, as `"METHOD /template"`, or None."""
    spec = _spec_dict()
    matches = []
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            matches.append(template)
    if not matches:
        return None
    # Prefer the most literal template: /c/{id}/show.json over /c/{slug}/{id}.json.
    best = max(matches, key=lambda t: len(re.sub(r"\{[^}]+\}", "", t)))
    return f"{method.upper()} {best}"


def _field_of(error: Any) -> str:
    path = [str(p) for p in getattr(error, "absolute_path", []) or []]
    if path:
        return ".".join(path)
    message = str(getattr(error, "message", error))
    match = re.search(r"'([^']+)' (?:is a required property|was unexpected)", message)
    if match:
        return match.group(1)
    match = re.search(r"\('([^']+)'.*were unexpected\)", message)
    return match.group(1) if match else ""


def _schema_errors(exc: BaseException) -> list[Any]:
    seen: BaseException | None = exc
    while seen is not None:
        errors = getattr(seen, "schema_errors", None)
        if errors:
            return list(errors)
        seen = seen.__cause__ or seen.__context__
    return []


DEFECT_HITS: dict[SpecDefect, int] = {}
IGNORED_FIELDS: set[str] = set()


def _ignored(operation: str, field: str) -> bool:
    for defect in KNOWN_SPEC_DEFECTS:
        if defect.operation not in ("* *", operation):
            continue
        if re.search(defect.field, field):
            DEFECT_HITS[defect] = DEFECT_HITS.get(defect, 0) + 1
            IGNORED_FIELDS.add(f"{operation} {field}")
            return True
    return False


def _unexpected_fields(error: Any) -> list[str]:
    message = str(getattr(error, "message", error))
    found = re.findall(r"'([^']+)'", message.split("were unexpected")[0])
    return found if "were unexpected" in message or "was unexpected" in message else []


def check_exchange(response: requests.Response) -> list[str]:
    """Validate the request and the response of one exchange; return the problems found."""
    prepared = response.request.copy()
    assert prepared.url is not None  # a request that was sent has its URL
    parsed = urlparse(prepared.url)
    operation = _operation_for(prepared.method or "GET", parsed.path)
    if operation is None or response.status_code >= 300 and response.status_code < 400:
        return []
    prepared.url = SPEC_HOST + parsed.path + (f"?{parsed.query}" if parsed.query else "")
    openapi_request = RequestsOpenAPIRequest(prepared)
    problems: list[str] = []
    # A request the emulator rejected (4xx) was sent invalid on purpose by a negative test. A
    # streamed body (a file upload sent in blocks) is multipart, which the spec does not cover.
    streamed = not isinstance(prepared.body, bytes | str | type(None))
    if response.status_code < 400 and not streamed:
        try:
            _openapi().validate_request(openapi_request)
        except Exception as exc:  # openapi-core raises a family of errors; sorted below
            problems += _describe(operation, "request", exc)
    if _alternative_shape(operation, response):
        return problems
    try:
        _openapi().validate_response(openapi_request, RequestsOpenAPIResponse(response))
    except Exception as exc:
        problems += _describe(operation, f"response {response.status_code}", exc)
    return problems


def _alternative_shape(operation: str, response: requests.Response) -> bool:
    """Bodies the reference documents but the spec has no schema for (not validated)."""
    if operation == "POST /posts.json":
        try:
            body = response.json()
        except ValueError:
            return False
        # `nested_post=true` and the approval queue's `enqueued` answer (reference §2.1)
        return isinstance(body, dict) and "action" in body
    if operation == "POST /users.json":
        try:
            body = response.json()
        except ValueError:
            return False
        # failures are 200 with success:false and field errors (reference §6.1)
        return isinstance(body, dict) and body.get("success") is False
    return False


def _describe(operation: str, where: str, exc: Exception) -> list[str]:
    name = type(exc).__name__
    if (
        name
        in (
            "ResponseNotFound",
            "OperationNotFound",
            "PathNotFound",
            "ServerNotFound",
            "MissingRequiredParameter",
            "SecurityNotFound",
        )
        or "NotFound" in name
    ):
        # The spec does not describe this status, or requires headers that Discourse
        # accepts in other ways (e.g. Api-Key on public reads): not covered.
        return []
    if name in ("MissingRequestBody", "MediaTypeNotFound", "MissingResponseContent"):
        return []
    if "mimetype not found" in str(exc):
        # Discourse also accepts form-encoded and multipart bodies (reference §1.1); the spec
        # documents JSON only, so those requests are not covered.
        return []
    errors = _schema_errors(exc)
    if not errors:
        return [f"{operation} {where}: {name}: {exc}"]
    problems = []
    for error in errors:
        prefix = ".".join(str(p) for p in getattr(error, "absolute_path", []) or [])
        unexpected = _unexpected_fields(error)
        if unexpected:
            fields = [f"{prefix}.{name}" if prefix else name for name in unexpected]
        else:
            fields = [_field_of(error)]
        for field in fields:
            if not _ignored(operation, field):
                problems.append(
                    f"{operation} {where}: {field}: {getattr(error, 'message', error)}"
                )
    return problems


class RecordingSession(requests.Session):
    """A `requests.Session` that remembers every response (follow-ups of redirects included)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[requests.Response] = []
        self.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.exchanges.append(response)

    def contract_problems(self) -> list[str]:
        problems: list[str] = []
        for response in self.exchanges:
            problems += check_exchange(response)
        return problems
