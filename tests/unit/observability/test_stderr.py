"""Every logger but the access log writes through ``StderrHandler``: a record never makes the
thread that logs it wait on stderr, lines are whole and in order, and what stderr cannot take is
counted, never a hang."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Iterator

import orjson
import pytest

from gateway.observability import stderr
from gateway.observability.logging import JsonFormatter
from gateway.observability.stderr import StderrHandler, log_lines_dropped


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    opened = [read_fd, write_fd]
    try:
        yield read_fd, write_fd
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):  # closed by the test (a reader that dies)
                os.close(fd)


def make_logger(handler: logging.Handler, name: str) -> logging.Logger:
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def log_in_thread(logger: logging.Logger, count: int, size: int) -> bool:
    """Log ``count`` records of about ``size`` bytes from a thread; whether all calls returned
    within 20 s (a logger blocked on a full pipe never returns)."""

    def run() -> None:
        for i in range(count):
            logger.warning("upstream failed", extra={"fields": {"n": i, "detail": "x" * size}})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    return not thread.is_alive()


def test_a_stuck_reader_never_blocks_a_logger_and_lines_beyond_the_backlog_are_counted(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    stream = open(write_fd, "w", closefd=False)  # noqa: SIM115 - the fixture closes the descriptor
    handler = StderrHandler(stream, backlog_bytes=64 * 1024)
    logger = make_logger(handler, "test.stderr.stuck")
    # 2,000 lines of about 1 KB: twice a pipe's 64 KB plus the backlog many times over.
    assert log_in_thread(logger, 2000, 1000), "a logger waited on the stuck pipe"
    dropped = handler.dropped
    assert dropped > 1000  # most could neither be written nor wait
    reader = threading.Thread(target=lambda: got.append(read_all(read_fd)), daemon=True)
    got: list[bytes] = []
    reader.start()
    handler.close()  # writes what waits, now that the reader reads
    os.close(write_fd)
    reader.join(20)
    lines = got[0].splitlines()
    numbers = [orjson.loads(line)["n"] for line in lines]  # every line whole
    assert numbers == sorted(numbers)  # in order
    assert len(lines) + handler.dropped == 2000  # each record written or counted, none twice
    assert handler.dropped == dropped  # nothing dropped once the reader came back


def test_a_dead_reader_is_counted_not_raised(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)  # the log collector is gone: writes fail with EPIPE
    stream = open(write_fd, "w", closefd=False)  # noqa: SIM115
    handler = StderrHandler(stream)
    logger = make_logger(handler, "test.stderr.dead")
    before = log_lines_dropped()
    assert log_in_thread(logger, 50, 10)
    handler.close()
    assert handler.dropped == 50
    assert log_lines_dropped() - before == 50  # what gateway_log_dropped_total exports


def test_a_stream_without_a_descriptor_is_written_at_once() -> None:
    stream = io.StringIO()
    handler = StderrHandler(stream)  # type: ignore[arg-type]
    logger = make_logger(handler, "test.stderr.capture")
    logger.warning("hello")
    assert orjson.loads(stream.getvalue())["msg"] == "hello"  # no thread: there at once
    handler.close()


def test_a_record_after_close_is_written_at_once(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    stream = open(write_fd, "w", closefd=False)  # noqa: SIM115
    handler = StderrHandler(stream)
    logger = make_logger(handler, "test.stderr.closed")
    logger.warning("before")
    handler.close()
    logger.warning("after")  # logging.shutdown has run: nothing would wait for a new thread
    os.close(write_fd)
    assert [orjson.loads(line)["msg"] for line in read_all(read_fd).splitlines()] == ["before", "after"]


def test_a_forked_child_writes_through_a_thread_of_its_own(pipe: tuple[int, int]) -> None:
    """``serve --workers`` forks; a child forked after the parent's thread started has no such
    thread, and must not queue its lines for it."""
    read_fd, write_fd = pipe
    stream = open(write_fd, "w", closefd=False)  # noqa: SIM115
    handler = StderrHandler(stream)
    logger = make_logger(handler, "test.stderr.fork")
    logger.warning("parent")  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage is not collected there)
        code = 1
        try:
            logger.warning("child")
            handler.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.close()
    os.close(write_fd)
    messages = sorted(orjson.loads(line)["msg"] for line in read_all(read_fd).splitlines())
    assert messages == ["child", "parent"]


def test_once_a_closing_writer_gave_up_on_a_pipe_no_other_waits_on_it(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader stuck for good: the first writer to close waits ``JOIN_TIMEOUT_S`` and gives up;
    any other closing on the same pipe (another descriptor of it included) does not wait again;
    another pipe still gets the whole wait."""
    monkeypatch.setattr(stderr, "JOIN_TIMEOUT_S", 0.3)
    _, write_fd = pipe
    stream = open(write_fd, "w", closefd=False)  # noqa: SIM115 - the fixture closes the descriptor
    first = StderrHandler(stream)
    assert log_in_thread(make_logger(first, "test.stderr.giveup1"), 200, 1000)  # 200 KB: stuck
    assert stderr.close_wait_s(write_fd) == 0.3
    first.close()  # waited 0.3 s in vain
    assert stderr.close_wait_s(write_fd) == 0.0
    other_fd = os.open(f"/proc/self/fd/{write_fd}", os.O_WRONLY)  # as the access log reopens stderr
    try:
        assert stderr.close_wait_s(other_fd) == 0.0
    finally:
        os.close(other_fd)
    second = StderrHandler(stream)
    make_logger(second, "test.stderr.giveup2").warning("one more")
    waits: list[float | None] = []
    join = threading.Thread.join

    def spy(thread: threading.Thread, timeout: float | None = None) -> None:
        waits.append(timeout)
        join(thread, timeout)

    monkeypatch.setattr(threading.Thread, "join", spy)
    second.close()
    assert waits == [0.0]
    fresh_read, fresh_write = os.pipe()
    try:
        assert stderr.close_wait_s(fresh_write) == 0.3
    finally:
        os.close(fresh_read)
        os.close(fresh_write)
