"""A gateway with ``REDIS_URL`` whose Redis stops and starts again: /health and
``gateway_dependency_up`` follow it, failed probes and the reconnect are counted as recovery
actions, for the cache's, the limits' and the shared routing state's links alike (the last also
sets ``gateway_shared_state_up``). A private ``redis-server``; the gateway in process (aiohttp's
TestClient); waits poll with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.redis_server import PrivateRedis

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
"""
LINKS = {
    "redis:cache": "redis_cache_reconnect",
    "redis:limits": "redis_limits_reconnect",
    "redis:routing": "redis_routing_reconnect",
    # the failed-auth throttle's own link (h-probe4): before, an outage of it was a log line only
    "redis:throttle": "redis_throttle_reconnect",
    # the key bus's subscription (auth/key_bus.py): down while this process would miss key changes
    "redis:keybus": "redis_key_bus_reconnect",
}


async def until(condition: Callable[[], Awaitable[bool]], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not await condition():
        assert time.monotonic() < end, f"not within {deadline_s} s: {what}"
        await asyncio.sleep(0.1)


async def test_redis_stops_and_comes_back_under_a_gateway(
    aiohttp_client: ClientFactory, private_redis: PrivateRedis
) -> None:
    settings = Settings(access_log=False, redis_url=private_redis.url, cache_prefix="test:recovery:")
    transports = {"a": MockTransport(lambda r: MockResponse.json({}))}
    app = build_app(settings, parse_policy(POLICY), {}, transports=transports)
    client = await aiohttp_client(app)
    registry = app[keys.METRICS].registry

    def actions(kind: str, result: str) -> float:
        return (
            registry.get_sample_value("gateway_recovery_actions_total", {"kind": kind, "result": result}) or 0
        )

    def up(dependency: str) -> float | None:
        return registry.get_sample_value("gateway_dependency_up", {"dependency": dependency})

    async def statuses() -> dict[str, str]:
        body = await (await client.get("/health")).json()
        return {name: body["dependencies"][name]["status"] for name in LINKS}

    first = await (await client.get("/health")).json()
    for name in LINKS:
        assert first["dependencies"][name]["status"] == "up"
        assert 0 < first["dependencies"][name]["latency_ms"] < 1000
        assert up(name) == 1
    assert all(actions(kind, result) == 0 for kind in LINKS.values() for result in ("ok", "failed"))

    private_redis.stop()

    async def both_down() -> bool:
        return set((await statuses()).values()) == {"down"}

    await until(both_down, 10, "both links down")
    assert all(up(name) == 0 for name in LINKS)

    async def shared_off() -> bool:  # the next sync (every 0.25 s) finds the link down
        return registry.get_sample_value("gateway_shared_state_up") == 0

    await until(shared_off, 5, "each replica on its own figures")

    # Each check is the probe once the link's backoff has passed (0.1, 0.2, 0.4, 0.8 s): probes
    # fail for 1.5 s, and none of them is a failed recovery action (an outage is one action,
    # failed only once it lasts ``RECOVERY_BOUND_S``: redis_link.py).
    probing_until = time.monotonic() + 1.5
    while time.monotonic() < probing_until:
        assert set((await statuses()).values()) == {"down"}
    assert all(actions(kind, result) == 0 for kind in LINKS.values() for result in ("ok", "failed"))
    down_since = (await (await client.get("/health")).json())["dependencies"]["redis:cache"]["changed_at"]

    private_redis.start()

    async def both_up() -> bool:
        return set((await statuses()).values()) == {"up"}

    await until(both_up, 15, "both links back up")  # the backoff is at most 5 s, jittered
    assert all(actions(kind, "ok") == 1 for kind in LINKS.values())  # one outage, recovered: one ok
    assert all(actions(kind, "failed") == 0 for kind in LINKS.values())
    body = await (await client.get("/health")).json()
    assert body["dependencies"]["redis:cache"]["changed_at"] > down_since
    assert all(up(name) == 1 for name in LINKS)

    async def shared_again() -> bool:
        return registry.get_sample_value("gateway_shared_state_up") == 1

    await until(shared_again, 5, "the shared routing state merged again")
    text = await (await client.get("/metrics")).text()
    assert 'gateway_recovery_actions_total{kind="redis_cache_reconnect",result="ok"} 1.0' in text
