"""The buffered access log of a real ``serve`` process loses no line at SIGTERM, in either format."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit
from urllib.request import urlopen

import orjson
import pytest

from gateway.observability.stderr import JOIN_TIMEOUT_S
from gateway.testing.process import ManagedProcess, start

REQUESTS_PER_CLIENT = 60
CLIENTS = 4
CHAT = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}'
SLOW_STREAM = b'{"model": "slow", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, ManagedProcess]]:
    made = {
        "fast": start(["fake-provider", "--port", "0"]),
        "slow": start(
            ["fake-provider", "--port", "0", "--tokens-per-s", "20", "--reply", "a b c d e f g h i j"]
        ),
    }
    try:
        yield made
    finally:
        for fake in made.values():
            fake.stop()


def policy(tmp_path: Path, fakes: dict[str, ManagedProcess]) -> Path:
    path = tmp_path / "access.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            server: {{drain_grace_s: 10}}
            memory: {{enabled: false}}
            providers:
              fast: {{kind: openai, base_url: {fakes["fast"].url}/v1}}
              slow: {{kind: openai, base_url: {fakes["slow"].url}/v1}}
            models:
              chat: {{deployments: [{{provider: fast, model: m}}]}}
              slow: {{deployments: [{{provider: slow, model: s}}]}}
            """
        )
    )
    return path


def post(url: str, body: bytes, count: int, ids: list[str]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        for _ in range(count):
            conn.request(
                "POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            ids.append(response.headers["x-request-id"])
    finally:
        conn.close()


def stream_once(url: str, started: threading.Event, ids: list[str]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=SLOW_STREAM, headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 200
        response.read(1)  # the first bytes of the stream are here: it is under way
        started.set()
        response.read()
        ids.append(response.headers["x-request-id"])
    finally:
        conn.close()


def serve_raw(
    tmp_path: Path,
    fakes: dict[str, ManagedProcess],
    stdout: int | IO[bytes] | None,
    stderr: int | IO[bytes] | None,
    *extra: str,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """``serve`` (access log on) with the standard streams given, as a supervisor would start it."""
    root = str(Path(__file__).resolve().parents[2])
    env = {
        k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SOPHIA_REDIS_URL", "SNOWFLAKE_ACCOUNT")
    }
    env |= {"PYTHONPATH": root, "SOPHIA_ACCESS_LOG": "1", "SOPHIA_LOG_LEVEL": "INFO"}
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--policy",
        str(policy(tmp_path, fakes)),
        *(extra or ("--port", "0")),
    ]
    return subprocess.Popen(
        command, stdout=stdout, stderr=stderr, env=env, cwd=tmp_path, preexec_fn=preexec_fn
    )


def read_until_listening(read_fd: int) -> tuple[str, bytes]:
    """Read ``serve``'s output until its listening line is whole: (its URL, what was read)."""
    seen = b""
    deadline = time.monotonic() + 60
    found = None
    while found is None and time.monotonic() < deadline:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        seen += chunk
        found = re.search(rb"listening on (http://[0-9.]+:[0-9]+)\n", seen)
    assert found, seen[-2000:]
    return found.group(1).decode(), seen


def wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_request_is_logged_once_even_when_sigterm_follows_at_once(
    tmp_path: Path, fakes: dict[str, ManagedProcess], fmt: str
) -> None:
    gateway = start(
        ["serve", "--policy", str(policy(tmp_path, fakes)), "--port", "0"],
        env={"SOPHIA_LOG_FORMAT": fmt, "SOPHIA_ACCESS_LOG": "1", "SOPHIA_LOG_LEVEL": "INFO"},
    )
    try:
        ids: list[str] = []
        clients = [
            threading.Thread(target=post, args=(gateway.url, CHAT, REQUESTS_PER_CLIENT, ids))
            for _ in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
        # A stream still going when the signal comes: the drain lets it finish, and its line too.
        streamed: list[str] = []
        started = threading.Event()
        stream = threading.Thread(target=stream_once, args=(gateway.url, started, streamed))
        stream.start()
        assert started.wait(10)  # the stream is under way (about 0.5 s to go)
        gateway.signal()
        assert gateway.wait(30) == 0
        stream.join(30)
        ids += streamed
        assert len(ids) == CLIENTS * REQUESTS_PER_CLIENT + 1

        def access_lines() -> list[str]:
            return [ln for ln in gateway.stderr.splitlines() if "gateway.access" in ln]

        wait_for(lambda: len(access_lines()) >= len(ids) and "stopped" in gateway.stderr, 10)
        lines = access_lines()
        if fmt == "json":
            logged = [orjson.loads(line)["request_id"] for line in lines]
            assert all(orjson.loads(line)["msg"] == "request" for line in lines)
        else:
            logged = [line.split("request_id=", 1)[1].split(" ", 1)[0] for line in lines]
        assert sorted(logged) == sorted(ids)  # every request once, none lost, none twice
    finally:
        gateway.stop()


def test_a_dead_log_reader_never_stops_the_gateway_and_its_lines_are_counted(
    tmp_path: Path, fakes: dict[str, ManagedProcess]
) -> None:
    """stderr is a pipe whose reader (a container runtime's log collector) dies after start-up:
    the gateway keeps answering, and ``gateway_access_log_dropped_total`` counts the lines it
    could not write while it serves, not only at shutdown."""
    read_fd, write_fd = os.pipe()
    proc = serve_raw(tmp_path, fakes, write_fd, write_fd)
    os.close(write_fd)
    try:
        url, _ = read_until_listening(read_fd)
        os.close(read_fd)  # the collector dies
        read_fd = -1
        ids: list[str] = []
        post(url, CHAT, 150, ids)  # every answer a 200 (asserted in post)
        assert proc.poll() is None

        def dropped() -> float:
            text = urlopen(url + "/metrics", timeout=10).read().decode()
            return float(re.search(r"^gateway_access_log_dropped_total (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]

        # The lines are flushed every 50 ms; the scrape's own line may still be pending.
        wait_for(lambda: dropped() >= 150, 10)
        assert dropped() >= 150
    finally:
        if read_fd >= 0:
            os.close(read_fd)
        proc.terminate()
        assert proc.wait(30) == 0


def malformed(url: str) -> int:
    """One request aiohttp cannot parse (a header line without a colon): the gateway answers 400
    and logs a WARNING (``http/connection.py``); the status it answered."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nthis is not a header\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_a_stuck_log_reader_never_stops_the_gateway_and_no_warning_is_lost(
    tmp_path: Path, fakes: dict[str, ManagedProcess]
) -> None:
    """stderr is a pipe whose reader is alive but stops reading (a log collector under
    back-pressure): WARNINGs from a flood of malformed requests fill the pipe many times over,
    and the gateway keeps answering them and chats alike (a logger writing stderr on the loop
    would stop there at the first full pipe); once the reader reads again, every WARNING arrives."""
    read_fd, write_fd = os.pipe()
    proc = serve_raw(tmp_path, fakes, write_fd, write_fd)
    os.close(write_fd)
    try:
        url, seen = read_until_listening(read_fd)
        # The reader stops here. 1,000 WARNING lines of about 250 bytes: four full pipes.
        statuses = [malformed(url) for _ in range(1000)]
        assert statuses == [400] * 1000  # each answered, none waited on the pipe (10 s timeout each)
        ids: list[str] = []
        post(url, CHAT, 20, ids)  # and chats are served meanwhile
        proc.terminate()
        rest = seen + b"".join(iter(lambda: os.read(read_fd, 65536), b""))  # the reader is back
        assert proc.wait(30) == 0
    finally:
        os.close(read_fd)
        if proc.poll() is None:
            proc.kill()
    warnings = [orjson.loads(line) for line in rest.splitlines() if b'"malformed http request"' in line]
    assert len(warnings) == 1000  # none lost, none torn
    assert all(w["level"] == "warning" and w["status"] == 400 for w in warnings)


def test_a_reader_stuck_through_shutdown_costs_one_wait_not_two(
    tmp_path: Path, fakes: dict[str, ManagedProcess]
) -> None:
    """stderr's reader stops for good (a log collector that died without closing the pipe): at
    SIGTERM the access log waits up to JOIN_TIMEOUT_S for its queued lines and gives them up;
    the other loggers' handler, closing at exit on the same pipe, then does not wait again. One
    wait, not two (it exited after two before)."""
    read_fd, write_fd = os.pipe()
    proc = serve_raw(tmp_path, fakes, write_fd, write_fd)
    os.close(write_fd)
    try:
        url, _ = read_until_listening(read_fd)
        # The reader stops here for good: WARNING lines fill the pipe, access-log lines queue.
        assert [malformed(url) for _ in range(400)] == [400] * 400
        ids: list[str] = []
        post(url, CHAT, 50, ids)
        started = time.monotonic()
        proc.terminate()
        code = proc.wait(60)
        took_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(read_fd)
    assert code == 0
    assert JOIN_TIMEOUT_S <= took_s < 1.6 * JOIN_TIMEOUT_S, took_s  # the access log's wait, once


def test_a_stdout_nobody_reads_does_not_stop_the_gateway(
    tmp_path: Path, fakes: dict[str, ManagedProcess]
) -> None:
    """stdout is a pipe whose reader is gone before ``serve`` says it is listening (a supervisor
    that reads only stderr, or stopped reading): the listening line cannot be written, and the
    gateway serves all the same, then exits cleanly on SIGTERM."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # nobody will read stdout
    with open(tmp_path / "stderr.log", "wb") as stderr:
        proc = serve_raw(tmp_path, fakes, write_fd, stderr)
    os.close(write_fd)
    try:
        address: list[str] = []

        def listening() -> bool:  # the JSON "listening" line on stderr names the address
            found = re.search(
                r'"msg":"listening","address":"(http://[0-9.]+:[0-9]+)"',
                (tmp_path / "stderr.log").read_text(),
            )
            if found:
                address.append(found.group(1))
            return bool(found) or proc.poll() is not None

        wait_for(listening, 60)
        assert address, (tmp_path / "stderr.log").read_text()[-2000:]
        ids: list[str] = []
        post(address[0], CHAT, 5, ids)
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "stderr.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_gateway_started_without_stdout_and_stderr_serves_and_stops_cleanly(
    tmp_path: Path, fakes: dict[str, ManagedProcess]
) -> None:
    """``serve >&- 2>&-``: started with descriptors 1 and 2 closed, the gateway's first sockets
    would take them (libuv aborts when it closes a descriptor that low, and log lines would go
    into a client's connection). /dev/null stands in for them: it serves, then exits 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def close_stdout_and_stderr() -> None:
        os.close(1)
        os.close(2)

    proc = serve_raw(tmp_path, fakes, None, None, "--port", str(port), preexec_fn=close_stdout_and_stderr)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return urlopen(url + "/health/live", timeout=2).status == 200
            except OSError:
                return proc.poll() is not None

        wait_for(up, 60)
        assert proc.poll() is None, "the gateway stopped"
        ids: list[str] = []
        post(url, CHAT, 20, ids)  # every answer a 200, none carrying a stray log line
        proc.terminate()
        assert proc.wait(30) == 0  # not 134: libuv's assertion on closing descriptor 1 or 2
    finally:
        if proc.poll() is None:
            proc.kill()
