"""Two workers of a ``serve --workers N`` set over real HTTP: two apps in process (aiohttp's
TestClient, ``build_app`` with each one's ``WorkerSlot``) on one SQLite file, as the workers
share it. A third connection to the file holds its write lock while both take a request, so
the two writes meet at the store as two processes' would."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.policy.loader import parse_policy
from gateway.settings import Settings, WorkerSlot

WORKERS = 2


def policy(tmp_path: Path) -> str:
    return f"""
version: 1
auth: {{mode: open}}
providers:
  p: {{kind: openai, base_url: "http://p.test/v1"}}
models:
  chat: {{deployments: [{{provider: p, model: c}}]}}
cache: {{enabled: false}}
memory:
  index_dir: "{tmp_path / "index"}"
  path: "{tmp_path / "memory.sqlite3"}"
"""


@dataclass
class Worker:
    client: TestClient

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.client.request(method, path, json=body) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    parsed = parse_policy(policy(tmp_path))
    opened: list[Worker] = []
    try:
        for index in range(WORKERS):
            slot = WorkerSlot(index, WORKERS, str(run_dir))
            app = build_app(Settings(access_log=False, policy_watch=False, worker=slot), parsed, {})
            client = TestClient(TestServer(app))
            await client.start_server()
            opened.append(Worker(client))
        yield opened
    finally:
        for worker in reversed(opened):
            await worker.client.close()


async def test_one_id_posted_to_two_workers_at_once_is_created_once_and_refused_once(
    workers: list[Worker], tmp_path: Path
) -> None:
    memory = {
        "namespace": "notes",
        "content": "the launch is in May",
        "id": "launch",
        "embedding": [1.0, 0.0],
    }
    blocker = sqlite3.connect(tmp_path / "memory.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer: both requests find the id free, then wait
        posts = [asyncio.ensure_future(w.call("POST", "/v1/memory", memory)) for w in workers]
        await asyncio.sleep(0.5)
        assert not any(post.done() for post in posts)
        blocker.execute("ROLLBACK")
        answers = await asyncio.gather(*posts)
    finally:
        blocker.close()
    assert sorted(status for status, _ in answers) == [201, 400], answers
    [(_, refused)] = [(status, body) for status, body in answers if status != 201]
    # What one worker answers for an id already taken.
    single = await workers[0].call("POST", "/v1/memory", memory)
    assert single[0] == 400
    assert refused["error"]["code"] == single[1]["error"]["code"] == "memory_exists", refused
    assert refused["error"]["type"] == single[1]["error"]["type"]
    assert refused["error"]["param"] == single[1]["error"]["param"] == "id"
    for worker in workers:
        status, found = await worker.call("GET", "/v1/memory/launch")
        assert status == 200 and found["content"] == "the launch is in May"
