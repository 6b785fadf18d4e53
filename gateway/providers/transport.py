"""The only module that does upstream HTTP: ``AiohttpTransport``, the default ``Transport``.

One pooled keep-alive ``aiohttp.ClientSession`` per provider, never one per request. aiohttp and
asyncio exceptions are translated here into the gateway's error tree, with the provider key
scrubbed from whatever the library says, so it cannot reach a log, an error body or a metric.

Timeouts: aiohttp keeps only the connect timeout (``sock_connect``, armed once per new
connection). The first byte, the gap between two reads and the total are one ``_Watchdog`` per
request: a single timer, re-armed only when it fires, that compares the clock with the start of
the current wait on the provider and with the request's deadline. aiohttp's ``sock_read`` would
cancel and re-arm a timer on every ``data_received``, and its total timeout arms another per
request; a read here costs two attribute writes and a read of the loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Final

import aiohttp

from gateway.errors import GatewayError, UpstreamBadResponse, UpstreamConnectError, UpstreamTimeout
from gateway.policy.model import Provider
from gateway.providers.base import UpstreamRequest

# A fixed User-Agent in the session's defaults: aiohttp would otherwise add its own (naming its
# version), and skipping it with ``skip_auto_headers`` costs a header set built per request.
_JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": "sophia-gateway"}
_IDLE: Final = float("inf")  # ``_Watchdog.since`` between two waits on the provider

Scrub = Callable[[str], str]


class AiohttpResponse:
    """An aiohttp response seen as an ``UpstreamResponse``."""

    __slots__ = ("_dog", "_errors", "_raw")

    def __init__(self, raw: aiohttp.ClientResponse, errors: _ErrorTranslation, dog: _Watchdog) -> None:
        self._raw = raw
        self._errors = errors
        self._dog = dog

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
            # nothing to time; no coroutine step, no clock read. Same errors as the loop below.
            if dog.expired is not None:
                raise dog.error(self._errors.name, "read")
            try:
                data = content.read_nowait(-1)
            except _LIBRARY_ERRORS as exc:
                raise self._errors.translate(exc) from None
            dog.stop()
            return data
        dog.adopt()
        clock = dog.loop.time
        parts: list[bytes] = []
        try:
            while True:
                if dog.expired is not None:
                    raise dog.error(self._errors.name, "read")
                dog.since = clock()
                chunk = await content.readany()
                dog.since = _IDLE
                if not chunk:
                    break
                parts.append(chunk)
        except asyncio.CancelledError:
            if dog.timed_out():
                raise dog.error(self._errors.name, "read") from None
            raise
        except _LIBRARY_ERRORS as exc:
            raise self._errors.translate(exc) from None
        dog.stop()  # the body is in: nothing more to time
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, without waiting for more than the socket has."""
        content = self._raw.content
        dog = self._dog
        dog.adopt()
        clock = dog.loop.time
        try:
            while True:
                if dog.expired is not None:
                    raise dog.error(self._errors.name, "read")
                dog.since = clock()
                chunk = await content.readany()
                dog.since = _IDLE
                if not chunk:
                    break
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
            raise UpstreamConnectError(f"{name}: stream ended early", provider=name)

    def close(self) -> None:
        self._dog.stop()
        self._raw.close()


class AiohttpTransport:
    """Sends one provider's requests on its own pooled session (see the module docstring)."""

    def __init__(self, name: str, config: Provider, headers: Mapping[str, str], scrub: Scrub) -> None:
        self._name = name
        self._config = config
        # Content-Type goes with the session's default headers: a request without headers of
        # its own then passes none, and aiohttp merges nothing per request.
        self._headers = {**_JSON_HEADERS, **headers}
        self._errors = _ErrorTranslation(name, scrub)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the session's, set by ``start``
        self._base_url = config.base_url
        t = config.timeouts
        self._gap_s = t.first_byte_s
        self._total_s = t.total_s
        # Only the connect timeout is aiohttp's: first byte, read gap and total are the watchdog's.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=None)

    async def start(self) -> None:
        """Open the pooled session (once, from the app's start-up)."""
        self._loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(
            limit=self._config.max_connections,
            limit_per_host=self._config.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            auto_decompress=True,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        if self._session is None:
            raise UpstreamConnectError(f"{self._name}: client not started", provider=self._name)
        dog = _Watchdog(self._loop or asyncio.get_running_loop(), self._gap_s, self._total_s)
        try:
            # Redirects are not followed: a provider's key must never be sent to another host.
            raw = await self._session.post(
                self._base_url + request.path,
                data=request.body,
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
        return AiohttpResponse(raw, self._errors, dog)


class _Watchdog:
    """One upstream request's first-byte, read-gap and total timeouts, on one lazy timer.

    ``since`` is when the current wait on the provider began (``_IDLE`` between waits: time the
    gateway spends writing to its own client is not the provider's silence). The timer is armed
    once, for the earliest moment a timeout could pass; when it fires it re-checks the clock and
    either re-arms for the next such moment or expires. If the task is waiting on the provider
    then, it is cancelled, and the waiting code turns that cancellation, and only that one, into
    an ``UpstreamTimeout`` (``timed_out``: the counting ``asyncio.timeout`` does, so a
    cancellation from elsewhere still propagates); otherwise the next read raises at once.
    """

    __slots__ = (
        "_cancelled", "_cancelling", "_deadline", "_gap_s", "_handle", "_task", "_total_s", "expired", "loop", "since"
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, gap_s: float, total_s: float) -> None:
        self.loop = loop
        now = loop.time()
        self._gap_s = gap_s
        self._total_s = total_s
        self._deadline = now + total_s
        self.since = now  # the request is being sent: waiting for its first byte from now
        self.expired: str | None = None  # what passed: "total" or "gap"
        self._cancelled = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.adopt()
        self._handle: asyncio.TimerHandle | None = loop.call_at(min(self._deadline, now + gap_s), self._fire)

    def adopt(self) -> None:
        """Time the current task's waits (a body may be read by another task than the send)."""
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0

    def stop(self) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None

    def timed_out(self) -> bool:
        """Whether the ``CancelledError`` being handled is this watchdog's (then it is consumed)."""
        self.since = _IDLE
        task = self._task
        return self._cancelled and task is not None and task.uncancel() <= self._cancelling

    def error(self, provider: str, phase: str) -> UpstreamTimeout:
        if self.expired == "total":
            what = f"no whole answer within total_s {self._total_s:g} s"
        elif phase == "first byte":
            what = f"no first byte within first_byte_s {self._gap_s:g} s"
        else:
            what = f"nothing read for first_byte_s {self._gap_s:g} s"
        return UpstreamTimeout(f"{provider}: provider timed out ({what})", provider=provider)

    def _fire(self) -> None:
        now = self.loop.time()
        since = self.since
        if now >= self._deadline:
            self.expired = "total"
        elif now >= since + self._gap_s:
            self.expired = "gap"
        else:  # not yet: the wait began after the timer was armed, or none is under way
            self._handle = self.loop.call_at(min(self._deadline, min(since, now) + self._gap_s), self._fire)
            return
        self._handle = None
        task = self._task
        if since != _IDLE and task is not None:  # waiting on the provider right now
            self._cancelled = True
            task.cancel()


# What the library raises that ``_ErrorTranslation`` turns into upstream errors. A plain
# ``try``/``except`` of these replaces an async context manager per send and per read (two
# coroutines each, even when nothing goes wrong).
_LIBRARY_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError, OSError)


class _ErrorTranslation:
    """Maps aiohttp/asyncio exceptions to the gateway's upstream errors, provider key scrubbed."""

    __slots__ = ("_scrub", "name")

    def __init__(self, name: str, scrub: Scrub) -> None:
        self.name = name
        self._scrub = scrub

    def translate(self, exc: BaseException) -> GatewayError:
        name = self.name
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamTimeout(f"{name}: provider timed out ({_describe(exc)})", provider=name)
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ContentTypeError)):
            return UpstreamBadResponse(
                f"{name}: provider sent a broken response ({self._scrub(_describe(exc))})", provider=name
            )
        return UpstreamConnectError(
            f"{name}: cannot reach provider ({self._scrub(_describe(exc))})", provider=name
        )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
