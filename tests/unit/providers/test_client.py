"""The provider client: status errors translated by the adapter from scrubbed bytes, so a provider
that echoes its key anywhere cannot put it in an error object, an error body or a stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.errors import GatewayError, UpstreamAccountRefused, UpstreamBadResponse, UpstreamStatusError
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.providers.client import ProviderClient
from gateway.providers.registry import adapter_for
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.wire.requests import Endpoint

KEY = "sk-live-secret-0123456789"
POLICY = """
version: 1
providers:
  p: {kind: KIND, base_url: "http://p.test/v1", api_key_env: P_KEY}
models:
  m: {deployments: [{provider: p, model: x}]}
memory: {enabled: false}
"""
REQUEST = UpstreamRequest("/chat/completions", b"{}", False)


def client(kind: str, answer: MockResponse) -> ProviderClient:
    config = parse_policy(POLICY.replace("KIND", kind)).providers["p"]
    return ProviderClient("p", config, adapter_for(config), KEY, MockTransport(lambda r: answer))


def echoing_error(kind: str) -> MockResponse:
    """An error body carrying the key in every field each format relays."""
    if kind == "anthropic":
        body = {
            "type": "error",
            "error": {"type": f"invalid_request_error {KEY}", "message": f"bad key {KEY}"},
        }
    elif kind == "gemini":
        body = {"error": {"code": 400, "message": f"API key {KEY} invalid", "status": f"INVALID_ARGUMENT {KEY}",
                          "details": [{"reason": KEY}]}}  # fmt: skip
    else:
        body = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": f"t-{KEY}",
                          "param": f"p-{KEY}", "code": f"c-{KEY}"}}  # fmt: skip
    return MockResponse.json(body, status=429, headers={"Retry-After": KEY})


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic", "gemini"])
async def test_a_provider_echoing_its_key_in_every_field_leaks_nothing(kind: str) -> None:
    with pytest.raises(GatewayError) as raised:
        await client(kind, echoing_error(kind)).send(REQUEST)
    error = raised.value
    exposed = [str(error), repr(error.args), error.message, error.body().decode(),
               orjson.dumps(error.envelope()).decode(), repr(error.headers), repr(vars(error))]  # fmt: skip
    assert all(KEY not in text for text in exposed), exposed
    assert "***" in error.message  # scrubbed, not dropped: the message still says what happened


def _runs_of_the_key(text: str, run: int = 16) -> list[str]:
    """Every ``run``-character piece of ``KEY`` that ``text`` holds."""
    return [KEY[i : i + run] for i in range(len(KEY) - run + 1) if KEY[i : i + run] in text]


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic", "gemini"])
async def test_a_provider_quoting_its_key_cut_short_or_masked_in_the_middle_leaks_none_of_it(
    kind: str,
) -> None:
    # h-sec: a server (or a proxy before it) quoting the header it refused, cut at a length limit
    # or with a few characters masked, passed the whole-key scrub: "Bearer sk-live-secret-012345678"
    # reached the client's error with one character of the key left to guess. The prefix OpenAI
    # itself shows (a key's first 8 and last 4 characters) stays: it tells keys apart.
    quoted = (
        f"header 'Authorization: Bearer {KEY[:-1]}' refused; also {KEY[:10]}*****{KEY[15:]}; "
        f"OpenAI shows {KEY[:8]}****{KEY[-4:]}"
    )
    if kind == "anthropic":
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": quoted},
        }
    elif kind == "gemini":
        body = {"error": {"code": 400, "message": quoted, "status": "INVALID_ARGUMENT"}}
    else:
        body = {"error": {"message": quoted, "type": "invalid_request_error", "param": None, "code": None}}
    with pytest.raises(GatewayError) as raised:
        await client(kind, MockResponse.json(body, status=400)).send(REQUEST)
    error = raised.value
    exposed = " ".join([str(error), repr(error.args), error.body().decode(), repr(vars(error))])
    assert _runs_of_the_key(exposed) == [], exposed
    assert (
        f"{KEY[:8]}****{KEY[-4:]}" in error.message and "header 'Authorization: Bearer ***'" in error.message
    )


def test_a_library_message_or_retry_after_quoting_part_of_the_key_is_scrubbed() -> None:
    scrub = client("openai", MockResponse.json({})).scrub
    assert scrub(f"Cannot connect to {KEY[2:20]}.example:443") == "Cannot connect to ***.example:443"
    assert scrub(f"x{KEY}y{KEY[5:]}") == "x***y***"
    assert scrub(f"{KEY[:15]} is fifteen") == f"{KEY[:15]} is fifteen"  # shorter than a run: kept


async def test_stream_bytes_and_json_bodies_are_scrubbed() -> None:
    stream = client("openai", MockResponse.stream([b'data: {"echo": "' + KEY.encode() + b'"}\n\n']))
    response = await stream.send(REQUEST)
    chunks = [chunk async for chunk in stream.chunks(response)]
    assert KEY.encode() not in b"".join(chunks)
    whole = client("openai", MockResponse.json({"echo": KEY}))
    raw, parsed = await whole.read_json(await whole.send(REQUEST))
    assert KEY.encode() not in raw and parsed == {"echo": "***"}


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_is_not_followed_but_failed_over(status: int) -> None:
    answer = MockResponse(status, b"", {"Location": "http://elsewhere.test/steal"})
    with pytest.raises(UpstreamBadResponse) as raised:
        await client("openai", answer).send(REQUEST)
    assert raised.value.retryable and answer.closed


async def test_the_real_transport_never_follows_a_redirect_to_another_origin(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    """aiohttp would strip only Authorization on a cross-origin redirect: x-api-key and the
    prompt would reach the other host. Issue 10 item 8."""
    stolen: list[dict[str, str]] = []

    async def thief(request: web.Request) -> web.Response:
        stolen.append(dict(request.headers))
        return web.json_response({"choices": []})

    other = web.Application()
    other.router.add_post("/{tail:.*}", thief)
    other_server = await aiohttp_server(other)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(str(other_server.make_url("/v1/messages")))

    provider = web.Application()
    provider.router.add_post("/{tail:.*}", redirect)
    provider_server = await aiohttp_server(provider)
    text = POLICY.replace("KIND", "anthropic").replace(
        "http://p.test/v1", str(provider_server.make_url("/v1"))
    )
    config = parse_policy(text).providers["p"]
    client = ProviderClient("p", config, adapter_for(config), KEY)
    await client.start()
    try:
        with pytest.raises(UpstreamBadResponse, match="HTTP 307"):
            await client.send(UpstreamRequest("/messages", b'{"secret prompt": 1}', False))
    finally:
        await client.close()
    assert stolen == []


@pytest.mark.parametrize("placeholder", ["x", "ollama", "EMPTY", "token-abc123"])
async def test_a_placeholder_key_of_a_local_server_does_not_corrupt_answers(
    placeholder: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Local OpenAI-compatible servers take any key; their docs use short placeholders. Scrubbing
    # one would rewrite ordinary text: "index" -> "inde***" for a key "x".
    config = parse_policy(POLICY.replace("KIND", "openai")).providers["p"]
    body = {"data": [{"index": 0, "embedding": [0.5]}], "note": "served by ollama: EMPTY token-abc123"}
    with caplog.at_level("WARNING", logger="gateway.providers"):
        whole = ProviderClient(
            "p", config, adapter_for(config), placeholder, MockTransport(lambda r: MockResponse.json(body))
        )
    raw, parsed = await whole.fetch_json(REQUEST)
    assert parsed == body and b"***" not in raw
    assert [r.getMessage() for r in caplog.records] == [
        "provider key shorter than 16 characters: not scrubbed from provider answers"
    ]
    fields = caplog.records[0].fields  # type: ignore[attr-defined]
    assert fields == {"provider": "p", "key_env": "P_KEY"}  # the key's variable, never the key


async def test_a_real_length_key_is_still_scrubbed_from_whole_answers() -> None:
    whole = client("openai", MockResponse.json({"echo": f"key={KEY}", "index": 1}))
    raw, parsed = await whole.fetch_json(REQUEST)
    assert parsed == {"echo": "key=***", "index": 1} and KEY.encode() not in raw


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        # Gemini: prepaid credit used up, and billing not enabled (ai.google.dev, "API errors").
        ("gemini", 402, {"error": {"code": 402, "message": "You have run out of prepaid credits.",
                                   "status": "RESOURCE_EXHAUSTED"}}),
        ("gemini", 400, {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message":
            "Gemini API free tier is not available in your country. Please enable billing on your project."}}),
        # OpenRouter and other OpenAI-compatible services: 402 when the account has no credit.
        ("openai", 402, {"error": {"message": "Insufficient credits", "code": 402}}),
    ],
)  # fmt: skip
async def test_a_refusal_of_the_gateways_account_fails_over_and_is_not_the_clients(
    kind: str, status: int, body: dict[str, object]
) -> None:
    # Before: a 402 reached the client as a rate limit (Gemini) or as itself, and Gemini's
    # FAILED_PRECONDITION as the client's 400; neither was tried on another deployment.
    with pytest.raises(UpstreamAccountRefused) as raised:
        await client(kind, MockResponse.json(body, status=status)).send(REQUEST)
    error = raised.value
    assert error.retryable and error.counts_against_provider and error.status == 502
    assert error.code == "provider_account_refused" and error.headers.get("x-should-retry") == "false"


# Azure OpenAI's 429 (learn.microsoft.com, "quota"): the status as the code, both wait headers.
AZURE_429 = {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation "
                       "have exceeded call rate limit. Please retry after 1 second."}}  # fmt: skip


@pytest.mark.parametrize("fetch", [False, True])
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "Retry-After": "2"}, 1.5),  # the finer one, as the SDKs read it
        ({"retry-after-ms": "soon", "Retry-After": "2"}, 2.0),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
    ],
)
async def test_a_429_waits_what_retry_after_ms_says_and_azures_code_is_openais(
    headers: dict[str, str], seconds: float, fetch: bool
) -> None:
    answer = MockResponse.json(AZURE_429, status=429, headers=headers)
    azure = client("azure", answer)
    with pytest.raises(UpstreamStatusError) as raised:
        await (azure.fetch_json(REQUEST) if fetch else azure.send(REQUEST))
    error = raised.value
    assert error.retry_after_s == seconds
    assert error.code == "rate_limit_exceeded" and error.envelope()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        (
            "gemini",
            {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                       "message": "* GenerateContentRequest.generation_config.max_output_tokens: too large"}},
        ),
        ("anthropic", {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
async def test_a_translated_400_names_max_completion_tokens_when_the_client_sent_that(
    kind: str, answer: dict[str, object], stream: bool
) -> None:
    """A chat client bounding its answer with ``max_completion_tokens`` was told ``param:
    max_tokens`` by a translating kind's 400 (the translation's own name): a field it never sent."""
    made = client(kind, MockResponse.json(answer, status=400))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    for sent, named in (("max_completion_tokens", "max_completion_tokens"), ("max_tokens", "max_tokens")):
        request = made.adapter.build_request(Endpoint.CHAT, {**body, sent: 100_000_000}, "x")
        with pytest.raises(UpstreamStatusError) as raised:
            if stream:
                await made.send(request)
            else:
                await made.fetch_json(request)
        assert raised.value.param == named and raised.value.envelope()["error"]["param"] == named
