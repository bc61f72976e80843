"""Serve a WSGI app on a loopback port in a background thread (tests, bench, demo)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


@dataclass
class ServerHandle:
    """A running server: its base URL and a way to stop it."""

    server: BaseWSGIServer
    thread: threading.Thread
    app: Any
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://{self.server.host}:{self.server.port}"

    @property
    def port(self) -> int:
        return int(self.server.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, poll_interval: float = 0.05
) -> ServerHandle:
    """Start `app` on `host:port` (0 picks a free port) in a daemon thread, threaded per request.

    `poll_interval` is how often the server checks for shutdown: werkzeug's default of 0.5 s
    would add half a second to every test's teardown.
    """
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": poll_interval},
        name=f"wsgi-{server.port}",
        daemon=True,
    )
    thread.start()
    return ServerHandle(server=server, thread=thread, app=app)
