"""The response cache end to end: hits, keys, tenants, TTLs, budgets, streams, stampedes,
fail-open on a real Redis, semantic matches and metrics.

Real processes on loopback (fake providers, gateways and ``redis-server``; see
``cache_support.py``), the official ``openai`` SDK as the client, hand-written JSON where the
exact bytes matter, no mocks. Most tests run against Redis (the production path); the key ones
also against the embedded memory store. Every test is its own tenant (a fresh API key), so no
test can see another's entries; fake providers' ``/_fake/stats`` prove whether upstream was
called. Waits on time (a TTL, a restarted Redis) poll with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from gateway.testing.process import ManagedProcess
from gateway.testing.redis_server import PrivateRedis
from tests.e2e.cache_support import (
    CUT_REPLY,
    FAILOPEN_LOOKUP_TIMEOUT_MS,
    HEALTHY_FAULTS,
    INBAND_PARTIAL,
    MAIN_LOOKUP_TIMEOUT_MS,
    SHORT_TTL_S,
    TINY_BYTES,
    Answer,
    CacheStack,
    InBandErrorUpstream,
    MetricsDelta,
    aclient,
    chat,
    chat_stream,
    count_prefix,
    delete_prefix,
    metrics_text,
    post_raw,
    private_redis,
    set_faults,
    shared_redis_url,
    start_cache_fakes,
    start_cache_gateway,
    unique,
    upstream_requests,
    write_policy,
)
from tests.e2e.routing_support import metric_samples, metric_value, wait_for

# ----- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, ManagedProcess]]:
    procs = start_cache_fakes()
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def inband() -> Iterator[InBandErrorUpstream]:
    server = InBandErrorUpstream()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def main_policy(
    fakes: dict[str, ManagedProcess], inband: InBandErrorUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("cache") / "cache.yaml"
    return write_policy(path, fakes, MAIN_LOOKUP_TIMEOUT_MS, inband.url)


@pytest.fixture(scope="module")
def redis_stack(fakes: dict[str, ManagedProcess], main_policy: Path) -> Iterator[CacheStack]:
    """A gateway on Redis: ``REDIS_URL`` when set, else a private ``redis-server``."""
    url, server = shared_redis_url()
    stack = None
    try:
        stack = start_cache_gateway("redis", main_policy, fakes, url)
        yield stack
    finally:
        if stack is not None:
            stack.gateway.stop()
            assert stack.prefix is not None
            delete_prefix(url, stack.prefix)
        if server is not None:
            server.close()


@pytest.fixture(scope="module")
def memory_stack(fakes: dict[str, ManagedProcess], main_policy: Path) -> Iterator[CacheStack]:
    """A gateway on the embedded memory store (no Redis at all)."""
    stack = start_cache_gateway("memory", main_policy, fakes)
    try:
        yield stack
    finally:
        stack.gateway.stop()


@pytest.fixture(params=["redis", "memory"])
def stack(request: pytest.FixtureRequest) -> CacheStack:
    """The key behaviours run against both backends."""
    found: CacheStack = request.getfixturevalue(f"{request.param}_stack")
    return found


@dataclass
class FailOpenStack:
    stack: CacheStack
    server: PrivateRedis


@pytest.fixture(scope="module")
def failopen(
    fakes: dict[str, ManagedProcess], inband: InBandErrorUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FailOpenStack]:
    """A gateway on a Redis of its own (even when ``REDIS_URL`` is set): the tests stop and
    block it. The production lookup budget (50 ms)."""
    policy = write_policy(
        tmp_path_factory.mktemp("failopen") / "failopen.yaml", fakes, FAILOPEN_LOOKUP_TIMEOUT_MS, inband.url
    )
    server = private_redis()
    try:
        stack = start_cache_gateway("redis", policy, fakes, server.url)
        try:
            yield FailOpenStack(stack, server)
        finally:
            stack.gateway.stop()
    finally:
        server.close()


# ----- 1. hit and miss -----------------------------------------------------------------------------


async def test_hit_miss_and_bypass_through_sdk(stack: CacheStack) -> None:
    client = aclient(stack, unique("tenant"))
    prompt = "What is the capital of France?"
    before = await upstream_requests(stack, "main")
    try:
        first = await chat(client, prompt)
        second = await chat(client, prompt)
        assert await upstream_requests(stack, "main") - before == 1

        # temperature 0.7 is not deterministic: never looked up, never stored.
        hot = [await chat(client, prompt, temperature=0.7) for _ in range(2)]
        # Nor is a request with no temperature (the API's default is 1).
        body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": prompt}]})
        no_temp = [
            await post_raw(stack, "/chat/completions", body.encode(), client.api_key) for _ in range(2)
        ]
        assert await upstream_requests(stack, "main") - before == 5
    finally:
        await client.close()

    assert (first.cache, first.provider, first.model) == ("miss", "main", "up-chat")
    assert first.match is None and first.category is None
    assert first.content == f"Echo: {prompt}"
    assert (second.cache, second.provider, second.model) == ("hit", "cache", "up-chat")
    assert (second.match, second.category) == ("exact", "common_queries")
    # The very same answer (the fake numbers each answer it gives), not a new one alike.
    assert (second.id, second.content) == (first.id, first.content)

    assert [h.cache for h in hot] == ["bypass", "bypass"]
    assert [h.provider for h in hot] == ["main", "main"]
    assert len({first.id, hot[0].id, hot[1].id}) == 3
    assert [(r.status, r.cache) for r in no_temp] == [(200, "bypass"), (200, "bypass")]
    assert no_temp[0].json()["id"] != no_temp[1].json()["id"]


async def test_embeddings_and_completions_are_cached(redis_stack: CacheStack) -> None:
    client = aclient(redis_stack, unique("tenant"))
    emb_before = await upstream_requests(redis_stack, "emb")
    main_before = await upstream_requests(redis_stack, "main")
    try:
        # Embeddings are deterministic: cached without any temperature.
        embs = [
            await client.embeddings.with_raw_response.create(model="embed", input="cache me")
            for _ in range(2)
        ]
        # Legacy completions follow the chat rule: temperature 0 is cached.
        texts = [
            await client.completions.with_raw_response.create(
                model="chat", prompt="complete me", temperature=0
            )
            for _ in range(2)
        ]
    finally:
        await client.close()
    assert [r.headers["x-gateway-cache"] for r in embs] == ["miss", "hit"]
    assert embs[1].headers["x-gateway-provider"] == "cache"
    assert embs[0].parse().data[0].embedding == embs[1].parse().data[0].embedding
    assert await upstream_requests(redis_stack, "emb") - emb_before == 1
    assert [r.headers["x-gateway-cache"] for r in texts] == ["miss", "hit"]
    assert texts[0].parse().id == texts[1].parse().id
    assert await upstream_requests(redis_stack, "main") - main_before == 1


# ----- 2. key canonicalisation ---------------------------------------------------------------------


async def test_key_ignores_json_order_and_whitespace(redis_stack: CacheStack) -> None:
    tenant = unique("tenant")
    prompt = "Summarise the Q3 board memo"
    compact = '{"model":"chat","messages":[{"role":"user","content":"Summarise the Q3 board memo"}],"temperature":0}'
    shuffled = (
        '{\n  "temperature" : 0 ,\n\t"messages" : [ { "content" : "Summarise the Q3 board memo",'
        '  "role" : "user" } ] ,\n  "model":   "chat"\n}\n'
    )
    # user / metadata are bookkeeping, not part of the answer (README: left out of the key).
    bookkeeping = (
        '{"metadata": {"team": "finance"}, "user": "alice", "temperature": 0, "model": "chat",'
        ' "messages": [{"role": "user", "content": "Summarise the Q3 board memo"}]}'
    )
    # The same string written with JSON escapes is the same request.
    escaped = (
        '{"model":"chat","temperature":0,"messages":[{"role":"user",'
        '"content":"Summarise the Q3 board \\u006d\\u0065mo"}]}'
    )
    before = await upstream_requests(redis_stack, "main")
    first = await post_raw(redis_stack, "/chat/completions", compact.encode(), tenant)
    second = await post_raw(redis_stack, "/chat/completions", shuffled.encode(), tenant)
    third = await post_raw(redis_stack, "/chat/completions", bookkeeping.encode(), tenant)
    fourth = await post_raw(redis_stack, "/chat/completions", escaped.encode(), tenant)
    client = aclient(redis_stack, tenant)
    try:
        via_sdk = await chat(client, prompt)
    finally:
        await client.close()
    replies = (first, second, third, fourth)
    assert [r.status for r in replies] == [200] * 4
    assert [r.cache for r in replies] == ["miss", "hit", "hit", "hit"]
    assert via_sdk.cache == "hit"
    assert all(r.body == first.body for r in replies)
    assert via_sdk.id == first.json()["id"]
    assert await upstream_requests(redis_stack, "main") - before == 1


async def test_key_changes_with_every_answer_parameter(redis_stack: CacheStack) -> None:
    # A named category opts every request in, whatever its temperature, so each variant below
    # is cacheable: it must miss (a key of its own), then hit (it was stored, not bypassed).
    tenant = unique("tenant")
    opt_in = {"x-gateway-cache-category": "common_queries"}
    base: dict[str, object] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "List three risks in JSON"}],  # (JSON mode wants the word)
        "temperature": 0,
    }
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    variants: dict[str, dict[str, object]] = {
        "temperature": {"temperature": 0.5},
        "top_p": {"top_p": 0.9},
        "seed": {"seed": 7},
        "max_tokens": {"max_tokens": 50},
        "tools": {"tools": tools},
        "response_format": {"response_format": {"type": "json_object"}},
        "stop": {"stop": ["\n"]},
        "model": {"model": "chat-b"},
        "messages": {"messages": [{"role": "user", "content": "List three risks in JSON!"}]},
    }

    async def send(body: dict[str, object]) -> tuple[str | None, str]:
        reply = await post_raw(redis_stack, "/chat/completions", json.dumps(body).encode(), tenant, opt_in)
        assert reply.status == 200, reply.body
        return reply.cache, reply.json()["id"]

    before = await upstream_requests(redis_stack, "main")
    base_cache, base_id = await send(base)
    assert base_cache == "miss"
    seen = {base_id}
    for name, change in variants.items():
        body = {**base, **change}
        first_cache, first_id = await send(body)
        again_cache, again_id = await send(body)
        assert (first_cache, again_cache) == ("miss", "hit"), name
        assert again_id == first_id and first_id not in seen, name
        seen.add(first_id)
    assert await send(base) == ("hit", base_id)
    assert await upstream_requests(redis_stack, "main") - before == 1 + len(variants)


# ----- 3. tenants ----------------------------------------------------------------------------------


async def test_tenants_never_share_unless_category_is_shared(stack: CacheStack) -> None:
    a, b = aclient(stack, unique("tenant-a")), aclient(stack, unique("tenant-b"))
    prompt = "What did we spend on cloud last month?"
    faq = {"x-gateway-cache-category": "faq"}  # shared: true
    faq_prompt = f"What are the office opening hours? {unique('faq')}"
    before = await upstream_requests(stack, "main")
    try:
        a1 = await chat(a, prompt)
        b1 = await chat(b, prompt)  # another API key: must not get a's answer
        b2 = await chat(b, prompt)
        a2 = await chat(a, prompt)
        assert await upstream_requests(stack, "main") - before == 2

        shared_a = await chat(a, faq_prompt, headers=faq)
        shared_b = await chat(b, faq_prompt, headers=faq)
        assert await upstream_requests(stack, "main") - before == 3
    finally:
        await a.close()
        await b.close()

    assert [a1.cache, b1.cache, b2.cache, a2.cache] == ["miss", "miss", "hit", "hit"]
    assert a1.id != b1.id
    assert a2.id == a1.id and b2.id == b1.id
    assert (shared_a.cache, shared_b.cache) == ("miss", "hit")
    assert shared_b.id == shared_a.id and shared_b.category == "faq"


async def test_a_shared_category_is_reached_by_rules_not_named_by_a_client(stack: CacheStack) -> None:
    # A client naming a shared category put its answers in every tenant's reach, and learned
    # from a hit whether another tenant had made an exact request (h-probe6). Unless the category
    # says client_selectable: true, the header naming it is a 400; the operator's rules reach it.
    a, b = aclient(stack, unique("tenant-a")), aclient(stack, unique("tenant-b"))
    prompt = f"What are the office opening hours? {unique('rules')}"
    before = await upstream_requests(stack, "main")
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            await chat(a, prompt, headers={"x-gateway-cache-category": "faq_rules"})
        body: Any = refused.value.body
        assert (body["code"], body["param"]) == ("cache_category_not_selectable", "x-gateway-cache-category")
        assert "client_selectable: true" in body["message"]
        assert await upstream_requests(stack, "main") == before  # refused before any provider call
        tagged = {"x-gateway-tags": "faq"}
        shared_a, shared_b = await chat(a, prompt, headers=tagged), await chat(b, prompt, headers=tagged)
    finally:
        await a.close()
        await b.close()
    assert (shared_a.cache, shared_b.cache) == ("miss", "hit")
    assert shared_b.id == shared_a.id and shared_b.category == "faq_rules"


# ----- 4. TTLs and budgets -------------------------------------------------------------------------


async def poll_until_miss(client: openai.AsyncOpenAI, prompt: str, timeout_s: float, **kw: object) -> Answer:
    """Repeat ``prompt`` until it misses; every answer before that must be a hit."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await chat(client, prompt, **kw)  # type: ignore[arg-type]
        if answer.cache == "miss":
            return answer
        assert answer.cache == "hit", answer
        assert time.monotonic() < deadline, f"{prompt!r} still cached after {timeout_s} s"
        await asyncio.sleep(0.05)


async def test_category_ttl_expires(redis_stack: CacheStack) -> None:
    client = aclient(redis_stack, unique("tenant"))
    short = {"x-gateway-cache-category": "short"}  # ttl_s: 1
    try:
        sent = time.monotonic()
        first = await chat(client, "daily numbers", headers=short)
        second = await chat(client, "daily numbers", headers=short)
        again = await poll_until_miss(client, "daily numbers", timeout_s=SHORT_TTL_S + 4, headers=short)
        expired_after = time.monotonic() - sent
    finally:
        await client.close()
    assert (first.cache, second.cache, second.category) == ("miss", "hit", "short")
    # Stored after ``sent``, so it cannot be gone before a full TTL has passed.
    assert expired_after >= SHORT_TTL_S, expired_after
    assert again.id != first.id  # a new upstream answer


async def test_ttl_header_overrides_category_ttl(redis_stack: CacheStack) -> None:
    client = aclient(redis_stack, unique("tenant"))
    try:
        # x-gateway-cache-ttl: 1 on common_queries (30 min): gone after about a second.
        sent = time.monotonic()
        first = await chat(client, "ttl one", headers={"x-gateway-cache-ttl": "1"})
        assert first.cache == "miss"
        assert (await chat(client, "ttl one")).cache == "hit"
        await poll_until_miss(client, "ttl one", timeout_s=5)
        assert time.monotonic() - sent >= 1.0

        # x-gateway-cache-ttl: 60 on "short" (1 s): stored with 60 s instead. A twin stored at
        # the same time without the header expires; then the one with the header is still there.
        short = {"x-gateway-cache-category": "short"}
        longer = {**short, "x-gateway-cache-ttl": "60"}
        assert (await chat(client, "kept longer", headers=longer)).cache == "miss"
        assert (await chat(client, "short twin", headers=short)).cache == "miss"
        await poll_until_miss(client, "short twin", timeout_s=SHORT_TTL_S + 4, headers=short)
        kept = await chat(client, "kept longer", headers=short)
    finally:
        await client.close()
    assert (kept.cache, kept.category) == ("hit", "short")


async def test_budget_evicts_least_recently_used_of_its_own_category(stack: CacheStack) -> None:
    client = aclient(stack, unique("tenant"))
    tiny = {"x-gateway-cache-category": "tiny"}  # max_bytes 4000: a handful of answers
    other = {"x-gateway-cache-category": "other"}

    def prompt(i: int) -> str:
        return f"fill the tiny category with entry number {i:03d}"  # all the same length

    before = MetricsDelta(await metrics_text(stack))
    try:
        assert (await chat(client, "an answer of another category", headers=other)).cache == "miss"
        first_ids = {}
        for i in range(3):
            answer = await chat(client, prompt(i), headers=tiny)
            assert answer.cache == "miss"
            first_ids[i] = answer.id
        assert (await chat(client, prompt(0), headers=tiny)).cache == "hit"  # 0 is now the most recent

        # Add entries until the first eviction: its victim must be the least recently used, 1.
        i = 3
        while before(await metrics_text(stack), "gateway_cache_evictions_total", category="tiny") == 0:
            assert i < 30, "4000 bytes never filled up"
            assert (await chat(client, prompt(i), headers=tiny)).cache == "miss"
            i += 1
        filled = i
        after = await metrics_text(stack)
        assert before(after, "gateway_cache_evictions_total", category="tiny") == 1

        zero = await chat(client, prompt(0), headers=tiny)
        one = await chat(client, prompt(1), headers=tiny)
        survivor = await chat(client, "an answer of another category", headers=other)
        after = await metrics_text(stack)

        # An answer bigger than the whole budget is not stored, and flushes nothing to try.
        huge = "word " * TINY_BYTES
        oversized = [(await chat(client, huge, headers=tiny)).cache for _ in range(2)]
        zero_again = await chat(client, prompt(0), headers=tiny)
        after_huge = await metrics_text(stack)
    finally:
        await client.close()

    assert filled >= 5, filled  # at least 4 entries fitted: each is well under 1000 bytes
    assert (zero.cache, zero.id) == ("hit", first_ids[0])
    assert one.cache == "miss" and one.id != first_ids[1]
    assert (survivor.cache, survivor.category) == ("hit", "other")
    # Evictions are counted for the full category only.
    assert before(after, "gateway_cache_evictions_total", category="tiny") >= 2  # storing 1 again evicted
    for category in ("other", "common_queries", "short", "faq"):
        assert before(after, "gateway_cache_evictions_total", category=category) == 0, category
    used = metric_value(after, "gateway_cache_bytes", category="tiny")
    assert used is not None and 0 < used <= TINY_BYTES
    entries = metric_value(after, "gateway_cache_entries", category="tiny")
    assert entries is not None and 4 <= entries < filled
    assert oversized == ["miss", "miss"]
    assert (zero_again.cache, zero_again.id) == ("hit", first_ids[0])
    assert MetricsDelta(after)(after_huge, "gateway_cache_evictions_total", category="tiny") == 0


# ----- 5. request headers --------------------------------------------------------------------------


async def test_cache_control_refresh_and_no_store(redis_stack: CacheStack) -> None:
    client = aclient(redis_stack, unique("tenant"))
    before = await upstream_requests(redis_stack, "main")
    try:
        cached = await chat(client, "refresh me")
        fresh = await chat(client, "refresh me", headers={"Cache-Control": "no-cache"})
        after_refresh = await chat(client, "refresh me")
        assert await upstream_requests(redis_stack, "main") - before == 2

        unstored = await chat(client, "do not keep me", headers={"Cache-Control": "no-store"})
        unstored_again = await chat(client, "do not keep me")
        kept = await chat(client, "do not keep me")
        # no-store still reads: an answer already cached is served.
        served = await chat(client, "refresh me", headers={"Cache-Control": "no-store"})
        both = await chat(client, "refresh me", headers={"Cache-Control": "no-cache, no-store"})
        assert await upstream_requests(redis_stack, "main") - before == 5
    finally:
        await client.close()

    assert cached.cache == "miss"
    assert (fresh.cache, fresh.provider) == ("refresh", "main") and fresh.id != cached.id
    # The refreshed answer replaced the old one.
    assert (after_refresh.cache, after_refresh.id) == ("hit", fresh.id)
    assert unstored.cache == "miss"
    assert unstored_again.cache == "miss" and unstored_again.id != unstored.id
    assert kept.cache == "hit" and kept.id == unstored_again.id
    assert (served.cache, served.id) == ("hit", fresh.id)
    assert both.cache == "bypass" and both.id not in (fresh.id, cached.id)


async def test_bad_cache_headers_are_refused_in_openai_envelope(redis_stack: CacheStack) -> None:
    client = aclient(redis_stack, unique("tenant"))
    before = await upstream_requests(redis_stack, "main")
    refused: list[openai.BadRequestError] = []
    bad = [
        {"x-gateway-cache-category": "no_such_category"},
        *({"x-gateway-cache-ttl": v} for v in ("abc", "0", "-5", "604801", "nan", "inf", "")),
    ]
    try:
        for headers in bad:
            with pytest.raises(openai.BadRequestError) as err:
                await chat(client, "bad headers", headers=headers)
            refused.append(err.value)
        # The edges of the range are fine: 1 s and 7 days.
        edges = [await chat(client, f"edge {v}", headers={"x-gateway-cache-ttl": v}) for v in ("1", "604800")]
    finally:
        await client.close()
    for headers, error in zip(bad, refused, strict=True):
        assert error.status_code == 400, headers
        assert set(error.response.json()) == {"error"}, error.response.text  # OpenAI's envelope
        body = error.body
        assert isinstance(body, dict), body
        assert set(body) >= {"message", "type", "param", "code"}, body
        assert body["type"] == "invalid_request_error" and body["message"], body
        assert body["param"] == next(iter(headers)), (headers, body)
    assert "no_such_category" in refused[0].message
    assert [e.cache for e in edges] == ["miss", "miss"]
    # Refused before anything went upstream.
    assert await upstream_requests(redis_stack, "main") - before == 2


async def test_ttl_header_below_one_second_is_refused(redis_stack: CacheStack) -> None:
    # README: "x-gateway-cache-ttl: SECONDS | store with this TTL instead of the category's
    # (1 s to 7 days; 400 otherwise)".
    client = aclient(redis_stack, unique("tenant"))
    try:
        with pytest.raises(openai.BadRequestError) as err:
            await chat(client, "sub-second ttl", headers={"x-gateway-cache-ttl": "0.5"})
    finally:
        await client.close()
    assert err.value.status_code == 400


# ----- 6. streams and failures ---------------------------------------------------------------------


async def test_stream_miss_then_hit_replayed_as_sse(redis_stack: CacheStack) -> None:
    tenant = unique("tenant")
    prompt = "stream the quarterly summary please"
    body = json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "stream": True}
    ).encode()
    before = await upstream_requests(redis_stack, "main")
    miss = await post_raw(redis_stack, "/chat/completions", body, tenant)
    client = aclient(redis_stack, tenant)
    try:
        hit = await chat_stream(client, prompt)
        # Streams and whole answers are cached apart: the same request unstreamed misses.
        whole = await chat(client, prompt)
    finally:
        await client.close()
    hit_raw = await post_raw(redis_stack, "/chat/completions", body, tenant)

    assert (miss.status, miss.cache) == (200, "miss")
    assert miss.body.endswith(b"data: [DONE]\n\n"), miss.body[-80:]
    assert (hit.cache, hit.provider, hit.model, hit.match) == ("hit", "cache", "up-chat", "exact")
    assert hit.content.strip() == f"Echo: {prompt}"
    assert hit.id in miss.body.decode()  # the stored stream, not a new one
    assert hit_raw.cache == "hit"
    assert hit_raw.headers["content-type"].startswith("text/event-stream")
    assert hit_raw.body == miss.body
    assert whole.cache == "miss" and whole.content == f"Echo: {prompt}"
    assert await upstream_requests(redis_stack, "main") - before == 2


async def test_cut_stream_is_not_cached(redis_stack: CacheStack) -> None:
    # The "cut" fake sends half its reply, then drops the connection.
    client = aclient(redis_stack, unique("tenant"))
    before = await upstream_requests(redis_stack, "cut")
    outcomes: list[tuple[str, str]] = []
    try:
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="cut-chat", messages=[{"role": "user", "content": "cut me"}], temperature=0, stream=True
            )
            text = ""
            with pytest.raises(openai.APIError):
                async for chunk in raw.parse():
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
            outcomes.append((raw.headers["x-gateway-cache"], text.strip()))
    finally:
        await client.close()
    # Both went upstream and were cut: the second is a miss, not a replay of the partial answer.
    assert [cache for cache, _ in outcomes] == ["miss", "miss"]
    for _, text in outcomes:
        assert text and CUT_REPLY.startswith(text) and text != CUT_REPLY, text
    assert await upstream_requests(redis_stack, "cut") - before == 2


@pytest.mark.parametrize("model", ["inband-chat", "inband-tight-chat"])
async def test_stream_ending_in_an_error_event_is_not_cached(
    redis_stack: CacheStack, inband: InBandErrorUpstream, model: str
) -> None:
    # HTTP 200, some content, then an error event and [DONE]: the provider failed in-band. It
    # ends with [DONE], but it is an error, and errors are never cached (README). The SDK sees
    # the error whether the event is written "data: {...}" or "data:{...}", so must the cache.
    client = aclient(redis_stack, unique("tenant"))
    before = inband.requests
    seen: list[tuple[str, str]] = []
    try:
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "user", "content": "fail in band"}],
                temperature=0,
                stream=True,
            )
            text = ""
            with pytest.raises(openai.APIError):
                async for chunk in raw.parse():
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
            seen.append((raw.headers["x-gateway-cache"], text))
    finally:
        await client.close()
    assert [text for _, text in seen] == [INBAND_PARTIAL, INBAND_PARTIAL]
    assert [cache for cache, _ in seen] == ["miss", "miss"], "the failed stream was cached and replayed"
    assert inband.requests - before == 2


async def test_streamed_hit_honours_include_usage(redis_stack: CacheStack) -> None:
    # stream_options.include_usage changes a stream's bytes (a final chunk with empty choices
    # and the usage), so a hit must give each client the stream it asked for.
    client = aclient(redis_stack, unique("tenant"))

    async def stream(prompt: str, usage: bool) -> tuple[str, list[openai.types.chat.ChatCompletionChunk]]:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            stream=True,
            stream_options={"include_usage": usage},
        )
        return raw.headers["x-gateway-cache"], [chunk async for chunk in raw.parse()]

    try:
        plain_first = await stream("usage after plain", usage=False)
        usage_second = await stream("usage after plain", usage=True)
        usage_first = await stream("plain after usage", usage=True)
        plain_second = await stream("plain after usage", usage=False)
    finally:
        await client.close()
    assert plain_first[0] == "miss" and usage_first[0] == "miss"
    streams = [
        ("plain_first", plain_first),
        ("usage_second", usage_second),
        ("usage_first", usage_first),
        ("plain_second", plain_second),
    ]
    wrong = []
    for name, (cache, chunks) in streams:
        if name.startswith("usage"):
            if chunks[-1].choices or chunks[-1].usage is None:
                wrong.append(f"{name} ({cache}): asked for usage, got no usage chunk")
        elif not all(chunk.choices for chunk in chunks):
            # Clients that did not ask for usage index choices[0] on every chunk.
            wrong.append(f"{name} ({cache}): did not ask for usage, got a chunk without choices")
    assert wrong == []


async def test_upstream_errors_are_never_cached(redis_stack: CacheStack) -> None:
    client = aclient(redis_stack, unique("tenant"))
    before = await upstream_requests(redis_stack, "mut")
    statuses: list[int] = []
    try:
        for status in (500, 400):
            await set_faults(redis_stack, "mut", error_rate=1, error_status=status)
            for _ in range(2):
                with pytest.raises(openai.APIStatusError) as err:
                    await chat(client, "fragile question", model="mut-chat")
                statuses.append(err.value.status_code)
                assert err.value.response.headers.get("x-gateway-cache") != "hit"
            for _ in range(2):
                with pytest.raises(openai.APIStatusError):
                    await chat_stream(client, "fragile stream", model="mut-chat")
        assert await upstream_requests(redis_stack, "mut") - before == 8
        await set_faults(redis_stack, "mut", **HEALTHY_FAULTS)
        ok = await chat(client, "fragile question", model="mut-chat")
        ok_again = await chat(client, "fragile question", model="mut-chat")
        streamed = await chat_stream(client, "fragile stream", model="mut-chat")
    finally:
        await set_faults(redis_stack, "mut", **HEALTHY_FAULTS)
        await client.close()
    assert statuses[0] >= 500 and statuses[2] == 400, statuses
    assert ok.cache == "miss" and ok.content == "Echo: fragile question"
    assert (ok_again.cache, ok_again.id) == ("hit", ok.id)
    assert streamed.cache == "miss"
    assert await upstream_requests(redis_stack, "mut") - before == 10


# ----- 7. stampede ---------------------------------------------------------------------------------


async def test_stampede_costs_one_upstream_call(stack: CacheStack) -> None:
    # 50 identical requests at once against a fake that takes 300 ms: one leads, 49 wait for it.
    client = aclient(stack, unique("tenant"))
    before = await upstream_requests(stack, "slow")
    try:
        answers = await asyncio.gather(
            *(chat(client, "the same expensive question", model="slow-chat") for _ in range(50))
        )
    finally:
        await client.close()
    assert await upstream_requests(stack, "slow") - before == 1
    assert len(answers) == 50
    assert {(a.id, a.content) for a in answers} == {(answers[0].id, "Echo: the same expensive question")}
    assert Counter(a.cache for a in answers) == {"miss": 1, "hit": 49}


# ----- 8. fail-open --------------------------------------------------------------------------------


async def backend_up(stack: CacheStack) -> float | None:
    return metric_value(await metrics_text(stack), "gateway_cache_backend_up")


async def wait_until_cache_serves(stack: CacheStack, client: openai.AsyncOpenAI, timeout_s: float) -> float:
    """Poll until a repeated request is a hit and the backend reports up; returns the seconds."""
    probe = unique("probe")

    async def serving() -> bool:
        answer = await chat(client, probe, model="traffic-chat")
        return answer.cache == "hit" and await backend_up(stack) == 1

    return await wait_for(serving, "the cache to serve hits again", timeout_s=timeout_s, every_s=0.1)


OUTAGE_S = 1.6  # how long Redis stays down under traffic


async def test_redis_down_mid_run_fails_open_and_recovers(failopen: FailOpenStack) -> None:
    stack, server = failopen.stack, failopen.server
    tenant = unique("tenant")
    client = aclient(stack, tenant, timeout_s=10)
    repeated = [f"repeated question {i}" for i in range(10)]
    answers: list[Answer] = []
    errors: list[BaseException] = []
    numbers = itertools.count()
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            i = next(numbers)
            prompt = repeated[i % len(repeated)] if i % 2 else f"new question {i}"
            try:
                answers.append(await chat(client, prompt, model="traffic-chat"))
            except openai.APIError as exc:
                errors.append(exc)

    def done() -> int:
        return len(answers) + len(errors)

    async def reached(n: int, what: str) -> None:
        async def check() -> bool:
            return done() >= n

        await wait_for(check, what, timeout_s=30, every_s=0.01)

    async def down() -> bool:
        return await backend_up(stack) == 0

    try:
        await wait_until_cache_serves(stack, client, timeout_s=10)
        errors_before = metric_value(await metrics_text(stack), "gateway_cache_backend_errors_total") or 0
        workers = [asyncio.create_task(worker()) for _ in range(6)]
        try:
            await reached(60, "60 requests with Redis up")
            await asyncio.to_thread(server.stop)
            stopped_at, stopped_s = done(), time.monotonic()
            await wait_for(down, "gateway_cache_backend_up to go to 0", timeout_s=5)
            await reached(stopped_at + 80, "80 requests with Redis down")
            # Stay down long enough for several failed probes (backoff 0.1, 0.2, 0.4, 0.8 s).
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_s)))
            in_outage = answers[stopped_at + 6 :]  # started after the stop (6 were in flight)
            await asyncio.to_thread(server.start)  # same port, empty
            restarted_at = done()
            recovered_s = await wait_until_cache_serves(stack, client, timeout_s=15)
            recovered_at = done()
            await reached(max(recovered_at + 60, 220), "traffic after the recovery")
        finally:
            stop.set()
            await asyncio.gather(*workers)
        after = await metrics_text(stack)
    finally:
        await client.close()

    assert errors == [], f"{len(errors)} of {done()} failed, first: {errors[:1]!r}"
    assert done() >= 220
    assert stack.gateway.popen.poll() is None  # the same gateway process throughout
    # Redis down: requests went upstream (mostly as misses; a hit can only come from an
    # identical request in flight) and stayed fast.
    assert Counter(a.provider for a in in_outage)["traffic"] >= len(in_outage) - 10, Counter(
        a.cache for a in in_outage
    )
    assert max(a.elapsed_s for a in in_outage) < 2.0
    assert (metric_value(after, "gateway_cache_backend_errors_total") or 0) > errors_before
    # After the restart, by itself: hits again (the probe in wait_until_cache_serves), and the
    # steady traffic's repeated prompts hit again too.
    assert recovered_s < 15 and restarted_at <= recovered_at
    assert any(a.cache == "hit" for a in answers[recovered_at:])
    assert metric_value(after, "gateway_cache_backend_up") == 1


async def test_slow_redis_does_not_slow_requests(failopen: FailOpenStack) -> None:
    stack, server = failopen.stack, failopen.server
    client = aclient(stack, unique("tenant"), timeout_s=10)
    sleep_s = 1.0
    blocker = aioredis.Redis.from_url(server.url)
    try:
        await wait_until_cache_serves(stack, client, timeout_s=15)
        assert (await chat(client, "cached before the stall", model="traffic-chat")).cache == "miss"
        assert (await chat(client, "cached before the stall", model="traffic-chat")).cache == "hit"
        errors_before = metric_value(await metrics_text(stack), "gateway_cache_backend_errors_total") or 0

        sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", str(sleep_s)))  # type: ignore[no-untyped-call]

        async def redis_blocked() -> bool:
            async with aioredis.Redis.from_url(server.url) as probe:
                try:
                    await asyncio.wait_for(probe.ping(), 0.1)
                except TimeoutError:
                    return True
                return False

        await wait_for(redis_blocked, "DEBUG SLEEP to block Redis", timeout_s=sleep_s / 2, every_s=0.01)
        new = await chat(client, "asked while redis sleeps", model="traffic-chat")
        old = await chat(client, "cached before the stall", model="traffic-chat")
        still_sleeping = not sleeping.done()
        await sleeping
        errors_after = metric_value(await metrics_text(stack), "gateway_cache_backend_errors_total") or 0
        await wait_until_cache_serves(stack, client, timeout_s=15)
    finally:
        await blocker.aclose()
        await client.close()
    assert still_sleeping, "the requests did not overlap the stall: nothing was tested"
    # Answered from upstream without waiting for Redis: one lookup budget (50 ms), perhaps a
    # second for the store, and the request itself.
    assert (new.cache, new.provider) == ("miss", "traffic")
    assert (old.cache, old.provider) == ("miss", "traffic")
    budget_s = FAILOPEN_LOOKUP_TIMEOUT_MS / 1000
    assert new.elapsed_s < 4 * budget_s + 0.15, new.elapsed_s
    assert old.elapsed_s < 4 * budget_s + 0.15, old.elapsed_s
    assert errors_after > errors_before


# ----- 9. semantic cache ---------------------------------------------------------------------------


async def test_semantic_cache_matches_same_question_only_within_tenant(stack: CacheStack) -> None:
    # sem-chat's requests go to the "semantic_q" category (a cache rule), threshold 0.95, with
    # bag-of-words embeddings from the "emb" fake.
    a, b = aclient(stack, unique("tenant-a")), aclient(stack, unique("tenant-b"))
    question = "What is our Q3 revenue?"
    emb_before = await upstream_requests(stack, "emb")
    main_before = await upstream_requests(stack, "main")
    try:
        first = await chat(a, question, model="sem-chat")
        exact = await chat(a, question, model="sem-chat")
        same = await chat(a, "what is our q3 revenue", model="sem-chat")  # cosine 1.0
        near = await chat(a, "What was our Q3 revenue?", model="sem-chat")  # cosine ~0.83
        other_tenant = await chat(b, "what is our q3 revenue", model="sem-chat")
        # A different parameter is a different neighbourhood, however close the prompt.
        other_params = await chat(a, "what is our q3 revenue", model="sem-chat", max_tokens=20)
    finally:
        await a.close()
        await b.close()

    assert (first.cache, exact.cache, exact.match) == ("miss", "hit", "exact")
    assert (same.cache, same.match, same.category) == ("hit", "semantic", "semantic_q")
    assert same.provider == "cache" and same.model == "up-sem"
    assert (same.id, same.content) == (first.id, f"Echo: {question}")  # the cached answer
    assert near.cache == "miss" and near.content == "Echo: What was our Q3 revenue?"
    assert other_tenant.cache == "miss" and other_tenant.id != first.id
    assert other_params.cache == "miss" and other_params.id != first.id
    assert await upstream_requests(stack, "main") - main_before == 4
    # Three different prompt texts were embedded upstream (at least once each).
    assert await upstream_requests(stack, "emb") - emb_before >= 3


async def test_semantic_embedding_failure_is_just_a_miss(redis_stack: CacheStack) -> None:
    # sem-broken-chat's category embeds through a group whose provider always answers 500.
    client = aclient(redis_stack, unique("tenant"))
    bad_before = await upstream_requests(redis_stack, "bad_emb")
    try:
        first = await chat(client, "How many staff do we have?", model="sem-broken-chat")
        exact = await chat(client, "How many staff do we have?", model="sem-broken-chat")
        similar = await chat(client, "how many staff do we have", model="sem-broken-chat")
    finally:
        await client.close()
    assert (first.cache, first.provider) == ("miss", "main")
    assert (exact.cache, exact.match) == ("hit", "exact")  # the exact cache is unaffected
    assert (similar.cache, similar.provider) == ("miss", "main")
    assert similar.content == "Echo: how many staff do we have"
    assert await upstream_requests(redis_stack, "bad_emb") - bad_before >= 2  # it was really tried


# ----- 10. metrics ---------------------------------------------------------------------------------


async def test_cache_metrics_count_what_happened(stack: CacheStack) -> None:
    metered = {"x-gateway-cache-category": "metered"}
    client = aclient(stack, unique("tenant"))
    before = MetricsDelta(await metrics_text(stack))
    try:
        a = [await chat(client, "metered A", headers=metered) for _ in range(3)]  # miss, hit, hit
        b = await chat(client, "metered B", headers=metered)  # miss
        refresh = await chat(client, "metered A", headers={**metered, "Cache-Control": "no-cache"})
        bypass = await chat(client, "metered A", headers={**metered, "Cache-Control": "no-cache, no-store"})
        hot = await chat(client, "metered A", temperature=0.9)  # default category: bypass
    finally:
        await client.close()
    after = await metrics_text(stack)
    seen = [x.cache for x in (*a, b, refresh, bypass, hot)]
    assert seen == ["miss", "hit", "hit", "miss", "refresh", "bypass", "bypass"]

    requests = "gateway_cache_requests_total"
    for result, expected in {"hit": 2, "miss": 2, "refresh": 1, "bypass": 1}.items():
        assert before(after, requests, category="metered", result=result) == expected, result
    assert before(after, requests, category="common_queries", result="bypass") == 1
    assert before(after, "gateway_requests_total", model="chat", provider="cache") == 2
    assert metric_value(after, "gateway_cache_entries", category="metered") == 2
    used = metric_value(after, "gateway_cache_bytes", category="metered")
    assert used is not None and used > 2 * 200, used
    # Every category is exported, used or not.
    categories = {labels["category"] for labels, _ in metric_samples(after, "gateway_cache_bytes")}
    assert categories >= {
        "common_queries",
        "short",
        "tiny",
        "other",
        "metered",
        "faq",
        "semantic_q",
        "semantic_broken",
    }
    assert metric_value(after, "gateway_cache_backend_up") == 1


async def test_redis_keys_live_under_the_gateway_prefix(redis_stack: CacheStack) -> None:
    # The store writes nothing outside SOPHIA_CACHE_PREFIX (so replicas or runs can be kept
    # apart); this test's entries are there.
    assert redis_stack.redis_url is not None and redis_stack.prefix is not None
    client = aclient(redis_stack, unique("tenant"))
    try:
        before = await asyncio.to_thread(count_prefix, redis_stack.redis_url, redis_stack.prefix)
        assert (await chat(client, "where do my keys go")).cache == "miss"
        after = await asyncio.to_thread(count_prefix, redis_stack.redis_url, redis_stack.prefix)
    finally:
        await client.close()
    assert after > before
