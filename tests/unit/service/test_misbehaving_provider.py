"""A provider that floods (a body or a stream event past ``max_response_bytes``), cuts a stream
inside an event or starts it with an error event, through the whole request path with the official ``openai`` SDK as the client
and real HTTP to the providers on loopback: a whole answer fails over unseen (or is a 502 in
OpenAI's envelope when no deployment is left), a stream already started ends with an error event
the SDK raises (never glued to half an event), one that has not fails over, and a cacheable stream too large for its cache
category is served whole but not kept."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
LIMIT = 64 * 1024


def completion(model: str, content: str = "hi") -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )


def chunk(model: str, content: str) -> bytes:
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


class Upstreams:
    """Two OpenAI-compatible providers on loopback: ``flood`` (whose answers pass the limit) and
    ``good``; each counts the chat requests it got."""

    def __init__(self) -> None:
        self.calls = {"flood": 0, "good": 0}
        self.stream_events = 8  # how many events ``good`` streams

    def app(self, name: str) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            self.calls[name] += 1
            body = await request.json()
            model = body["model"]
            if not body.get("stream"):
                if model == "oops" and name == "flood":  # an error, with a 200
                    error = {"error": {"message": "The server had an error", "type": "server_error"}}
                    return web.Response(body=orjson.dumps(error), content_type="application/json")
                if model == "weird":  # counts that are not counts
                    usage = b'"usage":{"prompt_tokens":-1000000,"completion_tokens":' + b"9" * 40 + b"}"
                    weird = completion(model).replace(
                        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}', usage
                    )
                    assert weird.count(b"9" * 40) == 1
                    return web.Response(body=weird, content_type="application/json")
                if name == "flood":  # valid JSON, past the limit
                    return web.Response(
                        body=completion(model, "x" * (LIMIT + 10)), content_type="application/json"
                    )
                return web.Response(body=completion(model), content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            if model == "quiet" and name == "flood":  # keep-alive comments, then the end
                await response.write(b": keep-alive\n\n")
                await response.write(b": still here\n\n")
                return response
            if model == "oops" and name == "flood":  # 200, then an error as the first event
                await response.write(
                    b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
                )
                await response.write(b"data: [DONE]\n\n")
                return response
            if name == "flood":
                await response.write(chunk(model, "first"))
                try:
                    for _ in range(2048):  # 8 MiB of one line that never ends
                        await response.write(b"z" * 4096)
                except ConnectionError:
                    pass
                return response
            if model == "late-error":  # an answer begun, then an error event
                await response.write(chunk(model, "first"))
                await response.write(
                    b'data: {"error": {"message": "The model crashed", "type": "server_error"}}\n\n'
                )
                await response.write(chunk(model, "after") + b"data: [DONE]\n\n")
                return response
            if model == "unended":  # whole events, then a clean end with no [DONE]
                await response.write(chunk(model, "first") + chunk(model, "second"))
                return response
            if model == "half-ended":  # one event, half of the next, then a clean end
                half = chunk(model, "second")
                await response.write(chunk(model, "first") + half[: len(half) // 2])
                return response
            if model == "cut":  # one event, half of the next, then the connection drops
                half = chunk(model, "second")
                await response.write(chunk(model, "first") + half[: len(half) // 2])
                assert request.transport is not None
                request.transport.close()
                return response
            for i in range(self.stream_events):
                await response.write(chunk(model, f"part{i} " + "p" * 200))
            await response.write(b"data: [DONE]\n\n")
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    yield Upstreams()


async def gateway(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> tuple[TestClient, openai.AsyncOpenAI]:
    flood = await aiohttp_server(upstreams.app("flood"))
    good = await aiohttp_server(upstreams.app("good"))
    policy = parse_policy(
        f"""
version: 1
auth: {{mode: open}}
providers:
  flood: {{kind: openai, base_url: "{flood.make_url("/v1")}", max_response_bytes: 64KiB}}
  good: {{kind: openai, base_url: "{good.make_url("/v1")}"}}
models:
  pair: {{strategy: ordered, deployments: [{{provider: flood, model: f}}, {{provider: good, model: g}}]}}
  alone: {{deployments: [{{provider: flood, model: f}}]}}
  kept: {{deployments: [{{provider: good, model: g}}]}}
  cut: {{deployments: [{{provider: good, model: cut}}]}}
  unended: {{deployments: [{{provider: good, model: unended}}]}}
  late-error: {{deployments: [{{provider: good, model: late-error}}]}}
  half-ended: {{deployments: [{{provider: good, model: half-ended}}]}}
  oops: {{strategy: ordered, deployments: [{{provider: flood, model: oops}}, {{provider: good, model: g}}]}}
  oops-alone: {{deployments: [{{provider: flood, model: oops}}]}}
  quiet: {{strategy: ordered, deployments: [{{provider: flood, model: quiet}}, {{provider: good, model: g}}]}}
  weird: {{deployments: [{{provider: good, model: weird}}]}}
cache:
  default_category: small
  categories: {{small: {{ttl_s: 60, max_bytes: 4KiB}}}}
memory: {{enabled: false}}
"""
    )
    client = await aiohttp_client(build_app(Settings.from_env({}), policy, {}))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)
    return client, sdk


MESSAGES = [{"role": "user", "content": "hello"}]


async def streamed_until_error(sdk: openai.AsyncOpenAI, model: str, match: str) -> list[str]:
    """The content a stream of ``model`` delivered before the ``APIError`` (matching ``match``)
    the SDK must raise on it."""
    got: list[str] = []
    with pytest.raises(openai.APIError, match=match):
        stream = await sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        async for part in stream:
            got.append(part.choices[0].delta.content or "")
    return got


async def test_a_flooding_deployment_is_failed_over_unseen(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    raw = await sdk.chat.completions.with_raw_response.create(model="pair", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "hi"
    assert raw.headers["x-gateway-provider"] == "good"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.calls == {"flood": 1, "good": 1}


async def test_with_no_deployment_left_the_client_gets_a_502_naming_the_limit(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model="alone", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert "max_response_bytes (65,536 bytes) in one answer" in caught.value.message
    # The gateway is fine afterwards.
    answer = await sdk.chat.completions.create(model="kept", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi"


async def test_a_stream_flooding_after_its_first_chunk_ends_with_an_error_event(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    got = await streamed_until_error(
        sdk, "alone", "flood: the provider sent a stream event the gateway could not read"
    )
    assert got == ["first"]


async def test_a_stream_cut_inside_an_event_ends_with_the_error_not_a_broken_event(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """The half event never reaches the client: the SDK sees the first chunk, then the
    gateway's error event (an ``APIError``), not JSON it cannot parse."""
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    assert await streamed_until_error(sdk, "cut", "good") == ["first"]


@pytest.mark.parametrize(
    ("model", "delivered"), [("unended", ["first", "second"]), ("half-ended", ["first"])]
)
async def test_a_stream_that_ends_without_its_end_marker_raises_in_the_sdk(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    upstreams: Upstreams,
    model: str,
    delivered: list[str],
) -> None:
    """The provider closed its stream cleanly but sent no [DONE]: relayed as it came, the SDK
    ended its loop as for a whole answer and the application kept a truncated one. The gateway
    ends it with an error event after the whole events (a half one is dropped); it counts as a
    failed stream and is not cached."""
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    assert await streamed_until_error(sdk, model, "good: the provider closed the stream before") == delivered
    metrics = await (await client.get("/metrics")).text()
    series = f'outcome="error",provider="good",upstream_model="{model}"'
    assert f"gateway_upstream_requests_total{{{series}}} 1.0" in metrics


async def test_a_stream_that_ends_without_its_end_marker_raises_in_the_sdk_on_the_responses_door(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="good: the provider closed the stream before"):
        stream = await sdk.responses.create(model="unended", input="hello", stream=True)
        async for event in stream:
            seen.append(event.type)
    assert "response.output_text.delta" in seen and "response.completed" not in seen


async def test_an_error_event_after_the_first_ends_a_responses_stream_with_the_apis_error_event(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """An OpenAI-compatible server's ``{"error": ...}`` event mid-stream reached a Responses client
    as chat's bare envelope (no ``type``, no ``sequence_number``: the Vercel AI SDK's parser
    refused it); it is the Responses API's ``error`` event, numbered after the others, in the
    gateway's words (the provider named, its message quoted), and nothing the provider sends
    after it is relayed."""
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="The model crashed"):
        stream = await sdk.responses.create(model="late-error", input="hello", stream=True)
        async for event in stream:
            seen.append(event.type)
    assert "response.output_text.delta" in seen and "response.completed" not in seen
    raw = await client.post("/v1/responses", json={"model": "late-error", "input": "hi", "stream": True})
    events = [e for e in (await raw.read()).split(b"\n\n") if e.strip()]
    assert events[-1].startswith(b"event: error\ndata: ")
    numbers = [orjson.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in events]
    assert numbers == list(range(len(numbers)))
    error = orjson.loads(events[-1].split(b"data: ", 1)[1])
    words = (
        "good: the provider reported an error in the middle of the answer; the answer is incomplete. "
        "The provider said: 'The model crashed'"
    )
    assert error["type"] == "error" and error["message"] == words and error["code"] == "provider_error"
    assert error["param"] is None and error["error"]["message"] == words
    assert not any(b'"after"' in e for e in events)


async def test_a_stream_whose_first_event_is_an_error_fails_over_unseen(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """An OpenAI-compatible server may answer 200 and then an error event: nothing has reached
    the client yet, so the next deployment serves the stream, as for a translated format."""
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    raw = await sdk.chat.completions.with_raw_response.create(model="oops", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    text = "".join([part.choices[0].delta.content or "" async for part in raw.parse() if part.choices])
    assert text.count("part") == upstreams.stream_events
    assert (raw.headers["x-gateway-provider"], raw.headers["x-gateway-attempts"]) == ("good", "2")
    assert upstreams.calls == {"flood": 1, "good": 1}


async def test_a_stream_of_nothing_but_comments_fails_over(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """Keep-alive comments and then the end: no answer. It was relayed as a 200 stream with no
    event in it, which the SDK reads as an empty answer, no error."""
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    raw = await sdk.chat.completions.with_raw_response.create(model="quiet", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    text = "".join([part.choices[0].delta.content or "" async for part in raw.parse() if part.choices])
    assert text.count("part") == upstreams.stream_events
    assert (raw.headers["x-gateway-provider"], raw.headers["x-gateway-attempts"]) == ("good", "2")


async def test_an_error_answered_with_a_200_fails_over_and_is_never_cached(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """Some compatible servers answer ``{"error": ...}`` with a 200: relayed, a temperature-0
    request's "answer" would have been cached and served again for the cache's whole TTL."""
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    raw = await sdk.chat.completions.with_raw_response.create(model="oops", messages=MESSAGES, temperature=0)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "hi"
    assert (raw.headers["x-gateway-provider"], raw.headers["x-gateway-attempts"]) == ("good", "2")
    for _ in range(2):
        before = upstreams.calls["flood"]
        with pytest.raises(openai.InternalServerError, match="The server had an error"):
            await sdk.chat.completions.create(model="oops-alone", messages=MESSAGES, temperature=0)  # type: ignore[arg-type]
        assert upstreams.calls["flood"] > before  # asked again each time: nothing was cached


async def test_token_counts_that_are_not_counts_are_not_counted(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """A negative count would give tokens and spend back to limits and budgets, a 10^40 one
    exhaust them at once: the answer is relayed, its counts are taken as 0."""
    client, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)
    answer = await sdk.chat.completions.create(model="weird", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hi"
    metrics = await (await client.get("/metrics")).text()
    sums = [
        line
        for line in metrics.splitlines()
        if line.startswith("gen_ai_client_token_usage_sum") and 'gen_ai_request_model="weird"' in line
    ]
    assert sums and all(line.endswith(" 0.0") for line in sums), sums


async def test_a_cacheable_stream_too_large_for_its_category_is_served_whole_but_not_kept(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    _, sdk = await gateway(aiohttp_server, aiohttp_client, upstreams)

    async def streamed(content: str) -> tuple[str, str]:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="kept",
            messages=[{"role": "user", "content": content}],
            temperature=0,
            stream=True,
        )
        text = "".join([part.choices[0].delta.content or "" async for part in raw.parse() if part.choices])
        return raw.headers["x-gateway-cache"], text

    upstreams.stream_events = 40  # about 10 KB: more than the category's 4 KiB
    first = await streamed("large")
    again = await streamed("large")
    assert first[0] == again[0] == "miss"
    assert first[1] == again[1] and first[1].count("part") == 40
    assert upstreams.calls["good"] == 2  # not kept: asked again

    upstreams.stream_events = 4  # about 1 KB: kept
    small = await streamed("small")
    hit = await streamed("small")
    assert (small[0], hit[0]) == ("miss", "hit") and small[1] == hit[1]
    assert upstreams.calls["good"] == 3


async def test_the_messages_door_ends_a_stream_cut_inside_an_event_with_anthropics_error(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, upstreams: Upstreams
) -> None:
    """The same cut seen through /v1/messages with the official anthropic SDK: the text before
    it, then an error the SDK raises (an ``error`` event in Anthropic's shape), not a parse
    failure."""
    client, _ = await gateway(aiohttp_server, aiohttp_client, upstreams)
    sdk = anthropic.AsyncAnthropic(base_url=str(client.make_url("")), api_key="sk-test", max_retries=0)
    got: list[str] = []
    with pytest.raises(anthropic.APIError, match="good"):
        async with sdk.messages.stream(
            model="cut", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for text in stream.text_stream:
                got.append(text)
    assert got == ["first"]
