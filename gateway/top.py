"""``sophia-gateway top``: a live terminal view of a running gateway, for whoever has no Grafana.

Three steps, each testable alone, and a loop around them:

    scrape(url, token)         -> Scrape    GET /metrics (Prometheus text) and GET /admin/models
    figures(before, after)     -> Figures   rates over the interval between two scrapes: requests/s,
                                            p50/p99 from the latency histogram's bucket deltas,
                                            error (5xx and failed streams), fallback and cache
                                            hit rates, per deployment
                                            its requests/s, share, score, latency and breaker
    render(figures)            -> a rich renderable (tables)
    run(url, interval_s, ...)     scrape every interval, redraw (rich ``Live``)

Only the client API's requests (paths under ``/v1/``) count as traffic: the view's own scrapes,
health probes and admin calls do not. Reads the metrics the gateway defines in
``observability/metrics.py``; the names it reads are the constants below.
"""

from __future__ import annotations

import io
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gateway.admin_client import AdminCallError, exchange, quoted
from gateway.settings import TOKEN_DEPRECATED_HEADER

REQUESTS = "gateway_requests_total"
DURATION_BUCKET = "gateway_request_duration_seconds_bucket"
FALLBACKS = "gateway_fallbacks_total"
CACHE_REQUESTS = "gateway_cache_requests_total"
UPSTREAM_REQUESTS = "gateway_upstream_requests_total"
STREAM_ERRORS = "gateway_stream_errors_total"
IN_FLIGHT = "gateway_requests_in_flight"

Labels = Mapping[str, str]


class Unreachable(Exception):
    """The gateway did not answer (the message is one line: where and why)."""


@dataclass(frozen=True)
class Scrape:
    """One look at the gateway: its samples by name, its ``/admin/models`` view (None when the
    admin API refused), and when (``time.monotonic()``)."""

    samples: Mapping[str, list[tuple[Labels, float]]]
    models: Mapping[str, Any] | None
    at_s: float
    admin_error: str | None = None
    # The tokens the gateway let in as previous ones (x-gateway-token-deprecated): the variables
    # to update before the operator removes them (``SOPHIA_METRICS_TOKEN``, ``SOPHIA_ADMIN_TOKEN``)
    deprecated: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        text: str,
        models: Mapping[str, Any] | None,
        at_s: float,
        admin_error: str | None = None,
        deprecated: tuple[str, ...] = (),
    ) -> Scrape:
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
        return cls(samples, models, at_s, admin_error, deprecated)

    def total(self, name: str, keep: Callable[[Labels], bool] = lambda _: True) -> float:
        return sum(value for labels, value in self.samples.get(name, ()) if keep(labels))

    def by(
        self, name: str, keys: tuple[str, ...], keep: Callable[[Labels], bool] = lambda _: True
    ) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for labels, value in self.samples.get(name, ()):
            if keep(labels):
                key = tuple(labels.get(k, "") for k in keys)
                out[key] = out.get(key, 0.0) + value
        return out


@dataclass(frozen=True)
class DeploymentRow:
    group: str
    provider: str
    model: str
    requests_per_s: float
    errors_per_s: float
    share: float | None
    score: float | None
    latency_ms: float | None
    breaker: str


@dataclass(frozen=True)
class Figures:
    """What the screen shows, over ``interval_s`` seconds between two scrapes."""

    interval_s: float
    requests: float  # client API requests answered in the interval
    requests_per_s: float
    p50_s: float | None
    p99_s: float | None
    # (5xx + streams failed after their first byte, which were answered 200) / requests
    error_rate: float | None
    client_error_rate: float | None  # 4xx / requests
    fallback_rate: float | None  # fallbacks / requests
    cache_hit_rate: float | None  # hit / (hit + miss)
    in_flight: float
    deployments: list[DeploymentRow] = field(default_factory=list)
    admin_error: str | None = None
    deprecated: tuple[str, ...] = ()  # ``Scrape.deprecated`` of the later look


def _client_api(labels: Labels) -> bool:
    """The client API's endpoints: OpenAI's and Anthropic's under /v1/, Azure OpenAI's under
    /openai/ (a gateway serving only the Azure SDK showed no traffic: an outside probe)."""
    return labels.get("endpoint", "").startswith(("/v1/", "/openai/"))


def _increase(after: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    """Counter increases per key; a counter that went down was reset (a restart): its new value."""
    out = {}
    for key, value in after.items():
        previous = before.get(key, 0.0)
        out[key] = value - previous if value >= previous else value
    return out


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile from cumulative bucket counts (upper bound -> count), interpolated
    linearly inside its bucket as Prometheus' ``histogram_quantile`` does; None without data."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the open-ended bucket: its lower bound, as Prometheus answers
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def figures(before: Scrape, after: Scrape) -> Figures:
    """The figures of the interval between two scrapes of the same gateway."""
    interval_s = max(after.at_s - before.at_s, 1e-9)
    by_status = _increase(
        after.by(REQUESTS, ("status_code",), _client_api), before.by(REQUESTS, ("status_code",), _client_api)
    )
    requests = sum(by_status.values())
    server_errors = sum(n for (status,), n in by_status.items() if status.startswith("5"))
    client_errors = sum(n for (status,), n in by_status.items() if status.startswith("4"))
    # A stream its provider failed after the first byte is a 200 in the status counts: an error all
    # the same, as in the dashboard's error ratio (a client that left is not one).
    failed_streams = sum(
        _increase(
            after.by(STREAM_ERRORS, ("endpoint", "model", "provider", "reason"), _client_api),
            before.by(STREAM_ERRORS, ("endpoint", "model", "provider", "reason"), _client_api),
        ).values()
    )
    buckets = _increase(
        after.by(DURATION_BUCKET, ("le",), _client_api), before.by(DURATION_BUCKET, ("le",), _client_api)
    )
    cumulative = {float(le): n for (le,), n in buckets.items()}
    fallbacks = after.total(FALLBACKS) - before.total(FALLBACKS)
    cache = _increase(after.by(CACHE_REQUESTS, ("result",)), before.by(CACHE_REQUESTS, ("result",)))
    hits, misses = cache.get(("hit",), 0.0), cache.get(("miss",), 0.0)
    return Figures(
        interval_s=interval_s,
        requests=requests,
        requests_per_s=requests / interval_s,
        p50_s=histogram_quantile(0.5, cumulative),
        p99_s=histogram_quantile(0.99, cumulative),
        error_rate=_ratio(server_errors + failed_streams, requests),
        client_error_rate=_ratio(client_errors, requests),
        fallback_rate=_ratio(max(fallbacks, 0.0), requests),
        cache_hit_rate=_ratio(hits, hits + misses),
        # (less top's own scrape, in flight while the gateway answers it)
        in_flight=max(after.total(IN_FLIGHT) - 1.0, 0.0),
        deployments=_deployments(before, after, interval_s),
        admin_error=after.admin_error,
        deprecated=after.deprecated,
    )


def _deployments(before: Scrape, after: Scrape, interval_s: float) -> list[DeploymentRow]:
    keys = ("provider", "upstream_model", "outcome")
    upstream = _increase(after.by(UPSTREAM_REQUESTS, keys), before.by(UPSTREAM_REQUESTS, keys))
    rows: list[DeploymentRow] = []
    seen: set[tuple[str, str]] = set()
    groups: Mapping[str, Any] = (after.models or {}).get("models", {})
    for group, view in groups.items():
        for dep in view.get("deployments", []):
            provider, model = dep["provider"], dep["model"]
            seen.add((provider, model))
            ok, bad = (
                upstream.get((provider, model, "success"), 0.0),
                upstream.get((provider, model, "error"), 0.0),
            )
            rows.append(
                DeploymentRow(
                    group,
                    provider,
                    model,
                    (ok + bad) / interval_s,
                    bad / interval_s,
                    dep.get("share"),
                    dep.get("score"),
                    (dep.get("stats") or {}).get("latency_ms"),
                    dep.get("breaker", "?"),
                )
            )
    # Without the admin view (refused), the metrics still say each deployment's traffic.
    for provider, model in sorted({(p, m) for p, m, _ in upstream} - seen):
        ok, bad = (
            upstream.get((provider, model, "success"), 0.0),
            upstream.get((provider, model, "error"), 0.0),
        )
        rows.append(
            DeploymentRow(
                "", provider, model, (ok + bad) / interval_s, bad / interval_s, None, None, None, "?"
            )
        )
    return rows


# ----- rendering

_BREAKER_STYLE = {"closed": "green", "half-open": "yellow", "open": "bold red"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _shown(value: str, max_chars: int = 80) -> Text:
    """A name the watched gateway sent, as plain text: never rich markup (``[red]``, ``[link=...]``
    in a group name styled or linked its row) nor a terminal's control sequence (escaped as
    ``\\x1b``), and at most ``max_chars`` characters."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value[: max_chars + 1])
    return Text(text if len(text) <= max_chars else text[: max_chars - 1] + "…")


def render(f: Figures, url: str = "") -> RenderableType:
    """The screen for ``f`` (``url``: the gateway watched, for the title)."""
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column(justify="left")
    head.add_row(
        f"requests/s [bold]{f.requests_per_s:.1f}[/]",
        f"p50 [bold]{_ms(f.p50_s)}[/]",
        f"p99 [bold]{_ms(f.p99_s)}[/]",
        f"in flight [bold]{f.in_flight:.0f}[/]",
    )
    head.add_row(
        f"errors (5xx, failed streams) [bold]{_pct(f.error_rate)}[/]",
        f"4xx [bold]{_pct(f.client_error_rate)}[/]",
        f"fallbacks [bold]{_pct(f.fallback_rate)}[/]",
        f"cache hits [bold]{_pct(f.cache_hit_rate)}[/]",
    )
    deployments = Table(title="deployments", title_justify="left", expand=False)
    for name, justify in (
        ("group", "left"),
        ("deployment", "left"),
        ("req/s", "right"),
        ("err/s", "right"),
        ("share", "right"),
        ("score", "right"),
        ("latency", "right"),
        ("breaker", "left"),
    ):
        deployments.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in f.deployments:
        deployments.add_row(
            _shown(row.group or "-"),
            _shown(f"{row.provider}/{row.model}"),
            f"{row.requests_per_s:.1f}",
            f"{row.errors_per_s:.1f}",
            _pct(row.share),
            "-" if row.score is None else f"{row.score:.3f}",
            "-" if row.latency_ms is None else f"{row.latency_ms:.0f} ms",
            Text(row.breaker, style=_BREAKER_STYLE.get(row.breaker, "")),
        )
    title = Text.assemble(("sophia-gateway top", "bold"), f"  {url}  (last {f.interval_s:.1f} s)")
    parts: list[RenderableType] = [title, head, deployments]
    if f.admin_error:
        parts.append(Text(f"deployment figures unavailable: {f.admin_error}", style="yellow"))
    for name in f.deprecated:
        parts.append(
            Text(
                f"{name} is the gateway's previous token, being rotated out: set the new one", style="yellow"
            )
        )
    return Group(*parts)


# ----- fetching and the loop


def _get(url: str, token: str | None, timeout_s: float) -> tuple[int, bytes, bool]:
    """(status, body, whether the gateway let ``token`` in as a previous one)."""
    request = urllib.request.Request(url)
    if token:  # unredirected, and no redirect followed: the token goes to --url only
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        answer = exchange(request, timeout_s)  # bounded as a whole, in time and size
    except AdminCallError as exc:
        raise Unreachable(str(exc)) from None
    return answer.status, answer.body, answer.headers.get(TOKEN_DEPRECATED_HEADER) == "true"


def scrape(
    url: str,
    token: str | None = None,
    timeout_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    metrics_token: str | None = None,
) -> Scrape:
    """GET ``url``/metrics (with ``metrics_token``, ``SOPHIA_METRICS_TOKEN``, when given) and
    ``url``/admin/models (with ``token``); ``Unreachable`` if the gateway does not answer."""
    base = url.rstrip("/")
    status, body, metrics_deprecated = _get(base + "/metrics", metrics_token, timeout_s)
    at_s = clock()
    if status == 401:
        raise Unreachable(
            f"{base}/metrics answered 401: set SOPHIA_METRICS_TOKEN to the gateway's metrics token"
        )
    if status != 200:
        raise Unreachable(f"{base}/metrics answered HTTP {status}")
    admin_status, admin_body, admin_deprecated = _get(base + "/admin/models", token, timeout_s)
    deprecated = tuple(
        name
        for name, used in (
            ("SOPHIA_METRICS_TOKEN", metrics_deprecated),
            ("SOPHIA_ADMIN_TOKEN", admin_deprecated),
        )
        if used
    )
    models: Mapping[str, Any] | None = None
    admin_error = None
    if admin_status == 200:
        models = _model_view(admin_body)
        if models is None:
            admin_error = "/admin/models did not answer a gateway's model view"
    elif admin_status in (401, 403):
        admin_error = (
            f"/admin/models answered {admin_status}: set SOPHIA_ADMIN_TOKEN to the gateway's admin token"
        )
    else:
        admin_error = f"/admin/models answered HTTP {admin_status}"
    try:
        parsed = Scrape.parse(body.decode(), models, at_s, admin_error, deprecated)
    except ValueError:  # UnicodeDecodeError too: a page, not Prometheus text
        parsed = None
    if parsed is None or IN_FLIGHT not in parsed.samples:
        raise Unreachable(f"{base}/metrics is not a gateway's metrics: is --url {quoted(base)} the gateway?")
    return parsed


def _model_view(body: bytes) -> Mapping[str, Any] | None:
    """``/admin/models``' view if ``body`` has what ``_deployments`` reads, else None (another
    service's JSON, or none, was a traceback)."""
    try:
        view: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(view, dict) or not isinstance(groups := view.get("models"), dict):
        return None
    for group in groups.values():
        deps = group.get("deployments", []) if isinstance(group, dict) else None
        if not isinstance(deps, list) or not all(
            isinstance(d, dict)
            and isinstance(d.get("provider"), str)
            and isinstance(d.get("model"), str)
            and isinstance(d.get("stats") or {}, dict)
            for d in deps
        ):
            return None
    return view


def run(
    url: str,
    interval_s: float = 1.0,
    token: str | None = None,
    console: Console | None = None,
    frames: int | None = None,
    metrics_token: str | None = None,
) -> int:
    """Redraw every ``interval_s`` until interrupted (or ``frames`` screens); the exit code: 0,
    or 2 with one line on stderr when the gateway cannot be reached."""
    console = console or Console()
    try:
        before = scrape(url, token, metrics_token=metrics_token)
        with Live(
            Text(f"sophia-gateway top  {url}  (first figures in {interval_s:g} s)"),
            console=console,
            auto_refresh=False,
        ) as live:
            shown = 0
            while frames is None or shown < frames:
                time.sleep(interval_s)
                after = scrape(url, token, metrics_token=metrics_token)
                live.update(render(figures(before, after), url), refresh=True)
                before = after
                shown += 1
    except Unreachable as exc:
        print(f"sophia-gateway top: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def screen_text(f: Figures, url: str = "", width: int = 100) -> str:
    """The screen as plain text (for tests and the README)."""
    console = Console(record=True, width=width, color_system=None, force_terminal=False, file=io.StringIO())
    console.print(render(f, url))
    return console.export_text()


def rows_by_name(rows: Iterable[DeploymentRow]) -> dict[str, DeploymentRow]:
    """``provider/model`` -> its row (the first one, if several groups list it)."""
    out: dict[str, DeploymentRow] = {}
    for row in rows:
        out.setdefault(f"{row.provider}/{row.model}", row)
    return out
