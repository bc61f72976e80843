"""Pytest fixtures for the Google Chat emulator (loaded as a plugin by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

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
