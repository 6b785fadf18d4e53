"""Client connections: a deadline for reading each request, and protocol errors in OpenAI's envelope.

aiohttp has one timer per connection, ``keepalive_timeout``: armed when a connection opens and
after each response, it closes the connection if no complete request has arrived by then. With
its default of 3,630 s it is also the only bound on a client that connects and sends nothing, or
sends its headers a byte at a time (slowloris): aiohttp has no header-read timeout. So:

- ``keepalive_timeout_s`` (policy ``server``) is aiohttp's own timer: how long an idle connection
  is kept between requests.
- ``request_read_timeout_s``: a new connection must deliver a request's complete headers within
  it, and so must a kept-alive connection from the first byte of its next request; otherwise the
  connection is closed. The body has the same time again once the handler reads it
  (``http/body.py``: 408).

The deadline lives in a subclass of aiohttp's ``RequestHandler`` (the per-connection protocol).
It uses the asyncio protocol callbacks and two attributes of aiohttp's handler: ``_request_count``
(requests parsed on this connection: headers complete) and ``_waiter`` (pending while waiting for
a request: aiohttp's own keep-alive timer uses the same test). ``tests/e2e/test_http_hardening.py``
checks the behaviour against the installed aiohttp.

Requests aiohttp cannot parse (a 100 KB header, too many headers, a bad request line) never reach
the application, so the middleware cannot answer them; ``handle_error`` does, in OpenAI's envelope
(Anthropic's, with ``request-id``, when the last request line received was under /v1/messages)
with an ``x-request-id``, logging one WARNING line instead of aiohttp's ERROR traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.errors import GatewayError, HTTPStatusError, InternalError, InvalidRequest
from gateway.http.body import WithholdsContinue
from gateway.http.dispatch import PlainRoutes
from gateway.http.middleware import SERVER, new_request_id
from gateway.http.responses import MESSAGES_PATH, WholeJSON, anthropic_error_response, error_response

log = logging.getLogger("gateway.http")

# At the end of the drain grace, how long a request the drain cancels has to end its answer (a
# stream's error event, a whole answer's 503) before its connection is closed.
DRAIN_CUT_S = 0.5
# How long a client never asked for its body (a refusal before its ``100 Continue``) may stay
# silent after the answer before its connection is closed (``_drain_unasked``): nginx's
# ``lingering_timeout`` is 5 s; a client told nothing has no reason to send at all.
UNASKED_IDLE_S = 1.0
# ``server.response_write_timeout_s``'s default (the policy's; this is for callers without one).
DEFAULT_WRITE_TIMEOUT_S = 30.0
_SMALL_BODY = 16 * 1024
_MAX_DETAIL_CHARS = 200
# A request line under Anthropic's door, the last one in a chunk (pipelined requests come first).
_ANTHROPIC_LINE = re.compile(
    rb"[A-Z]+ " + re.escape(MESSAGES_PATH.encode()) + rb"(?:[/?][^ \r\n]*)? HTTP/1\.[01]\r\n"
)


class GatewayRequestHandler(RequestHandler, WithholdsContinue):
    """aiohttp's connection handler with a request-read deadline and OpenAI-format protocol errors."""

    __slots__ = (
        "_last_data",
        "_read_deadline",
        "_read_timeout_s",
        "_write_timeout_s",
        "continue_withheld",
        "peer",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        request_read_timeout_s: float,
        response_write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeout_s = request_read_timeout_s
        self._write_timeout_s = response_write_timeout_s
        self._read_deadline: asyncio.TimerHandle | None = None
        # The bytes last received (a reference, no copy): a request aiohttp cannot parse reaches
        # ``handle_error`` without its path, and these show whether it was for Anthropic's door.
        self._last_data = b""
        # A request's 100 Continue withheld and not yet sent (``body.withhold_continue``).
        self.continue_withheld = False
        # A connection on this worker's Unix socket: another worker of a ``serve --workers`` set
        # asking (``api/peers.py``), whose requests are not clients' (``middleware.handle``).
        self.peer = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self.peer = sock is not None and sock.family == socket.AF_UNIX
        self._arm_read_deadline()  # a silent connection is closed when it passes

    def data_received(self, data: bytes) -> None:
        self._last_data = data
        parsed = self._request_count
        _received(self, data)  # aiohttp's, without a ``super()`` object per read
        if self._request_count != parsed:
            messages = self._messages
            if messages:
                last = messages[-1][0]
                if isinstance(last, _ErrInfo):  # (the parser refused something: rare)
                    self._end_body_in_error(messages)
                elif last.version is not HttpVersion11 and last.version not in _HTTP1:
                    _refuse_versions(messages, self._request_count - parsed)
            if self._read_deadline is not None:  # a request's headers are complete
                self._disarm_read_deadline()
        elif self._read_deadline is None and (waiter := self._waiter) is not None and not waiter.done():
            self._arm_read_deadline()  # the first bytes of the next request on a kept-alive connection

    def _end_body_in_error(self, messages: Any) -> None:
        """The parser refused bytes inside a request's body (its chunked framing, a chunk
        extension, its trailers): aiohttp queues the error as a request of its own and leaves
        the body unfinished, so the handler reading it waited ``request_read_timeout_s``,
        answered 408, and the connection lingered 10 s more (an outside probe). The error goes to
        that body instead: its reader raises a 400 ``malformed_http_request`` in the route's
        envelope, with ``Connection: close`` (nothing after the error can be framed). An error
        after a whole body (a bad next request) is left to aiohttp, which answers it."""
        if len(messages) > 1:
            payload, current = messages[-2][1], False  # its request is queued: it will read it
        else:
            request = self._current_request
            payload, current = (request._payload if request is not None else None), True
        if not isinstance(payload, StreamReader) or payload.is_eof():
            return
        info = messages.pop()[0]
        detail = _one_line(info.message)
        log.warning("malformed http request body", extra={"fields": {"status": 400, "error": detail}})
        payload.set_exception(
            InvalidRequest(
                f"Malformed HTTP request: {detail}" if detail else "Malformed HTTP request.",
                code="malformed_http_request",
                headers={"connection": "close"},
            )
        )
        payload.feed_eof()  # (no lingering read of a body that cannot go on)
        if current:
            self.close()  # no further request: the connection ends once this one is answered

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Drain this connection: the request in progress may run for ``timeout`` (the drain
        grace), then it is cancelled and has ``DRAIN_CUT_S`` to end its answer before the
        connection closes. aiohttp's own waits ``timeout`` for the handler, then cancels only the
        request's body and waits ``timeout`` again: a stream still running at the end of
        ``server.drain_grace_s`` ran for twice the grace (60 s for 30), past a pod's
        ``terminationGracePeriodSeconds``, and was then cut without an error event."""
        task = self._task_handler
        if timeout is not None and self._request_in_progress and task is not None:
            self._force_close = True  # no further request on this connection
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
            waiter = self._handler_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                self._handler_waiter = None
                task = self._task_handler  # None if the client left meanwhile
                if task is not None and not task.done():
                    task.cancel()  # the handler tells this cut from a client leaving: ``middleware.draining_cut``
            timeout = DRAIN_CUT_S
        await super().shutdown(timeout)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """aiohttp's (write the response, or its end), bounded by ``response_write_timeout_s``
        when it may wait on the client: a whole answer that a client never reads (its TCP window
        full, its socket open) held the handler's task, the connection and the answer's unsent
        bytes for as long as the client kept the socket, out of ``gateway_requests_in_flight``
        (5 answers of 8 MB: +5 tasks, +89 MB resident); and aiohttp's close of a connection waits
        for its unsent bytes. A body of a few KiB to a connection with nothing unsent cannot
        wait: no timer then.

        An answer to a request whose ``100 Continue`` was withheld (a refusal before its body was
        asked for), its body not all in: ``Connection: close``, and once the answer is written
        the connection is half-closed (``_end_unasked``)."""
        if self.continue_withheld:
            self.continue_withheld = False
            if not request.content.is_eof():
                return await self._end_unasked(request, resp, start_time)
        transport = self.transport
        if transport is None:
            return await _finish(self, request, resp, start_time)
        if (
            type(resp) is WholeJSON
            and not transport.get_write_buffer_size()
            and len(resp._body) < _SMALL_BODY  # type: ignore[arg-type]
            and not self._upgraded
        ):
            # A whole JSON answer that cannot wait on the client: written in one pass, without
            # aiohttp's prepare and write_eof coroutines (``responses.WholeJSON``), unless it
            # needs them (then ``write_now`` wrote nothing).
            request._finish()
            try:
                written = resp.write_now(request, transport)
            except ConnectionError:
                self.log_access(request, resp, start_time)
                return resp, True
            if written:
                if self._logging_enabled:
                    self.log_access(request, resp, start_time)
                if unsent := transport.get_write_buffer_size():
                    # The socket was full (a client that stopped reading): watched as below.
                    self._loop.call_later(
                        self._write_timeout_s, _watch_unsent, transport, self._write_timeout_s, unsent
                    )
                return resp, False
        if not transport.get_write_buffer_size() and _small(resp):
            finished = await _finish(self, request, resp, start_time)
        else:
            finishing = asyncio.ensure_future(_finish(self, request, resp, start_time))
            if not await while_read(transport, finishing, self._write_timeout_s):
                _let_go(transport, self._write_timeout_s)
                return resp, True
            finished = finishing.result()
        if unsent := transport.get_write_buffer_size():
            # Written, but not all sent: the bytes wait in the transport, and a closed or kept-alive
            # connection keeps them (and its socket) until the client reads them. Watched, so a
            # client that reads none of them for the timeout is let go.
            self._loop.call_later(
                self._write_timeout_s, _watch_unsent, transport, self._write_timeout_s, unsent
            )
        return finished

    async def _end_unasked(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Answer a request never asked for its body, then end the connection promptly. aiohttp
        would keep it up to ``lingering_time`` (10 s) after the answer, reading a body the
        client, told nothing, does not send. Closing it outright risks the answer: a client that
        did send (it need not wait for ``100 Continue``) gets a reset for its unread bytes, which
        may discard the answer before it is read (RFC 9112 9.6). So the close is staged: the
        answer with ``Connection: close``, then this side's FIN (``write_eof``): the client sees
        the end at once and closes its side, which ends the connection (its task is cancelled:
        ``handler_cancellation``); what it still sends is read and dropped while it keeps coming
        (``_drain_unasked``)."""
        if not resp.prepared:
            resp.force_close()
        finished = await self.finish_response(request, resp, start_time)
        transport = self.transport
        if transport is None or finished[1] or transport.is_closing():
            return finished
        if transport.can_write_eof():
            transport.write_eof()  # (sent once the answer's bytes are: they are queued before it)
        await self._drain_unasked(request.content)
        return finished

    async def _drain_unasked(self, payload: StreamReader) -> None:
        """Read and drop what a client never asked for its body still sends, while it keeps
        sending: until it stops for ``UNASKED_IDLE_S`` (nginx's ``lingering_timeout``), at most
        ``lingering_time`` in all; then aiohttp closes the connection (no lingering of its own
        after this: the answer said ``Connection: close``). aiohttp's lingering bounds only the
        whole wait, so a silent client kept it for all of its 10 s."""
        loop = self._loop
        end_s = loop.time() + self._lingering_time
        self._lingering_time = 0.0  # (this connection's last request: it closes after this)
        try:
            while not payload.is_eof() and (left_s := end_s - loop.time()) > 0:
                async with asyncio.timeout(min(UNASKED_IDLE_S, left_s)):
                    await payload.readany()
        except (TimeoutError, HttpProcessingError, ConnectionError):
            return  # silent, or a body that cannot be read: nothing more to wait for

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The response to a request aiohttp could not parse (or, as a last resort, to an error
        that escaped the middleware); the connection is closed after it, as aiohttp does."""
        if request.writer.output_size > 0:
            # As aiohttp: a response has begun, so no other can be sent; the connection drops.
            raise ConnectionError("a response was already started; cannot send the error")
        request_id = new_request_id()
        error: GatewayError
        if status == _VERSION_NOT_SUPPORTED:  # (``_refuse_versions``)
            log.warning(
                "http version not supported",
                extra={"fields": {"request_id": request_id, "status": status, "error": message or ""}},
            )
            error = HTTPStatusError(status, message or "HTTP version not supported.")
        elif status >= 500:
            log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
            error = InternalError(f"The gateway hit an internal error. Request id: {request_id}.")
        else:
            detail = _one_line(message or (str(exc) if exc is not None else ""))
            log.warning(
                "malformed http request",
                extra={"fields": {"request_id": request_id, "status": status, "error": detail}},
            )
            text = f"Malformed HTTP request: {detail}" if detail else "Malformed HTTP request."
            if status == 400:
                error = InvalidRequest(text, code="malformed_http_request")
            else:
                error = HTTPStatusError(status, text)
        anthropic = _anthropic_door(self._last_data)
        response = (anthropic_error_response if anthropic else error_response)(error, request_id)
        if anthropic:
            response.headers["request-id"] = request_id  # as on every answer under /v1/messages
        response.headers["Server"] = SERVER
        response.headers["x-request-id"] = request_id
        response.force_close()
        return response

    def _waiting_for_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_read_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self._read_deadline = loop.call_later(self._read_timeout_s, self._read_deadline_passed)

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_deadline_passed(self) -> None:
        self._read_deadline = None
        if self._waiting_for_request():  # never cut a request that is being handled
            self.force_close()


class GatewayServer(web.Server):
    """aiohttp's low-level server, making a ``GatewayRequestHandler`` per connection."""

    def __init__(
        self,
        handler: Any,
        *,
        request_read_timeout_s: float,
        response_write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.request_read_timeout_s = request_read_timeout_s
        self.response_write_timeout_s = response_write_timeout_s

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(
            self,
            loop=self._loop,
            request_read_timeout_s=self.request_read_timeout_s,
            response_write_timeout_s=self.response_write_timeout_s,
            **self._kwargs,
        )


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a ``GatewayServer``; other arguments are AppRunner's
    (``keepalive_timeout``, ``lingering_time``... go to every connection's handler)."""

    __slots__ = ("_request_read_timeout_s", "_response_write_timeout_s")

    def __init__(
        self,
        app: web.Application,
        *,
        request_read_timeout_s: float,
        response_write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._request_read_timeout_s = request_read_timeout_s
        self._response_write_timeout_s = response_write_timeout_s

    async def _make_server(self) -> web.Server:
        # AppRunner's own: runs the app's start-up and builds aiohttp's server with the handler
        # arguments it would use; the same, but making our connection handler.
        plain = await super()._make_server()
        return GatewayServer(
            PlainRoutes(self._app),  # (``plain.request_handler`` is the app's ``_handle``: it calls it)
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            request_read_timeout_s=self._request_read_timeout_s,
            response_write_timeout_s=self._response_write_timeout_s,
            **plain._kwargs,
        )


async def while_read(transport: asyncio.Transport, writing: asyncio.Future[Any], timeout_s: float) -> bool:
    """Wait for ``writing`` (a write, or a response's finish, that may wait on the client) as long
    as the client reads: False, with ``writing`` cancelled, once the connection's unsent bytes
    stayed the same for a whole ``timeout_s`` (it read nothing). The bound is on a stall, never
    on the whole write: a slow client reading a large answer (a 30 MB embeddings answer on a slow
    link) gets all of it, where a bound on the whole write cut it (h-leaks' first version).
    The first window's baseline is taken once ``writing`` has run its first step, which puts its
    bytes in the transport's buffer: taken before, that growth read as the client's progress and
    the cut came a window late (at twice the timeout; an outside probe)."""
    try:
        if not writing.done():
            await asyncio.sleep(0)  # (a task just made runs its first step before this resumes)
        unsent = transport.get_write_buffer_size()
        while True:
            done, _ = await asyncio.wait((writing,), timeout=timeout_s)
            if done:
                writing.result()  # its error, if any, is the caller's
                return True
            now = transport.get_write_buffer_size()
            if now == unsent:  # nothing sent (nor written) for the whole timeout
                writing.cancel()
                return False
            unsent = now
    except BaseException:
        writing.cancel()
        raise


def _watch_unsent(transport: asyncio.Transport, timeout_s: float, before: int) -> None:
    """``timeout_s`` after ``transport`` held ``before`` unsent bytes: all sent, nothing to do;
    fewer, look again later; as many or more (the client read none), close it (abort: a close
    waits for the bytes)."""
    unsent = transport.get_write_buffer_size()
    if not unsent:
        return
    if unsent >= before:
        _let_go(transport, timeout_s)
        return
    asyncio.get_running_loop().call_later(timeout_s, _watch_unsent, transport, timeout_s, unsent)


def _let_go(transport: asyncio.Transport, timeout_s: float) -> None:
    log.info("client stopped reading: connection closed", extra={"fields": {"stalled_s": timeout_s}})
    transport.abort()


# aiohttp's own, called as a function: ``super()`` made an object per response (issue 12).
_finish = RequestHandler.finish_response
_received = RequestHandler.data_received
_BYTES = (bytes, bytearray)  # a tuple: ``bytes | bytearray`` made a union per call


def _small(resp: web.StreamResponse) -> bool:
    """Whether finishing ``resp`` cannot wait on a client whose connection has nothing unsent: a
    whole body under the transport's high-water mark (asyncio and uvloop: 64 KiB), or a stream
    already ended (``http/sse.py`` bounds a stream's own writes)."""
    if isinstance(resp, web.Response):
        body = resp.body
        return body is None or (isinstance(body, _BYTES) and len(body) < _SMALL_BODY)
    return resp.prepared


_HTTP1 = (HttpVersion11, HttpVersion10)
_VERSION_NOT_SUPPORTED = 505


def _refuse_versions(messages: Any, count: int) -> None:
    """The ``count`` requests just parsed that are neither HTTP/1.1 nor 1.0 (``HTTP/2.0`` or
    ``HTTP/0.9`` with HTTP/1 framing, which aiohttp's parser takes, and aiohttp echoed in its
    answer's status line: ``HTTP/2.0 200 OK``; an outside probe) become aiohttp's error
    requests: a 505 (RFC 9110 15.6.6) from ``handle_error``, and the connection closes."""
    for i in range(len(messages) - count, len(messages)):
        message, _payload = messages[i]
        if type(message) is not _ErrInfo and message.version not in _HTTP1:
            version = f"HTTP/{message.version.major}.{message.version.minor}"
            text = f"{version} is not supported here: send HTTP/1.1 (or HTTP/1.0)."
            messages[i] = (
                _ErrInfo(status=_VERSION_NOT_SUPPORTED, exc=ValueError(text), message=text),
                EMPTY_PAYLOAD,
            )


def _one_line(text: str) -> str:
    """aiohttp's parser messages span lines (the bad bytes, a caret under them): one short line,
    without the bytes, which may be a credential (``b'Authorization: Bearer sk-...'``)."""
    text = _QUOTED_BYTES.sub("", text).replace(" ^", "")
    return " ".join(text.split()).rstrip(" :.")[:_MAX_DETAIL_CHARS]


# A bytes repr in a parser message: b'...' or b"..." (escaped quotes inside are skipped over).
_QUOTED_BYTES = re.compile(r"""\bb'(?:[^'\\]|\\.)*'?|\bb"(?:[^"\\]|\\.)*"?""", re.DOTALL)


def _anthropic_door(data: bytes) -> bool:
    """Whether the last request line in ``data`` is for /v1/messages (its errors in Anthropic's
    envelope); False when it is another path or not in ``data`` (a header sent in pieces)."""
    start = data.rfind(b" HTTP/1.")
    if start < 0:
        return False
    line_start = data.rfind(b"\n", 0, start) + 1
    return _ANTHROPIC_LINE.match(data, line_start) is not None
