"""Benchmark: the gateway against the bare aiohttp floor, over a zero-latency fake upstream.

One run measures, in the same run and interleaved round by round (each measurement taken for every
target back to back, the order rotating between rounds, so machine drift hits all alike):
  * the **floor** (``benchmarks/floor_proxy.py``: a bare aiohttp pass-through proxy, one
    ClientSession, uvloop as the gateway), a second floor process (``floor (A/A)``: the noise),
    the **gateway** as users run it (access log at its default, on) and ``gateway (log off)``
    (``SOPHIA_ACCESS_LOG=0``); with ``--baseline REV`` also the gateway of a git revision; and the
    fake provider itself (``direct``, reference);
  * non-streaming chat, not cacheable: requests/s at 16 connections and p50 / p99 at 1 connection
    (wrk), and the CPU each proxy process spent per request it forwarded (/proc; CPU time is not
    moved by what the machine gives to others);
  * streams (``stream_options.include_usage``): streams/s and CPU per stream at 16 connections;
    time to first byte, to the first ``data:`` event and to the end at 1 connection
    (``benchmarks/stream_probe.py``: a plain socket, one request at a time); and the per-chunk relay
    cost: (CPU per long stream - CPU per short stream) / (events of the long - of the short), the
    long one a prompt the fake echoes as many more events;
  * cache hits: an in-process (embedded) hit's requests/s on the gateway's one core, and a Redis
    hit's p50 / p99 at 1 connection (a gateway with ``REDIS_URL`` on a private ``redis-server``);
  * score routing over three deployments (issue 3);
  * **workers** (unless ``--no-workers``): ``serve --workers 2`` against ``--workers 1``, next to the
    floor as 2 processes on one port (SO_REUSEPORT) against 1, in the same run; skipped with a note
    when ``serve --help`` has no ``--workers``.
Proxies pinned to core 0; fake provider, Redis, wrk and the probe on core 1 (workers rows: see
there). Every gateway's output (the access log included) goes through a pipe to a ``cat`` on core 1
that appends it to a file, as a container runtime reads a container's stderr
(``access_log_cost.py`` measures a file as well). It writes its figures to benchmarks/RESULTS.md (its own section, replaced on each run).

Run: python benchmarks/proxy_overhead.py [--duration 10] [--rounds 3] [--baseline REV] [--current REV]
     [--no-workers]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import Logged, gateway_command, launch, process_tree  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import ManagedProcess, free_port, start  # noqa: E402

SECTION = "Proxy overhead (issue 2)"
PROMPT = '"messages": [{"role": "user", "content": "Say something short about gateways."}]'
BODY = '{"model": "%s", ' + PROMPT + "}"
STREAM_BODY = '{"model": "%s", ' + PROMPT + ', "stream": true, "stream_options": {"include_usage": true}}'
LONG_WORDS = 120  # the long stream's prompt: the fake echoes it one word per event
LONG_STREAM_BODY = (
    '{"model": "%s", "messages": [{"role": "user", "content": "'
    + " ".join(["gateway"] * LONG_WORDS)
    + '"}], "stream": true, "stream_options": {"include_usage": true}}'
)
HIT_BODY = '{"model": "%s", "temperature": 0, ' + PROMPT + "}"  # cacheable (cache.cacheable: deterministic)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
wrk.body = [[%s]]
"""
# Appended to WRK_SCRIPT for the streaming check: wrk hands response() the de-chunked body of each
# response it counts as complete; done() reads the counters back from the (single) thread.
WRK_STREAM_CHECK = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) checked, complete, chunked, usage, bad = 0, 0, 0, 0, "" end
function response(status, headers, body)
  checked = checked + 1
  local is_chunked = false
  for name, value in pairs(headers) do
    if string.lower(name) == "transfer-encoding" and string.lower(value) == "chunked" then is_chunked = true end
  end
  if is_chunked then chunked = chunked + 1 end
  local has_usage = string.find(body, '"usage"%s*:%s*{') ~= nil
  if has_usage then usage = usage + 1 end
  if status == 200 and is_chunked and has_usage and string.find(body, "data: %[DONE%]%s*$") then
    complete = complete + 1
  elseif bad == "" then
    bad = string.format("status %d: %s", status, string.sub(body, -200))
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("CHECK checked=%d complete=%d chunked=%d usage=%d\n",
      t:get("checked"), t:get("complete"), t:get("chunked"), t:get("usage")))
    local sample = t:get("bad")
    if sample ~= "" then io.write("CHECK-BAD " .. string.gsub(sample, "\n", "\\n") .. "\n") end
  end
end
"""
CHAT_PATH = "/v1/chat/completions"
PROXY_CPU, LOAD_CPU = 0, 1
BASELINE, CURRENT = "baseline", "current"

# Targets: the processes measured.
DIRECT, FLOOR, FLOOR_AA, GATEWAY, LOG_OFF, REDIS_GATEWAY = (
    "direct (fake provider)",
    "floor",
    "floor (A/A)",
    "gateway",
    "gateway (log off)",
    "gateway (Redis cache)",
)
BASELINE_GATEWAY = "gateway (baseline)"
# The floor of a cache hit: bare aiohttp reading the body and answering fixed bytes (no upstream).
ANSWER_FLOOR = "floor (fixed answer)"
# The floor of a Redis cache hit: the same, the answer fetched by one GET from the same Redis.
REDIS_FLOOR = "floor (Redis answer)"

# The targets, each a ratio to or a difference from the floor measured in the same run.
TARGET_RPS_RATIO = 0.80
TARGET_P50_ADDED_MS = 0.1
TARGET_P99_ADDED_MS = 0.3
TARGET_TTFB_ADDED_MS = 0.1
TARGET_LOG_COST = 0.05
TARGET_REDIS_HIT_P99_MS = 0.5
TARGET_MEMORY_HIT_RPS = 20_000
TARGET_WORKERS_RATIO = 1.7


@dataclass(frozen=True)
class Kind:
    """One measurement, taken for each of ``targets`` in every round."""

    name: str
    body: str
    connections: int
    targets: tuple[str, ...]
    probe: bool = False  # the stream probe (time to first byte) instead of wrk
    per_forwarded: bool = True  # CPU per request forwarded upstream (False: per request served)


CHAT16, CHAT1, STREAM16, LONG16, STREAM1 = "chat c16", "chat c1", "stream c16", "long stream c16", "stream c1"
SCORE16, SCORE1, HIT16, HIT1, REDIS1, REDIS16 = (
    "score c16",
    "score c1",
    "in-process hit c16",
    "in-process hit c1",
    "Redis hit c1",
    "Redis hit c16",
)
# The 1-connection rows again with every process on the proxy's core (``measure_one_core``).
ONE_CORE = " (one core)"


def kinds_for(compared: tuple[str, ...]) -> list[Kind]:
    """``compared``: the proxies measured on the common path (floor, gateways)."""
    with_direct = (DIRECT, *compared)
    no_aa = tuple(t for t in compared if t != FLOOR_AA)
    on_paths = tuple(t for t in no_aa if t != LOG_OFF)  # the long stream, for the per-chunk cost
    return [
        Kind(CHAT16, BODY % "bench", 16, with_direct),
        Kind(CHAT1, BODY % "bench", 1, with_direct),
        Kind(STREAM16, STREAM_BODY % "bench", 16, (DIRECT, *no_aa)),
        Kind(LONG16, LONG_STREAM_BODY % "bench", 16, on_paths),
        Kind(STREAM1, STREAM_BODY % "bench", 1, (DIRECT, *on_paths), probe=True),
        Kind(SCORE16, BODY % "bench-score", 16, (GATEWAY,)),
        Kind(SCORE1, BODY % "bench-score", 1, (GATEWAY,)),
        Kind(HIT16, HIT_BODY % "bench", 16, (GATEWAY, ANSWER_FLOOR), per_forwarded=False),
        Kind(HIT1, HIT_BODY % "bench", 1, (GATEWAY, ANSWER_FLOOR), per_forwarded=False),
        Kind(REDIS1, HIT_BODY % "bench", 1, (REDIS_GATEWAY, REDIS_FLOOR), per_forwarded=False),
        Kind(REDIS16, HIT_BODY % "bench", 16, (REDIS_GATEWAY, REDIS_FLOOR), per_forwarded=False),
    ]


def one_core_kinds(compared: tuple[str, ...]) -> list[Kind]:
    """The latency rows at 1 connection, measured again with the load generator, the fake provider,
    Redis and the log collectors on the proxies' core (``Run.measure_one_core``)."""
    chat = tuple(t for t in compared if t in (FLOOR, GATEWAY, LOG_OFF, BASELINE_GATEWAY))
    stream = tuple(t for t in compared if t in (FLOOR, GATEWAY, BASELINE_GATEWAY))
    return [
        Kind(CHAT1 + ONE_CORE, BODY % "bench", 1, chat),
        Kind(STREAM1 + ONE_CORE, STREAM_BODY % "bench", 1, stream, probe=True),
        Kind(HIT1 + ONE_CORE, HIT_BODY % "bench", 1, (GATEWAY, ANSWER_FLOOR), per_forwarded=False),
        Kind(REDIS1 + ONE_CORE, HIT_BODY % "bench", 1, (REDIS_GATEWAY, REDIS_FLOOR), per_forwarded=False),
    ]


def pin_tree(pid: int, cpu: int, root: bool = True) -> int:
    """Move ``pid`` (unless ``root`` is False), its descendants and all their threads to core
    ``cpu``; how many threads."""
    moved = 0
    for proc in process_tree(pid)[0 if root else 1 :]:
        for task in Path(f"/proc/{proc}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), {cpu})
                moved += 1
    return moved


def tree_env(tree: Path, **extra: str) -> dict[str, str]:
    """Environment for a process that imports ``gateway`` from ``tree``: this checkout or an extracted
    revision (not whatever an editable install points at, as ``serve`` may run in another directory)."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(tree) + (os.pathsep + path if path else ""), **extra}


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


# --- git ----------------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class Revision:
    short: str
    subject: str

    @classmethod
    def of(cls, rev: str) -> Revision:
        try:
            full = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except subprocess.CalledProcessError:
            raise SystemExit(f"--baseline {rev}: not a commit of this repository") from None
        short, subject = git("log", "-1", "--format=%h%x00%s", full).split("\0", 1)
        return cls(short, subject)

    def describe(self) -> str:
        subject = self.subject if len(self.subject) <= 70 else self.subject[:67] + "..."
        return f"`{self.short}` ({subject.replace('|', '/')})"


def uncommitted_paths() -> list[str]:
    """Paths of the working tree that differ from HEAD (modified, staged, deleted or untracked)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def extract(rev: str, into: Path) -> None:
    """``git archive REV | tar -x -C into``: the revision's tracked files, without the working tree's."""
    archive = subprocess.Popen(["git", "archive", rev], cwd=ROOT, stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=False)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"git archive {rev} | tar -x -C {into} failed")


def imported_from(env: dict[str, str], cwd: str) -> Path:
    """Where a process started like the gateways (same interpreter, env and cwd) imports ``gateway`` from."""
    out = subprocess.run(
        [sys.executable, "-c", "import gateway.cli; print(gateway.cli.__file__)"],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Path(out.strip()).resolve().parents[1]


# --- wrk and the stream probe ------------------------------------------------------------------


def write_script(body: str, check: bool = False) -> str:
    text = WRK_SCRIPT % body + (WRK_STREAM_CHECK if check else "")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(text)
    return script.name


def wrk_output(
    wrk: str, url: str, script: str, connections: int, duration_s: int, cpu: int | str | None
) -> str:
    """wrk's output for one run (one thread, ``connections``), pinned to ``cpu`` (a taskset list) if given;
    ``script`` (a file) is removed afterwards."""
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    try:
        return subprocess.run([*cmd, "-s", script, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)


def run_wrk(
    wrk: str, url: str, body: str, connections: int, duration_s: int, cpu: int | str | None
) -> dict[str, float]:
    out = wrk_output(wrk, url, write_script(body), connections, duration_s, cpu)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    lat = {p: _ms(re.search(rf"^\s+{p}%\s+([\d.]+\w+)", out, re.MULTILINE).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {
        "rps": rps,
        "requests": float(total),
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": float(sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1))))
        if socket_errors
        else 0.0,
    }


def check_stream(wrk: str, url: str, body: str, duration_s: int, cpu: int) -> dict[str, object]:
    """A short wrk run whose response() hook inspects every streamed response wrk counts as complete."""
    out = wrk_output(wrk, url, write_script(body, check=True), 16, duration_s, cpu)
    found = re.search(r"CHECK checked=(\d+) complete=(\d+) chunked=(\d+) usage=(\d+)", out)
    if not found:
        raise RuntimeError(f"wrk's stream check printed nothing:\n{out}")
    checked, complete, chunked, usage = (int(n) for n in found.groups())
    bad = re.search(r"CHECK-BAD (.*)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "checked": checked,
        "complete": complete,
        "chunked": chunked,
        "usage": usage,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "bad": bad.group(1) if bad else "",
        "ok": checked > 0 and complete == checked and not errors,
    }


def run_probe(url: str, body: str, duration_s: int, cpu: int) -> dict[str, float]:
    """``stream_probe.py`` pinned to ``cpu``: time to first byte / first event / end, one at a time."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        out = subprocess.run(
            [
                "taskset",
                "-c",
                str(cpu),
                sys.executable,
                str(ROOT / "benchmarks" / "stream_probe.py"),
                "--url",
                url,
                "--body-file",
                f.name,
                "--duration",
                str(duration_s),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    result: dict[str, float] = json.loads(out)
    return {**result, "non_2xx": 0.0, "socket_errors": 0.0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# --- fake provider, floor and gateways ------------------------------------------------------------


def policy_text(fake_url: str) -> str:
    """One single-deployment group (``bench``) and one scored group of three (``bench-score``)."""
    scored = "".join(f"  {name}: {{kind: openai, base_url: {fake_url}/v1}}\n" for name in SCORE_PROVIDERS)
    deployments = ", ".join(f"{{provider: {name}, model: fake-model}}" for name in SCORE_PROVIDERS)
    return (
        f"version: 1\n{OPEN_AUTH}providers:\n  fake: {{kind: openai, base_url: {fake_url}/v1}}\n{scored}"
        "models:\n  bench: {deployments: [{provider: fake, model: fake-model}]}\n"
        f"  bench-score: {{strategy: score, deployments: [{deployments}]}}\n"
    )


SCORE_PROVIDERS = ("fake-a", "fake-b", "fake-c")
OPEN_AUTH = "auth: {mode: open}\n"


def policy_for(tree: Path, text: str) -> str:
    """``text`` as ``tree``'s gateway reads it: revisions before virtual keys (issue 11) have no
    ``auth`` section (and refuse it as an unknown key); they are open anyway."""
    knows_auth = "class Auth(" in (tree / "gateway" / "policy" / "model.py").read_text()
    return text if knows_auth else text.replace(OPEN_AUTH, "")


def fake_chat_count(fake_url: str, reset: bool = False) -> int:
    """Chat completions the fake has received since its last reset (``reset``: zero them first)."""
    if reset:
        urllib.request.urlopen(
            urllib.request.Request(fake_url + "/_fake/reset", method="POST"), timeout=5
        ).close()
        return 0
    with urllib.request.urlopen(fake_url + "/_fake/stats", timeout=5) as resp:
        return int(json.load(resp)["by_path"].get(CHAT_PATH, 0))


def post(url: str, body: str) -> tuple[dict[str, str], bytes]:
    """One request with urllib: the response headers (lower-case names) and body."""
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json", "Authorization": "Bearer bench"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def served_by(url: str, model: str, n: int) -> dict[str, int]:
    """How ``n`` sequential requests spread over providers, by their ``x-gateway-provider``."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        try:
            seen[post(url, BODY % model)[0].get("x-gateway-provider", "?")] += 1
        except OSError as exc:
            seen[f"error {getattr(exc, 'code', type(exc).__name__)}"] += 1
    return dict(sorted(seen.items()))


@contextlib.contextmanager
def running(proc: ManagedProcess | Logged) -> Iterator[ManagedProcess | Logged]:
    try:
        yield proc
    finally:
        proc.stop()


def start_floor(
    stack: contextlib.ExitStack,
    upstream: str,
    log: Path,
    cpus: str | None,
    workers: int = 1,
    port: int = 0,
    *extra: str,
) -> Logged:
    args = [sys.executable, str(ROOT / "benchmarks" / "floor_proxy.py"), "--upstream", upstream, *extra]
    proc = launch([*args, "--port", str(port), "--workers", str(workers)], log, cpus=cpus)
    stack.enter_context(running(proc))
    return proc


def start_gateway(
    stack: contextlib.ExitStack,
    tree: Path,
    policy: Path,
    scratch: Path,
    name: str,
    cpus: str | None,
    extra: tuple[str, ...] = ("--port", "0"),
    pipe_cpus: str | None = None,
    **env: str,
) -> Logged:
    """``serve`` from ``tree`` in its own working directory under ``scratch``, its output in a file
    (through a pipe read on ``pipe_cpus``, when given: ``processes.launch``)."""
    full_env = tree_env(tree, **env)
    cwd = tempfile.mkdtemp(prefix="serve-", dir=scratch)
    source = imported_from(full_env, cwd)
    if source != tree.resolve():
        raise SystemExit(f"{name} would import gateway from {source}, not from {tree}")
    # The policy in a folder of its own, as a ConfigMap mount is: the gateway watches the policy's
    # folder, and its log file written there would wake the watcher on every batch of lines.
    (Path(cwd) / "policy").mkdir()
    own = Path(cwd) / "policy" / "policy.yaml"
    own.write_text(policy_for(tree, policy.read_text()))
    proc = launch(
        gateway_command("serve", "--policy", str(own), *extra),
        Path(cwd) / "output.log",
        env=full_env,
        cpus=cpus,
        cwd=cwd,
        pipe_cpus=pipe_cpus,
    )
    stack.enter_context(running(proc))
    return proc


def start_redis(stack: contextlib.ExitStack, cpu: int) -> tuple[str, bool]:
    """A private ``redis-server`` on core ``cpu`` (never the shared one: tests may flush it);
    (its URL, whether redis-py in this interpreter parses with hiredis)."""
    import redis
    import redis.utils

    from gateway.testing.redis_server import PrivateRedis

    server = stack.enter_context(PrivateRedis())
    client = redis.Redis.from_url(server.url)
    pid = int(client.info("server")["process_id"])
    client.close()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {cpu})
    return server.url, bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False))


def stream_events(url: str, body: str) -> int:
    """``data:`` events in one streamed answer."""
    return post(url, body)[1].count(b"data:")


def has_workers_option(tree: Path) -> bool:
    out = subprocess.run(
        gateway_command("serve", "--help"),
        env={**os.environ, **tree_env(tree)},
        capture_output=True,
        text=True,
    ).stdout
    return "--workers" in out


# --- measurement --------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    cpu: Callable[[], float] | None  # CPU seconds of the process (tree) so far; None: not measured


Results = dict[tuple[str, str], list[dict[str, float]]]


def rotated(items: tuple[str, ...], index: int) -> tuple[str, ...]:
    shift = index % len(items)
    return items[shift:] + items[:shift]


def measure(
    wrk: str, kind: Kind, target: Target, fake_url: str, duration: int, load_cpu: int | str | None
) -> dict[str, float]:
    """One timed run of ``kind`` on ``target``, with the CPU the target spent per request."""
    fake_chat_count(fake_url, reset=True)
    before = target.cpu() if target.cpu else 0.0
    if kind.probe:
        result = run_probe(target.url + CHAT_PATH, kind.body, duration, int(str(load_cpu).split(",")[0]))
    else:
        result = run_wrk(wrk, target.url + CHAT_PATH, kind.body, kind.connections, duration, load_cpu)
    forwarded = fake_chat_count(fake_url)
    result["forwarded"] = float(forwarded)
    if target.cpu:
        per = forwarded if kind.per_forwarded else result["requests"]
        result["cpu_us"] = (target.cpu() - before) * 1e6 / max(1.0, per)
    return result


def planned_seconds(kinds: list[Kind], duration: int, warmup: int, rounds: int, workers_runs: int) -> int:
    runs = sum(len(k.targets) for k in kinds)
    return runs * (rounds * duration + warmup) + workers_runs * (rounds * duration + warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (default 3)")
    parser.add_argument("--baseline", metavar="REV", help="also run the gateway of git revision REV")
    parser.add_argument(
        "--current",
        metavar="REV",
        help="run the gateway (and the fake provider) of revision REV, not the working tree",
    )
    parser.add_argument("--no-workers", action="store_true", help="skip the workers rows")
    parser.add_argument(
        "--no-one-core", action="store_true", help="skip the 1-connection rows with every process on one core"
    )
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    wrk = ensure_wrk()
    warmup = max(1, min(2, args.duration))
    head = Revision.of("HEAD")
    dirty = uncommitted_paths()
    baseline_rev = Revision.of(args.baseline) if args.baseline else None
    current_rev = Revision.of(args.current) if args.current else None
    compared = (FLOOR, FLOOR_AA, GATEWAY, LOG_OFF, *((BASELINE_GATEWAY,) if baseline_rev else ()))
    kinds = kinds_for(compared)
    load_before = os.getloadavg()[0]
    run = Run(args, wrk, warmup, head, dirty, baseline_rev, current_rev, load_before)
    timed = kinds + ([] if args.no_one_core else one_core_kinds(compared))
    print(
        f"planned: about {planned_seconds(timed, args.duration, warmup, args.rounds, 0 if args.no_workers else 4)} s "
        f"of timed runs ({args.rounds} round(s), {args.duration} s per run)",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="proxy-overhead-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        trees = {CURRENT: ROOT}
        for side, rev, rev_arg in (
            (BASELINE, baseline_rev, args.baseline),
            (CURRENT, current_rev, args.current),
        ):
            if rev is not None:
                trees[side] = scratch / f"{side}-{rev.short}"
                trees[side].mkdir()
                extract(rev_arg, trees[side])
        run.trees = trees
        with contextlib.ExitStack() as phase:
            run.measure_common(phase, scratch, kinds)
        if not args.no_workers:
            with contextlib.ExitStack() as phase:
                run.measure_workers(phase, scratch)
    lines = run.report(kinds)
    if not args.no_write:
        write_section(SECTION, "\n".join(lines))
    print("\n".join(lines))
    return 0 if run.ok() else 1


class Run:
    """The state of one benchmark run: its processes' results and how to report them."""

    def __init__(
        self,
        args: argparse.Namespace,
        wrk: str,
        warmup: int,
        head: Revision,
        dirty: list[str],
        baseline_rev: Revision | None,
        current_rev: Revision | None,
        load_before: float,
    ) -> None:
        self.args, self.wrk, self.warmup, self.head, self.dirty = args, wrk, warmup, head, dirty
        self.baseline_rev, self.current_rev, self.load_before = baseline_rev, current_rev, load_before
        self.trees: dict[str, Path] = {}
        self.results: Results = collections.defaultdict(list)
        self.stream_checks: dict[str, dict[str, object]] = {}
        self.notes: list[str] = []
        self.events: dict[str, dict[str, int]] = {}
        self.hiredis = False
        self.spread: dict[str, int] = {}
        self.workers_results: Results = collections.defaultdict(list)
        self.workers_note = ""
        self.workers_layout = ""
        self.fake_busy: dict[str, list[float]] = collections.defaultdict(list)
        self.log_lines: dict[str, int] = {}

    # --- phase 1: one core ---------------------------------------------------------------------

    def measure_common(self, stack: contextlib.ExitStack, scratch: Path, kinds: list[Kind]) -> None:
        args, current = self.args, self.trees[CURRENT]
        fake = stack.enter_context(
            running(start(["fake-provider", "--port", "0"], cpu=LOAD_CPU, env=tree_env(current)))
        )
        policy = scratch / "bench.yaml"
        policy.write_text(policy_text(fake.url))
        pin = str(PROXY_CPU)
        # The gateways' output goes through a pipe to a ``cat`` on the load core, as a container
        # runtime reads stderr (what the gateway meets on Kubernetes); the cat appends to the log.
        collector = str(LOAD_CPU)
        redis_url, self.hiredis = start_redis(stack, LOAD_CPU)
        procs: dict[str, Logged] = {
            FLOOR: start_floor(stack, fake.url, scratch / "floor.log", pin),
            FLOOR_AA: start_floor(stack, fake.url, scratch / "floor-aa.log", pin),
            ANSWER_FLOOR: start_floor(
                stack, fake.url, scratch / "floor-fixed.log", pin, 1, 0, "--answer-fixed"
            ),
            GATEWAY: start_gateway(stack, current, policy, scratch, GATEWAY, pin, pipe_cpus=collector),
            LOG_OFF: start_gateway(
                stack, current, policy, scratch, LOG_OFF, pin, pipe_cpus=collector, SOPHIA_ACCESS_LOG="0"
            ),
            REDIS_FLOOR: start_floor(
                stack, fake.url, scratch / "floor-redis.log", pin, 1, 0, "--answer-redis", redis_url
            ),
            REDIS_GATEWAY: start_gateway(
                stack, current, policy, scratch, REDIS_GATEWAY, pin, pipe_cpus=collector, REDIS_URL=redis_url
            ),
        }
        if self.baseline_rev:
            procs[BASELINE_GATEWAY] = start_gateway(
                stack, self.trees[BASELINE], policy, scratch, BASELINE_GATEWAY, pin, pipe_cpus=collector
            )
        targets = {name: Target(name, proc.url, proc.cpu_seconds) for name, proc in procs.items()}
        targets[DIRECT] = Target(DIRECT, fake.url, None)
        for name, proc in procs.items():
            print(f"{name} at {proc.url} (log: {proc.log})", flush=True)
        self.prime(kinds, targets, fake.url)
        for index in range(args.rounds):
            for kind in kinds:
                for name in rotated(kind.targets, index):
                    result = measure(self.wrk, kind, targets[name], fake.url, args.duration, LOAD_CPU)
                    self.results[(kind.name, name)].append(result)
                    print(
                        f"round {index + 1} {kind.name} [{name}]",
                        {k: round(v, 3) for k, v in result.items()},
                        flush=True,
                    )
        if not args.no_one_core:
            self.measure_one_core(targets, fake.url)
        self.spread = served_by(targets[GATEWAY].url + CHAT_PATH, "bench-score", 300)
        for name in (GATEWAY, LOG_OFF):
            proc = procs[name]
            proc.stop()
            self.log_lines[name] = sum(1 for _ in proc.log.open(errors="replace"))

    def measure_one_core(self, targets: dict[str, Target], fake_url: str) -> None:
        """The 1-connection rows again, every process of this run (fake provider, Redis, the log
        collectors, wrk, the probe) moved to the proxies' core. At 1 connection nothing runs in
        parallel (client, proxy, upstream and Redis take turns), so one core costs no throughput;
        what it removes is the wake-up of another core at each turn, which on a virtual machine
        is a hypervisor's rescheduling of an idle vCPU: here it added ~0.1 ms to every turn's
        median and ~2 ms to the p99 of bare aiohttp answering fixed bytes (ARCHITECTURE.md)."""
        # Not this process (it only times, and what it starts later, the workers phase's
        # processes, inherits its cores).
        moved = pin_tree(os.getpid(), PROXY_CPU, root=False)
        self.notes.append(f"one-core rows: {moved} threads of this run's processes moved to core {PROXY_CPU}")
        kinds = one_core_kinds(tuple(t for t in targets if t != DIRECT))
        for kind in kinds:  # a warm-up on the new layout
            for name in kind.targets:
                if not kind.probe:
                    run_wrk(self.wrk, targets[name].url + CHAT_PATH, kind.body, 1, self.warmup, PROXY_CPU)
        for index in range(self.args.rounds):
            for kind in kinds:
                for name in rotated(kind.targets, index):
                    result = measure(self.wrk, kind, targets[name], fake_url, self.args.duration, PROXY_CPU)
                    self.results[(kind.name, name)].append(result)
                    print(
                        f"round {index + 1} {kind.name} [{name}]",
                        {k: round(v, 3) for k, v in result.items()},
                        flush=True,
                    )

    def prime(self, kinds: list[Kind], targets: dict[str, Target], fake_url: str) -> None:
        """Warm-up runs, the stream checks, the events per stream, and that hits are hits."""
        for kind in kinds:
            for name in kind.targets:
                url = targets[name].url + CHAT_PATH
                if kind.body == HIT_BODY % "bench" and name not in (ANSWER_FLOOR, REDIS_FLOOR):
                    post(url, kind.body)  # the miss that stores it
                    headers, _ = post(url, kind.body)
                    if headers.get("x-gateway-cache") != "hit":
                        raise SystemExit(f"{name}: a repeated temperature-0 request is not a hit: {headers}")
                if not kind.probe:
                    run_wrk(self.wrk, url, kind.body, 16, self.warmup, LOAD_CPU)
                if kind.name in (STREAM16, LONG16):
                    check = check_stream(self.wrk, url, kind.body, self.warmup, LOAD_CPU)
                    self.stream_checks[f"{kind.name} [{name}]"] = check
                    self.events.setdefault(kind.name, {})[name] = stream_events(url, kind.body)
                    print(f"stream check {kind.name} [{name}]", check, flush=True)
        before = fake_chat_count(fake_url)
        run_wrk(self.wrk, targets[GATEWAY].url + CHAT_PATH, HIT_BODY % "bench", 16, 1, LOAD_CPU)
        if fake_chat_count(fake_url) != before:
            self.notes.append("the fake provider received requests during a hit run: not all were hits")

    # --- phase 2: workers -----------------------------------------------------------------------

    def measure_workers(self, stack: contextlib.ExitStack, scratch: Path) -> None:
        current = self.trees[CURRENT]
        if not has_workers_option(current):
            self.workers_note = "skipped: `sophia-gateway serve --help` has no `--workers` in this tree"
            return
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) >= 4:
            proxy_cpus, load_cpus = f"{cpus[0]},{cpus[1]}", ",".join(str(c) for c in cpus[2:])
            self.workers_layout = f"proxies on cores {proxy_cpus}; fake provider and wrk on cores {load_cpus}"
        else:
            proxy_cpus, load_cpus = None, None
            self.workers_layout = f"{len(cpus) or os.cpu_count()} cores: proxies, fake provider and wrk all share them (unpinned)"
        fake = stack.enter_context(running(start(["fake-provider", "--port", "0"], env=tree_env(current))))
        if load_cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(fake.popen.pid, {int(c) for c in load_cpus.split(",")})
        policy = scratch / "bench-workers.yaml"
        policy.write_text(policy_text(fake.url))
        targets: dict[str, Target] = {}
        for workers in (1, 2):
            floor = start_floor(
                stack, fake.url, scratch / f"floor-w{workers}.log", proxy_cpus, workers, free_port()
            )
            targets[f"floor x{workers}"] = Target(f"floor x{workers}", floor.url, floor.cpu_seconds)
            gw = start_gateway(
                stack,
                current,
                policy,
                scratch,
                f"gateway --workers {workers}",
                proxy_cpus,
                ("--port", str(free_port()), "--workers", str(workers)),
            )
            targets[f"gateway x{workers}"] = Target(f"gateway x{workers}", gw.url, gw.cpu_seconds)
        kind = Kind("workers c16", BODY % "bench", 16, tuple(targets))
        for name in kind.targets:
            run_wrk(self.wrk, targets[name].url + CHAT_PATH, kind.body, 16, self.warmup, load_cpus)
        fake_pid = fake.popen.pid
        from benchmarks.processes import cpu_seconds

        for index in range(self.args.rounds):
            for name in rotated(kind.targets, index):
                fake_before, started = cpu_seconds(fake_pid), time.monotonic()
                result = measure(self.wrk, kind, targets[name], fake.url, self.args.duration, load_cpus)
                self.fake_busy[name].append(
                    (cpu_seconds(fake_pid) - fake_before) / (time.monotonic() - started)
                )
                self.workers_results[(kind.name, name)].append(result)
                print(
                    f"round {index + 1} workers [{name}]",
                    {k: round(v, 3) for k, v in result.items()},
                    flush=True,
                )

    # --- report ---------------------------------------------------------------------------------

    def ok(self) -> bool:
        errors = sum(r["non_2xx"] + r["socket_errors"] for runs in self.results.values() for r in runs)
        return errors == 0 and all(c["ok"] for c in self.stream_checks.values())

    def med(self, kind: str, target: str, key: str, results: Results | None = None) -> float:
        runs = (results if results is not None else self.results).get((kind, target), [])
        values = [r[key] for r in runs if key in r]
        return statistics.median(values) if values else float("nan")

    def ratios(self, kind: str, target: str, key: str, reference: str) -> list[float]:
        """``target`` / ``reference`` in each round (measured back to back, so drift cancels)."""
        pairs = zip(
            self.results.get((kind, target), []), self.results.get((kind, reference), []), strict=False
        )
        return [a[key] / b[key] for a, b in pairs if key in a and key in b and b[key]]

    def paired(self, kind: str, target: str, key: str, reference: str) -> float:
        """The median of the per-round ratios: the figure reported as "ratio to floor"."""
        values = self.ratios(kind, target, key, reference)
        return statistics.median(values) if values else float("nan")

    def per_round(self, kind: str, target: str, key: str, reference: str) -> str:
        return " / ".join(f"{r:.2f}" for r in self.ratios(kind, target, key, reference))

    def report(self, kinds: list[Kind]) -> list[str]:
        from benchmarks.proxy_report import render

        return render(self, kinds)


if __name__ == "__main__":
    raise SystemExit(main())
