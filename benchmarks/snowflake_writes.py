"""Benchmark: logged memory writes a second on Snowflake, all replicas together (h-snowtx).

Each logged write is one transaction that takes the change log's counter row first
(``MemoryQueries.lock_log``), so writes from every replica run one at a time from that UPDATE to
their COMMIT: the fleet's ceiling is about one write per (statements in that stretch x round
trip). This script runs ``--replicas`` Snowflake stores (each its own pool of 4, as replicas) on
one fakesnow account (``tests/fakesnow_support.py``: Snowflake SQL on DuckDB, the counter's lock
waited for as Snowflake waits) and adds ``--rtt-ms`` before every statement, as a round trip to
an account would. Each replica creates ``--writes`` memories, then patches each, then archives
each, then deletes each (h-snow5: patches and deletes held the lock longest; h-mem: archives),
one a request, four at a time. Each memory has a namespace of its own, so an archive
(``archive_older_than``, a namespace's memories past a cutoff in one transaction) is of one
memory, as a delete is.
fakesnow's own time per statement (its MERGE runs as several DuckDB statements, ~0.15 s on a
small machine) is in the figures too: they are a floor for the fake plus the added round trips,
not a measurement of an account. Writes its RESULTS.md section.

Run: python benchmarks/snowflake_writes.py [--rtt-ms 0 50] [--replicas 2] [--writes 24]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import snowflake.connector  # noqa: E402

from benchmarks.results import write_section  # noqa: E402
from gateway.memory.records import Memory, MemoryPatch  # noqa: E402
from gateway.memory.snowflake_store import SnowflakeMemoryStore  # noqa: E402
from gateway.policy.model import MemoryPool  # noqa: E402
from tests import fakesnow_support  # noqa: E402

TITLE = "Snowflake memory writes across replicas (h-snowtx)"
ARGS = {"account": "bench", "user": "bench", "password": "x", "database": "SOPHIA", "schema": "MEMORY"}
POOL = MemoryPool(min_size=1, max_size=4, connect_timeout_s=60, statement_timeout_s=600)


class Delayed:
    """A connection whose statements each take ``rtt_s`` more (a round trip); counts them."""

    def __init__(self, conn: Any, rtt_s: float, counts: Counter[str]) -> None:
        self._conn, self._rtt_s, self._counts = conn, rtt_s, counts

    def cursor(self, *args: Any) -> Any:
        cur = self._conn.cursor(*args)
        rtt_s, counts = self._rtt_s, self._counts

        class Cursor:
            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

            def execute(self, sql: str, *rest: Any) -> Any:
                counts[sql.split()[0].upper()] += 1
                time.sleep(rtt_s)
                return cur.execute(sql, *rest)

            def executemany(self, sql: str, *rest: Any) -> Any:
                counts[sql.split()[0].upper()] += 1
                time.sleep(rtt_s)
                return cur.executemany(sql, *rest)

        return Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


KINDS = ("create", "patch", "archive", "delete")


async def run(rtt_s: float, replicas: int, writes: int) -> dict[str, tuple[float, Counter[str]]]:
    """Seconds and statements of each kind of write in turn: every replica creates ``writes``
    memories, then patches each, archives each, deletes each, one a request, four at a time."""
    out: dict[str, tuple[float, Counter[str]]] = {}
    with fakesnow_support.patch():
        connect = snowflake.connector.connect
        counts: Counter[str] = Counter()
        snowflake.connector.connect = lambda **kw: Delayed(connect(**kw), rtt_s, counts)  # type: ignore[assignment]
        stores = [SnowflakeMemoryStore(ARGS, POOL, upkeep=False) for _ in range(replicas)]
        try:
            for store in stores:
                await store.start()

            tomorrow = datetime.now(UTC) + timedelta(days=1)  # every memory is older

            async def replica(kind: str, n: int, store: SnowflakeMemoryStore) -> None:
                slots = asyncio.Semaphore(4)

                async def one(i: int) -> None:
                    async with slots:
                        mid = f"r{n}-{i}"
                        if kind == "create":
                            await store.insert([Memory(mid, f"bench-{mid}", f"fact {i}", (0.5, 0.25))])
                        elif kind == "patch":
                            assert await store.update(mid, MemoryPatch(content=f"changed {i}"))
                        elif kind == "archive":
                            assert await store.archive_older_than(f"bench-{mid}", tomorrow) == 1
                        else:
                            assert await store.delete([mid]) == 1

                await asyncio.gather(*(one(i) for i in range(writes)))

            for number, kind in enumerate(KINDS, start=1):
                counts.clear()
                started = time.perf_counter()
                await asyncio.gather(*(replica(kind, n, s) for n, s in enumerate(stores)))
                out[kind] = (time.perf_counter() - started, Counter(counts))
                assert await stores[0].last_change() == number * replicas * writes
        finally:
            for store in stores:
                await store.close()
            snowflake.connector.connect = connect  # type: ignore[assignment]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--writes", type=int, default=24, help="memories each replica creates, patches, archives, deletes"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "Arrow output on a DB-API result")
    total = args.replicas * args.writes
    rows = []
    for rtt_ms in args.rtt_ms:
        for kind, (elapsed, counts) in asyncio.run(run(rtt_ms / 1000, args.replicas, args.writes)).items():
            per_write = sum(counts.values()) / total
            rows.append(
                f"| {rtt_ms:g} | {kind} | {total} | {elapsed:.1f} | {total / elapsed:.1f} | {per_write:.1f} | "
                f"{counts['ROLLBACK'] / total:.2f} |"
            )
            print(rows[-1], flush=True)
    body = "\n".join(
        [
            f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; `python benchmarks/snowflake_writes.py --replicas {args.replicas} "
            f"--writes {args.writes}`. fakesnow, not an account: a floor for the fake plus the added "
            "round trips; each kind of write timed on its own. Every logged write runs alone from its counter UPDATE to its COMMIT, "
            "whichever replica sent it.",
            "",
            "| added round trip (ms) | write | writes | seconds | writes/s (all replicas) | statements a write | rollbacks a write |",
            "|---:|---|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    if not args.no_write:
        write_section(TITLE, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
