"""The ingest spool's room: how many bytes ``spool_dir`` holds, and whether an upload may add more.

The spool holds uploads being received (``upload-*.part``) and the files of jobs not finished
(kept while a job is queued, running, paused or interrupted, so that it can resume). Both are
bounded: ``max_spool_bytes`` in all, and ``min_free_disk_bytes`` left free on the disk. An
upload checks before each block it writes (a MiB at a time) that the block fits both, so a
refused one (507 ``spool_full``) never passes them; what it wrote is deleted by its caller.

What the spool holds is measured from the directory itself (its files' sizes), not counted in
this process: the workers of ``serve --workers N`` share the directory, and a job's file is
removed by whichever process ends it. Writes of one process are checked and made under one lock,
so its concurrent uploads cannot both take the last MiB; uploads of two processes at once may
pass the bound by at most a block each.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

from gateway.errors import InsufficientStorage


class SpoolRoom:
    """The bounds of ``spool_dir`` (bytes) and its last measured size (``bytes_held``, for the
    gauge). Its methods do file-system calls: run them on a thread."""

    def __init__(self, spool_dir: str, max_spool_bytes: int, min_free_disk_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.max_spool_bytes = max_spool_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self.bytes_held = 0
        self._lock = threading.Lock()

    def measure(self) -> int:
        """The bytes of the spool's files now (also kept in ``bytes_held``)."""
        total = 0
        try:
            entries = list(os.scandir(self.spool_dir))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:  # a file another upload or job removes meanwhile counts nothing
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
        self.bytes_held = total
        return total

    def check(self, adding_bytes: int) -> None:
        """``InsufficientStorage`` when ``adding_bytes`` more would pass ``max_spool_bytes`` or
        leave the disk less than ``min_free_disk_bytes`` free."""
        if self.measure() + adding_bytes > self.max_spool_bytes:
            raise InsufficientStorage(
                "The gateway's ingest spool has no room for this upload (memory.ingest.max_spool_bytes): "
                "try again when its jobs have finished, or cancel paused ones."
            )
        if shutil.disk_usage(self.spool_dir).free - adding_bytes < self.min_free_disk_bytes:
            raise InsufficientStorage(
                "The gateway's disk has no room for this upload (memory.ingest.min_free_disk_bytes): "
                "try again later."
            )

    def write(self, f: Any, digest: Any, block: bytes) -> None:
        """Write ``block`` to the spool file ``f`` once it fits (``check``), and hash it."""
        with self._lock:
            self.check(len(block))
            f.write(block)
            f.flush()  # on disk before the lock goes: the next check measures it
        digest.update(block)
