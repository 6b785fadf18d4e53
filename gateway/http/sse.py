"""Write an answer stream to the client as Server-Sent Events, chunk by chunk.

Each chunk is written as soon as it arrives (no buffering). If the provider fails after the first
byte has gone out, failover is no longer possible: the stream ends with an OpenAI-style error
event and ``data: [DONE]`` so SDKs stop cleanly instead of hanging. The event says the stream's
fixed text (``errors.StreamInterrupted``); what went wrong in the provider's or a library's words
is logged here, as ``detail``. The stream itself does the bookkeeping (``service/streams.py``);
this module only writes, and always closes the stream, so a client that leaves closes the
provider request at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import NoReturn

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11
from aiohttp.http_writer import StreamWriter

from gateway import keys
from gateway.errors import GatewayError, StreamInterrupted
from gateway.http.connection import while_read
from gateway.http.middleware import draining_cut, draining_error, give_gateway_head
from gateway.http.responses import OnePassHead
from gateway.service.streams import AnswerStream
from gateway.wire.sse import DONE, encode

log = logging.getLogger("gateway.sse")

# A write waits on the client only once the connection's unsent bytes pass the transport's
# high-water mark (asyncio and uvloop: 64 KiB). With none unsent, a chunk under this cannot.
_BUFFERED = 16 * 1024

_CHUNKED = "Transfer-Encoding: chunked\r\n"
# aiohttp 3.12 and later keep a response's serialised headers in its writer until the first
# write (``_headers_buf``, ``send_headers``: aio-libs/aiohttp#10991); an older writer would never
# send the one-pass head it was handed, so there a stream takes aiohttp's own ``prepare``.
_WRITER_BUFFERS_HEADERS = hasattr(StreamWriter, "send_headers")

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies in front of us not to buffer either
}


class StreamAnswer(OnePassHead):
    """A stream's response whose status line and headers go out with its first chunk, in one
    write, not alone at ``prepare`` (aiohttp's ``StreamResponse`` sends them at once; its whole
    ``Response`` buffers them like this, the same attribute). ``send_stream`` prepares it only
    once the stream's first chunk is in hand (a provider stream is answered once its first chunk
    has arrived, so it can still fail over: ``service/streams.RoutedStream``), so nothing waits
    for it: each stream makes one system call and one TCP segment fewer, and its first byte
    carries its first event (ARCHITECTURE.md, twenty-ninth round). A stream that ends with no
    chunk sends them with its end (``write_eof``); one cut before any chunk sends nothing.

    The head is serialised in one pass (``responses.OnePassHead``: the gateway's own lines
    already serialised, ``head``), handed to aiohttp's writer as its buffered headers, so the
    writes, the chunked framing and the end are aiohttp's; anything the one pass does not cover
    goes through aiohttp's ``prepare``."""

    _send_headers_immediately = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        encoded = self.one_pass_head(request, _CHUNKED) if _WRITER_BUFFERS_HEADERS else None
        if encoded is None:
            if request.version < HttpVersion11:
                # No chunked framing before HTTP/1.1: the body ends when the connection does.
                # aiohttp's prepare drops the keep-alive header then but keeps the connection
                # open, so a client asking for keep-alive waited for an end that never came.
                self.force_close()
            return await super().prepare(request)
        # What ``StreamResponse._start`` leaves: the request, its writer, chunked framing, and
        # the headers buffered in the writer to go out with the first chunk (or the end).
        self._req = request
        writer = self._payload_writer = request._payload_writer
        self._must_be_empty_body = False
        writer.enable_chunking()
        writer._headers_buf = encoded  # type: ignore[attr-defined]  # (aiohttp's StreamWriter, as write_headers leaves it)
        writer._headers_written = False  # type: ignore[attr-defined]
        return writer


def stream_answer(
    request: web.Request, request_id: str, headers: Mapping[str, str] = _SSE_HEADERS
) -> StreamAnswer:
    """A 200 stream with ``headers`` (an event stream's by default) and the gateway's own
    (``middleware.give_gateway_head``: request id, route, cache, the key's rate limits), its call
    marked streaming."""
    response = StreamAnswer(status=200, headers=headers)
    call = request[keys.REQUEST_CALL]
    give_gateway_head(response, request_id, call)
    call.streaming = True
    return response


def _failure_fields(request_id: str, error: GatewayError) -> dict[str, str]:
    """The log's fields for a stream failed mid-way: its reason and, in ``detail`` only (never
    sent to the client), what the provider or the library said (key scrubbed at the transport)."""
    if isinstance(error, StreamInterrupted):
        return {
            "request_id": request_id,
            "provider": error.provider,
            "reason": error.reason,
            "detail": error.detail or "",
        }
    return {"request_id": request_id, "error": error.message}


async def _within(request: web.Request, write: Awaitable[None]) -> None:
    """``write`` to a client whose connection already holds unsent bytes; if it reads none of
    them for ``server.response_write_timeout_s`` (``while_read``: a stall, however long a slow
    reader takes), close its connection (ConnectionResetError, as
    for a client that left; aiohttp then cancels the handler): closing the stream closes the
    provider request. Without it a client that stopped reading (its TCP window full) held its
    handler, its provider connection and the buffered answer for as long as it kept the socket
    open, past the provider's ``total_s`` and through a drain."""
    stall_s = request.app[keys.POLICY].server.response_write_timeout_s
    transport = request.transport
    if transport is None:
        await write
        return
    if not await while_read(transport, asyncio.ensure_future(write), stall_s):
        _let_go(request, transport, stall_s)


def _let_go(request: web.Request, transport: asyncio.Transport, stall_s: float) -> NoReturn:
    log.info(
        "client stopped reading: connection closed",
        extra={"fields": {"request_id": request[keys.REQUEST_ID], "stalled_s": stall_s}},
    )
    transport.abort()
    raise ConnectionResetError("the client read nothing for response_write_timeout_s")


def error_event(error: GatewayError) -> bytes:
    """An SSE event carrying ``error`` in OpenAI's envelope, followed by ``[DONE]``."""
    return encode(error.body()) + DONE


async def send_stream(
    request: web.Request,
    stream: AnswerStream,
    request_id: str,
    error_event: Callable[[GatewayError], bytes] = error_event,
    *,
    media_type: str | None = None,
) -> web.StreamResponse:
    """Write ``stream`` to the client; a provider failure mid-stream ends it with ``error_event``
    (OpenAI's by default; a front door passes its own). ``media_type``: a binary answer's content
    type (speech's audio), its bytes relayed as they come; a failure mid-way can carry no error
    event, so the connection is cut before the body's end (its client reads an incomplete body,
    an error, never a shorter file taken for whole)."""
    # A binary answer keeps the stream's other headers: a proxy in front must not buffer it whole.
    headers = _SSE_HEADERS if media_type is None else {**_SSE_HEADERS, "Content-Type": media_type}
    response = stream_answer(request, request_id, headers)
    try:
        await response.prepare(request)
        transport = request.transport
        async for chunk in stream:
            if transport is not None and (transport.get_write_buffer_size() or len(chunk) >= _BUFFERED):
                # The client is behind, or this chunk may fill its window: the write may wait on
                # the client, within the policy's bound.
                await _within(request, response.write(chunk))
            else:
                await response.write(chunk)
    except GatewayError as error:
        log.warning("stream failed after first byte", extra={"fields": _failure_fields(request_id, error)})
        if media_type is not None:
            _cut(request)
            return response
        try:
            await _within(request, response.write(error_event(error)))
        except ConnectionResetError:
            return response
    except ConnectionResetError:
        return response  # the client left; closing the stream below closes the provider request
    except asyncio.CancelledError:
        if not response.prepared or not draining_cut(request):
            raise  # the client left (499)
        # The drain's grace ran out (``connection.GatewayRequestHandler.shutdown``) with the
        # client still reading: it gets its door's error event, as for a provider failing.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the stream is ended, not abandoned
        log.warning("stream cut by the drain", extra={"fields": {"request_id": request_id}})
        stream.drained()  # counted (reason draining) before ``aclose`` below books the rest
        if media_type is not None:
            _cut(request)
            return response
        try:
            await _within(request, response.write(error_event(draining_error())))
        except ConnectionResetError:
            return response
    finally:
        await stream.aclose()
    # The client may read [DONE] and close before the chunked encoding's last bytes go out: the
    # stream was delivered. Unguarded, that race (a tracing test hit it in CI) turned a served
    # stream into an "unhandled error", a 500 in the metrics and the access log. (A try, not
    # ``contextlib.suppress``: that is three Python calls per stream.)
    try:
        transport = request.transport
        if transport is not None and transport.get_write_buffer_size():
            await _within(request, response.write_eof())
        else:
            await response.write_eof()
    except ConnectionResetError:
        pass
    return response


def _cut(request: web.Request) -> None:
    """End a binary answer short: the connection closed without the chunked body's end."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _kernel_queue(sock: socket.socket | None) -> int:
    """Bytes in ``sock``'s kernel send queue not yet acknowledged by the client's side (Linux's
    SIOCOUTQ, the same request as TIOCOUTQ): sent and in flight, or waiting for the client's
    window to open; 0 where the kernel does not say."""
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError):  # not a TCP socket here, or closed meanwhile
        return 0


async def send_paced(
    request: web.Request,
    response: web.StreamResponse,
    events: AsyncIterator[bytes],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Write ``events`` (small, paced by their source: a job's progress every
    ``progress_interval_s``) to ``response``, prepared, then its end. A client that stops reading
    is let go (its connection aborted, as ``send_stream``'s) once nothing of what it has not
    acknowledged went to it for ``server.response_write_timeout_s``: a write that waits on it,
    as for any stream (``_within``), and also the writes that do not. A few hundred bytes a pace
    take hours to fill a kernel's send buffer (autotuned to 4 MiB on loopback without the client
    reading a byte: 95 minutes at 0.5 s a pace), and until then no write waits and the transport
    holds nothing unsent, so the bound on waiting writes alone let the stream run on, unread,
    until its job ended. What the client has not acknowledged (the transport's unsent bytes and
    the kernel's queue, ``_kernel_queue``) stops going down once its receive buffer is full; the
    check is at each event, so the client is let go within the timeout and one pace of that.
    A client that left ends it too; the caller closes ``events``."""
    stall_s = request.app[keys.POLICY].server.response_write_timeout_s
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    pending = 0  # bytes the client had not acknowledged just after the last write
    stalled_since: float | None = None  # since when they have not gone down
    try:
        async for data in events:
            if transport is None:
                await response.write(data)
                continue
            now, unsent = clock(), transport.get_write_buffer_size()
            waiting = unsent + _kernel_queue(sock)
            if waiting < pending or not waiting:
                stalled_since = None  # the client took some since the last write
            elif stalled_since is not None and now - stalled_since >= stall_s:
                _let_go(request, transport, stall_s)
            if unsent or len(data) >= _BUFFERED:
                await _within(request, response.write(data))
            else:
                await response.write(data)
            pending = transport.get_write_buffer_size() + _kernel_queue(sock)
            if pending and stalled_since is None:
                stalled_since = now
        if transport is not None and transport.get_write_buffer_size():
            await _within(request, response.write_eof())
        else:
            await response.write_eof()
    except ConnectionResetError:
        return  # the client left, or was let go
