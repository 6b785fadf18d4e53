"""(h-expect) ``Expect: 100-continue`` on every route: what the handler refuses before it reads the
body (the key, the declared length, the content type, the key's limits) is the only answer, in
the route's envelope with ``Connection: close``, and the client is never told to send; an
admitted request gets its ``100 Continue`` when its body is about to be read. A refusal's
connection ends with the answer (this side's FIN at once), not after aiohttp's 10 s lingering
wait for a body the client was never asked for.

Over real loopback HTTP, the gateway served as ``serve`` serves it (``GatewayRunner``, its
``lingering_time`` of 10 s), raw sockets as clients (the first line of the answer read before a
byte of the body is sent), keys in SQLite, the fake OpenAI provider in process; the limits with
the in-process limiter and with the Redis one (``REDIS_URL``, else a private ``redis-server``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import LEAST_RESERVATION, LimitGate, reservation
from gateway.auth.identity import Caller
from gateway.http.connection import UNASKED_IDLE_S, GatewayRunner
from gateway.policy.loader import load_policy_with_digest
from gateway.server import MAX_HEADER_FIELD_BYTES
from gateway.settings import Settings
from gateway.testing.fake_provider import FAKE_STATE, FakeConfig
from gateway.testing.fake_provider import build_app as fake_app
from gateway.wire.requests import Endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "admin-token-for-expect-tests"
ADMIN = f"Authorization: Bearer {TOKEN}\r\n"
BIG = 20 * 1024 * 1024  # a declared upload within max_audio_bytes (25 MiB)
LINGERING_S = 10.0  # ``serve``'s lingering_time (min(10, request_read_timeout_s))
PROMPT_S = 2.0  # the end of a refused connection must come well within the lingering time
CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
POLICY = """
version: 1
providers:
  good: {{kind: openai, base_url: "{good}/v1"}}
models:
  m:
    deployments: [{{provider: good, model: gpt-4o-mini}}]
  priced:  # a dollar a token: one call spends a budget of $1
    deployments: [{{provider: good, model: gpt-4o, price: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}}}]
  emb:
    deployments: [{{provider: good, model: text-embedding-3-small}}]
server: {{max_body_bytes: 1048576, request_read_timeout_s: 30}}
memory:
  embedding_model: emb
  index_dir: "{tmp}/index"
  path: "{tmp}/memory.sqlite3"
  ingest: {{spool_dir: "{tmp}/spool"}}
cache: {{enabled: false}}
auth:
  store: {store}
  teams: {{expect: {{}}}}
"""


@dataclass
class Gateway:
    port: int
    app: web.Application
    runner: GatewayRunner
    good: TestServer

    @property
    def limits(self) -> LimitGate:
        return self.app[keys.LIMITS]

    def upstream_calls(self) -> int:
        fake: web.Application = self.good.app  # type: ignore[assignment]
        return int(fake[FAKE_STATE].stats()["requests"])

    def connections(self) -> int:
        server = self.runner.server
        assert server is not None
        return len(server.connections)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["local", "redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    tmp: Path = tmp_path_factory.mktemp("expect")
    good = TestServer(fake_app(FakeConfig(port=0)), host="127.0.0.1")
    await good.start_server()
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(
        POLICY.format(good=str(good.make_url("")).rstrip("/"), store=tmp / "keys.sqlite3", tmp=tmp)
    )
    settings = Settings(
        access_log=False,
        admin_token=TOKEN,
        policy_watch=False,
        policy_path=str(policy_file),
        redis_url=redis_url,
        # The failed-auth throttle, for the public address the throttle test names through a
        # trusted proxy (loopback itself stays exempt, so the other tests are never throttled).
        auth_throttle_failures=3,
        trusted_proxies="127.0.0.1/32",
        throttle_prefix=f"test:{uuid.uuid4().hex}:throttle:",
    )
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    # As ``serve`` runs it (``server._serve``): the gateway's connection handler and its lingering time.
    runner = GatewayRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        request_read_timeout_s=30,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        auto_decompress=False,
        lingering_time=LINGERING_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gateway = Gateway(runner.addresses[0][1], app, runner, good)
    assert type(gateway.limits.limiter).__name__ == ("RedisLimiter" if redis_url else "LocalLimiter")
    try:
        yield gateway
    finally:
        await runner.cleanup()
        await good.close()


@dataclass
class Answer:
    head: str  # the status line and headers, lower-cased
    body: bytes

    @property
    def status(self) -> int:
        return int(self.head.split(" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
        return None

    def json(self) -> dict[str, object]:
        found: dict[str, object] = orjson.loads(self.body)
        return found


async def _answer(reader: asyncio.StreamReader) -> Answer:
    async with asyncio.timeout(5):  # (an answer that never comes fails here, not hangs)
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        if head.startswith("http/1.1 100 "):
            return Answer(head, b"")
        length = int(head.split("content-length: ")[1].split("\r\n")[0])
        return Answer(head, await reader.readexactly(length))


async def _head(
    gw: Gateway, path: str, headers: str, declared: int, content_type: str = "application/json"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request's head asking ``100-continue`` for a body of ``declared`` bytes, none sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Type: {content_type}\r\n"
            f"Content-Length: {declared}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def _refused_unasked(
    gw: Gateway, path: str, headers: str, declared: int = BIG, content_type: str = "application/json"
) -> Answer:
    """The answer to a head asking ``100-continue``, which must be a final one (before the change:
    ``100 Continue``, the client told to send its body), with ``Connection: close``; then the
    connection's end must follow at once (before the change: after the lingering time)."""
    reader, writer = await _head(gw, path, headers, declared, content_type)
    try:
        answer = await _answer(reader)
        assert answer.status >= 400, answer.head  # never 100 Continue
        assert answer.header("connection") == "close", answer.head
        started = time.monotonic()
        async with asyncio.timeout(LINGERING_S + 5):
            rest = await reader.read()  # the server's FIN
        took_s = time.monotonic() - started
        assert rest == b""
        assert took_s < PROMPT_S, f"the refused connection ended {took_s:.1f} s after its answer"
    finally:
        writer.close()
    return answer


async def _key(gw: Gateway, **limits: object) -> tuple[str, str]:
    body = orjson.dumps({"team": "expect", **limits})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        (
            f"POST /admin/keys HTTP/1.1\r\nHost: localhost\r\n{ADMIN}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    answer = await _answer(reader)
    writer.close()
    assert answer.status == 201, answer.body
    made = answer.json()
    return str(made["secret"]), str(made["id"])


async def _served(gw: Gateway, path: str, headers: str, body: bytes) -> Answer:
    """A request asking ``100-continue``: it must be told to send, and is then answered."""
    reader, writer = await _head(gw, path, headers, len(body))
    try:
        interim = await _answer(reader)
        assert interim.head == "http/1.1 100 continue\r\n\r\n", interim.head
        writer.write(body)
        return await _answer(reader)
    finally:
        writer.close()


def _openai_error(answer: Answer) -> dict[str, object]:
    error = answer.json()["error"]
    assert isinstance(error, dict)
    return error


def _anthropic_error(answer: Answer) -> dict[str, object]:
    body = answer.json()
    assert body["type"] == "error" and answer.header("request-id")
    error = body["error"]
    assert isinstance(error, dict)
    return error


WRONG = "sk-sg-" + "x" * 43


@pytest.mark.parametrize(
    ("path", "headers", "content_type", "anthropic"),
    [
        ("/v1/chat/completions", f"Authorization: Bearer {WRONG}\r\n", "application/json", False),
        ("/v1/embeddings", f"Authorization: Bearer {WRONG}\r\n", "application/json", False),
        ("/v1/responses", f"Authorization: Bearer {WRONG}\r\n", "application/json", False),
        ("/v1/messages", f"x-api-key: {WRONG}\r\n", "application/json", True),
        (
            "/openai/deployments/m/chat/completions?api-version=2024-10-21",
            f"api-key: {WRONG}\r\n",
            "application/json",
            False,
        ),
        ("/openai/v1/chat/completions", f"api-key: {WRONG}\r\n", "application/json", False),
        (
            "/v1/audio/transcriptions",
            f"Authorization: Bearer {WRONG}\r\n",
            "multipart/form-data; boundary=b",
            False,
        ),
        ("/v1/images/edits", f"Authorization: Bearer {WRONG}\r\n", "multipart/form-data; boundary=b", False),
        ("/v1/memory/files", f"Authorization: Bearer {WRONG}\r\n", "multipart/form-data; boundary=b", False),
        ("/v1/memory", "", "application/json", False),
    ],
)
async def test_a_wrong_key_is_refused_before_it_is_told_to_send(
    gw: Gateway, path: str, headers: str, content_type: str, anthropic: bool
) -> None:
    """Every door, JSON and upload: a wrong (or missing) key's 401 is the only answer to its
    ``Expect``, in its door's envelope, and the connection ends with it. Before: the JSON doors
    answered ``100 Continue`` first; the upload doors' refusal came first but the connection
    lingered 10 s after it."""
    answer = await _refused_unasked(gw, path, headers, content_type=content_type)
    assert answer.status == 401
    error = _anthropic_error(answer) if anthropic else _openai_error(answer)
    assert error["type"] == "authentication_error" if anthropic else error["code"] == "invalid_api_key"


async def test_what_the_headers_refuse_is_refused_before_the_body(gw: Gateway) -> None:
    """A good key: a declared length over the route's bound (413), a content type the route does
    not read (415), each before the body is asked for; nothing reaches the provider."""
    secret, _ = await _key(gw)
    calls = gw.upstream_calls()
    auth = f"Authorization: Bearer {secret}\r\n"
    too_long = await _refused_unasked(gw, "/v1/chat/completions", auth, declared=2 * 1024 * 1024)
    assert too_long.status == 413 and _openai_error(too_long)["type"] == "invalid_request_error"
    too_long = await _refused_unasked(
        gw, "/v1/messages", f"x-api-key: {secret}\r\n", declared=2 * 1024 * 1024
    )
    assert too_long.status == 413 and _anthropic_error(too_long)["type"] == "request_too_large"
    not_json = await _refused_unasked(
        gw, "/v1/chat/completions", auth, declared=100, content_type="text/plain"
    )
    assert not_json.status == 415
    upload_too_long = await _refused_unasked(
        gw,
        "/v1/audio/transcriptions",
        auth,
        declared=30 * 1024 * 1024,
        content_type="multipart/form-data; boundary=b",
    )
    assert upload_too_long.status == 413
    not_a_form = await _refused_unasked(gw, "/v1/audio/transcriptions", auth, declared=100)
    assert not_a_form.status == 415
    assert gw.upstream_calls() == calls


async def test_an_admitted_request_is_told_to_send_and_served_on_a_kept_connection(gw: Gateway) -> None:
    """A good key's chat asking ``100-continue``: ``100 Continue``, then its answer, and the
    connection serves the next request; a client sending its body without waiting is served
    too, keeping its connection."""
    secret, _ = await _key(gw)
    auth = f"Authorization: Bearer {secret}\r\n"
    reader, writer = await _head(gw, "/v1/chat/completions", auth, len(CHAT))
    try:
        interim = await _answer(reader)
        assert interim.head == "http/1.1 100 continue\r\n\r\n", interim.head
        writer.write(CHAT)
        first = await _answer(reader)
        assert first.status == 200 and first.header("connection") != "close"
        # The same connection, a client that does not wait for 100 Continue: the head and the body at once.
        writer.write(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(CHAT)}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
            + CHAT
        )
        second = await _answer(reader)
        if second.status == 100:  # (sent when the body had not all arrived with the head)
            second = await _answer(reader)
        assert second.status == 200 and second.header("connection") != "close"
        messages = orjson.dumps(
            {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        )
        served = await _served(gw, "/v1/messages", f"x-api-key: {secret}\r\n", messages)
        assert served.status == 200 and served.json()["type"] == "message"
    finally:
        writer.close()


async def _usage_row(gw: Gateway, key_id: str) -> dict[str, object]:
    await gw.limits.drain()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(f"GET /admin/usage HTTP/1.1\r\nHost: localhost\r\n{ADMIN}Connection: close\r\n\r\n".encode())
    answer = await _answer(reader)
    writer.close()
    data = answer.json()["data"]
    assert isinstance(data, list)
    (row,) = [row for row in data if row["key"] == key_id]
    return dict(row)


async def test_a_key_at_its_rpm_is_refused_before_its_body_on_every_door(gw: Gateway) -> None:
    """RPM 1, spent by one chat: the next request asking ``100-continue`` gets the 429 (the RPM
    headers, ``Retry-After``) before it is told to send, on the OpenAI door, the Azure door, the
    Responses door and the Messages door (Anthropic's envelope), each counted as a refusal and
    none as a request. Before: ``100 Continue`` (the body sent, then the 429)."""
    secret, key_id = await _key(gw, rpm=1)
    calls = gw.upstream_calls()
    assert (
        await _served(gw, "/v1/chat/completions", f"Authorization: Bearer {secret}\r\n", CHAT)
    ).status == 200
    auth = f"Authorization: Bearer {secret}\r\n"
    for path, headers in (
        ("/v1/chat/completions", auth),
        ("/openai/deployments/m/chat/completions?api-version=2024-10-21", f"api-key: {secret}\r\n"),
        ("/v1/responses", auth),
    ):
        answer = await _refused_unasked(gw, path, headers, declared=len(CHAT))
        assert answer.status == 429, (path, answer.body)
        error = _openai_error(answer)
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert answer.header("retry-after") and answer.header("x-ratelimit-remaining-requests") == "0"
    answer = await _refused_unasked(gw, "/v1/messages", f"x-api-key: {secret}\r\n", declared=len(CHAT))
    assert answer.status == 429 and _anthropic_error(answer)["type"] == "rate_limit_error"
    assert gw.upstream_calls() == calls + 1
    row = await _usage_row(gw, key_id)
    assert row["requests"] == 1 and row["refusals"] == {"requests": 4}


async def test_a_key_whose_budget_is_spent_is_refused_before_its_body(gw: Gateway) -> None:
    """A $1 budget spent by one call of the priced model: the next chat asking ``100-continue``
    gets ``insufficient_quota`` before it is told to send."""
    secret, _ = await _key(gw, budget_usd=1)
    priced = orjson.dumps({"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
    auth = f"Authorization: Bearer {secret}\r\n"
    assert (await _served(gw, "/v1/chat/completions", auth, priced)).status == 200
    await gw.limits.drain()
    answer = await _refused_unasked(gw, "/v1/chat/completions", auth, declared=len(priced))
    assert answer.status == 429 and _openai_error(answer)["code"] == "insufficient_quota"


async def _caller(gw: Gateway, secret: str) -> Caller:
    keyring = gw.app[keys.KEYRING]
    assert keyring is not None
    caller = await keyring.authenticate(secret)
    assert caller is not None
    return caller


async def _reserve(gw: Gateway, caller: Caller, tokens: int) -> None:
    """Reserve ``tokens`` of ``caller``'s TPM window, as an admitted call still running would."""
    decision = await gw.limits.limiter.admit(caller, f"held:{uuid.uuid4().hex}", tokens)
    assert decision.refused is None and decision.tokens is not None


ONE_TOKEN = orjson.dumps({"model": "m", "input": "abc"})  # an embedding reserving the least there is


async def test_a_tpm_window_without_room_for_the_least_request_is_refused_before_its_body(
    gw: Gateway,
) -> None:
    """(h-limits2) A TPM window with no room left (all 50 tokens reserved, none over): no request
    can fit, so the next one asking ``100-continue`` gets the TPM's 429 (``Retry-After``, the
    tokens' headers, ``Connection: close``) before it is told to send, counted as a refusal, on
    the OpenAI and the Messages doors. Before: only a window over its limit was refused unread;
    this one answered ``100 Continue`` and refused the body once it was read."""
    assert reservation(Endpoint.EMBEDDINGS, orjson.loads(ONE_TOKEN)) == LEAST_RESERVATION == 1
    secret, key_id = await _key(gw, tpm=50)
    await _reserve(gw, await _caller(gw, secret), 50)
    calls = gw.upstream_calls()
    answer = await _refused_unasked(
        gw, "/v1/embeddings", f"Authorization: Bearer {secret}\r\n", len(ONE_TOKEN)
    )
    assert answer.status == 429, answer.body
    error = _openai_error(answer)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "tokens"
    assert answer.header("retry-after") and answer.header("x-ratelimit-remaining-tokens") == "0"
    answer = await _refused_unasked(gw, "/v1/messages", f"x-api-key: {secret}\r\n", declared=len(CHAT))
    assert answer.status == 429 and _anthropic_error(answer)["type"] == "rate_limit_error"
    assert gw.upstream_calls() == calls
    row = await _usage_row(gw, key_id)
    assert row["refusals"] == {"tokens": 2}, row


async def test_a_tpm_window_with_room_for_the_least_request_is_told_to_send(gw: Gateway) -> None:
    """(h-limits2) The other edge: one token of room (49 of 50 reserved) is room for the least
    request, so the peek never refuses it: ``100 Continue``, and the embedding that reserves
    exactly that token is admitted and served. A chat that reserves more is told to send all
    the same (unread, it could be as small) and refused once its body is read."""
    secret, _ = await _key(gw, tpm=50)
    await _reserve(gw, await _caller(gw, secret), 49)
    calls = gw.upstream_calls()
    auth = f"Authorization: Bearer {secret}\r\n"
    served = await _served(gw, "/v1/embeddings", auth, ONE_TOKEN)
    assert served.status == 200, served.body
    assert served.header("x-ratelimit-remaining-tokens") == "0"  # it took the last token
    assert gw.upstream_calls() == calls + 1
    secret, _ = await _key(gw, tpm=50)
    await _reserve(gw, await _caller(gw, secret), 49)
    reader, writer = await _head(gw, "/v1/chat/completions", f"Authorization: Bearer {secret}\r\n", len(CHAT))
    try:
        interim = await _answer(reader)
        assert interim.head == "http/1.1 100 continue\r\n\r\n", interim.head
        writer.write(CHAT)  # reserves 256 tokens of output: refused now that it is read
        refused = await _answer(reader)
        assert refused.status == 429 and _openai_error(refused)["type"] == "tokens"
    finally:
        writer.close()


async def test_a_wrong_key_refused_before_its_body_counts_toward_the_throttle(gw: Gateway) -> None:
    """The failed-auth throttle counts a wrong key refused before its body (3 failures a window
    for the public address a trusted proxy names): the fourth attempt, even with a good key, is
    the throttle's 429, also before the body."""
    secret, _ = await _key(gw)
    forwarded = f"X-Forwarded-For: 198.51.100.{uuid.uuid4().int % 200 + 1}\r\n"
    for _ in range(3):
        answer = await _refused_unasked(
            gw, "/v1/chat/completions", f"Authorization: Bearer {WRONG}\r\n{forwarded}"
        )
        assert answer.status == 401
    throttled = await _refused_unasked(
        gw, "/v1/chat/completions", f"Authorization: Bearer {secret}\r\n{forwarded}"
    )
    assert throttled.status == 429 and _openai_error(throttled)["type"] == "rate_limit_error"
    assert throttled.header("retry-after")


async def test_a_refused_connection_is_gone_from_the_server_once_its_client_closes(gw: Gateway) -> None:
    """The server's side: a refused upload's connection is closed by the gateway as soon as its
    client, seeing the end of the answer, closes its own (no connection held for the lingering
    time); and a client that sends its body anyway, not waiting, still reads its whole answer
    (the body is drained, never answered with a reset)."""
    reader, writer = await _head(gw, "/v1/audio/transcriptions", "", BIG, "multipart/form-data; boundary=b")
    answer = await _answer(reader)
    assert answer.status == 401
    assert await asyncio.wait_for(reader.read(), PROMPT_S) == b""
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(PROMPT_S):
        while gw.connections():
            await asyncio.sleep(0.01)
    # A client sending its 1 MiB body straight after the head, reading only once it is sent.
    reader, writer = await _head(
        gw, "/v1/audio/transcriptions", "", 1024 * 1024, "multipart/form-data; boundary=b"
    )
    writer.write(b"x" * (1024 * 1024))
    await writer.drain()
    answer = await _answer(reader)
    assert answer.status == 401 and answer.header("connection") == "close"
    writer.close()


async def test_aiohttps_client_waiting_for_100_continue_never_sends_a_refused_body(gw: Gateway) -> None:
    """aiohttp's client (``expect100=True``, the Python client that waits for ``100 Continue``;
    httpx and requests send no ``Expect``): a wrong key's 401 and a key at its RPM's 429 arrive
    with no byte of the body taken from the client; an admitted request's body is sent and served."""
    secret, _ = await _key(gw, rpm=1)
    taken: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        taken.append(len(CHAT))
        yield CHAT

    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.port}") as session:
        for key, status in ((WRONG, 401), (secret, 200), (secret, 429)):
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            async with session.post(
                "/v1/chat/completions", data=body(), headers=headers, expect100=True
            ) as resp:
                assert resp.status == status, await resp.text()
                if status != 200:
                    assert resp.headers["Connection"] == "close"
    assert taken == [len(CHAT)]  # the admitted request's only


async def test_a_silent_client_keeping_its_refused_connection_is_let_go_promptly(gw: Gateway) -> None:
    """A client that reads its refusal and the end of the connection but keeps its socket open,
    sending nothing: the gateway closes the connection once it has been silent for
    ``UNASKED_IDLE_S`` (before: held, reading, for the whole lingering time of 10 s)."""
    started = time.monotonic()
    reader, writer = await _head(gw, "/v1/audio/transcriptions", "", BIG, "multipart/form-data; boundary=b")
    try:
        assert (await _answer(reader)).status == 401
        assert await asyncio.wait_for(reader.read(), PROMPT_S) == b""
        async with asyncio.timeout(LINGERING_S + 5):
            while gw.connections():
                await asyncio.sleep(0.01)
        took_s = time.monotonic() - started
        assert took_s < UNASKED_IDLE_S + PROMPT_S, f"held {took_s:.1f} s"
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "headers", "expectation", "anthropic"),
    [
        ("/v1/chat/completions", "", "100-continue, foo", False),
        ("/v1/messages", "", "foo", True),
        ("/v1/audio/transcriptions", "", "202-accepted", False),
    ],
)
async def test_an_unknown_expectation_is_refused_and_its_connection_ended_at_once(
    gw: Gateway, path: str, headers: str, expectation: str, anthropic: bool
) -> None:
    """(h-probe7) An expectation other than ``100-continue`` (``100-continue, foo`` included) on
    a request with a body: the 417, in the door's envelope, with ``Connection: close`` and the
    end of the connection at once, as any refusal of a body never asked for. Before: no
    ``Connection: close`` and the connection held for the lingering time (10.5 s measured),
    reading a body its client, refused, does not send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Type: application/json\r\n"
                f"Content-Length: {len(CHAT)}\r\nExpect: {expectation}\r\n\r\n"
            ).encode()
        )
        answer = await _answer(reader)
        assert answer.status == 417, answer.head
        error = _anthropic_error(answer) if anthropic else _openai_error(answer)
        assert expectation in str(error["message"])
        assert answer.header("connection") == "close", answer.head
        started = time.monotonic()
        async with asyncio.timeout(LINGERING_S + 5):
            assert await reader.read() == b""
        took_s = time.monotonic() - started
        assert took_s < PROMPT_S, f"the refused connection ended {took_s:.1f} s after its answer"
    finally:
        writer.close()
