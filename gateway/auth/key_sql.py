"""The key stores' SQL, written once for both dialects (only the placeholder and types differ).

Every value travels as a bound parameter; the table name is the only text put into a
statement, and it is checked to be a plain identifier (it comes from code, never a client).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.auth.records import COLUMNS

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


@dataclass(frozen=True, slots=True)
class Dialect:
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    text: str
    integer: str
    real: str


SQLITE = Dialect("?", "TEXT", "INTEGER", "REAL")
POSTGRES = Dialect("%s", "TEXT", "BIGINT", "DOUBLE PRECISION")


class KeyQueries:
    """The statements for ``table`` (``name`` or ``schema.name``) in ``dialect``."""

    def __init__(self, table: str, dialect: Dialect) -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"table must be a plain identifier (or schema.name), not {table!r}")
        self.table = table
        p = dialect.placeholder
        d = dialect
        cols = ", ".join(COLUMNS)
        self.create_table = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"key_id {d.text} PRIMARY KEY, hash {d.text} NOT NULL UNIQUE, prefix {d.text} NOT NULL, "
            f"team {d.text} NOT NULL, created_at {d.real} NOT NULL, models {d.text}, "
            f"rpm {d.integer}, tpm {d.integer}, budget_usd {d.real}, budget_period_s {d.real}, "
            f"read_namespaces {d.text}, write_namespaces {d.text}, expires_at {d.real}, "
            f"revoked_at {d.real}, name {d.text}, description {d.text})"
        )
        index = table.replace(".", "_")
        self.create_team_index = f"CREATE INDEX IF NOT EXISTS idx_{index}_team ON {table} (team)"
        self.insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join([p] * len(COLUMNS))})"
        self.by_hash = f"SELECT {cols} FROM {table} WHERE hash = {p}"
        self.by_id = f"SELECT {cols} FROM {table} WHERE key_id = {p}"
        self.list_all = f"SELECT {cols} FROM {table} ORDER BY created_at, key_id"
        self.list_team = f"SELECT {cols} FROM {table} WHERE team = {p} ORDER BY created_at, key_id"
        # A revoked key keeps its first revocation time.
        self.revoke = f"UPDATE {table} SET revoked_at = COALESCE(revoked_at, {p}) WHERE key_id = {p}"
        self.revoke_active = f"UPDATE {table} SET revoked_at = {p} WHERE key_id = {p} AND revoked_at IS NULL"
