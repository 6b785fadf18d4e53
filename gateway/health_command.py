"""``sophia-gateway health [--url URL] [--json]``: a running gateway's ``GET /health`` as a table.

Exit status: 0 when every dependency is up or degraded, 1 when one is down (or the gateway can
serve nothing), 2 when the gateway cannot be read. ``$SOPHIA_ADMIN_TOKEN`` is sent when set
(``/health`` is an admin endpoint beyond loopback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

from gateway.admin_client import (
    AdminCallError,
    authorized_request,
    error_message,
    exchange,
    gateway_url,
    note_deprecated,
    printable,
)

_FIXED = ("status", "latency_ms", "changed_at", "detail")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    port = os.environ.get("SOPHIA_PORT") or "8080"
    parser.add_argument(
        "--url",
        type=gateway_url,
        default=f"http://127.0.0.1:{port}",
        help="the gateway (default: http://127.0.0.1:$SOPHIA_PORT, port 8080 when unset)",
    )
    parser.add_argument("--json", action="store_true", help="print /health's JSON as it came")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = fetch(args.url)
    if report is None:
        return 2
    if args.json:
        sys.stdout.write(
            orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
        )
    else:
        print(render(report, args.url, time.time()))
    return 1 if any_down(report) else 0


def fetch(url: str) -> dict[str, Any] | None:
    """``url``/health (a 503 body too: it still is a report), or None after printing why not."""
    try:
        request = authorized_request(url.rstrip("/") + "/health")
    except AdminCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    try:
        answer = exchange(request, 10)  # no redirect: the token goes to --url only
    except AdminCallError as exc:
        print(f"error: cannot read {url}/health: {exc}", file=sys.stderr)
        return None
    note_deprecated(url, answer)
    if answer.status not in (200, 503):  # a 503 body is a report too: the gateway is down
        message = error_message(answer)
        print(f"error: {url}/health answered {answer.status}: {message}", file=sys.stderr)
        return None
    try:
        report: object = orjson.loads(answer.body)
    except ValueError as exc:
        print(f"error: cannot read {url}/health: {exc}", file=sys.stderr)
        return None
    if not is_report(report):
        print(f"error: {url}/health is not a gateway's health report", file=sys.stderr)
        return None
    return report


def is_report(value: object) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` has what ``render`` reads, as a gateway's ``/health`` has: another
    service's JSON (a dependency that is a number, a latency that is text) was a traceback."""
    if not isinstance(value, dict) or not isinstance(value.get("dependencies"), dict):
        return False
    return all(
        isinstance(dep, dict)
        and all(_number_or_none(dep.get(k)) for k in ("latency_ms", "changed_at"))
        and all(_number_or_none(v) for k, v in dep.items() if k.endswith(("_age_s", "_bytes")))
        for dep in value["dependencies"].values()
    )


def _number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def any_down(report: Mapping[str, Any]) -> bool:
    """Whether the gateway, or any of its dependencies, is down."""
    deps = report["dependencies"].values()
    return report.get("status") == "down" or any(d.get("status") == "down" for d in deps)


def render(report: Mapping[str, Any], url: str, now: float) -> str:
    """The report as a table: one row per dependency, figures last."""
    rows = [("DEPENDENCY", "STATUS", "LATENCY", "CHANGED", "DETAIL")]
    for name, dep in report["dependencies"].items():
        latency = dep.get("latency_ms")
        changed = dep.get("changed_at")
        rows.append(
            (
                name,
                str(dep.get("status")),
                "-" if latency is None else _ms(float(latency)),
                "-" if changed is None else _ago(now - float(changed)),
                _detail(dep),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"gateway {url}: {report.get('status')}"]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        )
    # Names and details are the gateway's text (a provider's error may be quoted in a detail):
    # their escape sequences must not act on the operator's terminal.
    return "\n".join(printable(line.rstrip()) for line in lines)


def _detail(dep: Mapping[str, Any]) -> str:
    parts = [str(dep["detail"])] if dep.get("detail") else []
    for key, value in dep.items():
        if key in _FIXED or value is None:
            continue
        if key == "breaker" and str(dep.get("detail") or "").startswith("breaker"):
            continue  # the detail says it already
        if key.endswith("_age_s"):
            parts.append(f"{key.removesuffix('_age_s').replace('_', ' ')} {_ago(float(value))}")
        elif key.endswith("_bytes"):
            parts.append(f"{key.removesuffix('_bytes').replace('_', ' ')} {_size(int(value))}")
        elif isinstance(value, list):
            parts.append(f"{key} {','.join(map(str, value))}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(parts)


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _error_message(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else None
