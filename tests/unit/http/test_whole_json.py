"""``responses.WholeJSON``: a whole JSON answer written in one pass by the connection handler
(issue 12). The bytes on the wire must be aiohttp's own for the same answer, whatever the request
(keep-alive, ``Connection: close``, HTTP/1.0, HEAD, pipelined, a hook, compression, a large body);
where the one pass does not apply, aiohttp's path must run instead.

Each case is served twice over real loopback HTTP, by the gateway's connection handler
(``GatewayRunner``, as ``serve`` runs it): once answered by a ``WholeJSON``, once by the
``web.Response`` it stands for, with the same headers; the raw replies, read from a socket, must
be equal byte for byte but for the ``Date`` header's value.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.cache.service import CacheOutcome
from gateway.errors import RateLimited, Tried
from gateway.http import responses
from gateway.http.connection import GatewayRunner
from gateway.http.middleware import add_gateway_headers, gateway_head
from gateway.http.responses import JSON, WholeJSON, error_response
from gateway.service.context import CallRecord, Route
from tests.unit.http.serving import serving_app

BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'
LARGE = b'{"text":"' + b"x" * (64 * 1024) + b'"}'


def _messages(raw: bytes, case: str, complete: bool = False) -> list[tuple[bytes, list[bytes], bytes]]:
    """Each response in ``raw``: its status line, its header lines sorted (aiohttp's ``Response``
    puts the headers it is given before its Content-Type, ``WholeJSON`` after: the order means
    nothing to HTTP), ``Date``'s value blanked, and its body."""
    found = []
    while raw:
        end = raw.find(b"\r\n\r\n")
        if end < 0 and complete:
            break
        status, *lines = raw[:end].split(b"\r\n")
        lines = [b"Date: -" if line.startswith(b"Date: ") else line for line in lines]
        length = next(
            (int(line.split(b": ")[1]) for line in lines if line.startswith(b"Content-Length: ")), 0
        )
        if case == "HEAD":
            length = 0
        if complete and len(raw) < end + 4 + length:
            break
        found.append((status, sorted(lines), raw[end + 4 : end + 4 + length]))
        raw = raw[end + 4 + length :]
    return found


@dataclass
class Served:
    port: int
    fast: list[bool] = field(default_factory=list)  # what each ``write_now`` returned


def _answer(kind: str, body: bytes, status: int, headers: dict[str, str]) -> web.Response:
    if kind == "whole":
        response: web.Response = WholeJSON(body, status)
        for name, value in headers.items():
            response.headers[name] = value
        return response
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def _app(kind: str, hook: bool = False) -> web.Application:
    async def plain(request: web.Request) -> web.StreamResponse:
        await request.read()
        return _answer(kind, BODY, 200, {"x-request-id": "abc", "Server": "sophia-gateway"})

    async def refused(request: web.Request) -> web.StreamResponse:
        await request.read()
        return _answer(kind, b'{"error":{}}', 429, {"Retry-After": "3"})

    async def closing(request: web.Request) -> web.StreamResponse:
        response = _answer(kind, BODY, 200, {})
        response.force_close()
        return response

    async def large(request: web.Request) -> web.StreamResponse:
        return _answer(kind, LARGE, 200, {})

    async def compressed(request: web.Request) -> web.StreamResponse:
        response = _answer(kind, BODY * 20, 200, {})
        response.enable_compression()
        return response

    async def injected(request: web.Request) -> web.StreamResponse:
        return _answer(kind, BODY, 200, {"x-model": "m\r\nSet-Cookie: stolen=1"})

    app = web.Application()
    app.router.add_post("/plain", plain)
    app.router.add_get("/plain", plain)  # (and HEAD)
    app.router.add_post("/refused", refused)
    app.router.add_get("/closing", closing)
    app.router.add_get("/large", large)
    app.router.add_get("/compressed", compressed)
    app.router.add_get("/injected", injected)
    if hook:

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            response.headers["x-hook"] = "ran"

        app.on_response_prepare.append(stamp)
    return app


@pytest.fixture
async def serve(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., object]]:
    runners: list[web.AppRunner] = []
    served: list[Served] = []
    real = WholeJSON.write_now

    def counted(self: WholeJSON, request: web.BaseRequest, transport: asyncio.Transport) -> bool:
        written = real(self, request, transport)
        for each in served:
            if each.port == request.transport.get_extra_info("sockname")[1]:  # type: ignore[union-attr]
                each.fast.append(written)
        return written

    monkeypatch.setattr(WholeJSON, "write_now", counted)

    async def go(kind: str, hook: bool = False) -> Served:
        runner = GatewayRunner(_app(kind, hook), access_log=None, request_read_timeout_s=10)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        one = Served(runner.addresses[0][1])
        served.append(one)
        return one

    yield go
    for runner in runners:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes, answers: int = 1) -> bytes:
    """Send ``raw``; read until ``answers`` whole responses are in (HEAD's have no body) or the
    server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    got = b""
    head = raw.startswith(b"HEAD")
    while len(_messages(got, "HEAD" if head else "", complete=True)) < answers:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        got += chunk
    writer.close()
    return got


def _request(
    path: str, method: str = "POST", version: str = "1.1", extra: str = "", body: bytes = b"{}"
) -> bytes:
    head = f"{method} {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
    if method in ("POST",):
        head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body
    return (head + "\r\n").encode()


CASES = {
    "keep-alive": _request("/plain"),
    "two on one connection, pipelined": _request("/plain") + _request("/plain"),
    "client asks to close": _request("/plain", extra="Connection: close\r\n"),
    "HTTP/1.0": _request("/plain", version="1.0"),
    "HTTP/1.0 keep-alive": _request("/plain", version="1.0", extra="Connection: keep-alive\r\n"),
    "HEAD": _request("/plain", method="HEAD"),
    "GET": _request("/plain", method="GET"),
    "a refusal with its headers": _request("/refused"),
    "forced close": _request("/closing", method="GET"),
    "a large body": _request("/large", method="GET"),
    "compression asked and allowed": _request("/compressed", method="GET", extra="Accept-Encoding: gzip\r\n"),
}
# Which cases the one pass writes (the others take aiohttp's path).
ONE_PASS = {
    "keep-alive",
    "two on one connection, pipelined",
    "client asks to close",
    "GET",
    "a refusal with its headers",
    "forced close",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_wire_bytes_are_aiohttps_own(serve: Callable[..., object], case: str) -> None:
    whole = await serve("whole")  # type: ignore[misc]
    plain = await serve("plain")  # type: ignore[misc]
    raw = CASES[case]
    answers = 2 if "pipelined" in case else 1
    got = await _exchange(whole.port, raw, answers)
    expected = await _exchange(plain.port, raw, answers)
    assert got.startswith(b"HTTP/1."), got[:200]
    assert _messages(got, case) == _messages(expected, case)
    assert len(_messages(got, case)) == (2 if "pipelined" in case else 1)
    if case in ONE_PASS:
        assert whole.fast and all(whole.fast), whole.fast
    else:
        assert not any(whole.fast), whole.fast  # aiohttp's path wrote it


async def test_a_prepare_hook_still_runs(serve: Callable[..., object]) -> None:
    whole = await serve("whole", hook=True)  # type: ignore[misc]
    got = await _exchange(whole.port, _request("/plain"))
    assert b"\r\nx-hook: ran\r\n" in got
    assert whole.fast == [False]


async def test_a_header_with_a_line_break_never_reaches_the_wire(serve: Callable[..., object]) -> None:
    """A value carrying CR LF (a header injection) is refused as aiohttp's serialiser refuses
    it: nothing is written and the connection closes, on both paths."""
    whole = await serve("whole")  # type: ignore[misc]
    plain = await serve("plain")  # type: ignore[misc]
    raw = _request("/injected", method="GET")
    assert await _exchange(whole.port, raw) == b""  # (closed with nothing written)
    assert await _exchange(plain.port, raw) == b""


def test_its_attributes_are_aiohttps_response_own() -> None:
    """``WholeJSON.__init__`` sets what ``web.Response.__init__`` sets for a JSON body, so every
    aiohttp method works on it (a newer aiohttp that adds one fails here first)."""
    whole = WholeJSON(BODY, 429, {"Retry-After": "3"})
    plain = web.Response(body=BODY, status=429, content_type=JSON, headers={"Retry-After": "3"})
    assert set(vars(whole)) == set(vars(plain))
    for name, value in vars(plain).items():
        if name == "_headers":
            assert sorted(whole.headers.items()) == sorted(value.items())
        else:
            assert getattr(whole, name) == value, name
    assert (whole.status, whole.reason, whole.body, whole.content_type) == (
        429,
        "Too Many Requests",
        BODY,
        JSON,
    )


def test_errors_are_whole_json() -> None:
    response = error_response(RateLimited("requests", 10, 2.0, {"x-ratelimit-limit-requests": "10"}))
    assert type(response) is responses.WholeJSON
    assert response.status == 429
    assert response.headers["x-ratelimit-limit-requests"] == "10" and "Retry-After" in response.headers


# ----- the gateway's own header lines (``middleware.gateway_head``)


def _records() -> list[CallRecord]:
    """Call records covering every branch of ``add_gateway_headers``."""
    target = SimpleNamespace(provider="openai-east", model="gpt-4o-2024")
    hit = CacheOutcome("hit", "common_queries", "semantic", "gpt-4o-2024")
    plain_hit = CacheOutcome("hit", "default", None, None)
    records = [
        CallRecord(),
        CallRecord(anthropic=True),
        CallRecord(model="m", cache=CacheOutcome("miss", "default"), route=Route("m", target, 1, False)),
        CallRecord(model="m", cache=CacheOutcome("bypass", "none"), route=Route("other", target, 3, True)),
        CallRecord(model="m", cache=hit),
        CallRecord(model="m", cache=plain_hit, anthropic=True),
        CallRecord(model="m", cache=hit, route=Route("m", target, 2, True)),  # (a hit names the cache)
        CallRecord(model="m", route=Route("m", target, 1, False), effort_dropped=True),
        CallRecord(model="m", tried=Tried(4, True, ())),
        CallRecord(previous_token="key", memory_ids=["mem_1", "mem_2"]),
        CallRecord(memory_ids=[]),
        CallRecord(
            model="m",
            rate_limits={"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59"},
            route=Route("m", target, 1, False),
            cache=CacheOutcome("refresh", "default"),
        ),
    ]
    return records


@pytest.mark.parametrize("record", _records(), ids=lambda r: repr(r)[:80])
def test_the_gateway_head_holds_what_add_gateway_headers_sets(record: CallRecord) -> None:
    expected: CIMultiDict[str] = CIMultiDict()
    add_gateway_headers(expected, "rid-1", record)
    for name in record.rate_limits or ():  # (the middleware sets those in the response's headers)
        del expected[name]
    for _ in range(2):  # (the second time from the outcome's serialised lines)
        head, count = gateway_head("rid-1", record)
        lines = head.split("\r\n")
        assert lines[-1] == "" and len(lines) - 1 == count
        got = [tuple(line.split(": ", 1)) for line in lines[:-1]]
        assert sorted(got) == sorted(expected.items())


async def _hit_answer(category: str, raw: bytes) -> bytes:
    """``raw``'s reply from a server answering a cache hit of ``category``, the gateway's lines
    in ``head`` (as the middleware leaves a ``WholeJSON``)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        record = CallRecord(model="m", cache=CacheOutcome("hit", category, "exact", "x"))
        response = WholeJSON(BODY)
        response.head, response.head_lines = gateway_head("rid", record)
        return response

    app = web.Application()
    app.router.add_get("/", answer)
    async with serving_app(app) as port:
        return await _exchange(port, raw)


@pytest.mark.parametrize("version", ["1.1", "1.0"], ids=["one pass", "aiohttp's path"])
async def test_a_line_break_in_a_gateway_value_is_refused_not_written(version: str) -> None:
    """A value in the gateway's own lines with a CR LF (here a category name) does not inject a
    header, on either path: ``write_now`` counts the lines by how they were made, not by the
    text, and ``prepare`` refuses lines that do not split into that count."""
    raw = _request("/", method="GET", version=version)
    assert await _hit_answer("evil\r\nSet-Cookie: stolen=1", raw) == b""


async def test_the_gateway_head_goes_into_the_headers_on_aiohttps_path() -> None:
    """HTTP/1.0 (aiohttp's path): the serialised lines are still sent, as headers."""
    got = await _hit_answer("c", _request("/", method="GET", version="1.0"))
    (status, lines, body) = _messages(got, "")[0]
    assert status == b"HTTP/1.0 200 OK" and body == BODY
    assert b"x-gateway-cache-category: c" in lines and b"Server: sophia-gateway" in lines
    assert not any(line.startswith(b"Server: Python") for line in lines)
