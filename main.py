"""Entry point: `python main.py [--config PATH] [run] [--once]`.

Wiring only (STYLE H15): load the config, open the store, build both clients and the sync
services, run a catch-up poll at once and then every `poll_interval` on an APScheduler job that
never overlaps itself, and shut down cleanly on SIGINT/SIGTERM (the cycle in hand stops between two
messages, so nothing is half-done beyond what the store's pending writes cover).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

import cli
from chat_events import SUSPENDED, EventPuller, SubscriptionKeeper
from config_loader import Config, ConfigError, load_config
from db import StatusKey, Store
from delegation import Delegation
from deps import Deps
from discourse_client import DiscourseClient
from google_chat_client import ChatAuthError, GoogleChatClient, SpaceMessageEvent, load_token_file
from google_events_client import EventsUnavailable, PubSubClient, WorkspaceEventsClient
from inbox import (
    ChatMessageEvent,
    DiscourseEvent,
    Inbox,
    InboxWorker,
    PulledChatMessage,
    Scope,
)
from metrics import BridgeMetrics
from spaces import EventOutcome, SpaceListing
from sync_discourse_to_gchat import DiscourseToGchat
from sync_dm import DmSync
from sync_gchat_to_discourse import GchatToDiscourse
from users import UserDirectory
from webhook_listener import Readiness, WebhookConfigError, WebhookServer, create_app

logger = logging.getLogger("gchat_discourse")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# How often the subscription keeper looks for due work (renewals, retries, replays); a tick
# with nothing due reads the store only.
KEEPER_TICK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a running bridge holds, built once and passed explicitly."""

    config: Config
    store: Store
    chat: GoogleChatClient
    discourse: DiscourseClient
    gchat_to_discourse: GchatToDiscourse
    discourse_to_gchat: DiscourseToGchat
    metrics: BridgeMetrics
    stop: threading.Event
    started_at: datetime
    dms: DmSync
    inbox: Inbox
    worker: InboxWorker
    events: EventsRuntime | None = None  # None: Chat → Discourse by polling only


@dataclass(frozen=True, slots=True)
class EventsRuntime:
    """Real-time Chat → Discourse (`google.events`): the subscriptions and the puller."""

    keeper: SubscriptionKeeper
    puller: EventPuller
    workspace_events: WorkspaceEventsClient
    pubsub: PubSubClient


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose files are created 0600: the log names people, posts and spaces.

    Each file the handler opens (the first, and the fresh one after every rollover) is created
    with mode 0600 whatever the umask; an existing file keeps its mode (`check` warns).
    """

    def _open(self) -> io.TextIOWrapper:
        def private(path: str, flags: int) -> int:
            return os.open(path, flags, 0o600)

        # logging.FileHandler._open with an opener that sets the mode (a rotating handler
        # always appends).
        return open(  # noqa: SIM115 - the handler owns and closes the stream
            self.baseFilename, "a", encoding=self.encoding, errors=self.errors, opener=private
        )


def setup_logging(config: Config) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.sync.log_file is not None:
        config.sync.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            PrivateRotatingFileHandler(
                config.sync.log_file, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
            )
        )
    logging.basicConfig(
        level=config.sync.log_level, format=LOG_FORMAT, handlers=handlers, force=True
    )
    # googleapiclient logs every discovery/cache detail at INFO; keep the operator's log readable.
    logging.getLogger("googleapiclient").setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is the intended effect of
    # max_instances=1 when a cycle outlasts the interval, not a problem to report.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def build_runtime(config: Config, stop: threading.Event) -> Runtime:
    store = Store(config.sync.database)

    def sleep(seconds: float) -> None:
        # Backoff and rate-limit waits end early on shutdown, so SIGTERM is never stuck behind
        # a 60 s Retry-After; the loops check `stop` between items.
        stop.wait(seconds)

    # One credentials object for every Google API: one refresh, one token file.
    credentials = load_token_file(config.google.token_file)
    chat = GoogleChatClient(credentials, api_endpoint=config.google.api_endpoint, sleep=sleep)
    discourse = DiscourseClient(
        config.discourse.url,
        config.discourse.api_key,
        config.discourse.api_username,
        requests_per_minute=config.discourse.requests_per_minute,
        rate_window_seconds=config.discourse.rate_window_seconds,
        timeout_seconds=config.discourse.timeout_seconds,
        sleep=sleep,
    )
    users = UserDirectory(
        store,
        discourse,
        chat,
        api_username=config.discourse.api_username,
        email_domain=config.sync.user_email_domain,
        create_users=config.sync.create_users,
        new_user_trust_level=config.sync.new_user_trust_level,
    )
    # Events of private messages, unmapped categories and unlinked chat channels are dropped
    # before they are stored (config + store, no request per delivery).
    inbox = Inbox(store, scope=Scope(config.mappings, store))
    delegation = (
        Delegation(config.google.delegation, api_endpoint=config.google.api_endpoint, sleep=sleep)
        if config.google.delegation is not None
        else None
    )
    deps = Deps(config, store, chat, discourse, users, inbox, stop=stop, delegation=delegation)
    g2d = GchatToDiscourse(deps)
    dms = DmSync(deps)
    d2g = DiscourseToGchat(deps)

    def handle(event: DiscourseEvent) -> None:
        # Chat-channel events belong to the DM sync, the rest to Discourse → Chat.
        if isinstance(event, ChatMessageEvent | PulledChatMessage):
            dms.handle_event(event)
        else:
            d2g.handle_event(event)

    worker = InboxWorker(inbox, store, handle, max_attempts=config.sync.max_attempts, stop=stop)
    events = build_events(config, deps, credentials, g2d, dms)
    metrics = BridgeMetrics()
    metrics.watch(
        inbox_depth=store.inbox_depth,
        dead_letters=lambda: len(store.dead_events()),
        parked=lambda: len(store.parked_items()),
        requests=lambda: requests_sent(discourse, chat, events, delegation),
        rate_limited=lambda: {
            "discourse": discourse.rate_limited_count,
            "google_chat": chat.rate_limited_count,
        },
        subscriptions=(
            None
            if events is None
            else lambda: [
                (s.gchat_space_name, s.state, s.suspension_reason or "")
                for s in store.chat_subscriptions()
            ]
        ),
    )
    return Runtime(
        config,
        store,
        chat,
        discourse,
        g2d,
        d2g,
        metrics,
        stop,
        datetime.now(UTC),
        dms,
        inbox,
        worker,
        events,
    )


def requests_sent(
    discourse: DiscourseClient,
    chat: GoogleChatClient,
    events: EventsRuntime | None,
    delegation: Delegation | None = None,
) -> dict[str, int]:
    sent = {"discourse": discourse.request_count, "google_chat": chat.request_count}
    if delegation is not None:
        sent["google_token_delegated"] = delegation.token_requests
    if events is not None:
        sent["workspace_events"] = events.workspace_events.request_count
        sent["pubsub"] = events.pubsub.request_count
    return sent


def build_events(
    config: Config,
    deps: Deps,
    credentials: Any,
    g2d: GchatToDiscourse,
    dms: DmSync,
) -> EventsRuntime | None:
    """The Workspace Events side, when `google.events` is configured."""
    settings = config.google.events
    if settings is None:
        return None

    def until_stopped(seconds: float) -> None:
        # A wait of the events clients (an operation's next look, a backoff) ends the call on
        # shutdown: ending only the wait would turn the operation's polling into a tight loop.
        if deps.stop.wait(seconds):
            raise EventsUnavailable("the bridge is shutting down", reason="SHUTDOWN")

    workspace_events = WorkspaceEventsClient(
        credentials, api_endpoint=settings.workspace_events_endpoint, sleep=until_stopped
    )
    pubsub = PubSubClient(credentials, api_endpoint=settings.pubsub_endpoint, sleep=until_stopped)

    def handle(space_name: str, events: Sequence[SpaceMessageEvent]) -> EventOutcome:
        # Rooms belong to the room poll's handler, DMs to the DM sync's; neither: acknowledged.
        outcome = g2d.handle_events(space_name, events)
        if outcome is EventOutcome.IGNORED:
            outcome = dms.handle_events(space_name, events)
        if outcome is EventOutcome.IGNORED:
            logger.info("events of %s ignored: the space is not mapped", space_name)
        return outcome

    keeper = SubscriptionKeeper(
        stop=deps.stop,
        config=settings,
        spaces=lambda: [m.google_space_id for m in config.mappings],
        store=deps.store,
        events=workspace_events,
        chat=deps.chat,
        handle=handle,
        clock=deps.clock,
        # Once per poll interval, like the poll: the safety net for what no event can say.
        audit_every=timedelta(seconds=config.sync.poll_interval_seconds),
    )
    puller = EventPuller(
        pubsub=pubsub,
        subscription=settings.pubsub_subscription,
        handle=handle,
        on_lifecycle=keeper.on_lifecycle,
        on_seen=keeper.seen,
        stop=deps.stop,
    )
    return EventsRuntime(keeper, puller, workspace_events, pubsub)


def run_keeper(keeper: SubscriptionKeeper, stop: threading.Event) -> None:
    """The subscriptions' thread: check them once, then do what is due every tick."""
    try:
        keeper.start()
    except Exception:  # boundary: the ticks below retry whatever failed here
        logger.exception("checking the Workspace Events subscriptions failed")
    while not stop.is_set():
        try:
            keeper.tick()
        except Exception:  # boundary: a failed tick must not end the thread
            logger.exception("subscription upkeep failed")
        stop.wait(KEEPER_TICK_SECONDS)


def poll_job(runtime: Runtime) -> None:
    """The scheduler's job: each pull of the cycle in turn; a failure is logged, never fatal.

    Every step runs even when an earlier one failed (a Discourse catch-up refused with 403 must
    not stop the DM poll); the first failure is kept for `/readyz` and `status`.
    """
    failures: list[str] = []

    def step(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # boundary: the scheduler must keep running whatever failed
            logger.exception("%s failed", name)
            failures.append(f"{name}: {type(exc).__name__}: {exc}")

    # One spaces.list walk serves both Chat polls of the cycle.
    listing = SpaceListing(runtime.chat)

    def rooms() -> None:
        result = runtime.gchat_to_discourse.poll_once(listing)
        runtime.metrics.bridged.labels("gchat_to_discourse").inc(result.mirrored)
        runtime.metrics.failures.labels("gchat_to_discourse").inc(result.parked)

    def dms() -> None:
        result = runtime.dms.poll_once(listing)
        runtime.metrics.bridged.labels("gchat_to_discourse").inc(result.mirrored)
        runtime.metrics.failures.labels("gchat_to_discourse").inc(result.parked)

    with runtime.metrics.poll_duration.time():
        step("Chat poll of room spaces", rooms)
        step("Discourse catch-up pull", runtime.discourse_to_gchat.catch_up)
        step("Chat poll of DM spaces", dms)
        step("Discourse chat catch-up pull", runtime.dms.catch_up)
        step("inbox retention", lambda: expire_inbox(runtime))
    if failures:
        # For /readyz: a failing catch-up (e.g. Discourse refusing the key) leaves the room
        # poll's own result "ok" when there was nothing to mirror.
        runtime.store.set_status(StatusKey.CYCLE_ERROR, failures[0][:500])
    elif runtime.store.get_status(StatusKey.CYCLE_ERROR):
        runtime.store.set_status(StatusKey.CYCLE_ERROR, "")


def expire_inbox(runtime: Runtime) -> None:
    """Wipe handled events' bodies past `inbox_retention_days`; delete old rows (db.py)."""
    expiry = runtime.store.expire_inbox(runtime.config.sync.inbox_retention)
    if expiry.wiped or expiry.deleted:
        logger.info(
            "inbox retention: %d bodies wiped, %d handled rows deleted",
            expiry.wiped,
            expiry.deleted,
        )
    for key in expiry.dead_deleted:
        logger.warning("inbox retention: dead letter %s deleted, never retried", key)


def readiness(runtime: Runtime) -> Readiness:
    """What `/readyz` reports: the database writable, the last poll recent and successful."""
    reasons: list[str] = []
    now = datetime.now(UTC)
    try:
        # The bounded probe first: a database locked by another process must give a prompt
        # 503, not a probe that hangs for the busy timeout behind a blocked cycle.
        runtime.store.check_writable(timeout=1.0)
        runtime.store.set_status(StatusKey.READYZ_PROBE, now.isoformat())
    except Exception as exc:  # any database failure means not ready, whatever its kind
        logger.error("database %s is not writable: %s", runtime.store.path, exc)
        return Readiness(False, (f"database not writable: {exc}",))
    last = _last_poll(runtime)
    interval = runtime.config.sync.poll_interval_seconds
    if last is None:
        if (now - runtime.started_at).total_seconds() > interval + 60:
            reasons.append("no poll cycle has completed yet")
    else:
        if not last.get("ok", False):
            reasons.append("last poll failed: " + "; ".join(last.get("errors", []))[:500])
        age = (now - datetime.fromisoformat(last["time"])).total_seconds()
        if age > 3 * interval + 60:
            reasons.append(f"last poll was {age:.0f}s ago (interval {interval:.0f}s)")
    cycle_error = runtime.store.get_status(StatusKey.CYCLE_ERROR)
    if cycle_error:
        reasons.append(f"last cycle failed: {cycle_error}")
    for sub in runtime.store.chat_subscriptions() if runtime.events is not None else ():
        if sub.state == SUSPENDED:
            reasons.append(
                f"events subscription of {sub.gchat_space_name} suspended "
                f"({sub.suspension_reason or 'no reason given'}); the poll covers meanwhile"
            )
    oldest = runtime.store.oldest_pending_received_at()
    if oldest is not None and (now - oldest).total_seconds() > 15 * 60:
        reasons.append(f"inbox stuck: an event has waited since {oldest.isoformat()}")
    return Readiness(not reasons, tuple(reasons))


def _last_poll(runtime: Runtime) -> dict[str, Any] | None:
    text = runtime.store.get_status(StatusKey.LAST_POLL)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def run(config: Config, *, once: bool) -> int:
    stop = threading.Event()
    # Handlers first: a SIGTERM that arrives while the runtime is still being built must also
    # end in a clean shutdown, not in death by signal.

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runtime = build_runtime(config, stop)
    except ChatAuthError as exc:
        logger.error("%s", exc)
        return cli.EXIT_CREDENTIALS
    if once:
        listing = SpaceListing(runtime.chat)
        result = runtime.gchat_to_discourse.poll_once(listing)
        runtime.discourse_to_gchat.catch_up()
        dm_result = runtime.dms.poll_once(listing)
        runtime.dms.catch_up()
        runtime.worker.drain()
        expire_inbox(runtime)  # cron runs of --once keep to the retention too
        runtime.store.close()
        return cli.EXIT_OK if result.ok and dm_result.ok else cli.EXIT_FAILED
    try:
        app = create_app(
            secret=config.discourse.webhook_secret,
            allow_unsigned=config.discourse.allow_unsigned_webhooks,
            enqueue=lambda delivery: runtime.inbox.put_webhook(
                delivery.parsed,
                raw_body=delivery.raw_body,
                event_id=delivery.event_id,
                event_type=delivery.event_type,
            ),
            readiness=lambda: readiness(runtime),
            registry=runtime.metrics.registry,
        )
    except WebhookConfigError as exc:
        logger.error("%s", exc)
        runtime.store.close()
        return cli.EXIT_CONFIG
    server = WebhookServer(app, config.sync.webhook_host, config.sync.webhook_port)

    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        poll_job,
        "interval",
        args=[runtime],
        seconds=config.sync.poll_interval_seconds,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),  # the catch-up poll runs at once
        id="poll",
    )
    worker = runtime.worker
    worker.start()
    server.start()
    scheduler.start()
    keeper: threading.Thread | None = None
    if runtime.events is not None:
        keeper = threading.Thread(
            target=run_keeper, args=(runtime.events.keeper, stop), name="subscriptions"
        )
        keeper.start()
        # Daemon: a long-poll pull in flight must not hold up the shutdown; what it received
        # and did not acknowledge is delivered again after the restart.
        threading.Thread(target=runtime.events.puller.run, name="events", daemon=True).start()
    logger.info(
        "bridge running: %d mappings, polling every %.1fs%s",
        len(config.mappings),
        config.sync.poll_interval_seconds,
        ", Chat events from " + config.google.events.pubsub_subscription
        if config.google.events is not None
        else "",
    )
    stop.wait()
    # Stop taking webhooks first, then let the item in hand finish, then close the database.
    server.stop()
    scheduler.shutdown(wait=True)
    worker.join(timeout=10)
    if runtime.events is not None and keeper is not None:
        keeper.join(timeout=10)
        runtime.events.puller.wait_idle(timeout=10)
    runtime.store.close()
    logger.info("stopped")
    return cli.EXIT_OK


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="Two-way bridge between Google Chat and Discourse.",
        epilog="Without a command, `run` is meant. `python main.py COMMAND --help` for details.",
    )
    parser.add_argument(
        "--config", type=Path, default=Path("config.yaml"), help="path of config.yaml"
    )
    # --config is also accepted after the command (`python main.py check --config x.yaml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config.yaml")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_parser = commands.add_parser("run", parents=[common], help="run the bridge (the default)")
    run_parser.add_argument(
        "--once", action="store_true", help="run one poll cycle and exit (for cron or testing)"
    )
    auth = commands.add_parser(
        "auth", parents=[common], help="authorize the bridge's Google account (OAuth)"
    )
    auth.add_argument(
        "--no-browser",
        action="store_true",
        help="print the URL instead of opening a browser (headless server; forward --port)",
    )
    auth.add_argument(
        "--port", type=int, default=cli.DEFAULT_AUTH_PORT, help="local port for the redirect"
    )
    commands.add_parser("spaces", parents=[common], help="list the spaces the account sees")
    check = commands.add_parser(
        "check", parents=[common], help="check the config, Discourse, Google and the webhook"
    )
    check.add_argument("--fix", action="store_true", help="create or update the Discourse webhook")
    commands.add_parser(
        "status", parents=[common], help="mappings, cursors, inbox, dead letters, parked items"
    )
    commands.add_parser("retry", parents=[common], help="requeue dead letters and parked items")
    backfill = commands.add_parser(
        "backfill", parents=[common], help="mirror the history of one mapped space now"
    )
    backfill.add_argument("--space", required=True, help="the space id, spaces/...")
    backfill.add_argument(
        "--since", type=cli.parse_since, default=None, help="start date, e.g. 2024-05-01"
    )
    backfill.add_argument(
        "--force", action="store_true", help="run even if the service seems to be running"
    )
    commands.add_parser(
        "demo", help="run both emulators, the bridge and a scripted conversation (no credentials)"
    )
    args = parser.parse_args(argv)
    if args.command is None:
        args.command = "run"
        args.once = False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        # Imported here only: the demo is the one module that may start the emulators.
        import demo

        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
        return demo.run_demo()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.command == "check":
            for result in cli.config_error_results(exc):
                cli.print_result(result, sys.stdout)
            return cli.EXIT_CONFIG
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_CONFIG
    if args.command in ("run", "backfill"):
        setup_logging(config)
    else:
        # Interactive commands print their results; only warnings go to the log stream.
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
        logging.getLogger("googleapiclient").setLevel(logging.ERROR)
    if args.command == "auth":
        return cli.run_auth(config, no_browser=args.no_browser, port=args.port)
    if args.command == "spaces":
        return cli.run_spaces(config)
    if args.command == "check":
        return cli.run_check(config, fix=args.fix)
    if args.command == "status":
        return cli.run_status(config)
    if args.command == "retry":
        return cli.run_retry(config)
    if args.command == "backfill":
        return cli.run_backfill(
            config,
            space=args.space,
            since=args.since,
            force=args.force,
            build_runtime=build_runtime,
        )
    return run(config, once=args.once)


if __name__ == "__main__":
    sys.exit(main())
