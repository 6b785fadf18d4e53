"""The official openai SDK, sync and async, against a running gateway in front of fake providers."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest

from tests.e2e.conftest import PROVIDER_KEY, Stack


def client(stack: Stack, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.api, api_key="client-key", max_retries=0, timeout=10, **kw)  # type: ignore[arg-type]


def aclient(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.api, api_key="client-key", max_retries=0, timeout=10)


def fake_stats(stack: Stack, name: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(stack.fakes[name].url + "/_fake/stats", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_chat_sync_sdk(stack: Stack) -> None:
    raw = client(stack).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello gateway"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: hello gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-gateway-provider"] == "healthy"
    assert raw.headers["x-gateway-model"] == "upstream-chat"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert len(raw.headers["x-request-id"]) >= 16


async def test_chat_async_sdk(stack: Stack) -> None:
    completion = await aclient(stack).chat.completions.create(
        model="chat",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "async hi"}],
    )
    assert completion.choices[0].message.content == "Echo: async hi"


def test_streamed_chat_with_usage(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "stream these words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "Echo: stream these words please"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (
        chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )


async def test_stream_chunks_arrive_as_upstream_sends_them(stack: Stack) -> None:
    # The slow-stream provider sends 10 words at 10 tokens/s: about 1 s from first to last chunk.
    # If the gateway buffered, every chunk would arrive at the same moment at the end.
    arrivals: list[float] = []
    started = time.perf_counter()
    stream = await aclient(stack).chat.completions.create(
        model="slow-stream", messages=[{"role": "user", "content": "go"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] >= 0.6, arrivals
    # Chunks are spread over the stream, not bunched at its end.
    assert arrivals[len(arrivals) // 2] - arrivals[0] >= 0.25, arrivals


def test_completions_and_stream(stack: Stack) -> None:
    c = client(stack)
    done = c.completions.create(model="chat", prompt="complete me")
    assert done.choices[0].text
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="chat", prompt="x y", stream=True)
        if ch.choices
    )
    assert streamed


def test_embeddings_float_and_base64(stack: Stack) -> None:
    c = client(stack)
    result = c.embeddings.create(model="embed", input=["alpha", "beta"])  # SDK asks for base64
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0 and result.data[0].embedding != result.data[1].embedding
    floats = c.embeddings.create(model="embed", input="alpha", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)
    last = fake_stats(stack, "healthy")["last_request"]
    assert last["body"]["model"] == "upstream-embed"


def test_models_list_and_retrieve(stack: Stack) -> None:
    c = client(stack)
    names = [m.id for m in c.models.list()]
    assert names[:3] == ["chat", "keyed-chat", "failover-chat"] and "embed" in names
    assert c.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("nope")
    assert "nope" in str(err.value)


def test_unknown_fields_pass_through_and_model_is_rewritten(stack: Stack) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    client(stack).chat.completions.create(
        model="keyed-chat",
        messages=[{"role": "user", "content": "with extras, in JSON"}],
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        seed=42,
        logprobs=True,
        top_logprobs=2,
        extra_body={"vendor_specific": {"nested": [1, 2]}},
    )
    last = fake_stats(stack, "keyed")["last_request"]
    body = last["body"]
    assert body["model"] == "upstream-keyed"
    assert body["tools"] == tools and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"} and body["seed"] == 42
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["vendor_specific"] == {"nested": [1, 2]}
    headers = {k.lower(): v for k, v in last["headers"].items()}
    # The provider sees the gateway's key for it, never the client's.
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"


def test_request_id_echoed_or_made(stack: Stack) -> None:
    c = client(stack)
    raw = c.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "id"}],
        extra_headers={"x-request-id": "my-trace-123"},
    )
    assert raw.headers["x-request-id"] == "my-trace-123"
    raw2 = c.models.with_raw_response.list()
    assert raw2.headers["x-request-id"] and raw2.headers["x-request-id"] != "my-trace-123"


def test_failover_to_next_deployment(stack: Stack) -> None:
    raw = client(stack).chat.completions.with_raw_response.create(
        model="failover-chat", messages=[{"role": "user", "content": "survive"}]
    )
    assert raw.parse().choices[0].message.content == "Echo: survive"
    assert raw.headers["x-gateway-provider"] == "healthy"
    assert raw.headers["x-gateway-attempts"] == "3"  # dead (refused), failing (500), healthy


def test_stream_cut_after_first_byte_ends_with_error_event_and_done(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model="cut-stream", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert received, "the first chunks reached the client before the provider cut the stream"
    assert "cutstream" in err.value.message


def test_stream_cut_raw_events_end_with_done(stack: Stack) -> None:
    req = urllib.request.Request(
        stack.api + "/chat/completions",
        data=json.dumps(
            {"model": "cut-stream", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [e for e in resp.read().decode().split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] in ("upstream_error",) and error["message"]
