"""A private ``redis-server`` process on a loopback port, for tests that need a real Redis.

Tests that only need *a* Redis use ``REDIS_URL`` when it is set; tests that stop, restart or
block the server always use their own ``PrivateRedis`` so they never disturb a shared instance.
The server persists nothing (``--save ''``, no AOF) and runs in a throwaway directory.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from gateway.testing.process import free_port

INSTALL_HINT = (
    "these tests need a real Redis: set REDIS_URL=redis://host:port/db, or install redis-server "
    "(Debian/Ubuntu: apt-get install -y redis-server)"
)


def redis_server_binary() -> str | None:
    """Path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server")


def _major_version(binary: str) -> int:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\d+)\.", out)
    return int(match.group(1)) if match else 0


class PrivateRedis:
    """A ``redis-server`` on ``127.0.0.1:port`` that this process owns.

    ``start()`` launches it and waits until it answers PING; ``stop()`` terminates it (SIGTERM,
    then SIGKILL); ``start()`` again brings it back on the same port, empty. Also a context manager.
    """

    def __init__(self, port: int | None = None, *, ready_timeout_s: float = 10.0) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.port = port if port is not None else free_port()
        self.ready_timeout_s = ready_timeout_s
        self._popen: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        # DEBUG (used to simulate a slow server) is disabled by default since Redis 7, and the
        # option that enables it is a startup error on older servers.
        self._extra = ["--enable-debug-command", "yes"] if _major_version(binary) >= 7 else []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def _log_path(self) -> str:
        return f"{self._dir}/redis.log"

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        """Launch the server and return once it answers PING (RuntimeError if it does not)."""
        if self.running:
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="sophia-redis-")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--loglevel", "warning",
            "--logfile", self._log_path,
            *self._extra,
        ]  # fmt: skip
        # The log goes to a file, not a pipe: nobody drains a pipe, and a full one would block Redis.
        self._popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._answers_ping():
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the server (SIGTERM, SIGKILL after ``timeout_s``) and wait for it to exit."""
        popen, self._popen = self._popen, None
        if popen is None:
            return
        popen.terminate()
        try:
            popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()

    def log(self) -> str:
        """What the server has logged so far (warnings and errors)."""
        try:
            with open(self._log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
