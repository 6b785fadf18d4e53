"""Loading a big policy file: time and peak memory of ``load_policy`` on 20,000 model groups.

What ``policy check``, ``serve`` at start-up and every reload (the watcher, SIGHUP, ``POST
/admin/policy/reload``) run. The file is generated: ``--groups`` groups of two deployments each
(one with a price and quality, one with a context window), in block style with flow mappings, as
people write them, about 4.6 MB for 20,000 groups.

Each measurement runs in a fresh Python process (peak RSS is a whole-process figure) that imports
the ``gateway`` package of this tree ("after") or of ``--baseline REF`` ("before": ``git archive``
of that revision's ``gateway/`` into a temporary directory), then loads the file once and reports
the wall time of ``load_policy`` and its peak RSS above the process before the load (VmHWM minus
VmRSS, from /proc/self/status). Before and after alternate, ``--rounds`` times each; the medians
and their ratio go to RESULTS.md. Not a timed test: the figures depend on the machine.

Run: python benchmarks/policy_check.py [--groups 20000] [--rounds 1] [--baseline ad707f9]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import write_section

ROOT = Path(__file__).resolve().parents[1]

# Runs in the measuring process: argv[1] the directory holding ``gateway``, argv[2] the file.
_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

from gateway.policy.loader import load_policy
import yaml
before = status("VmRSS")
start = time.perf_counter()
policy = load_policy(sys.argv[2])
took = time.perf_counter() - start
print(json.dumps({"s": took, "peak_bytes": status("VmHWM") - before, "groups": len(policy.models),
                  "libyaml": bool(getattr(yaml, "__with_libyaml__", False))}))
"""


def policy_text(groups: int) -> str:
    """A valid policy of ``groups`` model groups, two deployments each."""
    lines = [
        "version: 1",
        "providers:",
        "  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}",
        "  local: {kind: openai, base_url: http://127.0.0.1:8000/v1}",
        "models:",
    ]
    for i in range(groups):
        lines += [
            f"  group-{i:05d}:",
            "    strategy: score",
            "    deployments:",
            f"      - {{provider: openai, model: gpt-4o-{i}, price: {{input_per_mtok: 2.5, "
            "output_per_mtok: 10}, quality: 0.8}",
            f"      - {{provider: local, model: llama-{i}, context_window: 8192}}",
        ]
    return "\n".join(lines) + "\n"


def baseline_tree(ref: str, into: Path) -> Path:
    """``gateway/`` as of ``ref``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "gateway"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(tree: Path, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(path)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", default="ad707f9", help="the revision measured as before")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "gateway"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    revision += " with changes not committed" if changed else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(policy_text(args.groups))
        before_tree = baseline_tree(args.baseline, Path(tmp) / "before")
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for name, tree in (("before", before_tree), ("after", ROOT)):
                runs[name].append(measure(tree, path))
                print(f"round {i + 1} {name}: {runs[name][-1]}", flush=True)
        size_mb = path.stat().st_size / 1e6
    med = {
        name: (
            statistics.median(r["s"] for r in results),
            statistics.median(r["peak_bytes"] for r in results) / 2**20,
        )
        for name, results in runs.items()
    }
    (b_s, b_mb), (a_s, a_mb) = med["before"], med["after"]
    body = "\n".join(
        [
            f"`python benchmarks/policy_check.py --groups {args.groups} --rounds {args.rounds} "
            f"--baseline {args.baseline}` on {platform.python_version()}, {revision} against "
            f"{args.baseline} (libyaml: {bool(runs['after'][0]['libyaml'])}); a generated policy of "
            f"{args.groups:,} groups, two deployments each ({size_mb:.1f} MB); each load in a fresh "
            "process, before and after alternating, medians. Shared machine (2 cores, other "
            "sessions running): the ratio is the figure to read.",
            "",
            "| | load_policy | peak RSS above the process before |",
            "| --- | --- | --- |",
            f"| before ({args.baseline}) | {b_s:.1f} s | {b_mb:.0f} MiB |",
            f"| after ({revision}) | {a_s:.1f} s | {a_mb:.0f} MiB |",
            f"| after / before | {a_s / b_s:.2f} | {a_mb / b_mb:.2f} |",
            "",
            "Before: the YAML parsed twice with PyYAML's pure-Python parser (nodes for lines and "
            "hints, then the data), the garbage collector's full passes over the growing "
            "objects, and `model_fields` looked up per mapping. After: parsed once into nodes "
            "with libyaml (`yaml.CSafeLoader`), the data constructed from those nodes, the "
            "collector paused while parsing, the alias walk skipped for a file without anchors.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("Policy check: a 20,000-group policy file (eighteenth round)", body)


if __name__ == "__main__":
    main()
