"""Virtual key records and the ``KeyStore`` Protocol both stores (SQLite, PostgreSQL) implement.

A record never holds the secret: only its hash and a short prefix for listings. Every setting
that is ``None`` is inherited from the key's team in the policy (``auth.teams``) when the key
authenticates, so editing a team's defaults changes its keys without touching the store.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson

SECRET_PREFIX = "sk-sg-"
# Shown in listings: the prefix and the first 4 characters of the random part, then an ellipsis.
_SHOWN_CHARS = 4
# A key issued today: the prefix, 43 url-safe characters (256 random bits), then 8 characters of
# checksum (48 bits of a SHA-256 of the rest). The edge checks the checksum before the key store
# is asked, so a flood of made-up keys costs a hash each, not a query each. Keys issued before
# the checksum (the prefix and the 43 characters alone) keep working: they are looked up as
# before, within a bounded rate (``keyring.py``); rotating one gives it the new form.
_RANDOM_CHARS = 43
_CHECK_CHARS = 8
_URL_SAFE = r"[A-Za-z0-9_-]"
_CHECKED_KEY = re.compile(rf"{SECRET_PREFIX}({_URL_SAFE}{{{_RANDOM_CHARS}}})({_URL_SAFE}{{{_CHECK_CHARS}}})")
_LEGACY_KEY = re.compile(rf"{SECRET_PREFIX}{_URL_SAFE}{{{_RANDOM_CHARS}}}")
CHECKED = "checked"  # secret_form: the current form, its checksum right
LEGACY = "legacy"  # secret_form: the form before checksums (nothing to check)


def new_secret() -> str:
    """A fresh key: ``sk-sg-`` + 43 url-safe characters (256 random bits) + an 8-character
    checksum of them (57 characters in all)."""
    random_part = secrets.token_urlsafe(32)
    return SECRET_PREFIX + random_part + _checksum(random_part)


def secret_form(secret: str) -> str | None:
    """``CHECKED`` for a key of the current form whose checksum is right, ``LEGACY`` for one of
    the form issued before checksums, None for anything no gateway ever issued (a wrong
    checksum, another length, other characters): that one needs no lookup to be refused."""
    match = _CHECKED_KEY.fullmatch(secret)
    if match is not None:
        return CHECKED if hmac.compare_digest(match.group(2), _checksum(match.group(1))) else None
    return LEGACY if _LEGACY_KEY.fullmatch(secret) else None


def _checksum(random_part: str) -> str:
    # Not a secret and not a signature: it only tells a key this gateway made from a typo or a
    # guess without asking the store (48 bits: a random guess passes once in 2.8e14).
    digest = hashlib.sha256(b"sophia-gateway key checksum\x00" + random_part.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:6]).decode("ascii")


def new_key_id() -> str:
    """A fresh public key id: ``key_`` + 12 lower-case base32 characters (60 random bits)."""
    return "key_" + base64.b32encode(secrets.token_bytes(10)).decode()[:12].lower()


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, hex.

    A plain fast hash is right here (not bcrypt/argon2): the secrets are 256 random bits, so
    there is no dictionary to try and a brute force of the hash is as hopeless as one of the
    key; slow hashes exist for low-entropy passwords. It also lets a lookup find the record by
    its hash in one indexed query, in microseconds, on every request."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(secret: str) -> str:
    """What listings show of a secret: ``sk-sg-ab12…`` (enough to recognise it, not to use it)."""
    return secret[: len(SECRET_PREFIX) + _SHOWN_CHARS] + "…"


_SECRET_IN_TEXT = re.compile(rf"{SECRET_PREFIX}{_URL_SAFE}+")


def without_secrets(text: str) -> str:
    """``text`` with every virtual key's secret in it shown as listings show one
    (``shown_prefix``): what the logs say of a path or an id an operator pasted a secret into
    (``DELETE /admin/keys/sk-sg-...``, where the key's id was meant). One substring test for
    text without one."""
    if SECRET_PREFIX not in text:
        return text
    return _SECRET_IN_TEXT.sub(lambda found: shown_prefix(found.group()), text)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One virtual key as stored. Times are Unix seconds; ``None`` settings inherit the team's."""

    key_id: str
    hash: str  # sha256 hex of the secret (see hash_secret)
    prefix: str  # shown in listings, e.g. "sk-sg-ab12…"
    team: str
    created_at: float
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period_s: float | None = None
    read_namespaces: tuple[str, ...] | None = None
    write_namespaces: tuple[str, ...] | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    name: str | None = None
    description: str | None = None
    # A rotation's grace: the hash of the secret this key replaced, which authenticates as this
    # key (same id, limits and spend) until ``previous_until``; None without a grace.
    previous_hash: str | None = None
    previous_until: float | None = None
    # The key id its limits and budget are counted under: the first key of its rotations, which
    # a rotation carries over (so a new secret does not reset the spend); None: its own id.
    limits_id: str | None = None
    # May its requests name objects stored with the providers under the gateway's keys (file
    # ids, Gemini Files API URIs: ``wire/provider_files.py``)? None: its team's setting.
    provider_files: bool | None = None

    @property
    def counted_as(self) -> str:
        """The id the limiters count this key's RPM, TPM and budget under."""
        return self.limits_id or self.key_id

    def is_active(self, now_s: float) -> bool:
        """Neither revoked nor expired at ``now_s``."""
        return self.revoked_at is None and (self.expires_at is None or now_s < self.expires_at)

    def in_grace(self, now_s: float) -> bool:
        """Whether the previous secret is still accepted at ``now_s``: the key is active and its
        rotation's grace has not ended (revoking or expiring the key ends it too)."""
        return (
            self.previous_hash is not None
            and self.previous_until is not None
            and now_s < self.previous_until
            and self.is_active(now_s)
        )


# Column order shared by both stores' SQL (parameterised statements only).
COLUMNS: Sequence[str] = (
    "key_id",
    "hash",
    "prefix",
    "team",
    "created_at",
    "models",
    "rpm",
    "tpm",
    "budget_usd",
    "budget_period_s",
    "read_namespaces",
    "write_namespaces",
    "expires_at",
    "revoked_at",
    "name",
    "description",
    "previous_hash",
    "previous_until",
    "limits_id",
    "provider_files",
)


# The columns ``KeyStore.update`` writes: what ``keys update`` / ``PATCH /admin/keys/{id}`` may
# change (never the key's id, secret, team, times of creation and revocation, or limits_id).
SETTINGS_COLUMNS: Sequence[str] = (
    "models",
    "rpm",
    "tpm",
    "budget_usd",
    "budget_period_s",
    "read_namespaces",
    "write_namespaces",
    "expires_at",
    "name",
    "description",
    "provider_files",
)


def settings_row(record: KeyRecord) -> tuple[object, ...]:
    """``record``'s values of ``SETTINGS_COLUMNS``, in order (as ``record_row`` writes them)."""
    row = dict(zip(COLUMNS, record_row(record), strict=True))
    return tuple(row[column] for column in SETTINGS_COLUMNS)


def join_names(names: tuple[str, ...] | None) -> str | None:
    """A list column's stored text: a JSON array (names may hold any character); None stays."""
    return None if names is None else orjson.dumps(list(names)).decode()


def split_names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(str(name) for name in orjson.loads(_text(value)))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text in a key record column, got {type(value).__name__}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"expected a number in a key record column, got {type(value).__name__}")
    return float(value)


def _opt_number(value: object) -> float | None:
    return None if value is None else _number(value)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(_number(value))


def _opt_text(value: object) -> str | None:
    return None if value is None else _text(value)


def record_row(record: KeyRecord) -> tuple[object, ...]:
    """``record`` as the values of ``COLUMNS``, in order."""
    return (
        record.key_id,
        record.hash,
        record.prefix,
        record.team,
        record.created_at,
        join_names(record.models),
        record.rpm,
        record.tpm,
        record.budget_usd,
        record.budget_period_s,
        join_names(record.read_namespaces),
        join_names(record.write_namespaces),
        record.expires_at,
        record.revoked_at,
        record.name,
        record.description,
        record.previous_hash,
        record.previous_until,
        record.limits_id,
        None if record.provider_files is None else int(record.provider_files),
    )


def row_record(row: Sequence[object]) -> KeyRecord:
    """A row of ``COLUMNS`` (as either store returns it) back into a record."""
    (key_id, hash_, prefix, team, created_at, models, rpm, tpm, budget_usd, budget_period_s) = row[:10]
    (read_ns, write_ns, expires_at, revoked_at, name, description, previous_hash, previous_until) = row[10:18]
    limits_id, provider_files = row[18:20]
    return KeyRecord(
        key_id=_text(key_id),
        hash=_text(hash_),
        prefix=_text(prefix),
        team=_text(team),
        created_at=_number(created_at),
        models=split_names(models),
        rpm=_opt_int(rpm),
        tpm=_opt_int(tpm),
        budget_usd=_opt_number(budget_usd),
        budget_period_s=_opt_number(budget_period_s),
        read_namespaces=split_names(read_ns),
        write_namespaces=split_names(write_ns),
        expires_at=_opt_number(expires_at),
        revoked_at=_opt_number(revoked_at),
        name=_opt_text(name),
        description=_opt_text(description),
        previous_hash=_opt_text(previous_hash),
        previous_until=_opt_number(previous_until),
        limits_id=_opt_text(limits_id),
        provider_files=None if provider_files is None else bool(_number(provider_files)),
    )


class KeyStore(Protocol):
    """Where key records live. Every method may raise ``KeyStoreUnavailable`` when the store
    cannot answer (the caller then refuses the request: never an open door)."""

    async def start(self) -> None:
        """Connect and create the table if missing; a second call does nothing."""

    async def close(self) -> None: ...

    async def insert(self, record: KeyRecord) -> None:
        """Add a new record (its key id and hash are new)."""

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The record whose secret hashes to ``key_hash`` (revoked and expired ones too), or the
        one whose previous secret does (``previous_hash``, a rotation's grace) when no record of
        that secret is unrevoked: an unrevoked record first, then one of its own secret."""

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def list(self, team: str | None = None) -> builtins.list[KeyRecord]:
        """Every record (of ``team`` when given), oldest first."""

    async def revoke(self, key_id: str, at_s: float) -> KeyRecord | None:
        """Mark the key revoked at ``at_s`` (a key revoked already keeps its first time); the
        record after the change, None when there is no such key."""

    async def replace(
        self, new: KeyRecord, old_key_id: str, at_s: float, expected: KeyRecord | None = None
    ) -> bool:
        """Rotation: insert ``new`` and revoke ``old_key_id`` at ``at_s`` in one transaction.
        False (and nothing written) when the old key does not exist or is revoked already, or
        (with ``expected``) its settings are no longer ``expected``'s."""

    async def update(
        self, record: KeyRecord, grace_until: float | None = None, expected: KeyRecord | None = None
    ) -> bool:
        """Write ``record``'s settings (``SETTINGS_COLUMNS``) over those of the key of its id, in
        place, unless that key is revoked; with ``grace_until`` its rotation grace ends by then
        (brought forward only). False (nothing written) when there is no such key or it is
        revoked, or (with ``expected``) its settings are no longer ``expected``'s (another
        writer changed them since they were read)."""

    async def end_grace(self, key_id: str, at_s: float) -> KeyRecord | None:
        """End the key's rotation grace at ``at_s`` (``previous_until`` brought forward to it; one
        that ended already keeps its end); the record after, None when there is no such key."""


def key_json(record: KeyRecord, now_s: float) -> dict[str, Any]:
    """A key as the API and ``keys list --json`` show it: never the secret or its hash."""
    if record.revoked_at is not None:
        status = "revoked"
    elif record.expires_at is not None and now_s >= record.expires_at:
        status = "expired"
    else:
        status = "active"
    return {
        "object": "key",
        "id": record.key_id,
        "prefix": record.prefix,
        "team": record.team,
        "status": status,
        "name": record.name,
        "description": record.description,
        "models": None if record.models is None else list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget_usd": record.budget_usd,
        "budget_period_s": record.budget_period_s,
        "namespaces": {
            "read": None if record.read_namespaces is None else list(record.read_namespaces),
            "write": None if record.write_namespaces is None else list(record.write_namespaces),
        },
        "created_at": int(record.created_at),
        "expires_at": None if record.expires_at is None else int(record.expires_at),
        "revoked_at": None if record.revoked_at is None else int(record.revoked_at),
        # When the secret it replaced (by rotation with a grace) stops working; None: no grace.
        "grace_until": None if record.previous_until is None else int(grace_end(record)),
        # Its own setting (null: its team's, ``auth.teams.<team>.provider_files``).
        "provider_files": record.provider_files,
    }


def grace_end(record: KeyRecord) -> float:
    """When ``record``'s previous secret stops (or stopped) working: its grace's end, or the key's
    revocation or expiry if sooner (either ends the grace, ``KeyRecord.in_grace``)."""
    ends = (record.previous_until, record.revoked_at, record.expires_at)
    return min(end for end in ends if end is not None)
