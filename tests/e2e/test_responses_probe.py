"""A stranger's probe of the Responses door: valid requests per OpenAI's Responses API reference,
sent with the official ``openai`` SDK (``responses.create``, ``responses.stream``,
``responses.parse``) to a group of each deployment kind (the OpenAI, Anthropic and Gemini fakes,
all translated from chat). Each must be answered in the Responses shape the SDK parses (output
items, ``output_text``, usage; streamed events numbered in order, ``response.completed`` last),
or refused with a 400 in OpenAI's envelope naming what the serving kind cannot do; never a 500."""

from __future__ import annotations

import base64
import json
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from gateway.testing.pdf import make_pdf
from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

ANTHROPIC_KEY = "sk-ant-e2e-rprobe-0123456789abcdef"
WEATHER_JSON = '{"city": "Oslo", "degrees": 3}'
FAKES = {
    "claude": ["--flavor", "anthropic", "--require-key", ANTHROPIC_KEY],
    "gem": ["--flavor", "gemini"],
    "gpt": [],
    "claude-json": ["--flavor", "anthropic", "--reply", WEATHER_JSON],
    "gem-json": ["--flavor", "gemini", "--reply", WEATHER_JSON],
    "gpt-json": ["--reply", WEATHER_JSON],
}
KINDS = ["gpt", "claude", "gemini"]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PNG_URL = f"data:image/png;base64,{PNG}"
PDF = base64.b64encode(make_pdf(["The secret word is plum."])).decode()
ASK = "What is the weather like in Paris?"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
LOOSE: Any = {
    "type": "function",
    "name": "get_time",
    "description": "Get the local time of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL: Any = {
    "type": "function_call",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"location": "Paris", "unit": "celsius"}',
}


def _output(text: str) -> Any:
    return {"type": "function_call_output", "call_id": "call_1", "output": text}


def _user(*parts: Any) -> Any:
    return [{"role": "user", "content": [*parts, {"type": "input_text", "text": "Describe this."}]}]


CASES: dict[str, dict[str, Any]] = {
    "input string": {"input": ASK},
    "instructions": {"instructions": "You are terse.", "input": ASK},
    "easy message": {"input": [{"role": "user", "content": ASK}]},
    "message items every role": {
        "input": [
            {"type": "message", "role": "system", "content": "You are terse."},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be kind."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi! How can I help?", "annotations": []}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK}]},
        ]
    },
    "output message item with id and status": {
        "input": [
            {"role": "user", "content": "Hello"},
            {
                "type": "message",
                "id": "msg_0123",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi!", "annotations": []}],
            },
            {"role": "user", "content": ASK},
        ]
    },
    "developer and instructions": {
        "instructions": "You are terse.",
        "input": [
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": ASK},
        ],
    },
    "input_image url": {
        "input": _user({"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"})
    },
    "input_image base64": {
        "input": _user({"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "low"})
    },
    "input_file pdf base64": {
        "input": _user(
            {"type": "input_file", "filename": "plum.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}
        )
    },
    "tool_choice auto": {"input": ASK, "tools": [WEATHER], "tool_choice": "auto"},
    "tool_choice required": {"input": ASK, "tools": [WEATHER], "tool_choice": "required"},
    "tool_choice none": {"input": ASK, "tools": [WEATHER], "tool_choice": "none"},
    "tool_choice function": {
        "input": ASK,
        "tools": [WEATHER, LOOSE],
        "tool_choice": {"type": "function", "name": "get_weather"},
    },
    "tool_choice allowed_tools required": {
        "input": ASK,
        "tools": [LOOSE, WEATHER],
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "get_weather"}],
        },
    },
    "tool_choice allowed_tools auto": {
        "input": ASK,
        "tools": [WEATHER, LOOSE],
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "get_time"}],
        },
    },
    "tool_choice auto without tools": {"input": ASK, "tool_choice": "auto"},
    "tool_choice none with empty tools": {"input": ASK, "tools": [], "tool_choice": "none"},
    "parallel_tool_calls with empty tools": {"input": ASK, "tools": [], "parallel_tool_calls": False},
    "no parallel tool calls": {
        "input": ASK,
        "tools": [WEATHER, LOOSE],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    },
    "function_call_output round trip": {
        "input": [{"role": "user", "content": ASK}, CALL, _output("15 degrees")],
        "tools": [WEATHER],
    },
    "function_call with text before": {
        "input": [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": "Let me look."},
            CALL,
            _output("15 degrees"),
        ],
        "tools": [WEATHER],
    },
    "function_call_output parts": {
        "input": [
            {"role": "user", "content": ASK},
            CALL,
            {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": [{"type": "input_text", "text": "15 degrees"}],
            },
        ],
        "tools": [WEATHER],
    },
    "function_call_output image": {
        "input": [
            {"role": "user", "content": "Show me the weather map of Paris."},
            CALL,
            {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": [
                    {"type": "input_text", "text": "the map"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                ],
            },
        ],
        "tools": [WEATHER],
    },
    "json_object": {
        "input": "Answer in JSON: what is the weather in Paris?",
        "text": {"format": {"type": "json_object"}},
    },
    "max_output_tokens": {"input": ASK, "max_output_tokens": 64},
    "temperature top_p": {"input": ASK, "temperature": 0.2, "top_p": 0.9},
    "metadata": {"input": ASK, "metadata": {"session": "abc", "team": "probe"}},
    "reasoning effort": {"input": ASK, "reasoning": {"effort": "low"}},
    "reasoning summary": {"input": ASK, "reasoning": {"effort": "medium", "summary": "auto"}},
    "truncation auto": {"input": ASK, "truncation": "auto"},
    "truncation disabled": {"input": ASK, "truncation": "disabled"},
    "include encrypted reasoning": {"input": ASK, "include": ["reasoning.encrypted_content"], "store": False},
    "include logprobs": {"input": ASK, "include": ["message.output_text.logprobs"]},
    "user": {"input": ASK, "user": "user-1234"},
    "safety_identifier": {"input": ASK, "safety_identifier": "hashed-user-1234"},
    "prompt_cache_key": {"input": ASK, "prompt_cache_key": "probe-cache-key"},
    "store false": {"input": ASK, "store": False},
    "service_tier auto": {"input": ASK, "service_tier": "auto"},
    "text verbosity": {"input": ASK, "text": {"verbosity": "low"}},
    "max_tool_calls": {"input": ASK, "tools": [WEATHER], "max_tool_calls": 1},
    "prompt_cache_options": {"input": ASK, "prompt_cache_options": {"mode": "implicit"}},
    "image options": {"input": ASK, "image": {"context_compression": "auto"}},
}


# What a kind cannot do, refused in OpenAI's envelope with words naming it: (case, kind) -> words.
# What a kind cannot answer: Anthropic has no log probabilities (as on the chat door).
REFUSED: dict[tuple[str, str], str] = {("include logprobs", "claude"): "does not support logprobs"}
# What the answer must say: the fakes echo the last user text (or tool result).
SAID: dict[tuple[str, str], str] = {
    **{("input string", k): f"Echo: {ASK}" for k in KINDS},
    **{("message items every role", k): f"Echo: {ASK}" for k in KINDS},
}


@dataclass
class ProbeStack:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    _client: openai.OpenAI | None = None

    def client(self) -> openai.OpenAI:
        if self._client is None:  # one client (and its connection pool) for the module
            self._client = openai.OpenAI(
                base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0, timeout=10
            )
        return self._client

    def last_request(self, fake: str) -> Any:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            return json.loads(resp.read())["last_request"]["body"]


def policy(fakes: dict[str, ManagedProcess]) -> str:
    def provider(name: str, kind: str, extra: str = "") -> str:
        path = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta"}[kind]
        return (
            f"  {name}:\n    kind: {kind}\n    base_url: {fakes[name].url}{path}\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 5, total_s: 20}}\n{extra}"
        )

    head = textwrap.dedent(
        """\
        version: 1
        auth: {mode: open}
        memory: {enabled: false}
        breaker: {consecutive_failures: 1000000, min_requests: 1000000}
        retry: {max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}
        providers:
        """
    )
    models = textwrap.dedent(
        """\
        models:
          claude: {deployments: [{provider: claude, model: claude-test}]}
          gpt: {deployments: [{provider: gpt, model: gpt-test}]}
          gemini: {deployments: [{provider: gem, model: gemini-test}]}
          claude-json: {deployments: [{provider: claude-json, model: claude-test}]}
          gpt-json: {deployments: [{provider: gpt-json, model: gpt-test}]}
          gemini-json: {deployments: [{provider: gem-json, model: gemini-test}]}
        """
    )
    key = "    api_key_env: E2E_ANTHROPIC_KEY\n"
    return (
        head
        + provider("claude", "anthropic", key)
        + provider("gem", "gemini")
        + provider("gpt", "openai")
        + provider("claude-json", "anthropic")
        + provider("gem-json", "gemini")
        + provider("gpt-json", "openai")
        + models
    )


@pytest.fixture(scope="module")
def rp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProbeStack]:
    fakes = start_fakes(FAKES)
    path: Path = tmp_path_factory.mktemp("rprobe") / "policy.yaml"
    path.write_text(policy(fakes))
    gateway = None
    try:
        gateway = start_gateway(path, env={"E2E_ANTHROPIC_KEY": ANTHROPIC_KEY})
        yield ProbeStack(gateway, fakes)
    finally:
        if gateway is not None:
            gateway.stop()
            assert ANTHROPIC_KEY not in gateway.output
        for fake in fakes.values():
            fake.stop()


def _streamed(client: openai.OpenAI, kwargs: Any) -> Any:
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events))), numbers
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type == "response.completed" and events[-1].response.id == final.id
    assert [e.type for e in events].count("response.completed") == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text
    for e in events:
        if e.type == "response.output_item.done":
            assert e.item in final.output or e.item.id in [o.id for o in final.output]
    return final


def _ask(client: openai.OpenAI, kwargs: Any, streamed: bool) -> Any:
    if not streamed:
        return client.responses.create(**kwargs)
    return _streamed(client, kwargs)


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_a_valid_request_is_answered_or_refused_by_name(
    rp: ProbeStack, case: str, model: str, streamed: bool
) -> None:
    kwargs: Any = {"model": model, **CASES[case]}
    refused = REFUSED.get((case, model))
    if refused is not None:
        with pytest.raises(openai.BadRequestError) as caught:
            _ask(rp.client(), kwargs, streamed)
        body: Any = caught.value.body
        assert body["type"] == "invalid_request_error" and refused in body["message"]
        assert ANTHROPIC_KEY not in caught.value.response.text
        return
    response = _ask(rp.client(), kwargs, streamed)
    assert response.object == "response" and response.status == "completed", response
    assert response.id.startswith("resp_") and response.model and response.output
    choice = kwargs.get("tool_choice")
    forced = choice == "required" or (
        isinstance(choice, dict) and choice.get("mode", "required") == "required"
    )
    calls = [o for o in response.output if o.type == "function_call"]
    if forced:
        assert len(calls) == 1 and calls[0].name == "get_weather", response.output
        assert json.loads(calls[0].arguments)["location"]
        assert calls[0].call_id and calls[0].status == "completed"
    else:
        assert not calls and response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    echoed = ("instructions", "metadata", "temperature", "top_p", "max_output_tokens", "truncation")
    echoed += ("user", "safety_identifier", "prompt_cache_key", "max_tool_calls", "store", "service_tier")
    for name in (*echoed, "parallel_tool_calls", "previous_response_id"):
        if name in kwargs:
            assert getattr(response, name) == kwargs[name], name
    if "verbosity" in kwargs.get("text", {}):
        assert response.text.verbosity == kwargs["text"]["verbosity"]
    said = SAID.get((case, model))
    if said is not None:
        assert response.output_text == said


@pytest.mark.parametrize("model", ["gpt", "gemini"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_logprobs_asked_by_include_come_back_whole_and_streamed(
    rp: ProbeStack, model: str, streamed: bool
) -> None:
    """``include: ["message.output_text.logprobs"]`` was accepted and dropped: every kind answered
    ``logprobs: []``, so an app scoring its answers' confidence read nothing. Now the provider is
    asked (chat's ``logprobs`` and ``top_logprobs``) and its tokens come back on the output text
    and, streamed, on each text delta; ``top_logprobs`` alone changes nothing, as on OpenAI's API."""
    client = rp.client()
    kwargs: Any = {
        "model": model,
        "input": ASK,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
    }
    if streamed:
        with client.responses.stream(**kwargs) as stream:
            events = list(stream)
            response = stream.get_final_response()
        deltas = [e for e in events if e.type == "response.output_text.delta"]
        assert deltas and all(e.logprobs for e in deltas)
        assert "".join(t.token for e in deltas for t in e.logprobs) == response.output_text
        (done,) = [e for e in events if e.type == "response.output_text.done"]
        assert [t.token for t in done.logprobs] == [t.token for e in deltas for t in e.logprobs]
    else:
        response = client.responses.create(**kwargs)
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs
    assert "".join(t.token for t in part.logprobs) == response.output_text
    for token in part.logprobs:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 2
    sent = rp.last_request("gpt" if model == "gpt" else "gem")
    if model == "gpt":
        assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    unasked = client.responses.create(model=model, input=ASK, top_logprobs=2)
    assert unasked.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_logprobs_on_a_kind_without_them_are_refused_naming_include(rp: ProbeStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model="claude", input=ASK, include=["message.output_text.logprobs"])
    body: Any = caught.value.body
    assert body["param"] == "include" and "does not support logprobs" in body["message"], body


class Weather(BaseModel):
    city: str
    degrees: int


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_parse_with_a_pydantic_model_on_every_kind(rp: ProbeStack, model: str, streamed: bool) -> None:
    client = rp.client()
    if not streamed:
        parsed = client.responses.parse(model=f"{model}-json", input="Weather in Oslo?", text_format=Weather)
    else:
        with client.responses.stream(
            model=f"{model}-json", input="Weather in Oslo?", text_format=Weather
        ) as stream:
            for _ in stream:
                pass
            parsed = stream.get_final_response()
    assert parsed.output_parsed == Weather(city="Oslo", degrees=3)
    assert parsed.text.format.type == "json_schema"  # type: ignore[union-attr]


@pytest.mark.parametrize("model", KINDS)
def test_a_chain_by_previous_response_id_then_retrieve_and_delete(rp: ProbeStack, model: str) -> None:
    client = rp.client()
    first = client.responses.create(model=model, instructions="You are terse.", input="alpha beta")
    second = _streamed(client, {"model": model, "input": "gamma", "previous_response_id": first.id})
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.output_text == "Echo: gamma"
    kept = client.responses.retrieve(second.id)
    assert kept.id == second.id and kept.output_text == second.output_text and kept.status == "completed"
    third = client.responses.create(
        model=model,
        previous_response_id=second.id,
        input=[{"role": "user", "content": ASK}],
        tools=[WEATHER],
        tool_choice="required",
    )
    call = next(o for o in third.output if o.type == "function_call")
    fourth = client.responses.create(
        model=model,
        previous_response_id=third.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "15 degrees"}],
        tools=[WEATHER],
    )
    assert fourth.status == "completed" and fourth.output_text
    # a turn offering no tools after a tool round (Anthropic refuses tool blocks without tools)
    fifth = client.responses.create(model=model, previous_response_id=fourth.id, input="Thanks!")
    assert fifth.output_text == "Echo: Thanks!"
    client.responses.delete(fourth.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(fourth.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, input="more", previous_response_id=fourth.id)
    assert caught.value.code == "previous_response_not_found"


@pytest.mark.parametrize("model", KINDS)
def test_a_response_not_stored_cannot_be_continued_or_retrieved(rp: ProbeStack, model: str) -> None:
    client = rp.client()
    first = client.responses.create(model=model, input="alpha", store=False)
    assert first.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, input="more", previous_response_id=first.id)
    assert caught.value.param == "previous_response_id"


LONG = " ".join(f"word{i}" for i in range(40))


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_an_answer_cut_by_max_output_tokens_is_incomplete(rp: ProbeStack, model: str, streamed: bool) -> None:
    kwargs: Any = {"model": model, "input": LONG, "max_output_tokens": 16}
    if streamed:
        with rp.client().responses.stream(**kwargs) as stream:
            events = list(stream)
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        response = rp.client().responses.create(**kwargs)
    assert response.status == "incomplete", response
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text and LONG.startswith(response.output_text.removeprefix("Echo: "))


@pytest.mark.parametrize("model", KINDS)
def test_fewer_than_16_output_tokens_is_openais_400_on_every_kind(rp: ProbeStack, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model=model, input=ASK, max_output_tokens=10)
    assert caught.value.code == "integer_below_min_value" and caught.value.param == "max_output_tokens"
    assert "Expected a value >= 16, but got 10 instead." in caught.value.message


@pytest.mark.parametrize("model", KINDS)
def test_json_mode_without_the_word_json_is_openais_400_on_every_kind(rp: ProbeStack, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(
            model=model, instructions="Answer in JSON.", input=ASK, text={"format": {"type": "json_object"}}
        )
    assert caught.value.param == "text.format" and caught.value.code is None
    assert "Response input messages must contain the word 'json'" in caught.value.message


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize(
    ("items", "words"),
    [
        ([{"role": "user", "content": ASK}, _output("15")], "No tool call found for function call output"),
        (
            [{"role": "user", "content": ASK}, CALL, {"role": "user", "content": "And?"}],
            "No tool output found",
        ),
    ],
    ids=["output without call", "call without output"],
)
def test_calls_and_outputs_that_do_not_pair_are_openais_400_on_every_kind(
    rp: ProbeStack, model: str, items: Any, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model=model, input=items, tools=[WEATHER])
    assert caught.value.param == "input" and words in caught.value.message


def test_reasoning_effort_reaches_gemini_as_its_thinking_budget(rp: ProbeStack) -> None:
    """It was dropped: a Gemini model thought as much as it liked whatever the client asked."""
    answer = rp.client().responses.create(model="gemini", input=ASK, reasoning={"effort": "medium"})
    assert answer.status == "completed" and answer.reasoning is not None
    assert answer.reasoning.effort == "medium"
    sent = rp.last_request("gem")
    assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 8192}


@pytest.mark.parametrize("model", KINDS)
def test_input_tokens_are_counted_for_every_kind(rp: ProbeStack, model: str) -> None:
    counted = rp.client().responses.input_tokens.count(
        model=model, instructions="You are terse.", input=_user({"type": "input_image", "image_url": PNG_URL})
    )
    assert counted.object == "response.input_tokens" and counted.input_tokens > 1


@pytest.mark.parametrize("model", KINDS)
def test_a_strict_format_strict_mode_refuses_is_openais_400_on_every_kind(rp: ProbeStack, model: str) -> None:
    loose = {"type": "object", "properties": {"city": {"type": "string"}}}
    fmt: Any = {"type": "json_schema", "name": "Weather", "schema": loose, "strict": True}
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model=model, input=ASK, text={"format": fmt})
    assert caught.value.param == "text.format.schema"
    assert "Invalid schema for response_format 'Weather'" in caught.value.message


@pytest.mark.parametrize("model", KINDS)
def test_a_strict_function_strict_mode_refuses_is_openais_400_on_every_kind(
    rp: ProbeStack, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model=model, input=ASK, tools=[{**LOOSE, "strict": True}])
    assert caught.value.param == "tools[0].parameters"
    assert "Invalid schema for function 'get_time'" in caught.value.message


@pytest.mark.parametrize("model", KINDS)
def test_the_input_items_of_a_response_are_listed(rp: ProbeStack, model: str) -> None:
    client = rp.client()
    first = client.responses.create(
        model=model, input=[{"role": "user", "content": ASK}, CALL, _output("15")], tools=[WEATHER]
    )
    listed = client.responses.input_items.list(first.id, order="asc")
    assert [item.type for item in listed.data] == ["message", "function_call", "function_call_output"]
    assert all(item.id for item in listed.data) and not listed.has_more


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("given", [{}, {"input": []}], ids=["no input", "empty input"])
def test_instructions_alone_are_a_request_on_every_kind(rp: ProbeStack, model: str, given: Any) -> None:
    """``input`` is optional: Gemini's adapter refused a conversation of instructions alone and
    the door refused a request without ``input``."""
    answer = rp.client().responses.create(model=model, instructions="Say hello.", **given)
    assert answer.status == "completed" and answer.output_text.startswith("Echo:")


@pytest.mark.parametrize("model", KINDS)
def test_a_tool_name_openai_refuses_is_its_400_on_every_kind(rp: ProbeStack, model: str) -> None:
    dotted = {**WEATHER, "name": "weather.get"}
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model=model, input=ASK, tools=[dotted])
    assert caught.value.param == "tools[0].name" and "does not match pattern" in caught.value.message


PATCH_TOOL: Any = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch to the working tree",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" /(.|\\n)+/'},
}


@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_a_custom_tool_is_called_and_answered_on_every_kind(
    rp: ProbeStack, model: str, streamed: bool
) -> None:
    """Custom tools (free-text input, Codex's ``apply_patch``) were refused as built-in tools on
    every kind, so every request of a client that offers one failed. A translated kind gets a
    function of one string argument, its grammar said in that argument's description, and the
    call comes back as the ``custom_tool_call`` the client offered (streamed: one
    ``response.custom_tool_call_input.delta`` and ``.done``); the call and its
    ``custom_tool_call_output`` go back as history."""
    client = rp.client()
    ask: Any = [{"role": "user", "content": "call apply_patch"}]
    kwargs: Any = {"model": model, "input": ask, "tools": [PATCH_TOOL], "store": False}
    response = _ask(client, kwargs, streamed)
    (call,) = [o for o in response.output if o.type == "custom_tool_call"]
    assert call.name == "apply_patch" and call.input and call.call_id and call.id.startswith("ctc_")
    assert not [o for o in response.output if o.type == "function_call"]
    if streamed:
        with client.responses.stream(**kwargs) as stream:
            events = list(stream)
        deltas = [e for e in events if e.type == "response.custom_tool_call_input.delta"]
        (done,) = [e for e in events if e.type == "response.custom_tool_call_input.done"]
        assert "".join(e.delta for e in deltas) == done.input == call.input
    if model == "gpt":
        (function,) = rp.last_request("gpt")["tools"]
        assert function["type"] == "function" and function["function"]["name"] == "apply_patch"
        parameter = function["function"]["parameters"]["properties"]["input"]
        assert parameter["type"] == "string" and "*** Begin Patch" in parameter["description"]
    output: Any = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done: 1 file"}
    follow_up = client.responses.create(
        model=model, input=[*ask, call.model_dump(exclude_none=True), output], tools=[PATCH_TOOL], store=False
    )
    assert follow_up.output_text == "Echo: Done: 1 file"


def test_a_custom_tool_is_forced_by_tool_choice_and_kept_across_previous_response_id(rp: ProbeStack) -> None:
    client = rp.client()
    first = client.responses.create(
        model="claude",
        input="patch it",
        tools=[PATCH_TOOL],
        tool_choice={"type": "custom", "name": "apply_patch"},
    )
    (call,) = [o for o in first.output if o.type == "custom_tool_call"]
    output: Any = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "applied"}
    second = client.responses.create(
        model="gemini", previous_response_id=first.id, input=[output], tools=[PATCH_TOOL]
    )
    assert second.output_text == "Echo: applied"


def test_a_custom_tool_with_a_format_openai_does_not_know_is_refused(rp: ProbeStack) -> None:
    bad: Any = {**PATCH_TOOL, "format": {"type": "grammar", "syntax": "ebnf", "definition": "x"}}
    with pytest.raises(openai.BadRequestError) as caught:
        rp.client().responses.create(model="gpt", input=ASK, tools=[bad])
    body: Any = caught.value.body
    assert body["param"] == "tools[0].format", body
