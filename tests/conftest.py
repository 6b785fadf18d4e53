"""Set up once for the whole test run, before any test starts a process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # The end-to-end tests start several hundred processes (gateways, the CLI, fake providers).
    # With PYTHONDONTWRITEBYTECODE set (as where the suite runs in CI) and no __pycache__ in
    # the tree, each one compiled the gateway's ~160 modules from source: about 0.3 s of CPU of
    # the 1.3 s a gateway's imports take. Their bytecode is kept out of the tree instead, as
    # that setting wants, in the user's cache directory, written once and read by every later
    # process and run (a .pyc is used only while its source's mtime and size match it).
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = cache / "sophia-gateway-tests" / "pycache"
    try:
        prefix.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return  # no cache directory to write to: compile as before
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    del os.environ["PYTHONDONTWRITEBYTECODE"]
