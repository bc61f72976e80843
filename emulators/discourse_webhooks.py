"""Asynchronous, signed webhook delivery of the Discourse emulator (a stand-in for Sidekiq).

Role: `WebhookDispatcher.enqueue(...)` is called by the forum (under its lock) once per event; it
picks the matching active hooks and queues one job per hook, with the body serialized at enqueue
time (as `WebHook.enqueue_hooks` does). A single worker thread POSTs the jobs.
Invariants (reference §8.1-§8.2):
- headers are exactly Discourse's set; `X-Discourse-Event-Signature: sha256=<hex HMAC-SHA256>` of
  the exact body bytes is present only when the hook has a secret;
- every send attempt gets a new event id; manual redelivery reuses the stored id, headers, body;
- no retries unless `retry_web_hook_events`; 404/410 and network errors are never retried;
  retries wait 1, 5, 25, 125 minutes (divided by `time_scale`); after 4 the hook is deactivated;
- `webhook_shuffle` delivers ready jobs in random order, `webhook_drop_rate` silently loses jobs.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from emulators._errors import HandlerErrors
from emulators.discourse_model import (
    EVENT_NAMES_BY_ID,
    EVENT_TYPE_GROUPS,
    EVENT_TYPE_IDS,
    ForumState,
    WebHook,
    iso,
)

logger = logging.getLogger(__name__)

USER_AGENT = "Discourse/3.5.0.beta1-dev"
MAX_RETRY_COUNT = 4


def signature(secret: str, body: bytes) -> str:
    """`X-Discourse-Event-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Job:
    web_hook_id: int
    event_type: str
    event_name: str
    body: str
    retry_count: int = 0
    redeliver_event_id: int | None = None
    redeliver_headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One send attempt, as recorded in the event log."""

    web_hook_id: int
    event_id: int
    event_type: str
    event_name: str
    url: str
    status: int | None  # None: dropped by fault injection; -1: network error
    request_headers: dict[str, str]
    request_body: str
    attempt: int
    created_at: float
    duration_ms: int
    response_body: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)
    dropped: bool = False
    redelivery: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "web_hook_id": self.web_hook_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_name": self.event_name,
            "url": self.url,
            "status": self.status,
            "request_headers": self.request_headers,
            "request_body": self.request_body,
            "attempt": self.attempt,
            "dropped": self.dropped,
            "redelivery": self.redelivery,
        }

    def as_event_json(self) -> dict[str, Any]:
        """Admin `WebHookEventSerializer` shape."""
        return {
            "id": self.event_id,
            "web_hook_id": self.web_hook_id,
            "request_url": self.url,
            "headers": json.dumps(self.request_headers),
            "payload": self.request_body,
            "status": self.status if self.status is not None else -1,
            "response_headers": json.dumps(self.response_headers),
            "response_body": self.response_body,
            "duration": self.duration_ms,
            "created_at": iso(self.created_at),
            "redelivering": False,
        }


class WebhookDispatcher:
    """Queue and worker thread for webhook jobs. `start()` once, `stop()` at shutdown."""

    def __init__(self, state: ForumState, errors: HandlerErrors | None = None) -> None:
        self._state = state
        self._errors = errors
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.deliveries: list[Delivery] = []
        self._session = requests.Session()

    # lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="discourse-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._cond:
            self._queue.clear()
            self.deliveries = []

    # producers

    def enqueue(
        self,
        event_type: str,
        event_name: str,
        payload: dict[str, Any],
        category_id: int | None = None,
        tag_names: list[str] | None = None,
    ) -> None:
        """Queue `{event_type: payload}` for every active hook subscribed to `event_name`."""
        with self._state.lock:
            hooks = [h for h in self._state.webhooks.values() if self._matches(h, event_name)]
            hooks = [h for h in hooks if self._passes_filters(h, category_id, tag_names or [])]
        if not hooks:
            return
        body = json.dumps({event_type: payload}, separators=(",", ":"))
        for hook in hooks:
            self._push(_Job(hook.id, event_type, event_name, body), delay=0.0)

    def ping(self, hook_id: int) -> None:
        """Ping skips the active and filter checks (reference §8.1)."""
        self._push(_Job(hook_id, "ping", "ping", '{"ping":"OK"}'), delay=0.0)

    def redeliver(self, hook_id: int, event_id: int) -> bool:
        """Re-send a stored event with the same id, headers and body."""
        with self._cond:
            original = next(
                (
                    d
                    for d in self.deliveries
                    if d.event_id == event_id and d.web_hook_id == hook_id
                ),
                None,
            )
        if original is None:
            return False
        job = _Job(
            hook_id,
            original.event_type,
            original.event_name,
            original.request_body,
            redeliver_event_id=event_id,
            redeliver_headers=dict(original.request_headers),
        )
        self._push(job, delay=0.0)
        return True

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def snapshot(self) -> list[Delivery]:
        with self._cond:
            return list(self.deliveries)

    # internals

    @staticmethod
    def _matches(hook: WebHook, event_name: str) -> bool:
        if not hook.active:
            return False
        if hook.wildcard_web_hook:
            return True
        wanted = EVENT_TYPE_IDS.get(event_name)
        group = EVENT_TYPE_GROUPS.get(event_name.rsplit("_", 1)[0])
        if event_name.startswith("chat_message"):
            group = EVENT_TYPE_GROUPS["chat_message"]
        # Granular ids (newest core) or the 3.1 group ids (1 topic, 2 post, 18 chat_message).
        return wanted in hook.event_type_ids or (
            group is not None and group in hook.event_type_ids
        )

    @staticmethod
    def _passes_filters(hook: WebHook, category_id: int | None, tag_names: list[str]) -> bool:
        if hook.category_ids and category_id not in hook.category_ids:
            return False
        if hook.tag_names and not set(hook.tag_names) & set(tag_names):
            return False
        # Group filters: the emulator's events carry no group ids, so a group filter drops them.
        return not hook.group_ids

    def _push(self, job: _Job, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._seq), job))
            self._cond.notify_all()

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                if self._queue and self._queue[0][0] <= now:
                    # Lock order is state.lock -> self._cond (producers enqueue under the state
                    # lock), so never take state.lock here; single dict reads are atomic.
                    settings = self._state.settings
                    shuffle = bool(settings["webhook_shuffle"])
                    window = float(settings["webhook_shuffle_window_ms"]) / 1000
                    if shuffle:
                        # Let concurrent events pile up so that there is something to reorder.
                        self._cond.wait(window)
                        now = time.monotonic()
                        ready = [i for i, entry in enumerate(self._queue) if entry[0] <= now]
                        index = random.choice(ready)
                        entry = self._queue.pop(index)
                        heapq.heapify(self._queue)
                    else:
                        entry = heapq.heappop(self._queue)
                    self._in_flight += 1
                    return entry[2]
                timeout = self._queue[0][0] - now if self._queue else None
                self._cond.wait(timeout)
            return None

    def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                self._deliver(job)
            except Exception as exc:  # boundary: one bad job must not kill the worker
                # Network failures are handled inside `_deliver`; anything else is a bug here.
                if self._errors is not None:
                    self._errors.record("WEBHOOK", f"hook {job.web_hook_id}", exc)
                else:
                    logger.exception("webhook job for hook %d failed", job.web_hook_id)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _deliver(self, job: _Job) -> None:
        with self._state.lock:
            hook = self._state.webhooks.get(job.web_hook_id)
            if hook is None:
                return
            settings = dict(self._state.settings)
            event_id = job.redeliver_event_id or self._state.next_id("web_hook_event")
            url, secret, content_type = hook.payload_url, hook.secret, hook.content_type
        body = job.body.encode()
        if job.redeliver_headers is not None:
            headers = job.redeliver_headers
        else:
            headers = {
                "Accept": "*/*",
                "Connection": "close",
                "Content-Length": str(len(body)),
                "Content-Type": (
                    "application/x-www-form-urlencoded"
                    if content_type == 2
                    else "application/json"
                ),
                "Host": urlsplit(url).netloc,
                "User-Agent": USER_AGENT,
                "X-Discourse-Instance": settings["instance_url"],
                "X-Discourse-Event-Id": str(event_id),
                "X-Discourse-Event-Type": job.event_type,
                "X-Discourse-Event": job.event_name,
            }
            if secret:
                headers["X-Discourse-Event-Signature"] = signature(secret, body)
        started = time.monotonic()
        common: dict[str, Any] = {
            "web_hook_id": job.web_hook_id,
            "event_id": event_id,
            "event_type": job.event_type,
            "event_name": job.event_name,
            "url": url,
            "request_headers": headers,
            "request_body": job.body,
            "attempt": job.retry_count + 1,
            "created_at": time.time(),
            "redelivery": job.redeliver_event_id is not None,
        }
        if job.redeliver_event_id is None and random.random() < float(
            settings["webhook_drop_rate"]
        ):
            logger.debug("dropping webhook event %d (fault injection)", event_id)
            self._record(Delivery(status=None, duration_ms=0, dropped=True, **common))
            return
        try:
            response = self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=float(settings["webhook_request_timeout"]),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # Network errors are never retried (3.1 behaviour, reference §8.2).
            logger.info("webhook event %d to hook %d failed: %s", event_id, job.web_hook_id, exc)
            duration = int((time.monotonic() - started) * 1000)
            self._record(Delivery(status=-1, duration_ms=duration, **common))
            self._set_status(job.web_hook_id, 2)
            return
        duration = int((time.monotonic() - started) * 1000)
        self._record(
            Delivery(
                status=response.status_code,
                duration_ms=duration,
                response_body=response.text[:1000],
                response_headers=dict(response.headers),
                **common,
            )
        )
        if 200 <= response.status_code < 300:
            self._set_status(job.web_hook_id, 3)
            return
        self._set_status(job.web_hook_id, 2)
        if job.redeliver_event_id is not None or response.status_code in (404, 410):
            return
        if not settings["retry_web_hook_events"] or job.event_type == "ping":
            return
        if job.retry_count >= MAX_RETRY_COUNT:
            with self._state.lock:
                hook = self._state.webhooks.get(job.web_hook_id)
                if hook is not None:
                    hook.active = False
                    hook.last_delivery_status = 4
            logger.info(
                "webhook %d deactivated after %d retries", job.web_hook_id, MAX_RETRY_COUNT
            )
            return
        delay_minutes = 5**job.retry_count  # 1, 5, 25, 125
        with self._state.lock:
            delay = self._state.scaled(delay_minutes * 60)
        retry = _Job(
            job.web_hook_id, job.event_type, job.event_name, job.body, job.retry_count + 1
        )
        self._push(retry, delay=delay)

    def _record(self, delivery: Delivery) -> None:
        with self._cond:
            self.deliveries.append(delivery)

    def _set_status(self, hook_id: int, status: int) -> None:
        with self._state.lock:
            hook = self._state.webhooks.get(hook_id)
            if hook is not None:
                hook.last_delivery_status = status


def event_types_json(hook: WebHook) -> list[dict[str, Any]]:
    names = [EVENT_NAMES_BY_ID[i] for i in hook.event_type_ids if i in EVENT_NAMES_BY_ID]
    groups = {v: k for k, v in EVENT_TYPE_GROUPS.items()}
    for type_id in hook.event_type_ids:
        if type_id in groups:
            names.extend(n for n in EVENT_TYPE_IDS if n.startswith(groups[type_id] + "_"))
    seen = dict.fromkeys(names)
    return [{"id": EVENT_TYPE_IDS[n], "name": n, "group": n.rsplit("_", 1)[0]} for n in seen]


def webhook_json(hook: WebHook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "payload_url": hook.payload_url,
        "content_type": hook.content_type,
        "last_delivery_status": hook.last_delivery_status,
        "secret": hook.secret,
        "wildcard_web_hook": hook.wildcard_web_hook,
        "verify_certificate": hook.verify_certificate,
        "active": hook.active,
        "web_hook_event_types": event_types_json(hook),
        "categories": [{"id": c} for c in hook.category_ids],
        "category_ids": list(hook.category_ids),
        "tags": list(hook.tag_names),
        "groups": [{"id": g} for g in hook.group_ids],
        "created_at": iso(hook.created_at),
    }
