"""The commands that read a running gateway (``health``, ``top``, ``rollout``, ``policy explain
--url``) pointed at something that is not one: a server that sends a byte a second, one that
speaks another protocol, one that streams without end, one answering other JSON or escape
sequences. Each must end with one line on stderr and a nonzero exit, within its timeout, never
a traceback and never the admin token."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.admin_client import AdminCallError, call_admin

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-that-must-not-be-printed"


def _answer(conn: socket.socket, mode: str) -> None:
    conn.recv(65536)
    if mode == "drip":  # headers, then a byte a second: each read is quick, the answer never ends
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n")
        for _ in range(30):
            conn.sendall(b" ")
            time.sleep(0.5)
    elif mode == "ssh":  # not HTTP at all
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    elif mode == "endless":  # a body without end
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        while True:
            conn.sendall(b"[" * 65536)
    elif mode == "other-json":  # another service's JSON
        body = b'{"status":"up","dependencies":{"a":1},"models":{"gpt-4o":1}}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    elif mode == "other-list":  # a list of something else, in the keys API's envelope
        body = b'{"object":"list","data":[{"id":5,"status":null}]}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    elif mode == "escapes":  # an error message that would act on the operator's terminal
        body = b'{"error":{"message":"\\u001b[2J\\u001b]0;owned\\u0007 no"}}'
        conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def hostile() -> Iterator[dict[str, str]]:
    """One loopback server per mode; the URL of each by its mode's name."""
    listeners: list[socket.socket] = []
    urls: dict[str, str] = {}

    def serve(listener: socket.socket, mode: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_handle, args=(conn, mode), daemon=True).start()

    def _handle(conn: socket.socket, mode: str) -> None:
        with conn, contextlib.suppress(OSError):
            _answer(conn, mode)

    for mode in ("drip", "ssh", "endless", "other-json", "other-list", "escapes"):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        threading.Thread(target=serve, args=(listener, mode), daemon=True).start()
        urls[mode] = f"http://127.0.0.1:{listener.getsockname()[1]}"
    yield urls
    for listener in listeners:
        listener.close()


def test_a_server_sending_a_byte_a_second_is_cut_at_the_timeout(hostile: dict[str, str]) -> None:
    """urllib's timeout bounds each read: the answer of a server dripping bytes never timed out."""
    from gateway.top import Unreachable, _get

    started = time.monotonic()
    with pytest.raises(AdminCallError, match="no answer within 1 s"):
        call_admin(hostile["drip"], "GET", "/admin/rollouts", timeout_s=1.0)
    with pytest.raises(Unreachable, match="no answer within 1 s"):
        _get(hostile["drip"] + "/metrics", None, 1.0)
    assert time.monotonic() - started < 4


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), "SOPHIA_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


COMMANDS = {
    "health": ("health",),
    "top": ("top",),
    "rollout": ("rollout", "status"),
    "explain": ("policy", "explain", str(ROOT / "routing_policies/default.yaml"), "--model", "gpt-4o"),
    # The keys commands with --url printed a KeyError traceback for JSON not the gateway's, or
    # with --json printed it with exit 0 (an outside probe).
    "keys list": ("keys", "list"),
    "keys list --json": ("keys", "list", "--json"),
    "keys revoke": ("keys", "revoke", "key_abcdefabcdef"),
}


@pytest.mark.parametrize("mode", ["ssh", "endless", "other-json", "other-list", "escapes"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_url_that_is_not_a_gateway_is_one_line_and_a_nonzero_exit(
    hostile: dict[str, str], command: str, mode: str
) -> None:
    """Before: ``ssh`` was a BadStatusLine traceback in every command, ``endless`` a MemoryError
    (or the host's memory), ``other-json`` a traceback in ``health`` and ``top``, and ``escapes``
    reached the terminal raw."""
    result = _cli(*COMMANDS[command], "--url", hostile[mode])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert hostile[mode] in result.stderr
    output = result.stdout + result.stderr
    assert TOKEN not in output and "\x1b" not in output and "\x07" not in output
