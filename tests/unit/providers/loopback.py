"""The real transport against a provider on loopback (an aiohttp app from the ``aiohttp_server``
fixture): shared by the transport's timeout and limit tests."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.transport import AiohttpTransport

Server = Callable[[web.Application], Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST = UpstreamRequest("/chat/completions", b"{}", False)


def transport(base_url: str, provider_fields: str = "") -> AiohttpTransport:
    """An ``AiohttpTransport`` for provider ``p`` at ``base_url``; ``provider_fields``: more of
    its policy keys, as YAML flow-mapping text (``timeouts: {...}, max_response_bytes: 1KiB``)."""
    extra = f", {provider_fields}" if provider_fields else ""
    text = (
        f"version: 1\nproviders:\n  p: {{kind: openai, base_url: '{base_url}'{extra}}}\n"
        "models:\n  m: {deployments: [{provider: p, model: x}]}\nmemory: {enabled: false}\n"
    )
    return AiohttpTransport("p", parse_policy(text).providers["p"], {}, lambda s: s)


async def upstream(aiohttp_server: Server, handler: Handler) -> str:
    """The base URL of a provider on loopback whose every POST is ``handler``'s."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


class RawUpstream:
    """A provider on loopback that fails below HTTP, each request as ``behaviour`` says, on a
    real socket: ``reset`` (an RST once the request is read), ``close`` (closed before any
    answer), ``mid-body`` (the head and part of the body, then closed), ``garbage`` (a head that
    is not HTTP), ``plain`` (plain HTTP to whatever comes: a TLS client gets no handshake)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        """Listen; the base URL (``http``, or ``https`` for ``plain``)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.behaviour == "plain" else "http"
        return f"{scheme}://127.0.0.1:{port}/v1"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            if self.behaviour == "plain":
                await reader.read(1)  # the TLS ClientHello's first byte
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            else:
                await reader.readuntil(b"\r\n\r\n")
            if self.behaviour == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # linger 0: the close sends an RST
                return
            if self.behaviour == "mid-body":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                    b'{"id": "chatcmpl-1", '
                )
            elif self.behaviour == "garbage":
                writer.write(b"garbage\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()
