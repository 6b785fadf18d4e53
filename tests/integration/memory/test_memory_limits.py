"""Keys' limits on the memory API (real HTTP in process, the memory on SQLite in a temporary
directory, embeddings from a MockTransport provider that reports usage and is priced): the
calls that embed text pass the caller's RPM, TPM and budget and are charged to them; a file
upload is one request at its start, its job's embeddings are charged as they happen and never
refused midway. Both limiters: the embedded one and the Redis one (the real Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

SECRET = "sk-sg-memlimit000000000000000000000000000"
ADMIN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {SECRET}"}
DIM = 4
TOKENS_PER_TEXT = 5  # the provider's usage per text embedded; priced at $0.1 a token: $0.5 a text


def policy(tmp_path: Path) -> str:
    return f"""
version: 1
providers:
  p: {{kind: openai, base_url: "http://p.test/v1"}}
models:
  emb: {{deployments: [{{provider: p, model: e, price: {{input_per_mtok: 100000}}}}]}}
  chat-only: {{deployments: [{{provider: p, model: c}}]}}
cache: {{enabled: false}}
memory:
  embedding_model: emb
  index_dir: "{tmp_path / "index"}"
  path: "{tmp_path / "memory.sqlite3"}"
  ingest: {{spool_dir: "{tmp_path / "spool"}", embed_batch: 2, chunk_chars: 50, overlap_chars: 0}}
"""


@dataclass
class Embedder:
    texts: list[str] = field(default_factory=list)
    failing: bool = False  # answers 500, as a provider that is down

    async def __call__(self, request: UpstreamRequest) -> MockResponse:
        if self.failing and not request.path.endswith("/chat/completions"):
            return MockResponse.json({"error": {"message": "down", "type": "server_error"}}, status=500)
        if request.path.endswith("/chat/completions"):  # the unpriced chat model
            message = {"role": "assistant", "content": "ok"}
            return MockResponse.json(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "model": "c",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        given = orjson.loads(request.body)["input"]
        self.texts.extend(given)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t) % 7), 1.0, float(i), 2.0]}
            for i, t in enumerate(given)
        ]
        tokens = TOKENS_PER_TEXT * len(given)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return MockResponse.json({"object": "list", "data": data, "model": "e", "usage": usage})


@dataclass
class Ring:
    caller: Caller

    async def authenticate(self, secret: str) -> Caller | None:
        return self.caller if secret == SECRET else None


@dataclass
class Gateway:
    client: TestClient
    embedder: Embedder
    caller: Caller

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        async with self.client.request(method, path, json=body, headers=AUTH) as resp:
            return resp.status, await resp.json(), resp.headers

    async def upload(self, content: bytes) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("namespace", "docs")
        form.add_field("file", content, filename="notes.txt", content_type="text/plain")
        async with self.client.post("/v1/memory/files", data=form, headers=AUTH) as resp:
            return resp.status, await resp.json()

    async def wait(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            status, job, _ = await self.call("GET", f"/v1/memory/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in ("done", "failed", "paused", "cancelled"):
                return dict(job)
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.02)

    async def settled(self) -> None:
        """Wait until every settlement so far is counted (written, with the Redis limiter)."""
        await self.client.app[keys.LIMITS].drain()  # type: ignore[index]

    async def usage(self) -> dict[str, Any]:
        await self.settled()
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with self.client.get("/admin/usage", headers=admin) as resp:
            assert resp.status == 200
            body = await resp.json()
        rows = [r for r in body["data"] if r["key"] == self.caller.key_id]
        return dict(rows[0]) if rows else {}

    def spend(self) -> float:
        registry = self.client.app[keys.METRICS].registry  # type: ignore[index]
        return registry.get_sample_value("gateway_spend_usd_total", {"team": "blue"}) or 0.0


@pytest.fixture(params=["local", "redis"])
async def limiter_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened(tmp_path: Path, limiter_kind: str, request: pytest.FixtureRequest) -> Any:
    async def open_gateway(**limits: Any) -> AsyncIterator[Gateway]:
        caller = Caller(f"key_{uuid.uuid4().hex[:12]}", "blue", **limits)
        embedder = Embedder()
        app = build_app(
            Settings(access_log=False, admin_token=ADMIN),
            parse_policy(policy(tmp_path)),
            {},
            transports={"p": MockTransport(embedder)},
        )
        app[keys.KEYRING] = Ring(caller)
        if limiter_kind == "redis":
            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            app[keys.LIMITS].limiter = RedisLimiter(url, prefix=prefix)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield Gateway(client, embedder, caller)
        finally:
            await client.close()

    return open_gateway


async def test_memory_calls_that_embed_text_count_against_the_keys_rpm(opened: Any) -> None:
    async for gw in opened(rpm=2):
        status, created, headers = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "a"})
        assert status == 201, created
        assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
            "2",
            "1",
        )
        memory_id = created["data"][0]["id"]
        status, _, _ = await gw.call("POST", "/v1/memory/search", {"query": "a"})
        assert status == 200
        # The key's two requests a minute are spent on embeddings: a third text is refused.
        status, refused, headers = await gw.call("POST", "/v1/memory/search", {"query": "b"})
        assert status == 429, refused
        assert refused["error"]["code"] == "rate_limit_exceeded"
        assert float(headers["Retry-After"]) > 0
        status, _, _ = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "c"})
        assert status == 429
        assert gw.embedder.texts == ["a", "a"]  # the refused texts reached no provider
        # What embeds nothing costs nothing and is not refused: by vector, read, delete.
        status, _, _ = await gw.call("POST", "/v1/memory/search", {"vector": [1.0, 1.0, 0.0, 2.0]})
        assert status == 200
        assert (await gw.call("GET", f"/v1/memory/{memory_id}"))[0] == 200
        assert (await gw.call("DELETE", f"/v1/memory/{memory_id}"))[0] == 200
        usage = await gw.usage()
        assert usage["requests"] == 2 and usage["tokens_in"] == 2 * TOKENS_PER_TEXT
        assert usage["refusals"] == {"requests": 2}


async def test_memory_embeddings_are_charged_to_the_keys_budget(opened: Any) -> None:
    # (An RPM below redis_limits.LEASE_SHARE: no lease, so the Redis limiter checks the budget on
    # every call; a lease's calls may overrun a spent budget for LEASE_S, as documented.)
    async for gw in opened(rpm=50, budget_usd=0.9, budget_period_s=86400.0):
        for text in ("one", "two"):  # $0.5 each: the second starts with $0.5 spent
            status, body, _ = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": text})
            assert status == 201, body
        await gw.settled()  # (the Redis limiter writes settlements within FLUSH_S)
        status, refused, _ = await gw.call("POST", "/v1/memory/search", {"query": "three"})
        assert status == 429
        assert refused["error"]["code"] == "insufficient_quota"
        assert gw.spend() == pytest.approx(1.0)
        assert (await gw.usage())["cost_usd"] == pytest.approx(1.0)


async def test_a_memory_larger_than_the_keys_tpm_is_refused_before_it_is_embedded(opened: Any) -> None:
    async for gw in opened(tpm=100):
        status, body, _ = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "x" * 800})
        assert status == 429, body
        assert body["error"]["code"] == "rate_limit_exceeded" and "tokens" in body["error"]["message"]
        assert gw.embedder.texts == []
        status, body, _ = await gw.call("PATCH", "/v1/memory/none", {"content": "y"})
        assert status == 404  # embeds nothing before it finds the memory is not there


async def test_a_key_limited_to_other_models_still_embeds_its_memories(opened: Any) -> None:
    # The memory's embedding model is the gateway's choice, not one the key calls by name.
    async for gw in opened(rpm=10, models=frozenset({"chat-only"})):
        status, body, _ = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "kept"})
        assert status == 201, body
        status, body, _ = await gw.call("POST", "/v1/embeddings", {"model": "emb", "input": "direct"})
        assert status == 404, body  # called by name, the key still may not use it


async def test_an_upload_is_one_request_and_its_jobs_embeddings_are_charged_never_refused(
    opened: Any,
) -> None:
    async for gw in opened(rpm=1, budget_usd=0.9, budget_period_s=86400.0):
        text = "\n\n".join(f"paragraph {i} " + "word " * 6 for i in range(6)).encode()
        status, job = await gw.upload(text)
        assert status == 202, job
        job = await gw.wait(job["id"])
        # More embeddings calls than the key's RPM, and more spend than its budget: the job
        # that was admitted runs to its end.
        assert job["status"] == "done" and job["memories_created"] >= 4, job
        embedded = len(gw.embedder.texts)
        assert gw.spend() == pytest.approx(0.5 * embedded)
        usage = await gw.usage()
        assert usage["tokens_in"] == TOKENS_PER_TEXT * embedded
        assert usage["cost_usd"] == pytest.approx(0.5 * embedded)  # (written: usage() settles)
        # The next upload is refused before its file is read: the budget is spent.
        status, refused = await gw.upload(b"another file")
        assert status == 429 and refused["error"]["code"] == "insufficient_quota", refused
        status, resumed, _ = await gw.call("POST", f"/v1/memory/jobs/{job['id']}/resume")
        assert status == 429 and resumed["error"]["code"] == "insufficient_quota"
        assert len(gw.embedder.texts) == embedded


async def test_a_chats_memory_query_is_charged_to_the_key_but_never_refuses_the_admitted_chat(
    opened: Any,
) -> None:
    async for gw in opened(rpm=2, budget_usd=10.0, budget_period_s=86400.0):
        status, body, _ = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "fact"})
        assert status == 201, body
        await gw.settled()
        chat = {
            "model": "chat-only",
            "messages": [{"role": "user", "content": "what is the fact?"}],
            "memory": {"namespaces": ["docs"]},
        }
        # The chat is the key's second request: admitted, its query's embedding (a third call)
        # does not refuse it midway, and is charged.
        status, answer, headers = await gw.call("POST", "/v1/chat/completions", chat)
        assert status == 200, answer
        assert headers["x-gateway-memory-ids"]
        assert gw.embedder.texts == ["fact", "what is the fact?"]
        usage = await gw.usage()
        assert usage["tokens_in"] == 2 * TOKENS_PER_TEXT + 1 and usage["cost_usd"] == pytest.approx(1.0)


async def test_a_memory_call_whose_embeddings_failed_says_how_many_attempts_it_made(opened: Any) -> None:
    async for gw in opened(rpm=10):
        gw.embedder.failing = True
        status, body, headers = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "a"})
        assert status == 502, body
        assert int(headers["x-gateway-attempts"]) >= 1  # the embedding model's attempts, all failed
        assert "x-gateway-provider" not in headers
        chat = {
            "model": "chat-only",
            "messages": [{"role": "user", "content": "q"}],
            "memory": {"namespaces": ["docs"]},
        }
        status, body, headers = await gw.call("POST", "/v1/chat/completions", chat)
        assert status == 502 and int(headers["x-gateway-attempts"]) >= 1, body  # not answered without


async def test_ids_given_twice_or_taken_are_refused_before_anything_is_embedded(opened: Any) -> None:
    async for gw in opened(rpm=10):
        twice = {
            "memories": [
                {"namespace": "docs", "content": "one", "id": "d1"},
                {"namespace": "docs", "content": "two", "id": "d2"},
                {"namespace": "docs", "content": "three", "id": "d1"},
            ]
        }
        status, body, _ = await gw.call("POST", "/v1/memory", twice)
        assert status == 400 and body["error"]["code"] == "memory_exists", body
        assert body["error"]["param"] == "memories[2].id"
        assert gw.embedder.texts == []  # neither embedded nor paid for
        status, body, _ = await gw.call(
            "POST", "/v1/memory", {"namespace": "docs", "content": "x", "id": "d2"}
        )
        assert status == 201, body
        status, body, _ = await gw.call(
            "POST", "/v1/memory", {"namespace": "docs", "content": "y", "id": "d2"}
        )
        assert (status, body["error"]["param"]) == (400, "id")
        batch = {"memories": [{"namespace": "docs", "content": "z", "id": "d3"}, {**twice["memories"][1]}]}
        status, body, _ = await gw.call("POST", "/v1/memory", batch)
        assert (status, body["error"]["param"]) == (400, "memories[1].id")
        assert gw.embedder.texts == ["x"]


@pytest.mark.parametrize("limits", [{}, {"rpm": 1000}], ids=["without-limits", "with-an-rpm"])
async def test_an_uploads_start_and_its_embeddings_count_whether_its_key_has_limits_or_not(
    opened: Any, limits: dict[str, Any]
) -> None:
    """(h-usage2) A job's start counted as one request of a limited key's (settled at 0), but a
    key without limits returned before the gate (h-keyspend's "not fixed"), and ``on_behalf_of``
    set nothing for it, so its job's embeddings (and the memory API's) were the gateway's: its
    row had nothing. Now both keys' rows say the same: the start, and one request per
    embeddings call with the tokens the provider reported."""
    async for gw in opened(**limits):
        status, job = await gw.upload(b"one short paragraph")
        assert status == 202, job
        job = await gw.wait(job["id"])
        assert job["status"] == "done", job
        assert gw.embedder.texts == ["one short paragraph"]  # one embeddings call (embed_batch 2)
        usage = await gw.usage()
        assert (usage["requests"], usage["tokens_in"]) == (1 + 1, TOKENS_PER_TEXT), usage
        assert usage["cost_usd"] == pytest.approx(0.5)
        assert gw.spend() == pytest.approx(0.5)
        # The memory API's own embeddings: one request each, charged.
        status, body, _ = await gw.call("POST", "/v1/memory", {"namespace": "docs", "content": "two"})
        assert status == 201, body
        status, body, _ = await gw.call("POST", "/v1/memory/search", {"query": "three"})
        assert status == 200, body
        usage = await gw.usage()
        assert (usage["requests"], usage["tokens_in"]) == (4, 3 * TOKENS_PER_TEXT), usage
        assert usage["cost_usd"] == pytest.approx(1.5)
