"""``python -m tests.e2e.fakesnow_faults_serve serve ...``: the gateway on fakesnow (as
``fakesnow_serve``) whose Snowflake can be made to fail while it runs, as a real account fails.

The file named by ``SOPHIA_TEST_SNOWFLAKE_FAULT`` holds the fault (absent or empty: none):

* ``down``: the account is unreachable; connects and statements raise the connector's
  ``OperationalError`` (errno 250001 / 250003: what it raises after its retries).
* ``refused``: the credentials are refused (``DatabaseError`` 390100, as the login answer).
* ``warehouse``: statements raise ``ProgrammingError`` 000606 (sqlstate 57P03: no active
  warehouse; a misnamed warehouse, a role without USAGE on it), except ``SELECT 1``, which
  Snowflake answers without a warehouse. ``warehouse-after-ddl`` lets the migration's DDL
  through too (Snowflake runs DDL without a warehouse), so the store opens, then fails when
  the index is read from it.
* ``slow``: every statement takes 0.3 s (a small warehouse under load): slow, never failing.
* ``hang``: statements do not return while the fault lasts (a warehouse queueing every query;
  the connector waits for a query's result without a bound unless one is set), until the
  session's ``STATEMENT_TIMEOUT_IN_SECONDS`` (when given) cancels them, as Snowflake does
  (``ProgrammingError`` 000630, sqlstate 57014).

With ``SOPHIA_TEST_SNOWFLAKE_CONNECTS`` set, every ``connect()`` (refused or not) appends a line
to the file it names: the logins the gateway tried.

Each fault's message carries the password and a token, as the connector's texts may carry a
URL or a login parameter: whatever reaches a client, a log line or ``/health`` is checked for
them. fakesnow itself never fails this way (it knows no network, no credentials, no warehouse).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import snowflake.connector
from snowflake.connector.errors import DatabaseError, OperationalError, ProgrammingError

from gateway.cli import main
from tests import fakesnow_support

LEAK = "token=SECRET-TOKEN-0123456789"


def _fault() -> str:
    path = os.environ.get("SOPHIA_TEST_SNOWFLAKE_FAULT")
    try:
        return Path(path).read_text().strip() if path else ""
    except FileNotFoundError:
        return ""


def _raise(fault: str, *, connecting: bool, sql: str = "", timeout_s: int = 0) -> None:
    password = os.environ.get("SNOWFLAKE_PASSWORD", "")
    if fault == "down":
        raise OperationalError(
            msg=f"Could not connect to Snowflake backend after 2 attempt(s). Aborting "
            f"(https://acct.snowflakecomputing.com/session/v1/login-request?{LEAK}&password={password})",
            errno=250001 if connecting else 250003,
        )
    if fault == "refused":
        raise DatabaseError(msg=f"Incorrect username or password was specified. ({password})", errno=390100)
    if fault.startswith("warehouse") and not connecting and _needs_warehouse(fault, sql):
        raise ProgrammingError(
            msg="No active warehouse selected in the current session.  Select an active warehouse "
            f"with the 'use warehouse' command. {LEAK}",
            errno=606,
            sqlstate="57P03",
        )
    if fault == "slow" and not connecting:
        time.sleep(0.3)
    if fault == "hang" and not connecting:
        # The query returns once the warehouse takes it, or the session's timeout cancels it.
        deadline = time.monotonic() + (timeout_s or 172800)  # Snowflake's default: two days
        while _fault() == "hang":
            if time.monotonic() > deadline:
                raise ProgrammingError(
                    msg=f"Statement reached its statement or warehouse timeout of {timeout_s} "
                    "second(s) and was canceled.",
                    errno=630,
                    sqlstate="57014",
                )
            time.sleep(0.05)


def _needs_warehouse(fault: str, sql: str) -> bool:
    """Whether ``sql`` fails under ``fault``: ``SELECT 1`` has no FROM, Snowflake answers it
    without a warehouse; with ``warehouse-after-ddl`` the migration's DDL passes too."""
    text = " ".join(sql.split()).upper()
    if text == "SELECT 1":
        return False
    ddl = text.startswith(("CREATE", "ALTER")) or text.endswith("LIMIT 0")
    return not (fault == "warehouse-after-ddl" and ddl)


class _Cursor:
    def __init__(self, cur: Any, timeout_s: int) -> None:
        self._cur = cur
        self._timeout_s = timeout_s

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        _raise(_fault(), connecting=False, sql=sql, timeout_s=self._timeout_s)
        return self._cur.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class _Connection:
    def __init__(self, conn: Any, timeout_s: int) -> None:
        self._conn = conn
        self._timeout_s = timeout_s

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self._conn.cursor(*args, **kwargs), self._timeout_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


if __name__ == "__main__":
    with fakesnow_support.patch():
        fake_connect = snowflake.connector.connect

        def connect(**kwargs: Any) -> _Connection:
            attempts = os.environ.get("SOPHIA_TEST_SNOWFLAKE_CONNECTS")
            if attempts:
                with open(attempts, "a") as file:
                    file.write("connect\n")
            _raise(_fault(), connecting=True)
            # fakesnow ignores session parameters; the statement timeout is kept as Snowflake does.
            parameters = kwargs.get("session_parameters") or {}
            return _Connection(fake_connect(**kwargs), int(parameters.get("STATEMENT_TIMEOUT_IN_SECONDS", 0)))

        snowflake.connector.connect = connect  # type: ignore[assignment]
        code = main()
    sys.exit(code)
