"""Tests of config_loader: the shipped example loads, and every kind of problem is reported."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from config_loader import (
    Config,
    ConfigError,
    DiscourseConfig,
    EventsConfig,
    InitialHistory,
    SpaceMapping,
    load_config,
    parse_duration,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-s3cret-s3cret"


def base_config() -> dict[str, Any]:
    """A minimal valid config as a dict (tests change one thing and dump it)."""
    return {
        "discourse": {"url": "http://127.0.0.1:8888", "api_key": "k" * 64},
        "google": {"credentials_file": "credentials.json", "token_file": "token.json"},
        "sync_settings": {"database": "state.sqlite"},
        "mappings": [{"google_space_id": "spaces/AAAA", "discourse_category_id": 12}],
    }


def write(tmp_path: Path, data: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def load(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, data), env=env or {})


def problems(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    assert str(info.value).count("\n  - ") == len(info.value.problems)
    return info.value.problems


def test_shipped_example_loads_with_the_documented_values(tmp_path: Path) -> None:
    example = ROOT / "config.yaml.example"
    cfg = load_config(example, env={})
    assert cfg.path == example
    assert cfg.discourse == DiscourseConfig(url="http://localhost:8888", api_key="...")
    assert cfg.google.credentials_file == ROOT / "credentials.json"
    assert cfg.google.token_file == ROOT / "token.json"
    assert cfg.google.api_endpoint is None
    assert cfg.google.events == EventsConfig(
        pubsub_topic="projects/my-project/topics/gchat-discourse",
        pubsub_subscription="projects/my-project/subscriptions/gchat-discourse",
    )
    assert cfg.google.events.project == "my-project"
    assert cfg.sync.poll_interval_seconds == 900
    assert (cfg.sync.webhook_host, cfg.sync.webhook_port) == ("127.0.0.1", 5000)
    assert cfg.sync.database == ROOT / "sync_db.sqlite"
    assert cfg.sync.log_file == ROOT / "sync_service.log"
    assert cfg.sync.initial_history == InitialHistory(mode="all")
    assert cfg.sync.inbox_retention == timedelta(days=7)
    assert cfg.mappings == (
        SpaceMapping("spaces/AAAAAAAAAAA", discourse_category_id=12),
        SpaceMapping("spaces/BBBBBBBBBBB", discourse_parent_category_id=12),
    )


def test_every_key_of_the_example_is_commented() -> None:
    lines = (ROOT / "config.yaml.example").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        if stripped.endswith(":") and stripped != "mappings:":
            continue  # a section header
        key = stripped.split(":")[0]
        if key in {"discourse_category_id", "discourse_parent_category_id"}:
            continue  # inside a commented list item
        assert lines[index - 1].strip().startswith("#"), f"no comment above {key!r}"


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, base_config())
    assert cfg.discourse.api_username == "system"
    assert cfg.discourse.requests_per_minute == 60
    assert cfg.discourse.webhook_secret is None
    assert cfg.discourse.allow_unsigned_webhooks is False
    assert cfg.discourse.timeout_seconds == 30
    sync = cfg.sync
    assert sync.poll_interval_seconds == 15 * 60
    assert sync.log_file is None
    assert sync.log_level == "INFO"
    assert sync.user_email_domain == "users.noreply.invalid"
    assert (sync.max_attempts, sync.create_users, sync.new_user_trust_level) == (8, True, 1)


def test_records_are_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path, base_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.discourse.url = "http://elsewhere"  # type: ignore[misc]


def test_url_trailing_slash_is_dropped_and_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = base_config()
    data["discourse"]["url"] = "https://forum.example.com/sub/"
    data["google"]["api_endpoint"] = "http://127.0.0.1:9999/"
    data["google"]["token_file"] = "/abs/token.json"
    data["sync_settings"]["log_file"] = "logs/bridge.log"
    sub = tmp_path / "etc"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_config(write(sub, data), env={})
    assert cfg.discourse.url == "https://forum.example.com/sub"
    assert cfg.google.api_endpoint == "http://127.0.0.1:9999"
    assert cfg.google.credentials_file == sub / "credentials.json"
    assert cfg.google.token_file == Path("/abs/token.json")
    assert cfg.sync.database == sub / "state.sqlite"
    assert cfg.sync.log_file == sub / "logs" / "bridge.log"


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, base_config())
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("config.yaml"), env={})
    assert cfg.path == tmp_path / "config.yaml"
    assert cfg.sync.database == tmp_path / "state.sqlite"


@pytest.mark.parametrize(
    ("settings", "seconds"),
    [
        ({"poll_interval_minutes": 0.5}, 30.0),
        ({"poll_interval_minutes": 2}, 120.0),
        ({"poll_interval_seconds": 7}, 7.0),
        ({"poll_interval_seconds": 0.25}, 0.25),
        ({}, 900.0),
    ],
)
def test_poll_interval(tmp_path: Path, settings: dict[str, Any], seconds: float) -> None:
    data = base_config()
    data["sync_settings"].update(settings)
    assert load(tmp_path, data).sync.poll_interval_seconds == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", InitialHistory("all")),
        ("none", InitialHistory("none")),
        ("30d", InitialHistory("since", timedelta(days=30))),
        ("12h", InitialHistory("since", timedelta(hours=12))),
        ("90m", InitialHistory("since", timedelta(minutes=90))),
        ("2w", InitialHistory("since", timedelta(weeks=2))),
    ],
)
def test_initial_history(tmp_path: Path, text: str, expected: InitialHistory) -> None:
    data = base_config()
    data["sync_settings"]["initial_history"] = text
    assert load(tmp_path, data).sync.initial_history == expected


@pytest.mark.parametrize("text", ["0d", "30", "d", "30x", "-3d", "1.5h", ""])
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


def test_env_overrides_secrets_and_file_may_omit_them(tmp_path: Path) -> None:
    data = base_config()
    del data["discourse"]["api_key"]
    env = {"DISCOURSE_API_KEY": "from-env", "DISCOURSE_WEBHOOK_SECRET": SECRET}
    cfg = load(tmp_path, data, env)
    assert cfg.discourse.api_key == "from-env"
    assert cfg.discourse.webhook_secret == SECRET

    data = base_config()
    data["discourse"]["webhook_secret"] = "file-secret-long-enough"
    cfg = load(tmp_path, data, env)
    assert (cfg.discourse.api_key, cfg.discourse.webhook_secret) == ("from-env", SECRET)


def test_empty_env_variable_does_not_override(tmp_path: Path) -> None:
    cfg = load(tmp_path, base_config(), {"DISCOURSE_API_KEY": ""})
    assert cfg.discourse.api_key == "k" * 64


def test_missing_webhook_secret_is_not_a_load_error(tmp_path: Path) -> None:
    data = base_config()
    data["discourse"]["webhook_secret"] = None
    data["discourse"]["allow_unsigned_webhooks"] = False
    assert load(tmp_path, data).discourse.webhook_secret is None


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    data = base_config()
    data["discourse"]["webhook_secret"] = SECRET
    text = repr(load(tmp_path, data))
    assert "k" * 64 not in text
    assert SECRET not in text


def test_dm_mapping_with_neither_category_key_is_allowed(tmp_path: Path) -> None:
    data = base_config()
    data["mappings"].append({"google_space_id": "spaces/DM1"})
    data["mappings"].append({"google_space_id": "spaces/P", "discourse_parent_category_id": 12})
    cfg = load(tmp_path, data)
    assert cfg.mappings[1] == SpaceMapping("spaces/DM1")
    assert cfg.mappings[2].discourse_parent_category_id == 12


def test_empty_mapping_list_is_allowed(tmp_path: Path) -> None:
    data = base_config()
    data["mappings"] = []
    assert load(tmp_path, data).mappings == ()


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = base_config()
    data["discourse"]["requests_per_minut"] = 60
    del data["discourse"]["url"]
    data["discourse"]["timeout_seconds"] = "30"
    data["google"]["api_endpoint"] = "127.0.0.1:9000"
    data["sync_settings"]["poll_interval_minutes"] = -5
    data["sync_settings"]["webhook_port"] = 70000
    data["sync_settings"]["create_users"] = "yes please"
    data["mappings"] = [
        {
            "google_space_id": "spaces/A",
            "discourse_category_id": 1,
            "discourse_parent_category_id": 2,
        },
        {"google_space_id": "spaces/A", "discourse_category_id": 3},
        {"google_space_id": "AAAA"},
        {"google_space_id": "spaces/C", "discourse_category_id": True},
    ]
    data["sync"] = {}
    found = problems(tmp_path, data)
    expected_prefixes = [
        "sync: unknown key; did you mean sync_settings?",
        "discourse.requests_per_minut: unknown key; did you mean requests_per_minute?",
        "discourse.url: required key is missing",
        "discourse.timeout_seconds: must be a number of seconds, got a string",
        "google.api_endpoint: '127.0.0.1:9000' must start with http:// or https://",
        "sync_settings.poll_interval_minutes: must be a positive number of minutes",
        "sync_settings.webhook_port: 70000 is out of range",
        "sync_settings.create_users: must be true or false",
        "mappings[0].discourse_category_id: both discourse_category_id and "
        "discourse_parent_category_id are set",
        "mappings[1].google_space_id: spaces/A is already mapped by mappings[0]",
        "mappings[2].google_space_id: 'AAAA' is not a space id",
        "mappings[3].discourse_category_id: must be a whole number, got a boolean",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in found), (prefix, found)
    assert len(found) == len(expected_prefixes), found
    # Each problem says how to fix it after the "; ".
    assert all(";" in p for p in found), found


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("discourse", "url", "http://", "has no host name"),
        ("discourse", "url", "https://forum.example.com/?x=1", "must not have a query"),
        ("discourse", "url", 5, "must be a URL string"),
        ("discourse", "url", "http://host:99999", "not a valid URL"),
        ("discourse", "api_key", "", "must not be empty"),
        ("discourse", "api_username", None, "must be a string, got null"),
        ("discourse", "requests_per_minute", 0, "must be a positive number"),
        ("discourse", "requests_per_minute", True, "got a boolean"),
        ("discourse", "timeout_seconds", float("inf"), "must be a positive number"),
        ("discourse", "webhook_secret", "tooshort", "has 8 characters"),
        ("discourse", "webhook_secret", 123456789012345, "must be a string"),
        ("discourse", "allow_unsigned_webhooks", 1, "must be true or false"),
        ("google", "token_file", 5, "must be a file path string"),
        ("google", "api_endpoint", "ftp://x", "must start with http"),
        ("sync_settings", "poll_interval_seconds", 0, "must be a positive number"),
        ("sync_settings", "poll_interval_seconds", "10", "must be a number of seconds"),
        ("sync_settings", "webhook_port", 0, "out of range"),
        ("sync_settings", "webhook_port", 5000.0, "must be a whole number"),
        ("sync_settings", "webhook_port", True, "got a boolean"),
        ("sync_settings", "webhook_host", "", "must not be empty"),
        ("sync_settings", "log_level", "LOUD", "is not a log level"),
        ("sync_settings", "log_file", 3, "must be a file path string"),
        ("sync_settings", "initial_history", 30, "is not understood"),
        ("sync_settings", "initial_history", "forever", "is not understood"),
        ("sync_settings", "user_email_domain", "not a domain", "is not a domain name"),
        ("sync_settings", "max_attempts", 0, "out of range"),
        ("sync_settings", "new_user_trust_level", -1, "out of range"),
        ("sync_settings", "database", None, "must be a file path string"),
    ],
)
def test_single_problem(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    data = base_config()
    data[section][key] = value
    found = problems(tmp_path, data)
    assert len(found) == 1, found
    assert found[0].startswith(f"{section}.{key}: "), found
    assert message in found[0], found


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    data = base_config()
    data["sync_settings"]["log_level"] = "debug"
    assert load(tmp_path, data).sync.log_level == "DEBUG"


def test_short_secret_from_env_is_reported_with_its_source(tmp_path: Path) -> None:
    found = problems(tmp_path, base_config(), {"DISCOURSE_WEBHOOK_SECRET": "short"})
    assert len(found) == 1
    assert found[0].startswith("discourse.webhook_secret:")
    assert "$DISCOURSE_WEBHOOK_SECRET" in found[0]
    assert "short" not in found[0].replace("shorter", "")  # the secret itself is not echoed


def test_missing_api_key_suggests_the_env_variable(tmp_path: Path) -> None:
    data = base_config()
    del data["discourse"]["api_key"]
    (found,) = problems(tmp_path, data)
    assert found.startswith("discourse.api_key: required key is missing")
    assert "DISCOURSE_API_KEY" in found


def test_both_poll_interval_keys(tmp_path: Path) -> None:
    data = base_config()
    data["sync_settings"].update(poll_interval_minutes=1, poll_interval_seconds=60)
    (found,) = problems(tmp_path, data)
    assert "keep only one" in found


def test_missing_sections(tmp_path: Path) -> None:
    found = problems(tmp_path, {"discourse": {"url": "http://x", "api_key": "k"}})
    assert [p.split(":")[0] for p in found] == ["google", "sync_settings", "mappings"]


def test_section_of_wrong_type(tmp_path: Path) -> None:
    data = base_config()
    data["google"] = ["credentials.json"]
    data["mappings"] = {"google_space_id": "spaces/A"}
    found = problems(tmp_path, data)
    assert any(p.startswith("google: must be a mapping") for p in found), found
    assert any(p.startswith("mappings: must be a list") for p in found), found


def test_same_category_in_two_mappings(tmp_path: Path) -> None:
    data = base_config()
    data["mappings"].append({"google_space_id": "spaces/B", "discourse_category_id": 12})
    (found,) = problems(tmp_path, data)
    assert found.startswith("mappings[1].discourse_category_id: category 12 is already used")


def test_unknown_key_far_from_any_known_key_lists_the_known_keys(tmp_path: Path) -> None:
    data = base_config()
    data["google"]["zzzzzz"] = 1
    (found,) = problems(tmp_path, data)
    assert found.startswith("google.zzzzzz: unknown key; remove it (known keys: credentials_file")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("discourse: [unclosed\n", "not valid YAML"),
        ("discourse:\n  url: a\n  url: b\n", "duplicate key 'url'"),
        ("just a string\n", "must be a YAML mapping"),
        ("", "must be a YAML mapping"),
        ("!!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_not_yaml_or_not_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_attribution_format_is_checked(tmp_path: Path) -> None:
    data = base_config()
    data["sync_settings"]["attribution_format"] = "{name} (@{username}) wrote:"
    assert load(tmp_path, data).sync.attribution_format == "{name} (@{username}) wrote:"
    data["sync_settings"]["attribution_format"] = "{who} wrote:"
    found = problems(tmp_path, data)
    assert len(found) == 1 and found[0].startswith("sync_settings.attribution_format:")


def test_refused_authors_and_edit_scan_defaults_and_checks(tmp_path: Path) -> None:
    cfg = load(tmp_path, base_config())
    assert cfg.sync.refused_authors == "park"
    assert cfg.sync.edit_scan_interval_seconds == 5  # below any sensible poll interval
    data = base_config()
    data["sync_settings"].update(refused_authors="post_as_bridge", edit_scan_interval_seconds=0)
    assert load(tmp_path, data).sync.refused_authors == "post_as_bridge"
    data["sync_settings"].update(refused_authors="drop", edit_scan_interval_seconds=-1)
    found = problems(tmp_path, data)
    assert any("refused_authors" in p and '"park" or "post_as_bridge"' in p for p in found)
    assert any("edit_scan_interval_seconds" in p and "0 or more" in p for p in found)


def test_inbox_retention_default_fractions_and_checks(tmp_path: Path) -> None:
    assert load(tmp_path, base_config()).sync.inbox_retention == timedelta(days=7)
    data = base_config()
    data["sync_settings"]["inbox_retention_days"] = 0.5
    assert load(tmp_path, data).sync.inbox_retention == timedelta(hours=12)
    for bad, said in ((0, "above 0"), (-1, "above 0"), ("7d", "a number"), (4000, "at most")):
        data["sync_settings"]["inbox_retention_days"] = bad
        (found,) = problems(tmp_path, data)
        assert found.startswith("sync_settings.inbox_retention_days:") and said in found, found


# -- google.events (issue 15)

TOPIC = "projects/my-project/topics/gchat-discourse"
SUBSCRIPTION = "projects/my-project/subscriptions/gchat-discourse"


def with_events(events: Any) -> dict[str, Any]:
    data = base_config()
    data["google"]["events"] = events
    return data


def test_events_absent_or_null_means_poll_only(tmp_path: Path) -> None:
    assert load(tmp_path, base_config()).google.events is None
    assert load(tmp_path, with_events(None)).google.events is None


def test_events_with_emulator_endpoints(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        with_events(
            {
                "pubsub_topic": TOPIC,
                "pubsub_subscription": SUBSCRIPTION,
                "workspace_events_endpoint": "http://127.0.0.1:9001/",
                "pubsub_endpoint": "http://127.0.0.1:9002",
            }
        ),
    )
    assert cfg.google.events == EventsConfig(
        TOPIC, SUBSCRIPTION, "http://127.0.0.1:9001", "http://127.0.0.1:9002"
    )


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ("yes", "google.events: must be a mapping of keys or null, got a string"),
        ({"pubsub_subscription": SUBSCRIPTION}, "google.events.pubsub_topic: required key"),
        ({"pubsub_topic": TOPIC}, "google.events.pubsub_subscription: required key"),
        (
            {"pubsub_topic": "gchat-discourse", "pubsub_subscription": SUBSCRIPTION},
            "google.events.pubsub_topic: 'gchat-discourse' is not a Pub/Sub topic name",
        ),
        (
            {"pubsub_topic": TOPIC, "pubsub_subscription": TOPIC},
            "google.events.pubsub_subscription: 'projects/my-project/topics/gchat-discourse' "
            "is not a Pub/Sub subscription name",
        ),
        (
            {
                "pubsub_topic": TOPIC,
                "pubsub_subscription": "projects/other-project/subscriptions/s-1",
            },
            "google.events.pubsub_subscription: is in project 'other-project' but the topic",
        ),
        (
            {"pubsub_topic": TOPIC, "pubsub_subscription": SUBSCRIPTION, "pubsub_topics": 1},
            "google.events.pubsub_topics: unknown key",
        ),
        (
            {
                "pubsub_topic": TOPIC,
                "pubsub_subscription": SUBSCRIPTION,
                "pubsub_endpoint": "localhost:9002",
            },
            "google.events.pubsub_endpoint:",
        ),
    ],
)
def test_bad_events_settings_name_the_key_and_the_fix(
    tmp_path: Path, events: Any, expected: str
) -> None:
    found = problems(tmp_path, with_events(events))
    assert any(p.startswith(expected) for p in found), found


# -- google.delegation (issue 16)

KEY = {
    "type": "service_account",
    "client_email": "bridge@project.iam.gserviceaccount.com",
    "client_id": "1234",
    "private_key": "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
    "private_key_id": "k1",
    "token_uri": "http://127.0.0.1:9/token",
}


def with_delegation(
    tmp_path: Path, key: Any = KEY, mode: int = 0o600, **kw: Any
) -> dict[str, Any]:
    path = tmp_path / "sa.json"
    path.write_text(key if isinstance(key, str) else json.dumps(key))
    path.chmod(mode)
    data = base_config()
    data["google"]["delegation"] = {
        "service_account_file": "sa.json",
        "domains": ["Example.com"],
        **kw,
    }
    return data


def test_delegation_reads_the_key_file_and_never_shows_it(tmp_path: Path) -> None:
    cfg = load(tmp_path, with_delegation(tmp_path))
    delegation = cfg.google.delegation
    assert delegation is not None
    assert delegation.service_account_file == tmp_path / "sa.json"
    assert delegation.domains == ("example.com",)
    assert delegation.service_account_info["client_email"] == KEY["client_email"]
    assert "secret" not in repr(cfg)
    assert delegation.covers("dora@EXAMPLE.com") and not delegation.covers("eve@other.org")
    assert not delegation.covers(None)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"mode": 0o644}, "can be read by others (mode 0644); run: chmod 600"),
        ({"key": "{not json"}, "is not a JSON key file"),
        ({"key": {**KEY, "type": "authorized_user"}}, "is not a service-account key"),
        ({"key": {k: v for k, v in KEY.items() if k != "private_key"}}, "lacks private_key"),
        ({"domains": "example.com"}, "domains: must be a list of domain names"),
        ({"domains": []}, "domains: must be a list of domain names"),
        ({"domaine": ["x.com"]}, "google.delegation.domaine: unknown key"),
    ],
)
def test_bad_delegation_settings_name_the_key_and_the_fix(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    found = problems(tmp_path, with_delegation(tmp_path, **change))
    assert any(expected in p for p in found), found
    assert not any("secret" in p for p in found)


def test_a_missing_key_file_says_where_to_put_one(tmp_path: Path) -> None:
    data = base_config()
    data["google"]["delegation"] = {"service_account_file": "nope.json", "domains": ["x.com"]}
    found = problems(tmp_path, data)
    assert any("nope.json does not exist; download a JSON key" in p for p in found), found
