"""One contract for both key stores (``key_store`` runs each test on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from gateway.auth.postgres_keys import PostgresKeyStore
from gateway.auth.records import KeyRecord, KeyStore, hash_secret, new_key_id, new_secret, shown_prefix
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.errors import KeyStoreUnavailable
from tests.integration.auth.conftest import POSTGRES_URL, StoreFactory


def record(team: str = "research", created_at: float = 1000.0, **fields: object) -> KeyRecord:
    secret = new_secret()
    base = KeyRecord(
        key_id=new_key_id(),
        hash=hash_secret(secret),
        prefix=shown_prefix(secret),
        team=team,
        created_at=created_at,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


async def test_insert_then_find_by_hash_and_id_round_trip(key_store: KeyStore) -> None:
    full = record(
        models=("gpt-4o", "claude"),
        rpm=60,
        tpm=100_000,
        budget_usd=12.5,
        budget_period_s=7 * 86400.0,
        read_namespaces=("a", "b, c\nd"),  # any character survives
        write_namespaces=(),  # empty: no namespace, not "inherit"
        expires_at=5000.25,
        name="ci bot",
        description='it\'s "quoted"; DROP TABLE x; --',
    )
    bare = record(team="ops", created_at=1001.0)
    await key_store.insert(full)
    await key_store.insert(bare)
    assert await key_store.find_by_hash(full.hash) == full
    assert await key_store.get(full.key_id) == full
    assert await key_store.get(bare.key_id) == bare  # every None setting stays None (inherit)
    assert await key_store.find_by_hash(hash_secret("sk-sg-unknown")) is None
    assert await key_store.get("key_missing00000") is None


async def test_list_all_or_by_team_oldest_first(key_store: KeyStore) -> None:
    b = record(team="ops", created_at=20.0)
    a = record(team="research", created_at=10.0)
    c = record(team="research", created_at=30.0)
    for r in (b, c, a):
        await key_store.insert(r)
    assert [r.key_id for r in await key_store.list()] == [a.key_id, b.key_id, c.key_id]
    assert [r.key_id for r in await key_store.list("research")] == [a.key_id, c.key_id]
    assert await key_store.list("nobody") == []


async def test_revoke_keeps_the_first_time_and_unknown_is_none(key_store: KeyStore) -> None:
    r = record()
    await key_store.insert(r)
    revoked = await key_store.revoke(r.key_id, 2000.0)
    assert revoked == replace(r, revoked_at=2000.0)
    again = await key_store.revoke(r.key_id, 3000.0)
    assert again is not None and again.revoked_at == 2000.0
    assert await key_store.revoke("key_missing00000", 1.0) is None
    found = await key_store.find_by_hash(r.hash)
    assert found is not None and not found.is_active(2500.0)


async def test_replace_inserts_new_and_revokes_old_in_one_transaction(key_store: KeyStore) -> None:
    old = record()
    await key_store.insert(old)
    new = record()
    assert await key_store.replace(new, old.key_id, 50.0)
    got_old = await key_store.get(old.key_id)
    assert got_old is not None and got_old.revoked_at == 50.0
    assert await key_store.get(new.key_id) == new
    # The old key is revoked now: a second rotation writes nothing.
    newer = record()
    assert not await key_store.replace(newer, old.key_id, 60.0)
    assert await key_store.get(newer.key_id) is None
    assert not await key_store.replace(record(), "key_missing00000", 60.0)


async def test_replace_rolls_back_the_revocation_when_the_insert_fails(key_store: KeyStore) -> None:
    old, other = record(), record()
    await key_store.insert(old)
    await key_store.insert(other)
    clash = replace(record(), key_id=other.key_id)  # the insert breaks the primary key
    with pytest.raises(Exception):  # noqa: B017 - each driver's IntegrityError
        await key_store.replace(clash, old.key_id, 70.0)
    still = await key_store.get(old.key_id)
    assert still is not None and still.revoked_at is None


async def test_sql_looking_values_are_data(key_store: KeyStore) -> None:
    hostile = "x' OR '1'='1"
    await key_store.insert(record())
    assert await key_store.find_by_hash(hostile) is None
    assert await key_store.get(hostile) is None
    assert await key_store.list(hostile) == []
    assert await key_store.revoke(hostile, 1.0) is None
    assert len(await key_store.list()) == 1


async def test_records_survive_a_new_store_over_the_same_data(new_key_store: StoreFactory) -> None:
    first = new_key_store()
    await first.start()
    r = record(models=("m",))
    await first.insert(r)
    await first.close()
    second = new_key_store()
    await second.start()
    await second.start()  # a second start does nothing
    try:
        assert await second.get(r.key_id) == r
    finally:
        await second.close()


async def test_concurrent_lookups_all_answer(key_store: KeyStore) -> None:
    records = [record(created_at=float(i)) for i in range(20)]
    for r in records:
        await key_store.insert(r)
    found = await asyncio.gather(*(key_store.find_by_hash(r.hash) for r in records))
    assert found == records


async def test_a_closed_store_is_unavailable_not_open(key_store: KeyStore) -> None:
    await key_store.close()
    with pytest.raises(KeyStoreUnavailable):
        await key_store.find_by_hash(hash_secret("sk-sg-x"))


async def test_a_rotated_out_secret_finds_the_key_that_replaced_it(key_store: KeyStore) -> None:
    old = record()
    await key_store.insert(old)
    new = replace(record(), previous_hash=old.hash, previous_until=2000.5)
    assert await key_store.replace(new, old.key_id, 1500.0)
    # The old secret's own record is revoked: the unrevoked key it was rotated into answers.
    assert await key_store.find_by_hash(old.hash) == new
    assert await key_store.find_by_hash(new.hash) == new
    assert await key_store.get(new.key_id) == new  # the grace round-trips
    # Once that key is revoked too, the secret's own record answers (refused either way).
    await key_store.revoke(new.key_id, 1600.0)
    found = await key_store.find_by_hash(old.hash)
    assert found is not None and found.key_id == old.key_id


async def test_ending_a_grace_brings_its_end_forward_only(key_store: KeyStore) -> None:
    old = record()
    await key_store.insert(old)
    new = replace(record(), previous_hash=old.hash, previous_until=2000.0, limits_id=old.key_id)
    assert await key_store.replace(new, old.key_id, 1500.0)
    assert await key_store.get(new.key_id) == new  # limits_id round-trips
    ended = await key_store.end_grace(new.key_id, 1600.0)
    assert ended == replace(new, previous_until=1600.0)
    assert await key_store.end_grace(new.key_id, 1700.0) == ended  # ended already: kept
    assert await key_store.end_grace(old.key_id, 1700.0) == await key_store.get(old.key_id)  # none
    assert await key_store.end_grace("key_nosuchkey000", 1700.0) is None


async def test_update_writes_the_settings_in_place_never_on_a_revoked_key(key_store: KeyStore) -> None:
    """(h-keyupdate) ``update`` writes the settings columns of the key of the record's id, and
    nothing else: not its hash, team, times or limits_id; a revoked key is left as it is."""
    old = record(rpm=2, models=("m",), budget_usd=5.0, name="ci", limits_id="key_first0000000")
    await key_store.insert(old)
    changed = replace(
        old,
        rpm=5,
        tpm=None,
        models=None,
        budget_usd=None,
        read_namespaces=("a", "b"),
        write_namespaces=(),
        expires_at=9000.0,
        name=None,
        description="line\nbreak",
        provider_files=True,
        # Not settings: update leaves them whatever the record says.
        hash="f" * 64,
        team="ops",
        created_at=1.0,
        limits_id=None,
    )
    assert await key_store.update(changed)
    stored = await key_store.get(old.key_id)
    assert stored == replace(
        changed, hash=old.hash, team=old.team, created_at=old.created_at, limits_id=old.limits_id
    )
    assert await key_store.find_by_hash(old.hash) == stored

    await key_store.revoke(old.key_id, 2000.0)
    assert not await key_store.update(replace(stored, rpm=100))
    assert (await key_store.get(old.key_id)) == replace(stored, revoked_at=2000.0)
    assert not await key_store.update(record())  # no such key: nothing written
    assert await key_store.list("research") == [replace(stored, revoked_at=2000.0)]


async def test_update_brings_a_grace_forward_only_when_asked(key_store: KeyStore) -> None:
    old = record()
    await key_store.insert(old)
    new = replace(record(), previous_hash=old.hash, previous_until=2000.0, limits_id=old.key_id)
    assert await key_store.replace(new, old.key_id, 1500.0)
    assert await key_store.update(replace(new, rpm=7))
    assert await key_store.get(new.key_id) == replace(new, rpm=7)  # the grace kept
    assert await key_store.update(replace(new, rpm=8), grace_until=3000.0)  # later: kept
    assert (await key_store.get(new.key_id)) == replace(new, rpm=8)
    assert await key_store.update(replace(new, rpm=9), grace_until=1800.0)
    assert (await key_store.get(new.key_id)) == replace(new, rpm=9, previous_until=1800.0)


# The table as every release before the rotation grace made it.
OLD_TABLE = (
    "CREATE TABLE {table} (key_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, "
    "team TEXT NOT NULL, created_at {real} NOT NULL, models TEXT, rpm {integer}, tpm {integer}, "
    "budget_usd {real}, budget_period_s {real}, read_namespaces TEXT, write_namespaces TEXT, "
    "expires_at {real}, revoked_at {real}, name TEXT, description TEXT)"
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_table_made_before_the_grace_gains_its_columns_at_start(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    row = ("key_abcdefghijkl", "h" * 64, "sk-sg-ab12…", "ops", 1000.0)
    insert = "INSERT INTO {table} (key_id, hash, prefix, team, created_at) VALUES ({p}, {p}, {p}, {p}, {p})"
    store: KeyStore
    if kind == "sqlite":
        path = str(tmp_path / "keys.sqlite3")
        with sqlite3.connect(path) as conn:
            conn.execute(OLD_TABLE.format(table="virtual_keys", real="REAL", integer="INTEGER"))
            conn.execute(insert.format(table="virtual_keys", p="?"), row)
        conn.close()
        store = SQLiteKeyStore(path)
    else:
        table = f"{request.getfixturevalue('pg_schema')}.virtual_keys"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
            pg.execute(OLD_TABLE.format(table=table, real="DOUBLE PRECISION", integer="BIGINT").encode())
            pg.execute(insert.format(table=table, p="%s").encode(), row)
        store = PostgresKeyStore(POSTGRES_URL, table=table)
    for _ in range(2):  # the second start finds the columns there
        await store.start()
        try:
            existing = await store.get("key_abcdefghijkl")
            assert existing is not None and (existing.previous_hash, existing.previous_until) == (None, None)
            assert existing.limits_id is None and existing.counted_as == existing.key_id
            new = replace(
                record(), previous_hash=existing.hash, previous_until=2000.0, limits_id=existing.key_id
            )
            if await store.replace(new, existing.key_id, 1500.0):
                assert await store.find_by_hash(existing.hash) == new
        finally:
            await store.close()


async def test_provider_files_round_trips_as_true_false_or_the_teams(key_store: KeyStore) -> None:
    allowed = record(provider_files=True)
    denied = record(created_at=1001.0, provider_files=False)
    inherits = record(created_at=1002.0)
    for each in (allowed, denied, inherits):
        await key_store.insert(each)
    assert [(await key_store.get(r.key_id)) for r in (allowed, denied, inherits)] == [
        allowed,
        denied,
        inherits,
    ]
    assert [r.provider_files for r in await key_store.list()] == [True, False, None]


# The table as the releases with a rotation's grace and carried limits made it (h-keycarry).
CARRY_TABLE = OLD_TABLE.removesuffix(")") + ", previous_hash TEXT, previous_until {real}, limits_id TEXT)"


@pytest.mark.parametrize("table_sql", [OLD_TABLE, CARRY_TABLE], ids=["before-grace", "before-provider-files"])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_table_made_before_provider_files_gains_the_column_at_start(
    kind: str, table_sql: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    row = ("key_abcdefghijkl", "h" * 64, "sk-sg-ab12…", "ops", 1000.0)
    insert = "INSERT INTO {table} (key_id, hash, prefix, team, created_at) VALUES ({p}, {p}, {p}, {p}, {p})"
    store: KeyStore
    if kind == "sqlite":
        path = str(tmp_path / "keys.sqlite3")
        with sqlite3.connect(path) as conn:
            conn.execute(table_sql.format(table="virtual_keys", real="REAL", integer="INTEGER"))
            conn.execute(insert.format(table="virtual_keys", p="?"), row)
        conn.close()
        store = SQLiteKeyStore(path)
    else:
        table = f"{request.getfixturevalue('pg_schema')}.virtual_keys"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
            pg.execute(table_sql.format(table=table, real="DOUBLE PRECISION", integer="BIGINT").encode())
            pg.execute(insert.format(table=table, p="%s").encode(), row)
        store = PostgresKeyStore(POSTGRES_URL, table=table)
    allowed = record(provider_files=True)
    for start in range(2):  # the second start finds the column there
        await store.start()
        try:
            existing = await store.get("key_abcdefghijkl")
            assert existing is not None and existing.provider_files is None  # its team's setting
            if start == 0:
                await store.insert(allowed)
            assert await store.find_by_hash(allowed.hash) == allowed
        finally:
            await store.close()


async def test_update_and_replace_with_expected_write_only_over_the_settings_read(
    key_store: KeyStore,
) -> None:
    """Compare-and-set (``expected``): a write that lost a race to another change writes nothing,
    with every kind of setting compared, NULLs included."""
    old = record(
        models=("gpt-4o",),
        rpm=3,
        budget_usd=1.25,
        budget_period_s=86400.0,
        read_namespaces=("a",),
        expires_at=9000.5,
        name="n",
        provider_files=False,
    )
    await key_store.insert(old)
    read = old
    assert await key_store.update(replace(old, rpm=4), expected=read)  # unchanged since read: written
    assert (await key_store.get(old.key_id)) == replace(old, rpm=4)
    assert not await key_store.update(replace(old, rpm=9), expected=read)  # stale (rpm 3): nothing
    current = replace(old, rpm=4)
    # Each kind of column compared, a NULL against a value and a value against a NULL too.
    for stale in (
        replace(current, tpm=5),  # stored NULL
        replace(current, models=None),  # stored a value
        replace(current, models=("gpt-4o", "x")),
        replace(current, budget_usd=1.2500001),
        replace(current, expires_at=9000.25),
        replace(current, name="m"),
        replace(current, provider_files=True),
        replace(current, read_namespaces=()),
    ):
        assert not await key_store.update(replace(current, rpm=9), expected=stale), stale
    assert (await key_store.get(old.key_id)) == current
    assert await key_store.update(replace(current, tpm=8, description=None), expected=current)
    current = replace(current, tpm=8)

    new = record(limits_id=old.key_id)
    assert not await key_store.replace(new, old.key_id, 50.0, expected=read)  # stale: nothing written
    assert (await key_store.get(old.key_id)).revoked_at is None
    assert await key_store.get(new.key_id) is None
    assert await key_store.replace(new, old.key_id, 50.0, expected=current)
    assert (await key_store.get(old.key_id)).revoked_at == 50.0
    assert await key_store.get(new.key_id) == new
