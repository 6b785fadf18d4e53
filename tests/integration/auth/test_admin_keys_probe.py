"""``/admin/keys`` fed what a stranger or a careless operator sends, on both real key stores
(SQLite and PostgreSQL) over real HTTP: every bad value is a 400 naming its field, never a 500,
and nothing bad is stored. (h-kprobe: PostgreSQL's text cannot hold NUL, and two such values
reached it as 500s.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from tests.integration.auth.conftest import POSTGRES_URL

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
auth:
  teams: {ops: {}, research: {}}
"""


@pytest.fixture(params=["sqlite", "postgres"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TestClient]:
    env = {}
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")
        env["KEYS_URL"] = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN, state_dir=str(tmp_path)),
        parse_policy(POLICY.replace("teams:", f"store: {tmp_path / 'keys.sqlite3'}\n  teams:")),
        env,
        transports={"a": MockTransport(lambda request: MockResponse.json({"data": []}))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def listed(client: TestClient) -> list[dict[str, object]]:
    resp = await client.get("/admin/keys", headers=ADMIN)
    assert resp.status == 200
    data: list[dict[str, object]] = (await resp.json())["data"]
    return data


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # PostgreSQL refused the NUL at the insert: a 500 there, stored on SQLite.
        ({"team": "ops", "description": "before\x00after"}, "description"),
        # An escape sequence would act on the terminal of whoever reads the record.
        ({"team": "ops", "description": "\x1b[2J\x1b[31mred"}, "description"),
        ({"team": "ops", "description": "a\x85b"}, "description"),
        # Grants of names no namespace can have were stored as given.
        ({"team": "ops", "namespaces": {"read": ["notes", "a\x00"]}}, "namespaces.read"),
        ({"team": "ops", "namespaces": {"write": [""]}}, "namespaces.write"),
        ({"team": "ops", "namespaces": {"read": ["../etc"]}}, "namespaces.read"),
        ({"team": "ops", "namespaces": {"read": ["n" * 65]}}, "namespaces.read"),
        ({"team": "ops", "namespaces": {"write": [f"n{i}" for i in range(1001)]}}, "namespaces.write"),
    ],
)
async def test_values_a_store_cannot_hold_or_nobody_can_use_are_400_naming_the_field(
    client: TestClient, body: dict[str, object], param: str
) -> None:
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 400, (resp.status, await resp.text())
    error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert f"'{param}'" in error["message"]
    assert "\x00" not in error["message"] and "\x1b" not in error["message"]
    assert await listed(client) == []


async def test_line_breaks_tabs_and_unicode_stay_fine_in_a_description(client: TestClient) -> None:
    body = {
        "team": "ops",
        "description": "CI key\n\tfor the nightly run — ünïcode, 日本語, 😀",
        "namespaces": {"read": ["papers", "team.notes_2026-12"], "write": []},
    }
    resp = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    (key,) = await listed(client)
    assert key["description"] == body["description"]
    assert key["namespaces"] == {"read": ["papers", "team.notes_2026-12"], "write": []}


@pytest.mark.parametrize("team", ["\x00", "ops\x00", "a b", "x" * 65, "../ops", "ops\n"])
async def test_a_team_filter_no_team_can_have_is_a_400_naming_it(client: TestClient, team: str) -> None:
    # PostgreSQL answered the NUL with an error: a 500 listing.
    assert (await client.post("/admin/keys", json={"team": "ops"}, headers=ADMIN)).status == 201
    resp = await client.get("/admin/keys", params={"team": team}, headers=ADMIN)
    assert resp.status == 400, (resp.status, await resp.text())
    error = (await resp.json())["error"]
    assert (error["param"], error["type"]) == ("team", "invalid_request_error")
    ok = await client.get("/admin/keys", params={"team": "research"}, headers=ADMIN)
    assert (ok.status, (await ok.json())["data"]) == (200, [])


@pytest.mark.parametrize(
    "name",
    [
        "family 👨\u200d👩\u200d👧",  # an emoji ZWJ sequence (h-kprobe: refused as a format character)
        "تیم\u200cمن",  # Persian: a zero-width non-joiner inside a word
        "क्\u200dष",  # Devanagari: a joiner after a virama
        "🏳️\u200d🌈",
    ],
)
async def test_a_name_may_hold_the_joiners_scripts_and_emoji_need(client: TestClient, name: str) -> None:
    resp = await client.post("/admin/keys", json={"team": "ops", "name": name}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    (key,) = await listed(client)
    assert key["name"] == name


@pytest.mark.parametrize(
    "name",
    [
        "o\u200dps",  # after ASCII a joiner only makes two names look alike
        "\u200dops",
        "ops\u202e",  # a right-to-left override still acts on the terminal
        "a\u200bb",  # a zero-width space
    ],
)
async def test_invisible_formatting_elsewhere_in_a_name_is_still_refused(
    client: TestClient, name: str
) -> None:
    resp = await client.post("/admin/keys", json={"team": "ops", "name": name}, headers=ADMIN)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "name"
    assert await listed(client) == []
