"""Benchmark: the gateway's peak resident memory while it holds uploads, as a multiple of them.

An upload (image edit or variation, transcription or translation) is held whole so that failover
can send it again; what matters to an operator is how many times its bytes the process holds at
its peak (README: the upload room's memory, the Kubernetes limit). For each gateway (a baseline
revision, extracted with ``git archive``, and the working tree) and each case (N concurrent image
edits of ``--mib`` MiB each or transcriptions of ``--audio-mib``: the fake, as OpenAI, takes
audio forms up to 25 MB; sent straight to a deployment that answers or with
one failover each: a first deployment that answers 500, then one that answers), this script:

  1. starts a fresh ``serve`` (so its high-water mark is the case's own) over the fake OpenAI
     (``fake-provider``, one process answering, one with ``--error-rate 1 --error-status 500``),
  2. reads its resident memory at rest (``VmRSS`` in /proc/PID/status),
  3. sends the N uploads at once (aiohttp, raw multipart) and checks every one is a 200,
  4. reads the process's peak resident memory (``VmHWM``) and reports the peak over rest divided
     by the bytes in flight (N x the file).

Run: python benchmarks/upload_memory.py --baseline bb2b58a [--concurrency 5] [--mib 40] [--audio-mib 24]
Writes its section of benchmarks/RESULTS.md. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from benchmarks.proxy_overhead import Revision, extract, tree_env, uncommitted_paths  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import ManagedProcess, start  # noqa: E402

MIB = 1024 * 1024
TITLE = "Upload memory: peak resident memory per byte of uploads in flight"
# (endpoint, model group's upstream model, file field, file name, content type, file's first bytes)
KINDS = {
    "image edit": ("/v1/images/edits", "gpt-image-1", "image", "a.png", "image/png", b"\x89PNG\r\n\x1a\n"),
    "transcription": ("/v1/audio/transcriptions", "whisper-1", "file", "a.mp3", "audio/mpeg", b"ID3"),
}
ROUTES = {"direct": "direct", "one failover": "failover"}


def policy_text(ok_url: str, bad_url: str, concurrency: int, mib: int) -> str:
    """Open auth; per kind a group served at once (``direct-*``) and one whose first deployment
    answers 500 (``failover-*``, ordered); forms and the room large enough for the burst; breakers
    that never open during it (every failover must happen)."""
    form = (mib + 8) * MIB
    groups = ""
    for kind, (_, model, *_rest) in KINDS.items():
        name = kind.split()[-1]
        groups += f"  direct-{name}: {{deployments: [{{provider: ok, model: {model}}}]}}\n"
        groups += (
            f"  failover-{name}: {{strategy: ordered, deployments: "
            f"[{{provider: bad, model: {model}}}, {{provider: ok, model: {model}}}]}}\n"
        )
    return (
        "version: 1\nauth: {mode: open}\nmemory: {enabled: false}\n"
        f"server: {{max_audio_bytes: {form}, max_image_bytes: {form}, "
        f"max_audio_in_flight_bytes: {form * concurrency * 4}}}\n"
        "breaker: {consecutive_failures: 100000, min_requests: 100000}\n"
        f"providers:\n  ok: {{kind: openai, base_url: {ok_url}/v1}}\n"
        f"  bad: {{kind: openai, base_url: {bad_url}/v1}}\nmodels:\n{groups}"
    )


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS: resident now; VmHWM: the peak since start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/{pid}/status has no {field}")


async def burst(url: str, kind: str, route: str, concurrency: int, data: bytes) -> list[int]:
    """``concurrency`` uploads of ``data`` at once; their statuses."""
    path, _, field, filename, content_type, _ = KINDS[kind]
    group = f"{ROUTES[route]}-{kind.split()[-1]}"

    async def one(session: aiohttp.ClientSession) -> int:
        form = aiohttp.FormData()
        form.add_field("model", group)
        if kind == "image edit":
            form.add_field("prompt", "a cat in a hat")
        form.add_field(field, data, filename=filename, content_type=content_type)
        async with session.post(url + path, data=form, headers={"Authorization": "Bearer bench"}) as resp:
            await resp.read()
            return resp.status

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(concurrency))))


def measure(
    tree: Path, policy: Path, kind: str, route: str, concurrency: int, data: bytes
) -> tuple[int, int]:
    """(resident KiB at rest, peak KiB) of a fresh gateway from ``tree`` through one burst."""
    gateway: ManagedProcess = start(
        ["serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", "0"], env=tree_env(tree)
    )
    try:
        pid = gateway.popen.pid
        rest = status_kib(pid, "VmRSS")
        statuses = asyncio.run(burst(gateway.url, kind, route, concurrency, data))
        if any(status != 200 for status in statuses):
            raise SystemExit(f"{kind} [{route}] from {tree}: statuses {statuses}\n{gateway.output[-3000:]}")
        return rest, status_kib(pid, "VmHWM")
    finally:
        gateway.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="revision to compare against")
    parser.add_argument("--current", help="revision to measure (default: the working tree)")
    parser.add_argument("--concurrency", type=int, default=5, help="uploads at once (default: %(default)s)")
    parser.add_argument("--mib", type=int, default=40, help="MiB of each image (default: %(default)s)")
    parser.add_argument(
        "--audio-mib", type=int, default=24, help="MiB of each audio file, under 25 MB (default: %(default)s)"
    )
    args = parser.parse_args()
    baseline = Revision.of(args.baseline)
    head = Revision.of(args.current or "HEAD")
    dirty = [] if args.current else [p for p in uncommitted_paths() if not p.startswith("benchmarks/")]
    scratch = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    trees = {"before": scratch / "baseline", "after": ROOT}
    trees["before"].mkdir()
    extract(args.baseline, trees["before"])
    if args.current:
        trees["after"] = scratch / "current"
        trees["after"].mkdir()
        extract(args.current, trees["after"])
    # The fakes run from this checkout whatever the revisions (one that takes the large forms).
    ok = start(["fake-provider", "--port", "0"], env=tree_env(ROOT))
    bad = start(
        ["fake-provider", "--port", "0", "--error-rate", "1", "--error-status", "500"], env=tree_env(ROOT)
    )
    sizes = {"image edit": args.mib, "transcription": args.audio_mib}
    results: dict[tuple[str, str, str], tuple[int, int]] = {}
    try:
        policy = scratch / "upload.yaml"
        policy.write_text(policy_text(ok.url, bad.url, args.concurrency, args.mib))
        for kind, (*_, magic) in KINDS.items():
            data = magic + os.urandom(sizes[kind] * MIB - len(magic))
            in_flight = args.concurrency * len(data)
            for route in ROUTES:
                for side, tree in trees.items():
                    rest, peak = measure(tree, policy, kind, route, args.concurrency, data)
                    results[(kind, route, side)] = (rest, peak)
                    print(
                        f"{kind} [{route}] {side}: rest {rest / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
                        f"(peak - rest) / in flight {(peak - rest) * 1024 / in_flight:.2f}",
                        flush=True,
                    )
    finally:
        ok.stop()
        bad.stop()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, Python "
        f"{platform.python_version()}: a fresh `serve` (one process) per row, over the fake OpenAI on loopback; "
        f"{args.concurrency} image edits of {args.mib} MiB or transcriptions of {args.audio_mib} MiB at once, "
        "sent with aiohttp as multipart; `one failover`: each upload's first deployment answers 500, the second 200 (two "
        "attempts each). Peak = the process's `VmHWM`; rest = its `VmRSS` before the burst; the multiple is "
        "(peak - rest) / bytes in flight (the form as read is 1.0).",
        "",
        f"- **Compared**: before = {baseline.describe()}; after = "
        + (f"revision {head.describe()}" if args.current else f"the working tree at {head.describe()}")
        + (f", with uncommitted changes in {len(dirty)} path(s)" if dirty else "")
        + ".",
        "",
        "| uploads | route | rest MiB | peak before MiB | peak after MiB | multiple before | multiple after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in KINDS:
        in_flight = args.concurrency * sizes[kind] * MIB
        for route in ROUTES:
            rest_b, peak_b = results[(kind, route, "before")]
            rest_a, peak_a = results[(kind, route, "after")]
            lines.append(
                f"| {args.concurrency} x {sizes[kind]} MiB {kind} | {route} | {rest_a / 1024:.0f} | "
                f"{peak_b / 1024:.0f} | {peak_a / 1024:.0f} | {(peak_b - rest_b) * 1024 / in_flight:.2f} | "
                f"**{(peak_a - rest_a) * 1024 / in_flight:.2f}** |"
            )
    section = "\n".join(lines)
    write_section(TITLE, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
