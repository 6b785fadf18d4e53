"""A stream's status line and headers go out with its first chunk, in one write
(``sse.StreamAnswer``), over real loopback HTTP; the server's transport counts its writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import keys
from gateway.errors import StreamInterrupted, UpstreamError
from gateway.http import sse
from gateway.http.sse import StreamAnswer, send_stream
from gateway.service.context import CallRecord, Route
from tests.unit.http.serving import serving_app


class Counting:
    """The server side's real transport, each write (or writelines) kept whole as it went."""

    def __init__(self, real: asyncio.Transport) -> None:
        self._real = real
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self._real.write(data)

    def writelines(self, chunks: Iterable[Any]) -> None:
        parts = [bytes(chunk) for chunk in chunks]
        self.writes.append(b"".join(parts))
        self._real.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Chunks:
    """An answer stream of fixed chunks; ``fail_after``: raise the mid-stream error then."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self._chunks = chunks
        self._fail_after = fail_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self._chunks):
            if i == self._fail_after:
                raise StreamInterrupted("upstream_closed", "p", UpstreamError("closed", provider="p"))
            yield chunk

    async def aclose(self) -> None:
        return None

    def drained(self) -> None:
        return None


EVENTS = [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, list[Counting]]]:
    transports: list[Counting] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        counting = Counting(request.transport)  # type: ignore[arg-type]
        request.protocol.transport = counting  # type: ignore[assignment]  # what aiohttp writes through
        transports.append(counting)
        request[keys.REQUEST_CALL] = CallRecord()
        kind = request.query.get("kind", "three")
        stream = {
            "three": Chunks(EVENTS),
            "none": Chunks([]),
            "fails": Chunks(EVENTS, fail_after=1),
        }[kind]
        return await send_stream(request, stream, "req-1")

    async with _serving(handler) as port:
        yield port, transports


@asynccontextmanager
async def _serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[int]:
    """``handler`` at GET /stream behind the gateway's connection handler; its port."""
    app = web.Application()
    # (what ``send_stream`` reads of the policy: the write timeout of a client that stops reading)
    app[keys.POLICY] = SimpleNamespace(server=SimpleNamespace(response_write_timeout_s=10.0))  # type: ignore[misc]
    app.router.add_get("/stream", handler)
    async with serving_app(app) as port:
        yield port


async def _get(port: int, kind: str) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/stream?kind={kind}") as resp,
    ):
        return resp, await resp.read()


async def test_the_head_goes_out_with_the_first_event(served: tuple[int, list[Counting]]) -> None:
    port, transports = served
    resp, body = await _get(port, "three")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["x-request-id"] == "req-1"
    assert body == b"".join(EVENTS)
    writes = transports[0].writes
    # One write per chunk and one for the end: the head rode with the first chunk.
    assert len(writes) == len(EVENTS) + 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + f"{len(EVENTS[0]):x}".encode() + b"\r\n" + EVENTS[0] + b"\r\n")
    assert writes[-1] == b"0\r\n\r\n"


async def test_a_stream_without_chunks_sends_its_head_with_its_end(
    served: tuple[int, list[Counting]],
) -> None:
    port, transports = served
    resp, body = await _get(port, "none")
    assert resp.status == 200 and body == b""
    writes = transports[0].writes
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n0\r\n\r\n")


async def test_a_stream_failing_after_its_first_chunk_still_ends_with_its_error_event(
    served: tuple[int, list[Counting]],
) -> None:
    port, transports = served
    resp, body = await _get(port, "fails")
    assert resp.status == 200
    assert body.startswith(EVENTS[0])
    assert b'"error"' in body and body.endswith(b"data: [DONE]\n\n")
    assert EVENTS[1] not in body
    assert transports[0].writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


# ----- the head serialised in one pass (``responses.OnePassHead``): aiohttp's bytes, or its path


def _routed_call() -> CallRecord:
    call = CallRecord()
    target = SimpleNamespace(provider="prov", model="m-1")
    call.route = Route("chat", target, 2, True)  # type: ignore[arg-type]
    call.model = "chat"
    call.rate_limits = {"x-ratelimit-limit-requests": "60"}
    return call


@pytest.fixture
async def raw_served() -> AsyncIterator[int]:
    async def handler(request: web.Request) -> web.StreamResponse:
        call = _routed_call()
        if request.query.get("value"):
            call.route.target.model = request.query["value"]  # type: ignore[union-attr]
        request[keys.REQUEST_CALL] = call
        return await send_stream(request, Chunks(EVENTS), "req-1")

    async with _serving(handler) as port:
        yield port


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = b""
    try:
        while not data.endswith(b"0\r\n\r\n"):
            more = await asyncio.wait_for(reader.read(65536), 5)
            if not more:
                break
            data += more
    finally:
        writer.close()
    return data


def _normalised(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Status line, header lines sorted (their order means nothing to HTTP) with ``Date``'s
    value blanked, and the body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, sorted(b"Date: -" if line.startswith(b"Date: ") else line for line in lines), body


REQUESTS = {
    "keep-alive": b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "connection close": b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "HTTP/1.0": b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n",
    "HTTP/1.0 keep-alive": b"GET /stream HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
}


@pytest.mark.parametrize("case", list(REQUESTS))
async def test_the_one_pass_head_is_what_aiohttp_writes(
    raw_served: int, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[bool] = []
    real_start = web.StreamResponse._start

    async def counted(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        started.append(True)
        return await real_start(self, request)

    monkeypatch.setattr(web.StreamResponse, "_start", counted)
    fast = await _raw(raw_served, REQUESTS[case])
    took_aiohttp_path = bool(started)
    monkeypatch.setattr(StreamAnswer, "one_pass_head", lambda self, request, framing: None)
    started.clear()
    slow = await _raw(raw_served, REQUESTS[case])
    assert started  # (the reference: aiohttp's own prepare)
    assert _normalised(fast) == _normalised(slow)
    status, lines, body = _normalised(fast)
    assert status.endswith(b" 200 OK")
    assert b"x-gateway-provider: prov" in lines and b"x-gateway-attempts: 2" in lines
    assert b"x-ratelimit-limit-requests: 60" in lines and b"x-request-id: req-1" in lines
    # HTTP/1.0 has no chunked framing: aiohttp's path, the body ending with the connection
    # (_raw returned: it was closed, keep-alive asked for or not).
    assert took_aiohttp_path == case.startswith("HTTP/1.0")
    if took_aiohttp_path:
        assert b"Connection: keep-alive" not in lines and body == b"".join(EVENTS)
    if not took_aiohttp_path:
        assert b"Transfer-Encoding: chunked" in lines
        assert (b"Connection: close" in lines) == (case == "connection close")


async def test_a_header_value_splitting_a_line_is_refused_before_a_byte(raw_served: int) -> None:
    """A value with a CR LF of its own (a header injection) never reaches the wire: the one pass
    declines it, and aiohttp's path refuses it (its ValueError: the handler's 500 here, the
    gateway's middleware turns it into its error envelope)."""
    raw = await _raw(
        raw_served, b"GET /stream?value=m%0D%0ASet-Cookie:%20stolen=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert b"stolen" not in raw
    assert not raw.startswith(b"HTTP/1.1 200")


async def test_an_aiohttp_whose_writer_does_not_buffer_headers_gets_its_own_prepare(
    raw_served: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before aiohttp 3.12 the writer has no buffered headers to hand the one-pass head to: the
    stream is prepared by aiohttp, its bytes the same."""
    fast = await _raw(raw_served, REQUESTS["keep-alive"])
    monkeypatch.setattr(sse, "_WRITER_BUFFERS_HEADERS", False)
    monkeypatch.setattr(StreamAnswer, "one_pass_head", _must_not_run)
    assert _normalised(await _raw(raw_served, REQUESTS["keep-alive"])) == _normalised(fast)


def _must_not_run(self: StreamAnswer, request: web.BaseRequest, framing: str) -> bytes | None:
    raise AssertionError("the one pass ran without a writer that buffers headers")
