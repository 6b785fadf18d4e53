"""A team's shared rates (``auth.teams.<team>.shared_rpm`` / ``shared_tpm``, h-teamrate) over real
HTTP on loopback, in process, with the openai SDK as the client: every key of the team is counted
in one window next to its own, a new key included; a team without the fields behaves as before
(its ``rpm`` is each key's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-team-rate-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HELLO: Any = [{"role": "user", "content": "hi"}]


def policy_text(store: Path) -> str:
    return f"""
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
memory: {{enabled: false}}
cache: {{enabled: false}}
auth:
  store: {store}
  teams:
    shared: {{rpm: 10, shared_rpm: 3}}
    tokens: {{shared_tpm: 600}}
    perkey: {{rpm: 2}}
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


async def sdk(client: TestClient, team: str) -> tuple[str, openai.AsyncOpenAI]:
    resp = await client.post("/admin/keys", json={"team": team}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    base = str(client.make_url("/v1"))
    return created["id"], openai.AsyncOpenAI(
        api_key=created["secret"], base_url=base, max_retries=0, timeout=10
    )


async def test_the_keys_of_a_team_share_its_rpm_and_are_told_it_is_the_teams(client: TestClient) -> None:
    (a_id, a), (_, b) = await sdk(client, "shared"), await sdk(client, "shared")
    first = await a.chat.completions.with_raw_response.create(model="m", messages=HELLO)
    # The headers show the tighter window: the team's 3 (2 left), not the key's 10 (9 left).
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    await b.chat.completions.create(model="m", messages=HELLO)
    await a.chat.completions.create(model="m", messages=HELLO)
    for refused_client in (b, a, (await sdk(client, "shared"))[1]):  # a new key too
        with pytest.raises(openai.RateLimitError) as caught:
            await refused_client.chat.completions.create(model="m", messages=HELLO)
        error = caught.value
        body: Any = error.body
        assert (body["type"], body["code"]) == ("requests", "rate_limit_exceeded")
        assert (
            "Rate limit reached for team 'shared' (its keys' shared limit) on requests per min: limit 3"
            in (body["message"])
        )
        assert 0 < int(error.response.headers["retry-after"]) <= 60
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert error.response.headers["x-ratelimit-limit-requests"] == "3"
    usage = await (await client.get("/admin/usage", headers=ADMIN)).json()
    assert {r["key"]: r["refusals"] for r in usage["data"]}[a_id] == {"team_requests": 1}
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_refusals_total{reason="team_requests",team="shared"} 3.0' in metrics


async def test_a_teams_shared_tpm_refuses_as_the_teams_tokens(client: TestClient) -> None:
    (_, a), (_, b) = await sdk(client, "tokens"), await sdk(client, "tokens")
    await a.chat.completions.create(model="m", messages=HELLO, max_tokens=200)  # settles at 2
    await b.chat.completions.create(model="m", messages=HELLO, max_tokens=500)  # settles at 2
    with pytest.raises(openai.RateLimitError) as caught:  # 1 + 597 reserved: 602 of 600
        await a.chat.completions.create(model="m", messages=HELLO, max_tokens=597)
    body: Any = caught.value.body
    assert body["type"] == "tokens"
    assert "for team 'tokens' (its keys' shared limit) on tokens per min: limit 600" in body["message"]
    # More than the team's whole TPM: never fits, said so without a retry.
    with pytest.raises(openai.RateLimitError) as too_large:
        await b.chat.completions.create(model="m", messages=HELLO, max_tokens=700)
    large: Any = too_large.value.body
    assert "Request too large for team 'tokens'" in large["message"]
    assert too_large.value.response.headers["x-should-retry"] == "false"


async def test_a_team_without_shared_rates_limits_each_key_alone(client: TestClient) -> None:
    for _ in range(3):  # three keys of rpm 2: six requests, each key's own window
        _, key = await sdk(client, "perkey")
        for _ in range(2):
            reply = await key.chat.completions.with_raw_response.create(model="m", messages=HELLO)
            assert reply.headers["x-ratelimit-limit-requests"] == "2"
        with pytest.raises(openai.RateLimitError) as caught:
            await key.chat.completions.create(model="m", messages=HELLO)
        assert "Rate limit reached for this key on requests per min: limit 2" in str(caught.value)
