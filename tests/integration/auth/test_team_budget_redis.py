"""A team's shared budget (h-teambudget) against a real Redis: one counter per team, shared by
every replica and every key of the team (new and rotated keys too), read by the key's own
admission script (no round trip more), charged with its keys' settlements, and counted through an
outage as a key's budget is."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.redis_server import PrivateRedis

HOUR = 3600.0
SHARED = {"team_budget_usd": 1.0, "team_budget_period_s": HOUR}


def of_team(key_id: str, team: str = "alpha", **limits: Any) -> Caller:
    """A key of a team with a shared budget of $1 an hour."""
    return Caller(key_id, team, **SHARED, **limits)


async def _limiter(url: str, prefix: str, **kw: Any) -> RedisLimiter:
    limiter = RedisLimiter(url, prefix=prefix, op_timeout_s=2.0, **kw)
    await limiter.start()
    return limiter


def _evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_two_replicas_share_the_teams_budget_for_every_key_of_the_team(
    redis_url: str, redis_prefix: str
) -> None:
    here, there = await _limiter(redis_url, redis_prefix), await _limiter(redis_url, redis_prefix)
    try:
        k1, k2 = of_team("k1", rpm=100), of_team("k2", budget_usd=5.0, budget_period_s=HOUR)
        assert (await here.admit(k1, "a", 0)).refused is None
        assert (await there.admit(k2, "b", 0)).refused is None
        await here.settle(k1, "a", 0, 10, 10, 0.7)
        assert (await there.admit(k2, "c", 0)).refused is None  # $0.7 of $1
        await there.settle(k2, "c", 0, 10, 10, 0.4)  # $1.1: spent
        # Every key of the team, on either replica: k1, k2, a new key, a rotated one.
        for limiter in (here, there):
            for key in (k1, k2, of_team("k3"), of_team("k4", limits_id="k1")):
                refused = await limiter.admit(key, "d", 0)
                assert refused.refused == "team_budget", key
                assert 0 < refused.budget_reset_s <= HOUR and refused.retry_after_s == refused.budget_reset_s
        # Another team, and a key of the team's name without the shared budget, are admitted.
        assert (await here.admit(of_team("k5", "beta"), "e", 0)).refused is None
        assert (await here.admit(Caller("k6", "alpha", rpm=100), "f", 0)).refused is None
        assert await there.team_spent("alpha", HOUR) == pytest.approx(1.1)
        assert await there.team_spent("beta", HOUR) == 0.0
        # A shared budget of 0 refuses at once, as a key's own of 0 does.
        none = Caller("k7", "gamma", team_budget_usd=0.0, team_budget_period_s=HOUR)
        assert (await here.admit(none, "g", 0)).refused == "team_budget"
    finally:
        await here.close()
        await there.close()


async def test_the_teams_counter_costs_no_round_trip_and_a_team_without_one_no_key(
    private_redis: PrivateRedis,
) -> None:
    limiter = await _limiter(private_redis.url, "t:")
    try:
        await limiter.admit(Caller("k0", "plain", rpm=100), "warm", 0)  # the script loaded (NOSCRIPT)
        for key in (
            Caller("k1", "plain", rpm=100, budget_usd=5.0, budget_period_s=HOUR),
            of_team("k2", rpm=100),
        ):
            before = _evalsha_calls(private_redis.url)
            for i in range(5):
                assert (await limiter.admit(key, f"{key.key_id}:{i}", 0)).refused is None
            # One admission script per request (RPM below the lease share: no lease), the team's
            # counter read by it: no other call.
            assert _evalsha_calls(private_redis.url) - before == 5, key
        with redis.Redis.from_url(private_redis.url) as client:
            assert list(client.scan_iter(match="t:{team:*")) == []  # nothing spent yet
            await limiter.settle(
                Caller("k1", "plain", budget_usd=5.0, budget_period_s=HOUR), "k1:0", 0, 1, 1, 0.5
            )
            assert list(client.scan_iter(match="t:{team:*")) == []  # a team without one: no key
            await limiter.settle(of_team("k2"), "k2:0", 0, 1, 1, 0.5)
            assert [k.decode() for k in client.scan_iter(match="t:{team:*")] == ["t:{team:alpha}:sp"]
    finally:
        await limiter.close()


async def test_a_leases_keys_stop_drawing_once_another_key_spends_the_teams_budget(
    redis_url: str, redis_prefix: str
) -> None:
    # A busy key with no RPM is admitted from a lease. Another key of its team, in the same
    # process, spends the team's budget: the lease draws no more; the next request asks Redis.
    limiter = await _limiter(redis_url, redis_prefix)
    busy, other = of_team("kb"), of_team("ko")
    try:
        for i in range(3):
            assert (await limiter.admit(busy, f"t{i}", 10)).refused is None
        assert limiter._leases["kb"].requests >= 1  # drawing from a lease, with room left
        assert (await limiter.admit(other, "o", 10)).refused is None
        limiter.settle_soon(other, "o", 10, 10, 10, 1.0)  # the whole team's budget, not yet written
        before = limiter.round_trips
        refused = await limiter.admit(busy, "t3", 10)
        assert refused.refused == "team_budget" and limiter.round_trips == before + 1
    finally:
        await limiter.close()


async def test_an_outage_counts_the_teams_spend_in_process_and_carries_it_to_redis(
    private_redis: PrivateRedis,
) -> None:
    here = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=0.2)
    there = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=2.0)  # another replica
    await here.start()
    await there.start()
    k1, k2 = of_team("k1", rpm=100), of_team("k2", rpm=100)
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    try:
        assert (await here.admit(k1, "a", 0)).refused is None
        os.kill(pid, signal.SIGSTOP)
        try:
            await here.settle(k1, "a", 0, 3, 2, 1.0)  # cut: counted here, carried
            # limits_fail: open, Redis down: counted in this process, which knows the team spent.
            assert (await here.admit(k2, "b", 0)).refused == "team_budget"
        finally:
            os.kill(pid, signal.SIGCONT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not here.healthy:  # after the backoff, an admission probes Redis and finds it back
            assert loop.time() < deadline, "limits never recovered"
            await here.admit(Caller("probe", "beta", rpm=100), "probe", 0)
            await asyncio.sleep(0.05)
        await here.flush()
        # The other replica, which reads only Redis, counts the outage's spend for the team.
        assert (await there.admit(k2, "c", 0)).refused == "team_budget"
        assert await there.team_spent("alpha", HOUR) == pytest.approx(1.0)
    finally:
        await here.close()
        await there.close()


# -- two gateways over HTTP, one key store, one Redis ---------------------------------------

TOKEN = "admin-token-for-team-budget-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "priced", "messages": [{"role": "user", "content": "hi"}]}  # $1 a call


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


def gateway(store: Path, redis_url: str, prefix: str) -> web.Application:
    policy = f"""
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
    perkey: {{budget_usd: 1, budget_period: 1d}}
"""
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN),
        parse_policy(policy),
        {},
        transports={"a": MockTransport(completion)},
    )
    app[keys.LIMITS].limiter = RedisLimiter(redis_url, prefix=prefix, op_timeout_s=2.0)
    return app


@pytest.fixture
async def gateways(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[TestClient, TestClient]]:
    store = tmp_path / "keys.sqlite3"
    async with (
        TestClient(TestServer(gateway(store, redis_url, redis_prefix), host="127.0.0.1")) as one,
        TestClient(TestServer(gateway(store, redis_url, redis_prefix), host="127.0.0.1")) as two,
    ):
        yield one, two


async def create(client: TestClient, team: str) -> dict[str, Any]:
    resp = await client.post("/admin/keys", json={"team": team}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json()
    return created


async def chat(client: TestClient, secret: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
    body: dict[str, Any] = await resp.json()
    await client.app[keys.LIMITS].drain()  # its settlement written to Redis
    return resp.status, body


def team_spent(status: int, body: dict[str, Any]) -> None:
    assert status == 429, body
    assert body["error"]["code"] == "insufficient_quota"
    assert "the shared budget of team 'shared'" in body["error"]["message"], body


async def test_two_gateways_refuse_every_key_of_the_team_once_its_shared_budget_is_spent(
    gateways: tuple[TestClient, TestClient],
) -> None:
    one, two = gateways
    a, b = await create(one, "shared"), await create(one, "shared")
    assert (await chat(one, a["secret"]))[0] == 200  # $1 of $2, through the first gateway
    assert (await chat(two, b["secret"]))[0] == 200  # $2, through the second: spent
    team_spent(*await chat(one, b["secret"]))
    team_spent(*await chat(two, a["secret"]))
    team_spent(*await chat(two, (await create(two, "shared"))["secret"]))  # a new key
    rotated = await (await one.post(f"/admin/keys/{a['id']}/rotate", headers=ADMIN)).json()
    team_spent(*await chat(two, rotated["secret"]))
    for client in (one, two):
        usage = await (await client.get("/admin/usage?team=shared", headers=ADMIN)).json()
        assert [(t["team"], t["spent_usd"]) for t in usage["teams"]] == [("shared", 2.0)]
    # A team without a shared budget: its budget_usd is each key's, as before.
    c, d = await create(one, "perkey"), await create(two, "perkey")
    assert (await chat(one, c["secret"]))[0] == 200
    assert (await chat(two, d["secret"]))[0] == 200
    status, body = await chat(two, c["secret"])
    assert status == 429 and "this key's budget of $1" in body["error"]["message"], body


async def test_a_peek_refuses_a_key_of_a_team_whose_shared_budget_another_replica_spent(
    redis_url: str, redis_prefix: str
) -> None:
    """(h-uploadgate x h-teambudget) A transcription's check before its form is read sees the
    team's shared budget, spent by another key on another replica: the same refusal ``admit``
    then gives, so the key's 20 MB form is not read for nothing."""
    here, there = await _limiter(redis_url, redis_prefix), await _limiter(redis_url, redis_prefix)
    try:
        spender, uploader = of_team("k1", rpm=100), of_team("k2", rpm=100)
        assert (await here.peek(uploader, 10)).refused is None  # nothing spent yet
        assert (await there.admit(spender, "a", 0)).refused is None
        await there.settle(spender, "a", 0, 10, 10, 1.2)
        await there.flush()
        seen = await here.peek(uploader, 10)
        assert seen.refused == "team_budget"
        assert 0 < seen.budget_reset_s <= HOUR and seen.retry_after_s == seen.budget_reset_s
        assert (await here.admit(uploader, "b", 10)).refused == "team_budget"  # as admit decides
        # Another team's key is not refused by it.
        assert (await here.peek(of_team("k3", "beta", rpm=100), 10)).refused is None
    finally:
        await here.close()
        await there.close()
