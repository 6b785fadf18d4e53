"""Streams a provider fails after their first byte reached the client, through the whole request
path with real HTTP on loopback to fake providers that really drop the connection, stall or send
garbage, and the official ``openai`` SDK as the client: each is counted in
``gateway_stream_errors_total`` by reason, says its reason in the access log line and ends with
an error event; a client that leaves is not counted (it is not the gateway failing)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterator

import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import Counter
from gateway.policy.loader import parse_policy
from gateway.settings import Settings

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
MESSAGES = [{"role": "user", "content": "hello"}]


def chunk(content: str) -> bytes:
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def anthropic_event(kind: str, data: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


ANTHROPIC_START = anthropic_event(
    "message_start",
    {
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 3, "output_tokens": 0},
        }
    },
) + anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
ANTHROPIC_TEXT = anthropic_event(
    "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "first"}}
)


CRASH = {"error": {"message": "The model crashed", "type": "server_error"}}


class Upstreams:
    """An OpenAI-compatible provider and an Anthropic one on loopback, each failing its stream
    after the first content event as the model asked for says, once ``proceed`` is set (the
    client has the first event: the failure cannot come with it, which fails over unseen);
    ``left`` is set once the provider's connection was closed under a stream it was still
    sending."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.proceed = asyncio.Event()

    def openai_app(self) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            model = (await request.json())["model"]
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            transport = request.transport
            assert transport is not None
            if model == "first-error-stall":  # its first content and its error event in one
                # chunk, then nothing, the connection open
                await response.write(chunk("first") + b"data: " + orjson.dumps(CRASH) + b"\n\n")
                while not transport.is_closing():
                    await asyncio.sleep(0.01)
                return response
            await response.write(chunk("first"))
            if model not in ("slow", "framing-whole"):
                await self.proceed.wait()
            if model == "drop":  # the connection goes, mid-answer
                transport.close()
            elif model in ("framing", "framing-whole"):  # a chunk size that is not hex: the body
                if model == "framing-whole":  # (the gateway reads the body by then, not the head)
                    await asyncio.sleep(0.1)
                transport.write(b"zz\r\n")  # breaks its own framing, the connection stays open
                while not transport.is_closing():
                    await asyncio.sleep(0.01)
            elif model == "relayed":  # its own error event (OpenAI's format), then more
                error = {"error": {"message": "The model crashed", "type": "server_error"}}
                await response.write(
                    b"data: " + orjson.dumps(error) + b"\n\n" + chunk("after") + b"data: [DONE]\n\n"
                )
            elif model == "long-error":  # an error event with a long, multi-line message
                error = {"error": {"message": "Traceback\n" + "x" * 5000, "type": "server_error"}}
                await response.write(b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n")
            elif model == "error-stall":  # its error event, then nothing, the connection open
                error = {"error": {"message": "The model crashed", "type": "server_error"}}
                await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
                while not transport.is_closing():
                    await asyncio.sleep(0.01)
            elif model == "content-error-stall":  # more content and its error event in one
                # chunk, then nothing, the connection open
                await response.write(chunk("second") + b"data: " + orjson.dumps(CRASH) + b"\n\n")
                while not transport.is_closing():
                    await asyncio.sleep(0.01)
            elif model == "unreadable":  # an event that looks like an error but is not JSON
                await response.write(b'data: {"error": oops\n\ndata: [DONE]\n\n')
            elif model == "stall":  # nothing more, until the gateway gives up and closes
                while not transport.is_closing():
                    await asyncio.sleep(0.01)
            elif model == "slow":  # more, until the client has gone (the gateway then closes)
                try:
                    while not transport.is_closing():
                        await response.write(chunk("more"))
                        await asyncio.sleep(0.01)
                except ConnectionError:
                    pass
                finally:  # (or cancelled, the connection lost)
                    self.left.set()
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app

    def anthropic_app(self) -> web.Application:
        async def messages(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            model = body["model"]
            overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            if model == "overloaded-first" and not body.get("stream"):  # Anthropic's 529
                return web.json_response(overloaded, status=529)
            if model == "overloaded-first":  # 200, then the error as the stream's first event
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                await response.write(anthropic_event("error", {"error": overloaded["error"]}))
                return response
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(ANTHROPIC_START + ANTHROPIC_TEXT)
            await self.proceed.wait()
            if model == "garbage":
                await response.write(b"event: content_block_delta\ndata: {not json\n\n")
            else:  # an error event, mid-answer
                error = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
                await response.write(anthropic_event("error", error))
            return response

        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        return app


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    yield Upstreams()


@pytest.fixture
def access_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[dict[str, object]]]]:
    out = io.StringIO()
    access = AccessLog("json", True, Counter("dropped", "test"), stream=out)
    monkeypatch.setattr(AccessLog, "configured", classmethod(lambda cls, *args: access))

    def lines() -> list[dict[str, object]]:
        access.flush()
        return [orjson.loads(line) for line in out.getvalue().splitlines()]

    yield lines


async def gateway(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> tuple[TestClient, openai.AsyncOpenAI]:
    oa = await aiohttp_server(upstreams.openai_app())
    an = await aiohttp_server(upstreams.anthropic_app())
    policy = parse_policy(
        f"""
version: 1
auth: {{mode: open}}
providers:
  compat-main:
    kind: openai
    base_url: "{oa.make_url("/v1")}"
    timeouts: {{connect_s: 2, first_byte_s: 0.3, total_s: 30}}
  claude-main: {{kind: anthropic, base_url: "{an.make_url("/v1")}", api_key_env: ANTHROPIC_KEY}}
models:
  drop: {{deployments: [{{provider: compat-main, model: drop}}]}}
  relayed: {{deployments: [{{provider: compat-main, model: relayed}}]}}
  long-error: {{deployments: [{{provider: compat-main, model: long-error}}]}}
  unreadable: {{deployments: [{{provider: compat-main, model: unreadable}}]}}
  error-stall: {{deployments: [{{provider: compat-main, model: error-stall}}]}}
  content-error-stall: {{deployments: [{{provider: compat-main, model: content-error-stall}}]}}
  first-error-stall: {{deployments: [{{provider: compat-main, model: first-error-stall}}]}}
  stall: {{deployments: [{{provider: compat-main, model: stall}}]}}
  framing: {{deployments: [{{provider: compat-main, model: framing}}]}}
  framing-whole:
    deployments: [{{provider: compat-main, model: framing-whole}}]
    retry: {{max_attempts: 1}}
  slow: {{deployments: [{{provider: compat-main, model: slow}}]}}
  garbage: {{deployments: [{{provider: claude-main, model: garbage}}]}}
  overloaded: {{deployments: [{{provider: claude-main, model: overloaded}}]}}
  overloaded-first:
    deployments: [{{provider: claude-main, model: overloaded-first}}]
    retry: {{max_attempts: 1}}
memory: {{enabled: false}}
"""
    )
    env = {"ANTHROPIC_KEY": "sk-ant-test"}
    client = await aiohttp_client(build_app(Settings(access_log=True), policy, env))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)
    return client, sdk


async def stream_errors(client: TestClient) -> dict[tuple[str, ...], float]:
    """``gateway_stream_errors_total`` by (endpoint, model, provider, reason)."""
    text = await (await client.get("/metrics")).text()
    found: dict[tuple[str, ...], float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_stream_errors_total{"):
            labels, value = line[len("gateway_stream_errors_total{") :].rsplit("} ", 1)
            pairs = dict(pair.split("=", 1) for pair in labels.split(","))
            key = tuple(pairs[name].strip('"') for name in ("endpoint", "model", "provider", "reason"))
            found[key] = float(value)
    return found


async def streamed_until_error(
    sdk: openai.AsyncOpenAI, upstreams: Upstreams, model: str, request_id: str
) -> list[str]:
    """The content delivered before the ``APIError`` the SDK must raise on the error event."""
    got: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        stream = await sdk.chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        async for part in stream:
            if part.choices and part.choices[0].delta.content:
                got.append(part.choices[0].delta.content)
                upstreams.proceed.set()
    assert not isinstance(raised.value, openai.APIStatusError)  # an error event, after a 200
    return got


@pytest.mark.parametrize(
    ("model", "provider", "reason"),
    [
        ("drop", "compat-main", "upstream_closed"),
        ("relayed", "compat-main", "provider_error"),
        ("unreadable", "compat-main", "bad_event"),
        ("error-stall", "compat-main", "provider_error"),  # at once, not at the read timeout
        ("stall", "compat-main", "timeout"),
        ("framing", "compat-main", "bad_event"),
        ("garbage", "claude-main", "bad_event"),
        ("overloaded", "claude-main", "provider_error"),
    ],
)
async def test_a_stream_failed_after_its_first_byte_is_counted_and_logged_with_its_reason(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    upstreams: Upstreams,
    access_lines: Callable[[], list[dict[str, object]]],
    model: str,
    provider: str,
    reason: str,
) -> None:
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    assert await streamed_until_error(sdk, upstreams, model, f"r-{model}") == ["first"]
    assert await stream_errors(client) == {("/v1/chat/completions", model, provider, reason): 1.0}
    (line,) = [line for line in access_lines() if line["request_id"] == f"r-{model}"]
    assert (line["status"], line["provider"], line["stream_error"]) == (200, provider, reason)


@pytest.mark.parametrize(
    ("model", "content"),
    [("first-error-stall", ["first"]), ("content-error-stall", ["first", "second"])],
)
async def test_content_and_an_error_event_in_one_chunk_then_a_stall_fail_at_once(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    upstreams: Upstreams,
    access_lines: Callable[[], list[dict[str, object]]],
    model: str,
    content: list[str],
) -> None:
    """The content before the error event goes out, then the gateway's error event at once: it
    waited for the provider's next bytes, which a provider that stalls never sends, so the
    stream ended only at the read timeout (``timeout``, 0.3 s here; a minute by default), as the
    first chunk of the answer or a later one."""
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    assert await streamed_until_error(sdk, upstreams, model, f"r-{model}") == content
    assert await stream_errors(client) == {
        ("/v1/chat/completions", model, "compat-main", "provider_error"): 1.0
    }
    (line,) = [line for line in access_lines() if line["request_id"] == f"r-{model}"]
    assert (line["status"], line["stream_error"]) == (200, "provider_error")


async def test_a_body_that_breaks_its_chunked_framing_fails_at_once_not_at_the_read_timeout(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """aiohttp (3.14) closes a connection whose chunked framing broke but leaves the body's reader
    waiting: the gateway answered only when its read-gap timeout ran out (here 0.3 s, a 504; by
    default a minute). ``payload_guard`` ends the body when the connection goes: a broken
    response, a 502 (streamed: ``bad_event``, in the parametrised test above)."""
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    with pytest.raises(openai.APIStatusError) as error:
        await sdk.chat.completions.create(model="framing-whole", messages=MESSAGES)  # type: ignore[arg-type]
    assert error.value.status_code == 502, error.value.body
    assert "the provider sent a malformed HTTP response" in error.value.message
    assert isinstance(error.value.body, dict) and error.value.body["code"] == "malformed_response"


async def test_a_client_that_leaves_mid_stream_is_not_a_stream_error(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    upstreams: Upstreams,
    access_lines: Callable[[], list[dict[str, object]]],
) -> None:
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    stream = await sdk.chat.completions.create(
        model="slow",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-request-id": "r-left"},
    )
    async for part in stream:
        assert part.choices[0].delta.content == "first"
        break
    await stream.close()  # the client goes away mid-answer
    await asyncio.wait_for(upstreams.left.wait(), 10)  # the gateway closed the provider's request
    for _ in range(500):  # the request's line once its handler has ended (bounded: 5 s)
        if [line for line in access_lines() if line["request_id"] == "r-left"]:
            break
        await asyncio.sleep(0.01)
    (line,) = [line for line in access_lines() if line["request_id"] == "r-left"]
    assert "stream_error" not in line
    assert await stream_errors(client) == {}


async def test_an_anthropic_streams_errors_name_the_policys_provider_as_whole_answers_do(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """An Anthropic stream's ``error`` event (before its first byte: the call's error; after it:
    the client's error event) names the provider as the policy does (``claude-main``), as the
    same error answered whole does, not the provider's kind (``anthropic``)."""
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    messages = anthropic.AsyncAnthropic(base_url=str(client.make_url("")), api_key="k", max_retries=0)
    ask = {"max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
    said: dict[str, str] = {}
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as chat_error:
            await sdk.chat.completions.create(model="overloaded-first", messages=MESSAGES, stream=stream)  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIStatusError) as door_error:
            await messages.messages.create(model="overloaded-first", stream=stream, **ask)  # type: ignore[arg-type, call-overload]
        assert chat_error.value.status_code == 503 and door_error.value.status_code == 529
        said[f"chat stream={stream}"] = chat_error.value.body["message"]  # type: ignore[index]
        said[f"messages stream={stream}"] = door_error.value.body["error"]["message"]  # type: ignore[index]
    assert len(set(said.values())) == 1, said  # the same words, streamed or not, on either door
    assert (
        "claude-main: Overloaded" in said["chat stream=True"] and "anthropic:" not in said["chat stream=True"]
    )

    # After the first byte, on the Messages door (Anthropic's stream relayed): its error event.
    with pytest.raises(anthropic.APIError) as late:
        async with messages.messages.stream(model="overloaded", **ask) as events:  # type: ignore[arg-type]
            async for event in events:
                if event.type == "content_block_delta":
                    upstreams.proceed.set()
    assert upstreams.proceed.is_set()  # the answer had begun: this is the error event, not a status
    message = late.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("claude-main: ") and "anthropic:" not in message
    await messages.close()
    # Counted under the door the client used.
    assert await stream_errors(client) == {
        ("/v1/messages", "overloaded", "claude-main", "provider_error"): 1.0
    }


async def test_the_client_gets_a_fixed_text_and_only_the_log_gets_what_the_library_said(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    upstreams: Upstreams,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The provider drops the connection mid-answer: aiohttp's words (which may name hosts,
    addresses or URLs) reach the log's ``detail``, never the client, whose error event says the
    reason's fixed text with the policy's provider name."""
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    with caplog.at_level("WARNING", logger="gateway.sse"):
        got: list[str] = []
        with pytest.raises(openai.APIError) as raised:
            stream = await sdk.chat.completions.create(model="drop", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            async for part in stream:
                if part.choices and part.choices[0].delta.content:
                    got.append(part.choices[0].delta.content)
                    upstreams.proceed.set()
    assert got == ["first"]
    assert (
        raised.value.message == "compat-main: the provider closed the stream before the answer was complete."
    )
    assert raised.value.body == {  # the error event's envelope, as OpenAI's
        "message": raised.value.message,
        "type": "upstream_error",
        "param": None,
        "code": "upstream_closed",
    }
    (record,) = [r for r in caplog.records if r.getMessage() == "stream failed after first byte"]
    fields = record.fields  # type: ignore[attr-defined]
    assert (fields["provider"], fields["reason"]) == ("compat-main", "upstream_closed")
    detail = fields["detail"]
    assert "Response payload is not completed" in detail  # what aiohttp said, for the operator
    sent = orjson.dumps(raised.value.body).decode()
    for said in ("payload", "TransferEncodingError", "127.0.0.1", detail):
        assert said not in sent


async def events_of(
    client: TestClient, path: str, body: dict[str, object], upstreams: Upstreams
) -> list[bytes]:
    """The data of each event of a stream the gateway answered on ``path`` (the provider fails
    once the client has its first event)."""
    response = await client.post(path, json=body)
    assert response.status == 200
    seen = b""
    async for piece in response.content.iter_any():
        seen += piece
        upstreams.proceed.set()
    return [e.split(b"data: ", 1)[1] for e in seen.split(b"\n\n") if b"data: " in e]


async def test_the_providers_error_event_is_not_relayed_the_gateways_is_sent(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """An OpenAI-compatible deployment's own ``{"error": ...}`` mid-stream went to the client as
    the provider sent it (its type, no provider named), and what it sent after it too. The
    client gets the gateway's error event, as for every other mid-stream failure: OpenAI's shape,
    the deployment's provider named, code ``provider_error``, the provider's words quoted."""
    client, _ = await gateway(aiohttp_server, aiohttp_client, upstreams)
    body = {"model": "relayed", "messages": MESSAGES, "stream": True}
    events = await events_of(client, "/v1/chat/completions", body, upstreams)
    assert events[-1] == b"[DONE]" and b"first" in events[0]
    assert not any(b"after" in e or b"server_error" in e for e in events), events
    error = orjson.loads(events[-2])["error"]
    assert error == {
        "message": "compat-main: the provider reported an error in the middle of the answer; the answer "
        "is incomplete. The provider said: 'The model crashed'",
        "type": "upstream_error",
        "param": None,
        "code": "provider_error",
    }


async def test_the_providers_words_are_one_bounded_line(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    client, _ = await gateway(aiohttp_server, aiohttp_client, upstreams)
    body = {"model": "long-error", "messages": MESSAGES, "stream": True}
    events = await events_of(client, "/v1/chat/completions", body, upstreams)
    message = orjson.loads(events[-2])["error"]["message"]
    assert message.endswith("The provider said: 'Traceback " + "x" * 190 + "…' (5010 chars)"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "content-error-stall", "input": "hello", "stream": True}),
        (
            "/v1/messages",
            {"model": "content-error-stall", "max_tokens": 16, "messages": MESSAGES, "stream": True},
        ),
    ],
)
async def test_the_other_doors_end_a_stalled_stream_at_its_error_event_too(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    upstreams: Upstreams,
    path: str,
    body: dict[str, object],
) -> None:
    """The Responses and Messages doors wrap the chat stream's translator: the held failure is
    seen through them (``failing``), so their error event comes at once, after the content."""
    client, _ = await gateway(aiohttp_server, aiohttp_client, upstreams)
    events = await events_of(client, path, body, upstreams)
    assert any(b"second" in e for e in events), events
    errors = [event for event in map(orjson.loads, events) if event.get("type") == "error"]
    assert len(errors) == 1 and "reported an error in the middle" in orjson.dumps(errors[0]).decode(), errors
    assert await stream_errors(client) == {
        (path, "content-error-stall", "compat-main", "provider_error"): 1.0
    }
