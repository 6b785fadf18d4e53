"""A flood of made-up keys cannot make the key store work once per request (on both real stores,
SQLite and PostgreSQL): a key of no issued form or with a wrong checksum is refused without a
lookup, and lookups of keys not found lately are allowed at a bounded rate for each form.

The lookups are counted on the real store object: its ``find_by_hash`` is wrapped with a counter
(the store still answers every lookup it gets).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import keys
from gateway.app import build_app
from gateway.auth.keyring import LOOKUP_BURST, LOOKUPS_PER_S, KeyRing
from gateway.auth.records import KeyRecord, KeyStore, hash_secret, new_key_id, shown_prefix
from gateway.errors import KeyStoreUnavailable
from gateway.policy.loader import parse_policy
from gateway.policy.model import Team
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from tests.integration.auth.conftest import POSTGRES_URL

TEAMS = {"ops": Team()}
FLOOD = LOOKUP_BURST + 500


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def count_lookups(store: KeyStore) -> list[int]:
    """Wrap the store object's ``find_by_hash`` with a counter: [lookups so far]."""
    counted = [0]
    real: Callable[[str], Awaitable[KeyRecord | None]] = store.find_by_hash

    async def find_by_hash(key_hash: str) -> KeyRecord | None:
        counted[0] += 1
        return await real(key_hash)

    store.find_by_hash = find_by_hash  # type: ignore[method-assign]
    return counted


def made_up_checked() -> str:
    """The current form (57 characters) with a checksum nobody computed."""
    return "sk-sg-" + secrets.token_urlsafe(32) + secrets.token_urlsafe(6)


def made_up_legacy() -> str:
    """The form issued before checksums (49 characters): any such string may be a real key."""
    return "sk-sg-" + secrets.token_urlsafe(32)


async def legacy_key(store: KeyStore, team: str = "ops") -> str:
    """A key as gateways issued them before checksums, written to the store as they did."""
    secret = made_up_legacy()
    await store.insert(KeyRecord(new_key_id(), hash_secret(secret), shown_prefix(secret), team, 1.0))
    return secret


async def test_made_up_keys_of_the_current_form_never_reach_the_store(key_store: KeyStore) -> None:
    ring = KeyRing(key_store, TEAMS, clock=Clock())
    real, _ = await ring.create("ops")
    lookups = count_lookups(key_store)
    for _ in range(FLOOD):
        assert await ring.authenticate(made_up_checked()) is None
    for garbage in ("sk-sg-", "sk-sg-short", real[:-1], real + "x", real[:-1] + "!", "x" * 57):
        assert await ring.authenticate(garbage) is None
    # One character changed in the random part: the checksum no longer matches.
    flipped = real[:10] + ("A" if real[10] != "A" else "B") + real[11:]
    assert await ring.authenticate(flipped) is None
    assert lookups[0] == 0
    assert await ring.authenticate(real) is not None  # a real key still costs its one lookup
    assert lookups[0] == 1


async def flood_of_legacy_guesses(ring: KeyRing, count: int) -> int:
    """``count`` made-up keys of the old form; how many got the store's 503 (the rest: None)."""
    refused = 0
    for _ in range(count):
        try:
            assert await ring.authenticate(made_up_legacy()) is None
        except KeyStoreUnavailable:
            refused += 1
    return refused


async def test_made_up_keys_of_the_old_form_cost_at_most_the_allowance(key_store: KeyStore) -> None:
    clock = Clock()
    ring = KeyRing(key_store, TEAMS, clock=clock)
    old = await legacy_key(key_store)
    assert await ring.authenticate(old) is not None  # keys issued before checksums still work
    new, _ = await ring.create("ops")
    lookups = count_lookups(key_store)
    refused = await flood_of_legacy_guesses(ring, FLOOD)
    # The old key's own first lookup took one of the allowance of its form.
    assert lookups[0] == LOOKUP_BURST - 1 and refused == FLOOD - lookups[0]
    # While the old form's allowance is spent: a key found before is looked up again when its
    # entry expires, and a key of the current form (its own allowance) is found at once.
    clock.now += 10.0
    flooded = lookups[0]
    assert await ring.authenticate(old) is not None
    assert await ring.authenticate(new) is not None
    assert lookups[0] == flooded + 2
    # The allowance refills at LOOKUPS_PER_S, up to LOOKUP_BURST.
    await flood_of_legacy_guesses(ring, FLOOD)
    assert lookups[0] - flooded - 2 == min(LOOKUP_BURST, 10 * LOOKUPS_PER_S)
    clock.now += 1.0
    before = lookups[0]
    assert await flood_of_legacy_guesses(ring, FLOOD) == FLOOD - LOOKUPS_PER_S
    assert lookups[0] - before == LOOKUPS_PER_S


POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
auth:
  teams: {ops: {}}
"""


@pytest.fixture
async def postgres_gateway(pg_schema: str, tmp_path: Path) -> AsyncIterator[TestClient]:
    """The gateway over real HTTP with its key store on PostgreSQL (KEYS_URL, its own schema)."""
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{pg_schema}"
    app = build_app(
        Settings(access_log=False, state_dir=str(tmp_path)),
        parse_policy(POLICY),
        {"KEYS_URL": url},
        transports={"a": MockTransport(lambda request: MockResponse.json({"data": []}))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_a_flood_over_http_costs_postgresql_nothing(postgres_gateway: TestClient) -> None:
    ring = postgres_gateway.app[keys.KEY_ADMIN]
    real, _ = await ring.create("ops")
    lookups = count_lookups(ring.store)
    for _ in range(300):
        resp = await postgres_gateway.get(
            "/v1/models", headers={"Authorization": f"Bearer {made_up_checked()}"}
        )
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert lookups[0] == 0
    assert (
        await postgres_gateway.get("/v1/models", headers={"Authorization": f"Bearer {real}"})
    ).status == 200
    assert lookups[0] == 1
