"""Pytest fixtures for the Discourse emulator and a local webhook receiver.

- `discourse_emulator`: a fresh `DiscourseEmulator` on an ephemeral loopback port (api key
  "test-api-key", admin user `system`), stopped after the test. An unexpected exception inside
  it (a bug in the fake, answered 500 "emulator bug" and recorded, see emulators/_errors.py) fails
  the test that caused it: re-raised with its traceback right after the test body (the test
  FAILS) and, for anything raised later, at teardown; `check_errors()` raises it mid-test.
- `discourse_api`: a `DiscourseApi` (requests session on that emulator, acting as `system` by
  default) whose exchanges must all conform to `shared/specs/openapi.json` (checked at teardown).
- `webhook_receiver`: a tiny HTTP server in a thread that records every request it receives and
  answers the status it is told to (`respond_with(status)`), for webhook delivery tests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from emulators.discourse import DiscourseEmulator, serve_fast
from tests.emulators.discourse_contract import RecordingSession


@pytest.fixture
def discourse_emulator() -> Iterator[DiscourseEmulator]:
    emulator = DiscourseEmulator.start(host="127.0.0.1", port=0, api_key="test-api-key")
    try:
        yield emulator
    finally:
        emulator.stop()
    emulator.check_errors()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail the test itself (not only its teardown) when its emulator recorded a bug."""
    try:
        return (yield)
    finally:
        emulator = getattr(item, "funcargs", {}).get("discourse_emulator")
        if isinstance(emulator, DiscourseEmulator):
            emulator.check_errors()


class DiscourseApi:
    """Admin-API calls against an emulator: `api.post("/posts.json", json=..., user="alice")`.

    `user=None` sends no Api-Username; `key=None` sends no Api-Key.
    """

    def __init__(self, emulator: DiscourseEmulator) -> None:
        self.emulator = emulator
        self.url = emulator.url
        self.session = RecordingSession()

    def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = "system",
        key: str | None = "test-api-key",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        sent: dict[str, str] = {}
        if key is not None:
            sent["Api-Key"] = key
        if user is not None:
            sent["Api-Username"] = user
        sent.update(headers or {})
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, self.url + path, headers=sent, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def discourse_api(discourse_emulator: DiscourseEmulator) -> Iterator[DiscourseApi]:
    api = DiscourseApi(discourse_emulator)
    yield api
    problems = api.session.contract_problems()
    assert not problems, "openapi contract violations:\n" + "\n".join(problems)


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    """One request as the receiver saw it (header names as sent, body bytes untouched)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lower), None)


class WebhookReceiver:
    """Records POSTs; answers `status` (default 200). Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.received: list[ReceivedWebhook] = []
        self.status = 200
        self._handle = serve_fast(self._app)
        self.url = self._handle.url + "/hook"

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH"):
            headers["Content-Length"] = environ["CONTENT_LENGTH"]
        with self._cond:
            self.received.append(
                ReceivedWebhook(environ["REQUEST_METHOD"], environ["PATH_INFO"], headers, body)
            )
            status = self.status
            self._cond.notify_all()
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"ok"]

    def respond_with(self, status: int) -> None:
        with self._cond:
            self.status = status

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedWebhook]:
        """Wait until at least `count` requests arrived; returns them all (fails on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} webhook requests, got {len(self.received)}"
                    )
                self._cond.wait(remaining)
            return list(self.received)

    def stop(self) -> None:
        self._handle.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()
