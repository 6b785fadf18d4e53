"""File ingestion probed from outside, as a stranger would (h-ingest): a gateway process and a
fake provider process on loopback, hand-built multipart bodies sent over a plain HTTP connection
(what a library would refuse to send), the ``memory ingest`` command run as a process. Each test
asserts the status, the OpenAI error envelope and that the spool is left empty."""

from __future__ import annotations

import http.client
import io
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pypdf
import pytest

from gateway.testing.pdf import make_pdf
from gateway.testing.process import ManagedProcess, start
from tests.e2e.test_memory import Fake, call, policy_text, start_gateway

REPO = Path(__file__).resolve().parents[2]
BOUNDARY = "stranger"


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    process = start(["fake-provider", "--port", "0", "--embedding-kind", "words", "--embedding-dim", "64"])
    try:
        yield Fake(process)
    finally:
        process.stop()


class Gw:
    def __init__(self, process: ManagedProcess, spool: Path) -> None:
        self.process, self.spool = process, spool
        self.url = process.url
        parsed = urllib.parse.urlsplit(self.url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(raw) if raw else None

    def post_form(self, body: bytes, boundary: str = BOUNDARY) -> tuple[int, Any]:
        ctype = f"multipart/form-data; boundary={boundary}"
        return self.send("POST", "/v1/memory/files", body, {"Content-Type": ctype})

    def job(self, job_id: str, *statuses: str, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status, job = call("GET", f"{self.url}/v1/memory/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in (statuses or ("done", "failed", "paused", "cancelled")):
                return dict(job)
            assert time.monotonic() < deadline, job
            time.sleep(0.05)

    def ingest(self, *parts: bytes) -> dict[str, Any]:
        status, job = self.post_form(form(*parts))
        assert status == 202, job
        return self.job(job["id"])

    def search(self, query: str, namespace: str) -> list[dict[str, Any]]:
        status, body = call(
            "POST", f"{self.url}/v1/memory/search", {"query": query, "namespaces": [namespace], "top_k": 3}
        )
        assert status == 200, body
        return list(body["data"])

    def spooled(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir()) if self.spool.exists() else []


@pytest.fixture(scope="module")
def gw(fake: Fake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    cwd = tmp_path_factory.mktemp("gw")
    spool = cwd / "spool"
    policy = cwd / "policy.yaml"
    policy.write_text(policy_text(fake.url, f"ingest: {{progress_interval_s: 0.2, spool_dir: {spool}}}\n"))
    process = start_gateway(policy, cwd)
    try:
        yield Gw(process, spool)
    finally:
        process.stop()
        assert "Traceback" not in process.output, process.output[-3000:]


def part(name: str, data: bytes, filename: bytes | str | None = None, headers: bytes = b"") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + (filename.encode() if isinstance(filename, str) else filename) + b'"'
    return b"--" + BOUNDARY.encode() + b"\r\n" + disposition + b"\r\n" + headers + b"\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


def ns(name: str) -> bytes:
    return part("namespace", name.encode())


def assert_error(status: int, body: Any, expected: int, param: str | None = "file") -> str:
    assert status == expected, body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param, body
    message: str = body["error"]["message"]
    assert "spool" not in message and "/tmp" not in message, message
    return message


# ----- a cancel that purges, then the same file again


def test_a_purged_job_uploaded_again_stores_every_chunk_again(gw: Gw) -> None:
    """DELETE ?purge=true deleted the job's memories but kept ``resume_from``: the same file sent
    again skipped the chunks below it as stored, and the job ended ``done`` without them."""
    text = b"\n\n".join(
        f"Paragraph {i} tells of the {w} river.".encode() for i, w in enumerate(("red", "blue", "green"))
    )
    parts = (
        ns("purged"),
        part("chunk_chars", b"50"),
        part("overlap_chars", b"0"),
        part("file", text, "rivers.txt"),
    )
    job = gw.ingest(*parts)
    assert job["status"] == "done" and job["memories_created"] == 3, job
    status, purged = gw.send("DELETE", f"/v1/memory/jobs/{job['id']}?purge=true")
    assert status == 200, purged
    assert purged["warnings"][-1] == "purged: 3 memories deleted", purged
    assert purged["status"] == "cancelled" and purged["resume_from"] == 0, purged  # no longer done
    assert gw.search("Paragraph 0 tells of the red river.", "purged") == []
    again = gw.ingest(*parts)
    assert again["id"] == job["id"] and again["status"] == "done", again
    for i, w in enumerate(("red", "blue", "green")):
        found = gw.search(f"Paragraph {i} tells of the {w} river.", "purged")
        assert found and found[0]["memory"]["metadata"]["chunk_index"] == i, found
    assert again["memories_created"] == 3, again
    assert gw.spooled() == []


# ----- the form


@pytest.mark.parametrize(
    ("disposition", "char"),
    [
        (b"filename*=UTF-8''a%00b.txt", "U+0000"),  # RFC 5987: aiohttp decodes what it refuses quoted
        (b"filename*=UTF-8''a%1B%5B31mred.txt", "U+001B"),
        (b"filename*=UTF-8''a%0D%0Ab.txt", "U+000D"),
        (b"filename*=UTF-8''a%C2%9Bb.txt", "U+009B"),  # C1: a terminal's CSI
        (b"filename*=UTF-8''invoice%E2%80%AEtxt.exe.txt", "U+202E"),  # shows as invoice...exe
        ('filename="report\u2066.txt"'.encode(), "U+2066"),
    ],
)
def test_a_file_name_with_a_control_character_is_a_400_before_the_file_is_read(
    gw: Gw, disposition: bytes, char: str
) -> None:
    """A name that acts on a terminal or reorders the text around it was stored as the job's
    ``file`` and in every chunk's metadata (and shown by whatever lists them)."""
    body = form(
        ns("names"),
        b"--"
        + BOUNDARY.encode()
        + b'\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\n\r\n"
        b"some text\r\n",
    )
    status, answer = gw.post_form(body)
    message = assert_error(status, answer, 400)
    assert message == f"The file's name holds the control character {char}: rename the file."
    assert gw.spooled() == []


def test_names_in_other_scripts_are_kept(gw: Gw) -> None:
    job = gw.ingest(ns("names"), part("file", "שלום עולם".encode(), "מסמך.txt"))
    assert job["status"] == "done" and job["file"] == "מסמך.txt", job


@pytest.mark.parametrize(
    ("header", "reported"),
    [
        (b"Content-Transfer-Encoding: base64\r\n", "Content-Transfer-Encoding 'base64'"),
        (b"Content-Transfer-Encoding: Quoted-Printable\r\n", "Content-Transfer-Encoding 'quoted-printable'"),
        (b"Content-Encoding: gzip\r\n", "Content-Encoding 'gzip'"),
    ],
)
def test_an_encoded_part_is_a_415_not_stored_as_its_encoded_bytes(
    gw: Gw, header: bytes, reported: str
) -> None:
    """``Content-Transfer-Encoding: base64`` was ignored: the job was done, its memories the base64
    text (``aGVsbG8=``), not the file's."""
    status, answer = gw.post_form(form(ns("encoded"), part("file", b"aGVsbG8gd29ybGQ=", "b64.txt", header)))
    message = assert_error(status, answer, 415)
    assert message.startswith(f"The form part 'file' has {reported}: send each part's bytes"), message
    assert answer["error"]["code"] == "unsupported_media_type"
    # a field too, and after the file was spooled: nothing of it is kept
    body = form(
        ns("encoded"), part("file", b"plain", "p.txt"), part("data_source", b"ZG9jcw==", None, header)
    )
    status, answer = gw.post_form(body)
    assert_error(status, answer, 415, param="data_source")
    assert gw.spooled() == []


def test_a_part_declared_binary_or_8bit_is_read_as_it_is(gw: Gw) -> None:
    for n, header in enumerate(
        (b"Content-Transfer-Encoding: binary\r\n", b"Content-Transfer-Encoding: 8BIT\r\n")
    ):
        job = gw.ingest(ns("encoded"), part("file", f"plain text {n}".encode(), f"p{n}.txt", header))
        assert job["status"] == "done" and job["memories_created"] == 1, job


def test_metadata_null_is_no_metadata_and_other_shapes_say_what_they_are(gw: Gw) -> None:
    """``metadata=null`` was refused as nesting past 200 levels."""
    job = gw.ingest(ns("meta"), part("metadata", b"null"), part("file", b"a note with no metadata", "n.txt"))
    assert job["status"] == "done", job
    hit = gw.search("a note with no metadata", "meta")[0]["memory"]
    assert set(hit["metadata"]) == {"job_id", "file", "offset", "chunk_index"}, hit
    for sent, said in (
        (b"[1, 2]", "expected an object, got an array"),
        (b'"text"', "expected an object, got a string"),
        (b"{1: 2}", "must be a JSON object (not valid JSON)"),
        (b'{"a": NaN}', "must be a JSON object (not valid JSON)"),
        (b'{"a":' * 300 + b"1" + b"}" * 300, "must nest at most 200 levels of objects and arrays"),
    ):
        status, answer = gw.post_form(form(ns("meta"), part("metadata", sent), part("file", b"x", "x.txt")))
        assert assert_error(status, answer, 400, "metadata") == f"Invalid value for 'metadata': {said}."
    assert gw.spooled() == []


def test_an_encrypted_pdf_fails_its_job_saying_it_needs_a_password(gw: Gw) -> None:
    """It said ``not a readable PDF (File has not been decrypted)``; one whose password is empty
    (only an owner password: the common "protected" PDF) is read."""

    def encrypted(user: str) -> bytes:
        writer = pypdf.PdfWriter()
        writer.append(pypdf.PdfReader(io.BytesIO(make_pdf(["A locked page about otters."]))))
        writer.encrypt(user, "owner")
        out = io.BytesIO()
        writer.write(out)
        return out.getvalue()

    job = gw.ingest(ns("pdf"), part("file", encrypted("secret"), "locked.pdf"))
    assert job["status"] == "failed" and job["memories_created"] == 0, job
    assert (
        job["error"] == "the PDF is encrypted and needs a password to open: upload a copy saved without one"
    )
    job = gw.ingest(ns("pdf"), part("file", encrypted(""), "owner-only.pdf"))
    assert job["status"] == "done" and job["memories_created"] == 1, job
    assert gw.spooled() == []


def test_a_listing_after_an_unknown_job_names_the_after_parameter(gw: Gw) -> None:
    status, answer = gw.send("GET", "/v1/memory/jobs?after=job_000000000000000000000000")
    assert (
        assert_error(status, answer, 404, "after") == "No ingest job with id 'job_000000000000000000000000'."
    )
    assert answer["error"]["code"] == "job_not_found"
