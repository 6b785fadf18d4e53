"""An answer served without the client's effort (a ``reasoning: false`` fallback) is not stored
in the response cache (h-effort2), with each real backend: the in-process store and Redis.

Its key is the client's body, effort included: stored, an identical request made once the
reasoning deployment is back would be answered from it, without the reasoning it asked for (and
without ``x-gateway-reasoning-effort``, a hit having no deployment). The whole request path runs
in process (aiohttp's TestClient in front, MockTransport behind); nothing of the cache is mocked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.cache.memory_store import MemoryStore
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import CacheStore
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.service.responses import cache_budgets
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
breaker: {consecutive_failures: 1000000, min_requests: 1000000}
retry: {max_attempts: 2, backoff_initial_s: 0.001, backoff_max_s: 0.001}
providers:
  reasons: {kind: openai, base_url: "http://reasons.test/v1"}
  plain: {kind: openai, base_url: "http://plain.test/v1"}
models:
  o3-then-4o:
    strategy: ordered
    deployments:
      - {provider: reasons, model: o3}
      - {provider: plain, model: gpt-4o, reasoning: false}
memory: {enabled: false}
"""
ASK = {"model": "o3-then-4o", "messages": [{"role": "user", "content": "think"}], "temperature": 0}


class Upstream:
    """A provider answering with its model's name, or 503 while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.transport = MockTransport(self._answer)

    def _answer(self, request: UpstreamRequest) -> MockResponse:
        if self.down:
            return MockResponse.json({"error": {"message": "down", "type": "server_error"}}, status=503)
        body = orjson.loads(request.body)
        text = f"{body['model']} with effort {body.get('reasoning_effort')}"
        if body.get("stream"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]}  # fmt: skip
            return MockResponse.stream([b"data: " + orjson.dumps(chunk) + b"\n\n", b"data: [DONE]\n\n"])
        return MockResponse.json(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
            }
        )


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[CacheStore]:
    budgets = cache_budgets(parse_policy(POLICY))
    if request.param == "memory":
        yield MemoryStore(budgets)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    yield RedisStore(url, budgets, prefix=prefix, op_timeout_s=2.0)


async def _ask(client: TestClient, streamed: bool, **extra: Any) -> tuple[str, str, Any]:
    """(the answer's text or stream, ``x-gateway-cache``, the response's headers)."""
    resp = await client.post("/v1/chat/completions", json={**ASK, **extra, "stream": streamed})
    assert resp.status == 200, await resp.text()
    return (await resp.text()), resp.headers.get("x-gateway-cache", ""), resp.headers


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_an_answer_made_without_the_effort_is_not_cached(
    aiohttp_client: ClientFactory, store: CacheStore, streamed: bool
) -> None:
    reasons, plain = Upstream(), Upstream()
    app = build_app(
        Settings(access_log=False),
        parse_policy(POLICY),
        {},
        transports={"reasons": reasons.transport, "plain": plain.transport},
        cache_store=store,
    )
    client = await aiohttp_client(app)
    reasons.down = True
    text, cache, headers = await _ask(client, streamed, reasoning_effort="high")
    assert "gpt-4o with effort None" in text and cache == "miss"
    assert headers["x-gateway-reasoning-effort"] == "dropped"
    reasons.down = False  # o3 is back: the identical request is answered by it, with the effort
    text, cache, headers = await _ask(client, streamed, reasoning_effort="high")
    assert "o3 with effort high" in text and cache == "miss"
    assert "x-gateway-reasoning-effort" not in headers
    _, cache, _ = await _ask(client, streamed, reasoning_effort="high")  # o3's answer is cached
    assert cache == "hit" and len(reasons.transport.requests) == 2  # the 503, then one answer


async def test_a_fallbacks_answer_to_a_request_without_an_effort_is_cached(
    aiohttp_client: ClientFactory, store: CacheStore
) -> None:
    """The guard: nothing was withheld, so the fallback's answer is stored as before."""
    reasons, plain = Upstream(), Upstream()
    app = build_app(
        Settings(access_log=False),
        parse_policy(POLICY),
        {},
        transports={"reasons": reasons.transport, "plain": plain.transport},
        cache_store=store,
    )
    client = await aiohttp_client(app)
    reasons.down = True
    text, cache, _ = await _ask(client, False)
    assert "gpt-4o" in text and cache == "miss"
    reasons.down = False
    text, cache, _ = await _ask(client, False)
    assert "gpt-4o" in text and cache == "hit"
