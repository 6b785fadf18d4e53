"""Benchmark: one Lua script call to Redis, through redis-py and through ``ScriptPipe``.

The response cache's lookup is one script call per cacheable request (hit or miss). This measures
what the client side of that call costs, the two ways the gateway can make it: redis-py's
``AsyncScript`` (its pool, its read timeout, its parser) and ``gateway.redis_pipe.ScriptPipe``
(one pipelined connection, a ``hiredis.Reader`` in ``data_received``). Both run the cache's own
lookup script (``RedisStore``'s get, a hit on an 800-byte value) inside the same ``asyncio.timeout``
the gateway puts around every call, on uvloop, this process pinned to core 0 and a private
``redis-server`` to core 1; alternated in rounds, medians reported:

* sequential: one call at a time: wall time per call (what a request at 1 connection waits) and
  this process's CPU per call (user + system: the client's work, Redis's is not in it);
* 16 concurrent callers: calls per second and CPU per call.

Run: python benchmarks/redis_call.py [--calls 20000] [--rounds 5]; writes its RESULTS.md section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from benchmarks.proxy_overhead import start_redis  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from gateway.cache.redis_store import RedisStore  # noqa: E402
from gateway.cache.store import CategoryBudget  # noqa: E402

TITLE = "Redis script calls: redis-py and the pipe (issue 12)"
VALUE = b"v" * 800


async def measure(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> tuple[float, float]:
    """(wall us per call, CPU us per call) for ``calls`` calls by ``concurrency`` callers."""

    async def caller(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(1.0):
                await call()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    done = calls // concurrency * concurrency
    return (time.perf_counter() - wall) / done * 1e6, (time.process_time() - cpu) / done * 1e6


async def run(url: str, calls: int, rounds: int) -> dict[tuple[str, int], list[tuple[float, float]]]:
    store = RedisStore(url, {"chat": CategoryBudget("chat", 10_000_000)}, prefix="bench:", op_timeout_s=1.0)
    await store.start()
    await store.set("chat", "key", VALUE, 600)
    keys, args = store._keys("chat", "key"), ["key", 1000]
    script, pipe = store._scripts["get"], store._pipe
    if pipe is None:
        raise SystemExit("no pipe for this client: the benchmark needs a plain redis:// URL")

    async def through_redis_py() -> object:
        return await script(keys=keys, args=args)

    async def through_pipe() -> object:
        return await pipe.run(script, keys, args)

    ways = {"redis-py": through_redis_py, "pipe": through_pipe}
    for call in ways.values():  # warm both: connections made, script loaded
        if await call() != VALUE:
            raise SystemExit("the lookup script did not return the value")
        await measure(call, 2000, 16)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for index in range(rounds):
        order = list(ways.items()) if index % 2 == 0 else list(reversed(ways.items()))
        for concurrency in (1, 16):
            for name, call in order:
                results.setdefault((name, concurrency), []).append(await measure(call, calls, concurrency))
    await store.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians reported")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    with contextlib.ExitStack() as stack:
        url, hiredis = start_redis(stack, 1)
        results = uvloop.run(run(url, args.calls, args.rounds))

    def median(name: str, concurrency: int, i: int) -> float:
        return statistics.median(r[i] for r in results[(name, concurrency)])

    rows = [
        "| client | wall us/call, 1 caller | CPU us/call, 1 caller | calls/s, 16 callers | CPU us/call, 16 callers |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("redis-py", "pipe"):
        rows.append(
            f"| {name} | {median(name, 1, 0):.1f} | {median(name, 1, 1):.1f} | "
            f"{1e6 / median(name, 16, 0):,.0f} | {median(name, 16, 1):.1f} |"
        )
    ratio_wall = median("pipe", 1, 0) / median("redis-py", 1, 0)
    ratio_cpu = median("pipe", 1, 1) / median("redis-py", 1, 1)
    ratio_16 = median("redis-py", 16, 0) / median("pipe", 16, 0)
    body = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
            f"({platform.machine()}), Python {platform.python_version()}, uvloop; `python "
            f"benchmarks/redis_call.py --calls {args.calls} --rounds {args.rounds}`: the cache's lookup "
            f"script (a hit on an {len(VALUE)}-byte value) inside `asyncio.timeout`, this process on core 0, "
            f"a private `redis-server` on core 1; redis-py {'with' if hiredis else 'without'} hiredis; "
            "the two clients alternated within each round, medians over the rounds.",
            "",
            *rows,
            "",
            f"The pipe against redis-py: wall time per sequential call x{ratio_wall:.2f}, CPU per "
            f"sequential call x{ratio_cpu:.2f}, calls/s with 16 callers x{ratio_16:.2f}. The CPU column "
            "is the client process's only; the wall column includes Redis's work and the wake-ups of "
            "both processes.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
