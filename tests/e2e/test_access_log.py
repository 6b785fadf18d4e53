"""The buffered access log of a real ``serve`` process loses no line at SIGTERM, in either format."""

from __future__ import annotations

import http.client
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

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
