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
