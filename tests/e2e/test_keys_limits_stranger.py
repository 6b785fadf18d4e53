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
- ``test_an_announced_change_never_turns_a_working_key_into_a_503``: a changed key's lookup was
  dropped and counted against the unknown-key allowance (a 503 while it was used up).
- ``test_a_flood_of_key_bus_messages_costs_a_scan_per_batch_and_breaks_nothing``: a scan of the
  whole key cache per message on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys as app_keys
from gateway.app import build_app
from gateway.auth.keyring import KeyRing, KeySettings
from gateway.auth.records import new_key_id, new_secret
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.errors import KeyStoreUnavailable
from gateway.policy.loader import parse_policy
from gateway.policy.model import Team
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "probe5-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HELLO: Any = [{"role": "user", "content": "hi"}]
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


async def test_an_announced_change_never_turns_a_working_key_into_a_503(tmp_path: Path) -> None:
    """A key change (from the key bus, or made here) dropped the key's cached lookup outright, so
    its next lookup counted as an unknown key's against the lookup allowance: while unknown
    secrets (the flood the allowance is for) had used it up, a working key that was updated, or
    named by any message on the bus, answered 503 ``key_store_unavailable``. Now it is looked up
    again as a key found before (outside the allowance), as after a policy reload."""
    store = SQLiteKeyStore(str(tmp_path / "keys.sqlite3"))
    await store.start()
    try:
        ring = KeyRing(store, {"ops": Team()}, cache_s=300.0, lookup_burst=3, lookups_per_s=0.0)
        secret, key = await ring.create("ops", KeySettings(rpm=2))
        assert await ring.authenticate(secret) is not None
        for _ in range(2):  # unknown secrets of the current form use the allowance up
            assert await ring.authenticate(new_secret()) is None
        with pytest.raises(KeyStoreUnavailable):
            await ring.authenticate(new_secret())
        assert ring.forget_keys({key.key_id}) == 1  # the bus's message
        caller = await ring.authenticate(secret)
        assert caller is not None and caller.rpm == 2
        await ring.update(key.key_id, KeySettings(rpm=5), ["rpm"])  # a change made here
        caller = await ring.authenticate(secret)
        assert caller is not None and caller.rpm == 5
        await ring.revoke(key.key_id)  # a revoked key is read again and refused, not served
        assert await ring.authenticate(secret) is None
        assert ring.forget_keys({key.key_id}) == 1  # its cached refusal
        assert await ring.authenticate(secret) is None
    finally:
        await store.close()


async def test_a_flood_of_key_bus_messages_costs_a_scan_per_batch_and_breaks_nothing(
    tmp_path: Path,
) -> None:
    """Each message on the key bus scanned the whole key cache (up to 11,000 entries, ~0.7 ms):
    anyone able to ``PUBLISH`` on the gateways' Redis stalled every process of every replica with
    a few thousand messages a second. Now the messages already received are taken together and the
    cache scanned once for all their keys; junk (huge, malformed, wrong types) is ignored and
    the subscriber stays up; the key named is read from the store once after the flood."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"probe5:{uuid.uuid4().hex}:"
    async with serving(tmp_path, redis_url=url, key_bus_prefix=prefix) as gw:
        made = await create(gw, team="ops")
        bus = gw.app[app_keys.KEY_BUS]
        await wait_for(lambda: bus.subscribed)
        app = openai.AsyncOpenAI(
            api_key=made["secret"], base_url=str(gw.client.make_url("/v1")), max_retries=0, timeout=10
        )
        await app.chat.completions.create(model="m", messages=HELLO)  # cached now
        received, scans = bus.received, bus.scans
        junk = [
            b"x" * 1_000_000,
            b"{not json",
            b'{"key_id": 5, "change": "revoke"}',
            b'{"key_id": ["key_aaaaaaaaaaaa"], "change": "revoke"}',
            b'{"key_id": "key_aaaaaaaaaaaa", "change": "explode"}',
            b'{"key_id": "../../etc", "change": "revoke"}',
            b"[]",
            b"null",
        ]
        flood = [orjson.dumps({"key_id": made["id"], "change": "update"})] * 3000
        others = [orjson.dumps({"key_id": new_key_id(), "change": "revoke"}) for _ in range(1000)]
        # A plain client, blocking this loop while it publishes: every message is sent before
        # the subscriber (on this loop) reads any.
        publisher = redis.Redis.from_url(url)
        try:
            pipe = publisher.pipeline(transaction=False)
            for message in [*junk, *flood, *others]:
                pipe.publish(prefix + "changes", message)
            assert all(n >= 1 for n in pipe.execute())
        finally:
            publisher.close()
        await wait_for(lambda: bus.received >= received + 4000)
        assert bus.received == received + 4000  # the junk was ignored
        assert bus.scans - scans <= 40, bus.scans - scans  # before: 4000 scans
        assert bus.subscribed
        reply = await app.chat.completions.with_raw_response.create(model="m", messages=HELLO)
        assert reply.http_response.status_code == 200
        await app.close()


async def wait_for(check: Callable[[], bool], deadline_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not check():
        assert loop.time() < end, "not within the deadline"
        await asyncio.sleep(0.01)
