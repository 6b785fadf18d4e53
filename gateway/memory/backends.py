"""Build the memory service from the policy: which store, which index, which embedder."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlparse

from gateway.memory.index import HnswIndex
from gateway.memory.records import MemoryStore
from gateway.memory.service import MemoryService, TextEmbedder
from gateway.policy.model import MemoryConfig


def memory_store(config: MemoryConfig, memory_url: str | None, env: Mapping[str, str]) -> MemoryStore:
    """The store ``MEMORY_URL`` names (``sqlite:///path`` or ``snowflake://``), else the policy's."""
    backend, path = config.backend, config.path
    if memory_url:
        scheme = urlparse(memory_url).scheme
        if scheme == "sqlite":
            # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
            if not memory_url.startswith("sqlite:///"):
                raise ValueError(
                    "MEMORY_URL for SQLite looks like sqlite:///relative.db or sqlite:////abs/path.db"
                )
            backend, path = "embedded", memory_url[len("sqlite:///") :]
        elif scheme == "snowflake":
            backend = "snowflake"
        else:
            raise ValueError(
                f"MEMORY_URL must start with sqlite:// or snowflake://, not {scheme or memory_url!r}"
            )
    if backend == "snowflake":
        from gateway.memory.snowflake_store import SnowflakeMemoryStore, snowflake_settings_from_env

        return SnowflakeMemoryStore(snowflake_settings_from_env(env), config.pool)
    from gateway.memory.sqlite_store import SQLiteMemoryStore

    return SQLiteMemoryStore(path)


def build_memory(
    config: MemoryConfig, memory_url: str | None, env: Mapping[str, str], embed: TextEmbedder
) -> MemoryService:
    """The memory service; ``embed`` is the request service's embeddings path."""
    return MemoryService(config, memory_store(config, memory_url, env), HnswIndex(config.index_dir), embed)
