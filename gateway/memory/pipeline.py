"""The ingest pipeline of one job: read and chunk on a thread, embed, store, at constant memory.

    spool file --(thread: read 1 MiB, parse, chunk)--> [chunk queue] --(N embedding workers:
    batches of up to ``embed_batch`` texts through the gateway's own embeddings routing)-->
    [store queue] --(one writer: MemoryService.add in batches of up to ``store_batch``)--> index

Both queues hold at most ``queue_batches`` batches, so a slow provider stops the reader (its
thread blocks on the full queue) and what the pipeline holds does not grow with the file: about
``(2 * queue_batches + embed_concurrency + 1) * embed_batch`` chunks at most. ``ingest.py``
starts jobs and decides what their ending means; this module only runs them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest, NoHealthyDeployment
from gateway.memory.access import MemoryAccess
from gateway.memory.chunking import Chunker, ChunkOptions, chunk_text
from gateway.memory.formats import READ_BYTES, FieldOptions, Problem, read_file
from gateway.memory.jobs import MAX_ERRORS_KEPT, IngestJob, JobProblem, memory_id
from gateway.memory.service import MemoryService, NewMemory
from gateway.policy.model import Ingest

_PUT_POLL_S = 0.2  # how often a reader blocked on a full queue checks whether its job stopped
# Every chunk carries a copy of the upload's metadata and of its record's other fields (a .jsonl
# line, a .csv row): 8 MiB of fields beside 8 MiB of text on one line, in chunks of 50
# characters, were 167,000 copies, a terabyte to store from a 16 MiB file. The metadata a job
# copies into its chunks is bounded by this many bytes a byte of the file (and the floor).
_METADATA_BYTES_PER_BYTE = 16
_MIN_METADATA_BYTES = 64 << 20
_CANCEL_POLL_S = 1.0  # how often a running job looks for a cancel another process received
# An embedding refused because another call holds a half-open breaker's probe is asked again
# this often, for up to _PROBE_PATIENCE_S, rather than pausing the job (``Pipeline._embed``).
_PROBE_POLL_S = 0.2
_PROBE_PATIENCE_S = 60.0


@dataclass(slots=True)
class _Chunk:
    index: int
    text: str
    metadata: dict[str, Any]


@dataclass(slots=True)
class _Batch:
    """Up to ``embed_batch`` chunks, numbered ``seq`` in file order, with the problems met
    while reading them; ``end`` is the chunk index after them, ``position`` the bytes read."""

    seq: int
    end: int
    position: int
    chunks: list[_Chunk] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0  # met but not kept (``add_problem``)
    items: list[NewMemory] = field(default_factory=list)  # set by the embedding stage

    def add_problem(self, problem: Problem) -> None:
        """Keep the first ``MAX_ERRORS_KEPT`` problems (as many as a job lists) and count the
        others: a file of bad lines was one object a line held until its batch was sent."""
        if len(self.problems) < MAX_ERRORS_KEPT:
            self.problems.append(problem)
        else:
            self.more_problems += 1


class _Stopped(Exception):
    """The job stopped while its reader waited (cancel, pause, shutdown)."""


class CancelledElsewhere(Exception):
    """Another process of the gateway marked the job cancelled in the store."""


@dataclass(slots=True)
class RunningJob:
    """A job running (or queued) in this process."""

    job: IngestJob
    path: str
    access: MemoryAccess | None
    task: asyncio.Task[None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""  # cancelled | interrupted
    started_mono: float = 0.0
    bytes_at_start: int = 0
    chunks_at_start: int = 0
    chunks_read: int = 0  # chunks the reader handed to the chunk queue (back-pressure tests)
    next_seq: int = 0
    stored_seqs: dict[int, int] = field(default_factory=dict)  # seq -> end, stored out of order


class Pipeline:
    """Runs jobs' pipelines; reader threads come from its own executor (``max_threads``: one per
    job that may run at once), never the loop's default one, which the index and stores use."""

    def __init__(
        self, memory: MemoryService, config: Ingest, clock: Callable[[], datetime], max_threads: int
    ) -> None:
        self.memory = memory
        self.config = config
        self._clock = clock
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self.bytes_read = 0  # for the metrics
        self.chunks_stored = 0

    def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self._max_threads, thread_name_prefix="ingest-reader")

    def close(self) -> None:
        """After every job stopped: the reader threads end."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def run(self, live: RunningJob) -> None:
        """The three stages; the first error of any of them stops the others and is raised."""
        workers = self.config.embed_concurrency
        chunks: asyncio.Queue[_Batch | None] = asyncio.Queue(self.config.queue_batches)
        embedded: asyncio.Queue[_Batch | None] = asyncio.Queue(self.config.queue_batches)
        watcher = asyncio.create_task(self._watch_for_cancel(live))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read_stage(live, chunks, workers))
                for _ in range(workers):
                    group.create_task(self._embed_stage(live, chunks, embedded))
                group.create_task(self._store_stage(live, embedded, workers))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            watcher.cancel()

    async def _watch_for_cancel(self, live: RunningJob) -> None:
        """Stop the job when another process marks it cancelled in the store (``serve --workers
        N``: the cancel may reach any worker), even while its provider is stuck."""
        while True:
            await asyncio.sleep(_CANCEL_POLL_S)
            with contextlib.suppress(GatewayError):  # a store that fails now: the writes will say
                if await cancelled_in_store(self.memory, live.job.id) and live.task is not None:
                    live.stop_reason = "cancelled"
                    live.stop.set()
                    live.task.cancel()
                    return

    async def _read_stage(self, live: RunningJob, out: asyncio.Queue[_Batch | None], workers: int) -> None:
        loop = asyncio.get_running_loop()

        def put(batch: _Batch | None) -> None:
            future = asyncio.run_coroutine_threadsafe(out.put(batch), loop)
            while True:
                try:
                    future.result(timeout=_PUT_POLL_S)
                    return
                except concurrent.futures.TimeoutError:
                    if live.stop.is_set():
                        future.cancel()
                        raise _Stopped from None

        def produce() -> None:
            try:
                for batch in self._batches(live):
                    put(batch)
                    live.chunks_read += len(batch.chunks)
                for _ in range(workers):
                    put(None)
            except _Stopped:
                return

        assert self._executor is not None
        future = loop.run_in_executor(self._executor, produce)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            live.stop.set()
            await asyncio.wait([future])  # the thread sees the flag within _PUT_POLL_S
            raise

    def _batches(self, live: RunningJob) -> Iterator[_Batch]:
        """The file's chunks in batches (on the reader thread): chunks below ``resume_from`` are
        counted but not sent (stored before), and neither are the problems met before them.

        A batch's ``position`` (bytes read, for progress) is interpolated inside a stream piece
        from where its last chunk ends, so progress moves within each 1 MiB read too."""
        job, opts = live.job, live.job.options
        options = ChunkOptions(opts.chunk_chars, opts.overlap_chars)
        skip_below, size = job.resume_from, self.config.embed_batch
        own = {"file": job.file, "job_id": job.id}  # last: a record's own fields cannot hide them
        stream = Chunker(options)
        index = seq = position = sent_at = before = streamed = 0
        shared_bytes = len(orjson.dumps({**opts.metadata, **own}))
        metadata_limit = max(_MIN_METADATA_BYTES, _METADATA_BYTES_PER_BYTE * job.bytes_total)
        metadata_bytes = 0  # copied into the file's chunks so far (stored before included)
        batch = _Batch(0, skip_below, 0)
        items = read_file(live.path, opts.format, FieldOptions(opts.text_field, opts.metadata_fields))
        for item in items:
            if live.stop.is_set():
                raise _Stopped
            if isinstance(item, Problem):
                if index >= skip_below:
                    batch.add_problem(item)
                position = before = item.position
                if position - sent_at >= READ_BYTES:  # progress through a run of bad lines too
                    batch.end, batch.position = max(index, skip_below), position
                    yield batch
                    seq, sent_at = seq + 1, position
                    batch = _Batch(seq, batch.end, position)
                continue
            pieces = stream.push(item.text) if item.stream else iter(chunk_text(item.text, options))
            chunk_metadata = shared_bytes + (len(orjson.dumps(dict(item.metadata))) if item.metadata else 0)
            for piece in pieces:
                metadata_bytes += chunk_metadata
                if metadata_bytes > metadata_limit:
                    raise ValueError(
                        f"the metadata copied into each chunk (the upload's metadata and the record's "
                        f"other fields, {chunk_metadata} bytes at {_where(item.where)}) passes "
                        f"{metadata_limit} bytes for this file, {_METADATA_BYTES_PER_BYTE} a byte of it: "
                        "name the fields to keep with metadata_fields, or use larger chunks"
                    )
                if item.stream and item.text:
                    done = (piece.offset + len(piece.text) - streamed) / len(item.text)
                    position = before + int((item.position - before) * min(1.0, max(0.0, done)))
                if index >= skip_below:
                    meta = {
                        **opts.metadata,
                        **item.metadata,
                        **own,
                        **item.where,
                        "offset": piece.offset,
                        "chunk_index": index,
                    }
                    batch.chunks.append(_Chunk(index, piece.text, meta))
                index += 1
                if len(batch.chunks) >= size:
                    batch.end, batch.position = index, position
                    yield batch
                    seq, sent_at = seq + 1, position
                    batch = _Batch(seq, index, position)
            position = before = item.position
            streamed += len(item.text) if item.stream else 0
            if position - sent_at >= READ_BYTES:  # progress, even through text stored before
                batch.end, batch.position = max(index, skip_below), position
                yield batch
                seq, sent_at = seq + 1, position
                batch = _Batch(seq, batch.end, position)
        for piece in stream.finish():
            if index >= skip_below:
                meta = {**opts.metadata, **own, "offset": piece.offset, "chunk_index": index}
                batch.chunks.append(_Chunk(index, piece.text, meta))
            index += 1
        batch.end, batch.position = max(index, skip_below), position
        yield batch

    async def _stored(self, job: IngestJob, ids: list[str]) -> set[str]:
        """The chunk ids among ``ids`` this job (or an earlier run of it) stored: the same owner
        and namespace. An id held by another memory fails the job (a 4xx: ``failed``): skipped as
        stored, someone else's text (written under a guessed id) stood in for the file's chunk."""
        stored = set()
        for memory in await self.memory.store.get_many(ids):
            if memory.owner != job.owner or memory.namespace != job.options.namespace:
                raise InvalidRequest(
                    f"the memory id {memory.id!r} of this file's chunk is held by a memory that is not "
                    "this job's (another namespace or team)"
                )
            stored.add(memory.id)
        return stored

    async def _embed_stage(
        self, live: RunningJob, source: asyncio.Queue[_Batch | None], out: asyncio.Queue[_Batch | None]
    ) -> None:
        job = live.job
        while (batch := await source.get()) is not None:
            if batch.chunks:
                ids = [memory_id(job.key, c.index) for c in batch.chunks]
                stored = await self._stored(job, ids)
                todo = [(i, c) for i, c in zip(ids, batch.chunks, strict=True) if i not in stored]
                vectors = await self._embed([c.text for _, c in todo]) if todo else []
                job.embedding_calls += 1 if todo else 0
                batch.items = [
                    NewMemory(
                        namespace=job.options.namespace,
                        content=c.text,
                        embedding=tuple(v),
                        metadata=c.metadata,
                        data_source=job.options.data_source,
                        id=i,
                    )
                    for (i, c), v in zip(todo, vectors, strict=True)
                ]
            await out.put(batch)
        await out.put(None)

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        """``embed_texts``, waiting for a breaker's probe. A half-open breaker lets one call
        through and refuses the others at once (no healthy deployment, retry in 0-1 s) until that
        call's verdict; a job's workers call together, so on resuming after an outage one took
        the probe and the other's refusal paused the job again, every time, until some other
        traffic closed the breaker. Such a refusal is asked again until the verdict (a breaker
        that opens again answers with its cooldown, which pauses the job as before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PROBE_PATIENCE_S
        while True:
            try:
                return await self.memory.embed_texts(texts)
            except NoHealthyDeployment as refused:
                if refused.retry_after_s > 1.0 or loop.time() > deadline:
                    raise
            await asyncio.sleep(_PROBE_POLL_S)

    async def _store_stage(
        self, live: RunningJob, source: asyncio.Queue[_Batch | None], workers: int
    ) -> None:
        ended = 0
        waiting: _Batch | None = None
        while ended < workers:
            first = waiting or await source.get()
            waiting = None
            if first is None:
                ended += 1
                continue
            group, rows = [first], len(first.items)
            while not source.empty():  # join what is ready, up to store_batch rows
                following = source.get_nowait()
                if following is None:
                    ended += 1
                elif rows + len(following.items) > self.config.store_batch:
                    waiting = following
                    break
                else:
                    group.append(following)
                    rows += len(following.items)
            await self._write(live, group)
        if waiting is not None:
            await self._write(live, [waiting])

    async def _write(self, live: RunningJob, group: list[_Batch]) -> None:
        """Store a group of batches; a cancel lets a write under way finish first, so the job
        counts everything that reached the store (and its memories carry its id)."""
        write = asyncio.ensure_future(self._write_now(live, group))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write])
            raise

    async def _write_now(self, live: RunningJob, group: list[_Batch]) -> None:
        job = live.job
        items = [item for batch in group for item in batch.items]
        step = self.config.store_batch
        for start in range(0, len(items), step):
            added = await self.memory.add(
                items[start : start + step], live.access, skip_existing=True, read_back=False
            )
            job.memories_created += len(added)
            self.chunks_stored += len(added)
        for batch in group:
            job.chunks_done += len(batch.chunks)
            for problem in batch.problems:
                job.add_error(JobProblem(problem.where, problem.message))
            job.errors_count += batch.more_problems
            self.bytes_read += max(0, batch.position - job.bytes_done)
            job.bytes_done = max(job.bytes_done, batch.position)
            job.chunks_seen = max(job.chunks_seen, batch.end)
            live.stored_seqs[batch.seq] = batch.end
        while live.next_seq in live.stored_seqs:  # the stored prefix: where a resumed run starts
            job.resume_from = live.stored_seqs.pop(live.next_seq)
            live.next_seq += 1
        job.updated_at = self._clock()
        if await cancelled_in_store(self.memory, job.id):  # by a cancel another process received
            raise CancelledElsewhere
        await self.memory.store.save_job(replace(job))


def _where(where: Mapping[str, int]) -> str:
    """ "line 7", "page 3", or "the text" for a stream piece."""
    return " ".join(f"{k} {v}" for k, v in where.items()) or "the text"


async def cancelled_in_store(memory: MemoryService, job_id: str) -> bool:
    """Whether the job's row says cancelled (a cancel another process of the gateway received)."""
    stored = await memory.store.get_job(job_id)
    return stored is not None and stored.status == "cancelled"
