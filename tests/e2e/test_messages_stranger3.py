"""A third stranger's probe of the Messages door (h-msgs3): content and features the earlier
probes did not try (documents with citations, titles and context; search results; images of each
media type and by URL; ``cache_control`` with ``ttl`` and too many breakpoints; server tools,
``mcp_servers``, ``container``; ``service_tier``; stop-sequence edge cases; betas; the beta client
and its stream helper), sent with the official ``anthropic`` SDK to a group of each kind. Each is
answered in Anthropic's shape, refused by name with a 400 in Anthropic's envelope where the kind
cannot do it, or, where Anthropic's API refuses it whichever model answers, refused on every kind
with Anthropic's words."""

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

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = base64.b64encode(make_pdf(["The secret word is plum."])).decode()
ASK: Any = [{"role": "user", "content": "hello there"}]
TTL_1H: Any = {"type": "ephemeral", "ttl": "1h"}
FILES_BETA = {"anthropic-beta": "files-api-2025-04-14"}


def _user(*blocks: Any) -> Any:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "Describe."}]}]


def _image(media: str) -> Any:
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": PNG}}


def _text_doc(**extra: Any) -> Any:
    return {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "plum"},
        **extra,
    }


def _server_tool(kind: str, name: str) -> Any:
    return {"messages": ASK, "tools": [{"type": kind, "name": name}]}


# Valid requests, answered by every kind (translated faithfully).
SERVED: dict[str, dict[str, Any]] = {
    "document text title context": {"messages": _user(_text_doc(title="Notes", context="A fact"))},
    "document citations disabled": {"messages": _user(_text_doc(citations={"enabled": False}))},
    "document pdf title": {
        "messages": _user(
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                "title": "plum.pdf",
            }
        )
    },
    **{f"image {m}": {"messages": _user(_image(f"image/{m}"))} for m in ("jpeg", "png", "gif", "webp")},
    "image url": {
        "messages": _user({"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}})
    },
    "cache_control ttl on system tools messages": {
        "system": [{"type": "text", "text": "Be terse.", "cache_control": TTL_1H}],
        "tools": [{**WEATHER, "cache_control": TTL_1H}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "5m"}}
                ],
            }
        ],
    },
    "cache_control 4 breakpoints": {
        "system": [
            {"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}} for i in range(4)
        ],
        "messages": ASK,
    },
    "service_tier auto": {"messages": ASK, "service_tier": "auto"},
    "service_tier standard_only": {"messages": ASK, "service_tier": "standard_only"},
    "metadata user_id": {"messages": ASK, "metadata": {"user_id": "user-42"}},
    "top_k": {"messages": ASK, "extra_body": {"top_k": 5}},
    "tool_choice none no parallel": {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "none", "disable_parallel_tool_use": True},
    },
    "stop_sequences five": {"messages": ASK, "stop_sequences": ["a1", "b2", "c3", "d4", "e5"]},
    "interleaved thinking beta": {
        "messages": ASK,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "max_tokens": 2048,
        "extra_headers": {"anthropic-beta": "interleaved-thinking-2025-05-14"},
    },
}

# OpenAI takes at most 4 stop sequences (h-probe: the OpenAI kind keeps the provider's answer,
# compatible servers take more); Gemini and Anthropic take 5. Gemini reads no GIF (PNG, JPEG,
# WebP, HEIC, HEIF): refused by name before sending (h-xlate2).
PROVIDER_REFUSES = {
    ("stop_sequences five", "gpt"): "gpt: Invalid 'stop': array too long",
    ("image gif", "gemini"): "images of type 'image/gif'",
}

# What only Anthropic can do: served by the Anthropic kind, a 400 naming it on the others.
NATIVE_ONLY: dict[str, tuple[dict[str, Any], str]] = {
    "document pdf citations": (
        {
            "messages": _user(
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    "title": "T",
                    "context": "C",
                    "citations": {"enabled": True},
                }
            )
        },
        "citations on documents (messages[0].content[0].citations)",
    ),
    "document content citations": (
        {
            "messages": _user(
                {
                    "type": "document",
                    "source": {"type": "content", "content": "plum"},
                    "citations": {"enabled": True},
                }
            )
        },
        "citations on documents",
    ),
    "document url": (
        {"messages": _user({"type": "document", "source": {"type": "url", "url": "https://e.com/a.pdf"}})},
        "document sources of type 'url' (messages[0].content[0])",
    ),
    "document file": (
        {
            "messages": _user({"type": "document", "source": {"type": "file", "file_id": "file_abc"}}),
            "extra_headers": FILES_BETA,
        },
        "document sources of type 'file'",
    ),
    "image file": (
        {
            "messages": _user({"type": "image", "source": {"type": "file", "file_id": "file_abc"}}),
            "extra_headers": FILES_BETA,
        },
        "image sources of type 'file'",
    ),
    "search_result": (
        {
            "messages": _user(
                {
                    "type": "search_result",
                    "source": "https://e.com",
                    "title": "E",
                    "content": [{"type": "text", "text": "plum"}],
                    "citations": {"enabled": True},
                }
            )
        },
        "content blocks of type 'search_result'",
    ),
    "web_search": (_server_tool("web_search_20250305", "web_search"), "server tool 'web_search_20250305'"),
    "code_execution": (
        _server_tool("code_execution_20250522", "code_execution"),
        "server tool 'code_execution_20250522'",
    ),
    "text_editor": (
        _server_tool("text_editor_20250728", "str_replace_based_edit_tool"),
        "server tool 'text_editor_20250728'",
    ),
    "bash": (_server_tool("bash_20250124", "bash"), "server tool 'bash_20250124'"),
    "mcp_servers": (
        {
            "messages": ASK,
            "extra_body": {"mcp_servers": [{"type": "url", "url": "https://m.e.com", "name": "m"}]},
        },
        "'mcp_servers'",
    ),
    "container": ({"messages": ASK, "extra_body": {"container": "cntr_abc"}}, "'container'"),
}

# What Anthropic refuses whichever model answers: the same 400, its words, on every kind (a
# translated kind answered these before h-msgs3).
REFUSED_EVERYWHERE: dict[str, tuple[dict[str, Any], str]] = {
    "cache_control 5 breakpoints": (
        {
            "system": [
                {"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}} for i in range(3)
            ],
            "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
                }
            ],
        },
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    "cache_control ttl 2h": (
        {
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "2h"}}],
            "messages": ASK,
        },
        "system.0.cache_control.ephemeral.ttl: Input should be '5m' or '1h'",
    ),
    "image bmp": (
        {"messages": _user(_image("image/bmp"))},
        "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
        "'image/gif' or 'image/webp'",
    ),
    "image in a tool_result heic": (
        {
            "tools": [WEATHER],
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [_image("image/heic")]}
                    ],
                },
            ],
        },
        "messages.2.content.0.content.0.image.source.base64.media_type: Input should be",
    ),
    "document base64 not pdf": (
        {
            "messages": _user(
                {"type": "document", "source": {"type": "base64", "media_type": "text/csv", "data": PNG}}
            )
        },
        "messages.0.content.0.document.source.base64.media_type: Input should be 'application/pdf'",
    ),
    "stop_sequences empty": (
        {"messages": ASK, "stop_sequences": [""]},
        "each stop sequence must contain non-whitespace",
    ),
    "stop_sequences whitespace": (
        {"messages": ASK, "stop_sequences": ["END", " \n"]},
        "each stop sequence must contain non-whitespace",
    ),
    "service_tier unknown": (
        {"messages": ASK, "extra_body": {"service_tier": "priority"}},
        "service_tier: Input should be 'auto' or 'standard_only'",
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MessagesStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("stranger3") / "policy.yaml"
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
        return stream.get_final_message()


def _refused(client: anthropic.Anthropic, kwargs: Any, streamed: bool) -> str:
    with pytest.raises(anthropic.BadRequestError) as caught:
        _ask(client, kwargs, streamed)
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert ANTHROPIC_KEY not in caught.value.response.text
    return str(body["error"]["message"])


STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])


@STREAMED
@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(SERVED))
def test_a_valid_request_is_answered_by_every_kind(
    stack: MessagesStack, case: str, model: str, streamed: bool
) -> None:
    kwargs = {"model": model, "max_tokens": 200, **SERVED[case]}
    if (case, model) in PROVIDER_REFUSES:  # the provider's own 400, in Anthropic's envelope
        assert PROVIDER_REFUSES[case, model] in _refused(stack.client(), kwargs, streamed)
        return
    message = _ask(stack.client(), kwargs, streamed)
    assert message.type == "message" and message.content and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "stop_sequence")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@STREAMED
@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(NATIVE_ONLY))
def test_what_only_anthropic_does_is_served_there_and_refused_by_name_elsewhere(
    stack: MessagesStack, case: str, model: str, streamed: bool
) -> None:
    kwargs, words = NATIVE_ONLY[case]
    kwargs = {"model": model, "max_tokens": 200, **kwargs}
    if model == "claude":
        message = _ask(stack.client(), kwargs, streamed)
        assert message.type == "message" and message.stop_reason == "end_turn"
        return
    message_text = _refused(stack.client(), kwargs, streamed)
    kind = {"gpt": "openai", "gemini": "gemini"}[model]
    assert f"Provider kind '{kind}' does not support {words}" in message_text


@STREAMED
@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(REFUSED_EVERYWHERE))
def test_what_anthropic_refuses_is_refused_on_every_kind(
    stack: MessagesStack, case: str, model: str, streamed: bool
) -> None:
    kwargs, words = REFUSED_EVERYWHERE[case]
    message_text = _refused(stack.client(), {"model": model, "max_tokens": 200, **kwargs}, streamed)
    assert words in message_text
    assert not message_text.startswith("claude:")  # the door's refusal, not the fake's: no call made


@pytest.mark.parametrize("case", ["cache_control 5 breakpoints", "cache_control ttl 2h", "image bmp"])
def test_count_tokens_refuses_what_the_call_would(stack: MessagesStack, case: str) -> None:
    kwargs, words = REFUSED_EVERYWHERE[case]
    with pytest.raises(anthropic.BadRequestError) as caught:
        stack.client().messages.count_tokens(model="gpt", **kwargs)
    assert words in caught.value.message


@pytest.mark.parametrize("case", [*SERVED, *NATIVE_ONLY])
def test_count_tokens_takes_every_valid_request(stack: MessagesStack, case: str) -> None:
    kwargs = dict(SERVED.get(case) or NATIVE_ONLY[case][0])
    for name in ("max_tokens", "stop_sequences", "metadata", "service_tier"):
        kwargs.pop(name, None)
    assert stack.client().messages.count_tokens(model="claude", **kwargs).input_tokens >= 1


@pytest.mark.parametrize("model", KINDS)
def test_the_beta_client_and_its_stream_helper(stack: MessagesStack, model: str) -> None:
    beta = stack.client().beta.messages
    message = beta.create(model=model, max_tokens=100, messages=ASK, betas=["context-management-2025-06-27"])
    assert message.type == "message" and message.content[0].text == "Echo: hello there"  # type: ignore[union-attr]
    with beta.stream(
        model=model, max_tokens=100, messages=ASK, betas=["interleaved-thinking-2025-05-14"]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Echo: hello there" and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
