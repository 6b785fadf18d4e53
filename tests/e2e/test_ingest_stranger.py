"""File ingestion probed from outside, as a stranger would (h-ingest): a gateway process and a
fake provider process on loopback, hand-built multipart bodies sent over a plain HTTP connection
(what a library would refuse to send), the ``memory ingest`` command run as a process. Each test
asserts the status, the OpenAI error envelope and that the spool is left empty."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
