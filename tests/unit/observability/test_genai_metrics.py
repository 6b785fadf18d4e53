"""The OpenTelemetry GenAI metrics, in Prometheus form, after real requests through the app.

The whole request path runs in process (aiohttp's TestClient in front, MockTransport behind);
the figures are read back from the app's registry as Prometheus would scrape them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.errors import UpstreamConnectError
from gateway.observability.metrics import GENAI_LABELS, GatewayMetrics, vendor_of
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers:
  first: {kind: openai, base_url: "http://a.test/v1"}
  second: {kind: azure, base_url: "https://b.test"}
models:
  chat-model:
    strategy: ordered
    deployments: [{provider: first, model: up-a}, {provider: second, model: up-b}]
  emb: {deployments: [{provider: first, model: emb-a}]}
memory: {enabled: false}
"""

CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}
PAUSE_S = 0.05  # between a stream's first and last chunk
STREAM_TOKENS = 11  # output tokens the stream's usage reports


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def event(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


async def slow_stream(model: str) -> AsyncIterator[bytes]:
    delta = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
    yield event({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [delta]})
    await asyncio.sleep(PAUSE_S)
    usage = {"prompt_tokens": 4, "completion_tokens": STREAM_TOKENS, "total_tokens": 4 + STREAM_TOKENS}
    yield event({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


class Upstream:
    """Answers as OpenAI would; ``down`` names the providers that refuse connections."""

    def __init__(self) -> None:
        self.down: set[str] = set()

    def transport(self, name: str) -> MockTransport:
        def handle(request: UpstreamRequest) -> MockResponse:
            if name in self.down:
                raise UpstreamConnectError(f"{name}: refused", provider=name)
            body = orjson.loads(request.body)
            model = str(body.get("model") or request.path.split("/deployments/")[-1].split("/")[0])
            if "input" in body:
                data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
                usage = {"prompt_tokens": 2, "total_tokens": 2}
                return MockResponse.json({"object": "list", "data": data, "model": model, "usage": usage})
            if body.get("stream"):
                return MockResponse.stream(slow_stream(model))
            return MockResponse.json(completion(model))

        return MockTransport(handle)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, upstream: Upstream) -> TestClient:
    transports = {name: upstream.transport(name) for name in ("first", "second")}
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    return await aiohttp_client(app)


def sample(client: TestClient, name: str, **labels: str) -> float | None:
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    return registry.get_sample_value(name, labels)


def genai(operation: str, vendor: str, asked: str, answered: str, provider: str) -> dict[str, str]:
    return dict(zip(GENAI_LABELS, (operation, vendor, asked, answered, provider), strict=True))


def test_names_and_labels_follow_the_otel_to_prometheus_mapping() -> None:
    metrics = GatewayMetrics()
    assert metrics.operation_duration.name == "gen_ai_client_operation_duration_seconds"
    assert metrics.token_usage.name == "gen_ai_client_token_usage"  # unit {token}: no suffix
    assert metrics.time_to_first_token.name == "gen_ai_server_time_to_first_token_seconds"
    assert metrics.time_per_output_token.name == "gen_ai_server_time_per_output_token_seconds"
    assert GENAI_LABELS == (
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "provider",
    )
    assert metrics.operation_duration.labelnames == (*GENAI_LABELS, "error_type")
    assert metrics.token_usage.labelnames == (*GENAI_LABELS, "gen_ai_token_type")
    assert metrics.time_to_first_token.labelnames == GENAI_LABELS
    assert metrics.time_per_output_token.labelnames == GENAI_LABELS


def test_the_vendor_is_otels_provider_name_for_each_kind() -> None:
    assert [vendor_of(k) for k in ("openai", "azure", "anthropic", "gemini")] == [
        "openai",
        "azure.ai.openai",
        "anthropic",
        "gcp.gemini",
    ]
    assert vendor_of("something-new") == "_OTHER"


async def test_a_whole_answer_records_its_operation_and_tokens(client: TestClient) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    labels = genai("chat", "openai", "chat-model", "up-a", "first")
    assert sample(client, "gen_ai_client_operation_duration_seconds_count", **labels, error_type="") == 1
    duration = sample(client, "gen_ai_client_operation_duration_seconds_sum", **labels, error_type="")
    assert duration is not None and 0 < duration < 5
    assert sample(client, "gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="input") == 3
    assert sample(client, "gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="output") == 2
    # a whole answer has no first token nor time per token
    assert sample(client, "gen_ai_server_time_per_output_token_seconds_count", **labels) is None
    text = client.app[keys.METRICS].render().decode()  # type: ignore[index]
    assert 'error_type=""' in text  # Prometheus reads an empty label as no label


async def test_a_failover_is_labelled_with_what_answered(client: TestClient, upstream: Upstream) -> None:
    upstream.down = {"first"}
    resp = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.3})
    assert resp.status == 200
    labels = genai("chat", "azure.ai.openai", "chat-model", "up-b", "second")
    assert sample(client, "gen_ai_client_operation_duration_seconds_count", **labels, error_type="") == 1
    assert sample(client, "gen_ai_client_token_usage_count", **labels, gen_ai_token_type="output") == 1


async def test_a_failed_call_is_counted_with_its_error_type(client: TestClient, upstream: Upstream) -> None:
    upstream.down = {"first", "second"}
    resp = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.4})
    assert resp.status == 502
    failed = {**genai("chat", "", "chat-model", "", ""), "error_type": "AllDeploymentsFailed"}
    assert sample(client, "gen_ai_client_operation_duration_seconds_count", **failed) == 1
    # refused before any provider (unknown model): no GenAI operation at all
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert resp.status == 404
    text = client.app[keys.METRICS].render().decode()  # type: ignore[index]
    assert 'gen_ai_request_model="nope"' not in text


async def test_embeddings_are_their_own_operation(client: TestClient) -> None:
    resp = await client.post("/v1/embeddings", json={"model": "emb", "input": "hello"})
    assert resp.status == 200
    labels = genai("embeddings", "openai", "emb", "emb-a", "first")
    assert sample(client, "gen_ai_client_operation_duration_seconds_count", **labels, error_type="") == 1
    assert sample(client, "gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="input") == 2


async def test_a_stream_records_first_token_and_time_per_output_token(client: TestClient) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    assert (await resp.text()).endswith("data: [DONE]\n\n")
    labels = genai("chat", "openai", "chat-model", "up-a", "first")
    assert sample(client, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 1
    assert sample(client, "gen_ai_server_time_per_output_token_seconds_count", **labels) == 1
    per_token = sample(client, "gen_ai_server_time_per_output_token_seconds_sum", **labels)
    # (end - first chunk) / (11 - 1): the upstream paused PAUSE_S between them
    assert per_token is not None and PAUSE_S / (STREAM_TOKENS - 1) <= per_token < 1.0
    assert sample(client, "gen_ai_client_operation_duration_seconds_count", **labels, error_type="") == 1
    duration = sample(client, "gen_ai_client_operation_duration_seconds_sum", **labels, error_type="")
    assert duration is not None and duration >= PAUSE_S  # to the last chunk
    assert sample(client, "gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="output") == 11
