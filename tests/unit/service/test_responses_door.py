"""The Responses door (``service/responses.py``) per attempt: a provider flagged
``responses: true`` gets the client's body passed through (and its answer forwarded, its usage
read in chat's names for accounting), any other the chat translation through its own adapter,
its answer made a ``response``; the attempts metric's mode says which."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.policy.model import AnthropicProvider, Deployment, OpenAIProvider
from gateway.providers.client import ProviderClient
from gateway.providers.registry import adapter_for
from gateway.providers.responses_bridge import ChatToResponsesStream, NativeResponsesStream
from gateway.routing.target import Target
from gateway.service.front_door import FrontDoor
from gateway.service.responses import ResponsesDoor
from gateway.testing.mock_transport import MockTransport
from gateway.wire.responses import chat_request
from gateway.wire.responses_output import ResponseIds


def door(body: dict[str, Any]) -> ResponsesDoor:
    return ResponsesDoor(body, chat_request(body), ResponseIds("T", 1))


def target(config: Any, model: str = "up") -> Target:
    client = ProviderClient("p", config, adapter_for(config), None, MockTransport(lambda r: None))  # type: ignore[arg-type]
    return Target(Deployment(provider="p", model=model), client, None)  # type: ignore[arg-type]


NATIVE = OpenAIProvider(kind="openai", base_url="http://x/v1", responses=True)
PLAIN = OpenAIProvider(kind="openai", base_url="http://x/v1")
CLAUDE = AnthropicProvider(kind="anthropic", base_url="http://x/v1")


def test_each_attempt_picks_pass_through_or_the_chat_bridge() -> None:
    d: FrontDoor = door({"model": "m", "input": "hi", "previous_response_id": "resp_1", "store": True})
    request = d.build(target(NATIVE))
    assert request.path == "/responses"
    assert orjson.loads(request.body) == {"model": "up", "input": "hi", "store": False}
    request = d.build(target(PLAIN))
    assert (request.path, orjson.loads(request.body)["messages"]) == (
        "/chat/completions",
        [{"role": "user", "content": "hi"}],
    )
    assert d.build(target(CLAUDE, "claude-x")).path == "/messages"
    assert [d.mode(target(c)) for c in (NATIVE, PLAIN, CLAUDE)] == ["native", "translated", "translated"]
    assert d.endpoint.value == "responses"  # the cache key's scope
    assert isinstance(d.stream_translator(target(NATIVE)), NativeResponsesStream)
    bridged = d.stream_translator(target(CLAUDE))  # the bridge, its joined texts scrubbed of the key
    assert isinstance(bridged._inner, ChatToResponsesStream)  # type: ignore[attr-defined]


def test_a_native_answer_is_forwarded_with_chat_usage_for_accounting() -> None:
    d = door({"model": "m", "input": "hi", "previous_response_id": "resp_before"})
    raw = (
        b'{"id":"resp_up","object":"response","created_at":1,"store":false,"previous_response_id":null,'
        b'"output":[{"id":"msg_up","type":"message"}],"usage":{"input_tokens":3,"output_tokens":4}}'
    )
    body, usage = d.answer(target(NATIVE), raw, orjson.loads(raw))
    # The provider's answer with the gateway's ids and the client's store / previous_response_id.
    assert orjson.loads(body) == {
        "id": "resp_T",
        "object": "response",
        "created_at": 1,
        "store": True,
        "previous_response_id": "resp_before",
        "output": [{"id": "msg_T", "type": "message"}],
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    assert usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_a_chat_answer_becomes_a_response() -> None:
    d = door({"model": "m", "input": "hi"})
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "up",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    body, usage = d.answer(target(PLAIN), orjson.dumps(chat), chat)
    response = orjson.loads(body)
    assert (response["object"], response["status"]) == ("response", "completed")
    assert response["output"][0]["content"][0]["text"] == "hello"
    assert response["usage"]["output_tokens"] == 1
    assert usage == chat["usage"]


def test_an_adapters_refusal_names_the_clients_input_items() -> None:
    """Anthropic's and Gemini's adapters check the chat translation: their errors named
    ``messages[1].tool_calls[0].function.arguments``, a field a Responses client never sent."""
    import pytest

    from gateway.errors import InvalidRequest

    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "q"},
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "not json"},
            {"type": "function_call_output", "call_id": "c1", "output": "r1"},
            {"type": "function_call_output", "call_id": "c2", "output": "r2"},
        ],
    }
    with pytest.raises(InvalidRequest) as refused:
        door(body).build(target(CLAUDE, "claude-x"))
    assert refused.value.param == "input[3].arguments"
    assert "messages[" not in refused.value.message and "input[3]" in refused.value.message


def test_chat_paths_map_back_to_responses_fields() -> None:
    from gateway.wire.responses import responses_param

    body = {
        "instructions": "x",
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "u"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
        ],
    }
    assert responses_param(body, "messages[0].content") == "instructions"
    assert responses_param(body, "messages[1].content[1]") == "input[0].content[1]"
    assert responses_param(body, "messages[2].tool_calls[0].function.name") == "input[1].name"
    assert responses_param(body, "messages[2].tool_calls[0].id") == "input[1].call_id"
    assert responses_param(body, "messages[3].tool_call_id") == "input[2].call_id"
    assert (
        responses_param(body, "'messages[3]' is wrong; see messages[9]") == "'input[2]' is wrong; see input"
    )
    assert responses_param({"input": "hi"}, "messages[0].content") == "input"
    assert responses_param(body, "tools[0].function.parameters") == "tools[0].function.parameters"


def test_a_deployment_declared_without_reasoning_gets_no_reasoning_either_way() -> None:
    """``reasoning: false`` (h-reason): a provider that speaks Responses gets the client's body
    without ``reasoning`` (effort and summary, which a model without reasoning refuses), any
    other the chat translation without ``reasoning_effort``; unset, both are sent as given."""
    d = door({"model": "m", "input": "hi", "reasoning": {"effort": "high", "summary": "auto"}})

    def sent(config: Any, reasoning: bool | None) -> dict[str, Any]:
        declared = target(config)
        declared = Target(
            Deployment(provider="p", model="up", reasoning=reasoning), declared.client, declared.live
        )
        body: dict[str, Any] = orjson.loads(d.build(declared).body)
        return body

    assert sent(NATIVE, None)["reasoning"] == {"effort": "high", "summary": "auto"}
    assert sent(NATIVE, True)["reasoning"] == {"effort": "high", "summary": "auto"}
    assert "reasoning" not in sent(NATIVE, False)
    assert sent(PLAIN, None)["reasoning_effort"] == "high"
    assert "reasoning_effort" not in sent(PLAIN, False)
    assert d.body["reasoning"] == {"effort": "high", "summary": "auto"}  # the door's own, kept


def test_encrypted_reasoning_is_not_asked_of_a_deployment_declared_without_reasoning() -> None:
    """OpenAI refuses ``include: ["reasoning.encrypted_content"]`` for a model without reasoning
    (400 "Encrypted content is not supported with this model.", ``param`` ``include``:
    pydantic/pydantic-ai#2865, gpt-4o): a pass-through to a ``reasoning: false`` deployment
    leaves it out of ``include`` (the key goes when nothing else is in it), per attempt, and the
    door says something was withheld; unset and ``true`` send it as asked (h-effort2)."""
    asked = ["reasoning.encrypted_content", "message.output_text.logprobs"]

    def sent(body: dict[str, Any], reasoning: bool | None) -> tuple[dict[str, Any], bool]:
        d = door({"model": "m", "input": "hi", **body})
        declared = target(NATIVE)
        declared = Target(
            Deployment(provider="p", model="up", reasoning=reasoning), declared.client, declared.live
        )
        upstream: dict[str, Any] = orjson.loads(d.build(declared).body)
        return upstream, d.withheld(declared)

    assert sent({"include": asked}, False) == (
        {"model": "up", "input": "hi", "include": ["message.output_text.logprobs"], "store": False},
        True,
    )
    only = sent({"include": ["reasoning.encrypted_content"]}, False)
    assert "include" not in only[0] and only[1] is True
    for reasoning in (None, True):
        assert sent({"include": asked}, reasoning) == (
            {"model": "up", "input": "hi", "include": asked, "store": False},
            False,
        )
    # Nothing of reasoning asked: nothing withheld, nothing said.
    assert sent({"include": ["message.output_text.logprobs"]}, False)[1] is False
    assert sent({}, False) == ({"model": "up", "input": "hi", "store": False}, False)
