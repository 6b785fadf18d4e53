"""The only module that does upstream HTTP: ``AiohttpTransport``, the default ``Transport``.

One pooled keep-alive ``aiohttp.ClientSession`` per provider, never one per request. aiohttp and
asyncio exceptions are translated here into the gateway's error tree, with the provider key
scrubbed from whatever the library says, so it cannot reach a log, an error body or a metric.

Timeouts: aiohttp keeps only the connect timeout (``sock_connect``, armed once per new
connection). The first byte, the gap between two reads and the total are one ``_Watchdog`` per
request, checked by one timer per transport (``_Watchdogs``), re-armed only when it fires, that
compares the clock with the start of each request's current wait on the provider and with its
deadline. aiohttp's ``sock_read`` would cancel and re-arm a timer on every ``data_received``, and
its total timeout arms another per request; a read here costs two attribute writes and a read of
the loop's clock, a request a dict insertion and removal.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Final

import aiohttp

from gateway.errors import GatewayError, UpstreamBadResponse, UpstreamConnectError, UpstreamTimeout
from gateway.policy.model import Provider
from gateway.providers import eager_writes, payload_guard
from gateway.providers.base import UpstreamRequest
from gateway.wire.forms import FormBody

# A fixed User-Agent in the session's defaults: aiohttp would otherwise add its own (naming its
# version), and skipping it with ``skip_auto_headers`` costs a header set built per request.
_JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": "sophia-gateway"}
_IDLE: Final = float("inf")  # ``_Watchdog.since`` between two waits on the provider

Scrub = Callable[[str], str]


class AiohttpResponse:
    """An aiohttp response seen as an ``UpstreamResponse``.

    ``limit`` (the provider's ``max_response_bytes``) bounds what one answer may make the gateway
    hold: a whole body (``read``), or one event of a stream (``chunks``: the bytes since the last
    blank line). A provider sending more is cut off with ``UpstreamBadResponse``, its connection
    closed, rather than read into memory until the total timeout."""

    __slots__ = ("_dog", "_errors", "_limit", "_raw")

    def __init__(
        self, raw: aiohttp.ClientResponse, errors: _ErrorTranslation, dog: _Watchdog, limit: int
    ) -> None:
        self._raw = raw
        self._errors = errors
        self._dog = dog
        self._limit = limit

    @property
    def status(self) -> int:
        return self._raw.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._raw.headers

    async def read(self) -> bytes:
        """The whole body. Read chunk by chunk, as ``chunks`` does, so the gap between two reads
        is timed as for a stream (aiohttp's ``read`` would be one long wait)."""
        content = self._raw.content
        dog = self._dog
        if content.is_eof():
            # The whole body came in with the headers (a small answer): nothing to wait for, so
            # nothing to time; no coroutine step, no clock read. Same errors as `chunks`.
            if dog.expired is not None:
                raise dog.error(self._errors.name, "read")
            try:
                data = content.read_nowait(-1)
            except _LIBRARY_ERRORS as exc:
                raise self._errors.translate(exc) from None
            dog.stop()
            if len(data) > self._limit:
                raise self._too_large("one answer")
            return data
        parts = [chunk async for chunk in self._timed(False)]  # timed gaps, as for a stream
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, without waiting for more than the socket has."""
        return self._timed(True)

    async def _timed(self, stream: bool) -> AsyncGenerator[bytes, None]:
        """The body's chunks, each wait on the provider timed by the watchdog, and bounded by
        the limit: the whole body, or (``stream``) each event."""
        content = self._raw.content
        dog = self._dog
        dog.adopt()
        clock = dog.loop.time
        limit = self._limit
        held = 0  # bytes of the body, or since the last chunk that held an event's end
        try:
            while True:
                if dog.expired is not None:
                    raise dog.error(self._errors.name, "read")
                dog.since = clock()
                chunk = await content.readany()
                dog.since = _IDLE
                if not chunk:
                    break
                # A healthy stream's chunk ends an event, found by the first search (~0.1k
                # instructions). An event's end split across two chunks is not seen: at worst
                # one more event counts against the limit.
                if stream and (
                    chunk.find(b"\n\n") >= 0 or chunk.find(b"\n\r\n") >= 0 or chunk.find(b"\r\r") >= 0
                ):
                    held = 0
                else:
                    held += len(chunk)
                    if held > limit:
                        raise self._too_large("one stream event" if stream else "one answer")
                yield chunk
        except asyncio.CancelledError:
            if dog.timed_out():
                raise dog.error(self._errors.name, "read") from None
            raise
        except _LIBRARY_ERRORS as exc:
            raise self._errors.translate(exc) from None
        dog.stop()
        if not content.is_eof():
            name = self._errors.name
            raise UpstreamConnectError(
                f"{name}: {_WORDS['connection_closed']}", provider=name, code="connection_closed"
            )

    def _too_large(self, what: str) -> UpstreamBadResponse:
        """The error for a body past the limit; the response is closed (its connection too: the
        rest of the body is never read)."""
        self._dog.stop()
        self._raw.close()
        name = self._errors.name
        return UpstreamBadResponse(
            f"{name}: provider sent more than max_response_bytes ({self._limit:,} bytes) in {what}",
            provider=name,
            code="response_too_large",
        )

    def close(self) -> None:
        self._dog.stop()
        raw = self._raw
        # Read to its end, the response has already given its connection back to the pool and
        # is closed; aiohttp's close() would then only mark the drained body as failed, a
        # set_exception whose future check raises and swallows an AttributeError (~2.5k
        # instructions a request). An unfinished one is closed, its connection with it.
        if not raw.closed:
            raw.close()


class AiohttpTransport:
    """Sends one provider's requests on its own pooled session (see the module docstring)."""

    def __init__(self, name: str, config: Provider, headers: Mapping[str, str], scrub: Scrub) -> None:
        self._name = name
        self._config = config
        # Content-Type goes with the session's default headers: a request without headers of
        # its own then passes none, and aiohttp merges nothing per request.
        self._headers = {**_JSON_HEADERS, **headers}
        self._errors = _ErrorTranslation(name, scrub, config.timeouts.connect_s)
        self._session: aiohttp.ClientSession | None = None
        self._dogs: _Watchdogs | None = None  # the requests' timeouts, on the session's loop
        self._base_url = config.base_url
        self._limit = config.max_response_bytes
        t = config.timeouts
        self._gap_s = t.first_byte_s
        self._total_s = t.total_s
        # Only the connect timeout is aiohttp's: first byte, read gap and total are the watchdog's.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=None)

    async def start(self) -> None:
        """Open the pooled session (once, from the app's start-up)."""
        loop = asyncio.get_running_loop()
        eager_writes.install(loop)  # a body written with its headers, no task (Python 3.11)
        self._dogs = _Watchdogs(loop, self._gap_s, self._total_s)
        connector = aiohttp.TCPConnector(
            limit=self._config.max_connections,
            limit_per_host=self._config.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        payload_guard.guard(connector, loop)  # a body whose framing breaks ends at once, not at a timeout
        # No cookie jar: the session is shared by every caller of this provider, so a cookie
        # one response set (a load balancer's affinity cookie, a session cookie) would be sent
        # on everyone else's requests after it. The gateway forwards no cookies either way.
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers=self._headers,
            timeout=self._timeout,
            auto_decompress=True,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._dogs is not None:
            self._dogs.close()

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        dogs = self._dogs
        if self._session is None or dogs is None:
            raise UpstreamConnectError(f"{self._name}: client not started", provider=self._name)
        dog = dogs.watch()
        try:
            # Redirects are not followed: a provider's key must never be sent to another host.
            # ``_request`` is the coroutine ``post`` wraps (aiohttp 3.x): ``post`` makes a
            # ``_RequestContextManager`` through a generic alias, whose ``__orig_class__``
            # assignment on a slotted object raises and swallows an AttributeError per call.
            # tests/integration/providers test this path on the pinned aiohttp range.
            raw = await self._session._request(
                "POST",
                self._base_url + request.path,
                data=body if isinstance(body := request.body, bytes) else FormPayload(body),
                headers=request.headers,
                allow_redirects=False,
            )
        except asyncio.CancelledError:
            dog.stop()
            if dog.timed_out():
                raise dog.error(self._name, "first byte") from None
            raise
        except _LIBRARY_ERRORS as exc:
            dog.stop()
            raise self._errors.translate(exc) from None
        except BaseException:
            dog.stop()
            raise
        dog.since = _IDLE
        return AiohttpResponse(raw, self._errors, dog, self._limit)


# The most of an upload's file handed to the socket in one write. aiohttp writes a bytes body
# whole: on Python before 3.12.9 it joins it to the request's headers first (no ``writelines``),
# and the socket transport copies whatever the kernel did not take at once (asyncio slices the
# rest and appends it to its buffer; uvloop slices it): two more copies of the whole body, held
# until it is sent. Written as views of this size, each waiting for the buffer to drain, an
# upload holds at most this much beyond the form (h-uploadcopy).
_FORM_WRITE_BYTES = 256 * 1024


class FormPayload(aiohttp.payload.Payload):
    """An upload's ``FormBody`` as aiohttp's payload: its pieces written in order, the files
    (the held form's own bytes) as ``memoryview`` slices of ``_FORM_WRITE_BYTES``, never joined
    or copied. Reusable: nothing is consumed, so a second send writes the same bytes."""

    _autoclose = True  # nothing to close: the bytes belong to the held form

    def __init__(self, body: FormBody) -> None:
        super().__init__(body, content_type=body.content_type)
        self._size = body.size
        self.body = body

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self.body).decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        left = self.body.size if content_length is None else content_length
        for part in self.body.parts:
            if left <= 0:
                return
            if len(part) <= _FORM_WRITE_BYTES and len(part) <= left:
                await writer.write(part)
                left -= len(part)
                continue
            view = memoryview(part)[:left]
            for start in range(0, len(view), _FORM_WRITE_BYTES):
                await writer.write(view[start : start + _FORM_WRITE_BYTES])
            left -= len(view)


class _Watchdogs:
    """One transport's watchdogs and the one timer they share.

    The timer is armed for the earliest moment any active watchdog could time out; when it
    fires it checks each of them (``_Watchdog.check``), expires those whose time has passed and
    re-arms for the next such moment. Starting a watchdog is a dict insertion (the timer is
    moved only when the new one could time out first), stopping one a removal: no timer is
    made or cancelled per request, against a ``call_at`` and a ``cancel`` each before.
    """

    __slots__ = ("_active", "_first_s", "_handle", "_when", "gap_s", "loop", "total_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, gap_s: float, total_s: float) -> None:
        self.loop = loop
        self.gap_s = gap_s
        self.total_s = total_s
        self._first_s = min(gap_s, total_s)  # the soonest a new request can time out
        self._active: dict[_Watchdog, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = _IDLE

    def watch(self) -> _Watchdog:
        """A started watchdog for a request being sent now."""
        now = self.loop.time()
        dog = _Watchdog(self, now)
        self._active[dog] = None
        when = now + self._first_s
        if when < self._when:
            self._arm(when)
        return dog

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = _IDLE

    def forget(self, dog: _Watchdog) -> None:
        self._active.pop(dog, None)  # the timer stays: when it fires it finds nothing to check

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._when = _IDLE
        now = self.loop.time()
        soonest = _IDLE
        for dog in list(self._active):
            when = dog.check(now)
            if when is None:
                del self._active[dog]
            elif when < soonest:
                soonest = when
        if soonest < self._when:
            self._arm(soonest)


class _Watchdog:
    """One upstream request's first-byte, read-gap and total timeouts, checked by its
    transport's shared timer (``_Watchdogs``).

    ``since`` is when the current wait on the provider began (``_IDLE`` between waits: time the
    gateway spends writing to its own client is not the provider's silence). The shared timer
    fires no later than the earliest moment a timeout could pass; each check either gives the
    next such moment or expires the watchdog. If the task is waiting on the provider then, it is
    cancelled, and the waiting code turns that cancellation, and only that one, into an
    ``UpstreamTimeout`` (``timed_out``: the counting ``asyncio.timeout`` does, so a
    cancellation from elsewhere still propagates); otherwise the next read raises at once.
    """

    __slots__ = ("_cancelled", "_cancelling", "_deadline", "_owner", "_task", "expired", "loop", "since")

    def __init__(self, owner: _Watchdogs, now: float) -> None:
        self._owner = owner
        self.loop = owner.loop
        self._deadline = now + owner.total_s
        self.since = now  # the request is being sent: waiting for its first byte from now
        self.expired: str | None = None  # what passed: "total" or "gap"
        self._cancelled = False
        # ``adopt``, inline (a call fewer per request)
        task = self._task = asyncio.current_task(self.loop)
        self._cancelling = task.cancelling() if task is not None else 0

    def adopt(self) -> None:
        """Time the current task's waits (a body may be read by another task than the send)."""
        # Given the loop: without it ``current_task`` asks for the running loop, whose cached
        # holder is checked against ``getpid()``, a system call per request.
        task = self._task = asyncio.current_task(self.loop)
        self._cancelling = task.cancelling() if task is not None else 0

    def stop(self) -> None:
        self._owner._active.pop(self, None)  # ``forget``, inline (twice a request)

    def timed_out(self) -> bool:
        """Whether the ``CancelledError`` being handled is this watchdog's (then it is consumed)."""
        self.since = _IDLE
        task = self._task
        return self._cancelled and task is not None and task.uncancel() <= self._cancelling

    def error(self, provider: str, phase: str) -> UpstreamTimeout:
        owner = self._owner
        if self.expired == "total":
            what, code = f"no whole answer within total_s {owner.total_s:g} s", "total_timeout"
        elif phase == "first byte":
            what, code = f"no first byte within first_byte_s {owner.gap_s:g} s", "first_byte_timeout"
        else:
            what, code = f"nothing read for first_byte_s {owner.gap_s:g} s", "read_timeout"
        return UpstreamTimeout(f"{provider}: provider timed out ({what})", provider=provider, code=code)

    def check(self, now: float) -> float | None:
        """At ``now``: the next moment to check again, or None once expired (then the task is
        cancelled if it is waiting on the provider)."""
        since = self.since
        gap_s = self._owner.gap_s
        if now >= self._deadline:
            self.expired = "total"
        elif now >= since + gap_s:
            self.expired = "gap"
        else:  # not yet: the wait began after the last check, or none is under way
            return min(self._deadline, min(since, now) + gap_s)
        task = self._task
        if since != _IDLE and task is not None:  # waiting on the provider right now
            self._cancelled = True
            task.cancel()
        return None


# What the library raises that ``_ErrorTranslation`` turns into upstream errors. A plain
# ``try``/``except`` of these replaces an async context manager per send and per read (two
# coroutines each, even when nothing goes wrong).
_LIBRARY_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError, OSError)
# How aiohttp's ``ClientPayloadError`` begins when the connection was lost inside a body
# (``client_proto.ResponseHandler.connection_lost``), as against a body it could not decode.
_CUT_SHORT = "Response payload is not completed"
# The connection's end, as the OS names it.
_RESET = frozenset({errno.ECONNRESET, errno.ECONNABORTED})
_CLOSED = frozenset({errno.EPIPE, errno.ESHUTDOWN})
_REFUSED = frozenset({errno.ECONNREFUSED})
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})

# What a client is told of a transport failure: the gateway's own words for each kind, keyed by
# the error's ``code`` (``errors.UPSTREAM_FAILURE_CODES``); what the library said is ``detail``.
_WORDS: Final = {
    "connection_refused": "the provider refused the connection",
    "connection_reset": "the provider reset the connection",
    "connection_closed": "the provider closed the connection before the answer was complete",
    "host_unreachable": "the provider's host cannot be reached",
    "dns_failure": "the provider's host name could not be resolved (DNS)",
    "tls_failure": "the TLS handshake with the provider failed",
    "connect_failed": "the gateway could not connect to the provider",
    "malformed_response": "the provider sent a malformed HTTP response",
}


class _ErrorTranslation:
    """Maps aiohttp/asyncio exceptions to the gateway's upstream errors: the message in the
    gateway's words naming the provider and the kind of failure (``code``), what the library
    said in ``detail`` (for the server's log only), provider key scrubbed."""

    __slots__ = ("_connect_s", "_scrub", "name")

    def __init__(self, name: str, scrub: Scrub, connect_s: float | None = None) -> None:
        self.name = name
        self._scrub = scrub
        self._connect_s = connect_s

    def translate(self, exc: BaseException) -> GatewayError:
        name = self.name
        detail = self._scrub(_describe(exc))
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            if isinstance(exc, aiohttp.ConnectionTimeoutError) and self._connect_s is not None:
                what, code = f"no connection within connect_s {self._connect_s:g} s", "connect_timeout"
            elif isinstance(exc, aiohttp.ConnectionTimeoutError):
                what, code = "no connection in time", "connect_timeout"
            else:
                what, code = "nothing read in time", "read_timeout"
            return UpstreamTimeout(
                f"{name}: provider timed out ({what})", provider=name, code=code, detail=detail
            )
        code = _failure_code(exc)
        cls = UpstreamBadResponse if code == "malformed_response" else UpstreamConnectError
        return cls(f"{name}: {_WORDS[code]}", provider=name, code=code, detail=detail)


def _failure_code(exc: BaseException) -> str:
    """The kind of failure (a key of ``_WORDS``) that ``exc``, not a timeout, shows."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        # Cut short: the connection closed inside the body, a provider that went away (a
        # stream's ``upstream_closed``); otherwise a body aiohttp could not decode.
        return "connection_closed" if str(exc).startswith(_CUT_SHORT) else "malformed_response"
    if isinstance(exc, (aiohttp.ClientResponseError, aiohttp.ContentTypeError)):
        return "malformed_response"  # a broken head (a bad status line, a header past its limit)
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return "tls_failure"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection_closed"  # before the head was complete
    if isinstance(exc, aiohttp.ClientConnectorError):
        error: OSError = exc.os_error
        if isinstance(error, socket.gaierror):
            return "dns_failure"
    elif isinstance(exc, OSError):
        error = exc
    else:
        return "connect_failed"
    number = error.errno
    if isinstance(error, ConnectionRefusedError) or number in _REFUSED:
        return "connection_refused"
    if isinstance(error, ConnectionResetError) or number in _RESET:
        return "connection_reset"
    if isinstance(error, BrokenPipeError) or number in _CLOSED:
        return "connection_closed"
    if number in _UNREACHABLE:
        return "host_unreachable"
    return "connect_failed"


def _describe(exc: BaseException) -> str:
    """What the library said, for the log: its class and text (the text of a connect or response
    error names the provider's host and port, or its URL: never a key, which is in a header)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
