"""A cache hit through the whole request path costs one Redis round trip (counted by Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CategoryBudget
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.redis_server import PrivateRedis

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers: {a: {kind: openai, base_url: "http://a.test/v1"}}
models: {m: {deployments: [{provider: a, model: ma}]}}
memory: {enabled: false}
"""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def answer(request: UpstreamRequest) -> MockResponse:
    return MockResponse.json(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": orjson.loads(request.body)["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        }
    )


async def commands_sent(url: str, during: Callable[[], Awaitable[None]]) -> list[str]:
    """The commands clients sent Redis (not those its scripts ran) while ``during`` ran, by MONITOR."""
    marker = "end-of-test-" + str(id(during))
    monitor_client = aioredis.Redis.from_url(url)
    other = aioredis.Redis.from_url(url)
    await other.ping()  # connected before the monitor starts: its hand-shake is not counted
    try:
        async with monitor_client.monitor() as monitor:
            await during()
            await other.echo(marker)
            sent = []
            while True:
                seen = await asyncio.wait_for(monitor.next_command(), 5)
                if marker in seen["command"]:
                    return sent
                if seen["client_type"] != "lua":  # commands run by a script are not round trips
                    sent.append(seen["command"].split(" ", 1)[0].upper())
    finally:
        await other.aclose()
        await monitor_client.aclose()


async def test_a_redis_cache_hit_is_one_round_trip(
    aiohttp_client: ClientFactory, private_redis: PrivateRedis
) -> None:
    policy = parse_policy(POLICY)
    budgets = {name: CategoryBudget(name, c.max_bytes) for name, c in policy.cache.categories.items()}
    store = RedisStore(private_redis.url, budgets, prefix="hits:", op_timeout_s=1.0)
    upstream = MockTransport(answer)
    app = build_app(Settings(access_log=False), policy, {}, transports={"a": upstream}, cache_store=store)
    client = await aiohttp_client(app)
    first = await client.post("/v1/chat/completions", json=CHAT)
    assert first.status == 200 and first.headers["x-gateway-cache"] == "miss"
    body = await first.read()

    async def three_hits() -> None:
        for _ in range(3):
            hit = await client.post("/v1/chat/completions", json=CHAT)
            assert hit.status == 200 and hit.headers["x-gateway-cache"] == "hit"
            assert await hit.read() == body

    # One script call per hit (the lookup and the recency update in one EVALSHA), nothing else.
    assert await commands_sent(private_redis.url, three_hits) == ["EVALSHA"] * 3
    assert len(upstream.requests) == 1
