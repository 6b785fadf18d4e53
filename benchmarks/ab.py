"""Paired A/B runs of the non-streaming, non-cacheable chat load: the floor, the gateway of a git
revision (A) and the working tree's (B), each pinned to core 0, wrk on core 1, order rotating per
round. Prints each round and the medians (CPU us per request, requests/s, ratio to the floor).

The quick check behind each issue-12 commit message; ``proxy_overhead.py`` is the full benchmark.

Run: python benchmarks/ab.py --baseline REV [--rounds 5] [--duration 5] [--log-pipe]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxy_overhead import (  # noqa: E402
    BODY,
    CHAT_PATH,
    LOAD_CPU,
    PROXY_CPU,
    ensure_wrk,
    extract,
    policy_text,
    run_wrk,
    running,
    start_floor,
    start_gateway,
    tree_env,
)
from gateway.testing.process import start  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="revision A")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--log-pipe",
        action="store_true",
        help="the gateways' output through a pipe (as in a container), not a file",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    body = BODY % "bench"
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tree_a = scratch / "a"
        tree_a.mkdir()
        extract(args.baseline, tree_a)
        fake = stack.enter_context(
            running(start(["fake-provider", "--port", "0"], cpu=LOAD_CPU, env=tree_env(ROOT)))
        )
        policy = scratch / "bench.yaml"
        policy.write_text(policy_text(fake.url))
        pin = str(PROXY_CPU)
        pipe = str(LOAD_CPU) if args.log_pipe else None
        procs = {
            "floor": start_floor(stack, fake.url, scratch / "floor.log", pin),
            "A": start_gateway(stack, tree_a, policy, scratch, "A", pin, pipe_cpus=pipe),
            "B": start_gateway(stack, ROOT, policy, scratch, "B", pin, pipe_cpus=pipe),
        }
        names = list(procs)
        for name in names:
            run_wrk(wrk, procs[name].url + CHAT_PATH, body, args.connections, 2, LOAD_CPU)
        results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                proc = procs[name]
                before = proc.cpu_seconds()
                out = run_wrk(wrk, proc.url + CHAT_PATH, body, args.connections, args.duration, LOAD_CPU)
                cpu_us = (proc.cpu_seconds() - before) * 1e6 / max(1.0, out["requests"])
                results[name].append((out["rps"], cpu_us))
            print(
                f"round {r + 1}: "
                + "  ".join(f"{n} {results[n][-1][0]:.0f}/s {results[n][-1][1]:.1f}us" for n in names),
                flush=True,
            )
        med = {
            n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
            for n, v in results.items()
        }
        floor_rps = med["floor"][0]
        for n in names:
            ratios = [x[0] / f[0] for x, f in zip(results[n], results["floor"], strict=True)]
            print(
                f"{n}: {med[n][0]:.0f} req/s, {med[n][1]:.1f} us CPU/req, ratio to floor median {med[n][0] / floor_rps:.3f} "
                f"(per round {min(ratios):.3f}-{max(ratios):.3f})"
            )
        print(f"B/A CPU per request: {med['B'][1] / med['A'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
