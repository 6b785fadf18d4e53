"""Build the memory service from the policy: which store, which index, which embedder."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from urllib.parse import urlparse

from gateway.errors import StartupError
from gateway.memory.records import MemoryStore
from gateway.memory.service import MemoryService, TextEmbedder
from gateway.memory.sqlite_store import SQLiteMemoryStore
from gateway.policy.model import MemoryConfig


def memory_store(config: MemoryConfig, memory_url: str | None, env: Mapping[str, str]) -> MemoryStore:
    """The store ``MEMORY_URL`` names (``sqlite:///path`` or ``snowflake://``), else the policy's.

    Raises ``StartupError`` saying what to do for a malformed ``MEMORY_URL``, missing
    ``SNOWFLAKE_*`` variables or a missing snowflake extra."""
    backend, path = config.backend, config.path
    if memory_url:
        scheme = _scheme(memory_url)
        if scheme == "sqlite":
            # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
            path = memory_url[len("sqlite:///") :] if memory_url.startswith("sqlite:///") else ""
            if not path:
                raise StartupError(f"MEMORY_URL {_SHAPES}, not {_shown(memory_url)}")
            backend = "embedded"
        elif scheme == "snowflake":
            if memory_url.rstrip("/") != "snowflake:":
                # snowflake-sqlalchemy's form (snowflake://user:password@account/db/schema?...)
                # was taken as snowflake:// and the rest ignored: credentials and all.
                raise StartupError(
                    "MEMORY_URL for Snowflake is snowflake:// alone: the account, user, password, "
                    "database, schema, warehouse and role come from the SNOWFLAKE_* variables (see "
                    "the README's Memory service section); the URL's other parts are not read, and "
                    "are not repeated here"
                )
            backend = "snowflake"
        else:
            raise StartupError(f"MEMORY_URL {_SHAPES}, not {_shown(memory_url)}")
    if backend == "snowflake":
        try:
            from gateway.memory.snowflake_store import (
                SnowflakeMemoryStore,
                check_private_key,
                snowflake_settings_from_env,
            )
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("snowflake"):
                raise
            raise StartupError(
                "the Snowflake memory backend needs the snowflake extra: "
                f"{sys.executable} -m pip install 'sophia-gateway[snowflake]'"
            ) from None
        try:
            connect_args = snowflake_settings_from_env(env)
            check_private_key(connect_args)
        except ValueError as exc:
            raise StartupError(f"{exc} (see the README's Memory service section)") from None
        return SnowflakeMemoryStore(connect_args, config.pool)
    return SQLiteMemoryStore(path)


_SHAPES = "must be sqlite:///relative/file.db, sqlite:////absolute/file.db or snowflake://"


def _scheme(url: str) -> str:
    try:
        return urlparse(url).scheme
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return ""


def _shown(url: str) -> str:
    """``url`` without a password, for the error message."""
    try:
        password = urlparse(url).password
    except ValueError:
        password = None
    return repr(url.replace(f":{password}@", ":***@", 1) if password else url)


def build_memory(
    config: MemoryConfig,
    memory_url: str | None,
    env: Mapping[str, str],
    embed: TextEmbedder,
    *,
    shared_by_workers: bool = False,
    owns_index_files: bool = True,
) -> MemoryService:
    """The memory service; ``embed`` is the request service's embeddings path. A worker of
    ``serve --workers N`` shares the store with the others (``shared_by_workers``: its index
    follows their writes) and only one of them writes the index files (``owns_index_files``)."""
    # numpy and usearch (~0.1-0.2 s of imports) only once a memory service is built: at start-up,
    # before the port opens, and never by a gateway whose policy turns memory off.
    from gateway.memory.index import HnswIndex

    index = HnswIndex(config.index_dir, seal_vectors=config.index_segment_vectors)
    if not owns_index_files:
        index.keep_segments_private()  # the index directory's files are the owner's to write
    store = memory_store(config, memory_url, env)
    return MemoryService(
        config,
        store,
        index,
        embed,
        follow_changes=shared_by_workers,
        # Workers on SQLite also read the change log every flush round (a local query), so one
        # that gets no searches keeps its index current; on Snowflake a query a second would
        # keep the warehouse running (and billed) all day, so they read it before searches only.
        follow_when_idle=isinstance(store, SQLiteMemoryStore),
        owns_index_files=owns_index_files,
    )
