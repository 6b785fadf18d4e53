"""Benchmark: what keys and limits cost, and how exactly replicas hold them (issue 11, item 10).

1. **Added latency at concurrency 1.** Four gateways over the same zero-latency fake provider:
   ``auth.mode: open`` (no key, no limits) without and with ``REDIS_URL``, keys mode with the
   in-process limiter, and keys mode with the Redis limiter (``REDIS_URL``: a busy key is admitted
   from per-replica leases, a round trip per lease, and settled in batches); each keys side is compared with the open side of the same ``REDIS_URL``. The key
   has an RPM and a TPM too large ever to refuse, so every check runs and every answer is 200.
   wrk at one connection; gateways pinned to core 0, fake provider, Redis and wrk to core 1;
   ``--rounds`` rounds, each measuring the four back to back in a rotating order, so machine
   drift hits all alike. Reported: each side's median p50 and the median and spread of the
   per-round p50 differences from its open side (issue target: <= 50 us).
2. **Three replicas, one RPM.** Three keys-mode gateways sharing a private ``redis-server`` and
   one SQLite key store; one key with RPM ``--rpm``; requests paced at ``--rate`` per second
   (several times the RPM) round-robin over the three for ``--replica-s`` seconds. Reported: the
   most admitted (200) in any 60 s interval of the client's clock, over the RPM (target: at most
   1.02), and the requests counted locally because Redis was missed (``gateway_limits_local_total``).
3. **A burst of 50 concurrent streams** over the three replicas against an RPM, then a TPM: how
   many were admitted, the refusals by type, and the tokens the admitted streams used against the
   TPM (each stream reserves and uses 100 tokens: gateway/auth/gate.py's reservation rule).

It writes its figures to benchmarks/RESULTS.md (its own section, replaced on each run).

Run: python benchmarks/limits.py [--duration 8] [--rounds 5] [--rpm 600] [--rate 40] [--replica-s 90]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxy_overhead import BODY, WRK_SCRIPT, _ms, ensure_wrk, wrk_output  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import ManagedProcess, start  # noqa: E402
from gateway.testing.redis_server import PrivateRedis  # noqa: E402
from gateway.testing.replicas import (  # noqa: E402
    MODEL,
    ReplicaStack,
    Reply,
    burst,
    call,
    chat_body,
    max_in_window,
    policy_text,
    start_replicas,
    words,
)

SECTION = "Keys and limits (issue 11)"
GATEWAY_CPU, HELPER_CPU = 0, 1
HUGE = 1_000_000_000  # limits that never refuse
SIDES = ("open", "open, REDIS_URL set", "keys, in-process limiter", "keys, Redis limiter")
# The side each is compared with: the same REDIS_URL (the response cache uses that Redis too).
BASE = {SIDES[1]: SIDES[0], SIDES[2]: SIDES[0], SIDES[3]: SIDES[1]}
STREAM_WORDS = 50  # reservation 50 + 50 = 100 tokens; the fake echoes 50 and counts 50 in


def run_wrk(wrk: str, url: str, secret: str, duration_s: int) -> dict[str, float]:
    """One wrk run at one connection with ``secret`` as the bearer key: p50 (us), req/s, errors."""
    text = WRK_SCRIPT.replace("Bearer bench", f"Bearer {secret}") % (BODY % MODEL)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(text)
    out = wrk_output(wrk, url, script.name, 1, duration_s, HELPER_CPU)
    p50 = re.search(r"^\s+50%\s+([\d.]+\w+)", out, re.MULTILINE)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if p50 is None or rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    bad = int(errors.group(1)) if errors else 0
    bad += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1))) if socket_errors else 0
    return {"p50_us": _ms(p50.group(1)) * 1000, "rps": float(rps.group(1)), "errors": float(bad)}


def pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {cpu})


@contextlib.contextmanager
def running(proc: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        yield proc
    finally:
        proc.stop()


def serve(stack: contextlib.ExitStack, policy: Path, env: dict[str, str]) -> ManagedProcess:
    cwd = tempfile.mkdtemp(prefix="serve-limits-")
    full_env = {"SOPHIA_ACCESS_LOG": "0", "KEYS_URL": "", **env}
    proc = start(["serve", "--policy", str(policy), "--port", "0"], cpu=GATEWAY_CPU, env=full_env, cwd=cwd)
    return stack.enter_context(running(proc))


def overhead(duration_s: int, rounds: int, warmup_s: int) -> dict[str, object]:
    """Section 1: p50 at concurrency 1 of open mode and of keys mode with each limiter."""
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    with contextlib.ExitStack() as stack:
        redis = PrivateRedis()
        redis.start()
        stack.callback(redis.close)
        assert redis._popen is not None
        pin(redis._popen.pid, HELPER_CPU)
        fake = stack.enter_context(running(start(["fake-provider", "--port", "0"], cpu=HELPER_CPU)))
        keyed = work / "keys.yaml"
        keyed.write_text(policy_text(fake.url, work / "keys.sqlite3"))
        opened = work / "open.yaml"
        opened.write_text(keyed.read_text().replace("mode: keys", "mode: open"))
        secret = ReplicaStack(work, keyed, None, "", fake).create_key("--rpm", str(HUGE), "--tpm", str(HUGE))
        gateways = {
            SIDES[0]: serve(stack, opened, {"REDIS_URL": ""}),
            SIDES[1]: serve(stack, opened, {"REDIS_URL": redis.url}),
            SIDES[2]: serve(stack, keyed, {"REDIS_URL": ""}),
            SIDES[3]: serve(stack, keyed, {"REDIS_URL": redis.url}),
        }
        url = {side: proc.url + "/v1/chat/completions" for side, proc in gateways.items()}
        key = {side: secret if "keys" in side else "none" for side in SIDES}
        for side in SIDES:
            run_wrk(wrk, url[side], key[side], warmup_s)
        p50: dict[str, list[float]] = {side: [] for side in SIDES}
        non_2xx = 0.0
        for r in range(rounds):
            order = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
            for side in order:
                result = run_wrk(wrk, url[side], key[side], duration_s)
                p50[side].append(result["p50_us"])
                non_2xx += result["errors"]
                print(
                    f"round {r + 1} {side}: p50 {p50[side][-1]:.0f} us, {result['rps']:.0f} req/s", flush=True
                )
        local = [metric(gateways[side].url, "gateway_limits_local_total") for side in SIDES[2:]]
    return {"p50_us": p50, "non_2xx": non_2xx, "local": local}


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([\d.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def paced(urls: list[str], secret: str, rate_per_s: float, duration_s: float) -> list[Reply]:
    """Requests at ``rate_per_s``, round-robin over ``urls``, for ``duration_s``."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as session:
        started = time.monotonic()
        tasks: list[asyncio.Task[Reply]] = []
        i = 0
        while (due := started + i / rate_per_s) < started + duration_s:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(call(session, urls, i, secret, chat_body(f"paced {i}"))))
            i += 1
        return list(await asyncio.gather(*tasks))


def replicas(rpm: int, rate_per_s: float, duration_s: float) -> dict[str, object]:
    """Sections 2 and 3 on three replicas sharing one Redis."""
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    stack = start_replicas(work, 3, fake_flags=["--tokens-per-s", "100"])
    try:
        secret = stack.create_key("--rpm", str(rpm))
        replies = asyncio.run(paced(stack.urls, secret, rate_per_s, duration_s))
        admitted = [r.done_s for r in replies if r.status == 200]
        first = min(r.sent_s for r in replies)
        statuses = Counter(r.status for r in replies)
        rpm_result = {
            "sent": len(replies),
            "statuses": dict(statuses),
            "admitted": len(admitted),
            "first_60s": sum(1 for t in admitted if t < first + 60),
            "max_60s": max_in_window(admitted, 60.0),
            "local": sum(metric(u, "gateway_limits_local_total") for u in stack.urls),
        }
        bursts = {
            "rpm": stream_burst(stack, ("--rpm", "20")),
            "tpm": stream_burst(stack, ("--tpm", "2000")),
        }
        return {"rpm": rpm_result, "bursts": bursts}
    finally:
        stack.close()


def stream_burst(stack: ReplicaStack, flags: tuple[str, str]) -> dict[str, object]:
    secret = stack.create_key(*flags)
    body = chat_body(words(STREAM_WORDS), max_tokens=STREAM_WORDS, stream=True)
    replies = asyncio.run(burst(stack.urls, secret, [body] * 50))
    refusals = Counter(str(r.error()["type"]) for r in replies if r.status == 429)
    admitted = [r for r in replies if r.status == 200]
    return {
        "limit": f"{flags[0][2:].upper()} {flags[1]}",
        "admitted": len(admitted),
        "refusals": dict(refusals),
        "other": sum(1 for r in replies if r.status not in (200, 429)),
        "tokens": sum(r.usage_tokens for r in admitted),
    }


def render(args: argparse.Namespace, one: dict[str, object], two: dict[str, object]) -> str:
    p50: dict[str, list[float]] = one["p50_us"]  # type: ignore[assignment]
    lines = [
        f"Run {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores shared "
        f"with other work, Python {platform.python_version()}; `python benchmarks/limits.py "
        f"--duration {args.duration} --rounds {args.rounds} --rpm {args.rpm} --rate {args.rate} "
        f"--replica-s {args.replica_s}`.",
        "",
        f"**Added p50 at concurrency 1** (wrk, 1 connection, {args.duration} s x {args.rounds} rounds, "
        "rotating order; gateways on core 0, fake provider, Redis and wrk on core 1; the key's "
        "RPM and TPM never refuse, so every check runs: with Redis, from a lease taken in one round "
        "trip about once a second, settled in a batched write every 50 ms). Target: <= 50 us.",
        "",
        "| gateway | p50 (median of rounds) | compared with | added: median | per-round spread (min .. max) |",
        "|---|---|---|---|---|",
    ]
    for side in SIDES:
        base = BASE.get(side)
        diffs = [a - b for a, b in zip(p50[side], p50[base or side], strict=True)]
        added = "-" if base is None else f"{statistics.median(diffs):+.0f} us"
        spread = "-" if base is None else f"{min(diffs):+.0f} .. {max(diffs):+.0f} us"
        median = statistics.median(p50[side])
        lines.append(f"| {side} | {median:.0f} us | {base or '-'} | {added} | {spread} |")
    lines += [
        "",
        f"Non-2xx or socket errors: {one['non_2xx']:.0f}; requests counted locally instead of in "
        f"Redis: {one['local']}.",
        "",
    ]
    rpm: dict[str, object] = two["rpm"]  # type: ignore[assignment]
    max_60 = int(rpm["max_60s"])  # type: ignore[call-overload]
    lines += [
        f"**Three replicas, one key, RPM {args.rpm}** (private redis-server, one SQLite key store, "
        f"{args.rate:g} requests/s round-robin over the three for {args.replica_s:g} s): "
        f"{rpm['sent']} sent, statuses {rpm['statuses']}; admitted in the first 60 s: "
        f"{rpm['first_60s']}; most admitted in any 60 s (client clock, answer times): {max_60} "
        f"= {max_60 / args.rpm:.3f} x RPM (target <= 1.02); counted locally (Redis missed): "
        f"{rpm['local']:.0f}.",
        "",
        "**A burst of 50 concurrent streams** over the three replicas (each reserves and uses 100 "
        "tokens; streams at 100 tokens/s):",
        "",
        "| key's limit | admitted | refused (429 by type) | other | tokens used by the admitted |",
        "|---|---|---|---|---|",
    ]
    for result in two["bursts"].values():  # type: ignore[attr-defined]
        lines.append(
            f"| {result['limit']} | {result['admitted']} | {result['refusals']} | {result['other']} "
            f"| {result['tokens']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (section 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rpm", type=int, default=600, help="the key's RPM (section 2)")
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s offered (section 2)")
    parser.add_argument("--replica-s", type=float, default=90.0, help="seconds of section 2")
    args = parser.parse_args()
    one = overhead(args.duration, args.rounds, args.warmup)
    two = replicas(args.rpm, args.rate, args.replica_s)
    body = render(args, one, two)
    print(body)
    write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
