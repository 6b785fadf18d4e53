"""Streamed image generations and edits (h-imagestream): ``stream: true`` on
``/v1/images/generations`` and ``/v1/images/edits`` through the whole gateway in keys mode, over
real HTTP on loopback, with the official openai SDK as the client and the fake OpenAI provider
(in process, on its own ports) as the upstream. The provider's events (``image_generation.
partial_image`` / ``image_edit.partial_image``, then ``*.completed`` with the usage) reach the
client in order and byte for byte, the usage is charged, a provider failing before the first byte
is failed over, one cut after it ends with OpenAI's error event, the refusals of what OpenAI does
not stream are relayed in the envelope, and an event of megabytes is relayed whole. Before, every
streamed request here was the gateway's 400 ("this gateway does not relay streamed image
generation").

One gateway and four fakes for the whole module (a module event loop)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.gate import LimitGate
from gateway.policy.loader import load_policy_with_digest
from gateway.settings import Settings
from gateway.testing import fake_media
from gateway.testing.fake_provider import FAKE_STATE, FakeConfig
from gateway.testing.fake_provider import build_app as fake_app
from gateway.testing.images import png

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),  # (create_variation)
]

TOKEN = "admin-token-for-image-stream-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BIG_IMAGE_BYTES = 4_000_000  # a picture whose base64 (5.3 MB) is one event larger than 5 MB
POLICY = """
version: 1
providers:
  broken: {{kind: openai, base_url: "{broken}/v1"}}
  good: {{kind: openai, base_url: "{good}/v1"}}
  cut: {{kind: openai, base_url: "{cut}/v1"}}
  big: {{kind: openai, base_url: "{big}/v1"}}
  azure: {{kind: azure, base_url: "{good}"}}
  claude: {{kind: anthropic, base_url: "{good}/v1"}}
retry: {{backoff_initial_s: 0, backoff_max_s: 0}}
breaker: {{consecutive_failures: 1000}}
models:
  gpt-image:
    strategy: ordered
    deployments:
      - {{provider: broken, model: gpt-image-1, price: {{input_per_mtok: 5, output_per_mtok: 40}}}}
      - {{provider: good, model: gpt-image-1, price: {{input_per_mtok: 5, output_per_mtok: 40}}}}
  priced-image:
    deployments: [{{provider: good, model: gpt-image-1, price: {{input_per_mtok: 1000, per_image: 0.04}}}}]
  cut-image:
    deployments: [{{provider: cut, model: gpt-image-1}}]
  big-image:
    deployments: [{{provider: big, model: gpt-image-1}}]
  azure-image:
    deployments: [{{provider: azure, model: gpt-image-1}}]
  dalle:
    deployments: [{{provider: good, model: dall-e-3}}]
  dalle2:
    deployments: [{{provider: good, model: dall-e-2}}]
  claude-only:
    deployments: [{{provider: claude, model: claude-x}}]
memory: {{enabled: false}}
cache: {{cacheable: always}}
auth:
  store: {store}
  teams: {{art: {{}}}}
"""


@dataclass
class Gateway:
    client: TestClient
    good: TestServer
    broken: TestServer
    cut: TestServer  # drops the connection half way through a stream
    big: TestServer  # pictures of BIG_IMAGE_BYTES
    sdk: openai.AsyncOpenAI

    @property
    def limits(self) -> LimitGate:
        return self.client.app[keys.LIMITS]  # type: ignore[index,no-any-return]

    def sdk_of(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key, base_url=str(self.client.make_url("/v1")), max_retries=0, timeout=30
        )


async def _key(client: TestClient, **limits: object) -> tuple[str, str]:
    resp = await client.post("/admin/keys", json={"team": "art", **limits}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    return str(made["secret"]), str(made["id"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("imagestream")
    good = TestServer(fake_app(FakeConfig(port=0)), host="127.0.0.1")
    broken = TestServer(fake_app(FakeConfig(port=0, error_rate=1.0, error_status=500)), host="127.0.0.1")
    cut = TestServer(fake_app(FakeConfig(port=0, disconnect_rate=1.0)), host="127.0.0.1")
    big = TestServer(fake_app(FakeConfig(port=0, image_bytes=BIG_IMAGE_BYTES)), host="127.0.0.1")
    servers = (good, broken, cut, big)
    for server in servers:
        await server.start_server()
    policy_file = tmp / "policy.yaml"
    root = lambda s: str(s.make_url("")).rstrip("/")  # noqa: E731
    policy_file.write_text(
        POLICY.format(
            broken=root(broken), good=root(good), cut=root(cut), big=root(big), store=tmp / "keys.sqlite3"
        )
    )
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        secret, _ = await _key(client)
        sdk = openai.AsyncOpenAI(
            api_key=secret, base_url=str(client.make_url("/v1")), max_retries=0, timeout=30
        )
        yield Gateway(client, good, broken, cut, big, sdk)
        await sdk.close()
    for server in servers:
        await server.close()


def _stats(server: TestServer) -> dict[str, object]:
    app: web.Application = server.app  # type: ignore[assignment]
    return app[FAKE_STATE].stats()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _usage_row(gw: Gateway, key_id: str) -> dict[str, object]:
    await gw.limits.drain()
    usage = await (await gw.client.get("/admin/usage", headers=ADMIN)).json()
    (row,) = [row for row in usage["data"] if row["key"] == key_id]
    return dict(row)


async def _metric_lines(client: TestClient, needle: str) -> list[str]:
    text = await (await client.get("/metrics")).text()
    return [line for line in text.splitlines() if needle in line and not line.startswith("#")]


async def test_a_streamed_generation_fails_over_relays_every_event_and_is_charged(gw: Gateway) -> None:
    """The SDK's ``images.generate(..., stream=True, partial_images=2)``: the first deployment's
    500 is failed over before any byte went out; the client reads two partial images (indices 0
    and 1) and the completed event in order, the final image's bytes the fake's own, and the
    key's /admin/usage row holds the completed event's tokens at the deployment's token prices."""
    key, key_id = await _key(gw.client, budget_usd=100)
    sdk = gw.sdk_of(key)
    broken_before = int(_stats(gw.broken)["requests"])  # type: ignore[call-overload]
    try:
        stream = await sdk.images.generate(
            model="gpt-image", prompt="a red fox in snow", stream=True, partial_images=2
        )
        events = [event async for event in stream]
    finally:
        await sdk.close()
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [getattr(e, "partial_image_index", None) for e in events] == [0, 1, None]
    assert base64.b64decode(events[0].b64_json) == fake_media.picture("1024x1024", partial=0)
    final = events[-1]
    assert final.type == "image_generation.completed"
    assert _sha(base64.b64decode(final.b64_json)) == _sha(fake_media.picture("1024x1024"))
    assert final.usage.input_tokens == 5 and final.usage.output_tokens == 272
    assert int(_stats(gw.broken)["requests"]) == broken_before + 1  # type: ignore[call-overload]
    assert _stats(gw.good)["last_request"]["body"]["model"] == "gpt-image-1"  # type: ignore[index]
    row = await _usage_row(gw, key_id)
    assert (row["requests"], row["tokens_in"], row["tokens_out"]) == (1, 5, 272), row
    assert row["cost_usd"] == pytest.approx((5 * 5 + 272 * 40) / 1e6), row
    lines = await _metric_lines(gw.client, 'gen_ai_operation_name="image_generation"')
    assert any(
        "gen_ai_client_token_usage_sum" in line and 'gen_ai_token_type="output"' in line for line in lines
    )


async def test_a_streamed_edit_relays_its_events_and_is_charged(gw: Gateway) -> None:
    """The SDK's ``images.edit(..., stream=True)`` (a form): ``image_edit.partial_image`` then
    ``image_edit.completed``, the usage (the prompt's words and the fake's 323 tokens an input
    image) charged."""
    key, key_id = await _key(gw.client, budget_usd=100)
    sdk = gw.sdk_of(key)
    picture = png(32, 32)
    try:
        stream = await sdk.images.edit(
            model="gpt-image",
            image=("cat.png", picture, "image/png"),
            prompt="a hat on the cat",
            stream=True,
            partial_images=1,
        )
        events = [event async for event in stream]
    finally:
        await sdk.close()
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    final = events[-1]
    assert final.type == "image_edit.completed"
    assert _sha(base64.b64decode(final.b64_json)) == _sha(fake_media.picture("1024x1024"))
    seen = _stats(gw.good)["last_request"]["body"]  # type: ignore[index]
    assert seen["fields"]["stream"] == ["true"] and seen["fields"]["partial_images"] == ["1"]
    assert seen["files"][0]["sha256"] == _sha(picture)
    row = await _usage_row(gw, key_id)
    assert (row["tokens_in"], row["tokens_out"]) == (5 + 323, 272), row
    assert row["cost_usd"] == pytest.approx(((5 + 323) * 5 + 272 * 40) / 1e6), row


async def test_a_per_image_price_charges_the_completed_images(gw: Gateway) -> None:
    """A deployment priced ``per_image``: the streamed image costs its price, not its tokens."""
    key, key_id = await _key(gw.client, budget_usd=100)
    sdk = gw.sdk_of(key)
    try:
        stream = await sdk.images.generate(model="priced-image", prompt="a boat", stream=True)
        events = [event async for event in stream]
    finally:
        await sdk.close()
    assert [e.type for e in events] == ["image_generation.completed"]
    row = await _usage_row(gw, key_id)
    assert row["cost_usd"] == pytest.approx(0.04), row


async def test_a_stream_cut_after_its_first_event_ends_with_an_error_event(gw: Gateway) -> None:
    """The provider drops the connection after the first of three events: the client has that
    event, then OpenAI's error event (the SDK raises ``APIError``), never a stream that looks
    whole; counted in ``gateway_stream_errors_total``."""
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        stream = await gw.sdk.images.generate(
            model="cut-image", prompt="a red fox", stream=True, partial_images=2
        )
        async for event in stream:
            received.append(event.type)
    assert received == ["image_generation.partial_image"]
    assert "interrupted" in caught.value.message.lower() or "stream" in caught.value.message.lower()
    lines = await _metric_lines(gw.client, "gateway_stream_errors_total")
    assert any(
        'endpoint="/v1/images/generations"' in line and 'reason="upstream_closed"' in line for line in lines
    ), lines


async def test_what_openai_does_not_stream_is_refused_in_the_envelope(gw: Gateway) -> None:
    """dall-e-3 and dall-e-2 with ``stream`` (the provider's 400: only the GPT image models
    stream), ``partial_images`` out of 0-3 (the provider's 400), a streamed variation (the
    gateway's own 400) and a streamed call to an Anthropic group (the gateway's 400 naming the
    endpoint): each in OpenAI's envelope, naming its parameter."""
    cases = [
        (gw.sdk.images.generate(model="dalle", prompt="a cat", stream=True), "stream", "GPT image models"),
        (
            gw.sdk.images.edit(model="dalle2", image=("a.png", png(64, 64)), prompt="x", stream=True),
            "stream",
            "GPT image models",
        ),
        (
            gw.sdk.images.generate(model="gpt-image", prompt="a cat", stream=True, partial_images=4),
            "partial_images",
            "between 0 and 3",
        ),
        (
            gw.sdk.post(
                "/images/variations",
                cast_to=object,
                body={"model": "dalle2", "stream": "true"},
                files=[("image", ("a.png", png(64, 64), "image/png"))],
                options={"headers": {"Content-Type": "multipart/form-data"}},
            ),
            "stream",
            "not streamed",
        ),
        (gw.sdk.images.generate(model="claude-only", prompt="a cat", stream=True), "model", "cannot serve"),
    ]
    for call, param, words in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await call
        error = caught.value.body
        assert isinstance(error, dict), error
        assert error["param"] == param and words in str(error["message"]), error
        assert error["type"] == "invalid_request_error"


async def test_a_five_megabyte_partial_image_event_is_relayed_byte_for_byte(gw: Gateway) -> None:
    """A fake whose pictures are 4 MB (each event's base64 over 5 MB, arriving in many reads):
    the gateway's answer is the fake's events, each the same bytes (SHA-256 of each as written),
    and the SDK decodes the final image intact."""
    headers = {"Authorization": f"Bearer {gw.sdk.api_key}"}
    body = {"model": "big-image", "prompt": "a big picture", "stream": True, "partial_images": 1}
    resp = await gw.client.post("/v1/images/generations", json=body, headers=headers)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await resp.read()
    events = [event + b"\n\n" for event in raw.split(b"\n\n") if event]
    assert [len(e) > 5_000_000 for e in events] == [True, True]
    assert [_sha(e) for e in events] == _stats(gw.big)["streamed"]
    sdk_stream = await gw.sdk.images.generate(model="big-image", prompt="a big picture", stream=True)
    (final,) = [event async for event in sdk_stream]
    assert final.type == "image_generation.completed"
    decoded = base64.b64decode(final.b64_json)
    assert len(decoded) == BIG_IMAGE_BYTES
    assert _sha(decoded) == _sha(fake_media.picture("1024x1024", BIG_IMAGE_BYTES))


async def test_a_streamed_generation_at_an_azure_deployment(gw: Gateway) -> None:
    """``kind: azure``: the same events from the deployment's path."""
    stream = await gw.sdk.images.generate(model="azure-image", prompt="a boat", stream=True, partial_images=1)
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    last = _stats(gw.good)["last_request"]
    assert last["path"] == "/openai/deployments/gpt-image-1/images/generations"  # type: ignore[index]


async def test_the_fake_refuses_what_the_real_api_refuses() -> None:
    """The fake's streaming rules, called directly."""
    events = fake_media.images_body(
        {"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 3}
    )
    assert isinstance(events, fake_media.ImageEvents) and len(events.events) == 4
    assert isinstance(fake_media.images_body({"model": "gpt-image-1", "prompt": "x"}), dict)
    for body, param in [
        ({"model": "dall-e-3", "prompt": "x", "stream": True}, "stream"),
        ({"model": "dall-e-2", "prompt": "x", "stream": True}, "stream"),
        ({"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 4}, "partial_images"),
        ({"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": -1}, "partial_images"),
    ]:
        with pytest.raises(fake_media.WireError) as caught:
            fake_media.images_body(body)
        assert caught.value.param == param
    first = events.events[0]
    assert first.startswith(b"event: image_generation.partial_image\ndata: ")
    assert orjson.loads(first.split(b"data: ", 1)[1])["partial_image_index"] == 0
