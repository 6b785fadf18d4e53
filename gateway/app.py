"""Build the aiohttp application: every resource is made once here and reached by typed key."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

import orjson
from aiohttp import web

from gateway import keys
from gateway.api import admin, health, openai
from gateway.cache.memory_store import MemoryStore
from gateway.cache.redis_store import RedisStore
from gateway.cache.service import Embedder, ResponseCache
from gateway.cache.store import CacheStore, CategoryBudget
from gateway.http.middleware import add_gateway_headers, gateway_middleware
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy
from gateway.providers.base import Endpoint
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
            name, cfg, adapter_for(cfg), environ.get(cfg.api_key_env) if cfg.api_key_env else None
        )
        for name, cfg in policy.providers.items()
    }
    router = Router(policy, clients, metrics)

    app = web.Application(middlewares=[gateway_middleware], client_max_size=settings.max_body_bytes or 0)
    app[keys.SETTINGS] = settings
    app[keys.POLICY] = policy
    app[keys.METRICS] = metrics
    app[keys.ROUTER] = router
    proxy = app[keys.PROXY] = Proxy(router, metrics)
    store = _cache_store(settings, policy)
    cache = app[keys.CACHE] = ResponseCache(policy.cache, store, metrics, _embedder(proxy))
    metrics.cache_collector(cache)
    app[keys.LIFECYCLE] = keys.Lifecycle()

    async def provider_sessions(app: web.Application) -> AsyncIterator[None]:
        for client in clients.values():
            await client.start()
        yield
        for client in clients.values():
            await client.close()

    async def cache_store(app: web.Application) -> AsyncIterator[None]:
        await store.start()  # never fails: an unreachable Redis starts unhealthy (fail-open)
        yield
        await store.close()

    app.cleanup_ctx.append(provider_sessions)
    app.cleanup_ctx.append(cache_store)
    app.cleanup_ctx.append(_readiness)
    app.on_shutdown.append(_start_draining)
    app.on_response_prepare.append(add_gateway_headers)
    _add_routes(app)
    return app


def _cache_store(settings: Settings, policy: Policy) -> CacheStore:
    budgets = {name: CategoryBudget(name, c.max_bytes) for name, c in policy.cache.categories.items()}
    if settings.redis_url:
        return RedisStore(
            settings.redis_url,
            budgets,
            prefix=settings.cache_prefix,
            op_timeout_s=policy.cache.lookup_timeout_ms / 1000,
        )
    return MemoryStore(budgets)


def _embedder(proxy: Proxy) -> Embedder:
    """Embeddings for the semantic cache, through the gateway's own routing."""

    async def embed(model: str, text: str) -> list[float] | None:
        reply = await proxy.call(
            Endpoint.EMBEDDINGS, {"model": model, "input": text, "encoding_format": "float"}
        )
        try:
            vector = orjson.loads(reply.body or b"")["data"][0]["embedding"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return None
        return vector if isinstance(vector, list) else None

    return embed


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
