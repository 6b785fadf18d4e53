"""(h-uploadgate) A transcription whose key its limits already refuse (RPM window full, budget
spent) is refused before a byte of its form is read, with the 429 it got after reading it: the
same envelope, code, Retry-After and ``x-ratelimit-*`` headers, plus ``Connection: close``; a key
within its limits is admitted once its form is read, exactly as before, its request counted once.

Over real loopback HTTP, a gateway with its default upload bounds (25 MiB forms), the official
openai SDK and raw sockets as clients, the fake OpenAI provider (in process) counting calls;
each test runs with the in-process limiter and with the Redis limiter (``REDIS_URL``, else a
private ``redis-server``: never a fake)."""

from __future__ import annotations

import asyncio
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
from gateway.auth.gate import UPLOAD_FIELDS_ALLOWANCE, LimitGate, audio_tokens
from gateway.policy.loader import load_policy_with_digest
from gateway.settings import Settings
from gateway.testing.fake_provider import FAKE_STATE, FakeConfig
from gateway.testing.fake_provider import build_app as fake_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "admin-token-for-upload-gate-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BIG = 20 * 1024 * 1024  # the form a refused key declares: 20 MiB, within max_audio_bytes (25 MiB)
AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 40  # ~10 KB standing for an MP3
POLICY = """
version: 1
providers:
  good: {{kind: openai, base_url: "{good}/v1"}}
models:
  whisper:
    deployments: [{{provider: good, model: whisper-1}}]
  priced:  # a dollar a token: one transcription spends a budget of $1
    deployments: [{{provider: good, model: gpt-4o-transcribe, price: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}}}]
memory: {{enabled: false}}
cache: {{enabled: false}}
auth:
  store: {store}
  teams: {{uploads: {{}}}}
"""


@dataclass
class Gateway:
    client: TestClient
    good: TestServer

    @property
    def limits(self) -> LimitGate:
        return self.client.app[keys.LIMITS]  # type: ignore[index,no-any-return]

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=key, base_url=str(self.client.make_url("/v1")), max_retries=0, timeout=30
        )

    def upstream_calls(self) -> int:
        app: web.Application = self.good.app  # type: ignore[assignment]
        return int(app[FAKE_STATE].stats()["requests"])


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["local", "redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    tmp: Path = tmp_path_factory.mktemp("uploadgate")
    good = TestServer(fake_app(FakeConfig(port=0)), host="127.0.0.1")
    await good.start_server()
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(POLICY.format(good=str(good.make_url("")).rstrip("/"), store=tmp / "keys.sqlite3"))
    settings = Settings(
        access_log=False,
        admin_token=TOKEN,
        policy_watch=False,
        policy_path=str(policy_file),
        redis_url=redis_url,
    )
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(settings, policy, {}, policy_path=str(policy_file), policy_digest=digest)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        gateway = Gateway(client, good)
        assert type(gateway.limits.limiter).__name__ == ("RedisLimiter" if redis_url else "LocalLimiter")
        yield gateway
    await good.close()


async def _key(gw: Gateway, **limits: object) -> tuple[str, str]:
    resp = await gw.client.post("/admin/keys", json={"team": "uploads", **limits}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    return str(made["secret"]), str(made["id"])


async def _refused_unread(gw: Gateway, key: str, model: str) -> tuple[str, dict[str, object]]:
    """A raw upload declaring a 20 MiB form that sends its headers only: the answer must come
    before a byte of the body is sent (before the change, none came until the upload's pace
    timeout, and it fails here after 5 s). Returns the answer's head (lower-cased) and error."""
    url = gw.client.make_url("/v1/audio/transcriptions")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {BIG}\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(5):  # (an answer that never comes fails here, not hangs)
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = int(head.split("content-length: ")[1].split("\r\n")[0])
            body = await reader.readexactly(length)
    finally:
        writer.close()
    assert gw.client.app[keys.AUDIO_ROOM].held == 0  # type: ignore[index]  # nothing reserved
    return head, orjson.loads(body)["error"]


def _header(head: str, name: str) -> str:
    return head.split(f"\r\n{name}: ")[1].split("\r\n")[0]


async def _usage_row(gw: Gateway, key_id: str) -> dict[str, object]:
    await gw.limits.drain()
    usage = await (await gw.client.get("/admin/usage", headers=ADMIN)).json()
    (row,) = [row for row in usage["data"] if row["key"] == key_id]
    return dict(row)


async def test_a_key_over_its_rpm_is_refused_before_its_upload_and_counted_once(gw: Gateway) -> None:
    """An RPM of 2: two transcriptions are admitted once each (remaining 1, then 0: a request
    counted early and again once read would have been refused at the second); the third, a
    20 MiB form, gets its 429 before a byte of it is sent (before: only after reading it whole),
    with the RPM's headers and Retry-After, and Connection: close; the SDK sending the whole
    20 MiB gets the same RateLimitError. Nothing of the refused uploads reaches the provider."""
    key, key_id = await _key(gw, rpm=2)
    sdk = gw.sdk(key)
    calls = gw.upstream_calls()
    for remaining in ("1", "0"):
        raw = await sdk.audio.transcriptions.with_raw_response.create(model="whisper", file=("a.mp3", AUDIO))
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert gw.upstream_calls() == calls + 2
    head, error = await _refused_unread(gw, key, "whisper")
    assert head.startswith("http/1.1 429"), head
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests", error
    assert "on requests per min: limit 2" in str(error["message"])
    assert _header(head, "connection") == "close"
    assert _header(head, "x-ratelimit-limit-requests") == "2"
    assert _header(head, "x-ratelimit-remaining-requests") == "0"
    assert 0 < float(_header(head, "retry-after")) <= 60
    with pytest.raises(openai.RateLimitError) as caught:  # the SDK sends its 20 MiB all the same
        await sdk.audio.transcriptions.create(model="whisper", file=("a.mp3", b"ID3" + bytes(BIG - 1024)))
    assert caught.value.body["code"] == "rate_limit_exceeded", caught.value.body  # type: ignore[index]
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.response.headers["connection"] == "close"
    await sdk.close()
    assert gw.upstream_calls() == calls + 2
    row = await _usage_row(gw, key_id)
    assert row["requests"] == 2 and row["refusals"] == {"requests": 2}, row


async def test_a_key_whose_budget_is_spent_is_refused_before_its_upload(gw: Gateway) -> None:
    """A budget of $1 at a dollar a token: one transcription spends it; the next, a 20 MiB form,
    gets its 429 insufficient_quota (x-should-retry: false) before a byte of it is sent."""
    key, key_id = await _key(gw, budget_usd=1.0, budget_period="1d")
    sdk = gw.sdk(key)
    result = await sdk.audio.transcriptions.create(model="priced", file=("a.mp3", AUDIO))
    assert result.text
    await sdk.close()
    await gw.limits.drain()  # its spend written (Redis: settled in a batch)
    calls = gw.upstream_calls()
    head, error = await _refused_unread(gw, key, "priced")
    assert head.startswith("http/1.1 429"), head
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota", error
    assert "budget of $1" in str(error["message"])
    assert _header(head, "connection") == "close"
    assert _header(head, "x-should-retry") == "false"
    assert gw.upstream_calls() == calls
    row = await _usage_row(gw, key_id)
    assert row["requests"] == 1 and row["refusals"] == {"budget": 1}, row


async def test_a_key_within_its_limits_uploads_as_before_and_a_full_tpm_window_refuses_unread(
    gw: Gateway,
) -> None:
    """A key within its RPM, TPM and budget is not refused early: its form is read and admitted
    once (its RPM counted once, its reservation the form's own), with or without a declared
    length. A form whose declared length cannot fit what its TPM window has left (though it fits
    the whole TPM) is refused unread with the TPM's 429 and headers (before: after its 20 MiB),
    and counts nothing: the RPM's remaining goes on from where it was."""
    key, key_id = await _key(gw, rpm=10, tpm=20_000, budget_usd=1000.0, budget_period="1d")
    sdk = gw.sdk(key)
    calls = gw.upstream_calls()
    long = b"ID3" + bytes(4 * 1024 * 1024)  # text: no usage reported, its reservation is charged
    raw = await sdk.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("a.mp3", long), response_format="text"
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    left = 20_000 - audio_tokens(len(long))
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(left)
    assert audio_tokens(BIG - UPLOAD_FIELDS_ALLOWANCE) in range(left + 1, 20_001)  # (the case)
    head, error = await _refused_unread(gw, key, "whisper")
    assert head.startswith("http/1.1 429"), head
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "tokens", error
    assert _header(head, "x-ratelimit-remaining-tokens") == str(left)
    assert _header(head, "x-ratelimit-remaining-requests") == "9"  # not counted
    assert _header(head, "connection") == "close" and float(_header(head, "retry-after")) > 0
    raw = await sdk.audio.transcriptions.with_raw_response.create(model="whisper", file=("a.mp3", AUDIO))
    assert raw.headers["x-ratelimit-remaining-requests"] == "8"
    async with gw.client.post(  # a chunked body: no declared length, checked all the same
        "/v1/audio/transcriptions",
        data=_chunked_form(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["x-ratelimit-remaining-requests"] == "7"
    await sdk.close()
    assert gw.upstream_calls() == calls + 3
    row = await _usage_row(gw, key_id)
    assert row["requests"] == 3 and row["refusals"] == {"tokens": 1}, row


async def _chunked_form() -> AsyncIterator[bytes]:
    yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
    yield b"Content-Type: audio/mpeg\r\n\r\n" + AUDIO + b"\r\n--b--\r\n"
