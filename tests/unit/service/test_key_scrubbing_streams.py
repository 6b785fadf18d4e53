"""The provider's key is scrubbed from streams when it arrives cut: between two network chunks
of one event, and (on the Responses door, which joins the deltas into whole texts) across
events."""

from __future__ import annotations

from typing import Any

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

KEY = "sk-PROVKEY-tool-0001234"

POLICY = """
version: 1
auth: {mode: open}
providers:
  p: {kind: openai, base_url: "http://p.test/v1", api_key_env: P_KEY}
models:
  m: {deployments: [{provider: p, model: pm}]}
memory: {enabled: false}
"""


def chunk(content: str) -> bytes:
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "pm"}
    event["choices"] = [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return b"data: " + orjson.dumps(event) + b"\n\n"


END = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"pm","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)


class Provider:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def __call__(self, request: UpstreamRequest) -> MockResponse:
        return MockResponse.stream(list(self.chunks))


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, provider: Provider) -> TestClient:
    app = build_app(
        Settings(access_log=False),
        parse_policy(POLICY),
        {"P_KEY": KEY},
        transports={"p": MockTransport(provider)},
    )
    return await aiohttp_client(app)


@pytest.mark.parametrize("cut", [3, 10, len(KEY) - 1])
async def test_a_key_cut_between_two_network_chunks_is_scrubbed(
    client: TestClient, provider: Provider, cut: int
) -> None:
    event = chunk(f"your key is Bearer {KEY} ok")
    at = event.index(KEY.encode()) + cut
    provider.chunks = [chunk("hello "), event[:at], event[at:], END]
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    body = await response.read()
    assert response.status == 200
    assert KEY.encode() not in body
    assert b"your key is Bearer *** ok" in body and body.endswith(b"data: [DONE]\n\n")


def escaped(text: str, every: int) -> str:
    """``text`` with every ``every``-th character written as JSON's ``\\uXXXX`` escape."""
    return "".join(f"\\u{ord(c):04X}" if i % every == 0 else c for i, c in enumerate(text))


@pytest.mark.parametrize("every", [1, 2, 5])
async def test_a_key_written_with_escapes_and_cut_anywhere_is_scrubbed(
    client: TestClient, provider: Provider, every: int
) -> None:
    # A provider's JSON encoder may write the key's characters as \uXXXX escapes, which every
    # client's parser turns back into the key: cut at any byte, across two chunks, it is scrubbed.
    written = escaped(KEY, every)
    event = chunk("your key is Bearer KEYHERE ok").replace(b"KEYHERE", written.encode())
    start = event.index(written.encode())
    for at in range(start + 1, start + len(written)):
        provider.chunks = [chunk("hello "), event[:at], event[at:], END]
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        )
        body = await response.read()
        assert response.status == 200
        text = "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in (orjson.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {"))
        )
        assert KEY not in text, (every, at)
        assert text == "hello your key is Bearer *** ok", (every, at)


async def test_a_chunk_ending_like_a_key_start_is_sent_whole_in_the_end(
    client: TestClient, provider: Provider
) -> None:
    # "s" and "sk-P" end chunks here and are not the key: every byte arrives, once, in order.
    provider.chunks = [
        chunk("this is s"),
        chunk("o sk-P"),
        b'data: {"id":"c","object":"chat.completion.chunk","cr',
        END,
    ]
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    body = await response.read()
    assert chunk("this is s") + chunk("o sk-P") in body


async def test_the_responses_door_scrubs_the_texts_it_joins(client: TestClient, provider: Provider) -> None:
    pieces = ["your key is Bearer ", KEY[:5], KEY[5:10], KEY[10:], " ok"]
    provider.chunks = [chunk(p) for p in pieces] + [END]
    api = openai.AsyncOpenAI(api_key="client-key", base_url=str(client.make_url("/v1")), max_retries=0)
    events: list[Any] = []
    async with api.responses.stream(model="m", input="x") as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    assert final.output_text == "your key is Bearer *** ok"
    done = [e for e in events if e.type == "response.output_text.done"]
    assert done and KEY not in done[0].text
    kept = await api.responses.retrieve(final.id)
    assert KEY not in kept.model_dump_json()
