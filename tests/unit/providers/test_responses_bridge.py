"""The Responses door per attempt: pass-through for providers flagged ``responses: true``, a
chat bridge around every other adapter; the documented Anthropic and Gemini streams (fixtures
of their own adapters' tests) come out as Responses events the openai SDK's types accept, fed
in odd pieces; native streams are watched for their end, usage and failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.policy.model import AnthropicProvider, GeminiProvider, OpenAIProvider
from gateway.providers.client import ProviderClient
from gateway.providers.registry import adapter_for
from gateway.providers.responses_bridge import (
    ChatBridge,
    NativeResponses,
    NativeResponsesStream,
    ResponsesDoor,
)
from gateway.testing.mock_transport import MockTransport
from gateway.wire.requests import Endpoint
from gateway.wire.responses import chat_request
from gateway.wire.responses_output import ResponseIds
from gateway.wire.sse import SSEDecoder

FIXTURES = Path(__file__).parent / "fixtures"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def door(body: dict[str, Any]) -> ResponsesDoor:
    return ResponsesDoor(body, chat_request(body), ResponseIds("T", 1))


def client(config: Any) -> ProviderClient:
    return ProviderClient("p", config, adapter_for(config), None, MockTransport(lambda r: None))  # type: ignore[arg-type, return-value]


def test_each_attempt_picks_pass_through_or_the_chat_bridge() -> None:
    d = door({"model": "m", "input": "hi", "previous_response_id": "resp_1", "store": True})
    native = client(OpenAIProvider(kind="openai", base_url="http://x/v1", responses=True))
    plain = client(OpenAIProvider(kind="openai", base_url="http://x/v1"))
    claude = client(AnthropicProvider(kind="anthropic", base_url="http://x/v1"))
    assert isinstance(d.adapter_for(native), NativeResponses)
    assert isinstance(d.adapter_for(plain), ChatBridge)
    request = d.adapter_for(native).build_request(Endpoint.RESPONSES, d.body, "up")
    assert request.path == "/responses"
    assert orjson.loads(request.body) == {"model": "up", "input": "hi", "store": False}
    request = d.adapter_for(plain).build_request(Endpoint.RESPONSES, d.body, "up")
    assert (request.path, orjson.loads(request.body)["messages"]) == (
        "/chat/completions",
        [{"role": "user", "content": "hi"}],
    )
    request = d.adapter_for(claude).build_request(Endpoint.RESPONSES, d.body, "claude-x")
    assert request.path == "/messages"


def translated_events(config: Any, body: dict[str, Any], sse: bytes, piece: int) -> list[dict[str, Any]]:
    d = door(body)
    translator = ChatBridge(adapter_for(config), d).stream_translator(Endpoint.RESPONSES, d.body, "up")
    out = b""
    for start in range(0, len(sse), piece):
        out += translator.feed(sse[start : start + piece])
    out += translator.finish()
    assert translator.completed
    decoder = SSEDecoder()
    events = [orjson.loads(data) for data in decoder.feed(out)]
    for event in events:
        EVENTS.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("piece", [1, 7, 100_000])
def test_anthropics_documented_tool_stream_becomes_responses_events(piece: int) -> None:
    sse = (FIXTURES / "anthropic" / "stream_tool_use.sse").read_bytes()
    body = {
        "model": "claude",
        "input": "What is the weather like in San Francisco?",
        "tools": [WEATHER],
        "stream": True,
    }
    events = translated_events(AnthropicProvider(kind="anthropic", base_url="http://x/v1"), body, sse, piece)
    final = events[-1]
    assert final["type"] == "response.completed"
    kinds = [item["type"] for item in final["response"]["output"]]
    assert kinds == ["message", "function_call"]
    call = final["response"]["output"][1]
    assert call["name"] == "get_weather"
    assert orjson.loads(call["arguments"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert final["response"]["usage"]["output_tokens"] > 0


def test_geminis_documented_stream_becomes_responses_events() -> None:
    sse = (FIXTURES / "gemini" / "stream_story.sse").read_bytes()
    body = {"model": "g", "input": "Write a story", "stream": True}
    events = translated_events(GeminiProvider(kind="gemini", base_url="http://x/v1beta"), body, sse, 13)
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and final["output"][0]["content"][0]["text"] == text


def test_an_error_event_mid_stream_is_relayed_and_fails_the_stream() -> None:
    d = door({"model": "m", "input": "hi", "stream": True})
    translator = ChatBridge(
        adapter_for(OpenAIProvider(kind="openai", base_url="http://x/v1")), d
    ).stream_translator(Endpoint.RESPONSES, d.body, "up")
    first = translator.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    assert b"response.created" in first and b"response.output_text.delta" in first
    relayed = translator.feed(b'data: {"error":{"message":"boom","type":"server_error"}}\n\ndata: [DONE]\n\n')
    assert relayed == b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'
    assert not translator.completed


def native_event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def test_a_native_stream_is_relayed_and_watched() -> None:
    stream = NativeResponsesStream()
    delta = native_event({"type": "response.output_text.delta", "delta": "x", "sequence_number": 1})
    done = native_event(
        {
            "type": "response.completed",
            "sequence_number": 2,
            "response": {"usage": {"input_tokens": 3, "output_tokens": 4}},
        }
    )
    whole = delta + done
    assert b"".join(stream.feed(whole[i : i + 5]) for i in range(0, len(whole), 5)) == whole
    assert stream.completed
    assert stream.usage() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


@pytest.mark.parametrize("kind", ["response.failed", "error"])
def test_a_failed_native_stream_is_not_complete(kind: str) -> None:
    stream = NativeResponsesStream()
    stream.feed(native_event({"type": kind, "sequence_number": 0, "message": "x", "response": {}}))
    stream.feed(native_event({"type": "response.completed", "sequence_number": 1, "response": {}}))
    assert not stream.completed


def test_a_native_stream_cut_before_its_end_is_not_complete() -> None:
    stream = NativeResponsesStream()
    stream.feed(native_event({"type": "response.created", "sequence_number": 0, "response": {}}))
    assert stream.finish() == b""
    assert not stream.completed
