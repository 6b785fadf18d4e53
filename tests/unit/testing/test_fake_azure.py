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
