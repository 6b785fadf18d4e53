"""What only the SQLite store has: WAL, its indexes, and a locked file reported as an outage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.errors import ServiceUnavailable
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


def test_table_name_is_validated() -> None:
    with pytest.raises(ValueError):
        SQLiteMemoryStore("x.db", table="memories; DROP TABLE x")
