"""The RESULTS.md section of ``benchmarks/proxy_overhead.py``: tables, ratios to the floor, verdicts."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from typing import TYPE_CHECKING

from benchmarks.proxy_overhead import (
    ANSWER_FLOOR,
    BASELINE_GATEWAY,
    CHAT1,
    CHAT16,
    DIRECT,
    FLOOR,
    FLOOR_AA,
    GATEWAY,
    HIT1,
    HIT16,
    LOG_OFF,
    LONG16,
    ONE_CORE,
    REDIS1,
    REDIS16,
    REDIS_FLOOR,
    REDIS_GATEWAY,
    SCORE1,
    SCORE16,
    STREAM1,
    STREAM16,
    TARGET_LOG_COST,
    TARGET_MEMORY_HIT_RPS,
    TARGET_P50_ADDED_MS,
    TARGET_P99_ADDED_MS,
    TARGET_REDIS_HIT_P99_MS,
    TARGET_RPS_RATIO,
    TARGET_TTFB_ADDED_MS,
    TARGET_WORKERS_RATIO,
    Kind,
)

if TYPE_CHECKING:
    from benchmarks.proxy_overhead import Run


def _machine_limits(answer_rps: float, answer_p99_ms: float, redis_floor_p99_ms: float) -> str:
    """What the two absolute hit targets ask of this machine: the hits' floors (bare aiohttp
    answering fixed bytes, or bytes from one Redis GET; no lookup, no gateway) in the same run,
    against each target."""
    parts = [
        f"bare aiohttp answering fixed bytes: {answer_rps:.0f} requests/s "
        f"({'above' if answer_rps >= TARGET_MEMORY_HIT_RPS else 'below'} the hit target), "
        f"p99 at 1 connection {answer_p99_ms:.3f} ms; answering from one Redis GET, p99 at 1 connection "
        f"{redis_floor_p99_ms:.3f} ms "
        f"({'within' if redis_floor_p99_ms <= TARGET_REDIS_HIT_P99_MS else 'above'} the Redis hit's target)"
    ]
    if answer_rps < TARGET_MEMORY_HIT_RPS or redis_floor_p99_ms > TARGET_REDIS_HIT_P99_MS:
        parts.append("a target the floor itself misses cannot be met on this machine by any aiohttp server")
    return "This machine's limits: " + "; ".join(parts) + "."


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _f(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def render(run: Run, kinds: list[Kind]) -> list[str]:
    args = run.args
    compared = [
        t for t in (FLOOR, FLOOR_AA, GATEWAY, LOG_OFF, BASELINE_GATEWAY) if (CHAT16, t) in run.results
    ]
    med = run.med
    lines = [_header(run), ""]

    # --- non-streaming chat --------------------------------------------------------------------
    lines += [
        "**Non-streaming chat, not cacheable** (ratios and differences to the floor of the same run; "
        "per-round ratios show the spread):",
        "",
        "| proxy | req/s c16 | ratio to floor | per round | CPU us/req c16 | CPU - floor us | p50 ms c1 "
        "| p50 - floor ms | p99 ms c1 | p99 - floor ms | errors |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor_cpu = med(CHAT16, FLOOR, "cpu_us")
    floor_p50, floor_p99 = med(CHAT1, FLOOR, "p50_ms"), med(CHAT1, FLOOR, "p99_ms")
    for name in (DIRECT, *compared):
        errors = sum(
            r["non_2xx"] + r["socket_errors"] for k in (CHAT16, CHAT1) for r in run.results.get((k, name), [])
        )
        is_proxy = name != DIRECT
        rps, cpu = med(CHAT16, name, "rps"), med(CHAT16, name, "cpu_us")
        p50, p99 = med(CHAT1, name, "p50_ms"), med(CHAT1, name, "p99_ms")
        chat_ratio = run.paired(CHAT16, name, "rps", FLOOR)
        lines.append(
            f"| {name} | {rps:.0f} | {f'**{chat_ratio:.3f}**' if is_proxy else ''} "
            f"| {run.per_round(CHAT16, name, 'rps', FLOOR) if is_proxy else ''} "
            f"| {_f(cpu)} | {_f(cpu - floor_cpu) if is_proxy else ''} | {p50:.3f} "
            f"| {f'{p50 - floor_p50:+.3f}' if is_proxy else ''} | {p99:.3f} "
            f"| {f'{p99 - floor_p99:+.3f}' if is_proxy else ''} | {errors:.0f} |"
        )

    # --- streams ---------------------------------------------------------------------------------
    stream_targets = [t for t in (DIRECT, *compared) if (STREAM16, t) in run.results]
    lines += [
        "",
        f"**Streams** (`stream_options.include_usage`; the short stream has {run.events.get(STREAM16, {}).get(FLOOR, 0)} "
        f"`data:` events, the long one {run.events.get(LONG16, {}).get(FLOOR, 0)}; per-chunk relay cost = (CPU per long "
        "stream - CPU per short stream) / (events of the long - of the short); time to first byte / first event "
        "/ end at 1 connection from `stream_probe.py`):",
        "",
        "| proxy | streams/s c16 | ratio to floor | CPU us/stream c16 | CPU us/long stream | per-chunk us "
        "| first byte p50 / p99 ms | first byte - floor ms | first event p50 ms | end p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor_ttfb = med(STREAM1, FLOOR, "first_byte_p50_ms")
    per_chunk: dict[str, float] = {}
    for name in stream_targets:
        short_cpu, long_cpu = med(STREAM16, name, "cpu_us"), med(LONG16, name, "cpu_us")
        short_n, long_n = run.events.get(STREAM16, {}).get(name, 0), run.events.get(LONG16, {}).get(name, 0)
        if long_n > short_n and not math.isnan(long_cpu):
            per_chunk[name] = (long_cpu - short_cpu) / (long_n - short_n)
        is_proxy = name != DIRECT
        rps, stream_ratio = med(STREAM16, name, "rps"), run.paired(STREAM16, name, "rps", FLOOR)
        ttfb = med(STREAM1, name, "first_byte_p50_ms")
        lines.append(
            f"| {name} | {rps:.0f} | {f'**{stream_ratio:.3f}**' if is_proxy else ''} "
            f"| {_f(short_cpu)} | {_f(long_cpu)} | {_f(per_chunk.get(name, math.nan), 1)} "
            f"| {_f(ttfb, 3)} / {_f(med(STREAM1, name, 'first_byte_p99_ms'), 3)} "
            f"| {f'{ttfb - floor_ttfb:+.3f}' if is_proxy and not math.isnan(ttfb) else ''} "
            f"| {_f(med(STREAM1, name, 'first_event_p50_ms'), 3)} | {_f(med(STREAM1, name, 'total_p50_ms'), 3)} |"
        )

    # --- cache hits ------------------------------------------------------------------------------
    lines += [
        "",
        "**Cache hits** (a repeated `temperature: 0` chat; the gateway pinned to one core; the in-process "
        "rows on the gateway above, the Redis rows on a gateway with `REDIS_URL` on a private `redis-server` "
        f"on core 1; redis-py {'parses with hiredis' if run.hiredis else 'has no hiredis here (pure-Python parser)'}):",
        "",
        "| row | req/s c16 | CPU us/req c16 | p50 ms c1 | p99 ms c1 |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| not cacheable (the gateway row above) | {med(CHAT16, GATEWAY, 'rps'):.0f} | {_f(med(CHAT16, GATEWAY, 'cpu_us'))} "
        f"| {med(CHAT1, GATEWAY, 'p50_ms'):.3f} | {med(CHAT1, GATEWAY, 'p99_ms'):.3f} |",
        f"| in-process hit | {med(HIT16, GATEWAY, 'rps'):.0f} | {_f(med(HIT16, GATEWAY, 'cpu_us'))} "
        f"| {med(HIT1, GATEWAY, 'p50_ms'):.3f} | {med(HIT1, GATEWAY, 'p99_ms'):.3f} |",
        f"| the hit's floor: bare aiohttp answering fixed bytes | {med(HIT16, ANSWER_FLOOR, 'rps'):.0f} "
        f"| {_f(med(HIT16, ANSWER_FLOOR, 'cpu_us'))} | {med(HIT1, ANSWER_FLOOR, 'p50_ms'):.3f} "
        f"| {med(HIT1, ANSWER_FLOOR, 'p99_ms'):.3f} |",
        f"| Redis hit | {med(REDIS16, REDIS_GATEWAY, 'rps'):.0f} | {_f(med(REDIS16, REDIS_GATEWAY, 'cpu_us'))} "
        f"| {med(REDIS1, REDIS_GATEWAY, 'p50_ms'):.3f} | {med(REDIS1, REDIS_GATEWAY, 'p99_ms'):.3f} |",
        f"| the Redis hit's floor: bare aiohttp answering bytes from one Redis GET | "
        f"{med(REDIS16, REDIS_FLOOR, 'rps'):.0f} | {_f(med(REDIS16, REDIS_FLOOR, 'cpu_us'))} "
        f"| {med(REDIS1, REDIS_FLOOR, 'p50_ms'):.3f} | {med(REDIS1, REDIS_FLOOR, 'p99_ms'):.3f} |",
    ]

    lines += _one_core_table(run)

    # --- workers ---------------------------------------------------------------------------------
    lines += [
        "",
        "**Workers** (`serve --workers N` against the floor as N processes on one port, SO_REUSEPORT):",
        "",
    ]
    workers_ratio = math.nan
    floor_workers_ratio = math.nan
    if run.workers_note:
        lines.append(f"- {run.workers_note}.")
    elif run.workers_results:
        wr = run.workers_results

        def wmed(name: str, key: str) -> float:
            return run.med("workers c16", name, key, wr)

        lines += [
            f"Layout: {run.workers_layout}; 16 connections, wrk one thread. `fake busy` is the fake provider's "
            "CPU share during the run (1.0 = one core: then the upstream, not the proxy, is the limit).",
            "",
            "| proxy | 1 process req/s | 2 processes req/s | 2 / 1 (median of rounds) | per round | CPU us/req 1 / 2 | fake busy 1 / 2 |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for proxy in ("floor", "gateway"):
            one, two = wmed(f"{proxy} x1", "rps"), wmed(f"{proxy} x2", "rps")
            pairs = zip(wr[("workers c16", f"{proxy} x1")], wr[("workers c16", f"{proxy} x2")], strict=False)
            per_round = [b["rps"] / a["rps"] for a, b in pairs]
            rounds = " / ".join(f"{r:.2f}" for r in per_round)
            scaling = statistics.median(per_round) if per_round else math.nan
            busy = " / ".join(f"{_median(run.fake_busy[f'{proxy} x{n}']):.2f}" for n in (1, 2))
            lines.append(
                f"| {proxy} | {one:.0f} | {two:.0f} | **{scaling:.2f}** | {rounds} "
                f"| {_f(wmed(f'{proxy} x1', 'cpu_us'))} / {_f(wmed(f'{proxy} x2', 'cpu_us'))} | {busy} |"
            )
            if proxy == "gateway":
                workers_ratio = scaling
            else:
                floor_workers_ratio = scaling

    # --- verdicts --------------------------------------------------------------------------------
    g_rps, off_rps = med(CHAT16, GATEWAY, "rps"), med(CHAT16, LOG_OFF, "rps")
    g_cpu, off_cpu = med(CHAT16, GATEWAY, "cpu_us"), med(CHAT16, LOG_OFF, "cpu_us")
    ratio = run.paired(CHAT16, GATEWAY, "rps", FLOOR)
    cpu_ratio = run.paired(CHAT16, FLOOR, "cpu_us", GATEWAY)
    p50_added, p99_added = (
        med(CHAT1, GATEWAY, "p50_ms") - floor_p50,
        med(CHAT1, GATEWAY, "p99_ms") - floor_p99,
    )
    ttfb_added = med(STREAM1, GATEWAY, "first_byte_p50_ms") - floor_ttfb
    event_added = med(STREAM1, GATEWAY, "first_event_p50_ms") - med(STREAM1, FLOOR, "first_event_p50_ms")
    log_cost_rps, log_cost_cpu = 1 - g_rps / off_rps, g_cpu / off_cpu - 1
    redis_p99 = med(REDIS1, REDIS_GATEWAY, "p99_ms")
    redis_floor_p99 = med(REDIS1, REDIS_FLOOR, "p99_ms")
    hit_rps = med(HIT16, GATEWAY, "rps")
    answer_rps = med(HIT16, ANSWER_FLOOR, "rps")
    hit_ratio = run.paired(HIT16, GATEWAY, "rps", ANSWER_FLOOR)
    aa = run.paired(CHAT16, FLOOR_AA, "rps", FLOOR)
    lines += [
        "",
        "Verdicts (the issue 12 targets; medians over the rounds):",
        "",
        f"- Requests/s at 16 connections, gateway / floor: **{ratio:.3f}** (target >= {TARGET_RPS_RATIO}): "
        f"{_verdict(ratio >= TARGET_RPS_RATIO)}; A/A (a second floor / the floor) {aa:.3f}, the noise of this run. "
        f"The same question from CPU per request (one saturated core serves 1 / CPU per request; not moved by "
        f"time the machine gives to others): floor / gateway **{cpu_ratio:.3f}**: {_verdict(cpu_ratio >= TARGET_RPS_RATIO)}; "
        f"gateway {_f(g_cpu)} us, floor {_f(floor_cpu)} us, extra **{_f(g_cpu - floor_cpu)} us** per request. "
        "Ratios are medians of the per-round ratios (each round's pair measured back to back).",
        f"- p50 at 1 connection, gateway - floor: **{p50_added:+.3f} ms** (target <= {TARGET_P50_ADDED_MS} ms): "
        f"{_verdict(p50_added <= TARGET_P50_ADDED_MS)}; p99: **{p99_added:+.3f} ms** (target <= {TARGET_P99_ADDED_MS} ms): "
        f"{_verdict(p99_added <= TARGET_P99_ADDED_MS)}" + _one_core_latency(run) + ".",
        f"- Streaming, time to first byte p50 at 1 connection, gateway - floor: **{ttfb_added:+.3f} ms** (target <= "
        f"{TARGET_TTFB_ADDED_MS} ms): {_verdict(ttfb_added <= TARGET_TTFB_ADDED_MS)}; to the first `data:` event "
        f"{event_added:+.3f} ms. Per-chunk relay cost: gateway **{_f(per_chunk.get(GATEWAY, math.nan), 1)} us**, "
        f"floor {_f(per_chunk.get(FLOOR, math.nan), 1)} us per `data:` event.",
        f"- Access log at its default (on) vs off: requests/s {-100 * log_cost_rps:+.1f} %, CPU per request "
        f"{100 * log_cost_cpu:+.1f} % (target: costs at most {100 * TARGET_LOG_COST:.0f} %): "
        f"{_verdict(max(log_cost_rps, log_cost_cpu) <= TARGET_LOG_COST)}. Lines in the gateways' output files at exit: "
        + ", ".join(f"{name} {n}" for name, n in run.log_lines.items())
        + ".",
        f"- Redis cache hit p99 at 1 connection: **{redis_p99:.3f} ms** (target <= {TARGET_REDIS_HIT_P99_MS} ms): "
        f"{_verdict(redis_p99 <= TARGET_REDIS_HIT_P99_MS)}"
        + ("" if run.hiredis else " (without hiredis)")
        + _one_core_redis(run)
        + f"; the Redis hit's floor (bare aiohttp answering bytes from one Redis GET, same pinning and Redis) "
        f"{redis_floor_p99:.3f} ms, the gateway {redis_p99 - redis_floor_p99:+.3f} ms above it"
        + f". In-process hit: **{hit_rps:.0f}** requests/s on one core (target >= {TARGET_MEMORY_HIT_RPS:,}): "
        f"{_verdict(hit_rps >= TARGET_MEMORY_HIT_RPS)}; the hit's floor (bare aiohttp answering fixed bytes, "
        f"same pinning) served {answer_rps:.0f}: the gateway's hit is **{hit_ratio:.3f}** of it. "
        + _machine_limits(answer_rps, med(HIT1, ANSWER_FLOOR, "p99_ms"), redis_floor_p99),
    ]
    if not math.isnan(workers_ratio):
        cores = os.cpu_count() or 0
        lines.append(
            f"- Workers, 2 / 1 at 16 connections: gateway **{workers_ratio:.2f}x**, the floor's own "
            f"{floor_workers_ratio:.2f}x in the same run (target >= {TARGET_WORKERS_RATIO}x where the load generator "
            + (
                f"has its own cores): {_verdict(workers_ratio >= TARGET_WORKERS_RATIO)}."
                if cores >= 4
                else f"has its own cores; on this {cores}-core machine it does not, so the floor's ratio is the "
                f"reference: gateway / floor scaling {workers_ratio / floor_workers_ratio:.2f})."
            )
        )
    elif run.workers_note:
        lines.append(f"- Workers: {run.workers_note}.")
    s16, s1 = med(SCORE16, GATEWAY, "rps"), med(SCORE1, GATEWAY, "p50_ms")
    checks = "; ".join(
        f"{name} {c['complete']}/{c['checked']} whole" for name, c in run.stream_checks.items()
    )
    errors = sum(r["non_2xx"] + r["socket_errors"] for runs in run.results.values() for r in runs)
    lines += [
        f"- Score routing over 3 deployments at 16 connections: {s16:.0f} requests/s, {100 * (s16 / g_rps - 1):+.1f} % "
        f"vs the single-deployment gateway (issue 3 target: within 15 %): {_verdict(s16 / g_rps >= 0.85)}; p50 at 1 "
        f"connection {s1:.3f} ms. Spread of 300 sequential requests: "
        + ", ".join(f"{k} {v}" for k, v in run.spread.items())
        + ".",
        f"- Stream checks (wrk `response()` hook, {run.warmup} s at 16 connections; whole = 200, chunked, a usage "
        f"chunk, ending with `data: [DONE]`): {checks}.",
        f"- Errors (non-2xx and socket errors, all timed runs): {errors:.0f}. Load average (1 min) before / after: "
        f"{run.load_before:.2f} / {os.getloadavg()[0]:.2f}.",
    ]
    lines += [f"- Note: {note}" for note in run.notes]
    lines += [
        "",
        f"Run: `python benchmarks/proxy_overhead.py --duration {args.duration} --rounds {args.rounds}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (f" --current {args.current}" if args.current else "")
        + (" --no-workers" if args.no_workers else "")
        + "`.",
    ]
    return lines


def _one_core_table(run: Run) -> list[str]:
    """The 1-connection rows measured with every process on the proxies' core, if they were."""
    rows = [
        ("non-streaming chat", CHAT1, (FLOOR, GATEWAY, LOG_OFF, BASELINE_GATEWAY), "p50_ms", "p99_ms"),
        (
            "stream, time to first byte",
            STREAM1,
            (FLOOR, GATEWAY, BASELINE_GATEWAY),
            "first_byte_p50_ms",
            "first_byte_p99_ms",
        ),
        (
            "stream, first `data:` event",
            STREAM1,
            (FLOOR, GATEWAY, BASELINE_GATEWAY),
            "first_event_p50_ms",
            "first_event_p99_ms",
        ),
        ("in-process hit", HIT1, (ANSWER_FLOOR, GATEWAY), "p50_ms", "p99_ms"),
        ("Redis hit", REDIS1, (REDIS_FLOOR, REDIS_GATEWAY), "p50_ms", "p99_ms"),
    ]
    if not any((kind + ONE_CORE, t) in run.results for _, kind, targets, _, _ in rows for t in targets):
        return []
    lines = [
        "",
        "**At 1 connection, two layouts** (the same processes; `split`: the rows above, proxy on core 0 and "
        "everything else on core 1; `one core`: every process of the run moved to core 0 afterwards, wrk "
        "and the probe too. At 1 connection client, proxy, upstream and Redis take turns, so one core costs "
        "no throughput; it removes the wake-up of the other core at every turn, which on a virtual machine "
        "is the hypervisor rescheduling an idle vCPU. The floors' split rows show what that wake-up costs "
        "here):",
        "",
        "| request | proxy | p50 ms split | p99 ms split | p50 ms one core | p99 ms one core |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, kind, targets, p50, p99 in rows:
        for target in targets:
            if (kind, target) not in run.results and (kind + ONE_CORE, target) not in run.results:
                continue  # (the baseline, when there is none)
            lines.append(
                f"| {label} | {target} | {_f(run.med(kind, target, p50), 3)} | {_f(run.med(kind, target, p99), 3)} "
                f"| {_f(run.med(kind + ONE_CORE, target, p50), 3)} | {_f(run.med(kind + ONE_CORE, target, p99), 3)} |"
            )
    return lines


def _one_core_latency(run: Run) -> str:
    """The p50 / p99 and first-byte verdicts again on the one-core layout ('' if not measured)."""
    kind, stream = CHAT1 + ONE_CORE, STREAM1 + ONE_CORE
    if (kind, GATEWAY) not in run.results:
        return ""
    p50 = run.med(kind, GATEWAY, "p50_ms") - run.med(kind, FLOOR, "p50_ms")
    p99 = run.med(kind, GATEWAY, "p99_ms") - run.med(kind, FLOOR, "p99_ms")
    ttfb = run.med(stream, GATEWAY, "first_byte_p50_ms") - run.med(stream, FLOOR, "first_byte_p50_ms")
    event = run.med(stream, GATEWAY, "first_event_p50_ms") - run.med(stream, FLOOR, "first_event_p50_ms")
    return (
        f". With every process on one core (no wake-up of another vCPU in the turn): p50 **{p50:+.3f} ms** "
        f"{_verdict(p50 <= TARGET_P50_ADDED_MS)}, p99 **{p99:+.3f} ms** {_verdict(p99 <= TARGET_P99_ADDED_MS)}, "
        f"stream first byte {ttfb:+.3f} ms {_verdict(ttfb <= TARGET_TTFB_ADDED_MS)} (the gateway holds its "
        f"headers until the provider's first chunk, so it can still fail over; the floor sends them at once: "
        f"to the first `data:` event {event:+.3f} ms)"
    )


def _one_core_redis(run: Run) -> str:
    kind = REDIS1 + ONE_CORE
    if (kind, REDIS_GATEWAY) not in run.results:
        return ""
    p99, floor = run.med(kind, REDIS_GATEWAY, "p99_ms"), run.med(kind, REDIS_FLOOR, "p99_ms")
    return (
        f"; with every process on one core: **{p99:.3f} ms** {_verdict(p99 <= TARGET_REDIS_HIT_P99_MS)} "
        f"(its floor {floor:.3f} ms, p50 {run.med(kind, REDIS_GATEWAY, 'p50_ms'):.3f} ms)"
    )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def _header(run: Run) -> str:
    args = run.args
    dirty_code = [p for p in run.dirty if not p.startswith("benchmarks/")]
    state = (
        "clean"
        if not run.dirty
        else f"with uncommitted changes ({len(dirty_code)} path(s) outside benchmarks/)"
    )
    current = (
        f"revision {run.current_rev.describe()} (extracted with `git archive`)"
        if run.current_rev
        else f"the working tree at HEAD {run.head.describe()}, {state}"
    )
    baseline = (
        f" `{BASELINE_GATEWAY}`: revision {run.baseline_rev.describe()}, access log at its default."
        if run.baseline_rev
        else ""
    )
    return (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, wrk; "
        f"{args.rounds} round(s) of {args.duration} s per timed run, every measurement taken for every proxy back to "
        "back in each round, the order rotating between rounds; medians over the rounds. Gateway: "
        f"{current}. Proxies pinned to core 0, each its own process started once; the fake provider (zero "
        "latency), Redis, wrk and the stream probe on core 1. The floor is `benchmarks/floor_proxy.py` (bare aiohttp, "
        "one ClientSession, uvloop); `floor (A/A)` a second process of it. `gateway` runs as users run it, "
        "access log on (its default), its output going through a pipe to a `cat` on core 1 (as a container "
        "runtime reads stderr); `gateway (log off)` has `SOPHIA_ACCESS_LOG=0`."
        + baseline
        + " CPU per request: the proxy process's user + system CPU over the requests it forwarded (hits: served)."
    )
