"""A private ``redis-server`` process on a loopback port, for tests that need a real Redis.

Tests that only need *a* Redis use ``REDIS_URL`` when it is set; tests that stop, restart or
block the server always use their own ``PrivateRedis`` so they never disturb a shared instance.
The server persists nothing (``--save ''``, no AOF) and runs in a throwaway directory.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 (``self_signed``), its key: the server's own and
    the clients' CA."""

    cert: str
    key: str


def self_signed(directory: str) -> TlsFiles:
    """Make a self-signed certificate for IP 127.0.0.1 in ``directory`` with ``openssl``."""
    cert, key = f"{directory}/redis.crt", f"{directory}/redis.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return TlsFiles(cert, key)


class PrivateRedis:
    """A ``redis-server`` on ``127.0.0.1:port`` that this process owns.

    ``start()`` launches it and waits until it answers PING; ``stop()`` terminates it (SIGTERM,
    then SIGKILL); ``start()`` again brings it back on the same port, empty. Also a context manager.
    ``extra_args`` are appended to the command line; ``tls`` serves TLS only on the port (the
    URL is then ``rediss://`` with the certificate as CA); ``sentinel_of`` makes it a Sentinel
    (``redis-server --sentinel``) that watches that server as ``mymaster``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        ready_timeout_s: float = 10.0,
        extra_args: Sequence[str] = (),
        tls: TlsFiles | None = None,
        sentinel_of: PrivateRedis | None = None,
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.port = port if port is not None else free_port()
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = list(extra_args)
        self.tls = tls
        self.sentinel_of = sentinel_of
        self._popen: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        # DEBUG (used to simulate a slow server) is disabled by default since Redis 7, and the
        # option that enables it is a startup error on older servers.
        self._extra = ["--enable-debug-command", "yes"] if _major_version(binary) >= 7 else []

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.cert}"
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
        if self.sentinel_of is not None:
            self._popen = self._launch_sentinel(self.sentinel_of)
        else:
            self._popen = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._answers_ping():
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.02)

    def _args(self) -> list[str]:
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key,
                "--tls-ca-cert-file", self.tls.cert, "--tls-auth-clients", "no",
            ]  # fmt: skip
        assert self._dir is not None
        return [
            self.binary,
            *ports,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--loglevel", "warning",
            "--logfile", self._log_path,
            *self._extra,
            *self.extra_args,
        ]  # fmt: skip

    def _launch_sentinel(self, primary: PrivateRedis) -> subprocess.Popen[bytes]:
        # A Sentinel rewrites its configuration file: it must be a file of its own.
        config = f"{self._dir}/sentinel.conf"
        with open(config, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\nlogfile {self._log_path}\n"
                f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
            )
        # The log goes to a file, not a pipe: nobody drains a pipe, and a full one would block it.
        return subprocess.Popen(
            [self.binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

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
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                sock = raw
                if self.tls is not None:
                    context = ssl.create_default_context(cafile=self.tls.cert)
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PrivateRedisCluster:
    """A Redis Cluster of ``masters`` private ``redis-server`` processes on loopback (no
    replicas), made with ``redis-cli --cluster create``; ``url`` is ``redis+cluster://``."""

    def __init__(self, masters: int = 3, *, ready_timeout_s: float = 20.0) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (it creates the cluster)")
        self.ready_timeout_s = ready_timeout_s
        self.nodes = [PrivateRedis(extra_args=self._node_args()) for _ in range(masters)]

    @staticmethod
    def _node_args() -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        """Start the nodes, join them, and return once every node says the cluster is ok."""
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=self.ready_timeout_s,
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
        deadline = time.monotonic() + self.ready_timeout_s
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    @staticmethod
    def _ok(node: PrivateRedis) -> bool:
        out = subprocess.run(
            ["redis-cli", "-p", str(node.port), "cluster", "info"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return "cluster_state:ok" in out

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> PrivateRedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
