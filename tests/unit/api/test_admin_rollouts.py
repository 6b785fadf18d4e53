"""``/admin/rollouts`` over real HTTP on loopback (in process): behind the admin token, the states
listed, actions applied, and bad input answered 4xx in OpenAI's envelope."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
auth: {mode: open}
memory: {enabled: false}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  chat:
    deployments:
      - {provider: a, model: old}
      - {provider: a, model: org/new:8b, rollout: {hold_s: 1h}}
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    app = build_app(
        replace(Settings(access_log=False, admin_token=TOKEN), state_dir=str(tmp_path)),
        parse_policy(POLICY),
        {},
        transports={"a": MockTransport(lambda request: MockResponse.json(answer))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        deadline = time.monotonic() + 10
        while (await _listed(c))["status"] != "rolling":  # no smoke prompts: rolling at the first tick
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        yield c


async def _listed(c: TestClient) -> dict[str, object]:
    resp = await c.get("/admin/rollouts", headers=ADMIN)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    rollout: dict[str, object] = body["data"][0]
    return rollout


async def test_lists_and_drives_a_rollout(client: TestClient, tmp_path: Path) -> None:
    listed = await _listed(client)
    assert (listed["model"], listed["provider"], listed["upstream_model"]) == ("chat", "a", "org/new:8b")
    assert (listed["step_percent"], listed["steps"], listed["hold_s"]) == (10, [10, 25, 50, 100], 3600)
    resp = await client.post("/admin/rollouts/pause", json={"model": "chat"}, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["status"] == "paused"
    models = await (await client.get("/admin/models", headers=ADMIN)).json()
    assert models["models"]["chat"]["deployments"][1]["rollout"]["status"] == "paused"
    assert (tmp_path / "rollouts.json").exists()  # the embedded store, under SOPHIA_STATE_DIR
    resp = await client.post("/admin/rollouts/pause", json={"model": "chat"}, headers=ADMIN)
    assert resp.status == 409
    assert "it is paused" in (await resp.json())["error"]["message"]


async def test_bad_input_is_a_clear_4xx(client: TestClient) -> None:
    for path, body, status, text in [
        ("/admin/rollouts/explode", {"model": "chat"}, 404, "Unknown rollout action 'explode'"),
        ("/admin/rollouts/pause", {}, 400, "'model' is required"),
        ("/admin/rollouts/pause", {"model": 3}, 400, "'model' must be a non-empty string"),
        ("/admin/rollouts/pause", {"model": "nope"}, 404, "No rollout in model group 'nope'"),
    ]:
        resp = await client.post(path, json=body, headers=ADMIN)
        assert resp.status == status, path
        assert text in (await resp.json())["error"]["message"]
    # The error names the body's field (OpenAI's ``param``), not the gateway's word for it.
    resp = await client.post("/admin/rollouts/pause", json={"model": "nope"}, headers=ADMIN)
    assert (await resp.json())["error"]["param"] == "model"
    resp = await client.post(
        "/admin/rollouts/pause", data=b"{not json", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_needs_the_admin_token(client: TestClient) -> None:
    assert (await client.get("/admin/rollouts")).status == 401
    assert (await client.post("/admin/rollouts/abort", json={"model": "chat"})).status == 401


# The fixture's policy with the candidate the same pair as the group's first deployment.
DUPLICATE = POLICY.replace("{provider: a, model: org/new:8b, rollout:", "{provider: a, model: old, rollout:")


async def test_a_rollout_of_a_deployment_the_group_has_already_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A candidate with the provider and model of another deployment of its group was accepted:
    the router took the first entry of that pair for the candidate, so the rollout's share went to
    the old entry and the gates judged it. The reload refuses it; the policy in force serves on."""
    from gateway.cli import main

    assert DUPLICATE != POLICY
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    settings = replace(
        Settings(access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(path)),
        state_dir=str(tmp_path),
    )
    transports = {"a": MockTransport(lambda request: MockResponse.json({}))}
    app = build_app(settings, parse_policy(POLICY), {}, transports=transports, policy_path=str(path))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        path.write_text(DUPLICATE)
        resp = await c.post("/admin/policy/reload", headers=ADMIN)
        body = await resp.json()
        assert resp.status == 422 and body["error"]["code"] == "policy_invalid", body
        problem = (
            f"{path}:11: models.chat.deployments[1].rollout: the rollout's candidate 'a/old' is deployment 0"
        )
        assert problem in body["error"]["message"]
        assert (await _listed(c))["upstream_model"] == "org/new:8b"  # the policy in force

    # ``policy check`` says the same, and exits 1.
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {problem} of the group already (hint: a rollout brings in a deployment" in err
    assert f"{path}: 1 error(s)" in err


async def test_a_huge_name_is_a_small_error_that_still_says_what_is_wrong(client: TestClient) -> None:
    """Group names and actions are repeated in the error: a 100,000-character one made a 100 KB
    body; it is cut to 256 characters with its length."""
    resp = await client.post("/admin/rollouts/pause", json={"model": "g" * 100_000}, headers=ADMIN)
    body = await resp.read()
    assert resp.status == 404 and len(body) < 1000, len(body)
    message = orjson.loads(body)["error"]["message"]
    assert message.startswith("No rollout in model group '" + "g" * 256 + "…' (100000 chars); rollouts: chat")
    resp = await client.post("/admin/rollouts/" + "x" * 5000, json={"model": "chat"}, headers=ADMIN)
    body = await resp.read()
    assert resp.status == 404 and len(body) < 1000 and b"Unknown rollout action" in body
    assert b"(5000 chars)" in body


async def test_each_rollout_action_writes_an_audit_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        ok = await client.post(
            "/admin/rollouts/pause", json={"model": "chat"}, headers={**ADMIN, "X-Request-Id": "r-pause"}
        )
        again = await client.post("/admin/rollouts/pause", json={"model": "chat"}, headers=ADMIN)
        unknown = await client.post("/admin/rollouts/explode", json={"model": "chat"}, headers=ADMIN)
        wrong = await client.post(
            "/admin/rollouts/abort", json={"model": "chat"}, headers={"Authorization": "Bearer wrong"}
        )
    assert (ok.status, again.status, unknown.status, wrong.status) == (200, 409, 404, 401)
    lines = [r.fields for r in caplog.records if r.name == "gateway.audit"]  # type: ignore[attr-defined]
    assert [(f["action"], f["outcome"], f["actor"]) for f in lines] == [
        ("rollout.pause", "ok", "admin"),
        ("rollout.pause", "refused", "admin"),
        ("rollout.unknown", "refused", "admin"),
        ("rollout.abort", "refused", "unauthenticated"),
    ]
    paused = lines[0]
    assert (paused["request_id"], paused["client"], paused["model"], paused["rollout_status"]) == (
        "r-pause",
        "127.0.0.1",
        "chat",
        "paused",
    )
    assert paused["upstream_model"] == "a/org/new:8b"
    assert (lines[1]["status"], lines[3]["status"], lines[3].get("model")) == (409, 401, None)
    assert all(TOKEN not in str(f) for f in lines)
