"""A team's shared budget (``auth.teams.<team>.shared_budget_usd``, h-teambudget) over real HTTP on
loopback, in process: every key of the team spends one budget, a new or rotated key included,
next to each key's own; a team without it behaves as before (its ``budget_usd`` is per key)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-team-budget-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# One prompt token at $1 a token (the fake provider reports 1 prompt, 1 completion token): $1 a call.
CHAT = {"model": "priced", "messages": [{"role": "user", "content": "hi"}]}


def policy_text(store: Path) -> str:
    return f"""
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  priced: {{deployments: [{{provider: a, model: ma, price: {{input_per_mtok: 1000000, output_per_mtok: 0}}}}]}}
memory: {{enabled: false}}
cache: {{enabled: false}}
auth:
  store: {store}
  teams:
    shared: {{shared_budget_usd: 2, budget_period: 1d}}
    perkey: {{budget_usd: 2, budget_period: 1d}}
"""


def completion(request: object) -> MockResponse:
    return MockResponse.json(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "ma",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN),
        parse_policy(policy_text(tmp_path / "keys.sqlite3")),
        {},
        transports={"a": MockTransport(completion)},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def create(client: TestClient, **settings: Any) -> dict[str, Any]:
    resp = await client.post("/admin/keys", json=settings, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json()
    return created


async def chat(client: TestClient, secret: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    body: dict[str, Any] = await resp.json()
    return resp.status, body


def team_spent(status: int, body: dict[str, Any]) -> None:
    assert status == 429, body
    error = body["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "the shared budget of team 'shared' of $2" in error["message"], error


async def test_every_key_of_the_team_spends_one_shared_budget(client: TestClient) -> None:
    a = await create(client, team="shared")
    b = await create(client, team="shared", budget_usd=10)  # its own budget has room throughout
    assert (await chat(client, a["secret"]))[0] == 200  # $1 of the team's $2
    assert (await chat(client, b["secret"]))[0] == 200  # $2: the team's budget is spent
    team_spent(*await chat(client, a["secret"]))
    team_spent(*await chat(client, b["secret"]))
    # A new key of the team starts with the team's spend, and so does a rotated one.
    team_spent(*await chat(client, (await create(client, team="shared"))["secret"]))
    rotated = await (await client.post(f"/admin/keys/{a['id']}/rotate", headers=ADMIN)).json()
    team_spent(*await chat(client, rotated["secret"]))
    # A key's own budget spent first says so (the key's, not the team's).
    own = await create(client, team="shared", budget_usd=0)
    status, body = await chat(client, own["secret"])
    assert status == 429 and "this key's budget of $0" in body["error"]["message"], body

    usage = await (await client.get("/admin/usage", headers=ADMIN)).json()
    assert usage["teams"] == [
        {"team": "shared", "shared_budget_usd": 2.0, "budget_period_s": 86400.0, "spent_usd": 2.0}
    ]
    refusals = {r["key"]: r["refusals"] for r in usage["data"]}
    assert refusals[a["id"]] == {"team_budget": 1} and refusals[own["id"]] == {"budget": 1}
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_spend_usd_total{team="shared"} 2.0' in metrics
    assert 'gateway_refusals_total{reason="team_budget",team="shared"} 4.0' in metrics


async def test_a_teams_budget_usd_stays_per_key(client: TestClient) -> None:
    # Without shared_budget_usd, the team's budget_usd is each key's: two keys spend $2 each.
    first, second = await create(client, team="perkey"), await create(client, team="perkey")
    for key in (first, second):
        for _ in range(2):
            assert (await chat(client, key["secret"]))[0] == 200
        status, body = await chat(client, key["secret"])
        assert status == 429 and "this key's budget of $2" in body["error"]["message"], body
    usage = await (await client.get("/admin/usage", headers=ADMIN)).json()
    assert usage["teams"] == [
        {"team": "shared", "shared_budget_usd": 2.0, "budget_period_s": 86400.0, "spent_usd": 0.0}
    ]
    assert (await (await client.get("/admin/usage?team=perkey", headers=ADMIN)).json())["teams"] == []
