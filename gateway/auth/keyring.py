"""``KeyRing``: issue, list, update, revoke and rotate virtual keys, and authenticate a secret.

``authenticate`` is the one call the edge makes per request. It hashes the secret (the store
holds only hashes), looks the hash up, and merges the key's own settings over its team's
defaults from the policy into a ``Caller``. Results, found or not, are cached in this process for
``auth.key_cache_s`` so a steady caller costs one dict lookup; a revocation made through this
key ring drops its entry at once, and so does an update of the key's settings (``/admin/keys``
under ``serve --workers N`` asks every worker to drop it: ``api/admin_keys.py``); with
``REDIS_URL`` every other process, on every replica, drops it when the change's announcement
arrives (``auth/key_bus.py``: ``forget_keys``, and ``forget_all`` after its subscription was
lost), else when its entry expires.

Made-up keys cannot make the store work for them: a secret that is not of a form this gateway
issues, or whose checksum is wrong (``records.secret_form``), is refused before any lookup; and
lookups of secrets this process has not found lately are allowed at a bounded rate for each
form (``LOOKUPS_PER_S``, ``LOOKUP_BURST``), so a flood of well-formed guesses (of the old,
checksum-less form, or with checksums computed) costs the store at most that. Past it, such a
secret gets the store's 503 (``KeyStoreUnavailable``, retry shortly) while keys already found
by this process keep being looked up as usual.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace

from gateway.auth.identity import Caller
from gateway.auth.records import (
    CHECKED,
    LEGACY,
    KeyRecord,
    KeyStore,
    hash_secret,
    new_key_id,
    new_secret,
    secret_form,
    shown_prefix,
)
from gateway.errors import Conflict, InvalidRequest, KeyStoreUnavailable, NotFound, quoted
from gateway.policy.durations import MIN_BUDGET_PERIOD_S, format_duration
from gateway.policy.model import TEAM_NAME, Team
from gateway.quoting import listed
from gateway.wire.memory import NAMESPACE_PATTERN

log = logging.getLogger(__name__)

# Bounds on the lookup cache: found keys (a gateway serves far fewer live keys), and unknown
# secrets (kept smaller: anyone can send those, and they must not push out the real ones).
MAX_CACHED_KEYS = 10_000
MAX_CACHED_MISSES = 1_000
KEY_ID = re.compile(r"key_[a-z2-7]{12}")  # what new_key_id makes
# Store lookups of secrets this process has not found lately (never seen, or only as unknown),
# per form of key (checked, legacy): LOOKUP_BURST at once, then LOOKUPS_PER_S. A key found
# before is looked up again when its cache entry expires whatever the rate (and after a policy
# reload), so live keys are never held back; only new or made-up ones share the allowance.
LOOKUPS_PER_S = 200.0
LOOKUP_BURST = 1_000
# A key's label (listings print it in a terminal) and description.
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000
# What a key's memory grants may name: namespaces as the memory API takes them, this many a kind.
NAMESPACE = re.compile(NAMESPACE_PATTERN)
MAX_GRANTED_NAMESPACES = 1000
# The longest grace a rotation may give the secret it replaces: long enough for a weekly deploy,
# short enough that a rotated-out secret (perhaps leaked) does not linger.
MAX_GRACE_S = 7 * 86400.0
# A rotation or update whose compare-and-set lost (another admin changed the key between its read
# and its write) reads again and retries up to this many times in all; then 409 key_changed.
MAX_WRITE_ATTEMPTS = 8


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
    provider_files: bool | None = None  # may name provider-side objects (None: the team's)


# What ``update`` may change: every setting ``create`` takes, by its ``KeySettings`` name.
UPDATABLE: tuple[str, ...] = tuple(f.name for f in fields(KeySettings))
# A setting's record field where the names differ.
_RECORD_FIELD = {"namespaces_read": "read_namespaces", "namespaces_write": "write_namespaces"}


@dataclass(slots=True)
class _Allowance:
    """A token bucket: ``take`` is True while lookups stay within ``rate`` a second (``burst``
    at once)."""

    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class _Cached:
    until_s: float  # the entry is fresh before this clock time
    record: KeyRecord | None  # None: no such key (a negative entry)
    caller: Caller | None
    previous: bool = False  # the secret is ``record``'s previous one (a rotation's grace)

    def accepts(self, now_s: float) -> bool:
        """Whether the cached key still lets its secret in at ``now_s`` (expiry and the grace's
        end are times: they hold from the cache as exactly as from the store)."""
        if self.record is None:
            return False
        return self.record.in_grace(now_s) if self.previous else self.record.is_active(now_s)


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
        lookups_per_s: float = LOOKUPS_PER_S,
        lookup_burst: int = LOOKUP_BURST,
    ) -> None:
        self.store = store
        self.teams = teams
        self.cache_s = cache_s
        self._clock = clock
        self._model_groups = model_groups
        self._hits: OrderedDict[str, _Cached] = OrderedDict()
        self._misses: OrderedDict[str, _Cached] = OrderedDict()
        now = clock()
        self._allowances = {
            form: _Allowance(lookups_per_s, float(lookup_burst), float(lookup_burst), now)
            for form in (CHECKED, LEGACY)
        }
        self._warned_at = -1e18
        # Bumped whenever cached lookups are dropped (revoke, rotate, reload): a lookup that was
        # under way then may have read the key as it was before, so its answer is not cached.
        self._epoch = 0

    def reconfigure(
        self, teams: Mapping[str, Team], cache_s: float, model_groups: Collection[str] | None
    ) -> None:
        """Follow a policy reload: teams (limits, models, namespaces) apply to the next request,
        so the keys already looked up are looked up again (as keys found before: outside the
        lookup allowance)."""
        self.teams, self.cache_s, self._model_groups = teams, cache_s, model_groups
        self.forget_all()

    def forget_all(self) -> None:
        """Look every key up again at its next request: the keys found before stay known (looked
        up outside the lookup allowance), the unknown secrets are forgotten. After a policy
        reload, and when the announcements of other processes' key changes may have been missed
        (``auth/key_bus.py``, after its subscription to them was lost)."""
        for key_hash, entry in list(self._hits.items()):
            self._hits[key_hash] = replace(entry, until_s=float("-inf"))  # stale, still known
        self._misses.clear()
        self._epoch += 1

    def forget_key(self, key_id: str) -> int:
        """``forget_keys`` of one key."""
        return self.forget_keys((key_id,))

    def forget_keys(self, key_ids: Collection[str]) -> int:
        """Look every cached lookup of the keys ``key_ids`` up again, without asking the store
        now: their secrets, the ones a rotation's grace keeps, and a refusal cached for either
        (expired, revoked: an update may renew the key). Other processes changed the keys
        (``auth/key_bus.py``). Each entry is made stale, not dropped (as ``forget_all`` does for
        the keys found), so the key stays known and its next lookup is outside the lookup
        allowance: an announced change never turns a working key into a 503 while unknown keys
        use the allowance up. Returns how many lookups were affected. One scan of the cache (at
        most ``MAX_CACHED_KEYS`` + ``MAX_CACHED_MISSES`` entries) for all of ``key_ids``."""
        ids = key_ids if isinstance(key_ids, set | frozenset) else set(key_ids)
        stale = [h for h, e in self._hits.items() if e.record is not None and e.record.key_id in ids]
        for key_hash in stale:
            self._hits[key_hash] = replace(self._hits[key_hash], until_s=float("-inf"))
        refused = [h for h, e in self._misses.items() if e.record is not None and e.record.key_id in ids]
        for key_hash in refused:  # a key's refusal (revoked, expired): known too, looked up again
            self._misses[key_hash] = replace(self._misses[key_hash], until_s=float("-inf"))
        self._epoch += 1  # a lookup under way may have read the key as it was
        return len(stale) + len(refused)

    async def create(self, team: str, settings: KeySettings | None = None) -> tuple[str, KeyRecord]:
        """A new key of ``team``: its secret (shown once, never stored) and its record.

        Raises ``InvalidRequest`` for a team the policy does not name, models it lacks or its
        team's ``models`` do not include (a ceiling), or a setting out of bounds (the one check for ``/admin/keys`` and ``keys create`` alike)."""
        s = settings or KeySettings()
        self._check_team(team)
        self._check_settings(team, s)
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
            provider_files=s.provider_files,
        )
        await self.store.insert(record)
        return secret, record

    async def list(self, team: str | None = None) -> list[KeyRecord]:
        """Every key (of ``team``), oldest first; records hold no secret. ``InvalidRequest`` for
        a ``team`` no policy could name (PostgreSQL cannot even compare one with a NUL in it)."""
        if team is not None and not TEAM_NAME.fullmatch(team):
            raise InvalidRequest(
                "'team' must be a team name: 1-64 letters, digits, '_', '.' or '-' "
                "(starting with a letter or digit).",
                param="team",
            )
        return await self.store.list(team)

    async def get(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; ``NotFound`` when there is none."""
        record = await self.store.get(key_id) if KEY_ID.fullmatch(key_id) else None
        if record is None:
            raise _unknown_key(key_id)
        return record

    async def revoke(self, key_id: str, end_grace: bool = True) -> KeyRecord:
        """Revoke ``key_id`` now (revoking twice keeps the first time); ``NotFound`` if unknown.
        This process forgets its cached lookup at once; other replicas within ``cache_s``.
        ``end_grace``: also end the grace its secret has on the key that replaced it (below);
        False for a peer worker's part of a change made already (a rotation asks the other
        workers to revoke the old key again, which must not end the grace it just gave)."""
        record = await self.store.revoke(key_id, self._clock()) if KEY_ID.fullmatch(key_id) else None
        if record is None:
            raise _unknown_key(key_id)
        self._forget(record)
        # Its secret may still be let in as the one the key that replaced it keeps for a grace (a
        # rotation with ``grace_s``): revoking the old id, as an operator whose old secret leaked
        # does, ends that grace too. It answered "revoked" and the secret went on working until
        # the grace ended (an outside probe).
        if not end_grace:
            return record
        now = self._clock()
        for other in await self.store.list(record.team):
            if (
                other.previous_hash == record.hash
                and other.previous_until is not None
                and other.previous_until > now
            ):
                ended = await self.store.end_grace(other.key_id, now)
                if ended is not None:
                    self._forget(ended)
        return record

    async def rotate(self, key_id: str, grace_s: float = 0.0) -> tuple[str, KeyRecord]:
        """Replace ``key_id`` with a new secret keeping every setting (team, limits, expiry,
        name); the old key is revoked in the same transaction. Returns the new secret and record.

        ``grace_s`` (0 to ``MAX_GRACE_S`` seconds): for that long the old secret still
        authenticates, as the new key (its id, limits and spend), marked as deprecated; then, or
        when the new key is revoked, expires or is rotated again, it is refused like any revoked
        key. 0 (the default) refuses it at once."""
        if not 0.0 <= grace_s <= MAX_GRACE_S:  # NaN too
            raise InvalidRequest(
                f"'grace_s' must be 0 to {MAX_GRACE_S:g} seconds ({format_duration(MAX_GRACE_S)}).",
                param="grace_s",
            )
        for _ in range(MAX_WRITE_ATTEMPTS):
            old = await self.get(key_id)
            now = self._clock()
            if not old.is_active(now):
                state = "revoked" if old.revoked_at is not None else "expired"
                # 409, as a change of a revoked key (``_revoked``): the key's state, not the
                # request, is what stands in the way (it was a 400 here: an outside probe).
                raise Conflict(
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
                # Only the secret it replaces: a grace the old key had (an older secret) ends here.
                previous_hash=old.hash if grace_s > 0 else None,
                previous_until=now + grace_s if grace_s > 0 else None,
                # Counted as the key it replaces: a new secret is not a fresh budget or window.
                limits_id=old.counted_as,
            )
            # Written only while the old key is unrevoked and its settings are those read: a
            # change made meanwhile (a PATCH) is read again and carried into the new key, a
            # revocation meanwhile is found as revoked above.
            if await self.store.replace(new, key_id, now, expected=old):
                self._forget(old)  # its own grace (an older secret) ends here too
                return secret, new
        raise _busy(key_id)

    async def end_grace(self, key_id: str) -> KeyRecord:
        """End ``key_id``'s rotation grace now, keeping its new secret: the secret it replaced is
        refused from here on (this process forgets its cached lookup at once; other replicas
        within ``cache_s``). A grace that ended already keeps its end (idempotent); ``NotFound``
        when the key is unknown or was never rotated with a grace."""
        record = await self.store.end_grace(key_id, self._clock()) if KEY_ID.fullmatch(key_id) else None
        if record is None:
            raise _unknown_key(key_id)
        if record.previous_hash is None or record.previous_until is None:
            raise NotFound(
                f"Key '{key_id}' has no grace to end (it was not rotated with one).",
                param="key_id",
                code="grace_not_found",
            )
        self._forget(record)
        return record

    async def update(
        self, key_id: str, changes: KeySettings, given: Collection[str]
    ) -> tuple[KeyRecord, KeyRecord]:
        """Change ``key_id``'s settings in place: those named in ``given`` (``KeySettings``
        field names) take their value in ``changes``, None clearing one back to its team's
        (``expires_in_s`` None: it never expires; a lifetime counts from now); the others are
        kept. Checked as ``create`` checks them (``models`` within the team's). Its id, secret,
        team and limits_id stay: the limiters go on counting it as before, with the new limits
        from its next request. Returns the record before and after.

        This process forgets its cached lookup at once (other workers are asked by
        ``api/admin_keys.py``; other replicas within ``cache_s``). ``NotFound`` for an unknown
        key; ``Conflict`` (``key_revoked``) for a revoked one (a rotated one is revoked: update
        the key it was rotated into). An expired key may be changed, and given ``expires_in_s``
        it is active again; a rotation's grace it had ended with its expiry and stays ended."""
        unknown = sorted(set(given) - set(UPDATABLE))
        if unknown:
            raise ValueError(f"not a key setting: {unknown}")  # a caller's bug, never a client's
        if not given:
            raise InvalidRequest(
                "Nothing to change: give at least one of the key's settings (models, rpm, tpm, "
                "budget_usd, budget_period, expires, namespaces, name, description, provider_files).",
                code="nothing_to_change",
            )
        for _ in range(MAX_WRITE_ATTEMPTS):
            old = await self.get(key_id)
            if old.revoked_at is not None:
                raise _revoked(key_id)
            self._check_settings(old.team, changes)
            now = self._clock()
            new = old
            for field in given:
                value = getattr(changes, field)
                if field == "expires_in_s":
                    new = replace(new, expires_at=None if value is None else now + value)
                else:
                    new = replace(new, **{_RECORD_FIELD.get(field, field): value})
            # An expired key brought back: the secret a rotation's grace kept ended with it.
            grace_until = old.expires_at if old.expires_at is not None and now >= old.expires_at else None
            # Written only while the settings are those read: another change made meanwhile (a
            # PATCH of other fields) is read again and kept; a revocation or rotation meanwhile
            # is found as revoked above.
            if await self.store.update(new, grace_until, expected=old):
                break
        else:
            raise _busy(key_id)
        if grace_until is not None and new.previous_until is not None:
            new = replace(new, previous_until=min(new.previous_until, grace_until))
        self._forget(new)
        return old, new

    async def drop_cached(self, key_id: str) -> KeyRecord:
        """Forget this process's cached lookups of ``key_id`` (its secret and the one its grace
        keeps), so its next request reads the store: a peer worker's part of an update.
        ``NotFound`` for an unknown key."""
        record = await self.get(key_id)
        self._forget(record)
        return record

    async def authenticate(self, secret: str) -> Caller | None:
        """The ``Caller`` a secret stands for; None when it is unknown, revoked or expired (or its
        team is gone from the policy). Raises ``KeyStoreUnavailable`` when the store cannot answer.

        The secret is hashed first and only the hash is looked up or kept, so the time taken
        does not depend on how much of a stored secret a guess shares. A secret of no form this
        gateway issues (or with a wrong checksum) is None without a lookup; a lookup of one this
        process has not found lately, past the allowance of its form, is ``KeyStoreUnavailable``."""
        form = secret_form(secret)
        if form is None:
            return None
        key_hash = hash_secret(secret)
        now = self._clock()
        hit = self._hits.get(key_hash)
        cached = hit or self._misses.get(key_hash)
        if cached is not None and now < cached.until_s:
            return cached.caller if cached.accepts(now) else None
        # A secret found before (a key, or the refusal of a key's: revoked, expired, its team
        # gone) is looked up again outside the allowance, which is for unknown secrets.
        known = hit is not None or (cached is not None and cached.record is not None)
        if not known and not self._allowances[form].take(now):
            self._warn_flood(form, now)
            raise KeyStoreUnavailable()
        epoch = self._epoch
        record = await self.store.find_by_hash(key_hash)
        found = _found(record, key_hash)
        caller = None
        if found.record is not None and found.accepts(now):
            caller = self._caller(found.record, found.previous)
        if epoch != self._epoch:
            # Revoked, rotated or reloaded while the store answered: answer this request (it
            # asked before that) but keep nothing that may predate it.
            return caller
        if caller is None:
            # The key found, if any, is kept with the refusal: ``forget_keys`` finds it by its id
            # (an expired key renewed elsewhere). Refused all the same: ``accepts`` is False for
            # it, or its caller (team gone) is None.
            miss = replace(found, until_s=now + self.cache_s)
            self._remember(self._misses, key_hash, miss, MAX_CACHED_MISSES)
            return None
        entry = replace(found, until_s=now + self.cache_s, caller=caller)
        self._remember(self._hits, key_hash, entry, MAX_CACHED_KEYS)
        return caller

    def _caller(self, record: KeyRecord, previous: bool = False) -> Caller | None:
        team = self.teams.get(record.team)
        if team is None:
            log.warning(
                "key %s belongs to team %r, which the policy no longer has", record.key_id, record.team
            )
            return None
        models = _within(record.models, team.models)
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
            budget_period_s=None
            if budget_usd is None
            # A period stored before the minimum existed counts as the minimum.
            else max(MIN_BUDGET_PERIOD_S, record.budget_period_s or team.budget_period),
            read_namespaces=None if read is None else frozenset(read),
            write_namespaces=None if write is None else frozenset(write),
            previous_secret=previous,
            limits_id=record.limits_id,
            team_budget_usd=team.shared_budget_usd,
            team_budget_period_s=None
            if team.shared_budget_usd is None
            else max(MIN_BUDGET_PERIOD_S, team.budget_period),
            team_rpm=team.shared_rpm,
            team_tpm=team.shared_tpm,
            provider_files=record.provider_files
            if record.provider_files is not None
            else team.provider_files,
        )

    def _remember(self, cache: OrderedDict[str, _Cached], key_hash: str, entry: _Cached, bound: int) -> None:
        self._hits.pop(key_hash, None)
        self._misses.pop(key_hash, None)
        cache[key_hash] = entry
        while len(cache) > bound:
            cache.popitem(last=False)  # the oldest entry

    def _forget(self, record: KeyRecord) -> None:
        """Drop the cached lookups of ``record``'s secret and of the one it replaced (its grace
        ends with it)."""
        for key_hash in (record.hash, record.previous_hash):
            if key_hash is not None:
                hit = self._hits.get(key_hash)
                if hit is not None:  # known: looked up again outside the lookup allowance
                    self._hits[key_hash] = replace(hit, until_s=float("-inf"))
                self._misses.pop(key_hash, None)
        self._epoch += 1

    def _warn_flood(self, form: str, now: float) -> None:
        if now - self._warned_at >= 60.0:  # one line a minute while it lasts
            self._warned_at = now
            log.warning(
                "unknown keys arrive faster than the key store lookup allowance; refusing the excess "
                "with 503 (keys already found are unaffected)",
                extra={"fields": {"form": form, "lookups_per_s": self._allowances[form].rate}},
            )

    def _check_settings(self, team: str, s: KeySettings) -> None:
        """``InvalidRequest`` for a setting of ``s`` out of bounds (those that are None are not
        set): the one check of ``create`` and ``update``, the API's and the CLI's alike."""
        self._check_models(s.models)
        self._check_within_team(team, s.models)
        _check_label(s.name, s.description)
        _check_grants(s.namespaces_read, s.namespaces_write)
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
        if s.expires_in_s is not None and s.expires_in_s < 1.0:
            # A lifetime under a second made a key expired by the time it was listed, with a
            # success (an outside probe), as a time that has passed is refused.
            raise InvalidRequest(
                "'expires' must be at least 1s: a key that expires sooner is expired when it is made.",
                param="expires",
            )
        if s.budget_period_s is not None and s.budget_period_s < MIN_BUDGET_PERIOD_S:
            raise InvalidRequest(
                f"'budget_period' must be at least {format_duration(MIN_BUDGET_PERIOD_S)}.",
                param="budget_period",
            )

    def _check_team(self, team: str) -> None:
        if team not in self.teams:
            known = listed(sorted(self.teams)) or "none (add one under auth.teams in the policy)"
            raise InvalidRequest(
                f"Unknown team {quoted(team)}: teams are defined in the policy (auth.teams). Known teams: {known}.",
                param="team",
                code="unknown_team",
            )

    def _check_models(self, models: tuple[str, ...] | None) -> None:
        if models is None or self._model_groups is None:
            return
        unknown = [m for m in models if m not in self._model_groups]
        if unknown:
            raise InvalidRequest(
                f"Unknown model group(s) {', '.join(quoted(m) for m in unknown[:10])}"
                f"{f' and {len(unknown) - 10} more' if len(unknown) > 10 else ''}; known: "
                f"{listed(sorted(self._model_groups))}.",
                param="models",
                code="model_not_found",
            )

    def _check_within_team(self, team: str, models: tuple[str, ...] | None) -> None:
        """A team's ``models`` are a ceiling: a key may narrow them, never widen them. A key whose
        team the policy no longer has (refused while it is gone) has no ceiling to check: its
        ``models`` are bounded by the team's at each call if the team comes back."""
        known = self.teams.get(team)
        ceiling = None if known is None else known.models
        if models is None or ceiling is None:
            return
        allowed = set(ceiling)
        outside = [m for m in models if m not in allowed]
        if outside:
            raise InvalidRequest(
                f"Model group(s) {', '.join(quoted(m) for m in outside[:10])}"
                f"{f' and {len(outside) - 10} more' if len(outside) > 10 else ''} are not among "
                f"the models of team {quoted(team)} ({listed(ceiling) or 'none'}): a key's models "
                "may narrow its team's, never widen them.",
                param="models",
                code="model_not_in_team",
            )


def _found(record: KeyRecord | None, key_hash: str) -> _Cached:
    """What the store's answer is for ``key_hash``: its key (``previous`` when the hash is the
    one the key replaced), or no key. Compared in constant time: a store that matched loosely
    (collation, padding) has not found this key."""
    if record is not None:
        if hmac.compare_digest(record.hash, key_hash):
            return _Cached(0.0, record, None)
        if record.previous_hash is not None and hmac.compare_digest(record.previous_hash, key_hash):
            return _Cached(0.0, record, None, previous=True)
    return _Cached(0.0, None, None)


def _within(own: tuple[str, ...] | None, ceiling: list[str] | None) -> tuple[str, ...] | list[str] | None:
    """The models a key may call: its own within its team's (the team's list is a ceiling, so a
    team narrowed after its keys were made narrows them too); ``None`` is every model."""
    if own is None:
        return ceiling
    if ceiling is None:
        return own
    allowed = set(ceiling)
    return tuple(m for m in own if m in allowed)


def _check_label(name: str | None, description: str | None) -> None:
    """A key's name: 1 to MAX_NAME_CHARS printable characters (listings print it on a terminal:
    an escape sequence, a carriage return or a bidirectional override would act there); its
    description: at most MAX_DESCRIPTION_CHARS."""
    if name is not None:
        if not 1 <= len(name) <= MAX_NAME_CHARS:
            raise InvalidRequest(f"'name' must be 1 to {MAX_NAME_CHARS} characters.", param="name")
        if not _printable_label(name):
            raise InvalidRequest(
                "'name' must not contain control or other non-printable characters "
                "(terminal escapes, line breaks, tabs, invisible formatting).",
                param="name",
            )
    if description is not None:
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise InvalidRequest(
                f"'description' must be at most {MAX_DESCRIPTION_CHARS} characters.", param="description"
            )
        # PostgreSQL text cannot hold NUL (the insert failed: a 500), and an escape sequence
        # would act on the terminal of whoever reads the record; line breaks and tabs are prose.
        if any(_is_control(char) for char in description):
            raise InvalidRequest(
                "'description' must not contain control characters (NUL, terminal escapes); "
                "line breaks and tabs are fine.",
                param="description",
            )


# Zero-width joiner and non-joiner: format characters (so not ``isprintable``) that emoji
# sequences (a family, a flag with a symbol), Persian and the Indic scripts need inside words.
JOINERS = "\u200c\u200d"


def _printable_label(name: str) -> bool:
    """Printable characters, and joiners after a character beyond ASCII (where a script or an
    emoji sequence uses them; after ASCII they would only make two names look alike)."""
    return all(
        char.isprintable() or (char in JOINERS and i > 0 and name[i - 1] > "\x7f")
        for i, char in enumerate(name)
    )


def _is_control(char: str) -> bool:
    return (char < " " and char not in "\t\n\r") or "\x7f" <= char <= "\x9f"


def _check_grants(*grants: tuple[str, ...] | None) -> None:
    """A key's namespace grants: at most MAX_GRANTED_NAMESPACES names of a kind, each a namespace
    the memory API could be asked for (anything else grants nothing and may not fit a store)."""
    for kind, names in zip(("read", "write"), grants, strict=True):
        if names is None:
            continue
        param = f"namespaces.{kind}"
        if len(names) > MAX_GRANTED_NAMESPACES:
            raise InvalidRequest(
                f"{quoted(param)} may name at most {MAX_GRANTED_NAMESPACES} namespaces.", param=param
            )
        bad = next((i for i, name in enumerate(names) if not NAMESPACE.fullmatch(name)), None)
        if bad is not None:  # by position: the text may be anything, a terminal escape too
            raise InvalidRequest(
                f"{quoted(param)}: entry {bad + 1} of {len(names)} is not a namespace name "
                "(1-64 letters, digits, '_', '.' or '-').",
                param=param,
            )


def _busy(key_id: str) -> Conflict:
    return Conflict(
        f"Key '{key_id}' kept changing while this change was being written "
        f"({MAX_WRITE_ATTEMPTS} attempts); read it and try again.",
        param="key_id",
        code="key_changed",
    )


def _revoked(key_id: str) -> Conflict:
    return Conflict(
        f"Key '{key_id}' is revoked and cannot be changed (a rotated key is revoked: change the "
        "key it was rotated into); create a new key.",
        param="key_id",
        code="key_revoked",
    )


def _unknown_key(key_id: str) -> NotFound:
    shown = f" '{key_id}'" if KEY_ID.fullmatch(key_id) else ""  # never echo arbitrary text
    return NotFound(f"No such key{shown}.", param="key_id", code="key_not_found")
