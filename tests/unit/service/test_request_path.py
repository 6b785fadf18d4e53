"""The whole request path in process: aiohttp's TestClient in front, MockTransport behind.

Everything between (middleware, handler, request service, cache, router, provider client,
adapters, SSE writer) is the real code; only the network to providers is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.cache.fingerprint import tenant_of
from gateway.cache.memory_store import MemoryStore
from gateway.cache.store import CategoryBudget
from gateway.errors import UpstreamConnectError
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.service.calls import _StreamBook
from gateway.service.context import CallContext
from gateway.service.streams import RoutedStream
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.wire.requests import Endpoint

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
  b: {kind: openai, base_url: "http://b.test/v1"}
  c: {kind: openai, base_url: "http://c.test/v1"}
models:
  m:
    strategy: ordered
    deployments: [{provider: a, model: ma}, {provider: b, model: mb}, {provider: c, model: mc}]
    rules: [{when: {tags: [cheap]}, use: cheap}]
  cheap: {deployments: [{provider: c, model: mc}]}
  emb: {deployments: [{provider: a, model: ea}]}
memory: {enabled: false}
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def completion(model: str, text: str = "hello") -> dict[str, Any]:
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


DONE = b"data: [DONE]\n\n"


def model_of(request: UpstreamRequest) -> str:
    return str(orjson.loads(request.body)["model"])


class Upstreams:
    """One MockTransport per provider; every request lands in ``calls`` as (provider, model)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.behaviour: dict[str, Callable[[UpstreamRequest], MockResponse | Awaitable[MockResponse]]] = {}
        self.transports = {name: MockTransport(self._handler(name)) for name in ("a", "b", "c")}

    def _handler(self, name: str) -> Callable[[UpstreamRequest], Awaitable[MockResponse]]:
        async def handle(request: UpstreamRequest) -> MockResponse:
            self.calls.append((name, model_of(request)))
            behaviour = self.behaviour.get(name, ok)
            answer = behaviour(request)
            return await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[return-value]

        return handle


def ok(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if body.get("stream"):
        return MockResponse.stream([chunk(body["model"], "hel"), chunk(body["model"], "lo"), DONE])
    return MockResponse.json(completion(body["model"]))


def refused(request: UpstreamRequest) -> MockResponse:
    raise UpstreamConnectError("refused", provider="x")


def status_503(request: UpstreamRequest) -> MockResponse:
    return MockResponse.json({"error": {"message": "down", "type": "server_error"}}, status=503)


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, upstreams: Upstreams) -> TestClient:
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=upstreams.transports)
    return await aiohttp_client(app)


def metric(client: TestClient, name: str, **labels: str) -> float:
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    return registry.get_sample_value(name, labels) or 0.0


async def test_failover_goes_down_the_plan_in_order(client: TestClient, upstreams: Upstreams) -> None:
    upstreams.behaviour = {"a": refused, "b": status_503}
    resp = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.5})
    assert resp.status == 200
    assert (await resp.json())["model"] == "mc"
    assert upstreams.calls == [("a", "ma"), ("b", "mb"), ("c", "mc")]
    assert resp.headers["x-gateway-provider"] == "c"
    assert resp.headers["x-gateway-model"] == "mc"
    assert resp.headers["x-gateway-attempts"] == "3"
    assert resp.headers["x-gateway-fallback"] == "true"


async def test_response_headers_of_a_routed_and_a_cached_answer(client: TestClient) -> None:
    first = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-1"})
    assert first.status == 200
    assert first.headers["x-request-id"] == "req-1"
    assert first.headers["x-gateway-provider"] == "a"
    assert first.headers["x-gateway-attempts"] == "1"
    assert first.headers["x-gateway-fallback"] == "false"
    assert first.headers["x-gateway-cache"] == "miss"
    assert "x-gateway-group" not in first.headers
    second = await client.post("/v1/chat/completions", json=CHAT)
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-provider"] == "cache"
    assert second.headers["x-gateway-model"] == "ma"
    assert second.headers["x-gateway-cache-match"] == "exact"
    assert await second.read() == await first.read()
    ruled = await client.post(
        "/v1/chat/completions", json={**CHAT, "temperature": 1}, headers={"x-gateway-tags": "cheap"}
    )
    assert ruled.headers["x-gateway-group"] == "cheap"
    assert ruled.headers["x-gateway-provider"] == "c"


async def test_a_rule_sends_a_request_to_its_own_cache_entries(client: TestClient) -> None:
    """The tags a rule matches on are not in the body: a plain request was served the answer a
    tagged one had cached from the rule's group (and the other way round), across keys whose
    models differ too. The group a rule picked is part of the key."""
    body = {**CHAT, "messages": [{"role": "user", "content": "which model?"}]}
    tagged = await client.post("/v1/chat/completions", json=body, headers={"x-gateway-tags": "cheap"})
    assert (tagged.headers["x-gateway-cache"], tagged.headers["x-gateway-provider"]) == ("miss", "c")
    plain = await client.post("/v1/chat/completions", json=body)
    assert (plain.headers["x-gateway-cache"], plain.headers["x-gateway-provider"]) == ("miss", "a")
    again = await client.post("/v1/chat/completions", json=body, headers={"x-gateway-tags": "cheap"})
    assert (again.headers["x-gateway-cache"], again.headers["x-gateway-model"]) == ("hit", "mc")
    again = await client.post("/v1/chat/completions", json=body)
    assert (again.headers["x-gateway-cache"], again.headers["x-gateway-model"]) == ("hit", "ma")


async def test_a_stream_failing_before_its_first_byte_fails_over_unseen(
    client: TestClient, upstreams: Upstreams
) -> None:
    async def nothing_then_reset() -> AsyncIterator[bytes]:
        raise UpstreamConnectError("a: connection reset", provider="a")
        yield b""  # pragma: no cover - makes this an async generator

    upstreams.behaviour = {"a": lambda r: MockResponse.stream(nothing_then_reset())}
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    text = await resp.text()
    assert resp.status == 200
    assert resp.headers["x-gateway-provider"] == "b"
    assert resp.headers["x-gateway-attempts"] == "2"
    assert text == (chunk("mb", "hel") + chunk("mb", "lo") + DONE).decode()
    assert "error" not in text


async def test_a_stream_cut_after_its_first_byte_ends_with_an_error_event_and_is_not_cached(
    client: TestClient, upstreams: Upstreams
) -> None:
    async def one_chunk_then_reset() -> AsyncIterator[bytes]:
        yield chunk("ma", "hel")
        raise UpstreamConnectError("a: connection reset", provider="a")

    upstreams.behaviour = {"a": lambda r: MockResponse.stream(one_chunk_then_reset())}
    body = {**CHAT, "stream": True}
    resp = await client.post("/v1/chat/completions", json=body)
    text = await resp.text()
    assert text.startswith(chunk("ma", "hel").decode())
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["error"]["message"] == (
        "a: the provider closed the stream before the answer was complete."
    )
    router = client.app[keys.ROUTER]  # type: ignore[index]
    live = router.targets("m")[0].live
    assert (live.stats.failures, live.stats.in_flight) == (1, 0)
    upstreams.behaviour = {}
    again = await client.post("/v1/chat/completions", json=body)
    assert again.headers["x-gateway-cache"] == "miss"  # the cut stream was not stored
    assert await again.text() == (chunk("ma", "hel") + chunk("ma", "lo") + DONE).decode()
    third = await client.post("/v1/chat/completions", json=body)
    assert third.headers["x-gateway-cache"] == "hit"  # the whole one was
    assert await third.text() == await again.text()


@pytest.mark.parametrize(
    ("name", "behaviour"),
    [
        ("provider 400", lambda r: MockResponse.json({"error": {"message": "bad", "type": "invalid_request_error"}}, 400)),
        ("stream without [DONE]", lambda r: MockResponse.stream([chunk("ma", "x")])),
        ("stream with an error event", lambda r: MockResponse.stream([chunk("ma", "x"), b'data: {"error": {"message": "boom"}}\n\n', DONE])),
    ],
)  # fmt: skip
async def test_what_is_never_stored(
    client: TestClient, upstreams: Upstreams, name: str, behaviour: Callable[[UpstreamRequest], MockResponse]
) -> None:
    upstreams.behaviour = {"a": behaviour, "b": behaviour, "c": behaviour}
    body = {**CHAT, "stream": name.startswith("stream")}
    await (await client.post("/v1/chat/completions", json=body)).read()
    calls = len(upstreams.calls)
    again = await client.post("/v1/chat/completions", json=body)
    await again.read()
    assert again.headers.get("x-gateway-cache") == "miss"
    assert len(upstreams.calls) > calls


class CountingStore(MemoryStore):
    """The in-process store, counting every read and write the cache makes."""

    def __init__(self, categories: Iterable[str]) -> None:
        super().__init__({name: CategoryBudget(name, 10**6) for name in categories})
        self.operations: list[str] = []

    def get_now(self, category: str, key: str) -> bytes | None:  # every read (``get`` calls it)
        self.operations.append("get")
        return super().get_now(category, key)

    async def set(self, category: str, key: str, value: bytes, ttl_s: float) -> int:
        self.operations.append("set")
        return await super().set(category, key, value, ttl_s)


async def test_an_invalid_request_never_touches_the_cache(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    policy = parse_policy(POLICY)
    store = CountingStore(policy.cache.categories)
    app = build_app(
        Settings(access_log=False), policy, {}, transports=upstreams.transports, cache_store=store
    )
    client = await aiohttp_client(app)
    bad = await client.post("/v1/chat/completions", json={**CHAT, "messages": "not a list"})
    assert bad.status == 400
    assert (await bad.json())["error"]["param"] == "messages"
    unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert unknown.status == 404
    for resp in (bad, unknown):
        assert "x-gateway-cache" not in resp.headers
    assert metric(client, "gateway_cache_requests_total", category="common_queries", result="miss") == 0
    assert store.operations == []
    assert upstreams.calls == []
    good = await client.post("/v1/chat/completions", json=CHAT)  # the same cacheable request, valid
    assert good.headers["x-gateway-cache"] == "miss" and store.operations == ["get", "set"]


async def test_a_client_that_leaves_mid_stream_closes_the_provider_request(
    client: TestClient, upstreams: Upstreams
) -> None:
    release = asyncio.Event()
    responses: list[MockResponse] = []

    async def first_then_wait() -> AsyncIterator[bytes]:
        yield chunk("ma", "hel")
        await release.wait()  # never set: only the client leaving ends this stream
        yield DONE

    def hold(request: UpstreamRequest) -> MockResponse:
        responses.append(MockResponse.stream(first_then_wait()))
        return responses[-1]

    upstreams.behaviour = {"a": hold}
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "temperature": 1})
    assert (await resp.content.readany()).startswith(b"data: ")
    resp.close()  # the client goes away
    router = client.app[keys.ROUTER]  # type: ignore[index]
    live = router.targets("m")[0].live
    for _ in range(500):  # until the server has seen the disconnect (bounded: 5 s)
        if metric(client, "gateway_requests_total", endpoint="/v1/chat/completions", model="m",
                  provider="a", status_code="499"):  # fmt: skip
            break
        await asyncio.sleep(0.01)
    assert metric(client, "gateway_requests_total", endpoint="/v1/chat/completions", model="m",
                  provider="a", status_code="499") == 1  # fmt: skip
    assert responses[0].closed
    assert (live.stats.in_flight, live.stats.failures, live.stats.successes) == (0, 0, 0)  # no verdict


async def test_internal_embeddings_share_one_flight_and_the_cache(
    client: TestClient, upstreams: Upstreams
) -> None:
    gate = asyncio.Event()

    async def embeddings(request: UpstreamRequest) -> MockResponse:
        await gate.wait()
        texts = orjson.loads(request.body)["input"]
        data = [{"object": "embedding", "index": i, "embedding": [1.0, float(i)]} for i in range(len(texts))]
        return MockResponse.json({"object": "list", "data": data, "model": "ea"})

    upstreams.behaviour = {"a": embeddings}
    service = client.app[keys.SERVICE]  # type: ignore[index]
    calls = [asyncio.create_task(service.embed("emb", ["x", "y"])) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    vectors = await asyncio.gather(*calls)
    assert vectors == [[[1.0, 0.0], [1.0, 1.0]]] * 5
    assert upstreams.calls == [("a", "ea")]  # five identical calls, one upstream request
    assert await service.embed("emb", ["x", "y"]) == vectors[0]
    assert len(upstreams.calls) == 1  # and then a cache hit


class BrokenStart(MockTransport):
    async def start(self) -> None:
        raise OSError("cannot open the pool")


async def test_a_provider_that_fails_to_start_closes_those_already_started(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    transports = {**upstreams.transports, "b": BrokenStart(ok)}
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    with pytest.raises(OSError, match="cannot open the pool"):
        await aiohttp_client(app)
    a, c = transports["a"], transports["c"]
    assert isinstance(a, MockTransport) and isinstance(c, MockTransport)
    assert a.started and a.closed  # opened before b failed, closed on the way out
    assert not c.started  # never opened


async def test_a_served_stream_is_freed_when_it_ends_not_left_to_the_cyclic_gc(
    client: TestClient, upstreams: Upstreams
) -> None:
    """A stream's objects (its generators, the provider response, the handler's task) are freed
    by reference counting when it ends. A cycle through them (the call's record keeping the
    routed stream, which holds its book, which holds the record) left ~33 objects per stream
    for the cyclic GC, and kept each request alive until a collection came."""
    upstreams.behaviour = {"a": ok}
    gc.collect()
    gc.disable()
    try:
        for temperature in (1, 1.5):  # not cacheable: no capture, the plain relay
            resp = await client.post(
                "/v1/chat/completions", json={**CHAT, "stream": True, "temperature": temperature}
            )
            assert resp.status == 200 and (await resp.read()).endswith(DONE)
        await asyncio.sleep(0)  # the handler's task finishes after the last write
        alive = [o for o in gc.get_objects() if isinstance(o, (RoutedStream, _StreamBook))]
        assert alive == []
    finally:
        gc.enable()


async def test_identical_cacheable_chats_share_one_flight_on_the_in_process_store(
    client: TestClient, upstreams: Upstreams
) -> None:
    gate = asyncio.Event()

    async def held(request: UpstreamRequest) -> MockResponse:
        await gate.wait()
        return ok(request)

    upstreams.behaviour = {"a": held}
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(4)]
    while not upstreams.calls:  # the leader is at the provider; the others are queued behind it
        await asyncio.sleep(0.01)
    gate.set()
    responses = await asyncio.gather(*posts)
    bodies = [await r.read() for r in responses]
    assert [r.status for r in responses] == [200] * 4
    assert len(set(bodies)) == 1
    assert upstreams.calls == [("a", "ma")]  # four identical requests, one upstream call
    assert sorted(r.headers["x-gateway-cache"] for r in responses) == ["hit", "hit", "hit", "miss"]
    assert client.app[keys.SERVICE].cache.flights._pending == {}  # type: ignore[index]  # every flight landed


async def test_when_the_leader_fails_its_waiters_go_upstream_side_by_side(
    client: TestClient, upstreams: Upstreams
) -> None:
    """Each waiter used to lead in turn while the rest waited again, so N identical requests to
    a failing provider took N times its failure. Now they go upstream together: the provider
    sees the three waiters' calls at once (a call waits, up to 1 s, for another to join it)."""
    gate = asyncio.Event()
    joined = asyncio.Event()
    in_flight = peak = 0
    leading = True

    async def failing(request: UpstreamRequest) -> MockResponse:
        nonlocal in_flight, peak, leading
        if leading:  # the leader's first attempt: held until the waiters are queued, then fails
            leading = False
            await gate.wait()
            return refused_503()
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= 2:
            joined.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(joined.wait(), 1.0)
        in_flight -= 1
        return refused_503()

    upstreams.behaviour = {"c": failing}
    tagged = {"x-gateway-tags": "cheap"}  # the group of one deployment (c)
    posts = [
        asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=tagged)) for _ in range(4)
    ]
    while not upstreams.calls:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the waiters reach the flight (they only wait from there on)
    gate.set()
    responses = await asyncio.gather(*posts)
    assert all(r.status >= 500 for r in responses)
    assert peak >= 2, "the waiters went upstream one after another"


def refused_503() -> MockResponse:
    return MockResponse.json({"error": {"message": "down", "type": "server_error"}}, status=503)


async def test_an_unreadable_in_process_entry_is_a_miss_fetched_again_and_replaced(
    client: TestClient, upstreams: Upstreams
) -> None:
    cache = client.app[keys.SERVICE].cache  # type: ignore[index]
    plan = cache.plan(Endpoint.CHAT, CHAT, {}, tenant=tenant_of(None), tags=frozenset())
    await cache.store.set(plan.category, plan.key, b"not an entry of ours", 60)
    first = await client.post("/v1/chat/completions", json=CHAT)
    assert (first.status, first.headers["x-gateway-cache"]) == (200, "miss")
    second = await client.post("/v1/chat/completions", json=CHAT)
    assert (second.status, second.headers["x-gateway-cache"]) == (200, "hit")
    assert await second.read() == await first.read()
    assert upstreams.calls == [("a", "ma")]
    assert cache.flights._pending == {}


async def test_hits_of_one_entry_share_its_answer_and_a_large_one_is_made_each_time(
    client: TestClient, upstreams: Upstreams
) -> None:
    service = client.app[keys.SERVICE]  # type: ignore[index]
    stored = await service.run(Endpoint.CHAT, dict(CHAT), CallContext("r0", 0.0))  # the miss
    first = await service.run(Endpoint.CHAT, dict(CHAT), CallContext("r1", 0.0))
    second = await service.run(Endpoint.CHAT, dict(CHAT), CallContext("r2", 0.0))
    assert first is second and first.body == stored.body and first.stream is None
    assert len(upstreams.calls) == 1

    large = {**CHAT, "messages": [{"role": "user", "content": "large"}]}
    upstreams.behaviour = {"a": lambda request: MockResponse.json(completion("ma", "x" * 70_000))}
    await service.run(Endpoint.CHAT, dict(large), CallContext("r3", 0.0))
    one = await service.run(Endpoint.CHAT, dict(large), CallContext("r4", 0.0))
    other = await service.run(Endpoint.CHAT, dict(large), CallContext("r5", 0.0))
    assert one is not other and one.body == other.body and len(one.body or b"") > 64 * 1024
    assert len(upstreams.calls) == 2
