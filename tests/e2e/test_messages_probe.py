"""A stranger's probe of the Messages door: valid requests per Anthropic's Messages API reference,
sent with the official ``anthropic`` SDK to a group of each deployment kind (the fake Anthropic
natively, the OpenAI and Gemini fakes translated). Each must be answered in Anthropic's shape, or
refused with a 400 in Anthropic's envelope naming what the serving kind cannot do; never a 500."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway.testing.pdf import make_pdf
from tests.e2e.conftest import start_fakes, start_gateway
from tests.e2e.test_messages_api import ANTHROPIC_KEY, FAKES, KINDS, WEATHER, MessagesStack, policy

# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = base64.b64encode(make_pdf(["The secret word is plum."])).decode()
ASK: Any = [{"role": "user", "content": "What is the weather like in Paris?"}]
USE: Any = {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris"}}


def _after_tool(result: Any) -> Any:
    return [
        *ASK,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, USE]},
        {"role": "user", "content": [result]},
    ]


def _user(*blocks: Any) -> Any:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "Describe this."}]}]


CASES: dict[str, dict[str, Any]] = {
    "system string": {"system": "You are terse.", "messages": ASK},
    "system blocks cache_control": {
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": ASK,
    },
    "image base64": {
        "messages": _user(
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
        )
    },
    "image url": {
        "messages": _user({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}})
    },
    "document pdf base64": {
        "messages": _user(
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
        )
    },
    "document text": {
        "messages": _user(
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plum"}}
        )
    },
    "document custom content": {
        "messages": _user(
            {
                "type": "document",
                "source": {"type": "content", "content": [{"type": "text", "text": "plum"}]},
                "title": "Notes",
            }
        )
    },
    "document citations": {
        "messages": _user(
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
                "title": "Grass",
                "context": "A fact",
                "citations": {"enabled": True},
            }
        )
    },
    "document url": {
        "messages": _user({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}})
    },
    "tool_choice auto": {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "auto"}},
    "tool_choice any": {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "any"}},
    "tool_choice tool": {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    },
    "tool_choice none": {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "none"}},
    "tool_choice auto without tools": {"messages": ASK, "tool_choice": {"type": "auto"}},
    "tool_choice none without tools": {"messages": ASK, "tool_choice": {"type": "none"}},
    "tool_choice auto no parallel": {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    },
    "tool_choice any no parallel": {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    },
    "tool_result string": {
        "messages": _after_tool({"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"}),
        "tools": [WEATHER],
    },
    "tool_result blocks": {
        "messages": _after_tool(
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": [{"type": "text", "text": "15"}]}
        ),
        "tools": [WEATHER],
    },
    "tool_result image": {
        "messages": _after_tool(
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01A",
                "content": [
                    {"type": "text", "text": "a map"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                ],
            }
        ),
        "tools": [WEATHER],
    },
    "tool_result is_error": {
        "messages": _after_tool(
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "city not found", "is_error": True}
        ),
        "tools": [WEATHER],
    },
    "stop_sequences": {"messages": ASK, "stop_sequences": ["\n\nHuman:", "END"]},
    "stop_sequences hit": {
        "messages": [{"role": "user", "content": "alpha beta gamma"}],
        "stop_sequences": ["gamma"],
    },
    "stop_sequences many": {"messages": ASK, "stop_sequences": ["a1", "b2", "c3", "d4", "e5", "f6"]},
    # (the SDK's 2.x ``create`` has no sampling arguments: current models take one at most)
    "temperature top_k": {"messages": ASK, "extra_body": {"temperature": 0.2, "top_k": 5}},
    "top_p": {"messages": ASK, "extra_body": {"top_p": 0.9}},
    "metadata": {"messages": ASK, "metadata": {"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"}},
    "thinking": {"messages": ASK, "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
    "thinking temperature": {
        "messages": ASK,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "max_tokens": 2048,
        "extra_body": {"temperature": 0.3},
    },
    "thinking forced tool": {
        "messages": ASK,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "max_tokens": 2048,
        "tools": [WEATHER],
        "tool_choice": {"type": "any"},
    },
    "thinking replayed": {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "max_tokens": 2048,
        "tools": [WEATHER],
        "messages": [
            *ASK,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "I should call the tool.",
                        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA",
                    },
                    USE,
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15"}],
            },
        ],
    },
    "redacted thinking replayed": {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "max_tokens": 2048,
        "tools": [WEATHER],
        "messages": [
            *ASK,
            {
                "role": "assistant",
                "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}, USE],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15"}],
            },
        ],
    },
    "prefill": {"messages": [*ASK, {"role": "assistant", "content": "The weather in Paris is"}]},
}


# What a kind cannot do, refused in Anthropic's envelope with words naming it: (case, kind) -> words.
REFUSED = {
    ("document url", "gpt"): "document sources of type 'url'",
    ("document url", "gemini"): "document sources of type 'url'",
    ("document citations", "gpt"): "citations on documents",
    ("document citations", "gemini"): "citations on documents",
    ("stop_sequences many", "gpt"): "Invalid 'stop': array too long",  # OpenAI's own 400
    ("stop_sequences many", "gemini"): "more than 5 stop sequences",
    **{
        ("thinking forced tool", k): "Thinking may not be enabled when tool_choice forces tool use"
        for k in KINDS
    },
    **{("thinking temperature", k): "may only be set to 1 when thinking is enabled" for k in KINDS},
    # Anthropic refuses any tool_choice without tools: so does the door, for every kind (h-xlate2)
    **{
        (case, k): "tool_choice may only be specified while providing tools"
        for case in ("tool_choice auto without tools", "tool_choice none without tools")
        for k in KINDS
    },
}
# What the answer must say: the fakes echo the last user text (Gemini and Anthropic: a tool result).
SAID = {
    ("tool_result is_error", "gemini"): "Echo: Error: city not found",
    ("tool_result is_error", "claude"): "Echo: city not found",
    ("document text", "gpt"): "Echo: plum Describe this.",
    ("document custom content", "gpt"): "Echo: plum Describe this.",
    ("document custom content", "gemini"): "Echo: plum Describe this.",
    **{("stop_sequences hit", k): "Echo: alpha beta" for k in KINDS},
}
# A translated answer cannot tell which stop sequence ended it (OpenAI and Gemini say "stop").
STOPPED = {("stop_sequences hit", "claude"): "stop_sequence"}


@pytest.fixture(scope="module")
def pstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MessagesStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("probe") / "policy.yaml"
    path.write_text(policy(fakes))
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


def _ask(client: anthropic.Anthropic, kwargs: Any, streamed: bool) -> anthropic.types.Message:
    if not streamed:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "".join(b.text for b in message.content if b.type == "text")
    return message


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_a_valid_request_is_answered_or_refused_by_name(
    pstack: MessagesStack, case: str, model: str, streamed: bool
) -> None:
    kwargs: Any = {"model": model, "max_tokens": 200, **CASES[case]}
    refused = REFUSED.get((case, model))
    if refused is not None:
        with pytest.raises(anthropic.BadRequestError) as caught:
            _ask(pstack.client(), kwargs, streamed)
        body: Any = caught.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert refused in body["error"]["message"]
        assert ANTHROPIC_KEY not in caught.value.response.text
        return
    message = _ask(pstack.client(), kwargs, streamed)
    assert message.type == "message" and message.role == "assistant" and message.content
    expected_stop = (
        "tool_use" if CASES[case].get("tool_choice", {}).get("type") in ("any", "tool") else "end_turn"
    )
    assert message.stop_reason == STOPPED.get((case, model), expected_stop)
    if expected_stop == "tool_use":
        uses = [b for b in message.content if b.type == "tool_use"]
        assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    said = SAID.get((case, model))
    if said is not None:
        assert message.content[0].text == said  # type: ignore[union-attr]


@pytest.mark.parametrize("case", list(CASES))
def test_count_tokens_takes_every_valid_request(pstack: MessagesStack, case: str) -> None:
    kwargs: Any = {
        k: v for k, v in CASES[case].items() if k not in ("max_tokens", "stop_sequences", "metadata")
    }
    extra = kwargs.pop("extra_body", None)
    counted = pstack.client().messages.count_tokens(model="gpt", extra_body=extra, **kwargs)
    assert counted.input_tokens >= 1


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_the_sdks_tool_runner_completes_its_loop_on_every_kind(
    pstack: MessagesStack, model: str, streamed: bool
) -> None:
    """The anthropic SDK's tool runner (``client.beta.messages.tool_runner``) runs over a message
    thread by default: its first turn sends ``thread: {"type": "create"}``, later turns only
    their new messages with ``thread: {"type": "continue", ...}``, leaving the server to hold the
    rest. The gateway ignored ``thread``, so the second turn arrived as a lone tool result and was
    refused (``unexpected tool_use_id``): the loop failed at its first tool call, on every kind.
    Now a thread is refused with Anthropic's ``thread_unsupported_request``, from which the
    runner continues unthreaded, sending the whole history each turn."""

    @anthropic.beta_tool
    def get_weather(location: str) -> str:
        """Get the current weather in a given location."""
        return f"Sunny in {location}"

    runner = pstack.client().beta.messages.tool_runner(
        model=model,
        max_tokens=200,
        tools=[get_weather],
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        stream=streamed,
    )
    if streamed:
        replies = []
        for stream in runner:  # type: ignore[union-attr]
            for _ in stream:
                pass
            replies.append(stream.get_final_message())
    else:
        replies = list(runner)
    assert [r.stop_reason for r in replies] == ["tool_use", "end_turn"], replies
    assert "Sunny in" in replies[-1].content[0].text  # type: ignore[union-attr]


def test_a_thread_is_refused_with_anthropics_machine_readable_code(pstack: MessagesStack) -> None:
    client = pstack.client()
    for thread in ({"type": "create"}, {"type": "continue", "previous_message_id": "msg_01"}):
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model="gpt", max_tokens=50, messages=ASK, extra_body={"thread": thread})
        body: Any = caught.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["details"] == {
            "error_code": "thread_unsupported_request",
            "unsupported": ["thread"],
        }
        assert "`thread`" in body["error"]["message"]
    # ``thread: null`` is a field not given, as everywhere in the API
    answered = client.messages.create(model="gpt", max_tokens=50, messages=ASK, extra_body={"thread": None})
    assert answered.stop_reason == "end_turn"
