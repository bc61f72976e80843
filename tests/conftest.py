"""Shared pytest wiring: the emulator fixtures live in their own plugin modules."""

pytest_plugins = ["tests.fixtures_chat", "tests.fixtures_discourse"]
