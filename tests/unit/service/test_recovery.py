"""Memory cleanup over ``server.max_rss_bytes``: the steps' order, when they stop, what each
counts; and in a whole app with the limit set low, which caches the real cleanup drops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.observability.metrics import RecoveryActions
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.service.recovery import CleanupStep, MemoryGuard
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]


@dataclass
class Heap:
    """A process whose resident size is a baseline plus what three caches hold (bytes each)."""

    base: int
    caches: dict[str, list[int]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def rss(self) -> int:
        return self.base + sum(sum(entries) for entries in self.caches.values())

    def step(self, name: str, *, share: float = 1.0, repeat: bool = False) -> CleanupStep:
        def drop() -> int:
            entries = self.caches[name]
            count = len(entries) if share == 1.0 else min(len(entries), max(1, int(len(entries) * share)))
            del entries[:count]
            if count:
                self.dropped.append(name)
            return count

        return CleanupStep(f"memory_cleanup_{name}", drop, repeat)

    def guard(self, limit: int, actions: RecoveryActions) -> MemoryGuard:
        steps = [
            self.step("search_cache"),
            self.step("semantic_index"),
            self.step("response_cache", share=0.25, repeat=True),
        ]
        return MemoryGuard(limit, self.rss, steps, actions, release=lambda: None)


def test_under_the_limit_nothing_is_dropped() -> None:
    heap = Heap(100, {"search_cache": [10], "semantic_index": [10], "response_cache": [10]})
    actions = RecoveryActions()
    assert heap.guard(200, actions).check() == [] and heap.dropped == [] and actions.totals() == {}


def test_steps_run_in_order_and_stop_once_under_the_limit() -> None:
    heap = Heap(100, {"search_cache": [30], "semantic_index": [40], "response_cache": [10] * 8})
    actions = RecoveryActions()
    done = heap.guard(200, actions).check()  # 250 -> 220 -> 180: the response cache is kept
    assert [(a.kind, a.result) for a in done] == [
        ("memory_cleanup_search_cache", "failed"),
        ("memory_cleanup_semantic_index", "ok"),
    ]
    assert heap.dropped == ["search_cache", "semantic_index"] and len(heap.caches["response_cache"]) == 8
    assert actions.totals() == {
        ("memory_cleanup_search_cache", "failed"): 1,
        ("memory_cleanup_semantic_index", "ok"): 1,
    }


def test_the_response_cache_drops_a_quarter_at_a_time_until_under() -> None:
    heap = Heap(100, {"search_cache": [], "semantic_index": [5], "response_cache": [10] * 20})
    actions = RecoveryActions()
    done = heap.guard(200, actions).check()  # 305 -> 300 -> 250 -> 220 -> 190
    # the empty search cache is skipped (no action); the index is not enough; then quarters
    assert [a.kind for a in done] == ["memory_cleanup_semantic_index"] + ["memory_cleanup_response_cache"] * 3
    assert [a.dropped for a in done] == [1, 5, 3, 3] and len(heap.caches["response_cache"]) == 9
    assert [a.result for a in done] == ["failed", "failed", "failed", "ok"]
    assert [a.rss_bytes for a in done] == [300, 250, 220, 190]
    assert actions.totals()[("memory_cleanup_response_cache", "ok")] == 1


def test_a_baseline_above_the_limit_empties_the_caches_once_then_does_nothing() -> None:
    heap = Heap(500, {"search_cache": [1], "semantic_index": [1], "response_cache": [1] * 3})
    actions = RecoveryActions()
    guard = heap.guard(200, actions)
    first = guard.check()
    assert all(a.result == "failed" for a in first) and not any(heap.caches.values())
    assert guard.check() == []  # nothing left to drop: no action, no count
    assert sum(actions.totals().values()) == len(first) == 5


POLICY = """
version: 1
auth: {mode: open}
server: {max_rss_bytes: 1MiB, health_interval_s: 1h}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
  emb: {deployments: [{provider: a, model: ea}]}
cache:
  cacheable: always
  default_category: plain
  categories:
    plain: {ttl_s: 600, max_bytes: 10MB}
    similar: {ttl_s: 600, max_bytes: 10MB, semantic: {embedding_model: emb}}
  rules: [{when: {tags: [similar]}, category: similar}]
"""


def upstream(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if request.path.endswith("/embeddings"):
        return MockResponse.json(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )
    text = body["messages"][-1]["content"]
    return MockResponse.json(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


async def test_a_low_limit_drops_the_search_cache_the_semantic_index_then_the_response_cache(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    policy = POLICY + f"memory: {{enabled: true, path: '{tmp_path}/m.db', index_dir: '{tmp_path}/ix'}}\n"
    app = build_app(
        Settings(access_log=False), parse_policy(policy), {}, transports={"a": MockTransport(upstream)}
    )
    client = await aiohttp_client(app)
    for i in range(8):
        chat = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
        assert (await client.post("/v1/chat/completions", json=chat)).status == 200
    similar = {"model": "m", "messages": [{"role": "user", "content": "similar"}]}
    tagged = await client.post("/v1/chat/completions", json=similar, headers={"x-gateway-tags": "similar"})
    assert tagged.status == 200
    await client.post("/v1/memory", json={"namespace": "n", "content": "x", "embedding": [0.1, 0.2, 0.3]})
    found = await client.post("/v1/memory/search", json={"namespaces": ["n"], "vector": [0.1, 0.2, 0.3]})
    assert found.status == 200, await found.text()
    cache, memory = app[keys.CACHE], app[keys.MEMORY]
    assert cache.usage("plain")[0] == 9 and cache.usage("similar")[0] == 1  # 8 chats, 1 embedding
    assert len(memory._cache) == 1 and sum(len(i) for i in cache._indexes.values()) == 1

    done = app[keys.MEMORY_GUARD].check()  # the real resident size: far above 1 MiB

    kinds = [a.kind for a in done]
    assert kinds[:2] == ["memory_cleanup_search_cache", "memory_cleanup_semantic_index"]
    assert set(kinds[2:]) == {"memory_cleanup_response_cache"} and len(kinds) > 2
    assert all(a.result == "failed" for a in done)  # still above: a process is more than its caches
    assert len(memory._cache) == 0 and sum(len(i) for i in cache._indexes.values()) == 0
    assert cache.usage("plain") == (0, 0) and cache.usage("similar") == (0, 0)
    text = await (await client.get("/metrics")).text()
    assert 'gateway_recovery_actions_total{kind="memory_cleanup_search_cache",result="failed"} 1.0' in text
    assert 'gateway_recovery_actions_total{kind="memory_cleanup_semantic_index",result="failed"} 1.0' in text
    health = await (await client.get("/health")).json()
    assert health["dependencies"]["resident_memory"]["status"] == "degraded"
