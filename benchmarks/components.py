"""Benchmark: where a request's CPU goes, per component, in the gateway and in the bare floor.

Issue 12 asks for its per-component table measured again after the changes. For each proxy (the
floor, ``benchmarks/floor_proxy.py``, and the gateway with the access log at its default) this
script:

  1. starts it pinned to core 0 over the zero-latency fake provider (core 1), as
     ``proxy_overhead.py`` does, and warms it up;
  2. runs wrk (16 connections, non-streaming chat, not cacheable) on core 1 while ``py-spy record``
     samples the proxy in its default, blocking mode (the non-blocking and native modes mislead
     here: see the issue) and /proc counts the proxy's CPU time;
  3. files every sampled stack under the first component, from the innermost frame outwards, whose
     file matches (``COMPONENTS``), and turns each component's share of the samples into
     microseconds of CPU per request (share x CPU per request). Idle samples are not counted.

The table compares the two side by side: what the gateway spends beyond the floor, per component.
It writes its section of benchmarks/RESULTS.md.

Run: python benchmarks/components.py [--duration 10] [--rate 200]
Needs py-spy (``pip install py-spy``; in the ``bench`` extra) and wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import Logged, gateway_command, launch  # noqa: E402
from benchmarks.proxy_overhead import (  # noqa: E402
    BODY,
    ensure_wrk,
    policy_for,
    policy_text,
    run_wrk,
    start_floor,
)
from benchmarks.results import write_section  # noqa: E402

SECTION = "Where a request's CPU goes, per component (issue 12)"
PROXY_CPU, LOAD_CPU = "0", 1
CONNECTIONS = 16

# (component, where): a stack is filed under the first component, from its innermost frame
# outwards, whose frame's file contains one of the ``where`` fragments.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log", ("observability/access_log.py", "observability/logging.py", "/logging/")),
    ("metrics", ("observability/metrics.py", "prometheus_client/")),
    (
        "validation (wire/requests, service/validation, pydantic)",
        ("wire/requests.py", "service/validation.py", "pydantic"),
    ),
    ("cache plan and keys", ("gateway/cache/", "http/caching.py")),
    ("routing (router, plan, stats, failover)", ("gateway/routing/", "tenacity/")),
    ("limits and auth", ("gateway/auth/", "http/auth.py")),
    ("upstream client: gateway code (providers/)", ("gateway/providers/",)),
    ("request service (service/)", ("gateway/service/",)),
    ("handlers and middleware (api/, http/)", ("gateway/api/", "gateway/http/")),
    (
        "upstream client: aiohttp (client, connector)",
        ("aiohttp/client", "aiohttp/connector", "aiohttp/streams", "aiohttp/http_parser"),
    ),
    (
        "aiohttp server (parse, response, write)",
        ("aiohttp/web", "aiohttp/http_writer", "aiohttp/base_protocol", "aiohttp/helpers"),
    ),
    ("JSON (orjson, json)", ("orjson", "json/")),
    ("event loop (uvloop, in C) and the rest", ("",)),
)


# A helper thread whose innermost frame is its own loop is waiting for work (in ``queue.get``):
# py-spy's blocking mode does not always see that wait as idle, so it is left out here.
IDLE_THREAD_LOOPS = ("_worker (", "ThreadWriter.run (")
IDLE = "idle"


def component_of(stack: str) -> str:
    """The component of one collapsed stack (``frame;frame;...`` outermost first), or ``IDLE``."""
    frames = stack.split(";")
    if frames[0].startswith("Thread._bootstrap") and frames[-1].startswith(IDLE_THREAD_LOOPS):
        return IDLE
    for frame in reversed(frames):
        for name, fragments in COMPONENTS[:-1]:
            if any(fragment in frame for fragment in fragments):
                return name
    return COMPONENTS[-1][0]


def profile(proc: Logged, url: str, wrk: str, duration_s: int, rate: int, out: Path) -> dict[str, object]:
    """wrk against ``url`` while py-spy samples ``proc``: samples per component, CPU us per request."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out.with_suffix(".txt")
    cpu_before = proc.cpu_seconds()
    sampler = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(proc.pid),
            "--rate",
            str(rate),
            "--duration",
            str(duration_s),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--full-filenames",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    result = run_wrk(wrk, url, BODY % "bench", CONNECTIONS, duration_s, LOAD_CPU)
    cpu_s = proc.cpu_seconds() - cpu_before
    sampler.wait(timeout=duration_s + 60)
    elapsed = time.monotonic() - started
    samples: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit() and (name := component_of(stack)) != IDLE:
            samples[name] += int(count)
    requests = result["requests"]
    return {
        "samples": samples,
        "cpu_us": cpu_s / requests * 1e6 if requests else 0.0,
        "rps": result["rps"],
        "busy": cpu_s / elapsed,
    }


def render(args: argparse.Namespace, figures: dict[str, dict[str, object]]) -> str:
    floor, gateway = figures["floor"], figures["gateway"]

    def us(figure: dict[str, object], name: str) -> float:
        samples: Counter[str] = figure["samples"]  # type: ignore[assignment]
        total = sum(samples.values())
        return float(figure["cpu_us"]) * samples[name] / total if total else 0.0  # type: ignore[arg-type]

    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, Python "
        f"{platform.python_version()}: each proxy pinned to core 0 over the zero-latency fake provider, wrk "
        f"({CONNECTIONS} connections, non-streaming chat, not cacheable) on core 1 for {args.duration} s "
        f"while `py-spy record` (blocking mode, {args.rate} Hz) samples the proxy and /proc counts its CPU. "
        "Each sampled stack is filed under the first component, innermost frame outwards, whose file "
        "matches (`benchmarks/components.py: COMPONENTS`); us per request = the component's share of "
        "the samples x the proxy's CPU per request. Sampling shares are approximate (+- a few us).",
        "",
        f"CPU per request: gateway **{gateway['cpu_us']:.0f} us** (access log on, its default), floor "
        f"**{floor['cpu_us']:.0f} us**; ratio floor / gateway **{float(floor['cpu_us']) / float(gateway['cpu_us']):.3f}**"  # type: ignore[arg-type]
        " (the issue measured 326 / 143 us before: 0.44).",
        "",
        "| component | gateway us/req | floor us/req | gateway - floor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, _ in COMPONENTS:
        g, f = us(gateway, name), us(floor, name)
        lines.append(f"| {name} | {g:.1f} | {f:.1f} | {g - f:+.1f} |")
    lines += ["", f"Run: `python benchmarks/components.py --duration {args.duration} --rate {args.rate}`."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds sampled per proxy")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="keep py-spy's raw stacks in DIR")
    args = parser.parse_args()
    wrk = ensure_wrk()
    figures: dict[str, dict[str, object]] = {}
    with contextlib.ExitStack() as stack:
        scratch = (
            Path(args.keep)
            if args.keep
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="components-")))
        )
        scratch.mkdir(parents=True, exist_ok=True)
        fake = launch(
            gateway_command("fake-provider", "--port", "0"), scratch / "fake.log", cpus=str(LOAD_CPU)
        )
        stack.callback(fake.stop)
        floor = start_floor(stack, fake.url, scratch / "floor.log", PROXY_CPU)
        (scratch / "policy").mkdir(exist_ok=True)  # a folder of its own: proxy_overhead.start_gateway
        policy = scratch / "policy" / "policy.yaml"
        policy.write_text(policy_for(ROOT, policy_text(fake.url)))
        gateway = launch(
            gateway_command("serve", "--policy", str(policy), "--port", "0"),
            scratch / "gateway.log",
            cpus=PROXY_CPU,
            cwd=scratch,
        )
        stack.callback(gateway.stop)
        for name, proc in (("floor", floor), ("gateway", gateway)):
            url = proc.url + "/v1/chat/completions"
            run_wrk(wrk, url, BODY % "bench", CONNECTIONS, 3, LOAD_CPU)  # warm-up
            figures[name] = profile(proc, url, wrk, args.duration, args.rate, scratch / name)
            print(
                f"{name}: {figures[name]['cpu_us']:.0f} us/request, {figures[name]['rps']:.0f} req/s",
                flush=True,
            )
    text = render(args, figures)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
