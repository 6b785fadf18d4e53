"""Which key store a process uses: PostgreSQL when ``KEYS_URL`` names one, else the SQLite file
the policy's ``auth.store`` names (the embedded default: nothing to install)."""

from __future__ import annotations

from gateway.auth.records import KeyStore
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.errors import StartupError
from gateway.policy.model import Auth


def key_store(auth: Auth, keys_url: str | None) -> KeyStore:
    """The (unstarted) key store for ``auth`` and the ``KEYS_URL`` value (None or empty: unset).

    ``KEYS_URL`` may be ``postgresql://...`` / ``postgres://...`` or ``sqlite:///path/file``;
    anything else is a ``StartupError`` naming the forms."""
    if not keys_url:
        return SQLiteKeyStore(auth.store)
    scheme = keys_url.split("://", 1)[0].lower() if "://" in keys_url else ""
    if scheme in ("postgresql", "postgres"):
        from gateway.auth.postgres_keys import PostgresKeyStore

        return PostgresKeyStore(keys_url)
    if scheme == "sqlite" and keys_url.startswith("sqlite:///") and len(keys_url) > len("sqlite:///"):
        return SQLiteKeyStore(keys_url[len("sqlite:///") :])
    raise StartupError(
        "KEYS_URL must be postgresql://user@host:port/database or sqlite:///path/to/keys.sqlite3 "
        f"(got a URL with scheme {scheme or 'none'!r}); unset it to use auth.store"
    )
