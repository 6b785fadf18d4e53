"""Gemini ends a turn it failed (a function call it could not write: ``MALFORMED_FUNCTION_CALL``,
and its kin) with no content at all. Through the gateway that is a failure tried on the next
deployment, whole or streamed, never an empty answer the client takes for the model's (or the
cache keeps)."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from tests.unit.service.test_request_path import ClientFactory

POLICY = """
version: 1
auth: {mode: open}
providers:
  gem: {kind: gemini, base_url: "http://gem.test"}
  good: {kind: openai, base_url: "http://good.test/v1"}
models:
  pair: {strategy: ordered, deployments: [{provider: gem, model: gemini-2.5-flash}, {provider: good, model: g}]}
memory: {enabled: false}
"""
FAILED = {
    "candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "index": 0}],
    "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
    "modelVersion": "gemini-2.5-flash",
}


def good(request: UpstreamRequest) -> MockResponse:
    if request.stream:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "g",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
        return MockResponse.stream([b"data: " + orjson.dumps(chunk) + b"\n\n", b"data: [DONE]\n\n"])
    message = {"role": "assistant", "content": "hi"}
    return MockResponse.json(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "g",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


class Gemini:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: UpstreamRequest) -> MockResponse:
        self.calls += 1
        if request.stream:
            return MockResponse.stream([b"data: " + orjson.dumps(FAILED) + b"\r\n\r\n"])
        return MockResponse.json(FAILED)


@pytest.fixture
def gemini() -> Gemini:
    return Gemini()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, gemini: Gemini) -> TestClient:
    transports = {"gem": MockTransport(gemini), "good": MockTransport(good)}
    return await aiohttp_client(
        build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_empty_gemini_turn_is_served_by_the_next_deployment(
    client: TestClient, gemini: Gemini, stream: bool
) -> None:
    api = openai.AsyncOpenAI(api_key="k", base_url=str(client.make_url("/v1")), max_retries=0)
    messages: Any = [{"role": "user", "content": "call the tool"}]
    for _ in range(2):  # the second would be a cache hit of the empty answer, before
        if stream:
            parts = [c async for c in await api.chat.completions.create(model="pair", messages=messages, temperature=0, stream=True)]  # fmt: skip
            text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        else:
            answer = await api.chat.completions.create(model="pair", messages=messages, temperature=0)
            text = answer.choices[0].message.content or ""
        assert text == "hi"
    assert gemini.calls >= 1
