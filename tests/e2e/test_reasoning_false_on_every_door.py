"""``deployments[].reasoning: false`` on the chat, completions and Responses doors (h-reason): a
client's effort (chat's ``reasoning_effort``, the Responses door's ``reasoning.effort``) is not
sent to a deployment declared so, per attempt, so a mixed group's fallback to a model without
reasoning serves it instead of relaying that model's 400. Sent with the official ``openai`` SDK to
groups ``ordered: [a reasoning deployment failing with 503, a reasoning: false one]``, asserting
what each fake upstream received and that the response's header and access log say so. Unset,
the effort passes through as before (no guess by name on these doors)."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

FAKES = {
    "down": ["--error-rate", "1", "--error-status", "503"],  # a reasoning model (o3), down
    "plain": ["--no-reasoning"],  # gpt-4o: refuses reasoning_effort
    "gem": ["--flavor", "gemini"],
}
HEADER = "x-gateway-reasoning-effort"


def _policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, path: str) -> str:
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {fakes[name].url}{path}\n"
            "    timeouts: {connect_s: 1, first_byte_s: 5, total_s: 20}\n"
        )

    head = textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
    )
    models = textwrap.dedent(
        """\
        models:
          o3-then-4o:
            strategy: ordered
            deployments:
              - {provider: down, model: o3}
              - {provider: plain, model: gpt-4o, reasoning: false}
          o3-then-gemini:
            strategy: ordered
            deployments:
              - {provider: down, model: o3}
              - {provider: gem, model: gemini-2.0-flash, reasoning: false}
          o3-then-4o-unsaid:
            strategy: ordered
            deployments: [{provider: down, model: o3}, {provider: plain, model: gpt-4o}]
          gemini-25: {deployments: [{provider: gem, model: gemini-2.5-flash}]}
          gemini-3: {deployments: [{provider: gem, model: gemini-3-pro-preview}]}
        """
    )
    return (
        head
        + provider("down", "openai", "/v1")
        + provider("plain", "openai", "/v1")
        + provider("gem", "gemini", "/v1beta")
        + models
    )


@dataclass
class Stack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
        )

    def last_body(self, fake: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())["last_request"]["body"]
        return body

    def reset(self) -> None:
        for fake in self.fakes.values():
            request = urllib.request.Request(fake.url + "/_fake/reset", data=b"", method="POST")
            urllib.request.urlopen(request, timeout=5).close()

    def access_line(self, request_id: str) -> dict[str, Any]:
        """The access log's line for ``request_id``, waited for (lines are written in batches)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.gateway.output.splitlines():
                if request_id in line and line.startswith("{"):
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("msg") == "request" and entry.get("request_id") == request_id:
                        return entry
            time.sleep(0.02)
        raise AssertionError(f"no access log line for {request_id}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("reasoning") / "policy.yaml"
    path.write_text(_policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path)
        yield Stack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


ASK: Any = [{"role": "user", "content": "think about this"}]
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])


def _chat(stack: Stack, model: str, streamed: bool, **extra: Any) -> tuple[str, dict[str, str]]:
    """Ask ``model`` on the chat door with an effort: (the answer's text, the response headers)."""
    chat = stack.client().chat.completions
    if streamed:
        with chat.with_streaming_response.create(
            model=model, messages=ASK, reasoning_effort="high", stream=True, **extra
        ) as response:
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
            )
            return text, dict(response.headers)
    raw = chat.with_raw_response.create(model=model, messages=ASK, reasoning_effort="high", **extra)
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers)


@STREAMED
def test_the_chat_doors_effort_is_withheld_from_the_fallback_declared_without_reasoning(
    stack: Stack, streamed: bool
) -> None:
    """o3 is down (503); gpt-4o, declared ``reasoning: false``, serves without the effort (it
    refuses one with a 400, which no failover helps). o3's attempt still got it."""
    stack.reset()
    text, headers = _chat(stack, "o3-then-4o", streamed)
    assert text and headers["x-gateway-model"] == "gpt-4o" and headers["x-gateway-fallback"] == "true"
    assert stack.last_body("down")["reasoning_effort"] == "high"
    assert "reasoning_effort" not in stack.last_body("plain")
    assert headers[HEADER] == "dropped"
    line = stack.access_line(headers["x-request-id"])
    assert line["effort_dropped"] is True and line["upstream_model"] == "gpt-4o"


@STREAMED
def test_gemini_declared_without_reasoning_gets_no_thinking_budget(stack: Stack, streamed: bool) -> None:
    """On Gemini the effort becomes a thinking budget (Google's mapping): withheld likewise."""
    stack.reset()
    text, headers = _chat(stack, "o3-then-gemini", streamed)
    assert text and headers["x-gateway-model"] == "gemini-2.0-flash"
    assert stack.last_body("down")["reasoning_effort"] == "high"
    assert "thinkingConfig" not in stack.last_body("gem").get("generationConfig", {})
    assert headers[HEADER] == "dropped"


def test_a_chat_clients_thinking_budget_is_withheld_from_gemini_declared_without_reasoning(
    stack: Stack,
) -> None:
    """``thinking_budget`` (not OpenAI's: the Messages door's key, which the Gemini adapter reads
    from any chat body) is withheld as the effort is (h-effort2); unset, it reaches Gemini 2.5."""
    stack.reset()
    raw = stack.client().chat.completions.with_raw_response.create(
        model="o3-then-gemini", messages=ASK, extra_body={"thinking_budget": 2048}
    )
    assert raw.parse().choices[0].message.content and raw.headers["x-gateway-model"] == "gemini-2.0-flash"
    assert stack.last_body("down")["thinking_budget"] == 2048
    assert "thinkingConfig" not in stack.last_body("gem").get("generationConfig", {})
    assert raw.headers[HEADER] == "dropped"
    stack.client().chat.completions.create(
        model="gemini-25", messages=ASK, extra_body={"thinking_budget": 2048}
    )
    assert stack.last_body("gem")["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}


def test_unsaid_the_effort_passes_through_and_its_400_is_relayed(stack: Stack) -> None:
    """No guess by name on the chat door: gpt-4o unset gets the client's effort, as before (and
    refuses it), and a reasoning model unset gets it (Gemini 2.5: the budget)."""
    stack.reset()
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(stack, "o3-then-4o-unsaid", False)
    assert "Unsupported parameter: 'reasoning_effort'" in caught.value.message
    assert stack.last_body("plain")["reasoning_effort"] == "high"
    _, headers = _chat(stack, "gemini-25", False)
    assert stack.last_body("gem")["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 24576
    assert HEADER not in headers


@STREAMED
def test_gemini_3_gets_the_chat_doors_effort_as_a_thinking_level(stack: Stack, streamed: bool) -> None:
    """Gemini 3 takes ``thinkingLevel``, not a budget (the fake refuses both together, as the API
    does, and a level to 2.5): ``high`` is level "high" (h-effort2)."""
    stack.reset()
    text, headers = _chat(stack, "gemini-3", streamed)
    assert text and HEADER not in headers
    assert stack.last_body("gem")["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "high"}


def test_a_request_without_an_effort_is_not_marked(stack: Stack) -> None:
    stack.reset()
    raw = stack.client().chat.completions.with_raw_response.create(model="o3-then-4o", messages=ASK)
    assert raw.parse().choices[0].message.content and HEADER not in raw.headers


def test_the_completions_doors_effort_is_withheld_likewise(stack: Stack) -> None:
    """The legacy completions API has no effort, but a client may send one (``extra_body``)."""
    stack.reset()
    raw = stack.client().completions.with_raw_response.create(
        model="o3-then-4o", prompt="think", extra_body={"reasoning_effort": "low"}
    )
    assert raw.parse().choices[0].text and raw.headers[HEADER] == "dropped"
    assert stack.last_body("down")["reasoning_effort"] == "low"
    assert "reasoning_effort" not in stack.last_body("plain")


@STREAMED
@pytest.mark.parametrize("model", ["o3-then-4o", "o3-then-gemini"])
def test_the_responses_doors_effort_is_withheld_from_the_fallback(
    stack: Stack, model: str, streamed: bool
) -> None:
    """The Responses door's ``reasoning.effort`` (its chat translation's ``reasoning_effort``)."""
    stack.reset()
    responses = stack.client().responses
    if streamed:
        with responses.with_streaming_response.create(
            model=model, input="think about this", reasoning={"effort": "medium"}, stream=True
        ) as streamed_response:
            events = list(streamed_response.parse())
            headers = dict(streamed_response.headers)
        completed = [e for e in events if e.type == "response.completed"]
        assert len(completed) == 1 and completed[0].response.output_text
    else:
        raw = responses.with_raw_response.create(
            model=model, input="think about this", reasoning={"effort": "medium"}
        )
        assert raw.parse().output_text and raw.parse().status == "completed"
        headers = dict(raw.headers)
    assert headers[HEADER] == "dropped"
    assert stack.last_body("down")["reasoning_effort"] == "medium"
    if model == "o3-then-4o":
        assert "reasoning_effort" not in stack.last_body("plain")
    else:
        assert "thinkingConfig" not in stack.last_body("gem").get("generationConfig", {})
