"""The fake provider's Anthropic flavor over real HTTP: wire shapes, tool use, streams, faults."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.policy.model import AnthropicProvider
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Endpoint
from gateway.testing.fake_provider import FakeConfig, build_app

Client = TestClient[web.Request, web.Application]
ASK = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hello there"}]}
WEATHER = {
    "name": "get_weather",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "f"]}},
    },
}


async def fake(aiohttp_client: AiohttpClient, **config: Any) -> Client:
    return await aiohttp_client(build_app(FakeConfig(flavor="anthropic", **config)))


async def post(client: Client, body: object, **headers: str) -> aiohttp.ClientResponse:
    return await client.post("/v1/messages", data=orjson.dumps(body), headers=headers)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            name_line, data_line = block.split("\n")
            out.append((name_line.removeprefix("event: "), orjson.loads(data_line.removeprefix("data: "))))
    return out


async def test_echo_message(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {
        **ASK,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }
    message = await (await post(client, body)).json()
    assert (
        message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    )
    assert message["content"] == [{"type": "text", "text": "Echo: hello there"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 4, "output_tokens": 3}  # system words count too


async def test_max_tokens_and_stop_sequences(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, reply="one two three four")
    cut = await (await post(client, {**ASK, "max_tokens": 2})).json()
    assert cut["content"][0]["text"] == "one two" and cut["stop_reason"] == "max_tokens"
    stopped = await (await post(client, {**ASK, "stop_sequences": [" three", "zzz"]})).json()
    assert stopped["content"][0]["text"] == "one two"
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == " three"


async def test_requests_the_api_would_refuse(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, require_key="sk-ant-test")
    denied = await post(client, ASK, **{"x-api-key": "wrong"})
    assert denied.status == 401
    assert (await denied.json())["error"]["type"] == "authentication_error"
    missing = await post(client, {**ASK, "max_tokens": None}, **{"x-api-key": "sk-ant-test"})
    assert missing.status == 400
    assert await missing.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: Field required (a positive integer)",
        },
    }
    assert (await post(client, ASK, **{"x-api-key": "sk-ant-test"})).status == 200


async def test_tool_use_when_forced_or_asked(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    forced = await (await post(client, {**ASK, "tools": [WEATHER], "tool_choice": {"type": "any"}})).json()
    assert forced["stop_reason"] == "tool_use"
    assert forced["content"][0] == {"type": "text", "text": "Calling get_weather."}
    tool = forced["content"][1]
    assert tool["type"] == "tool_use" and tool["id"].startswith("toolu_") and tool["name"] == "get_weather"
    assert tool["input"] == {"location": "location-value", "unit": "celsius"}
    asked = {**ASK, "tools": [WEATHER], "messages": [{"role": "user", "content": "please call get_weather."}]}
    assert (await (await post(client, asked)).json())["stop_reason"] == "tool_use"
    declined = {**asked, "tool_choice": {"type": "none"}}
    assert (await (await post(client, declined)).json())["stop_reason"] == "end_turn"


async def test_stream_follows_the_documented_event_sequence(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    resp = await post(client, {**ASK, "stream": True})
    assert resp.content_type == "text/event-stream"
    events = sse_events(await resp.text())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:-3] == ["content_block_delta"] * 3
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["usage"] == {"input_tokens": 2, "output_tokens": 1}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }


async def test_the_adapter_reads_the_fake_stream(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {**ASK, "stream": True, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}
    raw = await (await post(client, body)).read()
    config = AnthropicProvider(kind="anthropic", base_url="http://fake/v1")
    translator = AnthropicAdapter(config).stream_translator(Endpoint.CHAT, {}, "claude-x")
    assert translator is not None
    out = b"".join(translator.feed(raw[i : i + 5]) for i in range(0, len(raw), 5)) + translator.finish()
    chunks = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
    arguments = "".join(
        call["function"].get("arguments", "")
        for c in chunks
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    )
    assert orjson.loads(arguments) == {"location": "location-value", "unit": "celsius"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_injected_errors_use_anthropic_bodies(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, error_rate=1.0, error_status=529)
    resp = await post(client, ASK)
    assert resp.status == 529 and "retry-after" not in resp.headers
    assert (await resp.json())["error"] == {
        "type": "overloaded_error",
        "message": "fake-provider: injected 529 error",
    }
    limited = await fake(aiohttp_client, error_rate=1.0, error_status=429)
    resp = await post(limited, ASK)
    assert resp.headers["retry-after"] == "1"
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_disconnect_cuts_the_stream_before_message_stop(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, disconnect_rate=1.0, reply="a b c d e f")
    resp = await post(client, {**ASK, "stream": True})
    try:
        text = (await resp.content.read()).decode()
    except aiohttp.ClientPayloadError:
        text = ""
    assert "message_stop" not in text


async def test_openai_routes_are_not_served(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    assert (await client.post("/v1/chat/completions", json={})).status == 404
    stats = await (await client.get("/_fake/stats")).json()
    assert stats["requests"] == 0
