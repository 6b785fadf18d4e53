"""``SQLiteMemoryStore``: the embedded default backend, one SQLite file, nothing to install.

One worker thread owns the connection (a sqlite3 connection belongs to the thread that opened
it) and runs every statement, so operations queue in order and nothing blocks the event loop.
Each operation is one transaction; one that writes begins with ``BEGIN IMMEDIATE``, so what it
reads before it writes (an id is free, the rows a delete logs) is what it writes over, whatever
the other processes sharing the file (``serve --workers N``) write meanwhile. The WAL journal
lets readers in other processes (e.g. ``sophia-gateway memory prune`` next to a running gateway)
work while this one writes; a writer waits up to ``busy_timeout_s`` for another's lock.

Migrations are idempotent: ``CREATE TABLE IF NOT EXISTS``, then each column an older table
lacks is added (SQLite has no ``ADD COLUMN IF NOT EXISTS``, so ``PRAGMA table_info`` says
which), then ``CREATE INDEX IF NOT EXISTS`` on namespace, (namespace, last_updated) and
last_accessed: the lookups retention and pruning make.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gateway.errors import ServiceUnavailable, StartupError
from gateway.memory.sql import COLUMNS, CORE_COLUMNS, SQLITE, Cursor, MemoryQueries, utc_now
from gateway.memory.sql_store import ObserveHook, SQLMemoryStore

if TYPE_CHECKING:
    from gateway.memory.pool import PoolStats
    from gateway.memory.records import MemoryStore

T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Errors of the file rather than of the statement (locked past busy_timeout, disk full, I/O):
# the store, not the request, failed. Others (e.g. a malformed statement) are bugs and propagate.
_OUTAGES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
)
# (index name suffix, indexed columns)
_INDEXES = (
    ("namespace", "namespace"),
    ("namespace_updated", "namespace, last_updated"),
    ("last_accessed", "last_accessed"),
)


class SQLiteMemoryStore(SQLMemoryStore):
    """Memories in the SQLite file at ``path`` (its directory is created if missing)."""

    def __init__(
        self,
        path: str,
        *,
        table: str = "memories",
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_s: float = 5.0,
        observe: ObserveHook | None = None,
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"table must be a plain identifier, not {table!r}")
        super().__init__(MemoryQueries(table, SQLITE), clock, observe)
        self.path = path
        self.table = table
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        """Open the file (WAL mode) and migrate the table; a second call does nothing.

        Raises ``StartupError`` when the file cannot be created or opened."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memory-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except BaseException as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            if isinstance(exc, OSError | sqlite3.DatabaseError):
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise StartupError(
                    f"cannot open the memory store {self.path}: {reason}; set memory.path or "
                    "MEMORY_URL to a file this process can create and write"
                ) from None
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        executor.shutdown(wait=True)

    def pool_stats(self) -> PoolStats | None:
        """None: one connection, owned by one worker thread, no pool."""
        return None

    def _open(self) -> None:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL only risks the last transactions on power loss, never corruption.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(self._q.create_table())
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({self.table})")}
        for column in COLUMNS:
            if column.name in present:
                continue
            if column.name in CORE_COLUMNS:
                raise RuntimeError(f"{self.path}: table {self.table} has no {column.name} column")
            conn.execute(self._q.add_column(column, if_not_exists=False))
        for suffix, columns in _INDEXES:
            conn.execute(f"CREATE INDEX IF NOT EXISTS idx_{self.table}_{suffix} ON {self.table} ({columns})")
        conn.execute(self._q.create_changes_table())
        conn.execute(self._jobs.create_table())
        conn.commit()

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _execute(self, op: Callable[[Cursor], T], *, write: bool = False) -> T:
        if self._executor is None:
            raise ServiceUnavailable("The memory store is not open.", code="memory_store_unavailable")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, op, write)

    def _transaction(self, op: Callable[[Cursor], T], write: bool = False) -> T:
        conn = self._conn
        if conn is None:
            raise ServiceUnavailable("The memory store is not open.", code="memory_store_unavailable")
        cur = conn.cursor()
        try:
            if write:
                # The write lock before the first read: what an operation checks (an id is free,
                # the rows to delete) still holds when it writes, whatever other processes on
                # the file do meanwhile (sqlite3 would begin only at the first INSERT/UPDATE).
                cur.execute("BEGIN IMMEDIATE")
            result = op(cur)
            conn.commit()
            return result
        except sqlite3.Error as exc:
            conn.rollback()
            if exc.sqlite_errorname.startswith(_OUTAGES):
                raise ServiceUnavailable(
                    f"The memory store failed ({exc.sqlite_errorname}).", code="memory_store_unavailable"
                ) from exc
            raise
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()


if TYPE_CHECKING:

    def _conforms(store: SQLiteMemoryStore) -> MemoryStore:
        return store
