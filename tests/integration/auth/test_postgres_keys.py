"""The PostgreSQL key store's outages: a lost connection is a 503 then a reconnect, never a pass."""

from __future__ import annotations

import psycopg
import pytest

from gateway.auth.postgres_keys import PostgresKeyStore, describe_url
from gateway.auth.records import KeyRecord, hash_secret, new_key_id
from gateway.errors import KeyStoreUnavailable, StartupError
from tests.integration.auth.conftest import POSTGRES_URL


async def test_a_dropped_connection_is_unavailable_then_reconnects(pg_schema: str) -> None:
    store = PostgresKeyStore(POSTGRES_URL, table=f"{pg_schema}.virtual_keys", application_name=pg_schema)
    await store.start()
    try:
        r = KeyRecord(new_key_id(), hash_secret("sk-sg-a"), "sk-sg-a…", "t", 1.0)
        await store.insert(r)
        # Another session ends this store's connection, as a PostgreSQL restart or failover would.
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (pg_schema,),
            ).fetchall()
        assert ended, "the store's connection was not found"
        with pytest.raises(KeyStoreUnavailable):
            await store.find_by_hash(r.hash)
        assert await store.find_by_hash(r.hash) == r  # the next operation reconnects
    finally:
        await store.close()


async def test_an_unreachable_database_cannot_start_and_hides_the_password() -> None:
    store = PostgresKeyStore("postgresql://sophia:s3cret@127.0.0.1:1/keys", connect_timeout_s=1)
    with pytest.raises(StartupError) as exc:
        await store.start()
    assert "postgresql://sophia@127.0.0.1:1/keys" in str(exc.value)
    assert "s3cret" not in str(exc.value)
    with pytest.raises(KeyStoreUnavailable):
        await store.get("key_abcdefghijkl")


def test_describe_url_drops_the_password() -> None:
    assert describe_url("postgresql://u:pw@h:5433/db") == "postgresql://u@h:5433/db"
    assert "pw" not in describe_url("host=h password=pw dbname=db")
