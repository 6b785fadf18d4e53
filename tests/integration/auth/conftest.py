"""Both key stores for one contract suite: the SQLite file (in a tmp dir) and the real PostgreSQL.

PostgreSQL is ``KEYS_TEST_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, trust
auth, as the machines and CI run it); each test gets a schema of its own, dropped after it. The
PostgreSQL half is skipped only when nothing listens at that address.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from gateway.auth.postgres_keys import PostgresKeyStore
from gateway.auth.records import KeyStore
from gateway.auth.sqlite_keys import SQLiteKeyStore

POSTGRES_URL = os.environ.get("KEYS_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_listens(url: str = POSTGRES_URL) -> bool:
    parts = conninfo_to_dict(url)
    try:
        with socket.create_connection((str(parts.get("host", "127.0.0.1")), int(parts.get("port", 5432))), 1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema in the test database, dropped (with its tables) after the test."""
    if not postgres_listens():
        pytest.skip(f"no PostgreSQL listens at {POSTGRES_URL} (set KEYS_TEST_URL to one)")
    schema = f"test_keys_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


StoreFactory = Callable[[], KeyStore]


@pytest.fixture(params=["sqlite", "postgres"])
def new_key_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes (unstarted) stores of one kind over the same data: SQLite file or PostgreSQL table."""
    if request.param == "sqlite":
        path = str(tmp_path / "keys.sqlite3")
        return lambda: SQLiteKeyStore(path)
    table = f"{request.getfixturevalue('pg_schema')}.virtual_keys"
    return lambda: PostgresKeyStore(POSTGRES_URL, table=table)


@pytest.fixture
async def key_store(new_key_store: StoreFactory) -> AsyncIterator[KeyStore]:
    """A started store of each kind, empty."""
    store = new_key_store()
    await store.start()
    try:
        yield store
    finally:
        await store.close()
