"""A worker set's written totals (``observability/worker_totals.py``), on real files."""

from __future__ import annotations

from pathlib import Path

from gateway.observability import worker_totals
from gateway.observability.exposition import merge_expositions

TEXT = """# HELP gateway_requests_total Requests.
# TYPE gateway_requests_total counter
gateway_requests_total{endpoint="/v1/chat/completions"} {n}
# HELP gateway_requests_in_flight In flight.
# TYPE gateway_requests_in_flight gauge
gateway_requests_in_flight 3.0
# HELP gateway_latency_seconds Latency.
# TYPE gateway_latency_seconds histogram
gateway_latency_seconds_bucket{le="+Inf"} {n}
gateway_latency_seconds_count {n}
gateway_latency_seconds_sum 1.5
"""


def text(n: int) -> str:
    return TEXT.replace("{n}", f"{float(n)}")


def total(texts: list[str]) -> float:
    merged = merge_expositions([(-1, t) for t in texts]).decode()
    line = next(x for x in merged.splitlines() if x.startswith("gateway_requests_total{"))
    return float(line.rpartition(" ")[2])


def test_only_the_families_that_grow_are_written(tmp_path: Path) -> None:
    worker_totals.save(str(tmp_path), 0, 100, text(7))
    written = (tmp_path / "totals-0-100.prom").read_text()
    assert "gateway_requests_total" in written and "gateway_latency_seconds_count 7.0" in written
    assert "in_flight" not in written  # a gauge goes down: never part of a dead worker's totals
    assert list(tmp_path.glob("*.tmp")) == []


def test_the_processes_that_answered_live_are_left_out_and_the_rest_read(tmp_path: Path) -> None:
    run = str(tmp_path)
    worker_totals.save(run, 0, 100, text(5))  # answered live
    worker_totals.save(run, 1, 200, text(7))  # did not answer (timed out, or died)
    assert total(worker_totals.others(run, {100})) == 7
    assert worker_totals.others(run, {100, 200}) == []


def test_a_retired_worker_is_folded_into_one_file_and_still_counted(tmp_path: Path) -> None:
    run = str(tmp_path)
    worker_totals.retire(run, 1, 999)  # never scraped: nothing to keep, no error
    for pid, n in ((200, 7), (201, 4), (202, 2)):  # worker 1 died three times
        worker_totals.save(run, 1, pid, text(n))
        worker_totals.retire(run, 1, pid)
    worker_totals.save(run, 1, 203, text(1))  # its current incarnation
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".prom")
    assert names == ["retired.prom", "totals-1-203.prom"]
    assert total(worker_totals.others(run, {203})) == 13  # the dead ones, once each
    assert total(worker_totals.others(run, set())) == 14  # and the live one's file when it is silent
    retired = (tmp_path / "retired.prom").read_text()
    assert "gateway_latency_seconds_count 13.0" in retired and "gateway_latency_seconds_sum 4.5" in retired
