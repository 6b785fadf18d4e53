"""``sophia-gateway memory ingest PATH... --namespace N``: upload files into a gateway's memory.

Files and folders (recursive, filtered by ``--include`` / ``--exclude`` globs on the path below
the folder given) are uploaded one at a time to ``POST /v1/memory/files`` of a running gateway
(``--url``, default http://127.0.0.1:8080), streamed from disk (never read whole). Each job is
followed through its events stream (``/v1/memory/jobs/{id}/events``), which feeds a progress
bar per file and one for the total, with rate and ETA (rich); a summary table ends the run.

The key is ``--key`` or ``$SOPHIA_API_KEY`` (a gateway in open mode needs none). ``--resume``
skips files a finished job of this namespace already holds (same content hash) and continues
the others (the gateway continues an unfinished job of the same file by itself, after its last
stored batch). A file with the same content as one ingested before under another name (same
namespace and chunking) is reported ``duplicate``, naming the first file and its job: its
memories are that job's, not stored again. Ctrl-C cancels the running job (``--purge-on-cancel``:
and deletes what it stored). Exit status: 0 every file done (or a duplicate of one done), 1 a
file failed or paused, 2 bad arguments or no gateway, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import hashlib
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from gateway.admin_client import gateway_url
from gateway.memory.formats import EXTENSIONS
from gateway.wire.sse import SSEDecoder

Json = dict[str, Any]
_FINAL = frozenset({"done", "failed", "cancelled", "paused", "interrupted"})


def add_arguments(memory_sub: Any) -> None:
    """The ``ingest`` sub-command, on the ``memory`` sub-parsers."""
    ingest = memory_sub.add_parser(
        "ingest", help="upload files or folders into a running gateway's memory, with progress bars"
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    ingest.add_argument("--namespace", required=True, help="the memory namespace to write")
    ingest.add_argument(
        "--url", type=gateway_url, default="http://127.0.0.1:8080", help="the gateway (default: %(default)s)"
    )
    ingest.add_argument("--key", help="the virtual key (default: $SOPHIA_API_KEY; none in open mode)")
    ingest.add_argument("--include", action="append", default=[], metavar="GLOB", help="only matching files")
    ingest.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching files")
    ingest.add_argument(
        "--resume",
        action="store_true",
        help="skip files already ingested in this namespace; continue the others",
    )
    ingest.add_argument(
        "--purge-on-cancel", action="store_true", help="on Ctrl-C, delete what the cancelled job stored"
    )
    ingest.add_argument("--data-source", help="data_source of every memory")
    ingest.add_argument("--metadata", help="JSON object added to every memory's metadata")
    ingest.add_argument("--chunk-chars", type=int, help="chunk size in characters (default: the policy's)")
    ingest.add_argument(
        "--overlap-chars", type=int, help="chunk overlap in characters (default: the policy's)"
    )
    ingest.add_argument("--text-field", help=".jsonl field / .csv column holding the text (default: text)")
    ingest.add_argument("--metadata-fields", help=".jsonl fields / .csv columns kept as metadata (a,b,c)")
    ingest.set_defaults(func=run)


@dataclass
class Outcome:
    path: Path
    status: str
    memories: int = 0
    errors: int = 0
    seconds: float = 0.0
    note: str = ""


def run(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"no such file or folder: {_printable(missing[0])}", file=sys.stderr)
        return 2
    files = collect(args.paths, args.include, args.exclude)
    if not files:
        print("no files to ingest (supported: " + ", ".join(sorted(EXTENSIONS)) + ")", file=sys.stderr)
        return 2
    try:
        outcomes = asyncio.run(_ingest_all(args, files))
    except KeyboardInterrupt:
        print("interrupted: the running job was cancelled", file=sys.stderr)
        return 130
    except GatewayLost as exc:
        print(
            f"lost the gateway at {args.url} while ingesting {exc} (a job it started shows "
            "interrupted there: run again with --resume)",
            file=sys.stderr,
        )
        return 2
    except Refused as exc:
        print(f"the gateway at {args.url} refused {exc}", file=sys.stderr)
        return 2
    except NotGateway as exc:
        print(f"{args.url} did not answer as a Sophia gateway: {exc}; is --url the gateway?", file=sys.stderr)
        return 2
    except aiohttp.ClientError as exc:
        print(f"cannot reach the gateway at {args.url}: {_printable(str(exc))}", file=sys.stderr)
        return 2
    _summary(outcomes)
    return 0 if all(o.status in ("done", "skipped", "duplicate") for o in outcomes) else 1


class NotGateway(Exception):
    """The other end answered, but not as a gateway does (HTML, not JSON, not an event stream):
    ``--url`` names another server (a traceback before)."""


class GatewayLost(Exception):
    """The gateway answered the run's earlier files, then went away while ``path`` was sent or
    followed (it said "cannot reach the gateway", as if it had never answered)."""

    def __init__(self, path: Path, error: aiohttp.ClientError) -> None:
        super().__init__(f"{_printable(str(path))}: {_printable(str(error))}")


class Refused(Exception):
    """The gateway refused what every upload of the run sends (an option's value, the key, the
    namespace): each file would be refused the same way, so the run stops at the first."""


# The form fields the command sends from its options: a 400 naming one is about the option.
_OPTIONS = {
    "namespace": "--namespace",
    "data_source": "--data-source",
    "metadata": "--metadata",
    "chunk_chars": "--chunk-chars",
    "overlap_chars": "--overlap-chars",
    "text_field": "--text-field",
    "metadata_fields": "--metadata-fields",
}


class FileChanged(Exception):
    """The file was shorter, longer or newer after its upload than when it was opened."""


class _Snapshot(Payload):
    """The file's first ``size`` bytes (its size when opened), read a block at a time as aiohttp
    sends it. aiohttp's own file payload declared the size it found when the form was built and
    then sent what it found when it wrote: a file growing meanwhile sent more bytes than declared
    (the gateway saw a cut form: 400 'Reading after EOF'), one shrinking fewer (the gateway waited
    for the rest). ``FileChanged`` when the file ends before ``size``."""

    def __init__(self, f: BinaryIO, size: int, filename: str) -> None:
        super().__init__(f, content_type="application/octet-stream", filename=filename)
        self._size = self._length = size
        self.changed: FileChanged | None = None
        self.set_content_disposition("form-data", name="file", filename=filename)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:  # pragma: no cover
        raise TypeError("a file upload is not decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        left = self._length if content_length is None else min(self._length, content_length)
        while left > 0:
            block = await asyncio.to_thread(self._value.read, min(left, 1 << 18))
            if not block:  # aiohttp reports it as a connection error: ``changed`` says why
                self.changed = FileChanged("it became shorter while it was uploaded")
                raise self.changed
            await writer.write(block)
            left -= len(block)


def collect(paths: list[str], include: list[str], exclude: list[str]) -> list[Path]:
    """The files to upload: each file given, and every file below each folder given (sorted),
    that matches an ``include`` glob (when any) and no ``exclude`` glob; in a folder, only files
    of a supported type."""
    out: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            out += [p for p in found if _wanted(p.relative_to(given).as_posix(), include, exclude)]
        elif _wanted(given.name, include, exclude):
            out.append(given)
    return out


def _wanted(name: str, include: list[str], exclude: list[str]) -> bool:
    def matches(glob: str) -> bool:
        return fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(os.path.basename(name), glob)

    return (not include or any(map(matches, include))) and not any(map(matches, exclude))


async def _ingest_all(args: argparse.Namespace, files: list[Path]) -> list[Outcome]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    key = args.key or os.environ.get("SOPHIA_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    outcomes: list[Outcome] = []
    async with aiohttp.ClientSession(args.url, headers=headers, timeout=timeout) as session:
        done_hashes = await _finished_hashes(session, args.namespace) if args.resume else set()
        with Progress(
            TextColumn("{task.description}", table_column=None, markup=False),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ) as progress:
            total_bytes = sum(map(_size, files))
            total = progress.add_task(f"total ({len(files)} files)", total=total_bytes)
            before = 0
            for path in files:
                size = _size(path)
                bar = progress.add_task(_label(path), total=size or 1)
                if args.resume and _sha256(path) in done_hashes:
                    outcomes.append(Outcome(path, "skipped", note="already ingested"))
                    progress.update(bar, completed=size or 1)
                else:
                    try:
                        outcome = await _ingest_one(session, args, path, progress, bar, total, before)
                    except aiohttp.ClientError as exc:
                        if not outcomes:  # nothing answered yet: the gateway was never reached
                            raise
                        raise GatewayLost(path, exc) from None
                    outcomes.append(outcome)
                    if outcome.note:
                        progress.console.print(_shown(f"{path}: {outcome.status}: {outcome.note}"))
                before += size
                progress.update(total, completed=before)
    return outcomes


async def _ingest_one(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    path: Path,
    progress: Any,
    bar: Any,
    total: Any,
    before: int,
) -> Outcome:
    started = time.monotonic()
    try:
        f, opened = _open(path)
    except OSError as exc:  # unreadable, gone, or not a file (a FIFO's open waited for a writer)
        return Outcome(path, "unreadable", note=exc.strerror or str(exc))
    try:
        try:
            status, job = await _upload(session, args, f, opened, path.name)
        except FileChanged as exc:  # the upload was cut: the gateway keeps nothing of it
            return Outcome(path, "changed", note=f"{exc}: run again once it no longer changes")
        now = os.fstat(f.fileno())
    finally:
        f.close()
    if (now.st_size, now.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
        note = "it changed while it was uploaded: run again once it no longer changes"
        # a mix of two versions (not another file's job: a duplicate's is the first upload's)
        if status == 202 and job.get("status") in ("queued", "running") and "duplicate" not in job:
            async with session.delete(f"/v1/memory/jobs/{job['id']}"):
                pass
            note += f" (job {job['id']} cancelled)"
        return Outcome(path, "changed", note=note)
    if status not in (200, 202):  # 200: a duplicate of a finished job (nothing runs)
        error = job.get("error") or {}
        message = _printable(str(error.get("message", job)))
        if status == 400 and error.get("param") in _OPTIONS:  # a folder of files: each refused so
            raise Refused(f"{_OPTIONS[error['param']]}: {message}")
        if status in (401, 403):
            raise Refused(f"the upload ({status}): {message}")
        return Outcome(path, "refused", note=f"{status}: {message}")
    duplicate = job.get("duplicate")
    try:
        async for event in _events(session, job["id"]):
            done = int(event.get("bytes_done", 0))
            progress.update(bar, completed=done)
            progress.update(total, completed=before + done)
            if event.get("status") in _FINAL and "object" in event:
                job = event
                break
    except aiohttp.ClientError as exc:  # it answered the upload, then went away
        raise GatewayLost(path, exc) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        purge = "?purge=true" if args.purge_on_cancel else ""
        async with session.delete(f"/v1/memory/jobs/{job['id']}{purge}"):
            pass
        raise
    note = job.get("error") or "; ".join(job.get("warnings") or [])
    if job.get("errors_count"):
        first = job["errors"][0]
        note = (
            note + "; " if note else ""
        ) + f"{job['errors_count']} errors, first: {first['where']}: {first['message']}"
    if job["status"] == "done":
        progress.update(bar, completed=opened.st_size or 1)
    if isinstance(duplicate, dict):  # its memories are another file's job's: not counted again
        first = f"the same content as {duplicate.get('file')} (job {duplicate.get('job')}): not stored again"
        note = first + ("; " + note if note else "")
        return Outcome(
            path,
            "duplicate" if job["status"] == "done" else job["status"],
            0,
            0,
            time.monotonic() - started,
            note,
        )
    return Outcome(
        path,
        job["status"],
        job.get("memories_created", 0),
        job.get("errors_count", 0),
        time.monotonic() - started,
        note,
    )


def _open(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """``path`` open for reading and its status then; ``OSError`` when it cannot be read or is
    not a regular file (opened without waiting: a FIFO given by name held the command for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise OSError(0, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), opened
    except BaseException:
        os.close(fd)
        raise


def _size(path: Path) -> int:
    """The file's size for the progress bars (0 when it cannot be read: its upload says why)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _upload(
    session: aiohttp.ClientSession, args: argparse.Namespace, f: BinaryIO, opened: os.stat_result, name: str
) -> tuple[int, Json]:
    form = aiohttp.FormData()
    fields = {
        "namespace": args.namespace,
        "data_source": args.data_source,
        "metadata": args.metadata,
        "chunk_chars": None if args.chunk_chars is None else str(args.chunk_chars),
        "overlap_chars": None if args.overlap_chars is None else str(args.overlap_chars),
        "text_field": args.text_field,
        "metadata_fields": args.metadata_fields,
    }
    for field_name, value in fields.items():
        if value is not None:
            form.add_field(field_name, value)
    snapshot = _Snapshot(f, opened.st_size, name)
    form.add_field("file", snapshot, filename=name)
    try:
        async with session.post("/v1/memory/files", data=form) as resp:
            return resp.status, await _json(resp)
    except aiohttp.ClientError:
        if snapshot.changed is not None:  # the upload was cut because the file was
            raise snapshot.changed from None
        raise


async def _json(resp: aiohttp.ClientResponse) -> Json:
    """The answer's JSON object; ``NotGateway`` when it is not one."""
    raw = await resp.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        kind = resp.headers.get("Content-Type", "no Content-Type").split(";")[0]
        raise NotGateway(f"HTTP {resp.status} {_printable(kind)[:60]} to {resp.method} {resp.url.path}")
    return body


async def _events(session: aiohttp.ClientSession, job_id: str) -> Any:
    """The job's events (progress figures, then the job), as the gateway sends them."""
    async with session.get(f"/v1/memory/jobs/{job_id}/events") as resp:
        if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            await _json(resp)  # NotGateway, unless it is an error of the gateway's
            raise NotGateway(f"HTTP {resp.status} to GET {resp.url.path}, not its job's events")
        decoder = SSEDecoder()
        async for block in resp.content.iter_any():
            for data in decoder.feed(block):
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    event = None
                if not isinstance(event, dict):
                    raise NotGateway(f"an event of GET {resp.url.path} is not a JSON object")
                yield event


async def _finished_hashes(session: aiohttp.ClientSession, namespace: str, page: int = 200) -> set[str]:
    """The content hashes of every finished job in ``namespace`` the key can see, page by page
    (a single page of 200 missed the older ones: their files were sent again)."""
    found: set[str] = set()
    params = {"status": "done", "limit": str(page)}
    while True:
        async with session.get("/v1/memory/jobs", params=params) as resp:
            body = await _json(resp)
        data = body.get("data", [])
        found |= {j["content_sha256"] for j in data if j["namespace"] == namespace}
        if not (body.get("has_more") and data):
            return found
        params = {**params, "after": data[-1]["id"]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _label(path: Path) -> str:
    name = _printable(str(path))
    return name if len(name) <= 40 else "..." + name[-37:]


def _printable(text: str) -> str:
    """``text`` with the characters a terminal would act on (escape sequences, carriage
    returns, a right-to-left override) written as ``\\xNN``: file names and the gateway's notes
    quote files' contents (a CSV header's columns)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _shown(text: str) -> Any:
    """``text`` for rich, as it is: printable (``_printable``) and never read as markup (a
    ``[/x]`` in a file name or a CSV column stopped the command with a MarkupError, and a
    ``[bold]`` was taken away)."""
    from rich.text import Text

    return Text(_printable(text))


def _summary(outcomes: list[Outcome]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memory ingest")
    for column in ("file", "status", "memories", "errors", "seconds"):
        table.add_column(column, justify="right" if column in ("memories", "errors", "seconds") else "left")
    for o in outcomes:
        table.add_row(_shown(str(o.path)), o.status, str(o.memories), str(o.errors), f"{o.seconds:.1f}")
    Console().print(table)
    made = sum(o.memories for o in outcomes)
    print(f"{len(outcomes)} files, {made} memories created, {sum(o.errors for o in outcomes)} errors")
