"""Real backing services for integration tests: Redis from ``REDIS_URL`` or a private server.

``redis_url`` is shared by the session (``REDIS_URL`` when set, else one private
``redis-server``); ``redis_prefix`` gives each test its own key namespace and deletes it after.
``private_redis`` is a server of the test's own, for tests that stop, restart or block it;
``tls_url`` a TLS-only one (a self-signed certificate), shared by a test module.
There is no fake Redis: without ``REDIS_URL`` and without ``redis-server`` these tests fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import redis

from gateway.testing.redis_server import INSTALL_HINT, PrivateRedis, redis_server_binary, self_signed


def _private() -> PrivateRedis:
    if redis_server_binary() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    server = PrivateRedis()
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis the tests may write to (under their own ``redis_prefix``)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = _private()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A ``redis-server`` owned by this test alone (even when ``REDIS_URL`` is set)."""
    server = _private()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def tls_url() -> Iterator[str]:
    """A TLS-only ``redis-server`` of the module's own (``rediss://`` with the certificate as CA)."""
    if redis_server_binary() is None or shutil.which("openssl") is None:
        pytest.skip("redis-server and openssl are needed for a TLS server")
    directory = tempfile.mkdtemp(prefix="sophia-tls-")
    try:
        server = PrivateRedis(tls=self_signed(directory))
        try:
            server.start()
        except RuntimeError as exc:  # a redis-server built without TLS refuses --tls-port
            pytest.skip(f"redis-server cannot serve TLS here: {exc}")
        with server:
            yield server.url
    finally:
        shutil.rmtree(directory, ignore_errors=True)
