"""Ingestion leftovers (h-ingest2), from outside: a gateway process and a fake provider on
loopback, uploads as hand-built multipart bodies over plain HTTP, and ``memory ingest`` as a
process. A UTF-8 file with one stray byte was refused whole, an HTML page declaring its charset
was refused as legacy text, and the same bytes under another name returned the first job
renamed (and ran it again)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.process import start
from tests.e2e.test_ingest_stranger import Gw, cli, form, ns, part
from tests.e2e.test_memory import Fake, call, policy_text, start_gateway


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    process = start(["fake-provider", "--port", "0", "--embedding-kind", "words", "--embedding-dim", "64"])
    try:
        yield Fake(process)
    finally:
        process.stop()


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


def upload(gw: Gw, namespace: str, name: str, content: bytes, *fields: bytes) -> tuple[int, dict]:
    status, body = gw.post_form(form(ns(namespace), *fields, part("file", content, name)))
    return status, body


# ----- a stray byte


@pytest.mark.parametrize("name", ["export.csv", "notes.txt"])
def test_a_utf8_file_with_one_latin1_byte_is_ingested_with_the_byte_counted(gw: Gw, name: str) -> None:
    """It failed: "not UTF-8 text: the byte at offset 9,873 (0xE9) is not valid UTF-8"."""
    rows = "".join(f'{i},"Résumé numéro {i}: reçu à Zürich, payé en €"\n' for i in range(200))
    content = b"id,text\n" + rows.encode() + b'200,"caf\xe9 au lait"\n'
    status, job = upload(gw, "stray-" + name.split(".")[1], name, content)
    assert status == 202, job
    job = gw.job(job["id"])
    assert job["status"] == "done", job
    assert job["errors_count"] == 1 and job["memories_created"] > 0, job
    (error,) = job["errors"]
    assert error["where"] == f"bytes 0 to {len(content):,}", error
    assert error["message"].startswith("1 sequences not valid UTF-8 replaced by U+FFFD"), error
    assert gw.spooled() == []


def test_a_latin1_file_is_still_refused(gw: Gw) -> None:
    content = ("Le café de la gare était fermé; nous avons déjeuné à l'hôtel.\n" * 50).encode("latin-1")
    status, job = upload(gw, "stray-latin1", "old.txt", content)
    assert status == 202, job
    job = gw.job(job["id"])
    assert job["status"] == "failed" and job["error"].startswith("not UTF-8 text: the byte at offset 6"), job


# ----- a declared charset


def test_an_html_page_in_windows_1252_is_read_in_the_charset_it_declares(gw: Gw) -> None:
    """It failed as legacy text ("not UTF-8 text: the byte at offset ...")."""
    body = "The client’s “final” offer — €2,000 — was accepted by the board."
    page = (
        b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
        b"<title>Offer</title></head><body><p>" + body.encode("cp1252") + b"</p></body></html>"
    )
    status, job = upload(gw, "charset", "offer.html", page)
    assert status == 202, job
    job = gw.job(job["id"])
    assert job["status"] == "done" and job["errors_count"] == 0 and job["memories_created"] == 1, job
    found = gw.search("client final offer accepted by the board", "charset")
    assert found[0]["memory"]["content"] == body, found[0]


def test_an_html_page_declaring_an_unknown_charset_fails_naming_it(gw: Gw) -> None:
    page = b'<html><head><meta charset="x-klingon-1"></head><body><p>Qapla\xe9</p></body></html>'
    status, job = upload(gw, "charset", "klingon.html", page)
    assert status == 202, job
    job = gw.job(job["id"])
    assert job["status"] == "failed" and job["memories_created"] == 0, job
    assert job["error"].startswith(
        'the page declares charset "x-klingon-1" (the <meta> at byte 12), which is not'
    ), job
    assert gw.spooled() == []


# ----- the same bytes under another name


def test_the_same_bytes_under_another_name_answer_as_a_duplicate_of_the_first_job(gw: Gw) -> None:
    """b.txt with a.txt's bytes answered 202 with a.txt's job renamed b.txt and ran it again; the
    memories still said a.txt, and the listing no longer showed a.txt at all."""
    text = b"\n\n".join(f"Duplicate paragraph {i} about harbour cranes.".encode() for i in range(12))
    chunking = (part("chunk_chars", b"60"), part("overlap_chars", b"0"))
    status, first = upload(gw, "dups", "a.txt", text, *chunking)
    assert status == 202 and "duplicate" not in first, first
    first = gw.job(first["id"])
    assert first["status"] == "done" and first["memories_created"] == 12, first

    status, again = upload(gw, "dups", "b.txt", text, *chunking)
    assert status == 200, again  # nothing runs: the content is ingested
    assert again["id"] == first["id"] and again["file"] == "a.txt" and again["status"] == "done", again
    duplicate = again["duplicate"]
    assert {k: duplicate[k] for k in ("job", "file", "status", "uploaded_file")} == {
        "job": first["id"],
        "file": "a.txt",
        "status": "done",
        "uploaded_file": "b.txt",
    }, duplicate
    assert duplicate["message"].startswith(
        "'b.txt' has the same content as 'a.txt', ingested into namespace"
    ), duplicate
    status, job = call("GET", f"{gw.url}/v1/memory/jobs/{first['id']}")
    assert status == 200 and job["file"] == "a.txt" and job["updated_at"] == first["updated_at"], job
    status, listing = call("GET", f"{gw.url}/v1/memory/jobs?limit=200")
    assert [j["file"] for j in listing["data"] if j["namespace"] == "dups"] == ["a.txt"], listing
    assert gw.spooled() == []

    # the same name again is the same job, as before (it runs again and finds its chunks stored)
    status, same = upload(gw, "dups", "a.txt", text, *chunking)
    assert status == 202 and same["id"] == first["id"] and "duplicate" not in same, same
    assert gw.job(same["id"])["status"] == "done"
    # other chunking is another job, not a duplicate
    status, other = upload(gw, "dups", "b.txt", text, part("chunk_chars", b"80"), part("overlap_chars", b"0"))
    assert status == 202 and other["id"] != first["id"] and "duplicate" not in other, other
    assert gw.job(other["id"])["status"] == "done"


def test_a_purged_job_is_taken_over_by_its_content_under_another_name(gw: Gw) -> None:
    """Nothing of it is stored: the new upload is a new ingestion, named as sent."""
    text = b"\n\n".join(f"Purged paragraph {i} about tide tables.".encode() for i in range(5))
    status, first = upload(gw, "dups-purged", "a.txt", text)
    first = gw.job(first["id"])
    status, cancelled = call("DELETE", f"{gw.url}/v1/memory/jobs/{first['id']}?purge=true")
    assert status == 200 and cancelled["status"] == "cancelled", cancelled
    status, again = upload(gw, "dups-purged", "b.txt", text)
    assert status == 202 and again["file"] == "b.txt" and "duplicate" not in again, again
    done = gw.job(again["id"])
    assert done["status"] == "done" and done["memories_created"] == first["memories_created"] > 0, done


def test_the_cli_reports_a_duplicate_naming_the_first_file_and_stores_it_once(gw: Gw, tmp_path: Path) -> None:
    """It reported b.txt ``done``, its memories counted twice in the summary."""
    folder = tmp_path / "docs"
    folder.mkdir()
    text = "\n\n".join(f"CLI duplicate paragraph {i} on lighthouse keepers." for i in range(3))
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text(text)
    (folder / "c.txt").write_text("Another file altogether, about fog horns.")
    run = cli(str(folder), "--namespace", "dups-cli", "--url", gw.url, timeout_s=60)
    assert run.returncode == 0, run.stdout + run.stderr
    out = " ".join(run.stdout.split())
    _, listing = call("GET", f"{gw.url}/v1/memory/jobs?limit=200")
    (job_a,) = [j for j in listing["data"] if j["namespace"] == "dups-cli" and j["file"] == "a.txt"]
    assert f"b.txt: duplicate: the same content as a.txt (job {job_a['id']}): not stored again" in out, out
    assert f"3 files, {job_a['memories_created'] + 1} memories created, 0 errors" in out, out
