"""Tenancy of provider-side objects (h-fileref), over real HTTP on loopback through the official
SDKs: in ``auth.mode: keys`` a request naming a file stored with the provider (an OpenAI
``file_id`` in a chat ``file`` part or a Responses ``input_file``, an Anthropic document source of
type ``file``, a Gemini Files API URI) is refused with 400 ``provider_file_not_allowed`` in the
door's envelope before any provider call, unless its team (``auth.teams.<t>.provider_files``)
or its key (``provider_files`` on ``POST /admin/keys``) allows it; open mode passes it (one
tenant), and public ``https`` image URLs and ``data:`` URLs are never provider-side objects.
Before, every such request reached the provider with the organisation's key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import load_policy_with_digest
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
  an: {{kind: anthropic, base_url: "http://an.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
  claude: {{deployments: [{{provider: an, model: claude-x}}]}}
memory: {{enabled: false}}
auth:
  mode: {mode}
  store: {store}
  teams:
    research: {{}}
    trusted: {{provider_files: true}}
"""
FILE_ID = "file-abc123"
GEMINI_FILE = "https://generativelanguage.googleapis.com/v1beta/files/xyz789"
PUBLIC_IMAGE = "https://example.com/cat.png"
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def answer(request: UpstreamRequest) -> MockResponse:
    body = orjson.loads(request.body)
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
        self.sent = sent  # every provider request's body, in order

    async def key(self, **body: object) -> str:
        resp = await self.client.post("/admin/keys", json={"team": "research", **body}, headers=ADMIN)
        created = await resp.json()
        assert resp.status == 201, created
        assert created["provider_files"] == body.get("provider_files")
        return str(created["secret"])

    def sdks(self, secret: str) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]:
        oa = openai.AsyncOpenAI(
            api_key=secret, base_url=str(self.client.make_url("/v1")), max_retries=0, timeout=10
        )
        an = anthropic.AsyncAnthropic(
            api_key=secret, base_url=str(self.client.make_url("")), max_retries=0, timeout=10
        )
        return oa, an


Start = Callable[[str], Awaitable[Gateway]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    clients: list[TestClient] = []

    async def run(mode: str) -> Gateway:
        path = tmp_path / f"{mode}.yaml"
        path.write_text(POLICY.format(mode=mode, store=tmp_path / f"{mode}.sqlite3"))
        settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(path))
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
        clients.append(client)
        return Gateway(client, sent)

    yield run
    for client in clients:
        await client.close()


def chat_with(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Summarise this."}, part]}]


CHAT_FILE = {"type": "file", "file": {"file_id": FILE_ID}}
RESPONSES_INPUT = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Summarise this."},
            {"type": "input_file", "file_id": FILE_ID},
        ],
    }
]
MESSAGES_DOCUMENT = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Summarise this."},
            {"type": "document", "source": {"type": "file", "file_id": FILE_ID}},
        ],
    }
]


def refused_openai(error: openai.BadRequestError, param: str) -> None:
    body = error.body
    assert isinstance(body, dict), body
    assert (body["type"], body["code"], body["param"]) == (
        "invalid_request_error",
        "provider_file_not_allowed",
        param,
    )
    assert f"'{param}'" in body["message"] and "auth.teams.research.provider_files" in body["message"]
    assert "--provider-files" in body["message"]


async def test_a_key_may_not_name_a_provider_file_on_any_door(start: Start) -> None:
    gateway = await start("keys")
    oa, an = gateway.sdks(await gateway.key())
    with pytest.raises(openai.BadRequestError) as chat:
        await oa.chat.completions.create(model="m", messages=chat_with(CHAT_FILE))  # type: ignore[arg-type]
    refused_openai(chat.value, "messages[0].content[1].file.file_id")
    with pytest.raises(openai.BadRequestError) as responses:
        await oa.responses.create(model="m", input=RESPONSES_INPUT)  # type: ignore[arg-type]
    refused_openai(responses.value, "input[0].content[1].file_id")
    # A Gemini Files API URI where a URL is taken (the Gemini adapter would send it as fileData).
    with pytest.raises(openai.BadRequestError) as gemini:
        gemini_part = {"type": "image_url", "image_url": {"url": GEMINI_FILE}}
        await oa.chat.completions.create(model="m", messages=chat_with(gemini_part))  # type: ignore[arg-type]
    refused_openai(gemini.value, "messages[0].content[1].image_url.url")
    with pytest.raises(anthropic.BadRequestError) as messages:
        await an.messages.create(model="claude", max_tokens=16, messages=MESSAGES_DOCUMENT)  # type: ignore[arg-type]
    envelope = messages.value.body
    assert isinstance(envelope, dict), envelope
    assert envelope["type"] == "error" and envelope["error"]["type"] == "invalid_request_error"
    assert "'messages[0].content[1].source.file_id'" in envelope["error"]["message"]
    assert "provider_files: true" in envelope["error"]["message"]
    assert gateway.sent == []  # no provider was called
    await oa.close()
    await an.close()


async def test_public_and_inline_urls_are_not_provider_files(start: Start) -> None:
    gateway = await start("keys")
    oa, _ = gateway.sdks(await gateway.key())
    for url in (PUBLIC_IMAGE, PIXEL):
        part = {"type": "image_url", "image_url": {"url": url}}
        done = await oa.chat.completions.create(model="m", messages=chat_with(part))  # type: ignore[arg-type]
        assert done.choices[0].message.content == "read it"
    assert [body["messages"][0]["content"][1]["image_url"]["url"] for body in gateway.sent] == [
        PUBLIC_IMAGE,
        PIXEL,
    ]
    await oa.close()


async def every_door_passes(gateway: Gateway, secret: str) -> None:
    oa, an = gateway.sdks(secret)
    done = await oa.chat.completions.create(model="m", messages=chat_with(CHAT_FILE))  # type: ignore[arg-type]
    assert done.choices[0].message.content == "read it"
    response = await oa.responses.create(model="m", input=RESPONSES_INPUT)  # type: ignore[arg-type]
    assert response.output_text == "read it"
    message = await an.messages.create(model="claude", max_tokens=16, messages=MESSAGES_DOCUMENT)  # type: ignore[arg-type]
    assert message.content[0].type == "text"
    chat_sent, responses_sent, messages_sent = gateway.sent
    assert chat_sent["messages"][0]["content"][1] == CHAT_FILE
    assert responses_sent["messages"][0]["content"][1] == {"type": "file", "file": {"file_id": FILE_ID}}
    assert messages_sent["messages"][0]["content"][1]["source"] == {"type": "file", "file_id": FILE_ID}
    await oa.close()
    await an.close()


async def test_a_team_allowed_provider_files_passes_them_through(start: Start) -> None:
    gateway = await start("keys")
    resp = await gateway.client.post("/admin/keys", json={"team": "trusted"}, headers=ADMIN)
    assert resp.status == 201
    await every_door_passes(gateway, str((await resp.json())["secret"]))


async def test_a_key_setting_overrides_its_teams(start: Start) -> None:
    gateway = await start("keys")
    await every_door_passes(gateway, await gateway.key(provider_files=True))
    # And the other way: a key of the trusted team made with provider_files: false is refused.
    resp = await gateway.client.post(
        "/admin/keys", json={"team": "trusted", "provider_files": False}, headers=ADMIN
    )
    assert resp.status == 201
    oa, _ = gateway.sdks(str((await resp.json())["secret"]))
    with pytest.raises(openai.BadRequestError) as chat:
        await oa.chat.completions.create(model="m", messages=chat_with(CHAT_FILE))  # type: ignore[arg-type]
    assert chat.value.code == "provider_file_not_allowed"
    assert len(gateway.sent) == 3  # the allowed key's three calls only
    await oa.close()


async def test_open_mode_is_one_tenant_and_passes_provider_files(start: Start) -> None:
    gateway = await start("open")
    await every_door_passes(gateway, "anything")


async def test_the_admin_api_types_the_setting_strictly(start: Start) -> None:
    gateway = await start("keys")
    resp = await gateway.client.post(
        "/admin/keys", json={"team": "research", "provider_files": "yes"}, headers=ADMIN
    )
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "provider_files", body
    listed = await (await gateway.client.get("/admin/keys", headers=ADMIN)).json()
    assert listed["data"] == []


async def test_a_kept_conversation_naming_a_file_is_checked_for_the_key_continuing_it(start: Start) -> None:
    gateway = await start("keys")
    allowed, _ = gateway.sdks(await gateway.key(provider_files=True))
    first = await allowed.responses.create(model="m", input=RESPONSES_INPUT, store=True)  # type: ignore[arg-type]
    other, _ = gateway.sdks(await gateway.key())  # the same team (tenant), not allowed
    with pytest.raises(openai.BadRequestError) as refused:
        await other.responses.create(model="m", input="And the second page?", previous_response_id=first.id)
    body = refused.value.body
    assert isinstance(body, dict), body
    assert (body["code"], body["param"]) == ("provider_file_not_allowed", "previous_response_id")
    assert "input[0] of previous_response_id's conversation" in body["message"], body["message"]
    assert len(gateway.sent) == 1  # the allowed key's call only
    await allowed.close()
    await other.close()
