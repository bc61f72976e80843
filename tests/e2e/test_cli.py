"""Issue 8 acceptance, end to end: `check`/`check --fix`, `status`/`retry`, `backfill` under
SIGTERM and `demo`, each run as `python main.py ...` against both emulators."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import cli
from tests.e2e.harness import REPO, BridgeFiles, run_main, wait_for
from tests.e2e.world import World

pytestmark = pytest.mark.e2e


def full_scopes(files: BridgeFiles) -> None:
    """The token `auth` writes asks for all the bridge's scopes; the harness's lists one."""
    data = json.loads(files.token.read_text())
    data["scopes"] = list(cli.CHAT_SCOPES)
    files.token.write_text(json.dumps(data))


def say_at(
    world: World, space: str, sender: str, text: str, *, hours_ago: float, thread: str = ""
) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(hours=hours_ago)
    extra = {"threadName": thread} if thread else {}
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return world.chat.control.post_message(
        space, sender=sender, text=text, createTime=stamp, **extra
    )


def room(world: World, **config: object) -> tuple[str, str, int, BridgeFiles]:
    (ada,) = world.add_people("Ada Lovelace")
    space = world.add_space("Ops Room", [ada])
    category = world.category("Ops Room")
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": category}],
        **config,
    )
    full_scopes(files)
    return ada, space, category, files


def test_check_reports_the_missing_webhook_and_check_fix_repairs_it(world: World) -> None:
    _, _, _, files = room(world)
    first = run_main(["--config", str(files.config), "check"])
    assert first.returncode == 1, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    failed = [line for line in lines if line.startswith(cli.FAIL)]
    assert len(failed) == 1 and "no Discourse webhook sends to" in failed[0], first.stdout
    assert "check --fix" in first.stdout
    assert sum(line.startswith(cli.OK) for line in lines) >= 6

    fixed = run_main(["check", "--fix", "--config", str(files.config)])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "created" in fixed.stdout

    again = run_main(["--config", str(files.config), "check"])
    assert again.returncode == 0, again.stdout
    assert cli.FAIL not in again.stdout and f"{cli.OK} Discourse webhook #" in again.stdout
    # The webhook really is there, signed with the configured secret.
    (hook,) = world.discourse.control.state()["webhooks"]
    assert hook["payload_url"] == files.webhook_url and hook["active"]


def test_check_names_an_unknown_category_and_a_bad_key(world: World) -> None:
    _, space, _, files = room(world)
    files = world.config(
        [{"google_space_id": space, "discourse_category_id": 999}], api_key="wrong-key"
    )
    done = run_main(["--config", str(files.config), "check"])
    assert done.returncode == 1
    assert f"{cli.FAIL} Discourse refused the API key" in done.stdout
    assert "fix:" in done.stdout


def test_status_lists_a_parked_message_and_retry_delivers_it(world: World) -> None:
    ada, space, _, files = room(world, extra_sync={"max_attempts": 1})
    # Hours old, so that only the cursor (not a re-read window for edits) can bring it back.
    first = say_at(world, space, ada, "Deploy window moves to Thursday.", hours_ago=3)
    assert run_main(["--config", str(files.config), "run", "--once"]).returncode == 0
    assert world.markers()[first["name"]] == 1

    # Replies are POSTs Discourse could have taken; the bridge does not blindly repeat them.
    world.discourse.control.add_fault(count=1000, status=503, method="POST", path_regex="^/posts")
    reply = say_at(
        world, space, ada, "Objections by Wednesday.", hours_ago=2, thread=first["thread"]["name"]
    )
    run_main(["--config", str(files.config), "run", "--once"])
    assert world.markers()[reply["name"]] == 0

    status = run_main(["--config", str(files.config), "status"])
    assert status.returncode == 0, status.stderr
    parked = status.stdout.split("Parked items: 1", 1)[1]
    assert reply["name"] in parked and "503" in parked, status.stdout

    world.discourse.control.clear_faults()
    retry = run_main(["--config", str(files.config), "retry"])
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "1 parked item(s)" in retry.stdout
    assert run_main(["--config", str(files.config), "run", "--once"]).returncode == 0
    assert world.markers()[reply["name"]] == 1
    assert world.markers()[first["name"]] == 1
    after = run_main(["--config", str(files.config), "status"])
    assert "Parked items: 0" in after.stdout


def test_sigterm_during_backfill_exits_in_time_and_a_rerun_finishes_without_duplicates(
    world: World,
) -> None:
    ada, space, _, files = room(world)
    sent = [world.say(space, ada, f"Historic message number {i:02d}.")["name"] for i in range(16)]
    # Slow Discourse down so that the backfill is surely in progress when SIGTERM comes.
    world.discourse.control.add_fault(count=10000, latency_ms=250, method="POST")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "main.py"),
            "--config",
            str(files.config),
            "backfill",
            "--space",
            space,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: len(world.markers()) >= 3, timeout=60, what="3 mirrored messages")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 10, f"backfill took {took:.1f}s to stop"
    assert proc.returncode == 1 and "Interrupted" in output, output
    partial = world.markers()
    assert 3 <= len(partial) < len(sent)

    world.discourse.control.clear_faults()
    rerun = run_main(["--config", str(files.config), "backfill", "--space", space])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    markers = world.markers()
    assert {name: markers[name] for name in sent} == dict.fromkeys(sent, 1)


def test_backfill_refuses_an_unmapped_space(world: World) -> None:
    _, _, _, files = room(world)
    done = run_main(["--config", str(files.config), "backfill", "--space", "spaces/nope"])
    assert done.returncode == 2 and "not in mappings" in done.stdout


def test_demo_plays_both_directions_and_exits_cleanly() -> None:
    started = time.monotonic()
    done = run_main(["demo"], timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    out = done.stdout
    assert "Chat -> Discourse: new topic" in out and "Discourse -> Chat:" in out
    assert "all checks passed" in out and "exit code 0" in out
