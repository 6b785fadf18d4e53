"""A transcription's answer relayed (``providers/openai.TranscriptRelay``): a streamed one
(``stream: true``, gpt-4o-transcribe's ``transcript.text.*`` events) opening with the provider's
``error`` event fails over instead of going out as a 200 carrying the error (h-probe6's finding);
every other answer goes out byte for byte as it arrives.

The unit part feeds the relay; the request part runs the gateway in process over real HTTP with
the openai SDK as the client, the group's first deployment opening its stream with an error and
the second serving it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.errors import UpstreamStatusError
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import TranscriptRelay
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

ERROR = b'data: {"type":"error","error":{"type":"server_error","message":"transcriber down"}}\n\n'
DELTA = b'data: {"type":"transcript.text.delta","delta":"hello"}\n\n'
DONE = (
    b'data: {"type":"transcript.text.done","text":"hello",'
    b'"usage":{"type":"tokens","input_tokens":5,"output_tokens":2,"total_tokens":7}}\n\n'
)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_streams_opening_error_is_raised_before_a_byte_goes_out(size: int) -> None:
    relay = TranscriptRelay(streamed=True)
    stream = ERROR + DELTA
    out = b""
    with pytest.raises(UpstreamStatusError) as raised:
        for at in range(0, len(stream), size):
            out += relay.feed(stream[at : at + size])
    assert out == b"" and raised.value.retryable  # (a server error: failed over)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_stream_opening_otherwise_and_every_other_answer_go_out_as_they_came(size: int) -> None:
    for streamed, answer in (
        (True, DELTA + ERROR + DONE),  # an error later is the client's to see (the SDK raises)
        (True, b'{"text": "hello"}'),  # answered as JSON after all
        (True, b'data: {"type":"transcript.text.del'),  # cut inside its first event: released at the end
        (False, b"data: looks like an event but is a transcript's text\n\nmore"),
        (False, ERROR),
    ):
        relay = TranscriptRelay(streamed=streamed)
        outs = [relay.feed(answer[at : at + size]) for at in range(0, len(answer), size)]
        outs.append(relay.finish())
        assert b"".join(outs) == answer


POLICY = """
version: 1
auth: {mode: open}
providers:
  bad: {kind: openai, base_url: "http://bad.test/v1"}
  good: {kind: openai, base_url: "http://good.test/v1"}
retry: {backoff_initial_s: 0, backoff_max_s: 0}
models:
  transcribe:
    strategy: ordered
    deployments: [{provider: bad, model: gpt-4o-transcribe}, {provider: good, model: gpt-4o-transcribe}]
memory: {enabled: false}
"""


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    def bad(request: UpstreamRequest) -> MockResponse:
        return MockResponse.stream([ERROR[:20], ERROR[20:], DELTA])

    def good(request: UpstreamRequest) -> MockResponse:
        return MockResponse.stream([DELTA, DONE])

    app = build_app(
        Settings(access_log=False),
        parse_policy(POLICY),
        {"bad": "sk-bad", "good": "sk-good"},
        transports={"bad": MockTransport(bad), "good": MockTransport(good)},
    )
    async with (
        TestClient(TestServer(app, host="127.0.0.1")) as test_client,
        openai.AsyncOpenAI(
            api_key="sk-anything", base_url=str(test_client.make_url("/v1")), max_retries=0
        ) as sdk,
    ):
        yield sdk


async def test_a_transcription_stream_opening_with_an_error_fails_over(client: openai.AsyncOpenAI) -> None:
    raw = await client.audio.transcriptions.with_raw_response.create(
        model="transcribe", file=("a.webm", b"\x1aE\xdf\xa3" + bytes(2000)), stream=True
    )
    assert raw.headers["x-gateway-provider"] == "good" and raw.headers["x-gateway-fallback"] == "true"
    events: list[Any] = [event async for event in raw.parse()]
    # Before: a 200 from "bad" whose first event the SDK raised as an APIError.
    assert [event.type for event in events] == ["transcript.text.delta", "transcript.text.done"]
    assert orjson.loads(DONE[6:])["text"] == events[-1].text
