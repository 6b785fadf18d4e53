"""Benchmark: what the access log costs in instructions, log on against log off, per revision.

``proxy_instructions.py --access-log`` compares two revisions with the log on; this asks the
issue-12 question (the log at most 5 % of a request) of each revision given: callgrind counts the
gateway's instructions per chat completion (``proxy_instructions.measure``: sequential requests on
one keep-alive connection, zero-latency fake upstream, warm-up not counted) with the log on (JSON
lines into a pipe) and off, and prints the difference.

The count with the log on depends on how many lines a batch holds (a batch's timer, flush and
write are paid once per batch, and batches are timed: ``FLUSH_INTERVAL_S``), so on how fast
valgrind runs the gateway: compare revisions in the same run, on a machine equally busy, and
fix ``PYTHONHASHSEED`` (dict layouts move a count by a few thousand instructions).

Run: PYTHONHASHSEED=0 python benchmarks/access_log_instructions.py main HEAD [--requests 300] [--hits]
(a revision, or ``.`` for the working tree).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxy_instructions import HIT_BODY, KINDS, measure  # noqa: E402
from benchmarks.proxy_overhead import extract, policy_text, tree_env  # noqa: E402
from gateway.testing.process import start  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="revisions to measure (``.``: the working tree)")
    parser.add_argument("--requests", type=int, default=300, help="requests counted per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="requests before counting starts")
    parser.add_argument("--hits", action="store_true", help="also count in-process cache hits")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="access-log-instructions-"))
    trees: dict[str, Path] = {}
    for rev in args.revisions:
        if rev == ".":
            trees[rev] = ROOT
        else:
            trees[rev] = scratch / f"tree-{len(trees)}"
            trees[rev].mkdir()
            extract(rev, trees[rev])
    kinds = {"non-streaming": KINDS["non-streaming"]}
    if args.hits:
        kinds["in-process cache hit"] = HIT_BODY % "bench"
    fake = start(["fake-provider", "--port", "0"], env=tree_env(ROOT))
    rows = []
    try:
        policy = scratch / "bench.yaml"
        policy.write_text(policy_text(fake.url) + "memory: {enabled: false}\n")
        for kind, body in kinds.items():
            for rev, tree in trees.items():
                counts = {}
                for on in (True, False):
                    label = f"m{len(rows)}.{int(on)}"
                    total = measure(tree, policy, body, args.requests, args.warmup, scratch, label, on)
                    counts[on] = total / args.requests
                on_, off = counts[True], counts[False]
                rows.append(
                    f"| {kind} | {rev} | {on_:,.0f} | {off:,.0f} | {on_ - off:+,.0f} | {on_ / off - 1:+.2%} |"
                )
                print(rows[-1], flush=True)
    finally:
        fake.stop()
    print("| request | revision | log on | log off | difference | log's cost |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
