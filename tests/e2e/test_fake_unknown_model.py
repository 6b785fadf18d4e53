"""A deployment naming a model its provider does not serve, over real HTTP, on each provider kind.

The fakes run with ``--models`` and so refuse any other model with the real API's 404 (OpenAI's
``model_not_found``, Azure's ``DeploymentNotFound``, Anthropic's ``not_found_error``, Gemini's
``NOT_FOUND``). The gateway takes that 404 for its own configuration (errors.py,
``UpstreamModelMissing``): a group whose first deployment names such a model fails over to the
next one (200, ``x-gateway-fallback: true``), and a group with only that deployment answers 502
``provider_model_not_found`` with ``x-should-retry: false``, so neither official SDK retries it
nor calls it the client's own missing model (no ``NotFoundError``).
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

FAKES = {
    # The OpenAI fake also answers Azure's deployment paths: a deployment name is a model name.
    "oai": ["--models", "gpt-served,azure-served"],
    "ant": ["--flavor", "anthropic", "--models", "claude-served"],
    "gem": ["--flavor", "gemini", "--models", "gemini-served"],
}
KINDS = ("openai", "azure", "anthropic", "gemini")
FAKE_OF = {"openai": "oai", "azure": "oai", "anthropic": "ant", "gemini": "gem"}
SERVED = {
    "openai": "gpt-served",
    "azure": "azure-served",
    "anthropic": "claude-served",
    "gemini": "gemini-served",
}
# Where the gateway sends a request for a deployment's model on each kind.
UPSTREAM_PATH = {
    "openai": "/v1/chat/completions",
    "azure": "/openai/deployments/{model}/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/{model}:generateContent",
}
MESSAGES: Any = [{"role": "user", "content": "which model are you"}]


@dataclass
class FakeModelStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def openai(self) -> openai.OpenAI:
        # The SDK's default retries: x-should-retry: false must be what stops them.
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=2, timeout=10
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key="client-key", max_retries=2, timeout=10)

    def fake(self, name: str, path: str, post: bool = False) -> dict[str, Any]:
        request = urllib.request.Request(self.fakes[name].url + path, data=b"{}" if post else None)
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        for name in self.fakes:
            self.fake(name, "/_fake/reset", post=True)

    def requests_at(self, kind: str) -> int:
        """How many requests the kind's fake answered since the last reset."""
        return int(self.fake(FAKE_OF[kind], "/_fake/stats")["requests"])

    def last_model(self, kind: str) -> str:
        """The model the kind's fake was last asked for: in the path (Azure, Gemini) or the body."""
        last = self.fake(FAKE_OF[kind], "/_fake/stats")["last_request"]
        assert isinstance(last, dict)
        if kind in ("openai", "anthropic"):
            return str(last["body"]["model"])
        for model in (SERVED[kind], f"{kind}-not-served"):
            if last["path"] == UPSTREAM_PATH[kind].format(model=model):
                return model
        raise AssertionError(f"unexpected path {last['path']}")


def policy(fakes: dict[str, ManagedProcess]) -> str:
    providers = textwrap.dedent(
        f"""\
        providers:
          openai: {{kind: openai, base_url: {fakes["oai"].url}/v1}}
          azure: {{kind: azure, base_url: {fakes["oai"].url}, api_version: 2024-10-21}}
          anthropic: {{kind: anthropic, base_url: {fakes["ant"].url}/v1}}
          gemini: {{kind: gemini, base_url: {fakes["gem"].url}/v1beta}}
        models:
        """
    )
    groups = []
    for kind in KINDS:
        missing = f"{{provider: {kind}, model: {kind}-not-served}}"
        served = f"{{provider: {kind}, model: {SERVED[kind]}}}"
        groups.append(
            f"  {kind}-missing-then-served: {{strategy: ordered, deployments: [{missing}, {served}]}}\n"
        )
        groups.append(f"  {kind}-missing: {{deployments: [{missing}]}}\n")
    head = textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        memory: {enabled: false}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        """
    )
    return head + providers + "".join(groups)


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeModelStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("fakemodel") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path)
        yield FakeModelStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_the_provider_does_not_serve_fails_over_to_the_next_deployment(
    fstack: FakeModelStack, kind: str
) -> None:
    fstack.reset()
    raw = fstack.openai().chat.completions.with_raw_response.create(
        model=f"{kind}-missing-then-served", messages=MESSAGES
    )
    completion = raw.parse()
    assert raw.http_response.status_code == 200
    assert completion.choices[0].message.content == "Echo: which model are you"
    assert raw.headers["x-gateway-fallback"] == "true"
    assert raw.headers["x-gateway-model"] == SERVED[kind] and raw.headers["x-gateway-attempts"] == "2"
    # The fake refused the first deployment's model and answered the second's: two requests.
    assert fstack.requests_at(kind) == 2 and fstack.last_model(kind) == SERVED[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_a_group_whose_only_model_is_not_served_is_a_502_the_openai_sdk_does_not_retry(
    fstack: FakeModelStack, kind: str
) -> None:
    fstack.reset()
    with pytest.raises(openai.InternalServerError) as caught:
        fstack.openai().chat.completions.create(model=f"{kind}-missing", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 502 and error.code == "provider_model_not_found"
    assert error.response.headers["x-should-retry"] == "false"
    # The SDK numbers its attempts: the one that failed was the first, so the only one.
    assert error.response.request.headers["x-stainless-retry-count"] == "0"
    assert "the gateway's configuration, not your request" in error.message
    assert error.response.headers["x-gateway-attempts"] == "1"
    # One upstream request: the 404 is not retried on the deployment that sent it.
    assert fstack.requests_at(kind) == 1 and fstack.last_model(kind) == f"{kind}-not-served"


@pytest.mark.parametrize("kind", KINDS)
def test_the_anthropic_sdk_sees_a_502_not_its_own_missing_model(fstack: FakeModelStack, kind: str) -> None:
    fstack.reset()
    with pytest.raises(anthropic.APIStatusError) as caught:
        fstack.anthropic().messages.create(model=f"{kind}-missing", max_tokens=32, messages=MESSAGES)
    error = caught.value
    assert not isinstance(error, anthropic.NotFoundError)
    assert error.status_code == 502 and error.response.headers["x-should-retry"] == "false"
    assert error.response.request.headers["x-stainless-retry-count"] == "0"
    assert isinstance(error.body, dict) and error.body["type"] == "error"
    assert "the gateway's configuration, not your request" in error.body["error"]["message"]
    assert fstack.requests_at(kind) == 1
