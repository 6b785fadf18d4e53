"""A media answer that is a provider's failure although its status is 2xx: a transcription's,
translation's or speech's ``{"error": {...}}`` with a 200, or a JSON transcription that is no
JSON (an HTML page), fails over and is a 502 when nothing serves, as chat's, images' and
moderations' are; it was relayed as a 200 (the SDK read ``text=None``, wrote the error into the
audio file, or raised a bare ``JSONDecodeError``; an outside probe). Through the gateway in
process, the official SDK as the client, a real fake provider behind the healthy deployments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import load_policy_with_digest
from gateway.settings import Settings
from gateway.testing.fake_provider import FakeConfig
from gateway.testing.fake_provider import build_app as fake_app

AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 8
ERROR = b'{"error": {"message": "The model crashed", "type": "server_error"}}'

POLICY = """
version: 1
auth: {{mode: open}}
providers:
  errs: {{kind: openai, base_url: "{errs}/v1"}}
  html: {{kind: openai, base_url: "{html}/v1"}}
  brace: {{kind: openai, base_url: "{brace}/v1"}}
  good: {{kind: openai, base_url: "{good}/v1"}}
retry: {{backoff_initial_s: 0, backoff_max_s: 0}}
breaker: {{consecutive_failures: 1000}}
memory: {{enabled: false}}
models:
  whisper:
    strategy: ordered
    deployments: [{{provider: errs, model: whisper-1}}, {{provider: good, model: whisper-1}}]
  whisper-errs: {{deployments: [{{provider: errs, model: whisper-1}}]}}
  whisper-html: {{deployments: [{{provider: html, model: whisper-1}}]}}
  whisper-brace: {{deployments: [{{provider: brace, model: whisper-1}}]}}
  tts:
    strategy: ordered
    deployments: [{{provider: errs, model: tts-1}}, {{provider: good, model: tts-1}}]
  tts-errs: {{deployments: [{{provider: errs, model: tts-1}}]}}
"""


def upstream(body: bytes, content_type: str) -> web.Application:
    """A provider that answers every audio call 200 with ``body``."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/audio/{what}", answer)
    return app


@dataclass
class Stack:
    sdk: openai.AsyncOpenAI


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("media-errors")
    servers = {
        "errs": TestServer(upstream(ERROR, "application/json"), host="127.0.0.1"),
        "html": TestServer(
            upstream(b"<html><body>502 Bad Gateway</body></html>", "application/json"), host="127.0.0.1"
        ),
        "brace": TestServer(upstream(b"{laughs} and then the talk began.", "text/plain"), host="127.0.0.1"),
        "good": TestServer(fake_app(FakeConfig(port=0)), host="127.0.0.1"),
    }
    for server in servers.values():
        await server.start_server()
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(POLICY.format(**{k: str(s.make_url("")).rstrip("/") for k, s in servers.items()}))
    settings = Settings(access_log=False, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        sdk = openai.AsyncOpenAI(api_key="k", base_url=str(client.make_url("/v1")), max_retries=0, timeout=10)
        yield Stack(sdk)
        await sdk.close()
    for server in servers.values():
        await server.close()


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # (translations, in the SDK)
@pytest.mark.parametrize("task", ["transcriptions", "translations"])
async def test_a_2xx_error_fails_over_to_the_next_deployment(stack: Stack, task: str) -> None:
    create = getattr(stack.sdk.audio, task).with_raw_response.create
    raw = await create(model="whisper", file=("a.mp3", AUDIO, "audio/mpeg"))
    assert raw.headers["x-gateway-attempts"] == "2" and raw.headers["x-gateway-provider"] == "good"
    assert raw.parse().text.startswith("Fake")


@pytest.mark.parametrize(
    ("model", "words"), [("whisper-errs", "The model crashed"), ("whisper-html", "not valid JSON")]
)
async def test_a_2xx_failure_with_nothing_else_to_serve_is_a_502(
    stack: Stack, model: str, words: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await stack.sdk.audio.transcriptions.create(model=model, file=("a.mp3", AUDIO, "audio/mpeg"))
    assert caught.value.status_code == 502 and words in caught.value.message


async def test_a_text_transcript_opening_with_a_brace_is_the_answer(stack: Stack) -> None:
    text = await stack.sdk.audio.transcriptions.create(
        model="whisper-brace", file=("a.mp3", AUDIO, "audio/mpeg"), response_format="text"
    )
    assert text == "{laughs} and then the talk began."


async def test_speech_answered_with_a_2xx_error_fails_over_or_is_a_502(stack: Stack) -> None:
    async with stack.sdk.audio.speech.with_streaming_response.create(
        model="tts", input="Hello there.", voice="alloy", response_format="wav"
    ) as response:
        assert response.headers["x-gateway-provider"] == "good"
        audio = b"".join([chunk async for chunk in response.iter_bytes()])
    assert audio.startswith(b"RIFF")
    with pytest.raises(openai.APIStatusError) as caught:
        await stack.sdk.audio.speech.create(model="tts-errs", input="Hello.", voice="alloy")
    assert caught.value.status_code == 502 and "The model crashed" in caught.value.message
