"""What only the Snowflake store has: settings from the environment and its connection pool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector

from gateway.memory.records import Memory
from gateway.memory.snowflake_store import SnowflakeMemoryStore, snowflake_settings_from_env
from gateway.observability.metrics import RecoveryActions
from gateway.service.recovery import pool_reconnects
from tests.integration.memory.conftest import SMALL_POOL, SNOWFLAKE_ARGS, Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

ENV = {
    "SNOWFLAKE_ACCOUNT": "acme-prod",
    "SNOWFLAKE_USER": "sophia",
    "SNOWFLAKE_PASSWORD": "hunter2",
    "SNOWFLAKE_WAREHOUSE": "AI_WH",
    "SNOWFLAKE_DATABASE": "SOPHIA",
    "SNOWFLAKE_SCHEMA": "MEMORY",
    "SNOWFLAKE_ROLE": "SOPHIA_RW",
}


def test_settings_from_env() -> None:
    assert snowflake_settings_from_env(ENV) == {
        "account": "acme-prod",
        "user": "sophia",
        "password": "hunter2",
        "warehouse": "AI_WH",
        "database": "SOPHIA",
        "schema": "MEMORY",
        "role": "SOPHIA_RW",
    }
    key_pair = {k: v for k, v in ENV.items() if k != "SNOWFLAKE_PASSWORD"} | {
        "SNOWFLAKE_PRIVATE_KEY_PATH": "/run/secrets/sf.p8",
        "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "pass",
    }
    args = snowflake_settings_from_env(key_pair)
    assert (args["private_key_file"], args["private_key_file_pwd"]) == ("/run/secrets/sf.p8", "pass")
    assert "password" not in args


def test_settings_name_what_is_missing_never_a_value() -> None:
    with pytest.raises(ValueError) as exc:
        snowflake_settings_from_env({"SNOWFLAKE_ACCOUNT": "acme-prod", "SNOWFLAKE_SCHEMA": "MEMORY"})
    message = str(exc.value)
    for name in ("SNOWFLAKE_USER", "SNOWFLAKE_DATABASE", "SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH"):
        assert name in message
    assert "acme-prod" not in message


def test_table_name_is_validated() -> None:
    with pytest.raises(ValueError):
        SnowflakeMemoryStore(SNOWFLAKE_ARGS, table="MEMORIES; DROP TABLE X")
    SnowflakeMemoryStore(SNOWFLAKE_ARGS, table="SOPHIA.MEMORY.MEMORIES")


@pytest.fixture
def connections(fake_snowflake: None, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection the store opens (fakesnow's connect, recorded)."""
    made: list[Any] = []
    connect: Callable[..., Any] = snowflake.connector.connect

    def recording(**kwargs: Any) -> Any:
        conn = connect(**kwargs)
        made.append(conn)
        return conn

    monkeypatch.setattr(snowflake.connector, "connect", recording)
    return made


async def test_pool_replaces_a_killed_connection(connections: list[Any], tmp_path: Path) -> None:
    backend = Backend("snowflake", tmp_path)
    store = backend.make()
    assert isinstance(store, SnowflakeMemoryStore)
    await store.start()
    try:
        await store.insert([Memory("a", "slack_data", "fact", None)])
        killed = list(connections)
        for conn in killed:
            conn.close()  # behind the pool's back, as a dropped session would
        backend.pool_clock.now += SMALL_POOL.health_check_interval_s + 1

        assert await store.count() == 1  # served by a fresh connection, not a dead one
        stats = store.pool_stats()
        assert stats is not None
        assert stats.replaced_dead_total == len(killed)
        assert stats.opened_total == len(killed) + 1
        assert stats.open == 1 and stats.in_use == 0
    finally:
        await store.close()
    assert all(conn.is_closed() for conn in connections)


async def test_a_replaced_connection_is_a_counted_recovery_and_select_1_answers(
    connections: list[Any], tmp_path: Path
) -> None:
    backend = Backend("snowflake", tmp_path)
    store = backend.make()
    await store.start()
    actions = RecoveryActions()
    actions.add_source(pool_reconnects(store))
    try:
        await store.ping()  # SELECT 1 through the pool: the health check
        assert actions.totals() == {
            ("memory_store_reconnect", "ok"): 0,
            ("memory_store_reconnect", "failed"): 0,
        }
        for conn in list(connections):
            conn.close()  # the session dropped behind the pool's back
        backend.pool_clock.now += SMALL_POOL.health_check_interval_s + 1
        await store.ping()  # checked before use, found dead, replaced: the ping still answers
        assert actions.totals()[("memory_store_reconnect", "ok")] == len(connections) - 1 >= 1
        assert actions.totals()[("memory_store_reconnect", "failed")] == 0
    finally:
        await store.close()


async def test_pool_efficiency_of_a_quiet_store(fake_snowflake: None, tmp_path: Path) -> None:
    store = Backend("snowflake", tmp_path).make()
    assert isinstance(store, SnowflakeMemoryStore)
    assert store.pool_stats() is None
    await store.start()
    try:
        for i in range(9):
            await store.insert([Memory(f"m{i}", "slack_data", "fact", None)])
        stats = store.pool_stats()
        assert stats is not None
        # The migration and nine inserts, one after another: all served by the idle connection.
        assert (stats.acquisitions_total, stats.served_idle_total, stats.efficiency) == (10, 10, 1.0)
    finally:
        await store.close()


class NoOwnership:
    """A connection whose role may not set clustering keys (it does not own the table)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self) -> Any:
        cur = self._conn.cursor()
        execute = cur.execute

        def refusing(sql: str, *args: Any) -> Any:
            if "CLUSTER BY" in sql:
                raise snowflake.connector.errors.ProgrammingError(
                    msg="Insufficient privileges to operate on table 'MEMORIES'", errno=3001
                )
            return execute(sql, *args)

        cur.execute = refusing
        return cur

    def close(self) -> None:
        self._conn.close()


async def test_a_clustering_key_refused_is_skipped_with_a_warning(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # fakesnow accepts (and ignores) ALTER TABLE ... CLUSTER BY; a real account refuses it to a
    # role without OWNERSHIP of the table.
    connect: Callable[..., Any] = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: NoOwnership(connect(**kw)))
    store = Backend("snowflake", tmp_path).make()
    await store.start()
    try:
        assert "cannot set the clustering key of MEMORIES" in caplog.text
        await store.insert([Memory("a", "slack_data", "fact", None)])
        assert await store.count() == 1
    finally:
        await store.close()
