"""Real authorship (issue 16), end to end: `python main.py` with `google.delegation` against the
Chat emulator (whose `/token` takes Google's JWT-bearer grant for a service account with
domain-wide delegation) and the Discourse emulator. Forum posts by people of the Workspace
domain appear in Chat as them; everyone else's as the operator with the attribution line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli import CHAT_SCOPES
from tests.e2e.harness import (
    BridgeFiles,
    BridgeProcess,
    register_bridge_account,
    run_main,
    wait_for,
)
from tests.e2e.world import BRIDGE_USER, World

DOMAIN = "example.com"
SCOPES = [
    "https://www.googleapis.com/auth/chat.messages",
    "https://www.googleapis.com/auth/chat.memberships.readonly",
]


DORA = "users/300000000000000000001"
ERIN = "users/300000000000000000002"


def delegated_world(
    world: World,
    *,
    scopes: list[str] | None = None,
    first_members: tuple[str, ...] = (),
    domains: tuple[str, ...] = (DOMAIN,),
    **kw: Any,
) -> tuple[BridgeFiles, str, int, dict[str, Any]]:
    """A room with Alice, and Dora and Erin (Workspace users of the domain); forum accounts
    for Dora, Erin, Frank (outside the domain) and Olga (of the domain, unknown to Workspace);
    a service account delegated `scopes` (default: what the bridge needs)."""
    (alice,) = world.add_people("Alice Archer")
    for user, name in ((DORA, "Dora Diaz"), (ERIN, "Erin Eyre")):
        email = f"{name.split()[0].lower()}@{DOMAIN}"
        world.chat.control.create_user(name=user, displayName=name, email=email)
    dora, erin = DORA, ERIN
    space = world.add_space("Authors", [*first_members, alice, dora, erin])
    category = world.category("Authors")
    for username, name, email in (
        ("dora", "Dora Diaz", f"dora@{DOMAIN}"),
        ("erin", "Erin Eyre", f"erin@{DOMAIN}"),
        ("frank", "Frank Fox", "frank@other.org"),
        ("olga", "Olga Ode", f"olga@{DOMAIN}"),
    ):
        world.discourse.control.create_user(username, name=name, email=email, trust_level=1)
    directory: Path = world.tmp_path / "bridge"
    directory.mkdir(parents=True, exist_ok=True)
    # The operator's grant as `auth` leaves it (so that `check` gets as far as delegation).
    register_bridge_account(
        world.chat.control,
        BRIDGE_USER,
        world.chat.url,
        directory / "token.json",
        scopes=list(CHAT_SCOPES),
    )
    key = world.chat.control.write_service_account_file(
        directory / "service-account.json",
        client_email="bridge-writer@bridge-project.iam.gserviceaccount.com",
        domains=[DOMAIN],
        delegated_scopes=SCOPES if scopes is None else scopes,
    )
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        extra_google={
            "delegation": {
                "service_account_file": str(directory / "service-account.json"),
                "domains": list(domains),
            }
        },
        **kw,
    )
    world.hook_to(files)
    return files, space, category, key


def message_with(world: World, space: str, text: str) -> dict[str, Any] | None:
    return next((m for m in world.chat_messages(space) if text in (m.get("text") or "")), None)


def test_posts_of_domain_users_are_theirs_in_chat_and_others_are_attributed(
    world: World,
) -> None:
    files, space, category, _ = delegated_world(world)
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        topic = world.discourse.control.create_post(
            "dora",
            "Dora opens the topic with enough words",
            title="A topic about the roadmap",
            category_id=category,
        )
        topic_id = int(topic.get("topic_id") or topic["post"]["topic_id"])
        first = wait_for(lambda: message_with(world, space, "Dora opens the topic"), timeout=20)
        assert first["sender"]["name"] == DORA
        assert "Dora Diaz" not in first["text"].split("\n")[0]  # no attribution line
        world.discourse.control.create_post(
            "erin", "Erin replies as herself here", topic_id=topic_id
        )
        world.discourse.control.create_post(
            "frank", "Frank replies from outside", topic_id=topic_id
        )
        erin = wait_for(lambda: message_with(world, space, "Erin replies as herself"), timeout=20)
        frank = wait_for(
            lambda: message_with(world, space, "Frank replies from outside"), timeout=20
        )
        assert erin["sender"]["name"] == ERIN
        assert frank["sender"]["name"] == BRIDGE_USER
        assert "Frank Fox" in frank["text"].split("\n")[0]  # the attribution line
        # Dora edits her post: the Chat message is edited as her, still without attribution.
        post_id = int(topic.get("id") or topic["post"]["id"])
        world.discourse.control.edit_post(post_id, raw="Dora opens the topic, and edits it later")
        edited = wait_for(lambda: message_with(world, space, "edits it later"), timeout=20)
        assert edited["name"] == first["name"]
        assert edited["sender"]["name"] == DORA
        # No echo: each forum post once, and the Chat side brought nothing back, after two
        # more poll cycles (which read every space the bridge wrote to).
        bridge.wait_cycles(bridge.completed_cycles() + 2)
        raws = [p.get("raw") or "" for p in world.live_posts()]
        assert sum("Dora opens the topic" in r for r in raws) == 1
        assert sum("Erin replies as herself" in r for r in raws) == 1
        assert sum("Frank replies from outside" in r for r in raws) == 1
        assert len(world.chat_messages(space)) == 3
    finally:
        bridge.terminate()


def test_refused_delegation_falls_back_with_attribution_and_status_and_check_say_why(
    world: World,
) -> None:
    files, space, category, key = delegated_world(world, scopes=SCOPES[:1])
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        world.discourse.control.create_post(
            "dora",
            "Dora writes while delegation is refused",
            title="Refused delegation topic",
            category_id=category,
        )
        message = wait_for(lambda: message_with(world, space, "delegation is refused"), timeout=20)
        assert message["sender"]["name"] == BRIDGE_USER
        assert "Dora Diaz" in message["text"].split("\n")[0]  # attributed instead
        status = run_main(["--config", str(files.config), "status"]).stdout
        assert "delegation_refused: 1" in status, status
        check = run_main(["--config", str(files.config), "check"])
        assert "unauthorized_client" in check.stdout, check.stdout
        assert f"client id {key['client_id']}" in check.stdout
    finally:
        bridge.terminate()


def test_a_user_unknown_to_workspace_falls_back_and_the_others_still_post_as_themselves(
    world: World,
) -> None:
    files, space, category, _ = delegated_world(world)
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        topic = world.discourse.control.create_post(
            "erin",
            "Erin starts this one herself",
            title="Erin's topic about things",
            category_id=category,
        )
        topic_id = int(topic.get("topic_id") or topic["post"]["topic_id"])
        world.discourse.control.create_post(
            "olga", "Olga is not in Workspace at all", topic_id=topic_id
        )
        olga = wait_for(lambda: message_with(world, space, "Olga is not in Workspace"), timeout=20)
        erin = message_with(world, space, "Erin starts this one herself")
        assert erin is not None and erin["sender"]["name"] == ERIN
        assert olga["sender"]["name"] == BRIDGE_USER
        status = run_main(["--config", str(files.config), "status"]).stdout
        assert "not_a_member: 1" in status or "user_refused: 1" in status, status
    finally:
        bridge.terminate()


def test_an_edit_whose_author_lost_delegation_stops_only_that_edit(world: World) -> None:
    """Only a message's author can edit it in Chat. With the delegation withdrawn, the edit
    of Dora's message is refused: counted and dead-lettered (status shows it), while the
    operator's credentials, and so everyone else's posts, keep working."""
    files, space, category, key = delegated_world(world)
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        topic = world.discourse.control.create_post(
            "dora",
            "Dora writes before the change",
            title="Before the delegation goes",
            category_id=category,
        )
        first = wait_for(lambda: message_with(world, space, "before the change"), timeout=20)
        assert first["sender"]["name"] == DORA
        world.chat.control.set_delegation(key["client_id"], [])
        post_id = int(topic.get("id") or topic["post"]["id"])
        world.discourse.control.edit_post(post_id, raw="Dora edits after the delegation went")
        topic_id = int(topic.get("topic_id") or topic["post"]["topic_id"])
        world.discourse.control.create_post(
            "frank", "Frank still gets through fine", topic_id=topic_id
        )
        wait_for(lambda: message_with(world, space, "Frank still gets through"), timeout=20)
        status = wait_for(
            lambda: (
                (out := run_main(["--config", str(files.config), "status"]).stdout)
                and "Dead letters: 1" in out
                and out
            ),
            timeout=20,
        )
        assert "can only be changed by its author" in status
        assert "delegation_refused: 1" in status
        assert message_with(world, space, "after the delegation went") is None
    finally:
        bridge.terminate()


def test_delegation_refused_for_one_user_leaves_the_others_posting_as_themselves(
    world: World,
) -> None:
    """Gina's Workspace domain (example.org) is in the bridge's `domains`, but the admin's
    delegation covers example.com only: Google refuses her token (unauthorized_client). Her
    posts fall back with attribution, Dora's still go out as Dora; `status` shows the reason
    and `check` names the fix for the space where she is the one to try."""
    gina = "users/300000000000000000009"
    world.chat.control.create_user(name=gina, displayName="Gina Gale", email="gina@example.org")
    # Gina first among the members: the one `check` tries a token for.
    files, space, category, key = delegated_world(
        world, first_members=(gina,), domains=(DOMAIN, "example.org")
    )
    world.discourse.control.create_user(
        "gina", name="Gina Gale", email="gina@example.org", trust_level=1
    )
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, what="bridge ready")
        bridge.wait_cycles(1)
        topic = world.discourse.control.create_post(
            "dora", "Dora starts a topic as herself", title="Two domains", category_id=category
        )
        topic_id = int(topic.get("topic_id") or topic["post"]["topic_id"])
        world.discourse.control.create_post(
            "gina", "Gina replies from the other domain", topic_id=topic_id
        )
        dora = wait_for(lambda: message_with(world, space, "Dora starts a topic"), timeout=20)
        reply = wait_for(lambda: message_with(world, space, "Gina replies"), timeout=20)
        assert dora["sender"]["name"] == DORA
        assert reply["sender"]["name"] == BRIDGE_USER
        assert "Gina Gale" in reply["text"].split("\n")[0]
    finally:
        bridge.terminate()
    status = run_main(["--config", str(files.config), "status"]).stdout
    assert "delegation_refused: 1" in status, status
    check = run_main(["--config", str(files.config), "check"]).stdout
    assert "may not act as gina@example.org: unauthorized_client" in check, check
    assert f"client id {key['client_id']}" in check
