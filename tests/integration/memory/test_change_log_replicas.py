"""The change log numbered across replicas: two Snowflake stores (two replicas: each its own pool
of connections, its own process lock) write to one fakesnow account at once while a third one
follows the log as a worker or replica does (``seq > last seen``). The follower must meet every
committed change exactly once, in order and without a gap, and end with the table's ids."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import snowflake.connector
from snowflake.connector.errors import OperationalError, ProgrammingError

from gateway.errors import ServiceUnavailable
from gateway.memory.records import Memory, MemoryPatch
from gateway.memory.snowflake_store import SnowflakeMemoryStore
from gateway.memory.sql_store import SQLMemoryStore
from tests.integration.memory.conftest import SMALL_POOL, SNOWFLAKE_ARGS, Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

VECTOR = (0.5, -0.25, 1.0, 0.125)
PER_REPLICA = 24  # memories each replica creates, two at a time; then patches half, deletes a quarter


def memory(mid: str) -> Memory:
    return Memory(id=mid, namespace="facts", content=f"fact {mid}", embedding=VECTOR)


async def write_as_a_replica(store: SQLMemoryStore, name: str) -> None:
    """Creates, patches and deletes, all at once (the pool runs up to four statements)."""
    ids = [f"{name}-{n}" for n in range(PER_REPLICA)]
    await asyncio.gather(*(store.insert([memory(ids[n]), memory(ids[n + 1])]) for n in range(0, len(ids), 2)))
    await asyncio.gather(
        *(store.update(i, MemoryPatch(content=f"changed {i}")) for i in ids[::2]),
        store.delete(ids[1 : PER_REPLICA // 2 : 2]),
        *(store.delete([i]) for i in ids[PER_REPLICA // 2 + 1 :: 4]),
    )


class Follower:
    """Reads the log as ``MemoryService.catch_up`` does; remembers every seq it applied and the
    ids it would hold in its index."""

    def __init__(self, store: SQLMemoryStore) -> None:
        self.store = store
        self.seen = 0
        self.applied: list[int] = []
        self.ids: set[str] = set()

    async def poll(self) -> None:
        while changes := await self.store.changes_after(self.seen, 1000):
            # catch_up takes a first seq other than seen + 1 for a trimmed log (and rebuilds):
            # never so here, where nothing is trimmed.
            assert changes[0][0] == self.seen + 1, f"after {self.seen} the log went on at {changes[0][0]}"
            for seq, memory_id, _, _, deleted in changes:
                self.applied.append(seq)
                if deleted:
                    self.ids.discard(memory_id)
                else:
                    self.ids.add(memory_id)
            self.seen = changes[-1][0]


async def test_two_replicas_writing_at_once_are_followed_without_a_skip(
    fake_snowflake: None, tmp_path: Path
) -> None:
    backend = Backend("snowflake", tmp_path)
    try:
        one = await backend.open()
        two = await backend.open()
        watcher = await backend.open()
        assert isinstance(one, SnowflakeMemoryStore) and one._q is not two._q  # one lock each
        follower = Follower(watcher)
        writing = asyncio.gather(write_as_a_replica(one, "a"), write_as_a_replica(two, "b"))
        while not writing.done():  # the follower reads while the replicas write
            await follower.poll()
            await asyncio.wait({writing}, timeout=0.005)
        await writing  # every write answered (none refused for a seq another replica took)
        await follower.poll()

        stored = {i for batch in [b async for b in watcher.scan_embeddings(1000)] for i, *_ in batch}
        assert len(stored) == 2 * (PER_REPLICA - PER_REPLICA // 4 - PER_REPLICA // 8)
        logged = await watcher.changes_after(0, 10_000)
        assert [seq for seq, *_ in logged] == list(range(1, len(logged) + 1))  # unique, no gap
        # 2 x (24 created, 12 patched, 9 deleted)
        assert len(logged) == 2 * (PER_REPLICA + PER_REPLICA // 2 + PER_REPLICA // 4 + PER_REPLICA // 8)
        assert follower.applied == [seq for seq, *_ in logged]  # each exactly once, in order
        assert follower.ids == stored
    finally:
        for store in backend.opened:
            await store.close()


async def test_the_counter_counts_on_from_a_log_it_did_not_number(
    fake_snowflake: None, tmp_path: Path
) -> None:
    """A log written before the counter existed (or a counter row deleted by hand): numbering
    goes on from the log's last seq, never again from 1."""
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        assert isinstance(store, SnowflakeMemoryStore)
        await store.insert([memory("a"), memory("b")])
        assert await store.last_change() == 2

        def older_gateway(cur: Any) -> None:  # the log as a gateway without the counter left it
            cur.execute(
                f"INSERT INTO {store._q.changes_table} (seq, memory_id, namespace, owner, deleted) "
                "VALUES (3, 'x', 'facts', NULL, 1)"
            )
            cur.execute(f"DELETE FROM {store._q.counter_table}")

        await store._execute(older_gateway)
        await store.insert([memory("c")])
        await store.update("a", MemoryPatch(content="changed"))
        logged = await store.changes_after(0, 10)
        assert [(seq, i) for seq, i, *_ in logged] == [(1, "a"), (2, "b"), (3, "x"), (4, "c"), (5, "a")]
    finally:
        for opened in backend.opened:
            await opened.close()


class FailingLog:
    """A connection (fakesnow's, wrapped) whose change-log INSERT fails while ``armed``: the
    memory's own statement has run, its entry is refused. ``crash``: the session ends there
    (the connection closed under the statement, as when the process dies or its network goes);
    otherwise Snowflake refuses the statement (000606: the warehouse gone since the write)."""

    armed = False

    def __init__(self, conn: Any, crash: bool) -> None:
        self._conn = conn
        self._crash = crash

    def cursor(self, *args: Any) -> Any:
        cur = self._conn.cursor(*args)
        conn, crash = self._conn, self._crash

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

            def _check(self, sql: str) -> None:
                if FailingLog.armed and sql.upper().startswith("INSERT INTO MEMORIES_CHANGES"):
                    if crash:
                        conn.close()
                        raise OperationalError(msg="Connection closed by the peer.", errno=250003)
                    raise ProgrammingError(
                        msg="No active warehouse selected in the current session.",
                        errno=606,
                        sqlstate="57P03",
                    )

            def execute(self, sql: str, *args: Any) -> Any:
                self._check(sql)
                return cur.execute(sql, *args)

            def executemany(self, sql: str, *args: Any) -> Any:
                self._check(sql)
                return cur.executemany(sql, *args)

        return Failing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize("crash", [False, True], ids=["refused", "crash"])
async def test_a_write_whose_log_entry_fails_is_not_committed_without_it(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, crash: bool
) -> None:
    """The memory's statement ran, its change-log entry failed: the write and its entry are one
    transaction, so neither stays (a follower never misses a committed change, and the client,
    told 503, finds nothing half done). Before: each statement committed on its own, so the
    created row, the patch and the delete stayed with no entry in the log."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: FailingLog(connect(**kw), crash))
    monkeypatch.setattr(FailingLog, "armed", False)
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        await store.insert([memory("kept"), memory("gone")])
        before = await store.changes_after(0, 100)
        FailingLog.armed = True

        async def attempt(write: Any) -> None:
            with pytest.raises(ServiceUnavailable):
                await write
            # A crash took the connection: the pool replaces it once its health check is due.
            backend.pool_clock.now += SMALL_POOL.health_check_interval_s + 1

        await attempt(store.insert([memory("new")]))
        await attempt(store.update("kept", MemoryPatch(content="changed")))
        await attempt(store.delete(["gone"]))
        FailingLog.armed = False

        assert await store.changes_after(0, 100) == before  # nothing logged
        assert await store.get("new") is None  # and nothing written without its entry
        kept = await store.get("kept")
        assert kept is not None and (kept.content, kept.row_version) == ("fact kept", 1)
        assert await store.get("gone") is not None
        await store.insert([memory("new")])  # the store works on, numbering on from 2
        assert [seq for seq, *_ in await store.changes_after(0, 100)] == [1, 2, 3]
    finally:
        for opened in backend.opened:
            await opened.close()


class RefusedLock:
    """A connection whose UPDATE of the counter is refused with 000625 (the lock waited for past
    ``LOCK_TIMEOUT``, or more than 20 waiters) while ``armed``; counts the refusals."""

    armed = False
    refusals = 0

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self, *args: Any) -> Any:
        cur = self._conn.cursor(*args)

        class Refusing:
            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

            def execute(self, sql: str, *params: Any) -> Any:
                if RefusedLock.armed and sql.upper().startswith("UPDATE MEMORIES_CHANGES_COUNTER"):
                    RefusedLock.refusals += 1
                    raise ProgrammingError(
                        msg="Statement waited too long on a lock for table MEMORIES_CHANGES_COUNTER.",
                        errno=625,
                        sqlstate="57014",
                    )
                return cur.execute(sql, *params)

        return Refusing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_a_write_refused_the_lock_stops_trying_when_its_caller_has_had_its_503(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A write whose lock is refused again and again gives up once ``statement_timeout_s`` has
    passed, when its caller has had its 503: on Snowflake each refusal comes after
    ``LOCK_TIMEOUT`` (the same time), so 40 tries held the process's writes (one transaction a
    process at a time) for 40 times that. Before: all 40 tries were made whatever the time."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: RefusedLock(connect(**kw)))
    monkeypatch.setattr(RefusedLock, "armed", False)
    monkeypatch.setattr(RefusedLock, "refusals", 0)
    store = SnowflakeMemoryStore(
        SNOWFLAKE_ARGS, SMALL_POOL.model_copy(update={"statement_timeout_s": 1.0}), upkeep=False
    )
    await store.start()
    try:
        RefusedLock.armed = True
        with pytest.raises(ServiceUnavailable):
            await store.insert([memory("a")])
        # The write's thread ends its tries (the process's write lock free again), bounded.
        assert await asyncio.to_thread(store._q._write_lock.acquire, timeout=30)
        store._q._write_lock.release()
        assert 1 < RefusedLock.refusals < 40  # ~25 tries fit in the second; 40 take ~2 s
        RefusedLock.armed = False
        await store.insert([memory("a")])
        assert [i for _, i, *_ in await store.changes_after(0, 10)] == ["a"]
    finally:
        await store.close()


class Statements:
    """A connection that records each statement's first words, in order, all connections
    together (one store, one write at a time: its process lock)."""

    sent: ClassVar[list[str]] = []

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self, *args: Any) -> Any:
        cur = self._conn.cursor(*args)

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

            def execute(self, sql: str, *params: Any) -> Any:
                Statements.sent.append(" ".join(sql.split()[:3]).upper())
                return cur.execute(sql, *params)

            def executemany(self, sql: str, *params: Any) -> Any:
                Statements.sent.append(" ".join(sql.split()[:3]).upper())
                return cur.executemany(sql, *params)

        return Recording()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    @classmethod
    def under_the_lock(cls) -> list[str]:
        """The statements from the counter's UPDATE (the fleet-wide lock) to the transaction's
        end, inclusive: the round trips every replica's logged writes wait for."""
        sent, cls.sent = cls.sent, []
        starts = [n for n, sql in enumerate(sent) if sql.startswith("UPDATE MEMORIES_CHANGES_COUNTER")]
        if not starts:
            return []
        held = sent[starts[0] :]
        return held[: next(n for n, sql in enumerate(held) if sql in ("COMMIT", "ROLLBACK")) + 1]


async def test_a_logged_write_holds_the_counter_lock_for_few_round_trips(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every replica's logged writes run one at a time from the counter's UPDATE to their COMMIT,
    so each statement in that stretch is a round trip the whole fleet waits for. An insert holds
    it for 4 (the reserving UPDATE, MERGE, the log's INSERT that reads its numbers, COMMIT), a
    patch for 5 (its number reserved up front; the row read back for the caller), a delete for 4
    (its rows found before the lock). Before: 5, 7 and 7 (a SELECT of the numbers; a patch's or
    delete's numbers counted on after its write). The numbering stays gapless: a patch of a
    missing row rolls its reserved number back, and a delete of nothing takes no lock (nor sends
    BEGIN and COMMIT: a transaction begins at its first statement other than a SELECT)."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: Statements(connect(**kw)))
    monkeypatch.setattr(Statements, "sent", [])
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        Statements.sent = []
        await store.insert([memory("a"), memory("b"), memory("c")])
        inserted = Statements.under_the_lock()
        await store.update("a", MemoryPatch(content="changed"))
        patched = Statements.under_the_lock()
        await store.delete(["b", "c", "nowhere"])
        deleted = Statements.under_the_lock()
        assert (len(inserted), len(patched), len(deleted)) == (4, 5, 4), (inserted, patched, deleted)

        assert await store.update("nowhere", MemoryPatch(content="x")) is None
        assert Statements.under_the_lock()[-1] == "ROLLBACK"  # its reserved number given back
        assert await store.delete(["nowhere"]) == 0
        assert [sql.split()[0] for sql in Statements.sent] == ["SELECT"]  # no lock, no BEGIN
        assert Statements.under_the_lock() == []
        await store.insert([memory("d")])
        logged = await store.changes_after(0, 100)
        assert [(seq, i, d) for seq, i, _, _, d in logged] == [
            (1, "a", False),
            (2, "b", False),
            (3, "c", False),
            (4, "a", False),
            (5, "b", True),
            (6, "c", True),
            (7, "d", False),
        ]
        changed = await store.get("a")
        assert changed is not None and (changed.content, changed.row_version) == ("changed", 2)
        assert await store.get("b") is None and await store.get("c") is None
    finally:
        for opened in backend.opened:
            await opened.close()


class DeletedMeanwhile:
    """A connection on which, once ``armed``, another writer (a connection of its own) deletes
    ``victim`` (or runs ``statement``) just before this one's transaction begins: between a
    delete's read of its rows (before the lock) and its write of them (under the lock). There,
    DuckDB's snapshot (from BEGIN) sees the other writer's commit, as Snowflake's read committed
    statements would: the entries come short, the path Snowflake takes."""

    armed = False
    victim = ""
    statement = ""  # what the other writer runs instead of deleting ``victim``, when set

    def __init__(self, conn: Any, connect: Any) -> None:
        self._conn, self._connect = conn, connect

    def cursor(self, *args: Any) -> Any:
        cur = self._conn.cursor(*args)
        connect = self._connect

        class Racing:
            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

            def execute(self, sql: str, *params: Any) -> Any:
                if DeletedMeanwhile.armed and sql.upper().startswith("BEGIN"):
                    DeletedMeanwhile.armed = False
                    other = connect(**SNOWFLAKE_ARGS)
                    try:
                        other.cursor().execute(
                            DeletedMeanwhile.statement
                            or f"DELETE FROM MEMORIES WHERE id = '{DeletedMeanwhile.victim}'"
                        )
                    finally:
                        other.close()
                return cur.execute(sql, *params)

        return Racing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_a_row_deleted_by_another_writer_after_the_delete_read_it_is_logged_once(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A delete reads which of its ids are stored before it takes the counter's lock and reserves
    that many numbers; a row another writer deleted in between is not among the entries it can
    write, so its entries come short and it tries again from the start: the log holds one entry for each row it
    deleted, without a gap or a number given twice (the other writer here is a bare DELETE that
    logs nothing of its own). Passes before too (the lock was taken before the read then)."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: DeletedMeanwhile(connect(**kw), connect))
    monkeypatch.setattr(DeletedMeanwhile, "armed", False)
    monkeypatch.setattr(DeletedMeanwhile, "victim", "x")
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        await store.insert([memory("x"), memory("y")])
        DeletedMeanwhile.armed = True
        assert await store.delete(["x", "y"]) == 1  # y; x was the other writer's to delete
        assert not DeletedMeanwhile.armed  # the race ran
        await store.insert([memory("z")])
        logged = await store.changes_after(0, 100)
        assert [(seq, i, d) for seq, i, _, _, d in logged] == [
            (1, "x", False),
            (2, "y", False),
            (3, "y", True),
            (4, "z", False),
        ]
    finally:
        for opened in backend.opened:
            await opened.close()


async def test_a_retention_delete_holds_the_counter_lock_for_four_round_trips(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A retention delete (``delete_older_than``) reads the rows its rule matches before the
    counter's lock, then under it writes their entries and deletes them, both only where the rule
    still holds: UPDATE (reserving), INSERT, DELETE, COMMIT. Before: 7 (the lock, the rule's
    SELECT, a second read of the rows, the numbering UPDATE, INSERT, DELETE, COMMIT)."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: Statements(connect(**kw)))
    monkeypatch.setattr(Statements, "sent", [])
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        await store.insert([memory("a"), memory("b"), memory("c")])
        await store.insert([Memory(id="other", namespace="elsewhere", content="kept", embedding=VECTOR)])
        Statements.sent = []
        cutoff = datetime.now(UTC) + timedelta(days=1)
        assert await store.delete_older_than("facts", cutoff) == ["a", "b", "c"]
        held = Statements.under_the_lock()
        assert len(held) == 4, held
        assert await store.delete_older_than("facts", cutoff) == []
        assert Statements.under_the_lock() == []  # nothing matched: no lock
        logged = await store.changes_after(0, 100)
        assert [(seq, i, d) for seq, i, _, _, d in logged][4:] == [
            (5, "a", True),
            (6, "b", True),
            (7, "c", True),
        ]
        assert await store.get("other") is not None
    finally:
        for opened in backend.opened:
            await opened.close()


async def test_a_row_that_stops_matching_the_retention_rule_before_the_lock_is_kept(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A retention delete reads the rows its rule matches before the counter's lock; one changed
    by another writer in between so that the rule no longer matches it (its confidence raised)
    is neither logged nor deleted: the rule is checked again under the lock and the delete tried
    again from its read. A guard for h-snow5's read-before-lock (passes before: the read was
    under the lock then)."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: DeletedMeanwhile(connect(**kw), connect))
    monkeypatch.setattr(DeletedMeanwhile, "armed", False)
    monkeypatch.setattr(
        DeletedMeanwhile, "statement", "UPDATE MEMORIES SET confidence_score = 1.0 WHERE id = 'a'"
    )
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        unsure = [
            Memory(id=i, namespace="facts", content=f"fact {i}", embedding=VECTOR, confidence_score=0.5)
            for i in ("a", "b")
        ]
        await store.insert(unsure)
        DeletedMeanwhile.armed = True
        assert await store.delete_below_confidence("facts", 0.9) == ["b"]
        assert not DeletedMeanwhile.armed  # the race ran
        kept = await store.get("a")
        assert kept is not None and kept.confidence_score == 1.0
        logged = await store.changes_after(0, 100)
        assert [(seq, i, d) for seq, i, _, _, d in logged] == [
            (1, "a", False),
            (2, "b", False),
            (3, "b", True),
        ]
    finally:
        for opened in backend.opened:
            await opened.close()


async def test_an_archive_holds_the_counter_lock_for_four_round_trips(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An archive (``archive_older_than``) reads the rows its rule matches before the counter's
    lock, then under it writes their entries and archives them, both only where the rule still
    holds: UPDATE (reserving), INSERT, UPDATE, COMMIT. Before: 6 (the lock, the rule's SELECT,
    the archiving UPDATE, the numbering UPDATE, INSERT, COMMIT)."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: Statements(connect(**kw)))
    monkeypatch.setattr(Statements, "sent", [])
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        await store.insert([memory("a"), memory("b"), memory("c")])
        await store.insert([Memory(id="other", namespace="elsewhere", content="kept", embedding=VECTOR)])
        Statements.sent = []
        cutoff = datetime.now(UTC) + timedelta(days=1)
        assert await store.archive_older_than("facts", cutoff) == 3
        held = Statements.under_the_lock()
        assert len(held) == 4, held
        assert await store.archive_older_than("facts", cutoff) == 0
        assert Statements.under_the_lock() == []  # nothing matched: no lock
        logged = await store.changes_after(0, 100)
        assert [(seq, i, d) for seq, i, _, _, d in logged][4:] == [
            (5, "a", False),
            (6, "b", False),
            (7, "c", False),
        ]
        archived = await store.get("a")
        assert archived is not None and (archived.processing_status, archived.row_version) == ("archived", 2)
        other = await store.get("other")
        assert other is not None and other.processing_status == "active"
    finally:
        for opened in backend.opened:
            await opened.close()


async def test_a_row_archived_by_another_writer_before_the_archive_locks_is_logged_once(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An archive reads the rows its rule matches before the counter's lock; one archived by
    another writer in between (another replica's lifecycle run, here a bare UPDATE that logs
    nothing) no longer matches under the lock: the entries come short, the archive is tried again
    from its read and archives and logs only the other row; the row is neither archived nor
    logged twice (its row_version bumped once). A guard for the read-before-lock (passes before:
    the read was under the lock then)."""
    connect = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: DeletedMeanwhile(connect(**kw), connect))
    monkeypatch.setattr(DeletedMeanwhile, "armed", False)
    monkeypatch.setattr(
        DeletedMeanwhile,
        "statement",
        "UPDATE MEMORIES SET processing_status = 'archived', row_version = row_version + 1 WHERE id = 'a'",
    )
    backend = Backend("snowflake", tmp_path)
    try:
        store = await backend.open()
        await store.insert([memory("a"), memory("b")])
        DeletedMeanwhile.armed = True
        assert await store.archive_older_than("facts", datetime.now(UTC) + timedelta(days=1)) == 1
        assert not DeletedMeanwhile.armed  # the race ran
        for i in ("a", "b"):
            row = await store.get(i)
            assert row is not None and (row.processing_status, row.row_version) == ("archived", 2), i
        logged = await store.changes_after(0, 100)
        assert [(seq, i, d) for seq, i, _, _, d in logged] == [
            (1, "a", False),
            (2, "b", False),
            (3, "b", False),
        ]
    finally:
        for opened in backend.opened:
            await opened.close()
