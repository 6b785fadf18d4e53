"""``GET /admin/usage`` reads every replica's usage from the limits' Redis: with that Redis down,
or a server on its port that is not Redis, it was a 500 with a traceback (the reads ran outside
any failure handling); now a 503 ``usage_unavailable`` in the OpenAI error shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import hiredis
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.redis_limits import RedisLimiter
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.redis_server import PrivateRedis

ADMIN = "admin-token-for-usage-tests"
POLICY = """
version: 1
providers:
  p: {kind: openai, base_url: "http://p.test/v1"}
models:
  m: {deployments: [{provider: p, model: m}]}
cache: {enabled: false}
memory: {enabled: false}
"""


async def usage(url: str, prefix: str = "usage-test:") -> tuple[int, dict[str, object]]:
    app = build_app(Settings(access_log=False, admin_token=ADMIN), parse_policy(POLICY), {})
    app[keys.LIMITS].limiter = RedisLimiter(url, prefix=prefix, op_timeout_s=1.0)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        resp = await client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
        body: dict[str, object] = await resp.json()
        return resp.status, body
    finally:
        await client.close()


def unavailable(status: int, body: dict[str, object]) -> None:
    assert status == 503, body
    error = body["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["code"]) == ("service_unavailable", "usage_unavailable")


async def test_usage_is_read_from_a_working_redis(redis_url: str, redis_prefix: str) -> None:
    status, body = await usage(redis_url, redis_prefix)
    assert status == 200 and body["data"] == [], body


async def test_usage_with_its_redis_down_is_a_503(private_redis: PrivateRedis) -> None:
    private_redis.stop()
    unavailable(*await usage(private_redis.url))


async def not_redis(reply: bytes) -> AsyncIterator[str]:
    """A RESP server on loopback that greets as Redis does and answers every other command with
    ``reply``: well formed, of another shape than the command's."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                name = command[0].upper()
                if name in (b"AUTH", b"CLIENT", b"SELECT"):
                    writer.write(b"+OK\r\n")
                elif name == b"HELLO":
                    writer.write(b"-ERR unknown command 'HELLO'\r\n")
                else:
                    writer.write(reply)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"*3\r\n:1\r\n:2\r\n*1\r\n:5\r\n",  # nested (SMEMBERS' set() of it raised TypeError)
        b"*2\r\n$2\r\nzz\r\n$2\r\nzz\r\n",  # strings: an index entry with no tab, a count "zz"
        b"*1\r\n$5\r\na\tb\xff\xfe\r\n",  # an entry that is not UTF-8
        b":7\r\n",
    ],
    ids=["nested", "strings", "not-utf8", "integer"],
)
async def test_usage_from_a_server_that_is_not_redis_is_a_503(reply: bytes) -> None:
    async for url in not_redis(reply):
        unavailable(*await usage(url))


async def test_a_usage_entry_with_counts_of_another_shape_is_a_503() -> None:
    # SMEMBERS answers one well-formed entry, HGETALL a count that is not a number.
    answers: dict[bytes, bytes] = {
        b"SMEMBERS": b"*1\r\n$9\r\nteam\tkey1\r\n",
        b"HGETALL": b"*2\r\n$8\r\nrequests\r\n$2\r\nzz\r\n",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                writer.write(answers.get(command[0].upper(), b"+OK\r\n"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        unavailable(*await usage(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"))
    finally:
        server.close()
