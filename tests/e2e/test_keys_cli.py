"""``sophia-gateway keys ...`` as a user runs it: on the SQLite store in a temporary directory,
then against a running gateway (``--url``, admin token), whose edge honours what it did."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.testing.process import ManagedProcess, free_port, start

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-admin-token"
POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
  other: {deployments: [{provider: a, model: oa}]}
memory: {enabled: false}
auth:
  teams:
    research: {models: [m], rpm: 60, budget_usd: 20, budget_period: 30d}
    ops: {}
"""


def keys(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("KEYS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def keys_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    result = keys(cwd, *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def status(url: str, secret: str) -> int:
    request = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


@pytest.fixture
def gateway(workdir: Path) -> Iterator[ManagedProcess]:
    proc = start(
        ["serve", "--policy", "policy.yaml", "--port", "0"],
        cwd=str(workdir),
        env={"SOPHIA_ADMIN_TOKEN": TOKEN, "KEYS_URL": ""},
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_create_list_revoke_rotate_on_the_sqlite_store(workdir: Path) -> None:
    created = keys(
        workdir,
        "create",
        "--policy",
        "policy.yaml",
        "--team",
        "research",
        "--rpm",
        "5",
        "--expires",
        "90d",
        "--namespaces",
        "read:a,b",
        "write:",
        "--name",
        "ci",
    )
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    secret = lines[-1]
    assert secret.startswith("sk-sg-") and len(secret) == 57
    key_id = lines[0].split()[2]
    assert key_id.startswith("key_")
    assert (workdir / "data" / "keys.sqlite3").exists()  # auth.store's default, beside the policy's cwd
    assert secret.encode() not in (workdir / "data" / "keys.sqlite3").read_bytes()

    listed = keys(workdir, "list", "--policy", "policy.yaml")
    assert listed.returncode == 0 and key_id in listed.stdout and secret not in listed.stdout
    assert secret[:10] + "…" in listed.stdout and "rpm=5" in listed.stdout

    data = keys_json(workdir, "list", "--policy", "policy.yaml", "--team", "research")["data"]
    assert [(k["id"], k["namespaces"]) for k in data] == [(key_id, {"read": ["a", "b"], "write": []})]
    assert keys_json(workdir, "list", "--policy", "policy.yaml", "--team", "ops")["data"] == []

    # A label with a terminal escape is refused by the CLI as by /admin/keys (KeyRing.create)...
    escaped = keys(workdir, "create", "--policy", "policy.yaml", "--team", "ops", "--name", "x\x1b[31mred")
    assert escaped.returncode == 1 and "'name'" in escaped.stderr and "\x1b" not in escaped.stderr
    assert keys_json(workdir, "list", "--policy", "policy.yaml", "--team", "ops")["data"] == []
    # ...and one stored before that check is listed with the escape shown, not sent to the terminal.
    ops = keys_json(workdir, "create", "--policy", "policy.yaml", "--team", "ops", "--name", "plain")
    with sqlite3.connect(workdir / "data" / "keys.sqlite3") as conn:
        conn.execute("UPDATE virtual_keys SET name = ? WHERE key_id = ?", ("x\x1b[31mred", ops["id"]))
    listed = keys(workdir, "list", "--policy", "policy.yaml", "--team", "ops")
    assert "\x1b" not in listed.stdout and "x\\x1b[31mred" in listed.stdout, listed.stdout

    rotated = keys_json(workdir, "rotate", key_id, "--policy", "policy.yaml")
    assert rotated["replaces"] == key_id and rotated["secret"] != secret and rotated["rpm"] == 5
    revoked = keys_json(workdir, "revoke", rotated["id"], "--policy", "policy.yaml")
    assert revoked["status"] == "revoked"
    statuses = {k["id"]: k["status"] for k in keys_json(workdir, "list", "--policy", "policy.yaml")["data"]}
    statuses.pop(
        next(k["id"] for k in keys_json(workdir, "list", "--policy", "policy.yaml", "--team", "ops")["data"])
    )
    assert statuses == {key_id: "revoked", rotated["id"]: "revoked"}


def test_refusals_are_one_line_and_exit_non_zero(workdir: Path) -> None:
    unknown_team = keys(workdir, "create", "--team", "sales", "--policy", "policy.yaml")
    assert unknown_team.returncode == 1
    assert "Unknown team 'sales'" in unknown_team.stderr and "research" in unknown_team.stderr
    bad_model = keys(workdir, "create", "--team", "ops", "--models", "gpt-9", "--policy", "policy.yaml")
    assert bad_model.returncode == 1 and "'gpt-9'" in bad_model.stderr
    # research may call m only: a key of it cannot be given `other` (h-teams; exit 0 before).
    wider = keys(workdir, "create", "--team", "research", "--models", "m,other", "--policy", "policy.yaml")
    assert wider.returncode == 1 and "'other' are not among the models of team 'research'" in wider.stderr
    bad_flag = keys(workdir, "create", "--team", "ops", "--expires", "soon", "--policy", "policy.yaml")
    assert bad_flag.returncode == 2 and "duration" in bad_flag.stderr
    short = keys(workdir, "create", "--team", "ops", "--budget-period", "0.5s", "--policy", "policy.yaml")
    assert short.returncode == 2 and "at least 1s" in short.stderr
    long_name = keys(workdir, "create", "--team", "ops", "--name", "n" * 201, "--policy", "policy.yaml")
    assert long_name.returncode == 1 and "'name' must be 1 to 200 characters" in long_name.stderr
    missing = keys(workdir, "revoke", "key_abcdefghijkl", "--policy", "policy.yaml")
    assert missing.returncode == 1 and "No such key" in missing.stderr
    long_grace = keys(workdir, "rotate", "key_abcdefghijkl", "--grace", "8d", "--policy", "policy.yaml")
    assert long_grace.returncode == 2 and "--grace: must be at most 1w" in long_grace.stderr


def test_keys_made_by_the_cli_work_on_a_running_gateway_and_url_mode(
    workdir: Path, gateway: ManagedProcess
) -> None:
    local = keys_json(workdir, "create", "--team", "ops", "--policy", "policy.yaml")
    assert status(gateway.url, local["secret"]) == 200  # same SQLite file, read by the gateway

    admin = {"SOPHIA_ADMIN_TOKEN": TOKEN}
    remote = keys_json(workdir, "create", "--team", "research", "--url", gateway.url, env=admin)
    assert status(gateway.url, remote["secret"]) == 200
    ids = {k["id"] for k in keys_json(workdir, "list", "--url", gateway.url, env=admin)["data"]}
    assert ids == {local["id"], remote["id"]}

    new = keys_json(workdir, "rotate", remote["id"], "--url", gateway.url, env=admin)
    assert status(gateway.url, remote["secret"]) == 401  # revoked through this gateway: at once
    assert status(gateway.url, new["secret"]) == 200
    keys_json(workdir, "revoke", new["id"], "--url", gateway.url, env=admin)
    assert status(gateway.url, new["secret"]) == 401

    refused = keys(workdir, "list", "--url", gateway.url, env={"SOPHIA_ADMIN_TOKEN": "wrong"})
    assert refused.returncode == 1 and "SOPHIA_ADMIN_TOKEN" in refused.stderr

    # --grace 1h: the old secret keeps working (as the new key, marked) until grace_until.
    graced = keys(workdir, "rotate", local["id"], "--grace", "1h", "--url", gateway.url, env=admin)
    assert graced.returncode == 0, graced.stderr
    assert "The old secret keeps working as key_" in graced.stdout and " UTC " in graced.stdout
    listed = keys_json(workdir, "list", "--policy", "policy.yaml")["data"]
    new_local = next(k for k in listed if k["grace_until"] is not None)
    assert new_local["grace_until"] - new_local["created_at"] in (3600, 3601)  # whole seconds
    table = keys(workdir, "list", "--policy", "policy.yaml").stdout
    assert f"{new_local['id']}" in table and "active (old secret until " in table
    request = urllib.request.Request(
        f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {local['secret']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["x-gateway-token-deprecated"] == "true"

    # (h-keycarry) end-grace: the old secret refused at once, the new key still active.
    ended = keys(workdir, "end-grace", new_local["id"], "--url", gateway.url, env=admin)
    assert ended.returncode == 0, ended.stderr
    assert f"The grace of key {new_local['id']} " in ended.stdout and "is refused" in ended.stdout
    assert status(gateway.url, local["secret"]) == 401
    after = next(
        k for k in keys_json(workdir, "list", "--policy", "policy.yaml")["data"] if k["id"] == new_local["id"]
    )
    assert after["status"] == "active" and after["grace_until"] < new_local["grace_until"]
    none = keys(workdir, "end-grace", local["id"], "--policy", "policy.yaml")
    assert none.returncode == 1 and "has no grace to end" in none.stderr, none.stderr


@pytest.mark.parametrize(
    ("keys_url", "says"),
    [
        (
            "postgresql://sophia:s3cret@127.0.0.1:{port}/keys",
            "cannot open the key store postgresql://sophia@127.0.0.1:",
        ),
        ("mysql://sophia:s3cret@127.0.0.1/keys", "KEYS_URL must be postgresql://"),
    ],
)
def test_a_key_store_that_cannot_open_stops_serve_in_one_line(
    workdir: Path, keys_url: str, says: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KEYS_URL": keys_url.format(port=free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--policy", "policy.yaml", "--port", "0"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sophia-gateway: cannot start: ")
    assert says in lines[0] and "s3cret" not in result.stderr


def test_expires_takes_a_lifetime_or_a_time_with_its_offset(workdir: Path) -> None:
    made = keys_json(
        workdir, "create", "--policy", "policy.yaml", "--team", "ops", "--expires", "2099-01-31T00:00:00Z"
    )
    assert made["expires_at"] == 4073500800  # 2099-01-31T00:00:00Z
    lifetime = keys_json(workdir, "create", "--policy", "policy.yaml", "--team", "ops", "--expires", "7d")
    assert lifetime["expires_at"] - lifetime["created_at"] == 7 * 86400
    for bad in ("2099-01-31T00:00:00", "2001-01-31T00:00:00Z"):  # no offset; passed
        refused = keys(workdir, "create", "--policy", "policy.yaml", "--team", "ops", "--expires", bad)
        assert refused.returncode != 0 and "--expires" in refused.stderr, refused.stderr


def audit_lines(stderr: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if '"gateway.audit"' in line]


def test_update_on_the_store_changes_settings_and_writes_its_audit_line(workdir: Path) -> None:
    """(h-keyupdate) ``keys update`` on the SQLite store: only the flags given change, ``none``
    gives a setting back to the team, and the audit line says before and after."""
    env = {"SOPHIA_LOG_FORMAT": "json"}
    key = keys_json(
        workdir, "create", "--policy", "policy.yaml", "--team", "research", "--rpm", "2", "--name", "ci"
    )
    done = keys(
        workdir,
        *("update", key["id"], "--policy", "policy.yaml", "--rpm", "5", "--budget-usd", "3", "--models", "m"),
        *("--read", "a,b", "--write-inherit", "--no-provider-files", "--expires", "30d"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Updated key {key['id']} ({key['prefix']}, team research): it is active.\n"
    (line,) = audit_lines(done.stderr)
    assert (line["action"], line["outcome"], line["actor"], line["key_id"], line["team"]) == (
        "key.update",
        "ok",
        "cli",
        key["id"],
        "research",
    )
    assert line["changes"]["rpm"] == {"before": 2, "after": 5}
    assert line["changes"]["budget_usd"] == {"before": None, "after": 3.0}
    assert line["changes"]["namespaces_read"] == {"before": None, "after": ["a", "b"]}
    assert "name" not in line["changes"] and key["secret"] not in done.stderr
    (stored,) = keys_json(workdir, "list", "--policy", "policy.yaml")["data"]
    assert (stored["rpm"], stored["budget_usd"], stored["models"], stored["name"]) == (5, 3.0, ["m"], "ci")
    assert (stored["namespaces"], stored["provider_files"]) == ({"read": ["a", "b"], "write": None}, False)
    assert stored["expires_at"] is not None

    cleared = keys_json(
        workdir,
        *("update", key["id"], "--policy", "policy.yaml", "--rpm", "none", "--budget-usd", "none"),
        *("--expires", "never", "--name", "", "--provider-files-inherit", "--read", ""),
    )
    assert (cleared["rpm"], cleared["budget_usd"], cleared["expires_at"], cleared["name"]) == (
        None,
        None,
        None,
        None,
    )
    assert (cleared["provider_files"], cleared["namespaces"]["read"], cleared["models"]) == (None, [], ["m"])

    # Refused as create refuses, in one line, exit 1; bad flags exit 2; the refusal audited.
    wider = keys(workdir, "update", key["id"], "--policy", "policy.yaml", "--models", "m,other", env=env)
    assert wider.returncode == 1 and "are not among the models of team 'research'" in wider.stderr
    (refused,) = audit_lines(wider.stderr)
    assert (refused["action"], refused["outcome"], refused["code"]) == (
        "key.update",
        "refused",
        "model_not_in_team",
    )
    nothing = keys(workdir, "update", key["id"], "--policy", "policy.yaml")
    assert nothing.returncode == 1 and "Nothing to change" in nothing.stderr
    bad = keys(workdir, "update", key["id"], "--policy", "policy.yaml", "--rpm", "lots")
    assert bad.returncode == 2 and "--rpm" in bad.stderr
    both = keys(workdir, "update", key["id"], "--policy", "policy.yaml", "--read", "a", "--read-inherit")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    team = keys(workdir, "update", key["id"], "--policy", "policy.yaml", "--team", "ops")
    assert team.returncode == 2  # no such flag: a key's team is not changed
    keys_json(workdir, "revoke", key["id"], "--policy", "policy.yaml")
    revoked = keys(workdir, "update", key["id"], "--policy", "policy.yaml", "--rpm", "9")
    assert revoked.returncode == 1 and "is revoked and cannot be changed" in revoked.stderr
    missing = keys(workdir, "update", "key_abcdefghijkl", "--policy", "policy.yaml", "--rpm", "9")
    assert missing.returncode == 1 and "No such key" in missing.stderr


def test_update_through_a_running_gateway(workdir: Path, gateway: ManagedProcess) -> None:
    """(h-keyupdate) ``keys update --url``: PATCH /admin/keys/{id} with the flags as JSON; the
    gateway answers (and audits) it, and its edge has the new settings at once."""
    admin = {"SOPHIA_ADMIN_TOKEN": TOKEN}
    key = keys_json(workdir, "create", "--team", "ops", "--url", gateway.url, env=admin)
    assert status(gateway.url, key["secret"]) == 200
    done = keys(
        workdir,
        *("update", key["id"], "--url", gateway.url, "--rpm", "7", "--models", "other", "--name", "batch"),
        *("--read", "x", "--write", "", "--provider-files"),
        env=admin,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Updated key {key['id']} ({key['prefix']}, team ops): it is active.\n"
    assert audit_lines(done.stderr) == []  # the gateway writes it
    (listed,) = keys_json(workdir, "list", "--url", gateway.url, env=admin)["data"]
    assert (listed["rpm"], listed["models"], listed["name"], listed["provider_files"]) == (
        7,
        ["other"],
        "batch",
        True,
    )
    assert listed["namespaces"] == {"read": ["x"], "write": []}
    # models narrowed to `other`: the key's model list is read again at once (key_cache_s 5 s).
    request = urllib.request.Request(
        f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key['secret']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert [m["id"] for m in orjson.loads(resp.read())["data"]] == ["other"]

    cleared = keys_json(
        workdir, "update", key["id"], "--url", gateway.url, "--models", "none", "--read-inherit", env=admin
    )
    assert (cleared["models"], cleared["namespaces"]["read"], cleared["rpm"]) == (None, None, 7)
    refused = keys(
        workdir, "update", key["id"], "--url", gateway.url, "--rpm", "5", env={"SOPHIA_ADMIN_TOKEN": "wrong"}
    )
    assert refused.returncode == 1 and "SOPHIA_ADMIN_TOKEN" in refused.stderr
    keys_json(workdir, "revoke", key["id"], "--url", gateway.url, env=admin)
    revoked = keys(workdir, "update", key["id"], "--url", gateway.url, "--rpm", "5", env=admin)
    assert revoked.returncode == 1 and "is revoked and cannot be changed" in revoked.stderr


def test_a_change_made_on_the_store_reaches_a_running_gateway_at_once_with_redis(workdir: Path) -> None:
    # A gateway that caches lookups for 300 s and a `keys revoke` / `keys update` run on the same
    # SQLite file with the same REDIS_URL: the command announces the change on the key bus, and
    # the gateway refuses the key at once (before: it served it from its cache for 300 s).
    import redis

    from tests.e2e.cache_support import shared_redis_url, unique

    (workdir / "policy.yaml").write_text(POLICY.replace("auth:\n", "auth:\n  key_cache_s: 300\n"))
    url, private = shared_redis_url()
    prefix = f"test:{unique('bus')}:"
    env = {"REDIS_URL": url, "SOPHIA_KEY_BUS_PREFIX": prefix}
    proc = start(
        ["serve", "--policy", "policy.yaml", "--port", "0"], cwd=str(workdir), env={**env, "KEYS_URL": ""}
    )
    try:
        with redis.Redis.from_url(url) as client:  # the gateway's subscription is made
            deadline = time.monotonic() + 20
            while client.pubsub_numsub(prefix + "changes")[0][1] < 1:
                assert time.monotonic() < deadline, "the gateway did not subscribe"
                time.sleep(0.02)
        made = keys_json(workdir, "create", "--team", "ops", "--policy", "policy.yaml", env=env)
        assert status(proc.url, made["secret"]) == 200  # cached for 300 s
        result = keys(workdir, "revoke", made["id"], "--policy", "policy.yaml", env=env)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 20
        while status(proc.url, made["secret"]) != 401:
            assert time.monotonic() < deadline, "the gateway still serves the revoked key"
            time.sleep(0.02)
    finally:
        proc.stop()
        if private is not None:
            private.close()
