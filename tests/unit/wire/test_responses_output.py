"""Chat answers as Responses answers, against OpenAI's documented examples
(fixtures/responses/response_*.json) and the openai SDK's own types (the ground truth of
field names): whole responses, and streams validated event by event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.wire.responses_output import (
    ResponseIds,
    ResponsesEvents,
    chat_usage,
    response_object,
    whole_response,
)

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
IDS = ResponseIds("T", 1741476542)
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_a_documented_text_answer() -> None:
    case = fixture("response_text.json")
    response = whole_response(case["request"], case["chat"], IDS)
    assert response == case["response"]
    assert Response.model_validate(response).output_text.startswith("In a peaceful grove")


def test_a_documented_function_call_answer() -> None:
    case = fixture("response_function_call.json")
    response = whole_response(case["request"], case["chat"], IDS)
    assert response["output"] == case["output"]
    assert response["usage"] == case["usage"]
    assert response["status"] == "completed"
    Response.model_validate(response)


def test_a_length_cut_is_incomplete() -> None:
    chat = {"model": "x", "choices": [{"message": {"content": "abc"}, "finish_reason": "length"}]}
    response = whole_response({"model": "m", "max_output_tokens": 3}, chat, IDS)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["max_output_tokens"] == 3


def test_usage_both_ways() -> None:
    assert chat_usage({"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}) == {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "total_tokens": 10,
    }
    assert chat_usage(None) is None


def events_of(sse: bytes) -> list[dict[str, Any]]:
    out = []
    for block in sse.split(b"\n\n"):
        if not block:
            continue
        kind, data = block.split(b"\n")
        event = orjson.loads(data.removeprefix(b"data: "))
        assert kind == b"event: " + event["type"].encode()
        EVENTS.validate_python(event)  # the SDK's own model of every event type
        out.append(event)
    return out


def test_text_then_two_tool_calls_stream() -> None:
    events = ResponsesEvents({"model": "m", "input": "hi"}, IDS)
    out = events.chunk({"model": "up-1", "choices": [{"delta": {"role": "assistant", "content": ""}}]})
    out += events.chunk({"choices": [{"delta": {"content": "Let me "}}]})
    out += events.chunk({"choices": [{"delta": {"content": "check."}}]})
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}
    out += events.chunk({"choices": [{"delta": {"tool_calls": [call]}}]})
    out += events.chunk(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}
    )
    out += events.chunk(
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g"}}]}}]}
    )
    out += events.chunk({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    out += events.chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    out += events.done()
    parsed = events_of(out)
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    assert [e["type"] for e in parsed] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(parsed[-1]["response"])
    assert final.model == "up-1"
    assert final.output_text == "Let me check."
    assert [(o.type, getattr(o, "call_id", None)) for o in final.output] == [
        ("message", None),
        ("function_call", "c1"),
        ("function_call", "c2"),
    ]
    assert final.output[1].arguments == '{"a":1}'  # type: ignore[union-attr]
    assert [e["output_index"] for e in parsed if e["type"] == "response.output_item.added"] == [0, 1, 2]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (3, 5)


def tool_call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    head: dict[str, Any] = {"id": f"call_{index}", "type": "function"} if name else {}
    function: dict[str, Any] = {"arguments": arguments, **({"name": name} if name else {})}
    return {"index": index, **head, "function": function}


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "one-after-another"])
def test_parallel_tool_calls_are_items_one_after_another(interleaved: bool) -> None:
    """Some OpenAI-compatible providers interleave parallel calls' argument deltas (0, 1, 0, 1).
    Each item is added, gets its deltas and is done before the next is added, its done events
    carry its whole arguments (before: call 0 was done with ``""``, then got a delta after its
    ``output_item.done``, so a client acting on the done item, as the Vercel AI SDK does, called
    the tool with no arguments)."""
    parts = [
        [tool_call(0, "", "get_weather")],
        [tool_call(0, '{"location":')],
        [tool_call(1, "", "get_time")],
        [tool_call(1, '{"zone":')],
        [tool_call(0, ' "Paris"}')],
        [tool_call(1, ' "UTC"}')],
    ]
    if not interleaved:
        parts = [parts[0], parts[1], parts[4], parts[2], parts[3], parts[5]]
    events = ResponsesEvents({"model": "m", "input": "hi"}, IDS)
    out = b"".join(events.chunk({"choices": [{"delta": {"tool_calls": p}}]}) for p in parts)
    out += events.chunk({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    out += events.done()
    parsed = events_of(out)
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    open_item: str | None = None
    streamed: dict[str, str] = {}
    done: dict[str, tuple[str, str]] = {}  # item id -> (arguments of .done, of output_item.done)
    for event in parsed:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_item is None, parsed  # the previous item was done first
            open_item = event["item"]["id"]
            streamed[open_item] = ""
        elif kind == "response.function_call_arguments.delta":
            assert event["item_id"] == open_item, parsed
            streamed[open_item] += event["delta"]
        elif kind == "response.function_call_arguments.done":
            assert event["item_id"] == open_item, parsed
            done[open_item] = (event["arguments"], "")
        elif kind == "response.output_item.done":
            assert event["item"]["id"] == open_item, parsed
            done[open_item] = (done[open_item][0], event["item"]["arguments"])
            open_item = None
    final = Response.model_validate(parsed[-1]["response"])
    calls = {o.name: o for o in final.output if o.type == "function_call"}
    assert {name: json.loads(c.arguments) for name, c in calls.items()} == {
        "get_weather": {"location": "Paris"},
        "get_time": {"zone": "UTC"},
    }
    for c in calls.values():
        assert streamed[c.id or ""] == c.arguments and done[c.id or ""] == (c.arguments, c.arguments)
    assert [(c.id, c.call_id) for c in calls.values()] == [("fc_T_0", "call_0"), ("fc_T_1", "call_1")]


def test_an_empty_stream_still_completes() -> None:
    parsed = events_of(ResponsesEvents({"model": "m"}, IDS).done())
    assert [e["type"] for e in parsed] == ["response.created", "response.in_progress", "response.completed"]


def test_a_streamed_refusal_is_a_refusal_part_as_openai_streams_it() -> None:
    """Chat's ``delta.refusal`` chunks (OpenAI's first chunk carries ``"refusal": null``) become a
    refusal content part with ``response.refusal.delta`` / ``.done``, and the final response holds
    it, as the whole answer does (dropped, the stream completed with no output at all)."""
    events = ResponsesEvents({"model": "m", "input": "bad"}, IDS)
    out = events.chunk({"choices": [{"delta": {"role": "assistant", "content": "", "refusal": None}}]})
    for piece in ("I cannot ", "help with ", "that."):
        out += events.chunk({"choices": [{"delta": {"content": None, "refusal": piece}}]})
    out += events.chunk({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    out += events.done()
    parsed = events_of(out)  # each event as the SDK's own models type it
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    assert [e["type"] for e in parsed] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert parsed[3]["part"] == {"type": "refusal", "refusal": ""}
    assert [e["delta"] for e in parsed if e["type"] == "response.refusal.delta"] == [
        "I cannot ",
        "help with ",
        "that.",
    ]
    assert {(e["item_id"], e["content_index"]) for e in parsed[3:9]} == {("msg_T", 0)}
    assert parsed[7]["refusal"] == "I cannot help with that."
    final = Response.model_validate(parsed[-1]["response"])
    assert final.status == "completed"
    content = final.output[0].content  # type: ignore[union-attr]
    assert [(c.type, getattr(c, "refusal", None)) for c in content] == [
        ("refusal", "I cannot help with that.")
    ]
    # The same answer whole gives the same output item.
    whole = whole_response(
        {"model": "m"},
        {"choices": [{"message": {"content": None, "refusal": "I cannot help with that."}}]},
        IDS,
    )
    assert whole["output"] == parsed[-1]["response"]["output"]


def test_text_then_a_refusal_are_two_parts_of_one_message_in_order() -> None:
    events = ResponsesEvents({"model": "m"}, IDS)
    out = events.chunk({"choices": [{"delta": {"content": "Well, "}}]})
    out += events.chunk({"choices": [{"delta": {"content": "no", "refusal": None}}]})
    out += events.chunk({"choices": [{"delta": {"refusal": "I won't."}}]})
    out += events.done()
    parsed = events_of(out)
    added = [
        (e["content_index"], e["part"]["type"]) for e in parsed if e["type"] == "response.content_part.added"
    ]
    assert added == [(0, "output_text"), (1, "refusal")]
    assert [e["content_index"] for e in parsed if e["type"] == "response.refusal.delta"] == [1]
    final = Response.model_validate(parsed[-1]["response"])
    assert final.output_text == "Well, no"
    assert [c.type for c in final.output[0].content] == ["output_text", "refusal"]  # type: ignore[union-attr]


def test_the_settings_a_response_object_has_are_echoed() -> None:
    """``safety_identifier``, ``prompt_cache_key``, ``prompt_cache_retention``, ``max_tool_calls``,
    ``top_logprobs`` and ``text.verbosity`` are fields of OpenAI's response object: they came
    back null (verbosity dropped) whatever the client sent."""
    request = {
        "model": "m",
        "safety_identifier": "hashed-1",
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "max_tool_calls": 3,
        "top_logprobs": 2,
        "text": {"verbosity": "low"},
    }
    response = response_object(request, IDS, "m", [], "completed", None)
    for name in (
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "max_tool_calls",
        "top_logprobs",
    ):
        assert response[name] == request[name], name
    assert response["text"] == {"verbosity": "low", "format": {"type": "text"}}
    plain = response_object({"model": "m"}, IDS, "m", [], "completed", None)
    assert plain["top_logprobs"] == 0 and plain["safety_identifier"] is None
    assert plain["text"] == {"format": {"type": "text"}}


def test_repeated_call_ids_are_made_unique_whole_and_streamed() -> None:
    """Open models' servers send ``call_0`` for every call: the openai SDK's
    ``responses.stream()`` raised "conflicting output identities" on the second, and a client
    could not answer the two apart (an outside probe). The second gets a suffix, as on the
    Messages door."""
    calls = [
        {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "call_0", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    chat = {"model": "m", "choices": [{"message": {"tool_calls": calls}, "finish_reason": "tool_calls"}]}
    whole = whole_response({"model": "m", "input": "hi"}, chat, IDS)
    assert [o["call_id"] for o in whole["output"]] == ["call_0", "call_0_2"]
    events = ResponsesEvents({"model": "m", "input": "hi"}, IDS)
    out = b""
    for index, call in enumerate(calls):
        out += events.chunk({"choices": [{"delta": {"tool_calls": [{"index": index, **call}]}}]})
    out += events.chunk({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    out += events.done()
    final = Response.model_validate(events_of(out)[-1]["response"])
    assert [getattr(o, "call_id", None) for o in final.output] == ["call_0", "call_0_2"]
    assert len({o.id for o in final.output}) == 2
