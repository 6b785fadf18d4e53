"""MemoryService over both stores (``backend``: SQLite on a file, Snowflake on fakesnow) with a
real ``HnswIndex`` on disk: writes, filtered and merged searches, the search cache, batched
access counts, the index across restarts, and retention / pruning (``apply_lifecycle``).

Vectors are given explicitly, so no embedder is needed, except in the one test that injects a
small deterministic embedder (the service's ``TextEmbedder`` boundary).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest, NotFound, StartupError
from gateway.memory.index import HnswIndex
from gateway.memory.lifecycle import apply_lifecycle
from gateway.memory.records import Memory, MemoryFilter, MemoryPatch, MemoryStore
from gateway.memory.service import MemoryService, NewMemory
from gateway.policy.model import MemoryConfig, Pruning, Retention
from tests.integration.memory.conftest import START, Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DIM = 16
ANY = MemoryFilter(processing_status=None)  # every status, every namespace
QUIET_S = 3600.0  # a flush interval no test waits out: only flush_access() and close() write counts


def basis(i: int) -> tuple[float, ...]:
    return tuple(1.0 if d == i else 0.0 for d in range(DIM))


def toward_e0(similarity: float, other: int) -> tuple[float, ...]:
    """A unit vector whose cosine similarity with ``basis(0)`` is ``similarity``."""
    rest = math.sqrt(1.0 - similarity * similarity)
    return tuple(similarity if d == 0 else rest if d == other else 0.0 for d in range(DIM))


async def no_embedder(model: str, texts: Sequence[str]) -> list[list[float]]:
    raise AssertionError(f"this test gives vectors; nothing should be embedded ({model}, {texts})")


class CountingService(MemoryService):
    """Counts index rebuilds, so a test can tell a loaded index from a rebuilt one."""

    rebuilds = 0

    async def rebuild_index(self) -> int:
        self.rebuilds += 1
        return await super().rebuild_index()


class ObservedTouchStore:
    """The backend's store behind the ``MemoryStore`` Protocol, with ``touch`` observed: each
    batch of access counts is recorded, and while ``failing`` it raises as a store outage would.
    Every other call goes straight to the real store."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.touched: list[dict[str, int]] = []
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def touch(self, counts: Mapping[str, int], at: datetime) -> None:
        if self.failing:
            raise OSError("store down")
        self.touched.append(dict(counts))
        await self.inner.touch(counts, at)


@dataclass
class MonotonicClock:
    """The service's clock for the search cache's TTL (seconds), moved by hand."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Services:
    """Opens MemoryServices on the test's backend; each is closed after the test."""

    backend: Backend
    tmp_path: Path
    opened: list[MemoryService] = field(default_factory=list)

    @property
    def index_dir(self) -> Path:
        return self.tmp_path / "index"

    async def open(
        self,
        config: MemoryConfig | None = None,
        *,
        embed: Callable[[str, Sequence[str]], Any] = no_embedder,
        index: HnswIndex | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: MemoryStore | None = None,
        flush_every_s: float = QUIET_S,
    ) -> CountingService:
        """A started service, on a new store of the backend unless given one (a test double)."""
        service = CountingService(
            config or MemoryConfig(index_dir=str(self.index_dir)),
            store or self.backend.make(),
            HnswIndex(self.index_dir) if index is None else index,
            embed,
            clock,
            flush_every_s=flush_every_s,
        )
        self.opened.append(service)
        await service.start()
        return service


@pytest.fixture
async def services(backend: Backend, tmp_path: Path) -> AsyncIterator[Services]:
    s = Services(backend, tmp_path)
    yield s
    for service in s.opened:  # closing twice is harmless: the test may have closed it already
        await service.close()


@pytest.fixture
async def service(services: Services) -> MemoryService:
    return await services.open()


def ids(hits: Sequence[Any]) -> list[str]:
    return [h.memory.id for h in hits]


# ----- writes


async def test_add_one_and_a_batch_then_get(service: MemoryService) -> None:
    [one] = await service.add([NewMemory("slack_data", "the deploy is on Friday", basis(1), id="one")])
    assert (one.id, one.namespace, one.content, one.embedding) == (
        "one",
        "slack_data",
        "the deploy is on Friday",
        basis(1),
    )
    assert (one.row_version, one.processing_status, one.access_count) == (1, "active", 0)
    assert one.created_at is not None and one.created_at == one.last_updated  # read back from the store

    batch = await service.add(
        [
            NewMemory(
                "gong_data",
                "customer asked for SSO",
                basis(2),
                metadata={"call": 7},
                data_source="gong",
                confidence_score=0.8,
                importance_score=0.9,
            ),
            NewMemory("gong_data", "renewal in March", basis(3)),
            NewMemory("ai_web_research", "competitor raised prices", basis(4)),
        ]
    )
    assert len(batch) == 3 and len({m.id for m in batch}) == 3  # ids generated, all different
    got = await service.get(batch[0].id)
    assert (got.content, got.metadata, got.data_source) == ("customer asked for SSO", {"call": 7}, "gong")
    assert (got.confidence_score, got.importance_score, got.embedding) == (0.8, 0.9, basis(2))
    assert len(service.index) == 4
    assert service.index.namespaces() == ["ai_web_research", "gong_data", "slack_data"]
    assert ids(await service.search(None, basis(3), 1, ANY)) == [batch[1].id]

    with pytest.raises(NotFound) as missing:
        await service.get("nope")
    assert missing.value.code == "memory_not_found"


async def test_a_refused_batch_leaves_store_and_index_unchanged(service: MemoryService) -> None:
    await service.add([NewMemory("slack_data", "first", basis(1), id="a")])
    with pytest.raises(InvalidRequest) as exc:
        await service.add(
            [NewMemory("slack_data", "new", basis(2), id="b"), NewMemory("x", "dup", basis(3), id="a")]
        )
    assert exc.value.code == "memory_exists"
    assert len(service.index) == 1 and await service.store.count() == 1
    assert ids(await service.search(None, basis(1), 5, ANY)) == ["a"]  # "a" kept its vector


async def test_no_vector_and_no_embedding_model_is_refused(service: MemoryService) -> None:
    with pytest.raises(InvalidRequest) as add:
        await service.add([NewMemory("slack_data", "no vector")])
    assert add.value.param == "embedding"
    with pytest.raises(InvalidRequest) as search:
        await service.search("a question", None, 5, MemoryFilter())
    assert search.value.param == "embedding"
    with pytest.raises(InvalidRequest) as neither:
        await service.search(None, None, 5, MemoryFilter())
    assert neither.value.param == "query"
    assert await service.store.count() == 0


async def test_update_bumps_row_version_and_reindexes_a_new_embedding(service: MemoryService) -> None:
    await service.add([NewMemory("slack_data", "old text", basis(1), id="m")])
    await service.add([NewMemory("slack_data", "neighbour", basis(2), id="n")])

    updated = await service.update("m", MemoryPatch(importance_score=0.9, metadata={"k": "v"}))
    assert (updated.row_version, updated.importance_score, updated.metadata) == (2, 0.9, {"k": "v"})
    assert updated.embedding == basis(1) and updated.content == "old text"

    moved = await service.update("m", MemoryPatch(content="new text", embedding=basis(5)))
    assert (moved.row_version, moved.content, moved.embedding) == (3, "new text", basis(5))
    assert (await service.get("m")).row_version == 3
    [top] = await service.search(None, basis(5), 1, ANY)
    assert top.memory.id == "m" and top.score == pytest.approx(1.0, abs=1e-4)
    # Nothing is left at the old vector: the upsert replaced it, not just outranked it.
    assert all(h.score < 0.5 for h in await service.search(None, basis(1), 5, ANY))
    assert len(service.index) == 2

    with pytest.raises(NotFound):
        await service.update("nope", MemoryPatch(importance_score=0.1))


async def test_delete_removes_from_store_and_search(service: MemoryService) -> None:
    await service.add([NewMemory("slack_data", f"fact {i}", basis(i), id=f"m{i}") for i in range(1, 4)])
    assert ids(await service.search(None, basis(2), 1, ANY)) == ["m2"]

    assert await service.delete(["m2"]) == 1
    with pytest.raises(NotFound):
        await service.get("m2")
    assert "m2" not in ids(await service.search(None, basis(2), 10, ANY))
    assert len(service.index) == 2
    assert await service.delete(["m2", "never"]) == 0


# ----- search


async def test_search_filters(service: MemoryService) -> None:
    await service.add(
        [
            NewMemory("slack_data", "slack high", toward_e0(0.99, 1), id="s-hi", data_source="slack"),
            NewMemory(
                "slack_data",
                "slack low",
                toward_e0(0.98, 2),
                id="s-lo",
                data_source="slack",
                confidence_score=0.3,
            ),
            NewMemory("slack_data", "from a bot", toward_e0(0.97, 3), id="s-bot", data_source="bot"),
            NewMemory("gong_data", "gong", toward_e0(0.96, 4), id="g", data_source="gong"),
            NewMemory("gong_data", "gong archived", toward_e0(0.995, 5), id="g-arch"),
        ]
    )
    await service.update("g-arch", MemoryPatch(processing_status="archived"))
    q = basis(0)

    # Default filter: active only, every namespace, best first.
    assert ids(await service.search(None, q, 10, MemoryFilter())) == ["s-hi", "s-lo", "s-bot", "g"]
    assert ids(await service.search(None, q, 10, MemoryFilter(namespaces=["gong_data"]))) == ["g"]
    assert ids(await service.search(None, q, 10, MemoryFilter(data_source="slack"))) == ["s-hi", "s-lo"]
    assert ids(await service.search(None, q, 10, MemoryFilter(min_confidence=0.5))) == ["s-hi", "s-bot", "g"]
    assert ids(
        await service.search(None, q, 10, MemoryFilter(namespaces=["slack_data"], data_source="bot"))
    ) == ["s-bot"]
    assert ids(await service.search(None, q, 10, MemoryFilter(processing_status="archived"))) == ["g-arch"]
    assert ids(await service.search(None, q, 10, ANY)) == ["g-arch", "s-hi", "s-lo", "s-bot", "g"]
    # Filters still leave top_k when the best matches are filtered out.
    assert ids(await service.search(None, q, 2, MemoryFilter(min_confidence=0.5))) == ["s-hi", "s-bot"]
    assert await service.search(None, q, 10, MemoryFilter(namespaces=["unknown"])) == []

    with pytest.raises(InvalidRequest) as wrong:
        await service.search(None, (1.0, 0.0), 5, MemoryFilter())
    assert wrong.value.param == "vector"


async def test_a_filter_most_near_neighbours_fail_still_finds_the_ones_that_pass(
    service: MemoryService,
) -> None:
    """Candidates are fetched again, four times as many, while the filter leaves fewer than
    top_k: a rare data_source behind 50 nearer memories, an active memory behind 12 archived ones
    (the default filter), are found at top_k 1 (before, only at top_k 13 and 4)."""
    near = [
        NewMemory(
            "docs", f"bulk {n}", toward_e0(0.99 - n * 0.001, 1 + n % 14), id=f"bulk-{n}", data_source="bulk"
        )
        for n in range(50)
    ]
    await service.add([*near, NewMemory("docs", "rare", toward_e0(0.7, 15), id="rare", data_source="rare")])
    q = basis(0)
    assert ids(await service.search(None, q, 1, MemoryFilter(data_source="rare"))) == ["rare"]
    assert ids(await service.search(None, q, 3, MemoryFilter(data_source="nowhere"))) == []
    archived = [NewMemory("old", f"archived {n}", toward_e0(0.95, 1 + n), id=f"arch-{n}") for n in range(12)]
    await service.add([*archived, NewMemory("old", "active", toward_e0(0.5, 14), id="active")])
    for n in range(12):
        await service.update(f"arch-{n}", MemoryPatch(processing_status="archived"))
    assert ids(await service.search(None, q, 1, MemoryFilter(namespaces=["old"]))) == ["active"]
    assert (
        len(await service.search(None, q, 3, MemoryFilter(namespaces=["old"], processing_status=None))) == 3
    )


async def test_namespaces_are_merged_by_score_and_top_k_is_kept(service: MemoryService) -> None:
    # Three namespaces whose scores against basis(0) interleave: a .99, b .97, c .95, a .90, ...
    layout = {
        "ns_a": [0.99, 0.90, 0.60],
        "ns_b": [0.97, 0.85, 0.70],
        "ns_c": [0.95, 0.80, 0.75],
    }
    expected: list[tuple[float, str]] = []
    items = []
    for n, (namespace, scores) in enumerate(layout.items()):
        for k, score in enumerate(scores):
            mid = f"{namespace}-{score}"
            items.append(NewMemory(namespace, mid, toward_e0(score, 1 + 3 * n + k), id=mid))
            expected.append((score, mid))
    await service.add(items)
    ranked = [mid for _, mid in sorted(expected, reverse=True)]

    hits = await service.search(None, basis(0), 9, MemoryFilter())
    assert ids(hits) == ranked
    assert [h.score for h in hits] == pytest.approx(sorted((s for s, _ in expected), reverse=True), abs=1e-4)
    assert {h.memory.namespace for h in hits[:3]} == set(layout)  # interleaved, not one namespace first

    top4 = await service.search(None, basis(0), 4, MemoryFilter())
    assert ids(top4) == ranked[:4] == ["ns_a-0.99", "ns_b-0.97", "ns_c-0.95", "ns_a-0.9"]
    two = await service.search(None, basis(0), 3, MemoryFilter(namespaces=["ns_a", "ns_c"]))
    assert ids(two) == ["ns_a-0.99", "ns_c-0.95", "ns_a-0.9"]
    no_filter = await service.search(None, basis(0), 5, MemoryFilter(processing_status=None))
    assert ids(no_filter) == ranked[:5]  # the unfiltered path (no store round trip) merges the same way


class BarrierIndex(HnswIndex):
    """An index whose searches wait for each other at a barrier while ``barrier`` is set: they
    only get past it if the service runs them at the same time."""

    barrier: threading.Barrier | None = None

    def search(self, namespace: str, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        if self.barrier is not None:
            self.barrier.wait()  # BrokenBarrierError after its timeout if the searches were serial
        return super().search(namespace, vector, k)


async def test_namespaces_are_searched_in_parallel(services: Services) -> None:
    index = BarrierIndex(services.index_dir)
    service = await services.open(index=index)
    await service.add([NewMemory(ns, ns, basis(i + 1), id=ns) for i, ns in enumerate(["a", "b", "c"])])
    index.barrier = threading.Barrier(3, timeout=10)
    hits = await service.search(None, basis(2), 3, MemoryFilter(namespaces=["a", "b", "c"]))
    index.barrier = None
    assert ids(hits)[0] == "b" and sorted(ids(hits)) == ["a", "b", "c"]


async def test_search_cache_hits_and_is_invalidated_by_writes_to_its_namespaces(services: Services) -> None:
    clock = MonotonicClock()
    config = MemoryConfig(index_dir=str(services.index_dir), search_cache_ttl_s=60)
    service = await services.open(config, clock=clock)
    await service.add(
        [
            NewMemory("ns_a", "a", toward_e0(0.9, 1), id="a"),
            NewMemory("ns_b", "b", toward_e0(0.8, 2), id="b"),
            NewMemory("ns_other", "o", toward_e0(0.95, 3), id="o"),
        ]
    )
    where = MemoryFilter(namespaces=["ns_a", "ns_b"])

    def counters() -> tuple[int, int]:
        return service.cache_misses, service.cache_hits

    first = await service.search(None, basis(0), 5, where)
    assert counters() == (1, 0)
    again = await service.search(None, basis(0), 5, where)
    assert counters() == (1, 1)
    assert ids(first) == ids(again) == ["a", "b"]

    # A write to a namespace the search did not cover keeps the entry.
    await service.add([NewMemory("ns_other", "o2", toward_e0(0.99, 4), id="o2")])
    await service.update("o", MemoryPatch(importance_score=0.1))
    await service.delete(["o2"])
    await service.search(None, basis(0), 5, where)
    assert counters() == (1, 2)

    # A write to one of its namespaces drops it, and the next search sees the write.
    await service.add([NewMemory("ns_b", "b2", toward_e0(0.99, 5), id="b2")])
    assert ids(await service.search(None, basis(0), 5, where)) == ["b2", "a", "b"]
    assert counters() == (2, 2)
    await service.search(None, basis(0), 5, where)
    assert counters() == (2, 3)
    await service.update("a", MemoryPatch(embedding=toward_e0(0.5, 6)))
    assert ids(await service.search(None, basis(0), 5, where)) == ["b2", "b", "a"]
    assert counters() == (3, 3)
    await service.delete(["b2"])
    assert ids(await service.search(None, basis(0), 5, where)) == ["b", "a"]
    assert counters() == (4, 3)

    # Other queries, top_k or filters are other entries; entries expire after the TTL.
    await service.search(None, basis(0), 1, where)
    await service.search(None, basis(0), 5, MemoryFilter(namespaces=["ns_a", "ns_b"], min_confidence=0.5))
    assert counters() == (6, 3)
    clock.now += 61
    await service.search(None, basis(0), 5, where)
    assert counters() == (7, 3)


async def test_search_cache_off_with_ttl_zero(services: Services) -> None:
    service = await services.open(MemoryConfig(index_dir=str(services.index_dir), search_cache_ttl_s=0))
    await service.add([NewMemory("ns", "a", basis(1), id="a")])
    for _ in range(3):
        assert ids(await service.search(None, basis(1), 5, MemoryFilter())) == ["a"]
    assert (service.cache_misses, service.cache_hits) == (3, 0)


# ----- access counts


async def test_access_counts_are_written_in_batches_on_flush(services: Services) -> None:
    store = ObservedTouchStore(services.backend.make())
    service = await services.open(store=store)  # flush_every_s QUIET_S: flushes only when told
    await service.add([NewMemory("ns", "x", basis(1), id="x"), NewMemory("ns", "y", basis(2), id="y")])

    await service.search(None, basis(1), 1, MemoryFilter())  # x
    await service.search(None, basis(1), 1, MemoryFilter())  # x again (a cache hit counts too)
    await service.search(None, basis(2), 2, MemoryFilter())  # y then x
    assert store.touched == []
    before = {m.id: m for m in await service.store.get_many(["x", "y"])}
    assert [(before[i].access_count, before[i].last_accessed) for i in ("x", "y")] == [(0, None), (0, None)]

    started = datetime.now(UTC)
    await service.flush_access()
    assert store.touched == [{"x": 3, "y": 1}]  # one batch for everything pending
    after = {m.id: m for m in await service.store.get_many(["x", "y"])}
    assert (after["x"].access_count, after["y"].access_count) == (3, 1)
    for m in after.values():
        assert m.last_accessed is not None
        assert started - timedelta(seconds=1) <= m.last_accessed <= datetime.now(UTC) + timedelta(seconds=1)
    assert after["x"].row_version == 1  # an access is not an update

    await service.flush_access()  # nothing pending: no write
    assert len(store.touched) == 1


async def test_a_failed_flush_keeps_its_counts_for_the_next(services: Services) -> None:
    store = ObservedTouchStore(services.backend.make())
    service = await services.open(store=store)
    await service.add([NewMemory("ns", "x", basis(1), id="x")])

    await service.search(None, basis(1), 1, MemoryFilter())
    store.failing = True
    with pytest.raises(OSError):
        await service.flush_access()
    store.failing = False
    await service.search(None, basis(1), 1, MemoryFilter())
    await service.flush_access()
    assert (await service.get("x")).access_count == 2


async def test_access_counts_flush_in_the_background_and_on_close(services: Services) -> None:
    service = await services.open(flush_every_s=0.05)
    await service.add([NewMemory("ns", "x", basis(1), id="x")])
    await service.search(None, basis(1), 1, MemoryFilter())
    deadline = time.monotonic() + 10
    while (await service.get("x")).access_count != 1:
        assert time.monotonic() < deadline, "the background flush never wrote the access count"
        await asyncio.sleep(0.02)

    await service.close()

    quiet = await services.open()  # flush_every_s QUIET_S: only close() can write its count
    assert ids(await quiet.search(None, basis(1), 1, MemoryFilter())) == ["x"]
    assert (await quiet.get("x")).access_count == 1
    await quiet.close()
    reader = await services.backend.open()
    found = await reader.get("x")
    assert found is not None and found.access_count == 2


async def test_figures_include_the_pool_of_a_pooled_store(backend: Backend, services: Services) -> None:
    service = await services.open()
    await service.add([NewMemory("ns", "x", basis(1), id="x")])
    figures = service.figures()
    assert figures["index_vectors"] == 1
    if backend.name == "sqlite":  # one connection on one thread: no pool figures
        assert not [name for name in figures if name.startswith("pool_")]
    else:
        assert figures["pool_open"] >= 1 and figures["pool_acquisitions"] >= 1


# ----- the index across restarts


async def test_index_is_loaded_after_a_restart_not_rebuilt(services: Services) -> None:
    first = await services.open()
    assert first.rebuilds == 1  # nothing on disk yet: built (empty) from the store
    await first.add([NewMemory(f"ns{i % 2}", f"fact {i}", basis(i), id=f"m{i}") for i in range(1, 7)])
    await first.delete(["m6"])
    await first.close()

    second = await services.open()
    assert second.rebuilds == 0
    assert len(second.index) == 5 and second.index.namespaces() == ["ns0", "ns1"]
    for i in range(1, 6):
        [top] = await second.search(None, basis(i), 1, MemoryFilter())
        assert top.memory.id == f"m{i}" and top.score == pytest.approx(1.0, abs=1e-4)
    assert "m6" not in ids(await second.search(None, basis(6), 5, MemoryFilter()))


async def test_a_missing_or_corrupt_index_is_rebuilt_from_the_store(services: Services) -> None:
    first = await services.open()
    await first.add([NewMemory(f"ns{i % 3}", f"fact {i}", basis(i), id=f"m{i}") for i in range(1, 8)])
    await first.close()

    shutil.rmtree(services.index_dir)
    rebuilt = await services.open()
    assert rebuilt.rebuilds == 1 and len(rebuilt.index) == 7
    for i in range(1, 8):
        assert ids(await rebuilt.search(None, basis(i), 1, MemoryFilter())) == [f"m{i}"]
    assert (services.index_dir / "index.json").exists()  # the rebuild is saved straight away
    await rebuilt.close()

    graph = services.index_dir / "ns1.usearch"
    graph.write_bytes(graph.read_bytes()[:100])  # truncated
    again = await services.open()
    assert again.rebuilds == 1 and len(again.index) == 7
    assert ids(await again.search(None, basis(4), 1, MemoryFilter())) == ["m4"]


async def test_memories_written_before_a_crash_are_searchable_after_restart(services: Services) -> None:
    first = await services.open()
    await first.add([NewMemory("ns", "saved", basis(1), id="saved")])
    await first.close()
    crashed = await services.open()
    await crashed.add([NewMemory("ns", "unsaved", basis(2), id="unsaved")])
    await crashed.store.close()  # the process dies: close() (and its index save) never runs
    if crashed._files_lock is not None:
        os.close(crashed._files_lock)  # and the kernel drops its lock on the index directory
        crashed._files_lock = None

    after = await services.open()
    assert await after.store.count() == 2
    assert ids(await after.search(None, basis(2), 1, MemoryFilter())) == ["unsaved"]


async def test_memories_another_process_deleted_leave_the_index_and_their_places_are_filled(
    services: Services,
) -> None:
    """``memory prune`` beside a running gateway deletes rows the gateway's index still holds:
    a search that meets them drops them and searches again, so top_k stays full."""
    service = await services.open()
    await service.add(
        [NewMemory("ns", f"m{n}", toward_e0(0.9 - n / 10, n + 1), id=f"m{n}") for n in range(4)]
    )
    assert ids(await service.search(None, basis(0), 2, MemoryFilter())) == ["m0", "m1"]  # cached
    other = await services.backend.open()  # another process's connection to the store
    try:
        await other.delete(["m0", "m1"])
        assert ids(await service.search(None, basis(0), 2, MemoryFilter())) == ["m2", "m3"]
        await other.delete(["m2"])
        filtered = MemoryFilter(min_confidence=0.0)  # the path that reads rows to filter them
        assert ids(await service.search(None, basis(0), 2, filtered)) == ["m3"]
    finally:
        await other.close()
    assert len(service.index) == 1


def crash(service: MemoryService) -> None:
    """What the process's death leaves: no close() (so no index save), the lock dropped."""
    if service._flusher is not None:
        service._flusher.cancel()
    if service._files_lock is not None:
        os.close(service._files_lock)  # the kernel drops the lock on the index directory
        service._files_lock = None


async def test_an_update_and_a_delete_before_a_crash_are_not_undone_by_the_saved_index(
    services: Services,
) -> None:
    """The saved files hold the two memories; after them one moved, one went and one came: the
    count is the same, so only the store's change log says the files are behind."""
    first = await services.open()
    await first.add(
        [NewMemory("ns", "moved", basis(1), id="moved"), NewMemory("ns", "gone", basis(2), id="gone")]
    )
    await first.close()
    crashed = await services.open()
    await crashed.update("moved", MemoryPatch(embedding=basis(3)))
    await crashed.delete(["gone"])
    await crashed.add([NewMemory("ns", "new", basis(4), id="new")])
    await crashed.store.close()
    crash(crashed)

    after = await services.open()
    assert after.rebuilds == 0  # the files were loaded, then brought up to date
    moved = await after.search(None, basis(3), 1, MemoryFilter())
    assert ids(moved) == ["moved"] and moved[0].score > 0.99
    assert ids(await after.search(None, basis(4), 1, MemoryFilter())) == ["new"]
    assert len(after.index) == 2


async def test_the_saved_index_names_the_store_change_it_holds_and_none_while_a_write_is_under_way(
    services: Services,
) -> None:
    service = await services.open()
    await service.add([NewMemory("ns", "x", basis(1), id="x")])
    manifest = services.index_dir / "index.json"
    await service.save_index()
    assert orjson.loads(manifest.read_bytes())["change_seq"] == await service.store.last_change() > 0
    with service.writing():  # the store may hold a change the index does not yet
        await service.save_index()
    assert "change_seq" not in orjson.loads(manifest.read_bytes())


async def test_a_second_process_writing_the_same_index_directory_refuses_to_start(services: Services) -> None:
    """Two gateways started in one folder both saved the index there: they raced on its files and
    each missed the other's memories. The directory's owner holds a lock; the second says why."""
    first = await services.open()
    with pytest.raises(StartupError) as refused:
        await services.open()
    assert "in use by another gateway process" in str(refused.value) and "--workers" in str(refused.value)
    await first.close()
    again = await services.open()  # the lock went with the first
    await again.close()


async def test_a_vector_of_the_wrong_dimension_is_refused_without_a_trace(service: MemoryService) -> None:
    await service.add([NewMemory("ns", "ok", basis(1), id="ok")])
    with pytest.raises(InvalidRequest) as exc:
        await service.add([NewMemory("ns", "short", (1.0, 0.0), id="short")])
    assert exc.value.param == "embedding"
    assert await service.store.get("short") is None


async def test_a_stored_vector_of_another_dimension_does_not_stop_a_rebuild(
    backend: Backend, services: Services
) -> None:
    store = await backend.open()
    await store.insert(
        [
            Memory(id="a", namespace="ns", content="ok", embedding=basis(1)),
            Memory(id="b", namespace="ns", content="short", embedding=(1.0, 0.0)),
        ]
    )
    service = await services.open()  # no index on disk: rebuilt from the store
    assert ids(await service.search(None, basis(1), 5, MemoryFilter())) == ["a"]


# ----- an injected embedder


WORD_DIM = 64


def words_vector(text: str) -> list[float]:
    """A unit bag-of-words vector: texts sharing words are close."""
    vector = [0.0] * WORD_DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % WORD_DIM] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


@dataclass
class WordsEmbedder:
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    async def __call__(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append((model, list(texts)))
        return [words_vector(t) for t in texts]


async def test_texts_are_embedded_through_the_injected_embedder(services: Services) -> None:
    embedder = WordsEmbedder()
    config = MemoryConfig(index_dir=str(services.index_dir), embedding_model="embed-group")
    service = await services.open(config, embed=embedder)
    given = tuple(words_vector("the office moves to Berlin"))
    created = await service.add(
        [
            NewMemory("finance", "Q3 revenue was 12 million", id="rev"),
            NewMemory("finance", "the office moves to Berlin", given, id="office"),
            NewMemory("people", "Alice leads the platform team", id="alice"),
        ]
    )
    # One call for the batch, only for the memories that came without a vector.
    assert embedder.calls == [("embed-group", ["Q3 revenue was 12 million", "Alice leads the platform team"])]
    assert created[0].embedding == pytest.approx(words_vector("Q3 revenue was 12 million"), abs=1e-6)

    hits = await service.search("what was the Q3 revenue", None, 3, MemoryFilter())
    assert hits[0].memory.id == "rev" and hits[0].score > hits[1].score
    assert embedder.calls[-1] == ("embed-group", ["what was the Q3 revenue"])

    # New content is re-embedded (and re-indexed) unless a vector comes with it.
    await service.update("alice", MemoryPatch(content="Bob now runs the database migration"))
    assert embedder.calls[-1] == ("embed-group", ["Bob now runs the database migration"])
    assert (await service.search("who runs the database migration", None, 1, MemoryFilter()))[
        0
    ].memory.id == ("alice")
    calls = len(embedder.calls)
    await service.update("office", MemoryPatch(content="moved", embedding=tuple(words_vector("moved"))))
    assert len(embedder.calls) == calls

    context = await service.context_for("Q3 revenue please", ["finance"], 1)
    assert ids(context) == ["rev"]


# ----- lifecycle: retention per namespace, the seed's pruning rule


async def add_at(backend: Backend, service: MemoryService, at: datetime, *items: NewMemory) -> None:
    """Add memories as if at ``at`` (the store's clock stamps created_at / last_updated)."""
    backend.clock.now = at
    await service.add(list(items))


async def snapshot(service: MemoryService) -> dict[str, Memory]:
    """Every stored memory (all of these tests' memories have an embedding), by id."""
    out: dict[str, Memory] = {}
    async for batch in service.store.scan_embeddings(1000):
        for memory in await service.store.get_many([mid for mid, _, _, _ in batch]):
            out[memory.id] = memory
    return out


async def test_lifecycle_applies_retention_per_namespace(backend: Backend, services: Services) -> None:
    config = MemoryConfig(
        index_dir=str(services.index_dir),
        namespaces={
            "slack_data": Retention(archive_after_days=30, retention_days=180, confidence_threshold=0.5),
            "gong_data": Retention(retention_days=365),
        },
    )
    service = await services.open(config)
    important = 0.9  # above the pruning rule's min_importance: only retention applies to these
    await add_at(
        backend,
        service,
        START,
        NewMemory("slack_data", "expired", basis(1), id="s-expired", importance_score=0.2),
        NewMemory("gong_data", "old but kept", basis(2), id="g-old", importance_score=important),
        NewMemory("ai_web_research", "no retention", basis(3), id="w-old", importance_score=important),
    )
    await add_at(
        backend,
        service,
        START + timedelta(days=150),
        NewMemory("slack_data", "to archive", basis(4), id="s-archive", importance_score=important),
    )
    await add_at(
        backend,
        service,
        START + timedelta(days=190),
        NewMemory("slack_data", "fresh", basis(5), id="s-fresh", importance_score=important),
        NewMemory(
            "slack_data", "unsure", basis(6), id="s-lowconf", importance_score=important, confidence_score=0.3
        ),
    )
    now = START + timedelta(days=200)
    before = await snapshot(service)

    dry = await apply_lifecycle(service, dry_run=True, now=now)
    slack = dry.namespaces["slack_data"]
    # s-expired is also past archive_after_days: archived (counted) on its way out.
    assert (slack.archived, slack.expired, slack.low_confidence, slack.pruned) == (
        2,
        ["s-expired"],
        ["s-lowconf"],
        [],  # s-expired also fits the pruning rule, but is reported once, as expired
    )
    for untouched in ("gong_data", "ai_web_research"):
        r = dry.namespaces[untouched]
        assert (r.archived, r.expired, r.low_confidence, r.pruned) == (0, [], [], [])
    assert dry.deleted == 2
    assert dry.lines() == [
        "ai_web_research: would archive 0, delete 0 past retention, 0 below confidence, 0 idle and low-value",
        "gong_data: would archive 0, delete 0 past retention, 0 below confidence, 0 idle and low-value",
        "slack_data: would archive 2, delete 1 past retention, 1 below confidence, 0 idle and low-value",
        "total: would delete 2",
    ]
    assert await snapshot(service) == before  # a dry run changes nothing
    assert len(service.index) == 6

    real = await apply_lifecycle(service, dry_run=False, now=now)
    slack = real.namespaces["slack_data"]
    assert (slack.archived, slack.expired, slack.low_confidence, slack.pruned) == (
        2,
        ["s-expired"],
        ["s-lowconf"],
        [],
    )
    assert real.lines()[-1] == "total: did delete 2"
    after = await snapshot(service)
    assert sorted(after) == ["g-old", "s-archive", "s-fresh", "w-old"]
    assert (after["s-archive"].processing_status, after["s-archive"].row_version) == ("archived", 2)
    assert (
        after["s-archive"].last_updated == before["s-archive"].last_updated
    )  # retention still counts from it
    assert all(after[i] == before[i] for i in ("g-old", "s-fresh", "w-old"))

    # Deleted memories left the index; archived ones stay in it but are not searched by default.
    assert len(service.index) == 4
    for gone, vector in (("s-expired", basis(1)), ("s-lowconf", basis(6))):
        assert gone not in ids(await service.search(None, vector, 10, ANY))
    assert "s-archive" not in ids(await service.search(None, basis(4), 10, MemoryFilter()))
    assert ids(await service.search(None, basis(4), 1, ANY)) == ["s-archive"]
    persisted = HnswIndex(services.index_dir)
    assert persisted.load() and len(persisted) == 4  # the run saved the index

    again = await apply_lifecycle(service, dry_run=True, now=now)
    assert again.deleted == 0 and again.namespaces["slack_data"].archived == 0


async def test_lifecycle_applies_the_seed_pruning_rule(backend: Backend, services: Services) -> None:
    config = MemoryConfig(
        index_dir=str(services.index_dir),
        pruning=Pruning(idle_days=90, min_importance=0.7, min_access_count=5),
    )
    service = await services.open(config)
    await add_at(
        backend,
        service,
        START,
        NewMemory("gong_data", "idle, low value", basis(1), id="idle-low", importance_score=0.5),
        NewMemory("gong_data", "idle but important", basis(2), id="idle-important", importance_score=0.7),
        NewMemory("gong_data", "idle but often used", basis(3), id="idle-often", importance_score=0.5),
        NewMemory("gong_data", "idle, used 4 times", basis(4), id="idle-four", importance_score=0.5),
        NewMemory("gong_data", "used lately", basis(5), id="recently-used", importance_score=0.5),
    )
    await add_at(
        backend,
        service,
        START + timedelta(days=100),
        NewMemory("slack_data", "idle 100 days", basis(6), id="slack-idle", importance_score=0.1),
    )
    await add_at(
        backend,
        service,
        START + timedelta(days=150),
        NewMemory("gong_data", "young", basis(7), id="young", importance_score=0.1),
    )
    await service.store.touch({"idle-often": 5, "idle-four": 4}, START)
    await service.store.touch({"recently-used": 1}, START + timedelta(days=150))
    now = START + timedelta(days=200)
    where = MemoryFilter(namespaces=["gong_data"])
    cached = ids(await service.search(None, basis(1), 10, where))
    assert "idle-low" in cached
    before = await snapshot(service)

    dry = await apply_lifecycle(service, dry_run=True, now=now)
    assert dry.namespaces["gong_data"].pruned == ["idle-four", "idle-low"]
    assert dry.namespaces["slack_data"].pruned == ["slack-idle"]
    assert dry.deleted == 3 and dry.lines()[-1] == "total: would delete 3"
    assert await snapshot(service) == before and len(service.index) == 7

    real = await apply_lifecycle(service, dry_run=False, now=now)
    assert real.namespaces["gong_data"].pruned == ["idle-four", "idle-low"]
    assert real.namespaces["slack_data"].pruned == ["slack-idle"]
    assert real.lines()[-1] == "total: did delete 3"
    kept = ["idle-important", "idle-often", "recently-used", "young"]
    assert sorted(await snapshot(service)) == kept
    assert len(service.index) == 4
    assert service.index.namespaces() == ["gong_data"]  # slack_data's only memory went
    hits = await service.search(None, basis(1), 10, where)  # the cached result was dropped
    assert sorted(ids(hits)) == kept
    for i, gone in ((1, "idle-low"), (4, "idle-four"), (6, "slack-idle")):
        assert gone not in ids(await service.search(None, basis(i), 10, ANY))

    assert (await apply_lifecycle(service, dry_run=False, now=now)).deleted == 0
    disabled = MemoryConfig(index_dir=str(services.index_dir), pruning=Pruning(enabled=False))
    service.config = disabled
    later = await apply_lifecycle(service, dry_run=True, now=now + timedelta(days=1000))
    assert later.deleted == 0  # "young" etc. are idle by then, but pruning is off


async def test_archiving_drops_cached_searches(backend: Backend, services: Services) -> None:
    config = MemoryConfig(
        index_dir=str(services.index_dir),
        namespaces={"slack_data": Retention(archive_after_days=30)},
        pruning=Pruning(enabled=False),
    )
    service = await services.open(config)
    await add_at(backend, service, START, NewMemory("slack_data", "old", basis(1), id="old"))
    assert ids(await service.search(None, basis(1), 5, MemoryFilter())) == ["old"]

    report = await apply_lifecycle(service, dry_run=False, now=START + timedelta(days=40))
    assert report.namespaces["slack_data"].archived == 1
    assert (await service.get("old")).processing_status == "archived"
    assert ids(await service.search(None, basis(1), 5, MemoryFilter())) == []


async def test_a_cached_search_leaves_out_memories_archived_since(services: Services) -> None:
    """``memory prune`` beside the gateway (or another worker's lifecycle) archives memories a
    cached search holds: the cache must not bring them back, and their places are filled."""
    config = MemoryConfig(index_dir=str(services.index_dir), search_cache_ttl_s=300)
    service = await services.open(config)
    await service.add(
        [NewMemory("ns", f"m{n}", toward_e0(0.9 - n / 10, n + 1), id=f"m{n}") for n in range(3)]
    )
    assert ids(await service.search(None, basis(0), 2, MemoryFilter())) == ["m0", "m1"]  # cached
    other = await services.backend.open()  # another process's connection to the store
    try:
        await other.archive_older_than("ns", START + timedelta(days=1))
        await other.update("m2", MemoryPatch(processing_status="active"))  # only m2 stays active
    finally:
        await other.close()
    assert ids(await service.search(None, basis(0), 2, MemoryFilter())) == ["m2"]
    archived = MemoryFilter(processing_status="archived")
    assert ids(await service.search(None, basis(0), 2, archived)) == ["m0", "m1"]


def break_index_dir(directory: Path) -> None:
    """A regular file where the index directory was: every save fails (an OSError, as on a full
    disk; root writes a read-only directory anyway). The directory's lock stays held."""
    directory.rename(directory.with_name(directory.name + "-moved"))
    directory.write_text("not a directory")


async def test_an_index_save_failing_at_close_is_logged_and_the_close_finishes(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """close() runs in the app's cleanup: raising there made the process exit 1 on SIGTERM, and
    left the store open and the directory locked."""
    service = await services.open()
    await service.add([NewMemory("ns", "x", basis(1), id="x")])
    await service.search(None, basis(1), 1, MemoryFilter())  # an access count to write at close
    break_index_dir(services.index_dir)
    with caplog.at_level(logging.WARNING, logger="gateway.memory"):
        await service.close()
    [record] = [r for r in caplog.records if r.name == "gateway.memory"]
    assert record.levelno == logging.ERROR and "could not save the memory index" in record.getMessage()
    assert "access counts" not in record.getMessage()
    assert service._files_lock is None  # the directory's lock let go
    reader = await services.backend.open()
    found = await reader.get("x")
    assert found is not None and found.access_count == 1  # the counts were still written


async def test_an_index_save_failing_in_the_background_is_logged_as_such(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    service = await services.open(flush_every_s=0.01)  # a save every 30 rounds: every 0.3 s
    await service.add([NewMemory("ns", "x", basis(1), id="x")])
    break_index_dir(services.index_dir)
    with caplog.at_level(logging.WARNING, logger="gateway.memory"):
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if r.name == "gateway.memory"]:
            assert time.monotonic() < deadline, "the background save never failed"
            await asyncio.sleep(0.02)
        await service.search(None, basis(1), 1, MemoryFilter())
        while (await service.get("x")).access_count != 1:  # the flushes go on
            assert time.monotonic() < deadline, "the access counts stopped being written"
            await asyncio.sleep(0.02)
    messages = {r.getMessage() for r in caplog.records if r.name == "gateway.memory"}
    assert messages == {"memory: could not save the index; will retry"}, messages
    assert service._flusher is not None and not service._flusher.done()
