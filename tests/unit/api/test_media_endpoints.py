"""``POST /v1/moderations``, ``/v1/images/generations`` and ``/v1/audio/speech`` (h-doors) through
the whole gateway, over real HTTP on loopback, with the official openai SDK as the client and the
fake OpenAI provider (in process, on its own port) as the upstream: keys and their models, failover
(the group's first deployment answers 500, the second serves), the fake's validation (the real
API's refusals relayed in OpenAI's envelope), a group of Anthropic deployments refused with a 400
naming the endpoint and the group, never cached. Before, each path was a 404.

One gateway and two fakes for the whole module (a module event loop), so each test is a few
requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import audio_tokens
from gateway.errors import UnsupportedByProvider
from gateway.policy.loader import load_policy_with_digest
from gateway.policy.model import AnthropicProvider, AzureProvider, GeminiProvider
from gateway.providers.registry import adapter_for
from gateway.settings import Settings
from gateway.testing import fake_media
from gateway.testing.fake_provider import FAKE_STATE, FakeConfig
from gateway.testing.fake_provider import build_app as fake_app
from gateway.wire.forms import FORM, FormFile, UploadForm
from gateway.wire.requests import FORM_ENDPOINTS, Endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "admin-token-for-media-tests"
MAX_AUDIO_BYTES = 256 * 1024  # server.max_audio_bytes here: a too-large upload stays cheap
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  broken: {{kind: openai, base_url: "{broken}/v1"}}
  good: {{kind: openai, base_url: "{good}/v1"}}
  azure: {{kind: azure, base_url: "{good}"}}
  claude: {{kind: anthropic, base_url: "{good}/v1"}}
  cut: {{kind: openai, base_url: "{cut}/v1"}}
retry: {{backoff_initial_s: 0, backoff_max_s: 0}}
breaker: {{consecutive_failures: 1000}}
models:
  omni-moderation-latest:
    deployments: [{{provider: good, model: omni-moderation-latest}}]
  mod:
    strategy: ordered
    deployments: [{{provider: broken, model: omni-moderation-latest}}, {{provider: good, model: omni-moderation-latest}}]
  mod-azure:
    deployments: [{{provider: azure, model: omni-moderation-latest}}]
  dalle:
    strategy: ordered
    deployments: [{{provider: broken, model: dall-e-3}}, {{provider: good, model: dall-e-3}}]
  gpt-image:
    deployments: [{{provider: good, model: gpt-image-1}}]
  azure-image:
    deployments: [{{provider: azure, model: dall-e-3}}]
  mixed-image:
    strategy: ordered
    deployments: [{{provider: claude, model: claude-x}}, {{provider: good, model: dall-e-2}}]
  tts:
    strategy: ordered
    deployments: [{{provider: broken, model: tts-1}}, {{provider: good, model: tts-1}}]
  azure-tts:
    deployments: [{{provider: azure, model: tts-1}}]
  mini-tts:
    deployments: [{{provider: good, model: gpt-4o-mini-tts, price: {{input_per_mtok: 60, output_per_mtok: 0}}}}]
  cut-tts:
    deployments: [{{provider: cut, model: tts-1}}]
  priced-image:  # per-unit prices (h-mediaprice), token prices beside them that must not count
    deployments: [{{provider: good, model: dall-e-2, price: {{input_per_mtok: 1000, output_per_mtok: 1000, per_image: {{"256x256": 0.016, "1024x1024": 0.02}}}}}}]
  priced-tts:
    deployments: [{{provider: good, model: tts-1, price: {{input_per_mtok: 1000, per_mchar_input: 15}}}}]
  priced-cut-tts:
    deployments: [{{provider: cut, model: tts-1, price: {{input_per_mtok: 1000, per_mchar_input: 15}}}}]
  priced-whisper:
    deployments: [{{provider: good, model: whisper-1, price: {{input_per_mtok: 1000, per_mchar_input: 15, per_minute_audio: 0.006}}}}]
  claude-only:
    deployments: [{{provider: claude, model: claude-x}}]
  claude-or-whisper:  # Anthropic deployments; a rule sends "audio"-tagged requests to whisper
    deployments: [{{provider: claude, model: claude-x}}]
    rules: [{{when: {{tags: [audio]}}, use: whisper}}]
  whisper:
    strategy: ordered
    deployments: [{{provider: broken, model: whisper-1}}, {{provider: good, model: whisper-1}}]
  gpt-transcribe:
    deployments: [{{provider: good, model: gpt-4o-transcribe}}]
  azure-whisper:
    deployments: [{{provider: azure, model: whisper-1}}]
server: {{max_audio_bytes: {max_audio}, max_audio_in_flight_bytes: {in_flight}}}
memory: {{enabled: false}}
cache: {{cacheable: always}}
auth:
  store: {store}
  teams: {{media: {{}}, other: {{}}, third: {{}}}}
"""


@dataclass
class Gateway:
    client: TestClient
    good: TestServer
    broken: TestServer
    cut: TestServer  # drops the connection half way through an answer
    sdk: openai.AsyncOpenAI  # a key for every group
    narrow: openai.AsyncOpenAI  # a key for "mod" only


async def _key(
    client: TestClient, models: list[str] | None, tpm: int | None = None, team: str = "media"
) -> str:
    return (await _key_and_id(client, models, tpm=tpm, team=team))[0]


async def _key_and_id(client: TestClient, models: list[str] | None, **limits: object) -> tuple[str, str]:
    body: dict[str, object] = {"team": "media", **{k: v for k, v in limits.items() if v is not None}}
    if models is not None:
        body["models"] = models
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    return str(made["secret"]), str(made["id"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("media")
    good = TestServer(fake_app(FakeConfig(port=0)), host="127.0.0.1")
    broken = TestServer(fake_app(FakeConfig(port=0, error_rate=1.0, error_status=500)), host="127.0.0.1")
    cut = TestServer(fake_app(FakeConfig(port=0, disconnect_rate=1.0)), host="127.0.0.1")
    for server in (good, broken, cut):
        await server.start_server()
    policy_file = tmp / "policy.yaml"
    root = lambda s: str(s.make_url("")).rstrip("/")  # noqa: E731
    policy_file.write_text(
        POLICY.format(
            broken=root(broken),
            good=root(good),
            cut=root(cut),
            store=tmp / "keys.sqlite3",
            max_audio=MAX_AUDIO_BYTES,
            in_flight=2 * MAX_AUDIO_BYTES,
        )
    )
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        base = str(client.make_url("/v1"))
        every = await _key(client, None)
        narrow = await _key(client, ["mod"])
        sdk = openai.AsyncOpenAI(api_key=every, base_url=base, max_retries=0, timeout=10)
        narrow_sdk = openai.AsyncOpenAI(api_key=narrow, base_url=base, max_retries=0, timeout=10)
        yield Gateway(client, good, broken, cut, sdk, narrow_sdk)
        await sdk.close()
        await narrow_sdk.close()
    for server in (good, broken, cut):
        await server.close()


def _seen(server: TestServer) -> dict[str, object]:
    app: web.Application = server.app  # type: ignore[assignment]
    return app[FAKE_STATE].stats()


async def _metric_lines(client: TestClient, needle: str) -> list[str]:
    text = await (await client.get("/metrics")).text()
    return [line for line in text.splitlines() if needle in line and not line.startswith("#")]


# ----- moderations


async def test_moderations_through_failover(gw: Gateway) -> None:
    result = await gw.sdk.moderations.create(model="mod", input=["a calm day", "I will kill it"])
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.violence is True
    assert result.model == "omni-moderation-latest"  # the deployment's model, as the fake names it
    assert _seen(gw.good)["last_request"]["path"] == "/v1/moderations"  # type: ignore[index]
    lines = await _metric_lines(gw.client, 'endpoint="/v1/moderations"')
    assert any("gateway_requests_total" in line and 'status_code="200"' in line for line in lines), lines


async def test_moderations_without_a_model_use_openais_default_group(gw: Gateway) -> None:
    raw = await gw.sdk.moderations.with_raw_response.create(input="hello")
    assert raw.parse().results[0].flagged is False
    assert raw.headers["x-gateway-cache"].startswith("bypass")  # never cached, even with cacheable: always


async def test_moderations_multi_modal_input(gw: Gateway) -> None:
    result = await gw.sdk.moderations.create(
        model="mod",
        input=[
            {"type": "text", "text": "murder"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        ],
    )
    assert len(result.results) == 1 and result.results[0].flagged


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mod"}, "input"),
        ({"model": "mod", "input": []}, "input"),
        ({"model": "mod", "input": 3}, "input"),
    ],
)
async def test_moderations_bad_input_is_a_400_in_the_envelope(
    gw: Gateway, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.post("/moderations", cast_to=object, body=body)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error"


async def test_a_key_without_the_group_gets_404(gw: Gateway) -> None:
    assert (await gw.narrow.moderations.create(model="mod", input="x")).results
    with pytest.raises(openai.NotFoundError):
        await gw.narrow.moderations.create(model="omni-moderation-latest", input="x")
    with pytest.raises(openai.NotFoundError):
        await gw.narrow.images.generate(model="dalle", prompt="a cat")
    with pytest.raises(openai.NotFoundError):
        await gw.narrow.audio.speech.create(model="tts", input="hi", voice="alloy")


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("claude-only", "moderations"),
        ("claude-only", "images/generations"),
        ("claude-only", "audio/speech"),
        ("mod-azure", "moderations"),
    ],
)
async def test_a_group_without_an_openai_deployment_is_a_400_naming_it(
    gw: Gateway, model: str, path: str
) -> None:
    body = {"model": model, "input": "x", "prompt": "x", "voice": "alloy"}
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.post(f"/{path}", cast_to=object, body=body)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_endpoint", error
    assert f"'{model}'" in error["message"] and f"/v1/{path}" in error["message"], error


async def test_a_keys_tpm_reserves_what_these_endpoints_ask_and_says_what_to_lower(gw: Gateway) -> None:
    """(h-probe) The TPM reservation read chat's ``max_tokens`` from an images body (images have
    none): ``max_tokens: 1`` reserved 10 images at 12 tokens, a negative one gave tokens back
    (and a DALL-E call, charged at its estimate, cost nothing against a budget); a moderation's
    text in input objects was not counted (1 token for 5,000 characters). The refusal told
    every endpoint to lower max_tokens."""
    sdk = openai.AsyncOpenAI(
        api_key=await _key(gw.client, None, tpm=1000), base_url=gw.sdk.base_url, max_retries=0
    )
    raw = await sdk.images.with_raw_response.generate(
        model="gpt-image", prompt="a cat", extra_body={"max_tokens": -100_000}
    )
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - (5 // 4 + 1 + 256))  # 100998 before
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.images.generate(model="dalle", prompt="a cat", n=10, extra_body={"max_tokens": 1})
    assert "requested 2562" in refused.value.message and "Lower n" in refused.value.message
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.moderations.create(model="mod", input=[{"type": "text", "text": "x" * 5000}])
    assert "requested 1251" in refused.value.message and "Shorten the input" in refused.value.message
    # (h-probe2) a transcription has no max_tokens: it was told to lower them
    await sdk.close()
    sdk = openai.AsyncOpenAI(
        api_key=await _key(gw.client, None, tpm=100), base_url=gw.sdk.base_url, max_retries=0
    )
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.audio.transcriptions.create(model="whisper", file=("a.mp3", bytes(200_000)))
    assert "max_tokens" not in refused.value.message and "shorter audio" in refused.value.message
    await sdk.close()


# ----- images


async def test_images_through_failover(gw: Gateway) -> None:
    before = _seen(gw.broken)["requests"]
    result = await gw.sdk.images.generate(model="dalle", prompt="a red fox", size="1792x1024", quality="hd")
    assert len(result.data) == 1 and result.data[0].url and result.data[0].revised_prompt == "a red fox"
    assert _seen(gw.broken)["requests"] != before  # the first deployment was tried
    lines = await _metric_lines(gw.client, 'endpoint="/v1/images/generations"')
    assert any("gateway_requests_total" in line and 'status_code="200"' in line for line in lines), lines


async def test_gpt_image_answers_base64_and_its_usage_is_counted(gw: Gateway) -> None:
    result = await gw.sdk.images.generate(model="gpt-image", prompt="two cats", n=2, quality="high")
    assert len(result.data) == 2
    assert base64.b64decode(result.data[0].b64_json or "").startswith(b"\x89PNG")
    assert result.usage is not None and result.usage.output_tokens == 544
    lines = await _metric_lines(gw.client, 'gen_ai_operation_name="image_generation"')
    assert any(
        "gen_ai_client_token_usage_sum" in line and 'gen_ai_token_type="output"' in line for line in lines
    )


async def test_images_on_azure_and_in_a_mixed_group(gw: Gateway) -> None:
    azure = await gw.sdk.images.generate(model="azure-image", prompt="a boat")
    assert azure.data[0].url
    last = _seen(gw.good)["last_request"]
    assert last["path"] == "/openai/deployments/dall-e-3/images/generations"  # type: ignore[index]
    mixed = await gw.sdk.images.generate(model="mixed-image", prompt="a boat", size="256x256")
    assert mixed.data[0].url  # the Anthropic deployment refused before any I/O, the next served


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        ("dalle", {"n": 2}, "n"),  # dall-e-3: only n=1
        ("dalle", {"size": "256x256"}, "size"),
        ("dalle", {"quality": "high"}, "quality"),
        ("gpt-image", {"response_format": "url"}, "response_format"),
        ("gpt-image", {"style": "vivid"}, "style"),
        ("gpt-image", {"n": 11}, "n"),  # the gateway's own bound (OpenAI's)
        ("gpt-image", {"prompt": ""}, "prompt"),
        ("gpt-image", {"prompt": None}, "prompt"),
        ("dalle", {"stream": True}, "stream"),  # only the GPT image models stream (h-imagestream)
        ("gpt-image", {"stream": True, "partial_images": 4}, "partial_images"),  # 0-3
    ],
)
async def test_images_bad_input_is_a_400_in_the_envelope(
    gw: Gateway, model: str, extra: dict[str, object], param: str
) -> None:
    body = {"model": model, "prompt": "a cat", **extra}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.post("/images/generations", cast_to=object, body=body)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["type"] == "invalid_request_error"


# ----- speech


async def test_speech_through_failover_relays_the_audio_and_its_type(gw: Gateway) -> None:
    text = "Hello there, this is a longer sentence. " * 20
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"}
    expected = fake_media.speech(body)
    async with gw.sdk.audio.speech.with_streaming_response.create(
        model="tts", input=text, voice="alloy", response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert "x-gateway-cache" in response.headers
        # (h-probe) Relayed as it arrives through a proxy in front too (ingress-nginx buffers a
        # whole answer unless told not to): the SSE answers' headers, but its type.
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        chunks = [chunk async for chunk in response.iter_bytes()]
    audio = b"".join(chunks)
    assert audio.startswith(b"RIFF") and audio == expected.audio
    lines = await _metric_lines(gw.client, 'endpoint="/v1/audio/speech"')
    assert any("gateway_requests_total" in line and 'status_code="200"' in line for line in lines), lines


async def test_speech_streamed_as_events_is_charged_as_speech_as_audio_is(gw: Gateway) -> None:
    """(h-probe) ``stream_format: "sse"`` (gpt-4o-mini-tts; the SDK offers it) relays OpenAI's
    ``speech.audio.delta`` events as bytes. A speech answer reports no usage the gateway reads, so
    a key is charged its estimate (the input's characters / 4, at the input price); but each audio
    event was counted as an output token and taken off that estimate: the same 4,000 characters
    cost $0.045 as events against $0.060 as audio, and nothing once the events outnumbered the
    input's tokens (the output price of a speech deployment being 0)."""
    text = "x" * 4000
    charged = {}
    for stream_format in ("audio", "sse"):
        secret, key_id = await _key_and_id(gw.client, ["mini-tts"], budget_usd=100)
        sdk = openai.AsyncOpenAI(api_key=secret, base_url=gw.sdk.base_url, max_retries=0)
        async with sdk.audio.speech.with_streaming_response.create(
            model="mini-tts", input=text, voice="alloy", stream_format=stream_format
        ) as response:
            body = b"".join([chunk async for chunk in response.iter_bytes()])
        await sdk.close()
        if stream_format == "sse":
            assert response.headers["content-type"] == "text/event-stream"
            assert body.count(b"speech.audio.delta") > 1000 // 4 and b"speech.audio.done" in body
        usage = await (await gw.client.get("/admin/usage", headers=ADMIN)).json()
        (row,) = [row for row in usage["data"] if row["key"] == key_id]
        charged[stream_format] = (row["tokens_in"], row["tokens_out"], row["cost_usd"])
    assert charged["sse"] == charged["audio"] == (1001, 0, round(1001 * 60 / 1e6, 6)), charged


async def _charged(gw: Gateway, key_id: str, group: str, upstream: str) -> tuple[float, float]:
    """(the key's spend in /admin/usage, ``gateway_cost_usd_total`` of ``group``'s deployment)."""
    usage = await (await gw.client.get("/admin/usage", headers=ADMIN)).json()
    (row,) = [row for row in usage["data"] if row["key"] == key_id]
    lines = await _metric_lines(gw.client, f'gateway_cost_usd_total{{model="{group}"')
    (line,) = [line for line in lines if f'upstream_model="{upstream}"' in line] or ["- 0"]
    return row["cost_usd"], float(line.split()[-1])


async def test_per_unit_prices_charge_images_speech_and_minutes_exactly(gw: Gateway) -> None:
    """(h-mediaprice) A deployment's ``per_image``, ``per_mchar_input`` and ``per_minute_audio``
    price DALL-E, tts-1 and whisper-1 calls by what OpenAI bills: n images of their size, the
    input's characters, the seconds the answer reports; the budget and gateway_cost_usd_total
    both count it, and the token price beside it does not. Before: the key was charged the
    token estimate (input characters / 4 at input_per_mtok) and the metric nothing."""
    secret, key_id = await _key_and_id(gw.client, None, budget_usd=100)
    sdk = openai.AsyncOpenAI(api_key=secret, base_url=gw.sdk.base_url, max_retries=0)
    try:
        images = await sdk.images.generate(model="priced-image", prompt="a cat", n=2, size="256x256")
        assert len(images.data) == 2
        assert await _charged(gw, key_id, "priced-image", "dall-e-2") == (0.032, 0.032)
        view = await (await gw.client.get("/admin/models", headers=ADMIN)).json()
        (deployment,) = view["models"]["priced-image"]["deployments"]
        assert deployment["stats"]["cost_usd"] == 0.032  # the deployment's cost counts it too
        assert deployment["price"]["per_image"] == {"256x256": 0.016, "1024x1024": 0.02}
        speech = await sdk.audio.speech.create(model="priced-tts", input="y" * 1000, voice="alloy")
        assert speech.content
        charged = await _charged(gw, key_id, "priced-tts", "tts-1")
        assert charged == (0.047, pytest.approx(0.015)), charged  # 1,000 x $15 a million
        audio = b"ID3\x04\x00" + bytes(150_000)  # 9.4 s as the fake reads it, 10 s reported
        text = await sdk.audio.transcriptions.create(
            model="priced-whisper", file=("talk.mp3", audio), response_format="verbose_json"
        )
        assert text.duration == pytest.approx(9.375, abs=0.001)
        charged = await _charged(gw, key_id, "priced-whisper", "whisper-1")
        assert charged == (0.048, pytest.approx(0.001)), charged  # 10 s at $0.006 a minute
    finally:
        await sdk.close()


async def test_speech_on_azure_and_a_custom_voice(gw: Gateway) -> None:
    answer = await gw.sdk.audio.speech.create(model="azure-tts", input="hi", voice={"id": "voice_1"})
    assert answer.content.startswith(b"ID3")  # mp3 by default
    last = _seen(gw.good)["last_request"]
    assert last["path"] == "/openai/deployments/tts-1/audio/speech"  # type: ignore[index]


async def test_speech_cut_by_the_provider_is_an_incomplete_body_not_a_short_file(gw: Gateway) -> None:
    body = {"model": "cut-tts", "input": "a sentence long enough for several writes " * 10, "voice": "alloy"}
    async with gw.client.post(
        "/v1/audio/speech",
        json=body,
        headers={"Authorization": gw.sdk.api_key and f"Bearer {gw.sdk.api_key}"},
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/mpeg"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    lines = await _metric_lines(gw.client, "gateway_stream_errors_total")
    assert any('endpoint="/v1/audio/speech"' in line for line in lines), lines


async def test_speech_cut_half_way_is_charged_its_characters_at_a_per_character_price(gw: Gateway) -> None:
    """(h-mediaprice) A provider bills speech by its input whether or not the audio arrived
    whole: a stream cut half way is charged its characters, as a whole one is (before: the
    token estimate, 501 tokens at input_per_mtok, and nothing in the metric)."""
    secret, key_id = await _key_and_id(gw.client, ["priced-cut-tts"], budget_usd=100)
    body = {"model": "priced-cut-tts", "input": "z" * 2000, "voice": "alloy"}
    async with gw.client.post(
        "/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {secret}"}
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    charged = await _charged(gw, key_id, "priced-cut-tts", "tts-1")
    assert charged == (0.03, pytest.approx(0.03)), charged  # 2,000 x $15 a million


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": "x" * 4097}, "input"),  # OpenAI's 4,096 characters
        ({"input": ""}, "input"),
        ({"voice": None}, "voice"),
        ({"input": None}, "input"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 9}, "speed"),  # the provider's refusal, relayed
        ({"instructions": "whisper"}, "instructions"),  # not with tts-1
    ],
)
async def test_speech_bad_input_is_a_400_in_the_envelope(
    gw: Gateway, extra: dict[str, object], param: str
) -> None:
    body = {"model": "tts", "input": "hello", "voice": "alloy", **extra}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.post("/audio/speech", cast_to=object, body=body)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["type"] == "invalid_request_error"


async def test_the_azure_openai_client_reaches_images_and_speech(gw: Gateway) -> None:
    azure = openai.AsyncAzureOpenAI(
        api_key=gw.sdk.api_key,
        azure_endpoint=str(gw.client.make_url("")),
        api_version="2024-10-21",
        max_retries=0,
        timeout=10,
    )
    try:
        image = await azure.images.generate(model="gpt-image", prompt="a lamp")
        assert image.data[0].b64_json
        speech = await azure.audio.speech.create(
            model="tts", input="hi", voice="nova", response_format="flac"
        )
        assert speech.content.startswith(b"fLaC")
        text = await azure.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
        assert text.text == _transcript(AUDIO, "whisper-1")  # (the deployment in the path: the group)
        with pytest.raises(openai.NotFoundError) as caught:
            await azure.audio.transcriptions.create(model="no-such-group", file=("a.mp3", AUDIO))
        assert caught.value.body["code"] == "DeploymentNotFound"  # type: ignore[index]
    finally:
        await azure.close()


@pytest.mark.parametrize(
    "endpoint",
    [
        Endpoint.MODERATIONS,
        Endpoint.IMAGES,
        Endpoint.SPEECH,
        Endpoint.TRANSCRIPTIONS,
        Endpoint.TRANSLATIONS,
        Endpoint.IMAGE_EDITS,
        Endpoint.IMAGE_VARIATIONS,
    ],
)
async def test_the_translating_adapters_refuse_before_any_io(endpoint: Endpoint) -> None:
    """Before: the Gemini adapter built a completions request of an images body, the Anthropic
    one raised a KeyError (a 500)."""
    form = UploadForm((("model", "m"),), (FormFile("file", "a.mp3", "audio/mpeg", b"ID3"),))
    body = {"model": "m", "input": "x", "prompt": "x", "voice": "alloy"}
    if endpoint in FORM_ENDPOINTS:
        body[FORM] = form
    gemini = GeminiProvider(kind="gemini", base_url="https://g.test/v1beta")
    claude = AnthropicProvider(kind="anthropic", base_url="https://a.test/v1")
    for config in (gemini, claude):
        with pytest.raises(UnsupportedByProvider):
            adapter_for(config).build_request(endpoint, body, "m")
    azure = adapter_for(AzureProvider(kind="azure", base_url="https://r.test"))
    if endpoint is Endpoint.MODERATIONS:
        with pytest.raises(UnsupportedByProvider):
            azure.build_request(endpoint, body, "d")
    else:
        assert azure.build_request(endpoint, body, "d").path.startswith(
            f"/openai/deployments/d/{endpoint.value}?"
        )


# ----- transcriptions and translations (h-transcribe): multipart uploads

AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 40  # ~10 KB standing for an MP3


def _transcript(data: bytes, model: str, task: str = "transcript") -> str:
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"Fake {task} {digest} of {len(data)} bytes from {model}."


async def test_transcription_through_failover_replays_the_upload(gw: Gateway) -> None:
    before = _seen(gw.broken)["requests"]
    result = await gw.sdk.audio.transcriptions.create(
        model="whisper", file=("talk.mp3", AUDIO, "audio/mpeg"), prompt="A talk.", temperature=0.2
    )
    assert result.text == _transcript(AUDIO, "whisper-1")
    assert _seen(gw.broken)["requests"] != before  # the first deployment was sent the form too
    for server in (gw.broken, gw.good):  # the same form each time, its model the deployment's
        last = _seen(server)["last_request"]
        assert last["path"] == "/v1/audio/transcriptions"  # type: ignore[index]
        seen = last["body"]  # type: ignore[index]
        assert seen["filename"] == "talk.mp3" and seen["bytes"] == len(AUDIO), seen
        assert seen["fields"]["model"] == ["whisper-1"] and seen["fields"]["prompt"] == ["A talk."], seen
    lines = await _metric_lines(gw.client, 'endpoint="/v1/audio/transcriptions"')
    assert any("gateway_requests_total" in line and 'status_code="200"' in line for line in lines), lines


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
async def test_text_answers_are_relayed_with_the_providers_type(gw: Gateway, fmt: str) -> None:
    raw = await gw.sdk.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("a.wav", AUDIO), response_format=fmt
    )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["x-gateway-cache"].startswith("bypass")  # never cached
    text = raw.parse()
    assert isinstance(text, str) and _transcript(AUDIO, "whisper-1") in text
    assert text.startswith({"text": "Fake", "srt": "1\n00:00:00,000 --> ", "vtt": "WEBVTT"}[fmt])


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # (translations, in the SDK)
async def test_translation_and_verbose_json_with_word_timestamps(gw: Gateway) -> None:
    translated = await gw.sdk.audio.translations.create(model="whisper", file=("a.ogg", AUDIO))
    assert translated.text == _transcript(AUDIO, "whisper-1", "translation")
    assert _seen(gw.good)["last_request"]["path"] == "/v1/audio/translations"  # type: ignore[index]
    verbose = await gw.sdk.audio.transcriptions.create(
        model="whisper",
        file=("a.m4a", AUDIO),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
    )
    assert verbose.words and verbose.segments and verbose.text == _transcript(AUDIO, "whisper-1")
    fields = _seen(gw.good)["last_request"]["body"]["fields"]  # type: ignore[index]
    assert fields["timestamp_granularities[]"] == ["word", "segment"], fields  # repeats kept


async def test_gpt_4o_transcribe_streams_its_events_and_refuses_other_formats(gw: Gateway) -> None:
    stream = await gw.sdk.audio.transcriptions.create(
        model="gpt-transcribe", file=("a.webm", AUDIO), stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "transcript.text.done"
    expected = _transcript(AUDIO, "gpt-4o-transcribe")
    assert events[-1].text == expected
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == expected
    # The usage of the done event is counted (audio tokens, 10 a second of the fake's reading)
    assert await _token_sums(gw.client, "gpt-transcribe") == {"input": 6.0, "output": 8.0}
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.audio.transcriptions.create(
            model="gpt-transcribe", file=("a.mp3", AUDIO), response_format="srt"
        )
    assert caught.value.body["param"] == "response_format", caught.value.body  # type: ignore[index]


async def test_azure_deployment_gets_the_form_at_its_path(gw: Gateway) -> None:
    result = await gw.sdk.audio.transcriptions.create(model="azure-whisper", file=("a.flac", AUDIO))
    assert result.text == _transcript(AUDIO, "whisper-1")
    last = _seen(gw.good)["last_request"]
    assert last["path"] == "/openai/deployments/whisper-1/audio/transcriptions"  # type: ignore[index]
    # whisper-1 reports its duration (1 s here): counted as 10 input tokens a second
    assert await _token_sums(gw.client, "azure-whisper") == {"input": 10.0}


async def _token_sums(client: TestClient, group: str) -> dict[str, float]:
    lines = await _metric_lines(client, f'gen_ai_request_model="{group}"')
    sums = [line for line in lines if line.startswith("gen_ai_client_token_usage_sum")]
    return {line.split('gen_ai_token_type="')[1].split('"')[0]: float(line.split()[-1]) for line in sums}


async def test_a_too_large_upload_is_a_413_in_the_envelope(gw: Gateway) -> None:
    before = _seen(gw.good)["requests"]
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.sdk.audio.transcriptions.create(
            model="whisper", file=("big.mp3", b"x" * (MAX_AUDIO_BYTES + 1))
        )
    assert caught.value.status_code == 413
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "request_too_large", error
    assert error["type"] == "invalid_request_error"
    assert _seen(gw.good)["requests"] == before  # nothing sent upstream


async def test_a_long_field_is_bounded_by_the_form_not_by_64_kib(gw: Gateway) -> None:
    """A diarization's known_speaker_references[] are audio data URLs (2-10 s: beyond 64 KiB)."""
    reference = "data:audio/wav;base64," + "A" * (100 * 1024)
    result = await gw.sdk.audio.transcriptions.create(
        model="whisper", file=("a.mp3", AUDIO), extra_body={"known_speaker_references": [reference]}
    )
    assert result.text == _transcript(AUDIO, "whisper-1")
    fields = _seen(gw.good)["last_request"]["body"]["fields"]  # type: ignore[index]
    assert fields["known_speaker_references[]"] == [reference]
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.sdk.audio.transcriptions.create(
            model="whisper",
            file=("a.mp3", AUDIO),
            extra_body={"known_speaker_references": [reference, reference, reference]},
        )
    assert caught.value.status_code == 413


def _part(name: str, value: bytes, head: bytes = b"") -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="'
        + name.encode()
        + b'"'
        + head
        + b"\r\n\r\n"
        + value
        + b"\r\n"
    )


async def test_a_form_is_bounded_by_its_bytes_and_its_fields_not_only_its_values(gw: Gateway) -> None:
    """(h-probe2) Only the parts' values counted toward server.max_audio_bytes: a body without a
    declared length (chunked) whose bytes were part headers passed the bound whole (1.6 MB
    here, 6x it), and a form of 16,000 one-byte fields was read (the repeat check went over every
    field before it: 12 s of the loop for 930 KB)."""
    headers = {"Authorization": f"Bearer {gw.sdk.api_key}", "Content-Type": "multipart/form-data; boundary=b"}
    tail = (
        _part("model", b"whisper")
        + _part("file", AUDIO, b'; filename="a.mp3"\r\nContent-Type: audio/mpeg')
        + b"--b--\r\n"
    )
    padding = b"".join(b"\r\nX-Pad-%d: %s" % (i, b"v" * 8000) for i in range(100))  # aiohttp's bounds

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: only the bytes read can tell
        yield _part("prompt", b"hi", padding)
        yield _part("language", b"en", padding)
        yield tail

    before = _seen(gw.good)["requests"]
    resp = await gw.client.post("/v1/audio/transcriptions", data=chunked(), headers=headers)
    assert resp.status == 413, await resp.text()
    assert (await resp.json())["error"]["code"] == "request_too_large"
    many = b"".join(_part(f"f{i}", b"v") for i in range(1001)) + tail
    resp = await gw.client.post("/v1/audio/transcriptions", data=many, headers=headers)
    assert resp.status == 400, await resp.text()
    assert "1000 fields" in (await resp.json())["error"]["message"]
    assert _seen(gw.good)["requests"] == before


async def _held(gw: Gateway, size: int) -> None:
    """Wait until the gateway holds ``size`` bytes of forms (a condition polled, not a guess)."""
    room = gw.client.app[keys.AUDIO_ROOM]  # type: ignore[index]
    async with asyncio.timeout(5):
        while room.held != size:
            await asyncio.sleep(0.005)


async def _stalled_upload(
    gw: Gateway, key: str, length: int = MAX_AUDIO_BYTES
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw upload declaring ``length`` bytes that sends its headers and first bytes only."""
    url = gw.client.make_url("/v1/audio/transcriptions")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n"
        "--b\r\n".encode()
    )
    return reader, writer


async def _answer_head(reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
    """The status, headers (lower-cased) and start of the body of an answer on a raw connection."""
    async with asyncio.timeout(5):  # (an answer that never comes fails here, not hangs)
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        body = await reader.read(4096)
    return int(head.split()[1]), head, body


async def test_one_caller_holding_its_share_cannot_starve_another(gw: Gateway) -> None:
    """(h-audioroom) A key's stalled uploads could fill the room (h-probe2: ~11 connections
    trickling at the slowest pace allowed kept every other caller at 503 for most of an hour).
    Now one caller holds at most its share (here one largest form: the room is two): its next
    upload is a 429 uploads_busy naming the share, read nothing of, and another team's key still
    gets in."""
    key = await _key(gw.client, None, team="other")
    first = await _stalled_upload(gw, key)
    await _held(gw, MAX_AUDIO_BYTES)
    reader, writer = await _stalled_upload(gw, key)
    status, head, body = await _answer_head(reader)
    assert status == 429 and "retry-after: 1" in head and "connection: close" in head, head
    error = orjson.loads(body)["error"]
    assert error["code"] == "uploads_busy" and f"({MAX_AUDIO_BYTES} bytes, its share" in error["message"]
    writer.close()
    result = await gw.sdk.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    assert result.text == _transcript(AUDIO, "whisper-1")  # before: 503 uploads_busy
    first[1].close()
    await _held(gw, 0)
    assert gw.client.app[keys.AUDIO_ROOM].by == {}  # type: ignore[index]


async def test_the_keys_of_one_team_share_one_share(gw: Gateway) -> None:
    """(h-uploadgate) The share was per key, so a team with four keys could hold the whole room.
    Now it is per team: a second key of the team holding its share gets the 429 uploads_busy at
    once (before: it was let in, the room then full for every other team), while a key of another
    team is still served."""
    first = await _stalled_upload(gw, await _key(gw.client, None, team="other"))
    await _held(gw, MAX_AUDIO_BYTES)
    sibling = openai.AsyncOpenAI(
        api_key=await _key(gw.client, None, team="other"), base_url=gw.sdk.base_url, max_retries=0
    )
    with pytest.raises(openai.RateLimitError) as caught:
        await sibling.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    assert caught.value.body["code"] == "uploads_busy", caught.value.body  # type: ignore[index]
    assert "its share" in caught.value.message
    assert caught.value.response.headers["connection"] == "close"
    await sibling.close()
    assert gw.client.app[keys.AUDIO_ROOM].by == {"team:other": MAX_AUDIO_BYTES}  # type: ignore[index]
    result = await gw.sdk.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    assert result.text == _transcript(AUDIO, "whisper-1")  # team media: its own share
    first[1].close()
    await _held(gw, 0)


async def test_an_upload_declared_over_the_keys_tpm_is_refused_before_its_body(gw: Gateway) -> None:
    """(h-audioroom) A transcription larger than its key's TPM was refused only once its whole
    form was read. Now its declared length decides it: only the headers are sent, and the 429
    the gate gives after reading comes at once, the connection closed, nothing reserved."""
    key, key_id = await _key_and_id(gw.client, None, tpm=100)
    reader, writer = await _stalled_upload(gw, key, 300_000)
    status, head, body = await _answer_head(reader)
    writer.close()
    assert status == 429 and "connection: close" in head and "x-should-retry: false" in head, head
    error = orjson.loads(body)["error"]
    assert error["code"] == "rate_limit_exceeded" and "shorter audio" in error["message"], error
    assert gw.client.app[keys.AUDIO_ROOM].held == 0  # type: ignore[index]
    # the form that fits is read and admitted as before, its reservation the form's own
    sdk = openai.AsyncOpenAI(api_key=key, base_url=gw.sdk.base_url, max_retries=0)
    raw = await sdk.audio.transcriptions.with_raw_response.create(model="whisper", file=("a.mp3", AUDIO))
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(100 - audio_tokens(len(AUDIO)))
    await sdk.close()
    await gw.client.app[keys.LIMITS].drain()  # type: ignore[index]
    usage = await (await gw.client.get("/admin/usage", headers=ADMIN)).json()
    (row,) = [row for row in usage["data"] if row["key"] == key_id]
    assert row["refusals"] == {"tokens": 1} and row["requests"] == 1, row  # counted as the gate's


async def test_forms_held_at_once_are_bounded_and_the_next_is_a_503_to_retry(gw: Gateway) -> None:
    """(h-probe2) Each form is held whole while it is served, and nothing bounded how many: 20
    uploads of 24 MiB at once took a gateway to 2.4 GB resident. Now the bytes declared by the
    forms in flight are bounded by server.max_audio_in_flight_bytes (here 2 x max_audio_bytes):
    past it, a 503 with Retry-After that the SDKs retry; a slow upload's bytes are freed when it
    ends, however it ends."""
    slow = []
    for team in ("other", "third"):  # two uploads (two teams: each its share), stalled
        slow.append(await _stalled_upload(gw, await _key(gw.client, None, team=team)))
    await _held(gw, 2 * MAX_AUDIO_BYTES)
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.sdk.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["code"] == "uploads_busy", caught.value.body  # type: ignore[index]
    for _, writer in slow:
        writer.close()
    await _held(gw, 0)
    result = await gw.sdk.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    assert result.text == _transcript(AUDIO, "whisper-1")


@pytest.mark.parametrize(
    ("content_type", "body", "param"),
    [
        ("multipart/form-data; boundary=b", b"not a form at all", "file"),
        ("multipart/form-data", b"--b\r\n", "file"),  # no boundary
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--b--\r\n',
            "file",  # no file
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\nabc\r\n--b--\r\n',
            "model",  # no model
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\nabc',
            "file",  # cut before the closing boundary
        ),
        (  # (h-probe2) a field's name not UTF-8: a 500 when the form was encoded for the provider
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
            b'--b\r\nContent-Disposition: form-data; name="pr\xffompt"\r\n\r\nhello\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\nabc\r\n--b--\r\n',
            None,
        ),
    ],
)
async def test_a_malformed_form_is_a_400_in_the_envelope(
    gw: Gateway, content_type: str, body: bytes, param: str | None
) -> None:
    headers = {"Authorization": f"Bearer {gw.sdk.api_key}", "Content-Type": content_type}
    resp = await gw.client.post("/v1/audio/transcriptions", data=body, headers=headers)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


async def test_a_provider_refusal_of_the_file_is_relayed_and_json_is_415(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.audio.transcriptions.create(model="whisper", file=("notes.txt", b"hello"))
    assert caught.value.body["param"] == "file", caught.value.body  # type: ignore[index]
    resp = await gw.client.post(
        "/v1/audio/transcriptions",
        json={"model": "whisper"},
        headers={"Authorization": f"Bearer {gw.sdk.api_key}"},
    )
    assert resp.status == 415 and (await resp.json())["error"]["type"] == "invalid_request_error"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # (translations, in the SDK)
async def test_uploads_need_a_key_for_the_group_and_an_openai_deployment(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError):
        await gw.narrow.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    with pytest.raises(openai.NotFoundError):
        await gw.narrow.audio.translations.create(model="whisper", file=("a.mp3", AUDIO))
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.audio.translations.create(model="claude-only", file=("a.mp3", AUDIO))
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_endpoint", error
    unauthenticated = openai.AsyncOpenAI(api_key="sk-nope", base_url=gw.sdk.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await unauthenticated.audio.transcriptions.create(model="whisper", file=("a.mp3", AUDIO))
    await unauthenticated.close()


async def test_a_group_whose_rule_reaches_an_openai_group_is_served_there(gw: Gateway) -> None:
    """The 400 check looks at the group routing resolved (its rules applied): failover never
    leaves a group, so the resolved group's deployments are all that can serve the call."""
    result = await gw.sdk.audio.transcriptions.create(
        model="claude-or-whisper", file=("a.mp3", AUDIO), extra_headers={"x-gateway-tags": "audio"}
    )
    assert result.text == _transcript(AUDIO, "whisper-1")
    with pytest.raises(openai.BadRequestError) as caught:  # without the tag: its own deployments
        await gw.sdk.audio.transcriptions.create(model="claude-or-whisper", file=("a.mp3", AUDIO))
    assert caught.value.body["code"] == "unsupported_endpoint"  # type: ignore[index]
