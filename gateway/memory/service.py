"""The memory service: writes go to the store and the index together; searches go index-first.

Embeddings come through the gateway's own embeddings routing (``memory.embedding_model``), so
they get scoring, failover and caching like any request. Searches fan out over namespaces in
parallel, merge by score, and are cached until a write touches one of their namespaces.
Access counts are gathered in memory and written in batches, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import hashlib
import logging
import os
import struct
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from gateway.errors import GatewayError, InvalidRequest, PermissionDenied, ServiceUnavailable, StartupError
from gateway.memory.access import MemoryAccess, not_found, partition_of, split_partition
from gateway.memory.records import (
    Memory,
    MemoryFilter,
    MemoryPatch,
    MemoryStore,
    VectorIndex,
    row_version_conflict,
)
from gateway.observability.metrics import memory_search_histogram
from gateway.policy.model import MemoryConfig
from gateway.tasks import stop as stop_task

log = logging.getLogger("gateway.memory")
_DIMENSION_PROBE = "sophia-gateway dimension check"  # embedded to learn the model's dimension

# (embedding model group, texts) -> one vector per text; raises GatewayError when it cannot.
TextEmbedder = Callable[[str, Sequence[str]], Awaitable[list[list[float]]]]

REBUILD_BATCH = 1000  # rows per store scan when the index is rebuilt (the seed's figure)
_INLINE_ADD_MAX = 8
_SAVE_EVERY_ROUNDS = 30  # the changed index is saved every 30th flush round (~30 s by default)
_SEARCH_CACHE_MAX = 10_000
_CHANGES_BATCH = 1000  # change-log rows read per query when catching up
_MAX_FILTERED_CANDIDATES = 20_000  # a filtered search's widest fetch a partition (see _search_index)
_CHANGES_KEPT = 100_000  # the owner trims the change log to this many rows every save
_OWN_WRITES_KEPT = 100_000  # a follower's own writes remembered until the log brings them back


@dataclass(frozen=True, slots=True)
class Hit:
    memory: Memory
    score: float  # cosine similarity, higher is closer


@dataclass(frozen=True, slots=True)
class NewMemory:
    namespace: str
    content: str
    embedding: tuple[float, ...] | None = None
    metadata: dict[str, object] | None = None
    data_source: str | None = None
    confidence_score: float = 1.0
    importance_score: float = 0.5
    id: str | None = None


class MemoryService:
    """Memories in ``store``, found through ``index``, texts embedded by ``embed``.

    ``clock`` (monotonic seconds) ages the search cache; ``flush_every_s`` is the interval in
    seconds at which access counts gathered by searches are written to the store in the
    background (``flush_access()`` and ``close()`` write them at once).
    """

    def __init__(
        self,
        config: MemoryConfig,
        store: MemoryStore,
        index: VectorIndex,
        embed: TextEmbedder,
        clock: Callable[[], float] = time.monotonic,
        *,
        flush_every_s: float = 1.0,
        follow_changes: bool = False,
        follow_when_idle: bool = False,
        owns_index_files: bool = True,
    ) -> None:
        if flush_every_s <= 0:
            raise ValueError(f"flush_every_s must be positive, got {flush_every_s}")
        self.config = config
        self.store = store
        self.index = index
        self._embed = embed
        # The dimension memory.embedding_model makes, once asked (``_model_dimension``).
        self._model_ndim: int | None = None
        self._clock = clock
        self._flush_every_s = flush_every_s
        self._pending_access: Counter[str] = Counter()
        self._cache: OrderedDict[str, tuple[float, frozenset[str], list[tuple[str, float]]]] = OrderedDict()
        self._flusher: asyncio.Task[None] | None = None
        self.cache_hits = 0
        self.cache_misses = 0
        self.search_duration = memory_search_histogram()  # exported by observability.metrics
        # Several processes sharing the store (serve --workers N): each applies the others'
        # writes from the store's change log before a search; one of them writes the index files.
        # With follow_when_idle it also does so every flush round, so a worker that gets no
        # searches keeps its index (its figures, the files it saves) near the store's.
        self._follow = follow_changes
        self._follow_idle = follow_changes and follow_when_idle
        self._owns_files = owns_index_files
        self._files_lock: int | None = None  # a descriptor holding the index directory's lock
        self._seen_change = 0
        self._catching_up = asyncio.Lock()
        # A follower's own writes that its index holds: id -> (partition, digest of the vector
        # this process put there). When the change log brings the row back with that very
        # partition and vector, it is not added a second time (adding costs ~1 ms a vector).
        # Keyed on what the index holds, not on row_version: versions start again at 1 when an
        # id is deleted and written anew (by any process), so a version could stand for another
        # row. Whatever takes the vector out of the index (a delete, applied or made here; a
        # memory found gone) forgets its entry. The oldest are forgotten past _OWN_WRITES_KEPT
        # (then added again).
        self._own_writes: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        # Writes under way (a store write and its index change; see ``writing``) and started,
        # so a save knows which store change the index holds (``_held_change``).
        self._writes_in_flight = 0
        self._writes_started = 0
        self._held: tuple[int, int] | None = None  # (writes started, store change) last found
        self.index_saved_at: float | None = None  # clock time of this process's last index save

    # ----- lifecycle of the service itself

    async def start(self) -> None:
        """Open the store, load the persisted index or rebuild it from the store."""
        directory = getattr(self.index, "directory", None)  # an index with files (HnswIndex)
        if self._owns_files and isinstance(directory, Path):
            self._files_lock = _lock_index_dir(directory)
        await self.store.start()
        try:
            await self._load_index()
        except ServiceUnavailable as exc:
            # The store opened, then failed (on Snowflake: a warehouse the role cannot use,
            # which its DDL did not need): a start-up line, not a traceback.
            await self.store.close()
            if self._files_lock is not None:
                os.close(self._files_lock)  # the lock goes with it
                self._files_lock = None
            said = f" ({exc.detail})" if exc.detail else ""
            raise StartupError(
                f"the memory store opened, then failed while the index was read from it: {exc.message}{said}"
            ) from None
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _load_index(self) -> None:
        last = await self.store.last_change()  # before the index is read: later writes follow
        if self._follow:
            self._seen_change = last
        loaded = await asyncio.to_thread(self.index.load)
        held = self.index.loaded_change_seq() if loaded else None
        if held is not None and held <= last:
            # The files hold the store's changes up to ``held``: apply those after it (an update
            # or a delete since the last save, before a crash, leaves the count alone).
            self._seen_change = held
            await self.catch_up()
        # An index saved before a crash misses the memories written after it: rebuild it from
        # the stored embeddings (no re-embedding) when it does not hold as many as the store.
        if not loaded or len(self.index) != await self.store.count():
            self.index.clear()
            count = await self.rebuild_index()
            log.info("memory index rebuilt from the store", extra={"fields": {"memories": count}})

    async def close(self) -> None:
        """Write the pending access counts and save the index (when this process owns the
        files), then close the index and the store. Neither failing stops the close, nor is
        raised: it runs as the process stops, where an exception turned a clean shutdown into
        exit status 1 (the next start brings a stale index up to date from the store)."""
        if self._flusher is not None:
            await stop_task(self._flusher)
        try:
            await self.flush_access()
        except Exception:
            log.warning("memory: could not write access counts at shutdown", exc_info=True)
        if self._owns_files:
            if self._follow:  # the other workers' writes go in the files too
                try:
                    await self.catch_up()
                except Exception:
                    log.warning("memory: could not read the change log before saving", exc_info=True)
            try:
                await self.save_index()
            except Exception:
                log.error(
                    "memory: could not save the memory index at shutdown; the next start brings "
                    "the last saved one up to date from the store (or rebuilds it)",
                    exc_info=True,
                )
        try:
            self.index.close()
        finally:
            try:
                await self.store.close()
            finally:
                if self._files_lock is not None:
                    os.close(self._files_lock)  # the lock goes with it
                    self._files_lock = None

    async def check_embedding_dimension(self, timeout_s: float) -> None:
        """At start, after ``start()``: raise ``StartupError`` when ``memory.embedding_model``
        makes vectors of another dimension than those already stored (every write and search
        would be refused). A model that cannot answer within ``timeout_s`` seconds is only
        logged: a provider that is down must not keep the gateway from starting."""
        model, stored = self.config.embedding_model, self.index.ndim
        if model is None or stored is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                vector = (await self._embed(model, [_DIMENSION_PROBE]))[0]
        except (GatewayError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, GatewayError) else f"no answer in {timeout_s:g} s"
            log.warning(
                "memory: cannot check the embedding model's dimension at start",
                extra={"fields": {"model": model, "reason": reason}},
            )
            return
        if len(vector) != stored:
            raise StartupError(
                f"the memory store holds {stored}-dimensional vectors but memory.embedding_model "
                f"'{model}' makes {len(vector)}-dimensional ones; use another memory.path or "
                "MEMORY_URL for this model (or the model that made the stored ones)"
            )

    async def _model_dimension(self) -> int | None:
        """The dimension ``memory.embedding_model`` makes (one short text embedded, once), None
        without a model. A provider that cannot answer fails the call that needed it."""
        model = self.config.embedding_model
        if model is not None and self._model_ndim is None:
            # The gateway's own call, as at start: not the client's (its limits, budget, usage).
            probe = asyncio.get_running_loop().create_task(self._probe(model), context=contextvars.Context())
            self._model_ndim = len(await probe)
        return self._model_ndim

    async def _probe(self, model: str) -> list[float]:
        return (await self._embed(model, [_DIMENSION_PROBE]))[0]

    async def rebuild_index(self) -> int:
        """Add every stored embedding to the index, in batches of ``REBUILD_BATCH``; returns how many."""
        count = skipped = 0
        async for batch in self.store.scan_embeddings(REBUILD_BATCH):
            by_partition: dict[str, list[tuple[str, Sequence[float]]]] = {}
            for memory_id, namespace, owner, vector in batch:
                ndim = self.index.ndim
                if ndim is not None and len(vector) != ndim:
                    skipped += 1  # another embedding model's vector: unsearchable, not fatal
                    continue
                partition = partition_of(namespace, owner)
                by_partition.setdefault(partition, []).append((memory_id, vector))
                if ndim is None:
                    self.index.add(partition, by_partition.pop(partition))  # fixes the dimension
            for partition, items in by_partition.items():
                await asyncio.to_thread(self.index.add, partition, items)  # ~1 ms per vector
            count += len(batch)
        if skipped:
            log.warning(
                "memory: stored vectors of another dimension were left out of the index",
                extra={"fields": {"skipped": skipped, "ndim": self.index.ndim}},
            )
        await self.save_index()
        return count - skipped

    async def save_index(self) -> None:
        """Write the index files (when this process owns them) with the store change they hold:
        the next start applies the changes after it, then checks the count."""
        if not self._owns_files:
            return
        try:
            held = await self._held_change()
        except Exception:  # the store cannot say: saved without it (the next start counts)
            log.warning("memory: could not read the store's last change", exc_info=True)
            held = None
        await asyncio.to_thread(self.index.save, held)
        self.index_saved_at = self._clock()

    async def _held_change(self) -> int | None:
        """A store change such that the index holds every change up to it; None when a write
        is under way (the store may have it and the index not yet)."""
        if self._follow:
            return self._seen_change  # catch_up applied each change up to it, from the rows
        if self._writes_in_flight:
            return None
        started = self._writes_started
        if self._held is not None and self._held[0] == started:
            return self._held[1]  # nothing written since: no query (a warehouse may sleep)
        seq = await self.store.last_change()
        if self._writes_in_flight or self._writes_started != started:
            return None
        self._held = (started, seq)
        return seq

    async def _wrote(self, indexed: Sequence[tuple[str, str, Sequence[float]]]) -> None:
        """Remember (id, partition, vector) this follower wrote and put in its index (see
        ``_own_writes``)."""
        if not self._follow:
            return
        digests = await _digests([vector for _, _, vector in indexed])
        own = self._own_writes
        for (memory_id, partition, _), digest in zip(indexed, digests, strict=True):
            own[memory_id] = (partition, digest)
            own.move_to_end(memory_id)
        while len(own) > _OWN_WRITES_KEPT:
            own.popitem(last=False)

    def _unwrote(self, ids: Iterable[str]) -> None:
        """Forget own writes whose vectors left the index (see ``_own_writes``)."""
        own = self._own_writes
        if own:
            for memory_id in ids:
                own.pop(memory_id, None)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a store write and the index change that goes with it: a save meanwhile does
        not claim a store change the index may not hold yet."""
        self._writes_started += 1
        self._writes_in_flight += 1
        try:
            yield
        finally:
            self._writes_in_flight -= 1

    # ----- writes

    async def add(
        self,
        items: Sequence[NewMemory],
        access: MemoryAccess | None = None,
        *,
        skip_existing: bool = False,
        read_back: bool = True,
    ) -> list[Memory]:
        """Store new memories, embedding those that came without a vector. With ``access`` (a
        caller with keys) every namespace must be writable and the memories are its team's.

        ``skip_existing``: items whose id is stored already are left out (not an error), so a
        batch with ids derived from its content can be written again (file ingestion).
        ``read_back``: return the rows as stored (times set); False returns them as built."""
        for item in items:
            self.check_writable(item.namespace, access)
        if skip_existing:
            stored = await self.store.existing_ids([i.id for i in items if i.id is not None])
            items = [i for i in items if i.id is None or i.id not in stored]
            if not items:
                return []
        owner = access.team if access is not None else None
        vectors = await self._vectors_for([i.content for i in items if i.embedding is None])
        await self.check_dimensions(
            [i.embedding for i in items if i.embedding is not None], model_made=vectors
        )
        supplied = iter(vectors)
        memories = []
        for item in items:
            embedding = item.embedding if item.embedding is not None else tuple(next(supplied))
            memories.append(
                Memory(
                    id=item.id or uuid.uuid4().hex,
                    namespace=item.namespace,
                    content=item.content,
                    embedding=embedding,
                    metadata=item.metadata or {},
                    data_source=item.data_source,
                    confidence_score=item.confidence_score,
                    importance_score=item.importance_score,
                    owner=owner,
                )
            )
        with self.writing():
            await self.store.insert(memories)
            by_namespace: dict[str, list[tuple[str, Sequence[float]]]] = {}
            for m in memories:
                if m.embedding is not None:
                    by_namespace.setdefault(m.namespace, []).append((m.id, m.embedding))
            for namespace, batch in by_namespace.items():
                await self._index_add(namespace, owner, batch)
            await self._wrote(
                [
                    (m.id, partition_of(m.namespace, owner), m.embedding)
                    for m in memories
                    if m.embedding is not None
                ]
            )
        self.forget_cached_searches({m.namespace for m in memories})
        if not read_back:
            return memories
        rows = {m.id: m for m in await self.store.get_many([m.id for m in memories])}
        return [rows.get(m.id, m) for m in memories]

    async def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text from ``memory.embedding_model``, through the gateway's own
        embeddings routing (cache, failover, limits and cost apply); ``InvalidRequest`` when the
        policy names no model, the routing's ``GatewayError`` when no deployment can answer."""
        return await self._vectors_for(texts)

    def check_writable(self, namespace: str, access: MemoryAccess | None, param: str = "namespace") -> None:
        """``PermissionDenied`` when ``access`` may not write ``namespace``; ``param``: the field as
        the client wrote it (``memories[2].namespace`` in a batch)."""
        if access is not None:
            access.check_write(namespace, param, by_name=self.trusted(namespace))

    def trusted(self, namespace: str) -> bool:
        """Whether the policy marks ``namespace`` trusted (``memory.namespaces.NAME.trusted``)."""
        settings = self.config.namespaces.get(namespace)
        return settings is not None and settings.trusted

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that are stored."""
        return await self.store.existing_ids(ids)

    async def owned_ids(self, ids: Sequence[str], owner: str) -> set[str]:
        """The ids among ``ids`` stored as given and written by ``owner`` (a team's memories
        from before ids were per team: ``MemoryAccess.stored_id``)."""
        return {m.id for m in await self.store.get_many(ids) if m.owner == owner}

    async def find(self, given: str, access: MemoryAccess | None = None) -> Memory:
        """The memory a client names ``given`` (a path's id): with keys, its team's own
        (``access.stored_id``) first, else the id as stored (one the gateway made, one written
        before ids were per team, another team's shown whole); ``NotFound`` as ``get``."""
        if access is not None:
            own = await self.store.get(access.stored_id(given))
            if own is not None and access.sees(own.namespace, own.owner):
                return own
        return await self.get(given, access)

    async def get(self, memory_id: str, access: MemoryAccess | None = None) -> Memory:
        """The memory ``memory_id``; ``NotFound`` when it does not exist or ``access`` may not
        see it (the same answer: another team's ids are not revealed)."""
        memory = await self.store.get(memory_id)
        if memory is None or (access is not None and not access.sees(memory.namespace, memory.owner)):
            raise not_found(memory_id)
        return memory

    async def _changeable(self, memory_id: str, access: MemoryAccess | None) -> Memory:
        """The memory ``access`` may change: ``NotFound`` if it cannot see it, else
        ``PermissionDenied`` if it may only read it."""
        memory = await self.get(memory_id, access)
        if access is not None and not access.may_change(
            memory.namespace, memory.owner, self.trusted(memory.namespace)
        ):
            raise PermissionDenied(
                f"This API key may not change memories in namespace '{memory.namespace}'.",
                param="id",
                code="namespace_not_granted",
            )
        return memory

    async def update(self, memory_id: str, patch: MemoryPatch, access: MemoryAccess | None = None) -> Memory:
        """Change a memory; new content is re-embedded unless a vector comes with it. A patch
        that changes nothing (``{}``) writes nothing: the memory as it is (its ``row_version``
        and ``updated_at`` unchanged; a stale ``row_version`` is still a conflict)."""
        before = await self._changeable(memory_id, access)  # before embedding: a refusal costs nothing
        if patch.if_row_version is not None and patch.if_row_version != before.row_version:
            raise row_version_conflict(memory_id, patch.if_row_version)  # the store checks again
        if patch.changes_nothing:
            return before
        if patch.content is not None and patch.embedding is None:
            vector = (await self._vectors_for([patch.content]))[0]
            patch = replace(patch, embedding=tuple(vector))
        if patch.embedding is not None:
            await self.check_dimensions([patch.embedding])
        with self.writing():
            updated = await self.store.update(memory_id, patch)
            if updated is None:
                raise not_found(memory_id)
            if patch.embedding is not None:
                await self._index_add(updated.namespace, updated.owner, [(updated.id, patch.embedding)])
                # Only a vector this process put in the index: after a change of metadata alone
                # the index may still hold an older vector another process replaced since.
                await self._wrote(
                    [(updated.id, partition_of(updated.namespace, updated.owner), patch.embedding)]
                )
        self.forget_cached_searches({before.namespace, updated.namespace})
        return updated

    async def delete(self, ids: Sequence[str], access: MemoryAccess | None = None) -> int:
        """Delete memories; with ``access``, each must be one it may change (``NotFound`` for
        one it cannot see, ``PermissionDenied`` for one it may only read; nothing is deleted)."""
        if access is not None:
            for memory_id in ids:
                await self._changeable(memory_id, access)
        memories = await self.store.get_many(ids)
        with self.writing():
            deleted = await self.store.delete(ids)
            self.forget([(m.namespace, m.id) for m in memories])
        return deleted

    def forget(self, items: Sequence[tuple[str, str]]) -> None:
        """Drop deleted memories (namespace, id) from the index (every owner's partition of the
        namespace: ids are unique, so only the right one holds each) and the search cache."""
        by_namespace: dict[str, list[str]] = {}
        for namespace, memory_id in items:
            by_namespace.setdefault(namespace, []).append(memory_id)
        self._unwrote(memory_id for _, memory_id in items)
        for partition in self.index.namespaces():
            ids = by_namespace.get(split_partition(partition)[0])
            if ids:
                self.index.remove(partition, ids)
        self.forget_cached_searches(set(by_namespace))

    # ----- search

    async def search(
        self,
        query: str | None,
        vector: Sequence[float] | None,
        top_k: int,
        where: MemoryFilter,
        access: MemoryAccess | None = None,
        *,
        accessed: bool = True,
        namespaces_param: str = "namespaces",
    ) -> list[Hit]:
        """The ``top_k`` memories closest to the query (text or vector) that pass ``where``,
        counted as accessed unless not ``accessed`` (the caller counts those it uses:
        ``record_access``).

        With ``access``, every namespace named must be readable (else ``PermissionDenied``) and
        only the partitions it may see are searched: owners filter inside the index query, so
        other teams' memories neither take top_k places nor show in any count.
        ``namespaces_param``: the field naming the namespaces, as the client wrote it."""
        if vector is None and not query:
            raise InvalidRequest("Give 'query' (text) or 'vector'.", param="query")
        started = time.perf_counter()
        if self._follow:
            await self.catch_up()
        if access is not None and where.namespaces:
            access.check_read(list(where.namespaces), namespaces_param)
        if vector is not None:
            await self.check_dimensions([vector], ["vector"])
        else:
            vector = (await self._vectors_for([query or ""]))[0]
        partitions = self._partitions(where.namespaces, access)
        namespaces = frozenset(split_partition(p)[0] for p in partitions)
        key = self._cache_key(vector, top_k, where, partitions)
        scored = self._cached(key)
        if scored is None:
            self.cache_misses += 1
            scored, memories, gone = await self._search_index(partitions, vector, top_k, where)
            if not gone:
                self._remember(key, namespaces, scored)
        else:
            self.cache_hits += 1
            memories = {m.id: m for m in await self.store.get_many([i for i, _ in scored])}
            gone = [i for i, _ in scored if i not in memories]
            if not gone and not all(_passes(memories[i], where) for i, _ in scored):
                # Changed since it was cached by a process this one does not follow (``memory
                # prune`` archiving beside it) or has not caught up with: search again.
                self._cache.pop(key, None)
                scored, memories, gone = await self._search_index(partitions, vector, top_k, where)
                if not gone:
                    self._remember(key, namespaces, scored)
        if gone:
            # Deleted since they were indexed, by a process this one does not follow (``memory
            # prune`` beside it) or has not caught up with: out of the index, and one more search
            # for the places they took.
            for partition in partitions:
                self.index.remove(partition, gone)
            self._unwrote(gone)
            self.forget_cached_searches(namespaces)
            scored, memories, _ = await self._search_index(partitions, vector, top_k, where)
            self._remember(key, namespaces, scored)
        hits = [Hit(memories[i], s) for i, s in scored if i in memories][:top_k]
        if accessed:
            self.record_access(h.memory.id for h in hits)
        self.search_duration.observe(time.perf_counter() - started)
        return hits

    async def _search_index(
        self, partitions: list[str], vector: Sequence[float], top_k: int, where: MemoryFilter
    ) -> tuple[list[tuple[str, float]], dict[str, Memory], list[str]]:
        """(id, score) best first, the stored rows of those ids, and the ids found in the index
        whose rows are gone from the store."""
        # Over-fetch so filters on stored fields still leave top_k, and when they do not, fetch
        # four times more, until top_k pass, every partition is exhausted (it gave fewer than
        # asked) or a partition has given _MAX_FILTERED_CANDIDATES (pgvector's iterative scan
        # stops the same way, at hnsw.max_scan_tuples): a filter that most near neighbours fail
        # (a rare data_source, many archived memories) still finds the ones that pass. Each
        # round reads only the rows it has not read. Partitions run in parallel threads
        # (usearch releases the GIL), then merge by score.
        filtered = self._filters_rows(where)
        fetch = top_k * 4 if filtered else top_k
        rows: dict[str, Memory] = {}
        while True:
            per_namespace = await asyncio.gather(
                *(asyncio.to_thread(self._search_one, p, vector, fetch) for p in partitions)
            )
            merged = sorted((pair for result in per_namespace for pair in result), key=lambda p: -p[1])
            if not filtered:
                merged = merged[:top_k]
            unread = [i for i, _ in merged if i not in rows]
            if unread:
                rows.update((m.id, m) for m in await self.store.get_many(unread))
            kept = [(i, s) for i, s in merged if i in rows and _passes(rows[i], where)]
            exhausted = all(len(result) < fetch for result in per_namespace)
            if not filtered or len(kept) >= top_k or exhausted or fetch >= _MAX_FILTERED_CANDIDATES:
                gone = [i for i, _ in merged if i not in rows]
                return kept[:top_k], rows, gone
            fetch = min(fetch * 4, _MAX_FILTERED_CANDIDATES)

    def _partitions(self, namespaces: Sequence[str] | None, access: MemoryAccess | None) -> list[str]:
        """The index partitions a search covers: those of ``namespaces`` (all when None) whose
        owner ``access`` may see (every owner's in open mode)."""
        wanted = set(namespaces) if namespaces else None
        out = []
        for partition in self.index.namespaces():
            namespace, owner = split_partition(partition)
            if wanted is not None and namespace not in wanted:
                continue
            if access is None or access.sees(namespace, owner):
                out.append(partition)
        return out

    def _search_one(self, partition: str, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        try:
            return self.index.search(partition, vector, k)
        except ValueError as exc:  # a vector of another dimension than the namespace's
            namespace = split_partition(partition)[0]
            raise InvalidRequest(f"Namespace '{namespace}': {exc}", param="vector") from None

    @staticmethod
    def _filters_rows(where: MemoryFilter) -> bool:
        return (
            where.data_source is not None
            or where.min_confidence is not None
            or where.processing_status is not None
        )

    async def catch_up(self) -> None:
        """Apply the writes other processes made to the shared store since the last call (one
        store query when there are none). A gap in the log (trimmed while this process was
        behind) rebuilds the index from the store."""
        async with self._catching_up:
            while True:
                changes = await self.store.changes_after(self._seen_change, _CHANGES_BATCH)
                if not changes:
                    return
                if changes[0][0] != self._seen_change + 1:
                    log.info("memory: change log trimmed past this process; rebuilding the index")
                    self._seen_change = await self.store.last_change()
                    self.index.clear()
                    self._own_writes.clear()
                    await self.rebuild_index()
                    self._cache.clear()
                    return
                self._seen_change = changes[-1][0]
                await self._apply(changes)
                if len(changes) < _CHANGES_BATCH:
                    return

    async def _apply(self, changes: Sequence[tuple[int, str, str, str | None, bool]]) -> None:
        latest: dict[str, tuple[str, bool]] = {}
        deleted: list[tuple[str, str]] = []
        for _, memory_id, namespace, _, was_deleted in changes:
            latest[memory_id] = (namespace, was_deleted)
            if was_deleted:
                deleted.append((namespace, memory_id))
        # Every delete first, also of an id written again later in the batch: the new row may be
        # in another partition (another namespace or owner), where the old vector must not stay,
        # and whatever this process remembered writing under that id is not what the store holds.
        self.forget(deleted)
        rows = await self.store.get_many([i for i, (_, was_deleted) in latest.items() if not was_deleted])
        own = self._own_writes
        mine = [own.pop(m.id, None) if own else None for m in rows]
        digests = iter(
            await _digests(
                [
                    m.embedding
                    for m, e in zip(rows, mine, strict=True)
                    if e is not None and m.embedding is not None
                ]
            )
        )
        by_partition: dict[str, list[tuple[str, Sequence[float]]]] = {}
        for m, entry in zip(rows, mine, strict=True):
            partition = partition_of(m.namespace, m.owner)
            if entry is not None and m.embedding is not None and entry == (partition, next(digests)):
                continue  # this process put this very vector in this partition, and it is still there
            if m.embedding is not None and (self.index.ndim is None or len(m.embedding) == self.index.ndim):
                by_partition.setdefault(partition, []).append((m.id, m.embedding))
        for partition, items in by_partition.items():
            if len(items) > _INLINE_ADD_MAX:
                await asyncio.to_thread(self.index.add, partition, items)
            else:
                self.index.add(partition, items)
        self.forget_cached_searches({ns for ns, _ in latest.values()})

    # ----- memory-augmented chat

    async def context_for(
        self, prompt: str, namespaces: Sequence[str], top_k: int, access: MemoryAccess | None = None
    ) -> list[Hit]:
        """Memories to add to a chat request about ``prompt`` (only those ``access`` may read),
        best first; not counted as accessed: the caller records those it sends (``record_access``)."""
        return await self.search(
            prompt,
            None,
            top_k,
            MemoryFilter(namespaces=namespaces),
            access,
            accessed=False,
            namespaces_param="memory.namespaces",
        )

    # ----- access counts, batched

    def record_access(self, ids: Iterable[str]) -> None:
        """Count these memories as accessed once each (written to the store in batches)."""
        self._pending_access.update(ids)

    async def flush_access(self) -> None:
        if not self._pending_access:
            return
        counts, self._pending_access = self._pending_access, Counter()
        try:
            await self.store.touch(counts, datetime.now(UTC))
        except Exception:
            # Access counts are best effort: put them back for the next flush.
            self._pending_access.update(counts)
            raise

    async def _flush_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self._flush_every_s)
            rounds += 1
            if self._follow_idle:
                try:
                    await self.catch_up()
                except Exception:  # the next round (or search) tries again
                    log.warning("memory: could not read the store's change log; will retry", exc_info=True)
            # Each step failing on its own, said as what it is; none ends the loop.
            try:
                await self.flush_access()
            except Exception:  # a failing store: the counts wait for the next round
                log.warning("memory: could not write access counts; will retry", exc_info=True)
            if rounds % _SAVE_EVERY_ROUNDS == 0 and self._owns_files:
                try:
                    await self.save_index()  # bounds what a crash loses
                except Exception:  # e.g. the disk: the files keep the last save until the next
                    log.warning("memory: could not save the index; will retry", exc_info=True)
                    continue  # the log is kept: the last saved files may need all of it at start
                if self._follow:
                    try:
                        await self.store.trim_changes(_CHANGES_KEPT)
                    except Exception:
                        log.warning(
                            "memory: could not trim the store's change log; will retry", exc_info=True
                        )

    def figures(self) -> dict[str, float]:
        """What the metrics collector exports (``observability.metrics.MemoryView``)."""
        sealed, dead = self.index.segments()
        out: dict[str, float] = {
            "index_vectors": len(self.index),
            "index_sealed_segments": sealed,
            "index_dead_vectors": dead,
            "search_cache_hits": self.cache_hits,
            "search_cache_misses": self.cache_misses,
        }
        stats = self.store.pool_stats()
        if stats is not None:
            out.update(
                pool_acquisitions=stats.acquisitions_total,
                pool_served_idle=stats.served_idle_total,
                pool_waits=stats.waits_total,
                pool_replaced_dead=stats.replaced_dead_total,
                pool_open=stats.open,
                pool_in_use=stats.in_use,
                pool_efficiency=stats.efficiency,
            )
        return out

    # ----- helpers

    async def _vectors_for(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self.config.embedding_model
        if model is None:
            raise InvalidRequest(
                "This gateway has no memory.embedding_model in its policy: send 'embedding' / 'vector' "
                "with the request.",
                param="embedding",
            )
        vectors = await self._embed(model, texts)
        if vectors:
            self._model_ndim = len(vectors[0])  # known now: a client's vector is checked against it
        return vectors

    async def check_dimensions(
        self,
        vectors: Sequence[Sequence[float]],
        params: Sequence[str] = (),
        *,
        model_made: Sequence[Sequence[float]] = (),
    ) -> None:
        """Refuse vectors the index cannot hold, before anything is written (or embedded);
        ``params[k]`` names vector ``k`` as the client wrote it (default ``embedding``), and
        ``model_made`` are vectors the embedding model just made for the same write. While the
        memory holds no vector, a client's must have the embedding model's dimension (when the
        policy names one): the first vector stored fixes the memory's, and a client's 3 numbers
        made every text write and search a 400 and the next start fail."""
        if not vectors and not model_made:
            return
        expected = self.index.ndim or (len(model_made[0]) if model_made else None)
        if expected is None:
            expected = await self._model_dimension() or len(vectors[0])
        for k, vector in enumerate([*vectors, *model_made]):
            if len(vector) != expected:
                param = params[k] if k < len(params) else "embedding"
                raise InvalidRequest(
                    f"Invalid value for '{param}': {len(vector)} dimensions; this memory holds "
                    f"{expected}-dimensional vectors (one embedding model for all memories).",
                    param=param,
                )

    async def _index_add(
        self, namespace: str, owner: str | None, items: Sequence[tuple[str, Sequence[float]]]
    ) -> None:
        partition = partition_of(namespace, owner)
        try:
            if len(items) > _INLINE_ADD_MAX:  # adding costs ~1 ms per vector: not on the loop
                await asyncio.to_thread(self.index.add, partition, items)
            else:
                self.index.add(partition, items)
        except ValueError as exc:
            raise InvalidRequest(f"Namespace '{namespace}': {exc}", param="embedding") from None

    def _cache_key(
        self, vector: Sequence[float], top_k: int, where: MemoryFilter, partitions: list[str]
    ) -> str:
        raw = orjson.dumps(
            [
                list(vector),
                top_k,
                sorted(partitions),
                where.data_source,
                where.min_confidence,
                where.processing_status,
            ]
        )
        return hashlib.sha256(raw).hexdigest()

    def _cached(self, key: str) -> list[tuple[str, float]] | None:
        ttl = self.config.search_cache_ttl_s
        entry = self._cache.get(key)
        if entry is None or ttl <= 0:
            return None
        stored_at, _, scored = entry
        if self._clock() - stored_at > ttl:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return scored

    def _remember(self, key: str, namespaces: frozenset[str], scored: list[tuple[str, float]]) -> None:
        if self.config.search_cache_ttl_s <= 0:
            return
        self._cache[key] = (self._clock(), namespaces, scored)
        if len(self._cache) > _SEARCH_CACHE_MAX:
            self._cache.popitem(last=False)

    def drop_search_cache(self) -> int:
        """Forget every cached search (a memory cleanup); returns how many were dropped."""
        count = len(self._cache)
        self._cache.clear()
        return count

    def now(self) -> float:
        """The service's clock, in seconds (monotonic): ``index_saved_at`` is on it."""
        return self._clock()

    @property
    def owns_index_files(self) -> bool:
        """Whether this process writes the index files (one process of a worker set does)."""
        return self._owns_files

    @property
    def index_save_interval_s(self) -> float:
        """How often this process saves the index while it runs (when it owns the files)."""
        return self._flush_every_s * _SAVE_EVERY_ROUNDS

    def forget_cached_searches(self, namespaces: Collection[str]) -> None:
        """Drop cached searches over any of ``namespaces``: after a write to them, or a change
        the service did not make itself (e.g. the lifecycle archiving memories)."""
        stale = [k for k, (_, spaces, _) in self._cache.items() if not spaces.isdisjoint(namespaces)]
        for k in stale:
            del self._cache[k]


def _digest(vector: Sequence[float]) -> bytes:
    """A vector as the store and the index keep it (float32), hashed: what ``_own_writes``
    compares, so a vector given in float64 matches the row read back."""
    return hashlib.blake2b(struct.pack(f"<{len(vector)}f", *vector), digest_size=16).digest()


async def _digests(vectors: Sequence[Sequence[float]]) -> list[bytes]:
    """``_digest`` of each vector; off the loop for a batch (~25 us a 1,536-dimension vector)."""
    if len(vectors) > _INLINE_ADD_MAX:
        return await asyncio.to_thread(lambda: [_digest(v) for v in vectors])
    return [_digest(v) for v in vectors]


def _passes(memory: Memory, where: MemoryFilter) -> bool:
    if where.data_source is not None and memory.data_source != where.data_source:
        return False
    if where.min_confidence is not None and memory.confidence_score < where.min_confidence:
        return False
    return where.processing_status is None or memory.processing_status == where.processing_status


_OWNER_LOCK = ".owner.lock"
# Index directories a ``serve --workers N`` parent locked before forking (``hold_index_dir``).
_HELD: dict[Path, int] = {}


class IndexDirectoryInUse(StartupError):
    """Another process holds the index directory (``_lock_index_dir``)."""


def _lock_index_dir(directory: Path) -> int:
    """Take the index directory for this process: an exclusive ``flock`` on a file in it, held
    (by the returned descriptor) while the process runs, released by the kernel when it exits.
    Two gateways that both wrote one directory (two ``serve`` started in one folder) raced on its
    files and each missed the other's memories; the second now refuses to start, saying why
    (``serve --workers N`` shares one directory among its workers: only worker 0 writes it)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        held = _HELD.get(directory.resolve())
        if held is not None:  # a forked worker of the parent that holds it: share the parent's lock
            return os.dup(held)  # (a flock belongs to the open file, which the fork and a dup share)
        fd = os.open(directory / _OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        # A path under a regular file, in /proc, read-only, not permitted: the one ``cannot
        # start`` line, not a traceback (an outside probe).
        raise StartupError(
            f"the memory index directory {directory} cannot be used ({exc.strerror or exc}): set "
            "memory.index_dir to a directory this process may create and write"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexDirectoryInUse(
            f"the memory index directory {directory} is in use by another gateway process; run "
            "several processes as 'serve --workers N' (they share it), or give this one its own "
            "memory.index_dir (and memory store)"
        ) from None
    return fd


def hold_index_dir(directory: str | Path) -> None:
    """Lock the index directory in a ``serve --workers N`` parent, before it forks, for as long as
    the set runs: worker 0, which writes the files, takes the parent's lock (``_lock_index_dir``)
    and may die and restart without leaving a gap in which another gateway could take the
    directory. ``IndexDirectoryInUse`` when another process holds it."""
    path = Path(directory)
    _HELD[path.resolve()] = _lock_index_dir(path)
