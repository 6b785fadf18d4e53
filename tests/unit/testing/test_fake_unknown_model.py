"""The fakes refuse a model they do not serve, in the real API's words, once told which they serve.

Without ``--models`` (``FakeConfig.models`` None) every fake answers any model name, as the
rest of the suite relies on; with it, a request for another model gets the 404 the real API
sends: OpenAI's ``model_not_found``, Azure's ``DeploymentNotFound``, Anthropic's
``not_found_error`` "model: x", Gemini's ``NOT_FOUND`` "models/x is not found ...".
"""

from __future__ import annotations

import argparse

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from gateway.testing.fake_provider import FakeConfig, add_arguments, build_app

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
GENERATE = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


async def test_openai_refuses_an_unknown_model_with_model_not_found(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(FakeConfig(models=("served",))))
    for path, body in (
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"prompt": "p"}),
        ("/v1/embeddings", {"input": "x"}),
    ):
        missing = await client.post(path, data=orjson.dumps({"model": "gone", **body}))
        assert missing.status == 404, path
        assert await missing.json() == {
            "error": {
                "message": "The model `gone` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        }
        served = await client.post(path, data=orjson.dumps({"model": "served", **body}))
        assert served.status == 200, path
    listed = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["served"]


async def test_azure_refuses_an_unknown_deployment_with_deployment_not_found(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(build_app(FakeConfig(models=("dep-1",))))
    for path in ("chat/completions", "embeddings"):
        body = CHAT if path.startswith("chat") else {"input": "x"}
        missing = await client.post(
            f"/openai/deployments/dep-2/{path}?api-version=2024-10-21", data=orjson.dumps(body)
        )
        assert missing.status == 404
        error = (await missing.json())["error"]
        assert error["code"] == "DeploymentNotFound" and set(error) == {"code", "message"}
        assert error["message"].startswith("The API deployment for this resource does not exist.")
        ok = await client.post(f"/openai/deployments/dep-1/{path}?api-version=1", data=orjson.dumps(body))
        assert ok.status == 200


async def test_anthropic_refuses_an_unknown_model_with_not_found_error(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(FakeConfig(flavor="anthropic", models=("claude-served",))))
    missing = await client.post("/v1/messages", data=orjson.dumps({"model": "claude-gone", **MESSAGES}))
    assert missing.status == 404
    assert await missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-gone"},
    }
    ok = await client.post("/v1/messages", data=orjson.dumps({"model": "claude-served", **MESSAGES}))
    assert ok.status == 200


@pytest.mark.parametrize(
    ("version", "target", "body"),
    [
        ("v1beta", "gone:generateContent", GENERATE),
        ("v1", "gone:streamGenerateContent?alt=sse", GENERATE),
        ("v1beta", "gone:embedContent", {"model": "models/gone", "content": {"parts": [{"text": "x"}]}}),
    ],
)
async def test_gemini_refuses_an_unknown_model_with_not_found(
    aiohttp_client: AiohttpClient, version: str, target: str, body: dict[str, object]
) -> None:
    client = await aiohttp_client(build_app(FakeConfig(flavor="gemini", models=("gem",))))
    missing = await client.post(f"/{version}/models/{target}", data=orjson.dumps(body))
    assert missing.status == 404
    error = (await missing.json())["error"]
    method = target.split(":")[1].split("?")[0]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND"
    assert error["message"].startswith(
        f"models/gone is not found for API version {version}, or is not supported for {method}."
    )
    ok = await client.post("/v1beta/models/gem:generateContent", data=orjson.dumps(GENERATE))
    assert ok.status == 200


@pytest.mark.parametrize("flavor", ["openai", "anthropic", "gemini"])
async def test_without_models_any_model_is_answered(aiohttp_client: AiohttpClient, flavor: str) -> None:
    client = await aiohttp_client(build_app(FakeConfig(flavor=flavor)))
    if flavor == "openai":
        answer = await client.post("/v1/chat/completions", data=orjson.dumps({"model": "anything", **CHAT}))
    elif flavor == "anthropic":
        answer = await client.post("/v1/messages", data=orjson.dumps({"model": "anything", **MESSAGES}))
    else:
        answer = await client.post("/v1beta/models/anything:generateContent", data=orjson.dumps(GENERATE))
    assert answer.status == 200


def test_models_flag_is_the_opt_in() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert FakeConfig.from_args(parser.parse_args([])).models is None
    named = FakeConfig.from_args(parser.parse_args(["--models", "a,b"]))
    assert named.models == ("a", "b") and named.serves("a") and not named.serves("c")
    assert FakeConfig().serves("c") and FakeConfig().listed_models == ("fake-model",)
