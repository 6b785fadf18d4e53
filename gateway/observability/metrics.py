"""Every Prometheus metric the gateway exports, defined once, on a registry owned by the app.

Names follow the OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.client.token.usage``, ``gen_ai.server.time_to_first_token``), else ``gateway_*`` with
``_seconds`` / ``_total`` suffixes. Label values are bounded: model names come from the policy
(an unknown model is recorded as ``unknown``), never from free client input, and no label or
value ever holds a key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

M = TypeVar("M", bound=MetricWrapperBase)

# The ``*_created`` series double the exposition size and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Buckets for LLM calls: sub-millisecond cache hits up to multi-minute generations.
_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RouterView(Protocol):
    """What the metrics need of the router (kept structural to avoid an import cycle)."""

    def breaker_states(self) -> Iterable[tuple[str, str, int]]: ...

    def scores(self) -> Iterable[tuple[str, str, str, float]]: ...


class CacheView(Protocol):
    """What the metrics need of the cache store."""

    @property
    def categories(self) -> Iterable[str]: ...

    def usage(self, category: str) -> tuple[int, int]:
        """(entries, bytes)"""
        ...

    @property
    def healthy(self) -> bool: ...

    @property
    def errors(self) -> int: ...


class _CacheCollector(Collector):
    def __init__(self, view: CacheView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        view = self._view
        size = GaugeMetricFamily(
            "gateway_cache_bytes", "Bytes stored per cache category.", labels=("category",)
        )
        entries = GaugeMetricFamily(
            "gateway_cache_entries", "Entries stored per cache category.", labels=("category",)
        )
        for category in view.categories:
            count, used = view.usage(category)
            entries.add_metric((category,), count)
            size.add_metric((category,), used)
        up = GaugeMetricFamily(
            "gateway_cache_backend_up", "1 while the cache backend answers, 0 while it is skipped."
        )
        up.add_metric((), 1 if view.healthy else 0)
        errors = CounterMetricFamily(
            "gateway_cache_backend_errors",
            "Cache operations that failed or timed out (the request went on without the cache).",
        )
        errors.add_metric((), view.errors)
        return [size, entries, up, errors]


class MemoryView(Protocol):
    """What the metrics need of the memory service."""

    def figures(self) -> dict[str, float]:
        """Flat figures: index_vectors, search_cache_hits/misses, and pool_* when pooled."""
        ...


class _MemoryCollector(Collector):
    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "index_vectors": ("gauge", "Vectors in the memory index."),
        "search_cache_hits": ("counter", "Memory searches answered from the search cache."),
        "search_cache_misses": ("counter", "Memory searches that went to the index."),
        "pool_acquisitions": ("counter", "Store connections handed out by the pool."),
        "pool_served_idle": ("counter", "Acquisitions served at once by an idle healthy connection."),
        "pool_waits": ("counter", "Acquisitions that had to wait for a connection."),
        "pool_replaced_dead": ("counter", "Dead connections replaced instead of handed out."),
        "pool_open": ("gauge", "Store connections open."),
        "pool_in_use": ("gauge", "Store connections in use."),
        "pool_efficiency": (
            "gauge",
            "Share of acquisitions served by an idle healthy connection (KPI > 0.85).",
        ),
    }

    def __init__(self, view: MemoryView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        out: list[Metric] = []
        for name, value in self._view.figures().items():
            kind, text = self._HELP.get(name, ("gauge", name))
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(f"gateway_memory_{name}", text)
            else:
                family = GaugeMetricFamily(f"gateway_memory_{name}", text)
            family.add_metric((), value)
            out.append(family)
        return out


class _RouterCollector(Collector):
    def __init__(self, router: RouterView) -> None:
        self._router = router

    def describe(self) -> Iterable[Metric]:
        return []  # families are only known at collect time

    def collect(self) -> Iterable[Metric]:
        breaker = GaugeMetricFamily(
            "gateway_breaker_state",
            "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
            labels=("provider", "upstream_model"),
        )
        for provider, model, state in self._router.breaker_states():
            breaker.add_metric((provider, model), int(state))
        score = GaugeMetricFamily(
            "gateway_deployment_score",
            "Each deployment's live routing score (0..1) in each model group.",
            labels=("model", "provider", "upstream_model"),
        )
        for group, provider, model, value in self._router.scores():
            score.add_metric((group, provider, model), value)
        return [breaker, score]


class GatewayMetrics:
    """The gateway's metrics; one instance per app, reached through ``keys.METRICS``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Client requests answered, by endpoint, model group, provider and HTTP status.",
            ("endpoint", "model", "provider", "status_code"),
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response finished (streams: to the last byte).",
            ("endpoint", "model", "provider"),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Client requests being handled now.", registry=r)
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Requests sent to providers, by provider, upstream model and outcome.",
            ("provider", "upstream_model", "outcome"),
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed provider requests, by provider, upstream model and error class.",
            ("provider", "upstream_model", "error_type"),
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time a provider took to answer (headers for streams, whole body otherwise).",
            ("provider", "upstream_model"),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: time from request received to the first chunk sent to the client, by the "
            "model the client asked for, the model that answered and its provider.",
            ("gen_ai_request_model", "gen_ai_response_model", "gen_ai_provider_name"),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request as the provider reported them, by the model the client asked for, "
            "the model that answered, its provider and the token type (input, output).",
            ("gen_ai_request_model", "gen_ai_response_model", "gen_ai_provider_name", "gen_ai_token_type"),
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )

        self.retries = Counter(
            "gateway_retries",
            "Upstream attempts beyond the first, by the model group that served the request.",
            ("model",),
            registry=r,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Requests served by a deployment other than the first choice (the seed's fallback "
            "rate KPI is this over gateway_requests_total).",
            ("model",),
            registry=r,
        )
        self.cache_requests = Counter(
            "gateway_cache_requests",
            "Cacheable-path requests by category and result (hit, miss, bypass, refresh); hit "
            "rate = hit / (hit + miss).",
            ("category", "result"),
            registry=r,
        )
        self.cache_evictions = Counter(
            "gateway_cache_evictions",
            "Entries evicted to keep a category within its byte budget.",
            ("category",),
            registry=r,
        )
        self.cost = Counter(
            "gateway_cost_usd",
            "Spend in US dollars, from the policy's prices and the usage providers reported.",
            ("model", "provider", "upstream_model"),
            registry=r,
        )

        # Teams are the policy's (auth.teams), reasons the limits' own: bounded, never client text.
        self.spend = Counter(
            "gateway_spend_usd",
            "Spend in US dollars by team (virtual keys), from the policy's prices and reported usage.",
            ("team",),
            registry=r,
        )
        self.refusals = Counter(
            "gateway_refusals",
            "Requests refused by a key's limits, by team and reason (requests, tokens, budget).",
            ("team", "reason"),
            registry=r,
        )
        self.limits_local = Counter(
            "gateway_limits_local",
            "Limit checks counted in this process because the limits' Redis was unavailable "
            "(auth.limits_fail: open).",
            registry=r,
        )

    def cache_collector(self, view: CacheView) -> None:
        """Export the cache store's per-category footprint and health, read at scrape time."""
        self.registry.register(_CacheCollector(view))

    def memory_collector(self, view: MemoryView) -> None:
        """Export the memory service's index size, search cache and store pool, at scrape time."""
        self.registry.register(_MemoryCollector(view))

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, memoised: the hot path skips prometheus_client's label
        validation and lock. Label values are bounded (see the module docstring), so is this."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def register_router(self, router: RouterView) -> None:
        """Export the router's live breaker states and scores, read at scrape time."""
        self.registry.register(_RouterCollector(router))

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
