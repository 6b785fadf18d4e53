"""Build the aiohttp application: every resource is made once here and reached by typed key."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

from aiohttp import web

from gateway import keys
from gateway.api import admin, health, openai
from gateway.http.middleware import add_gateway_headers, gateway_middleware
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy
from gateway.providers.registry import adapter_for
from gateway.providers.transport import ProviderClient
from gateway.proxy import Proxy
from gateway.routing.router import Router
from gateway.settings import Settings


def build_app(settings: Settings, policy: Policy, env: Mapping[str, str] | None = None) -> web.Application:
    """The gateway app for ``policy``; provider keys are read from ``env`` (default: os.environ)."""
    environ = os.environ if env is None else env
    settings = replace(
        settings,
        max_body_bytes=settings.max_body_bytes or policy.server.max_body_bytes,
        drain_grace_s=settings.drain_grace_s
        if settings.drain_grace_s is not None
        else policy.server.drain_grace_s,
    )
    metrics = GatewayMetrics()
    clients = {
        name: ProviderClient(
            name, cfg, adapter_for(cfg.kind), environ.get(cfg.api_key_env) if cfg.api_key_env else None
        )
        for name, cfg in policy.providers.items()
    }
    router = Router(policy, clients, metrics)

    app = web.Application(middlewares=[gateway_middleware], client_max_size=settings.max_body_bytes or 0)
    app[keys.SETTINGS] = settings
    app[keys.POLICY] = policy
    app[keys.METRICS] = metrics
    app[keys.ROUTER] = router
    app[keys.PROXY] = Proxy(router, metrics)
    app[keys.LIFECYCLE] = keys.Lifecycle()

    async def provider_sessions(app: web.Application) -> AsyncIterator[None]:
        for client in clients.values():
            await client.start()
        yield
        for client in clients.values():
            await client.close()

    app.cleanup_ctx.append(provider_sessions)
    app.cleanup_ctx.append(_readiness)
    app.on_shutdown.append(_start_draining)
    app.on_response_prepare.append(add_gateway_headers)
    _add_routes(app)
    return app


async def _readiness(app: web.Application) -> AsyncIterator[None]:
    # Registered last, so the app reports ready only after every other resource started.
    app[keys.LIFECYCLE].ready = True
    yield
    app[keys.LIFECYCLE].ready = False


async def _start_draining(app: web.Application) -> None:
    app[keys.LIFECYCLE].draining = True


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_post("/v1/completions", openai.completions)
    app.router.add_post("/v1/embeddings", openai.embeddings)
    app.router.add_get("/v1/models", openai.list_models)
    app.router.add_get("/v1/models/{model:.+}", openai.retrieve_model)
    app.router.add_post("/v1/feedback", admin.feedback)
    app.router.add_get("/admin/models", admin.models)
    app.router.add_get("/health/live", health.live)
    app.router.add_get("/health/ready", health.ready)
    app.router.add_get("/metrics", health.metrics)
