"""A stranger's probes of the newest surfaces (h-probe3), over real loopback HTTP with the
official SDKs and in-process fake providers (``MockTransport``): each test names the defect it
found, and failed before its fix.

- provider-file tenancy (h-fileref): a Messages document whose source is its own content
  (``source: {"type": "content", "content": [image blocks]}``) carried an image block with a
  ``file`` source past the walk; a Gemini Files API URL spelled as a URL parser reads it (a
  backslash for the path's slash, a percent-encoded dot, a tab inside the host, full-width
  letters or an ideographic full stop) was not seen as on the Files API's host;
- the audit trail and the access log (h-audit): a secret pasted where a key id goes was written
  whole;
- the shared auth throttle (h-sharedthrottle): a window as long as a Redis counter's expiry;
- costs (h-imageedits, h-estcost): more images charged than asked; an estimate as large as any
  ``max_tokens``;
- uploads (h-uploadgate): ``Expect: 100-continue`` answered before the checks that refuse an
  upload unread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.auth.redis_throttle import RedisFailures
from gateway.auth.throttle import FailedAuthThrottle
from gateway.policy.loader import load_policy_with_digest
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.wire.provider_files import in_messages, provider_uri

TOKEN = "admin-token-for-the-stranger"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
  an: {{kind: anthropic, base_url: "http://an.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
  claude: {{deployments: [{{provider: an, model: claude-x}}]}}
  priced: {{deployments: [{{provider: a, model: no-usage, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}]}}
  img: {{deployments: [{{provider: a, model: dall-e-2, price: {{per_image: {{"1024x1024": 0.02}}}}}}]}}
memory: {{enabled: false}}
auth:
  mode: keys
  store: {store}
  teams:
    research: {{}}
"""


HOSTILE_IMAGES = 40  # what the images endpoint answers with, whatever was asked


def answer(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
    if request.path.endswith("/images/generations"):
        return MockResponse.json({"created": 0, "data": [{"url": "https://img.test/1.png"}] * HOSTILE_IMAGES})
    if request.path.endswith("/messages"):
        return MockResponse.json(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": "read it"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 2},
            }
        )
    if body.get("model") == "no-usage":  # a compatible server that reports no usage
        return MockResponse.json(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "no-usage",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
            }
        )
    return MockResponse.json(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "read it"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


class Gateway:
    def __init__(self, client: TestClient, sent: list[dict[str, Any]]) -> None:
        self.client = client
        self.sent = sent

    async def key(self) -> str:
        resp = await self.client.post("/admin/keys", json={"team": "research"}, headers=ADMIN)
        assert resp.status == 201
        return str((await resp.json())["secret"])

    def sdks(self, secret: str) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]:
        url = str(self.client.make_url("/"))
        oa = openai.AsyncOpenAI(api_key=secret, base_url=url + "v1", max_retries=0, timeout=10)
        an = anthropic.AsyncAnthropic(api_key=secret, base_url=url, max_retries=0, timeout=10)
        return oa, an


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with serving(tmp_path) as started:
        yield started


@asynccontextmanager
async def serving(tmp_path: Path, access_log: bool = False) -> AsyncIterator[Gateway]:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(store=tmp_path / "keys.sqlite3"))
    settings = Settings(access_log=access_log, admin_token=TOKEN, policy_watch=False, policy_path=str(path))
    policy, digest = load_policy_with_digest(path)
    sent: list[dict[str, Any]] = []

    def upstream(request: UpstreamRequest) -> MockResponse:
        sent.append(orjson.loads(request.body))
        return answer(request)

    transport = MockTransport(upstream)
    app = build_app(
        settings,
        policy,
        {},
        transports={"a": transport, "an": transport},
        policy_path=str(path),
        policy_digest=digest,
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Gateway(client, sent)
    finally:
        await client.close()


Call = Callable[[], Awaitable[object]]
FILE_ID = "file_011CNha8iCJcU1wXNR6q4V8w"


def document_of_content(image_source: dict[str, Any]) -> list[dict[str, Any]]:
    """A Messages turn with a document whose source is its own content (Anthropic's
    ``ContentBlockSource``: text and image blocks), one image with ``image_source``."""
    return [
        {
            "role": "user",
            "content": [
                {
                    "type": "document",
                    "source": {
                        "type": "content",
                        "content": [
                            {"type": "text", "text": "Page one."},
                            {"type": "image", "source": image_source},
                        ],
                    },
                },
                {"type": "text", "text": "Summarise the document."},
            ],
        }
    ]


async def test_a_file_inside_a_documents_own_content_is_a_provider_file(gateway: Gateway) -> None:
    """Before: the walk looked at a block's ``source`` and a tool result's content only, so an
    image block with a ``file`` source inside a document of ``type: content`` reached Anthropic,
    which reads the organisation's file for the key."""
    _, an = gateway.sdks(await gateway.key())
    for source, field in (
        ({"type": "file", "file_id": FILE_ID}, "file_id"),
        ({"type": "url", "url": "gs://org-private/scan.png"}, "url"),
    ):
        with pytest.raises(anthropic.BadRequestError) as refused:
            await an.messages.create(model="claude", max_tokens=16, messages=document_of_content(source))  # type: ignore[arg-type]
        body = refused.value.body
        assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error", body
        assert f"'messages[0].content[0].source.content[1].source.{field}'" in body["error"]["message"]
    # The same inside a tool result's document.
    turns = [
        {"role": "user", "content": "Read the scan."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "scan", "input": {}}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": document_of_content({"type": "file", "file_id": FILE_ID})[0]["content"][:1],
                }
            ],
        },
    ]
    with pytest.raises(anthropic.BadRequestError) as nested:
        await an.messages.create(model="claude", max_tokens=16, messages=turns)  # type: ignore[arg-type]
    assert "'messages[2].content[0].content[0].source.content[1].source.file_id'" in nested.value.message
    assert gateway.sent == []
    # A document of plain content (text, a public image) is no provider file.
    public = {"type": "url", "url": "https://example.com/scan.png"}
    done = await an.messages.create(model="claude", max_tokens=16, messages=document_of_content(public))  # type: ignore[arg-type]
    assert done.content[0].type == "text" and len(gateway.sent) == 1
    await an.close()


# Spellings of the Gemini Files API's host a URL parser (WHATWG's, Chromium's GURL) reads as that
# host: a backslash ends the host as a slash does, percent-escapes and full-width forms in a host
# are decoded, tabs and newlines inside a URL are dropped.
GEMINI_SPELLINGS = [
    "https://generativelanguage.googleapis.com\\v1beta\\files\\abc123",
    "https://generativelanguage%2Egoogleapis%2Ecom/v1beta/files/abc123",
    "https://generativelanguage.google\tapis.com/v1beta/files/abc123",
    "https://generativelanguage.googleapis.com\r\n/v1beta/files/abc123",
    "https://generativelanguage\u3002googleapis\uff0ecom/v1beta/files/abc123",
    "https://\uff47enerativelanguage.googleapis.com/v1beta/files/abc123",
    "https://user:pw@GenerativeLanguage.GoogleAPIs.com.:443/v1beta/files/abc123",
    " https://generativelanguage.googleapis.com/v1beta/files/abc123",
    "HTTPS:\\\\generativelanguage.googleapis.com/v1beta/files/abc123",
]


@pytest.mark.parametrize("url", GEMINI_SPELLINGS)
def test_every_spelling_of_the_gemini_files_host_is_a_provider_uri(url: str) -> None:
    assert provider_uri(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "https://generativelanguage.googleapis.com.evil.example/v1beta/files/x",
        "https://evil.example/generativelanguage.googleapis.com/files/x",
        "https://evil.example/?u=https://generativelanguage.googleapis.com/v1beta/files/x",
        "https://generativelanguage.googleapis.co/x",
        "https://storage.googleapis.com/public-bucket/cat.png",
    ],
)
def test_look_alikes_and_public_urls_stay_public(url: str) -> None:
    assert not provider_uri(url)


async def test_an_obfuscated_gemini_files_url_is_refused_on_the_chat_door(gateway: Gateway) -> None:
    oa, _ = gateway.sdks(await gateway.key())
    part = {"type": "image_url", "image_url": {"url": GEMINI_SPELLINGS[0]}}
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}],  # type: ignore[list-item]
        )
    assert refused.value.code == "provider_file_not_allowed"
    assert gateway.sent == []
    await oa.close()


def test_a_code_execution_results_output_file_is_named() -> None:
    """An assistant turn replaying a code execution result names its output files by id."""
    body = {
        "messages": [
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "code_execution_tool_result",
                        "tool_use_id": "srv_1",
                        "content": {
                            "type": "code_execution_result",
                            "stdout": "",
                            "stderr": "",
                            "return_code": 0,
                            "content": [{"type": "code_execution_output", "file_id": FILE_ID}],
                        },
                    }
                ],
            }
        ]
    }
    assert in_messages(body) == "messages[0].content[0].content.content[0].file_id"


async def test_a_secret_pasted_as_a_key_id_is_not_logged(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An operator revoking (or rotating, or ending the grace of) a key by its secret instead of
    its id got a 404, and the secret was written whole into the audit line's ``key_id`` and the
    access log's ``path``: the two logs shipped to a log store. Now both show it as listings do."""
    caplog.set_level(logging.INFO, logger="gateway.access")  # the access log is on only then
    caplog.set_level(logging.INFO, logger="gateway.audit")
    async with serving(tmp_path, access_log=True) as gw:
        resp = await gw.client.post("/admin/keys", json={"team": "research"}, headers=ADMIN)
        created = await resp.json()
        secret, key_id = created["secret"], created["id"]
        for method, path in (
            ("DELETE", f"/admin/keys/{secret}"),
            ("POST", f"/admin/keys/{secret}/rotate"),
            ("DELETE", f"/admin/keys/{secret}/grace"),
        ):
            resp = await gw.client.request(method, path, headers=ADMIN)
            assert resp.status == 404, await resp.text()
        resp = await gw.client.delete(f"/admin/keys/{key_id}", headers=ADMIN)  # the id: as before
        assert resp.status == 200
    audits = [r.fields for r in caplog.records if r.name == "gateway.audit"]  # type: ignore[attr-defined]
    assert [(a["action"], a["outcome"]) for a in audits] == [
        ("key.create", "ok"),
        ("key.revoke", "refused"),
        ("key.rotate", "refused"),
        ("key.end_grace", "refused"),
        ("key.revoke", "ok"),
    ]
    assert [a["key_id"] for a in audits[1:4]] == [secret[:10] + "\u2026"] * 3
    assert audits[4]["key_id"] == key_id
    out = capfd.readouterr().err
    paths = [orjson.loads(line)["path"] for line in out.splitlines() if '"gateway.access"' in line]
    assert f"/admin/keys/{secret[:10]}\u2026/rotate" in paths and f"/admin/keys/{key_id}" in paths
    assert secret[10:] not in out and all(secret[10:] not in repr(r.__dict__) for r in caplog.records)


async def test_a_shared_failure_count_never_refuses_longer_than_the_window() -> None:
    """The shared throttle (h-sharedthrottle) took the window's end from Redis's ``PTTL`` as it
    came: a counter left with a long expiry (written by hand, by another tool under the prefix, a
    server answering nonsense) refused an address for as long, its ``Retry-After`` years. The
    table now takes at most one window from the shared answer. Real Redis, under a test prefix."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"sophia:probe3:{uuid.uuid4().hex}:"
    shared = RedisFailures(url, prefix=prefix)
    await shared.start()
    client = aioredis.from_url(url)
    try:
        await client.set(prefix + "203.0.113.7", 5, px=10**12)  # ~31 years left
        await client.set(prefix + "2001:db8:1:2::/64", 5, px=10**12)  # (a key no /64 is counted under)
        throttle = FailedAuthThrottle(3, 60.0, shared=shared)
        assert await throttle.fail("203.0.113.7") == 6  # refused: past the limit
        assert 0 < await throttle.refusal_s("203.0.113.7") <= 60.0
        assert 0 < throttle.retry_after_s("203.0.113.7") <= 60.0
        # An IPv6 client is counted under its /64 (hex): one address of it fails, another of the
        # same /64 is refused, one of another /64 is not.
        v6 = FailedAuthThrottle(2, 60.0, shared=shared)
        assert await v6.fail("2001:db8:1:2::10") == 1
        assert await v6.fail("2001:db8:1:2:ffff::1") == 2
        assert 0 < await v6.refusal_s("2001:db8:1:2:aaaa::3") <= 60.0
        assert await v6.refusal_s("2001:db8:1:3::10") == 0.0
    finally:
        await client.delete(*[key async for key in client.scan_iter(match=prefix + "*")] or [prefix])
        await client.aclose()
        await shared.close()


async def test_a_provider_answering_more_images_than_asked_is_charged_those_asked(gateway: Gateway) -> None:
    """``per_image`` x the images in the answer's ``data``: a provider (or a compatible server)
    answering 40 images to ``n: 1`` charged the key and ``gateway_cost_usd_total`` 40 images at
    once. The count is now at most the ``n`` asked (what the provider may bill)."""
    oa, _ = gateway.sdks(await gateway.key())
    done = await oa.images.generate(model="img", prompt="a cat", n=1, size="1024x1024")
    assert len(done.data or []) == HOSTILE_IMAGES
    await oa.close()
    metrics = await (await gateway.client.get("/metrics")).text()
    (cost,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_cost_usd_total{") and 'model="img"' in line
    ]
    assert float(cost.rsplit(" ", 1)[1]) == pytest.approx(0.02)


async def _raw_upload_head(
    gw: Gateway, secret: str, declared: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The head of a transcription upload declaring ``declared`` bytes, with ``Expect:
    100-continue``, its body not sent."""
    url = gw.client.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        (
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {secret}\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {declared}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def test_an_upload_asking_100_continue_is_refused_before_it_is_told_to_send(gateway: Gateway) -> None:
    """h-uploadgate refuses a key over its limits before its form is read, but the gateway's
    ``Expect`` handler answered ``100 Continue`` before the handler ran: a client waiting for it
    (curl for any upload over 1 MiB, as RFC 9110 10.1.1 has it) was told to send its 20 MiB,
    then got the 429. Now an upload route's ``100 Continue`` is sent when its form is about to
    be read, so a refusal is the only answer; an admitted upload gets it and is served."""
    resp = await gateway.client.post("/admin/keys", json={"team": "research", "rpm": 1}, headers=ADMIN)
    secret = (await resp.json())["secret"]
    reader, writer = await _raw_upload_head(gateway, secret, 64)
    first = await asyncio.wait_for(reader.readline(), 5)
    assert first.startswith(b"HTTP/1.1 100"), first  # admitted: told to send
    await asyncio.wait_for(reader.readline(), 5)  # (the interim answer's blank line)
    form = b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--XyZ--\r\n'
    writer.write(form.ljust(64, b"\n")[:64] if len(form) < 64 else form[:64])
    await writer.drain()
    final = await asyncio.wait_for(reader.readline(), 5)
    assert final.startswith(b"HTTP/1.1 400"), final  # (no file part: the form was read)
    writer.close()
    # The key's one request a minute spent (the form above was refused before admission):
    # refused before its body is asked for.
    oa, _ = gateway.sdks(secret)
    await oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    await oa.close()
    for secret_sent, status in ((secret, b"429"), ("sk-sg-wrong", b"401")):  # a wrong key: never 100
        reader, writer = await _raw_upload_head(gateway, secret_sent, 20 * 2**20)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert b"\r\nconnection: close\r\n" in head.lower()  # the connection is not reused
        writer.close()


async def test_an_estimate_for_an_answer_without_usage_is_bounded(gateway: Gateway) -> None:
    """h-estcost charges a call whose provider reports no usage its reservation: the prompt's
    characters / 4 plus ``max_tokens`` x ``n`` as the client sent them, unbounded unless the
    policy sets ``limits.max_tokens`` (default: none). A client asking ``max_tokens: 2**62`` of a
    server that ignores it and reports no usage put $4.6e12 into ``gateway_cost_usd_total`` (and
    its key's spend) at $1 per million tokens. The output an estimate counts is now bounded as a
    reported count is (``MOST_TOKENS`` a choice)."""
    oa, _ = gateway.sdks(await gateway.key())
    done = await oa.chat.completions.create(
        model="priced", messages=[{"role": "user", "content": "hi"}], max_tokens=2**62
    )
    assert done.choices[0].message.content == "ok"
    await oa.close()
    metrics = await (await gateway.client.get("/metrics")).text()
    (cost,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_cost_usd_total{") and 'model="priced"' in line
    ]
    assert 0 < float(cost.rsplit(" ", 1)[1]) <= (2**31 + 10) / 1e6
