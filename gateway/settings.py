"""Process settings from the environment, overridable by CLI flags.

Settings that describe the process (where to listen, which policy file, log format) live here;
settings that describe routing live in the policy file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process needs before it reads the policy."""

    policy_path: str = "routing_policies/default.yaml"
    host: str = "127.0.0.1"
    port: int = 8080
    # None: use the policy's server.max_body_bytes / server.drain_grace_s.
    max_body_bytes: int | None = None
    drain_grace_s: float | None = None
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    access_log: bool = True
    # Redis for the response cache; None keeps it in this process.
    redis_url: str | None = field(default=None, repr=False)
    cache_prefix: str = "sophia:cache:"
    # Memory backend override: sqlite:///path/file.db or snowflake:// (credentials from SNOWFLAKE_*).
    memory_url: str | None = field(default=None, repr=False)
    # When set, /admin/* needs "Authorization: Bearer <token>".
    admin_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``SOPHIA_*`` variables (see the README's configuration table)."""
        e = os.environ if env is None else env
        base = cls()
        return replace(
            base,
            policy_path=e.get("SOPHIA_POLICY", base.policy_path),
            host=e.get("SOPHIA_HOST", base.host),
            port=int(e.get("SOPHIA_PORT", base.port)),
            max_body_bytes=int(e["SOPHIA_MAX_BODY_BYTES"]) if e.get("SOPHIA_MAX_BODY_BYTES") else None,
            drain_grace_s=float(e["SOPHIA_DRAIN_GRACE_S"]) if e.get("SOPHIA_DRAIN_GRACE_S") else None,
            log_level=e.get("SOPHIA_LOG_LEVEL", base.log_level).upper(),
            log_format=e.get("SOPHIA_LOG_FORMAT", base.log_format),
            access_log=e.get("SOPHIA_ACCESS_LOG", "1") not in ("0", "false", "no"),
            admin_token=e.get("SOPHIA_ADMIN_TOKEN") or None,
            redis_url=e.get("REDIS_URL") or None,
            cache_prefix=e.get("SOPHIA_CACHE_PREFIX", base.cache_prefix),
            memory_url=e.get("MEMORY_URL") or None,
        )
