"""``/admin/keys`` over real HTTP on loopback (in process): behind the admin token, the secret
shown once, and the keys it issues, revokes and rotates work (or stop working) at the edge."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def policy_text(store: Path) -> str:
    return f"""
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
  other: {{deployments: [{{provider: a, model: oa}}]}}
  priced: {{deployments: [{{provider: a, model: ma, price: {{input_per_mtok: 1000000, output_per_mtok: 0}}}}]}}
memory: {{enabled: false}}
auth:
  store: {store}
  teams:
    research: {{models: [m], rpm: 60, budget_usd: 10, budget_period: 7d}}
    ops: {{}}
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN),
        parse_policy(policy_text(tmp_path / "keys.sqlite3")),
        {},
        transports={"a": MockTransport(lambda request: MockResponse.json({"data": []}))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
async def test_every_endpoint_needs_the_admin_token(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys"),
        ("DELETE", "/admin/keys/key_abcdefghijkl"),
        ("POST", "/admin/keys/key_abcdefghijkl/rotate"),
        ("DELETE", "/admin/keys/key_abcdefghijkl/grace"),
    ]:
        resp = await client.request(method, path, json={"team": "ops"}, headers=headers)
        assert resp.status == 401, (method, path)
        assert (await resp.json())["error"]["type"] == "authentication_error"
    listed = await client.get("/admin/keys", headers=ADMIN)
    assert (await listed.json())["data"] == []  # nothing was created


async def test_create_shows_the_secret_once_and_the_key_works(client: TestClient) -> None:
    resp = await client.post(
        "/admin/keys",
        json={"team": "research", "rpm": 5, "expires": "90d", "name": "ci", "namespaces": {"read": ["a"]}},
        headers=ADMIN,
    )
    assert resp.status == 201
    created = await resp.json()
    secret = created["secret"]
    assert secret.startswith("sk-sg-") and len(secret) == 57  # 43 random characters, 8 of checksum
    assert created["prefix"] == secret[:10] + "…" and created["team"] == "research"
    assert (created["rpm"], created["name"], created["status"]) == (5, "ci", "active")
    assert created["expires_at"] - created["created_at"] == 90 * 86400
    assert created["namespaces"] == {"read": ["a"], "write": None}
    assert created["models"] is None  # inherits the team's

    listed = await (await client.get("/admin/keys", headers=ADMIN)).json()
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    text = str(listed)
    assert secret not in text and "hash" not in listed["data"][0] and "secret" not in listed["data"][0]
    assert (await (await client.get("/admin/keys?team=ops", headers=ADMIN)).json())["data"] == []
    # A filter that names no team is refused, never every team's keys (an outside probe)
    for query, param in (("team=", "team"), ("team=research&team=ops", "team"), ("tema=research", "tema")):
        refused = await client.get(f"/admin/keys?{query}", headers=ADMIN)
        assert refused.status == 400, query
        assert (await refused.json())["error"]["param"] == param

    assert (await client.get("/v1/models", headers=bearer(secret))).status == 200
    assert (await client.get("/v1/models", headers=bearer("sk-sg-" + "x" * 43))).status == 401


async def test_expires_may_be_a_time_with_its_offset(client: TestClient) -> None:
    at = datetime.now(UTC) + timedelta(days=10)
    for text in (at.strftime("%Y-%m-%dT%H:%M:%SZ"), at.astimezone(timezone(timedelta(hours=2))).isoformat()):
        resp = await client.post("/admin/keys", json={"team": "ops", "expires": text}, headers=ADMIN)
        assert resp.status == 201, await resp.text()
        made = await resp.json()
        assert abs(made["expires_at"] - at.timestamp()) < 2, (text, made)


async def test_the_largest_limits_and_durations_are_kept(client: TestClient) -> None:
    body = {"team": "ops", "rpm": 10**12, "tpm": 10**12, "expires": "36500d", "budget_period": "36500d"}
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert (made["rpm"], made["tpm"], made["budget_period_s"]) == (10**12, 10**12, 36500 * 86400)


async def test_revoke_then_the_key_is_refused_at_once(client: TestClient) -> None:
    created = await (await client.post("/admin/keys", json={"team": "ops"}, headers=ADMIN)).json()
    assert (await client.get("/v1/models", headers=bearer(created["secret"]))).status == 200  # cached
    resp = await client.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "revoked" and body["revoked_at"] is not None and "secret" not in body
    assert (await client.get("/v1/models", headers=bearer(created["secret"]))).status == 401
    missing = await client.delete("/admin/keys/key_abcdefghijkl", headers=ADMIN)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "key_not_found"


async def test_rotate_keeps_settings_and_retires_the_old_secret(client: TestClient) -> None:
    old = await (
        await client.post("/admin/keys", json={"team": "research", "tpm": 900}, headers=ADMIN)
    ).json()
    resp = await client.post(f"/admin/keys/{old['id']}/rotate", headers=ADMIN)
    assert resp.status == 201
    new = await resp.json()
    assert new["replaces"] == old["id"] and new["id"] != old["id"]
    assert (new["team"], new["tpm"]) == ("research", 900) and new["secret"] != old["secret"]
    assert (await client.get("/v1/models", headers=bearer(old["secret"]))).status == 401
    assert (await client.get("/v1/models", headers=bearer(new["secret"]))).status == 200
    again = await client.post(f"/admin/keys/{old['id']}/rotate", headers=ADMIN)
    assert again.status == 409 and (await again.json())["error"]["code"] == "key_revoked"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"team": "sales"}, "team"),
        ({"team": "ops", "models": ["gpt-9"]}, "models"),
        ({"team": "ops", "rpm": 0}, "rpm"),
        ({"team": "ops", "expires": "soon"}, "expires"),
        ({"team": "ops", "colour": "red"}, "colour"),
        ({}, "team"),
        # Past what the stores hold (each was a 500: SQLite overflow, or an answer not writable)
        ({"team": "ops", "rpm": 2**63}, "rpm"),
        ({"team": "ops", "tpm": 10**12 + 1}, "tpm"),
        ({"team": "ops", "expires": 2**64}, "expires"),
        ({"team": "ops", "expires": "36501d"}, "expires"),
        # An expiry time: with its offset, in the future, within 100 years
        ({"team": "ops", "expires": "2030-01-31T00:00:00"}, "expires"),
        ({"team": "ops", "expires": "2001-01-31T00:00:00Z"}, "expires"),
        ({"team": "ops", "expires": "2030-02-31T00:00:00Z"}, "expires"),
        ({"team": "ops", "expires": "9999-01-01T00:00:00Z"}, "expires"),
        ({"team": "ops", "budget_period": 1e308}, "budget_period"),
        # A terminal escape in a label would run in whoever lists the keys
        ({"team": "ops", "name": "x\x1b[31mred"}, "name"),
        ({"team": "ops", "name": "a\rb"}, "name"),
        ({"team": "ops", "name": ""}, "name"),
        ({"team": "ops", "name": "n" * 201}, "name"),
        ({"team": "ops", "description": "d" * 2001}, "description"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    client: TestClient, body: dict[str, object], param: str
) -> None:
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"] == []


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        # Each was read as something else: "5" as 5, 5.0 as 5, true as 1 (a limit of one request).
        ({"team": "ops", "rpm": "5"}, "rpm", "sent: a string"),
        ({"team": "ops", "rpm": 5.0}, "rpm", "sent: a number with a decimal point"),
        # A whole number beyond 64 bits arrives as a float; its sender wrote no decimal point.
        ({"team": "ops", "rpm": 10**30}, "rpm", "sent: a number beyond the largest integer"),
        ({"team": "ops", "tpm": -(10**20)}, "tpm", "sent: a number beyond the largest integer"),
        ({"team": "ops", "tpm": True}, "tpm", "sent: true/false"),
        ({"team": "ops", "budget_usd": "10"}, "budget_usd", "sent: a string"),
        ({"team": "ops", "budget_usd": False}, "budget_usd", "sent: true/false"),
        ({"team": "ops", "expires": True}, "expires", "duration"),
        ({"team": "ops", "models": ["m", 1]}, "models.1", "sent: a whole number"),
        ({"team": "ops", "namespaces": {"read": "a"}}, "namespaces.read", "sent: a string"),
        ({"team": "ops", "name": 7}, "name", "sent: a whole number"),
        ({"team": 1}, "team", "sent: a whole number"),
    ],
)
async def test_the_body_is_strict_json_types_are_not_coerced(
    client: TestClient, body: dict[str, object], param: str, says: str
) -> None:
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert f"'{param}'" in error["message"] and says in error["message"], error["message"]
    assert (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"] == []


async def test_what_strict_still_accepts(client: TestClient) -> None:
    # A whole number where dollars or seconds go; durations as text or seconds.
    body = {"team": "ops", "budget_usd": 5, "budget_period": 3600, "expires": "90d", "rpm": 7}
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert (made["budget_usd"], made["budget_period_s"], made["rpm"]) == (5.0, 3600.0, 7)


@pytest.mark.parametrize("period", [0, "0s", 0.0001, "0.5s", 0.999])
async def test_a_budget_period_under_one_second_is_refused(client: TestClient, period: object) -> None:
    # Redis' limiter counts budget periods in whole milliseconds: 0.0001 s was a period of 0 ms,
    # under which spend was never counted (the budget never refused anything).
    resp = await client.post(
        "/admin/keys", json={"team": "ops", "budget_usd": 1, "budget_period": period}, headers=ADMIN
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error == {
        "message": error["message"],
        "type": "invalid_request_error",
        "param": "budget_period",
        "code": error["code"],
    }
    assert "budget_period" in error["message"]
    one_second = await client.post(
        "/admin/keys", json={"team": "ops", "budget_usd": 1, "budget_period": "1s"}, headers=ADMIN
    )
    assert one_second.status == 201


async def test_a_huge_team_or_field_name_is_a_small_400(client: TestClient) -> None:
    for body, says in (
        ({"team": "ops", "models": ["g" * 100_000]}, "Unknown model group(s) 'g"),
        ({"team": "ops", "f" * 100_000: 1}, "Invalid value for 'f"),
    ):
        resp = await client.post("/admin/keys", json=body, headers=ADMIN)
        raw = await resp.read()
        assert resp.status == 400 and len(raw) < 1500, (resp.status, len(raw))
        assert says in raw.decode() and "(100000 chars)" in raw.decode()


class Clock:
    """The key ring's clock (``build_app(key_clock=)``): expiry and rotation grace follow it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
DEPRECATED = "x-gateway-token-deprecated"


def _completion(request: object) -> MockResponse:
    return MockResponse.json(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "ma",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


@pytest.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Clock]]:
    clock = Clock()
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN),
        parse_policy(policy_text(tmp_path / "keys.sqlite3")),
        {},
        transports={"a": MockTransport(_completion)},
        key_clock=clock,
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c, clock


async def test_rotate_with_a_grace_keeps_the_old_secret_as_the_same_key_until_it_ends(
    clocked: tuple[TestClient, Clock],
) -> None:
    client, clock = clocked
    old = await (await client.post("/admin/keys", json={"team": "research", "rpm": 3}, headers=ADMIN)).json()
    assert (await client.get("/v1/models", headers=bearer(old["secret"]))).status == 200  # cached
    resp = await client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_s": 2}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    new = await resp.json()
    assert new["grace_until"] == int(clock.now + 2) and new["status"] == "active"
    listed = {k["id"]: k for k in (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"]}
    assert listed[new["id"]]["grace_until"] == new["grace_until"]
    assert (listed[old["id"]]["status"], listed[old["id"]]["grace_until"]) == ("revoked", None)

    # Both secrets work; the old one is marked, and counts against the same key's limits.
    by_new = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(new["secret"]))
    assert by_new.status == 200 and DEPRECATED not in by_new.headers
    assert by_new.headers["x-ratelimit-remaining-requests"] == "2"
    by_old = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(old["secret"]))
    assert by_old.status == 200, await by_old.text()
    assert by_old.headers[DEPRECATED] == "true"
    assert by_old.headers["x-ratelimit-remaining-requests"] == "1"  # the same key's window
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_previous_token_used_total{token="key"} 1.0' in metrics

    # The grace ends at its time, even for the lookup cached a moment ago (auth.key_cache_s 5 s).
    clock.now += 2
    late = await client.get("/v1/models", headers=bearer(old["secret"]))
    assert late.status == 401 and (await late.json())["error"]["code"] == "invalid_api_key"
    assert (await client.get("/v1/models", headers=bearer(new["secret"]))).status == 200


async def test_revoking_the_new_key_ends_the_grace(clocked: tuple[TestClient, Clock]) -> None:
    client, _ = clocked
    old = await (await client.post("/admin/keys", json={"team": "ops"}, headers=ADMIN)).json()
    new = await (
        await client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_s": 3600}, headers=ADMIN)
    ).json()
    assert (await client.get("/v1/models", headers=bearer(old["secret"]))).status == 200  # cached
    revoked = await client.delete(f"/admin/keys/{new['id']}", headers=ADMIN)
    assert revoked.status == 200
    for secret in (old["secret"], new["secret"]):
        refused = await client.get("/v1/models", headers=bearer(secret))
        assert refused.status == 401 and (await refused.json())["error"]["code"] == "invalid_api_key"
    # (h-probe2) grace_until says when the old secret stopped working: at the revocation, not an
    # hour on (which read as a grace still running to a tool comparing it with the time)
    shown = await revoked.json()
    assert new["grace_until"] > shown["revoked_at"] and shown["grace_until"] == shown["revoked_at"], shown
    listed = await (await client.get("/admin/keys?team=ops", headers=ADMIN)).json()
    assert [k["grace_until"] for k in listed["data"] if k["id"] == new["id"]] == [shown["revoked_at"]]


@pytest.mark.parametrize("grace", [-1, 7 * 86400 + 1, "1h", True, None])
async def test_a_grace_out_of_bounds_is_a_400_naming_it(client: TestClient, grace: object) -> None:
    old = await (await client.post("/admin/keys", json={"team": "ops"}, headers=ADMIN)).json()
    resp = await client.post(
        f"/admin/keys/{old['id']}/rotate",
        json={"grace_s": grace},
        headers=ADMIN,
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["param"] == "grace_s"
    assert (await client.get("/v1/models", headers=bearer(old["secret"]))).status == 200  # not rotated


async def test_a_rotation_keeps_the_keys_budget_spent_and_its_rpm_window(
    clocked: tuple[TestClient, Clock],
) -> None:
    # (h-keycarry) the limiters counted by key id and a rotation makes a new one: a new secret was
    # a fresh budget and an empty RPM window. They now count as the first key of the rotations.
    client, _ = clocked
    old = await (
        await client.post(
            "/admin/keys",
            json={"team": "ops", "rpm": 3, "budget_usd": 1, "budget_period": "1d"},
            headers=ADMIN,
        )
    ).json()
    priced = {**CHAT, "model": "priced"}  # 1 prompt token at $1 a token: the whole budget
    spent = await client.post("/v1/chat/completions", json=priced, headers=bearer(old["secret"]))
    assert spent.status == 200 and spent.headers["x-ratelimit-remaining-requests"] == "2"
    first = await (await client.post(f"/admin/keys/{old['id']}/rotate", headers=ADMIN)).json()
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(first["secret"]))
    assert refused.status == 429, await refused.text()
    assert (await refused.json())["error"]["code"] == "insufficient_quota"
    # Rotated again: still the same count, and the RPM window too (a key without a budget).
    counted = await (await client.post("/admin/keys", json={"team": "ops", "rpm": 3}, headers=ADMIN)).json()
    ok = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(counted["secret"]))
    assert ok.headers["x-ratelimit-remaining-requests"] == "2"
    for _ in range(2):
        counted = await (await client.post(f"/admin/keys/{counted['id']}/rotate", headers=ADMIN)).json()
        ok = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(counted["secret"]))
        assert ok.status == 200
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    # The usage rows stay by key id: the spend under the key that spent it, the refusal under
    # the key refused.
    rows = {r["key"]: r for r in (await (await client.get("/admin/usage", headers=ADMIN)).json())["data"]}
    assert (rows[old["id"]]["requests"], rows[old["id"]]["cost_usd"]) == (1, 1.0)
    assert rows[first["id"]]["requests"] == 0 and rows[first["id"]]["refusals"] == {"budget": 1}


async def test_ending_a_grace_refuses_the_old_secret_and_keeps_the_new(
    clocked: tuple[TestClient, Clock],
) -> None:
    client, clock = clocked
    old = await (await client.post("/admin/keys", json={"team": "ops"}, headers=ADMIN)).json()
    new = await (
        await client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_s": 3600}, headers=ADMIN)
    ).json()
    assert (await client.get("/v1/models", headers=bearer(old["secret"]))).status == 200  # cached
    ended = await client.delete(f"/admin/keys/{new['id']}/grace", headers=ADMIN)
    assert ended.status == 200, await ended.text()
    shown = await ended.json()
    assert (shown["id"], shown["status"], shown["grace_until"]) == (new["id"], "active", int(clock.now))
    refused = await client.get("/v1/models", headers=bearer(old["secret"]))
    assert refused.status == 401 and (await refused.json())["error"]["code"] == "invalid_api_key"
    assert (await client.get("/v1/models", headers=bearer(new["secret"]))).status == 200
    # Ending it again keeps its first end (a worker of the set asked after it: the same answer).
    clock.now += 10
    again = await client.delete(f"/admin/keys/{new['id']}/grace", headers=ADMIN)
    assert again.status == 200 and (await again.json())["grace_until"] == shown["grace_until"]
    # No grace to end: a key never rotated with one, and no such key.
    for key_id, code in ((old["id"], "grace_not_found"), ("key_abcdefghijkl", "key_not_found")):
        missing = await client.delete(f"/admin/keys/{key_id}/grace", headers=ADMIN)
        assert missing.status == 404 and (await missing.json())["error"]["code"] == code, key_id
    plain = await (await client.post(f"/admin/keys/{new['id']}/rotate", headers=ADMIN)).json()
    missing = await client.delete(f"/admin/keys/{plain['id']}/grace", headers=ADMIN)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "grace_not_found"
