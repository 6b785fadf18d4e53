"""Run the gateway process: bind, serve, and drain on SIGTERM/SIGINT.

On a signal the gateway stops accepting connections, reports not-ready, lets in-flight requests
(streams included) finish for up to the drain grace period, closes provider sessions and exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable

from aiohttp import web

from gateway import keys
from gateway.errors import StartupError
from gateway.http.auth import is_loopback
from gateway.http.connection import GatewayRunner
from gateway.observability.stderr import announce
from gateway.policy.model import Policy

# The shortest SOPHIA_ADMIN_TOKEN a gateway listening beyond loopback starts with (h-sec).
MIN_ADMIN_TOKEN_CHARS = 16

log = logging.getLogger("gateway.server")

# aiohttp's default (8,190) would answer a 10 KB Authorization header itself with a 400; at
# 16 KiB it reaches the edge's checks, which refuse it as every bad credential is (401).
MAX_HEADER_FIELD_BYTES = 16384
# gc thresholds after start-up (CPython's default: 700, 10, 10): see _serve.
GC_THRESHOLDS = (50_000, 20, 10)
# Open descriptors below which ``serve`` warns at start-up: every client connection and every
# upstream connection is one, and a process out of them resets the connections it cannot accept
# (libuv's EMFILE handling) without a line in any log.
LOW_OPEN_FILES = 4096
# macOS refuses a soft limit above OPEN_MAX (10,240) when the hard limit is unlimited.
_OPEN_MAX = 10240


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where it is installed (Linux), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(
    app: web.Application,
    host: str,
    port: int,
    *,
    allow_open: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then drain; return the exit code.

    Alone, it prints ``sophia-gateway listening on URL`` once bound; a worker of ``serve
    --workers N`` (``settings.worker`` set) binds with SO_REUSEPORT, serves its Unix socket too,
    and calls ``on_ready(url)`` instead, for its parent to print one line for the set.

    Raises ``StartupError`` when the address cannot be bound or a resource refuses to start
    (whatever had started is closed first), and when ``auth.mode: open`` would listen beyond
    loopback without ``allow_open``."""
    settings = app[keys.SETTINGS]
    check_open(
        app[keys.POLICY],
        host,
        allow_open,
        settings.admin_token,
        settings.metrics_token,
        admin_token_previous=settings.admin_token_previous,
        metrics_token_previous=settings.metrics_token_previous,
    )
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(app, host, port, on_ready))


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the soft limit on open descriptors to the hard limit, as Go's runtime and nginx
    (``worker_rlimit_nofile``) do: Docker, systemd and most shells start a process at a soft 1,024
    under a hard limit hundreds of times larger, and a gateway holds two descriptors per request
    in flight (the client's and the upstream's). (the limit before, the limit now), or None where
    there are no resource limits (not Unix). Called by each serving process (every worker of
    ``serve --workers``) before it accepts a connection; never raises (a refused raise keeps the
    limit there was)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no resource module
        return None
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == infinity or (hard != infinity and soft >= hard):
        return soft, soft
    for want in (hard, _OPEN_MAX) if hard != infinity else (_OPEN_MAX,):
        if want <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            continue
        return soft, want
    return soft, soft


def check_open(
    policy: Policy,
    host: str,
    allow_open: bool,
    admin_token: str | None = None,
    metrics_token: str | None = None,
    *,
    admin_token_previous: str | None = None,
    metrics_token_previous: str | None = None,
) -> None:
    """StartupError when ``auth.mode: open`` would listen beyond loopback without ``allow_open``,
    or ``admin_token`` (``SOPHIA_ADMIN_TOKEN``), ``metrics_token`` (``SOPHIA_METRICS_TOKEN``) or
    the previous token of either (``..._PREVIOUS``, accepted as well while clients rotate) is
    shorter than ``MIN_ADMIN_TOKEN_CHARS`` there."""
    if is_loopback(host):
        return
    if policy.auth.mode == "open" and not allow_open:
        raise StartupError(
            f"auth.mode is open and {host or 'every interface'} is not loopback: anyone who reaches it "
            "could spend the provider keys; use auth.mode: keys, bind 127.0.0.1, or pass --allow-open"
        )
    # The admin API mints keys and reloads the policy, and nothing slows a caller guessing at it
    # but the throttle: a token such as "admin" or "secret" falls to the first list of common
    # words. A token set to close /metrics that a first guess opens closes nothing. A previous
    # token opens the same door as the current one, so it is held to the same length.
    for name, token, door in (
        ("SOPHIA_ADMIN_TOKEN", admin_token, "the admin API"),
        ("SOPHIA_ADMIN_TOKEN_PREVIOUS", admin_token_previous, "the admin API"),
        ("SOPHIA_METRICS_TOKEN", metrics_token, "/metrics"),
        ("SOPHIA_METRICS_TOKEN_PREVIOUS", metrics_token_previous, "/metrics"),
    ):
        if token is not None and len(token) < MIN_ADMIN_TOKEN_CHARS:
            raise StartupError(
                f"{name} is {len(token)} characters long and {host or 'every interface'} is not "
                f"loopback: anyone who reaches {door} could guess it; use at least "
                f"{MIN_ADMIN_TOKEN_CHARS} random characters (openssl rand -hex 32), or bind 127.0.0.1"
            )


async def _serve(
    app: web.Application, host: str, port: int, on_ready: Callable[[str], None] | None = None
) -> int:
    settings = app[keys.SETTINGS]
    open_files = raise_open_file_limit()  # before the first connection is accepted
    grace_s = settings.drain_grace_s if settings.drain_grace_s is not None else 30.0
    server = app[keys.POLICY].server
    runner = GatewayRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=grace_s,
        keepalive_timeout=server.keepalive_timeout_s,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        # Request bodies are read as sent: aiohttp would inflate a gzip or deflate body as it
        # arrives, and drain a refused one through the inflater (a 1 MB deflate body of 1 GB cost
        # 1.7 s of CPU and +116 MB); ``read_json`` and uploads refuse compressed bodies (415).
        auto_decompress=False,
        request_read_timeout_s=server.request_read_timeout_s,
        response_write_timeout_s=server.response_write_timeout_s,
        # Draining the unread body of a refused request (so the client reads the answer, not a
        # reset) is reading the request too: bounded by the same timeout (aiohttp: 10 s).
        lingering_time=min(10.0, server.request_read_timeout_s),
    )
    try:
        # Inside the try: when one resource fails to start, cleanup closes those already started.
        await runner.setup()
        worker = settings.worker
        site = web.TCPSite(
            runner, host, port, backlog=1024, shutdown_timeout=grace_s, reuse_port=worker is not None
        )
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(cannot_listen(host, port, exc)) from None
        if worker is not None:
            await web.UnixSite(runner, worker.socket_path(worker.index), shutdown_timeout=grace_s).start()
        # Everything built at start-up lives as long as the process: move it out of the
        # collector's reach, so full collections scan only per-request garbage (p99 pauses).
        gc.collect()
        gc.freeze()
        # A young collection every 700 container allocations ran every ~20 requests, scanning
        # the objects of the requests in flight; most die by reference counting long before.
        gc.set_threshold(*GC_THRESHOLDS)
        # Before the listening line: a SIGTERM sent as soon as it is read must drain, not kill.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, app[keys.POLICY_CONTROL].reload_soon, "signal")
        bound = ", ".join(f"http://{h}:{p}" for h, p in _bound_addresses(runner))
        fields: dict[str, object] = {"address": bound, "policy": settings.policy_path}
        if open_files is not None:
            fields["open_files"] = open_files[1]  # the limit on open descriptors, raised
        log.info("listening", extra={"fields": fields})
        if (
            open_files is not None
            and open_files[1] < LOW_OPEN_FILES
            and (worker is None or worker.index == 0)
        ):
            log.warning(
                "open file limit is low: past it, new connections are reset without an answer; "
                "raise the hard limit (ulimit -Hn, systemd LimitNOFILE, docker run --ulimit nofile=65536)",
                extra={"fields": {"limit": open_files[1], "recommended": LOW_OPEN_FILES}},
            )
        if on_ready is None:
            announce(f"sophia-gateway listening on {bound}")
        else:
            on_ready(bound)
        await stop.wait()
        app[keys.LIFECYCLE].draining = True
        log.info("draining", extra={"fields": {"grace_s": grace_s}})
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """The ``cannot start`` line for a bind that failed: what to do about it."""
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is already in use (another gateway still running?); stop that "
            "process or choose another port with --port or SOPHIA_PORT"
        )
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied; choose a port from 1024 up with --port or SOPHIA_PORT"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return (
            f"{where}: {host} is not an address of this machine; set --host or SOPHIA_HOST "
            "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)"
        )
    return f"{where}: {exc.strerror or exc}"


def _bound_addresses(runner: web.AppRunner) -> list[tuple[str, int]]:
    out = []
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            out.append((str(address[0]), int(address[1])))
    return out
