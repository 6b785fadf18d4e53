"""``redis_client``: the URL names the client kind (no connection is made here)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.redis_link import redis_client


def test_plain_and_tls_urls_give_one_redis() -> None:
    plain = redis_client("redis://:secret@127.0.0.1:6380/2", 0.05, 15)
    assert isinstance(plain, aioredis.Redis)
    kwargs = plain.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "127.0.0.1",
        6380,
        2,
        "secret",
    )
    assert kwargs["socket_timeout"] == 1.0  # the op timeout's slack, not redis-py's default
    tls = redis_client("rediss://h:6379/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem", 2.0, 15)
    assert isinstance(tls, aioredis.Redis)
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_sentinel_url() -> None:
    client = redis_client(
        "redis+sentinel://user:pw@s1:26379,s2:26380,s3/mymaster/3?sentinel_password=spw", 0.05, 15
    )
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "pw")
    assert pool.connection_kwargs["username"] == "user"
    sentinels = pool.sentinel_manager.sentinels
    found = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert found == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert all(s.connection_pool.connection_kwargs["password"] == "spw" for s in sentinels)
    tls = redis_client("rediss+sentinel://s1:26379/mymaster?ssl_ca_certs=/ca.pem", 0.05, 15)
    assert tls.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_cluster_url() -> None:
    client = redis_client("redis+cluster://:pw@n1:7000", 0.05, 15)
    assert isinstance(client, RedisCluster)
    startup = client.nodes_manager.startup_nodes.values()
    assert [(n.host, n.port) for n in startup] == [("n1", 7000)]  # the others are found on connect


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:6379", "redis+sentinel://s1:26379", "redis+sentinel:///mymaster", "redis+sentinel://s1:x/m"],
)
def test_malformed_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        redis_client(url, 0.05, 15)
