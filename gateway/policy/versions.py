"""What a running gateway says about its policy: the version in force, the last reload, and
which changes wait for a restart (``gateway/live_policy.py`` does the reloading)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from gateway.policy.model import Policy

ReloadResult = Literal["applied", "unchanged", "invalid", "failed"]

# Settings a running gateway cannot change in place: they shape sockets, stores and the edge it
# built at start-up. A reload applies everything else and reports these as waiting for a restart.
RESTART_ONLY: tuple[tuple[str, ...], ...] = (
    ("server",),
    ("memory",),
    ("auth", "mode"),
    ("auth", "store"),
    ("auth", "limits_fail"),
    ("cache", "lookup_timeout_ms"),
)


def policy_version(policy: Policy) -> str:
    """A short hash of what ``policy`` means (its validated form, defaults filled in): the same
    for two files that differ only in comments, layout or key order."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:12]


def restart_only_changes(old: Policy, new: Policy) -> tuple[str, ...]:
    """The ``RESTART_ONLY`` settings that differ between ``old`` and ``new``, as key paths."""
    changed = []
    for path in RESTART_ONLY:
        a: object = old
        b: object = new
        for part in path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            changed.append(".".join(path))
    return tuple(changed)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What one reload did: ``version`` is the one in force afterwards; ``problems`` are the
    file's errors (``file:line: key.path: message``) when ``result`` is invalid or failed."""

    result: ReloadResult
    version: str
    problems: tuple[str, ...] = ()
    pending_restart: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    """The last reload that did not apply: when (Unix seconds), what asked for it, and why."""

    at: float
    source: str
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """``GET /admin/policy``: the version in force, when and how it was loaded (Unix seconds;
    source: startup, file, signal or admin), the file, whether it is watched, settings changed
    in the file that wait for a restart, and the last reload that failed (None once one applied
    or the file is valid again)."""

    version: str
    loaded_at: float
    source: str
    path: str | None
    watching: bool
    pending_restart: tuple[str, ...]
    last_error: ReloadFailure | None
