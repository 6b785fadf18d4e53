"""The ingest spool's bounds over real HTTP: ``memory.ingest.max_spool_bytes`` and
``min_free_disk_bytes`` refuse an upload with 507 ``spool_full`` (OpenAI's envelope) before it
would pass them, nothing of it kept; ``gateway_memory_ingest_spool_bytes`` shows what the spool
holds. The gateway runs in process (``build_app`` behind aiohttp's test server, real sockets);
bodies the client must keep sending after the refusal are sent by hand on a raw socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.memory.spool import SpoolRoom
from tests.integration.memory.test_ingest_http import Embedder, Gateway, open_gateway, paragraphs

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

BOUNDARY = "b0undary"
HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
).encode()


async def send_raw(gw: Gateway, head: bytes, body_pieces: int, piece: bytes) -> tuple[bytes, int]:
    """Send ``head`` then up to ``body_pieces`` copies of ``piece`` until the gateway answers;
    the answer's bytes (its head at least) and how many bytes were sent."""
    server = gw.client.server
    sock = socket.create_connection((server.host, server.port))
    sock.setblocking(False)
    pending, answer, sent, left = head, b"", 0, body_pieces
    try:
        while b"\r\n\r\n" not in answer and (pending or left):
            if not pending:
                pending, left = piece, left - 1
            try:
                n = sock.send(pending)
                pending, sent = pending[n:], sent + n
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.001)  # let the server (on this loop) run
            except ConnectionResetError:
                break
        deadline = time.monotonic() + 5
        while not re.search(rb"\r\n\r\n.*\}", answer, re.S) and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            except BlockingIOError:
                await asyncio.sleep(0.01)
            except ConnectionResetError:
                break
    finally:
        sock.close()
    return answer, sent


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def envelope(answer: bytes) -> dict[str, object]:
    body = answer.split(b"\r\n\r\n", 1)[1]
    error = orjson.loads(body)["error"]
    assert isinstance(error, dict)
    return error


async def spool_gauge(gw: Gateway) -> float:
    async with gw.client.get("/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^gateway_memory_ingest_spool_bytes (\S+)$", text, re.M)
    assert found, "gateway_memory_ingest_spool_bytes is not exported"
    return float(found.group(1))


async def test_an_upload_that_would_pass_the_spools_size_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    """A paused job keeps its file in the spool; with it there, an upload that does not fit is
    refused: by its declared length before a byte is read, else at the block that would pass the
    bound, long before the client has sent it all. Cancelling the paused job makes room."""
    spool = tmp_path / "spool"
    limit = 2 * 1024 * 1024
    async for gw in open_gateway(
        tmp_path, embedder=Embedder(failing=True), ingest=f", max_spool_bytes: {limit}"
    ):
        status, job = await gw.upload("kept.txt", paragraphs(300))
        assert status == 202, job
        paused = await gw.wait(job["id"], "paused")
        kept = sorted(spool.iterdir())
        assert [p.stat().st_size for p in kept] == [paused["bytes_total"]]
        assert await spool_gauge(gw) == paused["bytes_total"]

        # Declared: 3.5 MiB (the file at least 2.5 MiB of it) cannot fit: refused at the headers.
        declared = int(3.5 * 1024 * 1024)
        head = (
            b"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\n"
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n".encode()
            + f"Content-Length: {declared}\r\n\r\n".encode()
        )
        answer, sent = await send_raw(gw, head, 0, b"")
        assert answer.startswith(b"HTTP/1.1 507"), answer[:300]
        assert b"\r\nconnection: close\r\n" in answer.lower()
        error = envelope(answer)
        assert error["code"] == "spool_full" and error["type"] == "server_error"
        assert "max_spool_bytes" in str(error["message"])
        assert sorted(spool.iterdir()) == kept

        # Streamed (chunked, no length): refused at the MiB that would pass the bound.
        head = (
            b"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
            + chunk(HEAD)
        )
        answer, sent = await send_raw(gw, head, 128, chunk(b"x" * 65536))  # 8 MiB offered
        assert answer.startswith(b"HTTP/1.1 507"), answer[:300]
        assert envelope(answer)["code"] == "spool_full"
        assert sent < 5 * 1024 * 1024, f"the client sent {sent} bytes before the 507"
        assert sorted(spool.iterdir()) == kept  # nothing of the refused upload
        assert await spool_gauge(gw) == paused["bytes_total"]

        # A small file still fits beside the paused job's.
        small = paragraphs(20)
        gw.embedder.failing = False
        assert (await gw.ingest("small.txt", small))["status"] == "done"

        # With the paused job cancelled (its file deleted), the large one fits.
        status, cancelled = await gw.call("DELETE", f"/v1/memory/jobs/{job['id']}")
        assert status == 200 and cancelled["status"] == "cancelled"
        assert list(spool.iterdir()) == [] and await spool_gauge(gw) == 0
        large = paragraphs(4000)
        assert limit // 2 < len(large) < limit
        assert (await gw.ingest("large.txt", large))["status"] == "done"


async def test_an_upload_that_would_leave_the_disk_below_its_floor_is_507(tmp_path: Path) -> None:
    floor = "1000000GiB"  # more than any disk here has free: every upload is refused
    async for gw in open_gateway(tmp_path, ingest=f", min_free_disk_bytes: {floor}"):
        status, body = await gw.upload("a.txt", paragraphs(5))
        assert status == 507, body
        assert body["error"]["code"] == "spool_full" and "min_free_disk_bytes" in body["error"]["message"]
        assert list((tmp_path / "spool").iterdir()) == []
    async for gw in open_gateway(tmp_path, ingest=", min_free_disk_bytes: 0"):
        assert (await gw.ingest("a.txt", paragraphs(5)))["status"] == "done"


def test_concurrent_writes_of_one_process_never_pass_the_bound(tmp_path: Path) -> None:
    """Four threads write 1 KiB blocks to their own files against a 10 KiB bound: each block is
    checked and written under the room's lock, so exactly ten are written, whatever the order."""
    room = SpoolRoom(str(tmp_path), 10 * 1024, 0)
    written: list[int] = []

    def writer(n: int) -> None:
        with open(tmp_path / f"upload-{n}.part", "wb") as f:
            for _ in range(10):
                try:
                    room.write(f, hashlib.sha256(), b"x" * 1024)
                except Exception:
                    return
                written.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == 10 and room.measure() == 10 * 1024


class _WaitsOpenAI(openai.AsyncOpenAI):
    """The openai SDK with its default retries, recording each wait it would sleep."""

    waits: list[float]

    async def _sleep_for_retry(
        self, *, retries_taken: int, max_retries: int, options: Any, response: Any
    ) -> None:
        headers = response.headers if response is not None else None
        self.waits.append(self._calculate_retry_timeout(max_retries - retries_taken, options, headers))


async def test_the_sdks_do_not_upload_again_into_a_full_spool(tmp_path: Path) -> None:
    """A 507 says ``x-should-retry: false``: the openai SDK (default ``max_retries=2``) sent the
    whole upload three times within 1.5 s (its 0.5 s and 1 s backoff), when room comes back only
    as jobs finish or are cancelled, minutes later."""
    async for gw in open_gateway(tmp_path, ingest=", max_spool_bytes: 1024"):
        server = gw.client.server
        client = _WaitsOpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key="k")
        client.waits = []
        assert client.max_retries == 2
        with pytest.raises(openai.InternalServerError) as caught:
            await client.post(
                "/memory/files",
                cast_to=object,
                body={"namespace": "docs"},
                files=[("file", ("big.txt", b"x" * 8192))],
                options={"headers": {"Content-Type": "multipart/form-data"}},
            )
        assert caught.value.status_code == 507 and caught.value.code == "spool_full"
        assert client.waits == []  # one request: no retry
        assert caught.value.response.headers["x-should-retry"] == "false"
        async with gw.client.get("/metrics") as resp:
            text = await resp.text()
        sent = re.findall(r'^gateway_requests_total\{endpoint="/v1/memory/files".*\} (\S+)$', text, re.M)
        assert sum(float(n) for n in sent) == 1
