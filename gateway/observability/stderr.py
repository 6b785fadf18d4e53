"""Writing lines to stderr without making the caller wait: the writer thread and atomic pieces.

stderr may be a pipe whose reader (a container runtime's log collector) is slow or stuck; a
blocking write there would stop the thread that makes it, and on the event loop that is every
request. So what the gateway logs is handed to a thread that does the blocking writes
(``ThreadWriter``), in pieces that end on a line end and hold at most ``PIPE_BUF`` bytes
(``write_pieces``: atomic on a pipe, so another writer's line never lands inside one of ours).
Lines beyond a backlog bound are dropped and counted rather than grow memory without bound.

Two users: the access log (``access_log.py``: batches from the loop; a pipe it writes on the loop
itself) and every other logger (``StderrHandler``: records from any thread, the gateway's
WARNINGs and errors among them).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import weakref
from queue import SimpleQueue
from typing import TextIO

# Writes of at most this many bytes to a pipe are atomic (POSIX PIPE_BUF, 4096 on Linux).
ATOMIC_WRITE_BYTES = 4096
# How long closing waits for the thread to write what is queued (a stuck reader: then given up).
# Short enough that a drain using its whole grace plus one such wait ends before Kubernetes's
# SIGKILL (k8s/base: 45 s = preStop 5 + drain 30 + 10).
JOIN_TIMEOUT_S = 5.0
# Log records waiting for stderr beyond this are dropped (a few thousand lines; tracebacks are long).
LOG_BACKLOG_BYTES = 4 * 1024 * 1024


# The pipes (device, inode) a closing writer gave up on: their reader did not take the queued
# lines within JOIN_TIMEOUT_S. The access log closes first (the app's cleanup), the other loggers'
# handler at exit, both on stderr's pipe: once one has waited in vain, the other does not wait
# again, so a stuck log collector costs one wait at shutdown, not two.
_GIVEN_UP: set[tuple[int, int]] = set()


def _pipe_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def close_wait_s(fd: int) -> float:
    """How long a writer closing on ``fd`` waits for its queued lines: ``JOIN_TIMEOUT_S``, or not
    at all once a writer gave up on the same pipe (``gave_up``)."""
    identity = _pipe_identity(fd)
    return 0.0 if identity is not None and identity in _GIVEN_UP else JOIN_TIMEOUT_S


def gave_up(fd: int) -> None:
    """A closing writer's wait on ``fd`` ran out: its reader is stuck (``close_wait_s``)."""
    identity = _pipe_identity(fd)
    if identity is not None:
        _GIVEN_UP.add(identity)


class ThreadWriter(threading.Thread):
    """Writes the batches it is given to ``fd``, in order, blocking only itself."""

    def __init__(self, fd: int, name: str = "access-log-writer") -> None:
        super().__init__(name=name, daemon=True)
        self.fd = fd
        # A regular file takes a batch in one write (a write to it is not interleaved with
        # another's); a pipe or anything else in pieces of at most PIPE_BUF, cut at line ends.
        try:
            self._whole = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self._whole = False
        self._batches: SimpleQueue[bytes | None] = SimpleQueue()
        self.written_bytes = 0  # written by this thread only; read by the loop (an int: atomic)
        self.failed_lines = 0

    def put(self, batch: bytes | None) -> None:
        self._batches.put(batch)

    def run(self) -> None:
        batches, fd = self._batches, self.fd
        while True:
            batch = batches.get()
            if batch is None:
                return
            if not batches.empty():  # queued meanwhile: written together
                parts = [batch]
                while not batches.empty():
                    batch = batches.get_nowait()
                    if batch is None:
                        break
                    parts.append(batch)
                data = b"".join(parts)
            else:
                data = batch
            size = len(data)
            if self._whole:  # a file: one write
                try:
                    written = os.write(fd, data)
                except OSError:  # stderr closed or broken
                    self.failed_lines += data.count(b"\n")
                    written = size
                if written < size:  # cut short (a signal, a full disk): the rest as below
                    self._write(data, written)
            else:
                self._write(data)  # in pieces cut at line ends (one write for a small batch)
            self.written_bytes += size
            if batch is None:
                return

    def _write(self, data: bytes, start: int = 0) -> None:
        try:
            write_pieces(self.fd, data, start)
        except Stopped as stopped:  # stderr closed or broken: nothing more can be written there
            self.failed_lines += data.count(b"\n", stopped.start)


class Stopped(OSError):
    """``write_pieces`` stopped at ``start``: the descriptor cannot take more now, or failed."""

    def __init__(self, start: int, cause: OSError) -> None:
        super().__init__(*cause.args)
        self.start = start
        self.cause = cause


def write_pieces(fd: int, data: bytes, start: int = 0) -> None:
    """``data[start:]`` to ``fd`` in writes that end on a line end and hold at most PIPE_BUF bytes
    (atomic on a pipe: another writer's line never lands inside one of ours). Raises ``Stopped``
    with the offset reached when a write fails (``BlockingIOError``: a non-blocking pipe is full)."""
    size = len(data)
    view = memoryview(data)
    while start < size:
        end = size
        if end - start > ATOMIC_WRITE_BYTES:  # cut after the last line end that fits, else after one
            cut = data.rfind(b"\n", start, start + ATOMIC_WRITE_BYTES)
            if cut < 0:
                cut = data.find(b"\n", start)
            if cut >= 0:
                end = cut + 1
        try:
            start += os.write(fd, data if end - start == size else view[start:end])
        except OSError as exc:
            raise Stopped(start, exc) from exc


class StderrHandler(logging.Handler):
    """The handler of every logger but the access log: formats a record in the thread that logs
    it, as ``logging.StreamHandler`` does, and hands the line to a writer thread of its own, so
    no logger waits on stderr (a WARNING on the event loop while the log collector is stuck would
    otherwise stop every request). Lines beyond ``backlog_bytes`` waiting are dropped and counted
    in ``dropped`` (``gateway_log_dropped_total``), with those stderr refused (a dead reader).

    The thread starts with the first record, so a process that forks workers before logging
    anything has no thread to fork (``workers.py``); a child forked later starts its own. A stream
    without a descriptor (a test's capture) is written at once, as ``StreamHandler`` does.
    ``close`` (``logging.shutdown`` at exit) waits up to ``JOIN_TIMEOUT_S`` for the queued lines
    (not at all when the access log already waited in vain on the same pipe: ``close_wait_s``)."""

    def __init__(self, stream: TextIO | None = None, backlog_bytes: int = LOG_BACKLOG_BYTES) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self._backlog_bytes = backlog_bytes
        self._writer: ThreadWriter | None = None
        self._queued_bytes = 0
        self._dropped = 0
        self._closed = False  # after close (logging.shutdown at exit) a record is written at once
        _HANDLERS.add(self)

    @property
    def dropped(self) -> int:
        """Lines dropped (the backlog full) or refused by stderr, since the handler was made."""
        writer = self._writer
        return self._dropped + (writer.failed_lines if writer is not None else 0)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            writer = self._writer or self._start()
            if writer is None:
                self.stream.write(line)
                self.stream.flush()
                return
            data = line.encode("utf-8", "backslashreplace")
            if self._queued_bytes - writer.written_bytes > self._backlog_bytes:
                self._dropped += 1
                return
            self._queued_bytes += len(data)
            writer.put(data)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _start(self) -> ThreadWriter | None:
        """The writer thread for the stream's descriptor, started; None for a stream without one
        (or once closed: nothing would wait for a new thread's lines at exit)."""
        if self._closed:
            return None
        try:
            self.stream.flush()
            fd = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            return None
        self._writer = writer = ThreadWriter(fd, name="log-writer")
        writer.start()
        return writer

    def _forked(self) -> None:
        """In a forked child: the parent's thread is not there; the next record starts one."""
        self._writer = None
        self._queued_bytes = 0

    def close(self) -> None:
        """Write what is queued (waiting up to ``JOIN_TIMEOUT_S``), then stop the thread."""
        self.acquire()
        try:
            writer = self._writer
            if writer is not None and writer.is_alive():
                writer.put(None)
                writer.join(close_wait_s(writer.fd))
                if writer.is_alive():
                    gave_up(writer.fd)
                self._dropped += writer.failed_lines
            self._writer = None
            self._queued_bytes = 0
            self._closed = True
        finally:
            self.release()
        super().close()


_HANDLERS: weakref.WeakSet[StderrHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        handler._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def log_lines_dropped() -> int:
    """Lines every ``StderrHandler`` of this process dropped or stderr refused."""
    return sum(handler.dropped for handler in list(_HANDLERS))


def announce(text: str) -> None:
    """``text`` as one line on stdout, in one write (``print`` writes the line end on its own when
    unbuffered: a reader that stops at the text would break the second write). A stdout nobody
    reads any more (closed, or its reader gone: EPIPE) is no reason to stop serving; stdout is then
    pointed at /dev/null, so the exit's flush finds nothing to fail on either."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout for the rest of the process


def ensure_standard_streams() -> None:
    """Open /dev/null on any of descriptors 0, 1 and 2 that the process was started without
    (``serve >&- 2>&-``), and give Python a stream for it. Otherwise the first socket the gateway
    opens takes descriptor 1 or 2: libuv aborts the process when it closes a descriptor that low,
    and the listening line, a log line or a traceback would be written into a client's socket."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's stdin, never closed
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
