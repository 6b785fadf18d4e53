"""A stranger's probes of key management and limits (h-probe5): ``PATCH /admin/keys`` and ``keys
update`` with hostile input, the key bus under a junk or flooding publisher, a team's shared
rates and budgets on the real Redis. Each test names what it found; each failed before its fix.

In-process gateways on loopback ports (aiohttp's test server), the official openai SDK as the
app, the real SQLite key store and the real Redis at ``REDIS_URL`` under prefixes of the test's
own; the CLI as a subprocess.

- ``test_a_secret_pasted_as_a_key_id_in_an_update_is_not_logged``: ``PATCH /admin/keys/<secret>``
  wrote the secret into the audit line (h-probe3 fixed revoke, rotate and end-grace, not update).
- ``test_the_cli_never_logs_a_secret_given_as_a_key_id``: ``keys update|revoke|rotate|end-grace``
  on the store wrote it into their audit lines too.
- ``test_updating_a_key_whose_team_left_the_policy_is_not_a_500``: a ``KeyError`` (500) on the
  API, a traceback from ``keys update`` on the store.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys as app_keys
from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "probe5-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
REPLY = {
    "id": "c",
    "object": "chat.completion",
    "model": "ma",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def policy_text(store: Path, teams: str = "research: {models: [m]}\n    ops: {}") -> str:
    return f"""
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
  other: {{deployments: [{{provider: a, model: oa}}]}}
memory: {{enabled: false}}
auth:
  key_cache_s: 300
  store: {store}
  teams:
    {teams}
"""


@dataclass
class Gateway:
    app: web.Application
    client: TestClient


@asynccontextmanager
async def serving(tmp_path: Path, teams: str | None = None, **settings: Any) -> AsyncIterator[Gateway]:
    text = (
        policy_text(tmp_path / "keys.sqlite3")
        if teams is None
        else policy_text(tmp_path / "keys.sqlite3", teams)
    )
    app = build_app(
        Settings(admin_token=TOKEN, **{"access_log": False, **settings}),
        parse_policy(text),
        {},
        transports={"a": MockTransport(lambda request: MockResponse.json(REPLY))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Gateway(app, client)


async def create(gw: Gateway, **body: Any) -> dict[str, Any]:
    resp = await gw.client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def test_a_secret_pasted_as_a_key_id_in_an_update_is_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    async with serving(tmp_path) as gw:
        made = await create(gw, team="ops")
        secret = made["secret"]
        resp = await gw.client.patch(f"/admin/keys/{secret}", json={"rpm": 3}, headers=ADMIN)
        assert resp.status == 404, await resp.text()
        resp = await gw.client.patch(f"/admin/keys/{made['id']}", json={"rpm": 3}, headers=ADMIN)
        assert resp.status == 200
    audits = [r.fields for r in caplog.records if r.name == "gateway.audit"]  # type: ignore[attr-defined]
    assert [(a["action"], a["outcome"]) for a in audits] == [
        ("key.create", "ok"),
        ("key.update", "refused"),
        ("key.update", "ok"),
    ]
    assert audits[1]["key_id"] == secret[:10] + "\u2026"  # as listings show a key
    assert audits[2]["key_id"] == made["id"]
    assert all(secret[10:] not in repr(r.__dict__) for r in caplog.records)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("KEYS_URL", "REDIS_URL"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", *args, "--policy", "policy.yaml"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_never_logs_a_secret_given_as_a_key_id(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(policy_text(tmp_path / "keys.sqlite3"))
    made = cli(tmp_path, "create", "--team", "ops", "--json")
    assert made.returncode == 0, made.stderr
    secret = orjson.loads(made.stdout)["secret"]
    for command in (
        ["update", secret, "--rpm", "3"],
        ["revoke", secret],
        ["rotate", secret],
        ["end-grace", secret],
    ):
        result = cli(tmp_path, *command)
        assert result.returncode == 1, result.stderr  # no such key
        (line,) = [orjson.loads(x) for x in result.stderr.splitlines() if '"gateway.audit"' in x]
        assert (line["outcome"], line["key_id"]) == ("refused", secret[:10] + "\u2026")
        assert secret[10:] not in result.stderr + result.stdout


async def test_updating_a_key_whose_team_left_the_policy_is_not_a_500(tmp_path: Path) -> None:
    async with serving(tmp_path) as gw:
        made = await create(gw, team="research", models=["m"])
        gone = parse_policy(policy_text(tmp_path / "keys.sqlite3", "ops: {}"))
        gw.app[app_keys.KEY_ADMIN].reconfigure(gone.auth.teams, 300, list(gone.models))
        for body in ({"rpm": 3}, {"models": ["m", "other"]}, {"expires": "1d"}):
            resp = await gw.client.patch(f"/admin/keys/{made['id']}", json=body, headers=ADMIN)
            assert resp.status == 200, await resp.text()
        changed = await resp.json()
        assert (changed["rpm"], changed["models"], changed["team"]) == (3, ["m", "other"], "research")
        resp = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {made['secret']}"})
        assert resp.status == 401  # its team is gone: still refused
        # An unknown model is still refused (the one check a gone team leaves).
        resp = await gw.client.patch(f"/admin/keys/{made['id']}", json={"models": ["nope"]}, headers=ADMIN)
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "model_not_found"

    # The CLI on the store: the same (a traceback before).
    (tmp_path / "policy.yaml").write_text(policy_text(tmp_path / "keys.sqlite3", "ops: {}"))
    result = cli(tmp_path, "update", made["id"], "--tpm", "50", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["tpm"] == 50
