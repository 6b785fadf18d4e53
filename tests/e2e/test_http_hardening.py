"""The HTTP edge against hostile clients, on a real gateway process over loopback (issue 10).

Slow, silent and idle connections are closed after the policy's timeouts while normal requests
keep their latency; JSON endpoints refuse other content types (415) and JSON nested deeper than
the gateway can write back (400); requests aiohttp cannot parse get OpenAI's envelope and one
WARNING line; every answer names the gateway without software versions; client text cannot forge
log lines. The gateway logs in the text format here, the one a forged line could fool.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import struct
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from gateway.service.validation import MAX_JSON_DEPTH
from gateway.testing.process import ManagedProcess, start
from tests.e2e.conftest import start_fakes

READ_TIMEOUT_S = 1.0  # server.request_read_timeout_s of the module's gateway
KEEPALIVE_S = 2.0  # server.keepalive_timeout_s: different, so each test sees which timer closed
MARGIN_S = 2.0  # a loaded 2-core machine: timers fire late, never early
EACH = 10  # sockets of each kind
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
JSON = {"Content-Type": "application/json"}


@dataclass
class Edge:
    gateway: ManagedProcess
    host: str
    port: int

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    fakes = start_fakes({"healthy": []})
    policy = tmp_path_factory.mktemp("edge") / "edge.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            server:
              keepalive_timeout_s: {KEEPALIVE_S}
              request_read_timeout_s: {READ_TIMEOUT_S}
              max_body_bytes: 65536
            providers:
              fake: {{kind: openai, base_url: "{fakes["healthy"].url}/v1"}}
            models:
              chat: {{deployments: [{{provider: fake, model: upstream-chat}}]}}
            """
        )
    )
    gateway = start(["serve", "--policy", str(policy), "--port", "0"], env={"SOPHIA_LOG_FORMAT": "text"})
    try:
        address = urlsplit(gateway.url)
        yield Edge(gateway, address.hostname or "127.0.0.1", address.port or 0)
    finally:
        gateway.stop()
        for fake in fakes.values():
            fake.stop()


# --- raw HTTP/1.1 on a socket -------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """One response with a Content-Length body (every gateway answer that is not a stream)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(status, headers, body)


async def until_closed(reader: asyncio.StreamReader, deadline: float) -> float:
    """Read (and drop) until the server closes the connection; the monotonic time it did.
    Past ``deadline`` the connection counts as kept open: ``inf``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return float("inf")
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
        except TimeoutError:
            return float("inf")
        if not data:
            return time.monotonic()


async def dribble(writer: asyncio.StreamWriter, piece: bytes, until: asyncio.Future[float]) -> None:
    """Send ``piece`` every 0.1 s until ``until`` is done (the server closed) or writing fails."""
    while not until.done():
        try:
            writer.write(piece)
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(0.1)


def stderr_lines(edge: Edge) -> list[str]:
    return edge.gateway.stderr.splitlines()


def wait_for_log(edge: Edge, needle: str, timeout_s: float = 5.0) -> list[str]:
    """The gateway's stderr lines holding ``needle``, once at least one has been written."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in stderr_lines(edge) if needle in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


# --- 1. slow, silent and idle connections -----------------------------------------------------------


async def test_slow_silent_and_idle_connections_are_closed_while_requests_keep_their_latency(
    edge: Edge,
) -> None:
    deadline = time.monotonic() + KEEPALIVE_S + MARGIN_S + 1.0

    # ``opened`` is read before the connection is: the server's timer starts at its accept, which
    # is after that, while a time read once ``open_connection`` returns came late by as long as
    # this loop was held up (0.63 s once, in a full fresh-clone run: every silent socket then
    # "lived" 0.37 s of its 1 s timeout).
    async def silent() -> tuple[str, float]:
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        closed = await until_closed(reader, deadline)
        writer.close()
        return "silent", closed - opened

    async def slowloris() -> tuple[str, float]:
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        closed: asyncio.Future[float] = asyncio.ensure_future(until_closed(reader, deadline))
        await dribble(writer, b"X-Slow: a\r\n", closed)
        writer.close()
        return "slowloris", await closed - opened

    async def idle() -> tuple[str, float]:
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await read_reply(reader)).status == 200
        answered = time.monotonic()
        closed = await until_closed(reader, deadline)
        writer.close()
        return "idle", closed - answered

    async def slow_body() -> tuple[str, float]:
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"
        )
        sent = time.monotonic()
        answer: asyncio.Future[Reply] = asyncio.ensure_future(read_reply(reader))
        await dribble(writer, b" ", answer)
        reply = await answer
        assert reply.status == 408, reply
        assert reply.json()["error"]["code"] == "request_timeout"
        assert reply.headers["connection"] == "close" and reply.headers["x-request-id"]
        assert time.monotonic() - sent < READ_TIMEOUT_S + MARGIN_S
        closed = await until_closed(reader, deadline)
        writer.close()
        return "slow body", closed - sent

    latencies: list[float] = []

    async def normal_traffic() -> None:
        # Fresh connections and real proxied calls, all the while the hostile sockets are open.
        while time.monotonic() < deadline - 1.0:
            reader, writer = await asyncio.open_connection(edge.host, edge.port)
            body = orjson.dumps(CHAT)
            started = time.monotonic()
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            reply = await read_reply(reader)
            latencies.append(time.monotonic() - started)
            assert reply.status == 200, reply
            writer.close()
            await asyncio.sleep(0.05)

    kinds = [silent, slowloris, idle, slow_body]
    results = await asyncio.gather(normal_traffic(), *(kind() for kind in kinds for _ in range(EACH)))
    lived: dict[str, list[float]] = {}
    for kind, seconds in results[1:]:  # type: ignore[misc]
        lived.setdefault(kind, []).append(seconds)

    # Headers (or nothing) after READ_TIMEOUT_S; idle after KEEPALIVE_S; a slow body gets its 408
    # after READ_TIMEOUT_S, then at most as long again draining the body so the 408 is read.
    expected = {
        "silent": (READ_TIMEOUT_S, READ_TIMEOUT_S),
        "slowloris": (READ_TIMEOUT_S, READ_TIMEOUT_S),
        "idle": (KEEPALIVE_S, KEEPALIVE_S),
        "slow body": (READ_TIMEOUT_S, 2 * READ_TIMEOUT_S),
    }
    for kind, (earliest, latest) in expected.items():
        assert len(lived[kind]) == EACH
        assert max(lived[kind]) <= latest + MARGIN_S, (kind, lived[kind])
        assert min(lived[kind]) >= earliest - 0.1, (kind, lived[kind])
    assert len(latencies) >= 5
    assert max(latencies) < READ_TIMEOUT_S / 2, latencies  # unaffected by 40 hostile sockets


async def test_a_kept_alive_connection_gets_the_read_timeout_for_its_next_request(edge: Edge) -> None:
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_reply(reader)).status == 200
    writer.write(b"GET /health/live HTTP/1.1\r\n")  # then a header a byte at a time
    started = time.monotonic()
    closed: asyncio.Future[float] = asyncio.ensure_future(
        until_closed(reader, started + KEEPALIVE_S + MARGIN_S)
    )
    await dribble(writer, b"X", closed)
    writer.close()
    assert READ_TIMEOUT_S - 0.1 <= await closed - started <= READ_TIMEOUT_S + MARGIN_S / 2


# --- 2. only application/json ----------------------------------------------------------------------

JSON_ENDPOINTS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/memory"),
    ("PATCH", "/v1/memory/mem-415"),
    ("POST", "/v1/memory/search"),
    ("POST", "/v1/feedback"),
]


async def send(
    edge: Edge, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> Reply:
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(head.encode() + b"\r\n" + body)
    try:
        return await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_json_endpoints_refuse_other_content_types(
    edge: Edge, method: str, path: str, content_type: str | None
) -> None:
    memory = {"id": "mem-415", "namespace": "n", "content": "planted", "embedding": [0.5, 0.5]}
    body = orjson.dumps(memory if "memory" in path else CHAT)
    reply = await send(edge, method, path, body, {"Content-Type": content_type} if content_type else {})
    assert reply.status == 415
    assert reply.headers["content-type"].startswith("application/json") and reply.headers["x-request-id"]
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "unsupported_media_type")
    assert (content_type or "none") in error["message"]
    # Nothing happened: the memory a cross-site form would have planted does not exist.
    assert (await send(edge, "GET", "/v1/memory/mem-415", b"")).status == 404


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
async def test_json_with_parameters_is_accepted(edge: Edge, method: str, path: str) -> None:
    reply = await send(edge, method, path, b"{}", {"Content-Type": "Application/JSON; charset=utf-8"})
    assert reply.status in (200, 400, 404), reply  # past the media type: the (empty) body is judged
    assert reply.json()["error"]["code"] != "unsupported_media_type"


@pytest.mark.parametrize("extra", [0, 1, 5000])
async def test_a_chunked_body_that_arrives_whole_is_held_to_the_limit(edge: Edge, extra: int) -> None:
    """A body that came with its headers is taken from the reader at once (``read_json``), not
    through aiohttp's ``read``, which enforced the limit for a body with no declared length."""
    body = orjson.dumps({**CHAT, "user": "x" * (65536 - len(orjson.dumps(CHAT)) - 10 + extra)})
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:30000], body[30000:])) + b"0\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)  # one write: one read here
    try:
        reply = await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()
    if len(body) > 65536:
        assert reply.status == 413, reply
        assert reply.json()["error"]["code"] == "request_too_large"
    else:
        assert reply.status == 200, reply


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\n", b"5;\x01ext\r\n", b"5\r\nabcdeXY"],
    ids=["chunk-size", "chunk-extension", "no-crlf-after-data"],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_body_whose_chunked_framing_breaks_mid_way_is_a_400_at_once(
    edge: Edge, bad: bytes, path: str
) -> None:
    """The framing breaks after the handler has started reading the body: aiohttp queued the
    parser's error as a request of its own and left the body open, so the handler waited for
    request_read_timeout_s, answered 408 and the connection lingered 10 s more (an outside
    probe). Now the body's reader gets the parser's error: a 400 in the route's envelope, and
    the connection ends with it."""
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n".encode()
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        writer.write(head + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n')
        await writer.drain()
        await asyncio.sleep(READ_TIMEOUT_S / 4)  # the handler is reading the body by now
        writer.write(bad)
        reply = await asyncio.wait_for(read_reply(reader), READ_TIMEOUT_S + MARGIN_S)
        closed = await until_closed(reader, time.monotonic() + READ_TIMEOUT_S + MARGIN_S)
    finally:
        writer.close()
    assert reply.status == 400, reply  # (not the read timeout's 408)
    assert reply.headers["connection"] == "close"
    assert closed != float("inf")  # closed with the answer, not 10 s of lingering later
    if path == "/v1/messages":
        assert reply.json()["error"]["type"] == "invalid_request_error"
        assert reply.json()["request_id"] == reply.headers["request-id"]
    else:
        assert reply.json()["error"]["code"] == "malformed_http_request"
        assert reply.json()["error"]["message"].startswith("Malformed HTTP request")


# --- 2b. compressed bodies ---------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", " GZip "])
async def test_compressed_bodies_are_refused_by_name_not_inflated(edge: Edge, encoding: str) -> None:
    body = orjson.dumps(CHAT)
    packed = gzip.compress(body) if "zip" in encoding.lower() else zlib.compress(body)
    reply = await send(edge, "POST", "/v1/chat/completions", packed, {**JSON, "Content-Encoding": encoding})
    assert reply.status == 415, reply  # (inflated, this small body would have been served: 200)
    error = reply.json()["error"]
    assert error["code"] == "unsupported_content_encoding" and encoding.strip() in error["message"]
    plain = await send(edge, "POST", "/v1/chat/completions", body, {**JSON, "Content-Encoding": "identity"})
    assert plain.status == 200


@pytest.mark.parametrize("coding", ["gzip, chunked", "foo, chunked", "GZIP , chunked"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/audio/transcriptions"])
async def test_a_transfer_coding_other_than_chunked_is_a_501(edge: Edge, coding: str, path: str) -> None:
    """aiohttp's parser reads ``gzip, chunked`` as plain chunked: the coded bytes were taken for the
    body (a plain JSON body under ``foo, chunked`` was served). RFC 9112 6.1: a transfer coding the
    server does not understand SHOULD be a 501."""
    body = orjson.dumps(CHAT)
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    kind = "application/json" if "chat" in path else "multipart/form-data; boundary=b"
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {kind}\r\nTransfer-Encoding: {coding}\r\n\r\n"
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        writer.write(head.encode() + chunk)
        reply = await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()
    assert reply.status == 501, reply
    assert reply.json()["error"]["code"] == "unsupported_transfer_coding"
    assert reply.headers["x-should-retry"] == "false" and reply.headers["connection"] == "close"
    if "chat" in path:  # plain chunked is served
        reader, writer = await asyncio.open_connection(edge.host, edge.port)
        try:
            writer.write(head.replace(coding, "chunked").encode() + chunk)
            assert (await asyncio.wait_for(read_reply(reader), 10)).status == 200
        finally:
            writer.close()


@pytest.mark.parametrize(
    "codings",
    [["identity", "gzip"], ["identity, gzip"], ["gzip, identity"]],
    ids=["a-second-header", "a-list", "a-list-led-by-gzip"],
)
async def test_every_content_encoding_header_and_coding_is_read(edge: Edge, codings: list[str]) -> None:
    """``Content-Encoding`` may be a list, or sent twice (RFC 9110 combines them): gzip anywhere
    in it is the 415, never a gzip body read as JSON (before, only the first header's whole
    value was looked at: 400 'not valid JSON')."""
    packed = gzip.compress(orjson.dumps(CHAT))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + "".join(f"Content-Encoding: {value}\r\n" for value in codings)
        + f"Content-Length: {len(packed)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        writer.write(head.encode() + packed)
        reply = await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()
    assert reply.status == 415, reply
    assert reply.json()["error"]["code"] == "unsupported_content_encoding"


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        ("x-gateway-cache-category", b"\xff", 400),  # named back in the 400 (it was a 500)
        ("Content-Type", b"application/\xffjson", 415),  # named back in the 415 (it was a 500)
        ("Authorization", b"Bearer \xff\xfe", 200),  # the tenant's hash (it was a 500)
        ("x-gateway-memory", b"\xff", 400),  # not a namespace name
        ("x-request-id", b"\xff", 200),  # not a request id: a new one is made
    ],
)
async def test_header_bytes_that_are_not_utf8_are_never_a_500(
    edge: Edge, header: str, value: bytes, status: int
) -> None:
    body = orjson.dumps(CHAT)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        if header != "Content-Type"
        else b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
    )
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        writer.write(
            head + header.encode() + b": " + value + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        reply = await asyncio.wait_for(read_reply(reader), 10)
    finally:
        writer.close()
    assert reply.status == status, reply
    if header in ("x-gateway-cache-category", "Content-Type"):
        assert "\\udcff" in reply.json()["error"]["message"]  # the byte, escaped where it is named
    assert not [line for line in stderr_lines(edge) if "Logging error" in line]


async def test_an_upload_sent_compressed_is_refused(edge: Edge) -> None:
    form = b'--b\r\nContent-Disposition: form-data; name="namespace"\r\n\r\nn\r\n--b--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=b", "Content-Encoding": "gzip"}
    reply = await send(edge, "POST", "/v1/memory/files", gzip.compress(form), headers)
    assert reply.status == 415 and reply.json()["error"]["code"] == "unsupported_content_encoding"


def deflate_bomb(prefix: bytes, filler_mib: int, suffix: bytes) -> bytes:
    """``zlib.compress(prefix + b"a" * filler_mib MiB + suffix, 9)``'s equal (a valid zlib stream,
    its checksum included), made in half a second rather than 10-14: once the window is all
    ``a``, each further MiB deflates to the same bytes, which are repeated."""
    mib = b"a" * (1 << 20)
    packer = zlib.compressobj(9)
    parts = [packer.compress(prefix + mib) + packer.flush(zlib.Z_SYNC_FLUSH)]
    same = packer.compress(mib) + packer.flush(zlib.Z_SYNC_FLUSH)
    assert packer.compress(mib) + packer.flush(zlib.Z_SYNC_FLUSH) == same  # the window is all ``a``
    parts.append(same * (filler_mib - 1))  # (the packer read filler_mib + 1: its tail is the same)
    tail = packer.compress(suffix) + packer.flush()
    check = zlib.adler32(prefix)
    for _ in range(filler_mib):
        check = zlib.adler32(mib, check)
    parts.append(tail[:-4] + struct.pack(">I", zlib.adler32(suffix, check)))
    return b"".join(parts)


def test_the_deflate_bomb_inflates_to_what_it_says() -> None:
    bomb = deflate_bomb(b'{"model": "chat", "pad": "', 64, b'"}')
    assert zlib.decompress(bomb) == b'{"model": "chat", "pad": "' + b"a" * (64 << 20) + b'"}'


async def test_a_deflate_bomb_costs_the_gateway_no_inflating(edge: Edge) -> None:
    """1 MB of deflate that inflates to 1 GB, on a kept-alive connection: refused (415), its rest
    drained as bytes, and the next request on the connection served. Inflated as it arrived (and
    drained through the inflater after the refusal) it cost a core for the whole lingering time."""
    bomb = deflate_bomb(b'{"model": "chat", "pad": "', 1024, b'"}')
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        before = cpu_s(edge.gateway.popen.pid)
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: deflate\r\nContent-Length: {len(bomb)}\r\n\r\n"
        )
        writer.write(head.encode() + bomb)
        refused = await asyncio.wait_for(read_reply(reader), 30)
        body = orjson.dumps(CHAT)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        served = await asyncio.wait_for(read_reply(reader), 30)  # after the bomb's rest was drained
        spent = cpu_s(edge.gateway.popen.pid) - before
    finally:
        writer.close()
    assert refused.status == 415 and refused.json()["error"]["code"] == "unsupported_content_encoding"
    assert served.status == 200
    assert spent < 0.3, f"{spent:.2f} s of CPU for a refused 1 MB body"  # inflating it: about 1 s


# --- 3. JSON nested deeper than the gateway can write back ------------------------------------------


def nested(levels: int) -> bytes:
    """A chat request whose whole body nests ``levels`` deep (the body itself is level 1)."""
    inner = b"[" * (levels - 1) + b"]" * (levels - 1)
    return orjson.dumps(CHAT)[:-1] + b',"metadata":' + inner + b"}"


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 255, 1024])
async def test_json_nested_too_deep_is_400_naming_the_limit(edge: Edge, levels: int) -> None:
    reply = await send(edge, "POST", "/v1/chat/completions", nested(levels), JSON)
    assert reply.status == 400, reply
    error = reply.json()["error"]
    assert error["code"] == "json_too_deep" and f"{MAX_JSON_DEPTH} levels" in error["message"]
    inner = levels - 2  # the body and its metadata object are two levels
    memory = b'{"namespace": "n", "content": "x", "metadata": {"a": ' + b"[" * inner + b"]" * inner + b"}}"
    assert (await send(edge, "POST", "/v1/memory", memory, JSON)).json()["error"]["code"] == "json_too_deep"


async def test_json_at_the_depth_limit_is_served_end_to_end(edge: Edge) -> None:
    reply = await send(edge, "POST", "/v1/chat/completions", nested(MAX_JSON_DEPTH), JSON)
    assert reply.status == 200, reply  # cache key, provider request and answer all written


# --- 6. requests aiohttp cannot parse ---------------------------------------------------------------

MALFORMED = {
    "100 KB header": b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Big: "
    + b"a" * 100_000
    + b"\r\n\r\n",
    "10,000 headers": b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    + b"\r\n",
    "bad request line": b"G\x1bT /\x85 HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_requests_get_the_envelope_and_one_warning(edge: Edge, name: str) -> None:
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    writer.write(MALFORMED[name])
    reply = await asyncio.wait_for(read_reply(reader), 10)
    writer.close()
    assert reply.status == 400
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "malformed_http_request")
    assert reply.headers["server"] == "sophia-gateway"  # aiohttp's own answer would name itself
    request_id = reply.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    logged = wait_for_log(edge, request_id)
    assert len(logged) == 1 and " WARNING " in logged[0] and "malformed http request" in logged[0]
    assert "Traceback" not in edge.gateway.stderr and " ERROR " not in edge.gateway.stderr


ANTHROPIC_MALFORMED = {
    "20 KB x-api-key": b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nx-api-key: "
    + b"k" * 20_000
    + b"\r\n\r\n",
    "NUL in a header": b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n",
    "after a pipelined chat": b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
    b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(ANTHROPIC_MALFORMED))
async def test_malformed_requests_to_the_messages_door_get_anthropics_envelope(edge: Edge, name: str) -> None:
    """The HTTP parser's 400 for a request under /v1/messages is in Anthropic's envelope with its
    ``request-id``, as every other answer there (the SDK reads ``error.type`` and the id)."""
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    writer.write(ANTHROPIC_MALFORMED[name])
    reply = await asyncio.wait_for(read_reply(reader), 10)
    # (pipelined: aiohttp's parser refuses the batch before the first is answered; the error is
    # the last request's, so it is in that request's envelope)
    writer.close()
    assert reply.status == 400, reply
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert reply.headers["request-id"] == reply.headers["x-request-id"]


# --- 7. the Server header names no software versions ----------------------------------------------

NAMED = [
    ("POST", "/v1/chat/completions", orjson.dumps(CHAT), 200),
    ("POST", "/v1/chat/completions", orjson.dumps({**CHAT, "stream": True}), 200),
    ("POST", "/v1/chat/completions", b"{", 400),
    ("POST", "/v1/chat/completions", orjson.dumps({**CHAT, "model": "nope"}), 404),
    ("GET", "/v1/chat/completions", b"", 405),
    ("GET", "/no/such/route", b"", 404),
    # Targets whose path is empty (authority-form, absolute-form without a path): aiohttp's router
    # answered them itself, past the catch-all (h-probe8)
    ("CONNECT", "localhost:443", b"", 404),
    ("GET", "http://localhost", b"", 404),
    ("GET", "/health/live", b"", 200),
    ("GET", "/metrics", b"", 200),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), NAMED)
async def test_every_answer_names_the_gateway_without_versions(
    edge: Edge, method: str, path: str, body: bytes, status: int
) -> None:
    """aiohttp's default ``Server: Python/3.11 aiohttp/3.x.y`` would tell a scanner which CVEs to
    try; every answer, whole or streamed, says only ``sophia-gateway``."""
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the head, stream or not
    finally:
        writer.close()
    lines = raw.decode("latin-1").split("\r\n")
    assert int(lines[0].split()[1]) == status, lines
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
    assert headers["server"] == "sophia-gateway"
    assert not [v for v in headers.values() if re.search("aiohttp|python", v, re.IGNORECASE)], headers


# --- 9. log lines cannot be forged -----------------------------------------------------------------

CONTROLS = "\n\r\x1b\x07\x00\x7f\x85\x9b\u2028"  # C0 (LF, CR, ESC, BEL, NUL), DEL, C1 (NEL, CSI), LS


async def test_control_characters_in_a_path_cannot_forge_log_lines(edge: Edge) -> None:
    forged = "\n2030-01-01 00:00:00,000 ERROR   gateway.http: forged"
    path = "/v1/x" + "".join(f"%{b:02X}" for b in (forged + CONTROLS).encode())
    reply = await send(edge, "GET", path, b"", {"x-request-id": "forge-1"})
    assert reply.status == 404
    (line,) = wait_for_log(edge, "request_id=forge-1")
    assert "\\n2030-01-01" in line and "\\x1b" in line and "\\x85" in line and "\\u2028" in line
    text = edge.gateway.stderr
    assert not any(ln.startswith("2030-01-01") for ln in text.splitlines())
    assert not any(c in text for c in CONTROLS.replace("\n", ""))  # only real line ends


@pytest.mark.parametrize(
    ("path", "anthropic"),
    [("/v1/chat/completions", False), ("/v1/messages", True), ("/v1/no-such-path", False)],
)
async def test_an_expectation_other_than_100_continue_is_a_417_in_the_envelope(
    edge: Edge, path: str, anthropic: bool
) -> None:
    """RFC 9110: a server may refuse an Expect it cannot meet with 417. aiohttp's own answer was
    plain text; the gateway's is its route's error envelope, with a request id."""
    reply = await send(
        edge, "POST", path, orjson.dumps(CHAT), {"Content-Type": "application/json", "Expect": "200-ok"}
    )
    assert reply.status == 417
    assert reply.headers["content-type"].startswith("application/json") and reply.headers["x-request-id"]
    body = reply.json()
    error = body["error"]
    if anthropic:
        assert body["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error"
    assert "200-ok" in error["message"] and "100-continue" in error["message"]


async def test_expect_100_continue_gets_the_interim_answer_then_the_response(edge: Edge) -> None:
    """A client that waits for ``100 Continue`` before sending its body (curl does for large
    bodies) gets it, then the answer."""
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        body = orjson.dumps(CHAT)
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        writer.write(head.encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        reply = await asyncio.wait_for(read_reply(reader), 10)
        assert reply.status == 200 and reply.json()["object"] == "chat.completion"
    finally:
        writer.close()


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
async def test_a_version_other_than_http_1_is_a_505_not_echoed(edge: Edge, version: str) -> None:
    """aiohttp's parser takes HTTP/2.0 and HTTP/0.9 with HTTP/1 framing, and its answer echoed the
    version: ``HTTP/2.0 200 OK``. RFC 9110 15.6.6: 505, in a version the gateway speaks; a
    request pipelined after an HTTP/1.1 one is refused alone."""
    reader, writer = await asyncio.open_connection(edge.host, edge.port)
    try:
        writer.write(
            b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + f"GET /health/live {version}\r\nHost: localhost\r\n\r\n".encode()
        )
        first = await asyncio.wait_for(read_reply(reader), 10)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        rest = await asyncio.wait_for(read_reply_rest(reader), 10)
    finally:
        writer.close()
    assert first.status == 200
    assert head == b"HTTP/1.0 505 HTTP Version Not Supported\r\n"
    assert version in rest.json()["error"]["message"] and rest.headers["x-request-id"]


async def read_reply_rest(reader: asyncio.StreamReader) -> Reply:
    """The headers and body of a response whose status line was read already."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(0, headers, body)
