"""Responses kept for ``previous_response_id`` in a real Redis, with a real provider on loopback
and the openai SDK as the client: a conversation larger than Redis keeps in one entry is not
kept, and naming it next turn says so (it was a bare "not found" for a response answered with
``store: true``)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.cache.redis_store import RedisStore
from gateway.policy.loader import parse_policy
from gateway.service.responses import cache_budgets
from gateway.settings import Settings

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def provider() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "seen"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_a_conversation_too_large_to_keep_is_named_as_such_next_turn(
    aiohttp_client: ClientFactory,
    aiohttp_server: ServerFactory,
    redis_url: str,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await aiohttp_server(provider())
    policy = parse_policy(
        f"""
version: 1
auth: {{mode: open}}
providers: {{a: {{kind: openai, base_url: "{upstream.make_url("/v1")}"}}}}
models: {{m: {{deployments: [{{provider: a, model: ma}}]}}}}
memory: {{enabled: false}}
"""
    )
    store = RedisStore(redis_url, cache_budgets(policy), prefix=redis_prefix, op_timeout_s=2.0)
    client = await aiohttp_client(build_app(Settings(access_log=False), policy, {}, cache_store=store))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)

    small = await sdk.responses.create(model="m", input="hello")
    follow = await sdk.responses.create(model="m", input="again", previous_response_id=small.id)
    assert follow.output_text == "seen"

    # Two screenshots as data: URLs: past the 4 MiB Redis keeps in one entry.
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * (2 * 2**20)).decode()
    parts = [{"type": "input_text", "text": "compare"}] + [{"type": "input_image", "image_url": image}] * 2
    with caplog.at_level(logging.WARNING, logger="gateway.responses"):
        big = await sdk.responses.create(model="m", input=[{"role": "user", "content": parts}])  # type: ignore[list-item]
    assert big.output_text == "seen" and big.store is True
    assert any("response not kept" in r.getMessage() for r in caplog.records)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model="m", input="and?", previous_response_id=big.id)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "previous_response_id"
    assert error["code"] == "previous_response_not_found"
    assert f"'{big.id}' was not kept" in error["message"]
    assert "larger than this gateway keeps for one response (4,194,304 bytes)" in error["message"]
    # The small conversation is still there.
    again = await sdk.responses.create(model="m", input="still?", previous_response_id=follow.id)
    assert again.output_text == "seen"
