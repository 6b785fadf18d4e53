"""IngestService on a real SQLite store, below HTTP: what ``serve --workers N`` needs, with two
services over one store standing for two processes (each knows only its own running jobs)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from gateway.errors import Conflict, UpstreamConnectError
from gateway.memory.index import HnswIndex
from gateway.memory.ingest import IngestService
from gateway.memory.jobs import IngestJob, JobOptions
from gateway.memory.service import MemoryService
from gateway.memory.sql import utc_now
from gateway.memory.sqlite_store import SQLiteMemoryStore
from gateway.policy.model import Ingest, MemoryConfig


class Provider:
    """Embeddings that wait on ``gate`` (set: they flow); it closes by itself once
    ``hold_after`` texts went through."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.texts = 0
        self.hold_after: int | None = None
        self.failing = False  # refuses the connection, as a provider that is down
        self.seen: list[str] = []

    async def __call__(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        if self.hold_after is not None and self.texts >= self.hold_after:
            self.gate.clear()
            self.hold_after = None
        await self.gate.wait()
        if self.failing:
            raise UpstreamConnectError("connection refused", provider="p")
        self.texts += len(texts)
        self.seen.extend(texts)
        return [[1.0 + (hash(t) % 5), 1.0, 0.5, 0.25] for t in texts]


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[tuple[MemoryService, Provider, Ingest]]:
    provider = Provider()
    config = MemoryConfig(
        embedding_model="e",
        path=str(tmp_path / "m.sqlite3"),
        index_dir=str(tmp_path / "index"),
        ingest=Ingest(spool_dir=str(tmp_path / "spool"), embed_batch=8, embed_concurrency=1),
    )
    service = MemoryService(config, SQLiteMemoryStore(config.path), HnswIndex(config.index_dir), provider)
    await service.start()
    yield service, provider, config.ingest
    await service.close()


async def blocks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


async def test_a_cancel_received_by_another_process_stops_the_job_and_purges_it(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    service, provider, config = memory
    running, other = IngestService(service, config), IngestService(service, config, recover=False)
    await running.start()
    await other.start()
    try:
        text = "\n\n".join(f"Paragraph {i}, with words and more words." for i in range(3000)).encode()
        provider.hold_after = 24  # then the provider holds: the job cannot go on by itself
        spooled = await running.spool(blocks(text), "a.txt")
        job = await running.submit(spooled, JobOptions("docs", "text"), None)
        while provider.gate.is_set() or len(service.index) < 24:
            await asyncio.sleep(0.01)
        # The running process sees the row cancelled (before its next write, or within a second
        # while its provider is stuck), stops and records its end; the cancel waits, then purges.
        cancelled = await asyncio.wait_for(other.cancel(job.id, None, purge=True), 10)
        provider.gate.set()
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert cancelled.warnings == ["purged: 24 memories deleted"]
        assert running.live_job(job.id) is None
        assert len(service.index) == 0 and await service.store.count() == 0
        assert (await running.get(job.id, None)).status == "cancelled"
    finally:
        await other.close()
        await running.close()


async def test_the_same_file_uploaded_to_another_process_while_it_runs_is_not_started_twice(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    service, provider, config = memory
    running, other = IngestService(service, config), IngestService(service, config, recover=False)
    await running.start()
    await other.start()
    try:
        text = "\n\n".join(f"Line {i} of the file." for i in range(2000)).encode()
        provider.gate.clear()
        job = await running.submit(
            await running.spool(blocks(text), "a.txt"), JobOptions("docs", "text"), None
        )
        again = await other.submit(await other.spool(blocks(text), "b.txt"), JobOptions("docs", "text"), None)
        assert again.id == job.id and other.live_job(job.id) is None  # the other's job, as stored
        provider.gate.set()
        while (await other.get(job.id, None)).status != "done":
            await asyncio.sleep(0.02)
        assert await service.store.count() == (await other.get(job.id, None)).memories_created
    finally:
        await other.close()
        await running.close()


async def held_job(ingest: IngestService, provider: Provider) -> IngestJob:
    """A job of 3,000 paragraphs running on ``ingest``, held by the provider after 24 texts."""
    text = "\n\n".join(f"Paragraph {i}, with words and more words." for i in range(3000)).encode()
    provider.hold_after = 24
    job = await ingest.submit(await ingest.spool(blocks(text), "a.txt"), JobOptions("docs", "text"), None)
    while provider.gate.is_set() or (await ingest.get(job.id, None)).status != "running":
        await asyncio.sleep(0.01)
    return job


async def test_a_job_whose_process_died_shows_interrupted_and_resumes(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """A worker SIGKILLed mid-job leaves it 'running' in the store. Another process (here a
    service whose clock is 2 minutes on: the dead one has not saved since) shows it interrupted
    and resumes it; a worker of the set that restarts alone leaves a job another worker saved
    lately."""
    service, provider, config = memory
    running = IngestService(service, config, runner="host:8080:1")
    await running.start()
    later = IngestService(service, config, recover=False, clock=lambda: utc_now() + timedelta(seconds=120))
    restarted = IngestService(service, config, recover=True, runner="host:8080:0")
    try:
        job = await held_job(running, provider)
        await restarted.start()  # worker 0 of a set restarting: the job is saved lately, left running
        assert (await service.store.get_job(job.id)).status == "running"  # type: ignore[union-attr]
        await later.start()
        shown = await later.get(job.id, None)
        assert shown.status == "interrupted" and "no progress" in (shown.error or ""), shown
        assert [j.status for j in (await later.recent(None, None, 10))[0]] == ["interrupted"]
        resumed = await later.resume(job.id, None)  # before: 409 'is running'
        assert resumed.status in ("queued", "running") and later.live_job(job.id) is not None
    finally:
        await later.close()
        await restarted.close()
        provider.gate.set()
        await running.close()


async def test_a_replica_starting_leaves_another_replicas_job_and_cuts_its_own(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """Replicas sharing one store (Snowflake): one that starts must not mark the job another
    runs as interrupted (a resume elsewhere would then run it twice); the replica that ran it,
    restarting, does mark it at once, not after _ALIVE_S."""
    service, provider, config = memory
    running = IngestService(service, config, runner="pod-a:8080:0")
    await running.start()
    other = IngestService(service, config, runner="pod-b:8080:0")
    restarted: IngestService | None = None
    try:
        job = await held_job(running, provider)
        await other.start()  # another replica starting (recover: it is the only process there)
        assert (await service.store.get_job(job.id)).status == "running"  # type: ignore[union-attr]
        with pytest.raises(Conflict) as refused:
            await other.resume(job.id, None)  # it runs elsewhere: not a second run
        assert refused.value.http_status == 409 and refused.value.code == "job_not_resumable"
        # pod-a's container restarts (its old process gone without a word): its own job is cut.
        provider.gate.set()
        await running.close()
        stored = await service.store.get_job(job.id)
        assert stored is not None
        stored.status, stored.error = "running", None  # as a SIGKILLed process leaves it
        await service.store.save_job(stored)
        restarted = IngestService(service, config, runner="pod-a:8080:0")
        await restarted.start()
        cut = await service.store.get_job(job.id)
        assert cut is not None and cut.status == "interrupted", cut
    finally:
        provider.gate.set()
        if restarted is not None:
            await restarted.close()
        await other.close()
        await running.close()


def test_a_job_document_with_fields_of_a_newer_gateway_is_read() -> None:
    job = IngestJob(
        id="job_1",
        key="k",
        owner=None,
        file="a.txt",
        content_sha256="0" * 64,
        bytes_total=10,
        options=JobOptions("docs", "text"),
        started_at=utc_now(),
        runner="pod-a:8080:0",
    )
    doc = orjson.loads(job.to_document())
    doc["added_later"] = {"x": 1}
    assert IngestJob.from_document(orjson.dumps(doc)) == job
    del doc["runner"]  # written by a gateway from before the field
    assert IngestJob.from_document(orjson.dumps(doc)).runner is None


async def test_parallel_resumes_of_a_paused_job_run_it_once(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """Five resumes at once of a paused job (a client retrying): one run, each chunk embedded
    once. (They each started a run before: the same chunks embedded and paid for several
    times, and the runs' ends raised KeyError in their tasks.)"""
    service, provider, config = memory
    ingest = IngestService(service, config, runner="host:8080:0")
    await ingest.start()
    try:
        text = "\n\n".join(f"Paragraph {i}, with words and more words." for i in range(600)).encode()
        provider.failing = True
        job = await ingest.submit(await ingest.spool(blocks(text), "a.txt"), JobOptions("docs", "text"), None)
        deadline = asyncio.get_running_loop().time() + 10
        while (await ingest.get(job.id, None)).status != "paused":
            assert asyncio.get_running_loop().time() < deadline, "the job never paused"
            await asyncio.sleep(0.01)
        provider.failing = False
        started = ingest.jobs_started
        answers = await asyncio.gather(*(ingest.resume(job.id, None) for _ in range(5)))
        assert {a.id for a in answers} == {job.id}
        assert ingest.jobs_started == started + 1
        while (await ingest.get(job.id, None)).status != "done":
            assert asyncio.get_running_loop().time() < deadline + 20, "the job never ended"
            await asyncio.sleep(0.01)
        assert provider.seen and len(provider.seen) == len(set(provider.seen))
        assert await service.store.count() == len(provider.seen)
    finally:
        await ingest.close()


async def test_the_same_file_uploaded_three_times_at_once_is_one_run(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    service, provider, config = memory
    ingest = IngestService(service, config, runner="host:8080:0")
    await ingest.start()
    try:
        text = "\n\n".join(f"Line {i} of the file." for i in range(500)).encode()
        spooled = [await ingest.spool(blocks(text), f"{n}.txt") for n in range(3)]
        jobs = await asyncio.gather(*(ingest.submit(s, JobOptions("docs", "text"), None) for s in spooled))
        assert len({j.id for j in jobs}) == 1 and ingest.jobs_started == 1
        deadline = asyncio.get_running_loop().time() + 20
        while (await ingest.get(jobs[0].id, None)).status != "done":
            assert asyncio.get_running_loop().time() < deadline, "the job never ended"
            await asyncio.sleep(0.01)
        assert len(provider.seen) == len(set(provider.seen)) == await service.store.count()
        assert sorted(os.listdir(config.spool_dir)) == []  # the copies and the job's file are gone
    finally:
        await ingest.close()


async def test_a_cancel_in_the_turn_a_queued_job_gets_its_slot_stops_it(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """``asyncio.wait_for`` on Python 3.11 returns what it waited for when a cancel arrives in
    the same turn, and the cancel is lost: a DELETE sent right after the 202 (the job about to
    take its slot) set the reader's stop flag, the job ran on, its embed stage waited for ever
    for the stopped reader, and the DELETE answered only once its client gave up (300 s)."""
    service, _, config = memory
    ingest = IngestService(service, config.model_copy(update={"max_concurrent_jobs": 1}))
    await ingest.start()
    try:
        text = "\n\n".join(f"Paragraph {i}, with words and more words." for i in range(300)).encode()
        await ingest._slots.acquire()  # every slot taken: the job waits, queued
        job = await ingest.submit(await ingest.spool(blocks(text), "a.txt"), JobOptions("docs", "text"), None)
        await asyncio.sleep(0.05)
        assert (await ingest.get(job.id, None)).status == "queued"
        ingest._slots.release()  # the slot is the job's in the next turn; the cancel comes in this one
        cancelling = asyncio.create_task(ingest.cancel(job.id, None, purge=False))
        await asyncio.wait([cancelling], timeout=10)  # not wait_for: cancelling it would end the job
        assert cancelling.done(), "the cancel is still waiting for the job"
        cancelled = cancelling.result()
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert ingest.live_job(job.id) is None and cancelled.memories_created == 0
    finally:
        await ingest.close()


async def test_an_upload_cut_while_its_spool_file_opens_leaves_no_file(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """The spool file is opened on a thread; a client that left then (the handler cancelled,
    499) left the empty ``upload-*.part`` the thread created in the spool until a restart: one
    a cut upload, 3 of 5 in a run of ``memory ingest`` whose file shrank mid-upload."""
    service, _, config = memory
    ingest = IngestService(service, config)
    await ingest.start()
    try:
        spooling = asyncio.create_task(ingest.spool(blocks(b"some text"), "a.txt"))
        await asyncio.sleep(0)  # it starts: a thread opens its file
        deadline = time.monotonic() + 10
        while not os.listdir(config.spool_dir):  # the loop held: the task cannot see the open end
            assert time.monotonic() < deadline
            time.sleep(0.001)
        spooling.cancel()  # as the client leaves, the handler is cancelled
        with pytest.raises(asyncio.CancelledError):
            await spooling
        assert os.listdir(config.spool_dir) == []
    finally:
        await ingest.close()


async def paused_job(ingest: IngestService, provider: Provider) -> IngestJob:
    """A job paused by a failing provider (its spool file kept), the provider failing still."""
    text = "\n\n".join(f"Paragraph {i}, with words and more words." for i in range(600)).encode()
    provider.failing = True
    job = await ingest.submit(await ingest.spool(blocks(text), "a.txt"), JobOptions("docs", "text"), None)
    deadline = asyncio.get_running_loop().time() + 10
    while (job := await ingest.get(job.id, None)).status != "paused":
        assert asyncio.get_running_loop().time() < deadline, "the job never paused"
        await asyncio.sleep(0.01)
    return job


async def test_a_cancel_right_after_a_resume_ends_the_job(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """The resumed job's task had not run yet: cancelling it skipped its ``finally``, so the
    DELETE answered ``queued``, the job stayed queued (and in the running jobs) for ever, its
    spool file kept."""
    service, provider, config = memory
    ingest = IngestService(service, config)
    await ingest.start()
    try:
        job = await paused_job(ingest, provider)
        assert (await ingest.resume(job.id, None)).status == "queued"
        cancelled = await ingest.cancel(job.id, None, purge=False)  # in the same turn
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None, cancelled
        assert ingest.live_job(job.id) is None
        assert (await service.store.get_job(job.id)).status == "cancelled"  # type: ignore[union-attr]
        assert os.listdir(config.spool_dir) == []
    finally:
        await ingest.close()


async def test_a_resume_racing_a_cancel_does_not_start_the_job_again(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """A resume that read the job while a cancel was deleting its file started it again: the job
    ended ``failed`` (an internal error: its file gone) or ``paused`` after the DELETE had
    answered ``cancelled``."""
    service, provider, config = memory
    ingest = IngestService(service, config)
    await ingest.start()
    try:
        job = await paused_job(ingest, provider)
        provider.failing = False
        first, cancelled, second = await asyncio.gather(
            ingest.resume(job.id, None),
            ingest.cancel(job.id, None, purge=True),
            ingest.resume(job.id, None),
            return_exceptions=True,
        )
        assert isinstance(first, IngestJob) and first.status == "queued", first
        assert isinstance(cancelled, IngestJob) and cancelled.status == "cancelled", cancelled
        assert isinstance(second, Conflict) and second.code == "job_file_gone", second  # after the cancel
        await asyncio.sleep(0.3)  # a job started again would have failed or paused by now
        assert ingest.live_job(job.id) is None
        assert (await ingest.get(job.id, None)).status == "cancelled"
        assert os.listdir(config.spool_dir) == []
    finally:
        await ingest.close()


async def test_a_job_whose_spool_file_is_deleted_under_it_fails_saying_so(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """It failed as ``internal error (see the gateway's log)``, a FileNotFoundError traceback."""
    service, provider, config = memory
    ingest = IngestService(service, config)
    await ingest.start()
    try:
        job = await paused_job(ingest, provider)
        provider.failing = False
        await ingest.resume(job.id, None)
        for name in os.listdir(config.spool_dir):  # before its reader opens it (it has not run yet)
            os.remove(os.path.join(config.spool_dir, name))
        deadline = asyncio.get_running_loop().time() + 10
        while (job := await ingest.get(job.id, None)).status in ("queued", "running"):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert (
            job.status == "failed" and job.error == "the job's file is no longer kept: upload the file again"
        )
    finally:
        await ingest.close()


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


async def test_another_name_for_a_running_or_paused_job_is_its_duplicate_and_keeps_its_name(
    memory: tuple[MemoryService, Provider, Ingest],
) -> None:
    """(h-ingest2) The job took the new name and options: the memories it went on to store named
    ``b.txt`` with ``b.txt``'s metadata, those before ``a.txt``."""
    service, provider, config = memory
    ingest = IngestService(service, config)
    await ingest.start()
    try:
        text = "\n\n".join(f"Line {i} of the file, with words." for i in range(2000)).encode()
        provider.hold_after = 24
        first = await ingest.upload(
            await ingest.spool(blocks(text), "a.txt"), JobOptions("docs", "text", metadata={"v": 1}), None
        )
        assert first.duplicate_of is None and "duplicate" not in first.to_json()
        running = await ingest.upload(
            await ingest.spool(blocks(text), "b.txt"), JobOptions("docs", "text", metadata={"v": 2}), None
        )
        assert running.job.id == first.job.id and running.duplicate_of == "a.txt"
        shown = running.to_json()["duplicate"]
        assert shown["file"] == "a.txt" and shown["uploaded_file"] == "b.txt" and shown["job"] == first.job.id
        assert shown["status"] in ("queued", "running")

        async def paused() -> bool:
            return (await ingest.get(first.job.id, None)).status == "paused"

        async def held() -> bool:
            return not provider.gate.is_set()

        await _until(held)
        provider.failing = True
        provider.gate.set()
        await _until(paused)
        assert (await ingest.get(first.job.id, None)).resume_from > 0
        provider.failing = False
        resumed = await ingest.upload(
            await ingest.spool(blocks(text), "c.txt"), JobOptions("docs", "text", metadata={"v": 3}), None
        )
        assert resumed.duplicate_of == "a.txt" and resumed.job.status == "queued"

        async def done() -> bool:
            return (await ingest.get(first.job.id, None)).status == "done"

        await _until(done)
        job = await ingest.get(first.job.id, None)
        assert job.file == "a.txt" and job.options.metadata == {"v": 1}
        stored = await service.store.get_many([f"ing_{job.key[:24]}_{i}" for i in range(job.chunks_seen)])
        assert {(m.metadata["file"], m.metadata["v"]) for m in stored} == {("a.txt", 1)}
    finally:
        await ingest.close()
