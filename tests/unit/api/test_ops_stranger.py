"""h-probe4: an operator's probes of the session's new surfaces in the audit trail (the gateway in
process, a mock upstream; the admin API over real HTTP on loopback). Each test failed before the
fix its docstring names: key.create's line without provider_files (KeyError), a worker's own
policy.reload line without its worker (KeyError)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-ops-probes"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def policy_text(store: Path) -> str:
    return f"""
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
memory: {{enabled: false}}
auth:
  store: {store}
  teams:
    research: {{}}
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    app = build_app(
        Settings(access_log=False, admin_token=TOKEN),
        parse_policy(policy_text(tmp_path / "keys.sqlite3")),
        {},
        transports={"a": MockTransport(lambda request: MockResponse.json({}))},
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_a_key_created_with_provider_files_says_so_in_its_audit_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """``provider_files`` (h-fileref: the key may name the organisation's provider-side files)
    is a grant like the namespaces, but ``key.create``'s audit line listed every other setting
    and not it: who gave a key the organisation's files was not in the trail."""
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        made = await client.post(
            "/admin/keys", json={"team": "research", "provider_files": True}, headers=ADMIN
        )
        assert made.status == 201, await made.text()
        plain = await client.post("/admin/keys", json={"team": "research"}, headers=ADMIN)
        assert plain.status == 201
    granted, inherited = [r.fields for r in caplog.records if r.name == "gateway.audit"]  # type: ignore[attr-defined]
    assert granted["action"] == "key.create" and granted["outcome"] == "ok"
    assert granted["provider_files"] is True
    assert "provider_files" in inherited and inherited["provider_files"] is None  # the team's
    secret = (await made.json())["secret"]
    assert secret not in caplog.text


async def test_each_workers_file_reload_line_names_its_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``serve --workers N`` every worker watches the policy file and reloads it itself,
    so one edit writes N ``policy.reload`` lines (actor ``file``): right, since each may end
    differently, but the lines were identical, N copies of one action to whoever reads the
    trail. Each now says its worker; a gateway serving alone says none."""
    from gateway import keys
    from gateway.settings import WorkerSlot

    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(tmp_path / "keys.sqlite3"))
    lines = []
    for slot in (WorkerSlot(1, 2, str(tmp_path)), None):
        app = build_app(
            Settings(
                access_log=False, admin_token=TOKEN, policy_watch=False, policy_path=str(path), worker=slot
            ),
            parse_policy(path.read_text()),
            {},
            policy_path=str(path),
            transports={"a": MockTransport(lambda request: MockResponse.json({}))},
        )
        path.write_text(path.read_text().replace("research: {}", "research: {rpm: 5}", 1))
        with caplog.at_level(logging.INFO, logger="gateway.audit"):
            outcome = await app[keys.POLICY_CONTROL].reload("file")
        assert outcome.result == "applied", outcome
        (line,) = [r.fields for r in caplog.records if r.name == "gateway.audit"]  # type: ignore[attr-defined]
        caplog.clear()
        path.write_text(policy_text(tmp_path / "keys.sqlite3"))
        lines.append(line)
    in_set, alone = lines
    assert in_set["action"] == "policy.reload" and in_set["actor"] == "file"
    assert in_set["worker"] == 1
    assert "worker" not in alone
