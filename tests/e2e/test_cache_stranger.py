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


def _anthropic_answer(n: int, reply: str, stop: str, stream: bool) -> tuple[bytes, str]:
    message = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": "up",
        "content": [{"type": "text", "text": reply}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    if not stream:
        return json.dumps(message).encode(), "application/json"
    events = [
        ("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": reply}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    out = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
    return out, "text/event-stream"


def _gemini_answer(reply: str, finish: str, stream: bool) -> tuple[bytes, str]:
    """Gemini's answer; a SAFETY finish has no content (as Gemini blocks a candidate)."""
    candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
    if finish != "SAFETY":
        candidate["content"] = {"role": "model", "parts": [{"text": reply}]}
    answer = {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
        "modelVersion": "up",
    }
    if not stream:
        return json.dumps(answer).encode(), "application/json"
    return b"data: " + json.dumps(answer).encode() + b"\r\n\r\n", "text/event-stream"


class ScriptedUpstream:
    """A server whose answer follows the prompt: ``FINISH=<reason>`` in the request sets the
    finish reason; counts requests. OpenAI-compatible, and Anthropic's Messages on
    ``.../messages`` and Gemini's on ``...:generateContent`` / ``:streamGenerateContent``, with
    the reason in each one's words."""

    def __init__(self) -> None:
        owner = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                owner.requests += 1
                text = json.dumps(body)
                finish = ""
                if "FINISH=" in text:
                    finish = text.split("FINISH=")[1].split("\\")[0].split('"')[0].split(" ")[0]
                reply = f"answer {owner.requests}"
                if self.path.endswith("/messages"):
                    out, ctype = _anthropic_answer(
                        owner.requests, reply, finish or "end_turn", bool(body.get("stream"))
                    )
                    self._send(out, ctype)
                    return
                if "GenerateContent" in self.path or "generateContent" in self.path:
                    out, ctype = _gemini_answer(reply, finish or "STOP", "streamGenerateContent" in self.path)
                    self._send(out, ctype)
                    return
                finish = finish or "stop"
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
                self._send(out, ctype)

            def _send(self, out: bytes, ctype: str) -> None:
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
          scripted_claude: {{kind: anthropic, base_url: "{scripted}/v1"}}
          scripted_gemini: {{kind: gemini, base_url: "{scripted}/v1beta"}}
        models:
          chat: {{deployments: [{{provider: main, model: up-chat}}]}}
          sem-chat: {{deployments: [{{provider: main, model: up-sem}}]}}
          scripted: {{deployments: [{{provider: scripted, model: up-scripted}}]}}
          scripted-claude: {{deployments: [{{provider: scripted_claude, model: up-claude}}]}}
          scripted-gemini: {{deployments: [{{provider: scripted_gemini, model: up-gemini}}]}}
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


# ----- what is not stored: a filter's or a refusal's verdict

# (case id, model group, door path, the reason the upstream gives, whether the answer is stored)
_VERDICTS = [
    ("openai content_filter", "scripted", "/v1/chat/completions", "content_filter", False),
    ("openai length", "scripted", "/v1/chat/completions", "length", True),
    ("anthropic refusal", "scripted-claude", "/v1/chat/completions", "refusal", False),
    ("anthropic max_tokens", "scripted-claude", "/v1/chat/completions", "max_tokens", True),
    ("gemini SAFETY", "scripted-gemini", "/v1/chat/completions", "SAFETY", False),
    ("gemini MAX_TOKENS", "scripted-gemini", "/v1/chat/completions", "MAX_TOKENS", True),
    ("messages door anthropic refusal", "scripted-claude", "/v1/messages", "refusal", False),
    ("messages door gemini SAFETY", "scripted-gemini", "/v1/messages", "SAFETY", False),
    ("messages door openai content_filter", "scripted", "/v1/messages", "content_filter", False),
    ("responses door openai content_filter", "scripted", "/v1/responses", "content_filter", False),
    ("responses door gemini SAFETY", "scripted-gemini", "/v1/responses", "SAFETY", False),
    ("completions openai content_filter", "scripted", "/v1/completions", "content_filter", False),
]


def _verdict_body(path: str, model: str, prompt: str, stream: bool) -> dict[str, Any]:
    if path == "/v1/messages":
        return {
            "model": model, "max_tokens": 50, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        }  # fmt: skip
    if path == "/v1/responses":
        return {"model": model, "input": prompt, "temperature": 0, "stream": stream}
    if path == "/v1/completions":
        return {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 20, "stream": stream}
    return {**_chat(prompt, stream=stream), "model": model}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("model", "path", "reason", "stored"), [c[1:] for c in _VERDICTS], ids=[c[0] for c in _VERDICTS]
)
async def test_a_content_filters_verdict_is_not_stored_but_a_length_cut_is(
    stack: CacheStack,
    upstreams: tuple[dict[str, ManagedProcess], ScriptedUpstream],
    model: str,
    path: str,
    reason: str,
    stored: bool,
    stream: bool,
) -> None:
    """An answer a content filter or a refusal ended (``content_filter``; Anthropic's
    ``refusal``; Gemini's ``SAFETY``, translated to ``content_filter``; the Messages door's
    ``refusal`` and the Responses door's incomplete ``content_filter``) was stored and served again
    as a hit. It is a verdict on one generation: asked again, the upstream is asked again. A
    ``length`` (``max_tokens``) cut is reproducible and stays stored."""
    scripted = upstreams[1]
    body = _verdict_body(path, model, f"{_uid()} FINISH={reason} please", stream)
    auth = ("Authorization", f"Bearer sk-{_uid()}")
    before = scripted.requests
    code, headers, first = await _post(stack, path, body, [auth])
    assert (code, headers.get("x-gateway-cache")) == (200, "miss"), first[:300]
    if reason in ("content_filter", "refusal", "SAFETY"):
        words = {"/v1/messages": b'"refusal"', "/v1/responses": b'"content_filter"'}
        assert words.get(path, b'"content_filter"') in first  # the verdict the client saw
    code, headers, _ = await _post(stack, path, body, [auth])
    assert code == 200
    assert headers.get("x-gateway-cache") == ("hit" if stored else "miss")
    assert scripted.requests - before == (1 if stored else 2)
