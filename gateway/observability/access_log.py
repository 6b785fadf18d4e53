"""The access log: one line per request, buffered, written in batches that never make the loop wait.

The lines are exactly those the ``gateway.access`` logger wrote through ``logging`` before (the
same JSON object, key for key, or the same text line, with the same control-character escaping:
``observability/logging.py``), but a request only appends its line's object to a list (``_Line``,
a dataclass orjson dumps, for the common line). The first request after a flush arms one timer
(``FLUSH_INTERVAL_S``); when it fires, or once ``MOST_PENDING_LINES`` are waiting (at the end of
the loop iteration: after the answer of the request that filled the batch), the
pending lines are dumped with one orjson call and the batch, one bytes object, goes to stderr as
below. ``logging``'s way, a record, a formatter and a write + flush per request, cost 41 us per
request (issue 12).

Why batches in time rather than one per event-loop iteration (the first design, and the issue's
words): each hand-over wakes the writer, which on a busy core preempts the loop thread and then
passes the GIL back and forth with it. At 16 connections that was a wake-up every two requests
(0.46 writer wake-ups, 0.48 involuntary switches of the loop thread and 1.6 ``futex`` calls per
request, by ``/proc`` and ``strace -c``), and the log cost about 10 % of the process's CPU per
request; timed batches make 0.05 wake-ups and cost about 4 % (ARCHITECTURE.md, issue 12).

Where the batch goes depends on what stderr is (``start``):

- **a pipe** (a container runtime's, a supervisor's, a shell's ``|``): written on the loop, through
  a descriptor of the log's own opened non-blocking on the same pipe (``/proc/self/fd/2``: a new
  open file description, so ``O_NONBLOCK`` never changes the one stderr shares with the parent).
  A write that the pipe cannot take now waits, with what follows it, until the loop sees the pipe
  writable again: the loop never waits. This is what the gateway does on Kubernetes. A batch of
  64 lines is one to six writes; the writer thread's own CPU (1.2 us a request, measured per
  thread in ``benchmarks/access_log_cost.py``) is not spent.
- **/dev/null**: written on the loop (a write there cannot wait).
- **anything else** (a regular file, a terminal, a socket such as journald's): handed to a writer
  thread with a blocking ``os.write``. A regular file's write can wait for the disk (dirty-page
  throttling), which the loop must never do; a socket or a terminal cannot be reopened.

Lines the pipe or the thread have not taken wait up to ``BACKLOG_BYTES``; beyond that new lines
are dropped and counted (``gateway_access_log_dropped_total``) rather than grow memory without
bound.

The batch is written in pieces that end on a line end and hold at most ``PIPE_BUF`` bytes, so on a
pipe shared with the other loggers (and with other worker processes) a line is never cut by
another writer's line. At shutdown (the app's cleanup, after the drain, SIGTERM included) the
pending lines are flushed and waited for (the pipe to take them, or the thread to write them),
up to ``_JOIN_TIMEOUT_S``: no line is lost while stderr is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from time import time_ns
from typing import Protocol, TextIO

import orjson
from aiohttp import web

from gateway.observability.logging import json_escape_raw_controls, logfmt_value
from gateway.observability.stderr import (
    ATOMIC_WRITE_BYTES,
    JOIN_TIMEOUT_S,
    Stopped,
    ThreadWriter,
    close_wait_s,
    gave_up,
    write_pieces,
)

ACCESS_LOGGER = "gateway.access"
# Lines waiting for stderr beyond this are dropped (about 50,000 lines of about 330 bytes).
BACKLOG_BYTES = 16 * 1024 * 1024
_JOIN_TIMEOUT_S = JOIN_TIMEOUT_S
# Lines wait at most this long for their batch, and a batch holds at most this many lines (about
# 20 KB: the writer's wake-ups stay rare and a burst never makes a large batch).
FLUSH_INTERVAL_S = 0.05
MOST_PENDING_LINES = 64

# The fields of a line, in the order they are written.
FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "model",
    "provider",
    "upstream_model",
    "attempts",
    "fallback",
    "duration_ms",
)


@dataclasses.dataclass(init=False, eq=False, repr=False)
class _Line:
    """The common line (a client address, no optional field but it), as ``record`` leaves it: orjson
    dumps a dataclass from its instance ``__dict__``, key for key in the order the attributes were
    set (``record`` sets them in the line's order). Made by ``_Line()`` (C: no ``__init__``) and 15
    attribute stores, it costs about 3,800 instructions against the 14-key dict literal's 6,000, and
    dumping it about 450 more (callgrind, one line at a time in a loop; ARCHITECTURE.md, h-logcost)."""

    ts: str | int  # the JSON format's formatted ``ts``; the text format's ``time.time_ns()``
    level: str
    logger: str
    msg: str
    request_id: str
    method: str
    path: str
    status: int
    model: str
    provider: str
    upstream_model: str
    attempts: int
    fallback: bool
    duration_ms: float
    client: str


# A line with an optional field (a failed stream, failed attempts, ...) or no client address: the
# JSON object itself, key for key, ``ts`` as in ``_Line``.
Entry = dict[str, object]


class DropCounter(Protocol):
    def inc(self, amount: float = 1.0) -> None: ...


# A timestamp's milliseconds, formatted once: ``f"{ms:03d}"`` per line cost 0.6 us.
_JSON_MS = tuple(f".{ms:03d}Z" for ms in range(1000))
_TEXT_MS = tuple(f",{ms:03d}" for ms in range(1000))
_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000


class _Timestamps:
    """The date and time part of a line's timestamp, formatted once per second. Times are
    ``time.time_ns()`` integers: the second and the millisecond are then integer divisions, where
    ``int(created)`` on a float is a call (about 800 instructions a line)."""

    __slots__ = ("_text", "_text_s", "json_date", "json_s")

    def __init__(self) -> None:
        # The second last formatted for ``JsonFormatter`` and its UTC date and time (plain
        # attributes: the flush reads them without a call).
        self.json_s = self._text_s = -1
        self.json_date = self._text = ""

    def json_second_of(self, ns: int) -> tuple[int, str]:
        """``ns``'s second and its date and time as ``JsonFormatter`` writes them (UTC,
        ``2025-01-31T12:00:00``, then ``.123Z``), remembered for the lines that follow."""
        second = ns // _NS_PER_S
        if second != self.json_s:
            self.json_s, self.json_date = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return second, self.json_date

    def text(self, ns: int) -> str:
        """As ``logging.Formatter.formatTime``: local time, ``2025-01-31 12:00:00,123``."""
        second = ns // _NS_PER_S
        if second != self._text_s:
            self._text_s, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._text + _TEXT_MS[ns // _NS_PER_MS % 1000]


# Between two line objects of a dumped list. Inside a JSON string every ``"`` is escaped, so
# ``{"ts":"`` (a quote right after a brace) only ever starts a line's object.
_BETWEEN_LINES = b'},{"ts":"'
_LINE_BREAK = b'}\n{"ts":"'


def _json_lines(pending: list[_Line | Entry]) -> bytes:
    """The pending lines, from one ``orjson.dumps`` of the list of lines cut at their seams (one
    line: dumped on its own); ``ts`` was formatted by ``record``. ``split`` and ``join`` find the
    seams in one pass where ``replace`` made two (count, then copy): 1,440 instructions a line
    against 2,100 (callgrind, 64-line batches)."""
    try:
        if len(pending) == 1:
            return orjson.dumps(pending[0], option=orjson.OPT_APPEND_NEWLINE)
        data = orjson.dumps(pending)
    except orjson.JSONEncodeError:  # a lone surrogate (not UTF-8) somewhere: written escaped, never lost
        return b"".join([_json_line(entry) for entry in pending])
    return _LINE_BREAK.join(data.split(_BETWEEN_LINES))[1:-1] + b"\n"


def _json_line(entry: _Line | Entry) -> bytes:
    """One line whose strings may not be UTF-8."""
    try:
        return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        safe = {
            k: v.encode("utf-8", "backslashreplace").decode() if isinstance(v, str) else v
            for k, v in (entry if isinstance(entry, dict) else vars(entry)).items()
        }
        return orjson.dumps(safe, option=orjson.OPT_APPEND_NEWLINE)


def _text_lines(stamp: _Timestamps, pending: list[_Line | Entry]) -> bytes:
    return b"".join(
        [_text_line(stamp, entry if isinstance(entry, dict) else vars(entry)) for entry in pending]
    )


def _text_line(stamp: _Timestamps, entry: Entry) -> bytes:
    fields = " ".join(f"{name}={logfmt_value(entry[name])}" for name in FIELDS)
    if "client" in entry:  # the client's address (``record``)
        fields += f" client={logfmt_value(entry['client'])}"
    if "stream_error" in entry:  # a stream that failed after its first byte (``record``)
        fields += f" stream_error={logfmt_value(entry['stream_error'])}"
    if "effort_dropped" in entry:  # the effort was withheld from the model that served it
        fields += " effort_dropped=True"  # as ``fallback`` is written
    if "auth_throttled" in entry:  # refused for its address's failed credentials
        fields += " auth_throttled=True"
    if "previous_token" in entry:  # let in with a previous token (admin, metrics, key)
        fields += f" previous_token={logfmt_value(entry['previous_token'])}"
    failed: list[dict[str, object]] | None = entry.get("failed_attempts")  # type: ignore[assignment]
    if failed:  # every attempt failed: provider/upstream_model:status:code of each, in order
        each = ",".join(f"{a['provider']}/{a['upstream_model']}:{a['status']}:{a['code']}" for a in failed)
        fields += f" failed_attempts={logfmt_value(each)}"
    # Each value is escaped and quoted as ``TextFormatter`` does; the rest is constant, printable text.
    return f"{stamp.text(entry['ts'])} INFO    {ACCESS_LOGGER}: request {fields}\n".encode(  # type: ignore[arg-type]
        "utf-8", "backslashreplace"
    )


class _PipeWriter:
    """Writes batches on the loop to a pipe through a non-blocking descriptor of its own. What the
    pipe cannot take now waits in order, and is written when the loop sees the pipe writable."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, owned: bool, backlog_bytes: int) -> None:
        self._loop = loop
        self._fd = fd
        self._owned = owned  # opened by the log: closed by it
        self._backlog_bytes = backlog_bytes
        self._waiting: deque[bytes] = deque()
        self._waiting_bytes = 0
        self._offset = 0  # how much of the first waiting batch the pipe has taken
        self._drained: asyncio.Future[None] | None = None
        self.failed_lines = 0

    def put(self, data: bytes) -> bool:
        """Write ``data`` or keep it for later; False when it was dropped (the backlog is full)."""
        if self._waiting:
            if self._waiting_bytes > self._backlog_bytes:
                return False
            self._waiting.append(data)
            self._waiting_bytes += len(data)
            return True
        if len(data) <= ATOMIC_WRITE_BYTES:
            # One write, all or nothing (POSIX: a non-blocking pipe takes a write of at most
            # PIPE_BUF whole, or refuses it with EAGAIN): no ``write_pieces`` call and memoryview.
            try:
                os.write(self._fd, data)
            except BlockingIOError:  # the pipe is full: wait for it
                self._wait(data, 0)
            except OSError:  # the reader is gone (EPIPE) or the descriptor failed
                self.failed_lines += data.count(b"\n")
            return True
        try:
            write_pieces(self._fd, data)
        except Stopped as stopped:
            if isinstance(stopped.cause, BlockingIOError):  # the pipe is full: wait for it
                self._wait(data, stopped.start)
            else:  # the reader is gone (EPIPE) or the descriptor failed
                self.failed_lines += data.count(b"\n", stopped.start)
        return True

    def _wait(self, data: bytes, offset: int) -> None:
        self._waiting.append(data)
        self._waiting_bytes += len(data)
        self._offset = offset
        self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        waiting = self._waiting
        while waiting:
            data = waiting[0]
            try:
                write_pieces(self._fd, data, self._offset)
            except Stopped as stopped:
                if isinstance(stopped.cause, BlockingIOError):
                    self._offset = stopped.start
                    return  # still full: called again when it is writable
                self.failed_lines += data.count(b"\n", stopped.start)
            waiting.popleft()
            self._waiting_bytes -= len(data)
            self._offset = 0
        self._loop.remove_writer(self._fd)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the pipe to take what waits; what it does not take is counted."""
        if self._waiting:
            self._drained = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), min(timeout, close_wait_s(self._fd)))
            except TimeoutError:
                gave_up(self._fd)  # the other loggers' handler will not wait on this pipe again
                self._loop.remove_writer(self._fd)
                first = True
                for data in self._waiting:
                    self.failed_lines += data.count(b"\n", self._offset if first else 0)
                    first = False
                self._waiting.clear()
        if self._owned:
            os.close(self._fd)


def _pipe_writer(loop: asyncio.AbstractEventLoop, fd: int, backlog_bytes: int) -> _PipeWriter | None:
    """A loop writer for ``fd`` when writing there on the loop can never wait: a pipe, reopened
    non-blocking (a new open file description: stderr's own flags are left alone), or /dev/null.
    None for anything else, or when the pipe cannot be reopened (no ``/proc``)."""
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode):
            null = os.stat(os.devnull)
            return _PipeWriter(loop, fd, False, backlog_bytes) if st.st_rdev == null.st_rdev else None
        if not stat.S_ISFIFO(st.st_mode):
            return None
        own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        same = os.fstat(own)
    except OSError:  # pragma: no cover - a descriptor just opened
        same = None
    if same is None or (same.st_dev, same.st_ino) != (st.st_dev, st.st_ino):
        os.close(own)
        return None
    return _PipeWriter(loop, own, True, backlog_bytes)


class AccessLog:
    """The gateway's access log; one per app (``keys.ACCESS_LOG``), started by its cleanup context.

    ``enabled`` is fixed when it is made: ``access_log`` on in the settings and the
    ``gateway.access`` logger enabled for INFO (``SOPHIA_LOG_LEVEL`` above INFO turns it off, as
    before)."""

    def __init__(
        self,
        fmt: str,
        enabled: bool,
        dropped: DropCounter,
        stream: TextIO | None = None,
        backlog_bytes: int = BACKLOG_BYTES,
    ) -> None:
        self.enabled = enabled
        self._json = fmt == "json"
        self._stamp = _Timestamps()
        self._dropped = dropped
        self._stream = stream
        self._backlog_bytes = backlog_bytes
        self._pending: list[_Line | Entry] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._writer: ThreadWriter | None = None
        self._pipe: _PipeWriter | None = None
        self._queued_bytes = 0
        self._failed_reported = 0  # of the writer's ``failed_lines``, already in ``dropped``

    @classmethod
    def configured(cls, access_log: bool, fmt: str, dropped: DropCounter) -> AccessLog:
        """The access log as the settings and the logging configuration ask for."""
        enabled = access_log and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
        return cls(fmt, enabled, dropped)

    def record(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        model: str,
        provider: str,
        upstream_model: str,
        attempts: int,
        fallback: bool,
        duration_ms: float,
        stream_error: str = "",
        failed: Sequence[tuple[str, str, int, str]] | None = None,
        effort_dropped: bool = False,
        auth_throttled: bool = False,
        client: str | None = None,
        previous_token: str = "",
    ) -> None:
        """Log one request; handed to the writer within ``FLUSH_INTERVAL_S``. ``stream_error``:
        why its stream failed after the first byte (the line has the field only then).
        ``failed``: a request every attempt failed, (provider, upstream model, status, code) of
        each attempt in order (the line's ``failed_attempts``, only then). ``effort_dropped``:
        the client's reasoning effort was withheld from the deployment that served it, declared
        ``reasoning: false`` (the line's ``effort_dropped: true``, only then). ``auth_throttled``:
        refused for its client address's failed credentials (``auth_throttled: true``, only then).
        ``client``: the client's address (the TCP peer's, or behind ``SOPHIA_TRUSTED_PROXIES`` the
        one its ``X-Forwarded-For`` names; the line's ``client``, after ``duration_ms``, when known).
        ``previous_token``: ``admin`` or ``metrics`` when let in with that previous operator token
        (``SOPHIA_*_TOKEN_PREVIOUS``), ``key`` with a virtual key's secret rotated out, within its
        grace (the line's ``previous_token``, only then): who still sends it."""
        ts: str | int
        ts = ns = time_ns()
        if self._json:  # formatted now (one pass over the batch less at the flush)
            stamp = self._stamp
            if ns // _NS_PER_S != stamp.json_s:
                stamp.json_second_of(ns)
            ts = stamp.json_date + _JSON_MS[ns // _NS_PER_MS % 1000]
        entry: _Line | Entry
        if client and not (stream_error or failed or effort_dropped or auth_throttled or previous_token):
            entry = _Line()  # the common line: attributes set in the line's order
            entry.ts = ts
            entry.level = "info"
            entry.logger = ACCESS_LOGGER
            entry.msg = "request"
            entry.request_id = request_id
            entry.method = method
            entry.path = path
            entry.status = status
            entry.model = model
            entry.provider = provider
            entry.upstream_model = upstream_model
            entry.attempts = attempts
            entry.fallback = fallback
            entry.duration_ms = duration_ms
            entry.client = client
        else:
            entry = {
                "ts": ts,
                "level": "info",
                "logger": ACCESS_LOGGER,
                "msg": "request",
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "model": model,
                "provider": provider,
                "upstream_model": upstream_model,
                "attempts": attempts,
                "fallback": fallback,
                "duration_ms": duration_ms,
            }
            if client:
                entry["client"] = client
            if stream_error:
                entry["stream_error"] = stream_error
            if effort_dropped:
                entry["effort_dropped"] = True
            if auth_throttled:
                entry["auth_throttled"] = True
            if previous_token:
                entry["previous_token"] = previous_token
            if failed:
                entry["failed_attempts"] = [
                    {"provider": p, "upstream_model": m, "status": st, "code": c} for p, m, st, c in failed
                ]
        self._pending.append(entry)
        if not self._scheduled:
            loop = self._loop
            if loop is None or loop.is_closed():
                self.flush()  # not started (or already closed): written now
                return
            self._scheduled = True
            self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush, True)
        elif len(self._pending) == MOST_PENDING_LINES:
            # A full batch goes now, but after this request's answer: ``record`` runs before the
            # response is written (``middleware._observe``), so a flush here delayed every 64th
            # answer by the batch's formatting and write (its p99 at one connection). Soon: at the
            # end of this loop iteration's callbacks. The timer takes what follows.
            self._loop.call_soon(self.flush)  # type: ignore[union-attr]  # (set: _scheduled)

    def flush(self, due: bool = False) -> None:
        """Format the pending lines and hand them to the writer (or write them, when not started).
        ``due``: called by the batch's timer (one call, not a ``_flush_due`` that calls this)."""
        if due:
            self._scheduled = False
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self._json:
            data = _json_lines(pending)
            if not data.isascii() or 0x7F in data:  # an int: no TypeError tried first
                data = json_escape_raw_controls(data.decode()).encode()
        else:
            data = _text_lines(self._stamp, pending)
        pipe = self._pipe
        if pipe is not None:
            if not pipe.put(data):
                self._dropped.inc(len(pending))
            if pipe.failed_lines != self._failed_reported:  # stderr broken: counted as it happens
                self._report_failed(pipe.failed_lines)
            return
        writer = self._writer
        if writer is None:
            self._write_now(data)
            return
        if self._queued_bytes - writer.written_bytes > self._backlog_bytes:
            self._dropped.inc(len(pending))
        else:
            self._queued_bytes += len(data)
            writer.put(data)
        if writer.failed_lines != self._failed_reported:  # the thread's count, read on the loop
            self._report_failed(writer.failed_lines)

    def _report_failed(self, failed: int) -> None:
        """Count the lines the writer could not write (stderr closed or broken) since last time."""
        self._dropped.inc(failed - self._failed_reported)
        self._failed_reported = failed

    def _write_now(self, data: bytes) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write(data.decode())
            stream.flush()
        except (OSError, ValueError):
            self._dropped.inc(data.count(b"\n"))

    def start(self) -> None:
        """Write in batches timed on the running loop from now on: on the loop to a pipe, else
        from a thread (module docstring)."""
        if not self.enabled or self._writer is not None or self._pipe is not None:
            return
        self._loop = loop = asyncio.get_running_loop()
        stream = self._stream or sys.stderr
        try:
            stream.flush()
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            return  # a stream without a descriptor (a test's capture): written by ``_write_now``
        self._pipe = _pipe_writer(loop, fd, self._backlog_bytes)
        if self._pipe is not None:
            return
        self._writer = ThreadWriter(fd)
        self._writer.start()

    async def close(self) -> None:
        """Write every pending line, then stop the writer once it has written them all."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._scheduled = False
        self.flush()
        writer, self._writer = self._writer, None
        pipe, self._pipe = self._pipe, None
        self._loop = None
        if pipe is not None:
            await pipe.close(_JOIN_TIMEOUT_S)
            self._report_failed(pipe.failed_lines)
            self._failed_reported = 0
            return
        if writer is None:
            return
        writer.put(None)
        await asyncio.to_thread(writer.join, min(_JOIN_TIMEOUT_S, close_wait_s(writer.fd)))
        if writer.is_alive():
            gave_up(writer.fd)
        self._report_failed(writer.failed_lines)
        self._failed_reported = 0

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """The app's cleanup context: register it first, so it is closed last."""
        self.start()
        try:
            yield
        finally:
            await self.close()
