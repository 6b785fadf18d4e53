"""What only the SQLite store has: WAL, its indexes, a locked file reported as an outage, and
writers in several processes on one file (``serve --workers N``)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.memory.records import Memory
from gateway.memory.sqlite_store import SQLiteMemoryStore


async def test_wal_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "memory.sqlite3"  # directories are created
    store = SQLiteMemoryStore(str(path))
    await store.start()
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(memories)")}
            covered = {
                name: [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
                for name in indexes
                if name.startswith("idx_")
            }
        assert sorted(covered.values()) == [["last_accessed"], ["namespace"], ["namespace", "last_updated"]]
    finally:
        await store.close()


async def test_a_locked_file_is_an_outage_not_a_bug(tmp_path: Path) -> None:
    path = str(tmp_path / "memory.sqlite3")
    store = SQLiteMemoryStore(path, busy_timeout_s=0.05)
    await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ServiceUnavailable) as exc:
            await store.insert([Memory("a", "slack_data", "fact", None)])
        assert exc.value.code == "memory_store_unavailable"
        blocker.execute("ROLLBACK")
        await store.insert([Memory("a", "slack_data", "fact", None)])  # and it recovers
        assert await store.count() == 1
    finally:
        blocker.close()
        await store.close()


async def test_one_new_id_inserted_by_two_processes_at_once_is_refused_once_as_taken(
    tmp_path: Path,
) -> None:
    """Two workers on one file insert the same new id at once. Both must not find it free and
    then both insert: the second to write is refused as ``memory_exists`` (what a single worker
    answers), not stopped by the UNIQUE constraint (an IntegrityError: a 500)."""
    path = str(tmp_path / "memory.sqlite3")
    stores = [SQLiteMemoryStore(path), SQLiteMemoryStore(path)]  # one connection each, as two processes
    for store in stores:
        await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer: reads go on (WAL), writes wait for it
        inserts = [
            asyncio.ensure_future(store.insert([Memory("same", "slack_data", f"from {n}", None)]))
            for n, store in enumerate(stores)
        ]
        await asyncio.sleep(0.3)  # both have started and wait for the write lock
        assert not any(insert.done() for insert in inserts)
        blocker.execute("ROLLBACK")
        results = await asyncio.gather(*inserts, return_exceptions=True)
        refused = [r for r in results if r is not None]
        assert len(refused) == 1, results
        assert isinstance(refused[0], InvalidRequest) and refused[0].code == "memory_exists", refused
        assert await stores[0].count() == 1
        assert [c[1] for c in await stores[1].changes_after(0, 10)] == ["same"]  # one write logged
    finally:
        blocker.close()
        for store in stores:
            await store.close()


def test_table_name_is_validated() -> None:
    with pytest.raises(ValueError):
        SQLiteMemoryStore("x.db", table="memories; DROP TABLE x")
