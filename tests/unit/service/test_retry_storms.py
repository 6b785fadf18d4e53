"""Retry storms (issue 10, items 10 and 11), through the whole request path in process.

The gateway must not multiply the load on a provider that says it is overloaded (429, 5xx):
a deployment that answered 429 is not asked again by the same request, nothing waits out a
``Retry-After`` to try again, a group whose deployments are all rate limited answers 429 at
once, and a retry budget bounds how many of a group's requests retry at once. And when the
gateway has already retried (or a retry cannot help) it says ``x-should-retry: false``, so the
official SDKs do not stack their own retries on top.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.errors import UpstreamConnectError
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
Behaviour = Callable[[UpstreamRequest], "MockResponse | Awaitable[MockResponse]"]

# Each group has its own deployments (per provider and upstream model), so no live state is
# shared between groups; the cache is off so that identical requests are not collapsed.
POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
  b: {kind: openai, base_url: "http://b.test/v1"}
  nokey: {kind: openai, base_url: "http://n.test/v1", api_key_env: SOPHIA_TEST_UNSET_KEY}
models:
  solo: {deployments: [{provider: a, model: solo-a}]}
  pair:
    strategy: ordered
    deployments: [{provider: a, model: pair-a}, {provider: b, model: pair-b}]
  strict-pair:
    strategy: ordered
    retry: {budget_percent: 0, min_retry_concurrency: 0}
    deployments: [{provider: a, model: strict-a}, {provider: b, model: strict-b}]
  tight-pair:
    strategy: ordered
    retry: {budget_percent: 0}
    deployments: [{provider: a, model: tight-a}, {provider: b, model: tight-b}]
  once: {retry: {max_attempts: 1}, deployments: [{provider: a, model: once-a}]}
  locked: {deployments: [{provider: nokey, model: locked-n}]}
cache: {enabled: false}
memory: {enabled: false}
"""
# One failure opens a breaker, for 30 s (as a provider down would).
BREAKER_POLICY = POLICY + "breaker: {consecutive_failures: 1, cooldown_s: 30}\n"


def completion(model: str) -> MockResponse:
    return MockResponse.json(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )


def model_of(request: UpstreamRequest) -> str:
    return str(orjson.loads(request.body)["model"])


def ok(request: UpstreamRequest) -> MockResponse:
    return completion(model_of(request))


def rate_limited(retry_after: str, latency_s: float = 0.0) -> Behaviour:
    async def answer(request: UpstreamRequest) -> MockResponse:
        await asyncio.sleep(latency_s)
        body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
        return MockResponse.json(body, status=429, headers={"Retry-After": retry_after})

    return answer


def status_503(request: UpstreamRequest) -> MockResponse:
    return MockResponse.json({"error": {"message": "overloaded", "type": "server_error"}}, status=503)


def refused(request: UpstreamRequest) -> MockResponse:
    raise UpstreamConnectError("refused", provider="a")


class Upstreams:
    """One MockTransport per provider; ``calls`` lists every upstream request as (provider, model)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.behaviour: dict[str, Behaviour] = {}
        self.transports = {name: MockTransport(self._handler(name)) for name in ("a", "b", "nokey")}

    def _handler(self, name: str) -> Callable[[UpstreamRequest], Awaitable[MockResponse]]:
        async def handle(request: UpstreamRequest) -> MockResponse:
            self.calls.append((name, model_of(request)))
            answer = self.behaviour.get(name, ok)(request)
            return await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[return-value]

        return handle

    def count(self, provider: str) -> int:
        return sum(1 for p, _ in self.calls if p == provider)


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


async def gateway(aiohttp_client: ClientFactory, upstreams: Upstreams, policy: str = POLICY) -> TestClient:
    app = build_app(Settings(access_log=False), parse_policy(policy), {}, transports=upstreams.transports)
    return await aiohttp_client(app)


def chat(model: str, text: str = "hi") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def requests_received(client: TestClient) -> float:
    """Client requests the gateway has answered (its ``gateway_requests_total``, every label)."""
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "gateway_requests_total"
    )


# ----- item 10: a deployment answering 429 is not stormed ------------------------------------------


@pytest.mark.parametrize("concurrent", [True, False], ids=["concurrent", "sequential"])
async def test_the_only_deployment_answering_429_gets_at_most_1_2_calls_per_request(
    aiohttp_client: ClientFactory, upstreams: Upstreams, concurrent: bool
) -> None:
    # Before: each request waited out Retry-After: 1 and asked again, max_attempts (3) times:
    # 60 requests -> 180 upstream calls. Now each reaches the provider at most once (concurrent:
    # a 20 ms answer lets them all in before the first 429 is back), and none once it has
    # answered 429 (sequential: 1 call in all).
    client = await gateway(aiohttp_client, upstreams)
    # Retry-After 30: a request held for it would take 30 s, far beyond any slow machine's noise.
    upstreams.behaviour["a"] = rate_limited("30", latency_s=0.02 if concurrent else 0.0)

    async def one(i: int) -> tuple[int, str | None, float]:
        started = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=chat("solo", f"q{i}"))
        await resp.read()
        return resp.status, resp.headers.get("retry-after"), time.perf_counter() - started

    if concurrent:
        results = await asyncio.gather(*(one(i) for i in range(60)))
    else:
        results = [await one(i) for i in range(60)]

    assert [status for status, _, _ in results] == [429] * 60
    assert all(retry_after == "30" for _, retry_after, _ in results), results
    assert len(upstreams.calls) <= 1.2 * 60, len(upstreams.calls)
    # Nobody was held for the Retry-After: answered without waiting it out.
    assert max(elapsed for _, _, elapsed in results) < 10, results


async def test_every_deployment_cooling_answers_429_at_once_with_the_soonest_retry_after(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    upstreams.behaviour = {"a": rate_limited("1"), "b": rate_limited("5")}
    first = await client.post("/v1/chat/completions", json=chat("pair", "one"))
    assert first.status == 429
    assert upstreams.calls == [("a", "pair-a"), ("b", "pair-b")]

    started = time.perf_counter()
    again = await client.post("/v1/chat/completions", json=chat("pair", "two"))
    elapsed = time.perf_counter() - started
    assert again.status == 429
    assert (await again.json())["error"]["code"] == "rate_limit_exceeded"
    assert again.headers["retry-after"] == "1"  # a's, the sooner of the two
    assert elapsed < 0.5, elapsed  # not slept through
    assert len(upstreams.calls) == 2  # no upstream call


async def test_a_429_fails_over_to_the_other_deployment_and_sets_it_aside(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    upstreams.behaviour["a"] = rate_limited("30")
    first = await client.post("/v1/chat/completions", json=chat("pair", "one"))
    assert first.status == 200
    assert (first.headers["x-gateway-provider"], first.headers["x-gateway-attempts"]) == ("b", "2")
    assert first.headers["x-gateway-fallback"] == "true"
    for i in range(10):
        resp = await client.post("/v1/chat/completions", json=chat("pair", f"r{i}"))
        assert resp.status == 200 and resp.headers["x-gateway-attempts"] == "1"
    assert upstreams.count("a") == 1 and upstreams.count("b") == 11


# ----- item 10: the retry budget -------------------------------------------------------------------


async def test_the_budget_lets_a_lone_request_fail_over(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    # tight-pair has budget_percent 0: only min_retry_concurrency (3) lets an idle group fail
    # over from an overloaded deployment.
    client = await gateway(aiohttp_client, upstreams)
    upstreams.behaviour["a"] = status_503
    resp = await client.post("/v1/chat/completions", json=chat("tight-pair"))
    assert resp.status == 200
    assert (resp.headers["x-gateway-provider"], resp.headers["x-gateway-attempts"]) == ("b", "2")

    # With no budget at all (strict-pair: 0 % and no minimum), the same 503 is not retried...
    strict = await client.post("/v1/chat/completions", json=chat("strict-pair", "one"))
    assert strict.status == 503
    assert upstreams.calls[-1] == ("a", "strict-a")
    # ...but a broken deployment (refused) is still failed over: that spends no budget.
    upstreams.behaviour["a"] = refused
    broken = await client.post("/v1/chat/completions", json=chat("strict-pair", "two"))
    assert broken.status == 200 and broken.headers["x-gateway-provider"] == "b"


async def test_the_budget_caps_concurrent_retries_at_20_percent_of_active_requests(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    # 20 requests reach a together and all get its 503; each could fail over to b. The budget
    # (20 % of 20 active = 4, above the minimum of 3) lets 4 of them retry; 16 get a's 503.
    # Before: all 20 retried, so b got 20 calls.
    client = await gateway(aiohttp_client, upstreams)
    n = 20
    all_at_a = asyncio.Event()
    release_b = asyncio.Event()
    arrived = 0

    async def a_after_everyone(request: UpstreamRequest) -> MockResponse:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_at_a.set()
        await all_at_a.wait()
        return status_503(request)

    async def b_when_released(request: UpstreamRequest) -> MockResponse:
        await release_b.wait()
        return ok(request)

    upstreams.behaviour = {"a": a_after_everyone, "b": b_when_released}

    async def one(i: int) -> int:
        resp = await client.post("/v1/chat/completions", json=chat("pair", f"q{i}"))
        await resp.read()
        return resp.status

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    deadline = time.monotonic() + 5
    while sum(t.done() for t in tasks) < n - 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert sum(t.done() for t in tasks) == n - 4  # the refused ones answered, 4 wait on b
    release_b.set()
    statuses = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(statuses) == [200] * 4 + [503] * 16
    assert (upstreams.count("a"), upstreams.count("b")) == (20, 4)


# ----- item 11: x-should-retry: false, and the official SDK obeys it -------------------------------


async def sdk_call(
    client: TestClient, model: str, max_retries: int = 2
) -> tuple[openai.APIStatusError, float]:
    """One ``chat.completions.create`` with the SDK's own retries on; its error and duration."""
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=max_retries)
    started = time.perf_counter()
    try:
        # Bounded: without x-should-retry the SDK would sleep out a Retry-After of 30 s twice.
        with pytest.raises(openai.APIStatusError) as err:
            await asyncio.wait_for(sdk.chat.completions.create(**chat(model)), 10)  # type: ignore[call-overload]
    finally:
        await sdk.close()
    return err.value, time.perf_counter() - started


async def test_sdk_does_not_retry_an_open_breaker(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams, BREAKER_POLICY)
    upstreams.behaviour["a"] = status_503
    opened = await client.post("/v1/chat/completions", json=chat("once"))  # the breaker opens
    assert opened.status == 503 and "x-should-retry" not in opened.headers  # one attempt only
    before = requests_received(client)

    error, elapsed = await sdk_call(client, "once")
    assert error.status_code == 503 and error.code == "no_healthy_deployment"
    # The breaker's open time left, rounded up (30 s open): 29 once a second passed since it
    # opened, as it did once on a loaded machine.
    assert 25 <= int(error.response.headers["retry-after"]) <= 30
    assert error.response.headers["x-should-retry"] == "false"
    assert requests_received(client) - before == 1  # not 3
    assert elapsed < 10, elapsed  # not 30 s or more of Retry-After
    assert len(upstreams.calls) == 1


async def test_sdk_does_not_retry_a_model_without_a_provider(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    error, elapsed = await sdk_call(client, "locked")
    assert error.status_code == 503 and error.code == "provider_not_configured"
    assert error.response.headers["x-should-retry"] == "false"
    assert requests_received(client) == 1
    assert elapsed < 1, elapsed
    assert upstreams.calls == []


async def test_sdk_does_not_retry_after_the_gateway_failed_over(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    upstreams.behaviour = {"a": status_503, "b": status_503}
    error, elapsed = await sdk_call(client, "pair")
    assert error.status_code == 503
    assert error.response.headers["x-should-retry"] == "false"
    assert requests_received(client) == 1
    # The gateway's own retries: both deployments, then a again (max_attempts 3), and no more.
    assert upstreams.calls == [("a", "pair-a"), ("b", "pair-b"), ("a", "pair-a")]
    assert elapsed < 1, elapsed


async def test_sdk_still_retries_what_the_gateway_tried_only_once(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    # "once" makes a single attempt: the gateway did not retry, so the client may.
    client = await gateway(aiohttp_client, upstreams)
    upstreams.behaviour["a"] = status_503
    error, _ = await sdk_call(client, "once", max_retries=1)
    assert error.status_code == 503 and "x-should-retry" not in error.response.headers
    assert requests_received(client) == 2
