"""Real backing services for integration tests: Redis from ``REDIS_URL`` or a private server.

``redis_url`` is shared by the session (``REDIS_URL`` when set, else one private
``redis-server``); ``redis_prefix`` gives each test its own key namespace and deletes it after.
``private_redis`` is a server of the test's own, for tests that stop, restart or block it.
There is no fake Redis: without ``REDIS_URL`` and without ``redis-server`` these tests fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from gateway.testing.redis_server import INSTALL_HINT, PrivateRedis, redis_server_binary


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
