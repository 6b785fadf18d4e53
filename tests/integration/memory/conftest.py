"""Both memory stores behind one fixture: SQLite on a temporary file, Snowflake on fakesnow.

``fakesnow.patch()`` swaps ``snowflake.connector.connect`` for an in-process fake that runs
Snowflake SQL on DuckDB, so ``SnowflakeMemoryStore`` runs unmodified (its pool, qmark binding,
migrations). Each test gets a fresh fake account; stores opened in one test share it, as
replicas share a real account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.memory.snowflake_store import SnowflakeMemoryStore
from gateway.memory.sql_store import SQLMemoryStore
from gateway.memory.sqlite_store import SQLiteMemoryStore
from gateway.policy.model import MemoryPool
from tests import fakesnow_support

SNOWFLAKE_ARGS: dict[str, Any] = {
    "account": "fake",
    "user": "fake",
    "password": "not-a-secret",
    "database": "SOPHIA",
    "schema": "MEMORY",
}
SMALL_POOL = MemoryPool(
    min_size=1, max_size=4, connect_timeout_s=10, idle_timeout_s=300, health_check_interval_s=60
)
START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class WallClock:
    """The stores' clock for created_at / last_updated: moved by hand, never slept."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class MonotonicClock:
    """The pool's idle / health-check clock (seconds)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Opens stores of one kind on one database; every store opened is closed after the test."""

    name: str
    tmp_path: Path
    clock: WallClock = field(default_factory=WallClock)
    pool_clock: MonotonicClock = field(default_factory=MonotonicClock)
    opened: list[SQLMemoryStore] = field(default_factory=list)

    @property
    def sqlite_path(self) -> str:
        return str(self.tmp_path / "data" / "memory.sqlite3")

    def make(self, **kwargs: Any) -> SQLMemoryStore:
        store: SQLMemoryStore
        if self.name == "sqlite":
            store = SQLiteMemoryStore(self.sqlite_path, clock=self.clock, **kwargs)
        else:
            store = SnowflakeMemoryStore(
                SNOWFLAKE_ARGS,
                SMALL_POOL,
                clock=self.clock,
                pool_clock=self.pool_clock,
                upkeep=False,
                **kwargs,
            )
        self.opened.append(store)
        return store

    async def open(self, **kwargs: Any) -> SQLMemoryStore:
        store = self.make(**kwargs)
        await store.start()
        return store


@pytest.fixture
def fake_snowflake() -> Iterator[None]:
    with fakesnow_support.patch():
        yield


@pytest.fixture(params=["sqlite", "snowflake"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "snowflake":
        request.getfixturevalue("fake_snowflake")
    b = Backend(request.param, tmp_path)
    yield b
    for store in b.opened:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> SQLMemoryStore:
    return await backend.open()
