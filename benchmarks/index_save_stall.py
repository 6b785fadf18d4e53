"""Benchmark: how long saving the memory index stalls the other threads (the event loop among them).

usearch's ``save`` holds the GIL from start to end (its ``add`` and ``search`` release it), so
while the index writes a namespace's graph no other Python thread runs. For each size, this
script builds a usearch index of random 64-dimensional f32 vectors (the ingestion benchmark's
shape) and saves it to a file twice: as usearch does by itself, and with the progress callback
``gateway.memory.index`` passes (``_yield_the_gil``: every 4,096th call lets other threads run).
A second thread wakes every millisecond and records the longest gap between two of its wake-ups
during the save: the stall an event loop would see. Writes its RESULTS.md section.

Run: python benchmarks/index_save_stall.py [--counts 100000 300000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from usearch.index import Index

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402
from gateway.memory.index import _yield_the_gil  # noqa: E402

TITLE = "Memory index saves and the GIL (issue 15)"


def measure(count: int, directory: str) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(count)
    index = Index(ndim=64, metric="cos", dtype="f32", connectivity=16, expansion_add=200)
    index.add(
        np.arange(count, dtype=np.uint64), rng.standard_normal((count, 64)).astype(np.float32), threads=0
    )
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.2)
    out: dict[str, tuple[float, float]] = {}
    try:
        for name, progress in (("usearch alone", None), ("with _yield_the_gil", _yield_the_gil)):
            gaps.clear()
            started = time.perf_counter()
            index.save(os.path.join(directory, f"{count}-{len(out)}.usearch"), progress=progress)
            took = time.perf_counter() - started
            time.sleep(0.05)
            out[name] = (took * 1000, max(gaps) * 1000)
    finally:
        stop.set()
        ticker.join()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for count in args.counts:
            for name, (took_ms, stall_ms) in measure(count, directory).items():
                rows.append(f"| {count:,} | {name} | {took_ms:.0f} | {stall_ms:.0f} |")
                print(rows[-1], flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}), Python "
        f"{platform.python_version()}: `python benchmarks/index_save_stall.py`. A usearch index of "
        "random 64-dimensional f32 vectors saved to a file; a second Python thread waking every "
        "millisecond records its longest gap during the save (the stall an event loop sees: usearch "
        "holds the GIL for the whole save).\n\n"
        "| vectors | save | save (ms) | longest stall of another thread (ms) |\n"
        "|---:|---|---:|---:|\n" + "\n".join(rows) + "\n\n"
        "The callback yields at every 4,096th of its calls (two a node); a phase of usearch's save "
        "makes none, which bounds what yielding can do. The index saves at most every 30 s, only "
        "namespaces that changed, under its own lock (`changing`): searches go on."
    )
    if args.no_write:
        print(body)
    else:
        write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
