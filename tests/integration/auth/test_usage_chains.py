"""(h-usage2) ``/admin/usage?by=key`` sums a rotated key's chain of rotations into one row.

A rotation makes a new key id counted as the chain's first key (h-keycarry: the limits and the
budget carry on), but ``by=key`` gave each id of the chain its own row, so "what did this key
spend this month" had to be added up by hand over ids only ``limits_id`` in the store links. Now
one row per chain, named by its newest key (the store's), with ``keys`` the ids it holds; ``key=``
any id of the chain asks for the whole chain there. ``by=day`` and ``by=team`` are unchanged.

A whole gateway over loopback (keys in SQLite, the openai SDK as the client, the fake OpenAI
provider on its own port), with the in-process limiter and with the Redis one (the real Redis)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.redis_limits import RedisLimiter
from gateway.policy.loader import load_policy_with_digest
from gateway.settings import Settings
from gateway.testing.fake_provider import FakeConfig
from gateway.testing.fake_provider import build_app as fake_app

TOKEN = "admin-token-for-usage-chain-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  fake: {{kind: openai, base_url: "{fake}/v1"}}
models:
  chat:
    deployments: [{{provider: fake, model: gpt-4o, price: {{input_per_mtok: 1000, output_per_mtok: 3000}}}}]
cache: {{enabled: false}}
memory: {{enabled: false}}
auth: {{store: {store}, teams: {{blue: {{}}, red: {{}}}}}}
"""


@pytest.fixture(params=["local", "redis"])
async def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    fake = TestServer(fake_app(FakeConfig(port=0, reply="one two three")), host="127.0.0.1")
    await fake.start_server()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        POLICY.format(fake=str(fake.make_url("")).rstrip("/"), store=tmp_path / "keys.sqlite3")
    )
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        app[keys.LIMITS].limiter = RedisLimiter(url, prefix=request.getfixturevalue("redis_prefix"))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()
    await fake.close()


async def _calls(client: TestClient, secret: str, n: int) -> tuple[int, int]:
    """``n`` chat calls with ``secret``: the tokens in and out the client saw."""
    sdk = openai.AsyncOpenAI(api_key=secret, base_url=str(client.make_url("/v1")), max_retries=0)
    tokens_in = tokens_out = 0
    for i in range(n):
        answer = await sdk.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"q{i}"}]
        )
        assert answer.usage is not None
        tokens_in += answer.usage.prompt_tokens
        tokens_out += answer.usage.completion_tokens
    await sdk.close()
    return tokens_in, tokens_out


async def _usage(client: TestClient, **params: str) -> dict[str, Any]:
    await client.app[keys.LIMITS].drain()  # type: ignore[index]
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    answer = await client.get("/admin/usage", params={"month": month, **params}, headers=ADMIN)
    assert answer.status == 200, await answer.text()
    body: dict[str, Any] = await answer.json()
    return body


async def _made(client: TestClient, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    made = await client.post(path, json=body, headers=ADMIN)
    assert made.status == 201, await made.text()
    key: dict[str, Any] = await made.json()
    return key


async def test_a_rotated_keys_chain_is_one_row_named_by_its_newest_key(gateway: TestClient) -> None:
    first = await _made(gateway, "/admin/keys", {"team": "blue", "rpm": 1000})
    plain = await _made(gateway, "/admin/keys", {"team": "blue"})  # never rotated, no limits
    other = await _made(gateway, "/admin/keys", {"team": "red"})
    seen = [await _calls(gateway, first["secret"], 2)]
    second = await _made(gateway, f"/admin/keys/{first['id']}/rotate")
    seen.append(await _calls(gateway, second["secret"], 3))
    third = await _made(gateway, f"/admin/keys/{second['id']}/rotate")
    seen.append(await _calls(gateway, third["secret"], 1))
    plain_seen = await _calls(gateway, plain["secret"], 1)
    await _calls(gateway, other["secret"], 1)
    chain = [first["id"], second["id"], third["id"]]

    by_day = await _usage(gateway)  # unchanged: each key id its own rows
    assert {row["key"] for row in by_day["data"]} == {*chain, plain["id"], other["id"]}

    by_key = await _usage(gateway, by="key")
    rows = {row["key"]: row for row in by_key["data"]}
    assert set(rows) == {third["id"], plain["id"], other["id"]}, by_key  # before: five rows
    row = rows[third["id"]]
    assert (row["team"], row["keys"], row["requests"]) == ("blue", chain, 6), row
    assert (row["tokens_in"], row["tokens_out"]) == tuple(map(sum, zip(*seen, strict=True)))
    assert sum(r["cost_usd"] for r in by_day["data"] if r["key"] in chain) == pytest.approx(row["cost_usd"])
    assert rows[plain["id"]]["keys"] == [plain["id"]]
    assert (rows[plain["id"]]["tokens_in"], rows[plain["id"]]["tokens_out"]) == plain_seen
    assert by_key["total"] == by_day["total"]

    # ``key=`` any id of the chain: the chain's row, the asked id in the answer.
    for asked in chain:
        one = await _usage(gateway, by="key", key=asked)
        assert one["key"] == asked
        assert [(r["key"], r["keys"], r["requests"]) for r in one["data"]] == [(third["id"], chain, 6)], one
    # By day, ``key=`` is that id's own rows, as before.
    (own,) = (await _usage(gateway, key=second["id"]))["data"]
    assert (own["key"], own["requests"]) == (second["id"], 3)

    # Rotated again and not used yet: the chain is named by its newest key all the same.
    fourth = await _made(gateway, f"/admin/keys/{third['id']}/rotate")
    rows = {row["key"]: row for row in (await _usage(gateway, by="key"))["data"]}
    assert (rows[fourth["id"]]["keys"], rows[fourth["id"]]["requests"]) == (chain, 6)
    assert third["id"] not in rows
    # By team: the chain's requests once, with the other key of the team.
    teams = {row["team"]: row for row in (await _usage(gateway, by="team"))["data"]}
    assert teams["blue"]["requests"] == 6 + 1
