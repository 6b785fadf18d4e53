"""Revoking, rotating and updating keys under ``serve --workers N``: every worker refuses the key as soon as
``/admin/keys`` answers, not only the worker that took the admin call (the others used to accept
it from their lookup cache for ``auth.key_cache_s``, here 300 s so that window cannot pass).

Every request opens a new connection (urllib), so SO_REUSEPORT hands it to either worker: 40
requests all reaching one of two workers is a 1 in 2**39 chance.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest

from gateway.testing.process import ManagedProcess, start
from tests.e2e.cache_support import shared_redis_url, unique

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux)")

TOKEN = "workers-admin-token"
TRIES = 40
POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
auth:
  key_cache_s: 300
  store: keys.sqlite3
  teams:
    ops: {}
"""


def admin(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + path,
        method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def statuses(url: str, secret: str) -> list[int]:
    """``GET /v1/models`` with ``secret``, TRIES times, each on a new connection."""
    out = []
    for _ in range(TRIES):
        request = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                out.append(resp.status)
        except urllib.error.HTTPError as exc:
            out.append(exc.code)
    return out


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url, private = shared_redis_url()
    try:
        yield url
    finally:
        if private is not None:
            private.close()


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str) -> Iterator[ManagedProcess]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    proc = start(
        ["serve", "--policy", "policy.yaml", "--port", "0", "--workers", "2"],
        cwd=str(tmp_path),
        env={
            "SOPHIA_ADMIN_TOKEN": TOKEN,
            "KEYS_URL": "",
            "REDIS_URL": redis_url,  # keys mode needs it for several workers (shared limits)
            "SOPHIA_CACHE_PREFIX": unique("keys-workers") + ":",
            "SOPHIA_SHARED_ROUTING": "0",
        },
    )
    try:
        yield proc
    finally:
        proc.stop(30)


def test_a_revoked_key_is_refused_by_every_worker_at_once(gateway: ManagedProcess) -> None:
    code, created = admin(gateway.url, "POST", "/admin/keys", {"team": "ops"})
    assert code == 201, created
    assert statuses(gateway.url, created["secret"]) == [200] * TRIES  # now cached by both workers

    code, revoked = admin(gateway.url, "DELETE", f"/admin/keys/{created['id']}")
    assert code == 200 and revoked["status"] == "revoked"
    assert statuses(gateway.url, created["secret"]) == [401] * TRIES
    assert revoked["workers"] == [{"worker": 0, "result": "revoked"}, {"worker": 1, "result": "revoked"}]

    # Revoking again (keeps the first time) still reaches every worker.
    code, again = admin(gateway.url, "DELETE", f"/admin/keys/{created['id']}")
    assert code == 200 and again["revoked_at"] == revoked["revoked_at"]


def test_a_rotated_keys_old_secret_is_refused_by_every_worker_at_once(gateway: ManagedProcess) -> None:
    code, old = admin(gateway.url, "POST", "/admin/keys", {"team": "ops", "name": "ci"})
    assert code == 201, old
    assert statuses(gateway.url, old["secret"]) == [200] * TRIES

    code, new = admin(gateway.url, "POST", f"/admin/keys/{old['id']}/rotate")
    assert code == 201 and new["replaces"] == old["id"], new
    assert statuses(gateway.url, old["secret"]) == [401] * TRIES
    assert statuses(gateway.url, new["secret"]) == [200] * TRIES
    assert [w["result"] for w in new["workers"]] == ["revoked", "revoked"]
    code, listed = admin(gateway.url, "GET", "/admin/keys")
    assert {k["id"]: k["status"] for k in listed["data"]} == {old["id"]: "revoked", new["id"]: "active"}

    # (h-keycarry) a grace ended early: the secret it kept is refused by every worker at once.
    code, graced = admin(gateway.url, "POST", f"/admin/keys/{new['id']}/rotate", {"grace_s": 3600})
    assert code == 201, graced
    assert statuses(gateway.url, new["secret"]) == [200] * TRIES  # cached by both workers
    code, ended = admin(gateway.url, "DELETE", f"/admin/keys/{graced['id']}/grace")
    assert code == 200 and [w["result"] for w in ended["workers"]] == ["grace ended"] * 2, ended
    assert statuses(gateway.url, new["secret"]) == [401] * TRIES
    assert statuses(gateway.url, graced["secret"]) == [200] * TRIES


def test_revoking_the_rotated_out_id_refuses_its_secret_on_every_worker_at_once(
    gateway: ManagedProcess,
) -> None:
    """An operator whose old secret leaked revokes the old id: the grace its secret had on the
    new key ends (it answered revoked and the secret kept working: an outside probe), on every
    worker; the rotation's own asks to the other workers (a revoke of the old id) do not end it."""
    code, old = admin(gateway.url, "POST", "/admin/keys", {"team": "ops"})
    assert code == 201, old
    code, new = admin(gateway.url, "POST", f"/admin/keys/{old['id']}/rotate", {"grace_s": 3600})
    assert code == 201, new
    assert statuses(gateway.url, old["secret"]) == [200] * TRIES  # in its grace, on both workers
    code, revoked = admin(gateway.url, "DELETE", f"/admin/keys/{old['id']}")
    assert code == 200 and [w["result"] for w in revoked["workers"]] == ["revoked", "revoked"]
    assert statuses(gateway.url, old["secret"]) == [401] * TRIES
    assert statuses(gateway.url, new["secret"]) == [200] * TRIES


@pytest.fixture
def fake() -> Iterator[ManagedProcess]:
    proc = start(["fake-provider", "--port", "0", "--seed", "1"])
    try:
        yield proc
    finally:
        proc.stop()


def chat_statuses(url: str, secret: str, calls: int) -> list[tuple[int, str]]:
    """``calls`` chat completions through the official openai SDK, each on a new connection (no
    keep-alive: either worker may take it): each one's status and ``x-ratelimit-limit-requests``."""
    out = []
    for _ in range(calls):
        with httpx2.Client(limits=httpx2.Limits(max_keepalive_connections=0)) as http:
            app = openai.OpenAI(api_key=secret, base_url=f"{url}/v1", max_retries=0, http_client=http)
            try:
                raw = app.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                out.append((raw.http_response.status_code, raw.headers["x-ratelimit-limit-requests"]))
            except openai.APIStatusError as exc:
                out.append((exc.status_code, exc.response.headers.get("x-ratelimit-limit-requests", "")))
    return out


def test_an_updated_rpm_holds_on_every_worker_at_once(
    tmp_path: Path, redis_url: str, fake: ManagedProcess
) -> None:
    """(h-keyupdate) rpm 2 raised to 5 by ``PATCH /admin/keys/{id}``: both workers had the key
    cached with rpm 2 (300 s), and both admit by rpm 5 from the next request (the window shared
    in Redis: 2 already in it, so 3 more). Before, there was no way to change it."""
    (tmp_path / "policy.yaml").write_text(POLICY.replace("http://127.0.0.1:9/v1", f"{fake.url}/v1"))
    proc = start(
        ["serve", "--policy", "policy.yaml", "--port", "0", "--workers", "2"],
        cwd=str(tmp_path),
        env={
            "SOPHIA_ADMIN_TOKEN": TOKEN,
            "KEYS_URL": "",
            "REDIS_URL": redis_url,
            "SOPHIA_CACHE_PREFIX": unique("keys-update") + ":",
            "SOPHIA_SHARED_ROUTING": "0",
        },
    )
    try:
        code, key = admin(proc.url, "POST", "/admin/keys", {"team": "ops", "rpm": 2})
        assert code == 201, key
        before = chat_statuses(proc.url, key["secret"], TRIES)  # both workers cache it (rpm 2)
        assert before == [(200, "2")] * 2 + [(429, "2")] * (TRIES - 2)

        code, updated = admin(proc.url, "PATCH", f"/admin/keys/{key['id']}", {"rpm": 5})
        assert code == 200 and updated["rpm"] == 5, updated
        after = chat_statuses(proc.url, key["secret"], TRIES)
        assert after == [(200, "5")] * 3 + [(429, "5")] * (TRIES - 3)
        assert updated["workers"] == [{"worker": 0, "result": "updated"}, {"worker": 1, "result": "updated"}]
    finally:
        proc.stop(30)
