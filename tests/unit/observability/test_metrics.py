"""The plain-number metrics export exactly what prometheus-client's own metrics would."""

from __future__ import annotations

import prometheus_client as prom
import pytest

from gateway.observability.metrics import (
    Counter,
    GatewayMetrics,
    Gauge,
    Histogram,
    _LogCollector,
    memory_search_histogram,
)


def reference_registry(metrics: GatewayMetrics) -> tuple[prom.CollectorRegistry, dict[str, object]]:
    """prometheus-client metrics with the same names, help texts, labels and buckets."""
    registry = prom.CollectorRegistry(auto_describe=True)
    made: dict[str, object] = {}
    for family in vars(metrics).values():
        if isinstance(family, Histogram):
            made[family.name] = prom.Histogram(
                family.name,
                family.documentation,
                family.labelnames,
                buckets=[float(le) for le in family._les],
                registry=registry,
            )
        elif isinstance(family, Counter):
            made[family.name] = prom.Counter(
                family.name, family.documentation, family.labelnames, registry=registry
            )
        elif isinstance(family, Gauge):
            made[family.name] = prom.Gauge(
                family.name, family.documentation, family.labelnames, registry=registry
            )
    return registry, made


def test_exposition_is_the_same_text_prometheus_client_writes() -> None:
    metrics = GatewayMetrics()
    registry, ref = reference_registry(metrics)

    def both(name: str, labels: tuple[str, ...], op: str, *args: float) -> None:
        family = next(f for f in vars(metrics).values() if getattr(f, "name", None) == name)
        getattr(metrics.child(family, *labels), op)(*args)
        other = ref[name]
        getattr(other.labels(*labels) if labels else other, op)(*args)  # type: ignore[attr-defined]

    both("gateway_requests", ("/v1/chat/completions", "gpt", "a", "200"), "inc")
    both("gateway_requests", ("/v1/chat/completions", "gpt", "a", "200"), "inc")
    both("gateway_requests", ("unmatched", "", "", "404"), "inc")
    for value in (0.0, 0.0004, 0.0005, 0.0006, 1, 2.5, 299.9, 300, 301, 10_000):
        both("gateway_request_duration_seconds", ("/v1/chat/completions", "gpt", "a"), "observe", value)
    for tokens in (0, 1, 3, 4, 5, 1048576, 2_000_000):
        both(
            "gen_ai_client_token_usage", ("chat", "openai", "gpt", "gpt-4o", "a", "input"), "observe", tokens
        )
    both("gateway_cost_usd", ("gpt", "a", "gpt-4o"), "inc", 0.000125)
    both("gateway_limits_local", (), "inc")
    both("gateway_requests_in_flight", (), "inc")
    both("gateway_requests_in_flight", (), "inc")
    both("gateway_requests_in_flight", (), "dec")
    for family, results in (  # the series GatewayMetrics starts at 0 (known label values)
        ("gateway_rollouts", ("promoted", "rolled_back", "aborted")),
        ("gateway_policy_reloads", ("applied", "unchanged", "invalid", "failed")),
        ("gateway_auth_throttled", ("api", "admin", "metrics")),
        ("gateway_previous_token_used", ("admin", "metrics", "key")),
    ):
        for result in results:
            ref[family].labels(result)  # type: ignore[attr-defined]

    # Read at scrape time from the process's log handler: what tests run before this one in the
    # same process dropped (a stuck stderr's) is in it, and the same in both renders.
    (log_dropped,) = _LogCollector().collect()
    dropped = prom.Counter(log_dropped.name, log_dropped.documentation, registry=registry)
    dropped.inc(next(s.value for s in log_dropped.samples if s.name.endswith("_total")))

    # prometheus-client's own process_* collector, read from /proc: its figures move between
    # two renders, so it is compared by its presence only.
    rendered = metrics.render().decode()
    assert "\nprocess_open_fds " in rendered and "\nprocess_cpu_seconds_total " in rendered
    ours = "".join(line + "\n" for line in rendered.splitlines() if "process_" not in line)
    theirs = prom.generate_latest(registry).decode()
    assert ours == theirs
    assert (
        'gateway_request_duration_seconds_bucket{endpoint="/v1/chat/completions",le="0.0005",model="gpt",provider="a"} 3.0'
        in ours
    )
    assert "gateway_requests_in_flight 1.0" in ours and "gateway_limits_local_total 1.0" in ours


def test_sample_values_read_back_through_the_registry() -> None:
    metrics = GatewayMetrics()
    metrics.child(metrics.retries, "gpt").inc(2)
    metrics.child(metrics.upstream_duration, "a", "m").observe(0.3)
    registry = metrics.registry
    assert registry.get_sample_value("gateway_retries_total", {"model": "gpt"}) == 2.0
    assert (
        registry.get_sample_value(
            "gateway_upstream_duration_seconds_count", {"provider": "a", "upstream_model": "m"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "gateway_upstream_duration_seconds_bucket", {"provider": "a", "upstream_model": "m", "le": "0.25"}
        )
        == 0.0
    )


def test_a_child_is_made_once_and_checks_its_label_count() -> None:
    metrics = GatewayMetrics()
    first = metrics.child(metrics.fallbacks, "gpt")
    assert metrics.child(metrics.fallbacks, "gpt") is first
    with pytest.raises(ValueError, match="expected 1 label values"):
        metrics.child(metrics.fallbacks, "gpt", "extra")
    with pytest.raises(ValueError):
        first.inc(-1)


class _Memory:
    """A MemoryView: the memory service's figures and its search durations."""

    def __init__(self) -> None:
        self.search_duration = memory_search_histogram()

    def figures(self) -> dict[str, float]:
        return {"index_vectors": 3.0, "search_cache_hits": 1.0}


def test_memory_search_durations_are_a_histogram() -> None:
    metrics, memory = GatewayMetrics(), _Memory()
    metrics.memory_collector(memory)
    for seconds in (0.0002, 0.003, 0.003, 5.0):
        memory.search_duration.observe(seconds)
    registry = metrics.registry
    name = "gateway_memory_search_duration_seconds"
    assert registry.get_sample_value(f"{name}_count") == 4
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.00025"}) == 1
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.005"}) == 3
    assert registry.get_sample_value(f"{name}_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value(f"{name}_sum") == pytest.approx(5.0062)
    assert registry.get_sample_value("gateway_memory_index_vectors") == 3


def test_the_failover_recovery_series_exist_at_zero_from_the_first_scrape() -> None:
    """Prometheus' increase() misses a series' first appearance: the first failover after a
    timeout was lost from the recovery KPI (an outside probe); the links' kinds already started at 0."""
    totals = GatewayMetrics().recovery.totals()  # (exported with the health figures)
    assert totals[("failover", "ok")] == totals[("failover", "failed")] == 0
