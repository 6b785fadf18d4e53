"""A Gemini embeddings answer that does not hold one vector per input is a broken answer: a 502
``upstream_error``, failed over like any other, never a short or misaligned list to the client;
and its usage, which Gemini does not report, is estimated. In process: the real request path,
MockTransport behind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
RETRY = "retry: {max_attempts: 2, backoff_initial_s: 0, backoff_max_s: 0}"
POLICY = f"""
version: 1
auth: {{mode: open}}
providers:
  short: {{kind: gemini, base_url: "http://short.test/v1beta"}}
  whole: {{kind: gemini, base_url: "http://whole.test/v1beta"}}
models:
  short: {{deployments: [{{provider: short, model: e1}}], {RETRY}}}
  pair: {{strategy: ordered, deployments: [{{provider: short, model: e1}}, {{provider: whole, model: e2}}], {RETRY}}}
  whole: {{deployments: [{{provider: whole, model: e2}}]}}
memory: {{enabled: false}}
"""


def _handler(name: str, extra: int) -> Callable[[UpstreamRequest], MockResponse]:
    """Each vector is [the input's length, the deployment's number]; ``extra`` vectors more (or
    fewer) than asked."""

    def handle(request: UpstreamRequest) -> MockResponse:
        texts = [r["content"]["parts"][0]["text"] for r in orjson.loads(request.body)["requests"]]
        vectors = [{"values": [float(len(t)), 1.0 if name == "short" else 2.0]} for t in texts]
        vectors = vectors[: len(vectors) + extra] if extra < 0 else vectors + vectors[:extra]
        return MockResponse.json({"embeddings": vectors})

    return handle


@pytest.fixture(params=[-1, 1], ids=["one short", "one more"])
async def client(aiohttp_client: ClientFactory, request: pytest.FixtureRequest) -> TestClient:
    transports = {
        "short": MockTransport(_handler("short", request.param)),
        "whole": MockTransport(_handler("whole", 0)),
    }
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    return await aiohttp_client(app)


async def test_an_answer_without_one_vector_per_input_is_a_502(client: TestClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "short", "input": ["a", "bb", "ccc"]})
    assert response.status == 502, await response.text()
    error = (await response.json())["error"]
    assert error["type"] == "upstream_error" and "3 inputs" in error["message"]


async def test_an_answer_without_one_vector_per_input_is_failed_over(client: TestClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "pair", "input": ["a", "bb", "ccc"]})
    assert response.status == 200, await response.text()
    data = (await response.json())["data"]
    assert [d["embedding"] for d in data] == [[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]]
    assert response.headers["x-gateway-attempts"] == "2"


async def test_usage_is_estimated_from_the_inputs_characters(client: TestClient) -> None:
    """Four characters a token, rounded up per input: 1, 2 and 3 characters are a token each, 9 are 3."""
    response = await client.post(
        "/v1/embeddings", json={"model": "whole", "input": ["a", "bb", "ccc", "d" * 9]}
    )
    assert (await response.json())["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
