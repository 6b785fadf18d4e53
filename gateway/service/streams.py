"""Answer streams: a routed provider stream that does its own bookkeeping when it ends, and the
replay of a cached one.

The HTTP layer iterates a stream once and always closes it (``aclose``); everything that depends
on how the stream ended (the router's verdict, usage and cost, time to first token, the cache
write, waking identical requests) happens here, through the ``StreamBook`` the service gives,
whichever way it ends: whole, cut by the provider, or abandoned by the client.

A stream the provider fails after its first byte went out is given one of ``STREAM_ERROR_REASONS``
(``stream_error_reason``): the ``reason`` of ``gateway_stream_errors_total``, the access log's
``stream_error`` and the client's error event. A client that leaves is not the gateway failing:
its stream is abandoned, never a stream error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from gateway.errors import (
    GatewayError,
    UpstreamBadEvent,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.providers.base import StreamTranslator, UpstreamResponse

# Why a stream failed after its first byte (a small fixed set: a metric label):
#   upstream_closed  the provider closed or reset the connection, or ended its stream without the
#                    answer's end (no [DONE], message_stop, finish reason)
#   timeout          the provider went quiet for longer than its read timeout (or past its total)
#   bad_event        the provider sent an event the gateway cannot read (not JSON, past
#                    max_response_bytes, a broken body encoding)
#   provider_error   the provider sent an error event in the middle of the answer (never relayed:
#                    the client gets the gateway's, which quotes the provider's message, bounded)
#   draining         the gateway was shutting down and the stream outlasted the drain's grace
STREAM_ERROR_REASONS = ("upstream_closed", "timeout", "bad_event", "provider_error", "draining")


def stream_error_reason(error: GatewayError, *, at_end: bool = False) -> str:
    """The reason (``STREAM_ERROR_REASONS``) of ``error``, raised while a started stream was read
    (``at_end``: by its translator once the provider's body had ended)."""
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamStatusError):
        return "provider_error"
    if isinstance(error, UpstreamBadEvent):
        return "bad_event"  # (a translator may raise it at the end: it was seen before)
    if at_end or isinstance(error, UpstreamConnectError):
        return "upstream_closed"  # (a translator's finish raises only for an answer without its end)
    return "bad_event"


class AnswerStream(Protocol):
    """What the HTTP layer writes out: iterate once, then ``aclose()`` whatever happened."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...

    def drained(self) -> None:
        """The drain's grace ran out with the stream still going: it is ended (then closed)."""
        ...


class StreamBook(Protocol):
    """The service's bookkeeping for a routed stream (see ``service.calls``)."""

    def first_chunk(self, stream: RoutedStream) -> None: ...

    async def ended(self, stream: RoutedStream) -> None: ...

    def failed(self, stream: RoutedStream, error: GatewayError, reason: str) -> GatewayError:
        """Book a stream failed after its first chunk; the error its client is to see."""
        ...

    def abandoned(self, stream: RoutedStream) -> None: ...

    def drained(self, stream: RoutedStream) -> None: ...


class ReplayStream:
    """A cached stream's stored SSE bytes, sent as they were first sent."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def body(self) -> bytes:
        return self._body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body

    async def aclose(self) -> None:
        return None

    def drained(self) -> None:
        return None  # all sent at once: there is nothing to cut


class RoutedStream:
    """A provider stream in OpenAI SSE whose first chunk has arrived (so a provider that failed
    before it was failed over unseen). ``captured`` keeps every byte sent when the answer may be
    cached (``capture``: at most that many bytes, the cache category's space, past which it is let
    go: such an answer could not be stored anyway); ``events`` counts SSE events, a stand-in for
    output tokens when no usage comes, unless the answer is ``binary`` (speech: its bytes, or its
    ``speech.audio.delta`` events, are audio; an image stream's events are pictures: not text
    tokens, none are counted)."""

    __slots__ = (
        "_book",
        "_capture",
        "_iterator",
        "_response",
        "_settled",
        "_source",
        "binary",
        "captured",
        "events",
        "first",
        "first_at",
        "translator",
    )

    def __init__(
        self,
        first: bytes,
        response: UpstreamResponse,
        source: AsyncGenerator[bytes, None],
        translator: StreamTranslator,
        book: StreamBook,
        *,
        capture: int,
        binary: bool = False,
    ) -> None:
        self.first = first
        self.binary = binary
        self.translator = translator
        self.captured: bytearray | None = bytearray() if capture > 0 else None
        self._capture = capture
        self.events = 0
        self.first_at = 0.0  # perf_counter() when the first chunk went out
        self._response = response
        self._source = source  # the provider's chunks, already read up to ``first``
        self._book = book
        self._iterator: AsyncIterator[bytes] | None = None
        self._settled = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def aclose(self) -> None:
        """Close the provider request; a stream not read to its end gets no verdict."""
        if self._settled:  # it ended (whole or failed): its generators are done, its response closed
            return
        iterator = self._iterator
        if iterator is not None:
            await iterator.aclose()  # type: ignore[attr-defined]
        await self._source.aclose()
        self._response.close()
        if not self._settled:
            self._settled = True
            self._book.abandoned(self)

    def drained(self) -> None:
        """Count a stream the drain cut (``aclose`` then does the rest, as for a client that left:
        no verdict on the provider)."""
        if not self._settled:
            self._book.drained(self)

    @property
    def content_type(self) -> str:
        """The provider's ``Content-Type`` (a binary answer's, relayed with it)."""
        return self._response.headers.get("Content-Type") or "application/octet-stream"

    def output_tokens(self) -> int:
        """Output tokens the provider reported, else about one per content event."""
        usage = self.translator.usage()
        tokens = usage.get("completion_tokens") if usage else None
        if isinstance(tokens, int):
            return tokens
        return 0 if self.binary else max(0, self.events - 2)

    async def _run(self) -> AsyncIterator[bytes]:
        translator = self.translator
        try:
            self.first_at = time.perf_counter()
            self._book.first_chunk(self)
            yield self._keep(self.first)
            # A failure held after the events before it (``StreamTranslator.failing``) is raised
            # once they went out, not after the provider's next bytes: a provider that sent
            # content and its error event in one chunk and then stalled held the client until
            # the read timeout.
            if translator.failing:
                translator.feed(b"")
            captured = self.captured
            async for chunk in self._source:
                out = translator.feed(chunk)
                if out:  # _keep, inline: one method call less per chunk
                    self.events += out.count(b"data:")
                    if captured is not None:
                        captured += out
                        if len(captured) > self._capture:
                            self._let_go()
                            captured = None
                    yield out
                if translator.failing:
                    translator.feed(b"")
        except GatewayError as error:
            raise self._fail(error, stream_error_reason(error)) from error
        try:
            tail = translator.finish()
        except GatewayError as error:
            raise self._fail(error, stream_error_reason(error, at_end=True)) from error
        if tail:
            yield self._keep(tail)
        self._response.close()
        self._settled = True
        await self._book.ended(self)

    def _fail(self, error: GatewayError, reason: str) -> GatewayError:
        """The stream failed for ``reason``: booked, and the error for its client's error event
        (a fixed text per reason: ``error`` may carry what a library said, hosts and URLs)."""
        self._response.close()
        if self.captured is not None:
            self.captured.clear()
        self._settled = True
        return self._book.failed(self, error, reason)

    def _keep(self, chunk: bytes) -> bytes:
        self.events += chunk.count(b"data:")
        if self.captured is not None:
            self.captured += chunk
            if len(self.captured) > self._capture:
                self._let_go()
        return chunk

    def _let_go(self) -> None:
        """Stop capturing: the answer has outgrown what its cache category could store."""
        self.captured = None
