"""Several gateway replicas sharing one Redis and one key store, and the load that checks their
limits: used by ``tests/e2e/test_limits_replicas.py`` and ``benchmarks/limits.py``.

Everything is a real process on loopback: a ``redis-server`` (``PrivateRedis``), one fake
provider, N ``serve`` processes in ``auth.mode: keys`` with ``REDIS_URL`` set and the same SQLite
key store (``auth.store``, an absolute path), and keys made by the ``sophia-gateway keys create``
command, as an operator makes them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from gateway.testing.process import ManagedProcess, start
from gateway.testing.redis_server import PrivateRedis

TEAM = "replicas"
MODEL = "chat"
ROOT = Path(__file__).resolve().parents[2]


def policy_text(fake_url: str, store: Path, price: str = "") -> str:
    """Keys mode, one team without defaults (each key carries its own limits), no memory;
    ``price`` the deployment's (``{input_per_mtok: 1, output_per_mtok: 2}``), none by default."""
    priced = f", price: {price}" if price else ""
    return (
        "version: 1\n"
        f"providers:\n  fake: {{kind: openai, base_url: '{fake_url}/v1'}}\n"
        f"models:\n  {MODEL}: {{deployments: [{{provider: fake, model: fake-model{priced}}}]}}\n"
        "memory: {enabled: false}\n"
        f"auth:\n  mode: keys\n  store: '{store}'\n  teams:\n    {TEAM}: {{}}\n"
    )


@dataclass
class ReplicaStack:
    """The running processes; ``close()`` stops them all."""

    workdir: Path
    policy_path: Path
    redis: PrivateRedis | None
    redis_url: str
    fake: ManagedProcess
    gateways: list[ManagedProcess] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def create_key(self, *flags: str) -> str:
        """``sophia-gateway keys create --team TEAM FLAGS...`` on the shared store; the secret."""
        return self.create_key_with_id(*flags)[1]

    def create_key_with_id(self, *flags: str) -> tuple[str, str]:
        """``create_key``, and the key's id: (id, secret)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KEYS_URL": ""}
        command = ["keys", "create", "--policy", str(self.policy_path), "--team", TEAM, "--json"]
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *command, *flags],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"keys create failed: {result.stderr}")
        made = orjson.loads(result.stdout)
        return str(made["id"]), str(made["secret"])

    def close(self) -> None:
        for proc in [*self.gateways, self.fake]:
            proc.stop()
        if self.redis is not None:
            self.redis.close()


def start_replicas(
    workdir: Path,
    replicas: int = 3,
    *,
    fake_flags: Sequence[str] = (),
    gateway_cpu: int | None = None,
    helper_cpu: int | None = None,
    env: Mapping[str, str] | None = None,
    price: str = "",
) -> ReplicaStack:
    """A private Redis, one fake provider and ``replicas`` gateways sharing both (RuntimeError
    when ``redis-server`` is missing or does not start)."""
    redis = PrivateRedis()
    redis.start()
    fake = None
    try:
        fake = start(["fake-provider", "--port", "0", "--seed", "1", *fake_flags], cpu=helper_cpu)
        policy = workdir / "replicas.yaml"
        policy.write_text(policy_text(fake.url, workdir / "keys.sqlite3", price))
        stack = ReplicaStack(workdir, policy, redis, redis.url, fake)
        gateway_env = {
            "REDIS_URL": redis.url,
            "KEYS_URL": "",
            "SOPHIA_ACCESS_LOG": "0",
            **(env or {}),
        }
        with ThreadPoolExecutor(replicas) as pool:
            futures = [
                pool.submit(
                    start,
                    ["serve", "--policy", str(policy), "--port", "0"],
                    env=gateway_env,
                    cpu=gateway_cpu,
                    timeout_s=60,
                )
                for _ in range(replicas)
            ]
            for future in futures:
                try:
                    stack.gateways.append(future.result())
                except Exception:
                    stack.close()
                    raise
        return stack
    except Exception:
        if fake is not None and fake.popen.poll() is None:
            fake.stop()
        redis.close()
        raise


@dataclass(frozen=True)
class Reply:
    """What one client saw of one call."""

    gateway: int  # index of the replica that answered
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    sent_s: float  # monotonic, when the request left
    done_s: float  # monotonic, when the answer was read whole
    usage_tokens: int = 0  # total_tokens of the answer's usage (streams: the usage chunk)

    def error(self) -> Mapping[str, object]:
        parsed = orjson.loads(self.body)
        error: Mapping[str, object] = parsed["error"]
        return error


def chat_body(content: str, *, max_tokens: int | None = None, stream: bool = False) -> bytes:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _stream_usage(raw: bytes) -> int:
    total = 0
    for line in raw.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            usage = orjson.loads(line[5:].strip()).get("usage")
            if isinstance(usage, dict):
                total = int(usage.get("total_tokens") or 0)
    return total


async def call(
    session: aiohttp.ClientSession, urls: Sequence[str], index: int, secret: str, body: bytes
) -> Reply:
    """POST ``body`` to /v1/chat/completions of replica ``index % len(urls)``, read it whole."""
    gateway = index % len(urls)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    sent = time.monotonic()
    async with session.post(f"{urls[gateway]}/v1/chat/completions", data=body, headers=headers) as resp:
        raw = await resp.read()
        names = {k.lower(): v for k, v in resp.headers.items()}
    done = time.monotonic()
    usage = 0
    if resp.status == 200:
        if names.get("content-type", "").startswith("text/event-stream"):
            usage = _stream_usage(raw)
        else:
            usage = int((orjson.loads(raw).get("usage") or {}).get("total_tokens") or 0)
    return Reply(gateway, resp.status, names, raw, sent, done, usage)


async def hammer(
    urls: Sequence[str],
    secret: str,
    body_of: Callable[[int], bytes],
    *,
    total: int | None = None,
    duration_s: float | None = None,
    concurrency: int = 24,
    timeout_s: float = 30.0,
) -> list[Reply]:
    """Calls spread round-robin over ``urls`` by ``concurrency`` workers, until ``total`` calls
    were made or ``duration_s`` has passed (whichever is given; both bound it)."""
    if total is None and duration_s is None:
        raise ValueError("hammer needs total or duration_s")
    deadline = time.monotonic() + duration_s if duration_s is not None else float("inf")
    replies: list[Reply] = []
    counter = iter(range(total if total is not None else 10**9))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in counter:
            if time.monotonic() >= deadline:
                return
            replies.append(await call(session, urls, index, secret, body_of(index)))

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return replies


async def burst(
    urls: Sequence[str], secret: str, bodies: Sequence[bytes], timeout_s: float = 30.0
) -> list[Reply]:
    """Every body at once (one connection each), spread round-robin over ``urls``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        return list(await asyncio.gather(*(call(session, urls, i, secret, b) for i, b in enumerate(bodies))))


def words(n: int) -> str:
    """A prompt whose reservation (characters / 4 + 1, gateway/auth/gate.py) is exactly ``n``
    tokens and which the fake provider counts as ``n`` prompt tokens (one per word) and echoes
    as ``n`` completion tokens: ``n`` words of three letters, one space between."""
    return " ".join(["abc"] * n)


def max_in_window(times_s: Sequence[float], window_s: float) -> int:
    """The most of ``times_s`` that any interval ``[t, t + window_s)`` holds."""
    ordered = sorted(times_s)
    best = start_i = 0
    for end_i, t in enumerate(ordered):
        while ordered[start_i] <= t - window_s:
            start_i += 1
        best = max(best, end_i - start_i + 1)
    return best
