"""An upload's form as each attempt sends it (h-uploadcopy): the held file's own bytes, never a
copy per attempt, and those pieces written whole and in order by the real transport."""

from __future__ import annotations

import hashlib

from aiohttp import web

from gateway.policy.model import AzureProvider
from gateway.providers.azure import AzureOpenAIAdapter
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OpenAIAdapter
from gateway.providers.transport import AiohttpTransport
from gateway.wire.audio import audio_body
from gateway.wire.forms import FormBody, FormFile, UploadForm
from gateway.wire.images import image_body
from gateway.wire.requests import Endpoint
from tests.unit.providers.loopback import Server, transport

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4096  # 1 MiB and a little: several writes
MASK = b"\x89PNG\r\n\x1a\n" + b"m" * 1000
EDIT = UploadForm(
    (("prompt", "a hat"), ("model", "group"), ("n", "2")),
    (FormFile("image[]", "a.png", "image/png", IMAGE), FormFile("mask", "m.png", "image/png", MASK)),
)


def held(request: UpstreamRequest) -> list[bytes]:
    """The pieces of ``request``'s body that are the form's own file objects, by identity."""
    assert isinstance(request.body, FormBody), type(request.body)
    return [part for part in request.body.parts if part is IMAGE or part is MASK]


def test_every_attempt_sends_the_held_files_themselves_not_a_copy() -> None:
    openai = OpenAIAdapter()
    azure = AzureOpenAIAdapter(AzureProvider(kind="azure", base_url="https://r.test"))
    first = openai.build_request(Endpoint.IMAGE_EDITS, image_body(EDIT), "gpt-image-1")
    second = openai.build_request(Endpoint.IMAGE_EDITS, image_body(EDIT), "gpt-image-1.5")
    third = azure.build_request(Endpoint.IMAGE_EDITS, image_body(EDIT), "edits-deployment")
    for request in (first, second, third):
        assert held(request) == [IMAGE, MASK]  # the same objects, in the form's order
        assert isinstance(request.body, FormBody)
        whole = bytes(request.body)
        assert request.body.size == len(whole)
        assert request.headers == {"Content-Type": request.body.content_type}
    # Only the model differs between two deployments' forms (the boundary is each attempt's own).
    assert b'name="model"\r\n\r\ngpt-image-1.5\r\n' in bytes(second.body)  # type: ignore[arg-type]
    assert b'name="model"' not in bytes(third.body)  # type: ignore[arg-type]  (Azure: in the path)


async def test_the_transport_writes_the_pieces_whole_and_again_on_a_second_send(
    aiohttp_server: Server,
) -> None:
    received: list[tuple[str, str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        raw = await request.read()
        received.append((request.headers["Content-Type"], request.headers["Content-Length"], sha(raw)))
        return web.json_response({"data": []})

    app = web.Application(client_max_size=8 << 20)  # (the default 1 MiB is below the form)
    app.router.add_post("/{tail:.*}", answer)
    t: AiohttpTransport = transport(str((await aiohttp_server(app)).make_url("/v1")))
    await t.start()
    try:
        request = OpenAIAdapter().build_request(
            Endpoint.TRANSCRIPTIONS,
            audio_body(UploadForm((("model", "g"),), EDIT.files[:1]), None),
            "whisper-1",
        )
        for _ in range(2):  # failover to the same kind sends one request object's pieces twice
            response = await t.send(request)
            assert response.status == 200
            response.close()
    finally:
        await t.close()
    assert isinstance(request.body, FormBody)
    sent = bytes(request.body)
    assert sent.count(IMAGE) == 1 and sent.endswith(b"--\r\n")
    assert received == [(request.body.content_type, str(len(sent)), sha(sent))] * 2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
