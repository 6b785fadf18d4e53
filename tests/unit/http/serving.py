"""``app`` served on loopback by the gateway's connection handler (``GatewayRunner``, as ``serve``
runs it), for the tests that read its raw replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from gateway.http.connection import GatewayRunner


@asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[int]:
    """``app`` listening on a free loopback port (yielded) until the block ends."""
    runner = GatewayRunner(app, access_log=None, request_read_timeout_s=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
