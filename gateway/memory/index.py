"""The semantic index of memories: usearch HNSW graphs per namespace, persisted to a directory.

Segments (issue 15): a namespace is a growing segment in RAM plus sealed segments. Once the growing
one holds ``seal_vectors`` vectors (131,072: ~60 MB of nodes at 64 dimensions f32, ~230 MB at 384,
~830 MB at 1,536; half of that once the namespace has a sealed segment) it is written to
``{stem}.{first key}.seg``, memory-mapped read-only in its place and a new growing segment starts, so what a namespace holds in private memory is bounded by one
segment and its id map (~85 B a memory of the growing segment), not by its size: a sealed
segment's id rows go to a file beside it (``{stem}.{first key}.sids``, ``sealed_ids.py``), also
mapped, with one byte per row left in RAM (removed since or not). The sealed files' pages are the
kernel's page cache, read in as searches touch them and dropped under memory pressure. A search
asks every segment (sealed ones for ``k`` plus their dead keys) and merges by distance, so it costs
about one graph walk per segment, more with the caches shared between graphs: at 100,000 x 384,
segments of 65,536 and 34,464 searched in 3.2 ms (p50, random vectors) where one graph took 1.7 ms.
The default keeps a namespace of 100,000 in one graph (issue 6's search target). A sealed graph
cannot change: a removal or upsert of a memory in one marks its row removed and counts the key
dead there (searches drop it; the removed keys are saved with the growing segment's id map; nothing compacts a sealed segment yet, so a namespace rewritten
many times over asks ever more of its old segments). A worker of ``serve --workers N`` that does
not own the files seals into ``.private-{pid}`` of its own. The index maps segment files itself and
hands usearch the buffer: usearch's ``view`` of a path that cannot be opened closes a file
descriptor that is not its own.

Memory ids are strings; usearch keys are unsigned 64-bit integers, so each namespace keeps a
two-way map (``idmap.IdMap`` for the growing segment: numpy arrays and one bytearray, no Python
object per memory; ``sealed_ids.SealedIds`` for each sealed one).
Keys come from a per-namespace counter and are never reused: an upsert removes the id's old key
and adds the vector under a new one. Every vector of an index has the same dimension, fixed by
the constructor or by the first vector added (one embedding model feeds all namespaces, and one
query vector is searched across several of them).

Files, in the index's own directory (``save()`` deletes the ``*.usearch``, ``*.ids``, ``*.seg``
and ``*.sids`` files no namespace refers to, and ``*.ids.json`` maps of the former format):
``{stem}.usearch`` (the growing segment) and ``{stem}.ids`` (its id map and the sealed rows
removed since their seal, binary, checksummed) per namespace, the stem being the namespace made
safe for a file name, its sealed segments and their id rows (written once, when sealed), and
``index.json`` (the manifest, which lists each namespace's
segments and key ranges). Each file is written under a temporary name, fsynced and renamed, the
manifest last; ``load()`` checks every file against the manifest and the configuration and
returns False for anything missing, corrupt or mismatched (an index saved as JSON id maps
included), and the service then rebuilds from the store. A save of format 2 (one graph per
namespace) loads as a growing segment, sealed at the next add; one of format 3 with sealed
segments (their ids in the namespace's map) is rebuilt.

Memory (issue 15): at 64 dimensions (f32) a memory costs ~550-600 bytes at rest, ~500 of them
usearch's (the vector, 256, and its graph links) and ~85 the id map (20 per row, 16 for the
hash, the id's bytes); the dict-based maps cost ~730 in all and, as long-lived small objects
allocated among the ingest pipeline's garbage, kept pymalloc arenas from being freed. A save
writes the graph straight to its file under the lock, not into a copy in memory as large as
the graph. usearch grows its capacity to the next power of two on add (its Python binding has no
``reserve``): up to ~36 bytes per unused slot until the index is reloaded.

Threads: usearch releases the GIL while it adds or searches, and neither its per-thread search
contexts nor its growth on add are safe against a concurrent call, so each namespace has a lock
held by every call into its graph and every change of its id map. At 100,000 384-dimensional
memories (f32, expansion_search 128) a search takes ~1.5 ms, p99 ~2 ms, on one core
(benchmarks/memory_index.py), so it may run on the event loop thread or in worker threads; an
add costs ~1.5 ms of CPU per vector (1,300 vectors/s on two cores), so batches belong in a
worker thread (``MemoryService`` adds them so). ``add`` takes the lock for ``ADD_CHUNK`` vectors
at a time and lets waiting searches in between chunks, so a search waits for one chunk of a bulk
load (p99 ~30 ms in the benchmark), never for a whole batch.

A save writes the namespace's files into the page cache (0.5-1 s at 300,000 x 64 floats on two
busy cores) holding a second lock, ``changing``, which every change holds too (taken before
``lock``), and not ``lock``: writing the graph out only reads it, as a search does, so searches
go on during a save and only adds and removals wait for it (holding ``lock`` through the write
put the search p99 during a 500 MB ingestion at 415 ms). fsync and rename come after.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import mmap
import os
import re
import shutil
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson
from usearch.compiled import MetricKind
from usearch.index import Index, Matches

from gateway.memory import idmap, sealed_ids
from gateway.memory.idmap import IdMap
from gateway.memory.sealed_ids import SealedIds

if TYPE_CHECKING:
    from gateway.memory.records import VectorIndex

log = logging.getLogger("gateway.memory.index")

Matrix = npt.NDArray[np.float32]

ADD_CHUNK = 16  # vectors added per hold of a namespace's lock: bounds how long a search waits
# Vectors a namespace's growing segment holds in RAM before it is sealed to a file and mapped
# (the policy's memory.index_segment_vectors): a power of two, as usearch grows its capacity.
SEAL_VECTORS = 131_072
_WRITER_WAIT_S = 0.05  # how long a writer lets waiting searches go first, per chunk
# 4 keeps a sealed segment's id rows in a file beside it (sealed_ids.py); 3 added sealed segments
# with their ids in the namespace's map (read when it has none); 2 (one graph per namespace) loads
# as a growing segment; 1 (id maps as JSON lists, .ids.json) is rebuilt from the store when found.
_FORMAT = 4
_FORMATS_READ = (2, 3, 4)
_MANIFEST = "index.json"
_GRAPH_SUFFIX = ".usearch"
_IDS_SUFFIX = ".ids"
_SEGMENT_SUFFIX = ".seg"  # {stem}.{first key}.seg: a sealed segment, written once
_PRIVATE_PREFIX = ".private-"  # {directory}/.private-{pid}: a worker's own sealed segments
_OLD_SUFFIXES = (".ids.json",)  # deleted by save()
_TMP_SUFFIX = ".tmp"
_SAFE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
# What a missing, truncated or foreign file makes usearch, orjson or the checks below raise.
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError)


class _Segment:
    """A sealed segment: a usearch graph memory-mapped from its file (read-only), holding keys in
    [lo, hi), and its id rows (``SealedIds``, mapped from the file beside it). ``dead`` counts
    its keys whose memories were since removed or replaced: they stay in the graph (a view cannot
    change) and are dropped from answers by the id rows."""

    __slots__ = ("file", "hi", "ids", "index", "lo", "mapping")

    def __init__(self, view: tuple[Index, memoryview], ids: SealedIds, file: str) -> None:
        self.index, self.mapping = view  # the mapping outlives no index that reads it
        self.ids = ids
        self.lo, self.hi, self.file = ids.first, ids.end, file

    @property
    def dead(self) -> int:
        return len(self.index) - self.ids.live

    @property
    def ids_file(self) -> str:
        return _ids_file(self.file)

    def listing(self) -> list[Any]:
        """The segment as the manifest lists it: [file, first key, end key]."""
        return [self.file, self.lo, self.hi]


class _Graph:
    """One namespace: its sealed segments, the growing segment (``index``, in RAM, keys from
    ``mutable_lo``) and its id <-> key map (``ids``: the growing segment's keys only; a sealed
    segment's are in its file), and a change counter for save()."""

    __slots__ = (
        "changing",
        "ids",
        "index",
        "lock",
        "mutable_lo",
        "namespace",
        "next_key",
        "saved_segments",
        "saved_version",
        "sealed",
        "searches_done",
        "searches_waiting",
        "turn",
        "version",
    )

    def __init__(self, namespace: str, index: Index) -> None:
        self.namespace = namespace
        self.index = index
        self.sealed: tuple[_Segment, ...] = ()  # oldest first; replaced whole, under ``lock``
        self.mutable_lo = 0
        self.saved_segments: list[list[Any]] = []  # [file, lo, hi] as the manifest lists them
        self.ids = IdMap()  # memory id <-> usearch key, of the growing segment
        self.next_key = 0
        self.version = 1  # bumped on every change; saved_version is the one on disk
        self.saved_version = 0
        self.lock = threading.Lock()  # held by every call into usearch and every map change
        # Held by every change (before ``lock``) and by a save, which holds only this one: a
        # save waits for no search and no search waits for a save; changes wait for both.
        self.changing = threading.Lock()
        self.searches_waiting = 0  # these two are guarded by turn
        self.searches_done = 0
        self.turn = threading.Condition(threading.Lock())

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Hold the lock for a search, counted so that a writer between chunks lets it in first."""
        with self.turn:
            self.searches_waiting += 1
        try:
            with self.lock:
                yield
        finally:
            with self.turn:
                self.searches_waiting -= 1
                self.searches_done += 1
                self.turn.notify_all()

    def let_searches_in(self) -> None:
        """Wait until the searches waiting now have run (at most _WRITER_WAIT_S). Python's locks
        are not fair: a writer re-taking the lock at once after each chunk would starve them."""
        with self.turn:
            target = self.searches_done + self.searches_waiting
            self.turn.wait_for(lambda: self.searches_done >= target, timeout=_WRITER_WAIT_S)

    # The id <-> key lookups over every segment (under ``lock``, or ``changing`` for reads).

    def live(self) -> int:
        """How many memories the namespace holds."""
        return len(self.ids) + sum(segment.ids.live for segment in self.sealed)

    def keys_of(self, ids: Collection[str]) -> list[int]:
        """The keys of those of ``ids`` the namespace holds (an id lives in one segment only)."""
        found = self.ids.keys_of(ids)
        if self.sealed and len(found) < len(ids):
            encoded = [memory_id.encode() for memory_id in ids]
            hashes = idmap.hash_ids(encoded, len(encoded))
            for segment in self.sealed:
                found += segment.ids.keys_of(encoded, hashes)
        return found

    def ids_of(self, keys: npt.NDArray[np.uint64]) -> list[str | None]:
        """The id of each key, None for a removed one (a dead key of a sealed segment)."""
        if not self.sealed:
            return self.ids.ids_of(keys)
        found: list[str | None] = [None] * len(keys)
        bounds = np.asarray([segment.lo for segment in self.sealed] + [self.mutable_lo], dtype=np.uint64)
        which = np.searchsorted(bounds, keys, side="right") - 1
        parts: list[SealedIds | IdMap] = [segment.ids for segment in self.sealed]
        parts.append(self.ids)
        for i, part in enumerate(parts):
            at = np.flatnonzero(which == i)
            if len(at):
                for position, memory_id in zip(at.tolist(), part.ids_of(keys[at]), strict=True):
                    found[position] = memory_id
        return found

    def drop_keys(self, keys: Sequence[int]) -> None:
        """Remove ``keys`` (under ``lock``): from the growing segment's graph and map, or marked
        removed in their sealed segment's rows (a dead key its graph keeps)."""
        growing = [k for k in keys if k >= self.mutable_lo]
        if growing:
            self.index.remove(np.asarray(growing, dtype=np.uint64))
            self.ids.remove(growing)
        if len(growing) != len(keys):
            los = [segment.lo for segment in self.sealed]
            for key in keys:
                i = bisect.bisect_right(los, key) - 1
                if key < self.mutable_lo and i >= 0:
                    self.sealed[i].ids.remove([key])


_EXACT_SEARCH_MAX = 2048


class HnswIndex:
    """Approximate nearest neighbours by cosine similarity; implements ``VectorIndex``.

    ``ndim`` None takes the dimension of the first vector added (or of the loaded index).
    ``connectivity`` and ``expansion_add`` shape the graph as it is built (the seed asks 16 and
    200); ``expansion_search`` trades search time for recall and can differ between runs (128:
    recall@10 0.96 on embedding-like vectors at 100,000, where 64 gives 0.86).
    ``dtype`` is how usearch stores vectors: f32 returns exact similarities; bf16 (usearch's own
    default) had the recall of f32 at half the memory and twice the build and search speed in
    the benchmark, with similarities off by up to ~0.001.
    ``seal_vectors``: how many vectors a namespace's first growing segment holds before it is
    sealed (written to a file and memory-mapped; the policy's ``memory.index_segment_vectors``);
    later segments of the namespace are sealed at half of it (``_seal_at``).
    """

    def __init__(
        self,
        directory: str | Path,
        ndim: int | None = None,
        *,
        connectivity: int = 16,
        expansion_add: int = 200,
        expansion_search: int = 128,
        dtype: str = "f32",
        seal_vectors: int = SEAL_VECTORS,
    ) -> None:
        if ndim is not None and ndim <= 0:
            raise ValueError(f"ndim must be positive, got {ndim}")
        self.directory = Path(directory)
        self._configured_ndim = ndim
        self._ndim = ndim
        self._connectivity = connectivity
        self._expansion_add = expansion_add
        self._expansion_search = expansion_search
        self._dtype = dtype
        if seal_vectors <= 0:
            raise ValueError(f"seal_vectors must be positive, got {seal_vectors}")
        self._seal_vectors = seal_vectors
        self._graphs: dict[str, _Graph] = {}
        self._loaded_change_seq: int | None = None
        self._lock = threading.Lock()  # guards _graphs and _ndim
        self._save_lock = threading.Lock()  # one save() at a time
        # Held while a segment file is written and joins its namespace, and while save() deletes
        # the files nothing refers to: a segment being sealed is never taken for a stale file.
        self._files_lock = threading.Lock()
        self._segment_dir = self.directory  # a worker that does not own the files: its own

    @property
    def ndim(self) -> int | None:
        """The dimension of every vector, None until the first add (or load)."""
        return self._ndim

    # ----- writes

    def add(self, namespace: str, items: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Add or replace (upsert) vectors by memory id; the last of repeated ids wins.

        Raises ValueError, before changing anything, when a vector has the wrong dimension or a
        NaN / infinite value.
        """
        latest = dict(items)
        if not latest:
            return
        ids = list(latest)
        matrix = self._matrix(ids, list(latest.values()))
        graph = self._graph(namespace, create=True)
        assert graph is not None
        threads = 1 if len(ids) <= ADD_CHUNK else 0  # 0: all cores, for bulk loads
        for start in range(0, len(ids), ADD_CHUNK):
            chunk = ids[start : start + ADD_CHUNK]
            with graph.changing:
                graph.let_searches_in()
                with graph.lock:
                    self._add_chunk(graph, chunk, matrix[start : start + ADD_CHUNK], threads)
                if len(graph.index) >= self._seal_at(graph):
                    self._seal(graph)

    def _seal_at(self, graph: _Graph) -> int:
        """How many vectors ``graph``'s growing segment holds before it is sealed: ``seal_vectors``
        for a namespace's first segment (a namespace up to that size is one graph, the fastest to
        search), half of it once the namespace has sealed ones (a large namespace is searched
        segment by segment anyway; the growing segment, the largest part of the index's private
        memory while a big file is ingested, then peaks at half the size)."""
        return self._seal_vectors if not graph.sealed else max(1, self._seal_vectors // 2)

    def _seal(self, graph: _Graph) -> None:
        """Write the growing segment to its file, map the file and start a new growing segment
        (under ``changing``: no change meanwhile; searches go on reading the segment). The
        segment's RAM is given back; the mapped file's pages are the kernel's page cache, read
        as searches need them and dropped under memory pressure instead of growing the heap."""
        assert self._ndim is not None
        lo, hi = graph.mutable_lo, graph.next_key
        with self._files_lock:
            directory = self._segment_dir
            directory.mkdir(parents=True, exist_ok=True)
            name = f"{_stem(graph.namespace)}.{lo}{_SEGMENT_SUFFIX}"
            tmp = directory / (_ids_file(name) + _TMP_SUFFIX)
            keys, lens, blob = graph.ids.live_rows()  # every key of the growing segment
            with open(tmp, "wb") as f:
                sealed_ids.write(f, graph.namespace, lo, hi, keys, lens, blob)
            del keys, lens, blob
            _sync_and_replace(tmp, directory / _ids_file(name))
            tmp = directory / (name + _TMP_SUFFIX)
            graph.index.save(tmp, progress=_yield_the_gil)
            _sync_and_replace(tmp, directory / name)
            view = self._view(directory / name, self._ndim)
            ids = SealedIds(directory / _ids_file(name), graph.namespace, lo, hi)
            fresh = self._new_index(self._ndim)
            with graph.lock:
                graph.sealed = (*graph.sealed, _Segment(view, ids, name))
                graph.index = fresh
                graph.ids = IdMap()
                graph.mutable_lo = hi
                graph.version += 1
        log.info(
            "memory index: segment sealed",
            extra={"fields": {"namespace": graph.namespace, "vectors": len(view[0]), "file": name}},
        )

    def _view(self, path: Path, ndim: int) -> tuple[Index, memoryview]:
        """A sealed segment's file, memory-mapped; raises ValueError when it does not match."""
        # Mapped here and handed over as a buffer: usearch's own view of a path closes a file
        # descriptor that is not its own when the file cannot be opened (stdin, in the tests).
        # usearch keeps no reference to the buffer: the segment holds it as long as it lives.
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # A graph walk reads nodes scattered over the file: no read-ahead around each fault,
        # which would read (and keep resident) pages no search asked for.
        mapped.madvise(mmap.MADV_RANDOM)
        mapping = memoryview(mapped)
        view = self._new_index(ndim)
        expected_dtype = view.dtype
        view.view(mapping)
        if view.ndim != ndim or view.metric != MetricKind.Cos or view.dtype != expected_dtype:
            raise ValueError(f"{path.name}: {view.ndim} x {view.dtype}, {view.metric}")
        return view, mapping  # expansion_search stays the constructor's (not the file's)

    @staticmethod
    def _add_chunk(graph: _Graph, ids: list[str], vectors: Matrix, threads: int) -> None:
        old = graph.keys_of(ids)
        if old:
            graph.drop_keys(old)
        keys = np.arange(graph.next_key, graph.next_key + len(ids), dtype=np.uint64)
        graph.index.add(keys, vectors, threads=threads)
        graph.next_key += len(ids)
        graph.ids.add(ids, keys)
        graph.version += 1

    def remove(self, namespace: str, ids: Sequence[str]) -> None:
        """Drop memories from a namespace; ids it does not hold are ignored."""
        graph = self._graph(namespace, create=False)
        if graph is None:
            return
        with graph.changing, graph.lock:
            keys = graph.keys_of(set(ids))
            if not keys:
                return
            graph.drop_keys(keys)
            graph.version += 1

    def clear(self) -> None:
        """Forget every namespace (the next save() deletes their files)."""
        with self._lock:
            self._graphs = {}
            self._ndim = self._configured_ndim
            self._loaded_change_seq = None

    # ----- reads

    def search(self, namespace: str, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        """Up to ``k`` (memory id, cosine similarity) pairs, best first; [] for an unknown
        namespace. Raises ValueError when ``vector`` has the wrong dimension."""
        graph = self._graph(namespace, create=False)
        if graph is None or k <= 0:
            return []
        query = self._matrix(["query"], [vector])[0]
        with graph.searching():
            if not graph.live():
                return []
            if not graph.sealed:
                keys, distances = _search_segment(graph.index, query, k, len(graph.index), 0)
            else:
                found = [_search_segment(s.index, query, k, s.ids.live, s.dead) for s in graph.sealed]
                found.append(_search_segment(graph.index, query, k, len(graph.index), 0))
                keys = np.concatenate([f[0] for f in found])
                distances = np.concatenate([f[1] for f in found])
                order = np.argsort(distances, kind="stable")
                keys, distances = keys[order], distances[order]
            ids = graph.ids_of(keys)  # None: a dead key of a sealed segment
            # usearch's cosine distance is 1 - cosine similarity.
            hits = [(i, 1.0 - d) for i, d in zip(ids, distances.tolist(), strict=True) if i is not None]
            return hits[:k]

    def namespaces(self) -> list[str]:
        """Namespaces that hold at least one vector, sorted."""
        with self._lock:
            graphs = list(self._graphs.values())
        return sorted(g.namespace for g in graphs if g.live())

    def size(self, namespace: str) -> int:
        """How many vectors the namespace holds."""
        graph = self._graph(namespace, create=False)
        return 0 if graph is None else graph.live()

    def __len__(self) -> int:
        with self._lock:
            graphs = list(self._graphs.values())
        return sum(g.live() for g in graphs)

    def segments(self) -> tuple[int, int]:
        """(sealed segments, dead vectors they still hold) over every namespace: dead vectors are
        removed or replaced memories a sealed graph cannot drop, which every search skips."""
        with self._lock:
            graphs = list(self._graphs.values())
        sealed = [segment for g in graphs for segment in g.sealed]
        return len(sealed), sum(segment.dead for segment in sealed)

    # ----- persistence

    def keep_segments_private(self) -> None:
        """For a worker of ``serve --workers N`` that does not own the index files: seal its
        segments into a directory of its own (``.private-{pid}`` in the index directory, deleted
        by ``close()``, and by the next worker to start if this one was killed) and never
        ``save()``. The directory's other files belong to the owner."""
        for path in self.directory.glob(_PRIVATE_PREFIX + "*"):
            pid = path.name[len(_PRIVATE_PREFIX) :]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
        self._segment_dir = self.directory / f"{_PRIVATE_PREFIX}{os.getpid()}"

    def close(self) -> None:
        """Delete this worker's private segments (their mappings stay valid until unmapped)."""
        if self._segment_dir != self.directory:
            shutil.rmtree(self._segment_dir, ignore_errors=True)

    def save(self, change_seq: int | None = None) -> None:
        """Write changed namespaces and the manifest atomically; delete files of dropped ones.
        ``change_seq`` goes in the manifest: the store's change log up to it is in the files
        (the next start applies what follows it). A worker that keeps its segments private
        writes nothing."""
        if self._segment_dir != self.directory:
            return
        with self._save_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._lock:
                graphs = list(self._graphs.values())
                ndim = self._ndim
            for graph in graphs:
                stem = _stem(graph.namespace)
                on_disk = (self.directory / (stem + _GRAPH_SUFFIX)).exists()
                if graph.version != graph.saved_version or not on_disk:
                    self._save_graph(graph, stem)
            manifest = {
                "format": _FORMAT,
                "metric": "cos",
                "dtype": self._dtype,
                "ndim": ndim,
                "namespaces": sorted(g.namespace for g in graphs),
                "segments": {g.namespace: g.saved_segments for g in graphs if g.saved_segments},
            }
            if change_seq is not None:
                manifest["change_seq"] = change_seq
            _write_atomically(self.directory / _MANIFEST, orjson.dumps(manifest))
            self._delete_stale()

    def _save_graph(self, graph: _Graph, stem: str) -> None:
        # Written straight into the files (the page cache): a copy in memory first would be
        # as large as the graph (121 MB at 300,000 x 64 floats, on top of the graph itself, at
        # every save during a bulk load). Under ``changing`` only: searches read the graph and
        # the id map as the write does, and go on (see the module docstring). fsync and rename
        # come after.
        graph_tmp = self.directory / (stem + _GRAPH_SUFFIX + _TMP_SUFFIX)
        ids_tmp = self.directory / (stem + _IDS_SUFFIX + _TMP_SUFFIX)
        with graph.changing:
            version = graph.version
            segments = [segment.listing() for segment in graph.sealed]
            removed = [segment.ids.removed_keys() for segment in graph.sealed]
            graph.index.save(graph_tmp, progress=_yield_the_gil)
            with open(ids_tmp, "wb") as f:
                graph.ids.write(f, graph.namespace, graph.next_key, np.concatenate([_NO_KEYS, *removed]))
        # Graph first, id map second: a crash in between leaves a pair that load() rejects
        # unless both hold the same keys (keys are never reused, so the map is then right).
        _sync_and_replace(graph_tmp, self.directory / (stem + _GRAPH_SUFFIX))
        _sync_and_replace(ids_tmp, self.directory / (stem + _IDS_SUFFIX))
        graph.saved_version = version
        graph.saved_segments = segments

    def _delete_stale(self) -> None:
        """Delete the index files no namespace in memory refers to: those of forgotten
        namespaces, segments of a namespace since cleared, what a crashed save left."""
        with self._files_lock:  # a seal writes its file and joins its namespace under it
            with self._lock:
                graphs = list(self._graphs.values())
            keep = {_MANIFEST}
            for graph in graphs:
                stem = _stem(graph.namespace)
                keep |= {stem + _GRAPH_SUFFIX, stem + _IDS_SUFFIX}
                keep |= {name for s in graph.sealed for name in (s.file, s.ids_file)}  # the saved among them
            for path in self.directory.iterdir():
                name = path.name
                if (
                    name.endswith((_GRAPH_SUFFIX, _IDS_SUFFIX, _SEGMENT_SUFFIX, sealed_ids.SUFFIX))
                    and name not in keep
                ):
                    path.unlink(missing_ok=True)
                if name.endswith(_TMP_SUFFIX) or name.endswith(_OLD_SUFFIXES):
                    path.unlink(missing_ok=True)  # left by a save that crashed

    def load(self) -> bool:
        """Replace the in-memory index with the persisted one; False (and nothing changed) when
        there is none, or it is corrupt or does not match this configuration."""
        try:
            manifest = orjson.loads((self.directory / _MANIFEST).read_bytes())
        except FileNotFoundError:
            return False
        except _LOAD_ERRORS as exc:
            log.warning("memory index: unreadable manifest in %s: %s", self.directory, exc)
            return False
        try:
            ndim, graphs = self._read(manifest)
        except _LOAD_ERRORS as exc:
            log.warning("memory index: cannot load %s: %s", self.directory, exc)
            return False
        seq = manifest.get("change_seq")
        with self._lock:
            self._graphs = graphs
            self._ndim = ndim if ndim is not None else self._configured_ndim
            self._loaded_change_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        return True

    def loaded_change_seq(self) -> int | None:
        """The store change the files ``load()`` read were saved at (None: not known)."""
        return self._loaded_change_seq

    def _read(self, manifest: Any) -> tuple[int | None, dict[str, _Graph]]:
        if manifest.get("format") not in _FORMATS_READ or manifest.get("metric") != "cos":
            raise ValueError(f"unknown format {manifest.get('format')!r} / metric {manifest.get('metric')!r}")
        if manifest.get("format") == 3 and any(manifest.get("segments", {}).values()):
            # Format 3 kept sealed segments' ids in the namespace's map, format 4 in files of
            # their own: such an index (a few hours of the project's history) is rebuilt.
            raise ValueError("sealed segments of format 3 (ids kept in the namespace map)")
        if manifest.get("dtype") != self._dtype:
            raise ValueError(f"stored as {manifest.get('dtype')!r}, configured {self._dtype!r}")
        ndim = manifest.get("ndim")
        if ndim is not None and (not isinstance(ndim, int) or ndim <= 0):
            raise ValueError(f"bad ndim {ndim!r}")
        if self._configured_ndim is not None and ndim not in (None, self._configured_ndim):
            raise ValueError(f"holds {ndim}-dimensional vectors, configured {self._configured_ndim}")
        graphs: dict[str, _Graph] = {}
        segments = manifest.get("segments", {})
        for namespace in manifest["namespaces"]:
            if ndim is None:
                raise ValueError("namespaces without a dimension")
            graphs[namespace] = self._read_graph(str(namespace), ndim, segments.get(namespace, []))
        return ndim, graphs

    def _read_graph(self, namespace: str, ndim: int, segments: list[Any]) -> _Graph:
        stem = _stem(namespace)
        try:
            with open(self.directory / (stem + _IDS_SUFFIX), "rb") as f:
                ids, next_key, removed = IdMap.read(f, namespace)
        except ValueError as exc:
            raise ValueError(f"{stem}{_IDS_SUFFIX}: {exc}") from None
        graph = _Graph(namespace, self._new_index(ndim))
        expected_dtype = graph.index.dtype
        graph.index.load(self.directory / (stem + _GRAPH_SUFFIX))
        index = graph.index
        # usearch's load adopts the file's settings: check them against ours.
        if index.ndim != ndim or index.metric != MetricKind.Cos or index.dtype != expected_dtype:
            raise ValueError(f"{stem}{_GRAPH_SUFFIX}: {index.ndim} x {index.dtype}, {index.metric}")
        sealed: list[_Segment] = []
        lo = 0
        for file, first, end in segments:
            if first != lo or end < first or not str(file).endswith(_SEGMENT_SUFFIX) or "/" in str(file):
                raise ValueError(f"{stem}: segment {file!r} [{first}, {end}) does not follow key {lo}")
            view, mapping = self._view(self.directory / str(file), ndim)
            rows = SealedIds(self.directory / _ids_file(str(file)), namespace, first, end)
            held = rows.keys()
            if len(held) != len(view) or (len(held) and not np.all(view.contains(held))):
                raise ValueError(f"{file} and {_ids_file(str(file))} hold different keys")
            sealed.append(_Segment((view, mapping), rows, str(file)))
            lo = end
        if len(removed):  # the sealed rows removed since their seal, as the last save saw them
            bounds = np.asarray([segment.lo for segment in sealed], dtype=np.uint64)
            which = np.searchsorted(bounds, removed, side="right") - 1
            if not sealed or np.any(which < 0) or int(removed.max()) >= lo:
                raise ValueError(f"{stem}{_IDS_SUFFIX}: removed keys outside the sealed segments")
            for i, segment in enumerate(sealed):
                segment.ids.restore_removed(np.sort(removed[which == i]))
        growing = ids.keys()
        present = index.contains(growing) if len(growing) else True
        if len(growing) and (int(growing[0]) < lo or int(growing[-1]) >= next_key):
            raise ValueError(f"{stem}{_IDS_SUFFIX}: keys outside the growing segment [{lo}, {next_key})")
        if len(index) != len(growing) or not np.all(present):
            raise ValueError(f"{stem}{_GRAPH_SUFFIX} and {stem}{_IDS_SUFFIX} hold different keys")
        graph.ids = ids
        graph.next_key = next_key
        graph.sealed = tuple(sealed)
        graph.mutable_lo = lo
        graph.saved_version = graph.version
        graph.saved_segments = [segment.listing() for segment in sealed]
        return graph

    # ----- helpers

    def _new_index(self, ndim: int) -> Index:
        return Index(
            ndim=ndim,
            metric=MetricKind.Cos,
            dtype=self._dtype,
            connectivity=self._connectivity,
            expansion_add=self._expansion_add,
            expansion_search=self._expansion_search,
        )

    def _graph(self, namespace: str, *, create: bool) -> _Graph | None:
        graph = self._graphs.get(namespace)
        if graph is not None or not create:
            return graph
        with self._lock:
            graph = self._graphs.get(namespace)
            if graph is None:
                assert self._ndim is not None  # set by _matrix before the first add
                graph = self._graphs[namespace] = _Graph(namespace, self._new_index(self._ndim))
            return graph

    def _matrix(self, ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> Matrix:
        """Vectors as a float32 matrix, checked; the first vector fixes the index's dimension."""
        if self._ndim is None:
            with self._lock:
                if self._ndim is None:
                    first = len(vectors[0])
                    if first == 0:
                        raise ValueError(f"{_what(ids[0])}: empty embedding")
                    self._ndim = first
        ndim = self._ndim
        try:
            matrix = np.asarray(vectors, dtype=np.float32)
        except ValueError:  # ragged: some vector has another length
            matrix = None
        if matrix is None or matrix.ndim != 2 or matrix.shape[1] != ndim:
            for memory_id, vector in zip(ids, vectors, strict=True):
                if len(vector) != ndim:
                    raise ValueError(
                        f"{_what(memory_id)}: embedding has {len(vector)} dimensions, the index holds "
                        f"{ndim}-dimensional vectors"
                    ) from None
            raise ValueError(f"embeddings must be sequences of {ndim} numbers") from None
        if not np.isfinite(matrix).all():
            bad = int(np.argwhere(~np.isfinite(matrix))[0][0])
            raise ValueError(f"{_what(ids[bad])}: embedding holds NaN or infinite values")
        return matrix


_NO_KEYS = np.zeros(0, dtype=np.uint64)
_NO_DISTANCES = np.zeros(0, dtype=np.float32)


def _search_segment(index: Index, query: Matrix, k: int, alive: int, dead: int) -> tuple[Any, Any]:
    """The keys and distances of up to ``k`` live matches in one segment: ``k + dead`` asked,
    since the ``dead`` keys it still holds may come first."""
    if alive <= 0:
        return _NO_KEYS, _NO_DISTANCES
    # Small segments are searched exactly (brute force costs less than the graph walk there,
    # and removals cannot leave unreachable nodes out of the answer).
    matches = index.search(query, min(k + dead, alive + dead), threads=1, exact=alive <= _EXACT_SEARCH_MAX)
    assert isinstance(matches, Matches)
    return matches.keys, matches.distances


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _yield_the_gil(done: int, total: int) -> bool:
    """usearch's save holds the GIL from start to end (its add and search release it): 160 ms at
    300,000 x 64 floats here, a stall of the event loop and every other thread. It calls its
    progress callback twice per node, so every 4,096th call lets other threads run; the longest
    stall at that size falls to ~90 ms (a phase of the save makes no calls) for a save ~1.6x as
    long. True: go on."""
    if not done & 4095:
        time.sleep(0)
    return True


# usearch checks a callback's annotations against (int, int) -> bool, and this module's are
# strings (``from __future__ import annotations``): give it the types themselves.
_yield_the_gil.__annotations__ = {"done": int, "total": int, "return": bool}


def _ids_file(segment_file: str) -> str:
    """The name of a sealed segment's id file: ``{stem}.{first key}.sids`` beside its ``.seg``."""
    return segment_file[: -len(_SEGMENT_SUFFIX)] + sealed_ids.SUFFIX


def _stem(namespace: str) -> str:
    """A file name stem for ``namespace``: itself when already safe, else a cleaned form plus a
    hash of the original, so that two namespaces never share files."""
    if _SAFE_STEM.fullmatch(namespace):
        return namespace
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", namespace)[:60]
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:12]
    return f"{cleaned}~{digest}"


def _write_atomically(path: Path, data: bytes | bytearray) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sync_and_replace(tmp: Path, path: Path) -> None:
    """Make a written file durable, then give it its name."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _what(memory_id: str) -> str:
    return f"memory '{memory_id}'"


if TYPE_CHECKING:

    def _conforms(index: HnswIndex) -> VectorIndex:
        return index
