"""Benchmark: shadow traffic's cost to the client, and the share it mirrors (issue 13, item 5).

"Shadow share within +-1 point of the setting and client p50 within 5 % of no shadow." One run
starts a fake provider (the served deployment), a second fake (the shadow candidate) and two
gateways with the same policy but for ``shadow`` on the ``bench`` group: ``shadow`` mirrors
``--share`` of its requests to the candidate, ``no shadow`` has none. Gateways are pinned to
core 0, fakes and wrk to core 1 (as ``proxy_overhead.py``). Then, over ``--rounds`` interleaved
rounds (the order alternating, so machine drift hits both alike), wrk sends non-streaming,
uncacheable chat requests at 1 connection for ``--duration`` seconds to each gateway; the client
p50 / p99 of each gateway is the median over rounds, compared as a ratio in the same run. The
observed share is (mirrored + dropped) over the requests the shadow gateway answered, from its
``/admin/shadow`` and ``/metrics``; the candidate fake's own count is shown beside it.

Run: python benchmarks/shadow.py [--share 0.05] [--rounds 3] [--duration 6]
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import Logged, gateway_command, launch  # noqa: E402
from benchmarks.proxy_overhead import (  # noqa: E402
    BODY,
    LOAD_CPU,
    PROXY_CPU,
    ensure_wrk,
    fake_chat_count,
    post,
    run_wrk,
)
from benchmarks.results import write_section  # noqa: E402

SECTION = "Shadow traffic (issue 13)"
SHADOW, PLAIN = "shadow", "no shadow"
TARGET_SHARE_POINTS = 1.0  # the observed share within this many percentage points of the setting
TARGET_P50_RATIO = 1.05  # the shadow gateway's client p50 at most 5 % above the other's


def policy(served_url: str, candidate_url: str, share: float | None) -> str:
    shadow = (
        "    shadow:\n"
        "      deployment: {provider: candidate, model: candidate-model}\n"
        f"      share: {share}\n"
        "      max_in_flight: 20\n"
        if share is not None
        else ""
    )
    return (
        "version: 1\nauth: {mode: open}\nmemory: {enabled: false}\n"
        f"providers:\n  fake: {{kind: openai, base_url: {served_url}/v1}}\n"
        f"  candidate: {{kind: openai, base_url: {candidate_url}/v1}}\n"
        "models:\n  bench:\n    deployments: [{provider: fake, model: fake-model}]\n" + shadow
    )


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        found: dict[str, object] = json.load(resp)
        return found


def answered(gateway_url: str) -> float:
    """Chat requests the gateway answered with 200 (its /metrics)."""
    with urllib.request.urlopen(gateway_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "gateway_requests_total" and labels.get("model") == "bench":
                total += sample.value if labels.get("status_code") == "200" else 0.0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    args = parser.parse_args()
    wrk = ensure_wrk()
    scratch = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    with contextlib.ExitStack() as stack:

        def started(name: str, command: list[str], cpu: int, **env: str) -> Logged:
            proc = launch(command, scratch / f"{name}.log", cpus=str(cpu), cwd=scratch, env=env)
            stack.callback(proc.stop)
            return proc

        fake = started("fake", gateway_command("fake-provider", "--port", "0"), LOAD_CPU)
        candidate = started("candidate", gateway_command("fake-provider", "--port", "0"), LOAD_CPU)
        gateways: dict[str, Logged] = {}
        for name, share in ((SHADOW, args.share), (PLAIN, None)):
            path = scratch / f"{name.replace(' ', '-')}.yaml"
            path.write_text(policy(fake.url, candidate.url, share))
            command = gateway_command("serve", "--policy", str(path), "--port", "0")
            gateways[name] = started(name, command, PROXY_CPU, SOPHIA_ACCESS_LOG="0")
        for gateway in gateways.values():  # warm up: connections open, code paths run
            for _ in range(50):
                post(gateway.url + "/v1/chat/completions", BODY % "bench")
        time.sleep(0.5)
        base_answered = answered(gateways[SHADOW].url)
        base_row = get_json(gateways[SHADOW].url + "/admin/shadow")["data"][0]  # type: ignore[index]
        base_mirrored = base_row["mirrored"] + base_row["dropped"]
        base_candidate = fake_chat_count(candidate.url)

        runs: dict[str, list[dict[str, float]]] = {SHADOW: [], PLAIN: []}
        for round_ in range(args.rounds):
            order = (SHADOW, PLAIN) if round_ % 2 == 0 else (PLAIN, SHADOW)
            for name in order:
                url = gateways[name].url + "/v1/chat/completions"
                result = run_wrk(wrk, url, BODY % "bench", 1, args.duration, LOAD_CPU)
                runs[name].append(result)
                print(f"round {round_ + 1} {name}: p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, "
                      f"{result['rps']:.0f} requests/s", flush=True)  # fmt: skip
        time.sleep(0.5)  # the last mirrors land
        row = get_json(gateways[SHADOW].url + "/admin/shadow")["data"][0]  # type: ignore[index]
        requests = answered(gateways[SHADOW].url) - base_answered
        mirrored = row["mirrored"] + row["dropped"] - base_mirrored
        at_candidate = fake_chat_count(candidate.url) - base_candidate
        errors = sum(r["non_2xx"] + r["socket_errors"] for rs in runs.values() for r in rs)

    p50 = {name: statistics.median(r["p50_ms"] for r in rs) for name, rs in runs.items()}
    p99 = {name: statistics.median(r["p99_ms"] for r in rs) for name, rs in runs.items()}
    share = mirrored / requests if requests else 0.0
    share_ok = abs(share - args.share) * 100 <= TARGET_SHARE_POINTS
    ratio = p50[SHADOW] / p50[PLAIN]
    ratio_ok = ratio <= TARGET_P50_RATIO
    lines = [
        f"Run: `python benchmarks/shadow.py --share {args.share} --rounds {args.rounds} --duration "
        f"{args.duration}` on {platform.node() or 'this machine'} ({time.strftime('%Y-%m-%d')}): two "
        "gateways with the same policy but for `shadow` on the group (share "
        f"{args.share} to a second fake provider, max_in_flight 20), pinned to core 0, fakes and wrk on core 1; "
        f"non-streaming uncacheable chat at 1 connection, {args.rounds} interleaved rounds of "
        f"{args.duration} s each (medians over rounds).",
        "",
        "| gateway | client p50 (ms) | client p99 (ms) | requests/s (median) |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {p50[name]:.3f} | {p99[name]:.3f} | "
            f"{statistics.median(r['rps'] for r in runs[name]):,.0f} |"
            for name in (PLAIN, SHADOW)
        ),
        "",
        f"- Client p50 with shadow / without: **{ratio:.3f}** (p99 {p99[SHADOW] / p99[PLAIN]:.3f}); "
        f"target <= {TARGET_P50_RATIO}: **{'met' if ratio_ok else 'not met'}**.",
        f"- Observed share: {mirrored:,.0f} mirrored (dropped included: {row['dropped']}) of {requests:,.0f} "
        f"requests = **{share * 100:.2f} %** against {args.share * 100:.0f} % set (the candidate fake "
        f"counted {at_candidate:,}); target within +-{TARGET_SHARE_POINTS:.0f} point: "
        f"**{'met' if share_ok else 'not met'}**.",
        f"- Candidate figures (/admin/shadow): ok {row['ok']}, errors {row['errors']}, latency p50 "
        f"{row['latency_ms']['p50']} ms, p95 {row['latency_ms']['p95']} ms; client errors: {errors:.0f}.",
    ]
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
