"""Ingest jobs: their state, and the table that keeps it in the memory store.

A job is kept in the same database as the memories it writes (``<table>_jobs``, SQLite or
Snowflake), so a job cut by a restart is still reported with how far it got, and uploading the
file again continues after its last stored batch. The row holds the job as one JSON document
plus the columns listings filter on (owner, status, updated_at): the document can grow fields
without a migration, and the statements are the same on both databases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.memory.sql import Cursor

# queued -> running -> done | failed | cancelled | paused (provider or store failing: resumable);
# interrupted: the process stopped while it ran (resumable by uploading the file again).
ACTIVE = frozenset({"queued", "running"})
RESUMABLE = frozenset({"paused", "interrupted", "cancelled", "failed"})
FINISHED = frozenset({"done", "failed", "cancelled", "paused", "interrupted"})
MAX_ERRORS_KEPT = 100  # errors listed in a job (all are counted)
LIST_MAX = 200  # jobs listed at most by one call (GET /v1/memory/jobs)


@dataclass(frozen=True, slots=True)
class JobProblem:
    """A line or page of the file that could not be read (``where``: "line 7", "page 3")."""

    where: str
    message: str


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What an upload asked for; part of the job's identity (another chunking is another job)."""

    namespace: str
    format: str
    data_source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    chunk_chars: int = 2000
    overlap_chars: int = 200
    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None


def job_key(content_sha256: str, owner: str | None, options: JobOptions) -> str:
    """The hex digest naming a file's job and its memories: the file's content, who stores it,
    where and how it is chunked (the same file, sent again the same way, is the same job)."""
    what = orjson.dumps(
        [
            content_sha256,
            owner,
            options.namespace,
            options.format,
            options.chunk_chars,
            options.overlap_chars,
            options.text_field,
            options.metadata_fields,
        ]
    )
    return hashlib.sha256(what).hexdigest()


# The ids of ingested chunks; refused as ids the API's callers choose (``api/memory.py``).
INGEST_ID_PREFIX = "ing_"


def memory_id(key: str, index: int) -> str:
    """The id of chunk ``index`` of the file whose job key is ``key``: the same on every upload."""
    return f"{INGEST_ID_PREFIX}{key[:24]}_{index}"


@dataclass(slots=True)
class IngestJob:
    """One file's ingestion. Mutable: its pipeline updates it as it goes (and only it)."""

    id: str
    key: str
    owner: str | None
    file: str
    content_sha256: str
    bytes_total: int
    options: JobOptions
    started_at: datetime
    status: str = "queued"
    bytes_done: int = 0
    chunks_done: int = 0  # chunks stored now or found stored already (this run and before)
    resume_from: int = 0  # every chunk below this index is stored: where a resumed run starts
    chunks_seen: int = 0  # chunk indexes handed out so far (ids ing_<key>_0 .. _<n-1>)
    memories_created: int = 0
    embedding_calls: int = 0
    errors: list[JobProblem] = field(default_factory=list)
    errors_count: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    # The process that runs it (``IngestService.runner``: host, port, worker), for recovery at
    # start: a process's own jobs from before its restart are cut, other processes' are not.
    runner: str | None = None

    def add_error(self, problem: JobProblem) -> None:
        self.errors_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(problem)

    @property
    def percent(self) -> float:
        if self.status == "done":
            return 100.0
        return round(100.0 * self.bytes_done / self.bytes_total, 1) if self.bytes_total else 0.0

    def to_json(self) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id,
            "object": "memory.ingest_job",
            "status": self.status,
            "file": self.file,
            "format": self.options.format,
            "namespace": self.options.namespace,
            "owner": self.owner,
            "data_source": self.options.data_source,
            "content_sha256": self.content_sha256,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "percent": self.percent,
            "chunks_done": self.chunks_done,
            "resume_from": self.resume_from,
            "memories_created": self.memories_created,
            "embedding_calls": self.embedding_calls,
            "errors": [{"where": e.where, "message": e.message} for e in self.errors],
            "errors_count": self.errors_count,
            "warnings": list(self.warnings),
            "error": self.error,
            "chunking": {
                "chunk_chars": self.options.chunk_chars,
                "overlap_chars": self.options.overlap_chars,
            },
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
        }

    def to_document(self) -> bytes:
        """Everything, for the store."""
        doc = asdict(self)
        doc["options"]["metadata_fields"] = self.options.metadata_fields
        return orjson.dumps(doc, default=_encode)

    @classmethod
    def from_document(cls, raw: str | bytes) -> IngestJob:
        doc = orjson.loads(raw)
        options = doc.pop("options")
        fields = options.pop("metadata_fields")
        doc["options"] = JobOptions(**options, metadata_fields=tuple(fields) if fields is not None else None)
        doc["errors"] = [JobProblem(**e) for e in doc["errors"]]
        for name in ("started_at", "updated_at", "finished_at"):
            doc[name] = datetime.fromisoformat(doc[name]) if doc[name] else None
        # Fields a newer gateway added are ignored (replicas of two versions share a store
        # during a rolling update); missing ones take their defaults.
        return cls(**{k: v for k, v in doc.items() if k in _JOB_FIELDS})


_JOB_FIELDS = frozenset(f.name for f in dataclass_fields(IngestJob))


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(type(value).__name__)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


class JobQueries:
    """The jobs table's statements, the same on SQLite and Snowflake (qmark parameters)."""

    def __init__(self, memory_table: str, dialect: str) -> None:
        self.table = f"{memory_table}_jobs"
        self._text = "TEXT" if dialect == "sqlite" else "VARCHAR"

    def create_table(self) -> str:
        t = self._text
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} (id {t} NOT NULL PRIMARY KEY, owner {t}, "
            f"status {t} NOT NULL, updated_at {t} NOT NULL, doc {t} NOT NULL)"
        )

    def save(self, cur: Cursor, job: IngestJob) -> None:
        """Insert or replace the job's row (an UPDATE, then an INSERT when there was none)."""
        at = (job.updated_at or job.started_at).astimezone(UTC).isoformat()
        doc = job.to_document().decode()
        cur.execute(
            f"UPDATE {self.table} SET owner = ?, status = ?, updated_at = ?, doc = ? WHERE id = ?",
            [job.owner, job.status, at, doc, job.id],
        )
        if not cur.rowcount:
            cur.execute(
                f"INSERT INTO {self.table} (id, owner, status, updated_at, doc) VALUES (?, ?, ?, ?, ?)",
                [job.id, job.owner, job.status, at, doc],
            )

    def get(self, cur: Cursor, job_id: str) -> IngestJob | None:
        cur.execute(f"SELECT doc FROM {self.table} WHERE id = ?", [job_id])
        row = cur.fetchone()
        return IngestJob.from_document(row[0]) if row else None

    def recent(
        self,
        cur: Cursor,
        owner: str | None,
        statuses: Sequence[str] | None,
        limit: int,
        after: str | None = None,
    ) -> list[IngestJob]:
        """The last ``limit`` jobs updated, newest first: only ``owner``'s when given, only
        those in ``statuses`` when given, only those listed after job ``after`` when given (a
        page's cursor: the order is ``updated_at`` then ``id``, both descending, so jobs updated
        in the same instant keep one order)."""
        conditions: list[str] = []
        params: list[object] = []
        if after is not None:
            anchor = f"(SELECT updated_at FROM {self.table} WHERE id = ?)"
            conditions.append(f"(updated_at < {anchor} OR (updated_at = {anchor} AND id < ?))")
            params.extend([after, after, after])
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        if statuses:
            conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        cur.execute(
            f"SELECT doc FROM {self.table}{where} ORDER BY updated_at DESC, id DESC LIMIT {int(limit)}",
            params,
        )
        return [IngestJob.from_document(row[0]) for row in cur.fetchall()]
