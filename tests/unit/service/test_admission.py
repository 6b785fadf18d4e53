"""Keys' limits on the whole request path in process (TestClient in front, MockTransport behind):
RPM, TPM reservations settled from usage (whole answers and streams), budgets, OpenAI's refusal
shapes and x-ratelimit-* headers, the spend metrics and /admin/usage."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import reservation
from gateway.auth.identity import Caller
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.wire.requests import Endpoint

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma, price: {input_per_mtok: 100000, output_per_mtok: 100000}}]}
memory: {enabled: false}
"""
SECRET = "sk-sg-limit0000000000000000000000000000"
ADMIN = "admin-token-for-tests"
_unique = itertools.count()


def chat(**extra: object) -> dict[str, object]:
    # A new prompt each time: no cache hits unless a test wants one.
    return {"model": "m", "messages": [{"role": "user", "content": f"hi{next(_unique):03d}"}], **extra}


def upstream(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}  # cost: $0.5 each
    if body.get("stream"):
        if body.get("hang"):
            return MockResponse.stream(_hanging())
        if body.get("no_usage"):  # as OpenAI streams unless asked for stream_options.include_usage
            event = {"id": "c", "object": "chat.completion.chunk", "model": "ma",
                     "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "stop"}]}  # fmt: skip
            return MockResponse.stream([b"data: " + orjson.dumps(event) + b"\n\n", b"data: [DONE]\n\n"])
        event = {"id": "c", "object": "chat.completion.chunk", "model": "ma",
                 "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "stop"}]}  # fmt: skip
        tail = {"id": "c", "object": "chat.completion.chunk", "model": "ma", "choices": [], "usage": usage}
        return MockResponse.stream(
            [
                b"data: " + orjson.dumps(event) + b"\n\n",
                b"data: " + orjson.dumps(tail) + b"\n\n",
                b"data: [DONE]\n\n",
            ]
        )
    answer = {
        "id": "x",
        "object": "chat.completion",
        "model": "ma",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    if body.get("no_usage"):  # some compatible servers answer without usage
        del answer["usage"]
    return MockResponse.json(answer)


async def _hanging() -> AsyncIterator[bytes]:
    event = {"id": "c", "object": "chat.completion.chunk", "model": "ma",
             "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": None}]}  # fmt: skip
    yield b"data: " + orjson.dumps(event) + b"\n\n"
    await asyncio.Event().wait()  # until the client leaves and the call is cancelled


@dataclass
class Ring:
    callers: dict[str, Caller] = field(default_factory=dict)

    async def authenticate(self, secret: str) -> Caller | None:
        return self.callers.get(secret)


async def gateway(aiohttp_client: ClientFactory, caller: Caller, policy: str = POLICY) -> TestClient:
    app = build_app(
        Settings(access_log=False, admin_token=ADMIN),
        parse_policy(policy),
        {},
        transports={"a": MockTransport(upstream)},
    )
    app[keys.KEYRING] = Ring({SECRET: caller})
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


AUTH = {"Authorization": f"Bearer {SECRET}"}


def metric(client: TestClient, name: str, **labels: str) -> float:
    return client.app[keys.METRICS].registry.get_sample_value(name, labels) or 0.0  # type: ignore[index]


async def test_rpm_refusal_is_openais_429_with_headers_on_every_answer(aiohttp_client: ClientFactory) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", rpm=2))
    first = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-ratelimit-limit-tokens" not in first.headers  # no TPM limit on this key
    second = await client.post("/v1/chat/completions", json=chat(stream=True), headers=AUTH)
    assert second.status == 200 and second.headers["x-ratelimit-remaining-requests"] == "0"
    await second.read()
    third = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    assert third.status == 429
    assert (await third.json())["error"]["code"] == "rate_limit_exceeded"
    assert (await third.json())["error"]["type"] == "requests"
    assert 59 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-request-id"]
    assert metric(client, "gateway_refusals_total", team="blue", reason="requests") == 1


async def test_the_openai_sdk_sees_a_rate_limit_error(aiohttp_client: ClientFactory) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", rpm=1))
    sdk = openai.AsyncOpenAI(api_key=SECRET, base_url=str(client.make_url("/v1")), max_retries=0)
    await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
    assert refused.value.code == "rate_limit_exceeded"
    await sdk.close()


async def test_tpm_reserves_max_tokens_and_settles_to_the_reported_usage(
    aiohttp_client: ClientFactory,
) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", tpm=300))
    # "hi001" is 2 prompt tokens by the estimate (chars / 4 + 1): reserves 2 + 250 = 252 of 300.
    first = await client.post("/v1/chat/completions", json=chat(max_tokens=250), headers=AUTH)
    assert first.status == 200
    assert first.headers["x-ratelimit-remaining-tokens"] == "48"
    # Settled to the 5 tokens the provider reported: 295 left, so 252 fits again.
    second = await client.post("/v1/chat/completions", json=chat(max_tokens=250), headers=AUTH)
    assert second.status == 200 and second.headers["x-ratelimit-remaining-tokens"] == "43"
    third = await client.post("/v1/chat/completions", json=chat(max_tokens=290), headers=AUTH)  # 292 > 290
    assert third.status == 429
    assert (await third.json())["error"]["type"] == "tokens"
    assert third.headers["x-ratelimit-limit-tokens"] == "300"


async def test_a_request_larger_than_the_whole_tpm_is_refused_without_a_retry(
    aiohttp_client: ClientFactory,
) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", tpm=300))
    sdk = openai.AsyncOpenAI(api_key=SECRET, base_url=str(client.make_url("/v1")), max_retries=3)
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "a"}], max_tokens=5000
        )
    await sdk.close()
    assert refused.value.code == "rate_limit_exceeded"
    assert (
        "limit 300, requested 5001" in refused.value.message and "Lower max_tokens" in refused.value.message
    )
    assert refused.value.response.headers["x-should-retry"] == "false"  # waiting cannot make it fit
    assert "retry-after" not in refused.value.response.headers
    assert (
        metric(
            client,
            "gateway_requests_total",
            endpoint="/v1/chat/completions",
            model="m",
            provider="",
            status_code="429",
        )
        == 1
    )  # one attempt, not four
    assert metric(client, "gateway_refusals_total", team="blue", reason="tokens") == 1
    await client.app[keys.LIMITS].drain()  # type: ignore[index]
    usage = await client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
    (row,) = (await usage.json())["data"]
    assert (row["requests"], row["refusals"]) == (0, {"tokens": 1})  # the usage rows count it too


async def test_a_stream_settles_when_it_ends_and_an_abandoned_one_keeps_its_reservation(
    aiohttp_client: ClientFactory,
) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", tpm=1000))
    whole = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=400), headers=AUTH)
    assert whole.status == 200 and whole.headers["x-ratelimit-remaining-tokens"] == "598"
    await whole.read()  # ended: settled to 5 tokens
    probe = await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=AUTH)
    assert probe.headers["x-ratelimit-remaining-tokens"] == str(1000 - 5 - 3)
    # The client leaves mid-stream: the reservation (402) stands, since the provider spent tokens.
    left = await client.post(
        "/v1/chat/completions", json=chat(stream=True, max_tokens=400, hang=True), headers=AUTH
    )
    assert left.status == 200
    await left.content.readany()  # the first chunk is in; the provider then hangs
    left.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while metric(client, "gateway_requests_in_flight") > 0:  # the server saw the client leave
        assert loop.time() < deadline, "the abandoned stream never ended"
        await asyncio.sleep(0.01)
    probe = await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=AUTH)
    assert probe.headers["x-ratelimit-remaining-tokens"] == str(1000 - 5 - 5 - 402 - 3)
    usage = await client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
    (row,) = (await usage.json())["data"]
    assert row["requests"] == 4  # the abandoned stream was settled (counted), not forgotten
    assert row["tokens_in"] + row["tokens_out"] == 5 + 5 + 402 + 5


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_budget_key_is_charged_its_estimate_when_the_provider_never_says_its_usage(
    aiohttp_client: ClientFactory, stream: bool
) -> None:
    """A key with a budget and no TPM reserved nothing, so a stream without usage (OpenAI's
    default: no stream_options.include_usage) or an answer without it settled at 0 input
    tokens: a 40,000-character prompt cost nothing against the budget."""
    client = await gateway(aiohttp_client, Caller("k1", "blue", budget_usd=1000.0, budget_period_s=86400.0))
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40_000}], "max_tokens": 5}
    resp = await client.post(
        "/v1/chat/completions", json={**body, "stream": stream, "no_usage": True}, headers=AUTH
    )
    assert resp.status == 200
    await resp.read()
    await client.app[keys.LIMITS].drain()  # type: ignore[index]
    usage = await client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
    (row,) = (await usage.json())["data"]
    estimate = 40_000 // 4 + 1 + 5  # gate.reservation: prompt characters / 4 + 1, plus max_tokens
    assert row["tokens_in"] + row["tokens_out"] == estimate
    assert row["cost_usd"] == pytest.approx(estimate * 100_000 / 1_000_000, rel=0.01)  # $1,000.6: the budget
    refused = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    assert refused.status == 429  # the spend counted against the budget


async def test_budget_spent_is_insufficient_quota_and_spend_is_exported(
    aiohttp_client: ClientFactory,
) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", budget_usd=0.9, budget_period_s=86400.0))
    for _ in range(2):  # 0.5 each: the second starts with 0.5 spent, so it is admitted
        assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status == 200
    refused = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert refused.headers["x-should-retry"] == "false"
    assert metric(client, "gateway_spend_usd_total", team="blue") == pytest.approx(1.0)
    assert metric(client, "gateway_refusals_total", team="blue", reason="budget") == 1

    usage = await client.get("/admin/usage?team=blue", headers={"Authorization": f"Bearer {ADMIN}"})
    assert usage.status == 200
    body = await usage.json()
    assert [(r["key"], r["requests"], r["tokens_in"], r["tokens_out"]) for r in body["data"]] == [
        ("k1", 2, 6, 4)
    ]
    assert body["total"]["cost_usd"] == pytest.approx(1.0)
    assert body["total"]["refusals"] == {"budget": 1}
    assert (await client.get("/admin/usage")).status == 401
    assert (
        await client.get("/admin/usage?from=bad", headers={"Authorization": f"Bearer {ADMIN}"})
    ).status == 400


async def test_open_mode_has_no_limits_and_no_headers(aiohttp_client: ClientFactory) -> None:
    client = await gateway(aiohttp_client, Caller("k1", "blue", rpm=1), POLICY + "auth: {mode: open}\n")
    assert client.app[keys.SERVICE]._gates == ()  # type: ignore[index]
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers


async def test_a_rule_does_not_take_a_key_to_a_group_outside_its_models(
    aiohttp_client: ClientFactory,
) -> None:
    """The client sets the tags a rule matches on: a key limited to ``m`` reached the group
    ``secret`` by sending ``x-gateway-tags: premium``. The rule does not apply to that key; a key
    that may use ``secret`` still follows it."""
    policy = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m:
    rules: [{when: {tags: [premium]}, use: secret}]
    deployments: [{provider: a, model: ma}]
  secret: {deployments: [{provider: a, model: hidden}]}
memory: {enabled: false}
"""
    tagged = {**AUTH, "x-gateway-tags": "premium"}
    client = await gateway(aiohttp_client, Caller("k1", "blue", models=frozenset({"m"})), policy)
    resp = await client.post("/v1/chat/completions", json=chat(), headers=tagged)
    assert resp.status == 200 and resp.headers["x-gateway-model"] == "ma", resp.headers
    assert "x-gateway-group" not in resp.headers  # served by the group it asked for
    client = await gateway(aiohttp_client, Caller("k2", "blue", models=frozenset({"m", "secret"})), policy)
    resp = await client.post("/v1/chat/completions", json=chat(), headers=tagged)
    assert resp.status == 200 and resp.headers["x-gateway-group"] == "secret"
    assert resp.headers["x-gateway-model"] == "hidden"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_client_that_leaves_while_the_provider_works_keeps_its_reservation(
    aiohttp_client: ClientFactory, aiohttp_server: Callable[..., Awaitable[Any]], stream: bool
) -> None:
    """The client leaves after its request reached the provider and before any answer came:
    the provider spent tokens, as for a stream left half way, so the reservation stands and its
    cost counts. It was released: a key could send long prompts and leave before each answer,
    never charged. A real provider (an aiohttp server that holds its answers) and transport."""
    arrived = asyncio.Event()

    async def holds(request: web.Request) -> web.StreamResponse:
        if arrived.is_set():  # a later call: answered at once
            return web.json_response(orjson.loads(upstream(UpstreamRequest("", b"{}", False)).body))
        await request.read()
        if stream:  # headers, then nothing
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b": keep-alive\n\n")
        arrived.set()
        await asyncio.Event().wait()  # until the gateway closes the connection
        raise AssertionError("unreachable")

    provider = web.Application()
    provider.router.add_post("/v1/chat/completions", holds)
    server = await aiohttp_server(provider)  # (its handlers are cancelled when a connection closes)
    policy = POLICY.replace("http://a.test/v1", str(server.make_url("/v1")))
    app = build_app(Settings(access_log=False, admin_token=ADMIN), parse_policy(policy), {})
    app[keys.KEYRING] = Ring({SECRET: Caller("k1", "blue", tpm=1000)})
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    left = asyncio.create_task(
        client.post("/v1/chat/completions", json=chat(stream=stream, max_tokens=400), headers=AUTH)
    )
    async with asyncio.timeout(5):
        await arrived.wait()
    left.cancel()  # the client goes away
    async with asyncio.timeout(5):
        while metric(client, "gateway_requests_total", endpoint="/v1/chat/completions", model="m",
                     provider="", status_code="499") == 0:  # fmt: skip
            await asyncio.sleep(0.01)
    probe = await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=AUTH)
    assert probe.headers["x-ratelimit-remaining-tokens"] == str(1000 - 402 - 3)  # 402: its estimate
    await client.app[keys.LIMITS].drain()  # type: ignore[index]
    usage = await client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
    row = (await usage.json())["data"][0]
    assert row["tokens_in"] + row["tokens_out"] >= 402
    assert row["cost_usd"] >= 402 * 100_000 / 1_000_000 * 0.99  # at the deployment's prices


@pytest.mark.parametrize(
    ("endpoint", "body", "tokens"),
    [
        (Endpoint.EMBEDDINGS, {"input": [[7] * 4000]}, 4000 + 1),
        (Endpoint.EMBEDDINGS, {"input": [7] * 4000}, 4000 + 1),  # one array, given bare
        (Endpoint.EMBEDDINGS, {"input": [[7] * 2000, [7] * 2000]}, 4000 + 1),
        (Endpoint.COMPLETIONS, {"prompt": [7] * 4000, "max_tokens": 5}, 4000 + 1 + 5),
        (Endpoint.EMBEDDINGS, {"input": ["x" * 4000]}, 1000 + 1),  # text: 4 characters a token
        (Endpoint.EMBEDDINGS, {"input": "x" * 4000}, 1000 + 1),
    ],
)
def test_token_id_arrays_reserve_one_token_an_id(
    endpoint: Endpoint, body: dict[str, Any], tokens: int
) -> None:
    """(h-probe) Embeddings and legacy completions take token-id arrays, which only strings'
    characters were counted for: 4,000 ids reserved 1 token at admission (the provider's
    reported usage settled it later, but concurrent requests passed a TPM limit meanwhile)."""
    assert reservation(endpoint, body) == tokens
