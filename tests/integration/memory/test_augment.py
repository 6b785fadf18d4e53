"""Memory-augmented chat (``augment.augment``) over a real MemoryService: SQLite on a temporary
file and a real HnswIndex. The memories a chat gets are bounded in size, whatever their number
and length: ``memory.augment_max_chars`` of memory text in all; only those sent count as
accessed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.memory.augment import CLOSE, OPEN, augment
from gateway.memory.index import HnswIndex
from gateway.memory.records import MemoryFilter
from gateway.memory.service import MemoryService, NewMemory
from gateway.memory.sqlite_store import SQLiteMemoryStore
from gateway.policy.model import MemoryConfig, Retention

DIM = 4
QUESTION = "what do the notes say"
MAX_CONTEXT_CHARS = MemoryConfig().augment_max_chars  # the default, 32,000


async def embed(model: str, texts: Sequence[str]) -> list[list[float]]:
    """Every text at one point: the order of the hits is the index's, all are found."""
    return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


async def open_service(tmp_path: Path, **config: Any) -> AsyncIterator[MemoryService]:
    memory = MemoryService(
        MemoryConfig(
            index_dir=str(tmp_path / "index"),
            embedding_model="emb",
            namespaces={"handbook": Retention(trusted=True)},
            **config,
        ),
        SQLiteMemoryStore(str(tmp_path / "memory.sqlite3")),
        HnswIndex(tmp_path / "index"),
        embed,
    )
    await memory.start()
    try:
        yield memory
    finally:
        await memory.close()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[MemoryService]:
    async for memory in open_service(tmp_path):
        yield memory


def chat(*namespaces: str, top_k: int = 50) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": QUESTION}],
        "memory": {"namespaces": list(namespaces), "top_k": top_k},
    }


def memory_lines(content: str) -> list[str]:
    lines = content.splitlines()
    return lines[lines.index(OPEN) + 1 : lines.index(CLOSE)] if OPEN in lines else lines[1:]


async def test_the_memories_a_chat_gets_are_capped_in_total(service: MemoryService) -> None:
    size = MAX_CONTEXT_CHARS // 4 + 1  # four fit only just not
    await service.add(
        [
            NewMemory("notes", chr(ord("a") + n) * size, (1.0, 0.0, 0.0, float(n) / 100), id=f"n{n}")
            for n in range(20)
        ]
    )
    body, ids = await augment(service, chat("notes"), {})
    [block] = [m["content"] for m in body["messages"] if OPEN in m["content"]]
    lines = memory_lines(block)
    texts = [line.split("] ", 1)[1] for line in lines]
    assert sum(len(t) for t in texts) <= MAX_CONTEXT_CHARS
    assert len(ids) == len(lines) == 4  # three whole, the fourth cut; the sixteen others left out
    assert [len(t) for t in texts[:3]] == [size] * 3
    assert texts[3].endswith(" […]") and len(texts[3]) < size
    assert [line.split("]", 1)[0][1:] for line in lines] == ids  # the header names only those sent


async def test_one_memory_longer_than_the_cap_is_cut_to_it(service: MemoryService) -> None:
    await service.add([NewMemory("notes", "x" * (10 * MAX_CONTEXT_CHARS), (1.0, 0.0, 0.0, 0.0), id="long")])
    body, ids = await augment(service, chat("notes"), {})
    [line] = memory_lines(next(m["content"] for m in body["messages"] if OPEN in m["content"]))
    assert ids == ["long"] and len(line.split("] ", 1)[1]) == MAX_CONTEXT_CHARS


async def test_trusted_and_reference_memories_share_the_cap(service: MemoryService) -> None:
    size = MAX_CONTEXT_CHARS // 2
    await service.add(
        [
            NewMemory("handbook", "h" * size, (1.0, 0.0, 0.0, 0.0), id="rule"),
            NewMemory("notes", "n" * size, (1.0, 0.0, 0.0, 0.01), id="note"),
            NewMemory("notes", "o" * size, (1.0, 0.0, 0.0, 0.02), id="other"),
        ]
    )
    body, ids = await augment(service, chat("handbook", "notes"), {})
    total = sum(
        len(line.split("] ", 1)[1]) for m in body["messages"][:-1] for line in memory_lines(m["content"])
    )
    assert total <= MAX_CONTEXT_CHARS and len(ids) == 2


async def test_the_bound_is_the_policys_augment_max_chars(tmp_path: Path) -> None:
    async for service in open_service(tmp_path, augment_max_chars=1000):
        await service.add(
            [NewMemory("notes", f"{n}" * 400, (1.0, 0.0, 0.0, float(n) / 100), id=f"n{n}") for n in range(5)]
        )
        body, ids = await augment(service, chat("notes"), {})
        block = next(m["content"] for m in body["messages"] if OPEN in m["content"])
        texts = [line.split("] ", 1)[1] for line in memory_lines(block)]
        assert ids == ["n0", "n1", "n2"]  # two whole (800), the third cut to the 200 left
        assert [len(t) for t in texts] == [400, 400, 200] and texts[2].endswith(" […]")
    with pytest.raises(ValidationError, match="augment_max_chars"):
        MemoryConfig(augment_max_chars=0)


async def test_only_the_memories_sent_count_as_accessed(tmp_path: Path) -> None:
    """Twenty memories found, three sent (the bound): those three get an access (pruning reads
    access_count and last_accessed); the seventeen left out do not."""
    async for service in open_service(tmp_path, augment_max_chars=1000):
        await service.add(
            [NewMemory("notes", "m" * 400, (1.0, 0.0, 0.0, float(n) / 100), id=f"n{n:02}") for n in range(20)]
        )
        _body, ids = await augment(service, chat("notes", top_k=20), {})
        await service.flush_access()
        stored = {m.id: m for m in await service.store.get_many([f"n{n:02}" for n in range(20)])}
        assert len(ids) == 3 and len(stored) == 20
        assert {i for i, m in stored.items() if m.access_count} == set(ids)
        assert all(stored[i].access_count == 1 and stored[i].last_accessed is not None for i in ids)
        assert all(m.last_accessed is None for i, m in stored.items() if i not in ids)

        # A search through the API still counts every hit it answers with.
        await service.search(QUESTION, None, 5, MemoryFilter(namespaces=["notes"]))
        await service.flush_access()
        stored = {m.id: m for m in await service.store.get_many([f"n{n:02}" for n in range(20)])}
        assert sum(m.access_count for m in stored.values()) == 3 + 5
