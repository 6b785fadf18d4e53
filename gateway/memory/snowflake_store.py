"""``SnowflakeMemoryStore``: memories in a Snowflake table, through a pool of connector connections.

The statements are ``sql.py``'s, bound server-side (``paramstyle="qmark"``); every connector
call runs on the pool's threads (``pool.py``). The same code runs against a real account and,
in the tests, against fakesnow (Snowflake SQL on DuckDB, patched in for
``snowflake.connector.connect``).

Migrations are idempotent and cheap when nothing changed: ``CREATE TABLE IF NOT EXISTS``; one
``SELECT * ... LIMIT 0`` lists the table's columns and each missing one is added with
``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` (the seed's metadata columns; the guard keeps two
replicas starting at once from colliding); then the clustering key ``(namespace,
last_updated)``, which suits retention and per-namespace scans. Snowflake has no secondary
indexes on standard tables, so the key stands in for the SQLite store's indexes. Setting it
needs the table's OWNERSHIP; a role without it (or an engine without clustering) gets a
warning and the store works unclustered.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import snowflake.connector
from snowflake.connector import SnowflakeConnection
from snowflake.connector.errors import Error as SnowflakeError
from snowflake.connector.errors import ProgrammingError

from gateway.errors import ServiceUnavailable
from gateway.memory.pool import ConnectionPool, PoolStats
from gateway.memory.sql import COLUMNS, CORE_COLUMNS, SNOWFLAKE, Cursor, MemoryQueries, utc_now
from gateway.memory.sql_store import ObserveHook, SQLMemoryStore
from gateway.policy.model import MemoryPool

if TYPE_CHECKING:
    from gateway.memory.records import MemoryStore

T = TypeVar("T")

log = logging.getLogger("gateway.memory.snowflake")

# TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE, unquoted (so Snowflake upper-cases it).
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
# SNOWFLAKE_* variable -> connect() argument. Values never reach a log line.
_ENV_ARGS = {
    "SNOWFLAKE_ACCOUNT": "account",
    "SNOWFLAKE_USER": "user",
    "SNOWFLAKE_PASSWORD": "password",
    "SNOWFLAKE_PRIVATE_KEY_PATH": "private_key_file",
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "private_key_file_pwd",
    "SNOWFLAKE_WAREHOUSE": "warehouse",
    "SNOWFLAKE_DATABASE": "database",
    "SNOWFLAKE_SCHEMA": "schema",
    "SNOWFLAKE_ROLE": "role",
}
_REQUIRED = ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_DATABASE", "SNOWFLAKE_SCHEMA")


def snowflake_settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``snowflake.connector.connect`` arguments from ``SNOWFLAKE_*`` variables.

    Needed: ACCOUNT, USER, DATABASE, SCHEMA, and PASSWORD or PRIVATE_KEY_PATH (key-pair auth,
    with PRIVATE_KEY_PASSPHRASE when the key is encrypted); WAREHOUSE and ROLE are optional (the
    user's defaults apply). Raises ``ValueError`` naming the missing variables, never a value.
    """
    missing = [name for name in _REQUIRED if not env.get(name)]
    if not env.get("SNOWFLAKE_PASSWORD") and not env.get("SNOWFLAKE_PRIVATE_KEY_PATH"):
        missing.append("SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH")
    if missing:
        raise ValueError(f"the Snowflake memory backend needs {', '.join(missing)} in the environment")
    return {arg: env[name] for name, arg in _ENV_ARGS.items() if env.get(name)}


class SnowflakeMemoryStore(SQLMemoryStore):
    """Memories in ``table`` of the account ``connect_args`` names, over a ``ConnectionPool``.

    ``observe`` is called with each operation's name and duration in seconds; ``pool_stats()``
    gives the pool's counters and efficiency for export. ``pool_clock`` (monotonic seconds) is
    the pool's idle/health clock, injectable for tests.
    """

    def __init__(
        self,
        connect_args: Mapping[str, Any],
        pool: MemoryPool | None = None,
        *,
        table: str = "MEMORIES",
        clock: Callable[[], datetime] = utc_now,
        observe: ObserveHook | None = None,
        pool_clock: Callable[[], float] = time.monotonic,
        cluster: bool = True,
        upkeep: bool = True,
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(
                f"table must be an unquoted identifier (optionally DB.SCHEMA. qualified), not {table!r}"
            )
        super().__init__(MemoryQueries(table, SNOWFLAKE), clock, observe)
        self.table = table
        self._connect_args = dict(connect_args)
        self._settings = pool or MemoryPool()
        self._pool_clock = pool_clock
        self._cluster = cluster
        self._upkeep = upkeep
        self._pool: ConnectionPool[SnowflakeConnection] | None = None

    async def start(self) -> None:
        """Open the pool's ``min_size`` connections and migrate the table; a second call does nothing."""
        if self._pool is not None:
            return
        pool = ConnectionPool(
            self._connect,
            self._settings,
            errors=(SnowflakeError, OSError),
            clock=self._pool_clock,
            name="snowflake",
        )
        try:
            await pool.start(upkeep=self._upkeep)
            await pool.run(self._migrate)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def pool_stats(self) -> PoolStats | None:
        """The connection pool's figures (None before ``start``)."""
        return None if self._pool is None else self._pool.stats()

    def _connect(self) -> SnowflakeConnection:
        # Called as snowflake.connector.connect (not imported by name) so fakesnow can patch it.
        return snowflake.connector.connect(
            **self._connect_args,
            paramstyle="qmark",
            login_timeout=math.ceil(self._settings.connect_timeout_s),
        )

    def _migrate(self, conn: SnowflakeConnection) -> None:
        cur = conn.cursor()
        try:
            cur.execute(self._q.create_table())
            cur.execute(self._q.create_changes_table())
            cur.execute(self._jobs.create_table())
            cur.execute(f"SELECT * FROM {self.table} LIMIT 0")
            present = {column.name.lower() for column in cur.description}
            for column in COLUMNS:
                if column.name in present or column.name in CORE_COLUMNS:
                    continue
                log.info("memory store: adding column %s to %s", column.name, self.table)
                cur.execute(self._q.add_column(column, if_not_exists=True))
            if self._cluster:
                self._set_clustering_key(cur)
        finally:
            cur.close()

    def _set_clustering_key(self, cur: Cursor) -> None:
        try:
            cur.execute(f"ALTER TABLE {self.table} CLUSTER BY (namespace, last_updated)")
        except ProgrammingError as exc:
            log.warning(
                "memory store: cannot set the clustering key of %s (%s); it works unclustered",
                self.table,
                exc.msg,
            )

    async def _execute(self, op: Callable[[Cursor], T], *, write: bool = False) -> T:
        # ``write`` changes nothing here: each statement commits on its own (autocommit).
        pool = self._pool
        if pool is None:
            raise ServiceUnavailable("The memory store is not open.", code="memory_store_unavailable")
        try:
            return await pool.run(lambda conn: _on_cursor(conn, op))
        except ProgrammingError:
            raise  # a statement the database refused: a bug, not an outage
        except SnowflakeError as exc:
            raise ServiceUnavailable(
                f"The memory store failed ({type(exc).__name__}).", code="memory_store_unavailable"
            ) from exc


def _on_cursor(conn: SnowflakeConnection, op: Callable[[Cursor], T]) -> T:
    cur = conn.cursor()
    try:
        return op(cur)
    finally:
        cur.close()


if TYPE_CHECKING:

    def _conforms(store: SnowflakeMemoryStore) -> MemoryStore:
        return store
