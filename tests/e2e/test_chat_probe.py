"""A stranger's probe of the Chat Completions door: valid requests per OpenAI's Chat Completions
reference, sent with the official ``openai`` SDK to a group of each deployment kind (the OpenAI
fake passed through, the Anthropic and Gemini fakes translated), whole and streamed. Each must be
answered in the Chat Completions shape the SDK parses, or refused with a 400 in OpenAI's envelope
naming the parameter the serving kind cannot honour; never a 500, never silently dropped when
dropping changes the answer the client relies on."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pydantic
import pytest

from gateway.testing.pdf import make_pdf
from tests.e2e.conftest import start_fakes, start_gateway
from tests.e2e.test_messages_api import ANTHROPIC_KEY, KINDS, MessagesStack, policy

FAKES = {
    "claude": ["--flavor", "anthropic", "--require-key", ANTHROPIC_KEY],
    "gem": ["--flavor", "gemini"],
    "gpt": [],
    "busy": ["--flavor", "anthropic", "--error-rate", "1", "--error-status", "529"],
}
# A 1x1 PNG; a PDF; a short WAV (a header and silence).
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = base64.b64encode(make_pdf(["The secret word is plum."])).decode()
WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00"
    b"data\x00\x00\x00\x00"
).decode()
NOTES = base64.b64encode(b"The secret word is plum.").decode()
ASK: Any = [{"role": "user", "content": "What is the weather like in Paris?"}]
PARAMETERS: Any = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["location"],
}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather", "parameters": PARAMETERS},
}
STRICT_WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "strict": True,
        "parameters": {**PARAMETERS, "required": ["location", "unit"], "additionalProperties": False},
    },
}
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
CALL: Any = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
}
CALL2: Any = {
    "id": "call_def456",
    "type": "function",
    "function": {"name": "get_time", "arguments": "{}"},
}
SCHEMA: Any = {
    "name": "weather",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
        "required": ["city", "degrees"],
        "additionalProperties": False,
    },
}


def _parts(*parts: Any) -> Any:
    return [{"role": "user", "content": [{"type": "text", "text": "Describe this."}, *parts]}]


CASES: dict[str, dict[str, Any]] = {
    "plain": {"messages": ASK},
    "system": {"messages": [{"role": "system", "content": "You are terse."}, *ASK]},
    "system only": {"messages": [{"role": "system", "content": "Write a haiku about the sea."}]},
    "developer": {"messages": [{"role": "developer", "content": "You are terse."}, *ASK]},
    "system parts": {
        "messages": [{"role": "system", "content": [{"type": "text", "text": "You are terse."}]}, *ASK]
    },
    "text parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "alpha"}]}]},
    "image_url http": {
        "messages": _parts({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}})
    },
    "image_url data": {
        "messages": _parts(
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}
        )
    },
    "input_audio": {
        "messages": _parts({"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}})
    },
    "file data": {
        "messages": _parts(
            {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}
        )
    },
    "file text": {
        "messages": _parts(
            {
                "type": "file",
                "file": {"filename": "notes.txt", "file_data": f"data:text/plain;base64,{NOTES}"},
            }
        )
    },
    "file image": {
        "messages": _parts(
            {"type": "file", "file": {"filename": "a.png", "file_data": f"data:image/png;base64,{PNG}"}}
        )
    },
    "file id": {"messages": _parts({"type": "file", "file": {"file_id": "file-abc123"}})},
    "names": {
        "messages": [
            {"role": "system", "content": "You are terse.", "name": "rules"},
            {"role": "user", "content": "Hello", "name": "alice"},
            {"role": "assistant", "content": "Hi alice.", "name": "bot"},
            {"role": "user", "content": "What is the weather like in Paris?", "name": "bob"},
        ]
    },
    "tool round trip": {
        "messages": [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_abc123", "content": "15 degrees"},
        ],
        "tools": [WEATHER],
    },
    "gemini history": {
        "messages": [
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**CALL, "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}}}],
            },
            {"role": "tool", "tool_call_id": "call_abc123", "content": "15 degrees"},
        ],
        "tools": [WEATHER],
    },
    "parallel tool results": {
        "messages": [
            *ASK,
            {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, CALL2]},
            {"role": "tool", "tool_call_id": "call_abc123", "content": "15 degrees"},
            {"role": "tool", "tool_call_id": "call_def456", "content": [{"type": "text", "text": "noon"}]},
        ],
        "tools": [WEATHER, TIME],
    },
    "tools strict": {"messages": ASK, "tools": [STRICT_WEATHER], "tool_choice": "required"},
    "tool_choice none": {"messages": ASK, "tools": [WEATHER], "tool_choice": "none"},
    "tool_choice auto": {"messages": ASK, "tools": [WEATHER], "tool_choice": "auto"},
    "tool_choice required": {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required"},
    "tool_choice named": {
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "parallel_tool_calls false": {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    },
    "response_format text": {"messages": ASK, "response_format": {"type": "text"}},
    "response_format json_object": {
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "response_format": {"type": "json_object"},
    },
    "response_format json_schema": {
        "messages": ASK,
        "response_format": {"type": "json_schema", "json_schema": SCHEMA},
    },
    "max_tokens": {"messages": ASK, "max_tokens": 100},
    "max_completion_tokens": {"messages": ASK, "max_completion_tokens": 100},
    "max_tokens cut": {"messages": ASK, "max_completion_tokens": 2},
    "n 2": {"messages": ASK, "n": 2},
    "stop string": {"messages": [{"role": "user", "content": "alpha beta gamma"}], "stop": "gamma"},
    "stop list": {"messages": [{"role": "user", "content": "alpha beta gamma"}], "stop": ["delta", "gamma"]},
    "temperature top_p": {"messages": ASK, "temperature": 0.2, "top_p": 0.9},
    "penalties": {"messages": ASK, "presence_penalty": 0.5, "frequency_penalty": -0.5},
    "seed": {"messages": ASK, "seed": 42},
    "logprobs": {"messages": ASK, "logprobs": True, "top_logprobs": 2},
    "logit_bias": {"messages": ASK, "logit_bias": {"1734": -100}},
    "user": {"messages": ASK, "user": "user-1234"},
    "user long": {"messages": ASK, "user": "session-" + "0123456789abcdef" * 20},
    "metadata store": {"messages": ASK, "metadata": {"topic": "weather"}, "store": True},
    "reasoning_effort": {"messages": ASK, "reasoning_effort": "low"},
    "service_tier": {"messages": ASK, "service_tier": "auto"},
    "prediction": {"messages": ASK, "prediction": {"type": "content", "content": "Echo: What is"}},
    "modalities text": {"messages": ASK, "modalities": ["text"]},
    "web_search_options": {"messages": ASK, "web_search_options": {"search_context_size": "low"}},
    "verbosity": {"messages": ASK, "verbosity": "low"},
    "prompt caching": {
        "messages": [
            {
                "role": "system",
                "content": [
                    {
                        "type": "text",
                        "text": "You are terse.",
                        "prompt_cache_breakpoint": {"mode": "explicit"},
                    }
                ],
            },
            *ASK,
        ],
        "prompt_cache_key": "tenant-1",
        "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    },
    "safety_identifier": {"messages": ASK, "safety_identifier": "hashed-user-1"},
    "moderation": {"messages": ASK, "moderation": {"model": "omni-moderation-latest"}},
    "legacy functions": {
        "messages": ASK,
        "functions": [WEATHER["function"]],
        "function_call": {"name": "get_weather"},
    },
    "multi system": {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "system", "content": "Answer in French."},
            *ASK,
        ]
    },
    "greeting first": {"messages": [{"role": "assistant", "content": "How can I help?"}, *ASK]},
    "tool_choice none after calls": {
        "messages": [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_abc123", "content": "15 degrees"},
        ],
        "tools": [WEATHER],
        "tool_choice": "none",
    },
    "n 2 with tools": {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", "n": 2},
}

# What a kind cannot do, refused with a 400 naming the parameter: (case, kind) -> param.
REFUSED: dict[tuple[str, str], str] = {
    ("input_audio", "claude"): "messages[0].content[1]",
    ("file id", "claude"): "messages[0].content[1]",
    ("file id", "gemini"): "messages[0].content[1]",
    ("n 2", "claude"): "n",
    ("n 2 with tools", "claude"): "n",
    ("legacy functions", "claude"): "functions",
    **{("moderation", k): "moderation" for k in ("claude", "gemini")},
    ("logprobs", "claude"): "logprobs",
    **{("logit_bias", k): "logit_bias" for k in ("claude", "gemini")},
    **{("web_search_options", k): "web_search_options" for k in ("claude", "gemini")},
}
# What the answer must say: the fakes echo the last user text.
SAID = {
    **{("stop string", k): "Echo: alpha beta" for k in KINDS},
    **{("stop list", k): "Echo: alpha beta" for k in KINDS},
    **{("text parts", k): "Echo: alpha" for k in KINDS},
}
# Best effort, by decision: JSON mode on Anthropic is a system instruction (its structured outputs
# need a schema), which the fake does not follow; what reached it is checked instead.
INSTRUCTED = {("response_format json_object", "claude")}
# The deprecated functions API: answered with ``function_call`` (the OpenAI fake does not play it).
LEGACY = {("legacy functions", "gemini")}
UNPLAYED = {("legacy functions", "gpt")}
FORCED = (
    "tool_choice required",
    "tool_choice named",
    "tools strict",
    "parallel_tool_calls false",
    "n 2 with tools",
)


@pytest.fixture(scope="module")
def cstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MessagesStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("cprobe") / "policy.yaml"
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


@pytest.fixture(scope="module")
def client(cstack: MessagesStack) -> Iterator[openai.OpenAI]:
    """One client (one connection pool) for the module: one per case cost a third of the run."""
    with openai.OpenAI(
        base_url=cstack.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
    ) as made:
        yield made


def _streamed(client: openai.OpenAI, kwargs: Any) -> dict[int, dict[str, Any]]:
    """The choices a stream assembles, checking each chunk's shape and the usage chunk last."""
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks, "no chunk"
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and all(
        c.object == "chat.completion.chunk" and c.created and c.model for c in chunks
    )
    *body, last = chunks
    assert last.choices == [] and last.usage is not None, "the usage chunk is not last"
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in body), "usage before the last chunk"
    choices: dict[int, dict[str, Any]] = {}
    for chunk in body:
        for choice in chunk.choices:
            got = choices.setdefault(
                choice.index,
                {
                    "content": "",
                    "calls": {},
                    "finish": None,
                    "role": None,
                    "logprobs": False,
                    "function_call": None,
                },
            )
            assert got["finish"] is None, f"a delta after finish_reason in choice {choice.index}"
            delta = choice.delta
            if delta.role:
                got["role"] = delta.role
            got["content"] += delta.content or ""
            for call in delta.tool_calls or []:
                held = got["calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    held["id"] = call.id
                if call.function and call.function.name:
                    held["name"] += call.function.name
                if call.function and call.function.arguments:
                    held["arguments"] += call.function.arguments
            if delta.function_call is not None:
                held_call = got["function_call"] or {"name": "", "arguments": ""}
                held_call["name"] += delta.function_call.name or ""
                held_call["arguments"] += delta.function_call.arguments or ""
                got["function_call"] = held_call
            if choice.logprobs and choice.logprobs.content:
                got["logprobs"] = True
            if choice.finish_reason:
                got["finish"] = choice.finish_reason
    return choices


def _whole(client: openai.OpenAI, kwargs: Any) -> dict[int, dict[str, Any]]:
    completion = client.chat.completions.create(**kwargs)
    assert (
        completion.object == "chat.completion" and completion.id and completion.created and completion.model
    )
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    return {
        c.index: {
            "role": c.message.role,
            "content": c.message.content or "",
            "calls": {
                j: {"id": t.id, "name": t.function.name, "arguments": t.function.arguments}  # type: ignore[union-attr]
                for j, t in enumerate(c.message.tool_calls or [])
            },
            "finish": c.finish_reason,
            "logprobs": bool(c.logprobs and c.logprobs.content),
            "function_call": c.message.function_call and c.message.function_call.model_dump(),
        }
        for c in completion.choices
    }


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_a_valid_request_is_answered_or_refused_by_name(
    cstack: MessagesStack, client: openai.OpenAI, case: str, model: str, streamed: bool
) -> None:
    kwargs: Any = {"model": model, **CASES[case]}
    refused = REFUSED.get((case, model))
    if refused is not None:
        with pytest.raises(openai.BadRequestError) as caught:
            _streamed(client, kwargs) if streamed else _whole(client, kwargs)
        error: Any = caught.value.body
        assert error["type"] == "invalid_request_error", error
        assert error["param"] == refused, error
        assert ANTHROPIC_KEY not in caught.value.response.text
        return
    choices = _streamed(client, kwargs) if streamed else _whole(client, kwargs)
    assert sorted(choices) == list(range(kwargs.get("n", 1)))
    for choice in choices.values():
        assert choice["role"] == "assistant"
        if (case, model) in UNPLAYED:
            continue
        if (case, model) in LEGACY:
            assert choice["finish"] == "function_call" and not choice["calls"]
            assert choice["function_call"]["name"] == "get_weather"
            assert isinstance(json.loads(choice["function_call"]["arguments"]), dict)
        elif case in FORCED:
            assert choice["finish"] == "tool_calls"
            calls = list(choice["calls"].values())
            assert len(calls) == 1 or (case != "parallel_tool_calls false" and calls)
            for call in calls:
                assert call["id"] and call["name"] in ("get_weather", "get_time")
                assert isinstance(json.loads(call["arguments"]), dict)
            if case == "tool_choice named" or case == "tools strict":
                assert calls[0]["name"] == "get_weather"
            if case == "tools strict":
                assert set(json.loads(calls[0]["arguments"])) == {"location", "unit"}
        else:
            assert not choice["calls"], choice
            assert choice["finish"] == ("length" if case == "max_tokens cut" else "stop"), choice
            assert choice["content"]
        said = SAID.get((case, model))
        if said is not None:
            assert choice["content"] == said
        if (case, model) == ("prompt caching", "claude"):  # Anthropic caches only up to marks
            _, sent = cstack.last_request(model)
            assert sent["system"] == [
                {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
            ]
        if (case, model) in INSTRUCTED:
            _, sent = cstack.last_request(model)
            assert "JSON" in sent["system"] and "output_config" not in sent
        elif case.startswith("response_format json"):
            assert isinstance(json.loads(choice["content"]), dict)
        if case == "logprobs":
            assert choice["logprobs"]


def test_a_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    for model in KINDS:
        chunks = list(client.chat.completions.create(model=model, messages=ASK, stream=True))
        assert chunks and all(c.choices and c.usage is None for c in chunks), model
        assert chunks[-1].choices[0].finish_reason == "stop"


class Weather(pydantic.BaseModel):
    city: str
    degrees: int


@pytest.mark.parametrize("model", KINDS)
def test_parse_with_a_pydantic_model(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.parse(model=model, messages=ASK, response_format=Weather)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather)


class Day(pydantic.BaseModel):
    name: str
    high: float


class Forecast(pydantic.BaseModel):
    """A schema as pydantic writes it: ``$defs`` and ``$ref``, ``anyOf`` with null, an enum."""

    city: str
    unit: Literal["c", "f"]
    days: list[Day]
    note: str | None


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_parse_a_nested_model(client: openai.OpenAI, model: str, streamed: bool) -> None:
    if streamed:
        with client.chat.completions.stream(model=model, messages=ASK, response_format=Forecast) as stream:
            parsed = stream.get_final_completion().choices[0].message.parsed
    else:
        parsed = (
            client.chat.completions.parse(model=model, messages=ASK, response_format=Forecast)
            .choices[0]
            .message.parsed
        )
    assert isinstance(parsed, Forecast)


@pytest.mark.parametrize("model", KINDS)
def test_parse_streamed_and_with_the_beta_name(
    cstack: MessagesStack, client: openai.OpenAI, model: str
) -> None:
    with client.chat.completions.stream(model=model, messages=ASK, response_format=Weather) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Weather)
    beta = client.beta.chat.completions.parse(model=model, messages=ASK, response_format=Weather)
    assert isinstance(beta.choices[0].message.parsed, Weather)
    if model == "claude":  # Anthropic's structured outputs, not an instruction
        _, sent = cstack.last_request("claude")
        assert sent["output_config"]["format"]["type"] == "json_schema" and "system" not in sent


@pytest.mark.parametrize("model", KINDS)
def test_parse_a_strict_tool_call(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.parse(
        model=model,
        messages=ASK,
        tools=[openai.pydantic_function_tool(Weather, name="get_weather")],
        tool_choice="required",
    )
    calls = completion.choices[0].message.tool_calls or []
    assert calls and isinstance(calls[0].function.parsed_arguments, Weather)  # type: ignore[union-attr]


@pytest.mark.parametrize("model", KINDS)
def test_stream_a_strict_tool_call_with_the_sdk_helper(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.stream(
        model=model,
        messages=ASK,
        tools=[openai.pydantic_function_tool(Weather, name="get_weather")],
        tool_choice="required",
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    calls = final.choices[0].message.tool_calls or []
    assert calls and isinstance(calls[0].function.parsed_arguments, Weather)  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", KINDS)
async def test_the_async_client_whole_and_streamed(cstack: MessagesStack, model: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=cstack.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
    ) as aclient:
        whole = await aclient.chat.completions.create(model=model, messages=ASK)
        stream = await aclient.chat.completions.create(
            model=model, messages=ASK, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == "Echo: What is the weather like in Paris?"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]
