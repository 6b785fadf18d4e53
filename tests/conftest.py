"""Set up once for the whole test run, before any test starts a process."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that runs a command in process (the keys CLI configures logging to write its audit
    line: ``observability.logging.configure_logging``) leaves the root logger a handler on
    pytest's captured stderr, closed once that test ends, and ``gateway.audit`` pinned at INFO:
    later tests of the same worker logged into a closed stream ("Logging error") and captured
    audit records they never asked for. Such handlers are closed and removed after each test and
    the two levels put back; pytest's own capture handlers are left to pytest."""
    from gateway.observability.stderr import StderrHandler

    root, audit = logging.getLogger(), logging.getLogger("gateway.audit")
    before, root_level, audit_level = set(root.handlers), root.level, audit.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler, StderrHandler) and handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(root_level)
    audit.setLevel(audit_level)
