"""The chat door served by an Anthropic-kind deployment whose model thinks (an Anthropic-compatible
server whose model thinks by default, as DeepSeek's and MiniMax's Anthropic endpoints do): the
thinking reaches the client as ``reasoning_content`` (LiteLLM's and DeepSeek's field), streamed
as it comes, so the client has its first byte while the model thinks and a cut during thinking
is the client's error, not a retry billed again. Real HTTP to a provider on loopback, the
official ``openai`` SDK as the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
MESSAGES: Any = [{"role": "user", "content": "hello"}]


def event(kind: str, data: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [],
    "stop_reason": None,
    "usage": {"input_tokens": 3, "output_tokens": 0},
}
THINKING = event("message_start", {"message": MESSAGE}) + event(
    "content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}
)
THOUGHT = event(
    "content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}}
)
ANSWER = (
    event("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig"}})
    + event("content_block_stop", {"index": 0})
    + event("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}})
    + event("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Hello"}})
    + event("content_block_stop", {"index": 1})
    + event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}})
    + event("message_stop", {})
)


class Upstream:
    """An Anthropic-compatible server on loopback whose model thinks before it answers: it holds
    the answer after the first thought until ``proceed`` is set (``cut``: closes the connection
    there instead); ``calls`` counts its requests."""

    def __init__(self) -> None:
        self.proceed = asyncio.Event()
        self.calls = 0

    def app(self) -> web.Application:
        async def messages(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            body = await request.json()
            if not body.get("stream"):
                content = [
                    {"type": "thinking", "thinking": "Let me think", "signature": "sig"},
                    {"type": "text", "text": "Hello"},
                ]
                done = {**MESSAGE, "content": content, "stop_reason": "end_turn"}
                return web.json_response(done)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(THINKING + THOUGHT)
            if body["model"] == "cut":
                assert request.transport is not None
                request.transport.close()
                return response
            await asyncio.wait_for(self.proceed.wait(), 5)
            await response.write(ANSWER)
            return response

        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        return app


async def gateway(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstream: Upstream
) -> openai.AsyncOpenAI:
    server = await aiohttp_server(upstream.app())
    policy = parse_policy(
        f"""
version: 1
auth: {{mode: open}}
providers:
  thinker: {{kind: anthropic, base_url: "{server.make_url("/v1")}", api_key_env: ANTHROPIC_KEY}}
models:
  thinks: {{deployments: [{{provider: thinker, model: thinks}}]}}
  cut: {{deployments: [{{provider: thinker, model: cut}}], retry: {{max_attempts: 3}}}}
memory: {{enabled: false}}
"""
    )
    client = await aiohttp_client(build_app(Settings.from_env({}), policy, {"ANTHROPIC_KEY": "sk-ant-test"}))
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)


async def test_the_thinking_is_streamed_before_the_text_begins(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    upstream = Upstream()
    sdk = await gateway(aiohttp_server, aiohttp_client, upstream)
    stream = await sdk.chat.completions.create(model="thinks", messages=MESSAGES, stream=True)
    parts = aiter(stream)
    # The provider holds its text until the client has the thinking: before, nothing came (not
    # even the headers: ``create`` waited) until the text began.
    first = await asyncio.wait_for(anext(parts), 2)
    thought = [first, await asyncio.wait_for(anext(parts), 2)]
    upstream.proceed.set()
    rest = [part async for part in parts]
    reasoning = "".join(
        (p.choices[0].delta.model_extra or {}).get("reasoning_content", "") for p in thought if p.choices
    )
    assert first.choices[0].delta.role == "assistant" and reasoning == "Let me think"
    text = "".join(p.choices[0].delta.content or "" for p in rest if p.choices)
    assert text == "Hello" and rest[-1].choices[0].finish_reason == "stop"


async def test_a_stream_cut_during_thinking_is_an_error_event_not_a_billed_retry(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    upstream = Upstream()
    sdk = await gateway(aiohttp_server, aiohttp_client, upstream)
    reasoning = ""
    with pytest.raises(openai.APIError) as raised:
        stream = await sdk.chat.completions.create(model="cut", messages=MESSAGES, stream=True)
        async for part in stream:
            if part.choices:
                reasoning += (part.choices[0].delta.model_extra or {}).get("reasoning_content", "")
    assert not isinstance(raised.value, openai.APIStatusError)  # an error event after a 200
    assert reasoning == "Let me think"
    assert upstream.calls == 1  # the thinking was the client's: not asked for (and billed) again


async def test_a_whole_answer_carries_its_thinking_as_reasoning_content(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    sdk = await gateway(aiohttp_server, aiohttp_client, Upstream())
    answer = await sdk.chat.completions.create(model="thinks", messages=MESSAGES)
    message = answer.choices[0].message
    assert message.content == "Hello"
    assert (message.model_extra or {}).get("reasoning_content") == "Let me think"
