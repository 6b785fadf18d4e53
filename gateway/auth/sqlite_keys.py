"""``SQLiteKeyStore``: the embedded default key store, one SQLite file, nothing to install.

One worker thread owns the connection (a sqlite3 connection belongs to the thread that opened
it), so statements queue in order and nothing blocks the event loop; each operation is one
transaction. WAL lets ``sophia-gateway keys ...`` write next to a running gateway, which sees
the change at its next lookup (after ``auth.key_cache_s`` for a key it had cached).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gateway.auth.key_sql import SQLITE, KeyQueries
from gateway.auth.records import KeyRecord, record_row, row_record
from gateway.errors import KeyStoreUnavailable, StartupError

if TYPE_CHECKING:
    from gateway.auth.records import KeyStore

T = TypeVar("T")
log = logging.getLogger(__name__)


class SQLiteKeyStore:
    """Key records in the SQLite file at ``path`` (its directory is created if missing)."""

    def __init__(self, path: str, *, table: str = "virtual_keys", busy_timeout_s: float = 5.0) -> None:
        self._q = KeyQueries(table, SQLITE)
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        """Open the file (WAL) and create the table; ``StartupError`` when it cannot be opened."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keys-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except (OSError, sqlite3.Error) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupError(
                f"cannot open the key store {self.path}: {reason}; set auth.store to a file this "
                "process can create and write, or KEYS_URL to a PostgreSQL database"
            ) from None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        executor.shutdown(wait=True)

    async def insert(self, record: KeyRecord) -> None:
        await self._run(lambda conn: conn.execute(self._q.insert, record_row(record)))

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        def op(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(self._q.by_hash, (key_hash, key_hash, key_hash)).fetchone()
            return None if row is None else row_record(row)

        return await self._run(op)

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._run(lambda conn: self._one(conn, self._q.by_id, key_id))

    async def list(self, team: str | None = None) -> builtins.list[KeyRecord]:
        def op(conn: sqlite3.Connection) -> builtins.list[KeyRecord]:
            rows = (
                conn.execute(self._q.list_all) if team is None else conn.execute(self._q.list_team, (team,))
            )
            return [row_record(row) for row in rows]

        return await self._run(op)

    async def revoke(self, key_id: str, at_s: float) -> KeyRecord | None:
        def op(conn: sqlite3.Connection) -> KeyRecord | None:
            conn.execute(self._q.revoke, (at_s, key_id))
            return self._one(conn, self._q.by_id, key_id)

        return await self._run(op)

    async def update(
        self, record: KeyRecord, grace_until: float | None = None, expected: KeyRecord | None = None
    ) -> bool:
        sql, params = self._q.update_statement(record, grace_until, expected)
        return await self._run(lambda conn: conn.execute(sql, params).rowcount == 1)

    async def end_grace(self, key_id: str, at_s: float) -> KeyRecord | None:
        def op(conn: sqlite3.Connection) -> KeyRecord | None:
            conn.execute(self._q.end_grace, (at_s, key_id, at_s))
            return self._one(conn, self._q.by_id, key_id)

        return await self._run(op)

    async def replace(
        self, new: KeyRecord, old_key_id: str, at_s: float, expected: KeyRecord | None = None
    ) -> bool:
        sql, params = self._q.revoke_replaced(old_key_id, at_s, expected)

        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute(sql, params).rowcount != 1:
                return False
            conn.execute(self._q.insert, record_row(new))
            return True

        return await self._run(op)

    def _one(self, conn: sqlite3.Connection, sql: str, value: str) -> KeyRecord | None:
        row = conn.execute(sql, (value,)).fetchone()
        return None if row is None else row_record(row)

    def _open(self) -> None:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level="IMMEDIATE")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(self._q.create_table)
            # A file made before a column existed gains it (SQLite has no ADD COLUMN IF NOT EXISTS).
            has = {column[0] for column in conn.execute(self._q.column_names).description}
            for name in self._q.added_columns:
                if name not in has:
                    conn.execute(self._q.add_column(name, if_not_exists=False))
            conn.execute(self._q.create_team_index)
            conn.execute(self._q.create_previous_index)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise KeyStoreUnavailable()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, op)

    def _transaction(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise KeyStoreUnavailable()
        try:
            with conn:  # commits, or rolls back on any exception
                return op(conn)
        except sqlite3.IntegrityError:
            raise  # a duplicate key id or hash: a bug or a 1-in-2^60 collision, not an outage
        except sqlite3.Error as exc:
            # Locked past busy_timeout, disk full, I/O: the store, not the request, failed.
            log.warning("key store %s failed: %s", self.path, exc)
            raise KeyStoreUnavailable() from exc


if TYPE_CHECKING:

    def _conforms(store: SQLiteKeyStore) -> KeyStore:
        return store
