"""Start `python main.py` as a subprocess against the emulators, and wait on what it does."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
WEBHOOK_SECRET = "test-webhook-secret-0123456789"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for the bridge's webhook listener)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Literal[False] | T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`.

    The value returned is truthy, so never `None` or `False`: its type says so, which lets a
    caller use the result of `lambda: ... and value` or of an Optional lookup directly.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@dataclass
class BridgeFiles:
    directory: Path
    config: Path
    log: Path
    database: Path
    token: Path
    webhook_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/discourse-webhook"


def register_bridge_account(
    chat_control: Any,
    user: str,
    chat_url: str,
    token_path: Path,
    *,
    grant: str = "first",
    scopes: Sequence[str] | None = None,
) -> None:
    """Give the bridge a Chat account: a refresh token in the emulator and a token file for it.

    This is what `python main.py auth` leaves behind; a new `grant` stands for running it again.
    `scopes`: what the grant holds (None: the Chat scopes `auth` asks for without events).
    """
    tokens = chat_control.add_token(
        user=user,
        refresh_token=f"refresh-{grant}-{user.split('/')[-1]}",
        scopes=list(scopes) if scopes is not None else None,
    )
    token_path.write_text(
        json.dumps(
            {
                "token": tokens["access_token"],
                "refresh_token": tokens["refresh_token"],
                "token_uri": f"{chat_url}/token",
                "client_id": "emulator-client",
                "client_secret": "emulator-secret",
                "scopes": list(scopes or ["https://www.googleapis.com/auth/chat.messages"]),
            }
        )
    )
    token_path.chmod(0o600)


def write_config(
    directory: Path,
    *,
    chat_url: str,
    discourse_url: str,
    mappings: Sequence[dict[str, Any]],
    api_key: str = "test-api-key",
    requests_per_minute: float = 6000,
    poll_interval_seconds: float = 0.5,
    extra_sync: dict[str, Any] | None = None,
    extra_discourse: dict[str, Any] | None = None,
    extra_google: dict[str, Any] | None = None,
) -> BridgeFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = BridgeFiles(
        directory=directory,
        config=directory / "config.yaml",
        log=directory / "bridge.log",
        database=directory / "bridge.sqlite",
        token=directory / "token.json",
        webhook_port=free_port(),
    )
    config = {
        "discourse": {
            "url": discourse_url,
            "api_key": api_key,
            "api_username": "system",
            "requests_per_minute": requests_per_minute,
            "webhook_secret": WEBHOOK_SECRET,
            **(extra_discourse or {}),
        },
        "google": {
            "credentials_file": str(directory / "credentials.json"),
            "token_file": str(files.token),
            "api_endpoint": chat_url,
            **(extra_google or {}),
        },
        "sync_settings": {
            "poll_interval_seconds": poll_interval_seconds,
            "webhook_host": "127.0.0.1",
            "webhook_port": files.webhook_port,
            "database": str(files.database),
            "log_file": str(files.log),
            "initial_history": "all",
            **(extra_sync or {}),
        },
        "mappings": list(mappings),
    }
    files.config.write_text(yaml.safe_dump(config, sort_keys=False))
    return files


def run_main(args: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class BridgeProcess:
    """`python main.py --config ...` running in the background."""

    def __init__(self, files: BridgeFiles, *extra: str) -> None:
        self.files = files
        self._stderr = open(files.directory / "stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), "--config", str(files.config), *extra],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def log_text(self) -> str:
        try:
            return self.files.log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def ready(self) -> bool:
        """True once the bridge's /readyz answers 200 (store migrated, first cycle done)."""
        try:
            return requests.get(f"{self.files.base_url}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def completed_cycles(self) -> int:
        return len(re.findall(r"poll cycle done", self.log_text()))

    def wait_cycles(self, count: int, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.completed_cycles() >= count or self._dead(),
            timeout=timeout,
            what=f"{count} poll cycles",
        )
        if self._dead():
            raise AssertionError(f"bridge exited with {self.proc.returncode}: {self.stderr()}")

    def _dead(self) -> bool:
        return self.proc.poll() is not None

    def stderr(self) -> str:
        return (self.files.directory / "stderr.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._stderr.close()

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        self._stderr.close()
        return self.proc.returncode
