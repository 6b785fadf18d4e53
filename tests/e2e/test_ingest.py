"""File ingestion end to end: a gateway process, a fake provider process serving /v1/embeddings,
and the ``sophia-gateway memory ingest`` command run as a process against them (its output
captured, non-interactively)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing.pdf import make_pdf
from gateway.testing.process import ManagedProcess, start
from tests.e2e.test_memory import Fake, call, policy_text, start_gateway

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[Fake]:
    process = start(["fake-provider", "--port", "0", "--embedding-kind", "words", "--embedding-dim", "64"])
    try:
        yield Fake(process)
    finally:
        process.stop()


def gateway(fake: Fake, cwd: Path, ingest: str = "") -> ManagedProcess:
    policy = cwd / "policy.yaml"
    policy.write_text(policy_text(fake.url, f"ingest: {{progress_interval_s: 0.2{ingest}}}\n"))
    return start_gateway(policy, cwd)


def cli(*args: str, timeout_s: float = 60, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "memory", "ingest", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "120"},
    )


def upload(url: str, path: Path, namespace: str) -> dict[str, Any]:
    async def send() -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("namespace", namespace)
        form.add_field("file", path.read_bytes(), filename=path.name)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/memory/files", data=form) as resp,
        ):
            assert resp.status == 202, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    return asyncio.run(send())


def wait_job(url: str, job_id: str, *statuses: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, job = call("GET", f"{url}/v1/memory/jobs/{job_id}")
        assert status == 200, job
        if job["status"] in statuses:
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def corpus(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "handbook.txt").write_text(
        "\n\n".join(f"Chapter {i}. The on-call rota for team {i} starts on Monday." for i in range(300))
    )
    (folder / "sub" / "notes.jsonl").write_text(
        "\n".join(json.dumps({"text": f"customer {i} asked about invoices", "account": i}) for i in range(50))
        + "\n{broken line\n"
    )
    (folder / "sub" / "paper.pdf").write_bytes(make_pdf(["Quantum widgets reduce latency.", "Page two."]))
    (folder / "skip-me.txt").write_text("this file is excluded")
    (folder / "image.png").write_bytes(b"\x89PNG")


def test_the_cli_uploads_a_folder_with_progress_bars_and_resume_skips_what_is_done(
    fake: Fake, tmp_path: Path
) -> None:
    folder = tmp_path / "corpus"
    corpus(folder)
    process = gateway(fake, tmp_path)
    try:
        url = process.url
        # The folder by a short relative path: a file's line (path, outcome, first error) fits the
        # 120 columns however deep the test's temporary directory is.
        run = cli(
            "corpus",
            "--namespace",
            "kb",
            "--url",
            url,
            "--exclude",
            "skip-*",
            "--data-source",
            "cli",
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        out = run.stdout
        assert "total (3 files)" in out and "100%" in out  # the bars, drawn to a pipe
        assert "handbook.txt" in out and "notes.jsonl" in out and "paper.pdf" in out
        assert "skip-me" not in out and "image.png" not in out
        assert "1 errors, first: line 51" in out  # the broken JSONL line, reported and skipped
        assert "3 files," in out and "memories created" in out
        status, hits = call(
            "POST", url + "/v1/memory/search", {"query": "quantum widgets latency", "top_k": 1}
        )
        assert status == 200 and hits["data"][0]["memory"]["metadata"]["file"] == "paper.pdf"
        assert hits["data"][0]["memory"]["data_source"] == "cli"
        status, jobs = call("GET", url + "/v1/memory/jobs")
        assert status == 200 and {j["status"] for j in jobs["data"]} == {"done"} and len(jobs["data"]) == 3
        created = sum(j["memories_created"] for j in jobs["data"])
        calls = fake.embedding_calls()

        again = cli(
            "corpus", "--namespace", "kb", "--url", url, "--exclude", "skip-*", "--resume", cwd=tmp_path
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("skipped") == 3 and "0 memories created" in again.stdout
        assert fake.embedding_calls() == calls
        status, jobs = call("GET", url + "/v1/memory/jobs")
        assert sum(j["memories_created"] for j in jobs["data"]) == created
    finally:
        assert process.stop() == 0


def test_the_cli_reports_missing_paths_and_an_absent_gateway(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    run = cli(str(tmp_path / "a.txt"), "--namespace", "kb", "--url", "http://127.0.0.1:9")
    assert run.returncode == 2 and "cannot reach the gateway" in run.stderr
    run = cli(str(tmp_path / "nothing-here"), "--namespace", "kb")
    assert run.returncode == 2 and "no such file or folder" in run.stderr
    (tmp_path / "empty").mkdir()
    run = cli(str(tmp_path / "empty"), "--namespace", "kb")
    assert run.returncode == 2 and "no files to ingest" in run.stderr


def test_the_cli_shows_file_names_and_the_gateways_notes_as_they_are(fake: Fake, tmp_path: Path) -> None:
    """A CSV header quoting ``[/oops]`` stopped the command with rich's MarkupError (a traceback,
    the next files never sent), ``[bold]`` in a file name was taken as markup, and an escape
    sequence in a column name reached the terminal."""
    folder = tmp_path / "in"
    (folder / "notes[").mkdir(parents=True)
    (folder / "a.csv").write_text("title,[/oops] \x1b]0;pwned\x07\nx,y\n")
    (folder / "notes[" / "x].txt").write_text("a note in a folder with a bracket")
    (folder / "z[bold]z.txt").write_text("the last file, after the CSV")
    process = gateway(fake, tmp_path)
    try:
        run = cli(str(folder), "--namespace", "kb", "--url", process.url)
        assert run.returncode == 0, run.stdout + run.stderr
        shown = " ".join(run.stdout.split())  # as rich wrapped it at 120 columns
        assert "no 'text' column (columns: title, [/oops] \\x1b]0;pwned\\x07)" in shown
        assert "\x1b]0;" not in run.stdout and "\x07" not in run.stdout
        assert "notes[/x].txt" in run.stdout and "z[bold]z.txt" in run.stdout
        assert "3 files, 2 memories created, 1 errors" in run.stdout
    finally:
        assert process.stop() == 0


def test_a_failing_provider_pauses_the_job_and_a_restart_leaves_it_resumable(
    fake: Fake, tmp_path: Path
) -> None:
    text = tmp_path / "big.txt"
    text.write_text(
        "\n\n".join(f"Paragraph {i} is about subject {i % 17} and more words." for i in range(4000))
    )
    process = gateway(fake, tmp_path, ", embed_batch: 16, embed_concurrency: 1")
    try:
        call("POST", fake.url + "/_fake/faults", {"error_rate": 1.0, "error_status": 503})
        job = upload(process.url, text, "kb")
        paused = wait_job(process.url, job["id"], "paused")
        assert "resume" in paused["error"] and paused["memories_created"] == 0
        call("POST", fake.url + "/_fake/faults", {"error_rate": 0.0, "latency_ms": 150})
        status, _ = call("POST", f"{process.url}/v1/memory/jobs/{job['id']}/resume")
        assert status == 202
        deadline = time.monotonic() + 20
        while wait_job(process.url, job["id"], "running", "done")["resume_from"] < 32:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        assert process.stop() == 0  # SIGTERM while the job runs: saved as interrupted
    call("POST", fake.url + "/_fake/faults", {"latency_ms": 0})
    process = gateway(fake, tmp_path, ", embed_batch: 16, embed_concurrency: 1")
    try:
        cut = wait_job(process.url, job["id"], "interrupted")
        assert cut["resume_from"] >= 32 and cut["memories_created"] >= 32
        status, _ = call("POST", f"{process.url}/v1/memory/jobs/{job['id']}/resume")
        assert status == 202
        done = wait_job(process.url, job["id"], "done")
        body = urllib_text(process.url + "/metrics")  # one memory per chunk, none twice
        vectors = next(
            float(line.split()[-1])
            for line in body.splitlines()
            if line.startswith("gateway_memory_index_vectors ")
        )
        assert vectors == done["memories_created"] == done["chunks_done"]
        assert "gateway_memory_ingest_jobs_finished_total" in body
    finally:
        assert process.stop() == 0


def urllib_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def test_a_namespace_past_its_segment_size_is_sealed_to_mapped_files_a_restart_reads(
    fake: Fake, tmp_path: Path
) -> None:
    # 2,500 memories through a gateway whose growing segments hold 1,024 vectors (the first; the
    # later ones 512): three are sealed to files and memory-mapped while the job runs; searches
    # find memories of every segment, before and after a restart.
    lines = [f"record {i} of the archive mentions marker{i}x" for i in range(2500)]
    (tmp_path / "archive.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in lines))
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(fake.url, "index_segment_vectors: 1024\n"))

    def found(url: str, text: str) -> bool:
        status, body = call("POST", f"{url}/v1/embeddings", {"model": "embed", "input": text})
        assert status == 200, body
        search = {"vector": body["data"][0]["embedding"], "namespaces": ["archive"], "top_k": 5}
        status, hits = call("POST", f"{url}/v1/memory/search", search)
        assert status == 200, hits
        return text in [h["memory"]["content"] for h in hits["data"]]

    process = start_gateway(policy, tmp_path)
    try:
        job = upload(process.url, tmp_path / "archive.jsonl", "archive")
        done = wait_job(process.url, job["id"], "done", "failed", timeout_s=120)
        assert done["status"] == "done" and done["memories_created"] == 2500, done
        sealed = sorted((tmp_path / "data" / "memory-index").glob("*.seg"))
        assert len(sealed) == 3, sealed
        with urllib.request.urlopen(process.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "gateway_memory_index_sealed_segments 3.0" in metrics
        assert "gateway_memory_index_dead_vectors 0.0" in metrics
        for i in (3, 1500, 2000, 2400):  # spread over the sealed segments and the growing one
            assert found(process.url, lines[i]), i
    finally:
        assert process.stop() == 0
    restarted = start_gateway(policy, tmp_path)
    try:
        assert "memory index rebuilt" not in restarted.stderr  # loaded from its files
        for i in (3, 1500, 2000, 2400):
            assert found(restarted.url, lines[i]), i
    finally:
        assert restarted.stop() == 0
