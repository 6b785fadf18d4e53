"""A provider's 404 for the model or deployment the policy names is the gateway's configuration,
not the client's request: relayed, it told a client asking for a model group the gateway serves
that its model does not exist (the SDKs raise ``NotFoundError``), and the group's other
deployments were never tried. It is a 502 ``provider_model_not_found`` that fails over
(errors.py, ``UpstreamModelMissing``); a 404 naming a parameter the client sent is still its own.
The bodies are the providers' own (OpenAI, Azure OpenAI, Anthropic, Gemini, a wrong base URL)."""

from __future__ import annotations

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

POLICY = """
version: 1
auth: {mode: open}
providers:
  oai: {kind: openai, base_url: "http://oai.test/v1"}
  az: {kind: azure, base_url: "https://az.test", api_version: 2024-10-21}
  ant: {kind: anthropic, base_url: "http://ant.test/v1"}
  gem: {kind: gemini, base_url: "http://gem.test"}
  good: {kind: openai, base_url: "http://good.test/v1"}
models:
  oai: {deployments: [{provider: oai, model: gpt-9}]}
  az: {deployments: [{provider: az, model: gone-deployment}]}
  ant: {deployments: [{provider: ant, model: claude-9}]}
  gem: {deployments: [{provider: gem, model: gemini-9}]}
  pair: {strategy: ordered, deployments: [{provider: oai, model: gpt-9}, {provider: good, model: g}]}
memory: {enabled: false}
"""

MISSING: dict[str, dict[str, Any]] = {
    "oai": {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    },
    "az": {
        "error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist. If you created the deployment "
            "within the last 5 minutes, please wait a moment and try again.",
        }
    },
    "ant": {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-9"}},
    "gem": {
        "error": {
            "code": 404,
            "message": "models/gemini-9 is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their supported methods.",
            "status": "NOT_FOUND",
        }
    },
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


class Missing:
    """A provider answering 404 with ``body`` (its own words) to every call."""

    def __init__(self, body: object) -> None:
        self.body = body
        self.calls = 0

    def __call__(self, request: UpstreamRequest) -> MockResponse:
        self.calls += 1
        if isinstance(self.body, bytes):
            return MockResponse(status=404, body=self.body, headers={"content-type": "text/html"})
        return MockResponse.json(self.body, status=404)


@pytest.fixture
def missing() -> dict[str, Missing]:
    return {name: Missing(body) for name, body in MISSING.items()}


@pytest.fixture
async def client(aiohttp_client: ClientFactory, missing: dict[str, Missing]) -> TestClient:
    transports = {name: MockTransport(m) for name, m in missing.items()}
    transports["good"] = MockTransport(lambda r: MockResponse.json(completion("g")))
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    return await aiohttp_client(app)


ASK = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("group", ["oai", "az", "ant", "gem"])
async def test_a_404_for_the_configured_model_is_the_gateways_502_not_the_clients_404(
    client: TestClient, missing: dict[str, Missing], group: str
) -> None:
    api = openai.AsyncOpenAI(api_key="k", base_url=str(client.make_url("/v1")), max_retries=2)
    with pytest.raises(openai.InternalServerError) as raised:
        await api.chat.completions.create(model=group, messages=ASK)  # type: ignore[arg-type]
    error = raised.value
    assert error.status_code == 502 and error.response.headers["x-should-retry"] == "false"
    body = error.body
    assert isinstance(body, dict) and (body["type"], body["code"]) == (
        "upstream_error",
        "provider_model_not_found",
    )
    assert "gateway's configuration" in body["message"] and "HTTP 404" in body["message"]
    assert missing[group].calls == 1  # neither the gateway nor the SDK asked again


async def test_another_deployment_serves_and_the_missing_one_is_set_aside(
    client: TestClient, missing: dict[str, Missing]
) -> None:
    for _ in range(8):
        response = await client.post("/v1/chat/completions", json={"model": "pair", "messages": ASK})
        assert response.status == 200, await response.text()
        assert response.headers["x-gateway-provider"] == "good"
        assert response.headers["x-gateway-fallback"] == "true"
    assert missing["oai"].calls < 8  # counted against the deployment: its breaker opened


async def test_the_messages_door_answers_in_anthropics_envelope(client: TestClient) -> None:
    api = anthropic.AsyncAnthropic(api_key="k", base_url=str(client.make_url("")), max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await api.messages.create(model="ant", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502 and not isinstance(raised.value, anthropic.NotFoundError)
    assert orjson.loads(raised.value.response.content)["error"]["type"] == "api_error"


async def test_a_wrong_base_url_s_404_page_fails_over_too(
    client: TestClient, missing: dict[str, Missing]
) -> None:
    missing["oai"].body = b"<html><body><h1>404 Not Found</h1></body></html>"
    response = await client.post("/v1/chat/completions", json={"model": "oai", "messages": ASK})
    assert response.status == 502
    assert orjson.loads(await response.read())["error"]["code"] == "provider_model_not_found"


async def test_a_404_naming_a_parameter_the_client_sent_is_still_relayed(
    client: TestClient, missing: dict[str, Missing]
) -> None:
    missing["oai"].body = {
        "error": {
            "message": "Vector store with id 'vs_nope' not found.",
            "type": "invalid_request_error",
            "param": "tools[0].vector_store_ids",
            "code": None,
        }
    }
    response = await client.post("/v1/chat/completions", json={"model": "oai", "messages": ASK})
    assert response.status == 404
    error = orjson.loads(await response.read())["error"]
    assert error["param"] == "tools[0].vector_store_ids" and "vs_nope" in error["message"]
