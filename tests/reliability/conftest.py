"""Wiring of the reliability suite (issue 9).

Every test runs at two sizes: the reduced one runs in the normal `make test` (CI), the full
one (marked `slow`) only when `RELIABILITY_FULL=1`, which `make reliability` sets. Each test
records its figures (items, kills, faults injected, requests fuzzed, lost, duplicated) with the
`figures` fixture; they are printed at the end of the session and, when `RELIABILITY_FIGURES`
names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.world import World

FULL = os.environ.get("RELIABILITY_FULL") == "1"
_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason="full-size reliability run: make reliability")
    for item in items:
        if "tests/reliability/" in item.nodeid and item.get_closest_marker("slow"):
            item.add_marker(skip)


class Figures:
    """One test's figures; `lost` and `duplicated` default to what the checker reported."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[str, Any] = {}

    def set(self, **values: Any) -> None:
        self.values.update(values)

    def add(self, key: str, amount: int = 1) -> None:
        self.values[key] = int(self.values.get(key, 0)) + amount


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    record = Figures(request.node.name)
    yield record
    _FIGURES[record.name] = record.values


@pytest.fixture
def world(chat_emulator: Any, discourse_emulator: Any, tmp_path: Path) -> World:
    return World(chat_emulator, discourse_emulator, tmp_path)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, values in sorted(_FIGURES.items()):
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        terminalreporter.write_line(f"{name}: {shown}")
    totals: dict[str, int] = {}
    for values in _FIGURES.values():
        for key, value in values.items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    terminalreporter.write_line("total: " + ", ".join(f"{k}={v}" for k, v in totals.items()))
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps({"tests": _FIGURES, "total": totals}, indent=2))
