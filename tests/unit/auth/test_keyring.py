"""The key ring over the real SQLite store: hash-only storage, team defaults, revoke, rotate,
expiry, and the in-process lookup cache driven by an injected clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.identity import Caller
from gateway.auth.keyring import MAX_CACHED_MISSES, KeyRing, KeySettings
from gateway.auth.records import CHECKED, LEGACY, KeyRecord, hash_secret, new_secret, secret_form
from gateway.auth.sqlite_keys import SQLiteKeyStore
from gateway.errors import Conflict, InvalidRequest, KeyStoreUnavailable, NotFound
from gateway.policy.model import Team, TeamNamespaces

TEAMS = {
    "research": Team(
        models=["gpt-4o", "claude"],
        rpm=60,
        tpm=10_000,
        budget_usd=100.0,
        budget_period=30 * 86400.0,
        namespaces=TeamNamespaces(read=["papers", "notes"], write=["notes"]),
    ),
    "ops": Team(),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(SQLiteKeyStore):
    """The real store, counting lookups by hash (what the cache should save)."""

    lookups = 0

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        return await super().find_by_hash(key_hash)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    s = CountingStore(str(tmp_path / "keys.sqlite3"))
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring(store: CountingStore, clock: Clock) -> KeyRing:
    return KeyRing(store, TEAMS, cache_s=5.0, clock=clock, model_groups={"gpt-4o", "claude", "mini"})


async def test_secret_is_shown_once_and_only_its_hash_is_stored(ring: KeyRing, tmp_path: Path) -> None:
    secret, record = await ring.create("research")
    assert secret.startswith("sk-sg-") and len(secret) == 6 + 43 + 8  # random part, checksum
    assert secret_form(secret) == CHECKED
    assert record.hash == hash_secret(secret) and record.prefix == secret[:10] + "…"
    assert record.key_id.startswith("key_") and len(record.key_id) == 16
    with sqlite3.connect(tmp_path / "keys.sqlite3") as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump and secret[6:] not in dump
    assert record.hash in dump
    listed = await ring.list()
    assert listed == [record]
    second, _ = await ring.create("research")
    assert second != secret


async def test_team_defaults_are_inherited(ring: KeyRing) -> None:
    secret, record = await ring.create("research")
    assert await ring.authenticate(secret) == Caller(
        key_id=record.key_id,
        team="research",
        models=frozenset({"gpt-4o", "claude"}),
        rpm=60,
        tpm=10_000,
        budget_usd=100.0,
        budget_period_s=30 * 86400.0,
        read_namespaces=frozenset({"papers", "notes"}),
        write_namespaces=frozenset({"notes"}),
    )
    ops_secret, _ = await ring.create("ops")
    ops = await ring.authenticate(ops_secret)
    assert ops is not None and ops.tenant == "team:ops"
    assert (ops.models, ops.rpm, ops.tpm, ops.budget_usd, ops.budget_period_s) == (None,) * 5
    assert (ops.read_namespaces, ops.write_namespaces) == (None, None)


async def test_a_keys_own_settings_override_its_teams(ring: KeyRing) -> None:
    secret, _ = await ring.create(
        "research",
        KeySettings(
            models=("claude",),
            rpm=5,
            tpm=50,
            budget_usd=1.5,
            budget_period_s=86400.0,
            namespaces_read=("papers",),
            namespaces_write=(),
        ),
    )
    caller = await ring.authenticate(secret)
    assert caller is not None
    assert (caller.models, caller.rpm, caller.tpm) == (frozenset({"claude"}), 5, 50)
    assert (caller.budget_usd, caller.budget_period_s) == (1.5, 86400.0)
    assert caller.read_namespaces == frozenset({"papers"})
    assert caller.write_namespaces == frozenset()  # none, not "the team's"
    assert not caller.may_write("notes")
    # A budget without its own period takes the team's.
    secret2, _ = await ring.create("research", KeySettings(budget_usd=2.0))
    caller2 = await ring.authenticate(secret2)
    assert caller2 is not None and caller2.budget_period_s == 30 * 86400.0


async def test_unknown_team_and_models_are_clear_errors(ring: KeyRing) -> None:
    with pytest.raises(InvalidRequest, match=r"Unknown team 'sales'.*Known teams: ops, research") as exc:
        await ring.create("sales")
    assert exc.value.code == "unknown_team"
    with pytest.raises(InvalidRequest, match="'gpt-9'") as exc2:
        await ring.create("ops", KeySettings(models=("gpt-9",)))
    assert exc2.value.param == "models"
    with pytest.raises(InvalidRequest):
        await ring.create("ops", KeySettings(rpm=0))
    assert await ring.list() == []


async def test_revoke_is_immediate_here_and_unknown_keys_are_404(ring: KeyRing) -> None:
    secret, record = await ring.create("ops")
    assert await ring.authenticate(secret) is not None  # now cached
    revoked = await ring.revoke(record.key_id)
    assert revoked.revoked_at is not None
    assert await ring.authenticate(secret) is None  # this replica dropped its cache entry
    with pytest.raises(NotFound):
        await ring.revoke("key_doesnotexist")
    with pytest.raises(NotFound) as exc:
        await ring.revoke("'; DROP TABLE virtual_keys; --")
    assert "DROP" not in exc.value.message  # never echoed


async def test_rotate_keeps_settings_and_retires_the_old_secret(ring: KeyRing, clock: Clock) -> None:
    old_secret, old = await ring.create(
        "research", KeySettings(rpm=7, models=("claude",), expires_in_s=86400.0, name="ci")
    )
    assert await ring.authenticate(old_secret) is not None
    clock.now += 10
    new_secret, new = await ring.rotate(old.key_id)
    assert new_secret != old_secret and new.key_id != old.key_id
    assert (new.team, new.rpm, new.models, new.expires_at, new.name) == (
        "research",
        7,
        ("claude",),
        old.expires_at,
        "ci",
    )
    assert new.created_at == clock.now and new.revoked_at is None
    assert await ring.authenticate(old_secret) is None
    caller = await ring.authenticate(new_secret)
    assert caller is not None and caller.rpm == 7 and caller.tenant == "team:research"
    with pytest.raises(Conflict) as exc:
        await ring.rotate(old.key_id)
    assert exc.value.code == "key_revoked"


async def test_expired_keys_are_refused_even_from_the_cache(ring: KeyRing, clock: Clock) -> None:
    secret, record = await ring.create("ops", KeySettings(expires_in_s=3.0))
    assert await ring.authenticate(secret) is not None
    clock.now += 3.0  # still within the 5 s cache entry, but past the key's expiry
    assert await ring.authenticate(secret) is None
    with pytest.raises(Conflict) as exc:
        await ring.rotate(record.key_id)
    assert exc.value.code == "key_expired"


async def test_lookups_found_or_not_are_cached_for_cache_s(
    ring: KeyRing, store: CountingStore, clock: Clock
) -> None:
    secret, _ = await ring.create("ops")
    for _ in range(5):
        assert await ring.authenticate(secret) is not None
        assert await ring.authenticate("sk-sg-" + "x" * 43) is None
    assert store.lookups == 2  # one per secret
    clock.now += 5.0
    assert await ring.authenticate(secret) is not None
    assert store.lookups == 3


async def test_a_revocation_elsewhere_is_seen_within_cache_s(store: CountingStore, clock: Clock) -> None:
    # Two replicas over one store: one revokes, the other sees it when its entry expires.
    here = KeyRing(store, TEAMS, cache_s=5.0, clock=clock)
    there = KeyRing(store, TEAMS, cache_s=5.0, clock=clock)
    secret, record = await here.create("ops")
    assert await there.authenticate(secret) is not None
    await here.revoke(record.key_id)
    clock.now += 4.9
    assert await there.authenticate(secret) is not None  # the documented window
    clock.now += 0.1
    assert await there.authenticate(secret) is None
    # And a key created elsewhere after a cached miss is found once the miss expires.
    secret2, _ = await here.create("ops")
    assert await there.authenticate(secret2) is not None  # never looked up before: found at once


async def test_the_miss_cache_is_bounded(store: CountingStore, clock: Clock) -> None:
    ring = KeyRing(store, TEAMS, clock=clock, lookup_burst=2 * MAX_CACHED_MISSES)
    for i in range(MAX_CACHED_MISSES + 50):
        await ring.authenticate(f"sk-sg-{i:043d}")  # the old form: looked up, and remembered
    assert len(ring._misses) == MAX_CACHED_MISSES


def test_secret_forms() -> None:
    assert secret_form(new_secret()) == CHECKED
    assert secret_form("sk-sg-" + "a" * 43) == LEGACY  # as keys were issued before checksums
    for other in (
        "sk-sg-",
        "sk-sg-" + "a" * 42,
        "sk-sg-" + "a" * 44,
        "sk-sg-" + "é" * 43,
        "sk-sg-" + "a" * 43 + "\n",
    ):
        assert secret_form(other) is None
    assert secret_form("sk-sg-" + "a" * 51) is None  # the current form's length, a wrong checksum


class PausingStore(SQLiteKeyStore):
    """The real store, whose lookups by hash wait for ``go`` once ``pause`` is set."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.pause = False
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        record = await super().find_by_hash(key_hash)
        if self.pause:
            self.waiting.set()
            await self.go.wait()
        return record


async def test_a_lookup_under_way_when_the_key_is_revoked_is_not_cached(tmp_path: Path, clock: Clock) -> None:
    store = PausingStore(str(tmp_path / "keys.sqlite3"))
    await store.start()
    try:
        ring = KeyRing(store, TEAMS, cache_s=300.0, clock=clock)
        secret, record = await ring.create("ops")
        store.pause = True
        # The store read the key (active) just before the revocation; its answer comes after.
        lookup = asyncio.ensure_future(ring.authenticate(secret))
        await store.waiting.wait()
        store.pause = False
        await ring.revoke(record.key_id)
        store.go.set()
        assert await lookup is not None  # that request asked before the revocation
        assert await ring.authenticate(secret) is None  # nothing stale was kept for 300 s
    finally:
        await store.close()


async def test_a_policy_reload_looks_found_keys_up_again_outside_the_allowance(
    store: CountingStore, clock: Clock
) -> None:
    ring = KeyRing(store, TEAMS, clock=clock, lookup_burst=2, lookups_per_s=0.0)
    secret, _ = await ring.create("ops")
    assert await ring.authenticate(secret) is not None
    assert await ring.authenticate(secret[:-8] + "AAAAAAAA") is None  # a wrong checksum: no lookup
    assert store.lookups == 1
    ring.reconfigure({"ops": Team(rpm=7)}, 5.0, None)
    caller = await ring.authenticate(secret)
    assert caller is not None and caller.rpm == 7  # the reloaded team, from a new lookup
    assert store.lookups == 2
    # Unknown keys of the current form share what is left of the allowance: one more lookup.
    assert await ring.authenticate(new_secret()) is None  # a right checksum, but no such key
    with pytest.raises(KeyStoreUnavailable):
        await ring.authenticate(new_secret())
    assert store.lookups == 3


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        (KeySettings(name=""), "name"),
        (KeySettings(name="x" * 201), "name"),
        (KeySettings(name="x\x1b[31mred"), "name"),  # a terminal escape
        (KeySettings(name="a\rb"), "name"),
        (KeySettings(name="tab\there"), "name"),
        (KeySettings(name="\x9b31m"), "name"),  # the one-byte CSI some terminals act on
        (KeySettings(name="evil\u202egnp.exe"), "name"),  # a right-to-left override
        (KeySettings(description="d" * 2001), "description"),
        (KeySettings(budget_usd=1.0, budget_period_s=0.5), "budget_period"),
        (KeySettings(budget_period_s=0.0001), "budget_period"),
    ],
)
async def test_create_refuses_bad_names_and_periods_whoever_calls(
    ring: KeyRing, settings: KeySettings, param: str
) -> None:
    # The admin API and the keys CLI both create through KeyRing.create: one set of checks.
    with pytest.raises(InvalidRequest) as exc:
        await ring.create("ops", settings)
    assert exc.value.param == param
    assert await ring.list() == []


async def test_create_keeps_good_names_and_the_shortest_period(ring: KeyRing) -> None:
    _, record = await ring.create(
        "ops", KeySettings(name="CI – nightly 🚀", description="x" * 2000, budget_period_s=1.0)
    )
    assert (record.name, record.budget_period_s) == ("CI – nightly 🚀", 1.0)


@pytest.mark.parametrize(
    "secret",
    [
        "' OR '1'='1",
        "sk-sg-' OR 1=1; --",
        'sk-sg-"; DROP TABLE virtual_keys; --',
        "",
        "sk-sg-" + "\x00" * 10,
        "x" * 10_000,
    ],
)
async def test_sql_looking_and_odd_secrets_are_just_unknown(ring: KeyRing, secret: str) -> None:
    real, _ = await ring.create("ops")
    assert await ring.authenticate(secret) is None
    assert await ring.authenticate(real) is not None  # the table is still there


async def test_a_key_whose_team_left_the_policy_is_refused(store: CountingStore, clock: Clock) -> None:
    secret, _ = await KeyRing(store, TEAMS, clock=clock).create("ops")
    assert await KeyRing(store, {"research": TEAMS["research"]}, clock=clock).authenticate(secret) is None


async def test_a_grace_lets_the_old_secret_in_as_the_new_key_until_its_time(
    ring: KeyRing, store: CountingStore, clock: Clock
) -> None:
    old_secret, old = await ring.create("research", KeySettings(rpm=7))
    assert await ring.authenticate(old_secret) is not None  # cached in this process
    new_secret, new = await ring.rotate(old.key_id, grace_s=60.0)
    assert (new.previous_hash, new.previous_until) == (old.hash, clock.now + 60.0)
    by_old = await ring.authenticate(old_secret)
    by_new = await ring.authenticate(new_secret)
    assert by_old is not None and by_new is not None
    assert by_old.key_id == by_new.key_id == new.key_id and by_old.rpm == 7  # one key, one count
    assert (by_old.previous_secret, by_new.previous_secret) == (True, False)
    lookups = store.lookups
    clock.now += 57.0  # the old secret's entry was refreshed (cache_s 5 s): cached past the end
    assert await ring.authenticate(old_secret) is not None
    clock.now += 3.0  # the grace's end, within that cached entry
    assert await ring.authenticate(old_secret) is None
    assert await ring.authenticate(new_secret) is not None
    assert store.lookups == lookups + 2  # one each at 57 s: the end was judged from the cache


async def test_a_grace_ends_with_a_revocation_a_second_rotation_or_the_keys_expiry(
    ring: KeyRing, clock: Clock
) -> None:
    first, key = await ring.create("ops", KeySettings(expires_in_s=100.0))
    second, key2 = await ring.rotate(key.key_id, grace_s=3600.0)
    assert await ring.authenticate(first) is not None
    third, key3 = await ring.rotate(key2.key_id, grace_s=3600.0)  # only the last secret is kept
    assert await ring.authenticate(first) is None
    assert await ring.authenticate(second) is not None
    clock.now += 100.0  # the key expires: its grace with it
    assert await ring.authenticate(second) is None
    clock.now -= 100.0
    await ring.revoke(key3.key_id)  # forgets the cached previous secret at once
    assert await ring.authenticate(second) is None and await ring.authenticate(third) is None


async def test_revoking_the_rotated_out_id_ends_the_grace_of_its_secret(ring: KeyRing) -> None:
    """An operator whose old secret leaked revokes the old id: it answered "revoked" and the
    secret went on working, as the new key, until the grace ended (an outside probe). The new
    key and its own secret are untouched."""
    old_secret, old = await ring.create("ops")
    new_secret, new = await ring.rotate(old.key_id, grace_s=600.0)
    other_secret, _ = await ring.create("ops")  # another key of the team: untouched
    assert await ring.authenticate(old_secret) is not None
    await ring.revoke(old.key_id)
    assert await ring.authenticate(old_secret) is None
    assert await ring.authenticate(new_secret) is not None
    assert await ring.authenticate(other_secret) is not None
    assert (await ring.get(new.key_id)).revoked_at is None


@pytest.mark.parametrize("grace_s", [-1.0, 7 * 86400.0 + 1, float("nan"), float("inf")])
async def test_a_grace_out_of_bounds_is_refused(ring: KeyRing, grace_s: float) -> None:
    _, key = await ring.create("ops")
    with pytest.raises(InvalidRequest) as exc:
        await ring.rotate(key.key_id, grace_s)
    assert exc.value.param == "grace_s"


# ----- (h-keyupdate) a key's settings changed in place


async def test_update_changes_the_cached_caller_at_once_and_keeps_the_rest(
    ring: KeyRing, store: CountingStore, clock: Clock
) -> None:
    secret, key = await ring.create(
        "research", KeySettings(rpm=2, models=("claude",), budget_usd=5.0, name="ci")
    )
    caller = await ring.authenticate(secret)
    assert caller is not None and (caller.rpm, caller.models, caller.budget_usd) == (
        2,
        frozenset({"claude"}),
        5.0,
    )
    clock.now += 1
    before, after = await ring.update(
        key.key_id, KeySettings(rpm=5, models=None, budget_usd=None), ["rpm", "models", "budget_usd"]
    )
    assert before == key
    assert (after.rpm, after.models, after.budget_usd, after.name) == (5, None, None, "ci")
    assert (after.key_id, after.hash, after.team, after.created_at) == (
        key.key_id,
        key.hash,
        "research",
        key.created_at,
    )
    assert await store.get(key.key_id) == after
    lookups = store.lookups
    caller = await ring.authenticate(secret)  # within cache_s of the cached lookup: dropped, read again
    assert store.lookups == lookups + 1
    # rpm its own; models and budget back to the team's.
    assert caller is not None and caller.rpm == 5 and caller.models == frozenset({"gpt-4o", "claude"})
    assert (caller.budget_usd, caller.budget_period_s) == (100.0, 30 * 86400.0)


async def test_update_checks_as_create_and_refuses_revoked_and_unknown_keys(ring: KeyRing) -> None:
    _, key = await ring.create("research")
    with pytest.raises(InvalidRequest) as exc:
        await ring.update(key.key_id, KeySettings(models=("mini",)), ["models"])  # known, not the team's
    assert exc.value.code == "model_not_in_team"
    for settings, given, param in (
        (KeySettings(rpm=0), ["rpm"], "rpm"),
        (KeySettings(name="a\x1b[2Jb"), ["name"], "name"),
        (KeySettings(budget_period_s=0.5), ["budget_period_s"], "budget_period"),
        (KeySettings(namespaces_read=("bad name",)), ["namespaces_read"], "namespaces.read"),
    ):
        with pytest.raises(InvalidRequest) as exc:
            await ring.update(key.key_id, settings, given)
        assert exc.value.param == param
    with pytest.raises(InvalidRequest) as exc:
        await ring.update(key.key_id, KeySettings(), [])
    assert exc.value.code == "nothing_to_change"
    assert await ring.get(key.key_id) == key  # nothing written
    with pytest.raises(NotFound):
        await ring.update("key_doesnotexist", KeySettings(rpm=3), ["rpm"])
    await ring.revoke(key.key_id)
    with pytest.raises(Conflict) as conflict:
        await ring.update(key.key_id, KeySettings(rpm=3), ["rpm"])
    assert (conflict.value.status, conflict.value.code) == (409, "key_revoked")


async def test_a_rotated_keys_new_id_takes_the_update_counted_as_its_first(ring: KeyRing) -> None:
    first_secret, first = await ring.create("ops", KeySettings(rpm=2))
    graced_secret, second = await ring.rotate(first.key_id)
    new_secret, third = await ring.rotate(second.key_id, grace_s=600.0)
    for secret in (graced_secret, new_secret):  # both cached, as the third key
        caller = await ring.authenticate(secret)
        assert caller is not None and caller.rpm == 2
    with pytest.raises(Conflict):  # the rotated-out key is revoked: change the key it became
        await ring.update(second.key_id, KeySettings(rpm=5), ["rpm"])
    _, after = await ring.update(third.key_id, KeySettings(rpm=5), ["rpm"])
    assert after.limits_id == first.key_id  # still counted as the first key of its rotations
    for secret in (graced_secret, new_secret):  # the grace's secret is the same key: both dropped
        caller = await ring.authenticate(secret)
        assert caller is not None and (caller.key_id, caller.rpm, caller.counted_as) == (
            third.key_id,
            5,
            first.key_id,
        )
    assert await ring.authenticate(first_secret) is None


async def test_an_expired_key_may_be_given_a_new_lifetime(ring: KeyRing, clock: Clock) -> None:
    secret, key = await ring.create("ops", KeySettings(expires_in_s=10.0))
    rotated_secret, key = await ring.rotate(key.key_id, grace_s=3600.0)
    clock.now += 20.0
    assert await ring.authenticate(rotated_secret) is None
    _, still = await ring.update(key.key_id, KeySettings(rpm=3), ["rpm"])  # changed, still expired
    assert not still.is_active(clock.now)
    _, renewed = await ring.update(key.key_id, KeySettings(expires_in_s=86400.0), ["expires_in_s"])
    assert renewed.expires_at == clock.now + 86400.0
    assert await ring.authenticate(rotated_secret) is not None
    assert await ring.authenticate(secret) is None  # its grace ended with the expiry: not revived
    _, forever = await ring.update(key.key_id, KeySettings(expires_in_s=None), ["expires_in_s"])
    assert forever.expires_at is None


async def test_forget_key_drops_a_change_made_elsewhere_by_its_id_alone(
    store: CountingStore, clock: Clock
) -> None:
    # Two replicas over one store, a long cache; ``there`` hears of each change by key id only
    # (the key bus's message) and looks the key up again at once (before: no such method).
    here = KeyRing(store, TEAMS, cache_s=300.0, clock=clock)
    there = KeyRing(store, TEAMS, cache_s=300.0, clock=clock)
    secret, key = await here.create("ops", KeySettings(rpm=2))
    other_secret, other = await here.create("ops")
    assert await there.authenticate(secret) is not None
    assert await there.authenticate(other_secret) is not None
    await here.update(key.key_id, KeySettings(rpm=9), ["rpm"])
    assert (await there.authenticate(secret)).rpm == 2  # type: ignore[union-attr]  # cached
    assert there.forget_key(key.key_id) == 1
    assert (await there.authenticate(secret)).rpm == 9  # type: ignore[union-attr]
    lookups = store.lookups
    assert await there.authenticate(other_secret) is not None  # another key's entry kept
    assert store.lookups == lookups

    # A rotation with a grace: the old secret, cached as the old key, is read again as the new
    # key; ending the grace then drops it by the new key's id.
    rotated_secret, rotated = await here.rotate(other.key_id, grace_s=60.0)
    assert there.forget_key(other.key_id) == 1
    by_old = await there.authenticate(other_secret)
    assert by_old is not None and by_old.key_id == rotated.key_id and by_old.previous_secret
    assert await there.authenticate(rotated_secret) is not None
    await here.end_grace(rotated.key_id)
    assert there.forget_key(rotated.key_id) == 2  # the new secret and the grace's
    assert await there.authenticate(other_secret) is None
    assert await there.authenticate(rotated_secret) is not None

    # An expired key's refusal is cached with its id: renewed elsewhere, it is let in at once.
    brief_secret, brief = await here.create("ops", KeySettings(expires_in_s=10.0))
    clock.now += 11.0
    assert await there.authenticate(brief_secret) is None  # cached as refused for 300 s
    await here.update(brief.key_id, KeySettings(expires_in_s=3600.0), ["expires_in_s"])
    assert await there.authenticate(brief_secret) is None
    assert there.forget_key(brief.key_id) == 1
    assert await there.authenticate(brief_secret) is not None


async def test_forget_all_looks_every_key_up_again(store: CountingStore, clock: Clock) -> None:
    here = KeyRing(store, TEAMS, cache_s=300.0, clock=clock)
    there = KeyRing(store, TEAMS, cache_s=300.0, clock=clock)
    secret, key = await here.create("ops")
    assert await there.authenticate(secret) is not None
    await here.revoke(key.key_id)  # its announcement lost
    assert await there.authenticate(secret) is not None
    there.forget_all()
    assert await there.authenticate(secret) is None


class Interleaved(SQLiteKeyStore):
    """The real store; before each write of a key's settings (``update``, ``replace``) it runs
    ``meanwhile`` (another admin's change, through another ring over the same file), once
    unless ``always``: the change lands between the writer's read and its write."""

    meanwhile: Callable[[], Awaitable[object]] | None = None
    always = False

    async def update(self, *args: Any, **kwargs: Any) -> bool:
        await self._interleave()
        return await super().update(*args, **kwargs)

    async def replace(self, *args: Any, **kwargs: Any) -> bool:
        await self._interleave()
        return await super().replace(*args, **kwargs)

    async def _interleave(self) -> None:
        step = self.meanwhile
        if not self.always:
            self.meanwhile = None
        if step is not None:
            await step()


@pytest.fixture
async def two_admins(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[KeyRing, Interleaved, KeyRing]]:
    """A ring whose writes another ring (over the same SQLite file) can race, and that ring."""
    path = str(tmp_path / "raced.sqlite3")
    racing, other = Interleaved(path), SQLiteKeyStore(path)
    await racing.start()
    await other.start()
    groups = {"gpt-4o", "claude", "mini"}
    yield (
        KeyRing(racing, TEAMS, cache_s=5.0, clock=clock, model_groups=groups),
        racing,
        KeyRing(other, TEAMS, cache_s=5.0, clock=clock, model_groups=groups),
    )
    await racing.close()
    await other.close()


async def test_a_patch_landing_during_a_rotation_is_carried_into_the_new_key(
    two_admins: tuple[KeyRing, Interleaved, KeyRing],
) -> None:
    ring, store, other = two_admins
    _, key = await ring.create("research", KeySettings(rpm=2, name="ci"))
    store.meanwhile = lambda: other.update(key.key_id, KeySettings(rpm=7), ["rpm"])
    secret, new = await ring.rotate(key.key_id)
    # Before: the rotation wrote the settings it had read (rpm 2), so the PATCH (answered 200)
    # was lost with the old key it changed.
    assert (new.rpm, new.name) == (7, "ci")
    assert (await ring.get(new.key_id)).rpm == 7
    old = await ring.get(key.key_id)
    assert old.revoked_at is not None and old.rpm == 7  # the PATCH landed on it, then it was rotated
    caller = await ring.authenticate(secret)
    assert caller is not None and caller.rpm == 7


async def test_two_patches_of_different_fields_at_once_keep_both(
    two_admins: tuple[KeyRing, Interleaved, KeyRing],
) -> None:
    ring, store, other = two_admins
    _, key = await ring.create("research", KeySettings(rpm=2, tpm=500))
    store.meanwhile = lambda: other.update(key.key_id, KeySettings(tpm=900), ["tpm"])
    _, after = await ring.update(key.key_id, KeySettings(rpm=5), ["rpm"])
    # Before: the second writer's whole row undid the first's tpm.
    assert (after.rpm, after.tpm) == (5, 900)
    stored = await ring.get(key.key_id)
    assert (stored.rpm, stored.tpm) == (5, 900)


async def test_a_rotation_landing_during_a_patch_refuses_the_patch(
    two_admins: tuple[KeyRing, Interleaved, KeyRing],
) -> None:
    ring, store, other = two_admins
    _, key = await ring.create("research", KeySettings(rpm=2))
    rotated: list[KeyRecord] = []

    async def rotate() -> None:
        rotated.append((await other.rotate(key.key_id))[1])

    store.meanwhile = rotate
    with pytest.raises(Conflict) as conflict:
        await ring.update(key.key_id, KeySettings(rpm=5), ["rpm"])
    assert conflict.value.code == "key_revoked"  # change the key it was rotated into
    assert (await ring.get(rotated[0].key_id)).rpm == 2


async def test_a_key_that_keeps_changing_is_a_conflict_not_a_loop(
    two_admins: tuple[KeyRing, Interleaved, KeyRing],
) -> None:
    ring, store, other = two_admins
    _, key = await ring.create("research", KeySettings(rpm=2))
    changes = iter(range(10, 100))
    store.meanwhile = lambda: other.update(key.key_id, KeySettings(rpm=next(changes)), ["rpm"])
    store.always = True
    with pytest.raises(Conflict) as conflict:
        await ring.update(key.key_id, KeySettings(tpm=5), ["tpm"])
    assert (conflict.value.status, conflict.value.code) == (409, "key_changed")
    with pytest.raises(Conflict) as conflict:
        await ring.rotate(key.key_id)
    assert conflict.value.code == "key_changed"
    store.always = False
    store.meanwhile = None
    stored = await ring.get(key.key_id)
    assert stored.tpm is None and stored.revoked_at is None  # neither written


@pytest.mark.parametrize("expires_in_s", [0.001, 1e-7, 0.999])
async def test_a_lifetime_under_a_second_is_refused(ring: KeyRing, expires_in_s: float) -> None:
    """It made a key expired by the time it was listed, with a success (an outside probe)."""
    with pytest.raises(InvalidRequest) as exc:
        await ring.create("ops", KeySettings(expires_in_s=expires_in_s))
    assert exc.value.param == "expires"
    _, key = await ring.create("ops", KeySettings(expires_in_s=1.0))
    assert key.expires_at is not None
