"""Authentication at the edge (issue 11, items 2, 3, 9) over real HTTP on loopback, in process.

Every bad ``Authorization`` shape is sent as raw bytes (so nothing in a client library tidies it
up first) and must get the same 401 ``invalid_api_key``: same message, never echoing the header,
never a 500, and without the key store being asked (the cheap checks come first).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway import keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.cache.memory_store import MemoryStore
from gateway.cache.store import CategoryBudget
from gateway.errors import KeyStoreUnavailable, StartupError
from gateway.http.connection import GatewayRunner
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.server import MAX_HEADER_FIELD_BYTES, MIN_ADMIN_TOKEN_CHARS, check_open, run
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
  secret-model: {deployments: [{provider: a, model: sa}]}
memory: {enabled: false}
"""

GOOD = "sk-sg-" + "A1b2_C3d4-" * 4  # the shape of a real key (url-safe base64)
LIMITED = "sk-sg-limited0000000000000000000000000000000"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@dataclass
class FakeKeyRing:
    """The key ring's interface (``authenticate``), with every lookup recorded."""

    callers: dict[str, Caller]
    down: bool = False
    asked: list[str] = field(default_factory=list)

    async def authenticate(self, secret: str) -> Caller | None:
        self.asked.append(secret)
        if self.down:
            raise KeyStoreUnavailable()
        return self.callers.get(secret)


class CountingStore(MemoryStore):
    def __init__(self, categories: Iterable[str]) -> None:
        super().__init__({name: CategoryBudget(name, 10**6) for name in categories})
        self.operations = 0

    async def get(self, category: str, key: str) -> bytes | None:
        self.operations += 1
        return await super().get(category, key)


@dataclass
class Edge:
    client: aiohttp.ClientSession  # base_url: the gateway
    port: int
    app: web.Application
    keyring: FakeKeyRing
    upstream_calls: list[str]
    store: CountingStore


def answer(request: UpstreamRequest) -> MockResponse:
    model = orjson.loads(request.body)["model"]
    return MockResponse.json(
        {
            "id": "x",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
        }
    )


Start = Callable[..., Awaitable[Edge]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Gateways served as ``serve`` serves them (GatewayRunner, its header limit) on loopback."""
    opened: list[tuple[web.AppRunner, aiohttp.ClientSession]] = []

    async def go(
        policy: str = POLICY, settings: Settings | None = None, *, wire_keyring: bool = True
    ) -> Edge:
        calls: list[str] = []

        def upstream(request: UpstreamRequest) -> MockResponse:
            calls.append(orjson.loads(request.body)["model"])
            return answer(request)

        parsed = parse_policy(policy)
        store = CountingStore(parsed.cache.categories)
        app = build_app(
            settings or Settings(access_log=False),
            parsed,
            {},
            transports={"a": MockTransport(upstream)},
            cache_store=store,
        )
        keyring = FakeKeyRing(
            {
                GOOD: Caller("key_good", "blue"),
                LIMITED: Caller("key_limited", "green", models=frozenset({"m"})),
            }
        )
        if wire_keyring:
            app[keys.KEYRING] = keyring
        else:
            app.pop(keys.KEYRING, None)  # build_app may wire the real key ring: take it out
        runner = GatewayRunner(app, request_read_timeout_s=10, max_field_size=MAX_HEADER_FIELD_BYTES)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        session = aiohttp.ClientSession(f"http://127.0.0.1:{port}")
        opened.append((runner, session))
        return Edge(session, port, app, keyring, calls, store)

    yield go
    for runner, session in opened:
        await session.close()
        await runner.cleanup()


async def raw(edge: Edge, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request written byte for byte; (status, headers, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    header_block, _, payload = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def chat_head(authorization: list[bytes]) -> bytes:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    return head + b"".join(b"Authorization: " + value + b"\r\n" for value in authorization)


BAD_SHAPES: dict[str, list[bytes]] = {
    "missing": [],
    "empty": [b""],
    "no scheme": [GOOD.encode()],
    "Basic scheme": [b"Basic dXNlcjpwYXNz"],
    "scheme only": [b"Bearer"],
    "scheme and space": [b"Bearer "],
    "tab, not space": [b"Bearer\t" + GOOD.encode()],
    "no space": [b"Bearer" + GOOD.encode()],
    "10 KB": [b"Bearer sk-sg-" + b"a" * 10_240],
    "just over the cap": [b"Bearer sk-sg-" + b"a" * 250],
    "control character": [b"Bearer sk-sg-\x01" + GOOD.encode()[6:]],
    "DEL character": [b"Bearer " + GOOD.encode() + b"\x7f"],
    "non-ASCII": ["Bearer sk-sg-clé".encode()],
    "not UTF-8": [b"Bearer sk-sg-\xff\xfe" + GOOD.encode()[8:]],
    "SQL": [b"Bearer sk-sg-x' OR '1'='1"],
    "SQL, no spaces": [b"Bearer sk-sg-x';DROP/**/TABLE/**/keys;--"],
    "quoted": [b'Bearer "' + GOOD.encode() + b'"'],
    "two tokens": [b"Bearer " + GOOD.encode() + b" " + GOOD.encode()],
    "two headers": [b"Bearer " + GOOD.encode(), b"Bearer " + GOOD.encode()],
    "not our prefix": [b"Bearer sk-proj-abcdef0123456789"],
    "unknown key": [b"Bearer sk-sg-unknownunknownunknownunknownunknown0000"],
}
# Shapes that get as far as the key store: well-formed, and only the store can say no.
ASKS_THE_STORE = {"unknown key"}
# Shapes HTTP itself forbids (RFC 9110 5.5: no CTL but HTAB in a field value; a field over the
# server's limit): aiohttp's parser refuses them before any handler runs, 400 malformed_http_request.
PARSER_REFUSES = {"control character", "DEL character", "20 KB"}
BAD_SHAPES["20 KB"] = [b"Bearer sk-sg-" + b"a" * 20_480]


async def test_every_bad_authorization_is_the_same_401_without_echo(start: Start) -> None:
    edge = await start()
    body = orjson.dumps(CHAT)
    messages = set()
    for name, values in BAD_SHAPES.items():
        edge.keyring.asked.clear()
        status, headers, payload = await raw(edge, chat_head(values), body)
        for value in values:  # the header is never echoed, not even in part
            assert len(value) < 8 or value[7:20] not in payload, (name, payload[:300])
        error = orjson.loads(payload)["error"]
        if name in PARSER_REFUSES:
            assert (status, error["code"]) == (400, "malformed_http_request"), (name, payload[:300])
            continue
        assert status == 401, (name, status, payload[:300])
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error", name
        assert headers["www-authenticate"].startswith("Bearer"), name
        messages.add(error["message"])
        assert bool(edge.keyring.asked) == (name in ASKS_THE_STORE), name  # cheap checks first
    assert len(messages) == 1  # no hint of which
    assert edge.upstream_calls == [] and edge.store.operations == 0


async def test_rfc_6750_shapes_are_accepted(start: Start) -> None:
    """Auth schemes are case-insensitive (RFC 9110 11.1) and b64token follows 1*SP (RFC 6750 2.1)."""
    edge = await start()
    for value in (b"Bearer ", b"bearer ", b"BEARER ", b"Bearer    "):
        status, _, payload = await raw(edge, chat_head([value + GOOD.encode()]), orjson.dumps(CHAT))
        assert status == 200, (value, payload[:300])


async def test_key_store_down_is_503_never_an_open_door(start: Start) -> None:
    edge = await start()
    edge.keyring.down = True
    resp = await edge.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {GOOD}"}
    )
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == "key_store_unavailable" and "key store" in error["message"]
    assert edge.upstream_calls == [] and edge.store.operations == 0


async def test_no_key_ring_wired_in_refuses_with_503(start: Start) -> None:
    edge = await start(wire_keyring=False)
    resp = await edge.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {GOOD}"}
    )
    assert resp.status == 503 and edge.upstream_calls == []


async def test_every_v1_endpoint_needs_a_key_health_and_metrics_do_not(start: Start) -> None:
    edge = await start()
    c = edge.client
    calls = [
        c.post("/v1/chat/completions", json=CHAT),
        c.post("/v1/completions", json={"model": "m", "prompt": "x"}),
        c.post("/v1/embeddings", json={"model": "m", "input": "x"}),
        c.get("/v1/models"),
        c.get("/v1/models/m"),
        c.post("/v1/feedback", json={"request_id": "r", "score": 1}),
        c.post("/v1/memory", json={"namespace": "n", "content": "x"}),
        c.post("/v1/memory/search", json={"query": "x"}),
        c.get("/v1/memory/mem_1"),
        c.patch("/v1/memory/mem_1", json={"content": "y"}),
        c.delete("/v1/memory/mem_1"),
    ]
    for call in calls:
        resp = await call
        assert resp.status == 401, resp.url
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert (await c.get(path)).status == 200, path


async def test_a_keys_model_allow_list_hides_other_models(start: Start) -> None:
    edge = await start()
    limited = {"Authorization": f"Bearer {LIMITED}"}
    listed = await (await edge.client.get("/v1/models", headers=limited)).json()
    assert [m["id"] for m in listed["data"]] == ["m"]
    everything = await (
        await edge.client.get("/v1/models", headers={"Authorization": f"Bearer {GOOD}"})
    ).json()
    assert [m["id"] for m in everything["data"]] == ["m", "secret-model"]

    for resp in (
        await edge.client.get("/v1/models/secret-model", headers=limited),
        await edge.client.post(
            "/v1/chat/completions", json={**CHAT, "model": "secret-model"}, headers=limited
        ),
        await edge.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=limited),
    ):
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert error["code"] == "model_not_found"
        assert "secret-model' does not" in error["message"] or "secret-model" not in error["message"]
        assert "Available models: m." in error["message"]  # only its own
    assert edge.upstream_calls == [] and edge.store.operations == 0  # refused before cache and provider

    ok = await edge.client.post("/v1/chat/completions", json=CHAT, headers=limited)
    assert ok.status == 200 and edge.upstream_calls == ["ma"]


async def test_open_mode_needs_no_key(start: Start) -> None:
    edge = await start(POLICY + "auth: {mode: open}\n")
    assert (await edge.client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert (await edge.client.get("/v1/models")).status == 200
    assert edge.keyring.asked == []


async def test_admin_needs_the_token_in_constant_time_compare(start: Start) -> None:
    edge = await start(settings=Settings(access_log=False, admin_token="s3cret!token"))
    c = edge.client
    for value in (
        None,
        "Bearer wrong",
        "Bearer s3cret!token2",
        "Bearer s3cret!toke",
        f"Bearer {GOOD}",
        "s3cret!token",
    ):
        headers = {"Authorization": value} if value is not None else {}
        resp = await c.get("/admin/models", headers=headers)
        assert resp.status == 401, value
        text = await resp.text()
        assert "s3cret" not in text
        # a wrong token is told so; no token is told what to send
        assert ("is not this gateway's SOPHIA_ADMIN_TOKEN" in text) is (value is not None), value
    assert (await c.get("/admin/models", headers={"Authorization": "Bearer s3cret!token"})).status == 200
    assert (await c.get("/admin/models", headers={"Authorization": "bearer s3cret!token"})).status == 200


async def test_credentials_that_are_not_utf8_are_credentials_never_a_500(start: Start) -> None:
    """Header bytes that are not UTF-8 reach the handlers as surrogates: an open gateway still
    serves (the tenant is a hash of the bytes), the admin API still says 401."""
    opened = await start(POLICY + "auth: {mode: open}\n")
    for value in (b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer sk-\xed\xa0\x80"):
        status, _, payload = await raw(opened, chat_head([value]), orjson.dumps(CHAT))
        assert status == 200, (value, payload[:300])
    admin = await start(settings=Settings(access_log=False, admin_token="s3cret!token"))
    status, _, payload = await raw(
        admin, b"GET /admin/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xff\r\n"
    )
    assert status == 401 and orjson.loads(payload)["error"]["type"] == "authentication_error"


async def test_admin_without_a_token_answers_only_on_loopback(start: Start) -> None:
    local = await start(settings=Settings(access_log=False, host="127.0.0.1"))
    assert (await local.client.get("/admin/models")).status == 200
    wide = await start(settings=Settings(access_log=False, host="0.0.0.0"))
    resp = await wide.client.get("/admin/models")
    assert resp.status == 403
    error: dict[str, Any] = (await resp.json())["error"]
    assert error["type"] == "permission_error" and "SOPHIA_ADMIN_TOKEN" in error["message"]


@pytest.mark.parametrize(
    ("host", "status"),
    [("rebound.example", 403), ("rebound.example:8080", 403), ("127.0.0.1.nip.io", 403),
     ("localhost.rebound.example", 403), ("localhost:8080", 200), ("LocalHost", 200),
     ("127.0.0.1:8080", 200), ("127.9.9.9", 200), ("[::1]:8080", 200), ("app.localhost", 200)],
)  # fmt: skip
async def test_admin_without_a_token_refuses_a_host_that_is_not_this_machine(
    start: Start, host: str, status: int
) -> None:
    # h-sec: DNS rebinding. Without SOPHIA_ADMIN_TOKEN the admin API trusted whatever reached
    # loopback, and a web page whose name is re-pointed at 127.0.0.1 reaches it same-origin
    # (JSON bodies, answers read): it could list and mint keys. Its requests carry its own Host.
    local = await start(settings=Settings(access_log=False, host="127.0.0.1"))
    resp = await local.client.get("/admin/models", headers={"Host": host})
    assert resp.status == status, await resp.text()
    if status == 403:
        error: dict[str, Any] = (await resp.json())["error"]
        assert error["type"] == "permission_error" and "DNS rebinding" in error["message"]
    created = await local.client.post("/admin/keys", json={"team": "t"}, headers={"Host": host})
    assert (created.status == 403) is (status == 403)


async def test_admin_without_a_token_refuses_another_sites_page(start: Start) -> None:
    # h-sec: a page the operator opens may POST to http://127.0.0.1:8080/admin/policy/reload
    # without a preflight (no body needed); its Host is the gateway's, its Origin the page's.
    local = await start(settings=Settings(access_log=False, host="127.0.0.1"))
    host = f"127.0.0.1:{local.port}"
    cross = await local.client.post("/admin/policy/reload", headers={"Origin": "https://evil.example"})
    assert cross.status == 403, await cross.text()
    assert "another site" in (await cross.json())["error"]["message"]
    same = await local.client.get("/admin/models", headers={"Origin": f"http://{host}", "Host": host})
    assert same.status == 200, await same.text()


REBOUND = [
    "rebound.example",
    "rebound.example:8080",
    "127.0.0.1.nip.io",
    "localhost.rebound.example",
    "localhost:x",
]
LOCAL = [
    "localhost",
    "localhost:8080",
    "LocalHost",
    "127.0.0.1:8080",
    "127.9.9.9",
    "[::1]:8080",
    "app.localhost",
    "foo.localhost.",
    "192.168.1.5:8080",  # h-rebind: any IP literal (no name, nothing to re-point)
    "[2001:db8::1]",
    "",  # h-rebind: an empty Host comes from no browser
]


@pytest.mark.parametrize(("host", "status"), [(h, 403) for h in REBOUND] + [(h, 200) for h in LOCAL])
async def test_open_mode_on_loopback_answers_only_requests_naming_this_machine(
    start: Start, host: str, status: int
) -> None:
    """DNS rebinding: a web page the user opens re-points its own name at 127.0.0.1, and its
    browser sends same-origin requests to an open-mode gateway on loopback (no key needed):
    spending the provider keys, reading the memories. Its requests name the page's host; every
    door refuses them (403 in its own envelope) before any provider is called. Twice: the second
    request of a host meets the remembered names."""
    edge = await start(POLICY + "auth: {mode: open}\n", Settings(access_log=False, host="127.0.0.1"))
    for _ in range(2):
        status_chat, _, payload = await raw(
            edge,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Content-Type: application/json\r\n",
            orjson.dumps(CHAT),
        )
        assert status_chat == status, payload[:300]
        status_messages, _, answer = await raw(
            edge,
            b"POST /v1/messages HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\n",
            orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        assert status_messages == status, answer[:300]
    if status == 403:
        error = orjson.loads(payload)["error"]
        assert error["type"] == "permission_error" and "DNS rebinding" in error["message"]
        refused = orjson.loads(answer)
        assert refused["type"] == "error" and refused["error"]["type"] == "permission_error"
        assert edge.upstream_calls == []
    else:
        assert len(edge.upstream_calls) >= 2  # both doors called the provider (repeats may be cache hits)


async def open_chat(edge: Edge, host: bytes | None, version: bytes = b"1.1") -> tuple[int, bytes]:
    """A chat call written byte for byte with ``Host: host`` (None: no Host line)."""
    head = b"POST /v1/chat/completions HTTP/" + version + b"\r\nContent-Type: application/json\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    status, _, payload = await raw(edge, head, orjson.dumps(CHAT))
    return status, payload


@pytest.mark.parametrize(
    ("host", "allowed", "status"),
    [(b"gateway.internal", "", 403), (b"10.1.2.3:8080", "", 200), (b"[fd00::1]:8080", "", 200),
     (b"gateway.internal", "gateway.internal", 200), (b"GATEWAY.internal:8080", "gateway.internal", 200),
     (b"api.corp.example", ".corp.example", 200), (b"corp.example", ".corp.example", 200),
     (b"evilcorp.example", ".corp.example", 403), (b"gateway.internal.rebound.example", "gateway.internal", 403),
     (b"anything.example", "*", 200), (b"gateway.lan:8080", "", 200)],
)  # fmt: skip
async def test_open_mode_beyond_loopback_answers_only_its_own_names(
    start: Start, host: bytes, allowed: str, status: int
) -> None:
    """h-rebind: ``--allow-open`` on 0.0.0.0 (which listens on loopback too, and on a LAN address a
    page can rebind as well) does not imply any host: an IP literal, the bound name
    (``gateway.lan``) and ``SOPHIA_ALLOWED_HOSTS`` are served, another name is a 403 (before: every
    name was served beyond loopback)."""
    for bound in ("0.0.0.0", "gateway.lan"):
        if host.startswith(b"gateway.lan") and bound == "0.0.0.0":
            continue
        edge = await start(
            POLICY + "auth: {mode: open}\n", Settings(access_log=False, host=bound, allowed_hosts=allowed)
        )
        got, payload = await open_chat(edge, host)
        assert got == status, payload[:300]
        if status == 403:
            assert "SOPHIA_ALLOWED_HOSTS" in orjson.loads(payload)["error"]["message"]
            assert edge.upstream_calls == []


async def test_open_mode_serves_a_request_without_a_host(start: Start) -> None:
    """HTTP/1.0 without ``Host`` (HAProxy's httpchk, a script): no browser sends such a request."""
    edge = await start(POLICY + "auth: {mode: open}\n", Settings(access_log=False, host="127.0.0.1"))
    status, payload = await open_chat(edge, None, b"1.0")
    assert status == 200, payload[:300]
    assert edge.upstream_calls == ["ma"]


async def test_keys_mode_checks_the_key_not_the_host(start: Start) -> None:
    """A page has no key to send: keys mode answers any ``Host`` by its key, as before."""
    edge = await start(settings=Settings(access_log=False, host="127.0.0.1"))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: rebound.example\r\nContent-Type: application/json\r\n"
    )
    status, _, payload = await raw(
        edge, head + b"Authorization: Bearer " + GOOD.encode() + b"\r\n", orjson.dumps(CHAT)
    )
    assert status == 200, payload[:300]
    status, _, payload = await raw(edge, head, orjson.dumps(CHAT))
    assert status == 401, payload[:300]


async def test_admin_without_a_token_admits_the_operators_allowed_hosts(start: Start) -> None:
    """The admin API's DNS-rebinding check is the open gateway's: a name in SOPHIA_ALLOWED_HOSTS
    is the operator's own, another still a 403."""
    local = await start(settings=Settings(access_log=False, host="127.0.0.1", allowed_hosts="gateway"))
    assert (await local.client.get("/admin/models", headers={"Host": "gateway:8080"})).status == 200
    refused = await local.client.get("/admin/models", headers={"Host": "rebound.example"})
    assert refused.status == 403
    message = (await refused.json())["error"]["message"]
    assert "DNS rebinding" in message and "SOPHIA_ALLOWED_HOSTS" in message


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "gateway.example"])
def test_open_mode_refuses_to_listen_beyond_loopback(host: str) -> None:
    app = build_app(Settings(access_log=False), parse_policy(POLICY + "auth: {mode: open}\n"), {})
    with pytest.raises(StartupError, match="--allow-open"):
        run(app, host, 0)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3"])
def test_a_short_admin_token_does_not_start_beyond_loopback(host: str) -> None:
    # h-sec: SOPHIA_ADMIN_TOKEN=admin on 0.0.0.0 started, and nothing slows a caller guessing
    # the token of an API that mints keys.
    app = build_app(Settings(access_log=False, admin_token="admin"), parse_policy(POLICY), {})
    with pytest.raises(StartupError, match="SOPHIA_ADMIN_TOKEN is 5 characters long") as raised:
        run(app, host, 0)
    assert "admin" not in str(raised.value).replace("SOPHIA_ADMIN_TOKEN", "").replace("admin API", "")
    policy = parse_policy(POLICY)
    check_open(policy, host, False, "x" * MIN_ADMIN_TOKEN_CHARS)  # long enough
    check_open(policy, host, False, None)  # none: the admin API is closed (403) beyond loopback
    check_open(policy, "127.0.0.1", False, "admin")  # on loopback, any token


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_a_short_metrics_token_does_not_start_beyond_loopback(host: str) -> None:
    settings = Settings(access_log=False, metrics_token="scrape")
    app = build_app(settings, parse_policy(POLICY), {})
    with pytest.raises(StartupError, match="SOPHIA_METRICS_TOKEN is 6 characters long") as raised:
        run(app, host, 0)
    assert "scrape" not in str(raised.value)
    policy = parse_policy(POLICY)
    check_open(policy, host, False, None, "x" * MIN_ADMIN_TOKEN_CHARS)  # long enough
    check_open(policy, "127.0.0.1", False, None, "scrape")  # on loopback, any token


def test_serve_with_a_short_admin_token_beyond_loopback_exits_2(tmp_path: Any) -> None:
    policy = tmp_path / "keys.yaml"
    policy.write_text(POLICY)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--policy",
            str(policy),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SOPHIA_ADMIN_TOKEN": "s3cret"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sophia-gateway: cannot start: SOPHIA_ADMIN_TOKEN is 6 characters long")
    assert "s3cret" not in result.stderr and result.stderr.count("\n") == 1


def test_serve_says_so_in_one_line_and_exits_2(tmp_path: Any) -> None:
    policy = tmp_path / "open.yaml"
    policy.write_text(POLICY + "auth: {mode: open}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--policy",
            str(policy),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("sophia-gateway: cannot start: auth.mode is open")
    assert "--allow-open" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("length", [250, 500, 4096])
async def test_a_long_admin_token_that_serve_accepts_is_accepted_at_the_edge(
    start: Start, length: int
) -> None:
    # serve took any length, but the edge capped the whole header at a virtual key's 256
    # characters: a token over 249 characters was refused on every admin call.
    token = ("t0K3n-" * 1000)[:length]
    assert Settings.from_env({"SOPHIA_ADMIN_TOKEN": token}).admin_token == token
    admin = await start(settings=Settings(access_log=False, admin_token=token))
    good = await admin.client.get("/admin/models", headers={"Authorization": f"Bearer {token}"})
    assert good.status == 200, await good.text()
    wrong = await admin.client.get("/admin/models", headers={"Authorization": f"Bearer {token[:-1]}x"})
    assert wrong.status == 401 and token[:40] not in await wrong.text()
