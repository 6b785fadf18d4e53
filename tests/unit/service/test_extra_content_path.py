"""Gemini's ``extra_content`` (the thought signature on a tool call, handed out by the gateway's
Gemini adapter and by Google's OpenAI-compatible endpoint) goes back only to Gemini: an OpenAI or
Azure deployment refuses fields it does not know, so a conversation a Gemini deployment served
failed when the next turn was routed, or failed over, to one of them. The official openai SDK in
front of the real app, MockTransport behind."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import takes_extra_content
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from tests.unit.service.test_request_path import ClientFactory

POLICY = """
version: 1
auth: {mode: open}
providers:
  oa: {kind: openai, base_url: "http://oa.test/v1"}
  az: {kind: azure, base_url: "https://res.openai.azure.com"}
  gcompat: {kind: openai, base_url: "https://generativelanguage.googleapis.com/v1beta/openai"}
models:
  gpt: {deployments: [{provider: oa, model: gpt-x}]}
  azure: {deployments: [{provider: az, model: dep}]}
  gemini-compat: {deployments: [{provider: gcompat, model: gemini-3-flash}]}
memory: {enabled: false}
"""
SIGNED = {"google": {"thought_signature": "CiQBjz1rX0il"}}
HISTORY: Any = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "extra_content": SIGNED,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                "extra_content": SIGNED,
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "15 degrees"},
]
TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


class Seen:
    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}

    def transport(self, name: str) -> MockTransport:
        def handle(request: UpstreamRequest) -> MockResponse:
            body = orjson.loads(request.body)
            self.bodies[name] = body
            for i, message in enumerate(body.get("messages", [])):  # as OpenAI's API refuses it
                calls = message.get("tool_calls") or []
                if name != "gcompat" and (
                    "extra_content" in message or any("extra_content" in c for c in calls)
                ):
                    param = f"messages[{i}].extra_content"
                    error = {"message": f"Unknown parameter: '{param}'.", "type": "invalid_request_error",
                             "param": param, "code": "unknown_parameter"}  # fmt: skip
                    return MockResponse.json({"error": error}, status=400)
            message = {"role": "assistant", "content": "15 degrees it is"}
            return MockResponse.json(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body.get("model", "dep"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
                }
            )

        return MockTransport(handle)


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def api(aiohttp_client: ClientFactory, seen: Seen) -> openai.AsyncOpenAI:
    transports = {name: seen.transport(name) for name in ("oa", "az", "gcompat")}
    app = build_app(Settings(access_log=False), parse_policy(POLICY), {}, transports=transports)
    client: TestClient = await aiohttp_client(app)
    return openai.AsyncOpenAI(api_key="k", base_url=str(client.make_url("/v1")), max_retries=0)


@pytest.mark.parametrize(("model", "provider"), [("gpt", "oa"), ("azure", "az")])
async def test_openai_and_azure_deployments_never_get_extra_content(
    api: openai.AsyncOpenAI, seen: Seen, model: str, provider: str
) -> None:
    answer = await api.chat.completions.create(model=model, messages=HISTORY, tools=TOOLS)
    assert answer.choices[0].message.content == "15 degrees it is"
    sent = seen.bodies[provider]["messages"]
    assert b"extra_content" not in orjson.dumps(sent)
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"  # the rest as sent
    assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2] == HISTORY[2]


async def test_googles_openai_compatible_endpoint_gets_it_back(api: openai.AsyncOpenAI, seen: Seen) -> None:
    await api.chat.completions.create(model="gemini-compat", messages=HISTORY, tools=TOOLS)
    sent = seen.bodies["gcompat"]["messages"]
    assert sent[1]["tool_calls"][0]["extra_content"] == SIGNED and sent[1]["extra_content"] == SIGNED


async def test_a_responses_function_call_with_a_signature_reaches_openai_without_it(
    api: openai.AsyncOpenAI, seen: Seen
) -> None:
    """The Responses door carries a replayed call's ``extra_content`` into the chat translation
    (for Gemini); an OpenAI deployment gets the call without it."""
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
    items: Any = [
        {"role": "user", "content": "Weather?"},
        {**call, "extra_content": SIGNED},
        {"type": "function_call_output", "call_id": "call_1", "output": "15 degrees"},
    ]
    answer = await api.responses.create(model="gpt", input=items)
    assert answer.output_text == "15 degrees it is"
    assert b"extra_content" not in orjson.dumps(seen.bodies["oa"])
    await api.responses.create(model="gemini-compat", input=items)
    assert seen.bodies["gcompat"]["messages"][1]["tool_calls"][0]["extra_content"] == SIGNED


@pytest.mark.parametrize(
    ("base_url", "takes"),
    [
        ("https://generativelanguage.googleapis.com/v1beta/openai", True),
        ("https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/l/endpoints/openapi", True),
        ("https://api.openai.com/v1", False),
        ("https://generativelanguage.googleapis.com.evil.test/v1", False),
        ("http://localhost:8000/v1", False),
    ],
)
def test_only_googles_hosts_take_extra_content(base_url: str, takes: bool) -> None:
    assert takes_extra_content(base_url) is takes
