"""Two memory services sharing one store, as the workers of ``serve --workers N`` do: each
applies the other's writes (the store's change log) before a search. Both backends; SQLite on
one file, Snowflake on fakesnow. ``tests/e2e/test_workers.py`` does the same with real workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.memory.index import HnswIndex
from gateway.memory.records import MemoryFilter
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


@pytest.fixture
async def pair(backend: Backend, tmp_path: Path) -> AsyncIterator[tuple[MemoryService, MemoryService]]:
    opened = []
    for n, owner in enumerate((True, False)):
        index_dir = tmp_path / f"index-{n}"
        service = MemoryService(
            MemoryConfig(index_dir=str(index_dir)),
            backend.make(),
            HnswIndex(index_dir),
            no_embedder,
            flush_every_s=3600,
            follow_changes=True,
            owns_index_files=owner,
        )
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
