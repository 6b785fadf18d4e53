"""The cache plan: what a request that cannot be cached costs, and that headers still count."""

from __future__ import annotations

import pytest

from gateway.cache.memory_store import MemoryStore
from gateway.cache.service import CachedAnswer, ResponseCache
from gateway.errors import InvalidRequest
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import parse_policy
from gateway.wire.requests import Endpoint

POLICY = """
version: 1
providers: {p: {kind: openai, base_url: http://p/v1}}
models: {m: {deployments: [{provider: p, model: m1}]}}
"""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def cache() -> ResponseCache:
    policy = parse_policy(POLICY)
    return ResponseCache(policy.cache, MemoryStore(policy.cache.categories), GatewayMetrics())


def test_requests_that_cannot_be_cached_share_one_bypass_plan() -> None:
    c = cache()
    first = c.plan(Endpoint.CHAT, CHAT, {}, tenant="t1", tags=frozenset())
    second = c.plan(Endpoint.CHAT, {**CHAT, "temperature": 0.7}, {}, tenant="t2", tags=frozenset())
    assert first is second
    assert (first.status, first.read, first.write, first.key) == ("bypass", False, False, "")
    assert first.outcome is not None and (first.outcome.status, first.outcome.category) == (
        "bypass",
        first.category,
    )


def test_a_cacheable_request_gets_its_own_plan() -> None:
    c = cache()
    plan = c.plan(Endpoint.CHAT, {**CHAT, "temperature": 0}, {}, tenant="t1", tags=frozenset())
    assert (plan.status, plan.read, plan.write) == ("miss", True, True) and plan.key
    assert plan.outcome is None


@pytest.mark.parametrize(
    "headers",
    [{"x-gateway-cache-category": "nope"}, {"x-gateway-cache-ttl": "0"}, {"x-gateway-cache-ttl": "soon"}],
)
def test_bad_cache_headers_are_refused_even_when_the_request_cannot_be_cached(
    headers: dict[str, str],
) -> None:
    with pytest.raises(InvalidRequest):
        cache().plan(Endpoint.CHAT, CHAT, headers, tenant="t1", tags=frozenset())


def test_a_hit_is_counted_on_its_series_made_at_the_first_hit_and_its_outcome_shared() -> None:
    metrics = GatewayMetrics()
    policy = parse_policy(POLICY)
    c = ResponseCache(policy.cache, MemoryStore(policy.cache.categories), metrics)
    category = policy.cache.default_category
    labels = {"category": category, "result": "hit"}
    assert metrics.registry.get_sample_value("gateway_cache_requests_total", labels) is None
    answer = CachedAnswer(b"{}", "p", "m1")
    first = c.hit(category, answer)
    assert (first.status, first.category, first.match, first.model) == ("hit", category, "exact", "m1")
    assert c.hit(category, CachedAnswer(b'{"a":1}', "p", "m1")) is first  # the same outcome, shared
    other = c.hit(category, CachedAnswer(b"{}", "p", "m2", "semantic"))
    assert (other.match, other.model) == ("semantic", "m2")
    assert metrics.registry.get_sample_value("gateway_cache_requests_total", labels) == 3


def test_a_repeated_cacheable_request_shares_its_plan_and_another_gets_its_own() -> None:
    c = cache()
    body = {**CHAT, "temperature": 0}
    plan = c.plan(Endpoint.CHAT, body, {}, tenant="t1", tags=frozenset())
    assert c.plan(Endpoint.CHAT, dict(body), {}, tenant="t1", tags=frozenset()) is plan
    others = [
        c.plan(Endpoint.CHAT, body, {}, tenant="t2", tags=frozenset()),  # another tenant: another key
        c.plan(Endpoint.CHAT, body, {"x-gateway-cache-ttl": "60"}, tenant="t1", tags=frozenset()),
        c.plan(Endpoint.CHAT, body, {"cache-control": "no-cache"}, tenant="t1", tags=frozenset()),
        c.plan(Endpoint.CHAT, body, {"cache-control": "no-store"}, tenant="t1", tags=frozenset()),
    ]
    assert all(other is not plan for other in others)
    assert [(o.ttl_s, o.read, o.write, o.status) for o in others[1:]] == [
        (60.0, True, True, "miss"),
        (plan.ttl_s, False, True, "refresh"),
        (plan.ttl_s, True, False, "miss"),
    ]
    assert others[0].key != plan.key and others[1].key == plan.key


def test_a_semantic_categorys_plan_is_never_shared() -> None:
    policy = parse_policy(
        POLICY
        + "cache: {default_category: s, categories: {s: {ttl_s: 60, max_bytes: 1000000,"
        + " semantic: {embedding_model: m, threshold: 0.9}}}}\n"
    )
    c = ResponseCache(policy.cache, MemoryStore(policy.cache.categories), GatewayMetrics())
    body = {**CHAT, "temperature": 0}
    first = c.plan(Endpoint.CHAT, body, {}, tenant="t1", tags=frozenset())
    second = c.plan(Endpoint.CHAT, body, {}, tenant="t1", tags=frozenset())
    assert first is not second and first.key == second.key  # each sets its own vector
    assert first.text == "user: hi"


async def test_a_semantic_prompt_is_embedded_as_its_tenants() -> None:
    """The prompt's embedding call is the requesting tenant's (its cache entry too): one entry
    shared by every tenant let one time whether another had sent an exact prompt."""
    policy = parse_policy(
        POLICY
        + "cache: {default_category: s, categories: {s: {ttl_s: 60, max_bytes: 1000000,"
        + " semantic: {embedding_model: m, threshold: 0.9}}}}\n"
    )
    c = ResponseCache(policy.cache, MemoryStore(policy.cache.categories), GatewayMetrics())
    asked: list[tuple[str, str, str]] = []

    async def embed(model: str, text: str, tenant: str) -> list[float]:
        asked.append((model, text, tenant))
        return [1.0, 0.0]

    body = {**CHAT, "temperature": 0}
    for tenant in ("team:alpha", "team:beta"):
        plan = c.plan(Endpoint.CHAT, body, {}, tenant=tenant, tags=frozenset())
        assert await c.lookup(plan, embed) is None
    assert asked == [("m", "user: hi", "team:alpha"), ("m", "user: hi", "team:beta")]


SEMANTIC_DEFAULT = (
    POLICY
    + "cache: {default_category: s, categories: {s: {ttl_s: 60, max_bytes: 1000000,"
    + " semantic: {embedding_model: m, threshold: 0.9}},"
    + " both: {ttl_s: 60, max_bytes: 1000000, shared: true, client_selectable: true}}}\n"
)


def semantic_cache() -> ResponseCache:
    policy = parse_policy(SEMANTIC_DEFAULT)
    return ResponseCache(policy.cache, MemoryStore(policy.cache.categories), GatewayMetrics())


def test_embeddings_and_the_gateways_own_calls_are_matched_exactly_in_a_semantic_category() -> None:
    """A semantic category answered one text with another's vectors, and the gateway's own
    embedding call, looked up semantically, embedded its text again under its own key and waited
    on its own flight (an outside probe: a chat hung for minutes)."""
    c = semantic_cache()
    embedding = {"model": "m", "input": "alpha beta gamma"}
    plan = c.plan(Endpoint.EMBEDDINGS, embedding, {}, tenant="t1", tags=frozenset())
    assert plan.scope is None and plan.text is None
    chat = {**CHAT, "temperature": 0}
    assert c.plan(Endpoint.CHAT, chat, {}, tenant="t1", tags=frozenset()).text == "user: hi"
    own = c.plan(Endpoint.CHAT, chat, {}, tenant="t1", tags=frozenset(), internal=True)
    assert own.scope is None and own.text is None


def test_a_shared_category_does_not_share_the_gateways_own_calls() -> None:
    """A prompt's embedding cached for every tenant let one time another's exact prompt."""
    c = semantic_cache()
    body = {"model": "m", "input": "Acquire Initech for 40 million dollars"}
    header = {"x-gateway-cache-category": "both"}
    clients = [c.plan(Endpoint.EMBEDDINGS, body, header, tenant=t, tags=frozenset()) for t in ("t1", "t2")]
    assert clients[0].key == clients[1].key  # a client's own, in a shared category: shared
    own = [
        c.plan(Endpoint.EMBEDDINGS, body, header, tenant=t, tags=frozenset(), internal=True)
        for t in ("t1", "t2")
    ]
    assert own[0].key != own[1].key


def test_a_prompt_without_words_is_matched_exactly() -> None:
    """A completion's token ids have no text: every such prompt embedded alike and got the first
    one's answer."""
    c = semantic_cache()
    for prompt in ([1, 2, 3], [[5, 6], [7]]):
        plan = c.plan(
            Endpoint.COMPLETIONS,
            {"model": "m", "prompt": prompt, "temperature": 0},
            {},
            tenant="t",
            tags=frozenset(),
        )
        assert plan.scope is None and plan.text is None


def test_tool_calls_names_and_system_prompts_keep_conversations_apart() -> None:
    c = semantic_cache()

    def scope(messages: list[dict[str, object]]) -> str | None:
        body = {"model": "m", "temperature": 0, "messages": messages}
        return c.plan(Endpoint.CHAT, body, {}, tenant="t", tags=frozenset()).scope

    def call(city: str) -> list[dict[str, object]]:
        tool_call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "weather", "arguments": f'{{"city": "{city}"}}'},
        }
        return [
            {"role": "user", "content": "What's the weather?"},
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]

    assert scope(call("Paris")) != scope(call("London"))
    assert scope([{"role": "user", "name": "alice", "content": "hi"}]) != scope(
        [{"role": "user", "name": "bob", "content": "hi"}]
    )
    long = "Tell me about the history of the city of Lyon in detail please."
    assert scope(
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": long}]
    ) != scope([{"role": "system", "content": "Answer in German."}, {"role": "user", "content": long}])
    # A paraphrase of the user's text is still a neighbour (the same scope).
    assert scope([{"role": "user", "content": "How tall is Everest?"}]) == scope(
        [{"role": "user", "content": "What is the height of Everest?"}]
    )


async def test_a_failed_embedding_is_not_tried_again_when_the_answer_is_stored() -> None:
    """The provider's failure, tried at the lookup and again at the store, made one miss wait
    twice its timeout (an outside probe)."""
    from gateway.errors import UpstreamError

    c = semantic_cache()
    calls: list[str] = []

    async def failing(model: str, text: str, tenant: str) -> list[float]:
        calls.append(text)
        raise UpstreamError("embeddings down")

    plan = c.plan(Endpoint.CHAT, {**CHAT, "temperature": 0}, {}, tenant="t", tags=frozenset())
    assert await c.lookup(plan, failing) is None
    await c.store_answer(plan, CachedAnswer(b"{}", "p", "m1"), failing)
    assert calls == ["user: hi"]
