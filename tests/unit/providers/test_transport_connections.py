"""The real transport gives a connection back to its pool once a response is read to its end,
and closes the connection of a response abandoned half way, against a real aiohttp server that
counts the connections it accepted and sees them close."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.errors import UpstreamConnectError
from gateway.providers.base import UpstreamRequest
from tests.unit.providers.test_transport_timeouts import Server, transport

REQUEST = UpstreamRequest("/chat/completions", b"{}", False)


class Peers:
    """The client ports the server saw, and the connections it saw closed."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.closed = asyncio.Event()


async def counting(aiohttp_server: Server, peers: Peers, chunks: int) -> str:
    async def answer(request: web.Request) -> web.StreamResponse:
        peers.ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n in range(chunks):
                await response.write(b"data: %d\n\n" % n)
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):  # the client closed the connection
            peers.closed.set()
            raise
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/v1"))


async def test_responses_read_to_their_end_reuse_one_connection(aiohttp_server: Server) -> None:
    peers = Peers()
    t = transport(await counting(aiohttp_server, peers, chunks=3))
    await t.start()
    try:
        for _ in range(3):
            response = await t.send(REQUEST)
            body = await response.read()
            response.close()  # the service always closes; read to its end, nothing is cut
            assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    finally:
        await t.close()
    assert len(peers.ports) == 3 and len(set(peers.ports)) == 1, peers.ports


async def test_a_response_closed_half_way_closes_its_connection(aiohttp_server: Server) -> None:
    peers = Peers()
    t = transport(await counting(aiohttp_server, peers, chunks=200))
    await t.start()
    try:
        response = await t.send(REQUEST)
        async for chunk in response.chunks():
            assert chunk.startswith(b"data: 0")
            break
        response.close()
        await asyncio.wait_for(peers.closed.wait(), 5)  # the server saw the connection go
        again = await t.send(REQUEST)
        again.close()
    finally:
        await t.close()
    assert len(peers.ports) == 2 and peers.ports[0] != peers.ports[1], peers.ports


async def test_a_cookie_set_by_the_provider_is_never_sent_back(aiohttp_server: Server) -> None:
    """One pooled session serves every caller: a cookie set on one caller's response must not
    ride on the next caller's request (aiohttp's default jar would send it)."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({})
        response.set_cookie("affinity", "caller-a-session", path="/")
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server: TestServer = await aiohttp_server(app)
    # By a host name: aiohttp's default jar ignores cookies from a bare IP address.
    t = transport(str(server.make_url("/v1").with_host("localhost")))
    await t.start()
    try:
        for _ in range(2):
            response = await t.send(REQUEST)
            await response.read()
            response.close()
    finally:
        await t.close()
    assert seen == [None, None]


async def test_a_provider_that_cannot_be_reached_is_named_but_not_its_address() -> None:
    # A port nobody listens on: the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t = transport(f"http://127.0.0.1:{port}/v1")
    await t.start()
    try:
        with pytest.raises(UpstreamConnectError) as refused:
            await t.send(REQUEST)
    finally:
        await t.close()
    message = refused.value.message
    assert message == "p: the provider refused the connection", message
    assert refused.value.code == "connection_refused"
    assert "127.0.0.1" not in message and str(port) not in message, message
