"""One suite for both memory stores (``backend`` runs each test on SQLite and on fakesnow)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import snowflake.connector

from gateway.errors import Conflict, InvalidRequest
from gateway.memory.records import Memory, MemoryPatch, PruneRule
from gateway.memory.sql_store import SQLMemoryStore
from tests.integration.memory.conftest import SNOWFLAKE_ARGS, START, Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

# float32-exact values, so embeddings compare equal after the round trip.
VECTOR = (0.5, -0.25, 1.0, 0.125)
SEED_RULE = PruneRule(idle_days=90, min_importance=0.7, min_access_count=5)


def memory(mid: str, namespace: str = "slack_data", **fields: Any) -> Memory:
    return replace(Memory(id=mid, namespace=namespace, content=f"fact {mid}", embedding=VECTOR), **fields)


async def test_insert_and_get_round_trip(backend: Backend, store: SQLMemoryStore) -> None:
    stored = memory(
        "a",
        metadata={"channel": "#eng", "tags": ["x", 1], "nested": {"ok": True}},
        data_source="slack",
        confidence_score=0.9,
        importance_score=0.8,
    )
    await store.insert([stored, memory("b", "gong_data", embedding=None)])

    got = await store.get("a")
    assert got is not None
    assert (got.id, got.namespace, got.content, got.embedding) == ("a", "slack_data", "fact a", VECTOR)
    assert got.metadata == {"channel": "#eng", "tags": ["x", 1], "nested": {"ok": True}}
    assert (got.data_source, got.confidence_score, got.importance_score) == ("slack", 0.9, 0.8)
    assert (got.processing_status, got.row_version, got.access_count, got.last_accessed) == (
        "active",
        1,
        0,
        None,
    )
    assert got.created_at == got.last_updated == START  # aware UTC from the store's clock
    bare = await store.get("b")
    assert bare is not None and bare.embedding is None and bare.metadata == {}
    assert await store.get("missing") is None
    assert sorted(m.id for m in await store.get_many(["b", "missing", "a", "a"])) == ["a", "b"]
    assert await store.get_many([]) == []


async def test_insert_refuses_existing_ids(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert([memory("a")])
    with pytest.raises(InvalidRequest) as exc:
        await store.insert([memory("new"), memory("a")])
    assert exc.value.code == "memory_exists"
    with pytest.raises(InvalidRequest):
        await store.insert([memory("twice"), memory("twice")])
    assert await store.count() == 1  # neither batch left anything behind


def writes_memories(sql: str) -> bool:
    """Whether ``sql`` writes new rows of the memory table (SQLite's INSERT, Snowflake's MERGE)."""
    return re.match(r"(INSERT|MERGE) INTO memories\b", sql, re.IGNORECASE) is not None


class WriteBeforeInsert:
    """The store's cursor, with another connection's write committed just before its INSERT
    (MERGE on Snowflake): another process taking an id between the store's check that it is
    free and its write."""

    def __init__(self, cur: Any, write: Callable[[], None]) -> None:
        self.cur = cur
        self.write: Callable[[], None] | None = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)

    def _before(self, sql: str) -> None:
        if self.write is not None and writes_memories(sql):
            self.write, write = None, self.write
            write()

    def execute(self, sql: str, params: Any = ()) -> object:
        self._before(sql)
        return self.cur.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> object:
        self._before(sql)
        return self.cur.executemany(sql, params)


async def test_an_id_taken_between_the_check_and_the_insert_is_refused_as_taken(
    backend: Backend, store: SQLMemoryStore
) -> None:
    """A database that enforces the key (SQLite; DuckDB under fakesnow) refuses the second
    writer's row: that is ``memory_exists``, as the check's answer, not a driver error (a 500).
    The SQLite store takes the write lock before its check (see test_sqlite_store.py); here the
    statements run without it, as on a store whose database has no such lock."""

    def other_process() -> None:
        if backend.name == "sqlite":
            with contextlib.closing(sqlite3.connect(backend.sqlite_path)) as conn, conn:
                conn.execute("INSERT INTO memories (id, namespace, content) VALUES ('same', 'ns', 'theirs')")
        else:
            with contextlib.closing(snowflake.connector.connect(**SNOWFLAKE_ARGS)) as conn:
                conn.cursor().execute(
                    "INSERT INTO memories (id, namespace, content) VALUES ('same', 'ns', 'theirs')"
                )

    with pytest.raises(InvalidRequest) as exc:
        await store._run(
            "insert",
            lambda cur: store._q.insert(WriteBeforeInsert(cur, other_process), [memory("same")], START),
        )
    assert (exc.value.code, exc.value.param) == ("memory_exists", "id")
    assert "'same'" in exc.value.message
    [kept] = await store.get_many(["same"])
    assert kept.content == "theirs" and await store.count() == 1


async def test_update_bumps_row_version_and_last_updated(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert([memory("a", data_source="slack", metadata={"v": 1})])
    later = backend.clock.advance(hours=2)

    updated = await store.update("a", MemoryPatch(content="new", embedding=(1.0, 0.0), importance_score=0.75))
    assert updated is not None
    assert (updated.content, updated.embedding, updated.importance_score) == ("new", (1.0, 0.0), 0.75)
    assert (updated.row_version, updated.last_updated, updated.created_at) == (2, later, START)
    assert (updated.data_source, updated.metadata) == ("slack", {"v": 1})  # untouched fields stay

    again = await store.update("a", MemoryPatch(metadata={"v": 2}, processing_status="archived"))
    assert again is not None and again.row_version == 3 and again.metadata == {"v": 2}
    assert again.processing_status == "archived"
    assert await store.update("missing", MemoryPatch(content="x")) is None


async def test_an_update_given_the_row_version_it_read_is_compare_and_set(
    backend: Backend, store: SQLMemoryStore
) -> None:
    """Two writers that read row_version 1 both wrote, the second silently undoing the first; now a
    PATCH naming the version it read changes the row only while it still has that version."""
    await store.insert([memory("a")])
    first = await store.update("a", MemoryPatch(content="first", if_row_version=1))
    assert first is not None and (first.content, first.row_version) == ("first", 2)
    with pytest.raises(Conflict) as caught:
        await store.update("a", MemoryPatch(content="second", if_row_version=1))
    assert caught.value.http_status == 409 and caught.value.code == "row_version_conflict"
    assert caught.value.param == "row_version"
    kept = await store.get("a")
    assert kept is not None and (kept.content, kept.row_version) == ("first", 2)
    assert await store.update("missing", MemoryPatch(content="x", if_row_version=1)) is None  # still a 404


async def test_delete_counts_what_existed(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert([memory("a"), memory("b"), memory("c")])
    assert await store.delete(["a", "c", "missing"]) == 2
    assert await store.delete([]) == 0
    assert [m.id for m in await store.get_many(["a", "b", "c"])] == ["b"]


async def test_touch_adds_counts_in_one_batch(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert([memory("a"), memory("b"), memory("c")])
    first = START + timedelta(minutes=5)
    await store.touch({"a": 3, "b": 1, "c": 1, "missing": 2}, first)
    second = START + timedelta(minutes=9)
    await store.touch({"a": 1}, second)

    got = {m.id: m for m in await store.get_many(["a", "b", "c"])}
    assert (got["a"].access_count, got["a"].last_accessed) == (4, second)
    assert (got["b"].access_count, got["b"].last_accessed) == (1, first)
    assert got["a"].row_version == 1  # an access is not an update


@pytest.mark.parametrize(("total", "sizes"), [(25, [10, 10, 5]), (20, [10, 10]), (0, [])])
async def test_scan_embeddings_in_batches(
    backend: Backend, store: SQLMemoryStore, total: int, sizes: list[int]
) -> None:
    rows = [memory(f"m{i:03d}", "ns" if i % 2 else "other") for i in range(total)]
    await store.insert([*rows, memory("no-vector", embedding=None)])

    batches = [batch async for batch in store.scan_embeddings(10)]
    assert [len(b) for b in batches] == sizes
    seen = [item for batch in batches for item in batch]
    assert sorted(i for i, _, _, _ in seen) == [m.id for m in rows]
    assert all(
        vector == VECTOR and ns == ("ns" if int(i[1:]) % 2 else "other") and owner is None
        for i, ns, owner, vector in seen
    )


async def test_prune_candidates_follow_the_seed_rule(backend: Backend, store: SQLMemoryStore) -> None:
    now = START + timedelta(days=200)
    await store.insert(
        [
            memory("stale"),  # never accessed, created 200 days ago, importance 0.5
            memory("important", importance_score=0.9),
            memory("popular", access_count=7),
            memory("recently-read"),
            memory("read-long-ago"),
            memory("elsewhere", "gong_data"),
        ]
    )
    await store.touch({"recently-read": 1}, now - timedelta(days=10))
    await store.touch({"read-long-ago": 1}, now - timedelta(days=95))
    backend.clock.now = now - timedelta(days=30)
    await store.insert([memory("young")])  # created 30 days ago, never accessed

    assert await store.prune_candidates("slack_data", SEED_RULE, now) == ["read-long-ago", "stale"]
    assert await store.prune_candidates(None, SEED_RULE, now) == ["elsewhere", "read-long-ago", "stale"]
    strict = PruneRule(idle_days=90, min_importance=1.0, min_access_count=10)
    assert "important" in await store.prune_candidates("slack_data", strict, now)


async def test_archive_older_than(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert([memory("old"), memory("old-other-ns", "gong_data")])
    backend.clock.advance(days=400)
    await store.insert([memory("new")])
    cutoff = backend.clock.now - timedelta(days=365)

    assert await store.archive_older_than("slack_data", cutoff, dry_run=True) == 1
    assert (await store.get("old")).processing_status == "active"  # type: ignore[union-attr]
    assert await store.archive_older_than("slack_data", cutoff) == 1
    old = await store.get("old")
    assert old is not None and old.processing_status == "archived"
    assert (old.row_version, old.last_updated) == (2, START)  # retention still counts from START
    assert await store.archive_older_than("slack_data", cutoff) == 0  # already archived
    assert (await store.get("old-other-ns")).processing_status == "active"  # type: ignore[union-attr]


async def test_archiving_is_in_the_change_log(backend: Backend, store: SQLMemoryStore) -> None:
    """The other processes sharing the store (workers, replicas) learn of a change from the log:
    an archived memory must leave their cached searches as a PATCH to ``archived`` does."""
    await store.insert([memory("old"), memory("older"), memory("elsewhere", "gong_data")])
    seen = await store.last_change()
    backend.clock.advance(days=400)
    cutoff = backend.clock.now - timedelta(days=365)
    assert await store.archive_older_than("slack_data", cutoff, dry_run=True) == 2
    assert await store.changes_after(seen, 10) == []  # a dry run changes nothing
    assert await store.archive_older_than("slack_data", cutoff) == 2
    changes = await store.changes_after(seen, 10)
    assert sorted((i, ns, deleted) for _, i, ns, _, deleted in changes) == [
        ("old", "slack_data", False),
        ("older", "slack_data", False),
    ]


async def test_delete_older_than(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert([memory("b-old"), memory("a-old"), memory("other", "gong_data")])
    backend.clock.advance(days=40)
    await store.insert([memory("fresh")])
    cutoff = backend.clock.now - timedelta(days=30)

    assert await store.delete_older_than("slack_data", cutoff, dry_run=True) == ["a-old", "b-old"]
    assert await store.count("slack_data") == 3
    assert await store.delete_older_than("slack_data", cutoff) == ["a-old", "b-old"]
    assert await store.count("slack_data") == 1
    assert await store.count("gong_data") == 1


async def test_delete_below_confidence(backend: Backend, store: SQLMemoryStore) -> None:
    await store.insert(
        [
            memory("sure", "ai_web_research", confidence_score=0.95),
            memory("unsure", "ai_web_research", confidence_score=0.5),
            memory("unsure-elsewhere", confidence_score=0.1),
        ]
    )
    assert await store.delete_below_confidence("ai_web_research", 0.9, dry_run=True) == ["unsure"]
    assert await store.count() == 3
    assert await store.delete_below_confidence("ai_web_research", 0.9) == ["unsure"]
    assert await store.count("ai_web_research") == 1
    assert await store.count("slack_data") == 1


async def test_count_and_namespaces(backend: Backend, store: SQLMemoryStore) -> None:
    assert (await store.count(), await store.namespaces()) == (0, [])
    await store.insert([memory("a"), memory("b", "gong_data"), memory("c", "gong_data")])
    assert await store.count() == 3
    assert await store.count("gong_data") == 2
    assert await store.count("unknown") == 0
    assert await store.namespaces() == ["gong_data", "slack_data"]


async def test_migrations_are_idempotent(backend: Backend) -> None:
    first = await backend.open()
    await first.start()  # a second start on the same store does nothing
    await first.insert([memory("a")])
    await first.close()

    second = await backend.open()  # migrations run again on the existing table
    assert await second.get("a") is not None
    await second.insert([memory("b")])
    assert await second.count() == 2


OLD_TABLE = {
    "sqlite": "CREATE TABLE memories (id TEXT NOT NULL PRIMARY KEY, namespace TEXT NOT NULL, "
    "content TEXT NOT NULL, embedding BLOB, metadata TEXT, created_at TEXT)",
    "snowflake": "CREATE TABLE MEMORIES (id VARCHAR NOT NULL PRIMARY KEY, namespace VARCHAR NOT NULL, "
    "content VARCHAR NOT NULL, embedding BINARY, metadata VARCHAR, created_at TIMESTAMP_NTZ)",
}
OLD_ROW = "INSERT INTO memories (id, namespace, content, metadata, created_at) VALUES ('old', 'slack_data', 'hi', '{}', '2024-06-01 00:00:00.000000')"


def create_old_table(backend: Backend) -> None:
    """An "old" table without the seed's metadata columns, holding one row."""
    if backend.name == "sqlite":
        backend.tmp_path.joinpath("data").mkdir()
        with sqlite3.connect(backend.sqlite_path) as conn:
            conn.execute(OLD_TABLE["sqlite"])
            conn.execute(OLD_ROW)
        return
    sf = snowflake.connector.connect(**SNOWFLAKE_ARGS)
    try:
        cur = sf.cursor()
        cur.execute(OLD_TABLE["snowflake"])
        cur.execute(OLD_ROW)
    finally:
        sf.close()


def columns(backend: Backend) -> set[str]:
    if backend.name == "sqlite":
        with sqlite3.connect(backend.sqlite_path) as conn:
            return {row[1].lower() for row in conn.execute("PRAGMA table_info(memories)")}
    sf = snowflake.connector.connect(**SNOWFLAKE_ARGS)
    try:
        cur = sf.cursor()
        cur.execute("SELECT * FROM MEMORIES LIMIT 0")
        return {str(d[0]).lower() for d in cur.description}
    finally:
        sf.close()


async def test_migration_adds_missing_columns(backend: Backend) -> None:
    create_old_table(backend)
    assert "row_version" not in columns(backend)

    store = await backend.open()
    assert {
        "last_updated",
        "confidence_score",
        "data_source",
        "processing_status",
        "row_version",
        "importance_score",
        "access_count",
        "last_accessed",
        "owner",
    } <= columns(backend)
    old = await store.get("old")
    assert old is not None
    # Existing rows get the columns' defaults.
    assert (old.confidence_score, old.processing_status, old.row_version, old.access_count) == (
        1.0,
        "active",
        1,
        0,
    )
    assert (old.importance_score, old.last_updated, old.embedding) == (0.5, None, None)
    assert old.owner is None  # ownerless: seen in open mode or with an explicit grant (issue 11)
    assert old.created_at is not None and old.created_at.year == 2024
    await store.insert([memory("new")])
    updated = await store.update("old", MemoryPatch(content="hello"))
    assert updated is not None and updated.row_version == 2

    await store.close()
    await backend.open()  # and a second start finds nothing to add


async def test_observe_hook_sees_each_operation(backend: Backend) -> None:
    seen: list[tuple[str, float]] = []
    store = await backend.open(observe=lambda name, seconds: seen.append((name, seconds)))
    await store.insert([memory("a")])
    await store.get("a")
    assert [name for name, _ in seen] == ["insert", "get_many"]
    assert all(seconds >= 0 for _, seconds in seen)
