"""The Messages front door in process: the official ``anthropic`` SDK (async) against the gateway
on loopback (aiohttp's TestClient), MockTransport behind, everything between the real code.

Providers: ``oa`` (kind openai, translated), ``an`` (kind anthropic, passed through natively)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import reservation
from gateway.auth.identity import Caller
from gateway.errors import UpstreamConnectError
from gateway.policy.loader import parse_policy
from gateway.providers.base import Endpoint, UpstreamRequest
from gateway.service.messages import MessagesDoor
from gateway.settings import Settings
from gateway.testing.images import png
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.pdf import make_pdf

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
breaker: {consecutive_failures: 1000000, min_requests: 1000000}
retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
providers:
  oa: {kind: openai, base_url: "http://oa.test/v1"}
  an: {kind: anthropic, base_url: "http://an.test/v1"}
  an2: {kind: anthropic, base_url: "http://an2.test/v1"}
models:
  gpt: {deployments: [{provider: oa, model: gpt-x}]}
  claude: {deployments: [{provider: an, model: claude-x}]}
  mixed:
    strategy: ordered
    deployments: [{provider: an, model: claude-m}, {provider: oa, model: gpt-m}]
  busy:
    strategy: ordered
    deployments: [{provider: an, model: claude-b1}, {provider: an2, model: claude-b2}]
memory: {enabled: false}
"""

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


def completion(model: str, text: str | None = "Hello!", calls: list[Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def sse(value: Any) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


def chat_chunks(model: str, deltas: list[dict[str, Any]], finish: str = "stop") -> list[bytes]:
    head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model}
    out = [sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    out += [sse({**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) for d in deltas]
    out.append(sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    out.append(sse({**head, "choices": [], "usage": usage}))
    return [*out, b"data: [DONE]\n\n"]


def anthropic_message(model: str, text: str = "Bonjour") -> dict[str, Any]:
    return {
        "id": "msg_01native",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3},
    }


def anthropic_events(model: str) -> list[bytes]:
    def ev(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

    start = anthropic_message(model, "")
    start["content"], start["stop_reason"] = [], None
    start["usage"] = {"input_tokens": 10, "output_tokens": 1}
    return [
        ev("message_start", {"message": start}),
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ev("ping", {}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Bon"}}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "jour"}}),
        ev("content_block_stop", {"index": 0}),
        ev("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 3}}),
        ev("message_stop", {}),
    ]  # fmt: skip


Behaviour = Callable[[UpstreamRequest], MockResponse]


class Upstreams:
    """One MockTransport per provider; each request lands in ``calls`` as (provider, path, body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.behaviour: dict[str, Behaviour] = {}
        self.transports = {name: MockTransport(self._handler(name)) for name in ("oa", "an", "an2")}

    def _handler(self, name: str) -> Callable[[UpstreamRequest], MockResponse]:
        def handle(request: UpstreamRequest) -> MockResponse:
            self.calls.append((name, request.path, orjson.loads(request.body)))
            return self.behaviour.get(name, default_answer)(request)

        return handle

    def last(self, name: str) -> dict[str, Any]:
        return [body for (n, _, body) in self.calls if n == name][-1]


def default_answer(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if request.path == "/messages":  # Anthropic, natively
        if body.get("stream"):
            return MockResponse.stream(anthropic_events(body["model"]))
        return MockResponse.json(anthropic_message(body["model"]))
    if body.get("stream"):
        return MockResponse.stream(chat_chunks(body["model"], [{"content": "Hel"}, {"content": "lo!"}]))
    return MockResponse.json(completion(body["model"]))


def anthropic_error(status: int, kind: str) -> Behaviour:
    return lambda request: MockResponse.json(
        {"type": "error", "error": {"type": kind, "message": f"upstream {kind}"}}, status=status
    )


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@pytest.fixture
async def gateway(aiohttp_client: ClientFactory, upstreams: Upstreams) -> TestClient:
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=upstreams.transports)
    return await aiohttp_client(app)


@pytest.fixture
async def sdk(gateway: TestClient) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")), api_key="client-key", max_retries=0, timeout=10
    )
    yield client
    await client.close()  # on this test's loop


USER = [{"role": "user", "content": "Hello, Claude"}]


async def test_the_request_id_is_in_the_header_the_anthropic_sdk_reads(
    sdk: anthropic.AsyncAnthropic, gateway: TestClient
) -> None:
    raw = await sdk.messages.with_raw_response.create(model="gpt", max_tokens=10, messages=USER)
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert (await raw.parse())._request_id == raw.headers["x-request-id"]
    async with sdk.messages.stream(model="gpt", max_tokens=10, messages=USER) as stream:
        assert stream.request_id is not None and len(stream.request_id) == 32
    with pytest.raises(anthropic.NotFoundError) as raised:
        await sdk.messages.create(model="nope", max_tokens=10, messages=USER)
    assert raised.value.request_id == raised.value.response.headers["x-request-id"]
    chat = await gateway.post("/v1/chat/completions", json={"model": "gpt", "messages": USER})
    assert "request-id" not in chat.headers  # OpenAI's doors keep x-request-id alone


async def test_the_anthropic_sdk_lists_and_retrieves_models_in_its_shape(
    sdk: anthropic.AsyncAnthropic, gateway: TestClient
) -> None:
    page = await sdk.models.list()
    ids = [m.id for m in page.data]
    assert "gpt" in ids and "claude" in ids
    assert all(m.type == "model" and m.display_name == m.id for m in page.data)
    assert page.data[0].created_at.year == 1970  # a datetime, as the SDK's ModelInfo requires
    model = await sdk.models.retrieve("claude")
    assert (model.id, model.type) == ("claude", "model")
    with pytest.raises(anthropic.NotFoundError) as missing:
        await sdk.models.retrieve("nope")
    body = missing.value.body
    assert isinstance(body, dict) and body["type"] == "error"  # Anthropic's envelope, and its header
    assert body["error"]["type"] == "not_found_error"
    assert missing.value.request_id == missing.value.response.headers["x-request-id"]
    openai_shape = await (await gateway.get("/v1/models")).json()
    assert openai_shape["object"] == "list" and openai_shape["data"][0]["object"] == "model"


# ----- plain answers


async def test_plain_answer_from_an_openai_deployment(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    message = await sdk.messages.create(
        model="gpt",
        max_tokens=100,
        system="Be brief.",
        messages=USER,
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "u-1"},
        # (anthropic 2.x dropped temperature and top_k from its signature; the API takes them)
        extra_body={"temperature": 0.5, "top_k": 5},
    )
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
    assert message.model == "gpt-x"
    assert upstreams.calls[0][1] == "/chat/completions"
    assert upstreams.last("oa") == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello, Claude"},
        ],
        "max_tokens": 100,
        "temperature": 0.5,
        "stop": ["\n\nHuman:"],
        "user": "u-1",
    }  # top_k dropped: OpenAI has none


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "enabled", "budget_tokens": 1024},
        {"type": "disabled"},
        {"type": "adaptive", "display": "omitted"},
    ],
)
async def test_documented_thinking_and_numbers_are_accepted_and_thinking_dropped_for_chat(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams, thinking: dict[str, Any]
) -> None:
    message = await sdk.messages.create(
        model="gpt",
        max_tokens=2048,
        messages=USER,
        metadata={"user_id": None},
        extra_body={"thinking": thinking, "temperature": 1, "top_p": 0.96, "service_tier": "auto"},
    )
    assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
    sent = upstreams.last("oa")
    assert (sent["temperature"], sent["top_p"]) == (1, 0.96)
    assert not {"thinking", "service_tier", "user"} & set(sent)  # no chat provider takes them


async def test_anthropic_deployments_get_the_request_natively(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    raw = await sdk.messages.with_raw_response.create(
        model="claude",
        max_tokens=50,
        messages=USER,
        extra_body={"top_k": 3},
        extra_headers={"anthropic-beta": "b-1"},
    )
    message = await raw.parse()
    assert message.id == "msg_01native"
    assert message.content[0].text == "Bonjour"  # type: ignore[union-attr]
    assert raw.headers["x-gateway-provider"] == "an"
    assert upstreams.calls == [
        ("an", "/messages", {"model": "claude-x", "max_tokens": 50, "messages": USER, "top_k": 3})
    ]


async def test_tool_use_and_a_tool_result_round_trip(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
    }
    upstreams.behaviour = {"oa": lambda r: MockResponse.json(completion("gpt-x", None, [call]))}
    first = await sdk.messages.create(
        model="gpt",
        max_tokens=100,
        messages=USER,
        tools=[WEATHER],
        tool_choice={"type": "any"},  # type: ignore[list-item]
    )
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"location": "Paris"}
    sent = upstreams.last("oa")
    assert sent["tool_choice"] == "required"
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"],
                                          "description": WEATHER["description"]}}
    ]  # fmt: skip
    upstreams.behaviour = {}
    second = await sdk.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *USER,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},  # type: ignore[misc]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "15 degrees"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )
    assert second.content[0].text == "Hello!"  # type: ignore[union-attr]
    turns = upstreams.last("oa")["messages"]
    assert turns[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}],
    }  # fmt: skip
    assert turns[2] == {"role": "tool", "tool_call_id": "call_1", "content": "15 degrees"}
    assert turns[3] == {"role": "user", "content": "And tomorrow?"}


async def test_json_output_with_output_config(sdk: anthropic.AsyncAnthropic, upstreams: Upstreams) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    upstreams.behaviour = {"oa": lambda r: MockResponse.json(completion("gpt-x", '{"city": "Paris"}'))}
    message = await sdk.messages.create(
        model="gpt",
        max_tokens=100,
        messages=USER,
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    assert orjson.loads(message.content[0].text) == {"city": "Paris"}  # type: ignore[union-attr]
    assert upstreams.last("oa")["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


# ----- streams


async def test_stream_from_an_openai_deployment(sdk: anthropic.AsyncAnthropic, upstreams: Upstreams) -> None:
    async with sdk.messages.stream(model="gpt", max_tokens=100, messages=USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["Hel", "lo!"]
    assert final.content[0].text == "Hello!"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    sent = upstreams.last("oa")
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_streamed_tool_call_arrives_as_input_json_deltas(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    deltas = [
        {"content": "Let me check."},
        {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"locat'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ion": "Paris"}'}}]},
    ]  # fmt: skip
    upstreams.behaviour = {"oa": lambda r: MockResponse.stream(chat_chunks("gpt-x", deltas, "tool_calls"))}
    kinds: list[str] = []
    async with sdk.messages.stream(model="gpt", max_tokens=100, messages=USER, tools=[WEATHER]) as stream:  # type: ignore[list-item]
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"location": "Paris"}  # type: ignore[union-attr]
    assert final.content[1].id == "call_9"  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert "input_json" in kinds and kinds[-1] == "message_stop"


async def test_native_stream_is_relayed_as_anthropic_sent_it(gateway: TestClient) -> None:
    resp = await gateway.post(
        "/v1/messages", json={"model": "claude", "max_tokens": 9, "messages": USER, "stream": True}
    )
    assert resp.status == 200
    assert await resp.read() == b"".join(anthropic_events("claude-x"))


async def test_a_stream_cut_mid_way_ends_with_an_anthropic_error_event(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    async def cut() -> AsyncIterator[bytes]:
        for chunk in chat_chunks("gpt-x", [{"content": "Hel"}])[:2]:
            yield chunk
        raise UpstreamConnectError("oa: connection reset", provider="oa")

    upstreams.behaviour = {"oa": lambda r: MockResponse.stream(cut())}
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with sdk.messages.stream(model="gpt", max_tokens=100, messages=USER) as stream:
            async for _ in stream.text_stream:
                pass
    # The gateway's fixed words for the reason, naming the provider; not what the library said.
    assert (
        caught.value.body["error"]["message"]
        == "oa: the provider closed the stream before the answer was complete."
    )  # type: ignore[index]


# ----- failover and cache


async def test_failover_from_an_overloaded_anthropic_deployment_to_a_translated_one(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams, gateway: TestClient
) -> None:
    upstreams.behaviour = {"an": anthropic_error(529, "overloaded_error")}
    raw = await sdk.messages.with_raw_response.create(model="mixed", max_tokens=10, messages=USER)
    assert (await raw.parse()).content[0].text == "Hello!"  # type: ignore[union-attr]
    assert (raw.headers["x-gateway-provider"], raw.headers["x-gateway-fallback"]) == ("oa", "true")
    assert [(n, p) for n, p, _ in upstreams.calls] == [("an", "/messages"), ("oa", "/chat/completions")]
    registry = gateway.app[keys.METRICS].registry  # type: ignore[index]
    for mode in ("native", "translated"):
        labels = {"endpoint": "messages", "mode": mode}
        assert registry.get_sample_value("gateway_front_door_attempts_total", labels) == 1.0


async def test_stream_failover_before_the_first_event(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    upstreams.behaviour = {"an": lambda r: MockResponse.stream([anthropic_events("claude-m")[0], error])}
    async with sdk.messages.stream(model="mixed", max_tokens=10, messages=USER) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "Hello!"  # type: ignore[union-attr]
    assert [n for n, _, _ in upstreams.calls] == ["an", "oa"]


async def test_cache_serves_messages_answers_only_to_messages_requests(
    gateway: TestClient, upstreams: Upstreams
) -> None:
    body = {"model": "gpt", "max_tokens": 10, "temperature": 0, "messages": USER}
    first = await gateway.post("/v1/messages", json=body)
    second = await gateway.post("/v1/messages", json=body)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert await second.read() == await first.read()
    assert orjson.loads(await second.read())["type"] == "message"
    chat = {"model": "gpt", "max_tokens": 10, "temperature": 0, "messages": USER}  # the same JSON, on chat
    answer = await gateway.post("/v1/chat/completions", json=chat)
    assert answer.headers["x-gateway-cache"] == "miss"
    assert (await answer.json())["object"] == "chat.completion"
    streamed = await gateway.post("/v1/messages", json={**body, "stream": True})
    assert streamed.headers["x-gateway-cache"] == "miss"  # a stream is cached apart
    await streamed.read()
    replay = await gateway.post("/v1/messages", json={**body, "stream": True})
    assert replay.headers["x-gateway-cache"] == "hit"
    assert b"event: message_stop" in await replay.read()
    assert len(upstreams.calls) == 3


async def test_answers_made_under_one_anthropic_beta_set_are_cached_apart(
    gateway: TestClient, upstreams: Upstreams
) -> None:
    """The beta header reaches native deployments and changes what Anthropic answers, so it is
    part of the cache key: a set's names in any order and spacing are one set; none is its own."""
    body = {"model": "claude", "max_tokens": 10, "temperature": 0, "messages": USER}
    sent = [
        ("output-128k-2025-02-19", "miss"),
        ("interleaved-thinking-2025-05-14", "miss"),
        (None, "miss"),
        ("output-128k-2025-02-19", "hit"),
        ("b-2, b-1", "miss"),
        ("b-1,b-2,b-1", "hit"),
        (None, "hit"),
    ]
    for beta, expected in sent:
        headers = {"anthropic-beta": beta} if beta is not None else {}
        answer = await gateway.post("/v1/messages", json=body, headers=headers)
        assert answer.status == 200 and answer.headers["x-gateway-cache"] == expected, (beta, expected)
    assert len(upstreams.calls) == 4


# ----- errors, each as the SDK's own exception


async def test_missing_max_tokens_is_a_bad_request(
    sdk: anthropic.AsyncAnthropic, gateway: TestClient
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk.messages.create(model="gpt", messages=USER, max_tokens=anthropic.omit)  # type: ignore[arg-type]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in caught.value.message
    resp = await gateway.post("/v1/messages", data=b"{not json", headers={"content-type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["type"] == "error"


async def test_unknown_model_is_not_found(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await sdk.messages.create(model="nope", max_tokens=5, messages=USER)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": caught.value.body["error"]["message"]},  # type: ignore[index]
        "request_id": caught.value.request_id,  # Anthropic's "Error shapes": the header's value
    }
    assert caught.value.request_id


async def test_upstream_rate_limit_is_a_rate_limit_error(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    upstreams.behaviour = {"an": anthropic_error(429, "rate_limit_error")}
    with pytest.raises(anthropic.RateLimitError) as caught:
        await sdk.messages.create(model="claude", max_tokens=5, messages=USER)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_every_deployment_overloaded_is_an_overloaded_error(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    upstreams.behaviour = {
        "an": anthropic_error(529, "overloaded_error"),
        "an2": anthropic_error(529, "overloaded_error"),
    }
    with pytest.raises(anthropic.OverloadedError) as caught:
        await sdk.messages.create(model="busy", max_tokens=5, messages=USER)
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_unknown_paths_and_methods_answer_in_anthropic_envelope(gateway: TestClient) -> None:
    missing = await gateway.post("/v1/messages/batches", json={})
    assert missing.status == 404
    assert (await missing.json())["error"]["type"] == "not_found_error"
    wrong = await gateway.get("/v1/messages")
    assert wrong.status == 405
    assert (await wrong.json())["type"] == "error"
    chat = await gateway.get("/v1/nothing")
    assert "type" not in await chat.json()  # OpenAI's envelope elsewhere


async def test_the_anthropic_sdk_on_a_path_or_method_the_gateway_does_not_serve_gets_anthropics_errors(
    sdk: anthropic.AsyncAnthropic, gateway: TestClient
) -> None:
    """Its SDKs send ``anthropic-version`` on every call: a 404 or 405 anywhere is Anthropic's
    envelope with ``request-id`` (the header and the body's ``request_id``), as under /v1/messages
    and /v1/models; it was OpenAI's, and the SDK's ``request_id`` was None (an outside probe)."""
    with pytest.raises(anthropic.NotFoundError) as missing:
        await sdk.beta.files.list()
    assert missing.value.request_id
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Unknown path: GET /v1/files."},
        "request_id": missing.value.request_id,
    }
    wrong = await gateway.delete("/v1/models/gpt", headers={"anthropic-version": "2023-06-01"})
    assert wrong.status == 405 and wrong.headers["request-id"] == wrong.headers["x-request-id"]
    body = await wrong.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["request_id"] == wrong.headers["request-id"]
    plain = await gateway.delete("/v1/models/gpt")  # an OpenAI client's: OpenAI's envelope
    assert plain.status == 405 and "type" not in await plain.json() and "request-id" not in plain.headers


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt", "max_tokens": "5", "messages": USER},
        {"model": "gpt", "max_tokens": 0, "messages": USER},
        {"model": "gpt", "max_tokens": 5, "messages": []},
        {"model": "gpt", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        {"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
        {
            "model": "gpt",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}],
        },
        {"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "system": [{"type": "image"}]},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "tools": [{"name": "x"}]},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "tool_choice": {"type": "maybe"}},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "temperature": 3},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "stream": "yes"},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "output_config": {"format": {"type": "xml"}}},
        {"model": 5, "max_tokens": 5, "messages": USER},
        [1, 2],
        # Types as Anthropic's API takes them: never a boolean or a string for a number, and the
        # shapes of thinking and metadata (forwarded or dropped as given, they were never checked)
        {"model": "gpt", "max_tokens": 5, "messages": USER, "temperature": True},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "temperature": "0.5"},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "top_p": "1"},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "thinking": "on"},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "thinking": {"budget_tokens": 2048}},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "thinking": {"type": "enabled"}},
        {
            "model": "gpt",
            "max_tokens": 5,
            "messages": USER,
            "thinking": {"type": "enabled", "budget_tokens": 100},
        },
        {"model": "gpt", "max_tokens": 5, "messages": USER, "metadata": "u-1"},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "metadata": {"user_id": 7}},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "metadata": {"user_id": "u" * 257}},
        {"model": "gpt", "max_tokens": 5, "messages": USER, "service_tier": 1},
    ],
)
async def test_bad_input_is_a_400_in_anthropic_envelope_never_a_500(gateway: TestClient, body: Any) -> None:
    resp = await gateway.post("/v1/messages", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"


async def test_server_tools_need_an_anthropic_deployment(gateway: TestClient, upstreams: Upstreams) -> None:
    body = {
        "max_tokens": 5,
        "messages": USER,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    refused = await gateway.post("/v1/messages", json={**body, "model": "gpt"})
    assert refused.status == 400
    assert "web_search_20250305" in (await refused.json())["error"]["message"]
    assert upstreams.calls == []
    served = await gateway.post("/v1/messages", json={**body, "model": "mixed"})
    assert served.status == 200
    assert upstreams.last("an")["tools"] == body["tools"]


@pytest.mark.parametrize(
    "blocks",
    [
        # Files API sources and a search result: valid for Anthropic, nothing a chat API takes.
        [
            {"type": "image", "source": {"type": "file", "file_id": "file_011"}},
            {"type": "text", "text": "what?"},
        ],
        [{"type": "image", "source": {"type": "file", "file_id": "file_011"}}],
        [{"type": "document", "source": {"type": "file", "file_id": "file_012"}}],
        [{"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}],
        [{"type": "search_result", "source": "https://example.com", "title": "t", "content": []}],
    ],
    ids=[
        "file-image-and-text",
        "file-image-alone",
        "file-document-alone",
        "url-document-alone",
        "search-result",
    ],
)
async def test_blocks_only_anthropic_takes_go_to_its_deployments_and_are_named_elsewhere(
    gateway: TestClient, upstreams: Upstreams, blocks: list[Any]
) -> None:
    """A turn made only of such blocks is still a turn: served natively by an Anthropic
    deployment (the mixed group falls past nothing: its first is Anthropic), and a translated
    group's 400 names the block, never 'messages: List should have at least 1 item'."""
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": blocks}]}
    served = await gateway.post("/v1/messages", json={**body, "model": "claude"})
    assert served.status == 200, await served.text()
    assert upstreams.last("an")["messages"] == body["messages"]
    refused = await gateway.post("/v1/messages", json={**body, "model": "gpt"})
    assert refused.status == 400
    error = (await refused.json())["error"]
    assert error["type"] == "invalid_request_error" and "does not support" in error["message"], error
    assert blocks[0]["type"] in error["message"] or "file" in error["message"]
    assert [call[0] for call in upstreams.calls] == ["an"]


# ----- count_tokens


async def test_count_tokens_is_the_gateway_estimate(sdk: anthropic.AsyncAnthropic) -> None:
    counted = await sdk.messages.count_tokens(
        model="gpt", system="x" * 40, messages=[{"role": "user", "content": "y" * 80}]
    )
    assert counted.input_tokens == 30  # (40 + 80) characters / 4
    short = await sdk.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert short.input_tokens == 1  # never 0 for a message
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.count_tokens(model="nope", messages=USER)


async def test_count_tokens_counts_images_and_pdfs_as_anthropic_documents(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    """Images and PDFs counted 0: a 1000x1000 image is ~1334 tokens ("tokens = (width px *
    height px)/750"), a PDF page 1,500-3,000 text tokens (2,250) plus its page image (1,600)."""
    image = base64.b64encode(png(1000, 1000)).decode()
    pdf = base64.b64encode(make_pdf(["one", "two"])).decode()
    blocks: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
        {"type": "text", "text": "y" * 80},
    ]
    counted = await sdk.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": blocks}])
    assert counted.input_tokens == 80 // 4 + 1334 + 2 * (2250 + 1600)


async def test_admission_reserves_the_images_tokens(upstreams: Upstreams) -> None:
    """The token reservation reads the chat translation: its images count too."""
    image = base64.b64encode(png(1000, 1000)).decode()
    body = {
        "model": "gpt",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
            {"type": "text", "text": "y" * 80},
        ]}],
    }  # fmt: skip
    door = MessagesDoor.parse(body, {})
    assert reservation(Endpoint.CHAT, door.chat) == 80 // 4 + 1334 + 1 + 10


async def test_requests_are_counted_under_the_messages_route(gateway: TestClient) -> None:
    await gateway.post("/v1/messages", json={"model": "gpt", "max_tokens": 5, "messages": USER})
    registry = gateway.app[keys.METRICS].registry  # type: ignore[index]
    labels = {"endpoint": "/v1/messages", "model": "gpt", "provider": "oa", "status_code": "200"}
    assert registry.get_sample_value("gateway_requests_total", labels) == 1.0


# ----- the gateway's own keys, as x-api-key or Bearer


GOOD = "sk-sg-" + "A1b2_C3d4-" * 4
LIMITED = "sk-sg-limited0000000000000000000000000000000"


class KeyRing:
    """The key ring's interface (``authenticate``) over fixed callers."""

    def __init__(self) -> None:
        self.callers = {
            GOOD: Caller("key_good", "blue"),
            LIMITED: Caller("key_l", "green", models=frozenset({"gpt"})),
        }

    async def authenticate(self, secret: str) -> Caller | None:
        return self.callers.get(secret)


@pytest.fixture
async def keyed(aiohttp_client: ClientFactory, upstreams: Upstreams) -> TestClient:
    policy = POLICY.replace("auth: {mode: open}\n", "")  # the default: keys
    app = build_app(Settings(access_log=False), parse_policy(policy), {}, transports=upstreams.transports)
    app[keys.KEYRING] = KeyRing()  # type: ignore[assignment]
    return await aiohttp_client(app)


async def test_gateway_keys_as_x_api_key_or_bearer(keyed: TestClient) -> None:
    url = str(keyed.make_url(""))
    ask: dict[str, Any] = {"model": "gpt", "max_tokens": 5, "messages": USER}
    async with anthropic.AsyncAnthropic(base_url=url, api_key=GOOD, max_retries=0) as by_header:
        assert (await by_header.messages.create(**ask)).content[0].text == "Hello!"  # type: ignore[union-attr]
    async with anthropic.AsyncAnthropic(base_url=url, auth_token=GOOD, max_retries=0) as by_bearer:
        assert (await by_bearer.messages.count_tokens(model="gpt", messages=USER)).input_tokens == 3
    async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-sg-unknown", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await stranger.messages.create(**ask)
        assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert "Send 'x-api-key: <key>'" in caught.value.body["error"]["message"]  # type: ignore[index]
    async with anthropic.AsyncAnthropic(base_url=url, api_key=GOOD, max_retries=0) as lister:
        # Anthropic's SDK lists models with its key as x-api-key
        assert "gpt" in [m.id for m in (await lister.models.list()).data]
    async with anthropic.AsyncAnthropic(base_url=url, api_key=LIMITED, max_retries=0) as limited:
        with pytest.raises(anthropic.NotFoundError):  # another team's model does not exist for it
            await limited.messages.create(**{**ask, "model": "claude"})
        with pytest.raises(anthropic.NotFoundError):
            await limited.messages.count_tokens(model="claude", messages=USER)
    bad = await keyed.post("/v1/messages", json=ask, headers={"x-api-key": "has spaces"})
    assert bad.status == 401 and (await bad.json())["error"]["type"] == "authentication_error"


async def test_a_body_over_the_limit_is_request_too_large(
    aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    settings = Settings(access_log=False, max_body_bytes=1024)
    app = build_app(settings, parse_policy(POLICY), {}, transports=upstreams.transports)
    gateway = await aiohttp_client(app)
    async with anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")), api_key="k", max_retries=0
    ) as sdk:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await sdk.messages.create(
                model="gpt", max_tokens=5, messages=[{"role": "user", "content": "x" * 4096}]
            )
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert upstreams.calls == []


@pytest.mark.parametrize("choices", [[None], [[{"message": {"content": "hi"}}]], [], "hi"])
async def test_a_completion_without_a_choice_is_a_502_not_an_empty_message(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams, choices: object
) -> None:
    """A provider's completion with nothing to translate is its error (it was an empty message)."""
    upstreams.behaviour = {
        "oa": lambda request: MockResponse.json({"id": "c", "object": "chat.completion", "choices": choices})
    }
    with pytest.raises(anthropic.InternalServerError) as caught:
        await sdk.messages.create(model="gpt", max_tokens=5, messages=USER)
    assert caught.value.status_code == 502 and "without choices" in str(caught.value)


async def test_a_native_stream_cut_inside_an_event_ends_with_the_error_not_a_broken_event(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    """An Anthropic deployment's stream relayed as it came: cut inside an event, the half event
    must not reach the client (the error event would be glued to it and the SDK fail to parse)."""
    events = anthropic_events("claude-x")

    async def cut() -> AsyncIterator[bytes]:
        for chunk in events[:4]:
            yield chunk
        yield events[4][: len(events[4]) // 2]
        raise UpstreamConnectError("an: connection reset", provider="an")

    upstreams.behaviour = {"an": lambda r: MockResponse.stream(cut())}
    got: list[str] = []
    with pytest.raises(
        anthropic.APIStatusError, match="an: the provider closed the stream before the answer"
    ):
        async with sdk.messages.stream(model="claude", max_tokens=100, messages=USER) as stream:
            async for text in stream.text_stream:
                got.append(text)
    assert got == ["Bon"]


# ----- what OpenAI-compatible servers send that a Messages client must still read


def _call(index: int, call_id: str | None, arguments: str, name: str = "get_weather") -> dict[str, Any]:
    head: dict[str, Any] = (
        {"id": call_id, "type": "function"} if call_id is not None else {"type": "function"}
    )
    return {"index": index, **head, "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("stream", [False, True])
async def test_repeated_or_missing_call_ids_become_unique_tool_use_ids(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams, stream: bool
) -> None:
    # vLLM and llama.cpp style: the same id for every call, or none. Anthropic refuses a message
    # whose tool_use ids repeat, so the next turn failed on every Anthropic deployment.
    calls = [_call(0, "call_0", '{"location": "Paris"}'), _call(1, "call_0", '{"location": "Oslo"}'),
             _call(2, "", '{"location": "Rome"}'), _call(3, None, '{"location": "Bern"}')]  # fmt: skip
    if stream:
        deltas = [{"tool_calls": [c]} for c in calls]
        upstreams.behaviour = {
            "oa": lambda r: MockResponse.stream(chat_chunks("gpt-x", deltas, "tool_calls"))
        }
        async with sdk.messages.stream(model="gpt", max_tokens=50, messages=USER, tools=[WEATHER]) as s:  # type: ignore[list-item]
            message = await s.get_final_message()
    else:
        whole = completion("gpt-x", None, [{k: v for k, v in c.items() if k != "index"} for c in calls])
        upstreams.behaviour = {"oa": lambda r: MockResponse.json(whole)}
        message = await sdk.messages.create(model="gpt", max_tokens=50, messages=USER, tools=[WEATHER])  # type: ignore[list-item]
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [b.input for b in uses] == [{"location": c} for c in ("Paris", "Oslo", "Rome", "Bern")]
    ids = [b.id for b in uses]
    assert len(set(ids)) == 4 and ids[0] == "call_0"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)


async def test_malformed_streamed_arguments_do_not_break_the_clients_sdk(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    # An open model's broken JSON. Before, the Anthropic SDK parsed the delta and raised.
    deltas = [{"tool_calls": [_call(0, "call_a", '{"location": "Par')]}, {"tool_calls": [_call(0, None, 'is", }}')]},
              {"tool_calls": [_call(1, "call_b", '{"location": "Oslo"}')]}]  # fmt: skip
    upstreams.behaviour = {"oa": lambda r: MockResponse.stream(chat_chunks("gpt-x", deltas, "tool_calls"))}
    async with sdk.messages.stream(model="gpt", max_tokens=50, messages=USER, tools=[WEATHER]) as s:  # type: ignore[list-item]
        message = await s.get_final_message()
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {}),
        ("tool_use", {"location": "Oslo"}),
    ]
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_refusal_is_text_with_stop_reason_refusal(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams, stream: bool
) -> None:
    # Before, the refusal was dropped: an empty message that ended "end_turn".
    said = "I'm sorry, I can't help with that."
    if stream:
        deltas = [{"refusal": "I'm sorry, "}, {"refusal": "I can't help with that."}]
        upstreams.behaviour = {"oa": lambda r: MockResponse.stream(chat_chunks("gpt-x", deltas))}
        async with sdk.messages.stream(model="gpt", max_tokens=50, messages=USER) as s:
            message = await s.get_final_message()
    else:
        whole = completion("gpt-x", None)
        whole["choices"][0]["message"]["refusal"] = said
        upstreams.behaviour = {"oa": lambda r: MockResponse.json(whole)}
        message = await sdk.messages.create(model="gpt", max_tokens=50, messages=USER)
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", said)]
    assert message.stop_reason == "refusal"


async def test_count_tokens_counts_tool_use_inputs(sdk: anthropic.AsyncAnthropic) -> None:
    # An agent's history is mostly calls: before, their inputs counted 0 (here 1 token, not 26).
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "x" * 84}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    messages: Any = [{"role": "user", "content": "w"}, {"role": "assistant", "content": [use]},
                     {"role": "user", "content": [result]}]  # fmt: skip
    counted = await sdk.messages.count_tokens(model="gpt", messages=messages)
    assert counted.input_tokens == (1 + len('{"location":"' + "x" * 84 + '"}') + 2) // 4


# ----- Anthropic's conversation rules, whichever deployment serves the request

_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}
_USE2 = {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"location": "Rome"}}
_RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 degrees"}
_RESULT2 = {"type": "tool_result", "tool_use_id": "toolu_2", "content": "20 degrees"}
_ASKED = {"role": "user", "content": "Weather in Paris and Rome?"}
_CALLED = {"role": "assistant", "content": [_USE, _USE2]}
_UNANSWERED = (
    "`tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` "
    "block must have a corresponding `tool_result` block in the next message."
)
_UNEXPECTED = (
    "unexpected `tool_use_id` found in `tool_result` blocks: {}. Each `tool_result` block must have a "
    "corresponding `tool_use` block in the previous message."
)
_EMPTY = "all messages must have non-empty content except for the optional final assistant message"
CONVERSATION_RULES = [
    pytest.param([], "messages: at least one message is required", id="no-messages"),
    pytest.param(
        [{"role": "user", "content": [_RESULT]}],
        "messages.0.content.0: " + _UNEXPECTED.format("toolu_1"),
        id="result-without-a-use",
    ),
    pytest.param(
        [_ASKED, _CALLED, {"role": "user", "content": [_RESULT]}],
        "messages.1: " + _UNANSWERED.format("toolu_2"),
        id="one-use-unanswered",
    ),
    pytest.param(
        [_ASKED, _CALLED, {"role": "user", "content": [_RESULT, _RESULT2, {**_RESULT2, "content": "again"}]}],
        "messages.2.content.2: " + _UNEXPECTED.format("toolu_2")[:-1] + " (and answer it once).",
        id="use-answered-twice",
    ),
    pytest.param(
        [_ASKED, _CALLED, {"role": "user", "content": "thanks"}],
        "messages.1: " + _UNANSWERED.format("toolu_1, toolu_2"),
        id="uses-answered-by-text",
    ),
    pytest.param(
        [
            _ASKED,
            _CALLED,
            {"role": "user", "content": "hm"},
            {"role": "user", "content": [_RESULT, _RESULT2]},
        ],
        "messages.3.content.0: `tool_result` blocks must come first in the user message content, "
        "before any other block.",
        id="a-user-message-between-use-and-result",
    ),
    pytest.param(
        [
            _ASKED,
            {"role": "assistant", "content": [_USE]},
            {"role": "assistant", "content": [_USE2]},
            {"role": "user", "content": [_RESULT]},
        ],
        "messages.2: " + _UNANSWERED.format("toolu_2"),
        id="combined-assistant-turn-half-answered",
    ),
    pytest.param(
        [_ASKED, _CALLED, {"role": "user", "content": [_RESULT, {"type": "text", "text": "so?"}, _RESULT2]}],
        "messages.2.content.2: `tool_result` blocks must come first in the user message content, "
        "before any other block.",
        id="text-before-a-result",
    ),
    pytest.param(
        [_ASKED, {"role": "assistant", "content": [_USE, {**_USE2, "id": "toolu_1"}]}],
        "messages.1.content.1: `tool_use` ids must be unique",
        id="repeated-use-id",
    ),
    pytest.param(
        [
            _ASKED,
            {"role": "assistant", "content": [_USE]},
            {"role": "user", "content": [_RESULT]},
            {"role": "assistant", "content": [_USE]},
            {"role": "user", "content": [_RESULT]},
        ],
        "messages.3.content.0: `tool_use` ids must be unique",
        id="use-id-repeated-across-turns",
    ),
    pytest.param(
        [_ASKED, {"role": "assistant", "content": [{**_USE, "id": "call.1"}]}],
        "messages.1.content.0.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
        id="use-id-pattern",
    ),
    pytest.param(
        [_ASKED, {"role": "assistant", "content": [_USE]}],
        "messages.1: " + _UNANSWERED.format("toolu_1"),
        id="final-use-unanswered",
    ),
    pytest.param(
        [
            _ASKED,
            {"role": "assistant", "content": [_USE]},
            {"role": "user", "content": [{**_RESULT, "tool_use_id": 1}]},
        ],
        "messages.2.content.0.tool_result.tool_use_id: Input should be a valid string",
        id="result-id-not-a-string",
    ),
    pytest.param([{"role": "user", "content": ""}], "messages.0: " + _EMPTY, id="empty-string"),
    pytest.param([{"role": "user", "content": []}], "messages.0: " + _EMPTY, id="empty-blocks"),
    pytest.param(
        [_ASKED, {"role": "assistant", "content": []}, {"role": "user", "content": "more"}],
        "messages.1: " + _EMPTY,
        id="empty-assistant-mid-way",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        "messages.0.content.0: text content blocks must be non-empty",
        id="empty-text-block",
    ),
    pytest.param(
        [{"role": "user", "content": " \n"}],
        "messages.0.content: text content blocks must contain non-whitespace text",
        id="blank-string",
    ),
    pytest.param(
        [_ASKED, {"role": "assistant", "content": "The answer is "}],
        "messages: final assistant content cannot end with trailing whitespace",
        id="prefill-ends-in-whitespace",
    ),
]


@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize(("messages", "expected"), CONVERSATION_RULES)
async def test_conversations_anthropic_refuses_are_refused_before_any_deployment(
    gateway: TestClient, upstreams: Upstreams, model: str, messages: list[Any], expected: str
) -> None:
    """A translated deployment (OpenAI) would have answered these: the door refuses them as
    Anthropic does, in its words and envelope, and no deployment is called; count_tokens too."""
    body = {"model": model, "max_tokens": 20, "tools": [WEATHER], "messages": messages}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        resp = await gateway.post(path, json=body)
        assert resp.status == 400, (path, await resp.text())
        answer = await resp.json()
        assert answer["type"] == "error", answer
        assert answer["error"] == {"type": "invalid_request_error", "message": expected}
    assert upstreams.calls == []


async def test_a_conversation_anthropic_takes_is_served_by_every_kind(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams
) -> None:
    """Parallel tool uses answered first in the next turn, text after them, and an empty final
    assistant turn (a prefill): served, translated or native."""
    messages: Any = [
        _ASKED,
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, _USE, _USE2]},
        {"role": "user", "content": [_RESULT2, _RESULT, {"type": "text", "text": "Which is warmer?"}]},
        {"role": "assistant", "content": ""},
    ]
    for model in ("gpt", "claude"):
        message = await sdk.messages.create(model=model, max_tokens=20, tools=[WEATHER], messages=messages)
        assert message.content[0].type == "text"
    assert [call[0] for call in upstreams.calls] == ["oa", "an"]
    assert [m["role"] for m in upstreams.last("oa")["messages"]] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
        "assistant",
    ]


# Consecutive messages of one role that Anthropic takes (it combines them into one turn): the
# parallel results one message each, a text message after the results, a text message between
# the assistant's text and its calls, two user text messages.
COMBINED_TURNS = [
    pytest.param(
        [_ASKED, _CALLED, {"role": "user", "content": [_RESULT]}, {"role": "user", "content": [_RESULT2]}],
        ["user", "assistant", "tool", "tool"],
        id="results-one-message-each",
    ),
    pytest.param(
        [
            _ASKED,
            {"role": "assistant", "content": [_USE]},
            {"role": "user", "content": [_RESULT]},
            {"role": "user", "content": "Thanks. And Rome?"},
        ],
        ["user", "assistant", "tool", "user"],
        id="text-message-after-the-results",
    ),
    pytest.param(
        [
            _ASKED,
            {"role": "assistant", "content": "Checking both."},
            {"role": "assistant", "content": [_USE, _USE2]},
            {"role": "user", "content": [_RESULT, _RESULT2]},
        ],
        ["user", "assistant", "tool", "tool"],
        id="assistant-text-then-calls",
    ),
    pytest.param(
        [
            _ASKED,
            {"role": "assistant", "content": [_USE, _USE2]},
            {"role": "assistant", "content": "Checking both."},
            {"role": "user", "content": [_RESULT2]},
            {"role": "user", "content": [_RESULT, {"type": "text", "text": "Which is warmer?"}]},
        ],
        ["user", "assistant", "tool", "tool", "user"],
        id="assistant-calls-then-text",
    ),
    pytest.param(
        [
            {"role": "user", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Again."}]},
        ],
        ["user"],
        id="two-user-texts",
    ),
]


@pytest.mark.parametrize(("messages", "roles"), COMBINED_TURNS)
async def test_consecutive_messages_of_one_role_are_one_turn_on_every_kind(
    sdk: anthropic.AsyncAnthropic, upstreams: Upstreams, messages: list[Any], roles: list[str]
) -> None:
    """Anthropic's reference: "Consecutive `user` or `assistant` turns in your request will be
    combined into a single turn". The door refused these (a tool use "not answered in the next
    message"); now each is served natively as sent and, translated, as one chat message per turn
    (the tool messages right after the assistant's calls, as OpenAI requires)."""
    for model in ("gpt", "claude"):
        message = await sdk.messages.create(model=model, max_tokens=20, tools=[WEATHER], messages=messages)
        assert message.content[0].type == "text"
    assert [call[0] for call in upstreams.calls] == ["oa", "an"]
    assert upstreams.last("an")["messages"] == messages
    sent = upstreams.last("oa")["messages"]
    assert [m["role"] for m in sent] == roles
    calls = [call["id"] for m in sent for call in m.get("tool_calls", ())]
    assert sorted(calls) == sorted(m["tool_call_id"] for m in sent if m["role"] == "tool")


async def test_combined_turns_keep_every_block_in_order(upstreams: Upstreams, gateway: TestClient) -> None:
    """Two user messages become one chat user message with both parts; two assistant messages
    one assistant message with the text and the calls."""
    messages = [
        _ASKED,
        {"role": "user", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "assistant", "content": "Checking."},
        {"role": "assistant", "content": [_USE]},
        {"role": "user", "content": [_RESULT]},
    ]
    body = {"model": "gpt", "max_tokens": 20, "tools": [WEATHER], "messages": messages}
    assert (await gateway.post("/v1/messages", json=body)).status == 200
    user, assistant, tool = upstreams.last("oa")["messages"]
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather in Paris and Rome?"},
            {"type": "text", "text": "Be brief."},
        ],
    }
    assert assistant["content"] == "Checking." and assistant["tool_calls"][0]["id"] == "toolu_1"
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "15 degrees"}


_DOCS = (
    "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
    "extended-thinking#important-considerations-when-using-extended-thinking"
)
_REPLAYED = {"type": "thinking", "thinking": "Let me see.", "signature": "sig"}


@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}])
async def test_thinking_blocks_in_a_final_assistant_message_need_thinking_on(
    gateway: TestClient, upstreams: Upstreams, model: str, thinking: Any
) -> None:
    """Anthropic's message (anthropics/claude-code#7946): a translated kind drops thinking blocks
    and answered such a prefill; refused before any deployment, and count_tokens too."""
    messages = [*USER, {"role": "assistant", "content": [_REPLAYED, {"type": "text", "text": "So"}]}]
    body: dict[str, Any] = {"model": model, "max_tokens": 20, "messages": messages}
    if thinking is not None:
        body["thinking"] = thinking
    expected = (
        "messages.1.content.0: When thinking is disabled, an `assistant` message in the final position "
        "cannot contain `thinking`. To use thinking blocks, enable `thinking` in your request."
    )
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        resp = await gateway.post(path, json=body)
        assert resp.status == 400, (path, await resp.text())
        assert (await resp.json())["error"] == {"type": "invalid_request_error", "message": expected}
    assert upstreams.calls == []
    # The blocks in an earlier turn: served.
    earlier = {**body, "messages": [*messages, {"role": "user", "content": "go on"}]}
    assert (await gateway.post("/v1/messages", json=earlier)).status == 200


THINKING_RULES = [
    pytest.param(
        {"max_tokens": 2048, "tool_choice": {"type": "any"}},
        "Invalid value for 'tool_choice': Thinking may not be enabled when tool_choice forces tool use.",
        id="forced-any",
    ),
    pytest.param(
        {"max_tokens": 2048, "tool_choice": {"type": "tool", "name": "get_weather"}},
        "Invalid value for 'tool_choice': Thinking may not be enabled when tool_choice forces tool use.",
        id="forced-tool",
    ),
    pytest.param(
        {"max_tokens": 2048, "temperature": 0.2},
        "Invalid value for 'temperature': `temperature` may only be set to 1 when thinking is enabled.",
        id="temperature-not-1",
    ),
    pytest.param(
        {"max_tokens": 1024},
        "Invalid value for 'thinking.budget_tokens': `max_tokens` must be greater than `thinking.budget_tokens`.",
        id="budget-not-below-max-tokens",
    ),
    pytest.param(
        {"max_tokens": 2048, "top_k": 40},
        f"Invalid value for 'top_k': `top_k` must be unset when thinking is enabled. {_DOCS}",
        id="top-k",
    ),
    pytest.param(
        {"max_tokens": 2048, "top_k": 0},
        f"Invalid value for 'top_k': `top_k` must be unset when thinking is enabled. {_DOCS}",
        id="top-k-0",
    ),
    pytest.param(
        {"max_tokens": 2048, "top_p": 0.9},
        f"Invalid value for 'top_p': `top_p` must be between 0.95 and 1 when thinking is enabled. {_DOCS}",
        id="top-p-below-0.95",
    ),
]


@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize(("extra", "expected"), THINKING_RULES)
async def test_thinking_anthropic_refuses_is_refused_before_any_deployment(
    gateway: TestClient, upstreams: Upstreams, model: str, extra: dict[str, Any], expected: str
) -> None:
    """Extended thinking docs ("Feature compatibility"; "Max tokens and context window size"):
    forced tool use and a budget not below ``max_tokens`` are refused by Anthropic; an OpenAI
    deployment, which drops ``thinking``, answered them, so the request worked by routing."""
    body = {"model": model, "tools": [WEATHER], "messages": USER, **extra}
    body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    resp = await gateway.post("/v1/messages", json=body)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == {"type": "invalid_request_error", "message": expected}
    assert upstreams.calls == []


async def test_thinking_with_auto_tools_or_interleaved_budget_is_served(
    gateway: TestClient, upstreams: Upstreams
) -> None:
    """tool_choice auto and none go with thinking, and interleaved thinking's beta lets the
    budget exceed ``max_tokens`` (it spans the turn's thinking blocks)."""
    thinking = {"type": "enabled", "budget_tokens": 4096}
    for choice in ("auto", "none"):
        body = {"model": "gpt", "max_tokens": 8192, "tools": [WEATHER], "tool_choice": {"type": choice},
                "thinking": thinking, "messages": USER}  # fmt: skip
        assert (await gateway.post("/v1/messages", json=body)).status == 200
    body = {"model": "claude", "max_tokens": 100, "tools": [WEATHER], "thinking": thinking, "messages": USER}
    beta = {"anthropic-beta": "fine-grained-tool-streaming-2025-05-14, interleaved-thinking-2025-05-14"}
    assert (await gateway.post("/v1/messages", json=body, headers=beta)).status == 200
    # The docs: "you can set `top_p` to values between 1 and 0.95"; top_k unset (null) is unset.
    for top_p in (0.95, 1):
        body = {"model": "gpt", "max_tokens": 8192, "thinking": thinking, "top_p": top_p, "top_k": None,
                "messages": USER}  # fmt: skip
        assert (await gateway.post("/v1/messages", json=body)).status == 200
    assert [call[0] for call in upstreams.calls] == ["oa", "oa", "an", "oa", "oa"]


def _native_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


async def test_a_native_thinking_block_is_streamed_as_it_comes(
    gateway: TestClient, upstreams: Upstreams
) -> None:
    """Thinking deltas translate to nothing on chat, and the door held the native stream until
    the first text: the client got no byte (not even headers) for the whole thinking, and a
    proxy's idle timeout cut it. The thinking block opens the stream; here the upstream stops
    after it, so only what was relayed before reaches the client, then the error event."""
    start = anthropic_message("claude-x", "")
    start["content"], start["stop_reason"] = [], None
    thinking = [
        _native_event("message_start", {"message": start}),
        _native_event("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        _native_event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm"}}),
        _native_event("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
    ]  # fmt: skip
    upstreams.behaviour["an"] = lambda request: MockResponse.stream(thinking)  # then ends, cut
    body = {"model": "claude", "max_tokens": 2048, "stream": True, "messages": USER,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}  # fmt: skip
    resp = await gateway.post("/v1/messages", json=body)
    text = await resp.text()
    assert resp.status == 200, text
    assert '"thinking_delta"' in text and '"signature_delta"' in text
    assert text.rstrip().splitlines()[-2] == "event: error"
    assert [call[0] for call in upstreams.calls] == ["an"]  # seen content: not tried again
