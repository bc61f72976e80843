"""The HTTP face of the bridge: Discourse webhooks in, health and metrics out.

`create_app(...)` is a Flask factory with no globals and no business logic (STYLE H14). The webhook
route verifies, parses, stores, acknowledges, in that order (DESIGN §3 rule 4):
- `X-Discourse-Event-Signature` (`sha256=` + hex HMAC-SHA256 of the raw body) is compared in
  constant time; a missing or wrong signature is 401 and nothing is stored;
- a body that is not a JSON object is 400; a body over the size limit is 413;
- `ping` and event names the bridge does not handle are acknowledged with 200 and not stored;
- anything else is handed to `enqueue`, which writes it to the durable inbox, and only then is the
  200 sent. No sync work ever runs inside the request: a worker drains the inbox.
Served by waitress (`serve`), never by Flask's development server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
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
    enqueue: Callable[[WebhookDelivery], bool],
    readiness: Callable[[], Readiness] = lambda: Readiness(True),
    registry: CollectorRegistry | None = None,
    allow_unsigned: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Flask:
    """The Flask app. `enqueue` stores a delivery durably and returns False for a duplicate.

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

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return jsonify(error=f"body larger than {max_body_bytes} bytes"), 413

    @app.post(WEBHOOK_PATH)
    def discourse_webhook() -> tuple[Response, int]:
        body = request.get_data(cache=False)
        if secret and not signature_ok(
            secret, body, request.headers.get("X-Discourse-Event-Signature")
        ):
            logger.warning(
                "rejected a webhook with a missing or wrong signature from %s", request.remote_addr
            )
            return jsonify(error="bad or missing X-Discourse-Event-Signature"), 401
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: deeply nested JSON (`[[[[...`) exhausts the parser's stack; it is
            # still just a body we cannot use, not a server error.
            return jsonify(error="body is not JSON"), 400
        if not isinstance(parsed, dict):
            return jsonify(error="body is not a JSON object"), 400
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
            # The payload lacks what the event needs (e.g. a post without an id).
            return jsonify(error=f"unusable {event_name} payload: {exc}"), 422
        delivery = WebhookDelivery(
            event_id=request.headers.get("X-Discourse-Event-Id", ""),
            event_type=event_type,
            event_name=event_name,
            parsed=event,
            raw_body=body.decode("utf-8"),
        )
        try:
            stored = enqueue(delivery)
        except Exception:  # boundary: the sender gets a 503 and the catch-up pull covers it
            logger.exception(
                "could not store webhook event %s (%s)", delivery.event_id, event_name
            )
            return jsonify(error="could not store the event"), 503
        return jsonify(status="queued" if stored else "duplicate"), 200

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


class WebhookServer:
    """`create_app` served by waitress on a background thread, stoppable."""

    def __init__(self, app: Flask, host: str, port: int, *, threads: int = 8) -> None:
        self._server: BaseWSGIServer | MultiSocketServer = waitress.create_server(
            app, host=host, port=port, threads=threads, clear_untrusted_proxy_headers=True
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
