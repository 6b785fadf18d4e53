"""``patch()``: ``fakesnow.patch()`` (Snowflake SQL on DuckDB in the process) with two of the
fake's differences from Snowflake taken away, for every test that runs the Snowflake memory store
on it.

* **A MERGE inside a transaction.** fakesnow runs a ``MERGE`` through a temporary table,
  ``merge_candidates``, and records that table (with no comment) in its own catalog, a second
  DuckDB database. DuckDB lets a transaction write one database only, so a MERGE inside
  ``BEGIN`` ... ``COMMIT`` (the store's writes are one transaction each) failed there: "a single
  transaction can only write to a single attached database". Snowflake has no such record to
  write. The record is skipped for temporary tables created without a comment (nothing reads it:
  a temporary table is gone with its session), which also ends the collisions of two
  connections' MERGEs on that record's key (``Duplicate key ... MERGE_CANDIDATES``, h-seq).
* **Waiting for the change log's counter.** Snowflake's UPDATE of a table another session's
  open transaction has updated waits for that transaction to end (up to ``LOCK_TIMEOUT``, then
  000625); DuckDB refuses it at once ("Conflict on update"), and a writer refused so tries again
  after a random pause while the holder's own process hands its next write the row at once: one
  replica starves another (seen: 40 refusals in a row). With ``wait_for_locks`` an UPDATE of a
  ``..._CHANGES_COUNTER`` table waits as Snowflake's does, until the holder's COMMIT, ROLLBACK or
  closed connection, and after ``lock_timeout_s`` is refused with 000625 (what Snowflake says
  past ``LOCK_TIMEOUT``). Other tables keep DuckDB's refusals.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import fakesnow
import fakesnow.conn
import fakesnow.cursor
import fakesnow.transforms
from snowflake.connector.errors import ProgrammingError
from sqlglot import exp

_extract_comment_on_table = fakesnow.transforms.extract_comment_on_table
_COUNTER_UPDATE = re.compile(r"\s*UPDATE\s+([A-Za-z0-9_$.]+_CHANGES_COUNTER)\b", re.IGNORECASE)
_ENDS = re.compile(r"\s*(COMMIT|ROLLBACK)\b", re.IGNORECASE)
_BEGINS = re.compile(r"\s*BEGIN\b", re.IGNORECASE)


def _without_temporary_records(expression: Any) -> Any:
    new = _extract_comment_on_table(expression)
    recorded = new.args.get("table_comment")
    properties = expression.args.get("properties") if isinstance(expression, exp.Create) else None
    temporary = properties is not None and any(
        isinstance(p, exp.TemporaryProperty) for p in properties.expressions
    )
    if recorded and recorded[1] is None and temporary:
        new.set("table_comment", None)
    return new


class _TableLocks:
    """Snowflake's DML lock on the counter tables: held by one connection until its
    transaction ends (or, outside one, until the statement ends)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._changed = threading.Condition()
        self._holders: dict[str, object] = {}  # table -> connection
        self._open: set[int] = set()  # ids of connections inside BEGIN ... COMMIT

    def before(self, conn: object, sql: str) -> None:
        if _BEGINS.match(sql):
            self._open.add(id(conn))
        elif _ENDS.match(sql):
            self._open.discard(id(conn))
            self.release(conn)
        elif match := _COUNTER_UPDATE.match(sql):
            self._take(conn, match.group(1).upper())

    def after(self, conn: object) -> None:
        if id(conn) not in self._open:  # a statement on its own: its lock ends with it
            self.release(conn)

    def _take(self, conn: object, table: str) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._holders.get(table, conn) is conn, timeout=self._timeout_s
            ):
                raise ProgrammingError(
                    msg=f"Statement waited more than {self._timeout_s:g} seconds on a lock on {table}; "
                    "aborted (LOCK_TIMEOUT).",
                    errno=625,
                    sqlstate="57014",
                )
            self._holders[table] = conn

    def release(self, conn: object) -> None:
        with self._changed:
            for table in [t for t, holder in self._holders.items() if holder is conn]:
                del self._holders[table]
            self._changed.notify_all()

    def closed(self, conn: object) -> None:
        self._open.discard(id(conn))
        self.release(conn)


@contextlib.contextmanager
def patch(*, wait_for_locks: bool = True, lock_timeout_s: float = 30.0) -> Iterator[None]:
    """``fakesnow.patch()`` whose MERGEs run inside a transaction and (``wait_for_locks``) whose
    UPDATEs of the change log's counter wait for another transaction's lock as Snowflake's do."""
    cursor_cls, conn_cls = fakesnow.cursor.FakeSnowflakeCursor, fakesnow.conn.FakeSnowflakeConnection
    execute, close = cursor_cls.execute, conn_cls.close
    locks = _TableLocks(lock_timeout_s)

    def waiting_execute(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        conn = self._conn
        locks.before(conn, command)
        try:
            return execute(self, command, *args, **kwargs)
        finally:
            locks.after(conn)

    def releasing_close(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            close(self, *args, **kwargs)
        finally:
            locks.closed(self)  # Snowflake ends a closed session's transaction, its locks with it

    fakesnow.transforms.extract_comment_on_table = _without_temporary_records
    if wait_for_locks:
        cursor_cls.execute = waiting_execute  # type: ignore[method-assign]
        conn_cls.close = releasing_close  # type: ignore[method-assign]
    try:
        with fakesnow.patch():
            yield
    finally:
        fakesnow.transforms.extract_comment_on_table = _extract_comment_on_table
        cursor_cls.execute, conn_cls.close = execute, close  # type: ignore[method-assign]
