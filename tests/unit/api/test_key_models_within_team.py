"""A team's ``models`` are a ceiling for its keys (h-teams), over real HTTP on loopback: the admin
API refuses a key whose own ``models`` go beyond its team's, and a key made before its team was
narrowed (a policy reload) may call only what both lists hold, refused in each door's envelope
through the official SDKs. Before, a key of a team limited to ``[m]`` could be created with
``models: [other]`` and then call ``other``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import load_policy_with_digest
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
  other: {{deployments: [{{provider: a, model: oa}}]}}
  third: {{deployments: [{{provider: a, model: ta}}]}}
memory: {{enabled: false}}
auth:
  store: {store}
  teams:
    research: {{models: {research}}}
    ops: {{}}
"""


def answer(request: UpstreamRequest) -> MockResponse:
    model = orjson.loads(request.body)["model"]
    return MockResponse.json(
        {
            "id": "c",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


def write_policy(path: Path, research: list[str]) -> None:
    path.write_text(
        POLICY.format(store=path.parent / "keys.sqlite3", research=orjson.dumps(research).decode())
    )


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    write_policy(path, ["m", "other"])
    return path


@pytest.fixture
async def client(policy_file: Path) -> AsyncIterator[TestClient]:
    settings = Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(policy_file))
    policy, digest = load_policy_with_digest(policy_file)
    app = build_app(
        settings,
        policy,
        {},
        transports={"a": MockTransport(answer)},
        policy_path=str(policy_file),
        policy_digest=digest,
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def create(client: TestClient, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    return resp.status, await resp.json()


async def stored(client: TestClient) -> list[object]:
    data: list[object] = (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"]
    return data


@pytest.mark.parametrize(
    ("models", "outside"),
    [(["other", "third"], ["third"]), (["third"], ["third"]), (["m", "third", "other"], ["third"])],
)
async def test_a_key_may_not_widen_its_teams_models(
    client: TestClient, models: list[str], outside: list[str]
) -> None:
    status, body = await create(client, {"team": "research", "models": models})
    assert status == 400, body
    error = body["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "models",
        "model_not_in_team",
    )
    message = str(error["message"])
    assert all(f"'{m}'" in message for m in outside), message
    assert "team 'research' (m, other)" in message, message
    assert await stored(client) == []


async def test_a_key_may_narrow_its_teams_models_and_a_team_without_a_list_has_no_ceiling(
    client: TestClient,
) -> None:
    narrowed = await create(client, {"team": "research", "models": ["other"]})
    assert narrowed[0] == 201 and narrowed[1]["models"] == ["other"]
    assert (await create(client, {"team": "research", "models": []}))[0] == 201  # no model at all
    assert (await create(client, {"team": "ops", "models": ["third"]}))[0] == 201
    # An unknown group is still named as unknown, not as outside the team.
    status, body = await create(client, {"team": "research", "models": ["gpt-9"]})
    assert (status, body["error"]["code"]) == (400, "model_not_found")  # type: ignore[index]


async def test_a_team_narrowed_after_its_keys_were_made_narrows_them(
    client: TestClient, policy_file: Path
) -> None:
    status, key = await create(client, {"team": "research", "models": ["m", "other"]})
    assert status == 201, key
    secret = str(key["secret"])
    oa = openai.AsyncOpenAI(api_key=secret, base_url=str(client.make_url("/v1")), max_retries=0, timeout=10)
    an = anthropic.AsyncAnthropic(
        api_key=secret, base_url=str(client.make_url("")), max_retries=0, timeout=10
    )
    hello = [{"role": "user", "content": "hi"}]
    assert (await oa.chat.completions.create(model="other", messages=hello)).choices  # type: ignore[arg-type]

    write_policy(policy_file, ["m"])  # the team loses `other`
    reloaded = await client.post("/admin/policy/reload", headers=ADMIN)
    assert reloaded.status == 200, await reloaded.text()

    with pytest.raises(openai.NotFoundError) as refused:
        await oa.chat.completions.create(model="other", messages=hello)  # type: ignore[arg-type]
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    assert "'other'" in error["message"] and "third" not in error["message"]
    with pytest.raises(anthropic.NotFoundError) as refused_messages:
        await an.messages.create(model="other", max_tokens=5, messages=hello)  # type: ignore[arg-type]
    envelope = refused_messages.value.body
    assert isinstance(envelope, dict)
    assert envelope["type"] == "error" and envelope["error"]["type"] == "not_found_error"
    assert [m.id for m in (await oa.models.list()).data] == ["m"]
    # What both lists hold still works, on both doors.
    assert (await oa.chat.completions.create(model="m", messages=hello)).choices  # type: ignore[arg-type]
    assert (await an.messages.create(model="m", max_tokens=5, messages=hello)).content  # type: ignore[arg-type]
    # The record keeps what was asked; the team's list is applied at each lookup.
    (listed,) = await stored(client)
    assert isinstance(listed, dict) and listed["models"] == ["m", "other"]
    await oa.close()
    await an.close()
