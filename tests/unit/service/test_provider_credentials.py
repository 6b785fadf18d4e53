"""A provider refusing the gateway's own key (its 401 or 403, Gemini's 400 API_KEY_INVALID) is not
the client's authentication error: the official SDKs would raise ``AuthenticationError`` at a
caller whose key is fine, and the provider's message quotes part of the gateway's key. It is a
502 in the gateway's words that fails over to another deployment (errors.py, note 3)."""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from tests.unit.service.test_request_path import ClientFactory

KEY = "sk-prov-abcdefghijklmnopqrstuvwxyzT123"
MASKED = "sk-prov-************T123"  # how OpenAI quotes a key it refuses

POLICY = """
version: 1
auth: {mode: open}
providers:
  bad: {kind: openai, base_url: "http://bad.test/v1", api_key_env: BAD_KEY}
  good: {kind: openai, base_url: "http://good.test/v1"}
  gem: {kind: gemini, base_url: "http://gem.test", api_key_env: BAD_KEY}
models:
  alone: {deployments: [{provider: bad, model: m}]}
  pair: {strategy: ordered, deployments: [{provider: bad, model: m}, {provider: good, model: g}]}
  gemini: {deployments: [{provider: gem, model: gemini-2.5-flash}]}
memory: {enabled: false}
"""

OPENAI_401 = {
    "error": {
        "message": f"Incorrect API key provided: {MASKED}. You can find your API key at ...",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
OPENAI_403 = {
    "error": {"message": "Project does not have access to model m", "type": "invalid_request_error"}
}
GEMINI_400 = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
    }
}


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class Refusing:
    def __init__(self) -> None:
        self.status, self.body = 401, OPENAI_401
        self.calls = 0

    def __call__(self, request: UpstreamRequest) -> MockResponse:
        self.calls += 1
        return MockResponse.json(self.body, status=self.status)


@pytest.fixture
def refusing() -> Refusing:
    return Refusing()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, refusing: Refusing) -> TestClient:
    transports = {
        "bad": MockTransport(refusing),
        "good": MockTransport(lambda r: MockResponse.json(completion("g"))),
        "gem": MockTransport(lambda r: MockResponse.json(GEMINI_400, status=400)),
    }
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {"BAD_KEY": KEY}, transports=transports)
    return await aiohttp_client(app)


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize("status", [401, 403])
async def test_the_clients_sdk_sees_a_gateway_error_not_its_own_auth_error(
    client: TestClient, refusing: Refusing, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    refusing.status, refusing.body = status, OPENAI_401 if status == 401 else OPENAI_403
    api = openai.AsyncOpenAI(api_key="client-key", base_url=str(client.make_url("/v1")), max_retries=2)
    with (
        caplog.at_level(logging.WARNING, logger="gateway.providers"),
        pytest.raises(openai.InternalServerError) as raised,
    ):
        await api.chat.completions.create(model="alone", messages=[{"role": "user", "content": "hi"}])
    error = raised.value
    assert error.status_code == 502
    assert error.response.headers["x-should-retry"] == "false"
    assert refusing.calls == 1  # neither the gateway nor the SDK retried: a retry cannot mend a key
    body = error.body
    assert isinstance(body, dict)
    assert (body["type"], body["code"]) == ("upstream_error", "provider_auth_failed")
    assert f"HTTP {status}" in body["message"] and "gateway's credentials" in body["message"]
    assert "sk-" not in error.response.text and "T123" not in error.response.text
    assert "provider refused the gateway's credentials" in caplog.text
    assert "T123" not in caplog.text  # the provider's message, quoting part of the key, is not logged


async def test_another_deployment_serves_and_the_bad_one_is_set_aside(
    client: TestClient, refusing: Refusing
) -> None:
    for _ in range(8):
        response = await client.post("/v1/chat/completions", json=chat("pair"))
        assert response.status == 200
        assert response.headers["x-gateway-provider"] == "good"
    assert refusing.calls < 8  # counted against the provider: its breaker opened


async def test_geminis_bad_key_answer_is_the_same_502(client: TestClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("gemini"))
    assert response.status == 502
    error = orjson.loads(await response.read())["error"]
    assert error["code"] == "provider_auth_failed" and "HTTP 400, invalid_api_key" in error["message"]


async def test_the_messages_door_answers_in_anthropics_envelope(client: TestClient) -> None:
    api = anthropic.AsyncAnthropic(api_key="client-key", base_url=str(client.make_url("")), max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await api.messages.create(model="alone", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502
    assert not isinstance(raised.value, anthropic.AuthenticationError)
    assert "T123" not in raised.value.response.text


async def test_a_refused_account_is_asked_once_and_another_deployment_serves(
    client: TestClient, refusing: Refusing
) -> None:
    refusing.status, refusing.body = 402, {"error": {"message": "Insufficient credits", "code": 402}}
    api = openai.AsyncOpenAI(api_key="client-key", base_url=str(client.make_url("/v1")), max_retries=2)
    with pytest.raises(openai.InternalServerError) as raised:
        await api.chat.completions.create(model="alone", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502 and raised.value.response.headers["x-should-retry"] == "false"
    body = raised.value.body
    assert isinstance(body, dict) and body["code"] == "provider_account_refused"
    assert "Insufficient credits" not in raised.value.response.text
    assert refusing.calls == 1  # more credit does not come from asking again
    response = await client.post("/v1/chat/completions", json=chat("pair"))
    assert response.status == 200 and response.headers["x-gateway-provider"] == "good"


@pytest.mark.parametrize(
    ("status", "google_status", "message"),
    [
        (
            403,
            "PERMISSION_DENIED",
            "You do not have permission to access the File abc123 or it may not exist.",
        ),
        (404, "NOT_FOUND", "File abc123 is not found."),
    ],
)
async def test_geminis_answer_about_a_file_the_client_sent_is_the_clients(
    aiohttp_client: ClientFactory, status: int, google_status: str, message: str
) -> None:
    """An expired (48 h) or another project's Files API URI: Gemini's 403 read as the gateway's
    key refused (a 502 "the gateway's configuration", counted against the deployment), its 404
    as the configured model missing (an outside probe). Relayed as the client's, naming the
    messages that carry the file."""
    body = {"error": {"code": status, "message": message, "status": google_status}}
    transports = {"gem": MockTransport(lambda r: MockResponse.json(body, status=status))}
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {"BAD_KEY": KEY}, transports=transports)
    client = await aiohttp_client(app)
    response = await client.post("/v1/chat/completions", json=chat("gemini"))
    assert response.status == status
    error = orjson.loads(await response.read())["error"]
    assert error["param"] == "messages" and error["code"] not in (
        "provider_auth_failed",
        "provider_model_not_found",
    )
    assert "File abc123" in error["message"]
