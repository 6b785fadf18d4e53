"""Every typed key for state kept on the app or on a request, in one place.

Nothing a request needs lives in a module global: it is built once at start-up, stored on the
``web.Application`` under one of these keys, and torn down by the app's cleanup contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.cache.service import CacheOutcome, ResponseCache
from gateway.memory.service import MemoryService
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy
from gateway.proxy import Proxy, Reply
from gateway.routing.router import Router
from gateway.settings import Settings


@dataclass(slots=True)
class Lifecycle:
    """Mutable process state that health checks read."""

    ready: bool = False
    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
POLICY = web.AppKey("policy", Policy)
METRICS = web.AppKey("metrics", GatewayMetrics)
ROUTER = web.AppKey("router", Router)
PROXY = web.AppKey("proxy", Proxy)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
CACHE = web.AppKey("cache", ResponseCache)
MEMORY = web.AppKey("memory", MemoryService)

REQUEST_ID = web.RequestKey("request_id", str)
# The model group a request named, once the gateway knows it exists (a bounded metric label).
REQUEST_MODEL = web.RequestKey("request_model", str)
# Where the request was served (group, deployment, attempts, fallback), once a provider answered.
REQUEST_ROUTE = web.RequestKey("request_route", Reply)
# What the response cache did (hit, miss, bypass, refresh), once it decided.
REQUEST_CACHE = web.RequestKey("request_cache", CacheOutcome)
# Ids of the memories added to a memory-augmented chat request.
REQUEST_MEMORY_IDS = web.RequestKey("request_memory_ids", list)
