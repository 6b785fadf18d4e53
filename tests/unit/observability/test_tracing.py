"""Tracing in process: the span tree a request makes (request -> cache, request -> each upstream
attempt), its GenAI names and attributes, the client's trace continued and carried upstream, no
secret or prompt in what is exported, and nothing of it when tracing is off. Spans go over real
OTLP/HTTP to a stand-in collector on loopback (``gateway.testing.otlp_sink``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.errors import StartupError, UpstreamConnectError
from gateway.observability import tracing
from gateway.observability.tracing import traces_endpoint
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.otlp_sink import ExportedSpan, OtlpSink

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers:
  down: {kind: openai, base_url: "http://down.test:8001/v1", api_key_env: DOWN_KEY}
  up: {kind: anthropic, base_url: "https://up.test/v1", api_key_env: UP_KEY}
models:
  m:
    strategy: ordered
    deployments:
      - {provider: down, model: model-down}
      - {provider: up, model: model-up}
memory: {enabled: false}
"""
DOWN_KEY = "sk-down-secret-key-0123456789"
UP_KEY = "sk-ant-up-secret-key-9876543210"
CLIENT_AUTH = "Bearer sk-client-credential-abcdef"
PROMPT = "the secret prompt text 7f3a9c"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


class Upstreams:
    """The two providers' transports: ``down`` refuses connections, ``up`` answers (Anthropic)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, UpstreamRequest]] = []

    def down(self, request: UpstreamRequest) -> MockResponse:
        self.seen.append(("down", request))
        raise UpstreamConnectError("down: cannot reach provider", provider="down")

    def up(self, request: UpstreamRequest) -> MockResponse:
        self.seen.append(("up", request))
        body = orjson.loads(request.body)
        if body.get("stream"):
            events = [
                {"type": "message_start", "message": {"id": "msg_s", "model": "model-up-2025",
                 "usage": {"input_tokens": 9, "output_tokens": 0}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "answer"}},
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
                {"type": "message_stop"},
            ]  # fmt: skip
            encoded = [f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in events]
            if b"cut me" in request.body:  # the connection drops after the first text
                return MockResponse.stream(cut_after(encoded[:3]))
            return MockResponse.stream(encoded)
        return MockResponse.json(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "model-up-2025",
                "content": [{"type": "text", "text": "answer"}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 11, "output_tokens": 3},
            }
        )


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as running:
        yield running


async def cut_after(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event
    raise UpstreamConnectError("up: provider closed the connection before the body ended", provider="up")


def traced_app(upstreams: Upstreams, env: dict[str, str]) -> web.Application:
    return build_app(
        Settings(access_log=False),
        parse_policy(POLICY),
        {"DOWN_KEY": DOWN_KEY, "UP_KEY": UP_KEY, **env},
        transports={"down": MockTransport(upstreams.down), "up": MockTransport(upstreams.up)},
    )


def chat(stream: bool = False) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": 50,
        "stream": stream,
    }


def by_name(spans: list[ExportedSpan]) -> dict[str, list[ExportedSpan]]:
    named: dict[str, list[ExportedSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


async def test_a_request_makes_a_span_tree_with_genai_names(
    aiohttp_client: ClientFactory, sink: OtlpSink
) -> None:
    upstreams = Upstreams()
    app = traced_app(upstreams, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url})
    client = await aiohttp_client(app)
    headers = {"traceparent": TRACEPARENT, "Authorization": CLIENT_AUTH, "x-request-id": "req-1"}
    resp = await client.post("/v1/chat/completions", json=chat(), headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["x-gateway-fallback"] == "true"
    await client.close()  # the app's cleanup exports what is pending

    spans = sink.spans()
    named = by_name(spans)
    assert sorted(named) == ["POST /v1/chat/completions", "cache lookup", "chat model-down", "chat model-up"]
    (request,) = named["POST /v1/chat/completions"]
    (cache,) = named["cache lookup"]
    (failed,) = named["chat model-down"]
    (served,) = named["chat model-up"]
    # One trace, the client's: the request span's parent is the client's span.
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert request.parent_span_id == CLIENT_SPAN and request.kind == "SERVER"
    assert cache.parent_span_id == request.span_id and cache.kind == "INTERNAL"
    assert failed.parent_span_id == served.parent_span_id == request.span_id
    assert failed.kind == served.kind == "CLIENT"
    assert failed.end_ns <= served.start_ns  # the failover attempt came after the failure
    assert request.service_name == "sophia-gateway"

    assert request.attributes == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "gateway.request_id": "req-1",
        "gen_ai.request.model": "m",
        "gateway.provider": "up",
        "gen_ai.response.model": "model-up",
        "gateway.attempts": 2,
        "gateway.fallback": True,
        "gateway.cache.status": "miss",
    }
    assert cache.attributes == {"gateway.cache.category": "common_queries", "gateway.cache.status": "miss"}
    assert served.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "model-up",
        "gen_ai.response.model": "model-up-2025",
        "gen_ai.response.id": "msg_1",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0,
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 3,
        "gateway.provider": "up",
        "gateway.model_group": "m",
        "server.address": "up.test",
        "server.port": 443,
    }
    assert served.status == "UNSET"
    assert failed.status == "ERROR"
    assert failed.attributes["error.type"] == "UpstreamConnectError"
    assert failed.attributes["gen_ai.provider.name"] == "openai"
    assert (failed.attributes["server.address"], failed.attributes["server.port"]) == ("down.test", 8001)

    # Each attempt carried its own span upstream as the W3C traceparent.
    sent = {name: request.headers for name, request in upstreams.seen}
    assert sent["down"] is not None and sent["down"]["traceparent"] == f"00-{TRACE_ID}-{failed.span_id}-01"
    assert sent["up"] is not None and sent["up"]["traceparent"] == f"00-{TRACE_ID}-{served.span_id}-01"

    # Nothing exported holds the prompt, a provider key or the client's credential.
    exported = b"".join(sink.bodies)
    for secret in (PROMPT, DOWN_KEY, UP_KEY, CLIENT_AUTH, "sk-client-credential", "answer"):
        assert secret.encode() not in exported


async def test_a_cache_hit_has_no_attempt_and_a_new_trace_without_traceparent(
    aiohttp_client: ClientFactory, sink: OtlpSink
) -> None:
    upstreams = Upstreams()
    client = await aiohttp_client(traced_app(upstreams, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}))
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status == 200
    assert resp.headers["x-gateway-cache"] == "hit"
    await client.close()
    spans = sink.spans()
    requests = [s for s in spans if s.kind == "SERVER"]
    assert len(requests) == 2 and len({s.trace_id for s in requests}) == 2  # no parent: new traces
    assert all(s.parent_span_id == "" for s in requests)
    second = requests[1]
    children = [s for s in spans if s.parent_span_id == second.span_id]
    assert [(c.name, c.attributes["gateway.cache.status"]) for c in children] == [("cache lookup", "hit")]
    assert second.attributes["gateway.provider"] == "cache"


async def test_a_stream_attempt_span_ends_with_the_stream(
    aiohttp_client: ClientFactory, sink: OtlpSink
) -> None:
    upstreams = Upstreams()
    client = await aiohttp_client(traced_app(upstreams, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}))
    body = {**chat(stream=True), "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert resp.status == 200
    text = await resp.text()
    assert "answer" in text and "[DONE]" in text
    await client.close()
    named = by_name(sink.spans())
    (request,) = named["POST /v1/chat/completions"]
    (served,) = named["chat model-up"]
    assert served.attributes["gateway.stream"] is True
    assert served.attributes["gen_ai.usage.output_tokens"] == 4
    assert served.attributes["gen_ai.usage.input_tokens"] == 9
    assert served.status == "UNSET"
    assert served.end_ns <= request.end_ns and served.parent_span_id == request.span_id


async def test_a_stream_the_provider_fails_after_its_first_byte_fails_its_request_span(
    aiohttp_client: ClientFactory, sink: OtlpSink
) -> None:
    """Answered 200, the stream then cut by the provider: the request span is failed with the
    stream's reason, the attempt span with the gateway error."""
    upstreams = Upstreams()
    client = await aiohttp_client(traced_app(upstreams, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}))
    body = {**chat(stream=True), "messages": [{"role": "user", "content": "cut me"}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    text = await resp.text()
    assert "answer" in text and '"error"' in text and text.endswith("data: [DONE]\n\n")
    await client.close()
    named = by_name(sink.spans())
    (request,) = named["POST /v1/chat/completions"]
    (served,) = named["chat model-up"]
    assert request.status == "ERROR" and request.attributes["http.response.status_code"] == 200
    assert request.attributes["error.type"] == request.attributes["gateway.stream_error"] == "upstream_closed"
    assert served.status == "ERROR" and served.attributes["error.type"] == "UpstreamConnectError"


async def test_tracing_off_sends_no_traceparent_and_installs_no_tracer(aiohttp_client: ClientFactory) -> None:
    upstreams = Upstreams()
    app = traced_app(upstreams, {})
    assert app[keys.TRACER] is tracing.OFF
    client = await aiohttp_client(app)
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"traceparent": TRACEPARENT})
    assert resp.status == 200
    assert [name for name, _ in upstreams.seen] == ["down", "up"]
    for _, request in upstreams.seen:
        assert "traceparent" not in (request.headers or {})


def test_the_endpoint_follows_the_standard_variables() -> None:
    assert traces_endpoint({}) is None
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert (
        traces_endpoint(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
            }
        )
        == "http://t/x"
    )
    assert (
        traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) is None
    )
    assert (
        traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
        is None
    )


async def test_the_service_name_and_resource_come_from_the_environment(
    aiohttp_client: ClientFactory, sink: OtlpSink
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_SERVICE_NAME": "gw-eu",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,service.name=ignored",
    }
    client = await aiohttp_client(traced_app(Upstreams(), env))
    assert (await client.get("/health/live")).status == 200
    await client.close()
    (span,) = sink.spans()
    assert span.name == "GET /health/live"
    assert span.service_name == "gw-eu"
    assert span.resource["deployment.environment"] == "staging"


def test_tracing_configured_without_the_sdk_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "gateway.observability.otel", raising=False)
    with pytest.raises(StartupError, match=r"\(opentelemetry\).*pip install 'sophia-gateway\[tracing\]'"):
        traced_app(Upstreams(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
