"""Processes, policy and helpers for the response-cache end-to-end tests (``test_cache.py``).

Real processes on loopback: fake providers (one per behaviour, so upstream call counts read from
``/_fake/stats`` belong to one scenario), gateways on the same policy with either backend
(Redis, the production path, or the embedded memory store), and real ``redis-server``s. Nothing
is mocked. Every gateway that uses Redis gets its own key prefix, and its keys are deleted after.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import openai
import redis

from gateway.testing.process import ManagedProcess
from gateway.testing.redis_server import INSTALL_HINT, PrivateRedis, redis_server_binary
from tests.e2e.conftest import start_fakes, start_gateway
from tests.e2e.routing_support import metric_value

CUT_REPLY = "a b c d e f g h i j"
SLOW_MS = 300  # the stampede fake's latency: long enough for 50 requests to pile up behind one

# name -> fake-provider flags (each also gets --seed 1 from start_fakes)
FAKES: dict[str, list[str]] = {
    "main": [],  # healthy, instant: most chat traffic
    "slow": ["--latency-ms", str(SLOW_MS)],
    "cut": ["--disconnect-rate", "1", "--tokens-per-s", "50", "--reply", CUT_REPLY],
    "mut": [],  # faults set per test through POST /_fake/faults, reset after
    "emb": ["--embedding-kind", "words", "--embedding-dim", "256"],
    "traffic": [],  # the fail-open stack's upstream, so its load never shows in "main"'s counts
    "bad_emb": ["--error-rate", "1", "--error-status", "500"],  # embeddings that always fail
}

# What POST /_fake/faults puts back on ``mut``: every fault off.
HEALTHY_FAULTS: dict[str, object] = {"latency_ms": 0, "error_rate": 0, "error_status": 500}

# Categories (see policy_text). TTLs and budgets the tests depend on:
SHORT_TTL_S = 1.0  # "short": entries expire after 1 s
TINY_BYTES = 4000  # "tiny": a handful of chat answers (~600 bytes each) fit
SEMANTIC_THRESHOLD = 0.95
# The main stacks give Redis a generous budget: their tests are about cache semantics, and a
# busy CI core must not turn a 50 ms stall into a spurious miss. The fail-open stack keeps the
# production default, since its tests are about that budget.
MAIN_LOOKUP_TIMEOUT_MS = 2000
FAILOPEN_LOOKUP_TIMEOUT_MS = 50


def policy_text(fakes: Mapping[str, ManagedProcess], lookup_timeout_ms: float, inband_url: str) -> str:
    urls = {**{name: p.url for name, p in fakes.items()}, "inband": inband_url}

    def provider(name: str) -> str:
        return (
            f"  {name}:\n    kind: openai\n    base_url: {urls[name]}/v1\n"
            "    timeouts: {connect_s: 1, first_byte_s: 5, total_s: 20}\n"
        )

    head = textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        server: {{drain_grace_s: 1}}
        # Failures are injected on purpose: breakers stay shut, one attempt per request.
        breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
        retry: {{max_attempts: 1}}
        cache:
          lookup_timeout_ms: {lookup_timeout_ms}
          default_category: common_queries
          categories:
            common_queries: {{ttl_s: 1800, max_bytes: 50MB}}
            short: {{ttl_s: {SHORT_TTL_S}, max_bytes: 1MB}}
            tiny: {{ttl_s: 600, max_bytes: {TINY_BYTES}}}
            other: {{ttl_s: 600, max_bytes: 1MB}}
            metered: {{ttl_s: 600, max_bytes: 1MB}}
            faq: {{ttl_s: 600, max_bytes: 1MB, shared: true, client_selectable: true}}
            faq_rules: {{ttl_s: 600, max_bytes: 1MB, shared: true}}
            semantic_q:
              ttl_s: 600
              max_bytes: 1MB
              semantic: {{embedding_model: embed, threshold: {SEMANTIC_THRESHOLD}}}
            semantic_broken:
              ttl_s: 600
              max_bytes: 1MB
              semantic: {{embedding_model: broken-embed}}
          rules:
            - {{when: {{models: [sem-chat]}}, category: semantic_q}}
            - {{when: {{models: [sem-broken-chat]}}, category: semantic_broken}}
            - {{when: {{tags: [faq]}}, category: faq_rules}}
        providers:
        """
    )
    models = textwrap.dedent(
        """\
        models:
          chat:
            deployments: [{provider: main, model: up-chat}]
          chat-b:
            deployments: [{provider: main, model: up-chat-b}]
          slow-chat:
            deployments: [{provider: slow, model: up-slow}]
          cut-chat:
            deployments: [{provider: cut, model: up-cut}]
          mut-chat:
            deployments: [{provider: mut, model: up-mut}]
          sem-chat:
            deployments: [{provider: main, model: up-sem}]
          traffic-chat:
            deployments: [{provider: traffic, model: up-traffic}]
          inband-chat:
            deployments: [{provider: inband, model: up-inband}]
          inband-tight-chat:
            deployments: [{provider: inband, model: up-inband-tight}]
          sem-broken-chat:
            deployments: [{provider: main, model: up-sem-broken}]
          embed:
            deployments: [{provider: emb, model: up-embed}]
          broken-embed:
            deployments: [{provider: bad_emb, model: up-broken-embed}]
        """
    )
    return head + "".join(provider(name) for name in urls) + models


# ----- processes -------------------------------------------------------------------------------


@dataclass
class CacheStack:
    """One gateway (on one backend) and the fakes it proxies to."""

    backend: str  # redis | memory
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    redis_url: str | None = None
    prefix: str | None = None

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def api(self) -> str:
        return self.gateway.url + "/v1"

    def fake_url(self, name: str) -> str:
        return self.fakes[name].url


def start_cache_fakes() -> dict[str, ManagedProcess]:
    return start_fakes(FAKES)


def write_policy(
    path: Path, fakes: Mapping[str, ManagedProcess], lookup_timeout_ms: float, inband_url: str
) -> Path:
    path.write_text(policy_text(fakes, lookup_timeout_ms, inband_url))
    return path


# An OpenAI-style stream that fails in-band: HTTP 200, a first content chunk, then an error event
# and [DONE], as OpenAI-compatible servers send when generation fails after it started. The
# space after "data:" is optional in SSE; the upstream model "up-inband-tight" leaves it out of
# the error event.
INBAND_PARTIAL = "partial answer"
INBAND_STREAM = (
    b'data: {"id":"chatcmpl-inband","object":"chat.completion.chunk","created":1,"model":"up-inband",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"partial answer"},"finish_reason":null}]}\n\n'
    b'data: {"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":null}}\n\n'
    b"data: [DONE]\n\n"
)
INBAND_TIGHT_STREAM = INBAND_STREAM.replace(b'data: {"error"', b'data:{"error"')


class InBandErrorUpstream:
    """A loopback HTTP server whose every chat completion is ``INBAND_STREAM`` (or its tight
    spelling; the fake provider cannot send an error event inside a stream); counts requests."""

    def __init__(self) -> None:
        owner = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                owner.requests += 1
                stream = INBAND_TIGHT_STREAM if body.get("model") == "up-inband-tight" else INBAND_STREAM
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(stream)))
                self.end_headers()
                self.wfile.write(stream)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_cache_gateway(
    backend: str, policy_path: Path, fakes: dict[str, ManagedProcess], redis_url: str | None = None
) -> CacheStack:
    """A gateway on ``redis_url`` with a fresh key prefix, or (``memory``) on the memory store."""
    if backend == "redis":
        assert redis_url is not None
        prefix = f"test:{uuid.uuid4().hex}:"
        env = {"REDIS_URL": redis_url, "SOPHIA_CACHE_PREFIX": prefix}
        return CacheStack(backend, start_gateway(policy_path, env), fakes, redis_url, prefix)
    # An empty REDIS_URL counts as unset: the memory store, whatever the test runner's env says.
    gateway = start_gateway(policy_path, {"REDIS_URL": ""})
    return CacheStack(backend, gateway, fakes)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (after a test stack is gone)."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def count_prefix(redis_url: str, prefix: str) -> int:
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=1000))


def private_redis() -> PrivateRedis:
    """A started ``redis-server`` of the caller's own (fails the test when none is installed)."""
    if redis_server_binary() is None:
        raise RuntimeError(INSTALL_HINT)
    server = PrivateRedis()
    server.start()
    return server


def shared_redis_url() -> tuple[str, PrivateRedis | None]:
    """``REDIS_URL`` when set, else a private server (returned so the caller can close it)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = private_redis()
    return server.url, server


# ----- HTTP helpers ----------------------------------------------------------------------------


def unique(what: str = "t") -> str:
    """A name no other test (or earlier run against the same Redis) uses."""
    return f"{what}-{uuid.uuid4().hex[:12]}"


def aclient(stack: CacheStack, api_key: str, timeout_s: float = 20) -> openai.AsyncOpenAI:
    """The SDK as tenant ``api_key`` (it becomes ``Authorization: Bearer <api_key>``)."""
    return openai.AsyncOpenAI(base_url=stack.api, api_key=api_key, max_retries=0, timeout=timeout_s)


@dataclass(frozen=True)
class Answer:
    """What the client saw of one chat completion (whole, or a stream read to its end)."""

    cache: str  # x-gateway-cache
    provider: str
    model: str
    match: str | None
    category: str | None
    id: str  # the completion id: the fake numbers its answers, so equal ids mean the same answer
    content: str
    elapsed_s: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)


def _answer(headers: Mapping[str, str], ident: str, content: str, elapsed_s: float) -> Answer:
    return Answer(
        cache=headers.get("x-gateway-cache", ""),
        provider=headers.get("x-gateway-provider", ""),
        model=headers.get("x-gateway-model", ""),
        match=headers.get("x-gateway-cache-match"),
        category=headers.get("x-gateway-cache-category"),
        id=ident,
        content=content,
        elapsed_s=elapsed_s,
        headers=dict(headers),
    )


async def chat(
    client: openai.AsyncOpenAI,
    content: str,
    *,
    model: str = "chat",
    headers: Mapping[str, str] | None = None,
    temperature: float = 0,
    **kw: Any,
) -> Answer:
    started = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=temperature,
        extra_headers=dict(headers or {}),
        **kw,
    )
    completion = raw.parse()
    return _answer(
        raw.headers, completion.id, completion.choices[0].message.content or "", time.monotonic() - started
    )


async def chat_stream(
    client: openai.AsyncOpenAI,
    content: str,
    *,
    model: str = "chat",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """A streamed chat completion read to its end through the SDK's SSE parser."""
    started = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        stream=True,
        extra_headers=dict(headers or {}),
    )
    ids: set[str] = set()
    text = ""
    async for chunk in raw.parse():
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert len(ids) == 1, ids  # every chunk of one answer carries its id
    return _answer(raw.headers, ids.pop(), text, time.monotonic() - started)


@dataclass(frozen=True)
class RawReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-gateway-cache")

    def json(self) -> Any:
        return json.loads(self.body)


async def post_raw(
    stack: CacheStack, path: str, body: bytes, api_key: str, headers: Mapping[str, str] | None = None
) -> RawReply:
    """POST hand-written bytes (not re-serialised by any client library)."""
    sent = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.api + path, data=body, headers=sent) as resp,
    ):
        return RawReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def upstream_requests(stack: CacheStack, fake: str) -> int:
    """How many requests ``fake`` has received (every path, /v1 only)."""
    return int((await get_json(stack.fake_url(fake) + "/_fake/stats"))["requests"])


async def set_faults(stack: CacheStack, fake: str, **faults: object) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.fake_url(fake) + "/_fake/faults", json=faults) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def metrics_text(stack: CacheStack) -> str:
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


class MetricsDelta:
    """Metric values now minus at ``take()`` (a missing sample counts 0)."""

    def __init__(self, before: str) -> None:
        self.before = before

    def __call__(self, after: str, name: str, **labels: str) -> float:
        return (metric_value(after, name, **labels) or 0) - (metric_value(self.before, name, **labels) or 0)
