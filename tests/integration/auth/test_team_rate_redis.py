"""A team's shared rates (h-teamrate) against a real Redis: one window per team and unit, shared by
every replica and every key of the team (new and rotated keys too), checked and counted by the
key's own admission script on one server (no round trip more), no lease for such keys (a lease's
requests would not be in the team's window), reservations settled in it, an outage counted in
process; a team without the fields costs nothing more."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import redis

from gateway.auth.identity import Caller
from gateway.auth.redis_limits import RedisLimiter
from gateway.testing.redis_server import PrivateRedis


def of_team(key_id: str, team: str = "alpha", **limits: Any) -> Caller:
    """A key of a team sharing an RPM of 3 (its own RPM, 10,000, leases when busy)."""
    limits.setdefault("team_rpm", 3)
    limits.setdefault("rpm", 10_000)
    return Caller(key_id, team, **limits)


async def _limiter(url: str, prefix: str, **kw: Any) -> RedisLimiter:
    limiter = RedisLimiter(url, prefix=prefix, op_timeout_s=2.0, **kw)
    await limiter.start()
    return limiter


def _evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_two_replicas_share_the_teams_window_for_every_key_of_the_team(
    redis_url: str, redis_prefix: str
) -> None:
    here, there = await _limiter(redis_url, redis_prefix), await _limiter(redis_url, redis_prefix)
    try:
        k1, k2 = of_team("k1"), of_team("k2")
        assert (await here.admit(k1, "a", 0)).refused is None
        assert (await here.admit(k1, "b", 0)).refused is None  # busy: would take a lease alone
        admitted = await there.admit(k2, "c", 0)
        assert admitted.refused is None
        assert admitted.team_requests is not None and admitted.team_requests.remaining == 0
        assert not here._leases and not there._leases  # no lease for a key of such a team
        for limiter in (here, there):
            for key in (k1, k2, of_team("k3"), of_team("k4", limits_id="k1")):
                refused = await limiter.admit(key, "d", 0)
                assert refused.refused == "team_requests", key
                assert 0 < refused.retry_after_s <= 60
                assert refused.team_requests is not None and refused.team_requests.limit == 3
                assert refused.requests is not None and refused.requests.remaining > 9_990  # its own
        # Another team, and keys of the team's name without the field, are admitted.
        assert (await here.admit(of_team("k5", "beta"), "e", 0)).refused is None
        for i in range(5):
            assert (await there.admit(Caller(f"n{i}", "alpha", rpm=10_000), f"f{i}", 0)).refused is None
        # The early check of an upload sees it too (h-uploadgate).
        assert (await here.peek(of_team("k6"), 0)).refused == "team_requests"
        assert (await here.peek(of_team("k7", "beta"), 0)).refused is None
    finally:
        await here.close()
        await there.close()


async def test_busy_keys_on_two_replicas_never_exceed_the_teams_rpm(
    redis_url: str, redis_prefix: str
) -> None:
    # Concurrent bursts of busy keys (each would lease alone: RPM 10,000): exactly the team's 5.
    here, there = await _limiter(redis_url, redis_prefix), await _limiter(redis_url, redis_prefix)
    try:
        keys = [of_team(f"k{i}", team_rpm=5) for i in range(4)]
        decisions = await asyncio.gather(
            *(
                limiter.admit(key, f"{key.key_id}:{limiter is here}:{i}", 0)
                for i in range(10)
                for key in keys
                for limiter in (here, there)
            )
        )
        assert sum(d.refused is None for d in decisions) == 5
        assert {d.refused for d in decisions} == {None, "team_requests"}
    finally:
        await here.close()
        await there.close()


async def test_the_teams_tokens_are_reserved_then_settled_across_replicas(
    redis_url: str, redis_prefix: str
) -> None:
    here, there = await _limiter(redis_url, redis_prefix), await _limiter(redis_url, redis_prefix)
    try:
        k1, k2 = of_team("k1", team_rpm=None, team_tpm=100), of_team("k2", team_rpm=None, team_tpm=100)
        assert (await here.admit(k1, "a", 60)).refused is None
        refused = await there.admit(k2, "b", 60)  # 120 of 100
        assert refused.refused == "team_tokens" and refused.team_tokens is not None
        assert refused.team_tokens.remaining == 40
        await here.settle(k1, "a", 60, 10, 10, 0.0)  # it used 20: the team's window counts 20
        admitted = await there.admit(k2, "b", 60)
        assert admitted.refused is None
        assert admitted.team_tokens is not None and admitted.team_tokens.remaining == 20
    finally:
        await here.close()
        await there.close()


async def test_shared_rates_cost_no_round_trip_and_a_team_without_them_no_key(
    private_redis: PrivateRedis,
) -> None:
    limiter = await _limiter(private_redis.url, "t:", lease_s=0)
    try:
        await limiter.admit(Caller("k0", "plain", rpm=100), "warm", 0)  # the script loaded (NOSCRIPT)
        for key in (Caller("k1", "plain", rpm=100, tpm=10_000), of_team("k2", team_rpm=100, team_tpm=10_000)):
            before = _evalsha_calls(private_redis.url)
            for i in range(5):
                assert (await limiter.admit(key, f"{key.key_id}:{i}", 10)).refused is None
            # One admission script per request: the team's windows checked by it, no other call.
            assert _evalsha_calls(private_redis.url) - before == 5, key
        with redis.Redis.from_url(private_redis.url) as client:
            await limiter.settle(Caller("k1", "plain", rpm=100, tpm=10_000), "k1:0", 10, 1, 1, 0.0)
            assert list(client.scan_iter(match="t:{team:plain}*")) == []  # a team without them: no key
            before = _evalsha_calls(private_redis.url)
            await limiter.settle(Caller("k1", "plain", rpm=100, tpm=10_000), "k1:1", 10, 1, 1, 0.0)
            assert _evalsha_calls(private_redis.url) - before == 1  # its key's settle alone
            before = _evalsha_calls(private_redis.url)
            await limiter.settle(of_team("k2", team_rpm=100, team_tpm=10_000), "k2:0", 10, 1, 1, 0.0)
            assert _evalsha_calls(private_redis.url) - before == 2  # and the team's correction
            found = sorted(k.decode() for k in client.scan_iter(match="t:{team:*"))
            assert found == [f"t:{{team:alpha}}:{n}" for n in ("ra", "rq", "rs", "ta", "tk", "ts")]
    finally:
        await limiter.close()


async def test_an_outage_counts_the_teams_window_in_process(private_redis: PrivateRedis) -> None:
    here = RedisLimiter(private_redis.url, prefix="t:", op_timeout_s=0.2)
    await here.start()
    pid = private_redis._popen.pid  # type: ignore[union-attr]
    try:
        assert (await here.admit(of_team("k1"), "a", 0)).refused is None
        os.kill(pid, signal.SIGSTOP)
        try:
            # limits_fail: open, Redis down: the team's window counted in this process.
            for ticket in ("b", "c", "d"):
                await here.admit(of_team("k2"), ticket, 0)
            assert (await here.admit(of_team("k3"), "e", 0)).refused == "team_requests"
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await here.close()
