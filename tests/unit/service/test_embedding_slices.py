"""A long embeddings request sent to a Gemini deployment in slices (its 100 inputs a call): a slice
that fails fails the attempt, and a retry on the same deployment asks again only for the slices
that did not come back; on another deployment it asks for all of them, so one answer's vectors
always come from one model. In process: the real request path, MockTransport behind."""

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
  g1: {{kind: gemini, base_url: "http://g1.test/v1beta"}}
  g2: {{kind: gemini, base_url: "http://g2.test/v1beta"}}
models:
  same: {{deployments: [{{provider: g1, model: e1}}], {RETRY}}}
  pair: {{strategy: ordered, deployments: [{{provider: g1, model: e1}}, {{provider: g2, model: e2}}], {RETRY}}}
memory: {{enabled: false}}
"""
TEXTS = [f"{i}" for i in range(250)]  # 3 slices: 0-99, 100-199, 200-249


class Gemini:
    """Two Gemini deployments: each vector is [the input's number, the deployment's number]; g1
    refuses (500) the slice starting at 100 the first time it is asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []  # (provider, first input of the slice)
        self.transports = {name: MockTransport(self._handler(name)) for name in ("g1", "g2")}

    def _handler(self, name: str) -> Callable[[UpstreamRequest], MockResponse]:
        def handle(request: UpstreamRequest) -> MockResponse:
            texts = [int(r["content"]["parts"][0]["text"]) for r in orjson.loads(request.body)["requests"]]
            self.asked.append((name, texts[0]))
            if name == "g1" and texts[0] == 100 and self.asked.count(("g1", 100)) == 1:
                error = {"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}
                return MockResponse.json(error, status=500)
            number = float(name[1])
            return MockResponse.json({"embeddings": [{"values": [float(t), number]} for t in texts]})

        return handle


@pytest.fixture
def gemini() -> Gemini:
    return Gemini()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, gemini: Gemini) -> TestClient:
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=gemini.transports)
    return await aiohttp_client(app)


async def embedded(client: TestClient, model: str) -> list[list[float]]:
    response = await client.post("/v1/embeddings", json={"model": model, "input": TEXTS})
    assert response.status == 200, await response.text()
    data = (await response.json())["data"]
    assert [d["index"] for d in data] == list(range(len(TEXTS)))
    return [d["embedding"] for d in data]


async def test_a_retry_on_the_same_deployment_asks_only_for_the_failed_slice(
    client: TestClient, gemini: Gemini
) -> None:
    vectors = await embedded(client, "same")
    assert vectors == [[float(i), 1.0] for i in range(250)]
    # First attempt: the three slices (100 failed); the retry: slice 100 alone, not all three again.
    assert sorted(gemini.asked) == [("g1", 0), ("g1", 100), ("g1", 100), ("g1", 200)]


async def test_a_retry_on_another_deployment_asks_it_for_every_slice(
    client: TestClient, gemini: Gemini
) -> None:
    vectors = await embedded(client, "pair")
    assert vectors == [[float(i), 2.0] for i in range(250)]  # one model's vectors, never mixed
    assert sorted(a for a in gemini.asked if a[0] == "g2") == [("g2", 0), ("g2", 100), ("g2", 200)]
