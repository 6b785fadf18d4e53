"""A worker set's counters never go backwards when a worker dies (``serve --workers N``).

The set's ``/metrics`` sums the workers' counters, histograms and summaries as each worker holds
them in memory (``exposition.py``). A worker that dies takes its totals with it, so the sum would
drop at its death (and whenever a worker does not answer a scrape in time), and Prometheus reads
any drop of a counter as a reset: a false spike in every ``rate()`` and ``increase()``.

So every value a worker shows is first written down: whenever it renders its exposition for a
scrape (its own or a peer's), it writes the monotonic part (every family but gauges) to
``run_dir/totals-{index}-{pid}.prom``, atomically (a temporary file renamed), before answering. The
worker that merges a scrape adds, to the live answers, the files of every process that did not
answer live (dead incarnations, and a live worker that timed out: its last written values) and
``retired.prom``. When the parent reaps a dead worker, it folds that worker's file into
``retired.prom`` and removes it, so files do not pile up with restarts. A shared ``flock`` on
``totals.lock`` makes a reader see the fold whole: the file and ``retired.prom`` with it, or
neither changed. Whatever Prometheus saw from a worker is in its file; a worker's live values
only grow; the fold keeps sums: so the merged counters never decrease.

Each worker also writes its file every ``WRITE_INTERVAL_S`` (``writing``), whether scraped or
not: written at scrapes only, a worker that crashed lost everything it counted since the last
scrape (15 s of traffic at the usual interval; 12,035 chats answered, a SIGKILL, and the set's
/metrics showed 10,441). Now at most the last second's counts go with it. Cost: one exposition
rendered and written a second per worker (about a millisecond), nothing per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from gateway.observability.exposition import merge_expositions
from gateway.tasks import stop as stop_task

RETIRED = "retired.prom"
_LOCK = "totals.lock"
_PREFIX = "totals-"
_SUFFIX = ".prom"
WRITE_INTERVAL_S = 1.0  # the most a crashed worker's counts can miss in the set's sum


def monotonic_part(text: str) -> str:
    """The families of an exposition that only grow (all but gauges), as text."""
    out: list[str] = []
    keep = True
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue  # left out: the live workers' expositions carry each family's HELP
        if line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            keep = len(parts) > 3 and parts[3] != "gauge"
        if keep and line:
            out.append(line)
    return "\n".join(out) + "\n"


def save(run_dir: str, index: int, pid: int, text: str) -> None:
    """Write the monotonic part of worker ``index``'s (process ``pid``) exposition ``text``."""
    path = _path(run_dir, index, pid)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(monotonic_part(text))
    os.replace(temporary, path)


def writing(
    render: Callable[[], bytes], run_dir: str, index: int, interval_s: float = WRITE_INTERVAL_S
) -> Callable[[Any], AsyncIterator[None]]:
    """A cleanup context that saves worker ``index``'s exposition (``render()``) every
    ``interval_s`` seconds while the app runs, and once more when it stops."""

    async def running(app: Any) -> AsyncIterator[None]:
        pid = os.getpid()

        async def write() -> None:
            # The run directory goes when the set stops; a write then has nothing to keep.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(save, run_dir, index, pid, render().decode())

        async def forever() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await write()

        task = asyncio.create_task(forever(), name="worker-totals")
        yield
        await stop_task(task)
        await write()

    return running


def others(run_dir: str, live_pids: set[int]) -> list[str]:
    """The written totals of every process not in ``live_pids`` (they answered live), and those
    of the workers retired before."""
    with _locked(run_dir, fcntl.LOCK_SH):
        texts = []
        for name in os.listdir(run_dir):
            if name == RETIRED:
                pass
            elif not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)) or _pid_of(name) in live_pids:
                continue
            with (
                contextlib.suppress(FileNotFoundError),
                open(os.path.join(run_dir, name), encoding="utf-8") as f,
            ):
                texts.append(f.read())
        return texts


def retire(run_dir: str, index: int, pid: int) -> None:
    """Fold dead worker ``index``'s (process ``pid``) written totals into ``retired.prom``."""
    path = _path(run_dir, index, pid)
    with _locked(run_dir, fcntl.LOCK_EX):
        try:
            with open(path, encoding="utf-8") as f:
                dead = f.read()
        except FileNotFoundError:
            return  # it never answered a scrape: nothing it counted was shown
        retired = os.path.join(run_dir, RETIRED)
        try:
            with open(retired, encoding="utf-8") as f:
                before = f.read()
        except FileNotFoundError:
            before = ""
        merged = merge_expositions([(0, before), (0, dead)]).decode()
        temporary = f"{retired}.tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(monotonic_part(merged))
        os.replace(temporary, retired)
        os.remove(path)


def _path(run_dir: str, index: int, pid: int) -> str:
    return os.path.join(run_dir, f"{_PREFIX}{index}-{pid}{_SUFFIX}")


def _pid_of(name: str) -> int | None:
    try:
        return int(name[len(_PREFIX) : -len(_SUFFIX)].rpartition("-")[2])
    except ValueError:
        return None


@contextlib.contextmanager
def _locked(run_dir: str, how: int) -> Iterator[None]:
    fd = os.open(os.path.join(run_dir, _LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)
