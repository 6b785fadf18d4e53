"""The memory table's SQL, shared by the SQLite and Snowflake stores, and row <-> ``Memory``.

Both drivers take qmark (``?``) parameters (Snowflake's connector is opened with
``paramstyle="qmark"``: server-side binding, so a statement's text is the same whatever its
values), so every statement here runs unchanged on both; only column types, the timestamp
encoding and the migrations differ (``Dialect``, and the stores themselves).

Storage formats:

* ``embedding``: little-endian float32, packed (SQLite BLOB, Snowflake BINARY): 4 bytes a
  dimension instead of ~20 as JSON text, and decoded with one ``struct.unpack``. Values come
  back at float32 precision, which is what the HNSW index holds anyway.
* ``metadata``: JSON text (SQLite TEXT, Snowflake VARCHAR; ``PARSE_JSON(metadata)`` reads it
  in Snowflake). VARCHAR rather than VARIANT because a VARIANT cannot take a bound parameter
  in ``INSERT ... VALUES``, which would cost the connector's bulk-insert path.
* times: UTC without a zone (Snowflake TIMESTAMP_NTZ, as the seed's metadata columns; SQLite
  TEXT ``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts as it compares). ``Memory`` times are aware.

Everything here is blocking: the stores call it on their worker threads.
"""

from __future__ import annotations

import contextlib
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import orjson

from gateway.errors import InvalidRequest
from gateway.memory.records import Memory, MemoryPatch, PruneRule, row_version_conflict

# Ids per ``IN (...)`` list: far below SQLite's 32,766 variables and Snowflake's expression limit.
CHUNK = 500
# Rows a Snowflake MERGE inserts at once (a VALUES list: at most 16,384 rows): an insert batch
# (the API's 1,000 memories, an ingest job's store_batch) is one statement, as its INSERT was.
_MERGE_ROWS = 1000
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Snowflake's write transactions (``MemoryQueries.transaction``): tries when a lock is refused
# rather than waited for, and the random pause between them (doubling, capped).
_LOG_ATTEMPTS = 40
_LOG_BACKOFF_S = 0.002
_LOG_BACKOFF_MAX_S = 0.1

T = TypeVar("T")


class Cursor(Protocol):
    """The DB-API cursor both drivers provide (``sqlite3.Cursor``, ``SnowflakeCursor``)."""

    @property
    def rowcount(self) -> int | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> object: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def close(self) -> object: ...


class Connection(Protocol):
    """The DB-API connection both drivers provide."""

    def cursor(self) -> Cursor: ...

    def close(self) -> object: ...


def select_one(conn: Connection) -> None:
    """The health check: ``SELECT 1`` round trip; raises the driver's error when it fails."""
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchone()
    finally:
        cur.close()


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the memory table: its type in each dialect and its default (a SQL literal)."""

    name: str
    sqlite_type: str
    snowflake_type: str
    default: str | None = None


# Columns in the order every SELECT returns them (``row_to_memory`` relies on it). ``id``,
# ``namespace`` and ``content`` exist in every version of the table; migrations add the others.
COLUMNS = (
    Column("id", "TEXT", "VARCHAR"),
    Column("namespace", "TEXT", "VARCHAR"),
    Column("content", "TEXT", "VARCHAR"),
    Column("embedding", "BLOB", "BINARY"),
    Column("metadata", "TEXT", "VARCHAR"),
    Column("data_source", "TEXT", "VARCHAR(100)"),
    Column("confidence_score", "REAL", "FLOAT", "1.0"),
    Column("importance_score", "REAL", "FLOAT", "0.5"),
    Column("processing_status", "TEXT", "VARCHAR(50)", "'active'"),
    Column("row_version", "INTEGER", "INTEGER", "1"),
    Column("access_count", "INTEGER", "INTEGER", "0"),
    Column("created_at", "TEXT", "TIMESTAMP_NTZ"),
    Column("last_updated", "TEXT", "TIMESTAMP_NTZ"),
    Column("last_accessed", "TEXT", "TIMESTAMP_NTZ"),
    # The team that wrote the row (issue 11); rows older than the column, or written in open
    # mode, are NULL: ownerless (memory/access.py says who sees them).
    Column("owner", "TEXT", "VARCHAR"),
)
CORE_COLUMNS = frozenset({"id", "namespace", "content"})
# An archive's change to a row: row_version bumped (a follower's cached searches dropped), not
# last_updated (retention still counts from the last real change).
_ARCHIVED = "processing_status = 'archived', row_version = row_version + 1"

_SELECT = ", ".join(c.name for c in COLUMNS)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the two databases for the shared statements."""

    name: str
    encode_time: Callable[[datetime], object]

    def column_type(self, column: Column) -> str:
        return column.sqlite_type if self.name == "sqlite" else column.snowflake_type


def _naive_utc(at: datetime) -> datetime:
    """``at`` in UTC without a zone; a naive ``at`` is taken to be UTC already."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


SQLITE = Dialect("sqlite", lambda at: _naive_utc(at).strftime(_TIME_FORMAT))
SNOWFLAKE = Dialect("snowflake", _naive_utc)


def utc_now() -> datetime:
    return datetime.now(UTC)


def decode_time(value: object) -> datetime | None:
    """A stored time (naive UTC ``datetime`` or SQLite text) as an aware UTC ``datetime``."""
    if value is None:
        return None
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def encode_embedding(vector: Sequence[float] | None) -> bytes | None:
    return None if vector is None else struct.pack(f"<{len(vector)}f", *vector)


def decode_embedding(blob: bytes | bytearray | memoryview | None) -> tuple[float, ...] | None:
    if blob is None:
        return None
    return struct.unpack(f"<{len(blob) // 4}f", blob)


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(metadata)).decode()


def row_to_memory(row: Sequence[Any]) -> Memory:
    """A row selected as ``COLUMNS`` as a ``Memory`` (NULLs of migrated columns get the defaults)."""
    (mid, namespace, content, embedding, metadata, source, confidence, importance, status) = row[:9]
    version, accesses, created, updated, accessed, owner = row[9:]
    return Memory(
        id=mid,
        namespace=namespace,
        content=content,
        embedding=decode_embedding(embedding),
        metadata=orjson.loads(metadata) if metadata else {},
        data_source=source,
        confidence_score=1.0 if confidence is None else float(confidence),
        importance_score=0.5 if importance is None else float(importance),
        processing_status=status or "active",
        row_version=1 if version is None else int(version),
        access_count=0 if accesses is None else int(accesses),
        created_at=decode_time(created),
        last_updated=decode_time(updated),
        last_accessed=decode_time(accessed),
        owner=owner,
    )


def is_integrity_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a driver's DB-API ``IntegrityError`` (a constraint refused a row):
    ``sqlite3``'s, the Snowflake connector's, DuckDB's (under fakesnow) by the standard's name."""
    return any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__)


class _StaleCounter(Exception):
    """The change log's counter was behind its log (see ``MemoryQueries._log_numbered``)."""


def _is_write_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` refused a transaction for another's lock, so trying again may succeed:
    Snowflake's 000625 (more than 20 statements waiting for one table's lock, or a lock waited
    for past ``LOCK_TIMEOUT``); DuckDB's ``TransactionException`` under fakesnow (a write-write
    conflict: DuckDB refuses the second writer where Snowflake makes it wait)."""
    if getattr(exc, "errno", None) == 625:
        return True
    return any(cls.__name__ == "TransactionException" for cls in type(exc).__mro__)


def _roll_back(cur: Cursor) -> None:
    """End a failed transaction before the connection goes back to its pool (Snowflake keeps a
    transaction open, and its locks held, after a statement in it failed)."""
    # A connection that is gone cannot say it: its session's transaction ends with the session.
    with contextlib.suppress(Exception):
        cur.execute("ROLLBACK")


class _BeginAtFirstWrite:
    """A cursor that sends ``BEGIN TRANSACTION`` just before its first statement other than a
    SELECT (``MemoryQueries.transaction``). The reads a write makes before its first DML (an
    insert's check of ids, a delete's rows, both before the counter's lock) then run on their
    own: on Snowflake, read committed statement by statement, that changes nothing they see; on
    DuckDB (fakesnow) the transaction's snapshot no longer predates the wait for the lock, so the
    waiter is not refused for a commit it waited for. A write that finds nothing to do sends
    neither BEGIN nor COMMIT."""

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur
        self.begun = False

    @property
    def rowcount(self) -> int | None:
        return self._cur.rowcount

    def _begin_before(self, sql: str) -> None:
        if not self.begun and sql.lstrip()[:6].upper() != "SELECT":
            self._cur.execute("BEGIN TRANSACTION")
            self.begun = True

    def execute(self, sql: str, params: Sequence[Any] | None = None, /) -> object:
        self._begin_before(sql)
        return self._cur.execute(sql) if params is None else self._cur.execute(sql, params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> object:
        self._begin_before(sql)
        return self._cur.executemany(sql, params)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> Sequence[Any]:
        return self._cur.fetchall()

    def close(self) -> object:
        return self._cur.close()


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    """``?, ?, ?`` for ``n`` parameters."""
    return ", ".join("?" * n)


class MemoryQueries:
    """The store operations as blocking calls on a cursor of either database.

    ``table`` is interpolated into the SQL, so it must be a plain (optionally dotted)
    identifier; the stores validate it. Every value travels as a bound parameter.
    """

    def __init__(self, table: str, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        # One write transaction of the process at a time (``transaction``); a thread inside one.
        self._write_lock = threading.Lock()
        self._inside = threading.local()

    def _time(self, at: datetime) -> object:
        return self.dialect.encode_time(at)

    # ----- schema

    def create_table(self) -> str:
        cols = []
        for c in COLUMNS:
            spec = f"{c.name} {self.dialect.column_type(c)}"
            if c.name in CORE_COLUMNS:
                spec += " NOT NULL PRIMARY KEY" if c.name == "id" else " NOT NULL"
            elif c.default is not None:
                spec += f" DEFAULT {c.default}"
            cols.append(spec)
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(cols)})"

    def add_column(self, column: Column, *, if_not_exists: bool) -> str:
        """``ALTER TABLE ... ADD COLUMN`` for a column an older table lacks (never NOT NULL)."""
        guard = " IF NOT EXISTS" if if_not_exists else ""
        default = f" DEFAULT {column.default}" if column.default is not None else ""
        return (
            f"ALTER TABLE {self.table} ADD COLUMN{guard} {column.name} "
            f"{self.dialect.column_type(column)}{default}"
        )

    # ----- reads

    def get_many(self, cur: Cursor, ids: Sequence[str]) -> list[Memory]:
        out: list[Memory] = []
        for part in chunks(list(dict.fromkeys(ids))):
            cur.execute(f"SELECT {_SELECT} FROM {self.table} WHERE id IN ({marks(len(part))})", part)
            out.extend(row_to_memory(row) for row in cur.fetchall())
        return out

    def existing_ids(self, cur: Cursor, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for part in chunks(list(dict.fromkeys(ids))):
            cur.execute(f"SELECT id FROM {self.table} WHERE id IN ({marks(len(part))})", part)
            found.update(row[0] for row in cur.fetchall())
        return found

    def embeddings_after(
        self, cur: Cursor, after_id: str | None, limit: int
    ) -> list[tuple[str, str, str | None, tuple[float, ...]]]:
        """Up to ``limit`` (id, namespace, owner, embedding) with ids above ``after_id``, by id
        (keyset paging: no cursor stays open between batches)."""
        where, params = (
            ("embedding IS NOT NULL", [])
            if after_id is None
            else ("embedding IS NOT NULL AND id > ?", [after_id])
        )
        cur.execute(
            f"SELECT id, namespace, owner, embedding FROM {self.table} WHERE {where} "
            f"ORDER BY id LIMIT {int(limit)}",
            params,
        )
        return [(mid, ns, owner, decode_embedding(blob) or ()) for mid, ns, owner, blob in cur.fetchall()]

    def prune_candidates(
        self, cur: Cursor, namespace: str | None, rule: PruneRule, now: datetime
    ) -> list[str]:
        cutoff = now - timedelta(days=rule.idle_days)
        sql = (
            f"SELECT id FROM {self.table} WHERE COALESCE(last_accessed, created_at) < ? "
            "AND importance_score < ? AND access_count < ?"
        )
        params: list[object] = [self._time(cutoff), rule.min_importance, rule.min_access_count]
        if namespace is not None:
            sql += " AND namespace = ?"
            params.append(namespace)
        cur.execute(sql + " ORDER BY id", params)
        return [row[0] for row in cur.fetchall()]

    def namespaces(self, cur: Cursor) -> list[str]:
        cur.execute(f"SELECT DISTINCT namespace FROM {self.table} ORDER BY namespace")
        return [row[0] for row in cur.fetchall()]

    def count(self, cur: Cursor, namespace: str | None) -> int:
        if namespace is None:
            cur.execute(f"SELECT COUNT(*) FROM {self.table}")
        else:
            cur.execute(f"SELECT COUNT(*) FROM {self.table} WHERE namespace = ?", [namespace])
        return int(cur.fetchone()[0])

    # ----- writes

    def insert(self, cur: Cursor, memories: Sequence[Memory], now: datetime) -> None:
        """Insert new memories (row_version 1, created_at = last_updated = ``now``).

        Ids must be new: Snowflake does not enforce primary keys, so this checks first and
        refuses the whole batch rather than letting the two backends differ. A database that
        does enforce the key and finds an id taken by a writer that got in after the check
        (another process on a store without the SQLite store's write lock) is refused the same
        way (``memory_exists``), not as a driver error (a 500). On Snowflake the write itself is
        idempotent on id (``_write_new``): an id taken after the check is left as it is, never
        a second row; it is ``memory_exists`` unless the row there is this very memory (the
        statement ran twice: a retry after a lost answer), which is no error.
        """
        ids = [m.id for m in memories]
        twice = sorted(i for i, n in Counter(ids).items() if n > 1)
        if twice:
            raise InvalidRequest(
                f"The id '{twice[0]}' appears twice in the batch.", param="id", code="memory_exists"
            )
        taken = sorted(self.existing_ids(cur, ids))
        if taken:
            raise InvalidRequest(
                f"A memory with id '{taken[0]}' already exists; use PATCH to change it.",
                param="id",
                code="memory_exists",
            )
        # After the check (an id taken since is the MERGE's to find): the log's lock, with the
        # batch's numbers reserved in the same statement (one round trip fewer under the lock).
        self.lock_log(cur, reserve=len(memories))
        at = self._time(now)
        rows = [
            (
                m.id,
                m.namespace,
                m.content,
                encode_embedding(m.embedding),
                encode_metadata(m.metadata),
                m.data_source,
                # One Python type a column: the connector's bulk insert binds a column as one type.
                float(m.confidence_score),
                float(m.importance_score),
                m.processing_status,
                1,
                int(m.access_count),
                at,
                at,
                None if m.last_accessed is None else self._time(m.last_accessed),
                m.owner,
            )
            for m in memories
        ]
        try:
            written = self._write_new(cur, rows)
        except Exception as exc:
            if not is_integrity_error(exc) or not self.existing_ids(cur, ids):
                raise
            # Which id is the other writer's cannot be told from this batch's own rows, which a
            # statement that failed half-way may have left in the transaction: one id is named.
            what = f"A memory with id '{ids[0]}'" if len(ids) == 1 else "A memory with an id of this batch"
            raise InvalidRequest(
                f"{what} was created by another request at the same time; use PATCH to change it.",
                param="id",
                code="memory_exists",
            ) from exc
        theirs = self._held_by_others(cur, memories) if written < len(rows) else []
        # In a write's transaction (the stores' ``write``) the refusal below rolls the whole
        # batch back; outside one (each statement committed on its own) what this batch wrote
        # stays, so it is logged first.
        if not (theirs and self.in_transaction):
            self.log_changes(cur, [(m.id, m.namespace, m.owner, 0) for m in memories if m.id not in theirs])
        if theirs:
            raise InvalidRequest(
                f"A memory with id '{theirs[0]}' was created by another request at the same time; "
                "use PATCH to change it.",
                param="id",
                code="memory_exists",
            )

    def _write_new(self, cur: Cursor, rows: Sequence[Sequence[object]]) -> int:
        """Write ``rows`` (all of ``COLUMNS``) whose ids are not stored; how many were written.

        SQLite: one INSERT (the primary key refuses a taken id; the store's write lock means
        none is). Snowflake: ``MERGE ... WHEN NOT MATCHED THEN INSERT`` from a VALUES list, as
        its key is not enforced: a plain INSERT of an id another writer took since the check,
        or sent again by a retry after a lost answer, would be a second row of that id. The
        MERGE's count is the rows it inserted (the connector's ``rowcount``). Values are bound
        as for the INSERT (one Python type a column), ``_MERGE_ROWS`` rows a statement."""
        if self.dialect.name == "sqlite":
            cur.executemany(f"INSERT INTO {self.table} ({_SELECT}) VALUES ({marks(len(COLUMNS))})", rows)
            return len(rows)
        source = ", ".join(f"column{n} AS {c.name}" for n, c in enumerate(COLUMNS, start=1))
        written = 0
        for start in range(0, len(rows), _MERGE_ROWS):
            part = rows[start : start + _MERGE_ROWS]
            values = ", ".join([f"({marks(len(COLUMNS))})"] * len(part))
            cur.execute(
                f"MERGE INTO {self.table} AS stored USING (SELECT {source} FROM VALUES {values}) AS incoming "
                f"ON stored.id = incoming.id WHEN NOT MATCHED THEN INSERT ({_SELECT}) "
                f"VALUES ({', '.join(f'incoming.{c.name}' for c in COLUMNS)})",
                [value for row in part for value in row],
            )
            written += cur.rowcount or 0  # unknown: every id is looked at (``_held_by_others``)
        return written

    def _held_by_others(self, cur: Cursor, memories: Sequence[Memory]) -> list[str]:
        """The ids of ``memories`` whose stored row is not that memory (another writer's)."""
        stored = {m.id: m for m in self.get_many(cur, [m.id for m in memories])}
        return [m.id for m in memories if m.id in stored and not _same(stored[m.id], m)]

    def update(self, cur: Cursor, memory_id: str, patch: MemoryPatch, now: datetime) -> Memory | None:
        sets, params = _patch_assignments(patch)
        # Its one entry's number reserved in the locking UPDATE; a patch that finds no row leaves
        # it unused and ``transaction`` rolls back, so no number is lost (no gap in the log).
        self.lock_log(cur, reserve=1)
        sets += ["row_version = row_version + 1", "last_updated = ?"]
        params += [self._time(now), memory_id]
        where = "id = ?"
        if patch.if_row_version is not None:  # compare and set, in the one statement
            where += " AND row_version = ?"
            params.append(patch.if_row_version)
        cur.execute(f"UPDATE {self.table} SET {', '.join(sets)} WHERE {where}", params)
        if not cur.rowcount:
            if patch.if_row_version is not None and self.get_many(cur, [memory_id]):
                raise row_version_conflict(memory_id, patch.if_row_version)
            return None
        found = self.get_many(cur, [memory_id])
        if found:
            self.log_changes(cur, [(found[0].id, found[0].namespace, found[0].owner, 0)])
        return found[0] if found else None

    def delete(self, cur: Cursor, ids: Sequence[str]) -> int:
        if self.dialect.name != "sqlite" and self.in_transaction:
            return self._write_logged(cur, ids)
        deleted = 0
        self.lock_log(cur)
        for part in chunks(list(dict.fromkeys(ids))):
            cur.execute(
                f"SELECT id, namespace, owner FROM {self.table} WHERE id IN ({marks(len(part))})", part
            )
            gone = [(i, ns, owner, 1) for i, ns, owner in cur.fetchall()]
            cur.execute(f"DELETE FROM {self.table} WHERE id IN ({marks(len(part))})", part)
            deleted += cur.rowcount or 0
            self.log_changes(cur, gone)
        return deleted

    def _write_logged(
        self,
        cur: Cursor,
        ids: Sequence[str],
        rule: tuple[str, Sequence[object]] | None = None,
        *,
        archive: bool = False,
    ) -> int:
        """Snowflake, inside ``transaction``: delete (or, ``archive``, archive) the rows of ``ids``
        with an entry each in the change log. Which of ``ids`` are stored is read before the lock
        (a read needs none), their entries' numbers are reserved in the locking UPDATE, then,
        under the lock, each chunk's entries are written from the rows themselves (namespace and
        owner as they are now) and the rows deleted or archived: 4 round trips under the lock for
        up to 500 ids, against 7 (a delete) or 6 (an archive). A row deleted by another writer
        between the read and the lock makes the entries fewer than the numbers reserved: rolled
        back and tried again (``_StaleCounter``). Nothing stored: nothing to lock, write or log.
        Already under the lock: the numbers are counted on there. ``rule`` (a retention delete's
        or an archive's ``where`` and its parameters; ``ids`` then are its rows, just read): only
        rows that still match it under the lock are logged and written; one that stopped
        matching since the read (patched, archived) makes the entries fewer, and the write is
        tried again from its read, so no row is logged twice."""
        stored: Counter[str] = Counter()  # rows an id (a table from before MERGE may hold two)
        if rule is not None:  # the ids are the rule's rows, just read
            stored.update(ids)
        else:
            for part in chunks(list(dict.fromkeys(ids))):
                cur.execute(f"SELECT id FROM {self.table} WHERE id IN ({marks(len(part))})", part)
                stored.update(row[0] for row in cur.fetchall())
        if not stored:
            return 0
        total = stored.total()
        self.lock_log(cur, reserve=total)
        self._take_numbers(cur, total)
        written = 0
        logged = 0  # entries written by the chunks before
        where, where_params = ("", []) if rule is None else (f" AND ({rule[0]})", list(rule[1]))
        for part in chunks(sorted(stored)):
            expected = sum(stored[i] for i in part)
            reserved = total - logged  # numbers of ours from this chunk's first on
            cur.execute(
                f"INSERT INTO {self.changes_table} (seq, memory_id, namespace, owner, deleted) "
                f"SELECT counter.seq - ? + ROW_NUMBER() OVER (ORDER BY stored.id), stored.id, "
                f"stored.namespace, stored.owner, {0 if archive else 1} FROM {self._counter_now} AS counter, "
                f"{self.table} AS stored WHERE stored.id IN ({marks(len(part))}){where} AND {self._unlogged}",
                [reserved, *part, *where_params, reserved],
            )
            if (cur.rowcount or 0) != expected:
                raise _StaleCounter(
                    f"{cur.rowcount or 0} entries written for {expected} rows: a row changed or "
                    "added since they were read, or the counter behind its log"
                )
            logged += expected
            change = f"UPDATE {self.table} SET {_ARCHIVED}" if archive else f"DELETE FROM {self.table}"
            cur.execute(f"{change} WHERE id IN ({marks(len(part))}){where}", [*part, *where_params])
            written += cur.rowcount or 0
        return written

    # ----- the change log: what other processes sharing the store must apply to their index

    @property
    def changes_table(self) -> str:
        return f"{self.table}_changes"

    def create_changes_table(self) -> str:
        text = "TEXT" if self.dialect.name == "sqlite" else "VARCHAR"
        return (
            f"CREATE TABLE IF NOT EXISTS {self.changes_table} (seq INTEGER NOT NULL PRIMARY KEY, "
            f"memory_id {text} NOT NULL, namespace {text} NOT NULL, owner {text}, deleted INTEGER NOT NULL)"
        )

    @property
    def counter_table(self) -> str:
        """Snowflake only: one row holding the last seq given out (see ``log_changes``)."""
        return f"{self.table}_changes_counter"

    def create_counter_table(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.counter_table} (name VARCHAR NOT NULL, seq INTEGER NOT NULL)"
        )

    def seed_counter(self) -> str:
        """The counter's one row, unless there (a MERGE: replicas starting at once add one)."""
        return (
            f"MERGE INTO {self.counter_table} AS counter USING (SELECT 'changes' AS name) AS wanted "
            "ON counter.name = wanted.name WHEN NOT MATCHED THEN INSERT (name, seq) VALUES (wanted.name, 0)"
        )

    def log_changes(self, cur: Cursor, rows: Sequence[tuple[str, str, str | None, int]]) -> None:
        """Append (id, namespace, owner, deleted) rows, numbered on from the last, after the write
        itself. A follower reads ``seq > last seen``, so numbers must be unique, gapless and
        committed in their order, by every process sharing the store.

        SQLite: in the write's transaction, whose write lock makes them so. Snowflake (replicas
        share the account): ``_log_numbered``, in the write's transaction (``transaction``), so
        the write and its entries commit together; a caller outside one gets a transaction of
        the log's own."""
        if not rows:
            return
        if self.dialect.name == "sqlite":
            cur.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {self.changes_table}")
            base = int(cur.fetchone()[0])
            self._append(cur, base, rows)
        elif self.in_transaction:
            self._log_numbered(cur, rows)
        else:
            self.transaction(cur, lambda c: self._log_numbered(c, rows))

    @property
    def in_transaction(self) -> bool:
        """Whether this thread runs inside ``transaction`` (Snowflake)."""
        return bool(getattr(self._inside, "transaction", False))

    def lock_log(self, cur: Cursor, *, reserve: int = 0) -> None:
        """Snowflake, inside ``transaction``: take the change log's counter row before a logged
        write's first read (an UPDATE that changes nothing; Snowflake holds its lock until the
        transaction ends). Every logged write of every replica does so first, so they run one
        at a time, as under SQLite's ``BEGIN IMMEDIATE``: what a write checked (the row it
        patches, the rows to delete or archive) still holds when it writes (an insert takes it
        after its check of ids: an id taken since is its MERGE's to find), no two writers wait
        for each other in a circle (the counter, then the memory table, for all), and the
        numbering later in the transaction waits for no one. A database that refuses the second
        writer instead (DuckDB under fakesnow) refuses it here, before it has done much work.
        Once a transaction; outside one (SQLite, or a statement at a time) nothing.

        ``reserve``: the number of entries the write will log, known before it writes (an
        insert: one a memory, or the batch is refused and rolled back), counted onto the
        counter in this UPDATE, so ``_log_numbered`` has only to read its numbers."""
        inside = self._inside
        if self.dialect.name == "sqlite" or not self.in_transaction or inside.locked:
            return
        if reserve:
            self._count_on(cur, reserve)
            inside.reserved = reserve
        else:
            cur.execute(f"UPDATE {self.counter_table} SET seq = seq")
        inside.locked = True

    def _count_on(self, cur: Cursor, n: int) -> None:
        """Add ``n`` to the counter, counting on from the log's last seq when that is higher (a
        log from before the counter existed); a counter row deleted by hand is put back first."""
        for _ in range(2):
            cur.execute(
                f"UPDATE {self.counter_table} SET seq = GREATEST({self.counter_table}.seq, logged.top) + ? "
                f"FROM (SELECT COALESCE(MAX(seq), 0) AS top FROM {self.changes_table}) AS logged",
                [n],
            )
            if cur.rowcount:
                return
            cur.execute(self.seed_counter())  # no counter row: put back, then count on
        raise RuntimeError(f"{self.counter_table} has no row and none could be added")

    def transaction(self, cur: Cursor, op: Callable[[Cursor], T], *, budget_s: float | None = None) -> T:
        """Snowflake: run ``op`` (a write, with its change-log entries) as one transaction:
        ``BEGIN``, ``op``, ``COMMIT``; a failure anywhere rolls all of it back, so a memory row
        is never committed without its entry in the log (a process dying inside it: Snowflake
        rolls back a session's open transaction when the session ends). ``BEGIN`` is sent just
        before ``op``'s first statement other than a SELECT (``_BeginAtFirstWrite``); numbers
        ``lock_log`` reserved and ``op`` did not use end it with ROLLBACK (no gap in the log).

        A logged write takes the counter's lock first (``lock_log``). A database that refuses
        the second writer instead of making it wait (DuckDB under fakesnow: a write-write
        conflict), Snowflake's 000625 (too many waiters for a lock, or one waited for too long)
        and a stale counter (``_log_numbered``) are rolled back and ``op`` is run again from the
        start, a bounded number of times. One transaction of the process at a time (a lock): one
        waiter a process for Snowflake's locks, which aborts a statement past 20 waiting for one
        table's lock. ``budget_s``: no try starts once that long has passed since the first (the
        caller has had its 503 by then; each refusal after ``LOCK_TIMEOUT`` would otherwise
        hold this process's writes for the lock's whole wait again, up to 40 times)."""
        started = time.monotonic()
        with self._write_lock:
            self._inside.transaction = True
            try:
                for attempt in range(_LOG_ATTEMPTS):
                    self._inside.locked = False
                    self._inside.reserved = 0
                    deferred = _BeginAtFirstWrite(cur)
                    try:
                        result = op(deferred)
                        if deferred.begun:
                            # Numbers reserved and not used: the write found nothing to change
                            # (a patch of a missing row) and wrote nothing; its ROLLBACK gives
                            # them back (a COMMIT would leave a gap, read by followers as a
                            # trimmed log).
                            cur.execute("ROLLBACK" if self._inside.reserved else "COMMIT")
                        return result
                    except Exception as exc:
                        if deferred.begun:
                            _roll_back(cur)
                        if (
                            not (isinstance(exc, _StaleCounter) or _is_write_conflict(exc))
                            or attempt + 1 == _LOG_ATTEMPTS
                            or (budget_s is not None and time.monotonic() - started >= budget_s)
                        ):
                            raise
                        time.sleep(random.uniform(0, min(_LOG_BACKOFF_MAX_S, _LOG_BACKOFF_S * 2**attempt)))
                raise AssertionError("unreachable: the last attempt returns or raises")
            finally:
                self._inside.transaction = False

    def _append(self, cur: Cursor, base: int, rows: Sequence[tuple[str, str, str | None, int]]) -> None:
        cur.executemany(
            f"INSERT INTO {self.changes_table} (seq, memory_id, namespace, owner, deleted) "
            "VALUES (?, ?, ?, ?, ?)",
            [(base + n, *row) for n, row in enumerate(rows, start=1)],
        )

    @property
    def _counter_now(self) -> str:
        """The counter's value as one row (``counter.seq``; MAX: one row, whatever a hand did)."""
        return f"(SELECT MAX(seq) AS seq FROM {self.counter_table})"

    @property
    def _unlogged(self) -> str:
        """The stale-counter check, one bound parameter (the numbers of ours from the statement's
        first on): no entry in the log at or above the statement's first number."""
        return f"NOT EXISTS (SELECT 1 FROM {self.changes_table} AS logged WHERE logged.seq > counter.seq - ?)"

    def _take_numbers(self, cur: Cursor, n: int) -> None:
        """Make the counter end at the last of ``n`` numbers of ours: read from ``lock_log``'s
        reservation when it reserved exactly these, else counted on now."""
        inside = self._inside
        if getattr(inside, "reserved", 0) == n:
            inside.reserved = 0
        else:
            self._count_on(cur, n)

    def _log_numbered(self, cur: Cursor, rows: Sequence[tuple[str, str, str | None, int]]) -> None:
        """Snowflake, inside ``transaction``: number and append ``rows`` after UPDATEing the
        counter row. Snowflake's UPDATE takes the table's lock until COMMIT, so another writer's
        UPDATE (any replica) waits for it and then counts on from this one's numbers: they are
        unique, gapless (a rollback takes its numbers back) and committed in order. The counter
        counts on from the log's own last seq when that is higher (a log from before the counter
        existed); a counter row deleted by hand is put back. Numbers reserved by ``lock_log``
        for exactly these rows are used, not counted again.

        The INSERT reads its numbers from the counter itself (Snowflake has no ``RETURNING``, so
        the UPDATE cannot hand them back; a SELECT of them cost a round trip under the lock),
        and writes nothing when an entry at or above its first number is in the log already:
        the UPDATE counted from an older state than the lock's holder left (not what Snowflake
        documents; checked, so it is a try again, never a second row of a seq)."""
        n = len(rows)
        self._take_numbers(cur, n)
        for offset in range(0, n, _MERGE_ROWS):
            part = rows[offset : offset + _MERGE_ROWS]
            reserved = n - offset  # numbers of ours from this part's first on
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(part))
            cur.execute(
                f"INSERT INTO {self.changes_table} (seq, memory_id, namespace, owner, deleted) "
                "SELECT counter.seq - ? + incoming.column1, incoming.column2, incoming.column3, "
                f"incoming.column4, incoming.column5 FROM {self._counter_now} AS counter, "
                f"(SELECT * FROM VALUES {values}) AS incoming WHERE {self._unlogged}",
                [reserved, *(v for k, row in enumerate(part, start=1) for v in (k, *row)), reserved],
            )
            if (cur.rowcount or 0) != len(part):
                raise _StaleCounter(f"{self.counter_table} behind its log: {len(part)} entries not written")

    def changes_after(
        self, cur: Cursor, seq: int, limit: int
    ) -> list[tuple[int, str, str, str | None, bool]]:
        """Up to ``limit`` changes numbered above ``seq``: (seq, id, namespace, owner, deleted)."""
        cur.execute(
            f"SELECT seq, memory_id, namespace, owner, deleted FROM {self.changes_table} "
            f"WHERE seq > ? ORDER BY seq LIMIT {int(limit)}",
            [seq],
        )
        return [(int(q), i, ns, owner, bool(d)) for q, i, ns, owner, d in cur.fetchall()]

    def last_change(self, cur: Cursor) -> int:
        cur.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {self.changes_table}")
        return int(cur.fetchone()[0])

    def trim_changes(self, cur: Cursor, keep: int) -> None:
        """Keep the last ``keep`` changes (a process further behind rebuilds its index)."""
        cur.execute(
            f"DELETE FROM {self.changes_table} WHERE seq <= (SELECT COALESCE(MAX(seq), 0) "
            f"FROM {self.changes_table}) - ?",
            [int(keep)],
        )

    def touch(self, cur: Cursor, counts: Mapping[str, int], at: datetime) -> None:
        """One UPDATE per distinct increment and chunk of ids (usually all increments are 1)."""
        by_increment: dict[int, list[str]] = {}
        for memory_id, n in counts.items():
            by_increment.setdefault(n, []).append(memory_id)
        stamp = self._time(at)
        for n, ids in by_increment.items():
            for part in chunks(ids):
                cur.execute(
                    f"UPDATE {self.table} SET access_count = COALESCE(access_count, 0) + ?, last_accessed = ? "
                    f"WHERE id IN ({marks(len(part))})",
                    [n, stamp, *part],
                )

    def archive_older_than(self, cur: Cursor, namespace: str, cutoff: datetime, dry_run: bool) -> int:
        """Archiving bumps row_version but not last_updated, so retention still counts from the
        last real change. Each archived memory goes in the change log, as an update does: the
        other processes sharing the store drop their cached searches of the namespace."""
        where = "namespace = ? AND processing_status = 'active' AND last_updated < ?"
        params = [namespace, self._time(cutoff)]
        if dry_run:
            cur.execute(f"SELECT COUNT(*) FROM {self.table} WHERE {where}", params)
            return int(cur.fetchone()[0])
        if self.dialect.name != "sqlite" and self.in_transaction:
            # Snowflake: the rows read before the lock, the rule checked again under it.
            cur.execute(f"SELECT id FROM {self.table} WHERE {where} ORDER BY id", params)
            return self._write_logged(
                cur, [row[0] for row in cur.fetchall()], rule=(where, params), archive=True
            )
        self.lock_log(cur)
        cur.execute(f"SELECT id, owner FROM {self.table} WHERE {where} ORDER BY id", params)
        found = [(i, namespace, owner, 0) for i, owner in cur.fetchall()]
        if not found:
            return 0
        # The same rows: the store holds the write lock since the SELECT (``lock_log``).
        cur.execute(f"UPDATE {self.table} SET {_ARCHIVED} WHERE {where}", params)
        archived = cur.rowcount or 0
        self.log_changes(cur, found)
        return archived

    def delete_where(self, cur: Cursor, where: str, params: Sequence[object], dry_run: bool) -> list[str]:
        """Delete the rows matching ``where``; returns their ids (selected first: neither
        database returns deleted rows portably)."""
        logged = not dry_run and self.dialect.name != "sqlite" and self.in_transaction
        if not dry_run and not logged:
            self.lock_log(cur)
        cur.execute(f"SELECT id FROM {self.table} WHERE {where} ORDER BY id", params)
        ids = [row[0] for row in cur.fetchall()]
        if logged:
            # Snowflake: the rows read before the lock, the rule checked again under it.
            self._write_logged(cur, ids, rule=(where, params))
        elif not dry_run:
            self.delete(cur, ids)
        return ids

    def delete_older_than(self, cur: Cursor, namespace: str, cutoff: datetime, dry_run: bool) -> list[str]:
        return self.delete_where(
            cur, "namespace = ? AND last_updated < ?", [namespace, self._time(cutoff)], dry_run
        )

    def delete_below_confidence(
        self, cur: Cursor, namespace: str, threshold: float, dry_run: bool
    ) -> list[str]:
        return self.delete_where(
            cur, "namespace = ? AND confidence_score < ?", [namespace, threshold], dry_run
        )


def _same(stored: Memory, sent: Memory) -> bool:
    """Whether a stored row is the memory ``sent`` (what a writer chooses; not the times)."""
    return (stored.namespace, stored.owner, stored.content, stored.data_source) == (
        sent.namespace,
        sent.owner,
        sent.content,
        sent.data_source,
    ) and (encode_metadata(stored.metadata), encode_embedding(stored.embedding)) == (
        encode_metadata(sent.metadata),
        encode_embedding(sent.embedding),
    )


def _patch_assignments(patch: MemoryPatch) -> tuple[list[str], list[object]]:
    """``col = ?`` assignments and their values for the fields ``patch`` sets."""
    values: Iterable[tuple[str, object]] = (
        ("content", patch.content),
        ("embedding", encode_embedding(patch.embedding)),
        ("metadata", None if patch.metadata is None else encode_metadata(patch.metadata)),
        ("data_source", patch.data_source),
        ("confidence_score", patch.confidence_score),
        ("importance_score", patch.importance_score),
        ("processing_status", patch.processing_status),
    )
    chosen = [(name, value) for name, value in values if value is not None]
    return [f"{name} = ?" for name, _ in chosen], [value for _, value in chosen]
