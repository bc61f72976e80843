"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.world import World


@pytest.fixture
def world(chat_emulator: Any, discourse_emulator: Any, tmp_path: Path) -> World:
    return World(chat_emulator, discourse_emulator, tmp_path)
