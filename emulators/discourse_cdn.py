"""A stand-in for Discourse's external upload store (S3 + CDN) on a second loopback port.

Role: with the `external_storage_cdn` setting, `GET /uploads/short-url/{sha}.{ext}` answers a 302
to this server (`uploads_controller.rb#show_short`: `redirect_to Discourse.store.url_for(upload),
allow_other_host: true`). It serves the upload bytes and records every request's headers, so a
test can check that no forum credential (`Api-Key`, `Api-Username`, `Authorization`, `Cookie`)
followed the redirect to another host, and how many bytes of the file it handed to the connection
before the client hung up (`bytes_sent`: a client that stops reading early shows less than the
file, plus what the sockets' buffers took).
Invariants: started lazily on the first redirect (most tests never need it); its host:port always
differs from the forum's (another port on 127.0.0.1); the record survives until `clear()`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from emulators._server import ServerHandle


@dataclass(frozen=True, slots=True)
class CdnRequest:
    """One request as the CDN saw it; header names as sent."""

    method: str
    path: str
    headers: dict[str, str]

    def as_json(self, bytes_sent: int = 0) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "bytes_sent": bytes_sent,
        }


# Bytes handed to the server per write: small, so that `bytes_sent` shows where a client stopped.
_CHUNK = 64 * 1024
# The connection's send buffer, fixed (which turns off Linux's autotuning, up to 4 MB): what the
# server could write ahead of a client that stopped reading stays small and `bytes_sent` close
# to what the client read. A measuring device, not a claim about S3.
_SEND_BUFFER = 64 * 1024


class _SmallBufferHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)


class CdnServer:
    """Serves `/original/1X/<sha1>.<ext>`; thread-safe; `url_for` starts it on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str, bool]] = {}  # data, mime, length declared
        self._requests: list[CdnRequest] = []
        self._sent: list[int] = []  # bytes of the body written, per request
        self._handle: ServerHandle | None = None

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        path = environ.get("PATH_INFO", "")
        with self._lock:
            self._requests.append(CdnRequest(environ["REQUEST_METHOD"], path, headers))
            self._sent.append(0)
            index = len(self._sent) - 1
            found = self._files.get(path)
        if found is None:
            # S3 answers an XML 404/403 for unknown keys; the body is irrelevant to the bridge.
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return iter([b"NoSuchKey"])
        data, mime, declared = found
        answer = [("Content-Type", mime)]
        if declared:
            answer.append(("Content-Length", str(len(data))))
        # Without a length the server sends the body chunked (a CDN compressing on the fly).
        start_response("200 OK", answer)
        return self._body(data, index)

    def _body(self, data: bytes, index: int) -> Iterator[bytes]:
        """The file in small writes; the server stops asking once the client has gone."""
        for start in range(0, len(data), _CHUNK):
            chunk = data[start : start + _CHUNK]
            yield chunk
            # Counted once the server took the chunk (it asks for the next one only then).
            with self._lock:
                if index < len(self._sent):
                    self._sent[index] += len(chunk)

    def put(
        self, sha1: str, extension: str, data: bytes, mime: str, *, declare_length: bool = True
    ) -> None:
        with self._lock:
            self._files[self._path(sha1, extension)] = (data, mime, declare_length)

    @staticmethod
    def _path(sha1: str, extension: str) -> str:
        return f"/original/1X/{sha1}.{extension}"

    def url_for(self, sha1: str, extension: str) -> str:
        """The absolute URL of an upload on the store, starting the server if needed."""
        with self._lock:
            if self._handle is None:
                server = make_server(
                    "127.0.0.1", 0, self._app, threaded=True, request_handler=_SmallBufferHandler
                )
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
            return [r.as_json(sent) for r, sent in zip(self._requests, self._sent, strict=True)]

    def clear(self) -> None:
        """Forget recorded requests and files (the server, if started, keeps running)."""
        with self._lock:
            self._requests.clear()
            self._sent.clear()
            self._files.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sent.clear()

    def stop(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.stop()
