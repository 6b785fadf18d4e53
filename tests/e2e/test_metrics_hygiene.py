"""/metrics holds no secret, no client text and a bounded number of series, whatever clients send.

A gateway process (keys mode, a provider whose key the fake provider requires) answers one
request of every kind first, so every series those kinds make exists; then a flood of 10,000
distinct model names no policy knows, spread over the four doors, random paths and methods,
bogus virtual keys, and prompts with a marker. The scrape after the flood must have exactly the
series of the scrape before it (only values move), and none of the provider key, the virtual
key's secret or id, the prompt marker, a client's model name or a path appears in it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing.process import start
from tests.e2e.conftest import PROVIDER_KEY, start_fakes

pytestmark = pytest.mark.timeout(120)

MARKER = "PROMPTMARKER7f3a"
FLOOD = 10_000
DOORS = ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings")


def body(door: str, model: str) -> dict[str, Any]:
    text = f"{MARKER} tell me"
    if door == "/v1/embeddings":
        return {"model": model, "input": [text]}
    if door == "/v1/responses":
        return {"model": model, "input": text}
    if door == "/v1/messages":
        return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def series(exposition: str) -> set[str]:
    """Every sample's name and labels (values left out)."""
    return {line.rpartition(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}


async def send_all(base: str, requests: list[tuple[str, str, str, dict[str, Any] | None]]) -> None:
    """(method, path, key, JSON body) each, 32 at a time over kept-alive connections."""
    queue: asyncio.Queue[tuple[str, str, str, dict[str, Any] | None]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    async with aiohttp.ClientSession(base) as session:

        async def worker() -> None:
            while not queue.empty():
                method, path, key, payload = queue.get_nowait()
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with session.request(method, path, json=payload, headers=headers) as answer:
                    await answer.read()

        await asyncio.gather(*(worker() for _ in range(32)))


def test_metrics_hold_no_secret_nor_client_text_and_stay_bounded(tmp_path: Path) -> None:
    fakes = start_fakes({"keyed": ["--require-key", PROVIDER_KEY, "--embedding-kind", "words"]})
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            auth: {{mode: keys, store: data/keys.sqlite3, teams: {{research: {{}}}}}}
            providers:
              keyed: {{kind: openai, base_url: {fakes["keyed"].url}/v1, api_key_env: HYGIENE_PROVIDER_KEY}}
            models:
              chat: {{deployments: [{{provider: keyed, model: upstream-chat}}]}}
              embed: {{deployments: [{{provider: keyed, model: upstream-embed}}]}}
            """
        )
    )
    gateway = start(
        ["serve", "--policy", str(policy), "--port", "0"],
        env={"HYGIENE_PROVIDER_KEY": PROVIDER_KEY, "SOPHIA_ACCESS_LOG": "0"},
    )
    try:
        created = urllib.request.Request(
            f"{gateway.url}/admin/keys",
            data=json.dumps({"team": "research"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(created, timeout=10) as answer:
            key = json.loads(answer.read())
        secret, key_id = str(key["secret"]), str(key.get("id") or key.get("key_id") or "")

        def unknown() -> str:
            return f"client-model-{secrets.token_hex(6)}"

        def path() -> str:
            return f"/client-path-{secrets.token_hex(6)}"

        def one_of_each(models: list[str], paths: list[str]) -> list[tuple[str, str, str, Any]]:
            out: list[tuple[str, str, str, Any]] = []
            for door in DOORS:
                served = "embed" if door == "/v1/embeddings" else "chat"
                out.append(("POST", door, secret, body(door, served)))
                out.append(("POST", door, secret, body(door, models.pop())))
                out.append(("POST", door, f"sk-bogus-{secrets.token_hex(8)}", body(door, models.pop())))
            out.append(("GET", paths.pop(), "", None))
            out.append(("DELETE", paths.pop(), secret, None))
            out.append(("GET", f"/v1/models/{models.pop()}", secret, None))
            return out

        models = [unknown() for _ in range(FLOOD + 40)]
        paths = [path() for _ in range(FLOOD // 4 + 10)]
        # Twice (the second time the known models' answers are cache hits), and a scrape (which
        # counts itself): every kind of series the flood could make exists before it.
        for _ in range(2):
            asyncio.run(send_all(gateway.url, one_of_each(models, paths)))
        for _ in range(2):
            with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as answer:
                before = answer.read().decode()

        flood = [("POST", DOORS[i % 4], secret, body(DOORS[i % 4], m)) for i, m in enumerate(models[:FLOOD])]
        flood += [("GET", p, "", None) for p in paths[: FLOOD // 4]]
        flood += one_of_each(models[FLOOD:], paths[FLOOD // 4 :])
        asyncio.run(send_all(gateway.url, flood))
        with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as answer:
            after = answer.read().decode()
    finally:
        gateway.stop()
        for fake in fakes.values():
            fake.stop()

    assert series(after) == series(before), sorted(series(after) ^ series(before))[:20]
    for door in DOORS:  # the prompts with the marker went through the provider with its key
        assert f'gateway_requests_total{{endpoint="{door}",model=' in after
    assert 'provider="keyed",status_code="200"}' in after
    for text in (PROVIDER_KEY, secret, MARKER, "client-model-", "client-path-", "sk-bogus-"):
        assert text not in after, text
    if key_id:
        assert key_id not in after
    # The flood was counted (as 404s of no model), not lost.
    counted = sum(
        float(line.rpartition(" ")[2])
        for line in after.splitlines()
        if line.startswith("gateway_requests_total{") and 'status_code="404"' in line
    )
    assert counted >= FLOOD + FLOOD // 4
    assert not re.search(r'model="[^"]*[0-9a-f]{12}"', after)
