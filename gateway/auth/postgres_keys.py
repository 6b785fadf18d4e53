"""``PostgresKeyStore``: key records in PostgreSQL, for replicas that must share them.

psycopg 3 in its async mode, one connection per gateway process: a lookup is needed only when
the key ring's in-process cache misses (once per key per ``auth.key_cache_s``), so one
connection carries far more than the load; a lock keeps its statements in order. A connection
that breaks (or an operation slower than ``op_timeout_s``) is dropped and the next operation
reconnects; meanwhile the store raises ``KeyStoreUnavailable`` (503), never lets a key in.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from gateway.auth.key_sql import POSTGRES, KeyQueries
from gateway.auth.records import KeyRecord, record_row, row_record
from gateway.errors import KeyStoreUnavailable, StartupError

if TYPE_CHECKING:
    from gateway.auth.records import KeyStore

T = TypeVar("T")
Connection = psycopg.AsyncConnection[tuple[Any, ...]]
log = logging.getLogger(__name__)


def describe_url(url: str) -> str:
    """``url`` without its password (for messages): ``postgresql://user@host:port/db``."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparseable KEYS_URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PostgresKeyStore:
    """Key records in table ``table`` (``name`` or ``schema.name``) of the database at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        table: str = "virtual_keys",
        connect_timeout_s: float = 5.0,
        op_timeout_s: float = 5.0,
        application_name: str = "sophia-gateway-keys",
    ) -> None:
        self._q = KeyQueries(table, POSTGRES)
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._op_timeout_s = op_timeout_s
        self._application_name = application_name  # how pg_stat_activity names its connection
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def where(self) -> str:
        return describe_url(self._url)

    async def start(self) -> None:
        """Connect and create the table; ``StartupError`` when the database cannot be reached."""
        if self._started:
            return
        try:
            async with asyncio.timeout(self._connect_timeout_s + self._op_timeout_s):
                conn = await self._connect()
                async with conn.transaction():
                    await conn.execute(self._q.create_table)
                    # A table made before a column existed gains it. Looked at first: ALTER TABLE
                    # locks the table even when the column is there (IF NOT EXISTS: two replicas
                    # starting at once).
                    cur = await conn.execute(self._q.column_names)
                    has = {column.name for column in cur.description or ()}
                    for name in self._q.added_columns:
                        if name not in has:
                            await conn.execute(self._q.add_column(name, if_not_exists=True))
                    await conn.execute(self._q.create_team_index)
                    await conn.execute(self._q.create_previous_index)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc).strip().splitlines()[0]
            raise StartupError(
                f"cannot open the key store {self.where}: {reason}; check KEYS_URL and that "
                "PostgreSQL accepts this user"
            ) from None
        self._started = True

    async def close(self) -> None:
        self._started = False
        await self._drop()

    async def insert(self, record: KeyRecord) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute(self._q.insert, record_row(record))

        await self._run(op)

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        async def op(conn: Connection) -> KeyRecord | None:
            cur = await conn.execute(self._q.by_hash, (key_hash, key_hash, key_hash))
            row = await cur.fetchone()
            return None if row is None else row_record(row)

        return await self._run(op)

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._run(lambda conn: self._one(conn, self._q.by_id, key_id))

    async def list(self, team: str | None = None) -> builtins.list[KeyRecord]:
        async def op(conn: Connection) -> builtins.list[KeyRecord]:
            if team is None:
                cur = await conn.execute(self._q.list_all)
            else:
                cur = await conn.execute(self._q.list_team, (team,))
            return [row_record(row) for row in await cur.fetchall()]

        return await self._run(op)

    async def revoke(self, key_id: str, at_s: float) -> KeyRecord | None:
        async def op(conn: Connection) -> KeyRecord | None:
            await conn.execute(self._q.revoke, (at_s, key_id))
            return await self._one(conn, self._q.by_id, key_id)

        return await self._run(op)

    async def update(
        self, record: KeyRecord, grace_until: float | None = None, expected: KeyRecord | None = None
    ) -> bool:
        sql, params = self._q.update_statement(record, grace_until, expected)

        async def op(conn: Connection) -> bool:
            cur = await conn.execute(sql, params)
            return cur.rowcount == 1

        return await self._run(op)

    async def end_grace(self, key_id: str, at_s: float) -> KeyRecord | None:
        async def op(conn: Connection) -> KeyRecord | None:
            await conn.execute(self._q.end_grace, (at_s, key_id, at_s))
            return await self._one(conn, self._q.by_id, key_id)

        return await self._run(op)

    async def replace(
        self, new: KeyRecord, old_key_id: str, at_s: float, expected: KeyRecord | None = None
    ) -> bool:
        sql, params = self._q.revoke_replaced(old_key_id, at_s, expected)

        async def op(conn: Connection) -> bool:
            cur = await conn.execute(sql, params)
            if cur.rowcount != 1:
                return False
            await conn.execute(self._q.insert, record_row(new))
            return True

        return await self._run(op)

    async def _one(self, conn: Connection, sql: str, value: str) -> KeyRecord | None:
        cur = await conn.execute(sql, (value,))
        row = await cur.fetchone()
        return None if row is None else row_record(row)

    async def _connect(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                application_name=self._application_name,
            )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _run(self, op: Callable[[Connection], Awaitable[T]]) -> T:
        """``op`` in one transaction; an outage (connection, timeout) becomes KeyStoreUnavailable."""
        if not self._started:
            raise KeyStoreUnavailable()
        async with self._lock:
            try:
                async with asyncio.timeout(self._connect_timeout_s + self._op_timeout_s):
                    conn = await self._connect()
                    async with conn.transaction():
                        return await op(conn)
            except psycopg.IntegrityError:
                raise  # a duplicate id or hash: not an outage
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as exc:
                # The connection's state is unknown after a failure or a timeout: start afresh.
                log.warning("key store %s failed: %s", self.where, str(exc).strip() or type(exc).__name__)
                await self._drop()
                raise KeyStoreUnavailable() from exc


if TYPE_CHECKING:

    def _conforms(store: PostgresKeyStore) -> KeyStore:
        return store
