"""Where rollout states live: Redis when ``REDIS_URL`` is set (replicas share them), else a small
JSON file (``$SOPHIA_STATE_DIR/rollouts.json``). Both survive a restart and a policy reload.

Every write says how it may apply (``WriteMode``), and the store decides atomically:

    create    only if the rollout has no state yet (the first replica to see it creates it)
    cas       only if the stored ``version`` is the one the writer read (a step change, a
              pause...: of two replicas advancing the same step, one wins)
    rollback  unless the rollout has finished (promoted, rolled back, aborted) or was removed:
              a rollback always wins over a concurrent step change
    remove    the tombstone of a rollout a replica's policy dropped, over any state but another
              tombstone (none is written where there is no state)

``touch`` sets a state's ``seen_at`` alone (no version change): the replicas running a rollout
say so about every ``rollout.TOUCH_S``, so a state nobody runs any more can be told apart.

Each applied write sets ``version`` to the stored one plus one. In Redis a rollout is one hash,
``{prefix}{group}:{provider}:{model}`` (parts percent-encoded), written by one Lua script. A reply
of another shape than the command's (a server on the port that speaks RESP but is not the Redis
the script runs on) raises ``InvalidResponse``, a ``RedisError``: the callers take it for Redis
down, as they take the other failures (``redis_link.FAILURES``), not for a bug.

The Redis store is ``redis_rollout_store.RedisRolloutStore``: a module of its own, so a gateway
without ``REDIS_URL`` never imports redis-py (~0.15 s of imports).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import orjson

from gateway.routing.rollout_state import FINISHED, RolloutKey, RolloutState

WriteMode = Literal["create", "cas", "rollback", "remove"]
OP_TIMEOUT_S = 1.0


class RolloutStore(Protocol):
    """The rollout states (see the module docstring)."""

    # What the store raises when it cannot be reached: the controller keeps the last state on
    # them (a 503 for an action by hand), and takes anything else for a bug.
    failures: tuple[type[Exception], ...]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self, key: RolloutKey) -> RolloutState | None:
        """The stored state, None when there is none."""
        ...

    async def write(
        self, key: RolloutKey, mode: WriteMode, state: RolloutState, expected_version: int = 0
    ) -> tuple[bool, RolloutState | None]:
        """Write ``state`` if ``mode`` allows it; (whether it was written, the stored state now)."""
        ...

    async def keys(self) -> list[RolloutKey]:
        """Every rollout with a stored state."""
        ...

    async def delete(self, key: RolloutKey) -> None: ...

    async def touch(self, key: RolloutKey, now: float) -> None:
        """Set the stored state's ``seen_at`` to ``now`` (nothing when there is no state)."""
        ...


def applies(mode: WriteMode, current: RolloutState | None, expected_version: int) -> bool:
    """Whether a ``mode`` write applies over ``current`` (the rule both stores follow)."""
    if mode == "create":
        return current is None
    if current is None:
        return False
    if mode == "cas":
        return current.version == expected_version
    if mode == "remove":
        return current.status != "removed"
    return current.status not in FINISHED and current.status != "removed"


class FileRolloutStore:
    """Rollout states in one small JSON file, for a gateway without Redis: rewritten whole on
    every change (a temporary file renamed over it, so a crash never leaves half a file), read
    again on every load (so ``rollout`` commands of a restarted process see the last writes).
    Written off the event loop. Each change (read, decide, rewrite) holds an ``flock`` on a
    file beside it, so the workers of ``serve --workers N`` (which share the file) never write
    over one another's changes: without it, two workers' changes made at once kept only one,
    and a lost rollback put a failing candidate back in the plan."""

    failures: tuple[type[Exception], ...] = (OSError, TimeoutError)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = asyncio.Lock()  # one change at a time in this process (the flock: across them)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path.with_name(self._path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _change(
        self, change: Callable[[dict[str, RolloutState]], tuple[bool, RolloutState | None]]
    ) -> tuple[bool, RolloutState | None]:
        """Read, ``change`` in place (whether to write, what to return), write: under the flock."""
        with self._locked():
            states = self._read()
            changed, result = change(states)
            if changed:
                self._write(states)
            return changed, result

    async def start(self) -> None:
        pass  # the directory is made on the first write: a gateway without rollouts leaves no trace

    async def close(self) -> None:
        pass

    async def load(self, key: RolloutKey) -> RolloutState | None:
        return (await asyncio.to_thread(self._read)).get(key.id)

    async def write(
        self, key: RolloutKey, mode: WriteMode, state: RolloutState, expected_version: int = 0
    ) -> tuple[bool, RolloutState | None]:

        def change(states: dict[str, RolloutState]) -> tuple[bool, RolloutState | None]:
            current = states.get(key.id)
            if not applies(mode, current, expected_version):
                return False, current
            version = current.version + 1 if current is not None else 1
            states[key.id] = replace(state, version=version)
            return True, states[key.id]

        async with self._lock:
            return await asyncio.to_thread(self._change, change)

    async def keys(self) -> list[RolloutKey]:
        ids = await asyncio.to_thread(self._read)
        return sorted(k for k in map(RolloutKey.from_id, ids) if k is not None)

    async def delete(self, key: RolloutKey) -> None:
        def change(states: dict[str, RolloutState]) -> tuple[bool, RolloutState | None]:
            return states.pop(key.id, None) is not None, None

        async with self._lock:
            await asyncio.to_thread(self._change, change)

    async def touch(self, key: RolloutKey, now: float) -> None:
        def change(states: dict[str, RolloutState]) -> tuple[bool, RolloutState | None]:
            current = states.get(key.id)
            if current is None:
                return False, None
            states[key.id] = replace(current, seen_at=now)
            return True, None

        async with self._lock:
            await asyncio.to_thread(self._change, change)

    def _read(self) -> dict[str, RolloutState]:
        try:
            raw = orjson.loads(self._path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError:
            return {}  # not ours, or damaged: start over rather than refuse to start
        rollouts = raw.get("rollouts") if isinstance(raw, dict) else None
        out: dict[str, RolloutState] = {}
        for rid, fields in (rollouts or {}).items():
            state = RolloutState.from_fields(fields) if isinstance(fields, dict) else None
            if state is not None:
                out[rid] = state
        return out

    def _write(self, states: dict[str, RolloutState]) -> None:
        data = orjson.dumps(
            {"rollouts": {rid: s.fields() for rid, s in sorted(states.items())}}, option=orjson.OPT_INDENT_2
        )
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rollouts.", dir=self._path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


if TYPE_CHECKING:

    def _conforms(file_store: FileRolloutStore) -> list[RolloutStore]:
        return [file_store]
