"""The benchmarks' floor proxy and stream probe, as real processes: the figures in RESULTS.md are
ratios to the floor, so the floor must relay what the gateway relays (bodies whole, streams event by
event), on one port with several processes too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from benchmarks.floor_proxy import ANSWER_KEY
from benchmarks.processes import Logged, launch, process_tree
from benchmarks.proxy_overhead import BODY, LONG_STREAM_BODY, STREAM_BODY, pin_tree
from benchmarks.stream_probe import probe
from gateway.testing.process import ManagedProcess, start
from gateway.testing.redis_server import PrivateRedis

FLOOR = str(Path(__file__).resolve().parents[2] / "benchmarks" / "floor_proxy.py")
CHAT = "/v1/chat/completions"


def post(url: str, body: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url + CHAT, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@pytest.fixture
def fake() -> Iterator[ManagedProcess]:
    proc = start(["fake-provider", "--port", "0"])
    yield proc
    proc.stop()


def floor(fake: ManagedProcess, log: Path, workers: int = 1) -> Logged:
    # Port 0 with several workers too: the supervisor binds the port it then hands on (a port
    # picked here first could be taken by another test's process before the floor binds it).
    return launch(
        [sys.executable, FLOOR, "--upstream", fake.url, "--port", "0", "--workers", str(workers)], log
    )


def test_the_floor_relays_answers_and_streams_as_the_upstream_sends_them(
    fake: ManagedProcess, tmp_path: Path
) -> None:
    proxy = floor(fake, tmp_path / "floor.log")
    try:
        status, content_type, body = post(proxy.url, BODY % "fake-model")
        assert status == 200 and content_type.startswith("application/json")
        assert (
            json.loads(body)["choices"][0]["message"]["content"]
            == "Echo: Say something short about gateways."
        )
        for stream_body in (STREAM_BODY, LONG_STREAM_BODY):
            _, direct_type, direct = post(fake.url, stream_body % "fake-model")
            _, via_type, via = post(proxy.url, stream_body % "fake-model")
            assert via_type == direct_type and via_type.startswith("text/event-stream")
            assert via.count(b"data:") == direct.count(b"data:") > 3
            assert via.rstrip().endswith(b"data: [DONE]")
        short_events = post(fake.url, STREAM_BODY % "fake-model")[2].count(b"data:")
        measured = probe(proxy.url + CHAT, (STREAM_BODY % "fake-model").encode(), 0.3)
        assert measured["requests"] >= 1
        assert measured["events"] == short_events
        assert 0 < measured["first_byte_p50_ms"] <= measured["total_p50_ms"]
    finally:
        assert proxy.stop() == 0


def test_the_floor_runs_several_processes_on_one_port(fake: ManagedProcess, tmp_path: Path) -> None:
    proxy = floor(fake, tmp_path / "floor2.log", workers=2)
    try:
        assert len(process_tree(proxy.pid)) == 3  # the parent and its two workers
        for _ in range(20):  # new connections each time: the kernel spreads them over both
            assert post(proxy.url, BODY % "fake-model")[0] == 200
        assert proxy.cpu_seconds() > 0
    finally:
        assert proxy.stop() == 0


def test_the_answering_floor_answers_fixed_bytes_without_the_upstream(
    fake: ManagedProcess, tmp_path: Path
) -> None:
    """A cache hit's floor: reads the body, answers a chat completion, never calls the provider."""
    proxy = launch(
        [sys.executable, FLOOR, "--upstream", fake.url, "--port", "0", "--answer-fixed"],
        tmp_path / "fixed.log",
    )
    try:
        urllib.request.urlopen(urllib.request.Request(fake.url + "/_fake/reset", method="POST"), timeout=5)
        for _ in range(3):
            status, content_type, body = post(proxy.url, BODY % "fake-model")
            assert status == 200 and content_type.startswith("application/json")
            assert json.loads(body)["object"] == "chat.completion"
        _, _, direct = post(fake.url, BODY % "fake-model")  # about the size a hit replays
        assert 0.5 < len(body) / len(direct) < 2
        with urllib.request.urlopen(fake.url + "/_fake/stats", timeout=5) as resp:
            assert json.load(resp)["by_path"].get(CHAT, 0) == 1  # only the direct call above
    finally:
        assert proxy.stop() == 0


def test_the_redis_answering_floor_answers_from_one_redis_get(fake: ManagedProcess, tmp_path: Path) -> None:
    """A Redis cache hit's floor: reads the body, answers the bytes of one GET from Redis (set at
    its start), never calls the provider; each request is one GET on the server."""
    with PrivateRedis() as server:
        proxy = launch(
            [sys.executable, FLOOR, "--upstream", fake.url, "--port", "0", "--answer-redis", server.url],
            tmp_path / "redis.log",
        )
        try:
            with redis.Redis.from_url(server.url) as client:
                before = client.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
                for _ in range(3):
                    status, content_type, body = post(proxy.url, BODY % "fake-model")
                    assert status == 200 and content_type.startswith("application/json")
                    assert json.loads(body)["object"] == "chat.completion"
                assert body == client.get(ANSWER_KEY)
                assert client.info("commandstats")["cmdstat_get"]["calls"] - before == 4  # 3 + ours
        finally:
            assert proxy.stop() == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_the_one_core_layout_moves_every_thread_of_a_process_tree() -> None:
    """``pin_tree`` moves a process, its children and every thread of each (a Redis keeps
    background threads; a thread left on the other core would wake it again)."""
    cpus = sorted(os.sched_getaffinity(0))
    script = (
        "import subprocess, sys, threading, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        threads = [int(t.name) for pid in (parent.pid, child) for t in Path(f"/proc/{pid}/task").iterdir()]
        assert len(threads) >= 3
        target = cpus[-1]
        before = os.sched_getaffinity(parent.pid)
        assert pin_tree(parent.pid, target, root=False) == 1  # the child's one thread
        assert os.sched_getaffinity(child) == {target}
        assert os.sched_getaffinity(parent.pid) == before
        assert pin_tree(parent.pid, target) == len(threads)
        assert all(os.sched_getaffinity(tid) == {target} for tid in threads)
    finally:
        parent.kill()
        parent.wait()
