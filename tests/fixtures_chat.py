"""Pytest fixtures for the Google Chat emulator (loaded as a plugin by tests/conftest.py).

An unexpected exception inside the emulator (a bug in the fake, answered 500 "emulator bug" and
recorded, see emulators/_errors.py) fails the test that caused it: it is re-raised, with its
traceback, right after the test body (the test FAILS) and, for anything raised later, at the
fixture's teardown (an ERROR at teardown). `chat_emulator.check_errors()` raises it mid-test.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from emulators.google_chat import ChatEmulator


@pytest.fixture
def chat_emulator() -> Iterator[ChatEmulator]:
    """A fresh Chat emulator on an ephemeral 127.0.0.1 port, stopped after the test."""
    emu = ChatEmulator.start(host="127.0.0.1", port=0)
    try:
        yield emu
    finally:
        emu.stop()
    emu.check_errors()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail the test itself (not only its teardown) when its emulator recorded a bug."""
    try:
        return (yield)
    finally:
        emu = getattr(item, "funcargs", {}).get("chat_emulator")
        if isinstance(emu, ChatEmulator):
            emu.check_errors()
