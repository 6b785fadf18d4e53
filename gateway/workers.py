"""``sophia-gateway serve --workers N``: N processes on one port, supervised by a parent.

Each worker is a fork of the parent made before any event loop or thread exists; it builds its
own app and event loop (uvloop) and binds the port with SO_REUSEPORT, so the kernel spreads new
connections over the workers. Worker ``i`` also serves the app on ``run_dir/worker-i.sock``, a
Unix socket in a private per-run directory, where the worker that gets a ``/metrics`` scrape asks
the others for theirs (``api/health.py``).

The parent only supervises: it holds the port (a bound, non-listening SO_REUSEPORT socket, so
``--port 0`` names one port for every worker and a restarted worker gets the same one), prints
one ``listening`` line once every worker is ready, restarts a worker that dies (after 0.5 s,
doubling up to 30 s while it keeps dying, back to 0.5 s once it stayed up 30 s), and on SIGTERM
or SIGINT sends SIGTERM to every worker, waits for each to drain, and exits 0. SIGHUP is passed
to every worker, each of which reloads the policy file (a restarted worker reads the file as it
is when it starts, not the policy the parent first loaded). A worker that
exits before it is ready during the first start stops the whole set with its exit code (it has
printed its own ``cannot start`` line).

Linux only: elsewhere SO_REUSEPORT does not spread connections (``serve`` refuses N > 1).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import math
import os
import re
import selectors
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StartupError
from gateway.observability import worker_totals
from gateway.observability.stderr import announce
from gateway.server import cannot_listen
from gateway.settings import WorkerSlot

log = logging.getLogger("gateway.workers")

# ``serve`` refuses more workers than this a core (a typo like 99999 forked until the host ran
# out of memory): one a core serves best; a few more only cost memory.
MAX_WORKERS_A_CORE = 8
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a worker up this long has its restart delay reset
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1

# Runs a worker in the forked child: (slot, port, ready) -> exit code; ``ready(url)`` tells the
# parent the worker listens.
WorkerMain = Callable[[WorkerSlot, int, Callable[[str], None]], int]


def available_cores(proc: Path = Path("/proc/self")) -> int:
    """The cores this process may use, for ``--workers auto``: the CPUs it may run on (its
    affinity: ``taskset``, cgroup cpusets), and no more than its cgroups' CPU limit rounded up (a
    container's ``--cpus``, a Kubernetes CPU limit): on a 64-core node a pod limited to 2 CPUs
    gets 2 workers, not 64 throttled ones (Go's runtime sizes GOMAXPROCS the same way)."""
    # (os.cpu_count() where there is no affinity call: not Linux, where --workers N is refused)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(proc)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def cgroup_cpu_limit(proc: Path = Path("/proc/self")) -> float | None:
    """The CPUs' worth of time this process's cgroups allow (quota / period), or None when none
    is set or none can be read.

    Both cgroup versions are read (a hybrid host mounts v1's ``cpu`` controller beside v2): v2's
    ``cpu.max`` (``max 100000`` or ``200000 100000``), v1's ``cpu.cfs_quota_us`` (-1: none) over
    ``cpu.cfs_period_us``. The process's cgroup (``/proc/self/cgroup``) is found under its
    hierarchy's mount (``/proc/self/mountinfo``: a container sees its own cgroup as the mount's
    root), and the smallest limit from there up to the mount counts, since a parent's limit
    binds its children.
    """
    try:
        cgroups = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in cgroups:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = True
        elif "cpu" in controllers.split(","):
            v2 = False
        else:
            continue
        for mount_root, mount_point in _cgroup_mounts(mounts, v2):
            relative = os.path.relpath(path, mount_root)
            if relative == ".." or relative.startswith("../"):
                continue  # the process's cgroup is not under this mount
            directory = Path(mount_point, relative)
            while True:
                found = _v2_limit(directory) if v2 else _v1_limit(directory)
                if found is not None:
                    limits.append(found)
                if directory == Path(mount_point) or directory == directory.parent:
                    break
                directory = directory.parent
    return min(limits) if limits else None


def _cgroup_mounts(mountinfo: list[str], v2: bool) -> Iterator[tuple[str, str]]:
    """(root, mount point) of each mount of the cgroup2 hierarchy, or of v1's ``cpu`` controller."""
    for line in mountinfo:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or dash < 5:
            continue
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if (fstype == "cgroup2") if v2 else (fstype == "cgroup" and "cpu" in options):
            yield _unescape(fields[3]), _unescape(fields[4])


def _unescape(field: str) -> str:
    # mountinfo writes a space, tab, newline and backslash in a path as octal escapes (\040).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
        return int(quota) / int(period or "100000") if quota != "max" and int(quota) > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def check_supported() -> None:
    """StartupError where several workers cannot share a port (SO_REUSEPORT spreads connections
    over the listening sockets only on Linux)."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("--workers above 1 needs Linux (SO_REUSEPORT); run one process per port instead")


@dataclass
class _Worker:
    slot: WorkerSlot
    pid: int | None = None
    started_at: float = 0.0
    ready: bool = False
    delay_s: float = RESTART_FIRST_S
    restart_at: float | None = None


RUN_DIR_PREFIX = "sophia-workers-"
# A lock file in each run directory, locked (flock) by the set's parent for its life and by its
# workers, who inherit the descriptor over fork: once it can be locked, nobody uses the directory.
_OWNER = "owner.lock"


# A Unix socket's path is at most 107 bytes (``sun_path`` with its NUL); the workers' sockets are
# ``<parent>/sophia-workers-XXXXXXXX/worker-N.sock``.
_SOCKET_PATH_MAX = 107
_SOCKET_TAIL = len(RUN_DIR_PREFIX) + 8 + len("//worker-9999.sock")
_SHORT_PARENT = "/tmp"


def run_parent() -> str:
    """Where a set's run directory goes: the temporary directory (``TMPDIR``), unless the
    workers' socket paths under it would be too long for a Unix socket (a deep ``TMPDIR``: each
    worker failed to bind, ``AF_UNIX path too long``, and the set never served); then ``/tmp``."""
    parent = tempfile.gettempdir()
    if len(os.fsencode(parent)) + _SOCKET_TAIL <= _SOCKET_PATH_MAX or not os.path.isdir(_SHORT_PARENT):
        return parent
    return _SHORT_PARENT


def claim_run_dir() -> tuple[str, int]:
    """A new private run directory (mode 0700) and the descriptor holding its owner lock."""
    run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=run_parent())
    if len(os.fsencode(run_dir)) + len("/worker-9999.sock") > _SOCKET_PATH_MAX:
        os.rmdir(run_dir)
        raise SystemExit(
            f"error: the workers' run directory {run_dir} is too long a path for their Unix sockets "
            f"(at most {_SOCKET_PATH_MAX} bytes): set TMPDIR to a shorter directory"
        )
    # Locked under another name, then renamed: a sweep never sees the owner file unlocked.
    claiming = os.path.join(run_dir, _OWNER + ".new")
    fd = os.open(claiming, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(claiming, os.path.join(run_dir, _OWNER))
    return run_dir, fd


def sweep_stale_run_dirs(parent: str | None = None) -> list[str]:
    """Remove the run directories of worker sets that are gone (a parent SIGKILLed, OOM-killed or
    lost with its machine leaves its directory behind; a set that stops removes its own); the
    paths removed. A directory is removed only when it is this user's own (not a symlink) and its
    owner lock can be taken: no parent or worker of its set is alive. One without an owner file
    (being created, or made by a version before the lock) is left alone."""
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(RUN_DIR_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, _OWNER), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, another user's, no owner file
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: the set is alive
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


class Supervisor:
    """Starts ``count`` workers running ``main`` on ``host:port`` and keeps them running."""

    def __init__(self, count: int, host: str, port: int, main: WorkerMain, grace_s: float) -> None:
        self._count = count
        self._host = host
        self._port = port
        self._main = main
        self._grace_s = grace_s
        self._workers: list[_Worker] = []
        self._stopping = False
        self._kill_at = 0.0
        self._run_dir = ""

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit code (0, or a worker's failed first start)."""
        with self._port_reserved() as port:
            self._port = port
            for parent in dict.fromkeys((tempfile.gettempdir(), run_parent())):
                sweep_stale_run_dirs(parent)
            self._run_dir, owner = claim_run_dir()
            try:
                return self._supervise()
            finally:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                os.close(owner)

    @contextlib.contextmanager
    def _port_reserved(self) -> Iterator[int]:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((self._host, self._port))
            except OSError as exc:
                raise StartupError(cannot_listen(self._host, self._port, exc)) from None
            yield sock.getsockname()[1]
        finally:
            sock.close()

    def _supervise(self) -> int:
        ready_r, ready_w = os.pipe()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        stop_requested: list[int] = []
        reload_requested: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            if signum in _STOP_SIGNALS:
                stop_requested.append(signum)
            elif signum == signal.SIGHUP:
                reload_requested.append(signum)

        handled = (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)
        previous = {s: signal.signal(s, on_signal) for s in handled}
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        selector.register(ready_r, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        pending = b""
        url = ""
        announced = False
        try:
            self._workers = [_Worker(WorkerSlot(i, self._count, self._run_dir)) for i in range(self._count)]
            fds = (ready_r, wake_r.fileno(), wake_w.fileno())
            # Worker 0 first: it migrates the shared SQLite files (switching a new file to WAL
            # needs it alone) and writes the memory index; the others then open what it made.
            self._spawn(self._workers[0], ready_w, fds)
            rest_started = False
            while True:
                if stop_requested and not self._stopping:
                    self._stop_all()
                if reload_requested:  # SIGHUP: every worker reloads its policy file
                    reload_requested.clear()
                    for worker in self._workers:
                        if worker.pid:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(worker.pid, signal.SIGHUP)
                if self._stopping and not any(w.pid for w in self._workers):
                    return 0
                if self._stopping and time.monotonic() > self._kill_at:
                    self._kill_remaining()
                for key, _ in selector.select(self._timeout()):
                    if key.fd == wake_r.fileno():
                        with contextlib.suppress(BlockingIOError):
                            wake_r.recv(4096)
                    else:
                        pending += os.read(ready_r, 4096)
                lines, _, pending = pending.rpartition(b"\n")
                for line in lines.split(b"\n") if lines else ():
                    index, _, where = line.decode().partition(" ")
                    self._workers[int(index)].ready = True
                    url = url or where
                failed = self._reap(starting=not announced)
                if failed is not None and not announced and not self._stopping:
                    self._stop_all()
                    self._wait_all()
                    return failed
                if not rest_started and self._workers[0].ready and not self._stopping:
                    rest_started = True
                    for worker in self._workers[1:]:
                        if stop_requested:  # SIGTERM while forking: the loop above stops the set
                            break
                        self._spawn(worker, ready_w, fds)
                if not announced and all(w.ready for w in self._workers):
                    announced = True
                    log.info("workers ready", extra={"fields": {"workers": self._count, "address": url}})
                    announce(f"sophia-gateway listening on {url} ({self._count} workers)")
                if not self._stopping:
                    self._restart_due(ready_w, fds)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            selector.close()
            for fd in (ready_r, ready_w):
                os.close(fd)
            wake_r.close()
            wake_w.close()

    def _timeout(self) -> float | None:
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        if self._stopping:
            return 0.5
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _spawn(self, worker: _Worker, ready_w: int, parent_fds: tuple[int, ...]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        # A stop sent to a worker between its fork and its own handlers (the supervisor's
        # ``_stop_all`` right after forking it) was lost: CPython drops a signal that arrives
        # before ``PyOS_AfterFork_Child`` or while the inherited Python handler is still set, and
        # the worker went on to serve undrained until the SIGKILL 15 s past the grace (3 starts in
        # 15 under load). Blocked across the fork, such a stop stays pending in the kernel and
        # ends the worker once it has the default action back.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        finally:
            if os.getpid() == parent:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:  # the worker
            code = 1
            try:
                for s in (*_STOP_SIGNALS, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop sent since the fork: ends it now
                for fd in parent_fds:
                    os.close(fd)
                _drain_when_orphaned(parent)

                def ready(url: str) -> None:
                    os.write(ready_w, f"{worker.slot.index} {url}\n".encode())

                code = self._main(worker.slot, self._port, ready)
            except BaseException:
                log.exception("worker failed", extra={"fields": {"worker": worker.slot.index}})
            finally:
                logging.shutdown()  # the log thread's queued lines written (os._exit skips atexit)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        worker.pid, worker.started_at, worker.ready, worker.restart_at = pid, time.monotonic(), False, None

    def _reap(self, *, starting: bool = False) -> int | None:
        """Collect exited workers and schedule their restart; the exit code of one that died
        before it was ready, if any (``starting``: the set's first start, which that stops)."""
        failed = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return failed
            if pid == 0:
                return failed
            worker = next((w for w in self._workers if w.pid == pid), None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            worker.pid = None
            try:  # its counters stay in the set's /metrics (observability/worker_totals.py)
                worker_totals.retire(self._run_dir, worker.slot.index, pid)
            except OSError as exc:
                log.warning("could not keep a dead worker's totals", extra={"fields": {"error": str(exc)}})
            if self._stopping:
                continue
            if not worker.ready and failed is None:
                failed = code if code > 0 else 1
                if starting:  # the set stops (it printed its own cannot-start line): no restart
                    log.warning(
                        "worker could not start; stopping the set",
                        extra={"fields": {"worker": worker.slot.index, "pid": pid, "exit_code": code}},
                    )
                    continue
            up_s = time.monotonic() - worker.started_at
            if up_s >= STABLE_AFTER_S:
                worker.delay_s = RESTART_FIRST_S
            worker.restart_at = time.monotonic() + worker.delay_s
            log.warning(
                "worker exited; restarting it",
                extra={
                    "fields": {
                        "worker": worker.slot.index,
                        "pid": pid,
                        "exit_code": code,
                        "up_s": round(up_s, 3),
                        "restart_in_s": worker.delay_s,
                    }
                },
            )
            worker.delay_s = min(RESTART_MAX_S, worker.delay_s * 2)

    def _restart_due(self, ready_w: int, parent_fds: tuple[int, ...]) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.pid is None and worker.restart_at is not None and worker.restart_at <= now:
                self._spawn(worker, ready_w, parent_fds)

    def _stop_all(self) -> None:
        self._stopping = True
        log.info("draining workers", extra={"fields": {"workers": self._count, "grace_s": self._grace_s}})
        for worker in self._workers:
            worker.restart_at = None
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        self._kill_at = time.monotonic() + self._grace_s + 15.0

    def _kill_remaining(self) -> None:
        """A worker still running well past the drain grace is stuck: SIGKILL it."""
        for worker in self._workers:
            if worker.pid is not None:
                log.warning("worker did not drain in time; killing it", extra={"fields": {"pid": worker.pid}})
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
        self._kill_at = float("inf")

    def _wait_all(self) -> None:
        while any(w.pid for w in self._workers):
            self._reap()
            if any(w.pid for w in self._workers):
                time.sleep(0.05)


def _drain_when_orphaned(parent: int) -> None:
    """Ask the kernel for SIGTERM (a drain) when the parent dies, even by SIGKILL, so no worker
    outlives its supervisor holding the port (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
