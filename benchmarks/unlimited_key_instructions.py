"""Benchmark (h-keyspend): the instructions a call of a key without limits pays for being counted
in ``/admin/usage``, exactly, by callgrind: admission (a ``UsageTicket``), the attempt wrapper
that notes the target a try is under way on (``_noting``: an abandoned whole call is charged),
and the settlement (``gateway_spend_usd_total`` and the key's usage row), in process.

The keyed path alone is run ``--calls`` times and 0 times under ``valgrind --tool=callgrind``;
the difference divided by the calls is its instructions per call (the interpreter's start-up
cancels out). Run it in a tree before the change to see the loop's own count (there admission
returns at once and nothing else runs).

Run: python benchmarks/unlimited_key_instructions.py [--calls 20000] [--cost 0.0001]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Record:
    rate_limits = None


class _Ctx:
    """What ``LimitGate.admit`` and ``_noting`` need of a call's context."""

    __slots__ = ("charge_only", "identity", "limit_ticket", "record", "request_id", "sent_to")


async def _attempt(target: object) -> int:
    return 1


async def _calls(n: int, cost_usd: float) -> None:
    sys.path.insert(0, str(ROOT))
    from gateway.auth.gate import LimitGate
    from gateway.auth.identity import Caller
    from gateway.auth.limits import LocalLimiter
    from gateway.observability.metrics import GatewayMetrics
    from gateway.wire.requests import Endpoint

    try:
        from gateway.service.calls import _noting
    except ImportError:  # (a tree without it: no keyed call is wrapped)
        _noting = None
    gate = LimitGate(LocalLimiter(), GatewayMetrics())
    caller = Caller("key_abcdefghijkl", "blue")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(n):
        ctx = _Ctx()
        ctx.request_id, ctx.identity, ctx.record = "req_abc", caller, _Record()
        ctx.limit_ticket, ctx.charge_only, ctx.sent_to = None, False, None
        await gate.admit(Endpoint.CHAT, "m", body, ctx)  # type: ignore[arg-type]
        fetch = _attempt
        if ctx.limit_ticket is not None and _noting is not None:
            fetch = _noting(ctx, fetch)  # type: ignore[arg-type]
        await fetch(None)
        if ctx.limit_ticket is not None:
            ctx.limit_ticket.settle_later(10, 20, cost_usd)


def _collected(calls: int, cost_usd: float) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/cg.out",
                sys.executable,
                __file__,
                "--run",
                str(calls),
                "--cost",
                str(cost_usd),
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
            timeout=1200,
        )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise SystemExit(f"no callgrind total in: {out.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--cost", type=float, default=0.0001, help="each call's cost (0: no spend metric)")
    parser.add_argument("--run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        asyncio.run(_calls(args.run, args.cost))
        return 0
    per_call = (_collected(args.calls, args.cost) - _collected(0, args.cost)) / args.calls
    print(f"{per_call:,.0f} instructions per call of a key without limits (cost {args.cost})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
