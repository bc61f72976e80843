"""Setting up real-time Chat events: `check` (and `check --fix`) and `status` lines for them.

Role: what an operator needs to turn `google.events` on without a console step beyond enabling
the APIs: the Pub/Sub topic, the publisher grant to Google Chat, the pull subscription, and one
Workspace Events subscription per mapped space, each checked with a fix, and created by
`check --fix` where the account may. The daemon's side (keeping the subscriptions alive) is
`chat_events.SubscriptionKeeper`.

Invariants:
- Checks never raise for what Google answers: every refusal is a ✗ line with its fix.
- `--fix` creates what is missing and adds the one grant Chat needs; it never removes a grant,
  and deletes only the subscriptions on the bridge's own topic whose space is not mapped.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from datetime import datetime
from typing import Any

from chat_events import MESSAGE_EVENT_TYPES, SUSPENDED, target_of
from checks import CheckResult, warning
from config_loader import Config, EventsConfig
from db import Store
from google_events_client import (
    EventsAlreadyExists,
    EventsError,
    EventsPermissionDenied,
    PubSubClient,
    Subscription,
    WorkspaceEventsClient,
)

AUTH = "https://www.googleapis.com/auth/"
# The bridge pulls its subscription as the operator's account: user OAuth needs this scope.
PUBSUB_SCOPE = AUTH + "pubsub"
PUBSUB_SCOPE_ALTERNATIVES = (PUBSUB_SCOPE, AUTH + "cloud-platform")
# The Google-owned account that publishes Chat's Workspace Events to the topic (Google's guide
# "Create and subscribe to a Pub/Sub topic" for Chat events); it needs roles/pubsub.publisher.
CHAT_PUBLISHER = "serviceAccount:chat-api-push@system.gserviceaccount.com"
PUBLISHER_ROLE = "roles/pubsub.publisher"
ACK_DEADLINE_SECONDS = 60

# What to do about each suspension reason Google gives (Subscription.suspensionReason).
SUSPENSION_FIXES = {
    "USER_SCOPE_REVOKED": "the bridge's account revoked a scope: run python main.py auth",
    "RESOURCE_DELETED": "the space was deleted: remove its mapping",
    "USER_AUTHORIZATION_FAILURE": (
        "the bridge's account lost access to the space (removed, or suspended in Workspace): "
        "add it back"
    ),
    "ENDPOINT_PERMISSION_DENIED": (
        f"Chat may not publish to the topic: grant {CHAT_PUBLISHER} {PUBLISHER_ROLE} "
        "(python main.py check --fix does)"
    ),
    "ENDPOINT_NOT_FOUND": "the topic is gone: python main.py check --fix creates it again",
}
_SUSPENSION_OTHER = "fix the cause Google names; the bridge reactivates it by itself once fixed"


def clients(config: EventsConfig, credentials: Any) -> tuple[WorkspaceEventsClient, PubSubClient]:
    """Clients for interactive commands: few retries, short waits."""
    events = WorkspaceEventsClient(
        credentials,
        api_endpoint=config.workspace_events_endpoint,
        max_attempts=2,
        timeout_seconds=15.0,
    )
    pubsub = PubSubClient(
        credentials, api_endpoint=config.pubsub_endpoint, max_attempts=2, timeout_seconds=15.0
    )
    return events, pubsub


def suspension_fix(reason: str | None) -> str:
    return SUSPENSION_FIXES.get(reason or "", _SUSPENSION_OTHER)


def gcloud_commands(config: EventsConfig) -> list[str]:
    """The console-free commands an operator may run instead of `check --fix`."""
    project = config.project
    topic = config.pubsub_topic.split("/")[-1]
    sub = config.pubsub_subscription.split("/")[-1]
    return [
        f"gcloud services enable pubsub.googleapis.com workspaceevents.googleapis.com "
        f"--project={project}",
        f"gcloud pubsub topics create {topic} --project={project}",
        f"gcloud pubsub topics add-iam-policy-binding {topic} --project={project} "
        f"--member={CHAT_PUBLISHER} --role={PUBLISHER_ROLE}",
        f"gcloud pubsub subscriptions create {sub} --project={project} --topic={topic} "
        f"--ack-deadline={ACK_DEADLINE_SECONDS} --enable-message-ordering",
    ]


def check_events(config: Config, credentials: Any, *, fix: bool) -> Iterator[CheckResult]:
    """The topic, the publisher grant, the pull subscription and each space's subscription."""
    settings = config.google.events
    if settings is None:
        return
    events, pubsub = clients(settings, credentials)
    topic_ok = yield from _check_topic(settings, pubsub, fix=fix)
    if topic_ok:
        yield from _check_grant(settings, pubsub, fix=fix)
    yield from _check_pull_subscription(settings, pubsub, fix=fix, topic_ok=topic_ok)
    yield from _check_space_subscriptions(config, settings, events, fix=fix)


def _check_topic(
    settings: EventsConfig, pubsub: PubSubClient, *, fix: bool
) -> Generator[CheckResult, None, bool]:
    topic = settings.pubsub_topic
    how = f"python main.py check --fix, or: {gcloud_commands(settings)[1]}"
    try:
        if pubsub.get_topic(topic):
            yield CheckResult(True, f"Pub/Sub topic {topic} exists")
            return True
        if not fix:
            yield CheckResult(False, f"Pub/Sub topic {topic} does not exist", how)
            return False
        pubsub.create_topic(topic)
    except EventsAlreadyExists:
        pass
    except EventsPermissionDenied as exc:
        yield CheckResult(False, f"Pub/Sub topic {topic}: {exc}", _permission_fix(settings))
        return False
    except EventsError as exc:
        yield CheckResult(False, f"Pub/Sub topic {topic}: {exc}", _api_fix(settings))
        return False
    yield CheckResult(True, f"Pub/Sub topic {topic} created")
    return True


def _check_grant(
    settings: EventsConfig, pubsub: PubSubClient, *, fix: bool
) -> Iterator[CheckResult]:
    topic = settings.pubsub_topic
    what = f"Google Chat may publish to {topic} ({PUBLISHER_ROLE} for {CHAT_PUBLISHER})"
    try:
        policy = pubsub.get_topic_policy(topic)
        if CHAT_PUBLISHER in policy.members(PUBLISHER_ROLE):
            yield CheckResult(True, what)
            return
        if not fix:
            yield CheckResult(
                False,
                f"Google Chat may not publish to {topic}: events would suspend the subscriptions",
                f"python main.py check --fix, or: {gcloud_commands(settings)[2]}",
            )
            return
        pubsub.set_topic_policy(topic, policy.with_member(PUBLISHER_ROLE, CHAT_PUBLISHER))
    except EventsPermissionDenied as exc:
        # A user who may not read the policy cannot know; the subscriptions' state will tell.
        yield warning(
            f"cannot read who may publish to {topic}: {exc}",
            f"ask a project owner to run: {gcloud_commands(settings)[2]}",
        )
        return
    except EventsError as exc:
        yield CheckResult(False, f"publisher grant on {topic}: {exc}", _api_fix(settings))
        return
    yield CheckResult(True, what.replace("may publish", "may now publish"))


def _check_pull_subscription(
    settings: EventsConfig, pubsub: PubSubClient, *, fix: bool, topic_ok: bool
) -> Iterator[CheckResult]:
    name = settings.pubsub_subscription
    try:
        sub = pubsub.get_subscription(name)
        if sub is None:
            if not fix or not topic_ok:
                yield CheckResult(
                    False,
                    f"Pub/Sub subscription {name} does not exist",
                    f"python main.py check --fix, or: {gcloud_commands(settings)[3]}",
                )
                return
            sub = pubsub.create_subscription(
                name,
                settings.pubsub_topic,
                ack_deadline_seconds=ACK_DEADLINE_SECONDS,
                enable_message_ordering=True,
            )
            yield CheckResult(True, f"Pub/Sub subscription {name} created (ordered, pull)")
        elif sub.topic != settings.pubsub_topic:
            yield CheckResult(
                False,
                f"Pub/Sub subscription {name} reads {sub.topic}, not {settings.pubsub_topic}",
                "point google.events.pubsub_subscription at a subscription of the topic",
            )
            return
        else:
            yield CheckResult(True, f"Pub/Sub subscription {name} reads {sub.topic}")
        if not sub.enable_message_ordering:
            yield warning(
                f"Pub/Sub subscription {name} does not keep message order",
                "the bridge copes, but a reply can overtake its thread's first message and cost "
                "a read; recreate it with --enable-message-ordering",
            )
        granted = pubsub.test_subscription_permissions(name, ["pubsub.subscriptions.consume"])
        if "pubsub.subscriptions.consume" not in granted:
            yield CheckResult(
                False,
                f"the bridge's account may not pull {name}",
                f"grant it roles/pubsub.subscriber on {name}",
            )
    except EventsPermissionDenied as exc:
        yield CheckResult(False, f"Pub/Sub subscription {name}: {exc}", _permission_fix(settings))
    except EventsError as exc:
        yield CheckResult(False, f"Pub/Sub subscription {name}: {exc}", _api_fix(settings))


def _check_space_subscriptions(
    config: Config, settings: EventsConfig, events: WorkspaceEventsClient, *, fix: bool
) -> Iterator[CheckResult]:
    mapped = {m.google_space_id for m in config.mappings}
    for space in sorted(mapped):
        yield _check_space(settings, events, space, fix=fix)
    try:
        orphans = [
            sub
            for sub in events.list_subscriptions(MESSAGE_EVENT_TYPES)
            if sub.pubsub_topic == settings.pubsub_topic and sub.space_name not in mapped
        ]
    except EventsError as exc:
        yield warning(f"cannot list the events subscriptions: {exc}", _api_fix(settings))
        return
    for sub in orphans:
        if fix:
            try:
                events.delete_subscription(sub.name)
            except EventsError as exc:
                yield CheckResult(False, f"orphan subscription {sub.name}: {exc}", "try again")
                continue
            yield CheckResult(True, f"orphan subscription {sub.name} of {sub.space_name} deleted")
        else:
            yield warning(
                f"subscription {sub.name} of {sub.space_name} delivers to the bridge's topic, "
                "but the space is not mapped",
                "python main.py check --fix deletes it",
            )


def _check_space(
    settings: EventsConfig, events: WorkspaceEventsClient, space: str, *, fix: bool
) -> CheckResult:
    label = f"events subscription of {space}"
    try:
        sub = events.find_subscription(target_of(space), MESSAGE_EVENT_TYPES)
        if sub is None:
            if not fix:
                return CheckResult(
                    False,
                    f"{label} missing (the poll alone brings its messages)",
                    "python main.py check --fix, or start the bridge: it subscribes at start",
                )
            sub = events.create_subscription(
                target_of(space), MESSAGE_EVENT_TYPES, settings.pubsub_topic
            )
            return CheckResult(True, f"{label} created: {_until(sub)}")
        if sub.pubsub_topic != settings.pubsub_topic:
            return CheckResult(
                False,
                f"{label} {sub.name} delivers to {sub.pubsub_topic}, not the bridge's topic",
                f"delete it (one subscription per space and account): {sub.name}",
            )
        if sub.state == SUSPENDED:
            if fix:
                try:
                    sub = events.reactivate_subscription(sub.name)
                    return CheckResult(True, f"{label} reactivated: {_until(sub)}")
                except EventsError as exc:
                    return CheckResult(
                        False,
                        f"{label} suspended ({sub.suspension_reason}); reactivating: {exc}",
                        suspension_fix(sub.suspension_reason),
                    )
            return CheckResult(
                False,
                f"{label} suspended ({sub.suspension_reason})",
                suspension_fix(sub.suspension_reason),
            )
        return CheckResult(True, f"{label} {sub.state}: {_until(sub)}")
    except EventsPermissionDenied as exc:
        return CheckResult(
            False,
            f"{label}: {exc}",
            "add the bridge's account to the space; with a new scope, run: python main.py auth",
        )
    except EventsError as exc:
        return CheckResult(False, f"{label}: {exc}", _api_fix(settings))


def _until(sub: Subscription) -> str:
    return f"until {sub.expire_time:%Y-%m-%d %H:%M:%S} UTC" if sub.expire_time else "no expiry"


def _permission_fix(settings: EventsConfig) -> str:
    return (
        f"the bridge's account needs roles/pubsub.editor on project {settings.project} (or ask "
        "an owner to run the gcloud commands in the README); with user OAuth, run "
        "python main.py auth again for the pubsub scope"
    )


def _api_fix(settings: EventsConfig) -> str:
    return f"enable the APIs: {gcloud_commands(settings)[0]}"


def status_lines(store: Store, space: str, now: datetime) -> list[str]:
    """What `status` says about one mapped space's events subscription."""
    state = store.chat_subscription(space)
    if state is None:
        return ["      events: not subscribed yet (the bridge subscribes at start)"]
    text = f"      events: {state.state}"
    if state.suspension_reason:
        text += f" ({state.suspension_reason}): {suspension_fix(state.suspension_reason)}"
    if state.expire_time is not None:
        left = state.expire_time - now
        text += f", expires {state.expire_time:%Y-%m-%d %H:%M:%S} UTC"
        text += f" (in {max(0, int(left.total_seconds()) // 60)} min)"
    lines = [text]
    if state.last_error:
        lines.append(f"      last error ({state.attempts} attempts): {state.last_error[:200]}")
    return lines
