"""A stand-in for Discourse's external upload store (S3 + CDN) on a second loopback port.

Role: with the `external_storage_cdn` setting, `GET /uploads/short-url/{sha}.{ext}` answers a 302
to this server (`uploads_controller.rb#show_short`: `redirect_to Discourse.store.url_for(upload),
allow_other_host: true`). It serves the upload bytes and records every request's headers, so a
test can check that no forum credential (`Api-Key`, `Api-Username`, `Authorization`, `Cookie`)
followed the redirect to another host.
Invariants: started lazily on the first redirect (most tests never need it); its host:port always
differs from the forum's (another port on 127.0.0.1); the record survives until `clear()`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import make_server

from emulators._server import ServerHandle


@dataclass(frozen=True, slots=True)
class CdnRequest:
    """One request as the CDN saw it; header names as sent."""

    method: str
    path: str
    headers: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": dict(self.headers)}


class CdnServer:
    """Serves `/original/1X/<sha1>.<ext>`; thread-safe; `url_for` starts it on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._requests: list[CdnRequest] = []
        self._handle: ServerHandle | None = None

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        path = environ.get("PATH_INFO", "")
        with self._lock:
            self._requests.append(CdnRequest(environ["REQUEST_METHOD"], path, headers))
            found = self._files.get(path)
        if found is None:
            # S3 answers an XML 404/403 for unknown keys; the body is irrelevant to the bridge.
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"NoSuchKey"]
        data, mime = found
        start_response("200 OK", [("Content-Type", mime), ("Content-Length", str(len(data)))])
        return [data]

    def put(self, sha1: str, extension: str, data: bytes, mime: str) -> None:
        with self._lock:
            self._files[self._path(sha1, extension)] = (data, mime)

    @staticmethod
    def _path(sha1: str, extension: str) -> str:
        return f"/original/1X/{sha1}.{extension}"

    def url_for(self, sha1: str, extension: str) -> str:
        """The absolute URL of an upload on the store, starting the server if needed."""
        with self._lock:
            if self._handle is None:
                server = make_server("127.0.0.1", 0, self._app, threaded=True)
                thread = threading.Thread(
                    target=lambda: server.serve_forever(poll_interval=0.05),
                    name=f"discourse-cdn-{server.port}",
                    daemon=True,
                )
                thread.start()
                self._handle = ServerHandle(server=server, thread=thread, app=self._app)
            return self._handle.url + self._path(sha1, extension)

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.as_json() for r in self._requests]

    def clear(self) -> None:
        """Forget recorded requests and files (the server, if started, keeps running)."""
        with self._lock:
            self._requests.clear()
            self._files.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def stop(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.stop()
