"""A worker set's run directory is swept once its set is gone, never while any of it lives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import workers
from gateway.workers import RUN_DIR_PREFIX, claim_run_dir, sweep_stale_run_dirs


@pytest.fixture
def tmpdir_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Where mkdtemp makes them: a short directory of the test's own (under a deep one, as
    # pytest's may be, the sets' directories go to /tmp: workers.run_parent).
    short = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    monkeypatch.setattr(workers.tempfile, "tempdir", str(short))
    yield short
    shutil.rmtree(short, ignore_errors=True)


def test_only_the_directories_of_sets_that_are_gone_are_swept(tmpdir_env: Path) -> None:
    live, live_fd = claim_run_dir()
    gone, gone_fd = claim_run_dir()
    os.close(gone_fd)  # its parent died: the kernel released the lock
    (Path(gone) / "worker-0.sock").write_text("")
    older = tmpdir_env / (RUN_DIR_PREFIX + "older")  # a version before the lock, or being made
    older.mkdir()
    other = tmpdir_env / "not-ours"
    other.mkdir()
    (other / "owner.lock").write_text("")
    link = tmpdir_env / (RUN_DIR_PREFIX + "link")
    link.symlink_to(other)
    try:
        assert sweep_stale_run_dirs() == [gone]
        assert Path(live, "owner.lock").exists() and older.exists() and other.exists() and link.is_symlink()
        assert not Path(gone).exists()
    finally:
        os.close(live_fd)
    assert sweep_stale_run_dirs() == [live]


def test_a_lock_held_by_a_forked_worker_keeps_the_directory(tmpdir_env: Path) -> None:
    """A worker inherits the parent's lock over fork: a set whose parent was SIGKILLed keeps its
    directory while an orphaned worker drains."""
    run_dir, fd = claim_run_dir()
    # A child holding the descriptor (as a forked worker does) until told to stop.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(fd,)
    )
    os.close(fd)  # the parent is gone
    try:
        assert sweep_stale_run_dirs() == []
        assert Path(run_dir).exists()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert sweep_stale_run_dirs() == [run_dir]
