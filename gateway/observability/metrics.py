"""Every Prometheus metric the gateway exports, defined once, owned by the app.

Names follow the OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage``,
``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token``) in the form the
OTel-to-Prometheus mapping gives them (dots to underscores, ``_seconds`` for unit ``s``, none for
``{token}``), else ``gateway_*`` with ``_seconds`` / ``_total`` suffixes. Label values are bounded: model names come from the policy
(an unknown model is recorded as ``unknown``), never from free client input, and no label or
value ever holds a key.

The per-request metrics are plain Python numbers in dicts keyed by label tuples (``Counter``,
``Gauge``, ``Histogram`` below), exported by one collector at scrape time in the same text
prometheus-client's own metrics would give: prometheus-client takes a threading lock for every
``inc``/``observe``, which the event loop never needs. They are only safe from one thread: every
call site runs on the event loop (the memory service's worker threads keep their own figures,
read at scrape time through ``MemoryView``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import ClassVar, Generic, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.observability.stderr import log_lines_dropped

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
# Agreement scores: cosine similarity or a length ratio (shorter over longer), 0..1.
_AGREEMENT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_MEMORY_SEARCH_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
# Time per output token: OTel's advice (10 ms .. 2.5 s) below which fast local models and the
# fake provider stream (down to 0.1 ms a token).
_PER_TOKEN_BUCKETS_S = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)

# The GenAI labels every gen_ai_* family carries, in this order (``GenAILabels`` builds them):
# the operation (chat, text_completion, embeddings), the vendor (OTel's gen_ai.provider.name:
# openai, azure.ai.openai, anthropic, gcp.gemini), the model group the client asked for, the
# upstream model that answered, and the policy's own provider name (``provider``).
GENAI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "provider",
)

# OTel's gen_ai.provider.name for each provider kind of the policy.
_VENDOR_OF_KIND = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
}


def vendor_of(kind: str) -> str:
    """OTel's ``gen_ai.provider.name`` for a policy provider ``kind`` (``_OTHER`` if unknown)."""
    return _VENDOR_OF_KIND.get(kind, "_OTHER")


CONTENT_TYPE = CONTENT_TYPE_LATEST


class CounterChild:
    """One labelled series of a counter: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeChild:
    """One labelled series of a gauge: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramChild:
    """One labelled series of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # sorted, +Inf last
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= amount.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class _Family(ABC, Generic[C]):
    """A metric: its name, help text and label names, and a child per label-value tuple."""

    kind: ClassVar[str]
    __slots__ = ("children", "documentation", "labelnames", "name")

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self.children[()] = self._new()

    @abstractmethod
    def _new(self) -> C:
        """A new child (each kind of metric makes its own)."""

    def labels(self, *values: str) -> C:
        """The child for ``values`` (one per label name), made on first use."""
        found = self.children.get(values)
        if found is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {values!r}")
            found = self.children[values] = self._new()
        return found

    @abstractmethod
    def family(self) -> Metric:
        """The metric's samples now, as prometheus-client's exposition expects them."""


class Counter(_Family[CounterChild]):
    kind = "counter"
    __slots__ = ()

    def _new(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """Increment an unlabelled counter."""
        self.children[()].inc(amount)

    def family(self) -> Metric:
        out = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            out.add_metric(values, child.value)
        return out


class Gauge(_Family[GaugeChild]):
    kind = "gauge"
    __slots__ = ()

    def _new(self) -> GaugeChild:
        return GaugeChild()

    def inc(self, amount: float = 1.0) -> None:
        self.children[()].value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.children[()].value -= amount

    def set(self, value: float) -> None:
        self.children[()].set(value)

    def family(self) -> Metric:
        out = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            out.add_metric(values, child.value)
        return out


class Histogram(_Family[HistogramChild]):
    kind = "histogram"
    __slots__ = ("_bounds", "_les")

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], buckets: Iterable[float]
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self._bounds = tuple(bounds)
        self._les = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames)

    def _new(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def family(self) -> Metric:
        out = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            out.add_metric(values, buckets, child.sum)
        return out


class _PlainCollector(Collector):
    """Exports the plain metrics, in the order they were defined."""

    def __init__(self, families: list[Counter | Gauge | Histogram]) -> None:
        self._families = families

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return [family.family() for family in self._families]


class _LogCollector(Collector):
    """Exports the log lines (other than the access log's) that stderr did not take, read from
    the process's ``StderrHandler`` at scrape time (logging is process-wide, not per app)."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "gateway_log_dropped",
            "Log lines other than the access log's dropped because stderr did not take them (more "
            "than the log's backlog bound waiting on a stuck reader, or a reader gone).",
        )
        family.add_metric((), float(log_lines_dropped()))
        return [family]


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


def memory_search_histogram() -> HistogramChild:
    """The memory service's search durations (seconds), exported as
    ``gateway_memory_search_duration_seconds``."""
    return HistogramChild((*_MEMORY_SEARCH_BUCKETS_S, float("inf")))


class MemoryView(Protocol):
    """What the metrics need of the memory service."""

    def figures(self) -> dict[str, float]:
        """Flat figures: index_vectors, search_cache_hits/misses, and pool_* when pooled."""
        ...

    @property
    def search_duration(self) -> HistogramChild:
        """Search durations, made by ``memory_search_histogram``."""
        ...


class _MemoryCollector(Collector):
    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "index_vectors": ("gauge", "Vectors in the memory index."),
        "index_sealed_segments": ("gauge", "Sealed (memory-mapped) segments of the memory index."),
        "index_dead_vectors": (
            "gauge",
            "Removed or replaced memories still in sealed index segments (searches skip them).",
        ),
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
        self._les = tuple(
            floatToGoString(b)  # type: ignore[no-untyped-call]
            for b in (*_MEMORY_SEARCH_BUCKETS_S, float("inf"))
        )

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
        searches = self._view.search_duration
        cumulative, buckets = 0, []
        for le, count in zip(self._les, searches.counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        duration = HistogramMetricFamily(
            "gateway_memory_search_duration_seconds",
            "Memory searches (POST /v1/memory/search and chats with memory), query embedding included.",
        )
        duration.add_metric((), buckets, searches.sum)
        out.append(duration)
        return out


class IngestView(Protocol):
    """What the metrics need of file ingestion (``memory/ingest.py``)."""

    def figures(self) -> dict[str, float]:
        """Flat figures: jobs_running, jobs_started, bytes_read, chunks_stored, spool_bytes."""
        ...

    def finished_by_status(self) -> dict[str, int]:
        """Jobs ended in this process, by status (done, failed, cancelled, paused, interrupted)."""
        ...


class _IngestCollector(Collector):
    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "jobs_running": ("gauge", "Ingest jobs running or queued in this process."),
        "jobs_started": ("counter", "Ingest jobs started (uploads, and resumes)."),
        "bytes_read": ("counter", "Bytes of uploaded files read by ingest jobs."),
        "chunks_stored": ("counter", "Memories created by ingest jobs."),
        "spool_bytes": (
            "gauge",
            "Bytes the ingest spool holds on disk (uploads being received, files of unfinished jobs).",
        ),
    }

    def __init__(self, view: IngestView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        out: list[Metric] = []
        for name, value in self._view.figures().items():
            kind, text = self._HELP.get(name, ("gauge", name))
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(f"gateway_memory_ingest_{name}", text)
            else:
                family = GaugeMetricFamily(f"gateway_memory_ingest_{name}", text)
            family.add_metric((), value)
            out.append(family)
        finished = CounterMetricFamily(
            "gateway_memory_ingest_jobs_finished", "Ingest jobs ended, by final status.", labels=("status",)
        )
        for status, count in sorted(self._view.finished_by_status().items()):
            finished.add_metric((status,), count)
        out.append(finished)
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


class RecoveryActions:
    """``gateway_recovery_actions_total{kind,result}``: what the gateway did by itself to recover
    from a fault, ``ok`` or ``failed`` (the seed's recovery success KPI is ok / all).

    Two kinds of figures feed it: actions counted here as they happen (``count``: failovers after
    a timeout, memory cleanups), and totals kept by the objects that act (``add_source``: the
    Redis links' reconnects, the memory pool's replacements), read at scrape time. A (kind,
    result) pair has one owner, so the figures just add up."""

    __slots__ = ("_counts", "_sources")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._sources: list[Callable[[], Iterable[tuple[str, str, int]]]] = []

    def count(self, kind: str, result: str, amount: int = 1) -> None:
        """One action of ``kind`` (a fixed name, never client text) ended with ``result``."""
        key = (kind, result)
        self._counts[key] = self._counts.get(key, 0) + amount

    def add_source(self, source: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """Read ``source()`` -> (kind, result, total so far) at every scrape."""
        self._sources.append(source)

    def totals(self) -> dict[tuple[str, str], int]:
        """Every (kind, result) with its total now."""
        out = dict(self._counts)
        for source in self._sources:
            for kind, result, total in source():
                out[(kind, result)] = out.get((kind, result), 0) + total
        return out


class _RecoveryCollector(Collector):
    def __init__(self, actions: RecoveryActions) -> None:
        self._actions = actions

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "gateway_recovery_actions",
            "Automatic recovery actions by kind (redis_cache_reconnect, redis_limits_reconnect, "
            "redis_routing_reconnect, redis_key_bus_reconnect, redis_throttle_reconnect, "
            "memory_store_reconnect, failover, memory_cleanup_*) and result (ok, failed); the seed's "
            "recovery success KPI is ok / all.",
            labels=("kind", "result"),
        )
        for (kind, result), total in sorted(self._actions.totals().items()):
            family.add_metric((kind, result), total)
        return [family]


class HealthView(Protocol):
    """What the metrics need of the health monitor (``service/health.py``)."""

    def dependencies_up(self) -> Iterable[tuple[str, bool]]:
        """(dependency, up or degraded) as of the last check."""
        ...

    def loop_lag_s(self) -> float:
        """The event loop's worst lateness over the last few seconds."""
        ...


class _HealthCollector(Collector):
    def __init__(self, view: HealthView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "gateway_dependency_up",
            "1 while a dependency (deployment:<provider>/<model>, redis:cache, redis:limits, "
            "redis:routing, redis:throttle, redis:keybus, memory:store, memory:index, event_loop, "
            "resident_memory) is up or degraded, 0 while it is down, as of the health monitor's "
            "last check.",
            labels=("dependency",),
        )
        for name, is_up in self._view.dependencies_up():
            up.add_metric((name,), 1 if is_up else 0)
        lag = GaugeMetricFamily(
            "gateway_event_loop_lag_seconds",
            "How late the event loop woke a sleeping task, worst over the last 10 seconds.",
        )
        lag.add_metric((), self._view.loop_lag_s())
        families = [up, lag]
        try:
            tasks = len(asyncio.all_tasks())  # a scrape runs on the loop (its handler's task counts)
        except RuntimeError:  # no running loop: collected from elsewhere
            return families
        running = GaugeMetricFamily(
            "gateway_event_loop_tasks",
            "asyncio tasks the event loop holds now (requests being handled, streams, background "
            "work, this scrape's own); back to its idle figure once load stops, else a leak.",
        )
        running.add_metric((), tasks)
        return [*families, running]


class GatewayMetrics:
    """The gateway's metrics; one instance per app, reached through ``keys.METRICS``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests",
            "Client requests answered, by endpoint, model group, provider and HTTP status.",
            ("endpoint", "model", "provider", "status_code"),
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response finished (streams: to the last byte).",
            ("endpoint", "model", "provider"),
            buckets=_LATENCY_BUCKETS_S,
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Client requests being handled now.")
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Requests sent to providers, by provider, upstream model and outcome.",
            ("provider", "upstream_model", "outcome"),
        )
        # Front doors (issue 17): each attempt of a front door's call, passed to the provider in the
        # door's own format (native) or translated to chat for it.
        self.front_door_attempts = Counter(
            "gateway_front_door_attempts",
            "Provider attempts of front-door calls (e.g. /v1/messages), by endpoint and mode "
            "(native: the client's format passed through; translated: via chat).",
            ("endpoint", "mode"),
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed provider requests, by provider, upstream model and error class.",
            ("provider", "upstream_model", "error_type"),
        )
        # Reasons are ``service.streams.STREAM_ERROR_REASONS``: bounded, never client or provider text.
        self.stream_errors = Counter(
            "gateway_stream_errors",
            "Streams that failed after their first byte went to the client (answered 200, so not "
            "in the 5xx of gateway_requests_total), by endpoint, model group, provider and reason: "
            "upstream_closed, timeout, bad_event, provider_error, draining (the gateway's drain grace "
            "ran out). A client that leaves is not counted.",
            ("endpoint", "model", "provider", "reason"),
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time a provider took to answer (headers for streams, whole body otherwise).",
            ("provider", "upstream_model"),
            buckets=_LATENCY_BUCKETS_S,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Time the gateway took to get an answer from providers (failover included; streams: "
            "to the last chunk), by the GenAI labels and, for a call that failed, error_type "
            "(the gateway error class).",
            (*GENAI_LABELS, "error_type"),
            buckets=_LATENCY_BUCKETS_S,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: time from request received to the first chunk sent to the client, by the GenAI labels.",
            GENAI_LABELS,
            buckets=_LATENCY_BUCKETS_S,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streams that ended whole: time per output token after the first, (end - first "
            "chunk) / (output tokens - 1), by the GenAI labels.",
            GENAI_LABELS,
            buckets=_PER_TOKEN_BUCKETS_S,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request as the provider reported them, by the GenAI labels and the token "
            "type (input, output).",
            (*GENAI_LABELS, "gen_ai_token_type"),
            buckets=_TOKEN_BUCKETS,
        )

        self.retries = Counter(
            "gateway_retries",
            "Upstream attempts beyond the first, by the model group that served the request.",
            ("model",),
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Requests served by a deployment other than the first choice (the seed's fallback "
            "rate KPI is this over gateway_requests_total).",
            ("model",),
        )
        self.cache_requests = Counter(
            "gateway_cache_requests",
            "Cacheable-path requests by category and result (hit, miss, bypass, refresh); hit "
            "rate = hit / (hit + miss).",
            ("category", "result"),
        )
        self.cache_evictions = Counter(
            "gateway_cache_evictions",
            "Entries evicted to keep a category within its byte budget.",
            ("category",),
        )
        self.cost = Counter(
            "gateway_cost_usd",
            "Spend in US dollars at the policy's prices: the usage providers reported, per-unit "
            "prices, and the estimate charged for calls that reported no usage.",
            ("model", "provider", "upstream_model"),
        )
        # The part of gateway_cost_usd_total that is an estimate (no usage reported: the prompt's
        # characters / 4 plus the output allowed, as budgets are charged), so a dashboard can
        # tell the two apart without a label that would change every cost series' identity.
        self.cost_estimated = Counter(
            "gateway_cost_estimated_usd",
            "Of gateway_cost_usd_total, the spend estimated for calls whose provider reported no "
            "usage (in US dollars, as budgets are charged for them).",
            ("model", "provider", "upstream_model"),
        )

        # Teams are the policy's (auth.teams), reasons the limits' own: bounded, never client text.
        self.spend = Counter(
            "gateway_spend_usd",
            "Spend in US dollars by team (virtual keys), from the policy's prices and reported usage.",
            ("team",),
        )
        self.refusals = Counter(
            "gateway_refusals",
            "Requests refused by a key's limits, by team and reason (requests, tokens, budget, "
            "team_budget: the team's shared budget; team_requests, team_tokens: the team's shared RPM and "
            "TPM).",
            ("team", "reason"),
        )
        self.auth_throttled = Counter(
            "gateway_auth_throttled",
            "Requests refused (429 auth_throttled) before their credential was read, because their "
            "client address failed authentication too often within the window, by door: api "
            "(virtual keys), admin (SOPHIA_ADMIN_TOKEN) or metrics (SOPHIA_METRICS_TOKEN).",
            ("door",),
        )
        self.previous_token_used = Counter(
            "gateway_previous_token_used",
            "Requests let in with a previous operator token, by token: admin "
            "(SOPHIA_ADMIN_TOKEN_PREVIOUS) or metrics (SOPHIA_METRICS_TOKEN_PREVIOUS). Flat for "
            "long enough (every client, every Prometheus, scraped by each replica): the previous "
            "token can be removed. key: a virtual key's secret rotated out, within its grace.",
            ("token",),
        )
        self.limits_local = Counter(
            "gateway_limits_local",
            "Limit checks counted in this process because the limits' Redis was unavailable "
            "(auth.limits_fail: open).",
        )

        self.policy_reloads = Counter(
            "gateway_policy_reloads",
            "Policy reloads by result: applied, unchanged (the file means what is in force), "
            "invalid (the file did not validate; the policy in force kept serving), failed.",
            ("result",),
        )
        self.policy_info = Gauge(
            "gateway_policy_info",
            "1 for the version (a hash of the validated policy, as GET /admin/policy shows it) "
            "this process serves.",
            ("version",),
        )

        self.shared_state_up = Gauge(
            "gateway_shared_state_up",
            "1 while this replica shares routing state (breakers, 429 cool-downs, figures, votes) "
            "with the others through Redis; 0 when it routes on its own figures (Redis down, "
            "no REDIS_URL, or SOPHIA_SHARED_ROUTING=0).",
        )
        self.shared_state_replicas = Gauge(
            "gateway_shared_state_replicas",
            "Other replicas whose routing summaries this one merged at its last sync.",
        )
        # Rollouts are the policy's (group, provider, upstream model): bounded, never client text.
        self.rollout_step = Gauge(
            "gateway_rollout_step_percent",
            "Share (percent) of its model group's first choices a deployment in rollout has now: "
            "its step while rolling or paused, 0 before its smoke prompts pass or once rolled back "
            "or aborted, 100 once promoted.",
            ("model", "provider", "upstream_model"),
        )
        self.rollouts = Counter(
            "gateway_rollouts",
            "Rollouts finished by this replica, by result (promoted, rolled_back, aborted); the "
            "seed's rollback-rate KPI (< 10 %) is rolled_back over all of them.",
            ("result",),
        )

        # Shadow traffic (``service/shadow.py``): the group, and the candidate from the policy.
        self.shadow_requests = Counter(
            "gateway_shadow_requests",
            "Requests mirrored to a group's shadow candidate, by result: ok, error, dropped (the "
            "candidate's max_in_flight was full).",
            ("model", "provider", "upstream_model", "result"),
        )
        self.shadow_latency = Histogram(
            "gateway_shadow_latency_seconds",
            "Time the shadow candidate took to answer a mirrored request (whole body).",
            ("model", "provider", "upstream_model"),
            buckets=_LATENCY_BUCKETS_S,
        )
        self.shadow_cost = Counter(
            "gateway_shadow_cost_usd",
            "Spend on shadow candidates in US dollars (counted apart from gateway_cost_usd_total).",
            ("model", "provider", "upstream_model"),
        )
        self.shadow_agreement = Histogram(
            "gateway_shadow_agreement",
            "Agreement of a candidate's answer with the served one, 0..1, by measure: cosine "
            "(of their embeddings) or length (shorter over longer; 1 for an exact match).",
            ("model", "provider", "upstream_model", "measure"),
            buckets=_AGREEMENT_BUCKETS,
        )

        self.access_log_dropped = Counter(
            "gateway_access_log_dropped",
            "Access log lines dropped because stderr did not take them (more than the access "
            "log's backlog bound was waiting on a full pipe).",
        )
        # Counters whose label values are known up front start at 0, so each series exists from
        # the first scrape: Prometheus' increase() and rate() miss a series' first appearance,
        # and a ratio over a series that never existed has no data at all (the rollback KPI).
        for result in ("promoted", "rolled_back", "aborted"):
            self.rollouts.labels(result)
        for result in ("applied", "unchanged", "invalid", "failed"):
            self.policy_reloads.labels(result)
        for door in ("api", "admin", "metrics"):
            self.auth_throttled.labels(door)
        for token in ("admin", "metrics", "key"):
            self.previous_token_used.labels(token)
        self.registry.register(
            _PlainCollector([m for m in vars(self).values() if isinstance(m, Counter | Gauge | Histogram)])
        )
        self.registry.register(_LogCollector())
        # The standard process_* series every Prometheus client exports by default (CPU seconds,
        # resident and virtual memory, open and most descriptors, start time), read from /proc
        # at scrape time; with --workers, per worker (a ``worker`` label) but CPU, which sums.
        ProcessCollector(registry=self.registry)
        self.recovery = RecoveryActions()  # exported with the health figures (health_collector)
        # Failovers after a timeout (``Router``) start at 0, as the other known series (the links'
        # sources report theirs from the start): increase() misses a series' first appearance.
        for result in ("ok", "failed"):
            self.recovery.count("failover", result, 0)

    def cache_collector(self, view: CacheView) -> None:
        """Export the cache store's per-category footprint and health, read at scrape time."""
        self.registry.register(_CacheCollector(view))

    def health_collector(self, view: HealthView) -> None:
        """Export each dependency's up/down, the event loop's lag and the recovery actions, read
        at scrape time."""
        self.registry.register(_HealthCollector(view))
        self.registry.register(_RecoveryCollector(self.recovery))

    def memory_collector(self, view: MemoryView) -> None:
        """Export the memory service's index size, search cache and store pool, at scrape time."""
        self.registry.register(_MemoryCollector(view))

    def ingest_collector(self, view: IngestView) -> None:
        """Export file ingestion's jobs, bytes and memories, at scrape time."""
        self.registry.register(_IngestCollector(view))

    def child(self, metric: _Family[C], *labels: str) -> C:
        """``metric.labels(*labels)``: the series for these label values, a dict lookup once made.
        Label values are bounded (see the module docstring), so is the number of series."""
        found = metric.children.get(labels)
        if found is None:
            found = metric.labels(*labels)
        return found

    def register_router(self, router: RouterView) -> None:
        """Export the router's live breaker states and scores, read at scrape time."""
        self.registry.register(_RouterCollector(router))

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
