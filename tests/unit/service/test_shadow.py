"""Shadow traffic (issue 13, item 4) over the whole request path in process: aiohttp's TestClient
in front, MockTransport behind. The served deployment is ``a``; the candidate is ``s``, a
provider no group lists; ``e`` serves embeddings for the cosine agreement."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.errors import UpstreamConnectError
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.service.shadow import ShadowTraffic
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
Behaviour = Callable[[UpstreamRequest], "MockResponse | Awaitable[MockResponse]"]


def policy(share: float = 1.0, max_in_flight: int = 20, embedding_model: str | None = None) -> str:
    embedding = f"\n      embedding_model: {embedding_model}" if embedding_model else ""
    return f"""
version: 1
auth: {{mode: open}}
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
  s: {{kind: openai, base_url: "http://s.test/v1"}}
  e: {{kind: openai, base_url: "http://e.test/v1"}}
models:
  m:
    deployments: [{{provider: a, model: ma}}]
    shadow:
      deployment: {{provider: s, model: cand, price: {{input_per_mtok: 1000, output_per_mtok: 2000}}}}
      share: {share}
      max_in_flight: {max_in_flight}{embedding}
  plain: {{deployments: [{{provider: a, model: ma}}]}}
  emb: {{deployments: [{{provider: e, model: ea}}]}}
memory: {{enabled: false}}
"""


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}


def completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chunk(model: str, content: str) -> bytes:
    event = {"id": "c", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(event) + b"\n\n"


def answering(text: str) -> Behaviour:
    def answer(request: UpstreamRequest) -> MockResponse:
        body = orjson.loads(request.body)
        if body.get("stream"):
            half = len(text) // 2
            return MockResponse.stream([chunk(body["model"], text[:half]), chunk(body["model"], text[half:]),
                                        b"data: [DONE]\n\n"])  # fmt: skip
        return MockResponse.json(completion(body["model"], text))

    return answer


def embeddings(request: UpstreamRequest) -> MockResponse:
    """'hello' is (1, 0); any other text (0.6, 0.8): their cosine is 0.6."""
    texts = orjson.loads(request.body)["input"]
    data = [{"object": "embedding", "index": i, "embedding": [1.0, 0.0] if t == "hello" else [0.6, 0.8]}
            for i, t in enumerate(texts)]  # fmt: skip
    return MockResponse.json({"object": "list", "data": data, "model": "ea"})


class Upstreams:
    """A MockTransport per provider; ``calls`` keeps (provider, parsed body) of each request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.behaviour: dict[str, Behaviour] = {
            "a": answering("hello"), "s": answering("hello"), "e": embeddings,
        }  # fmt: skip
        self.transports = {name: MockTransport(self._handler(name)) for name in ("a", "s", "e")}

    def _handler(self, name: str) -> Callable[[UpstreamRequest], Awaitable[MockResponse]]:
        async def handle(request: UpstreamRequest) -> MockResponse:
            self.calls.append((name, orjson.loads(request.body)))
            answer = self.behaviour[name](request)
            return await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[return-value]

        return handle

    def to(self, provider: str) -> list[dict[str, Any]]:
        return [body for name, body in self.calls if name == provider]


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


async def gateway(
    aiohttp_client: ClientFactory, upstreams: Upstreams, text: str | None = None, seed: int = 1
) -> TestClient:
    app = build_app(
        Settings(access_log=False),
        parse_policy(text or policy()),
        {},
        transports=upstreams.transports,
        rng=random.Random(seed),
    )
    return await aiohttp_client(app)


def shadow_of(client: TestClient) -> ShadowTraffic:
    return client.app[keys.SHADOW]  # type: ignore[index]


def figures(client: TestClient, group: str = "m") -> dict[str, Any]:
    rows = [row for row in shadow_of(client).snapshot()["data"] if row["model"] == group]
    assert len(rows) == 1, rows
    return rows[0]


def metric(client: TestClient, name: str, **labels: str) -> float:
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    return registry.get_sample_value(name, labels) or 0.0


LABELS = {"model": "m", "provider": "s", "upstream_model": "cand"}


async def test_the_share_of_requests_mirrored_follows_the_setting(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams, policy(share=0.05, max_in_flight=1000))
    for _ in range(2000):
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        await resp.read()
    await shadow_of(client).settle()
    mirrored = len(upstreams.to("s"))
    assert len(upstreams.to("a")) == 2000
    assert 80 <= mirrored <= 120  # 5 % +- 1 point of 2,000
    row = figures(client)
    assert row["mirrored"] == row["ok"] == mirrored and row["dropped"] == row["errors"] == 0
    assert metric(client, "gateway_shadow_requests_total", **LABELS, result="ok") == mirrored
    # The candidate got the client's body with its own upstream model.
    assert all(body["model"] == "cand" and body["messages"] == CHAT["messages"] for body in upstreams.to("s"))


async def test_a_group_without_shadow_mirrors_nothing(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    for _ in range(20):
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "plain"})).status == 200
    await shadow_of(client).settle()
    assert upstreams.to("s") == []
    assert figures(client)["mirrored"] == 0  # m's candidate is listed (configured), with nothing yet


async def test_no_mirror_for_a_cache_hit_and_the_candidate_is_never_cached(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    upstreams.behaviour["s"] = answering("the candidate's answer")
    client = await gateway(aiohttp_client, upstreams)
    body = {**CHAT, "temperature": 0}  # cacheable
    first = await client.post("/v1/chat/completions", json=body)
    assert first.headers["x-gateway-cache"] == "miss"
    await shadow_of(client).settle()
    assert len(upstreams.to("s")) == 1
    for _ in range(3):
        hit = await client.post("/v1/chat/completions", json=body)
        assert hit.headers["x-gateway-cache"] == "hit"
        assert (await hit.json())["choices"][0]["message"]["content"] == "hello"  # the served answer
    await shadow_of(client).settle()
    assert len(upstreams.to("s")) == 1  # no mirror for the hits
    assert figures(client)["mirrored"] == 1
    # The candidate's answer was stored nowhere: the one entry is the served answer.
    cache = client.app[keys.CACHE]  # type: ignore[index]
    assert cache.store.usage("common_queries").entries == 1


async def test_mirrors_never_reach_the_routers_live_figures_or_costs(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    for _ in range(5):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await shadow_of(client).settle()
    assert len(upstreams.to("s")) == 5
    router = client.app[keys.ROUTER]  # type: ignore[index]
    assert [t.provider for t in router.targets("m")] == ["a"]
    assert {(p, m) for p, m, _ in router.breaker_states()} == {("a", "ma"), ("e", "ea")}
    assert router.targets("m")[0].live.stats.in_flight == 0
    models = await (await client.get("/admin/models")).text()
    assert "cand" not in models
    assert (
        metric(
            client, "gateway_upstream_requests_total", provider="s", upstream_model="cand", outcome="success"
        )
        == 0
    )
    assert metric(client, "gateway_cost_usd_total", model="m", provider="s", upstream_model="cand") == 0
    # Its cost is counted apart: 3 prompt tokens at $1000/M and 2 completion tokens at $2000/M, 5 times.
    assert metric(client, "gateway_shadow_cost_usd_total", **LABELS) == pytest.approx(5 * 0.007)
    assert figures(client)["cost_usd"] == pytest.approx(0.035)


async def test_a_hanging_candidate_fills_max_in_flight_then_mirrors_are_dropped_and_counted(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    release = asyncio.Event()

    async def hang(request: UpstreamRequest) -> MockResponse:
        await release.wait()
        return answering("late")(request)  # type: ignore[return-value]

    upstreams.behaviour["s"] = hang
    client = await gateway(aiohttp_client, upstreams, policy(max_in_flight=2))
    for _ in range(5):
        started = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == "hello"
        assert time.perf_counter() - started < 1.0  # the client never waits for the candidate
    row = figures(client)
    assert (row["mirrored"], row["dropped"], row["in_flight"]) == (2, 3, 2)
    assert metric(client, "gateway_shadow_requests_total", **LABELS, result="dropped") == 3
    release.set()
    await shadow_of(client).settle()
    row = figures(client)
    assert (row["ok"], row["in_flight"]) == (2, 0)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200  # room again
    await shadow_of(client).settle()
    assert figures(client)["ok"] == 3


@pytest.mark.parametrize(
    ("failure", "error_type"),
    [
        (lambda r: MockResponse.json({"error": {"message": "down", "type": "server_error"}}, status=503),
         "UpstreamStatusError"),
        (lambda r: (_ for _ in ()).throw(UpstreamConnectError("refused", provider="s")), "UpstreamConnectError"),
        (lambda r: MockResponse(200, b"not json", {"Content-Type": "application/json"}), "UpstreamBadResponse"),
    ],
)  # fmt: skip
async def test_candidate_errors_are_counted_and_never_reach_the_client(
    aiohttp_client: ClientFactory, upstreams: Upstreams, failure: Behaviour, error_type: str
) -> None:
    upstreams.behaviour["s"] = failure
    client = await gateway(aiohttp_client, upstreams)
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert resp.status == 200
        text = await resp.text()
        assert "llo" in text and "error" not in text
    await shadow_of(client).settle()
    row = figures(client)
    assert (row["mirrored"], row["ok"], row["errors"]) == (2, 0, 2)
    assert row["error_types"] == {error_type: 2} and row["error_rate"] == 1.0
    assert metric(client, "gateway_shadow_requests_total", **LABELS, result="error") == 2
    assert (
        metric(
            client,
            "gateway_upstream_errors_total",
            provider="s",
            upstream_model="cand",
            error_type=error_type,
        )
        == 0
    )
    breakers = {(p, m): s for p, m, s in client.app[keys.ROUTER].breaker_states()}  # type: ignore[index]
    assert ("s", "cand") not in breakers


async def test_agreement_exact_match_and_length_ratio(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200  # same text
    await shadow_of(client).settle()
    upstreams.behaviour["s"] = answering("hello hello")  # 11 characters against 5
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await shadow_of(client).settle()
    agreement = figures(client)["agreement"]
    assert agreement["compared"] == 2
    assert agreement["exact_match_rate"] == 0.5
    assert agreement["mean_length_ratio"] == pytest.approx((1 + 11 / 5) / 2)
    assert agreement["mean_cosine"] is None and agreement["measure"] == "length"
    # the distribution bins each score (1 for the exact one, 5/11 for the other)
    assert agreement["distribution"]["0.9-1.0"] == 1 and agreement["distribution"]["0.4-0.5"] == 1
    assert metric(client, "gateway_shadow_agreement_count", **LABELS, measure="length") == 2


async def test_agreement_by_cosine_of_embeddings_from_the_policys_embedding_model(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    upstreams.behaviour["s"] = answering("goodbye")
    client = await gateway(aiohttp_client, upstreams, policy(embedding_model="emb"))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await shadow_of(client).settle()
    agreement = figures(client)["agreement"]
    assert agreement["cosine_compared"] == 1 and agreement["mean_cosine"] == pytest.approx(0.6)
    assert agreement["measure"] == "cosine" and agreement["distribution"]["0.6-0.7"] == 1
    assert upstreams.to("e")[0]["input"] == ["hello", "goodbye"]
    assert metric(client, "gateway_shadow_agreement_sum", **LABELS, measure="cosine") == pytest.approx(0.6)
    assert len(upstreams.to("s")) == 1  # the internal embeddings call was not itself mirrored


async def test_a_stream_is_mirrored_whole_after_it_ended(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    # Cacheable, so the stream is captured: its delivered text is compared.
    resp = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0, "stream": True,
                                                           "stream_options": {"include_usage": True}})  # fmt: skip
    assert "llo" in await resp.text()
    await shadow_of(client).settle()
    [mirrored] = upstreams.to("s")
    assert "stream" not in mirrored and "stream_options" not in mirrored and mirrored["model"] == "cand"
    row = figures(client)
    assert (
        row["ok"] == 1 and row["agreement"]["compared"] == 1 and row["agreement"]["exact_match_rate"] == 1.0
    )
    # Not captured (not cacheable): measured, but the served text is not known cheaply.
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await resp.read()
    await shadow_of(client).settle()
    row = figures(client)
    assert row["ok"] == 2 and row["agreement"]["compared"] == 1


async def test_admin_shadow_and_metrics(aiohttp_client: ClientFactory, upstreams: Upstreams) -> None:
    client = await gateway(aiohttp_client, upstreams)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await shadow_of(client).settle()
    resp = await client.get("/admin/shadow")
    assert resp.status == 200
    [row] = (await resp.json())["data"]
    assert {k: row[k] for k in ("model", "provider", "upstream_model", "configured", "share", "max_in_flight")} == {
        "model": "m", "provider": "s", "upstream_model": "cand", "configured": True, "share": 1.0, "max_in_flight": 20,
    }  # fmt: skip
    assert (row["mirrored"], row["ok"], row["errors"], row["dropped"], row["error_rate"]) == (1, 1, 0, 0, 0.0)
    assert row["latency_ms"]["samples"] == 1 and row["latency_ms"]["p50"] == row["latency_ms"]["p95"] >= 0
    assert row["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    text = await (await client.get("/metrics")).text()
    for line in (
        'gateway_shadow_requests_total{model="m",provider="s",result="ok",upstream_model="cand"} 1.0',
        'gateway_shadow_latency_seconds_count{model="m",provider="s",upstream_model="cand"} 1.0',
        'gateway_shadow_cost_usd_total{model="m",provider="s",upstream_model="cand"} 0.007',
        'gateway_shadow_agreement_count{measure="length",model="m",provider="s",upstream_model="cand"} 1.0',
    ):
        assert line in text, line


async def test_admin_shadow_needs_the_admin_token(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    app = build_app(
        Settings(access_log=False, admin_token="t0ken"),
        parse_policy(policy()),
        {},
        transports=upstreams.transports,
    )
    client = await aiohttp_client(app)
    assert (await client.get("/admin/shadow")).status == 401
    assert (await client.get("/admin/shadow", headers={"Authorization": "Bearer t0ken"})).status == 200


async def test_shutdown_cancels_mirrors_still_outstanding(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    cancelled = asyncio.Event()

    async def hang(request: UpstreamRequest) -> MockResponse:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    upstreams.behaviour["s"] = hang
    client = await gateway(aiohttp_client, upstreams)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    shadow = shadow_of(client)
    deadline = time.monotonic() + 5
    while not upstreams.to("s") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert shadow.in_flight == 1
    await client.close()  # the app's cleanup
    assert cancelled.is_set() and shadow.in_flight == 0
    assert figures(client)["in_flight"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"model": "m", "input": "hi", "store": False}),
    ],
)
async def test_a_front_doors_calls_are_mirrored_as_their_chat_translation(
    aiohttp_client: ClientFactory, upstreams: Upstreams, path: str, body: dict[str, Any]
) -> None:
    client = await gateway(aiohttp_client, upstreams)
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    await shadow_of(client).settle()
    [mirrored] = upstreams.to("s")  # the candidate got the chat request the served kind got
    assert mirrored["model"] == "cand" and mirrored["messages"][-1] == {"role": "user", "content": "hi"}
    agreement = figures(client)["agreement"]  # the door's answer's text against the candidate's
    assert agreement["compared"] == 1 and agreement["exact_match_rate"] == 1.0
    upstreams.behaviour["s"] = answering("hello hello")
    assert (await client.post(path, json=body)).status == 200
    await shadow_of(client).settle()
    agreement = figures(client)["agreement"]
    assert agreement["compared"] == 2 and agreement["exact_match_rate"] == 0.5
    # A stream through the door is mirrored whole after it ended (latency, errors, cost).
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200 and "llo" in await resp.text()
    await shadow_of(client).settle()
    row = figures(client)
    assert row["ok"] == 3 and row["agreement"]["compared"] == 2
    assert "stream" not in upstreams.to("s")[-1]


async def test_the_candidates_cached_prompt_tokens_cost_its_cache_price(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """h-cost: the candidate's price with a cached-input price charges the prompt tokens its
    provider read from its prompt cache at that price (2 of 3 here), as served calls are."""

    def cached(request: UpstreamRequest) -> MockResponse:
        answer = completion(orjson.loads(request.body)["model"], "hello")
        answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 2}
        return MockResponse.json(answer)

    upstreams.behaviour["s"] = cached
    text = policy().replace(
        "price: {input_per_mtok: 1000, output_per_mtok: 2000}",
        "price: {input_per_mtok: 1000, output_per_mtok: 2000, cached_input_per_mtok: 100}",
    )
    client = await gateway(aiohttp_client, upstreams, text)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await shadow_of(client).settle()
    # 1 prompt token at $1000/M, 2 cached at $100/M, 2 completion tokens at $2000/M (was $0.007)
    assert metric(client, "gateway_shadow_cost_usd_total", **LABELS) == pytest.approx(0.0052)


async def test_the_candidates_long_prompt_costs_its_tier_price(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """h-tierprice: a candidate priced with a tier above 2 prompt tokens charges a 3-token
    prompt, input and output, at the tier's prices, as served calls are."""
    text = policy().replace(
        "price: {input_per_mtok: 1000, output_per_mtok: 2000}",
        "price: {input_per_mtok: 1000, output_per_mtok: 2000, "
        "tiers: [{above_input_tokens: 2, input_per_mtok: 10000, output_per_mtok: 20000}]}",
    )
    client = await gateway(aiohttp_client, upstreams, text)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await shadow_of(client).settle()
    # 3 prompt tokens at $10000/M and 2 completion tokens at $20000/M (the base: $0.007)
    assert metric(client, "gateway_shadow_cost_usd_total", **LABELS) == pytest.approx(0.07)


async def test_a_candidate_declared_without_reasoning_is_mirrored_no_effort(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """``shadow.deployment.reasoning: false`` (h-reason): a candidate without reasoning (gpt-4o
    tried beside o3) would refuse the client's ``reasoning_effort``, every mirror an error."""
    text = policy().replace("price: {input_per_mtok", "reasoning: false, price: {input_per_mtok")
    client = await gateway(aiohttp_client, upstreams, text)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": "high"})
    assert resp.status == 200 and resp.headers.get("x-gateway-reasoning-effort") is None
    await shadow_of(client).settle()
    assert upstreams.to("a")[0]["reasoning_effort"] == "high"
    assert len(upstreams.to("s")) == 1 and "reasoning_effort" not in upstreams.to("s")[0]
