"""Emulator bugs, kept: an unexpected exception in a handler is recorded, not only answered.

Both emulators answer an unexpected exception (not one of their deliberate API errors) with a
500 whose body says "emulator bug", log it, and record it here. A 500 alone would be retried by
the bridge's clients and look like flakiness; the record lets a test fail with the original
exception and traceback (`check()` re-raises it in the caller's thread, as pytest-httpserver's
`check_assertions` does). Nobody has to look: the standalone runners, the demo and the benchmarks
keep the old behaviour, "log and 500".
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# What the 500 body says, so that a person reading the bridge's logs sees whose bug it is.
EMULATOR_BUG = "emulator bug"


@dataclass(frozen=True, slots=True)
class HandlerError:
    """One unexpected exception: where it happened, the exception and its formatted traceback."""

    emulator: str
    method: str
    path: str
    exception: BaseException
    traceback: str

    def summary(self) -> str:
        return f"{self.emulator} emulator bug while handling {self.method} {self.path}"

    def message(self) -> str:
        """The 500 body's message: names the bug without leaking the whole traceback."""
        return f"{EMULATOR_BUG}: {type(self.exception).__name__}: {self.exception}"


class HandlerErrors:
    """Thread-safe record of the unexpected exceptions of one emulator instance.

    At most `keep` are kept (each holds its frames): a long-running emulator nobody checks (the
    standalone runners, the demo, a benchmark) only logs the ones beyond, and counts them.
    """

    def __init__(self, emulator: str, keep: int = 100) -> None:
        self.emulator = emulator
        self.keep = keep
        self.dropped = 0
        self._lock = threading.Lock()
        self._errors: list[HandlerError] = []

    def record(self, method: str, path: str, exc: BaseException) -> HandlerError:
        """Log and keep `exc` (call from the `except` block or error handler that caught it)."""
        text = "".join(traceback.format_exception(exc))
        error = HandlerError(self.emulator, method, path, exc, text)
        exc.add_note(error.summary())
        logger.error("%s\n%s", error.summary(), text)
        with self._lock:
            if len(self._errors) < self.keep:
                self._errors.append(error)
            else:
                self.dropped += 1
        return error

    @property
    def errors(self) -> list[HandlerError]:
        """A copy of what was recorded and not yet reported by `check()`, oldest first."""
        with self._lock:
            return list(self._errors)

    def clear(self) -> None:
        with self._lock:
            self._errors.clear()
            self.dropped = 0

    def check(self) -> None:
        """Raise the first recorded exception (its original traceback kept), forgetting them all.

        Each error is reported once: a test that expects one can `pytest.raises` it, and the
        fixture's teardown check will not raise it again.
        """
        with self._lock:
            errors, self._errors = self._errors, []
            dropped, self.dropped = self.dropped, 0
        if not errors:
            return
        first = errors[0].exception
        if len(errors) > 1 or dropped:
            others = "; ".join(f"{e.method} {e.path}: {e.exception!r}" for e in errors[1:])
            more = len(errors) - 1 + dropped
            first.add_note(f"{more} more emulator error(s) (see the log): {others}")
        raise first
