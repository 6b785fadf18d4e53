"""Slow uploads over real sockets: ``memory.ingest.upload_min_bytes_per_s`` (over
``upload_rate_window_s``, after ``upload_rate_grace_s``) and ``upload_timeout_s`` end an upload
with 408 (OpenAI's envelope, ``request_timeout``) and delete its partial file, however each
read stays within the read timeout. The gateway runs in process (``build_app`` behind aiohttp's
test server); the client writes a chunked multipart body by hand on an asyncio stream, a piece
at a time, as a slowloris would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.integration.memory.test_ingest_http import Gateway, open_gateway

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

BOUNDARY = "b0undary"
FORM_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"\r\n\r\n'
).encode()
FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status = int(head.split(" ", 2)[1])
    length = next(
        int(v)
        for k, v in (h.split(":", 1) for h in head.split("\r\n")[1:] if ":" in h)
        if k.lower() == "content-length"
    )
    return status, orjson.loads(await reader.readexactly(length))


async def post_paced(
    gw: Gateway, piece: bytes, every_s: float, for_s: float, spool: Path
) -> tuple[int, dict[str, object], float, int]:
    """Send the form's head, then ``piece`` every ``every_s`` for ``for_s`` (or until the gateway
    answers), then the form's end; the answer, when it came (seconds after the head), and the
    largest partial file seen in the spool meanwhile."""
    server = gw.client.server
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        + chunk(FORM_HEAD)
    )
    started = loop.time()
    reply = asyncio.ensure_future(read_reply(reader))
    largest = -1
    try:
        while not reply.done() and loop.time() - started < for_s:
            writer.write(chunk(piece))
            await writer.drain()
            largest = max([largest, *(p.stat().st_size for p in spool.glob("upload-*.part"))])
            await asyncio.wait([reply], timeout=every_s)
        if not reply.done():
            writer.write(chunk(FORM_TAIL) + b"0\r\n\r\n")
            await writer.drain()
    except ConnectionResetError:
        pass  # the gateway answered and closed: the reply is read below
    status, body = await asyncio.wait_for(reply, 10)
    answered = loop.time() - started
    writer.close()
    return status, body, answered, largest


async def test_a_client_trickling_its_upload_gets_408_after_the_grace_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """At 20 KB/s over 2 s windows after 0.5 s: a client sending 10 KB/s (1,000 bytes every
    0.1 s, each read well within the 30 s read timeout) is cut once the grace is over; one
    sending 640 KB/s goes on past several windows and its upload becomes a job."""
    spool = tmp_path / "spool"
    ingest = ", upload_min_bytes_per_s: 20000, upload_rate_window_s: 2, upload_rate_grace_s: 0.5"
    async for gw in open_gateway(tmp_path, ingest=ingest):
        status, body, answered, largest = await post_paced(gw, b"slow " * 200, 0.1, 10, spool)
        assert status == 408, body
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "request_timeout"
        assert "upload_min_bytes_per_s" in str(error["message"])
        assert 0.5 <= answered < 0.5 + 2 + 1.5, answered  # not before the grace; within a window
        assert largest >= 0  # the partial file was there...
        assert list(spool.iterdir()) == []  # ...and is gone

        status, body, answered, _ = await post_paced(gw, b"fast " * 13_000, 0.1, 3, spool)
        assert status == 202 and body["status"] in ("queued", "running", "done"), body
        assert answered >= 3
        job = await gw.wait(str(body["id"]))
        assert job["status"] == "done" and job["bytes_total"] > 1_000_000


async def test_an_upload_past_its_total_timeout_gets_408_and_its_partial_file_is_deleted(
    tmp_path: Path,
) -> None:
    """Steady and fast (1.6 MB/s: no minimum rate here), but never finishing: cut at the
    upload's 1.5 s, with more than a MiB of it spooled by then."""
    spool = tmp_path / "spool"
    ingest = ", upload_timeout_s: 1.5, upload_min_bytes_per_s: 0"
    async for gw in open_gateway(tmp_path, ingest=ingest):
        status, body, answered, largest = await post_paced(gw, b"x" * 32 * 1024, 0.02, 10, spool)
        assert status == 408, body
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "request_timeout"
        assert "upload_timeout_s" in str(error["message"])
        assert 1.5 <= answered < 1.5 + 1.5, answered
        assert largest >= 1 << 20  # written to disk before the cut...
        assert list(spool.iterdir()) == []  # ...and deleted with it
