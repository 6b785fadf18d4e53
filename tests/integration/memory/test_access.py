"""Memory access control (issue 11, item 6) on both stores (SQLite on a file, Snowflake on
fakesnow) with a real ``HnswIndex``: team A writes in a namespace, team B tries everything.

``MemoryAccess`` is what the handlers and the request service make of a caller's key; ``None``
is open mode.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.errors import NotFound, PermissionDenied
from gateway.memory.access import MemoryAccess
from gateway.memory.index import HnswIndex
from gateway.memory.records import MemoryFilter, MemoryPatch
from gateway.memory.service import Hit, MemoryService, NewMemory
from gateway.policy.model import MemoryConfig
from tests.integration.memory.conftest import Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DIM = 8
X = "team_notes"
A = MemoryAccess("alpha")  # unrestricted grants: its own memories in any namespace
B = MemoryAccess("beta")  # the same, for another team
B_ELSEWHERE = MemoryAccess("beta", read=frozenset({"other"}), write=frozenset({"other"}))
B_READS_X = MemoryAccess("beta", read=frozenset({X, "other"}), write=frozenset({"other"}))
B_WRITES_X = MemoryAccess("beta", read=frozenset({X}), write=frozenset({X}))


def basis(i: int) -> tuple[float, ...]:
    return tuple(1.0 if d == i else 0.0 for d in range(DIM))


def toward_e0(similarity: float) -> tuple[float, ...]:
    rest = math.sqrt(1.0 - similarity * similarity)
    return tuple(similarity if d == 0 else rest if d == 1 else 0.0 for d in range(DIM))


async def embed_launch(model: str, texts: Sequence[str]) -> list[list[float]]:
    """A question about the launch lands on ``basis(0)``, anything else far from it."""
    return [list(basis(0) if "launch" in t else basis(DIM - 1)) for t in texts]


@dataclass
class Services:
    backend: Backend
    tmp_path: Path
    opened: list[MemoryService] = field(default_factory=list)

    @property
    def index_dir(self) -> Path:
        return self.tmp_path / "index"

    async def open(self) -> MemoryService:
        service = MemoryService(
            MemoryConfig(index_dir=str(self.index_dir), embedding_model="embed-group"),
            self.backend.make(),
            HnswIndex(self.index_dir),
            embed_launch,
            flush_every_s=3600.0,
        )
        self.opened.append(service)
        await service.start()
        return service


@pytest.fixture
async def services(backend: Backend, tmp_path: Path) -> AsyncIterator[Services]:
    s = Services(backend, tmp_path)
    yield s
    for service in s.opened:
        await service.close()


@pytest.fixture
async def service(services: Services) -> MemoryService:
    svc = await services.open()
    await svc.add([NewMemory(X, "alpha's launch date is 3 May", basis(0), id="a-secret")], A)
    return svc


def ids(hits: Sequence[Hit]) -> list[str]:
    return [h.memory.id for h in hits]


async def test_rows_carry_their_owner_team(service: MemoryService) -> None:
    stored = await service.store.get("a-secret")
    assert stored is not None and stored.owner == "alpha"
    [ownerless] = await service.add([NewMemory(X, "written in open mode", basis(1), id="open")])
    assert ownerless.owner is None


@pytest.mark.parametrize("b", [B, B_ELSEWHERE], ids=["unrestricted", "granted-elsewhere"])
async def test_another_team_cannot_read_change_or_delete(service: MemoryService, b: MemoryAccess) -> None:
    unknown = "No memory with id 'a-secret'."
    with pytest.raises(NotFound, match=unknown):
        await service.get("a-secret", b)
    with pytest.raises(NotFound, match=unknown):  # not a 403: the id's existence is not revealed
        await service.update("a-secret", MemoryPatch(content="pwned", embedding=basis(2)), b)
    with pytest.raises(NotFound, match=unknown):
        await service.delete(["a-secret"], b)
    # Searching every namespace it may read finds nothing of alpha's, nor does chat augmentation.
    assert await service.search(None, basis(0), 10, MemoryFilter(), b) == []
    if b is B:
        assert await service.context_for("when is the launch?", [X], 5, b) == []
    stored = await service.store.get("a-secret")
    assert stored is not None and stored.content == "alpha's launch date is 3 May"  # untouched
    assert ids(await service.search(None, basis(0), 10, MemoryFilter(), A)) == ["a-secret"]


async def test_naming_a_namespace_not_granted_is_403_and_unrestricted_sees_only_its_own(
    service: MemoryService,
) -> None:
    with pytest.raises(PermissionDenied, match=f"may not read memory namespace '{X}'"):
        await service.search(None, basis(0), 10, MemoryFilter(namespaces=[X]), B_ELSEWHERE)
    with pytest.raises(PermissionDenied, match=f"may not read memory namespace '{X}'"):
        await service.context_for("launch date?", [X], 5, B_ELSEWHERE)
    with pytest.raises(PermissionDenied, match=f"may not write memory namespace '{X}'"):
        await service.add([NewMemory(X, "beta was here", basis(3))], B_ELSEWHERE)
    # Unrestricted beta may use X for its own memories, and only sees those.
    await service.add([NewMemory(X, "beta's own note", basis(3), id="b-note")], B)
    assert ids(await service.search(None, basis(0), 10, MemoryFilter(namespaces=[X]), B)) == ["b-note"]


async def test_owner_filters_inside_the_index_query_not_after_top_k(services: Services) -> None:
    """Thirty of alpha's memories closer to the query than beta's one must not starve beta's
    top_k=1 search (a filter after the top_k would return nothing)."""
    service = await services.open()
    await service.add(
        [NewMemory(X, f"alpha {i}", toward_e0(0.99 - i / 1000), id=f"a{i}") for i in range(30)], A
    )
    await service.add([NewMemory(X, "beta's", toward_e0(0.5), id="b")], B)
    assert ids(await service.search(None, basis(0), 1, MemoryFilter(namespaces=[X]), B)) == ["b"]
    filtered = MemoryFilter(namespaces=[X], min_confidence=0.5)  # the row-filter path, too
    assert ids(await service.search(None, basis(0), 1, filtered, B)) == ["b"]
    assert ids(await service.search(None, basis(0), 1, MemoryFilter(namespaces=[X]), A)) == ["a0"]
    # Open mode sees every owner's.
    assert len(await service.search(None, basis(0), 100, MemoryFilter(namespaces=[X]))) == 31


async def test_a_read_grant_reads_and_searches_but_does_not_write(service: MemoryService) -> None:
    assert (await service.get("a-secret", B_READS_X)).content == "alpha's launch date is 3 May"
    assert ids(await service.search(None, basis(0), 5, MemoryFilter(namespaces=[X]), B_READS_X)) == [
        "a-secret"
    ]
    assert ids(await service.context_for("when is the launch?", [X], 5, B_READS_X)) == ["a-secret"]
    with pytest.raises(PermissionDenied, match=f"may not change memories in namespace '{X}'"):
        await service.update("a-secret", MemoryPatch(content="changed", embedding=basis(2)), B_READS_X)
    with pytest.raises(PermissionDenied):
        await service.delete(["a-secret"], B_READS_X)
    with pytest.raises(PermissionDenied):
        await service.add([NewMemory(X, "beta writes", basis(3))], B_READS_X)
    # A write grant on X lets beta change alpha's memories there (a shared namespace).
    changed = await service.update("a-secret", MemoryPatch(importance_score=0.9), B_WRITES_X)
    assert changed.importance_score == 0.9 and changed.owner == "alpha"
    assert await service.delete(["a-secret"], B_WRITES_X) == 1


async def test_ownerless_rows_need_an_explicit_grant(service: MemoryService) -> None:
    await service.add([NewMemory(X, "from before keys", basis(1), id="legacy")])  # open mode
    assert "legacy" not in ids(await service.search(None, basis(1), 10, MemoryFilter(), A))
    with pytest.raises(NotFound):
        await service.get("legacy", A)
    assert "legacy" in ids(await service.search(None, basis(1), 10, MemoryFilter(), B_READS_X))
    assert (await service.get("legacy")).owner is None  # open mode: no checks, as before


async def test_owners_survive_an_index_rebuild(services: Services, service: MemoryService) -> None:
    await service.add([NewMemory(X, "beta's own", basis(0), id="b-own")], B)
    await service.close()
    shutil.rmtree(services.index_dir)  # forces a rebuild from the stored rows (and their owners)
    again = await services.open()
    assert ids(await again.search(None, basis(0), 10, MemoryFilter(namespaces=[X]), B)) == ["b-own"]
    assert ids(await again.search(None, basis(0), 10, MemoryFilter(namespaces=[X]), A)) == ["a-secret"]
    assert await again.delete(["b-own"], B) == 1
    assert await again.search(None, basis(0), 10, MemoryFilter(namespaces=[X]), B) == []
