"""Request limits (issue 10, item 5): ``n`` and ``max_tokens`` / ``max_completion_tokens`` are
bounded in the validation stage, so a request beyond them never reaches a provider.

The whole request path runs in process: aiohttp's TestClient in front, MockTransport behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import PolicyError, parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


def answer(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if body.get("stream"):
        event = {"id": "c", "object": "chat.completion.chunk", "model": "ma",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
        return MockResponse.stream([b"data: " + orjson.dumps(event) + b"\n\n", b"data: [DONE]\n\n"])
    return MockResponse.json(
        {
            "id": "x",
            "object": "chat.completion" if "messages" in body else "text_completion",
            "model": "ma",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "text": "hi"}],
        }
    )


async def gateway(aiohttp_client: ClientFactory, limits: str = "") -> tuple[TestClient, MockTransport]:
    transport = MockTransport(answer)
    policy = parse_policy(POLICY + limits)
    app = build_app(Settings(access_log=False), policy, {}, transports={"a": transport})
    return await aiohttp_client(app), transport


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "n": 1_000_000}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": 129}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": -3}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": 2.5}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": "5"}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": True}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": 1_000_000, "stream": True}, "n"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/completions", {**COMPLETION, "n": 500}, "n"),
        ("/v1/completions", {**COMPLETION, "max_tokens": -1}, "max_tokens"),
    ],
)
async def test_out_of_bounds_is_400_naming_the_field_and_no_provider_call(
    aiohttp_client: ClientFactory, path: str, body: dict[str, Any], param: str
) -> None:
    client, transport = await gateway(aiohttp_client)
    resp = await client.post(path, json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["code"] == "invalid_value" and f"'{param}'" in error["message"]
    assert transport.requests == []  # the provider was never called


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "n": 128, "max_tokens": 1_000_000}),
        ("/v1/chat/completions", {**CHAT, "n": 1, "max_completion_tokens": 1}),
        ("/v1/chat/completions", {**CHAT, "n": None, "max_tokens": None}),
        ("/v1/completions", {**COMPLETION, "n": 128, "max_tokens": 16}),
        # OpenAI's legacy completions take 0 (with echo: a prompt's log probabilities, no tokens)
        ("/v1/completions", {**COMPLETION, "max_tokens": 0, "echo": True, "logprobs": 1}),
    ],
)
async def test_within_the_default_bounds_reaches_the_provider(
    aiohttp_client: ClientFactory, path: str, body: dict[str, Any]
) -> None:
    client, transport = await gateway(aiohttp_client)
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    [sent] = transport.requests
    forwarded = orjson.loads(sent.body)
    assert {k: forwarded.get(k) for k in ("n", "max_tokens")} == {k: body.get(k) for k in ("n", "max_tokens")}


async def test_the_policy_sets_the_upper_bounds(aiohttp_client: ClientFactory) -> None:
    client, transport = await gateway(aiohttp_client, "limits: {max_n: 4, max_tokens: 2048}\n")
    for field, value in (("n", 5), ("max_tokens", 2049), ("max_completion_tokens", 4096)):
        resp = await client.post("/v1/chat/completions", json={**CHAT, field: value})
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["param"] == field and "limits.max_" in error["message"]
    assert transport.requests == []
    resp = await client.post("/v1/chat/completions", json={**CHAT, "n": 4, "max_completion_tokens": 2048})
    assert resp.status == 200
    assert len(transport.requests) == 1


def test_the_policy_refuses_bounds_below_one() -> None:
    with pytest.raises(PolicyError, match=r"limits\.max_n: Input should be greater than or equal to 1"):
        parse_policy(POLICY + "limits: {max_n: 0}\n")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (
            b'"max_tokens": 1000000000000000000000000000000',
            "not 1e+30 (beyond the largest integer JSON here carries)",
        ),
        (b'"max_tokens": 2.5', "not 2.5"),
        (b'"max_tokens": "5"', "not a string"),
        (b'"max_tokens": true', "not a boolean"),
        (b'"max_tokens": -4', "not -4"),
    ],
)
async def test_the_refusal_says_what_was_sent(aiohttp_client: ClientFactory, raw: bytes, shown: str) -> None:
    """An integer past 64 bits reads as a float: "it must be an integer of at least 1" alone
    puzzled a caller who had sent an integer."""
    client, transport = await gateway(aiohttp_client)
    body = orjson.dumps(CHAT)[:-1] + b"," + raw + b"}"
    resp = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "max_tokens" and error["message"].endswith(shown + "."), error["message"]
    assert transport.requests == []
