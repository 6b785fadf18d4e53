"""The audit trail (``gateway.audit``) of a real gateway process and of the ``keys`` command:
every state-changing admin action, made or refused, is one line with who (the credential), from
where (the client address, through a trusted proxy), the request id and the target; never a
secret or a token. The gateway runs with ``SOPHIA_ACCESS_LOG=0`` and ``SOPHIA_LOG_LEVEL=WARNING``:
neither drops an audit line."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.testing.process import ManagedProcess, start

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "audit-admin-token-current-0123456789"
PREVIOUS = "audit-admin-token-previous-9876543210"
PROXY_CLIENT = "203.0.113.7"  # named by X-Forwarded-For, the peer (127.0.0.1) a trusted proxy
POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
auth:
  teams:
    research: {models: [m], rpm: 60}
"""


def call(
    url: str, method: str, path: str, body: Any = None, token: str | None = TOKEN, rid: str = ""
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Forwarded-For": PROXY_CLIENT}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if rid:
        headers["X-Request-Id"] = rid
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def keys_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full_env.pop("KEYS_URL", None)
    full_env.pop("SOPHIA_ADMIN_TOKEN", None)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def audit_lines(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.splitlines():
        if '"gateway.audit"' in line:
            lines.append(orjson.loads(line))
    return lines


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


@pytest.fixture
def gateway(workdir: Path) -> Iterator[ManagedProcess]:
    proc = start(
        ["serve", "--policy", "policy.yaml", "--port", "0"],
        cwd=str(workdir),
        env={
            "SOPHIA_ADMIN_TOKEN": TOKEN,
            "SOPHIA_ADMIN_TOKEN_PREVIOUS": PREVIOUS,
            "SOPHIA_TRUSTED_PROXIES": "127.0.0.1/32",
            "SOPHIA_ACCESS_LOG": "0",
            "SOPHIA_LOG_LEVEL": "WARNING",
            "SOPHIA_LOG_FORMAT": "json",
            "KEYS_URL": "",
        },
    )
    try:
        yield proc
    finally:
        proc.stop()


def only(lines: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [line for line in lines if all(line.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, lines)
    return found[0]


def test_every_key_action_over_http_and_the_cli_url_path_is_audited(
    gateway: ManagedProcess, workdir: Path
) -> None:
    url = gateway.url
    status, created = call(
        url,
        "POST",
        "/admin/keys",
        {"team": "research", "rpm": 5, "models": ["m"], "namespaces": {"read": ["docs"]}, "name": "ci"},
        rid="audit-create",
    )
    assert status == 201, created
    key_id = created["id"]
    status, rotated = call(
        url, "POST", f"/admin/keys/{key_id}/rotate", {"grace_s": 3600}, token=PREVIOUS, rid="audit-rotate"
    )
    assert status == 201, rotated
    new_id = rotated["id"]
    assert call(url, "DELETE", f"/admin/keys/{new_id}/grace", rid="audit-grace")[0] == 200
    assert call(url, "DELETE", f"/admin/keys/{new_id}", rid="audit-revoke")[0] == 200
    # Refused: a wrong token, a body that does not validate, a key that does not exist.
    assert (
        call(url, "POST", "/admin/keys", {"team": "research"}, token="wrong", rid="audit-bad-token")[0] == 401
    )
    assert call(url, "POST", "/admin/keys", {"team": "research", "rpm": "5"}, rid="audit-bad-body")[0] == 400
    assert call(url, "DELETE", "/admin/keys/key_doesnotexist", rid="audit-unknown")[0] == 404
    # The CLI's --url path: the gateway writes the line (its client is the CLI's address).
    cli = keys_cli(workdir, "create", "--url", url, "--team", "research", "--json", SOPHIA_ADMIN_TOKEN=TOKEN)
    assert cli.returncode == 0, cli.stderr
    cli_key = orjson.loads(cli.stdout)
    assert audit_lines(cli.stderr) == []  # with --url the gateway writes it, not the CLI too

    wait_for(lambda: len(audit_lines(gateway.stderr)) >= 8)
    assert gateway.stop() == 0
    lines = audit_lines(gateway.stderr)
    assert len(lines) == 8, lines
    for line in lines:
        assert line["msg"] == "audit" and line["level"] == "info"

    create = only(lines, request_id="audit-create")
    assert create["action"] == "key.create" and create["outcome"] == "ok" and create["actor"] == "admin"
    assert create["client"] == PROXY_CLIENT
    assert create["key_id"] == key_id and create["team"] == "research"
    assert (create["rpm"], create["models"], create["name"]) == (5, ["m"], "ci")
    assert create["namespaces_read"] == ["docs"] and create["namespaces_write"] is None

    rotate = only(lines, request_id="audit-rotate")
    assert (rotate["action"], rotate["outcome"], rotate["actor"]) == ("key.rotate", "ok", "admin_previous")
    assert (rotate["key_id"], rotate["new_key_id"], rotate["team"]) == (key_id, new_id, "research")
    assert rotate["grace_s"] == 3600 and rotate["grace_until"] == rotated["grace_until"]

    grace = only(lines, request_id="audit-grace")
    assert (grace["action"], grace["outcome"], grace["actor"], grace["key_id"]) == (
        "key.end_grace",
        "ok",
        "admin",
        new_id,
    )
    revoke = only(lines, request_id="audit-revoke")
    assert (revoke["action"], revoke["outcome"], revoke["key_id"], revoke["team"]) == (
        "key.revoke",
        "ok",
        new_id,
        "research",
    )
    assert isinstance(revoke["revoked_at"], int)

    bad_token = only(lines, request_id="audit-bad-token")
    assert (bad_token["action"], bad_token["outcome"], bad_token["actor"], bad_token["status"]) == (
        "key.create",
        "refused",
        "unauthenticated",
        401,
    )
    assert bad_token["client"] == PROXY_CLIENT and "team" not in bad_token
    bad_body = only(lines, request_id="audit-bad-body")
    assert (bad_body["outcome"], bad_body["actor"], bad_body["status"]) == ("refused", "admin", 400)
    assert bad_body["code"] == "invalid_request_error"
    unknown = only(lines, request_id="audit-unknown")
    assert (unknown["action"], unknown["outcome"], unknown["status"], unknown["key_id"]) == (
        "key.revoke",
        "refused",
        404,
        "key_doesnotexist",
    )

    by_cli = only(lines, key_id=cli_key["id"])
    assert (by_cli["action"], by_cli["outcome"], by_cli["actor"], by_cli["client"]) == (
        "key.create",
        "ok",
        "admin",
        "127.0.0.1",  # no X-Forwarded-For from the CLI: the trusted peer itself
    )

    # Never a secret, a token or a hash of a secret.
    for secret in (created["secret"], rotated["secret"], cli_key["secret"], TOKEN, PREVIOUS, "wrong"):
        assert secret not in gateway.stderr
    for line in lines:
        assert not {"secret", "hash", "secret_hash", "prefix"} & line.keys()


def test_the_direct_store_cli_writes_its_own_audit_line(workdir: Path) -> None:
    env = {"SOPHIA_LOG_LEVEL": "ERROR", "SOPHIA_LOG_FORMAT": "json"}
    created = keys_cli(
        workdir, "create", "--policy", "policy.yaml", "--team", "research", "--tpm", "100", "--json", **env
    )
    assert created.returncode == 0, created.stderr
    key = orjson.loads(created.stdout)
    rotated = keys_cli(
        workdir, "rotate", key["id"], "--policy", "policy.yaml", "--grace", "1h", "--json", **env
    )
    assert rotated.returncode == 0, rotated.stderr
    new = orjson.loads(rotated.stdout)
    ended = keys_cli(workdir, "end-grace", new["id"], "--policy", "policy.yaml", **env)
    revoked = keys_cli(workdir, "revoke", new["id"], "--policy", "policy.yaml", **env)
    unknown = keys_cli(workdir, "revoke", "key_nosuchkey", "--policy", "policy.yaml", **env)
    assert ended.returncode == revoked.returncode == 0 and unknown.returncode == 1
    listed = keys_cli(workdir, "list", "--policy", "policy.yaml", **env)
    assert listed.returncode == 0 and audit_lines(listed.stderr) == []  # a listing changes nothing

    user = getpass.getuser()
    (line,) = audit_lines(created.stderr)
    assert (line["action"], line["outcome"], line["actor"], line["os_user"]) == (
        "key.create",
        "ok",
        "cli",
        user,
    )
    assert (line["key_id"], line["team"], line["tpm"], line["rpm"]) == (key["id"], "research", 100, None)
    (line,) = audit_lines(rotated.stderr)
    assert (line["action"], line["key_id"], line["new_key_id"], line["grace_s"]) == (
        "key.rotate",
        key["id"],
        new["id"],
        3600,
    )
    (line,) = audit_lines(ended.stderr)
    assert (line["action"], line["outcome"], line["key_id"]) == ("key.end_grace", "ok", new["id"])
    (line,) = audit_lines(revoked.stderr)
    assert (line["action"], line["outcome"], line["key_id"], line["team"]) == (
        "key.revoke",
        "ok",
        new["id"],
        "research",
    )
    # The audit line is written (its log's writer thread waited for) before the command's own
    # message: each on a line of its own, in that order.
    assert unknown.stderr.splitlines()[-1] == "sophia-gateway keys: No such key.", unknown.stderr
    (line,) = audit_lines(unknown.stderr)
    assert (line["action"], line["outcome"], line["key_id"], line["code"]) == (
        "key.revoke",
        "refused",
        "key_nosuchkey",
        "key_not_found",
    )
    for result in (created, rotated, ended, revoked, unknown):
        assert key["secret"] not in result.stderr and new["secret"] not in result.stderr

    # The text format: the same fields as key=value.
    text = keys_cli(
        workdir, "create", "--policy", "policy.yaml", "--team", "research", SOPHIA_LOG_FORMAT="text"
    )
    assert text.returncode == 0, text.stderr
    (audit_text,) = [ln for ln in text.stderr.splitlines() if "gateway.audit" in ln]
    assert " gateway.audit: audit action=key.create outcome=ok actor=cli " in audit_text
    assert text.stdout.splitlines()[-1] not in text.stderr  # the secret, printed once on stdout


def test_policy_reloads_by_post_and_by_file_edit_are_audited(gateway: ManagedProcess, workdir: Path) -> None:
    url = gateway.url
    path = workdir / "policy.yaml"
    status, body = call(url, "POST", "/admin/policy/reload", rid="audit-reload-same")
    assert status == 200 and body["policy"]["result"] == "unchanged", body
    version = body["policy"]["version"]
    status, status_body = call(url, "GET", "/admin/policy")
    assert status == 200 and status_body["watching"] is True

    # A file edit that applies, then one that does not validate.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(POLICY.replace("rpm: 60", "rpm: 61"))
    os.replace(tmp, path)

    def file_lines(result: str) -> list[dict[str, Any]]:
        return [
            line
            for line in audit_lines(gateway.stderr)
            if line["actor"] == "file" and line["result"] == result
        ]

    wait_for(lambda: bool(file_lines("applied")))
    applied = file_lines("applied")[0]
    assert applied["action"] == "policy.reload" and applied["outcome"] == "ok"
    assert applied["path"] == "policy.yaml" and applied["version_before"] == version
    new_version = applied["version_after"]
    assert new_version != version and "client" not in applied

    tmp.write_text(POLICY.replace("provider: a", "provider: nowhere"))
    os.replace(tmp, path)
    wait_for(lambda: bool(file_lines("invalid")))
    invalid = file_lines("invalid")[0]
    assert (invalid["outcome"], invalid["code"]) == ("refused", "policy_invalid")
    assert invalid["version_before"] == invalid["version_after"] == new_version and invalid["problems"] >= 1

    status, body = call(url, "POST", "/admin/policy/reload", token=PREVIOUS, rid="audit-reload-bad")
    assert status == 422, body
    assert gateway.stop() == 0
    lines = audit_lines(gateway.stderr)
    same = only(lines, request_id="audit-reload-same")
    assert (same["action"], same["outcome"], same["actor"], same["client"]) == (
        "policy.reload",
        "ok",
        "admin",
        PROXY_CLIENT,
    )
    assert same["version_before"] == same["version_after"] == version and same["result"] == "unchanged"
    bad = only(lines, request_id="audit-reload-bad")
    assert (bad["outcome"], bad["actor"], bad["status"], bad["code"], bad["result"]) == (
        "refused",
        "admin_previous",
        422,
        "policy_invalid",
        "invalid",
    )
    assert TOKEN not in gateway.stderr and PREVIOUS not in gateway.stderr
