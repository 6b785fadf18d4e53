"""The admin commands' client (``call_admin``: ``keys --url``, ``rollout``, ``policy ... --url``)
against real HTTP servers on loopback: the admin token goes to ``--url`` and nowhere else (a
redirect is an error naming where it pointed, not followed), and a token no header can carry is
refused before any call without being repeated."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from gateway.admin_client import AdminCallError, call_admin

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-that-must-not-travel"


@dataclass
class Server:
    """A loopback HTTP server that records every request and answers ``status`` (with
    ``location`` as its Location header when given, else a JSON body)."""

    status: int = 200
    location: str | None = None
    body: object = None  # the JSON answered (default: an empty list)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.seen.append((self.command, self.path, dict(self.headers.items())))
                answer = server.body if server.body is not None else {"object": "list", "data": []}
                body = orjson.dumps(answer)
                self.send_response(server.status)
                if server.location is not None:
                    self.send_header("Location", server.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


Serve = Callable[..., Server]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Starts ``Server(**kwargs)`` on a free loopback port; every one is shut down after the test."""
    started: list[ThreadingHTTPServer] = []

    def start(**kwargs: object) -> Server:
        server = Server(**kwargs)  # type: ignore[arg-type]
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), server.handler())
        started.append(httpd)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return server

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("status", "method"), [(301, "GET"), (302, "GET"), (303, "POST"), (307, "POST"), (308, "DELETE")]
)
def test_a_redirect_is_not_followed_and_the_token_stays_with_url(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, status: int, method: str
) -> None:
    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", TOKEN)
    elsewhere = serve()
    gateway = serve(status=status, location=f"{elsewhere.url}/admin/keys")
    with pytest.raises(AdminCallError) as exc:
        call_admin(gateway.url, method, "/admin/keys", {"team": "ops"} if method == "POST" else None)
    assert exc.value.reached
    message = str(exc.value)
    assert (
        f"HTTP {status}" in message and f"{elsewhere.url}/admin/keys" in message and "not followed" in message
    )
    assert TOKEN not in message
    assert [headers.get("Authorization") for _, _, headers in gateway.seen] == [f"Bearer {TOKEN}"]
    assert elsewhere.seen == []  # never asked: neither the token nor anything else went there


def test_the_keys_command_says_so_in_one_line(serve: Serve) -> None:
    elsewhere = serve()
    gateway = serve(status=302, location=f"{elsewhere.url}/admin/keys")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "list", "--url", gateway.url],
        env={**os.environ, "PYTHONPATH": str(ROOT), "SOPHIA_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "redirect to" in lines[0] and elsewhere.url in lines[0], result.stderr
    assert TOKEN not in result.stderr + result.stdout
    assert len(gateway.seen) == 1 and elsewhere.seen == []


def test_a_redirect_location_is_shown_without_control_characters(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOPHIA_ADMIN_TOKEN", raising=False)
    gateway = serve(status=302, location="http://elsewhere.test/\x1b[31m" + "x" * 1000)
    with pytest.raises(AdminCallError) as exc:
        call_admin(gateway.url, "GET", "/admin/keys")
    message = str(exc.value)
    assert "\x1b" not in message and "\\x1b[31m" in message and len(message) < 600


@pytest.mark.parametrize(
    "token",
    [
        "first-half second-half",  # a space
        "first-half\nX-Injected: second-half",  # a header of its own
        "first-half\r\nsecond-half",
        "first-half-second-half\n",  # a secret file's trailing newline
        "first-half\tsecond-half",
        "first-half\u00e9second-half",  # non-ASCII
        "first-half\u2028second-half",
        "first-half\x1b[31msecond-half",  # a terminal escape
    ],
)
def test_a_token_no_header_can_carry_is_refused_before_any_call_and_never_repeated(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", token)
    gateway = serve()
    with pytest.raises(AdminCallError) as exc:
        call_admin(gateway.url, "GET", "/admin/keys")
    message = str(exc.value)
    assert "SOPHIA_ADMIN_TOKEN" in message and "printable ASCII" in message
    assert "first-half" not in message and "second-half" not in message
    assert exc.value.__cause__ is None and exc.value.__context__ is None  # no traceback holding it
    assert gateway.seen == []


def test_a_good_token_is_sent(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", TOKEN)
    gateway = serve()
    assert call_admin(gateway.url, "GET", "/admin/keys") == {"object": "list", "data": []}
    assert gateway.seen[0][2].get("Authorization") == f"Bearer {TOKEN}"


@pytest.mark.parametrize("command", ["health", "top"])
def test_health_and_top_follow_no_redirect_either(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    # Before: both used urlopen, which followed the 302 and sent the token to the other host.
    elsewhere = serve()
    redirecting = serve(status=302, location=elsewhere.url + "/health")
    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", TOKEN)
    if command == "health":
        from gateway.health_command import fetch

        assert fetch(redirecting.url) is None
    else:
        from gateway.top import _get

        assert _get(redirecting.url + "/admin/models", TOKEN, 2.0)[0] == 302
    assert redirecting.seen and redirecting.seen[0][2].get("Authorization") == f"Bearer {TOKEN}"
    assert elsewhere.seen == []


def test_health_refuses_a_token_no_header_can_carry_without_repeating_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.health_command import fetch

    monkeypatch.setenv("SOPHIA_ADMIN_TOKEN", "first-half\r\nsecond-half")
    assert fetch("http://127.0.0.1:9") is None
    err = capsys.readouterr().err
    assert "SOPHIA_ADMIN_TOKEN" in err and "second-half" not in err


ROLLOUT = {
    "object": "rollout",
    "model": "chat",
    "provider": "openai",
    "upstream_model": "gpt-5",
    "status": "rolling",
    "step_index": 1,
    "step_percent": 25.0,
    "steps": [10.0, 25.0, 100.0],
    "reason": "",
}


def rollout_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "rollout", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"object": "list", "data": 5},
        {"object": "list", "data": [5]},
        {"object": "list", "data": [{"model": "chat"}]},
        {"object": "list", "data": [{**ROLLOUT, "step_percent": "25"}]},
        {"object": "list", "data": [{**ROLLOUT, "step_index": None}]},
    ],
)
def test_the_rollout_command_says_when_url_is_not_a_gateway(serve: Serve, body: object) -> None:
    """``rollout status`` and ``rollout pause`` against a server answering other JSON (another
    service, another version) printed a Python traceback (KeyError, TypeError, ValueError)."""
    server = serve(body=body)
    for args in (("status",), ("pause", "chat")):
        result = rollout_cli(*args, "--url", server.url)
        assert result.returncode == 1, result
        assert result.stderr.strip().splitlines() == [
            f"error: {server.url}/admin/rollouts{'' if args == ('status',) else '/pause'} did not answer "
            "a gateway's rollout view"
        ], result.stderr
    good = serve(body={"object": "list", "data": [ROLLOUT]})
    result = rollout_cli("status", "--url", good.url)
    assert result.returncode == 0 and result.stdout == "chat  openai/gpt-5  rolling 25% (step 2/3)\n"


def test_the_rollout_command_prints_a_reason_without_its_escape_sequences(serve: Serve) -> None:
    """A rollback's reason quotes the candidate provider's error message: its escape sequences
    (clear the screen, retitle the window) were printed raw to the operator's terminal."""
    reason = "smoke prompt 0: UpstreamError: cand: \x1b[2J\x1b]0;owned\x07 bad gateway"
    server = serve(body={"object": "list", "data": [{**ROLLOUT, "status": "rolled_back", "reason": reason}]})
    result = rollout_cli("status", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert result.stdout == (
        "chat  openai/gpt-5  rolled_back 25%  smoke prompt 0: UpstreamError: cand: "
        "\\x1b[2J\\x1b]0;owned\\x07 bad gateway\n"
    )
