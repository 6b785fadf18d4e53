"""Liveness, readiness and metrics endpoints for Kubernetes and Prometheus."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from gateway import keys
from gateway.api import peers
from gateway.http.responses import json_response
from gateway.observability.exposition import merge_expositions
from gateway.observability.metrics import CONTENT_TYPE


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
    if worker is not None and not peers.from_peer(request):
        others = peers.peers(worker)
        answers = await asyncio.gather(*(peers.ask(worker, i, "GET", "/metrics") for i in others))
        found = [(i, a.body.decode()) for i, a in zip(others, answers, strict=True) if a and a.status == 200]
        body = merge_expositions([(worker.index, body.decode()), *found])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
