"""What a stranger sends: valid requests of every front door, with parts swapped for values of
the wrong type (lists where names go, objects where strings go, nulls, huge integers, empty
strings), sent through the whole gateway to each provider kind (the project's fakes, which refuse
what the real APIs refuse). Every answer is a 2xx or a 4xx in the door's envelope: never a 500
(an internal error) and never a 502 (the gateway sent a provider something it cannot take, or
a fake crashed), and the provider key is in no answer. Seeded: a failure names its request;
``FUZZ_SEED=N`` draws other requests (``for n in $(seq 50); do FUZZ_SEED=$n pytest ...``).

Found by this fuzz (each a 500 or a 502 before its fix): a Responses tool or input item whose
``type`` / ``role`` is a list (looked up in a set), ``truncation`` a list, a Gemini schema whose
``format`` or ``required`` holds a list, ``input_audio`` a list for Gemini, embeddings
``dimensions`` past int32 sent on, the fake Anthropic reading a schema ``type`` list."""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.fake_provider import FakeConfig
from gateway.testing.fake_provider import build_app as fake_app

KEY = "sk-fuzz-provider-key-0123456789"
SECRET = "sk-sg-fuzz000000000000000000000000000000"  # the caller's virtual key (mode limits)
PER_KIND = 1000  # mutated requests per provider kind and cache setting (about a second each)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": ["string", "null"], "format": "date-time", "enum": ["a", "b"]},
        "n": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/X"}]},
        "l": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "n", "l"],  # all of them: strict mode's rule
    "$defs": {
        "X": {
            "type": "object",
            "properties": {"y": {"const": "z"}},
            "required": ["y"],
            "additionalProperties": False,
        }
    },
    "additionalProperties": False,
}
IMAGE = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,AAAA"
SEEDS: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {
            "model": "M",
            "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}],
        },
        {
            "model": "M",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what"},
                        {"type": "image_url", "image_url": {"url": IMAGE}},
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                        {"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "a"}], "name": "bot"},
                {"role": "user", "content": "go", "name": "me"},
            ],
            "max_tokens": 20,
            "modalities": ["text"],
        },
        {
            "model": "M",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get", "arguments": '{"city":"x"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "get", "parameters": SCHEMA, "strict": True}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get"}},
            "parallel_tool_calls": False,
        },
        {
            "model": "M",
            "messages": [{"role": "developer", "content": "dev"}, {"role": "user", "content": "json"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}},
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["a", "b"],
            "seed": 3,
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 30,
            "reasoning_effort": "low",
            "user": "u",
            "metadata": {"a": "b"},
        },
        {  # what translated kinds refuse by name rather than drop (the OpenAI kind serves it)
            "model": "M",
            "messages": [{"role": "user", "content": "hi"}],
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"50256": -100},
        },
    ],
    "/v1/messages": [
        {"model": "M", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], "system": "brief"},
        {
            "model": "M",
            "max_tokens": 32,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "AA"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "get", "input": {"c": 1}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            ],
            "tools": [{"name": "get", "description": "d", "input_schema": SCHEMA}],
            "tool_choice": {"type": "tool", "name": "get"},
            "stream": True,
            "temperature": 0.3,
            "stop_sequences": ["x"],
            "top_k": 5,
            "metadata": {"user_id": "u"},
        },
        {
            "model": "M",
            "max_tokens": 2048,
            "messages": [
                {"role": "user", "content": "think"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "t", "signature": "s"},
                        {"type": "tool_use", "id": "x", "name": "get", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "x",
                            "content": [{"type": "text", "text": "r"}],
                            "is_error": True,
                        }
                    ],
                },
            ],
            "thinking": {"type": "enabled", "budget_tokens": 1024},  # Anthropic's least
            "tools": [{"name": "get", "input_schema": {"type": "object"}}],
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        },
    ],
    "/v1/responses": [
        {
            "model": "M",
            "input": "hi",
            "instructions": "brief",
            "max_output_tokens": 20,
            "truncation": "disabled",
        },
        {
            "model": "M",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "hi"},
                        {"type": "input_image", "image_url": IMAGE},
                    ],
                },
                {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
                {"type": "reasoning", "id": "r", "summary": []},
                {"role": "user", "content": [{"type": "input_file", "file_data": PDF, "filename": "a.pdf"}]},
            ],
            "tools": [{"type": "function", "name": "get", "parameters": SCHEMA, "strict": True}],
            "tool_choice": {"type": "function", "name": "get"},
            "stream": True,
            "temperature": 0.2,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}},
            "reasoning": {"effort": "low"},
            "include": ["reasoning.encrypted_content"],
            "metadata": {"k": "v"},
            "top_logprobs": 3,
        },
    ],
    "/v1/embeddings": [
        {"model": "E", "input": ["a", "b"], "encoding_format": "float"},
        {"model": "E", "input": "a", "encoding_format": "base64", "dimensions": 8},
    ],
    "/v1/completions": [{"model": "M", "prompt": "hi", "max_tokens": 5, "echo": False, "stream": False}],
}
# What goes in place of a part: every JSON type, empty and odd values, and shapes that look right.
ODD: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**70), 1e308, -0.0, 0.5, "", "x", "\u0000", "a" * 5000,
    [], [None], [{}], {}, {"type": None}, {"type": "text"}, {"": 1}, [[[]]], "NaN",
    {"role": "user"}, {"type": "function"}, [1, "a", None],
]  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``body`` with one to three parts replaced, removed or added."""
    body = copy.deepcopy(body)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = [p for p in _paths(body) if p]
        if not paths:
            break  # all removed: ``{}`` is a request too
        path = rng.choice(paths)
        parent: Any = body
        for k in path[:-1]:
            parent = parent[k]
        roll = rng.random()
        if roll < 0.7:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD))
        elif roll < 0.85 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            name = rng.choice(
                ("type", "role", "content", "text", "id", "name", "input", "tools", "stream", "n")
            )
            parent[name] = copy.deepcopy(rng.choice(ODD))
        else:
            parent.append(copy.deepcopy(rng.choice(ODD)))
    return body


@dataclass
class Ring:
    """The key store, as the gateway asks it: one key with every limit (high: counted, not hit)."""

    caller: Caller

    async def authenticate(self, secret: str) -> Caller | None:
        return self.caller if secret == SECRET else None


@pytest.mark.parametrize("mode", ["open", "cache", "limits"])
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_mutated_requests_get_an_answer_or_a_4xx_in_their_envelope(kind: str, mode: str) -> None:
    """``cache``: most requests cacheable (their key is made of them); ``limits``: a virtual key
    with RPM, TPM (reserved from ``max_tokens``) and a budget (priced usage)."""
    fake = TestServer(fake_app(FakeConfig(flavor=kind, require_key=KEY, models=("m1", "e1"))))
    await fake.start_server()
    root = str(fake.make_url("/v1beta" if kind == "gemini" else "/v1"))
    price = "price: {input_per_mtok: 3, output_per_mtok: 15}"
    policy = parse_policy(
        f"version: 1\nauth: {{mode: {'keys' if mode == 'limits' else 'open'}}}\nretry: {{max_attempts: 1}}\n"
        f"cache: {{enabled: {str(mode == 'cache').lower()}}}\nmemory: {{enabled: false}}\n"
        f"providers:\n  p: {{kind: {kind}, base_url: '{root}', api_key_env: PKEY}}\n"
        f"models:\n  M: {{deployments: [{{provider: p, model: m1, {price}}}]}}\n"
        f"  E: {{deployments: [{{provider: p, model: e1, {price}}}]}}\n"
    )
    app = build_app(Settings(access_log=False), policy, {"PKEY": KEY})
    caller = Caller("k1", "blue", rpm=10**6, tpm=10**9, budget_usd=10.0**6, budget_period_s=86400.0)
    app[keys.KEYRING] = Ring(caller)
    client = TestClient(TestServer(app))
    await client.start_server()
    rng = random.Random(f"{kind}-{mode}{os.environ.get('FUZZ_SEED', '')}")
    cache = mode == "cache"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"}
    seen: dict[int, int] = {}
    try:
        for _ in range(PER_KIND):
            path = rng.choice(sorted(SEEDS))
            body = mutate(rng.choice(SEEDS[path]), rng)
            if cache and rng.random() < 0.7:
                body["temperature"] = 0  # cacheable: the key is made of it
            sent = json.dumps(body).encode()  # (json: integers past 64 bits too)
            response = await client.post(path, data=sent, headers=headers)
            raw = await response.read()
            case = f"{path} {sent[:800]!r} -> {response.status} {raw[:300]!r}"
            seen[response.status] = seen.get(response.status, 0) + 1
            assert response.status < 500, case
            assert KEY.encode() not in raw, case
            if response.status >= 400:
                error = orjson.loads(raw)
                if path == "/v1/messages":
                    assert error["type"] == "error" and error["error"]["message"], case
                else:
                    assert error["error"]["message"], case
    finally:
        await client.close()
        await fake.close()
    assert seen.get(200, 0) > PER_KIND // 10, seen  # the fuzz reaches providers, not only validation
