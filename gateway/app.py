"""Build the aiohttp application: every resource is made once here and reached by typed key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, TypeGuard

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.api import (
    admin,
    admin_keys,
    admin_policy,
    admin_rollouts,
    admin_usage,
    azure,
    health,
    memory_files,
    openai,
)
from gateway.api import memory as memory_api
from gateway.api import messages as messages_api
from gateway.api import responses as responses_api
from gateway.auth.allowed_hosts import AllowedHosts
from gateway.auth.backends import key_store
from gateway.auth.client_address import ClientAddresses
from gateway.auth.gate import LimitGate
from gateway.auth.keyring import KeyRing
from gateway.auth.limits import Limiter, LocalLimiter
from gateway.auth.records import KeyStore
from gateway.auth.throttle import FailedAuthThrottle
from gateway.cache.memory_store import MemoryStore
from gateway.cache.service import ResponseCache
from gateway.cache.store import CacheStore
from gateway.errors import StartupError
from gateway.http.auth import AZURE_API_KEY
from gateway.http.middleware import CatchAll, expect_handler, expectation_failed, gateway_handler, unmatched
from gateway.live_policy import LivePolicy, provider_clients
from gateway.memory.backends import build_memory
from gateway.memory.lifecycle import lifecycle_loop
from gateway.memory.service import MemoryService, TextEmbedder
from gateway.observability import worker_totals
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.runtime import LoopLag, resident_bytes
from gateway.observability.tracing import Tracer, TracingUnavailable, tracer_from_env
from gateway.policy.model import Policy
from gateway.providers.base import Transport
from gateway.routing.rollout import RolloutController
from gateway.routing.rollout_store import FileRolloutStore, RolloutStore
from gateway.routing.router import Router
from gateway.service.audio_room import AudioRoom
from gateway.service.calls import RequestService
from gateway.service.context import RequestIds
from gateway.service.health import HealthMonitor, RedisProbe
from gateway.service.recovery import (
    RESPONSE_CACHE_SHARE,
    CleanupStep,
    MemoryGuard,
    link_reconnects,
    pool_reconnects,
)
from gateway.service.responses import ResponsesService, cache_budgets
from gateway.settings import Settings, parse_host_patterns, parse_networks
from gateway.wire.requests import Endpoint

# Imported where they are built: the ingest machinery with memory on, redis-py (~0.15 s of
# imports, in gateway/redis_link.py and the Redis stores) only when REDIS_URL is set.
if TYPE_CHECKING:
    from gateway.auth.key_bus import KeyBus
    from gateway.auth.redis_limits import RedisLimiter
    from gateway.auth.redis_throttle import RedisFailures
    from gateway.cache.redis_store import RedisStore
    from gateway.memory.ingest import IngestService
    from gateway.routing.shared import SharedRouting


def build_app(
    settings: Settings,
    policy: Policy,
    env: Mapping[str, str] | None = None,
    *,
    transports: Mapping[str, Transport] | None = None,
    cache_store: CacheStore | None = None,
    policy_path: str | None = None,
    policy_digest: str | None = None,
    rng: random.Random | None = None,
    key_clock: Callable[[], float] = time.time,
) -> web.Application:
    """The gateway app for ``policy``; provider keys are read from ``env`` (default: os.environ).

    ``transports`` replaces the HTTP transport of the providers it names (tests pass
    ``gateway.testing.MockTransport``); the others get the aiohttp one. ``cache_store`` replaces
    the response cache's store (default: Redis when ``REDIS_URL`` is set, else in process).
    ``policy_path``: the file ``policy`` was read from; given, the gateway reloads it when it
    changes (unless ``settings.policy_watch`` is off), on SIGHUP and on POST /admin/policy/reload.
    ``policy_digest``: the SHA-256 of the bytes ``policy`` was parsed from
    (``load_policy_with_digest``); given, the watcher's first look at a file still holding them
    parses nothing (a 20,000-group file took 3 s, holding the GIL, as the server started).
    ``rng`` draws which requests shadow traffic mirrors (tests seed it). ``key_clock``: the Unix
    seconds virtual keys' expiry and rotation grace are judged by (tests move their own)."""
    environ = os.environ if env is None else env
    settings = replace(
        settings,
        max_body_bytes=settings.max_body_bytes or policy.server.max_body_bytes,
        drain_grace_s=settings.drain_grace_s
        if settings.drain_grace_s is not None
        else policy.server.drain_grace_s,
    )
    metrics = GatewayMetrics()
    try:
        tracer = tracer_from_env(environ)  # tracing.OFF unless OTEL_EXPORTER_OTLP_ENDPOINT is set
    except TracingUnavailable as exc:
        raise StartupError(str(exc)) from None
    clients = provider_clients(policy, environ, transports)
    router = Router(policy, clients, metrics)

    app = web.Application(client_max_size=settings.max_body_bytes or 0)  # no middleware: see _add_routes
    app[keys.SETTINGS] = settings
    app[keys.POLICY] = policy
    app[keys.METRICS] = metrics
    app[keys.REQUEST_IDS] = RequestIds()
    app[keys.AUDIO_ROOM] = AudioRoom()
    access_log = app[keys.ACCESS_LOG] = AccessLog.configured(
        settings.access_log, settings.log_format, metrics.access_log_dropped
    )
    app.cleanup_ctx.append(access_log.running)  # first, so closed last: every line of the drain written
    app[keys.TRACER] = tracer
    app.cleanup_ctx.append(_tracer_open(tracer))  # closed after the drain: its spans exported
    app[keys.ROUTER] = router
    rollouts = app[keys.ROLLOUTS] = RolloutController(router, _rollout_store(settings), metrics)
    store = cache_store or _cache_store(settings, policy)
    cache = app[keys.CACHE] = ResponseCache(policy.cache, store, metrics)
    metrics.cache_collector(cache)

    worker = settings.worker  # serve --workers N: the store is shared, worker 0 owns its files

    def memory_service(embed: TextEmbedder) -> MemoryService:
        return build_memory(
            policy.memory,
            settings.memory_url,
            environ,
            embed,
            shared_by_workers=worker is not None,
            owns_index_files=worker is None or worker.owns_files,
        )

    limit_gate = app[keys.LIMITS] = LimitGate(_limiter(settings, policy, metrics), metrics)
    service = app[keys.SERVICE] = RequestService(
        router,
        cache,
        metrics,
        memory=memory_service if policy.memory.enabled else None,
        limits=policy.limits,
        # Open mode has no keys, so no limits: the gate is not even installed.
        gates=(limit_gate,) if policy.auth.mode == "keys" else (),
        rng=rng,
        tracer=tracer,
    )
    app[keys.SHADOW] = service.shadow
    app[keys.RESPONSES] = ResponsesService(service, store, app[keys.REQUEST_IDS].new)
    ingest: IngestService | None = None
    if service.memory is not None:
        from gateway.memory.ingest import IngestService  # file ingestion: only with memory on

        app[keys.MEMORY] = service.memory
        metrics.memory_collector(service.memory)
        ingest = app[keys.INGEST] = IngestService(
            service.memory,
            policy.memory.ingest,
            recover=worker is None or worker.owns_files,
            runner=_runner_id(settings),
        )
        metrics.ingest_collector(ingest)
    app[keys.LIFECYCLE] = keys.Lifecycle()
    key_ring = app[keys.KEY_ADMIN] = KeyRing(
        key_store(policy.auth, environ.get("KEYS_URL")),
        policy.auth.teams,
        policy.auth.key_cache_s,
        key_clock,
        model_groups=policy.models.keys(),
    )
    app[keys.KEYRING] = key_ring
    shared_failures = _shared_failures(settings)
    app[keys.AUTH_THROTTLE] = FailedAuthThrottle(
        settings.auth_throttle_failures,
        settings.auth_throttle_window_s,
        exempt=parse_networks(settings.auth_throttle_exempt),
        shared=shared_failures,
    )
    if shared_failures is not None:
        app.cleanup_ctx.append(_shared_failures_open(shared_failures))
    key_bus = _key_bus(settings, key_ring)
    if key_bus is not None:
        app[keys.KEY_BUS] = key_bus
        app.cleanup_ctx.append(key_bus.running)
        metrics.recovery.add_source(link_reconnects("redis_key_bus_reconnect", key_bus))
    app[keys.CLIENT_ADDRESSES] = ClientAddresses(parse_networks(settings.trusted_proxies))
    app[keys.ALLOWED_HOSTS] = AllowedHosts(parse_host_patterns(settings.allowed_hosts), settings.host)

    async def cache_store_open(app: web.Application) -> AsyncIterator[None]:
        await store.start()  # never fails: an unreachable Redis starts unhealthy (fail-open)
        yield
        await store.close()

    live = app[keys.POLICY_CONTROL] = LivePolicy(
        policy,
        policy_path,
        env=environ,
        transports=transports,
        clients=clients,
        router=router,
        cache=cache,
        service=service,
        key_ring=key_ring,
        metrics=metrics,
        watch=settings.policy_watch,
        started_digest=policy_digest,
        worker=None if settings.worker is None else settings.worker.index,
    )
    live.subscribe(rollouts.reconfigure)  # after the router's swap: rollouts follow their groups
    app.cleanup_ctx.append(live.running)  # the provider clients, then the file watcher
    app.cleanup_ctx.append(_shadow_mirrors)  # after the providers: mirrors stop before clients close
    app.cleanup_ctx.append(cache_store_open)
    app.cleanup_ctx.append(rollouts.running)  # after the providers: smoke prompts go through them
    shared = _shared_routing(settings, router, metrics)
    if shared is not None:
        app[keys.SHARED_ROUTING] = shared
        app.cleanup_ctx.append(shared.running)
    app.cleanup_ctx.append(_limits_open(limit_gate))
    app.cleanup_ctx.append(_key_store(key_ring.store))
    if service.memory is not None:
        # After the providers and the cache: its start-up check embeds through them.
        app.cleanup_ctx.append(_memory_service(service.memory, worker is None or worker.owns_files))
    if ingest is not None:
        app.cleanup_ctx.append(_ingest_jobs(ingest))  # after the memory: its jobs stop before it closes
    _watch_health(
        app,
        policy,
        store,
        limit_gate.limiter,
        service.memory,
        key_ring.store if policy.auth.mode == "keys" else None,
        shared_failures,
    )
    if worker is not None:  # a crashed worker's counts stay in the set's sum
        app.cleanup_ctx.append(worker_totals.writing(metrics.render, worker.run_dir, worker.index))
    app.cleanup_ctx.append(_readiness)
    app.on_shutdown.append(_start_draining)
    _add_routes(app)
    return app


def _watch_health(
    app: web.Application,
    policy: Policy,
    store: CacheStore,
    limiter: Limiter,
    memory: MemoryService | None,
    key_records: KeyStore | None,
    failures: RedisFailures | None = None,
) -> None:
    """The health monitor, the event loop's lag sampler and (with ``server.max_rss_bytes``) the
    memory guard, each a background task of its own; and the recovery actions the Redis links
    and the memory pool count themselves, exported at scrape time. After the stores: the first
    check runs once they are open."""
    metrics = app[keys.METRICS]
    redis: dict[str, RedisProbe] = {}
    if _is_redis_store(store):
        redis["redis:cache"] = store
        metrics.recovery.add_source(link_reconnects("redis_cache_reconnect", store))
    if _is_redis_limiter(limiter):
        redis["redis:limits"] = limiter
        metrics.recovery.add_source(link_reconnects("redis_limits_reconnect", limiter))
    if keys.SHARED_ROUTING in app:
        shared = app[keys.SHARED_ROUTING]
        redis["redis:routing"] = shared
        metrics.recovery.add_source(link_reconnects("redis_routing_reconnect", shared))
    if failures is not None:  # the failed-auth throttle's own link (auth/redis_throttle.py)
        redis["redis:throttle"] = failures
        metrics.recovery.add_source(link_reconnects("redis_throttle_reconnect", failures))
    if keys.KEY_BUS in app:  # key changes from other processes (auth/key_bus.py)
        redis["redis:keybus"] = app[keys.KEY_BUS]
    if memory is not None:
        metrics.recovery.add_source(pool_reconnects(memory.store))
    lag = LoopLag()
    live = app[keys.POLICY_CONTROL]
    server = policy.server  # restart-only (policy/versions.py): read once
    monitor = app[keys.HEALTH] = HealthMonitor(
        app[keys.ROUTER],
        lag,
        redis=redis,
        memory=memory,
        key_store=key_records,
        rss=resident_bytes,
        max_rss_bytes=server.max_rss_bytes,
        interval_s=server.health_interval_s,
        # started from a policy file: a refused reload is a dependency's state
        reload_failure=(lambda: live.status().last_error) if live.status().path is not None else None,
    )
    metrics.health_collector(monitor)
    app.cleanup_ctx.append(lag.running)
    app.cleanup_ctx.append(monitor.running)
    if server.max_rss_bytes is not None:
        guard = app[keys.MEMORY_GUARD] = MemoryGuard(
            server.max_rss_bytes,
            resident_bytes,
            _cleanup_steps(app[keys.CACHE], store, memory),
            metrics.recovery,
            interval_s=server.health_interval_s,
        )
        app.cleanup_ctx.append(guard.running)


def _is_redis_store(store: CacheStore) -> TypeGuard[RedisStore]:
    # Without REDIS_URL its module is not imported, and no store of it exists (a test may pass one in).
    module = sys.modules.get("gateway.cache.redis_store")
    return module is not None and isinstance(store, module.RedisStore)


def _is_redis_limiter(limiter: Limiter) -> TypeGuard[RedisLimiter]:
    module = sys.modules.get("gateway.auth.redis_limits")
    return module is not None and isinstance(limiter, module.RedisLimiter)


def _cleanup_steps(
    cache: ResponseCache, store: CacheStore, memory: MemoryService | None
) -> list[CleanupStep]:
    """The memory cleanup's steps, in order: what is cheapest to lose first."""
    steps = []
    if memory is not None:
        steps.append(CleanupStep("memory_cleanup_search_cache", memory.drop_search_cache))
    steps.append(CleanupStep("memory_cleanup_semantic_index", cache.drop_semantic_indexes))
    if isinstance(store, MemoryStore):  # a Redis cache holds its memory in Redis
        steps.append(
            CleanupStep(
                "memory_cleanup_response_cache",
                lambda: store.drop_oldest(RESPONSE_CACHE_SHARE),
                repeat=True,
            )
        )
    return steps


def _cache_store(settings: Settings, policy: Policy) -> CacheStore:
    budgets = cache_budgets(policy)  # the policy's categories and kept responses (issue 17)
    if settings.redis_url:
        from gateway.cache.redis_store import RedisStore

        return RedisStore(
            settings.redis_url,
            budgets,
            prefix=settings.cache_prefix,
            op_timeout_s=policy.cache.lookup_timeout_ms / 1000,
        )
    return MemoryStore(budgets)


def _rollout_store(settings: Settings) -> RolloutStore:
    """Shared by every replica through Redis when ``REDIS_URL`` is set, else a file of this host."""
    if settings.redis_url:
        from gateway.routing.redis_rollout_store import RedisRolloutStore

        return RedisRolloutStore(settings.redis_url, settings.rollout_prefix)
    return FileRolloutStore(os.path.join(settings.state_dir, "rollouts.json"))


def _shared_routing(settings: Settings, router: Router, metrics: GatewayMetrics) -> SharedRouting | None:
    """The replicas' shared routing state, when ``REDIS_URL`` is set (unless turned off)."""
    if not (settings.redis_url and settings.shared_routing):
        return None

    def health(up: bool, peers: int) -> None:
        metrics.shared_state_up.set(1 if up else 0)
        metrics.shared_state_replicas.set(peers)

    from gateway.routing.shared import SharedRouting

    return SharedRouting(
        settings.redis_url,
        router.live_states,
        prefix=settings.routing_prefix,
        clock=router.now,
        on_health=health,
    )


def _runner_id(settings: Settings) -> str:
    """This process in the ingest jobs it runs: the same after a restart in the same place (a
    pod keeps its hostname, a service its port), so its own cut jobs are recognised at start.
    ``--port 0`` has no stable port: the process id stands in (its jobs recover when stale)."""
    worker = settings.worker
    place = str(settings.port) if settings.port else f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{place}:{worker.index if worker is not None else 0}"


def _shared_failures(settings: Settings) -> RedisFailures | None:
    """The failed-auth throttle's count for every worker and replica, when ``REDIS_URL`` is set
    and the throttle is on."""
    if not (settings.redis_url and settings.auth_throttle_failures > 0):
        return None
    from gateway.auth.redis_throttle import RedisFailures

    return RedisFailures(settings.redis_url, prefix=settings.throttle_prefix)


def _key_bus(settings: Settings, key_ring: KeyRing) -> KeyBus | None:
    """Key changes announced to every process of every replica, when ``REDIS_URL`` is set."""
    if not settings.redis_url:
        return None
    from gateway.auth.key_bus import KeyBus

    return KeyBus(settings.redis_url, key_ring, prefix=settings.key_bus_prefix)


def _shared_failures_open(failures: RedisFailures) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        await failures.start()  # no connection yet: an unreachable Redis fails its first call (local count)
        yield
        await failures.close()

    return run


def _limiter(settings: Settings, policy: Policy, metrics: GatewayMetrics) -> Limiter:
    """Shared by every replica through Redis when ``REDIS_URL`` is set, else in process."""
    if settings.redis_url:
        from gateway.auth.redis_limits import RedisLimiter

        return RedisLimiter(
            settings.redis_url,
            fail=policy.auth.limits_fail,  # op timeout: redis_limits.OP_TIMEOUT_S, not the cache's
            on_fallback=metrics.limits_local.inc,
        )
    return LocalLimiter()


def _tracer_open(tracer: Tracer) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        yield
        await tracer.close()

    return run


def _limits_open(gate: LimitGate) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        await gate.limiter.start()
        yield
        await gate.drain()  # settlements still running are counted before the client closes
        await gate.limiter.close()

    return run


# The start-up check's one embedding call: long enough for a cold provider, short enough that a
# provider that is down delays the start only this much (the check is then skipped).
_DIMENSION_CHECK_TIMEOUT_S = 10.0


def _memory_service(
    memory: MemoryService, runs_lifecycle: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        await memory.start()
        try:
            await memory.check_embedding_dimension(_DIMENSION_CHECK_TIMEOUT_S)
        except BaseException:
            await memory.close()
            raise
        lifecycle: asyncio.Task[None] | None = None
        if runs_lifecycle and (memory.config.pruning.enabled or memory.config.namespaces):
            lifecycle = asyncio.create_task(lifecycle_loop(memory, memory.config.pruning.interval_s))
        yield
        if lifecycle is not None:
            lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lifecycle
        await memory.close()

    return run


def _ingest_jobs(ingest: IngestService) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        await ingest.start()
        yield
        await ingest.close()  # running jobs are saved as interrupted (resumable)

    return run


def _key_store(store: KeyStore) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        await store.start()  # a store that cannot be opened is a StartupError
        yield
        await store.close()

    return run


async def _shadow_mirrors(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[keys.SHADOW].close()  # mirrors still outstanding are cancelled (no task outlives the app)


async def _readiness(app: web.Application) -> AsyncIterator[None]:
    # Registered last, so the app reports ready only after every other resource started.
    app[keys.LIFECYCLE].ready = True
    yield
    app[keys.LIFECYCLE].ready = False


async def _start_draining(app: web.Application) -> None:
    app[keys.LIFECYCLE].draining = True


# The form uploads (``api/openai.upload``), in the order their routes are added.
_FORM_DOORS = (
    Endpoint.TRANSCRIPTIONS,
    Endpoint.TRANSLATIONS,
    Endpoint.IMAGE_EDITS,
    Endpoint.IMAGE_VARIATIONS,
)


def _add_routes(app: web.Application) -> None:
    """Every route's handler wrapped in the gateway's per-request work (``http/middleware.py``),
    and a catch-all last for what the gateway does not serve (404/405 in OpenAI's envelope)."""
    router = app.router

    def add(method: str, path: str, handler: Handler) -> None:
        resource = router.add_resource(path)  # the same resource for a path's second method
        wrapped = gateway_handler(handler, resource.canonical, app)
        # A refused Expect header: 417 in the route's envelope, through the same wrapper; a
        # 100 Continue sent once the handler's checks let the request in (``expect_handler``).
        refuse = gateway_handler(expectation_failed, resource.canonical, app)
        expect = expect_handler(refuse)
        if method == "GET":
            resource.add_route("HEAD", wrapped, expect_handler=expect)  # as router.add_get does
        resource.add_route(method, wrapped, expect_handler=expect)

    add("POST", "/v1/chat/completions", openai.proxy(Endpoint.CHAT, app))
    add("POST", "/v1/completions", openai.proxy(Endpoint.COMPLETIONS, app))
    add("POST", "/v1/embeddings", openai.proxy(Endpoint.EMBEDDINGS, app))
    add("POST", "/v1/moderations", openai.proxy(Endpoint.MODERATIONS, app))
    add("POST", "/v1/images/generations", openai.proxy(Endpoint.IMAGES, app))
    add("POST", "/v1/audio/speech", openai.proxy(Endpoint.SPEECH, app))
    for endpoint in _FORM_DOORS:  # form uploads: transcriptions, translations, image edits, variations
        add("POST", f"/v1/{endpoint.value}", openai.upload(endpoint, app))
    add("POST", "/v1/responses", responses_api.create_response)
    # (before the kept-response resource below, which would take the path as an id)
    add("POST", "/v1/responses/input_tokens", responses_api.count_input_tokens)
    add("GET", "/v1/responses/{response_id}", responses_api.retrieve_response)
    add("DELETE", "/v1/responses/{response_id}", responses_api.delete_response)
    add("GET", "/v1/responses/{response_id}/input_items", responses_api.list_input_items)
    # POST under it: OpenAI's compact and cancel (not served): a 404, not the 405 a
    # method on the kept-response resource would give (the SDKs raise NotFoundError on a 404).
    add("POST", "/v1/responses/{response_id}", responses_api.not_served)
    # Azure OpenAI's paths (the AzureOpenAI client pointed at the gateway): the same endpoints
    for path, endpoint in azure.DEPLOYMENT_PATHS.items():
        add("POST", path, azure.proxy(endpoint, app))
    for endpoint in _FORM_DOORS:  # form uploads
        add(
            "POST",
            f"/openai/deployments/{{deployment}}/{endpoint.value}",
            openai.upload(endpoint, app, AZURE_API_KEY),
        )
        add("POST", f"/openai/v1/{endpoint.value}", openai.upload(endpoint, app, AZURE_API_KEY))
    add("POST", "/openai/responses", responses_api.create_response)
    add("POST", "/openai/responses/input_tokens", responses_api.count_input_tokens)
    add("GET", "/openai/responses/{response_id}", responses_api.retrieve_response)
    add("DELETE", "/openai/responses/{response_id}", responses_api.delete_response)
    add("GET", "/openai/responses/{response_id}/input_items", responses_api.list_input_items)
    add("POST", "/openai/responses/{response_id}", responses_api.not_served)
    add("GET", "/openai/models", openai.list_models)
    add("GET", "/openai/models/{model:.+}", openai.retrieve_model)
    # Azure's v1 API (the OpenAI client with base_url {endpoint}/openai/v1/): the /v1 endpoints,
    # the model in the body, the key also as api-key.
    for path, endpoint in azure.V1_PATHS.items():
        add("POST", path, openai.proxy(endpoint, app, AZURE_API_KEY))
    add("POST", "/openai/v1/responses", responses_api.create_response)
    add("POST", "/openai/v1/responses/input_tokens", responses_api.count_input_tokens)
    add("GET", "/openai/v1/responses/{response_id}", responses_api.retrieve_response)
    add("DELETE", "/openai/v1/responses/{response_id}", responses_api.delete_response)
    add("GET", "/openai/v1/responses/{response_id}/input_items", responses_api.list_input_items)
    add("POST", "/openai/v1/responses/{response_id}", responses_api.not_served)
    add("GET", "/openai/v1/models", openai.list_models)
    add("GET", "/openai/v1/models/{model:.+}", openai.retrieve_model)
    add("POST", "/v1/messages", messages_api.create_message)  # Anthropic's Messages API (issue 17)
    add("POST", "/v1/messages/count_tokens", messages_api.count_message_tokens)
    add("GET", "/v1/models", openai.list_models)
    add("GET", "/v1/models/{model:.+}", openai.retrieve_model)
    add("POST", "/v1/feedback", admin.feedback)
    add("POST", "/v1/memory", memory_api.create)
    add("POST", "/v1/memory/search", memory_api.search)
    add("POST", "/v1/memory/files", memory_files.upload)
    add("GET", "/v1/memory/jobs", memory_files.list_jobs)  # before /v1/memory/{id}, which would take it
    add("GET", "/v1/memory/jobs/{id}", memory_files.read_job)
    add("DELETE", "/v1/memory/jobs/{id}", memory_files.cancel_job)
    add("GET", "/v1/memory/jobs/{id}/events", memory_files.job_events)
    add("POST", "/v1/memory/jobs/{id}/resume", memory_files.resume_job)
    add("GET", "/v1/memory/{id}", memory_api.read)
    add("PATCH", "/v1/memory/{id}", memory_api.patch)
    add("DELETE", "/v1/memory/{id}", memory_api.delete)
    add("GET", "/admin/models", admin.models)
    add("GET", "/admin/shadow", admin.shadow)
    add("GET", "/admin/usage", admin_usage.usage)
    add("GET", "/admin/policy", admin_policy.status)
    add("POST", "/admin/policy/reload", admin_policy.reload)
    add("GET", "/admin/rollouts", admin_rollouts.list_rollouts)
    add("POST", "/admin/rollouts/{action}", admin_rollouts.act)
    add("POST", "/admin/keys", admin_keys.create)
    add("GET", "/admin/keys", admin_keys.list_keys)
    add("PATCH", "/admin/keys/{id}", admin_keys.update)
    add("DELETE", "/admin/keys/{id}", admin_keys.revoke)
    add("POST", "/admin/keys/{id}/rotate", admin_keys.rotate)
    add("DELETE", "/admin/keys/{id}/grace", admin_keys.end_grace)
    add("GET", "/health", health.health)
    add("GET", "/health/live", health.live)
    add("GET", "/health/ready", health.ready)
    add("GET", "/metrics", health.metrics)
    refuse = expect_handler(gateway_handler(expectation_failed, "unmatched", app))
    router.register_resource(CatchAll(gateway_handler(unmatched, "unmatched", app), refuse))  # last
