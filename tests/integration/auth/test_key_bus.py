"""Key changes announced to every replica through Redis pub/sub (``auth/key_bus.py``): two
gateways (two in-process apps, each on its own loopback port, as two replicas) sharing one real
Redis (a channel prefix of the test's own) and one SQLite key store, real HTTP, the openai SDK as
the app, ``auth.key_cache_s`` 300 s so that no cached lookup expires during a test.

Before: a key revoked or updated through gateway A kept working on gateway B, as cached, until
B's cached lookup expired (here 300 s): each test's check of B failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from gateway import keys
from gateway.app import build_app
from gateway.auth.key_bus import KeyBus
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.process import free_port
from gateway.testing.redis_server import PrivateRedis

TOKEN = "admin-token-for-key-bus-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
memory: {{enabled: false}}
cache: {{enabled: false}}
auth:
  store: {store}
  key_cache_s: 300
  teams: {{ops: {{}}}}
"""
CHAT = [{"role": "user", "content": "hi"}]
# How long a test waits for something that takes milliseconds (a message to arrive) or, after a
# Redis restart, the subscriber's backoff (at most 5 s) and reconnect.
DEADLINE_S = 20.0


def answer(request: UpstreamRequest) -> MockResponse:
    return MockResponse.json(
        {
            "id": "c",
            "object": "chat.completion",
            "model": orjson.loads(request.body)["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


@dataclass
class Gateway:
    url: str
    app: Application

    @property
    def bus(self) -> KeyBus:
        return self.app[keys.KEY_BUS]

    async def admin(self, method: str, path: str, body: object = None) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=10) as client:
            return await client.request(method, self.url + path, json=body, headers=ADMIN)

    async def new_key(self, **settings: object) -> tuple[str, str]:
        made = await self.admin("POST", "/admin/keys", {"team": "ops", **settings})
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["secret"]


@asynccontextmanager
async def pair(tmp_path: Path, redis_url: str, prefix: str) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways on one key store and one Redis, their key bus on ``prefix``."""
    settings = Settings(
        admin_token=TOKEN,
        policy_watch=False,
        access_log=False,
        redis_url=redis_url,
        key_bus_prefix=prefix,
        throttle_prefix=prefix + "throttle:",
        rollout_prefix=prefix + "rollout:",
        shared_routing=False,
        state_dir=str(tmp_path),
    )
    policy = parse_policy(POLICY.format(store=tmp_path / "keys.sqlite3"))
    async with AsyncExitStack() as stack:
        gateways = []
        for _ in range(2):
            app = build_app(settings, policy, {}, transports={"a": MockTransport(answer)})
            client = await stack.enter_async_context(TestClient(TestServer(app, host="127.0.0.1")))
            gateways.append(Gateway(str(client.make_url("")), app))
        yield gateways[0], gateways[1]


async def call(gw: Gateway, key: str) -> tuple[int, str | None]:
    """One chat completion through the openai SDK: its status and ``x-ratelimit-limit-requests``."""
    async with openai.AsyncOpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=10) as client:
        try:
            raw = await client.chat.completions.with_raw_response.create(model="m", messages=CHAT)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("x-ratelimit-limit-requests")
        return raw.status_code, raw.headers.get("x-ratelimit-limit-requests")


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (checked every 20 ms) up to ``DEADLINE_S``; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < deadline, f"no {what} within {DEADLINE_S} s"
        await asyncio.sleep(0.02)


async def subscribed(*gateways: Gateway) -> None:
    # Each bus's first subscription forgets every cached lookup: wait for it before caching any.
    await until(lambda: all(gw.bus.subscribed for gw in gateways), "subscription")


async def test_a_key_revoked_through_one_replica_is_refused_by_the_other_at_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with pair(tmp_path, redis_url, redis_prefix) as (a, b):
        await subscribed(a, b)
        key_id, secret = await a.new_key()
        assert (await call(b, secret))[0] == 200  # cached on b for 300 s
        received = b.bus.received

        revoked = await a.admin("DELETE", f"/admin/keys/{key_id}")
        assert revoked.status_code == 200, revoked.text
        await until(lambda: b.bus.received > received, "key change message on b")
        assert (await call(b, secret))[0] == 401  # before: 200 until b's cached lookup expired
        assert (await call(a, secret))[0] == 401

        # A message not of the bus's form (anyone who may publish on the Redis): ignored.
        other_id, other = await a.new_key()
        assert (await call(b, other))[0] == 200
        received = b.bus.received
        async with aioredis.Redis.from_url(redis_url) as client:
            for junk in (b"not json", b"[]", b'{"key_id": "../x", "change": "revoke"}', b"x" * 10_000):
                await client.publish(b.bus.channel, junk)
            await client.publish(b.bus.channel, orjson.dumps({"key_id": other_id, "change": "nonsense"}))
        # Then a rotation (the old key revoked, its secret refused at once everywhere).
        rotated = await a.admin("POST", f"/admin/keys/{other_id}/rotate")
        assert rotated.status_code == 201, rotated.text
        await until(lambda: b.bus.received > received, "rotation message on b")
        assert b.bus.received == received + 1  # the junk was not acted on
        assert b.bus.subscribed  # nor did it break the subscription
        assert (await call(b, other))[0] == 401
        assert (await call(b, rotated.json()["secret"]))[0] == 200


async def test_an_updated_rpm_holds_on_the_other_replica_at_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with pair(tmp_path, redis_url, redis_prefix) as (a, b):
        await subscribed(a, b)
        key_id, secret = await a.new_key(rpm=1)
        assert await call(b, secret) == (200, "1")
        assert await call(b, secret) == (429, "1")  # its one request this minute, cached with rpm 1
        received = b.bus.received

        patched = await a.admin("PATCH", f"/admin/keys/{key_id}", {"rpm": 3})
        assert patched.status_code == 200, patched.text
        await until(lambda: b.bus.received > received, "update message on b")
        # Before: 429 with limit 1 until b's cached lookup expired.
        assert await call(b, secret) == (200, "3")


async def test_the_subscriber_survives_a_redis_restart_and_forgets_what_it_may_have_missed(
    tmp_path: Path, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth.key_bus")
    async with pair(tmp_path, private_redis.url, "test:bus:") as (a, b):
        await subscribed(a, b)
        key_id, secret = await a.new_key()
        assert (await call(b, secret))[0] == 200  # cached on b for 300 s
        resyncs = b.bus.resyncs

        private_redis.stop()
        await until(lambda: not b.bus.subscribed, "lost subscription")
        # The revocation made while Redis is down: answered, but not announced.
        revoked = await a.admin("DELETE", f"/admin/keys/{key_id}")
        assert revoked.status_code == 200, revoked.text
        assert any(r.getMessage().startswith("key change not announced") for r in caplog.records)
        assert any(r.getMessage().startswith("redis key bus unavailable") for r in caplog.records)

        private_redis.start()
        await until(lambda: b.bus.resyncs > resyncs, "resubscription on b")
        # The message was lost; the resubscription forgot every cached lookup instead.
        assert (await call(b, secret))[0] == 401  # before: 200 (cached)
        assert any(r.getMessage().startswith("redis key bus recovered") for r in caplog.records)
        assert b.bus.reconnect_counts()[0] >= 1

        # And the subscription carries messages again.
        await subscribed(a, b)
        other_id, other = await a.new_key()
        assert (await call(b, other))[0] == 200
        received = b.bus.received
        assert (await a.admin("DELETE", f"/admin/keys/{other_id}")).status_code == 200
        await until(lambda: b.bus.received > received, "key change message on b")
        assert (await call(b, other))[0] == 401


async def test_a_revocation_with_redis_unreachable_is_answered_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.auth.key_bus")
    async with pair(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "test:bus:") as (a, _):
        key_id, secret = await a.new_key()
        revoked = await a.admin("DELETE", f"/admin/keys/{key_id}")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        assert (await call(a, secret))[0] == 401  # this replica refuses it at once all the same
        lines = [r for r in caplog.records if r.getMessage().startswith("key change not announced")]
        assert [r.fields for r in lines] == [  # type: ignore[attr-defined]
            {"key_id": key_id, "change": "revoke", "error": "ConnectionError"}
        ]
        assert not a.app[keys.KEY_BUS].subscribed


async def test_a_change_whose_announcement_failed_is_announced_again_once_redis_takes_it(
    tmp_path: Path, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the announcing process's PUBLISH fails (Redis paused for writes past the publish
    # timeout; every subscription stays up, so nobody resynchronises). Before: the other replica
    # kept the revoked key, cached, until its lookup expired (300 s here).
    caplog.set_level(logging.INFO, logger="gateway.auth.key_bus")
    async with pair(tmp_path, private_redis.url, "test:bus:") as (a, b):
        await subscribed(a, b)
        key_id, secret = await a.new_key()
        assert (await call(b, secret))[0] == 200  # cached on b for 300 s
        resyncs, received = b.bus.resyncs, b.bus.received
        async with aioredis.Redis.from_url(private_redis.url) as client:
            await client.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        revoked = await a.admin("DELETE", f"/admin/keys/{key_id}")
        assert revoked.status_code == 200, revoked.text  # answered after the 0.5 s bound
        assert a.bus.unsent == 1
        await until(lambda: b.bus.received > received, "the change announced again, on b")
        assert a.bus.unsent == 0 and b.bus.resyncs == resyncs  # heard, not resynchronised
        assert (await call(b, secret))[0] == 401
        assert any(r.getMessage().startswith("key changes announced again") for r in caplog.records)


class Forgetting:
    """A ``KeyCache`` that records what the bus asks of it."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.everything = 0

    def forget_keys(self, key_ids: Collection[str]) -> int:
        self.keys.extend(sorted(key_ids))
        return len(key_ids)

    def forget_all(self) -> None:
        self.everything += 1


async def test_a_subscription_gone_quiet_is_found_by_a_ping_and_made_again(
    private_redis: PrivateRedis,
) -> None:
    # A Redis that stops answering without closing the connection (as a network partition: no
    # reset arrives): the subscriber's ping goes unanswered, it reconnects once Redis answers,
    # and forgets every cached lookup (a change announced meanwhile is lost).
    cache = Forgetting()
    bus = KeyBus(private_redis.url, cache, prefix="test:quiet:", idle_ping_s=0.2, pong_timeout_s=0.5)
    async with asynccontextmanager(bus.running)(None):
        await until(lambda: bus.subscribed, "subscription")
        assert cache.everything == 1
        async with aioredis.Redis.from_url(private_redis.url) as client:
            await client.execute_command("DEBUG", "SLEEP", "3")  # the server answers nobody for 3 s
        await until(lambda: cache.everything == 2, "resubscription")  # before: stayed subscribed, deaf
        assert bus.reconnect_counts()[0] >= 1
        assert await bus.publish("key_aaaaaaaaaaaa", "update")
        await until(lambda: cache.keys == ["key_aaaaaaaaaaaa"], "message")
