"""Unit tests of the CLI's pure parts, `status`/`retry` on a store, and the deploy files."""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

import cli
import google_chat_client
from config_loader import Config, SpaceMapping, load_config
from db import Store
from discourse_client import DiscourseWebhook
from main import PrivateRotatingFileHandler, parse_args
from webhook_listener import CHAT_EVENTS, HANDLED_EVENTS, POST_EVENTS

REPO = Path(__file__).resolve().parents[1]
SCOPES = list(cli.CHAT_SCOPES)


def make_config(tmp_path: Path, **sync: object) -> Config:
    data = {
        "discourse": {"url": "http://127.0.0.1:9", "api_key": "k", "webhook_secret": "s" * 16},
        "google": {"credentials_file": "c.json", "token_file": "t.json"},
        "sync_settings": {"database": "state.sqlite", "webhook_port": 5123, **sync},
        "mappings": [{"google_space_id": "spaces/AAA", "discourse_category_id": 7}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, env={})


def hook(**fields: object) -> DiscourseWebhook:
    base: dict[str, object] = {
        "id": 1,
        "payload_url": "http://x/discourse-webhook",
        "content_type": 1,
        "active": True,
        "wildcard_web_hook": True,
        "verify_certificate": True,
        "event_type_names": (),
        "category_ids": (),
        "secret": "s" * 16,
    }
    base.update(fields)
    return DiscourseWebhook(**base)  # type: ignore[arg-type]


def test_missing_scopes_accepts_broader_grants_and_names_what_lacks() -> None:
    assert cli.missing_scopes(SCOPES) == []
    broad = [
        cli._AUTH + "chat.messages",
        cli._AUTH + "chat.spaces",
        cli._AUTH + "chat.memberships",
    ]
    assert cli.missing_scopes(broad) == []
    assert cli.missing_scopes([cli._AUTH + "chat.messages"]) == SCOPES[1:]
    assert cli.missing_scopes([]) == SCOPES


def test_with_events_the_pubsub_scope_is_needed_and_asked_for() -> None:
    pubsub = cli._AUTH + "pubsub"
    assert cli.missing_scopes(SCOPES, events=True) == [pubsub]
    assert cli.missing_scopes([*SCOPES, pubsub], events=True) == []
    assert cli.missing_scopes([*SCOPES, cli._AUTH + "cloud-platform"], events=True) == []
    config = load_config(Path(__file__).resolve().parent.parent / "config.yaml.example", env={})
    assert config.google.events is not None
    assert cli.auth_scopes(config) == (*SCOPES, pubsub)


def test_webhook_problems_names_each_defect() -> None:
    events = POST_EVENTS
    assert cli.webhook_problems(hook(), secret="s" * 16, events=events) == []
    problems = cli.webhook_problems(
        hook(active=False, secret="other-secret-123", content_type=2),
        secret="s" * 16,
        events=events,
    )
    assert len(problems) == 3
    assert any("inactive" in p for p in problems)
    assert any("secret" in p for p in problems)
    narrow = hook(wildcard_web_hook=False, event_type_names=("post_created",))
    (problem,) = cli.webhook_problems(narrow, secret="s" * 16, events=events)
    assert "post_edited" in problem and "post_created" not in problem
    assert cli.webhook_problems(hook(category_ids=(3,)), secret=None, events=events)


def test_check_asks_the_webhook_for_events_the_listener_takes_in(tmp_path: Path) -> None:
    rooms = make_config(tmp_path)
    assert cli.needed_events(rooms) == POST_EVENTS
    dm_mapping = SpaceMapping(google_space_id="spaces/DM")
    dm = dataclasses.replace(rooms, mappings=(*rooms.mappings, dm_mapping))
    assert cli.needed_events(dm) == POST_EVENTS + CHAT_EVENTS
    assert set(cli.needed_events(dm)) <= HANDLED_EVENTS


def test_webhook_url_prefers_the_public_url(tmp_path: Path) -> None:
    assert cli.webhook_url(make_config(tmp_path)) == "http://127.0.0.1:5123/discourse-webhook"
    assert (
        cli.webhook_url(make_config(tmp_path, webhook_host="0.0.0.0"))
        == "http://127.0.0.1:5123/discourse-webhook"
    )
    public = "https://bridge.example.com/discourse-webhook"
    assert cli.webhook_url(make_config(tmp_path, public_webhook_url=public)) == public


def test_parse_since_reads_dates_as_utc() -> None:
    assert cli.parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert cli.parse_since("2024-05-01T12:30:00+02:00") == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        cli.parse_since("yesterday")


def test_run_stays_the_default_and_config_goes_before_or_after_the_command() -> None:
    args = parse_args([])
    assert (args.command, args.once, args.config) == ("run", False, Path("config.yaml"))
    assert parse_args(["--config", "a.yaml", "status"]).config == Path("a.yaml")
    assert parse_args(["status", "--config", "b.yaml"]).config == Path("b.yaml")
    args = parse_args(["backfill", "--space", "spaces/X", "--since", "2024-01-02"])
    assert args.since == datetime(2024, 1, 2, tzinfo=UTC) and args.space == "spaces/X"
    with pytest.raises(SystemExit):
        parse_args(["backfill"])  # --space is required


@pytest.mark.parametrize(
    "command", ["run", "auth", "spaces", "check", "status", "retry", "backfill", "demo"]
)
def test_every_command_has_help(command: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "main.py"), command, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python main.py" in done.stdout


def test_status_lists_dead_letters_and_parked_items_and_retry_requeues_them(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    with Store(config.sync.database) as store:
        store.enqueue_event(
            event_id="1",
            event_type="post",
            event_name="post_created",
            payload="{}",
            dedupe_key="post_created:5",
            ordering_key="topic:1",
            received_at=datetime.now(UTC),
        )
        (event,) = store.due_events(datetime.now(UTC) + timedelta(seconds=1))
        store.mark_dead(event.id, "Chat refused it: INVALID_ARGUMENT")
        store.record_failure(
            "discourse_to_gchat_dm",
            "dm:42",
            "Discourse refused it: too similar",
            max_attempts=1,
            next_attempt_at=datetime.now(UTC),
        )
    out = io.StringIO()
    assert cli.run_status(config, out=out) == 0
    text = out.getvalue()
    assert "Dead letters: 1" in text and "INVALID_ARGUMENT" in text
    assert "Parked items: 1" in text and "dm:42" in text and "too similar" in text
    assert "spaces/AAA -> category 7" in text

    out = io.StringIO()
    assert cli.run_retry(config, out=out) == 0
    assert "requeued 1 dead letter(s) and 1 parked item(s)" in out.getvalue()
    with Store(config.sync.database) as store:
        assert store.dead_events() == [] and store.parked_items() == []
        assert store.inbox_depth() == 1


def test_status_without_a_database_says_so(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cli.run_status(make_config(tmp_path), out=out) == 0
    assert "has not run yet" in out.getvalue()


def test_token_file_is_written_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "token.json"
    google_chat_client.write_token_file(path, {"refresh_token": "r"})
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text()) == {"refresh_token": "r"}


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd to run this)")
    unit = (REPO / "deploy" / "gchat-discourse.service").read_text()
    # verify insists that ExecStart's program exists: point it at this checkout's.
    unit = unit.replace("/opt/gchat-discourse/.venv/bin/python", sys.executable)
    unit = unit.replace("/opt/gchat-discourse/main.py", str(REPO / "main.py"))
    path = tmp_path / "gchat-discourse.service"
    path.write_text(unit)
    done = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Restart=on-failure" in unit and "StateDirectory=gchat-discourse" in unit
    assert "User=gchat-discourse" in unit and "NoNewPrivileges=yes" in unit


def test_dockerfile_runs_as_non_root_with_a_volume_and_a_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "\nUSER bridge" in text and 'VOLUME ["/data"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_check_warns_about_files_others_can_read_and_plain_http(tmp_path: Path) -> None:
    config = make_config(tmp_path, log_file="bridge.log")
    (tmp_path / "t.json").write_text("{}")
    (tmp_path / "t.json").chmod(0o600)
    (tmp_path / "c.json").write_text("{}")
    (tmp_path / "c.json").chmod(0o644)
    (tmp_path / "bridge.log").write_text("")
    (tmp_path / "bridge.log").chmod(0o640)
    config.path.chmod(0o600)
    Store(config.sync.database).close()  # created by the store: private
    results = list(cli.check_exposure(config))
    assert all(r.ok and r.warning for r in results)
    assert [r.what for r in results] == [
        f"Google OAuth client file {tmp_path / 'c.json'} can be read by others (mode 0644)",
        f"log file {tmp_path / 'bridge.log'} can be read by others (mode 0640)",
    ]
    assert results[0].fix == f"chmod 600 {tmp_path / 'c.json'}"
    out = io.StringIO()
    cli.print_result(results[0], out)
    assert out.getvalue().startswith("! Google OAuth client file")
    assert "fix: chmod 600" in out.getvalue()

    def url_warnings(url: str) -> list[str]:
        changed = dataclasses.replace(
            config, discourse=dataclasses.replace(config.discourse, url=url)
        )
        return [r.what for r in cli.check_exposure(changed) if "discourse.url" in r.what]

    for quiet in (
        "https://forum.example",
        "http://127.0.0.1:9",
        "http://localhost:8",
        "http://[::1]",
    ):
        assert url_warnings(quiet) == [], quiet
    (said,) = url_warnings("http://forum.example")
    assert "plain http" in said and "API key" in said


def test_check_warns_when_the_webhook_url_is_plain_http_off_this_machine(
    tmp_path: Path,
) -> None:
    def said(**sync: object) -> list[str]:
        return [r.what for r in cli.check_webhook_transport(make_config(tmp_path, **sync))]

    assert said() == []  # the listener's own loopback address
    assert said(webhook_host="0.0.0.0") == []  # Discourse on this machine reaches 127.0.0.1
    assert said(public_webhook_url="https://bridge.example.com/discourse-webhook") == []
    assert said(public_webhook_url="http://localhost:5123/discourse-webhook") == []
    (warned,) = list(
        cli.check_webhook_transport(
            make_config(tmp_path, public_webhook_url="http://bridge.example.com/discourse-webhook")
        )
    )
    assert warned.ok and warned.warning
    assert "plain http" in warned.what and "replayed" in warned.what
    assert "https" in warned.fix


def test_the_log_and_its_rotations_are_created_private(tmp_path: Path) -> None:
    log = tmp_path / "bridge.log"
    handler = PrivateRotatingFileHandler(log, maxBytes=64, backupCount=2, encoding="utf-8")
    try:
        for n in range(6):
            handler.emit(logging.makeLogRecord({"msg": f"line {n} " + "x" * 40}))
    finally:
        handler.close()
    made = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert made == dict.fromkeys(("bridge.log", "bridge.log.1", "bridge.log.2"), "0o600")
