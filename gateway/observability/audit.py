"""The audit trail: one line per state-changing admin action, on the ``gateway.audit`` logger.

Who changed what, when and from where: a key issued, updated, revoked, rotated or its grace ended (over
``/admin/keys`` or by ``sophia-gateway keys`` on the key store), the policy reloaded (``POST
/admin/policy/reload``, a file edit, SIGHUP), a rollout driven by hand. Each line goes through the
gateway's logging (``logging.py``: JSON or text on stderr, as every other logger) with
``msg: "audit"`` and these fields, always in this order:

- ``action``: ``key.create``, ``key.update``, ``key.revoke``, ``key.rotate``, ``key.end_grace``,
  ``policy.reload``, ``rollout.<pause|resume|promote|abort>``;
- ``outcome``: ``ok``, ``refused`` (a 4xx: wrong token, a body that does not validate, an unknown
  key, an invalid policy file) or ``failed`` (a 5xx: the key store did not answer), with
  ``status`` (the HTTP status) and ``code`` (the error's code) when not ``ok``;
- ``actor``: the credential that did it: ``admin`` (``SOPHIA_ADMIN_TOKEN``), ``admin_previous``
  (``SOPHIA_ADMIN_TOKEN_PREVIOUS``), ``loopback`` (no token set, a client on this machine),
  ``unauthenticated`` (refused before any credential matched), ``cli`` (``sophia-gateway keys``
  on the key store, with ``os_user`` and ``hostname``), ``file`` or ``signal`` (a policy reload
  the gateway started itself);
- ``client`` (the address as the access log writes it: behind ``SOPHIA_TRUSTED_PROXIES`` the one
  ``X-Forwarded-For`` names) and ``request_id``, for an HTTP action;
- the target: ``key_id``, ``team``, a new key's limits and grants (``key_fields``), an updated
  key's ``changes`` (each setting changed, ``before`` and ``after``: ``key_changes``), a policy's
  ``path``, ``version_before`` and ``version_after``, a rollout's ``model``.

Never a secret, a hash of one, a token or a provider key: a key's fields are picked by name from
its API form (``key_fields``), which has neither secret nor hash.

The lines are not the access log's: ``SOPHIA_ACCESS_LOG=0`` leaves them, and so does
``SOPHIA_LOG_LEVEL`` (``configure_logging`` sets this logger to INFO on its own, so a production
``WARNING`` or ``ERROR`` keeps them; their level stays ``info``: an action is not a warning). An
admin action is rare: a line costs what any other log line does, and nothing on ``/v1``.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

AUDIT_LOGGER = "gateway.audit"
log = logging.getLogger(AUDIT_LOGGER)

OK = "ok"
REFUSED = "refused"
FAILED = "failed"

# The fields of a key (as ``key_json`` shows it) an audit line carries: what it may do, never
# how it is called (no secret, hash or prefix).
_KEY_FIELDS = (
    "team",
    "name",
    "models",
    "rpm",
    "tpm",
    "budget_usd",
    "budget_period_s",
    "expires_at",
    "grace_until",
    "provider_files",  # a grant: the key may name the organisation's provider-side files
)


def record(action: str, outcome: str, actor: str, fields: Mapping[str, Any] | None = None) -> None:
    """Write one audit line (``outcome``: ``OK``, ``REFUSED`` or ``FAILED``)."""
    line: dict[str, Any] = {"action": action, "outcome": outcome, "actor": actor}
    if fields:
        line.update(fields)
    log.info("audit", extra={"fields": line})


def outcome_of(status: int) -> str:
    """An HTTP status as an audit outcome: ``ok`` below 400, ``refused`` for a 4xx, else ``failed``."""
    if status < 400:
        return OK
    return REFUSED if status < 500 else FAILED


def key_fields(key: Mapping[str, Any], *, limits: bool = False) -> dict[str, Any]:
    """What an audit line says of ``key`` (its ``key_json`` form): its id and team, and with
    ``limits`` what it may do (models, rates, budget, expiry, memory grants). Picked by name:
    nothing else of the mapping (a ``secret`` beside it) is ever copied."""
    out: dict[str, Any] = {"key_id": key.get("id"), "team": key.get("team")}
    if limits:
        for name in _KEY_FIELDS[1:]:
            out[name] = key.get(name)
        namespaces = key.get("namespaces") or {}
        out["namespaces_read"] = namespaces.get("read")
        out["namespaces_write"] = namespaces.get("write")
    elif key.get("grace_until") is not None:
        out["grace_until"] = key.get("grace_until")
    return out


# What an update may change, as ``key_json`` shows it (``namespaces`` split in two), and what it
# may change with it (an expired key given a new lifetime: its status, a grace it had).
_CHANGEABLE = (
    "name",
    "description",
    "models",
    "rpm",
    "tpm",
    "budget_usd",
    "budget_period_s",
    "expires_at",
    "namespaces_read",
    "namespaces_write",
    "provider_files",
    "status",
    "grace_until",
)


def key_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What an update changed of a key (both in their ``key_json`` form): ``{field: {"before":
    old, "after": new}}`` for each setting whose value differs (a setting sent with the value it
    had is not a change). Picked by name, as ``key_fields``: never a secret or hash."""

    def flat(key: Mapping[str, Any]) -> dict[str, Any]:
        namespaces = key.get("namespaces") or {}
        return {
            **{name: key.get(name) for name in _CHANGEABLE},
            "namespaces_read": namespaces.get("read"),
            "namespaces_write": namespaces.get("write"),
        }

    old, new = flat(before), flat(after)
    return {name: {"before": old[name], "after": new[name]} for name in _CHANGEABLE if old[name] != new[name]}


def os_user() -> str:
    """The operating-system user running this process (its uid when it has no name, as in a
    container without a passwd entry)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())


def hostname() -> str:
    return socket.gethostname()
