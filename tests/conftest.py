"""Shared pytest wiring: the emulator fixtures live in their own plugin modules."""

import logging

# The emulators' werkzeug servers log one line per request: thousands per test, hiding failures.
logging.getLogger("werkzeug").setLevel(logging.ERROR)

pytest_plugins = ["tests.fixtures_chat", "tests.fixtures_discourse"]
