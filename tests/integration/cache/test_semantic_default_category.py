"""A semantic default category, through the whole request path in process (``build_app`` and a
MockTransport provider): the gateway's own embedding call for a prompt went into the default
category too, was looked up semantically, embedded its own text again under its own key and
waited on its own single flight: a chat hung for minutes with no answer (an outside probe)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

POLICY = """
version: 1
auth: {mode: open}
providers:
  p: {kind: openai, base_url: "http://p.test/v1"}
models:
  chat: {deployments: [{provider: p, model: c}]}
  emb: {deployments: [{provider: p, model: e}]}
memory: {enabled: false}
cache:
  default_category: sem
  categories:
    sem: {ttl_s: 600, max_bytes: 10MB, semantic: {embedding_model: emb, threshold: 0.9}}
"""


def upstream(seen: list[str]) -> MockTransport:
    def answer(request: UpstreamRequest) -> MockResponse:
        body: Any = orjson.loads(request.body)
        if "input" in body:
            seen.append("embeddings")
            data = [{"object": "embedding", "index": 0, "embedding": [1.0, 0.0, 0.0]}]
            return MockResponse.json({"object": "list", "data": data, "model": "e"})
        seen.append("chat")
        choice = {"index": 0, "message": {"role": "assistant", "content": "8,849 m"}, "finish_reason": "stop"}
        return MockResponse.json({"id": "x", "object": "chat.completion", "model": "c", "choices": [choice]})

    return MockTransport(answer)


async def test_a_chat_in_a_semantic_default_category_is_answered_then_hit() -> None:
    seen: list[str] = []
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports={"p": upstream(seen)})
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        ask = {
            "model": "chat",
            "temperature": 0,
            "messages": [{"role": "user", "content": "How tall is Everest?"}],
        }
        async with asyncio.timeout(20):
            first = await client.post("/v1/chat/completions", json=ask)
            assert first.status == 200 and first.headers["x-gateway-cache"] == "miss"
            paraphrase = {**ask, "messages": [{"role": "user", "content": "What is the height of Everest?"}]}
            second = await client.post("/v1/chat/completions", json=paraphrase)
            assert second.status == 200 and second.headers["x-gateway-cache"] == "hit"
            assert second.headers["x-gateway-cache-match"] == "semantic"
        # One chat upstream; the embeddings: the first prompt's (once), the paraphrase's.
        assert seen.count("chat") == 1 and seen.count("embeddings") == 2
        # A client's own embeddings in the semantic category: matched exactly, never another text's.
        vectors = []
        for text in ("alpha beta gamma delta", "delta gamma beta alpha"):
            resp = await client.post("/v1/embeddings", json={"model": "emb", "input": text})
            assert resp.status == 200
            vectors.append(resp.headers["x-gateway-cache"])
        assert vectors == ["miss", "miss"]
    finally:
        await client.close()
