"""Emulator bugs surface: an unexpected exception in a handler fails the test that caused it.

A handler is made to raise by monkeypatching one state (or worker) method of a running emulator.
The answer is still a 500 saying "emulator bug" (the bridge's clients see a server error), but
the exception is recorded on the emulator (`errors`), `check_errors()` re-raises it, and the
fixtures re-raise it after the test body / at teardown (checked here with `pytester`).
Deliberate API errors (ApiError, werkzeug's 404, injected faults) are answered exactly as before
and never recorded.
"""

from __future__ import annotations

from typing import NoReturn

import pytest
import requests

from emulators._errors import HandlerErrors
from emulators.discourse import DiscourseEmulator
from emulators.google_chat import ChatEmulator
from tests.fixtures_discourse import WebhookReceiver

pytest_plugins = ["pytester"]


class EmulatorBoom(RuntimeError):
    """The exception the monkeypatched handler raises (distinct from anything real)."""


def _boom(*_args: object, **_kwargs: object) -> NoReturn:
    raise EmulatorBoom("boom in a fake")


# --- Google Chat ----------------------------------------------------------------------------


def _chat_caller(emu: ChatEmulator) -> tuple[str, dict[str, str]]:
    """A space and the headers of a member allowed to read it."""
    user = emu.control.create_user(display_name="Ann")["name"]
    space = emu.control.create_space(members=[user], display_name="Room")["name"]
    token = emu.control.add_token(user)["access_token"]
    return space, {"Authorization": f"Bearer {token}"}


def test_chat_handler_exception_is_a_recorded_500(
    chat_emulator: ChatEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    space, headers = _chat_caller(chat_emulator)
    monkeypatch.setattr(chat_emulator.state, "space_json", _boom)

    resp = requests.get(f"{chat_emulator.url}/v1/{space}", headers=headers, timeout=10)

    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["status"] == "INTERNAL"
    assert error["message"].startswith("emulator bug: EmulatorBoom: boom in a fake")
    [bug] = chat_emulator.errors
    assert isinstance(bug.exception, EmulatorBoom)
    assert (bug.method, bug.path) == ("GET", f"/v1/{space}")
    assert "_boom" in bug.traceback and "EmulatorBoom: boom in a fake" in bug.traceback
    # The request log still shows what the client saw.
    assert chat_emulator.control.requests()["requests"][-1]["status"] == 500

    with pytest.raises(EmulatorBoom, match="boom in a fake") as raised:
        chat_emulator.check_errors()
    assert raised.value is bug.exception
    assert any(f"handling GET /v1/{space}" in note for note in raised.value.__notes__)
    # Reported once: nothing left for a second check (nor for the fixture's teardown).
    assert chat_emulator.errors == []
    chat_emulator.check_errors()


def test_chat_control_route_exception_is_recorded(
    chat_emulator: ChatEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_emulator.state, "state_json", _boom)
    resp = requests.get(f"{chat_emulator.url}/_emulator/state", timeout=10)
    assert resp.status_code == 500 and "emulator bug" in resp.json()["error"]["message"]
    with pytest.raises(EmulatorBoom):
        chat_emulator.check_errors()


def test_chat_deliberate_errors_are_not_recorded(chat_emulator: ChatEmulator) -> None:
    space, headers = _chat_caller(chat_emulator)
    url = chat_emulator.url

    missing = requests.get(f"{url}/v1/spaces/nope", headers=headers, timeout=10)
    unauthenticated = requests.get(f"{url}/v1/{space}", timeout=10)
    no_route = requests.get(f"{url}/v1/nothing/here", headers=headers, timeout=10)
    chat_emulator.control.add_fault(count=1, status=503)
    injected = requests.get(f"{url}/v1/{space}", headers=headers, timeout=10)

    assert (missing.status_code, missing.json()["error"]["status"]) == (404, "NOT_FOUND")
    assert unauthenticated.status_code == 401
    assert no_route.status_code == 404
    assert (injected.status_code, injected.json()["error"]["status"]) == (503, "UNAVAILABLE")
    assert "emulator bug" not in injected.text
    assert chat_emulator.errors == []


# --- Discourse ------------------------------------------------------------------------------

_ADMIN = {"Api-Key": "test-api-key", "Api-Username": "system"}


def test_discourse_handler_exception_is_a_recorded_500(
    discourse_emulator: DiscourseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discourse_emulator.emu.forum, "create_category", _boom)

    resp = requests.post(
        f"{discourse_emulator.url}/categories.json",
        json={"name": "Ideas"},
        headers=_ADMIN,
        timeout=10,
    )

    assert resp.status_code == 500
    body = resp.json()
    assert body["error_type"] == "emulator_bug"
    assert body["errors"] == ["emulator bug: EmulatorBoom: boom in a fake"]
    [bug] = discourse_emulator.errors
    assert (bug.method, bug.path) == ("POST", "/categories.json")
    assert isinstance(bug.exception, EmulatorBoom) and "_boom" in bug.traceback
    with pytest.raises(EmulatorBoom):
        discourse_emulator.check_errors()
    assert discourse_emulator.errors == []


def test_discourse_reset_keeps_recorded_errors(
    discourse_emulator: DiscourseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discourse_emulator.emu.forum, "create_category", _boom)
    requests.post(
        f"{discourse_emulator.url}/categories.json", json={"name": "X"}, headers=_ADMIN, timeout=10
    )
    discourse_emulator.control.reset()
    assert len(discourse_emulator.errors) == 1
    discourse_emulator.emu.errors.clear()


def test_discourse_webhook_worker_exception_is_recorded(
    discourse_emulator: DiscourseEmulator,
    webhook_receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hook = discourse_emulator.control.create_webhook(webhook_receiver.url)
    monkeypatch.setattr(discourse_emulator.emu.hooks, "_deliver", _boom)
    discourse_emulator.emu.hooks.ping(int(hook["id"]))
    assert discourse_emulator.emu.hooks.wait_idle(10)
    [bug] = discourse_emulator.errors
    assert (bug.method, bug.path) == ("WEBHOOK", f"hook {hook['id']}")
    with pytest.raises(EmulatorBoom):
        discourse_emulator.check_errors()


def test_discourse_deliberate_errors_are_not_recorded(
    discourse_emulator: DiscourseEmulator,
) -> None:
    url = discourse_emulator.url
    missing = requests.get(f"{url}/t/999999.json", headers=_ADMIN, timeout=10)
    bad_key = requests.get(
        f"{url}/categories.json", headers={**_ADMIN, "Api-Key": "wrong"}, timeout=10
    )
    discourse_emulator.control.add_fault(count=1, status=502)
    injected = requests.get(f"{url}/categories.json", headers=_ADMIN, timeout=10)

    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"
    assert bad_key.status_code == 403
    assert injected.status_code == 502 and injected.json() == {"errors": ["injected fault 502"]}
    assert discourse_emulator.errors == []


# --- the fixtures fail the test that caused the bug -----------------------------------------

_INNER_TESTS = """
import pytest
import requests


def _boom(*args, **kwargs):
    raise LookupError("fake is broken")


def test_chat_bug(chat_emulator, monkeypatch):
    monkeypatch.setattr(chat_emulator.state, "state_json", _boom)
    # The client sees a 500 and would retry; the test body itself passes...
    assert requests.get(chat_emulator.url + "/_emulator/state", timeout=10).status_code == 500


def test_discourse_bug(discourse_emulator, monkeypatch):
    monkeypatch.setattr(discourse_emulator.emu.forum, "create_category", _boom)
    requests.post(
        discourse_emulator.url + "/categories.json",
        json={"name": "x"},
        headers={"Api-Key": "test-api-key", "Api-Username": "system"},
        timeout=10,
    )


def test_body_failure_is_kept_as_context(chat_emulator, monkeypatch):
    monkeypatch.setattr(chat_emulator.state, "state_json", _boom)
    requests.get(chat_emulator.url + "/_emulator/state", timeout=10)
    assert False, "the test's own failure"


@pytest.fixture
def late_request(chat_emulator, monkeypatch):
    yield
    # After the test body: only the fixture's teardown can catch this one.
    monkeypatch.setattr(chat_emulator.state, "state_json", _boom)
    requests.get(chat_emulator.url + "/_emulator/state", timeout=10)


def test_bug_after_the_body(late_request):
    pass


def test_clean(chat_emulator, discourse_emulator):
    assert requests.get(chat_emulator.url + "/_emulator/state", timeout=10).ok
"""


def test_fixtures_fail_the_test_that_caused_an_emulator_bug(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.fixtures_chat", "tests.fixtures_discourse"]')
    pytester.makepyfile(test_inner=_INNER_TESTS)

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2, failed=3, errors=1)
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    assert {(r.nodeid.split("::")[-1], r.when) for r in reports if r.failed} == {
        ("test_chat_bug", "call"),  # the test itself fails, not only its teardown
        ("test_discourse_bug", "call"),
        ("test_body_failure_is_kept_as_context", "call"),
        ("test_bug_after_the_body", "teardown"),
    }
    output = result.stdout.str()
    # The original exception and its traceback, raised in the test's thread.
    assert "LookupError: fake is broken" in output
    assert "in _boom" in output
    assert "google chat emulator bug while handling GET /_emulator/state" in output
    assert "discourse emulator bug while handling POST /categories.json" in output
    # A failing body is not hidden: it is shown as the context of the emulator's exception.
    assert "AssertionError: the test's own failure" in output
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_bug_after_the_body*"])


def test_recorder_keeps_a_bounded_number_and_reports_the_rest() -> None:
    errors = HandlerErrors("test", keep=2)
    raised = [ValueError(f"bug {i}") for i in range(4)]
    for i, exc in enumerate(raised):
        errors.record("GET", f"/p/{i}", exc)
    assert [e.exception for e in errors.errors] == raised[:2]
    with pytest.raises(ValueError, match="bug 0") as info:
        errors.check()
    assert "3 more emulator error(s)" in info.value.__notes__[-1]
    assert "/p/1" in info.value.__notes__[-1]
    assert errors.errors == [] and errors.dropped == 0
    errors.check()
