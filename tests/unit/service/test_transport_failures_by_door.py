"""A provider that resets the connection, closes it inside the body, or is not listening at all:
each of the three doors (chat, ``/v1/responses``, ``/v1/messages``) answers in its own envelope,
in the gateway's words naming the provider deployment and the kind of failure (OpenAI's ``code``
carries it), with nothing of the HTTP library's text; that text is in the server's log. Real
sockets on loopback, the official SDKs as clients."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import anthropic
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from tests.unit.providers.loopback import RawUpstream, Server, upstream

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
LIBRARY_WORDS = ("Errno", "ClientOSError", "ServerDisconnected", "ClientPayloadError", "127.0.0.1", "aiohttp")


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def gateway_url(aiohttp_client: ClientFactory) -> AsyncIterator[str]:
    """A gateway whose groups each have one deployment that fails its own way (one attempt)."""
    reset, mid_body = RawUpstream("reset"), RawUpstream("mid-body")
    reset_url, mid_body_url = await reset.start(), await mid_body.start()
    nobody = f"http://127.0.0.1:{unused_port()}/v1"
    policy = parse_policy(
        f"""
version: 1
auth: {{mode: open}}
providers:
  resets: {{kind: openai, base_url: "{reset_url}"}}
  cuts: {{kind: openai, base_url: "{mid_body_url}"}}
  nobody: {{kind: openai, base_url: "{nobody}"}}
  claude-resets: {{kind: anthropic, base_url: "{reset_url}"}}
models:
  reset: {{deployments: [{{provider: resets, model: m}}], retry: {{max_attempts: 1}}}}
  cut: {{deployments: [{{provider: cuts, model: m}}], retry: {{max_attempts: 1}}}}
  nobody: {{deployments: [{{provider: nobody, model: m}}], retry: {{max_attempts: 1}}}}
  claude-reset: {{deployments: [{{provider: claude-resets, model: m}}], retry: {{max_attempts: 1}}}}
memory: {{enabled: false}}
"""
    )
    client = await aiohttp_client(build_app(Settings.from_env({}), policy, {}))
    try:
        yield str(client.make_url("/v1"))
    finally:
        await reset.close()
        await mid_body.close()


CHAT = [
    ("reset", "resets", "connection_reset", "resets: the provider reset the connection"),
    (
        "cut",
        "cuts",
        "connection_closed",
        "cuts: the provider closed the connection before the answer was complete",
    ),
    ("nobody", "nobody", "connection_refused", "nobody: the provider refused the connection"),
]


@pytest.mark.parametrize(("model", "provider", "code", "words"), CHAT)
async def test_the_chat_door_says_the_gateways_words_and_code(
    gateway_url: str, caplog: pytest.LogCaptureFixture, model: str, provider: str, code: str, words: str
) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway_url, api_key="sk-test", max_retries=0)
    with (
        caplog.at_level(logging.WARNING, logger="gateway.http"),
        pytest.raises(openai.APIStatusError) as caught,
    ):
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == code and body["type"] == "upstream_error"
    assert body["message"] == words
    assert not any(word in body["message"] for word in LIBRARY_WORDS), body
    logged = [r for r in caplog.records if r.getMessage() == "upstream failed"]
    assert [r.fields["provider"] for r in logged] == [provider]  # type: ignore[attr-defined]
    assert logged[0].fields["code"] == code  # type: ignore[attr-defined]
    assert logged[0].fields["detail"]  # type: ignore[attr-defined]  # the library's text, for the log


async def test_the_responses_door_answers_in_openais_envelope(gateway_url: str) -> None:
    sdk = openai.AsyncOpenAI(base_url=gateway_url, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.responses.create(model="reset", input="hi")
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "connection_reset"
    assert body["message"] == "resets: the provider reset the connection"


@pytest.mark.parametrize("model", ["claude-reset", "reset"])
async def test_the_messages_door_answers_in_anthropics_envelope(gateway_url: str, model: str) -> None:
    base = gateway_url.removesuffix("/v1")
    sdk = anthropic.AsyncAnthropic(base_url=base, api_key="sk-test", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await sdk.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert body["error"]["message"].endswith("the provider reset the connection"), body
    assert not any(word in body["error"]["message"] for word in LIBRARY_WORDS), body


async def test_a_failed_attempt_of_a_served_request_is_logged_once(
    aiohttp_client: ClientFactory, aiohttp_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The first deployment resets the connection, the second answers: the client gets 200 and
    the server's log has one line for the failed attempt, naming the request, the deployment,
    the kind of failure and the library's words (before, a failover that served left nothing)."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    reset = RawUpstream("reset")
    reset_url, ok_url = await reset.start(), await upstream(aiohttp_server, answer)
    policy = parse_policy(
        f"""
version: 1
auth: {{mode: open}}
providers:
  resets: {{kind: openai, base_url: "{reset_url}"}}
  answers: {{kind: openai, base_url: "{ok_url}"}}
models:
  m:
    strategy: ordered
    deployments: [{{provider: resets, model: m}}, {{provider: answers, model: m}}]
    retry: {{max_attempts: 2}}
memory: {{enabled: false}}
"""
    )
    client = await aiohttp_client(build_app(Settings.from_env({}), policy, {}))
    try:
        with caplog.at_level(logging.INFO):
            response = await client.post(
                "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert response.status == 200, await response.text()
            assert (await response.json())["choices"][0]["message"]["content"] == "ok"
    finally:
        await reset.close()
    assert reset.requests == 1
    logged = [r for r in caplog.records if r.getMessage() == "upstream failed"]
    assert len(logged) == 1, logged
    fields = logged[0].fields  # type: ignore[attr-defined]
    assert logged[0].levelno == logging.WARNING
    assert fields["request_id"] == response.headers["x-request-id"]
    assert (fields["provider"], fields["code"], fields["attempt"]) == ("resets", "connection_reset", 1)
    assert fields["detail"]  # the library's text, for the log only
