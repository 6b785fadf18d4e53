"""The rollout stores on real Redis and a real file: create once, compare-and-set, rollback wins,
and two controllers on one Redis store: only one advances a step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.routing.redis_rollout_store import RedisRolloutStore
from gateway.routing.rollout_state import RolloutKey, RolloutState
from gateway.routing.rollout_store import FileRolloutStore, RolloutStore
from tests.unit.routing.test_rollout import KEY, Clock, Rig

OTHER = RolloutKey("g/with:colon", "prov", "org/model:8b")


@pytest.fixture(params=["redis", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RolloutStore]:
    made: RolloutStore
    if request.param == "redis":
        made = RedisRolloutStore(
            request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        )
    else:
        made = FileRolloutStore(tmp_path / "state" / "rollouts.json")
    await made.start()
    yield made
    await made.close()


async def test_create_cas_rollback_delete(store: RolloutStore) -> None:
    first = RolloutState.initial(100.0)
    assert await store.load(KEY) is None
    written, stored = await store.write(KEY, "create", first)
    assert written and stored == RolloutState("pending_smoke", 0, 100.0, "", 100.0, 1, 100.0)
    written, again = await store.write(KEY, "create", RolloutState.initial(200.0))
    assert not written and again == stored  # the first creator wins
    assert stored is not None
    rolling = stored.moved("rolling", 150.0)
    written, now = await store.write(KEY, "cas", rolling, expected_version=1)
    assert written and now is not None and (now.status, now.version) == ("rolling", 2)
    stale, kept = await store.write(KEY, "cas", stored.moved("paused", 151.0), expected_version=1)
    assert not stale and kept == now  # a writer that read version 1 lost
    back = now.moved("rolled_back", 152.0, reason="error rate 9%")
    written, after = await store.write(KEY, "rollback", back, expected_version=0)  # any version
    assert (
        written
        and after is not None
        and (after.status, after.reason, after.version)
        == (
            "rolled_back",
            "error rate 9%",
            3,
        )
    )
    written, _ = await store.write(KEY, "rollback", back, expected_version=0)
    assert not written  # finished: a rollback does not apply twice
    await store.write(OTHER, "create", first)
    assert await store.keys() == sorted([KEY, OTHER])
    assert await store.load(OTHER) is not None  # names with / and : round-trip
    await store.delete(KEY)
    assert await store.load(KEY) is None and await store.keys() == [OTHER]


async def test_touch_and_tombstones(store: RolloutStore) -> None:
    await store.touch(KEY, 50.0)
    assert await store.load(KEY) is None  # touching no state makes none
    written, _ = await store.write(KEY, "remove", RolloutState.removed(60.0))
    assert not written and await store.load(KEY) is None  # nothing to remove
    _, created = await store.write(KEY, "create", RolloutState.initial(100.0))
    assert created is not None
    await store.touch(KEY, 130.0)
    touched = await store.load(KEY)
    assert touched == RolloutState("pending_smoke", 0, 100.0, "", 100.0, 1, 130.0)  # no new version
    written, removed = await store.write(KEY, "remove", RolloutState.removed(140.0))
    assert (
        written
        and removed is not None
        and (removed.status, removed.updated_at, removed.version)
        == (
            "removed",
            140.0,
            2,
        )
    )
    again, _ = await store.write(KEY, "remove", RolloutState.removed(150.0))
    assert not again  # the first tombstone's time is kept
    back = removed.moved("rolled_back", 160.0, reason="x")
    assert not (await store.write(KEY, "rollback", back))[0]  # a rollback does not revive it
    written, fresh = await store.write(KEY, "cas", RolloutState.initial(170.0), expected_version=2)
    assert written and fresh is not None and (fresh.status, fresh.version) == ("pending_smoke", 3)


async def test_file_store_changes_from_several_processes_are_all_kept(tmp_path: Path) -> None:
    """The workers of ``serve --workers N`` share the file: each change holds an flock, so none
    is written over (without it two processes making 200 changes each kept about half)."""
    import subprocess
    import sys

    path = tmp_path / "rollouts.json"
    program = f"""
import asyncio, sys
from gateway.routing.rollout_state import RolloutKey, RolloutState
from gateway.routing.rollout_store import FileRolloutStore
async def main(name):
    store, key = FileRolloutStore({str(path)!r}), RolloutKey("g", name, "m")
    await store.write(key, "create", RolloutState.initial(1.0))
    for version in range(1, 201):
        written, _ = await store.write(key, "cas", RolloutState.initial(1.0), version)
        assert written, version
asyncio.run(main(sys.argv[1]))
"""
    runs = [subprocess.Popen([sys.executable, "-c", program, name]) for name in ("p1", "p2")]
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    store = FileRolloutStore(path)
    versions = [(await store.load(RolloutKey("g", name, "m"))) for name in ("p1", "p2")]
    assert [v.version if v is not None else None for v in versions] == [201, 201]


async def test_file_store_survives_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "rollouts.json"
    one = FileRolloutStore(path)
    await one.write(KEY, "create", RolloutState.initial(5.0))
    assert not list(tmp_path.glob(".rollouts.*"))  # the temporary file was renamed over
    assert await FileRolloutStore(path).load(KEY) == RolloutState("pending_smoke", 0, 5.0, "", 5.0, 1, 5.0)


async def test_two_controllers_on_one_redis_store_only_one_advances(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    stores = [RedisRolloutStore(redis_url, redis_prefix) for _ in range(2)]
    for s in stores:
        await s.start()
    try:
        clock = Clock()  # one wall clock for both replicas
        a, b = (Rig(tmp_path, store=s, clock=clock) for s in stores)
        await a.started()
        await b.ctl.tick()
        assert b.share() == 0.10  # picked up from the store, no smoke prompts of its own
        assert b.smoke_calls == 0
        a.traffic(20)
        b.traffic(20)
        a.clock.now += 60
        await asyncio.gather(a.ctl.tick(), b.ctl.tick())
        state = await a.state()
        assert (state.status, state.step_index, state.version) == ("rolling", 1, 3)  # one step, one write
        await asyncio.gather(a.ctl.tick(), b.ctl.tick())
        assert (a.share(), b.share()) == (0.25, 0.25)
        # A rollback on one replica wins over a step change on the other.
        a.traffic(20)  # healthy on a
        b.traffic(20, errors=20)  # failing on b
        a.clock.now += 60
        await asyncio.gather(a.ctl.tick(), b.ctl.tick())
        await asyncio.gather(a.ctl.tick(), b.ctl.tick())
        state = await a.state()
        assert state.status == "rolled_back" and "error rate 100.0%" in state.reason
        assert (a.share(), b.share()) == (0, 0)
    finally:
        for s in stores:
            await s.close()
