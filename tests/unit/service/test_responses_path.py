"""The Responses API front door in process: the official openai SDK (``client.responses``) in
front of the real app, MockTransport behind. Chat-only providers get a translated chat request;
a provider flagged ``responses: true`` gets the request passed through; both answer in the
Responses shape, through the same failover, cache and accounting as chat."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import reservation
from gateway.errors import UpstreamConnectError
from gateway.policy.loader import load_policy, parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.wire.requests import Endpoint
from gateway.wire.responses import chat_request
from tests.unit.service.test_request_path import ClientFactory

POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
  b: {kind: openai, base_url: "http://b.test/v1"}
  n: {kind: openai, base_url: "http://n.test/v1", responses: true}
models:
  m:
    strategy: ordered
    deployments: [{provider: a, model: ma}, {provider: b, model: mb}]
  native:
    strategy: ordered
    deployments: [{provider: n, model: nm}, {provider: a, model: ma}]
memory: {enabled: false}
"""

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def chat_answer(
    model: str, text: str | None = "hello", calls: list[Any] | None = None, finish: str = "stop"
) -> Any:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def sse(event: Any) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def chat_chunk(model: str, delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    event: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        event = {**event, "choices": [], "usage": usage}
    return sse(event)


def chat_stream(model: str, parts: list[str]) -> MockResponse:
    chunks = [chat_chunk(model, {"role": "assistant", "content": ""})]
    chunks += [chat_chunk(model, {"content": p}) for p in parts]
    chunks.append(chat_chunk(model, {}, "stop"))
    chunks.append(chat_chunk(model, {}, usage={"prompt_tokens": 5, "completion_tokens": len(parts)}))
    chunks.append(b"data: [DONE]\n\n")
    return MockResponse.stream(chunks)


NATIVE_RESPONSE = {
    "id": "resp_native1",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "nm",
    "output": [
        {
            "id": "msg_native1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "native hello", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 4,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 6,
    },
}


def native_stream() -> MockResponse:
    created = {**NATIVE_RESPONSE, "status": "in_progress", "output": [], "usage": None}
    item = NATIVE_RESPONSE["output"][0]  # type: ignore[index]
    events = [
        {"type": "response.created", "sequence_number": 0, "response": created},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "sequence_number": 2, "output_index": 0, "content_index": 0,
         "item_id": "msg_native1", "part": {"type": "output_text", "text": "", "annotations": []}},
        {"type": "response.output_text.delta", "sequence_number": 3, "output_index": 0, "content_index": 0,
         "item_id": "msg_native1", "delta": "native hello", "logprobs": []},
        {"type": "response.output_item.done", "sequence_number": 4, "output_index": 0, "item": item},
        {"type": "response.completed", "sequence_number": 5, "response": NATIVE_RESPONSE},
    ]  # fmt: skip
    return MockResponse.stream([b"event: " + e["type"].encode() + b"\n" + sse(e) for e in events])


class Upstreams:
    """One MockTransport per provider; ``seen`` keeps (provider, path, parsed body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self.behaviour: dict[str, Callable[[dict[str, Any]], MockResponse]] = {}
        self.transports = {name: MockTransport(self._handler(name)) for name in ("a", "b", "n")}

    def _handler(self, name: str) -> Callable[[UpstreamRequest], MockResponse]:
        def handle(request: UpstreamRequest) -> MockResponse:
            body = orjson.loads(request.body)
            self.seen.append((name, request.path, body))
            if name in self.behaviour:
                return self.behaviour[name](body)
            if request.path == "/responses":
                return native_stream() if body.get("stream") else MockResponse.json(NATIVE_RESPONSE)
            if body.get("stream"):
                return chat_stream(body["model"], ["hel", "lo"])
            return MockResponse.json(chat_answer(body["model"]))

        return handle


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, upstreams: Upstreams) -> TestClient:
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=upstreams.transports)
    return await aiohttp_client(app)


def sdk(client: TestClient, key: str = "client-key") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=str(client.make_url("/v1")), max_retries=0)


# ----- translated to chat


async def test_plain_create_is_a_chat_request_and_a_response_object(
    client: TestClient, upstreams: Upstreams
) -> None:
    response = await sdk(client).responses.create(
        model="m", instructions="Be brief.", input="Say hello", max_output_tokens=50, temperature=0.5
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "hello"
    assert response.model == "ma"
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        7,
        2,
        9,
    )
    provider, path, sent = upstreams.seen[-1]
    assert (provider, path) == ("a", "/chat/completions")
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert sent["max_completion_tokens"] == 50
    assert sent["temperature"] == 0.5
    metrics = client.app[keys.METRICS].registry  # type: ignore[index]
    labels = {
        "gen_ai_operation_name": "chat",  # a front door's call is served as a chat call
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "m",
        "gen_ai_response_model": "ma",
        "provider": "a",
        "gen_ai_token_type": "input",
    }
    assert metrics.get_sample_value("gen_ai_client_token_usage_sum", labels) == 7
    attempts = {"endpoint": "responses", "mode": "translated"}
    assert metrics.get_sample_value("gateway_front_door_attempts_total", attempts) == 1


async def test_streamed_events_follow_the_responses_sequence(client: TestClient) -> None:
    stream = await sdk(client).responses.create(model="m", input="Say hello", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "hello"
    assert done.response.usage is not None and done.response.usage.output_tokens == 2


async def test_the_sdk_stream_helper_assembles_the_final_response(client: TestClient) -> None:
    async with sdk(client).responses.stream(model="m", input="Say hello") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == ["hel", "lo"]
    assert final.output_text == "hello"
    assert final.status == "completed"


async def test_function_tool_round_trip_with_previous_response_id(
    client: TestClient, upstreams: Upstreams
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    upstreams.behaviour["a"] = lambda body: MockResponse.json(chat_answer("ma", None, [call], "tool_calls"))
    api = sdk(client)
    first = await api.responses.create(
        model="m", input="Weather in Paris?", tools=[WEATHER], tool_choice="auto"
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert (calls[0].name, calls[0].call_id, calls[0].arguments) == (
        "get_weather",
        "call_1",
        '{"city":"Paris"}',
    )
    sent = upstreams.seen[-1][2]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert sent["tool_choice"] == "auto"
    del upstreams.behaviour["a"]
    second = await api.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "18C and sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "hello"
    assert second.previous_response_id == first.id
    assert upstreams.seen[-1][2]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]


async def test_streamed_tool_call_arguments(client: TestClient, upstreams: Upstreams) -> None:
    def tool_stream(body: dict[str, Any]) -> MockResponse:
        first = {
            "index": 0,
            "id": "call_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        return MockResponse.stream(
            [
                chat_chunk("ma", {"role": "assistant", "content": None, "tool_calls": [first]}),
                chat_chunk("ma", {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
                chat_chunk("ma", {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
                chat_chunk("ma", {}, "tool_calls"),
                b"data: [DONE]\n\n",
            ]
        )

    upstreams.behaviour["a"] = tool_stream
    async with sdk(client).responses.stream(model="m", input="Weather?", tools=[WEATHER]) as stream:
        kinds = [e.type async for e in stream]
        final = await stream.get_final_response()
    assert kinds.count("response.function_call_arguments.delta") == 2
    assert "response.function_call_arguments.done" in kinds
    call = final.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_9", "get_weather", '{"city":"Oslo"}')


class Weather(BaseModel):
    city: str
    degrees: int


async def test_text_format_json_schema_is_response_format(client: TestClient, upstreams: Upstreams) -> None:
    upstreams.behaviour["a"] = lambda body: MockResponse.json(
        chat_answer("ma", '{"city":"Oslo","degrees":3}')
    )
    parsed = await sdk(client).responses.parse(
        model="m", input="Weather in Oslo as JSON", text_format=Weather
    )
    assert parsed.output_parsed == Weather(city="Oslo", degrees=3)
    sent = upstreams.seen[-1][2]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "Weather"
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["degrees"] == {
        "title": "Degrees",
        "type": "integer",
    }


async def test_the_token_limit_makes_an_incomplete_response(client: TestClient, upstreams: Upstreams) -> None:
    upstreams.behaviour["a"] = lambda body: MockResponse.json(chat_answer("ma", "hel", finish="length"))
    response = await sdk(client).responses.create(model="m", input="Say hello", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


# ----- failover and cache from this front door


def refused(body: dict[str, Any]) -> MockResponse:
    raise UpstreamConnectError("refused", provider="a")


async def test_failover_works_from_the_responses_door(client: TestClient, upstreams: Upstreams) -> None:
    upstreams.behaviour["a"] = refused
    response = await sdk(client).responses.with_raw_response.create(model="m", input="hi")
    assert response.headers["x-gateway-provider"] == "b"
    assert response.headers["x-gateway-attempts"] == "2"
    assert response.parse().output_text == "hello"
    stream = await sdk(client).responses.create(model="m", input="hi", stream=True)
    kinds = [e.type async for e in stream]
    assert kinds[-1] == "response.completed"
    assert [p for p, _, _ in upstreams.seen] == ["a", "b", "a", "b"]


async def test_cache_keys_include_the_front_door(client: TestClient, upstreams: Upstreams) -> None:
    chat = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0},
    )
    assert chat.headers["x-gateway-cache"] == "miss"
    api = sdk(client)
    first = await api.responses.with_raw_response.create(model="m", input="hi", temperature=0)
    assert first.headers["x-gateway-cache"] == "miss"  # the cached chat answer is not served here
    second = await api.responses.with_raw_response.create(model="m", input="hi", temperature=0)
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.parse().output_text == "hello"
    streamed = await api.responses.with_raw_response.create(model="m", input="hi", temperature=0, stream=True)
    assert streamed.headers["x-gateway-cache"] == "miss"  # streams and whole answers apart
    assert len(upstreams.seen) == 3


async def test_a_cache_hit_is_a_response_of_its_own(client: TestClient, upstreams: Upstreams) -> None:
    """Two conversations opening with the same temperature-0 request: the second is a cache hit,
    yet it gets its own response and item ids (deleting the first leaves the second's
    previous_response_id working) and echoes its own store, metadata and user, not the first's."""
    api = sdk(client)
    first = await api.responses.create(
        model="m", input="open", temperature=0, store=False, metadata={"conv": "one"}
    )
    raw = await api.responses.with_raw_response.create(
        model="m", input="open", temperature=0, store=True, metadata={"conv": "two"}, user="user-two"
    )
    assert raw.headers["x-gateway-cache"] == "hit"
    second = raw.parse()
    assert second.output_text == first.output_text == "hello"
    assert second.id != first.id and second.id.startswith("resp_")
    assert second.output[0].id != first.output[0].id
    assert (second.store, second.metadata, second.user) == (True, {"conv": "two"}, "user-two")
    assert (first.store, first.metadata, first.user) == (False, {"conv": "one"}, None)
    third = await api.responses.create(model="m", input="open", temperature=0)  # a hit again
    assert third.id not in (first.id, second.id)
    assert (third.store, third.metadata, third.user) == (True, {}, None)  # the API's defaults
    await api.responses.delete(third.id)
    follow = await api.responses.create(model="m", input="continue", previous_response_id=second.id)
    assert follow.output_text == "hello"
    assert (await api.responses.retrieve(second.id)).metadata == {"conv": "two"}
    assert len(upstreams.seen) == 2  # the first answer and the follow-up: the rest were hits


async def test_a_streamed_cache_hit_is_a_response_of_its_own(
    client: TestClient, upstreams: Upstreams
) -> None:
    api = sdk(client)
    async with api.responses.stream(model="m", input="open", temperature=0, metadata={"conv": "one"}) as s:
        first = await s.get_final_response()
    raw = await api.responses.with_raw_response.create(
        model="m", input="open", temperature=0, stream=True, metadata={"conv": "two"}, store=True
    )
    assert raw.headers["x-gateway-cache"] == "hit"
    events = [e async for e in raw.parse()]
    ids = {e.response.id for e in events if hasattr(e, "response")}
    item_ids = {e.item.id for e in events if hasattr(e, "item")} | {
        e.item_id for e in events if hasattr(e, "item_id")
    }
    done = events[-1]
    assert done.type == "response.completed"
    assert len(ids) == 1 and ids != {first.id}
    assert item_ids == {done.response.output[0].id} and done.response.output[0].id != first.output[0].id
    assert done.response.metadata == {"conv": "two"} and done.response.output_text == "hello"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    follow = await api.responses.create(model="m", input="next", previous_response_id=done.response.id)
    assert follow.output_text == "hello"
    assert len(upstreams.seen) == 2


async def test_a_passed_through_answer_served_from_the_cache_gets_new_ids(client: TestClient) -> None:
    api = sdk(client)
    first = await api.responses.create(model="native", input="hi", temperature=0)
    assert first.id.startswith("resp_") and first.id != "resp_native1"  # the gateway's own
    second = await api.responses.with_raw_response.create(model="native", input="hi", temperature=0)
    assert second.headers["x-gateway-cache"] == "hit"
    hit = second.parse()
    assert hit.id.startswith("resp_") and hit.id not in ("resp_native1", first.id)
    assert hit.output[0].id not in ("msg_native1", first.output[0].id) and hit.output_text == "native hello"


# ----- pass-through to a provider that speaks Responses


async def test_a_flagged_provider_gets_the_request_passed_through(
    client: TestClient, upstreams: Upstreams
) -> None:
    response = await sdk(client).responses.create(
        model="native", input="hi", instructions="Be brief.", metadata={"k": "v"}
    )
    assert response.output_text == "native hello"
    # The gateway's ids, as every answer has (kept responses are named by them), and the client's
    # store (the provider was sent store: false).
    assert response.id.startswith("resp_") and len(response.id) == 37
    assert response.output[0].id.startswith("msg_") and response.output[0].id != "msg_native1"
    assert response.store is True and response.previous_response_id is None
    assert (await sdk(client).responses.retrieve(response.id)).output_text == "native hello"
    provider, path, sent = upstreams.seen[-1]
    assert (provider, path) == ("n", "/responses")
    assert sent == {
        "model": "nm",
        "input": "hi",
        "instructions": "Be brief.",
        "metadata": {"k": "v"},
        "store": False,
    }


async def test_a_passed_through_stream_is_relayed(client: TestClient, upstreams: Upstreams) -> None:
    async with sdk(client).responses.stream(model="native", input="hi") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == "native hello"
    assert [e.sequence_number for e in events] == list(range(6))  # every event, in order
    # The gateway's ids in every event, mapped alike: the item the deltas name is the final one.
    assert final.id.startswith("resp_") and final.id != "resp_native1" and final.store is True
    assert events[0].response.id == final.id  # type: ignore[union-attr]
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {final.output[0].id} and final.output[0].id != "msg_native1"
    assert upstreams.seen[-1][:2] == ("n", "/responses")
    # Kept for previous_response_id even though the provider keeps nothing (store: false upstream).
    follow = await sdk(client).responses.create(model="m", input="and then?", previous_response_id=final.id)
    assert follow.output_text == "hello"
    assert upstreams.seen[-1][2]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "native hello"},
        {"role": "user", "content": "and then?"},
    ]


async def test_a_mixed_group_fails_over_from_pass_through_to_translation(
    client: TestClient, upstreams: Upstreams
) -> None:
    upstreams.behaviour["n"] = lambda body: MockResponse.json({"error": {"message": "down"}}, status=503)
    response = await sdk(client).responses.create(model="native", input="hi")
    assert response.output_text == "hello"
    assert [(p, path) for p, path, _ in upstreams.seen] == [("n", "/responses"), ("a", "/chat/completions")]
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    for mode in ("native", "translated"):  # one attempt each way (front_door.py's metric)
        labels = {"endpoint": "responses", "mode": mode}
        assert registry.get_sample_value("gateway_front_door_attempts_total", labels) == 1


async def test_a_native_error_answered_with_200_fails_over_and_is_never_cached(
    client: TestClient, upstreams: Upstreams
) -> None:
    """A compatible server's ``{"error": ...}`` with HTTP 200 (or a response whose status is
    ``failed``) is the error it stands for, as on chat: the next deployment answers, and nothing
    of it is cached (it used to reach the client as a 200, be cached and served for the TTL)."""
    bodies = [
        {"error": {"message": "bad thing", "type": "server_error"}},
        {
            **NATIVE_RESPONSE,
            "status": "failed",
            "output": [],
            "error": {"code": "server_error", "message": "x"},
        },
        {"object": "list", "data": []},  # not a response at all
    ]
    for index, bad in enumerate(bodies):
        upstreams.behaviour["n"] = lambda body, bad=bad: MockResponse.json(bad)
        upstreams.seen.clear()
        ask = {"model": "native", "input": f"cache err {index}", "temperature": 0}
        response = await sdk(client).responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert response.headers["x-gateway-provider"] == "a", bad
        assert response.parse().output_text == "hello"
        assert [p for p, _, _ in upstreams.seen] == ["n", "a"]
        del upstreams.behaviour["n"]
        again = await sdk(client).responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
        assert again.parse().output_text == "hello"  # the good answer cached, not the error
        assert again.headers["x-gateway-cache"] == "hit"


@pytest.mark.parametrize(
    "first",
    [
        {"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "sequence_number": 0},
        {"error": {"message": "bad thing", "type": "server_error"}},
        {"type": "response.failed", "sequence_number": 0,
         "response": {**NATIVE_RESPONSE, "status": "failed", "error": {"code": "server_error", "message": "x"}}},
    ],
    ids=["error-event", "error-envelope", "response.failed"],
)  # fmt: skip
async def test_a_native_stream_whose_first_event_is_an_error_fails_over(
    client: TestClient, upstreams: Upstreams, first: dict[str, Any]
) -> None:
    """Nothing has reached the client yet, so the next deployment serves the stream (it used to
    be relayed, the healthy deployment never tried)."""
    upstreams.behaviour["n"] = lambda body: MockResponse.stream([sse(first)])
    async with sdk(client).responses.stream(model="native", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "hello"
    assert [p for p, _, _ in upstreams.seen] == ["n", "a"]


async def test_a_native_event_that_is_not_json_ends_the_stream_with_an_error_event(
    client: TestClient, upstreams: Upstreams
) -> None:
    good = list(native_stream().stream_chunks or [])[:2]  # response.created, an item added
    upstreams.behaviour["n"] = lambda body: MockResponse.stream([*good, b"data: {not json\n\n"])
    with pytest.raises(openai.APIError, match="sent a stream event the gateway could not read"):
        async with sdk(client).responses.stream(model="native", input="hi") as stream:
            async for _ in stream:
                pass


@pytest.mark.parametrize("kind", ["error", "response.failed"])
async def test_a_native_failure_mid_stream_is_the_gateways_error_event(
    client: TestClient, upstreams: Upstreams, kind: str
) -> None:
    """The provider's own ``error`` (or ``response.failed``) after the stream began was relayed as
    it sent it; the client gets the door's ``error`` event in the gateway's words (the provider
    named, code ``provider_error``, its message quoted), numbered after the events before it."""
    good = list(native_stream().stream_chunks or [])[:2]  # response.created, an item added
    failure = {"type": kind, "sequence_number": 2, "code": "server_error", "message": "The model crashed"}
    if kind == "response.failed":
        failure = {"type": kind, "sequence_number": 2, "response": {"error": failure}}
    upstreams.behaviour["n"] = lambda body: MockResponse.stream(
        [*good, b"event: " + kind.encode() + b"\n" + sse(failure)]
    )
    raw = await client.post("/v1/responses", json={"model": "native", "input": "hi", "stream": True})
    events = [e for e in (await raw.read()).split(b"\n\n") if e.strip()]
    assert len(events) == 3 and events[-1].startswith(b"event: error\ndata: ")
    error = orjson.loads(events[-1].split(b"data: ", 1)[1])
    assert error["sequence_number"] == 2 and error["code"] == "provider_error"
    assert error["message"] == (
        "n: the provider reported an error in the middle of the answer; the answer is incomplete. "
        "The provider said: 'The model crashed'"
    )
    assert error["error"]["type"] == "upstream_error"


# ----- refusals: 400 in OpenAI's envelope, never a 500


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
        (
            {"model": "m", "input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]},
            "tools[0].type",
            "file_search",
        ),
        (
            {"model": "m", "input": "hi", "tools": [{"type": "computer_use_preview"}]},
            "tools[0].type",
            "computer_use_preview",
        ),
        ({"model": "m", "input": "hi", "frobnicate": 1}, "frobnicate", "Unknown parameter"),
        ({"model": "m", "input": "hi", "background": True}, "background", "background"),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation", "conversations"),
        ({"model": "m", "input": 3}, "input", "string or a list"),
        (
            {"model": "m", "input": [{"type": "item_reference", "id": "msg_unknown"}]},
            "input[0]",
            "Item with id 'msg_unknown' not found",
        ),
        ({"model": "m", "input": [{"type": "item_reference", "id": 5}]}, "input[0].id", "the id of an item"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}] * 1001}, "input", "at most 1000"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "must be one of"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format", "schema"),
        (
            {"model": "m", "input": "hi", "previous_response_id": "resp_nope"},
            "previous_response_id",
            "not found",
        ),
        ({"model": "m", "input": "hi", "max_output_tokens": 1.5}, "max_output_tokens", "at least 1"),
        ({"input": "hi"}, "model", "Missing required parameter"),
        # Fields the gateway reads or keeps itself, typed as OpenAI's API types them (issue 17)
        ({"model": "m", "input": "hi", "store": "false"}, "store", "expected a boolean, but got string"),
        ({"model": "m", "input": "hi", "store": 0}, "store", "expected a boolean, but got integer"),
        ({"model": "m", "input": "hi", "background": "no"}, "background", "expected a boolean"),
        (
            {"model": "m", "input": "hi", "parallel_tool_calls": 1},
            "parallel_tool_calls",
            "expected a boolean",
        ),
        ({"model": "m", "input": "hi", "metadata": "x"}, "metadata", "expected an object, but got string"),
        ({"model": "m", "input": "hi", "metadata": {"team": 7}}, "metadata.team", "expected a string"),
        (
            {"model": "m", "input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata",
            "at most 16",
        ),
        ({"model": "m", "input": "hi", "metadata": {"k" * 65: "v"}}, "metadata", "at most 64"),
        ({"model": "m", "input": "hi", "metadata": {"k": "v" * 513}}, "metadata.k", "at most 512"),
        ({"model": "m", "input": "hi", "include": "reasoning"}, "include", "expected an array of strings"),
        ({"model": "m", "input": "hi", "include": [1]}, "include[0]", "expected a string"),
        ({"model": "m", "input": "hi", "truncation": "middle"}, "truncation", "'auto' or 'disabled'"),
        ({"model": "m", "input": "hi", "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"model": "m", "input": "hi", "max_tool_calls": 1.5}, "max_tool_calls", "expected an integer"),
        ({"model": "m", "input": "hi", "reasoning": "high"}, "reasoning", "expected an object"),
        ({"model": "m", "input": "hi", "text": "json"}, "text", "expected an object"),
        (
            {"model": "m", "input": "hi", "previous_response_id": 7},
            "previous_response_id",
            "expected a string",
        ),
        # Values as OpenAI documents them: no translated provider sees these fields to refuse them
        (
            {"model": "m", "input": "hi", "include": ["reasoning.encrypted_content", "everything"]},
            "include[1]",
            "Invalid value for 'include[1]': 'everything'. Supported values are: 'file_search_call.results'",
        ),
        ({"model": "m", "input": "hi", "max_tool_calls": 0}, "max_tool_calls", "Expected a value >= 1"),
        # OpenAI's minimum, whichever kind serves the request
        (
            {"model": "m", "input": "hi", "max_output_tokens": 15},
            "max_output_tokens",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 15",
        ),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens", "but got 0 instead"),
        ({"model": "m", "input": "hi", "max_tool_calls": -3}, "max_tool_calls", "but got -3 instead"),
        ({"model": "m", "input": "hi", "max_tool_calls": True}, "max_tool_calls", "expected an integer"),
        (
            {"model": "m", "input": "hi", "reasoning": {"effort": "extreme"}},
            "reasoning.effort",
            "'extreme'. Supported values are: 'none', 'minimal', 'low', 'medium', 'high', 'xhigh' and 'max'.",
        ),
        ({"model": "m", "input": "hi", "reasoning": {"effort": 3}}, "reasoning.effort", "expected a string"),
        (
            {"model": "m", "input": "hi", "reasoning": {"summary": "brief"}},
            "reasoning.summary",
            "Supported values are: 'auto', 'concise' and 'detailed'.",
        ),
        (
            {"model": "m", "input": "hi", "reasoning": {"generate_summary": "all"}},
            "reasoning.generate_summary",
            "'all'",
        ),
        (
            {"model": "m", "input": "hi", "text": {"verbosity": "verbose"}},
            "text.verbosity",
            "Supported values are: 'low', 'medium' and 'high'.",
        ),
        (
            {"model": "m", "input": "hi", "text": {"verbosity": ["low"]}},
            "text.verbosity",
            "expected a string",
        ),
    ],
)
async def test_bad_requests_are_400s_naming_the_field(
    client: TestClient, upstreams: Upstreams, body: dict[str, Any], param: str, words: str
) -> None:
    resp = await client.post("/v1/responses", json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]
    assert upstreams.seen == []


async def test_the_sdk_raises_bad_request_for_a_built_in_tool(client: TestClient) -> None:
    with pytest.raises(openai.BadRequestError, match="web_search"):
        await sdk(client).responses.create(model="m", input="hi", tools=[{"type": "web_search"}])


async def test_bad_json_and_unknown_models(client: TestClient) -> None:
    resp = await client.post("/v1/responses", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    with pytest.raises(openai.NotFoundError):
        await sdk(client).responses.create(model="unknown", input="hi")


async def test_previous_response_ids_are_per_tenant(client: TestClient) -> None:
    first = await sdk(client, "key-one").responses.create(model="m", input="hi")
    with pytest.raises(openai.BadRequestError, match="not found"):
        await sdk(client, "key-two").responses.create(model="m", input="more", previous_response_id=first.id)
    again = await sdk(client, "key-one").responses.create(
        model="m", input="more", previous_response_id=first.id
    )
    assert again.output_text == "hello"


async def test_store_false_keeps_nothing(client: TestClient) -> None:
    first = await sdk(client).responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.BadRequestError, match="not found"):
        await sdk(client).responses.create(model="m", input="more", previous_response_id=first.id)


async def test_fields_the_gateway_keeps_take_their_documented_values(client: TestClient) -> None:
    metadata = {f"k{i}": "v" * 512 for i in range(16)}  # the most OpenAI allows
    answer = await sdk(client).responses.create(
        model="m",
        input="hi",
        store=True,
        metadata=metadata,
        include=["reasoning.encrypted_content"],
        truncation="auto",
        top_logprobs=0,
        parallel_tool_calls=False,
    )
    assert answer.metadata == metadata  # echoed as sent
    assert (answer.store, answer.truncation, answer.parallel_tool_calls) == (True, "auto", False)


@pytest.mark.parametrize("include", [["web_search_call.action.sources"], ["message.output_text.logprobs"]])
async def test_documented_values_pass_and_verbosity_reaches_the_chat_deployment(
    client: TestClient, upstreams: Upstreams, include: list[str]
) -> None:
    answer = await sdk(client).responses.create(
        model="m",
        input="hi",
        include=include,  # type: ignore[arg-type]
        max_tool_calls=1,
        reasoning={"effort": "minimal", "summary": "auto"},
        text={"verbosity": "low"},
    )
    assert answer.output_text == "hello"
    sent = upstreams.seen[-1][2]
    assert (sent["verbosity"], sent["reasoning_effort"]) == ("low", "minimal")
    assert "text" not in sent and "include" not in sent and "max_tool_calls" not in sent


async def test_a_kept_response_can_be_retrieved_and_deleted_by_its_tenant_only(client: TestClient) -> None:
    first = await sdk(client, "key-one").responses.create(model="m", input="hi")
    got = await sdk(client, "key-one").responses.retrieve(first.id)
    assert got.model_dump() == first.model_dump()  # the response as it was answered
    with pytest.raises(openai.NotFoundError):  # another caller's id is unknown to it
        await sdk(client, "key-two").responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await sdk(client, "key-two").responses.delete(first.id)
    await sdk(client, "key-one").responses.delete(first.id)  # OpenAI's deletion object, 200
    with pytest.raises(openai.NotFoundError):
        await sdk(client, "key-one").responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match="not found"):  # and it is gone as a previous one
        await sdk(client, "key-one").responses.create(model="m", input="x", previous_response_id=first.id)
    streamed = sdk(client, "key-one").responses.stream(model="m", input="hi")
    async with streamed as events:
        final = await events.get_final_response()
    assert (await sdk(client, "key-one").responses.retrieve(final.id)).output_text == final.output_text
    unkept = await sdk(client).responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await sdk(client).responses.retrieve(unkept.id)
    resp = await client.delete("/v1/responses/resp_unknown")
    body = await resp.json()
    assert resp.status == 404 and body["error"]["param"] == "response_id"
    # Retrieving as a stream (OpenAI's replay of a background response's events) is refused,
    # not answered with JSON the SDK would read as an empty stream.
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(client, "key-one").responses.retrieve(final.id, stream=True)
    assert refused.value.code == "stream_not_supported" and refused.value.param == "stream"


def azure_sdk(client: TestClient, key: str) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=str(client.make_url("")).rstrip("/"),
        api_key=key,
        api_version="2024-10-21",
        max_retries=0,
    )


async def test_on_azures_paths_the_api_key_header_is_the_tenant_as_a_bearer_token_is(
    client: TestClient,
) -> None:
    # Open mode: the credential, whichever header carries it, is the tenant of kept responses.
    first = await azure_sdk(client, "key-one").responses.create(model="m", input="hi")
    assert (await azure_sdk(client, "key-one").responses.retrieve(first.id)).id == first.id
    assert (await sdk(client, "key-one").responses.retrieve(first.id)).id == first.id  # same credential
    with pytest.raises(openai.NotFoundError):
        await azure_sdk(client, "key-two").responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await sdk(client, "key-two").responses.retrieve(first.id)


async def test_policy_store_off_refuses_previous_response_id(aiohttp_client: ClientFactory) -> None:
    app: web.Application = build_app(
        Settings(access_log=False),
        parse_policy(POLICY + "responses: {store: false}\n"),
        {},
        transports=Upstreams().transports,
    )
    client = await aiohttp_client(app)
    first = await sdk(client).responses.create(model="m", input="hi")
    with pytest.raises(openai.BadRequestError, match=r"responses\.store: false"):
        await sdk(client).responses.create(model="m", input="more", previous_response_id=first.id)


def test_a_keyed_calls_token_reservation_reads_responses_fields() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "x" * 400},
            {"role": "user", "content": [{"type": "input_text", "text": "y" * 400}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""},
            {"type": "function_call_output", "call_id": "c", "output": "z" * 400},
        ],
        "max_output_tokens": 7,
    }
    # Admission reads the chat translation, as for every front door.
    assert reservation(Endpoint.CHAT, chat_request(body)) == 1200 // 4 + 1 + 7
    short = {"model": "m", "input": "x" * 40, "max_output_tokens": 3}
    assert reservation(Endpoint.CHAT, chat_request(short)) == 14


async def test_responses_settings_follow_a_policy_reload(
    aiohttp_client: ClientFactory, upstreams: Upstreams, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    settings = Settings(access_log=False, policy_watch=False, policy_path=str(path))
    app = build_app(settings, load_policy(path), {}, transports=upstreams.transports, policy_path=str(path))
    client = await aiohttp_client(app)
    first = await sdk(client).responses.create(model="m", input="hi")
    path.write_text(POLICY + "responses: {store: false}\n")
    assert (await client.post("/admin/policy/reload")).status == 200
    with pytest.raises(openai.BadRequestError, match=r"responses\.store: false"):
        await sdk(client).responses.create(model="m", input="more", previous_response_id=first.id)
    path.write_text(POLICY + "responses: {store: true, store_max_bytes: 1MB}\n")
    assert (await client.post("/admin/policy/reload")).status == 200
    kept = await sdk(client).responses.create(model="m", input="again")  # the budget survives reloads
    follow = await sdk(client).responses.create(model="m", input="more", previous_response_id=kept.id)
    assert follow.output_text == "hello"


async def test_a_stream_cut_after_its_first_event_raises_in_the_sdk(
    client: TestClient, upstreams: Upstreams
) -> None:
    async def cut() -> Any:
        yield chat_chunk("ma", {"role": "assistant", "content": "hel"})
        raise UpstreamConnectError("reset mid-stream", provider="a")

    upstreams.behaviour["a"] = lambda body: MockResponse.stream(cut())
    stream = await sdk(client).responses.create(model="m", input="hi", stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="closed the stream before the answer was complete"):
        async for event in stream:
            seen.append(event.type)
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert "response.completed" not in seen
    # The Responses API's own error event: what the Vercel AI SDK's parser takes, no [DONE]
    raw = await client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    events = (await raw.read()).split(b"\n\n")
    last = next(e for e in reversed(events) if e.strip())
    assert last.startswith(b"event: error\ndata: ")
    error = orjson.loads(last.split(b"data: ", 1)[1])
    numbers = [orjson.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in events if b"data: " in e]
    assert numbers == list(range(len(numbers)))  # the error event's number follows the others
    assert error["type"] == "error"
    assert error["message"] == "a: the provider closed the stream before the answer was complete."
    assert error["code"] == "upstream_closed" and error["param"] is None
    assert error["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in await raw.read()


async def test_a_completion_without_a_choice_fails_over_not_an_empty_response(
    client: TestClient, upstreams: Upstreams
) -> None:
    """A provider's completion with nothing to translate is its error (it was a "completed"
    response with no output): the next deployment answers."""
    upstreams.behaviour["a"] = lambda body: MockResponse.json(
        {"id": "c", "object": "chat.completion", "choices": [None]}
    )
    response = await sdk(client).responses.with_raw_response.create(model="m", input="hi")
    assert (response.headers["x-gateway-provider"], response.headers["x-gateway-attempts"]) == ("b", "2")
    assert response.parse().output_text == "hello"


# ----- Gemini's thought signatures through this door

GEMINI_POLICY = """
version: 1
auth: {mode: open}
providers:
  g: {kind: gemini, base_url: "http://g.test"}
models:
  gem: {deployments: [{provider: g, model: gemini-3-pro}]}
memory: {enabled: false}
"""
SIGNATURE = "CiQBjz1rX0il"
GEMINI_CALL = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": SIGNATURE,
                    }
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5, "totalTokenCount": 14},
}
GEMINI_TEXT = {
    "candidates": [
        {"content": {"role": "model", "parts": [{"text": "20C"}]}, "finishReason": "STOP", "index": 0}
    ],
    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1, "totalTokenCount": 13},
}


@pytest.mark.parametrize("stream", [False, True])
async def test_geminis_thought_signature_comes_back_with_the_call(
    aiohttp_client: ClientFactory, stream: bool
) -> None:
    """Gemini 3 refuses a function call sent back without the signature it came with; the chat
    door carried it (``extra_content``), this door dropped it and sent the placeholder."""
    sent: list[dict[str, Any]] = []

    def gemini(request: UpstreamRequest) -> MockResponse:
        body = orjson.loads(request.body)
        sent.append(body)
        answer = GEMINI_TEXT if len(sent) > 1 else GEMINI_CALL
        if request.stream:
            return MockResponse.stream([b"data: " + orjson.dumps(answer) + b"\n\n"])
        return MockResponse.json(answer)

    app = build_app(
        Settings(access_log=False), parse_policy(GEMINI_POLICY), {}, transports={"g": MockTransport(gemini)}
    )
    api = sdk(await aiohttp_client(app))
    if stream:
        async with api.responses.stream(model="gem", input="weather?", tools=[WEATHER]) as s:  # type: ignore[list-item]
            first = await s.get_final_response()
    else:
        first = await api.responses.create(model="gem", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    call = first.output[0]
    assert call.type == "function_call"
    assert call.model_dump()["extra_content"] == {"google": {"thought_signature": SIGNATURE}}
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "20C"}
    # Through the conversation the gateway kept, and through the client's own replay of the output.
    await api.responses.create(model="gem", previous_response_id=first.id, input=[result], tools=[WEATHER])  # type: ignore[list-item]
    replay = [item.model_dump(exclude_none=True) for item in first.output]
    await api.responses.create(
        model="gem", input=[{"role": "user", "content": "weather?"}, *replay, result], tools=[WEATHER]
    )  # type: ignore[list-item]
    for body in sent[1:]:
        model_turn = next(c for c in body["contents"] if c["role"] == "model")
        assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE


async def test_openai_operations_under_a_response_id_not_served_are_404s(client: TestClient) -> None:
    for path in ("/v1/responses/compact", "/v1/responses/resp_1/cancel"):
        response = await client.post(path, json={"model": "m", "input": "hi"})
        assert response.status == 404
        assert (await response.json())["error"]["message"] == f"Unknown path: POST {path}."


async def test_input_tokens_are_counted_without_calling_anyone(
    client: TestClient, upstreams: Upstreams
) -> None:
    """``responses.input_tokens.count`` was a 404 ("Unknown path"): now the gateway's estimate,
    as the Messages door's ``count_tokens``, over what a call would send."""
    api = sdk(client)
    short = await api.responses.input_tokens.count(model="m", input="hi")
    assert short.object == "response.input_tokens" and short.input_tokens >= 1
    long = await api.responses.input_tokens.count(model="m", input="word " * 400, instructions="Be brief.")
    assert long.input_tokens >= 500
    with_tools = await api.responses.input_tokens.count(
        model="m",
        input="word " * 400,
        instructions="Be brief.",
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert with_tools.input_tokens > long.input_tokens
    assert (await api.responses.input_tokens.count(instructions="Only this.")).input_tokens >= 1  # no model
    assert upstreams.seen == []
    first = await api.responses.create(model="m", input="word " * 400)
    chained = await api.responses.input_tokens.count(model="m", input="and?", previous_response_id=first.id)
    assert chained.input_tokens >= 500  # the kept conversation counts
    with pytest.raises(openai.NotFoundError):
        await api.responses.input_tokens.count(model="nope", input="hi")
    typed = await client.post("/v1/responses/input_tokens", json={"model": 5, "input": "hi"})
    assert typed.status == 400 and (await typed.json())["error"]["code"] == "invalid_type"
    with pytest.raises(openai.BadRequestError) as caught:
        await api.responses.input_tokens.count(model="m", input=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]
    assert caught.value.param == "input[0].role"


async def test_item_references_name_the_items_of_kept_responses(
    client: TestClient, upstreams: Upstreams
) -> None:
    """The Vercel AI SDK's Responses provider (store on, its default) sends earlier assistant turns
    as ``{"type": "item_reference", "id": ...}``: the gateway puts the kept item there, for the
    key that made it, and forgets it with its response."""
    api = sdk(client)
    first = await api.responses.create(model="m", input="hi")
    message_id = first.output[0].id
    turn = [
        {"role": "user", "content": "hi"},
        {"type": "item_reference", "id": message_id},
        {"role": "user", "content": "and then?"},
    ]
    second = await api.responses.create(model="m", input=turn)  # type: ignore[arg-type]
    assert second.output_text == "hello"
    assert upstreams.seen[-1][2]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and then?"},
    ]
    with pytest.raises(openai.BadRequestError) as other:  # another key's item does not exist for it
        await sdk(client, key="another-key").responses.create(model="m", input=turn)  # type: ignore[arg-type]
    assert other.value.body["code"] == "item_not_found"  # type: ignore[index]
    await api.responses.delete(first.id)
    with pytest.raises(openai.BadRequestError):  # gone with its response
        await api.responses.create(model="m", input=turn)  # type: ignore[arg-type]
    unkept = await api.responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.BadRequestError):
        await api.responses.create(model="m", input=[{"type": "item_reference", "id": unkept.output[0].id}])


def test_a_keyed_calls_token_reservation_counts_tool_calls_arguments() -> None:
    # Before: 0 for the calls, so an agent's long history of calls reserved next to nothing.
    call = {"type": "function_call", "call_id": "c", "name": "write_file", "arguments": "a" * 800}
    done = {"type": "function_call_output", "call_id": "c", "output": ""}
    body = {
        "model": "m",
        "input": [{"role": "user", "content": "x" * 400}, call, done],
        "max_output_tokens": 7,
    }
    assert reservation(Endpoint.CHAT, chat_request(body)) == 1200 // 4 + 1 + 7


@pytest.mark.parametrize(
    ("items", "param", "words"),
    [
        (
            [{"role": "user", "content": "and then?"}, {"role": "robot", "content": "x"}],
            "input[1].role",
            "'input[1].role' must be one of",
        ),
        ([{"type": "item_reference", "id": "msg_nowhere"}], "input[0]", "msg_nowhere"),
        (
            [{"role": "user", "content": "x"}, {"type": "item_reference", "id": 5}],
            "input[1].id",
            "'input[1].id'",
        ),
        ([{"type": "computer_call_output", "call_id": "c"}], "input[0].type", "'input[0]'"),
    ],
)
async def test_errors_after_previous_response_id_name_the_clients_own_items(
    client: TestClient, upstreams: Upstreams, items: list[Any], param: str, words: str
) -> None:
    """The kept conversation goes before the client's input: an error about the input still names
    the item as the client numbered it (input[1]), not its place in the merged history."""
    api = sdk(client)
    first = await api.responses.create(
        model="m", input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )
    sent_before = len(upstreams.seen)
    with pytest.raises(openai.BadRequestError) as caught:
        await api.responses.create(model="m", previous_response_id=first.id, input=items)
    error: Any = caught.value.body
    assert error["param"] == param, error
    assert words in error["message"], error
    assert len(upstreams.seen) == sent_before


async def test_an_adapters_refusal_after_previous_response_id_names_the_clients_item(
    aiohttp_client: ClientFactory,
) -> None:
    """The Gemini adapter refuses a call whose arguments are no JSON object, naming the chat
    translation's messages[3].tool_calls[0]: the client gets its own input[1].arguments."""
    app = build_app(
        Settings(access_log=False),
        parse_policy(GEMINI_POLICY),
        {},
        transports={"g": MockTransport(lambda request: MockResponse.json(GEMINI_TEXT))},
    )
    api = sdk(await aiohttp_client(app))
    first = await api.responses.create(model="gem", input="weather?")
    call = {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "[1]"}
    result = {"type": "function_call_output", "call_id": "c1", "output": "20C"}
    with pytest.raises(openai.BadRequestError) as caught:
        await api.responses.create(
            model="gem",
            previous_response_id=first.id,
            input=[{"role": "user", "content": "again"}, call, result],  # type: ignore[list-item]
            tools=[WEATHER],  # type: ignore[list-item]
        )
    error: Any = caught.value.body
    assert error["param"] == "input[1].arguments", error
    assert "input[1].arguments" in error["message"] and "messages[" not in error["message"]


async def test_the_input_items_of_a_kept_response_are_listed_as_openai_pages_them(client: TestClient) -> None:
    """``responses.input_items.list`` was a 404 ("Unknown path"): now the items the model was given
    (the previous response's conversation included), each with an id, newest first by default."""
    api = sdk(client, "key-one")
    first = await api.responses.create(model="m", input="hi")
    second = await api.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "and then?"}]}],
    )
    listed = await api.responses.input_items.list(second.id, order="asc")
    items = listed.data
    assert [item.type for item in items] == ["message", "message", "message"]
    assert [item.role for item in items] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert items[0].content[0].text == "hi"  # type: ignore[union-attr]
    assert items[1].id == first.output[0].id  # the answer, as it was kept
    assert items[2].content[0].text == "and then?"  # type: ignore[union-attr]
    assert len({item.id for item in items}) == 3
    newest = await api.responses.input_items.list(second.id, limit=1)
    assert [i.id for i in newest.data] == [items[2].id] and newest.has_more
    rest = await api.responses.input_items.list(second.id, limit=5, after=items[2].id)
    assert [i.id for i in rest.data] == [items[1].id, items[0].id] and not rest.has_more
    with pytest.raises(openai.NotFoundError):
        await sdk(client, "key-two").responses.input_items.list(second.id)  # another tenant's
    bad = await client.get(
        f"/v1/responses/{second.id}/input_items?limit=500", headers={"Authorization": "Bearer key-one"}
    )
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "limit"
