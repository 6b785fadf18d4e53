"""A stop sent to a worker right after its fork ends it: it is not lost in the gap before the
worker's own signal handlers (the supervisor's ``_stop_all`` reaches workers it forked a moment
before, as when SIGTERM comes while ``serve --workers N`` is still forking)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a process of its own (a fork of pytest's would carry its threads). As in
# ``Supervisor._supervise``, the parent has a Python handler for the stop signals when it forks;
# the worker's main stays up 20 s, as a worker starting to serve.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from gateway.settings import WorkerSlot
    from gateway.workers import Supervisor, _Worker

    def main(slot, port, ready):
        time.sleep(20)
        return 0

    stops = []
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(s, lambda signum, frame: stops.append(signum))
    supervisor = Supervisor(1, "127.0.0.1", 0, main, 1.0)
    outcomes = []
    for _ in range(int(sys.argv[1])):
        worker = _Worker(WorkerSlot(0, 1, ""))
        supervisor._spawn(worker, -1, ())
        os.kill(worker.pid, signal.SIGTERM)  # at once, as _stop_all does
        deadline = time.monotonic() + 5
        while (ended := os.waitpid(worker.pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if ended[0] == 0:  # still running 5 s on: the stop was lost
            os.kill(worker.pid, signal.SIGKILL)
            os.waitpid(worker.pid, 0)
            outcomes.append("lost")
            break
        outcomes.append(os.WIFSIGNALED(ended[1]) and os.WTERMSIG(ended[1]))
    print(outcomes)
    """
)


def test_a_stop_sent_right_after_the_fork_ends_the_worker() -> None:
    rounds = 10
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(rounds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Each worker ended by the SIGTERM itself (15), within 5 s (its main may have begun when the
    # worker ran before the signal came: a stop that reaches a worker is never lost).
    assert done.stdout.strip() == str([15] * rounds), done.stdout
