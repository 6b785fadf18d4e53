"""Asking the other workers of a ``serve --workers N`` set, over their Unix sockets.

Each worker serves the app on ``WorkerSlot.socket_path(i)`` as well as on the shared port. A
handler whose answer needs every worker (``/metrics``) or whichever worker holds some per-process
state (the feedback map: the vote may reach another worker than the one that served the request)
asks the others here. A request that arrived on a Unix socket came from a peer and is never
passed on again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.settings import WorkerSlot

log = logging.getLogger("gateway.workers")

# A worker that does not answer within this is left out (it may be restarting or draining).
PEER_TIMEOUT_S = 2.0
PID_HEADER = "x-sophia-worker-pid"  # which process of the set answered (``/metrics``' totals)


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    status: int
    content_type: str
    body: bytes
    pid: int | None = None  # the answering process, when it says (PID_HEADER)


def from_peer(request: web.Request) -> bool:
    """True for a request on this worker's Unix socket: another worker of the set asking."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def peers(worker: WorkerSlot) -> list[int]:
    return [i for i in range(worker.count) if i != worker.index]


async def ask(
    worker: WorkerSlot,
    index: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> PeerAnswer | None:
    """Worker ``index``'s answer to one HTTP/1.0 request, None when it cannot answer now."""
    lines = [f"{method} {path} HTTP/1.0", "Host: worker", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    try:
        async with asyncio.timeout(PEER_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(worker.socket_path(index))
            try:
                writer.write(request)
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning("a worker did not answer", extra={"fields": {"worker": index, "error": str(exc)}})
        return None
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    content_type = ""
    pid = None
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-type":
            content_type = value.strip()
        elif name == PID_HEADER and value.strip().isdigit():
            pid = int(value.strip())
    return PeerAnswer(int(parts[1]), content_type, payload, pid)


async def pass_on(request: web.Request, worker: WorkerSlot | None, body: bytes) -> web.Response | None:
    """The same request (``body``, ``Authorization``, ``Content-Type``) put to each other worker
    in turn; the first answer that is not a 404 as a response, None when every one is a 404 (or
    this process serves alone, or the request came from a peer). ``body``: the handler's, as it
    parsed it (``read_json`` takes the bytes out of aiohttp's reader: ``request.read()`` would
    give nothing once it has)."""
    if worker is None or from_peer(request):
        return None
    headers = {
        name: request.headers[name] for name in ("Authorization", "Content-Type") if name in request.headers
    }
    for index in peers(worker):
        answer = await ask(worker, index, request.method, request.path, headers, body)
        if answer is not None and answer.status != 404:
            return web.Response(
                status=answer.status,
                body=answer.body,
                content_type=None,
                headers={"Content-Type": answer.content_type or "application/json"},
            )
    return None
