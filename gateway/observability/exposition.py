"""One Prometheus exposition for a set of workers (``serve --workers N``), merged from theirs.

Each worker renders its own registry; the worker that gets the scrape asks the others for their
text over their Unix sockets and merges here, at the level of the text format, so nothing in the
workers' metrics code knows it runs in a set:

- counters, histograms and summaries: samples with the same name and labels are summed (a
  histogram's buckets, ``_sum`` and ``_count`` stay consistent, as each worker's are);
- gauges in ``SUMMED_GAUGES`` (requests in flight) are summed too: the set's figure;
- every other gauge (breaker states, live scores, cache and memory sizes: each worker's own
  state) is kept per worker, with a ``worker`` label.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

SUMMED_GAUGES = frozenset({"gateway_requests_in_flight"})
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram", "unknown", "untyped"})


def merge_expositions(texts: Sequence[tuple[int, str]]) -> bytes:
    """The text exposition of every ``(worker index, exposition text)`` merged as above."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            summed = family.type in _SUMMED_TYPES or family.name in SUMMED_GAUGES
            totals = sums[family.name]
            for sample in family.samples:
                labels = dict(sample.labels)
                if not summed:
                    labels["worker"] = str(index)
                key = (sample.name, tuple(sorted(labels.items())))
                totals[key] = totals.get(key, 0.0) + sample.value
    for name, family in families.items():
        family.samples = [Sample(n, dict(labels), value) for (n, labels), value in sums[name].items()]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
