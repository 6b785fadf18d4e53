"""``POST /v1/images/edits`` and ``/v1/images/variations`` (h-imageedits) through the whole gateway
in keys mode, over real HTTP on loopback, with the official openai SDK as the client and the fake
OpenAI provider (in process, on its own port) as the upstream: the form reaches the provider
intact (files' bytes and names, fields; the model rewritten), its answer relayed (b64_json, url,
usage), failover sends the same form again, a key over its RPM is refused before its form is
read, a group of Anthropic deployments is a 400 naming the endpoint, the per-image price is
charged in /admin/usage. Before, each path was a 404.

One gateway and two fakes for the whole module (a module event loop)."""

from __future__ import annotations

import asyncio
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
from gateway.testing.fake_wire import WireError
from gateway.testing.images import jpeg, png, webp_vp8x

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # (the SDK marks create_variation deprecated: the endpoint is retired at OpenAI, still served
    # by Azure and compatible servers, and by the gateway to those)
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

TOKEN = "admin-token-for-image-edit-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MAX_IMAGE_BYTES = 512 * 1024  # server.max_image_bytes here: a too-large upload stays cheap
POLICY = """
version: 1
providers:
  broken: {{kind: openai, base_url: "{broken}/v1"}}
  good: {{kind: openai, base_url: "{good}/v1"}}
  azure: {{kind: azure, base_url: "{good}"}}
  claude: {{kind: anthropic, base_url: "{good}/v1"}}
retry: {{backoff_initial_s: 0, backoff_max_s: 0}}
breaker: {{consecutive_failures: 1000}}
models:
  gpt-image:
    strategy: ordered
    deployments: [{{provider: broken, model: gpt-image-1}}, {{provider: good, model: gpt-image-1}}]
  dalle:
    strategy: ordered
    deployments: [{{provider: broken, model: dall-e-2}}, {{provider: good, model: dall-e-2}}]
  priced-dalle:
    deployments: [{{provider: good, model: dall-e-2, price: {{input_per_mtok: 1000, per_image: {{"256x256": 0.016, "1024x1024": 0.02}}}}}}]
  azure-dalle:
    deployments: [{{provider: azure, model: dall-e-2}}]
  claude-only:
    deployments: [{{provider: claude, model: claude-x}}]
server: {{max_image_bytes: {max_image}}}
memory: {{enabled: false}}
cache: {{enabled: false}}
auth:
  store: {store}
  teams: {{art: {{}}, other: {{}}}}
"""
SQUARE = png(64, 64)  # a square PNG, as dall-e-2 wants
WIDE = png(128, 64)


@dataclass
class Gateway:
    client: TestClient
    good: TestServer
    broken: TestServer
    sdk: openai.AsyncOpenAI  # a key for every group, no limits

    @property
    def limits(self) -> LimitGate:
        return self.client.app[keys.LIMITS]  # type: ignore[index,no-any-return]

    def sdk_of(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key, base_url=str(self.client.make_url("/v1")), max_retries=0, timeout=10
        )


async def _key(client: TestClient, team: str = "art", **limits: object) -> tuple[str, str]:
    resp = await client.post("/admin/keys", json={"team": team, **limits}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    return str(made["secret"]), str(made["id"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("imageedits")
    good = TestServer(fake_app(FakeConfig(port=0)), host="127.0.0.1")
    broken = TestServer(fake_app(FakeConfig(port=0, error_rate=1.0, error_status=500)), host="127.0.0.1")
    for server in (good, broken):
        await server.start_server()
    policy_file = tmp / "policy.yaml"
    root = lambda s: str(s.make_url("")).rstrip("/")  # noqa: E731
    policy_file.write_text(
        POLICY.format(
            broken=root(broken), good=root(good), store=tmp / "keys.sqlite3", max_image=MAX_IMAGE_BYTES
        )
    )
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        secret, _ = await _key(client)
        sdk = openai.AsyncOpenAI(
            api_key=secret, base_url=str(client.make_url("/v1")), max_retries=0, timeout=10
        )
        yield Gateway(client, good, broken, sdk)
        await sdk.close()
    for server in (good, broken):
        await server.close()


def _stats(server: TestServer) -> dict[str, object]:
    app: web.Application = server.app  # type: ignore[assignment]
    return app[FAKE_STATE].stats()


def _last_form(server: TestServer) -> dict[str, object]:
    last = _stats(server)["last_request"]
    assert isinstance(last, dict)
    return dict(last)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_an_edit_of_one_image_reaches_the_provider_intact_and_its_b64_answer_is_relayed(
    gw: Gateway,
) -> None:
    """The SDK's ``images.edit`` with one image (sent as ``image``) to dall-e-2, failing over
    from a deployment answering 500: both saw the same form (the file's bytes, name and type, the
    fields as sent, the model rewritten to the deployment's), and the answer's base64 images are
    the client's."""
    broken_before = int(_stats(gw.broken)["requests"])  # type: ignore[call-overload]
    answer = await gw.sdk.images.edit(
        model="dalle",
        image=("cat.png", SQUARE, "image/png"),
        prompt="a hat on the cat",
        n=2,
        size="256x256",
        response_format="b64_json",
        user="u-1",
    )
    assert len(answer.data) == 2
    assert base64.b64decode(answer.data[0].b64_json or "").startswith(b"\x89PNG")
    assert int(_stats(gw.broken)["requests"]) == broken_before + 1  # type: ignore[call-overload]
    for server in (gw.broken, gw.good):
        last = _last_form(server)
        assert last["path"] == "/v1/images/edits"
        seen = last["body"]
        assert isinstance(seen, dict)
        assert seen["fields"] == {
            "prompt": ["a hat on the cat"],
            "model": ["dall-e-2"],
            "n": ["2"],
            "size": ["256x256"],
            "response_format": ["b64_json"],
            "user": ["u-1"],
        }
        assert seen["files"] == [
            {
                "name": "image",
                "filename": "cat.png",
                "content_type": "image/png",
                "bytes": len(SQUARE),
                "sha256": _digest(SQUARE),
            }
        ]


async def test_an_edit_of_several_images_and_a_mask_fails_over_with_the_same_form(gw: Gateway) -> None:
    """gpt-image-1 with three images (the SDK sends them as ``image[]``) and a mask: the form
    sent again to the second deployment is the first's, byte for byte in each file; the answer is
    base64 with the model's token usage, which the gateway's token metrics count."""
    images = [
        ("a.png", png(32, 32), "image/png"),
        ("b.jpg", jpeg(40, 30), "image/jpeg"),
        ("c.webp", webp_vp8x(8, 8), "image/webp"),
    ]
    mask = ("mask.png", png(32, 32), "image/png")
    answer = await gw.sdk.images.edit(
        model="gpt-image", image=images, mask=mask, prompt="merge them into one poster", quality="low"
    )
    assert answer.data[0].b64_json and answer.usage is not None
    assert answer.usage.input_tokens == 5 + 3 * 323  # the prompt's words and three input images
    assert answer.usage.input_tokens_details.image_tokens == 3 * 323
    assert answer.usage.output_tokens == 272
    expected = [
        {
            "name": "image[]",
            "filename": name,
            "content_type": kind,
            "bytes": len(data),
            "sha256": _digest(data),
        }
        for name, data, kind in images
    ] + [
        {
            "name": "mask",
            "filename": "mask.png",
            "content_type": "image/png",
            "bytes": len(mask[1]),
            "sha256": _digest(mask[1]),
        }
    ]
    forms = [_last_form(server)["body"] for server in (gw.broken, gw.good)]
    for seen in forms:
        assert isinstance(seen, dict)
        assert seen["files"] == expected
        assert seen["fields"] == {
            "prompt": ["merge them into one poster"],
            "model": ["gpt-image-1"],
            "quality": ["low"],
        }
    text = await (await gw.client.get("/metrics")).text()
    used = [
        line
        for line in text.splitlines()
        if line.startswith("gen_ai_client_token_usage_sum")
        and 'gen_ai_operation_name="image_edit"' in line
        and 'gen_ai_token_type="input"' in line
        and 'provider="good"' in line
        and 'gen_ai_request_model="gpt-image"' in line
    ]
    assert used and float(used[0].split()[-1]) >= 5 + 3 * 323, used


async def test_a_variation_relays_urls_and_the_image(gw: Gateway) -> None:
    answer = await gw.sdk.images.create_variation(
        model="dalle", image=("cat.png", SQUARE), n=3, size="512x512"
    )
    assert [d.url is not None and d.url.startswith("https://images.fake.test/") for d in answer.data] == [
        True
    ] * 3
    last = _last_form(gw.good)
    assert last["path"] == "/v1/images/variations"
    seen = last["body"]
    assert isinstance(seen, dict)
    assert seen["fields"] == {"model": ["dall-e-2"], "n": ["3"], "size": ["512x512"]}
    (file,) = seen["files"]  # type: ignore[misc]
    assert file["name"] == "image" and file["sha256"] == _digest(SQUARE)


async def test_the_providers_refusals_are_relayed_and_the_gateways_own_are_400s(gw: Gateway) -> None:
    """What the real API refuses, the fake refuses and the client gets in the envelope: a
    variation of a GPT image model, a dall-e-2 edit of a JPEG or of a non-square PNG, a size
    dall-e-2 does not make, a streamed dall-e-2 edit. What the gateway reads is its own 400: n out
    of range, no prompt on an edit, no image."""
    cases = [
        (
            gw.sdk.images.create_variation(model="gpt-image", image=("a.png", SQUARE)),
            "model",
            "only dall-e-2",
        ),
        (
            gw.sdk.images.edit(model="dalle", image=("a.jpg", jpeg(64, 64)), prompt="x"),
            "image",
            "must be a PNG",
        ),
        (gw.sdk.images.edit(model="dalle", image=("a.png", WIDE), prompt="x"), "image", "square"),
        (
            gw.sdk.images.edit(model="dalle", image=("a.png", SQUARE), prompt="x", size="1536x1024"),
            "size",
            "Invalid value",
        ),
        (
            gw.sdk.images.edit(model="dalle", image=("a.png", SQUARE), prompt="x", n=11),
            "n",
            "less than or equal to 10",
        ),
        (
            gw.sdk.images.create_variation(model="dalle", image=("a.png", SQUARE), n=0),
            "n",
            "greater than or equal to 1",
        ),
        (
            gw.sdk.images.edit(model="dalle", image=("a.png", SQUARE), prompt=""),
            "prompt",
            "at least 1 character",
        ),
        (  # (h-imagestream: the provider's refusal now; only the GPT image models stream)
            gw.sdk.images.edit(model="dalle", image=("a.png", SQUARE), prompt="x", stream=True),
            "stream",
            "GPT image models",
        ),
    ]
    for call, param, words in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await call
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == param and words in str(error["message"]), error
    headers = {"Authorization": f"Bearer {gw.sdk.api_key}"}
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ndalle\r\n--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b--\r\n'
    resp = await gw.client.post(
        "/v1/images/edits", data=form, headers={**headers, "Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "image"
    resp = await gw.client.post("/v1/images/variations", json={"model": "dalle"}, headers=headers)
    assert resp.status == 415  # a form, not JSON
    # naming the part the form needs: an edit's is 'image' (it said 'file', which edits refuse)
    assert "with a part named 'image'" in (await resp.json())["error"]["message"]


async def test_the_fake_refuses_what_the_real_api_refuses() -> None:
    """The fake's rules, called directly (the gateway refuses some of these itself first)."""

    def form(fields: dict[str, str], *files: fake_media.UploadedFile) -> fake_media.AudioUpload:
        return fake_media.AudioUpload({k: [v] for k, v in fields.items()}, None, b"", files)

    image = fake_media.UploadedFile("image", "a.png", "image/png", SQUARE)
    text = fake_media.UploadedFile("image", "a.txt", "text/plain", b"hello")
    refusals = [
        (lambda: fake_media.image_edit(form({"prompt": "x"})), "image"),
        (lambda: fake_media.image_edit(form({"model": "dall-e-2"}, image)), "prompt"),
        (lambda: fake_media.image_edit(form({"prompt": "x", "model": "gpt-image-1"}, text)), "image"),
        (lambda: fake_media.image_edit(form({"prompt": "x", "n": "11"}, image)), "n"),
        (lambda: fake_media.image_edit(form({"prompt": "x", "size": "100x100"}, image)), "size"),
        (lambda: fake_media.image_edit(form({"prompt": "x", "model": "dall-e-2"}, image, image)), "image"),
        (lambda: fake_media.image_variation(form({})), "image"),
        (lambda: fake_media.image_variation(form({"model": "gpt-image-1"}, image)), "model"),
        (lambda: fake_media.image_variation(form({"n": "0"}, image)), "n"),
    ]
    for refuse, param in refusals:
        with pytest.raises(WireError) as caught:
            refuse()
        assert caught.value.param == param, (param, caught.value)
    many = [fake_media.UploadedFile("image[]", f"{i}.png", "image/png", SQUARE) for i in range(17)]
    with pytest.raises(WireError):
        fake_media.image_edit(form({"prompt": "x", "model": "gpt-image-1"}, *many))
    assert len(fake_media.image_edit(form({"prompt": "x", "model": "gpt-image-1"}, *many[:16]))["data"]) == 1  # type: ignore[arg-type]


async def test_a_key_over_its_rpm_is_refused_before_its_form_is_read(gw: Gateway) -> None:
    """An RPM of 1: one edit is served; the next, a raw upload declaring a form within
    max_image_bytes that sends only its headers, gets its 429 at once (the form never read), with
    Connection: close, and the provider sees nothing more."""
    key, _ = await _key(gw.client, rpm=1)
    sdk = gw.sdk_of(key)
    try:
        raw = await sdk.images.with_raw_response.edit(model="dalle", image=("a.png", SQUARE), prompt="x")
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    finally:
        await sdk.close()
    calls = int(_stats(gw.good)["requests"])  # type: ignore[call-overload]
    url = gw.client.make_url("/v1/images/edits")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"POST /v1/images/edits HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {MAX_IMAGE_BYTES}\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(5):  # (an answer that never comes fails here, not hangs)
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = int(head.split("content-length: ")[1].split("\r\n")[0])
            error = orjson.loads(await reader.readexactly(length))["error"]
    finally:
        writer.close()
    assert head.startswith("http/1.1 429"), head
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests", error
    assert "\r\nconnection: close\r\n" in head
    assert gw.client.app[keys.AUDIO_ROOM].held == 0  # type: ignore[index]  # nothing reserved
    assert int(_stats(gw.good)["requests"]) == calls  # type: ignore[call-overload]


async def test_a_group_of_anthropic_deployments_is_a_400_naming_the_endpoint(gw: Gateway) -> None:
    calls = int(_stats(gw.good)["requests"])  # type: ignore[call-overload]
    for call, path in (
        (gw.sdk.images.edit(model="claude-only", image=("a.png", SQUARE), prompt="x"), "/v1/images/edits"),
        (
            gw.sdk.images.create_variation(model="claude-only", image=("a.png", SQUARE)),
            "/v1/images/variations",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await call
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "unsupported_endpoint" and path in str(error["message"]), error
        assert "claude-only" in str(error["message"])
    assert int(_stats(gw.good)["requests"]) == calls  # type: ignore[call-overload]


async def test_a_form_over_max_image_bytes_is_a_413(gw: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.sdk.images.edit(model="dalle", image=("a.png", SQUARE + bytes(MAX_IMAGE_BYTES)), prompt="x")
    assert caught.value.status_code == 413


async def test_images_edited_are_charged_per_image_in_admin_usage(gw: Gateway) -> None:
    """``per_image`` by size, times the images returned, for an edit and a variation: the key's
    /admin/usage row, not the token estimate at input_per_mtok."""
    key, key_id = await _key(gw.client, budget_usd=100)
    sdk = gw.sdk_of(key)
    try:
        edited = await sdk.images.edit(
            model="priced-dalle", image=("a.png", SQUARE), prompt="x", n=2, size="256x256"
        )
        varied = await sdk.images.create_variation(model="priced-dalle", image=("a.png", SQUARE))
    finally:
        await sdk.close()
    assert len(edited.data) == 2 and len(varied.data) == 1
    await gw.limits.drain()
    usage = await (await gw.client.get("/admin/usage", headers=ADMIN)).json()
    (row,) = [row for row in usage["data"] if row["key"] == key_id]
    assert row["requests"] == 2
    assert row["cost_usd"] == pytest.approx(2 * 0.016 + 0.02), row


async def test_the_azure_door_serves_edits_at_the_deployments_path(gw: Gateway) -> None:
    azure = openai.AsyncAzureOpenAI(
        api_key=str(gw.sdk.api_key),
        azure_endpoint=str(gw.client.make_url("")).rstrip("/"),
        api_version="2024-10-21",
        max_retries=0,
    )
    try:
        answer = await azure.images.edit(model="azure-dalle", image=("a.png", SQUARE), prompt="x")
    finally:
        await azure.close()
    assert answer.data[0].url
    last = _last_form(gw.good)
    assert str(last["path"]).startswith("/openai/deployments/dall-e-2/images/edits")
    seen = last["body"]
    assert isinstance(seen, dict) and seen["fields"]["model"] == [
        "dall-e-2"
    ]  # (the path's, as the fake reads it)


@pytest.mark.parametrize(
    ("path", "file_field"),
    [
        ("/v1/images/edits", "image"),
        ("/v1/images/variations", "image"),
        ("/v1/audio/transcriptions", "file"),
        ("/v1/audio/translations", "file"),
    ],
)
async def test_a_form_without_a_model_is_told_the_model_is_missing(
    gw: Gateway, path: str, file_field: str
) -> None:
    """A form without a ``model`` field (or with ``model[]`` only) gets the JSON doors' words,
    ``Missing required parameter: 'model'`` (h-probe6; before, the form's missing model was an
    empty one: "String should have at least 1 character", as if the client had sent ``""``)."""
    headers = {"Authorization": f"Bearer {gw.sdk.api_key}", "Content-Type": "multipart/form-data; boundary=b"}
    file_part = (
        (
            f'--b\r\nContent-Disposition: form-data; name="{file_field}"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + SQUARE
        + b"\r\n"
    )
    prompt = b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
    for model in (b"", b'--b\r\nContent-Disposition: form-data; name="model[]"\r\n\r\ndalle\r\n'):
        resp = await gw.client.post(path, data=model + file_part + prompt + b"--b--\r\n", headers=headers)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["param"] == "model" and error["message"] == "Missing required parameter: 'model'.", error


async def test_a_form_field_named_as_a_file_ids_path_needs_provider_files(gw: Gateway) -> None:
    """OpenAI's image edits take ``images[].file_id`` and ``mask.file_id`` (as JSON): a form field
    spelled as that path (``mask[file_id]``) is refused for a key without ``provider_files``
    before any provider sees it, and passed on for a key allowed (h-probe6; before, passed on
    for every key, to be read with the organisation's key if the provider reads it so)."""
    refused, _ = await _key(gw.client)
    allowed, _ = await _key(gw.client, provider_files=True)
    sent_before = _stats(gw.good)["requests"]
    for secret, name in (
        (refused, "mask[file_id]"),
        (refused, "images[0][File_Id]"),
        (allowed, "mask[file_id]"),
    ):
        form = (
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ndalle\r\n'
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
            b'--b\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\nfile-abc123\r\n'
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + SQUARE + b"\r\n--b--\r\n"
        )
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "multipart/form-data; boundary=b"}
        resp = await gw.client.post("/v1/images/edits", data=form, headers=headers)
        error = (await resp.json()).get("error") if resp.status != 200 else None
        if secret == refused:
            assert resp.status == 400 and error is not None, error
            assert error["code"] == "provider_file_not_allowed" and error["param"] == name, error
            assert _stats(gw.good)["requests"] == sent_before  # no provider saw it
        else:
            assert error is None or error.get("code") != "provider_file_not_allowed", error
