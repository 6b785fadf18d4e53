"""``KeyRing``: issue, list, revoke and rotate virtual keys, and authenticate a secret.

``authenticate`` is the one call the edge makes per request. It hashes the secret (the store
holds only hashes), looks the hash up, and merges the key's own settings over its team's
defaults from the policy into a ``Caller``. Results, found or not, are cached in this process for
``auth.key_cache_s`` so a steady caller costs one dict lookup; a revocation made through this
key ring drops its entry at once, other replicas see it when their entry expires.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from gateway.auth.identity import Caller
from gateway.auth.records import (
    KeyRecord,
    KeyStore,
    hash_secret,
    new_key_id,
    new_secret,
    shown_prefix,
)
from gateway.errors import InvalidRequest, NotFound
from gateway.policy.model import Team

log = logging.getLogger(__name__)

# Bounds on the lookup cache: found keys (a gateway serves far fewer live keys), and unknown
# secrets (kept smaller: anyone can send those, and they must not push out the real ones).
MAX_CACHED_KEYS = 10_000
MAX_CACHED_MISSES = 1_000
KEY_ID = re.compile(r"key_[a-z2-7]{12}")  # what new_key_id makes


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What ``create`` sets on a key; ``None`` inherits the team's default."""

    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period_s: float | None = None
    expires_in_s: float | None = None
    namespaces_read: tuple[str, ...] | None = None
    namespaces_write: tuple[str, ...] | None = None
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class _Cached:
    until_s: float  # the entry is fresh before this clock time
    record: KeyRecord | None  # None: no such key (a negative entry)
    caller: Caller | None


class KeyRing:
    """Virtual keys over ``store``, with ``teams`` (the policy's ``auth.teams``) as defaults.

    ``model_groups``, when given, are the names a key's ``models`` may list. ``clock`` gives
    Unix seconds (tests pass their own)."""

    def __init__(
        self,
        store: KeyStore,
        teams: Mapping[str, Team],
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        *,
        model_groups: Collection[str] | None = None,
    ) -> None:
        self.store = store
        self.teams = teams
        self.cache_s = cache_s
        self._clock = clock
        self._model_groups = model_groups
        self._hits: OrderedDict[str, _Cached] = OrderedDict()
        self._misses: OrderedDict[str, _Cached] = OrderedDict()

    def reconfigure(
        self, teams: Mapping[str, Team], cache_s: float, model_groups: Collection[str] | None
    ) -> None:
        """Follow a policy reload: teams (limits, models, namespaces) apply to the next request,
        so the keys already looked up are looked up again."""
        self.teams, self.cache_s, self._model_groups = teams, cache_s, model_groups
        self._hits.clear()
        self._misses.clear()

    async def create(self, team: str, settings: KeySettings | None = None) -> tuple[str, KeyRecord]:
        """A new key of ``team``: its secret (shown once, never stored) and its record.

        Raises ``InvalidRequest`` for a team the policy does not name, or models it lacks."""
        s = settings or KeySettings()
        self._check_team(team)
        self._check_models(s.models)
        for field, value in (("rpm", s.rpm), ("tpm", s.tpm)):
            if value is not None and value < 1:
                raise InvalidRequest(f"'{field}' must be at least 1.", param=field)
        for field, number in (
            ("budget_usd", s.budget_usd),
            ("budget_period_s", s.budget_period_s),
            ("expires_in_s", s.expires_in_s),
        ):
            if number is not None and not (number >= 0 if field == "budget_usd" else number > 0):
                raise InvalidRequest(f"'{field}' must be a positive number.", param=field)
        now = self._clock()
        secret = new_secret()
        record = KeyRecord(
            key_id=new_key_id(),
            hash=hash_secret(secret),
            prefix=shown_prefix(secret),
            team=team,
            created_at=now,
            models=s.models,
            rpm=s.rpm,
            tpm=s.tpm,
            budget_usd=s.budget_usd,
            budget_period_s=s.budget_period_s,
            read_namespaces=s.namespaces_read,
            write_namespaces=s.namespaces_write,
            expires_at=None if s.expires_in_s is None else now + s.expires_in_s,
            name=s.name,
            description=s.description,
        )
        await self.store.insert(record)
        return secret, record

    async def list(self, team: str | None = None) -> list[KeyRecord]:
        """Every key (of ``team``), oldest first; records hold no secret."""
        return await self.store.list(team)

    async def get(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; ``NotFound`` when there is none."""
        record = await self.store.get(key_id) if KEY_ID.fullmatch(key_id) else None
        if record is None:
            raise _unknown_key(key_id)
        return record

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` now (revoking twice keeps the first time); ``NotFound`` if unknown.
        This process forgets its cached lookup at once; other replicas within ``cache_s``."""
        record = await self.store.revoke(key_id, self._clock()) if KEY_ID.fullmatch(key_id) else None
        if record is None:
            raise _unknown_key(key_id)
        self._forget(record.hash)
        return record

    async def rotate(self, key_id: str) -> tuple[str, KeyRecord]:
        """Replace ``key_id`` with a new secret keeping every setting (team, limits, expiry,
        name); the old key is revoked in the same transaction. Returns the new secret and record."""
        old = await self.get(key_id)
        now = self._clock()
        if not old.is_active(now):
            state = "revoked" if old.revoked_at is not None else "expired"
            raise InvalidRequest(
                f"Key '{key_id}' is {state} and cannot be rotated; create a new key.",
                param="key_id",
                code=f"key_{state}",
            )
        secret = new_secret()
        new = replace(
            old,
            key_id=new_key_id(),
            hash=hash_secret(secret),
            prefix=shown_prefix(secret),
            created_at=now,
            revoked_at=None,
        )
        if not await self.store.replace(new, key_id, now):
            # Revoked by someone else between the read and the write.
            raise InvalidRequest(
                f"Key '{key_id}' is revoked and cannot be rotated; create a new key.",
                param="key_id",
                code="key_revoked",
            )
        self._forget(old.hash)
        return secret, new

    async def authenticate(self, secret: str) -> Caller | None:
        """The ``Caller`` a secret stands for; None when it is unknown, revoked or expired (or its
        team is gone from the policy). Raises ``KeyStoreUnavailable`` when the store cannot answer.

        The secret is hashed first and only the hash is looked up or kept, so the time taken
        does not depend on how much of a stored secret a guess shares."""
        key_hash = hash_secret(secret)
        now = self._clock()
        cached = self._hits.get(key_hash) or self._misses.get(key_hash)
        if cached is not None and now < cached.until_s:
            if cached.record is None or not cached.record.is_active(now):
                return None
            return cached.caller
        record = await self.store.find_by_hash(key_hash)
        caller = None
        # compare_digest: a store that matched loosely (collation, padding) has not found this key.
        if record is not None and hmac.compare_digest(record.hash, key_hash) and record.is_active(now):
            caller = self._caller(record)
        if caller is None:
            self._remember(self._misses, key_hash, _Cached(now + self.cache_s, None, None), MAX_CACHED_MISSES)
            return None
        self._remember(self._hits, key_hash, _Cached(now + self.cache_s, record, caller), MAX_CACHED_KEYS)
        return caller

    def _caller(self, record: KeyRecord) -> Caller | None:
        team = self.teams.get(record.team)
        if team is None:
            log.warning(
                "key %s belongs to team %r, which the policy no longer has", record.key_id, record.team
            )
            return None
        models = record.models if record.models is not None else team.models
        budget_usd = record.budget_usd if record.budget_usd is not None else team.budget_usd
        read = record.read_namespaces if record.read_namespaces is not None else team.namespaces.read
        write = record.write_namespaces if record.write_namespaces is not None else team.namespaces.write
        return Caller(
            key_id=record.key_id,
            team=record.team,
            models=None if models is None else frozenset(models),
            rpm=record.rpm if record.rpm is not None else team.rpm,
            tpm=record.tpm if record.tpm is not None else team.tpm,
            budget_usd=budget_usd,
            budget_period_s=None if budget_usd is None else record.budget_period_s or team.budget_period,
            read_namespaces=None if read is None else frozenset(read),
            write_namespaces=None if write is None else frozenset(write),
        )

    def _remember(self, cache: OrderedDict[str, _Cached], key_hash: str, entry: _Cached, bound: int) -> None:
        self._hits.pop(key_hash, None)
        self._misses.pop(key_hash, None)
        cache[key_hash] = entry
        while len(cache) > bound:
            cache.popitem(last=False)  # the oldest entry

    def _forget(self, key_hash: str) -> None:
        self._hits.pop(key_hash, None)
        self._misses.pop(key_hash, None)

    def _check_team(self, team: str) -> None:
        if team not in self.teams:
            known = ", ".join(sorted(self.teams)) or "none (add one under auth.teams in the policy)"
            raise InvalidRequest(
                f"Unknown team '{team}': teams are defined in the policy (auth.teams). Known teams: {known}.",
                param="team",
                code="unknown_team",
            )

    def _check_models(self, models: tuple[str, ...] | None) -> None:
        if models is None or self._model_groups is None:
            return
        unknown = [m for m in models if m not in self._model_groups]
        if unknown:
            raise InvalidRequest(
                f"Unknown model group(s) {', '.join(repr(m) for m in unknown)}; known: "
                f"{', '.join(sorted(self._model_groups))}.",
                param="models",
                code="model_not_found",
            )


def _unknown_key(key_id: str) -> NotFound:
    shown = f" '{key_id}'" if KEY_ID.fullmatch(key_id) else ""  # never echo arbitrary text
    return NotFound(f"No such key{shown}.", param="key_id", code="key_not_found")
