"""The Azure door: the openai SDK's ``AzureOpenAI`` client pointed at a gateway (``azure_endpoint``),
its key a gateway key in ``api-key``, as an app on Azure OpenAI changes nothing else. Real
processes: fake providers and a gateway in keys mode on loopback."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import PROVIDER_KEY, start_fakes, start_gateway

ADMIN = "e2e-azure-admin-token"
API_VERSION = "2024-10-21"
HI: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Azure:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    secret: str  # team "all": every model
    narrow: str  # team "narrow": only "chat"

    def client(self, secret: str | None = None, **kwargs: Any) -> openai.AzureOpenAI:
        return openai.AzureOpenAI(
            azure_endpoint=self.gateway.url,
            api_key=secret or self.secret,
            api_version=API_VERSION,
            max_retries=0,
            **kwargs,
        )


@dataclass
class Reply:
    status_code: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


def post(url: str, *, json_body: Any = None, content: bytes | None = None, headers: dict[str, str]) -> Reply:
    data = content if content is not None else json.dumps(json_body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return Reply(resp.status, resp.read().decode(), dict(resp.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(), dict(exc.headers))


def _admin(url: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azure]:
    fakes = start_fakes({"gpt": ["--require-key", PROVIDER_KEY], "claude": ["--flavor", "anthropic"]})
    policy = tmp_path_factory.mktemp("azure") / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            providers:
              gpt: {{kind: openai, base_url: "{fakes["gpt"].url}/v1", api_key_env: E2E_PROVIDER_KEY}}
              claude: {{kind: anthropic, base_url: "{fakes["claude"].url}/v1"}}
            models:
              chat: {{deployments: [{{provider: gpt, model: upstream-chat}}]}}
              org/chat: {{deployments: [{{provider: gpt, model: upstream-org}}]}}
              claude-chat: {{deployments: [{{provider: claude, model: claude-upstream}}]}}
              embed: {{deployments: [{{provider: gpt, model: upstream-embed}}]}}
            memory: {{enabled: false}}
            auth:
              teams:
                all: {{}}
                narrow: {{models: [chat]}}
            """
        )
    )
    gateway = None
    try:
        gateway = start_gateway(policy, env={"SOPHIA_ADMIN_TOKEN": ADMIN})
        secret = _admin(gateway.url, "/admin/keys", {"team": "all"})["secret"]
        narrow = _admin(gateway.url, "/admin/keys", {"team": "narrow"})["secret"]
        yield Azure(gateway, fakes, secret, narrow)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


def test_the_azure_client_is_served_with_the_deployment_in_the_path(azure: Azure) -> None:
    raw = azure.client().chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.http_request.url.path == "/openai/deployments/chat/chat/completions"
    assert raw.http_request.url.params["api-version"] == API_VERSION
    assert raw.http_request.headers["api-key"] == azure.secret  # the SDK's way, not Bearer
    assert "authorization" not in raw.http_request.headers
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: hi"
    assert raw.headers["x-gateway-provider"] == "gpt"
    assert raw.headers["x-gateway-model"] == "upstream-chat"


def test_the_path_deployment_wins_over_the_body_model_as_on_azure(azure: Azure) -> None:
    # azure_deployment fixes the path; the body's model is what the code says, unread by Azure.
    client = azure.client(azure_deployment="claude-chat")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.http_request.url.path == "/openai/deployments/claude-chat/chat/completions"
    assert raw.headers["x-gateway-model"] == "claude-upstream"
    assert raw.parse().choices[0].message.content


def test_a_deployment_name_with_a_slash_reaches_its_group(azure: Azure) -> None:
    raw = azure.client().chat.completions.with_raw_response.create(model="org/chat", messages=HI)
    assert raw.http_request.url.raw_path.startswith(b"/openai/deployments/org%2Fchat/")
    assert raw.headers["x-gateway-model"] == "upstream-org"


def test_streams_completions_and_embeddings(azure: Azure) -> None:
    client = azure.client()
    chunks = list(
        client.chat.completions.create(
            model="claude-chat", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    completion = client.completions.create(model="chat", prompt="Say hi", max_tokens=5)
    assert completion.choices[0].text
    vectors = client.embeddings.create(model="embed", input=["a", "b"])
    assert [e.index for e in vectors.data] == [0, 1] and len(vectors.data[0].embedding) > 0


def test_the_key_may_be_a_bearer_token_as_the_sdk_sends_an_azure_ad_token(azure: Azure) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=azure.gateway.url,
        azure_ad_token=azure.secret,
        api_version=API_VERSION,
        max_retries=0,
    )
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.http_request.headers["authorization"] == f"Bearer {azure.secret}"
    assert raw.parse().choices[0].message.content == "Echo: hi"


@pytest.mark.parametrize("secret", ["sk-sg-not-a-key-0123456789", "sk-test-provider-secret", "x y"])
def test_a_wrong_key_is_a_401_naming_the_api_key_header(azure: Azure, secret: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        azure.client(secret).chat.completions.create(model="chat", messages=HI)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_api_key" and "'api-key: <key>'" in error["message"]
    assert secret not in caught.value.response.text


def test_no_key_is_a_401_and_the_api_key_header_is_not_taken_on_openai_paths(azure: Azure) -> None:
    url = azure.gateway.url
    no_key = post(f"{url}/openai/deployments/chat/chat/completions", json_body={"messages": HI}, headers={})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    # /v1 is OpenAI's door: its key is the Bearer token, as OpenAI's SDK sends it.
    openai_path = post(
        f"{url}/v1/chat/completions",
        json_body={"model": "chat", "messages": HI},
        headers={"api-key": azure.secret},
    )
    assert openai_path.status_code == 401


def test_api_version_is_not_required(azure: Azure) -> None:
    answer = post(
        f"{azure.gateway.url}/openai/deployments/chat/chat/completions",
        json_body={"messages": HI},  # no model either: the path names it
        headers={"api-key": azure.secret},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: hi"


def test_a_deployment_outside_the_keys_models_is_a_404_naming_only_its_models(azure: Azure) -> None:
    client = azure.client(azure.narrow)
    assert client.chat.completions.create(model="chat", messages=HI).choices[0].message.content
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="claude-chat", messages=HI)
    message = caught.value.response.json()["error"]["message"]
    assert "claude-chat" in message and "org/chat" not in message
    assert [m.id for m in client.models.list()] == ["chat"]
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("claude-chat")


def test_bad_bodies_get_openais_envelope(azure: Azure) -> None:
    client = azure.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=HI, temperature=7)
    assert caught.value.response.json()["error"]["param"] == "temperature"
    url = f"{azure.gateway.url}/openai/deployments/chat/chat/completions?api-version={API_VERSION}"
    headers = {"api-key": azure.secret, "Content-Type": "application/json"}
    for body in (b"[1, 2]", b"{not json", b'{"messages": "hi"}'):
        answer = post(url, content=body, headers=headers)
        assert answer.status_code == 400, (body, answer.text)
        assert set(answer.json()["error"]) >= {"message", "type", "param", "code"}
    unknown = post(f"{azure.gateway.url}/openai/deployments/chat/images/masks", json_body={}, headers=headers)
    assert unknown.status_code == 404 and "Unknown path" in unknown.json()["error"]["message"]


def test_the_responses_api_on_azures_paths(azure: Azure) -> None:
    client = azure.client()
    response = client.responses.create(model="chat", input="hello", store=True)
    assert response.output_text == "Echo: hello"
    kept = client.responses.retrieve(response.id)
    assert kept.id == response.id and kept.output_text == "Echo: hello"
    assert [item.type for item in client.responses.input_items.list(response.id)] == ["message"]
    assert client.responses.input_tokens.count(model="chat", input="hello").input_tokens >= 1
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    # Another team's key cannot see a kept response.
    other = client.responses.create(model="chat", input="mine", store=True)
    with pytest.raises(openai.NotFoundError):
        azure.client(azure.narrow).responses.retrieve(other.id)


def test_no_provider_key_leaves_and_metrics_name_the_route_not_the_deployment(azure: Azure) -> None:
    answer = post(
        f"{azure.gateway.url}/openai/deployments/chat/chat/completions?api-version={API_VERSION}",
        json_body={"messages": HI},
        headers={"api-key": azure.secret},
    )
    assert answer.status_code == 200
    assert PROVIDER_KEY not in answer.text and PROVIDER_KEY not in str(answer.headers)
    try:
        with urllib.request.urlopen(f"{azure.gateway.url}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    except urllib.error.HTTPError as exc:  # pragma: no cover - the message says why
        raise AssertionError(exc.read()) from exc
    assert 'endpoint="/openai/deployments/{deployment}/chat/completions"' in metrics
    assert "/openai/deployments/chat/" not in metrics
    assert PROVIDER_KEY not in metrics and azure.secret not in metrics
    assert azure.secret not in azure.gateway.output and PROVIDER_KEY not in azure.gateway.output


def test_the_openai_door_on_the_same_gateway_is_unchanged(azure: Azure) -> None:
    client = openai.OpenAI(base_url=azure.gateway.url + "/v1", api_key=azure.secret, max_retries=0)
    assert client.chat.completions.create(model="chat", messages=HI).choices[0].message.content == "Echo: hi"
