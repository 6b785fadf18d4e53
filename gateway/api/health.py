"""Liveness, readiness and metrics endpoints for Kubernetes and Prometheus."""

from __future__ import annotations

import asyncio
import os

import orjson
from aiohttp import web

from gateway import keys
from gateway.api import peers
from gateway.http.auth import metrics_refusal, require_admin
from gateway.http.responses import json_response
from gateway.observability import worker_totals
from gateway.observability.exposition import merge_expositions
from gateway.observability.metrics import CONTENT_TYPE
from gateway.routing.router import Router


async def live(request: web.Request) -> web.Response:
    """200 while the process runs its event loop."""
    return json_response(b'{"status":"ok"}')


async def ready(request: web.Request) -> web.Response:
    """200 once start-up finished, 503 while starting or draining (so no new traffic is sent),
    and 503 while the gateway can serve nothing: no model group has a deployment with its key set
    and its breaker not open. One provider down never makes it unready."""
    state = request.app[keys.LIFECYCLE]
    router = request.app[keys.ROUTER]
    if state.draining or not state.ready:
        status = "draining" if state.draining else "starting"
        return json_response(orjson.dumps({"status": status}), status=503)
    models = {n: _model_state(router, n) for n in router.model_names}
    serving = any(v == "ok" for v in models.values())
    body = orjson.dumps({"status": "ok" if serving else "unavailable", "models": models})
    return json_response(body, status=200 if serving else 503)


def _model_state(router: Router, name: str) -> str:
    if not router.is_configured(name):
        return "no provider key set"
    return "ok" if router.can_serve(name) else "every breaker open"


async def health(request: web.Request) -> web.Response:
    """Every dependency's status, latency and last change (``service/health.py``), checked now.
    Admin only, like ``/admin/models``: it shows the topology. 503 when the gateway can serve
    nothing, else 200 (``degraded`` says something is not up)."""
    await require_admin(request)
    report = await request.app[keys.HEALTH].check()
    return json_response(orjson.dumps(report.to_json()), status=503 if report.status == "down" else 200)


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics; in a worker set (``serve --workers N``), those of every worker,
    merged (``observability/exposition.py``), with the totals of workers that died or did not
    answer (``observability/worker_totals.py``), unless the scrape came from a peer worker.

    With ``SOPHIA_METRICS_TOKEN`` set, a scrape without it is refused (401) before anything is
    rendered or asked of the peers; a peer worker asks over its Unix socket (in the set's private
    directory) and is answered without it."""
    from_peer = peers.from_peer(request)
    if not from_peer and (refusal := await metrics_refusal(request)) is not None:
        return refusal
    body = request.app[keys.METRICS].render()
    worker = request.app[keys.SETTINGS].worker
    if worker is None:
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
    pid = os.getpid()
    # Written down before it is shown, here or through the peer that asked: a value Prometheus
    # saw is never missing from the sum once this process dies.
    await asyncio.to_thread(worker_totals.save, worker.run_dir, worker.index, pid, body.decode())
    if from_peer:
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, peers.PID_HEADER: str(pid)})
    indexes = peers.peers(worker)
    answers = await asyncio.gather(*(peers.ask(worker, i, "GET", "/metrics") for i in indexes))
    found = [
        (i, a) for i, a in zip(indexes, answers, strict=True) if a and a.status == 200 and a.pid is not None
    ]
    written = await asyncio.to_thread(
        worker_totals.others, worker.run_dir, {pid, *(a.pid for _, a in found if a.pid is not None)}
    )
    texts = [(worker.index, body.decode()), *((i, a.body.decode()) for i, a in found)]
    body = merge_expositions([*texts, *((-1, text) for text in written)])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
