"""Clients and upstreams that misbehave in time, against the gateway as a process: a drain whose
grace runs out with streams and requests still in flight.

The upstream is a small aiohttp server in the test's own loop that holds its answers until the
connection closes, and says when each request arrives and when its connection is closed; the
clients are the official SDKs.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from gateway.testing.process import ManagedProcess, start

GRACE_S = 1.0


@dataclass
class HoldingUpstream:
    """OpenAI-compatible chat: a stream sends one chunk, a whole answer nothing, and both then
    wait until the gateway closes the connection."""

    url: str = ""
    arrived: int = 0
    open: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await self._count(arrived=1, open=1)
        try:
            if not body.get("stream"):
                await asyncio.Event().wait()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            event = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "held",
                     "choices": [{"index": 0, "delta": {"content": "first"}, "finish_reason": None}]}  # fmt: skip
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await asyncio.Event().wait()
            return response  # never reached: only the connection closing ends it
        finally:
            await asyncio.shield(self._count(arrived=0, open=-1))

    async def _count(self, *, arrived: int, open: int) -> None:
        async with self.changed:
            self.arrived += arrived
            self.open += open
            self.changed.notify_all()

    async def until(self, arrived: int, open: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: self.arrived >= arrived and self.open == open)


@pytest.fixture
async def upstream() -> AsyncIterator[HoldingUpstream]:
    held = HoldingUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", held.handle)
    runner = web.AppRunner(app, handler_cancellation=True)  # a closed connection ends the handler
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    held.url = f"http://{host}:{port}/v1"
    yield held
    await runner.cleanup()


async def start_gateway(tmp_path: Path, upstream: HoldingUpstream) -> ManagedProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"""
version: 1
auth: {{mode: open}}
server: {{drain_grace_s: {GRACE_S}}}
memory: {{enabled: false}}
providers:
  held: {{kind: openai, base_url: "{upstream.url}", timeouts: {{first_byte_s: 60, total_s: 120}}}}
models:
  m: {{deployments: [{{provider: held, model: held}}], retry: {{max_attempts: 1}}}}
"""
    )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None,
        lambda: start(["serve", "--policy", str(policy), "--port", "0"], env={"SOPHIA_LOG_FORMAT": "json"}),
    )


async def test_a_drain_whose_grace_runs_out_ends_each_stream_with_its_doors_error_and_exits_in_time(
    tmp_path: Path, upstream: HoldingUpstream
) -> None:
    """aiohttp waited the grace for a handler, then (cancelling only the request's body) the
    grace again: streams still running were cut at twice ``drain_grace_s``, mid-chunk, without an
    error event (the SDKs saw a broken connection), and whole answers got no answer at all."""
    gateway = await start_gateway(tmp_path, upstream)
    try:
        oa = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0, timeout=30)
        an = anthropic.AsyncAnthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=30)
        said = [{"role": "user", "content": "hi"}]
        chat = await oa.chat.completions.create(model="m", messages=said, stream=True)  # type: ignore[arg-type]
        responses = await oa.responses.create(model="m", input="hi", stream=True)
        messages = await an.messages.create(model="m", max_tokens=5, messages=said, stream=True)  # type: ignore[arg-type]
        whole = asyncio.create_task(oa.chat.completions.create(model="m", messages=said))  # type: ignore[arg-type]
        await upstream.until(arrived=4, open=4)

        async def drain(stream: AsyncIterator[object]) -> None:
            async for _ in stream:
                pass

        signalled = time.monotonic()
        gateway.signal(signal.SIGTERM)
        async with asyncio.timeout(GRACE_S + 5):
            outcomes = await asyncio.gather(
                drain(chat), drain(responses), drain(messages), whole, return_exceptions=True
            )
        ended_s = time.monotonic() - signalled
        code = await asyncio.get_running_loop().run_in_executor(None, gateway.wait, 10)
    finally:
        gateway.stop()
    assert GRACE_S <= ended_s < 2 * GRACE_S - 0.2, ended_s  # at the grace, not twice it
    chat_error, responses_error, messages_error, whole_error = outcomes
    # Each stream ends with its door's error event, which the SDK raises as an API error.
    assert isinstance(chat_error, openai.APIError) and "shutting down" in chat_error.message, chat_error
    assert isinstance(responses_error, openai.APIError) and "shutting down" in responses_error.message
    assert isinstance(messages_error, anthropic.APIStatusError), messages_error
    assert "shutting down" in messages_error.message
    # A whole answer is a 503 the SDK may retry elsewhere.
    assert isinstance(whole_error, openai.InternalServerError) and whole_error.status_code == 503
    assert whole_error.code == "gateway_draining"
    assert code == 0
    await upstream.until(arrived=4, open=0)  # every provider request was closed
    assert "Traceback" not in gateway.output
    # The streams were answered 200, then cut: failed streams (reason draining), not successes.
    access = [orjson.loads(line) for line in gateway.output.splitlines() if '"gateway.access"' in line]
    cut = sorted((line["path"], line.get("stream_error")) for line in access if line["status"] == 200)
    assert cut == [
        ("/v1/chat/completions", "draining"),
        ("/v1/messages", "draining"),
        ("/v1/responses", "draining"),
    ]
