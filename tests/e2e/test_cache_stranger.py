"""The response cache probed from outside by a stranger and a hostile one (h-cache).

Real gateway processes over loopback HTTP, the official ``openai`` and ``anthropic`` SDKs and
hand-written requests where headers must be repeated or bytes compared; a real Redis (the
shared ``REDIS_URL`` under a fresh prefix) and the embedded store. No mocks."""

from __future__ import annotations

import json
import textwrap
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis

from gateway.testing.process import ManagedProcess
from tests.e2e.cache_support import CacheStack, delete_prefix, shared_redis_url, start_cache_gateway
from tests.e2e.conftest import start_fakes


class ScriptedUpstream:
    """An OpenAI-compatible server whose answer follows the prompt: ``FINISH=<reason>`` in the
    last message sets the finish reason; counts requests."""

    def __init__(self) -> None:
        owner = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                owner.requests += 1
                text = json.dumps(body.get("messages", body.get("prompt", "")))
                finish = "stop"
                if "FINISH=" in text:
                    finish = text.split("FINISH=")[1].split("\\")[0].split('"')[0].split(" ")[0]
                reply = f"answer {owner.requests}"
                if body.get("stream"):
                    chunks = [
                        {
                            "id": f"c{owner.requests}",
                            "object": "chat.completion.chunk",
                            "created": 1,
                            "model": "up",
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": reply},
                                    "finish_reason": None,
                                }
                            ],
                        },
                        {
                            "id": f"c{owner.requests}",
                            "object": "chat.completion.chunk",
                            "created": 1,
                            "model": "up",
                            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                        },
                    ]
                    out = (
                        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
                        + b"data: [DONE]\n\n"
                    )
                    ctype = "text/event-stream"
                else:
                    out = json.dumps(
                        {
                            "id": f"c{owner.requests}",
                            "object": "chat.completion",
                            "created": 1,
                            "model": "up",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply},
                                    "finish_reason": finish,
                                }
                            ],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                        }
                    ).encode()
                    ctype = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _policy(main: str, emb: str, scripted: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
        retry: {{max_attempts: 1}}
        cache:
          lookup_timeout_ms: 2000
          default_category: common_queries
          categories:
            common_queries: {{ttl_s: 1800, max_bytes: 50MB}}
            sem: {{ttl_s: 600, max_bytes: 1MB, semantic: {{embedding_model: embed, threshold: 0.9}}}}
          rules:
            - {{when: {{models: [sem-chat]}}, category: sem}}
        providers:
          main: {{kind: openai, base_url: "{main}/v1"}}
          emb: {{kind: openai, base_url: "{emb}/v1"}}
          scripted: {{kind: openai, base_url: "{scripted}/v1"}}
        models:
          chat: {{deployments: [{{provider: main, model: up-chat}}]}}
          sem-chat: {{deployments: [{{provider: main, model: up-sem}}]}}
          scripted: {{deployments: [{{provider: scripted, model: up-scripted}}]}}
          embed: {{deployments: [{{provider: emb, model: up-embed}}]}}
        """
    )


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[dict[str, ManagedProcess], ScriptedUpstream]]:
    fakes = start_fakes({"main": [], "emb": ["--embedding-kind", "words", "--embedding-dim", "256"]})
    scripted = ScriptedUpstream()
    try:
        yield fakes, scripted
    finally:
        scripted.close()
        for fake in fakes.values():
            fake.stop()


@pytest.fixture(scope="module")
def policy(
    upstreams: tuple[dict[str, ManagedProcess], ScriptedUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    fakes, scripted = upstreams
    path = tmp_path_factory.mktemp("stranger") / "policy.yaml"
    path.write_text(_policy(fakes["main"].url, fakes["emb"].url, scripted.url))
    return path


@pytest.fixture(scope="module")
def redis_stack(
    upstreams: tuple[dict[str, ManagedProcess], ScriptedUpstream], policy: Path
) -> Iterator[CacheStack]:
    url, server = shared_redis_url()
    stack = None
    try:
        stack = start_cache_gateway("redis", policy, upstreams[0], url)
        yield stack
    finally:
        if stack is not None:
            stack.gateway.stop()
            assert stack.prefix is not None
            delete_prefix(url, stack.prefix)
        if server is not None:
            server.close()


@pytest.fixture(scope="module")
def memory_stack(
    upstreams: tuple[dict[str, ManagedProcess], ScriptedUpstream], policy: Path
) -> Iterator[CacheStack]:
    stack = start_cache_gateway("memory", policy, upstreams[0])
    try:
        yield stack
    finally:
        stack.gateway.stop()


@pytest.fixture(params=["redis", "memory"])
def stack(request: pytest.FixtureRequest) -> CacheStack:
    found: CacheStack = request.getfixturevalue(f"{request.param}_stack")
    return found


def _uid() -> str:
    return uuid.uuid4().hex[:12]


async def _post(
    stack: CacheStack, path: str, body: dict[str, Any] | bytes, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = [("Content-Type", "application/json"), *headers]
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, data=data, headers=sent) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def _chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}


# ----- tenants


async def test_empty_authorization_does_not_merge_key_header_tenants(stack: CacheStack) -> None:
    """An empty ``Authorization`` beside the door's key header (a proxy's or a client's blank
    default) made every such caller the anonymous tenant: a second key was served the first's
    answer on /v1/messages and on Azure's paths."""
    question = f"Summarise the board memo {_uid()}"
    seen = []
    for key in (f"sk-a-{_uid()}", f"sk-b-{_uid()}"):
        # (as a proxy in front would send it: the anthropic SDK refuses a blank Authorization)
        status, headers, _ = await _post(
            stack,
            "/v1/messages",
            {
                "model": "chat",
                "max_tokens": 50,
                "temperature": 0,
                "messages": [{"role": "user", "content": question}],
            },
            [("Authorization", ""), ("x-api-key", key), ("anthropic-version", "2023-06-01")],
        )
        assert status == 200
        seen.append(headers.get("x-gateway-cache"))
    assert seen == ["miss", "miss"]
    seen = []
    for key in (f"sk-a-{_uid()}", f"sk-b-{_uid()}"):
        azure = openai.AsyncAzureOpenAI(
            azure_endpoint=stack.url,
            api_key=key,
            api_version="2024-10-21",
            default_headers={"Authorization": ""},
            max_retries=0,
        )
        araw = await azure.chat.completions.with_raw_response.create(
            model="chat", temperature=0, messages=[{"role": "user", "content": question}]
        )
        seen.append(araw.headers.get("x-gateway-cache"))
    assert seen == ["miss", "miss"]
    # The same key is still one tenant, whichever way it is sent
    status, headers, _ = await _post(
        stack,
        "/openai/deployments/chat/chat/completions",
        _chat(question),
        [("Authorization", f"Bearer {key}")],
    )
    assert (status, headers.get("x-gateway-cache")) == (200, "hit")


# ----- cache headers


async def test_no_store_on_its_own_cache_control_line_is_obeyed(stack: CacheStack) -> None:
    """``Cache-Control`` sent as two lines is one list (RFC 9110): only the first line was read,
    so a ``no-store`` on the second was ignored and the answer stored."""
    auth = ("Authorization", f"Bearer sk-{_uid()}")
    for first, status in (("no-cache", "bypass"), ("max-age=0", "miss")):
        body = _chat(f"Keep this out of the cache {_uid()}")
        code, headers, _ = await _post(
            stack,
            "/v1/chat/completions",
            body,
            [auth, ("Cache-Control", first), ("Cache-Control", "no-store")],
        )
        assert (code, headers.get("x-gateway-cache")) == (200, status)
        code, headers, _ = await _post(stack, "/v1/chat/completions", body, [auth])
        assert (code, headers.get("x-gateway-cache")) == (200, "miss")  # nothing was stored


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("x-gateway-cache-ttl", ("60", "99999999")),
        ("x-gateway-cache-ttl", ("60", "60")),
        ("x-gateway-cache-category", ("common_queries", "no-such-category")),
    ],
)
async def test_a_repeated_cache_header_is_refused_naming_it(
    redis_stack: CacheStack, name: str, values: tuple[str, str]
) -> None:
    """Which of two values a client meant cannot be told: the first alone was read, so a TTL
    past the 7-day bound or an unknown category on the second line passed unseen."""
    client = openai.AsyncOpenAI(base_url=redis_stack.api, api_key=f"sk-{_uid()}", max_retries=0)
    code, _, body = await _post(
        redis_stack,
        "/v1/chat/completions",
        _chat(f"twice {_uid()}"),
        [("Authorization", f"Bearer sk-{_uid()}"), *((name, v) for v in values)],
    )
    assert code == 400, body
    error = json.loads(body)["error"]
    assert error["param"] == name and error["type"] == "invalid_request_error"
    assert name in error["message"]
    # Sent once, each value is judged as before (the SDK sends each header once)
    raw = await client.chat.completions.with_raw_response.create(
        model="chat",
        temperature=0,
        messages=[{"role": "user", "content": f"once {_uid()}"}],
        extra_headers={name: values[0]},
    )
    assert raw.headers["x-gateway-cache"] == "miss"


# ----- Redis trouble


def _fresh(value: Any) -> Any:
    """``value`` with a new suffix on every prompt text: a request no other test has made."""
    if isinstance(value, dict):
        return {
            k: v + " " + _uid() if k in ("content", "input", "prompt") and isinstance(v, str) else _fresh(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


_ANTHROPIC = [("anthropic-version", "2023-06-01")]
_DOORS = {
    "chat": ("/v1/chat/completions", _chat("Board memo"), []),
    "chat-stream": (
        "/v1/chat/completions",
        _chat("Board memo", stream=True, stream_options={"include_usage": True}),
        [],
    ),
    "responses": ("/v1/responses", {"model": "chat", "input": "Board memo", "temperature": 0}, []),
    "messages-stream": (
        "/v1/messages",
        {
            "model": "chat",
            "max_tokens": 50,
            "temperature": 0,
            "stream": True,
            "messages": [{"role": "user", "content": "Board memo"}],
        },
        _ANTHROPIC,
    ),
    "embeddings": ("/v1/embeddings", {"model": "embed", "input": "Board memo"}, []),
}


@pytest.mark.parametrize("door", list(_DOORS))
@pytest.mark.parametrize("damage", ["cut", "emptied", "overwritten"])
async def test_a_damaged_redis_entry_is_a_miss_never_served(
    redis_stack: CacheStack, door: str, damage: str
) -> None:
    """A stored value cut short, emptied or overwritten past its head (in Redis, by anyone) was
    served as a hit: half a JSON body, an empty 200, a stream with no end marker."""
    path, template, extra = _DOORS[door]
    body = _fresh(template)
    auth = ("Authorization", f"Bearer sk-{_uid()}")
    assert redis_stack.redis_url is not None and redis_stack.prefix is not None
    with redis.Redis.from_url(redis_stack.redis_url) as r:
        pattern = f"{redis_stack.prefix}{{common_queries}}:v:*"
        before = set(r.scan_iter(match=pattern, count=1000))
        code, headers, first = await _post(redis_stack, path, body, [auth, *extra])
        assert (code, headers.get("x-gateway-cache")) == (200, "miss")
        (key,) = set(r.scan_iter(match=pattern, count=1000)) - before
        value = r.get(key)
        assert isinstance(value, bytes)
        head = value.split(b"\n", 1)[0] + b"\n"
        damaged = {
            "cut": value[: len(value) - 40],
            "emptied": head,
            "overwritten": head + bytes(reversed(value[len(head) :])),
        }[damage]
        r.set(key, damaged, keepttl=True)
        code, headers, second = await _post(redis_stack, path, body, [auth, *extra])
        assert (code, headers.get("x-gateway-cache")) == (200, "miss")
        assert second.endswith(first[-20:])  # a whole answer (its end as the first one's)
        code, headers, third = await _post(redis_stack, path, body, [auth, *extra])
        assert (code, headers.get("x-gateway-cache")) == (200, "hit")  # stored again
        if door == "responses":  # (a Responses hit is a response of its own: a new id)
            assert json.loads(third)["status"] == "completed"
        else:
            assert third == second
