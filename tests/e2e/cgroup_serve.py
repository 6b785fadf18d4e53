"""``python -m tests.e2e.cgroup_serve serve ...``: the gateway's CLI, run after this process has
moved itself into the cgroup whose ``cgroup.procs`` file ``SOPHIA_TEST_CGROUP_PROCS`` names, so a
test can start a real gateway under a CPU limit (as a container's ``--cpus`` does)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway.cli import main

if __name__ == "__main__":
    Path(os.environ["SOPHIA_TEST_CGROUP_PROCS"]).write_text(str(os.getpid()))
    sys.exit(main())
