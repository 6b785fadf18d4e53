"""The real transport bounds what one answer makes the gateway hold (``max_response_bytes``), against
real sockets: a whole body past the limit, an endless stream event (a line that never ends, or data
lines that never reach a blank line), and a body at the limit or a long stream of small events,
which pass. A provider that floods is cut off with ``UpstreamBadResponse`` and its connection
dropped, long before the total timeout, and the transport serves the next request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gateway.errors import UpstreamBadResponse
from gateway.policy.loader import PolicyError, parse_policy
from gateway.providers.transport import AiohttpTransport
from tests.unit.providers import loopback
from tests.unit.providers.loopback import REQUEST, Server, upstream

LIMIT = 64 * 1024


def transport(base_url: str, limit: str = "64KiB") -> AiohttpTransport:
    return loopback.transport(base_url, f"max_response_bytes: {limit}")


def flood(
    piece: bytes, first: bytes = b""
) -> tuple[Callable[[web.Request], Awaitable[web.StreamResponse]], list[int]]:
    """A handler that sends ``first``, then ``piece`` until the client stops reading (at most
    64 MiB); the list gets the bytes it managed to write."""
    written: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        try:
            if first:
                await response.write(first)
            while sent < 64 * 2**20:
                await response.write(piece)
                sent += len(piece)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            written.append(sent)
        return response

    return handler, written


async def test_a_whole_body_past_the_limit_is_refused_and_the_next_request_is_served(
    aiohttp_server: Server,
) -> None:
    calls = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        size = LIMIT + 1 if calls == 1 else LIMIT  # the second is exactly at the limit: it passes
        return web.Response(body=b"x" * size, content_type="application/json")

    t = transport(await upstream(aiohttp_server, answer))
    await t.start()
    try:
        response = await t.send(REQUEST)
        with pytest.raises(
            UpstreamBadResponse, match=r"more than max_response_bytes \(65,536 bytes\) in one answer"
        ):
            await response.read()
        response.close()
        response = await t.send(REQUEST)
        assert len(await response.read()) == LIMIT
        response.close()
    finally:
        await t.close()


async def test_an_endless_body_is_cut_off_at_the_limit_not_read_to_the_end(aiohttp_server: Server) -> None:
    handler, written = flood(b"y" * 4096)
    t = transport(await upstream(aiohttp_server, handler))
    await t.start()
    try:
        response = await t.send(REQUEST)
        with pytest.raises(UpstreamBadResponse, match="in one answer"):
            await asyncio.wait_for(response.read(), 20)
        response.close()
    finally:
        await t.close()
    for _ in range(200):  # the provider's handler sees the connection go
        if written:
            break
        await asyncio.sleep(0.01)
    assert written and written[0] < 16 * 2**20  # it stopped far short of its 64 MiB


@pytest.mark.parametrize(
    ("first", "piece"),
    [
        (b"", b"z" * 4096),  # one line that never ends
        (b"data: {}\n\n", b"data: more\n" * 400),  # data lines that never reach a blank line
    ],
    ids=["endless-line", "endless-event"],
)
async def test_a_stream_event_past_the_limit_is_cut_off(
    aiohttp_server: Server, first: bytes, piece: bytes
) -> None:
    handler, written = flood(piece, first)
    t = transport(await upstream(aiohttp_server, handler))
    await t.start()
    got = 0
    try:
        response = await t.send(REQUEST)
        with pytest.raises(UpstreamBadResponse, match="in one stream event"):
            async for chunk in response.chunks():
                got += len(chunk)
        response.close()
    finally:
        await t.close()
    assert got <= LIMIT + 2**20  # relayed until the event passed the limit (in one chunk, or more)
    for _ in range(200):
        if written:
            break
        await asyncio.sleep(0.01)
    assert written and written[0] < 16 * 2**20  # then cut off, far short of the provider's 64 MiB


async def test_a_long_stream_of_small_events_passes_whatever_its_total(aiohttp_server: Server) -> None:
    event = b"data: " + b"w" * 500 + b"\n\n"

    async def many(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(4 * LIMIT // len(event)):  # four times the limit in all
            await response.write(event)
        await response.write(b"data: [DONE]\r\n\r\n")
        return response

    t = transport(await upstream(aiohttp_server, many))
    await t.start()
    try:
        response = await t.send(REQUEST)
        total = sum([len(chunk) async for chunk in response.chunks()])
        response.close()
    finally:
        await t.close()
    assert total > 4 * LIMIT - len(event)


def test_the_limit_is_a_size_in_the_policy() -> None:
    assert transport("http://127.0.0.1:9/v1", "2MiB")._limit == 2 * 2**20
    default = parse_policy(
        "version: 1\nproviders:\n  p: {kind: openai, base_url: 'http://x/v1'}\n"
        "models:\n  m: {deployments: [{provider: p, model: x}]}\n"
    ).providers["p"]
    assert default.max_response_bytes == 128 * 2**20
    with pytest.raises(PolicyError, match="max_response_bytes"):
        transport("http://127.0.0.1:9/v1", "0")
    with pytest.raises(PolicyError, match="max_response_bytes"):
        transport("http://127.0.0.1:9/v1", "lots")
