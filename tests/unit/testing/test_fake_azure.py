"""The OpenAI fake's Azure OpenAI paths: deployment in the path, key in ``api-key``, api-version required."""

from __future__ import annotations

import orjson
from pytest_aiohttp import AiohttpClient

from gateway.testing.fake_provider import FakeConfig, build_app

CHAT = {"messages": [{"role": "user", "content": "hello azure"}]}
PATH = "/openai/deployments/dep-1/chat/completions"


async def test_azure_paths(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(FakeConfig(require_key="k")))
    ok = await client.post(
        f"{PATH}?api-version=2024-10-21", data=orjson.dumps(CHAT), headers={"api-key": "k"}
    )
    body = await ok.json()
    assert body["model"] == "dep-1" and body["choices"][0]["message"]["content"] == "Echo: hello azure"
    stats = await (await client.get("/_fake/stats")).json()
    assert stats["last_request"]["body"] == CHAT  # as sent: no model in the body
    bearer = await client.post(
        f"{PATH}?api-version=1", data=orjson.dumps(CHAT), headers={"Authorization": "Bearer k"}
    )
    assert bearer.status == 401  # Azure's key header, not OpenAI's
    unversioned = await client.post(PATH, data=orjson.dumps(CHAT), headers={"api-key": "k"})
    assert unversioned.status == 400 and (await unversioned.json())["error"]["param"] == "api-version"
    embed = await client.post(
        "/openai/deployments/emb/embeddings?api-version=1",
        data=orjson.dumps({"input": "a"}),
        headers={"api-key": "k"},
    )
    assert (await embed.json())["model"] == "emb"


async def test_an_argument_the_api_version_lacks_is_refused_as_azure_does(
    aiohttp_client: AiohttpClient,
) -> None:
    """Azure's 400 for an argument its api-version does not know ("Unrecognized request argument
    supplied: X", param null), per the versions that added them (h-xlate2); undated versions
    (v1, preview) take everything."""
    client = await aiohttp_client(build_app(FakeConfig()))
    cases = [
        ("2024-08-01-preview", {"max_completion_tokens": 5}, "max_completion_tokens"),
        ("2024-06-01", {"stream": True, "stream_options": {"include_usage": True}}, "stream_options"),
        ("2024-06-01", {"parallel_tool_calls": False}, "parallel_tool_calls"),
        ("2024-10-21", {"store": True}, "store"),
        ("2024-10-21", {"reasoning_effort": "low"}, "reasoning_effort"),
        ("2024-12-01-preview", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ("2023-10-01-preview", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("2023-05-15", {"functions": [{"name": "f"}]}, "functions"),
    ]
    for version, extra, name in cases:
        resp = await client.post(f"{PATH}?api-version={version}", data=orjson.dumps({**CHAT, **extra}))
        assert resp.status == 400, (version, name)
        error = (await resp.json())["error"]
        assert (
            error["message"] == f"Unrecognized request argument supplied: {name}" and error["param"] is None
        )
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}
    old = await client.post(
        f"{PATH}?api-version=2024-07-01-preview", data=orjson.dumps({**CHAT, "response_format": schema})
    )
    assert old.status == 400 and (await old.json())["error"]["param"] == "response_format.type"
    taken = [
        (
            "2024-09-01-preview",
            {
                "max_completion_tokens": 5,
                "parallel_tool_calls": False,
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
        ),
        (
            "2024-10-21",
            {"response_format": schema, "stream": True, "stream_options": {"include_usage": True}},
        ),
        ("2025-01-01-preview", {"store": True, "prediction": {"type": "content", "content": "x"}}),
        ("v1", {"store": True, "verbosity": "low"}),
        ("preview", {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}),
    ]
    for version, extra in taken:
        resp = await client.post(f"{PATH}?api-version={version}", data=orjson.dumps({**CHAT, **extra}))
        assert resp.status == 200, (version, await resp.text())
