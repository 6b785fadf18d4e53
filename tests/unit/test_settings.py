"""``Settings.from_env``: ``SOPHIA_ADMIN_TOKEN`` must be a token a header can carry (printable
ASCII, ``!`` to ``~``), else ``serve`` stops at start with one line naming the variable and the
kind of character, never the token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, parse_host_patterns

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("left-part right-part", "a space at character 10 of 20"),
        ("left-part-right-part\n", "a line break at character 21 of 21 (a secret file's trailing newline?)"),
        ("left-part\r\nright-part", "a line break at character 10"),
        ("left-part\tright-part", "a tab"),
        ("left-part\x1bright-part", "a control character"),
        ("left-part\x7fright-part", "a control character"),
        ("left-part\u00e9right-part", "a non-ASCII character"),
        ("left-part\u00a0right-part", "a non-ASCII character"),  # a no-break space
        (" left-part-right-part", "a space at character 1"),
    ],
)
def test_an_admin_token_no_header_can_carry_is_refused(token: str, says: str) -> None:
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({"SOPHIA_ADMIN_TOKEN": token})
    message = str(exc.value)
    assert message.startswith("SOPHIA_ADMIN_TOKEN has ") and says in message, message
    assert "printable ASCII" in message
    assert "left-part" not in message and "right-part" not in message


@pytest.mark.parametrize("token", ["s3cr3t", "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "A" * 500])
def test_printable_ascii_tokens_are_kept(token: str) -> None:
    assert Settings.from_env({"SOPHIA_ADMIN_TOKEN": token}).admin_token == token


def test_a_token_longer_than_the_edge_takes_is_refused_at_start() -> None:
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({"SOPHIA_ADMIN_TOKEN": "A" * 4097})
    assert str(exc.value) == "SOPHIA_ADMIN_TOKEN is 4097 characters long: at most 4096"


def test_an_empty_token_is_unset() -> None:
    assert Settings.from_env({"SOPHIA_ADMIN_TOKEN": ""}).admin_token is None
    assert Settings.from_env({}).admin_token is None


def test_the_metrics_token_follows_the_admin_tokens_rules_and_is_never_shown() -> None:
    assert Settings.from_env({"SOPHIA_METRICS_TOKEN": "scrape-me-0123456789"}).metrics_token == (
        "scrape-me-0123456789"
    )
    # Set but empty (an empty Secret): refused, not taken as unset (which leaves /metrics open).
    with pytest.raises(SettingsError, match="SOPHIA_METRICS_TOKEN is set but empty: /metrics would be open"):
        Settings.from_env({"SOPHIA_METRICS_TOKEN": ""})
    assert Settings.from_env({}).metrics_token is None  # unset: /metrics open (README "Metrics")
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({"SOPHIA_METRICS_TOKEN": "left-part-right-part\n"})
    message = str(exc.value)
    assert message.startswith("SOPHIA_METRICS_TOKEN has a line break at character 21"), message
    assert "left-part" not in message
    assert "left-part" not in repr(Settings(metrics_token="left-part-right-part"))


def test_a_metrics_token_that_is_an_admin_token_stops_the_start() -> None:
    """(h-probe2) A metrics token (current or previous) equal to an admin token (current or
    previous) was taken: whatever scrapes /metrics (its configuration, often readable by many)
    then held the admin API's token. The line names the variables, never the token."""
    admin, old = "admin-token-0123456789", "admin-token-old-0123456789"
    tokens = {"SOPHIA_ADMIN_TOKEN": admin, "SOPHIA_ADMIN_TOKEN_PREVIOUS": old}
    for metrics, named in (
        ({"SOPHIA_METRICS_TOKEN": admin}, "SOPHIA_METRICS_TOKEN is SOPHIA_ADMIN_TOKEN"),
        (
            {"SOPHIA_METRICS_TOKEN": "scrape-0123456789abc", "SOPHIA_METRICS_TOKEN_PREVIOUS": admin},
            "SOPHIA_METRICS_TOKEN_PREVIOUS is SOPHIA_ADMIN_TOKEN",
        ),
        ({"SOPHIA_METRICS_TOKEN": old}, "SOPHIA_METRICS_TOKEN is SOPHIA_ADMIN_TOKEN_PREVIOUS"),
    ):
        with pytest.raises(SettingsError) as exc:
            Settings.from_env({**tokens, **metrics})
        message = str(exc.value)
        assert message.startswith(named) and "a token of its own" in message, message
        assert admin not in message and old not in message
    assert Settings.from_env({**tokens, "SOPHIA_METRICS_TOKEN": "scrape-0123456789abc"}).metrics_token


def test_serve_stops_at_start_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYS_URL", "MEMORY_URL")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            "0",
            "--policy",
            str(ROOT / "routing_policies/demo.yaml"),
        ],
        env={**env, "PYTHONPATH": str(ROOT), "SOPHIA_ADMIN_TOKEN": "opensesame \u00e9t\u00e9"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,  # it would serve forever if it started
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sophia-gateway: cannot start: SOPHIA_ADMIN_TOKEN has a space at character 11")
    assert "opensesame" not in result.stderr + result.stdout


def test_allowed_hosts_are_names_lower_cased_without_a_trailing_dot() -> None:
    settings = Settings.from_env({"SOPHIA_ALLOWED_HOSTS": " Gateway , .Corp.Example., *,, my_gw "})
    assert parse_host_patterns(settings.allowed_hosts) == ("gateway", ".corp.example", "*", "my_gw")
    assert Settings.from_env({}).allowed_hosts == ""


def test_an_allowed_host_that_is_an_ip_literal_is_taken_as_already_allowed() -> None:
    # IP literals pass the rebinding check anyway; listing one (v6 with or without brackets) must
    # not stop the start, and adds nothing to the names.
    settings = Settings.from_env({"SOPHIA_ALLOWED_HOSTS": "[::1], ::1, 10.0.0.5, gw.lan, [fe80::1]"})
    assert parse_host_patterns(settings.allowed_hosts) == ("gw.lan",)


@pytest.mark.parametrize(
    "entry", ["gateway:8080", "[::1]:8080", "[gw]", "http://gateway", "*.example.com", "gate way", "/x", "."]
)
def test_an_allowed_host_that_is_not_a_name_stops_the_start(entry: str) -> None:
    with pytest.raises(SettingsError, match=r"SOPHIA_ALLOWED_HOSTS: .* is not a host name"):
        Settings.from_env({"SOPHIA_ALLOWED_HOSTS": f"localhost,{entry}"})
