"""Two memory services sharing one store, as the workers of ``serve --workers N`` do: each
applies the other's writes (the store's change log) before a search. Both backends; SQLite on
one file, Snowflake on fakesnow. ``tests/e2e/test_workers.py`` does the same with real workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.memory.index import HnswIndex
from gateway.memory.records import MemoryFilter, MemoryPatch
from gateway.memory.service import MemoryService, NewMemory
from gateway.policy.model import MemoryConfig
from tests.integration.memory.conftest import Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DIM = 8
ALL = MemoryFilter(namespaces=["facts"])


def vector(i: int) -> tuple[float, ...]:
    return tuple(1.0 if d == i else 0.1 for d in range(DIM))


async def no_embedder(model: str, texts: Sequence[str]) -> list[list[float]]:
    raise AssertionError("vectors are given")


def open_service(
    backend: Backend,
    index_dir: Path,
    *,
    owner: bool,
    flush_every_s: float = 3600,
    follow_when_idle: bool = False,
    index: HnswIndex | None = None,
) -> MemoryService:
    """A service following the store's change log, as each worker's does."""
    return MemoryService(
        MemoryConfig(index_dir=str(index_dir)),
        backend.make(),
        HnswIndex(index_dir) if index is None else index,
        no_embedder,
        flush_every_s=flush_every_s,
        follow_changes=True,
        follow_when_idle=follow_when_idle,
        owns_index_files=owner,
    )


@pytest.fixture
async def pair(backend: Backend, tmp_path: Path) -> AsyncIterator[tuple[MemoryService, MemoryService]]:
    opened = []
    for n, owner in enumerate((True, False)):
        service = open_service(backend, tmp_path / f"index-{n}", owner=owner)
        await service.start()
        opened.append(service)
    yield opened[0], opened[1]
    for service in opened:
        await service.close()


async def ids(service: MemoryService, i: int) -> list[str]:
    return [h.memory.id for h in await service.search(None, vector(i), 3, ALL)]


async def test_writes_through_one_service_are_searched_through_the_other(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    a, b = pair
    assert await ids(b, 1) == []  # cached empty answer: the write below must drop it
    await a.add(
        [NewMemory("facts", "one", vector(1), id="m1"), NewMemory("facts", "two", vector(2), id="m2")]
    )
    assert (await ids(b, 1))[0] == "m1"
    await b.add([NewMemory("facts", "three", vector(3), id="m3")])
    assert (await ids(a, 3))[0] == "m3"
    await a.delete(["m1"])
    assert "m1" not in await ids(b, 1)
    assert len(a.index) == len(b.index) == 2


async def test_a_trimmed_change_log_rebuilds_the_index_of_a_service_left_behind(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    a, b = pair
    for n in range(4):
        await a.add([NewMemory("facts", f"fact {n}", vector(n), id=f"t{n}")])
    await a.store.trim_changes(1)  # b has applied none of the four
    assert (await ids(b, 2))[0] == "t2"
    assert len(b.index) == 4


async def test_a_service_that_gets_no_searches_still_follows_the_others_writes(
    backend: Backend, tmp_path: Path
) -> None:
    writer = open_service(backend, tmp_path / "a", owner=True)
    idle = open_service(backend, tmp_path / "b", owner=False, flush_every_s=0.05, follow_when_idle=True)
    await writer.start()
    await idle.start()
    try:
        await writer.add(
            [NewMemory("facts", "one", vector(1), id="m1"), NewMemory("facts", "two", vector(2), id="m2")]
        )
        await writer.delete(["m1"])
        deadline = time.monotonic() + 10
        # One vector, and it is m2: {m1} alone (the first add applied, the rest not yet) also
        # holds one, so the count alone would pass half-way through the log.
        while not (
            idle.figures()["index_vectors"] == 1  # what the worker's gauge exports
            and [hit[0] for hit in idle.index.search("facts", vector(2), 2)] == ["m2"]
        ):
            assert time.monotonic() < deadline, "the idle service never applied the change log"
            await asyncio.sleep(0.02)
    finally:
        await idle.close()
        await writer.close()


async def test_the_owner_saves_the_others_writes_it_never_searched_for(
    backend: Backend, tmp_path: Path
) -> None:
    """An add and a delete through another worker leave the count alone: files saved without
    them would be loaded at the next start as if they were current."""
    owner = open_service(backend, tmp_path / "a", owner=True)
    other = open_service(backend, tmp_path / "b", owner=False)
    await owner.start()
    await other.start()
    await other.add([NewMemory("facts", "old", vector(1), id="old")])
    assert await ids(owner, 1) == ["old"]
    await other.add([NewMemory("facts", "new", vector(2), id="new")])
    await other.delete(["old"])
    await other.close()
    await owner.close()  # no search since: it saves the index files

    again = open_service(backend, tmp_path / "a", owner=True)
    await again.start()
    try:
        assert await ids(again, 2) == ["new"]
        assert len(again.index) == 1
    finally:
        await again.close()


class CountingIndex(HnswIndex):
    """The real index, counting the vectors added to it."""

    added = 0

    def add(self, namespace: str, items: Sequence[tuple[str, Sequence[float]]]) -> None:
        self.added += len(items)
        super().add(namespace, items)


async def test_a_service_adds_its_own_writes_once_and_the_others_versions_of_them_again(
    backend: Backend, tmp_path: Path
) -> None:
    """Adding costs ~1 ms a vector: the change log bringing back what this service wrote and
    indexed must not add it a second time, but a later version written elsewhere must be."""
    index = CountingIndex(tmp_path / "a")
    writer = open_service(backend, tmp_path / "a", owner=True, index=index)
    other = open_service(backend, tmp_path / "b", owner=False)
    await writer.start()
    await other.start()
    try:
        await writer.add([NewMemory("facts", f"fact {n}", vector(n), id=f"f{n}") for n in range(3)])
        await writer.update("f0", MemoryPatch(embedding=vector(5)))
        assert index.added == 4
        await writer.catch_up()
        assert index.added == 4  # its own three adds and one update, not again
        await other.update("f1", MemoryPatch(embedding=vector(6)))
        assert (await ids(writer, 6))[0] == "f1"  # the search catches up: the other's version added
        assert index.added == 5
        assert (await ids(writer, 5))[0] == "f0"
    finally:
        await other.close()
        await writer.close()


async def test_a_memory_deleted_and_made_again_by_another_service_is_indexed_as_made_again(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    """Row versions start again at 1 when an id is deleted and written anew: the version this
    service wrote must not pass for the other's new row (it kept its own, stale, vector)."""
    a, b = pair
    await a.add([NewMemory("facts", "first", vector(1), id="m1")])
    await b.delete(["m1"])
    await b.add([NewMemory("facts", "second", vector(2), id="m1")])  # row_version 1 again
    [hit] = await a.search(None, vector(2), 1, ALL)
    assert hit.memory.id == "m1" and hit.memory.content == "second"
    assert hit.score > 0.99  # the index holds the new vector, not the one a wrote


async def test_a_memory_deleted_here_and_made_again_elsewhere_is_searchable_here(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    a, b = pair
    await a.add([NewMemory("facts", "first", vector(1), id="m1")])
    await a.delete(["m1"])
    await b.add([NewMemory("facts", "again", vector(1), id="m1")])
    assert await ids(a, 1) == ["m1"]
    assert len(a.index) == 1


async def test_a_memory_made_again_in_another_namespace_leaves_the_old_one(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    """Deleted and written again in one stretch of the change log: the old namespace's copy goes
    (its searches must not find a memory of another namespace), the new namespace gets it."""
    a, b = pair
    await a.add([NewMemory("facts", "first", vector(1), id="m1")])
    await b.delete(["m1"])
    await b.add([NewMemory("other", "moved", vector(1), id="m1")])
    assert await ids(a, 1) == []  # ALL is the namespace "facts"
    moved = await a.search(None, vector(1), 3, MemoryFilter(namespaces=["other"]))
    assert [h.memory.id for h in moved] == ["m1"]
    assert len(a.index) == 1


async def test_memories_archived_by_one_service_leave_the_others_cached_searches(
    pair: tuple[MemoryService, MemoryService], backend: Backend
) -> None:
    """Worker 0 runs the lifecycle: archiving goes through the change log, so another worker's
    cached searches of the namespace are dropped as they are for a write."""
    a, b = pair
    await a.add([NewMemory("facts", "old", vector(1), id="old")])
    assert await ids(b, 1) == ["old"]  # cached by b
    assert await a.store.archive_older_than("facts", backend.clock.now + timedelta(days=1)) == 1
    await b.catch_up()
    assert b.drop_search_cache() == 0  # the log's change dropped b's entry
    assert await ids(b, 1) == []
