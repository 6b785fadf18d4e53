"""An in-process ``Transport``: a function answers each provider request (after httpx's MockTransport).

    async def upstream(request: UpstreamRequest) -> MockResponse:
        return MockResponse.json({"choices": [...]})

    app = build_app(settings, policy, env, transports={"openai": MockTransport(upstream)})

The handler may be sync or async, may raise a ``GatewayError`` (as the real transport does for a
refused connection or a timeout), and may answer a stream with ``MockResponse.stream(chunks)``,
where ``chunks`` is a list of bytes or an async iterator (to pause, or to raise mid-stream).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import UpstreamConnectError
from gateway.providers.base import UpstreamRequest

Handler = Callable[[UpstreamRequest], "MockResponse | Awaitable[MockResponse]"]


@dataclass
class MockResponse:
    """A canned ``UpstreamResponse``."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    stream_chunks: Iterable[bytes] | AsyncIterable[bytes] | None = None
    closed: bool = False

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> MockResponse:
        return cls(status, orjson.dumps(value), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def stream(cls, chunks: Iterable[bytes] | AsyncIterable[bytes]) -> MockResponse:
        return cls(200, b"", {"Content-Type": "text/event-stream"}, chunks)

    async def read(self) -> bytes:
        if self.stream_chunks is None:
            return self.body
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body, once: like a socket, what was read is gone (a second call goes on from there)."""
        source = self.stream_chunks if self.stream_chunks is not None else [self.body]
        if isinstance(source, AsyncIterable):
            self.stream_chunks = aiter = source.__aiter__()
            async for chunk in aiter:
                yield chunk
        else:
            self.stream_chunks = rest = iter(source)
            for chunk in rest:
                yield chunk

    def close(self) -> None:
        self.closed = True


class MockTransport:
    """A ``Transport`` whose answers come from ``handler``; it keeps every request it was sent."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[UpstreamRequest] = []
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def send(self, request: UpstreamRequest) -> MockResponse:
        if self.closed:  # as the real transport refuses once closed
            raise UpstreamConnectError("mock: client not started", provider="mock")
        self.requests.append(request)
        answer = self._handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer
