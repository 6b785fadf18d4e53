"""What only the Snowflake store has: settings from the environment and its connection pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector

from gateway.errors import InvalidRequest, ServiceUnavailable, StartupError
from gateway.memory.records import Memory
from gateway.memory.snowflake_store import SnowflakeMemoryStore, login_refused, snowflake_settings_from_env
from gateway.memory.sql import encode_embedding
from gateway.observability.metrics import RecoveryActions
from gateway.policy.model import MemoryPool
from gateway.service.recovery import pool_reconnects
from tests.integration.memory.conftest import SMALL_POOL, SNOWFLAKE_ARGS, START, Backend

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


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SNOWFLAKE_ACCOUNT", "https://xy12345.eu-west-1.snowflakecomputing.com"),
        ("SNOWFLAKE_ACCOUNT", "xy12345.snowflakecomputing.com/"),
        ("SNOWFLAKE_ACCOUNT", "acme-prod\n"),  # read from a file with its line break
        ("SNOWFLAKE_WAREHOUSE", "AI WH"),
        ("SNOWFLAKE_WAREHOUSE", "AI_WH; DROP TABLE MEMORIES"),
        ("SNOWFLAKE_DATABASE", "1SOPHIA"),
        ("SNOWFLAKE_ROLE", '"unterminated'),
    ],
)
def test_settings_refuse_a_url_for_the_account_and_a_name_that_is_no_identifier(
    variable: str, value: str
) -> None:
    with pytest.raises(ValueError) as exc:
        snowflake_settings_from_env(ENV | {variable: value})
    message = str(exc.value)
    assert variable in message and value not in message and "hunter2" not in message


def test_settings_take_quoted_and_dollar_identifiers_and_account_locators() -> None:
    env = ENV | {
        "SNOWFLAKE_ACCOUNT": "xy12345.eu-west-1.aws",
        "SNOWFLAKE_WAREHOUSE": '"My ""Big"" WH"',
        "SNOWFLAKE_SCHEMA": "MEMORY$2",
    }
    args = snowflake_settings_from_env(env)
    assert (args["account"], args["warehouse"], args["schema"]) == (
        "xy12345.eu-west-1.aws",
        '"My ""Big"" WH"',
        "MEMORY$2",
    )


def test_a_driver_error_is_rebuilt_without_secrets_whatever_its_class() -> None:
    store = SnowflakeMemoryStore(snowflake_settings_from_env(ENV))
    errors = snowflake.connector.errors
    leaky = "login failed (https://acme-prod.snowflakecomputing.com/session?token=abc) hunter2 password=x1"
    for exc in (
        errors.OperationalError(msg=leaky, errno=250001),
        errors.ProgrammingError(msg=leaky, errno=606, sqlstate="57P03"),
        errors.MissingDependencyError(leaky),  # built from a dependency name, not a message
    ):
        redacted = store._redact(exc)
        assert isinstance(redacted, errors.Error) and isinstance(exc, type(redacted))
        assert "hunter2" not in str(redacted) and "token=abc" not in str(redacted)
        assert "password=x1" not in str(redacted) and "login failed" in str(redacted)
        assert (redacted.errno, redacted.sqlstate) == (exc.errno, exc.sqlstate)


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


# ----- inserts are idempotent on id (MERGE ... WHEN NOT MATCHED THEN INSERT)

VECTOR = (0.5, -0.25, 1.0, 0.125)  # float32-exact


def fact(mid: str, content: str | None = None) -> Memory:
    return Memory(id=mid, namespace="ns", content=content or f"fact {mid}", embedding=VECTOR)


class Cursor:
    """The store's cursor (the ``Cursor`` Protocol) with a hook before each statement that
    writes new memory rows: ``before(sql)`` may run another connection's write, or say the
    statement is to run twice (a retry after its answer was lost)."""

    def __init__(self, cur: Any, before: Callable[[str], bool]) -> None:
        self.cur = cur
        self.before = before
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)

    def execute(self, sql: str, params: Any = ()) -> object:
        if sql.upper().startswith(("INSERT INTO MEMORIES ", "MERGE INTO MEMORIES ")):
            self.writes.append(sql.split(" ", 1)[0])
            if self.before(sql):
                self.cur.execute(sql, params)
        return self.cur.execute(sql, params)


def other_process_writes(*rows: tuple[str, str]) -> None:
    """Another connection commits memories (id, content) of namespace 'ns' with ``VECTOR``."""
    conn = snowflake.connector.connect(**SNOWFLAKE_ARGS, paramstyle="qmark")
    try:
        conn.cursor().executemany(
            "INSERT INTO memories (id, namespace, content, embedding, metadata) VALUES (?, 'ns', ?, ?, '{}')",
            [(mid, content, encode_embedding(VECTOR)) for mid, content in rows],
        )
    finally:
        conn.close()


async def rows_by_id(store: SnowflakeMemoryStore) -> dict[str, int]:
    def count(cur: Any) -> dict[str, int]:
        cur.execute("SELECT id, COUNT(*) FROM memories GROUP BY id")
        return {mid: int(n) for mid, n in cur.fetchall()}

    return await store._run("count", count)


async def insert_through(
    store: SnowflakeMemoryStore, cursor_of: Callable[[Any], Cursor], batch: list[Memory]
) -> Cursor:
    """``store``'s insert of ``batch``, on its cursor wrapped by ``cursor_of``; that wrapper."""
    made: list[Cursor] = []

    def op(cur: Any) -> None:
        made.append(cursor_of(cur))
        store._q.insert(made[-1], batch, START)  # type: ignore[arg-type]

    await store._run("insert", op)
    return made[0]


async def test_a_batch_whose_write_runs_twice_is_stored_once(fake_snowflake: None) -> None:
    """The write statement sent again (the connector's retry after a lost answer) inserts
    nothing the second time: one row per id, no error, each id once in the change log."""
    store = SnowflakeMemoryStore(SNOWFLAKE_ARGS, SMALL_POOL, clock=lambda: START, upkeep=False)
    await store.start()
    try:
        batch = [fact("a"), fact("b"), fact("c")]
        cur = await insert_through(store, lambda c: Cursor(c, lambda sql: True), batch)
        assert cur.writes == ["MERGE"]  # one statement for the batch, run twice
        assert await rows_by_id(store) == {"a": 1, "b": 1, "c": 1}
        assert sorted(i for _, i, *_ in await store.changes_after(0, 100)) == ["a", "b", "c"]
        stored = {m.id: m for m in await store.get_many(["a", "b", "c"])}
        assert stored["b"].content == "fact b" and stored["b"].embedding == VECTOR
    finally:
        await store.close()


async def test_an_id_taken_before_the_write_is_never_a_second_row(fake_snowflake: None) -> None:
    """Another writer takes ids between the check and the write: a row that is this very memory
    (the same file ingested by two replicas at once) is no error; one with other content is
    ``memory_exists`` naming it, left as it is; the rest of the batch is stored once and
    logged. Snowflake does not enforce the key, so a plain INSERT would have added second rows
    (fakesnow's DuckDB would refuse them: the MERGE never tries)."""
    store = SnowflakeMemoryStore(SNOWFLAKE_ARGS, SMALL_POOL, clock=lambda: START, upkeep=False)
    await store.start()
    try:

        def twin(sql: str) -> bool:
            other_process_writes(("same", "fact same"))
            return False

        await insert_through(store, lambda c: Cursor(c, twin), [fact("one"), fact("same")])
        assert await rows_by_id(store) == {"one": 1, "same": 1}

        def squatter(sql: str) -> bool:
            other_process_writes(("taken", "theirs"))
            return False

        with pytest.raises(InvalidRequest) as exc:
            await insert_through(store, lambda c: Cursor(c, squatter), [fact("x"), fact("taken"), fact("y")])
        assert (exc.value.code, exc.value.param) == ("memory_exists", "id") and "'taken'" in exc.value.message
        assert await rows_by_id(store) == {"one": 1, "same": 1, "x": 1, "taken": 1, "y": 1}
        assert (await store.get("taken")).content == "theirs"  # type: ignore[union-attr]
        logged = [i for _, i, *_ in await store.changes_after(0, 100)]
        assert "x" in logged and "y" in logged and "taken" not in logged
    finally:
        await store.close()


class NoWarehouse:
    """A connection whose session has no usable warehouse while ``gone``: every statement but
    ``SELECT 1`` (which Snowflake answers without one) is refused with 000606 / 57P03."""

    gone = False

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self) -> Any:
        cur = self._conn.cursor()
        execute = cur.execute

        def refusing(sql: str, *args: Any) -> Any:
            if NoWarehouse.gone and sql != "SELECT 1":
                raise snowflake.connector.errors.ProgrammingError(
                    msg="No active warehouse selected in the current session. token=SECRET-0",
                    errno=606,
                    sqlstate="57P03",
                )
            return execute(sql, *args)

        cur.execute = refusing
        return cur

    def close(self) -> None:
        self._conn.close()


async def test_the_health_check_says_the_warehouse_is_missing_once_an_operation_is_refused(
    fake_snowflake: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``SELECT 1`` needs no warehouse, so it answers while every memory operation is a 503:
    ``ping`` (the health check) says degraded, naming SNOWFLAKE_WAREHOUSE and what Snowflake
    said (masked), from the operations refused (no statement added); up again once one runs.
    Before: ``ping`` said nothing (memory:store up)."""
    connect: Callable[..., Any] = snowflake.connector.connect
    monkeypatch.setattr(snowflake.connector, "connect", lambda **kw: NoWarehouse(connect(**kw)))
    monkeypatch.setattr(NoWarehouse, "gone", False)
    store = Backend("snowflake", tmp_path).make()
    await store.start()
    try:
        await store.insert([Memory("a", "slack_data", "fact", None)])
        assert await store.ping() is None
        NoWarehouse.gone = True
        assert await store.ping() is None  # nothing refused yet: nothing known
        with pytest.raises(ServiceUnavailable):
            await store.get("a")
        warning = await store.ping()
        assert warning is not None and "SNOWFLAKE_WAREHOUSE" in warning
        assert "000606 (57P03): No active warehouse" in warning and "SECRET-0" not in warning
        assert await store.ping() == warning  # SELECT 1 answering clears nothing
        NoWarehouse.gone = False
        assert await store.get("a") is not None
        assert await store.ping() is None
    finally:
        await store.close()


class RefusingLogins:
    """``snowflake.connector.connect`` answering as Snowflake does a wrong secret while
    ``refusing``: ``DatabaseError`` 390100 / 28000 (connector 4.x), the password in its text as
    a connector's message may carry one; every attempt counted, refused or not."""

    def __init__(self, connect: Callable[..., Any]) -> None:
        self._connect = connect
        self.refusing = False
        self.attempts = 0
        self.made: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.refusing:
            raise snowflake.connector.errors.DatabaseError(
                msg=f"Failed to connect to DB: fake.snowflakecomputing.com:443. Incorrect username or "
                f"password was specified. {kwargs.get('password')}",
                errno=390100,
                sqlstate="28000",
            )
        conn = self._connect(**kwargs)
        self.made.append(conn)
        return conn


@pytest.fixture
def logins(fake_snowflake: None, monkeypatch: pytest.MonkeyPatch) -> RefusingLogins:
    refusing = RefusingLogins(snowflake.connector.connect)
    monkeypatch.setattr(snowflake.connector, "connect", refusing)
    return refusing


async def test_a_refused_login_at_start_is_tried_once(logins: RefusingLogins) -> None:
    """Snowflake locks a user after 5 failed logins in a row: a start whose login is refused
    tries once (not the pool's 3 attempts of a network failure, not once per ``min_size``
    connection) and says which settings. Before: 3 attempts for one connection, 9 for three."""
    logins.refusing = True
    store = SnowflakeMemoryStore(
        SNOWFLAKE_ARGS, MemoryPool(min_size=3, max_size=4, connect_timeout_s=10), upkeep=False
    )
    with pytest.raises(StartupError) as exc:
        await store.start()
    assert logins.attempts == 1
    said = str(exc.value)
    assert "390100 (28000)" in said and "SNOWFLAKE_USER and SNOWFLAKE_PASSWORD" in said
    assert SNOWFLAKE_ARGS["password"] not in said


async def test_while_serving_a_refused_login_pauses_new_logins_and_health_says_so(
    logins: RefusingLogins, tmp_path: Path
) -> None:
    """The secret stops working while serving (rotated in Snowflake, not in the gateway): the
    first connection needed is refused once, then no login is tried for 30 s (60 s after a
    second refusal in a row, ...): requests are 503s at once, the health check names the
    settings (never the secret). A login that succeeds again ends the pause. Before: every
    request tried three logins."""
    backend = Backend("snowflake", tmp_path)
    store = backend.make()
    assert isinstance(store, SnowflakeMemoryStore)
    await store.start()
    try:
        await store.insert([Memory("a", "slack_data", "fact", None)])
        assert logins.attempts == 1
        for conn in logins.made:
            conn.close()  # the session ended behind the pool's back; a new login is needed
        backend.pool_clock.now += SMALL_POOL.health_check_interval_s + 1
        logins.refusing = True

        with pytest.raises(ServiceUnavailable):
            await store.get("a")
        assert logins.attempts == 2  # refused once, not retried
        for _ in range(5):
            with pytest.raises(ServiceUnavailable):
                await store.get("a")
        with pytest.raises(ServiceUnavailable) as health:
            await store.ping()
        assert logins.attempts == 2  # no login within the pause
        said = health.value.message
        assert "refused the login" in said and "390100 (28000)" in said and "no new login for 30 s" in said
        assert "SNOWFLAKE_USER and SNOWFLAKE_PASSWORD" in said and SNOWFLAKE_ARGS["password"] not in said

        backend.pool_clock.now += 30
        with pytest.raises(ServiceUnavailable):
            await store.get("a")
        assert logins.attempts == 3  # the pause over: one login, refused again
        backend.pool_clock.now += 30
        with pytest.raises(ServiceUnavailable):
            await store.get("a")
        assert logins.attempts == 3  # the second pause is 60 s
        backend.pool_clock.now += 30
        logins.refusing = False
        assert await store.get("a") is not None
        assert logins.attempts == 4
        assert await store.ping() is None  # up again
        stats = store.pool_stats()
        assert stats is not None and stats.logins_refused_total == 2
    finally:
        await store.close()


def test_which_connect_errors_are_a_login_refused() -> None:
    """The table in snowflake_store.py: Snowflake's answer "no" (never retried) against the
    network's failures (retried as before)."""
    errors = snowflake.connector.errors
    refused = [
        errors.DatabaseError(
            msg="Incorrect username or password was specified.", errno=390100, sqlstate="28000"
        ),
        # connectors before 4.x: the answer's text behind the network's errno and sqlstate
        errors.DatabaseError(
            msg="Failed to connect to DB: x:443. Incorrect username", errno=250001, sqlstate="08001"
        ),
        errors.DatabaseError(msg="JWT token is invalid.", errno=390144, sqlstate="08001"),
        errors.ProgrammingError(msg="JWT token fingerprint mismatch", errno=394304),
        errors.OperationalError(msg="a credential code whatever the class", errno=390100),
        errors.DatabaseError(msg="User temporarily locked.", errno=390102, sqlstate="08004"),
    ]
    retried = [
        errors.OperationalError(
            msg="Could not connect to Snowflake backend after 2 attempt(s).", errno=250001
        ),
        errors.OperationalError(msg="Failed to execute request", errno=250003),
        errors.ForbiddenError(errno=403),  # HTTP 403 at login: the account name or a network policy
        errors.ServiceUnavailableError(errno=503),
        errors.InterfaceError(msg="connection closed"),
        OSError("Name or service not known"),
    ]
    assert [login_refused(e) for e in refused] == [True] * len(refused)
    assert [login_refused(e) for e in retried] == [False] * len(retried)


async def test_open_connections_serve_while_logins_are_refused_and_health_is_degraded(
    logins: RefusingLogins, tmp_path: Path
) -> None:
    """A password changed in Snowflake leaves open sessions alive: they keep serving, a request
    needing one more connection is a 503 after one refused login, and the health check (answered
    by an open connection) is degraded, naming the settings. Before: no degraded state, and the
    second request tried three logins."""
    backend = Backend("snowflake", tmp_path)
    store = backend.make()
    await store.start()
    try:
        await store.insert([Memory("a", "slack_data", "fact", None)])
        logins.refusing = True
        first, second = await asyncio.gather(store.get("a"), store.get("a"), return_exceptions=True)
        assert isinstance(first, Memory) and isinstance(second, ServiceUnavailable)
        assert logins.attempts == 2
        warning = await store.ping()
        assert warning is not None and "refused the login" in warning and "no new login for 30 s" in warning
        assert "SNOWFLAKE_PASSWORD" in warning and SNOWFLAKE_ARGS["password"] not in warning
        assert isinstance(await store.get("a"), Memory)  # the open connection serves
        assert logins.attempts == 2
    finally:
        await store.close()
