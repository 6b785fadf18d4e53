"""The failed-auth throttle shared through Redis (``auth/redis_throttle.py``): two gateways (two
in-process apps, each on its own loopback port, as two workers or replicas) with one real Redis,
real HTTP, the openai SDK as the client, connecting from distinct loopback addresses (the
throttle counts loopback here: ``auth_throttle_exempt`` "none").

Before: each gateway counted alone, so an address got ``LIMIT`` failures a window on each.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
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
from gateway.auth.redis_throttle import RedisFailures
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.redis_server import PrivateRedis

TOKEN = "admin-token-for-throttle-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 20  # the default
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
  teams: {{ops: {{}}}}
"""
WRONG = "sk-sg-" + "W" * 51  # well formed, issued by nobody
CHAT = [{"role": "user", "content": "hi"}]


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
    def shared(self) -> RedisFailures:
        shared = self.app[keys.AUTH_THROTTLE].shared
        assert isinstance(shared, RedisFailures)
        return shared


@asynccontextmanager
async def pair(tmp_path: Path, redis_url: str, prefix: str) -> AsyncIterator[tuple[Gateway, Gateway, str]]:
    """Two gateways on one key store and one Redis (``prefix``), and a virtual key of both."""
    settings = Settings(
        admin_token=TOKEN,
        policy_watch=False,
        access_log=False,
        redis_url=redis_url,
        throttle_prefix=prefix,
        rollout_prefix=prefix + "rollout:",
        shared_routing=False,
        auth_throttle_failures=LIMIT,
        auth_throttle_exempt="none",  # the tests' clients are all on loopback
        state_dir=str(tmp_path),
    )
    policy = parse_policy(POLICY.format(store=tmp_path / "keys.sqlite3"))
    async with AsyncExitStack() as stack:
        gateways = []
        for _ in range(2):
            app = build_app(settings, policy, {}, transports={"a": MockTransport(answer)})
            client = await stack.enter_async_context(TestClient(TestServer(app, host="127.0.0.1")))
            gateways.append(Gateway(str(client.make_url("")), app))
        a, b = gateways
        async with httpx2.AsyncClient() as admin:
            made = await admin.post(a.url + "/admin/keys", json={"team": "ops"}, headers=ADMIN)
            assert made.status_code == 201, made.text
        yield a, b, made.json()["secret"]


def source(address: str) -> httpx2.AsyncClient:
    """An HTTP client whose connections come from ``address``."""
    return httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(local_address=address, verify=False))


async def status(gw: Gateway, address: str, key: str) -> int:
    """The status of one chat completion through the openai SDK from ``address`` with ``key``."""
    async with openai.AsyncOpenAI(
        api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=10, http_client=source(address)
    ) as client:
        try:
            await client.chat.completions.create(model="m", messages=CHAT)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            if exc.status_code == 429:
                assert exc.code == "auth_throttled", exc.body
            return exc.status_code
        return 200


def throttled_count(gw: Gateway) -> float:
    metrics = gw.app[keys.METRICS]
    return metrics.auth_throttled.labels("api").value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_failures_spread_over_two_gateways_add_up_to_one_limit(
    tmp_path: Path, redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.http")
    async with pair(tmp_path, redis_url, redis_prefix) as (a, b, secret):
        guesser = "127.0.0.31"
        for i in range(LIMIT):  # alternately: 10 on each, 20 in all
            assert await status(a if i % 2 else b, guesser, WRONG) == 401
        # The 21st, on either: refused (before: each had seen 10, and answered 401).
        assert await status(a, guesser, WRONG) == 429
        assert await status(b, guesser, WRONG) == 429
        # The right key from that address, on either: refused too (no oracle).
        assert await status(a, guesser, secret) == 429
        assert await status(b, guesser, secret) == 429
        # Another address is served on both.
        assert await status(a, "127.0.0.32", secret) == 200
        assert await status(b, "127.0.0.32", secret) == 200
        assert throttled_count(a) + throttled_count(b) == 4
        # One warning for the fleet: from the gateway whose failure reached the limit.
        warnings = [r for r in caplog.records if r.getMessage().startswith("client address throttled")]
        assert len(warnings) == 1 and warnings[0].fields["client"] == guesser  # type: ignore[attr-defined]

        # An address that failed on one gateway only: its first wrong key on the other is refused
        # as throttled (the shared count is past the limit), and so is the right key after it.
        only_a = "127.0.0.33"
        for _ in range(LIMIT):
            assert await status(a, only_a, WRONG) == 401
        assert await status(a, only_a, WRONG) == 429
        assert await status(b, only_a, WRONG) == 429
        assert await status(b, only_a, secret) == 429

        # In Redis: one counter per address, the address as it is, expiring with the window;
        # no credential anywhere.
        async with aioredis.Redis.from_url(redis_url) as client:
            names = sorted([name.decode() async for name in client.scan_iter(match=redis_prefix + "*")])
            assert names == [redis_prefix + guesser, redis_prefix + only_a]
            assert int(await client.get(redis_prefix + guesser)) == LIMIT
            ttl_ms = await client.pttl(redis_prefix + guesser)
            assert 0 < ttl_ms <= 60_000
            for name in names:
                assert WRONG[6:] not in name and secret[6:] not in name


async def test_a_request_whose_address_did_not_fail_asks_redis_nothing(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with pair(tmp_path, redis_url, redis_prefix) as (a, _, secret):
        for _ in range(5):
            assert await status(a, "127.0.0.41", secret) == 200
        assert a.shared.round_trips == 0
        # Another address failing fills the table: a clean address still asks nothing.
        assert await status(a, "127.0.0.42", WRONG) == 401
        assert a.shared.round_trips == 1  # the failure, counted in Redis
        for _ in range(5):
            assert await status(a, "127.0.0.41", secret) == 200
        assert a.shared.round_trips == 1
        # The address that failed here lately: each of its requests looks at the shared count
        # (it may have failed elsewhere since), until its window ends.
        assert await status(a, "127.0.0.42", secret) == 200
        assert a.shared.round_trips == 2


async def test_redis_down_or_unreachable_keeps_each_process_throttling(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    prefix = "test:throttle:"
    async with pair(tmp_path, private_redis.url, prefix) as (a, b, secret):
        guesser = "127.0.0.51"
        for i in range(15):  # 8 on a, 7 on b: 15 shared, each gateway holding the shared count
            assert await status(a if i % 2 == 0 else b, guesser, WRONG) == 401
        private_redis.stop()
        # Redis gone: each counts on in process, from the shared count it last saw (never from
        # 0, never unlimited): a's 5 more reach 20 (before: a had seen 8 + 5 = 13).
        for _ in range(5):  # a's last failure saw 15: 16 to 20, the 20th getting it refused
            assert await status(a, guesser, WRONG) == 401
        assert await status(a, guesser, WRONG) == 429
        assert await status(a, guesser, secret) == 429
        assert not a.shared.healthy
        # b, unaware of a's last failures, counts on from the 14 its last failure saw: the right
        # key is served meanwhile, and b refuses the address once its own count reaches 20.
        assert await status(b, guesser, secret) == 200
        for _ in range(6):
            assert await status(b, guesser, WRONG) == 401
        assert await status(b, guesser, WRONG) == 429
        assert await status(b, guesser, secret) == 429
        assert not b.shared.healthy

    # Never reachable (a closed port): each gateway throttles alone, as without REDIS_URL.
    async with pair(tmp_path, f"redis://127.0.0.1:{closed_port()}/0", prefix) as (a, b, secret):
        guesser = "127.0.0.53"
        for _ in range(LIMIT):
            assert await status(a, guesser, WRONG) == 401
        assert await status(a, guesser, WRONG) == 429
        assert await status(a, guesser, secret) == 429
        assert await status(b, guesser, secret) == 200  # b saw no failure
        assert not a.shared.healthy


async def test_deleting_an_addresses_counter_lifts_its_refusal_on_every_process(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # The README's way to lift a refusal: `redis-cli DEL <prefix><address>`. Before, processes
    # that had refused the address kept refusing it (their own table) until its window ended.
    async with pair(tmp_path, redis_url, redis_prefix) as (a, b, secret):
        guesser = "127.0.0.51"
        for _ in range(LIMIT):
            assert await status(a, guesser, WRONG) == 401
        assert await status(a, guesser, secret) == 429
        assert await status(b, guesser, WRONG) == 429  # b adopted the shared count
        trips = a.shared.round_trips
        for _ in range(10):  # a refused address hammering: at most one read a second per process
            assert await status(a, guesser, secret) == 429
        assert a.shared.round_trips - trips <= 2
        async with aioredis.Redis.from_url(redis_url) as client:
            assert await client.delete(redis_prefix + guesser) == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        for gw in (a, b):
            while (code := await status(gw, guesser, secret)) == 429:
                assert loop.time() < deadline, "the refusal was not lifted"
                await asyncio.sleep(0.05)
            assert code == 200
        assert await status(a, guesser, WRONG) == 401  # counted afresh from 1


async def test_failures_counted_while_redis_could_not_are_not_lifted_by_its_empty_count(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    # The refusal of an address whose failures only this process saw (Redis down meanwhile) is
    # not lifted because Redis, back, has no count for it.
    async with pair(tmp_path, private_redis.url, "t:") as (a, _, secret):
        private_redis.stop()
        guesser = "127.0.0.52"
        for _ in range(LIMIT):
            assert await status(a, guesser, WRONG) == 401
        assert await status(a, guesser, secret) == 429
        private_redis.start()
        trips = a.shared.round_trips
        for _ in range(3):
            assert await status(a, guesser, secret) == 429
        assert a.shared.round_trips == trips  # not asked: the count is this process's
