"""Memory augmentation through the front doors: ``x-gateway-memory`` on ``/v1/messages`` (the
anthropic SDK) and ``/v1/responses`` (the openai SDK) adds the memories chat would add, placed in
the door's own format, whether the deployment gets the client's format (native) or a translation.
Real processes: an OpenAI fake that embeds by words, an Anthropic fake that refuses what
Anthropic refuses, and a gateway in open mode."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from gateway.testing.process import ManagedProcess
from tests.e2e.conftest import start_fakes, start_gateway

OPEN, CLOSE = "<memory-context>", "</memory-context>"
TRUSTED = "handbook"
QUESTION = "when is the turbine inspection due"


@dataclass
class Doors:
    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    turbine: str  # the id of a memory in "kb" (reference material)
    rule: str  # the id of a memory in the trusted namespace

    def last_request(self, fake: str) -> Any:
        return self.stats(fake)["last_request"]["body"]

    def stats(self, fake: str) -> Any:
        with urllib.request.urlopen(self.fakes[fake].url + "/_fake/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key="k", max_retries=0)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="k", max_retries=0)


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    fakes = start_fakes(
        {
            "gpt": ["--embedding-kind", "words", "--embedding-dim", "64"],
            "claude": ["--flavor", "anthropic"],
        }
    )
    policy = tmp_path_factory.mktemp("doors") / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: open}}
            cache: {{enabled: false}}
            providers:
              gpt: {{kind: openai, base_url: "{fakes["gpt"].url}/v1"}}
              claude: {{kind: anthropic, base_url: "{fakes["claude"].url}/v1"}}
            models:
              chat: {{deployments: [{{provider: gpt, model: upstream-chat}}]}}
              claude: {{deployments: [{{provider: claude, model: claude-upstream}}]}}
              embed: {{deployments: [{{provider: gpt, model: upstream-embed}}]}}
            memory:
              embedding_model: embed
              namespaces: {{{TRUSTED}: {{trusted: true}}}}
            """
        )
    )
    gateway = None
    try:
        gateway = start_gateway(policy)
        added = _post(
            gateway.url + "/v1/memory",
            {
                "memories": [
                    {"namespace": "kb", "content": "the turbine inspection is due in April"},
                    {"namespace": TRUSTED, "content": "turbine questions: always name the inspection team"},
                ]
            },
        )["data"]
        yield Doors(gateway, fakes, added[0]["id"], added[1]["id"])
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()


def _reference(memory_id: str) -> str:
    return f"{OPEN}\n[{memory_id}] the turbine inspection is due in April\n{CLOSE}"


@pytest.mark.parametrize("stream", [False, True])
def test_messages_to_anthropic_get_the_memories_in_messages_format(doors: Doors, stream: bool) -> None:
    client = doors.anthropic()
    kwargs: Any = {
        "model": "claude",
        "max_tokens": 50,
        "system": "You help the maintenance team.",
        "messages": [{"role": "user", "content": QUESTION}],
        "extra_headers": {"x-gateway-memory": f"kb,{TRUSTED}"},
    }
    if stream:
        with client.messages.with_streaming_response.create(**kwargs, stream=True) as streamed:
            ids = streamed.headers["x-gateway-memory-ids"]
            assert "message_stop" in streamed.text()
    else:
        raw = client.messages.with_raw_response.create(**kwargs)
        ids = raw.headers["x-gateway-memory-ids"]
        assert raw.parse().content[0].text  # type: ignore[union-attr]
    assert sorted(ids.split(",")) == sorted([doors.turbine, doors.rule])
    sent = doors.last_request("claude")
    # Trusted memories after the client's own system prompt; reference material in a user turn
    # before the question (the fake refuses what Anthropic refuses: it took this shape).
    system = sent["system"]
    text = system if isinstance(system, str) else "\n".join(b["text"] for b in system)
    assert text.startswith("You help the maintenance team.")
    assert f"[{doors.rule}] turbine questions" in text and OPEN not in text
    flat = json.dumps(sent["messages"])
    assert _reference(doors.turbine).replace("\n", "\\n") in flat
    assert flat.index(OPEN) < flat.index(QUESTION)


def test_messages_translated_for_an_openai_deployment_get_them_as_chat_does(doors: Doors) -> None:
    raw = doors.anthropic().messages.with_raw_response.create(
        model="chat",
        max_tokens=50,
        messages=[{"role": "user", "content": QUESTION}],
        extra_headers={"x-gateway-memory": "kb"},
    )
    assert raw.headers["x-gateway-memory-ids"] == doors.turbine
    messages = doors.last_request("gpt")["messages"]
    # One user turn (the door joins consecutive user messages, as Anthropic does): the memories,
    # then the question.
    assert [m["role"] for m in messages] == ["user"]
    flat = json.dumps(messages[0]["content"]).replace("\\n", "\n")
    assert _reference(doors.turbine) in flat and flat.index(OPEN) < flat.index(QUESTION)


def test_a_tool_result_turn_keeps_its_result_first(doors: Doors) -> None:
    tool = {"name": "lookup", "description": "Look up", "input_schema": {"type": "object", "properties": {}}}
    raw = doors.anthropic().messages.with_raw_response.create(
        model="claude",
        max_tokens=50,
        tools=[tool],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "hello"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "nothing found"},
                    {"type": "text", "text": QUESTION},
                ],
            },
        ],
        extra_headers={"x-gateway-memory": "kb"},
    )
    assert raw.headers["x-gateway-memory-ids"] == doors.turbine
    last = doors.last_request("claude")["messages"][-1]["content"]
    assert last[0]["type"] == "tool_result" and last[1]["text"] == QUESTION
    assert OPEN in last[-1]["text"]


def test_responses_get_the_memories_and_never_keep_them(doors: Doors) -> None:
    client = doors.openai()
    raw = client.responses.with_raw_response.create(
        model="chat",
        instructions="You help the maintenance team.",
        input=QUESTION,
        extra_headers={"x-gateway-memory": f"kb,{TRUSTED}"},
    )
    first = raw.parse()
    assert sorted(raw.headers["x-gateway-memory-ids"].split(",")) == sorted([doors.turbine, doors.rule])
    messages = doors.last_request("gpt")["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user", "user"]
    assert messages[0]["content"] == "You help the maintenance team."
    assert f"[{doors.rule}]" in messages[1]["content"]
    assert OPEN in messages[2]["content"] and messages[3]["content"] == QUESTION
    # The conversation kept for previous_response_id is the client's own: no memory in it.
    items = client.responses.input_items.list(first.id)
    assert OPEN not in json.dumps([i.model_dump() for i in items]) and "[mem" not in json.dumps(
        [i.model_dump() for i in items]
    )
    client.responses.create(model="chat", input="and who inspects it", previous_response_id=first.id)
    again = doors.last_request("gpt")["messages"]
    assert OPEN not in json.dumps(again)  # no header this turn: none recalled, none carried


def test_without_the_header_nothing_is_recalled_and_bad_namespaces_are_refused(doors: Doors) -> None:
    raw = doors.anthropic().messages.with_raw_response.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": QUESTION}]
    )
    assert "x-gateway-memory-ids" not in raw.headers
    assert OPEN not in json.dumps(doors.last_request("claude"))
    with pytest.raises(anthropic.BadRequestError) as bad:
        doors.anthropic().messages.create(
            model="claude",
            max_tokens=50,
            messages=[{"role": "user", "content": QUESTION}],
            extra_headers={"x-gateway-memory": "not a namespace!"},
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]  # Anthropic's envelope


def test_a_memory_field_on_the_messages_door_is_refused_and_never_sent(doors: Doors) -> None:
    """The chat door's ``memory`` field was dropped without a word on ``/v1/messages`` and sent to
    a native Anthropic deployment, namespace names and all (an outside probe)."""
    before = doors.stats("claude")["requests"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        doors.anthropic().messages.create(
            model="claude",
            max_tokens=50,
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"memory": {"namespaces": ["plant_safety"]}},
        )
    body: Any = bad.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == (
        "Invalid value for 'memory': Extra inputs are not permitted (the gateway's memory is asked "
        "for with the x-gateway-memory header on this API)."
    )
    assert doors.stats("claude")["requests"] == before  # refused before any provider saw it
