"""Liveness, readiness and metrics endpoints for Kubernetes and Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import orjson
from aiohttp import web

from gateway import keys
from gateway.http.responses import json_response
from gateway.observability.exposition import merge_expositions
from gateway.observability.metrics import CONTENT_TYPE
from gateway.settings import WorkerSlot

log = logging.getLogger("gateway.metrics")

# A worker that does not answer within this is left out of the scrape (it may be restarting).
PEER_TIMEOUT_S = 2.0


async def live(request: web.Request) -> web.Response:
    """200 while the process runs its event loop."""
    return json_response(b'{"status":"ok"}')


async def ready(request: web.Request) -> web.Response:
    """200 once start-up finished, 503 while starting or draining (so no new traffic is sent)."""
    state = request.app[keys.LIFECYCLE]
    router = request.app[keys.ROUTER]
    if state.draining or not state.ready:
        status = "draining" if state.draining else "starting"
        return json_response(orjson.dumps({"status": status}), status=503)
    models = {n: "ok" if router.is_configured(n) else "no provider key set" for n in router.model_names}
    return json_response(orjson.dumps({"status": "ok", "models": models}))


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics; in a worker set (``serve --workers N``), those of every worker,
    merged (``observability/exposition.py``), unless the scrape came from a peer worker."""
    body = request.app[keys.METRICS].render()
    worker = request.app[keys.SETTINGS].worker
    if worker is not None and not _from_peer(request):
        peers = [i for i in range(worker.count) if i != worker.index]
        texts = await asyncio.gather(*(_peer_metrics(worker, i) for i in peers))
        found = [(i, t) for i, t in zip(peers, texts, strict=True) if t is not None]
        body = merge_expositions([(worker.index, body.decode()), *found])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _from_peer(request: web.Request) -> bool:
    """True for a request on this worker's Unix socket: another worker collecting the set's metrics."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


async def _peer_metrics(worker: WorkerSlot, index: int) -> str | None:
    """Worker ``index``'s own exposition, None when it cannot answer now (restarting, draining)."""
    try:
        async with asyncio.timeout(PEER_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(worker.socket_path(index))
            try:
                writer.write(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning(
            "metrics: a worker did not answer", extra={"fields": {"worker": index, "error": str(exc)}}
        )
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        return None
    return body.decode()
