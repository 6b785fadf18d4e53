"""Resource leaks under client and upstream faults, read from outside a running gateway (h-leaks).

One real gateway process (embedded cache, memory and keys; ``tests.e2e.tasks_serve`` adds a
``/_test/state`` route for what it does not export: its asyncio tasks and the cache's single
flights) over real fake providers, an OpenAI one and an Anthropic one whose faults are set per
test (``POST /_fake/faults``), an upstream that sends half an SSE event and closes, and a port
that refuses. Clients are raw sockets, so they can leave at any byte: before the answer, after
their headers, half way through an upload, mid-stream, or stop reading and keep the socket.

Each case drives a few hundred requests, then polls (with a deadline) until the gateway is idle
and compares it with the baseline taken after a warm-up of every case: its file descriptors
other than pooled provider connections, client connections, asyncio tasks, the requests in
flight gauge, each deployment's in-flight count (``/admin/models``), single flights and claim
releases, memory store connections in use must all be back exactly. Pooled provider
connections are bounded by the case's concurrency (they idle out after 30 s) and threads by
the default executor's bound. The module ends with a SIGTERM that must drain and exit promptly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.testing.process import ManagedProcess, free_port, start
from gateway.testing.redis_server import INSTALL_HINT, redis_server_binary
from gateway.testing.replicas import MODEL, start_replicas
from tests.e2e.conftest import start_fakes

HEALTHY: dict[str, object] = {
    "latency_ms": 0,
    "hang_rate": 0,
    "reset_rate": 0,
    "disconnect_rate": 0,
    "tokens_per_s": 0,
    "reply": None,
}
CONCURRENCY = 50
WRITE_TIMEOUT_S = 0.5  # the gateway's server.response_write_timeout_s here
EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor bound
LONG_REPLY = " ".join(["word"] * 30000)  # a stream of ~3 MB: far more than socket buffers hold


class PartialEventUpstream:
    """OpenAI-compatible chat whose stream sends one whole event and half of the next, then closes."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "p",
                         "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b"data: " + json.dumps(event).encode() + b'\n\ndata: {"id": "c", "obj')
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Leaks:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    upstream_ports: set[int]
    baseline: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.gateway.url.rsplit(":", 1)[1])

    def faults(self, fake: str, **changes: object) -> None:
        _post_json(self.fakes[fake].url + "/_fake/faults", changes)

    def state(self) -> dict[str, Any]:
        """What must come back to idle: read from /proc, the metrics, /admin/models, /_test/state."""
        pid = self.gateway.popen.pid
        sockets: set[str] = set()
        fds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            fds += 1
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
        upstream = clients = 0
        with open(f"/proc/{pid}/net/tcp") as table:
            for line in table.read().splitlines()[1:]:
                cols = line.split()
                if cols[9] not in sockets:
                    continue
                local, remote = int(cols[1].split(":")[1], 16), int(cols[2].split(":")[1], 16)
                if remote in self.upstream_ports:
                    upstream += 1
                elif local == self.port and cols[3] != "0A":  # 0A: the listening socket
                    clients += 1
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
        metrics = _get(self.gateway.url + "/metrics").decode()
        # The scrape is itself a request in flight; so is /_test/state's, in its task count.
        in_flight = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("gateway_requests_in_flight ")
        )
        pool_in_use = [line for line in metrics.splitlines() if line.startswith("gateway_memory_pool_in_use")]
        loop_tasks = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("gateway_event_loop_tasks ")
        )
        models = json.loads(_get(self.gateway.url + "/admin/models"))
        spool = os.path.join(os.readlink(f"/proc/{pid}/cwd"), "data", "ingest-spool")
        return {
            "spool_files": len(os.listdir(spool)) if os.path.isdir(spool) else 0,
            "other_fds": fds - upstream,
            "client_connections": clients,
            "in_flight": in_flight,
            "deployments_in_flight": sum(_in_flight(models)),
            "memory_pool_in_use": pool_in_use,
            "loop_tasks": loop_tasks,  # the metric: the scrape's task counts, as /_test/state's does
            **json.loads(_get(self.gateway.url + "/_test/state")),
            "upstream_connections": upstream,
            "threads": int(fields["Threads"]),
            "rss_kb": int(fields["VmRSS"].split()[0]),
        }

    def settled(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The state once it is back to the baseline, or the last one read at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.state()
            if _idle(now, self.baseline) or time.monotonic() > deadline:
                return now
            time.sleep(0.05)


def _idle(now: dict[str, Any], baseline: dict[str, Any]) -> bool:
    exact = ("other_fds", "client_connections", "in_flight", "deployments_in_flight", "memory_pool_in_use",
             "tasks", "loop_tasks", "flights", "releases", "spool_files")  # fmt: skip
    return (
        all(now[k] == baseline[k] for k in exact)
        and now["upstream_connections"] <= baseline["upstream_connections"] + CONCURRENCY
        and now["threads"] <= baseline["threads"] + EXECUTOR_THREADS
    )


def _in_flight(value: object) -> Iterator[int]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "in_flight" and isinstance(item, int):
                yield item
            elif key != "peers":
                yield from _in_flight(item)
    elif isinstance(value, list):
        for item in value:
            yield from _in_flight(item)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _post_json(url: str, body: object, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: bytes = response.read()
        return answer


def _http_post(path: str, body: object, extra_headers: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + data


async def _client(
    port: int,
    data: bytes,
    *,
    leave_after_s: float = 0.0,
    read_bytes: int = 0,
    pieces_every_s: float | None = None,
) -> None:
    """One raw client: sends ``data`` (in 300-byte pieces every ``pieces_every_s``, all but the
    last: an upload that stops), reads ``read_bytes`` of the answer (or to its end), waits
    ``leave_after_s``, and closes."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if pieces_every_s is None:
            await loop.sock_sendall(sock, data)
        else:
            for at in range(0, len(data) - 300, 300):
                await loop.sock_sendall(sock, data[at : at + 300])
                await asyncio.sleep(pieces_every_s)
        got = 0
        # A hang detector, not a latency bound: 200 clients at once on a machine running another
        # test file beside this one took more than 10 s once (the whole suite on two workers).
        async with asyncio.timeout(30):
            while got < read_bytes:
                received = await loop.sock_recv(sock, 65536)
                if not received:
                    break
                got += len(received)
        if leave_after_s:
            await asyncio.sleep(leave_after_s)
    finally:
        sock.close()


async def _many(count: int, one: Callable[[int], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def run(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(count)))


def _chat(i: object, **extra: object) -> dict[str, object]:
    return {"model": "chat", "messages": [{"role": "user", "content": f"hello {i}"}], **extra}


Case = Callable[[Leaks, int], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


@case
async def client_leaves_before_the_upstream_answers(s: Leaks, n: int) -> None:
    s.faults("up", latency_ms=200)
    await _many(
        n, lambda i: _client(s.port, _http_post("/v1/chat/completions", _chat(i)), leave_after_s=0.03)
    )


@case
async def client_leaves_right_after_its_headers(s: Leaks, n: int) -> None:
    def head(i: int) -> bytes:
        return _http_post("/v1/chat/completions", _chat(i)).split(b"\r\n\r\n")[0] + b"\r\n\r\n"

    await _many(n, lambda i: _client(s.port, head(i), leave_after_s=0.02))


@case
async def client_leaves_during_a_slow_upload(s: Leaks, n: int) -> None:
    await _many(
        n,
        lambda i: _client(
            s.port, _http_post("/v1/chat/completions", _chat(i, pad="x" * 1500)), pieces_every_s=0.01
        ),
    )


@case
async def client_leaves_mid_stream(s: Leaks, n: int) -> None:
    s.faults("up", tokens_per_s=50, reply=" ".join(["w"] * 40))
    await _many(
        n,
        lambda i: _client(s.port, _http_post("/v1/chat/completions", _chat(i, stream=True)), read_bytes=600),
    )


@case
async def client_leaves_while_the_upstream_hangs(s: Leaks, n: int) -> None:
    s.faults("up", hang_rate=1)
    await _many(
        n, lambda i: _client(s.port, _http_post("/v1/chat/completions", _chat(i)), leave_after_s=0.05)
    )


@case
async def upstream_resets_the_connection(s: Leaks, n: int) -> None:
    s.faults("up", reset_rate=1)
    await _many(
        n, lambda i: _client(s.port, _http_post("/v1/chat/completions", _chat(i)), read_bytes=1 << 20)
    )


@case
async def upstream_cuts_the_stream(s: Leaks, n: int) -> None:
    s.faults("up", disconnect_rate=1, tokens_per_s=500, reply="a b c d e f")
    await _many(
        n,
        lambda i: _client(
            s.port, _http_post("/v1/chat/completions", _chat(i, stream=True)), read_bytes=1 << 20
        ),
    )


@case
async def upstream_sends_half_an_event_and_closes(s: Leaks, n: int) -> None:
    body = _chat(0, stream=True, model="partial")
    await _many(n, lambda i: _client(s.port, _http_post("/v1/chat/completions", body), read_bytes=1 << 20))


@case
async def client_leaves_a_slow_chunk_by_chunk_upstream(s: Leaks, n: int) -> None:
    s.faults("up", tokens_per_s=5, reply="a b c d e f g h")
    await _many(
        n,
        lambda i: _client(s.port, _http_post("/v1/chat/completions", _chat(i, stream=True)), read_bytes=400),
    )


@case
async def upstream_refuses_connections(s: Leaks, n: int) -> None:
    await _many(
        n,
        lambda i: _client(
            s.port, _http_post("/v1/chat/completions", _chat(i, model="refused")), read_bytes=1 << 20
        ),
    )


@case
async def single_flight_leader_leaves_while_followers_wait(s: Leaks, n: int) -> None:
    s.faults("up", latency_ms=200, tokens_per_s=50, reply="a b c d e f")
    run = uuid.uuid4().hex  # keys no earlier run has cached

    async def one(i: int) -> None:
        # Groups of five identical cacheable requests, whole and streamed by turns.
        body = _http_post(
            "/v1/chat/completions", _chat(f"{run} {i // 5}", temperature=0, stream=bool(i // 5 % 2))
        )
        if i % 5 == 0:  # the leader leaves; of its followers, some leave too, some wait for the answer
            await _client(s.port, body, leave_after_s=0.03)
        else:
            await asyncio.sleep(0.005)
            await _client(
                s.port, body, read_bytes=1 << 20 if i % 2 else 0, leave_after_s=0.0 if i % 2 else 0.05
            )

    await _many(n, one)


@case
async def upstream_hangs_past_the_first_byte_timeout(s: Leaks, n: int) -> None:
    body = _http_post("/v1/chat/completions", _chat(0, model="hanging"))
    await _many(n, lambda i: _client(s.port, body, read_bytes=1 << 20))


@case
async def client_leaves_a_memory_augmented_chat(s: Leaks, n: int) -> None:
    s.faults("up", latency_ms=100)

    async def one(i: int) -> None:
        body = _http_post("/v1/chat/completions", _chat(i), "x-gateway-memory: kb\r\n")
        await _client(s.port, body, leave_after_s=0.01 * (i % 15))

    await _many(n, one)


@case
async def client_leaves_memory_api_calls(s: Leaks, n: int) -> None:
    s.faults("up", latency_ms=100)

    async def one(i: int) -> None:
        if i % 2:
            body = _http_post("/v1/memory/search", {"namespaces": ["kb"], "query": f"turbine {i}"})
        else:
            body = _http_post("/v1/memory", {"memories": [{"namespace": "kb", "content": f"fact {i}"}]})
        await _client(s.port, body, leave_after_s=0.01 * (i % 15))

    await _many(n, one)


@case
async def client_cuts_a_messages_stream(s: Leaks, n: int) -> None:
    s.faults("claude", tokens_per_s=50, reply=" ".join(["w"] * 40))
    body = {
        "model": "claude",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    await _many(n, lambda i: _client(s.port, _http_post("/v1/messages", body), read_bytes=900))


@case
async def client_cuts_a_responses_stream(s: Leaks, n: int) -> None:
    s.faults("up", tokens_per_s=50, reply=" ".join(["w"] * 40))
    s.faults("claude", tokens_per_s=50, reply=" ".join(["w"] * 40))

    def body(i: int) -> bytes:
        return _http_post(
            "/v1/responses", {"model": ("chat", "claude")[i % 2], "stream": True, "input": "hi"}
        )

    await _many(n, lambda i: _client(s.port, body(i), read_bytes=1500))


@case
async def client_cuts_streams_of_gemini_azure_and_translated_doors(s: Leaks, n: int) -> None:
    slow = {"tokens_per_s": 50, "reply": " ".join(["w"] * 40)}
    s.faults("up", **slow)
    s.faults("gemini", **slow)
    said = [{"role": "user", "content": "hi"}]
    azure = "/openai/deployments/chat/chat/completions?api-version=2024-10-21"
    bodies = [
        _http_post("/v1/chat/completions", {"model": "gemini", "stream": True, "messages": said}),
        _http_post("/v1/messages", {"model": "chat", "max_tokens": 50, "stream": True, "messages": said}),
        _http_post("/v1/messages", {"model": "gemini", "max_tokens": 50, "stream": True, "messages": said}),
        _http_post("/v1/responses", {"model": "gemini", "stream": True, "input": "hi"}),
        _http_post(azure, {"stream": True, "messages": said}, "api-key: k\r\n"),
    ]
    await _many(n, lambda i: _client(s.port, bodies[i % len(bodies)], read_bytes=900))


@case
async def client_leaves_a_file_upload_half_way(s: Leaks, n: int) -> None:
    """Before: the partial spool file of most such uploads (68 in 100) stayed in the spool until
    the next restart: the body's read failed as the client left, and aiohttp's cancel of the
    handler landed on the cleanup's first await, before the file was deleted."""
    boundary = "leaksboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="namespace"\r\n\r\nkb\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="notes.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    body = head + b"the turbine inspection is in April. " * 40_000 + f"\r\n--{boundary}--\r\n".encode()
    request = (
        f"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    # Cut anywhere from the form's head to most of the file (1.4 MB: past the spool's 1 MiB writes).
    await _many(n, lambda i: _client(s.port, request[: len(request) * (1 + i % 9) // 10], leave_after_s=0.02))


def _policy(fakes: dict[str, ManagedProcess], partial_port: int, refused_port: int) -> str:
    up, claude = fakes["up"].url, fakes["claude"].url
    return textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        server: {{drain_grace_s: 2, response_write_timeout_s: {WRITE_TIMEOUT_S}}}
        breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
        retry: {{max_attempts: 1}}
        cache:
          default_category: common_queries
          categories: {{common_queries: {{ttl_s: 600, max_bytes: 10MB}}}}
        providers:
          up: {{kind: openai, base_url: "{up}/v1", timeouts: {{connect_s: 1, first_byte_s: 3, total_s: 5}}}}
          claude: {{kind: anthropic, base_url: "{claude}/v1", timeouts: {{connect_s: 1, first_byte_s: 3, total_s: 5}}}}
          gemini: {{kind: gemini, base_url: "{fakes["gemini"].url}/v1beta", timeouts: {{first_byte_s: 3, total_s: 5}}}}
          hang: {{kind: openai, base_url: "{fakes["hang"].url}/v1", timeouts: {{first_byte_s: 0.3}}}}
          partial: {{kind: openai, base_url: "http://127.0.0.1:{partial_port}/v1"}}
          refused: {{kind: openai, base_url: "http://127.0.0.1:{refused_port}/v1", timeouts: {{connect_s: 1}}}}
        models:
          chat: {{deployments: [{{provider: up, model: up-chat}}]}}
          claude: {{deployments: [{{provider: claude, model: claude-up}}]}}
          gemini: {{deployments: [{{provider: gemini, model: gemini-up}}]}}
          hanging: {{deployments: [{{provider: hang, model: never}}]}}
          partial: {{deployments: [{{provider: partial, model: half}}]}}
          refused: {{deployments: [{{provider: refused, model: none}}]}}
          embed: {{deployments: [{{provider: up, model: up-embed}}]}}
        memory: {{embedding_model: embed}}
        """
    )


@pytest.fixture(scope="module")
def leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leaks]:
    fakes = start_fakes(
        {
            "up": [],
            "claude": ["--flavor", "anthropic"],
            "hang": ["--hang-rate", "1"],
            "gemini": ["--flavor", "gemini"],
        }
    )
    partial = PartialEventUpstream()
    refused = free_port()
    policy = tmp_path_factory.mktemp("leaks") / "policy.yaml"
    policy.write_text(_policy(fakes, partial.port, refused))
    gateway = None
    try:
        gateway = start(
            ["serve", "--policy", str(policy), "--port", "0"],
            module="tests.e2e.tasks_serve",
            env={"SOPHIA_LOG_FORMAT": "json"},
        )
        ports = {int(f.url.rsplit(":", 1)[1]) for f in fakes.values()} | {partial.port, refused}
        s = Leaks(gateway, fakes, ports, {})
        _post_json(
            gateway.url + "/v1/memory",
            {"memories": [{"namespace": "kb", "content": "the turbine inspection is in April"}]},
        )
        # Warm-up: every case once, so what a process opens once (database files, executor
        # threads, the first pooled connection) is in the baseline, not counted as a leak.
        for run in CASES.values():
            asyncio.run(run(s, 10))
            _reset(s)
        s.baseline = _quiet(s)
        yield s
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()
        partial.stop()


def _answered(s: Leaks) -> float:
    """Requests the gateway has answered (any status, 499 included), from its metrics."""
    metrics = _get(s.gateway.url + "/metrics").decode()
    return sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("gateway_requests_total{")
    )


def _quiet(s: Leaks, timeout_s: float = 10.0) -> dict[str, Any]:
    """The state once no request is left in flight and two reads in a row agree."""
    deadline = time.monotonic() + timeout_s
    last = s.state()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = s.state()
        quiet = now["client_connections"] == 0 and now["deployments_in_flight"] == 0
        if quiet and all(now[k] == last[k] for k in ("other_fds", "tasks", "in_flight", "threads")):
            return now
        last = now
    raise AssertionError(f"the gateway never went quiet after the warm-up: {last}")


def _reset(s: Leaks) -> None:
    s.faults("up", **HEALTHY)
    s.faults("claude", **HEALTHY)
    s.faults("gemini", **HEALTHY)


@pytest.mark.parametrize("name", list(CASES))
def test_a_fault_leaves_nothing_behind(leaks: Leaks, name: str) -> None:
    answered = _answered(leaks)
    try:
        asyncio.run(CASES[name](leaks, 200))
    finally:
        _reset(leaks)
    after = leaks.settled()
    # Every request reached the gateway and was answered or closed (499, 408...), counted.
    assert _answered(leaks) - answered >= 200
    assert _idle(after, leaks.baseline), f"{name}: {after} against the baseline {leaks.baseline}"


def test_a_client_that_stops_reading_a_long_stream_is_let_go(leaks: Leaks) -> None:
    """A client that asks for a long stream, reads none of it and keeps its socket open: the
    gateway's writes wait on a full TCP window. Before, nothing bounded that wait: 20 such
    clients held 20 handler tasks, 20 provider connections (past the provider's total_s of 5 s)
    and their buffered answers for as long as they kept their sockets (30 s measured, no end).
    Now each connection is closed once it has read nothing for response_write_timeout_s."""
    leaks.faults("up", reply=LONG_REPLY)
    sockets: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", leaks.port))
            sock.sendall(_http_post("/v1/chat/completions", _chat(0, stream=True)))
            sockets.append(sock)
        # The clients still hold their sockets: only the gateway can end these.
        after = leaks.settled(timeout_s=WRITE_TIMEOUT_S + 8)
        assert _idle(after, leaks.baseline), f"{after} against the baseline {leaks.baseline}"
    finally:
        for sock in sockets:
            sock.close()
        _reset(leaks)
    assert _idle(leaks.settled(), leaks.baseline)


def _larger_than_a_socket_holds() -> str:
    """A reply whose answer is larger than the kernel lets a socket's send buffer grow to
    (``tcp_wmem``'s maximum, twice over): its tail must wait in the gateway's own buffer."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            most = int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        most = 4 << 20
    return " ".join(["word"] * ((2 * most + (1 << 20)) // 5))


def test_a_client_that_reads_no_whole_answer_is_let_go(leaks: Leaks) -> None:
    """A client that asks for a large whole answer and reads none of it. Before, each such
    connection held its handler's task and the answer's unsent bytes for as long as the client
    kept its socket, out of gateway_requests_in_flight (5 answers of 8 MB: +5 tasks, +89 MB
    resident); aiohttp's close of a connection waits for its unsent bytes, so even
    ``Connection: close`` kept it. Now it is closed once the client reads none of it for
    response_write_timeout_s."""
    leaks.faults("up", reply=_larger_than_a_socket_holds())
    sockets: list[socket.socket] = []
    try:
        for i in range(5):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", leaks.port))
            sock.sendall(_http_post("/v1/chat/completions", _chat(i)))
            sockets.append(sock)
        after = leaks.settled(timeout_s=WRITE_TIMEOUT_S * 2 + 10)
        assert _idle(after, leaks.baseline), f"{after} against the baseline {leaks.baseline}"
    finally:
        for sock in sockets:
            sock.close()
        _reset(leaks)
    assert _idle(leaks.settled(), leaks.baseline)


def test_a_client_reading_a_large_answer_slowly_gets_all_of_it(leaks: Leaks) -> None:
    """The bound is on a client that reads nothing, not on a slow one: a whole answer of several
    MB read at a steady trickle takes many times response_write_timeout_s (0.5 s here) and must
    arrive whole. The first bound cut the whole write at the timeout, however much the client
    had read meanwhile (an embeddings answer of 30 MB to a client on a slow link was cut after
    30 s); it now lets go only when nothing was sent for the timeout."""
    leaks.faults("up", reply=_larger_than_a_socket_holds())
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", leaks.port))
        sock.sendall(_http_post("/v1/chat/completions", _chat("slow")))
        sock.settimeout(20)
        received = bytearray()
        started = time.monotonic()
        while chunk := sock.recv(256 * 1024):
            received += chunk
            time.sleep(0.03)  # about 8 MB/s at most: seconds for the whole answer
        sock.close()
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        assert len(body) == length, (len(body), length)
        assert time.monotonic() - started > WRITE_TIMEOUT_S * 4  # it was slow, and served whole
        assert json.loads(body)["choices"][0]["message"]["content"]
    finally:
        _reset(leaks)
    assert _idle(leaks.settled(), leaks.baseline)


def test_requests_cancelled_during_their_admission_hold_no_limit(tmp_path: Path) -> None:
    """Keys mode on the Redis limiter: a key busy enough to take leases, then clients that leave
    while Redis is stalled (``CLIENT PAUSE``) with their admission's round trip out. Redis admits
    them when it wakes; before, the answer was dropped with the cancelled request, so the lease it
    granted stayed counted, unused, and so did the reservation (3 rounds of 5 such clients:
    1,806 tokens of the key's TPM held for the next minute, beyond the 370 its 74 answered
    requests used). Now what the trip admitted is given back: once settled, the token window
    holds exactly what the answered requests used."""
    if redis_server_binary() is None:
        pytest.skip(INSTALL_HINT)
    stack = start_replicas(tmp_path, 1, fake_flags=["--latency-ms", "5"])
    try:
        secret = stack.create_key("--rpm", "2000", "--tpm", "400000")
        port = int(stack.gateways[0].url.rsplit(":", 1)[1])
        store = redis.Redis.from_url(stack.redis_url)

        def body(i: int) -> bytes:
            said = [{"role": "user", "content": f"hi {i}"}]
            return _http_post(
                "/v1/chat/completions",
                {"model": MODEL, "messages": said},
                f"Authorization: Bearer {secret}\r\n",
            )

        def window() -> tuple[int, int, int]:
            """(requests, tokens) the key's window counts, and the requests the provider answered."""
            counted = [
                int(store.get(k) or 0) for k in (next(store.scan_iter(match=f"*:{n}")) for n in ("rs", "ts"))
            ]
            answered = json.loads(_get(stack.fake.url + "/_fake/stats"))["requests"]
            return counted[0], counted[1], answered

        asyncio.run(_many(30, lambda i: _client(port, body(i), read_bytes=1 << 20)))
        # Settled: each reservation (257 tokens) corrected to the few tokens the request used.
        warm = _settled_window(window, lambda w: w[0] == w[2] == 30 and w[1] <= 30 * 16)
        each, rest = divmod(warm[1], 30)
        assert warm[0] == 30 and rest == 0 and each <= 16, warm
        for _ in range(3):
            asyncio.run(_many(10, lambda i: _client(port, body(i), read_bytes=1 << 20)))  # leases taken
            store.execute_command("CLIENT", "PAUSE", "600", "ALL")
            asyncio.run(_many(5, lambda i: _client(port, body(i), leave_after_s=0.1)))
        requests, tokens, answered = _settled_window(window, lambda w: w[1] == each * w[2])
        # The tokens: exactly what the answered requests used. The requests: those, and at most
        # the 15 that left once each (a request admitted alone counts, as any admitted request).
        assert tokens == each * answered, (requests, tokens, answered)
        assert answered <= requests <= answered + 15
    finally:
        stack.close()


def _settled_window(
    read: Callable[[], tuple[int, int, int]], done: Callable[[tuple[int, int, int]], bool]
) -> tuple[int, int, int]:
    """``read()`` once ``done`` holds for it (settlements are written in batches, leases given
    back when they end), or as it is at the deadline."""
    deadline = time.monotonic() + 10
    while not done(now := read()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def test_sigterm_drains_and_exits_promptly_after_the_faults(leaks: Leaks) -> None:
    """Last (the module's order): the same gateway, after every case, with a client that stopped
    reading a long stream, a slow stream being sent, an upload half sent and a request whose
    body never comes, still drains and exits 0 within its grace (2 s) and the drain's cut."""
    leaks.faults("up", reply=LONG_REPLY)
    leaks.faults("claude", tokens_per_s=2, reply=" ".join(["w"] * 100))
    messages = {
        "model": "claude",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    upload = (
        b"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nsome text'
    )
    sends = [
        _http_post("/v1/chat/completions", _chat(0, stream=True)),
        _http_post("/v1/messages", messages),
        upload,
        _http_post("/v1/chat/completions", _chat(1)).split(b"\r\n\r\n")[0] + b"\r\n\r\n",
    ]
    sockets = []
    try:
        for data in sends:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", leaks.port))
            sock.sendall(data)
            sockets.append(sock)
        deadline = time.monotonic() + 5
        while leaks.state()["deployments_in_flight"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        leaks.gateway.signal(signal.SIGTERM)
        assert leaks.gateway.wait(timeout_s=10) == 0
        assert time.monotonic() - started < 2 + 2  # drain_grace_s 2, plus the cut's half second
    finally:
        for sock in sockets:
            sock.close()
