"""The Azure OpenAI adapter: OpenAI's wire format at Azure's paths (fixtures/azure/)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import UnsupportedByProvider
from gateway.policy.model import AzureProvider
from gateway.providers.azure import DEFAULT_API_VERSION, AzureOpenAIAdapter
from gateway.providers.base import Endpoint
from gateway.providers.registry import adapter_for

FIXTURE: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "azure" / "chat.json").read_text())
BODY = {"model": "gpt-4o", "input": "hi"}


def adapter(
    base_url: str = "https://res.openai.azure.com", api_version: str | None = None
) -> AzureOpenAIAdapter:
    return AzureOpenAIAdapter(AzureProvider(kind="azure", base_url=base_url, api_version=api_version))


def test_chat_request_matches_the_reference() -> None:
    request = adapter_for(AzureProvider(kind="azure", base_url="https://res.openai.azure.com")).build_request(
        Endpoint.CHAT, FIXTURE["openai"], "my-gpt4o"
    )
    assert request.path == FIXTURE["path"]
    assert orjson.loads(request.body) == FIXTURE["azure"]
    assert request.stream is False
    assert DEFAULT_API_VERSION == "2024-10-21"


@pytest.mark.parametrize(
    ("endpoint", "tail"),
    [(Endpoint.COMPLETIONS, "completions"), (Endpoint.EMBEDDINGS, "embeddings")],
)
def test_every_endpoint_has_its_deployment_path(endpoint: Endpoint, tail: str) -> None:
    request = adapter(api_version="2025-01-01-preview").build_request(endpoint, BODY, "dep one")
    assert request.path == f"/openai/deployments/dep%20one/{tail}?api-version=2025-01-01-preview"
    assert orjson.loads(request.body) == {"input": "hi"}


def test_stream_flag_base_url_with_openai_and_key_header() -> None:
    az = adapter(base_url="https://res.openai.azure.com/openai")
    request = az.build_request(Endpoint.CHAT, {**FIXTURE["openai"], "stream": True}, "d")
    assert request.path == "/deployments/d/chat/completions?api-version=2024-10-21"
    assert request.stream is True
    assert az.auth_headers("secret") == {"api-key": "secret"}
    assert az.auth_headers(None) == {}


def test_v1_api_keeps_the_deployment_as_model() -> None:
    request = adapter(api_version="v1").build_request(Endpoint.CHAT, FIXTURE["openai"], "my-gpt4o")
    assert request.path == "/openai/v1/chat/completions"
    assert orjson.loads(request.body) == {**FIXTURE["azure"], "model": "my-gpt4o"}


def test_responses_and_streams_pass_through() -> None:
    az = adapter()
    assert az.translate_response(Endpoint.CHAT, {"choices": []}, FIXTURE["openai"], "d") is None
    translator = az.stream_translator(Endpoint.CHAT, FIXTURE["openai"], "d")
    stream = b'data: {"choices": []}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert translator.feed(stream) == stream and translator.completed


@pytest.mark.parametrize("case", FIXTURE["errors"], ids=lambda c: str(c["code"]))
def test_errors(case: dict[str, Any]) -> None:
    error = adapter().translate_error(case["status"], orjson.dumps(case["body"]), 6.0, "az")
    assert error.upstream_status == case["status"]
    assert error.upstream_type == case["type"]
    assert error.code == case["code"]
    assert error.retryable is case["retryable"]
    assert error.message.startswith("az: ") and error.retry_after_s == 6.0


def test_an_unquoted_yaml_date_is_a_valid_api_version() -> None:
    config = AzureProvider.model_validate(
        {"kind": "azure", "base_url": "https://r.openai.azure.com", "api_version": date(2024, 10, 21)}
    )
    assert config.api_version == "2024-10-21"


def test_an_argument_azure_does_not_know_is_named_in_param() -> None:
    # Azure's words for an argument its api-version lacks, param null (openai/openai-python#1724).
    body = {
        "error": {
            "message": "Unrecognized request argument supplied: max_completion_tokens",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    error = adapter().translate_error(400, orjson.dumps(body), None, "az")
    assert error.param == "max_completion_tokens" and error.http_status == 400
    assert error.message == "az: Unrecognized request argument supplied: max_completion_tokens"
    other = {"error": {"message": "Something else.", "type": "invalid_request_error", "param": None}}
    assert adapter().translate_error(400, orjson.dumps(other), None, "az").param is None


CHAT_BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _sent(api_version: str | None, body: dict[str, Any]) -> dict[str, Any]:
    request = adapter(api_version=api_version).build_request(Endpoint.CHAT, body, "dep")
    parsed: dict[str, Any] = orjson.loads(request.body)  # type: ignore[arg-type]
    return parsed


def test_a_dated_api_version_is_sent_only_the_arguments_it_takes() -> None:
    """Azure refuses a request holding an argument its api-version lacks (h-xlate2): hints and the
    doors' own ``stream_options`` are left out, ``max_completion_tokens`` is sent as
    ``max_tokens``, and what the answer rests on is refused by name, retryable."""
    hints = {"store": True, "metadata": {"k": "v"}, "seed": 1, "prediction": {}}
    streamed = {**CHAT_BODY, **hints, "stream": True, "stream_options": {"include_usage": True}}
    old = _sent("2024-06-01", {**streamed, "max_completion_tokens": 9})
    assert old == {
        "messages": CHAT_BODY["messages"], "seed": 1, "stream": True, "max_tokens": 9,
    }  # fmt: skip
    assert _sent("2024-06-01", {**CHAT_BODY, "max_completion_tokens": 9, "max_tokens": 5})["max_tokens"] == 5
    ga = _sent(None, {**streamed, "max_completion_tokens": 9})  # 2024-10-21
    assert set(ga) == {"messages", "seed", "stream", "stream_options", "max_completion_tokens"}
    for version in ("v1", "2025-04-01-preview", "preview"):  # (v1: the v1 API's own path)
        assert {"store", "prediction", "stream_options"} <= set(_sent(version, streamed))
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}
    refused = [
        ("2024-07-01-preview", {"response_format": schema}, "response_format"),
        ("2024-08-01-preview", {"tools": [{}], "parallel_tool_calls": False}, "parallel_tool_calls"),
        ("2024-10-21", {"modalities": ["audio"], "audio": {}}, "modalities"),
        ("2023-10-01-preview", {"tools": [{}]}, "tools"),
        ("2024-10-21", {"reasoning_effort": "low"}, "reasoning_effort"),
    ]
    for version, extra, param in refused:
        with pytest.raises(UnsupportedByProvider) as caught:
            _sent(version, {**CHAT_BODY, **extra})
        assert caught.value.param == param and caught.value.retryable
        assert f"api-version {version}" in caught.value.message
    assert _sent("2024-08-01-preview", {**CHAT_BODY, "response_format": schema})["response_format"] == schema
