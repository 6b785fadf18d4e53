"""The fake provider's Anthropic flavor over real HTTP: wire shapes, tool use, streams, faults."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.policy.model import AnthropicProvider
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Endpoint
from gateway.testing.fake_provider import FakeConfig, build_app

Client = TestClient[web.Request, web.Application]
ASK = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hello there"}]}
WEATHER = {
    "name": "get_weather",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "f"]}},
    },
}


async def fake(aiohttp_client: AiohttpClient, **config: Any) -> Client:
    return await aiohttp_client(build_app(FakeConfig(flavor="anthropic", **config)))


async def post(client: Client, body: object, **headers: str) -> aiohttp.ClientResponse:
    return await client.post("/v1/messages", data=orjson.dumps(body), headers=headers)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            name_line, data_line = block.split("\n")
            out.append((name_line.removeprefix("event: "), orjson.loads(data_line.removeprefix("data: "))))
    return out


async def test_echo_message(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {
        **ASK,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }
    message = await (await post(client, body)).json()
    assert (
        message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    )
    assert message["content"] == [{"type": "text", "text": "Echo: hello there"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 4, "output_tokens": 3}  # system words count too


async def test_max_tokens_and_stop_sequences(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, reply="one two three four")
    cut = await (await post(client, {**ASK, "max_tokens": 2})).json()
    assert cut["content"][0]["text"] == "one two" and cut["stop_reason"] == "max_tokens"
    stopped = await (await post(client, {**ASK, "stop_sequences": [" three", "zzz"]})).json()
    assert stopped["content"][0]["text"] == "one two"
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == " three"


async def test_requests_the_api_would_refuse(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, require_key="sk-ant-test")
    denied = await post(client, ASK, **{"x-api-key": "wrong"})
    assert denied.status == 401
    assert (await denied.json())["error"]["type"] == "authentication_error"
    missing = await post(client, {**ASK, "max_tokens": None}, **{"x-api-key": "sk-ant-test"})
    assert missing.status == 400
    assert await missing.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: Field required (a positive integer)",
        },
    }
    assert (await post(client, ASK, **{"x-api-key": "sk-ant-test"})).status == 200


async def test_a_tool_choice_without_tools_is_refused(aiohttp_client: AiohttpClient) -> None:
    """As the API: any ``tool_choice``, ``none`` included, needs ``tools`` (h-xlate2)."""
    client = await fake(aiohttp_client)
    for choice in ({"type": "none"}, {"type": "auto"}, {"type": "any"}):
        for extra in ({}, {"tools": []}):
            refused = await post(client, {**ASK, **extra, "tool_choice": choice})
            assert refused.status == 400
            error = (await refused.json())["error"]
            assert error["message"] == "tool_choice may only be specified while providing tools."
        assert (await post(client, {**ASK, "tools": [WEATHER], "tool_choice": choice})).status == 200


async def test_tool_use_when_forced_or_asked(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    forced = await (await post(client, {**ASK, "tools": [WEATHER], "tool_choice": {"type": "any"}})).json()
    assert forced["stop_reason"] == "tool_use"
    # Forced (any or tool), Anthropic prefills the turn: the tool_use block alone, no text before it.
    [tool] = forced["content"]
    assert tool["type"] == "tool_use" and tool["id"].startswith("toolu_") and tool["name"] == "get_weather"
    assert tool["input"] == {"location": "location-value", "unit": "celsius"}
    named = {
        **ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stream": True,
    }
    events = sse_events(await (await post(client, named)).text())
    starts = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
    assert starts == ["tool_use"] and all(
        d.get("index") == 0 for n, d in events if n.startswith("content_block")
    )
    asked = {**ASK, "tools": [WEATHER], "messages": [{"role": "user", "content": "please call get_weather."}]}
    chosen = await (await post(client, asked)).json()  # chosen by the model: it may say so first
    assert chosen["stop_reason"] == "tool_use"
    assert [b["type"] for b in chosen["content"]] == ["text", "tool_use"]
    declined = {**asked, "tool_choice": {"type": "none"}}
    assert (await (await post(client, declined)).json())["stop_reason"] == "end_turn"


async def test_stream_follows_the_documented_event_sequence(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    resp = await post(client, {**ASK, "stream": True})
    assert resp.content_type == "text/event-stream"
    events = sse_events(await resp.text())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:-3] == ["content_block_delta"] * 3
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["usage"] == {"input_tokens": 2, "output_tokens": 1}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 2, "output_tokens": 3},  # cumulative, as the API sends it
    }


async def test_the_adapter_reads_the_fake_stream(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    body = {**ASK, "stream": True, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}
    raw = await (await post(client, body)).read()
    config = AnthropicProvider(kind="anthropic", base_url="http://fake/v1")
    translator = AnthropicAdapter(config).stream_translator(Endpoint.CHAT, {}, "claude-x")
    assert translator is not None
    out = b"".join(translator.feed(raw[i : i + 5]) for i in range(0, len(raw), 5)) + translator.finish()
    chunks = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
    arguments = "".join(
        call["function"].get("arguments", "")
        for c in chunks
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    )
    assert orjson.loads(arguments) == {"location": "location-value", "unit": "celsius"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_injected_errors_use_anthropic_bodies(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, error_rate=1.0, error_status=529)
    resp = await post(client, ASK)
    assert resp.status == 529 and "retry-after" not in resp.headers
    assert (await resp.json())["error"] == {
        "type": "overloaded_error",
        "message": "fake-provider: injected 529 error",
    }
    limited = await fake(aiohttp_client, error_rate=1.0, error_status=429)
    resp = await post(limited, ASK)
    assert resp.headers["retry-after"] == "1"
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_disconnect_cuts_the_stream_before_message_stop(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client, disconnect_rate=1.0, reply="a b c d e f")
    resp = await post(client, {**ASK, "stream": True})
    try:
        text = (await resp.content.read()).decode()
    except aiohttp.ClientPayloadError:
        text = ""
    assert "message_stop" not in text


async def test_openai_routes_are_not_served(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    assert (await client.post("/v1/chat/completions", json={})).status == 404
    stats = await (await client.get("/_fake/stats")).json()
    assert stats["requests"] == 0


# ----- what the real API refuses in a conversation (fake_anthropic.check_conversation)

USE: dict[str, Any] = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}


def refusal(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [{"role": "user", "content": [{"type": "text", "text": "\n\n"}]}],
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            [{"role": "user", "content": " "}],
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "\n\n"}, USE]},
            ],
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": ""}]}],
            "messages: text content blocks must be non-empty",
        ),
        (
            [{"role": "user", "content": []}, {"role": "assistant", "content": "x"}],
            "messages.0: all messages must have non-empty content except for the optional final "
            "assistant message",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{**USE, "id": "functions.get_weather:0"}]},
            ],
            "messages.1.content.0.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{**USE, "id": "toolu_1\n"}]},
            ],
            "messages.1.content.0.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [USE]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "again"}, USE]},
            ],
            "messages.3.content.1: `tool_use` ids must be unique",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [USE]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}]},
            ],
            "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_2. "
            "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [USE]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "\t"}],
                        }
                    ],
                },
            ],
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [USE, {**USE, "id": "toolu_2"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}]},
            ],
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
            "toolu_1. Each `tool_use` block must have a corresponding `tool_result` block in the next "
            "message.",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [USE]}],
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
            "toolu_1. Each `tool_use` block must have a corresponding `tool_result` block in the next "
            "message.",
        ),
    ],
    ids=[
        "whitespace-block",
        "whitespace-string",
        "whitespace-beside-tool-use",
        "empty-block",
        "empty-message",
        "foreign-id",
        "id-with-newline",
        "repeated-id",
        "unknown-result-id",
        "whitespace-in-result",
        "use-left-unanswered",
        "final-use-unanswered",
    ],
)
async def test_conversations_the_api_refuses(
    aiohttp_client: AiohttpClient, messages: list[dict[str, Any]], message: str
) -> None:
    client = await fake(aiohttp_client)
    resp = await post(client, {**ASK, "messages": messages})
    assert resp.status == 400 and await resp.json() == refusal(message)


async def test_valid_tool_turns_and_a_final_empty_assistant_turn_are_accepted(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await fake(aiohttp_client)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "15"}]},
        {"role": "assistant", "content": []},  # the optional final (prefill) assistant message
    ]
    assert (await post(client, {**ASK, "messages": messages, "tools": [WEATHER]})).status == 200


async def test_an_assistant_turn_may_open_the_conversation(aiohttp_client: AiohttpClient) -> None:
    """The first-party API takes it (anthropics/anthropic-sdk-typescript#622; the reference no
    longer requires a user turn first): a chat UI's greeting, a trimmed history."""
    client = await fake(aiohttp_client)
    messages = [{"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "hi"}]
    assert (await post(client, {**ASK, "messages": messages})).status == 200


async def test_consecutive_messages_of_one_role_are_one_turn(aiohttp_client: AiohttpClient) -> None:
    """The reference: consecutive turns of one role are combined into one turn, so parallel
    results one message each answer the calls of the assistant turn before."""
    client = await fake(aiohttp_client)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Checking."},
        {"role": "assistant", "content": [USE, {**USE, "id": "toolu_2"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "15"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "16"}]},
        {"role": "user", "content": "Which is warmer?"},
    ]
    assert (await post(client, {**ASK, "messages": messages, "tools": [WEATHER]})).status == 200


CALL: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


# What OpenAI clients send (issue 10, items 14-16), each refused by the fake as it stands and
# accepted once the adapter has translated it.
OPENAI_CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "ids-from-another-provider": [
        {"role": "user", "content": "weather in Paris, then Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "functions.get_weather:0", **CALL}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "15 degrees"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "functions.get_weather:0", **CALL}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "20 degrees"},
    ],
    "blank-text-beside-tool-calls": [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}, {"type": "text", "text": "\n\n"}]},
        {"role": "assistant", "content": "\n\n", "tool_calls": [{"id": "call_1", **CALL}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "15 degrees"},
        {"role": "assistant", "content": "\n\n"},
        {"role": "user", "content": " "},
    ],
}


def as_sent_untranslated(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation mapped one to one, as a gateway without the fixes sent it."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            block = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m["content"]}
            out.append({"role": "user", "content": [block]})
            continue
        content = m["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        for c in m.get("tool_calls", []):
            parts.append({"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": {}})
        out.append({"role": m["role"], "content": parts})
    return out


@pytest.mark.parametrize("name", list(OPENAI_CONVERSATIONS))
async def test_what_openai_clients_send_is_accepted_once_translated(
    aiohttp_client: AiohttpClient, name: str
) -> None:
    client = await fake(aiohttp_client)
    messages = OPENAI_CONVERSATIONS[name]
    untranslated = await post(client, {**ASK, "messages": as_sent_untranslated(messages)})
    assert untranslated.status == 400  # the fake is as strict as the API
    config = AnthropicProvider(kind="anthropic", base_url="http://fake/v1")
    request = AnthropicAdapter(config).build_request(Endpoint.CHAT, {"messages": messages}, "claude-x")
    resp = await client.post("/v1/messages", data=request.body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["stop_reason"] == "end_turn"


JPG = {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}}

# Options and turns OpenAI takes and current Claude models refuse: (the OpenAI body, what the
# fake answers when they are sent as they are, with the API's message).
OPENAI_OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "newline-stop": (
        {"messages": [{"role": "user", "content": "hi"}], "stop": ["\n", "END"]},
        {"stop_sequences": ["\n", "END"]},
        "stop_sequences: each stop sequence must contain non-whitespace",
    ),
    "temperature-and-top-p": (
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "top_p": 0.9},
        {"temperature": 0.5, "top_p": 0.9},
        "`temperature` and `top_p` cannot both be specified for this model. Please use only one.",
    ),
    "prefill-with-trailing-space": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Here:\n"}]},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Here:\n"}]},
            ]
        },
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    "image-jpg": (
        {"messages": [{"role": "user", "content": [JPG]}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/jpg", "data": "AAAA"},
                        }
                    ],
                }
            ]
        },
        "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
        "'image/gif' or 'image/webp'",
    ),
}


@pytest.mark.parametrize("name", list(OPENAI_OPTIONS))
async def test_openai_options_current_models_refuse_are_accepted_once_translated(
    aiohttp_client: AiohttpClient, name: str
) -> None:
    client = await fake(aiohttp_client)
    body, as_sent, message = OPENAI_OPTIONS[name]
    untranslated = await post(client, {**ASK, **as_sent})
    assert untranslated.status == 400 and await untranslated.json() == refusal(message)
    config = AnthropicProvider(kind="anthropic", base_url="http://fake/v1")
    request = AnthropicAdapter(config).build_request(Endpoint.CHAT, body, "claude-x")
    resp = await client.post("/v1/messages", data=request.body)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "f"}])
async def test_thinking_with_forced_tool_use_is_refused(aiohttp_client: AiohttpClient, choice: Any) -> None:
    """Extended thinking docs, "Feature compatibility": as the API, with its message."""
    client = await fake(aiohttp_client)
    tool = {"name": "f", "input_schema": {"type": "object"}}
    body = {
        **ASK,
        "max_tokens": 2048,
        "tools": [tool],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    resp = await post(client, {**body, "tool_choice": choice})
    assert resp.status == 400
    assert (await resp.json())["error"][
        "message"
    ] == "Thinking may not be enabled when tool_choice forces tool use."
    assert (await post(client, {**body, "tool_choice": {"type": "auto"}})).status == 200


async def test_thinking_with_a_temperature_other_than_1_is_refused(aiohttp_client: AiohttpClient) -> None:
    """The API's message (MartialBE/one-hub#529); the extended thinking docs: thinking is not
    compatible with temperature modifications."""
    client = await fake(aiohttp_client)
    body = {**ASK, "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    resp = await post(client, {**body, "temperature": 0.5})
    assert resp.status == 400
    assert (await resp.json())["error"][
        "message"
    ] == "`temperature` may only be set to 1 when thinking is enabled."
    assert (await post(client, {**body, "temperature": 1})).status == 200


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"top_k": 5}, "`top_k` must be unset when thinking is enabled. "),
        ({"top_p": 0.9}, "`top_p` must be between 0.95 and 1 when thinking is enabled. "),
    ],
)
async def test_thinking_with_top_k_or_a_top_p_below_095_is_refused(
    aiohttp_client: AiohttpClient, extra: dict[str, Any], words: str
) -> None:
    """Extended thinking docs, "Feature compatibility": thinking is not compatible with top_k
    modifications; top_p may be set between 0.95 and 1. The top_k message is the API's
    (quarkiverse/quarkus-langchain4j#1812)."""
    client = await fake(aiohttp_client)
    body = {**ASK, "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    resp = await post(client, {**body, **extra})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith(words)
    assert (await post(client, {**body, "top_p": 0.95})).status == 200
    assert (await post(client, {**ASK, **extra})).status == 200  # without thinking: fine


async def test_thinking_blocks_in_a_final_assistant_message_need_thinking_on(
    aiohttp_client: AiohttpClient,
) -> None:
    """The API's message (anthropics/claude-code#7946)."""
    client = await fake(aiohttp_client)
    block = {"type": "thinking", "thinking": "Let me see.", "signature": "sig"}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [block]}]
    resp = await post(client, {**ASK, "messages": messages})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith(
        "messages.1.content.0: When thinking is disabled, an `assistant` message in the final position"
    )
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}
    assert (await post(client, {**ASK, **thinking, "messages": messages})).status == 200


async def test_a_history_with_tool_blocks_needs_tools_as_the_api_wants(aiohttp_client: AiohttpClient) -> None:
    """Anthropic: "Requests which include `tool_use` or `tool_result` blocks must define tools."
    (OpenAI takes such a history without tools); the fake answered it."""
    client = await fake(aiohttp_client)
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "15"}]},
    ]
    refused = await post(client, {**ASK, "messages": history})
    assert refused.status == 400
    assert (await refused.json())["error"]["message"] == (
        "Requests which include `tool_use` or `tool_result` blocks must define tools."
    )
    assert (await post(client, {**ASK, "messages": history, "tools": [WEATHER]})).status == 200


async def test_structured_outputs_answer_in_json(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    fmt = {"type": "json_schema", "schema": WEATHER["input_schema"]}
    message = await (await post(client, {**ASK, "output_config": {"format": fmt}})).json()
    assert orjson.loads(message["content"][0]["text"]) == {"location": "location-value", "unit": "celsius"}


async def test_a_base64_document_must_be_a_pdf(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    doc = {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": "cGx1bQ=="}}
    body = {**ASK, "messages": [{"role": "user", "content": [doc, {"type": "text", "text": "hi"}]}]}
    resp = await post(client, body)
    assert resp.status == 400
    assert "messages.0.content.0.document.source.base64.media_type" in (await resp.json())["error"]["message"]


async def test_more_than_four_cache_breakpoints_are_refused(aiohttp_client: AiohttpClient) -> None:
    client = await fake(aiohttp_client)
    block = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
    body = {**ASK, "messages": [{"role": "user", "content": [block] * 5}]}
    resp = await post(client, body)
    assert resp.status == 400
    assert (await resp.json())["error"][
        "message"
    ] == "A maximum of 4 blocks with cache_control may be provided. Found 5."
    body = {**ASK, "messages": [{"role": "user", "content": [block] * 4}]}
    assert (await post(client, body)).status == 200


async def test_a_temperature_above_one_is_refused(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(FakeConfig(flavor="anthropic")))
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/messages", json={**base, "temperature": 1.5})
    assert resp.status == 400 and "temperature" in (await resp.json())["error"]["message"]
    assert (await client.post("/v1/messages", json={**base, "temperature": 1})).status == 200


async def test_a_tool_name_outside_the_pattern_is_refused(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(FakeConfig(flavor="anthropic")))
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    for name, status in (("weather.get", 400), ("x" * 129, 400), ("get_weather-2", 200)):
        body = {**base, "tools": [{"name": name, "input_schema": {"type": "object"}}]}
        resp = await client.post("/v1/messages", json=body)
        assert resp.status == status, name
        if status == 400:
            assert "tools.0.custom.name" in (await resp.json())["error"]["message"]
