"""Start ``sophia-gateway`` processes (gateway or fake provider) and wait until they listen.

Used by the end-to-end tests and the benchmarks, so both exercise the real processes the way a
user runs them. A process prints ``... listening on http://HOST:PORT`` once its socket is bound;
``start`` waits for that line, so ``--port 0`` works and no port is ever guessed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://[^\s,]+)")
_SERVICE_VARIABLES = ("REDIS_URL", "KEYS_URL", "MEMORY_URL")


@dataclass
class ManagedProcess:
    """A running ``sophia-gateway`` subcommand and what it has printed so far."""

    args: list[str]
    popen: subprocess.Popen[str]
    url: str = ""
    _stdout: list[str] = field(default_factory=list)
    _stderr: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return "".join(self._stdout) + "".join(self._stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout_s``; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout=timeout_s)


def start(
    subcommand: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,  # generous: a loaded CI machine may take long to import and bind
    cpu: int | None = None,
    cwd: str | None = None,
    module: str = "gateway.cli",
) -> ManagedProcess:
    """Run ``sophia-gateway <subcommand...>`` and return once it listens.

    ``module``: the one run with ``python -m`` (a test's wrapper around ``gateway.cli``, e.g.
    one that fakes Snowflake in the process before serving).

    ``cpu`` pins the process to one core (Linux), for benchmarks. ``serve`` runs in a fresh
    temporary directory unless ``cwd`` is given, so the files it keeps relative to its working
    directory (the embedded memory database and index under ``data/``) never mix between runs.
    """
    if cwd is None and subcommand and subcommand[0] == "serve":
        cwd = tempfile.mkdtemp(prefix="sophia-serve-")
    args = [sys.executable, "-m", module, *subcommand]
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        args = ["taskset", "-c", str(cpu), *args]
    # Run the same gateway code as the caller, whatever the working directory or an editable
    # install elsewhere would otherwise resolve.
    root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    # The services a process uses are given explicitly in ``env``, never inherited: a test runner's
    # REDIS_URL (scripts/test.sh sets one for the integration tests) would otherwise give every
    # gateway a cache shared with every other test and run, so answers leak between them.
    inherited = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, **(env or {})}
    popen = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, bufsize=1, cwd=cwd
    )
    proc = ManagedProcess(list(args), popen)
    found = threading.Event()

    def pump(stream: object, sink: list[str], look: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)
            if look and not found.is_set():
                match = _LISTENING.search(line)
                if match:
                    proc.url = match.group(1)
                    found.set()

    threading.Thread(target=pump, args=(popen.stdout, proc._stdout, True), daemon=True).start()
    threading.Thread(target=pump, args=(popen.stderr, proc._stderr, False), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not found.wait(0.05):
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop(2)
            raise RuntimeError(f"{' '.join(args)} did not start:\n{proc.output}")
    return proc


def free_port() -> int:
    """A TCP port nothing listens on right now (for an address that must refuse connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
