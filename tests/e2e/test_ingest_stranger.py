"""File ingestion probed from outside, as a stranger would (h-ingest): a gateway process and a
fake provider process on loopback, hand-built multipart bodies sent over a plain HTTP connection
(what a library would refuse to send), the ``memory ingest`` command run as a process. Each test
asserts the status, the OpenAI error envelope and that the spool is left empty."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
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


@pytest.mark.parametrize("sent", [b"1_000", b" 100 ", "\u0661\u0660\u0660".encode(), b"+100", b"1e3"])
def test_chunk_sizes_are_whole_numbers_in_ascii_digits(gw: Gw, sent: bytes) -> None:
    """``1_000`` and `` 100 `` were taken (pydantic's lax integers, as ``int()``)."""
    for field in ("chunk_chars", "overlap_chars"):
        status, answer = gw.post_form(form(ns("digits"), part(field, sent), part("file", b"x", "d.txt")))
        message = assert_error(status, answer, 400, field)
        assert message == f"Invalid value for '{field}': must be a whole number written in ASCII digits."
    assert gw.spooled() == []


def test_a_file_part_with_an_empty_filename_is_a_400(gw: Gw) -> None:
    """A browser's form sends ``filename=""`` when no file was chosen: it was a 415 ``Cannot read ''``."""
    status, answer = gw.post_form(form(ns("names"), part("file", b"", "")))
    assert assert_error(status, answer, 400) == "The 'file' part's filename is empty: send a file."


@pytest.mark.parametrize("tail", [b"", b"\r\n", b"\r\n--" + BOUNDARY.encode()[:3]])
def test_a_form_cut_before_its_closing_boundary_says_so(gw: Gw, tail: bytes) -> None:
    """aiohttp's words were passed on: ``Reading after EOF``."""
    body = (
        ns("cut")
        + b"--"
        + BOUNDARY.encode()
        + b'\r\nContent-Disposition: form-data; name="file"; filename="c.txt"'
    )
    status, answer = gw.post_form(body + b"\r\n\r\n" + b"text " * 1000 + tail)
    message = assert_error(status, answer, 400)
    assert message == (
        "The body is not a valid multipart/form-data form: the body ends before the form's closing boundary."
    )
    assert gw.spooled() == []


@pytest.mark.parametrize(
    ("bom", "codec", "named"), [(b"\xff\xfe", "utf-16-le", "UTF-16"), (b"\xfe\xff", "utf-16-be", "UTF-16")]
)
def test_a_jsonl_file_in_utf16_fails_saying_it_must_be_utf8(
    gw: Gw, bom: bytes, codec: str, named: str
) -> None:
    """Each of its lines was an error of its own (``not JSON (str is not valid UTF-8: surrogates
    not allowed ...)``) and the job ended ``done`` with a warning."""
    lines = "".join(f'{{"text": "record {i}"}}\n' for i in range(3)).encode(codec)
    job = gw.ingest(ns("jsonl"), part("file", bom + lines, "export.jsonl"))
    assert job["status"] == "failed" and job["memories_created"] == 0, job
    assert (
        job["error"]
        == f"a .jsonl file is read as UTF-8, and this one starts with a {named} byte-order mark: save it as UTF-8"
    )
    assert job["errors_count"] == 0, job


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("metadata", b"{not json", "metadata"),
        ("chunk_chars", b"10", "chunk_chars"),
        ("namespace", b"a b", "namespace"),
    ],
)
def test_a_bad_field_before_the_file_is_refused_before_the_file_is_read(
    gw: Gw, field: str, value: bytes, param: str
) -> None:
    """A bad field sent before the file was refused only once the whole file had been read and
    spooled (a 1 GiB upload with a typo in ``metadata`` cost its upload). The body here declares
    50 MB and sends its file 64 KB at a time: the answer comes after the first few (aiohttp reads
    a field's end only once bytes after it arrive, so not before the file has begun)."""
    fields = (part(field, value),) if field == "namespace" else (ns("early"), part(field, value))
    head = form(*fields)[: -len(f"--{BOUNDARY}--\r\n")]
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'.encode()
    )
    sent, answer = 0, b""
    with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/memory/files HTTP/1.1\r\nHost: localhost\r\nContent-Length: {50_000_000}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
            + head
        )
        sock.setblocking(False)
        deadline = time.monotonic() + 10
        while not (b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}")):
            assert time.monotonic() < deadline, f"no answer after {sent} bytes of the file"
            if sent < 8_000_000:  # the file goes on coming, as a real upload's does
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(b"text " * 13_107)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if not data:
                break
            answer += data
    assert sent < 2_000_000, sent  # refused within the first MiB or so, not after 50 MB
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400 "), answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert_error(400, body, 400, param)
    assert gw.spooled() == []


# ----- the job routes


@pytest.mark.parametrize(
    "job_id",
    [
        "job_%25ZZ",
        "..%2F..%2Fetc",
        "job_%00",
        "JOB_0",
        "job_" + "a" * 6000,
        "job_'%20OR%201=1--",
        "job_%E2%80%AE",
    ],
)
def test_an_unknown_or_malformed_job_id_is_a_404_on_every_route(gw: Gw, job_id: str) -> None:
    for method, tail in (
        ("GET", ""),
        ("DELETE", ""),
        ("DELETE", "?purge=true"),
        ("GET", "/events"),
        ("POST", "/resume"),
    ):
        status, answer = gw.send(method, f"/v1/memory/jobs/{job_id}{tail}")
        message = assert_error(status, answer, 404, "id")
        assert message.startswith("No ingest job with id '") and len(message) < 400, message
        assert answer["error"]["code"] == "job_not_found"


def test_the_same_file_uploaded_twice_at_once_is_one_job_and_one_copy(gw: Gw) -> None:
    text = b"\n\n".join(f"Twin paragraph {i} about lighthouses.".encode() for i in range(40))
    parts = (
        ns("twins"),
        part("chunk_chars", b"60"),
        part("overlap_chars", b"0"),
        part("file", text, "t.txt"),
    )
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: gw.post_form(form(*parts)), range(2)))
    assert [status for status, _ in answers] == [202, 202], answers
    assert answers[0][1]["id"] == answers[1][1]["id"]
    job = gw.job(answers[0][1]["id"])
    assert job["status"] == "done" and job["memories_created"] == 40 and job["chunks_done"] == 40, job
    found = gw.search("Twin paragraph 7 about lighthouses.", "twins")
    assert found[0]["memory"]["metadata"]["chunk_index"] == 7 and found[1]["score"] < found[0]["score"]
    assert gw.spooled() == []


def test_events_of_a_finished_job_end_at_once_and_a_client_leaving_mid_stream_stops_nothing(gw: Gw) -> None:
    text = b"\n\n".join(f"Stream paragraph {i} on the tides of the bay.".encode() for i in range(3000))
    status, job = gw.post_form(
        form(
            ns("events"), part("chunk_chars", b"50"), part("overlap_chars", b"0"), part("file", text, "e.txt")
        )
    )
    assert status == 202, job
    for _ in range(3):  # read the first event, then leave
        conn = http.client.HTTPConnection(gw.host, gw.port, timeout=10)
        conn.request("GET", f"/v1/memory/jobs/{job['id']}/events")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        assert resp.readline().startswith(b"event: ")
        conn.close()
    done = gw.job(job["id"])
    assert done["status"] == "done" and done["memories_created"] == done["chunks_done"] > 0, done
    started = time.monotonic()
    conn = http.client.HTTPConnection(gw.host, gw.port, timeout=10)
    conn.request("GET", f"/v1/memory/jobs/{job['id']}/events")
    body = conn.getresponse().read().decode()  # the stream ends: read() returns
    conn.close()
    assert time.monotonic() - started < 5
    assert body.startswith("event: done\ndata: {") and body.endswith("\n\n"), body[:200]
    assert json.loads(body.split("data: ", 1)[1])["id"] == job["id"]


# ----- the command


def cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "memory", "ingest", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "200"},
    )


def test_the_cli_reports_a_fifo_and_a_socket_as_unreadable_and_goes_on(gw: Gw, tmp_path: Path) -> None:
    """A FIFO named on the command line held the command for ever (its open waited for a
    writer), and a socket's open was a traceback that stopped the next files."""
    fifo, sock, good = tmp_path / "pipe.txt", tmp_path / "sock.txt", tmp_path / "good.txt"
    os.mkfifo(fifo)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    good.write_text("a file that can be read")
    try:
        run = cli(str(fifo), str(sock), str(good), "--namespace", "cli", "--url", gw.url, timeout_s=30)
    finally:
        listener.close()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert f"{fifo}: unreadable: not a regular file" in run.stdout
    assert f"{sock}: unreadable: No such device or address" in run.stdout
    assert "3 files, 1 memories created, 0 errors" in run.stdout


@pytest.mark.parametrize("server", ["html", "fake provider"])
def test_the_cli_against_a_server_that_is_not_the_gateway_says_so_in_one_line(
    server: str, fake: Fake, tmp_path: Path
) -> None:
    """The answer's JSON was read as it came: a traceback (JSONDecodeError) for a server that
    answers HTML, or plain text, and for ``--resume`` too."""
    (tmp_path / "a.txt").write_text("hello")
    if server == "html":
        other = subprocess.Popen(
            [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert other.stdout is not None
        line = other.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        url = line.split("(")[1].split(")")[0].rstrip("/")
    else:
        other, url = None, fake.url
    try:
        # (http.server answers a POST before reading its body and closes: the upload may fail
        # to send first, "cannot reach the gateway", so it is asked with --resume, a GET first.)
        for extra in (("--resume",),) if server == "html" else ((), ("--resume",)):
            run = cli(str(tmp_path / "a.txt"), "--namespace", "cli", "--url", url, *extra, timeout_s=30)
            assert run.returncode == 2, run.stdout + run.stderr
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1, run.stderr
            assert lines[0].startswith(f"{url} did not answer as a Sophia gateway: HTTP "), lines
            assert lines[0].endswith("; is --url the gateway?"), lines
    finally:
        if other is not None:
            other.terminate()
            other.wait(10)


def _opened_by(pid: int, path: Path, past: int) -> bool:
    """Whether process ``pid`` has ``path`` open and has read past ``past`` bytes of it."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    pos = int(info.readline().split()[1])
                if pos > past:
                    return True
    except (FileNotFoundError, ProcessLookupError):
        pass
    return False


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_a_file_that_changes_while_the_cli_uploads_it_is_reported_changed(
    gw: Gw, tmp_path: Path, change: str
) -> None:
    """aiohttp declared the size it found when the form was built and sent what it found while
    writing: a file growing meanwhile was a 400 'Reading after EOF' (more bytes than declared),
    one shrinking held the upload until the gateway's read timeout. The gateway is stopped
    (SIGSTOP) while the command fills the socket, so the file changes mid-upload for certain."""
    path = tmp_path / "log.txt"
    with path.open("wb") as f:
        for i in range(40):
            f.write((f"line {i} of a log being written. " * 30000).encode())
    gw.process.signal(signal.SIGSTOP)
    try:
        command = ["memory", "ingest", str(path), "--namespace", "changing", "--url", gw.url]
        run = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        )
        deadline = time.monotonic() + 30
        while not _opened_by(run.pid, path, 0):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.01)
        if change == "grows":
            with path.open("ab") as f:
                f.write(b"one more line\n")
        else:
            os.truncate(path, 1000)
    finally:
        gw.process.signal(signal.SIGCONT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, out + err
    assert "Traceback" not in err, err
    shown = " ".join(out.split())
    if change == "grows":  # sent as it was when opened; the job that started from it is cancelled
        assert (
            f"{path}: changed: it changed while it was uploaded: run again once it no longer changes (job"
            in shown
        )
    else:
        assert f"{path}: changed: it became shorter while it was uploaded: run again" in shown
    assert "1 files, 0 memories created" in shown
    deadline = time.monotonic() + 10
    while gw.spooled():  # the cut upload's partial file, or the cancelled job's, is deleted
        assert time.monotonic() < deadline, gw.spooled()
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        (
            "--metadata",
            "{not json",
            "--metadata: Invalid value for 'metadata': must be a JSON object (not valid JSON).",
        ),
        (
            "--namespace",
            "two words",
            "--namespace: Invalid value for 'namespace': String should match pattern",
        ),
        (
            "--chunk-chars",
            "10",
            "--chunk-chars: Invalid value for 'chunk_chars': Input should be greater than",
        ),
    ],
)
def test_an_option_the_gateway_refuses_stops_the_run_at_the_first_file(
    gw: Gw, tmp_path: Path, option: str, value: str, said: str
) -> None:
    """Every file of a folder was uploaded whole and refused the same way, one 'refused' line
    each, exit 1 as for a file that failed: a bad argument is exit 2, said once."""
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text(f"file {i}")
    args = ["--namespace", "opts", option, value] if option != "--namespace" else ["--namespace", value]
    run = cli(str(tmp_path), *args, "--url", gw.url, timeout_s=30)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"the gateway at {gw.url} refused {said}"), run.stderr
    assert "refused:" not in run.stdout and "memory ingest" not in run.stdout  # no per-file lines, no summary


def test_the_cli_says_which_file_it_was_sending_when_the_gateway_went_away(
    fake: Fake, tmp_path: Path
) -> None:
    """A gateway killed while it ran a file's job was reported as never reached: ``cannot reach
    the gateway at URL: Response payload is not completed``."""
    cwd = tmp_path / "gw"
    cwd.mkdir()
    policy = cwd / "policy.yaml"
    policy.write_text(policy_text(fake.url, "ingest: {progress_interval_s: 0.2, embed_batch: 8}\n"))
    process = start_gateway(policy, cwd)
    try:
        (tmp_path / "big.txt").write_text(
            "\n\n".join(f"Paragraph {i} of a long file." for i in range(100000))
        )
        command = ["memory", "ingest", str(tmp_path / "big.txt"), "--namespace", "lost", "--url", process.url]
        run = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        )
        deadline = time.monotonic() + 30
        while True:  # its job runs: the command follows its events
            status, jobs = call("GET", f"{process.url}/v1/memory/jobs?status=running")
            if status == 200 and jobs["data"]:
                break
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.02)
        process.signal(signal.SIGKILL)
        out, err = run.communicate(timeout=30)
    finally:
        process.stop()
    assert run.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"lost the gateway at {process.url} while ingesting {tmp_path / 'big.txt'}: "
    ), lines
    assert lines[0].endswith("(a job it started shows interrupted there: run again with --resume)"), lines
