"""The gateway probed by a hostile stranger (h-sec): a gateway in keys mode with an admin token,
its providers one hostile upstream on loopback that quotes the gateway's provider key back
(whole, cut short, masked in the middle, in headers, in a redirect, in an error event mid-stream)
and echoes every header it was sent; clients on raw sockets for what an HTTP library would not
send. What a client, the access log and the gateway's other output may never hold: the provider
key or a long run of it, the virtual key."""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess, start
from tests.e2e.conftest import start_gateway

ADMIN = "e2e-security-stranger-admin"
# The gateway's provider key, as the hostile upstream will quote it.
KEY = "sk-e2e-sec-provider-0123456789abcdefghijKLMNOP"
CUT = KEY[:-2]  # the key quoted cut at a length limit: two characters left to guess
MASKED = KEY[:12] + "*****" + KEY[17:]  # masked in its middle: the rest still there
OPENAI_MASK = KEY[:8] + "****" + KEY[-4:]  # what OpenAI's own 401 shows: kept


def _runs_of_the_key(text: str, run: int = 16) -> list[str]:
    """Every ``run``-character piece of ``KEY`` in ``text``."""
    return [KEY[i : i + run] for i in range(len(KEY) - run + 1) if KEY[i : i + run] in text]


class HostileUpstream:
    """OpenAI- and Anthropic-shaped; what it does is chosen by the prompt. Keeps the headers of
    every request it gets."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append({k.lower(): v for k, v in self.headers.items()})
                prompt = body["messages"][-1]["content"]
                prompt = prompt if isinstance(prompt, str) else prompt[0]["text"]
                quote = f"header 'Authorization: Bearer {CUT}' refused; retried as {MASKED}; {OPENAI_MASK}"
                headers = {"Content-Type": "application/json"}
                if prompt == "quote" and not body.get("stream"):
                    if self.path.endswith("/messages"):
                        error: Any = {
                            "type": "error",
                            "error": {"type": "invalid_request_error", "message": quote},
                        }
                    else:
                        error = {"error": {"message": quote, "type": "invalid_request_error", "param": None, "code": None}}  # fmt: skip
                    return self._send(400, json.dumps(error).encode(), headers)
                if prompt == "headers":
                    headers["WWW-Authenticate"] = f'Bearer error="invalid_token", token="{KEY}"'
                    headers["Set-Cookie"] = f"session={KEY}"
                    headers["x-echo"] = CUT
                if prompt == "redirect":
                    headers["Location"] = f"https://elsewhere.example/?key={KEY}"
                    return self._send(307, b"{}", headers)
                if prompt == "quote" and self.path.endswith("/messages"):  # Anthropic's stream
                    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                               "content": [], "stop_reason": None, "stop_sequence": None,
                               "usage": {"input_tokens": 1, "output_tokens": 0}}  # fmt: skip
                    anthropic_events = [
                        ("message_start", {"type": "message_start", "message": message}),
                        ("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}}),
                        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": "Hi"}}),
                        ("error", {"type": "error", "error": {"type": "api_error", "message": quote}}),
                    ]  # fmt: skip
                    out = b"".join(
                        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                        for name, data in anthropic_events
                    )
                    return self._send(200, out, {"Content-Type": "text/event-stream"})
                if prompt == "quote":  # streamed: an error event after the first chunk
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}  # fmt: skip
                    events = [chunk, {"error": {"message": quote, "type": "server_error"}}]
                    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                    return self._send(200, out, {"Content-Type": "text/event-stream"})
                answer: Any = {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }  # fmt: skip
                if self.path.endswith("/messages"):
                    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                              "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                              "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
                self._send(200, json.dumps(answer).encode(), headers)

            def _send(self, status: int, out: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Stack:
    gateway: ManagedProcess
    upstream: HostileUpstream
    secret: str  # a virtual key

    def logged_since(self, mark: int, requests: int = 1) -> str:
        """What the gateway wrote since ``len(output)`` was ``mark``, once the access-log lines of
        ``requests`` requests are out (the log is written in batches: waited for, bounded)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.gateway.output[mark:].count('"gateway.access"') < requests:
            time.sleep(0.01)
        return self.gateway.output[mark:]

    def raw(self, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """One request written by hand (``head``: its request line and headers, CRLF-joined);
        the answer's status, headers (lower-case names) and body."""
        host, port = self.gateway.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head.encode() + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n" + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        top, _, payload = data.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, payload

    def chat(self, prompt: str, *, path: str = "/v1/chat/completions", model: str = "chat", stream: bool = False,
             extra: str = "") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        fields: dict[str, Any] = {"model": model, "stream": stream}
        if path.endswith("/responses"):
            fields["input"] = prompt
        else:
            fields |= {"max_tokens": 5, "messages": [{"role": "user", "content": prompt}]}
        body = json.dumps(fields).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nAuthorization: Bearer {self.secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}{extra}"
        )
        return self.raw(head, body)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    upstream = HostileUpstream()
    policy = tmp_path_factory.mktemp("security-stranger") / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
            retry: {{max_attempts: 1}}
            providers:
              oai: {{kind: openai, base_url: "{upstream.url}/v1", api_key_env: E2E_SEC_KEY}}
              ant: {{kind: anthropic, base_url: "{upstream.url}/v1", api_key_env: E2E_SEC_KEY}}
            models:
              chat: {{deployments: [{{provider: oai, model: up-chat}}]}}
              claude: {{deployments: [{{provider: ant, model: up-claude}}]}}
            memory: {{enabled: false}}
            auth:
              teams:
                all: {{}}
            """
        )
    )
    gateway = None
    try:
        gateway = start_gateway(
            policy, env={"SOPHIA_ADMIN_TOKEN": ADMIN, "E2E_SEC_KEY": KEY, "REDIS_URL": ""}
        )
        request = urllib.request.Request(
            gateway.url + "/admin/keys",
            data=b'{"team": "all"}',
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            secret = json.loads(resp.read())["secret"]
        yield Stack(gateway, upstream, secret)
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.close()


# --- the provider key, quoted back by a hostile provider -------------------------------------


@pytest.mark.parametrize(
    ("path", "model", "stream"),
    [
        ("/v1/chat/completions", "chat", False),
        ("/v1/messages", "claude", False),
        ("/v1/chat/completions", "claude", False),
        ("/v1/responses", "chat", False),
        ("/v1/responses", "claude", False),
        ("/v1/chat/completions", "chat", True),  # the error event after the first chunk
        ("/v1/messages", "chat", True),
        ("/v1/responses", "chat", True),
        ("/v1/messages", "claude", True),  # Anthropic's error event, relayed by the Messages door
        ("/v1/chat/completions", "claude", True),  # ... translated to chat
        ("/v1/responses", "claude", True),
    ],
)
def test_a_provider_quoting_its_key_cut_short_or_masked_leaks_none_of_it(
    stack: Stack, path: str, model: str, stream: bool
) -> None:
    # Before: "Bearer <key less 2 characters>" and "<key with 5 masked>" reached the client's
    # error (and, mid-stream, its error event and the log); only the whole key was scrubbed.
    mark = len(stack.gateway.output)
    status, headers, body = stack.chat("quote", path=path, model=model, stream=stream)
    text = body.decode()
    # (a stream whose error event comes before the answer's first byte reaches the client is
    # failed over, then a 502: Anthropic's, as the gateway holds its opening events)
    assert status in ((200, 502) if stream else (400,)), (status, text)
    assert _runs_of_the_key(text) == [], text
    assert "refused" in text  # the provider's words still reach the client, less the key
    assert _runs_of_the_key(json.dumps(headers)) == []
    assert _runs_of_the_key(stack.logged_since(mark)) == []


def test_what_a_provider_sends_beside_its_answer_stays_with_the_gateway(stack: Stack) -> None:
    # A provider's headers are never relayed (its WWW-Authenticate, Set-Cookie, anything), and a
    # redirect whose Location holds the key is an error naming no Location.
    mark = len(stack.gateway.output)
    status, headers, body = stack.chat("headers")
    assert status == 200, body
    assert not {"set-cookie", "x-echo", "www-authenticate"} & set(headers)
    assert _runs_of_the_key(json.dumps(headers) + body.decode()) == []
    status, headers, body = stack.chat("redirect")
    assert status == 502 and b"307" in body
    assert _runs_of_the_key(json.dumps(headers) + body.decode()) == []
    assert _runs_of_the_key(stack.logged_since(mark, requests=2)) == []


# --- what a client may send upstream ---------------------------------------------------------


@pytest.mark.parametrize(("path", "model"), [("/v1/chat/completions", "chat"), ("/v1/messages", "claude")])
def test_a_client_cannot_set_the_headers_that_carry_or_route_the_provider_credentials(
    stack: Stack, path: str, model: str
) -> None:
    hostile = (
        "\r\nx-api-key: sk-client-0000000000000000\r\napi-key: sk-client\r\nx-goog-api-key: sk-client"
        "\r\nanthropic-version: 1999-01-01\r\nProxy-Authorization: Basic eDp5\r\nCookie: a=b"
        "\r\nx-forwarded-host: evil.example\r\nanthropic-beta: tools-2024-04-04"
    )
    status, _, body = stack.chat("hi", path=path, model=model, extra=hostile)
    assert status == 200, body
    seen = stack.upstream.seen[-1]
    assert "sk-client" not in json.dumps(seen) and stack.secret not in json.dumps(seen)
    assert not {"proxy-authorization", "cookie", "x-forwarded-host", "api-key", "x-goog-api-key"} & set(seen)
    if model == "claude":
        assert seen["x-api-key"] == KEY and seen["anthropic-version"] != "1999-01-01"
        assert seen["anthropic-beta"] == "tools-2024-04-04"  # the one header the Messages door passes on
    else:
        assert seen["authorization"] == f"Bearer {KEY}" and "x-api-key" not in seen
        assert "anthropic-beta" not in seen


# --- the admin API and auth from outside -----------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        "GET //admin/keys HTTP/1.1",
        "GET /admin/./keys HTTP/1.1",
        "GET /admin/x/../keys HTTP/1.1",
        "GET /admin%2Fkeys HTTP/1.1",
        "GET /%61dmin/keys HTTP/1.1",
        "GET /admin/keys/ HTTP/1.1",
        "GET /ADMIN/keys HTTP/1.1",
        "GET /admin/keys;x=y HTTP/1.1",
        "HEAD /admin/keys HTTP/1.1",
        "OPTIONS /admin/keys HTTP/1.1",
        "GET http://x/admin/keys HTTP/1.1",
        "GET /admin/keys HTTP/1.1\r\nAuthorization: Bearer {secret}",
        "GET /admin/keys HTTP/1.1\r\nAuthorization: Bearer ",
        f"GET /admin/keys HTTP/1.1\r\nAuthorization: Bearer\t{ADMIN}",
        f"GET /admin/keys HTTP/1.1\r\nAuthorization: Bearer x\r\nAuthorization: Bearer {ADMIN}",
        f"GET /admin/keys HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\nAuthorization: Bearer x",
        f"GET /admin/keys HTTP/1.1\r\nAuthorization: Basic {ADMIN}",
        "POST /v1/memory/search HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2",
        "POST /v1/feedback HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2",
        "GET /v1/memory/jobs HTTP/1.1\r\nx-api-key: {secret}x",
        "POST /v1/messages HTTP/1.1\r\nAuthorization: Bearer x\r\nx-api-key: {secret}\r\nContent-Length: 2",
        "GET /health HTTP/1.1",
    ],
)
def test_no_path_method_or_credential_shape_opens_what_needs_a_token(stack: Stack, head: str) -> None:
    status, _, body = stack.raw(head.format(secret=stack.secret), b"{}" if "Content-Length" in head else b"")
    assert status in (401, 404, 405), (status, body)
    assert b'"object":"list"' not in body and b"sk-sg-" not in body


def test_an_open_gateway_on_loopback_refuses_a_rebound_page_and_serves_the_sdk(tmp_path: Path) -> None:
    """``serve`` with ``auth.mode: open`` on 127.0.0.1: a request naming another host (a web page
    through DNS rebinding) is a 403 before any provider is called; the openai SDK, which names the
    address it was given, is served."""
    fake = start(["fake-provider", "--port", "0", "--seed", "1"])
    policy = tmp_path / "open.yaml"
    policy.write_text(
        "version: 1\nauth: {mode: open}\nmemory: {enabled: false}\nproviders:\n"
        f"  p: {{kind: openai, base_url: '{fake.url}/v1'}}\n"
        "models:\n  m: {deployments: [{provider: p, model: m}]}\n"
    )
    gateway = start(["serve", "--policy", str(policy), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0"})
    try:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(
            f"{gateway.url}/v1/chat/completions",
            data=body,
            headers={"Host": "rebound.example:4000", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert json.loads(refused.value.read())["error"]["type"] == "permission_error"
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    finally:
        gateway.stop()
        fake.stop()
