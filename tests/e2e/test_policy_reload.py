"""Hot reload of a real gateway process: the policy file rewritten under load, and SIGHUP.

Issue 13's acceptance test: at least 200 requests/s while the file is rewritten 20 times, half
of the versions invalid: no request fails, every valid version serves within 2 s of its write,
no invalid one ever does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.testing.process import ManagedProcess, start

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
CONCURRENCY = 8
REWRITES = 20
VALID_WITHIN_S = 2.0


def policy(fake_url: str, marker: str, *, valid: bool = True) -> str:
    """Every version serves ``chat``; version ``marker`` also serves a group named after it. An
    invalid version names a provider that does not exist (the file still parses as YAML)."""
    provider = "fake" if valid else "no-such-provider"
    return (
        "version: 1\nauth: {mode: open}\n"
        f"providers:\n  fake: {{kind: openai, base_url: {fake_url}/v1}}\n"
        "models:\n"
        "  chat: {deployments: [{provider: fake, model: upstream-chat}]}\n"
        f"  {marker}: {{deployments: [{{provider: {provider}, model: upstream-{marker}}}]}}\n"
    )


def write_atomically(path: Path, text: str) -> None:
    """As editors and config tools do: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def fake() -> Iterator[ManagedProcess]:
    proc = start(["fake-provider", "--port", "0"])
    yield proc
    proc.stop()


def serve(path: Path, **env: str) -> ManagedProcess:
    return start(["serve", "--policy", str(path), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0", **env})


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


async def test_rewrites_under_load_fail_no_request_and_only_valid_versions_serve(
    fake: ManagedProcess, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(fake.url, "v0"))
    gateway = serve(path)
    try:
        url = gateway.url
        statuses: dict[int, int] = {}
        stop = asyncio.Event()
        seen_models: set[str] = set()

        async with aiohttp.ClientSession() as session:

            async def load() -> None:
                while not stop.is_set():
                    async with session.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1

            async def served_models() -> list[str]:
                async with session.get(f"{url}/v1/models") as resp:
                    names = [m["id"] for m in (await resp.json())["data"]]
                seen_models.update(names)
                return names

            workers = [asyncio.ensure_future(load()) for _ in range(CONCURRENCY)]
            await asyncio.sleep(0.5)  # warm
            started, before = time.monotonic(), sum(statuses.values())
            delays: list[float] = []
            for i in range(1, REWRITES + 1):
                valid = i % 2 == 0
                marker = f"v{i}" if valid else f"bad{i}"
                write_atomically(path, policy(fake.url, marker, valid=valid))
                written = time.monotonic()
                if valid:
                    while marker not in await served_models():
                        assert time.monotonic() - written < VALID_WITHIN_S, f"{marker} not served in time"
                        await asyncio.sleep(0.01)
                    delays.append(time.monotonic() - written)
                    chat = await session.post(f"{url}/v1/chat/completions", json={**CHAT, "model": marker})
                    assert chat.status == 200
                    chat.release()
                else:
                    # Long enough for the watcher to have read it (it reloads valid ones in less).
                    deadline = written + 0.6
                    while time.monotonic() < deadline:
                        await served_models()
                        await asyncio.sleep(0.02)
            elapsed = time.monotonic() - started
            stop.set()
            await asyncio.gather(*workers)
            during = sum(statuses.values()) - before

        print(
            f"\nreload under load: {during / elapsed:.0f} requests/s, {during} requests, statuses {statuses}, valid version served after max {max(delays):.3f} s"
        )
        assert statuses.keys() == {200}, statuses
        assert during / elapsed >= 200, f"{during / elapsed:.0f} requests/s"
        assert len(delays) == REWRITES // 2 and max(delays) < VALID_WITHIN_S
        assert not {name for name in seen_models if name.startswith("bad")}
        state = get_json(f"{url}/admin/policy")
        assert state["last_error"] is None  # the last version written was valid
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        applied = _sample(metrics, 'gateway_policy_reloads_total{result="applied"}')
        invalid = _sample(metrics, 'gateway_policy_reloads_total{result="invalid"}')
        assert applied == REWRITES // 2 and invalid >= REWRITES // 2
    finally:
        assert gateway.stop() == 0


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sighup_reloads_when_the_watcher_is_off(fake: ManagedProcess, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(fake.url, "v0"))
    gateway = serve(path, SOPHIA_POLICY_WATCH="0")
    try:
        first = get_json(f"{gateway.url}/admin/policy")
        assert first["watching"] is False
        write_atomically(path, policy(fake.url, "v1"))
        time.sleep(0.5)  # a watcher, were one running, would have reloaded by now
        assert get_json(f"{gateway.url}/admin/policy")["version"] == first["version"]
        gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while (state := get_json(f"{gateway.url}/admin/policy"))["version"] == first["version"]:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
        assert state["source"] == "signal"
        names = [m["id"] for m in get_json(f"{gateway.url}/v1/models")["data"]]  # type: ignore[union-attr]
        assert names == ["chat", "v1"]
    finally:
        assert gateway.stop() == 0


def test_a_refused_reload_shows_in_health_until_one_applies(fake: ManagedProcess, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(fake.url, "v0"))
    gateway = serve(path, SOPHIA_POLICY_WATCH="0")
    try:
        assert get_json(f"{gateway.url}/health")["dependencies"]["policy"]["status"] == "up"  # type: ignore[index]
        write_atomically(path, policy(fake.url, "v1", valid=False))
        request = urllib.request.Request(f"{gateway.url}/admin/policy/reload", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError):  # refused: the old policy serves on
            urllib.request.urlopen(request, timeout=5)
        health = get_json(f"{gateway.url}/health")
        check = health["dependencies"]["policy"]  # type: ignore[index]
        assert health["status"] == "degraded" and check["status"] == "degraded", health
        assert "refused" in check["detail"] and "no-such-provider" in check["detail"], check
        assert check["problems"] and check["refused_at"] > 0
        with urllib.request.urlopen(f"{gateway.url}/health/ready", timeout=5) as ready:
            assert ready.status == 200  # serving on the policy in force: still ready
        write_atomically(path, policy(fake.url, "v2"))
        with urllib.request.urlopen(request, timeout=5) as applied:
            assert applied.status == 200
        assert get_json(f"{gateway.url}/health")["dependencies"]["policy"]["status"] == "up"  # type: ignore[index]
    finally:
        assert gateway.stop() == 0
