"""Processes under measurement whose output goes to a file, and what /proc says about them.

``gateway.testing.process.start`` keeps everything a process prints in memory, read by a thread
of the caller: right for tests, wrong for a benchmark with the access log on (a million lines
would sit in the benchmark's memory and its reader would compete for the cores). Here stdout and
stderr go to a file, like a log collector's; the ``listening on http://...`` line is looked for in
that file.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on (http://[^\s,]+)")
# Never inherited, as in gateway.testing.process: each benchmark gives the services it means.
_SERVICE_VARIABLES = ("REDIS_URL", "KEYS_URL", "MEMORY_URL")


@dataclass
class Logged:
    """A running process writing to ``log``; ``url`` is what it said it listens on."""

    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    collector: subprocess.Popen[bytes] | None = None  # the ``cat`` reading its output pipe, if any

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait(timeout=timeout_s)
        if self.collector is not None:
            self.collector.wait(timeout=timeout_s)  # ends at the pipe's end: every line is in the log
        return code

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and every live descendant (workers), in seconds."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.pid))

    def rss_bytes(self) -> int:
        """Resident memory of the process and every live descendant, in bytes."""
        return sum(rss_bytes(pid) for pid in process_tree(self.pid))


def launch(
    args: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cpus: str | None = None,
    cwd: str | Path | None = None,
    timeout_s: float = 30.0,
    pipe_cpus: str | None = None,
) -> Logged:
    """Run ``args`` (pinned to ``cpus``, a taskset list such as ``"0"`` or ``"0,1"``) with its output
    in ``log``, and return once it has printed its ``listening on`` line. ``pipe_cpus``: the
    output goes through a pipe to a ``cat`` on those cores that appends it to ``log`` (stderr as
    a container runtime or a supervisor gives it), not straight into the file."""
    cmd = [*(["taskset", "-c", cpus] if cpus else []), *args]
    inherited = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, **(env or {})}
    collector = None
    with log.open("ab") as sink:
        if pipe_cpus is None:
            popen = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        else:
            read_fd, write_fd = os.pipe()
            # The collector exits when the process (its pipe's only writer) does.
            collector = subprocess.Popen(["taskset", "-c", pipe_cpus, "cat"], stdin=read_fd, stdout=sink)
            popen = subprocess.Popen(cmd, stdout=write_fd, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
            os.close(read_fd)
            os.close(write_fd)
    proc = Logged(popen, log, collector=collector)
    deadline = time.monotonic() + timeout_s
    while True:
        found = _LISTENING.search(log.read_text(errors="replace")[:20000])
        if found:
            proc.url = found.group(1)
            return proc
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop(2)
            raise RuntimeError(f"{' '.join(cmd)} did not start:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_parts(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile + RssShmem) of process ``pid`` in bytes: its private memory, and the
    pages of mapped files it has resident (page cache the kernel can drop); (0, 0) if gone."""
    parts = {"RssAnon:": 0, "RssFile:": 0, "RssShmem:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = line.split(maxsplit=1)[0] if line else ""
            if name in parts:
                parts[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return parts["RssAnon:"], parts["RssFile:"] + parts["RssShmem:"]


def rss_bytes(pid: int) -> int:
    """VmRSS of process ``pid`` in bytes; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
