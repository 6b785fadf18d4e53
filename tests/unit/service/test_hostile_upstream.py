"""A provider that answers whatever it likes, at the byte level (a raw TCP server on loopback, no
HTTP library on its side), behind each provider kind and each front door, whole and streamed:
HTML, nothing, JSON that is not an object, a body cut short, broken chunking, a redirect, only
comments, garbage status lines, headers past the client's limit, an error echoing the key, odd
Retry-Afters, NUL and invalid UTF-8, statuses no one defines, a deflate bomb, the wrong framing
for the request. Whatever it sends, the client gets a 2xx or an error in its API's envelope
(never a 500), soon, and the provider key appears in no answer; the gateway serves on."""

from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
KEY = "sk-hostile-provider-key-0123456789"
COMPLETION = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)
CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}\n\n'
BOMB = zlib.compress(b"a" * (64 * 2**20), 9)  # 64 MiB of JSON-ish bytes in ~64 KB
RATE = b'{"error":{"message":"slow","type":"rate_limit_exceeded"}}'
ESCAPED_KEY = b"\\u0073k-\\u0068ostile-provider-key-0123456789"  # sk-hostile-..., as JSON may write it


def http(status: int, body: bytes = b"", *headers: str, ctype: str = "application/json") -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Type: {ctype}", f"Content-Length: {len(body)}", *headers]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


SHAPES: dict[str, bytes | None] = {  # None: close the connection without a word
    "html": http(200, b"<html>hi</html>", ctype="text/html"),
    "empty": http(200),
    "array": http(200, b"[1,2]"),
    "cut-short": http(200, COMPLETION)[:-20],
    "bad-chunking": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "redirect": http(302, b"", "Location: http://example.com/"),
    "comments-only": http(200, b": hi\n\n: there\n\n", ctype="text/event-stream"),
    "bad-json-first": http(200, b"data: {nope\n\n" + CHUNK + b"data: [DONE]\n\n", ctype="text/event-stream"),
    "echoes-the-key": http(401, orjson.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})),
    "huge-header": http(200, COMPLETION, "X-Big: " + "a" * 20000),
    "stream-for-whole": http(200, CHUNK + b"data: [DONE]\n\n", ctype="text/event-stream"),
    "whole-for-stream": http(200, COMPLETION),
    "silence": None,
    "garbage": b"hello there\r\n\r\n",
    "retry-after-negative": http(429, RATE, "Retry-After: -5"),
    "retry-after-nan": http(429, RATE, "Retry-After: nan"),
    "retry-after-huge": http(429, RATE, "Retry-After: 1e400"),
    "deep-json": http(200, b"[" * 5000 + b"]" * 5000),
    "nul": http(200, COMPLETION.replace(b'"ok"', b'"o\\u0000k"')),
    "bad-utf8": http(200, COMPLETION.replace(b'"ok"', b'"o\xffk"')),
    "status-999": http(999, b"{}"),
    "deflate-bomb": http(200, BOMB, "Content-Encoding: deflate"),
    "lone-crs": http(200, CHUNK.replace(b"\n", b"\r") + b"data: [DONE]\r\r", ctype="text/event-stream"),
    "null-choice": http(200, COMPLETION.replace(b'"choices":[', b'"choices":[null,')),
    # The key with JSON escapes: a parser (the client's, a door's) turns them back into the key.
    "says-the-key-escaped": http(200, COMPLETION.replace(b'"ok"', b'"key: ' + ESCAPED_KEY + b'"')),
    "streams-the-key-escaped": http(
        200,
        CHUNK.replace(b'"ok"', b'"key: ' + ESCAPED_KEY + b'"') + b"data: [DONE]\n\n",
        ctype="text/event-stream",
    ),
}
DOORS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"input": "hi"}),
    "messages": ("/v1/messages", {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
}


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Each request's shape is named by its model (in the body, or in Gemini's path)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            named = re.search(rb"/models/([a-z0-9-]+)[:/]", head) or re.search(
                rb'"model":"([a-z0-9-]+)"', body
            )
            name = named.group(1).decode() if named else ""
            shape = SHAPES.get(name)
            if shape is None:
                return
            writer.write(shape)
            await writer.drain()
            if name in ("cut-short", "garbage") or b"Content-Length" not in shape.split(b"\r\n\r\n")[0]:
                return  # it ends here (a stall mid-body is the timeout tests' case)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def answered(door: str, stream: bool, body: bytes) -> bool:
    """Whether a 200 carries an answer: a stream with at least one event (not only comments) whose
    first event is JSON, a whole answer with something in it (a door never turns a broken
    completion into an empty one)."""
    if stream:  # and its first event is JSON (a door's first line is its event name)
        first = next((line for line in body.splitlines() if line.startswith(b"data:")), None)
        return first is not None and (first[5:].strip() == b"[DONE]" or _is_json(first[5:]))
    answer = orjson.loads(body)
    if door == "chat":
        return isinstance(answer.get("choices"), list) and bool(answer["choices"])
    if door == "responses":
        return bool(answer.get("output"))
    return bool(answer.get("content"))


def decoded(body: bytes) -> str:
    """The text a client's JSON parser reads from ``body``: whole, or each event's data."""
    texts = [body.decode("utf-8", "replace")]
    for part in [body, *(line[5:] for line in body.splitlines() if line.startswith(b"data:"))]:
        with contextlib.suppress(orjson.JSONDecodeError):
            texts.append(repr(orjson.loads(part)))
    return "\n".join(texts)


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.fixture
async def provider() -> AsyncIterator[str]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_whatever_a_provider_sends_the_client_gets_an_answer_or_its_error(
    aiohttp_client: ClientFactory, provider: str, kind: str
) -> None:
    root = provider + ("/v1beta" if kind == "gemini" else "/v1")
    models = "".join(f"  {name}: {{deployments: [{{provider: h, model: {name}}}]}}\n" for name in SHAPES)
    policy = parse_policy(
        f"version: 1\nauth: {{mode: open}}\nretry: {{max_attempts: 1}}\ncache: {{enabled: false}}\n"
        f"memory: {{enabled: false}}\nproviders:\n  h: {{kind: {kind}, base_url: '{root}', api_key_env: HKEY, "
        "max_response_bytes: 2MiB, timeouts: {first_byte_s: 2, total_s: 5}}\n"
        f"models:\n{models}"
    )
    client = await aiohttp_client(build_app(Settings(access_log=False), policy, {"HKEY": KEY}))
    address = provider.removeprefix("http://")  # 127.0.0.1:port
    seen: dict[str, int] = {}
    for door, (path, extra) in DOORS.items():
        for name in SHAPES:
            for stream in (False, True):
                response = await asyncio.wait_for(
                    client.post(path, json={"model": name, "stream": stream, **extra}), 15
                )
                body = await response.read()
                case = f"{door} {name} stream={stream}: {response.status} {body[:200]!r}"
                assert response.status < 500 or response.status in (502, 503, 504, 529), case
                assert KEY.encode() not in body, case
                assert KEY not in decoded(body), case
                # Nor where the provider is: aiohttp's words for a broken head name its URL.
                assert address not in decoded(body), case
                if response.status == 200:  # an answer, never an empty shell of one
                    assert answered(door, stream, body), case
                if response.status >= 400:
                    error = orjson.loads(body)
                    shape = error["error"] if door != "messages" else error
                    assert ("message" in shape) if door != "messages" else (error["type"] == "error"), case
                seen[f"{door} {response.status}"] = seen.get(f"{door} {response.status}", 0) + 1
    assert (await client.get("/health/live")).status == 200
    assert sum(seen.values()) == len(DOORS) * len(SHAPES) * 2
