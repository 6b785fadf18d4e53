"""A stranger's probe of the one-pass write of whole JSON answers (``responses.WholeJSON``,
``connection.GatewayRequestHandler.finish_response``), h-probe8. Served by the gateway's
connection handler (``GatewayRunner``, as ``serve`` runs it) over real loopback TCP; the client
is a raw socket. Each test failed before its fix.

- ``test_an_answer_left_unsent_by_the_one_pass_is_watched``: a small answer written in one pass
  to a client that had stopped reading (its socket buffers full) left its unsent tail in the
  transport with no watch: the connection and its bytes stayed for as long as the client kept
  the socket (aiohttp's keep-alive close waits for them), where aiohttp's path let it go after
  ``response_write_timeout_s``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from gateway.http.connection import GatewayRunner
from gateway.http.responses import WholeJSON

WRITE_TIMEOUT_S = 0.2
ANSWER = b'{"text":"' + b"x" * (12 * 1024) + b'"}'  # under the one pass's 16 KiB


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], object]]:
    runners: list[web.AppRunner] = []

    async def go(app: web.Application) -> int:
        runner = GatewayRunner(
            app, access_log=None, request_read_timeout_s=10, response_write_timeout_s=WRITE_TIMEOUT_S
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port: int = runner.addresses[0][1]
        return port

    yield go
    for runner in runners:
        await runner.cleanup()


async def test_an_answer_left_unsent_by_the_one_pass_is_watched(
    serve: Callable[[web.Application], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: asyncio.Queue[tuple[bool, asyncio.Transport]] = asyncio.Queue()
    real = WholeJSON.write_now

    def recorded(self: WholeJSON, request: web.BaseRequest, transport: asyncio.Transport) -> bool:
        done = real(self, request, transport)
        written.put_nowait((done, transport))
        return done

    monkeypatch.setattr(WholeJSON, "write_now", recorded)

    async def answer(request: web.Request) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # (a full socket soon)
        return WholeJSON(ANSWER)

    app = web.Application()
    app.router.add_get("/answer", answer)
    port = await serve(app)  # type: ignore[misc]
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", port))
        # One request at a time, each answered in one pass, until an answer no longer fits in
        # the sockets' buffers: its tail waits in the transport, and the client asks nothing more.
        for _ in range(200):
            await loop.sock_sendall(client, b"GET /answer HTTP/1.1\r\nHost: x\r\n\r\n")
            one_pass, transport = await asyncio.wait_for(written.get(), 10)
            assert one_pass
            if transport.get_write_buffer_size():
                break
        else:
            pytest.fail("the answers never filled the sockets' buffers")
        # Nothing is read: the connection is let go once the write timeout passes without
        # progress (aborted). Before the fix it stayed open with its unsent bytes.
        async with asyncio.timeout(10):
            while not transport.is_closing():
                await asyncio.sleep(WRITE_TIMEOUT_S / 4)
    finally:
        client.close()
