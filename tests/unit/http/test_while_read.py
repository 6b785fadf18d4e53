"""``connection.while_read``: a write to a client that reads nothing is given up after one
``timeout_s`` window, over a real loopback socket whose reader never reads."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from gateway.http.connection import while_read

TIMEOUT_S = 0.4


@pytest.fixture
async def stalled() -> AsyncIterator[asyncio.StreamWriter]:
    """The server side of a connection whose client never reads, with the kernel's buffers
    full: what is written next waits in the transport's own buffer."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(server.sockets[0].getsockname())
    writer = await accepted
    transport = writer.transport
    transport.set_write_buffer_limits(high=1 << 30)  # never paused: the test watches the buffer
    while transport.get_write_buffer_size() == 0:  # until the kernel takes no more
        writer.write(b"x" * (1 << 20))
        await asyncio.sleep(0.01)
    try:
        yield writer
    finally:
        client.close()
        writer.close()
        server.close()
        await server.wait_closed()


async def test_a_client_reading_nothing_is_given_up_after_one_window(stalled: asyncio.StreamWriter) -> None:
    """The write's own bytes join the transport's buffer after ``while_read`` is called; read as
    the client's progress, they made the cut come a window late (twice the timeout)."""

    async def write() -> None:
        stalled.write(b"y" * 65536)
        await asyncio.Event().wait()  # as a drain that never ends

    started = time.monotonic()
    read = await while_read(stalled.transport, asyncio.ensure_future(write()), TIMEOUT_S)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert read is False
    assert TIMEOUT_S <= elapsed < TIMEOUT_S * 1.75, elapsed  # one window, not two


async def test_a_write_that_finishes_is_waited_for(stalled: asyncio.StreamWriter) -> None:
    async def write() -> str:
        await asyncio.sleep(TIMEOUT_S / 4)
        return "done"

    writing = asyncio.ensure_future(write())
    assert await while_read(stalled.transport, writing, TIMEOUT_S) is True  # type: ignore[arg-type]
    assert writing.result() == "done"
