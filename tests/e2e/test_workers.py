"""``sophia-gateway serve --workers N``: real worker processes on one port, under their supervisor.

Every request below opens a new connection (urllib), so SO_REUSEPORT hands it to any worker: a
figure that must hold "whichever worker answers" is checked over many requests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.process import ManagedProcess, start

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux)")

CHAT = "/v1/chat/completions"
# The set's /metrics wants it (the ``gateway`` fixture sets it); the other sets ignore it.
METRICS_TOKEN = "workers-metrics-token-0123"
# The tokens they replaced, still accepted during a rotation (the ``gateway`` fixture sets them).
METRICS_TOKEN_PREVIOUS = "workers-metrics-token-old"
ADMIN_TOKEN = "workers-admin-token-0123"
ADMIN_TOKEN_PREVIOUS = "workers-admin-token-old"


def policy(fake_url: str, slow_url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        auth: {{mode: open}}
        server: {{drain_grace_s: 20}}
        providers:
          fake: {{kind: openai, base_url: {fake_url}/v1}}
          slow: {{kind: openai, base_url: {slow_url}/v1}}
        models:
          chat:
            deployments: [{{provider: fake, model: up-chat}}]
          slow-stream:
            deployments: [{{provider: slow, model: streamer}}]
          embed:
            deployments: [{{provider: fake, model: up-embed}}]
        memory:
          embedding_model: embed
        """
    )


def call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def chat(url: str, text: str = "hello") -> int:
    status, _ = call(url + CHAT, {"model": "chat", "messages": [{"role": "user", "content": text}]})
    return status


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = call(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def chat_total(url: str) -> float:
    return sum(
        v
        for (name, labels), v in samples(url).items()
        if name == "gateway_requests_total" and ("endpoint", CHAT) in labels
    )


def workers_of(gateway: ManagedProcess) -> list[int]:
    pid = gateway.popen.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has exited)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    fake = start(["fake-provider", "--port", "0", "--seed", "1"])
    slow = start(
        ["fake-provider", "--port", "0", "--tokens-per-s", "10", "--reply", "one two three four five six"]
    )
    try:
        yield fake, slow
    finally:
        fake.stop()
        slow.stop()


@pytest.fixture
def policy_path(fakes: tuple[ManagedProcess, ManagedProcess], tmp_path: Path) -> Path:
    path = tmp_path / "workers.yaml"
    path.write_text(policy(fakes[0].url, fakes[1].url))
    return path


@pytest.fixture
def gateway(policy_path: Path, tmp_path: Path) -> Iterator[ManagedProcess]:
    cwd = tmp_path / "run"
    cwd.mkdir()
    proc = start(
        ["serve", "--policy", str(policy_path), "--port", "0", "--workers", "2"],
        cwd=str(cwd),
        env={
            "SOPHIA_METRICS_TOKEN": METRICS_TOKEN,
            "SOPHIA_METRICS_TOKEN_PREVIOUS": METRICS_TOKEN_PREVIOUS,
            "SOPHIA_ADMIN_TOKEN": ADMIN_TOKEN,
            "SOPHIA_ADMIN_TOKEN_PREVIOUS": ADMIN_TOKEN_PREVIOUS,
        },
    )
    try:
        yield proc
    finally:
        proc.stop(30)


def test_one_line_for_the_set_and_one_metrics_summing_every_worker(gateway: ManagedProcess) -> None:
    assert "(2 workers)" in gateway.output
    assert len(workers_of(gateway)) == 2
    for n in range(40):
        assert chat(gateway.url, f"count me {n}") == 200
    # Each scrape lands on either worker (a new connection each): every one shows all 40.
    for _ in range(8):
        found = samples(gateway.url)
        assert chat_total(gateway.url) == 40
        # Per-worker state is exported per worker; counters are summed, so carry no worker label.
        assert {
            dict(labels).get("worker") for (name, labels) in found if name == "gateway_breaker_state"
        } == {
            "0",
            "1",
        }
        assert not any(
            "worker" in dict(labels) for (name, labels) in found if name == "gateway_requests_total"
        )
        count = sum(
            v
            for (name, labels), v in found.items()
            if name == "gateway_request_duration_seconds_count" and ("endpoint", CHAT) in labels
        )
        assert count == 40
        # The process_* series: memory and descriptors per worker, CPU seconds summed.
        assert {
            dict(labels).get("worker") for (name, labels) in found if name == "process_resident_memory_bytes"
        } == {"0", "1"}
        assert [labels for (name, labels) in found if name == "process_cpu_seconds_total"] == [()]
    # SOPHIA_METRICS_TOKEN: every worker refuses the set's /metrics without it (a new connection
    # each: either worker answers), before asking its peers.
    for authorization in ({}, {"Authorization": "Bearer wrong"}):
        for _ in range(6):
            status, text = call(gateway.url + "/metrics", headers=authorization)
            assert status == 401 and text.startswith("401 Unauthorized"), text
    # SOPHIA_METRICS_TOKEN_PREVIOUS: either worker lets a scrape with it in and says it is
    # deprecated; the set's sum counts each once (the peers' asks carry no token).
    for _ in range(6):
        previous = urllib.request.Request(
            gateway.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN_PREVIOUS}"}
        )
        with urllib.request.urlopen(previous, timeout=10) as resp:
            assert resp.status == 200 and resp.headers["x-gateway-token-deprecated"] == "true"
    # An admin call with the previous token that its worker passes on to the other (a policy
    # reload, Authorization and all, over the Unix socket) is counted once, by the worker reached.
    reload = urllib.request.Request(
        gateway.url + "/admin/policy/reload",
        data=b"",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN_PREVIOUS}"},
    )
    with urllib.request.urlopen(reload, timeout=10) as resp:
        assert resp.headers["x-gateway-token-deprecated"] == "true"
        workers = json.loads(resp.read())["policy"]["workers"]
        assert [w["result"] for w in workers] == ["unchanged", "unchanged"], workers
    found = samples(gateway.url)
    assert found[("gateway_previous_token_used_total", (("token", "metrics"),))] == 6
    assert found[("gateway_previous_token_used_total", (("token", "admin"),))] == 1


def test_a_scrape_is_one_request_of_the_set_not_one_per_worker(gateway: ManagedProcess) -> None:
    """The answering worker asks the other over its Unix socket; that ask was counted (and
    logged, without a client) as a client request too, so N workers counted each scrape N times
    (an outside probe)."""

    def scrapes() -> float:
        return sum(
            v
            for (name, labels), v in samples(gateway.url).items()
            if name == "gateway_requests_total"
            and ("endpoint", "/metrics") in labels
            and ("status_code", "200") in labels
        )

    before = scrapes()  # (a scrape is counted once answered: this one shows in the next)
    for _ in range(5):
        samples(gateway.url)
    assert scrapes() - before == 6
    # In flight while it is answered: the scrape itself, not the other worker's part of it.
    in_flight = [v for (name, _), v in samples(gateway.url).items() if name == "gateway_requests_in_flight"]
    assert sum(in_flight) == 1


def index_vectors(url: str) -> dict[str, float]:
    return {
        dict(labels)["worker"]: v
        for (name, labels), v in samples(url).items()
        if name == "gateway_memory_index_vectors"
    }


def test_a_memory_added_through_one_worker_is_found_through_every_other(gateway: ManagedProcess) -> None:
    # No search yet: the worker that did not take the write applies it all the same.
    status, added = call(gateway.url + "/v1/memory", {"namespace": "shared", "content": "the first fact"})
    assert status == 201, added
    # Each worker reads the store's change log every second, searched or not.
    wait_for(lambda: index_vectors(gateway.url) == {"0": 1.0, "1": 1.0}, 15)
    for n in range(6):
        status, added = call(
            gateway.url + "/v1/memory", {"namespace": "shared", "content": f"fact number {n} about workers"}
        )
        assert status == 201, added
        memory_id = added["data"][0]["id"]
        # Ten searches on ten connections, answered by whichever worker the kernel picks.
        for _ in range(10):
            status, found = call(
                gateway.url + "/v1/memory/search",
                {"query": f"fact number {n} about workers", "namespaces": ["shared"], "top_k": 1},
            )
            assert status == 200 and [h["memory"]["id"] for h in found["data"]] == [memory_id]
    status, _ = call(gateway.url + f"/v1/memory/{memory_id}", None)
    assert status == 200
    request = urllib.request.Request(gateway.url + f"/v1/memory/{memory_id}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    for _ in range(10):
        status, found = call(
            gateway.url + "/v1/memory/search",
            {"query": "fact number 5 about workers", "namespaces": ["shared"], "top_k": 1},
        )
        assert status == 200 and memory_id not in [h["memory"]["id"] for h in found["data"]]
    wait_for(lambda: index_vectors(gateway.url) == {"0": 6.0, "1": 6.0}, 15)


def test_feedback_reaches_the_worker_that_served_the_request(gateway: ManagedProcess) -> None:
    served = []
    for n in range(12):
        body = {"model": "chat", "messages": [{"role": "user", "content": f"rate me {n}"}]}
        request = urllib.request.Request(
            gateway.url + CHAT, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            served.append(resp.headers["x-request-id"])
    # Each vote on a new connection: about half land on the other worker, which passes it on.
    for request_id in served:
        status, answer = call(gateway.url + "/v1/feedback", {"request_id": request_id, "score": 0.9})
        assert status == 200 and answer["request_id"] == request_id, answer
    status, answer = call(gateway.url + "/v1/feedback", {"request_id": "never-served", "score": 0.9})
    assert status == 404 and answer["error"]["code"] == "request_not_found"


def test_the_sets_counters_never_go_backwards_when_a_worker_dies(gateway: ManagedProcess) -> None:
    """Prometheus reads any drop of a counter as a reset. Both workers serve chats and are
    scraped; then one is SIGKILLed: no scrape after (while it is down, and once restarted) shows
    fewer chats than one before (on the previous code: 40, then 22 or so, as each worker's share)."""
    for n in range(40):
        assert chat(gateway.url, f"count me {n}") == 200
    seen = chat_total(gateway.url)
    assert seen == 40
    shown = samples(gateway.url)
    victim = workers_of(gateway)[0]
    os.kill(victim, signal.SIGKILL)

    def total_after_kill() -> float:
        # A connection the kernel had queued on the killed worker's socket is reset: ask again.
        for _ in range(20):
            try:
                return chat_total(gateway.url)
            except (ConnectionError, urllib.error.URLError):
                continue
        raise AssertionError("no scrape was answered")

    lowest = min(total_after_kill() for _ in range(10))
    wait_for(lambda: len(workers_of(gateway)) == 2 and victim not in workers_of(gateway))
    wait_for(lambda: all(chat(gateway.url) == 200 for _ in range(4)))
    after = samples(gateway.url)
    assert lowest >= 40 and chat_total(gateway.url) >= 44
    # Every counter and histogram sample the set showed before is still there, and no smaller.
    gauges = {"gateway_requests_in_flight", "process_open_fds", "process_resident_memory_bytes"}
    for (name, labels), value in shown.items():
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and name not in gauges:
            assert after.get((name, labels), -1.0) >= value, (name, labels, value, after.get((name, labels)))


def test_a_crashed_workers_counts_since_the_last_scrape_stay_in_the_sum(gateway: ManagedProcess) -> None:
    """A worker wrote its totals only when scraped, so one that crashed took everything it had
    counted since the last scrape with it (before: about half of these 40 chats, never scraped,
    were missing once a worker was SIGKILLed). Each worker now writes them every second."""
    for n in range(40):
        assert chat(gateway.url, f"unscraped {n}") == 200
    time.sleep(2.5)  # two of worker_totals.WRITE_INTERVAL_S; no scrape meanwhile
    victim = workers_of(gateway)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(workers_of(gateway)) == 2 and victim not in workers_of(gateway))

    def total() -> float:
        for _ in range(20):  # a connection queued on the killed worker's socket is reset: again
            try:
                return chat_total(gateway.url)
            except (ConnectionError, urllib.error.URLError):
                continue
        raise AssertionError("no scrape was answered")

    assert total() >= 40


def test_the_index_directory_stays_locked_while_every_worker_is_down(
    gateway: ManagedProcess, tmp_path: Path
) -> None:
    """The parent holds the memory index directory's lock for the set, so there is no window,
    while worker 0 waits to be restarted, in which another gateway could take the directory (on
    the previous code the lock went with worker 0: a second serve then started and wrote it)."""
    import fcntl

    lock = tmp_path / "run" / "data" / "memory-index" / ".owner.lock"
    assert lock.exists()
    victims = workers_of(gateway)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(pid in workers_of(gateway) for pid in victims), 10)
    fd = os.open(lock, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    wait_for(lambda: len(workers_of(gateway)) == 2)

    def serves() -> bool:
        try:
            return all(chat(gateway.url) == 200 for _ in range(4))
        except (ConnectionError, urllib.error.URLError):
            return False  # not listening again yet

    wait_for(serves)


def test_a_crashed_worker_is_restarted_and_sigterm_drains_every_worker(gateway: ManagedProcess) -> None:
    before = workers_of(gateway)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(workers_of(gateway)) == 2 and before[0] not in workers_of(gateway))
    assert "worker exited; restarting it" in gateway.output
    wait_for(lambda: all(chat(gateway.url) == 200 for _ in range(10)))

    # Streams in flight on both workers finish in full after SIGTERM.
    results: list[str] = []

    def stream() -> None:
        body = {"model": "slow-stream", "stream": True, "messages": [{"role": "user", "content": "go"}]}
        request = urllib.request.Request(
            gateway.url + CHAT, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            results.append(resp.read().decode())

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for t in threads:
        t.start()
    in_flight = "gateway_requests_in_flight"
    wait_for(lambda: samples(gateway.url)[(in_flight, ())] >= 6 + 1)  # + the scrape itself
    workers = workers_of(gateway)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(30) == 0
    for t in threads:
        t.join(30)
    assert len(results) == 6 and all(r.rstrip().endswith("data: [DONE]") and "six" in r for r in results)
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_worker_that_cannot_start_stops_the_set_with_its_error(policy_path: Path, tmp_path: Path) -> None:
    proc = _run(
        ["serve", "--policy", str(policy_path), "--port", "0", "--workers", "2"],
        {"MEMORY_URL": "sqlite:////proc/no-such-dir/memory.db"},
        tmp_path,
    )
    assert proc.returncode == 2
    assert "sophia-gateway: cannot start: cannot open the memory store" in proc.stderr
    assert "listening on" not in proc.stdout
    # Its log says the set stops, not that the worker is being restarted (it was not).
    assert "worker could not start; stopping the set" in proc.stderr
    assert "restarting it" not in proc.stderr


def test_a_port_in_use_stops_the_set_before_any_worker_starts(policy_path: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(
            ["serve", "--policy", str(policy_path), "--port", str(port), "--workers", "2"], {}, tmp_path
        )
    assert proc.returncode == 2
    assert "the port is already in use" in proc.stderr


def test_keys_mode_without_redis_refuses_several_workers(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "version: 1\nauth: {mode: keys, teams: {t: {}}}\n"
        "providers: {p: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models: {m: {deployments: [{provider: p, model: x}]}}\n"
    )
    proc = _run(["serve", "--policy", str(path), "--port", "0", "--workers", "2"], {}, tmp_path)
    assert proc.returncode == 2
    assert "needs REDIS_URL" in proc.stderr and "up to 2x the limit" in proc.stderr


@pytest.mark.parametrize("store", [True, False])
def test_without_redis_a_set_says_kept_responses_are_each_workers_own(
    fakes: tuple[ManagedProcess, ManagedProcess], tmp_path: Path, store: bool
) -> None:
    """Without REDIS_URL each worker keeps the responses it answered: a previous_response_id on
    a new connection found it or not by which worker took the connection (about half the time
    with two), and nothing said why. The set says so at start, unless responses.store is off."""
    path = tmp_path / "open.yaml"
    text = policy(fakes[0].url, fakes[1].url)
    path.write_text(text if store else text + "responses: {store: false}\n")
    proc = start(["serve", "--policy", str(path), "--port", "0", "--workers", "2"], cwd=str(tmp_path))
    try:
        status, _ = call(proc.url + "/v1/responses", {"model": "chat", "input": "hi", "store": True})
        assert status == 200
    finally:
        proc.stop(30)
    said = "--workers 2 without REDIS_URL: each worker keeps the responses it answered" in proc.stderr
    assert said is store, proc.stderr


def test_more_workers_than_eight_a_core_is_refused_before_any_fork(policy_path: Path, tmp_path: Path) -> None:
    """A typo (--workers 99999) forked until the host ran out of memory; now one line, exit 2."""
    too_many = 8 * len(os.sched_getaffinity(0)) + 1
    proc = _run(
        ["serve", "--policy", str(policy_path), "--port", "0", "--workers", str(too_many)], {}, tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--workers {too_many} is more than 8 processes for each of the" in proc.stderr
    assert "worker exited" not in proc.stderr and "listening" not in proc.stdout


def test_sigterm_while_the_workers_are_forked_stops_the_set(policy_path: Path, tmp_path: Path) -> None:
    """SIGTERM during start-up (worker 0 ready, the others being forked) stops the set promptly
    and exits 0: the fork loop looks for a stop between forks."""
    import subprocess
    import sys

    count = 8 * len(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--policy",
            str(policy_path),
            "--port",
            "0",
            "--workers",
            str(count),
        ],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYS_URL", "MEMORY_URL")},
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def forked() -> bool:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return len(children) >= 2

        wait_for(forked, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_must_be_a_count_or_auto(policy_path: Path, tmp_path: Path) -> None:
    proc = _run(["serve", "--policy", str(policy_path), "--workers", "0"], {}, tmp_path)
    assert (
        proc.returncode == 2 and "--workers: must be a number of processes from 1 up, or auto" in proc.stderr
    )


def _run(args: list[str], env: dict[str, str], cwd: Path) -> Any:
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYS_URL", "MEMORY_URL")},
        "PYTHONPATH": root,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


def test_every_worker_logs_every_request_through_one_pipe_and_no_line_is_torn(
    policy_path: Path, tmp_path: Path
) -> None:
    """Both workers write their access log to the one stderr pipe they share, each on its loop
    through a non-blocking descriptor of its own (reopened per worker), in pieces of at most
    PIPE_BUF: every request's line arrives once and whole, whichever worker wrote it. (A write
    to a pipe being read is not split in practice even above PIPE_BUF; the cut matters when the
    pipe is full, which ``tests/unit/observability/test_access_log.py`` covers.)"""
    cwd = tmp_path / "run"
    cwd.mkdir()
    proc = start(
        ["serve", "--policy", str(policy_path), "--port", "0", "--workers", "2"],
        cwd=str(cwd),
        env={"SOPHIA_ACCESS_LOG": "1", "SOPHIA_LOG_LEVEL": "INFO", "SOPHIA_LOG_FORMAT": "json"},
    )
    try:
        ids: list[str] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            for i in range(30):
                body = {"model": "chat", "messages": [{"role": "user", "content": f"c{n} r{i}"}]}
                request = urllib.request.Request(
                    proc.url + CHAT,
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as resp:
                    assert resp.status == 200
                    rid = resp.headers["x-request-id"]
                # A 404 on a long path is a long line (about 1.7 KB): three make a batch longer
                # than PIPE_BUF, written in several pieces that the other worker's may land between.
                try:
                    urllib.request.urlopen(f"{proc.url}/v1/{n}-{i}-" + "x" * 1400, timeout=10)
                except urllib.error.HTTPError as err:
                    assert err.code == 404
                    long_rid = err.headers["x-request-id"]
                with lock:
                    ids.extend((rid, long_rid))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(ids) == 480
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_for(lambda: proc.stderr.count('"logger":"gateway.access"') >= 480, 10)
        lines = [line for line in proc.stderr.splitlines() if "gateway.access" in line]
        logged = [json.loads(line)["request_id"] for line in lines]  # a torn line would not parse
        assert sorted(logged) == sorted(ids)
        # A worker's last log lines (written by its log thread) are out before it exits.
        assert proc.stderr.count('"msg":"stopped"') == 2, proc.stderr[-3000:]
    finally:
        proc.stop(30)


def _one_cpu_cgroup(tmp_path: Path) -> Path | None:
    """A new cgroup allowed one CPU's worth of time (v1's cpu controller, or v2 with cpu enabled),
    its ``cgroup.procs`` file; None where this machine does not let the test make one."""
    name = f"sophia-test-{os.getpid()}-{tmp_path.name}"
    for parent, files in (
        (Path("/sys/fs/cgroup/cpu"), {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}),
        (Path("/sys/fs/cgroup"), {"cpu.max": "100000 100000"}),
    ):
        group = parent / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            for file, text in files.items():
                (group / file).write_text(text)
        except OSError:
            group.rmdir()
            continue
        return group / "cgroup.procs"
    return None


def test_workers_auto_counts_the_cgroup_cpu_limit_not_only_the_cores(
    policy_path: Path, tmp_path: Path
) -> None:
    """A container limited to one CPU (``docker --cpus 1``, a Kubernetes limit) on a bigger host:
    ``--workers auto`` runs one process, not one per core of the host all throttled to one CPU."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 cores, to tell the limit from the cores")
    procs = _one_cpu_cgroup(tmp_path)
    if procs is None:
        pytest.skip("cannot create a cgroup with a CPU limit here (needs root and a writable cgroup fs)")
    try:
        gateway = start(
            ["serve", "--policy", str(policy_path), "--port", "0", "--workers", "auto"],
            env={"SOPHIA_TEST_CGROUP_PROCS": str(procs)},
            module="tests.e2e.cgroup_serve",
        )
        try:
            assert gateway.popen.pid in [int(p) for p in procs.read_text().split()]
            assert "workers)" not in gateway.output  # one process: no supervisor, no set
            assert chat(gateway.url, "one cpu") == 200
        finally:
            gateway.stop(30)
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                procs.parent.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_a_tmpdir_too_deep_for_unix_sockets_still_serves(policy_path: Path, tmp_path: Path) -> None:
    """Each worker serves the app on a Unix socket in the set's run directory, made in TMPDIR:
    under a deep TMPDIR (a socket path past 107 bytes) every worker failed to bind (``AF_UNIX
    path too long``), was restarted and failed again, and the set never served. The run
    directory then goes to /tmp, and the set serves and stops as usual."""
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    assert len(str(deep)) + len("/sophia-workers-XXXXXXXX/worker-0.sock") > 107
    cwd = tmp_path / "run"
    cwd.mkdir()
    args = ["serve", "--policy", str(policy_path), "--port", "0", "--workers", "2"]
    process = start(args, cwd=str(cwd), env={"TMPDIR": str(deep)})
    try:
        assert chat(process.url) == 200
        assert "path too long" not in process.output
        assert not any(p.name.startswith("sophia-workers-") for p in deep.iterdir())
    finally:
        assert process.stop(30) == 0


def test_a_sigkilled_sets_run_directory_is_swept_by_the_next_set(
    policy_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A set whose parent is SIGKILLed cannot remove its run directory; once its workers have
    drained, the next ``serve --workers`` on the machine removes it (and keeps its own)."""
    # A short TMPDIR of its own: under a long one the sets' directories go to /tmp (run_parent).
    scratch = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))

    def run_dirs() -> set[str]:
        return {p.name for p in scratch.iterdir() if p.name.startswith("sophia-workers-")}

    def serve(n: int) -> ManagedProcess:
        cwd = tmp_path / f"run{n}"
        cwd.mkdir()
        args = ["serve", "--policy", str(policy_path), "--port", "0", "--workers", "2"]
        return start(args, cwd=str(cwd), env={"TMPDIR": str(scratch)})

    killed = serve(0)
    (first,) = run_dirs()
    orphans = workers_of(killed)
    killed.signal(signal.SIGKILL)
    killed.wait(10)
    # Its workers drain and exit (they hold the directory's lock until then).
    wait_for(lambda: not any(alive(pid) for pid in orphans), 40)
    assert run_dirs() == {first}
    runs = [killed, serve(1)]
    try:
        (second,) = run_dirs()
        assert second != first
        assert chat(runs[1].url) == 200
    finally:
        assert runs[1].stop(30) == 0
    assert run_dirs() == set()
