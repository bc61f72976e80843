"""The HTTP face of the bridge: Discourse webhooks in, health and metrics out.

`create_app(...)` is a Flask factory with no globals and no business logic (STYLE H14). The webhook
route verifies, parses, stores, acknowledges, in that order (DESIGN §3 rule 4):
- `X-Discourse-Event-Signature` (`sha256=` + hex HMAC-SHA256 of the raw body) is compared in
  constant time; a missing or wrong signature is 401 and nothing is stored;
- a body that is not a JSON object is 400; a body over the size limit is 413;
- `ping` and event names the bridge does not handle are acknowledged with 200 and not stored;
- a body that does not fit its event name (`inbox.parse_webhook`: the name is an unsigned header,
  the body is what is signed) is 422;
- anything else is handed to `enqueue`, which writes it to the durable inbox, and only then is the
  200 sent. No sync work ever runs inside the request: a worker drains the inbox.
Rejected requests are logged at most once per `REJECTION_LOG_INTERVAL`, with a count of the
others, so a flood of bad requests cannot flood the log.
Served by waitress (`WebhookServer`), never by Flask's development server, with limits that
hold under hostile clients: a body over the limit is refused from its Content-Length before it
is read (a chunked one once it passes the limit), idle connections are closed after a few
seconds, and enough connections are served at once that slow clients cannot starve `/healthz`
or Discourse's deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import waitress
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from waitress.server import BaseWSGIServer, MultiSocketServer
from werkzeug.exceptions import RequestEntityTooLarge

from inbox import Parsed, parse_webhook

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/discourse-webhook"
MAX_BODY_BYTES = 2 * 1024 * 1024
# At most one WARNING about rejected requests per this many seconds (the others are counted).
REJECTION_LOG_INTERVAL = 60.0
# waitress: an idle connection (nothing received) is closed after CHANNEL_TIMEOUT seconds, checked
# every CLEANUP_INTERVAL; Discourse sends a delivery in one go and closes (`Connection: close`).
CHANNEL_TIMEOUT = 10
CLEANUP_INTERVAL = 2
# waitress stops accepting at this many open connections (its default, 100, let 100 half-sent
# requests block every webhook and /healthz for two minutes); capped at half the process's file
# descriptors, the rest being for the store, the clients and the log.
CONNECTION_LIMIT = 1000
# The Discourse webhook events the bridge takes in, the one list of their names: the route stores
# these and acknowledges everything else without storing it; `check` requires the webhook to send
# POST_EVENTS, and CHAT_EVENTS when a DM is mapped (`check --fix` subscribes it to all events).
POST_EVENTS = ("post_created", "post_edited", "post_destroyed", "post_recovered")
TOPIC_EVENTS = ("topic_created", "topic_edited", "topic_destroyed", "topic_recovered")
CHAT_EVENTS = (
    "chat_message_created",
    "chat_message_edited",
    "chat_message_trashed",
    "chat_message_restored",
)
HANDLED_EVENTS = frozenset(POST_EVENTS + TOPIC_EVENTS + CHAT_EVENTS)


class WebhookConfigError(Exception):
    """The listener cannot start safely with this configuration."""


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One accepted webhook request, as it will be stored in the inbox."""

    event_id: str
    event_type: str
    event_name: str
    parsed: Parsed  # the typed event and its inbox keys
    raw_body: str


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()


class RejectionLog:
    """Logs rejected requests at most once per `interval` seconds, with how many were not logged.

    Anyone who reaches the port can send bad requests as fast as they like; one line a minute
    still tells the operator that (and how much) it is happening.
    """

    def __init__(
        self,
        *,
        interval: float = REJECTION_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_line_at: float | None = None
        self._unlogged = 0

    def __call__(self, status: int, reason: str, remote: str | None) -> None:
        with self._lock:
            now = self._clock()
            if self._next_line_at is not None and now < self._next_line_at:
                self._unlogged += 1
                return
            unlogged, self._unlogged = self._unlogged, 0
            self._next_line_at = now + self._interval
        logger.warning(
            "rejected a webhook request from %s with %d: %s (%d more rejected since the last "
            "such line)",
            remote,
            status,
            reason,
            unlogged,
        )


def signature_for(secret: str, body: bytes) -> str:
    """The value Discourse puts in X-Discourse-Event-Signature for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(signature_for(secret, body).encode(), header.strip().encode())


def create_app(
    *,
    secret: str | None,
    enqueue: Callable[[WebhookDelivery], str],
    readiness: Callable[[], Readiness] = lambda: Readiness(True),
    registry: CollectorRegistry | None = None,
    allow_unsigned: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    rejections: RejectionLog | None = None,
) -> Flask:
    """The Flask app. `enqueue` stores a delivery durably and says what became of it.

    Its answer ("queued", "duplicate", "ignored" for one out of scope) is the response's status.

    `rejections` logs the refused requests (one per minute by default; tests pass a clock).

    Raises:
        WebhookConfigError: no secret and unsigned webhooks not explicitly allowed.
    """
    if not secret and not allow_unsigned:
        raise WebhookConfigError(
            "discourse.webhook_secret is not set: set it (the same secret as in Discourse's "
            "webhook settings), or set discourse.allow_unsigned_webhooks: true for local testing"
        )
    app = Flask("gchat_discourse")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    log_rejection = rejections or RejectionLog()

    def reject(status: int, error: str) -> tuple[Response, int]:
        log_rejection(status, error, request.remote_addr)
        return jsonify(error=error), status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return reject(413, f"body larger than {max_body_bytes} bytes")

    @app.post(WEBHOOK_PATH)
    def discourse_webhook() -> tuple[Response, int]:
        body = request.get_data(cache=False)
        if secret and not signature_ok(
            secret, body, request.headers.get("X-Discourse-Event-Signature")
        ):
            return reject(401, "bad or missing X-Discourse-Event-Signature")
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: deeply nested JSON (`[[[[...`) exhausts the parser's stack; it is
            # still just a body we cannot use, not a server error.
            return reject(400, "body is not JSON")
        if not isinstance(parsed, dict):
            return reject(400, "body is not a JSON object")
        event_name = request.headers.get("X-Discourse-Event", "")
        event_type = request.headers.get("X-Discourse-Event-Type", "")
        if event_name == "ping" or event_type == "ping":
            return jsonify(status="pong"), 200
        if event_name not in HANDLED_EVENTS:
            logger.debug("ignored webhook event %r", event_name)
            return jsonify(status="ignored"), 200
        try:
            event = parse_webhook(event_name, parsed)
        except ValueError as exc:
            # The payload lacks what the event needs (e.g. a post without an id), or contradicts
            # the event name (a live message under chat_message_trashed).
            return reject(422, f"unusable {event_name} payload: {exc}")
        delivery = WebhookDelivery(
            event_id=request.headers.get("X-Discourse-Event-Id", ""),
            event_type=event_type,
            event_name=event_name,
            parsed=event,
            raw_body=body.decode("utf-8"),
        )
        try:
            status = enqueue(delivery)
        except Exception:  # boundary: the sender gets a 503 and the catch-up pull covers it
            logger.exception(
                "could not store webhook event %s (%s)", delivery.event_id, event_name
            )
            return jsonify(error="could not store the event"), 503
        return jsonify(status=str(status)), 200

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify(status="ok"), 200

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            state = readiness()
        except Exception as exc:  # boundary: a failing check is itself a reason to be unready
            logger.exception("readiness check failed")
            state = Readiness(False, (f"readiness check failed: {exc!r}",))
        code = 200 if state.ready else 503
        return jsonify(
            status="ready" if state.ready else "not ready", reasons=list(state.reasons)
        ), code

    @app.get("/metrics")
    def metrics() -> Response:
        output = generate_latest(registry) if registry is not None else b""
        return Response(output, mimetype=CONTENT_TYPE_LATEST)

    return app


def connection_limit() -> int:
    """CONNECTION_LIMIT, or half the open files this process may have if that is less."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(1, min(CONNECTION_LIMIT, soft // 2))


class WebhookServer:
    """`create_app` served by waitress on a background thread, stoppable.

    waitress reads a whole request (spooling a large body to a temporary file) before the app
    sees it, so the limits that matter are waitress's own (docs: "Arguments to waitress.serve"):
    `max_request_body_size` refuses a Content-Length at or over it with 413 before reading the
    body, and stops a chunked body as soon as it passes it; `channel_timeout` closes connections
    that send nothing; `connection_limit` is how many connections are served before waitress
    stops accepting (the rest wait in the `backlog`); `asyncore_use_poll` because `select()`
    cannot watch file descriptors past 1024. A slow client holds a connection, never one of the
    `threads` (a request is complete before a thread sees it). The limit waitress lacks is a
    deadline per request: a client that trickles a byte every few seconds is never idle, so more
    than `connection_limit` of those still fill the listener until they stop; a listener
    reachable by strangers belongs behind a proxy with per-client limits.
    """

    def __init__(
        self,
        app: Flask,
        host: str,
        port: int,
        *,
        threads: int = 8,
        max_body_bytes: int = MAX_BODY_BYTES,
        channel_timeout: int = CHANNEL_TIMEOUT,
        connections: int | None = None,
    ) -> None:
        self._server: BaseWSGIServer | MultiSocketServer = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            clear_untrusted_proxy_headers=True,
            # waitress refuses `Content-Length >= max_request_body_size`: allow the limit itself.
            max_request_body_size=max_body_bytes + 1,
            channel_timeout=channel_timeout,
            cleanup_interval=CLEANUP_INTERVAL,
            connection_limit=connections or connection_limit(),
            asyncore_use_poll=True,
        )
        self._thread = threading.Thread(
            target=self._server.run, name="webhook-listener", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def start(self) -> None:
        self._thread.start()
        logger.info("webhook listener on port %d, path %s", self.port, WEBHOOK_PATH)

    def stop(self) -> None:
        self._server.close()
        self._thread.join(timeout=5)
