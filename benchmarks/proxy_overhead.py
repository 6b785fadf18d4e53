"""Benchmark: requests/s and added latency of the gateway over a zero-latency fake upstream.

One run measures, with wrk as the load generator:
  * direct to the fake provider, and through the gateway (gateway pinned to core 0;
    fake provider and wrk share core 1);
  * requests/s at concurrency 16 (non-streaming chat completions);
  * latency p50/p99 at concurrency 1 and 16;
  * the same through the gateway for a model group of three deployments with ``strategy: score``
    (the same fake provider under three provider names, so only the routing differs), compared
    with the single-deployment group (issue 3 target: requests/s within 15 %).
It writes its figures to benchmarks/RESULTS.md (its own section, replaced on each run).

Run: python benchmarks/proxy_overhead.py [--duration 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import start  # noqa: E402

BODY = '{"model": "%s", "messages": [{"role": "user", "content": "Say something short about gateways."}]}'
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
wrk.body = [[%s]]
"""


def this_checkout_env(**extra: str) -> dict[str, str]:
    """Environment for the processes started here: they import ``gateway`` from this checkout
    (not whatever an editable install points at, as ``serve`` may run in another directory)."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), **extra}


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it from Debian's packages", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is required: apt-get install wrk")
    return found


def run_wrk(wrk: str, url: str, model: str, connections: int, duration_s: int, cpu: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (BODY % model))
    cmd = [
        "taskset",
        "-c",
        str(cpu),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    lat = {p: _ms(re.search(rf"^\s+{p}%\s+([\d.]+\w+)", out, re.MULTILINE).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {
        "rps": rps,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


SCORE_ROW = "gateway (score, 3 deployments)"
SCORE_PROVIDERS = ("fake-a", "fake-b", "fake-c")


def policy_text(fake_url: str) -> str:
    """One single-deployment group (``bench``) and one scored group of three (``bench-score``)."""
    scored = "".join(f"  {name}: {{kind: openai, base_url: {fake_url}/v1}}\n" for name in SCORE_PROVIDERS)
    deployments = ", ".join(f"{{provider: {name}, model: fake-model}}" for name in SCORE_PROVIDERS)
    return (
        f"version: 1\nproviders:\n  fake: {{kind: openai, base_url: {fake_url}/v1}}\n{scored}"
        "models:\n  bench: {deployments: [{provider: fake, model: fake-model}]}\n"
        f"  bench-score: {{strategy: score, deployments: [{deployments}]}}\n"
    )


def served_by(url: str, model: str, n: int) -> dict[str, int]:
    """How ``n`` sequential requests spread over providers, by their ``x-gateway-provider``."""
    seen: collections.Counter[str] = collections.Counter()
    body = (BODY % model).encode()
    for _ in range(n):
        req = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json", "Authorization": "Bearer bench"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                seen[resp.headers.get("x-gateway-provider", "?")] += 1
        except OSError as exc:
            seen[f"error {getattr(exc, 'code', type(exc).__name__)}"] += 1
    return dict(sorted(seen.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = parser.parse_args()
    wrk = ensure_wrk()
    fake = start(["fake-provider", "--port", "0"], cpu=1, env=this_checkout_env())
    policy = Path(tempfile.mkdtemp()) / "bench.yaml"
    policy.write_text(policy_text(fake.url))
    try:
        gateway = start(
            ["serve", "--policy", str(policy), "--port", "0"],
            cpu=0,
            env=this_checkout_env(SOPHIA_ACCESS_LOG="0"),
        )
    except BaseException:
        fake.stop()  # do not leave the fake running when the gateway cannot start
        raise
    results: dict[tuple[str, int], dict[str, float]] = {}
    spread: dict[str, int] = {}
    admin: object = None
    try:
        targets = {
            "direct": (fake.url, "fake-model"),
            "gateway": (gateway.url, "bench"),
            SCORE_ROW: (gateway.url, "bench-score"),
        }
        for name, (base, model) in targets.items():
            url = base + "/v1/chat/completions"
            run_wrk(wrk, url, model, 16, 2, cpu=1)  # warm-up: connections, caches, JIT-free but page-in
            for conc in (1, 16):
                results[(name, conc)] = run_wrk(wrk, url, model, conc, args.duration, cpu=1)
                print(name, conc, results[(name, conc)], flush=True)
        spread = served_by(gateway.url + "/v1/chat/completions", "bench-score", 300)
        print("bench-score served by", spread, flush=True)
        try:
            with urllib.request.urlopen(gateway.url + "/admin/models", timeout=5) as resp:
                admin = json.load(resp)["models"]["bench-score"]
        except (OSError, KeyError, ValueError) as exc:
            print("GET /admin/models:", exc, flush=True)
    finally:
        gateway.stop()
        fake.stop()

    d1, g1, d16, g16 = (results[k] for k in (("direct", 1), ("gateway", 1), ("direct", 16), ("gateway", 16)))
    s1, s16 = results[(SCORE_ROW, 1)], results[(SCORE_ROW, 16)]
    ratio = s16["rps"] / g16["rps"]
    added_p50 = g1["p50_ms"] - d1["p50_ms"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, wrk, "
        f"{args.duration} s per run. Gateway pinned to core 0; fake provider (zero latency) and wrk on core 1. "
        "Non-streaming chat completions, access log off. "
        f"`{SCORE_ROW}`: one model group of three deployments with `strategy: score`, "
        "the same fake provider under three provider names, in the same gateway process.",
        "",
        "| path | concurrency | requests/s | p50 ms | p99 ms | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (name, conc), r in results.items():
        lines.append(
            f"| {name} | {conc} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['non_2xx']:.0f} |"
        )
    lines += [
        "",
        f"- Gateway requests/s at concurrency 16: **{g16['rps']:.0f}** (target >= 3,000 on one core): "
        f"{'met' if g16['rps'] >= 3000 else 'NOT met'}.",
        f"- Added latency p50 at concurrency 1 (gateway - direct): **{added_p50:.3f} ms** (target <= 0.5 ms): "
        f"{'met' if added_p50 <= 0.5 else 'NOT met'}.",
        f"- Added latency p50 / p99 at concurrency 16: {g16['p50_ms'] - d16['p50_ms']:.3f} ms / "
        f"{g16['p99_ms'] - d16['p99_ms']:.3f} ms.",
        f"- Score routing over 3 deployments at concurrency 16: **{s16['rps']:.0f}** requests/s, "
        f"{100 * (ratio - 1):+.1f} % vs the single-deployment gateway's {g16['rps']:.0f} "
        f"(issue 3 target: within 15 %): {'met' if ratio >= 0.85 else 'NOT met'}. "
        f"p50 at concurrency 1: {s1['p50_ms']:.3f} ms vs {g1['p50_ms']:.3f} ms.",
        "- Score routing spread (300 sequential requests after the runs, by `x-gateway-provider`): "
        + ", ".join(f"{k} {v}" for k, v in spread.items())
        + ".",
    ]
    if isinstance(admin, dict):
        lines.append(
            "- `GET /admin/models` for the scored group after the runs: "
            + "; ".join(
                f"{d.get('provider')} share {d.get('share')}, score {d.get('score')}, "
                f"{(d.get('stats') or {}).get('requests')} requests"
                for d in admin.get("deployments", [])
            )
            + "."
        )
    write_section("Proxy overhead (issue 2)", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
