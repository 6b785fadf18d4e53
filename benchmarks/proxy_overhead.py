"""Benchmark: requests/s and added latency of the gateway over a zero-latency fake upstream.

One run measures, with wrk as the load generator:
  * direct to the fake provider, and through the gateway (gateway pinned to core 0;
    fake provider and wrk share core 1);
  * requests/s at concurrency 16 and latency p50/p99 at concurrency 1 and 16, for non-streaming
    chat completions and for streamed ones (``"stream": true`` with
    ``"stream_options": {"include_usage": true}``: server-sent events over chunked encoding; a
    short wrk run with a ``response()`` hook first checks that every streamed response wrk counts
    is whole: status 200, chunked, a usage chunk, ending with ``data: [DONE]``);
  * the same through the gateway for a model group of three deployments with ``strategy: score``
    (the same fake provider under three provider names, so only the routing differs), compared
    with the single-deployment group (issue 3 target: requests/s within 15 %).

``--baseline REV`` compares the gateway of this working tree ("current") with the gateway of a
git revision of this repository ("baseline", extracted with ``git archive REV`` into a temporary
directory and run from there with the same policy and core pinning). Both gateways run side by
side; every gateway row is measured for both in each of ``--rounds`` rounds, back to back, in
alternating order (baseline, current, then current, baseline, ...) so that machine drift hits
both alike; the figures reported are medians over the rounds, with the ratio current/baseline of
the median requests/s (issue 2 target: at concurrency 16 the ratio stays >= 0.97, streaming
included). ``--current REV`` runs the current side (and the fake provider) from a revision as well,
instead of the working tree (to compare two commits whatever the working tree holds).

It writes its figures to benchmarks/RESULTS.md (its own section, replaced on each run).

Run: python benchmarks/proxy_overhead.py [--duration 10] [--baseline REV [--rounds 3]] [--current REV]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402
from gateway.testing.process import ManagedProcess, start  # noqa: E402

SECTION = "Proxy overhead (issue 2)"
PROMPT = '"messages": [{"role": "user", "content": "Say something short about gateways."}]'
BODY = '{"model": "%s", ' + PROMPT + "}"
STREAM_BODY = '{"model": "%s", ' + PROMPT + ', "stream": true, "stream_options": {"include_usage": true}}'
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
CONCURRENCIES = (1, 16)
TARGET_CONCURRENCY = 16
TARGET_RATIO = 0.97
BASELINE, CURRENT = "baseline", "current"


@dataclass(frozen=True)
class Row:
    name: str
    via_gateway: bool
    model: str
    stream: bool = False


SCORE_ROW = "gateway (score, 3 deployments)"
SCORE_PROVIDERS = ("fake-a", "fake-b", "fake-c")
ROWS = (
    Row("direct", False, "fake-model"),
    Row("gateway", True, "bench"),
    Row(SCORE_ROW, True, "bench-score"),
    Row("direct (stream)", False, "fake-model", stream=True),
    Row("gateway (stream)", True, "bench", stream=True),
)


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


# --- wrk ----------------------------------------------------------------------------------------


def wrk_script(row: Row, check: bool = False) -> str:
    body = (STREAM_BODY if row.stream else BODY) % row.model
    text = WRK_SCRIPT % body + (WRK_STREAM_CHECK if check else "")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(text)
    return script.name


def wrk_output(wrk: str, url: str, script: str, connections: int, duration_s: int, cpu: int) -> str:
    cmd = ["taskset", "-c", str(cpu), wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    try:
        return subprocess.run([*cmd, "-s", script, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)


def run_wrk(wrk: str, url: str, row: Row, connections: int, duration_s: int, cpu: int) -> dict[str, float]:
    out = wrk_output(wrk, url, wrk_script(row), connections, duration_s, cpu)
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


def check_stream(wrk: str, url: str, row: Row, duration_s: int, cpu: int) -> dict[str, object]:
    """A short wrk run whose response() hook inspects every streamed response wrk counts as complete."""
    out = wrk_output(wrk, url, wrk_script(row, check=True), TARGET_CONCURRENCY, duration_s, cpu)
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# --- fake provider and gateways -----------------------------------------------------------------


def policy_text(fake_url: str) -> str:
    """One single-deployment group (``bench``) and one scored group of three (``bench-score``)."""
    scored = "".join(f"  {name}: {{kind: openai, base_url: {fake_url}/v1}}\n" for name in SCORE_PROVIDERS)
    deployments = ", ".join(f"{{provider: {name}, model: fake-model}}" for name in SCORE_PROVIDERS)
    return (
        f"version: 1\n{OPEN_AUTH}providers:\n  fake: {{kind: openai, base_url: {fake_url}/v1}}\n{scored}"
        "models:\n  bench: {deployments: [{provider: fake, model: fake-model}]}\n"
        f"  bench-score: {{strategy: score, deployments: [{deployments}]}}\n"
    )


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


@contextlib.contextmanager
def running(proc: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        yield proc
    finally:
        proc.stop()


def start_gateway(
    stack: contextlib.ExitStack, tree: Path, policy: Path, scratch: Path, side: str
) -> ManagedProcess:
    """``serve`` from ``tree``, pinned to core 0, in its own working directory under ``scratch``."""
    env = tree_env(tree, SOPHIA_ACCESS_LOG="0")
    cwd = tempfile.mkdtemp(prefix=f"serve-{side}-", dir=scratch)
    source = imported_from(env, cwd)
    if source != tree.resolve():
        raise SystemExit(f"the {side} gateway would import gateway from {source}, not from {tree}")
    own = Path(cwd) / "policy.yaml"
    own.write_text(policy_for(tree, policy.read_text()))
    proc = start(["serve", "--policy", str(own), "--port", "0"], cpu=0, env=env, cwd=cwd)
    return stack.enter_context(running(proc))


# --- measurement --------------------------------------------------------------------------------


def planned_seconds(duration: int, warmup: int, rounds: int, sides: int) -> int:
    direct = sum(not r.via_gateway for r in ROWS)
    via = sum(r.via_gateway for r in ROWS)
    streams = sum(r.stream for r in ROWS if r.via_gateway) * sides + sum(
        r.stream for r in ROWS if not r.via_gateway
    )
    runs = rounds * len(CONCURRENCIES) * (direct + via * sides)
    return runs * duration + (direct + via * sides) * warmup + streams * warmup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the gateway of git revision REV (e.g. a commit id) and compare it with this working tree",
    )
    parser.add_argument(
        "--current",
        metavar="REV",
        help="run the current gateway (and the fake provider) from git revision REV instead of the working tree",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="measurements per row and gateway, medians reported (default: 3 with --baseline, else 1)",
    )
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (3 if args.baseline else 1)
    if rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    wrk = ensure_wrk()
    warmup = max(1, min(2, args.duration))
    head = Revision.of("HEAD")
    dirty = uncommitted_paths()
    baseline_rev = Revision.of(args.baseline) if args.baseline else None
    current_rev = Revision.of(args.current) if args.current else None
    sides = [BASELINE, CURRENT] if baseline_rev else [CURRENT]
    load_before = os.getloadavg()[0]
    print(
        f"planned: about {planned_seconds(args.duration, warmup, rounds, len(sides))} s of wrk runs "
        f"({rounds} round(s), {args.duration} s per run)",
        flush=True,
    )

    # results[(row, concurrency, side)]: one dict per round; direct rows have the side "direct".
    results: dict[tuple[str, int, str], list[dict[str, float]]] = collections.defaultdict(list)
    stream_checks: dict[str, dict[str, object]] = {}
    # The largest (chat completions the fake received - responses wrk counted) of any timed run, and where.
    upstream_gap: tuple[int, str] = (0, "")
    spread: dict[str, int] = {}
    admin: object = None
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
        fake = stack.enter_context(
            running(start(["fake-provider", "--port", "0"], cpu=1, env=tree_env(trees[CURRENT])))
        )
        policy = scratch / "bench.yaml"
        policy.write_text(policy_text(fake.url))
        gateways = {side: start_gateway(stack, trees[side], policy, scratch, side) for side in sides}
        for side, proc in gateways.items():
            print(f"{side} gateway from {trees[side]} at {proc.url}", flush=True)

        def url_of(row: Row, side: str) -> str:
            return (gateways[side].url if row.via_gateway else fake.url) + CHAT_PATH

        def measure(row: Row, side: str, conc: int) -> None:
            nonlocal upstream_gap
            fake_chat_count(fake.url, reset=True)
            pid = gateways[side].popen.pid if row.via_gateway else None
            cpu_before = cpu_seconds(pid) if pid else 0.0
            result = run_wrk(wrk, url_of(row, side), row, conc, args.duration, cpu=1)
            forwarded = fake_chat_count(fake.url)
            if pid:
                # CPU the gateway process spent per request it forwarded: unlike requests/s, not
                # moved by time the machine gives to others (steal, neighbours), only by our code.
                result["cpu_us"] = (cpu_seconds(pid) - cpu_before) * 1e6 / max(1, forwarded)
            gap = forwarded - int(result["requests"])
            if gap > upstream_gap[0]:
                upstream_gap = (gap, f"{row.name} [{side}] at concurrency {conc}")
            results[(row.name, conc, side)].append(result)
            print(f"{row.name} [{side}] c{conc}", result, flush=True)

        for row in ROWS:  # warm-up: connections, caches, page-in; then the streaming check
            for side in sides if row.via_gateway else ["direct"]:
                run_wrk(wrk, url_of(row, side), row, TARGET_CONCURRENCY, warmup, cpu=1)
                if row.stream:
                    check = check_stream(wrk, url_of(row, side), row, warmup, cpu=1)
                    stream_checks[row.name if side == "direct" else f"{row.name} [{side}]"] = check
                    print(f"stream check {row.name} [{side}]", check, flush=True)
        for index in range(rounds):
            order = sides if index % 2 == 0 else sides[::-1]
            for row in ROWS:
                for conc in CONCURRENCIES:
                    for side in order if row.via_gateway else ["direct"]:
                        measure(row, side, conc)
        spread = served_by(gateways[CURRENT].url + CHAT_PATH, "bench-score", 300)
        print("bench-score served by", spread, flush=True)
        try:
            with urllib.request.urlopen(gateways[CURRENT].url + "/admin/models", timeout=5) as resp:
                admin = json.load(resp)["models"]["bench-score"]
        except (OSError, KeyError, ValueError) as exc:
            print("GET /admin/models:", exc, flush=True)

    load_after = os.getloadavg()[0]

    def med(row: str, conc: int, side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(row, conc, side)])

    def total(row: str, conc: int, side: str, key: str) -> float:
        return sum(r[key] for r in results[(row, conc, side)])

    errors = sum(r["non_2xx"] + r["socket_errors"] for runs in results.values() for r in runs)
    streams_ok = all(c["ok"] for c in stream_checks.values())
    d1, g1 = med("direct", 1, "direct", "p50_ms"), med("gateway", 1, CURRENT, "p50_ms")
    d16p50, d16p99 = med("direct", 16, "direct", "p50_ms"), med("direct", 16, "direct", "p99_ms")
    g16, g16p50, g16p99 = (med("gateway", 16, CURRENT, k) for k in ("rps", "p50_ms", "p99_ms"))
    s16, s1 = med(SCORE_ROW, 16, CURRENT, "rps"), med(SCORE_ROW, 1, CURRENT, "p50_ms")
    score_ratio = s16 / g16
    added_p50 = g1 - d1

    dirty_code = [p for p in dirty if not p.startswith("benchmarks/")]
    tree_state = "clean (no uncommitted changes)"
    if dirty:
        named = ", ".join(f"`{p}`" for p in dirty_code[:8]) + (", ..." if len(dirty_code) > 8 else "")
        tree_state = (
            f"with uncommitted changes ({len(dirty)} path(s), {len(dirty_code)} outside benchmarks/"
            + (f": {named})" if dirty_code else ")")
        )
    current_text = (
        f"revision {current_rev.describe()}, extracted with `git archive` and run from there"
        if current_rev
        else f"the working tree at HEAD {head.describe()}, {tree_state}"
    )
    runs_text = (
        f"{rounds} round(s) of {args.duration} s per wrk run" if rounds > 1 else f"{args.duration} s per run"
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, wrk, "
        f"{runs_text}. Gateway pinned to core 0; fake provider (zero latency) and wrk on core 1. "
        'Chat completions, access log off; `(stream)` rows send `"stream": true, '
        '"stream_options": {"include_usage": true}` (server-sent events over chunked encoding). '
        f"`{SCORE_ROW}`: one model group of three deployments with `strategy: score`, "
        "the same fake provider under three provider names, in the same gateway process.",
        "",
    ]
    if baseline_rev:
        lines += [
            f"- **Compared**: baseline = revision {baseline_rev.describe()}, extracted with `git archive` "
            f"and run from there; current = {current_text}.",
            "- **Method**: both gateways run side by side with the same policy and pinning (each checked to "
            f"import `gateway` from its own tree). In each of {rounds} round(s) every row is measured for both "
            "gateways back to back, the order alternating between rounds (baseline then current, then current "
            "then baseline, ...), so machine drift hits both alike; the figures are medians over the rounds, "
            "the ratio is current / baseline of the median requests/s (per round: the same ratio within the round).",
            "",
            "| path | concurrency | requests/s before | requests/s after | ratio | ratio per round "
            "| CPU us/request before | CPU us/request after | CPU ratio (before/after) "
            "| p50 ms before | p50 ms after | p99 ms before | p99 ms after | non-2xx |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        verdicts = []
        cpu_verdicts: list[tuple[str, float]] = []
        for row in ROWS:
            if not row.via_gateway:
                continue
            for conc in CONCURRENCIES:
                b, c = (med(row.name, conc, s, "rps") for s in (BASELINE, CURRENT))
                ratio = c / b
                per_round = " / ".join(
                    f"{rc['rps'] / rb['rps']:.3f}"
                    for rb, rc in zip(
                        results[(row.name, conc, BASELINE)], results[(row.name, conc, CURRENT)], strict=True
                    )
                )
                cpu_b, cpu_c = (med(row.name, conc, s, "cpu_us") for s in (BASELINE, CURRENT))
                lines.append(
                    f"| {row.name} | {conc} | {b:.0f} | {c:.0f} | **{ratio:.3f}** | {per_round} "
                    f"| {cpu_b:.0f} | {cpu_c:.0f} | **{cpu_b / cpu_c:.3f}** "
                    f"| {med(row.name, conc, BASELINE, 'p50_ms'):.3f} | {med(row.name, conc, CURRENT, 'p50_ms'):.3f} "
                    f"| {med(row.name, conc, BASELINE, 'p99_ms'):.3f} | {med(row.name, conc, CURRENT, 'p99_ms'):.3f} "
                    f"| {total(row.name, conc, BASELINE, 'non_2xx') + total(row.name, conc, CURRENT, 'non_2xx'):.0f} |"
                )
                if conc == TARGET_CONCURRENCY:
                    verdicts.append((row.name, ratio))
                    cpu_verdicts.append((row.name, cpu_b / cpu_c))
        failed = [name for name, ratio in verdicts if ratio < TARGET_RATIO]
        lines += [
            "",
            "Direct to the fake provider (reference, medians):",
            "",
            "| path | concurrency | requests/s | p50 ms | p99 ms | non-2xx |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in ROWS:
            if not row.via_gateway:
                for conc in CONCURRENCIES:
                    lines.append(
                        f"| {row.name} | {conc} | {med(row.name, conc, 'direct', 'rps'):.0f} "
                        f"| {med(row.name, conc, 'direct', 'p50_ms'):.3f} "
                        f"| {med(row.name, conc, 'direct', 'p99_ms'):.3f} "
                        f"| {total(row.name, conc, 'direct', 'non_2xx'):.0f} |"
                    )
        lines += [
            "",
            f"- **Verdict** (issue 9: requests/s at concurrency {TARGET_CONCURRENCY} may not drop by more than 3 %, "
            f"ratio >= {TARGET_RATIO}, streaming included): **{'met' if not failed else 'NOT met'}**: "
            + ", ".join(f"{name} {ratio:.3f}" for name, ratio in verdicts)
            + (f" (below {TARGET_RATIO}: {', '.join(failed)})" if failed else "")
            + ".",
            f"- **CPU per request** at concurrency {TARGET_CONCURRENCY} (the gateway process's user + system CPU "
            "over the requests it forwarded, before / after: the same question without the machine's noise, "
            f"since time given to other processes is not counted): "
            + ", ".join(f"{name} {ratio:.3f}" for name, ratio in cpu_verdicts)
            + f" ({'all' if all(r >= TARGET_RATIO for _, r in cpu_verdicts) else 'NOT all'} >= {TARGET_RATIO}).",
        ]
    else:
        lines += [
            f"Gateway: {current_text}.",
            "",
            "| path | concurrency | requests/s | p50 ms | p99 ms | non-2xx |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in ROWS:
            side = CURRENT if row.via_gateway else "direct"
            for conc in CONCURRENCIES:
                lines.append(
                    f"| {row.name} | {conc} | {med(row.name, conc, side, 'rps'):.0f} "
                    f"| {med(row.name, conc, side, 'p50_ms'):.3f} | {med(row.name, conc, side, 'p99_ms'):.3f} "
                    f"| {total(row.name, conc, side, 'non_2xx'):.0f} |"
                )
        lines.append("")
    after = " (current)" if baseline_rev else ""
    lines += [
        f"- Gateway{after} requests/s at concurrency 16: **{g16:.0f}** (target >= 3,000 on one core): "
        f"{'met' if g16 >= 3000 else 'NOT met'}.",
        f"- Added latency p50 at concurrency 1 (gateway{after} - direct): **{added_p50:.3f} ms** "
        f"(target <= 0.5 ms): {'met' if added_p50 <= 0.5 else 'NOT met'}.",
        f"- Added latency p50 / p99 at concurrency 16: {g16p50 - d16p50:.3f} ms / {g16p99 - d16p99:.3f} ms.",
        f"- Score routing over 3 deployments at concurrency 16{after}: **{s16:.0f}** requests/s, "
        f"{100 * (score_ratio - 1):+.1f} % vs the single-deployment gateway's {g16:.0f} "
        f"(issue 3 target: within 15 %): {'met' if score_ratio >= 0.85 else 'NOT met'}. "
        f"p50 at concurrency 1: {s1:.3f} ms vs {g1:.3f} ms.",
        "- Streaming check (wrk with a `response()` hook inspecting every response it counts, "
        f"{warmup} s at concurrency {TARGET_CONCURRENCY}; whole = status 200, chunked, a usage chunk, "
        "ending with `data: [DONE]`): "
        + "; ".join(f"{name} {c['complete']}/{c['checked']} whole" for name, c in stream_checks.items())
        + f": {'all whole' if streams_ok else 'NOT all whole'}. Chat completions the fake received minus responses "
        f"wrk counted, largest over the timed runs: {upstream_gap[0]}"
        + (f" ({upstream_gap[1]})" if upstream_gap[1] else "")
        + " (requests still in flight when wrk stops reach the fake but are not counted).",
        f"- Errors (non-2xx and socket errors, all timed runs): {errors:.0f}. Load average (1 min) before / "
        f"after the runs: {load_before:.2f} / {load_after:.2f} (the benchmark itself keeps about 2 busy).",
        f"- Score routing spread ({'current gateway, ' if baseline_rev else ''}300 sequential requests after "
        "the runs, by `x-gateway-provider`): " + ", ".join(f"{k} {v}" for k, v in spread.items()) + ".",
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
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines))
    if not streams_ok:
        for name, c in stream_checks.items():
            if not c["ok"]:
                print(f"stream check failed for {name}: {c}", file=sys.stderr)
    return 0 if streams_ok and errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
