"""The real transport's timeouts against real sockets: connect, first byte, the gap between two
reads and the total each still fire with the lazy watchdog (one timer per request, re-armed only
when it fires) that replaced aiohttp's per-read ``sock_read`` and its per-request total; and a
cancellation from elsewhere is never mistaken for a timeout."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gateway.errors import UpstreamConnectError, UpstreamTimeout
from gateway.providers.base import UpstreamRequest
from gateway.providers.transport import AiohttpTransport
from tests.unit.providers import loopback
from tests.unit.providers.loopback import REQUEST, Server, upstream


def transport(
    base_url: str, connect_s: float = 2, first_byte_s: float = 0.3, total_s: float = 20
) -> AiohttpTransport:
    timeouts = f"connect_s: {connect_s}, first_byte_s: {first_byte_s}, total_s: {total_s}"
    return loopback.transport(base_url, f"timeouts: {{{timeouts}}}")


async def test_a_provider_silent_before_the_first_byte_times_out(aiohttp_server: Server) -> None:
    stalled = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        stalled.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    t = transport(await upstream(aiohttp_server, silent), first_byte_s=0.3)
    await t.start()
    try:
        with pytest.raises(UpstreamTimeout, match=r"no first byte within first_byte_s 0\.3 s") as raised:
            await t.send(REQUEST)
    finally:
        await t.close()
    assert raised.value.code == "first_byte_timeout"  # the kind, in OpenAI's envelope's code
    assert stalled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the watchdog's cancellation was consumed


async def test_a_stream_that_stalls_mid_way_times_out_after_its_chunks(aiohttp_server: Server) -> None:
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await asyncio.Event().wait()
        return response

    t = transport(await upstream(aiohttp_server, stalls), first_byte_s=0.3)
    await t.start()
    try:
        response = await t.send(REQUEST)
        got: list[bytes] = []
        with pytest.raises(UpstreamTimeout, match=r"nothing read for first_byte_s 0\.3 s") as raised:
            async for chunk in response.chunks():
                got.append(chunk)
        response.close()
    finally:
        await t.close()
    assert b"".join(got) == b"data: one\n\n" and raised.value.code == "read_timeout"


async def test_a_whole_body_that_stalls_mid_way_times_out(aiohttp_server: Server) -> None:
    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"{" * 10)
        await asyncio.Event().wait()
        return response

    t = transport(await upstream(aiohttp_server, half), first_byte_s=0.3)
    await t.start()
    try:
        response = await t.send(REQUEST)
        with pytest.raises(UpstreamTimeout, match="nothing read"):
            await response.read()
        response.close()
    finally:
        await t.close()


def trickle(every_s: float, count: int | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A stream of one event every ``every_s`` seconds (``count`` of them, or forever)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        while count is None or sent < count:
            await response.write(b"data: x\n\n")
            sent += 1
            await asyncio.sleep(every_s)
        await response.write_eof()
        return response

    return handler


async def test_a_stream_trickling_past_the_total_times_out(aiohttp_server: Server) -> None:
    # Every gap is far below first_byte_s: only the total can end it.
    t = transport(await upstream(aiohttp_server, trickle(0.05, None)), first_byte_s=5, total_s=0.6)
    await t.start()
    try:
        response = await t.send(REQUEST)
        got = 0
        with pytest.raises(UpstreamTimeout, match=r"no whole answer within total_s 0\.6 s") as raised:
            async for _ in response.chunks():
                got += 1
        response.close()
    finally:
        await t.close()
    assert got >= 2  # it was reading, not stuck before the first byte
    assert raised.value.code == "total_timeout"


async def test_the_gap_is_measured_from_the_last_read_not_from_the_start(aiohttp_server: Server) -> None:
    # 12 events 0.1 s apart: 1.2 s in all, more than first_byte_s (0.8), each gap far below it.
    t = transport(await upstream(aiohttp_server, trickle(0.1, 12)), first_byte_s=0.8)
    await t.start()
    try:
        response = await t.send(REQUEST)
        body = b"".join([chunk async for chunk in response.chunks()])
        response.close()
    finally:
        await t.close()
    assert body == b"data: x\n\n" * 12


async def test_time_the_gateway_spends_between_reads_is_not_the_providers_silence(
    aiohttp_server: Server,
) -> None:
    """A slow client of the gateway holds up the reads; the provider already sent everything."""

    async def whole(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"data: x\n\n")
            await asyncio.sleep(0.01)  # separate chunks
        await response.write_eof()
        return response

    t = transport(await upstream(aiohttp_server, whole), first_byte_s=0.2)
    await t.start()
    try:
        response = await t.send(REQUEST)
        got = b""
        async for chunk in response.chunks():
            got += chunk
            await asyncio.sleep(0.5)  # the gateway busy writing to a slow client
        response.close()
    finally:
        await t.close()
    assert got == b"data: x\n\n" * 3


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout(aiohttp_server: Server) -> None:
    waiting = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    t = transport(await upstream(aiohttp_server, silent), first_byte_s=0.2)
    await t.start()
    try:
        sending = asyncio.create_task(t.send(REQUEST))
        await asyncio.wait_for(waiting.wait(), 5)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        # The watchdog stopped with the send: nothing fires later into this task.
        await asyncio.sleep(0.3)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
    finally:
        await t.close()


async def test_a_connect_that_never_completes_times_out() -> None:
    """A listening socket whose accept queue is full: the kernel drops the SYN, the connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    host, port = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):  # fill the accept queue (never accepted)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((host, port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        t = transport(f"http://{host}:{port}/v1", connect_s=0.3, first_byte_s=30)
        await t.start()
        try:
            with pytest.raises((UpstreamTimeout, UpstreamConnectError)) as raised:
                await t.send(REQUEST)
        finally:
            await t.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert isinstance(raised.value, UpstreamTimeout), raised.value
    # aiohttp's own sock_connect, in the gateway's words (its text, naming the host, is the log's)
    assert raised.value.message == "p: provider timed out (no connection within connect_s 0.3 s)"
    assert raised.value.code == "connect_timeout" and "Connection timeout" in (raised.value.detail or "")


async def test_one_shared_timer_times_out_the_stalled_request_among_quick_ones(
    aiohttp_server: Server,
) -> None:
    # The transport's watchdogs share one timer: requests that finish (whole bodies read at
    # once, with their headers) leave it armed for a moment nobody waits for any more; a request
    # that stalls after them must still time out, and the quick ones running beside it must not.
    async def answer(request: web.Request) -> web.Response:
        if (await request.read()) == b"stall":
            await asyncio.Event().wait()  # never answers
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    # 1 s, not less: the quick requests are under the same bound, and on a loaded machine (the
    # suite beside other work) one of them took longer than 0.4 s once.
    t = transport(await upstream(aiohttp_server, answer), first_byte_s=1.0)
    await t.start()

    async def quick() -> bytes:
        response = await t.send(REQUEST)
        try:
            return await response.read()
        finally:
            response.close()

    try:
        assert await asyncio.gather(*(quick() for _ in range(20))) == [b'{"ok": true}'] * 20
        stalled = asyncio.ensure_future(t.send(UpstreamRequest("/chat/completions", b"stall", False)))
        for _ in range(5):  # quick requests keep coming while the stalled one waits
            assert await quick() == b'{"ok": true}'
        with pytest.raises(UpstreamTimeout, match=r"no first byte within first_byte_s 1 s"):
            await stalled
        assert await quick() == b'{"ok": true}'  # the timer still serves what comes next
    finally:
        await t.close()
