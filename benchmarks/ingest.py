"""File ingestion at constant memory (issue 15): a gateway process ingests generated files through a
fake embedding provider process, and its resident memory is watched.

For each file (text files of two sizes, and a JSONL), a fresh gateway (SQLite memory, HNSW index,
``memory.ingest`` defaults: 2,000-character chunks, 256 texts an embeddings call, 2 calls in
flight, 1,000 rows a write) gets the file through ``POST /v1/memory/files`` (streamed from disk)
and the benchmark follows the job's events stream. Measured:

* MB/s and chunks/s from the 202 to ``done``; embeddings calls (the fake's count);
* peak resident memory above the idle gateway (VmRSS sampled every 50 ms, from before the upload
  to the end; the target is under 150 MB whatever the size);
* the progress events' cadence (largest gap between two events);
* time from the 202 until the file's first chunk is found by a search;
* search latency (p50/p99) of searches sent every 100 ms while the job runs;
* the memory index's bytes per memory, built among the pipeline's garbage and at rest, for this
  tree's ``gateway/memory/index.py`` and for the one at ``--index-baseline`` (the dict-based id
  maps before issue 15's item 7), in fresh processes (``benchmarks/index_memory.py``).

It writes its figures to benchmarks/RESULTS.md (its own section, replaced on each run).

Run: python benchmarks/ingest.py [--text-mb 100 500] [--jsonl-mb 50]   (about 4 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import index_memory  # noqa: E402
from benchmarks.processes import Logged, gateway_command, launch, rss_bytes, rss_parts  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from gateway.wire.sse import SSEDecoder  # noqa: E402

TITLE = "File ingestion (issue 15)"
FIRST_WORDS = "zebra quasar nebula"  # only in the first chunk: the first-chunk search finds it
# The file's first chunk is these words alone, so its vector is the query's (the fake embeds words).
FIRST_PARAGRAPH = (FIRST_WORDS + " ") * 100 + "\n\n"


def make_text(path: Path, size: int) -> None:
    """Prose-like paragraphs of about 600 characters until ``size`` bytes."""
    words = [
        "the",
        "gateway",
        "routes",
        "each",
        "request",
        "to",
        "a",
        "healthy",
        "deployment",
        "and",
        "records",
        "latency",
        "cost",
        "and",
        "errors",
    ]
    with path.open("w") as f:
        f.write(FIRST_PARAGRAPH)
        written, i = 0, 0
        while written < size:
            sentence = " ".join(words[(i + k) % len(words)] for k in range(12)).capitalize()
            paragraph = " ".join(f"{sentence} number {i}-{k}." for k in range(6)) + "\n\n"
            written += f.write(paragraph)
            i += 1


def make_jsonl(path: Path, size: int) -> None:
    """One record a line, about 900 characters of text and two metadata fields."""
    with path.open("w") as f:
        f.write(json.dumps({"text": FIRST_WORDS, "ticket": -1, "team": "x"}) + "\n")
        written, i = 0, 0
        while written < size:
            text = " ".join(
                f"call {i} transcript segment {k} about invoices and renewals." for k in range(16)
            )
            written += f.write(json.dumps({"text": text, "ticket": i, "team": f"team-{i % 7}"}) + "\n")
            i += 1


@dataclass
class Run:
    name: str
    size: int
    seconds: float = 0.0
    upload_s: float = 0.0
    chunks: int = 0
    memories: int = 0
    embedding_calls: int = 0
    idle_rss: int = 0
    peak_rss: int = 0
    at_rest_rss: int = 0  # a fresh gateway on the same store: the memories' own cost (the index)
    idle_anon: int = 0  # private memory (RssAnon): what the kernel cannot take back without swap
    peak_anon: int = 0
    at_rest_anon: int = 0
    peak_file: int = 0  # resident pages of mapped files: the index's sealed segments, libraries
    job_id: str = ""
    max_event_gap_s: float = 0.0
    events: int = 0
    first_searchable_s: float | None = None
    search_ms: list[float] = field(default_factory=list)
    vector_search_ms: list[float] = field(default_factory=list)  # no query embedding: the gateway's own part

    @property
    def growth_mb(self) -> float:
        return (self.peak_rss - self.idle_rss) / 1e6

    @property
    def anon_growth_mb(self) -> float:
        return (self.peak_anon - self.idle_anon) / 1e6

    @property
    def pipeline_mb(self) -> float:
        """Peak above a gateway at rest that holds the same memories: the ingestion's own cost."""
        return (self.peak_rss - self.at_rest_rss) / 1e6


@dataclass
class Limited:
    """The same ingestion with the gateway in a memory cgroup that lets it allocate ``limit_mb``
    more after it is idle: private memory and the page cache it causes (spool, store, index
    files) are charged; cache is reclaimed at the limit, private memory cannot be (no swap)."""

    name: str
    limit_mb: int
    segment_vectors: int
    outcome: str = ""
    memories: int = 0
    cgroup_peak: int = 0
    limit_hits: int = 0
    oom_kills: int = 0
    seconds: float = 0.0
    vector_search_ms: list[float] = field(default_factory=list)


LIMITED_TIMEOUT_S = 300.0  # per 500 MB: a run under a limit not finished by then is reported so


class MemoryCgroup:
    """A child of this process's memory cgroup (v1), limiting what processes moved into it
    allocate from then on (charges made before the move stay with the parent)."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        base = None
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        if base is None or not (base / "memory.limit_in_bytes").exists():
            raise OSError("no cgroup v1 memory controller here")
        self.dir = base / name
        self.dir.mkdir()
        (self.dir / "memory.limit_in_bytes").write_text(str(limit_bytes))

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def figures(self) -> tuple[int, int, int]:
        """(peak usage, times the limit was reached, processes killed for memory)."""
        oom = (self.dir / "memory.oom_control").read_text().split()
        kills = int(oom[oom.index("oom_kill") + 1]) if "oom_kill" in oom else 0
        peak = int((self.dir / "memory.max_usage_in_bytes").read_text())
        return peak, int((self.dir / "memory.failcnt").read_text()), kills

    def remove(self) -> None:
        self.dir.rmdir()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def ingest(url: str, path: Path, run: Run, stop: threading.Event) -> None:
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=None)) as session:
        started = time.monotonic()
        with path.open("rb") as f:
            form = aiohttp.FormData()
            form.add_field("namespace", "bench")
            form.add_field("file", f, filename=path.name)
            async with session.post("/v1/memory/files", data=form) as resp:
                job = await resp.json()
                assert resp.status == 202, job
        accepted = time.monotonic()
        run.upload_s, run.job_id = accepted - started, job["id"]
        searching = asyncio.create_task(search_while_running(session, run, accepted))
        try:
            last, decoder = time.monotonic(), SSEDecoder()
            async with session.get(f"/v1/memory/jobs/{job['id']}/events") as resp:
                async for block in resp.content.iter_any():
                    for data in decoder.feed(block):
                        now = time.monotonic()
                        run.max_event_gap_s = max(run.max_event_gap_s, now - last)
                        last, run.events = now, run.events + 1
                        event = json.loads(data)
                        if "object" in event:
                            job = event
            run.seconds = time.monotonic() - accepted
            stop.set()
            await searching
        finally:
            searching.cancel()  # given up (a run under a limit): stop searching too
        assert job["status"] == "done", job
        run.chunks, run.memories = job["chunks_done"], job["memories_created"]
        run.embedding_calls = job["embedding_calls"]  # the job's own: searches embed their query too


async def search_while_running(session: aiohttp.ClientSession, run: Run, accepted: float) -> None:
    """A search by text every 100 ms (its query is embedded by the fake provider, which is busy
    with the job's 256-text calls), each followed by the same search by vector (no embedding
    call: what the gateway itself takes, index and store)."""
    async with session.post("/v1/embeddings", json={"model": "embed", "input": FIRST_WORDS}) as resp:
        vector = (await resp.json())["data"][0]["embedding"]
    by_text = {"query": FIRST_WORDS, "namespaces": ["bench"], "top_k": 3}
    by_vector = {"vector": vector, "namespaces": ["bench"], "top_k": 3}
    while run.seconds == 0.0:
        for body, into in ((by_text, run.search_ms), (by_vector, run.vector_search_ms)):
            started = time.monotonic()
            async with session.post("/v1/memory/search", json=body) as resp:
                hits = (await resp.json())["data"]
                assert resp.status == 200, hits
            into.append((time.monotonic() - started) * 1000)
            if run.first_searchable_s is None and any(FIRST_WORDS in h["memory"]["content"] for h in hits):
                run.first_searchable_s = time.monotonic() - accepted
        await asyncio.sleep(0.1)


def measure_limited(
    name: str, path: Path, fake_url: str, work: Path, limit_mb: int, segment_vectors: int, timeout_s: float
) -> Limited:
    """The ingestion of ``path`` by a gateway held to ``limit_mb`` above idle, its index sealing
    segments of ``segment_vectors`` (``Limited``); given up after ``timeout_s``."""
    cwd = work / f"gw-limited-{name}-{limit_mb}-{segment_vectors}"
    policy = write_policy(cwd, fake_url, f"index_segment_vectors: {segment_vectors}")
    gw = launch(
        gateway_command("serve", "--policy", str(policy), "--port", "0"),
        cwd / "gateway.log",
        cwd=cwd,
        env={"SOPHIA_LOG_FORMAT": "text", "SOPHIA_ACCESS_LOG": "off"},
    )
    limited = Limited(name, limit_mb, segment_vectors)
    cgroup = None
    try:
        time.sleep(1.0)
        cgroup = MemoryCgroup(f"sophia-bench-{os.getpid()}-{limit_mb}-{segment_vectors}", limit_mb << 20)
        cgroup.add(gw.pid)
        run = Run(name, path.stat().st_size)
        try:
            asyncio.run(asyncio.wait_for(ingest(gw.url, path, run, threading.Event()), timeout_s))
            limited.outcome = "completed"
        except TimeoutError:
            with urllib.request.urlopen(f"{gw.url}/v1/memory/jobs/{run.job_id}", timeout=60) as resp:
                job = json.loads(resp.read())
            run.memories, run.seconds = job["memories_created"], timeout_s
            read = job["bytes_done"] / job["bytes_total"]
            limited.outcome = f"not done after {timeout_s:.0f} s ({read:.0%} read)"
        except Exception as exc:  # the gateway killed, or the job failed: the row says which
            with contextlib.suppress(subprocess.TimeoutExpired):
                gw.popen.wait(timeout=5)  # a killed gateway's connections close before it is reaped
            killed = gw.popen.poll() is not None
            limited.outcome = "gateway killed" if killed else f"failed: {exc!r}"[:120]
        limited.memories, limited.seconds, limited.vector_search_ms = (
            run.memories,
            run.seconds,
            run.vector_search_ms,
        )
        limited.cgroup_peak, limited.limit_hits, limited.oom_kills = cgroup.figures()
    finally:
        gw.stop()
        if cgroup is not None:
            cgroup.remove()
    return limited


def write_policy(cwd: Path, fake_url: str, memory: str = "") -> Path:
    (cwd / "policy").mkdir(parents=True)
    # In a folder of its own: the gateway watches the policy's folder for changes, and the memory
    # files and the spool (under data/) change all the time.
    policy = cwd / "policy" / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            providers:
              fake: {{kind: openai, base_url: "{fake_url}/v1"}}
            models:
              embed: {{deployments: [{{provider: fake, model: upstream-embed}}]}}
            cache: {{enabled: false}}
            memory:
              embedding_model: embed
              search_cache_ttl_s: 0
              ingest: {{max_file_bytes: {2 << 30}}}
            """
        )
        + (f"  {memory}\n" if memory else "")
    )
    return policy


def measure(name: str, path: Path, fake_url: str, work: Path) -> Run:
    cwd = work / f"gw-{name}"
    policy = write_policy(cwd, fake_url)

    def serve(log: str) -> Logged:  # a log of its own: launch() looks for the "listening" line in it
        return launch(
            gateway_command("serve", "--policy", str(policy), "--port", "0"),
            cwd / log,
            cwd=cwd,
            env={"SOPHIA_LOG_FORMAT": "text", "SOPHIA_ACCESS_LOG": "off"},
        )

    gw = serve("gateway.log")
    run = Run(name, path.stat().st_size)
    try:
        time.sleep(1.0)
        run.idle_rss = rss_bytes(gw.pid)
        run.idle_anon = rss_parts(gw.pid)[0]
        stop = threading.Event()
        peak = [run.idle_rss, run.idle_anon, 0]

        def sample() -> None:
            while not stop.is_set():
                anon, file = rss_parts(gw.pid)
                peak[:] = max(peak[0], rss_bytes(gw.pid)), max(peak[1], anon), max(peak[2], file)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        asyncio.run(ingest(gw.url, path, run, stop))
        sampler.join()
        run.peak_rss, run.peak_anon, run.peak_file = peak
    finally:
        gw.stop()
    gw = serve("at-rest.log")  # loads the index saved at the stop: what the memories cost at rest
    try:
        time.sleep(1.0)
        run.at_rest_rss = rss_bytes(gw.pid)
        run.at_rest_anon = rss_parts(gw.pid)[0]
    finally:
        gw.stop()
    return run


def measure_index(args: argparse.Namespace, work: Path) -> list[tuple[str, dict[str, float]]]:
    """Bytes per memory of this tree's index and of the baseline's, same count and dimension."""
    modules = [
        (f"`{args.index_baseline}` (dicts)", index_memory.baseline_module(args.index_baseline, work)),
        ("this tree", ROOT / "gateway" / "memory" / "index.py"),
    ]
    figures = []
    for name, module in modules:
        figures.append((name, index_memory.measure(module, args.index_count, args.dim, "f32")))
        print(name, figures[-1], flush=True)
    return figures


def memory_verdict(runs: list[Run], limits: list[Limited]) -> str:
    """The memory target (150 MB above idle whatever the size) against this run's rows."""
    private = ", ".join(f"{r.name} {r.anon_growth_mb:.0f} MB" for r in runs)
    rss = ", ".join(f"{r.name} {r.growth_mb:.0f} MB" for r in runs)
    text = f"Verdict on the 150 MB target. Peak private memory above idle: {private}; peak RSS: {rss}. "
    over = [r for r in runs if r.anon_growth_mb >= 150]
    if over:
        text += "Private memory is over the target for " + ", ".join(r.name for r in over) + ". "
    else:
        text += "Private memory is under the target in every row. "
    for r in runs:
        if r.growth_mb >= 150 > r.anon_growth_mb:
            text += (
                f"{r.name}'s RSS passes it by the sealed segments' mapped pages ({r.peak_file / 1e6:.0f} MB "
                "of mapped files at peak), page cache the kernel takes back at a limit. "
            )
    for x in limits:
        text += (
            f"Held to {x.limit_mb} MB above idle with segments of {x.segment_vectors:,}, the "
            f"{x.name.replace('-', ' ')} ingestion {x.outcome} ({x.memories:,} memories, {x.oom_kills} "
            "process killed). "
        )
    return text.rstrip()


def report(runs: list[Run], args: argparse.Namespace, index: list[tuple[str, dict[str, float]]]) -> str:
    lines = [
        f"`python benchmarks/ingest.py --text-mb {' '.join(map(str, args.text_mb))} --jsonl-mb {args.jsonl_mb}` "
        f"on {platform.machine()}, {os.cpu_count()} cores shared with other work; gateway, fake provider "
        f"(`--embedding-kind words --embedding-dim {args.dim}`) and this script on the same host; SQLite "
        "memory, HNSW index; `memory.ingest` defaults (2,000-character chunks, 200 overlap, 256 texts a "
        "call, 2 calls in flight, writes of up to 1,000 rows, queues of 4 batches).",
        "",
        "| file | size | upload (s) | ingest (s) | MB/s | chunks | chunks/s | embeddings calls | idle RSS (MB) "
        "| peak RSS above idle (MB) | of which private: peak RssAnon above idle (MB) | peak mapped-file "
        "pages (MB) | at rest with these memories: RSS / RssAnon above idle (MB) | events "
        "| largest event gap (s) | first chunk searchable (s) | search by text p50 / p99 during (ms) "
        "| search by vector p50 / p99 during (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        first = f"{r.first_searchable_s:.2f}" if r.first_searchable_s is not None else "n/a"
        lines.append(
            f"| {r.name} | {r.size / 1e6:.0f} MB | {r.upload_s:.1f} | {r.seconds:.1f} | {r.size / 1e6 / r.seconds:.1f} "
            f"| {r.chunks} | {r.chunks / r.seconds:.0f} | {r.embedding_calls} | {r.idle_rss / 1e6:.0f} "
            f"| {r.growth_mb:.0f} | {r.anon_growth_mb:.0f} | {r.peak_file / 1e6:.0f} "
            f"| {(r.at_rest_rss - r.idle_rss) / 1e6:.0f} / {(r.at_rest_anon - r.idle_anon) / 1e6:.0f} | {r.events} "
            f"| {r.max_event_gap_s:.2f} | {first} "
            f"| {percentile(r.search_ms, 50):.1f} / {percentile(r.search_ms, 99):.1f} "
            f"| {percentile(r.vector_search_ms, 50):.1f} / {percentile(r.vector_search_ms, 99):.1f} |"
        )
    if index:
        lines += [
            "",
            f"The index alone (`benchmarks/index_memory.py`, same run): {index[0][1]['count']:,} vectors of "
            f"{args.dim} dimensions (f32) added to one namespace in batches of 256 among garbage like the "
            "pipeline's (chunk texts, metadata, embeddings as tuples, 10 batches alive), in a fresh process; "
            "then loaded by another fresh process ('at rest'). RSS growth per memory:",
            "",
            "| index.py | built among pipeline garbage (B/memory) | at rest (B/memory) | build (s) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {f['built_per_memory']:.0f} | {f['rest_per_memory']:.0f} | {f['build_s']:.0f} |"
            for name, f in index
        ]
    lines += [
        "",
        f"Load average (1 min) {args.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: "
        "the machine is shared, and rates follow its load (the same 50 MB text file ran at 0.7 MB/s "
        "under a load average of 17 and at 5.2 MB/s under 0.8); the memory figures do not.",
        "",
        "Resident memory. The pipeline's own buffers are bounded whatever the file's size: the file is "
        "spooled to disk as it arrives and read back 1 MiB at a time, and the bounded queues hold at "
        "most (2 x 4 + 2) batches of 256 chunks; in process, with the index replaced by one that "
        "keeps nothing, 100 MB of text costs +19 MB at peak. The memories' index is bounded too: a "
        "namespace's growing HNSW segment is sealed to a file once it holds "
        "`memory.index_segment_vectors` vectors (131,072: ~60 MB at 64 dimensions, f32; half of that "
        "for a namespace's later segments) and "
        "memory-mapped read-only with its id rows (a file beside it), so the index holds in private "
        "memory one growing segment per namespace and its id map (~85 B a memory), plus ~55 B per "
        "sealed memory (usearch's lookup tables for a mapped graph, ~7 MB per segment of 131,072, and "
        "one byte of ours); the sealed files' pages are page cache, resident while searches "
        "touch them (they count in RSS: the mapped-file column) and dropped by the kernel when memory "
        "is short. Private memory (RssAnon) is what a memory limit cannot take back, so the rows give "
        "both. Before the segments the index kept every vector in private memory: the 500 MB file's "
        "306,444 memories cost 187 MB at rest and its ingestion peaked at +241 MB above idle, all of "
        "it private; with segments but the id rows of sealed ones still in memory, the 1,000 MB file "
        "peaked at +190 MB private and the 500 MB one at +139-147; with the id rows in files but "
        "every segment sealed at 131,072, at +155 and +133.",
        "",
        "Progress events come every 0.5 s (`progress_interval_s`); the largest gap includes the final "
        "event. Search latency during the ingestion is the whole `POST /v1/memory/search`: by text it "
        "includes the query's embedding by the fake provider, which is busy with the job's 256-text "
        "calls; by vector it is the gateway's own part (index and store). Adds hold a namespace's graph lock 16 vectors at a time "
        "(`ADD_CHUNK`); a save every 30 s holds its own lock, not the search lock, but usearch holds "
        "the GIL while it writes, stalling every thread, the event loop included; a save writes only "
        "the growing graphs (at most 131,072 vectors each: ~40-100 ms at 100,000-300,000 x 64 floats "
        "in 'Memory index saves and the GIL' below), and sealing one writes it once; under a memory "
        "limit, searches also wait for the sealed segments' pages to be read back; and on two shared "
        "cores the pipeline's threads compete with the loop.",
    ]
    return "\n".join(lines)


def limited_rows(limits: list[Limited]) -> list[str]:
    rows = [
        "| file | limit above idle (MB) | index_segment_vectors | outcome | memories | cgroup peak (MB) "
        "| times at the limit | processes killed | ingest (s) | search by vector p50 / p99 during (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in limits:
        rows.append(
            f"| {x.name.replace('-', ' ')} | {x.limit_mb} | {x.segment_vectors:,} | {x.outcome} | {x.memories:,} "
            f"| {x.cgroup_peak / 2**20:.0f} "
            f"| {x.limit_hits:,} | {x.oom_kills} | {x.seconds:.1f} "
            f"| {percentile(x.vector_search_ms, 50):.1f} / {percentile(x.vector_search_ms, 99):.1f} |"
        )
    return rows


def limited_report(runs: list[Run], limits: list[Limited], args: argparse.Namespace) -> str:
    head = [
        "",
        "",
        f"Under a memory limit (`--limit-text-mb {' '.join(map(str, args.limit_text_mb))} --limit-mb "
        f"{' '.join(map(str, args.limit_mb))} --limit-segment-vectors "
        f"{' '.join(map(str, args.limit_segment_vectors))}`, given up after {LIMITED_TIMEOUT_S:.0f} s per 500 MB): "
        "the same ingestion with the idle gateway moved into "
        "a child memory cgroup (v1) whose limit counts what it allocates from then on: its private "
        "memory and the page cache it causes (the spool, the store's and the index's files). The "
        "kernel takes cache back at the limit; private memory it cannot (no swap), and a process "
        "whose private memory passes the limit is killed, as a Kubernetes container over its limit is.",
        "",
    ]
    rows = [f"Not run: {args.limit_error}."] if args.limit_error else limited_rows(limits)
    return "\n".join([*head, *rows, "", memory_verdict(runs, limits)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-mb", type=int, nargs="+", default=[100, 500], help="text file sizes (MB)")
    parser.add_argument("--jsonl-mb", type=int, default=50, help="JSONL file size (MB; 0: none)")
    parser.add_argument("--dim", type=int, default=64, help="the fake's embedding dimension")
    parser.add_argument(
        "--index-count", type=int, default=100_000, help="vectors of the index measurement (0: none)"
    )
    parser.add_argument(
        "--index-baseline", default="82af39f", help="git revision of the index to compare with"
    )
    parser.add_argument(
        "--limit-text-mb",
        type=int,
        nargs="+",
        default=[500],
        help="text files for the runs under a memory limit (0: none)",
    )
    parser.add_argument(
        "--limit-mb", type=int, nargs="+", default=[150], help="memory limits above idle for those runs (MB)"
    )
    parser.add_argument(
        "--limit-segment-vectors",
        type=int,
        nargs="+",
        default=[131_072, 65_536],
        help="memory.index_segment_vectors for those runs",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    args.load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    fake = launch(
        gateway_command(
            "fake-provider", "--port", "0", "--embedding-kind", "words", "--embedding-dim", str(args.dim)
        ),
        work / "fake.log",
    )
    runs, limits = [], []
    args.limit_error = None
    try:
        files = [(f"text {mb} MB", work / f"text-{mb}.txt", mb, make_text) for mb in args.text_mb]
        if args.jsonl_mb:
            files.append((f"jsonl {args.jsonl_mb} MB", work / "records.jsonl", args.jsonl_mb, make_jsonl))
        for name, path, mb, make in files:
            make(path, mb * 1_000_000)
            run = measure(name.replace(" ", "-"), path, fake.url, work)
            run.name = name
            runs.append(run)
            path.unlink()
            print(report([run], args, []).splitlines()[4], flush=True)
        for mb in [mb for mb in args.limit_text_mb if mb > 0]:
            path = work / "text-limited.txt"
            make_text(path, mb * 1_000_000)
            timeout_s = LIMITED_TIMEOUT_S * max(1.0, mb / 500)
            for limit, segment in ((x, y) for x in args.limit_mb for y in args.limit_segment_vectors):
                try:
                    name = f"text-{mb}-MB"
                    limits.append(measure_limited(name, path, fake.url, work, limit, segment, timeout_s))
                except OSError as exc:  # no memory cgroup to create here: the report says so
                    args.limit_error = str(exc)
                    break
                print(limited_rows(limits[-1:])[-1], flush=True)
            path.unlink()
            if args.limit_error:
                break
    finally:
        fake.stop()
    try:
        index = measure_index(args, work) if args.index_count else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(runs, args, index) + limited_report(runs, limits, args)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
