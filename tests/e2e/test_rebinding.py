"""DNS rebinding against an open gateway (h-rebind), over real loopback HTTP to ``serve``.

A web page the developer opens re-points its own name (``attacker.example``) at 127.0.0.1; its
browser then calls ``/v1/*`` of an ``auth.mode: open`` gateway there same-origin, and only the
``Host`` header (``attacker.example:PORT``) betrays it. Such a request is a 403 in its door's
envelope and reaches no provider (the fake provider's own count); requests naming the gateway by
address, as localhost, or by a name in ``SOPHIA_ALLOWED_HOSTS`` are served.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.testing.process import ManagedProcess, start

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
Serve = Callable[..., ManagedProcess]
MESSAGE = json.dumps(
    {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()


@pytest.fixture(scope="module")
def fake() -> Iterator[ManagedProcess]:
    process = start(["fake-provider", "--port", "0", "--seed", "1"])
    yield process
    process.stop()


def _policy(tmp_path: Path, fake: ManagedProcess, mode: str) -> Path:
    policy = tmp_path / f"{mode}.yaml"
    policy.write_text(
        f"version: 1\nauth: {{mode: {mode}}}\nmemory: {{enabled: false}}\ncache: {{enabled: false}}\n"
        f"providers:\n  p: {{kind: openai, base_url: '{fake.url}/v1'}}\n"
        "models:\n  m: {deployments: [{provider: p, model: m}]}\n"
    )
    return policy


@pytest.fixture
def serve(tmp_path: Path, fake: ManagedProcess) -> Iterator[Serve]:
    started: list[ManagedProcess] = []

    def go(mode: str = "open", env: dict[str, str] | None = None) -> ManagedProcess:
        gateway = start(
            ["serve", "--policy", str(_policy(tmp_path, fake, mode)), "--port", "0"],
            env={"SOPHIA_ACCESS_LOG": "0", **(env or {})},
        )
        started.append(gateway)
        return gateway

    yield go
    for gateway in started:
        gateway.stop()


def provider_requests(fake: ManagedProcess) -> int:
    with urllib.request.urlopen(f"{fake.url}/_fake/stats", timeout=10) as answer:
        requests: int = json.loads(answer.read())["requests"]
    return requests


def send(
    gateway: ManagedProcess,
    path: str,
    body: bytes,
    host: str | None,
    *,
    version: str = "1.1",
    headers: tuple[str, ...] = (),
) -> tuple[int, dict[str, object]]:
    """One request written byte for byte (``host`` None: no ``Host`` line at all); (status, JSON)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    lines = [f"POST {path} HTTP/{version}", "Content-Type: application/json", *headers]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall("\r\n".join(lines).encode() + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


def test_a_rebound_page_is_refused_in_its_doors_envelope_and_reaches_no_provider(
    serve: Serve, fake: ManagedProcess
) -> None:
    gateway = serve()
    port = gateway.url.rsplit(":", 1)[1]
    before = provider_requests(fake)
    status, chat = send(gateway, "/v1/chat/completions", CHAT, f"attacker.example:{port}")
    assert status == 403, chat
    error = chat["error"]
    assert isinstance(error, dict) and error["type"] == "permission_error"
    assert "DNS rebinding" in error["message"] and "SOPHIA_ALLOWED_HOSTS" in error["message"]
    status, message = send(
        gateway,
        "/v1/messages",
        MESSAGE,
        f"attacker.example:{port}",
        headers=("anthropic-version: 2023-06-01",),
    )
    assert status == 403, message
    assert message["type"] == "error"  # Anthropic's envelope
    assert isinstance(message["error"], dict) and message["error"]["type"] == "permission_error"
    status, memory = send(gateway, "/v1/memory/search", b'{"query": "x"}', f"attacker.example:{port}")
    assert status == 403, memory
    assert provider_requests(fake) == before  # nothing reached the provider


def test_the_gateways_own_names_are_served(serve: Serve, fake: ManagedProcess) -> None:
    gateway = serve()
    port = gateway.url.rsplit(":", 1)[1]
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "foo.localhost", f"LOCALHOST.:{port}"]
    for host in hosts:
        before = provider_requests(fake)
        status, chat = send(gateway, "/v1/chat/completions", CHAT, host)
        assert status == 200, (host, chat)
        assert provider_requests(fake) == before + 1


def test_a_request_without_a_host_header_is_served(serve: Serve, fake: ManagedProcess) -> None:
    """HTTP/1.0 without ``Host`` (an old health checker, a raw script): every browser sends the name
    it reached, so a request without one comes from no web page."""
    gateway = serve()
    before = provider_requests(fake)
    status, chat = send(gateway, "/v1/chat/completions", CHAT, None, version="1.0")
    assert status == 200, chat
    assert provider_requests(fake) == before + 1


def test_sophia_allowed_hosts_admits_a_name(serve: Serve, fake: ManagedProcess) -> None:
    """docker-compose: the service reached as ``gateway``; a domain with a leading dot."""
    gateway = serve(env={"SOPHIA_ALLOWED_HOSTS": "gateway, .corp.example"})
    port = gateway.url.rsplit(":", 1)[1]
    for host in (f"gateway:{port}", "gateway", "api.corp.example", f"corp.example:{port}"):
        status, chat = send(gateway, "/v1/chat/completions", CHAT, host)
        assert status == 200, (host, chat)
    before = provider_requests(fake)
    for host in (f"attacker.example:{port}", "gateway.attacker.example", "evilcorp.example"):
        status, chat = send(gateway, "/v1/chat/completions", CHAT, host)
        assert status == 403, (host, chat)
    assert provider_requests(fake) == before


def test_any_host_when_the_operator_says_so(serve: Serve) -> None:
    gateway = serve(env={"SOPHIA_ALLOWED_HOSTS": "*"})
    status, chat = send(gateway, "/v1/chat/completions", CHAT, "attacker.example")
    assert status == 200, chat


def test_keys_mode_is_unaffected(serve: Serve, fake: ManagedProcess) -> None:
    """A browser has no key to send: keys mode checks the key, not the name (401, never 403)."""
    gateway = serve("keys")
    before = provider_requests(fake)
    status, chat = send(gateway, "/v1/chat/completions", CHAT, "attacker.example")
    assert status == 401, chat
    error = chat["error"]
    assert isinstance(error, dict) and error["code"] == "invalid_api_key"
    assert provider_requests(fake) == before
