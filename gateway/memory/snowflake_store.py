"""``SnowflakeMemoryStore``: memories in a Snowflake table, through a pool of connector connections.

The statements are ``sql.py``'s, bound server-side (``paramstyle="qmark"``); every connector
call runs on the pool's threads (``pool.py``). The same code runs against a real account and,
in the tests, against fakesnow (Snowflake SQL on DuckDB, patched in for
``snowflake.connector.connect``).

Migrations are idempotent and cheap when nothing changed: ``CREATE TABLE IF NOT EXISTS``; one
``SELECT * ... LIMIT 0`` lists the table's columns and each missing one is added with
``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` (the seed's metadata columns; the guard keeps two
replicas starting at once from colliding); then the clustering key ``(namespace,
last_updated)``, which suits retention and per-namespace scans. Snowflake has no secondary
indexes on standard tables, so the key stands in for the SQLite store's indexes. Setting it
needs the table's OWNERSHIP; a role without it (or an engine without clustering) gets a
warning and the store works unclustered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import snowflake.connector
from snowflake.connector import SnowflakeConnection
from snowflake.connector.errors import DatabaseError, OperationalError, ProgrammingError
from snowflake.connector.errors import Error as SnowflakeError

from gateway.errors import ServiceUnavailable, StartupError
from gateway.memory.pool import ConnectionPool, PoolStats
from gateway.memory.sql import COLUMNS, CORE_COLUMNS, SNOWFLAKE, Cursor, MemoryQueries, utc_now
from gateway.memory.sql_store import ObserveHook, SQLMemoryStore, select_one
from gateway.policy.model import MemoryPool

if TYPE_CHECKING:
    from gateway.memory.records import MemoryStore

T = TypeVar("T")

log = logging.getLogger("gateway.memory.snowflake")

# TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE, unquoted (so Snowflake upper-cases it).
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
# SNOWFLAKE_* variable -> connect() argument. Values never reach a log line.
_ENV_ARGS = {
    "SNOWFLAKE_ACCOUNT": "account",
    "SNOWFLAKE_USER": "user",
    "SNOWFLAKE_PASSWORD": "password",
    "SNOWFLAKE_PRIVATE_KEY_PATH": "private_key_file",
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "private_key_file_pwd",
    "SNOWFLAKE_WAREHOUSE": "warehouse",
    "SNOWFLAKE_DATABASE": "database",
    "SNOWFLAKE_SCHEMA": "schema",
    "SNOWFLAKE_ROLE": "role",
}
_REQUIRED = ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_DATABASE", "SNOWFLAKE_SCHEMA")
# Object names the connector sends at login: an unquoted identifier or a double-quoted one.
_IDENTIFIERS = ("SNOWFLAKE_WAREHOUSE", "SNOWFLAKE_DATABASE", "SNOWFLAKE_SCHEMA", "SNOWFLAKE_ROLE")
_IDENTIFIER = re.compile(r'^([A-Za-z_][A-Za-z0-9_$]{0,254}|"([^"]|""){1,255}")$')
# connect() arguments whose values are secrets: never in a message, a log line or a traceback.
_SECRET_ARGS = ("password", "private_key_file_pwd", "token", "passcode")
# What a driver's text may carry beyond the configured secrets: a URL's query (login requests
# carry tokens there) and ``name=value`` secrets written out.
_URL_QUERY = re.compile(r"(https?://[^\s?#]+)[?#][^\s)'\"]*")
_NAMED_SECRET = re.compile(r"(?i)\b(token|password|passcode|secret|passphrase)=[^\s&)'\",;]+")
# ProgrammingError sqlstate classes that are the account's state, not a statement's fault: 57
# (operator intervention: no active warehouse 57P03, statement timed out or cancelled 57014),
# 08 (connection), 53 / 54 (resources, limits), 58 and XX (system): a 503, as an outage is.
_UNAVAILABLE_SQLSTATES = ("57", "08", "53", "54", "58", "XX")
# No usable warehouse (000606, 57P03): misnamed, dropped, no USAGE for the role, suspended and not
# resumed. ``SELECT 1`` needs none, so the health check learns it from the operations refused.
_NO_WAREHOUSE_ERRNO = 606
_NO_WAREHOUSE_SQLSTATE = "57P03"
# A login Snowflake answered with a refusal: never retried (``login_refused``). Snowflake counts
# failed logins and locks the user after 5 in a row, for 15 minutes (password policies'
# PASSWORD_MAX_RETRIES and PASSWORD_LOCKOUT_TIME_MINS defaults; ALTER USER ... SET
# MINS_TO_UNLOCK = 0 lifts it), so a retried wrong secret locks the service user of every
# replica. The connector raises the login answer's code as the errno, as ``DatabaseError``
# (never ``OperationalError``, which is its network failure: 250001 "Could not connect to
# Snowflake backend after N attempt(s)", 250003), with sqlstate 28000 for the codes of its
# CREDENTIAL_REJECTION_GS_CODES (connector 4.x; 08001 before):
#   390100  incorrect username or password          (password)
#   390144  JWT token invalid                       (key pair: the key is not the user's)
#   394300-394306  JWT invalid, expired, not yet valid, bad expiry, key fingerprint mismatch,
#           algorithm, format                       (key pair)
# and as DatabaseError too, codes the connector does not list (a locked or disabled user, a
# role not granted; older connectors raised 250001 / 08001 with "Incorrect username or
# password was specified." in the text). The class decides; the codes and 28000 decide whatever
# the class (a connector that changes its classes still does not hammer a refusing login).
_CREDENTIAL_ERRNOS = frozenset({390100, 390144, *range(394300, 394307)})
_CREDENTIAL_SQLSTATE = "28000"
_CREDENTIAL_SETTINGS = "SNOWFLAKE_USER and SNOWFLAKE_PASSWORD (or SNOWFLAKE_PRIVATE_KEY_PATH)"
# The migration's statements besides one per added column (_migrate): three tables, the counter's
# seed, the jobs table, the column read and the clustering key. Each is one operation of its own.
_MIGRATION_STATEMENTS = 7
_REFUSAL_BACKOFF_S = 30.0  # the first pause after a refused login while serving, doubling
_REFUSAL_BACKOFF_MAX_S = 300.0  # to 5 minutes: fewer than 5 logins per replica in Snowflake's 15


def login_refused(exc: Exception) -> bool:
    """Whether ``exc``, raised by ``connect()``, is Snowflake refusing the login (credentials,
    a locked or disabled user): the answer of the account, not the network's silence."""
    if not isinstance(exc, SnowflakeError):
        return False
    if exc.errno in _CREDENTIAL_ERRNOS or exc.sqlstate == _CREDENTIAL_SQLSTATE:
        return True
    return isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError)


def snowflake_settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``snowflake.connector.connect`` arguments from ``SNOWFLAKE_*`` variables.

    Needed: ACCOUNT, USER, DATABASE, SCHEMA, and PASSWORD or PRIVATE_KEY_PATH (key-pair auth,
    with PRIVATE_KEY_PASSPHRASE when the key is encrypted); WAREHOUSE and ROLE are optional (the
    user's defaults apply). Raises ``ValueError`` naming the missing variables, never a value.
    """
    missing = [name for name in _REQUIRED if not env.get(name)]
    if not env.get("SNOWFLAKE_PASSWORD") and not env.get("SNOWFLAKE_PRIVATE_KEY_PATH"):
        missing.append("SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH")
    if missing:
        raise ValueError(f"the Snowflake memory backend needs {', '.join(missing)} in the environment")
    account = env["SNOWFLAKE_ACCOUNT"]
    if "/" in account or ":" in account or "@" in account or account != account.strip():
        # A URL pasted whole (https://xy12345.eu-west-1.snowflakecomputing.com) made the
        # connector try a host of that text: retries, then a DNS error about no such host.
        raise ValueError(
            "SNOWFLAKE_ACCOUNT must be the account identifier alone (myorg-myaccount, or a locator "
            "such as xy12345.eu-west-1): not a URL, no spaces or line breaks"
        )
    bad = [name for name in _IDENTIFIERS if env.get(name) and not _IDENTIFIER.match(env[name])]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} must be a Snowflake identifier: letters, digits, _ and $ "
            '(not starting with a digit or $), or one in double quotes ("My Warehouse")'
        )
    return {arg: env[name] for name, arg in _ENV_ARGS.items() if env.get(name)}


def check_private_key(connect_args: Mapping[str, Any]) -> None:
    """Read the key-pair file as the connector will (PEM, decrypted with the passphrase), so a
    missing file, a wrong or missing passphrase or a file that is no key is a ``ValueError``
    naming the variable; the connector raised these as ``FileNotFoundError``, ``ValueError`` and
    ``TypeError`` from inside ``connect()``: a traceback, or retries then "no answer". Never
    says the passphrase."""
    path = connect_args.get("private_key_file")
    if not path:
        return
    from cryptography.hazmat.primitives import serialization

    passphrase = connect_args.get("private_key_file_pwd")
    try:
        with open(os.path.expanduser(path), "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(
            f"SNOWFLAKE_PRIVATE_KEY_PATH cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
        ) from None
    try:
        serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        if passphrase:
            raise ValueError(
                "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE is set but the key in SNOWFLAKE_PRIVATE_KEY_PATH "
                "is not encrypted: unset it"
            ) from None
        raise ValueError(
            "the key in SNOWFLAKE_PRIVATE_KEY_PATH is encrypted: set SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"
        ) from None
    except ValueError:
        raise ValueError(
            "SNOWFLAKE_PRIVATE_KEY_PATH is not a PEM private key, or SNOWFLAKE_PRIVATE_KEY_PASSPHRASE "
            "does not decrypt it"
        ) from None


class SnowflakeMemoryStore(SQLMemoryStore):
    """Memories in ``table`` of the account ``connect_args`` names, over a ``ConnectionPool``.

    ``observe`` is called with each operation's name and duration in seconds; ``pool_stats()``
    gives the pool's counters and efficiency for export. ``pool_clock`` (monotonic seconds) is
    the pool's idle/health clock, injectable for tests.
    """

    def __init__(
        self,
        connect_args: Mapping[str, Any],
        pool: MemoryPool | None = None,
        *,
        table: str = "MEMORIES",
        clock: Callable[[], datetime] = utc_now,
        observe: ObserveHook | None = None,
        pool_clock: Callable[[], float] = time.monotonic,
        cluster: bool = True,
        upkeep: bool = True,
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(
                f"table must be an unquoted identifier (optionally DB.SCHEMA. qualified), not {table!r}"
            )
        super().__init__(MemoryQueries(table, SNOWFLAKE), clock, observe)
        self.table = table
        self._connect_args = dict(connect_args)
        self._settings = pool or MemoryPool()
        self._pool_clock = pool_clock
        self._cluster = cluster
        self._upkeep = upkeep
        self._pool: ConnectionPool[SnowflakeConnection] | None = None
        # What Snowflake said when it last refused an operation for want of a warehouse; None
        # once an operation that needs one succeeds again (``degraded``).
        self._no_warehouse: str | None = None

    async def start(self) -> None:
        """Open the pool's ``min_size`` connections and migrate the table; a second call does nothing."""
        if self._pool is not None:
            return
        pool = ConnectionPool(
            self._connect,
            self._settings,
            errors=(SnowflakeError, OSError),
            clock=self._pool_clock,
            refused=login_refused,
            refusal_backoff_s=_REFUSAL_BACKOFF_S,
            refusal_backoff_max_s=_REFUSAL_BACKOFF_MAX_S,
            name="snowflake",
        )
        statements = _MIGRATION_STATEMENTS + sum(c.name not in CORE_COLUMNS for c in COLUMNS)
        migration_s = self._settings.statement_timeout_s * statements
        try:
            await pool.start(upkeep=self._upkeep)
            # statement_timeout_s bounds one operation; the migration is several statements in a
            # row, each bounded by it in the account (the session's STATEMENT_TIMEOUT_IN_SECONDS).
            async with asyncio.timeout(migration_s):
                await pool.run(lambda conn: self._redacting(self._migrate, conn))
        except TimeoutError:
            await pool.close()
            raise StartupError(
                f"the Snowflake memory store did not prepare table {self.table} within "
                f"{migration_s:g} s ({statements} statements of memory.pool.statement_timeout_s "
                f"{self._settings.statement_timeout_s:g} s each); check SNOWFLAKE_WAREHOUSE "
                "(running, not queueing every query)"
            ) from None
        except ServiceUnavailable as exc:  # every connect failed: retried, or refused (at once)
            await pool.close()
            cause = exc.__cause__
            if isinstance(cause, SnowflakeError):
                settings = _settings_for(cause)
                raise StartupError(
                    f"cannot connect to the Snowflake memory store ({type(cause).__name__}: "
                    f"{_one_line(cause)}); check {settings}"
                ) from None
            if isinstance(cause, OSError):  # the network (refused, unreachable, no such host)
                raise StartupError(
                    f"cannot connect to the Snowflake memory store ({type(cause).__name__}: "
                    f"{' '.join(str(cause).split())[:300]}); check SNOWFLAKE_ACCOUNT and the network to it"
                ) from None
            raise StartupError(
                f"cannot connect to the Snowflake memory store (no answer within "
                f"{self._settings.connect_timeout_s:g} s, memory.pool.connect_timeout_s); "
                "check SNOWFLAKE_ACCOUNT and the network to it"
            ) from None
        except SnowflakeError as exc:  # connected, then the migration was refused
            await pool.close()
            raise StartupError(
                f"the Snowflake memory store refused to prepare table {self.table} "
                f"({type(exc).__name__}: {_one_line(exc)}); check SNOWFLAKE_DATABASE, "
                "SNOWFLAKE_SCHEMA, SNOWFLAKE_WAREHOUSE and SNOWFLAKE_ROLE (its privileges)"
            ) from None
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def pool_stats(self) -> PoolStats | None:
        """The connection pool's figures (None before ``start``)."""
        return None if self._pool is None else self._pool.stats()

    def _connect(self) -> SnowflakeConnection:
        # Called as snowflake.connector.connect (not imported by name) so fakesnow can patch it.
        try:
            return snowflake.connector.connect(
                **self._connect_args,
                paramstyle="qmark",
                login_timeout=math.ceil(self._settings.connect_timeout_s),
                # The account cancels a statement the gateway stopped waiting for (_execute),
                # so its connection comes back instead of waiting on a queued warehouse.
                # A write waiting for the change log's counter (another replica numbering its
                # changes) gives up as a statement does, not after the default 12 hours.
                session_parameters={
                    "STATEMENT_TIMEOUT_IN_SECONDS": math.ceil(self._settings.statement_timeout_s),
                    "LOCK_TIMEOUT": math.ceil(self._settings.statement_timeout_s),
                },
            )
        except SnowflakeError as exc:
            raise self._redact(exc) from None

    def _redact(self, exc: SnowflakeError) -> SnowflakeError:
        """``exc`` again (same class, errno, sqlstate) with no secret in its text: the connector's
        messages may hold a login URL's query or a value it was given, and this one is what the
        pool logs, a traceback shows and a start-up error says."""
        text = exc.raw_msg if isinstance(exc.raw_msg, str) else str(exc)
        for arg in _SECRET_ARGS:
            value = self._connect_args.get(arg)
            if isinstance(value, str) and value:
                text = text.replace(value, "***")
        text = _NAMED_SECRET.sub(r"\1=***", _URL_QUERY.sub(r"\1?***", text))
        for cls in type(exc).__mro__:  # the nearest class built from a message (not every one is)
            if isinstance(cls, type) and issubclass(cls, SnowflakeError):
                try:
                    return cls(msg=text, errno=exc.errno, sqlstate=exc.sqlstate, sfqid=exc.sfqid)
                except TypeError:
                    continue
        return SnowflakeError(msg=text, errno=exc.errno, sqlstate=exc.sqlstate)

    def _migrate(self, conn: SnowflakeConnection) -> None:
        cur = conn.cursor()
        try:
            cur.execute(self._q.create_table())
            cur.execute(self._q.create_changes_table())
            cur.execute(self._q.create_counter_table())  # the log's numbering (MemoryQueries.log_changes)
            cur.execute(self._q.seed_counter())
            cur.execute(self._jobs.create_table())
            cur.execute(f"SELECT * FROM {self.table} LIMIT 0")
            present = {column.name.lower() for column in cur.description}
            for column in COLUMNS:
                if column.name in present or column.name in CORE_COLUMNS:
                    continue
                log.info("memory store: adding column %s to %s", column.name, self.table)
                cur.execute(self._q.add_column(column, if_not_exists=True))
            if self._cluster:
                self._set_clustering_key(cur)
        finally:
            cur.close()

    def _set_clustering_key(self, cur: Cursor) -> None:
        try:
            cur.execute(f"ALTER TABLE {self.table} CLUSTER BY (namespace, last_updated)")
        except ProgrammingError as exc:
            log.warning(
                "memory store: cannot set the clustering key of %s (%s); it works unclustered",
                self.table,
                exc.msg,
            )

    def _redacting(self, fn: Callable[[SnowflakeConnection], T], conn: SnowflakeConnection) -> T:
        try:
            return fn(conn)
        except SnowflakeError as exc:
            raise self._redact(exc) from None

    async def _execute(self, op: Callable[[Cursor], T], *, write: bool = False) -> T:
        # A write is one transaction (``MemoryQueries.transaction``): the memory rows and their
        # change-log entries commit together or not at all. A read is a statement at a time.
        pool = self._pool
        if pool is None:
            raise ServiceUnavailable("The memory store is not open.", code="memory_store_unavailable")
        bound_s = self._settings.statement_timeout_s
        unit: Callable[[Cursor], T] = (
            (lambda cur: self._q.transaction(cur, op, budget_s=bound_s)) if write else op
        )
        try:
            async with asyncio.timeout(bound_s):
                result = await pool.run(lambda conn: self._redacting(lambda c: _on_cursor(c, unit), conn))
        except TimeoutError:
            # The statement goes on in its thread until the account cancels it (the session's
            # STATEMENT_TIMEOUT_IN_SECONDS); its connection comes back to the pool then.
            log.warning("memory store: an operation had no answer within %g s", bound_s)
            raise ServiceUnavailable(
                f"The memory store did not answer within {bound_s:g} s.", code="memory_store_unavailable"
            ) from None
        except ProgrammingError as exc:
            if not (exc.sqlstate or "").startswith(_UNAVAILABLE_SQLSTATES):
                raise  # a statement the database refused: a bug, not an outage
            if exc.errno == _NO_WAREHOUSE_ERRNO or exc.sqlstate == _NO_WAREHOUSE_SQLSTATE:
                self._no_warehouse = _one_line(exc)
            raise _unavailable(exc) from exc
        except SnowflakeError as exc:
            raise _unavailable(exc) from exc
        if op is not select_one:  # it needed a warehouse (SELECT 1 does not) and had one
            self._no_warehouse = None
        return result

    async def ping(self) -> str | None:
        """As ``SQLMemoryStore.ping``; while new logins are paused after a refused one and no
        connection is open to answer, the failure names the settings (never a value)."""
        try:
            return await super().ping()
        except ServiceUnavailable:
            said = self._login_refused()
            if said is None:
                raise
            raise ServiceUnavailable(said, code="memory_store_unavailable") from None

    def _login_refused(self) -> str | None:
        """What the last refused login was, while no login has succeeded since."""
        refusal = None if self._pool is None else self._pool.login_refusal()
        if refusal is None:
            return None
        error = refusal.error
        said = _one_line(error) if isinstance(error, SnowflakeError) else type(error).__name__
        wait_s = refusal.retry_at - self._pool_clock()
        pause = (
            f"no new login for {math.ceil(wait_s)} s, so as not to lock the user"
            if wait_s > 0
            else "the next connection needed tries one login again"
        )
        return (
            f"Snowflake refused the login ({said}; {refusal.in_a_row} in a row); {pause}; "
            f"check {_settings_for(error)}"
        )

    def degraded(self) -> str | None:
        """Degraded while logins are refused (open connections still serve; no new one is made
        for a while), or while the last operation needing a warehouse was refused for want of one:
        ``SELECT 1`` (the health check) is answered without a warehouse, and a probe that needs
        one would keep it running, billed, all day. The operations the gateway runs anyway
        (requests, the change log followed, access counts written) are the probe; nothing is
        added to them but this assignment."""
        refused = self._login_refused()
        if refused is not None:
            return refused
        said = self._no_warehouse
        if said is None:
            return None
        return (
            f"Snowflake refused the last memory operation for want of a warehouse ({said}); "
            "check SNOWFLAKE_WAREHOUSE (its name, that it exists and is resumed, the role's USAGE on it)"
        )


def _unavailable(exc: SnowflakeError) -> ServiceUnavailable:
    """A 503 for the client; what Snowflake said (redacted already) stays in the log."""
    error = ServiceUnavailable(
        f"The memory store failed ({type(exc).__name__}).", code="memory_store_unavailable"
    )
    error.detail = f"Snowflake: {_one_line(exc)}"
    return error


def _one_line(exc: SnowflakeError) -> str:
    """``errno (sqlstate): message`` of ``exc`` on one bounded line (the connector's own text
    repeats the errno and shows a missing query id as ``None:``)."""
    text = exc.raw_msg if isinstance(exc.raw_msg, str) else str(exc)
    code = f"{exc.errno:06d}" if isinstance(exc.errno, int) and exc.errno > 0 else ""
    while code and text.startswith(f"{code}: "):
        text = text[len(code) + 2 :]
    state = f"({exc.sqlstate})" if exc.sqlstate and exc.sqlstate != "n/a" else ""
    head = " ".join(p for p in (code, state) if p)
    return " ".join(f"{head}: {text}".split() if head else text.split())[:300]


def _settings_for(exc: Exception) -> str:
    """The SNOWFLAKE_* variables a failed connect points at."""
    if login_refused(exc):
        # The login was answered and refused (390100 wrong user or password, 390144 bad key, ...).
        return _CREDENTIAL_SETTINGS
    return "SNOWFLAKE_ACCOUNT (the account identifier, e.g. myorg-myaccount, not a URL) and the network to it"


def _on_cursor(conn: SnowflakeConnection, op: Callable[[Cursor], T]) -> T:
    cur = conn.cursor()
    try:
        return op(cur)
    finally:
        cur.close()


if TYPE_CHECKING:

    def _conforms(store: SnowflakeMemoryStore) -> MemoryStore:
        return store
