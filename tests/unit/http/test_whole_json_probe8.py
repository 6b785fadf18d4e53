"""A stranger's probe of the one-pass write of whole JSON answers (``responses.WholeJSON``,
``connection.GatewayRequestHandler.finish_response``), h-probe8. Served by the gateway's
connection handler (``GatewayRunner``, as ``serve`` runs it) over real loopback TCP; the client
is a raw socket. Each test failed before its fix.

- ``test_an_answer_left_unsent_by_the_one_pass_is_watched``: a small answer written in one pass
  to a client that had stopped reading (its socket buffers full) left its unsent tail in the
  transport with no watch: the connection and its bytes stayed for as long as the client kept
  the socket (aiohttp's keep-alive close waits for them), where aiohttp's path let it go after
  ``response_write_timeout_s``.
- ``test_a_header_the_one_pass_cannot_write_as_aiohttp_does_takes_aiohttps_path``: the one pass
  refused CR and LF only, and wrote the other control characters aiohttp's serialiser refuses
  (NUL, DEL, ...: a policy's upstream model name reaches ``x-gateway-model``) onto the wire; and
  a lone surrogate, which aiohttp's serialiser drops, raised in the one pass and dropped the
  connection. Such an answer now goes through aiohttp's path: the same outcome as before the
  one pass, byte for byte.
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


async def _reply(port: int) -> bytes:
    """One request's raw reply, up to the server's close or its whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /answer HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while (end := got.find(b"\r\n\r\n")) < 0 or len(got) < end + 4 + len(ANSWER):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        got += chunk
    writer.close()
    return b"\r\n".join(b"Date: -" if line.startswith(b"Date: ") else line for line in got.split(b"\r\n"))


WRITTEN = ("m\tx", "mé")  # a tab and non-ASCII (as UTF-8) are allowed
REFUSED = ("m\x00x", "m\x01x", "m\x0bx", "m\x1fx", "m\x7fx")  # aiohttp's forbidden controls


@pytest.mark.parametrize("value", [*WRITTEN, *REFUSED, "m\ud800x"])
async def test_a_header_the_one_pass_cannot_write_as_aiohttp_does_takes_aiohttps_path(
    serve: Callable[[web.Application], object], value: str
) -> None:
    def app(kind: type[web.Response]) -> web.Application:
        async def answer(request: web.Request) -> web.StreamResponse:
            if kind is WholeJSON:
                return WholeJSON(ANSWER, 200, {"x-gateway-model": value})
            return web.Response(
                body=ANSWER, content_type="application/json", headers={"x-gateway-model": value}
            )

        served = web.Application()
        served.router.add_get("/answer", answer)
        return served

    whole = await _reply(await serve(app(WholeJSON)))  # type: ignore[misc]
    plain = await _reply(await serve(app(web.Response)))  # type: ignore[misc]
    # (aiohttp's ``Response`` puts its Content-Type after the headers it is given)
    assert sorted(whole.split(b"\r\n")) == sorted(plain.split(b"\r\n"))
    if value in WRITTEN:
        assert b"\r\nx-gateway-model: " + value.encode() + b"\r\n" in whole
    elif value in REFUSED:
        assert whole == b""  # refused: nothing written, the connection closed
    else:
        assert b"\r\nx-gateway-model: mx\r\n" in whole  # (aiohttp drops a lone surrogate)


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
