"""The buffered access log writes the lines ``logging`` wrote, in timed batches the loop never
waits for: on the loop to a pipe (non-blocking), from a thread to anything else."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.observability import access_log, stderr
from gateway.observability.access_log import FIELDS, AccessLog
from gateway.observability.logging import JsonFormatter, TextFormatter
from gateway.observability.metrics import Counter

CONTROLS = "\n\r\x1b\x07\x00\x0b\x1c\x7f\x85\x9b\u2028\u2029"
HOSTILE_PATH = "/v1/x\n2030-01-01 00:00:00,000 ERROR   gateway.http: forged\r\x1b[31m" + CONTROLS
ENTRIES = [
    ("r-1", "POST", "/v1/chat/completions", 200, "gpt", "openai", "gpt-4o", 1, False, 1.234),
    ("r-2", "GET", HOSTILE_PATH, 404, "", "", "", 0, False, 0.05),
    ("r-3", "POST", '/v1/x y="z"\\ Grüße 世界', 502, "m odel", "cache", "", 3, True, 12.0),
    # The seam the batch is cut at, inside a value: it is escaped there, so it cannot cut a line.
    ("r-4", "GET", '/v1/a},{"ts":"b"}\n{"ts":"', 404, '},{"ts":"', "", "", 0, False, 0.1),
]
CREATED_NS = (
    1_700_000_000_000_000_000,
    1_700_000_000_999_500_000,
    1_700_000_001_042_100_000,
    1_700_000_001_998_000_000,
)


def logged_by_logging(
    formatter: logging.Formatter, created_ns: int, entry: tuple[object, ...], **more: object
) -> bytes:
    """The line the ``gateway.access`` logger wrote through a StreamHandler before."""
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "request", (), None)
    record.created, record.msecs = created_ns / 1e9, created_ns // 1_000_000 % 1000 + 0.0
    record.fields = {**dict(zip(FIELDS, entry, strict=True)), **more}
    return (formatter.format(record) + "\n").encode()


def dropped() -> Counter:
    return Counter("dropped", "test")


# Which lines have a client address (the common line, made without a dict) and which a failed
# stream besides (an optional field: the line's dict), so a batch mixes both kinds.
CLIENTS = {
    "no client": ((None, ""), (None, ""), (None, ""), (None, "")),
    "clients": (("203.0.113.7", ""), ("2001:db8::1", ""), ("203.0.113.7", ""), ("10.0.0.1", "")),
    "mixed": (("203.0.113.7", ""), (None, ""), ("10.0.0.1", "upstream_closed"), ("203.0.113.7", "")),
}


@pytest.mark.parametrize("clients", list(CLIENTS))
@pytest.mark.parametrize("batch", [1, len(ENTRIES)], ids=["line by line", "one batch"])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_lines_are_those_logging_wrote_byte_for_byte(
    fmt: str, batch: int, clients: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    access = AccessLog(fmt, True, dropped(), stream=out)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    clock = iter(CREATED_NS)
    monkeypatch.setattr(access_log, "time_ns", lambda: next(clock))
    expected = b""
    for i, (created_ns, entry, (client, stream_error)) in enumerate(
        zip(CREATED_NS, ENTRIES, CLIENTS[clients], strict=True)
    ):
        access._scheduled = True  # as while a batch's timer is armed: the flush below writes the batch
        access.record(*entry, client=client, stream_error=stream_error)  # type: ignore[arg-type]
        more = {"client": client} if client else {}
        if stream_error:
            more["stream_error"] = stream_error
        expected += logged_by_logging(formatter, created_ns, entry, **more)
        if (i + 1) % batch == 0:
            access.flush()
    assert out.getvalue().encode() == expected
    assert out.getvalue().count("\n") == len(ENTRIES)  # a hostile path cannot add a line
    for c in CONTROLS.replace("\n", ""):
        assert c not in out.getvalue()
    if fmt == "json":
        assert orjson.loads(out.getvalue().splitlines()[1])["path"] == HOSTILE_PATH


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_failed_streams_line_ends_with_its_reason_as_logging_wrote_it(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stream_error`` is the line's last field, present only for a stream that failed after
    its first byte; the line is otherwise the one every request gets."""
    out = io.StringIO()
    access = AccessLog(fmt, True, dropped(), stream=out)
    monkeypatch.setattr(access_log, "time_ns", lambda: CREATED_NS[0])
    entry = ENTRIES[0]
    access.record(*entry, stream_error="upstream_closed")  # type: ignore[arg-type]
    access.flush()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "request", (), None)
    record.created, record.msecs = CREATED_NS[0] / 1e9, CREATED_NS[0] // 1_000_000 % 1000 + 0.0
    record.fields = {**dict(zip(FIELDS, entry, strict=True)), "stream_error": "upstream_closed"}
    assert out.getvalue() == formatter.format(record) + "\n"


def test_a_path_that_is_not_utf8_is_written_escaped_not_lost() -> None:
    out = io.StringIO()
    access = AccessLog("json", True, dropped(), stream=out)
    access.record("r", "GET", "/v1/\udcff", 404, "", "", "", 0, False, 0.1)
    access.record("r", "GET", "/v1/\udcfe", 404, "", "", "", 0, False, 0.1, client="203.0.113.7")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["path"] for line in lines] == ["/v1/\\udcff", "/v1/\\udcfe"]
    assert lines[1]["client"] == "203.0.113.7"


def read_all(fd: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 65536):
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class PipeStream:
    """A stream whose descriptor is the write end of a pipe (as stderr is under a container
    runtime or a supervisor) or of a socket (as under journald)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def flush(self) -> None:
        pass

    def write(self, text: str) -> int:
        raise AssertionError("a started access log writes to the descriptor")


@pytest.fixture(params=["pipe", "socket"])
def channel(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, int]]:
    """(kind, read end, write end): a pipe is written on the loop, a socket by the thread."""
    if request.param == "pipe":
        read_fd, write_fd = os.pipe()
    else:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        read_fd, write_fd = a.detach(), b.detach()
    yield request.param, read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def started_as_expected(access: AccessLog, kind: str) -> None:
    if kind == "pipe":  # on the loop, through a non-blocking descriptor of its own
        assert access._writer is None and access._pipe is not None
        assert os.get_blocking(access._pipe._fd) is False
    else:
        assert access._pipe is None and access._writer is not None and access._writer.is_alive()


async def test_lines_are_handed_over_in_batches_on_a_timer_and_written_in_order(
    channel: tuple[str, int, int],
) -> None:
    kind, read_fd, write_fd = channel
    received = bytearray()
    reader = read_all(read_fd, received)
    access = AccessLog("json", True, dropped(), stream=PipeStream(write_fd))  # type: ignore[arg-type]
    access.start()
    started_as_expected(access, kind)
    writer = access._writer
    for i in range(5):
        access.record(f"r-{i}", "POST", "/v1/chat/completions", 200, "m", "p", "u", 1, False, 0.5)
    assert len(access._pending) == 5  # nothing formatted yet: a request only appends its line
    timer = access._timer
    assert timer is not None  # one timer for the batch, armed by its first line
    loop = asyncio.get_running_loop()
    assert 0 < timer.when() - loop.time() <= access_log.FLUSH_INTERVAL_S
    await asyncio.sleep(0)
    assert len(access._pending) == 5  # still waiting: not one hand-over per loop iteration
    deadline = loop.time() + 10
    while access._pending and loop.time() < deadline:  # the timer's flush hands the batch over
        await asyncio.sleep(0.01)
    assert access._pending == [] and access._timer is None
    for i in range(5, 5 + access_log.MOST_PENDING_LINES):  # a full batch goes soon, no timer
        access.record(f"r-{i}", "GET", "/health/live", 200, "", "", "", 0, False, 0.1)
    # Not within the request that filled it (its answer is not written yet): at the end of the
    # loop iteration
    assert len(access._pending) == access_log.MOST_PENDING_LINES
    await asyncio.sleep(0)
    assert access._pending == []
    last = 5 + access_log.MOST_PENDING_LINES
    access.record(f"r-{last}", "GET", "/health/live", 200, "", "", "", 0, False, 0.1)
    await access.close()  # flushes what is pending (the timer cancelled) and waits for the writer
    assert access._timer is None and (writer is None or not writer.is_alive())
    assert stderr_is_left_blocking(write_fd)
    os.close(write_fd)
    reader.join(10)
    ids = [orjson.loads(line)["request_id"] for line in received.splitlines()]
    assert ids == [f"r-{i}" for i in range(last + 1)]


def stderr_is_left_blocking(fd: int) -> bool:
    """The descriptor the log was given keeps its flags (shared with the parent process)."""
    return os.get_blocking(fd)


async def test_a_full_pipe_never_blocks_the_loop_and_drops_beyond_the_backlog(
    channel: tuple[str, int, int],
) -> None:
    kind, read_fd, write_fd = channel  # nobody reads it yet: it is full after 64 KiB or so
    counter = dropped()
    access = AccessLog("json", True, counter, stream=PipeStream(write_fd), backlog_bytes=256 * 1024)  # type: ignore[arg-type]
    access.start()
    started_as_expected(access, kind)
    total = 0
    for _ in range(40):  # 40 iterations of 100 lines of about 300 bytes: 1.2 MB, far beyond the pipe
        for _ in range(100):
            access.record("r" * 32, "POST", "/v1/chat/completions", 200, "m", "p", "u", 1, False, 0.5)
            total += 1
        await asyncio.sleep(0)  # the loop keeps turning although the writer is stuck
    assert counter.children[()].value > 0  # beyond the backlog: dropped and counted
    received = bytearray()
    reader = read_all(read_fd, received)  # the reader comes back
    await access.close()
    assert stderr_is_left_blocking(write_fd)
    os.close(write_fd)
    reader.join(10)
    lines = received.splitlines()
    assert all(orjson.loads(line)["status"] == 200 for line in lines)  # whole lines only
    assert len(lines) + counter.children[()].value == total  # each line written or counted


def test_disabled_when_the_access_logger_is_above_info() -> None:
    logger = logging.getLogger("gateway.access")
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert not AccessLog.configured(True, "json", dropped()).enabled
        logger.setLevel(logging.INFO)
        assert AccessLog.configured(True, "json", dropped()).enabled
        assert not AccessLog.configured(False, "json", dropped()).enabled
    finally:
        logger.setLevel(before)


async def test_a_batch_to_a_regular_file_is_written_whole_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    with path.open("w") as stream:
        access = AccessLog("json", True, dropped(), stream=stream)
        access.start()
        writer = access._writer
        assert writer is not None and writer._whole  # a regular file: one write per batch
        for i in range(200):  # batches of 64 lines, about 16 KB: four times PIPE_BUF
            access.record(f"r-{i}", "POST", "/v1/chat/completions", 200, "m", "p", "u", 1, False, 0.5)
        await access.close()
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == [f"r-{i}" for i in range(200)]


async def test_a_pipe_nobody_reads_at_shutdown_is_given_up_on_after_the_timeout_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_fd, write_fd = os.pipe()
    monkeypatch.setattr(access_log, "_JOIN_TIMEOUT_S", 0.2)
    counter = dropped()
    access = AccessLog("json", True, counter, stream=PipeStream(write_fd))  # type: ignore[arg-type]
    access.start()
    for _ in range(1000):  # about 300 KB: the pipe takes 64 KiB, the rest waits
        access.record("r" * 32, "POST", "/v1/chat/completions", 200, "m", "p", "u", 1, False, 0.5)
    await asyncio.sleep(0)  # (a full batch is handed over at the end of the loop iteration)
    assert access._pipe is not None
    pipe = access._pipe
    assert pipe._waiting  # waiting for the pipe, the loop free
    loop = asyncio.get_running_loop()
    started = loop.time()
    await access.close()  # nobody reads: it waits the timeout, no longer
    assert loop.time() - started < 5
    # The other loggers' handler, closing at exit on the same pipe, will not wait on it again.
    assert stderr.close_wait_s(write_fd) == 0.0
    received = os.read(read_fd, 1 << 20)
    os.close(write_fd)
    os.close(read_fd)
    assert received.endswith(b"\n")  # whole lines only, as far as the pipe took them
    assert received.count(b"\n") + counter.children[()].value == 1000
    assert not pipe._waiting and not loop._selector.get_map().get(pipe._fd)  # type: ignore[attr-defined]


async def test_lines_stderr_cannot_take_are_counted_while_serving_and_never_raise(
    channel: tuple[str, int, int],
) -> None:
    kind, read_fd, write_fd = channel
    os.close(read_fd)  # the reader died: writes fail with EPIPE (SIGPIPE is ignored by Python)
    counter = dropped()
    access = AccessLog("json", True, counter, stream=PipeStream(write_fd))  # type: ignore[arg-type]
    access.start()
    started_as_expected(access, kind)
    batch = access_log.MOST_PENDING_LINES
    for _ in range(batch):  # a full batch, handed over at the end of the loop iteration
        access.record("r", "GET", "/health/live", 200, "", "", "", 0, False, 0.1)
    await asyncio.sleep(0)
    writer = access._pipe or access._writer
    assert writer is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while writer.failed_lines < batch and loop.time() < deadline:  # the thread writes it meanwhile
        await asyncio.sleep(0.01)
    for _ in range(batch):  # the next batch's flush reports what failed so far, on the loop
        access.record("r", "GET", "/health/live", 200, "", "", "", 0, False, 0.1)
    await asyncio.sleep(0)
    # The metric says so while the gateway serves, not only at shutdown.
    assert counter.children[()].value >= batch
    await access.close()
    assert counter.children[()].value == batch * 2  # every line counted once


async def test_dev_null_is_written_on_the_loop_and_never_closed() -> None:
    with open(os.devnull, "w") as stream:
        access = AccessLog("json", True, dropped(), stream=stream)
        access.start()
        pipe = access._pipe
        assert pipe is not None and access._writer is None and pipe._fd == stream.fileno()
        access.record("r", "GET", "/health/live", 200, "", "", "", 0, False, 0.1)
        await access.close()
        os.fstat(stream.fileno())  # still open: it was stderr's, not the log's


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_effort_withheld_from_the_model_that_served_is_said_as_logging_wrote_it(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``effort_dropped`` (h-reason): present, and true, only when the client's reasoning effort
    was withheld from the deployment that served it (declared ``reasoning: false``)."""
    out = io.StringIO()
    access = AccessLog(fmt, True, dropped(), stream=out)
    monkeypatch.setattr(access_log, "time_ns", lambda: CREATED_NS[0])
    entry = ENTRIES[0]
    access.record(*entry, effort_dropped=True)  # type: ignore[arg-type]
    access.flush()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "request", (), None)
    record.created, record.msecs = CREATED_NS[0] / 1e9, CREATED_NS[0] // 1_000_000 % 1000 + 0.0
    record.fields = {**dict(zip(FIELDS, entry, strict=True)), "effort_dropped": True}
    assert out.getvalue() == formatter.format(record) + "\n"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_call_let_in_with_a_previous_token_is_said_as_logging_wrote_it(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``previous_token`` (h-rotate): ``admin`` or ``metrics``, present only for a call let in with
    that previous operator token, so the operator finds who still sends it (with ``client``)."""
    out = io.StringIO()
    access = AccessLog(fmt, True, dropped(), stream=out)
    monkeypatch.setattr(access_log, "time_ns", lambda: CREATED_NS[0])
    entry = ENTRIES[0]
    access.record(*entry, client="10.0.0.7", previous_token="metrics")  # type: ignore[arg-type]
    access.flush()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "request", (), None)
    record.created, record.msecs = CREATED_NS[0] / 1e9, CREATED_NS[0] // 1_000_000 % 1000 + 0.0
    fields = {**dict(zip(FIELDS, entry, strict=True)), "client": "10.0.0.7", "previous_token": "metrics"}
    record.fields = fields
    assert out.getvalue() == formatter.format(record) + "\n"


async def test_one_line_batches_wait_for_a_full_pipe_and_are_counted_on_a_dead_one() -> None:
    """A batch that fits in one atomic write (one line: what a lone request's timer flushes) is
    written by one ``os.write``: when the pipe is full it waits, in order, for the pipe to be
    writable; when the reader is gone it is counted, never raised."""
    read_fd, write_fd = os.pipe()
    filler = os.open(f"/proc/self/fd/{write_fd}", os.O_WRONLY | os.O_NONBLOCK)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe with whole lines
            filled += os.write(filler, b"x" * 63 + b"\n") // 64
    os.close(filler)
    counter = dropped()
    access = AccessLog("json", True, counter, stream=PipeStream(write_fd))  # type: ignore[arg-type]
    access.start()
    assert access._pipe is not None
    for i in range(20):
        access.record(f"r-{i}", "POST", "/v1/chat/completions", 200, "m", "p", "u", 1, False, 0.5)
        access.flush()  # one line a batch
    assert access._pipe._waiting  # the full pipe refused them: they wait, the loop did not
    received = bytearray()
    reader = read_all(read_fd, received)
    await access.close()
    os.close(write_fd)
    reader.join(10)
    lines = received.splitlines()
    assert len(lines) == filled + 20
    assert [orjson.loads(line)["request_id"] for line in lines[filled:]] == [f"r-{i}" for i in range(20)]
    assert counter.children[()].value == 0

    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader died: EPIPE
    access = AccessLog("json", True, counter, stream=PipeStream(write_fd))  # type: ignore[arg-type]
    access.start()
    for i in range(5):
        access.record(f"r-{i}", "POST", "/v1/chat/completions", 200, "m", "p", "u", 1, False, 0.5)
        access.flush()
    assert counter.children[()].value == 5  # counted as they fail, while serving
    await access.close()
    os.close(write_fd)
    assert counter.children[()].value == 5  # once
