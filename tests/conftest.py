"""Shared pytest wiring: the emulator fixtures live in their own plugin modules."""

import logging
import os

from hypothesis import settings

# CI runs every property test on the same examples (a seed derived from the test), so that its
# verdict is reproducible; locally the examples are random and keep exploring. An edge case found
# locally is fixed, or kept as an explicit regression test, never left to chance in CI.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The emulators' werkzeug servers log one line per request: thousands per test, hiding failures.
logging.getLogger("werkzeug").setLevel(logging.ERROR)

pytest_plugins = ["tests.fixtures_chat", "tests.fixtures_discourse"]
