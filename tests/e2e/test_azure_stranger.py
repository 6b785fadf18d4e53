"""The Azure door probed by a stranger (h-azure): the openai SDK's ``AzureOpenAI`` and
``AsyncAzureOpenAI`` clients, the plain ``OpenAI`` client on Azure's v1 API paths
(``/openai/v1/...``), and hand-written requests where a client would not send what is probed
(odd deployment names, odd ``api-version`` values, two credentials). ``test_azure_door.py``
covers the door's plain use; this file what a stranger tries next. Real processes: fake
providers, an Azure-shaped upstream on loopback and a gateway in keys mode."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import PROVIDER_KEY, start_fakes, start_gateway

ADMIN = "e2e-azure-stranger-admin"
API_VERSION = "2024-10-21"
HI: Any = [{"role": "user", "content": "hi"}]
# Azure's content filter annotations, as an Azure OpenAI deployment sends them.
FILTERS = {
    "hate": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": FILTERS}]
VERDICT = {
    **FILTERS,
    "self_harm": {"filtered": True, "severity": "medium"},
    "jailbreak": {"filtered": False, "detected": False},
}


def _refusal(verdict: Any) -> dict[str, Any]:
    """Azure's 400 for a prompt its content filter refused (as Azure answers it)."""
    return {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": verdict},
        }
    }


# prompt -> Azure's refusal of it
REFUSED = {
    "refuse me": _refusal(VERDICT),
    "refuse me at length": _refusal(
        {f"category_{i}": {"filtered": True, "severity": "x" * 100} for i in range(200)}
    ),
    # An argument the deployment's api-version lacks: named in words only (openai/openai-python#1724).
    "an old api-version": {
        "error": {
            "message": "Unrecognized request argument supplied: store",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    },
}


class AzureUpstream:
    """An Azure OpenAI deployment on loopback answering as Azure does: ``prompt_filter_results``
    on the answer (and alone in the stream's first chunk, with empty ``choices``, ``id`` and
    ``model``), ``content_filter_results`` on each choice."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                if prompt in REFUSED:
                    self._send(400, json.dumps(REFUSED[prompt]).encode(), "application/json")
                    return
                if body.get("stream"):
                    meta = {
                        "created": 1,
                        "id": "chatcmpl-az",
                        "model": "gpt-4o",
                        "object": "chat.completion.chunk",
                    }
                    chunks = [
                        {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": PROMPT_FILTERS},
                        {**meta, "choices": [{"index": 0, "content_filter_results": FILTERS, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
                        {**meta, "choices": [{"index": 0, "content_filter_results": {}, "delta": {}, "finish_reason": "stop"}]},
                    ]  # fmt: skip
                    out = (
                        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
                        + b"data: [DONE]\n\n"
                    )
                    ctype = "text/event-stream"
                else:
                    answer = {
                        "id": "chatcmpl-az",
                        "object": "chat.completion",
                        "created": 1,
                        "model": "gpt-4o",
                        "prompt_filter_results": PROMPT_FILTERS,
                        "choices": [
                            {
                                "index": 0,
                                "content_filter_results": FILTERS,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "Hi"},
                            }
                        ],
                        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
                    }
                    out, ctype = json.dumps(answer).encode(), "application/json"
                self._send(200, out, ctype)

            def _send(self, status: int, out: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Door:
    gateway: ManagedProcess
    secret: str  # team "all": every model
    narrow: str  # team "narrow": only "chat"
    slow: str  # team "slow": 3 requests a minute

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, secret: str | None = None, **kwargs: Any) -> openai.AzureOpenAI:
        kwargs.setdefault("api_key", secret or self.secret)
        return openai.AzureOpenAI(azure_endpoint=self.url, api_version=API_VERSION, max_retries=0, **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncAzureOpenAI:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=self.url, api_version=API_VERSION, max_retries=0, **kwargs
        )


@dataclass
class Reply:
    status: int
    text: str
    headers: dict[str, str]

    def error(self) -> dict[str, Any]:
        body = json.loads(self.text)
        assert set(body) == {"error"}, body
        error: dict[str, Any] = body["error"]
        return error


def call(url: str, *, body: Any = None, headers: dict[str, str], method: str = "POST") -> Reply:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return Reply(resp.status, resp.read().decode(), dict(resp.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(), dict(exc.headers))


def _admin_key(url: str, team: str) -> str:
    request = urllib.request.Request(
        url + "/admin/keys",
        data=json.dumps({"team": team}).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        secret: str = json.loads(resp.read())["secret"]
        return secret


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    fakes = start_fakes({"gpt": ["--require-key", PROVIDER_KEY], "claude": ["--flavor", "anthropic"]})
    upstream = AzureUpstream()
    policy = tmp_path_factory.mktemp("azure-stranger") / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            cache:
              default_category: common
              categories:
                common: {{ttl_s: 600, max_bytes: 10MB}}
            providers:
              gpt: {{kind: openai, base_url: "{fakes["gpt"].url}/v1", api_key_env: E2E_PROVIDER_KEY}}
              claude: {{kind: anthropic, base_url: "{fakes["claude"].url}/v1"}}
              azure-eu: {{kind: azure, base_url: "{upstream.url}", api_key_env: E2E_PROVIDER_KEY}}
            models:
              chat: {{deployments: [{{provider: gpt, model: upstream-chat}}]}}
              claude-chat: {{deployments: [{{provider: claude, model: claude-upstream}}]}}
              embed: {{deployments: [{{provider: gpt, model: upstream-embed}}]}}
              filtered: {{deployments: [{{provider: azure-eu, model: my-gpt4o}}]}}
            memory: {{enabled: false}}
            auth:
              teams:
                all: {{}}
                narrow: {{models: [chat]}}
                slow: {{rpm: 3}}
            """
        )
    )
    gateway = None
    try:
        # The embedded cache: this file's cache entries are its own, whatever REDIS_URL says.
        gateway = start_gateway(policy, env={"SOPHIA_ADMIN_TOKEN": ADMIN, "REDIS_URL": ""})
        url = gateway.url
        yield Door(gateway, _admin_key(url, "all"), _admin_key(url, "narrow"), _admin_key(url, "slow"))
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.close()
        for fake in fakes.values():
            fake.stop()


def _assert_deployment_not_found(error: Any, deployment: str) -> None:
    assert isinstance(error, dict)
    assert error["code"] == "DeploymentNotFound", error
    assert error["message"].startswith("The API deployment for this resource does not exist")
    assert error["type"] == "invalid_request_error"
    assert deployment[:50] in error["message"]


# --- an unknown deployment is Azure's DeploymentNotFound ------------------------------------


def test_an_unknown_deployment_is_azures_deployment_not_found(door: Door) -> None:
    # Apps written for Azure test the code (or the message's words) to tell a misnamed
    # deployment from a missing resource; the openai SDK shows it as e.code.
    client = door.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o-prod", messages=HI)
    _assert_deployment_not_found(caught.value.body, "gpt-4o-prod")
    assert caught.value.code == "DeploymentNotFound"
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="ada-002", input="x")
    _assert_deployment_not_found(caught.value.body, "ada-002")
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="davinci", prompt="x")
    _assert_deployment_not_found(caught.value.body, "davinci")
    # A group the key may not call is not there for it: the same 404, naming only its groups.
    with pytest.raises(openai.NotFoundError) as caught:
        door.client(door.narrow).chat.completions.create(model="claude-chat", messages=HI)
    _assert_deployment_not_found(caught.value.body, "claude-chat")
    assert "Available models: chat." in caught.value.body["message"]  # type: ignore[index]


def test_an_unknown_deployment_streamed_from_the_async_client(door: Door) -> None:
    async def main() -> None:
        client = door.async_client(api_key=door.secret)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="nope", messages=HI, stream=True)
        _assert_deployment_not_found(caught.value.body, "nope")
        await client.close()

    asyncio.run(main())


# --- Azure's v1 API: /openai/v1/..., the model in the body ----------------------------------


def test_the_openai_client_on_azures_v1_api_paths(door: Door) -> None:
    # Azure's documented way onto its v1 API: the plain OpenAI client, base_url {endpoint}/openai/v1/.
    client = openai.OpenAI(base_url=door.url + "/openai/v1/", api_key=door.secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.http_request.url.path == "/openai/v1/chat/completions"
    assert raw.parse().choices[0].message.content == "Echo: hi"
    chunks = list(client.chat.completions.create(model="claude-chat", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert client.completions.create(model="chat", prompt="Say hi", max_tokens=5).choices[0].text
    assert len(client.embeddings.create(model="embed", input="x").data[0].embedding) > 0
    response = client.responses.create(model="chat", input="hello", store=True)
    assert response.output_text == "Echo: hello"
    assert client.responses.retrieve(response.id).output_text == "Echo: hello"
    assert "chat" in [m.id for m in client.models.list()]
    # The model in the body is OpenAI's: an unknown one is OpenAI's 404, as on /v1.
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=HI)
    assert caught.value.code == "model_not_found"


def test_the_v1_api_paths_take_the_key_as_api_key_too_and_any_api_version(door: Door) -> None:
    url = door.url + "/openai/v1/chat/completions"
    for query in ("", "?api-version=preview", "?api-version=v1", "?api-version=latest"):
        answer = call(url + query, body={"model": "chat", "messages": HI}, headers={"api-key": door.secret})
        assert answer.status == 200, (query, answer.text)
    wrong = call(url, body={"model": "chat", "messages": HI}, headers={"api-key": "sk-sg-wrong-0123456789"})
    assert wrong.status == 401 and wrong.error()["code"] == "invalid_api_key"
    assert "'api-key: <key>'" in wrong.error()["message"]
    models = call(door.url + "/openai/v1/models", headers={"api-key": door.narrow}, method="GET")
    assert [m["id"] for m in json.loads(models.text)["data"]] == ["chat"]


def test_the_azure_client_on_a_v1_base_url_is_a_404_as_azure_answers_it(door: Door) -> None:
    # AzureOpenAI adds /deployments/{model} to a /openai/v1 base_url; Azure answers 404 there
    # (openai-python issue 2584: use the OpenAI client). The gateway does the same, in the envelope.
    client = openai.AzureOpenAI(
        base_url=door.url + "/openai/v1/", api_key=door.secret, api_version="preview", max_retries=0
    )
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="chat", messages=HI)
    assert caught.value.request.url.path == "/openai/v1/deployments/chat/chat/completions"
    assert "Unknown path" in caught.value.response.json()["error"]["message"]


# --- the key: api-key, Authorization, both --------------------------------------------------


def test_an_empty_authorization_header_leaves_the_api_key_to_be_read(door: Door) -> None:
    url = door.url + "/openai/deployments/chat/chat/completions"
    for blank in ("", " "):
        answer = call(url, body={"messages": HI}, headers={"api-key": door.secret, "Authorization": blank})
        assert answer.status == 200, (blank, answer.text)
    # A credential in Authorization still wins, as documented: a wrong one is the 401, whatever
    # api-key says, and a right one is read whatever api-key says.
    wrong = call(url, body={"messages": HI}, headers={"api-key": door.secret, "Authorization": "Bearer junk"})
    assert wrong.status == 401 and door.secret not in wrong.text
    right = call(
        url, body={"messages": HI}, headers={"api-key": "junk", "Authorization": f"Bearer {door.secret}"}
    )
    assert right.status == 200
    # Nothing at all is still no key.
    nothing = call(url, body={"messages": HI}, headers={"api-key": "", "Authorization": ""})
    assert nothing.status == 401 and nothing.error()["code"] == "invalid_api_key"


def test_azure_ad_token_providers_sync_and_async_send_the_key_as_bearer(door: Door) -> None:
    client = door.client(api_key=None, azure_ad_token_provider=lambda: door.secret)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.http_request.headers["authorization"] == f"Bearer {door.secret}"
    assert "api-key" not in raw.http_request.headers
    assert raw.request_id and raw.request_id == raw.headers["x-request-id"]

    async def token() -> str:
        return door.secret

    async def main() -> None:
        client = door.async_client(azure_ad_token_provider=token)
        stream = await client.chat.completions.create(model="claude-chat", messages=HI, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()

    asyncio.run(main())


# --- deployment names, other operations, api-version ----------------------------------------


@pytest.mark.parametrize(
    "name", ["a/../chat", "../../v1/chat", "été", "a?b=c", "a#b", "a%2Fb", " chat", "CHAT", "x" * 1000]
)
def test_odd_deployment_names_from_the_sdk_are_a_bounded_404(door: Door, name: str) -> None:
    # The SDK percent-encodes the name into one path segment; the gateway decodes it back.
    with pytest.raises(openai.NotFoundError) as caught:
        door.client().chat.completions.create(model=name, messages=HI)
    _assert_deployment_not_found(caught.value.body, name)
    assert len(caught.value.response.text) < 1500  # a 1,000-character name is cut, not echoed whole


def test_odd_deployment_paths_by_hand(door: Door) -> None:
    headers = {"api-key": door.secret}
    base = door.url + "/openai/deployments/"
    for segment, name in (("..", ".."), ("%2E%2E", ".."), ("%00", "\x00"), ("ch%61t", None)):
        answer = call(base + segment + "/chat/completions", body={"messages": HI}, headers=headers)
        if name is None:  # %61 is 'a': the group chat
            assert answer.status == 200, answer.text
        else:
            assert answer.status == 404 and answer.error()["code"] == "DeploymentNotFound", answer.text
    # An empty segment or an unencoded '/' is no route of the door.
    for path in ("/chat/completions", "org/chat/chat/completions"):
        answer = call(base + path, body={"messages": HI}, headers=headers)
        assert answer.status == 404 and "Unknown path" in answer.error()["message"]


@pytest.mark.parametrize("operation", ["images/masks", "extensions/chat/completions"])
def test_deployment_operations_not_served_are_a_404_in_the_envelope(door: Door, operation: str) -> None:
    answer = call(
        f"{door.url}/openai/deployments/chat/{operation}?api-version={API_VERSION}",
        body={"prompt": "x"},
        headers={"api-key": door.secret},
    )
    assert answer.status == 404
    error = answer.error()
    assert set(error) == {"message", "type", "param", "code"} and "Unknown path" in error["message"]
    assert door.secret not in answer.text


@pytest.mark.parametrize(
    "operation", ["audio/transcriptions", "audio/translations", "images/edits", "images/variations"]
)
def test_uploads_take_a_form_not_json(door: Door, operation: str) -> None:
    # (a 404 until h-transcribe and h-imageedits served them: a form upload, so JSON is a 415)
    answer = call(
        f"{door.url}/openai/deployments/chat/{operation}?api-version={API_VERSION}",
        body={"prompt": "x"},
        headers={"api-key": door.secret},
    )
    assert answer.status == 415 and answer.error()["type"] == "invalid_request_error", answer.text
    assert door.secret not in answer.text


def test_the_sdks_speech_call_reaches_the_group(door: Door) -> None:
    # (a 404 until h-doors served speech; a group of Anthropic deployments is a 400 naming it)
    assert door.client().audio.speech.create(model="chat", voice="alloy", input="hi").content
    with pytest.raises(openai.BadRequestError, match="claude-chat"):
        door.client().audio.speech.create(model="claude-chat", voice="alloy", input="hi")


def test_a_get_on_a_deployment_path_is_a_405(door: Door) -> None:
    answer = call(
        door.url + "/openai/deployments/chat/chat/completions", headers={"api-key": door.secret}, method="GET"
    )
    assert answer.status == 405 and answer.error()["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "query",
    ["", "?api-version=", "?api-version=2023-05-15", "?api-version=2025-04-01-preview",
     "?api-version=preview", "?api-version=%00%FF", "?api-version=a&api-version=b"],
)  # fmt: skip
def test_any_api_version_or_none_is_served(door: Door, query: str) -> None:
    answer = call(
        f"{door.url}/openai/deployments/chat/chat/completions{query}",
        body={"messages": HI},
        headers={"api-key": door.secret},
    )
    assert answer.status == 200, answer.text


# --- cache and limits: per key, whatever the door -------------------------------------------


def test_the_azure_door_and_v1_share_a_keys_cache_entries(door: Door) -> None:
    # Decided: the same key asking the same group the same thing gets the same answer whatever
    # door it came by (the endpoint, model group and tenant make the key, not the path). The
    # body's model under azure_deployment is not read, so it splits nothing either.
    messages: Any = [{"role": "user", "content": f"cache {uuid.uuid4().hex}"}]
    first = door.client().chat.completions.with_raw_response.create(
        model="chat", messages=messages, temperature=0
    )
    assert first.headers["x-gateway-cache"] == "miss"
    v1 = openai.OpenAI(base_url=door.url + "/v1", api_key=door.secret, max_retries=0)
    again = v1.chat.completions.with_raw_response.create(model="chat", messages=messages, temperature=0)
    assert again.headers["x-gateway-cache"] == "hit" and again.parse().id == first.parse().id
    azure_v1 = openai.OpenAI(base_url=door.url + "/openai/v1/", api_key=door.secret, max_retries=0)
    assert (
        azure_v1.chat.completions.with_raw_response.create(
            model="chat", messages=messages, temperature=0
        ).headers["x-gateway-cache"]
        == "hit"
    )
    pinned = door.client(azure_deployment="chat")
    raw = pinned.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, temperature=0)
    assert raw.headers["x-gateway-cache"] == "hit"
    # Another key is another tenant: never served this key's answer.
    other = door.client(door.narrow).chat.completions.with_raw_response.create(
        model="chat", messages=messages, temperature=0
    )
    assert other.headers["x-gateway-cache"] == "miss"


def test_a_keys_rate_limit_counts_its_calls_through_every_door(door: Door) -> None:
    azure = door.client(door.slow)
    v1 = openai.OpenAI(base_url=door.url + "/v1", api_key=door.slow, max_retries=0)
    azure_v1 = openai.OpenAI(base_url=door.url + "/openai/v1/", api_key=door.slow, max_retries=0)
    raw = azure.chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    v1.chat.completions.create(model="chat", messages=HI)
    azure_v1.chat.completions.create(model="chat", messages=HI)
    with pytest.raises(openai.RateLimitError) as caught:
        azure.chat.completions.create(model="chat", messages=HI)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) > 0
    assert door.slow not in caught.value.response.text


# --- Azure's content filter annotations reach the Azure client ------------------------------


def test_content_filter_results_of_an_azure_deployment_reach_the_client_whole_and_streamed(
    door: Door,
) -> None:
    client = door.client()
    raw = client.chat.completions.with_raw_response.create(model="filtered", messages=HI)
    answer = json.loads(raw.text)
    assert answer["prompt_filter_results"] == PROMPT_FILTERS
    assert answer["choices"][0]["content_filter_results"] == FILTERS
    assert raw.parse().choices[0].message.content == "Hi"
    chunks = list(client.chat.completions.create(model="filtered", messages=HI, stream=True))
    # Azure's first chunk (no choices, only the prompt's annotations) is relayed as it came.
    first = chunks[0].model_dump()
    assert first["choices"] == [] and first["prompt_filter_results"] == PROMPT_FILTERS
    assert chunks[1].model_dump()["choices"][0]["content_filter_results"] == FILTERS
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert PROVIDER_KEY not in raw.text and PROVIDER_KEY not in door.gateway.output


def test_an_azure_content_filter_refusal_keeps_its_verdict_for_the_client(door: Door) -> None:
    # The openai cookbook's Azure example, as written: the verdict is read from innererror.
    client = door.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="filtered", messages=[{"role": "user", "content": "refuse me"}])
    err = json.loads(caught.value.response.text)
    assert err["error"]["code"] == "content_filter" and caught.value.code == "content_filter"
    assert err["error"]["innererror"] == {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": VERDICT,
    }
    assert err["error"]["param"] == "prompt"
    # Through Azure's v1 API paths and the Responses API too (the same envelope).
    azure_v1 = openai.OpenAI(base_url=door.url + "/openai/v1/", api_key=door.secret, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        azure_v1.responses.create(model="filtered", input="refuse me")
    inner = json.loads(caught.value.response.text)["error"]["innererror"]
    assert inner["content_filter_result"] == VERDICT
    # A verdict far larger than any Azure sends is not relayed; its code still is.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="filtered", messages=[{"role": "user", "content": "refuse me at length"}]
        )
    assert json.loads(caught.value.response.text)["error"]["innererror"] == {
        "code": "ResponsibleAIPolicyViolation"
    }


def test_an_argument_azure_does_not_know_is_named_in_param(door: Door) -> None:
    # (h-xlate) Azure says which argument in its message only; the SDK's error names it in param.
    with pytest.raises(openai.BadRequestError) as caught:
        door.client().chat.completions.create(
            model="filtered", messages=[{"role": "user", "content": "an old api-version"}], store=True
        )
    error: Any = caught.value.body
    assert error["param"] == "store" and error["type"] == "invalid_request_error"
    assert "Unrecognized request argument supplied: store" in error["message"]


def test_an_empty_authorization_leaves_x_api_key_to_be_read_on_the_messages_door(door: Door) -> None:
    # The same rule on the other door with a key header of its own.
    body = {"model": "claude-chat", "max_tokens": 16, "messages": HI}
    headers = {"x-api-key": door.secret, "Authorization": "", "anthropic-version": "2023-06-01"}
    answer = call(door.url + "/v1/messages", body=body, headers=headers)
    assert answer.status == 200, answer.text
    assert json.loads(answer.text)["type"] == "message"
