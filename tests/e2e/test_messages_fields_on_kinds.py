"""Messages fields that were dropped on translated kinds (h-msgs3, "Found, not fixed") and are now
translated or refused by name (h-msgs4), sent with the official ``anthropic`` SDK to a group of
each kind, asserting what the fake upstream received: ``output_config.effort`` (OpenAI's
``reasoning_effort``; Gemini's thinking budget as Google maps the efforts), adaptive thinking
(Gemini's dynamic thinking, ``thinkingBudget: -1``; nothing for OpenAI, whose reasoning models
reason by default), and ``context_management`` edits, an ``inference_geo`` other than
``global`` and ``output_config.task_budget`` (refused by name on the OpenAI and Gemini kinds,
served by a mixed group's Anthropic deployment). The Anthropic kind gets them all unchanged."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.e2e.conftest import start_fakes, start_gateway
from tests.e2e.test_messages_api import ANTHROPIC_KEY, FAKES, KINDS, MessagesStack, policy

ASK: Any = [{"role": "user", "content": "hello there"}]
EFFORTS = ["low", "medium", "high", "xhigh", "max"]
# Google's mapping of OpenAI's efforts to Gemini budgets (1K, 8K, 24K; xhigh and max: the most
# every 2.5 model takes), as the chat door already sends them.
GEMINI_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}
CLEAR_TOOL_USES: Any = {"edits": [{"type": "clear_tool_uses_20250919"}]}
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
# A group whose first deployment is OpenAI and second Anthropic (ordered): what only Anthropic
# can honour is served by the second.
# An OpenAI deployment whose model does not reason (gpt-4o): it refuses ``reasoning_effort``.
PLAIN = """\
  plain:
    kind: openai
    base_url: {url}/v1
    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}
  az:
    kind: azure
    base_url: {gpt}
    api_version: 2025-04-01-preview  # (reasoning_effort from 2024-12-01-preview)
    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}
"""
MIXED = """\
  gpt-then-claude:
    strategy: ordered
    deployments: [{provider: gpt, model: gpt-test}, {provider: claude, model: claude-test}]
  gpt-plain: {deployments: [{provider: plain, model: gpt-plain, reasoning: false}]}
  gpt-plain-unsaid: {deployments: [{provider: plain, model: gpt-plain}]}
  o-unsaid: {deployments: [{provider: plain, model: o3-mini}]}
  gemini-unsaid: {deployments: [{provider: gem, model: gemini-2.0-flash}]}
  gemini-25-unsaid: {deployments: [{provider: gem, model: gemini-2.5-flash}]}
  gemini-plain: {deployments: [{provider: gem, model: gemini-plain, reasoning: false}]}
  gemini-3-unsaid: {deployments: [{provider: gem, model: gemini-3-pro-preview}]}
  gemini-3-flash-unsaid: {deployments: [{provider: gem, model: gemini-3-flash-preview}]}
  azure: {deployments: [{provider: az, model: gpt-azure}]}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MessagesStack]:
    fakes = start_fakes({**FAKES, "plain": ["--no-reasoning"]})
    path: Path = tmp_path_factory.mktemp("fields") / "policy.yaml"
    text = policy(fakes).replace(
        "models:\n", PLAIN.format(url=fakes["plain"].url, gpt=fakes["gpt"].url) + "models:\n", 1
    )
    # The fakes' model names are no reasoning model's: the policy says they reason (unsaid, a
    # translated effort reaches only a model named as a reasoning family's: ``reasons_by_name``).
    for model in ("gpt-test", "gemini-test"):
        text = text.replace(f"model: {model}}}", f"model: {model}, reasoning: true}}")
    path.write_text(text + MIXED.replace("model: gpt-azure}", "model: gpt-azure, reasoning: true}"))
    gateway = None
    try:
        gateway = start_gateway(path, env={"E2E_ANTHROPIC_KEY": ANTHROPIC_KEY})
        yield MessagesStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
            assert ANTHROPIC_KEY not in gateway.output
        for fake in fakes.values():
            fake.stop()


UPSTREAM = {
    "claude": "claude",
    "gpt": "gpt",
    "gemini": "gem",
    "gpt-then-claude": "claude",
    "gpt-plain": "plain",
    "gpt-plain-unsaid": "plain",
    "o-unsaid": "plain",
    "gemini-plain": "gem",
    "gemini-unsaid": "gem",
    "gemini-25-unsaid": "gem",
    "gemini-3-unsaid": "gem",
    "gemini-3-flash-unsaid": "gem",
    "azure": "gpt",
}


def _sent(stack: MessagesStack, model: str, kwargs: Any, streamed: bool = False) -> dict[str, Any]:
    """Ask ``model`` with the beta client (it takes every field here), check the answer, and
    return the body the group's fake received."""
    beta = stack.client().beta.messages
    kwargs = {"model": model, "max_tokens": 30000, "messages": ASK, **kwargs}
    if streamed:
        with beta.stream(**kwargs) as stream:
            message = stream.get_final_message()
    else:
        message = beta.create(**kwargs)
    assert message.type == "message" and message.content[-1].type == "text"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    _, sent = stack.last_request(UPSTREAM[model])
    return sent


def _refused(stack: MessagesStack, model: str, kwargs: Any, streamed: bool = False) -> str:
    beta = stack.client().beta.messages
    kwargs = {"model": model, "max_tokens": 1000, "messages": ASK, **kwargs}
    with pytest.raises(anthropic.BadRequestError) as caught:
        if streamed:
            with beta.stream(**kwargs) as stream:
                stream.get_final_message()
        else:
            beta.create(**kwargs)
    body: Any = caught.value.body
    assert caught.value.status_code == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert ANTHROPIC_KEY not in caught.value.response.text
    return str(body["error"]["message"])


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("model", [*KINDS, "azure"])
def test_effort_reaches_every_kind(stack: MessagesStack, model: str, effort: str) -> None:
    """``output_config.effort`` was dropped for OpenAI and Gemini: now OpenAI's
    ``reasoning_effort`` (the same five words; the fake refuses one OpenAI does not know) and
    Gemini's thinking budget; Anthropic gets ``output_config`` as sent."""
    sent = _sent(stack, model, {"output_config": {"effort": effort}})
    if model == "claude":
        assert sent["output_config"] == {"effort": effort}
    elif model in ("gpt", "azure"):
        assert sent["reasoning_effort"] == effort and "output_config" not in sent
        # A reasoning deployment's bound (OpenAI's reasoning models refuse ``max_tokens``: the
        # fake too, for the names it knows as theirs)
        assert sent["max_completion_tokens"] == 30000 and "max_tokens" not in sent
        path, _ = stack.last_request("gpt")
        assert path.startswith("/openai/deployments/gpt-azure/") == (model == "azure")
    else:
        assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": GEMINI_BUDGETS[effort]}


@STREAMED
@pytest.mark.parametrize("model", KINDS)
def test_adaptive_thinking_on_every_kind(stack: MessagesStack, model: str, streamed: bool) -> None:
    """Adaptive thinking ("Claude decides when and how much to think") is Gemini's dynamic
    thinking (``thinkingBudget: -1``); OpenAI's reasoning models reason at their default effort
    unasked, so nothing is added; with an effort, the effort is sent."""
    sent = _sent(stack, model, {"thinking": {"type": "adaptive"}}, streamed)
    if model == "claude":
        assert sent["thinking"] == {"type": "adaptive"}
    elif model == "gpt":
        assert "reasoning_effort" not in sent and "thinking" not in sent
    else:
        assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": -1}
    sent = _sent(
        stack, model, {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, streamed
    )
    if model == "claude":
        assert (sent["thinking"], sent["output_config"]) == ({"type": "adaptive"}, {"effort": "low"})
    elif model == "gpt":
        assert sent["reasoning_effort"] == "low"
    else:
        assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024}


@STREAMED
def test_gemini_3_is_sent_a_thinking_level_for_an_effort_or_adaptive_thinking(
    stack: MessagesStack, streamed: bool
) -> None:
    """Gemini 3 takes ``thinkingLevel`` (a budget "for backwards compatibility"; the fake refuses
    both in one request, as the API does): the effort is a level (Pro: "low" or "high"; Flash
    also "medium"), adaptive thinking the dynamic default "high"; an enabled thinking's budget
    in tokens stays a budget (h-effort2)."""

    def thinking(model: str, kwargs: Any) -> Any:
        return _sent(stack, model, kwargs, streamed)["generationConfig"]["thinkingConfig"]

    assert thinking("gemini-3-unsaid", {"output_config": {"effort": "low"}}) == {"thinkingLevel": "low"}
    assert thinking("gemini-3-unsaid", {"output_config": {"effort": "medium"}}) == {"thinkingLevel": "high"}
    assert thinking("gemini-3-flash-unsaid", {"output_config": {"effort": "medium"}}) == {
        "thinkingLevel": "medium"
    }
    assert thinking("gemini-3-unsaid", {"thinking": {"type": "adaptive"}}) == {"thinkingLevel": "high"}
    adaptive_low: Any = {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}
    assert thinking("gemini-3-unsaid", adaptive_low) == {"thinkingLevel": "low"}
    enabled: Any = {
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "max"},
    }
    assert thinking("gemini-3-unsaid", enabled) == {"thinkingBudget": 2048}
    assert thinking("gemini-25-unsaid", {"output_config": {"effort": "low"}}) == {"thinkingBudget": 1024}


def test_a_budget_or_thinking_off_decides_gemini_over_effort(stack: MessagesStack) -> None:
    """Gemini has one knob: an enabled thinking's budget is more precise than an effort, and
    thinking turned off sends no budget (the model's default, as before), effort or not. OpenAI
    still gets the effort, which also governs text and tool calls."""
    both: Any = {"thinking": {"type": "enabled", "budget_tokens": 2048}, "output_config": {"effort": "max"}}
    assert _sent(stack, "gemini", both)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}
    off: Any = {"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}
    assert "thinkingConfig" not in _sent(stack, "gemini", off).get("generationConfig", {})
    assert _sent(stack, "gpt", off)["reasoning_effort"] == "high"


@pytest.mark.parametrize("model", ["gpt-plain", "gemini-plain"])
def test_a_deployment_without_reasoning_gets_no_effort_nor_budget(stack: MessagesStack, model: str) -> None:
    """``reasoning: false`` in the policy: the operator says the model does not reason (gpt-4o,
    many open models), which would refuse ``reasoning_effort`` or a thinking budget (clients such
    as Claude Code send an effort on every turn): none is sent, and the request is answered."""
    for ask in (
        {"output_config": {"effort": "max"}},
        {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}},
        {"thinking": {"type": "enabled", "budget_tokens": 2048}},
    ):
        sent = _sent(stack, model, ask)
        assert "reasoning_effort" not in sent
        assert "thinkingConfig" not in sent.get("generationConfig", {})


@pytest.mark.parametrize(
    ("model", "dropped"),
    [
        ("gpt-plain", True),
        ("gpt-plain-unsaid", True),
        ("gemini-plain", True),
        ("gpt", False),
        ("claude", False),
    ],
)
def test_the_answer_says_when_the_effort_was_withheld(
    stack: MessagesStack, model: str, dropped: bool
) -> None:
    """``x-gateway-reasoning-effort: dropped`` (h-reason), as on the other doors: the effort was
    not sent to the model that answered (declared ``reasoning: false``, or unset and not named
    as a reasoning model's); absent where it was sent (``reasoning: true``; Anthropic natively)."""
    raw = stack.client().beta.messages.with_raw_response.create(
        model=model, max_tokens=1000, messages=ASK, output_config={"effort": "high"}
    )
    assert raw.parse().stop_reason == "end_turn"
    assert raw.headers.get("x-gateway-reasoning-effort") == ("dropped" if dropped else None)
    plain = stack.client().beta.messages.with_raw_response.create(model=model, max_tokens=1000, messages=ASK)
    assert plain.headers.get("x-gateway-reasoning-effort") is None  # no effort asked


def test_unsaid_an_effort_reaches_only_a_model_named_as_a_reasoning_one(stack: MessagesStack) -> None:
    """``reasoning`` unset: a model whose name is no reasoning family's (gpt-4o, an open model, an
    Azure deployment's own name) is sent no effort, so that what it served before (the effort
    dropped) is not refused now (Claude Code sends an effort every turn); one named as a reasoning
    family's (o3-mini, gemini-2.5-*) gets it. The fake ``plain`` refuses ``reasoning_effort`` as
    gpt-4o does, whatever the model's name: that o3-mini is refused proves the effort was sent."""
    effort = {"output_config": {"effort": "high"}}
    assert "reasoning_effort" not in _sent(stack, "gpt-plain-unsaid", effort)
    assert "Unsupported parameter: 'reasoning_effort'" in _refused(stack, "o-unsaid", effort)
    assert "thinkingConfig" not in _sent(stack, "gemini-unsaid", effort).get("generationConfig", {})
    sent = _sent(stack, "gemini-25-unsaid", effort)
    assert sent["generationConfig"]["thinkingConfig"]["thinkingBudget"] == GEMINI_BUDGETS["high"]
    # A budget asked for in numbers is sent as before, whatever the name.
    asked = {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 4096}
    sent = _sent(stack, "gemini-unsaid", asked)
    assert sent["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 2048


# What no chat provider can honour: (the request's fields, the words naming it).
ANTHROPIC_ONLY: dict[str, tuple[dict[str, Any], str]] = {
    "context_management edits": (
        {"context_management": CLEAR_TOOL_USES, "betas": ["context-management-2025-06-27"]},
        "'context_management' (server-side context editing)",
    ),
    "inference_geo us": ({"inference_geo": "us"}, "'inference_geo' other than 'global'"),
    "compaction": ({"compaction": {"type": "summarize"}}, "'compaction'"),
    "output_config task_budget": (
        {"output_config": {"effort": "high", "task_budget": {"type": "tokens", "total": 400000}}},
        "'output_config.task_budget'",
    ),
}


@STREAMED
@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(ANTHROPIC_ONLY))
def test_what_only_anthropic_honours_is_refused_by_name_elsewhere(
    stack: MessagesStack, case: str, model: str, streamed: bool
) -> None:
    """Each was answered by the OpenAI and Gemini kinds with the field dropped: context never
    cleared, inference anywhere, no countdown. Now the Anthropic kind gets the field unchanged
    and the others refuse it naming their kind (no upstream call)."""
    kwargs, words = ANTHROPIC_ONLY[case]
    if model == "claude":
        sent = _sent(stack, model, kwargs, streamed)
        for name, value in kwargs.items():
            if name != "betas":
                assert sent[name] == value
        return
    kind = {"gpt": "openai", "gemini": "gemini"}[model]
    before = _requests(stack, UPSTREAM[model])
    message = _refused(stack, model, kwargs, streamed)
    assert f"Provider kind '{kind}' does not support {words}" in message
    assert _requests(stack, UPSTREAM[model]) == before


@pytest.mark.parametrize("case", list(ANTHROPIC_ONLY))
def test_a_mixed_group_serves_it_from_its_anthropic_deployment(stack: MessagesStack, case: str) -> None:
    """The OpenAI deployment comes first and refuses before any call; the group goes on to its
    Anthropic deployment, which gets the field unchanged."""
    kwargs, _ = ANTHROPIC_ONLY[case]
    before = _requests(stack, "gpt")
    sent = _sent(stack, "gpt-then-claude", kwargs)
    assert all(sent[name] == value for name, value in kwargs.items() if name != "betas")
    assert _requests(stack, "gpt") == before


@pytest.mark.parametrize("model", KINDS)
def test_what_asks_for_nothing_is_served_by_every_kind(stack: MessagesStack, model: str) -> None:
    """``inference_geo: global`` (Anthropic's default: "may run in any available geography")
    and context management without edits ask nothing another provider cannot honour."""
    sent = _sent(stack, model, {"inference_geo": "global", "context_management": {"edits": []}})
    if model == "claude":
        assert (sent["inference_geo"], sent["context_management"]) == ("global", {"edits": []})
    else:
        assert "inference_geo" not in sent and "context_management" not in sent


SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("model", KINDS)
def test_the_structured_outputs_betas_output_format_is_translated(stack: MessagesStack, model: str) -> None:
    """The beta's top-level ``output_format`` (before ``output_config.format``) was dropped on
    translated kinds: a prose answer to a client expecting JSON. Now it is translated as
    ``output_config.format`` is."""
    fmt = {"type": "json_schema", "schema": SCHEMA}
    answer = stack.client().messages.create(
        model=model,
        max_tokens=200,
        messages=ASK,
        extra_body={"output_format": fmt},
        extra_headers={"anthropic-beta": "structured-outputs-2025-11-13"},
    )
    _, sent = stack.last_request(UPSTREAM[model])
    if model == "claude":
        assert sent["output_format"] == fmt
        return
    assert answer.content[0].type == "text" and "city" in json.loads(answer.content[0].text)
    if model == "gpt":
        assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    else:
        assert sent["generationConfig"]["responseMimeType"] == "application/json"


@pytest.mark.parametrize("model", KINDS)
def test_an_unknown_effort_is_refused_on_every_kind(stack: MessagesStack, model: str) -> None:
    """Anthropic refuses an effort it does not know; a translated kind dropped it and answered."""
    before = _requests(stack, UPSTREAM[model])
    message = _refused(stack, model, {"output_config": {"effort": "extreme"}})
    assert "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'" in message
    assert _requests(stack, UPSTREAM[model]) == before  # the door's refusal: no call made


def test_the_fake_openai_refuses_a_reasoning_effort_openai_does_not_know(stack: MessagesStack) -> None:
    """OpenAI's 400 for an unknown value (the fake accepted any)."""
    body = {"model": "gpt-test", "messages": ASK, "reasoning_effort": "extreme"}
    request = urllib.request.Request(
        stack.fakes["gpt"].url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    error = json.loads(caught.value.read())["error"]
    assert error["param"] == "reasoning_effort" and error["code"] == "invalid_value"
    assert error["message"].startswith("Invalid value: 'extreme'. Supported values are: 'none', 'minimal'")


def _requests(stack: MessagesStack, fake: str) -> int:
    with urllib.request.urlopen(stack.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["requests"])


def test_a_reasoning_model_named_so_gets_max_completion_tokens_not_max_tokens(stack: MessagesStack) -> None:
    """Every Messages request (``max_tokens`` is required there) to an OpenAI reasoning model was
    refused: "Unsupported parameter: 'max_tokens' is not supported with this model" (an outside
    probe). A model that does not reason keeps ``max_tokens``."""
    sent = _sent(stack, "o-unsaid", {})
    assert sent["max_completion_tokens"] == 30000 and "max_tokens" not in sent
    sent = _sent(stack, "gpt-plain-unsaid", {})
    assert sent["max_tokens"] == 30000 and "max_completion_tokens" not in sent


def test_the_chat_door_sends_max_tokens_as_max_completion_tokens_to_openais_reasoning_models(
    stack: MessagesStack,
) -> None:
    """OpenAI's reasoning models refuse ``max_tokens`` (the fake too, for their names): a chat
    client's bound reaches them as ``max_completion_tokens``, so a group mixing them with other
    models serves the same request on either; other models get it as sent."""
    import openai

    client = openai.OpenAI(base_url=stack.gateway.url + "/v1", api_key="k", max_retries=0)
    for model, fake, sent_as in (
        ("o-unsaid", "plain", "max_completion_tokens"),
        ("gpt-plain-unsaid", "plain", "max_tokens"),
    ):
        answer = client.chat.completions.create(model=model, max_tokens=50, messages=ASK)
        assert answer.choices[0].message.content
        _, sent = stack.last_request(fake)
        assert sent[sent_as] == 50 and len({"max_tokens", "max_completion_tokens"} & set(sent)) == 1
