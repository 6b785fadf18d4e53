"""Rollout states in Redis, shared by every replica: one hash a rollout, written by one Lua
script (see ``rollout_store`` for the write modes and the rule both stores follow)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from redis.commands.core import AsyncScript
from redis.exceptions import InvalidResponse

from gateway.redis_link import FAILURES, RedisClient, redis_client
from gateway.routing.rollout_state import RolloutKey, RolloutState
from gateway.routing.rollout_store import OP_TIMEOUT_S, RolloutStore, WriteMode

# KEYS: the rollout's hash.  ARGV: mode, expected version, then field, value pairs.
_WRITE = """
local current = redis.call('HGET', KEYS[1], 'version')
local mode = ARGV[1]
local apply = false
if mode == 'create' then
  apply = not current
elseif mode == 'cas' then
  apply = current and current == ARGV[2]
elseif current then
  local status = redis.call('HGET', KEYS[1], 'status')
  if mode == 'remove' then
    apply = status ~= 'removed'
  else
    apply = status ~= 'promoted' and status ~= 'rolled_back' and status ~= 'aborted' and status ~= 'removed'
  end
end
if apply then
  for i = 3, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('HSET', KEYS[1], 'version', tostring((tonumber(current) or 0) + 1))
end
return {apply and 1 or 0, redis.call('HGETALL', KEYS[1])}
"""


# KEYS: the rollout's hash.  ARGV: seen_at.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'seen_at', ARGV[1])
end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(flat: list[bytes]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _texts(values: object) -> bool:
    return all(isinstance(v, bytes | str) for v in values) if isinstance(values, list | dict) else False


def _unreadable(what: str, reply: object) -> InvalidResponse:
    # The reply's type only: its text is whatever the server on the port sent.
    return InvalidResponse(f"the rollout store's {what} reply is not Redis's: {type(reply).__name__}")


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """redis-py's reply parsing (its response callbacks) meeting a reply of another shape raises
    what it happens to raise: as ``InvalidResponse``, so callers see a failed call."""
    try:
        yield
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise InvalidResponse(
            f"the rollout store's {what} reply is not Redis's: {type(exc).__name__}"
        ) from exc


class RedisRolloutStore:
    """Rollout states in Redis, shared by every replica (one hash per rollout)."""

    failures: tuple[type[Exception], ...] = FAILURES

    def __init__(self, url: str, prefix: str = "sophia:rollout:") -> None:
        self._url = url
        self._prefix = prefix
        self._client: RedisClient | None = None
        self._script: AsyncScript | None = None
        self._touch: AsyncScript | None = None

    async def start(self) -> None:
        self._client = redis_client(self._url, OP_TIMEOUT_S, 30.0)
        self._script = self._client.register_script(_WRITE)
        self._touch = self._client.register_script(_TOUCH)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _redis(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("the rollout store is not started")
        return self._client

    async def load(self, key: RolloutKey) -> RolloutState | None:
        async with asyncio.timeout(OP_TIMEOUT_S):
            with _reading("HGETALL"):
                raw = await self._redis().hgetall(self._prefix + key.id)
        if not isinstance(raw, dict) or not _texts(list(raw)) or not _texts(list(raw.values())):
            raise _unreadable("HGETALL", raw)
        return RolloutState.from_fields({_text(k): _text(v) for k, v in raw.items()}) if raw else None

    async def write(
        self, key: RolloutKey, mode: WriteMode, state: RolloutState, expected_version: int = 0
    ) -> tuple[bool, RolloutState | None]:
        fields = state.fields()
        del fields["version"]
        args: list[str] = [mode, str(expected_version)]
        for name, value in fields.items():
            args += [name, value]
        script = self._script
        if script is None:
            raise RuntimeError("the rollout store is not started")
        async with asyncio.timeout(OP_TIMEOUT_S):
            with _reading("script"):
                reply = await script(keys=[self._prefix + key.id], args=args)
        # The script's {applied (0 or 1), HGETALL's flat list}.
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] in (0, 1) and _texts(reply[1])):
            raise _unreadable("script", reply)
        applied, flat = reply
        stored = RolloutState.from_fields(_decoded(flat)) if flat else None
        return bool(applied), stored

    async def keys(self) -> list[RolloutKey]:
        found: list[RolloutKey] = []
        async with asyncio.timeout(OP_TIMEOUT_S * 5):
            with _reading("SCAN"):
                async for name in self._redis().scan_iter(match=self._glob_prefix() + "*", count=500):
                    if not isinstance(name, bytes | str):
                        raise _unreadable("SCAN", name)
                    key = RolloutKey.from_id(_text(name)[len(self._prefix) :])
                    if key is not None:
                        found.append(key)
        return sorted(found)

    async def delete(self, key: RolloutKey) -> None:
        async with asyncio.timeout(OP_TIMEOUT_S):
            with _reading("DEL"):
                await self._redis().delete(self._prefix + key.id)

    async def touch(self, key: RolloutKey, now: float) -> None:
        if self._touch is None:
            raise RuntimeError("the rollout store is not started")
        async with asyncio.timeout(OP_TIMEOUT_S):
            with _reading("touch"):
                await self._touch(keys=[self._prefix + key.id], args=[repr(now)])

    def _glob_prefix(self) -> str:
        return "".join(f"\\{c}" if c in "*?[]\\" else c for c in self._prefix)


if TYPE_CHECKING:

    def _conforms(redis_store: RedisRolloutStore) -> RolloutStore:
        return redis_store
