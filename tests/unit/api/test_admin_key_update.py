"""``PATCH /admin/keys/{id}`` (h-keyupdate) over real HTTP on loopback, the official openai SDK as
the app: a key's settings change in place and the very next request has them (``key_cache_s`` is
300 s here, so no cache entry expiring could explain it). Before, a key's limits could not be
changed at all: the route was a 405 and the app kept its old limits until a new key was issued."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
HELLO: Any = [{"role": "user", "content": "hi"}]
REPLY = {
    "id": "c",
    "object": "chat.completion",
    "model": "ma",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def policy_text(store: Path) -> str:
    return f"""
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
  other: {{deployments: [{{provider: a, model: oa}}]}}
  third: {{deployments: [{{provider: a, model: ta}}]}}
memory: {{enabled: false}}
auth:
  key_cache_s: 300
  store: {store}
  teams:
    research: {{models: [m, other], budget_usd: 10, budget_period: 7d}}
    ops: {{}}
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN),
        parse_policy(policy_text(tmp_path / "keys.sqlite3")),
        {},
        transports={"a": MockTransport(lambda request: MockResponse.json(REPLY))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def create(client: TestClient, **body: Any) -> dict[str, Any]:
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def patch(client: TestClient, key_id: str, body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.patch(f"/admin/keys/{key_id}", json=body, headers=ADMIN)
    return resp.status, await resp.json()


def app_for(client: TestClient, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=secret, base_url=str(client.make_url("/v1")), max_retries=0, timeout=10)


async def admitted(app: openai.AsyncOpenAI, calls: int, model: str = "m") -> list[int]:
    """Each call's status: 200, or the status of the SDK's error."""
    out = []
    for _ in range(calls):
        try:
            await app.chat.completions.create(model=model, messages=HELLO)
            out.append(200)
        except openai.APIStatusError as exc:
            out.append(exc.status_code)
    return out


async def test_raising_a_keys_rpm_lets_the_app_through_at_once(client: TestClient) -> None:
    key = await create(client, team="ops", rpm=2)
    app = app_for(client, key["secret"])
    assert await admitted(app, 3) == [200, 200, 429]  # the key's lookup is cached now (300 s)

    status, updated = await patch(client, key["id"], {"rpm": 5})
    assert status == 200, updated
    assert (updated["id"], updated["rpm"], updated["status"]) == (key["id"], 5, "active")
    assert "secret" not in updated and "hash" not in updated and key["secret"] not in str(updated)
    # The same window (two admitted already): three more, then refused, as a key of rpm 5 is.
    assert await admitted(app, 4) == [200, 200, 200, 429]

    # Lowered again: refused at once (five in the window already).
    assert (await patch(client, key["id"], {"rpm": 1}))[0] == 200
    assert await admitted(app, 1) == [429]
    (listed,) = (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"]
    assert listed["rpm"] == 1 and listed["prefix"] == key["prefix"]
    await app.close()


async def test_models_narrowed_refuse_the_removed_model_as_on_create(client: TestClient) -> None:
    key = await create(client, team="research", models=["m", "other"])
    app = app_for(client, key["secret"])
    assert await admitted(app, 1, "other") == [200]

    status, updated = await patch(client, key["id"], {"models": ["m"]})
    assert (status, updated["models"]) == (200, ["m"])
    with pytest.raises(openai.NotFoundError) as refused:
        await app.chat.completions.create(model="other", messages=HELLO)
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "model_not_found"
    assert [m.id for m in (await app.models.list()).data] == ["m"]
    assert await admitted(app, 1, "m") == [200]

    # Wider than the team's: refused as on create, nothing changed.
    status, body = await patch(client, key["id"], {"models": ["m", "third"]})
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "model_not_in_team", "models")
    # null: back to the team's list.
    status, updated = await patch(client, key["id"], {"models": None})
    assert (status, updated["models"]) == (200, None)
    assert await admitted(app, 1, "other") == [200]
    await app.close()


async def test_a_budget_cleared_inherits_the_teams(client: TestClient) -> None:
    key = await create(client, team="research", budget_usd=0, budget_period="1d")
    app = app_for(client, key["secret"])
    assert await admitted(app, 1) == [429]  # a budget of $0: spent
    status, updated = await patch(client, key["id"], {"budget_usd": None, "budget_period": None})
    assert status == 200, updated
    assert (updated["budget_usd"], updated["budget_period_s"]) == (None, None)
    assert await admitted(app, 1) == [200]  # the team's $10 a week now
    await app.close()


async def test_only_what_is_sent_changes_and_namespaces_one_kind_at_a_time(client: TestClient) -> None:
    key = await create(
        client,
        team="ops",
        rpm=3,
        tpm=100,
        name="ci",
        description="d",
        namespaces={"read": ["a"], "write": ["b"]},
    )
    status, updated = await patch(client, key["id"], {"namespaces": {"read": ["x", "y"]}, "name": "batch"})
    assert status == 200, updated
    assert updated["namespaces"] == {"read": ["x", "y"], "write": ["b"]}
    assert (updated["name"], updated["description"], updated["rpm"], updated["tpm"]) == ("batch", "d", 3, 100)
    status, updated = await patch(
        client, key["id"], {"namespaces": None, "provider_files": True, "tpm": None}
    )
    assert updated["namespaces"] == {"read": None, "write": None}
    assert (updated["provider_files"], updated["tpm"], updated["rpm"]) == (True, None, 3)
    status, updated = await patch(client, key["id"], {"expires": "30d"})
    assert updated["expires_at"] - updated["created_at"] >= 30 * 86400 - 5
    status, updated = await patch(client, key["id"], {"expires": None})
    assert updated["expires_at"] is None


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"team": "research"}, 400, "team_not_changeable", "Issue a new key"),
        ({"rpm": 5, "team": "ops"}, 400, "team_not_changeable", "cannot be changed"),
        ({"rpm": 5, "colour": "red", "limit": 1}, 400, "unknown_field", "'colour', 'limit'"),
        ({"rpm": "5"}, 400, None, "Invalid value for 'rpm'"),
        ({"rpm": 0}, 400, None, "'rpm'"),
        ({"budget_period": "0.5s"}, 400, None, "budget_period"),
        ({"name": "a\x1b[2Jb"}, 400, None, "'name'"),
        ({}, 400, "nothing_to_change", "Nothing to change"),
        ([1], 400, None, ""),
    ],
)
async def test_bad_updates_are_refused_and_change_nothing(
    client: TestClient, body: Any, status: int, code: str | None, words: str
) -> None:
    key = await create(client, team="ops", rpm=2)
    got, answer = await patch(client, key["id"], body)
    assert got == status, answer
    assert answer["error"]["type"] == "invalid_request_error"
    if code is not None:
        assert answer["error"]["code"] == code
    assert words in answer["error"]["message"], answer
    (listed,) = (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"]
    assert listed["rpm"] == 2 and listed["team"] == "ops"


async def test_a_revoked_or_unknown_key_is_refused(client: TestClient) -> None:
    key = await create(client, team="ops")
    assert (await client.delete(f"/admin/keys/{key['id']}", headers=ADMIN)).status == 200
    status, body = await patch(client, key["id"], {"rpm": 5})
    assert (status, body["error"]["code"]) == (409, "key_revoked")
    status, body = await patch(client, "key_doesnotexist", {"rpm": 5})
    assert (status, body["error"]["code"]) == (404, "key_not_found")
    resp = await client.patch(f"/admin/keys/{key['id']}", json={"rpm": 5})
    assert resp.status == 401  # the admin token, as every /admin/keys call


async def test_an_update_writes_one_audit_line_with_before_and_after(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    key = await create(client, team="research", rpm=2, budget_usd=3, name="ci")
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        assert (await patch(client, key["id"], {"rpm": 5, "budget_usd": None, "name": "ci"}))[0] == 200
        assert (await patch(client, key["id"], {"team": "ops"}))[0] == 400
    ok, refused = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "gateway.audit" and r.fields["action"] == "key.update"  # type: ignore[attr-defined]
    ]
    assert (ok["action"], ok["outcome"], ok["actor"], ok["key_id"], ok["team"]) == (
        "key.update",
        "ok",
        "admin",
        key["id"],
        "research",
    )
    # What changed, before and after; a setting sent with the value it had is not a change.
    assert ok["changes"] == {"rpm": {"before": 2, "after": 5}, "budget_usd": {"before": 3.0, "after": None}}
    assert (refused["action"], refused["outcome"], refused["code"]) == (
        "key.update",
        "refused",
        "team_not_changeable",
    )
    assert key["secret"] not in caplog.text and key["secret"][6:] not in caplog.text
