"""The fake provider over real HTTP: OpenAI wire format, every fault, control endpoints, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import random
import re
import signal
import statistics
import struct
import sys
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.testing import fake_wire
from gateway.testing.fake_provider import (
    FAKE_STATE,
    LATENCY_DISTRIBUTIONS,
    FakeConfig,
    Fault,
    add_arguments,
    build_app,
    draw_fault,
    draw_latency_ms,
)

Client = TestClient[web.Request, web.Application]
CHAT = {"model": "up-model", "messages": [{"role": "user", "content": "hello there"}]}
EIGHT_WORDS = "a b c d e f g h"


async def fake(aiohttp_client: AiohttpClient, **config: Any) -> Client:
    return await aiohttp_client(build_app(FakeConfig(**config)))


async def post(
    client: Client, path: str, body: object, headers: dict[str, str] | None = None, **kw: Any
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return await client.post(path, data=orjson.dumps(body), headers=headers, **kw)


async def events(resp: aiohttp.ClientResponse) -> list[str]:
    """The data of every server-sent event in a whole stream."""
    text = await resp.text()
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]


def envelope(payload: Any) -> dict[str, Any]:
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# --- the wire format -----------------------------------------------------------------------------


async def test_chat_echoes_the_last_user_message(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {
        "model": "up-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": None, "tool_calls": []},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}}],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    resp = await post(client, "/v1/chat/completions", body)
    assert resp.status == 200 and resp.content_type == "application/json"
    completion = await resp.json()
    assert completion["id"].startswith("chatcmpl-") and completion["object"] == "chat.completion"
    assert completion["model"] == "up-model" and isinstance(completion["created"], int)
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Echo: second", "refusal": None}
    assert choice["finish_reason"] == "stop"
    # Prompt tokens are the words of every message: 2 + 2 + 0 + 1.
    assert completion["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_fixed_reply_and_max_tokens(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, reply="one two three four")
    whole = await (await post(client, "/v1/chat/completions", CHAT)).json()
    assert whole["choices"][0]["message"]["content"] == "one two three four"
    cut = await (await post(client, "/v1/chat/completions", {**CHAT, "max_completion_tokens": 2})).json()
    assert cut["choices"][0]["message"]["content"] == "one two"
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 2


async def test_chat_stream_events(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    resp = await post(
        client, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    data = await events(resp)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "up-model" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Echo: hello there"
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:-1]] == [None, None, None, "stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
WEATHER_ARGUMENTS = {
    "city": "city-value",
    "unit": "c",
}  # fake_wire.tool_input: the schema's first enum, or by type


@pytest.mark.parametrize(
    ("extra", "called"),
    [
        ({"tool_choice": "required"}, "get_weather"),  # the first offered
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "get_time"),
        ({"messages": [{"role": "user", "content": "please call get_time now"}]}, "get_time"),  # auto
        ({"tool_choice": "none", "messages": [{"role": "user", "content": "call get_time"}]}, None),
        ({}, None),  # auto, and nothing asks for a call: text
    ],
)
async def test_chat_calls_a_function_when_asked(
    aiohttp_client: AiohttpClient, extra: dict[str, Any], called: str | None
) -> None:
    client = await fake(aiohttp_client)
    resp = await post(client, "/v1/chat/completions", {**CHAT, "tools": [WEATHER, CLOCK], **extra})
    completion = openai.types.chat.ChatCompletion.model_validate(await resp.json())  # the SDK's own type
    choice = completion.choices[0]
    if called is None:
        assert choice.finish_reason == "stop" and choice.message.tool_calls is None
        return
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == called
    assert orjson.loads(call.function.arguments) == (WEATHER_ARGUMENTS if called == "get_weather" else {})


def test_after_a_tools_result_the_reply_answers_it_in_text() -> None:
    """An agent's loop (the user asks for a call, the model calls, the tool answers, the model
    answers) ended only at the agent's turn limit: the fake called again on every turn, since the
    last user message still said "call NAME". As the Anthropic and Gemini flavours do, the reply
    after a tool's result is text that echoes it; a forced ``tool_choice`` still calls."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    looped = {
        "model": "m",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "call get_weather for Paris"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Paris"},
        ],
    }
    answered = fake_wire.parse_chat(looped)
    assert answered.tool is None and answered.prompt == "Sunny in Paris"
    forced = fake_wire.parse_chat({**looped, "tool_choice": "required"})
    assert forced.tool is not None and forced.tool["name"] == "get_weather"
    assert fake_wire.parse_chat({**looped, "messages": looped["messages"][:1]}).tool is not None


async def test_a_streamed_function_call_arrives_as_openai_streams_it(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {**CHAT, "tools": [WEATHER], "tool_choice": "required", "stream": True}
    resp = await post(client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    data = await events(resp)
    assert data[-1] == "[DONE]"
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate(orjson.loads(d)) for d in data[:-1]]
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    (opening,) = first.tool_calls or []
    assert opening.index == 0 and opening.id and opening.function and opening.function.name == "get_weather"
    arguments = "".join(
        call.function.arguments or ""
        for chunk in chunks
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function is not None
    )
    assert orjson.loads(arguments) == WEATHER_ARGUMENTS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


async def test_chat_stream_without_usage(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    data = await events(await post(client, "/v1/chat/completions", {**CHAT, "stream": True}))
    assert data[-1] == "[DONE]"
    assert all(orjson.loads(d)["choices"] for d in data[:-1])


async def test_text_completions_whole_and_streamed(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    whole = await (await post(client, "/v1/completions", {"model": "m", "prompt": "complete me"})).json()
    assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")
    assert (
        whole["choices"][0]["text"] == "Echo: complete me" and whole["choices"][0]["finish_reason"] == "stop"
    )
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    body = {"model": "m", "prompt": "x y", "stream": True, "stream_options": {"include_usage": True}}
    data = await events(await post(client, "/v1/completions", body))
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Echo: x y"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] == 5


@pytest.mark.parametrize(
    ("prompt", "texts", "prompt_tokens"),
    [
        ("one two", ["Echo: one two"], 2),
        (["one", "two three"], ["Echo: one", "Echo: two three"], 3),
        ([11, 12, 13], ["Echo: 11 12 13"], 3),
        ([[11, 12], [13]], ["Echo: 11 12", "Echo: 13"], 3),
    ],
)
async def test_text_completions_answer_each_of_openais_prompt_shapes(
    aiohttp_client: AiohttpClient, prompt: object, texts: list[str], prompt_tokens: int
) -> None:
    """A string, strings, token ids, token-id arrays (the reference's four shapes): one choice
    per prompt, and ``n`` per prompt, in that order."""
    client = await fake(aiohttp_client)
    whole = await (await post(client, "/v1/completions", {"model": "m", "prompt": prompt, "n": 2})).json()
    assert [c["text"] for c in whole["choices"]] == [t for t in texts for _ in range(2)]
    assert [c["index"] for c in whole["choices"]] == list(range(2 * len(texts)))
    assert whole["usage"]["prompt_tokens"] == prompt_tokens
    body = {"model": "m", "prompt": prompt, "n": 2, "stream": True}
    chunks = [orjson.loads(d) for d in (await events(await post(client, "/v1/completions", body)))[:-1]]
    streamed: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            streamed[choice["index"]] = streamed.get(choice["index"], "") + choice["text"]
    assert [streamed[i] for i in sorted(streamed)] == [t for t in texts for _ in range(2)]


async def test_text_completions_echo_stop_and_logprobs(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {"model": "m", "prompt": "say more", "echo": True, "stop": ["more"], "logprobs": 2}
    whole = await (await post(client, "/v1/completions", body)).json()
    choice = whole["choices"][0]
    assert choice["text"] == "say moreEcho: say"  # the prompt, then the reply cut before "more"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["say", " more", "Echo:", " say"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None  # the first echoed
    assert len(logprobs["top_logprobs"][1]) == 2
    assert logprobs["text_offset"][:2] == [0, 3]
    assert whole["usage"]["completion_tokens"] == 2  # the echoed prompt is not generated
    streamed = await events(await post(client, "/v1/completions", {**body, "stream": True}))
    chunks = [orjson.loads(d) for d in streamed[:-1]]
    assert all(c["choices"][0]["logprobs"] is not None for c in chunks if c["choices"][0]["text"])


async def test_embeddings_float_base64_and_dimensions(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, embedding_dim=16)
    body = {"model": "emb", "input": ["alpha", "beta gamma"]}
    floats = await (await post(client, "/v1/embeddings", body)).json()
    assert floats["object"] == "list" and floats["model"] == "emb"
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["index"] for d in floats["data"]] == [0, 1]
    alpha, beta = (d["embedding"] for d in floats["data"])
    assert len(alpha) == 16 and alpha != beta
    assert math.fsum(x * x for x in alpha) == pytest.approx(1.0, rel=1e-5)
    encoded = await (await post(client, "/v1/embeddings", {**body, "encoding_format": "base64"})).json()
    decoded = struct.unpack("<16f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert list(decoded) == alpha  # the same float32 values, bit for bit
    again = await (await post(client, "/v1/embeddings", {"model": "emb", "input": "alpha"})).json()
    assert again["data"][0]["embedding"] == alpha
    short = await (
        await post(client, "/v1/embeddings", {"model": "emb", "input": [[1, 2, 3]], "dimensions": 4})
    ).json()
    assert len(short["data"][0]["embedding"]) == 4 and short["usage"]["prompt_tokens"] == 3


async def test_models_list_and_retrieve(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, models=("a", "org/b"))
    listed = await (await client.get("/v1/models")).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["a", "org/b"]
    assert (await (await client.get("/v1/models/org/b")).json())["id"] == "org/b"
    missing = await client.get("/v1/models/nope")
    assert missing.status == 404 and envelope(await missing.json())["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", b"", None),
        ("/v1/chat/completions", b'{"model": "m"}', "messages"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "max_tokens",
        ),
        (  # as OpenAI's API: a tool_choice needs tools, and must name one of them
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}',
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function",'
            b' "function": {"name": "a"}}], "tool_choice": {"type": "function", "function": {"name": "b"}}}',
            "tool_choice",
        ),
        ("/v1/completions", b'{"model": "m", "prompt": 3}', "prompt"),
        ("/v1/completions", b'{"model": "m", "prompt": ["a", [1, 2]]}', "prompt"),
        ("/v1/completions", b'{"model": "m", "prompt": []}', "prompt"),
        (
            "/v1/completions",
            b'{"model": "m", "prompt": "x", "stream_options": {"include_usage": true}}',
            "stream_options",
        ),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "best_of": 1, "n": 2}', "best_of"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "best_of": 2, "stream": true}', "best_of"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "logprobs": 6}', "logprobs"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "echo": "yes"}', "echo"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "n": 0}', "n"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "stop": 5}', "stop"),
        ("/v1/embeddings", b'{"model": "m", "input": ["a", [1, 2]]}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": []}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": ["a", ""]}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": ""}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": [[]]}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": [' + b'"a",' * 2048 + b'"a"]}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": "x", "encoding_format": "hex"}', "encoding_format"),
    ],
)
async def test_bad_requests_are_400_envelopes(
    aiohttp_client: AiohttpClient, path: str, raw: bytes, param: str | None
) -> None:
    client = await fake(aiohttp_client)
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.content_type == "application/json"
    error = envelope(await resp.json())
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_require_key(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, require_key="sk-right")
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-right"}):
        resp = await post(client, "/v1/chat/completions", CHAT, headers=headers)
        assert resp.status == 401
        error = envelope(await resp.json())
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert (await client.get("/v1/models")).status == 401
    ok = await post(client, "/v1/chat/completions", CHAT, headers={"Authorization": "Bearer sk-right"})
    assert ok.status == 200


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "header", "error_type", "code"),
    [
        (429, None, "1", "rate_limit_error", "rate_limit_exceeded"),
        (429, 7.0, "7", "rate_limit_error", "rate_limit_exceeded"),
        (503, 2.5, "2.5", "server_error", None),
        (500, None, None, "server_error", None),
    ],
)
async def test_injected_errors(
    aiohttp_client: AiohttpClient,
    status: int,
    retry_after: float | None,
    header: str | None,
    error_type: str,
    code: str | None,
) -> None:
    client = await fake(aiohttp_client, error_rate=1.0, error_status=status, retry_after=retry_after)
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/embeddings", {"model": "m", "input": "x"})):
        resp = await post(client, path, body)
        assert resp.status == status and resp.headers.get("Retry-After") == header
        error = envelope(await resp.json())
        assert (error["type"], error["code"]) == (error_type, code)


async def test_malformed_body(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, malformed_rate=1.0)
    resp = await post(client, "/v1/chat/completions", CHAT)
    assert resp.status == 200 and resp.content_type == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await resp.read())


@pytest.mark.parametrize("fault", ["reset_rate", "disconnect_rate"])
async def test_reset_closes_without_a_response(aiohttp_client: AiohttpClient, fault: str) -> None:
    # A non-streamed request cut by "disconnect" is a reset too.
    client = await fake(aiohttp_client, **{fault: 1.0})
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(client, "/v1/chat/completions", CHAT)
    stats = await (await client.get("/_fake/stats")).json()
    assert stats["requests"] == 1  # received, then dropped


async def test_hang_until_the_client_gives_up() -> None:
    # Without handler cancellation (web.run_app's default; the test server turns it on) nothing
    # would end a hung handler, so this serves the app the plain way.
    runner = web.AppRunner(build_app(FakeConfig(hang_rate=1.0)), handler_cancellation=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        idle_tasks = len(asyncio.all_tasks())
        async with aiohttp.ClientSession(url) as session:
            started = time.perf_counter()
            with pytest.raises(asyncio.TimeoutError):
                await session.post(
                    "/v1/chat/completions", json=CHAT, timeout=aiohttp.ClientTimeout(total=0.3)
                )
            assert time.perf_counter() - started >= 0.29
            # The hung handler notices that its client left and ends: no task is left behind.
            for _ in range(100):
                if len(asyncio.all_tasks()) <= idle_tasks:
                    break
                await asyncio.sleep(0.02)
            assert len(asyncio.all_tasks()) <= idle_tasks
            await session.post("/_fake/faults", json={"hang_rate": 0})
            async with session.post("/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_disconnect_cuts_a_stream_after_half_its_tokens(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, disconnect_rate=1.0, reply=EIGHT_WORDS)
    resp = await post(client, "/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200
    lines: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for line in resp.content:
            lines.append(line)
    data = [line.removeprefix(b"data: ").strip() for line in lines if line.startswith(b"data: ")]
    assert b"[DONE]" not in data
    chunks = [orjson.loads(d) for d in data]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "a b c d"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_latency_delays_the_answer(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, latency_ms=150)
    started = time.perf_counter()
    assert (await post(client, "/v1/chat/completions", CHAT)).status == 200
    assert time.perf_counter() - started >= 0.15


async def test_stream_is_paced_by_ttft_and_tokens_per_s(aiohttp_client: AiohttpClient) -> None:
    ten_words = "one two three four five six seven eight nine ten"
    client = await fake(aiohttp_client, ttft_ms=200, tokens_per_s=20, reply=ten_words)
    started = time.perf_counter()
    resp = await post(client, "/v1/chat/completions", {**CHAT, "stream": True})
    headers_after = time.perf_counter() - started
    arrivals: list[float] = []
    async for line in resp.content:
        if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
            arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == 10
    assert headers_after < arrivals[0]
    assert arrivals[0] >= 0.2  # time to first token
    # Ten tokens at 20/s: nine intervals of 50 ms between the first and the last (minus timer slack).
    assert arrivals[-1] - arrivals[0] >= 0.45 - 0.02
    assert arrivals[5] - arrivals[0] >= 0.25 - 0.02


async def test_runtime_fault_changes(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    assert (await post(client, "/v1/chat/completions", CHAT)).status == 200
    changed = await client.post(
        "/_fake/faults", json={"error_rate": 1, "error_status": 502, "latency_ms": 10}
    )
    assert changed.status == 200
    config = await changed.json()
    assert (config["error_rate"], config["error_status"], config["latency_ms"]) == (1, 502, 10)
    assert (await post(client, "/v1/chat/completions", CHAT)).status == 502
    assert (await (await client.get("/_fake/faults")).json())["error_status"] == 502
    await client.post("/_fake/faults", json={"error_rate": 0})
    assert (await post(client, "/v1/chat/completions", CHAT)).status == 200
    for bad in (
        {"error_rate": 2},
        {"error_rate": "0.5"},
        {"latency_dist": "zipf"},
        {"port": 1},
        {"nope": 1},
        [1],
    ):
        resp = await client.post("/_fake/faults", json=bad)
        assert resp.status == 400, bad
        envelope(await resp.json())
    assert (await (await client.get("/_fake/faults")).json())["error_rate"] == 0


async def test_stats_and_reset(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    empty = await (await client.get("/_fake/stats")).json()
    assert empty == {"requests": 0, "by_path": {}, "last_request": None, "max_in_flight": 0, "streamed": []}
    await post(client, "/v1/embeddings", {"model": "e", "input": "x"})
    await post(
        client,
        "/v1/chat/completions",
        {**CHAT, "seed": 42},
        headers={"X-Trace": "t-1", "Authorization": "Bearer k"},
    )
    await client.get("/v1/models")
    await client.post("/v1/chat/completions", data=b"{broken")
    stats = await (await client.get("/_fake/stats")).json()
    assert stats["requests"] == 4
    assert stats["max_in_flight"] == 1  # one after another
    assert stats["by_path"] == {"/v1/embeddings": 1, "/v1/chat/completions": 2, "/v1/models": 1}
    assert stats["last_request"] == {
        "path": "/v1/chat/completions",
        "headers": stats["last_request"]["headers"],
        "body": None,
    }
    await post(
        client,
        "/v1/chat/completions",
        {**CHAT, "seed": 42},
        headers={"X-Trace": "t-1", "Authorization": "Bearer k"},
    )
    last = (await (await client.get("/_fake/stats")).json())["last_request"]
    assert last["body"] == {**CHAT, "seed": 42}
    headers = {k.lower(): v for k, v in last["headers"].items()}
    assert headers["x-trace"] == "t-1" and headers["authorization"] == "Bearer k"
    reset = await client.post("/_fake/reset")
    assert await reset.json() == empty
    assert await (await client.get("/_fake/stats")).json() == empty


async def test_a_seed_makes_faults_reproducible(aiohttp_client: AiohttpClient) -> None:
    async def statuses(client: Client) -> list[int]:
        return [(await post(client, "/v1/chat/completions", CHAT)).status for _ in range(20)]

    first = await fake(aiohttp_client, seed=7, error_rate=0.5)
    second = await fake(aiohttp_client, seed=7, error_rate=0.5)
    run = await statuses(first)
    assert set(run) == {200, 500}
    assert await statuses(second) == run
    await first.post("/_fake/reset")  # re-seeds: the same sequence again
    assert await statuses(first) == run


class FixedDraw(random.Random):
    """A generator whose uniform draws are given."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_fault_ranges_are_allotted_in_a_fixed_order() -> None:
    config = FakeConfig(
        reset_rate=0.1, hang_rate=0.1, malformed_rate=0.1, error_rate=0.1, disconnect_rate=0.1
    )
    draws = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.99]
    rng = FixedDraw(*draws)
    faults = [draw_fault(config, rng) for _ in draws]
    assert faults == [Fault.RESET, Fault.HANG, Fault.MALFORMED, Fault.ERROR, Fault.DISCONNECT, None, None]
    # With every rate off nothing is drawn at all.
    assert draw_fault(FakeConfig(), FixedDraw()) is None


def test_latency_distributions() -> None:
    rng = random.Random(3)
    assert set(LATENCY_DISTRIBUTIONS) == {"fixed", "uniform", "normal", "lognormal"}

    def samples(dist: str, n: int = 20000) -> list[float]:
        config = FakeConfig(latency_ms=100, latency_jitter_ms=20, latency_dist=dist)
        return [draw_latency_ms(config, rng) for _ in range(n)]

    assert set(samples("fixed", 10)) == {100}
    uniform = samples("uniform")
    assert min(uniform) >= 80 and max(uniform) <= 120
    normal = samples("normal")
    assert statistics.fmean(normal) == pytest.approx(100, rel=0.02)
    assert statistics.stdev(normal) == pytest.approx(20, rel=0.05)
    lognormal = samples("lognormal")
    assert statistics.median(lognormal) == pytest.approx(100, rel=0.02)
    assert statistics.stdev(lognormal) == pytest.approx(20, rel=0.1)
    assert min(lognormal) > 0
    wide = FakeConfig(latency_ms=10, latency_jitter_ms=50, latency_dist="normal")
    assert min(draw_latency_ms(wide, rng) for _ in range(1000)) == 0  # clipped, never negative


@pytest.mark.parametrize(
    "changes",
    [{"error_rate": 1.5}, {"hang_rate": -0.1}, {"latency_ms": -1}, {"error_status": 200}, {"embedding_dim": 0},
     {"latency_dist": "zipf"}, {"models": ()}, {"error_status": True}, {"ttft_ms": math.inf}, {"reply": 3}],
)  # fmt: skip
def test_config_rejects_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        FakeConfig(**changes)


def test_state_is_on_the_app_under_a_typed_key() -> None:
    app = build_app(FakeConfig(seed=1))
    assert app[FAKE_STATE].config.seed == 1 and app[FAKE_STATE].requests == 0


# --- the official SDK ----------------------------------------------------------------------------


async def test_openai_sdk(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(
        build_app(FakeConfig(require_key="sk-fake", embedding_dim=12, models=("fm",)))
    )
    base_url = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-fake", max_retries=0, timeout=10) as sdk:
        completion = await sdk.chat.completions.create(
            model="fm", messages=[{"role": "user", "content": "hi sdk"}]
        )
        assert completion.choices[0].message.content == "Echo: hi sdk"
        assert completion.usage is not None and completion.usage.total_tokens == 5

        stream = await sdk.chat.completions.create(
            model="fm",
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: stream me"
        assert (
            chunks[-1].choices == []
            and chunks[-1].usage is not None
            and chunks[-1].usage.completion_tokens == 3
        )

        embedded = await sdk.embeddings.create(model="fm", input=["x", "y"])  # the SDK asks for base64
        assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 12
        floats = await sdk.embeddings.create(model="fm", input="x", encoding_format="float")
        assert floats.data[0].embedding == pytest.approx(embedded.data[0].embedding)

        assert [m.id async for m in sdk.models.list()] == ["fm"]
        done = await sdk.completions.create(model="fm", prompt="p")
        assert done.choices[0].text == "Echo: p"

    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-other", max_retries=0, timeout=10) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()


async def test_openai_sdk_maps_injected_faults(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(build_app(FakeConfig(error_rate=1.0, error_status=429, retry_after=3)))
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="k", max_retries=0, timeout=10
    ) as sdk:
        with pytest.raises(openai.RateLimitError) as err:
            await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after"] == "3"
    assert err.value.code == "rate_limit_exceeded"


# --- the command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_flags_make_a_config() -> None:
    args = parser().parse_args(
        ["--port", "0", "--models", "a, b", "--error-rate", "0.25", "--error-status", "429", "--retry-after", "7",
         "--latency-ms", "5", "--latency-dist", "lognormal", "--tokens-per-s", "50", "--reply", "hi", "--seed", "3"]
    )  # fmt: skip
    args.func = print  # what the CLI adds is ignored
    config = FakeConfig.from_args(args)
    assert config == FakeConfig(
        port=0, models=("a", "b"), error_rate=0.25, error_status=429, retry_after=7.0,
        latency_ms=5.0, latency_dist="lognormal", tokens_per_s=50.0, reply="hi", seed=3,
    )  # fmt: skip
    assert FakeConfig.from_args(parser().parse_args([])) == FakeConfig()


@pytest.mark.parametrize(
    "argv",
    [["--error-rate", "2"], ["--hang-rate", "x"], ["--port", "70000"], ["--latency-dist", "zipf"],
     ["--error-status", "200"], ["--models", " , "], ["--latency-ms", "-1"], ["--ttft-ms", "inf"], ["--embedding-dim", "1.5"]],
)  # fmt: skip
def test_bad_flags_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    assert "error:" in capsys.readouterr().err


RUN = """
import argparse, sys
from gateway.testing import fake_provider
p = argparse.ArgumentParser()
fake_provider.add_arguments(p)
sys.exit(fake_provider.run(p.parse_args(sys.argv[1:])))
"""


async def test_run_serves_until_sigterm() -> None:
    # The real process: binds port 0, says where once bound, exits 0 on SIGTERM even with a hung request.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN, "--port", "0", "--hang-rate", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.fullmatch(r"fake-provider listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match and int(match.group(2)) > 0, line
        async with aiohttp.ClientSession() as session:
            hung = asyncio.create_task(session.post(match.group(1) + "/v1/chat/completions", json=CHAT))
            await asyncio.sleep(0.3)
            assert not hung.done()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            with pytest.raises(aiohttp.ClientConnectionError):
                await hung
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_reports_a_port_in_use() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUN,
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1 and b"listening" not in out
        assert f"cannot listen on 127.0.0.1:{port}".encode() in err
    finally:
        blocker.close()


async def test_stats_count_the_most_requests_answered_at_once(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    await client.post("/_fake/faults", json={"latency_ms": 300})
    await asyncio.gather(
        *(post(client, "/v1/embeddings", {"model": "e", "input": f"x{i}"}) for i in range(3))
    )
    assert (await (await client.get("/_fake/stats")).json())["max_in_flight"] == 3
    await client.post("/_fake/reset")
    assert (await (await client.get("/_fake/stats")).json())["max_in_flight"] == 0


async def test_more_than_four_stop_sequences_are_refused(aiohttp_client: AiohttpClient) -> None:
    """Chat Completions' ``stop``: "Up to 4 sequences" (OpenAI's API reference)."""
    client = await fake(aiohttp_client)
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert (await post(client, "/v1/chat/completions", {**ask, "stop": ["a", "b", "c", "d"]})).status == 200
    resp = await post(client, "/v1/chat/completions", {**ask, "stop": ["a", "b", "c", "d", "e"]})
    assert resp.status == 400
    error = envelope(await resp.json())
    assert error["param"] == "stop" and "maximum length 4" in error["message"]


async def test_a_reply_ends_before_a_stop_sequence(aiohttp_client: AiohttpClient) -> None:
    """``stop``: "The returned text will not contain the stop sequence" (OpenAI's reference)."""
    client = await fake(aiohttp_client)
    for stop in (["gamma", "beta"], "beta"):
        ask = {"model": "m", "messages": [{"role": "user", "content": "alpha beta gamma"}], "stop": stop}
        body = await (await post(client, "/v1/chat/completions", ask)).json()
        assert body["choices"][0]["message"]["content"] == "Echo: alpha"  # (words: no trailing space)
        assert body["choices"][0]["finish_reason"] == "stop"


STRICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"q": {"type": "object", "properties": {"x": {"type": "string"}}}},
    "required": ["q"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {**STRICT_SCHEMA, "additionalProperties": True},
            "In context=(), 'additionalProperties' is required to be supplied and to be false.",
        ),
        (
            {**STRICT_SCHEMA, "required": []},
            "In context=(), 'required' is required to be supplied and to be an array including every key in "
            "properties. Missing 'q'.",
        ),
        (
            STRICT_SCHEMA,  # the nested object lacks additionalProperties
            "In context=('properties', 'q'), 'additionalProperties' is required to be supplied and to be false.",
        ),
    ],
)
def test_a_strict_function_needs_a_strict_schema(schema: dict[str, Any], message: str) -> None:
    """OpenAI's Structured Outputs ("Supported schemas"): a strict function's objects set
    ``additionalProperties: false`` and require every property; refused with its words."""
    tool = {"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    with pytest.raises(fake_wire.WireError) as caught:
        fake_wire.parse_chat(body)
    assert str(caught.value) == f"Invalid schema for function 'f': {message}"
    assert caught.value.param == "tools[0].function.parameters"
    tool["function"]["strict"] = False  # not strict: any schema
    fake_wire.parse_chat(body)


async def test_an_unknown_parameter_is_refused_with_openais_code(aiohttp_client: AiohttpClient) -> None:
    """OpenAI: ``{"message": "Unknown parameter: 'reasoning'.", "type": "invalid_request_error",
    "param": "reasoning", "code": "unknown_parameter"}``; the fake said ``code: null``."""
    client = await fake(aiohttp_client)
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{**call, "extra_content": {"google": {}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    resp = await post(client, "/v1/chat/completions", {"model": "m", "messages": messages})
    assert resp.status == 400
    assert envelope(await resp.json()) == {
        "message": "Unknown parameter: 'messages[1].tool_calls[0].extra_content'.",
        "type": "invalid_request_error",
        "param": "messages[1].tool_calls[0].extra_content",
        "code": "unknown_parameter",
    }


@pytest.mark.parametrize(
    "said", ["Answer in JSON.", "a Json object", [{"type": "text", "text": "json please"}]]
)
def test_json_mode_is_served_when_the_messages_say_json(said: object) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": said}],
        "response_format": {"type": "json_object"},
    }
    fake_wire.parse_chat(body)


async def test_json_mode_without_the_word_json_is_refused_as_openai_does(
    aiohttp_client: AiohttpClient,
) -> None:
    """OpenAI: "'messages' must contain the word 'json' in some form, to use 'response_format' of
    type 'json_object'."; the fake answered."""
    client = await fake(aiohttp_client)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
    }
    resp = await post(client, "/v1/chat/completions", body)
    assert resp.status == 400
    error = envelope(await resp.json())
    assert error["param"] == "messages" and error["type"] == "invalid_request_error"
    assert error["message"] == (
        "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
    )


CALL_C1: Any = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        (
            [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c9", "content": "x"}],
            "messages.[1].role",
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
            "'tool_calls'.",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [CALL_C1]},
                {"role": "user", "content": "next"},
            ],
            "messages.[1].role",
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: c1",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [CALL_C1]},
            ],
            "messages.[1].role",
            "did not have response messages: c1",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [CALL_C1]},
                {"role": "tool", "tool_call_id": "c1", "content": "x"},
                {"role": "user", "content": "more"},
                {"role": "tool", "tool_call_id": "c1", "content": "again"},
            ],
            "messages.[4].role",
            "must be a response to a preceeding message",
        ),
    ],
)
def test_tool_messages_must_answer_the_calls_before_them_as_openai_wants(
    messages: Any, param: str, words: str
) -> None:
    with pytest.raises(fake_wire.WireError) as caught:
        fake_wire.parse_chat({"model": "m", "messages": messages})
    assert caught.value.param == param and words in str(caught.value)


def test_parallel_calls_answered_in_any_order_are_served() -> None:
    second = {**CALL_C1, "id": "c2"}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [CALL_C1, second]},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
    ]
    fake_wire.parse_chat({"model": "m", "messages": messages})


def _functions(*names: str) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in names]


def _allowed(mode: str, *names: str) -> dict[str, Any]:
    listed = [{"type": "function", "function": {"name": n}} for n in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": listed}}


def test_allowed_tools_are_served_as_openai_serves_them() -> None:
    """OpenAI's chat ``tool_choice`` ``allowed_tools`` (the model may call only the tools named):
    the fake refused it ("no function named None")."""
    tools = _functions("a", "b")
    required = fake_wire.parse_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
            "tool_choice": _allowed("required", "b"),
        }
    )
    assert required.tool is not None and required.tool["name"] == "b"
    asked = {"model": "m", "messages": [{"role": "user", "content": "call a"}], "tools": tools}
    assert fake_wire.parse_chat({**asked, "tool_choice": _allowed("auto", "a")}).tool is not None
    assert (
        fake_wire.parse_chat({**asked, "tool_choice": _allowed("auto", "b")}).tool is None
    )  # a is not allowed
    with pytest.raises(fake_wire.WireError):
        fake_wire.parse_chat({**asked, "tool_choice": _allowed("auto", "c")})


def test_a_strict_response_format_schema_is_held_to_openais_rules() -> None:
    """OpenAI: "Invalid schema for response_format 'NAME': In context=(), 'additionalProperties'
    is required to be supplied and to be false." (as its users quote it); the fake took any."""
    loose = {"type": "object", "properties": {"city": {"type": "string"}}}
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "W", "schema": loose, "strict": True},
        },
    }
    with pytest.raises(fake_wire.WireError) as caught:
        fake_wire.parse_chat(body)
    assert str(caught.value) == (
        "Invalid schema for response_format 'W': In context=(), 'additionalProperties' is required to be "
        "supplied and to be false."
    )
    assert caught.value.param == "response_format.json_schema.schema"
    fake_wire.parse_chat(
        {**body, "response_format": {"type": "json_schema", "json_schema": {"name": "W", "schema": loose}}}
    )
    tight = {**loose, "additionalProperties": False, "required": ["city"]}
    strict = {"type": "json_schema", "json_schema": {"name": "W", "schema": tight, "strict": True}}
    fake_wire.parse_chat({**body, "response_format": strict})


async def test_json_is_answered_in_json_as_openai_does(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}}}
    asked = {
        **CHAT,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    }
    whole = await (await post(client, "/v1/chat/completions", asked)).json()
    assert orjson.loads(whole["choices"][0]["message"]["content"]) == {"city": "city-value", "degrees": 42}
    json_mode = {"model": "m", "messages": [{"role": "user", "content": "in JSON"}]}
    whole = await (
        await post(client, "/v1/chat/completions", {**json_mode, "response_format": {"type": "json_object"}})
    ).json()
    assert orjson.loads(whole["choices"][0]["message"]["content"]) == {"echo": "in JSON"}
    # OpenAI refuses JSON mode unless a message says "json".
    resp = await post(client, "/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}})
    assert resp.status == 400 and envelope(await resp.json())["param"] == "messages"


async def test_n_choices_and_logprobs_as_openai_gives_them(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    asked = {**CHAT, "n": 2, "logprobs": True, "top_logprobs": 2}
    whole = await (await post(client, "/v1/chat/completions", asked)).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    content = whole["choices"][1]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == "Echo: hello there"
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] < 0 for e in content)
    assert whole["usage"]["completion_tokens"] == 6  # both choices' tokens
    resp = await post(client, "/v1/chat/completions", {**asked, "stream": True})
    chunks = [orjson.loads(e) for e in await events(resp) if e != "[DONE]"]
    texts = [
        "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"][0]["index"] == i
        )
        for i in (0, 1)
    ]
    assert texts == ["Echo: hello there"] * 2
    resp = await post(client, "/v1/chat/completions", {**CHAT, "top_logprobs": 2})
    assert resp.status == 400 and envelope(await resp.json())["param"] == "top_logprobs"
    resp = await post(client, "/v1/chat/completions", {**CHAT, "n": 0})
    assert resp.status == 400 and envelope(await resp.json())["param"] == "n"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": []}, "tools"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "15"}]},
            "messages.[1].tool_call_id",
        ),
    ],
)
async def test_shapes_openai_refuses_are_refused(
    aiohttp_client: AiohttpClient, change: dict[str, Any], param: str
) -> None:
    client = await fake(aiohttp_client)
    resp = await post(client, "/v1/chat/completions", {**CHAT, **change})
    assert resp.status == 400 and envelope(await resp.json())["param"] == param


async def test_a_strict_response_format_needs_a_strict_schema_as_openai_says(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await fake(aiohttp_client)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    spec = {"name": "w", "strict": True, "schema": schema}
    resp = await post(
        client,
        "/v1/chat/completions",
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": spec}},
    )
    error = envelope(await resp.json())
    assert resp.status == 400 and error["param"] == "response_format.json_schema.schema"
    assert error["message"] == (
        "Invalid schema for response_format 'w': In context=(), 'additionalProperties' is required to be "
        "supplied and to be false."
    )
    spec["schema"] = {**schema, "additionalProperties": False}
    resp = await post(
        client,
        "/v1/chat/completions",
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": spec}},
    )
    assert resp.status == 200


def test_parallel_tool_calls_without_tools_is_refused_as_openai_does() -> None:
    """OpenAI: "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed
    when 'tools' are specified."; the fake took it."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "parallel_tool_calls": False}
    with pytest.raises(fake_wire.WireError) as caught:
        fake_wire.parse_chat(body)
    assert caught.value.param == "parallel_tool_calls" and "only allowed when 'tools'" in str(caught.value)
    fake_wire.parse_chat({**body, "tools": _functions("a")})


async def test_stop_reason_names_the_matched_stop_sequence_as_vllm_does(
    aiohttp_client: AiohttpClient,
) -> None:
    """``--stop-reason`` plays vLLM (vllm-project/vllm#2976): the choice's ``stop_reason`` is the
    stop string matched, null otherwise; without it the field is absent, as OpenAI sends it."""
    ask = {
        "model": "m",
        "messages": [{"role": "user", "content": "alpha beta gamma"}],
        "stop": ["gamma", "beta"],
    }
    plain = await fake(aiohttp_client)
    assert "stop_reason" not in (await (await post(plain, "/v1/chat/completions", ask)).json())["choices"][0]
    client = await fake(aiohttp_client, stop_reason=True)
    choice = (await (await post(client, "/v1/chat/completions", ask)).json())["choices"][0]
    assert choice["message"]["content"].rstrip() == "Echo: alpha" and choice["stop_reason"] == "beta"
    unmatched = (await (await post(client, "/v1/chat/completions", {**ask, "stop": ["zeta"]})).json())[
        "choices"
    ][0]
    assert unmatched["finish_reason"] == "stop" and unmatched["stop_reason"] is None
    streamed = await events(await post(client, "/v1/chat/completions", {**ask, "stream": True}))
    last = orjson.loads(streamed[-2])["choices"][0]
    assert last["finish_reason"] == "stop" and last["stop_reason"] == "beta"
    assert all("stop_reason" not in orjson.loads(e)["choices"][0] for e in streamed[:-2])
