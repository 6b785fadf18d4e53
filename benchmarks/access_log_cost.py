"""Benchmark: what the access log costs, from many short pairs of runs with it on and off.

Issue 12 allows the access log (on by default) at most 5 % of the gateway's cost. On this shared
VM the CPU a process spends per request moves by 10-30 % between runs seconds apart, so the three
rounds of ``proxy_overhead.py`` cannot tell 3 % from 15 %. This script asks only that question,
with many pairs: three gateways of the working tree, two with the log on (its default, JSON
lines), one writing them into a pipe that a ``cat`` on the load core reads (stderr as a container
runtime gives it: what the gateway meets on Kubernetes), one straight into a file, and one with
``SOPHIA_ACCESS_LOG=0``, each pinned to core 0, the fake provider and wrk on core 1. Each round
measures the three back to back (the order rotating), for each kind of request (non-streaming
chat, not cacheable; an in-process cache hit), and takes the ratio of each log-on gateway's CPU
per request to the log-off one's; the verdict is the median of the per-round ratios (a pair shares the
machine's state, so its ratio is what the log costs; the median drops the rounds a burst of
other work landed in). It also splits the CPU between the loop's thread and the others (the
log's writer thread is one of them), from ``/proc``'s per-thread counters.

Run: python benchmarks/access_log_cost.py [--rounds 8] [--duration 8]
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxy_overhead import (  # noqa: E402
    BODY,
    CHAT_PATH,
    HIT_BODY,
    LOAD_CPU,
    PROXY_CPU,
    TARGET_LOG_COST,
    Revision,
    ensure_wrk,
    policy_text,
    post,
    run_wrk,
    running,
    start_gateway,
    tree_env,
    uncommitted_paths,
)
from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import start  # noqa: E402

SECTION = "Access log cost, paired rounds (issue 12)"
KINDS = {"chat, not cacheable": BODY % "bench", "in-process cache hit": HIT_BODY % "bench"}
PIPE, FILE, OFF = "log on, pipe", "log on, file", "log off"
SIDES = (PIPE, FILE, OFF)
ON_SIDES = (PIPE, FILE)
_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process's main thread, of all its other threads) so far."""
    main = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        if int(tid) == pid:
            main += seconds
        else:
            others += seconds
    return main, others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="pairs per kind of request")
    parser.add_argument("--duration", type=int, default=8, help="seconds per timed run")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    wrk = ensure_wrk()
    head, dirty = Revision.of("HEAD"), uncommitted_paths()
    # (kind, side) -> per round: (requests/s, CPU us per request, main thread us, others us)
    runs: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {
        (kind, side): [] for kind in KINDS for side in SIDES
    }
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="access-log-cost-"))
        fake = stack.enter_context(
            running(start(["fake-provider", "--port", "0"], cpu=LOAD_CPU, env=tree_env(ROOT)))
        )
        policy = scratch / "bench.yaml"
        policy.write_text(policy_text(fake.url))
        pin = str(PROXY_CPU)
        gateways = {
            PIPE: start_gateway(stack, ROOT, policy, scratch, "log-pipe", pin, pipe_cpus=str(LOAD_CPU)),
            FILE: start_gateway(stack, ROOT, policy, scratch, "log-file", pin),
            OFF: start_gateway(stack, ROOT, policy, scratch, "log-off", pin, SOPHIA_ACCESS_LOG="0"),
        }
        for side, gateway in gateways.items():
            url = gateway.url + CHAT_PATH
            post(url, KINDS["in-process cache hit"])  # the miss that stores the answer
            headers, _ = post(url, KINDS["in-process cache hit"])
            if headers.get("x-gateway-cache") != "hit":
                raise SystemExit(f"{side}: a repeated temperature-0 request is not a hit: {headers}")
            for body in KINDS.values():
                run_wrk(wrk, url, body, 16, 2, LOAD_CPU)
        for index in range(args.rounds):
            for kind, body in KINDS.items():
                for side in SIDES[index % 3 :] + SIDES[: index % 3]:
                    gateway = gateways[side]
                    before, threads_before = gateway.cpu_seconds(), thread_cpu_s(gateway.pid)
                    out = run_wrk(wrk, gateway.url + CHAT_PATH, body, 16, args.duration, LOAD_CPU)
                    after, threads_after = gateway.cpu_seconds(), thread_cpu_s(gateway.pid)
                    per = 1e6 / max(1.0, out["requests"])
                    runs[(kind, side)].append(
                        (
                            out["rps"],
                            (after - before) * per,
                            (threads_after[0] - threads_before[0]) * per,
                            (threads_after[1] - threads_before[1]) * per,
                        )
                    )
                off = runs[(kind, OFF)][-1]
                print(
                    f"round {index + 1} {kind}: off {off[1]:.1f} us ({off[0]:.0f}/s)"
                    + "".join(
                        f"; {side} {on[1]:.1f} us ({on[0]:.0f}/s): {on[1] / off[1]:.3f}"
                        for side in ON_SIDES
                        for on in [runs[(kind, side)][-1]]
                    ),
                    flush=True,
                )
        written = {side: sum(1 for _ in gateways[side].log.open(errors="replace")) for side in ON_SIDES}
    lines_written = min(written.values())
    lines = report(args, head, dirty, runs, lines_written)
    if not args.no_write:
        write_section(SECTION, "\n".join(lines))
    print("\n".join(lines))
    return 0


def report(
    args: argparse.Namespace,
    head: Revision,
    dirty: list[str],
    runs: dict[tuple[str, str], list[tuple[float, float, float, float]]],
    lines_written: int,
) -> list[str]:
    med = statistics.median
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.machine()}), Python {platform.python_version()}, wrk at 16 connections: "
        f"`python benchmarks/access_log_cost.py --rounds {args.rounds} --duration {args.duration}`. "
        f"The working tree at {head.describe()}"
        + (f", with uncommitted changes in {len(dirty)} path(s)" if dirty else "")
        + ". Three gateways: the access log on (its default, JSON lines) into a pipe read by a `cat` "
        "on the load core (as a container runtime reads stderr; the log writes it on the loop, "
        "non-blocking), on into a file (written by the log's thread), and off (`SOPHIA_ACCESS_LOG=0`), "
        "each pinned to core 0; the fake provider and wrk on core 1. Each round measures the three back "
        "to back, the order rotating; the log's cost is the median of the per-round ratios of CPU per "
        "request (user + system, from /proc) to the log-off gateway's. Loop thread: the process's "
        f"main thread; other threads: the log's writer among them. Lines written: {lines_written:,} "
        "or more per log-on gateway.",
        "",
        "| request | log | CPU us/req | log off | on / off per round | **median on / off** "
        "| loop thread us on / off | other threads us on / off | req/s on / off |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for kind in KINDS:
        off = runs[(kind, OFF)]
        for side in ON_SIDES:
            on = runs[(kind, side)]
            ratios = [a[1] / b[1] for a, b in zip(on, off, strict=True)]
            verdicts.append((kind, side, med(ratios) - 1))
            lines.append(
                f"| {kind} | {side.removeprefix('log on, ')} | {med(r[1] for r in on):.1f} "
                f"| {med(r[1] for r in off):.1f} | {' / '.join(f'{r:.2f}' for r in ratios)} "
                f"| **{med(ratios):.3f}** | {med(r[2] for r in on):.1f} / {med(r[2] for r in off):.1f} "
                f"| {med(r[3] for r in on):.1f} / {med(r[3] for r in off):.1f} "
                f"| {med(r[0] for r in on):.0f} / {med(r[0] for r in off):.0f} |"
            )
    first_kind = next(iter(KINDS))
    lines.append("")
    for side in ON_SIDES:
        chat_cost = next(cost for kind, s, cost in verdicts if kind == first_kind and s == side)
        lines.append(
            f"- **Verdict, {side}** (issue 12: the access log costs at most {100 * TARGET_LOG_COST:.0f} %, "
            f"judged on the non-streaming chat): {100 * chat_cost:+.1f} % CPU per request: "
            + ("**met**" if chat_cost <= TARGET_LOG_COST else "**NOT met**")
            + "; "
            + ", ".join(f"{kind} {100 * cost:+.1f} %" for kind, s, cost in verdicts if s == side)
            + "."
        )
    spread = []
    for kind in KINDS:
        for side in ON_SIDES:
            ratios = sorted(a[1] / b[1] for a, b in zip(runs[(kind, side)], runs[(kind, OFF)], strict=True))
            quarter = len(ratios) // 4
            spread.append(
                f"{kind}, {side.removeprefix('log on, ')} {ratios[quarter]:.2f}-{ratios[-1 - quarter]:.2f}"
            )
    lines.append(
        "- The noise: the middle half of the per-round ratios spans "
        + "; ".join(spread)
        + ". A median below 1 (the log on measuring cheaper than off) is that noise, not a saving: "
        "the verdicts above are within it."
    )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
