"""File ingestion: an uploaded file becomes memories, as a job that runs in the background.

``IngestService`` spools uploads, starts, follows, cancels and resumes jobs, and decides what a
job's ending means; each job runs through ``pipeline.Pipeline`` (read and chunk on a thread,
embed, store, behind bounded queues: constant memory whatever the file's size).

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
import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.errors import Conflict, GatewayError, NotFound, PayloadTooLarge, quoted
from gateway.memory.access import MemoryAccess
from gateway.memory.formats import READ_BYTES
from gateway.memory.jobs import (
    ACTIVE,
    FINISHED,
    LIST_MAX,
    RESUMABLE,
    IngestJob,
    JobOptions,
    job_key,
    memory_id,
)
from gateway.memory.pipeline import CancelledElsewhere, Pipeline, RunningJob, cancelled_in_store
from gateway.memory.service import MemoryService
from gateway.memory.spool import SpoolRoom
from gateway.memory.sql import utc_now
from gateway.policy.model import Ingest

log = logging.getLogger("gateway.memory.ingest")

_CANCEL_WAIT_POLL_S = 0.2  # how often a cancel waiting for another process looks at the job
# A job the store shows running that was saved this recently is taken to be running in another
# process (a running job saves after every write, every second or so).
_ALIVE_S = 60.0


@dataclass(frozen=True, slots=True)
class Spooled:
    """An upload written to the spool: its file, size and content hash."""

    path: str
    file: str
    size: int
    content_sha256: str


@dataclass(frozen=True, slots=True)
class Submitted:
    """What an upload is: ``job`` as it is now, and the name the file was sent under."""

    job: IngestJob
    uploaded_file: str

    @property
    def duplicate_of(self) -> str | None:
        """The name the job's file was first uploaded under, when this upload's name differs."""
        return self.job.file if self.job.file != self.uploaded_file else None

    def to_json(self) -> dict[str, Any]:
        """The job as the API shows it, and, for a duplicate, what it duplicates."""
        body = self.job.to_json()
        if (first := self.duplicate_of) is not None:
            job = self.job
            body["duplicate"] = {
                "job": job.id,
                "file": first,
                "status": job.status,
                "uploaded_file": self.uploaded_file,
                "message": (
                    f"{quoted(self.uploaded_file)} has the same content as {quoted(first)}, ingested into "
                    f"namespace {quoted(job.options.namespace)} with the same chunking by job {job.id} "
                    f"({job.status}): its memories are that job's and name {quoted(first)}; nothing is "
                    "stored twice"
                ),
            }
        return body


class IngestService:
    """Runs ingest jobs in this process and answers for jobs of any process from the store.

    ``clock`` gives wall times (started_at, ...); ``timer`` monotonic seconds (rates, ETA).
    ``runner`` names this process (host, port and worker: ``app.py``) in the jobs it runs. At
    start, the jobs the store shows running that this runner ran are marked interrupted (they
    were cut by its restart), and, with ``recover`` (one process of ``serve --workers N``), so
    are other runners' jobs that no process has saved for ``_ALIVE_S``; a job another live
    process runs on the same store (a worker of the set, a replica sharing Snowflake) is left
    alone. A job the store shows running that no process has saved for ``_ALIVE_S`` is also
    shown, and saved, as interrupted when it is read (its process died: SIGKILLed)."""

    def __init__(
        self,
        memory: MemoryService,
        config: Ingest,
        *,
        clock: Callable[[], datetime] = utc_now,
        timer: Callable[[], float] = time.monotonic,
        recover: bool = True,
        runner: str | None = None,
    ) -> None:
        self.memory = memory
        self.config = config
        self._clock = clock
        self._timer = timer
        self._recover = recover
        self.runner = runner
        self._live: dict[str, RunningJob] = {}
        # Jobs being started (submit, resume) until they are in ``_live``: a second start of the
        # same job waits for the first, so parallel resumes or uploads never run it twice.
        self._starting: dict[str, asyncio.Future[None]] = {}
        self._slots = asyncio.Semaphore(config.max_concurrent_jobs)
        self._pipeline = Pipeline(memory, config, clock, config.max_concurrent_jobs)
        self.room = SpoolRoom(config.spool_dir, config.max_spool_bytes, config.min_free_disk_bytes)
        self.jobs_started = 0
        self.jobs_finished: dict[str, int] = {}

    # ----- lifecycle

    async def start(self) -> None:
        """Create the spool directory; mark jobs cut by a restart as interrupted."""
        await asyncio.to_thread(Path(self.config.spool_dir).mkdir, parents=True, exist_ok=True)
        self._pipeline.open()
        if self._recover:
            await asyncio.to_thread(_remove_partial_uploads, self.config.spool_dir)
        await asyncio.to_thread(self.room.measure)
        if not self._recover and self.runner is None:
            return
        for job in await self.memory.store.recent_jobs(None, sorted(ACTIVE), 1000):
            mine = self.runner is not None and job.runner == self.runner  # cut by this restart
            if mine or (self._recover and not self._fresh(job)):
                await self._interrupted(job, "the gateway stopped while this job ran")

    async def _interrupted(self, job: IngestJob, why: str) -> IngestJob:
        job.status = "interrupted"
        job.error = (
            f"{why} ({job.percent:g} % read, {job.resume_from} chunks "
            "stored); POST /v1/memory/jobs/{id}/resume, or upload the file again, to continue"
        ).replace("{id}", job.id)
        job.updated_at = self._clock()
        await self.memory.store.save_job(job)
        return job

    async def _alive(self, job: IngestJob) -> IngestJob:
        """``job``, or, when the store shows it running but no process has saved it for
        ``_ALIVE_S`` (the worker running it died), the same job saved as interrupted."""
        if job.status in ACTIVE and job.id not in self._live and not self._fresh(job):
            return await self._interrupted(
                job, f"the process running this job stopped (no progress for {_ALIVE_S:g} s)"
            )
        return job

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
        self._pipeline.close()

    # ----- uploads

    def check_writable(self, namespace: str, access: MemoryAccess | None) -> None:
        """``PermissionDenied`` when ``access`` may not write ``namespace`` (before any byte is read)."""
        self.memory.check_writable(namespace, access)

    async def check_room(self, expected_bytes: int) -> None:
        """``InsufficientStorage`` (507) when an upload of ``expected_bytes`` would not fit the
        spool (``SpoolRoom``): before any byte of it is read."""
        await asyncio.to_thread(self.room.check, expected_bytes)

    async def spool(self, chunks: AsyncIterator[bytes], file: str) -> Spooled:
        """Write an upload to a new file in the spool directory, hashing it as it comes;
        ``PayloadTooLarge`` as soon as it passes ``max_file_bytes`` and ``InsufficientStorage``
        before it would pass the spool's bounds (``SpoolRoom``), nothing of it kept then."""
        limit = self.config.max_file_bytes
        path = os.path.join(self.config.spool_dir, f"upload-{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        # The open submitted to a thread now, as a future of its own, so that a cleanup after a
        # cancel can wait for it: a client that leaves while the file is being opened must not
        # leave it behind either.
        opening = asyncio.get_running_loop().run_in_executor(None, open, path, "wb")
        pending = bytearray()
        try:
            f = await asyncio.shield(opening)
            async for block in chunks:
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(limit)
                pending += block
                if len(pending) >= READ_BYTES:  # one thread hop a MiB, however the blocks come
                    await asyncio.to_thread(self.room.write, f, digest, bytes(pending))
                    pending.clear()
            if pending:
                await asyncio.to_thread(self.room.write, f, digest, bytes(pending))
        except BaseException:
            # Shielded: the error is often the body's read failing as the client leaves, and
            # aiohttp's cancel of the handler then lands on this cleanup's first await; unshielded,
            # every such upload left its partial file in the spool until the next restart.
            await asyncio.shield(self._drop(opening, path))
            raise
        await asyncio.to_thread(_close_and_measure, f, self.room)
        return Spooled(path, os.path.basename(file) or "upload", size, digest.hexdigest())

    async def _drop(self, opening: asyncio.Future[Any], path: str) -> None:
        """Close (once its open has finished) and delete an upload's partial spool file."""
        with contextlib.suppress(OSError):
            f = await opening
            await asyncio.to_thread(f.close)
        await self._unspool(path)

    async def discard(self, spooled: Spooled) -> None:
        """Delete a spooled upload that will not become a job (its form was refused)."""
        await self._unspool(spooled.path)

    async def _unspool(self, path: str | None) -> None:
        """Delete a spool file (when there is one) and measure the spool again (the gauge)."""

        def remove() -> None:
            if path is not None:
                _remove(path)
            self.room.measure()

        await asyncio.to_thread(remove)

    async def submit(self, spooled: Spooled, options: JobOptions, access: MemoryAccess | None) -> IngestJob:
        """``upload``'s job."""
        return (await self.upload(spooled, options, access)).job

    async def upload(self, spooled: Spooled, options: JobOptions, access: MemoryAccess | None) -> Submitted:
        """Start (or continue) the job for a spooled upload; returns it as it is now.

        The same file sent the same way is the same job: running, it is returned as it is; stored
        (finished, paused or cut by a restart), it continues after its last stored batch. The same
        content under another name (``b.txt`` with ``a.txt``'s bytes, same owner, namespace and
        chunking) is a duplicate of that job: its memories are the job's, which keeps its first
        name and options; it is not run again when done, it continues when stopped, and the
        answer says so (``Submitted.duplicate_of``). A job that stored nothing (cancelled and
        purged, failed at once) takes the new name, as a new upload."""
        self.check_writable(options.namespace, access)
        owner = access.team if access is not None else None
        key = job_key(spooled.content_sha256, owner, options)
        job_id = f"job_{key[:24]}"
        path = os.path.join(self.config.spool_dir, job_id + _extension(spooled.file))
        await self._started(job_id)
        live = self._live.get(job_id)
        if live is not None:
            await self._unspool(spooled.path)
            return Submitted(replace(live.job), spooled.file)
        with self._starting_job(job_id):
            job = await self.memory.store.get_job(job_id)
            if job is not None and job.status in ACTIVE and self._fresh(job):
                await self._unspool(spooled.path)
                return Submitted(job, spooled.file)  # running in another process (serve --workers N)
            duplicate = job is not None and job.file != spooled.file and _holds_memories(job)
            if job is not None and duplicate and job.status == "done":
                await self._unspool(spooled.path)
                return Submitted(job, spooled.file)
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
            elif not duplicate:
                job.file, job.options = spooled.file, options  # the name may differ; the content does not
            return Submitted(await self._launch(job, path, access), spooled.file)

    async def _started(self, job_id: str) -> None:
        """Wait while another call starts ``job_id`` (``_starting``)."""
        while (pending := self._starting.get(job_id)) is not None:
            await asyncio.wait([pending])

    @contextlib.contextmanager
    def _starting_job(self, job_id: str) -> Iterator[None]:
        """Claim the start of ``job_id`` (call with no await since ``_started`` returned)."""
        done = asyncio.get_running_loop().create_future()
        self._starting[job_id] = done
        try:
            yield
        finally:
            del self._starting[job_id]
            done.set_result(None)

    def _fresh(self, job: IngestJob) -> bool:
        """Whether a job the store shows active was saved lately (its process is alive: a running
        job saves after every write) rather than left so by a process that died."""
        at = job.updated_at or job.started_at
        return (self._clock() - at).total_seconds() < _ALIVE_S

    async def _launch(self, job: IngestJob, path: str, access: MemoryAccess | None) -> IngestJob:
        job.status, job.error, job.finished_at = "queued", None, None
        job.runner = self.runner
        job.bytes_done, job.chunks_done = 0, job.resume_from
        job.updated_at = self._clock()
        await self.memory.store.save_job(job)
        live = self._live[job.id] = RunningJob(job, path, access)
        live.task = asyncio.create_task(self._run(live), name=f"ingest {job.id}")
        self.jobs_started += 1
        return replace(job)

    # ----- jobs

    async def get(self, job_id: str, access: MemoryAccess | None) -> IngestJob:
        """The job as it is now (``NotFound`` when unknown, another team's, or in a namespace the
        caller's key may not read)."""
        live = self._live.get(job_id)
        job = replace(live.job) if live is not None else await self.memory.store.get_job(job_id)
        if job is None or (access is not None and not _visible(job, access)):
            raise NotFound(f"No ingest job with id {quoted(job_id)}.", param="id", code="job_not_found")
        return await self._alive(job)

    async def recent(
        self,
        access: MemoryAccess | None,
        statuses: list[str] | None,
        limit: int,
        after: str | None = None,
    ) -> tuple[list[IngestJob], bool]:
        """The caller's most recent jobs (every job in open mode), newest first, at most
        ``limit`` (and ``LIST_MAX``), listed after job ``after`` when given (``NotFound`` when
        the caller cannot see that job); and whether more follow."""
        owner = access.team if access is not None else None
        limit = min(limit, LIST_MAX)
        if after is not None:
            try:
                await self.get(after, access)  # a cursor the caller may use
            except NotFound as exc:  # the query's parameter, not a path's id
                raise NotFound(exc.message, param="after", code="job_not_found") from None
        jobs: list[IngestJob] = []
        while True:  # pages of the store's order until ``limit`` visible ones (the key's namespaces)
            rows = await self.memory.store.recent_jobs(owner, statuses, limit + 1, after)
            more = len(rows) > limit
            rows = rows[:limit]
            jobs += [j for j in rows if access is None or _visible(j, access)]
            if len(jobs) >= limit or not more:
                break
            after = rows[-1].id
        more = more or len(jobs) > limit
        jobs = jobs[:limit]
        found = [replace(self._live[j.id].job) if j.id in self._live else await self._alive(j) for j in jobs]
        return found, more

    async def cancel(self, job_id: str, access: MemoryAccess | None, *, purge: bool) -> IngestJob:
        """Stop a job: what it stored stays (its memories carry ``job_id`` in their metadata)
        unless ``purge``, which deletes them. The key must be able to write the job's namespace,
        as for an upload or a resume (a read-only key cancelled and purged jobs)."""
        job = await self.get(job_id, access)
        self.check_writable(job.options.namespace, access)
        # The job's start is claimed while it is cancelled: a resume or upload of it that comes
        # meanwhile waits and then finds it cancelled (one that read it paused while its file was
        # being deleted started it again: it failed on the missing file after the DELETE had
        # answered ``cancelled``, or paused again).
        await self._started(job_id)
        with self._starting_job(job_id):
            job = await self.get(job_id, access)
            live = self._live.get(job_id)
            if live is not None and live.task is not None:
                job = await self._stop(live)
            elif job.status in ACTIVE and self._fresh(job):
                job = await self._cancel_elsewhere(job)
            elif job.status != "done":
                job.status, job.finished_at = "cancelled", self._clock()
                await self._unspool(await asyncio.to_thread(_spool_file, self.config.spool_dir, job.id))
            return await self._cancelled(job, purge)

    async def _stop(self, live: RunningJob) -> IngestJob:
        """Cancel a job running here and wait until it has ended."""
        live.stop_reason = "cancelled"
        live.stop.set()
        assert live.task is not None
        while not live.task.done():  # again if a cancel is lost on the way (see ``_slot``)
            live.task.cancel()
            await asyncio.wait([live.task], timeout=_CANCEL_WAIT_POLL_S * 5)
        job = live.job
        if job.status in ACTIVE:  # cancelled before it first ran: ``_run``'s ``finally`` never did
            job.status, job.finished_at = "cancelled", self._clock()
            if self._live.get(job.id) is live:
                del self._live[job.id]
            self.jobs_finished["cancelled"] = self.jobs_finished.get("cancelled", 0) + 1
            await self._unspool(live.path)
        return job

    async def _cancelled(self, job: IngestJob, purge: bool) -> IngestJob:
        """Save a cancelled job, after deleting what it stored when ``purge``."""
        if purge:
            job.warnings.append(f"purged: {await self._purge(job)} memories deleted")
            # Nothing of it is stored now: the file sent again is embedded from its first chunk
            # (``resume_from`` kept said its chunks below were stored, and a re-upload skipped
            # them: the job ended done with those memories missing), and a purged finished job is
            # no longer done (``memory ingest --resume`` skipped its file as ingested).
            job.resume_from = job.chunks_done = job.memories_created = 0
            if job.status == "done":
                job.status = "cancelled"
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
            await asyncio.sleep(_CANCEL_WAIT_POLL_S)

    async def resume(self, job_id: str, access: MemoryAccess | None) -> IngestJob:
        """Continue a paused, interrupted or cancelled job from its last stored batch, with
        the file kept in the spool; 409 when it is not resumable or its file is gone."""
        job = await self.get(job_id, access)
        while job_id in self._starting:  # another call is starting it: see how it left it
            await self._started(job_id)
            job = await self.get(job_id, access)
        if job_id in self._live:
            return job
        if job.status not in RESUMABLE:
            raise Conflict(
                f"Job '{job_id}' is {job.status}; only a stopped job can resume.", code="job_not_resumable"
            )
        with self._starting_job(job_id):
            path = await asyncio.to_thread(_spool_file, self.config.spool_dir, job_id)
            if path is None:
                raise Conflict(
                    f"The file of job '{job_id}' is no longer kept: upload it again to continue the job.",
                    code="job_file_gone",
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

    def progress(self, job: IngestJob, live: RunningJob | None) -> dict[str, Any]:
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
        """For the metrics: jobs running here, jobs started, bytes read, memories created, and the
        spool's bytes (on disk, every process's: as last measured, at each upload's block and
        each spool file's removal)."""
        return {
            "jobs_running": len(self._live),
            "jobs_started": self.jobs_started,
            "bytes_read": self._pipeline.bytes_read,
            "chunks_stored": self._pipeline.chunks_stored,
            "spool_bytes": self.room.bytes_held,
        }

    def finished_by_status(self) -> dict[str, int]:
        return dict(self.jobs_finished)

    def live_job(self, job_id: str) -> RunningJob | None:
        """The running job's pipeline state (tests read its counters)."""
        return self._live.get(job_id)

    # ----- the pipeline

    @contextlib.asynccontextmanager
    async def _slot(self, job: IngestJob) -> AsyncIterator[None]:
        """One of the ``max_concurrent_jobs`` slots; a job queued for one is saved every
        ``_ALIVE_S`` / 3, so other processes do not take it for the job of a dead one."""
        while True:
            # Not ``asyncio.wait_for``: on Python 3.11 it returns the acquired slot when a cancel
            # arrives in the same turn as the slot, and the cancel is lost (a DELETE right after
            # the 202 then waited until its client gave up: the job ran on with its reader
            # stopped, its other stages waiting for it for ever).
            try:
                async with asyncio.timeout(_ALIVE_S / 3):
                    await self._slots.acquire()
                break
            except TimeoutError:
                job.updated_at = self._clock()
                await self.memory.store.save_job(job)
        try:
            yield
        finally:
            self._slots.release()

    async def _run(self, live: RunningJob) -> None:
        job = live.job
        try:
            async with self._slot(job):
                job.status = "running"
                live.started_mono = self._timer()
                live.bytes_at_start, live.chunks_at_start = job.bytes_done, job.chunks_done
                if await cancelled_in_store(self.memory, job.id):  # while it was queued here
                    raise CancelledElsewhere
                await self._pipeline.run(live)
            job.status = "done"
            if job.chunks_seen == 0:
                job.warnings.append("the file has no text: no memories were created")
        except CancelledElsewhere:
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
        except FileNotFoundError:  # its spool file deleted under it (by hand, or a spool wiped)
            job.status, job.error = "failed", "the job's file is no longer kept: upload the file again"
        # The last resort of a background task: nothing else would see the exception, and the
        # job must end in a state its owner can read.
        except Exception:
            log.exception("ingest job failed", extra={"fields": {"job": job.id}})
            job.status, job.error = "failed", "internal error (see the gateway's log)"
        finally:
            live.stop.set()
            if self._live.get(job.id) is live:
                del self._live[job.id]
            job.finished_at = job.updated_at = self._clock()
            self.jobs_finished[job.status] = self.jobs_finished.get(job.status, 0) + 1
            if job.status in ("done", "cancelled", "failed"):
                await self._unspool(live.path)
            with contextlib.suppress(GatewayError):  # the store failing now: the row keeps the last save
                await self.memory.store.save_job(replace(job))
            log.info(
                "ingest job ended",
                extra={"fields": {"job": job.id, "status": job.status, "memories": job.memories_created}},
            )

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


def _close_and_measure(f: Any, room: SpoolRoom) -> None:
    f.close()
    room.measure()  # the gauge shows the upload


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


def _holds_memories(job: IngestJob) -> bool:
    """Whether a stored job has memories (or is done): one that stored nothing, cancelled and
    purged or failed at once, is taken over by the next upload of its content, name and all."""
    return job.status == "done" or job.resume_from > 0 or job.memories_created > 0


def _visible(job: IngestJob, access: MemoryAccess) -> bool:
    """Whether the caller sees ``job``: its team's, in a namespace the key may read."""
    return job.owner == access.team and access.sees(job.options.namespace, job.owner)
