"""Redis failing under real gateways, as deployments see it: real ``serve`` processes in keys mode
(limits on a key, the response cache, shared routing) on private Redis servers, a fake provider,
keys made by ``sophia-gateway keys create``. Whatever Redis does, requests are answered (fail-open,
README "Response cache" and "Limits"), and a Redis that comes back is used again.
"""

from __future__ import annotations

import asyncio
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import hiredis
import orjson
import pytest

from gateway.testing.process import ManagedProcess, start
from gateway.testing.redis_server import PrivateRedis, PrivateRedisCluster, redis_server_binary
from gateway.testing.replicas import MODEL, ROOT, TEAM, policy_text

# What a request or a background task that met a bug (rather than a Redis failure) leaves in
# the gateway's log.
BUG_MARKS = (
    "unhandled error",
    "Task exception was never retrieved",
    "shared routing sync failed",
    "rollout tick failed",
)


class Keyed:
    """One fake provider, a keys-mode policy on a SQLite key store, and a key with limits."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fake = start(["fake-provider", "--port", "0", "--seed", "1"])
        self.policy = workdir / "keys.yaml"
        self.policy.write_text(policy_text(self.fake.url, workdir / "keys.sqlite3"))
        self.secret = self._create_key("--rpm", "100000", "--tpm", "100000000")

    def _create_key(self, *flags: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KEYS_URL": ""}
        command = ["keys", "create", "--policy", str(self.policy), "--team", TEAM, "--json", *flags]
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *command],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        secret: str = orjson.loads(result.stdout)["secret"]
        return secret

    def serve(self, redis_url: str) -> ManagedProcess:
        env = {"REDIS_URL": redis_url, "KEYS_URL": "", "SOPHIA_ACCESS_LOG": "0"}
        return start(["serve", "--policy", str(self.policy), "--port", "0"], env=env, timeout_s=60)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is needed")
    stack = Keyed(tmp_path_factory.mktemp("redis-faults"))
    try:
        yield stack
    finally:
        stack.fake.stop()


async def chat(
    session: aiohttp.ClientSession, url: str, secret: str, prompt: str, *, stream: bool = False
) -> tuple[int, str | None, bytes]:
    """One cacheable chat (temperature 0) on the key; (status, x-gateway-cache, body)."""
    body: dict[str, object] = {
        "model": MODEL,
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    }
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {secret}"}
    timeout = aiohttp.ClientTimeout(total=20)
    async with session.post(
        f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout
    ) as resp:
        return resp.status, resp.headers.get("x-gateway-cache"), await resp.read()


async def until_hit(session: aiohttp.ClientSession, url: str, secret: str, timeout_s: float) -> None:
    """Ask the same cacheable question until it is a cache hit (the cache's Redis serves)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, cache, body = await chat(session, url, secret, "is the cache back?")
        assert status == 200, body
        if cache == "hit":
            return
        assert time.monotonic() < deadline, "the gateway never used its Redis again"
        await asyncio.sleep(0.2)


async def answered_without_cache(
    session: aiohttp.ClientSession, gateway: ManagedProcess, secret: str
) -> None:
    """Whole answers and streams, side by side, all served upstream (the cache skipped), for
    3 s: long enough for the link to probe Redis again after its first backoffs."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        replies = await asyncio.gather(
            *(chat(session, gateway.url, secret, f"down {i}", stream=i % 2 == 1) for i in range(10))
        )
        assert [status for status, _, _ in replies] == [200] * 10, replies[:3]
        assert {cache for _, cache, _ in replies} == {"miss"}
        assert all(body.rstrip().endswith(b"data: [DONE]") for _, _, body in replies[1::2])


def no_bug_in(gateway: ManagedProcess) -> None:
    output = gateway.output
    assert not [mark for mark in BUG_MARKS if mark in output], output[-3000:]


async def test_a_redis_cluster_down_fails_open_at_start_and_mid_run_and_is_used_again(
    keyed: Keyed,
) -> None:
    # redis-py's cluster client raises RedisClusterException (not a RedisError) when no node
    # answers: it was not taken for a Redis failure, so every request failed with a 500 and a
    # gateway started while the cluster was down exited with a traceback.
    cluster = PrivateRedisCluster(3)
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.close()
        pytest.skip(f"a Redis Cluster could not start here: {exc}")
    running = cluster.url
    gateways: list[ManagedProcess] = []
    try:
        gateways.append(keyed.serve(running))
        async with aiohttp.ClientSession() as session:
            await until_hit(session, gateways[0].url, keyed.secret, timeout_s=20)

            for node in cluster.nodes:
                node.stop()
            await answered_without_cache(session, gateways[0], keyed.secret)
            gateways.append(keyed.serve(running))  # starts with the cluster down
            await answered_without_cache(session, gateways[1], keyed.secret)

            for node in cluster.nodes:
                node.start()  # the same ports and cluster configuration, empty
            for gateway in gateways:
                await until_hit(session, gateway.url, keyed.secret, timeout_s=30)
        for gateway in gateways:
            no_bug_in(gateway)
    finally:
        for gateway in gateways:
            gateway.stop()
        cluster.close()


class NotRedis(socketserver.ThreadingTCPServer):
    """A server on loopback that speaks RESP but is not the Redis the gateway's scripts run on
    (a proxy, another store on the port): it greets as Redis does (AUTH, CLIENT, SELECT, PING,
    no HELLO) and answers every other command with ``reply``, well formed but of another shape."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        super().__init__(("127.0.0.1", 0), _NotRedisHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server_address[1]}/0"


class _NotRedisHandler(socketserver.BaseRequestHandler):
    server: NotRedis

    def handle(self) -> None:
        reader = hiredis.Reader()
        while data := self.request.recv(65536):
            reader.feed(data)
            while (command := reader.gets()) is not False:
                name = command[0].upper()
                if name in (b"AUTH", b"CLIENT", b"SELECT"):
                    self.request.sendall(b"+OK\r\n")
                elif name == b"PING":
                    self.request.sendall(b"+PONG\r\n")
                elif name == b"HELLO":
                    self.request.sendall(b"-ERR unknown command 'HELLO'\r\n")
                else:
                    self.request.sendall(self.server.reply)


# Well-formed replies of another shape than the scripts': one gateway on a server answering
# each, shared by the two tests of that shape (the keyed data path's links, the rollout store).
SHAPES = pytest.mark.parametrize(
    "shaped",
    [b"*0\r\n", b"*9\r\n" + b"$2\r\nzz\r\n" * 9, b"*3\r\n:1\r\n:2\r\n*1\r\n:5\r\n"],
    ids=["empty-array", "strings", "nested"],
    indirect=True,
)


@pytest.fixture(scope="module")
def shaped(
    request: pytest.FixtureRequest, keyed: Keyed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """A gateway in keys mode, with a rollout, whose REDIS_URL is a ``NotRedis(request.param)``."""
    server = NotRedis(request.param)
    policy = rollout_policy(keyed, tmp_path_factory.mktemp("shaped"))
    env = {
        "REDIS_URL": server.url,
        "KEYS_URL": "",
        "SOPHIA_ACCESS_LOG": "0",
        "SOPHIA_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    try:
        gateway = start(["serve", "--policy", str(policy), "--port", "0"], env=env, timeout_s=60)
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        server.shutdown()
        server.server_close()


@SHAPES
async def test_a_server_answering_in_another_shape_fails_open_once(
    keyed: Keyed, shaped: ManagedProcess
) -> None:
    # The limiter's admission, the cache's lookup and write and the routing sync unpacked the
    # reply outside the link's failure handling: every keyed request was a 500 with a traceback
    # in the log, and the routing sync logged one every 0.25 s.
    gateway = shaped
    async with aiohttp.ClientSession() as session:
        await answered_without_cache(session, gateway, keyed.secret)
        async with session.get(f"{gateway.url}/metrics") as resp:
            metrics = await resp.text()
    assert "gateway_cache_backend_up 0.0" in metrics
    assert "gateway_shared_state_up 0.0" in metrics
    no_bug_in(gateway)
    # Each link says so once, and never that it recovered: every reader of every link is
    # strict about its script's reply (the health monitor's probe is a script too, not the
    # PING this server answers). The limits link's settle write read no reply: the nested
    # array ended each outage the next admission opened again (2 warnings, 1 recovery).
    output = gateway.output
    for link in ("redis cache", "redis limits", "shared routing state"):
        down, back = output.count(f"{link} unavailable"), output.count(f"{link} recovered")
        assert (down, back) == (1, 0), (link, down, back, output[-3000:])


def rollout_policy(keyed: Keyed, tmp_path: Path) -> Path:
    """The keyed policy with a rollout in its group (no smoke prompts: rolling at the first tick)."""
    policy = tmp_path / "rollout.yaml"
    policy.write_text(
        policy_text(keyed.fake.url, keyed.workdir / "keys.sqlite3").replace(
            f"  {MODEL}: {{deployments: [{{provider: fake, model: fake-model}}]}}\n",
            f"  {MODEL}:\n    deployments:\n      - {{provider: fake, model: fake-model}}\n"
            "      - {provider: fake, model: fake-model-2, rollout: {steps: [10, 100], hold_s: 300}}\n",
        )
    )
    assert "rollout:" in policy.read_text()
    return policy


ADMIN_TOKEN = "redis-faults-admin-token-0123456789"


async def pause(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.post(
        f"{url}/admin/rollouts/pause",
        json={"model": MODEL},
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=20),
    ) as resp:
        return resp.status, await resp.json()


async def rollout_status(session: aiohttp.ClientSession, url: str) -> object:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.get(f"{url}/admin/rollouts", headers=headers) as resp:
        return (await resp.json())["data"][0]["status"]


async def test_a_rollout_store_down_is_said_once_however_often_an_operator_acts(
    keyed: Keyed, tmp_path: Path
) -> None:
    # With Redis down, each POST /admin/rollouts/{action} was a 500 with a traceback in the log
    # ("unhandled error"): an operator retrying, or a script, filled the log. Now each is a 503
    # saying the store cannot be reached, and the outage is said once, with the loop's ticks.
    policy = rollout_policy(keyed, tmp_path)
    with PrivateRedis() as server:
        env = {
            "REDIS_URL": server.url,
            "KEYS_URL": "",
            "SOPHIA_ACCESS_LOG": "0",
            "SOPHIA_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        gateway = start(["serve", "--policy", str(policy), "--port", "0"], env=env, timeout_s=60)
        try:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 20
                while await rollout_status(session, gateway.url) != "rolling":
                    assert time.monotonic() < deadline, "the rollout never started"
                    await asyncio.sleep(0.05)
                server.stop()
                for _ in range(20):
                    status, body = await pause(session, gateway.url)
                    error = body["error"]
                    assert isinstance(error, dict)
                    assert (status, error["code"], error["type"]) == (
                        503,
                        "rollout_store_unavailable",
                        "service_unavailable",
                    ), body
                    assert "keeps its last state" in error["message"]
                first_seen = time.monotonic()
                until(lambda: time.monotonic() - first_seen > 2.5, "2 more ticks of 1 s", 10)
                assert gateway.output.count("rollout store unavailable") == 1, gateway.output[-3000:]

                server.start()  # empty: the rollout starts over, rolling at its first tick
                until(lambda: "rollout store recovered" in gateway.output, "the store back", 20)
                deadline = time.monotonic() + 20
                while await rollout_status(session, gateway.url) != "rolling":
                    assert time.monotonic() < deadline, "the rollout never started again"
                    await asyncio.sleep(0.05)
                status, body = await pause(session, gateway.url)
                assert (status, body["status"]) == (200, "paused"), body
            output = gateway.output
            assert (
                output.count("rollout store unavailable") == 1
                and output.count("rollout store recovered") == 1
            )
            no_bug_in(gateway)
        finally:
            gateway.stop()


@SHAPES
async def test_a_rollout_store_answering_in_another_shape_is_said_once(shaped: ManagedProcess) -> None:
    # The rollout loop unpacked the store's replies outside its failure handling: a server on
    # REDIS_URL answering in another shape logged "rollout tick failed" with a traceback every
    # second, and each action by hand was a 500 with another.
    gateway = shaped
    until(lambda: "rollout store unavailable" in gateway.output, "the first warning", 20)
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            # An empty array, or strings, read as a hash: no state, so not started (409).
            status, body = await pause(session, gateway.url)
            assert status in (409, 503), body
    first_seen = time.monotonic()
    until(lambda: time.monotonic() - first_seen > 2.5, "2 more ticks of 1 s", 10)
    assert gateway.output.count("rollout store unavailable") == 1, gateway.output[-3000:]
    assert "InvalidResponse" in gateway.output
    no_bug_in(gateway)


def test_the_rollout_store_down_is_said_once_and_its_return_once(keyed: Keyed, tmp_path: Path) -> None:
    # The rollout loop retries every second while Redis is down, and logged a warning each time
    # (3,600 lines an hour a process) where every other Redis link says so once per outage.
    policy = rollout_policy(keyed, tmp_path)
    with PrivateRedis() as server:
        server.stop()
        env = {"REDIS_URL": server.url, "KEYS_URL": "", "SOPHIA_ACCESS_LOG": "0"}
        gateway = start(["serve", "--policy", str(policy), "--port", "0"], env=env, timeout_s=60)
        try:
            until(lambda: "rollout store unavailable" in gateway.output, "the first warning", 20)
            first_seen = time.monotonic()
            until(lambda: time.monotonic() - first_seen > 4.5, "4 more ticks of 1 s", 10)
            assert gateway.output.count("rollout store unavailable") == 1, gateway.output[-3000:]

            server.start()
            until(lambda: "rollout store recovered" in gateway.output, "the store back", 20)
            assert gateway.output.count("rollout store unavailable") == 1
        finally:
            gateway.stop()


def until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def health_command(url: str) -> tuple[int, dict[str, object]]:
    """``sophia-gateway health --json``, as a container's probe runs it: (exit status, report)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "health", "--url", url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report: dict[str, object] = orjson.loads(result.stdout) if result.stdout else {}
    return result.returncode, report


def redis_statuses(report: dict[str, object]) -> dict[str, object]:
    deps = report["dependencies"]
    assert isinstance(deps, dict)
    return {name: dep["status"] for name, dep in deps.items() if name.startswith("redis:")}


async def test_a_redis_that_answers_ping_but_refuses_scripts_is_down_without_flickering(
    keyed: Keyed,
) -> None:
    # Every call the gateway makes to Redis runs a script, but the health check (and the probe
    # that ends an outage) was a PING, which a Redis refusing scripts (here an ACL without
    # @scripting, as a managed Redis may be set up) answers: each check found the link up and
    # ended the outage the next call opened again, so /health and `sophia-gateway health`
    # flickered between up and down, and the log said "unavailable" and "recovered" over and over.
    import redis

    with PrivateRedis() as server:
        gateway = keyed.serve(server.url)
        admin = redis.Redis.from_url(server.url)
        try:
            async with aiohttp.ClientSession() as session:
                await until_hit(session, gateway.url, keyed.secret, timeout_s=20)
                code, report = health_command(gateway.url)
                assert code == 0 and set(redis_statuses(report).values()) == {"up"}, report

                admin.execute_command("ACL", "SETUSER", "default", "-@scripting")
                assert admin.ping()  # PING still answered
                seen: list[dict[str, object]] = []
                deadline = time.monotonic() + 6.0  # beyond the longest backoff (5 s)
                while time.monotonic() < deadline:
                    status, _, _ = await chat(session, gateway.url, keyed.secret, "refused")
                    assert status == 200  # fail-open
                    async with session.get(f"{gateway.url}/health") as resp:
                        seen.append(redis_statuses(await resp.json()))
                    await asyncio.sleep(0.1)
                # Down from the first check that saw the refusal on, never up again meanwhile.
                firsts = {name: next(i for i, s in enumerate(seen) if s[name] == "down") for name in seen[0]}
                for name, first in firsts.items():
                    assert {s[name] for s in seen[first:]} == {"down"}, (name, [s[name] for s in seen])
                    assert first <= 3, (name, first)
                code, report = health_command(gateway.url)
                assert code == 1 and set(redis_statuses(report).values()) == {"down"}, report
                output = gateway.output
                for link in ("redis cache", "redis limits", "shared routing state"):
                    down, back = output.count(f"{link} unavailable"), output.count(f"{link} recovered")
                    assert (down, back) == (1, 0), (link, down, back, output[-3000:])

                admin.execute_command("ACL", "SETUSER", "default", "+@all")
                await until_hit(session, gateway.url, keyed.secret, timeout_s=20)
                deadline = time.monotonic() + 20
                while (code_report := health_command(gateway.url))[0] != 0:
                    assert time.monotonic() < deadline, code_report
                assert set(redis_statuses(code_report[1]).values()) == {"up"}
            no_bug_in(gateway)
        finally:
            admin.close()
            gateway.stop()
