"""File ingestion over real HTTP (issue 15): multipart uploads to the gateway in process
(aiohttp's TestClient, ``build_app``), the memory on SQLite in a temporary directory or on
Snowflake (fakesnow), embeddings from a MockTransport provider that counts its calls and can
be slowed, blocked or made to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import ingest_command, keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.errors import UpstreamConnectError
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport
from gateway.testing.pdf import make_bomb_pdf, make_form_pdf, make_pdf
from tests import fakesnow_support
from tests.integration.memory.conftest import SNOWFLAKE_ARGS

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

WRITER = "sk-sg-writer00000000000000000000000000000000"  # may write 'docs' only
READER = "sk-sg-reader00000000000000000000000000000000"  # alpha's too: reads 'shared', writes nothing
OTHER = "sk-sg-others00000000000000000000000000000000"  # team gamma: writes anywhere
DIM = 8


def policy(tmp_path: Path, ingest: str = "", progress_s: float = 0.2) -> str:
    return f"""
version: 1
providers:
  p: {{kind: openai, base_url: "http://p.test/v1"}}
models:
  emb: {{deployments: [{{provider: p, model: e}}]}}
cache: {{enabled: false}}
memory:
  embedding_model: emb
  index_dir: "{tmp_path / "index"}"
  path: "{tmp_path / "memory.sqlite3"}"
  pool: {{min_size: 1, max_size: 4}}
  ingest: {{spool_dir: "{tmp_path / "spool"}", progress_interval_s: {progress_s}{ingest}}}
"""


def vector_for(text: str) -> list[float]:
    return [float((hash(text) >> d) & 7) + (1.0 if d == 0 else 0.0) for d in range(DIM)]


@dataclass
class Embedder:
    """The provider: counts embeddings calls; ``gate`` (cleared) holds every call, and is cleared
    by the call after ``hold_after`` answered ones; ``failing`` refuses the connection, as a
    provider that is down."""

    calls: int = 0
    texts: int = 0
    failing: bool = False
    delay_s: float = 0.0
    hold_after: int | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(self, request: UpstreamRequest) -> MockResponse:
        if self.hold_after is not None and self.calls >= self.hold_after:
            self.gate.clear()
            self.hold_after = None
        await self.gate.wait()
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise UpstreamConnectError("connection refused", provider="p")
        texts = orjson.loads(request.body)["input"]
        self.calls += 1
        self.texts += len(texts)
        data = [{"object": "embedding", "index": i, "embedding": vector_for(t)} for i, t in enumerate(texts)]
        return MockResponse.json({"object": "list", "data": data, "model": "e"})


class KeyRing:
    callers: ClassVar[dict[str, Caller]] = {
        WRITER: Caller("key_writer", "alpha", read_namespaces=None, write_namespaces=frozenset({"docs"})),
        READER: Caller(
            "key_reader", "alpha", read_namespaces=frozenset({"shared"}), write_namespaces=frozenset()
        ),
        OTHER: Caller("key_other", "gamma"),
    }

    async def authenticate(self, secret: str) -> Caller | None:
        return self.callers.get(secret)


@dataclass
class Gateway:
    client: TestClient
    embedder: Embedder
    key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def upload(self, name: str, content: bytes, **fields: str) -> tuple[int, Any]:
        form = aiohttp.FormData()
        for k, v in {"namespace": "docs", **fields}.items():
            form.add_field(k, v)
        form.add_field("file", content, filename=name, content_type="application/octet-stream")
        async with self.client.post("/v1/memory/files", data=form, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.client.request(method, path, json=body, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def wait(self, job_id: str, *statuses: str, timeout_s: float = 120) -> dict[str, Any]:
        # A bound on a hang, not a speed check: 512k bad lines under tracemalloc took over 30 s
        # on a loaded 2-core machine.
        deadline = time.monotonic() + timeout_s
        while True:
            status, job = await self.call("GET", f"/v1/memory/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in (statuses or ("done", "failed", "paused", "cancelled")):
                return dict(job)
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.02)

    async def ingest(self, name: str, content: bytes, **fields: str) -> dict[str, Any]:
        status, job = await self.upload(name, content, **fields)
        assert status == 202, job
        return await self.wait(job["id"])

    async def search(self, query: str) -> list[dict[str, Any]]:
        status, answer = await self.call("POST", "/v1/memory/search", {"query": query, "top_k": 5})
        assert status == 200, answer
        return list(answer["data"])

    def count(self) -> int:
        memory = self.client.app[keys.MEMORY]  # type: ignore[index]
        return len(memory.index)


@pytest.fixture(params=["sqlite", "snowflake"])
def store_env(request: pytest.FixtureRequest) -> Iterator[tuple[str | None, dict[str, str]]]:
    if request.param == "sqlite":
        yield None, {}
        return
    env = {f"SNOWFLAKE_{k.upper()}": v for k, v in SNOWFLAKE_ARGS.items()}
    with fakesnow_support.patch():
        yield "snowflake://", env


async def open_gateway(
    tmp_path: Path,
    store_env: tuple[str | None, dict[str, str]] = (None, {}),
    *,
    embedder: Embedder | None = None,
    extra: str = "",
    ingest: str = "",
    key: str | None = None,
    progress_s: float = 0.2,
) -> AsyncIterator[Gateway]:
    memory_url, env = store_env
    embedder = embedder or Embedder()
    app = build_app(
        Settings(access_log=False, memory_url=memory_url),
        parse_policy(policy(tmp_path, ingest, progress_s) + (extra or "auth: {mode: open}\n")),
        env,
        transports={"p": MockTransport(embedder)},
    )
    app[keys.KEYRING] = KeyRing()
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Gateway(client, embedder, key)
    finally:
        await client.close()


@pytest.fixture
async def gw(tmp_path: Path, store_env: tuple[str | None, dict[str, str]]) -> AsyncIterator[Gateway]:
    async for g in open_gateway(tmp_path, store_env):
        yield g


@pytest.fixture
async def sqlite_gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async for g in open_gateway(tmp_path):
        yield g


def paragraphs(n: int, words: int = 40) -> bytes:
    return "\n\n".join(
        " ".join(f"p{i}w{j}." if j % 10 == 9 else f"p{i}w{j}" for j in range(words)) for i in range(n)
    ).encode()


# ----- formats, metadata, idempotency (both stores)


async def test_a_text_file_becomes_searchable_chunks_with_their_file_offset_and_index(gw: Gateway) -> None:
    content = paragraphs(300)
    job = await gw.ingest("notes.txt", content, data_source="upload", metadata='{"team": "research"}')
    assert job["status"] == "done" and job["errors_count"] == 0, job
    assert job["bytes_done"] == job["bytes_total"] == len(content) and job["percent"] == 100
    assert job["memories_created"] == job["chunks_done"] == gw.count() > 5
    hits = await gw.search("p7w3")
    meta = hits[0]["memory"]["metadata"]
    assert set(meta) >= {"file", "offset", "chunk_index", "job_id", "team"}
    assert meta["file"] == "notes.txt" and meta["job_id"] == job["id"] and meta["team"] == "research"
    text = content.decode()
    memory = hits[0]["memory"]
    assert text[meta["offset"] : meta["offset"] + len(memory["content"])] == memory["content"]
    assert memory["data_source"] == "upload" and memory["namespace"] == "docs"


async def test_the_same_file_twice_creates_no_duplicates_and_costs_no_embeddings(gw: Gateway) -> None:
    content = paragraphs(200)
    first = await gw.ingest("a.txt", content)
    calls = gw.embedder.calls
    second = await gw.ingest("a.txt", content)
    assert second["id"] == first["id"] and second["status"] == "done"
    assert gw.count() == first["memories_created"] == second["memories_created"]
    assert gw.embedder.calls == calls  # every chunk was found stored: nothing re-embedded
    # under another name: a duplicate of the first job, which keeps its name (h-ingest2)
    status, renamed = await gw.upload("renamed.txt", content)
    assert status == 200 and renamed["id"] == first["id"] and renamed["file"] == "a.txt", renamed
    assert renamed["duplicate"]["uploaded_file"] == "renamed.txt" and gw.embedder.calls == calls
    status, listing = await gw.call("GET", "/v1/memory/jobs")
    assert status == 200 and [j["id"] for j in listing["data"]] == [first["id"]]


async def test_jobs_are_listed_a_page_at_a_time_and_resume_reads_every_page(gw: Gateway) -> None:
    """``GET /v1/memory/jobs`` pages as OpenAI's lists do (``after``, ``has_more``, ``last_id``),
    and ``memory ingest --resume`` reads every page: it read one page of 200, so past 200 finished
    jobs it sent finished files again."""
    jobs = [await gw.ingest(f"f{i}.txt", f"note number {i} about paging".encode()) for i in range(5)]
    seen: list[str] = []
    query = "/v1/memory/jobs?status=done&limit=2"
    while True:
        status, page = await gw.call("GET", query)
        assert status == 200 and len(page["data"]) <= 2, page
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        assert page["last_id"] == page["data"][-1]["id"]
        query = f"/v1/memory/jobs?status=done&limit=2&after={page['last_id']}"
    assert len(seen) == len(set(seen)) == 5 and set(seen) == {j["id"] for j in jobs}
    status, body = await gw.call("GET", "/v1/memory/jobs?after=job_nope")
    assert status == 404 and body["error"]["code"] == "job_not_found"

    base = str(gw.client.make_url("/"))
    async with aiohttp.ClientSession(base, headers=gw.headers) as session:
        hashes = await ingest_command._finished_hashes(session, "docs", page=2)
    assert hashes == {j["content_sha256"] for j in jobs}


async def test_jsonl_and_csv_take_their_text_and_metadata_fields_and_count_bad_lines(gw: Gateway) -> None:
    jsonl = b'{"body": "first note", "author": "ann", "x": 1}\n{broken\n[1, 2]\n{"author": "bob"}\n{"body": "second note", "author": "cy"}\n'
    job = await gw.ingest("n.jsonl", jsonl, text_field="body", metadata_fields="author")
    assert job["status"] == "done" and job["memories_created"] == 2
    assert [e["where"] for e in job["errors"]] == ["line 2", "line 3", "line 4"] and job["errors_count"] == 3
    hit = (await gw.search("second note"))[0]["memory"]
    assert hit["metadata"]["author"] == "cy" and hit["metadata"]["line"] == 5 and "x" not in hit["metadata"]

    csv = b'text,source,year\n"a row, quoted",web,2024\nshort row\n"multi\nline",book,1999\n'
    job = await gw.ingest("r.csv", csv)
    assert job["status"] == "done" and job["memories_created"] == 2
    assert job["errors"] == [{"where": "line 3", "message": "1 fields, the header has 3"}]
    hit = next(h["memory"] for h in await gw.search("multi\nline") if h["memory"]["content"] == "multi\nline")
    assert hit["metadata"]["source"] == "book" and hit["metadata"]["year"] == "1999"


@pytest.mark.parametrize("levels", [255, 400, 1100])
async def test_metadata_nested_past_what_json_can_be_written_again_is_a_400(
    sqlite_gw: Gateway, tmp_path: Path, levels: int
) -> None:
    """orjson reads 1,024 levels and writes 254: upload metadata nested between was accepted and
    the job's first save raised (a 500 for the upload, the file left as a job that never ran)."""
    deep = '{"a":' * levels + "1" + "}" * levels
    status, body = await sqlite_gw.upload("a.txt", paragraphs(2), metadata=deep)
    assert status == 400, body
    assert body["error"]["param"] == "metadata" and "at most 200 levels" in body["error"]["message"]
    assert list((tmp_path / "spool").iterdir()) == []
    status, listed = await sqlite_gw.call("GET", "/v1/memory/jobs")
    assert status == 200 and listed["data"] == []
    fine = '{"a":' * 199 + "1" + "}" * 199
    assert (await sqlite_gw.ingest("b.txt", paragraphs(2), metadata=fine))["status"] == "done"


async def test_a_jsonl_line_nested_past_what_json_can_be_written_again_is_one_error(
    sqlite_gw: Gateway,
) -> None:
    """Such a line failed the whole job ("internal error") when its chunk's metadata was measured;
    now it is one line's error, as a line that is not JSON is, and the job goes on."""
    deep = '{"text": "deep line", "m": ' + '{"a":' * 300 + "1" + "}" * 300 + "}"
    lines = ['{"text": "first line"}', deep, '{"text": "third line", "m": {"b": [1, [2]]}}']
    job = await sqlite_gw.ingest("d.jsonl", "\n".join(lines).encode())
    assert job["status"] == "done" and job["memories_created"] == 2, job
    assert job["errors"] == [{"where": "line 2", "message": "nests JSON deeper than 200 levels"}]
    hit = (await sqlite_gw.search("third line"))[0]["memory"]
    assert hit["metadata"]["m"] == {"b": [1, [2]]}


async def test_a_csv_row_over_a_mebibyte_is_one_error_and_the_rows_after_it_are_stored(
    sqlite_gw: Gateway,
) -> None:
    """A row of 2 MB of short fields was held as 700,000 strings (a 1 GiB one took the gateway
    down); now it is refused at 1 MiB and skipped."""
    csv = b"text,n\nfirst,1\n" + b"ab," * 700_000 + b"\nlast,3\n"
    job = await sqlite_gw.ingest("wide.csv", csv)
    assert job["status"] == "done" and job["memories_created"] == 2, job
    assert job["errors"] == [{"where": "line 3", "message": "longer than 1048576 characters"}]
    hit = next(h["memory"] for h in await sqlite_gw.search("last") if h["memory"]["content"] == "last")
    assert hit["metadata"]["line"] == 4


async def test_a_file_of_bad_lines_is_counted_at_constant_memory(sqlite_gw: Gateway) -> None:
    """Every bad line was an object the reader held until its batch was sent, and a batch was
    sent only after text: an 18 MB file of bad lines took the gateway from 120 MB to 2.9 GB
    (1 GiB would take it down). Now a batch keeps the problems a job can list and counts the
    others, and is sent every MiB read, so progress moves through them too."""
    lines = 1 << 18  # 512 KiB of "x\n": about 80 MB held by the old reader, past the bound below
    tracemalloc.start()
    try:
        job = await sqlite_gw.ingest("bad.jsonl", b"x\n" * lines)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert job["status"] == "done" and job["memories_created"] == 0, job
    assert job["errors_count"] == lines and len(job["errors"]) == 100
    assert job["errors"][-1]["where"] == "line 100"
    assert peak < 32 << 20, peak


async def test_a_records_fields_copied_into_each_of_its_chunks_are_bounded_by_the_files_size(
    sqlite_gw: Gateway, tmp_path: Path
) -> None:
    """One 532 KB line: 20 KB of text in chunks of 50, beside a 512 KB field. Each of its 400
    chunks carried the field: 200 MB written to the store. Now the job fails once the copies
    pass the bound (64 MiB here), before a batch is embedded, naming the line and the way out;
    the same text with metadata_fields keeping the small field is ingested."""
    line = orjson.dumps({"text": "word " * 4000, "blob": "x" * (512 << 10), "source": "crm"}) + b"\n"
    job = await sqlite_gw.ingest("big.jsonl", line, chunk_chars="50", overlap_chars="0")
    assert job["status"] == "failed", job
    assert "line 1" in job["error"] and "metadata_fields" in job["error"], job["error"]
    assert job["memories_created"] == 0 and sqlite_gw.embedder.calls == 0
    assert (tmp_path / "memory.sqlite3").stat().st_size < 16 << 20

    job = await sqlite_gw.ingest(
        "big.jsonl", line, chunk_chars="50", overlap_chars="0", metadata_fields="source"
    )
    assert job["status"] == "done" and job["memories_created"] == 400, job
    hit = (await sqlite_gw.search("word"))[0]["memory"]
    assert hit["metadata"]["source"] == "crm" and "blob" not in hit["metadata"]


async def test_a_utf16_export_is_read_as_its_text_and_a_binary_file_is_not_embedded(
    sqlite_gw: Gateway,
) -> None:
    """What Windows PowerShell's ``>`` writes (UTF-16 with a byte-order mark) became chunks of
    U+FFFD and NUL characters; random bytes named .txt were embedded and stored as text."""
    text = "Quarterly notes: renewals are up in the EMEA region, churn is down."
    job = await sqlite_gw.ingest("notes.txt", text.encode("utf-16"))
    assert job["status"] == "done" and job["memories_created"] == 1, job
    assert (await sqlite_gw.search(text))[0]["memory"]["content"] == text

    calls = sqlite_gw.embedder.calls
    job = await sqlite_gw.ingest("photo.txt", bytes(range(256)) * 400)
    assert job["status"] == "failed" and "not a text file" in job["error"], job
    assert job["memories_created"] == 0 and sqlite_gw.embedder.calls == calls


async def test_binary_without_nul_and_latin1_text_fail_their_job_with_nothing_embedded(
    sqlite_gw: Gateway,
) -> None:
    """Random bytes with their NULs removed, sent as .txt, became 12 memories of garbage
    (embedded, stored, recalled into prompts); a Latin-1 .txt was stored with U+FFFD for every
    accented letter. Each job now fails before anything is embedded, saying why."""
    calls = sqlite_gw.embedder.calls
    noise = random.Random(4).randbytes(30_000).replace(b"\x00", b"")
    job = await sqlite_gw.ingest("noise.txt", noise)
    assert job["status"] == "failed" and job["file"] == "noise.txt", job
    assert job["error"].startswith("not a text file: ") and "binary data" in job["error"], job
    old = "Le café était fermé; nous avons déjeuné à l'hôtel.\n".encode("latin-1") * 50
    job = await sqlite_gw.ingest("lettre.md", old)
    assert job["status"] == "failed" and job["file"] == "lettre.md", job
    assert (
        job["error"].startswith("not UTF-8 text: the byte at offset 6 (0xE9)")
        and "convert it to UTF-8" in job["error"]
    ), job
    assert sqlite_gw.embedder.calls == calls and sqlite_gw.count() == 0


async def test_pdf_pages_and_html_text(gw: Gateway) -> None:
    pdf = make_pdf(["First page text.", "Broken page.", "Third page text."], corrupt={1})
    job = await gw.ingest("doc.pdf", pdf)
    assert job["status"] == "done" and job["memories_created"] == 2, job
    assert job["errors_count"] == 1 and job["errors"][0]["where"] == "page 2"
    hit = next(h["memory"] for h in await gw.search("x") if h["memory"]["metadata"].get("page") == 3)
    assert hit["content"] == "Third page text."

    html = b"<html><head><style>p{}</style><script>var x = 1;</script></head><body><h1>Title</h1><p>Body &amp; soul.</p></body></html>"
    job = await gw.ingest("page.html", html)
    assert job["status"] == "done" and job["memories_created"] == 1
    hit = next(h["memory"] for h in await gw.search("x") if h["memory"]["metadata"]["file"] == "page.html")
    assert "Title" in hit["content"] and "Body & soul." in hit["content"] and "var x" not in hit["content"]


async def test_a_jsonl_file_with_a_utf8_byte_order_mark_keeps_its_first_line(sqlite_gw: Gateway) -> None:
    """Its first line was an error, 'not JSON (UTF-8 byte order mark (BOM) is not supported)'."""
    jsonl = b'\xef\xbb\xbf{"text": "first record"}\n{"text": "second record"}\n'
    job = await sqlite_gw.ingest("export.jsonl", jsonl)
    assert job["status"] == "done" and job["memories_created"] == 2 and job["errors_count"] == 0, job
    assert (await sqlite_gw.search("first record"))[0]["memory"]["metadata"]["line"] == 1


async def test_a_page_without_its_head_end_tag_is_ingested(sqlite_gw: Gateway) -> None:
    """It finished 'done' with no memories and the 'no text' warning: its whole body was taken
    for part of the head."""
    html = b"<!doctype html><html><head><title>Handbook</title><meta charset=utf-8><body><p>Expenses are filed monthly.</p>"
    job = await sqlite_gw.ingest("handbook.html", html)
    assert job["status"] == "done" and job["memories_created"] == 1 and job["warnings"] == [], job
    assert (await sqlite_gw.search("expenses"))[0]["memory"]["content"] == "Expenses are filed monthly."


async def test_a_file_with_no_text_finishes_with_no_memories_and_a_warning(gw: Gateway) -> None:
    job = await gw.ingest("empty.md", b"\n\n   \n")
    assert job["status"] == "done" and job["memories_created"] == 0
    assert job["warnings"] == ["the file has no text: no memories were created"]


async def test_a_corrupt_pdf_fails_its_job_with_the_reason(gw: Gateway) -> None:
    job = await gw.ingest("broken.pdf", b"%PDF-1.4 this is not a pdf")
    assert job["status"] == "failed" and "not a readable PDF" in job["error"]


async def test_a_small_pdf_that_expands_into_millions_of_characters_fails_at_its_bound(
    sqlite_gw: Gateway,
) -> None:
    """1.4 KB whose page tree lists one page of 1,000 characters 2,048 times: before, 2,048
    memories were embedded and stored (a few more KB made it millions); now the job fails once
    its text passes the bound, with what it read before that stored."""
    pdf = make_bomb_pdf("word " * 200, 11)
    job = await sqlite_gw.ingest("bomb.pdf", pdf)
    assert job["status"] == "failed", job
    assert "compression bomb" in job["error"] and f"of its {len(pdf)} bytes" in job["error"]
    assert job["memories_created"] <= 1100 and sqlite_gw.embedder.texts <= 1100


async def test_a_small_pdf_of_operators_that_show_nothing_fails_before_it_is_parsed(
    sqlite_gw: Gateway,
) -> None:
    """5 KB inflating to two pages of 5 MiB of operators, no text: it kept the job's reader busy
    for half a minute (days on a tree of 65,536 pages) and finished 'done' with nothing."""
    pdf = make_bomb_pdf("", 1, content=b"BT /F1 12 Tf " + b"()Tj " * (1 << 20) + b"ET")
    started = time.monotonic()
    job = await sqlite_gw.ingest("empty-bomb.pdf", pdf)
    assert job["status"] == "failed" and "bytes of content at page 1 of 2" in job["error"], job
    assert time.monotonic() - started < 10


async def test_a_small_pdf_drawing_one_form_over_and_over_fails_before_it_is_parsed(
    sqlite_gw: Gateway,
) -> None:
    """1 KB drawing a 50 KB form 100 times: pypdf parsed the form at every draw, ~15 s here for
    'done' with nothing (a form drawing a form: exponentially more)."""
    pdf = make_form_pdf(b"BT /F1 12 Tf " + b"()Tj " * 10_000 + b"ET", 100)
    started = time.monotonic()
    job = await sqlite_gw.ingest("forms.pdf", pdf)
    assert job["status"] == "failed" and "forms drawn over and over" in job["error"], job
    assert time.monotonic() - started < 10


# ----- refusals


async def test_an_unknown_type_is_415_listing_the_supported_ones(sqlite_gw: Gateway) -> None:
    status, body = await sqlite_gw.upload("slides.pptx", b"PK\x03\x04")
    assert status == 415
    assert body["error"]["code"] == "unsupported_media_type"
    assert ".pdf" in body["error"]["message"] and ".jsonl" in body["error"]["message"]
    async with sqlite_gw.client.post("/v1/memory/files", json={"namespace": "docs"}) as resp:
        assert resp.status == 415 and "multipart/form-data" in (await resp.json())["error"]["message"]


async def test_bad_form_fields_are_400_and_leave_nothing_spooled(sqlite_gw: Gateway, tmp_path: Path) -> None:
    for fields, param in (
        ({"metadata": "{not json"}, "metadata"),
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"namespace": "bad namespace!"}, "namespace"),
        ({"chunk_chars": "100", "overlap_chars": "80"}, "chunk_chars"),
        ({"chunk_chars": "ten"}, "chunk_chars"),
        ({"chunk_size": "500"}, "chunk_size"),  # a name other tools use: the answer lists ours
    ):
        status, body = await sqlite_gw.upload("a.txt", b"hello", **fields)
        assert status == 400, (fields, body)
        assert body["error"]["param"] == param, body
    status, body = await sqlite_gw.upload("a.txt", b"hello", chunk_size="500")
    assert "Unknown field 'chunk_size'" in body["error"]["message"]
    assert "chunk_chars" in body["error"]["message"] and "overlap_chars" in body["error"]["message"]
    # The file sent as a text field (curl -F file=<a.txt): answered "Unknown field 'file'.
    # Accepted: file, ...", which contradicted itself.
    form = aiohttp.FormData()
    form.add_field("namespace", "docs")
    form.add_field("file", "hello, as a text field", content_type="text/plain")  # multipart, no filename
    async with sqlite_gw.client.post("/v1/memory/files", data=form) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == "file" and "no filename" in error["message"], error
    # (h-probe2) a field's name not UTF-8: its refusal could not be written (the name was its param)
    body = b'--b\r\nContent-Disposition: form-data; name="pr\xffompt"\r\n\r\nhello\r\n--b--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    async with sqlite_gw.client.post("/v1/memory/files", data=body, headers=headers) as resp:
        assert resp.status == 400, await resp.text()
        assert "not UTF-8" in (await resp.json())["error"]["message"]
    assert list((tmp_path / "spool").iterdir()) == []


async def post_form(gw: Gateway, parts: list[tuple[str, str | bytes, str | None]]) -> tuple[int, Any]:
    """A form of ``(name, value, filename)`` parts in this order."""
    form = aiohttp.FormData()
    for name, value, filename in parts:
        form.add_field(name, value, filename=filename, content_type="application/octet-stream")
    async with gw.client.post("/v1/memory/files", data=form) as resp:
        return resp.status, await resp.json()


async def test_a_format_sent_after_the_file_is_the_jobs_format(sqlite_gw: Gateway, tmp_path: Path) -> None:
    """The file's format was chosen when its part arrived: a ``format`` field after it was
    accepted and ignored, so a .txt of JSON lines asked to be read as jsonl became one text."""
    lines = b'{"text": "first record"}\n{"text": "second record"}\n'
    status, job = await post_form(
        sqlite_gw, [("namespace", "docs", None), ("file", lines, "x.txt"), ("format", "jsonl", None)]
    )
    assert status == 202 and job["format"] == "jsonl", job
    job = await sqlite_gw.wait(job["id"])
    assert job["status"] == "done" and job["memories_created"] == 2, job
    status, body = await post_form(
        sqlite_gw, [("namespace", "docs", None), ("file", lines, "y.txt"), ("format", "docx", None)]
    )
    assert status == 415 and body["error"]["param"] == "format", body
    status, body = await post_form(
        sqlite_gw, [("namespace", "docs", None), ("format", "docx", None), ("file", lines, "y.txt")]
    )
    assert status == 415 and body["error"]["param"] == "format", body
    assert list((tmp_path / "spool").iterdir()) == []


async def test_a_file_name_longer_than_a_file_system_allows_is_a_400(
    sqlite_gw: Gateway, tmp_path: Path
) -> None:
    """A name of 100,000 characters was kept whole in the job and copied into every chunk's metadata."""
    status, body = await sqlite_gw.upload("n" * 252 + ".txt", b"hello")
    assert status == 400 and body["error"]["param"] == "file" and "256 characters" in body["error"]["message"]
    assert list((tmp_path / "spool").iterdir()) == []
    job = await sqlite_gw.ingest("n" * 251 + ".txt", b"hello")
    assert job["status"] == "done" and job["file"] == "n" * 251 + ".txt"


async def test_a_namespace_the_key_may_not_write_is_403_before_the_file_is_read(tmp_path: Path) -> None:
    async for gw in open_gateway(tmp_path, extra="auth: {mode: keys}\n", key=WRITER):
        status, body = await gw.upload("a.txt", paragraphs(5), namespace="secrets")
        assert status == 403 and body["error"]["code"] == "namespace_not_granted"
        assert list((tmp_path / "spool").iterdir()) == []
        job = await gw.ingest("a.txt", paragraphs(5))
        assert job["status"] == "done" and job["owner"] == "alpha"
        gw.key = None
        status, _ = await gw.call("GET", f"/v1/memory/jobs/{job['id']}")
        assert status == 401


async def test_a_key_without_the_namespace_neither_sees_nor_cancels_its_teams_jobs(tmp_path: Path) -> None:
    """A key of the job's team that may not read its namespace does not see the job, and one
    that may not write it cannot cancel or purge it (a read-only key purged a finished job's
    memories: cancel checked the team alone)."""
    async for gw in open_gateway(tmp_path, extra="auth: {mode: keys}\n", key=WRITER):
        job = await gw.ingest("a.txt", paragraphs(5))
        assert job["status"] == "done" and gw.count() > 0
        kept = gw.count()
        gw.key = READER
        status, body = await gw.call("DELETE", f"/v1/memory/jobs/{job['id']}?purge=true")
        assert status == 404, body  # not even seen: 'docs' is not among its reads
        status, listed = await gw.call("GET", "/v1/memory/jobs")
        assert status == 200 and listed["data"] == []
        assert gw.count() == kept
        # A key that reads 'docs' but writes nothing: sees the job, may not cancel it.
        KeyRing.callers["sk-sg-readsdocs"] = Caller(
            "key_docs_reader", "alpha", read_namespaces=frozenset({"docs"}), write_namespaces=frozenset()
        )
        gw.key = "sk-sg-readsdocs"
        status, seen = await gw.call("GET", f"/v1/memory/jobs/{job['id']}")
        assert status == 200 and seen["id"] == job["id"]
        status, body = await gw.call("DELETE", f"/v1/memory/jobs/{job['id']}?purge=true")
        assert status == 403 and body["error"]["code"] == "namespace_not_granted"
        assert gw.count() == kept
        del KeyRing.callers["sk-sg-readsdocs"]


async def test_another_team_cannot_take_a_files_chunk_ids_before_it_is_ingested(tmp_path: Path) -> None:
    """Chunk ids (``ing_<job key>_<n>``) follow from the file, its owner and namespace: another
    team that knew the file wrote one first, and the job skipped that chunk as stored, so the
    taker's text stood in for it. Such ids are refused on the memory API, and an id held by a
    memory that is not the job's (written past the API, or before this refusal) fails the job
    instead of being skipped."""
    from gateway.memory.access import MemoryAccess
    from gateway.memory.service import NewMemory

    async for gw in open_gateway(tmp_path, extra="auth: {mode: keys}\n", key=OTHER):
        one = {"namespace": "docs", "id": "ing_0123456789abcdef01234567_0", "content": "Mallory"}
        status, body = await gw.call("POST", "/v1/memory", one)
        assert status == 400 and body["error"]["param"] == "id", body
        batch = {"memories": [{"namespace": "docs", "content": "a"}, {**one, "id": "ing_x_1"}]}
        status, body = await gw.call("POST", "/v1/memory", batch)
        assert status == 400 and body["error"]["param"] == "memories[1].id", body

        gw.key = WRITER
        content = paragraphs(3, words=10)
        job = await gw.ingest("a.txt", content)
        assert job["status"] == "done"
        (hit,) = [h for h in await gw.search("p0w1") if h["memory"]["metadata"].get("chunk_index") == 0]
        taken = hit["memory"]["id"]  # the same file, owner and namespace: the same id anywhere
        assert taken.startswith("ing_")
    (tmp_path / "other").mkdir()
    async for gw in open_gateway(tmp_path / "other", extra="auth: {mode: keys}\n", key=WRITER):
        memory = gw.client.app[keys.MEMORY]  # type: ignore[index]
        squat = NewMemory(namespace="gamma", content="Mallory", embedding=tuple(vector_for("m")), id=taken)
        await memory.add([squat], MemoryAccess("gamma"))  # past the API
        job = await gw.ingest("a.txt", content)
        assert job["status"] == "failed" and "held by a memory that is not this job's" in job["error"]
        assert (await memory.get(taken)).content == "Mallory"  # nobody's text replaced, none hidden


async def test_forms_refused_after_the_file_is_spooled_leave_nothing_spooled(tmp_path: Path) -> None:
    """Fields may come after the file; a refusal then (a namespace the key may not write, a
    second file, an oversized field) deletes what was spooled, and no field is held past the
    form's known names, each once (a form of thousands of fields is refused at the first)."""

    def form(*parts: tuple[str, str | bytes, str | None]) -> aiohttp.FormData:
        data = aiohttp.FormData()
        for name, value, filename in parts:
            if filename is None:
                data.add_field(name, value)
            else:
                data.add_field(name, value, filename=filename, content_type="application/octet-stream")
        return data

    text = paragraphs(5)
    cases: list[tuple[aiohttp.FormData, int, str]] = [
        (form(("file", text, "a.txt"), ("namespace", "secrets", None)), 403, "namespace_not_granted"),
        (form(("namespace", "docs", None), ("file", text, "a.txt"), ("file", text, "b.txt")), 400, "file"),
        (
            form(("namespace", "docs", None), ("file", text, "a.txt"), ("metadata", "x" * 70_000, None)),
            400,
            "metadata",
        ),
        (form(*((f"f{n}", "v" * 1000, None) for n in range(50)), ("file", text, "a.txt")), 400, "f0"),
        (
            form(("namespace", "docs", None), ("namespace", "docs", None), ("file", text, "a.txt")),
            400,
            "namespace",
        ),
    ]
    async for gw in open_gateway(tmp_path, extra="auth: {mode: keys}\n", key=WRITER):
        for data, status, what in cases:
            async with gw.client.post("/v1/memory/files", data=data, headers=gw.headers) as resp:
                body = await resp.json()
            assert resp.status == status, body
            assert what in (body["error"]["code"], body["error"]["param"]), body
            assert list((tmp_path / "spool").iterdir()) == [], body
        job = await gw.ingest("a.txt", text)  # the form as sent before still works
        assert job["status"] == "done"


async def test_a_file_over_the_limit_is_413_while_it_streams(tmp_path: Path) -> None:
    """The body is sent by hand, 64 KiB at a time, with no Content-Length (chunked): the 413
    must arrive long before the client has sent it all, and nothing stays in the spool."""
    limit = 256 * 1024
    async for gw in open_gateway(tmp_path, ingest=f", max_file_bytes: {limit}"):
        server = gw.client.server
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        ).encode()
        total = 64 * 1024 * 1024
        sock = socket.create_connection((server.host, server.port))
        sock.setblocking(False)

        def chunk(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        pending = (
            b"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + chunk(head)
        )
        piece = chunk(b"x" * 65536)
        answer, sent = b"", 0
        while sent < total and b"\r\n\r\n" not in answer:
            pending = pending or piece
            try:
                n = sock.send(pending)
                pending, sent = pending[n:], sent + n
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.001)  # let the server (on this loop) run
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < total // 8, f"the client sent {sent} bytes before the 413"
        assert list((tmp_path / "spool").iterdir()) == []


# ----- progress, failures, cancel, resume (SQLite)


async def test_events_report_progress_at_least_every_second_then_done(tmp_path: Path) -> None:
    embedder = Embedder(delay_s=0.1)  # a slow provider: the job takes about 1.5 s
    async for gw in open_gateway(
        tmp_path, embedder=embedder, ingest=", embed_batch: 4, embed_concurrency: 1"
    ):
        status, job = await gw.upload("a.txt", paragraphs(400))
        assert status == 202 and job["status"] in ("queued", "running")
        events: list[tuple[float, str, dict[str, Any]]] = []
        async with gw.client.get(f"/v1/memory/jobs/{job['id']}/events") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            # Prepared by its handler, it still carries the gateway's headers.
            assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])
            assert resp.headers["Server"] == "sophia-gateway"
            name = ""
            async for line in resp.content:
                text = line.decode().strip()
                if text.startswith("event: "):
                    name = text[7:]
                elif text.startswith("data: "):
                    events.append((time.monotonic(), name, orjson.loads(text[6:])))
        names = [e[1] for e in events]
        assert names[-1] == "done" and set(names[:-1]) == {"progress"} and len(names) >= 4
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(events)]
        assert max(gaps) < 1.0, gaps
        progress = [e[2] for e in events if e[1] == "progress"]
        assert {
            "percent",
            "bytes_done",
            "bytes_total",
            "chunks_done",
            "bytes_per_s",
            "chunks_per_s",
            "eta_s",
        } <= set(progress[-1])
        assert progress[-1]["chunks_done"] > progress[0]["chunks_done"]
        # bytes move within a 1 MiB read (the file is smaller): interpolated from the chunks stored
        assert len({p["bytes_done"] for p in progress}) >= 3 and any(0 < p["percent"] < 100 for p in progress)
        assert any(p["eta_s"] is not None and p["bytes_per_s"] > 0 for p in progress)
        assert events[-1][2]["status"] == "done"


def serving(gw: Gateway, sock: socket.socket) -> bool:
    """Whether the gateway holds a connection from ``sock``."""
    here = sock.getsockname()
    server = gw.client.server.runner.server  # type: ignore[union-attr]
    return any(
        c.transport is not None and c.transport.get_extra_info("peername") == here
        for c in server.connections  # type: ignore[union-attr]
    )


async def test_an_events_reader_that_stops_reading_is_let_go_while_its_job_runs(tmp_path: Path) -> None:
    """A client asks for a job's events and reads none of them, keeping its socket (a 4 KiB
    receive buffer; the gateway's send buffer as the kernel sizes it, which grows to MiBs on
    loopback though nothing is read). The events are small (a few hundred bytes a pace), so the
    kernel takes every write for a long while: no write waits and the transport holds nothing
    unsent. Before, nothing bounded it: the handler and its connection stayed for as long as the
    job ran (a large file: hours; here the job is held, so for ever). Now the connection is closed
    once nothing the client has not acknowledged went to it for ``response_write_timeout_s``, and
    the job goes on. (With only the transport's unsent bytes watched, as for other streams, it
    still fails: the kernel's buffer absorbs the events.)"""
    embedder = Embedder()
    embedder.gate.clear()  # the job runs, stuck on its provider, until the end of the test
    server_part = "auth: {mode: open}\nserver: {response_write_timeout_s: 0.1}\n"
    async for gw in open_gateway(tmp_path, embedder=embedder, extra=server_part, progress_s=0.001):
        status, job = await gw.upload("a.txt", paragraphs(50))
        assert status == 202, job
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", gw.client.port))
            await loop.sock_sendall(
                sock, f"GET /v1/memory/jobs/{job['id']}/events HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            )
            deadline = time.monotonic() + 10  # a bound on a hang: let go in about 0.2 s
            while not serving(gw, sock) and time.monotonic() < deadline:  # accepted
                await asyncio.sleep(0.005)
            assert serving(gw, sock)
            while serving(gw, sock) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not serving(gw, sock), "the events stream still holds a client that reads nothing"
            # What the client was sent before it was let go: the stream's head and its events.
            received = bytearray()
            with contextlib.suppress(ConnectionResetError):
                while len(received) < 1 << 20 and (
                    chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                ):
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200") and b"event: progress" in received, received[:300]
        finally:
            sock.close()
        assert (await gw.call("GET", f"/v1/memory/jobs/{job['id']}"))[1]["status"] == "running"
        embedder.gate.set()
        await gw.wait(job["id"], "done")


async def test_a_failing_provider_pauses_the_job_and_it_resumes(sqlite_gw: Gateway) -> None:
    gw = sqlite_gw
    gw.embedder.failing = True
    status, job = await gw.upload("a.txt", paragraphs(300))
    paused = await gw.wait(job["id"], "paused")
    assert "resume" in paused["error"] and gw.count() == 0
    gw.embedder.failing = False
    status, resumed = await gw.call("POST", f"/v1/memory/jobs/{job['id']}/resume")
    assert status == 202 and resumed["status"] in ("queued", "running")
    done = await gw.wait(job["id"], "done")
    assert done["memories_created"] == gw.count() > 0 and done["error"] is None
    status, body = await gw.call("POST", f"/v1/memory/jobs/{job['id']}/resume")
    assert status == 409 and body["error"]["code"] == "job_not_resumable", body  # done: nothing to resume


async def test_a_paused_job_whose_file_is_gone_is_a_409_saying_so(sqlite_gw: Gateway, tmp_path: Path) -> None:
    """Both of resume's 409s had code null: a client could not tell 'upload it again' from
    'nothing to resume' but by reading the message."""
    sqlite_gw.embedder.failing = True
    status, job = await sqlite_gw.upload("a.txt", paragraphs(30))
    await sqlite_gw.wait(job["id"], "paused")
    for spooled in (tmp_path / "spool").iterdir():
        spooled.unlink()
    status, body = await sqlite_gw.call("POST", f"/v1/memory/jobs/{job['id']}/resume")
    assert status == 409 and body["error"]["code"] == "job_file_gone", body
    assert body["error"]["type"] == "invalid_request_error" and "upload it again" in body["error"]["message"]


async def test_a_paused_job_resumes_through_its_providers_half_open_breaker(tmp_path: Path) -> None:
    """After an outage the breaker lets one probe through and refuses other calls until its
    verdict; a job's two embedding workers call together, so the second's refusal paused the job
    again at every resume (nothing reached the provider) until other traffic closed the breaker.
    Now the other worker waits for the probe's verdict."""
    embedder = Embedder(failing=True, delay_s=0.3)  # the probe is still in flight when the other asks
    async for gw in open_gateway(
        tmp_path, embedder=embedder, extra="auth: {mode: open}\nbreaker: {cooldown_s: 1}\n"
    ):
        status, job = await gw.upload("a.txt", paragraphs(1500))
        assert status == 202, job
        await gw.wait(job["id"], "paused")
        embedder.failing = False
        deadline = time.monotonic() + 10
        while (await gw.call("GET", "/admin/models"))[1]["models"]["emb"]["deployments"][0][
            "breaker"
        ] != "half_open":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        status, _resumed = await gw.call("POST", f"/v1/memory/jobs/{job['id']}/resume")
        assert status == 202
        done = await gw.wait(job["id"], "done", "paused")
        assert done["status"] == "done", done["error"]
        assert done["memories_created"] == gw.count() > 256  # two batches: both workers embedded


async def test_cancel_keeps_what_was_stored_and_purge_removes_it(tmp_path: Path) -> None:
    embedder = Embedder(hold_after=2)  # two batches of 8 answered, then the provider holds
    async for gw in open_gateway(
        tmp_path, embedder=embedder, ingest=", embed_batch: 8, embed_concurrency: 1"
    ):
        status, job = await gw.upload("a.txt", paragraphs(400))
        while gw.count() < 16:  # the job cannot finish before the cancel (it polled here once,
            await asyncio.sleep(0.005)  # then held the provider, and lost that race on CI)
        status, cancelled = await gw.call("DELETE", f"/v1/memory/jobs/{job['id']}")
        assert status == 200 and cancelled["status"] == "cancelled"
        embedder.gate.set()  # searches embed their query
        kept = gw.count()
        assert kept >= 16 and kept == cancelled["memories_created"]
        hit = (await gw.search("p0w1"))[0]["memory"]
        assert hit["metadata"]["job_id"] == job["id"]
        status, purged = await gw.call("DELETE", f"/v1/memory/jobs/{job['id']}?purge=true")
        assert status == 200 and purged["warnings"][-1] == f"purged: {kept} memories deleted"
        assert gw.count() == 0


@pytest.mark.parametrize("purge", ["ture", "maybe", "", "2"])
async def test_a_purge_that_is_not_a_boolean_is_a_400_and_cancels_nothing(
    sqlite_gw: Gateway, purge: str
) -> None:
    """``purge=ture`` was read as false: a 200, and the memories the client asked to delete were
    kept (a running job cancelled, a finished one left as it was)."""
    job = await sqlite_gw.ingest("a.txt", paragraphs(3))
    kept = sqlite_gw.count()
    status, body = await sqlite_gw.call("DELETE", f"/v1/memory/jobs/{job['id']}?purge={purge}")
    assert status == 400 and body["error"]["param"] == "purge", body
    assert "true or false" in body["error"]["message"]
    assert sqlite_gw.count() == kept and (await sqlite_gw.wait(job["id"]))["warnings"] == job["warnings"]
    for spelled in ("TRUE", "1", "yes"):  # as before
        status, body = await sqlite_gw.call("DELETE", f"/v1/memory/jobs/{job['id']}?purge={spelled}")
        assert status == 200, body
    assert sqlite_gw.count() == 0


async def test_a_job_cut_by_a_restart_is_reported_and_continues_after_its_last_stored_batch(
    tmp_path: Path,
) -> None:
    embedder = Embedder()
    content = paragraphs(600)
    small = ", embed_batch: 8, embed_concurrency: 1, queue_batches: 1"
    async for gw in open_gateway(tmp_path, embedder=embedder, ingest=small):
        status, job = await gw.upload("a.txt", content)
        while gw.count() < 40:
            await asyncio.sleep(0.005)
        embedder.gate.clear()
    # the app stopped (as at a restart): the job was saved interrupted, its file kept
    embedder.gate.set()
    first_calls = embedder.calls
    async for gw in open_gateway(tmp_path, embedder=embedder, ingest=small):
        cut = await gw.wait(job["id"], "interrupted")
        assert cut["resume_from"] >= 40 and cut["percent"] > 0 and "resume" in cut["error"]
        stored = gw.count()
        status, again = await gw.upload("a.txt", content)  # uploading it again continues it
        assert status == 202 and again["id"] == job["id"] and again["chunks_done"] == cut["resume_from"]
        done = await gw.wait(job["id"], "done")
        assert gw.count() == done["memories_created"] == done["chunks_done"]
        total_chunks = done["chunks_done"]
        # Embedded twice at most: what was embedded but not yet stored at the stop (the store
        # queue's one batch, the one the worker held while the queue was full, and the call the
        # held provider finished after the stop).
        assert embedder.texts <= total_chunks + 8 * 3
        assert embedder.calls - first_calls <= (total_chunks - cut["resume_from"]) // 8 + 3
        assert stored >= cut["resume_from"]


async def test_back_pressure_holds_the_reader_while_the_provider_is_stuck(tmp_path: Path) -> None:
    embedder = Embedder()
    settings = ", embed_batch: 4, embed_concurrency: 2, queue_batches: 2"
    async for gw in open_gateway(tmp_path, embedder=embedder, ingest=settings):
        embedder.gate.clear()
        _status, job = await gw.upload("a.txt", paragraphs(2000, words=20))
        ingest = gw.client.app[keys.INGEST]  # type: ignore[index]
        live = ingest.live_job(job["id"])
        assert live is not None
        # At most: the chunk queue full (2 batches), one batch in each embedding worker, one more
        # the reader holds while it waits to put it; the store queue stays empty (nothing embedded).
        bound = (2 + 2 + 1) * 4
        deadline = time.monotonic() + 10
        while live.chunks_read < bound - 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # time enough for an unbounded reader to run far ahead
        assert live.chunks_read <= bound, live.chunks_read
        embedder.gate.set()
        done = await gw.wait(job["id"], "done")
        assert done["chunks_done"] > 5 * bound  # the reader was held far from the end of the file


async def test_a_hostile_file_name_reaches_no_path_and_records_cannot_hide_the_job_id(
    sqlite_gw: Gateway, tmp_path: Path
) -> None:
    jsonl = b'{"text": "a record", "job_id": "forged", "file": "forged.txt"}\n'
    body = (  # by hand: aiohttp's FormData would percent-encode the slashes
        b'--b\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n'
        b'--b\r\nContent-Disposition: form-data; name="format"\r\n\r\njsonl\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="../../outside/evil name.we ird"\r\n\r\n'
        + jsonl
        + b"\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    async with sqlite_gw.client.post("/v1/memory/files", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        job = await sqlite_gw.wait((await resp.json())["id"])
    assert job["status"] == "done" and job["file"] == "evil name.we ird"
    assert not (tmp_path / "outside").exists() and not (tmp_path.parent / "outside").exists()
    hit = (await sqlite_gw.search("a record"))[0]["memory"]
    assert hit["metadata"]["job_id"] == job["id"] and hit["metadata"]["file"] == "evil name.we ird"


async def test_a_file_name_that_is_not_utf8_is_kept_with_replacement_characters(sqlite_gw: Gateway) -> None:
    body = (  # a Latin-1 name, as an old client may send it (it was a 500: the job could not be saved)
        b'--b\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="r\xe9sum\xe9.txt"\r\n\r\n'
        b"a line of text\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    async with sqlite_gw.client.post("/v1/memory/files", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        job = await sqlite_gw.wait((await resp.json())["id"])
    assert job["status"] == "done" and job["file"] == "r\ufffdsum\ufffd.txt"


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=not-the-one"],
)
async def test_a_form_without_its_boundary_is_a_400(sqlite_gw: Gateway, content_type: str) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n--b--\r\n'
    async with sqlite_gw.client.post(
        "/v1/memory/files", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 400, await resp.text()  # (it was a 500: aiohttp's ValueError)
        error = (await resp.json())["error"]
    assert "not a valid multipart/form-data form" in error["message"] and error["param"] == "file"


@pytest.mark.parametrize(
    "disposition",
    [
        b'form-data; name="file"; filename="a\x00b.txt"',  # a NUL byte in a part's header
        b'form-data; name="file"; filename="a\x7fb.txt"\r\nX-Bad\x01: y',
    ],
)
async def test_a_part_header_the_parser_refuses_is_a_400(sqlite_gw: Gateway, disposition: bytes) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="namespace"\r\n\r\ndocs\r\n'
        b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\na line of text\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    async with sqlite_gw.client.post("/v1/memory/files", data=body, headers=headers) as resp:
        assert resp.status == 400, await resp.text()  # (it was a 500: aiohttp's InvalidHeader)
        error = (await resp.json())["error"]
    assert "not a valid multipart/form-data form" in error["message"] and error["param"] == "file"
    assert "\n" not in error["message"]


async def test_unknown_jobs_are_404_and_bad_listing_queries_400(sqlite_gw: Gateway) -> None:
    for method, path in (
        ("GET", "/v1/memory/jobs/job_nope"),
        ("GET", "/v1/memory/jobs/job_nope/events"),
        ("DELETE", "/v1/memory/jobs/job_nope"),
        ("POST", "/v1/memory/jobs/job_nope/resume"),
    ):
        status, body = await sqlite_gw.call(method, path)
        assert status == 404 and body["error"]["code"] == "job_not_found", (method, path, body)
    status, body = await sqlite_gw.call("GET", "/v1/memory/jobs?status=sleeping")
    assert status == 400 and body["error"]["param"] == "status"
    status, body = await sqlite_gw.call("GET", "/v1/memory/jobs?limit=0")
    assert status == 400 and body["error"]["param"] == "limit"


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        ("201", "integer_above_max_value"),
        ("100000000000000000000", "integer_above_max_value"),
        ("0", "integer_below_min_value"),
        ("-3", "integer_below_min_value"),
        ("ten", "invalid_type"),
        ("", "invalid_type"),
        ("1.5", "invalid_type"),
    ],
)
async def test_a_jobs_limit_outside_1_to_200_is_400_naming_it(
    sqlite_gw: Gateway, limit: str, code: str
) -> None:
    """Above 200 was served as 200 without a word; OpenAI's lists refuse an out-of-range limit."""
    status, body = await sqlite_gw.call("GET", f"/v1/memory/jobs?limit={limit}")
    assert status == 400, body
    error = body["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "limit", code)
    assert "'limit'" in error["message"]
    status, body = await sqlite_gw.call("GET", "/v1/memory/jobs?limit=200")
    assert status == 200 and body["object"] == "list"


async def test_a_jsonl_record_whose_text_holds_nul_is_one_counted_error(sqlite_gw: Gateway) -> None:
    jsonl = b'{"text": "kept record"}\n{"text": "nul \\u0000 here"}\n'
    job = await sqlite_gw.ingest("nul.jsonl", jsonl)
    assert job["status"] == "done" and job["memories_created"] == 1
    assert job["errors"] == [{"where": "line 2", "message": "'text' holds a NUL character (U+0000)"}]


async def test_an_upload_from_another_sites_page_writes_nothing(sqlite_gw: Gateway) -> None:
    # h-sec: a form is what a web page may post to any site without a CORS preflight, so a page
    # the operator opened could write memories into a gateway in auth.mode: open on loopback (a
    # 202 and a job before). A browser names the page in Origin; API clients send none.
    form = aiohttp.FormData()
    form.add_field("namespace", "docs")
    form.add_field("file", b"planted by a web page\n", filename="x.txt", content_type="text/plain")
    host = f"{sqlite_gw.client.host}:{sqlite_gw.client.port}"
    async with sqlite_gw.client.post(
        "/v1/memory/files", data=form, headers={"Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403, await resp.text()
        assert (await resp.json())["error"]["type"] == "permission_error"
    status, jobs = await sqlite_gw.call("GET", "/v1/memory/jobs")
    assert status == 200 and jobs["data"] == []
    same = aiohttp.FormData()  # a page of the gateway's own origin (it serves none) is not refused
    same.add_field("namespace", "docs")
    same.add_field("file", b"mine\n", filename="y.txt", content_type="text/plain")
    async with sqlite_gw.client.post(
        "/v1/memory/files", data=same, headers={"Origin": f"http://{host}", "Host": host}
    ) as resp:
        assert resp.status == 202, await resp.text()
