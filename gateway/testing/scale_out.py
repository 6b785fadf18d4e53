"""Three gateway replicas on one Redis, and the scenarios that show what they share (issue 16):
used by ``tests/e2e/test_scale_out.py`` and ``benchmarks/scale_out.py``.

Real processes on loopback: a ``redis-server`` (``PrivateRedis``), two fake providers (``flaky``,
killed mid-run, and ``steady``), N ``serve`` processes in open mode with ``REDIS_URL`` set. The
model group ``chat`` lists ``flaky`` first (strategy ``ordered``), so until its breaker opens
every request tries it first and fails over to ``steady``; ``rated`` has one deployment, for
feedback. ``shared=False`` starts the replicas with ``SOPHIA_SHARED_ROUTING=0`` (each on its own
figures, the cache still shared): the baseline the shared state is measured against.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.process import ManagedProcess, start
from gateway.testing.redis_server import PrivateRedis

CONSECUTIVE_FAILURES = 6


def policy_text(flaky_url: str, steady_url: str) -> str:
    return (
        "version: 1\n"
        "auth: {mode: open}\n"
        "memory: {enabled: false}\n"
        # What is measured is sharing, not latency: a lookup that a loaded machine's stalled
        # event loop kept past the default 50 ms failed open as a miss (CI: 5 hits of 6).
        "cache: {lookup_timeout_ms: 1000}\n"
        f"breaker: {{consecutive_failures: {CONSECUTIVE_FAILURES}, min_requests: 1000000, cooldown_s: 120}}\n"
        "routing: {quality_prior_votes: 1}\n"
        "providers:\n"
        f"  flaky: {{kind: openai, base_url: '{flaky_url}/v1', timeouts: {{connect_s: 1, total_s: 10}}}}\n"
        f"  steady: {{kind: openai, base_url: '{steady_url}/v1'}}\n"
        "models:\n"
        "  chat:\n"
        "    strategy: ordered\n"
        "    deployments: [{provider: flaky, model: m-flaky}, {provider: steady, model: m-steady}]\n"
        "  rated:\n"
        "    deployments: [{provider: steady, model: m-rated, quality: 0.9}]\n"
    )


@dataclass
class ScaleOutStack:
    """The running processes; ``close()`` stops them all."""

    redis: PrivateRedis
    flaky: ManagedProcess
    steady: ManagedProcess
    gateways: list[ManagedProcess] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def close(self) -> None:
        for proc in [*self.gateways, self.flaky, self.steady]:
            if proc.popen.poll() is None:
                proc.stop()
        self.redis.close()


def start_stack(
    workdir: Path, replicas: int = 3, *, shared: bool = True, redis_url: str | None = None
) -> ScaleOutStack:
    """A private Redis, the two fakes and ``replicas`` gateways (RuntimeError when one fails)."""
    redis = PrivateRedis()
    redis.start()
    started: list[ManagedProcess] = []
    try:
        flaky = start(["fake-provider", "--port", "0", "--seed", "1"])
        started.append(flaky)
        steady = start(["fake-provider", "--port", "0", "--seed", "2"])
        started.append(steady)
        policy = workdir / f"scale-out-{uuid.uuid4().hex[:8]}.yaml"
        policy.write_text(policy_text(flaky.url, steady.url))
        env = {
            "REDIS_URL": redis_url or redis.url,
            "SOPHIA_ACCESS_LOG": "0",
            "SOPHIA_SHARED_ROUTING": "1" if shared else "0",
        }
        stack = ScaleOutStack(redis, flaky, steady)
        with ThreadPoolExecutor(replicas) as pool:
            futures = [
                pool.submit(start, ["serve", "--policy", str(policy), "--port", "0"], env=env, timeout_s=60)
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
        for proc in started:
            if proc.popen.poll() is None:
                proc.stop()
        redis.close()
        raise


def chat_body(content: str, model: str = "chat") -> bytes:
    return orjson.dumps(
        {"model": model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
    )


async def post(
    session: aiohttp.ClientSession, url: str, path: str, body: bytes
) -> tuple[int, Mapping[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer scale-out"}
    async with session.post(url + path, data=body, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def metrics(
    session: aiohttp.ClientSession, url: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics, by (name, sorted labels)."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(found: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= set(ls))


async def wait_for_peers(urls: Sequence[str], timeout_s: float = 20.0) -> None:
    """Until every replica has merged the other replicas' summaries (shared state on)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            seen = [sample(await metrics(session, u), "gateway_shared_state_replicas") for u in urls]
            if all(s >= len(urls) - 1 for s in seen):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas did not see each other: {seen}")
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class CacheFigures:
    stored_through: int
    hits_elsewhere: int
    tries_elsewhere: int


async def cache_across(urls: Sequence[str], redis_url: str, prompts: int = 5) -> CacheFigures:
    """Each prompt answered through one replica, then, once its answer is in Redis (the cache
    writes after answering), asked through each of the others."""
    hits = tries = 0
    sizes = "sophia:cache:{common_queries}:sizes"  # the default category's index (redis_store.py)
    async with aiohttp.ClientSession() as session, aioredis.Redis.from_url(redis_url) as raw:
        # One cacheable request through each replica first: its Redis connection made and its
        # scripts loaded, which a loaded machine can take longer for than cache.lookup_timeout_ms
        # (a lookup past it is a miss, fail-open: not what this measures).
        for url in urls:
            await post(session, url, "/v1/chat/completions", chat_body(f"warm-up {uuid.uuid4().hex}"))
        for i in range(prompts):
            body = chat_body(f"cache across replicas {uuid.uuid4().hex} {i}")
            first = i % len(urls)
            stored = await raw.hlen(sizes)
            status, headers, _ = await post(session, urls[first], "/v1/chat/completions", body)
            assert status == 200 and headers.get("x-gateway-cache") == "miss", (status, headers)
            deadline = time.monotonic() + 5.0
            while await raw.hlen(sizes) == stored and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for j, url in enumerate(urls):
                if j == first:
                    continue
                status, headers, _ = await post(session, url, "/v1/chat/completions", body)
                tries += 1
                hits += status == 200 and headers.get("x-gateway-cache") == "hit"
    return CacheFigures(prompts, hits, tries)


@dataclass(frozen=True)
class BreakerFigures:
    failed_upstream_attempts: int  # calls to the dead provider, summed over the replicas
    client_errors: int  # client requests that did not get a 200
    requests: int
    open_on: int  # replicas whose breaker for the dead provider is open at the end
    spread_s: float | None  # from the first replica's breaker open to the last's


async def kill_mid_run(
    stack: ScaleOutStack,
    *,
    before_s: float = 1.0,
    after_s: float = 2.5,
    interval_s: float = 0.05,
    most_after_s: float = 30.0,
) -> BreakerFigures:
    """Requests one at a time, round-robin, every ``interval_s``; the ``flaky`` provider is killed
    after ``before_s`` and the run goes on ``after_s``, and then on until every replica's breaker
    opened (at most ``most_after_s``): on a loaded machine a request may take far longer than
    ``interval_s``, and a run of fixed length then sent too few requests for the breakers to open
    (CI saw 13 requests in 3.5 s, none opened). While it runs, each replica's breaker state is
    polled to time when each one opened."""
    urls = stack.urls
    opened: dict[int, float] = {}
    done = asyncio.Event()

    async def watch(session: aiohttp.ClientSession) -> None:
        while not done.is_set() and len(opened) < len(urls):
            found = await asyncio.gather(*(metrics(session, u) for u in urls))
            now = time.monotonic()
            for i, m in enumerate(found):
                if i not in opened and sample(m, "gateway_breaker_state", provider="flaky") == 2:
                    opened[i] = now
            await asyncio.sleep(0.02)

    errors = sent = 0
    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(watch(session))
        started = time.monotonic()
        killed = False
        while (elapsed := time.monotonic() - started) < before_s + after_s or (
            len(opened) < len(urls) and elapsed < before_s + most_after_s
        ):
            if not killed and elapsed >= before_s:
                stack.flaky.popen.kill()  # SIGKILL: gone at once, as a crashed provider is
                killed = True
            body = chat_body(f"breaker {uuid.uuid4().hex}")  # unique: never a cache hit
            status, _, _ = await post(session, urls[sent % len(urls)], "/v1/chat/completions", body)
            errors += status != 200
            sent += 1
            await asyncio.sleep(interval_s)
        deadline = time.monotonic() + 3.0
        while len(opened) < len(urls) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        done.set()
        await watcher
        found = await asyncio.gather(*(metrics(session, u) for u in urls))
    failed = sum(
        sample(m, "gateway_upstream_requests_total", provider="flaky", outcome="error") for m in found
    )
    open_on = sum(sample(m, "gateway_breaker_state", provider="flaky") == 2 for m in found)
    spread = max(opened.values()) - min(opened.values()) if len(opened) == len(urls) else None
    return BreakerFigures(int(failed), errors, sent, open_on, spread)


@dataclass(frozen=True)
class FeedbackFigures:
    before: list[float]  # each replica's score of the rated deployment before the votes
    after: list[float]  # ... once the votes (sent to replica 0 only) reached it
    seconds: float  # from the last vote until every replica's score moved to the same figure


async def feedback_everywhere(
    urls: Sequence[str], votes: int = 3, timeout_s: float = 10.0
) -> FeedbackFigures:
    """Requests to ``rated`` through replica 0, each voted 0 there; then every replica's score of
    that deployment is polled until it moved down, the same on every replica (or the timeout)."""

    def score(m: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
        return sample(m, "gateway_deployment_score", model="rated", provider="steady")

    async with aiohttp.ClientSession() as session:
        before = [score(await metrics(session, u)) for u in urls]
        for i in range(votes):
            body = chat_body(f"rate me {uuid.uuid4().hex} {i}", model="rated")
            status, headers, _ = await post(session, urls[0], "/v1/chat/completions", body)
            assert status == 200, status
            vote = orjson.dumps({"request_id": headers["x-request-id"], "score": 0.0})
            status, _, answer = await post(session, urls[0], "/v1/feedback", vote)
            assert status == 200, answer
        voted = time.monotonic()
        while True:
            after = [score(await metrics(session, u)) for u in urls]
            # Moved everywhere and settled: a replica that read the shared votes while they were
            # still arriving has moved, but not yet as far as the one that took them.
            if all(a < b for a, b in zip(after, before, strict=True)) and len(set(after)) == 1:
                return FeedbackFigures(before, after, time.monotonic() - voted)
            if time.monotonic() - voted > timeout_s:
                return FeedbackFigures(before, after, float("inf"))
            await asyncio.sleep(0.05)
