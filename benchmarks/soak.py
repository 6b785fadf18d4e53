"""Benchmark: the gateway's resident memory over a long run (issue 12: growth under 20 MB).

One gateway (as users run it: access log on, embedded cache, its output going to a file) pinned to
core 0, the zero-latency fake provider and wrk on core 1. wrk sends a mix, by a counter in its
``request()`` hook: 6 in 10 non-streaming chats that cannot be cached, 2 in 10 streams
(``stream_options.include_usage``), 2 in 10 cache hits (``temperature: 0``, one of 50 prompts: each
a miss once, then hits). Every request carries its own 60-character ``x-request-id``
(``soak<segment>-<counter>-...``), as clients with tracing send: the gateway keeps request ids for
feedback, so this is the case its bound (by entries and by bytes) has to hold.

The run is cut into wrk segments; after each one the gateway's RSS (/proc VmRSS) is sampled with the
requests served so far. The reference is the RSS once ``--warmup`` requests have been served; the
verdict is the growth from there to the end (and to the largest sample). At the end the gateway is
stopped with SIGTERM and the access-log lines carrying this run's request ids are counted against
the requests wrk saw complete (a line lost at shutdown would show as fewer).

Run: python benchmarks/soak.py [--requests 1000000] [--warmup N] [--connections 16]
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import Logged  # noqa: E402
from benchmarks.proxy_overhead import (  # noqa: E402
    BODY,
    CHAT_PATH,
    HIT_BODY,
    LOAD_CPU,
    PROXY_CPU,
    STREAM_BODY,
    ensure_wrk,
    policy_text,
    running,
    start_gateway,
    tree_env,
)
from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import start  # noqa: E402

SECTION = "Soak: resident memory over a long run (issue 12)"
TARGET_GROWTH_MB = 20.0
HIT_PROMPTS = 50
MB = 1024 * 1024
SAMPLES = 20  # RSS samples after the warm-up (wrk segments)

SOAK_SCRIPT = """
local chat = [[%(chat)s]]
local stream = [[%(stream)s]]
local hits = {}
for i = 1, %(prompts)d do
  hits[i] = string.format([[%(hit)s]], i)
end
local pad = string.rep("x", 40)
local counter = 0
request = function()
  counter = counter + 1
  local k = counter %% 10
  local body
  if k < 6 then body = chat elseif k < 8 then body = stream else body = hits[(counter %% %(prompts)d) + 1] end
  local id = string.format("soak%(segment)d-%%010d-%%s", counter, pad)
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer soak", ["x-request-id"] = id}, body)
end
"""


def soak_script(segment: int) -> str:
    hit = (HIT_BODY % "bench").replace(
        "Say something short about gateways.", "Question number %d about gateways."
    )
    text = SOAK_SCRIPT % {
        "chat": BODY % "bench",
        "stream": STREAM_BODY % "bench",
        "hit": hit,
        "prompts": HIT_PROMPTS,
        "segment": segment,
        "path": CHAT_PATH,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(text)
    return script.name


def run_segment(wrk: str, url: str, segment: int, connections: int, duration_s: float) -> tuple[int, int]:
    """One wrk segment: (requests completed, errors)."""
    script = soak_script(segment)
    cmd = ["taskset", "-c", str(LOAD_CPU), wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s"]
    try:
        out = subprocess.run(
            [*cmd, "-s", script, url + CHAT_PATH], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(script)
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    bad = int(errors.group(1)) if errors else 0
    bad += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1))) if socket_errors else 0
    return done, bad


def logged_requests(log: Path) -> int:
    """Lines of the gateway's output carrying one of this run's request ids."""
    count = 0
    with log.open("rb") as f:
        for line in f:
            if b'"soak' in line or b"=soak" in line or b" soak" in line:
                count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests in all (default 1,000,000)")
    parser.add_argument(
        "--warmup", type=int, help="requests before the reference sample (default: 10 %%, at most 100,000)"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(100_000, args.requests // 10)
    if args.requests < 1000 or not 0 < warmup < args.requests:
        parser.error("--requests must be at least 1000 and --warmup between 1 and --requests")
    wrk = ensure_wrk()
    started = time.monotonic()
    samples: list[tuple[int, float, int]] = []  # (requests so far, seconds, RSS bytes)
    errors = 0
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="soak-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        fake = stack.enter_context(
            running(start(["fake-provider", "--port", "0"], cpu=LOAD_CPU, env=tree_env(ROOT)))
        )
        policy = scratch / "soak.yaml"
        policy.write_text(policy_text(fake.url))
        gateway: Logged = start_gateway(stack, ROOT, policy, scratch, "gateway", str(PROXY_CPU))
        samples.append((0, 0.0, gateway.rss_bytes()))
        served, segment = 0, 0
        # The first segment measures the rate; the rest are sized for about SAMPLES samples after warm-up.
        duration_s = 2.0
        rate = 0.0
        while served < args.requests:
            segment += 1
            t0 = time.monotonic()
            done, bad = run_segment(wrk, gateway.url, segment, args.connections, duration_s)
            served += done
            errors += bad
            rate = done / (time.monotonic() - t0)
            samples.append((served, time.monotonic() - started, gateway.rss_bytes()))
            print(
                f"segment {segment}: {served} requests, RSS {samples[-1][2] / MB:.1f} MB, {rate:.0f}/s",
                flush=True,
            )
            if served < warmup:
                duration_s = min(60.0, max(1.0, (warmup - served) / max(rate, 1.0)))
            else:
                duration_s = min(60.0, max(1.0, (args.requests - warmup) / SAMPLES / max(rate, 1.0)))
                duration_s = min(duration_s, max(1.0, (args.requests - served) / max(rate, 1.0)))
        code = gateway.stop(timeout_s=60)
        lines = logged_requests(gateway.log)
    elapsed = time.monotonic() - started
    reference = next(s for s in samples if s[0] >= warmup)
    final = samples[-1]
    peak = max(s[2] for s in samples if s[0] >= reference[0])
    growth_mb, peak_growth_mb = (final[2] - reference[2]) / MB, (peak - reference[2]) / MB
    met = growth_mb < TARGET_GROWTH_MB and peak_growth_mb < TARGET_GROWTH_MB
    picks = _spread(samples, 8)
    body = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}: `python benchmarks/soak.py "
        f"--requests {args.requests}` ({elapsed / 60:.1f} min). One gateway pinned to core 0 (access log on, its "
        "default; embedded cache), fake provider and wrk on core 1, "
        f"{args.connections} connections; per 10 requests: 6 non-streaming chats (not cacheable), 2 streams, 2 cache "
        f"hits (one of {HIT_PROMPTS} temperature-0 prompts); every request its own 60-character `x-request-id`.",
        "",
        "| requests served | minutes | RSS MB |",
        "| ---: | ---: | ---: |",
        *(f"| {n:,} | {t / 60:.1f} | {rss / MB:.1f} |" for n, t, rss in picks),
        "",
        f"- RSS after the warm-up ({reference[0]:,} requests): {reference[2] / MB:.1f} MB; at the end "
        f"({final[0]:,}): {final[2] / MB:.1f} MB; growth **{growth_mb:+.1f} MB**, largest sample {peak_growth_mb:+.1f} MB "
        f"above the reference (target: under {TARGET_GROWTH_MB:.0f} MB): {'**met**' if met else '**NOT met**'}.",
        f"- Errors (non-2xx and socket errors): {errors}. Gateway exit code after SIGTERM: {code}.",
        f"- Access-log lines with this run's request ids after the gateway stopped: {lines:,} for {final[0]:,} "
        f"responses wrk counted complete ({'none lost' if lines >= final[0] else f'{final[0] - lines:,} missing'}; "
        "requests in flight when a wrk segment ends are served and logged but not counted by wrk).",
    ]
    if not args.no_write:
        write_section(SECTION, "\n".join(body))
    print("\n".join(body))
    return 0 if met and errors == 0 and lines >= final[0] else 1


def _spread(samples: list[tuple[int, float, int]], n: int) -> list[tuple[int, float, int]]:
    """About ``n`` samples evenly spread, the first and the last included."""
    if len(samples) <= n:
        return samples
    step = (len(samples) - 1) / (n - 1)
    return [samples[round(i * step)] for i in range(n)]


if __name__ == "__main__":
    raise SystemExit(main())
