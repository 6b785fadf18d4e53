"""The command line imports what the asked-for command runs, and no more: ``health`` as an exec
probe, ``top``, ``rollout``, ``keys`` and each test's ``fake-provider`` start in a fraction of the
gateway's own import time (about 0.1-0.3 s against 0.9 s here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Imported by serving only: the app and its request path, the policy's models, the key stores'
# admin API (aiohttp.web's handlers), the memory service.
_SERVING = (
    "gateway.app",
    "gateway.keys",
    "gateway.service.calls",
    "gateway.api.admin_keys",
    "gateway.memory.service",
)


def _imported_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from gateway import cli\n"
        f"cli._parser({argv[0]!r})\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize("command", ["health", "top", "rollout", "keys", "fake-provider", "policy", "memory"])
def test_a_commands_help_imports_nothing_of_the_serving_gateway(command: str) -> None:
    modules = _imported_after([command, "--help"])
    assert not modules & set(_SERVING), sorted(modules & set(_SERVING))


def test_the_top_level_help_lists_every_command_without_importing_any() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for command in ("serve", "policy", "memory", "top", "health", "keys", "rollout", "fake-provider"):
        assert command in done.stdout
    assert not _imported_after(["--version"]) & {"gateway.policy.loader", "aiohttp", *_SERVING}


def test_each_command_still_parses_its_own_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--rpm", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--rpm" in done.stderr


def test_the_processes_the_tests_start_read_bytecode_instead_of_compiling() -> None:
    # tests/conftest.py: with PYTHONDONTWRITEBYTECODE (and no __pycache__ in the tree) every
    # gateway a test started compiled ~160 modules from source, about 0.3 s of CPU each time.
    # They write it once to a cache outside the tree (PYTHONPYCACHEPREFIX) and read it after.
    assert not os.environ.get("PYTHONDONTWRITEBYTECODE")


# Imported only when what needs them is built (``build_app``, before the port opens, so a first
# request never waits for them): numpy and usearch by the memory index and the semantic cache,
# the file-ingestion machinery (its formats' pipeline and spool) by the memory service.
_BUILT_ON_DEMAND = (
    "numpy",
    "usearch",
    "gateway.memory.index",
    "gateway.cache.semantic",
    "gateway.memory.ingest",
    "gateway.memory.pipeline",
)

_APP_POLICY = """
version: 1
auth: {mode: open}
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
  emb: {deployments: [{provider: a, model: ea}]}
"""


# And redis-py (with the OpenTelemetry metrics SDK its own observability imports) only with REDIS_URL.
_REDIS = ("redis", "gateway.redis_link", "opentelemetry.sdk.metrics")

_BUILD = """
import asyncio, sys, threading
from pathlib import Path
import gateway.app
print(" ".join(sorted(sys.modules)))
from gateway import keys
from gateway.app import build_app
from gateway.policy.loader import load_policy, parse_policy
from gateway.settings import Settings
off, semantic, on, redis_url = sys.argv[1:5]
file = Path(sys.argv[5])
file.write_text(off)
app = build_app(Settings(access_log=False), load_policy(str(file)), {}, policy_path=str(file))
print(" ".join(sorted(sys.modules)))
# A reload that adds a semantic category: the thread its index's module is imported in.
threads = []
sys.addaudithook(lambda event, args: event == "import" and args[0] == "gateway.cache.semantic"
                 and threads.append(threading.current_thread() is threading.main_thread()))
file.write_text(semantic)
print(asyncio.run(app[keys.POLICY_CONTROL].reload("test")).result, *threads)
build_app(Settings(access_log=False, redis_url=redis_url), parse_policy(on), {})
print(" ".join(sorted(sys.modules)))
"""


def test_the_app_imports_numpy_redis_and_the_ingest_machinery_only_when_it_builds_what_needs_them(
    tmp_path: Path,
) -> None:
    # One process: import gateway.app, build the app of a policy without memory or a semantic
    # category and no REDIS_URL, then of one with both and REDIS_URL (build_app connects to
    # nothing); the modules loaded after each step.
    off = _APP_POLICY + "memory: {enabled: false}\n"
    semantic = (
        "cache:\n  default_category: s\n  categories:\n"
        + "    s: {ttl_s: 60, max_bytes: 1MB, semantic: {embedding_model: emb}}\n"
    )
    on = (
        _APP_POLICY
        + f"memory: {{embedding_model: emb, path: {tmp_path / 'm.db'}, index_dir: {tmp_path / 'ix'}}}\n"
        + semantic
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _BUILD,
            off,
            off + semantic,
            on,
            "redis://127.0.0.1:6379/0",
            tmp_path / "p.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported, built_off, reloaded, built_on = done.stdout.splitlines()
    heavy = {*_BUILT_ON_DEMAND, *_REDIS}
    assert not set(imported.split()) & heavy, sorted(set(imported.split()) & heavy)
    assert not set(built_off.split()) & heavy, sorted(set(built_off.split()) & heavy)
    # A reload that adds a semantic category imports numpy in its thread, not on the event loop.
    assert reloaded == "applied False", reloaded
    # Built with them all: all imported by build_app, before it serves.
    assert heavy <= set(built_on.split()), sorted(heavy - set(built_on.split()))
