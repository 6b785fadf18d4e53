"""Benchmark: how the gateway's score routing and failover react to one provider degrading.

Three fake providers with small, jittered latencies (alpha ~20 ms, beta ~30 ms, gamma ~40 ms,
lognormal) serve one model group with ``strategy: score``. A steady closed-loop load (8 clients by
default, aiohttp, no client-side retries) runs through the gateway while alpha, the fastest and so
the preferred provider, goes through four phases, set live through its ``POST /_fake/faults``:

  1. healthy;
  2. slow (latency 400 ms);
  3. failing (back to its normal latency, but half of its answers are 503);
  4. recovered (normal again).

Every request records its start time, latency, status, ``x-gateway-provider``,
``x-gateway-attempts`` and ``x-gateway-fallback``. The script draws benchmarks/failover.png
(traffic share per provider and client p50/p99 latency over time, 1 s bins, phase boundaries
marked) and writes its section of benchmarks/RESULTS.md.

Needs matplotlib (a benchmark-only dependency): pip install -e '.[bench]'

Run: python benchmarks/failover.py [--concurrency 8] [--scale 1.0] [--csv requests.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import ManagedProcess, start  # noqa: E402

TITLE = "Failover under a degrading provider (issue 3)"
PNG = Path(__file__).resolve().parent / "failover.png"
MODEL = "chat"
DEGRADED = "alpha"
JITTER_MS = 5.0
# name -> base latency (ms); alpha is the fastest, so the score prefers it while it is healthy.
PROVIDERS: dict[str, float] = {"alpha": 20.0, "beta": 30.0, "gamma": 40.0}
COLORS = {"alpha": "#d62728", "beta": "#1f77b4", "gamma": "#2ca02c", "error": "#111111"}
BREAKER_COLORS = {"open": "#ff9900", "half_open": "#ffd27f"}
# The policy compresses the default timescale so that a breaker re-probes and the reliability
# window forgets phase 3 within a ~90 s run; everything else is the policy default.
POLICY_TUNING = {"breaker.cooldown_s": 10, "routing.window_s": 60}


def this_checkout_env(**extra: str) -> dict[str, str]:
    """Environment for the processes started here: they import ``gateway`` from this checkout
    (not whatever an editable install points at, as ``serve`` may run in another directory)."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), **extra}


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    faults: dict[str, Any]  # what alpha's /_fake/faults is set to when the phase starts
    what: str
    label: str  # short, for the chart


PHASES = [
    Phase(
        "healthy",
        15,
        {"latency_ms": PROVIDERS[DEGRADED], "error_rate": 0.0},
        "all three providers normal",
        "all normal",
    ),
    Phase(
        "slow",
        20,
        {"latency_ms": 400.0, "error_rate": 0.0},
        f"{DEGRADED} latency 400 ms",
        f"{DEGRADED} 400 ms",
    ),
    Phase(
        "failing",
        20,
        {"latency_ms": PROVIDERS[DEGRADED], "error_rate": 0.5, "error_status": 503},
        f"{DEGRADED} answers 50 % of requests with 503 (normal latency)",
        f"{DEGRADED} 50 % 503",
    ),
    Phase(
        "recovered",
        25,
        {"latency_ms": PROVIDERS[DEGRADED], "error_rate": 0.0},
        f"{DEGRADED} normal again",
        f"{DEGRADED} normal",
    ),
]

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say something short about gateways."}]}


@dataclass
class Sample:
    start_s: float  # since the measured run began (phase 1 start)
    latency_ms: float
    status: int  # 0 = no HTTP answer (connection error / client timeout)
    provider: str
    attempts: int
    fallback: bool | None  # None = header absent
    error: str = ""


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    # per phase: upstream requests each fake saw during it (from /_fake/stats deltas)
    upstream: list[dict[str, int]] = field(default_factory=list)
    # (t, breaker state, share) of the degraded deployment from GET /admin/models, polled each second
    admin: list[tuple[float, str, float | None]] = field(default_factory=list)
    admin_available: bool = False
    admin_end: list[dict[str, Any]] = field(default_factory=list)  # snapshot at each phase end


def need_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        print(
            "benchmarks/failover.py needs matplotlib, a benchmark-only dependency.\n"
            "Install it with:  pip install -e '.[bench]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def policy_text(fakes: dict[str, ManagedProcess]) -> str:
    providers = "".join(
        f"  {name}:\n    kind: openai\n    base_url: {proc.url}/v1\n"
        "    timeouts: {connect_s: 1, first_byte_s: 5, total_s: 10}\n"
        for name, proc in fakes.items()
    )
    deployments = "".join(f"      - {{provider: {name}, model: fake-model}}\n" for name in fakes)
    return (
        "version: 1\nauth: {mode: open}\n"
        f"routing: {{window_s: {POLICY_TUNING['routing.window_s']}}}\n"
        f"breaker: {{cooldown_s: {POLICY_TUNING['breaker.cooldown_s']}}}\n"
        f"providers:\n{providers}"
        f"models:\n  {MODEL}:\n    strategy: score\n    deployments:\n{deployments}"
    )


async def client(session: Any, url: str, t0: float, stop_at: float, out: list[Sample]) -> None:
    import aiohttp

    while True:
        now = time.monotonic()
        if now >= stop_at:
            return
        status, provider, attempts, fallback, error = 0, "", 0, None, ""
        try:
            async with session.post(url, json=BODY, headers={"Authorization": "Bearer bench"}) as resp:
                payload = await resp.read()
                status = resp.status
                provider = resp.headers.get("x-gateway-provider", "")
                attempts = int(resp.headers.get("x-gateway-attempts", "0") or 0)
                fb = resp.headers.get("x-gateway-fallback")
                fallback = None if fb is None else fb.lower() == "true"
                if status != 200:
                    error = payload[:200].decode("utf-8", "replace")
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        done = time.monotonic()
        out.append(Sample(now - t0, (done - now) * 1000, status, provider, attempts, fallback, error))


async def fake_stats(session: Any, fakes: dict[str, ManagedProcess]) -> dict[str, int]:
    counts = {}
    for name, proc in fakes.items():
        async with session.get(proc.url + "/_fake/stats") as resp:
            counts[name] = int((await resp.json())["requests"])
    return counts


async def set_faults(session: Any, fake: ManagedProcess, faults: dict[str, Any]) -> None:
    async with session.post(fake.url + "/_fake/faults", json=faults) as resp:
        if resp.status != 200:
            raise RuntimeError(f"POST /_fake/faults {faults}: {resp.status} {await resp.text()}")


def degraded_entry(doc: dict[str, Any]) -> dict[str, Any] | None:
    for dep in doc.get("models", {}).get(MODEL, {}).get("deployments", []):
        if dep.get("provider") == DEGRADED:
            return dep  # type: ignore[no-any-return]
    return None


async def admin_models(session: Any, gateway: ManagedProcess) -> dict[str, Any] | None:
    try:
        async with session.get(gateway.url + "/admin/models") as resp:
            if resp.status != 200:
                return None
            return await resp.json()  # type: ignore[no-any-return]
    except Exception:
        return None


async def drive(
    gateway: ManagedProcess, fakes: dict[str, ManagedProcess], concurrency: int, scale: float, warmup_s: float
) -> Run:
    import aiohttp

    run = Run()
    url = gateway.url + "/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=30)
    phases = [Phase(p.name, p.seconds * scale, p.faults, p.what, p.label) for p in PHASES]
    total_s = sum(p.seconds for p in phases)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as load,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as control,
    ):
        # Warm-up: connections open and every deployment measured; not recorded.
        await set_faults(control, fakes[DEGRADED], phases[0].faults)
        warm: list[Sample] = []
        warm_stop = time.monotonic() + warmup_s
        await asyncio.gather(*(client(load, url, 0.0, warm_stop, warm) for _ in range(concurrency)))
        bad = [s for s in warm if s.status != 200]
        if len(bad) == len(warm):
            raise RuntimeError(f"every warm-up request failed, e.g. {bad[0].status} {bad[0].error}")
        run.admin_available = await admin_models(control, gateway) is not None

        t0 = time.monotonic()
        stop_at = t0 + total_s
        workers = [
            asyncio.create_task(client(load, url, t0, stop_at, run.samples)) for _ in range(concurrency)
        ]

        async def poll_admin() -> None:
            while time.monotonic() < stop_at:
                doc = await admin_models(control, gateway)
                dep = degraded_entry(doc) if doc else None
                if dep is not None:
                    run.admin.append((time.monotonic() - t0, str(dep.get("breaker")), dep.get("share")))
                await asyncio.sleep(0.5)

        poller = asyncio.create_task(poll_admin()) if run.admin_available else None
        boundary = t0
        for i, phase in enumerate(phases):
            before = await fake_stats(control, fakes)
            if i > 0:
                await set_faults(control, fakes[DEGRADED], phase.faults)
            print(f"t={time.monotonic() - t0:5.1f}s phase {i + 1} {phase.name}: {phase.what}", flush=True)
            boundary += phase.seconds
            await asyncio.sleep(max(0.0, boundary - time.monotonic()))
            after = await fake_stats(control, fakes)
            run.upstream.append({k: after[k] - before[k] for k in fakes})
            doc = await admin_models(control, gateway) if run.admin_available else None
            run.admin_end.append(doc or {})
        await asyncio.gather(*workers)
        if poller is not None:
            await poller
    return run


# --- analysis ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def phase_bounds(scale: float) -> list[tuple[str, float, float]]:
    bounds, t = [], 0.0
    for p in PHASES:
        bounds.append((p.name, t, t + p.seconds * scale))
        t += p.seconds * scale
    return bounds


def summarize(samples: list[Sample]) -> dict[str, float]:
    n = len(samples)
    ok = [s for s in samples if s.status == 200]
    lat = [s.latency_ms for s in samples]
    with_fb = [s for s in ok if s.fallback is not None]
    return {
        "n": n,
        "errors": n - len(ok),
        "error_rate": (n - len(ok)) / n if n else math.nan,
        "fallback_rate": sum(1 for s in with_fb if s.fallback) / len(with_fb) if with_fb else math.nan,
        "retried_rate": sum(1 for s in ok if s.attempts > 1) / len(ok) if ok else math.nan,
        "mean_attempts": sum(s.attempts for s in ok) / len(ok) if ok else math.nan,
        "degraded_share": sum(1 for s in ok if s.provider == DEGRADED) / len(ok) if ok else math.nan,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
    }


def in_phase(samples: list[Sample], lo: float, hi: float) -> list[Sample]:
    return [s for s in samples if lo <= s.start_s < hi]


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f} %"


def first_window(samples: list[Sample], lo: float, hi: float, test: Any, width: float = 0.5) -> float | None:
    """Seconds after ``lo`` at which the degraded provider's served share over a ``width`` window
    of started requests first passes ``test``; None if it never does before ``hi``."""
    t = lo
    while t < hi:
        ok = [s for s in samples if t <= s.start_s < t + width and s.status == 200]
        if ok and test(sum(1 for s in ok if s.provider == DEGRADED) / len(ok)):
            return t - lo
        t += width
    return None


def first_state(run: Run, lo: float, hi: float, state: str) -> float | None:
    for t, seen, _ in run.admin:
        if lo <= t < hi and seen == state:
            return t - lo
    return None


def breaker_states(run: Run, lo: float, hi: float) -> str:
    seen: list[str] = []
    for t, state, _ in run.admin:
        if lo <= t < hi and (not seen or seen[-1] != state):
            seen.append(state)
    return " → ".join(seen) if seen else "n/a"


def plot(run: Run, scale: float, concurrency: int) -> None:
    plt = need_matplotlib()
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    bounds = phase_bounds(scale)
    end = bounds[-1][2]
    nbins = math.ceil(end)
    names = ["error", *PROVIDERS]  # errors at the bottom of the stack
    counts = {n: [0] * nbins for n in names}
    lat_bins: list[list[float]] = [[] for _ in range(nbins)]
    for s in run.samples:
        b = min(nbins - 1, int(s.start_s))
        key = s.provider if s.status == 200 and s.provider in PROVIDERS else "error"
        counts[key][b] += 1
        lat_bins[b].append(s.latency_ms)
    totals = [sum(counts[n][b] for n in names) or 1 for b in range(nbins)]

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    fig.suptitle(
        f"Sophia Gateway, strategy: score over 3 providers, {concurrency} concurrent clients; "
        f"{DEGRADED} degraded live (1 s bins)",
        fontsize=11,
    )
    # Step areas over bin edges: bin b covers [b, b + 1).
    edges = list(range(nbins + 1))
    shares = [[100 * counts[n][b] / totals[b] for b in range(nbins)] for n in names]
    shares = [row + row[-1:] for row in shares]
    labels = [f"{n} (~{PROVIDERS[n]:.0f} ms)" if n in PROVIDERS else "client error" for n in names]
    ax1.stackplot(edges, *shares, labels=labels, colors=[COLORS[n] for n in names], alpha=0.85, step="post")
    # A strip along the top: where GET /admin/models reported the degraded deployment's breaker open / half-open.
    shown: set[str] = set()
    for (t, state, _), nxt in zip(run.admin, [*run.admin[1:], (end, "", None)], strict=True):
        if state in ("open", "half_open"):
            label = f"{DEGRADED} breaker {state.replace('_', '-')}"
            ax1.axvspan(
                t,
                nxt[0],
                ymin=0.95,
                ymax=1.0,
                color=BREAKER_COLORS[state],
                label=None if label in shown else label,
            )
            shown.add(label)
    ax1.set_ylim(0, 100)
    ax1.set_ylabel("traffic share, % of requests\n(by x-gateway-provider)")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="served by", title_fontsize=8)

    p50 = [percentile(v, 50) for v in lat_bins]
    p99 = [percentile(v, 99) for v in lat_bins]
    centers = [b + 0.5 for b in range(nbins)]
    ax2.plot(centers, p99, color="#9467bd", lw=1.8, marker=".", label="client p99")
    ax2.plot(centers, p50, color="#ff7f0e", lw=1.4, marker=".", label="client p50")
    ax2.set_yscale("log")
    finite = [v for v in p50 + p99 if not math.isnan(v)]
    lo_y, hi_y = min(finite, default=1.0), max(finite, default=1000.0)
    ticks = [t for t in (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if lo_y / 2 <= t <= hi_y * 2]
    ax2.yaxis.set_major_locator(FixedLocator(ticks))
    ax2.set_yticklabels([str(t) for t in ticks])
    ax2.yaxis.set_minor_locator(NullLocator())
    ax2.yaxis.set_minor_formatter(NullFormatter())
    ax2.set_ylim(lo_y / 1.5, hi_y * 1.5)
    ax2.set_ylabel("client latency, ms (log scale)")
    ax2.set_xlabel("time since phase 1 start, s")
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)

    for i, (name, lo, hi) in enumerate(bounds):
        if i > 0:
            for ax in (ax1, ax2):
                ax.axvline(lo, color="black", ls="--", lw=1.2)
        ax1.text(
            (lo + hi) / 2,
            1.02,
            f"{i + 1}. {name}: {PHASES[i].label}",
            transform=ax1.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8.5,
        )
    ax2.set_xlim(0, end)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    plt.close(fig)


def report(run: Run, scale: float, concurrency: int, warmup_s: float) -> str:
    bounds = phase_bounds(scale)
    total_s = bounds[-1][2]
    overall = summarize(run.samples)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        f"`python3 benchmarks/failover.py`.",
        "",
        "Setup: three fake providers with lognormal latency (median "
        + ", ".join(f"{n} {ms:.0f} ms" for n, ms in PROVIDERS.items())
        + f", sd {JITTER_MS:.0f} ms) in one model group, `strategy: score`, policy defaults except "
        + ", ".join(f"`{k}: {v}`" for k, v in POLICY_TUNING.items())
        + f" (timescale compressed to fit the run). {concurrency} closed-loop clients (aiohttp, no client retries), "
        f"non-streaming chat completions, {total_s:.0f} s measured after a {warmup_s:.0f} s warm-up. "
        f"Gateway on core 0, fakes on core 1, access log off. `{DEGRADED}` (the fastest, so preferred) is "
        "degraded live through `POST /_fake/faults`:",
        "",
        "| phase | time s | what | requests | req/s | client errors | fallback rate | retried | "
        f"{DEGRADED} share (served) | {DEGRADED} upstream attempts | p50 ms | p99 ms |"
        + (f" {DEGRADED} breaker |" if run.admin_available else ""),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" --- |" if run.admin_available else ""),
    ]
    for i, (name, lo, hi) in enumerate(bounds):
        s = summarize(in_phase(run.samples, lo, hi))
        up = run.upstream[i] if i < len(run.upstream) else {}
        up_total = sum(up.values())
        up_share = f"{up.get(DEGRADED, 0)} ({pct(up.get(DEGRADED, 0) / up_total)})" if up_total else "n/a"
        lines.append(
            f"| {i + 1}. {name} | {lo:g}–{hi:g} | {PHASES[i].what} | {s['n']:.0f} | {s['n'] / (hi - lo):.0f} | "
            f"{s['errors']:.0f} ({pct(s['error_rate'])}) | {pct(s['fallback_rate'])} | {pct(s['retried_rate'])} | "
            f"{pct(s['degraded_share'])} | {up_share} | {s['p50']:.1f} | {s['p99']:.1f} |"
            + (f" {breaker_states(run, lo, hi)} |" if run.admin_available else "")
        )
    lines += [
        "",
        f"- Overall: {overall['n']:.0f} requests, client error rate **{pct(overall['error_rate'])}** "
        f"({overall['errors']:.0f}), fallback rate (`x-gateway-fallback: true`) {pct(overall['fallback_rate'])}, "
        f"retried (`x-gateway-attempts` > 1) {pct(overall['retried_rate'])}, "
        f"p50 {overall['p50']:.1f} ms, p99 {overall['p99']:.1f} ms.",
    ]
    (_, s_lo, s_hi), (_, f_lo, f_hi), (_, r_lo, r_hi) = bounds[1], bounds[2], bounds[3]

    def secs(x: float | None) -> str:
        return "never" if x is None else f"{x:.1f} s"

    slow = in_phase(run.samples, s_lo, s_hi)
    over = sum(1 for s in slow if s.latency_ms > 300)
    lines.append(
        f"- Slow phase: {DEGRADED}'s served share first fell below 10 % (0.5 s windows) after "
        f"{secs(first_window(run.samples, s_lo, s_hi, lambda x: x < 0.10))}; {over} requests "
        f"({pct(over / len(slow) if slow else math.nan)}) still took > 300 ms (those routed to {DEGRADED})."
    )
    failing = [s for s in in_phase(run.samples, f_lo, f_hi) if s.fallback]
    lines.append(
        f"- Failing phase: {len(failing)} requests fell back; "
        + (
            f"the admin endpoint first showed {DEGRADED}'s breaker open after "
            f"{secs(first_state(run, f_lo, f_hi, 'open'))} (sampled every 0.5 s, so short half-open probes "
            "and brief re-closings can be missed)."
            if run.admin_available
            else "breaker state not available."
        )
    )
    lines.append(
        f"- Recovery: {DEGRADED}'s served share first exceeded 50 % (0.5 s windows) "
        f"{secs(first_window(run.samples, r_lo, r_hi, lambda x: x > 0.5))} after it became healthy "
        f"(breaker `cooldown_s` {POLICY_TUNING['breaker.cooldown_s']} s)."
    )
    missing_fb = sum(1 for s in run.samples if s.status == 200 and s.fallback is None)
    if missing_fb:
        lines.append(f"- {missing_fb} successful responses had no `x-gateway-fallback` header.")
    errors: dict[str, int] = {}
    for s in run.samples:
        if s.status != 200:
            key = f"{s.status} {s.error[:120]}".strip()
            errors[key] = errors.get(key, 0) + 1
    for key, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"- client error ×{n}: `{key}`")
    lines += [
        '- "served" share: successful responses whose `x-gateway-provider` is '
        f"`{DEGRADED}`; upstream attempts: requests `{DEGRADED}` itself received during the phase "
        "(its `/_fake/stats`), as a share of all three providers'.",
        "",
        "![Traffic share per provider and client latency over time](failover.png)",
    ]
    return "\n".join(lines)


def write_csv(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start_s", "latency_ms", "status", "provider", "attempts", "fallback", "error"])
        for s in samples:
            w.writerow(
                [
                    f"{s.start_s:.4f}",
                    f"{s.latency_ms:.3f}",
                    s.status,
                    s.provider,
                    s.attempts,
                    "" if s.fallback is None else str(s.fallback).lower(),
                    s.error,
                ]
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's length (default: 1)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded warm-up seconds (default: 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fakes' latency/fault draws")
    parser.add_argument("--csv", type=Path, help="also write every request to this CSV file")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args()
    need_matplotlib()  # fail fast, before starting anything

    fakes: dict[str, ManagedProcess] = {}
    gateway = None
    try:
        for i, (name, ms) in enumerate(PROVIDERS.items()):
            fakes[name] = start(
                [
                    "fake-provider",
                    "--port",
                    "0",
                    "--latency-ms",
                    str(ms),
                    "--latency-jitter-ms",
                    str(JITTER_MS),
                    "--latency-dist",
                    "lognormal",
                    "--seed",
                    str(args.seed + i),
                ],
                cpu=1,
                env=this_checkout_env(),
            )
        policy = Path(tempfile.mkdtemp()) / "failover.yaml"
        policy.write_text(policy_text(fakes))
        gateway = start(
            ["serve", "--policy", str(policy), "--port", "0"],
            cpu=0,
            env=this_checkout_env(SOPHIA_ACCESS_LOG="0"),
        )
        run = asyncio.run(drive(gateway, fakes, args.concurrency, args.scale, args.warmup))
    except BaseException:
        if gateway is not None:
            print(f"--- gateway output (tail) ---\n{gateway.output[-4000:]}", file=sys.stderr)
        raise
    finally:
        if gateway is not None:
            code = gateway.stop()
            if code not in (0, -15):
                print(f"gateway exited {code}:\n{gateway.output[-3000:]}", file=sys.stderr)
        for proc in fakes.values():
            proc.stop()

    if not run.admin_available:
        print("note: GET /admin/models did not answer 200; breaker states are not reported", flush=True)
    if args.csv:
        write_csv(args.csv, run.samples)
    plot(run, args.scale, args.concurrency)
    body = report(run, args.scale, args.concurrency, args.warmup)
    if not args.no_results:
        write_section(TITLE, body)
    print(body)
    print(f"\nwrote {PNG}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
