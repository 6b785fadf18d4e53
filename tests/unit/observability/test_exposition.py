"""Merging the workers' expositions into one (``serve --workers N``'s /metrics)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.exposition import merge_expositions

WORKER_0 = """\
# HELP gateway_requests_total Client requests answered.
# TYPE gateway_requests_total counter
gateway_requests_total{endpoint="/v1/chat/completions",status_code="200"} 3.0
# HELP gateway_request_duration_seconds Time.
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_bucket{le="0.1"} 2.0
gateway_request_duration_seconds_bucket{le="+Inf"} 3.0
gateway_request_duration_seconds_count 3.0
gateway_request_duration_seconds_sum 0.5
# HELP gateway_requests_in_flight Client requests being handled now.
# TYPE gateway_requests_in_flight gauge
gateway_requests_in_flight 1.0
# HELP gateway_breaker_state Breaker.
# TYPE gateway_breaker_state gauge
gateway_breaker_state{provider="a"} 0.0
"""

WORKER_1 = """\
# HELP gateway_requests_total Client requests answered.
# TYPE gateway_requests_total counter
gateway_requests_total{endpoint="/v1/chat/completions",status_code="200"} 4.0
gateway_requests_total{endpoint="/v1/chat/completions",status_code="502"} 1.0
# HELP gateway_request_duration_seconds Time.
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_bucket{le="0.1"} 4.0
gateway_request_duration_seconds_bucket{le="+Inf"} 5.0
gateway_request_duration_seconds_count 5.0
gateway_request_duration_seconds_sum 1.25
# HELP gateway_requests_in_flight Client requests being handled now.
# TYPE gateway_requests_in_flight gauge
gateway_requests_in_flight 2.0
# HELP gateway_breaker_state Breaker.
# TYPE gateway_breaker_state gauge
gateway_breaker_state{provider="a"} 2.0
"""


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_histograms_and_in_flight_are_summed_other_gauges_kept_per_worker() -> None:
    merged = samples(merge_expositions([(0, WORKER_0), (1, WORKER_1)]))
    chat = ("endpoint", "/v1/chat/completions")
    assert merged[("gateway_requests_total", (chat, ("status_code", "200")))] == 7
    assert merged[("gateway_requests_total", (chat, ("status_code", "502")))] == 1
    assert merged[("gateway_request_duration_seconds_bucket", (("le", "0.1"),))] == 6
    assert merged[("gateway_request_duration_seconds_bucket", (("le", "+Inf"),))] == 8
    assert merged[("gateway_request_duration_seconds_count", ())] == 8
    assert merged[("gateway_request_duration_seconds_sum", ())] == 1.75
    assert merged[("gateway_requests_in_flight", ())] == 3
    assert merged[("gateway_breaker_state", (("provider", "a"), ("worker", "0")))] == 0
    assert merged[("gateway_breaker_state", (("provider", "a"), ("worker", "1")))] == 2


def test_types_and_help_survive_the_merge() -> None:
    text = merge_expositions([(0, WORKER_0), (1, WORKER_1)]).decode()
    assert "# TYPE gateway_requests_total counter" in text
    assert "# TYPE gateway_request_duration_seconds histogram" in text
    assert "# HELP gateway_requests_in_flight Client requests being handled now." in text
