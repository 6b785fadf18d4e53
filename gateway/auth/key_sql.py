"""The key stores' SQL, written once for both dialects (only the placeholder and types differ).

Every value travels as a bound parameter; the table name is the only text put into a
statement, and it is checked to be a plain identifier (it comes from code, never a client).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.auth.records import COLUMNS, SETTINGS_COLUMNS, KeyRecord, settings_row

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


@dataclass(frozen=True, slots=True)
class Dialect:
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    text: str
    integer: str
    real: str
    same: str  # equality that holds for two NULLs too


SQLITE = Dialect("?", "TEXT", "INTEGER", "REAL", "IS")
POSTGRES = Dialect("%s", "TEXT", "BIGINT", "DOUBLE PRECISION", "IS NOT DISTINCT FROM")


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
            f"revoked_at {d.real}, name {d.text}, description {d.text}, "
            f"previous_hash {d.text}, previous_until {d.real}, limits_id {d.text}, "
            f"provider_files {d.integer})"
        )
        # Columns added since the table was first released, added by ``start`` to a table made
        # before them: PostgreSQL says IF NOT EXISTS, SQLite (which cannot) skips a column it has.
        self.added_columns = {
            "previous_hash": d.text,
            "previous_until": d.real,
            "limits_id": d.text,
            "provider_files": d.integer,  # 0 or 1; NULL: the team's setting
        }
        self.column_names = f"SELECT * FROM {table} LIMIT 0"  # its cursor's description
        index = table.replace(".", "_")
        self.create_team_index = f"CREATE INDEX IF NOT EXISTS idx_{index}_team ON {table} (team)"
        self.create_previous_index = (
            f"CREATE INDEX IF NOT EXISTS idx_{index}_previous_hash ON {table} (previous_hash)"
        )
        self.insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join([p] * len(COLUMNS))})"
        # A secret's own record, or the record it was rotated into with a grace: the unrevoked one
        # first (the secret's own record is revoked by the rotation), then its own. Both columns
        # are indexed; the hash is bound three times.
        self.by_hash = (
            f"SELECT {cols} FROM {table} WHERE hash = {p} OR previous_hash = {p} "
            f"ORDER BY CASE WHEN revoked_at IS NULL THEN 0 ELSE 1 END, "
            f"CASE WHEN hash = {p} THEN 0 ELSE 1 END LIMIT 1"
        )
        self.by_id = f"SELECT {cols} FROM {table} WHERE key_id = {p}"
        self.list_all = f"SELECT {cols} FROM {table} ORDER BY created_at, key_id"
        self.list_team = f"SELECT {cols} FROM {table} WHERE team = {p} ORDER BY created_at, key_id"
        # A revoked key keeps its first revocation time.
        self.revoke = f"UPDATE {table} SET revoked_at = COALESCE(revoked_at, {p}) WHERE key_id = {p}"
        # Ending a grace early: only ever brought forward (ending it twice keeps the first end).
        self.end_grace = (
            f"UPDATE {table} SET previous_until = {p} WHERE key_id = {p} AND previous_until > {p}"
        )
        self.revoke_active = f"UPDATE {table} SET revoked_at = {p} WHERE key_id = {p} AND revoked_at IS NULL"
        # A key's settings changed in place (``KeyStore.update``): never a revoked key's. A grace
        # is only ever brought forward, to the bound given (or kept, NULL), as ``end_grace`` does.
        self.update = (
            f"UPDATE {table} SET {', '.join(f'{c} = {p}' for c in SETTINGS_COLUMNS)}, "
            f"previous_until = CASE WHEN previous_until > CAST({p} AS {d.real}) THEN CAST({p} AS {d.real}) "
            f"ELSE previous_until END WHERE key_id = {p} AND revoked_at IS NULL"
        )
        # Compare-and-set: the same, only while the key's settings are still those the writer
        # read (``expected`` of ``update`` and ``replace``), so two admins' changes made at once
        # (a PATCH and a PATCH, a PATCH and a rotation) never undo one another unseen.
        unchanged = " AND ".join(f"{c} {d.same} {p}" for c in SETTINGS_COLUMNS)
        self.update_if_unchanged = f"{self.update} AND {unchanged}"
        self.revoke_active_if_unchanged = f"{self.revoke_active} AND {unchanged}"

    def update_statement(
        self, record: KeyRecord, grace_until: float | None, expected: KeyRecord | None
    ) -> tuple[str, tuple[object, ...]]:
        """``KeyStore.update``'s statement and parameters (compare-and-set with ``expected``)."""
        params: tuple[object, ...] = (*settings_row(record), grace_until, grace_until, record.key_id)
        if expected is None:
            return self.update, params
        return self.update_if_unchanged, (*params, *settings_row(expected))

    def revoke_replaced(
        self, old_key_id: str, at_s: float, expected: KeyRecord | None
    ) -> tuple[str, tuple[object, ...]]:
        """``KeyStore.replace``'s revocation of the old key (compare-and-set with ``expected``)."""
        params: tuple[object, ...] = (at_s, old_key_id)
        if expected is None:
            return self.revoke_active, params
        return self.revoke_active_if_unchanged, (*params, *settings_row(expected))

    def add_column(self, name: str, *, if_not_exists: bool) -> str:
        """``ALTER TABLE`` adding ``name`` (one of ``added_columns``)."""
        guard = "IF NOT EXISTS " if if_not_exists else ""
        return f"ALTER TABLE {self.table} ADD COLUMN {guard}{name} {self.added_columns[name]}"
