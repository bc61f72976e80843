"""One line of `check`: what was checked, whether it passed, and how to fix it.

Role: a shared record for the modules whose checks `cli.run_check` prints (`cli` itself and
`events_setup`), so that neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of `check`: what was checked, whether it passed, and how to fix it if not."""

    ok: bool
    what: str
    fix: str = ""
    warning: bool = False  # with ok=True: the bridge works, but something is exposed


def warning(what: str, fix: str) -> CheckResult:
    return CheckResult(True, what, fix, warning=True)
