"""What a client wrote comes back in an error bounded, on every door: a 100,000-character field
name, block type or tool name made a 100-200 KB error body (the message named it, ``param``
named it again). The real app, in process, a provider behind a MockTransport that must never be
reached (each request is refused before it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.errors import InvalidRequest
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.quoting import MESSAGE_MAX_CHARS
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from tests.unit.service.test_request_path import ClientFactory

HUGE = "k" * 100_000
USER: Any = [{"role": "user", "content": "hi"}]
REFUSED: dict[str, tuple[str, dict[str, Any]]] = {
    "memory search field": ("/v1/memory/search", {"namespaces": ["n"], "vector": [0.1, 0.2], HUGE: 1}),
    "responses field": ("/v1/responses", {"model": "m", "input": "hi", HUGE: 1}),
    "responses item type": ("/v1/responses", {"model": "m", "input": [{"type": HUGE}]}),
    "messages block type": (
        "/v1/messages",
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": HUGE}]}]},
    ),
    "chat tool_choice name": (
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": USER,
            "tools": [{"type": "function", "function": {"name": "a"}}],
            "tool_choice": {"type": "function", "function": {"name": HUGE}},
        },
    ),
    "chat model": ("/v1/chat/completions", {"model": HUGE, "messages": USER}),
}


def never(request: UpstreamRequest) -> MockResponse:
    raise AssertionError(f"the provider was called: {request.path}")


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> TestClient:
    policy = parse_policy(
        "version: 1\nauth: {mode: open}\nproviders:\n  p: {kind: openai, base_url: 'http://p.test/v1'}\n"
        "models:\n  m: {deployments: [{provider: p, model: x}]}\n"
        f"memory: {{enabled: true, path: '{tmp_path}/m.db', index_dir: '{tmp_path}/ix'}}\n"
    )
    app = build_app(Settings(access_log=False), policy, {}, transports={"p": MockTransport(never)})
    return await aiohttp_client(app)


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_huge_name_a_client_wrote_comes_back_bounded(client: TestClient, case: str) -> None:
    path, body = REFUSED[case]
    response = await client.post(path, json=body)
    raw = await response.read()
    assert 400 <= response.status < 500, raw[:300]
    assert len(raw) < MESSAGE_MAX_CHARS + 1024, (case, len(raw))
    answer = orjson.loads(raw)
    error = answer["error"]
    assert "k" * 200 in error["message"]  # it still names what it refuses
    assert len(error.get("param") or "") < 600


def test_an_errors_message_and_param_are_bounded_however_they_are_set() -> None:
    error = InvalidRequest("m" * 50_000, param="p" * 50_000)
    assert len(error.message) < MESSAGE_MAX_CHARS + 32 and error.message.endswith("(50000 chars)")
    assert error.param is not None and len(error.param) < 600 and error.param.endswith("(50000 chars)")
    error.message, error.param = "short", None  # a door renames them: still bounded, still as set
    assert error.envelope()["error"]["message"] == "short" and error.envelope()["error"]["param"] is None
    error.param = "input[2]." + "q" * 1000
    assert len(error.envelope()["error"]["param"]) < 600
