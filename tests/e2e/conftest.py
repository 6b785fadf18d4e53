"""Whole-process fixtures: fake providers and a gateway, each a real process on loopback.

One set of processes serves the whole e2e session; each fake provider has a fixed behaviour
(healthy, failing, hanging, slow stream, ...) so tests never share mutable fault state.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing.process import ManagedProcess, free_port, start

PROVIDER_KEY = "sk-test-provider-secret-0123456789abcdef"
MAX_BODY_BYTES = 64 * 1024

# name -> extra fake-provider flags
FAKES: dict[str, list[str]] = {
    "healthy": [],
    "keyed": ["--require-key", PROVIDER_KEY],
    "failing": ["--error-rate", "1", "--error-status", "500"],
    "unavailable": ["--error-rate", "1", "--error-status", "503"],
    "ratelimited": ["--error-rate", "1", "--error-status", "429", "--retry-after", "7"],
    "hanging": ["--hang-rate", "1"],
    "malformed": ["--malformed-rate", "1"],
    "slowstream": ["--tokens-per-s", "10", "--reply", "one two three four five six seven eight nine ten"],
    "cutstream": ["--disconnect-rate", "1", "--tokens-per-s", "50", "--reply", "a b c d e f g h"],
}


@dataclass
class Stack:
    """The running processes of one e2e session."""

    gateway: ManagedProcess
    fakes: dict[str, ManagedProcess]
    policy_path: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def api(self) -> str:
        return self.gateway.url + "/v1"


def policy_text(
    fakes: dict[str, ManagedProcess], dead_port: int, max_body_bytes: int = MAX_BODY_BYTES
) -> str:
    def provider(name: str, url: str, extra: str = "") -> str:
        return (
            f"  {name}:\n    kind: openai\n    base_url: {url}/v1\n"
            f"    timeouts: {{connect_s: 1, first_byte_s: 1.5, total_s: 20}}\n{extra}"
        )

    providers = "".join(provider(n, p.url) for n, p in fakes.items() if n != "keyed")
    providers += provider("keyed", fakes["keyed"].url, "    api_key_env: E2E_PROVIDER_KEY\n")
    providers += provider("unset", fakes["healthy"].url, "    api_key_env: E2E_KEY_THAT_IS_NOT_SET\n")
    providers += provider("dead", f"http://127.0.0.1:{dead_port}")

    def model(name: str, *deps: tuple[str, str], extra: str = "") -> str:
        lines = "".join(f"      - {{provider: {p}, model: {m}}}\n" for p, m in deps)
        return f"  {name}:\n{extra}    deployments:\n{lines}"

    models = "".join(
        [
            model("chat", ("healthy", "upstream-chat")),
            model("keyed-chat", ("keyed", "upstream-keyed")),
            model(
                "failover-chat",
                ("dead", "gone"),
                ("failing", "bad"),
                ("healthy", "upstream-chat"),
                extra="    strategy: ordered\n",
            ),
            model("failing-chat", ("failing", "bad")),
            model("unavailable-chat", ("unavailable", "bad")),
            model("ratelimited-chat", ("ratelimited", "rl")),
            model("hanging-chat", ("hanging", "slow"), extra="    retry: {max_attempts: 1}\n"),
            model("malformed-chat", ("malformed", "broken")),
            model("dead-chat", ("dead", "gone")),
            model("nokey-chat", ("unset", "needs-key")),
            model("slow-stream", ("slowstream", "streamer")),
            model("cut-stream", ("cutstream", "cutter")),
            model("embed", ("healthy", "upstream-embed")),
        ]
    )
    return (
        textwrap.dedent(
            f"""\
        version: 1
        auth: {{mode: open}}
        server: {{max_body_bytes: {max_body_bytes}, drain_grace_s: 10}}
        # These tests hit always-failing fakes on purpose and must see each failure as it is:
        # breakers stay shut (test_routing_faults.py covers them) and retries do not back off.
        breaker: {{consecutive_failures: 1000000, min_requests: 1000000}}
        retry: {{max_attempts: 3, backoff_initial_s: 0.001, backoff_max_s: 0.01}}
        providers:
        """
        )
        + providers
        + "models:\n"
        + models
    )


def start_fakes(names: dict[str, list[str]]) -> dict[str, ManagedProcess]:
    with ThreadPoolExecutor(len(names)) as pool:
        futures = {
            name: pool.submit(start, ["fake-provider", "--port", "0", "--seed", "1", *flags])
            for name, flags in names.items()
        }
        return {name: f.result() for name, f in futures.items()}


def start_gateway(policy_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    return start(
        ["serve", "--policy", str(policy_path), "--port", "0"],
        env={"E2E_PROVIDER_KEY": PROVIDER_KEY, "SOPHIA_LOG_FORMAT": "json", **(env or {})},
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = start_fakes(FAKES)
    policy_path = tmp_path_factory.mktemp("policy") / "e2e.yaml"
    policy_path.write_text(policy_text(fakes, free_port()))
    gateway = None
    try:
        gateway = start_gateway(policy_path)
        yield Stack(gateway, fakes, policy_path)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes.values():
            fake.stop()
