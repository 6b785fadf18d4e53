"""What the Responses door hands each attempt: the pass-through body; the documented Anthropic
and Gemini streams (fixtures of their own adapters' tests) through their adapters' translators
come out as Responses events the openai SDK's types accept, fed in odd pieces; native streams
are watched for their end, usage and failures. (The door's per-attempt choice:
tests/unit/service/test_responses_door.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.policy.model import AnthropicProvider, GeminiProvider, OpenAIProvider
from gateway.providers.base import StreamTranslator
from gateway.providers.registry import adapter_for
from gateway.providers.responses_bridge import (
    ChatToResponsesStream,
    NativeResponsesStream,
    native_request,
    speaks_responses,
)
from gateway.wire.requests import Endpoint
from gateway.wire.responses import chat_request
from gateway.wire.responses_output import Renewal, ResponseIds, ResponsesEvents
from gateway.wire.sse import SSEDecoder

FIXTURES = Path(__file__).parent / "fixtures"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def bridged(config: Any, body: dict[str, Any]) -> StreamTranslator:
    """The chat bridge's stream for ``body`` on a provider of ``config``'s kind."""
    inner = adapter_for(config).stream_translator(Endpoint.CHAT, chat_request(body), "up")
    return ChatToResponsesStream(inner, ResponsesEvents(body, ResponseIds("T", 1)))


def test_the_pass_through_body_keeps_no_state_upstream() -> None:
    body = {"model": "m", "input": "hi", "previous_response_id": "resp_1", "store": True}
    assert native_request(body) == {"model": "m", "input": "hi", "store": False}
    assert speaks_responses(OpenAIProvider(kind="openai", base_url="http://x/v1", responses=True))
    assert not speaks_responses(OpenAIProvider(kind="openai", base_url="http://x/v1"))
    assert not speaks_responses(AnthropicProvider(kind="anthropic", base_url="http://x/v1"))


def test_a_gemini_calls_signature_is_not_passed_to_a_provider_that_would_refuse_it() -> None:
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    signed = {**call, "extra_content": {"google": {"thought_signature": "sig"}}}
    body = {"model": "m", "input": [{"role": "user", "content": "hi"}, signed]}
    assert native_request(body)["input"] == [{"role": "user", "content": "hi"}, call]
    assert body["input"][1] is signed  # the client's body is not changed


def translated_events(config: Any, body: dict[str, Any], sse: bytes, piece: int) -> list[dict[str, Any]]:
    translator = bridged(config, body)
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


def test_an_error_event_mid_stream_is_raised_for_the_doors_error_event() -> None:
    """Chat's bare ``{"error"}`` was relayed as it came (no ``type``, no ``sequence_number``),
    then as the door's ``error`` event with the provider's words; the pass-through under the
    bridge now raises it, so the door writes the gateway's own (``StreamInterrupted``)."""
    from gateway.errors import UpstreamStatusError

    body = {"model": "m", "input": "hi", "stream": True}
    translator = bridged(OpenAIProvider(kind="openai", base_url="http://x/v1"), body)
    first = translator.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    assert b"response.created" in first and b"response.output_text.delta" in first
    with pytest.raises(UpstreamStatusError) as raised:  # nothing of it, nor after it
        translator.feed(
            b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'
            b'data: {"choices":[{"delta":{"content":"after"}}]}\n\ndata: [DONE]\n\n'
        )
    assert raised.value.said == "boom" and not translator.completed


def test_an_event_that_is_not_json_is_an_upstream_error_not_a_silent_end() -> None:
    """Skipped, the stream ended after its deltas with no completed, failed or error event."""
    from gateway.errors import UpstreamBadResponse

    body = {"model": "m", "input": "hi", "stream": True}
    translator = bridged(OpenAIProvider(kind="openai", base_url="http://x/v1"), body)
    assert b"response.created" in translator.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    with pytest.raises(UpstreamBadResponse, match="not valid JSON"):
        translator.feed(b"data: {nope\n\ndata: [DONE]\n\n")


def plain(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


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
def test_a_failure_mid_native_stream_is_raised_not_relayed(kind: str) -> None:
    """The events before it go out; the provider's failure event does not (the door writes the
    gateway's ``error`` event), nor anything after it, in one chunk or several."""
    from gateway.errors import UpstreamStatusError

    created = native_event({"type": "response.created", "sequence_number": 0, "response": {}})
    delta = native_event({"type": "response.output_text.delta", "sequence_number": 1, "delta": "a"})
    failure = native_event({"type": kind, "sequence_number": 2, "message": "x", "response": {}})
    completed = native_event({"type": "response.completed", "sequence_number": 3, "response": {}})
    for chunks in ([created, delta, failure, completed], [created + delta + failure + completed]):
        stream = NativeResponsesStream()
        out = b""
        with pytest.raises(UpstreamStatusError):
            for chunk in chunks:
                out += stream.feed(chunk)
            stream.finish()
        assert out == created + delta and not stream.completed


@pytest.mark.parametrize(
    ("first", "status"),
    [
        ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}, 429),
        ({"type": "response.failed", "response": {"error": {"code": "server_error", "message": "x"}}}, 500),
        ({"error": {"message": "nope", "type": "invalid_request_error"}}, 400),
    ],
)
def test_a_native_stream_opening_with_a_failure_raises_it(first: dict[str, Any], status: int) -> None:
    """Nothing relayed yet: raised, the request fails over (or the client gets a JSON error with
    the status the failure stands for)."""
    from gateway.errors import UpstreamStatusError

    stream = NativeResponsesStream()
    with pytest.raises(UpstreamStatusError) as raised:
        stream.feed(native_event({"sequence_number": 0, **first}) if "type" in first else plain(first))
    assert raised.value.upstream_status == status


def test_a_native_stream_gets_the_gateways_ids_and_the_clients_store() -> None:
    request = {"model": "m", "input": "hi", "previous_response_id": "resp_mine"}
    stream = NativeResponsesStream(Renewal.native(request, ResponseIds("T", 5)))
    up = {"id": "resp_up", "store": False, "previous_response_id": None, "created_at": 1, "output": []}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": up},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
         "item": {"id": "msg_up", "type": "message", "content": []}},
        {"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_up", "delta": "x"},
        {"type": "response.completed", "sequence_number": 3,
         "response": {**up, "output": [{"id": "msg_up", "type": "message", "content": []}]}},
    ]  # fmt: skip
    out = b"".join(stream.feed(native_event(e)) for e in events)
    relayed = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [e["type"] for e in relayed] == [e["type"] for e in events]
    assert relayed[0]["response"]["id"] == relayed[3]["response"]["id"] == "resp_T"
    assert relayed[1]["item"]["id"] == relayed[2]["item_id"] == relayed[3]["response"]["output"][0]["id"]
    assert relayed[2]["item_id"] == "msg_T"
    final = relayed[3]["response"]
    assert (final["store"], final["previous_response_id"], final["created_at"]) == (True, "resp_mine", 5)
    assert stream.completed


def test_a_native_stream_cut_before_its_end_raises_at_its_end() -> None:
    """No response.completed / incomplete / failed / error: ended quietly, the client's SDK would
    keep a truncated answer; ``finish`` raises so the caller ends the stream with an error event."""
    from gateway.errors import UpstreamBadResponse

    stream = NativeResponsesStream()
    stream.feed(native_event({"type": "response.created", "sequence_number": 0, "response": {}}))
    assert stream.feed(b'event: response.output_text.delta\ndata: {"type": "response.out') == b""
    with pytest.raises(UpstreamBadResponse, match="without its end marker"):
        stream.finish()
    assert not stream.completed


def test_a_chat_stream_cut_before_its_end_raises_through_the_bridge() -> None:
    from gateway.errors import UpstreamBadResponse

    body = {"model": "m", "input": "hi", "stream": True}
    translator = bridged(OpenAIProvider(kind="openai", base_url="http://x/v1"), body)
    assert b"response.output_text.delta" in translator.feed(
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    )
    with pytest.raises(UpstreamBadResponse, match="without its end marker"):
        translator.finish()
    assert not translator.completed


def test_an_error_field_that_is_null_is_no_error() -> None:
    """``"error": null`` in every chat chunk (some OpenAI-compatible servers): the answer."""
    body = {"model": "m", "input": "hi", "stream": True}
    translator = bridged(OpenAIProvider(kind="openai", base_url="http://x/v1"), body)
    out = translator.feed(
        b'data: {"choices":[{"delta":{"content":"a"}}],"error":null}\n\n'
        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"error":null}\n\ndata: [DONE]\n\n'
    )
    out += translator.finish()
    assert b"response.output_text.delta" in out and b"response.completed" in out
    assert translator.completed


def test_a_chat_stream_ending_after_its_finish_reason_without_done_completes_the_response() -> None:
    """The chat door took such a stream as whole; the Responses door stopped it after the last
    delta with neither ``response.completed`` nor an error event, and the SDK's
    ``get_final_response()`` raised (an outside probe)."""
    from gateway.providers.openai import OpenAIStreamTranslator
    from gateway.providers.responses_bridge import ChatToResponsesStream
    from gateway.wire.responses_output import ResponseIds, ResponsesEvents

    stream = ChatToResponsesStream(
        OpenAIStreamTranslator(), ResponsesEvents({"model": "m", "input": "x"}, ResponseIds("T", 1))
    )
    out = stream.feed(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"EVIL1 "}}]}\n\n')
    out += stream.feed(b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    out += stream.finish()
    assert b"event: response.completed" in out and stream.completed


def test_a_stored_stream_must_read_whole() -> None:
    """A content event that is not JSON is relayed as the provider sent it (content is not
    parsed), but the stream is not stored: it was, and every identical request was answered the
    same broken event from the cache (an outside probe)."""
    from gateway.cache.service import readable_stream

    good = b'data: {"a":1}\n\nevent: x\ndata: {"b":\ndata: 2}\n\n: keep-alive\n\ndata: [DONE]\n\n'
    assert readable_stream(good)
    assert not readable_stream(b'data: {"a":1}\n\ndata: {not json\n\ndata: [DONE]\n\n')


def test_events_after_the_end_marker_add_nothing_after_response_completed() -> None:
    """A provider that went on after [DONE] had its delta made a second output item after
    ``response.completed``: the streamed text and the final response differed (an outside probe)."""
    from gateway.providers.openai import OpenAIStreamTranslator
    from gateway.providers.responses_bridge import ChatToResponsesStream
    from gateway.wire.responses_output import ResponseIds, ResponsesEvents

    stream = ChatToResponsesStream(
        OpenAIStreamTranslator(), ResponsesEvents({"model": "m", "input": "x"}, ResponseIds("T", 1))
    )
    out = stream.feed(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"EVIL1 "}}]}\n\n')
    out += stream.feed(b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    out += stream.feed(b"data: [DONE]\n\n")
    after = stream.feed(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"GARBAGE"}}]}\n\n')
    after += stream.finish()
    assert b"event: response.completed" in out and b"GARBAGE" not in after and stream.completed
