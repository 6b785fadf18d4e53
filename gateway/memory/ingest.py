"""File ingestion: an uploaded file becomes memories through a pipeline at constant memory.

    spool file --(thread: read 1 MiB, parse, chunk)--> [chunk queue] --(N embedding workers:
    batches of up to ``embed_batch`` texts through the gateway's own embeddings routing)-->
    [store queue] --(one writer: MemoryService.add in batches of up to ``store_batch``)--> index

Both queues hold at most ``queue_batches`` batches, so a slow provider stops the reader (its
thread blocks on the full queue) and what is resident does not grow with the file: about
``(2 * queue_batches + embed_concurrency) * embed_batch`` chunks at most.

Ids are ``memory_id(job key, chunk index)``: the job key hashes the file's content, its owner,
namespace and chunking (``jobs.job_key``), so the same file sent twice is the same job, and
chunks already stored are found by id and neither embedded nor written again. The job's state is
saved in the memory store after every write; ``resume_from`` (every chunk below it is stored)
is where a resumed run starts.

A job that fails on the provider or the store (after the routing's own retries and failover)
is *paused*: its spool file is kept and ``resume`` continues it. A job cut by a restart is
*interrupted*; it resumes the same way when its spool file survived, else by uploading the
file again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError, HTTPStatusError, NotFound, PayloadTooLarge
from gateway.memory.access import MemoryAccess
from gateway.memory.chunking import Chunker, ChunkOptions, chunk_text
from gateway.memory.formats import READ_BYTES, FieldOptions, Problem, read_file
from gateway.memory.jobs import (
    ACTIVE,
    FINISHED,
    RESUMABLE,
    IngestJob,
    JobOptions,
    JobProblem,
    job_key,
    memory_id,
)
from gateway.memory.service import MemoryService, NewMemory
from gateway.memory.sql import utc_now
from gateway.policy.model import Ingest

log = logging.getLogger("gateway.memory.ingest")

_PUT_POLL_S = 0.2  # how often a reader blocked on a full queue checks whether its job stopped
_LIST_MAX = 200
# A job the store shows running that was saved this recently is taken to be running in another
# process (a running job saves after every write, every second or so).
_ALIVE_S = 60.0
_CANCEL_POLL_S = 1.0  # how often a running job looks for a cancel another process received


@dataclass(frozen=True, slots=True)
class Spooled:
    """An upload written to the spool: its file, size and content hash."""

    path: str
    file: str
    size: int
    content_sha256: str


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
    items: list[NewMemory] = field(default_factory=list)  # set by the embedding stage


class _Stopped(Exception):
    """The job stopped while its reader waited (cancel, pause, shutdown)."""


class _CancelledElsewhere(Exception):
    """Another process of the gateway marked the job cancelled in the store."""


@dataclass(slots=True)
class _Live:
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


class IngestService:
    """Runs ingest jobs in this process and answers for jobs of any process from the store.

    ``clock`` gives wall times (started_at, ...); ``timer`` monotonic seconds (rates, ETA).
    ``recover``: at start, mark jobs the store still shows running as interrupted (one process
    of ``serve --workers N`` does it)."""

    def __init__(
        self,
        memory: MemoryService,
        config: Ingest,
        *,
        clock: Callable[[], datetime] = utc_now,
        timer: Callable[[], float] = time.monotonic,
        recover: bool = True,
    ) -> None:
        self.memory = memory
        self.config = config
        self._clock = clock
        self._timer = timer
        self._recover = recover
        self._live: dict[str, _Live] = {}
        self._slots = asyncio.Semaphore(config.max_concurrent_jobs)
        self._executor: ThreadPoolExecutor | None = None
        self.jobs_started = 0
        self.jobs_finished: dict[str, int] = {}
        self.bytes_read = 0
        self.chunks_stored = 0

    # ----- lifecycle

    async def start(self) -> None:
        """Create the spool directory; mark jobs cut by a restart as interrupted."""
        await asyncio.to_thread(Path(self.config.spool_dir).mkdir, parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.max_concurrent_jobs, thread_name_prefix="ingest-reader"
        )
        if not self._recover:
            return
        await asyncio.to_thread(_remove_partial_uploads, self.config.spool_dir)
        for job in await self.memory.store.recent_jobs(None, sorted(ACTIVE), 1000):
            job.status = "interrupted"
            job.error = (
                f"the gateway stopped while this job ran ({job.percent:g} % read, {job.resume_from} chunks "
                "stored); POST /v1/memory/jobs/{id}/resume, or upload the file again, to continue"
            ).replace("{id}", job.id)
            job.updated_at = self._clock()
            await self.memory.store.save_job(job)

    async def close(self) -> None:
        """Stop every running job (saved as interrupted, resumable) and the reader threads."""
        for live in list(self._live.values()):
            live.stop_reason = live.stop_reason or "interrupted"
            live.stop.set()
            if live.task is not None:
                live.task.cancel()
        tasks = [live.task for live in self._live.values() if live.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ----- uploads

    def check_writable(self, namespace: str, access: MemoryAccess | None) -> None:
        """``PermissionDenied`` when ``access`` may not write ``namespace`` (before any byte is read)."""
        if access is not None:
            access.check_write(namespace)

    async def spool(self, chunks: AsyncIterator[bytes], file: str) -> Spooled:
        """Write an upload to a new file in the spool directory, hashing it as it comes;
        ``PayloadTooLarge`` (and nothing kept) as soon as it passes ``max_file_bytes``."""
        limit = self.config.max_file_bytes
        path = os.path.join(self.config.spool_dir, f"upload-{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        f = await asyncio.to_thread(open, path, "wb")
        pending = bytearray()
        try:
            async for block in chunks:
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(limit)
                pending += block
                if len(pending) >= READ_BYTES:  # one thread hop a MiB, however the blocks come
                    await asyncio.to_thread(_write_hashed, f, digest, bytes(pending))
                    pending.clear()
            await asyncio.to_thread(_write_hashed, f, digest, bytes(pending))
        except BaseException:
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(_remove, path)
            raise
        await asyncio.to_thread(f.close)
        return Spooled(path, os.path.basename(file) or "upload", size, digest.hexdigest())

    async def discard(self, spooled: Spooled) -> None:
        """Delete a spooled upload that will not become a job (its form was refused)."""
        await asyncio.to_thread(_remove, spooled.path)

    async def submit(self, spooled: Spooled, options: JobOptions, access: MemoryAccess | None) -> IngestJob:
        """Start (or continue) the job for a spooled upload; returns it as it is now.

        The same file sent the same way is the same job: running, it is returned as it is; stored
        (finished, paused or cut by a restart), it continues after its last stored batch."""
        self.check_writable(options.namespace, access)
        owner = access.team if access is not None else None
        key = job_key(spooled.content_sha256, owner, options)
        job_id = f"job_{key[:24]}"
        path = os.path.join(self.config.spool_dir, job_id + _extension(spooled.file))
        live = self._live.get(job_id)
        if live is not None:
            await asyncio.to_thread(_remove, spooled.path)
            return replace(live.job)
        job = await self.memory.store.get_job(job_id)
        if job is not None and job.status in ACTIVE and self._fresh(job):
            await asyncio.to_thread(_remove, spooled.path)
            return job  # running in another process of this gateway (serve --workers N)
        await asyncio.to_thread(os.replace, spooled.path, path)
        if job is None:
            job = IngestJob(
                id=job_id,
                key=key,
                owner=owner,
                file=spooled.file,
                content_sha256=spooled.content_sha256,
                bytes_total=spooled.size,
                options=options,
                started_at=self._clock(),
            )
        else:
            job.file, job.options = spooled.file, options  # the name may differ; the content does not
        return await self._launch(job, path, access)

    def _fresh(self, job: IngestJob) -> bool:
        """Whether a job the store shows active was saved lately (its process is alive: a running
        job saves after every write) rather than left so by a process that died."""
        at = job.updated_at or job.started_at
        return (self._clock() - at).total_seconds() < _ALIVE_S

    async def _launch(self, job: IngestJob, path: str, access: MemoryAccess | None) -> IngestJob:
        job.status, job.error, job.finished_at = "queued", None, None
        job.bytes_done, job.chunks_done = 0, job.resume_from
        job.updated_at = self._clock()
        await self.memory.store.save_job(job)
        live = self._live[job.id] = _Live(job, path, access)
        live.task = asyncio.create_task(self._run(live), name=f"ingest {job.id}")
        self.jobs_started += 1
        return replace(job)

    # ----- jobs

    async def get(self, job_id: str, access: MemoryAccess | None) -> IngestJob:
        """The job as it is now (``NotFound`` when unknown or another team's)."""
        live = self._live.get(job_id)
        job = replace(live.job) if live is not None else await self.memory.store.get_job(job_id)
        if job is None or (access is not None and job.owner != access.team):
            raise NotFound(f"No ingest job with id '{job_id}'.", param="id", code="job_not_found")
        return job

    async def recent(
        self, access: MemoryAccess | None, statuses: list[str] | None, limit: int
    ) -> list[IngestJob]:
        """The caller's most recent jobs (every job in open mode), newest first."""
        owner = access.team if access is not None else None
        jobs = await self.memory.store.recent_jobs(owner, statuses, min(limit, _LIST_MAX))
        return [replace(self._live[j.id].job) if j.id in self._live else j for j in jobs]

    async def cancel(self, job_id: str, access: MemoryAccess | None, *, purge: bool) -> IngestJob:
        """Stop a job: what it stored stays (its memories carry ``job_id`` in their metadata)
        unless ``purge``, which deletes them."""
        job = await self.get(job_id, access)
        live = self._live.get(job_id)
        if live is not None and live.task is not None:
            live.stop_reason = "cancelled"
            live.stop.set()
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
            job = live.job
        elif job.status in ACTIVE and self._fresh(job):
            job = await self._cancel_elsewhere(job)
        elif job.status != "done":
            job.status, job.finished_at = "cancelled", self._clock()
            await asyncio.to_thread(_remove_spool, self.config.spool_dir, job.id)
        if purge:
            job.warnings.append(f"purged: {await self._purge(job)} memories deleted")
        job.updated_at = self._clock()
        await self.memory.store.save_job(job)
        return replace(job)

    async def _cancel_elsewhere(self, job: IngestJob) -> IngestJob:
        """Cancel a job another process runs: mark it cancelled in the store, which that process
        reads before each write, and wait (up to ``_ALIVE_S``) until it has recorded its end, so
        that a purge comes after its last write."""
        deadline = self._timer() + _ALIVE_S
        while True:
            current = await self.memory.store.get_job(job.id) or job
            if current.status not in ACTIVE and current.finished_at is not None:
                return current
            if current.status != "cancelled":  # again, if its save crossed ours
                current.status, current.updated_at = "cancelled", self._clock()
                await self.memory.store.save_job(current)
            if self._timer() > deadline:
                return current
            await asyncio.sleep(_PUT_POLL_S)

    async def _cancelled_in_store(self, job_id: str) -> bool:
        stored = await self.memory.store.get_job(job_id)
        return stored is not None and stored.status == "cancelled"

    async def resume(self, job_id: str, access: MemoryAccess | None) -> IngestJob:
        """Continue a paused, interrupted or cancelled job from its last stored batch, with
        the file kept in the spool; 409 when it is not resumable or its file is gone."""
        job = await self.get(job_id, access)
        if job_id in self._live:
            return job
        if job.status not in RESUMABLE:
            raise HTTPStatusError(409, f"Job '{job_id}' is {job.status}; only a stopped job can resume.")
        path = await asyncio.to_thread(_spool_file, self.config.spool_dir, job_id)
        if path is None:
            raise HTTPStatusError(
                409, f"The file of job '{job_id}' is no longer kept: upload it again to continue the job."
            )
        self.check_writable(job.options.namespace, access)
        return await self._launch(job, path, access)

    async def events(
        self, job_id: str, access: MemoryAccess | None
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """("progress", figures) every ``progress_interval_s`` while the job runs, then ("done",
        job) or ("error", job). A job of another process is followed through the store."""
        job = await self.get(job_id, access)
        while True:
            live = self._live.get(job_id)
            if live is not None:
                job = live.job
            elif job.status not in FINISHED:
                job = await self.get(job_id, access)
            if job.status in FINISHED:
                yield ("done" if job.status == "done" else "error"), job.to_json()
                return
            yield "progress", self.progress(job, live)
            await asyncio.sleep(self.config.progress_interval_s)

    def progress(self, job: IngestJob, live: _Live | None) -> dict[str, Any]:
        """Percent, bytes, chunks, rates (per second, this run) and ETA (seconds) of a job."""
        rate = chunk_rate = 0.0
        if live is not None and live.started_mono:
            elapsed = max(self._timer() - live.started_mono, 1e-6)
            rate = (job.bytes_done - live.bytes_at_start) / elapsed
            chunk_rate = (job.chunks_done - live.chunks_at_start) / elapsed
        eta = (job.bytes_total - job.bytes_done) / rate if rate > 0 else None
        return {
            "id": job.id,
            "status": job.status,
            "percent": job.percent,
            "bytes_done": job.bytes_done,
            "bytes_total": job.bytes_total,
            "chunks_done": job.chunks_done,
            "memories_created": job.memories_created,
            "errors_count": job.errors_count,
            "bytes_per_s": round(rate, 1),
            "chunks_per_s": round(chunk_rate, 1),
            "eta_s": round(eta, 1) if eta is not None else None,
        }

    def figures(self) -> dict[str, float]:
        """For the metrics: jobs running here, jobs started, bytes read, memories created."""
        return {
            "jobs_running": len(self._live),
            "jobs_started": self.jobs_started,
            "bytes_read": self.bytes_read,
            "chunks_stored": self.chunks_stored,
        }

    def finished_by_status(self) -> dict[str, int]:
        return dict(self.jobs_finished)

    def live_job(self, job_id: str) -> _Live | None:
        """The running job's pipeline state (tests read its counters)."""
        return self._live.get(job_id)

    # ----- the pipeline

    async def _run(self, live: _Live) -> None:
        job = live.job
        try:
            async with self._slots:
                job.status = "running"
                live.started_mono = self._timer()
                live.bytes_at_start, live.chunks_at_start = job.bytes_done, job.chunks_done
                if await self._cancelled_in_store(job.id):  # while it was queued here
                    raise _CancelledElsewhere
                await self._pipeline(live)
            job.status = "done"
            if job.chunks_seen == 0:
                job.warnings.append("the file has no text: no memories were created")
        except _CancelledElsewhere:
            job.status = "cancelled"
        except asyncio.CancelledError:
            job.status = live.stop_reason or "interrupted"
            if job.status == "interrupted":
                job.error = "the gateway stopped while this job ran; resume it to continue"
        except GatewayError as error:
            if error.http_status == 429 or error.http_status >= 500:
                job.status = "paused"
                job.error = (
                    f"paused: {error.message} (the embedding provider or the store failed after the "
                    f"gateway's retries); POST /v1/memory/jobs/{job.id}/resume to continue"
                )
            else:
                job.status, job.error = "failed", error.message
        except ValueError as error:  # a file its format's reader cannot open at all
            job.status, job.error = "failed", str(error)
        # The last resort of a background task: nothing else would see the exception, and the
        # job must end in a state its owner can read.
        except Exception:
            log.exception("ingest job failed", extra={"fields": {"job": job.id}})
            job.status, job.error = "failed", "internal error (see the gateway's log)"
        finally:
            live.stop.set()
            del self._live[job.id]
            job.finished_at = job.updated_at = self._clock()
            self.jobs_finished[job.status] = self.jobs_finished.get(job.status, 0) + 1
            if job.status in ("done", "cancelled", "failed"):
                await asyncio.to_thread(_remove, live.path)
            with contextlib.suppress(GatewayError):  # the store failing now: the row keeps the last save
                await self.memory.store.save_job(replace(job))
            log.info(
                "ingest job ended",
                extra={"fields": {"job": job.id, "status": job.status, "memories": job.memories_created}},
            )

    async def _pipeline(self, live: _Live) -> None:
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

    async def _watch_for_cancel(self, live: _Live) -> None:
        """Stop the job when another process marks it cancelled in the store (``serve --workers
        N``: the cancel may reach any worker), even while its provider is stuck."""
        while True:
            await asyncio.sleep(_CANCEL_POLL_S)
            with contextlib.suppress(GatewayError):  # a store that fails now: the writes will say
                if await self._cancelled_in_store(live.job.id) and live.task is not None:
                    live.stop_reason = "cancelled"
                    live.stop.set()
                    live.task.cancel()
                    return

    async def _read_stage(self, live: _Live, out: asyncio.Queue[_Batch | None], workers: int) -> None:
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

    def _batches(self, live: _Live) -> Iterator[_Batch]:
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
        batch = _Batch(0, skip_below, 0)
        items = read_file(live.path, opts.format, FieldOptions(opts.text_field, opts.metadata_fields))
        for item in items:
            if live.stop.is_set():
                raise _Stopped
            if isinstance(item, Problem):
                if index >= skip_below:
                    batch.problems.append(item)
                position = before = item.position
                continue
            pieces = stream.push(item.text) if item.stream else iter(chunk_text(item.text, options))
            for piece in pieces:
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

    async def _embed_stage(
        self, live: _Live, source: asyncio.Queue[_Batch | None], out: asyncio.Queue[_Batch | None]
    ) -> None:
        job = live.job
        while (batch := await source.get()) is not None:
            if batch.chunks:
                ids = [memory_id(job.key, c.index) for c in batch.chunks]
                stored = await self.memory.existing_ids(ids)
                todo = [(i, c) for i, c in zip(ids, batch.chunks, strict=True) if i not in stored]
                vectors = await self.memory.embed_texts([c.text for _, c in todo]) if todo else []
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

    async def _store_stage(self, live: _Live, source: asyncio.Queue[_Batch | None], workers: int) -> None:
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

    async def _write(self, live: _Live, group: list[_Batch]) -> None:
        """Store a group of batches; a cancel lets a write under way finish first, so the job
        counts everything that reached the store (and its memories carry its id)."""
        write = asyncio.ensure_future(self._write_now(live, group))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write])
            raise

    async def _write_now(self, live: _Live, group: list[_Batch]) -> None:
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
            self.bytes_read += max(0, batch.position - job.bytes_done)
            job.bytes_done = max(job.bytes_done, batch.position)
            job.chunks_seen = max(job.chunks_seen, batch.end)
            live.stored_seqs[batch.seq] = batch.end
        while live.next_seq in live.stored_seqs:  # the stored prefix: where a resumed run starts
            job.resume_from = live.stored_seqs.pop(live.next_seq)
            live.next_seq += 1
        job.updated_at = self._clock()
        if await self._cancelled_in_store(job.id):  # by a cancel another process received
            raise _CancelledElsewhere
        await self.memory.store.save_job(replace(job))

    async def _purge(self, job: IngestJob) -> int:
        """Delete the memories the job stored (ids ing_<key>_0 .. _<chunks_seen - 1>)."""
        deleted = 0
        step = self.config.store_batch
        for start in range(0, job.chunks_seen, step):
            ids = [memory_id(job.key, i) for i in range(start, min(start + step, job.chunks_seen))]
            existing = sorted(await self.memory.existing_ids(ids))
            if existing:
                deleted += await self.memory.delete(existing)
        return deleted


def _extension(file: str) -> str:
    """The upload's extension for its spool file's name, when it is a plain one (the name is the
    client's: nothing else of it reaches a path)."""
    ext = os.path.splitext(file)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,10}", ext) else ""


def _write_hashed(f: Any, digest: Any, block: bytes) -> None:
    f.write(block)
    digest.update(block)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _spool_file(spool_dir: str, job_id: str) -> str | None:
    """The spool file kept for ``job_id`` (its name is the job id and the upload's extension)."""
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return None
    for name in names:
        if os.path.splitext(name)[0] == job_id:
            return os.path.join(spool_dir, name)
    return None


def _remove_partial_uploads(spool_dir: str) -> None:
    """Uploads cut by a stop before they became jobs (``upload-*.part``)."""
    for name in os.listdir(spool_dir):
        if name.startswith("upload-") and name.endswith(".part"):
            _remove(os.path.join(spool_dir, name))


def _remove_spool(spool_dir: str, job_id: str) -> None:
    path = _spool_file(spool_dir, job_id)
    if path is not None:
        _remove(path)
