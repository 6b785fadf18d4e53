"""Memory-augmented chat (``augment.augment``) over a real MemoryService: SQLite on a temporary
file and a real HnswIndex. The memories a chat gets are bounded in size, whatever their number
and length: ``MAX_CONTEXT_CHARS`` of memory text in all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.memory.augment import CLOSE, MAX_CONTEXT_CHARS, OPEN, augment
from gateway.memory.index import HnswIndex
from gateway.memory.service import MemoryService, NewMemory
from gateway.memory.sqlite_store import SQLiteMemoryStore
from gateway.policy.model import MemoryConfig, Retention

DIM = 4
QUESTION = "what do the notes say"


async def embed(model: str, texts: Sequence[str]) -> list[list[float]]:
    """Every text at one point: the order of the hits is the index's, all are found."""
    return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[MemoryService]:
    config = MemoryConfig(
        index_dir=str(tmp_path / "index"),
        embedding_model="emb",
        namespaces={"handbook": Retention(trusted=True)},
    )
    memory = MemoryService(
        config, SQLiteMemoryStore(str(tmp_path / "memory.sqlite3")), HnswIndex(tmp_path / "index"), embed
    )
    await memory.start()
    yield memory
    await memory.close()


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
